"""The off-grid validation set (docs/DESIGN.md §7.4): configurations drawn at random over every knob a
user sets, measured for real and predicted by the final profile, never seen by the fit.

The grid's held-out points share its families (closed loop, keep-alive, one work kind at a time, each
model's calibration knobs). These do not: a Latin hypercube (scipy.stats.qmc, scrambled, seeded) over
the unit cube, one dimension per setting, mapped onto
- the model (every registered one, or those asked for) and its knobs as its registry entry defines
  them (KNOB_RANGES, log-uniform integers), the accept dispatch where the entry has a `processes` knob;
- cores 1..max_cores (2, or fewer on a smaller box), connections log-uniform 10-10,000;
- closed or open loop; open: Poisson or constant arrivals at 20-90% of the capacity
  simkit.analytic.throughput_bound estimates with the probed profile; closed: think time 0 or
  log-uniform 1-50 ms;
- requests_per_conn 1, 10 or keep-alive; idle connections 0 or log-uniform 10-3,000;
- cpu_us, gil_us and io_us each 0 or drawn, together in one request; resp_bytes log-uniform 16-64 KiB.
A Latin hypercube stratifies every one-dimensional margin, so with n >= the number of models each model
gets n / models points (rounded either way), and each loop mode half of them.

Architectures whose entry says `one_connection_at_a_time` (they serve a connection until it closes)
get no keep-alive-forever clients and no idle connections: either would hold their only thread for
the whole run. That follows the entry, not a model's name.

Each point is a GridPoint with role OFFGRID_ROLE ("offgrid"): the pipeline (calibration.calibrate)
feeds only "train" runs to the fit and only "train" / "cores" runs to apply_measured and the refit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from calibration.grid import (
    CALIBRATION_BACKLOG,
    CALIBRATION_CONNECT_RATE_CPS,
    GridPoint,
    calibration_hardware,
)
from calibration.validate import median_abs
from simkit import registry
from simkit.profile import CostProfile
from simkit.scenario import (
    ARRIVALS,
    DISPATCH_MODES,
    LOAD_MODES,
    ModelSpec,
    Scenario,
    Workload,
    available_cores,
)

OFFGRID_ROLE = "offgrid"
OFFGRID_SEED = 11
DESIGN = "scipy.stats.qmc.LatinHypercube (scrambled)"
# Design size: the full campaign and --quick.
FULL_POINTS, QUICK_POINTS = 60, 15
# Each knob's range on a small box (lower ends raised to the entry's minimum); any other knob 1-4.
KNOB_RANGES: dict[str, tuple[int, int]] = {"threads": (1, 8), "pool": (1, 16), "processes": (1, 4)}
OTHER_KNOB_RANGE = (1, 4)
CONNECTIONS = (10, 10_000)
LOAD_FRACTION = (0.2, 0.9)  # open loop: rate / estimated capacity
THINK_S = (1e-3, 50e-3)
REQUESTS_PER_CONN: tuple[int | None, ...] = (1, 10, None)
IDLE = (10, 3_000)
CPU_US, GIL_US, IO_US = (10.0, 500.0), (5.0, 200.0), (100.0, 5_000.0)
RESP_BYTES = (16, 65_536)
# Share of the points where an optional setting is 0.
P_ZERO = {"think": 0.5, "idle": 0.5, "cpu": 1 / 3, "gil": 1 / 3, "io": 0.5}
# Run lengths: floors (window, warm-up) and caps; one point costs at most cap + cap + ~1 s start/stop.
FLOORS = {False: (1.2, 0.4), True: (0.6, 0.3)}
CAPS = {False: (3.0, 2.0), True: (2.5, 1.5)}
MIN_REQUESTS = 300  # the window holds at least this many expected completions (a p99 needs them)
START_STOP_S = 1.0  # server start, load generator start, stop: per point, outside warm-up + window
# The facets the off-grid table groups errors by, in print order.
FACETS = ("mode", "arrival", "requests_per_conn", "think", "idle", "cpu_us", "gil_us", "io_us", "cores",
          "connections", "resp_bytes", "dispatch", "threads", "pool", "processes")
METRICS = ("throughput", "p50", "p99", "rss", "threads")


def _knob_fields() -> tuple[str, ...]:
    return tuple(sorted({k.field for a in registry.architectures() for k in a.knobs}))


def _dimensions() -> tuple[str, ...]:
    return ("model", *(f"knob_{f}" for f in _knob_fields()), "dispatch", "cores", "connections", "mode", "load",
            "arrival", "think", "requests_per_conn", "idle", "cpu", "gil", "io", "resp")


def _pick(u: float, choices: Sequence[Any]) -> Any:
    return choices[min(int(u * len(choices)), len(choices) - 1)]


def _log(u: float, lo: float, hi: float) -> float:
    return lo * (hi / lo) ** u


def _log_int(u: float, lo: int, hi: int) -> int:
    """An integer in lo..hi, log-uniform (each doubling about as likely)."""
    return max(lo, min(hi, int(math.floor(_log(u, lo, hi + 1)))))


def _maybe(u: float, p_zero: float, draw) -> float:
    """0 for u below p_zero; else draw(v) with v the rest of u rescaled to [0, 1)."""
    return 0.0 if u < p_zero else draw((u - p_zero) / (1.0 - p_zero))


def mix_label(w: Workload) -> str:
    """The work kinds a request asks for, e.g. 'cpu+io' ('none': headers only)."""
    kinds = [k for k, v in (("cpu", w.cpu_us), ("gil", w.gil_us), ("io", w.io_us)) if v > 0]
    return "+".join(kinds) or "none"


def capacity_estimate(scenario: Scenario, profile: CostProfile) -> float:
    """Requests per second the analytic bottleneck bound allows this configuration (arrivals unbounded)."""
    from simkit.analytic import throughput_bound

    return throughput_bound(scenario.replace(mode="open", rate_rps=1e12, think_s=0.0), profile)


def run_lengths(scenario: Scenario, profile: CostProfile, quick: bool) -> tuple[float, float, float]:
    """(window, warm-up, expected latency) for one point, like calibration.grid.make_scenario: a window
    of >= 4 latencies and MIN_REQUESTS completions, a warm-up of >= 1.5 latencies (>= 1 s when
    thousands of connections open), floors and caps per campaign size."""
    from simkit.analytic import throughput_bound
    from simkit.costs import demands

    w = scenario.workload
    d = demands(scenario, profile)
    base = d.cpu_s + d.io_s + d.rtt_s
    if w.mode == "closed":
        x = throughput_bound(scenario, profile)
        lat = max(w.connections / x - w.think_s, base)
    else:
        cap = capacity_estimate(scenario, profile)
        x = float(w.rate_rps)
        rho = min(x / cap, 0.95)
        lat = base + rho / (1.0 - rho) / cap
    (d_floor, w_floor), (d_cap, w_cap) = FLOORS[quick], CAPS[quick]
    duration = min(max(d_floor, 4.0 * lat, MIN_REQUESTS / max(x, 1e-3)), d_cap)
    many = w.connections + w.idle_connections >= 2000
    warmup = min(max(w_floor, 1.5 * lat, 1.0 if many else 0.0), w_cap)
    return round(duration, 2), round(warmup, 2), lat


def _point(u: Mapping[str, float], models: Sequence[str], profile: CostProfile, max_cores: int,
           quick: bool) -> GridPoint:
    arch = registry.get(_pick(u["model"], models))
    knobs = {}
    for k in arch.knobs:
        lo, hi = KNOB_RANGES.get(k.field, OTHER_KNOB_RANGE)
        lo = max(lo, k.minimum)
        knobs[k.field] = _log_int(u[f"knob_{k.field}"], lo, max(lo, hi))
    if "processes" in knobs:  # the accept dispatch only means something across processes
        knobs["dispatch"] = _pick(u["dispatch"], DISPATCH_MODES)
    spec = ModelSpec.for_model(arch.name, backlog=CALIBRATION_BACKLOG, **knobs)
    mode = _pick(u["mode"], LOAD_MODES)
    whole_conn = arch.one_connection_at_a_time
    if whole_conn:
        # keep-alive forever would hold the only thread; open-loop arrivals spread over many
        # connections would wait behind one client's next request: a connection per request.
        rpc = _pick(u["requests_per_conn"], (1, 10)) if mode == "closed" else 1
    else:
        rpc = _pick(u["requests_per_conn"], REQUESTS_PER_CONN)
    connections = round(_log(u["connections"], *CONNECTIONS))
    idle = 0 if whole_conn else round(_maybe(u["idle"], P_ZERO["idle"], lambda v: _log(v, *IDLE)))
    think = 0.0
    if mode == "closed":
        think = round(_maybe(u["think"], P_ZERO["think"], lambda v: _log(v, *THINK_S)), 4)
    work = {
        "cpu_us": round(_maybe(u["cpu"], P_ZERO["cpu"], lambda v: CPU_US[0] + v * (CPU_US[1] - CPU_US[0]))),
        "gil_us": round(_maybe(u["gil"], P_ZERO["gil"], lambda v: GIL_US[0] + v * (GIL_US[1] - GIL_US[0]))),
        "io_us": round(_maybe(u["io"], P_ZERO["io"], lambda v: _log(v, *IO_US))),
    }
    cores = _pick(u["cores"], range(1, max_cores + 1))
    hardware = calibration_hardware(cores, 2 * (connections + idle) + 1024)
    workload = Workload(connections=connections, requests_per_conn=rpc, idle_connections=idle, think_s=think,
                        resp_bytes=round(_log(u["resp"], *RESP_BYTES)), connect_rate_cps=CALIBRATION_CONNECT_RATE_CPS,
                        **work)
    scenario = Scenario(model=spec, hardware=hardware, workload=workload)
    if mode == "open":
        frac = LOAD_FRACTION[0] + u["load"] * (LOAD_FRACTION[1] - LOAD_FRACTION[0])
        rate = frac * capacity_estimate(scenario, profile)
        scenario = scenario.replace(mode="open", rate_rps=round(rate, 3), arrival=_pick(u["arrival"], ARRIVALS))
    duration, warmup, lat = run_lengths(scenario, profile, quick)
    scenario = scenario.replace(duration_s=duration, warmup_s=warmup, timeout_s=max(10.0, round(4.0 * lat, 2)))
    return GridPoint(scenario, OFFGRID_ROLE, mix_label(scenario.workload))


def build_offgrid(n: int, profile: CostProfile, *, seed: int = OFFGRID_SEED, quick: bool = False,
                  models: Sequence[str] | None = None, max_cores: int | None = None) -> list[GridPoint]:
    """n off-grid points, the same for the same seed, models, max_cores and profile (the open-loop rates
    and run lengths follow its capacity estimate). models: default every registered one; max_cores:
    default min(2, this box's cores)."""
    from scipy.stats import qmc

    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"offgrid: expected a number of points >= 0, got {n!r}")
    if n == 0:
        return []
    names = tuple(registry.get(m).name for m in models) if models else registry.names()
    if not names:
        raise ValueError("models: the off-grid design needs at least one model")
    max_cores = max_cores or min(2, available_cores())
    dims = _dimensions()
    cube = qmc.LatinHypercube(d=len(dims), rng=seed).random(n)
    return [_point(dict(zip(dims, row, strict=True)), names, profile, max_cores, quick) for row in cube]


