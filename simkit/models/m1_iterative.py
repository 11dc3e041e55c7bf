"""m1_iterative: one thread; blocking accept, serve that connection until it closes (or idles past
keepalive_timeout_s), then accept the next. Everyone else waits in the backlog; past it SYNs drop
and clients retry at 1 s, 3 s, ..."""

from __future__ import annotations

from simkit.events import at
from simkit.kernel import Conn
from simkit.machine import CPU
from simkit.models.base import ModelBase


class Model(ModelBase):
    name = "m1_iterative"

    def build(self) -> None:
        m = self.machine
        self.proc = m.new_proc(False)
        self.listener = self.new_listener()
        self.listener.watchers.append(self)
        self.cur = None
        self.idle = False
        self.accept_blocked = False
        self.wait_token = 0
        self.thread = m.new_thread(self.proc, self.program, self)

    # listener watcher
    def notify(self) -> None:
        if self.idle:
            self.idle = False
            self.machine.wake(self.thread)

    def readable(self, conn) -> None:
        if conn is self.cur:
            self.machine.wake(self.thread)

    def program(self, th) -> bool:
        steps = th.steps
        while True:
            conn = self.cur
            if conn is not None:
                if conn.closed:
                    self.cur = None
                    continue
                if conn.eof:
                    steps.append((CPU, self.eof_s, None))
                    self.close_conn(conn)
                    self.cur = None
                    return True
                if conn.req is not None:
                    conn.busy = True
                    self.serve_steps(steps, conn)
                    return True
                # blocked in recv() on the one connection; the keep-alive timer bounds the wait
                conn.busy = False
                self.wait_token += 1
                at(self.env, self.spec.keepalive_timeout_s, self._keepalive, (conn, self.wait_token))
                return False
            q = self.listener.queue
            if q and not self.accept_blocked:
                conn = q[0]
                if not self.accept_conn(conn, self.proc, self):
                    self.accept_blocked = True
                    self.proc.fd_waiters.append(self._unblock)
                    self.idle = True
                    return False
                q.popleft()
                steps.append((CPU, self.accept_s, None))
                self.cur = conn
                return True
            self.idle = True
            return False

    def _unblock(self) -> None:
        self.accept_blocked = False
        self.notify()

    def _keepalive(self, value) -> None:
        conn, token = value
        if conn is self.cur and token == self.wait_token and conn.req is None and not conn.busy and not conn.closed:
            self.close_conn(conn)  # idle too long: the server closes it and moves on
            self.cur = None
            self.machine.wake(self.thread)

    def place_idle(self, n: int) -> int:
        """Idle connections are real here: each one blocks the server until its keep-alive timeout.
        Opened first (before the active clients), as many as the backlog holds."""
        placed = 0
        for _ in range(n):
            if not self.listener.syn(Conn(None)):
                self.machine.ledger.fail("backlog")
                break
            placed += 1
        return placed
