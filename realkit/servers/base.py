"""What the seven servers share, so each model file holds only its mechanism.

- Stopper: the SIGTERM/SIGINT flag as a pipe whose read end turns (and stays) readable, so every
  blocking poll, epoll loop and thread sees the signal without timeouts or spinning. It also holds
  the shutdown's hard deadline (set + SHUTDOWN_LIMIT_S), which long work checks.
- make_listener / accept_batch: SO_REUSEADDR (and SO_REUSEPORT for m6), non-blocking accept, and the
  EMFILE policy: on EMFILE/ENFILE the caller stops polling the listen socket for ACCEPT_BACKOFF_S.
  Waiting clients stay in the backlog (nothing is refused) and the loop does not spin.
- handle(request, abort): the work a request asks for, then its response bytes (a 500 if building
  them fails; None if the work was abandoned).
- serve_blocking(): one connection served with blocking calls (m1 inline, m2 per thread), with the
  idle keep-alive timer and shutdown rules below.
- Reactor: a level-triggered select.epoll loop over non-blocking sockets: accept, recv, parse,
  process (inline by default; m4 and m7 override), send with a buffer and EPOLLOUT on a partial write,
  the timer sweep, a thread-safe queue + eventfd for other threads to post callbacks, and graceful
  shutdown. m3 is this class as is; m5/m6 workers use it; m4/m7 subclass it.

Per-connection bounds (all models alike, docs/DESIGN.md §3):
- One request in work at a time per connection: pipelined requests wait in the parser (or the
  socket's receive buffer) until the one before them is answered.
- Output: nothing more is started while a connection's answer is not drained, so it holds at most
  one response (or OUT_BATCH_BYTES of gathered answers to small pipelined requests); meanwhile the
  connection is not read (back-pressure).
- Send timeout: a connection whose pending output makes no progress for SEND_TIMEOUT_S is closed.
- Header deadline: a request must be complete (head and body) HEADER_TIMEOUT_S after its first byte
  arrived; every byte does NOT reset it (the idle keep-alive timer, which it does reset, is separate).
- Abandoned work: long work asks between slices (realkit.work) whether its client hung up (POLLRDHUP,
  a reset) or the shutdown limit passed, and stops; a closed connection's queued requests never start.
- Exception guard: a request whose answer cannot be built (MemoryError under a memory limit) gets a
  500 and its connection closes; an exception anywhere else on a request path closes that connection
  only. Loops, I/O threads and spawned threads carry on and report back.

Shutdown rules (all models alike): stop accepting, but first accept what the kernel has already
queued (those clients have connected and may have sent a request); every request already received is
answered, with `Connection: close`; an idle connection is closed at once, a fresh one with no bytes
yet after STOP_FRESH_GRACE_S, a half-sent request gets STOP_PARTIAL_GRACE_S to complete. Nothing
waits past SHUTDOWN_LIMIT_S: then in-flight work is abandoned, every connection closed, and the
process exits (loops give threads FINISH_GRACE_S more to report back, then go without them).

SERVERLAB_HEADER_TIMEOUT_S, SERVERLAB_SEND_TIMEOUT_S and SERVERLAB_SHUTDOWN_LIMIT_S, read when a
server starts (Limits.from_env), override the three limits (tests use short ones).
"""

from __future__ import annotations

import dataclasses
import errno
import math
import os
import select
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping

from realkit import protocol, work
from realkit.protocol import WORK, RequestParser, response_bytes

