"""Parameters the real runs measure, and a least-squares fit of the costs the probes cannot see
(docs/DESIGN.md §7.3).

Measured, not fitted: the box's speed for each kind of work (the runs' own work ledgers: median and
spread), the load generator's CPU per request (its CPU over the throughput of the real runs) and the
RSS figures the probe of the real servers did not measure (from the real runs of the architectures
whose registry entry names that slope).

The fit: scipy.optimize.least_squares over value / start of a few parameters (FIT_PARAMS), all
models at once, on the residuals of calibration.compare (log simulated / measured throughput, p50,
p99). The simulated objective is rugged at small scales, so a coarse coordinate search over factors
of the start comes first, then least squares from its best point; our own forward-difference
Jacobian reuses the centre evaluation and runs all its simulations as one batch, optionally on a
process pool. Uncertainty: the Gauss-Newton covariance at the optimum and a linearised bootstrap
over runs (resample runs, one Gauss-Newton step from the optimum).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from calibration.compare import (
    METRICS,
    RUN_SPEEDS,
    SimBatch,
    SimulateFn,
    at_run_speed,
    loadgen_shares_cores,
    residuals,
    sim_scenario,
)
from simkit import registry
from simkit.profile import CostProfile, Param
from simkit.result import Result
from simkit.scenario import Scenario

# What the fit may move (the probes start them): the box's speed for each kind of work, and only where
# the runs did not measure it (unmeasured()): realkit's runs carry their own (Result.work_*_scale),
# which compare.at_run_speed uses as measured, so a campaign of realkit's servers fits nothing. The
# probes take these speeds in a moment while the box's speed for interpreted code moves: fitted, one
# scale averaged its spells and traded them against the mechanisms. parse_s is measured on a real
# reactor (parse_from_server): fitted, it stood in for the wake-up from idle that the grid's sleeping
# requests pay (225 us against a real 20-30 us per request) and traded with the work scales. accept_s
# and loopback_rtt_s stay at their probes: fitted, accept_s became the knob for the start-up
# transients and loopback_rtt_s traded with parse_s. gil_handoff_s stays at its probe (a lock hand-off
# pinned to one CPU): the 1-core training points barely show it once a waiter that cannot run loses
# the GIL to the running releaser, and fitted it wandered from 0.4 to 335 us (sd as large as the
# value), which broke the 2-core points it does decide.
FIT_PARAMS: tuple[str, ...] = ("cpu_work_scale", "gil_work_scale")
# Fitted costs that contain a probed one and so may not go below it (when fitted): parse_s is the
# probed parse plus the rest of a request's Python, accept_s the probed accept() plus its bookkeeping.
# Unbounded, the fit traded them for other costs and drove both toward 0.
FLOORED_AT_PROBE: tuple[str, ...] = ("parse_s", "accept_s")
F_SCALE = 0.3  # soft_l1 scale: log errors beyond ~35% count less than squared (outliers, broken points)

Progress = Callable[[str, int, int], None]


# -- measured (not fitted) parameters ------------------------------------------------------------
def client_cpu_from_runs(results: Sequence[Result]) -> tuple[float, float] | None:
    """Load generator CPU seconds per request, from the real runs' own accounting (median, sd), over the
    runs where it shares the server's cores: the only place the simulator charges it, and the only runs
    where it never polls for its send times (on CPUs of its own it does, simkit.sendtimer)."""
    per = [r.loadgen_cpu_util / r.throughput_rps for r in results
           if r.throughput_rps > 0 and r.loadgen_cpu_util > 0 and loadgen_shares_cores(r.scenario)]
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


def _rss_runs(results: Sequence[Result], slope: str) -> list[Result]:
    """The runs, with an RSS reading, of the architectures whose calibration.rss_slope is `slope`."""
    models = {a.name for a in registry.architectures() if a.calibration.rss_slope == slope}
    return [r for r in results if r.scenario.model.name in models and r.rss_peak_bytes > 0]


MEMORY_PARAMS: tuple[str, ...] = ("rss_process_bytes", "rss_conn_bytes", "rss_thread_bytes")


def memory_from_runs(results: Sequence[Result], probed: Mapping[str, float] | None = None
                     ) -> dict[str, tuple[float, float]]:
    """RSS per process, per connection and per thread from the real runs, for those of MEMORY_PARAMS
    not in `probed` (values calibration.probes.probe_server_memory measured on the real servers, which
    stay). rss_slope "conn" (one process, one thread): RSS = process + N x conn; "thread" (a thread per
    connection): RSS = that + threads x thread.

    With the per-connection figure probed, the runs give the process base alone (the median of RSS -
    N x conn): a line through the runs mixes core counts and work mixes, whose bases differ by more
    than their connections hold at these counts, and trades the slope for the intercept."""
    probed = dict(probed or {})
    out: dict[str, tuple[float, float]] = {}
    by_conn = _rss_runs(results, "conn")
    conn = probed.get("rss_conn_bytes")
    if conn is None and len({r.scenario.workload.connections for r in by_conn}) >= 2:
        b, slope, slope_sd = _line([r.scenario.workload.connections for r in by_conn],
                                   [r.rss_peak_bytes for r in by_conn])
        if slope > 16 and b > 0:  # a Python socket object alone is more than 16 bytes
            conn = slope
            out["rss_conn_bytes"] = (slope, slope_sd)
            if "rss_process_bytes" not in probed:
                out["rss_process_bytes"] = (b, 0.05 * b)
    elif conn is not None and by_conn and "rss_process_bytes" not in probed:
        bases = [r.rss_peak_bytes - conn * r.scenario.workload.connections for r in by_conn]
        b = statistics.median(bases)
        if b > 0:
            out["rss_process_bytes"] = (b, max(0.01 * b, float(np.std(bases))))
    by_thread = _rss_runs(results, "thread")
    if "rss_thread_bytes" not in probed and conn is not None and len({r.threads_peak for r in by_thread}) >= 2:
        _b, thr, thr_sd = _line([r.threads_peak for r in by_thread],
                                [r.rss_peak_bytes - conn * r.scenario.workload.connections for r in by_thread])
        if thr >= 1024:  # below a page per thread is noise, not a thread's stack
            out["rss_thread_bytes"] = (thr, thr_sd)
    return out


def work_speeds_from_runs(results: Sequence[Result]) -> dict[str, tuple[float, float]]:
    """The work scales the runs measured (compare.RUN_SPEEDS): the median over runs, and as its sd the
    runs' own spread (IQR / 1.349), not the median's error: the box's speed moves from run to run, and
    a prediction of a run not yet made faces that whole spread."""
    out = {}
    for field_name, param, _asked in RUN_SPEEDS:
        got = [v for r in results if math.isfinite(v := getattr(r, field_name, math.nan)) and v > 0]
        if got:
            q1, q3 = np.percentile(got, [25, 75])
            out[param] = (statistics.median(got), float(q3 - q1) / 1.349)
    return out


def unmeasured(names: Sequence[str], results: Sequence[Result]) -> tuple[str, ...]:
    """`names` less the work scales every run that asks for that work measured: a measured speed is
    used as measured (compare.at_run_speed), and fitting it would fit nothing. Runs from before the
    ledger (or an external server's) measure none, and their scales are fitted as before."""
    measured = set()
    for field_name, param, asked in RUN_SPEEDS:
        runs = [r for r in results if getattr(r.scenario.workload, asked) > 0]
        if runs and all(math.isfinite(getattr(r, field_name)) for r in runs):
            measured.add(param)
    return tuple(n for n in names if n not in measured)


def apply_measured(profile: CostProfile, results: Sequence[Result]) -> CostProfile:
    """Set the parameters the real runs measure directly (source "fit": estimated from real runs)."""
    params = dict(profile.params)
    for name, (value, sd) in work_speeds_from_runs(results).items():
        params[name] = Param(value, sd, "fit")
    cc = client_cpu_from_runs(results)
    if cc is not None and params["client_cpu_per_request_s"].source != "probe":  # the probe's model wins
        params["client_cpu_per_request_s"] = Param(cc[0], cc[1], "fit")
    probed = {name: profile.params[name].value for name in MEMORY_PARAMS
              if name in profile.params and profile.params[name].source == "probe"}
    for name, (value, sd) in memory_from_runs(results, probed).items():
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
    """The evaluation cap or the time budget is spent."""


def robust_cost(r: np.ndarray) -> float:
    """scipy's soft_l1 loss, summed: the cost least_squares minimises."""
    z = (np.asarray(r, float) / F_SCALE) ** 2
    return float(np.sum(2.0 * (np.sqrt(1.0 + z) - 1.0)) * F_SCALE**2)


def _beyond_simulated(profile: CostProfile, name: str, scenario, measured: float, floor: float,
                      simulate: SimulateFn | None) -> CostProfile:
    """`name` measured, not fitted: a real server's CPU per request (`measured`) beyond what the same
    run, simulated with `name` = 0, already charges; never below `floor`. A run the simulator does not
    serve leaves the profile unchanged."""
    if simulate is None:
        from simkit.sim import simulate
    r = simulate(scenario.replace(duration_s=0.3), profile.with_params("probe", **{name: 0.0}))
    if r.throughput_rps <= 0:
        return profile
    value = max(floor, measured - r.cpu_util / r.throughput_rps)
    params = dict(profile.params)
    params[name] = Param(value, 0.1 * value, "probe", params[name].spread)
    return replace(profile, params=params)


def parse_from_server(profile: CostProfile, simulate: SimulateFn | None = None) -> CostProfile:
    """parse_s measured, not fitted: the wake-up probe's back-to-back run (a realkit reactor, no work,
    no sleep; calibration.probes.sleep_sweep_scenario) gives the real server's CPU per request. The
    same run simulated with parse_s = 0 gives what the probed costs (recv, send, epoll) already
    account for; parse_s is the rest, a request's Python in the real server, never below the parse
    probe. A profile whose probes have no such run (an older one) is returned unchanged."""
    from calibration.probes import sleep_sweep_scenario

    probes = profile.notes.get("probes") or {}
    probe = probes.get("idle_wakeup_s") or {}
    gaps, per = probe.get("gaps_s"), probe.get("cpu_per_request_s")
    if not gaps or not per or 0.0 not in gaps:
        return profile
    floor = (probes.get("parse_s") or {}).get("value", 0.0)
    return _beyond_simulated(profile, "parse_s", sleep_sweep_scenario(0.0), float(per[gaps.index(0.0)]), floor,
                             simulate)


def uring_from_server(profile: CostProfile, simulate: SimulateFn | None = None) -> CostProfile:
    """uring_request_s measured, not fitted, as parse_s is: the ring probe's real m8 run (one loop, no
    work, back to back; calibration.probes.ring_server_scenario) gives that server's CPU per request;
    the same run simulated with uring_request_s = 0 gives what parse_s and the ring's probed costs
    already account for; the rest is m8's own Python per request. A profile without that run is
    returned unchanged."""
    from calibration.probes import ring_server_scenario

    measured = ((profile.notes.get("probes") or {}).get("ring_server_cpu_per_request_s") or {}).get("value")
    if not measured:
        return profile
    return _beyond_simulated(profile, "uring_request_s", ring_server_scenario(), measured, 0.0, simulate)


def _loadgen_cpu(profile: CostProfile, scenario, simulate: SimulateFn) -> float:
    r = simulate(scenario, profile, loadgen_cores=1)
    return r.loadgen_cpu_util / r.throughput_rps if r.throughput_rps > 0 else math.nan


def loadgen_from_probe(profile: CostProfile, simulate: SimulateFn | None = None) -> CostProfile:
    """The load generator's costs, measured through the simulator's model of it (simkit.clients): the
    probe's CPU per request with one client is a wake-up and a request (wake + req = x_one); with 50
    clients a wake-up serves several requests, and the split of x_one whose simulated run spends the
    probe's x_many per request is the one kept (bisection: the simulated figure falls as the wake-up's
    share grows; a request keeps at least a send and a recv); with one request per connection, what
    the simulated run lacks per request is the connection's cost; with thousands of connections, what
    it lacks per request is that share of client_cache_miss_s (simkit.costs.cache_share, at the probed
    knee). A profile without the probe's runs is returned unchanged; an older one, without the wide
    run, gets no cache-miss cost."""
    from calibration.probes import loadgen_scenario
    from simkit.costs import cache_share

    probe = ((profile.notes.get("probes") or {}).get("client_cpu_per_request_s") or {})
    per, labels = probe.get("cpu_per_request_s"), probe.get("runs")
    if not per or not labels or len(per) != len(labels):
        return profile
    x = {label: v for (label, _c, _k), v in zip(labels, per, strict=True)}
    if not {"one", "many", "conn"} <= set(x):
        return profile
    if simulate is None:
        from simkit.sim import simulate
    runs = {label: loadgen_scenario(c, k, 0.4).replace(duration_s=0.3, warmup_s=0.1) for label, c, k in labels}
    many, conn = runs["many"], runs["conn"]  # "one" needs no simulation: it is wake-up + request

    def split(f: float, c_conn: float = 0.0, c_cache: float = 0.0) -> CostProfile:
        return profile.with_params("probe", client_cpu_per_wake_s=f * x["one"],
                                   client_cpu_per_request_s=(1 - f) * x["one"], client_cpu_per_conn_s=c_conn,
                                   client_cache_miss_s=c_cache)

    # A request costs the generator at least a send and a recv of its own, whatever its wake-ups
    # batch: the per-wake-up share stops there (unbounded, the split ran to all per wake-up and a
    # busy server's generator came out nearly free per request; docs/external-servers.md).
    floor = min(x["one"], profile["send_base_s"] + profile["recv_base_s"])
    lo, hi = 0.0, (1.0 - floor / x["one"] if x["one"] > 0 else 1.0)
    if _loadgen_cpu(split(hi), many, simulate) >= x["many"]:
        lo = hi  # even all of it per wake-up costs more than measured: all of it per wake-up
    elif _loadgen_cpu(split(lo), many, simulate) <= x["many"]:
        hi = lo  # even nothing per wake-up costs less: all of it per request
    for _ in range(8):
        if hi - lo < 0.02:
            break
        mid = 0.5 * (lo + hi)
        if _loadgen_cpu(split(mid), many, simulate) > x["many"]:
            lo = mid
        else:
            hi = mid
    f = 0.5 * (lo + hi)
    base = _loadgen_cpu(split(f), conn, simulate)
    c_conn = max(0.0, x["conn"] - base) if math.isfinite(base) else 0.0
    c_cache = 0.0
    if "wide" in x:
        wide = runs["wide"]
        share = cache_share(profile, wide.workload.connections)
        base = _loadgen_cpu(split(f, c_conn), wide.replace(warmup_s=0.3), simulate)
        if share > 0 and math.isfinite(base):
            c_cache = max(0.0, x["wide"] - base) / share
    return split(f, c_conn, c_cache)


def probe_floors(profile: CostProfile) -> dict[str, float]:
    """The FLOORED_AT_PROBE parameters' probed values, as fit() floors."""
    return {n: profile[n] for n in FLOORED_AT_PROBE if profile.params[n].source == "probe"}


@dataclass(eq=False)
class Objective:
    """The fit's objective over x, each fitted parameter's value / its start.

    It simulates every training run at x and returns the residuals against the real runs; points are
    evaluated in batches (a Jacobian's columns in one), cached by x, and counted: past
    `max_evaluations` evaluations or `time_budget_s` seconds it raises _Budget. It keeps the best
    point seen (lowest robust cost), which a budget stop falls back on."""

    reals: Sequence[Result]
    scenarios: Sequence[Scenario]
    base: CostProfile
    names: tuple[str, ...]
    start: dict[str, float]
    batch: SimBatch
    max_evaluations: int
    time_budget_s: float
    diff_step: float
    upper: float
    progress: Progress | None = None
    t0: float = field(default_factory=time.monotonic)
    cache: dict[tuple[float, ...], np.ndarray] = field(default_factory=dict)
    evaluations: int = 0
    best_cost: float = math.inf
    best_x: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.best_x = np.ones(len(self.names))

    @staticmethod
    def key(x: np.ndarray) -> tuple[float, ...]:
        return tuple(np.round(np.asarray(x, float), 12))

    def values_at(self, x: np.ndarray) -> dict[str, float]:
        return {n: self.start[n] * float(v) for n, v in zip(self.names, x, strict=True)}

    def profile_at(self, x: np.ndarray) -> CostProfile:
        return self.base.with_params("fit", **self.values_at(x))

    def cached(self, x: np.ndarray) -> np.ndarray | None:
        """The residuals at x if they were evaluated (no simulation, no budget)."""
        return self.cache.get(self.key(x))

    def evaluate(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        """The residuals at every x; the points not in the cache are simulated as one batch."""
        todo = [x for x in xs if self.key(x) not in self.cache]
        if todo:
            if (self.evaluations + len(todo) > self.max_evaluations
                    or time.monotonic() - self.t0 > self.time_budget_s):
                raise _Budget
            n_scen = len(self.scenarios)
            profiles = [self.profile_at(x) for x in todo]
            flat_s = [s for _x in todo for s in self.scenarios]
            flat_p = [at_run_speed(p, real) for p in profiles for real in self.reals]
            sims = self.batch.run(flat_s, flat_p)
            for k, x in enumerate(todo):
                r = residuals(sims[k * n_scen:(k + 1) * n_scen], self.reals)
                self.cache[self.key(x)] = r
                self.evaluations += 1
                cost = robust_cost(r)
                if cost < self.best_cost:
                    self.best_cost, self.best_x = cost, x.copy()
            if self.progress:
                self.progress(f"fit: {self.evaluations}/{self.max_evaluations} evaluations, rms log error "
                              f"{math.sqrt(self.best_cost / len(r)):.3f}", self.evaluations, self.max_evaluations)
        return [self.cache[self.key(x)] for x in xs]

    def residuals(self, x: np.ndarray) -> np.ndarray:
        return self.evaluate([np.asarray(x, float)])[0]

    def jacobian(self, x: np.ndarray) -> np.ndarray:
        """Forward differences, the centre and every column's point in one batch."""
        x = np.asarray(x, float)
        steps = []
        for i in range(len(x)):
            h = np.zeros_like(x)
            # Step toward the inside of the bounds so the probe point stays feasible.
            step = self.diff_step * max(abs(x[i]), 0.2)  # relative, but not vanishing near 0
            h[i] = step if x[i] + step <= self.upper else -step
            steps.append(x + h)
        f0, *fs = self.evaluate([x, *steps])
        cols = [(f - f0) / (s[i] - x[i]) for i, (f, s) in enumerate(zip(fs, steps, strict=True))]
        return np.column_stack(cols)

    def jacobian_past_cap(self, x: np.ndarray) -> np.ndarray:
        """The Jacobian at x even when the evaluation cap is spent (for the error bars); the time
        budget still holds."""
        saved = self.max_evaluations
        self.max_evaluations = self.evaluations + len(self.names) + 1
        try:
            return self.jacobian(x)
        finally:
            self.max_evaluations = saved


def _coordinate_search(obj: Objective, x0: np.ndarray, search_factors: Sequence[Sequence[float]],
                       lo: np.ndarray, hi: float) -> np.ndarray:
    """Each coordinate in turn, times each factor (one batch per coordinate), keeping the best point;
    it stops early to leave the least-squares finish a Jacobian's worth of evaluations."""
    n = len(x0)
    x_c = x0.copy()
    for factors in search_factors:
        for i in range(n):
            cands = []
            for f in factors:
                x = x_c.copy()
                x[i] = min(hi, max(lo[i], x_c[i] * f))
                cands.append(x)
            if obj.evaluations + len(cands) > obj.max_evaluations - (n + 2):
                break
            costs = [robust_cost(r) for r in obj.evaluate(cands)]
            k = int(np.argmin(costs))
            if costs[k] < robust_cost(obj.residuals(x_c)):
                x_c = cands[k]
    return x_c


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
    obj = Objective(reals, scen, base, names, start, batch, max_evaluations=max(len(names) + 2, max_evaluations),
                    time_budget_s=time_budget_s, diff_step=diff_step, upper=hi, progress=progress)

    x0 = np.ones(len(names))
    if not names:  # every parameter measured (unmeasured()): the residuals at the base, nothing moved
        try:
            r0 = obj.residuals(x0)
        finally:
            if own_batch:
                batch.close()
        rmse = float(np.sqrt(np.mean(r0**2)))
        return FitResult(profile=base, names=(), start={}, values={}, sd_jacobian={}, sd_bootstrap={},
                         rmse_log_start=rmse, rmse_log=rmse, evaluations=obj.evaluations, sim_calls=batch.calls,
                         elapsed_s=time.monotonic() - obj.t0, status="nothing to fit: every parameter measured",
                         per_run=_per_run_rows(reals, r0))
    status = "converged"
    try:
        f_start = obj.residuals(x0)
        # A simulated closed loop is a rugged objective at small scales (event interleavings change
        # with every cost), so a gradient method alone stalls at its start: a coarse coordinate
        # search first, then least squares from its best point for the fine step and the Jacobian.
        x_c = _coordinate_search(obj, x0, search_factors, lo, hi)
        res = least_squares(obj.residuals, x_c, jac=obj.jacobian, bounds=(lo, hi), method="trf", loss="soft_l1",
                            f_scale=F_SCALE, max_nfev=obj.max_evaluations, xtol=1e-3, ftol=1e-4)
        x_best = res.x if robust_cost(res.fun) <= obj.best_cost else obj.best_x
        status = "converged" if res.status > 0 else "evaluation cap reached"
    except _Budget:
        x_best = obj.best_x
        status = "budget reached (best point kept)"
        f_start = obj.cached(x0)
        f_start = np.zeros(1) if f_start is None else f_start
    # Uncertainty: Jacobian at the best point (from the cache when it is there; else skipped).
    sd_jac: dict[str, float] = {}
    sd_boot: dict[str, float] = {}
    try:
        J = obj.jacobian_past_cap(x_best)
        r = obj.residuals(x_best)
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
    values = obj.values_at(x_best)
    sds = {n: max(sd_jac.get(n, 0.0), sd_boot.get(n, 0.0)) or 0.5 * values[n] for n in names}
    profile = base.with_params("fit", sds=sds, **values)
    r_best = obj.cached(x_best)
    r_best = np.zeros(1) if r_best is None else r_best
    per_run = _per_run_rows(reals, r_best)
    return FitResult(
        profile=profile, names=names, start=start, values=values, sd_jacobian=sd_jac, sd_bootstrap=sd_boot,
        rmse_log_start=float(np.sqrt(np.mean(np.asarray(f_start) ** 2))),
        rmse_log=float(np.sqrt(np.mean(r_best**2))), evaluations=obj.evaluations, sim_calls=batch.calls,
        elapsed_s=time.monotonic() - obj.t0, status=status, per_run=per_run,
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
