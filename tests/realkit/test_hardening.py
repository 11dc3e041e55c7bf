"""Hardening (issue 15): per-connection bounds, no fatal request, no orphan workers, checked on every
model configuration (m6 in its three dispatch modes) from the outside, over loopback, each test
bounded to seconds. The servers get short limits through the environment
(SERVERLAB_HEADER_TIMEOUT_S, SERVERLAB_SEND_TIMEOUT_S, SERVERLAB_SHUTDOWN_LIMIT_S), read at start.

The first tests need no server: the abandonable work, the limits' validation, and the parser's
answers to a bare LF and to a value over a cap.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import threading
import time

import psutil
import pytest
import realkit_conformance_helpers as h

from realkit import protocol, work
from realkit.protocol import ERROR, RequestParser, response_bytes
from realkit.servers import base

MODELS = pytest.mark.parametrize("config", h.MODELS, ids=h.MODEL_IDS)
M6 = [m for m in h.MODELS if m.model == "m6_prefork"]
MIB = 1 << 20
BIG = protocol.MAX_RESP_BYTES  # 64 MiB: the largest legal response
HEADER_TIMEOUT_S = 1.0
SEND_TIMEOUT_S = 2.0
SHUTDOWN_LIMIT_S = 2.0
SHORT_LIMITS = {
    "SERVERLAB_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
    "SERVERLAB_SEND_TIMEOUT_S": str(SEND_TIMEOUT_S),
}


# ---------------------------------------------------------------- no server


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["cpu_us", "gil_us", "io_us"])
def test_long_work_stops_soon_after_abort_says_so(kind):
    """10 s of work whose abort() turns True after 0.2 s stops well within a second; without abort
    the same call shape still does all of short work and says so."""
    work.calibrate()
    t0 = time.monotonic()
    done = work.do_work(**{kind: 1e7}, abort=lambda: time.monotonic() - t0 > 0.2)
    took = time.monotonic() - t0
    assert done is False
    assert took < 1.0, f"{kind}: abandoned work ran {took:.2f}s"
    calls = []
    assert work.do_work(**{kind: 2000.0}, abort=lambda: calls.append(1) or True) is True
    assert calls == [], "short work must not pay for the question"


def test_limits_come_from_the_environment_and_bad_values_name_the_variable():
    assert base.Limits.from_env({}) == base.Limits()
    limits = base.Limits.from_env({"SERVERLAB_HEADER_TIMEOUT_S": "1.5", "SERVERLAB_SHUTDOWN_LIMIT_S": "3"})
    assert (limits.header_timeout_s, limits.send_timeout_s, limits.shutdown_limit_s) == (
        1.5, base.SEND_TIMEOUT_S, 3.0,
    )
    for bad in ("0", "-1", "nan", "soon", "1e9"):
        with pytest.raises(ValueError, match="SERVERLAB_SEND_TIMEOUT_S"):
            base.Limits.from_env({"SERVERLAB_SEND_TIMEOUT_S": bad})


def _answer(raw: bytes) -> tuple[protocol.Request | None, bytes]:
    parser = RequestParser()
    parser.feed(raw)
    request = parser.next_request()
    return request, (response_bytes(request) if request is not None else b"")


@pytest.mark.parametrize(
    "raw",
    [b"GET / HTTP/1.1\n\n", b"GET / HTTP/1.1\nHost: x\n", b"GET / HTTP/1.1\nHost: x\r\n\r\n",
     b"GET / HTTP/1.1\r\nHost: x\n\r\n"],
    ids=["bare-lf-only", "bare-lf-incomplete", "bare-lf-then-crlf", "bare-lf-in-header"],
)
def test_a_line_ending_in_a_bare_lf_gets_a_400_at_once(raw):
    request, answer = _answer(raw)
    assert request is not None, "no answer: the parser would wait forever"
    assert (request.kind, request.status, request.keep_alive) == (ERROR, 400, False)
    assert b"bare LF" in answer


@pytest.mark.parametrize(
    "raw, words",
    [
        (b"GET /work?cpu_us=2e7 HTTP/1.1\r\n\r\n", [b"cpu_us", b"MAX_WORK_US", b"10000000"]),
        (b"GET /work?io_us=10000001 HTTP/1.1\r\n\r\n", [b"io_us", b"MAX_WORK_US"]),
        (b"GET /work?resp_bytes=67108865 HTTP/1.1\r\n\r\n", [b"resp_bytes", b"MAX_RESP_BYTES", b"67108864"]),
        (b"GET / HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n", [b"Content-Length", b"MAX_BODY_BYTES"]),
        (b"GET / HTTP/1.1\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n", [b"Content-Length", b"MAX_BODY_BYTES"]),
        (b"GET / HTTP/1.1\r\nX-Pad: " + b"a" * 9000, [b"MAX_HEADER_BYTES", b"8192"]),
    ],
    ids=["cpu_us", "io_us", "resp_bytes", "content-length", "content-length-5000-digits", "header-block"],
)
def test_the_refusal_names_the_cap_it_exceeded(raw, words):
    request, answer = _answer(raw)
    assert request is not None and request.status in (400, 431)
    body = answer.partition(b"\r\n\r\n")[2]
    assert all(w in body for w in words), body


IN_PROCESS = [m for m in h.MODELS if m.model != "m6_prefork"]  # m6 forks: not from a threaded pytest


def _knobs(config: h.ServerConfig) -> dict:
    args = config.args
    return {k: int(args[args.index(f"--{k}") + 1]) for k in ("threads", "pool") if f"--{k}" in args}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("config", IN_PROCESS, ids=[m.id for m in IN_PROCESS])
def test_an_exception_on_the_request_path_closes_only_its_connection(config, monkeypatch):
    """The parser raises MemoryError on a marked request (where recv or a buffer would fail under a
    memory limit): that connection closes unanswered, every loop, I/O thread and spawned thread goes
    on serving (8 marked connections reach every I/O thread), and the server still stops on request.
    In process, so the fault can be injected; m6's workers run the same Reactor as m3."""
    h.require(config)
    real_feed = RequestParser.feed

    def feed(self, data):
        if b"X-Boom" in data:
            raise MemoryError("injected")
        real_feed(self, data)

    monkeypatch.setattr(RequestParser, "feed", feed)
    from realkit.servers import run_server
    from simkit.scenario import ModelSpec

    spec = ModelSpec.for_model(config.model, **_knobs(config))
    stopper = base.Stopper()
    ports: list[int] = []
    ready = threading.Event()
    thread = threading.Thread(
        target=run_server, args=(spec, h.HOST, 0, lambda port: (ports.append(port), ready.set())),
        kwargs={"stopper": stopper}, daemon=True,
    )
    thread.start()
    try:
        assert ready.wait(30), "server not ready"
        for i in range(8):
            with h.connect(ports[0], timeout_s=5) as sock:
                sock.sendall(h.build_request("/", f"boom{i}", extra_headers=["X-Boom: 1"]))
                assert h.ResponseReader(sock).closed(), "the failed connection was left open"
            h.check_served(ports[0], f"after-boom{i}", n=1)
    finally:
        stopper.set()
        thread.join(20)
    assert not thread.is_alive(), "the server did not stop after the failures"


