"""Paper exchange kernel on crafted BOOK records: every expectation below is computed by hand."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest

from procs.kernels import paper as pp
from procs.kernels import reasons as rs
from shm.records import BOOK, FILL, FLAG_BOOK_VALID, KIND_FILL, PRICE_SCALE, QTY_SCALE

BUY, SELL = pp.SIDE_BUY, pp.SIDE_SELL
ACK, PARTIAL, FILLED = pp.STATUS_ACK, pp.STATUS_PARTIAL, pp.STATUS_FILLED
CANCELED, REJECTED, REPLACED = pp.STATUS_CANCELED, pp.STATUS_REJECTED, pp.STATUS_REPLACED
MAKER, TAKER = pp.LIQ_MAKER, pp.LIQ_TAKER


def px(v: float) -> int:
    return round(v * PRICE_SCALE)


def qt(v: float) -> int:
    return round(v * QTY_SCALE)


def fee(v: float) -> int:
    """A fee in quote currency, fixed point at PRICE_SCALE."""
    return round(v * PRICE_SCALE)


class Rep(NamedTuple):
    cid: int
    status: int
    price: int
    qty: int
    leaves: int
    fee: int
    liq: int
    reason: int


def rep(cid: int, status: int, price: float, qty: float, leaves: float, fee_v: float = 0.0, liq: int = 0,
        reason: int = 0) -> Rep:
    return Rep(cid, status, px(price), qt(qty), qt(leaves), fee(fee_v), liq, reason)


def book(t: int, bids: list[tuple[float, float]] = (), asks: list[tuple[float, float]] = (), *, sym: int = 0,
         trade: tuple[float, float] | None = None, valid: bool = True) -> np.void:
    """One BOOK record: levels best first; trade = (price, qty signed by aggressor: < 0 seller)."""
    r = np.zeros(1, BOOK.dtype)[0]
    r["symbol"] = sym
    r["t_origin_ns"] = t * 1_000_000 + 7
    r["exch_ts_ms"] = t
    r["flags"] = FLAG_BOOK_VALID if valid else 0
    for i, (p, q) in enumerate(bids):
        r["bid_pxs"][i], r["bid_qtys"][i] = px(p), qt(q)
    for i, (p, q) in enumerate(asks):
        r["ask_pxs"][i], r["ask_qtys"][i] = px(p), qt(q)
    r["bid_px"], r["bid_qty"] = r["bid_pxs"][0], r["bid_qtys"][0]
    r["ask_px"], r["ask_qty"] = r["ask_pxs"][0], r["ask_qtys"][0]
    if trade is not None:
        r["trade_px"], r["trade_qty"] = px(trade[0]), qt(trade[1])
    return r


BIDS = [(100.0, 5), (99.99, 3), (99.98, 4)]
ASKS = [(100.01, 4), (100.02, 6), (100.03, 2)]


class Ex:
    """The kernel's arrays plus a little driving code."""

    def __init__(self, n_symbols: int = 2, latency: int = 0, maker: float = 0.0, taker: float = 0.0,
                 max_orders: int = 64, max_msgs: int = 64, out: int = 64) -> None:
        self.orders, self.msgs, self.books, self.glob = pp.alloc(n_symbols, max_orders, max_msgs)
        self.params = pp.params_from(latency, maker, taker)
        self.latency = latency
        self.out = np.zeros(out, FILL.dtype)
        self.last: np.ndarray = self.out[:0]

    def send(self, cid: int, t: int, *, action: int = pp.ACTION_NEW, side: int = BUY, price: float = 0.0,
             qty: float = 0.0, market: bool = False, post_only: bool = False, sym: int = 0, tag: int = 0,
             mid: float = 100.005) -> bool:
        return bool(pp.submit(self.msgs, self.glob, action, cid, sym, tag, side, int(market), post_only, px(price),
                              qt(qty), t, px(mid), self.latency))

    def cancel(self, cid: int, t: int, **kw: object) -> bool:
        return self.send(cid, t, action=pp.ACTION_CANCEL, **kw)

    def replace(self, cid: int, t: int, price: float, qty: float, **kw: object) -> bool:
        return self.send(cid, t, action=pp.ACTION_REPLACE, price=price, qty=qty, **kw)

    def on(self, r: np.void, n0: int = 0, room: int | None = None) -> list[Rep]:
        out = self.out if room is None else self.out[:n0 + room]
        n = pp.on_book(self.orders, self.msgs, self.books, self.glob, self.params, r, out, n0)
        self.last = out[n0:n]
        return [Rep(int(x["client_order_id"]), int(x["status"]), int(x["price"]), int(x["qty"]),
                    int(x["leaves_qty"]), int(x["fee"]), int(x["liquidity"]), int(x["reason"])) for x in self.last]

    def slot(self, cid: int) -> np.void:
        hit = np.flatnonzero((self.orders["state"] == pp.OS_RESTING) & (self.orders["cid"] == cid))
        assert len(hit) == 1, f"cid={cid} resting slots={hit}"
        return self.orders[hit[0]]

    def ahead(self, cid: int) -> int:
        return int(self.slot(cid)["ahead"])

    def g(self, i: int) -> int:
        return int(self.glob[i])


