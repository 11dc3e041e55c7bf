"""whatif.toml parsing/validation, the pipeline, and the CLI (with the fake simulator injected)."""

import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakesim import fake_analytic, fake_simulate, raising_simulate

import experiments.sweep as sweep_mod
from experiments.sweep import SweepIncomplete
from experiments.whatif import DEFAULT_WORKLOAD, load_whatif, parse_whatif, run_whatif
from serverlab.cli import main
from simkit import registry

SMALL = """
[slo]
p99_ms = 50
[budget]
memory_gib = 8
[grid]
models = ["m3", "m6"]
connections = [10, 1000]
cores = [1, 4]
[workload]
cpu_us = 100
[sim]
window = "fixed"
duration_s = 0.2
"""


def _doc(**patch):
    data = tomllib.loads(SMALL)
    for dotted, value in patch.items():
        section, key = dotted.split("__")
        data.setdefault(section, {})[key] = value
    return data


def test_default_workload_is_at_least_7x8x6():
    spec = load_whatif(DEFAULT_WORKLOAD)
    assert set(spec.models) == set(registry.names())
    assert len(spec.connections) >= 8 and len(spec.cores) >= 6
    assert max(spec.cores) == 128 and min(spec.cores) == 1
    assert len(spec.scenarios()) >= 336
    assert spec.slo_p99_s == pytest.approx(0.05)


@pytest.mark.parametrize(("patch", "needle"), [
    ({"workload__colour": "red"}, r"workload\.colour: unknown key; allowed: mode, rate_rps"),
    ({"slo__p99_ms": -1}, r"slo\.p99_ms: -1 is out of range; allowed 0\.001\.\.1e\+07"),
    ({"grid__cores": [0, 2]}, r"grid\.cores: 0 is out of range; allowed 1\.\.4096"),
    ({"grid__models": ["m3", "m9"]}, r"grid\.models: unknown model 'm9'; allowed: m1_iterative"),
    ({"workload__mode": "burst"}, r"workload\.mode: 'burst' is not allowed; allowed: closed, open"),
    ({"sizing__gil": "yes"}, r"sizing\.gil: expected true or false"),
    ({"workload__cpu_us": "lots"}, r"workload\.cpu_us: expected a number in 0\.\.1e\+07"),
    ({"sim__duration_s": 0}, r"sim\.duration_s: 0 is out of range"),
    ({"sim__target_requests": 100}, r"sim\.target_requests: only with window = \"adaptive\""),
    ({"sim__window": "elastic"}, r"sim\.window: 'elastic' is not allowed; allowed: adaptive, fixed"),
    ({"workload__mode": "open"}, r"workload\.rate_rps: open-loop mode needs rate_rps"),
])
def test_bad_values_name_the_key_and_what_is_allowed(patch, needle):
    with pytest.raises(ValueError, match=needle):
        parse_whatif(_doc(**patch))


def test_unknown_section_and_missing_required_key(tmp_path):
    data = _doc()
    data["extras"] = {"x": 1}
    with pytest.raises(ValueError, match="extras: unknown section; allowed: slo, budget, grid"):
        parse_whatif(data)
    data = _doc()
    del data["grid"]["cores"]
    with pytest.raises(ValueError, match=r"grid\.cores: required"):
        parse_whatif(data)
    bad = tmp_path / "bad.toml"
    bad.write_text("[slo\np99_ms = 1")
    with pytest.raises(ValueError, match="bad.toml: not valid TOML"):
        load_whatif(bad)


@pytest.mark.timeout(90)
def test_pipeline_writes_a_report_and_refuses_a_partial_one(tmp_path):
    spec = parse_whatif(_doc())
    files = run_whatif(spec, None, engine="serial", out_root=tmp_path, simulate=fake_simulate,
                       analytic=fake_analytic, progress=False)
    assert files.directory.parent == tmp_path and files.directory.name.startswith("whatif-")
    assert files.html.exists() and files.recommendation.model in registry.names()
    spec = parse_whatif(_doc(grid__connections=[10, 13]))
    with pytest.raises(SweepIncomplete):
        run_whatif(spec, None, engine="serial", out_dir=tmp_path / "partial", simulate=raising_simulate,
                   progress=False)
    assert not (tmp_path / "partial").exists()


@pytest.mark.timeout(90)
def test_cli_whatif(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep_mod, "_default_simulate", lambda: fake_simulate)
    workload = tmp_path / "w.toml"
    workload.write_text(SMALL)
    runner = CliRunner()
    res = runner.invoke(main, ["whatif", "--workload", str(workload), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    assert "recommended: m" in res.output
    assert list(Path(tmp_path / "rep").glob("whatif-*/index.html"))
    workload.write_text(SMALL.replace("cpu_us = 100", "cpu_us = 100\ncolor = 1"))
    res = runner.invoke(main, ["whatif", "--workload", str(workload)])
    assert res.exit_code == 2 and "workload.color: unknown key" in res.output
    res = runner.invoke(main, ["whatif", "--dask", "localhost:1"])
    assert res.exit_code == 2 and "tcp://HOST:PORT" in res.output


@pytest.mark.timeout(110)
def test_demo_calibrates_when_no_profile_then_reports(tmp_path, monkeypatch):
    import calibration
    from simkit.profile import CostProfile, default_profile_path

    calls = []

    def fake_calibrate(out=None, quick=False, progress=None, **kw):
        calls.append((out, quick))
        progress("probes", "fake probes", 1, 1)
        profile = CostProfile.default()
        import dataclasses

        dataclasses.replace(profile, calibrated=True).save(out)
        return out

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(calibration, "calibrate", fake_calibrate, raising=False)
    monkeypatch.setattr(sweep_mod, "_default_simulate", lambda: fake_simulate)
    monkeypatch.setattr(sweep_mod, "_default_analytic", lambda: fake_analytic)
    res = CliRunner().invoke(main, ["demo"])
    assert res.exit_code == 0, res.output
    assert calls == [(default_profile_path(), True)]
    assert "Open " in res.output and "index.html" in res.output
    page = next(Path("reports").glob("whatif-*/index.html")).read_text()
    assert "UNCALIBRATED" not in page  # the demo used the profile it just made
    res = CliRunner().invoke(main, ["demo"])  # second run: the profile exists, no calibration
    assert res.exit_code == 0 and len(calls) == 1


@pytest.mark.timeout(90)
def test_cli_whatif_on_a_dask_scheduler(tmp_path, monkeypatch):
    distributed = pytest.importorskip("distributed")
    monkeypatch.setattr(sweep_mod, "_default_simulate", lambda: fake_simulate)
    workload = tmp_path / "w.toml"
    workload.write_text(SMALL)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, host="127.0.0.1",
                                  protocol="tcp://", dashboard_address="127.0.0.1:0") as cluster:
        res = CliRunner().invoke(main, ["whatif", "--workload", str(workload), "--out", str(tmp_path),
                                        "--dask", cluster.scheduler_address])
    assert res.exit_code == 0, res.output
    csv = next(tmp_path.glob("whatif-*/results.csv")).read_text()
    assert csv.count("\n") == 1 + 2 * 2 * 2  # header + models x connections x cores
