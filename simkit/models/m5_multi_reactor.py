"""m5_multi_reactor: the main thread accepts and hands each fd round-robin (queue + wake-up fd) to
one of `threads` I/O threads, each an epoll loop doing recv/work/send inline. One process, one
GIL shared by all threads: gil_us work does not scale past one core, cpu_us work does."""

from __future__ import annotations

from simkit.models.base import Acceptor, ModelBase, Reactor


class Model(ModelBase):
    name = "m5_multi_reactor"

    def build(self) -> None:
        m = self.machine
        proc = m.new_proc(self.spec.gil)
        self.loops = [Reactor(self, proc) for _ in range(self.spec.threads)]
        self.rr = 0
        self.acceptor = Acceptor(self, proc, self.new_listener(), self.accept_s, self.hand)

    def hand(self, th, conn) -> None:
        loop = self.loops[self.rr]
        self.rr = (self.rr + 1) % len(self.loops)
        loop.inbox.append(conn)
        loop.notify()
