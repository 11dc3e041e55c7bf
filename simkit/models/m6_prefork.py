"""m6_prefork: a master process opens the listen socket and forks `processes` single-thread reactor
workers, each its own process with its own GIL (so gil_us work scales with processes and cores).

Accept distribution (ModelSpec.dispatch):
- shared: one listen socket in every worker's epoll with EPOLLEXCLUSIVE: a new connection wakes
  one IDLE worker; busy workers see the socket at their next epoll_wait and accept what is there.
- reuseport: a listen socket (and backlog) per worker; the kernel hashes each connection's 4-tuple
  to one, i.e. a uniform random pick per connection: uneven, and blind to how busy a worker is.
- fdpass: the master accepts and passes each fd over a Unix socket round-robin (sendmsg in the
  master, recvmsg + epoll_ctl in the worker)."""

from __future__ import annotations

from simkit.models.base import Acceptor, ModelBase, Reactor


class Model(ModelBase):
    name = "m6_prefork"

    def build(self) -> None:
        m = self.machine
        master = m.new_proc(False)
        n = self.spec.processes
        mode = self.spec.dispatch
        self.workers = []
        shared = self.new_listener() if mode in ("shared", "fdpass") else None
        for _ in range(n):
            proc = m.new_proc(False)  # single-threaded worker: its GIL is never contended
            lst = self.new_listener() if mode == "reuseport" else (shared if mode == "shared" else None)
            self.workers.append(Reactor(self, proc, lst))
        if mode == "fdpass":
            self.rr = 0
            for w in self.workers:
                w.inbox_cost = self.p["recv_base_s"] + self.ctl_s
            self.master = Acceptor(self, master, shared, self.accept_s + self.p["send_base_s"], self.hand,
                                   target_proc=self.next_proc)
        else:
            m.ledger.add_threads(1)  # the master waits in signal handling: memory and a thread, no CPU
            master.threads += 1

    def pick_listener(self, conn):
        if self.spec.dispatch == "reuseport":
            return self.listeners[self.rng.randrange(len(self.listeners))]
        return self.listeners[0]

    def next_proc(self, conn):
        return self.workers[self.rr].proc

    def hand(self, th, conn) -> None:
        worker = self.workers[self.rr]
        self.rr = (self.rr + 1) % len(self.workers)
        worker.inbox.append(conn)
        worker.notify()

    def idle_procs(self) -> list:
        return [w.proc for w in self.workers]
