"""m2_thread_per_conn: the main thread waits for connections (poll on the listen socket and the stop
pipe) and starts a thread per connection; the thread serves it with blocking calls until it closes
or idles out, then exits. On stop the main thread joins every connection thread (until the
shutdown limit)."""

from __future__ import annotations

import threading
import time

from realkit.servers import base
from realkit.servers.base import FINISH_GRACE_S, acceptor_loop, log, make_listener, serve_blocking


def serve(spec, host, port, stopper, ready) -> None:
    listener = make_listener(host, port, spec.backlog)
    threads: set[threading.Thread] = set()
    lock = threading.Lock()

    def run(sock):
        try:
            serve_blocking(sock, stopper, spec.keepalive_timeout_s)
        finally:
            with lock:
                threads.discard(threading.current_thread())

    def spawn(socks) -> bool:
        for i, sock in enumerate(socks):
            thread = threading.Thread(target=run, args=(sock,), name="m2-conn", daemon=True)
            with lock:
                threads.add(thread)
            try:
                thread.start()
            except Exception as exc:  # noqa: BLE001 - can't start new thread: the threads_max or memory wall
                with lock:
                    threads.discard(thread)
                log(f"m2: {exc}; dropping {len(socks) - i} connection(s) and backing off")
                for rest in socks[i:]:
                    rest.close()
                return False
        return True

    ready(listener.getsockname()[1])
    acceptor_loop(listener, stopper, spawn)
    # Connection threads abandon their work at the stopper's deadline; past it (and a grace for them
    # to notice) the process exits without them (they are daemon threads).
    deadline = min(stopper.deadline, time.monotonic() + base.LIMITS.shutdown_limit_s) + FINISH_GRACE_S
    while True:
        with lock:
            pending = list(threads)
        if not pending or time.monotonic() > deadline:
            break
        for thread in pending:
            thread.join(max(0.0, deadline - time.monotonic()))
