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

The GIL: an operation's Python share (uring_op_s: its SQE, its CQE, the dispatch) holds it, and the
kernel's share runs in the enter, which releases it. So a loop lets go of the GIL once per batch
(and in cpu_us work and sleeps), not around every recv() and send() as an epoll loop does: with
several loops in one process, far fewer hand-offs than m5's.

Each connection pins realkit's RECV_BYTES receive buffer while its recv is in flight, i.e. always
while it is idle: RSS per connection is rss_conn_bytes plus that buffer.
"""

from __future__ import annotations

from collections import deque

from simkit.costs import RESP_HEADER_BYTES
from simkit.machine import CPU, GIL
from simkit.models.base import ModelBase, Reactor

RECV_BUFFER_BYTES = 4096  # realkit.servers.m8_proactor.RECV_BYTES (a test keeps them equal)


class Model(ModelBase):
    name = "m8_proactor"

    def __init__(self, env, scenario, profile, rng) -> None:
        super().__init__(env, scenario, profile, rng)
        p, wl = self.p, self.wl
        # Each operation's Python share (its SQE, its CQE, the dispatch) holds the GIL; the kernel's
        # part runs inside io_uring_enter, with the GIL released.
        self.op_s = p["uring_op_s"]
        self.request_py_s = p["uring_request_s"]  # m8's own Python per request, beyond parse_s
        recv = p["uring_recv_s"] + p["recv_per_byte_s"] * wl.request_bytes
        send = p["uring_send_s"] + p["send_per_byte_s"] * (wl.resp_bytes + RESP_HEADER_BYTES)
        self.recv_kernel_s = max(0.0, recv - self.op_s)
        self.send_kernel_s = max(0.0, send - self.op_s)
        self.enter_s = p["uring_enter_s"]

    def build(self) -> None:
        m = self.machine
        m.ledger.p_conn += RECV_BUFFER_BYTES
        proc = m.new_proc(self.spec.gil)
        self.loops = [Loop(self, proc, self.new_listener()) for _ in range(self.spec.threads)]

    def pick_listener(self, conn):
        return self.listeners[self.rng.randrange(len(self.listeners))]

    def handle_ready(self, loop, conn, steps) -> None:
        """Serve inline with base's steps, but the socket calls are ring operations: the recv's
        completion and the send's SQE are Python work holding the GIL (base: a CPU recv first; CPU
        send, SEND and the GIL back from send() last), and the send itself, with its SEND step,
        moves to the next enter."""
        first = len(steps)
        self.serve_steps(steps, conn)
        steps[first] = (GIL, self.op_s + self.request_py_s, None)
        del steps[-1]
        loop.sends.append(steps.pop())
        steps[-1] = (GIL, self.op_s, None)


class Loop(Reactor):
    """One proactor thread: enter (submit the queued sends, reap), then serve what completed. A
    Reactor's thread, listener watch and ready list; its own iteration (program)."""

    __slots__ = ("sends",)

    def __init__(self, model: Model, proc, listener) -> None:
        self.sends: list = []  # (SEND, conn, req) steps queued as SQEs, submitted by the next enter
        super().__init__(model, proc, listener)

    def program(self, th) -> bool:
        model = self.model
        lst = self.listener
        can_accept = lst.queue and not self.accept_blocked
        if not (self.ready or can_accept or self.sends):
            self.idle = True
            return False
        steps = th.steps
        # One io_uring_enter, the GIL released: it runs the sends the last batch queued, one after the
        # other, then the kernel's part of each recv that completed (requests and closes alike).
        steps.append((CPU, model.enter_s, None))
        for send in self.sends:
            steps.append((CPU, model.send_kernel_s, None))
            steps.append(send)
        self.sends = []
        batch, self.ready = self.ready, deque()
        if batch:
            steps.append((CPU, model.recv_kernel_s * len(batch), None))
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
                if conn.eof or conn.req is not None:
                    conn.busy = True
                    self.ready.append(conn)  # its first recv, armed now, completes at the next enter
        for conn in batch:
            if conn.closed:
                continue
            if conn.eof:
                steps.append((GIL, model.op_s, None))
                steps.append((CPU, model.p["close_s"], None))
                model.close_conn(conn)
            elif conn.req is not None:
                model.handle_ready(self, conn, steps)
            else:
                conn.busy = False
        return True
