"""The one profile rule (explicit > $SERVERLAB_PROFILE > this host's calibrated profile > built-in, warned)
and the provenance every simulated Result carries; the README example and the CLI name the profile."""

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from serverlab.cli import main
from simkit.analytic import analytic
from simkit.profile import (
    PROFILE_DIR_ENV,
    PROFILE_ENV,
    CostProfile,
    UncalibratedProfileWarning,
    default_profile_path,
    host_fingerprint,
    host_name,
    resolve_profile,
)
from simkit.result import Result, from_frame, to_frame
from simkit.scenario import Scenario, Workload
from simkit.sim import simulate

ROOT = Path(__file__).resolve().parent.parent


def _profile(parse_s: float, date: str | None = "2026-11-30T12:00:00Z") -> CostProfile:
    """A calibrated-looking profile for this host; parse_s makes its id distinct."""
    notes = {"calibrated_at": date} if date else {}
    return dataclasses.replace(CostProfile.default().with_params("fit", parse_s=parse_s), calibrated=True,
                               fingerprint=host_fingerprint(), notes=notes)


def test_rule_order_explicit_env_host_builtin(tmp_path, monkeypatch):
    explicit, env, host = _profile(11e-6), _profile(12e-6), _profile(13e-6)
    explicit.save(tmp_path / "explicit.json")
    env.save(tmp_path / "env.json")
    host.save(default_profile_path())
    monkeypatch.setenv(PROFILE_ENV, str(tmp_path / "env.json"))
    got = resolve_profile(tmp_path / "explicit.json")
    assert (got["parse_s"], got.origin) == (11e-6, "explicit")
    assert resolve_profile(explicit) is explicit  # a CostProfile is used as given
    got = resolve_profile()
    assert (got["parse_s"], got.origin) == (12e-6, "env")
    monkeypatch.delenv(PROFILE_ENV)
    got = resolve_profile()
    assert (got["parse_s"], got.origin, got.path) == (13e-6, "host", str(default_profile_path()))
    default_profile_path().unlink()
    with pytest.warns(UncalibratedProfileWarning, match=r"serverlab calibrate.*--quick"):
        got = resolve_profile()
    assert got == CostProfile.default() and got.origin == "built-in"
    assert got.label.startswith("built-in uncalibrated #")


def test_the_working_directory_is_never_searched(tmp_path, monkeypatch):
    (tmp_path / "profiles").mkdir()
    _profile(14e-6).save(tmp_path / "profiles" / f"{host_name()}.json")
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UncalibratedProfileWarning):
        assert resolve_profile().origin == "built-in"