@pytest.fixture
def ex() -> Ex:
    return Ex()


def rest_bid(ex: Ex, cid: int = 1, price: float = 100.0, qty: float = 2, t: int = 1000,
             bids: list[tuple[float, float]] = BIDS, asks: list[tuple[float, float]] = ASKS) -> None:
    """A limit buy resting after one record (latency 0)."""
    ex.on(book(t, bids, asks))
    assert ex.send(cid, t, price=price, qty=qty)
    assert ex.on(book(t + 1, bids, asks)) == [rep(cid, ACK, price, 0, qty)]


# -- queue position --------------------------------------------------------------------------------
def test_join_behind_visible_qty_trades_consume_ahead_then_fill() -> None:
    ex = Ex(maker=-1.0)
    rest_bid(ex, qty=2)
    assert ex.ahead(1) == qt(5)
    # someone joins behind us: ahead unchanged
    assert ex.on(book(1002, [(100.0, 7), *BIDS[1:]], ASKS)) == []
    assert ex.ahead(1) == qt(5)
    # seller takes 4 at our price: all from the queue ahead of us
    assert ex.on(book(1003, [(100.0, 7), *BIDS[1:]], ASKS, trade=(100.0, -4))) == []
    assert ex.ahead(1) == qt(1)
    # the diff showing that trade: the decrease is explained, not cancels
    assert ex.on(book(1004, [(100.0, 3), *BIDS[1:]], ASKS)) == []
    assert ex.ahead(1) == qt(1)
    # 2 more: 1 clears the queue ahead, 1 fills us (maker, rebate 1 bps of 100 = 0.01)
    assert ex.on(book(1005, [(100.0, 3), *BIDS[1:]], ASKS, trade=(100.0, -2))) == [
        rep(1, PARTIAL, 100.0, 1, 1, -0.01, MAKER)]
    assert ex.ahead(1) == 0
    # the decrease of 2 is the trade again; then the rest of us fills
    assert ex.on(book(1006, [(100.0, 1), *BIDS[1:]], ASKS)) == []
    assert ex.on(book(1007, [(100.0, 1), *BIDS[1:]], ASKS, trade=(100.0, -5))) == [
        rep(1, FILLED, 100.0, 1, 0, -0.01, MAKER)]
    assert pp.open_orders(ex.orders, 0, 0) == 0
    assert ex.g(pp.G_RESTING) == 0 and ex.g(pp.G_MAKER_FILLS) == 2
    # every report field
    f = ex.last[0]
    assert (f["symbol"], f["kind"], f["flags"], f["t_origin_ns"], f["exch_ts_ms"]) == (0, KIND_FILL, 0,
                                                                                         1007_000_007, 1007)
    assert (f["order_ts_ms"], f["mid_px"], f["tag"], f["side"]) == (1000, px(100.005), 0, BUY)


def test_buy_aggressor_trades_do_not_touch_a_bid_and_sell_side_mirrors(ex: Ex) -> None:
    ex.on(book(1000, BIDS, ASKS))
    ex.send(2, 1000, side=SELL, price=100.02, qty=3)
    assert ex.on(book(1001, BIDS, ASKS)) == [rep(2, ACK, 100.02, 0, 3)]
    assert ex.ahead(2) == qt(6)
    # a seller-aggressor trade cannot reach an ask
    assert ex.on(book(1002, BIDS, ASKS, trade=(100.02, -10))) == []
    assert ex.ahead(2) == qt(6)
    # buyer takes 8 at 100.02: 6 ahead, 2 for us
    assert ex.on(book(1003, BIDS, ASKS, trade=(100.02, 8))) == [rep(2, PARTIAL, 100.02, 2, 1, 0, MAKER)]
    # a buyer trading above our ask went through it
    assert ex.on(book(1004, BIDS, ASKS, trade=(100.03, 1))) == [rep(2, FILLED, 100.02, 1, 0, 0, MAKER)]


def test_trade_through_the_price_fills_fully(ex: Ex) -> None:
    rest_bid(ex, qty=3)
    assert ex.ahead(1) == qt(5)
    assert ex.on(book(1002, BIDS, ASKS, trade=(99.99, -0.5))) == [rep(1, FILLED, 100.0, 3, 0, 0, MAKER)]


def test_cancels_ahead_reduce_the_queue_proportionally(ex: Ex) -> None:
    rest_bid(ex, bids=[(100.0, 10)])
    assert ex.ahead(1) == qt(10)
    ex.on(book(1002, [(100.0, 20)], ASKS))  # 10 join behind us
    assert ex.ahead(1) == qt(10)
    ex.on(book(1003, [(100.0, 14)], ASKS))  # 6 canceled, ahead's share 10/20
    assert ex.ahead(1) == qt(7)
    ex.on(book(1004, [(100.0, 4)], ASKS))  # 10 canceled out of 14: 7 - 10*7/14 = 2
    assert ex.ahead(1) == qt(2)
    # a trade of 1 then a diff of -3: 1 explained by the trade, 2 canceled out of the 3 left: 1 - 2*1/3
    ex.on(book(1005, [(100.0, 4)], ASKS, trade=(100.0, -1)))
    assert ex.ahead(1) == qt(1)
    ex.on(book(1006, [(100.0, 1)], ASKS))
    assert ex.ahead(1) == qt(1) - qt(2) // 3


