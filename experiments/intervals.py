"""Intervals on every prediction: a low/high band around each simulated or analytic point.

For each metric m of BAND_METRICS the band at level L (BandPolicy.level, default 0.9) is
multiplicative, `m_lo = v * exp(-h)` and `m_hi = v * exp(+h)`, with a half-width h in log space:

    h = sqrt(h_noise^2 + h_param^2 + h_val^2)

three sources of error combined in quadrature as if independent:

(a) h_noise, simulation noise. A simulated point's value v is the MEAN over n independent
    replications (seeds derived from the point's own seed by derive_seeds; replication 0 is the
    point's seed itself); h_noise = t(n-1, (1+L)/2) * sd / (sqrt(n) * v). Replications run until
    h_noise <= target_half_width for throughput and p99 (both), or max_replications. Analytic points
    are deterministic (0); so is a single replication, which the `replications` column shows.
(b) h_param, the fit's parameter uncertainty. Every profile parameter with an sd (Gauss-Newton or
    bootstrap sd of a fitted one, a probe's spread) is drawn at once from N(value, sd), independently,
    8 times (fixed draws, the same for every point); h_param = z((1+L)/2) * the root mean square of
    log(f(drawn) / f) in simkit.analytic. To first order that is the quadrature sum of each
    parameter's effect when moved by its sd, at 8 analytic runs a point instead of two per parameter.
(c) h_val, the model's measured error for this kind of point: the split-conformal quantile of
    |log(predicted / measured)| over the profile's validation rows for this model and metric, i.e. the
    ceil((n+1) L)-th smallest of n scores. Which rows: the off-grid rows (random knobs, predicted by
    the final profile) of the point's load mode (closed or open: open-loop latency errors are several
    times the closed loop's) where the profile has them, else the in-grid held-out rows ("interp").
    A point past the calibrated range (more cores, or more connections, than any validation row) takes
    the larger of that and the quantile of the matching extrapolation rows (role "cores" or
    "connections"): a floor measured one step out, not a measurement at the point. When a model has
    too few rows for the quantile (ceil((n+1) L) > n) every model's rows of that kind count, but never
    below this model's own worst error of that kind (a model whose errors are larger than the others'
    must not borrow their narrower band); when
    there are none (an uncalibrated profile), h_val = log(DEFAULT_FACTOR): a stated guess, not a
    measurement, and `band_basis` says so.

The three overlap: (c) was measured on single-seed predictions of a fitted profile, so it already
holds some of (a) and (b) at the validated points, and the band is conservative there; (b) widens it
where a point is more sensitive to the parameters than those points were. An analytic point's (c) is
the simulator's measured error; the analytic model's own departure from the simulator is not in it.

Pure functions except `predict`, which runs the simulator (the entry for scripts and the CLI).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from simkit.profile import CostProfile
from simkit.result import Result
from simkit.scenario import Scenario

# Result field -> the metric's name in calibration's validation rows.
BAND_METRICS: dict[str, str] = {
    "throughput_rps": "throughput",
    "latency_p50_s": "p50",
    "latency_p99_s": "p99",
    "rss_peak_bytes": "rss",
    "threads_peak": "threads",
}
# The metrics whose noise decides when replications stop.
STOP_METRICS = ("throughput_rps", "latency_p99_s")
# Fields averaged over replications (the others come from replication 0, except `failure`).
_MEAN_FIELDS = ("throughput_rps", "latency_mean_s", "latency_p50_s", "latency_p90_s", "latency_p99_s",
                "latency_p999_s", "cpu_util", "ctx_switches_per_s", "loadgen_cpu_util")
_ROUNDED_FIELDS = ("completed", "errors_refused", "errors_timeout", "errors_reset", "in_flight", "threads_peak",
                   "processes_peak", "rss_peak_bytes", "fds_peak")
# An uncalibrated profile: a factor of 3 either way (stated, not measured).
DEFAULT_FACTOR = 3.0
# A prediction that failed or came out 0 against a measured value scores as a factor e^5 miss (as
# calibration.compare.log_ratio clips).
MAX_SCORE = 5.0
# The parameter draws' seed (fixed: the same draws for every point).
PARAM_SEED = 20261201
# Validation row roles: in-grid interpolation, the two extrapolation kinds, the off-grid design.
OFFGRID_KIND = "offgrid"


def band_columns() -> list[str]:
    """The frame columns the bands add: `<metric>_lo`, `<metric>_hi` per metric, then the bookkeeping."""
    cols = [f"{m}_{side}" for m in BAND_METRICS for side in ("lo", "hi")]
    return [*cols, "replications", "seeds", "band_level", "band_basis"]


@dataclass(frozen=True)
class BandPolicy:
    """How a point's band is made. level: the band's nominal coverage (0.5-0.999);
    min/max_replications: simulated runs per point (seeds); target_half_width: stop replicating once
    the noise half-width of throughput and p99, relative to the mean, is at most this."""

    level: float = 0.9
    min_replications: int = 2
    max_replications: int = 3
    target_half_width: float = 0.05

    def __post_init__(self) -> None:
        if isinstance(self.level, bool) or not isinstance(self.level, (int, float)) or not 0.5 <= self.level <= 0.999:
            raise ValueError(f"level: expected a number in [0.5, 0.999], got {self.level!r}")
        for name in ("min_replications", "max_replications"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 100:
                raise ValueError(f"{name}: expected an integer in [1, 100], got {v!r}")
        if self.min_replications > self.max_replications:
            raise ValueError(f"min_replications: {self.min_replications} exceeds max_replications "
                             f"{self.max_replications}")
        t = self.target_half_width
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not (math.isfinite(t) and 0 < t <= 10):
            raise ValueError(f"target_half_width: expected a number in (0, 10], got {t!r}")


# -- (a) replications and their noise ---------------------------------------------------------------

def derive_seeds(base_seed: int, n: int) -> list[int]:
    """n seeds for a point whose own seed is base_seed: base_seed first, then independent streams
    (numpy SeedSequence of [base_seed, k]), so a one-replication run is the single-seed run."""
    out = [int(base_seed)]
    for k in range(1, n):
        out.append(int(np.random.SeedSequence([int(base_seed), k]).generate_state(1)[0] % 2**31))
    return out


def _finite_positive(values: Iterable[float]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v) and v > 0]


def noise_half_width(values: Sequence[float], level: float) -> float:
    """Relative half-width of the mean of `values` at `level` (t interval); 0 for fewer than 2 values,
    NaN when nothing is positive and finite."""
    vals = _finite_positive(values)
    if not vals:
        return math.nan
    if len(vals) < 2:
        return 0.0
    mean = float(np.mean(vals))
    sd = float(np.std(vals, ddof=1))
    return _t_value(level, len(vals) - 1) * sd / (math.sqrt(len(vals)) * mean)


@functools.lru_cache(maxsize=256)
def _t_value(level: float, df: int) -> float:
    return float(stats.t.ppf((1 + level) / 2, df))


def enough(results: Sequence[Result], policy: BandPolicy) -> bool:
    """Whether replications may stop: the cap reached, or (past the minimum) the noise half-width of
    throughput and p99 within the target."""
    n = len(results)
    if n >= policy.max_replications:
        return True
    if n < policy.min_replications:
        return False
    for metric in STOP_METRICS:
        h = noise_half_width([getattr(r, metric) for r in results], policy.level)
        if math.isfinite(h) and h > policy.target_half_width:
            return False
    return True


def replicate(fn: Callable[..., Result], scenario: Scenario, profile: Any, policy: BandPolicy) -> list[Result]:
    """Run `fn(scenario, profile)` on derived seeds until `enough`: the replications, in seed order.
    A function that answers with an analytic Result (deterministic) runs once."""
    seeds = derive_seeds(scenario.seed, policy.max_replications)
    results: list[Result] = []
    for seed in seeds:
        results.append(fn(scenario.replace(seed=seed), profile))
        if results[0].source == "analytic" or enough(results, policy):
            break
    return results


def combine(results: Sequence[Result]) -> Result:
    """One Result for replications of a point: the mean of each metric (NaN ones left out), counts
    rounded; the scenario (seed included) of replication 0; the most frequent failure."""
    first = results[0]
    if len(results) == 1:
        return first
    changes: dict[str, Any] = {}
    for name in _MEAN_FIELDS:
        vals = [float(getattr(r, name)) for r in results if math.isfinite(float(getattr(r, name)))]
        changes[name] = float(np.mean(vals)) if vals else math.nan
    for name in _ROUNDED_FIELDS:
        changes[name] = int(round(float(np.mean([getattr(r, name) for r in results]))))
    failures = [r.failure for r in results]
    changes["failure"] = max(dict.fromkeys(failures), key=failures.count)
    return dataclasses.replace(first, **changes)


# -- (b) parameter uncertainty ---------------------------------------------------------------------

def _metric_value(result: Result, metric: str) -> float:
    return float(getattr(result, metric))


def param_draws(profile: CostProfile, n: int = 8, seed: int = PARAM_SEED) -> list[CostProfile]:
    """n copies of the profile with every parameter that has an sd drawn at once from N(value, sd)
    (clipped at 0). A fixed seed: every point sees the same draws (common random numbers), so the
    parameter part of neighbouring points' bands does not jitter. Remembered per parameter set (a
    sweep's worker prices many points with one profile)."""
    key = (n, seed, tuple((name, p.value, p.sd) for name, p in profile.params.items()))
    if key not in _DRAWS:
        if len(_DRAWS) >= 8:
            _DRAWS.clear()
        _DRAWS[key] = _param_draws(profile, n, seed)
    return _DRAWS[key]


