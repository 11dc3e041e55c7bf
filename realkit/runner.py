"""measure(scenario) -> Result: run one Scenario for real on this box.

Start the server for scenario.model as a subprocess (`python -m realkit.servers <json>`, never run in
this process: the server must own its process, its GIL and its CPUs), pin it to the first
hardware.cores CPUs, put the load generator on the other CPUs when the box has any (else both share,
and the Result says so through loadgen_cpu_util), raise RLIMIT_NOFILE as needed, warm up, measure,
stop the server gracefully (SIGTERM), and fill every Result field from what was observed:
- throughput, latency percentiles, errors, in-flight: the load generator's measurement window;
- cpu_util, ctx_switches_per_s, threads/processes/rss/fds peaks: the monitor of the server's process
  tree over the same window (both use time.monotonic());
- loadgen_cpu_util: the generator's own processes' CPU over the window.

The server's RLIMIT_NOFILE is set to hardware.fd_limit (capped by the hard limit): the scenario says
what the box allows a process, and a real run should meet EMFILE where the scenario would. Where this
box's hard limit is lower (the default fd_limit is a production server's 1,048,576), the Result's
scenario records the limit the server actually had (ran_as), so the Result says what was measured and
a simulation of Result.scenario meets EMFILE where the real server did; a RuntimeWarning says so when
the load could reach it.

`failure` names what went wrong without making the run useless: "server_died" (it exited during the
run), "loadgen" (the generator failed on its side, e.g. out of fds), "idle_connections" (not all idle
connections could be held), "fd_limit" (the server reached its fd limit), "ramp" (closed loop: more
than 2% of the clients were still connecting when the window opened, so it measured fewer connections
than asked: a longer warm-up, or a server that accepts slowly). A server that does not start
raises ServerStartError; a load generator that crashes raises LoadGenError (calibration retries once).
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass

import psutil

from realkit import work
from realkit.loadgen import LoadGenError, LoadReport, LoadSpec, raise_nofile, run_load
from realkit.monitor import ProcessTreeMonitor, TreeStats
from realkit.servers import server_argument
from simkit.result import Result
from simkit.scenario import Scenario
from simkit.sendtimer import SHARED_TIMER_RESOLUTION_S

__all__ = [
    "measure",
    "ServerStartError",
    "LoadGenError",
    "CpuPlan",
    "plan_cpus",
    "ServerProcess",
    "server_command",
    "load_spec_for",
    "check_server_caps",
]


def file_tail(f, n: int = 2000) -> str:
    """The last `n` bytes written to the binary file `f` (a server's captured output), as text."""
    f.flush()
    f.seek(0, os.SEEK_END)
    f.seek(max(0, f.tell() - n))
    return f.read().decode("utf-8", "replace")


class ServerStartError(RuntimeError):
    """The server did not start (exited, or printed no port in time)."""


@dataclass(frozen=True)
class CpuPlan:
    server_cpus: tuple[int, ...]
    loadgen_cpus: tuple[int, ...]
    shared: bool  # True: the box has no CPU left for the generator, so it shares the server's

    @property
    def note(self) -> str:
        if self.shared:
            return (
                f"server and load generator share CPUs {list(self.server_cpus)}: the generator's CPU "
                "(loadgen_cpu_util) competes with the server"
            )
        return f"server on CPUs {list(self.server_cpus)}, load generator on {list(self.loadgen_cpus)}"


def plan_cpus(cores: int) -> CpuPlan:
    """The first `cores` CPUs this process may use go to the server, the rest to the load generator."""
    available = sorted(os.sched_getaffinity(0))
    if cores > len(available):
        raise ValueError(f"cores: the scenario asks for {cores} cores but this box offers {len(available)}")
    server = tuple(available[:cores])
    rest = tuple(available[cores:])
    return CpuPlan(server_cpus=server, loadgen_cpus=rest or server, shared=not rest)


def server_command(scenario: Scenario, cpus: tuple[int, ...] | None = None) -> list[str]:
    """`python -m realkit.servers <json>` for scenario.model on loopback, any free port, pinned to `cpus`."""
    return [sys.executable, "-m", "realkit.servers", server_argument(scenario.model, "127.0.0.1", 0, cpus)]


def _server_preexec(cpus: tuple[int, ...], fd_limit: int):
    def preexec() -> None:  # runs in the child between fork and exec: keep it to syscalls
        os.sched_setaffinity(0, set(cpus))
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        try:  # as root the hard limit can be raised too; otherwise cap at it
            resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, max(fd_limit, hard)))
        except (ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(fd_limit, hard), hard))
        os.setsid()  # its own process group: forked workers can be signalled together if need be

    return preexec


