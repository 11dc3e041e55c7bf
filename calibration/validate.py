"""Held-out validation (docs/DESIGN.md §7.4): predict points the fit never saw, against the USL baseline.

Held-out kinds (grid.ROLES): "interp" (inside the training grid), "cores" (fit on 1 core, predict 2),
"connections" (fit at <= 1,000 connections, predict 5,000-10,000). For each held-out real run the
table has one row per metric: measured, simulated, relative error, and where the baseline can say
anything, the Universal Scalability Law's prediction and error.

The USL baseline (simkit.analytic.fit_usl) is fitted per (model, work mix, cores) to the same
training points, throughput against connections. What it predicts:
- connections / interp: the fitted curve at the held-out connection count;
- cores: the 1-core curve at that connection count, times the USL capacity ratio
  C(p) = p / (1 + sigma (p - 1) + kappa p (p - 1)) with the same sigma and kappa (Gunther's reading:
  the same contention and coherency terms govern scaling in load and in processors);
- mean latency by Little's law for a closed loop: N / X - think time. The USL says nothing about
  percentiles, RSS or threads, so those rows have no baseline.

The off-grid set (calibration.offgrid) goes through validate() too, with the final profile, no
baseline and its settings as extra columns; write_csv puts both tables in one file.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from calibration.compare import SimBatch, at_run_speed, sim_scenario
from calibration.runs import Run
from simkit.profile import CostProfile
from simkit.result import Result
from simkit.scenario import Scenario

# (Result field, short name in the table)
TABLE_METRICS: tuple[tuple[str, str], ...] = (
    ("throughput_rps", "throughput"),
    ("latency_mean_s", "latency_mean"),
    ("latency_p50_s", "p50"),
    ("latency_p99_s", "p99"),
    ("rss_peak_bytes", "rss"),
    ("threads_peak", "threads"),
)
EXTRAPOLATION_ROLES = ("cores", "connections")


def rel_err(pred: float, meas: float) -> float:
    if not (math.isfinite(meas) and meas > 0 and math.isfinite(pred)):
        return math.nan
    return (pred - meas) / meas


def work_key(s: Scenario) -> tuple[float, float, float]:
    w = s.workload
    return (w.cpu_us, w.gil_us, w.io_us)


def _group(s: Scenario, cores: int | None = None) -> tuple:
    return (s.model.name, work_key(s), s.workload.requests_per_conn, cores or s.hardware.cores)


@dataclass(frozen=True)
class USLBaseline:
    fits: dict[tuple, Any]

    @classmethod
    def fit(cls, train: Sequence[Result]) -> USLBaseline:
        from simkit.analytic import fit_usl

        groups: dict[tuple, list[Result]] = {}
        for r in train:
            if r.throughput_rps > 0:
                groups.setdefault(_group(r.scenario), []).append(r)
        fits = {}
        for key, rs in groups.items():
            n = [float(r.scenario.workload.connections) for r in rs]
            if len(set(n)) < 3:
                continue
            try:
                with warnings.catch_warnings():
                    # A flat curve leaves sigma/kappa undetermined: the fit still predicts, say nothing.
                    warnings.simplefilter("ignore")
                    fits[key] = fit_usl(n, [r.throughput_rps for r in rs])
            except (ValueError, RuntimeError):  # curve_fit may fail to converge: no baseline there
                continue
        return cls(fits)

    def predict(self, s: Scenario) -> tuple[float, float] | None:
        """(throughput, mean latency) or None when no training curve covers this model and mix."""
        n = s.workload.connections
        f = self.fits.get(_group(s))
        if f is not None:
            x = float(f.predict(n))
        else:
            one = self.fits.get(_group(s, cores=1))
            if one is None:
                return None
            p = s.hardware.cores
            capacity = p / (1.0 + one.sigma * (p - 1) + one.kappa * p * (p - 1))
            x = float(one.predict(n)) * capacity
        if not (x > 0 and math.isfinite(x)):
            return None
        lat = max(n / x - s.workload.think_s, 0.0)
        return x, lat


def validate(heldout: Sequence[Run], profile: CostProfile, batch: SimBatch, baseline: USLBaseline | None,
             *, target_requests: int | None = None,
             extra: Callable[[Scenario], dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The held-out table: one row per (held-out run, metric); `point` numbers the runs (their order in
    `heldout` among the ok ones). extra(scenario): more columns for each of that run's rows (the
    off-grid set's settings)."""
    ok = [run for run in heldout if run.ok]
    scen = [sim_scenario(run.result, target_requests) for run in ok]
    sims = batch.run(scen, [at_run_speed(profile, run.result) for run in ok])
    rows: list[dict[str, Any]] = []
    for point, (run, sim) in enumerate(zip(ok, sims, strict=True)):
        real = run.result
        s = real.scenario
        usl = baseline.predict(s) if baseline else None
        more = extra(s) if extra else {}
        for field, short in TABLE_METRICS:
            meas = float(getattr(real, field))
            pred = float(getattr(sim, field)) if isinstance(sim, Result) else math.nan
            row = {
                "point": point, "model": s.model.name, "role": run.point.role, "mix": run.point.mix,
                "cores": s.hardware.cores, "connections": s.workload.connections, "metric": short,
                "measured": meas, "predicted": pred, "rel_err": rel_err(pred, meas),
                "usl_predicted": math.nan, "usl_rel_err": math.nan,
                "sim_error": sim if isinstance(sim, str) else "",
            }
            if usl is not None and short in ("throughput", "latency_mean"):
                u = usl[0] if short == "throughput" else usl[1]
                row.update(usl_predicted=u, usl_rel_err=rel_err(u, meas))
            row.update(more)
            rows.append(row)
    return rows


