#!/usr/bin/env python3
"""Benchmark the paper exchange's on_book per BOOK record with 0, 10 and 100 resting orders.

The BOOK stream is replayed from the built-in simulator (default) or a `<ts_ns> <json>` capture,
through the real parser and book kernel. A jitted driver keeps the requested number of orders resting
(post-only limits spread over the 10 visible levels of both sides, at most 2 new per record, like a
quoting strategy; filled ones are replaced), and times each on_book call with CLOCK_MONOTONIC, so the
cost includes delivering those orders' messages and their reports. Prints p50 / p99 / p99.9 / max ns
per call after a warm-up, the resting orders actually held, and the timer's own cost.
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

from procs.kernels import paper as pp
from procs.kernels.book import BookState
from procs.kernels.parse_json import ERR_NO_SPACE, Parser, SymbolTable
from shm import nbops as tp
from shm.records import BOOK, FEATURES, FILL, FLAG_BOOK_VALID, MARKET

BATCH = 4096


def book_stream(messages, symbols: SymbolTable, bare_symbol: str | None = None) -> np.ndarray:  # type: ignore[no-untyped-def]
    """BOOK records of a message stream, as the book stage writes them."""
    parser = Parser(symbols, bare_symbol=bare_symbol)
    st = BookState(max(1, len(symbols)))
    st.warm_up()
    recs = np.zeros(BATCH, MARKET.dtype)
    ob = np.zeros(BATCH, BOOK.dtype)
    of = np.zeros(BATCH, FEATURES.dtype)
    parts: list[np.ndarray] = []
    n = 0
    for ts, raw in messages:
        k = parser.parse(raw, ts, recs, n)
        if k == ERR_NO_SPACE or n > BATCH - 1024:
            parts.append(ob[:st.process(recs, n, ob, of)].copy())
            n = 0
            k = parser.parse(raw, ts, recs, 0)
        n += max(k, 0)
    parts.append(ob[:st.process(recs, n, ob, of)].copy())
    return np.concatenate(parts).astype(BOOK.dtype)  # concatenate drops the layout's padding


def from_simulator(seconds: float, symbols: list[str], seed: int) -> np.ndarray:
    from procs.sources.simulator import SimParams, Simulator

    sim = Simulator(SimParams(symbols=symbols, seed=seed, depth_interval_ms=100, anomalies_per_min=2.0))

    def window():  # type: ignore[no-untyped-def]
        t0 = None
        for ts, raw in sim.messages():
            t0 = ts if t0 is None else t0
            if ts - t0 >= seconds * 1e9:
                return
            yield ts, raw

    return book_stream(window(), SymbolTable(symbols))


def from_capture(path: str) -> np.ndarray:
    from procs.sources.replay import CaptureReader, scan_symbols

    names = scan_symbols(path)
    return book_stream(iter(CaptureReader(path)), SymbolTable(names, auto_add=False),
                       names[0] if len(names) == 1 else None)


@njit  # cffi's clock is a dynamic global: not cacheable
def _timer_cost(k: int) -> int:
    """Median ns of an empty timed region."""
    d = np.empty(k, np.int64)
    for i in range(k):
        t0 = tp.now_ns()
        d[i] = tp.now_ns() - t0
    return np.int64(np.median(d))


@njit  # cffi's clock is a dynamic global: not cacheable
def _drive(recs, orders, msgs, books, glob, params, out, target: int, lat, resting) -> None:
    cid = 1
    for i in range(recs.shape[0]):
        b = recs[i]
        t0 = tp.now_ns()
        pp.on_book(orders, msgs, books, glob, params, b, out, 0)
        lat[i] = tp.now_ns() - t0
        resting[i] = glob[pp.G_RESTING]
        if not (b.flags & FLAG_BOOK_VALID):
            continue
        for _ in range(2):  # replenish, as a strategy would after the exchange step
            if glob[pp.G_RESTING] + glob[pp.G_MSG_TAIL] - glob[pp.G_MSG_HEAD] >= target:
                break
            side = cid & 1
            lvl = (cid >> 1) % 10
            p = b.bid_pxs[lvl] if side == 0 else b.ask_pxs[lvl]
            if p <= 0:
                break
            pp.submit(msgs, glob, pp.ACTION_NEW, cid, b.symbol, 0, side, pp.OTYPE_LIMIT, True, p, 1000000,
                      b.exch_ts_ms, (b.bid_px + b.ask_px) // 2, params[pp.PP_LATENCY_MS])
            cid += 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--capture", help="replay this capture instead of the simulator")
    ap.add_argument("--seconds", type=float, default=120.0, help="simulated seconds (default: 120)")
    ap.add_argument("--symbols", default="BTCUSDT,ETHUSDT", help="simulated symbols (default: BTCUSDT,ETHUSDT)")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--latency-ms", type=float, default=5.0, help="order latency, exchange ms (default: 5)")
    ap.add_argument("--repeat", type=int, default=5, help="passes over the stream per case (default: 5)")
    ap.add_argument("--warmup", type=int, default=2000, help="records not timed at the start of a pass")
    args = ap.parse_args()

    t = time.perf_counter()
    if args.capture:
        recs = from_capture(args.capture)
        source = args.capture
    else:
        symbols = [s for s in args.symbols.split(",") if s]
        recs = from_simulator(args.seconds, symbols, args.seed)
        source = f"simulator seed={args.seed} seconds={args.seconds:g} symbols={','.join(symbols)}"
    n_sym = int(recs["symbol"].max()) + 1
    trades = float(np.mean(recs["trade_qty"] != 0))
    print(f"{source}: {len(recs)} BOOK records ({trades:.0%} with a trade) in {time.perf_counter() - t:.1f} s")
    params = pp.params_from(args.latency_ms, -0.5, 4.0)
    out = np.zeros(256, FILL.dtype)
    timer = _timer_cost(100_000)
    print(f"timer cost (empty timed region, median): {timer} ns; numbers below include it")
    print(f"{'resting':>8} {'held':>6} {'p50 ns':>8} {'p99 ns':>8} {'p99.9 ns':>9} {'max ns':>8} {'mean ns':>8}"
          f" {'fills':>7}")
    for target in (0, 10, 100):
        lats: list[np.ndarray] = []
        held: list[np.ndarray] = []
        fills = 0
        for _ in range(args.repeat + 1):  # the first pass compiles / warms caches and is dropped
            orders, msgs, books, glob = pp.alloc(n_sym, max_orders=1024, max_msgs=4096)
            lat = np.zeros(len(recs), np.int64)
            resting = np.zeros(len(recs), np.int64)
            _drive(recs, orders, msgs, books, glob, params, out, target, lat, resting)
            skip = min(args.warmup, len(recs) // 2)
            lats.append(lat[skip:])
            held.append(resting[skip:])
            fills = int(glob[pp.G_FILLS])
        a = np.concatenate(lats[1:])
        h = np.concatenate(held[1:])
        p50, p99, p999 = np.percentile(a, [50, 99, 99.9])
        print(f"{target:>8} {h.mean():>6.1f} {p50:>8.0f} {p99:>8.0f} {p999:>9.0f} {a.max():>8} {a.mean():>8.0f}"
              f" {fills:>7}")
    la = os.getloadavg()
    print(f"load average: {la[0]:.2f} {la[1]:.2f} {la[2]:.2f} ({os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
