"""The architecture registry: everything that differs between server architectures, in one place.

Each `Architecture` entry says what the rest of serverlab needs to know about one model: its knobs
and their defaults, how they follow a core count (sizing), the configuration calibration measures,
which threads (and processes) it runs, its analytic station network and extra per-request costs,
its plot colour and a one-line summary. simkit, realkit, calibration, experiments and the CLI read
from here; no other module branches on a model's name. The two halves of a model live in
`simkit.models.<name>` (class `Model`) and `realkit.servers.<name>` (function `serve`), or in the
modules the entry names.

Adding an architecture is two model files and one `register(Architecture(...))`. An entry from
outside this package (a plug-in) is registered by a module listed in the environment variable
SERVERLAB_ARCHITECTURES (comma-separated module names), imported on the registry's first use, so
subprocesses (the real server, spawned simulation pools) see the same entries as their parent.

This module imports nothing of serverlab's at load time and no SimPy: the contract
(simkit.scenario) and the real servers import it.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

PLUGINS_ENV = "SERVERLAB_ARCHITECTURES"


@dataclass(frozen=True)
class Knob:
    """A ModelSpec sizing field this architecture uses (threads, processes or pool)."""

    field: str
    default: int  # when a user names the model and not the knob
    minimum: int = 1  # ModelSpec refuses less for this model
    per_core: float = 1.0  # sizing for a core count: max(min_sized, round(per_core x cores))
    min_sized: int = 1
    help: str = ""


@dataclass(frozen=True)
class Threads:
    """One kind of thread an architecture runs.

    count: a fixed number, a knob name ("threads", "pool", "processes"), "connections" (one per open
    connection) or "in_service" (one per request being served). work: these threads do the requests'
    work. process: each one is a process of its own (its own GIL and fd table)."""

    kind: str
    count: int | str = 1
    work: bool = False
    process: bool = False


class ExtraCosts(NamedTuple):
    """Per-request costs an architecture adds to the common request path (seconds)."""

    python_s: float = 0.0  # GIL held: hand-offs through Python queues
    syscall_s: float = 0.0  # GIL released: switches, wake-ups, spawns, epoll_ctl
    per_conn_s: float = 0.0  # once per connection (amortised over its requests)


@dataclass(frozen=True)
class CalibrationSpec:
    """What the calibration grid measures of this architecture."""

    knobs: Mapping[str, int] = field(default_factory=dict)  # a typical small-box configuration
    quick_extrapolation: bool = False  # --quick also measures its 5,000-connection point
    rss_slope: str = ""  # "conn" | "thread": its runs measure RSS per connection / per thread
    # "module:function", (profile) -> profile: a cost derived from the probes' real run of this server
    # (its CPU per request beyond the probed primitives); run after the probes, in architecture order.
    from_server: str = ""

    def __post_init__(self) -> None:
        module, colon, function = self.from_server.partition(":")
        if self.from_server and not (module and colon and function.isidentifier()):
            raise ValueError(f"from_server: expected 'module:function', got {self.from_server!r}")

    def derive(self, profile: Any) -> Any:
        if not self.from_server:
            return profile
        module, _, function = self.from_server.partition(":")
        return getattr(importlib.import_module(module), function)(profile)


# (scenario, profile, demands, gil_handoff_per_request_s) -> [Station]; see simkit.analytic
StationsFn = Callable[[Any, Any, Any, float], list]
ExtraCostsFn = Callable[[Any, Any], ExtraCosts]


def _no_extra_costs(spec: Any, profile: Any) -> ExtraCosts:
    return ExtraCosts()


@dataclass(frozen=True)
class Architecture:
    name: str  # "m<number>_<words>": the number and the short name "m<number>" select it too
    summary: str
    colour: str  # plots and the winner map
    threads: tuple[Threads, ...]
    stations: StationsFn
    knobs: tuple[Knob, ...] = ()
    extra_costs: ExtraCostsFn = _no_extra_costs
    blocking_sockets: bool = False  # blocking recv/accept: no epoll_wait per request
    one_connection_at_a_time: bool = False  # serves a connection until it closes, nothing else meanwhile
    ctx_switches_per_request: float = 2.0  # analytic estimate of the context switches a request costs
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec)
    # The primitive costs only this architecture has, as the profile declares its own (name, default,
    # what it is): simkit.profile adds a built-in architecture's to its parameters; a profile written
    # without them loads with the defaults.
    params: tuple[tuple[str, float, str], ...] = ()
    sim_module: str = ""  # default simkit.models.<name>
    real_module: str = ""  # default realkit.servers.<name>

    def __post_init__(self) -> None:
        short, _, words = self.name.partition("_")
        if not (short[:1] == "m" and short[1:].isdigit() and words):
            raise ValueError(f"name: expected m<number>_<words>, got {self.name!r}")
        if not (isinstance(self.colour, str) and self.colour.startswith("#") and len(self.colour) == 7):
            raise ValueError(f"colour: expected #rrggbb, got {self.colour!r}")
        fields = {k.field for k in self.knobs}
        for t in self.threads:
            if isinstance(t.count, str) and t.count not in fields | {"connections", "in_service"}:
                raise ValueError(f"threads: count {t.count!r} of {t.kind!r} is neither a knob of "
                                 f"{self.name} nor connections / in_service")
        if sum(t.work for t in self.threads) != 1:
            raise ValueError(f"threads: {self.name} needs exactly one kind of thread with work=True")

    # -- names -------------------------------------------------------------------------------------
    @property
    def number(self) -> int:
        return int(self.short[1:])

    @property
    def short(self) -> str:
        return self.name.split("_", 1)[0]

    @property
    def sim_module_name(self) -> str:
        return self.sim_module or f"simkit.models.{self.name}"

    @property
    def real_module_name(self) -> str:
        return self.real_module or f"realkit.servers.{self.name}"

    # -- knobs -------------------------------------------------------------------------------------
    def knob_defaults(self) -> dict[str, int]:
        return {k.field: k.default for k in self.knobs}

    def check(self, spec: Any) -> None:
        """ValueError naming the field when `spec` sets one of this model's knobs below its minimum."""
        for k in self.knobs:
            value = getattr(spec, k.field)
            if value < k.minimum:
                raise ValueError(f"{k.field}: {self.name} needs {k.field} >= {k.minimum}, got {value!r}")

    def sized(self, cores: int, rules: Mapping[str, float] | None = None) -> dict[str, int]:
        """This model's knobs on `cores` cores; `rules` may override "<short>_<knob>_per_core" and
        "<short>_<knob>_min" (see sizing_keys)."""
        rules = rules or {}
        out = {}
        for k in self.knobs:
            per = rules.get(f"{self.short}_{k.field}_per_core", k.per_core)
            lowest = rules.get(f"{self.short}_{k.field}_min", k.min_sized)
            out[k.field] = max(int(lowest), round(per * cores))
        return out

    def sizing_text(self, rules: Mapping[str, float] | None = None) -> str:
        rules = rules or {}
        parts = []
        for k in self.knobs:
            per = rules.get(f"{self.short}_{k.field}_per_core", k.per_core)
            lowest = int(rules.get(f"{self.short}_{k.field}_min", k.min_sized))
            parts.append(f"{self.short} {k.field} = max({lowest}, {per:g} x cores)")
        return ", ".join(parts)

    def describe(self, spec: Any) -> str:
        """The model and the knobs it uses, e.g. 'm4_reactor_workers pool=8'."""
        knobs = "".join(f" {k.field}={getattr(spec, k.field)}" for k in self.knobs)
        return f"{self.name}{knobs}"

    # -- threads and processes -----------------------------------------------------------------------
    def _count(self, t: Threads, spec: Any, connections: int, in_service: float) -> int | None:
        if isinstance(t.count, int):
            return t.count
        if t.count == "connections":
            return connections
        if t.count == "in_service":
            return math.ceil(in_service)
        return int(getattr(spec, t.count))

    def threads_peak(self, spec: Any, connections: int, in_service: float = 0.0) -> int:
        """Threads alive with `connections` open and `in_service` requests being served."""
        return sum(self._count(t, spec, connections, in_service) for t in self.threads)

    def processes(self, spec: Any) -> int:
        """Processes of the server: one, plus every thread kind that runs as processes of its own."""
        return 1 + sum(self._count(t, spec, 0, 0.0) for t in self.threads if t.process)

    @property
    def _work(self) -> Threads:
        return next(t for t in self.threads if t.work)

    def executors(self, spec: Any) -> int | None:
        """How many requests can be worked on at once (None: a thread per connection or request)."""
        t = self._work
        if t.count in ("connections", "in_service"):
            return None
        return self._count(t, spec, 0, 0.0)

    def single_thread(self, spec: Any) -> bool:
        """One thread does every request's work, whatever the core count."""
        return self.executors(spec) == 1

    def shared_gil(self, spec: Any) -> bool:
        """Several threads of one Python process do the work: with gil=True they contend for its GIL."""
        return not self._work.process and not self.single_thread(spec)

    def connection_processes(self, spec: Any) -> int:
        """How many processes' fd tables the open connections spread over."""
        t = self._work
        return self._count(t, spec, 0, 0.0) if t.process else 1


