"""m8_proactor: completion-based I/O on io_uring. `threads` loops, each with its own ring and its own
SO_REUSEPORT listen socket (the kernel spreads connections by hash, as m6's reuseport mode does).

A loop never asks "is this socket ready?": it submits operations and reacts to their completions.
One multishot accept stays armed on the listen socket and completes once per new connection; each
connection has a recv in flight; an answer goes out as a send with the connection's next recv linked
behind it (IOSQE_IO_LINK: the recv starts only once the answer has left, so a client is not read
while its answer is pending, as in every model). Each loop iteration is one io_uring_enter that
submits everything queued and waits for at least one completion (or the timer sweep), so a request
costs a share of one system call instead of epoll_wait + recv + send.

The request path, timers and shutdown rules are base.Reactor's, unchanged: a connection's socket is
a RingSocket, whose recv() hands over what the ring's last recv completion brought and whose send()
queues a ring send (BlockingIOError while one is in flight, which parks the answer as a partial
write would). Its stopper and wake-up fds are multishot polls on the ring.

The ring is a small ctypes layer over the kernel ABI (include/uapi/linux/io_uring.h): io_uring_setup
and io_uring_enter through libc's syscall() (ctypes releases the GIL for the call), the rings mmap'd
and read and written with struct. Set up with IORING_SETUP_SINGLE_ISSUER | DEFER_TASKRUN where the
kernel has them (6.1+): completions are then posted only inside our io_uring_enter, so every ring
access is ordered by that system call on any architecture. Why not the PyPI `liburing` package:
docs/DESIGN.md §3 (m8).

Each connection pins a RECV_BYTES receive buffer while its recv is in flight (a proactor hands the
kernel its buffer up front; a reactor lends one only for the instant of a recv()): the memory cost of
idle connections that simkit's m8 charges.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import mmap
import os
import resource
import select
import socket
import struct
import threading
import time

from realkit.servers import base
from realkit.servers.base import EPOLLIN, FD_ERRNOS, Conn, Reactor, make_listener

RECV_BYTES = 4096  # per connection, pinned while its recv is in flight

# include/uapi/linux/io_uring.h (the syscall numbers are the same on every architecture)
SYS_IO_URING_SETUP, SYS_IO_URING_ENTER = 425, 426
OP_NOP, OP_POLL_ADD, OP_ACCEPT, OP_ASYNC_CANCEL, OP_SEND, OP_RECV = 0, 6, 13, 14, 26, 27
SQE_IO_LINK = 1 << 2
ACCEPT_MULTISHOT = 1 << 0  # in sqe.ioprio
POLL_ADD_MULTI = 1 << 0  # in sqe.len
CQE_F_MORE = 1 << 1
ENTER_GETEVENTS, ENTER_EXT_ARG = 1 << 0, 1 << 3
SETUP_SINGLE_ISSUER, SETUP_DEFER_TASKRUN = 1 << 12, 1 << 13
FEAT_SINGLE_MMAP, FEAT_NODROP, FEAT_EXT_ARG = 1 << 0, 1 << 1, 1 << 8
OFF_SQ_RING, OFF_CQ_RING, OFF_SQES = 0, 0x8000000, 0x10000000
# struct io_uring_sqe (64 bytes): opcode, flags, ioprio, fd, off, addr, len, op_flags, user_data,
# buf_index, personality, splice_fd_in, addr3, pad
SQE = struct.Struct("=BBHiQQIIQHHiQQ")
CQE = struct.Struct("=QiI")  # struct io_uring_cqe: user_data, res, flags
ENTER_ARG = struct.Struct("=QIIQ")  # struct io_uring_getevents_arg: sigmask, sigmask_sz, pad, ts
TIMESPEC = struct.Struct("=qq")
MSG_WAITALL = socket.MSG_WAITALL
_U32 = struct.Struct("=I")

# syscall() is variadic and reads every argument as a long. A Python int goes as a C int, whose
# register's upper half is left undefined: fine for io_uring_enter's 32-bit arguments (the kernel
# truncates them), not for its pointer and size_t, which always go as ready-made c_long objects
# (declaring argtypes would do it too, at three times the cost of a call).
_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_ZERO = ctypes.c_long(0)


class RingError(OSError):
    """io_uring is missing or refused on this host."""


class Ring:
    """One io_uring instance: queue SQEs with prep(), then enter() submits them and reaps completions
    as (user_data, res, flags) tuples. One thread uses a ring."""

    def __init__(self, entries: int = 1024) -> None:
        params = ctypes.create_string_buffer(120)  # struct io_uring_params
        struct.pack_into("=I", params, 8, SETUP_SINGLE_ISSUER | SETUP_DEFER_TASKRUN)
        fd = _syscall(SYS_IO_URING_SETUP, entries, params)
        if fd < 0:  # an older kernel without those flags: the plain ring (ordered by x86's TSO)
            params = ctypes.create_string_buffer(120)
            fd = _syscall(SYS_IO_URING_SETUP, entries, params)
        if fd < 0:
            err = ctypes.get_errno()
            raise RingError(err, f"io_uring_setup: {os.strerror(err)} (m8_proactor needs io_uring, Linux 5.19+,"
                                 " not disabled by kernel.io_uring_disabled or a seccomp policy)")
        self.fd = fd
        try:
            self._map(params.raw)
        except BaseException:
            os.close(fd)
            raise
        self.sq_tail = self.u32[self.sq_off[1] >> 2]  # ours to advance
        self.sq_tail_at = self.sq_off[1] >> 2
        self.cq_head_at, self.cq_tail_at = self.cq_off[0] >> 2, self.cq_off[1] >> 2
        self.pending = 0  # queued, not yet submitted
        ts = ctypes.create_string_buffer(TIMESPEC.size)
        arg = ctypes.create_string_buffer(ENTER_ARG.size)
        ENTER_ARG.pack_into(arg, 0, 0, 0, 0, ctypes.addressof(ts))
        self._ts, self._arg = ts, arg
        self._arg_ptr, self._arg_size = ctypes.c_long(ctypes.addressof(arg)), ctypes.c_long(ENTER_ARG.size)

    def _map(self, raw: bytes) -> None:
        sq_entries, cq_entries, _flags, _cpu, _idle, features = struct.unpack_from("=6I", raw, 0)
        if not features & FEAT_SINGLE_MMAP or not features & FEAT_EXT_ARG or not features & FEAT_NODROP:
            raise RingError(errno.ENOSYS, "io_uring: this kernel lacks SINGLE_MMAP, NODROP or EXT_ARG (Linux 5.11+)")
        self.sq_off = struct.unpack_from("=8I", raw, 40)  # head, tail, mask, entries, flags, dropped, array
        self.cq_off = struct.unpack_from("=8I", raw, 80)  # head, tail, mask, entries, overflow, cqes, flags
        size = max(self.sq_off[6] + 4 * sq_entries, self.cq_off[5] + CQE.size * cq_entries)
        prot, flags = mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED | mmap.MAP_POPULATE
        self.rings = mmap.mmap(self.fd, size, flags, prot, offset=OFF_SQ_RING)
        self.sqes = mmap.mmap(self.fd, SQE.size * sq_entries, flags, prot, offset=OFF_SQES)
        self.u32 = memoryview(self.rings).cast("I")  # the rings' 32-bit fields, by offset / 4
        self.sq_mask = self.u32[self.sq_off[2] >> 2]
        self.cq_mask = self.u32[self.cq_off[2] >> 2]
        self.cqes = self.cq_off[5]
        self.sq_entries = sq_entries
        array = self.sq_off[6] >> 2
        for i in range(sq_entries):  # SQ slot i holds SQE i, always: the array never changes again
            self.u32[array + i] = i

    def prep(self, op: int, fd: int, user_data: int, addr: int = 0, length: int = 0, op_flags: int = 0,
             flags: int = 0, ioprio: int = 0) -> None:
        """Queue one SQE; the next enter() publishes the tail and submits it. Every enter submits all
        that is queued, so the kernel has consumed every slot before this one's turn comes again."""
        if self.pending >= self.sq_entries:
            self.submit()
            if self.pending >= self.sq_entries:  # the kernel took none (EBUSY: completions back up)
                raise OSError(errno.EBUSY, "io_uring: the submission queue is full")
        tail = self.sq_tail
        SQE.pack_into(self.sqes, (tail & self.sq_mask) << 6, op, flags, ioprio, fd, 0, addr, length, op_flags,
                      user_data, 0, 0, 0, 0, 0)
        self.sq_tail = (tail + 1) & 0xFFFFFFFF
        self.pending += 1

    def submit(self) -> None:
        """Submit what is queued, wait for nothing, reap nothing (the completions stay for enter())."""
        self._u32_tail()
        ret = _syscall(SYS_IO_URING_ENTER, self.fd, self.pending, 0, 0, _ZERO, _ZERO)
        self._submitted(ret)

    def _u32_tail(self) -> None:
        if self.pending:
            self.u32[self.sq_tail_at] = self.sq_tail

    def _submitted(self, ret: int) -> None:
        if ret >= 0:
            self.pending -= min(ret, self.pending)
            return
        err = ctypes.get_errno()
        if err not in (errno.ETIME, errno.EINTR, errno.EAGAIN, errno.EBUSY):
            raise OSError(err, f"io_uring_enter: {os.strerror(err)}")

    def enter(self, wait: int, timeout_s: float | None = None) -> list[tuple[int, int, int]]:
        """Submit what is queued; wait for `wait` completions (at most timeout_s); return every
        completion posted so far."""
        if not wait:
            self.submit()
            return self.reap()
        pending = self.pending
        self._u32_tail()
        if timeout_s is None:
            ret = _syscall(SYS_IO_URING_ENTER, self.fd, pending, wait, ENTER_GETEVENTS, _ZERO, _ZERO)
        else:
            timeout_s = max(0.0, timeout_s)
            TIMESPEC.pack_into(self._ts, 0, int(timeout_s), int(timeout_s % 1.0 * 1e9))
            ret = _syscall(SYS_IO_URING_ENTER, self.fd, pending, wait, ENTER_GETEVENTS | ENTER_EXT_ARG,
                           self._arg_ptr, self._arg_size)
        self._submitted(ret)
        return self.reap()

    def reap(self) -> list[tuple[int, int, int]]:
        u32 = self.u32
        head, tail = u32[self.cq_head_at], u32[self.cq_tail_at]
        if head == tail:
            return []
        mask, cqes, unpack = self.cq_mask, self.cqes, CQE.unpack_from
        rings = self.rings
        out = [unpack(rings, cqes + (((head + i) & mask) << 4)) for i in range((tail - head) & 0xFFFFFFFF)]
        u32[self.cq_head_at] = tail
        return out

    def close(self) -> None:
        self.u32.release()
        self.sqes.close()
        self.rings.close()
        os.close(self.fd)