ACCEPT_BACKOFF_S = 0.1  # how long the listen socket is left alone after EMFILE
RECV_BYTES = 65536
READ_PAUSE_BYTES = 256 * 1024  # stop reading a connection holding this much unprocessed input
# Answers to pipelined requests are gathered into one send up to this size (fewer syscalls for a
# pipelining client); past it they are sent, and the next request waits until they have drained.
OUT_BATCH_BYTES = 64 * 1024
# A complete head normally arrives in one segment, within a round trip; 10 s is far beyond an honest
# client and still bounds a slowloris client to 10 s per connection (nginx's client_header_timeout is
# 60 s; here a held connection costs m1 the whole server and m2 a thread, so it is shorter).
HEADER_TIMEOUT_S = 10.0
# A client that takes no bytes of its answer for this long has stopped reading: closing it frees the
# response it pins (up to protocol.MAX_RESP_BYTES). Long enough for a slow link (nginx: 60 s).
SEND_TIMEOUT_S = 30.0
SHUTDOWN_LIMIT_S = 60.0  # the longest a SIGTERM waits for in-flight work
FINISH_GRACE_S = 2.0  # past the shutdown limit, how long a loop waits for its threads to report back
STOP_FRESH_GRACE_S = 0.25
STOP_PARTIAL_GRACE_S = 5.0
ERROR_LOG_EVERY_S = 1.0  # at most one line per second about failed requests (a flood must not log)
FD_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
RETRY_ACCEPT_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR})

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLL_READ_EVENTS = select.EPOLLIN | select.EPOLLRDHUP
EPOLL_DEAD = select.EPOLLHUP | select.EPOLLERR