# -- the analytic station networks (simkit.analytic calls these; Station is imported when used) -------
def _one_loop_per_executor(scenario: Any, profile: Any, d: Any, handoff: float) -> list:
    """Threads or processes that each do everything inline (recv, work, io, send): one station of
    `executors` servers; the GIL when they are threads of one Python process; the cores when there
    are more of them than cores. A server that serves one connection at a time also holds its thread
    across that client's think time and round trip between its requests."""
    from simkit.queueing import Station

    arch = get(scenario.model.name)
    spec, w = scenario.model, scenario.workload
    cores = scenario.hardware.cores
    loops = arch.executors(spec)
    hold = 0.0
    if arch.one_connection_at_a_time and w.mode == "closed" and w.requests_per_conn is not None:
        k = w.requests_per_conn
        hold = (k - 1) / k * (d.rtt_s + w.think_s)
    st = [Station("loops", d.cpu_s + d.io_s + hold, loops)]
    contended = spec.gil and arch.shared_gil(spec)
    if contended:
        st.append(Station("gil", d.gil_s + handoff, 1, overlap_s=d.gil_s + handoff))
    if loops > cores:
        on_core = d.cpu_s + (handoff if contended else 0.0)
        st.append(Station("cores", on_core, cores, overlap_s=on_core))
    return st


