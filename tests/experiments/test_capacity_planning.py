"""capacity(), winner_map(), recommend() on synthetic frames: one model per failure reason."""

import math

import pandas as pd
import pytest

from experiments.planning import (
    REASONS,
    Sizing,
    build_grid,
    calibrated_range,
    capacity,
    classify,
    extrapolation,
    recommend,
    winner_map,
)
from simkit import registry
from simkit.result import Result, columns, to_frame
from simkit.scenario import Hardware, ModelSpec, Scenario, Workload

SLO = 0.050
BUDGET = 4 * 2**30


def _row(model, cores, conns, *, gil_us=0.0, **metrics):
    spec = ModelSpec(name=model, pool=8 if model == "m4_reactor_workers" else 0)
    sc = Scenario(model=spec, hardware=Hardware(cores=cores, memory_bytes=64 * 2**30),
                  workload=Workload(connections=conns, cpu_us=100, gil_us=gil_us))
    base = dict(throughput_rps=1000.0, latency_p99_s=0.010, cpu_util=0.5, rss_peak_bytes=100 * 2**20, threads_peak=4)
    base.update(metrics)
    base.setdefault("completed", int(base["throughput_rps"] * sc.workload.duration_s))  # X = completed / duration
    # A consistent closed loop (think 0): every client waits, so mean latency = N / X (Little).
    base.setdefault("latency_mean_s", conns / base["throughput_rps"] if base["throughput_rps"] else math.nan)
    return Result(scenario=sc, source="sim", **base)


# model -> (metrics of its breaking row at 1,000 connections on 8 cores, expected reason)
BREAKS = {
    "m1_iterative": (dict(latency_p99_s=0.4, cpu_util=1.0), "single_thread"),
    "m2_thread_per_conn": (dict(failure="threads_max", threads_peak=30_000), "threads_max"),
    "m3_reactor": (dict(errors_refused=500, latency_p99_s=0.02), "backlog"),
    "m4_reactor_workers": (dict(latency_p99_s=0.3, cpu_util=1.05, gil_us=50.0), "gil"),
    "m5_multi_reactor": (dict(latency_p99_s=0.2, cpu_util=7.9), "cpu"),
    "m6_prefork": (dict(rss_peak_bytes=5 * 2**30), "memory"),
    "m7_reactor_spawn": (dict(failure="fd_limit"), "fd_limit"),
    "m8_proactor": (dict(rss_peak_bytes=5 * 2**30), "memory"),
}


def _frame():
    rows = []
    for model, (metrics, _reason) in BREAKS.items():
        metrics = dict(metrics)
        gil_us = metrics.pop("gil_us", 0.0)
        for cores in (1, 8):
            rows.append(_row(model, cores, 100, gil_us=gil_us))
        # 1,000 connections break on both core counts; the reason is read on the larger machine.
        rows.append(_row(model, 1, 1000, gil_us=gil_us, latency_p99_s=1.0, cpu_util=1.0))
        rows.append(_row(model, 8, 1000, gil_us=gil_us, **metrics))
    return to_frame(rows)


def test_capacity_names_each_failure_reason():
    cap = capacity(_frame(), SLO, BUDGET)
    assert list(cap["model"]) == list(registry.names())
    for rec in cap.itertuples():
        assert rec.meets_slo, rec.model
        assert rec.max_connections == 100
        assert rec.cores == 1  # fewest cores that reach the capacity
        assert rec.breaks_at_connections == 1000
        assert rec.reason == BREAKS[rec.model][1], (rec.model, rec.reason, rec.why)
        assert rec.reason in REASONS and rec.why


def test_latency_reason_for_blocking_work_and_tolerated_errors():
    ok = _row("m3_reactor", 4, 10, errors_timeout=1, completed=100_000)  # 0.001% errors: tolerated
    slow = _row("m3_reactor", 4, 100, latency_p99_s=2.0, cpu_util=0.1)  # blocking io: CPU idle, p99 high
    assert classify(ok.to_row(), SLO, BUDGET) == ""
    assert classify(slow.to_row(), SLO, BUDGET) == "latency"
    assert classify(_row("m3_reactor", 4, 10, errors_reset=50).to_row(), SLO, BUDGET) == "errors"
    assert classify(_row("m3_reactor", 4, 10, failure="server_died").to_row(), SLO, BUDGET) == "server_died"
    # m1 with keep-alive clients: one served fast, the rest wait unanswered; the p99 hides them.
    starved = _row("m1_iterative", 1, 1000, throughput_rps=1.0, latency_p99_s=0.0003, completed=5, in_flight=999)
    assert classify(starved.to_row(), SLO, BUDGET) == "stalled"
    busy = _row("m6_prefork", 8, 1000, throughput_rps=29_000.0, latency_p99_s=0.04, in_flight=1000)
    assert classify(busy.to_row(), SLO, BUDGET) == ""  # saturated closed loop: in flight ~ X x latency
    # Clients queued since before the window are not in the cohort: Little's law exposes them.
    hidden = _row("m1_iterative", 1, 1000, throughput_rps=1.0, latency_mean_s=0.0003, latency_p99_s=0.0003)
    assert classify(hidden.to_row(), SLO, BUDGET) == "stalled"
    nan = _row("m3_reactor", 4, 10, latency_p99_s=math.nan, completed=0, in_flight=10)
    assert classify(nan.to_row(), SLO, BUDGET) == "stalled"


