"""simulate(scenario, profile) -> Result: play one Scenario in SimPy with a CostProfile's costs.

Signature (stable; other areas code against it)::

    simulate(scenario, profile=None, *, seed=None, loadgen_on_server_cores=False, loadgen_cores=0,
             service="deterministic", detail=False, force=False) -> Result | tuple[Result, SimStats]

- profile None -> simkit.profile.resolve_profile() (this host's calibrated profile, else the built-in
  one with a warning); profile.warn_if_foreign() is called. Result.profile is the profile's label.
- seed None -> scenario.seed. Same (scenario, profile, seed) -> the same Result, bit for bit.
- loadgen_on_server_cores: the load generator is modelled as one more thread on the server's cores,
  spending the profile's client CPU per wake-up, request and connection (simkit.clients); its busy
  time is Result.loadgen_cpu_util (and is NOT part of cpu_util, which is the server's alone).
- loadgen_cores: the load generator has that many CPUs of its own (realkit's runner gives it the box's
  CPUs the server does not get): modelled as a thread there (simkit.clients), its CPU the ceiling of
  what it can send, e.g. connections per second with requests_per_conn = 1; its busy time is
  Result.loadgen_cpu_util too. 0 (the default): the clients cost nothing, as a fleet of real clients.
- service: "deterministic" (each request's cpu_us / gil_us / io_us work lasts that long, times the
  profile's work scales and, where the profile measured it, the box's jitter: cpu_work_cv /
  gil_work_cv, 0 in the default and zeroed profiles, which are then exact) or "exponential" (each is drawn Exp(mean = that value) from the
  run's seeded RNG): for checking models against M/M/1 and Erlang C.
- detail=True returns (Result, SimStats).
- Cost guard: before it starts, the run's cost is estimated (estimate_cost): simulated requests
  (open loop: rate_rps x (warmup_s + duration_s) arrivals; closed loop: the throughput bound of
  simkit.analytic over the same time), scheduler slices (busy core-seconds / time_slice_s, and per
  forced GIL drop), and load connections (memory held for the whole run). Beyond MAX_SIM_REQUESTS
  requests + slices or MAX_SIM_CONNECTIONS connections it raises ValueError naming the field and the
  bound, unless force=True.

Windows and counting (precise, so the laws can be checked on the same window):
- The measurement window is W = [warmup_s, warmup_s + duration_s) of simulated time; the run stops
  at its end, t_end = warmup_s + duration_s.
- A request is ISSUED at its client-side issue time: the send time in closed loop, the intended
  (scheduled) send time in open loop. Only requests issued inside W are counted ("the cohort").
- Each cohort request ends in exactly one state at t_end: completed (the response reached the
  client by t_end), failed (refused / timeout / reset by t_end), or in flight. So, exactly,
      issued == completed + errors_refused + errors_timeout + errors_reset + in_flight.
- Result.completed, latency_* and throughput_rps (= completed / duration_s) are over the cohort.
  Latency = completion time - issue time (open loop: from the intended send time).
- SimStats.mean_in_system is the time average over W of the number of requests in the system
  (issued, not yet completed or failed), counting every request present in W whatever its issue
  time; Little's law: mean_in_system ~= throughput_rps * latency_mean_s (edge effects only).
- SimStats.threads/rss/fds_sampled_peak: the ledger sampled every 0.1 s inside W, as realkit's
  monitor samples /proc (Result's *_peak fields are the exact maxima over the whole run).
- SimStats.completed_in_window / latency_mean_in_window_s count as realkit's load generator does:
  responses completed inside W whatever their issue time (differs from the cohort by edge effects,
  about latency / duration_s in relative terms); latency_percentiles_in_window_s are their
  p50/p90/p99/p999. These include a start-up transient that reaches into W, e.g. the first requests
  of 10k clients whose SYNs overflowed the backlog, as the real generator's histogram does.
- Utilisation: SimStats.core_busy_s[i] is core i's busy time inside W (server threads only, loadgen
  excluded); Result.cpu_util = sum(core_busy_s) / duration_s.
- failure: the first limit crossed ("threads_max", "memory", "fd_limit"), else "backlog" when SYNs
  were dropped inside W (drops while clients first connect do not count), else "".

Mechanisms live in machine.py (cores, run queue, GIL, ledger), kernel.py (backlog, fds, epoll),
clients.py and models/. Known simplifications, so nobody mistakes them for findings:
- keep-alive timeouts are modelled for m1 only (where an idle connection blocks the server);
- idle connections are established before the run (ledger entries: fds, memory, m2 threads);
- fork_s is not charged (workers fork before the run; none die); virtual stack memory
  (thread_stack_virtual_bytes) has no Result field and is not reported;
- responses are sent whole (no EPOLLOUT / partial-write path); send cost grows per byte.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from simkit import registry
from simkit.profile import CostProfile, resolve_profile
from simkit.result import Result
from simkit.scenario import Scenario

SERVICE_KINDS = ("deterministic", "exponential")
# What one simulate() call may cost before it must be forced (force=True, `serverlab simulate --force`).
# The simulator plays ~50,000-150,000 requests a second on one core; a load connection holds ~0.6 KB.
MAX_SIM_REQUESTS = 20_000_000  # simulated requests + scheduler slices: minutes of CPU, not hours
MAX_SIM_CONNECTIONS = 4_000_000  # load connections: ~2.5 GB of memory
SAMPLE_S = 0.1  # realkit.monitor's sampling period
PERCENTILES = (50.0, 90.0, 99.0, 99.9)  # Result's latency_p50/p90/p99/p999_s


@dataclass(frozen=True)
class SimStats:
    """Raw counters of one simulated run (see the module docstring for windows)."""

    issued: int  # cohort: requests issued in W
    completed: int
    failed: int  # errors_refused + errors_timeout + errors_reset
    in_flight: int
    mean_in_system: float  # time-average number of requests in the system over W
    core_busy_s: tuple[float, ...]  # per core, busy seconds inside W (server threads)
    window_s: float  # duration_s
    loadgen_busy_s: float  # loadgen thread busy seconds inside W (0 unless loadgen_on_server_cores)
    # per process with a tracked GIL: seconds inside W the GIL belonged to a thread, counting from a
    # hand-off, so including a recipient's wait for a core (the convoy); not on-core time
    gil_busy_s: tuple[float, ...]
    ctx_switches: int  # inside W
    events: int  # SimPy events scheduled over the whole run (cost accounting)
    requests_simulated: int  # every request issued over the whole run (cost accounting)
    # The real load generator's counting (realkit): responses completed INSIDE W whatever their issue
    # time, and their mean latency. Equal to the cohort figures up to edge effects of ~latency / window.
    completed_in_window: int = 0
    latency_mean_in_window_s: float = float("nan")
    # ... and their percentiles (p50, p90, p99, p999): these see a start-up transient that reaches
    # into W (a connect storm's first requests), which the cohort's do not.
    latency_percentiles_in_window_s: tuple[float, ...] = ()
    # Peaks as realkit's monitor sees them: sampled every SAMPLE_S inside W (Result's are exact maxima).
    threads_sampled_peak: int = 0
    rss_sampled_peak_bytes: int = 0
    fds_sampled_peak: int = 0


def simulate(
    scenario: Scenario,
    profile: CostProfile | None = None,
    *,
    seed: int | None = None,
    loadgen_on_server_cores: bool = False,
    loadgen_cores: int = 0,
    service: str = "deterministic",
    detail: bool = False,
    force: bool = False,
):
    """Simulate `scenario`; see the module docstring."""
    if not isinstance(scenario, Scenario):
        raise ValueError(f"scenario: expected a Scenario, got {type(scenario).__name__}")
    if service not in SERVICE_KINDS:
        raise ValueError(f"service: must be one of {', '.join(SERVICE_KINDS)}, got {service!r}")
    if profile is None:
        profile = resolve_profile()
    if not isinstance(profile, CostProfile):
        raise ValueError(f"profile: expected a CostProfile, got {type(profile).__name__}")
    profile.warn_if_foreign()
    wl = scenario.workload
    if wl.mode == "closed" and wl.think_s == 0.0:
        floor = sum(profile[n] for n in ("loopback_rtt_s", "recv_base_s", "send_base_s", "parse_s", "io_overshoot_s"))
        if floor + wl.cpu_us + wl.gil_us + wl.io_us == 0.0:
            # request -> response -> next request all at one instant: simulated time could never advance
            raise ValueError("profile: with zero costs, zero work and no think time a closed-loop request takes "
                             "no time; give the requests work (cpu_us/gil_us/io_us) or a think time")
    if seed is None:
        seed = scenario.seed
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected an integer >= 0, got {seed!r}")
    for name, flag in (("loadgen_on_server_cores", loadgen_on_server_cores), ("detail", detail), ("force", force)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name}: expected True or False, got {flag!r}")
    if isinstance(loadgen_cores, bool) or not isinstance(loadgen_cores, int) or loadgen_cores < 0:
        raise ValueError(f"loadgen_cores: expected an integer >= 0, got {loadgen_cores!r}")
    if loadgen_cores and loadgen_on_server_cores:
        raise ValueError("loadgen_cores: the load generator either shares the server's cores or has its own")
    if not force:
        estimate_cost(scenario, profile).check()
    result, stats = _run(scenario, profile, seed, bool(loadgen_on_server_cores), service, loadgen_cores)
    return (result, stats) if detail else result


@dataclass(frozen=True)
class SimCost:
    """What a run is estimated to cost the simulator (estimate_cost), and which field drives it."""

    requests: float  # simulated requests: arrivals (open loop) or the throughput bound x time (closed)
    rate_rps: float  # the rate behind `requests`
    slices: float  # scheduler time slices and forced GIL drops over the run
    connections: int  # load connections, each held for the whole run
    window_s: float  # warmup_s + duration_s
    open_loop: bool

    def check(self) -> None:
        """ValueError naming the field that makes the run too costly, with the bound."""
        hint = "or pass force=True (serverlab simulate --force) to run it anyway"
        if self.connections > MAX_SIM_CONNECTIONS:
            raise ValueError(f"connections: {self.connections:,} load connections is over the simulator's bound of "
                             f"{MAX_SIM_CONNECTIONS:,} (MAX_SIM_CONNECTIONS, ~0.6 KB each for the whole run); "
                             f"use simkit.analytic for this load, {hint}")
        if self.requests + self.slices <= MAX_SIM_REQUESTS:
            return
        if self.slices > self.requests:
            raise ValueError(f"time_slice_s: the profile's time slice and GIL switch interval make about "
                             f"{self.slices:.3g} scheduler slices in {self.window_s:g} s, over the simulator's bound "
                             f"of {MAX_SIM_REQUESTS:.3g} (MAX_SIM_REQUESTS) simulated requests + slices; use a "
                             f"profile with a realistic time_slice_s / gil_switch_interval_s (ms), {hint}")
        field = "rate_rps" if self.open_loop else "duration_s"
        what = "arrivals at" if self.open_loop else "requests at up to"
        raise ValueError(f"{field}: {self.window_s:g} s (warmup_s + duration_s) of {what} {self.rate_rps:,.6g}/s is "
                         f"about {self.requests:.3g} simulated requests, over the simulator's bound of "
                         f"{MAX_SIM_REQUESTS:.3g} (MAX_SIM_REQUESTS, minutes of CPU); shorten the window, lower "
                         f"the load, {hint}")


def estimate_cost(scenario: Scenario, profile: CostProfile) -> SimCost:
    """The run's cost, estimated up front from the workload and the profile (see the module docstring)."""
    from simkit.analytic import throughput_bound
    from simkit.costs import demands

    wl = scenario.workload
    window = wl.warmup_s + wl.duration_s
    served = throughput_bound(scenario, profile)  # open loop: min(rate, capacity); closed: N / cycle, capped
    rate = float(wl.rate_rps) if wl.mode == "open" else served
    busy = min(float(scenario.hardware.cores), served * demands(scenario, profile).cpu_s)  # cores busy
    per_s = sum(1.0 / profile[n] for n in ("time_slice_s", "gil_switch_interval_s") if profile[n] > 0)
    return SimCost(requests=rate * window, rate_rps=rate, slices=busy * window * per_s, connections=wl.connections,
                   window_s=window, open_loop=wl.mode == "open")


