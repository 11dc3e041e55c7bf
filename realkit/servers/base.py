"""What the seven servers share, so each model file holds only its mechanism.

- Stopper: the SIGTERM/SIGINT flag as a pipe whose read end turns (and stays) readable, so every
  blocking poll, epoll loop and thread sees the signal without timeouts or spinning.
- make_listener / accept_batch: SO_REUSEADDR (and SO_REUSEPORT for m6), non-blocking accept, and the
  EMFILE policy: on EMFILE/ENFILE the caller stops polling the listen socket for ACCEPT_BACKOFF_S.
  Waiting clients stay in the backlog (nothing is refused) and the loop does not spin.
- handle(request): the work a request asks for, then its response bytes.
- serve_blocking(): one connection served with blocking calls (m1 inline, m2 per thread), with the
  idle keep-alive timer and shutdown rules below.
- Reactor: a level-triggered select.epoll loop over non-blocking sockets: accept, recv, parse,
  process (inline by default; m4 and m7 override), send with a buffer and EPOLLOUT on a partial write,
  the idle keep-alive sweep, a thread-safe queue + eventfd for other threads to post callbacks, and
  graceful shutdown. m3 is this class as is; m5/m6 workers use it; m4/m7 subclass it.

Shutdown rules (all models alike): stop accepting, but first accept what the kernel has already
queued (those clients have connected and may have sent a request); every request already received is
answered, with `Connection: close`; an idle connection is closed at once, a fresh one with no bytes
yet after STOP_FRESH_GRACE_S, a half-sent request gets STOP_PARTIAL_GRACE_S to complete. Nothing
waits past SHUTDOWN_LIMIT_S.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable

from realkit import protocol, work
from realkit.protocol import WORK, RequestParser, response_bytes

ACCEPT_BACKOFF_S = 0.1  # how long the listen socket is left alone after EMFILE
RECV_BYTES = 65536
READ_PAUSE_BYTES = 256 * 1024  # stop reading a connection holding this much unprocessed input
STOP_FRESH_GRACE_S = 0.25
STOP_PARTIAL_GRACE_S = 5.0
SHUTDOWN_LIMIT_S = 60.0
FD_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
RETRY_ACCEPT_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR})

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLL_READ_EVENTS = select.EPOLLIN | select.EPOLLRDHUP
EPOLL_DEAD = select.EPOLLHUP | select.EPOLLERR


def log(message: str) -> None:
    print(f"[realkit pid {os.getpid()}] {message}", file=sys.stderr, flush=True)


# -- signals ----------------------------------------------------------------------------------------
class Stopper:
    """A one-way flag that file-descriptor waiters can see: set() makes `fd` readable for good."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.is_set = False

    @property
    def fd(self) -> int:
        return self._r

    @property
    def write_fd(self) -> int:
        return self._w

    def set(self) -> None:
        if not self.is_set:
            self.is_set = True
            try:
                os.write(self._w, b"x")
            except (BlockingIOError, OSError):
                pass

    def wait(self, timeout_s: float | None) -> bool:
        """Sleep up to timeout_s, waking early if the flag is set; returns the flag."""
        if not self.is_set:
            select.select([self._r], [], [], timeout_s)
        return self.is_set

    def close(self) -> None:
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass


def install_signal_handlers(stopper: Stopper) -> None:
    """SIGTERM/SIGINT set the stopper (main thread only, as Python requires)."""

    def handler(signum, frame):
        stopper.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    # The kernel may deliver the signal to any thread, and only the main thread runs Python handlers:
    # a main thread blocked in select/poll would never notice. With the wake-up fd, the C-level handler
    # writes to the stop pipe from whichever thread caught the signal, so every waiter wakes at once.
    signal.set_wakeup_fd(stopper.write_fd, warn_on_full_buffer=False)
    # A client that vanishes must not kill us with SIGPIPE (Python ignores it already; be explicit).
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)


# -- listening and accepting -----------------------------------------------------------------------
def make_listener(
    host: str, port: int, backlog: int, *, reuseport: bool = False, listen: bool = True
) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(backlog)
    sock.setblocking(False)
    return sock


