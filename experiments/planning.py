"""Capacity planning on a sweep's DataFrame: pure functions, no I/O.

`build_grid` turns one base Scenario into the cross product models x cores x connections,
`capacity` finds for each model the largest load that meets an SLO within a memory budget and
classifies why the next load up breaks, `winner_map` says which model serves each
(connections, cores) cell best, and `recommend` turns both into a choice with reasons in words.
The frame is always the contract frame of simkit.result.columns() (extra columns are ignored).
Per-model facts (knob sizing, which models are one thread or share a GIL, the model order) come
from simkit.registry. Running a sweep is experiments.sweep; simulated windows are experiments.windows.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import pandas as pd

from simkit import registry
from simkit.scenario import ModelSpec, Scenario

# Reasons capacity() can give, in the order they are checked (hard failures first: a run that
# ran out of memory also has a terrible p99, and the memory is the reason, not the latency).
REASONS: dict[str, str] = {
    "memory": "runs out of memory (RSS past the budget)",
    "threads_max": "hits the thread/process limit (threads_max)",
    "fd_limit": "runs out of file descriptors (fd_limit)",
    "backlog": "the listen backlog overflows: connections refused or timed out",
    "startup": "the clients' start-up connect storm overflowed the backlog: the window opened before the connect "
               "ramp ended, so this is a start-up effect, not a capacity limit (open the window after the ramp, "
               "or connect more slowly: connect_rate_cps)",
    "errors": "clients see errors (resets) above the tolerated rate",
    "stalled": "requests pile up unanswered: many connected clients are not being served (the p99 of the "
               "completed requests hides them)",
    "gil": "the GIL serialises the Python work: CPU stuck near one core although more are free",
    "single_thread": "one thread does all the work: CPU stuck near one core although more are free",
    "cpu": "every core is busy (CPU saturated)",
    "latency": "p99 latency exceeds the SLO before the CPU saturates (queueing or blocking waits)",
}


@dataclass(frozen=True)
class Sizing:
    """How each model's knobs follow the core count (a model sized for 1 core wastes 63 of 64).

    `rules` overrides the registry's sizing rules, keyed as registry.sizing_keys() names them
    ("<short>_<knob>_per_core", "<short>_<knob>_min"): a knob is max(min, round(per_core x cores)).
    Rules left out keep the registry's defaults.
    """

    rules: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.rules, Mapping):
            raise ValueError(f"rules: expected a mapping of sizing rule to number, got {type(self.rules).__name__}")
        allowed = registry.sizing_keys()
        for key, value in self.rules.items():
            if key not in allowed:
                raise ValueError(f"{key}: unknown sizing rule; allowed: {', '.join(allowed)}")
            check_positive(key, value)
        object.__setattr__(self, "rules", MappingProxyType(dict(self.rules)))

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.rules.items())))

    def spec(self, name: str | int, cores: int, base: ModelSpec | None = None) -> ModelSpec:
        """The ModelSpec for model `name` on `cores` cores: its knobs sized by the rules, every other
        model's knobs back at their ModelSpec defaults, the rest (gil, backlog...) from `base`."""
        base = base or ModelSpec()
        arch = registry.get(name)
        fresh = ModelSpec()
        knobs: dict[str, Any] = {k.field: getattr(fresh, k.field) for a in registry.architectures() for k in a.knobs}
        knobs.update(arch.sized(cores, self.rules))
        return dataclasses.replace(base, name=arch.name, **knobs)

    def text(self, models: Iterable[str | int] | None = None) -> str:
        """The rules in words for `models` (default: every registered model), e.g.
        "m4 pool = max(4, 4 x cores), m5 threads = max(1, 1 x cores)"."""
        archs = registry.architectures() if models is None else [registry.get(m) for m in models]
        return ", ".join(t for t in (a.sizing_text(self.rules) for a in archs) if t)


def build_grid(
    base: Scenario,
    models: Sequence[str | int | ModelSpec] | None = None,
    cores: Sequence[int] | None = None,
    connections: Sequence[int] | None = None,
    sizing: Sizing | None = None,
) -> list[Scenario]:
    """models x cores x connections, in that nesting order (the order rows come back in).

    A model given by name/number is sized for each core count by `sizing`; a ModelSpec is used as
    given. Omitted axes keep the base scenario's value.
    """
    sizing = sizing or Sizing()
    models = list(models) if models is not None else list(registry.names())
    cores = list(cores) if cores is not None else [base.hardware.cores]
    connections = list(connections) if connections is not None else [base.workload.connections]
    for axis, values in (("models", models), ("cores", cores), ("connections", connections)):
        if not values:
            raise ValueError(f"{axis}: empty list")
    for axis, values in (("cores", cores), ("connections", connections)):
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{axis}: expected integers >= 1, got {v!r}")
    grid = []
    for m in models:
        for c in cores:
            spec = m if isinstance(m, ModelSpec) else sizing.spec(m, c, base.model)
            for n in connections:
                grid.append(base.replace(model=spec, cores=c, connections=n))
    return grid


