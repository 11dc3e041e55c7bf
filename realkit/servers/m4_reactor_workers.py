"""m4_reactor_workers: the loop thread does accept/recv/parse/send (base.Reactor); every parsed request
goes to a pool of `pool` worker threads for its work; each result comes back through a queue plus a
wake-up eventfd (Reactor.post) and the loop sends it. One request in flight per connection, so
pipelined requests are answered in order; while one is in flight the rest wait in the parser (reading
pauses past READ_PAUSE_BYTES of unprocessed input)."""

from __future__ import annotations

import queue
import threading

from realkit.protocol import response_bytes
from realkit.servers.base import READ_PAUSE_BYTES, Reactor, handle, make_listener


class WorkerPoolReactor(Reactor):
    def __init__(self, keepalive_s: float, pool: int, name: str = "m4") -> None:
        super().__init__(keepalive_s, name=name)
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
            post(done, conn, request, handle(request))

    def process(self, conn) -> None:
        if conn.busy or conn.out or conn.close_after or conn.closed:
            return
        request = conn.parser.next_request()
        if request is None:
            return
        conn.busy = True
        self.in_flight += 1
        self.jobs.put((conn, request))

    def on_readable(self, conn) -> None:
        super().on_readable(conn)
        if conn.busy and not conn.closed and conn.parser.buffered > READ_PAUSE_BYTES:
            self.set_mask(conn, 0)  # back-pressure on a client that pipelines faster than we work

    def _done(self, conn, request, response: bytes) -> None:
        conn.busy = False
        self.in_flight -= 1
        if conn.closed:
            return
        if self.stopping and request.keep_alive:
            request.keep_alive = False
            response = response_bytes(request)  # same answer, now saying Connection: close
        if not request.keep_alive:
            conn.close_after = True
        self.send(conn, response)
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
        for thread in self.workers:
            thread.join()
        super().close()


def serve(spec, host, port, stopper, ready) -> None:
    listener = make_listener(host, port, spec.backlog)
    reactor = WorkerPoolReactor(spec.keepalive_timeout_s, spec.pool)
    reactor.watch_stopper(stopper)
    reactor.set_listener(listener)
    ready(listener.getsockname()[1])
    reactor.run()