def _run(scenario: Scenario, profile: CostProfile, seed: int, loadgen_on_server_cores: bool, service: str,
         loadgen_cores: int = 0):
    import importlib
    import random

    import numpy as np
    import simpy

    from simkit.clients import Clients
    from simkit.events import at, run
    from simkit.machine import Machine, StartupFailure

    wl = scenario.workload
    w0 = wl.warmup_s
    w1 = wl.warmup_s + wl.duration_s
    env = simpy.Environment()
    rng = random.Random(seed)
    module = importlib.import_module(registry.get(scenario.model.name).sim_module_name)
    model = module.Model(env, scenario, profile, rng)
    machine = Machine(env, profile, scenario.hardware, w0, w1, model.on_send, seed)
    lg_machine = machine if loadgen_on_server_cores else None
    if loadgen_cores:
        # its own CPUs: only their capacity counts (it polls for its sends; no wake-up costs)
        lg_machine = Machine(env, profile, replace(scenario.hardware, cores=loadgen_cores), w0, w1, None, seed)
        lg_machine.wake_s = lg_machine.idle_wake_s = lg_machine.slow_p = 0.0
    clients = Clients(env, model, scenario, profile, rng, w0, w1, service, lg_machine,
                      loadgen_shared=bool(loadgen_on_server_cores))
    model.attach(machine, clients)
    try:
        model.build()
    except StartupFailure:
        # The server cannot start within the limits: no request is ever issued against it; the
        # Result carries the failure and the ledger's peaks.
        pass
    else:
        machine.starting = False
        model.place_idle(wl.idle_connections)
        clients.start()
    sampled = [0, 0, 0]

    def sample(_value) -> None:
        led = machine.ledger
        sampled[0] = max(sampled[0], led.threads)
        sampled[1] = max(sampled[1], led.rss)
        sampled[2] = max(sampled[2], led.fds)
        at(env, SAMPLE_S, sample)

    at(env, w0, sample)
    run(env, w1)
    machine.finish()
    if loadgen_cores:
        lg_machine.finish()
    loadgen_busy = machine.loadgen_busy + (lg_machine.loadgen_busy if loadgen_cores else 0.0)
    in_flight = clients.finish(w1)

    ledger = machine.ledger
    duration = wl.duration_s
    lat = np.asarray(clients.latencies, dtype=float)
    if lat.size:
        p50, p90, p99, p999 = np.percentile(lat, PERCENTILES)
        mean = float(lat.mean())
    else:
        mean = p50 = p90 = p99 = p999 = float("nan")
    lat_w = np.asarray(clients.latencies_in_window, dtype=float)
    pct_w = tuple(float(v) for v in np.percentile(lat_w, PERCENTILES)) if lat_w.size else ()
    core_busy = tuple(c.busy for c in machine.cores)
    failure = ledger.failure
    if not failure and model.window_drops > 0:
        failure = "backlog"  # SYNs dropped inside the window (drops while clients connect at start don't count)
    result = Result(
        scenario=scenario,
        source="sim",
        profile=profile.label,
        throughput_rps=clients.completed / duration,
        latency_mean_s=mean,
        latency_p50_s=float(p50),
        latency_p90_s=float(p90),
        latency_p99_s=float(p99),
        latency_p999_s=float(p999),
        completed=clients.completed,
        errors_refused=clients.err_refused,
        errors_timeout=clients.err_timeout,
        errors_reset=clients.err_reset,
        in_flight=in_flight,
        cpu_util=min(sum(core_busy) / duration, float(scenario.hardware.cores)),
        ctx_switches_per_s=machine.ctx_count / duration,
        threads_peak=ledger.threads_peak,
        processes_peak=ledger.procs_peak,
        rss_peak_bytes=ledger.rss_peak,
        fds_peak=ledger.fds_peak,
        loadgen_cpu_util=loadgen_busy / duration,
        work_cpu_scale=profile["cpu_work_scale"] if scenario.workload.cpu_us > 0 else math.nan,
        work_gil_scale=profile["gil_work_scale"] if scenario.workload.gil_us > 0 else math.nan,
        failure=failure,
    )
    stats = SimStats(
        issued=clients.issued,
        completed=clients.completed,
        failed=clients.err_refused + clients.err_timeout + clients.err_reset,
        in_flight=in_flight,
        mean_in_system=clients.area / duration,
        core_busy_s=core_busy,
        window_s=duration,
        loadgen_busy_s=loadgen_busy,
        gil_busy_s=tuple(p.gil_busy for p in machine.procs if p.gil_tracked),
        ctx_switches=machine.ctx_count,
        events=next(env._eid),
        requests_simulated=clients.total,
        completed_in_window=int(lat_w.size),
        latency_mean_in_window_s=float(lat_w.mean()) if lat_w.size else float("nan"),
        latency_percentiles_in_window_s=pct_w,
        threads_sampled_peak=sampled[0],
        rss_sampled_peak_bytes=sampled[1],
        fds_sampled_peak=sampled[2],
    )
    return result, stats
