"""The latency histogram: percentiles within 1% of numpy's, mergeable, fixed memory, round-trips."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from realkit.histogram import HistogramConfig, LatencyHistogram

QS = [1, 10, 50, 90, 99, 99.9]


@pytest.mark.parametrize(
    "draw",
    [
        lambda rng: rng.lognormal(mean=-7.0, sigma=1.0, size=200_000),  # ~1 ms, long tail
        lambda rng: rng.exponential(scale=0.002, size=200_000),
        lambda rng: rng.uniform(50e-6, 5e-3, size=200_000),
        lambda rng: np.concatenate([rng.normal(2e-4, 2e-5, 190_000).clip(1e-5),  # bimodal: stalls
                                    rng.uniform(0.02, 0.05, 10_000)]),
    ],
    ids=["lognormal", "exponential", "uniform", "bimodal"],
)
def test_percentiles_match_numpy_within_1_percent(draw):
    rng = np.random.default_rng(7)
    values = draw(rng)
    hist = LatencyHistogram()
    for chunk in np.array_split(values, 17):  # recorded in batches, as the generator does
        hist.record_many(chunk)
    exact = np.percentile(values, QS)
    got = hist.percentiles(QS)
    rel = np.abs(got - exact) / exact
    assert np.all(rel <= 0.01), dict(zip(QS, rel, strict=True))
    assert hist.count == values.size
    assert hist.mean_s == pytest.approx(values.mean(), rel=1e-9)
    assert hist.max_s == values.max() and hist.min_s == values.min()


@given(st.lists(st.floats(min_value=1e-6, max_value=100.0), min_size=1, max_size=300),
       st.floats(min_value=0.0, max_value=100.0))
def test_percentile_is_within_relative_error_of_an_observed_order_statistic(values, q):
    """Nearest rank: the answer is within the bucket error of the ceil(q n)-th smallest value."""
    hist = LatencyHistogram()
    hist.record_many(values)
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(values)))
    exact = ordered[rank - 1]
    assert hist.percentile(q) == pytest.approx(exact, rel=hist.config.relative_error * 1.001)


def test_merge_equals_recording_everything_in_one():
    rng = np.random.default_rng(3)
    parts = [rng.lognormal(-6, 1.2, 10_000) for _ in range(4)]
    merged = LatencyHistogram()
    for part in parts:
        h = LatencyHistogram()
        h.record_many(part)
        merged.merge(LatencyHistogram.from_dict(h.to_dict()))  # as it crosses a process boundary
    whole = LatencyHistogram()
    whole.record_many(np.concatenate(parts))
    assert np.array_equal(merged.counts, whole.counts)
    assert merged.count == whole.count
    assert merged.total_s == pytest.approx(whole.total_s)
    assert list(merged.percentiles(QS)) == list(whole.percentiles(QS))


def test_memory_is_fixed_and_range_is_clamped():
    hist = LatencyHistogram()
    n_buckets = len(hist.counts)
    assert n_buckets < 5000  # 1 us .. 1 h at 0.5 %: about 2.2k int64 buckets
    hist.record_many(np.full(1_000_000, 1e-3))
    hist.record_many([1e-9, 7200.0])  # below the lowest, above the highest
    assert len(hist.counts) == n_buckets
    assert hist.overflow == 1
    assert hist.percentile(100) == 7200.0  # clamped to what was really seen
    assert hist.percentile(0) == 1e-9
    assert hist.percentile(50) == pytest.approx(1e-3, rel=0.005)


def test_empty_and_invalid():
    hist = LatencyHistogram()
    assert math.isnan(hist.percentile(99)) and math.isnan(hist.mean_s)
    with pytest.raises(ValueError, match="values_s"):
        hist.record_many([-1.0])
    with pytest.raises(ValueError, match="q"):
        hist.percentile(101)
    with pytest.raises(ValueError, match="relative_error"):
        HistogramConfig(relative_error=0.0)
    with pytest.raises(ValueError, match="config"):
        hist.merge(LatencyHistogram(HistogramConfig(relative_error=0.01)))


def _parse_hgrm(text: str) -> tuple[list[tuple[float, float, int]], dict[str, float]]:
    """HdrHistogram's percentile-distribution text as its plotter reads it: a header, rows of
    value / percentile / total count (/ 1/(1-p)), then `#[Name = value, ...]` footer lines."""
    lines = text.splitlines()
    assert lines[0].split() == ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"] and lines[1] == ""
    rows, footer = [], {}
    for line in lines[2:]:
        if line.startswith("#["):
            for item in line[2:-1].split(","):
                key, value = item.split("=")
                footer[key.strip()] = float(value)
        else:
            fields = line.split()
            assert len(fields) in (3, 4), line
            rows.append((float(fields[0]), float(fields[1]), int(fields[2])))
    return rows, footer


def test_hgrm_export_is_hdrhistograms_percentile_distribution():
    rng = np.random.default_rng(3)
    values = rng.lognormal(mean=-7.0, sigma=1.0, size=50_000)
    hist = LatencyHistogram()
    hist.record_many(values)
    rows, footer = _parse_hgrm(hist.to_hgrm())
    levels = [p for _, p, _ in rows]
    assert levels[:7] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.55])  # HdrHistogram's ticks
    assert levels[-1] == 1.0 and rows[-1][2] == values.size and rows[-1][0] == pytest.approx(values.max() * 1e3, abs=1e-3)
    assert all(a <= b for a, b in zip(levels, levels[1:], strict=False))
    assert all(a[0] <= b[0] and a[2] <= b[2] for a, b in zip(rows, rows[1:], strict=False))
    for value, level, _ in rows[:-1]:  # milliseconds, the percentiles the summary prints
        assert value == pytest.approx(hist.percentile(level * 100) * 1e3, abs=1e-3)
    assert footer["Total count"] == values.size
    assert footer["Mean"] == pytest.approx(values.mean() * 1e3, rel=1e-3)
    assert footer["StdDeviation"] == pytest.approx(values.std() * 1e3, rel=0.02)


def test_hgrm_of_an_empty_histogram_is_header_and_footer():
    rows, footer = _parse_hgrm(LatencyHistogram().to_hgrm())
    assert rows == [] and footer["Total count"] == 0
