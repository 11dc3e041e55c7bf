"""m4_reactor_workers: the loop thread does accept/recv/parse/send; parsed requests go through a
queue to a pool of `pool` worker threads for the work (gil_us, cpu_us, io_us); results come back by
queue + wake-up fd and the loop sends. One request in flight per connection. One process: the
workers and the loop share a GIL."""

from __future__ import annotations

from collections import deque

from simkit.machine import CALL, CPU, GIL, SLEEP
from simkit.models.base import ModelBase, Reactor


class Worker:
    __slots__ = ("thread", "idle", "woken")


class Model(ModelBase):
    name = "m4_reactor_workers"

    def build(self) -> None:
        m = self.machine
        self.proc = m.new_proc(self.spec.gil)
        self.loop = Reactor(self, self.proc, self.new_listener())
        self.jobs: deque = deque()
        self.idle_workers: list[Worker] = []
        self.handoff_s = self.p["queue_handoff_s"]
        for _ in range(self.spec.pool):
            w = Worker()
            w.idle = False
            w.woken = False
            w.thread = m.new_thread(self.proc, self.worker_program, w)

    def handle_ready(self, reactor, conn, steps) -> None:
        req = conn.req
        conn.req = None
        steps.append((CPU, self.recv_s, None))
        steps.append((GIL, self.parse_s, None))
        steps.append((CALL, self.submit, (conn, req)))

    def submit(self, th, job) -> None:
        self.jobs.append(job)
        if self.idle_workers:
            w = self.idle_workers.pop()
            w.idle = False
            w.woken = True
            self.machine.wake(w.thread)

    def worker_program(self, th) -> bool:
        w = th.obj
        if not self.jobs:
            w.idle = True
            self.idle_workers.append(w)
            return False
        conn, req = self.jobs.popleft()
        steps = th.steps
        if w.woken:
            # it slept in queue.get(): the condition variable's wake-up path (the probed hand-off).
            # A worker that finds a job already queued takes it without sleeping, for next to nothing
            # (under load the real server is as fast as a single reactor on one core).
            w.woken = False
            steps.append((CPU, self.handoff_s, None))
        if req.cpu > 0.0:  # do_work's order: cpu (GIL released), then gil, then io
            steps.append((GIL, 0.0, None))  # queue.get() returns into Python
            steps.append((CPU, req.cpu, None))
        if req.gil > 0.0:
            steps.append((GIL, req.gil, None))
        if req.io > 0.0:
            steps.append((SLEEP, req.io + self.io_extra, None))
        steps.append((GIL, 0.0, None))  # response build + queue put (Python)
        steps.append((CALL, self.complete, (conn, req)))
        return True

    def complete(self, th, job) -> None:
        self.loop.completions.append(job)
        self.loop.notify()
