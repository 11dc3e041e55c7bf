"""Calibrating an external server (docs/external-servers.md, "Calibrating your server"): a small grid of
real runs of one realkit.target.Target, its per-request costs derived on top of this host's probed
profile, held-out validation with calibration's own tables, and an honest verdict on whether the server
behaves like the model it was named as.

The grid (target_grid): 1 core at 10 / 100 / 1,000 keep-alive connections (training), then held out:
2 cores (the knobs the command's {workers} / {threads} placeholders fill, scaled with the cores) and
5-10x the connections. No work parameters: an external server does its own work.

What is derived, not probed (derive_costs): the server's CPU per request beyond what the probed costs
(recv, send, epoll) already charge, as calibration.fit.parse_from_server derives realkit's parse_s: the
real CPU per request at 1 core minus the simulated one with parse_s = 0. A server cheaper per request
than the probed Python syscall path (nginx) gets parse_s = 0 and those syscall costs scaled down to its
measured CPU instead. Its memory: the RSS base and the per-connection slope from the training runs,
the base split evenly over the model's processes. A least-squares fit (calibration.fit.fit) of a few
named parameters is optional, for what a derived value cannot see.

Honesty (check_shape, the verdict): a server whose measured threads or processes do not match the
named model's, or whose held-out median errors miss BARS, gets a warning in the profile's notes
(notes["target"]["warning"], which the what-if report prints) and a ranking of every registered model
by how well it reproduces the same runs (rank_models), instead of a confident prediction.
"""

from __future__ import annotations

import math
import re
import statistics
import string
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from calibration.compare import SimBatch, log_ratio, residuals, sim_scenario
from calibration.fit import robust_cost
from calibration.grid import CALIBRATION_CONNECT_RATE_CPS, GridPoint, calibration_hardware
from calibration.runs import Run, load_runs, measure_with_retry, save_runs
from calibration.validate import USLBaseline, json_safe, summarize, validate, write_csv
from simkit import registry
from simkit.profile import CostProfile, host_fingerprint, host_name, profile_dir, resolve_profile
from simkit.result import Result
from simkit.scenario import ModelSpec, Scenario, Workload, available_cores

__all__ = ["BARS", "TargetCalibration", "calibrate_target", "check_shape", "derive_costs", "format_target",
           "rank_models", "target_grid", "target_profile_path"]

# Held-out median |relative error| a target must stay within to be planned for without a warning.
BARS: dict[str, float] = {"throughput": 0.15, "p99": 0.30}
# The per-request syscall costs a server cheaper than the probed Python path scales down (derive_costs).
SYSCALL_PARAMS: tuple[str, ...] = ("recv_base_s", "send_base_s", "epoll_wait_base_s", "epoll_per_event_s",
                                   "epoll_ctl_s")
# Placeholder -> the knobs it fills (realkit.target.PLACEHOLDERS' sizing entries).
_KNOB_PLACEHOLDERS: dict[str, tuple[str, ...]] = {"workers": ("processes",), "threads": ("threads", "pool")}
SYSCALL_SCALES: tuple[float, ...] = (1.0, 0.85, 0.7, 0.6, 0.5, 0.35, 0.25)  # the candidates derive_costs tries
TRAIN_CONNECTIONS = (10, 100, 1000)
TARGET_MIX = "target"  # GridPoint.mix of every target point: the server's own work

MeasureFn = Callable[[Scenario], Result]
Progress = Callable[[str, str, int, int], None]


# -- the grid --------------------------------------------------------------------------------------
def scaled_knobs(target, cores: int, knobs: Mapping[str, int] | None = None) -> dict[str, int]:
    """The model's knobs on `cores` cores: `knobs` (the 1-core configuration; default: the registry's
    sizing for 1 core) with each knob the command's placeholders fill multiplied by the cores. A knob
    the command does not expose stays as given: the server cannot be told otherwise."""
    arch = registry.get(target.as_model)
    base = {**arch.sized(1), **{k: v for k, v in (knobs or {}).items() if v is not None}}
    fields = {k.field for k in arch.knobs}
    unknown = sorted(set(base) - fields)
    if unknown:
        raise ValueError(f"knobs: {unknown[0]} is not a knob of {arch.name} (it has "
                         f"{', '.join(sorted(fields)) or 'none'})")
    used = {name for _, name, _, _ in string.Formatter().parse(target.command) if name}
    exposed = {next(f for f in _KNOB_PLACEHOLDERS[p] if f in fields) for p in used
               if p in _KNOB_PLACEHOLDERS and any(f in fields for f in _KNOB_PLACEHOLDERS[p])}
    return {k: v * cores if k in exposed else v for k, v in base.items()}


