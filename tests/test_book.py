"""Book kernel: Binance sync rules on crafted diffs, buffering, gaps and resync, the level store, features."""

from __future__ import annotations

import random

import numpy as np
import orjson
import pytest
from reference import RefPipeline

from procs.kernels import levels as lv
from procs.kernels.book import (
    C_BUFFER_EVICTED,
    C_BUFFER_OVERFLOW,
    C_BUFFERED,
    C_CROSSED,
    C_DELETE_UNKNOWN,
    C_DIFFS_APPLIED,
    C_GAPS,
    C_RESYNCS_NEEDED,
    C_SNAPSHOTS,
    C_SNAPSHOTS_STALE,
    C_STALE,
    S_BUF_LEN,
    S_NEED_SNAPSHOT,
    ST_EMPTY,
    ST_LIVE,
    ST_SYNCING,
    BookState,
)
from procs.kernels.parse_json import Parser, SymbolTable
from shm.features import FEATURE_INDEX, FEATURE_NAMES
from shm.records import (
    BOOK,
    FEATURES,
    FLAG_BOOK_VALID,
    FLAG_FEATURES_WARM,
    KIND_BOOK,
    KIND_FEATURES,
    MARKET,
    N_FEATURES,
)

P = 10**8  # fixed-point scale


def px(v: float | str) -> int:
    return round(float(v) * P)


def dec(v: float | str) -> str:
    """A Binance-style decimal string (floats rounded to 8 places, as the exchange never sends more)."""
    return v if isinstance(v, str) else f"{v:.8f}"


class Harness:
    """Crafted Binance JSON → real parser → book kernel; keeps every BOOK / FEATURES output."""

    def __init__(self, symbols: tuple[str, ...] = ("BTCUSDT",), **book_kw: int) -> None:
        self.parser = Parser(SymbolTable(symbols))
        self.book = BookState(len(symbols), **book_kw)
        self.recs = np.zeros(4096, MARKET.dtype)
        self.books: list[np.void] = []
        self.feats: list[np.void] = []
        self.all_recs: list[np.ndarray] = []

    def send(self, msg: dict, sym: str = "btcusdt", stream: str = "depth") -> int:
        n = self.parser.parse(orjson.dumps({"stream": f"{sym}@{stream}", "data": msg}), len(self.all_recs),
                              self.recs, 0)
        assert n > 0, msg
        self.all_recs.append(self.recs[:n].copy())
        ob = np.zeros(n, BOOK.dtype)
        of = np.zeros(n, FEATURES.dtype)
        k = self.book.process(self.recs, n, ob, of)
        self.books.extend(ob[:k])
        self.feats.extend(of[:k])
        return k

    def snapshot(self, last: int, bids: list, asks: list, sym: str = "btcusdt", futures: bool = False) -> int:
        d = {"lastUpdateId": last, "bids": [[dec(p), dec(q)] for p, q in bids],
             "asks": [[dec(p), dec(q)] for p, q in asks]}
        if futures:
            d["E"] = d["T"] = 1
        return self.send(d, sym, "depthSnapshot")

    def diff(self, first: int, last: int, bids: list = (), asks: list = (), pu: int | None = None,
             sym: str = "btcusdt", t_ms: int = 1) -> int:
        d = {"e": "depthUpdate", "E": t_ms, "s": sym.upper(), "U": first, "u": last,
             "b": [[dec(p), dec(q)] for p, q in bids], "a": [[dec(p), dec(q)] for p, q in asks]}
        if pu is not None:
            d["pu"] = pu
        return self.send(d, sym, "depth@100ms")

    def trade(self, price: float, qty: float, buyer_maker: bool, t_ms: int, sym: str = "btcusdt") -> int:
        return self.send({"e": "trade", "E": t_ms, "s": sym.upper(), "t": 1, "p": dec(price), "q": dec(qty),
                          "m": buyer_maker}, sym, "trade")

    def c(self, idx: int, s: int = 0) -> int:
        return int(self.book.counters[s, idx])

    def top(self, s: int = 0) -> tuple[int, int, int, int]:
        return self.book.top(s)


