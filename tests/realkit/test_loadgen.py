"""The load generator against small loopback test servers of its own (asyncio, in a thread):
closed vs open loop against a stalling server, errors by kind, idle connections at scale, the spec.

The generator runs in a worker process (processes=1, as the runner uses it), so the test server's
thread and the generator do not share a GIL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import resource
import socket
import struct
import threading
import time

import pytest

from realkit.loadgen import LoadGenError, LoadSpec, _classify, _classify_connect, _Framer, run_load
from simkit.scenario import Workload

RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello"


class _Handler(asyncio.Protocol):
    """Answers each request (a header block) according to the server's behaviour."""

    def __init__(self, server: TestServer) -> None:
        self.server = server
        self.buf = b""
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.server.connections += 1

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            _, self.buf = self.buf.split(b"\r\n\r\n", 1)
            self.server.requests += 1
            if self.server.behaviour == "silent":
                continue
            if self.server.behaviour == "reset_every_other" and self.server.requests % 2 == 0:
                self.server.resets += 1
                sock = self.transport.get_extra_info("socket")
                # SO_LINGER 0: close() sends RST, as a crashing or overloaded server would.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.transport.abort()
                return
            self.server.ok += 1
            self.transport.write(RESP)


class TestServer:
    """An asyncio server on 127.0.0.1 in its own thread. behaviour: ok | silent | reset_every_other;
    stall_every_s/stall_s make the whole server freeze periodically (a GC pause, a blocking call)."""

    __test__ = False

    def __init__(self, behaviour: str = "ok", stall_every_s: float = 0.0, stall_s: float = 0.0) -> None:
        self.behaviour = behaviour
        self.stall_every_s, self.stall_s = stall_every_s, stall_s
        self.connections = self.requests = self.ok = self.resets = self.stalls = 0
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _stall(self) -> None:
        time.sleep(self.stall_s)  # blocks the event loop: nothing is served meanwhile
        self.stalls += 1
        self._loop.call_later(self.stall_every_s, self._stall)

    def _main(self) -> None:
        import uvloop

        self._loop = loop = uvloop.new_event_loop()
        server = loop.run_until_complete(
            loop.create_server(lambda: _Handler(self), "127.0.0.1", 0, backlog=4096)
        )
        self.port = server.sockets[0].getsockname()[1]
        if self.stall_every_s:
            loop.call_later(self.stall_every_s, self._stall)
        self._ready.set()
        loop.run_forever()
        server.close()
        loop.close()

    def __enter__(self) -> TestServer:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/work?cpu_us=0"


_WORKLOAD_FIELDS = {f.name for f in dataclasses.fields(Workload)}


def _spec(url: str, **kw) -> LoadSpec:
    """A LoadSpec from flat keywords: Workload fields go to its workload (no warm-up unless asked)."""
    load = {k: kw.pop(k) for k in list(kw) if k in _WORKLOAD_FIELDS}
    return LoadSpec(url=url, workload=Workload(**{"warmup_s": 0.0, **load}), **kw)


def _free_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_closed_loop_counts_every_answer():
    with TestServer() as srv:
        report = run_load(_spec(url=srv.url, connections=8, duration_s=1.0, warmup_s=0.2))
        served = srv.ok
    assert report.completed > 100
    assert report.errors == 0
    # Everything answered inside the window was counted; the server answered no more than that plus
    # what was outstanding around the window's edges.
    assert report.completed <= served
    assert report.issued <= report.completed + report.in_flight + 8
    assert report.histogram.count == report.completed
    assert 0 < report.latency_s(50) < 0.5
    assert report.throughput_rps == pytest.approx(report.completed / report.duration_s)
    assert 0 < report.loadgen_cpu_util <= 1.05  # one worker process on one event loop


