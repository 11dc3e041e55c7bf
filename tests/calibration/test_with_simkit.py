"""The calibration against the real simulator and the real servers (no fakes)."""

import dataclasses
import math
import random

import pandas as pd
import pytest

import calibration
from calibration import calibrate
from calibration.compare import _sim_one, loadgen_own_cores, loadgen_shares_cores
from calibration.fit import fit
from calibration.grid import GridPoint, make_scenario
from simkit import simulate
from simkit.profile import CostProfile, HostMismatchWarning, host_fingerprint
from simkit.result import Result


def _synthetic(truth: CostProfile, scenarios, noise: float, seed: int = 3) -> list[Result]:
    """'Real' runs made by simkit itself under known parameters, counted as realkit counts, with
    log-normal noise added."""
    rng = random.Random(seed)
    out = []
    for s in scenarios:
        r = _sim_one((simulate, s, truth, s.seed, loadgen_shares_cores(s), loadgen_own_cores(s)))

        def jig(v: float) -> float:
            return v * math.exp(rng.gauss(0.0, noise))

        out.append(dataclasses.replace(r, source="real", throughput_rps=jig(r.throughput_rps),
                                       latency_p50_s=jig(r.latency_p50_s), latency_p99_s=jig(r.latency_p99_s)))
    return out


@pytest.mark.timeout(150)
def test_fit_recovers_known_parameters_from_noisy_simkit_data_within_10_percent():
    truth = CostProfile.default().with_params("probe", parse_s=60e-6, gil_handoff_s=30e-6)
    # Points where each parameter shows: parse_s everywhere, gil_handoff_s where threads contend
    # for the GIL (m4's loop and workers; m5 on two cores).
    scenarios = [
        make_scenario(model, mix, 32, cores, 0.3, 0.05, max_duration_s=0.3, max_warmup_s=0.05)
        for model in ("m3_reactor", "m4_reactor_workers", "m5_multi_reactor")
        for mix in ("cpu", "gil")
        for cores in (1, 2)
    ]
    reals = _synthetic(truth, scenarios, noise=0.03)
    start = CostProfile.default()  # parse_s 20 us, gil_handoff_s 8 us: far from the truth
    got = fit(reals, start, names=("parse_s", "gil_handoff_s"), simulate=simulate, target_requests=10**9,
              max_evaluations=40, bootstrap=100)
    for name in ("parse_s", "gil_handoff_s"):
        assert got.values[name] == pytest.approx(truth[name], rel=0.10), (name, got.values, got.status)
    assert got.rmse_log < got.rmse_log_start


@pytest.mark.timeout(30)
def test_simulate_with_a_profile_from_another_host_names_the_differing_fields():
    here = host_fingerprint()
    foreign = dataclasses.replace(CostProfile.default(), fingerprint={**here, "cpu_model": "Imaginary CPU 9000",
                                                                      "kernel": "1.0.0"})
    s = make_scenario("m3_reactor", "cpu", 2, 1, 0.05, 0.01)
    with pytest.warns(HostMismatchWarning, match=r"cpu_model.*Imaginary CPU 9000.*kernel"):
        simulate(s, foreign)


@pytest.mark.timeout(170)
def test_tiny_end_to_end_calibration_with_real_servers_and_simulator(tmp_path, monkeypatch):
    def pt(model, role, c, cores):
        return GridPoint(make_scenario(model, "cpu", c, cores, 0.3, 0.2, max_duration_s=0.6, max_warmup_s=0.4),
                         role, "cpu")

    grid = []
    for model in ("m3_reactor", "m6_prefork"):
        grid += [pt(model, "train", c, 1) for c in (4, 16, 48)]
        grid += [pt(model, "cores", 16, 2), pt(model, "interp", 30, 1), pt(model, "connections", 200, 1)]
    out = tmp_path / "tiny.json"
    # The per-operation probes' second pass after the real runs: one probe of it, to keep this short
    monkeypatch.setattr(calibration, "REPEATED", ("accept",))
    report = calibrate(out, quick=True, grid=grid, max_evaluations=6, workers=1, target_requests=400)
    p = CostProfile.load(out)
    assert p.calibrated and p.fingerprint == host_fingerprint()
    assert p.params["ctx_switch_s"].source == "probe"
    assert len(p.notes["probes"]["accept_s"]["passes"]) == 2 and "passes" not in p.notes["probes"]["fork_s"]
    default = CostProfile.default()
    assert p.params["cpu_work_scale"].source == "fit" and p.params["cpu_work_scale"].sd > 0
    assert p.params["gil_handoff_s"].source == "probe"  # probed, not fitted
    assert p.params["cpu_work_scale"].value != default["cpu_work_scale"]  # moved from the uncalibrated default
    # parse_s: the real reactor's CPU per request beyond the probed syscalls (the wake-up probe's run)
    assert p.params["parse_s"].source == "probe" and p.params["parse_s"].value != default["parse_s"]
    # the load generator's costs: its probe's runs, split through the simulator's model of it
    for name in ("client_cpu_per_request_s", "client_cpu_per_wake_s", "client_cpu_per_conn_s"):
        assert p.params[name].source == "probe", name
    assert p.params["client_cpu_per_wake_s"].value + p.params["client_cpu_per_request_s"].value > 0
    # a request costs the generator at least its own send and recv, however its wake-ups batch
    assert p.params["client_cpu_per_request_s"].value >= min(
        p["send_base_s"] + p["recv_base_s"],
        p.params["client_cpu_per_wake_s"].value + p.params["client_cpu_per_request_s"].value) * 0.999
    assert p.failed_runs == [] or all(f["attempts"] == 2 for f in p.failed_runs)
    ok_heldout = sum(1 for r in report.runs if r.ok and r.point.role != "train")
    assert len({(v["model"], v["role"], v["connections"], v["cores"]) for v in p.validation}) == ok_heldout
    for v in p.validation:
        assert v["measured"] is None or v["measured"] >= 0
    table = pd.read_csv(out.with_suffix(".csv"))
    assert set(table["metric"]) == {"throughput", "latency_mean", "p50", "p99", "rss", "threads"}
    runs = pd.read_csv(out.with_suffix(".runs.csv"))
    assert len(runs) == len(grid) and set(runs["role"]) == {"train", "cores", "interp", "connections"}
    assert p.notes["fit"]["evaluations"] >= 1 and "validation_summary" in p.notes
