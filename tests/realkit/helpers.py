"""Client-side helpers for the realkit conformance suite: start/stop a server subprocess, build
requests, parse responses (blocking and asyncio), and inspect the server's process tree.

Kept independent of realkit itself on purpose: the suite checks the servers from the outside,
over loopback, the way wrk or curl would, so a shared bug in realkit.protocol cannot hide itself.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import psutil
import pytest

from simkit import registry

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[2]
# How the suite starts a server: `serverlab serve` and its flags (it runs realkit.servers.run_server in
# its own process). realkit.runner's JSON entry, `python -m realkit.servers`, has tests of its own.
SERVE_ENTRY: tuple[str, ...] = ("-m", "serverlab.cli", "serve")
READY_TIMEOUT_S = 60.0  # start-up includes work.py's self-calibration, on a loaded 2-core box
SOCKET_TIMEOUT_S = 10.0
# The shared server's idle keep-alive timeout: long enough that no test's own pauses (slowloris
# hold, byte-at-a-time sends) reach it, short enough for the timer test to wait it out.
SHARED_KEEPALIVE_S = 3.0


# ---------------------------------------------------------------- server configurations


@dataclass(frozen=True)
class ServerConfig:
    """One server configuration under test: an id for pytest and the CLI arguments."""

    id: str
    model: str
    args: tuple[str, ...] = ()

    @property
    def number(self) -> int:
        return int(self.model[1])

    @property
    def processes(self) -> int:
        if "--processes" in self.args:
            return int(self.args[self.args.index("--processes") + 1])
        return 1

    def cli(self) -> list[str]:
        return ["--model", self.model, *self.args]


# m1 gets a deep backlog: its clients queue in the kernel while it serves one connection at a time.
MODELS: tuple[ServerConfig, ...] = (
    ServerConfig("m1", "m1_iterative", ("--backlog", "512")),
    ServerConfig("m2", "m2_thread_per_conn"),
    ServerConfig("m3", "m3_reactor"),
    ServerConfig("m4-pool4", "m4_reactor_workers", ("--pool", "4")),
    ServerConfig("m5-threads3", "m5_multi_reactor", ("--threads", "3")),
    ServerConfig("m6-shared", "m6_prefork", ("--processes", "2", "--dispatch", "shared")),
    ServerConfig("m6-reuseport", "m6_prefork", ("--processes", "2", "--dispatch", "reuseport")),
    ServerConfig("m6-fdpass", "m6_prefork", ("--processes", "2", "--dispatch", "fdpass")),
    ServerConfig("m7-threads3", "m7_reactor_spawn", ("--threads", "3")),
    ServerConfig("m8-threads2", "m8_proactor", ("--threads", "2")),
)
MODEL_IDS = [m.id for m in MODELS]


# ---------------------------------------------------------------- server process


class ServerStartError(RuntimeError):
    pass


@dataclass
class ServerProcess:
    """A running server subprocess in its own session (so teardown can reap a whole m6 tree)."""

    config: ServerConfig
    proc: subprocess.Popen
    port: int
    stdout_path: Path
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        """stdout + stderr so far, for failure messages."""
        out = self.stdout_path.read_text(errors="replace")
        err = self.stderr_path.read_text(errors="replace")
        return f"--- stdout ---\n{out[-3000:]}\n--- stderr ---\n{err[-6000:]}"

    def tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM the server; wait for it to exit; returns its exit code (None if it had to be killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL everything still in the server's process group (no orphans), then reap."""
        for p in group_members(self.pid):
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        try:
            self.proc.kill()
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass


def group_members(pgid: int) -> list[psutil.Process]:
    """Processes whose process group is pgid (the server ran as a session leader), orphans included."""
    members = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid:
                members.append(p)
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            continue
    return members


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the forked child before exec: SIGTERM the server if the test process dies (a pytest
    run killed from outside skips fixture teardown); the server's own shutdown then takes any
    m6 workers with it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: teardown still reaps the group


def require(config: ServerConfig) -> None:
    """Skip the test where this host cannot run the configuration's server: its real module's
    available() says why (m8_proactor without io_uring)."""
    module = importlib.import_module(registry.get(config.model).real_module_name)
    check = getattr(module, "available", None)
    reason = check() if check is not None else None
    if reason:
        pytest.skip(f"{config.model} cannot run here: {reason}")