@dataclasses.dataclass(frozen=True)
class Limits:
    """The time limits a server applies (module constants above say why these values)."""

    header_timeout_s: float = HEADER_TIMEOUT_S
    send_timeout_s: float = SEND_TIMEOUT_S
    shutdown_limit_s: float = SHUTDOWN_LIMIT_S

    ENV = {
        "header_timeout_s": "SERVERLAB_HEADER_TIMEOUT_S",
        "send_timeout_s": "SERVERLAB_SEND_TIMEOUT_S",
        "shutdown_limit_s": "SERVERLAB_SHUTDOWN_LIMIT_S",
    }
    MAX_S = 86400.0

    def __post_init__(self) -> None:
        for name in self.ENV:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= self.MAX_S:
                raise ValueError(f"{name}: must be a number of seconds in (0, {self.MAX_S:g}], got {value!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Limits:
        """The defaults, overridden by the SERVERLAB_*_S variables that are set; ValueError names one."""
        environ = os.environ if environ is None else environ
        values = {}
        for name, var in cls.ENV.items():
            text = environ.get(var)
            if text is None or text == "":
                continue
            try:
                value = float(text)
            except ValueError:
                value = math.nan
            if not 0 < value <= cls.MAX_S:
                raise ValueError(f"{var}: must be a number of seconds in (0, {cls.MAX_S:g}], got {text!r}")
            values[name] = value
        return cls(**values)


LIMITS = Limits()


def set_limits(limits: Limits) -> None:
    """Use these limits for servers (and stoppers) created from now on in this process."""
    global LIMITS
    LIMITS = limits


def log(message: str) -> None:
    print(f"[realkit pid {os.getpid()}] {message}", file=sys.stderr, flush=True)


_last_error_log = [0.0]


def log_failure(what: str, exc: BaseException) -> None:
    """Log a failed request path, at most once per ERROR_LOG_EVERY_S; never raises (it runs while
    memory may be short)."""
    try:
        now = time.monotonic()
        if now - _last_error_log[0] >= ERROR_LOG_EVERY_S:
            _last_error_log[0] = now
            log(f"{what}: {exc!r}")
    except Exception:  # noqa: BLE001, S110 - logging must not turn one failure into two
        pass


# -- signals ----------------------------------------------------------------------------------------
class Stopper:
    """A one-way flag that file-descriptor waiters can see: set() makes `fd` readable for good."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.is_set = False
        self.deadline = math.inf  # once set: the monotonic time past which in-flight work is abandoned

    @property
    def fd(self) -> int:
        return self._r

    @property
    def write_fd(self) -> int:
        return self._w

    def set(self) -> None:
        if not self.is_set:
            self.deadline = time.monotonic() + LIMITS.shutdown_limit_s
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
# Built once: answering a failed request must not need memory that may be what ran out.
INTERNAL_ERROR = response_bytes(protocol.error_request(500, "the server failed to build the answer"))
_NEVER_STOPS = math.inf
_RDHUP = select.POLLRDHUP


def peer_gone(fd: int) -> bool:
    """The peer hung up (FIN: POLLRDHUP, whatever input is still unread) or reset; one poll() call."""
    poller = select.poll()
    poller.register(fd, _RDHUP)  # POLLHUP, POLLERR and POLLNVAL are always reported
    return bool(poller.poll(0))


def failed_response(request: protocol.Request, exc: BaseException) -> bytes:
    """The answer to a request whose answer could not be built: a 500 that closes the connection."""
    log_failure(f"internal error on {request!r}", exc)
    request.keep_alive = False
    return INTERNAL_ERROR


def handle(request: protocol.Request, abort: Callable[[], bool] | None = None) -> bytes | None:
    """Do the work the request asks for, then build its response (a 500 if that fails). None when
    `abort` said to abandon the work (client gone, shutdown limit passed): close the connection."""
    try:
        if request.kind == WORK and not work.do_work(request.cpu_us, request.gil_us, request.io_us, abort):
            return None
        return response_bytes(request)
    except Exception as exc:  # noqa: BLE001 - a worker thread must outlive a bad request
        return failed_response(request, exc)


# -- blocking connections (m1, m2) ------------------------------------------------------------------
def serve_blocking(sock: socket.socket, stopper: Stopper, keepalive_s: float) -> None:
    """Serve one connection until it closes, its idle timer or header deadline fires, or shutdown;
    always closes it. Any failure costs this connection only."""
    try:
        _serve_blocking(sock, stopper, keepalive_s)
    except OSError:
        pass  # the peer reset or stopped reading: nothing to answer
    except Exception as exc:  # noqa: BLE001 - m1's only thread, m2's connection thread must go on
        log_failure("connection failed", exc)
    finally:
        sock.close()


def _serve_blocking(sock: socket.socket, stopper: Stopper, keepalive_s: float) -> None:
    # Non-blocking socket: every wait is a poll() on the socket and the stop pipe together, so a
    # SIGTERM is seen at once and the shutdown limit cuts even a send to a client that stopped reading.
    limits = LIMITS
    sock.setblocking(False)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass
    fd = sock.fileno()
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    watching_stop = not stopper.is_set
    if watching_stop:
        poller.register(stopper.fd, select.POLLIN)

    def gone() -> bool:
        return time.monotonic() > stopper.deadline or peer_gone(fd)

    parser = RequestParser()
    last = stop_at = head_since = time.monotonic()
    received_any = False
    while True:
        request = parser.next_request()
        if request is not None:
            while request is not None:
                if stopper.is_set:
                    request.keep_alive = False
                data = handle(request, gone)
                if data is None or not _send_all(sock, data, stopper, limits.send_timeout_s):
                    return  # work abandoned, or the client stopped reading
                if not request.keep_alive:
                    return
                request = parser.next_request()
            head_since = time.monotonic()  # what is left, if anything, starts the next request
        now = time.monotonic()
        if stopper.is_set:
            if watching_stop:
                poller.unregister(stopper.fd)
                watching_stop = False
                stop_at = now
            if not parser.idle:
                deadline = stop_at + STOP_PARTIAL_GRACE_S
            elif not received_any:
                deadline = stop_at + STOP_FRESH_GRACE_S
            else:
                return  # idle keep-alive connection: close it
            deadline = min(deadline, stopper.deadline)
        else:
            deadline = last + keepalive_s
            if not parser.idle:
                deadline = min(deadline, head_since + limits.header_timeout_s)
        if now >= deadline:
            return
        events = poller.poll(max(1, int((deadline - now) * 1000) + 1))
        if not any(ev_fd == fd for ev_fd, _ in events):
            continue  # the stop pipe or a timeout: re-evaluate
        try:
            data = sock.recv(RECV_BYTES)
        except BlockingIOError:
            continue
        if not data:
            return
        received_any = True
        last = time.monotonic()
        if parser.idle:
            head_since = last
        parser.feed(data)


def _send_all(sock: socket.socket, data: bytes, stopper: Stopper, timeout_s: float) -> bool:
    """Send all of `data` on a non-blocking socket; False if the client took nothing for timeout_s
    (nginx's send_timeout: between two writes, not in all) or the shutdown limit passed."""
    try:
        sent = sock.send(data)
    except BlockingIOError:
        sent = 0
    if sent == len(data):
        return True
    view = memoryview(data)[sent:]
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLOUT)
    watching_stop = not stopper.is_set
    if watching_stop:
        poller.register(stopper.fd, select.POLLIN)
    while view:
        now = time.monotonic()
        deadline = min(now + timeout_s, stopper.deadline)
        if now >= deadline:
            return False
        events = poller.poll(max(1, int((deadline - now) * 1000) + 1))
        if watching_stop and stopper.is_set:
            poller.unregister(stopper.fd)  # the limit is now in the deadline
            watching_stop = False
        if not any(fd == sock.fileno() for fd, _ in events):
            if not events:
                return False  # no progress for the whole send timeout
            continue
        try:
            sent = sock.send(view)
        except BlockingIOError:
            continue
        view = view[sent:]
    return True


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
        "head_since",
        "sent_at",
        "reactor",
    )

    def __init__(self, sock: socket.socket, now: float, reactor: Reactor) -> None:
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
        # When the first bytes of the request now arriving came (its header deadline runs from there);
        # 0: none is arriving. Set where a request is found incomplete, cleared where one completes,
        # and set by the sweep for what those miss (a slow body), so the hot path pays one store.
        self.head_since = 0.0
        self.sent_at = now  # last time pending output made progress (send timeout)
        self.reactor = reactor

    def gone(self) -> bool:
        """Abandon this connection's work? Closed here, the peer hung up or reset, or the shutdown
        limit passed. Called between slices of long work, from any thread."""
        if self.closed or self.eof:
            return True
        now = time.monotonic()
        reactor = self.reactor
        if now > reactor.stopper.deadline or now > reactor.stop_deadline:
            return True
        return peer_gone(self.fd)


