"""m7_reactor_spawn: like m5 (an accept thread hands connections round-robin to `threads` epoll loops),
but a loop does no request I/O itself: when a connection turns readable it is already disarmed
(EPOLLONESHOT), and the loop spawns a short-lived thread that does recv/parse/work/send and then
posts back (queue + eventfd) so the loop re-arms the connection, or closes it. A partial write leaves
the rest to the loop (buffer + EPOLLOUT, re-armed one shot at a time)."""

from __future__ import annotations

import select
import threading

from realkit import work
from realkit.protocol import WORK, response_bytes
from realkit.servers import m5_multi_reactor
from realkit.servers.base import (
    EPOLL_DEAD,
    EPOLLIN,
    EPOLLOUT,
    RECV_BYTES,
    Reactor,
    log,
)

ONESHOT = select.EPOLLONESHOT


class SpawnReactor(Reactor):
    oneshot = True

    def __init__(self, keepalive_s: float, name: str = "m7") -> None:
        super().__init__(keepalive_s, name=name)
        self.active = 0  # spawned threads not yet reported back
        self._spawn_failed = False

    def on_conn_event(self, conn, events: int) -> None:
        if conn.busy:
            return  # cannot happen with EPOLLONESHOT; kept as a guard
        if events & EPOLL_DEAD:
            self.close_conn(conn)
            return
        if events & EPOLLOUT:
            self.on_writable(conn)
            return
        conn.busy = True
        self.active += 1
        try:
            threading.Thread(target=self._serve_once, args=(conn,), name="m7-spawn", daemon=True).start()
        except RuntimeError as exc:  # threads_max: serve it on the loop rather than drop it
            if not self._spawn_failed:
                log(f"m7: {exc}; serving inline until threads free up")
                self._spawn_failed = True
            self._serve_once(conn)

    def _serve_once(self, conn) -> None:
        """The spawned thread: one recv, every complete request in it, one send."""
        try:
            data = conn.sock.recv(RECV_BYTES)
        except BlockingIOError:
            self.post(self._finish, conn, b"", False, False)
            return
        except OSError:
            self.post(self._finish, conn, b"", False, True)
            return
        if not data:
            self.post(self._finish, conn, b"", True, False)
            return
        parser = conn.parser
        parser.feed(data)
        outs = []
        request = parser.next_request()
        while request is not None:
            if self.stopping:
                request.keep_alive = False
            if request.kind == WORK:
                work.do_work(request.cpu_us, request.gil_us, request.io_us)
            outs.append(response_bytes(request))
            if not request.keep_alive:
                conn.close_after = True
                break
            request = parser.next_request()
        rest = b""
        failed = False
        if outs:
            out = outs[0] if len(outs) == 1 else b"".join(outs)
            try:
                sent = conn.sock.send(out)
            except BlockingIOError:
                sent = 0
            except OSError:
                sent, failed = len(out), True
            rest = memoryview(out)[sent:] if sent < len(out) else b""
        self.post(self._finish, conn, rest, False, failed)

    def _finish(self, conn, rest, eof: bool, failed: bool) -> None:
        self.active -= 1
        conn.busy = False
        if conn.closed:
            return
        conn.last = self.now
        if failed or eof and not rest:
            self.close_conn(conn)
            return
        conn.received_any = True
        if rest:
            conn.out = rest
            conn.eof = eof
            self.set_mask(conn, EPOLLOUT | ONESHOT)
        elif conn.close_after:
            self.close_conn(conn)
        else:
            self.set_mask(conn, EPOLLIN | ONESHOT)  # re-arm

    def after_drain(self, conn) -> None:
        pass  # the spawned thread answered every complete request; only a partial one can remain

    def idle_extra(self) -> bool:
        return self.active > 0


def serve(spec, host, port, stopper, ready) -> None:
    m5_multi_reactor.serve(spec, host, port, stopper, ready, reactor_class=SpawnReactor, name="m7-io")
