"""The load generator's latency histogram: log-bucketed (HdrHistogram style), fixed memory, every
percentile within `relative_error` of the exact order statistic, mergeable across worker processes
(to_dict / from_dict are plain and JSON-able, for the trip through a pipe)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["HistogramConfig", "LatencyHistogram"]


@dataclass(frozen=True)
class HistogramConfig:
    """Bucket layout: bucket i covers [lowest_s * r**i, lowest_s * r**(i+1)) with r = (1+e)**2, so the
    geometric midpoint of a bucket is within relative error e of every value in it."""

    lowest_s: float = 1e-6
    highest_s: float = 3600.0
    relative_error: float = 0.005

    def __post_init__(self) -> None:
        if not (self.lowest_s > 0 and math.isfinite(self.lowest_s)):
            raise ValueError(f"lowest_s: must be > 0, got {self.lowest_s!r}")
        if not (self.highest_s > self.lowest_s and math.isfinite(self.highest_s)):
            raise ValueError(f"highest_s: must be > lowest_s, got {self.highest_s!r}")
        if not (0 < self.relative_error < 0.5):
            raise ValueError(f"relative_error: must be in (0, 0.5), got {self.relative_error!r}")

    @property
    def ratio(self) -> float:
        return (1.0 + self.relative_error) ** 2

    @property
    def n_buckets(self) -> int:
        return int(math.ceil(math.log(self.highest_s / self.lowest_s) / math.log(self.ratio))) + 1


class LatencyHistogram:
    """Log-bucketed latency histogram (seconds). Memory is fixed (~2k int64 buckets by default) however
    many values go in; percentiles are within `relative_error` of the exact order statistic.

    Values below lowest_s land in bucket 0, above highest_s in the last bucket (and are counted in
    `overflow`); min, max, sum are kept exactly so the mean is exact and extreme percentiles are clamped
    to what was really seen.
    """

    __slots__ = ("config", "counts", "count", "total_s", "min_s", "max_s", "overflow", "_log_lo", "_log_r")

    def __init__(self, config: HistogramConfig | None = None) -> None:
        self.config = config or HistogramConfig()
        self.counts = np.zeros(self.config.n_buckets, dtype=np.int64)
        self.count = 0
        self.total_s = 0.0
        self.min_s = math.inf
        self.max_s = 0.0
        self.overflow = 0
        self._log_lo = math.log(self.config.lowest_s)
        self._log_r = math.log(self.config.ratio)

    def _index(self, values: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            idx = np.floor((np.log(np.maximum(values, 1e-300)) - self._log_lo) / self._log_r)
        return np.clip(idx, 0, len(self.counts) - 1).astype(np.int64)

    def record(self, value_s: float) -> None:
        self.record_many(np.asarray([value_s], dtype=np.float64))

    def record_many(self, values_s) -> None:
        values = np.asarray(values_s, dtype=np.float64).ravel()
        if values.size == 0:
            return
        if not np.all(np.isfinite(values)) or np.any(values < 0):
            raise ValueError("values_s: latencies must be finite and >= 0")
        self.counts += np.bincount(self._index(values), minlength=len(self.counts))
        self.count += int(values.size)
        self.total_s += float(values.sum())
        self.min_s = min(self.min_s, float(values.min()))
        self.max_s = max(self.max_s, float(values.max()))
        self.overflow += int(np.count_nonzero(values > self.config.highest_s))

    def merge(self, other: LatencyHistogram) -> LatencyHistogram:
        """Add another histogram's counts into this one (same layout required); returns self."""
        if other.config != self.config:
            raise ValueError("config: histograms with different bucket layouts cannot be merged")
        self.counts += other.counts
        self.count += other.count
        self.total_s += other.total_s
        self.min_s = min(self.min_s, other.min_s)
        self.max_s = max(self.max_s, other.max_s)
        self.overflow += other.overflow
        return self

    @property
    def mean_s(self) -> float:
        return self.total_s / self.count if self.count else math.nan

    def _representative(self, idx: np.ndarray) -> np.ndarray:
        # Geometric midpoint of each bucket.
        return np.exp(self._log_lo + (idx + 0.5) * self._log_r)

    def percentile(self, q: float) -> float:
        """The q-th percentile (0..100) in seconds, NaN when empty."""
        return float(self.percentiles([q])[0])

    def percentiles(self, qs) -> np.ndarray:
        qs = np.asarray(qs, dtype=np.float64)
        if np.any((qs < 0) | (qs > 100)):
            raise ValueError("q: percentiles must be in 0..100")
        if self.count == 0:
            return np.full(qs.shape, math.nan)
        cum = np.cumsum(self.counts)
        # Nearest rank: the smallest bucket holding the ceil(q/100 * n)-th value (1-based).
        ranks = np.maximum(1, np.ceil(qs / 100.0 * self.count))
        idx = np.searchsorted(cum, ranks, side="left")
        out = np.clip(self._representative(idx), self.min_s, self.max_s)
        # The extremes are known exactly (and may lie outside the bucketed range).
        out[qs == 100] = self.max_s
        out[qs == 0] = self.min_s
        return out

    # -- export -------------------------------------------------------------------------------------------
    def to_hgrm(self, unit_s: float = 1e-3) -> str:
        """The histogram in HdrHistogram's percentile-distribution text format (.hgrm, as its
        outputPercentileDistribution and wrk2 write it; values in `unit_s`, milliseconds by default), for
        HdrHistogram's plotter and tools.

        Written here rather than through the `hdrhistogram` package: these buckets are not HdrHistogram's,
        so its binary log would quantise every value a second time, while this text is a function of the
        percentiles alone. The percentile levels are HdrHistogram's (5 ticks per halving of the distance
        to 100%); each value is the one percentile() reports, so the file agrees with the printed p99."""
        lines = [f"{'Value':>12} {'Percentile':>14} {'TotalCount':>10} {'1/(1-Percentile)':>14}", ""]
        if self.count:
            cum = np.cumsum(self.counts)
            level = 0.0
            while True:
                rank = max(1, math.ceil(level / 100.0 * self.count - 1e-9))
                idx = int(np.searchsorted(cum, rank, side="left"))
                value = min(max(float(self._representative(np.asarray([idx]))[0]), self.min_s), self.max_s)
                lines.append(f"{value / unit_s:12.3f} {level / 100.0:2.12f} {int(cum[idx]):10d} "
                             f"{1.0 / (1.0 - level / 100.0):14.2f}")
                if cum[idx] >= self.count:
                    break
                ticks = 5 * 2 ** (math.floor(math.log2(100.0 / (100.0 - level))) + 1)
                level += 100.0 / ticks
            lines.append(f"{self.max_s / unit_s:12.3f} {1.0:2.12f} {self.count:10d}")
        nz = np.flatnonzero(self.counts)
        mids = self._representative(nz)
        mean = self.mean_s if self.count else 0.0
        std = math.sqrt(float(np.sum(self.counts[nz] * (mids - mean) ** 2)) / self.count) if self.count else 0.0
        lines += [
            f"#[Mean    = {mean / unit_s:12.3f}, StdDeviation   = {std / unit_s:12.3f}]",
            f"#[Max     = {self.max_s / unit_s:12.3f}, Total count    = {self.count:12d}]",
            f"#[Buckets = {len(self.counts):12d}, SubBuckets     = {1:12d}]",
        ]
        return "\n".join(lines) + "\n"

    # -- transport between processes: plain, picklable, JSON-able ---------------------------------------
    def to_dict(self) -> dict[str, Any]:
        nz = np.flatnonzero(self.counts)
        return {
            "config": dataclasses.asdict(self.config),
            "index": nz.tolist(),
            "counts": self.counts[nz].tolist(),
            "count": self.count,
            "total_s": self.total_s,
            "min_s": self.min_s if self.count else None,
            "max_s": self.max_s,
            "overflow": self.overflow,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyHistogram:
        hist = cls(HistogramConfig(**data["config"]))
        hist.counts[np.asarray(data["index"], dtype=np.int64)] = np.asarray(data["counts"], dtype=np.int64)
        hist.count = int(data["count"])
        hist.total_s = float(data["total_s"])
        hist.min_s = math.inf if data["min_s"] is None else float(data["min_s"])
        hist.max_s = float(data["max_s"])
        hist.overflow = int(data["overflow"])
        return hist