# -- capacity ----------------------------------------------------------------------------------

def _errors(row: pd.Series) -> float:
    return float(row["errors_refused"]) + float(row["errors_timeout"]) + float(row["errors_reset"])


def _error_rate(row: pd.Series) -> float:
    errors = _errors(row)
    total = errors + float(row["completed"])
    return errors / total if total > 0 else 1.0


def classify(row: pd.Series | dict, slo_p99_s: float, memory_bytes: float, max_error_rate: float = 1e-3,
             gil_overhead_s: float = 0.0) -> str:
    """Why one sweep row misses the SLO/budget: a key of REASONS, or "" when it meets both.

    A row meets only when its band does: the p99 (and RSS) compared with the SLO (and budget) is
    the band's upper end, `latency_p99_s_hi` (`rss_peak_bytes_hi`), where the frame has bands
    (experiments.intervals), else the point value.
    CPU vs GIL vs single thread is read from cpu_util: "cpu" when cpu_util reaches ~85% of the
    cores; "gil" when a multi-threaded one-process Python model with gil_us work is stuck near one
    core while more are available, or its GIL-held time (throughput x (gil_us + gil_overhead_s), the
    latter being the per-request parsing etc. a profile charges under the GIL, e.g. its parse_s)
    fills >= 40% of the GIL (a GIL convoys well before 100%); "single_thread" for a model whose
    configuration has one thread doing all the work, stuck at one core by design. Which models are
    one thread, and which share one process's GIL, the registry says (single_thread, shared_gil).
    """
    row = pd.Series(row) if isinstance(row, dict) else row
    failure = str(row.get("failure") or "")
    if failure == "nan":
        failure = ""
    if failure == "memory" or upper(row, "rss_peak_bytes") > memory_bytes:
        return "memory"
    if failure == "backlog":
        return "startup" if _in_ramp(row) else failure
    if failure in ("threads_max", "fd_limit"):
        return failure
    if failure:
        return failure  # e.g. "server_died": passed through, named as the simulator named it
    if float(row["completed"]) == 0 and _errors(row) == 0:
        return "stalled"  # nothing completed and nothing failed: every request still waiting
    err = _error_rate(row)
    refused_or_timeout = float(row["errors_refused"]) + float(row["errors_timeout"])
    if err > max_error_rate:
        if refused_or_timeout > 0:
            return "startup" if _in_ramp(row) else "backlog"
        return "errors"
    p99 = float(row["latency_p99_s"]) if row["latency_p99_s"] is not None else math.nan
    if _stalled(row, p99):
        # Clients queued behind a saturated bottleneck are waiting their turn, not unserved: the
        # window closed before the queue reached steady state (it is sized from simkit.analytic,
        # which has no GIL convoy). Only a server that serves one connection at a time leaves the
        # others unserved for good, whatever it saturates.
        neck = _bottleneck(row, gil_overhead_s)
        one_at_a_time = registry.get(str(row["model"])).one_connection_at_a_time
        return neck if neck and not one_at_a_time else "stalled"
    if not math.isnan(p99) and upper(row, "latency_p99_s") <= slo_p99_s and float(row["completed"]) > 0:
        return ""
    return _bottleneck(row, gil_overhead_s) or "latency"


def _bottleneck(row: pd.Series, gil_overhead_s: float) -> str:
    """The saturated resource of a row, read from cpu_util (classify's docstring): "cpu", "gil",
    "single_thread", or "" when none is saturated."""
    cores = float(row["cores"])
    util = float(row["cpu_util"])
    if util >= 0.85 * cores:
        return "cpu"
    if cores > 1:
        arch = registry.get(str(row["model"]))
        spec = _row_spec(row, arch)
        one_core = 0.6 <= util <= 1.3
        if one_core and arch.single_thread(spec):
            return "single_thread"
        gil_us = float(row.get("gil_us", 0.0) or 0.0)
        if arch.shared_gil(spec) and bool(row.get("gil", True)) and gil_us > 0:
            # The GIL is one "core" shared by the process. Threads may still use several cores
            # for GIL-free cpu_us work, so cpu_util alone misses a GIL bottleneck.
            gil_busy = float(row["throughput_rps"]) * (gil_us * 1e-6 + gil_overhead_s)
            if one_core or gil_busy >= 0.4:
                return "gil"
    return ""


