"""The what-if pipeline: whatif.toml -> sweep -> capacity / winner map -> report directory.

`load_whatif(path)` parses and validates a workload file strictly (tomllib): an unknown section or
key, a wrong type or an out-of-range value raises ValueError naming `section.key` and what is
allowed, so a typo never silently falls back to a default. `run_whatif(spec, ...)` runs the sweep
and writes reports/whatif-<host>-<date>/. See experiments/whatif.toml for the documented defaults.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import time
import tomllib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.intervals import BandPolicy
from experiments.planning import Sizing, build_grid
from experiments.report import ReportFiles, ReportInputs, write_report
from experiments.sweep import AnalyticPointsWarning, sweep
from experiments.windows import WindowPolicy, plan_windows
from simkit import registry
from simkit.profile import CostProfile, default_profile_path, host_name, resolve_profile
from simkit.scenario import DISPATCH_MODES, Hardware, ModelSpec, Scenario, Workload
from simkit.sim import MAX_SIM_REQUESTS

DEFAULT_WORKLOAD = Path(__file__).with_name("whatif.toml")


@dataclass(frozen=True)
class WhatIf:
    base: Scenario  # connections / cores / model are replaced by the grid
    models: tuple[str, ...]
    connections: tuple[int, ...]
    cores: tuple[int, ...]
    slo_p99_s: float
    memory_bytes: int
    max_error_rate: float = 1e-3
    sizing: Sizing = dataclasses.field(default_factory=Sizing)
    analytic_above: int | None = None  # connections above which simkit.analytic answers instead of the sim
    window: WindowPolicy | None = None  # None: every point simulates base.workload's fixed window
    workers: int | None = None
    source: str = "(built in)"
    bands: BandPolicy = dataclasses.field(default_factory=BandPolicy)  # replications and band level per point

    def scenarios(self) -> list[Scenario]:
        return build_grid(self.base, self.models, self.cores, self.connections, self.sizing)

    def planned(self, profile: CostProfile) -> tuple[list[Scenario], list[bool]]:
        """The grid with each point's simulated window, and which points go to the analytic model."""
        grid = self.scenarios()
        if self.window is None:
            flags = [False] * len(grid)
        else:
            grid, flags = plan_windows(grid, profile, self.window)
        if self.analytic_above is not None:
            flags = [f or s.workload.connections > self.analytic_above for f, s in zip(flags, grid, strict=True)]
        return grid, flags

    def describe(self) -> list[str]:
        wl = self.base.workload
        hw = self.base.hardware
        lines = [
            f"Workload file: {self.source}.",
            f"Clients: {wl.mode} loop, think {wl.think_s:g} s, "
            + ("keep-alive" if wl.requests_per_conn is None else f"{wl.requests_per_conn} requests per connection")
            + (f", {wl.idle_connections:,} extra idle connections" if wl.idle_connections else "") + ".",
            f"Work per request: cpu_us={wl.cpu_us:g} (GIL released), gil_us={wl.gil_us:g} (GIL held), "
            f"io_us={wl.io_us:g} (blocking wait), response {wl.resp_bytes} bytes.",
            f"Limits: fd_limit {hw.fd_limit:,} per process, threads_max {hw.threads_max:,}, somaxconn "
            f"{hw.somaxconn:,}, memory {hw.memory_bytes / 2**30:.3g} GiB.",
            (f"Simulated window per point: {wl.warmup_s:g} s warm-up + {wl.duration_s:g} s measured, seed "
             f"{self.base.seed}." if self.window is None else
             f"Simulated window per point: adaptive (aim {self.window.target_requests:,} completed requests, "
             f"{self.window.min_duration_s:g}..{self.window.max_duration_s:g} s measured after a warm-up that "
             f"covers the connection ramp); points estimated to cost more than {self.window.max_sim_requests:,} "
             f"simulated requests come from simkit.analytic; seed {self.base.seed}. Each row's window is in "
             "results.csv (warmup_s, duration_s)."),
            f"Sizing: {self.sizing.text(self.models) or 'no model in the grid has a knob to size'}.",
            (f"Bands: each point carries a {100 * self.bands.level:g}% band (results.csv `<metric>_lo` / `_hi`, "
             f"shaded in the plots): simulation noise over {self.bands.min_replications}-"
             f"{self.bands.max_replications} seeds per simulated point (its value is their mean), the profile's "
             "parameter uncertainty and its measured validation error, combined as experiments.intervals says."),
        ]
        if self.analytic_above is not None:
            lines.append(f"Points above {self.analytic_above:,} connections come from simkit.analytic (a queueing "
                         "approximation without the GIL convoy or scheduling detail), not the simulator; the "
                         "`source` column of results.csv says which.")
        return lines


