"""m5_multi_reactor: the main thread only accepts, and hands each connection round-robin to one of
`threads` I/O threads. The hand-off is a queue plus a wake-up eventfd (Reactor.post). Each I/O thread
runs its own epoll loop (base.Reactor) doing recv/parse/work/send inline for its connections."""

from __future__ import annotations

import itertools
import threading
import time

from realkit.servers import base
from realkit.servers.base import FINISH_GRACE_S, Reactor, acceptor_loop, make_listener


class IOThreads:
    """`n` reactor threads without listen sockets, fed by `dispatch`; shared with m7."""

    def __init__(
        self, n: int, keepalive_s: float, stopper, reactor_class=Reactor, name: str = "m5-io"
    ) -> None:
        # Each loop gets the process's stopper for its deadline only: it is told to stop by a post.
        self.stopper = stopper
        self.reactors = [reactor_class(keepalive_s, name=f"{name}-{i}", stopper=stopper) for i in range(n)]
        self.threads = [threading.Thread(target=r.run, name=r.name, daemon=True) for r in self.reactors]
        self._next = itertools.cycle(self.reactors)

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def dispatch(self, socks) -> bool:
        for sock in socks:
            reactor = next(self._next)
            reactor.post(reactor.add_conn, sock)
        return True

    def stop_and_join(self) -> None:
        # Posted after every hand-off, so each loop has all its connections before it starts stopping.
        for reactor in self.reactors:
            reactor.post(reactor.begin_stop)
        # Each loop ends by the shutdown limit plus its grace; the join allows a little more.
        limit = base.LIMITS.shutdown_limit_s
        deadline = min(self.stopper.deadline, time.monotonic() + limit) + 2 * FINISH_GRACE_S
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def serve(spec, host, port, stopper, ready, **io_options) -> None:
    """The acceptor on this thread, `spec.threads` I/O loops behind it. m7 serves through this too,
    with its own reactor class in `io_options` (passed on to IOThreads)."""
    listener = make_listener(host, port, spec.backlog)
    io = IOThreads(spec.threads, spec.keepalive_timeout_s, stopper, **io_options)
    io.start()
    ready(listener.getsockname()[1])
    try:
        acceptor_loop(listener, stopper, io.dispatch)
    finally:
        io.stop_and_join()
