"""Real runs on a grid, and a least-squares fit of the costs the probes cannot see (DESIGN §7.2-3).

The grid spans all seven models x connections x work mix x cores. Each point has a role:
- "train": cores 1, connections <= 1,000: the only points the fit sees;
- "cores": the same points on 2 cores (held out: fit on 1 core, predict 2);
- "interp": a connection count inside the training range, for each trained work mix (held out);
- "connections": 5,000-10,000 connections (held out: extrapolation in load).

On a 2-core box a 1-core server leaves the other core to the load generator; a 2-core server
shares its cores with it, so those points are simulated with loadgen_on_server_cores=True, the load
generator costing client_cpu_per_request_s, which is measured (loadgen CPU / throughput of the real
runs), not fitted.

The fit: scipy.optimize.least_squares over value / start of a few parameters (FIT_PARAMS:
parse_s, gil_handoff_s, cpu_work_scale, gil_work_scale), all models at once, residuals
log(simulated / measured) of throughput, p50 and p99. Simulations cover each real run's own window
(or about `target_requests` requests: cheaper, but a start-up transient the real window saw is then
cut off or over-weighted) and use a fixed seed per
point (common random numbers); a coarse coordinate search over factors of the start comes first
(the simulated objective is rugged at small scales), then least squares from its best point; our own
forward-difference Jacobian reuses the centre evaluation and runs all its simulations as one batch,
optionally on a process pool. Uncertainty: the Gauss-Newton covariance at the optimum and a
linearised bootstrap over runs (resample runs, one Gauss-Newton step from the optimum).
"""

from __future__ import annotations

import math
import random
import statistics
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from simkit.profile import CostProfile, Param
from simkit.result import Result
from simkit.scenario import MODEL_NAMES, Hardware, ModelSpec, Scenario, Workload, available_cores

# Work mixes (DESIGN §4): each makes a different mechanism dominate.
WORK_MIXES: dict[str, dict[str, float]] = {
    "cpu": {"cpu_us": 200.0, "gil_us": 20.0},  # GIL released: scales with cores in every model
    "gil": {"gil_us": 200.0},  # GIL held: threads convoy, processes (m6) scale
    "io": {"io_us": 2000.0, "gil_us": 20.0},  # blocking wait: stalls reactors that work inline
    "mixed": {"cpu_us": 100.0, "gil_us": 50.0, "io_us": 500.0},  # inside the hull of the three
}

# Sizing knobs per model: the typical configuration a team would start from on a small box.
MODEL_SPECS: dict[str, ModelSpec] = {
    "m1_iterative": ModelSpec(name="m1_iterative"),
    "m2_thread_per_conn": ModelSpec(name="m2_thread_per_conn"),
    "m3_reactor": ModelSpec(name="m3_reactor"),
    "m4_reactor_workers": ModelSpec(name="m4_reactor_workers", pool=4),
    "m5_multi_reactor": ModelSpec(name="m5_multi_reactor", threads=4),
    "m6_prefork": ModelSpec(name="m6_prefork", processes=2),
    "m7_reactor_spawn": ModelSpec(name="m7_reactor_spawn", threads=2),
}

ROLES = ("train", "cores", "interp", "connections")
# --quick extrapolates in connections for three contrasting models only (thread per connection,
# single reactor, processes): a 5,000-connection real run costs more than all the others of a model.
QUICK_EXTRAP_MODELS = ("m2_thread_per_conn", "m3_reactor", "m6_prefork")
# What the fit moves (the probes start them): per-request Python work, the GIL hand-off and the
# box's speed for each kind of work. accept_s stays at its probe: fitted, it became the knob for the
# start-up transients the in-window p99 sees and wandered from 2x to 15x its probe between refits.
# The work scales are probed, but in a moment: this shared VM's speed for the pure Python loop moved by
# up to 1.9x between the probe and the real runs a few minutes later (two campaigns pinned 38 and
# 60 ns per loop step). Fitting them to the training runs themselves takes the campaign's own speed.
# loopback_rtt_s is left at its probe: fitted, it traded with parse_s (both add latency) and the two
# landed anywhere between campaigns (parse_s 1-26 us, RTT 13-150 us).
FIT_PARAMS: tuple[str, ...] = ("parse_s", "gil_handoff_s", "cpu_work_scale", "gil_work_scale")
# Fitted costs that contain a probed one and so may not go below it (when fitted): parse_s is the
# probed parse plus the rest of a request's Python, accept_s the probed accept() plus its bookkeeping.
# Unbounded, the fit traded them for other costs and drove both to < 1 us.
FLOORED_AT_PROBE: tuple[str, ...] = ("parse_s", "accept_s")
# (metric, weight): p99 is the noisiest figure on a shared box, so it counts half.
METRICS: tuple[tuple[str, float], ...] = (("throughput_rps", 1.0), ("latency_p50_s", 1.0), ("latency_p99_s", 0.5))
# A Result.failure that means the run itself broke (not a limit the model legitimately hit).
# (realkit.runner joins several with commas; "fd_limit" and the like are outcomes, not breakage.)
RUN_FAILURES = ("server_died", "loadgen", "http_errors")

