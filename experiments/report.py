"""Write a what-if report: index.html (self-contained), report.md, results.csv and PNG plots.

Input is a sweep frame (simkit.result.columns()) plus the SLO, the memory budget and the profile
that produced it. `report_data` computes everything the report says, once (capacity, winner map,
recommendation, validation tables, notes; the planning itself is experiments.planning);
`render_markdown` and `render_html` lay the same data out, `write_plots` draws the figures and
`write_report` composes them. Plots use matplotlib's object API on the Agg canvas (no pyplot global
state, so report writing is safe in threads and on machines without a display). Model colours and
order come from simkit.registry.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from experiments.planning import (
    EXTRAPOLATION_FLAG_X,
    REASONS,
    Recommendation,
    calibrated_range,
    capacity,
    extrapolation,
    model_errors,
    recommend,
    winner_map,
)
from simkit import registry
from simkit.profile import CostProfile
from simkit.scenario import available_cores

MD_VALIDATION_ROWS = 60  # report.md lists this many held-out rows when they are not in calibration's long format


@dataclass(frozen=True)
class ReportInputs:
    frame: pd.DataFrame
    slo_p99_s: float
    memory_bytes: int
    profile: CostProfile
    profile_label: str  # where the profile came from (a path, or "built-in default")
    host: str
    date: str
    title: str = "serverlab what-if"
    workload_lines: Sequence[str] = ()  # plain-text description of the workload
    max_error_rate: float = 1e-3
    elapsed_s: float | None = None
    notes: Sequence[str] = field(default_factory=tuple)


@dataclass(frozen=True)
class ReportFiles:
    directory: Path
    html: Path
    markdown: Path
    csv: Path
    plots: tuple[Path, ...]
    recommendation: Recommendation


@dataclass(frozen=True)
class Table:
    headers: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]


@dataclass(frozen=True)
class Plot:
    filename: str  # a PNG in the report directory
    caption: str

    @property
    def stem(self) -> str:
        return Path(self.filename).stem


@dataclass(frozen=True)
class ReportData:
    """What the report says, independent of how it is laid out (both renderers read only this)."""

    title: str
    host: str
    date: str
    warning: str  # the calibration banner; "" when the profile was calibrated on this host
    slo_p99_s: float
    memory_bytes: int
    slo_text: str
    frame: pd.DataFrame  # the sweep
    results: pd.DataFrame  # the sweep with its extrapolation factors: results.csv
    capacity: pd.DataFrame
    wins: pd.DataFrame
    recommendation: Recommendation
    capacity_table: Table
    reasons: tuple[tuple[str, str], ...]  # the capacity reasons' legend
    plots: tuple[Plot, ...]
    extrapolation_intro: str
    extrapolation_table: Table
    validation_rows: tuple[dict[str, Any], ...]  # the profile's held-out rows (calibration_validation.csv)
    validation_text: str  # the intro, or the warning that there is no validation
    validation_summary: tuple[str, ...]  # "median |rel_err| = ..." lines
    validation_pivot: Table | None  # median error per model and metric, when the rows allow it
    validation_table: Table | None  # every held-out row
    about: tuple[str, ...]


def _short(model: str) -> str:
    return registry.get(model).short


def _colour(model: str) -> str:
    return registry.get(model).colour


# -- plots -------------------------------------------------------------------------------------

def _figure(n_panels: int, width_per: float = 4.2, height: float = 3.4) -> tuple[Figure, list]:
    cols = min(n_panels, 3)
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(width_per * cols, height * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n_panels)]
    return fig, axes


def _spread(values: Sequence, k: int) -> list:
    """Up to k values, evenly spread, always keeping the first and last."""
    values = list(values)
    if len(values) <= k:
        return values
    idx = sorted({round(i * (len(values) - 1) / (k - 1)) for i in range(k)})
    return [values[i] for i in idx]


def _per_model_lines(ax, sub: pd.DataFrame, x: str, y: str, scale: float = 1.0, logy: bool = True) -> None:
    for model in [m for m in registry.names() if m in set(sub["model"])]:
        d = sub[sub["model"] == model].sort_values(x)
        vals = d[y].astype(float) * scale
        if logy:  # a zero (nothing completed) cannot sit on a log axis: leave a gap, not a cliff
            vals = vals.where(vals > 0)
        ax.plot(d[x], vals, marker="o", ms=3, lw=1.3, color=_colour(model), label=_short(model))
        lo, hi = f"{y}_lo", f"{y}_hi"
        if lo in d and hi in d:  # the prediction band (experiments.intervals), where the frame has one
            lows, highs = d[lo].astype(float) * scale, d[hi].astype(float) * scale
            if logy:
                lows, highs = lows.where(lows > 0), highs.where(highs > 0)
            ax.fill_between(d[x], lows, highs, color=_colour(model), alpha=0.12, lw=0)
        analytic = d["source"] == "analytic"
        if analytic.any():  # hollow markers: answered by the queueing approximation, not simulated
            ax.plot(d[x][analytic], vals[analytic], "o", ms=7, mfc="white", color=_colour(model))
        bad = d["failure"].fillna("") != ""
        if bad.any():
            ax.plot(d[x][bad], vals[bad], "x", color=_colour(model), ms=7)


def plot_vs_connections(frame: pd.DataFrame, y: str, ylabel: str, path: Path, *, scale: float = 1.0,
                        hline: float | None = None, hlabel: str = "", logy: bool = True) -> Path:
    cores = _spread(sorted(frame["cores"].unique()), 6)
    fig, axes = _figure(len(cores))
    for ax, c in zip(axes, cores, strict=True):
        _per_model_lines(ax, frame[frame["cores"] == c], "connections", y, scale, logy)
        ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        if hline is not None:
            ax.axhline(hline, color="k", ls="--", lw=1, label=hlabel)
        ax.set_title(f"{c} cores")
        ax.set_xlabel("connections")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle(f"{ylabel} vs connections (shaded = prediction band, x = failure reported, "
                 "hollow = simkit.analytic, not simulated)", fontsize=9)
    fig.savefig(path, dpi=90)
    return path


def plot_scaling(frame: pd.DataFrame, path: Path) -> Path:
    # Scaling shows at load: the upper half of the connection counts (at 10 clients nothing scales).
    all_conns = sorted(frame["connections"].unique())
    conns = _spread(all_conns[len(all_conns) // 2:], 3)
    fig, axes = _figure(len(conns))
    for ax, n in zip(axes, conns, strict=True):
        sub = frame[frame["connections"] == n]
        _per_model_lines(ax, sub, "cores", "throughput_rps")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{n:,} connections")
        ax.set_xlabel("cores")
        ax.set_ylabel("throughput (req/s)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle("Scaling: throughput vs cores (shaded = prediction band, x = failure reported, "
                 "hollow = simkit.analytic)", fontsize=9)
    fig.savefig(path, dpi=90)
    return path


def plot_winner_map(wins: pd.DataFrame, path: Path, slo_text: str) -> Path:
    conns = sorted(wins["connections"].unique())
    cores = sorted(wins["cores"].unique())
    names = registry.names()
    codes = {m: i for i, m in enumerate(names)}
    grid = np.full((len(conns), len(cores)), np.nan)
    labels = [["" for _ in cores] for _ in conns]
    for r in wins.itertuples(index=False):
        i, j = conns.index(r.connections), cores.index(r.cores)
        if r.winner:
            grid[i, j] = codes[r.winner]
            # "!": the winner's calibration error is above the bars (planning.error_warning)
            labels[i][j] = _short(r.winner) + ("!" if getattr(r, "warning", "") else "")
        else:
            labels[i][j] = "none"
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap([_colour(m) for m in names]).with_extremes(bad="#eeeeee")
    fig = Figure(figsize=(1.0 + 0.9 * len(cores), 1.0 + 0.5 * len(conns)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=-0.5, vmax=len(names) - 0.5, aspect="auto",
              origin="lower")
    for i in range(len(conns)):
        for j in range(len(cores)):
            ax.text(j, i, labels[i][j], ha="center", va="center", fontsize=8,
                    color="black" if labels[i][j] == "none" else "white")
    ax.set_xticks(range(len(cores)), [str(c) for c in cores])
    ax.set_yticks(range(len(conns)), [f"{n:,}" for n in conns])
    ax.set_xlabel("cores")
    ax.set_ylabel("connections")
    ax.set_title(f"Winner map: highest throughput meeting {slo_text}", fontsize=9)
    fig.savefig(path, dpi=90)
    return path


# -- tables ------------------------------------------------------------------------------------

def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return "-"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.4g}"
    return str(v)


def _md_table(table: Table) -> str:
    out = ["| " + " | ".join(table.headers) + " |", "|" + "---|" * len(table.headers)]
    out += ["| " + " | ".join(_fmt(v).replace("|", "/") for v in r) + " |" for r in table.rows]
    return "\n".join(out)


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r) + "</tr>" for r in table.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def validation_rows(profile: CostProfile) -> list[dict[str, Any]]:
    return [r for r in profile.validation if isinstance(r, dict)]


def validation_table(profile: CostProfile, limit: int | None = None) -> tuple[list[str], list[list[Any]]]:
    """The profile's held-out validation rows as a table (columns as calibration wrote them)."""
    rows = validation_rows(profile)
    if not rows:
        return [], []
    headers: list[str] = []
    for r in rows:
        headers += [k for k in r if k not in headers and not isinstance(r[k], (dict, list))]
    return headers, [[r.get(h) for h in headers] for r in rows[:limit]]


