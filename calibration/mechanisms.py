"""Mechanism conformance (docs/DESIGN.md §6): each mechanism of the simulator checked on its own, by a
small real experiment and the same experiment simulated, side by side in one table.

The calibration grid validates whole configurations; a mechanism that is wrong can hide there behind
a fitted knob. Here every figure isolates one mechanism: the RSS a connection, a thread or a process
adds; the delay of a server woken from idle; the accept path under one request per connection; the
open-loop load generator's own cost, its send lag sharing the server's cores and the latency it
reports at half load; thread start-up with thousands of clients; the GIL with Python work on one and
two cores.

`MECHANISMS` lists the experiments, one figure each. `run_mechanisms(profile)` runs them for real
(realkit.runner.measure) and simulated (simkit.simulate through calibration.compare.SimBatch: the
load generator on the server's cores where it shares them, counted as realkit counts), each
distinct Scenario once, and returns one row per figure. Models are picked by their registry
properties (simkit.registry), never by name. `format_table` and `write_csv` render the rows.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calibration.compare import SimBatch, at_run_speed, loadgen_shares_cores
from calibration.grid import (
    CALIBRATION_BACKLOG,
    CALIBRATION_CONNECT_RATE_CPS,
    WORK_MIXES,
    calibration_hardware,
)
from calibration.runs import run_failed
from simkit import registry
from simkit.profile import CostProfile
from simkit.result import Result
from simkit.scenario import ModelSpec, Scenario, Workload, available_cores

TOLERANCE = 0.15  # |simulated / real - 1| a figure may miss by and still count as conforming
COLUMNS = ("mechanism", "figure", "unit", "real", "sim", "rel_err", "within", "note", "why", "real_s", "sim_s",
           "box_others")
BUSY_CORES = 0.25  # other processes' CPU during a real run (cores, averaged) past which its note says so

MeasureFn = Callable[[Scenario], Result]
Progress = Callable[[str, int, int], None]


# -- the models, by what they are ----------------------------------------------------------------------
def _work_kind(arch: registry.Architecture) -> registry.Threads:
    return next(t for t in arch.threads if t.work)


def _pick(what: str, pred: Callable[[registry.Architecture], bool]) -> registry.Architecture:
    for arch in registry.architectures():
        if pred(arch):
            return arch
    raise LookupError(f"model: no registered architecture is {what}")


def _widened(arch: registry.Architecture) -> ModelSpec:
    """The model with every knob at 2 or more: single_thread() is then true only where one thread
    does all the work whatever the knobs say."""
    return ModelSpec.for_model(arch.name, **{k.field: max(2, k.minimum) for k in arch.knobs})


def single_reactor() -> str:
    return _pick("a single-thread reactor", lambda a: a.single_thread(_widened(a)) and not a.blocking_sockets
                 and not a.one_connection_at_a_time).name


def thread_per_connection() -> str:
    return _pick("a thread per connection", lambda a: _work_kind(a).count == "connections").name


def prefork() -> str:
    return _pick("pre-forked worker processes", lambda a: _work_kind(a).process
                 and isinstance(_work_kind(a).count, str)).name


def multi_reactor() -> str:
    return _pick("threads of one process counted by a threads knob",
                 lambda a: _work_kind(a).count == "threads" and not _work_kind(a).process).name


def reactor_pool() -> str:
    return _pick("a loop handing work to a pool of threads",
                 lambda a: _work_kind(a).count == "pool" and not _work_kind(a).process).name


def _spec(model: str, **knobs: Any) -> ModelSpec:
    """The model in its calibration configuration (registry, the grid's backlog), with `knobs` on top."""
    return ModelSpec.for_model(model, **{"backlog": CALIBRATION_BACKLOG, **registry.get(model).calibration.knobs,
                                         **knobs})


def _scenario(model: ModelSpec, cores: int, fds_needed: int = 0, **workload: Any) -> Scenario:
    """A mechanism experiment on the calibration grid's machine and clients (its fd limit, clients
    connecting as fast as the generator can), so its real runs measure what they always measured."""
    return Scenario(model=model, hardware=calibration_hardware(cores, fds_needed),
                    workload=Workload(connect_rate_cps=CALIBRATION_CONNECT_RATE_CPS, **workload))


# -- running the experiments -----------------------------------------------------------------------------
def _box_busy_s() -> float:
    """CPU seconds the whole box has spent in processes since boot, plus steal (a VM's neighbours).
    Interrupt time is left out: loopback traffic is processed in softirqs charged to no process, so
    a run's own packets would count as someone else's load."""
    try:
        v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return math.nan
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = (v + [0] * 8)[:8]
    return (user + nice + system + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    """CPU seconds of this process and its reaped children (the servers and load generators it ran)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Lab:
    """The runs a table needs, each distinct Scenario made once: real through `measure` (retried once
    when it raises or comes back broken), simulated through SimBatch (as calibration compares). A run
    that fails twice gives None; its error stays in `errors`, and `touched` lists the runs the current
    figure asked for (made now or earlier), so every figure that needs a failed run says why.
    `others[s]`: the cores other processes on the box kept busy during real run s, on average (a
    shared box's neighbours slow a real run down where the simulator sees nothing)."""

    def __init__(self, profile: CostProfile, quick: bool, measure: MeasureFn, simulate: Callable) -> None:
        self.profile = profile
        self.quick = quick
        self.measure = measure
        self.batch = SimBatch(simulate, workers=1)
        self._real: dict[Scenario, Result | None] = {}
        self._sim: dict[Scenario, Result | None] = {}
        self.errors: dict[tuple[str, Scenario], str] = {}
        self.touched: list[tuple[str, Scenario]] = []
        self.others: dict[Scenario, float] = {}
        self.real_s = 0.0
        self.sim_s = 0.0
        self.real_runs = 0

    # Run lengths: every experiment is short; quick shorter still.
    def window(self, full: float = 1.5, quick: float = 0.6) -> dict[str, float]:
        return {"duration_s": quick if self.quick else full, "warmup_s": 0.4 if self.quick else 0.7}

    def real(self, s: Scenario) -> Result | None:
        self.touched.append(("real", s))
        if s not in self._real:
            t0, box0, own0 = time.monotonic(), _box_busy_s(), _own_cpu_s()
            result, error = None, ""
            for _attempt in range(2):
                try:
                    with warnings.catch_warnings():
                        warnings.filterwarnings("ignore", message="server and load generator share CPUs")
                        got = self.measure(s)
                except Exception as exc:  # noqa: BLE001 - a broken real run is reported in the table
                    error = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
                    continue
                error = run_failed(got)
                if not error:
                    result = got
                    break
            self.real_runs += 1
            wall = time.monotonic() - t0
            self.real_s += wall
            if wall >= 0.2:
                self.others[s] = max(0.0, (_box_busy_s() - box0 - (_own_cpu_s() - own0)) / wall)
            self._real[s] = result
            if error and result is None:
                self.errors[("real", s)] = error
        return self._real[s]

    def sim(self, s: Scenario) -> Result | None:
        self.touched.append(("sim", s))
        if s not in self._sim:
            t0 = time.monotonic()
            real = self._real.get(s)  # simulated at the speed its real run measured (compare.at_run_speed)
            got = self.batch.run([s], [self.profile if real is None else at_run_speed(self.profile, real)])[0]
            self.sim_s += time.monotonic() - t0
            self._sim[s] = got if isinstance(got, Result) else None
            if not isinstance(got, Result):
                self.errors[("sim", s)] = str(got)[:200]
        return self._sim[s]

    def both(self, s: Scenario) -> tuple[Result | None, Result | None]:
        return self.real(s), self.sim(s)

    def failures(self) -> tuple[list[str], float]:
        """The errors of the runs touched since the last call (each once) and the most cores others
        kept busy during those real runs (NaN: not known); then a fresh start."""
        out, busy = [], math.nan
        for key in dict.fromkeys(self.touched):
            if key in self.errors:
                out.append(f"{key[0]} run {_label(key[1])} failed: {self.errors[key]}")
            if key[0] == "real" and math.isfinite(self.others.get(key[1], math.nan)):
                busy = max(self.others[key[1]], busy) if math.isfinite(busy) else self.others[key[1]]
        self.touched = []
        return out, busy

    def close(self) -> None:
        self.batch.close()


def _label(s: Scenario) -> str:
    w = s.workload
    return (f"{registry.get(s.model.name).describe(s.model)} cores={s.hardware.cores} c={w.connections}"
            + (f" idle={w.idle_connections}" if w.idle_connections else ""))


def _get(r: Result | None, field: str, scale: float = 1.0) -> float:
    if r is None:
        return math.nan
    v = float(getattr(r, field))
    return v * scale if math.isfinite(v) else math.nan


def _slope(lo: Result | None, hi: Result | None, x: Callable[[Result], float], scale: float) -> float:
    """d rss_peak_bytes / d x between two runs, in the figure's unit."""
    if lo is None or hi is None:
        return math.nan
    dx = x(hi) - x(lo)
    if dx <= 0 or lo.rss_peak_bytes <= 0 or hi.rss_peak_bytes <= 0:
        return math.nan
    return (hi.rss_peak_bytes - lo.rss_peak_bytes) / dx * scale


def _mib(b: float) -> str:
    return f"{b / 2**20:.1f}"


# -- 1. RSS slopes ------------------------------------------------------------------------------------
def _idle(lab: Lab, model: ModelSpec, idle: int) -> Scenario:
    """One active client (tiny work, 10 ms think: the server mostly idle) beside `idle` connections."""
    return _scenario(model, 1, 2 * idle + 1024, connections=1, idle_connections=idle, think_s=0.01, gil_us=10.0,
                     **lab.window(1.0, 0.5))


def rss_per_connection(lab: Lab) -> tuple[float, float, str]:
    counts = (500, 3000) if lab.quick else (1000, 10000)
    lo, hi = (_idle(lab, _spec(single_reactor()), n) for n in counts)
    (rl, sl), (rh, sh) = lab.both(lo), lab.both(hi)

    def conns(r: Result) -> float:
        return r.scenario.workload.idle_connections

    p = lab.profile
    note = (f"{counts[0]} -> {counts[1]} idle keep-alive connections on one reactor: real RSS "
            f"{_mib(_get(rl, 'rss_peak_bytes'))} -> {_mib(_get(rh, 'rss_peak_bytes'))} MiB; the profile's "
            f"rss_conn_bytes {p['rss_conn_bytes']:.0f} B (kernel socket memory, {p['kernel_bytes_per_socket']:.0f} B, "
            "is in no RSS)")
    for r in (rl, rh):
        if r is not None and "idle_connections" in r.failure:
            note += f"; real run {r.scenario.workload.idle_connections} idle: not all held"
    return _slope(rl, rh, conns, 1.0), _slope(sl, sh, conns, 1.0), note


def rss_per_thread(lab: Lab) -> tuple[float, float, str]:
    counts = (200, 800) if lab.quick else (500, 2000)
    lo, hi = (_idle(lab, _spec(thread_per_connection()), n) for n in counts)
    (rl, sl), (rh, sh) = lab.both(lo), lab.both(hi)

    def threads(r: Result) -> float:
        return r.threads_peak

    p = lab.profile
    note = (f"{counts[0]} -> {counts[1]} idle connections, each holding its thread: real threads "
            f"{_get(rl, 'threads_peak'):.0f} -> {_get(rh, 'threads_peak'):.0f}, sim "
            f"{_get(sl, 'threads_peak'):.0f} -> {_get(sh, 'threads_peak'):.0f}; slope per thread with its "
            f"connection; the profile's rss_thread_bytes + rss_conn_bytes "
            f"{(p['rss_thread_bytes'] + p['rss_conn_bytes']) / 1024:.1f} KiB")
    return _slope(rl, rh, threads, 1 / 1024), _slope(sl, sh, threads, 1 / 1024), note


def rss_per_process(lab: Lab) -> tuple[float, float, str]:
    model = prefork()
    lo = _idle(lab, _spec(model, processes=1), 0)
    hi = _idle(lab, _spec(model, processes=4), 0)
    (rl, sl), (rh, sh) = lab.both(lo), lab.both(hi)

    def procs(r: Result) -> float:
        return r.processes_peak

    note = (f"pre-forked server at 1 and 4 worker processes: real processes {_get(rl, 'processes_peak'):.0f} -> "
            f"{_get(rh, 'processes_peak'):.0f}, RSS {_mib(_get(rl, 'rss_peak_bytes'))} -> "
            f"{_mib(_get(rh, 'rss_peak_bytes'))} MiB (summed over the tree, shared pages counted per process); "
            f"the profile's rss_worker_bytes {_mib(lab.profile['rss_worker_bytes'])} MiB per forked worker "
            f"(rss_process_bytes {_mib(lab.profile['rss_process_bytes'])} MiB: the exec'd master)")
    return _slope(rl, rh, procs, 2.0**-20), _slope(sl, sh, procs, 2.0**-20), note


# -- 2. wake-up from idle ------------------------------------------------------------------------------
def _wakeup(lab: Lab, clients: int) -> Scenario:
    return _scenario(_spec(single_reactor()), 1, connections=clients, think_s=0.02, gil_us=10.0,
                     duration_s=1.0 if lab.quick else 2.0, warmup_s=0.3 if lab.quick else 0.5)


def _wakeup_figure(clients: int, field: str) -> Callable[[Lab], tuple[float, float, str]]:
    def run(lab: Lab) -> tuple[float, float, str]:
        real, sim = lab.both(_wakeup(lab, clients))
        note = (f"{clients} closed-loop client(s), think 20 ms, gil_us 10: real server cpu "
                f"{_get(real, 'cpu_util'):.3f} of a core, {_get(real, 'completed'):.0f} requests; the profile's "
                f"loopback_rtt {lab.profile['loopback_rtt_s'] * 1e3:.3f} ms")
        return _get(real, field, 1e3), _get(sim, field, 1e3), note

    return run


# -- 3. the accept path ------------------------------------------------------------------------------------
def _accept(lab: Lab, which: str) -> Scenario:
    if which == "reactor":
        model, cores = _spec(single_reactor()), 1
    else:
        model, cores = _spec(prefork(), processes=2, dispatch=which), 2
    return _scenario(model, cores, connections=100, requests_per_conn=1, gil_us=20.0, **lab.window())


def _accept_figure(which: str) -> Callable[[Lab], tuple[float, float, str]]:
    def run(lab: Lab) -> tuple[float, float, str]:
        s = _accept(lab, which)
        real, sim = lab.both(s)
        note = (f"one request per connection, 100 clients, gil_us 20, {s.hardware.cores} core(s)"
                + (" shared with the load generator" if loadgen_shares_cores(s) else "")
                + f": p50 real {_get(real, 'latency_p50_s', 1e3):.2f} / sim {_get(sim, 'latency_p50_s', 1e3):.2f} ms, "
                f"server cpu real {_get(real, 'cpu_util'):.2f} / sim {_get(sim, 'cpu_util'):.2f}, "
                f"errors real {_get(real, 'errors'):.0f} / sim {_get(sim, 'errors'):.0f}")
        return _get(real, "throughput_rps"), _get(sim, "throughput_rps"), note

    return run


# -- 4. the open-loop load generator -------------------------------------------------------------------------
_OPEN = {"reactor": (1, 20), "threads": (2, 50)}  # cores, closed-loop connections for the capacity run


def _open_model(which: str) -> ModelSpec:
    return _spec(single_reactor() if which == "reactor" else multi_reactor())


def _capacity(lab: Lab, which: str) -> Scenario:
    cores, conns = _OPEN[which]
    return _scenario(_open_model(which), cores, connections=conns, **WORK_MIXES["cpu"], **lab.window(1.0, 0.5))


def _open(lab: Lab, which: str) -> Scenario | None:
    """Poisson arrivals at half the capacity the closed-loop real run measured (None: no capacity)."""
    cap = lab.real(_capacity(lab, which))
    if cap is None or cap.throughput_rps <= 0:
        return None
    cores, conns = _OPEN[which]
    return _scenario(_open_model(which), cores, connections=conns, mode="open",
                     rate_rps=round(0.5 * cap.throughput_rps, 1), arrival="poisson", **WORK_MIXES["cpu"],
                     duration_s=1.0 if lab.quick else 2.0, warmup_s=0.4 if lab.quick else 0.7)


def _open_figure(which: str, field: str) -> Callable[[Lab], tuple[float, float, str]]:
    def run(lab: Lab) -> tuple[float, float, str]:
        s = _open(lab, which)
        if s is None:
            return math.nan, math.nan, "no capacity measured (the closed-loop real run failed)"
        real, sim = lab.both(s)
        cap_real, cap_sim = lab.both(_capacity(lab, which))
        note = (f"Poisson at {s.workload.rate_rps:.0f}/s = 50% of the real closed-loop capacity "
                f"{_get(cap_real, 'throughput_rps'):.0f}/s (sim's {_get(cap_sim, 'throughput_rps'):.0f}/s), "
                f"cpu_us 200 + gil_us 20, {s.hardware.cores} core(s)"
                + (" shared with the load generator" if loadgen_shares_cores(s) else "")
                + f"; server cpu real {_get(real, 'cpu_util'):.2f} / sim {_get(sim, 'cpu_util'):.2f}")
        return _get(real, field, 1e3), _get(sim, field, 1e3), note

    return run


def loadgen_cpu_per_request(lab: Lab) -> tuple[float, float, str]:
    """The generator's CPU per request in the open-loop threads run, real and simulated (simkit.clients:
    per wake-up, request and connection, probed)."""
    per = {}
    for which in _OPEN:
        s = _open(lab, which)
        r = lab.real(s) if s is not None else None
        per[which] = (r.loadgen_cpu_util / r.throughput_rps * 1e6
                      if r is not None and r.throughput_rps > 0 and r.loadgen_cpu_util > 0 else math.nan)
    s = _open(lab, "threads")
    shared = s is not None and loadgen_shares_cores(s)
    sim = lab.sim(s) if s is not None else None
    p = lab.profile
    note = (f"real open-loop generator {per['threads']:.1f} us/req "
            + ("sharing the server's cores" if shared else "on its own core")
            + f", {per['reactor']:.1f} us/req in the 1-core run (its own core, polling for send times); the "
            f"profile's generator: {p['client_cpu_per_wake_s'] * 1e6:.0f} us per wake-up, "
            f"{p['client_cpu_per_request_s'] * 1e6:.0f} per request, {p['client_cpu_per_conn_s'] * 1e6:.0f} per "
            "connection")
    x = _get(sim, "throughput_rps")
    return per["threads"], (_get(sim, "loadgen_cpu_util") / x * 1e6 if x > 0 else math.nan), note


_LAG_RATE_RPS = 500.0  # light: the server idles between requests, so the send lag is most of a latency


def _lag(lab: Lab, shared: bool) -> Scenario:
    """Zero-work requests at a light Poisson rate on the single reactor: the generator on a core of its
    own (1 core; it sends on time) or sharing every core with the server (it sends at its timer wakes)."""
    return _scenario(_spec(single_reactor()), available_cores() if shared else 1, connections=10, mode="open",
                     rate_rps=_LAG_RATE_RPS, arrival="poisson", cpu_us=0, gil_us=0, **lab.window())


def loadgen_send_lag(lab: Lab) -> tuple[float, float, str]:
    """Zero-work open-loop p50 with the generator sharing the server's cores: mostly its send lag. The
    note subtracts the same run with the generator on a core of its own (the server's part), which
    leaves the send lag alone, real and simulated."""
    own_real, own_sim = lab.both(_lag(lab, False))
    sh_real, sh_sim = lab.both(_lag(lab, True))
    ms = {k: _get(r, "latency_p50_s", 1e3) for k, r in
          (("own_real", own_real), ("own_sim", own_sim), ("sh_real", sh_real), ("sh_sim", sh_sim))}
    note = (f"Poisson {_LAG_RATE_RPS:.0f}/s, no work, sharing {available_cores()} cores (sends at timer wakes "
            f">= 1 ms apart); on a core of its own (sends on time) p50 real {ms['own_real']:.3f} / sim "
            f"{ms['own_sim']:.3f} ms; send lag (the difference) real {ms['sh_real'] - ms['own_real']:.3f} / sim "
            f"{ms['sh_sim'] - ms['own_sim']:.3f} ms")
    return ms["sh_real"], ms["sh_sim"], note


# -- 5. thread start-up -------------------------------------------------------------------------------------
def _spawn(lab: Lab) -> Scenario:
    n = 1000 if lab.quick else 2000
    return _scenario(_spec(thread_per_connection()), 1, 2 * n + 1024, connections=n, **WORK_MIXES["cpu"],
                     duration_s=1.0 if lab.quick else 1.5, warmup_s=0.5, timeout_s=20.0)


def _spawn_figure(field: str) -> Callable[[Lab], tuple[float, float, str]]:
    def run(lab: Lab) -> tuple[float, float, str]:
        s = _spawn(lab)
        real, sim = lab.both(s)
        note = (f"{s.workload.connections} clients connect at once to a thread per connection on 1 core, "
                f"warm-up {s.workload.warmup_s:g} s: p99 real {_get(real, 'latency_p99_s', 1e3):.0f} / sim "
                f"{_get(sim, 'latency_p99_s', 1e3):.0f} ms, RSS real {_mib(_get(real, 'rss_peak_bytes'))} / sim "
                f"{_mib(_get(sim, 'rss_peak_bytes'))} MiB; the profile's thread_spawn_s "
                f"{lab.profile['thread_spawn_s'] * 1e6:.0f} us + thread_boot_s {lab.profile['thread_boot_s'] * 1e6:.0f} us")
        return _get(real, field), _get(sim, field), note

    return run


# -- 6. the GIL ------------------------------------------------------------------------------------------------
def _gil(lab: Lab, which: str, cores: int) -> Scenario:
    if which == "pool":
        model, conns, work = _spec(reactor_pool()), 10, {"gil_us": 200.0}
    else:
        model, conns, work = _spec(thread_per_connection()), 50, dict(WORK_MIXES["io"])
    return _scenario(model, cores, connections=conns, **work, **lab.window())


def _gil_figure(which: str, cores: int, field: str, scale: float) -> Callable[[Lab], tuple[float, float, str]]:
    def run(lab: Lab) -> tuple[float, float, str]:
        s = _gil(lab, which, cores)
        real, sim = lab.both(s)
        w = s.workload
        work = ", ".join(f"{k} {getattr(w, k):g}" for k in ("cpu_us", "gil_us", "io_us") if getattr(w, k))
        note = (f"{registry.get(s.model.name).describe(s.model)}, {w.connections} clients, {work}, {cores} core(s)"
                + (" shared with the load generator" if loadgen_shares_cores(s) else "")
                + f": server cpu real {_get(real, 'cpu_util'):.2f} / sim {_get(sim, 'cpu_util'):.2f}, "
                f"switches/s real {_get(real, 'ctx_switches_per_s'):.0f} / sim {_get(sim, 'ctx_switches_per_s'):.0f}; "
                f"the profile's switch interval {lab.profile['gil_switch_interval_s'] * 1e3:g} ms, hand-off "
                f"{lab.profile['gil_handoff_s'] * 1e6:.1f} us")
        return _get(real, field, scale), _get(sim, field, scale), note

    return run


# -- the registry of experiments --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Mechanism:
    """One figure of one mechanism: `run(lab)` -> (real figure, simulated figure, note), in `unit`.
    `why` says what a miss points at (shown when the figure is outside the tolerance)."""

    name: str
    figure: str
    unit: str
    measures: str
    run: Callable[[Lab], tuple[float, float, str]]
    why: str = ""


_WHY_RSS = "the simulator's memory ledger charges a fixed RSS per {what} from the profile: a slope off here is " \
           "a ledger cost to measure, not to fit"
_WHY_WAKE = ("the real server is idle between requests: the delay from a request's arrival to the server running "
             "on an idle core (kernel and VM idle exit, interrupt path) grows with the idle time; the grid's busy "
             "points never show it")
_WHY_ACCEPT = ("each request pays connect, accept, registration and close; how the kernel spreads connections "
               "over the workers and the load generator's own connect cost on shared cores set the rate")
_WHY_OPEN = ("open-loop latency runs from the intended send time: the generator's timer and send-time accuracy "
             "and the server's wake-up from brief idles count on the real side")
_WHY_SPAWN = ("Thread.start() waits for the new thread to take the GIL: with thousands of threads on one core "
              "how many start inside the window depends on that wait and on the accept backlog")
_WHY_GIL = ("GIL hand-offs: the switch interval, forced switching, a releaser re-taking a free GIL first and "
            "woken waiters that lose the race decide how Python threads share the interpreter across cores")

MECHANISMS: tuple[Mechanism, ...] = (
    Mechanism("RSS", "per keep-alive connection", "B/conn",
              "dRSS/dN of one reactor holding idle keep-alive connections at two counts",
              rss_per_connection, _WHY_RSS.format(what="connection")),
    Mechanism("RSS", "per thread", "KiB/thread",
              "dRSS/dthreads of a thread-per-connection server whose idle connections each hold a thread",
              rss_per_thread, _WHY_RSS.format(what="thread")),
    Mechanism("RSS", "per process", "MiB/process",
              "dRSS/dprocesses of the pre-forked server at 1 and 4 workers",
              rss_per_process, _WHY_RSS.format(what="process")),
    Mechanism("wake-up from idle", "p50, 1 client", "ms",
              "median latency of one client thinking 20 ms between tiny requests (server idle)",
              _wakeup_figure(1, "latency_p50_s"), _WHY_WAKE),
    Mechanism("wake-up from idle", "p99, 1 client", "ms",
              "p99 latency of one client thinking 20 ms between tiny requests (server idle)",
              _wakeup_figure(1, "latency_p99_s"), _WHY_WAKE),
    Mechanism("wake-up from idle", "p50, 10 clients", "ms",
              "median latency of ten clients thinking 20 ms between tiny requests",
              _wakeup_figure(10, "latency_p50_s"), _WHY_WAKE),
    Mechanism("wake-up from idle", "p99, 10 clients", "ms",
              "p99 latency of ten clients thinking 20 ms between tiny requests",
              _wakeup_figure(10, "latency_p99_s"), _WHY_WAKE),
    Mechanism("accept path", "reactor, 1 core", "req/s",
              "throughput with one request per connection, 100 clients, on the single reactor",
              _accept_figure("reactor"), _WHY_ACCEPT),
    Mechanism("accept path", "2 pre-forked, reuseport", "req/s",
              "throughput with one request per connection through 2 SO_REUSEPORT workers on 2 cores",
              _accept_figure("reuseport"), _WHY_ACCEPT),
    Mechanism("accept path", "2 pre-forked, shared", "req/s",
              "throughput with one request per connection through 2 workers on one shared listen socket",
              _accept_figure("shared"), _WHY_ACCEPT),
    Mechanism("open-loop load generator", "CPU per request", "us/req",
              "the generator's CPU per request (loadgen_cpu_util / throughput) vs client_cpu_per_request_s",
              loadgen_cpu_per_request,
              "the simulator charges the profile's client CPU per request when the generator shares the "
              "server's cores; the open-loop generator's own cost differs from the closed loop's"),
    Mechanism("open-loop load generator", "send lag: p50, sharing the cores", "ms",
              "p50 of zero-work open-loop requests at a light rate with the generator sharing the server's "
              "cores (the note subtracts the same on a core of its own: the send lag alone)", loadgen_send_lag,
              "sharing the cores the generator sleeps on its event loop's millisecond timer, at least "
              "simkit.sendtimer.SHARED_TIMER_RESOLUTION_S, and sends what is due at each wake; the simulator "
              "models that rule, the wake-up of an idle core and the server's threads ahead of it"),
    Mechanism("open-loop load generator", "p50 at 50%, reactor", "ms",
              "median open-loop (Poisson) latency at half the single reactor's capacity, 1 core",
              _open_figure("reactor", "latency_p50_s"), _WHY_OPEN),
    Mechanism("open-loop load generator", "p99 at 50%, reactor", "ms",
              "p99 open-loop (Poisson) latency at half the single reactor's capacity, 1 core",
              _open_figure("reactor", "latency_p99_s"), _WHY_OPEN),
    Mechanism("open-loop load generator", "p50 at 50%, threads", "ms",
              "median open-loop (Poisson) latency at half a multi-threaded server's capacity, 2 cores",
              _open_figure("threads", "latency_p50_s"), _WHY_OPEN),
    Mechanism("open-loop load generator", "p99 at 50%, threads", "ms",
              "p99 open-loop (Poisson) latency at half a multi-threaded server's capacity, 2 cores",
              _open_figure("threads", "latency_p99_s"), _WHY_OPEN),
    Mechanism("thread start-up", "threads_peak", "threads",
              "threads alive in the window with thousands of thread-per-connection clients on 1 core",
              _spawn_figure("threads_peak"), _WHY_SPAWN),
    Mechanism("thread start-up", "throughput", "req/s",
              "throughput in the window while thousands of connection threads start on 1 core",
              _spawn_figure("throughput_rps"), _WHY_SPAWN),
    Mechanism("GIL", "pool, gil_us 200, 1 core: throughput", "req/s",
              "a loop + worker pool doing pure-Python work on 1 core", _gil_figure("pool", 1, "throughput_rps", 1.0),
              _WHY_GIL),
    Mechanism("GIL", "pool, gil_us 200, 1 core: p50", "ms",
              "a loop + worker pool doing pure-Python work on 1 core", _gil_figure("pool", 1, "latency_p50_s", 1e3),
              _WHY_GIL),
    Mechanism("GIL", "pool, gil_us 200, 2 cores: throughput", "req/s",
              "the same on 2 cores: the GIL, not the cores, should bound it",
              _gil_figure("pool", 2, "throughput_rps", 1.0), _WHY_GIL),
    Mechanism("GIL", "pool, gil_us 200, 2 cores: p50", "ms",
              "the same on 2 cores: the GIL, not the cores, should bound it",
              _gil_figure("pool", 2, "latency_p50_s", 1e3), _WHY_GIL),
    Mechanism("GIL", "thread/conn, io_us 2 ms, 1 core: throughput", "req/s",
              "a thread per connection with blocking waits and a little Python work, 1 core",
              _gil_figure("conn", 1, "throughput_rps", 1.0), _WHY_GIL),
    Mechanism("GIL", "thread/conn, io_us 2 ms, 1 core: p50", "ms",
              "a thread per connection with blocking waits and a little Python work, 1 core",
              _gil_figure("conn", 1, "latency_p50_s", 1e3), _WHY_GIL),
    Mechanism("GIL", "thread/conn, io_us 2 ms, 2 cores: throughput", "req/s",
              "a thread per connection with blocking waits and a little Python work, 2 cores",
              _gil_figure("conn", 2, "throughput_rps", 1.0), _WHY_GIL),
    Mechanism("GIL", "thread/conn, io_us 2 ms, 2 cores: p50", "ms",
              "a thread per connection with blocking waits and a little Python work, 2 cores",
              _gil_figure("conn", 2, "latency_p50_s", 1e3), _WHY_GIL),
)


# -- the table ---------------------------------------------------------------------------------------------------
def rel_err(real: float, sim: float) -> float:
    """(sim - real) / real; NaN when either is missing or nothing real was measured."""
    if not (math.isfinite(real) and math.isfinite(sim)) or real == 0:
        return math.nan
    return (sim - real) / abs(real)


def make_row(mech: Mechanism, real: float, sim: float, note: str, real_s: float = 0.0,
             sim_s: float = 0.0, box_others: float = math.nan) -> dict[str, Any]:
    err = rel_err(real, sim)
    within = bool(math.isfinite(err) and abs(err) <= TOLERANCE)
    why = ""
    if not within:
        why = mech.why if math.isfinite(err) else "no comparison: a run failed or measured nothing"
    return {"mechanism": mech.name, "figure": mech.figure, "unit": mech.unit, "real": real, "sim": sim,
            "rel_err": err, "within": within, "note": note, "why": why, "real_s": real_s, "sim_s": sim_s,
            "box_others": box_others}


def _work_pinned(profile: CostProfile):
    """Pin realkit's work rate for the servers started meanwhile: the profile's (the rate the fit saw),
    else one measured now."""
    from realkit import work

    rate = profile.notes.get("work_rate")
    calib = work.Calibration.from_env(rate) if isinstance(rate, str) and rate else \
        work.measure_calibration(budget_s=1.0)
    return work.pinned(calib)


def run_mechanisms(profile: CostProfile, quick: bool = False, measure: MeasureFn | None = None,
                   simulate: Callable | None = None, progress: Progress | None = None,
                   mechanisms: Sequence[Mechanism] = MECHANISMS) -> list[dict[str, Any]]:
    """Every mechanism's figure real and simulated under `profile`: one row per figure (COLUMNS).

    measure / simulate default to realkit.runner.measure / simkit.simulate (tests pass fakes); with
    the real measure, realkit's work rate is pinned to the profile's. Each row carries the wall time
    its real runs and simulations took (a run shared by several figures is counted once) and
    box_others, the most cores other processes kept busy during its real runs."""
    if not isinstance(profile, CostProfile):
        raise ValueError(f"profile: expected a CostProfile, got {type(profile).__name__}")
    pin = contextlib.nullcontext()
    if measure is None:
        from realkit.runner import measure

        pin = _work_pinned(profile)
    if simulate is None:
        from simkit import simulate
    lab = Lab(profile, quick, measure, simulate)
    rows = []
    try:
        with pin:
            for i, mech in enumerate(mechanisms):
                if progress:
                    progress(f"{mech.name}: {mech.figure}", i, len(mechanisms))
                real_s, sim_s = lab.real_s, lab.sim_s
                lab.failures()
                try:
                    real, sim, note = mech.run(lab)
                except Exception as exc:  # noqa: BLE001 - one broken experiment must not lose the table
                    real, sim, note = math.nan, math.nan, f"{type(exc).__name__}: {exc}"
                failed, others = lab.failures()
                if others > BUSY_CORES:
                    failed.append(f"box busy: other processes kept {others:.1f} cores busy during a real run")
                if failed:
                    note = "; ".join([note, *failed])
                rows.append(make_row(mech, real, sim, note, lab.real_s - real_s, lab.sim_s - sim_s, others))
    finally:
        lab.close()
    if progress:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
        progress(f"mechanisms done: {lab.real_runs} real runs in {lab.real_s:.0f} s, simulations "
                 f"{lab.sim_s:.0f} s, load average {load:.1f}", len(mechanisms), len(mechanisms))
    return rows


def _num(v: float) -> str:
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        return "n/a"
    a = abs(v)
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def format_table(rows: Sequence[dict[str, Any]], notes: bool = True) -> str:
    """The rows as a Markdown table (plain text reads it too), with the count within the tolerance
    and the real-run cost below."""
    head = ["mechanism", "figure", "unit", "real", "sim", "error", f"within {TOLERANCE:.0%}"]
    if notes:
        head.append("why / note")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        err = r["rel_err"]
        cells = [r["mechanism"], r["figure"], r["unit"], _num(r["real"]), _num(r["sim"]),
                 f"{err:+.0%}" if isinstance(err, float) and math.isfinite(err) else "n/a",
                 "yes" if r["within"] else "no"]
        if notes:
            text = " ".join(x for x in (r.get("why") and f"**{r['why']}.**", r.get("note", "")) if x)
            cells.append(text.replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
    ok = sum(bool(r["within"]) for r in rows)
    real_s = sum(float(r.get("real_s") or 0.0) for r in rows)
    sim_s = sum(float(r.get("sim_s") or 0.0) for r in rows)
    lines.append("")
    others = [float(r["box_others"]) for r in rows if isinstance(r.get("box_others"), (int, float))
              and math.isfinite(r["box_others"])]
    lines.append(f"{ok} of {len(rows)} figures within {TOLERANCE:.0%}; real runs {real_s:.0f} s, "
                 f"simulations {sim_s:.0f} s"
                 + (f"; other processes kept up to {max(others):.1f} cores busy during the real runs" if others else ""))
    return "\n".join(lines)


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """The rows as CSV with COLUMNS (a missing cell left empty)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(COLUMNS), extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r.get(k, "") for k in COLUMNS})
    return path


__all__ = ["COLUMNS", "MECHANISMS", "TOLERANCE", "Lab", "Mechanism", "format_table", "make_row", "rel_err",
           "run_mechanisms", "write_csv"]
