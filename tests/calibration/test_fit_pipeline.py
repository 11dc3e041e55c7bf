"""The calibration machinery against stand-ins (tests/calibration/calfakes.py): fit, retries,
failure records, the profile and CSV the pipeline writes, bad profile files."""

import json
import math

import pandas as pd
import pytest
from calfakes import FakeMeasure, fake_simulate

from calibration import calibrate, format_summary
from calibration.fit import FIT_PARAMS, fit
from calibration.grid import GridPoint, build_grid, make_scenario
from calibration.runs import measure_with_retry, run_failed, run_grid
from calibration.validate import USLBaseline, rel_err
from simkit.profile import CostProfile
from simkit.result import Result

pytestmark = pytest.mark.timeout(60)

TRUTH = CostProfile.default().with_params("probe", parse_s=40e-6, gil_handoff_s=25e-6, client_cpu_per_request_s=30e-6)


def test_fit_recovers_known_parameters_from_noisy_synthetic_runs():
    measure = FakeMeasure(TRUTH, noise=0.03)
    points = [p for p in build_grid(quick=False) if p.role == "train"]
    reals = [measure(p.scenario) for p in points]
    got = fit(reals, CostProfile.default(), names=("parse_s", "gil_handoff_s"), simulate=fake_simulate,
              max_evaluations=40, bootstrap=100)
    for name in ("parse_s", "gil_handoff_s"):
        assert got.values[name] == pytest.approx(TRUTH[name], rel=0.10), (name, got.values[name])
        assert got.profile.params[name].source == "fit"
        assert 0 < got.profile.params[name].sd < got.values[name]
    assert got.rmse_log < got.rmse_log_start


def test_a_floored_parameter_stops_at_its_probed_value():
    """The data want parse_s = 40 us; a floor of 60 us (a probe said a request's Python costs at
    least that) holds the fit there, and the unfloored parameter is still fitted."""
    measure = FakeMeasure(TRUTH, noise=0.0)
    reals = [measure(p.scenario) for p in build_grid(quick=False) if p.role == "train"]
    got = fit(reals, CostProfile.default(), names=("parse_s", "gil_handoff_s"), simulate=fake_simulate,
              max_evaluations=40, bootstrap=10, floors={"parse_s": 60e-6})
    assert got.values["parse_s"] == pytest.approx(60e-6, rel=1e-6)
    assert got.values["gil_handoff_s"] != CostProfile.default()["gil_handoff_s"]


def test_flaky_run_is_retried_once_and_then_succeeds():
    point = GridPoint(make_scenario("m3_reactor", "cpu", 10, 1, 0.5, 0.1), "train", "cpu")
    measure = FakeMeasure(TRUTH, flaky=lambda s: True)
    run = measure_with_retry(point, measure)
    assert run.ok and run.attempts == 2 and len(measure.calls) == 2