# -- schema: section -> key -> (kind, bounds / choices) ---------------------------------------------
# kinds: "int", "float", "bool", "str", "ints" (non-empty list of int), "models" (non-empty list)
_WORKLOAD_KEYS = ("mode", "rate_rps", "arrival", "think_s", "requests_per_conn", "idle_connections", "cpu_us",
                  "gil_us", "io_us", "request_bytes", "resp_bytes", "timeout_s", "connect_rate_cps")
_SIZING_PER_CORE = ("float", (1e-3, 1e4))  # "<short>_<knob>_per_core" rules
_SIZING_MIN = ("int", (1, 65536))  # "<short>_<knob>_min" rules


def schema() -> dict[str, dict[str, tuple[str, Any]]]:
    """Every section and key a what-if file may set. The model list and the sizing rules come from
    simkit.registry, so a registered architecture is accepted without a change here."""
    sizing_rules = {key: _SIZING_MIN if key.endswith("_min") else _SIZING_PER_CORE for key in registry.sizing_keys()}
    return {
        "slo": {"p99_ms": ("float", (1e-3, 1e7)), "max_error_rate": ("float", (0.0, 1.0))},
        "budget": {"memory_gib": ("float", (1e-3, 1e6))},
        "grid": {"models": ("models", registry.names()), "connections": ("ints", (1, 10_000_000)),
                 "cores": ("ints", (1, 4096))},
        "workload": {
            "mode": ("str", ("closed", "open")), "rate_rps": ("float", (1e-9, 1e9)),
            "arrival": ("str", ("poisson", "constant")), "think_s": ("float", (0.0, 3600.0)),
            "requests_per_conn": ("int", (1, 10**9)), "idle_connections": ("int", (0, 10_000_000)),
            "cpu_us": ("float", (0.0, 1e7)), "gil_us": ("float", (0.0, 1e7)), "io_us": ("float", (0.0, 1e8)),
            "request_bytes": ("int", (16, 2**24)), "resp_bytes": ("int", (0, 2**30)),
            "timeout_s": ("float", (1e-3, 3600.0)), "connect_rate_cps": ("float", (1e-3, 1e9)),
        },
        "hardware": {"fd_limit": ("int", (16, 2**31 - 1)), "somaxconn": ("int", (1, 2**31 - 1)),
                     "threads_max": ("int", (1, 2**31 - 1))},
        "sizing": {**sizing_rules, "gil": ("bool", None), "backlog": ("int", (1, 2**31 - 1)),
                   "dispatch": ("str", DISPATCH_MODES), "keepalive_timeout_s": ("float", (1e-3, 86400.0))},
        "sim": {"window": ("str", ("adaptive", "fixed")),
                "duration_s": ("float", (1e-3, 3600.0)), "warmup_s": ("float", (0.0, 3600.0)),
                "target_requests": ("int", (100, 10_000_000)), "max_sim_requests": ("int", (1000, MAX_SIM_REQUESTS)),
                "min_duration_s": ("float", (1e-3, 3600.0)), "max_duration_s": ("float", (1e-3, 3600.0)),
                "min_warmup_s": ("float", (1e-3, 3600.0)), "max_warmup_s": ("float", (1e-3, 3600.0)),
                "seed": ("int", (0, 2**31 - 1)), "analytic_above_connections": ("int", (0, 10_000_000)),
                "workers": ("int", (1, 1024)),
                # experiments.intervals.BandPolicy: the band's level and the replications (seeds) per point
                "band_level": ("float", (0.5, 0.999)), "min_replications": ("int", (1, 100)),
                "max_replications": ("int", (1, 100)), "target_half_width": ("float", (1e-4, 10.0))},
    }


REQUIRED = {"slo": ("p99_ms",), "budget": ("memory_gib",), "grid": ("models", "connections", "cores")}