def _scenario(spec: ModelSpec, connections: int, cores: int, duration_s: float, warmup_s: float) -> Scenario:
    rpc = 1 if registry.get(spec.name).one_connection_at_a_time else None
    return Scenario(model=spec, hardware=calibration_hardware(cores, 2 * connections + 1024),
                    workload=Workload(connections=connections, requests_per_conn=rpc, duration_s=duration_s,
                                      warmup_s=warmup_s, timeout_s=10.0,
                                      connect_rate_cps=CALIBRATION_CONNECT_RATE_CPS),
                    seed=1)


def target_grid(target, *, quick: bool = False, knobs: Mapping[str, int] | None = None,
                train_connections: Sequence[int] = TRAIN_CONNECTIONS,
                extrap_connections: Sequence[int] | None = None, cores_extra: int | None = None,
                duration_s: float | None = None, warmup_s: float | None = None) -> list[GridPoint]:
    """Training points at 1 core over train_connections; held out: `cores_extra` cores (default 2 when
    this box has them; 0: none) at the middle count (quick) or every count but the smallest, and
    5,000 (quick) or 5,000 and 10,000 connections (extrap_connections; () for none) at 1 core."""
    if not train_connections or any(not isinstance(c, int) or c < 1 for c in train_connections):
        raise ValueError(f"train_connections: expected connection counts >= 1, got {train_connections!r}")
    duration = duration_s if duration_s is not None else (0.6 if quick else 1.2)
    warmup = warmup_s if warmup_s is not None else (0.3 if quick else 0.5)
    extra = (2 if available_cores() >= 2 else 0) if cores_extra is None else cores_extra
    extrap = list((5000,) if quick else (5000, 10000)) if extrap_connections is None else list(extrap_connections)
    conns = sorted(train_connections)

    def spec(cores: int) -> ModelSpec:
        return target.model_spec(**scaled_knobs(target, cores, knobs))

    points = [GridPoint(_scenario(spec(1), c, 1, duration, warmup), "train", TARGET_MIX) for c in conns]
    if extra >= 2:
        for c in [conns[len(conns) // 2]] if quick else conns[1:]:
            points.append(GridPoint(_scenario(spec(extra), c, extra, duration, warmup), "cores", TARGET_MIX))
    for c in extrap:  # thousands of connections take a while to open: a longer warm-up
        points.append(GridPoint(_scenario(spec(1), c, 1, duration, max(warmup, 1.0)), "connections", TARGET_MIX))
    return points


CONNECT_RATE_ESTIMATE_CPS = 5000.0  # how fast the load generator opens connections, to size a warm-up
WINDOW_CAPS_S = {True: (3.0, 3.0), False: (4.0, 8.0)}  # quick -> (warm-up, window) caps


def size_window(scenario: Scenario, throughput_rps: float, quick: bool) -> Scenario:
    """`scenario` with its warm-up and window grown for steady state, from a throughput measured at a
    nearby point: a closed loop's latency is N / X; the warm-up covers 1.5 latencies and the connection
    ramp, the window 4 latencies (both capped: WINDOW_CAPS_S)."""
    if not throughput_rps > 0:
        return scenario
    wl = scenario.workload
    lat = wl.connections / throughput_rps
    cap_warm, cap_win = WINDOW_CAPS_S[bool(quick)]
    warm = max(wl.warmup_s, min(cap_warm, 1.5 * lat + wl.connections / CONNECT_RATE_ESTIMATE_CPS))
    window = max(wl.duration_s, min(cap_win, 4.0 * lat))
    return scenario.replace(warmup_s=round(warm, 2), duration_s=round(window, 2),
                            timeout_s=max(wl.timeout_s, round(4.0 * lat, 2)))


RAMP_RETRIES = 2  # re-runs of a point whose window opened with clients still connecting


def longer_warmup(scenario: Scenario, quick: bool) -> Scenario:
    """`scenario` with its warm-up tripled, within twice WINDOW_CAPS_S's cap: for a run whose clients
    were still connecting when its window opened (Result.failure "ramp"), a load generator that opens
    connections while it is busy serving (a server faster than it) or a server that accepts a few a
    turn (nginx)."""
    wl = scenario.workload
    cap = 2.0 * WINDOW_CAPS_S[bool(quick)][0]
    return scenario.replace(warmup_s=round(max(wl.warmup_s, min(cap, 3.0 * wl.warmup_s)), 2))


def run_sized(points: Sequence[GridPoint], measure: MeasureFn, *, quick: bool,
              progress: Callable[[str, int, int], None] | None = None) -> list[Run]:
    """Measure every point (calibration.runs.measure_with_retry: one retry, failures kept), the training
    points first by connections, then the held-out ones; each point's window sized (size_window) from
    the throughput of the last training run, an unknown server's only estimate of its latency. The
    Runs come back in the order of `points`."""
    order = sorted(range(len(points)), key=lambda i: (points[i].role != "train",
                                                      points[i].scenario.workload.connections))
    runs: list[Run | None] = [None] * len(points)
    x_seen = 0.0
    for k, i in enumerate(order):
        point = points[i]
        if x_seen > 0:
            point = replace(point, scenario=size_window(point.scenario, x_seen, quick))
        run = measure_with_retry(point, measure)
        for _ in range(RAMP_RETRIES):
            if not (run.ok and "ramp" in run.result.failure.split(",")):
                break
            # the window opened with clients still connecting: once more, with a longer warm-up
            point = replace(point, scenario=longer_warmup(point.scenario, quick))
            run = measure_with_retry(point, measure)
        runs[i] = run
        if run.ok and point.role == "train":
            x_seen = run.result.throughput_rps
        if progress:
            progress(f"{point.label()}: {'ok' if run.ok else run.error[:60]}", k + 1, len(points))
    return [r for r in runs if r is not None]


# -- derived costs -----------------------------------------------------------------------------------
def _cpu_per_request(r: Result | str) -> float:
    if not isinstance(r, Result) or r.throughput_rps <= 0:
        return math.nan
    return r.cpu_util / r.throughput_rps


def _median(values: Sequence[float]) -> float:
    vals = [v for v in values if math.isfinite(v)]
    return statistics.median(vals) if vals else math.nan


def _as_model(scenario: Scenario, model: str, gil: bool) -> Scenario:
    """`scenario` with another model: that model's registry sizing for the scenario's cores."""
    if scenario.model.name == model:
        return scenario
    spec = ModelSpec.for_model(model, gil=gil, backlog=scenario.model.backlog,
                               **registry.get(model).sized(scenario.hardware.cores))
    wl = scenario.workload
    if registry.get(model).one_connection_at_a_time and wl.requests_per_conn is None:
        wl = replace(wl, requests_per_conn=1)
    return replace(scenario, model=spec, workload=wl)


def derive_costs(train: Sequence[Result], base: CostProfile, batch: SimBatch, *, model: str | None = None,
                 memory: bool = True, refine: int = 2) -> tuple[CostProfile, dict[str, Any]]:
    """The target's per-request CPU and memory on top of `base`, from its training runs (1 core).

    CPU: the median over runs of real CPU per request minus the simulated one with parse_s = 0. What is
    left over becomes parse_s, then up to `refine` corrections: re-simulate and move the value by the
    remaining median difference (the costs interact: batching, epoll per event). A server cheaper than
    that simulated floor gets parse_s = 0 and SYSCALL_PARAMS scaled by the one of SYSCALL_SCALES whose
    simulation reproduces the training runs best (throughput, p50, p99 and the CPU per request:
    calibration's robust cost).
    Memory (memory=True): the RSS difference real - simulated as a line over connections moves the
    process base and rss_conn_bytes; a multi-process model's base is split evenly over its processes.
    model: simulate the runs as this registered model instead of their own (rank_models)."""
    runs = [r for r in train if r.throughput_rps > 0]
    if not runs:
        raise ValueError("train: no training run with throughput > 0")
    gil = runs[0].scenario.model.gil
    scen = [sim_scenario(r, None) if model is None else _as_model(r.scenario, registry.resolve(model), gil)
            for r in runs]
    real_cpr = [_cpu_per_request(r) for r in runs]

    def sims_at(profile: CostProfile) -> list[Result | str]:
        return batch.run(scen, [profile] * len(scen))

    def gap(sims: Sequence[Result | str]) -> float:
        return _median([rc - _cpu_per_request(s) for rc, s in zip(real_cpr, sims, strict=True)])

    zero = base.with_params("fit", parse_s=0.0)
    sims0 = sims_at(zero)
    sim0 = _median([_cpu_per_request(s) for s in sims0])
    measured = _median(real_cpr)
    info: dict[str, Any] = {"real_cpu_per_request_s": measured, "sim_cpu_per_request_at_parse_0_s": sim0,
                            "parse_s": 0.0, "syscall_scale": 1.0, "refinements": 0}
    if not math.isfinite(measured) or not math.isfinite(sim0):
        info["note"] = "no CPU reading in the runs: parse_s left at the host's"
        profile, sims = base, sims_at(base)
    elif measured >= sim0:
        parse = max(0.0, gap(sims0))
        profile = zero.with_params("fit", parse_s=parse, sds={"parse_s": 0.1 * parse})
        sims = sims_at(profile)
        for _ in range(refine):
            d = gap(sims)
            if not math.isfinite(d) or abs(d) <= 0.05 * measured:
                break
            parse = max(0.0, parse + d)
            profile = zero.with_params("fit", parse_s=parse, sds={"parse_s": 0.1 * parse})
            sims = sims_at(profile)
            info["refinements"] += 1
        info["parse_s"] = parse
    else:
        # Cheaper than the simulator's floor (a C server against the probed Python path): the floor is not
        # all syscalls (wake-ups, switches), and a faster loop idles and wakes more, so CPU alone cannot
        # pick the scale. The candidate that best reproduces the training runs does (calibration's cost),
        # their CPU per request counted beside throughput and latency: where the load generator on its
        # own CPU bounds the 1-core runs, throughput alone cannot tell the candidates apart, and the
        # server's CPU is what it will share the cores with the generator by at 2 cores.
        best = None
        for scale in SYSCALL_SCALES:
            candidate = zero.with_params("fit", **{n: base[n] * scale for n in SYSCALL_PARAMS})
            got = sims_at(candidate)
            cpu = [log_ratio(_cpu_per_request(g), rc) for g, rc in zip(got, real_cpr, strict=True)]
            cost = robust_cost(np.concatenate([residuals(got, runs), np.asarray(cpu, float)]))
            if best is None or cost < best[0]:
                best = (cost, scale, candidate, got)
        _cost, info["syscall_scale"], profile, sims = best
        info["note"] = ("cheaper per request than the simulator's floor on this host: parse_s = 0 and the "
                        "syscall costs scaled by the candidate that best reproduces the training runs")
    info["sim_cpu_per_request_s"] = _median([_cpu_per_request(s) for s in sims])
    profile, sims, info["loadgen"] = _derive_loadgen(runs, profile, sims, sims_at)
    if memory:
        profile, info["memory"] = _derive_memory(runs, sims, profile)
    return profile, info


def _loadgen_per_request(r: Result | str) -> float:
    if not isinstance(r, Result) or r.throughput_rps <= 0 or not r.loadgen_cpu_util > 0:
        return math.nan
    return r.loadgen_cpu_util / r.throughput_rps


def _derive_loadgen(runs: Sequence[Result], profile: CostProfile, sims: Sequence[Result | str],
                    sims_at: Callable[[CostProfile], list[Result | str]]
                    ) -> tuple[CostProfile, Sequence[Result | str], dict[str, Any]]:
    """The load generator's CPU per request against this server, as its training runs measured it (the
    generator on a CPU of its own there): client_cpu_per_request_s moves by the median gap between the
    real and the simulated generator's CPU per request, then once more after a re-simulation. The
    host's probe priced the generator against realkit's Python reactor; a server that answers many
    times faster (nginx) lets it batch more answers a wake-up, and where it then shares the cores (2
    cores) or bounds the rate, that cost decides. Runs without the generator's CPU leave it."""
    real = [_loadgen_per_request(r) for r in runs]
    if not any(math.isfinite(v) for v in real):
        return profile, sims, {"note": "no load generator CPU in the runs: the host's kept"}
    start = per = profile["client_cpu_per_request_s"]
    for _ in range(2):
        gap = _median([rv - _loadgen_per_request(sv) for rv, sv in zip(real, sims, strict=True)])
        if not math.isfinite(gap) or abs(gap) <= 0.03 * _median(real):
            break
        per = max(0.0, per + gap)
        profile = profile.with_params("fit", client_cpu_per_request_s=per, sds={"client_cpu_per_request_s": 0.1 * per})
        sims = sims_at(profile)
    return profile, sims, {"real_cpu_per_request_s": _median(real), "host_client_cpu_per_request_s": start,
                           "client_cpu_per_request_s": per,
                           "sim_cpu_per_request_s": _median([_loadgen_per_request(s) for s in sims])}


def _derive_memory(runs: Sequence[Result], sims: Sequence[Result | str], profile: CostProfile
                   ) -> tuple[CostProfile, dict[str, Any]]:
    pairs = [(r, s) for r, s in zip(runs, sims, strict=True)
             if isinstance(s, Result) and r.rss_peak_bytes > 0 and s.rss_peak_bytes > 0]
    if not pairs:
        return profile, {"note": "no RSS reading: the host's memory costs kept"}
    n = [float(r.scenario.workload.connections) for r, _ in pairs]
    e = [float(r.rss_peak_bytes - s.rss_peak_bytes) for r, s in pairs]
    if len(set(n)) >= 2:
        slope, intercept = np.polyfit(n, e, 1)
    else:
        slope, intercept = 0.0, float(np.mean(e))
    procs = max(1, int(statistics.median(s.processes_peak or 1 for _, s in pairs)))
    old_base = profile["rss_process_bytes"] + (procs - 1) * profile["rss_worker_bytes"]
    new_base = max(old_base + float(intercept), 2**20)  # a process is at least a MiB resident
    conn = max(0.0, profile["rss_conn_bytes"] + float(slope))
    values = {"rss_process_bytes": new_base / procs, "rss_conn_bytes": conn}
    if procs > 1:
        values["rss_worker_bytes"] = new_base / procs
    sds = {k: 0.1 * v for k, v in values.items()}
    return profile.with_params("fit", sds=sds, **values), {
        "processes": procs, "base_bytes": new_base, "conn_bytes": conn, "host_base_bytes": old_base}


# -- shape and ranking ----------------------------------------------------------------------------------
def check_shape(reals: Sequence[Result], sims: Sequence[Result | str]) -> list[str]:
    """Where the server's threads or processes do not match the model's: one line per kind, at the
    run where they differ most (empty when they match). Threads differ when by more than
    max(2, 20%); processes when at all."""
    out = []
    for field_name, what, tol in (("threads_peak", "threads", 0.2), ("processes_peak", "processes", 0.0)):
        worst = None
        for r, s in zip(reals, sims, strict=True):
            if not isinstance(s, Result):
                continue
            got, want = getattr(r, field_name), getattr(s, field_name)
            if got <= 0 or want <= 0:
                continue
            off = abs(got - want)
            if off > max(2 if tol else 0, tol * want) and (worst is None or off > worst[0]):
                worst = (off, got, want, r.scenario)
        if worst is not None:
            _off, got, want, sc = worst
            out.append(f"{what}: the server ran {got} where the simulated {sc.model.name} ran {want} (at "
                       f"{sc.workload.connections:,} connections on {sc.hardware.cores} core(s))")
    return out


def _shape_residuals(reals: Sequence[Result], sims: Sequence[Result | str]) -> list[float]:
    out = []
    for r, s in zip(reals, sims, strict=True):
        for name in ("threads_peak", "processes_peak"):
            got = float(getattr(r, name))
            out.append(log_ratio(float(getattr(s, name)) if isinstance(s, Result) else 0.0, got)
                       if got > 0 else 0.0)
    return out


def model_score(reals: Sequence[Result], sims: Sequence[Result | str]) -> dict[str, float]:
    """How well simulated runs reproduce real ones: rms of calibration's weighted log errors (throughput,
    p50, p99), rms of the threads / processes log ratios, and both together (the ranking's key)."""
    perf = residuals(list(sims), list(reals))
    shape = np.asarray(_shape_residuals(reals, sims), float)
    both = np.concatenate([perf, shape])

    def rms(a: np.ndarray) -> float:
        return float(np.sqrt(np.mean(a**2))) if len(a) else math.nan

    return {"rms_log_error": rms(perf), "rms_log_shape": rms(shape), "score": rms(both)}


def rank_models(runs: Sequence[Run], base: CostProfile, batch: SimBatch, *,
                models: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Every registered model (or `models`), its per-request costs derived from the same training runs
    (derive_costs, CPU only), scored on every run (model_score), best first."""
    ok = [run for run in runs if run.ok]
    train = [run.result for run in ok if run.point.role == "train"]
    reals = [run.result for run in ok]
    gil = reals[0].scenario.model.gil
    out = []
    for name in models or registry.names():
        try:
            profile, info = derive_costs(train, base, batch, model=name, memory=False, refine=1)
        except ValueError:
            continue
        scen = [_as_model(r.scenario, name, gil) for r in reals]
        sims = batch.run(scen, [profile] * len(scen))
        out.append({"model": name, **model_score(reals, sims), "parse_s": info["parse_s"],
                    "syscall_scale": info["syscall_scale"]})
    return sorted(out, key=lambda row: (not math.isfinite(row["score"]), row["score"]))


# -- the whole calibration ------------------------------------------------------------------------------
@dataclass(frozen=True)
class TargetCalibration:
    profile: CostProfile
    path: Path | None
    csv_path: Path | None
    runs: list[Run]
    rows: list[dict[str, Any]]  # the held-out table (calibration.validate's rows)
    summary: dict[str, Any]  # calibration.validate.summarize(rows)
    derived: dict[str, Any]
    shape: list[str]  # check_shape's lines
    misses: list[str]  # bars missed, e.g. "held-out throughput error 40% (bar 15%)"
    ranking: list[dict[str, Any]]  # rank_models, when the verdict is not ok
    warning: str  # "" when the server behaves like its model within the bars
    elapsed_s: float = 0.0
    fit: dict[str, Any] | None = None  # calibration.fit.FitResult.summary() when fit_names were given
    score: dict[str, float] = field(default_factory=dict)  # model_score of the named model

    @property
    def ok(self) -> bool:
        return not self.warning


def target_name(target) -> str:
    """A file-name-safe name for the target from its command: up to three words that are neither
    options nor placeholders (their base names), and the model's short name."""
    import shlex

    words = [w for w in shlex.split(target.command) if not w.startswith("-") and "{" not in w]
    parts = [Path(w).name for w in words[:3] if Path(w).name] or ["target"]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", "-".join(parts)).strip("-.") or "target"
    return f"{slug[:60]}-{registry.get(target.as_model).short}"


def target_profile_path(target, base: CostProfile) -> Path:
    """`<host>-<target name>.json` beside the host profile (its directory, else profile_dir())."""
    if base.path:
        where, host = Path(base.path).parent, Path(base.path).stem
    else:
        where, host = profile_dir(), host_name()
    return where / f"{host}-{target_name(target)}.json"


def _misses(summary: Mapping[str, Any]) -> list[str]:
    overall = summary.get("overall") or {}
    out = []
    for metric, bar in BARS.items():
        v = overall.get(metric)
        if v is None or not math.isfinite(v):
            out.append(f"no held-out {metric} error (no held-out point ran)")
        elif v > bar:
            out.append(f"held-out {metric} error {v:.0%} (bar {bar:.0%})")
    return out


def _warning(target, shape: Sequence[str], misses: Sequence[str], ranking: Sequence[Mapping[str, Any]]) -> str:
    """The honesty warning: "" when the server behaves like its model within BARS."""
    if not shape and not misses:
        return ""
    text = (f"the server ({target.command}) does not behave like {target.as_model}: "
            f"{'; '.join([*shape, *misses])}. Predictions made as {target.as_model} are not to be trusted")
    if ranking:
        own = next((i for i, r in enumerate(ranking) if r["model"] == target.as_model), None)
        better = list(ranking[:own] if own is not None else ranking)[:3]
        if better:
            text += "; models that reproduce its runs better: " + ", ".join(
                f"{r['model']} (score {r['score']:.2f})" for r in better)
            if own is not None:
                text += f", against {target.as_model}'s {ranking[own]['score']:.2f}"
        else:
            text += f"; no registered model reproduces its runs better than {target.as_model}"
        fastest = min(ranking, key=lambda r: r["rms_log_error"] if math.isfinite(r["rms_log_error"]) else math.inf)
        if fastest["model"] != target.as_model and fastest["model"] != (better[0]["model"] if better else None):
            text += (f"; by throughput and latency alone (threads and processes aside): {fastest['model']} "
                     f"(rms log error {fastest['rms_log_error']:.2f})")
    return text + "."


def calibrate_target(target, *, quick: bool = False, out: str | Path | None = None, measure: MeasureFn | None = None,
                     simulate: Callable | None = None, base: CostProfile | str | Path | None = None,
                     knobs: Mapping[str, int] | None = None, grid: Sequence[GridPoint] | None = None,
                     fit_names: Sequence[str] = (), rank: bool | None = None, workers: int = 1,
                     progress: Progress | None = None, write: bool = True,
                     runs_from: str | Path | None = None) -> TargetCalibration:
    """Measure `target` (a realkit.target.Target) on target_grid (or `grid`), derive its costs on `base`
    (default: this host's profile, simkit.profile.resolve_profile), validate on the held-out points,
    judge its shape and errors, and write its profile to `out` (default target_profile_path) with the
    held-out table (.csv) and the runs (.runs.csv) beside it.

    measure(scenario) -> Result: default realkit.runner.measure with the target. rank: rank every
    registered model (default: only when the verdict is not ok). fit_names: profile parameters to fit
    (calibration.fit.fit) on the training runs after the derived ones. runs_from: an earlier target
    calibration's .runs.csv, refitted and re-validated without measuring."""
    from calibration import check_out, raise_nofile
    from calibration.fit import fit as fit_params

    t0 = time.monotonic()
    base_profile = resolve_profile(base)
    path = Path(out) if out is not None else target_profile_path(target, base_profile)
    if write:
        check_out(path)
    if measure is None:
        from realkit.runner import measure as real_measure

        def measure(scenario: Scenario) -> Result:
            return real_measure(scenario, target=target)
    if simulate is None:
        from simkit import simulate
    points = list(grid) if grid is not None else target_grid(target, quick=quick, knobs=knobs)

    def say(stage: str, detail: str, done: int, total: int) -> None:
        if progress:
            progress(stage, detail, done, total)

    if runs_from is not None:
        runs = load_runs(runs_from)
        points = [r.point for r in runs]
    else:
        raise_nofile(max(p.scenario.workload.connections for p in points) * 2 + 1024)
        runs = run_sized(points, measure, quick=quick, progress=lambda d, i, n: say("real runs", d, i, n))
    failed = [r.failure_record() for r in runs if not r.ok]
    train = [r.result for r in runs if r.ok and r.point.role == "train"]
    heldout = [r for r in runs if r.ok and r.point.role != "train"]
    if not train:
        raise RuntimeError(f"calibrate target: every training run failed ({len(failed)} failures; first: "
                           f"{failed[0]['error'] if failed else 'none'})")
    fit_summary = None
    with SimBatch(simulate, workers) as batch:
        say("fit", "deriving the per-request costs", 0, 1)
        profile, derived = derive_costs(train, base_profile, batch)
        if fit_names:
            fitted = fit_params(train, profile, names=tuple(fit_names), batch=batch, max_evaluations=20,
                                time_budget_s=60.0 if quick else 300.0, bootstrap=0)
            profile, fit_summary = fitted.profile, fitted.summary()
        say("fit", "done", 1, 1)
        say("validation", f"simulating {len(heldout)} held-out points", 0, 1)
        rows = validate(heldout, profile, batch, USLBaseline.fit(train))
        summary = summarize(rows)
        ok_runs = [r for r in runs if r.ok]
        reals = [r.result for r in ok_runs]
        sims = batch.run([sim_scenario(r, None) for r in reals], [profile] * len(reals))
        shape = check_shape(reals, sims)
        misses = _misses(summary)
        score = model_score(reals, sims)
        say("validation", "done", 1, 1)
        ranking: list[dict[str, Any]] = []
        if rank if rank is not None else bool(shape or misses):
            say("ranking", "simulating the runs as every registered model", 0, 1)
            ranking = rank_models(runs, base_profile, batch)
            say("ranking", "done", 1, 1)
    warning = _warning(target, shape, misses, ranking)
    grid_notes = [{"role": r.point.role, "cores": r.point.scenario.hardware.cores,
                   "connections": r.point.scenario.workload.connections,
                   "knobs": registry.get(target.as_model).describe(r.point.scenario.model), "ok": r.ok}
                  for r in runs]
    # The host's probes stay (they are this profile's costs too); its realkit fit and tables do not.
    kept = {k: base_profile.notes[k] for k in ("probes", "work_rate") if k in base_profile.notes}
    notes = {
        **kept,
        "host": f"{base_profile.host}-{target_name(target)}",
        "calibrated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "mode": "quick" if quick else "full",
        "base_profile": base_profile.describe(),
        "max_connections": max(p.scenario.workload.connections for p in points),
        "target": {
            "command": target.command, "as_model": target.as_model, "gil": target.gil, "path": target.path,
            "name": target_name(target), "grid": grid_notes, "derived": derived, "fit": fit_summary,
            "validation_summary": summary, "bars": BARS, "shape": shape, "misses": misses, "score": score,
            "ranking": ranking, "verdict": "ok" if not warning else "does not behave like its model",
            "warning": warning,
        },
    }
    final = replace(profile, calibrated=True, fingerprint=base_profile.fingerprint or host_fingerprint(),
                    validation=json_safe(rows), failed_runs=failed, notes=json_safe(notes))
    written = csv_path = None
    if write:
        written = final.save(path)
        csv_path = path.with_suffix(".csv")
        write_csv(rows, csv_path)
        save_runs(runs, path.with_suffix(".runs.csv"))
    return TargetCalibration(final, written, csv_path, runs, rows, summary, derived, shape, misses, ranking,
                             warning, time.monotonic() - t0, fit_summary, score)


def format_target(cal: TargetCalibration) -> str:
    """The calibration in plain text lines: derived values, held-out errors, the verdict."""
    t = cal.profile.notes.get("target", {})
    d = cal.derived
    lines = [f"target: {t.get('command')} as {t.get('as_model')} ({'GIL' if t.get('gil') else 'no GIL'})",
             f"CPU per request: real {1e6 * d['real_cpu_per_request_s']:.1f} us, simulated with parse_s = 0 "
             f"{1e6 * d['sim_cpu_per_request_at_parse_0_s']:.1f} us -> parse_s = {1e6 * d['parse_s']:.1f} us, "
             f"syscall scale {d['syscall_scale']:.2f} (simulated now {1e6 * d['sim_cpu_per_request_s']:.1f} us)"]
    mem = d.get("memory") or {}
    if "base_bytes" in mem:
        lines.append(f"memory: base {mem['base_bytes'] / 2**20:.1f} MiB over {mem['processes']} process(es), "
                     f"{mem['conn_bytes'] / 1024:.2f} KiB per connection")
    o = cal.summary.get("overall", {})

    def pct(v: Any) -> str:
        return "n/a" if v is None or not math.isfinite(v) else f"{v:.0%}"

    lines.append("held out (median |rel err|): " + ", ".join(
        f"{m} {pct(o.get(m))}" for m in ("throughput", "p50", "p99", "rss", "threads"))
        + f" over {cal.summary.get('heldout_runs', 0)} runs; bars: throughput {BARS['throughput']:.0%}, "
        f"p99 {BARS['p99']:.0%}")
    for row in cal.rows:
        if row["metric"] in ("throughput", "p99"):
            lines.append(f"  {row['role']:<11} {row['cores']} core(s) {row['connections']:>6,} conns {row['metric']:<10}"
                         f" real {row['measured']:.4g}  sim {row['predicted']:.4g}  ({pct(abs(row['rel_err']))})")
    if cal.ranking:
        lines.append("models ranked by how well they reproduce the runs (score: rms log error, shape included):")
        lines += [f"  {r['model']:<22} score {r['score']:.3f}  (perf {r['rms_log_error']:.3f}, shape "
                  f"{r['rms_log_shape']:.3f})" for r in cal.ranking]
    lines.append(f"WARNING: {cal.warning}" if cal.warning else
                 f"verdict: behaves like {t.get('as_model')} within the bars")
    return "\n".join(lines)