_DRAWS: dict[tuple, list[CostProfile]] = {}


def _param_draws(profile: CostProfile, n: int, seed: int) -> list[CostProfile]:
    rng = np.random.default_rng(seed)
    uncertain = [(name, p) for name, p in profile.params.items() if p.sd > 0 and math.isfinite(p.sd)]
    out = []
    for _ in range(n):
        eps = rng.standard_normal(len(uncertain))
        params = dict(profile.params)
        for (name, p), e in zip(uncertain, eps, strict=True):
            params[name] = dataclasses.replace(p, value=max(p.value + e * p.sd, 0.0))
        out.append(dataclasses.replace(profile, params=params))
    return out


def param_sensitivities(scenario: Scenario, profile: CostProfile,
                        analytic: Callable[..., Result] | None = None,
                        draws: Sequence[CostProfile] | None = None) -> dict[str, float]:
    """One sd of log(metric) under the profile's parameter uncertainty, per metric (before the level's
    z): the root mean square of log(f(drawn) / f(profile)) in simkit.analytic over `draws`
    (param_draws(profile) by default). In the linear regime this is sqrt(sum (elasticity_i x
    sd_i / value_i)^2), the quadrature sum of each parameter moved by its sd, estimated from
    len(draws) joint draws instead of two runs per parameter: 8 draws cost 8 analytic runs, not ~60,
    and estimate it within about 25%."""
    if analytic is None:
        from simkit.analytic import analytic
    draws = param_draws(profile) if draws is None else draws
    base = analytic(scenario, profile)
    ref = {m: _metric_value(base, m) for m in BAND_METRICS}
    sq = dict.fromkeys(BAND_METRICS, 0.0)
    count = 0
    for drawn in draws:
        try:
            moved = analytic(scenario, drawn)
        except (ValueError, ZeroDivisionError, OverflowError):
            continue
        count += 1
        for m in BAND_METRICS:
            a, b = _metric_value(moved, m), ref[m]
            if a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b):
                sq[m] += min(abs(math.log(a / b)), MAX_SCORE) ** 2
            elif b > 0 and math.isfinite(b):  # the drawn profile breaks the point: a full miss
                sq[m] += MAX_SCORE ** 2
    return {m: math.sqrt(v / count) if count else 0.0 for m, v in sq.items()}


