"""The real servers (docs/DESIGN.md §3), one module per architecture (simkit.registry names it), sharing
realkit.protocol, realkit.work and realkit.servers.base.

Python API
----------
    run_server(spec: ModelSpec, host="127.0.0.1", port=0, ready_callback=None, *,
               cores=None, stopper=None, install_signals=True) -> None

Starts the model `spec.name` with its knobs (threads, pool, processes, dispatch, backlog,
keepalive_timeout_s), calls `ready_callback(port)` once it accepts connections, and serves until
stopped: by SIGTERM/SIGINT when `install_signals` (main thread only), or by `stopper.set()` (a
base.Stopper, usable from another thread, e.g. in tests). On stop it takes no new connections,
answers every request already received, closes idle connections, and returns (in-flight work is
abandoned past the shutdown limit). The environment variables SERVERLAB_HEADER_TIMEOUT_S,
SERVERLAB_SEND_TIMEOUT_S and SERVERLAB_SHUTDOWN_LIMIT_S override base.py's limits (a bad value is
a ValueError naming the variable). `cores` (a list of
CPU numbers) pins the process (and so its threads and forked workers) with os.sched_setaffinity.
A model that forks must be called from a process without other threads.

Subprocess
----------
    python -m realkit.servers '{"model": {"name": "m3_reactor"}, "port": 0}'

runs one server from a ServerArgs JSON object (see server_argument / parse_server_argument) and prints
the bound port on one line once ready. realkit.runner starts servers this way; `serverlab serve` is the
command-line face for people.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any

from realkit import work
from realkit.servers import base
from realkit.servers.base import Stopper, install_signal_handlers
from simkit import registry
from simkit.scenario import ModelSpec

__all__ = ["run_server", "Stopper", "ServerArgs", "server_argument", "parse_server_argument"]

_ARG_KEYS = ("model", "host", "port", "cores")


@dataclasses.dataclass(frozen=True)
class ServerArgs:
    """What `python -m realkit.servers` runs: run_server's arguments."""

    model: ModelSpec
    host: str = "127.0.0.1"
    port: int = 0
    cores: tuple[int, ...] | None = None


def server_argument(
    spec: ModelSpec, host: str = "127.0.0.1", port: int = 0, cores: Sequence[int] | None = None
) -> str:
    """The JSON argument of `python -m realkit.servers`:
    {"model": <ModelSpec fields>, "host": "127.0.0.1", "port": 0, "cores": [0, 1] | null}."""
    return json.dumps(
        {
            "model": dataclasses.asdict(spec),
            "host": host,
            "port": port,
            "cores": list(cores) if cores is not None else None,
        }
    )


def parse_server_argument(text: str) -> ServerArgs:
    """ServerArgs from server_argument's JSON ("model" required; "host", "port", "cores" optional).
    Raises ValueError naming the field."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"argument: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"argument: expected a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(_ARG_KEYS))
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown field; allowed: {', '.join(_ARG_KEYS)}")
    model: Any = data.get("model")
    if not isinstance(model, dict):
        raise ValueError(f"model: expected an object of ModelSpec fields, got {model!r}")
    allowed = {f.name for f in dataclasses.fields(ModelSpec)}
    unknown = sorted(set(model) - allowed)
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown ModelSpec field; allowed: {', '.join(sorted(allowed))}")
    host = data.get("host", "127.0.0.1")
    if not isinstance(host, str) or not host:
        raise ValueError(f"host: expected an address, got {host!r}")
    port = data.get("port", 0)
    if isinstance(port, bool) or not isinstance(port, int):
        raise ValueError(f"port: expected an integer, got {port!r}")
    cores = data.get("cores")
    if cores is not None:
        if not isinstance(cores, list) or any(isinstance(c, bool) or not isinstance(c, int) for c in cores):
            raise ValueError(f"cores: expected a list of CPU numbers or null, got {cores!r}")
        cores = tuple(cores)
    return ServerArgs(ModelSpec(**model), host, port, cores)


def run_server(
    spec: ModelSpec,
    host: str = "127.0.0.1",
    port: int = 0,
    ready_callback: Callable[[int], None] | None = None,
    *,
    cores: Sequence[int] | None = None,
    stopper: Stopper | None = None,
    install_signals: bool = True,
) -> None:
    if not isinstance(spec, ModelSpec):
        raise ValueError(f"spec: expected a ModelSpec, got {type(spec).__name__}")
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port: must be in 0..65535, got {port!r}")
    if cores is not None:
        cores = list(cores)
        if not cores:
            raise ValueError("cores: empty CPU list")
        try:
            os.sched_setaffinity(0, cores)
        except OSError as exc:
            raise ValueError(f"cores: cannot pin to {cores}: {exc}") from None
    base.set_limits(base.Limits.from_env())  # SERVERLAB_*_S overrides, e.g. a short limit in tests
    module = importlib.import_module(registry.get(spec.name).real_module_name)
    own_stopper = stopper is None
    stopper = stopper or Stopper()
    signals = install_signals and threading.current_thread() is threading.main_thread()
    if signals:
        install_signal_handlers(stopper)
    work.calibrate()  # before ready: no request pays for it, and forked workers inherit it
    try:
        module.serve(spec, host, port, stopper, ready_callback or (lambda port: None))
    finally:
        if signals:
            signal.set_wakeup_fd(-1)  # the stop pipe is about to close
        if own_stopper:
            stopper.close()
