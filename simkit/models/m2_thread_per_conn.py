"""m2_thread_per_conn: the main thread blocks in accept and starts a thread per connection; that
thread serves the connection until it closes, then exits. Every connection costs a thread (spawn
time, RSS, a threads_max slot): past threads_max the server cannot start one and drops the
connection (the client sees a reset; failure "threads_max").

Starting a thread holds the GIL on both sides: thread_spawn_s in the acceptor (Thread(), start(),
pthread_create included), thread_boot_s in the new thread (its bootstrap and exit), and
Thread.start() waits for the bootstrap (ModelBase.start_thread), so under GIL contention the acceptor
starts threads no faster than they get the GIL (the README's calibration section compares the thread
counts with the real server's)."""

from __future__ import annotations

from simkit.machine import CPU
from simkit.models.base import Acceptor, ModelBase


class Model(ModelBase):
    name = "m2_thread_per_conn"

    def build(self) -> None:
        m = self.machine
        self.proc = m.new_proc(self.spec.gil)
        # Thread() and start() hold the GIL (pthread_create included); the new thread's bootstrap and
        # exit too, on its side
        self.acceptor = Acceptor(self, self.proc, self.new_listener(), self.accept_s, self.spawn,
                                 gil_s=self.p["thread_spawn_s"])

    def spawn(self, th, conn) -> None:
        child = self.start_thread(th, self.proc, self.conn_program, conn)
        if child is None:  # threads_max or memory: RuntimeError("can't start new thread"); close it
            self.close_conn(conn)  # first: the client's reset marks the connection closed
            self.clients.reset(conn)
            return
        conn.owner = child

    def readable(self, conn) -> None:
        self.machine.wake(conn.owner)

    def conn_program(self, th) -> bool:
        conn = th.obj
        if conn.closed:
            self.machine.exit_thread(th)
            return False
        if conn.eof:
            th.steps.append((CPU, self.eof_s, None))
            self.close_conn(conn)
            return True
        if conn.req is not None:
            conn.busy = True
            self.serve_steps(th.steps, conn)
            return True
        conn.busy = False  # blocked in recv()
        return False

    def idle_extra(self, proc, k: int) -> int:
        """Each idle connection holds a thread blocked in recv(): a thread each, in the ledger only."""
        ledger = self.machine.ledger
        room = max(0, ledger.threads_max - ledger.threads)
        fit = min(k, room)
        if fit < k:
            ledger.fail("threads_max")
        if fit and not ledger.add_threads(fit):
            return 0
        proc.threads += fit
        return fit