class ServerProcess:
    """A real server in a subprocess. start() returns once it printed its port."""

    def __init__(self, scenario: Scenario, cpus: tuple[int, ...], startup_timeout_s: float = 60.0) -> None:
        self.scenario = scenario
        self.cpus = cpus
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self._stderr = tempfile.TemporaryFile()
        self._drain: threading.Thread | None = None
        self._ledger = tempfile.TemporaryDirectory(prefix="serverlab-work-")

    def work_scales(self) -> tuple[float, float]:
        """(cpu, gil) actual / asked duration of the work the server's processes did so far."""
        return work.read_ledger(self._ledger.name)

    def stderr_tail(self, n: int = 2000) -> str:
        return file_tail(self._stderr, n)

    def start(self) -> int:
        cmd = server_command(self.scenario, self.cpus)
        env = dict(os.environ, PYTHONUNBUFFERED="1", **{work.WORK_LEDGER_ENV: self._ledger.name})
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
            preexec_fn=_server_preexec(self.cpus, self.scenario.hardware.fd_limit),
        )
        line = self._read_line(self.startup_timeout_s)
        try:
            self.port = int(line.strip())
        except ValueError:
            self.kill()
            raise ServerStartError(
                f"server {self.scenario.model.name} did not print its port within {self.startup_timeout_s:g} s "
                f"(got {line!r}, exit code {self.proc.poll()}); command: {' '.join(cmd)}\n"
                f"stderr:\n{self.stderr_tail()}"
            ) from None
        # Keep reading stdout so a chatty server never blocks on a full pipe.
        self._drain = threading.Thread(target=self._drain_stdout, daemon=True)
        self._drain.start()
        return self.port

    def _read_line(self, timeout_s: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + timeout_s
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    break
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                buf += chunk
        return buf.split(b"\n", 1)[0].decode("ascii", "replace")

    def _drain_stdout(self) -> None:
        with contextlib.suppress(Exception):
            while (
                self.proc is not None
                and self.proc.stdout is not None
                and os.read(self.proc.stdout.fileno(), 65536)
            ):
                pass

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM and wait (graceful); SIGKILL the group if it does not exit in time. Returns the exit code
        of a graceful exit, None if it had to be killed."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait(5.0)

    def close(self) -> None:
        self.kill()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()
        self._ledger.cleanup()


def load_spec_for(
    scenario: Scenario, port: int, cpus: tuple[int, ...], processes: int, shared: bool = False,
    path: str | None = None,
) -> LoadSpec:
    """The load generator's spec for `scenario` against a server on 127.0.0.1:`port`: the scenario's
    workload as is, plus where and how the generator runs. `path`: the request target as is (an external
    server's URL); None asks a realkit server for the workload's work."""
    return LoadSpec(
        url=f"http://127.0.0.1:{port}{scenario.workload.work_path if path is None else path}",
        workload=scenario.workload,
        processes=processes,
        cpus=cpus,
        seed=scenario.seed,
        # On its own CPUs: send on time (polling just before each send). Sharing the server's CPUs, a
        # polling generator would take CPU from the server: wake at most each SHARED_TIMER_RESOLUTION_S
        # (sends late by ~1 ms, inside the latencies; simkit models the same rule, simkit.sendtimer).
        timer_resolution_s=SHARED_TIMER_RESOLUTION_S if shared else 0.0,
    )


def check_server_caps(scenario: Scenario) -> None:
    """Refuse, before anything starts, a workload whose requests the servers would refuse: work or a
    response over realkit.protocol's caps (400), a request over the header cap (431). ValueError names
    the field and the cap."""
    from realkit.protocol import MAX_HEADER_BYTES, MAX_RESP_BYTES, MAX_WORK_US

    w = scenario.workload
    for name in ("cpu_us", "gil_us", "io_us"):
        value = getattr(w, name)
        if value > MAX_WORK_US:
            raise ValueError(f"{name}: {value:g} us is over the servers' cap MAX_WORK_US = {MAX_WORK_US:.0f} us "
                             "per request (realkit.protocol); every request would get a 400")
    if w.resp_bytes > MAX_RESP_BYTES:
        raise ValueError(f"resp_bytes: {w.resp_bytes} is over the servers' cap MAX_RESP_BYTES = {MAX_RESP_BYTES} "
                         "bytes (realkit.protocol); every request would get a 400")
    if w.request_bytes > MAX_HEADER_BYTES:
        raise ValueError(f"request_bytes: {w.request_bytes} is over the servers' cap MAX_HEADER_BYTES = "
                         f"{MAX_HEADER_BYTES} bytes (realkit.protocol); every request would get a 431")


def generator_processes(connections: int, loadgen_cpus: int, shared: bool) -> int:
    """One generator process per CPU it may use (each runs one event loop), at most 8, at most one per
    client; one where it shares the server's CPUs."""
    return max(1, min(1 if shared else loadgen_cpus, 8, connections))


def _loadgen_processes(scenario: Scenario, plan: CpuPlan) -> int:
    return generator_processes(scenario.workload.connections, len(plan.loadgen_cpus), plan.shared)


def measure(
    scenario: Scenario,
    *,
    loadgen_processes: int | None = None,
    startup_timeout_s: float = 60.0,
    stop_timeout_s: float = 10.0,
    monitor_interval_s: float = 0.1,
    target=None,
) -> Result:
    """Run `scenario` for real; return its Result (source "real"). With `target` (a realkit.target.Target)
    the server is that external command instead of realkit's, loaded at target.path and stopped within
    target.stop_grace_s; the rest (monitor, generator, Result) is the same."""
    if not isinstance(scenario, Scenario):
        raise ValueError(f"scenario: expected a Scenario, got {type(scenario).__name__}")
    if target is not None:
        scenario = target.check(scenario)
    else:
        check_server_caps(scenario)
    plan = plan_cpus(scenario.hardware.cores)
    if plan.shared:
        warnings.warn(plan.note, RuntimeWarning, stacklevel=2)
    w = scenario.workload
    nproc = loadgen_processes or _loadgen_processes(scenario, plan)
    raise_nofile(w.connections + w.idle_connections + 256)
    if target is not None:
        server = target.process(scenario, plan.server_cpus)
        stop_timeout_s = target.stop_grace_s
    else:
        server = ServerProcess(scenario, plan.server_cpus, startup_timeout_s)
    try:
        port = server.start()
        try:
            fd_limit = psutil.Process(server.proc.pid).rlimit(resource.RLIMIT_NOFILE)[0]
        except psutil.Error:
            fd_limit = scenario.hardware.fd_limit
        monitor = ProcessTreeMonitor(server.proc.pid, monitor_interval_s, cpus=plan.loadgen_cpus)
        if monitor.ctx_counter != "perf":
            warnings.warn(
                "perf counters not permitted here: context switches are sampled from /proc and undercount "
                "threads that live under 100 ms (a thread per short connection or per request)",
                RuntimeWarning,
                stacklevel=2,
            )
        monitor.start()
        try:
            report = run_load(load_spec_for(scenario, port, plan.loadgen_cpus, nproc, plan.shared,
                                            target.path if target is not None else None))
        finally:
            monitor.stop()
        died = not server.alive()
        exit_code = server.stop(stop_timeout_s)
        stats = monitor.summary(report.window_start_s, report.window_end_s)
        scales = server.work_scales() if target is None else (math.nan, math.nan)
        if died:
            warnings.warn(
                f"server {scenario.model.name if target is None else target.command} died during the run; "
                f"stderr:\n{server.stderr_tail()}",
                RuntimeWarning,
                stacklevel=2,
            )
        return build_result(
            ran_as(server.scenario, fd_limit),  # a target's: the body size it answered with
            report,
            stats,
            died=died,
            stopped_cleanly=exit_code == 0 or died,
            server_fd_limit=fd_limit,
            work_scales=scales,
        )
    finally:
        server.close()


def ran_as(scenario: Scenario, server_fd_limit: int) -> Scenario:
    """`scenario` as the real run had it: hardware.fd_limit lowered to the RLIMIT_NOFILE the server got
    when the box's hard limit capped it (a warning when the load's connections could reach it)."""
    if not 16 <= server_fd_limit < scenario.hardware.fd_limit:
        return scenario
    w = scenario.workload
    if w.connections + w.idle_connections + 64 > server_fd_limit:
        warnings.warn(
            f"fd_limit: the server ran with RLIMIT_NOFILE {server_fd_limit:,} (this box's hard limit), not the "
            f"scenario's {scenario.hardware.fd_limit:,}; {w.connections + w.idle_connections:,} connections may "
            "meet EMFILE. The Result records the limit it had (raise the hard limit: ulimit -Hn, limits.conf)",
            RuntimeWarning,
            stacklevel=3,
        )
    return scenario.replace(fd_limit=server_fd_limit)


def build_result(
    scenario: Scenario,
    report: LoadReport,
    stats: TreeStats,
    *,
    died: bool = False,
    stopped_cleanly: bool = True,
    server_fd_limit: int | None = None,
    work_scales: tuple[float, float] = (math.nan, math.nan),
) -> Result:
    """Pure: one Result from a load report and the server tree's statistics over the same window, and
    the (cpu, gil) actual / asked work duration the server's ledger recorded (realkit.work.WorkLedger)."""
    failures = []
    if died:
        failures.append("server_died")
    if report.errors_client:
        failures.append("loadgen")
    if report.idle_open < scenario.workload.idle_connections:
        failures.append("idle_connections")
    if report.unconnected_at_window > max(2, 0.02 * scenario.workload.connections):
        failures.append("ramp")
    if report.errors_http:
        failures.append("http_errors")
    # Within a few fds of its limit a server is refusing (EMFILE) what it cannot accept.
    if stats.fds_max_process_peak >= (server_fd_limit or scenario.hardware.fd_limit) - 4:
        failures.append("fd_limit")
    if not stopped_cleanly:
        failures.append("no_graceful_stop")
    h = report.histogram
    p50, p90, p99, p999 = h.percentiles([50, 90, 99, 99.9])
    cores = scenario.hardware.cores
    cpu = stats.cpu_util if stats.cpu_util == stats.cpu_util else 0.0
    # The server is pinned to `cores` CPUs; a reading above that is sampling jitter at the window edges.
    cpu = min(cpu, float(cores))
    ctx = stats.ctx_switches_per_s if stats.ctx_switches_per_s == stats.ctx_switches_per_s else 0.0
    return Result(
        scenario=scenario,
        source="real",
        throughput_rps=report.throughput_rps,
        latency_mean_s=h.mean_s,
        latency_p50_s=float(p50),
        latency_p90_s=float(p90),
        latency_p99_s=float(p99),
        latency_p999_s=float(p999),
        completed=report.completed,
        errors_refused=report.errors_refused,
        errors_timeout=report.errors_timeout,
        # A connection closed mid-request and a malformed/non-2xx answer both mean "the server dropped it".
        errors_reset=report.errors_reset + report.errors_http,
        in_flight=report.in_flight,
        cpu_util=cpu,
        ctx_switches_per_s=ctx,
        threads_peak=stats.threads_peak,
        processes_peak=stats.processes_peak,
        rss_peak_bytes=stats.rss_peak_bytes,
        fds_peak=stats.fds_peak,
        loadgen_cpu_util=report.loadgen_cpu_util,
        work_cpu_scale=work_scales[0],
        work_gil_scale=work_scales[1],
        failure=",".join(failures),
    )