@pytest.mark.timeout(90)
def test_open_loop_sees_stalls_that_closed_loop_hides():
    """Server freezes 50 ms every 200 ms. A closed loop with 2 connections has only 2 requests stuck in
    each stall and then races on: its p99 stays small. An open loop keeps arriving during the stall
    and times each request from its intended send: about a quarter of requests wait, p99 ~ 50 ms."""
    with TestServer(stall_every_s=0.2, stall_s=0.05) as srv:
        closed = run_load(_spec(url=srv.url, connections=2, duration_s=2.0, warmup_s=0.2))
        opened = run_load(_spec(url=srv.url, connections=200, mode="open", rate_rps=1000.0,
                                   duration_s=2.0, warmup_s=0.2))
        # Capped at one connection, arrivals during a stall cannot even be sent: counted as late sends.
        capped = run_load(_spec(url=srv.url, connections=1, mode="open", rate_rps=500.0,
                                   duration_s=1.0, warmup_s=0.2))
        assert srv.stalls >= 10
    c99, o99 = closed.latency_s(99), opened.latency_s(99)
    print(f"\nstalling server (50 ms every 200 ms): closed-loop p99 = {c99 * 1e3:.2f} ms "
          f"({closed.completed} requests), open-loop p99 = {o99 * 1e3:.2f} ms ({opened.completed} requests, "
          f"p50 {opened.latency_s(50) * 1e3:.2f} ms, mean send lag {opened.send_lag_mean_s * 1e3:.2f} ms)")
    assert o99 >= 0.025, "open loop must see the stalls"
    assert c99 < o99 / 3, "closed loop understates them (coordinated omission)"
    assert opened.completed == pytest.approx(2000, rel=0.25)  # the arrivals kept their rate
    assert opened.errors == 0 and closed.errors == 0
    assert capped.late_sends >= 0.1 * capped.issued and capped.max_send_lag_s >= 0.02
    assert capped.latency_s(99) >= 0.025


@pytest.mark.timeout(60)
def test_open_loop_constant_arrivals_hold_their_rate():
    with TestServer() as srv:
        report = run_load(_spec(url=srv.url, connections=20, mode="open", rate_rps=500.0,
                                   arrival="constant", duration_s=1.0, warmup_s=0.2))
    # Exact in intended time; a starved generator shifts a few dispatches across the window's edges.
    assert report.issued == pytest.approx(500, abs=15)
    assert report.completed == pytest.approx(500, abs=30)
    assert report.errors == 0


@pytest.mark.timeout(60)
def test_refused_connections_are_counted_not_fatal():
    url = f"http://127.0.0.1:{_free_port()}/"
    closed = run_load(_spec(url=url, connections=4, duration_s=0.5, processes=0))
    opened = run_load(_spec(url=url, connections=4, mode="open", rate_rps=200.0, duration_s=0.5,
                               processes=0))
    for report in (closed, opened):
        assert report.errors_refused > 0
        assert report.completed == 0
        assert report.errors_reset == report.errors_timeout == report.errors_client == 0
    # Each closed-loop connection retries after a 10 ms back-off: bounded, counted attempts.
    assert closed.errors_refused <= 4 * 0.5 / 0.01 * 1.2


@pytest.mark.timeout(60)
def test_resets_are_counted_exactly():
    """Every other request is answered with a TCP reset: the generator counts each one as a reset,
    reconnects, and goes on."""
    with TestServer(behaviour="reset_every_other") as srv:
        report = run_load(_spec(url=srv.url, connections=4, duration_s=1.0, warmup_s=0.0))
        time.sleep(0.1)
        ok, resets = srv.ok, srv.resets
    assert report.completed > 20 and report.errors_reset > 20
    # With no warm-up the window covers the whole run; only a request or two per connection can
    # straddle its edges.
    assert ok - 8 <= report.completed <= ok
    assert resets - 8 <= report.errors_reset <= resets
    assert report.errors_refused == report.errors_timeout == report.errors_client == 0


@pytest.mark.timeout(60)
def test_timeouts_are_counted():
    with TestServer(behaviour="silent") as srv:
        report = run_load(_spec(url=srv.url, connections=3, duration_s=1.0, timeout_s=0.3,
                                   processes=0))
    # Each connection times out every ~0.3-0.4 s (sweep granularity 0.1 s), then reconnects.
    assert 3 <= report.errors_timeout <= 3 * 1.0 / 0.3 + 3
    assert report.completed == 0 and report.errors_reset == 0


@pytest.mark.timeout(60)
def test_short_lived_connections_reconnect():
    with TestServer() as srv:
        report = run_load(_spec(url=srv.url, connections=4, duration_s=0.8, requests_per_conn=3,
                                   processes=0))
        time.sleep(0.2)  # the server thread may not have accepted the last connects yet
        conns = srv.connections
    assert report.completed > 30 and report.errors == 0
    assert report.connects >= report.completed / 3 - 4
    assert conns >= report.connects