# ---------------------------------------------------------------- a shared server per configuration


@pytest.fixture(scope="module", params=h.MODELS, ids=h.MODEL_IDS)
def limited_server(request):
    """One server per configuration with a 1 s header deadline and a 2 s send timeout (default
    keep-alive timeout, 30 s, so only the new limits can close the connections below)."""
    server = h.start_server(request.param, env=SHORT_LIMITS)
    yield server
    server.terminate(timeout_s=10)
    server.kill()


@pytest.fixture
def server(limited_server):
    if not limited_server.alive():
        pytest.fail(f"{limited_server.config.id} server died earlier:\n{limited_server.output()}")
    h.check_served(limited_server.port, "alive", n=1)
    return limited_server


def _settled_rss(server: h.ServerProcess) -> int:
    last = h.tree_rss_bytes(server)
    for _ in range(20):
        time.sleep(0.1)
        now = h.tree_rss_bytes(server)
        if abs(now - last) < MIB:
            return now
        last = now
    return last


@pytest.mark.timeout(60)
def test_pipelined_large_answers_to_a_client_that_does_not_read_stay_within_two_responses(server):
    """8 pipelined 64 MiB requests from a client that reads nothing: the server builds one answer at
    a time and stops there (RSS growth < 3 x 64 MiB, sampled throughout); after the send timeout it
    closes the connection and lets the pinned answer go."""
    base_rss = _settled_rss(server)
    with h.connect(server.port) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(b"".join(h.build_request(h.work_path(resp_bytes=BIG), f"big{i}") for i in range(8)))
        peak = base_rss
        t_end = time.monotonic() + 1.5
        while time.monotonic() < t_end:
            peak = max(peak, h.tree_rss_bytes(server))
            time.sleep(0.01)
        assert select.select([sock], [], [], 0)[0], "no answer started within 1.5 s: nothing was measured"
        growth = peak - base_rss
        assert growth < 3 * BIG, f"RSS grew {growth / MIB:.0f} MiB for a client that reads nothing"
        port = sock.getsockname()[1]
        closed = h.wait_until(lambda: port not in h.server_peer_ports(server), SEND_TIMEOUT_S + 5, 0.2)
        assert closed, f"connection still held {SEND_TIMEOUT_S + 5:.0f}s after its client stopped reading"
        after = _settled_rss(server)
        assert after - base_rss < BIG // 2, f"RSS still {(after - base_rss) / MIB:.0f} MiB up after the close"
        print(f"{server.config.id}: peak +{growth / MIB:.0f} MiB, after close +{(after - base_rss) / MIB:.0f} MiB")