def test_model_that_never_meets_and_one_that_never_breaks():
    frame = to_frame([_row("m2_thread_per_conn", 2, n, failure="memory") for n in (10, 100)]
                     + [_row("m5_multi_reactor", 2, n) for n in (10, 100)])
    cap = capacity(frame, SLO, BUDGET).set_index("model")
    assert not cap.loc["m2_thread_per_conn", "meets_slo"]
    assert cap.loc["m2_thread_per_conn", "max_connections"] == 0
    assert cap.loc["m2_thread_per_conn", "reason"] == "memory"
    assert cap.loc["m2_thread_per_conn", "breaks_at_connections"] == 10
    assert cap.loc["m5_multi_reactor", "reason"] == ""
    assert cap.loc["m5_multi_reactor", "max_connections"] == 100


def test_capacity_rejects_bad_arguments():
    with pytest.raises(ValueError, match="slo_p99_s"):
        capacity(_frame(), 0, BUDGET)
    with pytest.raises(ValueError, match="memory_bytes"):
        capacity(_frame(), SLO, -1)
    with pytest.raises(ValueError, match="frame"):
        capacity(pd.DataFrame(columns=columns()), SLO, BUDGET)
    with pytest.raises(ValueError, match="cores"):
        capacity(_frame(), SLO, BUDGET, cores=3)


def test_winner_map_and_recommendation():
    rows = [_row(m, c, n, throughput_rps=t * c) for m, t in (("m3_reactor", 1000.0), ("m6_prefork", 900.0))
            for c in (1, 4) for n in (10, 100)]
    rows += [_row("m6_prefork", c, 1000, throughput_rps=3000.0 * c) for c in (1, 4)]
    rows += [_row("m3_reactor", c, 1000, latency_p99_s=0.5, cpu_util=1.0) for c in (1, 4)]
    frame = to_frame(rows)
    wins = winner_map(frame, SLO, BUDGET)
    assert len(wins) == 6
    # m3 and m6 within 2% tie -> lower p99 (equal) -> lower RSS (equal): first of the sorted pair; at 1000 m6 only.
    assert set(wins[wins["connections"] == 1000]["winner"]) == {"m6_prefork"}
    rec = recommend(frame, SLO, BUDGET)
    assert rec.model == "m6_prefork"
    assert rec.model in rec.reasons[0] and "1,000 connections" in rec.reasons[0]
    assert any("m3_reactor" in r for r in rec.reasons)
    nothing = recommend(to_frame([_row("m1_iterative", 1, 10, failure="backlog")]), SLO, BUDGET)
    assert nothing.model == "" and "No model" in nothing.reasons[0]


def test_build_grid_sizes_models_per_core_count():
    base = Scenario(workload=Workload(cpu_us=10))
    grid = build_grid(base, ["m4", "m5", 6, ModelSpec(name="m7", threads=3)], [1, 16], [10, 20])
    assert len(grid) == 4 * 2 * 2
    by = {(s.model.name, s.hardware.cores, s.workload.connections): s for s in grid}
    assert by[("m4_reactor_workers", 16, 10)].model.pool == 64
    assert by[("m4_reactor_workers", 1, 10)].model.pool == 4
    assert by[("m5_multi_reactor", 16, 20)].model.threads == 16
    assert by[("m6_prefork", 16, 20)].model.processes == 16
    assert by[("m7_reactor_spawn", 16, 20)].model.threads == 3  # a ModelSpec is taken as given
    assert grid[0].workload.cpu_us == 10
    with pytest.raises(ValueError, match="cores"):
        build_grid(base, ["m3"], [0], [10])
    with pytest.raises(ValueError, match="m4_pool_per_core"):
        Sizing({"m4_pool_per_core": 0})


