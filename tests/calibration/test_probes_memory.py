"""RSS slopes of the real servers (calibration.probes) and which memory figures the runs may set
(calibration.fit.memory_from_runs): the arithmetic, without starting a server."""

from __future__ import annotations

import pytest

from calibration import probes
from calibration.fit import apply_measured, memory_from_runs
from simkit.profile import CostProfile
from simkit.result import Result
from simkit.scenario import Scenario


def test_rss_slope_is_what_one_more_adds_and_the_base():
    base, slope = probes.rss_slope([1000, 4000, 10000], [23e6 + 400 * n for n in (1000, 4000, 10000)])
    assert slope == pytest.approx(400.0) and base == pytest.approx(23e6)
    # a least-squares line: a reading off the line moves the slope by its share, not by all of it
    _b, s2 = probes.rss_slope([1, 2, 3], [10.0, 20.0, 60.0])
    assert s2 == pytest.approx(25.0)


@pytest.mark.parametrize(("counts", "rss", "field"), [
    ([1000], [2e7], "counts"),
    ([1000, 1000], [2e7, 2.1e7], "counts"),
    ([1000, -1], [2e7, 2.1e7], "counts"),
    ([1000, 2000], [2e7], "rss_bytes"),
    ([1000, 2000], [2e7, 0.0], "rss_bytes"),
    ([1000, 2000], [2e7, float("nan")], "rss_bytes"),
])
def test_rss_slope_refuses_what_has_no_slope(counts, rss, field):
    with pytest.raises(ValueError, match=field):
        probes.rss_slope(counts, rss)


def test_server_counts_scale_down_and_fit_the_fds_there_are():
    assert probes.server_counts((1000, 4000, 10000), 1.0, 19000) == (1000, 4000, 10000)
    assert probes.server_counts((1000, 4000, 10000), 0.3, 19000) == (300, 1200, 3000)
    assert probes.server_counts((250, 1000, 2000), 0.3, 19000) == (100, 300, 600)
    assert probes.server_counts((1000, 4000, 10000), 1.0, 5000) == (1000, 4000)
    assert probes.server_counts((1000, 4000, 10000), 1.0, 700) == (100, 700)
    with pytest.raises(ValueError, match="fd_room"):
        probes.server_counts((1000, 4000), 1.0, 150)


def _run(model: str, conns: int, rss: float, cores: int = 1, threads: int = 1) -> Result:
    s = Scenario().replace(model=model, connections=conns, cores=cores)
    return Result(scenario=s, throughput_rps=1000.0, completed=1000, threads_peak=threads, processes_peak=1,
                  rss_peak_bytes=int(rss), source="real")


# one reactor: 2 cores carry 400 KB more than 1 core whatever the connections; each connection 380 B
REACTOR_RUNS = [_run("m3_reactor", n, 23.0e6 + 0.4e6 * (c == 2) + 380 * n, cores=c)
                for n, c in ((10, 1), (100, 1), (1000, 1), (100, 2), (1000, 2))]


def test_a_probed_connection_slope_stays_and_the_runs_give_the_base():
    # a line through these runs mixes the core counts: its slope is well above 380 B
    free = memory_from_runs(REACTOR_RUNS)
    assert free["rss_conn_bytes"][0] > 1.15 * 380
    got = memory_from_runs(REACTOR_RUNS, {"rss_conn_bytes": 380.0})
    assert "rss_conn_bytes" not in got
    assert got["rss_process_bytes"][0] == pytest.approx(23.0e6, rel=0.01)


def test_apply_measured_keeps_every_probed_memory_figure():
    probed = CostProfile.default().with_params("probe", rss_process_bytes=22e6, rss_conn_bytes=380.0,
                                               rss_thread_bytes=17e3)
    thread_runs = [_run("m2_thread_per_conn", n, 23.5e6 + 20e3 * n, threads=n) for n in (10, 100, 300)]
    out = apply_measured(probed, REACTOR_RUNS + thread_runs)
    for name, value in (("rss_process_bytes", 22e6), ("rss_conn_bytes", 380.0), ("rss_thread_bytes", 17e3)):
        assert out.params[name].value == value and out.params[name].source == "probe", name
    # unprobed (the probe failed): the runs fill them in
    filled = apply_measured(CostProfile.default(), REACTOR_RUNS + thread_runs)
    assert filled.params["rss_conn_bytes"].source == "fit"
