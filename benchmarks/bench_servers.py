"""Benchmark, not a test: requests/s of each real server under wrk (50 connections, zero work, GET /),
side by side with nginx (one worker) measured in the same run, as a ratio.

The server (or nginx, master and worker) is pinned to one core and wrk to another, so the figure is
"what one core of this server does". Each model is measured in rounds, an nginx run
right before each model run, and the ratio is the median of the per-round ratios, so the drift of a
shared box hits both sides of a ratio alike.
Without wrk the script says so and exits; without nginx it prints absolute figures only.

    .venv/bin/python -m benchmarks.bench_servers [--duration 5] [--models 1,3,5] [--connections 50]

Target: a single-thread reactor (one event loop doing the work inline) >= 0.85x nginx.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.benchkit import Nginx, run_wrk
from realkit.servers import server_argument
from simkit import registry
from simkit.scenario import ModelSpec, available_cores

ROOT = Path(__file__).resolve().parent.parent


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its children."""
    import psutil

    total = 0.0
    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return total


def measure(pid: int, url: str, connections: int, duration_s: float, wrk_cpus: set[int] | None):
    """-> (requests/s, errors, server CPU in cores) over one wrk run. The CPU figure tells whether the
    server was the bottleneck (near 1 core) or the client was (well under 1)."""
    c0, t0 = tree_cpu_s(pid), time.monotonic()
    res = run_wrk(url, connections, duration_s, wrk_cpus)
    return res["rps"], int(res["errors"]), (tree_cpu_s(pid) - c0) / (time.monotonic() - t0)


def start_model(name: str, server_core: int | None) -> tuple[subprocess.Popen, str]:
    cores = [server_core] if server_core is not None else None
    cmd = [sys.executable, "-m", "realkit.servers", server_argument(ModelSpec.for_model(name), cores=cores)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return proc, f"http://127.0.0.1:{int(proc.stdout.readline())}/"


def stop_model(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=50)
    numbers = [a.number for a in registry.architectures()]
    parser.add_argument("--models", default=f"{min(numbers)}-{max(numbers)}",
                        help=f"model numbers, e.g. 3 or 1,3,5 or 1-7 ({registry.model_help()})")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (nginx run + model run) per model")
    args = parser.parse_args(argv)
    models = []
    for part in args.models.split(","):
        lo, _, hi = part.partition("-")
        try:  # a range takes the registered numbers in it; a single number must be registered
            models.extend(registry.resolve(n) for n in range(int(lo), int(hi or lo) + 1) if not hi or n in numbers)
        except ValueError as exc:
            parser.error(f"--models: {exc}")
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk): nothing to measure")
        return 0
    cores = sorted(os.sched_getaffinity(0))
    if available_cores() >= 2:
        server_core, wrk_cpus = cores[0], {cores[1]}
        pinning = f"server on core {server_core}, wrk on core {cores[1]}"
    else:
        server_core, wrk_cpus = None, None
        pinning = "not pinned (fewer than 2 cores)"
    have_nginx = shutil.which("nginx") is not None
    print(f"# bench_servers: wrk -t1 -c{args.connections} -d{args.duration:g}s GET /, {pinning}")

    # Each model is measured in `repeats` rounds, each round an nginx run right before the model's run,
    # and the ratio is the median of the per-round ratios: the box's drift (other jobs come and go)
    # hits both sides of a ratio alike.
    nginx = Nginx(None if server_core is None else {server_core}) if have_nginx else None
    rows = []
    try:
        if nginx:
            run_wrk(nginx.url, args.connections, 1.0, wrk_cpus)  # warm-up
        for name in models:
            proc, url = start_model(name, server_core)
            try:
                run_wrk(url, args.connections, 1.0, wrk_cpus)  # warm-up
                rounds = []
                for _ in range(args.repeats):
                    ref = (
                        measure(nginx.proc.pid, nginx.url, args.connections, args.duration, wrk_cpus)
                        if nginx
                        else (None, 0, None)
                    )
                    rounds.append((ref, measure(proc.pid, url, args.connections, args.duration, wrk_cpus)))
            finally:
                stop_model(proc)
            rows.append((name, rounds))
            mine = statistics.median(r[1][0] for r in rounds)
            line = f"{name}: {mine:,.0f} req/s"
            if nginx:
                line += f", nginx {statistics.median(r[0][0] for r in rounds):,.0f} req/s"
            print(line, flush=True)
    finally:
        if nginx:
            nginx.close()

    print()
    # Two ratios: requests/s (the target's definition), and requests per CPU-second of the server, which
    # stays meaningful when a shared box gives neither server its whole core.
    print(
        "| server | requests/s | server CPU (cores) | requests per CPU-s | nginx requests/s | nginx CPU (cores) "
        "| ratio to nginx (req/s) | ratio to nginx (per CPU-s) | wrk errors |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, rounds in rows:
        mine = statistics.median(r[1][0] for r in rounds)
        cpu = statistics.median(r[1][2] for r in rounds)
        per_cpu = statistics.median(r[1][0] / max(r[1][2], 1e-9) for r in rounds)
        errors = sum(r[1][1] for r in rounds)
        cells = [name, f"{mine:,.0f}", f"{cpu:.2f}", f"{per_cpu:,.0f}"]
        if nginx:
            ref = statistics.median(r[0][0] for r in rounds)
            ref_cpu = statistics.median(r[0][2] for r in rounds)
            ratio = statistics.median(r[1][0] / r[0][0] for r in rounds)
            eff = statistics.median(
                (r[1][0] / max(r[1][2], 1e-9)) / (r[0][0] / max(r[0][2], 1e-9)) for r in rounds
            )
            cells += [f"{ref:,.0f}", f"{ref_cpu:.2f}", f"{ratio:.2f}", f"{eff:.2f}"]
        else:
            cells += ["n/a"] * 4
        print("| " + " | ".join(cells + [str(errors)]) + " |")
    print()
    print(notes(models, args.connections))
    return 0


def notes(models: list[str], connections: int) -> str:
    """How to read the table, for these models (their defaults and traits from the registry)."""
    archs = [registry.get(m) for m in models]
    specs = {a.name: ModelSpec.for_model(a.name) for a in archs}
    knobs = ", ".join(a.describe(specs[a.name]) for a in archs if a.knobs)
    lines = [f"Models at their defaults ({knobs or 'no knobs'})."]
    one_at_a_time = [a.short for a in archs if a.one_connection_at_a_time]
    if one_at_a_time:
        lines.append(f"{', '.join(one_at_a_time)} serve(s) one keep-alive connection at a time: the other wrk "
                     "connections wait in the backlog all run long (the model, not a bug).")
    lines.append("Server CPU well under 1 core means the server did not get its core (a busy box) or was not the "
                 "bottleneck (wrk was); then requests per CPU-second is the fairer comparison.")
    threaded = [a.short for a in archs if a.threads_peak(specs[a.name], connections, 1.0) > a.processes(specs[a.name]) + 1]
    if threaded:
        lines.append(f"Models running several threads ({', '.join(threaded)}) can take more than their share of "
                     "a contended core, which flatters their requests/s.")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