def _loop_and_pool(scenario: Any, profile: Any, d: Any, handoff: float) -> list:
    """A loop thread for recv/parse/send and hand-offs, a pool for the work, sharing one GIL."""
    from simkit.queueing import Station

    spec = scenario.model
    cores = scenario.hardware.cores
    st = [Station("loop", d.python_s + d.syscall_s + d.per_conn_s, 1),
          Station("pool", d.cpu_work_s + d.gil_work_s + d.io_s, spec.pool)]
    if spec.gil:
        st.append(Station("gil", d.gil_s + handoff, 1, overlap_s=d.gil_s + handoff))
    if spec.pool + 1 > cores:
        on_core = d.cpu_s + (handoff if spec.gil else 0.0)
        st.append(Station("cores", on_core, cores, overlap_s=on_core))
    return st


def _thread_per_executor(scenario: Any, d: Any, handoff: float, counted: float = 0.0,
                         loop_py_s: float = 0.0) -> list:
    """A thread per connection or request: the cores (and the GIL) are the queues, io is a delay.
    `counted`: CPU time of a request already on its latency path (a dispatching loop's);
    `loop_py_s`: the part of it that held the GIL."""
    from simkit.queueing import Station

    spec = scenario.model
    executors = scenario.workload.connections
    on_core = d.cpu_s
    st = []
    if spec.gil and executors > 1:
        st.append(Station("gil", d.gil_s + handoff, 1, overlap_s=loop_py_s))
        counted += d.gil_s + handoff - loop_py_s
        on_core += handoff  # the hand-offs are CPU time too (the woken holder's)
    st.append(Station("cores", on_core, min(scenario.hardware.cores, executors), overlap_s=counted))
    if d.io_s:
        st.append(Station("io", d.io_s, None))
    return st


