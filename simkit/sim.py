"""simulate(scenario, profile) -> Result: play one Scenario in SimPy with a CostProfile's costs.

Signature (stable; other areas code against it)::

    simulate(scenario, profile=None, *, seed=None, loadgen_on_server_cores=False,
             service="deterministic", detail=False) -> Result | tuple[Result, SimStats]

- profile None -> CostProfile.default() (uncalibrated); profile.warn_if_foreign() is called.
- seed None -> scenario.seed. Same (scenario, profile, seed) -> the same Result, bit for bit.
- loadgen_on_server_cores: the load generator is modelled as one more thread on the server's cores,
  spending profile client_cpu_per_request_s per request; its busy time is Result.loadgen_cpu_util
  (and is NOT part of cpu_util, which is the server's alone).
- service: "deterministic" (each request's cpu_us / gil_us / io_us work lasts exactly that long,
  times the profile's work scales) or "exponential" (each is drawn Exp(mean = that value) from the
  run's seeded RNG): for checking models against M/M/1 and Erlang C.
- detail=True returns (Result, SimStats).

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
- Utilisation: SimStats.core_busy_s[i] is core i's busy time inside W (server threads only, loadgen
  excluded); Result.cpu_util = sum(core_busy_s) / duration_s.
"""

from __future__ import annotations

from dataclasses import dataclass

from simkit.profile import CostProfile
from simkit.result import Result
from simkit.scenario import Scenario

SERVICE_KINDS = ("deterministic", "exponential")


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
    gil_busy_s: tuple[float, ...]  # per process with a tracked GIL: seconds the GIL was held inside W
    ctx_switches: int  # inside W
    events: int  # SimPy events processed over the whole run (cost accounting)
    requests_simulated: int  # every request issued over the whole run (cost accounting)


def simulate(
    scenario: Scenario,
    profile: CostProfile | None = None,
    *,
    seed: int | None = None,
    loadgen_on_server_cores: bool = False,
    service: str = "deterministic",
    detail: bool = False,
):
    """Simulate `scenario`; see the module docstring."""
    if not isinstance(scenario, Scenario):
        raise ValueError(f"scenario: expected a Scenario, got {type(scenario).__name__}")
    if service not in SERVICE_KINDS:
        raise ValueError(f"service: must be one of {', '.join(SERVICE_KINDS)}, got {service!r}")
    if profile is None:
        profile = CostProfile.default()
    if not isinstance(profile, CostProfile):
        raise ValueError(f"profile: expected a CostProfile, got {type(profile).__name__}")
    profile.warn_if_foreign()
    if seed is None:
        seed = scenario.seed
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected an integer >= 0, got {seed!r}")
    result, stats = _run(scenario, profile, seed, bool(loadgen_on_server_cores), service)
    return (result, stats) if detail else result


def _run(scenario, profile, seed, loadgen_on_server_cores, service):
    raise NotImplementedError("simkit.simulate: engine not built yet")
