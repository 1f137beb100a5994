"""The histogram matches HdrHistogram's layout and percentiles, and round-trips through .hlog."""

from __future__ import annotations

import numpy as np
import pytest

from shm import hdr

hdrh = pytest.importorskip("hdrh.histogram")
from hdrh.log import HistogramLogReader, HistogramLogWriter  # noqa: E402


def test_layout_matches_hdrhistogram() -> None:
    ref = hdrh.HdrHistogram(hdr.LOWEST, hdr.HIGHEST, hdr.SIG_FIGS)
    assert ref.counts_len == hdr.COUNTS_LEN
    for v in [0, 1, 2, 1023, 1024, 2047, 2048, 2049, 4095, 4096, 10**5, 123_456_789, 59_999_999_999]:
        assert hdr.index_of(v) == ref.get_counts_array_index(v), v


def test_percentiles_agree_with_hdrh() -> None:
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.lognormal(6, 1, 100_000), rng.integers(1, 10**9, 100)]).astype(np.int64)
    ours = hdr.Histogram.from_values(values)
    ref = hdrh.HdrHistogram(hdr.LOWEST, hdr.HIGHEST, hdr.SIG_FIGS)
    for v in values:
        ref.record_value(int(v))
    for p in (50, 90, 99, 99.9, 99.99, 100):
        assert ours.percentile(p) == ref.get_value_at_percentile(p), p
    assert ours.count == ref.get_total_count() == len(values)
    assert ours.max == ref.get_max_value()
    assert abs(ours.mean - ref.get_mean_value()) / ref.get_mean_value() < 1e-3


def test_clamps_out_of_range() -> None:
    h = hdr.Histogram()
    hdr.record(h.counts, -5)
    hdr.record(h.counts, 10**15)
    assert h.count == 2 and h.min == 0 and h.max >= hdr.HIGHEST


def test_interval_subtraction_and_merge() -> None:
    counts = hdr.new_counts()
    hdr.record_many(counts, np.array([100, 200, 300]))
    first = hdr.Histogram(counts)
    hdr.record_many(counts, np.array([1000, 2000]))
    second = hdr.Histogram(counts)
    interval = second - first
    assert interval.count == 2 and interval.min == 1000
    assert (first + interval).count == second.count == 5


def test_hlog_round_trip(tmp_path) -> None:
    h = hdr.Histogram.from_values(np.arange(1, 50_000, 7))
    path = tmp_path / "x.hlog"
    with path.open("w") as f:
        w = HistogramLogWriter(f)
        w.output_interval_histogram(h.to_hdrh(1000, 2000))
    back = HistogramLogReader(str(path), hdrh.HdrHistogram(hdr.LOWEST, hdr.HIGHEST, hdr.SIG_FIGS))
    got = back.get_next_interval_histogram()
    assert got is not None
    assert np.array_equal(hdr.Histogram.from_hdrh(got).counts, h.counts)
    assert got.get_value_at_percentile(99) == h.percentile(99)