SNAP_BIDS = [("100.0", "1"), ("99.0", "2"), ("98.0", "3")]
SNAP_ASKS = [("101.0", "1"), ("102.0", "2")]


# -- spot rules ----------------------------------------------------------------------------------------
def test_spot_first_diff_rule_and_chain() -> None:
    h = Harness()
    h.snapshot(100, SNAP_BIDS, SNAP_ASKS)
    assert h.book.status(0) == ST_SYNCING and h.book.valid(0)
    assert h.diff(90, 100, bids=[("100.0", "9")]) == 0  # u <= lastUpdateId: already in the snapshot
    assert h.c(C_STALE) == 1 and h.top()[1] == px(1)
    assert h.diff(95, 105, bids=[("100.0", "5")]) == 1  # U <= 101 <= u: the first diff to apply
    assert h.book.status(0) == ST_LIVE and h.top() == (px(100), px(5), px(101), px(1))
    assert h.diff(106, 110, asks=[("101.0", "0")]) == 1  # U == previous u + 1
    assert h.top()[2:] == (px(102), px(2))
    assert h.c(C_DIFFS_APPLIED) == 2 and h.c(C_GAPS) == 0
    b = h.books[-1]
    assert b["kind"] == KIND_BOOK and b["flags"] & FLAG_BOOK_VALID and b["last_id"] == 110


def test_spot_first_diff_exactly_next_id() -> None:
    h = Harness()
    h.snapshot(100, SNAP_BIDS, SNAP_ASKS)
    assert h.diff(101, 103, bids=[("99.5", "1")]) == 1
    assert h.c(C_DIFFS_APPLIED) == 1 and h.book.levels(0, 0)[1] == (px(99.5), px(1))


def test_spot_first_diff_too_new_needs_a_new_snapshot() -> None:
    h = Harness()
    h.snapshot(100, SNAP_BIDS, SNAP_ASKS)
    h.diff(102, 105)  # 101 was lost between snapshot and stream: this snapshot cannot be used
    assert h.book.status(0) == ST_EMPTY and not h.book.valid(0)
    assert h.c(C_RESYNCS_NEEDED) == 1 and h.c(C_GAPS) == 0  # not a gap in a live book
    assert h.book.sym_state[0, S_NEED_SNAPSHOT] == 1
    assert not h.books[-1]["flags"] & FLAG_BOOK_VALID


def test_spot_gap_invalidates_then_resync() -> None:
    h = Harness()
    h.snapshot(100, SNAP_BIDS, SNAP_ASKS)
    h.diff(101, 105, bids=[("100.0", "5")])
    assert h.diff(107, 110, bids=[("100.0", "7")]) == 1  # 106 missing: a gap
    assert h.c(C_GAPS) == 1 and h.c(C_RESYNCS_NEEDED) == 1
    assert h.book.status(0) == ST_EMPTY and not h.books[-1]["flags"] & FLAG_BOOK_VALID
    assert h.top()[1] == px(5)  # the gap diff is not applied, it is buffered for the next snapshot
    assert h.diff(111, 112, bids=[("100.0", "8")]) == 0  # buffered while invalid, no output
    h.snapshot(108, [("100.0", "6")], SNAP_ASKS)  # resync: 107..110 bridges 109, then 111..112
    assert h.book.status(0) == ST_LIVE and h.book.valid(0)
    assert h.top()[:2] == (px(100), px(8)) and h.books[-1]["last_id"] == 112
    assert h.c(C_SNAPSHOTS) == 2 and h.c(C_DIFFS_APPLIED) == 3 and h.book.sym_state[0, S_NEED_SNAPSHOT] == 0
    assert h.books[-1]["flags"] & FLAG_BOOK_VALID