@functools.lru_cache(maxsize=64)
def z_value(level: float) -> float:
    return float(stats.norm.ppf((1 + level) / 2))


# -- (c) validation error ----------------------------------------------------------------------------

def score(predicted: Any, measured: Any) -> float:
    """|log(predicted / measured)|, MAX_SCORE for a failed or zero prediction; NaN when nothing was
    measured (no score)."""
    try:
        meas, pred = float(measured), float(predicted)
    except (TypeError, ValueError):
        return math.nan
    if not (math.isfinite(meas) and meas > 0):
        return math.nan
    if not (math.isfinite(pred) and pred > 0):
        return MAX_SCORE
    return min(abs(math.log(pred / meas)), MAX_SCORE)


def conformal_quantile(scores: Sequence[float], level: float) -> float | None:
    """The ceil((n+1) level)-th smallest of n scores (split conformal); None when n is too small."""
    vals = sorted(s for s in scores if math.isfinite(s))
    k = math.ceil((len(vals) + 1) * level - 1e-9)
    return vals[k - 1] if 1 <= k <= len(vals) else None


def profile_validation_rows(profile: CostProfile) -> list[dict[str, Any]]:
    """The profile's validation rows, each with `set` (grid | offgrid) and `point` (which run: rows of
    one run share it). Off-grid rows live in notes["offgrid_validation"] (calibration writes them);
    a profile written before that takes them from the validation CSV beside its file, if there is one."""
    grid = [r for r in profile.validation if isinstance(r, dict)]
    off = [r for r in (profile.notes.get("offgrid_validation") or ()) if isinstance(r, dict)]
    if not off and getattr(profile, "path", ""):
        off = _offgrid_rows_beside(Path(profile.path).with_suffix(".csv"))
    return number_points([{"set": "grid", **r} for r in grid] + [{"set": "offgrid", **r} for r in off])


