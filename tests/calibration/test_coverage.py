"""Band coverage of held-out points (calibration.coverage), on small synthetic tables."""

import math

import pandas as pd
import pytest

from calibration.coverage import format_coverage, heldout_bands, summarize_coverage


def _row(point, model, metric, score, role="interp", measured=100.0, set_="grid"):
    return {"set": set_, "point": point, "model": model, "metric": metric, "role": role, "cores": 1,
            "connections": 100, "measured": measured, "predicted": measured * math.exp(score)}


def test_a_points_own_error_never_widens_its_band():
    rows = [_row(i, "m3_reactor", "throughput", 0.1) for i in range(9)] + [_row(9, "m3_reactor", "throughput", 2.0)]
    cov = {c["point"]: c for c in heldout_bands(rows, {}, 0.9, metrics=("throughput",))}
    assert cov[9]["h_val"] == pytest.approx(0.1)  # its own 2.0 was left out
    assert cov[9]["inside"] is False
    assert cov[0]["h_val"] == pytest.approx(2.0)  # the others see the outlier
    assert cov[0]["inside"] is True


def test_parameter_part_widens_a_band():
    rows = [_row(i, "m3_reactor", "throughput", 0.1) for i in range(9)] + [_row(9, "m3_reactor", "throughput", 0.5)]
    narrow = {c["point"]: c for c in heldout_bands(rows, {}, 0.9, metrics=("throughput",))}
    wide = {c["point"]: c for c in heldout_bands(rows, {("grid", 9): {"throughput_rps": 0.5}}, 0.9,
                                                  metrics=("throughput",))}
    assert narrow[9]["inside"] is False and wide[9]["inside"] is True


def test_coverage_table_counts_per_model_and_overall():
    cov = [
        {"set": "grid", "point": 0, "model": "a", "metric": "throughput", "inside": True},
        {"set": "grid", "point": 0, "model": "a", "metric": "p99", "inside": False},
        {"set": "grid", "point": 1, "model": "a", "metric": "throughput", "inside": True},
        {"set": "grid", "point": 1, "model": "a", "metric": "p99", "inside": True},
        {"set": "offgrid", "point": 0, "model": "b", "metric": "throughput", "inside": False},
        {"set": "offgrid", "point": 0, "model": "b", "metric": "p99", "inside": None},  # nothing measured
    ]
    s = summarize_coverage(cov, 0.9)
    assert s["per_model"]["a"]["throughput"]["fraction"] == 1.0
    assert s["per_model"]["a"]["p99"]["fraction"] == 0.5
    assert s["per_model"]["a"]["both"] == {"inside": 1, "n": 2, "fraction": 0.5, "unmeasured": 0}
    assert s["per_model"]["b"]["p99"]["unmeasured"] == 1 and s["per_model"]["b"]["p99"]["n"] == 0
    assert s["overall"]["throughput"]["fraction"] == pytest.approx(2 / 3)
    assert s["per_set"]["offgrid"]["throughput"]["inside"] == 0
    text = format_coverage(s)
    assert "all held-out points" in text and "BELOW THE BAR" in text


def test_a_failed_prediction_is_outside_and_an_unmeasured_point_is_left_out():
    rows = [_row(i, "m3_reactor", "p99", 0.1, role="offgrid", set_="offgrid") for i in range(10)]
    rows[0]["predicted"] = float("nan")
    rows[1]["measured"] = float("nan")
    cov = {c["point"]: c for c in heldout_bands(rows, {}, 0.9, metrics=("p99",))}
    assert cov[0]["inside"] is False and cov[1]["inside"] is None


@pytest.mark.timeout(60)
def test_calibrate_reports_and_writes_the_coverage_of_its_held_out_points(tmp_path):
    from calfakes import FakeMeasure, fake_simulate

    from calibration import calibrate
    from calibration.grid import build_grid
    from simkit.profile import CostProfile

    truth = CostProfile.default().with_params("probe", parse_s=40e-6)
    out = tmp_path / "box.json"
    report = calibrate(out, quick=True, measure=FakeMeasure(truth, noise=0.02), simulate=fake_simulate, probes=False,
                       grid=build_grid(quick=True, models=("m3_reactor",)))
    held = {(r["role"], r["connections"], r["cores"]) for r in report.rows}
    assert report.coverage["overall"]["throughput"]["n"] == len(held)
    table = pd.read_csv(report.coverage_path)
    assert report.coverage_path == out.with_suffix(".coverage.csv")
    assert set(table["metric"]) == {"throughput", "p99"} and table["lo"].le(table["predicted"]).all()
    assert CostProfile.load(out).notes["coverage"]["overall"]["p99"]["n"] == report.coverage["overall"]["p99"]["n"]


@pytest.mark.timeout(60)
def test_serverlab_calibrate_prints_the_coverage_table(tmp_path, monkeypatch):
    from calfakes import FakeMeasure, fake_simulate
    from click.testing import CliRunner

    import calibration
    from calibration.grid import build_grid
    from serverlab.cli import main
    from simkit.profile import CostProfile

    real = calibration.calibrate
    truth = CostProfile.default().with_params("probe", parse_s=40e-6)

    def small(out, **kw):  # the real pipeline on a one-model grid with stand-ins for both halves
        kw.update(measure=FakeMeasure(truth, noise=0.02), simulate=fake_simulate, probes=False, mechanisms=False,
                  grid=build_grid(quick=True, models=("m3_reactor",)), offgrid=0)
        return real(out, **kw)

    monkeypatch.setattr(calibration, "calibrate", small)
    out = tmp_path / "box.json"
    result = CliRunner().invoke(main, ["calibrate", "--quick", "--out", str(out), "--model", "3"])
    assert result.exit_code == 0, result.output
    assert "band coverage of held-out points" in result.output
    assert "all held-out points" in result.output and str(out.with_suffix(".coverage.csv")) in result.output
