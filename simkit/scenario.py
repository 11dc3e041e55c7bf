"""The shared contract: a Scenario is one architecture on one machine under one workload.

realkit.measure(scenario) runs it for real; simkit.simulate(scenario, profile) plays it in SimPy.
Both return a simkit.result.Result. Every dataclass here is frozen, carries its units in its field
names and validates itself in __post_init__: a bad field raises ValueError naming that field.

Decisions beyond docs/DESIGN.md §5 (written down here so the next engineer finds them):
- ModelSpec also carries `backlog` (the listen() argument; the kernel uses min(backlog, somaxconn)),
  `keepalive_timeout_s` (the idle keep-alive timer every server runs) and `gil` (simulation only:
  False models a C server without a GIL; the real servers are Python and always have one).
- Workload also carries `arrival` ("poisson" | "constant", open loop only) and `timeout_s`, the
  client's per-request timeout, past which a request counts in errors_timeout.
- Workload.connect_concurrency: how many connects the clients have in flight at once (realkit's
  load generator holds a semaphore around connect(); 256 as it always had). It is part of the load:
  when the backlog overflows, a dropped SYN holds its place for the 1 s retransmit, so a 10k-client
  start-up or a short-lived-connection load stalls in waves. A request's latency runs from when the
  client wanted to connect, so the wait for a place counts.
- Workload.connect_rate_cps: the rate at which closed-loop clients first arrive (evenly spaced, in
  both halves); None connects them as fast as the generator can, a start-up storm. Open-loop
  connections are opened by the arrivals themselves (rate_rps paces them) and ignore it.
- The defaults are production-like and equal experiments/whatif.toml's: fd_limit 1,048,576 (raised
  as any server holding many sockets is), backlog 4,096 = somaxconn 4,096 (listen(fd, SOMAXCONN)),
  threads_max 30,000. A real run cannot exceed this box's hard RLIMIT_NOFILE: realkit.runner records
  the limit the server actually had in its Result's scenario.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

from simkit import registry

DISPATCH_MODES: tuple[str, ...] = ("shared", "reuseport", "fdpass")
LOAD_MODES: tuple[str, ...] = ("closed", "open")
ARRIVALS: tuple[str, ...] = ("poisson", "constant")


def _check_int(obj: Any, name: str, minimum: int = 0, maximum: int | None = None, optional: bool = False) -> None:
    value = getattr(obj, name)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise ValueError(f"{name}: must be {bound}, got {value!r}")


def _check_float(obj: Any, name: str, minimum: float = 0.0, strict: bool = False, optional: bool = False) -> None:
    value = getattr(obj, name)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    if value < minimum or (strict and value == minimum):
        raise ValueError(f"{name}: must be {'>' if strict else '>='} {minimum}, got {value!r}")
    # Store ints as floats so equality and dict round-trips are stable.
    object.__setattr__(obj, name, float(value))


def _check_choice(obj: Any, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(obj, name)
    if value not in choices:
        raise ValueError(f"{name}: must be one of {', '.join(choices)}, got {value!r}")


@dataclass(frozen=True)
class ModelSpec:
    """Which architecture (a name, number or short name from simkit.registry), and its knobs."""

    name: str = "m3_reactor"
    # Sizing knobs; which model uses which, and its minimum, is in simkit.registry.
    threads: int = 1  # I/O threads (each with its own epoll loop)
    processes: int = 1  # worker processes
    pool: int = 0  # worker threads for the business logic
    dispatch: str = "shared"  # how a pre-forked server spreads connections: shared | reuseport | fdpass
    backlog: int = 4096  # listen() backlog, as production servers set it; effective = min(backlog, somaxconn)
    keepalive_timeout_s: float = 30.0
    gil: bool = True  # simulation only; False models a C server

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "name", registry.resolve(self.name))
        except ValueError as exc:
            raise ValueError(f"name: {exc}") from None
        _check_int(self, "threads", 1, 4096)
        _check_int(self, "processes", 1, 4096)
        _check_int(self, "pool", 0, 65536)
        _check_choice(self, "dispatch", DISPATCH_MODES)
        _check_int(self, "backlog", 1)
        _check_float(self, "keepalive_timeout_s", 0.0, strict=True)
        if not isinstance(self.gil, bool):
            raise ValueError(f"gil: expected a bool, got {self.gil!r}")
        registry.get(self.name).check(self)

    @classmethod
    def for_model(cls, name: str | int, **knobs: Any) -> ModelSpec:
        """The spec of model `name` (name, number or short name) with the registry's defaults for
        its knobs where `knobs` leaves them out or None."""
        try:
            arch = registry.get(name)
        except ValueError as exc:
            raise ValueError(f"name: {exc}") from None
        given = {k: v for k, v in knobs.items() if v is not None}
        return cls(name=arch.name, **{**arch.knob_defaults(), **given})


@dataclass(frozen=True)
class Hardware:
    """The machine: how many cores the server may use, and the limits the kernel enforces."""

    cores: int = 2
    memory_bytes: int = 24 * 2**30
    fd_limit: int = 1_048_576  # RLIMIT_NOFILE per process, raised as a production server's is
    somaxconn: int = 4096
    threads_max: int = 30_000  # per-user thread/process limit (kernel.threads-max / ulimit -u)

    def __post_init__(self) -> None:
        _check_int(self, "cores", 1, 65536)
        _check_int(self, "memory_bytes", 1)
        _check_int(self, "fd_limit", 16)
        _check_int(self, "somaxconn", 1)
        _check_int(self, "threads_max", 1)


@dataclass(frozen=True)
class Workload:
    """The clients and the work each request asks for (docs/DESIGN.md §4)."""

    connections: int = 100
    mode: str = "closed"  # closed: each connection waits for its answer; open: arrivals at rate_rps
    rate_rps: float | None = None
    arrival: str = "poisson"
    think_s: float = 0.0
    requests_per_conn: int | None = None  # None: keep-alive forever; k: reconnect after k requests
    idle_connections: int = 0
    cpu_us: float = 0.0
    gil_us: float = 0.0
    io_us: float = 0.0
    request_bytes: int = 64
    resp_bytes: int = 64
    duration_s: float = 5.0
    warmup_s: float = 1.0
    timeout_s: float = 10.0
    connect_concurrency: int = 256
    # Closed loop: connections per second at which the clients first arrive (evenly spaced); None: all
    # at once, as fast as the generator connects (a start-up storm). 10,000/s is a fleet reconnecting
    # after a deploy or a failover, spread over seconds by its reconnect jitter (100k clients in 10 s),
    # not every client in the same microsecond; a storm that no real fleet makes is not a capacity limit.
    connect_rate_cps: float | None = 10_000.0

    def __post_init__(self) -> None:
        _check_int(self, "connections", 1)
        _check_choice(self, "mode", LOAD_MODES)
        _check_float(self, "rate_rps", 0.0, strict=True, optional=True)
        if self.mode == "open" and self.rate_rps is None:
            raise ValueError("rate_rps: open-loop mode needs rate_rps")
        _check_choice(self, "arrival", ARRIVALS)
        _check_float(self, "think_s")
        _check_int(self, "requests_per_conn", 1, optional=True)
        _check_int(self, "idle_connections", 0)
        for name in ("cpu_us", "gil_us", "io_us"):
            _check_float(self, name)
        _check_int(self, "request_bytes", 16)
        _check_int(self, "resp_bytes", 0)
        _check_float(self, "duration_s", 0.0, strict=True)
        _check_float(self, "warmup_s")
        _check_float(self, "timeout_s", 0.0, strict=True)
        _check_int(self, "connect_concurrency", 1)
        _check_float(self, "connect_rate_cps", 0.0, strict=True, optional=True)

    @property
    def work_path(self) -> str:
        """The request target that asks a server for this workload's work (docs/DESIGN.md §4)."""
        return (
            f"/work?cpu_us={self.cpu_us:g}&gil_us={self.gil_us:g}&io_us={self.io_us:g}&resp_bytes={self.resp_bytes}"
        )