def start_server(
    config: ServerConfig,
    extra_args: Sequence[str] = (),
    preexec_fn: Callable[[], None] | None = None,
    ready_timeout_s: float = READY_TIMEOUT_S,
    entry: Sequence[str] = SERVE_ENTRY,
    pass_host: bool = True,
    env: Mapping[str, str] | None = None,
) -> ServerProcess:
    """Start `python -m serverlab.cli serve ...` (or `python <entry> ...`) and wait for the port line.
    `env`: variables added to this process's environment for the server (e.g. its time limits)."""
    require(config)
    outdir = Path(tempfile.mkdtemp(prefix=f"realkit-{config.id}-"))
    stdout_path, stderr_path = outdir / "stdout", outdir / "stderr"
    host_args = ["--host", HOST] if pass_host else []  # without: the default must be loopback
    cmd = [sys.executable, *entry, *config.cli(), *extra_args, *host_args, "--port", "0"]

    def pre_exec() -> None:
        _die_with_parent()
        if preexec_fn is not None:
            preexec_fn()

    # Files, not pipes: a server that logs a lot can never block on a full pipe nobody reads.
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=REPO_ROOT,
            start_new_session=True, preexec_fn=pre_exec, env={**os.environ, **env} if env else None,
        )
    server = ServerProcess(config, proc, 0, stdout_path, stderr_path)
    deadline = time.monotonic() + ready_timeout_s
    while True:
        lines = stdout_path.read_text(errors="replace").splitlines()
        ports = [int(line.strip()) for line in lines if re.fullmatch(r"\s*\d+\s*", line)]
        if ports:
            server.port = ports[0]
            return server
        if proc.poll() is not None:
            raise ServerStartError(f"{' '.join(cmd)} exited with {proc.returncode} before ready\n{server.output()}")
        if time.monotonic() > deadline:
            server.kill()
            raise ServerStartError(f"{' '.join(cmd)} printed no port within {ready_timeout_s}s\n{server.output()}")
        time.sleep(0.02)


# ---------------------------------------------------------------- process-tree metrics


def tree_fds_threads(server: ServerProcess) -> tuple[int, int, int]:
    """(open fds, threads, processes) summed over the server's process tree."""
    fds = threads = procs = 0
    for p in server.tree():
        try:
            fds += p.num_fds()
            threads += p.num_threads()
            procs += 1
        except psutil.NoSuchProcess:
            continue
    return fds, threads, procs


def tree_rss_bytes(server: ServerProcess) -> int:
    """Resident memory summed over the server's process tree."""
    total = 0
    for p in server.tree():
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def tree_cpu_s(server: ServerProcess) -> dict[int, float]:
    """CPU seconds (user + system) used so far by each process of the server's tree."""
    out = {}
    for p in server.tree():
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return out


def server_peer_ports(server: ServerProcess) -> set[int]:
    """Client ports of the TCP connections the server's processes hold as fds (i.e. accepted)."""
    ports = set()
    for p in server.tree():
        try:
            conns = p.net_connections(kind="tcp4")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for c in conns:
            if c.raddr and c.laddr and c.laddr.port == server.port:
                ports.add(c.raddr.port)
    return ports


def running(pids) -> list[int]:
    """The pids among `pids` still running (zombies waiting for a reaper count as gone)."""
    left = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                left.append(pid)
        except psutil.NoSuchProcess:
            pass
    return left


def wait_until(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)


# ---------------------------------------------------------------- requests and responses


def work_path(cpu_us: int = 0, gil_us: int = 0, io_us: int = 0, resp_bytes: int = 0) -> str:
    q = urlencode({"cpu_us": cpu_us, "gil_us": gil_us, "io_us": io_us, "resp_bytes": resp_bytes})
    return f"/work?{q}"


