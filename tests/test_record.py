"""scripts/record.py against the local exchange: what it receives is written line for line (lossless), each
file starts with snapshots and replays on its own, and a replay of the recording rebuilds the exchange's
book exactly, through a dropped diff and a killed connection."""

from __future__ import annotations

import gzip
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from procs.book_check import check_capture
from procs.kernels.book import BookState
from procs.kernels.parse_json import ERR_NO_SPACE, Parser, SymbolTable, parse_fixed
from procs.sources.exchange import LocalExchange
from procs.sources.live import LiveOptions
from procs.sources.replay import read_capture, scan_symbols
from shm.records import BOOK, FEATURES, MARKET

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "record.py"
SYMBOLS = ["BTCUSDT", "ETHUSDT"]


def _recorder_module():  # scripts/ is not a package
    spec = importlib.util.spec_from_file_location("record_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Tee:
    """Keeps a copy of everything the recorder's source hands it."""

    def __init__(self, rec: object) -> None:
        self.got: list[tuple[int, bytes]] = []
        ingest = rec.ingest  # type: ignore[attr-defined]
        inner = ingest.poll

        def poll(out: list[tuple[int, bytes]]) -> int:
            n0 = len(out)
            n = inner(out)
            self.got.extend(out[n0:])
            return n

        ingest.poll = poll


def _replay_book(paths: list[Path]) -> tuple[BookState, SymbolTable]:
    symbols = SymbolTable(SYMBOLS, auto_add=False)
    parser = Parser(symbols)
    st = BookState(len(SYMBOLS))
    out = np.zeros(16384, MARKET.dtype)
    ob = np.zeros(16384, BOOK.dtype)
    of = np.zeros(16384, FEATURES.dtype)
    for p in paths:
        for ts, raw in read_capture(p):
            n = parser.parse(raw, ts, out, 0)
            assert n != ERR_NO_SPACE
            if n > 0:
                st.process(out, n, ob, of)
    return st, symbols


def _run(rec: object, seconds: float, during: object = None) -> None:
    buf: list[tuple[int, bytes]] = []
    end = time.monotonic() + seconds
    called = False
    while time.monotonic() < end:
        if rec.step(buf) == 0:  # type: ignore[attr-defined]
            rec.ingest.wait(0.005)  # type: ignore[attr-defined]
        if during is not None and not called and time.monotonic() > end - seconds / 2:
            called = True
            during()  # type: ignore[operator]


@pytest.mark.parametrize("market", ["spot", "usdm"])
def test_recording_is_lossless_and_replays_to_the_exchange_book(tmp_path: Path, market: str) -> None:
    mod = _recorder_module()
    with LocalExchange(symbols=SYMBOLS, market=market, seed=4, depth_interval_ms=50, rate_scale=2.0) as ex:
        opts = LiveOptions(market=market, symbols=SYMBOLS, ws_url=ex.ws_url, rest_url=ex.rest_url,
                           backoff_initial_s=0.05, backoff_max_s=0.1, snapshot_min_interval_s=0.05)
        rec = mod.Recorder(opts, tmp_path, rotate_s=1.5)
        tee = Tee(rec)
        try:
            _run(rec, 1.0)
            ex.drop_diff("BTCUSDT")
            _run(rec, 1.0, during=lambda: ex.close_connections())
            _run(rec, 1.5)
            ex.pause()
            _run(rec, 0.5)  # everything sent is received and written
            truth = {s: ex.truth(s) for s in SYMBOLS}
        finally:
            rec.close()
            ex.resume()
    files = rec.files
    assert len(files) >= 2, "rotation"
    # lossless: the files hold exactly what came in, in order, with its receive timestamps
    lines = [(ts, raw) for p in files for ts, raw in read_capture(p)]
    assert lines == tee.got
    assert rec.ingest.counters["gaps"] >= 1 and rec.ingest.counters["reconnects"] >= 1
    # every file starts its own sync: a snapshot of every symbol, before or among its first diffs
    for p in files:
        with gzip.open(p, "rb") as f:
            text = f.read()
        for s in SYMBOLS:
            assert f'"{s.lower()}@depthSnapshot"'.encode() in text, (p.name, s)
        assert scan_symbols(p) and set(scan_symbols(p)) == set(SYMBOLS)
        res = check_capture(p)
        assert res.ok and all(c.mismatches == 0 and c.crossed == 0 for c in res.symbols), res
        assert sum(c.ticker_checks for c in res.symbols) > 0 and all(c.snapshots >= 1 for c in res.symbols)
    # the recording, replayed, ends on the exchange's own book
    st, _ = _replay_book(files)
    for i, s in enumerate(SYMBOLS):
        last_u, bids, asks = truth[s]
        assert st.valid(i)
        assert int(st.sym_state[i, 1]) == last_u
        assert st.levels(i, 0) == [(parse_fixed(p) if isinstance(p, str) else p,
                                    parse_fixed(q) if isinstance(q, str) else q) for p, q in bids]
        assert st.levels(i, 1) == [(parse_fixed(p) if isinstance(p, str) else p,
                                    parse_fixed(q) if isinstance(q, str) else q) for p, q in asks]
    # epoch-ns receive stamps, increasing
    ts = [t for t, _ in lines]
    assert ts == sorted(ts) and abs(ts[0] - time.time_ns()) < 60e9


def test_record_script_runs_and_stops_cleanly(tmp_path: Path) -> None:
    with LocalExchange(symbols=["BTCUSDT"], market="spot", seed=1) as ex:
        r = subprocess.run([sys.executable, str(SCRIPT), "--symbols", "BTCUSDT", "--ws-url", ex.ws_url,
                            "--rest-url", ex.rest_url, "--out", str(tmp_path), "--duration", "1.5",
                            "--status-s", "0.5"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 0, r.stderr
    files = [Path(x) for x in r.stdout.split()]
    assert len(files) == 1 and files[0].is_file() and files[0].name.startswith("spot_btcusdt_")
    assert "messages" in r.stderr and "snapshots" in r.stderr
    assert check_capture(files[0]).ok


def test_record_script_refuses_bad_arguments() -> None:
    r = subprocess.run([sys.executable, str(SCRIPT), "--rotate-minutes", "0"], capture_output=True, text=True,
                       timeout=60, cwd=REPO)
    assert r.returncode == 2 and "--rotate-minutes" in r.stderr
