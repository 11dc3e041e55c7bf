"""m3_reactor: one thread, non-blocking sockets, level-triggered epoll. Accept all pending, recv, parse,
do the work inline, send (buffer + EPOLLOUT on a partial write). The mechanism is base.Reactor as is."""

from __future__ import annotations

from realkit.servers.base import Reactor, make_listener


def serve(spec, host, port, stopper, ready) -> None:
    listener = make_listener(host, port, spec.backlog)
    reactor = Reactor(spec.keepalive_timeout_s, name="m3")
    reactor.watch_stopper(stopper)
    reactor.set_listener(listener)
    ready(listener.getsockname()[1])
    reactor.run()