def upper(row: pd.Series | Mapping[str, Any], metric: str) -> float:
    """The band's upper end of `metric` (column `<metric>_hi`) where the row has a finite one, else
    the point value: what an SLO or budget is checked against."""
    hi = _num(row.get(f"{metric}_hi"))
    return hi if not math.isnan(hi) else float(row[metric])


def p99_text(row: pd.Series | Mapping[str, Any]) -> str:
    """"p99 31 ms [24, 38]" (the band, where the row has one), or "p99 31 ms"."""
    p99 = _num(row.get("latency_p99_s"))
    if math.isnan(p99):
        return "no completed requests"
    lo, hi = _num(row.get("latency_p99_s_lo")), _num(row.get("latency_p99_s_hi"))
    band = "" if math.isnan(lo) or math.isnan(hi) else f" [{lo * 1e3:.3g}, {hi * 1e3:.3g}]"
    return f"p99 {p99 * 1e3:.3g} ms{band}"


def margin(row: pd.Series | Mapping[str, Any], slo_p99_s: float) -> float:
    """(SLO - the p99 band's upper end) / SLO: the share of the SLO left unused; < 0 misses it."""
    return (slo_p99_s - upper(row, "latency_p99_s")) / slo_p99_s


def verdict(row: pd.Series | Mapping[str, Any], slo_p99_s: float) -> str:
    """"p99 31 ms [24, 38] vs SLO 50 ms: 24% margin" (the margin is measured from the band's top)."""
    m = margin(row, slo_p99_s)
    tail = f"{m:.0%} margin" if m >= 0 else f"over by {-m:.0%}"
    if math.isnan(m):
        tail = "no p99"
    return f"{p99_text(row)} vs SLO {slo_p99_s * 1e3:.3g} ms: {tail}"


def _in_ramp(row: pd.Series) -> bool:
    """The row's window opened before its clients finished their first connects (connections /
    connect_rate_cps, a closed loop's start-up ramp): a backlog overflow there may be the storm."""
    rate = _num(row.get("connect_rate_cps"))
    if str(row.get("mode", "closed")) != "closed" or math.isnan(rate) or rate <= 0:
        return False
    return _num(row.get("warmup_s")) < float(row["connections"]) / rate


def _row_spec(row: pd.Series, arch: registry.Architecture) -> ModelSpec:
    """The row's ModelSpec as far as the registry needs it: the model and its knobs (a knob column
    missing or empty takes the registry's default)."""
    knobs = {}
    for k in arch.knobs:
        value = row.get(k.field)
        if value is not None and not pd.isna(value):
            knobs[k.field] = int(value)
    return ModelSpec.for_model(arch.name, **knobs)


# A closed loop's issued requests fall short of "every client cycling" by more than this many
# standard deviations of counting noise (plus EDGE_SHARE of the expectation, for the window's edges)
# only when some clients are not being served.
STALL_SIGMAS = 4.0
EDGE_SHARE = 0.05


def closed_loop_count(row: pd.Series | dict) -> tuple[float, float, float]:
    """(issued, expected, allowed shortfall) for a closed-loop row's window.

    issued = completed + errors + in_flight: the requests the clients sent inside the window.
    expected = N x duration_s / cycle, cycle = think_s + mean latency: what N clients send when every
    one of them cycles. Counting noise: a client with a steady cycle sends floor or ceil of
    duration / cycle requests depending on its phase (variance <= 1/4 each), and latency jitter adds
    (duration / cycle) x cv^2, cv = latency spread ((p99 - p50) / 2.33) / cycle. The allowed
    shortfall is the larger of STALL_SIGMAS standard deviations + EDGE_SHARE of the expectation, and
    N (clients that arrive together stay in phase under a constant think time and a steady service,
    and then one window edge cuts a request from every client at once), plus 1; valid at any N.
    """
    row = pd.Series(row) if isinstance(row, dict) else row
    n = float(row["connections"])
    duration = float(row.get("duration_s", 0.0) or 0.0)
    mean = _num(row.get("latency_mean_s"))
    p50, p99 = _num(row.get("latency_p50_s")), _num(row.get("latency_p99_s"))
    cycle = float(row.get("think_s", 0.0) or 0.0) + (0.0 if math.isnan(mean) else mean)
    issued = float(row["completed"]) + _errors(row) + float(row.get("in_flight", 0) or 0)
    if cycle <= 0 or duration <= 0:
        return issued, issued, 0.0
    per_client = duration / cycle
    spread = 0.0 if math.isnan(p99) or math.isnan(p50) else max(p99 - p50, 0.0) / 2.33
    variance = n * (0.25 + per_client * (spread / cycle) ** 2)
    expected = n * per_client
    return issued, expected, max(STALL_SIGMAS * math.sqrt(variance) + EDGE_SHARE * expected, n) + 1.0


