"""Run many simulations in parallel: a local process pool by default, or a Dask cluster.

`sweep(base, models=..., cores=..., connections=...)` simulates every point of the grid and returns
the contract DataFrame (simkit.result.columns(), rows in grid order: models x cores x connections),
so a local run and a Dask run of the same sweep give the same frame. Every point must come back:
when a worker dies or a simulation raises, `SweepIncomplete` lists the missing scenarios instead of
handing back a partial frame that a report would present as complete.

Points above `analytic_above` connections can be answered by simkit.analytic (a fast queueing
approximation) instead of the simulator; the `source` column says which ("sim" or "analytic"), and an
AnalyticPointsWarning says how many when the window policy or a threshold sent points there.

Every point carries a band (experiments.intervals: the rule is in its docstring): a simulated point is
replicated over seeds derived from its own (the `seeds` column; its value is the MEAN over the
`replications`), and the frame gains `<metric>_lo` / `<metric>_hi` columns (intervals.band_columns()).
bands=False gives the bare contract frame of one seed per point.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from typing import Any

import pandas as pd

from experiments import intervals
from experiments.intervals import BandPolicy, PointParts
from experiments.planning import Sizing, build_grid
from experiments.windows import WindowPolicy, plan_windows
from simkit import registry
from simkit.profile import CostProfile, resolve_profile
from simkit.result import Result, to_frame
from simkit.scenario import ModelSpec, Scenario, available_cores

SimulateFn = Callable[..., Result]
# How long to wait for a Dask scheduler given by address before giving up (it retries meanwhile).
DASK_CONNECT_TIMEOUT_S = 20.0


class AnalyticPointsWarning(UserWarning):
    """Some points of a sweep come from simkit.analytic, not the simulator."""


class SweepIncomplete(RuntimeError):
    """Some scenarios of a sweep have no result. `missing` holds (index, scenario, why) tuples;
    `partial` the frame of the rows that did come back (for diagnosis, not for a report)."""

    def __init__(self, missing: list[tuple[int, Scenario, str]], total: int, partial: pd.DataFrame):
        self.missing = missing
        self.total = total
        self.partial = partial
        lines = [f"sweep incomplete: {len(missing)} of {total} scenarios have no result:"]
        for idx, sc, why in missing[:25]:
            lines.append(f"  #{idx} {describe(sc)}: {why}")
        if len(missing) > 25:
            lines.append(f"  ... and {len(missing) - 25} more")
        super().__init__("\n".join(lines))


def describe(scenario: Scenario) -> str:
    """One line naming a point: the model and its knobs (registry), cores, connections, seed."""
    return (f"{registry.get(scenario.model.name).describe(scenario.model)} cores={scenario.hardware.cores} "
            f"connections={scenario.workload.connections} seed={scenario.seed}")


def _default_simulate() -> SimulateFn:
    import simkit

    fn = getattr(simkit, "simulate", None)
    if fn is None:
        from simkit.sim import simulate as fn  # noqa: PLC0415
    return fn


def _default_analytic() -> SimulateFn:
    from simkit.analytic import analytic

    return analytic


def run_point(fn: SimulateFn, scenario: Scenario, profile: CostProfile) -> Result:
    """One point, in whichever process runs it. Module level so the pool and Dask can pickle it."""
    result = fn(scenario, profile)
    if not isinstance(result, Result):
        raise TypeError(f"{getattr(fn, '__name__', fn)} returned {type(result).__name__}, not a Result")
    return result


def run_banded(fn: SimulateFn, scenario: Scenario, profile: CostProfile,
               banding: tuple[BandPolicy, SimulateFn] | None) -> tuple[Result, PointParts | None]:
    """One point replicated over seeds as the BandPolicy says (once without one), in whichever process
    runs it: the mean Result and its band's noise and parameter parts (experiments.intervals), the
    parameter part priced by the sweep's analytic model (banding's second item)."""
    if banding is None:
        return run_point(fn, scenario, profile), None
    policy, analytic = banding
    runs = intervals.replicate(partial(run_point, fn), scenario, profile, policy)
    return intervals.combine(runs), intervals.point_parts(runs, scenario, profile, policy.level, analytic)


def sweep(
    base_scenario: Scenario,
    models: Sequence[str | int | ModelSpec] | None = None,
    cores: Sequence[int] | None = None,
    connections: Sequence[int] | None = None,
    profile: CostProfile | str | os.PathLike | None = None,
    engine: Any = "local",
    simulate: SimulateFn | None = None,
    progress: bool = True,
    *,
    sizing: Sizing | None = None,
    workers: int | None = None,
    analytic_above: int | None = None,
    analytic: SimulateFn | None = None,
    scenarios: Sequence[Scenario] | None = None,
    use_analytic: Sequence[bool] | None = None,
    window: WindowPolicy | None = None,
    description: str = "simulating",
    bands: BandPolicy | bool = True,
) -> pd.DataFrame:
    """Simulate models x cores x connections around `base_scenario`; return the contract frame.

    engine: "local" (process pool, `workers` processes, default all cores), "serial" (this process,
    for debugging), a dask.distributed Client, or a scheduler address "tcp://HOST:PORT" (its workers
    need this project installed: tasks refer to simkit.simulate by name).
    simulate: defaults to simkit.simulate; injectable so tests and other simulators plug in (it must be
    picklable, i.e. a module-level function, for the process pool).
    analytic_above: points with more connections than this use `analytic` (default simkit.analytic)
    instead of `simulate`; use_analytic: the same choice made per point (parallel to `scenarios`,
    e.g. from experiments.windows.plan_windows). scenarios: an explicit list that replaces the grid.
    window: size each point's simulated window with this policy (experiments.windows.WindowPolicy)
    instead of the base scenario's fixed duration_s/warmup_s; points it prices above
    max_sim_requests go to the analytic model. Points sent to the analytic model by `window`,
    `analytic_above` or `use_analytic` raise an AnalyticPointsWarning naming how many.
    bands: True (BandPolicy()), a BandPolicy, or False (one seed per point, no band columns); the
    bands' parameter part is priced by `analytic` too.
    profile: chosen by simkit.profile.resolve_profile (a CostProfile, a path, or None: the one rule).
    Arguments of the wrong type or out of range raise ValueError naming the argument.
    """
    _check_arguments(base_scenario, models, cores, connections, engine, simulate, progress, sizing, workers,
                     analytic_above, analytic, scenarios, use_analytic, window, description, bands)
    policy = BandPolicy() if bands is True else (bands or None)
    if scenarios is None:
        scenarios = build_grid(base_scenario, models, cores, connections, sizing)
    scenarios = list(scenarios)
    if not scenarios:
        raise ValueError("scenarios: empty sweep")
    prof = resolve_profile(profile)
    if window is not None:
        scenarios, priced_out = plan_windows(scenarios, prof, window)
        use_analytic = priced_out if use_analytic is None else [a or b for a, b in zip(use_analytic, priced_out,
                                                                                       strict=True)]
    sim_fn = simulate or _default_simulate()
    fns: list[SimulateFn] = []
    ana_fn = None
    if use_analytic is not None and len(use_analytic) != len(scenarios):
        raise ValueError(f"use_analytic: {len(use_analytic)} flags for {len(scenarios)} scenarios")
    for i, sc in enumerate(scenarios):
        if (analytic_above is not None and sc.workload.connections > analytic_above) or (
                use_analytic is not None and use_analytic[i]):
            ana_fn = ana_fn or analytic or _default_analytic()
            fns.append(ana_fn)
        else:
            fns.append(sim_fn)
    n_analytic = sum(fn is ana_fn for fn in fns) if ana_fn is not None else 0
    if n_analytic:
        why = ", ".join(w for w, on in (("the window policy's cost bound", window is not None),
                                        (f"analytic_above={analytic_above}", analytic_above is not None),
                                        ("use_analytic", use_analytic is not None and window is None)) if on)
        warnings.warn(f"{n_analytic} of {len(scenarios)} points come from simkit.analytic (a queueing "
                      f"approximation), not the simulator ({why}); the frame's `source` column says which",
                      AnalyticPointsWarning, stacklevel=2)
    if engine == "serial":
        runner = _run_serial
    elif engine == "local" or engine is None:
        runner = _run_local
    else:
        runner = _run_dask
    banding = (policy, analytic or _default_analytic()) if policy is not None else None
    results, missing = runner(engine, fns, scenarios, prof, workers, progress, description, banding)
    done = [results[i] for i in range(len(scenarios)) if i in results]
    frame = to_frame([r for r, _parts in done])
    if policy is not None:
        errors = intervals.ValidationErrors.of(prof)
        band_rows = [intervals.bands(r, parts, errors, policy.level) for r, parts in done]
        frame = pd.concat([frame, pd.DataFrame(band_rows, index=frame.index)], axis=1)
    if missing:
        raise SweepIncomplete(sorted(missing, key=lambda m: m[0]), len(scenarios), frame)
    return frame


def _check_arguments(base_scenario, models, cores, connections, engine, simulate, progress, sizing, workers,
                     analytic_above, analytic, scenarios, use_analytic, window, description, bands) -> None:
    """sweep()'s arguments, checked before anything runs: ValueError naming the argument."""
    if scenarios is None and not isinstance(base_scenario, Scenario):
        raise ValueError(f"base_scenario: expected a Scenario, got {type(base_scenario).__name__}")
    for name, value in (("models", models), ("cores", cores), ("connections", connections),
                        ("scenarios", scenarios), ("use_analytic", use_analytic)):
        if value is not None and (isinstance(value, (str, bytes)) or not isinstance(value, Sequence)):
            raise ValueError(f"{name}: expected a list, got {value!r}")
    for m in models or ():
        if not isinstance(m, ModelSpec):
            try:
                registry.resolve(m)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"models: {exc}") from None
    for sc in scenarios or ():
        if not isinstance(sc, Scenario):
            raise ValueError(f"scenarios: expected Scenario objects, got a {type(sc).__name__}")
    for flag in use_analytic or ():
        if not isinstance(flag, bool) and type(flag).__name__ != "bool_":  # numpy's bool too
            raise ValueError(f"use_analytic: expected true/false flags, got {flag!r}")
    if not (engine is None or isinstance(engine, str) or hasattr(engine, "scatter")):
        raise ValueError(f"engine: expected 'local', 'serial', a dask Client or an address like tcp://HOST:PORT, "
                         f"got {type(engine).__name__}")
    for name, fn in (("simulate", simulate), ("analytic", analytic)):
        if fn is not None and not callable(fn):
            raise ValueError(f"{name}: expected a function, got {type(fn).__name__}")
    for name, value, low in (("workers", workers, 1), ("analytic_above", analytic_above, 0)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise ValueError(f"{name}: expected an integer >= {low} or None, got {value!r}")
    if sizing is not None and not isinstance(sizing, Sizing):
        raise ValueError(f"sizing: expected an experiments.planning.Sizing, got {type(sizing).__name__}")
    if window is not None and not isinstance(window, WindowPolicy):
        raise ValueError(f"window: expected an experiments.windows.WindowPolicy, got {type(window).__name__}")
    if not isinstance(progress, bool):
        raise ValueError(f"progress: expected true or false, got {progress!r}")
    if not isinstance(description, str):
        raise ValueError(f"description: expected a string, got {description!r}")
    if not isinstance(bands, (bool, BandPolicy)):
        raise ValueError(f"bands: expected true, false or an experiments.intervals.BandPolicy, got {bands!r}")


# -- engines: each returns ({index: (Result, PointParts | None)}, [(index, scenario, why), ...]) --

def _progress(enabled: bool, total: int, description: str):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled, transient=False)
    task = bar.add_task(description, total=total)
    return bar, task


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _run_serial(_engine, fns, scenarios, profile, _workers, progress, description, banding):
    results, missing = {}, []
    bar, task = _progress(progress, len(scenarios), description)
    with bar:
        for i, (fn, sc) in enumerate(zip(fns, scenarios, strict=True)):
            try:
                results[i] = run_banded(fn, sc, profile, banding)
            except Exception as exc:  # noqa: BLE001 - reported per scenario, never swallowed
                missing.append((i, sc, _why(exc)))
            bar.advance(task)
    return results, missing