MeasureFn = Callable[[Scenario], Result]
SimulateFn = Callable[..., Result]
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class GridPoint:
    scenario: Scenario
    role: str
    mix: str

    def label(self) -> str:
        s = self.scenario
        return f"{s.model.name} c={s.workload.connections} {self.mix} cores={s.hardware.cores}"


def latency_estimate_s(model: str, mix: str, connections: int, cores: int) -> float:
    """A rough a-priori closed-loop latency (N x the bottleneck's time per request), only to size a
    run's warm-up and window: a window shorter than a few latencies measures the start-up transient."""
    w = WORK_MIXES[mix]
    cpu, gil, io = (w.get(k, 0.0) * 1e-6 for k in ("cpu_us", "gil_us", "io_us"))
    overhead = 150e-6  # recv + parse + send + epoll from Python, order of magnitude
    if model in ("m1_iterative", "m3_reactor"):
        per = cpu + gil + io + overhead
    elif model == "m6_prefork":
        per = (cpu + gil + io + overhead) / MODEL_SPECS[model].processes
    else:
        per = max(gil + overhead, (cpu + gil + overhead) / cores)
        if model == "m5_multi_reactor":
            per = max(per, (cpu + gil + io + overhead) / MODEL_SPECS[model].threads)
    return connections * per


def make_scenario(model: str, mix: str, connections: int, cores: int, duration_s: float, warmup_s: float,
                  seed: int = 1, max_duration_s: float = 8.0, max_warmup_s: float = 4.0) -> Scenario:
    """One grid scenario. duration_s / warmup_s are floors: they grow with the estimated latency
    (window >= 4 latencies, warm-up >= 1.5) up to the caps, so every point is measured in steady state."""
    # m1 serves one connection until it closes: with keep-alive clients it would serve one forever
    # and starve the rest, so its clients make one request per connection.
    rpc = 1 if model == "m1_iterative" else None
    fd_limit = max(Hardware().fd_limit, 2 * connections + 1024)
    lat = latency_estimate_s(model, mix, connections, cores)
    duration = round(min(max(duration_s, 4.0 * lat), max(duration_s, max_duration_s)), 2)
    warmup = round(min(max(warmup_s, 1.5 * lat), max(warmup_s, max_warmup_s)), 2)
    return Scenario(
        model=MODEL_SPECS[model],
        hardware=Hardware(cores=cores, fd_limit=fd_limit),
        workload=Workload(connections=connections, requests_per_conn=rpc, duration_s=duration,
                          warmup_s=warmup, timeout_s=max(10.0, 4.0 * lat), **WORK_MIXES[mix]),
        seed=seed,
    )