def test_ahead_never_exceeds_visible_qty(ex: Ex) -> None:
    rest_bid(ex, bids=[(100.0, 10)])
    rng = np.random.default_rng(5)
    for t in range(1002, 1200):  # random level sizes and trades that never reach us: ahead <= level qty
        lvl = float(rng.integers(0, 30))
        trade = (100.0, -float(rng.integers(1, 3))) if rng.random() < 0.1 and lvl > 25 else None
        ex.on(book(t, [(100.0, lvl)] if lvl else [(99.99, 1.0)], ASKS, trade=trade))
        if ex.g(pp.G_RESTING) == 0:
            break
        assert 0 <= ex.ahead(1) <= qt(lvl)


def test_price_improving_on_the_best_has_nothing_ahead(ex: Ex) -> None:
    rest_bid(ex, price=100.005, qty=2)
    assert ex.ahead(1) == 0
    # others join at our price after us: still first
    ex.on(book(1002, [(100.005, 5), *BIDS], ASKS))
    assert ex.ahead(1) == 0
    assert ex.on(book(1003, [(100.005, 5), *BIDS], ASKS, trade=(100.005, -1.5))) == [
        rep(1, PARTIAL, 100.005, 1.5, 0.5, 0, MAKER)]


def test_two_of_our_orders_at_one_price_share_the_trade(ex: Ex) -> None:
    ex.on(book(1000, BIDS, ASKS))
    ex.send(1, 1000, price=100.005, qty=2)
    ex.send(2, 1000, price=100.005, qty=2)
    assert [r.status for r in ex.on(book(1001, BIDS, ASKS))] == [ACK, ACK]
    # 3 traded: the first order (time priority) takes 2, the second 1
    assert ex.on(book(1002, BIDS, ASKS, trade=(100.005, -3))) == [
        rep(1, FILLED, 100.005, 2, 0, 0, MAKER), rep(2, PARTIAL, 100.005, 1, 1, 0, MAKER)]


def test_price_beyond_depth_is_unknown_until_it_enters_the_visible_depth(ex: Ex) -> None:
    deep = [(100.0 - 0.01 * i, 1.0) for i in range(10)]  # 100.00 .. 99.91
    rest_bid(ex, price=99.5, qty=1, bids=deep)
    assert ex.ahead(1) == -1
    # a trade at our price while it is unknown: no fill (it cannot be judged)
    assert ex.on(book(1002, deep, ASKS, trade=(99.5, -1))) == []
    # the book thins out: our price is visible with 3 at it
    assert ex.on(book(1003, [(99.6, 1.0), (99.5, 3.0)], ASKS)) == []
    assert ex.ahead(1) == qt(3)
    # deeper book again: beyond, ahead kept; back with 2 at our price: capped to the visible 2
    ex.on(book(1004, deep, ASKS))
    assert ex.ahead(1) == qt(3)
    ex.on(book(1005, [(99.6, 1.0), (99.5, 2.0)], ASKS))
    assert ex.ahead(1) == qt(2)
    # a price inside a short side that has no level there: visible, 0 ahead
    ex.send(2, 1005, price=99.55, qty=1)
    ex.on(book(1006, [(99.6, 1.0), (99.5, 2.0)], ASKS))
    assert ex.ahead(2) == 0


def test_book_moving_through_a_resting_order_fills_it_as_maker() -> None:
    ex = Ex(maker=2.0)
    rest_bid(ex, qty=2)
    assert ex.on(book(1002, [(99.99, 3)], [(100.0, 1), (100.01, 4)])) == [
        rep(1, FILLED, 100.0, 2, 0, 0.04, MAKER)]


# -- taking liquidity ------------------------------------------------------------------------------
def test_market_order_walks_levels_and_cancels_the_remainder() -> None:
    ex = Ex(taker=5.0)
    asks = [(101.0, 1), (102.0, 2), (103.0, 3)]
    ex.on(book(1000, BIDS, asks))
    ex.send(9, 1000, qty=10, market=True, mid=100.5)
    reps = ex.on(book(1001, BIDS, asks))
    assert reps == [rep(9, ACK, 0, 0, 10),
                    rep(9, PARTIAL, 101.0, 1, 9, 0.0505, TAKER),  # 101 * 5e-4
                    rep(9, PARTIAL, 102.0, 2, 7, 0.102, TAKER),
                    rep(9, PARTIAL, 103.0, 3, 4, 0.1545, TAKER),
                    rep(9, CANCELED, 0, 0, 0, 0, 0, rs.NO_LIQUIDITY)]
    fills = ex.last[1:4]
    filled = int(fills["qty"].sum())
    avg = sum(int(f["price"]) * int(f["qty"]) for f in fills) / filled
    assert filled == qt(6) and avg == pytest.approx(px(614 / 6))
    assert int(fills["fee"].sum()) == fee(0.307)
    assert all(int(f["mid_px"]) == px(100.5) for f in ex.last)
    assert ex.g(pp.G_TAKER_FILLS) == 3 and ex.g(pp.G_CANCELS) == 1