def test_grid_runs_interleaved_and_comes_back_in_grid_order():
    # A spell of a slow box must not land on one model's points only: the grid runs in a shuffled order.
    points = build_grid(quick=True)
    measure = FakeMeasure(TRUTH)
    runs = run_grid(points, measure)
    assert [r.point for r in runs] == list(points)
    assert [r.result.scenario for r in runs] == [p.scenario for p in points]
    first = [s.model.name for s in measure.calls[: len(points) // 3]]
    assert len(set(first)) >= 4  # model after model, the first third would hold two or three models
    assert sorted(map(repr, measure.calls)) == sorted(repr(p.scenario) for p in points)


def test_failing_run_is_retried_once_then_recorded_not_dropped():
    point = GridPoint(make_scenario("m3_reactor", "cpu", 10, 1, 0.5, 0.1), "train", "cpu")
    measure = FakeMeasure(TRUTH, fail=lambda s: True)
    run = measure_with_retry(point, measure)
    assert not run.ok and run.attempts == 2 and len(measure.calls) == 2
    assert "server did not start" in run.error
    rec = run.failure_record()
    assert rec["scenario"]["model"]["name"] == "m3_reactor" and rec["attempts"] == 2


def test_broken_results_count_as_failed_runs():
    s = make_scenario("m3_reactor", "cpu", 10, 1, 0.5, 0.1)
    assert run_failed(Result(scenario=s, source="real", throughput_rps=10.0, completed=5, failure="server_died"))
    assert run_failed(Result(scenario=s, source="real", throughput_rps=0.0, completed=0, errors_refused=3))
    assert not run_failed(Result(scenario=s, source="real", throughput_rps=10.0, completed=5, failure="fd_limit"))


def test_pipeline_writes_profile_and_csv_with_failures_recorded(tmp_path):
    dead = lambda s: s.model.name == "m3_reactor" and s.workload.connections == 5000  # noqa: E731
    measure = FakeMeasure(TRUTH, noise=0.02, fail=dead)
    grid = build_grid(quick=True, models=("m3_reactor", "m6_prefork"))
    out = tmp_path / "box.json"
    report = calibrate(out, quick=True, measure=measure, simulate=fake_simulate, probes=False, grid=grid)
    p = CostProfile.load(out)
    assert p.calibrated and p.fingerprint["cores"] >= 1 and p.fingerprint["python"]
    assert [f["label"] for f in p.failed_runs] == ["m3_reactor c=5000 cpu cores=1"]
    assert p.failed_runs[0]["attempts"] == 2
    assert all(p.params[name].source == "fit" for name in FIT_PARAMS)
    assert report.fit.rmse_log <= report.fit.rmse_log_start
    assert p.params["client_cpu_per_request_s"].value == pytest.approx(30e-6, rel=0.1)
    roles = {row["role"] for row in p.validation}
    assert roles == {"cores", "interp", "connections"}
    assert {row["metric"] for row in p.validation} >= {"throughput", "p50", "p99", "rss", "threads"}
    csv = pd.read_csv(out.with_suffix(".csv"))
    assert len(csv) == len(p.validation) and {"measured", "predicted", "rel_err", "usl_rel_err"} <= set(csv.columns)
    assert "extrapolation_vs_usl" in p.notes["validation_summary"]
    assert "m6_prefork" in format_summary(report.summary)
    json.loads(out.read_text())  # plain JSON: no NaN tokens


def test_usl_baseline_fits_training_curve_and_scales_cores():
    reals = [fake_simulate(make_scenario("m6_prefork", "cpu", c, 1, 1.0, 0.1), TRUTH, source="real")
             for c in (1, 2, 4, 8)]
    base = USLBaseline.fit(reals)
    one = base.predict(make_scenario("m6_prefork", "cpu", 4, 1, 1.0, 0.1))
    assert one is not None and rel_err(one[0], reals[2].throughput_rps) == pytest.approx(0, abs=0.2)
    two = base.predict(make_scenario("m6_prefork", "cpu", 4, 2, 1.0, 0.1))
    assert two is not None and two[0] >= one[0] * 0.99
    assert base.predict(make_scenario("m3_reactor", "cpu", 4, 1, 1.0, 0.1)) is None


def test_corrupt_or_truncated_profile_names_the_file(tmp_path):
    good = tmp_path / "good.json"
    CostProfile.default().save(good)
    text = good.read_text()
    bad = tmp_path / "truncated.json"
    bad.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match="truncated.json.*corrupt or truncated"):
        CostProfile.load(bad)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"format": "serverlab-profile/1", "params": {"parse_s": {"value": 1e-5}}}))
    with pytest.raises(ValueError, match="wrong.json.*missing"):
        CostProfile.load(wrong)
    with pytest.raises(ValueError, match="absent.json.*not found"):
        CostProfile.load(tmp_path / "absent.json")
    assert not math.isnan(CostProfile.load(good)["parse_s"])


def test_runs_csv_round_trips_and_can_be_refitted_without_measuring(tmp_path):
    measure = FakeMeasure(TRUTH, noise=0.02, fail=lambda s: s.workload.connections == 300)
    grid = build_grid(quick=True, models=("m3_reactor", "m6_prefork"))
    first = calibrate(tmp_path / "a.json", quick=True, measure=measure, simulate=fake_simulate, probes=False, grid=grid)
    n_calls = len(measure.calls)

    def no_measure(_scenario):
        raise AssertionError("runs_from must not measure")

    again = calibrate(tmp_path / "b.json", quick=True, measure=no_measure, simulate=fake_simulate, probes=False,
                      grid=grid, runs_from=tmp_path / "a.runs.csv")
    assert len(measure.calls) == n_calls
    assert [r.ok for r in again.runs] == [r.ok for r in first.runs]
    assert [r.result.throughput_rps for r in again.runs if r.ok] == pytest.approx(
        [r.result.throughput_rps for r in first.runs if r.ok])
    assert len(again.profile.failed_runs) == len(first.profile.failed_runs) == 2  # both 300-connection points


