"""calibration.mechanisms' send-lag figure: zero-work open-loop p50 with the generator sharing the
server's cores, and in its note the send lag alone (minus the same run on a core of its own), with fakes."""

from __future__ import annotations

import pytest

from calibration import mechanisms as mech
from calibration.compare import loadgen_shares_cores
from simkit.profile import CostProfile
from simkit.result import Result
from simkit.scenario import Scenario

FIGURE = "send lag: p50, sharing the cores"


def _result(s: Scenario, source: str, p50_s: float) -> Result:
    return Result(scenario=s, source=source, throughput_rps=500.0, latency_mean_s=p50_s, latency_p50_s=p50_s,
                  latency_p90_s=p50_s, latency_p99_s=p50_s, latency_p999_s=p50_s, completed=500)


def test_the_figure_is_the_shared_p50_and_the_note_the_lag_alone():
    sims = []

    def measure(s: Scenario) -> Result:
        return _result(s, "real", 0.9e-3 if loadgen_shares_cores(s) else 0.2e-3)

    def simulate(s, profile=None, *, seed=None, loadgen_on_server_cores=False, detail=False):
        sims.append((s, loadgen_on_server_cores))
        r = _result(s, "sim", 1.15e-3 if loadgen_on_server_cores else 0.4e-3)
        return (r, None) if detail else r

    (row,) = mech.run_mechanisms(CostProfile.default(), quick=True, measure=measure, simulate=simulate,
                                 mechanisms=[m for m in mech.MECHANISMS if m.figure == FIGURE])
    assert (row["real"], row["sim"]) == (pytest.approx(0.9), pytest.approx(1.15))
    assert "send lag (the difference) real 0.700 / sim 0.750 ms" in row["note"]
    # the same zero-work scenario on one core (its own core) and on every core (shared)
    assert sorted(shared for _, shared in sims) == [False, True]
    own, shared = sorted(sims, key=lambda x: x[1])
    assert own[0].workload == shared[0].workload and own[0].workload.mode == "open"
    assert own[0].workload.cpu_us == own[0].workload.gil_us == 0
