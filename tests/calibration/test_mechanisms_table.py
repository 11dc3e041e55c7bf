"""calibration.mechanisms: the mechanism conformance table, with fake real and simulated runs (rows,
errors, tolerance, rendering), and one cheap mechanism run for real."""

from __future__ import annotations

import csv
import math
import time
from dataclasses import replace
from types import SimpleNamespace

import pytest

from calibration import mechanisms as mech
from calibration.compare import loadgen_shares_cores
from simkit import registry
from simkit.profile import CostProfile
from simkit.result import Result
from simkit.scenario import Scenario

CLIENT_CPU_S = 80e-6  # the profile's client CPU per request
REAL_CLIENT_CPU_S = 70e-6  # what the fake real generator spends


def fake_real(s: Scenario) -> Result:
    """Figures that depend visibly on what each experiment varies (idle connections, processes, cores)."""
    w = s.workload
    x = 1000.0 + 10 * w.connections + 100 * s.hardware.cores
    lat = 1e-3 * (1 + w.connections / 100)
    return Result(scenario=s, source="real", throughput_rps=x, latency_mean_s=lat, latency_p50_s=lat,
                  latency_p90_s=1.5 * lat, latency_p99_s=2 * lat, latency_p999_s=3 * lat,
                  completed=int(x * w.duration_s), cpu_util=min(0.5, s.hardware.cores),
                  threads_peak=1 + w.connections + w.idle_connections, processes_peak=1 + s.model.processes,
                  rss_peak_bytes=2**24 + 400 * w.idle_connections + 2**23 * s.model.processes,
                  fds_peak=w.connections + w.idle_connections, loadgen_cpu_util=x * REAL_CLIENT_CPU_S)


class FakeMeasure:
    def __init__(self, fail=lambda s: False) -> None:
        self.calls: list[Scenario] = []
        self.fail = fail

    def __call__(self, s: Scenario) -> Result:
        self.calls.append(s)
        if self.fail(s):
            raise RuntimeError("server did not start (fake)")
        return fake_real(s)


class FakeSimulate:
    """The real figures times `factor` (latencies, throughput, RSS; counts of threads and processes
    kept), returned with realkit-style counters as simkit's detail=True does."""

    def __init__(self, factor: float = 1.1) -> None:
        self.factor = factor
        self.calls: list[tuple[Scenario, bool]] = []

    def __call__(self, s, profile=None, *, seed=None, loadgen_on_server_cores=False, loadgen_cores=0,
                 detail=False):
        self.calls.append((s, loadgen_on_server_cores))
        r, f = fake_real(s), self.factor
        sim = replace(r, source="sim", throughput_rps=f * r.throughput_rps, latency_mean_s=f * r.latency_mean_s,
                      latency_p50_s=f * r.latency_p50_s, latency_p90_s=f * r.latency_p90_s,
                      latency_p99_s=f * r.latency_p99_s, latency_p999_s=f * r.latency_p999_s,
                      rss_peak_bytes=round(f * r.rss_peak_bytes),
                      loadgen_cpu_util=f * r.throughput_rps * CLIENT_CPU_S)
        stats = SimpleNamespace(completed_in_window=sim.throughput_rps * s.workload.duration_s,
                                latency_mean_in_window_s=sim.latency_mean_s,
                                latency_percentiles_in_window_s=(sim.latency_p50_s, sim.latency_p90_s,
                                                                 sim.latency_p99_s, sim.latency_p999_s))
        return (sim, stats) if detail else sim


def profile() -> CostProfile:
    return CostProfile.default().with_params("fit", client_cpu_per_request_s=CLIENT_CPU_S)


