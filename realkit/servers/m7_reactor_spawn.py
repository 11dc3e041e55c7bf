"""m7_reactor_spawn: like m5 (an accept thread hands connections round-robin to `threads` epoll loops),
but a loop does no request I/O itself: when a connection turns readable it is already disarmed
(EPOLLONESHOT), and the loop spawns a short-lived thread that does recv/parse/work/send and then
posts back (queue + eventfd) so the loop re-arms the connection, or closes it. The thread answers the
complete requests one at a time and stops at a partial write: the loop sends the rest (buffer +
EPOLLOUT, re-armed one shot at a time) and, once it drains, spawns a thread for the requests still
buffered. Whatever happens in the thread (an exception included), it posts back."""

from __future__ import annotations

import select
import threading
import time

from realkit.servers import m5_multi_reactor
from realkit.servers.base import (
    EPOLL_DEAD,
    EPOLLOUT,
    OUT_BATCH_BYTES,
    RECV_BYTES,
    Reactor,
    handle,
    log,
    log_failure,
)

ONESHOT = select.EPOLLONESHOT


class SpawnReactor(Reactor):
    oneshot = True

    def __init__(self, keepalive_s: float, name: str = "m7", stopper=None) -> None:
        super().__init__(keepalive_s, name=name, stopper=stopper)
        self.active = 0  # spawned threads not yet reported back
        self._spawn_failed = False

    def on_conn_event(self, conn, events: int) -> None:
        if conn.busy:
            return  # a thread has it; its report re-arms the connection
        if events & EPOLL_DEAD:
            self.close_conn(conn)
            return
        if events & EPOLLOUT:
            self.on_writable(conn)
            return
        self._spawn(conn, True)

    def _spawn(self, conn, read: bool) -> None:
        conn.busy = True
        self.active += 1
        try:
            threading.Thread(target=self._serve_once, args=(conn, read), name="m7-spawn", daemon=True).start()
        except Exception as exc:  # noqa: BLE001 - threads_max or memory: serve it on the loop instead
            if not self._spawn_failed:
                log(f"m7: {exc!r}; serving inline until threads free up")
                self._spawn_failed = True
            self._serve_once(conn, read)

    def _serve_once(self, conn, read: bool) -> None:
        """The spawned thread: _serve, then always a report to the loop."""
        try:
            rest, eof, failed = self._serve(conn, read)
        except Exception as exc:  # noqa: BLE001 - report back whatever happened, or SIGTERM never ends
            log_failure(f"{self.name}: spawned thread failed; closing its connection", exc)
            rest, eof, failed = b"", False, True
        self.post(self._finish, conn, rest, eof, failed)

    def _serve(self, conn, read: bool) -> tuple[bytes | memoryview, bool, bool]:
        """One recv (unless answering requests already buffered), then every complete request, one
        at a time, until a partial write -> (unsent rest, peer finished sending, close it)."""
        parser = conn.parser
        if read:
            try:
                data = conn.sock.recv(RECV_BYTES)
            except BlockingIOError:
                return b"", False, False
            except OSError:
                return b"", False, True
            if not data:
                return b"", True, False
            conn.received_any = True
            if conn.close_after:
                return b"", False, False  # input after "Connection: close" is ignored
            parser.feed(data)
        outs = []
        size = 0
        request = parser.next_request()
        if request is None:
            if not conn.head_since:
                conn.head_since = time.monotonic()  # a request is arriving: its header deadline runs
            return b"", False, False
        conn.head_since = 0.0
        while request is not None:
            if self.stopping:
                request.keep_alive = False
            data = handle(request, conn.gone)
            if data is None:
                return b"", False, True  # work abandoned: the client is gone, or the shutdown limit
            outs.append(data)
            if not request.keep_alive:
                conn.close_after = True
                break
            if not parser.buffered:
                break
            size += len(data)
            if size >= OUT_BATCH_BYTES:
                rest, failed = self._send(conn, outs)
                if rest or failed:
                    return rest, False, failed  # the requests left wait until the rest drains
                outs = []
                size = 0
            request = parser.next_request()
            if request is None:
                conn.head_since = time.monotonic()  # the bytes left start the next request
        if not outs:
            return b"", False, False
        rest, failed = self._send(conn, outs)
        return rest, False, failed

    @staticmethod
    def _send(conn, outs: list[bytes]) -> tuple[bytes | memoryview, bool]:
        out = outs[0] if len(outs) == 1 else b"".join(outs)
        try:
            sent = conn.sock.send(out)
        except BlockingIOError:
            sent = 0
        except OSError:
            return b"", True
        return (memoryview(out)[sent:] if sent < len(out) else b""), False

    def _finish(self, conn, rest, eof: bool, failed: bool) -> None:
        self.active -= 1
        conn.busy = False
        if conn.closed:
            return
        conn.last = self.now
        if failed or eof and not rest:
            self.close_conn(conn)
            return
        if rest:
            conn.out = rest
            conn.sent_at = self.now
            conn.eof = conn.eof or eof
            self.set_mask(conn, EPOLLOUT | ONESHOT)
        elif conn.close_after or conn.eof:
            self.close_conn(conn)  # (eof: the peer sent its last request and has every answer)
        else:
            self.set_mask(conn, self.read_mask(conn))  # re-arm

    def after_drain(self, conn) -> None:
        """The rest went out: answer the requests still buffered behind it, in a thread again."""
        if conn.parser.buffered and not conn.busy and not conn.closed:
            self._spawn(conn, False)

    def idle_extra(self) -> bool:
        return self.active > 0


def serve(spec, host, port, stopper, ready) -> None:
    m5_multi_reactor.serve(spec, host, port, stopper, ready, reactor_class=SpawnReactor, name="m7-io")