def validation_pivot(profile: CostProfile) -> tuple[list[str], list[list[Any]]]:
    """Median |rel_err| per model (rows) and metric (columns), with the held-out point count, when
    the rows are calibration's long format (model, metric, rel_err); else empty."""
    rows = validation_rows(profile)
    frame = pd.DataFrame(rows)
    if frame.empty or not {"model", "metric", "rel_err"} <= set(frame.columns):
        return [], []
    frame = frame.assign(abs_err=pd.to_numeric(frame["rel_err"], errors="coerce").abs())
    metrics = list(dict.fromkeys(frame["metric"]))
    table = frame.pivot_table(index="model", columns="metric", values="abs_err", aggfunc="median")
    counts = frame.dropna(subset=["abs_err"]).groupby("model")["abs_err"].size()
    out = []
    for model in table.index:
        out.append([model] + [_pct(table.loc[model].get(m)) for m in metrics] + [int(counts.get(model, 0))])
    overall = frame.groupby("metric")["abs_err"].median()
    out.append(["all models"] + [_pct(overall.get(m)) for m in metrics] + [int(frame["abs_err"].notna().sum())])
    return ["model"] + [f"{m} median abs err" for m in metrics] + ["rows"], out


def _pct(v: Any) -> str:
    return "-" if v is None or not isinstance(v, (int, float)) or not math.isfinite(v) else f"{100 * v:.0f}%"


