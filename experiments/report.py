"""Write a what-if report: index.html (self-contained), report.md, results.csv and PNG plots.

Input is a sweep frame (simkit.result.columns()) plus the SLO, the memory budget and the profile
that produced it. Everything the report says is computed by experiments.planning; this module
only lays it out. Plots use matplotlib's object API on the Agg canvas (no pyplot global state, so
report writing is safe in threads and on machines without a display).
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from experiments.planning import (
    REASONS,
    Recommendation,
    calibrated_range,
    capacity,
    extrapolation,
    recommend,
    winner_map,
)
from simkit.profile import CostProfile
from simkit.scenario import MODEL_NAMES, available_cores

EXTRAPOLATION_FLAG_X = 10.0
_COLORS = dict(zip(MODEL_NAMES, ("#7f7f7f", "#d62728", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b"),
                   strict=True))


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


def _short(model: str) -> str:
    return model.split("_", 1)[0]


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
    for model in [m for m in MODEL_NAMES if m in set(sub["model"])]:
        d = sub[sub["model"] == model].sort_values(x)
        vals = d[y].astype(float) * scale
        if logy:  # a zero (nothing completed) cannot sit on a log axis: leave a gap, not a cliff
            vals = vals.where(vals > 0)
        ax.plot(d[x], vals, marker="o", ms=3, lw=1.3, color=_COLORS[model], label=_short(model))
        analytic = d["source"] == "analytic"
        if analytic.any():  # hollow markers: answered by the queueing approximation, not simulated
            ax.plot(d[x][analytic], vals[analytic], "o", ms=7, mfc="white", color=_COLORS[model])
        bad = d["failure"].fillna("") != ""
        if bad.any():
            ax.plot(d[x][bad], vals[bad], "x", color=_COLORS[model], ms=7)


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
    fig.suptitle(f"{ylabel} vs connections (x = failure reported, hollow = simkit.analytic, not simulated)")
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
    fig.suptitle("Scaling: throughput vs cores (x = failure reported, hollow = simkit.analytic)")
    fig.savefig(path, dpi=90)
    return path


def plot_winner_map(wins: pd.DataFrame, path: Path, slo_text: str) -> Path:
    conns = sorted(wins["connections"].unique())
    cores = sorted(wins["cores"].unique())
    codes = {m: i for i, m in enumerate(MODEL_NAMES)}
    grid = np.full((len(conns), len(cores)), np.nan)
    labels = [["" for _ in cores] for _ in conns]
    for r in wins.itertuples(index=False):
        i, j = conns.index(r.connections), cores.index(r.cores)
        if r.winner:
            grid[i, j] = codes[r.winner]
            labels[i][j] = _short(r.winner)
        else:
            labels[i][j] = "none"
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap([_COLORS[m] for m in MODEL_NAMES]).with_extremes(bad="#eeeeee")
    fig = Figure(figsize=(1.0 + 0.9 * len(cores), 1.0 + 0.5 * len(conns)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=-0.5, vmax=len(MODEL_NAMES) - 0.5, aspect="auto",
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


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(_fmt(v).replace("|", "/") for v in r) + " |" for r in rows]
    return "\n".join(out)


def _html_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], flag_col: int | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for r in rows:
        cls = ' class="flag"' if flag_col is not None and r[flag_col] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


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


# -- the report --------------------------------------------------------------------------------

def write_report(inputs: ReportInputs, out_dir: str | Path) -> ReportFiles:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame = inputs.frame.reset_index(drop=True)
    slo, mem = inputs.slo_p99_s, inputs.memory_bytes
    slo_text = f"p99 <= {slo * 1e3:.3g} ms, RSS <= {mem / 2**30:.3g} GiB"
    profile = inputs.profile

    # Request parsing holds the GIL too: charge it when telling a GIL limit from other latency.
    gil_overhead_s = profile["parse_s"]
    cap = capacity(frame, slo, mem, max_error_rate=inputs.max_error_rate, gil_overhead_s=gil_overhead_s)
    wins = winner_map(frame, slo, mem, inputs.max_error_rate)
    rec = recommend(frame, slo, mem, inputs.max_error_rate, gil_overhead_s)

    here_cores = available_cores()
    cal_cores, cal_conns = calibrated_range(profile.validation, here_cores, _box_connections(profile))
    range_from = "the profile's validation rows" if any(
        isinstance(r, dict) and ("cores" in r or "connections" in r) for r in profile.validation
    ) else "this box (the profile lists no calibrated points)"
    ext = extrapolation(frame, cal_cores, cal_conns)
    enriched = frame.assign(extrapolation_x=ext.round(2), past_10x=ext > EXTRAPOLATION_FLAG_X)
    csv_path = out / "results.csv"
    enriched.to_csv(csv_path, index=False)

    plots = (
        plot_vs_connections(frame, "throughput_rps", "throughput (req/s)", out / "throughput_vs_connections.png"),
        plot_vs_connections(frame, "latency_p99_s", "p99 latency (ms)", out / "p99_vs_connections.png",
                            scale=1e3, hline=slo * 1e3, hlabel="SLO"),
        plot_vs_connections(frame, "rss_peak_bytes", "peak RSS (GiB)", out / "memory_vs_connections.png",
                            scale=1 / 2**30, hline=mem / 2**30, hlabel="budget"),
        plot_scaling(frame, out / "scaling_vs_cores.png"),
        plot_winner_map(wins, out / "winner_map.png", slo_text),
    )

    # Sections shared by both renderings: (title, markdown body, html body).
    sections: list[tuple[str, str, str]] = []
    warn_md, warn_html = _calibration_warning(profile, inputs.profile_label)

    rec_md = (f"**Recommended: {rec.model}**\n\n" if rec.model else "**No model meets the SLO in this sweep.**\n\n")
    rec_md += "\n".join(f"- {r}" for r in rec.reasons)
    rec_html = (f"<p class='rec'>Recommended: <b>{html.escape(rec.model)}</b></p>" if rec.model
                else "<p class='rec'>No model meets the SLO in this sweep.</p>")
    rec_html += "<ul>" + "".join(f"<li>{html.escape(r)}</li>" for r in rec.reasons) + "</ul>"
    sections.append(("Recommendation", rec_md, rec_html))

    cap_headers = ["model", "meets SLO", "max connections", "on cores", "req/s there", "p99 there (ms)",
                   "breaks at connections", "on cores", "reason", "why"]
    cap_rows = [[r.model, r.meets_slo, r.max_connections, r.cores, r.throughput_rps, r.latency_p99_s * 1e3,
                 r.breaks_at_connections, r.breaks_at_cores, r.reason, r.why] for r in cap.itertuples()]
    legend = "\n".join(f"- `{k}`: {v}" for k, v in REASONS.items())
    sections.append((
        f"Capacity per model ({slo_text})",
        _md_table(cap_headers, cap_rows) + "\n\nReasons:\n" + legend,
        _html_table(cap_headers, cap_rows) + "<ul>" + "".join(
            f"<li><code>{k}</code>: {html.escape(v)}</li>" for k, v in REASONS.items()) + "</ul>",
    ))

    captions = {
        "throughput_vs_connections.png": "Throughput vs connections, one panel per core count. Hollow markers: "
                                          "points answered by simkit.analytic instead of the simulator; x: the "
                                          "run reported a failure.",
        "p99_vs_connections.png": f"p99 latency vs connections; dashed line: the SLO ({slo * 1e3:.3g} ms).",
        "memory_vs_connections.png": f"Peak RSS vs connections; dashed line: the budget ({mem / 2**30:.3g} GiB).",
        "scaling_vs_cores.png": "Throughput vs cores at a few connection counts.",
        "winner_map.png": "Which model serves each (connections, cores) cell best under the SLO and budget "
                          "('none': no model meets it).",
    }
    plot_md = "\n\n".join(f"![{p.stem}]({p.name})\n\n{captions[p.name]}" for p in plots)
    plot_html = "".join(
        f"<figure><img alt='{p.stem}' src='data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}'>"
        f"<figcaption>{html.escape(captions[p.name])}</figcaption></figure>" for p in plots)
    sections.append(("Plots", plot_md, plot_html))

    # Extrapolation: the factor depends only on (cores, connections): show that grid.
    conns = sorted(frame["connections"].unique())
    cores = sorted(frame["cores"].unique())
    ext_headers = ["connections \\ cores"] + [str(c) for c in cores]
    ext_rows = []
    for n in conns:
        row: list[Any] = [f"{n:,}"]
        for c in cores:
            x = max(c / cal_cores, n / cal_conns, 1.0)
            row.append(f"{x:.3g}x" + (" !" if x > EXTRAPOLATION_FLAG_X else ""))
        ext_rows.append(row)
    n_flag = int((ext > EXTRAPOLATION_FLAG_X).sum())
    ext_intro = (f"Calibrated range (from {range_from}): up to {cal_cores} cores and {cal_conns:,} connections. "
                 f"Each prediction's factor is max(cores / {cal_cores}, connections / {cal_conns:,}, 1). "
                 f"{n_flag} of {len(frame)} predictions extrapolate past {EXTRAPOLATION_FLAG_X:g}x (marked !): "
                 "treat them as the model's mechanism speaking, not as measurements. Per-row factors are in "
                 "results.csv (extrapolation_x, past_10x).")
    sections.append(("How far each prediction extrapolates", ext_intro + "\n\n" + _md_table(ext_headers, ext_rows),
                     f"<p>{html.escape(ext_intro)}</p>" + _html_table(ext_headers, ext_rows)))

    vh, vrows = validation_table(profile)
    summary = validation_summary(profile)
    if vrows:
        pd.DataFrame(validation_rows(profile)).to_csv(out / "calibration_validation.csv", index=False)
        ph, prows = validation_pivot(profile)
        s_md = "\n".join(f"- median |{c}| = {v:.3g} over {k} rows" for c, v, k in summary)
        intro = (f"Held-out points the fit never saw ({len(vrows)} rows: measured vs predicted on this host). "
                 "Full table: calibration_validation.csv.")
        cal_md = f"{intro}\n\n{s_md}\n\n" + (_md_table(ph, prows) if prows else _md_table(vh, vrows[:60]))
        cal_html = (f"<p>{html.escape(intro)}</p><ul>"
                    + "".join(f"<li>median |{html.escape(c)}| = {v:.3g} over {k} rows</li>" for c, v, k in summary)
                    + "</ul>" + (_html_table(ph, prows) if prows else "")
                    + f"<details><summary>every held-out row ({len(vrows)})</summary>{_html_table(vh, vrows)}</details>")
    else:
        cal_md = ("The profile carries no validation table: these predictions have NO measured error "
                  "bar on this host.")
        cal_html = f"<p class='warn'>{html.escape(cal_md)}</p>"
    sections.append(("Calibration error (held-out validation)", cal_md, cal_html))

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
    sections.append(("About this run", "\n".join(f"- {a}" for a in about),
                     "<ul>" + "".join(f"<li>{html.escape(a)}</li>" for a in about) + "</ul>"))

    md = [f"# {inputs.title}: {inputs.host}, {inputs.date}", ""]
    if warn_md:
        md += [warn_md, ""]
    for title, body, _ in sections:
        md += [f"## {title}", "", body, ""]
    md_path = out / "report.md"
    md_path.write_text("\n".join(md))

    html_parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(inputs.title)} - {html.escape(inputs.host)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(inputs.title)}: {html.escape(inputs.host)}, {html.escape(inputs.date)}</h1>",
        warn_html,
    ]
    for title, _, body in sections:
        html_parts.append(f"<h2>{html.escape(title)}</h2>{body}")
    html_parts.append("</body></html>")
    html_path = out / "index.html"
    html_path.write_text("".join(html_parts))
    return ReportFiles(out, html_path, md_path, csv_path, plots, rec)


def _box_connections(profile: CostProfile) -> int:
    """Connections this box was seen to carry when no calibrated range is recorded: the profile's
    note if calibration left one, else 1,000 (the quick calibration grid's top, DESIGN §7)."""
    v = profile.notes.get("max_connections") if isinstance(profile.notes, dict) else None
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 1 else 1000


def _calibration_warning(profile: CostProfile, label: str) -> tuple[str, str]:
    if profile.calibrated:
        foreign = profile.fingerprint_mismatch()
        if not foreign:
            return "", ""
        text = (f"WARNING: the cost profile ({label}) was calibrated on another host (differs in: "
                f"{', '.join(foreign)}). Predictions carry that host's costs.")
    else:
        text = (f"WARNING: UNCALIBRATED PROFILE ({label}). Every cost is a built-in default, not measured on "
                "this host: the numbers below show the mechanisms, not this machine. Run `serverlab calibrate` "
                "(or `serverlab demo`, which calibrates first) before trusting them.")
    return f"> **{text}**", f"<div class='banner'>{html.escape(text)}</div>"


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1300px;margin:1em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:12px;margin:0.5em 0}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
th{background:#f3f3f3} tr.flag td{background:#fff3cd}
figure{margin:1em 0} img{max-width:100%} figcaption{font-size:13px;color:#555}
.banner{background:#b00020;color:#fff;font-weight:bold;padding:1em;font-size:1.2em;margin:1em 0}
.warn{color:#b00020;font-weight:bold} .rec{font-size:1.3em}
"""
