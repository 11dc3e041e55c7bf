"""m8_proactor: `threads` loops in one process, each with its own io_uring and its own SO_REUSEPORT
listen socket (the kernel hashes each connection to one: a uniform random pick, as m6 reuseport).

A loop iteration is one io_uring_enter: it submits the sends the last batch queued (the kernel runs
each one there, so the batch's answers leave during this enter, one after the other) and returns the
completions that have arrived: new connections (multishot accept), requests (a recv completes with
its bytes) and clients' closes (a recv completes with 0). Each request is served inline, as in m3,
but its answer is only queued as a send: it leaves at the next enter, after the rest of the batch.
There is no readiness round trip (no epoll_wait, no recv() or send() system call of their own, no
epoll_ctl): the ring's per-operation costs (uring_recv_s, uring_send_s) and one uring_enter_s per
iteration replace them. Completions come in the order they happened (no level-triggered re-queue).

Each connection pins realkit's RECV_BYTES receive buffer while its recv is in flight, i.e. always
while it is idle: RSS per connection is rss_conn_bytes plus that buffer.
"""

from __future__ import annotations

from collections import deque

from simkit.costs import RESP_HEADER_BYTES
from simkit.machine import CPU
from simkit.models.base import ModelBase, _ListenerWatcher

RECV_BUFFER_BYTES = 4096  # realkit.servers.m8_proactor.RECV_BYTES (a test keeps them equal)


class Model(ModelBase):
    name = "m8_proactor"

    def __init__(self, env, scenario, profile, rng) -> None:
        super().__init__(env, scenario, profile, rng)
        p, wl = self.p, self.wl
        self.recv_s = p["uring_recv_s"] + p["recv_per_byte_s"] * wl.request_bytes
        self.send_s = p["uring_send_s"] + p["send_per_byte_s"] * (wl.resp_bytes + RESP_HEADER_BYTES)
        self.enter_s = p["uring_enter_s"]
        self.eof_s = p["uring_recv_s"] + p["close_s"]  # the recv completes with 0; cancel nothing, close()

    def build(self) -> None:
        m = self.machine
        m.ledger.p_conn += RECV_BUFFER_BYTES
        proc = m.new_proc(self.spec.gil)
        self.loops = [Loop(self, proc, self.new_listener()) for _ in range(self.spec.threads)]

    def pick_listener(self, conn):
        return self.listeners[self.rng.randrange(len(self.listeners))]

    def handle_ready(self, loop, conn, steps) -> None:
        """Serve inline (base's steps, which end: CPU send, SEND, GIL back from send()), but the
        answer only queues its send SQE: the send and its SEND step move to the next enter."""
        self.serve_steps(steps, conn)
        del steps[-1]
        loop.sends.append(steps.pop())
        del steps[-1]


class Loop(_ListenerWatcher):
    """One proactor thread: enter (submit the queued sends, reap), then serve what completed."""

    __slots__ = ("model", "thread", "proc", "ready", "idle", "listener", "accept_blocked", "sends", "conns")

    def __init__(self, model: Model, proc, listener) -> None:
        self.model = model
        self.proc = proc
        self.ready: deque = deque()
        self.idle = False
        self.listener = listener
        self.accept_blocked = False
        self.sends: list = []  # (SEND, conn, req) steps queued as SQEs, submitted by the next enter
        self.conns = 0
        listener.watchers.append(self)
        self.thread = model.machine.new_thread(proc, self.program, self)

    def program(self, th) -> bool:
        model = self.model
        lst = self.listener
        can_accept = lst.queue and not self.accept_blocked
        if not (self.ready or can_accept or self.sends):
            self.idle = True
            return False
        steps = th.steps
        steps.append((CPU, model.enter_s, None))
        for send in self.sends:  # each runs in the kernel during this enter, in order
            steps.append((CPU, model.send_s, None))
            steps.append(send)
        self.sends = []
        if can_accept:
            q = lst.queue
            while q:
                conn = q.popleft()
                if not model.accept_conn(conn, self.proc, self):
                    q.appendleft(conn)  # EMFILE: the multishot accept pauses until an fd closes
                    self.accept_blocked = True
                    self.proc.fd_waiters.append(self._unblock_accept)
                    break
                steps.append((CPU, model.accept_s, None))
                self.conns += 1
                if conn.eof or conn.req is not None:
                    conn.busy = True
                    self.ready.append(conn)
        batch, self.ready = self.ready, deque()
        for conn in batch:
            if conn.closed:
                continue
            if conn.eof:
                steps.append((CPU, model.eof_s, None))
                model.close_conn(conn)
            elif conn.req is not None:
                model.handle_ready(self, conn, steps)
            else:
                conn.busy = False
        return True
