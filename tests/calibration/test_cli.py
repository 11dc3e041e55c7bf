"""`serverlab calibrate` end to end through click, with stand-ins for the real halves."""

import pandas as pd
import pytest
from calfakes import FakeMeasure, fake_simulate
from click.testing import CliRunner

import calibration
from serverlab.cli import main
from simkit.profile import CostProfile

pytestmark = pytest.mark.timeout(90)


def test_calibrate_quick_writes_profile_and_tables(tmp_path, monkeypatch):
    truth = CostProfile.default().with_params("probe", parse_s=40e-6, gil_handoff_s=25e-6)
    monkeypatch.setattr(calibration, "_default_measure", lambda: FakeMeasure(truth))
    monkeypatch.setattr(calibration, "_default_simulate", lambda: fake_simulate)
    # real probes have tests of their own (tests/calibration/test_probes.py, the tiny end-to-end one)
    monkeypatch.setattr(calibration, "run_probes", lambda base, **kw: (base, []))
    out = tmp_path / "box.json"
    result = CliRunner().invoke(main, ["calibrate", "--quick", "--out", str(out), "--model", "3", "--model", "m6"])
    assert result.exit_code == 0, result.output
    assert "held-out table" in result.output and "m6_prefork" in result.output
    assert "extrapolation throughput" in result.output
    p = CostProfile.load(out)
    assert p.calibrated and {v["model"] for v in p.validation} == {"m3_reactor", "m6_prefork"}
    assert out.with_suffix(".csv").exists() and out.with_suffix(".runs.csv").exists()
    # the off-grid set: --quick draws 15 points over the chosen models, printed as their own table
    assert "off-grid validation" in result.output and "mode = closed" in result.output
    assert p.notes["offgrid"]["points"] == 15 and p.notes["offgrid"]["seed"] is not None
    assert set(pd.read_csv(out.with_suffix(".csv"))["set"]) == {"grid", "offgrid"}
    # then each mechanism alone (here with the stand-ins), printed and written beside the profile
    assert "mechanisms, each alone" in result.output
    assert len(pd.read_csv(out.with_suffix(".mechanisms.csv"))) == len(p.notes["mechanisms"]) > 5


def test_calibrate_rejects_unknown_model():
    result = CliRunner().invoke(main, ["calibrate", "--quick", "--model", "m9"])
    assert result.exit_code != 0 and "model" in result.output