def validation_summary(profile: CostProfile) -> list[tuple[str, float, int]]:
    """Median |relative error| of each error-like numeric column ("*err*"), over all rows."""
    rows = validation_rows(profile)
    if not rows:
        return []
    frame = pd.DataFrame(rows)
    out = []
    for col in frame.columns:
        if "err" in col.lower():
            vals = pd.to_numeric(frame[col], errors="coerce").dropna().abs()
            if not vals.empty:
                out.append((col, float(vals.median()), int(len(vals))))
    return out


# -- the report: its data ---------------------------------------------------------------------

PLOT_FILES = ("throughput_vs_connections.png", "p99_vs_connections.png", "memory_vs_connections.png",
              "scaling_vs_cores.png", "winner_map.png")


def report_data(inputs: ReportInputs) -> ReportData:
    """Everything the report says, computed once from the inputs (no I/O)."""
    frame = inputs.frame.reset_index(drop=True)
    slo, mem = inputs.slo_p99_s, inputs.memory_bytes
    slo_text = f"p99 <= {slo * 1e3:.3g} ms, RSS <= {mem / 2**30:.3g} GiB"
    profile = inputs.profile

    # Request parsing holds the GIL too: charge it when telling a GIL limit from other latency.
    gil_overhead_s = profile["parse_s"]
    # The calibrated range and each model's held-out error: the recommendation says which of its
    # figures lie past the range, and warns about models whose calibration error is above the bars.
    cal_cores, cal_conns = calibrated_range(profile.validation, available_cores(), _box_connections(profile))
    errors = model_errors(validation_rows(profile)) if validation_rows(profile) else None
    cap = capacity(frame, slo, mem, max_error_rate=inputs.max_error_rate, gil_overhead_s=gil_overhead_s)
    wins = winner_map(frame, slo, mem, inputs.max_error_rate, errors=errors)
    rec = recommend(frame, slo, mem, inputs.max_error_rate, gil_overhead_s, cap=cap, wins=wins,
                    calibrated=(cal_cores, cal_conns), errors=errors)

    cap_table = Table(
        ("model", "meets SLO", "max connections", "on cores", "req/s there", "p99 there vs SLO", "source",
         "breaks at connections", "on cores", "reason", "why"),
        tuple((r.model, r.meets_slo, r.max_connections, r.cores, r.throughput_rps, r.verdict, r.source,
               r.breaks_at_connections, r.breaks_at_cores, r.reason, r.why) for r in cap.itertuples()),
    )
    captions = (
        "Throughput vs connections, one panel per core count. Hollow markers: points answered by "
        "simkit.analytic instead of the simulator; x: the run reported a failure.",
        f"p99 latency vs connections; dashed line: the SLO ({slo * 1e3:.3g} ms).",
        f"Peak RSS vs connections; dashed line: the budget ({mem / 2**30:.3g} GiB).",
        "Throughput vs cores at a few connection counts.",
        "Which model serves each (connections, cores) cell best under the SLO and budget "
        "('none': no model meets it; '!': the winner's calibration error is above the bars, see the "
        "recommendation's warnings).",
    )
    plots = tuple(Plot(name, caption) for name, caption in zip(PLOT_FILES, captions, strict=True))

    # Extrapolation: the factor depends only on (cores, connections): show that grid.
    range_from = "the profile's validation rows" if any(
        isinstance(r, dict) and ("cores" in r or "connections" in r) for r in profile.validation
    ) else "this box (the profile lists no calibrated points)"
    ext = extrapolation(frame, cal_cores, cal_conns)
    conns = sorted(frame["connections"].unique())
    cores = sorted(frame["cores"].unique())
    ext_rows = []
    for n in conns:
        row: list[Any] = [f"{n:,}"]
        for c in cores:
            x = max(c / cal_cores, n / cal_conns, 1.0)
            row.append(f"{x:.3g}x" + (" !" if x > EXTRAPOLATION_FLAG_X else ""))
        ext_rows.append(tuple(row))
    n_flag = int((ext > EXTRAPOLATION_FLAG_X).sum())
    ext_intro = (f"Calibrated range (from {range_from}): up to {cal_cores} cores and {cal_conns:,} connections. "
                 f"Each prediction's factor is max(cores / {cal_cores}, connections / {cal_conns:,}, 1). "
                 f"{n_flag} of {len(frame)} predictions extrapolate past {EXTRAPOLATION_FLAG_X:g}x (marked !): "
                 "treat them as the model's mechanism speaking, not as measurements. Per-row factors are in "
                 "results.csv (extrapolation_x, past_10x).")

    rows = validation_rows(profile)
    if rows:
        vh, vrows = validation_table(profile)
        ph, prows = validation_pivot(profile)
        val_text = (f"Held-out points the fit never saw ({len(vrows)} rows: measured vs predicted on this host). "
                    "Full table: calibration_validation.csv.")
        val_summary = tuple(f"median |{c}| = {v:.3g} over {k} rows" for c, v, k in validation_summary(profile))
        val_pivot = Table(tuple(ph), tuple(tuple(r) for r in prows)) if prows else None
        val_table = Table(tuple(vh), tuple(tuple(r) for r in vrows))
    else:
        val_text = "The profile carries no validation table: these predictions have NO measured error bar on this host."
        val_summary, val_pivot, val_table = (), None, None

    src = frame["source"].value_counts().to_dict()
    src_text = ", ".join(f"{v} rows from {k}" for k, v in sorted(src.items()))
    about = [f"Host: {inputs.host}; date: {inputs.date}; profile: {inputs.profile_label}.",
             f"Grid: {frame['model'].nunique()} models x {len(conns)} connection counts x {len(cores)} core counts "
             f"= {len(frame)} points ({src_text}).",
             f"Pass rule: p99 <= {slo * 1e3:.3g} ms, no failure, errors <= {inputs.max_error_rate:.2%} of requests, "
             f"peak RSS <= {mem / 2**30:.3g} GiB."]
    if inputs.elapsed_s is not None:
        about.append(f"Sweep wall time: {inputs.elapsed_s:.1f} s.")
    about += list(inputs.workload_lines) + list(inputs.notes)
    target_warnings, target_about = target_notes(profile, frame)
    about += target_about

    return ReportData(
        title=inputs.title, host=inputs.host, date=inputs.date,
        warning=" ".join(w for w in (_calibration_warning(profile, inputs.profile_label), *target_warnings) if w),
        slo_p99_s=slo, memory_bytes=mem,
        slo_text=slo_text, frame=frame,
        results=frame.assign(extrapolation_x=ext.round(2), past_10x=ext > EXTRAPOLATION_FLAG_X),
        capacity=cap, wins=wins, recommendation=rec, capacity_table=cap_table, reasons=tuple(REASONS.items()),
        plots=plots, extrapolation_intro=ext_intro,
        extrapolation_table=Table(("connections \\ cores", *(str(c) for c in cores)), tuple(ext_rows)),
        validation_rows=tuple(rows), validation_text=val_text, validation_summary=val_summary,
        validation_pivot=val_pivot, validation_table=val_table, about=tuple(about),
    )


