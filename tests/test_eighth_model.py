"""An architecture added through the registry alone: a throw-away copy of m3 under a new name (its two
model files and one registry entry, a plug-in module named in SERVERLAB_ARCHITECTURES) runs through
simulate, analytic, a sweep, a calibration grid with its real server, and a what-if report."""

from __future__ import annotations

import importlib
import os
import sys
import textwrap

import pandas as pd
import pytest

from calibration import calibrate
from calibration.grid import build_grid
from experiments.report import ReportInputs, write_report
from experiments.sweep import sweep
from simkit import registry, simulate
from simkit.analytic import analytic
from simkit.profile import CostProfile
from simkit.scenario import Hardware, ModelSpec, Scenario, Workload

NAME = "m98_throwaway"
FILES = {
    # the simulated half: the reactor's model under the new name
    "throwaway_sim.py": f"""
        from simkit.models.m3_reactor import Model as Reactor

        class Model(Reactor):
            name = "{NAME}"
    """,
    # the real half: the reactor's serve()
    "throwaway_real.py": """
        from realkit.servers.m3_reactor import serve
    """,
    # the one registry entry
    "throwaway_entry.py": f"""
        import dataclasses
        from simkit import registry

        registry.register(dataclasses.replace(
            registry.get("m3_reactor"), name="{NAME}", colour="#17becf",
            summary="a copy of the single-thread reactor under another name",
            sim_module="throwaway_sim", real_module="throwaway_real"))
    """,
}


@pytest.fixture(scope="module")
def throwaway(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plugin")
    for name, text in FILES.items():
        (folder / name).write_text(textwrap.dedent(text))
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", registry.PLUGINS_ENV)}
    # Subprocesses (the real server, spawned simulation pools) load the entry from the environment.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder), saved["PYTHONPATH"]]))
    os.environ[registry.PLUGINS_ENV] = "throwaway_entry"
    sys.path.insert(0, str(folder))
    importlib.import_module("throwaway_entry")
    try:
        yield registry.get(NAME)
    finally:
        registry.unregister(NAME)
        sys.path.remove(str(folder))
        for module in ("throwaway_entry", "throwaway_sim", "throwaway_real"):
            sys.modules.pop(module, None)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _scenario(name: str, **work) -> Scenario:
    return Scenario(model=ModelSpec(name=name), hardware=Hardware(cores=1),
                    workload=Workload(connections=20, cpu_us=100, gil_us=20, duration_s=0.3, warmup_s=0.1, **work))


def test_simulate_and_analytic_treat_the_copy_as_the_original(throwaway):
    assert registry.resolve(throwaway.number) == NAME
    copy, original = simulate(_scenario(NAME)), simulate(_scenario("m3_reactor"))
    assert copy.scenario.model.name == NAME and copy.completed > 0
    assert copy.throughput_rps == original.throughput_rps and copy.latency_p99_s == original.latency_p99_s
    a, b = analytic(_scenario(NAME)), analytic(_scenario("m3_reactor"))
    assert a.scenario.model.name == NAME and a.throughput_rps == pytest.approx(b.throughput_rps)


@pytest.mark.timeout(120)
def test_sweep_and_report(throwaway, tmp_path):
    frame = sweep(_scenario(NAME), models=[NAME, "m3_reactor"], cores=[1, 2], connections=[10, 100],
                  profile=CostProfile.default(), engine="local", workers=2, progress=False)
    assert list(frame["model"]) == [NAME] * 4 + ["m3_reactor"] * 4
    ours, theirs = (frame[frame["model"] == m].reset_index(drop=True) for m in (NAME, "m3_reactor"))
    pd.testing.assert_series_equal(ours["throughput_rps"], theirs["throughput_rps"])
    files = write_report(ReportInputs(frame=frame, slo_p99_s=0.05, memory_bytes=2**30,
                                      profile=CostProfile.default(), profile_label="built-in default",
                                      host="test", date="2026-12-01"), tmp_path / "report")
    assert NAME in files.markdown.read_text() and NAME in files.html.read_text()
    assert NAME in set(pd.read_csv(files.csv)["model"])


@pytest.mark.timeout(240)
def test_calibration_grid_with_the_real_server(throwaway, tmp_path):
    grid = build_grid(quick=True, models=[NAME], duration_s=0.3, warmup_s=0.2, train_connections=(4, 16, 48),
                      extrap_connections=(200,), interp_connections=30)
    assert {p.role for p in grid} == {"train", "cores", "interp", "connections"}
    assert all(p.scenario.model.name == NAME for p in grid)
    out = tmp_path / "throwaway.json"
    report = calibrate(out, quick=True, grid=grid, probes=False, base=CostProfile.default(),
                       max_evaluations=4, workers=2, target_requests=300)
    assert all(r.ok for r in report.runs), [r.error for r in report.runs if not r.ok]
    assert {r.result.scenario.model.name for r in report.runs} == {NAME}
    assert {v["model"] for v in CostProfile.load(out).validation} == {NAME}
    assert NAME in report.summary["per_model"]