def test_every_mechanism_has_a_row_with_its_error_and_verdict():
    measure, simulate = FakeMeasure(), FakeSimulate(1.1)
    seen = []
    rows = mech.run_mechanisms(profile(), quick=True, measure=measure, simulate=simulate,
                               progress=lambda d, i, n: seen.append((d, i, n)))
    assert [(r["mechanism"], r["figure"]) for r in rows] == [(m.name, m.figure) for m in mech.MECHANISMS]
    assert {"RSS", "wake-up from idle", "accept path", "open-loop load generator", "thread start-up",
            "GIL"} <= {r["mechanism"] for r in rows}
    for r in rows:
        assert set(r) == set(mech.COLUMNS)
        assert math.isfinite(r["real"]) and math.isfinite(r["sim"]), r
        assert r["rel_err"] == pytest.approx((r["sim"] - r["real"]) / r["real"])
        assert r["within"] == (abs(r["rel_err"]) <= mech.TOLERANCE)
        assert (r["why"] == "") == r["within"]
        if r["figure"] == "threads_peak":  # a count the fake simulator keeps
            assert r["rel_err"] == pytest.approx(0.0)
        elif r["figure"] == "CPU per request":  # real generator vs the simulated one
            assert r["real"] == pytest.approx(REAL_CLIENT_CPU_S * 1e6)
            assert r["sim"] == pytest.approx(CLIENT_CPU_S * 1e6)
            assert r["rel_err"] == pytest.approx(CLIENT_CPU_S / REAL_CLIENT_CPU_S - 1)
        else:  # the fake simulator's 10% shows through every slope, latency and throughput
            assert r["rel_err"] == pytest.approx(0.1, abs=1e-3), r
    slopes = {r["figure"]: r["real"] for r in rows if r["mechanism"] == "RSS"}
    assert slopes["per keep-alive connection"] == pytest.approx(400.0)
    assert slopes["per thread"] == pytest.approx(400.0 / 1024)
    assert slopes["per process"] == pytest.approx(8.0)
    # each distinct scenario run once for real and once simulated, like calibration compares
    assert len(measure.calls) == len(set(measure.calls))
    assert len(simulate.calls) == len({s for s, _ in simulate.calls})
    assert all(shared == loadgen_shares_cores(s) for s, shared in simulate.calls)
    assert seen[0][1:] == (0, len(mech.MECHANISMS)) and seen[-1][1] == len(mech.MECHANISMS)


def test_a_figure_off_by_more_than_the_tolerance_says_why():
    rows = mech.run_mechanisms(profile(), quick=True, measure=FakeMeasure(), simulate=FakeSimulate(1.3))
    off = [r for r in rows if r["figure"] not in ("threads_peak", "CPU per request")]
    assert off and all(not r["within"] and r["rel_err"] == pytest.approx(0.3, abs=1e-3) for r in off)
    assert all(r["why"] == next(m.why for m in mech.MECHANISMS if m.figure == r["figure"]) for r in off)


def test_quick_runs_shorter_and_fewer_connections_than_full():
    def windows(quick: bool) -> tuple[float, int]:
        measure = FakeMeasure()
        mech.run_mechanisms(profile(), quick=quick, measure=measure, simulate=FakeSimulate())
        return (sum(s.workload.duration_s + s.workload.warmup_s for s in measure.calls),
                max(s.workload.idle_connections + s.workload.connections for s in measure.calls))

    (quick_s, quick_n), (full_s, full_n) = windows(True), windows(False)
    assert quick_s < 0.7 * full_s and quick_n < full_n
    assert full_n >= 10_000 and full_s <= 60  # windows alone, before start-up and idle connections


def test_a_failing_real_run_is_retried_once_then_reported_without_losing_the_table():
    procs = mech.prefork()
    measure = FakeMeasure(fail=lambda s: s.model.name == procs)
    rows = mech.run_mechanisms(profile(), quick=True, measure=measure, simulate=FakeSimulate())
    broken = [r for r in rows if r["figure"] in ("per process", "2 pre-forked, reuseport", "2 pre-forked, shared")]
    assert len(broken) == 3
    for r in broken:
        assert math.isnan(r["real"]) and math.isnan(r["rel_err"]) and not r["within"]
        assert "no comparison" in r["why"] and "server did not start (fake)" in r["note"]
    assert sum(1 for s in measure.calls if s.model.name == procs) == 2 * 4  # 4 scenarios, 2 tries each
    assert all(r["within"] for r in rows if r not in broken and r["figure"] != "threads_peak")


def test_models_are_picked_by_what_they_are():
    reactor = registry.get(mech.single_reactor())
    assert reactor.single_thread(mech._spec(reactor.name)) and not reactor.blocking_sockets
    spawn = registry.get(mech.thread_per_connection())
    assert spawn.threads_peak(mech._spec(spawn.name), 100) >= 100
    fork = registry.get(mech.prefork())
    assert fork.processes(mech._spec(fork.name, processes=4)) == 5
    for name in (mech.multi_reactor(), mech.reactor_pool()):
        arch = registry.get(name)
        assert arch.shared_gil(mech._spec(name))
    assert len({mech.single_reactor(), mech.thread_per_connection(), mech.prefork(), mech.multi_reactor(),
                mech.reactor_pool()}) == 5


