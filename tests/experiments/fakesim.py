"""A deterministic stand-in for simkit.simulate: closed-loop bottleneck arithmetic, no SimPy.

Just enough mechanism for the experiments tests to see every failure reason: one-thread models,
a GIL that serialises gil_us work in threaded models, blocking io_us work, thread and fd limits,
and a memory ledger. It is NOT the simulator; it only has to be cheap, deterministic and picklable.
"""

from __future__ import annotations

import os

from simkit.result import Result

OVERHEAD_US = 30.0


def fake_simulate(scenario, profile=None, *, seed=None):
    m, hw, wl = scenario.model, scenario.hardware, scenario.workload
    n = wl.connections
    cpu = (wl.cpu_us + wl.gil_us + OVERHEAD_US) * 1e-6  # CPU seconds per request
    gil = (wl.gil_us + OVERHEAD_US * 0.5) * 1e-6
    io = wl.io_us * 1e-6
    threads = {"m1_iterative": 1, "m2_thread_per_conn": n + 1, "m3_reactor": 1, "m4_reactor_workers": 1 + m.pool,
               "m5_multi_reactor": 1 + m.threads, "m6_prefork": m.processes, "m7_reactor_spawn": 1 + m.threads,
               "m8_proactor": m.threads}[m.name]
    if m.name in ("m1_iterative", "m3_reactor"):
        x_max = 1.0 / (cpu + io)
    elif m.name == "m6_prefork":
        x_max = min(hw.cores, m.processes) / (cpu + io / max(1, m.processes))
    else:
        x_max = min(hw.cores / cpu, 1.0 / gil if m.gil else float("inf"))
        if m.name == "m4_reactor_workers":
            x_max = min(x_max, m.pool / (cpu + io))
    x = min(n / (cpu + io), x_max)
    mean = n / x
    procs = m.processes if m.name == "m6_prefork" else 1
    rss = procs * 20 * 2**20 + threads * 64 * 2**10 + n * 7 * 2**10
    failure = ""
    if threads > hw.threads_max:
        failure = "threads_max"
    elif n / procs > hw.fd_limit:
        failure = "fd_limit"
    elif rss > hw.memory_bytes:
        failure = "memory"
    refused = 0
    if m.name == "m1_iterative" and n > min(m.backlog, hw.somaxconn) + 1:
        failure, refused = failure or "backlog", n - min(m.backlog, hw.somaxconn) - 1
    completed = int(x * wl.duration_s)
    return Result(scenario=scenario, source="sim", throughput_rps=x, latency_mean_s=mean, latency_p50_s=mean * 0.9,
                  latency_p90_s=mean * 1.8, latency_p99_s=mean * 3.0, latency_p999_s=mean * 4.0, completed=completed,
                  errors_refused=refused, cpu_util=min(hw.cores, x * cpu), threads_peak=min(threads, hw.threads_max),
                  processes_peak=procs, rss_peak_bytes=rss, fds_peak=min(n + 5, hw.fd_limit), failure=failure)


def fake_analytic(scenario, profile=None):
    r = fake_simulate(scenario, profile)
    from dataclasses import replace

    return replace(r, source="analytic")


def crashing_simulate(scenario, profile=None, *, seed=None):
    """Kills its worker process on connections == 13: a worker that dies mid-sweep."""
    if scenario.workload.connections == 13:
        os._exit(3)
    return fake_simulate(scenario, profile)


def raising_simulate(scenario, profile=None, *, seed=None):
    if scenario.workload.connections == 13:
        raise RuntimeError("simulated model bug")
    return fake_simulate(scenario, profile)
