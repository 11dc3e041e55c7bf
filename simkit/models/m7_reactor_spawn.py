"""m7_reactor_spawn: like m5 (an acceptor hands fds round-robin to `threads` epoll loops), but on
readiness the loop disarms the fd (EPOLLONESHOT) and spawns a short-lived thread that does
recv/work/send, re-arms the fd and exits. Each request pays a thread spawn and holds a thread
(and its RSS, and a threads_max slot) while it runs. Thread.start() returns only after the new
thread has taken the GIL once, so the loop waits for that hand-shake (without it a loop would spawn
threads as fast as it could, far more than the real server holds)."""

from __future__ import annotations

from simkit.machine import CALL, CPU
from simkit.models.base import Acceptor, ModelBase, Reactor


class Model(ModelBase):
    name = "m7_reactor_spawn"

    def build(self) -> None:
        m = self.machine
        self.proc = m.new_proc(self.spec.gil)
        self.loops = [Reactor(self, self.proc) for _ in range(self.spec.threads)]
        self.rr = 0
        self.acceptor = Acceptor(self, self.proc, self.new_listener(), self.accept_s, self.hand)
        self.spawn_s = self.p["thread_spawn_s"]

    def hand(self, conn) -> None:
        loop = self.loops[self.rr]
        self.rr = (self.rr + 1) % len(self.loops)
        loop.inbox.append(conn)
        loop.notify()

    def handle_ready(self, reactor, conn, steps) -> None:
        steps.append((CPU, self.ctl_s + self.spawn_s, None))  # epoll_ctl(disarm) + Thread.start()
        steps.append((CALL, self.spawn, conn))

    def spawn(self, th, conn) -> None:
        if self.start_thread(th, self.proc, self.request_program, [conn, False]) is None:
            # threads_max or memory: the request cannot be served; close the connection
            self.clients.reset(conn)
            self.close_conn(conn)

    def request_program(self, th) -> bool:
        state = th.obj
        if state[1]:
            self.machine.exit_thread(th)
            return False
        state[1] = True
        self.serve_steps(th.steps, state[0])
        th.steps.append((CPU, self.ctl_s, None))  # epoll_ctl(re-arm)
        return True