def _cpu_rate(server: h.ServerProcess, seconds: float) -> float:
    """The server tree's CPU use over the next `seconds`, in cores."""
    before, t0 = h.tree_cpu_s(server), time.monotonic()
    time.sleep(seconds)
    after, t1 = h.tree_cpu_s(server), time.monotonic()
    return sum(after[pid] - before[pid] for pid in after if pid in before) / (t1 - t0)


@pytest.mark.timeout(60)
def test_work_of_a_client_that_hung_up_stops_within_a_second(server):
    """1,000 pipelined requests of 10 s of work each (cpu_us, then gil_us, alternating), then a
    hang-up: the server was busy before it and is idle from a second after it on (the work in
    hand abandoned, the queued requests never started); it still serves others."""
    pipeline = b"".join(
        h.build_request(h.work_path(cpu_us=10_000_000) if i % 2 == 0 else h.work_path(gil_us=10_000_000))
        for i in range(1000)
    )
    with h.connect(server.port) as sock:
        sock.sendall(pipeline)
        time.sleep(0.3)
        busy = _cpu_rate(server, 0.5)
    time.sleep(1.0)
    idle = _cpu_rate(server, 1.0)
    print(f"{server.config.id}: {busy:.2f} cores before the hang-up, {idle:.3f} from 1 s after it")
    assert busy > 0.2, f"the server used only {busy:.2f} cores on the work: nothing was measured"
    assert idle < 0.1, f"the server still used {idle:.2f} cores 1 s after its client hung up"
    h.check_served(server.port, "after-hangup")