def test_market_sell_filled_exactly(ex: Ex) -> None:
    ex.on(book(1000, BIDS, ASKS))
    ex.send(3, 1000, side=SELL, qty=6, market=True)
    assert ex.on(book(1001, BIDS, ASKS)) == [rep(3, ACK, 0, 0, 6), rep(3, PARTIAL, 100.0, 5, 1, 0, TAKER),
                                             rep(3, FILLED, 99.99, 1, 0, 0, TAKER)]


def test_marketable_limit_takes_then_rests(ex: Ex) -> None:
    asks = [(101.0, 1), (102.0, 2), (103.0, 3)]
    ex.on(book(1000, BIDS, asks))
    ex.send(4, 1000, price=102.0, qty=5)
    assert ex.on(book(1001, BIDS, asks)) == [rep(4, ACK, 102.0, 0, 5), rep(4, PARTIAL, 101.0, 1, 4, 0, TAKER),
                                             rep(4, PARTIAL, 102.0, 2, 2, 0, TAKER)]
    assert ex.ahead(4) == 0 and int(ex.slot(4)["leaves"]) == qt(2)
    # the feed still shows the 3 we took (we are invisible to it): no phantom fill
    assert ex.on(book(1002, BIDS, asks)) == []
    assert ex.on(book(1003, BIDS, [(103.0, 3)])) == []
    # a new seller at 102 crosses our resting bid: maker fill at our price
    assert ex.on(book(1004, BIDS, [(102.0, 1), (103.0, 3)])) == [rep(4, FILLED, 102.0, 2, 0, 0, MAKER)]


def test_post_only_that_would_cross_is_rejected(ex: Ex) -> None:
    ex.on(book(1000, BIDS, ASKS))
    ex.send(5, 1000, price=100.01, qty=1, post_only=True)
    ex.send(6, 1000, side=SELL, price=100.0, qty=1, post_only=True)
    ex.send(7, 1000, price=100.005, qty=1, post_only=True)
    assert ex.on(book(1001, BIDS, ASKS)) == [rep(5, REJECTED, 100.01, 0, 0, reason=rs.POST_ONLY_WOULD_CROSS),
                                             rep(6, REJECTED, 100.0, 0, 0, reason=rs.POST_ONLY_WOULD_CROSS),
                                             rep(7, ACK, 100.005, 0, 1)]
    assert ex.g(pp.G_REJECTS) == 2 and pp.open_orders(ex.orders, 0, 0) == 1


# -- cancel / replace ------------------------------------------------------------------------------
def test_cancel_resting_and_cancel_of_a_filled_order(ex: Ex) -> None:
    rest_bid(ex, cid=1, qty=1)
    ex.send(2, 1001, price=99.99, qty=1, tag=3)
    ex.on(book(1002, BIDS, ASKS))
    assert pp.open_orders(ex.orders, 0, 0) == 1 and pp.open_orders(ex.orders, 0, 3) == 1
    assert pp.open_orders(ex.orders, 0, 0, ex.glob) == 1 and pp.open_orders(ex.orders, 0, 3, ex.glob) == 1
    ex.cancel(2, 1002, tag=3)
    assert ex.on(book(1003, BIDS, ASKS)) == [rep(2, CANCELED, 99.99, 0, 0, reason=rs.USER_CANCEL)]
    assert int(ex.last[0]["tag"]) == 3 and pp.open_orders(ex.orders, 0, 3) == 0
    ex.on(book(1004, BIDS, ASKS, trade=(99.98, -1)))  # through: order 1 filled
    ex.cancel(1, 1004, price=100.0)
    assert ex.on(book(1005, BIDS, ASKS)) == [rep(1, REJECTED, 100.0, 0, 0, reason=rs.UNKNOWN_ORDER)]
    assert ex.g(pp.G_RESTING) == 0
    assert sorted(ex.orders["state"][:2]) == [pp.OS_FREE, pp.OS_FREE]


