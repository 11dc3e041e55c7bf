"""The probes' second pass: calibrate() probes the per-operation times again after its real runs and
keeps the lower figure of the two passes (a busy spell only inflates them); the costs derived from
the probes' server runs come from the registry, in architecture order."""

import contextlib

import pytest
from calfakes import FakeMeasure, fake_simulate

import calibration
from calibration import probes
from calibration.grid import build_grid
from calibration.probes import ProbeResult, lower_of, run_probes
from simkit import registry
from simkit.profile import CostProfile
from simkit.registry import CalibrationSpec

pytestmark = pytest.mark.timeout(60)


def test_each_figure_keeps_the_lower_pass_with_its_details_and_both_values():
    first = [ProbeResult("thread_spawn_s", 800e-6, 0.3, 9, {"batch": 1}), ProbeResult("accept_s", 20e-6, 0.1, 9),
             ProbeResult("gil_switch_interval_s", 0.005, 0.0, 1)]
    again = [ProbeResult("thread_spawn_s", 200e-6, 0.1, 7, {"batch": 2}), ProbeResult("accept_s", 25e-6, 0.1, 7),
             ProbeResult("fork_s", 1e-3, 0.1, 3)]
    got = {r.name: r for r in lower_of(first, again)}
    assert got["thread_spawn_s"].value == 200e-6 and got["thread_spawn_s"].detail["batch"] == 2
    assert got["thread_spawn_s"].detail["passes"] == [800e-6, 200e-6]
    assert got["accept_s"].value == 20e-6 and got["accept_s"].repeats == 9
    assert got["gil_switch_interval_s"].value == 0.005 and "passes" not in got["gil_switch_interval_s"].detail
    assert got["fork_s"].value == 1e-3


def test_a_probes_figures_come_from_one_pass_the_one_whose_first_figure_is_lower():
    def line(base, slope):
        return [ProbeResult("epoll_wait_base_s", base, 0.1, 5, {"probe": "epoll"}),
                ProbeResult("epoll_per_event_s", slope, 0.1, 5, {"probe": "epoll"})]

    got = {r.name: r for r in lower_of(line(1.2e-6, 0.2e-6), line(0.6e-6, 0.4e-6))}
    assert got["epoll_wait_base_s"].value == 0.6e-6 and got["epoll_per_event_s"].value == 0.4e-6
    assert got["epoll_per_event_s"].detail["passes"] == [0.2e-6, 0.4e-6]
    got = {r.name: r for r in lower_of(line(0.6e-6, 0.4e-6), line(1.2e-6, 0.2e-6))}
    assert got["epoll_wait_base_s"].value == 0.6e-6 and got["epoll_per_event_s"].value == 0.4e-6


def test_a_second_pass_runs_only_the_named_probes_and_keeps_the_first_pass_elsewhere(monkeypatch):
    calls: list[str] = []
    spawn = iter([800e-6, 200e-6])

    def fake(name, value):
        def run(scale):
            calls.append(name)
            return ProbeResult(name, value() if callable(value) else value, 0.1, 5)
        return run

    monkeypatch.setattr(probes, "PROBES", (("thread spawn", fake("thread_spawn_s", lambda: next(spawn))),
                                           ("memory", fake("thread_stack_bytes", 8e6))))
    first_profile, first = run_probes(CostProfile.default())
    second, _ = run_probes(first_profile, only=("thread spawn",), earlier=first)
    assert calls == ["thread_spawn_s", "thread_stack_bytes", "thread_spawn_s"]
    assert first_profile["thread_spawn_s"] == pytest.approx(800e-6)
    assert second["thread_spawn_s"] == pytest.approx(200e-6)
    assert second.notes["probes"]["thread_spawn_s"]["passes"] == [800e-6, 200e-6]
    assert "thread_stack_bytes" in second.notes["probes"]
    # each figure records the box's speed for Python just before its probe ran (the kept pass's)
    speeds = [second.notes["probes"][n]["interp_speed"] for n in ("thread_spawn_s", "thread_stack_bytes")]
    assert all(0.2 < s < 5 for s in speeds), speeds
    with pytest.raises(ValueError, match="only"):
        run_probes(first_profile, only=("no such probe",))


def test_every_repeated_label_is_a_probe():
    labels = {label for label, _fn in probes.PROBES}
    assert set(probes.REPEATED) <= labels and "memory" not in probes.REPEATED


