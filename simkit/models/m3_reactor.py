"""m3_reactor: one thread, non-blocking sockets, level-triggered epoll; accept all pending, recv,
parse, do the work inline, send. An io_us sleep inside a request stalls every client."""

from __future__ import annotations

from simkit.models.base import ModelBase, Reactor


class Model(ModelBase):
    name = "m3_reactor"

    def build(self) -> None:
        proc = self.machine.new_proc(False)  # one thread: the GIL is never contended
        self.loop = Reactor(self, proc, self.new_listener())