def build_request(
    path: str = "/", request_id: str | None = None, close: bool = False, extra_headers: Sequence[str] = ()
) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1"]
    if request_id is not None:
        lines.append(f"X-Request-Id: {request_id}")
    if close:
        lines.append("Connection: close")
    lines.extend(extra_headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@dataclass(frozen=True)
class Expected:
    """What a response to one request must look like."""

    request_id: str
    resp_bytes: int | None  # None: any body length (e.g. GET /)
    status: int = 200

    def request(self, close: bool = False) -> bytes:
        path = "/" if self.resp_bytes is None else work_path(resp_bytes=self.resp_bytes)
        return build_request(path, self.request_id, close)


@dataclass(frozen=True)
class Response:
    status: int
    reason: str
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def mismatch(self, expected: Expected) -> str | None:
        """None if this response answers `expected`, else why not."""
        if self.status != expected.status:
            return f"{expected.request_id}: status {self.status} != {expected.status}"
        if self.header("x-request-id") != expected.request_id:
            return f"{expected.request_id}: X-Request-Id {self.header('x-request-id')!r}"
        if expected.resp_bytes is not None and len(self.body) != expected.resp_bytes:
            return f"{expected.request_id}: body {len(self.body)} bytes != {expected.resp_bytes}"
        return None


class ProtocolError(AssertionError):
    pass


class Closed(ConnectionError):
    """The server closed the connection cleanly before the first byte of a response."""


def parse_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    m = re.fullmatch(r"HTTP/1\.[01] (\d{3})(?: (.*))?", lines[0])
    if not m:
        raise ProtocolError(f"bad status line {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise ProtocolError(f"bad header line {line!r}")
        headers[name.strip().lower()] = value.strip()
    if "content-length" not in headers:
        raise ProtocolError(f"response without Content-Length: {head!r}")
    return int(m.group(1)), m.group(2) or "", headers


class ResponseReader:
    """Reads successive responses from a blocking socket (which must have a timeout)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = bytearray()

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buf += data
        return True

    def read(self) -> Response:
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            if not self._fill():
                if self.buf:
                    raise ProtocolError(f"connection closed inside a response head: {bytes(self.buf[:200])!r}")
                raise Closed("connection closed before a response")
        status, reason, headers = parse_head(bytes(self.buf[:end]))
        length = int(headers["content-length"])
        start = end + 4
        while len(self.buf) < start + length:
            if not self._fill():
                raise ProtocolError(f"connection closed inside a body ({len(self.buf) - start}/{length} bytes)")
        body = bytes(self.buf[start : start + length])
        del self.buf[: start + length]
        return Response(status, reason, headers, body)

    def closed(self) -> bool:
        """True if the server closes (EOF or reset) with no further bytes, within the socket timeout."""
        if self.buf:
            raise ProtocolError(f"unexpected bytes after the response: {bytes(self.buf[:200])!r}")
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        if data:
            raise ProtocolError(f"unexpected bytes after the response: {data[:200]!r}")
        return True


def connect(port: int, timeout_s: float = SOCKET_TIMEOUT_S) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def fetch(port: int, request: bytes, timeout_s: float = SOCKET_TIMEOUT_S) -> Response:
    """One request on a fresh connection."""
    with connect(port, timeout_s) as sock:
        sock.sendall(request)
        return ResponseReader(sock).read()


def check_served(port: int, tag: str, n: int = 3) -> None:
    """A few fresh connections each get a correct /work answer: the server still serves."""
    for i in range(n):
        exp = Expected(f"{tag}-{i}", 7 * i + 1)
        resp = fetch(port, exp.request(close=True))
        assert resp.mismatch(exp) is None, resp.mismatch(exp)


# ---------------------------------------------------------------- asyncio load


def _run_loop(coro) -> None:
    """uvloop when present (a project dependency): the client then costs about half the CPU,
    which matters on a 2-core box where client and server compete."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


async def read_response_async(reader: asyncio.StreamReader) -> Response:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if e.partial:
            raise ProtocolError(f"connection closed inside a response head: {e.partial[:200]!r}") from None
        raise Closed("connection closed before a response") from None
    status, reason, headers = parse_head(head[:-4])
    try:
        body = await reader.readexactly(int(headers["content-length"]))
    except asyncio.IncompleteReadError as e:
        raise ProtocolError(f"connection closed inside a body ({len(e.partial)} bytes)") from None
    return Response(status, reason, headers, body)


@dataclass
class LoadReport:
    ok: int = 0
    problems: list[str] = field(default_factory=list)

    def summary(self, limit: int = 15) -> str:
        return f"{self.ok} ok, {len(self.problems)} problems: " + "; ".join(self.problems[:limit])


def expected_for(client: int, index: int) -> Expected:
    """Request `index` of `client`: a unique id and a body size that varies per request (0 included);
    every 10th is a zero-work GET /."""
    rid = f"c{client}-r{index}"
    if index % 10 == 9:
        return Expected(rid, None)
    return Expected(rid, (client * 131 + index * 37) % 1500)


async def _keepalive_client(port: int, client: int, n_requests: int, report: LoadReport) -> None:
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError as e:
        report.problems.append(f"client {client}: connect failed: {e!r}")
        return
    try:
        for i in range(n_requests):
            exp = expected_for(client, i)
            writer.write(exp.request(close=False))
            try:
                resp = await read_response_async(reader)
            except (OSError, Closed, ProtocolError) as e:
                report.problems.append(f"client {client} request {i}: {e!r}")
                return
            if (why := resp.mismatch(exp)) is not None:
                report.problems.append(why)
            else:
                report.ok += 1
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


def run_keepalive_clients(port: int, clients: int, requests_per_client: int, timeout_s: float) -> LoadReport:
    """`clients` concurrent keep-alive connections, each sending `requests_per_client` requests one
    after another (no pipelining) and checking every response against its request."""
    report = LoadReport()

    async def main() -> None:
        tasks = [asyncio.create_task(_keepalive_client(port, c, requests_per_client, report)) for c in range(clients)]
        done, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for t in pending:
            t.cancel()
        if pending:
            report.problems.insert(0, f"{len(pending)} clients still unfinished after {timeout_s}s")
        for t in done:
            if t.exception() is not None:
                report.problems.append(f"client crashed: {t.exception()!r}")

    _run_loop(main())
    return report


async def _short_connection(port: int, i: int, report: LoadReport) -> None:
    """One short connection, in one of four shapes so every close path of the server is exercised:
    server closes (Connection: close), client closes after a response, client connects and closes
    without a word, client sends half a request and closes."""
    kind = i % 4
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError as e:
        report.problems.append(f"connection {i}: connect failed: {e!r}")
        return
    try:
        if kind in (0, 1):
            exp = Expected(f"s{i}", i % 300)
            writer.write(exp.request(close=(kind == 0)))
            resp = await read_response_async(reader)
            if (why := resp.mismatch(exp)) is not None:
                report.problems.append(why)
                return
            if kind == 0 and await reader.read(1) != b"":
                report.problems.append(f"connection {i}: not closed after Connection: close")
                return
        elif kind == 3:
            writer.write(b"GET /work?resp_bytes=5 HTTP/1.1\r\nHost: 12")
            await writer.drain()
        report.ok += 1
    except (OSError, Closed, ProtocolError) as e:
        report.problems.append(f"connection {i} (kind {kind}): {e!r}")
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


def run_short_connections(port: int, total: int, concurrency: int, timeout_s: float) -> LoadReport:
    report = LoadReport()

    async def worker(start: int) -> None:
        for i in range(start, total, concurrency):
            await _short_connection(port, i, report)

    async def main() -> None:
        tasks = [asyncio.create_task(worker(w)) for w in range(concurrency)]
        done, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for t in pending:
            t.cancel()
        if pending:
            report.problems.insert(0, f"{len(pending)} workers still unfinished after {timeout_s}s")

    _run_loop(main())
    return report


# ---------------------------------------------------------------- load across a shutdown


@dataclass
class ShutdownLoadReport:
    connected: int = 0
    ok: int = 0
    closed_cleanly: int = 0
    problems: list[str] = field(default_factory=list)


async def _looping_client(port: int, client: int, path_args: dict, report: ShutdownLoadReport,
                          connected: asyncio.Event, target: int, deadline: float) -> None:
    """Requests back to back on one keep-alive connection until the server closes it. A close or
    reset with no response byte is the keep-alive race (the server closed as the request went
    out) and is clean; a wrong or truncated response, or no close before the deadline, is not."""
    loop = asyncio.get_running_loop()
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError as e:
        report.problems.append(f"client {client}: connect failed before SIGTERM: {e!r}")
        return
    report.connected += 1
    if report.connected >= target:
        connected.set()
    try:
        i = 0
        while loop.time() < deadline:
            exp = Expected(f"sd{client}-{i}", (client + i) % 700)
            writer.write(build_request(work_path(**path_args, resp_bytes=exp.resp_bytes), exp.request_id))
            try:
                resp = await asyncio.wait_for(read_response_async(reader), max(0.1, deadline - loop.time()))
            except (Closed, ConnectionResetError, BrokenPipeError):
                report.closed_cleanly += 1
                return
            except (ProtocolError, OSError, TimeoutError) as e:
                report.problems.append(f"client {client} request {i}: {e!r}")
                return
            if (why := resp.mismatch(exp)) is not None:
                report.problems.append(why)
                return
            report.ok += 1
            i += 1
        report.problems.append(f"client {client}: connection still open at the deadline")
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


def run_load_across_shutdown(port: int, clients: int, path_args: dict, warmup_s: float,
                             signal_server: Callable[[], None], timeout_s: float) -> ShutdownLoadReport:
    """`clients` keep-alive clients loop requests; once all are connected and `warmup_s` has
    passed, `signal_server()` is called (from the event loop's thread); every client must then
    end by the server closing its connection cleanly, within `timeout_s`."""
    report = ShutdownLoadReport()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        connected = asyncio.Event()
        deadline = loop.time() + timeout_s
        tasks = [
            asyncio.create_task(_looping_client(port, c, path_args, report, connected, clients, deadline))
            for c in range(clients)
        ]
        try:
            await asyncio.wait_for(connected.wait(), timeout_s / 2)
        except TimeoutError:
            report.problems.append(f"only {report.connected} of {clients} clients connected")
        await asyncio.sleep(warmup_s)
        signal_server()
        done, pending = await asyncio.wait(tasks, timeout=max(1.0, deadline - loop.time()) + 5)
        for t in pending:
            t.cancel()
        if pending:
            report.problems.append(f"{len(pending)} clients never finished")
        for t in done:
            if not t.cancelled() and t.exception() is not None:
                report.problems.append(f"client crashed: {t.exception()!r}")

    _run_loop(main())
    return report