def test_a_named_profile_that_does_not_load_is_an_error_naming_it(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"^profile: .*nope\.json: profile file not found"):
        resolve_profile(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    monkeypatch.setenv(PROFILE_ENV, str(tmp_path / "bad.json"))
    with pytest.raises(ValueError, match=rf"^{PROFILE_ENV}: .*bad\.json: corrupt"):
        resolve_profile()
    monkeypatch.delenv(PROFILE_ENV)
    default_profile_path().parent.mkdir(parents=True)
    default_profile_path().write_text("{}")  # a damaged host profile is not skipped silently either
    with pytest.raises(ValueError, match=r"^profile: .*invalid profile"):
        resolve_profile()


def test_default_location_is_per_user(tmp_path, monkeypatch):
    monkeypatch.setenv(PROFILE_DIR_ENV, str(tmp_path / "d"))
    assert default_profile_path() == tmp_path / "d" / f"{host_name()}.json"
    monkeypatch.delenv(PROFILE_DIR_ENV)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_profile_path() == tmp_path / "xdg" / "serverlab" / "profiles" / f"{host_name()}.json"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_profile_path() == tmp_path / "home/.local/share/serverlab/profiles" / f"{host_name()}.json"


def test_provenance_label_date_and_id(tmp_path):
    a = _profile(11e-6).save(tmp_path / "box-4c.json")
    loaded = CostProfile.load(a)
    assert loaded == _profile(11e-6)  # provenance does not change what the costs are
    assert loaded.label == f"box-4c 2026-11-30 #{loaded.short_id}"
    assert loaded.describe() == f"{loaded.label} (file: {a})"
    assert re.fullmatch(r"[0-9a-f]{8}", loaded.short_id)
    assert loaded.short_id != _profile(12e-6).short_id
    os.utime(_profile(11e-6, date=None).save(tmp_path / "old.json"), (86400 * 365, 86400 * 365))
    assert CostProfile.load(tmp_path / "old.json").date == "1971-01-01"  # no calibration date: the file's
    assert _profile(11e-6, date=None).date == "undated"


def test_every_simulated_result_names_its_profile():
    prof = _profile(11e-6)
    s = Scenario(workload=Workload(connections=2, cpu_us=100, duration_s=0.05, warmup_s=0.01))
    assert simulate(s, prof).profile == prof.label
    assert analytic(s, prof).profile == prof.label
    with pytest.warns(UncalibratedProfileWarning):
        assert simulate(s).profile.startswith("built-in uncalibrated #")
    back = from_frame(to_frame([simulate(s, prof), Result(scenario=s, source="real")]))
    assert [r.profile for r in back] == [prof.label, ""]


def _python_block(readme: str) -> str:
    match = re.search(r"^```python\n(.*?)^```", readme, re.S | re.M)
    assert match, "README.md has no ```python block"
    return match.group(1)


def _run_block_as_script(block: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, CostProfile]:
    """Run `block` as a script from an unrelated folder, with a tiny profile at the per-user location."""
    home, profiles, cwd = tmp_path / "home", tmp_path / "profiles", tmp_path / "elsewhere"
    for d in (home, profiles, cwd):
        d.mkdir()
    prof = _profile(15e-6)
    prof.save(profiles / f"{host_name()}.json")
    (cwd / "example.py").write_text(block)
    env = {k: v for k, v in os.environ.items() if k not in (PROFILE_ENV, "PYTHONPATH")}
    env.update(HOME=str(home), **{PROFILE_DIR_ENV: str(profiles)})
    out = subprocess.run([sys.executable, "example.py"], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=90)
    return out, prof


@pytest.mark.timeout(120)
def test_readme_python_example_runs_as_a_script_from_any_folder(tmp_path):
    block = _python_block((ROOT / "README.md").read_text())
    assert 'if __name__ == "__main__":' in block, "the example must guard measure(), which starts processes"
    assert "profiles/" not in block and "default_profile_path" not in block
    out, prof = _run_block_as_script(block, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert prof.short_id in out.stdout, out.stdout  # it says which profile it used


@pytest.mark.timeout(60)
def test_cli_simulate_and_whatif_name_the_profile(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["simulate", "--model", "m3", "--connections", "2", "--cpu-us", "100", "--duration", "0.2",
            "--warmup", "0.05"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "built-in uncalibrated #" in res.output and "WARNING: no calibrated profile" in res.output
    prof = CostProfile.load(_profile(16e-6).save(default_profile_path()))  # labelled by its file: vm-2c ...
    res = CliRunner().invoke(main, [*args, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1])["profile"] == prof.label
    res = CliRunner().invoke(main, [*args, "--profile", str(tmp_path / "missing.json")])
    assert res.exit_code == 2 and "missing.json: profile file not found" in res.output
    assert "Traceback" not in res.output
    workload = tmp_path / "w.toml"
    workload.write_text('[slo]\np99_ms = 50\n[budget]\nmemory_gib = 8\n[grid]\nmodels = ["m3"]\n'
                        'connections = [2]\ncores = [1]\n[workload]\ncpu_us = 100\n[sim]\nwindow = "fixed"\n'
                        'duration_s = 0.2\n')
    res = CliRunner().invoke(main, ["whatif", "--workload", str(workload), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    assert f"profile: {prof.label} (host: {default_profile_path()})" in res.output
    page = next((tmp_path / "rep").glob("whatif-*/index.html")).read_text()
    assert prof.short_id in page