def _check(section: str, key: str, value: Any, kind: str, spec: Any) -> Any:
    name = f"{section}.{key}"

    def number(v: Any, integer: bool) -> float | int:
        ok = isinstance(v, int) if integer else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok or (isinstance(v, float) and not math.isfinite(v)):
            raise ValueError(f"{name}: expected {'an integer' if integer else 'a number'} in "
                             f"{spec[0]:g}..{spec[1]:g}, got {v!r}")
        if not spec[0] <= v <= spec[1]:
            raise ValueError(f"{name}: {v!r} is out of range; allowed {spec[0]:g}..{spec[1]:g}")
        return v

    if kind in ("int", "float"):
        return number(value, kind == "int")
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{name}: expected true or false, got {value!r}")
        return value
    if kind == "str":
        if value not in spec:
            raise ValueError(f"{name}: {value!r} is not allowed; allowed: {', '.join(spec)}")
        return value
    if kind == "ints":
        if not isinstance(value, list) or not value:
            raise ValueError(f"{name}: expected a non-empty list of integers in {spec[0]:g}..{spec[1]:g}, "
                             f"got {value!r}")
        values = [number(v, True) for v in value]
        if len(set(values)) != len(values):
            raise ValueError(f"{name}: duplicate values in {values!r}")
        return tuple(sorted(values))
    if kind == "models":
        allowed = f"{', '.join(spec)} (or by number / short name: {registry.model_help()})"
        if not isinstance(value, list) or not value:
            raise ValueError(f"{name}: expected a non-empty list; allowed: {allowed}")
        out = []
        for v in value:
            try:
                out.append(registry.resolve(v))
            except ValueError:
                raise ValueError(f"{name}: unknown model {v!r}; allowed: {allowed}") from None
        if len(set(out)) != len(out):
            raise ValueError(f"{name}: a model is listed twice in {value!r}")
        return tuple(out)
    raise AssertionError(kind)  # pragma: no cover - schema() only uses the kinds above


def parse_whatif(data: dict[str, Any], source: str = "(dict)") -> WhatIf:
    """Validate a parsed whatif.toml document and build the WhatIf it describes."""
    sections = schema()
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown section; allowed: {', '.join(sections)}")
    clean: dict[str, dict[str, Any]] = {}
    for section, keys in sections.items():
        table = data.get(section, {})
        if not isinstance(table, dict):
            raise ValueError(f"{section}: expected a [{section}] table, got {type(table).__name__}")
        bad = sorted(set(table) - set(keys))
        if bad:
            raise ValueError(f"{section}.{bad[0]}: unknown key; allowed: {', '.join(keys)}")
        for key in REQUIRED.get(section, ()):
            if key not in table:
                raise ValueError(f"{section}.{key}: required")
        clean[section] = {k: _check(section, k, v, *keys[k]) for k, v in table.items()}

    slo, budget, grid, sim = clean["slo"], clean["budget"], clean["grid"], clean["sim"]
    memory_bytes = int(budget["memory_gib"] * 2**30)
    sizing_keys = registry.sizing_keys()
    sizing = Sizing({k: v for k, v in clean["sizing"].items() if k in sizing_keys})
    model_knobs = {k: v for k, v in clean["sizing"].items() if k not in sizing_keys}
    wl_kwargs = dict(clean["workload"])
    wl_kwargs["duration_s"] = sim.get("duration_s", 1.0)
    wl_kwargs["warmup_s"] = sim.get("warmup_s", 0.2)
    wl_kwargs["connections"] = grid["connections"][0]
    try:
        workload = Workload(**wl_kwargs)
    except ValueError as exc:
        raise ValueError(f"workload.{exc}") from None
    try:
        hardware = Hardware(cores=grid["cores"][0], memory_bytes=memory_bytes, **clean["hardware"])
        model = ModelSpec(**model_knobs)
    except ValueError as exc:
        raise ValueError(f"hardware/sizing: {exc}") from None
    base = Scenario(model=model, hardware=hardware, workload=workload, seed=sim.get("seed", 1))
    above = sim.get("analytic_above_connections")
    window = None
    if sim.get("window", "adaptive") == "adaptive":
        fixed_only = sorted({"duration_s", "warmup_s"} & set(sim))
        if fixed_only:
            raise ValueError(f"sim.{fixed_only[0]}: only with window = \"fixed\"; the adaptive window uses "
                             "target_requests, min/max_duration_s, min/max_warmup_s, max_sim_requests")
        keys = {f.name for f in dataclasses.fields(WindowPolicy)}
        try:
            window = WindowPolicy(**{k: v for k, v in sim.items() if k in keys})
        except ValueError as exc:
            raise ValueError(f"sim.{exc}") from None
    else:
        adaptive_only = sorted({f.name for f in dataclasses.fields(WindowPolicy)} & set(sim))
        if adaptive_only:
            raise ValueError(f"sim.{adaptive_only[0]}: only with window = \"adaptive\"; a fixed window uses "
                             "duration_s and warmup_s")
    band_keys = {"band_level": "level", "min_replications": "min_replications",
                 "max_replications": "max_replications", "target_half_width": "target_half_width"}
    try:
        bands = BandPolicy(**{field: sim[key] for key, field in band_keys.items() if key in sim})
    except ValueError as exc:
        key = next((k for k, f in band_keys.items() if str(exc).startswith(f"{f}:")), "")
        raise ValueError(f"sim.{key}: {str(exc).partition(': ')[2]}" if key else f"sim.{exc}") from None
    return WhatIf(
        base=base, models=grid["models"], connections=grid["connections"], cores=grid["cores"],
        slo_p99_s=slo["p99_ms"] / 1e3, memory_bytes=memory_bytes, max_error_rate=slo.get("max_error_rate", 1e-3),
        sizing=sizing, analytic_above=above if above else None, window=window, workers=sim.get("workers"),
        source=source, bands=bands,
    )


