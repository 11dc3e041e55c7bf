"""The open-loop load generator's send accuracy: how late it sends arrivals (mean and max lag, sends
later than 2 ms) against a 1-core server (the single reactor unless --model), the generator on the
other CPU (its own) or on the server's (shared: simkit.sendtimer.SHARED_TIMER_RESOLUTION_S), at a few
rates; and a closed loop with think time, whose think timer should last what it says.

    .venv/bin/python -m benchmarks.bench_send_lag [--rates 300,1300,2000] [--duration 2] [--shared]

Speed figures, not tests: run it on a quiet box, twice.
"""

from __future__ import annotations

import argparse
import os
import time

from realkit.loadgen import run_load
from realkit.runner import ServerProcess, load_spec_for, plan_cpus
from simkit.scenario import Hardware, ModelSpec, Scenario, Workload


def _stat() -> tuple[float, float]:
    """(CPU seconds the box spent busy, of which steal) since boot, from /proc/stat."""
    v = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    tck = os.sysconf("SC_CLK_TCK")
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / tck, v[7] / tck


def _own_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _row(label: str, scenario: Scenario, shared: bool) -> None:
    plan = plan_cpus(1)
    (busy0, steal0), own0, t0 = _stat(), _own_s(), time.monotonic()
    server = ServerProcess(scenario, plan.server_cpus)
    try:
        port = server.start()
        cpus = plan.server_cpus if shared else plan.loadgen_cpus
        r = run_load(load_spec_for(scenario, port, cpus, 1, shared=shared))
    finally:
        server.stop()
        server.close()
    (busy1, steal1), own1, wall = _stat(), _own_s(), time.monotonic() - t0
    others = max(0.0, (busy1 - busy0) - (own1 - own0)) / wall
    w = scenario.workload
    extra = ""
    if w.mode == "closed" and w.think_s:
        # Each client's cycle is think + latency: the think time actually slept is the rest.
        cycle = w.connections / max(r.throughput_rps, 1e-9)
        extra = f" think slept {(cycle - r.histogram.mean_s) * 1e3:6.3f} ms (asked {w.think_s * 1e3:g})"
    print(f"{label:34s} {r.throughput_rps:7.0f} req/s  lag mean {r.send_lag_mean_s * 1e3:6.3f} ms  "
          f"max {r.max_send_lag_s * 1e3:6.2f} ms  late {r.late_sends:4d}/{r.issued:5d}  "
          f"p50 {r.latency_s(50) * 1e3:5.2f} ms  p99 {r.latency_s(99) * 1e3:5.2f} ms  "
          f"gen cpu {r.loadgen_cpu_util:4.2f}  box others {others:4.2f} steal {(steal1 - steal0) / wall:4.2f}{extra}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="3", help="the server (number or name; default 3, the single reactor)")
    ap.add_argument("--rates", default="300,1300,2000")
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--shared", action="store_true", help="also run with the generator on the server's CPU")
    ap.add_argument("--no-think", action="store_true", help="skip the closed-loop think-time runs")
    args = ap.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("needs 2 CPUs: the server on one, the generator on the other")
    model = ModelSpec.for_model(args.model)
    modes = [False, True] if args.shared else [False]
    for shared in modes:
        where = "shared" if shared else "own cpu"
        for rate in (float(x) for x in args.rates.split(",")):
            w = Workload(connections=20, mode="open", rate_rps=rate, arrival="poisson", cpu_us=200, gil_us=20,
                         duration_s=args.duration, warmup_s=0.7)
            _row(f"open {rate:5.0f}/s, {where}", Scenario(model=model, workload=w, hardware=_hw()), shared)
        if not args.no_think:
            for conns in (1, 10):
                w = Workload(connections=conns, think_s=0.02, cpu_us=0, gil_us=0, duration_s=args.duration,
                             warmup_s=0.7)
                _row(f"closed {conns} x think 20 ms, {where}", Scenario(model=model, workload=w, hardware=_hw()),
                     shared)


def _hw() -> Hardware:
    return Hardware(cores=1)


if __name__ == "__main__":
    main()