def test_spot_reordered_diff_is_a_gap() -> None:
    h = Harness()
    h.snapshot(100, SNAP_BIDS, SNAP_ASKS)
    h.diff(101, 105)
    h.diff(111, 115)  # arrives before 106..110
    assert h.c(C_GAPS) == 1
    h.diff(106, 110)  # late: buffered (the book waits for a snapshot), not applied
    assert h.book.status(0) == ST_EMPTY and h.c(C_DIFFS_APPLIED) == 1


# -- futures rules -------------------------------------------------------------------------------------
def test_futures_first_diff_may_end_at_last_update_id() -> None:
    h = Harness()
    h.snapshot(100, SNAP_BIDS, SNAP_ASKS, futures=True)
    assert h.diff(80, 99, pu=79, bids=[("100.0", "9")]) == 0  # u < lastUpdateId: dropped
    assert h.c(C_STALE) == 1
    assert h.diff(95, 100, pu=94, bids=[("100.0", "4")]) == 1  # U <= 100 <= u, u == lastUpdateId
    assert h.book.status(0) == ST_LIVE and h.top()[1] == px(4)
    assert h.diff(101, 120, pu=100, asks=[("101.5", "1")]) == 1  # pu == previous u
    assert h.diff(125, 130, pu=120) == 1  # U need not be u + 1 on futures, only pu matters
    assert h.c(C_DIFFS_APPLIED) == 3 and h.c(C_GAPS) == 0 and h.book.levels(0, 1)[1] == (px(101.5), px(1))


def test_futures_pu_break_is_a_gap() -> None:
    h = Harness()
    h.snapshot(100, SNAP_BIDS, SNAP_ASKS, futures=True)
    h.diff(95, 105, pu=94)
    h.diff(110, 115, pu=108)  # pu != 105
    assert h.c(C_GAPS) == 1 and h.book.status(0) == ST_EMPTY
    assert not h.books[-1]["flags"] & FLAG_BOOK_VALID


def test_futures_snapshot_older_than_stream() -> None:
    h = Harness()
    h.snapshot(100, SNAP_BIDS, SNAP_ASKS, futures=True)
    h.diff(102, 105, pu=101)  # U > lastUpdateId and pu != lastUpdateId: 101 is missing, does not bridge
    assert h.c(C_RESYNCS_NEEDED) == 1 and h.book.status(0) == ST_EMPTY


def test_futures_snapshot_exactly_between_two_diffs() -> None:
    # the snapshot holds everything up to the diff ending at 100; the next diff starts at 101 with pu == 100
    h = Harness()
    h.snapshot(100, SNAP_BIDS, SNAP_ASKS, futures=True)
    assert h.diff(101, 105, pu=100, bids=[("100.0", "3")]) == 1
    assert h.book.status(0) == ST_LIVE and h.c(C_RESYNCS_NEEDED) == 0 and h.top()[1] == px(3)


def test_empty_diff_keeps_the_chain() -> None:
    h = Harness()
    h.snapshot(100, SNAP_BIDS, SNAP_ASKS, futures=True)
    h.diff(95, 105, pu=94)
    assert h.diff(106, 107, pu=105) == 1  # no levels: KIND_DEPTH_EMPTY still advances u
    assert h.diff(108, 109, pu=107) == 1
    assert h.c(C_GAPS) == 0 and h.books[-1]["last_id"] == 109


# -- buffering ----------------------------------------------------------------------------------------
def test_diffs_before_the_snapshot_are_buffered_then_applied() -> None:
    h = Harness()
    assert h.diff(90, 95, pu=89, bids=[("100.0", "7")]) == 0  # stale once the snapshot comes
    assert h.diff(96, 103, pu=95, bids=[("100.0", "5")]) == 0  # bridges 100
    assert h.diff(104, 110, pu=103, asks=[("101.0", "0")]) == 0
    assert h.c(C_BUFFERED) == 3 and not h.books
    assert h.snapshot(100, SNAP_BIDS, SNAP_ASKS, futures=True) == 1  # one output for snapshot + replay
    assert h.c(C_STALE) == 1 and h.c(C_DIFFS_APPLIED) == 2
    assert h.top() == (px(100), px(5), px(102), px(2)) and h.books[-1]["last_id"] == 110
    assert h.book.status(0) == ST_LIVE and h.books[-1]["flags"] & FLAG_BOOK_VALID
    assert h.diff(111, 112, pu=110) == 1  # the live stream continues the replayed chain


