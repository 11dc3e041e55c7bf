"""Do the prediction bands hold? Coverage on a calibration's held-out points (docs/DESIGN.md §7.4).

Each held-out point (the grid's held-out runs and the off-grid runs) gets the band that
experiments.intervals would give its prediction: h = sqrt((z * param_sd)^2 + h_val^2) in log space
around the predicted value. param_sd is the analytic sensitivity to the parameters' sds of the
profile that made the prediction (the training fit for grid points, the final profile for off-grid
ones). h_val is the conformal quantile of the validation errors of the point's own kind (its role:
interp, cores, connections, or offgrid with its load mode: experiments.intervals.row_kind) computed WITHOUT that point's rows (leave-one-out), so the
point never vouches for itself. There is no separate noise term: each prediction is one seed, and
the validation errors it is compared with were single-seed predictions too.

Coverage is the fraction of points whose measured throughput (and p99) lies inside the band, per
model and overall. A point whose prediction failed counts as outside; one with nothing measured
(a p99 with no completions) is left out and counted apart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from experiments.intervals import (
    BAND_METRICS,
    BandPolicy,
    ValidationErrors,
    band,
    combine_half_widths,
    number_points,
    param_sensitivities,
    row_kind,
    z_value,
)

COVERAGE_METRICS = ("throughput", "p99")
SHORT_TO_FIELD = {short: field for field, short in BAND_METRICS.items()}
BAR = 0.8  # issue 12's acceptance: at least 80% of held-out points inside their bands
DEFAULT_LEVEL = BandPolicy().level  # the level the what-if bands use


def heldout_bands(rows: Sequence[Mapping[str, Any]], param_sd: Mapping[tuple[Any, Any], Mapping[str, float]],
                  level: float, metrics: Sequence[str] = COVERAGE_METRICS) -> list[dict[str, Any]]:
    """One row per held-out point and metric: predicted, measured, lo, hi, inside, and the parts.
    rows: validation rows with `set` (grid | offgrid); `point` is filled in where missing.
    param_sd[(set, point)][field]: one-sd parameter sensitivity (experiments.intervals.param_sensitivities);
    a point without one gets 0."""
    rows = number_points(rows)
    errors = ValidationErrors.from_rows(rows)
    z = z_value(level)
    out = []
    for r in rows:
        if r.get("metric") not in metrics:
            continue
        key = (r.get("set"), r.get("point"))
        field = SHORT_TO_FIELD[r["metric"]]
        h_val, basis = errors.half_width(str(r["model"]), r["metric"], (row_kind(r),), level, exclude=key)
        h_param = z * float((param_sd.get(key) or {}).get(field, 0.0))
        h = combine_half_widths(h_param, h_val)
        meas, pred = _num(r.get("measured")), _num(r.get("predicted"))
        lo, hi = band(pred, h)
        measured_ok = math.isfinite(meas) and meas > 0
        inside = bool(measured_ok and math.isfinite(lo) and lo <= meas <= hi)
        out.append({"set": r["set"], "point": r["point"], "model": r["model"], "role": r["role"],
                    "cores": r.get("cores"), "connections": r.get("connections"), "metric": r["metric"],
                    "measured": meas, "predicted": pred, "lo": lo, "hi": hi,
                    "inside": inside if measured_ok else None, "h_val": h_val, "h_param": h_param,
                    "h": h, "val_basis": basis})
    return out


def param_sds(runs: Sequence[Any], profile: Any, set_name: str) -> dict[tuple[str, int], dict[str, float]]:
    """param_sd entries for the runs calibration.validate numbered 0.. (its `point`), each run's
    scenario priced with the profile that predicted it."""
    return {(set_name, i): param_sensitivities(run.result.scenario, profile) for i, run in enumerate(runs)}


def coverage(grid_rows: Sequence[Mapping[str, Any]], grid_runs: Sequence[Any], grid_profile: Any,
             off_rows: Sequence[Mapping[str, Any]] = (), off_runs: Sequence[Any] = (), off_profile: Any = None,
             level: float = DEFAULT_LEVEL) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Band coverage of a calibration's held-out points: (per point and metric rows, summary).
    grid_runs / off_runs: the ok runs validate() numbered, in its order; each set's profile is the one
    that predicted it (the training fit for the grid's held-out points, the final one off-grid)."""
    psd = param_sds(grid_runs, grid_profile, "grid")
    if off_runs:
        psd.update(param_sds(off_runs, off_profile, "offgrid"))
    rows = [{"set": "grid", **r} for r in grid_rows] + [{"set": "offgrid", **r} for r in off_rows]
    cov = heldout_bands(rows, psd, level)
    return cov, summarize_coverage(cov, level)


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def summarize_coverage(cov: Sequence[Mapping[str, Any]], level: float) -> dict[str, Any]:
    """Fractions inside per model and overall, for each metric and for both at once (a point counts for
    `both` when each of its metrics has a measurement), and per set (grid, offgrid)."""
    def frac(sel: list[Mapping[str, Any]]) -> dict[str, Any]:
        judged = [c for c in sel if c["inside"] is not None]
        inside = sum(bool(c["inside"]) for c in judged)
        return {"inside": inside, "n": len(judged), "fraction": inside / len(judged) if judged else math.nan,
                "unmeasured": len(sel) - len(judged)}

    def block(sel: list[Mapping[str, Any]]) -> dict[str, Any]:
        out = {m: frac([c for c in sel if c["metric"] == m]) for m in COVERAGE_METRICS}
        by_point: dict[tuple, list] = {}
        for c in sel:
            by_point.setdefault((c["set"], c["point"]), []).append(c)
        both = [{"inside": all(c["inside"] for c in cs) if all(c["inside"] is not None for c in cs) else None}
                for cs in by_point.values()]
        out["both"] = frac(both)
        return out

    models = sorted({c["model"] for c in cov})
    return {"level": level, "bar": BAR,
            "per_model": {m: block([c for c in cov if c["model"] == m]) for m in models},
            "per_set": {s: block([c for c in cov if c["set"] == s]) for s in sorted({c["set"] for c in cov})},
            "overall": block(list(cov))}


def format_coverage(summary: Mapping[str, Any]) -> str:
    """The coverage table as plain text (CLI, README)."""
    def cell(f: Mapping[str, Any]) -> str:
        if not f["n"]:
            return "   n/a    "
        return f"{100 * f['fraction']:4.0f}% ({f['inside']}/{f['n']})".ljust(14)

    lines = [f"band coverage of held-out points (measured inside the {100 * summary['level']:.0f}% band; "
             f"bar {100 * summary['bar']:.0f}%, leave-one-out)",
             f"{'':22s} {'throughput':14s} {'p99':14s} {'both':14s}"]
    rows = [*summary["per_model"].items(), *((f"set: {s}", b) for s, b in summary["per_set"].items()),
            ("all held-out points", summary["overall"])]
    for name, b in rows:
        lines.append(f"{name:22s} {cell(b['throughput'])} {cell(b['p99'])} {cell(b['both'])}")
    o = summary["overall"]
    verdict = all(o[m]["n"] and o[m]["fraction"] >= summary["bar"] for m in COVERAGE_METRICS)
    lines.append("meets the bar" if verdict else "BELOW THE BAR: the bands are too narrow for these points")
    return "\n".join(lines)


def write_csv(cov: Sequence[Mapping[str, Any]], path) -> None:
    import pandas as pd

    pd.DataFrame(list(cov)).to_csv(path, index=False)
