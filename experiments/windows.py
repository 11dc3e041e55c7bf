"""Simulated windows: how long to simulate each point of a sweep, and which points to leave to
simkit.analytic because simulating them would cost too much. Pure functions, no I/O.

The steady-state estimate is simkit.analytic (MVA for a closed loop), capped by its throughput
bound, and the per-request demands are simkit.costs.demands, so window sizing prices a request
exactly as the simulator and the analytic model do.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from simkit.analytic import analytic, throughput_bound
from simkit.clients import connect_ramp_s
from simkit.costs import demands
from simkit.profile import CostProfile
from simkit.scenario import Scenario

# Past this many clients the steady-state estimate uses the analytic model's large-population fixed
# point instead of the MVA recursion (O(clients) steps): a window needs R to a few %, not exactly.
ESTIMATE_MVA_LIMIT = 2000


@dataclass(frozen=True)
class WindowPolicy:
    """How long to simulate each point, and which points are too costly to simulate.

    A discrete-event simulator pays per simulated request and per connection, so a fixed window is
    wasteful at low load and unaffordable at high load. Per point we estimate the steady state with
    simkit.analytic (throughput X and mean response R from MVA: R = N / X - think_s in a closed
    loop, so a saturated loop's queueing is in R), take the CPU and io demands per request from
    simkit.costs.demands, then:
      warmup_s   = max(clamp(ramp + think_s + R + 3 x (cpu + io), min_warmup_s, max_warmup_s), ramp + R),
                   where ramp = simkit.clients.connect_ramp_s (the clients' arrivals at connect_rate_cps,
                   or one connect per client_cpu_per_request_s): the window opens after the last client
                   has connected and waited one loaded response, so queues are at their steady length
                   (max_warmup_s never cuts that short);
      duration_s = max(clamp(max(target_requests / X, 2 x (think_s + R)), min_duration_s, max_duration_s),
                   steady_cycles x R) - enough completions for a p99, every client cycles twice, and the
                   requests issued in the window's last R (still in flight at its end, so left out of
                   the counts) are a small share: throughput reads low by about R / duration_s;
      cost       = X x (warmup_s + duration_s) + 2 x connections  (simulated requests + set-ups).
    Points whose cost exceeds max_sim_requests go to the analytic model instead (source "analytic"):
    a saturated point whose steady state is too long to simulate is answered there, not simulated
    out of steady state.
    """

    target_requests: int = 2000
    min_duration_s: float = 0.2
    max_duration_s: float = 5.0
    min_warmup_s: float = 0.05
    max_warmup_s: float = 5.0
    max_sim_requests: int = 40_000
    steady_cycles: float = 20.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{f.name}: must be a number > 0, got {value!r}")
        if self.min_duration_s > self.max_duration_s:
            raise ValueError(f"min_duration_s: {self.min_duration_s} exceeds max_duration_s {self.max_duration_s}")
        if self.min_warmup_s > self.max_warmup_s:
            raise ValueError(f"min_warmup_s: {self.min_warmup_s} exceeds max_warmup_s {self.max_warmup_s}")


def plan_window(scenario: Scenario, profile: Any, policy: WindowPolicy) -> tuple[Scenario, float]:
    """The scenario with its simulated window set by `policy`, and the estimated simulation cost
    (in simulated requests + connection set-ups) of running it."""
    wl = scenario.workload
    x, response = steady_state(scenario, profile)
    d = demands(scenario, profile)
    busy = d.cpu_s + d.io_s
    ramp = connect_ramp_s(wl, profile)
    settled = ramp + response  # the last client has connected and seen one loaded response
    warmup = min(max(ramp + wl.think_s + response + 3 * busy, policy.min_warmup_s), policy.max_warmup_s)
    warmup = max(warmup, settled)
    cycle = wl.think_s + max(response, busy)
    duration = min(max(policy.target_requests / x, 2 * cycle, policy.min_duration_s), policy.max_duration_s)
    duration = max(duration, policy.steady_cycles * response)
    cost = x * (warmup + duration) + 2.0 * (wl.connections + wl.idle_connections)
    return scenario.replace(warmup_s=round(warmup, 4), duration_s=round(duration, 4)), cost


def steady_state(scenario: Scenario, profile: Any) -> tuple[float, float]:
    """(throughput X in req/s, mean response R in s) the point settles at: simkit.analytic's MVA
    (closed loop) or Jackson network (open loop). Where it has no answer (an open loop past
    capacity, whose queue only grows) R is the unqueued latency and X the throughput bound."""
    x = throughput_bound(scenario, profile)
    d = demands(scenario, profile)
    response = d.cpu_s + d.io_s + d.rtt_s
    if isinstance(profile, CostProfile):
        try:
            r = analytic(scenario, profile, mva_limit=ESTIMATE_MVA_LIMIT)
        except ValueError:  # nothing to queue for (every cost 0): the bound is the answer
            return max(x, 1e-3), response
        if math.isfinite(r.latency_mean_s) and r.throughput_rps > 0:
            x, response = min(x, r.throughput_rps), max(response, r.latency_mean_s)
    return max(x, 1e-3), response


def plan_windows(scenarios: Sequence[Scenario], profile: Any, policy: WindowPolicy) -> tuple[list[Scenario], list[bool]]:
    """Each scenario with its window, and whether it should come from the analytic model instead."""
    planned, to_analytic = [], []
    for sc in scenarios:
        s2, cost = plan_window(sc, profile, policy)
        planned.append(s2)
        to_analytic.append(cost > policy.max_sim_requests)
    return planned, to_analytic