def test_buffer_evicts_oldest_whole_messages() -> None:
    h = Harness(buffer=4)
    for k in range(4):  # 2 records each: the buffer holds two messages
        h.diff(10 * k + 1, 10 * k + 10, bids=[("1", "1"), ("2", "1")])
    assert h.c(C_BUFFERED) == 4 and h.c(C_BUFFER_EVICTED) == 2
    h.snapshot(25, SNAP_BIDS, SNAP_ASKS)  # spot: 21..30 bridges 26, then 31..40
    assert h.c(C_DIFFS_APPLIED) == 2 and h.book.valid(0)


def test_message_bigger_than_the_buffer_is_dropped() -> None:
    h = Harness(buffer=2)
    h.diff(1, 10, bids=[("1", "1"), ("2", "1"), ("3", "1")])
    assert h.c(C_BUFFER_OVERFLOW) == 1 and h.book.sym_state[0, S_BUF_LEN] == 0


# -- levels -------------------------------------------------------------------------------------------
def test_delete_of_unknown_level_is_normal() -> None:
    h = Harness()
    h.snapshot(100, SNAP_BIDS, SNAP_ASKS)
    assert h.diff(101, 102, bids=[("50.0", "0")], asks=[("500.0", "0")]) == 1
    assert h.c(C_DELETE_UNKNOWN) == 2 and h.c(C_GAPS) == 0 and h.book.valid(0)
    assert h.book.levels(0, 0) == [(px(p), px(q)) for p, q in SNAP_BIDS]


def test_snapshot_replaces_the_book_and_empty_snapshot() -> None:
    h = Harness()
    h.snapshot(100, SNAP_BIDS, SNAP_ASKS)
    h.diff(101, 102, bids=[("99.5", "1")])
    h.snapshot(90, [], [])  # live and newer than this snapshot: ignored
    assert h.c(C_SNAPSHOTS_STALE) == 1 and len(h.book.levels(0, 0)) == 4
    h.snapshot(200, [], [])  # empty sides: still a snapshot, the book is empty and valid
    assert h.c(C_SNAPSHOTS) == 2 and h.book.levels(0, 0) == [] and h.book.levels(0, 1) == []
    assert h.book.valid(0) and h.books[-1]["bid_px"] == 0 and h.books[-1]["last_id"] == 200


def test_crossed_book_is_counted_and_invalid() -> None:
    h = Harness()
    h.snapshot(100, SNAP_BIDS, SNAP_ASKS)
    h.diff(101, 102, bids=[("101.5", "1")])
    assert h.c(C_CROSSED) == 1 and not h.book.valid(0) and not h.books[-1]["flags"] & FLAG_BOOK_VALID
    h.diff(103, 104, bids=[("101.5", "0")])
    assert h.book.valid(0) and h.books[-1]["flags"] & FLAG_BOOK_VALID


def test_symbols_are_independent() -> None:
    h = Harness(("BTCUSDT", "ETHUSDT"))
    h.snapshot(100, SNAP_BIDS, SNAP_ASKS, sym="btcusdt")
    h.diff(5, 6, bids=[("10", "1")], sym="ethusdt")
    h.diff(101, 102, bids=[("100.0", "3")], sym="btcusdt")
    assert h.book.status(1) == ST_EMPTY and h.c(C_BUFFERED, 1) == 1
    assert h.top(0)[1] == px(3) and h.top(1) == (0, 0, 0, 0)
    assert [int(b["symbol"]) for b in h.books] == [0, 0]


