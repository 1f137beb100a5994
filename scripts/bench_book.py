#!/usr/bin/env python3
"""Benchmark the parser and the book kernel on a real capture (not a test; a few seconds of CPU).

Reports, best of --repeat runs, in CPU time of this thread (so a busy neighbour on a shared core
inflates the numbers less than wall time would):
- level store: ns per level change (set_level alone over every snapshot level and diff level);
- book kernel: ns per input record and per level change, everything included (sync checks, trades,
  tickers skipped, BOOK + FEATURES emission with the features), batches of --batch records;
- parser: µs per message, by message type.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from numba import njit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from procs.kernels import levels as lv
from procs.kernels.book import BookState
from procs.kernels.parse_json import Parser
from procs.sources.replay import read_capture
from shm.records import BOOK, FEATURES, FLAG_ASK, KIND_DEPTH, KIND_SNAPSHOT, MARKET

DEFAULT = Path(os.environ.get("TICKPIPE_DATA", Path(__file__).resolve().parents[2] / "shared/data/binance"))


@njit(cache=True)
def _apply_all(side: np.ndarray, key: np.ndarray, qty: np.ndarray, blk: np.ndarray, dirs: np.ndarray,
               meta: np.ndarray) -> None:
    for i in range(key.shape[0]):
        lv.set_level(blk, dirs, meta, side[i], key[i], qty[i])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("capture", nargs="?", default=str(DEFAULT / "usdm_btcusdt_20240808_120s.lines.gz"),
                    help="capture to replay (default: the shared BTCUSDT USD-M capture)")
    ap.add_argument("--repeat", type=int, default=5, help="runs per measurement, best kept (default: 5)")
    ap.add_argument("--batch", type=int, default=1024, help="records per kernel call (default: 1024)")
    args = ap.parse_args()
    if not Path(args.capture).is_file():
        ap.error(f"capture not found: {args.capture}")

    msgs = list(read_capture(args.capture))
    parser = Parser()
    recs = np.zeros(1 << 20, MARKET.dtype)
    n = 0
    for ts, raw in msgs:
        n += max(0, parser.parse(raw, ts, recs, n))
    recs = recs[:n]

    # parser, by message type
    print(f"{args.capture}: {len(msgs)} messages, {n} records")
    scratch = np.zeros(8192, MARKET.dtype)
    for label, tag in (("bookTicker", b"bookTicker"), ("trade", b'"e":"trade"'), ("aggTrade", b"aggTrade"),
                       ("depthUpdate", b"depthUpdate")):
        sel = [(ts, raw) for ts, raw in msgs if tag in raw]
        if not sel:
            continue
        best = min(_timed(lambda sel=sel: [parser.parse(raw, ts, scratch, 0) for ts, raw in sel])
                   for _ in range(args.repeat))
        print(f"  parse {label:12s} {best / len(sel) / 1e3:7.2f} us/message   ({len(sel)} messages)")

    # level store alone
    lvl = recs[(recs["kind"] == KIND_DEPTH) | (recs["kind"] == KIND_SNAPSHOT)]
    side = ((lvl["flags"] & FLAG_ASK) != 0).astype(np.int64)
    key = np.where(side == 1, -lvl["price"], lvl["price"]).astype(np.int64)
    qty = lvl["qty"].astype(np.int64)
    _apply_all(side[:10], key[:10], qty[:10], *lv.alloc(2, 8192))
    runs = []
    for _ in range(args.repeat):
        blk, dirs, meta = lv.alloc(2, 8192)
        runs.append(_timed(lambda: _apply_all(side, key, qty, blk, dirs, meta)))  # noqa: B023
    print(f"  level store  {min(runs) / len(key):7.1f} ns per level change   ({len(key)} changes, "
          f"{int(meta[0, lv.M_LIVE])}/{int(meta[1, lv.M_LIVE])} levels at the end)")

    # whole kernel
    ob = np.zeros(args.batch, BOOK.dtype)
    of = np.zeros(args.batch, FEATURES.dtype)
    BookState(1).warm_up()
    runs = []
    for _ in range(args.repeat):
        st = BookState(max(1, len(parser.symbols)))

        def run(st: BookState = st) -> None:
            for i in range(0, n, args.batch):
                st.process(recs[i:i + args.batch], min(args.batch, n - i), ob, of)

        runs.append(_timed(run))
    c = st.counts()
    best = min(runs)
    print(f"  book kernel  {best / n:7.1f} ns per record, {best / c['levels_applied']:7.1f} ns per level "
          f"change (all included: {c['diffs_applied']} diffs, {c['trades']} trades, "
          f"{c['emitted']} BOOK+FEATURES)")
    return 0


def _timed(fn: object) -> int:
    t = time.thread_time_ns()
    fn()  # type: ignore[operator]
    return time.thread_time_ns() - t


if __name__ == "__main__":
    sys.exit(main())
