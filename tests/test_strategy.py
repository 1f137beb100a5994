"""The first-cut strategy's rules (procs/kernels/strategy.py) on crafted book updates and scores."""

from __future__ import annotations

import numpy as np

from procs.kernels import strategy as sk
from shm.records import BOOK, FLAG_ANOMALY, FLAG_BOOK_VALID, ORDER, PRICE_SCALE, QTY_SCALE, SCORE

P = PRICE_SCALE
Q = QTY_SCALE


def book(bid: float, ask: float, bq: float = 1.0, aq: float = 1.0, valid: bool = True, t_ms: int = 0) -> np.ndarray:
    b = np.zeros(1, BOOK.dtype)
    b["exch_ts_ms"] = t_ms
    b["bid_px"], b["ask_px"] = round(bid * P), round(ask * P)
    b["bid_qty"], b["ask_qty"] = round(bq * Q), round(aq * Q)
    b["flags"] = FLAG_BOOK_VALID if valid else 0
    b["t_origin_ns"] = 123
    return b


def score(prob: float = 0.0, alert: bool = False) -> np.ndarray:
    s = np.zeros(1, SCORE.dtype)
    s["values"][0, 0] = prob
    s["flags"] = FLAG_ANOMALY if alert else 0
    return s


class Harness:
    def __init__(self, spread_bps: float = 2.0, requote_bps: float = 0.5, max_position: float = 1.0,
                 pause_hold_ms: float = 0.0) -> None:
        self.st, self.g = sk.alloc(1)
        self.params = sk.params_from(spread_bps, 1.0, round(0.01 * Q), round(max_position * Q), requote_bps,
                                     pause_hold_ms)
        self.out = np.zeros(8, ORDER.dtype)

    def step(self, b: np.ndarray, s: np.ndarray | None = None) -> np.ndarray:
        sc = s if s is not None else score()
        n = sk.decide(b[0], sc[0], s is not None, self.st, self.params, self.g, self.out, 0)
        return self.out[:n].copy()


def test_quotes_both_sides_around_the_microprice_post_only() -> None:
    h = Harness()
    o = h.step(book(100.0, 100.02, bq=3.0, aq=1.0))  # bid-heavy: microprice above mid
    assert len(o) == 2
    bid, ask = o[0], o[1]
    assert (bid["side"], bid["action"], ask["side"], ask["action"]) == (0, 0, 1, 0)
    micro = (100.0 * 1.0 + 100.02 * 3.0) / 4.0
    assert abs(bid["price"] / P - micro * (1 - 2e-4)) < 1e-6
    assert abs(ask["price"] / P - micro * (1 + 2e-4)) < 1e-6
    assert bid["price"] < round(100.02 * P) and ask["price"] > round(100.0 * P)
    assert bid["qty"] == ask["qty"] == round(0.01 * Q)
    assert bid["t_origin_ns"] == 123 and bid["client_order_id"] != ask["client_order_id"]


def test_no_requote_inside_the_tolerance_then_replace_outside() -> None:
    h = Harness(requote_bps=0.5)
    first = h.step(book(100.0, 100.02))
    assert len(h.step(book(100.0001, 100.0201))) == 0  # moved 0.01 bps
    moved = h.step(book(100.5, 100.52))  # moved 50 bps
    assert [int(x) for x in moved["action"]] == [sk.ACTION_REPLACE, sk.ACTION_REPLACE]
    assert moved["client_order_id"].tolist() == first["client_order_id"].tolist()


def test_anomaly_pulls_quotes_and_pauses_until_it_clears() -> None:
    h = Harness()
    h.step(book(100.0, 100.02), score(0.1))
    pulled = h.step(book(100.0, 100.02), score(0.9, alert=True))
    assert [int(x) for x in pulled["action"]] == [sk.ACTION_CANCEL, sk.ACTION_CANCEL]
    assert h.g[sk.G_PAUSES] == 1
    assert len(h.step(book(101.0, 101.02), score(0.95, alert=True))) == 0  # still paused: nothing
    back = h.step(book(101.0, 101.02), score(0.1))
    assert [int(x) for x in back["action"]] == [sk.ACTION_NEW, sk.ACTION_NEW]


def test_pause_holds_until_the_flag_has_been_clear_for_the_hold_time() -> None:
    h = Harness(pause_hold_ms=500)
    h.step(book(100.0, 100.02, t_ms=1000), score(0.1))
    assert len(h.step(book(100.0, 100.02, t_ms=1100), score(0.9, alert=True))) == 2  # both pulled
    # the flag flickers off: still out, for 500 ms of exchange time after the last alert
    assert len(h.step(book(100.0, 100.02, t_ms=1300), score(0.2))) == 0
    assert len(h.step(book(100.0, 100.02, t_ms=1500), score(0.9, alert=True))) == 0
    assert len(h.step(book(100.0, 100.02, t_ms=1999), score(0.2))) == 0
    back = h.step(book(100.0, 100.02, t_ms=2000), score(0.2))
    assert [int(x) for x in back["action"]] == [sk.ACTION_NEW, sk.ACTION_NEW]
    assert h.g[sk.G_PAUSES] == 1  # one pause, not one per flicker


def test_score_widens_the_spread() -> None:
    calm, nervous = Harness(), Harness()
    a = calm.step(book(100.0, 100.02), score(0.0))
    b = nervous.step(book(100.0, 100.02), score(0.5))
    assert b[1]["price"] - b[0]["price"] > a[1]["price"] - a[0]["price"]


def test_invalid_book_is_not_traded() -> None:
    h = Harness()
    assert len(h.step(book(100.0, 100.02, valid=False))) == 0
    assert len(h.step(book(100.0, 100.02, aq=0.0))) == 0
    assert h.g[sk.G_INVALID] == 2 and h.g[sk.G_DECISIONS] == 0


def test_position_limit_stops_the_side_that_would_add() -> None:
    h = Harness(max_position=1.0)
    h.step(book(100.0, 100.02))
    h.st[0, sk.Q_POSITION] = round(1.0 * Q)  # long at the limit: no more bids
    ask_before = int(h.st[0, sk.Q_ASK_PX])
    o = h.step(book(100.0, 100.02))
    assert o[0]["side"] == sk.SIDE_BUY and o[0]["action"] == sk.ACTION_CANCEL
    # the inventory skew (1 bps at the limit) lowers the ask to sell the position down
    assert len(o) == 2 and o[1]["side"] == sk.SIDE_SELL and o[1]["action"] == sk.ACTION_REPLACE
    assert o[1]["price"] < ask_before
    assert h.st[0, sk.Q_BID_PX] == 0 and h.st[0, sk.Q_ASK_PX] != 0