def test_levels_against_a_dict() -> None:
    """Random inserts / updates / deletes, including block splits and removals, against a dict."""
    rng = random.Random(7)
    blk, dirs, meta = lv.alloc(2, 4096)
    ref: list[dict[int, int]] = [{}, {}]
    keys = np.zeros(5000, np.int64)
    qtys = np.zeros(5000, np.int64)
    for step in range(30000):
        bs = rng.randrange(2)
        k = rng.randrange(1500) if rng.random() < 0.8 else rng.randrange(-10**12, 10**12)
        q = 0 if rng.random() < 0.4 else rng.randrange(1, 10**9)
        code = lv.set_level(blk, dirs, meta, bs, k, q)
        if q == 0:
            assert code == (lv.SET_OK if k in ref[bs] else lv.SET_UNKNOWN_DELETE)
            ref[bs].pop(k, None)
        else:
            assert code == lv.SET_OK
            ref[bs][k] = q
        if step % 997 == 0 or step == 29999:
            for s in range(2):
                m = lv.top_levels(blk, dirs, meta, s, keys, qtys, 5000)
                assert list(zip(keys[:m].tolist(), qtys[:m].tolist(), strict=True)) == \
                    sorted(ref[s].items(), reverse=True)
                assert meta[s, lv.M_LIVE] == len(ref[s])
                if ref[s]:
                    assert lv.best(blk, dirs, meta, s) == max(ref[s].items())


def test_levels_full_side_keeps_the_best() -> None:
    blk, dirs, meta = lv.alloc(1, 64)  # 2 blocks of 64
    nb = dirs.shape[2]
    ref: dict[int, int] = {}
    evicted = 0
    for k in random.Random(3).sample(range(100000), 3000):
        evicted += lv.set_level(blk, dirs, meta, 0, k, 1) == lv.SET_EVICTED
        ref[k] = 1
    keys = np.zeros(nb * lv.BLOCK, np.int64)
    qtys = np.zeros(nb * lv.BLOCK, np.int64)
    m = lv.top_levels(blk, dirs, meta, 0, keys, qtys, len(keys))
    assert evicted > 0 and m == meta[0, lv.M_LIVE] and m >= lv.BLOCK
    assert keys[:m].tolist() == sorted(ref, reverse=True)[:m]  # what is kept is the best, contiguous


def test_split_messages_across_calls_and_ring_positions() -> None:
    """The same records fed in odd chunks, through a wrapping ring, give the same outputs."""
    h = Harness()
    h.diff(96, 103, pu=95, bids=[("100.0", "5"), ("99.5", "1")], asks=[("101.0", "3")])
    h.snapshot(100, SNAP_BIDS, SNAP_ASKS, futures=True)
    for k in range(20):
        h.diff(104 + 2 * k, 105 + 2 * k, pu=103 + 2 * k if k else 103, bids=[("99.0", str(k + 1))],
               asks=[("102.0", "0" if k % 2 else "2")], t_ms=10 * k)
        h.trade(100.5, 0.1 * (k + 1), k % 3 == 0, 10 * k + 5)
    recs = np.concatenate(h.all_recs)
    ring = np.zeros(16, MARKET.dtype)
    out_b = np.zeros(8, BOOK.dtype)
    out_f = np.zeros(8, FEATURES.dtype)
    st = BookState(1)
    got_b: list = []
    got_f: list = []
    pos = 11  # wraps at once
    i = 0
    sizes = [3, 1, 7, 2, 5]
    while i < len(recs):
        n = min(sizes[i % len(sizes)], len(recs) - i)
        for j in range(n):
            ring[(pos + j) & 15] = recs[i + j]
        k = st.process(ring, n, out_b, out_f, in_pos=pos, in_mask=15, out_pos=pos, out_mask=7)
        got_b.extend(out_b[(pos + j) & 7].copy() for j in range(k))
        got_f.extend(out_f[(pos + j) & 7].copy() for j in range(k))
        pos += n
        i += n
    assert len(got_b) == len(h.books) > 40
    for a, b in zip(got_b, h.books, strict=True):
        assert all(np.array_equal(a[name], b[name]) for name in BOOK.dtype.names)
    for a, b in zip(got_f, h.feats, strict=True):
        assert np.array_equal(a["values"], b["values"]) and a["kind"] == KIND_FEATURES


