"""Simulated runs are compared with real ones counted the same way."""

import pytest

from calibration.compare import as_realkit
from simkit import simulate
from simkit.profile import CostProfile
from simkit.scenario import Hardware, ModelSpec, Scenario, Workload


@pytest.mark.timeout(60)
def test_an_overloaded_open_loop_is_counted_as_the_load_generator_counts():
    """Past capacity an open loop's cohort (sent in the window) mostly finishes after it; the real
    generator counts the answers completed inside the window, which run at the server's full rate."""
    s = Scenario(model=ModelSpec(name="m3_reactor"), hardware=Hardware(cores=1),
                 workload=Workload(connections=50, mode="open", rate_rps=6000, cpu_us=400,
                                   duration_s=0.5, warmup_s=0.5))
    sim, stats = simulate(s, CostProfile.default(), detail=True)
    counted = as_realkit(sim, stats)
    capacity = 1 / 420e-6
    assert sim.throughput_rps < 0.5 * capacity  # the cohort's view
    assert counted.throughput_rps == pytest.approx(stats.completed_in_window / 0.5)
    assert 0.7 * capacity < counted.throughput_rps < 1.1 * capacity
    assert counted.latency_p50_s == stats.latency_percentiles_in_window_s[0]