# -- the report: its two renderings --------------------------------------------------------------

_VALIDATION_TITLE = "Calibration error (held-out validation)"


def render_markdown(data: ReportData) -> str:
    """report.md: the plots are referenced by file name."""
    rec = data.recommendation
    md = [f"# {data.title}: {data.host}, {data.date}", ""]
    if data.warning:
        md += [f"> **{data.warning}**", ""]

    def section(title: str, body: str) -> None:
        md.extend([f"## {title}", "", body, ""])

    head = f"**Recommended: {rec.model}**\n\n" if rec.model else "**No model meets the SLO in this sweep.**\n\n"
    doubts = "".join(f"\n- **Warning:** {w}" for w in rec.warnings)
    section("Recommendation", head + "\n".join(f"- {r}" for r in rec.reasons) + doubts)
    legend = "\n".join(f"- `{k}`: {v}" for k, v in data.reasons)
    section(f"Capacity per model ({data.slo_text})", _md_table(data.capacity_table) + "\n\nReasons:\n" + legend)
    section("Plots", "\n\n".join(f"![{p.stem}]({p.filename})\n\n{p.caption}" for p in data.plots))
    section("How far each prediction extrapolates",
            data.extrapolation_intro + "\n\n" + _md_table(data.extrapolation_table))
    if data.validation_table is not None:
        table = data.validation_pivot or Table(data.validation_table.headers,
                                               data.validation_table.rows[:MD_VALIDATION_ROWS])
        summary = "\n".join(f"- {line}" for line in data.validation_summary)
        section(_VALIDATION_TITLE, f"{data.validation_text}\n\n{summary}\n\n{_md_table(table)}")
    else:
        section(_VALIDATION_TITLE, data.validation_text)
    section("About this run", "\n".join(f"- {a}" for a in data.about))
    return "\n".join(md)