@pytest.mark.timeout(60)
def test_think_time_paces_a_closed_loop():
    with TestServer() as srv:
        report = run_load(_spec(url=srv.url, connections=5, think_s=0.05, duration_s=1.0, processes=0))
    # 5 connections, each ~1 request per 50 ms (plus a sub-ms answer): about 100 requests.
    assert 40 <= report.completed <= 105  # fewer if a busy box delays the think timers


@pytest.mark.timeout(90)
def test_several_worker_processes_merge_their_counts():
    with TestServer() as srv:
        report = run_load(_spec(url=srv.url, connections=6, processes=2, duration_s=1.0, warmup_s=0.2))
    assert report.completed > 100 and report.errors == 0
    assert report.histogram.count == report.completed


@pytest.mark.timeout(150)
def test_ten_thousand_idle_connections_plus_100_active_stay_under_300_mb():
    need = 10_000 + 100 + 200
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}: cannot hold 10k connections here")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))  # for the server in this process
    try:
        with TestServer() as srv:
            report = run_load(_spec(url=srv.url, connections=100, idle_connections=10_000,
                                       duration_s=1.5, warmup_s=0.2, timeout_s=30.0))
            held = srv.connections
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    print(f"\n10k idle + 100 active: generator peak RSS {report.loadgen_rss_peak_bytes / 2**20:.0f} MiB, "
          f"{report.throughput_rps:.0f} req/s, idle held {report.idle_open}")
    assert report.idle_open == 10_000 and report.idle_failed == 0
    assert held >= 10_100
    assert report.completed > 0 and report.errors == 0
    assert report.loadgen_rss_peak_bytes < 300 * 2**20


@pytest.mark.timeout(60)
def test_a_crashing_worker_raises_a_clear_error():
    """A worker that cannot even start (here: pinned to a CPU that does not exist, past the spec's own
    check) is reported with its traceback, not hung on or silently ignored."""
    spec = _spec(url="http://127.0.0.1:9/", duration_s=0.5)
    object.__setattr__(spec, "cpus", (4095,))
    with pytest.raises(LoadGenError, match="crashed"):
        run_load(spec)


@pytest.mark.timeout(60)
def test_in_a_daemonic_process_the_load_runs_in_process(monkeypatch):
    """dask and multiprocessing pool workers are daemonic and may not start children."""
    import multiprocessing

    monkeypatch.setitem(multiprocessing.current_process()._config, "daemon", True)
    with TestServer() as srv:
        with pytest.warns(RuntimeWarning, match="daemonic"):
            report = run_load(_spec(url=srv.url, connections=2, duration_s=0.5, processes=1))
    assert report.completed > 0 and report.errors == 0


# -- pure parts ------------------------------------------------------------------------------------


def test_framer_splits_pipelined_and_fragmented_responses():
    framer = _Framer()
    two = RESP + RESP.replace(b"200 OK", b"503 Busy")
    assert framer.feed(two[:10]) == (0, 0)
    assert framer.feed(two[10:len(RESP) + 3]) == (1, 0)
    assert framer.feed(two[len(RESP) + 3:]) == (1, 1)
    lower = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    assert framer.feed(lower * 3) == (3, 0)
    with pytest.raises(ValueError):
        framer.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")


def test_framer_fast_path_only_takes_responses_of_the_learned_shape():
    framer = _Framer()
    assert framer.feed(RESP) == (1, 0)
    assert framer.shape is not None
    assert framer.feed(RESP) == (1, 0)  # fast path
    assert framer.feed(RESP.replace(b"200 OK", b"500 Bad")[:-2] + b"lo") == (1, 1)
    # Same length, different shape: a longer header and a shorter body. Must be parsed, not assumed.
    other = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plainXX\r\n\r\nhel"
    assert len(other) == len(RESP)
    assert framer.feed(other) == (1, 0) and framer.buf == b""
    # Same length, but only the first part of a longer response: nothing complete yet.
    longer = b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\nContent-Type: text/plain\r\n\r\n" + b"y" * 50
    assert framer.feed(longer[:len(RESP)]) == (0, 0)
    assert framer.feed(longer[len(RESP):]) == (1, 0)


def test_error_kinds():
    import errno

    assert _classify(None) == "reset"  # EOF with a request outstanding
    assert _classify(ConnectionResetError()) == _classify(BrokenPipeError()) == "reset"
    assert _classify(OSError(errno.EMFILE, "too many")) == "client"
    assert _classify_connect(ConnectionRefusedError()) == "refused"
    assert _classify_connect(ConnectionResetError()) == "refused"  # RST to the SYN: not let in
    assert _classify_connect(TimeoutError()) == "timeout"
    assert _classify_connect(OSError(errno.EADDRNOTAVAIL, "no ports")) == "client"