def real_run_s(points: Sequence[GridPoint]) -> float:
    """Seconds of real runs the points take: warm-up + window + START_STOP_S each."""
    return sum(p.scenario.workload.warmup_s + p.scenario.workload.duration_s + START_STOP_S for p in points)


# -- the off-grid table --------------------------------------------------------------------------------
def scenario_facts(s: Scenario) -> dict[str, Any]:
    """The settings a validation row carries beside calibration.validate's columns: the load shape, the
    work, and the knobs the model's registry entry has (dispatch where it has a processes knob)."""
    w = s.workload
    arch = registry.get(s.model.name)
    out: dict[str, Any] = {"mode": w.mode, "arrival": w.arrival if w.mode == "open" else "",
                           "rate_rps": w.rate_rps if w.rate_rps is not None else math.nan, "think_s": w.think_s,
                           "requests_per_conn": w.requests_per_conn if w.requests_per_conn is not None else 0,
                           "idle_connections": w.idle_connections, "cpu_us": w.cpu_us, "gil_us": w.gil_us,
                           "io_us": w.io_us, "resp_bytes": w.resp_bytes, "dispatch": ""}
    for k in arch.knobs:
        out[k.field] = getattr(s.model, k.field)
    if any(k.field == "processes" for k in arch.knobs):
        out["dispatch"] = s.model.dispatch
    return out


