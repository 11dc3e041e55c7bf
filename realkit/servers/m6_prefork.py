"""m6_prefork: the master opens the listen socket, forks `processes` single-thread reactor workers
(base.Reactor, as in m3), restarts any that die, and forwards SIGTERM/SIGINT to them on shutdown.

How connections reach the workers (spec.dispatch):
- shared:    one listen socket inherited by every worker, registered with EPOLLEXCLUSIVE so a new
             connection wakes one worker, not all (no thundering herd).
- reuseport: each worker binds its own SO_REUSEPORT socket to the port and the kernel spreads
             connections by hash. The master keeps a bound, non-listening socket on the port so the
             port stays reserved and a restarted worker can bind it again.
- fdpass:    the master accepts and passes each fd round-robin over a per-worker Unix SOCK_SEQPACKET
             socketpair (socket.send_fds). A worker near its fd limit stops reading its channel (the
             master then tries the next worker, or holds the fd and pauses accepting).

The master prints the port (ready_callback) only once every first worker reports ready on a pipe.

A worker dies with its master, whatever the mode: it asks the kernel for SIGTERM when its parent dies
(prctl PR_SET_PDEATHSIG; SIGTERM, so it stops as on a shutdown: no new connections, in-flight
requests answered within the shutdown limit), and in fdpass mode it also closes the master's end of
its socketpair, so the channel reads end-of-file once the master is gone.
"""

from __future__ import annotations

import ctypes
import os
import resource
import select
import signal
import socket
import sys
import time
import traceback
from collections import deque

from realkit.servers import base
from realkit.servers.base import (
    ACCEPT_BACKOFF_S,
    EPOLLIN,
    FINISH_GRACE_S,
    Reactor,
    Stopper,
    accept_batch,
    install_signal_handlers,
    log,
    make_listener,
)