def render_html(data: ReportData, images: Mapping[str, bytes]) -> str:
    """index.html, self-contained: `images` (PNG bytes by plot file name) are embedded as data URIs."""
    esc = html.escape
    rec = data.recommendation
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{esc(data.title)} - {esc(data.host)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(data.title)}: {esc(data.host)}, {esc(data.date)}</h1>",
        f"<div class='banner'>{esc(data.warning)}</div>" if data.warning else "",
    ]

    def section(title: str, body: str) -> None:
        parts.append(f"<h2>{esc(title)}</h2>{body}")

    head = (f"<p class='rec'>Recommended: <b>{esc(rec.model)}</b></p>" if rec.model
            else "<p class='rec'>No model meets the SLO in this sweep.</p>")
    doubts = "".join(f"<li class='warn'>Warning: {esc(w)}</li>" for w in rec.warnings)
    section("Recommendation", head + _html_list(rec.reasons) + (f"<ul>{doubts}</ul>" if doubts else ""))
    section(f"Capacity per model ({data.slo_text})", _html_table(data.capacity_table) + "<ul>" + "".join(
        f"<li><code>{k}</code>: {esc(v)}</li>" for k, v in data.reasons) + "</ul>")
    section("Plots", "".join(
        f"<figure><img alt='{p.stem}' src='data:image/png;base64,{base64.b64encode(images[p.filename]).decode()}'>"
        f"<figcaption>{esc(p.caption)}</figcaption></figure>" for p in data.plots))
    section("How far each prediction extrapolates",
            f"<p>{esc(data.extrapolation_intro)}</p>" + _html_table(data.extrapolation_table))
    if data.validation_table is not None:
        body = (f"<p>{esc(data.validation_text)}</p>" + _html_list(data.validation_summary)
                + (_html_table(data.validation_pivot) if data.validation_pivot else "")
                + f"<details><summary>every held-out row ({len(data.validation_table.rows)})</summary>"
                f"{_html_table(data.validation_table)}</details>")
    else:
        body = f"<p class='warn'>{esc(data.validation_text)}</p>"
    section(_VALIDATION_TITLE, body)
    section("About this run", _html_list(data.about))
    parts.append("</body></html>")
    return "".join(parts)


def _html_list(items: Sequence[str]) -> str:
    return "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>"


