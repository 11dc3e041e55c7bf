"""Each architecture as a small queueing network: a fast cross-check of the simulator and a tool for
coarse sweeps. Pure functions, no SimPy.

`analytic(scenario, profile) -> Result` (source "analytic") prices one request with simkit.costs,
builds the architecture's station network (simkit.registry: each entry's `stations`), and solves
it with simkit.queueing. It is a coarse, product-form approximation: it ignores the GIL convoy
effect, scheduling noise and batching in epoll, and charges each syscall once per request. Use it
to sanity-check the simulator and to prune sweeps, never as the answer.

The queueing formulas (mm1, mmc, mva, usl, ...) live in simkit.queueing and are re-exported here.
"""

from __future__ import annotations

import math

from simkit import registry
from simkit.costs import Demands, demands, gil_acquisitions
from simkit.profile import CostProfile, resolve_profile
from simkit.queueing import (  # noqa: F401 - re-exported: the formulas' historical home
    LARGE_POPULATION,
    MVAResult,
    QueueMetrics,
    Station,
    USLFit,
    closed_large_population,
    erlang_c,
    fit_usl,
    mm1,
    mmc,
    mva,
    mva_multiserver,
    mva_recursive,
    open_network,
    usl,
)
from simkit.result import Result
from simkit.scenario import Scenario

__all__ = ["Demands", "demands", "model_stations", "throughput_bound", "analytic"]


def model_stations(scenario: Scenario, profile: CostProfile | None = None) -> list[Station]:
    """The coarse station network of one scenario: its architecture's stations (registry) plus the
    client's round trip as a delay.

    The GIL is one server per multi-threaded Python process (gil=True), whose demand adds a hand-off
    (gil_handoff_s, + wakeup_s on more than one core) per GIL acquisition of a request, also charged
    to the cores; m6's processes each have their own. "cores" appears where more threads can run
    than there are cores. Stations whose time is also time on another station (a loop's CPU on a
    core) carry it in overlap_s.
    """
    profile = profile or CostProfile.default()
    d = demands(scenario, profile)
    cores = scenario.hardware.cores
    # Each GIL acquisition of a request may be a hand-off from a waiting thread: gil_handoff_s, and
    # on more than one core the new holder is woken on another core (wakeup_s) with the GIL held.
    per = profile["gil_handoff_s"] + (profile["wakeup_s"] if cores > 1 else 0.0)
    handoff = gil_acquisitions(scenario.workload) * per
    st = list(registry.get(scenario.model.name).stations(scenario, profile, d, handoff))
    if d.rtt_s:
        st.append(Station("network", d.rtt_s, None))
    return st


def throughput_bound(scenario: Scenario, profile: CostProfile | None = None) -> float:
    """A bottleneck upper bound on throughput (req/s): the clients' own rate (closed loop: N over
    think time plus an unqueued request; open loop: the arrival rate) and every queueing station's
    servers / demand. No queueing: it sizes simulated windows and prices points, never a result."""
    profile = profile or CostProfile.default()
    w = scenario.workload
    stations = model_stations(scenario, profile)
    if w.mode == "open":
        bound = float(w.rate_rps)
    else:
        d = demands(scenario, profile)
        bound = w.connections / (w.think_s + d.cpu_s + d.io_s + d.rtt_s)
    for s in stations:
        if s.servers is not None and s.demand_s > 0:
            bound = min(bound, s.servers / s.demand_s)
    return max(bound, 1e-3)


def _peaks(scenario: Scenario, profile: CostProfile, busy: float) -> dict[str, int]:
    arch = registry.get(scenario.model.name)
    m, w = scenario.model, scenario.workload
    conns = w.connections + w.idle_connections
    processes = arch.processes(m)
    threads = arch.threads_peak(m, conns, busy)
    rss = (
        profile["rss_process_bytes"] + (processes - 1) * profile["rss_worker_bytes"]  # workers are forked
        + threads * profile["rss_thread_bytes"]
        + conns * profile["rss_conn_bytes"]
    )
    return {"threads_peak": threads, "processes_peak": processes, "rss_peak_bytes": int(rss),
            "fds_peak": conns + 4 * processes}


def _failure(scenario: Scenario, profile: CostProfile, peaks: dict[str, int]) -> str:
    m, hw, w = scenario.model, scenario.hardware, scenario.workload
    if peaks["threads_peak"] > hw.threads_max:
        return "threads_max"
    kernel = (w.connections + w.idle_connections) * profile["kernel_bytes_per_socket"]  # not in RSS, in memory
    if peaks["rss_peak_bytes"] + kernel > hw.memory_bytes:
        return "memory"
    per_process = math.ceil((w.connections + w.idle_connections) / registry.get(m.name).connection_processes(m))
    if per_process + 4 > hw.fd_limit:
        return "fd_limit"
    return ""


