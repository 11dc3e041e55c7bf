"""How a real run is simulated and compared with the simulation (docs/DESIGN.md §7.3-4).

A real run's scenario is simulated with a fixed seed per point (common random numbers), over the
run's own window or about `target_requests` requests (cheaper, but a start-up transient the real
window saw is then cut off or over-weighted). The simulated Result is counted as realkit counts it
(as_realkit) before it is compared: residuals are weighted log(simulated / measured) of METRICS.

On a 2-core box a 1-core server leaves the other core to the load generator; a server given every
core shares them with it, so those points are simulated with loadgen_on_server_cores=True; the others
with loadgen_cores, the generator on CPUs of its own (simkit.clients: its CPU per wake-up, request and
connection, probed, never fitted), so a run the generator limits is limited in both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from simkit.profile import ARCHITECTURE_PARAMS, CostProfile
from simkit.result import Result
from simkit.scenario import Scenario, available_cores

# (metric, weight): p99 is the noisiest figure on a shared box, so it counts half.
METRICS: tuple[tuple[str, float], ...] = (("throughput_rps", 1.0), ("latency_p50_s", 1.0), ("latency_p99_s", 0.5))

SimulateFn = Callable[..., Result]


def loadgen_shares_cores(scenario: Scenario, host_cores: int | None = None) -> bool:
    """A server given every core of this box shares them with the load generator."""
    return scenario.hardware.cores >= (host_cores or available_cores())


def loadgen_own_cores(scenario: Scenario, host_cores: int | None = None) -> int:
    """The CPUs realkit's runner gives the load generator beside the server's (0: it shares them), as
    many as it starts processes for (realkit.runner.generator_processes)."""
    if loadgen_shares_cores(scenario, host_cores):
        return 0
    from realkit.runner import generator_processes

    rest = (host_cores or available_cores()) - scenario.hardware.cores
    return generator_processes(scenario.workload.connections, rest, shared=False)


def sim_scenario(real: Result, target_requests: int | None) -> Scenario:
    """The real run's scenario, shortened to about target_requests simulated requests (a simulated
    request costs wall time, and the fit simulates every training point many times), but never
    shorter than 4 measured latencies, with a warm-up of 1.5 (the closed loop's start-up transient).
    target_requests None: the real run's own window, for a prediction that must see what the real
    window saw (a held-out point at 10k connections still connecting after a short warm-up)."""
    s = real.scenario
    if target_requests is None:
        return s
    wl = s.workload
    x = real.throughput_rps
    lat = real.latency_mean_s if math.isfinite(real.latency_mean_s) else 0.0
    duration = wl.duration_s if x <= 0 else min(wl.duration_s, max(0.1, target_requests / x, 4.0 * lat))
    warmup = min(wl.warmup_s, max(0.05, 1.5 * lat))
    return s.replace(duration_s=round(duration, 4), warmup_s=round(warmup, 4))


def as_realkit(sim: Result, stats: Any = None) -> Result:
    """The simulated Result with throughput, mean latency and peaks counted as realkit counts them.

    realkit's load generator counts responses completed inside its window whatever their send time;
    simkit's Result counts the cohort sent inside the window and completed by its end, which misses
    the requests still in flight at the end (about latency / window of them). SimStats carries the
    realkit-style count (completed_in_window) and those completions' latency percentiles, in closed
    and open loop alike (an overloaded open loop's cohort may finish nothing inside the window while
    the server answers at full rate); without it (an older or fake simulator), in a closed loop at
    steady state the send rate equals the throughput: (completed + in_flight) / duration.
    """
    if stats is not None and getattr(stats, "threads_sampled_peak", 0) > 0:
        # realkit's monitor samples every 100 ms; the Result's peaks are exact maxima (short-lived
        # threads, a thread per request's, come and go between samples). Compare like with like.
        sim = replace(sim, threads_peak=stats.threads_sampled_peak,
                      rss_peak_bytes=stats.rss_sampled_peak_bytes or sim.rss_peak_bytes,
                      fds_peak=stats.fds_sampled_peak or sim.fds_peak)
    d = sim.scenario.workload.duration_s
    if stats is not None and hasattr(stats, "completed_in_window"):
        x = stats.completed_in_window / d
        lat = getattr(stats, "latency_mean_in_window_s", sim.latency_mean_s)
        sim = replace(sim, throughput_rps=x, latency_mean_s=lat if lat == lat else sim.latency_mean_s)
        pct = getattr(stats, "latency_percentiles_in_window_s", ())
        if len(pct) == 4:
            sim = replace(sim, **dict(zip(("latency_p50_s", "latency_p90_s", "latency_p99_s", "latency_p999_s"),
                                          pct, strict=True)))
        return sim
    if sim.scenario.workload.mode != "closed":
        return sim
    return replace(sim, throughput_rps=(sim.completed + sim.in_flight) / d)


# What a real run measures of its work's actual duration: (the Result's field, the profile's parameter,
# the Workload field that asks for that kind of work).
RUN_SPEEDS: tuple[tuple[str, str, str], ...] = (("work_cpu_scale", "cpu_work_scale", "cpu_us"),
                                                ("work_gil_scale", "gil_work_scale", "gil_us"))


# The server's per-operation CPU costs whose probes time the server's own path from Python: they run at
# the box's speed for Python as the gil_us work does (measured on a zero-work reactor: docs/DESIGN.md
# §7.3). An architecture's own primitives (its registry entry's params, m8's ring) are probed from
# Python the same way.
PYTHON_COSTS: tuple[str, ...] = ("parse_s", "recv_base_s", "send_base_s", "epoll_wait_base_s", "epoll_per_event_s",
                                 "epoll_ctl_s", "accept_s", "close_s", "queue_handoff_s", "thread_spawn_s",
                                 "thread_boot_s", *ARCHITECTURE_PARAMS)


def at_run_speed(profile: CostProfile, real: Result) -> CostProfile:
    """`profile` with the work scales the real run measured (realkit.work.WorkLedger), where it did,
    and its Python costs (PYTHON_COSTS) at the run's speed for Python: each probed at the speed its
    probe recorded (notes.probes.<name>.interp_speed), times run speed / probe speed.

    A shared VM's speed for interpreted code moves for seconds at a time (hashing does not): a
    simulation of a run is a test of the server's mechanisms at that run's speed, so it runs at it;
    a prediction of an unmeasured case takes the runs' median and their spread (fit.apply_measured)."""
    got = {param: v for field, param, _asked in RUN_SPEEDS if math.isfinite(v := getattr(real, field, math.nan)) and v > 0}
    speed = got.get("gil_work_scale")
    if speed is not None:
        probes = profile.notes.get("probes") or {}
        for name in PYTHON_COSTS:
            at = (probes.get(name) or {}).get("interp_speed")
            if isinstance(at, (int, float)) and math.isfinite(at) and at > 0 and name in profile.params:
                got[name] = profile[name] * speed / at
    return profile.with_params("fit", **got) if got else profile


def _sim_one(args: tuple) -> Result | str:
    simulate, scenario, profile, seed, shared, own = args
    lg = {"loadgen_cores": own} if own else {"loadgen_on_server_cores": shared}
    try:
        try:
            got = simulate(scenario, profile, seed=seed, detail=True, **lg)
        except TypeError:  # a simulator without detail= (or without loadgen_cores=): no SimStats
            got = simulate(scenario, profile, seed=seed, loadgen_on_server_cores=shared)
        sim, stats = got if isinstance(got, tuple) else (got, None)
        return as_realkit(sim, stats)
    except Exception as exc:  # noqa: BLE001 - a crashing simulation is a (bad) prediction, reported
        return f"{type(exc).__name__}: {exc}"


class SimBatch:
    """Runs many simulations, in this process or on a pool of `workers` processes."""

    def __init__(self, simulate: SimulateFn, workers: int = 1, host_cores: int | None = None) -> None:
        self.simulate = simulate
        self.workers = workers
        self.host_cores = host_cores
        self.calls = 0
        self._pool = None
        if workers > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn, not fork: the caller may run a progress-bar thread.
            self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))

    def run(self, scenarios: Sequence[Scenario], profiles: Sequence[CostProfile]) -> list[Result | str]:
        tasks = [(self.simulate, s, p, s.seed, loadgen_shares_cores(s, self.host_cores),
                  loadgen_own_cores(s, self.host_cores)) for s, p in zip(scenarios, profiles, strict=True)]
        self.calls += len(tasks)
        if self._pool is None:
            return [_sim_one(t) for t in tasks]
        return list(self._pool.map(_sim_one, tasks, chunksize=max(1, len(tasks) // (4 * self.workers))))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def __enter__(self) -> SimBatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def log_ratio(pred: float, meas: float) -> float:
    """log(pred / meas), clipped to +-5; 0 when there is nothing measured to compare with."""
    if not (isinstance(meas, float) and math.isfinite(meas) and meas > 0):
        return 0.0
    if not (math.isfinite(pred) and pred > 0):
        return -5.0 if pred == 0 or not math.isfinite(pred) else 5.0
    return max(-5.0, min(5.0, math.log(pred / meas)))


def residuals(sims: Sequence[Result | str], reals: Sequence[Result]) -> np.ndarray:
    out = []
    for sim, real in zip(sims, reals, strict=True):
        for metric, weight in METRICS:
            meas = getattr(real, metric)
            pred = getattr(sim, metric) if isinstance(sim, Result) else math.nan
            if isinstance(sim, Result) and metric != "throughput_rps" and sim.completed == 0:
                pred = math.nan
            out.append(weight * log_ratio(pred if math.isfinite(pred) else 0.0, meas))
    return np.asarray(out, float)