def _thread_per_connection(scenario: Any, profile: Any, d: Any, handoff: float) -> list:
    return _thread_per_executor(scenario, d, handoff)


def _loops_spawning_threads(scenario: Any, profile: Any, d: Any, handoff: float) -> list:
    """`threads` loops that dispatch each ready socket to a new thread (its Python dispatch holds the GIL)."""
    from simkit.queueing import Station

    p = profile
    # per request, two turns of the loop: the ready socket (spawn) and the thread's post (the wake-up
    # fd's read, the hand-off, the re-arm); their dispatch, the spawn and the hand-off hold the GIL
    loop_py = 2 * p["epoll_per_event_s"] + p["queue_handoff_s"] + p["thread_spawn_s"]
    loop_s = loop_py + 2 * p["epoll_wait_base_s"] + p["recv_base_s"] + p["epoll_ctl_s"]
    return [Station("loops", loop_s, scenario.model.threads),
            *_thread_per_executor(scenario, d, handoff, counted=loop_s, loop_py_s=loop_py)]


# -- the seven ---------------------------------------------------------------------------------------
def _m2_costs(spec: Any, p: Any) -> ExtraCosts:
    # the connection's thread sleeps in recv: a switch and a cross-core wake-up per request
    return ExtraCosts(syscall_s=p["ctx_switch_s"] + p["wakeup_s"], per_conn_s=p["thread_spawn_s"] + p["thread_boot_s"])


def _m4_costs(spec: Any, p: Any) -> ExtraCosts:
    # to the pool and back (the simulator charges the blocking hand-off only to a worker that slept)
    return ExtraCosts(python_s=2 * p["queue_handoff_s"])


def _m5_costs(spec: Any, p: Any) -> ExtraCosts:
    return ExtraCosts(per_conn_s=p["queue_handoff_s"])  # the acceptor hands each fd to a loop


def _m6_costs(spec: Any, p: Any) -> ExtraCosts:
    if spec.dispatch == "fdpass":  # the master accepts, then passes the fd
        return ExtraCosts(per_conn_s=p["accept_s"] + p["send_base_s"])
    return ExtraCosts()


def _m7_costs(spec: Any, p: Any) -> ExtraCosts:
    # A spawn holds the GIL, on the loop (Thread(), start(): pthread_create) and in the new thread (its
    # bootstrap and exit). The thread posts back to its loop, which reads its wake-up fd in one more
    # turn and re-arms the socket (the hand-off, in Python); EPOLLONESHOT disarmed it by itself.
    return ExtraCosts(python_s=p["queue_handoff_s"] + p["epoll_per_event_s"] + p["thread_spawn_s"] + p["thread_boot_s"],
                      syscall_s=p["epoll_ctl_s"] + p["recv_base_s"] + p["epoll_wait_base_s"])


def _m8_costs(spec: Any, p: Any) -> ExtraCosts:
    # Completions instead of readiness: a recv and a send through the ring, and one io_uring_enter
    # per request (no batching credit, as epoll_wait for the reactors), replace recv(), send() and
    # epoll_wait (blocking_sockets=True leaves the last out); the two operations' Python shares hold
    # the GIL. Negative where the ring is cheaper.
    python = 2 * p["uring_op_s"] + p["uring_request_s"]
    ring = p["uring_recv_s"] + p["uring_send_s"] + p["uring_enter_s"]
    return ExtraCosts(python_s=python, syscall_s=ring - 2 * p["uring_op_s"] - p["recv_base_s"] - p["send_base_s"])