def _num(v: Any) -> float:
    try:
        return math.nan if v is None or pd.isna(v) else float(v)
    except (TypeError, ValueError):
        return math.nan


def _stalled(row: pd.Series, p99: float) -> bool:
    """Clients left unserved: the p99 is over COMPLETED requests only, so it hides them.

    Two checks. Requests still unanswered at the end, far more than Little's law allows for the
    measured latency (in flight ~= throughput x latency <= throughput x p99) and more than 5% of the
    cohort. And, in a closed loop, fewer requests issued in the window than N clients cycling would
    send, beyond counting noise (closed_loop_count): clients queued since before the window (behind a
    server that serves one connection at a time, or retrying a dropped SYN) send nothing, and are in
    no count at all. Both hold at any client count.
    """
    x = float(row["throughput_rps"])
    in_flight = float(row.get("in_flight", 0) or 0)
    cohort = float(row["completed"]) + in_flight
    if in_flight > max(2.0 * x * (0.0 if math.isnan(p99) else p99) + 10, 0.05 * cohort):
        return True
    if str(row.get("mode", "closed")) == "closed":
        issued, expected, allowed = closed_loop_count(row)
        if expected - issued > allowed:
            return True
    return False


def _detail(row: pd.Series, reason: str, slo_p99_s: float, memory_bytes: float) -> str:
    n, c = int(row["connections"]), int(row["cores"])
    p99_txt = p99_text(row)
    at = f"at {n:,} connections on {_cores(c)}"
    if reason == "memory":
        return f"{at}: RSS {row['rss_peak_bytes'] / 2**30:.3g} GiB vs budget {memory_bytes / 2**30:.3g} GiB"
    if reason in ("threads_max", "fd_limit"):
        return f"{at}: {REASONS[reason]} (threads {int(row['threads_peak']):,}, fds {int(row['fds_peak']):,})"
    if reason == "stalled":
        x = float(row["throughput_rps"])
        if float(row["completed"]) == 0:
            return f"{at}: no request completed in the window ({int(row['in_flight']):,} still waiting at its end)"
        waiting = f"{int(row['in_flight']):,} requests still unanswered at the end; " if row["in_flight"] else ""
        if str(row.get("mode", "closed")) == "closed":
            issued, expected, _ = closed_loop_count(row)
            served = n * issued / expected if expected > 0 else 0.0
            return (f"{at}: clients sent {issued:,.0f} requests in the window where {n:,} cycling clients send "
                    f"~{expected:,.0f}: only ~{served:,.1f} of {n:,} clients are served ({x:,.3g} req/s); "
                    f"{waiting}the others wait unseen (the completed ones' {p99_txt} hides them)")
        return f"{at}: {waiting}only {x:,.3g} req/s completed (the completed ones' {p99_txt} hides the rest)"
    if reason == "startup":
        ramp = float(row["connections"]) / float(row["connect_rate_cps"])
        return (f"{at}: the backlog overflowed while the clients were still connecting (ramp {ramp:.3g} s at "
                f"{float(row['connect_rate_cps']):,.0f} connects/s, window opened at {float(row['warmup_s']):.3g} s)")
    if reason == "backlog" and _error_rate(row) <= 0:
        return f"{at}: the listen backlog overflowed (SYNs dropped, clients retried after 1 s or more)"
    if reason in ("backlog", "errors"):
        if _errors(row) == 0:
            return f"{at}: no request failed, and none completed either"
        return (f"{at}: {_error_rate(row):.1%} of requests failed (refused {int(row['errors_refused']):,}, "
                f"timeout {int(row['errors_timeout']):,}, reset {int(row['errors_reset']):,})")
    if reason in ("cpu", "gil", "single_thread", "latency"):
        over = "" if float(row["latency_p99_s"]) > slo_p99_s else " (the band's top)"
        return (f"{at}: {p99_txt} > SLO {slo_p99_s * 1e3:.3g} ms{over}, CPU {float(row['cpu_util']):.2f} "
                f"of {c} cores")
    return f"{at}: simulator reported failure {reason!r}"