def test_calibrate_probes_again_after_its_real_runs_and_only_then(monkeypatch, tmp_path):
    seen: list[tuple[str, tuple | None, int]] = []
    order: list[str] = []
    measure = FakeMeasure(CostProfile.default(), noise=0.0)

    def counting_measure(scenario):
        order.append("run")
        return measure(scenario)

    def fake_run_probes(base, *, quick=False, progress=None, only=None, earlier=()):
        order.append("probes")
        seen.append(("probes", None if only is None else tuple(only), len(earlier)))
        value = 800e-6 if only is None else 200e-6
        r = [ProbeResult("thread_spawn_s", value, 0.1, 5)]
        return base.with_params("probe", thread_spawn_s=min([value, *(e.value for e in earlier)])), r

    monkeypatch.setattr(calibration, "run_probes", fake_run_probes)
    monkeypatch.setattr(calibration, "_default_measure", lambda: counting_measure)
    monkeypatch.setattr(calibration, "pinned_work_rate", contextlib.nullcontext)
    grid = build_grid(quick=True, models=("m3_reactor",))
    report = calibration.calibrate(tmp_path / "a.json", quick=True, simulate=fake_simulate, grid=grid, write=False)
    assert seen == [("probes", None, 0), ("probes", tuple(probes.REPEATED), 1)]
    assert order[0] == "probes" and order[-1] == "probes" and order.count("run") >= len(grid)
    assert report.fit.profile["thread_spawn_s"] == pytest.approx(200e-6)

    seen.clear()  # measured by a given function (a fake, a target): no second pass
    calibration.calibrate(tmp_path / "b.json", quick=True, measure=measure, simulate=fake_simulate, grid=grid,
                          write=False)
    assert seen == [("probes", None, 0)]


def test_costs_from_the_probes_server_runs_come_from_the_registry_in_order(monkeypatch):
    order: list[str] = []
    monkeypatch.setattr("calibration.fit.parse_from_server", lambda p: order.append("parse") or p)
    monkeypatch.setattr("calibration.fit.uring_from_server", lambda p: order.append("uring") or p)
    monkeypatch.setattr(calibration, "loadgen_from_probe", lambda p: order.append("loadgen") or p)
    calibration.from_servers(CostProfile.default())
    assert order == ["parse", "uring", "loadgen"]
    assert registry.get("m3").calibration.from_server == "calibration.fit:parse_from_server"
    with pytest.raises(ValueError, match="from_server"):
        CalibrationSpec(from_server="calibration.fit.parse_from_server")


def test_the_generators_cache_miss_is_what_its_wide_run_costs_beyond_the_simulated_one():
    import dataclasses
    import math
    from types import SimpleNamespace

    from calibration.fit import loadgen_from_probe
    from simkit.costs import cache_share

    def sim(scenario, profile, loadgen_cores=1):  # a generator whose wake-ups batch conns / 10 requests
        w = scenario.workload
        per = (profile["client_cpu_per_request_s"] + profile["client_cpu_per_wake_s"] / max(1, w.connections / 10)
               + (profile["client_cpu_per_conn_s"] if w.requests_per_conn == 1 else 0.0)
               + profile["client_cache_miss_s"] * cache_share(profile, w.connections))
        return SimpleNamespace(throughput_rps=1000.0, loadgen_cpu_util=1000.0 * per)

    base = CostProfile.default().with_params("probe", cache_knee_conns=800.0, send_base_s=1e-6, recv_base_s=1e-6)
    share = cache_share(base, 3000)
    runs = [["one", 1, None], ["many", 50, None], ["conn", 100, 1], ["wide", 3000, None]]
    per = [40e-6, 8e-6 + 32e-6 / 5, 8e-6 + 32e-6 / 10 + 50e-6, 8e-6 + 32e-6 / 300 + 12e-6 * share]
    with_probe = dataclasses.replace(base, notes={"probes": {"client_cpu_per_request_s": {
        "runs": runs, "cpu_per_request_s": per}}})
    got = loadgen_from_probe(with_probe, simulate=sim)
    assert got["client_cache_miss_s"] == pytest.approx(12e-6, rel=0.05)
    assert got["client_cpu_per_conn_s"] == pytest.approx(50e-6, rel=0.05)
    # an older profile's probe (no wide run) gets no cache-miss cost; the rest as before
    older = dataclasses.replace(base, notes={"probes": {"client_cpu_per_request_s": {
        "runs": runs[:3], "cpu_per_request_s": per[:3]}}})
    old = loadgen_from_probe(older, simulate=sim)
    assert old["client_cache_miss_s"] == 0.0 and math.isclose(old["client_cpu_per_conn_s"], got["client_cpu_per_conn_s"])