def test_replace_keeps_or_loses_priority(ex: Ex) -> None:
    rest_bid(ex, qty=3)
    ex.on(book(1002, [(100.0, 9), *BIDS[1:]], ASKS, trade=(100.0, -2)))  # 4 joined behind, 2 traded ahead
    assert ex.ahead(1) == qt(3)
    ex.replace(1, 1002, 100.0, 2)  # same price, smaller: keeps its place
    assert ex.on(book(1003, [(100.0, 9), *BIDS[1:]], ASKS)) == [rep(1, REPLACED, 100.0, 0, 2)]
    assert ex.ahead(1) == qt(3)
    ex.replace(1, 1003, 100.0, 4)  # same price, larger: back of the queue
    assert ex.on(book(1004, [(100.0, 9), *BIDS[1:]], ASKS)) == [rep(1, REPLACED, 100.0, 0, 4)]
    assert ex.ahead(1) == qt(9)
    ex.replace(1, 1004, 99.98, 4)  # new price: behind its visible 4
    assert ex.on(book(1005, BIDS, ASKS)) == [rep(1, REPLACED, 99.98, 0, 4)]
    assert ex.ahead(1) == qt(4) and int(ex.slot(1)["price"]) == px(99.98)
    ex.replace(1, 1005, 100.01, 4, post_only=True)  # would cross: rejected, the order stays
    assert ex.on(book(1006, BIDS, ASKS)) == [rep(1, REJECTED, 100.01, 0, 4, reason=rs.POST_ONLY_WOULD_CROSS)]
    assert int(ex.slot(1)["price"]) == px(99.98)
    ex.replace(1, 1006, 100.01, 5)  # marketable, not post-only: takes 4, 1 rests at 100.01
    assert ex.on(book(1007, BIDS, ASKS)) == [rep(1, REPLACED, 100.01, 0, 5),
                                             rep(1, PARTIAL, 100.01, 4, 1, 0, TAKER)]
    assert int(ex.slot(1)["leaves"]) == qt(1) and int(ex.slot(1)["cum_qty"]) == qt(4)


# -- latency ---------------------------------------------------------------------------------------
def test_order_is_not_matched_against_records_before_decision_plus_latency() -> None:
    ex = Ex(latency=50)
    ex.on(book(1000, BIDS, ASKS))
    ex.send(1, 1000, qty=1, market=True)
    assert ex.on(book(1020, BIDS, [(100.01, 9)])) == []
    assert ex.on(book(1049, BIDS, [(100.02, 9)])) == []
    assert ex.on(book(1050, BIDS, [(100.05, 9)])) == [rep(1, ACK, 0, 0, 1), rep(1, FILLED, 100.05, 1, 0, 0, TAKER)]
    assert ex.last[1]["exch_ts_ms"] == 1050 and ex.last[1]["order_ts_ms"] == 1000


def test_latency_zero_is_the_next_record_of_the_symbol() -> None:
    ex = Ex(latency=0)
    ex.on(book(1000, BIDS, ASKS))
    ex.send(1, 1000, qty=1, market=True)
    assert ex.on(book(1000, BIDS, ASKS, sym=1)) == []  # another symbol's record does not carry it
    assert ex.on(book(1000, BIDS, [(100.04, 1)])) == [rep(1, ACK, 0, 0, 1), rep(1, FILLED, 100.04, 1, 0, 0, TAKER)]


def test_fifo_across_symbols() -> None:
    ex = Ex(latency=50)
    ex.on(book(1000, BIDS, ASKS, sym=0))
    ex.on(book(1000, BIDS, ASKS, sym=1))
    ex.send(1, 1000, price=99.0, qty=1, sym=0)
    ex.send(2, 1000, price=99.0, qty=1, sym=1)
    ex.send(3, 1000, price=99.5, qty=1, sym=0)
    ex.cancel(1, 1001, sym=0)
    # symbol 1 reaches the arrival time first: its message goes, symbol 0's wait for their own record
    assert ex.on(book(1050, BIDS, ASKS, sym=1)) == [rep(2, ACK, 99.0, 0, 1)]
    # symbol 0 at 1050: its two news in submission order; the cancel (due 1051) not yet
    assert ex.on(book(1050, BIDS, ASKS, sym=0)) == [rep(1, ACK, 99.0, 0, 1), rep(3, ACK, 99.5, 0, 1)]
    assert ex.on(book(1051, BIDS, ASKS, sym=0)) == [rep(1, CANCELED, 99.0, 0, 0, reason=rs.USER_CANCEL)]
    assert ex.g(pp.G_MSG_HEAD) == ex.g(pp.G_MSG_TAIL) == 4


def test_new_then_cancel_in_one_record_keep_their_order() -> None:
    ex = Ex(latency=10)
    ex.on(book(1000, BIDS, ASKS))
    ex.send(1, 1000, price=99.0, qty=1)
    ex.cancel(1, 1000)
    assert ex.on(book(1010, BIDS, ASKS)) == [rep(1, ACK, 99.0, 0, 1), rep(1, CANCELED, 99.0, 0, 0,
                                                                           reason=rs.USER_CANCEL)]


def test_cancel_racing_a_fill_loses() -> None:
    ex = Ex(latency=50)
    ex.on(book(1000, BIDS, ASKS))
    ex.send(1, 1000, price=100.0, qty=1)
    assert ex.on(book(1050, BIDS, ASKS)) == [rep(1, ACK, 100.0, 0, 1)]
    ex.cancel(1, 1060, price=100.0)
    assert ex.on(book(1070, BIDS, ASKS, trade=(99.99, -2))) == [rep(1, FILLED, 100.0, 1, 0, 0, MAKER)]
    assert ex.on(book(1109, BIDS, ASKS)) == []
    assert ex.on(book(1110, BIDS, ASKS)) == [rep(1, REJECTED, 100.0, 0, 0, reason=rs.UNKNOWN_ORDER)]


