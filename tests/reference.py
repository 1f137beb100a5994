"""Slow, obvious pure-Python references for the book kernel and the features (test-only).

`RefPipeline` consumes the same MARKET records as `procs.kernels.book.BookState` and produces the
same BOOK / FEATURES outputs, written the plain way: dict books, the sync rules as `if`s, every
rolling feature recomputed from the full list of past events at every update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from procs.kernels.features import DEPTH_A, DEPTH_B, HIST_CAP, HORIZONS_MS, TAU_LONG_MS, TAU_SHORT_MS
from shm.records import (
    FLAG_ASK,
    FLAG_BUYER_MAKER,
    FLAG_LAST_IN_MESSAGE,
    FLAG_SNAPSHOT_BEGIN,
    FLAG_SNAPSHOT_END,
    KIND_DEPTH,
    KIND_DEPTH_EMPTY,
    KIND_SNAPSHOT,
    KIND_TRADE,
    MARKET_SPOT,
    N_FEATURES,
    PRICE_SCALE,
    QTY_SCALE,
)

EMPTY, SNAPSHOT, SYNCING, LIVE = 0, 1, 2, 3


@dataclass
class RefSymbol:
    status: int = EMPTY
    last: int = 0
    bids: dict[int, int] = field(default_factory=dict)
    asks: dict[int, int] = field(default_factory=dict)
    buffer: list[list[dict]] = field(default_factory=list)
    t: int = 0
    trade_px: int = 0
    trade_qty: int = 0
    # feature history
    ofi: list[tuple[int, float]] = field(default_factory=list)
    r2: list[tuple[int, float]] = field(default_factory=list)
    trades: list[tuple[int, float, float]] = field(default_factory=list)
    hist: list[tuple[int, float]] = field(default_factory=list)
    prev_top: tuple[int, float, int, float] | None = None
    prev_mid: float = 0.0
    counters: dict[str, int] = field(default_factory=lambda: {"diffs_applied": 0, "gaps": 0, "stale": 0,
                                                              "buffered": 0, "crossed": 0, "snapshots": 0})


def decide(market: int, status: int, last: int, first: int, u: int, pu: int) -> str:
    if status in (EMPTY, SNAPSHOT):
        return "buffer"
    if market == MARKET_SPOT:
        if status == SYNCING:
            if u <= last:
                return "stale"
            return "apply" if first <= last + 1 <= u else "gap"
        if first == last + 1:
            return "apply"
        return "stale" if u <= last else "gap"
    if status == SYNCING:
        if u < last:
            return "stale"
        return "apply" if first <= last <= u else "gap"
    if pu == last:
        return "apply"
    return "stale" if u <= last else "gap"


def _ew(events: list[tuple[int, float]], t: int, tau: float) -> float:
    return sum(x * math.exp(-(t - ti) / tau) for ti, x in events)


class RefPipeline:
    """Reference book + features over MARKET records; `outputs` collects (book dict, features array)."""

    def __init__(self) -> None:
        self.syms: dict[int, RefSymbol] = {}
        self.msg: list[dict] = []
        self.outputs: list[tuple[dict, np.ndarray]] = []

    def feed(self, recs: np.ndarray) -> None:
        for r in recs:
            d = {name: int(r[name]) for name in recs.dtype.names}
            self.msg.append(d)
            if d["flags"] & FLAG_LAST_IN_MESSAGE:
                msg, self.msg = self.msg, []
                self._message(msg)

    # -- book ----------------------------------------------------------------------------------------
    def _apply_levels(self, st: RefSymbol, msg: list[dict]) -> None:
        for d in msg:
            if d["kind"] != KIND_DEPTH:
                continue
            side = st.asks if d["flags"] & FLAG_ASK else st.bids
            if d["qty"]:
                side[d["price"]] = d["qty"]
            else:
                side.pop(d["price"], None)

    def _message(self, msg: list[dict]) -> None:
        d0 = msg[0]
        st = self.syms.setdefault(d0["symbol"], RefSymbol())
        if d0["exch_ts_ms"] > 0:
            st.t = max(st.t, d0["exch_ts_ms"])
        kind = d0["kind"]
        if kind in (KIND_DEPTH, KIND_DEPTH_EMPTY):
            act = decide(d0["market"], st.status, st.last, d0["first_id"], d0["last_id"], d0["prev_id"])
            if act == "buffer":
                st.counters["buffered"] += 1
                st.buffer.append(msg)
            elif act == "stale":
                st.counters["stale"] += 1
            elif act == "gap":
                if st.status == LIVE:
                    st.counters["gaps"] += 1
                st.status = EMPTY
                st.counters["buffered"] += 1
                st.buffer = [msg]
                self._emit(d0["symbol"], st, msg[-1])
            else:
                self._apply_levels(st, msg)
                st.last = d0["last_id"]
                st.status = LIVE
                st.counters["diffs_applied"] += 1
                self._emit(d0["symbol"], st, msg[-1])
        elif kind == KIND_SNAPSHOT:
            if not d0["flags"] & FLAG_SNAPSHOT_BEGIN:
                return
            if st.status == LIVE and d0["last_id"] <= st.last:
                return
            assert msg[-1]["flags"] & FLAG_SNAPSHOT_END
            st.bids, st.asks = {}, {}
            for d in msg:
                if d["qty"] > 0:
                    (st.asks if d["flags"] & FLAG_ASK else st.bids)[d["price"]] = d["qty"]
            st.last = d0["last_id"]
            st.status = SYNCING
            st.counters["snapshots"] += 1
            buffered, st.buffer = st.buffer, []
            for i, m in enumerate(buffered):
                b0 = m[0]
                act = decide(b0["market"], st.status, st.last, b0["first_id"], b0["last_id"], b0["prev_id"])
                if act == "gap":
                    if st.status == LIVE:
                        st.counters["gaps"] += 1
                    st.status = EMPTY
                    st.buffer = buffered[i:]
                    break
                if act == "apply":
                    self._apply_levels(st, m)
                    st.last = b0["last_id"]
                    st.status = LIVE
                    st.counters["diffs_applied"] += 1
                else:
                    st.counters["stale"] += 1
            self._emit(d0["symbol"], st, msg[-1])
        elif kind == KIND_TRADE:
            for d in msg:
                sq = -d["qty"] if d["flags"] & FLAG_BUYER_MAKER else d["qty"]
                st.trade_px = d["price"]
                st.trade_qty += sq
                st.trades.append((st.t, d["price"] / PRICE_SCALE, sq / QTY_SCALE))
            self._emit(d0["symbol"], st, msg[-1])

    # -- emission ------------------------------------------------------------------------------------
    def _emit(self, sym: int, st: RefSymbol, last_rec: dict) -> None:
        bids = sorted(st.bids.items(), reverse=True)[:DEPTH_B]
        asks = sorted(st.asks.items())[:DEPTH_B]
        crossed = st.status >= SYNCING and bids and asks and bids[0][0] >= asks[0][0]
        if crossed:
            st.counters["crossed"] += 1
        valid = st.status >= SYNCING and not crossed
        book = {"symbol": sym, "valid": valid, "bid_px": bids[0][0] if bids else 0,
                "bid_qty": bids[0][1] if bids else 0, "ask_px": asks[0][0] if asks else 0,
                "ask_qty": asks[0][1] if asks else 0, "last_id": st.last, "exch_ts_ms": st.t,
                "trade_px": st.trade_px, "trade_qty": st.trade_qty, "t_origin_ns": last_rec["t_origin_ns"]}
        st.trade_qty = 0
        self.outputs.append((book, self._features(st, valid, bids, asks)))

    def _features(self, st: RefSymbol, valid: bool, bids: list, asks: list) -> np.ndarray:
        t = st.t
        v = np.zeros(N_FEATURES)
        ok = valid and bool(bids) and bool(asks)
        if ok:
            (bp, bq), (ap, aq) = bids[0], asks[0]
            mid_fx = (bp + ap) / 2
            mid = mid_fx / PRICE_SCALE
            v[0] = mid
            v[1] = (ap - bp) / mid_fx * 1e4
            if bq + aq > 0:
                v[2] = ((bp * aq + ap * bq) / (bq + aq) - mid_fx) / mid_fx * 1e4
                v[3] = (bq - aq) / (bq + aq)
            for k, depth in ((4, DEPTH_A), (5, DEPTH_B)):
                sb = sum(q for _, q in bids[:depth])
                sa = sum(q for _, q in asks[:depth])
                v[k] = (sb - sa) / (sb + sa) if sb + sa else 0.0
            if st.prev_top is not None:
                pbp, pbq, pap, paq = st.prev_top
                e = ((bq if bp >= pbp else 0) - (pbq if bp <= pbp else 0)
                     - (aq if ap <= pap else 0) + (paq if ap >= pap else 0)) / QTY_SCALE
                v[6] = e
                st.ofi.append((t, e))
            st.prev_top = (bp, bq, ap, aq)
            if st.prev_mid > 0:
                st.r2.append((t, (1e4 * math.log(mid / st.prev_mid)) ** 2))
            st.prev_mid = mid
            if not st.hist or st.hist[-1][1] != mid:
                st.hist.append((t, mid))
            kept = st.hist[-HIST_CAP:]
            for k, h in enumerate(HORIZONS_MS):
                past = [m for tp, m in kept if tp <= t - h]
                m0 = past[-1] if past else (kept[0][1] if len(st.hist) > HIST_CAP else 0.0)
                if m0 > 0:
                    v[8 + k] = 1e4 * math.log(mid / m0)
        else:
            st.prev_top = None
        v[7] = _ew(st.ofi, t, TAU_SHORT_MS)
        v[11] = math.sqrt(_ew(st.r2, t, TAU_LONG_MS))
        v[12] = _ew([(ti, q) for ti, _, q in st.trades], t, TAU_SHORT_MS)
        qsum = _ew([(ti, abs(q)) for ti, _, q in st.trades], t, TAU_LONG_MS)
        if qsum > 0:
            v[13] = _ew([(ti, q) for ti, _, q in st.trades], t, TAU_LONG_MS) / qsum
            if ok:
                vwap = _ew([(ti, p * abs(q)) for ti, p, q in st.trades], t, TAU_LONG_MS) / qsum
                v[14] = (vwap - v[0]) / v[0] * 1e4
        v[15] = _ew([(ti, 1.0) for ti, _, _ in st.trades], t, TAU_LONG_MS) / (TAU_LONG_MS / 1000.0)
        return v
