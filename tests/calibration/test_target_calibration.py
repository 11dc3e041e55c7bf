"""calibration.target: an external server's costs derived from its runs, its profile and notes, the honesty
warning when it does not behave like its model, and the what-if report that carries it. The runs are
fakes (a closed-form server under a known "true" profile) except one tiny real run of the
ThreadingHTTPServer recipe."""

from __future__ import annotations

import math
import sys
from dataclasses import replace

import pandas as pd
import pytest
from click.testing import CliRunner

from calibration.target import calibrate_target, format_target, size_window, target_grid
from experiments.report import target_notes
from realkit.target import Target
from simkit import registry
from simkit.profile import CostProfile
from simkit.result import Result
from simkit.scenario import ModelSpec, Scenario

THREADING = "{python} -m realkit.recipes threading --port {port}"
NGINX = "{python} -m realkit.recipes nginx --port {port} --workers {workers} --dir {tmpdir}"
BASE = CostProfile.default()


def fake_simulate(scenario: Scenario, profile: CostProfile | None = None, *, seed=None,
                  loadgen_on_server_cores: bool = False, source: str = "sim") -> Result:
    """A closed loop whose CPU per request is parse + recv + send + epoll, one executor per core unless
    the model has a single thread; threads and processes as the registry says the model runs them."""
    p = profile or BASE
    spec, n, cores = scenario.model, scenario.workload.connections, scenario.hardware.cores
    arch = registry.get(spec.name)
    per = p["parse_s"] + p["recv_base_s"] + p["send_base_s"] + p["epoll_wait_base_s"]
    par = 1 if arch.single_thread(spec) else min(cores, arch.executors(spec) or cores)
    x = min(n / (per + p["loopback_rtt_s"]), par / per)
    if cores == 1:  # the load generator on a CPU of its own, one request at its cost each
        x = min(x, 1.0 / p["client_cpu_per_request_s"])
    lat = n / x
    procs = arch.processes(spec)
    rss = p["rss_process_bytes"] + (procs - 1) * p["rss_worker_bytes"] + n * p["rss_conn_bytes"]
    return Result(scenario=scenario, source=source, throughput_rps=x, latency_mean_s=lat, latency_p50_s=lat,
                  latency_p90_s=1.2 * lat, latency_p99_s=1.5 * lat, latency_p999_s=2 * lat,
                  completed=max(1, int(x * scenario.workload.duration_s)), cpu_util=x * per,
                  loadgen_cpu_util=x * p["client_cpu_per_request_s"],
                  threads_peak=arch.threads_peak(spec, n), processes_peak=procs, rss_peak_bytes=int(rss),
                  fds_peak=n + 5)


def fake_measure(truth: CostProfile, behaves_as: str | None = None, extra_threads: int = 0):
    """'Real' runs: fake_simulate under `truth`, as `behaves_as` (a model other than the one named), with
    `extra_threads` helper threads."""
    def measure(scenario: Scenario) -> Result:
        run_as = scenario
        if behaves_as is not None:
            run_as = replace(scenario, model=ModelSpec.for_model(behaves_as, gil=scenario.model.gil))
        r = fake_simulate(run_as, truth, source="real")
        return replace(r, scenario=scenario, threads_peak=r.threads_peak + extra_threads)
    return measure


def _calibrate(tmp_path, target, truth, **kw):
    return calibrate_target(target, quick=True, out=tmp_path / "host-target.json", simulate=fake_simulate,
                            base=BASE, measure=kw.pop("measure", fake_measure(truth)), **kw)


def test_the_grid_scales_only_the_knobs_the_command_exposes_and_asks_for_no_work():
    nginx = Target(NGINX, as_model="m6", gil=False)
    grid = target_grid(nginx, quick=True, cores_extra=2)
    assert [(p.role, p.scenario.hardware.cores, p.scenario.model.processes) for p in grid] == [
        ("train", 1, 1), ("train", 1, 1), ("train", 1, 1), ("cores", 2, 2), ("connections", 1, 1)]
    assert all(p.scenario.workload.cpu_us == p.scenario.workload.gil_us == p.scenario.workload.io_us == 0
               for p in grid)
    assert not any(p.scenario.model.gil for p in grid)
    fixed = Target("server --port {port}", as_model="m6", gil=False)  # no {workers}: its 3 stay 3
    assert {p.scenario.model.processes for p in target_grid(fixed, quick=True, knobs={"processes": 3},
                                                            cores_extra=2)} == {3}
    with pytest.raises(ValueError, match="knobs: pool"):
        target_grid(fixed, knobs={"pool": 2})


