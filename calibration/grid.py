"""The calibration grid (docs/DESIGN.md §7.2): every registered model x connections x work mix x cores.

Each point has a role:
- "train": cores 1, connections <= 1,000: the only points the fit sees;
- "cores": the same points on 2 cores (held out: fit on 1 core, predict 2);
- "interp": a connection count inside the training range, for each trained work mix (held out);
- "connections": 5,000-10,000 connections (held out: extrapolation in load).

Each model runs the configuration its registry entry names for calibration (CalibrationSpec.knobs),
and --quick extrapolates in connections only the models whose entry asks for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from simkit import registry
from simkit.scenario import Hardware, ModelSpec, Scenario, Workload

# Work mixes (docs/DESIGN.md §4): each makes a different mechanism dominate.
WORK_MIXES: dict[str, dict[str, float]] = {
    "cpu": {"cpu_us": 200.0, "gil_us": 20.0},  # GIL released: scales with cores in every model
    "gil": {"gil_us": 200.0},  # GIL held: threads convoy, processes scale
    "io": {"io_us": 2000.0, "gil_us": 20.0},  # blocking wait: stalls reactors that work inline
    "mixed": {"cpu_us": 100.0, "gil_us": 50.0, "io_us": 500.0},  # inside the hull of the three
}

ROLES = ("train", "cores", "interp", "connections")
# The limits and the start-up every calibration run was measured under, pinned: the API's defaults
# became production-like (fd_limit 1,048,576, backlog 4,096, clients arriving at connect_rate_cps),
# and calibration must keep measuring, and simulating, what it measured.
CALIBRATION_FD_LIMIT = 20_000  # RLIMIT_NOFILE floor (raised when a run needs more)
CALIBRATION_BACKLOG = 1024  # listen() backlog
CALIBRATION_CONNECT_RATE_CPS = None  # clients connect as fast as the generator can
# Per request, outside the asked work: recv + parse + send + epoll from Python, order of magnitude.
REQUEST_OVERHEAD_S = 150e-6


@dataclass(frozen=True)
class GridPoint:
    scenario: Scenario
    role: str
    mix: str

    def label(self) -> str:
        s = self.scenario
        return f"{s.model.name} c={s.workload.connections} {self.mix} cores={s.hardware.cores}"


def calibration_spec(model: str) -> ModelSpec:
    """The configuration the grid measures `model` in: its registry entry's calibration knobs."""
    return ModelSpec.for_model(model, **{"backlog": CALIBRATION_BACKLOG, **registry.get(model).calibration.knobs})


def calibration_hardware(cores: int, fds_needed: int = 0) -> Hardware:
    """The machine a calibration run says it has: CALIBRATION_FD_LIMIT, or more when `fds_needed`."""
    return Hardware(cores=cores, fd_limit=max(CALIBRATION_FD_LIMIT, fds_needed), somaxconn=4096, threads_max=30_000)


def latency_estimate_s(model: str, mix: str, connections: int, cores: int) -> float:
    """A rough a-priori closed-loop latency (N x the bottleneck's time per request), only to size a
    run's warm-up and window: a window shorter than a few latencies measures the start-up transient.

    The bottleneck is the slowest of the architecture's executors (each does a whole request: work,
    io and overhead), the cores (the work that needs a CPU) and, for threads of one process, the GIL."""
    w = WORK_MIXES[mix]
    cpu, gil, io = (w.get(k, 0.0) * 1e-6 for k in ("cpu_us", "gil_us", "io_us"))
    overhead = REQUEST_OVERHEAD_S
    spec = calibration_spec(model)
    arch = registry.get(spec.name)
    per = (cpu + gil + overhead) / cores
    executors = arch.executors(spec)
    if executors is not None:
        per = max(per, (cpu + gil + io + overhead) / executors)
    if arch.shared_gil(spec):
        per = max(per, gil + overhead)
    return connections * per


def make_scenario(model: str, mix: str, connections: int, cores: int, duration_s: float, warmup_s: float,
                  seed: int = 1, max_duration_s: float = 8.0, max_warmup_s: float = 4.0) -> Scenario:
    """One grid scenario. duration_s / warmup_s are floors: they grow with the estimated latency
    (window >= 4 latencies, warm-up >= 1.5) up to the caps, so every point is measured in steady state."""
    spec = calibration_spec(model)
    # A server that serves one connection until it closes would serve one keep-alive client forever
    # and starve the rest, so its clients make one request per connection.
    rpc = 1 if registry.get(spec.name).one_connection_at_a_time else None
    lat = latency_estimate_s(spec.name, mix, connections, cores)
    duration = round(min(max(duration_s, 4.0 * lat), max(duration_s, max_duration_s)), 2)
    warmup = round(min(max(warmup_s, 1.5 * lat), max(warmup_s, max_warmup_s)), 2)
    return Scenario(
        model=spec,
        hardware=calibration_hardware(cores, 2 * connections + 1024),
        workload=Workload(connections=connections, requests_per_conn=rpc, duration_s=duration,
                          warmup_s=warmup, timeout_s=max(10.0, 4.0 * lat),
                          connect_rate_cps=CALIBRATION_CONNECT_RATE_CPS, **WORK_MIXES[mix]),
        seed=seed,
    )


def build_grid(quick: bool = False, models: Sequence[str] | None = None, *, duration_s: float | None = None,
               warmup_s: float | None = None, train_connections: Sequence[int] | None = None,
               mixes: Sequence[str] | None = None, extrap_connections: Sequence[int] | None = None,
               interp_connections: int = 300, cores_extra: int = 2) -> list[GridPoint]:
    """The calibration grid over `models` (default: every registered one). quick: one work mix and one
    held-out point of each kind per model; connection extrapolation only for the models whose
    registry entry sets calibration.quick_extrapolation (a 5,000-connection real run costs more than
    all of a model's other points)."""
    duration = duration_s if duration_s is not None else (0.6 if quick else 1.2)
    warmup = warmup_s if warmup_s is not None else (0.3 if quick else 0.4)
    conns = list(train_connections or (10, 100, 1000))
    mix_list = list(mixes or (("cpu",) if quick else ("cpu", "gil", "io")))
    caps = {"max_duration_s": 2.5, "max_warmup_s": 2.0} if quick else {}
    extrap = list(extrap_connections or ((5000,) if quick else (5000, 10000)))
    points: list[GridPoint] = []
    for model in (registry.names() if models is None else models):
        arch = registry.get(model)
        model = arch.name
        for mix in mix_list:
            for c in conns:
                points.append(GridPoint(make_scenario(model, mix, c, 1, duration, warmup, **caps), "train", mix))
        for mix in mix_list:
            # 2-core points: the middle count (quick), or all but the smallest (full: at 10
            # connections one core is rarely the limit, so the second says little).
            for c in ([conns[len(conns) // 2]] if quick else conns[1:]):
                points.append(GridPoint(make_scenario(model, mix, c, cores_extra, duration, warmup, **caps),
                                        "cores", mix))
        for mix in mix_list:  # same mixes, a connection count between the trained ones
            points.append(GridPoint(make_scenario(model, mix, interp_connections, 1, duration, warmup, **caps),
                                    "interp", mix))
        extrap_mix = mix_list[0]
        if quick and not arch.calibration.quick_extrapolation:
            continue
        for c in extrap:
            # Thousands of connections take a while to open: a longer warm-up keeps that out of the window.
            points.append(GridPoint(make_scenario(model, extrap_mix, c, 1, duration, max(warmup, 1.0), **caps),
                                    "connections", extrap_mix))
    return points