def median_abs(values: Sequence[float]) -> float:
    vals = [abs(v) for v in values if isinstance(v, float) and math.isfinite(v)]
    return statistics.median(vals) if vals else math.nan


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Median absolute relative errors: per model, overall, and simulator vs USL on extrapolation."""
    def pick(metric: str, **where: Any) -> list[dict[str, Any]]:
        return [r for r in rows if r["metric"] == metric and all(r[k] in v for k, v in where.items())]

    models = sorted({r["model"] for r in rows})
    per_model = {}
    for m in models:
        per_model[m] = {
            metric: median_abs([r["rel_err"] for r in pick(metric, model=(m,))])
            for metric in ("throughput", "p50", "p99", "rss", "threads")
        }
    overall = {metric: median_abs([r["rel_err"] for r in pick(metric)])
               for metric in ("throughput", "latency_mean", "p50", "p99", "rss", "threads")}
    by_role = {role: {metric: median_abs([r["rel_err"] for r in pick(metric, role=(role,))])
                      for metric in ("throughput", "p99")}
               for role in sorted({r["role"] for r in rows})}
    vs_usl = {}
    for metric in ("throughput", "latency_mean"):
        both = [r for r in pick(metric, role=EXTRAPOLATION_ROLES)
                if math.isfinite(r["usl_rel_err"]) and math.isfinite(r["rel_err"])]
        sim_err = median_abs([r["rel_err"] for r in both])
        usl_err = median_abs([r["usl_rel_err"] for r in both])
        vs_usl[metric] = {"points": len(both), "sim_median_abs_err": sim_err, "usl_median_abs_err": usl_err,
                          "sim_beats_usl": bool(both) and sim_err < usl_err}
    return {"per_model": per_model, "overall": overall, "by_role": by_role, "extrapolation_vs_usl": vs_usl,
            "heldout_runs": len({(r["model"], r["role"], r["mix"], r["cores"], r["connections"]) for r in rows})}


def json_safe(value: Any) -> Any:
    """NaN -> None, recursively: JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_csv(rows: Sequence[dict[str, Any]], path, offgrid: Sequence[dict[str, Any]] = ()) -> None:
    """The in-grid held-out rows and the off-grid rows in one CSV, its "set" column saying which."""
    import pandas as pd

    marked = [{"set": "grid", **r} for r in rows] + [{"set": "offgrid", **r} for r in offgrid]
    pd.DataFrame(marked).to_csv(path, index=False)