# -- features -----------------------------------------------------------------------------------------
def test_feature_names() -> None:
    assert len(FEATURE_NAMES) == N_FEATURES == 16 and len(set(FEATURE_NAMES)) == 16
    assert FEATURE_INDEX["mid"] == 0


def _random_session(seed: int, n_events: int = 400) -> Harness:
    """A synced futures session: snapshot, chained diffs around a drifting mid, trades, time gaps."""
    rng = random.Random(seed)
    h = Harness(("BTCUSDT", "ETHUSDT"))
    tick = 0.1
    for s, sym in enumerate(("btcusdt", "ethusdt")):
        mid = 1000.0 * (s + 1)
        bids = [(round(mid - tick * (i + 1), 1), round(rng.uniform(0.1, 5), 3)) for i in range(30)]
        asks = [(round(mid + tick * (i + 1), 1), round(rng.uniform(0.1, 5), 3)) for i in range(30)]
        h.snapshot(1000, bids, asks, sym=sym, futures=True)
    last = {"btcusdt": 1000, "ethusdt": 1000}
    mids = {"btcusdt": 1000.0, "ethusdt": 2000.0}
    t = 1_000_000
    for _ in range(n_events):
        sym = rng.choice(("btcusdt", "ethusdt"))
        t += rng.choice((0, 1, 5, 40, 300, 2500))
        if rng.random() < 0.3:
            h.trade(round(mids[sym] + rng.choice((-0.05, 0.05)), 2), round(rng.uniform(0.001, 2), 3),
                    rng.random() < 0.5, t, sym)
            continue
        mids[sym] = round(mids[sym] + tick * rng.choice((-1, 0, 0, 1)), 1)
        m = mids[sym]
        bids = [(round(m - tick * rng.randrange(1, 25), 1), "0" if rng.random() < 0.3 else
                 str(round(rng.uniform(0.01, 5), 3))) for _ in range(rng.randrange(0, 6))]
        asks = [(round(m + tick * rng.randrange(1, 25), 1), "0" if rng.random() < 0.3 else
                 str(round(rng.uniform(0.01, 5), 3))) for _ in range(rng.randrange(0, 6))]
        u = last[sym] + rng.randrange(1, 9)
        first = last[sym] + 1 if last[sym] > 1000 else 1000  # the first must cover lastUpdateId
        h.diff(first, u, bids=bids, asks=asks, pu=last[sym], sym=sym, t_ms=t)
        last[sym] = u
    return h


def _compare_to_reference(recs: np.ndarray, books: list, feats: list) -> None:
    ref = RefPipeline()
    ref.feed(recs)
    assert len(ref.outputs) == len(books) == len(feats)
    for i, ((rb, rf), b, f) in enumerate(zip(ref.outputs, books, feats, strict=True)):
        got = {"symbol": int(b["symbol"]), "valid": bool(b["flags"] & FLAG_BOOK_VALID),
               **{k: int(b[k]) for k in ("bid_px", "bid_qty", "ask_px", "ask_qty", "last_id", "exch_ts_ms",
                                         "trade_px", "trade_qty", "t_origin_ns")}}
        assert got == rb, i
        assert f["last_id"] == rb["last_id"] and f["flags"] == b["flags"] and f["seq"] == b["seq"]
        bad = ~np.isclose(f["values"], rf, rtol=1e-9, atol=1e-9)
        assert not bad.any(), (i, [(FEATURE_NAMES[k], f["values"][k], rf[k]) for k in np.flatnonzero(bad)])


