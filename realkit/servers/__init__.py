"""The seven real servers (DESIGN §3), one module each, sharing realkit.protocol, realkit.work and
realkit.servers.base.

Python API
----------
    run_server(spec: ModelSpec, host="127.0.0.1", port=0, ready_callback=None, *,
               cores=None, stopper=None, install_signals=True) -> None

Starts the model `spec.name` with its knobs (threads, pool, processes, dispatch, backlog,
keepalive_timeout_s), calls `ready_callback(port)` once it accepts connections, and serves until
stopped: by SIGTERM/SIGINT when `install_signals` (main thread only), or by `stopper.set()` (a
base.Stopper, usable from another thread, e.g. in tests). On stop it takes no new connections,
answers every request already received, closes idle connections, and returns. `cores` (a list of
CPU numbers) pins the process (and so its threads and forked workers) with os.sched_setaffinity.
m6 forks: call it from a process without other threads.

Command line (same options as `serverlab serve`):
    python -m realkit.servers --model m3_reactor --port 0      # prints the bound port, then serves
"""

from __future__ import annotations

import importlib
import os
import signal
import threading
from collections.abc import Callable, Sequence

from realkit import work
from realkit.servers.base import Stopper, install_signal_handlers
from simkit.scenario import MODEL_NAMES, ModelSpec, model_name

__all__ = ["MODEL_NAMES", "run_server", "Stopper", "model_spec"]


def model_spec(
    model: str,
    *,
    threads: int = 1,
    pool: int | None = None,
    processes: int = 1,
    dispatch: str = "shared",
    backlog: int = 1024,
    keepalive_timeout_s: float = 30.0,
) -> ModelSpec:
    """A validated ModelSpec from CLI-style options (pool defaults to 4 for m4, else 0)."""
    try:
        name = model_name(model)
    except ValueError as exc:
        raise ValueError(f"name: {exc}") from None
    return ModelSpec(
        name=name,
        threads=threads,
        pool=pool if pool is not None else (4 if name == "m4_reactor_workers" else 0),
        processes=processes,
        dispatch=dispatch,
        backlog=backlog,
        keepalive_timeout_s=keepalive_timeout_s,
    )


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
    own_stopper = stopper is None
    stopper = stopper or Stopper()
    signals = install_signals and threading.current_thread() is threading.main_thread()
    if signals:
        install_signal_handlers(stopper)
    work.calibrate()  # before ready: no request pays for it, and forked workers inherit it
    module = importlib.import_module(f"realkit.servers.{spec.name}")
    try:
        module.serve(spec, host, port, stopper, ready_callback or (lambda port: None))
    finally:
        if signals:
            signal.set_wakeup_fd(-1)  # the stop pipe is about to close
        if own_stopper:
            stopper.close()