def test_spec_validation_names_the_field_and_refuses_remote_hosts():
    with pytest.raises(ValueError, match="url"):
        LoadSpec(url="http://example.com:80/")
    with pytest.raises(ValueError, match="url"):
        LoadSpec(url="http://10.1.2.3:80/")
    with pytest.raises(ValueError, match="url"):
        LoadSpec(url="ftp://127.0.0.1:21/")
    assert LoadSpec(url="http://10.1.2.3:80/", allow_remote=True).host == "10.1.2.3"
    assert LoadSpec(url="http://localhost:8080/").port == 8080
    with pytest.raises(ValueError, match="workload"):
        LoadSpec(url="http://127.0.0.1:1/", workload={"connections": 4})
    for name, bad in (("processes", -1), ("seed", -1), ("late_threshold_s", -0.1), ("timer_resolution_s", math.nan)):
        with pytest.raises(ValueError, match=name):
            LoadSpec(url="http://127.0.0.1:1/", **{name: bad})
    with pytest.raises(ValueError, match="cpus"):
        LoadSpec(url="http://127.0.0.1:1/", cpus=())
    here = sorted(os.sched_getaffinity(0))
    assert LoadSpec(url="http://127.0.0.1:1/", cpus=here).cpus == tuple(here)


def test_the_load_is_the_workload():
    """Connections, mode, rate, ... are the Workload's, validated there (once), not copied."""
    w = Workload(connections=7, mode="open", rate_rps=50.0, requests_per_conn=2, timeout_s=3.0)
    spec = LoadSpec(url="http://127.0.0.1:1/", workload=w)
    assert spec.workload is w
    assert not any(hasattr(spec, name) for name in ("connections", "mode", "rate_rps", "duration_s"))


def test_request_bytes_are_prebuilt_and_padded():
    url = "http://127.0.0.1:8080/work?cpu_us=100&resp_bytes=64"
    req = LoadSpec(url=url, workload=Workload(request_bytes=200)).request()
    assert req.startswith(b"GET /work?cpu_us=100&resp_bytes=64 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n")
    assert req.endswith(b"\r\n\r\n") and len(req) == 200
    # The default workload's 64 bytes: a short request is padded to it, a longer one is sent as it is.
    assert len(LoadSpec(url="http://127.0.0.1:8080/").request()) == Workload().request_bytes == 64
    assert LoadSpec(url=url).request() == b"GET /work?cpu_us=100&resp_bytes=64 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
    assert b"X-Pad" not in LoadSpec(url="http://127.0.0.1:8080/", workload=Workload(request_bytes=16)).request()


def test_cli_load_refuses_a_remote_url_by_default():
    from click.testing import CliRunner

    from serverlab.cli import main

    out = CliRunner().invoke(main, ["load", "--url", "http://192.0.2.1:80/", "--duration", "1"])
    assert out.exit_code != 0 and "loopback" in out.output
    # Bad load flags are refused by the Workload, naming the field.
    for flags, field in ((["-c", "0"], "connections"), (["--duration", "0"], "duration_s"),
                         (["--requests-per-conn", "0"], "requests_per_conn"), (["--processes", "-1"], "processes")):
        out = CliRunner().invoke(main, ["load", "--url", "http://127.0.0.1:1/", *flags])
        assert out.exit_code == 2 and field in out.output, (flags, out.output)


@pytest.mark.timeout(60)
def test_cli_load_prints_a_summary_and_json(tmp_path):
    import json

    from click.testing import CliRunner

    from serverlab.cli import main

    with TestServer() as srv:
        runner = CliRunner()
        table = runner.invoke(main, ["load", "--url", srv.url, "-c", "4", "--duration", "0.5", "--processes", "0"])
        csv_path = tmp_path / "load.csv"
        as_json = runner.invoke(main, ["load", "--url", srv.url, "-c", "4", "--duration", "0.5", "--rate", "200",
                                       "--processes", "0", "--json", "--csv", str(csv_path)])
    assert table.exit_code == 0, table.output
    assert "throughput" in table.output and "p99" in table.output
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.output)
    assert data["mode"] == "open" and data["completed"] > 0
    assert csv_path.read_text().count("\n") == 2


