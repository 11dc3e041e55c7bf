"""How `serverlab simulate` and `serverlab measure` show one Result: a compact table for a person
(results with units, the inputs in one line), a flat record for machines (JSON, CSV).

A prediction may carry bands `{metric: (lo, hi)}` (e.g. from experiments.intervals): the table shows
"value [lo, hi]"; the record gains `<metric>_lo` / `<metric>_hi` columns, as results.csv names them.
Everything here is pure (strings and rich renderables); printing is the caller's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from simkit import registry

Bands = Mapping[str, tuple[float, float]]

SOURCE_WORDS = {"real": "measured", "sim": "simulated", "analytic": "analytic model"}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def fmt_seconds(value: Any) -> str:
    """A latency in the unit that reads best: us, ms or s ("-" when unmeasured)."""
    if not _finite(value):
        return "-"
    if value < 1e-3:
        return f"{value * 1e6:.0f} us"
    if value < 1:
        return f"{value * 1e3:.2f} ms"
    return f"{value:.3f} s"


def _num(value: Any, digits: int = 0) -> str:
    return f"{value:,.{digits}f}" if _finite(value) else "-"


# metric -> (label, formatter of one value, unit appended after a band)
_METRICS: tuple[tuple[str, str, Any], ...] = (
    ("throughput_rps", "throughput", lambda v: f"{_num(v)} req/s"),
    ("latency_mean_s", "latency mean", fmt_seconds),
    ("latency_p50_s", "latency p50", fmt_seconds),
    ("latency_p90_s", "latency p90", fmt_seconds),
    ("latency_p99_s", "latency p99", fmt_seconds),
    ("latency_p999_s", "latency p99.9", fmt_seconds),
    ("cpu_util", "server CPU", lambda v: f"{_num(v, 2)} cores"),
    ("ctx_switches_per_s", "context switches", lambda v: f"{_num(v)} /s"),
    ("threads_peak", "threads (peak)", _num),
    ("processes_peak", "processes (peak)", _num),
    ("rss_peak_bytes", "memory (peak RSS)", lambda v: f"{_num(v / 2**20, 1)} MiB" if _finite(v) else "-"),
    ("fds_peak", "open files (peak)", _num),
    ("loadgen_cpu_util", "load generator CPU", lambda v: f"{_num(v, 2)} cores"),
)


def _with_band(metric: str, value: Any, fmt, bands: Bands | None) -> str:
    text = fmt(value)
    if bands and metric in bands:
        lo, hi = bands[metric]
        text += f" [{fmt(lo)}, {fmt(hi)}]"
    return text


def inputs_line(scenario) -> str:
    """The scenario in one line: model and its knobs, cores, connections and mode, work, window."""
    m, h, w = scenario.model, scenario.hardware, scenario.workload
    knobs = [f"{k.field}={getattr(m, k.field)}" for k in registry.get(m.name).knobs]
    if any(k.field == "processes" for k in registry.get(m.name).knobs):
        knobs.append(f"dispatch={m.dispatch}")
    if not m.gil:
        knobs.append("no GIL")
    model = m.name + (f" ({', '.join(knobs)})" if knobs else "")
    load = f"{w.connections:,} connections, {w.mode} loop"
    if w.mode == "open":
        load += f" at {w.rate_rps:,.0f} req/s ({w.arrival})"
    if w.think_s:
        load += f", think {fmt_seconds(w.think_s)}"
    if w.requests_per_conn is not None:
        load += f", {w.requests_per_conn} req/conn"
    if w.idle_connections:
        load += f", +{w.idle_connections:,} idle"
    work = f"work cpu {w.cpu_us:g} us, gil {w.gil_us:g} us, io {w.io_us:g} us, {w.resp_bytes:,} B response"
    window = f"{w.duration_s:g} s after {w.warmup_s:g} s warm-up, seed {scenario.seed}"
    cores = f"{h.cores} core" + ("s" if h.cores != 1 else "")
    return f"{model} | {cores} | {load} | {work} | {window}"


def errors_text(result) -> str:
    return (f"{result.errors:,} (refused {result.errors_refused:,}, timeout {result.errors_timeout:,}, "
            f"reset {result.errors_reset:,})")


def result_rows(result, bands: Bands | None = None) -> list[tuple[str, str]]:
    """(label, value with unit) for every Result field a reader needs, in reading order."""
    rows = [(label, _with_band(metric, getattr(result, metric), fmt, bands)) for metric, label, fmt in _METRICS]
    rows[1:1] = [
        ("completed", _with_band("completed", result.completed, lambda v: f"{_num(v)} requests", bands)),
        ("errors", errors_text(result)),
        ("in flight at end", _num(result.in_flight)),
    ]
    rows.append(("failure", result.failure or "none"))
    profile = getattr(result, "profile", "")
    if profile:
        rows.append(("profile", str(profile)))
    return rows


def result_table(result, bands: Bands | None = None):
    """What a person reads: the inputs line, then a rich Table titled with the model and the source,
    one row per result."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    title = f"{result.scenario.model.name}: {SOURCE_WORDS.get(result.source, result.source)}"
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("result", style="bold")
    table.add_column("value", justify="right")
    for label, value in result_rows(result, bands):
        style = "red" if label == "failure" and result.failure else None
        table.add_row(label, value, style=style)
    return Group(Text(inputs_line(result.scenario)), table)


def result_record(result, bands: Bands | None = None) -> dict[str, Any]:
    """The flat Result row (simkit.result columns; NaN -> None) plus `<metric>_lo` / `<metric>_hi`."""
    row = dict(result.to_row())
    for metric, (lo, hi) in (bands or {}).items():
        row[f"{metric}_lo"], row[f"{metric}_hi"] = lo, hi
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


def result_json(result, bands: Bands | None = None) -> str:
    import json

    return json.dumps(result_record(result, bands))


def result_csv(result, bands: Bands | None = None, header: bool = True) -> str:
    """The record as CSV text: a header line (when asked) and one row."""
    import csv
    import io

    record = result_record(result, bands)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(record), lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerow(record)
    return buf.getvalue()