def analytic(scenario: Scenario, profile: CostProfile | None = None, *,
             mva_limit: int = LARGE_POPULATION) -> Result:
    """A coarse Result for one scenario from the station network of `model_stations`.

    Closed loop: Seidmann's MVA (mva_recursive) up to `mva_limit` clients (LARGE_POPULATION), the large-
    population fixed point beyond (microseconds instead of O(clients) steps: a caller that only sizes
    something from the answer may lower the limit); mean latency is N/X - think (Little). Open loop: a
    Jackson network of M/M/c stations. Open-loop quantiles are the busiest station's exact M/M/c
    quantile plus the other stations' means (exact for one station); closed-loop quantiles treat the
    queueing delay as exponential on top of the no-wait latency (a rough guide). An open loop at or past
    capacity returns the capacity as throughput, NaN latencies and failure "saturated": a sweep wants a
    row, not an exception. A closed loop past its knee (more clients than capacity x (think + unqueued
    latency)) keeps the surplus standing in the bottleneck's queue: that part of the wait is the same
    for every request, so it shifts the quantiles rather than stretching an exponential tail. A server
    that serves one connection at a time, under keep-alive-forever clients, serves one of them and
    reports the others as timeouts; in an open loop it ignores that a connection holds the thread
    between requests. The GIL convoy is out of reach of any product-form network: thread-per-connection
    models with io work on many cores come out fast.
    """
    if not isinstance(scenario, Scenario):
        raise ValueError(f"scenario: expected a Scenario, got {type(scenario).__name__}")
    if profile is None:
        profile = resolve_profile()  # the one rule: this host's calibrated profile, else the built-in one
    if not isinstance(profile, CostProfile):
        raise ValueError(f"profile: expected a CostProfile, got {type(profile).__name__}")
    w = scenario.workload
    d = demands(scenario, profile)
    stations = model_stations(scenario, profile)
    base = d.cpu_s + d.io_s + d.rtt_s  # latency with no queueing anywhere
    timeouts = 0
    standing = 0.0  # closed loop: the wait every request spends behind the clients queued past the knee
    failure = ""
    open_quantiles: dict[float, float] = {}
    arch = registry.get(scenario.model.name)
    if w.mode == "closed":
        clients = w.connections
        think = w.think_s
        if arch.one_connection_at_a_time:
            if w.requests_per_conn is None:
                clients = 1  # keep-alive forever: the first connection holds the only thread
                timeouts = w.connections - 1
            else:
                # Per-request units: the thread station carries the in-session think and RTT.
                k = w.requests_per_conn
                think = w.think_s / k
                stations = [s if s.name != "network" else Station("network", d.rtt_s / k, None) for s in stations]
        if think == 0 and all(s.demand_s == 0 for s in stations):
            raise ValueError("cpu_us: every cost and the work are 0; throughput would be infinite")
        if clients <= mva_limit:
            x = mva_recursive(clients, think, stations).throughput_rps
        else:
            x = closed_large_population(clients, think, stations)
        mean = clients / x - w.think_s
        util = max((x * s.demand_s / s.servers for s in stations if s.servers is not None), default=0.0)
        wait_prob = min(1.0, util)
        # Past the knee N* = capacity x (think + unqueued latency) the extra clients stand in the
        # bottleneck's queue for good: a constant wait, not a random one.
        capacity = min((s.servers / s.demand_s for s in stations if s.servers is not None and s.demand_s > 0),
                       default=math.inf)
        if math.isfinite(capacity):
            standing = max(0.0, (clients - capacity * (think + base)) / x)
    else:
        lam = w.rate_rps
        capacity = min((s.servers / s.demand_s for s in stations if s.servers is not None and s.demand_s > 0),
                       default=math.inf)
        if lam >= capacity:
            failure, x, mean, wait_prob = "saturated", capacity, math.nan, 1.0
        else:
            x = lam
            mean, per = open_network(lam, stations)
            wait_prob = max((q.wait_probability for q in per.values()), default=0.0)
            # Quantiles: the busiest station's exact M/M/c response quantile, the others' means.
            queued = [st for st in stations if st.name in per]
            if queued:
                b = max(queued, key=lambda st: per[st.name].utilisation)
                rest = mean - (per[b.name].response_mean_s - b.overlap_s)
                open_quantiles = {
                    q: rest + per[b.name].response_quantile_s(q, 1.0 / b.demand_s, b.servers) - b.overlap_s
                    for q in (0.5, 0.9, 0.99, 0.999)
                }

    quantiles = {}
    for label, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)):
        excess = mean - base - standing
        if open_quantiles:
            quantiles[label] = max(open_quantiles[q], 0.0)
        elif math.isnan(mean):
            quantiles[label] = math.nan
        elif excess <= 0 or wait_prob <= 0 or 1.0 - q >= wait_prob:
            quantiles[label] = max(base + standing, 0.0) if excess > 0 else mean
        else:
            # Closed loop: the standing wait, then 0 w.p. 1 - pw, else exponential with mean excess / pw.
            quantiles[label] = base + standing + (excess / wait_prob) * math.log(wait_prob / (1.0 - q))

    busy = x * (mean if not math.isnan(mean) else 0.0)
    peaks = _peaks(scenario, profile, busy)
    failure = failure or _failure(scenario, profile, peaks)
    ctx_per_request = arch.ctx_switches_per_request
    return Result(
        scenario=scenario,
        source="analytic",
        profile=profile.label,
        throughput_rps=x,
        latency_mean_s=mean,
        latency_p50_s=quantiles["p50"],
        latency_p90_s=quantiles["p90"],
        latency_p99_s=quantiles["p99"],
        latency_p999_s=quantiles["p999"],
        completed=int(x * w.duration_s),
        errors_timeout=timeouts,
        cpu_util=min(x * d.cpu_s, float(scenario.hardware.cores)),
        ctx_switches_per_s=x * ctx_per_request,
        failure=failure,
        **peaks,
    )