def _run_local(_engine, fns, scenarios, profile, workers, progress, description, banding):
    n_workers = max(1, min(workers or available_cores(), len(scenarios)))
    results, missing = {}, []
    bar, task = _progress(progress, len(scenarios), description)
    with bar, cf.ProcessPoolExecutor(max_workers=n_workers) as pool:
        # Largest loads first (a proxy for the longest simulations): the pool's tail is then made of
        # short points, so both workers finish together. Rows still come back in grid order.
        order = sorted(range(len(scenarios)), key=lambda i: -scenarios[i].workload.connections)
        futures = {pool.submit(run_banded, fns[i], scenarios[i], profile, banding): i for i in order}
        for fut in cf.as_completed(futures):
            i = futures[fut]
            try:
                results[i] = fut.result()
            except BrokenProcessPool:
                missing.append((i, scenarios[i], "worker process died (BrokenProcessPool)"))
            except Exception as exc:  # noqa: BLE001
                missing.append((i, scenarios[i], _why(exc)))
            bar.advance(task)
    return results, missing


def _run_dask(engine, fns, scenarios, profile, _workers, progress, description, banding):
    from distributed import Client, as_completed

    own = isinstance(engine, str)
    if own and not engine.startswith(("tcp://", "tls://", "inproc://", "ucx://")):
        raise ValueError(f"engine: expected 'local', 'serial', a dask Client or an address like "
                         f"tcp://HOST:PORT, got {engine!r}")
    if own:
        try:
            client = Client(engine, timeout=f"{DASK_CONNECT_TIMEOUT_S:g}s")
        except (OSError, TimeoutError) as exc:
            raise ValueError(f"engine: no Dask scheduler answered at {engine} within {DASK_CONNECT_TIMEOUT_S:g} s "
                             f"({type(exc).__name__})") from None
    else:
        client = engine
    results, missing = {}, []
    try:
        # One scattered copy of the profile instead of one per task.
        [prof_future] = client.scatter([profile], broadcast=True)
        futures = [client.submit(run_banded, fn, sc, prof_future, banding, pure=False, key=f"serverlab-point-{i}-{os.getpid()}-"
                                 f"{id(scenarios)}") for i, (fn, sc) in enumerate(zip(fns, scenarios, strict=True))]
        index = {f.key: i for i, f in enumerate(futures)}
        bar, task = _progress(progress, len(scenarios), f"{description} (dask)")
        with bar:
            for fut in as_completed(futures):
                i = index[fut.key]
                try:
                    results[i] = fut.result()
                except Exception as exc:  # noqa: BLE001 - KilledWorker, CommClosedError, the sim's own errors
                    missing.append((i, scenarios[i], _why(exc)))
                bar.advance(task)
    finally:
        if own:
            client.close()
    return results, missing