CAPACITY_COLUMNS = [
    "model", "meets_slo", "max_connections", "cores", "throughput_rps", "latency_p99_s", "latency_p99_s_lo",
    "latency_p99_s_hi", "margin", "verdict", "source", "rss_peak_bytes", "breaks_at_connections",
    "breaks_at_cores", "reason", "why",
]


def capacity(
    frame: pd.DataFrame,
    slo_p99_s: float,
    memory_bytes: float,
    *,
    max_error_rate: float = 1e-3,
    cores: int | None = None,
    gil_overhead_s: float = 0.0,
) -> pd.DataFrame:
    """For each model: the largest connection count meeting the SLO and budget, and why it breaks.

    A row "meets" when p99 <= slo_p99_s, no failure, errors <= max_error_rate of requests and
    rss_peak_bytes <= memory_bytes. Across core counts (or only at `cores=` when given) the model's
    capacity is its largest meeting connection count, on the fewest cores that reach it. `reason`
    classifies the next load up on the largest core count in the sweep (the limit that more cores
    do not lift) or, for a model that meets nowhere, its smallest load on the most cores; "" when
    nothing in the frame breaks it.
    One row per model, in registry order. Columns (CAPACITY_COLUMNS): model; meets_slo (bool: some
    row meets, its p99 band's top under the SLO); max_connections (0 when none), cores (fewest that
    reach it), throughput_rps, latency_p99_s and its band latency_p99_s_lo / _hi (NaN without bands),
    margin ((SLO - p99 band top) / SLO), verdict ("p99 31 ms [24, 38] vs SLO 50 ms: 24% margin"),
    source ("sim" or "analytic") and rss_peak_bytes at that point; breaks_at_connections /
    breaks_at_cores, reason (a REASONS key) and why (the figures, in words) for the next load up.
    """
    check_positive("slo_p99_s", slo_p99_s)
    check_positive("memory_bytes", memory_bytes)
    if frame.empty:
        raise ValueError("frame: empty sweep, nothing to plan from")
    data = frame if cores is None else frame[frame["cores"] == cores]
    if data.empty:
        raise ValueError(f"cores: no rows with cores == {cores}; present: {sorted(frame['cores'].unique())}")
    reasons = data.apply(lambda r: classify(r, slo_p99_s, memory_bytes, max_error_rate, gil_overhead_s), axis=1)
    data = data.assign(_reason=reasons)
    out = []
    order = [m for m in registry.names() if m in set(data["model"])]
    for model in order:
        rows = data[data["model"] == model]
        ok = rows[rows["_reason"] == ""]
        record: dict[str, Any] = {"model": model, "meets_slo": not ok.empty}
        if not ok.empty:
            best = ok.sort_values(["connections", "cores"], ascending=[False, True]).iloc[0]
            record.update(max_connections=int(best["connections"]), cores=int(best["cores"]),
                          throughput_rps=float(best["throughput_rps"]), latency_p99_s=float(best["latency_p99_s"]),
                          latency_p99_s_lo=_num(best.get("latency_p99_s_lo")),
                          latency_p99_s_hi=_num(best.get("latency_p99_s_hi")),
                          margin=margin(best, slo_p99_s), verdict=verdict(best, slo_p99_s),
                          source=str(best.get("source", "") or ""), rss_peak_bytes=int(best["rss_peak_bytes"]))
            # The next load up breaks on every core count (else it would be the capacity); explain it
            # on the largest machine in the sweep: that is the limit more cores do not lift.
            above = rows[(rows["connections"] > best["connections"]) & (rows["_reason"] != "")]
            broken = above.sort_values(["connections", "cores"], ascending=[True, False])
        else:
            record.update(max_connections=0, cores=None, throughput_rps=math.nan, latency_p99_s=math.nan,
                          latency_p99_s_lo=math.nan, latency_p99_s_hi=math.nan, margin=math.nan,
                          verdict="never meets the SLO in this sweep", source="", rss_peak_bytes=None)
            broken = rows.sort_values(["connections", "cores"], ascending=[True, False])
        if broken.empty:
            record.update(breaks_at_connections=None, breaks_at_cores=None, reason="",
                          why="meets the SLO at every load in the sweep")
        else:
            b = broken.iloc[0]
            record.update(breaks_at_connections=int(b["connections"]), breaks_at_cores=int(b["cores"]),
                          reason=b["_reason"], why=_detail(b, b["_reason"], slo_p99_s, memory_bytes))
        out.append(record)
    result = pd.DataFrame(out, columns=CAPACITY_COLUMNS)
    for col in ("cores", "rss_peak_bytes", "breaks_at_connections", "breaks_at_cores"):
        result[col] = result[col].astype("Int64")
    return result


