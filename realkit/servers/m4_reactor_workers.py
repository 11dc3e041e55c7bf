"""m4_reactor_workers: the loop thread does accept/recv/parse/send (base.Reactor); every parsed request
goes to a pool of `pool` worker threads for its work; each result comes back through a queue plus a
wake-up eventfd (Reactor.post) and the loop sends it. One request in flight per connection, so
pipelined requests are answered in order; while one is in flight the rest wait in the parser (reading
pauses past READ_PAUSE_BYTES of unprocessed input), and none starts before the answer before it has
drained. A worker abandons the work of a connection that is gone (Conn.gone) and never starts one for
a closed connection."""

from __future__ import annotations

import queue
import threading
import time

from realkit.protocol import response_bytes
from realkit.servers.base import FINISH_GRACE_S, READ_PAUSE_BYTES, Reactor, handle, log_failure, make_listener


class WorkerPoolReactor(Reactor):
    def __init__(self, keepalive_s: float, pool: int, name: str = "m4", stopper=None) -> None:
        super().__init__(keepalive_s, name=name, stopper=stopper)
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.in_flight = 0
        self.workers = [
            threading.Thread(target=self._worker, name=f"m4-worker-{i}", daemon=True) for i in range(pool)
        ]
        for thread in self.workers:
            thread.start()

    def _worker(self) -> None:
        jobs, post, done = self.jobs, self.post, self._done
        while True:
            item = jobs.get()
            if item is None:
                return
            conn, request = item
            try:
                response = None if conn.closed else handle(request, conn.gone)
            except Exception as exc:  # noqa: BLE001 - the worker outlives any request
                log_failure(f"{self.name}: worker failed", exc)
                response = None
            post(done, conn, request, response)
            item = conn = request = response = None  # hold no answer while waiting for the next job

    def process(self, conn) -> None:
        if conn.busy or conn.out or conn.close_after or conn.closed:
            return
        request = conn.parser.next_request()
        if request is None:
            if not conn.head_since:
                conn.head_since = self.now  # a request is arriving: its header deadline runs
            return
        conn.busy = True
        conn.head_since = 0.0
        self.in_flight += 1
        self.jobs.put((conn, request))

    def on_readable(self, conn) -> None:
        super().on_readable(conn)
        if conn.busy and not conn.closed and conn.parser.buffered > READ_PAUSE_BYTES:
            self.set_mask(conn, 0)  # back-pressure on a client that pipelines faster than we work

    def _done(self, conn, request, response: bytes | None) -> None:
        conn.busy = False
        self.in_flight -= 1
        if conn.closed:
            return
        if response is None:
            self.close_conn(conn)  # its work was abandoned: the client is gone, or the shutdown limit
            return
        if self.stopping and request.keep_alive:
            request.keep_alive = False
            response = response_bytes(request)  # same answer, now saying Connection: close
        if not request.keep_alive:
            conn.close_after = True
        self.write(conn, response)
        if conn.closed or conn.out:
            return  # closed, or waiting for EPOLLOUT (on_writable carries on from there)
        if not conn.mask and not conn.eof:
            self.set_mask(conn, self.read_mask(conn))
        self.process(conn)
        if conn.eof and not conn.busy:
            self.close_conn(conn)

    def idle_extra(self) -> bool:
        return self.in_flight > 0

    def close(self) -> None:
        for _ in self.workers:
            self.jobs.put(None)
        # Workers abandon their work at the shutdown limit; one that does not is left behind (daemon).
        deadline = time.monotonic() + FINISH_GRACE_S
        for thread in self.workers:
            thread.join(max(0.0, deadline - time.monotonic()))
        super().close()


def serve(spec, host, port, stopper, ready) -> None:
    listener = make_listener(host, port, spec.backlog)
    reactor = WorkerPoolReactor(spec.keepalive_timeout_s, spec.pool)
    reactor.watch_stopper(stopper)
    reactor.set_listener(listener)
    ready(listener.getsockname()[1])
    reactor.run()