_THREADS_KNOB = "I/O threads, each with its own epoll loop"

BUILTIN: tuple[Architecture, ...] = (
    Architecture(
        name="m1_iterative",
        summary="one thread: blocking accept, serve that connection until it closes, accept the next",
        colour="#7f7f7f",
        threads=(Threads("main", 1, work=True),),
        stations=_one_loop_per_executor,
        blocking_sockets=True,
        one_connection_at_a_time=True,
        ctx_switches_per_request=0.0,
    ),
    Architecture(
        name="m2_thread_per_conn",
        summary="the main thread accepts and starts a thread per connection, which serves it until close",
        colour="#d62728",
        threads=(Threads("acceptor"), Threads("per_connection", "connections", work=True)),
        stations=_thread_per_connection,
        extra_costs=_m2_costs,
        blocking_sockets=True,
        calibration=CalibrationSpec(quick_extrapolation=True, rss_slope="thread"),
    ),
    Architecture(
        name="m3_reactor",
        summary="one thread, level-triggered epoll over non-blocking sockets, work done inline",
        colour="#1f77b4",
        threads=(Threads("loop", 1, work=True),),
        stations=_one_loop_per_executor,
        ctx_switches_per_request=0.0,
        calibration=CalibrationSpec(quick_extrapolation=True, rss_slope="conn",
                                    from_server="calibration.fit:parse_from_server"),
    ),
    Architecture(
        name="m4_reactor_workers",
        summary="an epoll loop for I/O hands parsed requests to a pool of worker threads",
        colour="#ff7f0e",
        knobs=(Knob("pool", default=4, minimum=1, per_core=4.0, min_sized=4,
                    help="worker threads for the business logic (blocking io_us work wants many)"),),
        threads=(Threads("loop"), Threads("pool", "pool", work=True)),
        stations=_loop_and_pool,
        extra_costs=_m4_costs,
        calibration=CalibrationSpec(knobs={"pool": 4}),
    ),
    Architecture(
        name="m5_multi_reactor",
        summary="an acceptor hands connections round-robin to N I/O threads, each with its own epoll loop",
        colour="#2ca02c",
        knobs=(Knob("threads", default=1, help=_THREADS_KNOB),),
        threads=(Threads("acceptor"), Threads("loop", "threads", work=True)),
        stations=_one_loop_per_executor,
        extra_costs=_m5_costs,
        calibration=CalibrationSpec(knobs={"threads": 4}),
    ),
    Architecture(
        name="m6_prefork",
        summary="a master forks N single-thread reactor processes (nginx style); dispatch: shared | reuseport | fdpass",
        colour="#9467bd",
        knobs=(Knob("processes", default=1, help="worker processes, each a single-thread reactor"),),
        threads=(Threads("master"), Threads("worker", "processes", work=True, process=True)),
        stations=_one_loop_per_executor,
        extra_costs=_m6_costs,
        calibration=CalibrationSpec(knobs={"processes": 2}, quick_extrapolation=True),
    ),
    Architecture(
        name="m7_reactor_spawn",
        summary="like m5, but each ready socket is served by a short-lived thread spawned by its loop",
        colour="#8c564b",
        knobs=(Knob("threads", default=1, help=_THREADS_KNOB),),
        threads=(Threads("acceptor"), Threads("loop", "threads"), Threads("per_request", "in_service", work=True)),
        stations=_loops_spawning_threads,
        extra_costs=_m7_costs,
        calibration=CalibrationSpec(knobs={"threads": 2}),
    ),
    Architecture(
        name="m8_proactor",
        summary="completion-based I/O on io_uring: N loops, each with its own ring and SO_REUSEPORT socket",
        colour="#e377c2",
        knobs=(Knob("threads", default=1, help="proactor loops, each with its own io_uring and listen socket"),),
        threads=(Threads("loop", "threads", work=True),),
        stations=_one_loop_per_executor,
        extra_costs=_m8_costs,
        blocking_sockets=True,  # no readiness round trip: nothing like epoll_wait per request
        ctx_switches_per_request=0.0,
        calibration=CalibrationSpec(knobs={"threads": 2}, from_server="calibration.fit:uring_from_server"),
        # its ring, as realkit's ctypes layer drives it (calibration.probes.probe_uring)
        params=(
            ("uring_enter_s", 3e-6, "one io_uring_enter from Python that submits and reaps, beyond its operations"),
            ("uring_op_s", 1.5e-6, "Python's share of one ring operation (GIL held): prepare its SQE, reap its "
                                   "CQE, dispatch"),
            ("uring_send_s", 6e-6, "one send through the ring: its SQE, the kernel's send, its completion"),
            ("uring_recv_s", 4e-6, "one recv through the ring: its SQE, the kernel's recv, its completion, the bytes"),
            # 0 until measured: calibration.fit.uring_from_server, as parse_s is for the reactor
            ("uring_request_s", 0.0, "m8's Python per request beyond parse_s and its ring operations (GIL held): "
                                     "the Reactor's parked-answer path over RingSockets, measured on a real m8 "
                                     "server"),
        ),
    ),
)