def check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: must be a number > 0, got {value!r}")


def meets(frame: pd.DataFrame, slo_p99_s: float, memory_bytes: float, max_error_rate: float = 1e-3) -> pd.Series:
    """Boolean Series: which rows meet the SLO within the budget."""
    return frame.apply(lambda r: classify(r, slo_p99_s, memory_bytes, max_error_rate) == "", axis=1)


# Calibration error bars: a model whose median held-out |error| (the profile's validation rows) is
# above these gets a warning wherever it is recommended or wins a cell of the winner map.
ERROR_BARS: dict[str, float] = {"throughput": 0.10, "p99": 0.25}
EXTRAPOLATION_FLAG_X = 10.0  # a figure this far past the calibrated range is flagged


def model_errors(validation: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Median |rel_err| per model and metric (ERROR_BARS' metrics) over a profile's validation rows
    in calibration's long format (model, metric, rel_err); models keyed by their full name. Rows of
    another shape are ignored; {} when there are none."""
    values: dict[str, dict[str, list[float]]] = {}
    for r in validation:
        if not isinstance(r, Mapping) or r.get("metric") not in ERROR_BARS:
            continue
        err = _num(r.get("rel_err"))
        try:
            model = registry.resolve(r.get("model"))
        except (ValueError, TypeError):
            continue
        if not math.isnan(err):
            values.setdefault(model, {}).setdefault(r["metric"], []).append(abs(err))
    return {m: {k: float(pd.Series(v).median()) for k, v in per.items()} for m, per in values.items()}


def error_warning(model: str, errors: Mapping[str, Mapping[str, float]] | None) -> str:
    """"calibration error above the bars: p99 90% (bar 25%)" for a model past ERROR_BARS; "" else."""
    per = (errors or {}).get(model, {})
    over = [f"{k} {per[k]:.1%} (bar {bar:.0%})" for k, bar in ERROR_BARS.items() if per.get(k, 0.0) > bar]
    return "calibration error above the bars: " + ", ".join(over) if over else ""


def winner_map(frame: pd.DataFrame, slo_p99_s: float, memory_bytes: float, max_error_rate: float = 1e-3, *,
               errors: Mapping[str, Mapping[str, float]] | None = None) -> pd.DataFrame:
    """One row per (connections, cores) cell: the model with the highest throughput among those
    that meet the SLO and budget there ("" when none does), with its throughput and p99.

    Ties (within 2% throughput: simulation noise) go to the lower p99, then the lower RSS.
    Columns: connections, cores, winner, throughput_rps, latency_p99_s, candidates (how many models
    meet there), source (the winner's: "sim" or "analytic") and warning (error_warning of the
    winner from `errors`, model_errors of the profile's validation rows: "" when within the bars).
    """
    ok = frame[meets(frame, slo_p99_s, memory_bytes, max_error_rate)] if not frame.empty else frame
    cells = frame[["connections", "cores"]].drop_duplicates().sort_values(["connections", "cores"])
    rows = []
    for n, c in cells.itertuples(index=False):
        cand = ok[(ok["connections"] == n) & (ok["cores"] == c)]
        if cand.empty:
            rows.append({"connections": int(n), "cores": int(c), "winner": "", "throughput_rps": math.nan,
                         "latency_p99_s": math.nan, "candidates": 0, "source": "", "warning": ""})
            continue
        top = cand["throughput_rps"].max()
        near = cand[cand["throughput_rps"] >= 0.98 * top].sort_values(["latency_p99_s", "rss_peak_bytes"])
        w = near.iloc[0]
        rows.append({"connections": int(n), "cores": int(c), "winner": w["model"],
                     "throughput_rps": float(w["throughput_rps"]), "latency_p99_s": float(w["latency_p99_s"]),
                     "candidates": len(cand), "source": str(w.get("source", "") or ""),
                     "warning": error_warning(w["model"], errors)})
    return pd.DataFrame(rows, columns=["connections", "cores", "winner", "throughput_rps", "latency_p99_s",
                                       "candidates", "source", "warning"])


@dataclass(frozen=True)
class Recommendation:
    """recommend()'s answer. model: the model to build ("" when no model meets the SLO anywhere in
    the sweep); reasons: plain-word sentences, the first with the capacity point's verdict and margin,
    then where its figures come from (simulated, analytic, extrapolated); ranking: every model, best
    first; warnings: what should make a reader doubt the figures (calibration error above the bars,
    analytic or extrapolated figures, winner-map cells won by a poorly calibrated model)."""

    model: str
    reasons: tuple[str, ...]
    ranking: tuple[str, ...]
    warnings: tuple[str, ...] = ()


_SOURCE_WORDS = {"sim": "simulated", "analytic": "from simkit.analytic (a queueing approximation, not simulated)",
                 "real": "measured"}


def recommend(frame: pd.DataFrame, slo_p99_s: float, memory_bytes: float, max_error_rate: float = 1e-3,
              gil_overhead_s: float = 0.0, *, cap: pd.DataFrame | None = None,
              wins: pd.DataFrame | None = None, calibrated: tuple[int, int] | None = None,
              errors: Mapping[str, Mapping[str, float]] | None = None) -> Recommendation:
    """The model to build: the one that holds the SLO at the largest load (capacity is what the
    user is buying), then the one that wins the most cells of the winner map, then the one that
    meets the SLO most often, then on the fewest cores. Reasons are sentences a person can act on,
    including why the runners-up lost and where the recommended model itself breaks.
    cap / wins: capacity() and winner_map() of this frame with these arguments, when the caller
    already has them (they are computed here otherwise).
    calibrated: (max cores, max connections) of the profile's calibrated range (calibrated_range);
    a figure past it is called extrapolated, with its factor. errors: model_errors of the profile's
    validation rows; the recommended model, and any model winning winner-map cells, above
    ERROR_BARS gets a warning. Without them the recommendation says the range and error are unknown.
    Returns a Recommendation (model, reasons, ranking, warnings)."""
    if cap is None:
        cap = capacity(frame, slo_p99_s, memory_bytes, max_error_rate=max_error_rate, gil_overhead_s=gil_overhead_s)
    if wins is None:
        wins = winner_map(frame, slo_p99_s, memory_bytes, max_error_rate, errors=errors)
    n_cells = len(wins)
    win_counts = wins["winner"].value_counts()
    meet_counts = frame[meets(frame, slo_p99_s, memory_bytes, max_error_rate)]["model"].value_counts()

    def key(rec: pd.Series) -> tuple:
        return (int(rec["max_connections"]), int(win_counts.get(rec["model"], 0)),
                int(meet_counts.get(rec["model"], 0)), -(rec["cores"] if pd.notna(rec["cores"]) else 10**9))

    ranked = sorted((r for _, r in cap.iterrows()), key=key, reverse=True)
    ranking = tuple(r["model"] for r in ranked)
    slo_txt = f"p99 <= {slo_p99_s * 1e3:.3g} ms within {memory_bytes / 2**30:.3g} GiB"
    warnings = _map_warnings(wins, errors)
    if not ranked or not ranked[0]["meets_slo"]:
        reasons = [f"No model meets {slo_txt} anywhere in this sweep."]
        reasons += [f"{r['model']}: {REASONS.get(r['reason'], r['reason'])} ({r['why']})." for r in ranked]
        return Recommendation("", tuple(reasons), ranking, tuple(warnings))
    best = ranked[0]
    verdict_txt = best.get("verdict") or f"p99 {best['latency_p99_s'] * 1e3:.3g} ms"
    reasons = [
        f"{best['model']} meets {slo_txt} at up to {int(best['max_connections']):,} connections "
        f"({_cores(int(best['cores']))}: {best['throughput_rps']:,.0f} req/s, {verdict_txt}, "
        f"RSS {best['rss_peak_bytes'] / 2**20:,.0f} MiB).",
        f"It is the best choice in {int(win_counts.get(best['model'], 0))} of {n_cells} (connections x cores) "
        f"cells of the winner map, and meets the SLO in {int(meet_counts.get(best['model'], 0))} of them.",
    ]
    figures, doubts = provenance(best, calibrated, errors)
    reasons.append(figures)
    # The recommended model's own error warning already covers the cells it wins.
    own = f"{best['model']} wins "
    warnings = doubts + [w for w in warnings if not (w.startswith(own) and error_warning(best["model"], errors))]
    if best["reason"]:
        reasons.append(f"Where it stops: {REASONS.get(best['reason'], best['reason'])} ({best['why']}).")
    else:
        reasons.append("Nothing in this sweep breaks it.")
    for other in ranked[1:3]:
        if other["meets_slo"]:
            lead = (f"{other['model']} holds up to {int(other['max_connections']):,} connections "
                    f"and wins {_cells(int(win_counts.get(other['model'], 0)))}")
        else:
            lead = f"{other['model']} never meets the SLO"
        tail = f"; it breaks because {REASONS.get(other['reason'], other['reason'])} ({other['why']})" \
            if other["reason"] else ""
        reasons.append(lead + tail + ".")
    return Recommendation(best["model"], tuple(reasons), ranking, tuple(dict.fromkeys(warnings)))


def provenance(best: pd.Series, calibrated: tuple[int, int] | None,
                errors: Mapping[str, Mapping[str, float]] | None) -> tuple[str, list[str]]:
    """Where a capacity() record's figures come from, as a sentence ("Its figures at ... are simulated,
    inside the calibrated range ...; calibration error ..."), and the warnings they deserve (analytic,
    more than EXTRAPOLATION_FLAG_X past the range, calibration error above ERROR_BARS)."""
    doubts = []
    source = str(best.get("source", "") or "")
    where = f"{int(best['max_connections']):,} connections on {_cores(int(best['cores']))}"
    words = _SOURCE_WORDS.get(source, f"from source {source!r}" if source else "of unknown source")
    if source == "analytic":
        doubts.append(f"{best['model']}'s capacity point ({where}) comes from the analytic model, not the "
                      "simulator: it leaves out the GIL convoy and scheduling detail.")
    if calibrated is None:
        span = "the calibrated range is unknown (no profile given)"
    else:
        cores, conns = calibrated
        x = max(int(best["cores"]) / cores, int(best["max_connections"]) / conns, 1.0)
        if x > 1.0:
            span = f"extrapolated {x:.3g}x past the calibrated range (up to {_cores(cores)}, {conns:,} connections)"
            if x > EXTRAPOLATION_FLAG_X:
                doubts.append(f"{best['model']}'s capacity point ({where}) is {x:.3g}x past the calibrated "
                              f"range (up to {_cores(cores)}, {conns:,} connections): the model's mechanisms "
                              "speaking, not a measurement.")
        else:
            span = f"inside the calibrated range (up to {_cores(cores)}, {conns:,} connections)"
    if errors is None:
        err_txt = "its calibration error is unknown (no validation rows given)"
    elif best["model"] not in errors:
        err_txt = "the profile has no validation rows for it"
        doubts.append(f"{best['model']} has no measured calibration error in this profile.")
    else:
        per = errors[best["model"]]
        err_txt = "calibration error (median held-out) " + ", ".join(
            f"{k} {per[k]:.1%}" for k in ERROR_BARS if k in per)
        warn = error_warning(best["model"], errors)
        if warn:
            doubts.append(f"{best['model']}: {warn}; its figures may be off by that much.")
    return f"Its figures at {where} are {words}, {span}; {err_txt}.", doubts


def _map_warnings(wins: pd.DataFrame, errors: Mapping[str, Mapping[str, float]] | None) -> list[str]:
    """One warning per model that wins winner-map cells with a calibration error above the bars."""
    if "warning" not in wins:
        return []
    flagged = wins[(wins["winner"] != "") & (wins["warning"] != "")]
    out = []
    for model, cells in flagged.groupby("winner", sort=False):
        out.append(f"{model} wins {_cells(len(cells))} of the winner map with "
                   f"{error_warning(model, errors)}: treat those cells as unverified.")
    return out


def _cores(c: int) -> str:
    return f"{c} core" if c == 1 else f"{c} cores"


def _cells(k: int) -> str:
    return f"{k} cell" if k == 1 else f"{k} cells"


def extrapolation(frame: pd.DataFrame, max_cores: int, max_connections: int) -> pd.Series:
    """How far each row reaches past the calibrated range: max(cores / max_cores,
    connections / max_connections, 1). 1 means inside the range; past 10 deserves a flag."""
    if max_cores < 1 or max_connections < 1:
        raise ValueError(f"max_cores/max_connections: must be >= 1, got {max_cores}, {max_connections}")
    ratio = pd.concat([frame["cores"] / max_cores, frame["connections"] / max_connections], axis=1).max(axis=1)
    return ratio.clip(lower=1.0)


def calibrated_range(validation: Iterable[dict], fallback_cores: int, fallback_connections: int) -> tuple[int, int]:
    """Largest cores and connections among a profile's training/validation rows (a row counts
    when it has a `cores` or `connections` key); the fallback (this box) when there are none."""
    cores = [int(r["cores"]) for r in validation if isinstance(r, dict) and _is_num(r.get("cores"))]
    conns = [int(r["connections"]) for r in validation if isinstance(r, dict) and _is_num(r.get("connections"))]
    return (max(cores) if cores else fallback_cores, max(conns) if conns else fallback_connections)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 1