def _span(v: float, edges: Sequence[int]) -> str:
    """v's bucket among edges, e.g. '100-999' or '10000+'."""
    for lo, hi in zip(edges, edges[1:], strict=False):
        if v < hi:
            return str(lo) if hi - 1 == lo else f"{lo}-{hi - 1}"
    return f"{edges[-1]}+"


def facet_values(row: Mapping[str, Any]) -> dict[str, str]:
    """Which value of each facet a validation row (with scenario_facts) belongs to; facets that do not
    apply to its model or loop mode are left out."""
    out = {"mode": row["mode"],
           "requests_per_conn": "keep-alive" if not row["requests_per_conn"] else str(int(row["requests_per_conn"])),
           "idle": ">0" if row["idle_connections"] else "0",
           "cores": str(int(row["cores"])),
           "connections": _span(row["connections"], (10, 100, 1000, 10_000)),
           "resp_bytes": _span(row["resp_bytes"], (16, 1024, 8192))}
    if row["mode"] == "open":
        out["arrival"] = row["arrival"]
    else:
        out["think"] = ">0" if row["think_s"] else "0"
    for kind in ("cpu_us", "gil_us", "io_us"):
        out[kind] = ">0" if row[kind] else "0"
    if row.get("dispatch"):
        out["dispatch"] = row["dispatch"]
    for f in ("threads", "pool", "processes"):
        v = row.get(f)
        if isinstance(v, (int, float)) and math.isfinite(v):
            out[f] = _span(v, (1, 2, 4, 8, 16))
    return out


