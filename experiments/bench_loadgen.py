"""Benchmark (not a test): our load generator against wrk, on nginx with one worker, in one run.

Same server, same connections, same duration, same pinning (nginx on the first CPU, both generators on
the others when the box has them). Prints requests/s side by side and their ratio (target >= 0.8), with
nginx's CPU during each run: if nginx is saturated in both runs, the ratio measures nginx, not the
generators, and the line says so.

    .venv/bin/python experiments/bench_loadgen.py [--connections 50] [--duration 5] [--rounds 1]

Skips (exit 0, with a message) when wrk or nginx is not installed.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from realkit.loadgen import LoadSpec, run_load
from realkit.monitor import ProcessTreeMonitor

NGINX_CONF = """
worker_processes 1;
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 65;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{ default_type text/plain; return 200 "{body}"; }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nginx did not listen on {port}")


def parse_wrk(out: str) -> dict[str, float]:
    m = re.search(r"Requests/sec:\s*([\d.]+)", out)
    if not m:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    res = {"rps": float(m.group(1))}
    m = re.search(r"(\d+) requests in", out)
    if m:
        res["requests"] = float(m.group(1))
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
    for pct in ("50", "99"):
        m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if m:
            res[f"p{pct}_s"] = float(m.group(1)) * units[m.group(2)]
    return res


def run_wrk(url: str, connections: int, duration_s: float, cpus: set[int]) -> dict[str, float]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration_s:g}s", "--latency", url]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 60,
                         preexec_fn=lambda: os.sched_setaffinity(0, cpus), check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = parse_wrk(out)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    res["cpu"] = cpu_s / duration_s
    res["cpu_us_per_req"] = cpu_s / res["requests"] * 1e6 if res.get("requests") else float("nan")
    return res


def run_ours(url: str, connections: int, duration_s: float, cpus: set[int]) -> dict[str, float]:
    report = run_load(LoadSpec(url=url, connections=connections, duration_s=duration_s, processes=1,
                               cpus=tuple(sorted(cpus))))
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
    with tempfile.TemporaryDirectory(prefix="bench-nginx-") as tmp:
        port = free_port()
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=tmp, port=port, body="x" * 64))
        proc = subprocess.Popen([nginx, "-c", str(conf), "-p", tmp], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                preexec_fn=lambda: os.sched_setaffinity(0, server_cpus))
        try:
            wait_listening(port)
            url = f"http://127.0.0.1:{port}/"
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
        finally:
            proc.send_signal(signal.SIGQUIT)  # graceful shutdown
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