READY_TIMEOUT_S = 30.0
CRASH_LOOP_S = 1.0  # a worker that dies sooner than this after its fork is restarted after a pause
FD_HEADROOM = 16  # below this many spare fds, a fdpass worker counts its open fds exactly
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int, stopper: Stopper) -> None:
    """SIGTERM this process when its parent dies (Linux prctl); if the parent is already gone (it
    died between the fork and here), stop at once."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            log(f"m6: prctl(PR_SET_PDEATHSIG) failed: errno {ctypes.get_errno()}")
    except (OSError, AttributeError) as exc:
        log(f"m6: no PR_SET_PDEATHSIG ({exc!r}); fdpass workers still see their channel close")
    if os.getppid() != parent_pid:
        stopper.set()


class FdPassReactor(Reactor):
    """A worker loop fed connections over a Unix socket instead of a listen socket."""

    def __init__(self, keepalive_s: float, channel: socket.socket, name: str, stopper: Stopper) -> None:
        super().__init__(keepalive_s, name=name, stopper=stopper)
        self.channel = channel
        self.channel_open = True
        self.reading_channel = False
        self.fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.base_fds = len(os.listdir("/proc/self/fd"))
        self._resume_channel()

    def _resume_channel(self) -> None:
        if self.channel_open and not self.reading_channel:
            self.add_handler(self.channel.fileno(), EPOLLIN, self._on_channel)
            self.reading_channel = True

    def _pause_channel(self) -> None:
        if self.reading_channel:
            self.remove_handler(self.channel.fileno())
            self.reading_channel = False

    def _near_fd_limit(self) -> bool:
        # Re-read the limit: it can be lowered from outside (prlimit) while we run.
        self.fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if self.base_fds + len(self.conns) + FD_HEADROOM < self.fd_limit:
            return False
        # Close to it: probe. The limit bounds fd numbers, not their count, so ask the kernel for the
        # lowest free number (what a received fd would get) instead of counting.
        try:
            os.close(os.dup(self.channel.fileno()))
        except OSError:
            return True
        return False

    def _on_channel(self, events: int = 0) -> None:
        for _ in range(256):
            if self._near_fd_limit():
                self._pause_channel()
                return
            try:
                msg, fds, flags, _ = socket.recv_fds(self.channel, 16, 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                msg, fds, flags = b"", [], 0
            if not msg and not fds:
                # The master is gone: no more connections will come.
                self._pause_channel()
                self.channel_open = False
                self.begin_stop()
                return
            if flags & socket.MSG_CTRUNC:
                log(f"{self.name}: a passed fd was dropped by the kernel (fd limit)")
            for fd in fds:
                conn = self.add_conn(socket.socket(fileno=fd))
                if conn is not None and self.stopping:
                    self.on_readable(conn)

    def sweep(self) -> None:
        super().sweep()
        if not self.reading_channel and self.channel_open and not self._near_fd_limit():
            self._resume_channel()
            self._on_channel()

    def stop_hook(self) -> None:
        # Connections the master passed before it forwarded SIGTERM are already in the channel.
        if self.channel_open:
            self._on_channel()


class Master:
    def __init__(self, spec, host: str, port: int, stopper: Stopper) -> None:
        self.spec = spec
        self.host = host
        self.stopper = stopper
        self.dispatch = spec.dispatch
        self.n = spec.processes
        reuseport = self.dispatch == "reuseport"
        self.listener = make_listener(host, port, spec.backlog, reuseport=reuseport, listen=not reuseport)
        self.port = self.listener.getsockname()[1]
        self.pids: list[int | None] = [None] * self.n
        self.channels: list[socket.socket | None] = [None] * self.n
        self.spawned_at: list[float] = [0.0] * self.n
        self.ready_r, self.ready_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.chld_r, self.chld_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.pid = os.getpid()
        self.pending: deque[socket.socket] = deque()  # fdpass: accepted, not yet passed
        self.next_worker = 0
        self.accept_paused_until = 0.0
        self.stopping = False

    # -- workers ---------------------------------------------------------------------------------
    def spawn(self, index: int) -> None:
        parent = child_channel = None
        if self.dispatch == "fdpass":
            parent, child_channel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            parent.setblocking(False)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = self._worker_main(index, child_channel, parent)
            except BaseException:  # noqa: BLE001 - a worker must never return into the master's code
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self.pids[index] = pid
        self.spawned_at[index] = time.monotonic()
        if child_channel is not None:
            child_channel.close()
            old = self.channels[index]
            if old is not None:
                old.close()
            self.channels[index] = parent

    def _worker_main(
        self, index: int, channel: socket.socket | None, master_end: socket.socket | None
    ) -> int:
        # Fresh signal state: the master's stop pipe and SIGCHLD handler are not ours.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        stopper = Stopper()
        install_signal_handlers(stopper)
        die_with_parent(self.pid, stopper)
        if master_end is not None:
            master_end.close()  # else this worker itself would keep its channel open: no EOF, ever
        for fd in (self.ready_r, self.chld_r, self.chld_w):
            os.close(fd)
        self.stopper.close()
        for other in self.channels:
            if other is not None:
                other.close()
        for sock in self.pending:
            sock.close()
        name = f"m6-worker-{index}"
        if self.dispatch == "fdpass":
            self.listener.close()
            channel.setblocking(False)
            reactor = FdPassReactor(self.spec.keepalive_timeout_s, channel, name, stopper)
        else:
            reactor = Reactor(self.spec.keepalive_timeout_s, name=name, stopper=stopper)
            if self.dispatch == "reuseport":
                self.listener.close()
                listener = make_listener(self.host, self.port, self.spec.backlog, reuseport=True)
                reactor.set_listener(listener)
            else:
                reactor.set_listener(self.listener, exclusive=True)
        reactor.watch_stopper(stopper)
        os.write(self.ready_w, bytes([index % 256]))
        os.close(self.ready_w)
        reactor.run()
        return 0

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid not in self.pids:
                continue
            index = self.pids.index(pid)
            self.pids[index] = None
            if not self.stopping:
                log(f"m6: worker {index} (pid {pid}) exited with status {status}; starting a new one")
                if os.WIFEXITED(status) and time.monotonic() - self.spawned_at[index] < CRASH_LOOP_S:
                    # It failed on its own right after it started: do not fork in a tight loop.
                    # (A worker killed by a signal is replaced at once.)
                    self.stopper.wait(CRASH_LOOP_S)
                    if self.stopper.is_set:
                        continue
                self.spawn(index)

    # -- fd passing --------------------------------------------------------------------------------
    def pass_fds(self) -> None:
        while self.pending:
            sock = self.pending[0]
            for _ in range(self.n):
                index = self.next_worker
                self.next_worker = (self.next_worker + 1) % self.n
                channel = self.channels[index]
                if channel is None or self.pids[index] is None:
                    continue
                try:
                    socket.send_fds(channel, [b"c"], [sock.fileno()])
                except (BlockingIOError, InterruptedError, BrokenPipeError, ConnectionError):
                    continue
                except OSError:
                    continue
                self.pending.popleft()
                sock.close()
                break
            else:
                return  # every worker is full or gone: keep the rest, pause accepting

    # -- the master loop ---------------------------------------------------------------------------
    def _on_sigchld(self, signum, frame) -> None:
        try:
            os.write(self.chld_w, b"c")
        except OSError:
            pass

    def run(self, ready) -> None:
        try:
            # The master is single-threaded, so SIGTERM interrupts its select() directly; the wake-up fd
            # would also fire on SIGCHLD and leave the stop pipe readable without a stop.
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, self._on_sigchld)
        except ValueError:
            pass  # not the main thread: the periodic reap below still finds dead workers
        for index in range(self.n):
            self.spawn(index)
        if self._wait_ready():
            ready(self.port)
        try:
            self._loop()
        finally:
            self._shutdown()

    def _wait_ready(self) -> bool:
        reported = 0
        deadline = time.monotonic() + READY_TIMEOUT_S
        while reported < self.n and not self.stopper.is_set and time.monotonic() < deadline:
            ready, _, _ = select.select([self.ready_r, self.chld_r, self.stopper.fd], [], [], 0.2)
            if self.ready_r in ready:
                try:
                    reported += len(os.read(self.ready_r, 4096))
                except BlockingIOError:
                    pass
            self._drain(self.chld_r)
            self.reap()
        if reported < self.n and not self.stopper.is_set:
            log(f"m6: only {reported}/{self.n} workers reported ready")
        return not self.stopper.is_set

    @staticmethod
    def _drain(fd: int) -> None:
        try:
            while os.read(fd, 4096):
                pass
        except BlockingIOError:
            pass

    def _loop(self) -> None:
        fdpass = self.dispatch == "fdpass"
        while not self.stopper.is_set:
            watch = [self.stopper.fd, self.chld_r, self.ready_r]
            now = time.monotonic()
            accepting = fdpass and not self.pending and now >= self.accept_paused_until
            if accepting:
                watch.append(self.listener.fileno())
            timeout = 0.05 if (fdpass and (self.pending or now < self.accept_paused_until)) else 1.0
            ready, _, _ = select.select(watch, [], [], timeout)
            self._drain(self.chld_r)
            self._drain(self.ready_r)
            self.reap()
            if fdpass:
                self.pass_fds()
                if accepting and self.listener.fileno() in ready:
                    socks, fd_limit = accept_batch(self.listener, 64)
                    self.pending.extend(socks)
                    self.pass_fds()
                    if fd_limit:
                        self.accept_paused_until = time.monotonic() + ACCEPT_BACKOFF_S

    def _shutdown(self) -> None:
        self.stopping = True
        if self.dispatch == "fdpass":
            socks, _ = accept_batch(self.listener, 1 << 20)
            self.pending.extend(socks)
            deadline = time.monotonic() + 2.0
            while self.pending and time.monotonic() < deadline:
                self.pass_fds()
                if self.pending:
                    time.sleep(0.01)
            for sock in self.pending:
                sock.close()
        if self.dispatch != "reuseport":
            # Workers take what is queued on the shared socket; once they close it, it must go.
            self.listener.close()
        for pid in self.pids:
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        # Workers abandon in-flight work at their own shutdown limit and exit; one that does not is
        # killed a little later.
        deadline = time.monotonic() + base.LIMITS.shutdown_limit_s + 2 * FINISH_GRACE_S + 1
        while any(pid is not None for pid in self.pids):
            if time.monotonic() > deadline:
                for pid in self.pids:
                    if pid is not None:
                        os.kill(pid, signal.SIGKILL)
                deadline = float("inf")
            self.reap()
            select.select([self.chld_r], [], [], 0.1)
            self._drain(self.chld_r)
        for channel in self.channels:
            if channel is not None:
                channel.close()
        self.listener.close()
        for fd in (self.ready_r, self.ready_w, self.chld_r, self.chld_w):
            os.close(fd)
        try:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        except ValueError:
            pass


def serve(spec, host, port, stopper, ready) -> None:
    Master(spec, host, port, stopper).run(ready)
