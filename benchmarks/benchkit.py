"""What the real-world benchmarks share: an nginx reference with one worker, and wrk runs, each pinned
to a set of CPUs. Both run on loopback only."""

from __future__ import annotations

import os
import re
import resource
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from realkit.recipes import nginx_conf


def pinned(cpus: set[int] | None):
    """A preexec_fn that pins the child to `cpus` (None: leave it alone)."""
    return (lambda: os.sched_setaffinity(0, cpus)) if cpus else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


class Nginx:
    """nginx, master + one worker pinned to `cpus`, answering every GET with `body`."""

    def __init__(self, cpus: set[int] | None, body: str = "ok\\n", binary: str = "nginx") -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="bench-nginx-")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        conf = Path(self.tmp.name) / "nginx.conf"
        # The project's one nginx.conf; nginx's own listen backlog (511) and 4096 worker connections,
        # the reference these benchmarks have always measured.
        conf.write_text(nginx_conf(self.port, 1, self.tmp.name, body=body, backlog=511, worker_connections=4096))
        self.proc = subprocess.Popen([binary, "-c", str(conf), "-p", self.tmp.name], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=pinned(cpus))
        try:
            wait_port(self.port)
        except RuntimeError:
            self.close()
            raise

    def close(self) -> None:
        self.proc.send_signal(signal.SIGQUIT)  # nginx: graceful stop
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.tmp.cleanup()

    def __enter__(self) -> Nginx:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def parse_wrk(out: str) -> dict[str, float]:
    """wrk --latency output -> rps, requests, errors (socket errors + non-2xx), p50_s, p99_s."""
    m = re.search(r"Requests/sec:\s*([\d.]+)", out)
    if not m:
        raise RuntimeError(f"wrk output not understood:\n{out}")
    res = {"rps": float(m.group(1)), "errors": 0.0}
    m = re.search(r"(\d+) requests in", out)
    if m:
        res["requests"] = float(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        res["errors"] += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        res["errors"] += int(m.group(1))
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
    for pct in ("50", "99"):
        m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if m:
            res[f"p{pct}_s"] = float(m.group(1)) * units[m.group(2)]
    return res


def run_wrk(url: str, connections: int, duration_s: float, cpus: set[int] | None) -> dict[str, float]:
    """One single-threaded wrk run pinned to `cpus`: parse_wrk's figures plus wrk's own CPU
    (`cpu`, in cores) and CPU per request (`cpu_us_per_req`)."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration_s:g}s", "--latency", url]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 60,
                         preexec_fn=pinned(cpus), check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = parse_wrk(out)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    res["cpu"] = cpu_s / duration_s
    res["cpu_us_per_req"] = cpu_s / res["requests"] * 1e6 if res.get("requests") else float("nan")
    return res