def test_a_window_grows_with_the_latency_a_nearby_run_measured():
    grid = target_grid(Target(THREADING, as_model="m2"), quick=True, cores_extra=0, extrap_connections=(5000,))
    sized = size_window(grid[-1].scenario, throughput_rps=2500.0, quick=True)  # latency 2 s at 5,000 connections
    assert sized.workload.duration_s == 3.0 and sized.workload.warmup_s == 3.0  # capped
    assert size_window(grid[1].scenario, 1e6, quick=True).workload == grid[1].scenario.workload  # the floors hold


def test_a_run_whose_clients_were_still_connecting_is_run_again_with_a_longer_warm_up(tmp_path):
    truth = BASE.with_params("fit", parse_s=100e-6)
    warmups: list[float] = []

    def measure(scenario: Scenario) -> Result:
        r = fake_measure(truth)(scenario)
        warmups.append(scenario.workload.warmup_s)
        short = scenario.workload.connections >= 5000 and scenario.workload.warmup_s < 2.0
        return replace(r, failure="ramp" if short else "")

    cal = _calibrate(tmp_path, Target(THREADING, as_model="m2"), truth, measure=measure)
    runs = pd.read_csv(cal.path.with_suffix(".runs.csv"))
    wide = runs[runs.connections >= 5000]
    assert len(wide) == 1 and str(wide.failure.iloc[0]) in ("", "nan") and wide.warmup_s.iloc[0] >= 2.0
    assert len(warmups) == len(runs) + 1  # that point ran twice, the others once


def test_the_derived_parse_cost_and_memory_recover_the_true_ones(tmp_path):
    truth = BASE.with_params("fit", parse_s=180e-6, rss_conn_bytes=40_000.0, rss_process_bytes=30 * 2**20)
    target = Target(THREADING, as_model="m2", gil=True)
    cal = _calibrate(tmp_path, target, truth)
    assert cal.profile["parse_s"] == pytest.approx(180e-6, rel=0.02)
    assert BASE["parse_s"] == pytest.approx(20e-6)  # the start was far from it
    assert cal.profile["rss_conn_bytes"] == pytest.approx(40_000, rel=0.02)
    assert cal.profile["rss_process_bytes"] == pytest.approx(30 * 2**20, rel=0.02)
    assert cal.ok and not cal.ranking and not cal.shape
    assert cal.summary["overall"]["throughput"] < 0.02
    saved = CostProfile.load(cal.path)
    t = saved.notes["target"]
    assert (t["command"], t["as_model"], t["gil"], t["verdict"], t["warning"]) == (
        THREADING, "m2_thread_per_conn", True, "ok", "")
    assert [g["role"] for g in t["grid"]].count("train") == 3 and t["derived"]["parse_s"] > 0
    assert saved.validation and {r["role"] for r in saved.validation} <= {"cores", "connections"}
    assert saved.calibrated and saved.path.endswith("host-target.json")
    assert cal.csv_path.exists() and cal.path.with_suffix(".runs.csv").exists()
    assert "verdict: behaves like m2_thread_per_conn" in format_target(cal)


def test_a_server_cheaper_than_the_probed_path_scales_the_syscall_costs_down(tmp_path):
    truth = BASE.with_params("fit", parse_s=0.0, **{n: 0.5 * BASE[n] for n in
                                                     ("recv_base_s", "send_base_s", "epoll_wait_base_s")})
    cal = _calibrate(tmp_path, Target(NGINX, as_model="m6", gil=False), truth)
    assert cal.profile["parse_s"] == 0.0
    assert cal.derived["syscall_scale"] == pytest.approx(0.5, rel=0.05)
    assert cal.profile["recv_base_s"] == pytest.approx(0.5 * BASE["recv_base_s"], rel=0.05)
    # the master and the worker weigh the same: the base is split between them
    assert cal.profile["rss_worker_bytes"] == pytest.approx(cal.profile["rss_process_bytes"])


def test_a_server_faster_than_the_generator_gets_its_syscall_scale_from_its_cpu_and_the_generators_cost(tmp_path):
    # the 1-core runs are bound by the load generator on its own CPU: throughput cannot tell the syscall
    # scales apart, the server's CPU per request can; the generator's own cost comes from the same runs
    truth = BASE.with_params("fit", parse_s=0.0, client_cpu_per_request_s=40e-6,
                             **{n: 0.35 * BASE[n] for n in ("recv_base_s", "send_base_s", "epoll_wait_base_s")})
    cal = _calibrate(tmp_path, Target(NGINX, as_model="m6", gil=False), truth)
    assert cal.derived["syscall_scale"] == pytest.approx(0.35, rel=0.05)
    assert cal.profile["client_cpu_per_request_s"] == pytest.approx(40e-6, rel=0.03)
    assert cal.derived["loadgen"]["host_client_cpu_per_request_s"] == BASE["client_cpu_per_request_s"]


