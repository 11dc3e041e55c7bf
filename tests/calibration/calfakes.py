"""Stand-ins for realkit.measure and simkit.simulate: a closed-form closed-loop queue whose answer
depends visibly on parse_s, gil_handoff_s and client_cpu_per_request_s, cheap and deterministic.
They test the calibration machinery (retries, records, fit, table), not the real halves."""

from __future__ import annotations

import math
import random

from simkit.profile import CostProfile
from simkit.result import Result
from simkit.scenario import Scenario

THREADED = ("m2_thread_per_conn", "m4_reactor_workers", "m5_multi_reactor", "m7_reactor_spawn")


def fake_simulate(scenario: Scenario, profile: CostProfile | None = None, *, seed: int | None = None,
                  loadgen_on_server_cores: bool = False, source: str = "sim") -> Result:
    p = profile or CostProfile.default()
    w, m = scenario.workload, scenario.model
    handoffs = 2.0 if m.name in THREADED else 0.0
    gil_s = p["parse_s"] + w.gil_us * 1e-6 + handoffs * p["gil_handoff_s"]
    cpu_s = w.cpu_us * 1e-6
    cores = scenario.hardware.cores
    parallel = m.processes if m.name == "m6_prefork" else (1 if m.name in ("m1_iterative", "m3_reactor") else 8)
    # Capacity: the GIL (per process) and the cores; the client takes its share of the cores.
    client = p["client_cpu_per_request_s"] if loadgen_on_server_cores else 0.0
    procs = m.processes if m.name == "m6_prefork" else 1
    cap = min(procs / gil_s, min(parallel, cores) / (gil_s + cpu_s + client))
    if m.name in ("m1_iterative", "m3_reactor"):
        cap = min(cap, 1.0 / (gil_s + cpu_s + w.io_us * 1e-6))
    cycle = gil_s + cpu_s + w.io_us * 1e-6 + p["loopback_rtt_s"]
    x = min(w.connections / cycle, cap)
    lat = w.connections / x
    return Result(scenario=scenario, source=source, throughput_rps=x, latency_mean_s=lat,
                  latency_p50_s=0.9 * lat, latency_p90_s=1.5 * lat, latency_p99_s=1.5 * lat + 10 * gil_s,
                  latency_p999_s=2.5 * lat, completed=max(1, int(x * w.duration_s)),
                  cpu_util=min(cores, x * (gil_s + cpu_s)), threads_peak=1 + (w.connections if m.name == "m2_thread_per_conn" else 0),
                  processes_peak=procs, rss_peak_bytes=int(p["rss_process_bytes"] + w.connections * p["rss_conn_bytes"]),
                  fds_peak=w.connections + 5,
                  loadgen_cpu_util=x * p["client_cpu_per_request_s"])


class FakeMeasure:
    """'Real' runs from fake_simulate under known true parameters, with multiplicative noise;
    `fail` lists scenario predicates whose runs raise every time, `flaky` ones fail once."""

    def __init__(self, truth: CostProfile, noise: float = 0.02, fail=None, flaky=None, seed: int = 7) -> None:
        self.truth = truth
        self.noise = noise
        self.fail = fail or (lambda s: False)
        self.flaky = flaky or (lambda s: False)
        self.rng = random.Random(seed)
        self.calls: list[Scenario] = []
        self._flaked: set = set()

    def __call__(self, scenario: Scenario) -> Result:
        self.calls.append(scenario)
        if self.fail(scenario):
            raise RuntimeError("server did not start (fake)")
        key = repr(scenario)
        if self.flaky(scenario) and key not in self._flaked:
            self._flaked.add(key)
            raise RuntimeError("load generator error (fake, first attempt only)")
        shared = scenario.hardware.cores >= 2
        r = fake_simulate(scenario, self.truth, loadgen_on_server_cores=shared, source="real")

        def jig(v: float) -> float:
            return v * math.exp(self.rng.gauss(0.0, self.noise)) if math.isfinite(v) else v

        from dataclasses import replace

        return replace(r, throughput_rps=jig(r.throughput_rps), latency_p50_s=jig(r.latency_p50_s),
                       latency_p99_s=jig(r.latency_p99_s))
