"""m7_reactor_spawn: like m5 (an acceptor hands fds round-robin to `threads` epoll loops), but a
readiness event disarms the fd (EPOLLONESHOT) and the loop spawns a short-lived thread that does
recv/work/send, posts back to its loop (a queue and the loop's wake-up fd, realkit's Reactor.post)
and exits; the loop, woken by the post, re-arms the fd (epoll_ctl). Until then the connection stays
with the thread: a request arriving meanwhile waits for the re-arm. Each request pays a thread spawn,
holds a thread (and its RSS, and a threads_max slot) while it runs, and wakes its loop once more.
A spawn holds the GIL on both sides (thread_spawn_s on the loop, thread_boot_s on the new thread), so
loops that spawn do not spawn in parallel. Thread.start() returns only after the new thread has taken
the GIL once, so the loop waits for that hand-shake (without it a loop would spawn threads as fast as
it could, far more than the real server holds)."""

from __future__ import annotations

from simkit.machine import CALL, CPU, GIL
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
        # the post's way back, as a handed-over fd's (Reactor.inbox_cost): the queue hand-off, then
        # _finish re-arms with epoll_ctl(MOD), in Python on the loop (the GIL held)
        self.finish_s = self.p["queue_handoff_s"] + self.ctl_s
        self.close_s = self.p["close_s"]

    def hand(self, th, conn) -> None:
        loop = self.loops[self.rr]
        self.rr = (self.rr + 1) % len(self.loops)
        loop.inbox.append(conn)
        loop.notify()

    def handle_ready(self, reactor, conn, steps) -> None:
        # Thread() and start(): pthread_create runs with the GIL held (EPOLLONESHOT disarmed the fd itself)
        steps.append((GIL, self.spawn_s, None))
        steps.append((CALL, self.spawn, conn))

    # realkit's m7 arms EPOLLIN only: the client's FIN is a readable event like a request; a thread
    # reads it (recv() returns b"") and posts back, and the loop closes the socket
    handle_eof = handle_ready

    def spawn(self, th, conn) -> None:
        if self.start_thread(th, self.proc, self.request_program, [conn, False]) is None:
            # threads_max or memory: realkit's loop serves it inline instead and posts to itself
            inline: list = []
            self.thread_steps(inline, conn)
            th.steps.extendleft(reversed(inline))

    def request_program(self, th) -> bool:
        state = th.obj
        if state[1]:
            self.machine.exit_thread(th)
            return False
        state[1] = True
        self.thread_steps(th.steps, state[0])
        return True

    def thread_steps(self, steps, conn) -> None:
        """What the spawned thread does: serve the request, or read the client's FIN, then post back."""
        if conn.req is not None:
            self.serve_steps(steps, conn)
            steps.append((CALL, self.post, (self.finish, conn)))  # Reactor.post: its hand-off is priced on the loop
        else:  # the client's FIN
            steps.append((CPU, self.recv_s, None))
            steps.append((GIL, 0.0, None))
            steps.append((CALL, self.post, (self.finish_eof, conn)))

    def on_send(self, conn, req, t: float) -> None:
        """The answer leaves; the connection stays with its thread until the loop re-arms it."""
        self.clients.respond(conn, req, t)

    def post(self, th, call) -> None:
        finish, conn = call
        loop = conn.owner
        loop.posted.append((finish, conn))
        loop.notify()

    def finish(self, loop, conn, steps) -> None:
        """On the loop: the thread's report, then epoll_ctl to re-arm the connection. The re-arm takes
        effect now, not at the step's end: what arrives on the connection meanwhile is seen at the
        loop's next epoll_wait either way (this turn's batch is already taken), and one event less."""
        steps.append((GIL, self.finish_s, None))
        conn.busy = False
        if not conn.closed:
            self.serve_next(conn)

    def finish_eof(self, loop, conn, steps) -> None:
        """On the loop: the thread's report of EOF, then unregister and close() the socket."""
        steps.append((GIL, self.finish_s + self.close_s, None))
        steps.append((CALL, self.closed, conn))

    def closed(self, th, conn) -> None:
        conn.busy = False
        self.close_conn(conn)
