"""The business work a request asks for (docs/DESIGN.md §4), calibrated by duration at start-up.

- cpu_us: sha256 over n x 4 KiB of a buffer in ONE update() call. CPython drops the GIL while hashing an
  input of 2048 bytes or more (HASHLIB_GIL_MINSIZE), so this work scales across cores even in threads,
  as docs/DESIGN.md §4 asks, like any C call that releases the GIL for its whole run (zlib, numpy, a
  driver). One call, not one per chunk: re-taking the GIL every few microseconds would make it GIL-bound
  work, which is not what cpu_us stands for.
- gil_us: a pure Python loop; it holds the GIL (the interpreter forces a hand-off every 5 ms).
- io_us: time.sleep, standing for a database or disk call (releases the GIL, uses no CPU).

"Calibrated by duration, not by loop counts": at start-up `calibrate()` times short bursts of each
kind and keeps the cost of one unit (one hash chunk, one loop iteration); a request then runs
round(us / unit cost) units. The work is a fixed amount of computation, so under contention it takes
longer in wall time, exactly as real CPU work does. The bursts are timed with the thread's own CPU
clock (time.thread_time_ns), so preemption by other processes on a busy box does not inflate the
unit cost, and the median of several bursts drops outliers (frequency steps, cache misses).

Abandoning work: a server passes `abort` (a callable) to do_work; work longer than WORK_CHECK_S
(IO_CHECK_S for sleeps) is then done in slices, asking abort() between them, and stops once it says
True (the client hung up, or the shutdown limit passed), so an abandoned request stops costing CPU
within a slice. Shorter work, the usual case, never calls it.

A server measures its rate at start-up unless SERVERLAB_WORK_CALIBRATION ("cpu_ns_per_chunk,gil_ns_per_iter",
from Calibration.to_env) is set: calibration measures the rate once and pins it for every server it
starts, so a request asks for the same computation in all of its runs (a server's own short measurement
scatters on a shared box).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

# >= 2048 so hashlib releases the GIL; small enough that one chunk (a few us) gives fine granularity.
CPU_CHUNK_BYTES = 4096
_CPU_BUFFER = bytes(range(256)) * (CPU_CHUNK_BYTES // 256) * 256  # 1 MiB: one update() up to ~0.5 ms
_CPU_VIEW = memoryview(_CPU_BUFFER)
WORK_CALIBRATION_ENV = "SERVERLAB_WORK_CALIBRATION"
_GIL_BATCH = 64  # iterations per inner-loop round; a unit of gil work is one iteration
# How often long work asks whether to carry on: often enough that abandoned work stops within a small
# fraction of a second, rarely enough that the question (one poll() syscall, ~1 us) costs nothing.
WORK_CHECK_S = 0.01
IO_CHECK_S = 0.1  # a sleep costs no CPU: sliced only so the shutdown limit and hang-ups cut it short


@dataclass(frozen=True)
class Calibration:
    """Measured unit costs on this box, in nanoseconds."""

    cpu_ns_per_chunk: float
    gil_ns_per_iter: float

    def __post_init__(self) -> None:
        for name in ("cpu_ns_per_chunk", "gil_ns_per_iter"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"{name}: must be > 0, got {value!r}")

    def cpu_chunks(self, cpu_us: float) -> int:
        return max(0, round(cpu_us * 1000.0 / self.cpu_ns_per_chunk))

    def gil_iters(self, gil_us: float) -> int:
        return max(0, round(gil_us * 1000.0 / self.gil_ns_per_iter))

    def to_env(self) -> str:
        return f"{self.cpu_ns_per_chunk!r},{self.gil_ns_per_iter!r}"

    @classmethod
    def from_env(cls, text: str) -> Calibration:
        try:
            cpu, gil = (float(x) for x in text.split(","))
        except ValueError:
            raise ValueError(f"{WORK_CALIBRATION_ENV}: expected 'cpu_ns_per_chunk,gil_ns_per_iter', "
                             f"got {text!r}") from None
        return cls(cpu, gil)


def _hash_chunks(n: int) -> None:
    # One update() per MiB: the GIL is released once for the whole work, re-taken once at its end.
    h = hashlib.sha256()
    left = n * CPU_CHUNK_BYTES
    while left > 0:
        k = min(left, len(_CPU_BUFFER))
        h.update(_CPU_VIEW[:k])
        left -= k
    h.digest()


def _spin(n: int) -> int:
    # Pure Python arithmetic: holds the GIL for the whole loop (bar the interpreter's forced switches).
    x = 0
    for i in range(n):
        x = (x + i) ^ 0x5A5A
    return x


def _unit_cost_ns(fn, units: int, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        t0 = time.thread_time_ns()
        fn(units)
        samples.append((time.thread_time_ns() - t0) / units)
    return statistics.median(samples)


def measure_calibration(budget_s: float = 0.15, burst_us: float = 300.0) -> Calibration:
    """Time many bursts of each kind of work and return the median unit costs (~budget_s in all).

    Bursts last about `burst_us`, the size of a typical request: the pure Python loop costs more per
    iteration in very long runs than in short ones, so calibrating at request scale keeps requests exact.
    """
    cpu_probe = _unit_cost_ns(_hash_chunks, 16, 3)
    gil_probe = _unit_cost_ns(_spin, 2000, 3)
    rounds = max(5, int(budget_s * 1e6 / (2 * burst_us)))
    return Calibration(
        cpu_ns_per_chunk=_unit_cost_ns(_hash_chunks, max(4, int(burst_us * 1000 / cpu_probe)), rounds),
        gil_ns_per_iter=_unit_cost_ns(_spin, max(200, int(burst_us * 1000 / gil_probe)), rounds),
    )


_calibration: Calibration | None = None
_lock = threading.Lock()


def calibrate(force: bool = False) -> Calibration:
    """The process-wide calibration, measured on first use (servers call this before they are ready,
    so no request pays for it; a forked worker inherits its parent's)."""
    global _calibration
    with _lock:
        if _calibration is None or force:
            pinned = os.environ.get(WORK_CALIBRATION_ENV)
            _calibration = Calibration.from_env(pinned) if pinned and not force else measure_calibration()
        return _calibration


def set_calibration(calibration: Calibration | None) -> None:
    """Use these unit costs from now on (None: measure again, or read the environment, on next use)."""
    global _calibration
    with _lock:
        _calibration = calibration


@contextlib.contextmanager
def pinned(calibration: Calibration) -> Iterator[str]:
    """Use `calibration` in this process and, through WORK_CALIBRATION_ENV, in every server started
    meanwhile; on exit, put back what was there. Yields the environment value."""
    saved_env, saved = os.environ.get(WORK_CALIBRATION_ENV), _calibration
    set_calibration(calibration)
    os.environ[WORK_CALIBRATION_ENV] = calibration.to_env()
    try:
        yield os.environ[WORK_CALIBRATION_ENV]
    finally:
        if saved_env is None:
            os.environ.pop(WORK_CALIBRATION_ENV, None)
        else:
            os.environ[WORK_CALIBRATION_ENV] = saved_env
        set_calibration(saved)


def interpreted_speed(bursts: int = 7, burst_us: float = 300.0) -> float:
    """This moment's speed for interpreted code: the thread CPU time of `bursts` short runs of gil work
    over what the process's unit cost says they take (median; 1.0 at the speed the rate was pinned
    at). This VM flips between two speeds ~1.9x apart for seconds at a time, so a probe that ran in
    the other spell measured a cost the runs do not see; the probes record this beside each figure."""
    cal = _calibration or calibrate()
    return _unit_cost_ns(_spin, cal.gil_iters(burst_us), bursts) / cal.gil_ns_per_iter


def cpu_work(cpu_us: float, calibration: Calibration | None = None) -> None:
    if cpu_us > 0:
        _hash_chunks((calibration or _calibration or calibrate()).cpu_chunks(cpu_us))


def gil_work(gil_us: float, calibration: Calibration | None = None) -> None:
    if gil_us > 0:
        _spin((calibration or _calibration or calibrate()).gil_iters(gil_us))


def io_work(io_us: float) -> None:
    if io_us > 0:
        time.sleep(io_us / 1e6)


def do_work(
    cpu_us: float = 0.0, gil_us: float = 0.0, io_us: float = 0.0, abort: Callable[[], bool] | None = None
) -> bool:
    """The work one request asks for, in docs/DESIGN.md §4 order: cpu, then gil, then io.

    With `abort`, long work asks it between slices and stops when it returns True. Returns False
    if the work was abandoned so, True if it was all done."""
    if _ledger is not None:
        return _ledger.timed(cpu_us, gil_us, io_us, abort)
    return _do_work(cpu_us, gil_us, io_us, abort)


def _do_work(cpu_us: float, gil_us: float, io_us: float, abort: Callable[[], bool] | None) -> bool:
    if abort is None:
        if cpu_us > 0:
            cpu_work(cpu_us)
        if gil_us > 0:
            gil_work(gil_us)
        if io_us > 0:
            time.sleep(io_us / 1e6)
        return True
    cal = _calibration or calibrate()
    if cpu_us > 0 and not _sliced(_hash_chunks, cal.cpu_chunks(cpu_us), cal.cpu_ns_per_chunk, abort):
        return False
    if gil_us > 0 and not _sliced(_spin, cal.gil_iters(gil_us), cal.gil_ns_per_iter, abort):
        return False
    if io_us > 0:
        return _sleep(io_us / 1e6, abort)
    return True


def _sliced(fn: Callable[[int], object], units: int, ns_per_unit: float, abort: Callable[[], bool]) -> bool:
    """fn(units) in slices of about WORK_CHECK_S, asking abort() between them."""
    per_slice = max(1, int(WORK_CHECK_S * 1e9 / ns_per_unit))
    while units > per_slice:
        fn(per_slice)
        units -= per_slice
        if abort():
            return False
    fn(units)
    return True


def _sleep(seconds: float, abort: Callable[[], bool]) -> bool:
    if seconds <= IO_CHECK_S:
        time.sleep(seconds)
        return True
    end = time.monotonic() + seconds
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return True
        time.sleep(min(left, IO_CHECK_S))
        if abort() and end - time.monotonic() > 0:
            return False


# -- what the work really took -------------------------------------------------------------------
WORK_LEDGER_ENV = "SERVERLAB_WORK_LEDGER"
LEDGER_FLUSH_S = 0.25


class WorkLedger:
    """CPU time each kind of work really took against what was asked, in this process.

    The box's speed for interpreted code moves while a campaign runs (on this VM it flips between two
    speeds about 1.9x apart, for seconds at a time, and hashing does not), so the pinned unit costs give
    each run a different actual duration. Each process keeps its totals (thread CPU clock around each
    kind) and rewrites them to `dir/<pid>` at most every LEDGER_FLUSH_S; `read_ledger` sums a server's
    processes into actual / asked per kind."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.restart()
        os.register_at_fork(after_in_child=self.restart)  # a forked worker keeps its own file

    def restart(self) -> None:
        self.path = os.path.join(self.directory, str(os.getpid()))
        self.totals = [0, 0, 0, 0]  # cpu asked ns, cpu spent ns, gil asked ns, gil spent ns
        self.lock = threading.Lock()
        self.flushed = time.monotonic()

    def timed(self, cpu_us: float, gil_us: float, io_us: float, abort: Callable[[], bool] | None) -> bool:
        t0 = time.thread_time_ns()
        if cpu_us > 0 and not _do_work(cpu_us, 0.0, 0.0, abort):
            return False
        t1 = time.thread_time_ns()
        if gil_us > 0 and not _do_work(0.0, gil_us, 0.0, abort):
            return False
        t2 = time.thread_time_ns()
        with self.lock:
            tot = self.totals
            if cpu_us > 0:
                tot[0] += int(cpu_us * 1000)
                tot[1] += t1 - t0
            if gil_us > 0:
                tot[2] += int(gil_us * 1000)
                tot[3] += t2 - t1
            now = time.monotonic()
            flush = now - self.flushed >= LEDGER_FLUSH_S
            if flush:
                self.flushed = now
                line = " ".join(map(str, tot))
        if flush:
            with contextlib.suppress(OSError), open(self.path, "w") as f:
                f.write(line + "\n")
        return io_us <= 0 or _do_work(0.0, 0.0, io_us, abort)


def read_ledger(directory: str) -> tuple[float, float]:
    """(cpu, gil) actual / asked duration summed over the processes that wrote to `directory`; nan
    for a kind no request asked for."""
    tot = [0, 0, 0, 0]
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            with contextlib.suppress(OSError, ValueError), open(os.path.join(directory, name)) as f:
                vals = [int(x) for x in f.read().split()]
                if len(vals) == 4:
                    tot = [a + b for a, b in zip(tot, vals, strict=True)]
    return (tot[1] / tot[0] if tot[0] else float("nan"), tot[3] / tot[2] if tot[2] else float("nan"))


_ledger: WorkLedger | None = WorkLedger(os.environ[WORK_LEDGER_ENV]) if os.environ.get(WORK_LEDGER_ENV) else None
