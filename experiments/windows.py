"""Simulated windows: how long to simulate each point of a sweep, and which points to leave to
simkit.analytic because simulating them would cost too much. Pure functions, no I/O.

The throughput estimate is simkit.analytic.throughput_bound and the per-request demands are
simkit.costs.demands, so window sizing prices a request exactly as the simulator and the analytic
model do.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from simkit.analytic import throughput_bound
from simkit.costs import demands
from simkit.scenario import Scenario


@dataclass(frozen=True)
class WindowPolicy:
    """How long to simulate each point, and which points are too costly to simulate.

    A discrete-event simulator pays per simulated request and per connection, so a fixed window is
    wasteful at low load and unaffordable at high load. Per point we estimate the throughput X with
    simkit.analytic.throughput_bound, take the CPU and io demands per request from
    simkit.costs.demands, then:
      warmup_s   = clamp(ramp + think_s + 3 x (cpu + io), min_warmup_s, max_warmup_s), where
                   ramp = connections x client_cpu_per_request_s (the simulated load generator opens
                   connections one at a time) - so the window starts in steady state;
      duration_s = clamp(max(target_requests / X, 2 x (think_s + cpu + io)), min_duration_s,
                   max_duration_s) - enough completions for a p99, and every client cycles twice;
      cost       = X x (warmup_s + duration_s) + 2 x connections  (simulated requests + set-ups).
    Points whose cost exceeds max_sim_requests go to the analytic model instead (source "analytic").
    """

    target_requests: int = 2000
    min_duration_s: float = 0.2
    max_duration_s: float = 5.0
    min_warmup_s: float = 0.05
    max_warmup_s: float = 5.0
    max_sim_requests: int = 40_000

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
    x = throughput_bound(scenario, profile)
    d = demands(scenario, profile)
    busy = d.cpu_s + d.io_s
    ramp = wl.connections * profile["client_cpu_per_request_s"]
    cycle = wl.think_s + busy
    warmup = min(max(ramp + wl.think_s + 3 * busy, policy.min_warmup_s), policy.max_warmup_s)
    duration = min(max(policy.target_requests / x, 2 * cycle, policy.min_duration_s), policy.max_duration_s)
    cost = x * (warmup + duration) + 2.0 * (wl.connections + wl.idle_connections)
    return scenario.replace(warmup_s=round(warmup, 4), duration_s=round(duration, 4)), cost


def plan_windows(scenarios: Sequence[Scenario], profile: Any, policy: WindowPolicy) -> tuple[list[Scenario], list[bool]]:
    """Each scenario with its window, and whether it should come from the analytic model instead."""
    planned, analytic = [], []
    for sc in scenarios:
        s2, cost = plan_window(sc, profile, policy)
        planned.append(s2)
        analytic.append(cost > policy.max_sim_requests)
    return planned, analytic