def _offgrid_rows_beside(csv_path: Path) -> list[dict[str, Any]]:
    """The off-grid rows of calibration's validation CSV (its "set" column), [] when it is not there."""
    import pandas as pd

    try:
        table = pd.read_csv(csv_path)
    except (OSError, ValueError):
        return []
    if "set" not in table.columns:
        return []
    rows = table[table["set"] == "offgrid"].drop(columns="set").to_dict(orient="records")
    return [{k: v for k, v in r.items() if not (isinstance(v, float) and math.isnan(v)) or k in ("measured",
                                                                                               "predicted")}
            for r in rows]


def number_points(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows with a `point` id where they lack one: calibration writes one run's metric rows together,
    so a new run starts where the set changes or a metric repeats."""
    out: list[dict[str, Any]] = []
    point, seen, last_set = -1, set(), None
    for r in rows:
        r = dict(r)
        if r.get("set") != last_set or r.get("metric") in seen:
            point, seen, last_set = point + 1, set(), r.get("set")
        seen.add(r.get("metric"))
        r.setdefault("point", point)
        out.append(r)
    return out


def row_kind(row: Mapping[str, Any]) -> str:
    """A validation row's kind: its role (interp, cores, connections), and for an off-grid row also
    its load mode ("offgrid/closed", "offgrid/open"): open-loop latency errors are several times the
    closed loop's, so the two are not one population."""
    role = str(row.get("role"))
    mode = row.get("mode")
    return f"{role}/{mode}" if role == OFFGRID_KIND and isinstance(mode, str) and mode else role


@dataclass(frozen=True)
class ValidationErrors:
    """Validation scores grouped by (model, metric, kind), each with its (set, point) for leave-one-out."""

    groups: Mapping[tuple[str, str, str], tuple[tuple[float, tuple[Any, Any]], ...]]
    max_cores: int | None
    max_connections: int | None

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]]) -> ValidationErrors:
        groups: dict[tuple[str, str, str], list[tuple[float, tuple[Any, Any]]]] = {}
        cores, conns = [], []
        for r in rows:
            s = score(r.get("predicted"), r.get("measured"))
            if not math.isfinite(s):
                continue
            key = (str(r.get("model")), str(r.get("metric")), row_kind(r))
            groups.setdefault(key, []).append((s, (r.get("set"), r.get("point"))))
            for field, into in (("cores", cores), ("connections", conns)):
                v = r.get(field)
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    into.append(int(v))
        return cls({k: tuple(v) for k, v in groups.items()}, max(cores) if cores else None,
                   max(conns) if conns else None)

    @classmethod
    def of(cls, profile: CostProfile) -> ValidationErrors:
        return cls.from_rows(profile_validation_rows(profile))

    def kinds_for(self, scenario: Scenario, metric: str) -> tuple[str, ...]:
        """The validation kinds a point draws on: off-grid where the profile has any for this metric
        (else in-grid), plus the extrapolation kind of each range the point is past."""
        have = {k for (_m, met, k) in self.groups if met == metric}
        candidates = (f"{OFFGRID_KIND}/{scenario.workload.mode}", OFFGRID_KIND, "interp")
        base = next((k for k in candidates if k in have), candidates[-1])
        kinds = [base]
        if self.max_cores is not None and scenario.hardware.cores > self.max_cores:
            kinds.append("cores")
        if self.max_connections is not None and scenario.workload.connections > self.max_connections:
            kinds.append("connections")
        return tuple(kinds)

    def half_width(self, model: str, metric: str, kinds: Sequence[str], level: float,
                   exclude: tuple[Any, Any] | None = None) -> tuple[float, str]:
        """h_val and where it came from: the largest conformal quantile over `kinds` (this model's rows,
        else every model's but at least this model's worst), leaving out the rows of point `exclude`
        ((set, point)); the default band when no kind has enough rows."""
        best: tuple[float, str] | None = None
        for kind in kinds:
            own = [s for s, pt in self.groups.get((model, metric, kind), ()) if pt != exclude]
            q = conformal_quantile(own, level)
            where = f"{kind} {model} n={len(own)}"
            if q is None:
                pooled = [s for (m, met, k), rows in self.groups.items() if met == metric and k == kind
                          for s, pt in rows if pt != exclude]
                q = conformal_quantile(pooled, level)
                where = f"{kind} all models n={len(pooled)}"
                if q is not None and own and max(own) > q:
                    q, where = max(own), f"{kind} {model} worst of n={len(own)}"
            if q is not None and (best is None or q > best[0]):
                best = (q, where)
        if best is None:
            return math.log(DEFAULT_FACTOR), f"default x{DEFAULT_FACTOR:g} (no validation rows: uncalibrated)"
        return best