def write_plots(data: ReportData, out: Path) -> tuple[Path, ...]:
    """Draw data.plots into `out`, in their order."""
    slo, mem, frame = data.slo_p99_s, data.memory_bytes, data.frame
    draw = {
        "throughput_vs_connections.png": lambda path: plot_vs_connections(
            frame, "throughput_rps", "throughput (req/s)", path),
        "p99_vs_connections.png": lambda path: plot_vs_connections(
            frame, "latency_p99_s", "p99 latency (ms)", path, scale=1e3, hline=slo * 1e3, hlabel="SLO"),
        "memory_vs_connections.png": lambda path: plot_vs_connections(
            frame, "rss_peak_bytes", "peak RSS (GiB)", path, scale=1 / 2**30, hline=mem / 2**30, hlabel="budget"),
        "scaling_vs_cores.png": lambda path: plot_scaling(frame, path),
        "winner_map.png": lambda path: plot_winner_map(data.wins, path, data.slo_text),
    }
    return tuple(draw[p.filename](out / p.filename) for p in data.plots)


def write_report(inputs: ReportInputs, out_dir: str | Path) -> ReportFiles:
    """report_data, then results.csv, the plots, report.md and index.html in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = report_data(inputs)
    csv_path = out / "results.csv"
    data.results.to_csv(csv_path, index=False)
    data.results.to_parquet(out / "results.parquet", index=False)  # typed columns, for pandas / DuckDB / Arrow
    if data.validation_rows:
        pd.DataFrame(list(data.validation_rows)).to_csv(out / "calibration_validation.csv", index=False)
    plots = write_plots(data, out)
    md_path = out / "report.md"
    md_path.write_text(render_markdown(data))
    html_path = out / "index.html"
    html_path.write_text(render_html(data, {p.name: p.read_bytes() for p in plots}))
    return ReportFiles(out, html_path, md_path, csv_path, plots, data.recommendation)


def _box_connections(profile: CostProfile) -> int:
    """Connections this box was seen to carry when no calibrated range is recorded: the profile's
    note if calibration left one, else 1,000 (the quick calibration grid's top, docs/DESIGN.md §7)."""
    v = profile.notes.get("max_connections") if isinstance(profile.notes, dict) else None
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 1 else 1000


def target_notes(profile: CostProfile, frame: pd.DataFrame | None = None) -> tuple[list[str], list[str]]:
    """(warnings, about lines) for a profile calibrated to an external server (calibration.target writes
    notes["target"]): its honesty warning when the server did not behave like its model, a warning when
    the sweep's GIL setting is not the server's, and what the profile describes."""
    t = profile.notes.get("target") if isinstance(profile.notes, dict) else None
    if not isinstance(t, dict):
        return [], []
    gil = t.get("gil")
    warns = [f"WARNING: {t['warning']}"] if t.get("warning") else []
    if frame is not None and "gil" in frame and isinstance(gil, bool) and frame["gil"].astype(bool).ne(gil).any():
        warns.append(f"WARNING: the profile was fitted to a server {'with' if gil else 'without'} a GIL, but this "
                     f"sweep simulates {'no ' if gil else ''}GIL (set gil = {str(gil).lower()} under [sizing]).")
    about = [f"Profile fitted to an external server: {t.get('command')} as {t.get('as_model')} "
             f"({'GIL' if gil else 'no GIL'}); verdict: {t.get('verdict', 'unknown')}. Its per-request cost "
             "(parse_s and the syscall costs) is charged to every model in this sweep, on top of the workload's "
             "work parameters."]
    return warns, about


def _calibration_warning(profile: CostProfile, label: str) -> str:
    """The banner's text: "" when the profile was calibrated on this host."""
    if profile.calibrated:
        foreign = profile.fingerprint_mismatch()
        if not foreign:
            return ""
        return (f"WARNING: the cost profile ({label}) was calibrated on another host (differs in: "
                f"{', '.join(foreign)}). Predictions carry that host's costs.")
    return (f"WARNING: UNCALIBRATED PROFILE ({label}). Every cost is a built-in default, not measured on "
            "this host: the numbers below show the mechanisms, not this machine. Run `serverlab calibrate` "
            "(or `serverlab demo`, which calibrates first) before trusting them.")


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1300px;margin:1em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:12px;margin:0.5em 0}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
th{background:#f3f3f3} tr.flag td{background:#fff3cd}
figure{margin:1em 0} img{max-width:100%} figcaption{font-size:13px;color:#555}
.banner{background:#b00020;color:#fff;font-weight:bold;padding:1em;font-size:1.2em;margin:1em 0}
.warn{color:#b00020;font-weight:bold} .rec{font-size:1.3em}
"""
