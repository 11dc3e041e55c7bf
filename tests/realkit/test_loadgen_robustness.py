"""The load generator against servers that misbehave: it never loops on bad framing, counts every
failure by kind, and `serverlab load` ends near its deadline whatever the server does.

Each fake server is an asyncio server on 127.0.0.1 in a thread of this process, answering every
request the same wrong way: a negative Content-Length, a close in the middle of the body, bytes that
are not HTTP, or nothing at all. "refused" is a port nothing listens on. The CLI runs in a subprocess
with a hard timeout, so a generator that hangs fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from realkit.loadgen import MAX_CONTENT_LENGTH, MAX_RESPONSE_HEAD, _Framer

DURATION_S = 1.0
TIMEOUT_S = 0.5
SLACK_S = 8.0  # interpreter and worker start-up on a busy 2-core box, and the shutdown


class _Misbehave(asyncio.Protocol):
    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.buf = b""
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if b"\r\n\r\n" not in self.buf:
            return
        self.buf = b""
        self.server.requests += 1
        how = self.server.behaviour
        if how == "negative":
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: -80\r\n\r\n" + b"x" * 100)
        elif how == "midway":
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
            self.transport.close()
        elif how == "garbage":
            self.transport.write(b"\x16\x03\x01\x00\xa5garbage, not HTTP" * 4)
        # "silent": never answers


class FakeServer:
    """A misbehaving server on 127.0.0.1 (behaviour: negative | midway | garbage | silent)."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.requests = 0
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        self._loop = loop = asyncio.new_event_loop()
        server = loop.run_until_complete(loop.create_server(lambda: _Misbehave(self), "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        loop.run_forever()
        server.close()
        loop.close()

    def __enter__(self) -> FakeServer:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli_load(port: int, processes: int, connections: int = 4, duration_s: float = DURATION_S,
              timeout_s: float = TIMEOUT_S, extra: tuple[str, ...] = ()) -> tuple[dict, float]:
    """`serverlab load --json` in a subprocess, killed past the acceptance bound; (summary, seconds)."""
    cmd = [sys.executable, "-m", "serverlab.cli", "load", "--url", f"http://127.0.0.1:{port}/",
           "-c", str(connections), "--duration", str(duration_s), "--timeout", str(timeout_s),
           "--processes", str(processes), "--json", *extra]
    bound = duration_s + timeout_s + SLACK_S
    t0 = time.monotonic()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=bound,
                             env=dict(os.environ, PYTHONUNBUFFERED="1"))
    except subprocess.TimeoutExpired:
        pytest.fail(f"serverlab load did not finish within {bound:g} s (duration + timeout + {SLACK_S:g} s)")
    elapsed = time.monotonic() - t0
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1]), elapsed


EXPECTED_KIND = {"negative": "errors_http", "midway": "errors_reset", "garbage": "errors_http",
                 "silent": "errors_timeout", "refused": "errors_refused"}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("processes", [0, 1])
@pytest.mark.parametrize("behaviour", sorted(EXPECTED_KIND))
def test_cli_load_finishes_near_its_deadline_and_counts_the_failure(behaviour, processes):
    if behaviour == "refused":
        summary, elapsed = _cli_load(_free_port(), processes)
        served = None
    else:
        # A silent server's requests must time out inside the 1 s window even when the clients
        # start late on a busy box: a quarter of the window, not half.
        timeout_s = TIMEOUT_S / 2 if behaviour == "silent" else TIMEOUT_S
        with FakeServer(behaviour) as srv:
            summary, elapsed = _cli_load(srv.port, processes, timeout_s=timeout_s)
            served = srv.requests
    kind = EXPECTED_KIND[behaviour]
    assert summary["completed"] == 0
    assert summary[kind] > 0, summary
    others = [k for k in ("errors_refused", "errors_timeout", "errors_reset", "errors_http", "errors_client")
              if k != kind and summary[k]]
    assert not others, summary
    assert 0.5 * DURATION_S <= summary["duration_s"] <= DURATION_S + 0.5
    if served is not None:
        assert served > 0
    print(f"\n{behaviour}, processes={processes}: {elapsed:.1f} s, {kind}={summary[kind]}")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("processes", [0, 2])
def test_a_hundred_thousand_clients_on_a_refused_port_stop_at_the_deadline(processes):
    """100,000 closed-loop clients connecting to a port nothing listens on: connects are counted as
    refused while the window is open, and the run ends near its deadline (the connects waiting for
    a place cost a queue entry each, nothing to cancel)."""
    summary, elapsed = _cli_load(_free_port(), processes, connections=100_000, timeout_s=10.0,
                                 extra=("--connect-rate", "0"))  # all at once: a start-up storm
    assert summary["errors_refused"] > 100, summary
    assert summary["completed"] == 0
    assert summary["errors_timeout"] == summary["errors_reset"] == summary["errors_http"] == 0
    # Clients waiting for a place cost nothing before their turn: the start-up leaves the window whole,
    # and the ones still waiting at the end are reported in flight.
    assert summary["duration_s"] >= 0.8 * DURATION_S
    assert summary["in_flight"] > 50_000
    # Far inside the bound that _cli_load enforces: the timeout plays no part here.
    assert elapsed < DURATION_S + SLACK_S


# -- the framer alone ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [b"-80", b"-1", b"+5", b"1_0", b"0x10", b"5.0", b"", b"abc",
                                   str(MAX_CONTENT_LENGTH + 1).encode(), b"9" * 40])
def test_framer_refuses_a_bad_content_length(value):
    with pytest.raises(ValueError, match="Content-Length"):
        _Framer().feed(b"HTTP/1.1 200 OK\r\nContent-Length: " + value + b"\r\n\r\n" + b"x" * 100)


def test_framer_refuses_what_is_not_http_at_once():
    # No blank line needed: the first bytes already say it is not a status line.
    with pytest.raises(ValueError, match="status line"):
        _Framer().feed(b"\x16\x03\x01garbage")
    with pytest.raises(ValueError, match="status line"):
        _Framer().feed(b"HTTX")
    with pytest.raises(ValueError, match="status line"):
        _Framer().feed(b"HTTP/1.1 OK\r\nContent-Length: 0\r\n\r\n")
    framer = _Framer()
    assert framer.feed(b"HTTP/1.1 200 OK\r\nX: " + b"y" * 1000) == (0, 0)
    with pytest.raises(ValueError, match="head over"):
        framer.feed(b"y" * MAX_RESPONSE_HEAD)


def test_framer_skips_a_long_body_by_count_and_frames_what_follows():
    body = 5 << 20
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % body
    framer = _Framer()
    assert framer.feed(head + b"x" * 1000) == (0, 0)
    assert framer.buf == b""  # the body is counted off, not held
    for _ in range(body // 65536 - 1):
        assert framer.feed(b"x" * 65536) == (0, 0)
    rest = body - 1000 - (body // 65536 - 1) * 65536
    nxt = b"HTTP/1.1 503 Busy\r\nContent-Length: 2\r\n\r\nno"
    assert framer.feed(b"x" * rest + nxt) == (2, 1)
    assert framer.feed(b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nab") == (0, 0)
    assert framer.feed(b"c") == (1, 1)