# -- the band --------------------------------------------------------------------------------------

def combine_half_widths(*parts: float) -> float:
    """sqrt of the sum of squares of the finite parts."""
    return math.sqrt(sum(p * p for p in parts if math.isfinite(p)))


def band(value: float, h: float) -> tuple[float, float]:
    """(value * exp(-h), value * exp(h)); NaN, NaN when value is not a positive finite number (a
    latency with no completions) or h is not finite."""
    if not (math.isfinite(value) and value > 0 and math.isfinite(h)):
        return math.nan, math.nan
    return value * math.exp(-h), value * math.exp(h)


@dataclass(frozen=True)
class PointParts:
    """What a worker measures for one point: replications, their seeds, the noise half-width and the
    one-sd parameter sensitivity per metric."""

    replications: int
    seeds: tuple[int, ...]
    noise: Mapping[str, float]
    param_sd: Mapping[str, float]


def point_parts(results: Sequence[Result], scenario: Scenario, profile: CostProfile, level: float,
                analytic: Callable[..., Result] | None = None) -> PointParts:
    """(a) and (b) of one point from its replications (one for an analytic point)."""
    noise = {m: noise_half_width([getattr(r, m) for r in results], level) for m in BAND_METRICS}
    return PointParts(len(results), tuple(r.scenario.seed for r in results), noise,
                      param_sensitivities(scenario, profile, analytic))


def bands(result: Result, parts: PointParts, errors: ValidationErrors, level: float) -> dict[str, Any]:
    """The band columns of one point (band_columns()), from its value, its parts and the profile's
    validation errors. band_basis names the validation rows behind (c), per metric where they differ."""
    out: dict[str, Any] = {}
    z = z_value(level)
    bases: dict[str, str] = {}
    for metric, short in BAND_METRICS.items():
        h_val, where = errors.half_width(result.scenario.model.name, short,
                                         errors.kinds_for(result.scenario, short), level)
        bases[short] = where
        h = combine_half_widths(parts.noise.get(metric, 0.0), z * parts.param_sd.get(metric, 0.0), h_val)
        out[f"{metric}_lo"], out[f"{metric}_hi"] = band(_metric_value(result, metric), h)
    distinct = dict.fromkeys(bases.values())
    basis = (next(iter(distinct)) if len(distinct) == 1
             else "; ".join(f"{short}: {where}" for short, where in bases.items()))
    out.update(replications=parts.replications, seeds=" ".join(map(str, parts.seeds)), band_level=level,
               band_basis=f"{result.source}; {basis}")
    return out


def predict(scenario: Scenario, profile: CostProfile | None = None, *, policy: BandPolicy | None = None,
            simulate: Callable[..., Result] | None = None,
            use_analytic: bool = False) -> tuple[Result, dict[str, Any]]:
    """One point with its band: the simulated mean over replications (or the analytic Result when
    use_analytic) and the band columns (band_columns()). profile None: simkit.profile.resolve_profile."""
    if not isinstance(scenario, Scenario):
        raise ValueError(f"scenario: expected a Scenario, got {type(scenario).__name__}")
    policy = policy or BandPolicy()
    if not isinstance(policy, BandPolicy):
        raise ValueError(f"policy: expected an experiments.intervals.BandPolicy, got {type(policy).__name__}")
    if not isinstance(profile, CostProfile):
        from simkit.profile import resolve_profile

        profile = resolve_profile(profile)
    if use_analytic:
        from simkit.analytic import analytic

        runs = [analytic(scenario, profile)]
    else:
        if simulate is None:
            from simkit.sim import simulate
        runs = replicate(simulate, scenario, profile, policy)
    result = combine(runs)
    parts = point_parts(runs, scenario, profile, policy.level)
    return result, bands(result, parts, ValidationErrors.of(profile), policy.level)
