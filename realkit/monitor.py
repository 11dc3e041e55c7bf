"""Sample a server's whole process tree (every 100 ms, in a background thread) and summarise a window.

Per sample: RSS (sum over the tree), threads, processes, open fds, context switches (voluntary and
involuntary) and CPU (user+sys). psutil does the per-process reads. Two things psutil does not give:
- context switches of *all threads*: /proc/PID/status (psutil.num_ctx_switches) reports the main thread
  only, so a thread-per-connection server would look idle. We sum /proc/PID/task/TID/status over the
  threads instead;
- counters of threads and processes that have gone: cumulative counters are kept per pid/tid at their
  last sampled value, so a short-lived thread or a restarted m6 worker still counts (what it did after
  its last sample, under 100 ms, is lost: a small undercount for very short-lived threads).
Process CPU from /proc/PID/stat already includes the process's exited threads.

RSS is summed over the tree, so pages shared by forked workers (m6) count once per worker, as `ps`
would: an upper bound of the memory the tree really needs.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass

import numpy as np
import psutil


@dataclass(frozen=True)
class TreeSample:
    t_s: float  # time.monotonic()
    rss_bytes: int
    threads: int
    processes: int
    fds: int
    fds_max_process: int  # the most fds any one process held (RLIMIT_NOFILE is per process)
    ctx_voluntary: int  # cumulative, all threads ever seen
    ctx_involuntary: int
    cpu_s: float  # cumulative user+sys, all processes ever seen


@dataclass(frozen=True)
class TreeStats:
    """Peaks and rates of a process tree over one window."""

    window_s: float
    samples: int
    cpu_util: float  # cores: CPU-seconds per second
    ctx_switches_per_s: float  # voluntary + involuntary
    ctx_voluntary_per_s: float
    ctx_involuntary_per_s: float
    threads_peak: int
    processes_peak: int
    rss_peak_bytes: int
    fds_peak: int
    fds_max_process_peak: int


def _thread_ctx(pid: int) -> dict[int, tuple[int, int]]:
    """tid -> (voluntary, involuntary) context switches, for every thread of one process."""
    out: dict[int, tuple[int, int]] = {}
    base = f"/proc/{pid}/task"
    try:
        tids = os.listdir(base)
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"{base}/{tid}/status", "rb") as fh:
                text = fh.read()
        except OSError:
            continue  # the thread exited between listdir and open
        i = text.find(b"\nvoluntary_ctxt_switches:")
        j = text.find(b"\nnonvoluntary_ctxt_switches:")
        if i >= 0 and j >= 0:
            vol = int(text[i + 25 : text.index(b"\n", i + 1)])
            invol = int(text[j + 28 : text.index(b"\n", j + 1)])
            out[int(tid)] = (vol, invol)
    return out


class ProcessTreeMonitor:
    """Background sampler of the process tree rooted at `pid`.

    with ProcessTreeMonitor(pid) as mon:
        ...
    stats = mon.summary(t0, t1)
    """

    def __init__(self, pid: int, interval_s: float = 0.1, cpus: tuple[int, ...] | None = None) -> None:
        if not isinstance(pid, int) or pid <= 0:
            raise ValueError(f"pid: expected a process id, got {pid!r}")
        if not interval_s > 0:
            raise ValueError(f"interval_s: must be > 0, got {interval_s!r}")
        self.pid = pid
        self.interval_s = interval_s
        self.cpus = cpus  # keep the sampling thread off the server's CPUs
        self.samples: list[TreeSample] = []
        self.root_gone = False
        self._root = psutil.Process(pid)
        self._procs: dict[int, psutil.Process] = {pid: self._root}
        self._cpu: dict[int, float] = {}  # pid -> last cumulative CPU seconds
        self._ctx: dict[tuple[int, int], tuple[int, int]] = {}  # (pid, tid) -> last (vol, invol)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- sampling ------------------------------------------------------------------------------------
    def _tree(self) -> list[psutil.Process]:
        try:
            children = self._root.children(recursive=True)
        except psutil.NoSuchProcess:
            self.root_gone = True
            return []
        procs = [self._root]
        for child in children:
            # Keep one psutil.Process per pid so its cached state (create time) stays valid.
            procs.append(self._procs.setdefault(child.pid, child))
        return procs

    def sample(self) -> TreeSample | None:
        """Take one sample now (also called by the background thread). None when the tree is gone."""
        rss = threads = fds = fds_max = 0
        n = 0
        for proc in self._tree():
            try:
                with proc.oneshot():
                    rss_p = proc.memory_info().rss
                    threads_p = proc.num_threads()
                    cpu = proc.cpu_times()
                    fds_p = proc.num_fds()
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue
            n += 1
            rss += rss_p
            threads += threads_p
            fds += fds_p
            fds_max = max(fds_max, fds_p)
            self._cpu[proc.pid] = cpu.user + cpu.system
            for tid, counts in _thread_ctx(proc.pid).items():
                self._ctx[(proc.pid, tid)] = counts
        if n == 0:
            self.root_gone = True
            return None
        vol = sum(v for v, _ in self._ctx.values())
        invol = sum(i for _, i in self._ctx.values())
        smp = TreeSample(
            t_s=time.monotonic(),
            rss_bytes=rss,
            threads=threads,
            processes=n,
            fds=fds,
            fds_max_process=fds_max,
            ctx_voluntary=vol,
            ctx_involuntary=invol,
            cpu_s=sum(self._cpu.values()),
        )
        with self._lock:
            self.samples.append(smp)
        return smp

    def _run(self) -> None:
        if self.cpus:
            os.sched_setaffinity(0, set(self.cpus))  # pid 0 from a thread: this thread only
        next_t = time.monotonic()
        while not self._stop.is_set():
            if self.sample() is None:
                return
            next_t += self.interval_s
            # A slow sample (a huge tree) delays the next one rather than bunching samples up.
            next_t = max(next_t, time.monotonic())
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def start(self) -> ProcessTreeMonitor:
        if self._thread is not None:
            raise RuntimeError("monitor already started")
        self.sample()
        self._thread = threading.Thread(target=self._run, name=f"monitor-{self.pid}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[TreeSample]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        with self._lock:
            return list(self.samples)

    def __enter__(self) -> ProcessTreeMonitor:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- analysis ------------------------------------------------------------------------------------
    def summary(self, t0: float, t1: float) -> TreeStats:
        with self._lock:
            samples = list(self.samples)
        return summarise(samples, t0, t1)


def summarise(samples: list[TreeSample], t0: float, t1: float) -> TreeStats:
    """Peaks over the samples inside [t0, t1] (the nearest one if none falls inside) and rates of the
    cumulative counters, interpolated linearly at t0 and t1 (clamped to the sampled span)."""
    if not t1 > t0:
        raise ValueError(f"t1: window end must be after its start, got [{t0}, {t1}]")
    if not samples:
        raise ValueError("samples: no samples taken (did the process exit at once?)")
    t = np.array([s.t_s for s in samples])
    inside = [s for s in samples if t0 <= s.t_s <= t1]
    if not inside:
        inside = [samples[int(np.argmin(np.abs(t - (t0 + t1) / 2)))]]
    lo, hi = max(t0, t[0]), min(t1, t[-1])
    span = hi - lo

    def rate(values: list[float]) -> float:
        if len(samples) < 2 or span <= 0:
            return math.nan
        v = np.array(values, dtype=np.float64)
        return float((np.interp(hi, t, v) - np.interp(lo, t, v)) / span)

    vol = rate([s.ctx_voluntary for s in samples])
    invol = rate([s.ctx_involuntary for s in samples])
    return TreeStats(
        window_s=t1 - t0,
        samples=len(inside),
        cpu_util=rate([s.cpu_s for s in samples]),
        ctx_switches_per_s=vol + invol,
        ctx_voluntary_per_s=vol,
        ctx_involuntary_per_s=invol,
        threads_peak=max(s.threads for s in inside),
        processes_peak=max(s.processes for s in inside),
        rss_peak_bytes=max(s.rss_bytes for s in inside),
        fds_peak=max(s.fds for s in inside),
        fds_max_process_peak=max(s.fds_max_process for s in inside),
    )