def test_cancel_arriving_before_the_fill_wins() -> None:
    ex = Ex(latency=50)
    ex.on(book(1000, BIDS, ASKS))
    ex.send(1, 1000, price=100.0, qty=1)
    ex.on(book(1050, BIDS, ASKS))
    ex.cancel(1, 1050)
    # the record that carries the cancel also trades through: the cancel was there first
    assert ex.on(book(1100, BIDS, ASKS, trade=(99.99, -2))) == [rep(1, CANCELED, 100.0, 0, 0,
                                                                         reason=rs.USER_CANCEL)]


# -- market data, fees, capacity -------------------------------------------------------------------
def test_no_market_data(ex: Ex) -> None:
    ex.on(book(1000, BIDS, ASKS, valid=False))
    ex.send(1, 1000, price=100.0, qty=1)
    assert ex.on(book(1001, BIDS, ASKS, valid=False)) == [rep(1, REJECTED, 100.0, 0, 0, reason=rs.NO_MARKET_DATA)]
    ex.send(2, 1001, qty=1, market=True)  # valid, but nothing to buy from
    ex.send(3, 1001, side=SELL, qty=1, market=True)
    assert ex.on(book(1002, BIDS, [])) == [rep(2, REJECTED, 0, 0, 0, reason=rs.NO_MARKET_DATA),
                                           rep(3, ACK, 0, 0, 1), rep(3, FILLED, 100.0, 1, 0, 0, TAKER)]


def test_fees_maker_taker_rebate_and_no_overflow() -> None:
    ex = Ex(maker=-0.25, taker=5.0)
    rest_bid(ex, qty=2)
    ex.send(2, 1001, price=100.02, qty=3)
    # messages are delivered before the resting orders are matched
    assert ex.on(book(1002, BIDS, ASKS, trade=(99.99, -1))) == [
        rep(2, ACK, 100.02, 0, 3),
        rep(2, FILLED, 100.01, 3, 0, 0.150015, TAKER),  # 300.03 * 5e-4
        rep(1, FILLED, 100.0, 2, 0, -0.005, MAKER)]  # 200 * -0.25e-4: a rebate
    # BTC-sized: price * qty does not fit in int64, the notional does
    p, q = px(60123.45678901), qt(123.45678901)
    assert pp.notional(p, q) == p * q // QTY_SCALE
    assert pp.fee_of(px(60000.0), qt(2.5), 4.0) == fee(60.0)
    assert pp.fee_of(px(60000.0), qt(2.5), -1.0) == fee(-15.0)


def test_out_limit_defers_messages_and_keeps_fills() -> None:
    ex = Ex()
    ex.on(book(1000, BIDS, ASKS))
    ex.on(book(1000, BIDS, ASKS, sym=1))
    ex.send(1, 1000, qty=2, market=True)
    # 7 free slots < the 12 a new order may need: it waits, nothing is written
    assert ex.on(book(1001, BIDS, ASKS), n0=5, room=pp.MSG_MAX_REPORTS - 5) == []
    assert ex.g(pp.G_REPORTS_OVERFLOW) == 1
    # the next record (another symbol) delivers it against symbol 0's last book, stamped with its own record
    assert ex.on(book(1002, BIDS, [(100.03, 5)], sym=1)) == [rep(1, ACK, 0, 0, 2),
                                                              rep(1, FILLED, 100.01, 2, 0, 0, TAKER)]
    assert ex.last[1]["symbol"] == 0 and ex.last[1]["exch_ts_ms"] == 1002
    # three resting bids traded through with room for one report: two wait on their orders
    for cid in (2, 3, 4):
        ex.send(cid, 1002, price=99.98, qty=cid)
    ex.send(5, 1002, price=99.0, qty=1)
    ex.on(book(1003, BIDS, ASKS))
    assert ex.on(book(1004, BIDS, ASKS, trade=(99.97, -1)), room=1) == [rep(2, FILLED, 99.98, 2, 0, 0, MAKER)]
    assert ex.g(pp.G_PENDING) == 2 and ex.g(pp.G_RESTING) == 1
    ex.cancel(5, 1004)
    # next call: the pending fills first (stamped with the record that filled them), then the cancel
    assert ex.on(book(1005, BIDS, ASKS, sym=1)) == [rep(3, FILLED, 99.98, 3, 0, 0, MAKER),
                                                     rep(4, FILLED, 99.98, 4, 0, 0, MAKER)]
    assert [int(x) for x in ex.last["exch_ts_ms"]] == [1004, 1004]
    assert ex.on(book(1005, BIDS, ASKS)) == [rep(5, CANCELED, 99.0, 0, 0, reason=rs.USER_CANCEL)]
    assert ex.g(pp.G_PENDING) == 0 and ex.g(pp.G_RESTING) == 0
    assert (ex.orders["state"] == pp.OS_FREE).all()
    assert ex.g(pp.G_FILLS) == 4 and ex.g(pp.G_REPORTS) == 2 + 4 + 1 + 2 + 1