class _NoStopper:
    """Stands in for a Stopper where a loop is stopped by a posted begin_stop (m5/m7 I/O threads
    without the process's stopper)."""

    deadline = _NEVER_STOPS
    is_set = False


class Reactor:
    """A level-triggered epoll loop serving connections inline; one instance per loop thread."""

    oneshot = False  # m7 arms connections with EPOLLONESHOT
    accept_limit = 1 << 16  # per readiness event: "accept all pending" (docs/DESIGN.md §3, m3)

    def __init__(self, keepalive_s: float, name: str = "reactor", stopper: Stopper | None = None) -> None:
        self.keepalive_s = keepalive_s
        self.name = name
        # The process's stop flag: its deadline bounds in-flight work even before this loop (busy in
        # inline work) gets to begin_stop. A loop that owns its signal also watches it (watch_stopper).
        self.stopper = stopper or _NoStopper()
        limits = LIMITS
        self.header_timeout_s = limits.header_timeout_s
        self.send_timeout_s = limits.send_timeout_s
        self.shutdown_limit_s = limits.shutdown_limit_s
        self.ep = select.epoll()
        self.conns: dict[int, Conn] = {}
        self.handlers: dict[int, Callable[[int], None]] = {}
        self.listener: socket.socket | None = None
        self.listener_exclusive = False
        self.listen_paused_until = 0.0
        self.listen_registered = False
        self.stopping = False
        self.stop_at = 0.0
        self.stop_deadline = _NEVER_STOPS  # once stopping: past it, every connection closes
        self.now = time.monotonic()
        self.sweep_every_s = min(1.0, keepalive_s / 4, self.header_timeout_s / 4, self.send_timeout_s / 4)
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
        self.stopper = stopper
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
            try:
                fn(*args)
            except Exception as exc:  # noqa: BLE001 - one failed call must not strand the others
                self.on_error(None, exc, args)

    # -- connections -------------------------------------------------------------------------------
    def add_conn(self, sock: socket.socket) -> Conn | None:
        try:
            tune(sock)
        except OSError:
            sock.close()
            return None
        conn = Conn(sock, self.now, self)
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
        conn.out = b""  # the pinned answer goes now, not when the object does
        if self.conns.get(conn.fd) is conn:
            del self.conns[conn.fd]
            try:
                self.ep.unregister(conn.fd)
            except OSError:
                pass
        conn.sock.close()

    def on_error(self, fd: int | None, exc: BaseException, args: tuple = ()) -> None:
        """An exception on a request path (fd's event, or a posted call with `args`): log it and close
        the connection concerned; the loop carries on."""
        log_failure(f"{self.name}: request path failed; closing its connection", exc)
        conn = self.conns.get(fd) if fd is not None else None
        if conn is not None:
            self.close_conn(conn)
        for arg in args:
            if isinstance(arg, Conn):
                self.close_conn(arg)
            elif isinstance(arg, socket.socket) and arg.fileno() >= 0 and arg.fileno() not in self.conns:
                arg.close()  # handed over but never registered

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
        """Answer the complete requests buffered on the connection, inline (m3, m5, m6), one at a time
        (see _pipeline for more than one). The hot path (one request per recv, whole answer sent at
        once) is written out here rather than through write(): it is most of what m3 does under wrk,
        and calls cost in Python."""
        if conn.out:
            return  # an answer has not drained: nothing more starts (on_writable -> after_drain)
        parser = conn.parser
        request = parser.next_request()
        if request is None:
            if not conn.head_since:
                conn.head_since = self.now  # this recv brought the first bytes of a request
            return
        conn.head_since = 0.0
        if self.stopping:
            request.keep_alive = False
        try:
            if request.kind == WORK and not work.do_work(
                request.cpu_us, request.gil_us, request.io_us, conn.gone
            ):
                self.close_conn(conn)  # its client is gone, or the shutdown limit passed
                return
            data = response_bytes(request)
        except Exception as exc:  # noqa: BLE001 - e.g. MemoryError building a large body
            data = failed_response(request, exc)
        if not request.keep_alive:
            conn.close_after = True
        elif parser.buffered:  # pipelined requests behind it (or the start of the next one)
            self._pipeline(conn, data)
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

    def _pipeline(self, conn: Conn, data: bytes) -> None:
        """`data` answers a request with more buffered behind it: answer them one at a time, each
        one's work starting only once the answers before it are sent or gathered (up to
        OUT_BATCH_BYTES) for one send; an answer that does not drain at once parks the rest of the
        pipeline in the parser until it does (on_writable -> after_drain)."""
        parser = conn.parser
        outs = [data]
        size = len(data)
        while True:
            if size >= OUT_BATCH_BYTES:
                if not self.write(conn, outs[0] if len(outs) == 1 else b"".join(outs)):
                    return  # parked (or closed): the requests left wait until the answer drains
                outs = []
                size = 0
            request = parser.next_request()
            if request is None:
                if parser.buffered:
                    conn.head_since = self.now  # the bytes left start the next request
                break
            if self.stopping:
                request.keep_alive = False
            try:
                if request.kind == WORK and not work.do_work(
                    request.cpu_us, request.gil_us, request.io_us, conn.gone
                ):
                    self.close_conn(conn)
                    return
                data = response_bytes(request)
            except Exception as exc:  # noqa: BLE001
                data = failed_response(request, exc)
            outs.append(data)
            size += len(data)
            if not request.keep_alive:
                conn.close_after = True
                break
            if not parser.buffered:
                break
        if outs:
            self.write(conn, outs[0] if len(outs) == 1 else b"".join(outs))

    def write(self, conn: Conn, data: bytes) -> bool:
        """Send `data`; True if it all went out and the connection stays open. A partial write keeps
        the rest and waits for EPOLLOUT (reading stops meanwhile: back-pressure)."""
        if conn.closed:
            return False
        if conn.out:
            conn.out = bytes(conn.out) + data
            return False
        try:
            sent = conn.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close_conn(conn)
            return False
        if sent == len(data):
            if conn.close_after:
                self.close_conn(conn)
                return False
            return True
        self._park(conn, data, sent)
        return False

    def _park(self, conn: Conn, data: bytes, sent: int) -> None:
        """A partial write: keep the rest, wait for EPOLLOUT, and stop reading until it drains
        (back-pressure on a client that does not take its answers)."""
        conn.out = memoryview(data)[sent:]
        conn.sent_at = time.monotonic()  # (self.now may be stale after inline work)
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
            if sent:
                conn.sent_at = self.now
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
        self.stop_deadline = min(self.stopper.deadline, self.now + self.shutdown_limit_s)
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
        """The timers: idle keep-alive, header deadline, send timeout; in shutdown, its graces and
        its hard limit. Connections with a request in another thread (busy) are left alone."""
        now = self.now
        if self.listener is not None and not self.listen_registered and now >= self.listen_paused_until:
            self._register_listener()
        doomed = []
        send_before = now - self.send_timeout_s
        if not self.stopping:
            idle_before = now - self.keepalive_s
            head_before = now - self.header_timeout_s
            for c in self.conns.values():
                if c.busy:
                    continue
                if c.out:
                    if c.sent_at < send_before:
                        doomed.append(c)  # the client stopped reading
                elif c.last < idle_before:
                    doomed.append(c)  # idle keep-alive
                elif c.parser.idle:
                    c.head_since = 0.0
                elif not c.head_since:
                    c.head_since = now  # a request arriving that the I/O path did not date (a body)
                elif c.head_since < head_before:
                    doomed.append(c)  # a request still incomplete at its header deadline
        elif now > self.stop_deadline:
            doomed = list(self.conns.values())
        else:
            for c in self.conns.values():
                if c.busy:
                    continue
                if c.out:
                    if c.sent_at < send_before:
                        doomed.append(c)
                elif not c.parser.idle:
                    if now - self.stop_at > STOP_PARTIAL_GRACE_S:
                        doomed.append(c)
                elif c.received_any or now - self.stop_at > STOP_FRESH_GRACE_S:
                    doomed.append(c)
        for conn in doomed:
            self.close_conn(conn)

    def idle_extra(self) -> bool:
        """Subclasses: True while work outside `conns` is still pending (keeps the loop alive)."""
        return False

    def finished(self) -> bool:
        if not self.stopping:
            return False
        if not self.conns and not self.posted and not self.idle_extra():
            return True
        return self.now > self.stop_deadline + FINISH_GRACE_S  # threads that never reported back

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
                try:
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
                except Exception as exc:  # noqa: BLE001 - the loop outlives any one request
                    self.on_error(fd, exc)
            if self.now >= self.next_sweep and self.timers_done():
                break
        self.close()

    def timers_done(self) -> bool:
        """The sweep, once it is due (run() checks): True when the loop has finished stopping."""
        try:
            self.sweep()
        except Exception as exc:  # noqa: BLE001 - the loop outlives a failed sweep
            self.on_error(None, exc)
        self.next_sweep = self.now + self.sweep_every_s
        return self.finished()

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
            if (socks and not _dispatch_guarded(dispatch, socks)) or fd_limit:
                stopper.wait(ACCEPT_BACKOFF_S)
        socks, _ = accept_batch(listener, 1 << 20)
        if socks:
            _dispatch_guarded(dispatch, socks)
    finally:
        listener.close()


def _dispatch_guarded(dispatch: Callable[[list[socket.socket]], bool], socks: list[socket.socket]) -> bool:
    """dispatch(socks); if it fails (memory), the acceptor logs it and backs off instead of dying
    (the models' dispatch closes what it could not hand over)."""
    try:
        return dispatch(socks)
    except Exception as exc:  # noqa: BLE001 - the acceptor must outlive a failed hand-off
        log_failure("hand-off failed", exc)
        return False