def test_sizing_rules_come_from_the_registry():
    with pytest.raises(ValueError, match="m4_pool_per_cpu: unknown sizing rule; allowed: .*m4_pool_per_core"):
        Sizing({"m4_pool_per_cpu": 2.0})
    with pytest.raises(ValueError, match="m5_threads_min: must be a number > 0"):
        Sizing({"m5_threads_min": True})
    sizing = Sizing({"m5_threads_per_core": 0.5, "m5_threads_min": 3})
    assert sizing.spec("m5", 16).threads == 8
    assert sizing.spec("m5", 2).threads == 3
    assert sizing.spec("m4", 16).pool == 64  # rules left out keep the registry's defaults
    # Knobs the model does not use go back to their defaults; the base's other fields stay.
    spec = sizing.spec("m3", 8, ModelSpec(name="m4", pool=32, backlog=99, gil=False))
    assert (spec.name, spec.pool, spec.threads, spec.backlog, spec.gil) == ("m3_reactor", 0, 1, 99, False)
    assert "m4 pool = max(4, 4 x cores)" in Sizing().text()
    assert Sizing().text(["m3"]) == ""
    assert hash(sizing) == hash(Sizing({"m5_threads_min": 3, "m5_threads_per_core": 0.5}))


def test_extrapolation_and_calibrated_range():
    frame = to_frame([_row("m3_reactor", c, n) for c, n in ((1, 10), (2, 2000), (64, 10), (8, 100_000))])
    ext = extrapolation(frame, 2, 1000)
    assert list(ext.round(3)) == [1.0, 2.0, 32.0, 100.0]
    rows = [{"model": "m3", "cores": 1, "connections": 500}, {"cores": 2, "connections": 5000}, {"x": 1}]
    assert calibrated_range(rows, 99, 99) == (2, 5000)
    assert calibrated_range([], 2, 1000) == (2, 1000)


def test_adaptive_window_covers_the_ramp_and_prices_points():
    from experiments.windows import WindowPolicy, plan_window, plan_windows
    from simkit.analytic import throughput_bound
    from simkit.profile import CostProfile

    profile = CostProfile.default()
    policy = WindowPolicy(target_requests=2000, max_sim_requests=40_000)
    hw = Hardware(cores=8, fd_limit=1 << 20)
    small = Scenario(model=ModelSpec(name="m6", processes=8), hardware=hw,
                     workload=Workload(connections=100, think_s=1.0, cpu_us=200))
    big = small.replace(connections=100_000)
    s2, cost = plan_window(small, profile, policy)
    assert s2.workload.warmup_s >= 1.0  # one think time, so every client has started cycling
    assert s2.workload.duration_s == policy.max_duration_s  # 100 req/s: the window is capped
    assert cost < policy.max_sim_requests
    b2, big_cost = plan_window(big, profile, policy)
    assert b2.workload.warmup_s >= 100_000 * profile["client_cpu_per_request_s"]  # the connection ramp
    assert big_cost > policy.max_sim_requests
    assert plan_windows([small, big], profile, policy)[1] == [False, True]
    # The estimate is a bound: one thread for m3, the GIL for a threaded model, cores for m6.
    m3 = small.replace(model=ModelSpec(name="m3"), connections=10_000)
    m5 = small.replace(model=ModelSpec(name="m5", threads=8), connections=10_000, gil_us=100)
    m6 = small.replace(connections=10_000, think_s=0.0)
    assert throughput_bound(m3, profile) < 1 / 200e-6
    assert throughput_bound(m5, profile) < 1 / 100e-6
    assert 1 / 200e-6 < throughput_bound(m6, profile) < 8 / 200e-6
    with pytest.raises(ValueError, match="min_duration_s"):
        WindowPolicy(min_duration_s=10, max_duration_s=1)


def _banded(row: Result, lo: float, hi: float, source: str = "sim") -> dict:
    out = dict(row.to_row())
    out.update(latency_p99_s_lo=lo, latency_p99_s_hi=hi, source=source)
    return out


