"""The off-grid validation set (calibration.offgrid): a seeded space-filling design over every knob a
user sets, measured with the grid, predicted by the final profile, never fitted to."""

import pandas as pd
import pytest
from calfakes import FakeMeasure, fake_simulate
from click.testing import CliRunner

import calibration
from calibration import calibrate, check_out
from calibration.grid import build_grid
from calibration.offgrid import OFFGRID_ROLE, build_offgrid, format_offgrid, real_run_s
from serverlab.cli import main
from simkit import registry
from simkit.analytic import throughput_bound
from simkit.profile import CostProfile
from simkit.scenario import Scenario

pytestmark = pytest.mark.timeout(90)

PROFILE = CostProfile.default()
TRUTH = PROFILE.with_params("probe", parse_s=40e-6, gil_handoff_s=25e-6, client_cpu_per_request_s=30e-6)


@pytest.fixture(scope="module")
def design():
    return build_offgrid(60, PROFILE, seed=5, max_cores=2)


def test_the_design_is_deterministic_per_seed_and_covers_every_model_and_loop_mode(design):
    again = build_offgrid(60, PROFILE, seed=5, max_cores=2)
    assert [p.scenario for p in again] == [p.scenario for p in design]
    assert [p.scenario for p in build_offgrid(60, PROFILE, seed=6, max_cores=2)] != [p.scenario for p in design]
    assert {p.scenario.model.name for p in design} == set(registry.names())
    assert {p.scenario.workload.mode for p in design} == {"closed", "open"}
    assert {p.scenario.workload.arrival for p in design if p.scenario.workload.mode == "open"} == {"poisson", "constant"}
    assert {p.scenario.workload.requests_per_conn for p in design} == {1, 10, None}
    assert {p.scenario.hardware.cores for p in design} == {1, 2}
    assert any(p.scenario.workload.idle_connections for p in design)
    assert any(p.scenario.workload.think_s for p in design)
    assert any(p.mix == "cpu+gil+io" for p in design)  # the three kinds of work in one request
    assert len(build_offgrid(15, PROFILE, quick=True, max_cores=2)) == 15 and build_offgrid(0, PROFILE) == []
    with pytest.raises(ValueError, match="offgrid"):
        build_offgrid(-1, PROFILE)


def test_every_point_is_a_valid_offgrid_scenario_within_the_run_budget(design):
    assert 60 * 2 < real_run_s(design) < 60 * 6
    for p in design:
        s, w = p.scenario, p.scenario.workload
        assert p.role == OFFGRID_ROLE
        assert Scenario.from_dict(s.to_dict()) == s  # validates every field again
        assert 10 <= w.connections <= 10_000 and s.hardware.fd_limit >= 2 * (w.connections + w.idle_connections)
        assert w.warmup_s + w.duration_s <= 5.0
        arch = registry.get(s.model.name)
        if arch.one_connection_at_a_time:  # neither could be served while one client holds the thread
            assert w.requests_per_conn is not None and w.idle_connections == 0
        if not any(k.field == "processes" for k in arch.knobs):
            assert s.model.dispatch == "shared"
    dispatch = {p.scenario.model.dispatch for p in design
                if any(k.field == "processes" for k in registry.get(p.scenario.model.name).knobs)}
    assert len(dispatch) >= 2


def test_open_loop_rates_sit_at_20_to_90_percent_of_the_estimated_capacity(design):
    opened = [p.scenario for p in design if p.scenario.workload.mode == "open"]
    assert len(opened) >= 20
    for s in opened:
        cap = throughput_bound(s.replace(rate_rps=1e12), PROFILE)
        assert 0.2 * cap * 0.999 <= s.workload.rate_rps <= 0.9 * cap * 1.001, s


def test_pipeline_validates_offgrid_with_the_final_profile_and_never_fits_them(tmp_path, monkeypatch):
    seen: list = []  # every Result the fit and apply_measured were given
    real_fit, real_apply = calibration.fit_params, calibration.apply_measured

    def fit_spy(results, *args, **kwargs):
        seen.extend(results)
        return real_fit(results, *args, **kwargs)

    def apply_spy(profile, results):
        seen.extend(results)
        return real_apply(profile, results)

    simulated: list = []

    def sim_spy(scenario, profile, *, seed=None, loadgen_on_server_cores=False):  # no detail=: one call each
        simulated.append((scenario, profile))
        return fake_simulate(scenario, profile, seed=seed, loadgen_on_server_cores=loadgen_on_server_cores)

    monkeypatch.setattr(calibration, "fit_params", fit_spy)
    monkeypatch.setattr(calibration, "apply_measured", apply_spy)
    grid = build_grid(quick=True, models=("m3_reactor", "m6_prefork"))
    out = tmp_path / "box.json"
    report = calibrate(out, quick=True, measure=FakeMeasure(TRUTH), simulate=sim_spy, probes=False, grid=grid,
                       offgrid=8, offgrid_seed=3)
    off = [r for r in report.runs if r.point.role == OFFGRID_ROLE]
    assert len(off) == 8 and all(r.ok for r in off)
    assert {r.point.scenario.model.name for r in off} <= {"m3_reactor", "m6_prefork"}
    off_scen = {r.result.scenario for r in off}
    assert seen and not off_scen & {r.scenario for r in seen}
    # the off-grid points are simulated once, over their own windows, with the profile written to disk
    sims = [(s, p) for s, p in simulated if s in off_scen]
    assert len(sims) == 8 and all(p.params == report.profile.params for _, p in sims)
    summary = report.offgrid_summary
    assert set(summary["per_model"]) <= {"m3_reactor", "m6_prefork"} and summary["overall"]["points"] == 8
    assert {k["knob"] for k in summary["per_knob"]} >= {"mode", "requests_per_conn", "cores", "connections"}
    assert "mode = open" in format_offgrid(summary) or "mode = closed" in format_offgrid(summary)
    notes = calibration.CostProfile.load(out).notes["offgrid"]
    assert notes["seed"] == 3 and notes["points"] == 8 and notes["summary"]["overall"]["points"] == 8
    table = pd.read_csv(out.with_suffix(".csv"))
    assert set(table["set"]) == {"grid", "offgrid"}
    assert (table["set"] == "offgrid").sum() == 8 * 6 and set(table[table["set"] == "offgrid"]["role"]) == {"offgrid"}
    assert {"mode", "requests_per_conn", "idle_connections", "io_us"} <= set(table.columns)
    assert set(pd.read_csv(out.with_suffix(".runs.csv"))["role"]) >= {"train", OFFGRID_ROLE}


def test_an_unwritable_out_fails_before_the_campaign(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")

    def no_campaign(*args, **kwargs):
        raise AssertionError("the campaign must not start")

    with pytest.raises(ValueError, match="^out: "):
        calibrate(blocker / "p.json", measure=no_campaign, simulate=fake_simulate, probes=False)
    with pytest.raises(ValueError, match="is a directory"):
        check_out(tmp_path)
    monkeypatch.setattr(calibration, "calibrate", no_campaign)
    for bad in (blocker / "p.json", tmp_path):
        result = CliRunner().invoke(main, ["calibrate", "--quick", "--out", str(bad)])
        error = [line for line in result.output.splitlines() if line.startswith("Error: ")]
        assert result.exit_code != 0 and len(error) == 1 and "--out" in error[0], result.output
        assert "Traceback" not in result.output
    assert check_out(tmp_path / "new" / "dir" / "p.json").parent.is_dir()
    result = CliRunner().invoke(main, ["calibrate", "--offgrid", "-1"])
    assert result.exit_code != 0 and "--offgrid" in result.output