def test_message_fifo_full_and_holes_reclaimed() -> None:
    ex = Ex(latency=0, max_msgs=4)
    ex.on(book(1000, BIDS, ASKS, sym=0))
    ex.on(book(1000, BIDS, ASKS, sym=1))
    for cid, sym in ((1, 0), (2, 1), (3, 0), (4, 1)):
        assert ex.send(cid, 1000, price=99.0, qty=1, sym=sym)
    assert not ex.send(5, 1000, price=99.0, qty=1, sym=1)
    assert ex.g(pp.G_MSGS_FULL) == 1 and ex.g(pp.G_SUBMITTED) == 4
    # symbol 1's two are delivered past symbol 0's waiting ones: they leave holes, reclaimed on submit
    assert [r.cid for r in ex.on(book(1001, BIDS, ASKS, sym=1))] == [2, 4]
    assert ex.g(pp.G_MSG_HEAD) == 0 and ex.g(pp.G_MSG_TAIL) == 4
    assert ex.send(5, 1001, price=99.0, qty=1, sym=1)
    assert ex.send(6, 1001, price=99.0, qty=1, sym=1)
    assert not ex.send(7, 1001, price=99.0, qty=1, sym=1)
    assert ex.g(pp.G_MSGS_FULL) == 2 and ex.g(pp.G_SUBMITTED) == 6
    assert [r.cid for r in ex.on(book(1002, BIDS, ASKS, sym=0))] == [1, 3]
    assert [r.cid for r in ex.on(book(1002, BIDS, ASKS, sym=1))] == [5, 6]
    assert ex.g(pp.G_MSG_HEAD) == ex.g(pp.G_MSG_TAIL) == 4
    assert pp.open_orders(ex.orders, 0, 0) == 2 and pp.open_orders(ex.orders, 1, 0) == 4
    assert pp.open_orders(ex.orders, 0, 0, ex.glob) == 2 and pp.open_orders(ex.orders, 1, 0, ex.glob) == 4
    assert pp.open_orders(ex.orders, 1, 1, ex.glob) == 0


def test_order_table_full_rejects_exchange_full() -> None:
    ex = Ex(max_orders=2)
    ex.on(book(1000, BIDS, ASKS))
    for cid in (1, 2, 3):
        ex.send(cid, 1000, price=99.0, qty=1)
    ex.send(4, 1000, qty=1, market=True)  # a market order needs no slot
    assert [(r.cid, r.status, r.reason) for r in ex.on(book(1001, BIDS, ASKS))] == [
        (1, ACK, 0), (2, ACK, 0), (3, REJECTED, rs.EXCHANGE_FULL), (4, ACK, 0), (4, FILLED, 0)]
    assert ex.g(pp.G_ORDERS_FULL) == 1


def test_bad_symbol_record_is_ignored(ex: Ex) -> None:
    assert ex.on(book(1000, BIDS, ASKS, sym=7)) == []
    assert ex.g(pp.G_BAD_SYMBOL) == 1 and ex.g(pp.G_BOOKS) == 0


def test_callable_from_a_cfunc_step() -> None:
    """The strategy calls submit / on_book from a numba cfunc on zero-copy views (procs/kernels/cstep.py)."""
    from numba import cfunc

    from procs.kernels import cstep

    v_orders, v_msgs = cstep.view1(pp.ORDER_SLOT_DTYPE), cstep.view1(pp.MSG_DTYPE)
    v_book, v_fill = cstep.view1(BOOK.dtype), cstep.view1(FILL.dtype)
    orders, msgs, books, glob = pp.alloc(1)
    params = pp.params_from(0, 0.0, 2.0)
    recs = np.zeros(2, BOOK.dtype)
    recs[0] = book(1000, BIDS, ASKS)
    recs[1] = book(1001, BIDS, ASKS)
    out = np.zeros(32, FILL.dtype)
    pack = cstep.Pack()
    i_o, i_m, i_b, i_g, i_p, i_r, i_f = (pack.add(a) for a in (orders, msgs, books, glob, params, recs, out))

    @cfunc(cstep.STEP_SIG)
    def step(d):  # type: ignore[no-untyped-def]
        o, m, bk, g = v_orders(d, i_o), v_msgs(d, i_m), v_book(d, i_b), cstep.V1_I8(d, i_g)
        p, r, f = cstep.V1_F8(d, i_p), v_book(d, i_r), v_fill(d, i_f)
        n = pp.on_book(o, m, bk, g, p, r[0], f, 0)
        pp.submit(m, g, pp.ACTION_NEW, 42, 0, 1, pp.SIDE_BUY, pp.OTYPE_MARKET, False, 0, 3 * QTY_SCALE, 1000,
                  r[0].bid_px, p[pp.PP_LATENCY_MS])
        return pp.on_book(o, m, bk, g, p, r[1], f, n)

    assert cstep.bind(step, pack)() == 2
    assert [(int(x["client_order_id"]), int(x["status"]), int(x["qty"]), int(x["fee"])) for x in out[:2]] == [
        (42, ACK, 0, 0), (42, FILLED, qt(3), fee(0.060006))]  # 300.03 * 2e-4