def test_meets_the_slo_only_when_the_band_does_and_states_the_margin():
    inside = _banded(_row("m3_reactor", 2, 100, latency_p99_s=0.031), 0.024, 0.038)
    straddles = _banded(_row("m3_reactor", 2, 1000, latency_p99_s=0.045), 0.035, 0.060)
    frame = pd.DataFrame([inside, straddles])
    assert classify(straddles, SLO, BUDGET) == "latency"  # point under the SLO, band's top over it
    cap = capacity(frame, SLO, BUDGET).set_index("model").loc["m3_reactor"]
    assert cap["max_connections"] == 100
    assert cap["verdict"] == "p99 31 ms [24, 38] vs SLO 50 ms: 24% margin"
    assert cap["margin"] == pytest.approx(0.24)
    assert "p99 45 ms [35, 60] > SLO 50 ms (the band's top)" in cap["why"]
    # Without band columns the point value decides (and the verdict says so by showing no band).
    plain = capacity(to_frame([_row("m3_reactor", 2, 100, latency_p99_s=0.031)]), SLO, BUDGET)
    assert plain.loc[0, "verdict"] == "p99 31 ms vs SLO 50 ms: 38% margin"


def test_recommendation_says_where_its_figures_come_from_and_warns_on_calibration_error():
    from experiments.planning import model_errors

    rows = []
    for n, c in ((10, 1), (100, 1), (10, 8), (100, 8), (100_000, 32)):
        # m2 is fastest where it meets (it would win cells), m6 holds the largest load, analytically.
        rows.append(_banded(_row("m2_thread_per_conn", c, n, throughput_rps=2000.0 * c), 0.005, 0.012))
        src = "analytic" if n == 100_000 else "sim"
        rows.append(_banded(_row("m6_prefork", c, n, throughput_rps=1000.0 * c), 0.005, 0.012, src))
    rows[-2] = _banded(_row("m2_thread_per_conn", 32, 100_000, failure="threads_max"), 0.005, 0.012)
    frame = pd.DataFrame(rows)
    validation = [{"model": "m2_thread_per_conn", "metric": "p99", "rel_err": 0.9},
                  {"model": "m2_thread_per_conn", "metric": "throughput", "rel_err": -0.05},
                  {"model": "m6", "metric": "p99", "rel_err": 0.1}, {"model": "m6", "metric": "throughput",
                                                                     "rel_err": 0.02}]
    errors = model_errors(validation)
    assert errors["m2_thread_per_conn"] == {"p99": 0.9, "throughput": 0.05}
    wins = winner_map(frame, SLO, BUDGET, errors=errors)
    m2_cells = wins[wins["winner"] == "m2_thread_per_conn"]
    assert len(m2_cells) == 4 and all("p99 90.0% (bar 25%)" in w for w in m2_cells["warning"])
    rec = recommend(frame, SLO, BUDGET, calibrated=(2, 10_000), errors=errors)
    assert rec.model == "m6_prefork"
    figures = next(r for r in rec.reasons if r.startswith("Its figures"))
    assert "from simkit.analytic" in figures and "extrapolated 16x past the calibrated range" in figures
    text = " ".join(rec.warnings)
    assert "m2_thread_per_conn wins 4 cells of the winner map with calibration error above the bars" in text
    assert "comes from the analytic model" in text and "16x past the calibrated range" in text
    assert "vs SLO 50 ms: 76% margin" in rec.reasons[0]
    # Without a profile's range and errors it says they are unknown rather than staying silent.
    bare = recommend(frame, SLO, BUDGET)
    assert "calibrated range is unknown" in next(r for r in bare.reasons if r.startswith("Its figures"))


def test_a_row_where_nothing_failed_and_nothing_completed_says_so():
    from experiments.planning import _detail

    row = _row("m3_reactor", 2, 100, throughput_rps=0.0, completed=0, latency_p99_s=math.nan).to_row()
    text = _detail(pd.Series(row), "backlog", SLO, BUDGET)
    assert "100.0%" not in text and "no request failed, and none completed either" in text


def test_a_backlog_overflow_during_the_connect_ramp_is_not_a_capacity_limit():
    def row(warmup_s):
        sc = Scenario(model=ModelSpec(name="m3_reactor"), hardware=Hardware(cores=2),
                      workload=Workload(connections=10_000, connect_rate_cps=10_000.0, warmup_s=warmup_s))
        return Result(scenario=sc, source="real", throughput_rps=1000.0, completed=5000, errors_refused=500,
                      latency_mean_s=0.01, latency_p99_s=0.02, failure="backlog").to_row()

    storm = row(0.5)  # the window opened half-way through the 1 s connect ramp
    assert classify(storm, SLO, BUDGET) == "startup"
    assert "while the clients were still connecting (ramp 1 s" in capacity(pd.DataFrame([storm]), SLO, BUDGET)["why"][0]
    assert classify(row(2.0), SLO, BUDGET) == "backlog"  # after the ramp: the backlog is the limit
    assert classify({**row(0.5), "failure": ""}, SLO, BUDGET) == "startup"  # refusals alone, same reading
