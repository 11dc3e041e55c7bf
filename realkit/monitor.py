"""Sample a server's whole process tree (every 100 ms, in a background thread) and summarise a window.

Per sample: RSS (sum over the tree), threads, processes, open fds, context switches (voluntary plus
involuntary) and CPU (user+sys). psutil does the per-process reads. Context switches need more care:
/proc/PID/status (psutil.num_ctx_switches) reports the main thread only, and the counts of exited
threads are visible nowhere in /proc, so a thread-per-connection or spawn-per-request server would
look calm. Two ways, best first:
- "perf": a software perf counter (PERF_COUNT_SW_CONTEXT_SWITCHES, inherit=1) attached to every thread
  of the tree when the monitor starts; the kernel adds in every thread and process created later, alive
  or exited. Needs perf_event_open (root, or kernel.perf_event_paranoid <= 1, and no seccomp veto);
- "proc": sum /proc/PID/task/TID/status over live threads at each sample, keeping each thread's last
  value after it exits (what it did after its last sample is lost: an undercount for threads that
  live less than the sampling interval).
TreeStats.ctx_counter says which one was used. Process CPU from /proc/PID/stat already includes the
process's exited threads; exited processes keep their last sampled CPU.

RSS is summed over the tree, so pages shared by forked workers count once per worker, as `ps`
would: an upper bound of the memory the tree really needs.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import platform
import struct
import threading
import time
from dataclasses import dataclass

import numpy as np
import psutil


def peak_rss_bytes() -> int:
    """This process's own peak RSS (VmHWM of its current address space).

    Not getrusage's ru_maxrss: Linux carries that across fork and execve, so a worker spawned by a
    big parent (a pytest run that has loaded pandas and dask) reports the parent's peak, not its own.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass(frozen=True)
class TreeSample:
    t_s: float  # time.monotonic()
    rss_bytes: int
    threads: int
    processes: int
    fds: int
    fds_max_process: int  # the most fds any one process held (RLIMIT_NOFILE is per process)
    ctx_switches: int  # cumulative since the monitor started counting (voluntary + involuntary)
    cpu_s: float  # cumulative user+sys, all processes ever seen


@dataclass(frozen=True)
class TreeStats:
    """Peaks and rates of a process tree over one window."""

    window_s: float
    samples: int
    cpu_util: float  # cores: CPU-seconds per second
    ctx_switches_per_s: float  # voluntary + involuntary, every thread
    ctx_counter: str  # "perf" (exact, kernel-kept) or "proc" (sampled; undercounts very short-lived threads)
    threads_peak: int
    processes_peak: int
    rss_peak_bytes: int
    fds_peak: int
    fds_max_process_peak: int


_PERF_SYSCALL = {"x86_64": 298, "aarch64": 241, "armv7l": 364, "ppc64le": 319, "s390x": 331}
_PERF_TYPE_SOFTWARE = 1
_PERF_COUNT_SW_CONTEXT_SWITCHES = 3
_PERF_FLAG_FD_CLOEXEC = 8
_PERF_ATTR_INHERIT = 1 << 1


class _PerfContextSwitches:
    """Kernel-kept context-switch counters for a set of threads and everything they create later."""

    def __init__(self) -> None:
        self.fds: list[int] = []
        number = _PERF_SYSCALL.get(platform.machine())
        if number is None:
            raise OSError("perf_event_open: unknown syscall number on this architecture")
        self._syscall = ctypes.CDLL(None, use_errno=True).syscall
        self._number = number
        attr = bytearray(
            128
        )  # struct perf_event_attr (size 128 = PERF_ATTR_SIZE_VER7; older kernels take it)
        struct.pack_into(
            "IIQQQQQ",
            attr,
            0,
            _PERF_TYPE_SOFTWARE,
            len(attr),
            _PERF_COUNT_SW_CONTEXT_SWITCHES,
            0,
            0,
            0,
            _PERF_ATTR_INHERIT,
        )
        self._attr = ctypes.create_string_buffer(bytes(attr), len(attr))

    def attach(self, tid: int) -> None:
        fd = self._syscall(self._number, self._attr, tid, -1, -1, _PERF_FLAG_FD_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"perf_event_open: {os.strerror(err)}")
        self.fds.append(fd)

    def read(self) -> int:
        total = 0
        for fd in self.fds:
            try:
                total += struct.unpack("Q", os.read(fd, 8))[0]
            except OSError:
                pass
        return total

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []


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

    def __init__(
        self, pid: int, interval_s: float = 0.1, cpus: tuple[int, ...] | None = None, use_perf: bool = True
    ) -> None:
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
        self._perf: _PerfContextSwitches | None = None
        if use_perf:
            self._perf = self._attach_perf()
        self.ctx_counter = "perf" if self._perf is not None else "proc"

    def _attach_perf(self) -> _PerfContextSwitches | None:
        """A counter on every thread now in the tree; None (fall back to /proc) if perf is not allowed."""
        try:
            perf = _PerfContextSwitches()
        except OSError:
            return None
        try:
            for proc in self._tree():
                for tid in os.listdir(f"/proc/{proc.pid}/task"):
                    try:
                        perf.attach(int(tid))
                    except OSError as exc:
                        if exc.errno in (1, 13, 38):  # EPERM, EACCES, ENOSYS: perf is not ours to use
                            raise
                        # ESRCH: the thread exited meanwhile; nothing to count
        except OSError:
            perf.close()
            return None
        return perf

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
            if self._perf is None:
                for tid, counts in _thread_ctx(proc.pid).items():
                    self._ctx[(proc.pid, tid)] = counts
        if n == 0:
            self.root_gone = True
            return None
        if self._perf is not None:
            ctx = self._perf.read()
        else:
            ctx = sum(v + i for v, i in self._ctx.values())
        smp = TreeSample(
            t_s=time.monotonic(),
            rss_bytes=rss,
            threads=threads,
            processes=n,
            fds=fds,
            fds_max_process=fds_max,
            ctx_switches=ctx,
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
        if self._perf is not None:
            self._perf.close()
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
        return summarise(samples, t0, t1, self.ctx_counter)


def summarise(samples: list[TreeSample], t0: float, t1: float, ctx_counter: str = "proc") -> TreeStats:
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

    return TreeStats(
        window_s=t1 - t0,
        samples=len(inside),
        cpu_util=rate([s.cpu_s for s in samples]),
        ctx_switches_per_s=rate([s.ctx_switches for s in samples]),
        ctx_counter=ctx_counter,
        threads_peak=max(s.threads for s in inside),
        processes_peak=max(s.processes for s in inside),
        rss_peak_bytes=max(s.rss_bytes for s in inside),
        fds_peak=max(s.fds for s in inside),
        fds_max_process_peak=max(s.fds_max_process for s in inside),
    )