def test_a_server_that_is_not_its_model_gets_the_warning_and_a_better_model(tmp_path):
    truth = BASE.with_params("fit", parse_s=150e-6)
    target = Target(THREADING, as_model="m3", gil=True)  # named a reactor, but a thread per connection
    cal = _calibrate(tmp_path, target, truth, measure=fake_measure(truth, behaves_as="m2_thread_per_conn"))
    assert not cal.ok
    assert "does not behave like m3_reactor" in cal.warning and "threads: the server ran" in cal.warning
    assert cal.ranking[0]["model"] == "m2_thread_per_conn"
    assert "models that reproduce its runs better: m2_thread_per_conn" in cal.warning
    notes = CostProfile.load(cal.path).notes["target"]
    assert notes["warning"] == cal.warning and notes["ranking"][0]["model"] == "m2_thread_per_conn"


def test_helper_threads_alone_are_named_as_a_shape_mismatch(tmp_path):
    truth = BASE.with_params("fit", parse_s=150e-6)
    cal = _calibrate(tmp_path, Target(THREADING, as_model="m3"), truth, measure=fake_measure(truth, extra_threads=4))
    assert cal.shape == [cal.shape[0]] and "ran 5 where the simulated m3_reactor ran 1" in cal.shape[0]
    assert cal.summary["overall"]["throughput"] < 0.02  # its speed is right: only its shape is not
    assert cal.warning and cal.ranking


def test_the_what_if_report_carries_the_target_warning_and_the_gil_it_was_fitted_with():
    notes = {"target": {"command": "srv", "as_model": "m3_reactor", "gil": False, "verdict": "x",
                        "warning": "the server (srv) does not behave like m3_reactor: threads"}}
    profile = replace(BASE, notes=notes)
    warns, about = target_notes(profile, pd.DataFrame({"gil": [True, True]}))
    assert warns[0] == f"WARNING: {notes['target']['warning']}"
    assert "without a GIL" in warns[1] and "gil = false" in warns[1]
    assert "srv as m3_reactor (no GIL)" in about[0]
    assert target_notes(BASE) == ([], [])
    notes["target"]["warning"] = ""
    assert target_notes(replace(BASE, notes=notes), pd.DataFrame({"gil": [False]}))[0] == []


@pytest.mark.parametrize("args, message", [
    (["--as", "m2"], "as: only with --target"),
    (["--target", THREADING], "as: --target needs --as MODEL"),
    (["--target", THREADING, "--as", "m2", "--processes", "2"], "knobs: processes is not a knob"),
    (["--target", "srv", "--as", "m2"], "command: no {port}"),
    (["--target", THREADING, "--as", "m2", "--fit", "nope_s"], "fit: nope_s is not a profile parameter"),
])
def test_cli_calibrate_target_refuses_bad_options_before_any_run(args, message):
    from serverlab.cli import main

    result = CliRunner().invoke(main, ["calibrate", *args])
    assert result.exit_code != 0 and message in result.output


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="realkit runs on Linux")
def test_a_tiny_real_calibration_of_the_threading_recipe(tmp_path):
    """Three real runs of http.server (tiny windows): its CPU per request is far above the probed path's."""
    target = Target(THREADING, as_model="m2", gil=True, startup_timeout_s=10.0, stop_grace_s=3.0)
    grid = target_grid(target, quick=True, train_connections=(4, 16), extrap_connections=(32,), cores_extra=0,
                       duration_s=0.25, warmup_s=0.1)
    cal = calibrate_target(target, quick=True, out=tmp_path / "real.json", grid=grid, simulate=fake_simulate,
                           base=BASE, rank=False)
    assert all(r.ok for r in cal.runs), [r.error for r in cal.runs]
    assert cal.derived["real_cpu_per_request_s"] > 0 and math.isfinite(cal.profile["parse_s"])
    assert [r.result.processes_peak for r in cal.runs] == [1, 1, 1]
    assert cal.runs[1].result.threads_peak >= 16  # a thread per connection, as m2 has
    assert CostProfile.load(cal.path).notes["target"]["as_model"] == "m2_thread_per_conn"
