"""The business work a request asks for (DESIGN §4), calibrated by duration at start-up.

- cpu_us: sha256 over a 4 KiB buffer, chunk after chunk. CPython drops the GIL while hashing inputs of
  2048 bytes or more (HASHLIB_GIL_MINSIZE), so this work scales across cores even in threads.
- gil_us: a pure Python loop; it holds the GIL (the interpreter forces a hand-off every 5 ms).
- io_us: time.sleep, standing for a database or disk call (releases the GIL, uses no CPU).

"Calibrated by duration, not by loop counts": at start-up `calibrate()` times short bursts of each
kind and keeps the cost of one unit (one hash chunk, one loop iteration); a request then runs
round(us / unit cost) units. The work is a fixed amount of computation, so under contention it takes
longer in wall time, exactly as real CPU work does. The bursts are timed with the thread's own CPU
clock (time.thread_time_ns), so preemption by other processes on a busy box does not inflate the
unit cost, and the median of several bursts drops outliers (frequency steps, cache misses).
"""

from __future__ import annotations

import hashlib
import statistics
import threading
import time
from dataclasses import dataclass

# >= 2048 so hashlib releases the GIL; small enough that one chunk (a few us) gives fine granularity.
CPU_CHUNK_BYTES = 4096
_CPU_BUFFER = bytes(range(256)) * (CPU_CHUNK_BYTES // 256)
_GIL_BATCH = 64  # iterations per inner-loop round; a unit of gil work is one iteration


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


def _hash_chunks(n: int) -> None:
    h = hashlib.sha256()
    update = h.update
    buf = _CPU_BUFFER
    for _ in range(n):
        update(buf)
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
            _calibration = measure_calibration()
        return _calibration


def set_calibration(calibration: Calibration) -> None:
    global _calibration
    with _lock:
        _calibration = calibration


def cpu_work(cpu_us: float, calibration: Calibration | None = None) -> None:
    if cpu_us > 0:
        _hash_chunks((calibration or _calibration or calibrate()).cpu_chunks(cpu_us))


def gil_work(gil_us: float, calibration: Calibration | None = None) -> None:
    if gil_us > 0:
        _spin((calibration or _calibration or calibrate()).gil_iters(gil_us))


def io_work(io_us: float) -> None:
    if io_us > 0:
        time.sleep(io_us / 1e6)


def do_work(cpu_us: float = 0.0, gil_us: float = 0.0, io_us: float = 0.0) -> None:
    """The work one request asks for, in DESIGN order: cpu, then gil, then io."""
    if cpu_us > 0:
        cpu_work(cpu_us)
    if gil_us > 0:
        gil_work(gil_us)
    if io_us > 0:
        time.sleep(io_us / 1e6)