def accept_batch(listener: socket.socket, limit: int) -> tuple[list[socket.socket], bool]:
    """Accept up to `limit` queued connections without blocking -> (sockets, hit_fd_limit)."""
    socks: list[socket.socket] = []
    while len(socks) < limit:
        try:
            sock, _ = listener.accept()
        except BlockingIOError:
            return socks, False
        except OSError as exc:
            if exc.errno in FD_ERRNOS:
                return socks, True
            if exc.errno in RETRY_ACCEPT_ERRNOS:
                continue
            raise
        socks.append(sock)
    return socks, False


def tune(sock: socket.socket) -> None:
    sock.setblocking(False)
    try:
        # Each response goes out in one send; Nagle would only add delay to pipelined answers.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


# -- the request handler ----------------------------------------------------------------------------
def handle(request: protocol.Request) -> bytes:
    """Do the work the request asks for, then build its response (a 500 if that fails: a bug)."""
    try:
        if request.kind == WORK:
            work.do_work(request.cpu_us, request.gil_us, request.io_us)
        return response_bytes(request)
    except Exception as exc:  # noqa: BLE001 - a worker thread must outlive a bad request
        log(f"internal error on {request!r}: {exc!r}")
        request.keep_alive = False
        return response_bytes(protocol.error_request(500))


# -- blocking connections (m1, m2) ------------------------------------------------------------------
def serve_blocking(sock: socket.socket, stopper: Stopper, keepalive_s: float) -> None:
    """Serve one connection until it closes, its idle timer fires, or shutdown; always closes it."""
    try:
        _serve_blocking(sock, stopper, keepalive_s)
    except OSError:
        pass  # the peer reset or stopped reading: nothing to answer
    finally:
        sock.close()


def _serve_blocking(sock: socket.socket, stopper: Stopper, keepalive_s: float) -> None:
    # The socket stays blocking for sendall (bounded by the keep-alive time so a client that stops
    # reading cannot hold us forever); reads wait in poll() on the socket and the stop pipe together.
    sock.settimeout(keepalive_s)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    watching_stop = not stopper.is_set
    if watching_stop:
        poller.register(stopper.fd, select.POLLIN)
    parser = RequestParser()
    last = stop_at = time.monotonic()
    received_any = False
    while True:
        request = parser.next_request()
        while request is not None:
            if stopper.is_set:
                request.keep_alive = False
            sock.sendall(handle(request))
            if not request.keep_alive:
                return
            request = parser.next_request()
        now = time.monotonic()
        if stopper.is_set:
            if watching_stop:
                poller.unregister(stopper.fd)
                watching_stop = False
                stop_at = now
            if parser.buffered:
                deadline = stop_at + STOP_PARTIAL_GRACE_S
            elif not received_any:
                deadline = stop_at + STOP_FRESH_GRACE_S
            else:
                return  # idle keep-alive connection: close it
        else:
            deadline = last + keepalive_s
        if now >= deadline:
            return
        events = poller.poll(max(1, int((deadline - now) * 1000) + 1))
        if not any(fd == sock.fileno() for fd, _ in events):
            continue  # the stop pipe or a timeout: re-evaluate
        data = sock.recv(RECV_BYTES)
        if not data:
            return
        received_any = True
        last = time.monotonic()
        parser.feed(data)


# -- the epoll reactor ------------------------------------------------------------------------------
class Conn:
    __slots__ = (
        "sock",
        "fd",
        "parser",
        "out",
        "last",
        "close_after",
        "busy",
        "mask",
        "closed",
        "received_any",
        "eof",
    )

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.parser = RequestParser()
        self.out: bytes | memoryview = b""  # unsent response bytes (only after a partial write)
        self.last = now  # last time bytes arrived: the idle keep-alive timer runs from here
        self.close_after = False  # close once `out` drains (Connection: close, errors, shutdown)
        self.busy = False  # a request of this connection is with another thread (m4, m7)
        self.mask = 0
        self.closed = False
        self.received_any = False
        self.eof = False


