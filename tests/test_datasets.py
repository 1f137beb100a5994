"""procs/datasets.py: rows come from the book kernel, labels are what the module doc says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from procs.datasets import ANOMALY_KINDS, Dataset, direction_labels, from_capture, from_simulator, sample_mask
from shm.features import FEATURE_NAMES


def test_direction_next_change_skips_flat_ends_and_keeps_symbols_apart() -> None:
    mid = np.array([10, 10, 11, 11, 9, 9, 5, 6, 6, 6], float)
    sym = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    e = np.arange(10) * 10
    assert direction_labels(mid, sym, e).tolist() == [1, 1, 0, 0, -1, -1, 1, -1, -1, -1]


def test_direction_with_a_horizon_compares_with_the_first_update_after_it() -> None:
    mid = np.array([10, 11, 12, 12, 8], float)
    sym = np.zeros(5, np.int64)
    e = np.array([0, 5, 10, 20, 30])
    # +10 ms: row 0 → row 2 (12 > 10): up; row 1 → row 3 (12): up; row 2 → row 3 (flat): skip;
    # row 3 → row 4 (8): down; row 4: no future
    assert direction_labels(mid, sym, e, 10).tolist() == [1, 1, -1, 0, -1]
    with pytest.raises(ValueError, match="horizon_ms"):
        direction_labels(mid, sym, e, -1)


def test_sample_change_keeps_the_update_that_moved_the_mid_per_symbol() -> None:
    mid = np.array([10, 10, 11, 11, 9, 5, 5, 6], float)
    sym = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    e = np.arange(8) * 10
    assert sample_mask(mid, sym, e, "change").tolist() == [True, False, True, False, True, True, False, True]
    assert sample_mask(mid, sym, e, "all").all()
    # labels of the kept rows are the labels of their runs: one row per label event
    y = direction_labels(mid, sym, e)
    assert y[sample_mask(mid, sym, e, "change")].tolist() == [1, 0, -1, 1, -1]


def test_sample_time_step_takes_the_newest_row_at_each_grid_point() -> None:
    mid = np.ones(6)
    sym = np.zeros(6, np.int64)
    e = np.array([0, 30, 60, 100, 110, 260])
    # grid 0, 100, 200: rows at E 0, 100 (not 60) and 110 (newest at or before 200); 260 is after the last point
    assert sample_mask(mid, sym, e, "100ms").tolist() == [True, False, False, True, True, False]
    for bad in ("0ms", "fast", "-5ms", "ms"):
        with pytest.raises(ValueError, match="sample"):
            sample_mask(mid, sym, e, bad)


def test_simulator_rows_carry_their_windows_labels(tmp_path: Path) -> None:
    ds = from_simulator(2, 240, ["BTCUSDT", "ETHUSDT"], anomalies_per_min=4.0)
    assert ds.x.shape == (len(ds), len(FEATURE_NAMES)) and len(ds) > 1000
    assert ds.windows and (ds.anomaly > 0).any()
    for w in ds.windows:
        sid = ds.symbols.index(w["symbol"])
        inside = (ds.symbol == sid) & (ds.e_ms >= w["start_E_ms"]) & (ds.e_ms <= w["end_E_ms"])
        assert (ds.anomaly[inside] == ANOMALY_KINDS.index(w["kind"]) + 1).all()
    assert (ds.mid > 0).all()  # only valid books
    p = tmp_path / "d.npz"
    ds.save(p, sample="change")
    with np.load(p) as z:
        assert np.array_equal(z["sampled"], ds.sample("change")) and np.array_equal(z["up"], ds.direction())
    back = Dataset.load(p)
    assert back.sha256() == ds.sha256() and back.windows == ds.windows
    # seeded: the same rows again
    assert from_simulator(2, 240, ["BTCUSDT", "ETHUSDT"], anomalies_per_min=4.0).sha256() == ds.sha256()


def test_capture_rows(data_dir: Path) -> None:
    path = data_dir / "usdm_btcusdt_20240808_120s.lines.gz"
    if not path.is_file():
        pytest.skip(f"{path.name} not in {data_dir}")
    ds = from_capture(path)
    assert ds.symbols == ["BTCUSDT"] and len(ds) > 5000 and ds.meta["parse_errors"] == 0
    assert (np.diff(ds.e_ms) >= 0).all() and (ds.anomaly == 0).all()
    up = ds.direction()
    assert (up == 1).sum() > 1000 and (up == 0).sum() > 1000