@dataclass(frozen=True)
class Scenario:
    model: ModelSpec = field(default_factory=ModelSpec)
    hardware: Hardware = field(default_factory=Hardware)
    workload: Workload = field(default_factory=Workload)
    seed: int = 1

    def __post_init__(self) -> None:
        for name, kind in (("model", ModelSpec), ("hardware", Hardware), ("workload", Workload)):
            if not isinstance(getattr(self, name), kind):
                raise ValueError(f"{name}: expected a {kind.__name__}, got {type(getattr(self, name)).__name__}")
        _check_int(self, "seed", 0)

    # -- conversions -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scenario:
        if not isinstance(data, dict):
            raise ValueError(f"scenario: expected a mapping with model, hardware, workload, seed; got "
                             f"{type(data).__name__}")
        _reject_unknown(data, ("model", "hardware", "workload", "seed"), "scenario")
        parts = {}
        for key, kind in (("model", ModelSpec), ("hardware", Hardware), ("workload", Workload)):
            sub = data.get(key)
            if sub is not None and not isinstance(sub, dict):
                raise ValueError(f"{key}: expected a mapping of {kind.__name__} fields, got {type(sub).__name__}")
            sub = dict(sub or {})
            _reject_unknown(sub, [f.name for f in dataclasses.fields(kind)], key)
            parts[key] = kind(**sub)
        return cls(**parts, seed=data.get("seed", 1))

    def flat(self) -> dict[str, Any]:
        """The scenario's fields as Result columns: ModelSpec.name becomes `model`."""
        row: dict[str, Any] = {"model": self.model.name}
        for f in dataclasses.fields(ModelSpec):
            if f.name != "name":
                row[f.name] = getattr(self.model, f.name)
        row.update(dataclasses.asdict(self.hardware))
        row.update(dataclasses.asdict(self.workload))
        row["seed"] = self.seed
        return row

    @classmethod
    def from_flat(cls, row: dict[str, Any]) -> Scenario:
        def pick(kind: type, rename: dict[str, str] | None = None) -> dict[str, Any]:
            out = {}
            for f in dataclasses.fields(kind):
                key = (rename or {}).get(f.name, f.name)
                if key in row:
                    value = _plain(row[key])
                    # A DataFrame column of ints with a gap becomes float: give int fields ints back.
                    if isinstance(value, float) and value.is_integer() and "int" in f.type and "float" not in f.type:
                        value = int(value)
                    out[f.name] = value
            return out

        return cls(
            model=ModelSpec(**pick(ModelSpec, {"name": "model"})),
            hardware=Hardware(**pick(Hardware)),
            workload=Workload(**pick(Workload)),
            seed=int(row.get("seed", 1)),
        )

    def replace(self, **changes: Any) -> Scenario:
        """Copy with changes given by flat field name, e.g. replace(cores=4, connections=1000, name='m3')."""
        buckets: dict[str, dict[str, Any]] = {"model": {}, "hardware": {}, "workload": {}}
        top: dict[str, Any] = {}
        for key, value in changes.items():
            if key == "model" and not isinstance(value, ModelSpec):
                buckets["model"]["name"] = value
            elif key in ("model", "hardware", "workload", "seed"):
                top[key] = value
            else:
                for part, kind in (("model", ModelSpec), ("hardware", Hardware), ("workload", Workload)):
                    if key in {f.name for f in dataclasses.fields(kind)}:
                        buckets[part][key] = value
                        break
                else:
                    raise ValueError(f"{key}: not a Scenario field")
        scenario = dataclasses.replace(self, **top)
        for part, sub in buckets.items():
            if sub:
                scenario = dataclasses.replace(scenario, **{part: dataclasses.replace(getattr(scenario, part), **sub)})
        return scenario


def scenario_columns() -> list[str]:
    return list(Scenario().flat().keys())


def _reject_unknown(data: dict[str, Any], allowed: Any, where: str) -> None:
    unknown = sorted(str(k) for k in set(data) - set(allowed))
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown {where} field; allowed: {', '.join(sorted(allowed))}")


def _plain(value: Any) -> Any:
    """numpy/pandas scalars back to Python scalars; NaN back to None."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