def available() -> str | None:
    """None if this host can run m8 (an io_uring instance can be set up), else why not."""
    try:
        Ring(8).close()
    except OSError as exc:
        return str(exc)
    return None


def _address(data: bytes) -> int:
    return ctypes.cast(data, ctypes.c_void_p).value or 0


class RingSocket:
    """A connection's socket as base.Reactor sees it, backed by the loop's ring: recv() hands over what
    the last recv completion brought; send() submits a ring send and returns 0, so the Reactor parks
    the answer as after a partial write (its send timeout runs, nothing more starts, the connection is
    not read), and once the send completes, the Reactor's retry learns how much went out."""

    __slots__ = ("sock", "loop", "conn", "buf", "buf_addr", "got", "recv_token", "send_token", "sending",
                 "done")

    def __init__(self, sock: socket.socket, loop: Proactor) -> None:
        self.sock = sock
        self.loop = loop
        self.conn: Conn | None = None
        self.buf = bytearray(RECV_BYTES)
        self.buf_addr = ctypes.addressof((ctypes.c_char * RECV_BYTES).from_buffer(self.buf))
        self.got: bytes | None = None  # what the last recv completion brought, until recv() takes it
        self.recv_token = 0  # the recv in flight (0: none)
        self.send_token = 0  # the send in flight (0: none)
        self.sending: bytes = b""  # its bytes, alive until it completes
        self.done: int | None = None  # bytes the last send completion sent, until send() reports them

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self, _n: int) -> bytes:
        got = self.got
        if got is None:
            raise BlockingIOError(errno.EAGAIN, "no recv completion")
        self.got = None
        return got

    def send(self, data) -> int:
        done = self.done
        if done is not None:  # the Reactor retrying the answer the ring has just sent (part of)
            self.done = None
            return done
        if self.send_token:
            raise BlockingIOError(errno.EAGAIN, "a send is in flight")
        self.loop.start_send(self, bytes(data) if isinstance(data, memoryview) else data)
        return 0

    def close(self) -> None:
        """Abort what is in flight (a send the client stopped taking, a pending recv) and close."""
        self.loop.cancel(self.send_token)
        self.loop.cancel(self.recv_token)
        self.sock.close()