@pytest.mark.parametrize("seed", [1, 2])
def test_features_match_the_slow_reference(seed: int) -> None:
    h = _random_session(seed)
    _compare_to_reference(np.concatenate(h.all_recs), h.books, h.feats)
    vals = np.array([f["values"] for f in h.feats])
    exercised = ("ret_1s_bps", "ofi_1s", "vol_10s_bps", "trade_flow_1s", "vwap_offset_10s_bps", "imbalance_5")
    for name in exercised:
        assert np.any(vals[:, FEATURE_INDEX[name]] != 0), f"{name} never exercised"


def test_features_across_a_gap_match_the_reference() -> None:
    h = Harness()
    h.snapshot(100, SNAP_BIDS, SNAP_ASKS)
    h.diff(101, 105, bids=[("100.0", "5")], t_ms=1000)
    h.trade(100.5, 1, False, 1200)
    h.diff(107, 110, bids=[("100.0", "7")], t_ms=1500)  # gap
    h.trade(100.4, 2, True, 1600)
    h.snapshot(108, [("100.2", "6")], SNAP_ASKS)
    h.diff(111, 112, asks=[("100.9", "1")], t_ms=3000)
    _compare_to_reference(np.concatenate(h.all_recs), h.books, h.feats)


def test_feature_values_by_hand() -> None:
    h = Harness()
    h.snapshot(100, [("100", "3")], [("101", "1")])
    h.diff(101, 102, bids=[("100", "1")], asks=[("101", "3")], t_ms=1000)
    v = dict(zip(FEATURE_NAMES, h.feats[-1]["values"].tolist(), strict=True))
    assert v["mid"] == 100.5
    assert v["spread_bps"] == pytest.approx(1 / 100.5 * 1e4)
    assert v["imbalance_1"] == pytest.approx(-0.5)  # (1 - 3) / (1 + 3)
    assert v["microprice_bps"] == pytest.approx(((100 * 3 + 101 * 1) / 4 - 100.5) / 100.5 * 1e4)
    assert v["ofi"] == pytest.approx((1 - 3) - (3 - 1))  # bid size -2, ask size +2 at unchanged prices
    h.trade(100.8, 2, False, 1500)  # buyer-initiated
    v = dict(zip(FEATURE_NAMES, h.feats[-1]["values"].tolist(), strict=True))
    assert v["trade_flow_1s"] == pytest.approx(2.0)
    assert v["trade_imbalance_10s"] == pytest.approx(1.0)
    assert v["vwap_offset_10s_bps"] == pytest.approx((100.8 - 100.5) / 100.5 * 1e4)
    assert h.books[-1]["trade_qty"] == 2 * P and h.books[-1]["trade_px"] == px(100.8)


def test_process_refuses_arrays_too_small() -> None:
    st = BookState(1)
    inp = np.zeros(4, MARKET.dtype)
    with pytest.raises(ValueError, match="arrays too small"):
        st.process(inp, 4, np.zeros(3, BOOK.dtype), np.zeros(4, FEATURES.dtype))
    with pytest.raises(ValueError, match="arrays too small"):
        st.process(inp, 5, np.zeros(8, BOOK.dtype), np.zeros(8, FEATURES.dtype))
    with pytest.raises(ValueError, match="arrays too small"):
        st.process(inp, 2, np.zeros(8, BOOK.dtype), np.zeros(8, FEATURES.dtype), in_pos=9, in_mask=7)


def test_features_turn_warm_after_10_s_of_history() -> None:
    h = Harness()
    h.snapshot(100, SNAP_BIDS, SNAP_ASKS)
    h.diff(101, 105, t_ms=1_000)
    h.diff(106, 107, t_ms=10_999)
    assert not h.feats[-1]["flags"] & FLAG_FEATURES_WARM  # 9.999 s after the first exchange time
    h.diff(108, 109, t_ms=11_000)
    assert h.feats[-1]["flags"] & FLAG_FEATURES_WARM and h.books[-1]["flags"] & FLAG_FEATURES_WARM
    assert h.feats[-1]["flags"] & FLAG_BOOK_VALID
