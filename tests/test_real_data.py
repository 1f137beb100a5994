"""Real Binance captures (../shared/data/binance): the book equals every bookTicker with the same u.

Skipped with a reason when the shared data folder is absent (override its path with TICKPIPE_DATA).
"""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from reference import RefPipeline

from procs.book_check import check_capture
from procs.kernels.book import BookState
from procs.kernels.parse_json import Parser
from procs.sources.replay import read_capture
from shm.features import FEATURE_NAMES
from shm.records import BOOK, FEATURES, FLAG_BOOK_VALID, MARKET

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "verify_book.py"
FILES = ("spot_4sym_20211012.lines.gz", "usdm_4sym_20210722.lines.gz", "usdm_btcusdt_20240808_120s.lines.gz")


@pytest.mark.parametrize("name", FILES)
def test_book_matches_every_ticker_with_the_same_u(data_dir: Path, name: str) -> None:
    path = data_dir / name
    if not path.is_file():
        pytest.skip(f"{name} not in {data_dir}")
    res = check_capture(path)
    assert res.bad_lines == 0
    p = res.parse
    assert p["bad_json"] == p["bad_field"] == p["bad_number"] == p["unknown_symbol"] == 0, p
    assert res.symbols
    for s in res.symbols:
        detail = f"{name} {s.name}: {s}"
        assert s.mismatches == 0, detail
        assert s.crossed == 0, detail
        assert s.gaps == 0 and s.resyncs_needed == 0, detail  # the captures are contiguous
        assert s.snapshots == 1 and s.diffs_applied > 0 and s.buffered >= 1, detail  # pre-snapshot diffs
    assert sum(s.ticker_checks for s in res.symbols) > 0
    assert res.ok


def test_verify_book_script_exits_zero(data_dir: Path) -> None:
    files = [str(data_dir / n) for n in FILES if (data_dir / n).is_file()]
    if not files:
        pytest.skip(f"no captures in {data_dir}")
    r = subprocess.run([sys.executable, str(SCRIPT), *files], capture_output=True, text=True, timeout=300,
                       cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK" in r.stdout and "BTCUSDT" in r.stdout


def test_verify_book_script_fails_on_a_missing_file(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "nope.gz")], capture_output=True,
                       text=True, timeout=60, cwd=REPO)
    assert r.returncode == 2 and "capture not found" in r.stderr


def test_verify_book_script_fails_on_a_corrupted_capture(data_dir: Path, tmp_path: Path) -> None:
    """A doctored bookTicker (whose u matches an applied diff) must be reported as a mismatch."""
    src = data_dir / "usdm_btcusdt_20240808_120s.lines.gz"
    if not src.is_file():
        pytest.skip(f"{src} absent")
    res = check_capture(src)
    assert res.symbols[0].ticker_checks > 0
    # find a ticker line that is checked: one whose u equals an applied diff's u
    with gzip.open(src) as f:
        lines = f.read().split(b"\n")
    diff_us = {ln.split(b'"u":')[1].split(b",")[0] for ln in lines if b"depthUpdate" in ln}
    for i, ln in enumerate(lines):
        if b"bookTicker" in ln and ln.split(b'"u":')[1].split(b",")[0] in diff_us:
            lines[i] = ln.replace(b'"B":"', b'"B":"9', 1)
            break
    bad = tmp_path / "doctored.lines"  # plain text: the reader must detect it by content
    bad.write_bytes(b"\n".join(lines))
    r = subprocess.run([sys.executable, str(SCRIPT), str(bad)], capture_output=True, text=True, timeout=300,
                       cwd=REPO)
    assert r.returncode == 1 and "mismatch BTCUSDT" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("name", FILES[:2])
def test_kernel_outputs_match_the_reference_on_real_data(data_dir: Path, name: str) -> None:
    """Every BOOK and FEATURES record of a real session against the slow pure-Python reference."""
    path = data_dir / name
    if not path.is_file():
        pytest.skip(f"{name} not in {data_dir}")
    parser = Parser()
    recs = np.zeros(1 << 16, MARKET.dtype)
    n = 0
    for ts, raw in read_capture(path):
        n += max(0, parser.parse(raw, ts, recs, n))
    recs = recs[:n]
    st = BookState(len(parser.symbols))
    ob = np.zeros(n, BOOK.dtype)
    of = np.zeros(n, FEATURES.dtype)
    k = st.process(recs, n, ob, of)
    ref = RefPipeline()
    ref.feed(recs)
    assert k == len(ref.outputs) > 100
    for i, (rb, rf) in enumerate(ref.outputs):
        b = ob[i]
        assert int(b["bid_px"]) == rb["bid_px"] and int(b["ask_qty"]) == rb["ask_qty"], i
        assert bool(b["flags"] & FLAG_BOOK_VALID) == rb["valid"] and int(b["last_id"]) == rb["last_id"], i
        bad = ~np.isclose(of[i]["values"], rf, rtol=1e-9, atol=1e-9)
        assert not bad.any(), (i, [(FEATURE_NAMES[j], of[i]["values"][j], rf[j])
                                   for j in np.flatnonzero(bad)])