def build_grid(quick: bool = False, models: Sequence[str] = MODEL_NAMES, *, duration_s: float | None = None,
               warmup_s: float | None = None, train_connections: Sequence[int] | None = None,
               mixes: Sequence[str] | None = None, extrap_connections: Sequence[int] | None = None,
               interp_connections: int = 300, cores_extra: int = 2) -> list[GridPoint]:
    """The calibration grid. quick: one work mix and one held-out point of each kind per model."""
    duration = duration_s if duration_s is not None else (0.6 if quick else 1.2)
    warmup = warmup_s if warmup_s is not None else (0.3 if quick else 0.4)
    conns = list(train_connections or (10, 100, 1000))
    mix_list = list(mixes or (("cpu",) if quick else ("cpu", "gil", "io")))
    caps = {"max_duration_s": 2.5, "max_warmup_s": 2.0} if quick else {}
    extrap = list(extrap_connections or ((5000,) if quick else (5000, 10000)))
    points: list[GridPoint] = []
    for model in models:
        for mix in mix_list:
            for c in conns:
                points.append(GridPoint(make_scenario(model, mix, c, 1, duration, warmup, **caps), "train", mix))
        for mix in mix_list:
            # 2-core points: the middle count (quick), or all but the smallest (full: at 10
            # connections one core is rarely the limit, so the second says little).
            for c in ([conns[len(conns) // 2]] if quick else conns[1:]):
                points.append(GridPoint(make_scenario(model, mix, c, cores_extra, duration, warmup, **caps),
                                        "cores", mix))
        for mix in mix_list:  # same mixes, a connection count between the trained ones
            points.append(GridPoint(make_scenario(model, mix, interp_connections, 1, duration, warmup, **caps),
                                    "interp", mix))
        extrap_mix = mix_list[0]
        if quick and model not in QUICK_EXTRAP_MODELS:
            continue
        for c in extrap:
            # Thousands of connections take a while to open: a longer warm-up keeps that out of the window.
            points.append(GridPoint(make_scenario(model, extrap_mix, c, 1, duration, max(warmup, 1.0), **caps),
                                    "connections", extrap_mix))
    return points


# -- real runs ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    point: GridPoint
    result: Result | None
    error: str = ""
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.result is not None and not self.error

    def failure_record(self) -> dict[str, Any]:
        return {"label": self.point.label(), "role": self.point.role, "mix": self.point.mix,
                "scenario": self.point.scenario.to_dict(), "error": self.error, "attempts": self.attempts}


def run_failed(result: Result) -> str:
    """Why a real run is unusable ("" when it is fine)."""
    broken = [f for f in result.failure.split(",") if f.strip() in RUN_FAILURES]
    if broken:
        return f"run failed: {result.failure}"
    if result.completed <= 0 or result.throughput_rps <= 0:
        return f"no request completed (errors: {result.errors}, failure: {result.failure or 'none'})"
    return ""


def measure_with_retry(point: GridPoint, measure: MeasureFn, retries: int = 1) -> Run:
    """A failed real run (exception, broken server or load generator, nothing completed) is tried
    once more; if it fails again it is returned with its error, to be recorded, never dropped."""
    error = ""
    for attempt in range(1, retries + 2):
        try:
            with warnings.catch_warnings():
                # Expected on the 2-core points of a 2-core box, and accounted for (loadgen_cpu_util).
                warnings.filterwarnings("ignore", message="server and load generator share CPUs")
                result = measure(point.scenario)
        except Exception as exc:  # noqa: BLE001 - any failure of the real run is an observation
            error = f"{type(exc).__name__}: {exc}".strip()
            tb = traceback.format_exc(limit=3)
            error = error if len(error) > 8 else f"{error} {tb[-300:]}"
            continue
        why = run_failed(result)
        if not why:
            return Run(point, result, "", attempt)
        error = why
    return Run(point, None, error, retries + 1)


def run_grid(points: Sequence[GridPoint], measure: MeasureFn, *, progress: Progress | None = None,
             retries: int = 1, seed: int = 1) -> list[Run]:
    """Measure every point; the Runs come back in grid order.

    The points run in a fixed shuffled order, not model after model: a shared box's speed drifts over
    minutes (one campaign measured all of m1's points, sleep-bound ones too, 30-60% slower than the
    campaign a quarter of an hour before it, and no other model's), and in grid order such a spell
    lands on one model's training and held-out points together. Shuffled, it spreads thin."""
    order = list(range(len(points)))
    random.Random(seed).shuffle(order)
    runs: list[Run | None] = [None] * len(points)
    for done, i in enumerate(order):
        if progress:
            progress(points[i].label(), done, len(points))
        runs[i] = measure_with_retry(points[i], measure, retries)
    if progress:
        progress("real runs done", len(points), len(points))
    return runs


def save_runs(runs: Sequence[Run], path) -> None:
    """Every real run as a contract frame row plus role, mix, error and attempts (failed runs too)."""
    import pandas as pd

    rows = []
    for run in runs:
        row = (run.result.to_row() if run.result is not None
               else {**run.point.scenario.flat(), "source": "real"})
        row.update(role=run.point.role, mix=run.point.mix, error=run.error, attempts=run.attempts)
        rows.append(row)
    pd.DataFrame(rows).to_csv(path, index=False)


def load_runs(path) -> list[Run]:
    import pandas as pd

    out = []
    for row in pd.read_csv(path, keep_default_na=True).to_dict(orient="records"):
        role, mix = row.pop("role"), row.pop("mix")
        error = row.pop("error")
        error = error if isinstance(error, str) else ""
        attempts = int(row.pop("attempts"))
        scenario = Scenario.from_flat(row)
        result = None if error else Result.from_row(row)
        out.append(Run(GridPoint(scenario, role, mix), result, error, attempts))
    return out


# -- simulation of a measured point --------------------------------------------------------------
def loadgen_shares_cores(scenario: Scenario, host_cores: int | None = None) -> bool:
    """A server given every core of this box shares them with the load generator."""
    return scenario.hardware.cores >= (host_cores or available_cores())


def sim_scenario(real: Result, target_requests: int | None) -> Scenario:
    """The real run's scenario, shortened to about target_requests simulated requests (a simulated
    request costs wall time, and the fit simulates every training point many times), but never
    shorter than 4 measured latencies, with a warm-up of 1.5 (the closed loop's start-up transient).
    target_requests None: the real run's own window, for a prediction that must see what the real
    window saw (a held-out point at 10k connections still connecting after a short warm-up)."""
    s = real.scenario
    if target_requests is None:
        return s
    wl = s.workload
    x = real.throughput_rps
    lat = real.latency_mean_s if math.isfinite(real.latency_mean_s) else 0.0
    duration = wl.duration_s if x <= 0 else min(wl.duration_s, max(0.1, target_requests / x, 4.0 * lat))
    warmup = min(wl.warmup_s, max(0.05, 1.5 * lat))
    return s.replace(duration_s=round(duration, 4), warmup_s=round(warmup, 4))


def as_realkit(sim: Result, stats: Any = None) -> Result:
    """The simulated Result with throughput, mean latency and peaks counted as realkit counts them.

    realkit's load generator counts responses completed inside its window whatever their send time;
    simkit's Result counts the cohort sent inside the window and completed by its end, which misses
    the requests still in flight at the end (about latency / window of them). SimStats carries the
    realkit-style count (completed_in_window) and those completions' latency percentiles; without it
    (an older or fake simulator), in a closed loop at steady state the send rate equals the
    throughput: (completed + in_flight) / duration.
    """
    if stats is not None and getattr(stats, "threads_sampled_peak", 0) > 0:
        # realkit's monitor samples every 100 ms; the Result's peaks are exact maxima (short-lived
        # threads, m7's, come and go between samples). Compare like with like.
        sim = replace(sim, threads_peak=stats.threads_sampled_peak,
                      rss_peak_bytes=stats.rss_sampled_peak_bytes or sim.rss_peak_bytes,
                      fds_peak=stats.fds_sampled_peak or sim.fds_peak)
    if sim.scenario.workload.mode != "closed":
        return sim
    d = sim.scenario.workload.duration_s
    if stats is not None and hasattr(stats, "completed_in_window"):
        x = stats.completed_in_window / d
        lat = getattr(stats, "latency_mean_in_window_s", sim.latency_mean_s)
        sim = replace(sim, throughput_rps=x, latency_mean_s=lat if lat == lat else sim.latency_mean_s)
        pct = getattr(stats, "latency_percentiles_in_window_s", ())
        if len(pct) == 4:
            sim = replace(sim, **dict(zip(("latency_p50_s", "latency_p90_s", "latency_p99_s", "latency_p999_s"),
                                          pct, strict=True)))
        return sim
    return replace(sim, throughput_rps=(sim.completed + sim.in_flight) / d)


def comparable(sim: Result, field: str) -> float:
    """Kept for callers holding a plain simulated Result (no SimStats): see as_realkit."""
    return float(getattr(as_realkit(sim), field))


def _sim_one(args: tuple) -> Result | str:
    simulate, scenario, profile, seed, shared = args
    try:
        try:
            got = simulate(scenario, profile, seed=seed, loadgen_on_server_cores=shared, detail=True)
        except TypeError:  # a simulator without detail=: no SimStats
            got = simulate(scenario, profile, seed=seed, loadgen_on_server_cores=shared)
        sim, stats = got if isinstance(got, tuple) else (got, None)
        return as_realkit(sim, stats)
    except Exception as exc:  # noqa: BLE001 - a crashing simulation is a (bad) prediction, reported
        return f"{type(exc).__name__}: {exc}"


class SimBatch:
    """Runs many simulations, in this process or on a pool of `workers` processes."""

    def __init__(self, simulate: SimulateFn, workers: int = 1, host_cores: int | None = None) -> None:
        self.simulate = simulate
        self.workers = workers
        self.host_cores = host_cores
        self.calls = 0
        self._pool = None
        if workers > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn, not fork: the caller may run a progress-bar thread.
            self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))

    def run(self, scenarios: Sequence[Scenario], profiles: Sequence[CostProfile]) -> list[Result | str]:
        tasks = [(self.simulate, s, p, s.seed, loadgen_shares_cores(s, self.host_cores))
                 for s, p in zip(scenarios, profiles, strict=True)]
        self.calls += len(tasks)
        if self._pool is None:
            return [_sim_one(t) for t in tasks]
        return list(self._pool.map(_sim_one, tasks, chunksize=max(1, len(tasks) // (4 * self.workers))))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def __enter__(self) -> SimBatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def log_ratio(pred: float, meas: float) -> float:
    """log(pred / meas), clipped to +-5; 0 when there is nothing measured to compare with."""
    if not (isinstance(meas, float) and math.isfinite(meas) and meas > 0):
        return 0.0
    if not (math.isfinite(pred) and pred > 0):
        return -5.0 if pred == 0 or not math.isfinite(pred) else 5.0
    return max(-5.0, min(5.0, math.log(pred / meas)))


def residuals(sims: Sequence[Result | str], reals: Sequence[Result]) -> np.ndarray:
    out = []
    for sim, real in zip(sims, reals, strict=True):
        for metric, weight in METRICS:
            meas = getattr(real, metric)
            pred = getattr(sim, metric) if isinstance(sim, Result) else math.nan
            if isinstance(sim, Result) and metric != "throughput_rps" and sim.completed == 0:
                pred = math.nan
            out.append(weight * log_ratio(pred if math.isfinite(pred) else 0.0, meas))
    return np.asarray(out, float)


# -- measured (not fitted) parameters ------------------------------------------------------------
def client_cpu_from_runs(results: Sequence[Result]) -> tuple[float, float] | None:
    """Load generator CPU seconds per request, from the real runs' own accounting (median, sd)."""
    per = [r.loadgen_cpu_util / r.throughput_rps for r in results if r.throughput_rps > 0 and r.loadgen_cpu_util > 0]
    if not per:
        return None
    med = statistics.median(per)
    q1, q3 = np.percentile(per, [25, 75])
    return med, float((q3 - q1) / 1.349 / math.sqrt(len(per)) * 1.253)


def _line(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares line: intercept, slope, sd of slope."""
    xa, ya = np.asarray(x, float), np.asarray(y, float)
    (slope, intercept), res, *_ = np.polyfit(xa, ya, 1, full=True)
    n = len(xa)
    sxx = float(np.sum((xa - xa.mean()) ** 2))
    s2 = float(res[0]) / (n - 2) if n > 2 and len(res) else 0.0
    return float(intercept), float(slope), math.sqrt(s2 / sxx) if sxx > 0 else 0.0


def memory_from_runs(results: Sequence[Result]) -> dict[str, tuple[float, float]]:
    """RSS per connection and per thread from the real runs (their RSS is what the sim must match):
    m3 (one process, one thread): RSS = process + N x conn; m2: RSS = that + threads x thread."""
    out: dict[str, tuple[float, float]] = {}
    m3 = [r for r in results if r.scenario.model.name == "m3_reactor" and r.rss_peak_bytes > 0]
    if len({r.scenario.workload.connections for r in m3}) >= 2:
        b, conn, conn_sd = _line([r.scenario.workload.connections for r in m3], [r.rss_peak_bytes for r in m3])
        if conn > 16 and b > 0:  # a Python socket object alone is more than 16 bytes
            out["rss_conn_bytes"] = (conn, conn_sd)
            out["rss_process_bytes"] = (b, 0.05 * b)
    m2 = [r for r in results if r.scenario.model.name == "m2_thread_per_conn" and r.rss_peak_bytes > 0]
    if "rss_conn_bytes" in out and len({r.threads_peak for r in m2}) >= 2:
        conn = out["rss_conn_bytes"][0]
        _b, thr, thr_sd = _line([r.threads_peak for r in m2],
                                [r.rss_peak_bytes - conn * r.scenario.workload.connections for r in m2])
        if thr >= 1024:  # below a page per thread is noise, not a thread's stack
            out["rss_thread_bytes"] = (thr, thr_sd)
    return out


def apply_measured(profile: CostProfile, results: Sequence[Result]) -> CostProfile:
    """Set the parameters the real runs measure directly (source "fit": estimated from real runs)."""
    params = dict(profile.params)
    cc = client_cpu_from_runs(results)
    if cc is not None:
        params["client_cpu_per_request_s"] = Param(cc[0], cc[1], "fit")
    for name, (value, sd) in memory_from_runs(results).items():
        params[name] = Param(value, sd, "fit")
    return replace(profile, params=params)


# -- the fit -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FitResult:
    profile: CostProfile
    names: tuple[str, ...]
    start: dict[str, float]
    values: dict[str, float]
    sd_jacobian: dict[str, float]
    sd_bootstrap: dict[str, float]
    rmse_log_start: float
    rmse_log: float
    evaluations: int
    sim_calls: int
    elapsed_s: float
    status: str
    per_run: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"params": list(self.names), "start": self.start, "values": self.values,
                "sd_jacobian": self.sd_jacobian, "sd_bootstrap": self.sd_bootstrap,
                "rmse_log_start": self.rmse_log_start, "rmse_log": self.rmse_log,
                "evaluations": self.evaluations, "sim_calls": self.sim_calls,
                "elapsed_s": self.elapsed_s, "status": self.status, "training_runs": len(self.per_run)}


class _Budget(Exception):
    pass


F_SCALE = 0.3  # soft_l1 scale: log errors beyond ~35% count less than squared (outliers, broken points)


def robust_cost(r: np.ndarray) -> float:
    """scipy's soft_l1 loss, summed: the cost least_squares minimises."""
    z = (np.asarray(r, float) / F_SCALE) ** 2
    return float(np.sum(2.0 * (np.sqrt(1.0 + z) - 1.0)) * F_SCALE**2)


def probe_floors(profile: CostProfile) -> dict[str, float]:
    """The FLOORED_AT_PROBE parameters' probed values, as fit() floors."""
    return {n: profile[n] for n in FLOORED_AT_PROBE if profile.params[n].source == "probe"}


def fit(
    results: Sequence[Result],
    base: CostProfile,
    *,
    names: Sequence[str] = FIT_PARAMS,
    simulate: SimulateFn | None = None,
    target_requests: int | None = None,
    max_evaluations: int = 12,
    time_budget_s: float = 600.0,
    workers: int = 1,
    host_cores: int | None = None,
    diff_step: float = 0.25,
    bounds_factor: float = 300.0,
    search_factors: Sequence[Sequence[float]] = ((1 / 16, 1 / 4, 4, 16, 64), (1 / 4, 1 / 2, 2, 4), (2 / 3, 3 / 2)),
    bootstrap: int = 300,
    progress: Progress | None = None,
    batch: SimBatch | None = None,
    floors: dict[str, float] | None = None,
) -> FitResult:
    """Fit `names` so simulate() reproduces `results` (real runs) in throughput, p50 and p99.

    floors: lowest values allowed (see FLOORED_AT_PROBE; probe_floors() makes them from a profile).

    max_evaluations counts evaluations of the whole residual vector (one simulation per run each),
    Jacobian columns included; the time budget stops the search at the best point seen so far.
    """
    from scipy.optimize import least_squares

    if simulate is None:
        from simkit import simulate as simulate  # noqa: PLW0127 - the real simulator by default
    names = tuple(names)
    if not names:
        raise ValueError("names: nothing to fit")
    reals = [r for r in results if r.throughput_rps > 0]
    if not reals:
        raise ValueError("results: no real run with throughput > 0 to fit")
    scen = [sim_scenario(r, target_requests) for r in reals]
    # Start from the base profile (probes), but not from ~0: the search is relative to the start,
    # and a probe that read 0 on a noisy box would pin the parameter there.
    from simkit.profile import PARAM_DOCS

    start = {n: max(base[n], 0.1 * PARAM_DOCS[n][0], 1e-9) for n in names}
    # The search variable is value / start, bounded to [1/bounds_factor, bounds_factor]. Linear,
    # not log: costs add up along a request, so the residuals are near-linear in it, and a cost that
    # wandered near 0 keeps a usable gradient (in log space it would have none and stay stuck).
    floors = floors or {}
    lo = np.array([max(1.0 / bounds_factor, floors.get(n, 0.0) / start[n]) for n in names])
    hi = bounds_factor
    own_batch = batch is None
    batch = batch or SimBatch(simulate, workers, host_cores)
    t0 = time.monotonic()
    cache: dict[tuple[float, ...], np.ndarray] = {}
    best: dict[str, Any] = {"cost": math.inf, "x": np.ones(len(names))}
    evals = {"n": 0}
    max_evals = max(len(names) + 2, max_evaluations)

    def profile_at(x: np.ndarray) -> CostProfile:
        return base.with_params("fit", **{n: start[n] * float(v) for n, v in zip(names, x, strict=True)})

    def eval_many(xs: list[np.ndarray]) -> list[np.ndarray]:
        todo = [x for x in xs if tuple(np.round(x, 12)) not in cache]
        if todo:
            if evals["n"] + len(todo) > max_evals or time.monotonic() - t0 > time_budget_s:
                raise _Budget
            profiles = [profile_at(x) for x in todo]
            flat_s = [s for _x in todo for s in scen]
            flat_p = [p for p in profiles for _s in scen]
            sims = batch.run(flat_s, flat_p)
            for k, x in enumerate(todo):
                r = residuals(sims[k * len(scen):(k + 1) * len(scen)], reals)
                cache[tuple(np.round(x, 12))] = r
                evals["n"] += 1
                cost = robust_cost(r)
                if cost < best["cost"]:
                    best.update(cost=cost, x=x.copy())
            if progress:
                progress(f"fit: {evals['n']}/{max_evals} evaluations, rms log error {math.sqrt(best['cost'] / len(r)):.3f}",
                         evals["n"], max_evals)
        return [cache[tuple(np.round(x, 12))] for x in xs]

    def fun(x: np.ndarray) -> np.ndarray:
        return eval_many([np.asarray(x, float)])[0]

    def jac(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, float)
        steps = []
        for i in range(len(x)):
            h = np.zeros_like(x)
            # Step toward the inside of the bounds so the probe point stays feasible.
            step = diff_step * max(abs(x[i]), 0.2)  # relative, but not vanishing near 0
            h[i] = step if x[i] + step <= hi else -step
            steps.append(x + h)
        f0, *fs = eval_many([x, *steps])
        cols = [(f - f0) / (s[i] - x[i]) for i, (f, s) in enumerate(zip(fs, steps, strict=True))]
        return np.column_stack(cols)

    x0 = np.ones(len(names))
    status = "converged"
    try:
        f_start = fun(x0)
        # A simulated closed loop is a rugged objective at small scales (event interleavings change
        # with every cost), so a gradient method alone stalls at its start. First a coarse
        # coordinate search over factors of the start (each coordinate's candidates in one batch),
        # then least squares from the best point for the fine step and the Jacobian.
        x_c = x0.copy()
        for factors in search_factors:
            for i in range(len(names)):
                cands = []
                for f in factors:
                    x = x_c.copy()
                    x[i] = min(hi, max(lo[i], x_c[i] * f))
                    cands.append(x)
                if evals["n"] + len(cands) > max_evals - (len(names) + 2):
                    break
                costs = [robust_cost(r) for r in eval_many(cands)]
                k = int(np.argmin(costs))
                if costs[k] < robust_cost(fun(x_c)):
                    x_c = cands[k]
        res = least_squares(fun, x_c, jac=jac, bounds=(lo, hi), method="trf", loss="soft_l1", f_scale=F_SCALE,
                            max_nfev=max_evals, xtol=1e-3, ftol=1e-4)
        x_best = res.x if robust_cost(res.fun) <= best["cost"] else best["x"]
        status = "converged" if res.status > 0 else "evaluation cap reached"
    except _Budget:
        x_best = best["x"]
        status = "budget reached (best point kept)"
        f_start = cache.get(tuple(np.round(x0, 12)), np.zeros(1))
    # Uncertainty: Jacobian at the best point (from the cache when it is there; else skipped).
    sd_jac: dict[str, float] = {}
    sd_boot: dict[str, float] = {}
    try:
        saved = max_evals
        max_evals = evals["n"] + len(names) + 1  # allow one more Jacobian for the error bars
        J = jac(x_best)
        max_evals = saved
        r = fun(x_best)
        m, p = J.shape
        s2 = float(np.sum(r**2)) / max(1, m - p)
        cov = np.linalg.pinv(J.T @ J) * s2
        for i, n in enumerate(names):
            sd = start[n] * math.sqrt(max(cov[i, i], 0.0))
            sd_jac[n] = sd if math.isfinite(sd) else start[n] * bounds_factor
        sd_boot = _bootstrap(J, r, x_best, names, start, len(METRICS), bootstrap, (lo, hi))
    except _Budget:
        pass
    finally:
        if own_batch:
            batch.close()
    values = {n: start[n] * float(v) for n, v in zip(names, x_best, strict=True)}
    sds = {n: max(sd_jac.get(n, 0.0), sd_boot.get(n, 0.0)) or 0.5 * values[n] for n in names}
    profile = base.with_params("fit", sds=sds, **values)
    r_best = cache.get(tuple(np.round(np.asarray(x_best, float), 12)), np.zeros(1))
    per_run = _per_run_rows(reals, r_best)
    return FitResult(
        profile=profile, names=names, start=start, values=values, sd_jacobian=sd_jac, sd_bootstrap=sd_boot,
        rmse_log_start=float(np.sqrt(np.mean(np.asarray(f_start) ** 2))),
        rmse_log=float(np.sqrt(np.mean(r_best**2))), evaluations=evals["n"], sim_calls=batch.calls,
        elapsed_s=time.monotonic() - t0, status=status, per_run=per_run,
    )


def _bootstrap(J: np.ndarray, r: np.ndarray, x: np.ndarray, names: Sequence[str], start: dict[str, float],
               per: int, n_boot: int, limits: tuple[float, float], seed: int = 12345) -> dict[str, float]:
    """Linearised bootstrap over runs: resample runs, take one Gauss-Newton step from the optimum."""
    if n_boot <= 0:
        return {}
    rng = np.random.default_rng(seed)
    n_runs = len(r) // per
    draws = []
    for _ in range(n_boot):
        idx = rng.integers(0, n_runs, n_runs)
        rows = (idx[:, None] * per + np.arange(per)[None, :]).ravel()
        delta, *_ = np.linalg.lstsq(J[rows], -r[rows], rcond=None)
        draws.append(np.clip(x + delta, *limits))  # a parameter the data cannot see roams its bounds
    d = np.asarray(draws)
    return {n: float(np.std(start[n] * d[:, i])) for i, n in enumerate(names)}


def _per_run_rows(reals: Sequence[Result], r: np.ndarray) -> list[dict[str, Any]]:
    rows = []
    per = len(METRICS)
    for i, real in enumerate(reals):
        row = {"model": real.scenario.model.name, "cores": real.scenario.hardware.cores,
               "connections": real.scenario.workload.connections}
        for j, (metric, weight) in enumerate(METRICS):
            k = i * per + j
            row[f"log_err_{metric}"] = float(r[k] / weight) if k < len(r) else math.nan
        rows.append(row)
    return rows