def test_random_stream_keeps_every_order_consistent() -> None:
    """Random books, trades, orders and out room: each order's reports follow ack → fills → terminal with
    leaves adding up, and the table / FIFO / free list leak nothing."""
    rng = np.random.default_rng(17)
    ex = Ex(n_symbols=2, latency=3, max_orders=24, max_msgs=32, maker=-0.5, taker=4.0)
    live: dict[int, int] = {}  # cid -> leaves, for orders acked and not yet terminal
    seen: set[int] = set()
    sym_of: dict[int, int] = {}
    mids = [10_000, 20_000]  # in ticks of 0.01
    next_cid = 1
    n_reports = 0

    def check(reps: list[Rep]) -> None:
        for r in reps:
            if r.status == ACK:
                assert r.cid not in live and r.cid not in seen
                seen.add(r.cid)
                live[r.cid] = r.leaves
            elif r.status in (PARTIAL, FILLED):
                assert r.qty > 0 and r.leaves == live[r.cid] - r.qty
                live[r.cid] = r.leaves
                if r.status == FILLED:
                    assert r.leaves == 0
                    del live[r.cid]
            elif r.status == CANCELED:
                assert r.cid in live
                del live[r.cid]
            elif r.status == REPLACED:
                live[r.cid] = r.leaves
            else:
                assert r.status == REJECTED
                assert r.reason != rs.UNKNOWN_ORDER or r.cid not in live

    for t in range(1000, 4000):
        s = t & 1
        mids[s] += int(rng.integers(-2, 3))
        m = mids[s]
        bids = [((m - 1 - i) / 100, float(rng.integers(1, 6))) for i in range(int(rng.integers(3, 11)))]
        asks = [((m + 1 + i) / 100, float(rng.integers(1, 6))) for i in range(int(rng.integers(3, 11)))]
        trade = None
        u = rng.random()
        if u < 0.3:
            trade = (bids[int(rng.integers(0, 3))][0], -float(rng.integers(1, 8)))
        elif u < 0.6:
            trade = (asks[int(rng.integers(0, 3))][0], float(rng.integers(1, 8)))
        room = int(rng.integers(0, 4)) if rng.random() < 0.2 else None
        reps = ex.on(book(t, bids, asks, sym=s, trade=trade, valid=rng.random() > 0.02), room=room)
        n_reports += len(reps)
        check(reps)
        for _ in range(int(rng.integers(0, 3))):
            a = rng.random()
            side = int(rng.integers(0, 2))
            price = (m + int(rng.integers(-6, 7))) / 100
            if a < 0.5 or not seen:
                ex.send(next_cid, t, side=side, price=price, qty=float(rng.integers(1, 6)),
                        market=rng.random() < 0.1, post_only=rng.random() < 0.5, sym=s)
                sym_of[next_cid] = s
                next_cid += 1
            elif a < 0.8:
                cid = int(rng.choice(sorted(seen)))
                ex.cancel(cid, t, sym=sym_of[cid])
            else:  # (the price is near this symbol's mid: far from the other's, a cross or a deep quote)
                cid = int(rng.choice(sorted(seen)))
                ex.replace(cid, t, price, float(rng.integers(1, 6)), sym=sym_of[cid], post_only=rng.random() < 0.5)
    for t in range(4000, 4010):  # drain: pending reports and messages
        reps = ex.on(book(t, [(mids[t & 1] / 100 - 0.5, 1.0)], [(mids[t & 1] / 100 + 0.5, 1.0)], sym=t & 1))
        n_reports += len(reps)
        check(reps)
    g = ex.g
    assert g(pp.G_PENDING) == 0 and g(pp.G_MSG_HEAD) == g(pp.G_MSG_TAIL)
    assert g(pp.G_REPORTS) == n_reports and g(pp.G_REPORTS_OVERFLOW) > 0 and g(pp.G_FILLS) > 100
    resting = ex.orders["state"] == pp.OS_RESTING
    assert g(pp.G_RESTING) == int(resting.sum()) == len(live)
    assert sorted(int(c) for c in ex.orders["cid"][resting]) == sorted(live)
    assert {int(c): int(q) for c, q in zip(ex.orders["cid"][resting], ex.orders["leaves"][resting],
                                            strict=True)} == live
    free, j = 0, g(pp.G_FREE)
    while j >= 0:  # the free list holds every other slot, once
        assert ex.orders["state"][j] == pp.OS_FREE
        free, j = free + 1, int(ex.orders["next"][j])
    assert free + int(resting.sum()) == len(ex.orders)
    lists = sum(pp.open_orders(ex.orders, s, 0, ex.glob) for s in (0, 1))
    assert lists == len(live)