class Proactor(Reactor):
    """base.Reactor's request path and timers driven by io_uring completions instead of epoll."""

    def __init__(self, keepalive_s: float, name: str = "m8", stopper=None) -> None:
        self.ring = Ring()
        # token (the SQE's user_data) -> (handler, object): handler(token, object, res, flags) on each
        # completion; an operation is forgotten at its last completion (no IORING_CQE_F_MORE)
        self.ops: dict[int, tuple] = {}
        self.tokens = itertools.count(1)
        self.accept_token = 0
        self.poll_tokens: dict[int, int] = {}  # fd -> its multishot poll
        self.listener_family = socket.AF_INET
        self.armed_nofile = 0  # RLIMIT_NOFILE when the accept was armed
        super().__init__(keepalive_s, name=name, stopper=stopper)
        self.ep.close()  # the Reactor's epoll instance: unused here

    # -- operations --------------------------------------------------------------------------------
    def _op(self, handler, obj) -> int:
        token = next(self.tokens)
        self.ops[token] = (handler, obj)
        return token

    def cancel(self, token: int) -> None:
        if token in self.ops:
            self.ring.prep(OP_ASYNC_CANCEL, -1, 0, addr=token)

    def arm_recv(self, rs: RingSocket) -> None:
        rs.recv_token = token = self._op(self._on_recv, rs)
        self.ring.prep(OP_RECV, rs.sock.fileno(), token, addr=rs.buf_addr, length=RECV_BYTES)

    def start_send(self, rs: RingSocket, data: bytes) -> None:
        """A send of `data` (MSG_WAITALL: all of it, or an error), and, when the connection will read
        again afterwards, its next recv linked behind it."""
        conn = rs.conn
        rs.sending = data
        rs.send_token = token = self._op(self._on_send, rs)
        link = not (rs.recv_token or conn.eof or conn.close_after)
        self.ring.prep(OP_SEND, rs.sock.fileno(), token, addr=_address(data), length=len(data),
                       op_flags=MSG_WAITALL, flags=SQE_IO_LINK if link else 0)
        if link:
            self.arm_recv(rs)

    def ensure_recv(self, conn: Conn) -> None:
        """Keep a recv in flight while the connection wants input and has nothing pending out."""
        rs = conn.sock
        if not (conn.closed or rs.recv_token or rs.send_token or conn.out or conn.eof or conn.close_after):
            self.arm_recv(rs)

    # -- completions -----------------------------------------------------------------------------
    def _on_recv(self, token: int, rs: RingSocket, res: int, flags: int) -> None:
        rs.recv_token = 0
        conn = rs.conn
        if conn.closed:
            return
        if res < 0 and res != -errno.ECANCELED:  # cancelled: its linked send fell short (it acts)
            self.close_conn(conn)
            return
        if res >= 0:
            rs.got = bytes(rs.buf[:res]) if res else b""
            self.on_readable(conn)
        self.ensure_recv(conn)

    def _on_send(self, token: int, rs: RingSocket, res: int, flags: int) -> None:
        rs.send_token = 0
        rs.sending = b""
        conn = rs.conn
        if conn.closed:
            return
        if res < 0:
            self.close_conn(conn)
            return
        rs.done = res
        self.on_writable(conn)  # the Reactor's EPOLLOUT path: what went out, then what waited behind it
        rs.done = None
        if conn.out and not conn.closed and not rs.send_token:
            self.on_writable(conn)  # short: send the rest
        self.ensure_recv(conn)

    def _on_accept(self, token: int, _obj, res: int, flags: int) -> None:
        current = token == self.accept_token
        if res >= 0:
            self.add_conn(socket.socket(self.listener_family, socket.SOCK_STREAM, 0, fileno=res))
            # The kernel reads RLIMIT_NOFILE when an accept is prepared, so a multishot accept keeps
            # the limit it was armed under: re-arm it when the limit has changed since (prlimit).
            if current and resource.getrlimit(resource.RLIMIT_NOFILE)[0] != self.armed_nofile:
                self._unregister_listener()
                self._register_listener()
                return
        elif current and -res in FD_ERRNOS:
            self._pause_listener()  # out of fds: leave the listen socket alone for a while (base.py)
        if current and not flags & CQE_F_MORE:
            self.accept_token = 0
            if self.listen_registered and self.listener is not None and not self.stopping:
                self._register_listener()  # the kernel ended it: arm another

    def _on_poll(self, token: int, fd: int, res: int, flags: int) -> None:
        current = self.poll_tokens.get(fd) == token
        if current and not flags & CQE_F_MORE:
            del self.poll_tokens[fd]
            if fd in self.handlers and res >= 0:
                self._poll(fd)  # the kernel ended it: arm another
        handler = self.handlers.get(fd)
        if current and handler is not None and res >= 0:
            handler(res)

    def _poll(self, fd: int) -> None:
        self.poll_tokens[fd] = token = self._op(self._on_poll, fd)
        self.ring.prep(OP_POLL_ADD, fd, token, length=POLL_ADD_MULTI, op_flags=select.POLLIN)

    # -- base.Reactor's registration, on the ring ----------------------------------------------------
    def add_handler(self, fd: int, mask: int, fn) -> None:
        self.handlers[fd] = fn
        self._poll(fd)

    def remove_handler(self, fd: int) -> None:
        if self.handlers.pop(fd, None) is not None:
            self.cancel(self.poll_tokens.pop(fd, 0))

    def _register_listener(self) -> None:
        self.armed_nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.listener_family = self.listener.family
        self.accept_token = token = self._op(self._on_accept, None)
        self.ring.prep(OP_ACCEPT, self.listener.fileno(), token, ioprio=ACCEPT_MULTISHOT,
                       op_flags=os.O_CLOEXEC)
        self.listen_registered = True

    def _unregister_listener(self) -> None:
        if self.listen_registered:
            self.cancel(self.accept_token)
            self.accept_token = 0
            self.listen_registered = False

    def add_conn(self, sock: socket.socket) -> Conn | None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            sock.close()
            return None
        rs = RingSocket(sock, self)
        conn = rs.conn = Conn(rs, self.now, self)
        conn.mask = EPOLLIN
        self.conns[conn.fd] = conn
        self.arm_recv(rs)
        return conn

    def set_mask(self, conn: Conn, mask: int) -> None:
        conn.mask = mask  # what the connection waits for; its ring operations follow (ensure_recv)

    def close_conn(self, conn: Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        conn.out = b""
        if self.conns.get(conn.fd) is conn:
            del self.conns[conn.fd]
        conn.sock.close()

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> None:
        ring, ops, monotonic = self.ring, self.ops, time.monotonic
        while True:
            timeout = self.next_sweep - self.now
            completions = ring.enter(1, timeout if timeout > 0 else 0)
            self.now = monotonic()
            for token, res, flags in completions:
                op = ops.get(token) if flags & CQE_F_MORE else ops.pop(token, None)
                if op is None:
                    continue  # a cancel's own completion (user_data 0)
                handler, obj = op
                try:
                    handler(token, obj, res, flags)
                except Exception as exc:  # noqa: BLE001 - the loop outlives any one request
                    conn = getattr(obj, "conn", None)
                    self.on_error(conn.fd if conn is not None else None, exc)
            if self.now >= self.next_sweep and self.timers_done():
                break
        self.close()

    def close(self) -> None:
        super().close()  # connections (each cancels its operations), listener, wake-up fd
        for token in list(self.ops):
            self.cancel(token)
        # The ring may still write into a buffer until its operation completes: wait (briefly) for them.
        deadline = time.monotonic() + 1.0
        while self.ops and time.monotonic() < deadline:
            for token, _res, flags in self.ring.enter(1, 0.05):
                if not flags & CQE_F_MORE:
                    self.ops.pop(token, None)
        self.ring.close()


def _new_loop(index: int, spec, listener: socket.socket, stopper) -> Proactor:
    try:
        loop = Proactor(spec.keepalive_timeout_s, name=f"m8-{index}", stopper=stopper)
    except BaseException:
        listener.close()
        raise
    loop.watch_stopper(stopper)
    loop.set_listener(listener)
    return loop


def _thread_loop(index: int, spec, listener: socket.socket, stopper, outcome: list, up: threading.Event) -> None:
    """A loop on its own thread: a ring is set up by the thread that submits to it
    (IORING_SETUP_SINGLE_ISSUER). `outcome` gets None, or the exception that stopped it starting."""
    try:
        loop = _new_loop(index, spec, listener, stopper)
    except BaseException as exc:  # noqa: BLE001 - serve() raises it
        outcome.append(exc)
        up.set()
        return
    outcome.append(None)
    up.set()
    loop.run()


def serve(spec, host, port, stopper, ready) -> None:
    """`spec.threads` loops, each its own ring and SO_REUSEPORT listener on the same port; the first
    binds the port (0: any free one) and runs on this thread, the others join the port."""
    first = make_listener(host, port, spec.backlog, reuseport=True)
    port = first.getsockname()[1]
    loop = _new_loop(0, spec, first, stopper)  # no io_uring here: the error, before anything starts
    threads: list[threading.Thread] = []
    try:
        for i in range(1, spec.threads):
            outcome: list = []
            up = threading.Event()
            listener = make_listener(host, port, spec.backlog, reuseport=True)
            threads.append(threading.Thread(target=_thread_loop, name=f"m8-{i}", daemon=True,
                                            args=(i, spec, listener, stopper, outcome, up)))
            threads[-1].start()
            up.wait()
            if outcome[0] is not None:
                raise outcome[0]
    except BaseException:
        stopper.set()
        loop.close()
        for thread in threads:
            thread.join(base.FINISH_GRACE_S)
        raise
    ready(port)
    loop.run()
    limit = base.LIMITS.shutdown_limit_s
    deadline = min(stopper.deadline, time.monotonic() + limit) + 2 * base.FINISH_GRACE_S
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