def load_whatif(path: str | os.PathLike | None = None) -> WhatIf:
    path = Path(path) if path is not None else DEFAULT_WORKLOAD
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ValueError(f"{path}: workload file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML ({exc})") from None
    try:
        return parse_whatif(data, source=str(path))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def resolve_profile_labelled(profile: CostProfile | str | os.PathLike | None) -> tuple[CostProfile, str]:
    """The profile (simkit.profile.resolve_profile: the one rule) and a label for the report: its
    host, date, id and where it was found."""
    prof = resolve_profile(profile)
    if prof.origin == "built-in":
        return prof, f"{prof.describe()}; no {default_profile_path()} for this host"
    return prof, prof.describe()


def report_dir(out_root: str | os.PathLike = "reports", when: dt.datetime | None = None) -> Path:
    when = when or dt.datetime.now(dt.UTC)
    return Path(out_root) / f"whatif-{host_name()}-{when:%Y-%m-%d}"


def run_whatif(
    spec: WhatIf,
    profile: CostProfile | str | os.PathLike | None = None,
    *,
    engine: Any = "local",
    out_root: str | os.PathLike = "reports",
    out_dir: str | os.PathLike | None = None,
    simulate: Callable | None = None,
    analytic: Callable | None = None,
    progress: bool = True,
) -> ReportFiles:
    """Sweep the grid, then write the report. Raises SweepIncomplete (no report) when points are missing."""
    prof, label = resolve_profile_labelled(profile)
    if prof.calibrated:
        prof.warn_if_foreign()
    t0 = time.perf_counter()
    scenarios, use_analytic = spec.planned(prof)
    with warnings.catch_warnings():  # the report says which points are analytic (describe(), `source`)
        warnings.simplefilter("ignore", AnalyticPointsWarning)
        frame = sweep(spec.base, profile=prof, engine=engine, simulate=simulate, progress=progress,
                      workers=spec.workers, analytic=analytic, scenarios=scenarios, use_analytic=use_analytic,
                      description="what-if sweep", bands=spec.bands)
    elapsed = time.perf_counter() - t0
    now = dt.datetime.now(dt.UTC)
    target = Path(out_dir) if out_dir is not None else report_dir(out_root, now)
    inputs = ReportInputs(
        frame=frame, slo_p99_s=spec.slo_p99_s, memory_bytes=spec.memory_bytes, profile=prof, profile_label=label,
        host=host_name(), date=f"{now:%Y-%m-%d %H:%M} UTC", workload_lines=tuple(spec.describe()),
        max_error_rate=spec.max_error_rate, elapsed_s=elapsed,
    )
    return write_report(inputs, target)
