"""The clients' connect ramp (Workload.connect_rate_cps) in the simulator and the window planner, the
production-like API defaults (equal to whatif.toml's), and calibration's pinned limits."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from calibration.grid import (
    CALIBRATION_BACKLOG,
    CALIBRATION_FD_LIMIT,
    GridPoint,
    build_grid,
)
from calibration.runs import Run, load_runs, save_runs
from experiments.whatif import load_whatif
from experiments.windows import WindowPolicy, plan_window
from simkit import clients as clients_mod
from simkit.clients import connect_ramp_s
from simkit.profile import CostProfile
from simkit.scenario import Hardware, ModelSpec, Scenario, Workload
from simkit.sim import simulate

PROFILE = CostProfile.default()


def _first_connect_times(monkeypatch, scenario: Scenario) -> list[float]:
    """When each slot's first connect() happened in a simulation of `scenario`."""
    seen: dict[int, float] = {}
    original = clients_mod.Clients._connect

    def spy(self, req):
        seen.setdefault(req.slot.idx, self.env.now)
        return original(self, req)

    monkeypatch.setattr(clients_mod.Clients, "_connect", spy)
    simulate(scenario, PROFILE)
    return [seen[i] for i in sorted(seen)]


def test_first_connects_are_spread_at_the_connect_rate(monkeypatch):
    base = Scenario().replace(model="m3", connections=100, think_s=0.05, gil_us=10.0, warmup_s=0.2,
                              duration_s=0.2)
    ramped = _first_connect_times(monkeypatch, base.replace(connect_rate_cps=500.0))
    assert len(ramped) == 100
    assert ramped == pytest.approx([i / 500.0 for i in range(100)], abs=1e-9)  # evenly, 2 ms apart
    storm = _first_connect_times(monkeypatch, base.replace(connect_rate_cps=None))
    gap = PROFILE["client_cpu_per_request_s"]
    assert storm == pytest.approx([i * gap for i in range(100)], abs=1e-9)  # the generator's own pace
    assert storm[-1] < ramped[-1] / 10


def test_connect_ramp_s():
    w = Workload(connections=20_000, connect_rate_cps=1000.0)
    assert connect_ramp_s(w, PROFILE) == pytest.approx(20.0)
    storm = Workload(connections=20_000, connect_rate_cps=None)
    assert connect_ramp_s(storm, PROFILE) == pytest.approx(20_000 * PROFILE["client_cpu_per_request_s"])
    # never faster than the generator connects; open-loop connections are opened by the arrivals
    assert connect_ramp_s(Workload(connections=10, connect_rate_cps=1e9), PROFILE) == connect_ramp_s(
        Workload(connections=10, connect_rate_cps=None), PROFILE)
    assert connect_ramp_s(Workload(connections=10, mode="open", rate_rps=5.0, connect_rate_cps=1.0),
                          PROFILE) == pytest.approx(10 * PROFILE["client_cpu_per_request_s"])


def test_adaptive_warmup_covers_the_ramp():
    policy = WindowPolicy()
    for rate in (1000.0, 10_000.0):
        s = Scenario().replace(model="m3", connections=20_000, think_s=1.0, gil_us=20.0, connect_rate_cps=rate)
        planned, _ = plan_window(s, PROFILE, policy)
        assert planned.workload.warmup_s >= 20_000 / rate  # 20 s at 1000/s: past max_warmup_s too


@pytest.mark.parametrize("value", [0, -1.0, math.inf, math.nan, "fast", True])
def test_connect_rate_is_validated_naming_the_field(value):
    with pytest.raises(ValueError, match="^connect_rate_cps:"):
        Workload(connect_rate_cps=value)


def test_20k_clients_arriving_as_a_fleet_are_not_a_backlog_failure_but_a_storm_is():
    """m3 can serve 20k keep-alive clients that each ask every 10 s (2,000 req/s). Arriving at the
    default connect rate they all get in; connecting at once into a short backlog, SYNs drop and their
    retries land in the window: "backlog", a start-up storm, not the steady state."""
    s = Scenario().replace(model="m3", connections=20_000, think_s=10.0, gil_us=20.0)
    fleet = simulate(s, PROFILE)
    assert fleet.failure != "backlog" and fleet.failure == ""
    assert fleet.errors == 0 and fleet.throughput_rps > 1500
    storm = simulate(s.replace(connect_rate_cps=None, backlog=128), PROFILE)
    assert storm.failure == "backlog"


# -- defaults ------------------------------------------------------------------------------------------
def test_api_defaults_equal_whatif_toml():
    base = load_whatif().base
    for name in ("fd_limit", "somaxconn", "threads_max"):
        assert getattr(base.hardware, name) == getattr(Hardware(), name), name
    assert base.model.backlog == ModelSpec().backlog == 4096
    assert base.workload.connect_rate_cps == Workload().connect_rate_cps
    assert Hardware().fd_limit == 1_048_576


# -- calibration keeps measuring what it measured --------------------------------------------------------
def test_calibration_points_pin_the_old_limits_and_start_up():
    for point in build_grid(quick=True):
        s = point.scenario
        assert s.model.backlog == CALIBRATION_BACKLOG == 1024
        assert s.workload.connect_rate_cps is None
        assert s.hardware.fd_limit == max(CALIBRATION_FD_LIMIT, 2 * s.workload.connections + 1024)


def test_runs_saved_before_the_connect_rate_load_as_storms(tmp_path):
    point = build_grid(quick=True)[0]
    path = tmp_path / "runs.csv"
    save_runs([Run(GridPoint(point.scenario.replace(connect_rate_cps=None), point.role, point.mix), None,
                   "boom")], path)
    frame = pd.read_csv(path)
    frame.drop(columns=["connect_rate_cps"]).to_csv(path, index=False)  # a CSV from before the field
    (run,) = load_runs(path)
    assert run.point.scenario.workload.connect_rate_cps is None
    assert run.point.scenario == point.scenario
