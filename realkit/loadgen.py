"""Load generator for the serverlab wire protocol (docs/DESIGN.md §4): closed loop, open loop, idle
connections.

The instrument must not lie about latency, so:
- open loop times every request from its *intended* send time (the arrival process), never from when
  the generator managed to send it: a stalled server cannot slow the arrivals down and hide its stall
  (no coordinated omission). Sends later than `late_threshold_s` are counted, so a generator that cannot
  keep up says so;
- every failure is an observation, counted by kind: `refused` (connect refused or failed), `timeout`
  (no answer within timeout_s), `reset` (the server reset or closed a connection with a request
  outstanding), `http` (a non-2xx answer, or a response that cannot be framed: no HTTP/1.x status line,
  a Transfer-Encoding, a non-numeric, negative or absurd Content-Length, a head over 64 KiB; its
  connection is dropped), `client` (the generator itself failed, e.g. EMFILE). As in simkit, refused
  and timeout errors count only for requests sent inside the window: a start-up storm's failed first
  connects are the warm-up's, not the window's;
- latencies go into realkit.histogram's log-bucketed histogram: fixed memory, bounded relative error,
  mergeable across processes.

HTTP/1.0 servers (one request per connection) are spoken to as such: an answer that says the server
closes (HTTP/1.0 without keep-alive, `Connection: close`) is complete, and the client reconnects for the
next request; a body without Content-Length ends at the connection's end, which completes it. A server
that closes a kept-alive connection (a clean FIN, after at least one answer on it) before any byte of
the next answer has closed the connection, not failed the request: the request is sent again on a new
connection (counted in `connects`, not as an error), its latency running from the first send. A reset,
or a close on a fresh connection or mid-answer, stays an error. Answers are also counted by status code
(LoadReport.status_codes).

Speed matters (a slow generator measures itself): each connection is a raw asyncio Protocol that
writes pre-built request bytes and frames responses by Content-Length alone, on uvloop when installed.
Several worker processes may share the load; their histograms and counters are merged.

Time is time.monotonic() everywhere (CLOCK_MONOTONIC, comparable across processes), so the runner can
line up the measurement window with its process monitor.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import ipaddress
import math
import multiprocessing
import os
import random
import resource
import time
import traceback
import warnings
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from realkit.histogram import LatencyHistogram
from realkit.monitor import peak_rss_bytes
from simkit.scenario import Workload
from simkit.sendtimer import wake_delay_s

ERROR_KINDS: tuple[str, ...] = ("refused", "timeout", "reset", "http", "client")

# Errnos that mean the connection could not be made (the server side refused or was unreachable).
_CONNECT_ERRNOS = {errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH}
# Errnos that mean the generator itself ran out of something (fds, ephemeral ports, buffers): a fault
# of the instrument, not the server.
_CLIENT_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EADDRNOTAVAIL}


# Worker processes one generator may start (each runs one event loop; more than the CPUs only contend).
MAX_PROCESSES = 256
# Bounds on the load itself: one loopback address pair has ~28k ephemeral ports, and one worker sends
# ~100,000 requests/s; far past these the generator would only fill its memory with queued clients.
MAX_CONNECTIONS = 1_000_000  # connections + idle_connections
MAX_RATE_RPS = 1_000_000.0
# Framing bounds: a response head (status line and headers) longer than this, or a Content-Length
# above MAX_CONTENT_LENGTH, is not a response the generator waits for: it is an error, counted.
MAX_RESPONSE_HEAD = 64 * 1024
MAX_CONTENT_LENGTH = 1 << 30


class LoadGenError(RuntimeError):
    """The load generator itself failed (a worker crashed or never reported)."""


# ---------------------------------------------------------------------------------------------------
# Spec and report
# ---------------------------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class LoadSpec:
    """What load to apply, and how the generator applies it.

    The load itself is a simkit.scenario.Workload, validated there: `connections` is the number of
    load-carrying connections in closed loop and the cap on concurrent connections in open loop
    (arrivals beyond it wait, their latency still running from the intended send time); mode, rate,
    arrival, think time, requests per connection, idle connections, timeout, connect concurrency,
    connect rate (closed loop: clients first arrive evenly at connect_rate_cps, None: all at once),
    request size, duration and warm-up come from it too. Its work fields (cpu_us, ...) are not read:
    `url` carries the request target. Beside it are the generator's own settings, validated here."""

    url: str
    workload: Workload = field(default_factory=Workload)
    processes: int = 1  # 0: run in this process (and thread); n >= 1: n worker processes
    cpus: tuple[int, ...] | None = None  # pin the worker processes to these CPUs
    seed: int = 1
    late_threshold_s: float = 0.002
    # Open-loop arrivals and think times (simkit.sendtimer): 0 sends each on time (the loop's timer, then
    # a poll for POLL_WINDOW_S before it: busy CPU in that window); > 0 wakes at most this often, on the
    # loop's ms-grained timer, and sends what is due (little CPU; open-loop sends up to about this much
    # late, a lag inside the latencies and reported). Use > 0 when it shares the server's CPUs.
    timer_resolution_s: float = 0.0
    use_uvloop: bool = True
    allow_remote: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.workload, Workload):
            raise ValueError(f"workload: expected a Workload, got {type(self.workload).__name__}")
        w = self.workload
        if w.connections + w.idle_connections > MAX_CONNECTIONS:
            raise ValueError(f"connections: {w.connections:,} + {w.idle_connections:,} idle is over the load "
                             f"generator's bound of {MAX_CONNECTIONS:,} connections")
        if w.rate_rps is not None and w.rate_rps > MAX_RATE_RPS:
            raise ValueError(f"rate_rps: {w.rate_rps:g} is over the load generator's bound of {MAX_RATE_RPS:g} "
                             "requests/s")
        for name in ("use_uvloop", "allow_remote"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected true or false, got {getattr(self, name)!r}")
        try:
            parts = urlsplit(self.url) if isinstance(self.url, str) else None
            port = parts.port if parts is not None else None
        except ValueError:  # urlsplit's own message names no field
            parts = port = None
        if parts is None or parts.scheme != "http" or not parts.hostname or not port:
            raise ValueError(f"url: expected http://HOST:PORT/path with a port in 1..65535, got {self.url!r}")
        if not self.allow_remote and not is_loopback(parts.hostname):
            raise ValueError(
                f"url: {parts.hostname} is not a loopback address; pass allow_remote=True (--allow-remote) to load it"
            )
        for name, top in (("processes", MAX_PROCESSES), ("seed", None)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (top and value > top):
                bound = ">= 0" if top is None else f"in 0..{top}"
                raise ValueError(f"{name}: expected an integer {bound}, got {value!r}")
        for name in ("late_threshold_s", "timer_resolution_s"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
            ):
                raise ValueError(f"{name}: must be >= 0, got {value!r}")
        if self.cpus is not None:
            if not isinstance(self.cpus, (tuple, list)):
                raise ValueError(f"cpus: expected a non-empty list of CPU numbers, got {self.cpus!r}")
            cpus = tuple(self.cpus)
            if not cpus or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in cpus):
                raise ValueError(f"cpus: expected a non-empty list of CPU numbers, got {self.cpus!r}")
            allowed = os.sched_getaffinity(0)
            outside = sorted(set(cpus) - allowed)
            if outside:
                raise ValueError(f"cpus: CPU {outside[0]} is not available to this process; available: "
                                 f"{', '.join(map(str, sorted(allowed)))}")
            object.__setattr__(self, "cpus", cpus)

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return int(urlsplit(self.url).port or 80)

    @property
    def target(self) -> str:
        parts = urlsplit(self.url)
        return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    def request(self) -> bytes:
        """The exact bytes sent for every request (built once), padded with a header up to
        workload.request_bytes when the plain request is shorter."""
        head = f"GET {self.target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        pad = self.workload.request_bytes - len(head) - len("X-Pad: \r\n\r\n")
        if pad > 0:
            head += "X-Pad: " + "x" * pad + "\r\n"
        return (head + "\r\n").encode("ascii")


@dataclass(frozen=True)
class LoadReport:
    """What happened in the measurement window [window_start_s, window_end_s] (time.monotonic())."""

    spec: LoadSpec
    window_start_s: float
    window_end_s: float
    completed: int
    errors_refused: int
    errors_timeout: int
    errors_reset: int
    errors_http: int
    errors_client: int
    issued: int  # requests whose send (intended send, open loop) fell in the window
    in_flight: int  # requests outstanding (or waiting for a connection) when the window closed
    late_sends: int  # open loop: sent later than late_threshold_s after their intended time
    max_send_lag_s: float
    # Open loop: mean delay between intended and actual send. It is inside every open-loop latency: on its
    # own CPUs the generator polls for each send (microseconds); sharing them (timer_resolution_s > 0) it
    # sends on a ~1 ms grid, so expect several hundred microseconds.
    send_lag_mean_s: float
    connects: int  # successful connection set-ups in the window (active connections)
    idle_open: int  # idle connections held when the window closed
    idle_failed: int  # idle connection attempts that failed (any kind), all run long
    loadgen_cpu_s: float  # CPU (user+sys) the generator's processes used in the window
    loadgen_rss_peak_bytes: int  # the largest generator process's peak RSS
    histogram: LatencyHistogram = field(repr=False, compare=False)
    # Status code -> answers in the window (2xx ones are `completed`; the others are in errors_http, which
    # also counts answers that could not be framed and so have no code).
    status_codes: dict[int, int] = field(default_factory=dict)
    # Closed loop: load connections not yet established when the window opened (a client waiting for a
    # connect place, or its connect in flight): the window then measured fewer connections than asked.
    unconnected_at_window: int = 0

    @property
    def duration_s(self) -> float:
        return max(self.window_end_s - self.window_start_s, 1e-9)

    @property
    def throughput_rps(self) -> float:
        return self.completed / self.duration_s

    @property
    def loadgen_cpu_util(self) -> float:
        return self.loadgen_cpu_s / self.duration_s

    @property
    def errors(self) -> int:
        return (
            self.errors_refused
            + self.errors_timeout
            + self.errors_reset
            + self.errors_http
            + self.errors_client
        )

    def latency_s(self, q: float) -> float:
        return self.histogram.percentile(q)

    def status_classes(self) -> dict[str, int]:
        """Answers by status class: {"2xx": n, "3xx": n, "4xx": n, "5xx": n}, plus "unframed": answers
        counted in errors_http that had no status code to count (not HTTP, a bad Content-Length, ...)."""
        out = {f"{c}xx": sum(v for k, v in self.status_codes.items() if k // 100 == c) for c in (2, 3, 4, 5)}
        other = sum(v for k, v in self.status_codes.items() if not 200 <= k < 600)
        out["unframed"] = max(0, self.errors_http - out["3xx"] - out["4xx"] - out["5xx"] - other)
        return out

    def summary(self) -> dict[str, Any]:
        """JSON-able summary (no histogram buckets): flat, but for `status_codes` {"200": n, ...}; the
        status classes are flat columns `status_2xx` ... `status_5xx`, `status_unframed`."""
        p50, p90, p99, p999 = self.histogram.percentiles([50, 90, 99, 99.9])
        out: dict[str, Any] = {
            "url": self.spec.url,
            "mode": self.spec.workload.mode,
            "connections": self.spec.workload.connections,
            "rate_rps": self.spec.workload.rate_rps,
            "duration_s": self.duration_s,
            "throughput_rps": self.throughput_rps,
            "latency_mean_s": self.histogram.mean_s,
            "latency_p50_s": float(p50),
            "latency_p90_s": float(p90),
            "latency_p99_s": float(p99),
            "latency_p999_s": float(p999),
            "latency_max_s": self.histogram.max_s if self.histogram.count else math.nan,
        }
        for f in dataclasses.fields(self):
            if f.name not in ("spec", "histogram", "status_codes"):
                out[f.name] = getattr(self, f.name)
        out["loadgen_cpu_util"] = self.loadgen_cpu_util
        out.update({f"status_{k}": v for k, v in self.status_classes().items()})
        out["status_codes"] = {str(k): v for k, v in sorted(self.status_codes.items())}
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


_COUNTERS = (
    "completed",
    "errors_refused",
    "errors_timeout",
    "errors_reset",
    "errors_http",
    "errors_client",
    "issued",
    "in_flight",
    "late_sends",
    "connects",
    "idle_open",
    "idle_failed",
    "unconnected_at_window",
)


# ---------------------------------------------------------------------------------------------------
# The generator (one event loop)
# ---------------------------------------------------------------------------------------------------


def _classify(exc: BaseException | None) -> str:
    """Error kind of a connection that failed with a request outstanding (None: plain EOF)."""
    if exc is None or isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return "reset"
    if isinstance(exc, (ConnectionRefusedError,)):
        return "refused"
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "timeout"
    if isinstance(exc, OSError):
        if exc.errno in _CLIENT_ERRNOS:
            return "client"
        if exc.errno in _CONNECT_ERRNOS:
            return "refused"
        return "reset"
    return "client"


def _classify_connect(exc: BaseException | None) -> str:
    """Error kind of a failed connect: any server-side failure to set up the connection (RST to the SYN,
    unreachable) is a refusal; no answer within timeout_s a timeout; our own shortage a client error."""
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timeout"
    if isinstance(exc, OSError) and exc.errno in _CLIENT_ERRNOS:
        return "client"
    if isinstance(exc, OSError):
        return "refused"
    return "client"


def _content_length(raw: bytes) -> int:
    """The value of a Content-Length header: ASCII digits only, at most MAX_CONTENT_LENGTH."""
    value = raw.strip(b" \t")
    if not value.isdigit() or len(value) > 12:
        raise ValueError(f"bad Content-Length {raw.strip()[:32]!r}")
    n = int(value)
    if n > MAX_CONTENT_LENGTH:
        raise ValueError(f"Content-Length {n} over the generator's limit of {MAX_CONTENT_LENGTH}")
    return n


def _head_framing(head: bytes) -> tuple[int | None, bool]:
    """(Content-Length, or None when there is none; whether the server closes the connection after this
    response) of one response head (status line and headers). HTTP/1.0 closes unless `Connection:
    keep-alive` says otherwise; HTTP/1.1 keeps the connection unless `Connection: close`."""
    lower = head.lower()
    if b"\r\ntransfer-encoding:" in lower:
        raise ValueError("response with a Transfer-Encoding (chunked): not read, serve a Content-Length")
    length = None
    i = lower.find(b"\r\ncontent-length:")
    if i >= 0:
        k = lower.find(b"\r\n", i + 2)
        length = _content_length(head[i + 17 : k if k >= 0 else len(head)])
    tokens: set[bytes] = set()
    j = lower.find(b"\r\nconnection:")
    if j >= 0:
        k = lower.find(b"\r\n", j + 2)
        tokens = {t.strip(b" \t") for t in lower[j + 13 : k if k >= 0 else len(lower)].split(b",")}
    if head[5:8] == b"1.0":
        return length, b"keep-alive" not in tokens
    return length, b"close" in tokens


class _Framer:
    """Frames HTTP/1.x responses and counts them (with how many were not 2xx).

    A body ends after its Content-Length; without one (an HTTP/1.0 server's way), at the end of the
    connection: eof() completes it. 1xx, 204 and 304 responses have no body. After each complete
    response `code` is its status code (3 ASCII digits) and `close` whether the server closes the
    connection after it (HTTP/1.0 without keep-alive, or `Connection: close`): the client must not send
    on it again.

    A response that cannot be framed raises ValueError: a head that does not start with an HTTP/1.x
    status line, a Transfer-Encoding (chunked is not read), a non-numeric, negative or absurd
    Content-Length, or a head still unfinished after MAX_RESPONSE_HEAD bytes. Every response moves the
    parse position forwards, so no input can make it loop. A body longer than what arrived is skipped by
    count as its bytes come, not buffered.

    Fast path: a server answers one URL with responses of one shape (same header length, same
    Content-Length line at the same offset). Once a whole keep-alive response arrived alone, its shape is
    kept; a later chunk of the same length with the blank line and the Content-Length line at the same
    offsets is exactly one complete response, checked with three slice compares instead of a parse."""

    __slots__ = ("buf", "shape", "skip", "skip_bad", "skip_code", "skip_close", "until_eof", "code", "close")

    def __init__(self) -> None:
        self.buf = b""
        self.shape: tuple[int, int, int, int, bytes] | None = None
        self.skip = 0  # body bytes of the current response still to come
        self.skip_bad = 0  # whether that response is a non-2xx one
        self.skip_code = b""
        self.skip_close = False
        self.until_eof: tuple[int, bytes] | None = None  # (bad, code) of a response whose body ends at EOF
        self.code = b""
        self.close = False

    def feed(self, data: bytes) -> tuple[int, int]:
        """-> (responses completed, of which non-2xx). Raises ValueError on a response it cannot frame."""
        if self.until_eof is not None:
            return 0, 0  # body bytes of a response that ends with the connection
        done = bad = 0
        if self.skip:
            if len(data) < self.skip:
                self.skip -= len(data)
                return 0, 0
            data = data[self.skip :]
            self.skip = 0
            done, bad = 1, self.skip_bad
            self.code, self.close = self.skip_code, self.skip_close
            if not data:
                return done, bad
        shape = self.shape
        if shape is not None and not done and not self.buf and len(data) == shape[0]:
            _, hend, i, k, cl = shape
            if data[i:k] == cl and data[hend : hend + 4] == b"\r\n\r\n":
                self.code = data[9:12]
                return 1, (0 if data[9] == 50 else 1)
        buf = self.buf + data if self.buf else data
        pos = 0
        n = len(buf)
        while pos < n:
            hend = buf.find(b"\r\n\r\n", pos, pos + MAX_RESPONSE_HEAD)
            if hend < 0:
                if n - pos >= MAX_RESPONSE_HEAD:
                    raise ValueError(f"response head over {MAX_RESPONSE_HEAD} bytes")
                if not b"HTTP/1."[: n - pos].startswith(buf[pos : pos + 7]):
                    raise ValueError(f"not an HTTP/1.x status line: {buf[pos : pos + 16]!r}")
                break
            if buf[pos : pos + 7] != b"HTTP/1." or buf[pos + 8] != 32 or not buf[pos + 9 : pos + 12].isdigit():
                raise ValueError(f"not an HTTP/1.x status line: {buf[pos : pos + 16]!r}")
            code = buf[pos + 9 : pos + 12]
            is_bad = 0 if code[0] == 50 else 1  # b"2": the status class
            length, close = _head_framing(buf[pos:hend])
            if length is None:
                if code[0] != 49 and code not in (b"204", b"304"):  # the body runs to the connection's end
                    self.until_eof = (is_bad, code)
                    self.buf = b""
                    return done, bad
                length = 0
            end = hend + 4 + length
            if end > n:  # the body is still coming: count its bytes off as they arrive
                self.skip, self.skip_bad, self.skip_code, self.skip_close = end - n, is_bad, code, close
                pos = n
                break
            bad += is_bad
            done += 1
            self.code, self.close = code, close
            if pos == 0 and end == n and not close:
                i = buf.find(b"Content-Length:", pos, hend)
                if i < 0:
                    i = buf[pos:hend].lower().find(b"content-length:")
                if i >= 0:
                    k = buf.find(b"\r\n", i, hend + 2)
                    self.shape = (n, hend, i, k, buf[i:k])
            pos = end
        self.buf = buf[pos:] if pos < n else b""
        return done, bad

    def idle(self) -> bool:
        """No byte of a response is pending (between responses)."""
        return not self.buf and not self.skip and self.until_eof is None

    def eof(self) -> tuple[int, int]:
        """The connection ended cleanly: completes a response whose body runs to the end -> (1, bad),
        else (0, 0)."""
        if self.until_eof is None:
            return 0, 0
        bad, self.code = self.until_eof
        self.until_eof, self.close = None, True
        return 1, bad


class _Generator:
    """All connections of one worker, on one event loop."""

    def __init__(self, spec: LoadSpec, share: int, n_shares: int, loop: asyncio.AbstractEventLoop) -> None:
        self.spec = spec
        self.w = w = spec.workload
        self.loop = loop
        self.request = spec.request()
        self.host, self.port = spec.host, spec.port
        # This worker's share of the connections and of the arrival rate.
        self.n_conns = w.connections // n_shares + (1 if share < w.connections % n_shares else 0)
        self.n_idle = w.idle_connections // n_shares + (
            1 if share < w.idle_connections % n_shares else 0
        )
        self.rate = (w.rate_rps or 0.0) / n_shares
        self.share, self.n_shares = share, n_shares
        self.rng = random.Random(spec.seed * 7919 + share)
        self.hist = LatencyHistogram()
        self.lat: list[float] = []  # latencies of completed 2xx answers in the window, flushed every 0.1 s
        self.plain = w.mode == "closed" and not w.think_s and w.requests_per_conn is None
        self.c = dict.fromkeys(_COUNTERS, 0)
        self.codes: dict[bytes, int] = {}  # status code -> responses in the window, all but 200
        self.max_lag = 0.0
        self.lag_sum = 0.0  # open loop: total send lag over lag_n sends (the generator's own delay)
        self.lag_n = 0
        self.recording = False
        self.stopping = False
        self.active: set[_Conn] = set()  # connected or connecting load connections
        self.idle: set[_IdleConn] = set()
        self.free: list[_Conn] = []  # open loop: connected, nothing outstanding
        self.waiting: deque[float] = deque()  # open loop: intended send times with no connection yet
        # Connects: at most conn_limit in flight; the rest wait in `pending` (FIFO), so a million
        # clients cost a deque entry each, not a task blocked on a semaphore (whose cancellation at
        # shutdown is quadratic).
        self.conn_limit = max(1, w.connect_concurrency // n_shares)
        self.connecting = 0
        self.pending: deque[_Conn | _IdleConn] = deque()
        # Closed loop: clients that have not had a connect place yet, as a count, all with the clock
        # `unstarted_t` (a connection object is made when its connect starts): 100,000 clients cost
        # nothing before their turn, so the start-up does not eat into the window.
        self.unstarted = 0
        self.unstarted_t = 0.0
        self._pumping = False
        self.idle_initial_left = 0  # prepare(): first idle connects not yet finished
        self.tasks: set[asyncio.Task] = set()
        self.t_stop = math.inf
        self.next_t = math.inf
        self._window_start = math.inf
        # Closed loop with think time: (due time, connection) in due order (think_s is constant, so the
        # order of entry is the order of due times), woken by one timer (wake_think), not one per client.
        self.thinking: deque[tuple[float, _Conn]] = deque()
        self.think_armed = False
        # Closed loop with connect_rate_cps: this worker's clients that have not arrived yet (ramp()).
        self.ramp_left = 0
        self.ramp_done = 0
        self.ramp_t0 = 0.0

    # -- bookkeeping -------------------------------------------------------------------------------
    def error(self, kind: str, n: int = 1, t_req: float | None = None) -> None:
        """Count a failure seen in the window; one of a request sent before the window (`t_req`, e.g. a
        start-up connect) is not counted, as simkit counts only the requests sent inside it."""
        if self.recording and (t_req is None or t_req >= self._window_start):
            self.c["errors_" + kind] += n

    def spawn(self, coro) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def count_code(self, code: bytes) -> None:
        """A response in the window with status `code` (200s are not counted here: completed minus the
        other 2xx codes gives them, so the hot path pays nothing)."""
        self.codes[code] = self.codes.get(code, 0) + 1

    def flush(self) -> None:
        if self.lat:
            self.hist.record_many(self.lat)
            self.lat.clear()

    # -- connections -------------------------------------------------------------------------------
    def queue_connect(self, proto: _Conn | _IdleConn) -> None:
        self.pending.append(proto)
        self.pump()

    def pump(self) -> None:
        """Start queued connects while fewer than conn_limit are in flight (not re-entrant: a loss
        handled here may queue another connect, which this loop then takes)."""
        if self._pumping:
            return
        self._pumping = True
        try:
            while (self.pending or self.unstarted) and self.connecting < self.conn_limit and not self.stopping:
                if self.unstarted:  # the first clients go first: they have waited longest
                    self.unstarted -= 1
                    proto = _Conn(self)
                    proto.t_req = self.unstarted_t
                    self.active.add(proto)
                else:
                    proto = self.pending.popleft()
                if isinstance(proto, _Conn) and proto.t_req is None:
                    # Its request timed out while it waited for a place (counted by the sweep).
                    self.lost(proto)
                    continue
                self.connecting += 1
                self.spawn(self._connect(proto))
        finally:
            self._pumping = False

    async def _connect(self, proto: _Conn | _IdleConn) -> None:
        exc: BaseException | None = None
        try:
            await asyncio.wait_for(self.loop.create_connection(lambda: proto, self.host, self.port),
                                   self.w.timeout_s)
        except Exception as e:  # noqa: BLE001 - any failure to connect is an observation, counted
            exc = e
        finally:
            self.connecting -= 1
        if self.stopping:
            return
        if isinstance(proto, _IdleConn):
            if proto.initial:
                self.idle_initial_left -= 1
            if exc is not None:
                self.c["idle_failed"] += 1
        elif exc is None:
            if self.recording:
                self.c["connects"] += 1
        else:
            self.active.discard(proto)
            if proto.t_req is not None:  # else the timeout sweep already counted it
                t_req, proto.t_req = proto.t_req, None
                self.error(_classify_connect(exc), t_req=t_req)
            self.lost(proto, failed_connect=True)
        self.pump()

    def open_load_conn(self, t_req: float | None = None) -> None:
        """Open one load connection for a request whose clock started at t_req (None: now). The connect
        time, the wait for a connect place included, is part of that request's latency: a short-lived
        connection pays for its set-up."""
        if self.stopping:
            return
        if t_req is None:
            t_req = time.monotonic()
            if self.recording:
                self.c["issued"] += 1
        conn = _Conn(self)
        conn.t_req = t_req
        self.active.add(conn)
        self.queue_connect(conn)

    def lost(self, conn: _Conn, failed_connect: bool = False) -> None:
        """A load connection is gone; replace it as the mode requires. After a failed connect, back off a
        little so a refusing server costs counted errors, not a busy spin."""
        self.active.discard(conn)
        if self.stopping:
            return
        if self.w.mode == "closed":
            if failed_connect:
                self.loop.call_later(0.01, self.open_load_conn)
            else:
                self.open_load_conn()
            return
        try:
            self.free.remove(conn)
        except ValueError:
            pass
        if failed_connect:
            self.loop.call_later(0.01, self.maybe_open)
        else:
            self.maybe_open()

    def ramp(self) -> None:
        """Closed loop with connect_rate_cps: the clients arrive evenly spaced (global arrival i at
        i / connect_rate_cps from the start; this worker takes every n-th, interleaved with the others),
        each connecting on arrival with its first request's clock starting then, as simkit's do."""
        if self.stopping:
            return
        rate = self.w.connect_rate_cps
        now = time.monotonic()
        t = self.ramp_t0 + (self.ramp_done * self.n_shares + self.share) / rate
        while self.ramp_left and t <= now:
            self.ramp_left -= 1
            self.ramp_done += 1
            if self.recording:
                self.c["issued"] += 1
            self.open_load_conn(t)
            t = self.ramp_t0 + (self.ramp_done * self.n_shares + self.share) / rate
        if self.ramp_left:
            self.loop.call_later(t - now, self.ramp)

    def open_idle_conn(self, initial: bool = False) -> None:
        if self.stopping:
            return
        if initial:
            self.idle_initial_left += 1
        self.queue_connect(_IdleConn(self, initial))

    # -- open loop -------------------------------------------------------------------------------
    def maybe_open(self) -> None:
        """Open loop: each waiting request gets a new connection while under the cap; its latency
        keeps running from its intended send time through the connect."""
        while self.waiting and len(self.active) < self.n_conns and not self.stopping:
            self.open_load_conn(self.waiting.popleft())

    def next_gap(self) -> float:
        if self.w.arrival == "poisson":
            return self.rng.expovariate(self.rate)
        return 1.0 / self.rate

    def note_lag(self, t_req: float, now: float) -> None:
        if self.recording:
            lag = now - t_req
            self.lag_sum += lag
            self.lag_n += 1
            if lag > self.spec.late_threshold_s:
                self.c["late_sends"] += 1
            if lag > self.max_lag:
                self.max_lag = lag

    def dispatch(self) -> None:
        """Open loop: issue every arrival that is due, then sleep until the next one."""
        if self.stopping:
            return
        now = time.monotonic()
        t = self.next_t
        while t <= now and t < self.t_stop:
            if self.recording:
                self.c["issued"] += 1
            if self.free:
                self.free.pop().send(t)
                self.note_lag(t, now)
            else:
                self.waiting.append(t)
            t += self.next_gap()
        self.next_t = t
        if self.waiting:
            self.maybe_open()
        if t < self.t_stop:
            self.wake_at(t, self.dispatch)

    def wake_at(self, due: float, callback) -> None:
        """Call `callback` at (or, sharing CPUs, after) monotonic time `due`: see wake_delay_s."""
        delay = wake_delay_s(time.monotonic(), due, self.spec.timer_resolution_s)
        if delay is None:
            self.loop.call_soon(callback)
        else:
            self.loop.call_later(delay, callback)

    # -- closed loop: think times ------------------------------------------------------------------
    def think(self, conn: _Conn, due: float) -> None:
        """`conn` sends its next request at `due` (its think time over)."""
        self.thinking.append((due, conn))
        if not self.think_armed:
            self.think_armed = True
            self.wake_at(due, self.wake_think)

    def wake_think(self) -> None:
        """Send for every client whose think time is over; wait for the next."""
        self.think_armed = False
        if self.stopping:
            return
        q = self.thinking
        now = time.monotonic()
        while q and q[0][0] <= now:
            q.popleft()[1]._next()
        if q:
            self.think_armed = True
            self.wake_at(q[0][0], self.wake_think)

    def conn_free(self, conn: _Conn) -> None:
        """Open loop: a connection has nothing outstanding: serve the oldest waiting request, or wait."""
        if self.waiting:
            t = self.waiting.popleft()
            conn.send(t)
            self.note_lag(t, time.monotonic())
        else:
            self.free.append(conn)

    # -- periodic: timeouts and histogram flush ----------------------------------------------------
    def tick(self) -> None:
        if self.stopping:
            return
        self.flush()
        now = time.monotonic()
        deadline = now - self.w.timeout_s
        for conn in list(self.active):
            if conn.t_req is not None and conn.t_req < deadline:
                t_req, conn.t_req = conn.t_req, None
                self.error("timeout", t_req=t_req)
                if conn.transport is not None:
                    conn.timed_out = True
                    conn.transport.abort()  # connection_lost replaces it
        while self.waiting and self.waiting[0] < deadline:
            self.error("timeout", t_req=self.waiting.popleft())
        if self.unstarted and self.unstarted_t < deadline:  # timed out waiting for a place: they retry
            self.error("timeout", self.unstarted, t_req=self.unstarted_t)
            self.unstarted_t = now
            if self.recording:
                self.c["issued"] += self.unstarted
        self.loop.call_later(0.1, self.tick)

    # -- phases ------------------------------------------------------------------------------------
    async def prepare(self) -> None:
        """Open and hold the idle connections (before any load, so the load sees them all)."""
        for _ in range(self.n_idle):
            self.open_idle_conn(initial=True)
        while self.idle_initial_left > 0:
            await asyncio.sleep(0.01)

    async def run(self, t0: float) -> dict[str, Any]:
        w = self.w
        self._window_start = t0 + w.warmup_s
        t_end = self._window_start + w.duration_s
        self.t_stop = t_end
        delay = t0 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        self.loop.call_later(0.1, self.tick)
        if w.mode == "closed" and w.connect_rate_cps is not None:
            self.ramp_left, self.ramp_t0 = self.n_conns, time.monotonic()
            self.ramp()
        elif w.mode == "closed":
            self.unstarted, self.unstarted_t = self.n_conns, time.monotonic()
            self.pump()
        else:
            # Constant arrivals from several workers interleave rather than coincide.
            self.next_t = t0 + (
                self.share / (self.rate * self.n_shares) if w.arrival == "constant" else self.next_gap()
            )
            self.dispatch()
        await asyncio.sleep(max(0.0, self._window_start - time.monotonic()))
        self.flush()
        self.lat.clear()
        self.hist = LatencyHistogram()
        cpu0 = _cpu_s(self.spec.processes == 0)
        ws = time.monotonic()
        if w.mode == "closed":
            self.c["unconnected_at_window"] = (self.ramp_left + self.unstarted + self.connecting
                                               + sum(1 for p in self.pending if isinstance(p, _Conn)))
        self.recording = True
        await asyncio.sleep(max(0.0, t_end - time.monotonic()))
        self.recording = False
        we = time.monotonic()
        cpu1 = _cpu_s(self.spec.processes == 0)
        self.flush()
        self.c["completed"] = self.hist.count  # every 2xx answer in the window left one latency
        codes = {int(k): v for k, v in self.codes.items()}
        ok = self.c["completed"] - sum(v for k, v in codes.items() if 200 <= k < 300)
        if ok > 0:
            codes[200] = ok
        # Outstanding: on a connection, queued for a connect (in `active` too), waiting (open loop), or
        # not yet started (closed loop).
        self.c["in_flight"] = (
            sum(1 for c in self.active if c.t_req is not None) + len(self.waiting) + self.unstarted
        )
        self.c["idle_open"] = sum(1 for c in self.idle if c.transport is not None)
        await self.shutdown()
        out = dict(self.c)
        out.update(
            window_start_s=ws,
            window_end_s=we,
            max_send_lag_s=self.max_lag,
            send_lag_sum_s=self.lag_sum,
            send_lag_n=self.lag_n,
            loadgen_cpu_s=cpu1 - cpu0,
            histogram=self.hist.to_dict(),
            status_codes=codes,
        )
        return out

    async def shutdown(self) -> None:
        self.stopping = True
        self.pending.clear()
        self.unstarted = 0
        for conn in list(self.active) + list(self.idle):
            if conn.transport is not None:
                conn.transport.abort()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.sleep(0)  # let connection_lost callbacks run


def _cpu_s(thread_only: bool) -> float:
    """User+sys CPU seconds of this process (or only this thread, when sharing a process with others)."""
    ru = resource.getrusage(resource.RUSAGE_THREAD if thread_only else resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class _Conn(asyncio.Protocol):
    """One load-carrying connection: one request outstanding at a time."""

    __slots__ = ("g", "transport", "t_req", "n_done", "framer", "timed_out")

    def __init__(self, g: _Generator) -> None:
        self.g = g
        self.transport: asyncio.Transport | None = None
        self.t_req: float | None = None  # start (intended start, open loop) of the outstanding request
        self.n_done = 0
        self.framer = _Framer()
        self.timed_out = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        g = self.g
        if g.stopping or self.t_req is None:  # stopping, or its request timed out while it connected
            transport.abort()  # connection_lost replaces it
            return
        if g.w.mode == "open":
            g.note_lag(self.t_req, time.monotonic())
        transport.write(g.request)

    def send(self, t_req: float) -> None:
        self.t_req = t_req
        self.transport.write(self.g.request)

    def _next(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        g = self.g
        self.t_req = time.monotonic()
        if g.recording:
            g.c["issued"] += 1
        self.transport.write(g.request)

    def data_received(self, data: bytes) -> None:
        g = self.g
        framer = self.framer
        try:
            done, bad = framer.feed(data)
        except ValueError:
            g.error("http", t_req=self.t_req)
            self.t_req = None
            self.transport.abort()
            return
        if g.plain and done == 1 and not bad and self.t_req is not None and not framer.close:
            # Hot path (closed loop, no think time, keep-alive): record, send the next at once.
            now = time.monotonic()
            if g.recording:
                g.lat.append(now - self.t_req)
                g.c["issued"] += 1
                if framer.code != b"200":
                    g.count_code(framer.code)
            self.t_req = now
            self.transport.write(g.request)
            return
        if not done:
            return
        if self.t_req is None:  # an answer to a request already counted as timed out, or unsolicited
            if framer.close:
                self.transport.close()
            return
        now = time.monotonic()
        self.answered(bad, now)
        w = g.w
        if framer.close or (w.requests_per_conn is not None and self.n_done >= w.requests_per_conn):
            self.transport.close()  # connection_lost opens its replacement
            return
        if w.mode == "closed":
            if w.think_s:
                g.think(self, now + w.think_s)
            else:
                self.t_req = now
                if g.recording:
                    g.c["issued"] += 1
                self.transport.write(g.request)
        elif not g.stopping:
            g.conn_free(self)

    def answered(self, bad: int, now: float) -> None:
        """The outstanding request has its complete answer: count it (2xx: a latency; else an http error)
        and its status code."""
        g = self.g
        if g.recording:
            if bad:
                g.c["errors_http"] += 1
            else:
                g.lat.append(now - self.t_req)
            if bad or self.framer.code != b"200":
                g.count_code(self.framer.code)
        self.t_req = None
        self.n_done += 1

    def eof_received(self):
        return False  # close our side too

    def connection_lost(self, exc) -> None:
        g = self.g
        self.transport = None
        if exc is None and self.t_req is not None and not self.timed_out and not g.stopping:
            done, bad = self.framer.eof()  # an answer whose body ran to the end (HTTP/1.0) is complete
            if done:
                self.answered(bad, time.monotonic())
            elif self.framer.code and self.framer.idle():  # code: some answer came on it (hot path too)
                # The server closed (FIN) a kept-alive connection it had answered on, and not one byte
                # of this request's answer came: it closed the connection, not the request (keep-alive
                # race, an undeclared close). Resend on a new connection, the clock still running.
                g.active.discard(self)
                t_req, self.t_req = self.t_req, None
                g.open_load_conn(t_req)
                return
        if self.t_req is not None and not self.timed_out and not g.stopping:
            g.error(_classify(exc), t_req=self.t_req)
            self.t_req = None
        g.lost(self)


class _IdleConn(asyncio.Protocol):
    """Held open, never used. If the server closes it (keep-alive timer), it is reopened."""

    __slots__ = ("g", "transport", "initial")

    def __init__(self, g: _Generator, initial: bool = False) -> None:
        self.g = g
        self.transport = None
        self.initial = initial  # one of the connections prepare() waits for

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.g.idle.add(self)

    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc) -> None:
        self.transport = None
        self.g.idle.discard(self)
        if not self.g.stopping:
            self.g.open_idle_conn()


# ---------------------------------------------------------------------------------------------------
# Running: in this process, or in worker processes
# ---------------------------------------------------------------------------------------------------


def _new_loop(use_uvloop: bool) -> asyncio.AbstractEventLoop:
    if use_uvloop:
        try:
            import uvloop

            return uvloop.new_event_loop()
        except ImportError:  # uvloop is optional: plain asyncio is slower but correct
            pass
    return asyncio.new_event_loop()


def raise_nofile(needed: int) -> int:
    """Raise this process's RLIMIT_NOFILE soft limit towards `needed` (never above the hard limit;
    never lowered). Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    return soft


def _fds_needed(spec: LoadSpec, n_shares: int) -> int:
    return (spec.workload.connections + spec.workload.idle_connections) // max(1, n_shares) + 128


def _worker(spec: LoadSpec, share: int, n_shares: int, pipe) -> None:
    """Worker process body: prepare, report ready, wait for the start time, run, report."""
    try:
        if spec.cpus is not None:
            cpus = spec.cpus
            os.sched_setaffinity(0, {cpus[share]} if n_shares <= len(cpus) else set(cpus))
        raise_nofile(_fds_needed(spec, n_shares))
        loop = _new_loop(spec.use_uvloop)
        asyncio.set_event_loop(loop)
        gen = _Generator(spec, share, n_shares, loop)
        loop.run_until_complete(gen.prepare())
        pipe.send(("ready", None))
        msg, t0 = pipe.recv()
        if msg != "go":
            return
        out = loop.run_until_complete(gen.run(t0))
        out["loadgen_rss_peak_bytes"] = peak_rss_bytes()
        pipe.send(("done", out))
        loop.close()
    except BaseException:  # report any crash to the parent rather than dying silently
        try:
            pipe.send(("error", traceback.format_exc()))
        except Exception:
            pass
        raise


def _merge(spec: LoadSpec, parts: list[dict[str, Any]]) -> LoadReport:
    hist = LatencyHistogram.from_dict(parts[0]["histogram"])
    for part in parts[1:]:
        hist.merge(LatencyHistogram.from_dict(part["histogram"]))
    counters = {name: sum(int(p[name]) for p in parts) for name in _COUNTERS}
    codes: dict[int, int] = {}
    for part in parts:
        for code, n in part.get("status_codes", {}).items():
            codes[int(code)] = codes.get(int(code), 0) + int(n)
    return LoadReport(
        spec=spec,
        window_start_s=min(p["window_start_s"] for p in parts),
        window_end_s=max(p["window_end_s"] for p in parts),
        max_send_lag_s=max(p["max_send_lag_s"] for p in parts),
        send_lag_mean_s=(
            sum(p["send_lag_sum_s"] for p in parts) / max(1, sum(p["send_lag_n"] for p in parts))
        ),
        loadgen_cpu_s=sum(p["loadgen_cpu_s"] for p in parts),
        loadgen_rss_peak_bytes=max(int(p.get("loadgen_rss_peak_bytes", 0)) for p in parts),
        histogram=hist,
        status_codes=codes,
        **counters,
    )


def run_load(spec: LoadSpec, on_ready=None) -> LoadReport:
    """Apply `spec`'s load and return what was observed in its measurement window.

    `on_ready(t0)` (optional) is called once every worker holds its idle connections, with the
    monotonic time the load starts at; the window is [t0 + warmup_s, t0 + warmup_s + duration_s] (the
    workload's).
    Raises LoadGenError if a worker crashes or does not report in time.
    """
    if spec.processes >= 1 and multiprocessing.current_process().daemon:
        # A daemonic process (a dask or multiprocessing pool worker) may not start children: run the
        # load on this thread instead, as one share.
        warnings.warn(
            "load generator: running in-process (this process is daemonic and cannot start workers)",
            RuntimeWarning,
            stacklevel=2,
        )
        spec = dataclasses.replace(spec, processes=0)
    if spec.processes == 0:
        raise_nofile(_fds_needed(spec, 1))
        saved = os.sched_getaffinity(0) if spec.cpus else None
        if spec.cpus:
            os.sched_setaffinity(0, set(spec.cpus))  # pid 0: this thread only, restored below
        loop = _new_loop(spec.use_uvloop)
        try:
            gen = _Generator(spec, 0, 1, loop)
            loop.run_until_complete(gen.prepare())
            t0 = time.monotonic() + 0.01
            if on_ready:
                on_ready(t0)
            part = loop.run_until_complete(gen.run(t0))
        finally:
            loop.close()
            if saved is not None:
                os.sched_setaffinity(0, saved)
        part["loadgen_rss_peak_bytes"] = peak_rss_bytes()
        return _merge(spec, [part])

    ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads
    n = spec.processes
    pipes, procs = [], []
    try:
        for share in range(n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_worker, args=(spec, share, n, child), daemon=True, name=f"serverlab-loadgen-{share}"
            )
            proc.start()
            child.close()
            pipes.append(parent)
            procs.append(proc)
        # Start-up (interpreter, imports) plus opening idle connections: generous but bounded.
        prep_deadline = time.monotonic() + 60.0 + spec.workload.timeout_s + spec.workload.idle_connections / 500.0
        for i, pipe in enumerate(pipes):
            _expect(pipe, procs[i], "ready", prep_deadline)
        t0 = time.monotonic() + 0.05
        if on_ready:
            on_ready(t0)
        for pipe in pipes:
            pipe.send(("go", t0))
        # A worker stops at its window's end and reports at once; past the client timeout and a margin it
        # is stuck, and the run fails rather than waits.
        run_deadline = t0 + spec.workload.warmup_s + spec.workload.duration_s + min(30.0, 5.0 + spec.workload.timeout_s)
        parts = [_expect(pipe, procs[i], "done", run_deadline) for i, pipe in enumerate(pipes)]
        for proc in procs:
            proc.join(5.0)
        return _merge(spec, parts)
    finally:
        for pipe in pipes:
            try:
                pipe.send(("stop", None))
            except (OSError, ValueError):
                pass
        for proc in procs:
            if proc.is_alive():
                proc.join(1.0)
            if proc.is_alive():
                proc.kill()
                proc.join(1.0)


def _expect(pipe, proc, what: str, deadline: float) -> Any:
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise LoadGenError(f"load generator worker {proc.name} did not report {what!r} in time")
        if pipe.poll(min(left, 0.5)):
            try:
                msg, payload = pipe.recv()
            except EOFError:
                raise LoadGenError(
                    f"load generator worker {proc.name} died (exit code {proc.exitcode})"
                ) from None
            if msg == "error":
                raise LoadGenError(f"load generator worker {proc.name} crashed:\n{payload}")
            if msg == what:
                return payload
        elif not proc.is_alive():
            raise LoadGenError(f"load generator worker {proc.name} died (exit code {proc.exitcode})")
