"""Benchmark (not a test): our load generator against wrk, on nginx with one worker, in one run.

Same server, same connections, same duration, same pinning (nginx on the first CPU, both generators on
the others when the box has them). Prints requests/s side by side and their ratio (target >= 0.8), with
nginx's CPU during each run: if nginx is saturated in both runs, the ratio measures nginx, not the
generators, and the line says so.

    .venv/bin/python -m benchmarks.bench_loadgen [--connections 50] [--duration 5] [--rounds 1]

Skips (exit 0, with a message) when wrk or nginx is not installed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

from benchmarks.benchkit import Nginx, run_wrk
from realkit.loadgen import LoadSpec, run_load
from realkit.monitor import ProcessTreeMonitor
from simkit.scenario import Workload


def run_ours(url: str, connections: int, duration_s: float, cpus: set[int]) -> dict[str, float]:
    # No warm-up and no padding (request_bytes at its floor): what wrk sends.
    workload = Workload(connections=connections, duration_s=duration_s, warmup_s=0.0, request_bytes=16)
    report = run_load(LoadSpec(url=url, workload=workload, processes=1, cpus=tuple(sorted(cpus))))
    if report.errors:
        print(f"  (our generator saw {report.errors} errors)")
    return {"rps": report.throughput_rps, "p50_s": report.latency_s(50), "p99_s": report.latency_s(99),
            "cpu": report.loadgen_cpu_util,
            "cpu_us_per_req": report.loadgen_cpu_s / max(1, report.completed) * 1e6}


def measured(nginx_pid: int, fn, *args) -> tuple[dict[str, float], float]:
    """Run fn, returning its figures and nginx's CPU (cores) meanwhile."""
    with ProcessTreeMonitor(nginx_pid) as mon:
        t0 = time.monotonic()
        res = fn(*args)
        t1 = time.monotonic()
    return res, mon.summary(t0, t1).cpu_util


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=1, help="alternate wrk / ours this many times")
    args = ap.parse_args()
    nginx, wrk = shutil.which("nginx") or "/usr/sbin/nginx", shutil.which("wrk")
    if not (wrk and os.path.exists(nginx)):
        print("bench_loadgen: skipped (needs wrk and nginx: apt-get install -y wrk nginx)")
        return 0
    cpus = sorted(os.sched_getaffinity(0))
    server_cpus = {cpus[0]}
    client_cpus = set(cpus[1:]) or server_cpus
    sharing = "" if len(cpus) > 1 else " (one CPU: generator and nginx share it)"
    with Nginx(server_cpus, body="x" * 64, binary=nginx) as server:
        proc, url = server.proc, server.url
        print(f"nginx 1 worker on CPU {sorted(server_cpus)}, generators on CPUs {sorted(client_cpus)}{sharing}; "
              f"{args.connections} connections, {args.duration:g} s per run")
        run_wrk(url, args.connections, 1.0, client_cpus)  # warm nginx up once, not measured
        rows = []
        for i in range(args.rounds):
            w, w_cpu = measured(proc.pid, run_wrk, url, args.connections, args.duration, client_cpus)
            o, o_cpu = measured(proc.pid, run_ours, url, args.connections, args.duration, client_cpus)
            rows.append((w, w_cpu, o, o_cpu))
            print(f"round {i + 1}: wrk  {w['rps']:>9,.0f} req/s (p50 {w.get('p50_s', float('nan')) * 1e3:.3f} ms, "
                  f"p99 {w.get('p99_s', float('nan')) * 1e3:.3f} ms, nginx cpu {w_cpu:.2f}, "
                  f"generator cpu {w['cpu']:.2f} = {w['cpu_us_per_req']:.1f} us/req)")
            print(f"         ours {o['rps']:>9,.0f} req/s (p50 {o['p50_s'] * 1e3:.3f} ms, "
                  f"p99 {o['p99_s'] * 1e3:.3f} ms, nginx cpu {o_cpu:.2f}, "
                  f"generator cpu {o['cpu']:.2f} = {o['cpu_us_per_req']:.1f} us/req)")
            print(f"         ratio ours/wrk = {o['rps'] / w['rps']:.2f}")
        w_rps = sum(r[0]["rps"] for r in rows) / len(rows)
        o_rps = sum(r[2]["rps"] for r in rows) / len(rows)
        ratio = o_rps / w_rps
        print(f"RESULT wrk {w_rps:,.0f} req/s, ours {o_rps:,.0f} req/s, ratio {ratio:.2f} "
              f"(target >= 0.80: {'met' if ratio >= 0.8 else 'NOT met'})")
        w_us = sum(r[0]["cpu_us_per_req"] for r in rows) / len(rows)
        o_us = sum(r[2]["cpu_us_per_req"] for r in rows) / len(rows)
        print(f"CPU per request: wrk {w_us:.1f} us, ours {o_us:.1f} us: when the generator is the bottleneck "
              f"ours reaches about {w_us / o_us:.2f} of wrk's rate (robust to a busy box, unlike req/s)")
        if min(min(r[1], r[3]) for r in rows) > 0.9:
            print("note: nginx was near a full core in both runs: the ratio is bounded by nginx, not the generators")
    return 0


if __name__ == "__main__":
    sys.exit(main())
