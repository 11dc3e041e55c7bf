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