class Reactor:
    """A level-triggered epoll loop serving connections inline; one instance per loop thread."""

    oneshot = False  # m7 arms connections with EPOLLONESHOT
    accept_limit = 1 << 16  # per readiness event: "accept all pending" (docs/DESIGN.md §3, m3)

    def __init__(self, keepalive_s: float, name: str = "reactor") -> None:
        self.keepalive_s = keepalive_s
        self.name = name
        self.ep = select.epoll()
        self.conns: dict[int, Conn] = {}
        self.handlers: dict[int, Callable[[int], None]] = {}
        self.listener: socket.socket | None = None
        self.listener_exclusive = False
        self.listen_paused_until = 0.0
        self.listen_registered = False
        self.stopping = False
        self.stop_at = 0.0
        self.now = time.monotonic()
        self.sweep_every_s = min(1.0, keepalive_s / 4)
        self.next_sweep = self.now + self.sweep_every_s
        # Cross-thread posts: a queue plus an eventfd that wakes the loop (m4 results, m5 hand-offs).
        self.posted: deque = deque()
        self.wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._wake_pending = False
        self.add_handler(self.wake_fd, EPOLLIN, self._on_wake)
        self.stop_fd: int | None = None
        self.fd_limit_pause = False

    # -- registration ------------------------------------------------------------------------------
    def add_handler(self, fd: int, mask: int, fn: Callable[[int], None]) -> None:
        self.handlers[fd] = fn
        self.ep.register(fd, mask)

    def remove_handler(self, fd: int) -> None:
        if self.handlers.pop(fd, None) is not None:
            try:
                self.ep.unregister(fd)
            except OSError:
                pass

    def watch_stopper(self, stopper: Stopper) -> None:
        """Enter shutdown when the stopper is set (loops that own their signal)."""
        self.stop_fd = stopper.fd
        self.add_handler(stopper.fd, EPOLLIN, lambda ev: self.begin_stop())

    def set_listener(self, listener: socket.socket, exclusive: bool = False) -> None:
        self.listener = listener
        self.listener_exclusive = exclusive
        self._register_listener()

    def _register_listener(self) -> None:
        mask = EPOLLIN | (select.EPOLLEXCLUSIVE if self.listener_exclusive else 0)
        self.handlers[self.listener.fileno()] = self._on_accept
        self.ep.register(self.listener.fileno(), mask)
        self.listen_registered = True

    def _unregister_listener(self) -> None:
        # EPOLLEXCLUSIVE forbids EPOLL_CTL_MOD, so pausing is unregister + register for everyone.
        if self.listen_registered:
            self.remove_handler(self.listener.fileno())
            self.listen_registered = False

    def post(self, fn: Callable, *args) -> None:
        """Run fn(*args) on the loop thread soon; safe from any thread."""
        self.posted.append((fn, args))
        if not self._wake_pending:
            self._wake_pending = True
            try:
                os.eventfd_write(self.wake_fd, 1)
            except OSError:
                pass

    def _on_wake(self, events: int) -> None:
        try:
            os.eventfd_read(self.wake_fd)
        except BlockingIOError:
            pass
        self._wake_pending = False
        posted = self.posted
        while posted:
            fn, args = posted.popleft()
            fn(*args)

    # -- connections -------------------------------------------------------------------------------
    def add_conn(self, sock: socket.socket) -> Conn | None:
        try:
            tune(sock)
        except OSError:
            sock.close()
            return None
        conn = Conn(sock, self.now)
        conn.mask = EPOLLIN | (select.EPOLLONESHOT if self.oneshot else 0)
        self.conns[conn.fd] = conn
        self.ep.register(conn.fd, conn.mask)
        return conn

    def set_mask(self, conn: Conn, mask: int) -> None:
        if mask != conn.mask or self.oneshot:
            conn.mask = mask
            self.ep.modify(conn.fd, mask)

    def close_conn(self, conn: Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        if self.conns.get(conn.fd) is conn:
            del self.conns[conn.fd]
            try:
                self.ep.unregister(conn.fd)
            except OSError:
                pass
        conn.sock.close()

    def _on_accept(self, events: int) -> None:
        socks, fd_limit = accept_batch(self.listener, self.accept_limit)
        for sock in socks:
            self.add_conn(sock)
        if fd_limit:
            self._pause_listener()

    def _pause_listener(self) -> None:
        self._unregister_listener()
        self.listen_paused_until = self.now + ACCEPT_BACKOFF_S

    # -- I/O -----------------------------------------------------------------------------------------
    def on_conn_event(self, conn: Conn, events: int) -> None:
        if events & EPOLL_DEAD:
            # Reset, or shut both ways: nobody can read an answer any more (and these events cannot
            # be masked, so leaving the socket open would spin the loop).
            self.close_conn(conn)
            return
        if events & EPOLLOUT:
            self.on_writable(conn)
            if conn.closed:
                return
        if events & EPOLL_READ_EVENTS and conn.mask & EPOLLIN:
            self.on_readable(conn)

    def on_readable(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(RECV_BYTES)
        except BlockingIOError:
            return
        except OSError:
            self.close_conn(conn)
            return
        if not data:
            # The peer finished sending: answer what is complete, then close.
            conn.eof = True
            if not conn.out and not conn.busy:
                self.close_conn(conn)
            else:
                self.set_mask(conn, conn.mask & ~EPOLLIN)
            return
        conn.last = self.now
        conn.received_any = True
        if conn.close_after:
            return  # input after "Connection: close" or an error is ignored
        conn.parser.feed(data)
        self.process(conn)

    def process(self, conn: Conn) -> None:
        """Answer every complete request buffered on the connection, inline (m3, m5, m6).

        The hot path (one request per recv, whole answer sent at once) is written out here rather
        than through _answer/send: it is most of what m3 does under wrk, and calls cost in Python.
        """
        parser = conn.parser
        request = parser.next_request()
        if request is None:
            return
        if self.stopping:
            request.keep_alive = False
        if request.kind == WORK:
            work.do_work(request.cpu_us, request.gil_us, request.io_us)
        data = response_bytes(request)
        if not request.keep_alive:
            conn.close_after = True
        elif parser.buffered:  # pipelined requests behind it (or the start of the next one)
            request = parser.next_request()
            if request is not None:
                outs = [data]
                while request is not None:
                    outs.append(self._answer(request))
                    if not request.keep_alive:
                        conn.close_after = True
                        break
                    request = parser.next_request()
                data = b"".join(outs)
        if conn.out or conn.closed:
            self.send(conn, data)
            return
        try:
            sent = conn.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close_conn(conn)
            return
        if sent == len(data):
            if conn.close_after:
                self.close_conn(conn)
        else:
            self._park(conn, data, sent)

    def _answer(self, request) -> bytes:
        if self.stopping:
            request.keep_alive = False
        if request.kind == WORK:
            work.do_work(request.cpu_us, request.gil_us, request.io_us)
        return response_bytes(request)

    def send(self, conn: Conn, data: bytes) -> None:
        if conn.closed:
            return
        if conn.out:
            conn.out = bytes(conn.out) + data
            return
        try:
            sent = conn.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close_conn(conn)
            return
        if sent == len(data):
            if conn.close_after:
                self.close_conn(conn)
            return
        self._park(conn, data, sent)

    def _park(self, conn: Conn, data: bytes, sent: int) -> None:
        """A partial write: keep the rest, wait for EPOLLOUT, and stop reading until it drains
        (back-pressure on a client that does not take its answers)."""
        conn.out = memoryview(data)[sent:]
        self.set_mask(conn, EPOLLOUT | (select.EPOLLONESHOT if self.oneshot else 0))

    def on_writable(self, conn: Conn) -> None:
        out = conn.out
        if not out:
            self.set_mask(conn, self.read_mask(conn))
            return
        try:
            sent = conn.sock.send(out)
        except BlockingIOError:
            return
        except OSError:
            self.close_conn(conn)
            return
        if sent < len(out):
            conn.out = out[sent:]
            if self.oneshot:
                self.set_mask(conn, conn.mask)
            return
        conn.out = b""
        if conn.close_after and not conn.busy:
            self.close_conn(conn)
            return
        self.set_mask(conn, self.read_mask(conn))
        self.after_drain(conn)
        if conn.eof and not (conn.busy or conn.out or conn.closed):
            self.close_conn(conn)  # the peer sent its last request and has every answer

    def read_mask(self, conn: Conn) -> int:
        return (0 if conn.eof else EPOLLIN) | (select.EPOLLONESHOT if self.oneshot else 0)

    def after_drain(self, conn: Conn) -> None:
        """Output drained: serve whatever was parked behind it (inline: requests already buffered)."""
        if conn.parser.buffered and not conn.busy:
            self.process(conn)

    # -- timers and shutdown -----------------------------------------------------------------------
    def begin_stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.stop_at = self.now
        self.sweep_every_s = 0.05
        self.next_sweep = self.now
        if self.stop_fd is not None:
            self.remove_handler(self.stop_fd)
            self.stop_fd = None
        if self.listener is not None:
            # Take what the kernel already queued, read what those clients already sent, then stop.
            if not self.listen_registered:
                self.listen_paused_until = 0.0
            socks, _ = accept_batch(self.listener, 1 << 20)
            self._unregister_listener()
            self.listener.close()
            self.listener = None
            for sock in socks:
                conn = self.add_conn(sock)
                if conn is not None:
                    self.on_readable(conn)
        self.stop_hook()

    def stop_hook(self) -> None:
        """Subclasses: extra shutdown steps (drain queues, tell workers)."""

    def sweep(self) -> None:
        now = self.now
        if self.listener is not None and not self.listen_registered and now >= self.listen_paused_until:
            self._register_listener()
        if not self.stopping:
            limit = now - self.keepalive_s
            idle = [c for c in self.conns.values() if c.last < limit and not c.busy and not c.out]
        else:
            hard = now - self.stop_at > SHUTDOWN_LIMIT_S
            idle = []
            for c in self.conns.values():
                if hard:
                    idle.append(c)
                elif c.busy or c.out:
                    continue
                elif c.parser.buffered and not c.parser.dead:
                    if now - self.stop_at > STOP_PARTIAL_GRACE_S:
                        idle.append(c)
                elif c.received_any or now - self.stop_at > STOP_FRESH_GRACE_S:
                    idle.append(c)
        for conn in idle:
            self.close_conn(conn)

    def idle_extra(self) -> bool:
        """Subclasses: True while work outside `conns` is still pending (keeps the loop alive)."""
        return False

    def finished(self) -> bool:
        return self.stopping and not self.conns and not self.posted and not self.idle_extra()

    def run(self) -> None:
        handlers = self.handlers
        conns = self.conns
        poll = self.ep.poll
        monotonic = time.monotonic
        on_conn_event = self.on_conn_event
        on_readable = self.on_readable
        fast = not self.oneshot  # plain EPOLLIN needs none of on_conn_event's checks (not for m7)
        while True:
            timeout = self.next_sweep - self.now
            events = poll(timeout if timeout > 0 else 0)
            self.now = monotonic()
            for fd, ev in events:
                conn = conns.get(fd)
                if conn is not None:
                    if ev == EPOLLIN and fast:
                        on_readable(conn)
                    else:
                        on_conn_event(conn, ev)
                    continue
                handler = handlers.get(fd)
                if handler is not None:
                    handler(ev)
            if self.now >= self.next_sweep:
                self.sweep()
                self.next_sweep = self.now + self.sweep_every_s
                if self.finished():
                    break
        self.close()

    def close(self) -> None:
        for conn in list(self.conns.values()):
            self.close_conn(conn)
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        self.ep.close()
        os.close(self.wake_fd)


# -- small helpers the models share -----------------------------------------------------------------
def start_thread(target: Callable, *args, name: str | None = None, daemon: bool = True) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, name=name, daemon=daemon)
    thread.start()
    return thread


def wait_readable(fds: list[int], timeout_s: float | None) -> list[int]:
    ready, _, _ = select.select(fds, [], [], timeout_s)
    return ready


def acceptor_loop(
    listener: socket.socket, stopper: Stopper, dispatch: Callable[[list[socket.socket]], bool]
) -> None:
    """A thread that only accepts (m2, m5, m7): wait on the listen socket and the stop pipe, accept
    what is queued, hand it to `dispatch` (False means "overloaded: back off"). On stop, accept what
    the kernel already queued, hand that over too, and close the listen socket."""
    try:
        while not stopper.is_set:
            if listener.fileno() not in wait_readable([listener.fileno(), stopper.fd], None):
                continue
            socks, fd_limit = accept_batch(listener, 64)
            if (socks and not dispatch(socks)) or fd_limit:
                stopper.wait(ACCEPT_BACKOFF_S)
        socks, _ = accept_batch(listener, 1 << 20)
        if socks:
            dispatch(socks)
    finally:
        listener.close()