_TABLE: dict[str, Architecture] = {a.name: a for a in BUILTIN}
_plugins_loaded = False


def register(arch: Architecture) -> Architecture:
    """Add an architecture (or replace one of the same name). Its number must be its own."""
    if not isinstance(arch, Architecture):
        raise ValueError(f"arch: expected an Architecture, got {type(arch).__name__}")
    for other in _TABLE.values():
        if other.number == arch.number and other.name != arch.name:
            raise ValueError(f"name: number {arch.number} is taken by {other.name}")
    _TABLE[arch.name] = arch
    return arch


def unregister(name: str) -> None:
    """Remove a registered architecture (tests of plug-ins clean up with this)."""
    _TABLE.pop(name, None)


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for module in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
        importlib.import_module(module)


def architectures() -> tuple[Architecture, ...]:
    """Every registered architecture, by number."""
    _load_plugins()
    return tuple(sorted(_TABLE.values(), key=lambda a: a.number))


def names() -> tuple[str, ...]:
    return tuple(a.name for a in architectures())


def resolve(name_or_number: str | int) -> str:
    """A model's full name from its name, its number or its short name ('5', 5, 'm5')."""
    text = str(name_or_number).strip()
    for arch in architectures():
        if text in (arch.name, arch.short, str(arch.number)):
            return arch.name
    choices = ", ".join(f"{a.name} ({a.number})" for a in architectures())
    raise ValueError(f"unknown model {name_or_number!r}; expected one of {choices}")


def get(name_or_number: str | int) -> Architecture:
    _load_plugins()
    found = _TABLE.get(name_or_number)  # type: ignore[arg-type]  # the full name: the hot path, no search
    return found if found is not None else _TABLE[resolve(name_or_number)]


def sizing_keys() -> dict[str, float]:
    """Every sizing rule a what-if file may set ("<short>_<knob>_per_core", "<short>_<knob>_min"),
    with its default."""
    keys: dict[str, float] = {}
    for arch in architectures():
        for k in arch.knobs:
            keys[f"{arch.short}_{k.field}_per_core"] = k.per_core
            keys[f"{arch.short}_{k.field}_min"] = k.min_sized
    return keys


def knob_help(knob_field: str) -> str:
    """CLI help for a ModelSpec knob: which models use it and for what."""
    users = [f"{a.short}: {k.help}" for a in architectures() for k in a.knobs if k.field == knob_field]
    return "; ".join(users) or "unused by every registered model"


def model_help() -> str:
    return ", ".join(f"{a.number}={a.name}" for a in architectures())


def modules(kind: str) -> Sequence[str]:
    """The model modules of one half ("sim" or "real") of every registered architecture."""
    attr = {"sim": "sim_module_name", "real": "real_module_name"}[kind]
    return [getattr(a, attr) for a in architectures()]