def summarize_offgrid(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Median |relative error| per model, overall, and per facet value (which knob values carry the error)."""
    def errs(sel: Sequence[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {m: median_abs([r["rel_err"] for r in sel if r["metric"] == m]) for m in METRICS}
        out["points"] = sum(1 for r in sel if r["metric"] == "throughput")
        return out

    per_model = {m: errs([r for r in rows if r["model"] == m]) for m in sorted({r["model"] for r in rows})}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        for facet, value in facet_values(r).items():
            groups.setdefault((facet, value), []).append(r)
    order = {f: i for i, f in enumerate(FACETS)}
    per_knob = [{"knob": f, "value": v, **errs(sel)}
                for (f, v), sel in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0][1]))]
    return {"per_model": per_model, "overall": errs(rows), "per_knob": per_knob}


def format_offgrid(summary: Mapping[str, Any], header: str = "") -> str:
    """The off-grid table as plain text (per model, then per knob value)."""
    def pct(v: Any) -> str:
        return "  n/a" if v is None or not isinstance(v, (int, float)) or not math.isfinite(v) else f"{100 * v:4.0f}%"

    def cells(e: Mapping[str, Any]) -> str:
        return "  ".join(f"{pct(e.get(m)):>6s}" for m in METRICS) + f"  {e.get('points', 0):6d}"

    head = "  ".join(f"{m:>6s}" for m in METRICS) + "  points"
    lines = [header or "off-grid validation (median |rel err|)", f"{'model':32s} {head}"]
    lines += [f"{m:32s} {cells(e)}" for m, e in summary["per_model"].items()]
    lines.append(f"{'all models':32s} {cells(summary['overall'])}")
    lines.append(f"{'knob = value':32s} {head}")
    lines += [f"{(k['knob'] + ' = ' + k['value']):32s} {cells(k)}" for k in summary["per_knob"]]
    return "\n".join(lines)


__all__ = ["FULL_POINTS", "OFFGRID_ROLE", "OFFGRID_SEED", "QUICK_POINTS", "build_offgrid", "capacity_estimate",
           "format_offgrid", "real_run_s", "scenario_facts", "summarize_offgrid"]