def test_rel_err_and_row_verdicts():
    m = mech.MECHANISMS[0]
    assert mech.rel_err(100.0, 115.0) == pytest.approx(0.15)
    assert mech.make_row(m, 100.0, 115.0, "")["within"]
    assert not mech.make_row(m, 100.0, 116.0, "")["within"]
    assert mech.make_row(m, 100.0, 85.0, "")["within"]
    assert math.isnan(mech.rel_err(0.0, 1.0)) and math.isnan(mech.rel_err(math.nan, 1.0))
    assert not mech.make_row(m, math.nan, 1.0, "")["within"]


def test_profile_must_be_a_cost_profile():
    with pytest.raises(ValueError, match="profile"):
        mech.run_mechanisms({"parse_s": 1e-5}, measure=FakeMeasure(), simulate=FakeSimulate())


def test_format_table_and_csv(tmp_path):
    rows = mech.run_mechanisms(profile(), quick=True, measure=FakeMeasure(), simulate=FakeSimulate(1.3))
    rows[0] = {**rows[0], "real": math.nan, "rel_err": math.nan, "within": False}
    text = mech.format_table(rows)
    lines = text.splitlines()
    assert lines[0].startswith("| mechanism | figure | unit | real | sim | error |")
    body = [ln for ln in lines[2:] if ln.startswith("|")]
    assert len(body) == len(rows)
    assert "n/a" in body[0] and "+30%" in body[1] and "| no |" in body[1]
    assert f"2 of {len(rows)} figures within 15%" in text  # threads_peak and the generator's CPU
    assert "real runs" in lines[-1]
    assert "why" not in mech.format_table(rows, notes=False).splitlines()[0]
    path = mech.write_csv(rows, tmp_path / "sub" / "mechanisms.csv")
    with path.open() as fh:
        back = list(csv.DictReader(fh))
    assert list(back[0]) == list(mech.COLUMNS) and len(back) == len(rows)
    assert float(back[1]["rel_err"]) == pytest.approx(0.3, abs=1e-3) and back[1]["within"] == "False"


@pytest.mark.timeout(60)
def test_one_mechanism_for_real():
    """The per-process RSS slope, measured: two short pre-forked runs on loopback, simulated beside."""
    one = [m for m in mech.MECHANISMS if m.figure == "per process"]
    prof = replace(CostProfile.default(), notes={"work_rate": "2600.0,83.0"})  # pinned: no rate measured
    rows = mech.run_mechanisms(prof, quick=True, mechanisms=one)
    (row,) = rows
    print(mech.format_table(rows))
    assert row["mechanism"] == "RSS" and row["unit"] == "MiB/process"
    assert 1.0 < row["real"] < 200.0, row  # a Python worker process holds MiBs, not bytes or GiBs
    per_worker = CostProfile.default()["rss_worker_bytes"] + CostProfile.default()["rss_thread_bytes"]
    assert row["sim"] == pytest.approx(per_worker / 2**20, rel=0.2)
    assert 0 < row["real_s"] < 45


def test_a_real_run_beside_busy_neighbours_says_so(monkeypatch):
    """Other processes' CPU during a real run (box busy minus this process tree's own) reaches the note."""
    clock = iter(range(0, 1000, 2))  # the box gains 2 busy CPU seconds between any two readings
    monkeypatch.setattr(mech, "_box_busy_s", lambda: float(next(clock)))
    slow = FakeMeasure()

    def measure(s):
        time.sleep(0.25)
        return slow(s)

    one = [m for m in mech.MECHANISMS if m.figure == "per process"]
    (row,) = mech.run_mechanisms(profile(), quick=True, measure=measure, simulate=FakeSimulate(), mechanisms=one)
    assert row["box_others"] > mech.BUSY_CORES and "box busy" in row["note"]
    assert "other processes kept up to" in mech.format_table([row])
    monkeypatch.setattr(mech, "_box_busy_s", lambda: 5.0)  # a quiet box
    (row,) = mech.run_mechanisms(profile(), quick=True, measure=measure, simulate=FakeSimulate(), mechanisms=one)
    assert row["box_others"] == 0.0 and "box busy" not in row["note"]