def test_a_profile_from_before_the_jitter_parameters_still_loads(tmp_path):
    data = CostProfile.default().with_params("fit", parse_s=3e-5).to_dict()
    for name in ("cpu_work_cv", "gil_work_cv"):
        del data["params"][name]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    loaded = CostProfile.load(old)
    assert loaded["parse_s"] == 3e-5
    assert loaded["cpu_work_cv"] == 0.0 and loaded.params["gil_work_cv"].source == "default"


def test_generator_cpu_comes_from_runs_where_it_shares_the_servers_cores(monkeypatch):
    """On CPUs of its own the generator polls for its send times (its CPU is not a per-request cost);
    the simulator charges client_cpu_per_request_s only where it shares, so only those runs set it."""
    from calibration import compare
    from calibration.fit import client_cpu_from_runs

    monkeypatch.setattr(compare, "available_cores", lambda: 2)
    own = make_scenario("m3_reactor", "cpu", 10, 1, 0.5, 0.1)
    shared = make_scenario("m3_reactor", "cpu", 10, 2, 0.5, 0.1)
    runs = [Result(scenario=own, source="real", throughput_rps=1000.0, completed=500, loadgen_cpu_util=0.9),
            Result(scenario=shared, source="real", throughput_rps=1000.0, completed=500, loadgen_cpu_util=0.05)]
    med, _sd = client_cpu_from_runs(runs)
    assert med == pytest.approx(50e-6)
    assert client_cpu_from_runs(runs[:1]) is None


def test_parse_cost_is_the_real_servers_cpu_per_request_beyond_the_probed_costs():
    """The wake-up probe's back-to-back run measured 32 us of server CPU per request; the same run
    simulated with parse_s = 0 spends 10 us (recv, send, epoll): parse_s is the other 22 us, never
    below the parse probe, and a profile without that run keeps its parse_s."""
    from dataclasses import replace

    from calibration.fit import parse_from_server

    seen = []

    def sim(scenario, profile):
        seen.append(profile["parse_s"])
        return Result(scenario=scenario, source="sim", throughput_rps=1000.0, completed=300, cpu_util=0.010)

    run = {"gaps_s": [0.0, 0.002], "cpu_per_request_s": [32e-6, 150e-6]}
    base = CostProfile.default()
    with_run = replace(base, notes={"probes": {"idle_wakeup_s": run, "parse_s": {"value": 5e-6}}})
    got = parse_from_server(with_run, simulate=sim)
    assert seen == [0.0]
    assert got.params["parse_s"].value == pytest.approx(22e-6) and got.params["parse_s"].source == "probe"
    floored = replace(base, notes={"probes": {"idle_wakeup_s": run, "parse_s": {"value": 40e-6}}})
    assert parse_from_server(floored, simulate=sim)["parse_s"] == pytest.approx(40e-6)
    assert parse_from_server(base, simulate=sim) is base


def test_the_ring_servers_own_python_is_its_cpu_per_request_beyond_the_simulated_costs():
    """The ring probe's real m8 run spent 40 us of server CPU per request; the same run simulated with
    uring_request_s = 0 spends 25 us (parse_s, the ring's operations, the enter): uring_request_s is
    the other 15 us; a profile without that run keeps its value."""
    from dataclasses import replace

    from calibration.fit import uring_from_server
    from calibration.probes import ring_server_scenario

    seen = []

    def sim(scenario, profile):
        seen.append((scenario.model.name, profile["uring_request_s"]))
        return Result(scenario=scenario, source="sim", throughput_rps=1000.0, completed=300, cpu_util=0.025)

    base = CostProfile.default().with_params("probe", uring_request_s=9e-6)
    with_run = replace(base, notes={"probes": {"ring_server_cpu_per_request_s": {"value": 40e-6}}})
    got = uring_from_server(with_run, simulate=sim)
    assert seen == [(ring_server_scenario().model.name, 0.0)]
    assert got.params["uring_request_s"].value == pytest.approx(15e-6)
    assert got.params["uring_request_s"].source == "probe"
    assert uring_from_server(base, simulate=sim) is base
