"""The load generator's connect ramp (Workload.connect_rate_cps), its window rule for start-up errors,
and the fd limit a real run records (realkit.runner.ran_as). Loopback only, bounded runs."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import warnings

import pytest

from realkit.loadgen import LoadSpec, _Generator, run_load
from realkit.runner import ran_as
from simkit.scenario import Scenario, Workload


class _AcceptClock:
    """A loopback listener that only accepts (never answers) and notes when each accept happened."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.times: list[float] = []
        self.conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.times.append(time.monotonic())
            self.conns.append(conn)

    def __enter__(self) -> _AcceptClock:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        for c in self.conns:
            c.close()
        self.sock.close()


def _accept_times(rate: float | None, processes: int) -> list[float]:
    with _AcceptClock() as srv:
        run_load(LoadSpec(url=f"http://127.0.0.1:{srv.port}/", processes=processes,
                          workload=Workload(connections=40, connect_rate_cps=rate, duration_s=0.5, warmup_s=0.0,
                                            timeout_s=5.0)))
        time.sleep(0.05)
        return sorted(srv.times)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("processes", [0, 2])
def test_first_connects_are_paced_at_the_connect_rate(processes):
    times = _accept_times(100.0, processes)
    assert len(times) == 40
    # Arrival k is due k / 100 s after the first; a slow box can only make it later (50 ms slack for
    # a first connect that was itself late).
    for k, t in enumerate(times):
        assert t - times[0] >= k / 100.0 - 0.05, k
    assert times[-1] - times[0] >= 0.34


def test_errors_of_requests_sent_before_the_window_are_not_counted():
    loop = asyncio.new_event_loop()
    try:
        g = _Generator(LoadSpec(url="http://127.0.0.1:9/"), 0, 1, loop)
        g.recording, g._window_start = True, 10.0
        g.error("timeout", t_req=9.0)  # a start-up connect that failed during the window
        g.error("refused", t_req=9.99)
        assert g.c["errors_timeout"] == g.c["errors_refused"] == 0
        g.error("timeout", t_req=10.5)
        g.error("refused", 3, t_req=10.0)
        assert (g.c["errors_timeout"], g.c["errors_refused"]) == (1, 3)
    finally:
        loop.close()


def test_a_real_run_records_the_fd_limit_the_server_had():
    s = Scenario()
    assert s.hardware.fd_limit == 1_048_576
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 100 connections cannot reach 20,000: no warning
        assert ran_as(s, 20_000).hardware.fd_limit == 20_000
    assert ran_as(s, 2_000_000) == s  # the box gave what was asked
    big = s.replace(connections=30_000)
    with pytest.warns(RuntimeWarning, match="fd_limit"):
        assert ran_as(big, 20_000).hardware.fd_limit == 20_000


def test_the_report_counts_the_clients_still_connecting_when_the_window_opened():
    with _AcceptClock() as srv:
        slow = run_load(LoadSpec(url=f"http://127.0.0.1:{srv.port}/", processes=1, workload=Workload(
            connections=40, connect_rate_cps=40.0, duration_s=0.2, warmup_s=0.2, timeout_s=5.0)))
    with _AcceptClock() as srv:
        fast = run_load(LoadSpec(url=f"http://127.0.0.1:{srv.port}/", processes=1, workload=Workload(
            connections=40, duration_s=0.2, warmup_s=0.3, timeout_s=5.0)))
    assert 20 <= slow.unconnected_at_window <= 40  # ~8 of 40 had arrived 0.2 s into a 1 s ramp
    assert fast.unconnected_at_window == 0
