"""m1_iterative: one thread. Wait for a connection, serve it until it closes (or idles out, or its
request misses the header deadline), then take the next. Other clients wait in the listen backlog
meanwhile. The wait for a connection is a poll on the listen socket and the stop pipe together, so
SIGTERM is seen at once; EMFILE backs off."""

from __future__ import annotations

import time

from realkit.servers.base import ACCEPT_BACKOFF_S, accept_batch, make_listener, serve_blocking, wait_readable


def serve(spec, host, port, stopper, ready) -> None:
    listener = make_listener(host, port, spec.backlog)
    ready(listener.getsockname()[1])
    try:
        while not stopper.is_set:
            if listener.fileno() not in wait_readable([listener.fileno(), stopper.fd], None):
                continue
            socks, fd_limit = accept_batch(listener, 1)
            for sock in socks:
                serve_blocking(sock, stopper, spec.keepalive_timeout_s)
            if fd_limit:
                stopper.wait(ACCEPT_BACKOFF_S)
        # Shutdown: the clients already queued get their already-sent requests answered, one by one,
        # until the shutdown limit; the rest are closed.
        socks, _ = accept_batch(listener, 1 << 20)
        for sock in socks:
            if time.monotonic() < stopper.deadline:
                serve_blocking(sock, stopper, spec.keepalive_timeout_s)
            else:
                sock.close()
    finally:
        listener.close()