def _slow_clients(port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        sock = h.connect(port)
        sock.sendall(b"GET /work?resp_bytes=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        sock.setblocking(False)
        socks.append(sock)
    return socks


@pytest.mark.timeout(90)
def test_slowloris_clients_are_closed_by_the_header_deadline(server):
    """Clients that send a head one byte every 0.25 s (each byte would reset an idle timer) are
    closed, unanswered, once their head is HEADER_TIMEOUT_S old: 300 at once (m1, which serves
    one connection at a time, gets 3, and a normal client queued behind them is served after)."""
    n = 3 if server.config.number == 1 else 300
    socks = _slow_clients(server.port, n)
    queued: list = []
    if server.config.number == 1:
        queued_thread = threading.Thread(
            target=lambda: queued.append(h.fetch(server.port, h.Expected("queued", 7).request(True), 30)),
            daemon=True,
        )
        queued_thread.start()
    open_socks = set(socks)
    answered = []
    t0 = time.monotonic()
    deadline = t0 + n * HEADER_TIMEOUT_S + 8 if n < 10 else t0 + HEADER_TIMEOUT_S + 8
    try:
        while open_socks and time.monotonic() < deadline:
            for sock in list(open_socks):
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    data = None
                except OSError:
                    data = b""
                if data:
                    answered.append(data[:60])
                if data == b"":
                    open_socks.discard(sock)
                    continue
                try:
                    sock.send(b"a")
                except BlockingIOError:
                    pass
                except OSError:
                    open_socks.discard(sock)
            time.sleep(0.25)
        took = time.monotonic() - t0
    finally:
        for sock in socks:
            sock.close()
    assert not open_socks, f"{len(open_socks)} of {n} slow clients still open after {took:.1f}s"
    assert not [a for a in answered if a.startswith(b"HTTP/1.1 200")], answered[:3]
    print(f"{server.config.id}: {n} slow clients closed within {took:.1f}s")
    if server.config.number == 1:
        queued_thread.join(15)
        assert queued and queued[0].mismatch(h.Expected("queued", 7)) is None, queued
    h.check_served(server.port, "after-slowloris")


@pytest.mark.timeout(60)
def test_a_body_sent_one_byte_at_a_time_is_cut_by_the_header_deadline(server):
    """The deadline covers the whole request: a head announcing a 1,000-byte body is answered, but
    the body trickling in a byte every 0.25 s does not hold the connection past the deadline."""
    with h.connect(server.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n")
        assert h.ResponseReader(sock).read().status == 200
        t0 = time.monotonic()
        closed = False
        while not closed and time.monotonic() - t0 < HEADER_TIMEOUT_S + 8:
            try:
                sock.send(b"b")
                closed = select.select([sock], [], [], 0.25)[0] != [] and sock.recv(100) == b""
            except OSError:
                closed = True
        took = time.monotonic() - t0
    assert closed, f"a trickling body held the connection {took:.1f}s"


# ---------------------------------------------------------------- a server per test


@MODELS
@pytest.mark.timeout(90)
def test_sigterm_exits_within_the_shutdown_limit_whatever_is_in_flight(config, server_factory):
    """With a 2 s shutdown limit: pipelined 10 s cpu_us requests, a 10 s gil_us one, a 10 s io_us
    one, 64 MiB answers to a client that reads nothing, and a half-sent request are all in hand when
    SIGTERM lands: the server exits 0 soon after the limit, leaving no process behind."""
    server = server_factory(config, env={"SERVERLAB_SHUTDOWN_LIMIT_S": str(SHUTDOWN_LIMIT_S)})
    payloads = [
        b"".join(h.build_request(h.work_path(cpu_us=10_000_000)) for _ in range(3)),
        h.build_request(h.work_path(gil_us=10_000_000)),
        h.build_request(h.work_path(io_us=10_000_000)),
        b"".join(h.build_request(h.work_path(resp_bytes=BIG)) for _ in range(2)),
        b"GET /work?resp_bytes=1 HTTP/1.1\r\nHost: 12",
    ]
    socks = []
    try:
        for payload in payloads:
            sock = h.connect(server.port)
            sock.sendall(payload)
            socks.append(sock)
        time.sleep(0.5)
        server.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        try:
            code = server.proc.wait(SHUTDOWN_LIMIT_S + 20)
        except subprocess.TimeoutExpired:
            code = "still running"
        took = time.monotonic() - t0
    finally:
        for sock in socks:
            sock.close()
    print(f"{config.id}: exit {code} {took:.2f}s after SIGTERM (limit {SHUTDOWN_LIMIT_S}s)")
    assert code == 0, f"exit {code} {took:.1f}s after SIGTERM\n{server.output()}"
    assert took < SHUTDOWN_LIMIT_S + 3, f"exit took {took:.1f}s with a {SHUTDOWN_LIMIT_S}s limit"
    assert h.wait_until(lambda: not h.group_members(server.pid), 5), h.group_members(server.pid)


@MODELS
@pytest.mark.timeout(90)
def test_a_failed_answer_under_a_memory_limit_costs_only_its_connection(config, server_factory):
    """Every server process gets an address-space limit (prlimit RLIMIT_AS) 40 MiB above what it
    maps: a legal 64 MiB answer can no longer be built. That request gets a 500 (or its connection
    closes); an open keep-alive client and fresh ones (enough to reach every I/O thread) are still
    served, no process dies, and SIGTERM still ends the server with exit 0."""
    server = server_factory(config)
    if config.model == "m6_prefork":
        assert h.wait_until(lambda: len(server.tree()) == config.processes + 1, 10)
    other = None if config.number == 1 else h.connect(server.port)
    try:
        def other_served(tag: str) -> None:
            if other is not None:
                exp = h.Expected(tag, 42)
                other.sendall(exp.request())
                resp = h.ResponseReader(other).read()
                assert resp.mismatch(exp) is None, resp.mismatch(exp)

        other_served("other-before")
        h.check_served(server.port, "before-limit", n=8)
        pids = sorted(p.pid for p in server.tree())
        for p in server.tree():
            _, hard = p.rlimit(psutil.RLIMIT_AS)
            p.rlimit(psutil.RLIMIT_AS, (p.memory_info().vms + 40 * MIB, hard))
        outcomes = []
        for attempt in range(2):
            try:
                resp = h.fetch(server.port, h.build_request(h.work_path(resp_bytes=BIG), f"huge{attempt}"))
            except (h.Closed, ConnectionResetError):
                resp = None
            assert resp is None or resp.status == 500, f"{resp.status} with {len(resp.body)} bytes"
            outcomes.append("closed" if resp is None else resp.status)
        print(f"{config.id}: the 64 MiB request under the limit got {outcomes}")
        other_served("other-after")
        h.check_served(server.port, "after-limit", n=8)
        assert sorted(p.pid for p in server.tree()) == pids, f"a process died\n{server.output()}"
    finally:
        if other is not None:
            other.close()
    assert server.terminate(timeout_s=20) == 0, server.output()


@pytest.mark.parametrize("config", M6, ids=[m.id for m in M6])
@pytest.mark.timeout(60)
def test_m6_workers_exit_when_the_master_is_killed(config, server_factory):
    """kill -9 of the master while a worker holds an idle keep-alive connection: no worker is alive
    3 s later, and the port no longer takes connections."""
    server = server_factory(config)
    master = psutil.Process(server.pid)
    assert h.wait_until(lambda: len(master.children()) == config.processes, 10), master.children()
    workers = [p.pid for p in master.children()]
    with h.connect(server.port) as idle:
        exp = h.Expected("idle", 3)
        idle.sendall(exp.request())
        assert h.ResponseReader(idle).read().mismatch(exp) is None
        os.kill(server.pid, signal.SIGKILL)
        server.proc.wait(10)
        gone = h.wait_until(lambda: not h.running(workers), 3.0)
        assert gone, f"workers {h.running(workers)} of {workers} alive 3 s after the master died"
    with pytest.raises(OSError):
        h.fetch(server.port, h.build_request("/"), timeout_s=2)
