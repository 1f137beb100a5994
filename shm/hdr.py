"""HDR-style log-linear latency histograms whose counts array is HdrHistogram's.

The bucket layout (lowest value 1, `HIGHEST` = 60 s in ns, 3 significant figures) is the one
HdrHistogram uses, so a counts array recorded here converts losslessly into an
`hdrh.histogram.HdrHistogram` and the standard tools (.hlog interval logs, HistogramLogProcessor,
plotters) read what we write. Counts are int64 and may live in shared memory: one writer records
with the jitted `record` (a few ns, no locks); readers snapshot by copying and subtract snapshots
to get intervals. Values above `HIGHEST` are recorded as `HIGHEST`; negative values as 0.
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np

LOWEST = 1
HIGHEST = 60_000_000_000
SIG_FIGS = 3

_SUB_BUCKET_COUNT_MAG = math.ceil(math.log2(2 * 10**SIG_FIGS))
SUB_HALF_MAG = _SUB_BUCKET_COUNT_MAG - 1
SUB_COUNT = 1 << _SUB_BUCKET_COUNT_MAG
SUB_HALF = SUB_COUNT // 2
SUB_MASK = SUB_COUNT - 1  # unit magnitude is 0 for LOWEST = 1


def _bucket_count(highest: int) -> int:
    smallest_untrackable = SUB_COUNT
    n = 1
    while smallest_untrackable <= highest:
        smallest_untrackable <<= 1
        n += 1
    return n


BUCKETS = _bucket_count(HIGHEST)
#: Length of the counts array (27,648 for the defaults: 216 KiB of int64).
COUNTS_LEN = (BUCKETS + 1) * SUB_HALF


def memory_bytes() -> int:
    """Bytes one histogram occupies (what a launcher sizes segments with)."""
    return COUNTS_LEN * 8


@numba.njit(cache=True, inline="always")
def index_of(value: int) -> int:
    v = min(max(value, 0), HIGHEST)
    # bucket = bit length of v above the sub-bucket range: a loop of a few steps for
    # microsecond values, where HdrHistogram uses count-leading-zeros
    bucket = 0
    x = v >> _SUB_BUCKET_COUNT_MAG
    while x:
        x >>= 1
        bucket += 1
    sub = v >> bucket
    return ((bucket + 1) << SUB_HALF_MAG) + (sub - SUB_HALF)


@numba.njit(cache=True)
def record(counts: np.ndarray, value: int) -> None:
    """Count one value (single writer)."""
    counts[index_of(value)] += 1


@numba.njit(cache=True)
def record_n(counts: np.ndarray, value: int, n: int) -> None:
    """Count one value n times (single writer)."""
    counts[index_of(value)] += n


@numba.njit(cache=True)
def record_many(counts: np.ndarray, values: np.ndarray) -> None:
    for i in range(values.shape[0]):
        counts[index_of(values[i])] += 1


def value_from_index(index: np.ndarray | int) -> np.ndarray | int:
    """Lowest value of the bucket at `index` (vectorised)."""
    idx = np.asarray(index, dtype=np.int64)
    bucket = (idx >> SUB_HALF_MAG) - 1
    sub = (idx & (SUB_HALF - 1)) + SUB_HALF
    first = bucket < 0
    sub = np.where(first, sub - SUB_HALF, sub)
    bucket = np.where(first, 0, bucket)
    return sub << bucket


def highest_equivalent(index: np.ndarray | int) -> np.ndarray | int:
    """Highest value that shares the bucket at `index` (what HdrHistogram reports for percentiles)."""
    idx = np.asarray(index, dtype=np.int64)
    bucket = np.maximum((idx >> SUB_HALF_MAG) - 1, 0)
    return value_from_index(idx) + (np.int64(1) << bucket) - 1


def new_counts() -> np.ndarray:
    return np.zeros(COUNTS_LEN, np.int64)


PERCENTILES = (50.0, 90.0, 99.0, 99.9, 99.99)


class Histogram:
    """A snapshot (copy) of a counts array, with HdrHistogram's percentile semantics."""

    def __init__(self, counts: np.ndarray | None = None) -> None:
        self.counts = new_counts() if counts is None else np.array(counts, dtype=np.int64, copy=True)
        if self.counts.shape != (COUNTS_LEN,):
            raise ValueError(f"counts length: expected={COUNTS_LEN} found={self.counts.shape}")

    @classmethod
    def from_values(cls, values: np.ndarray) -> Histogram:
        h = cls()
        record_many(h.counts, np.asarray(values, dtype=np.int64))
        return h

    @property
    def count(self) -> int:
        return int(self.counts.sum())

    def percentile(self, p: float) -> int:
        total = self.count
        if total == 0:
            return 0
        target = max(1, math.ceil(p / 100.0 * total))
        idx = int(np.searchsorted(np.cumsum(self.counts), target))
        return int(highest_equivalent(idx)) if p > 0 else int(value_from_index(idx))

    @property
    def max(self) -> int:
        nz = np.flatnonzero(self.counts)
        return int(highest_equivalent(nz[-1])) if len(nz) else 0

    @property
    def min(self) -> int:
        nz = np.flatnonzero(self.counts)
        return int(value_from_index(nz[0])) if len(nz) else 0

    @property
    def mean(self) -> float:
        total = self.count
        if not total:
            return 0.0
        nz = np.flatnonzero(self.counts)
        mids = (value_from_index(nz) + highest_equivalent(nz)) / 2.0
        return float((mids * self.counts[nz]).sum() / total)

    def summary(self) -> dict[str, float]:
        """count, min, mean, p50 … p99.99, max (ns)."""
        out: dict[str, float] = {"count": self.count, "min": self.min, "mean": round(self.mean, 1)}
        for p in PERCENTILES:
            out[f"p{p:g}"] = self.percentile(p)
        out["max"] = self.max
        return out

    def __add__(self, other: Histogram) -> Histogram:
        return Histogram(self.counts + other.counts)

    def __sub__(self, other: Histogram) -> Histogram:
        """Interval between two snapshots of one (only growing) counts array."""
        return Histogram(self.counts - other.counts)

    def to_hdrh(self, start_ms: int = 0, end_ms: int = 0, into: Any = None) -> Any:
        """The same data as an hdrh HdrHistogram (for .hlog logs and the standard tools).

        `into`: an HdrHistogram from an earlier call to reset and refill, so a logger writing every
        second does not allocate a new 200 KB histogram each time (the allocator kept the churn)."""
        from hdrh.histogram import HdrHistogram

        if into is None:
            h = HdrHistogram(LOWEST, HIGHEST, SIG_FIGS)
        else:
            h = into
            h.reset()
        if h.counts_len != COUNTS_LEN:
            raise RuntimeError(f"hdrh layout differs: counts_len expected={COUNTS_LEN} found={h.counts_len}")
        nz = np.flatnonzero(self.counts)
        for i in nz:
            h.counts[int(i)] = int(self.counts[i])
        h.set_internal_tacking_values(int(nz[0]) if len(nz) else -1, int(nz[-1]) if len(nz) else -1,
                                      self.count)
        h.set_start_time_stamp(start_ms)
        h.set_end_time_stamp(end_ms)
        return h

    @classmethod
    def from_hdrh(cls, h) -> Histogram:
        if h.counts_len != COUNTS_LEN:
            raise ValueError(f"hdrh histogram layout: counts_len expected={COUNTS_LEN} found={h.counts_len}")
        return cls(np.array([h.get_count_at_index(i) for i in range(COUNTS_LEN)], dtype=np.int64))
