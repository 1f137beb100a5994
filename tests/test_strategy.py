"""The built-in market maker (procs/strategies/market_maker.py) on the strategy engine, in-process."""

from __future__ import annotations

import numpy as np
import pytest

from procs.config import Config
from procs.kernels import engine as E
from procs.kernels import reasons as R
from procs.sandbox import Sandbox
from procs.strategies.market_maker import MarketMaker
from shm.records import BOOK, FLAG_BOOK_VALID

TICK = 0.01


def ladder(ts: int, bid: float = 100.0, ask: float = 100.02, qty: float = 1.0, bid_qty: float | None = None,
           ask_qty: float | None = None, valid: bool = True, s: int = 0) -> np.ndarray:
    """A book with a level every tick, 10 deep on each side."""
    b = np.zeros(1, BOOK.dtype)
    r = b[0]
    r["symbol"], r["exch_ts_ms"] = s, ts
    r["flags"] = FLAG_BOOK_VALID if valid else 0
    for i in range(10):
        r["bid_pxs"][i] = round((bid - i * TICK) * 1e8)
        r["ask_pxs"][i] = round((ask + i * TICK) * 1e8)
        r["bid_qtys"][i] = r["ask_qtys"][i] = round(qty * 1e8)
    r["bid_qtys"][0] = round((bid_qty if bid_qty is not None else qty) * 1e8)
    r["ask_qtys"][0] = round((ask_qty if ask_qty is not None else qty) * 1e8)
    r["bid_px"], r["bid_qty"] = r["bid_pxs"][0], r["bid_qtys"][0]
    r["ask_px"], r["ask_qty"] = r["ask_pxs"][0], r["ask_qtys"][0]
    return b


def mm(**params: float) -> Sandbox:
    cfg = Config()
    cfg.paper.latency_ms = 0.0
    cfg.risk.stale_ms = 0.0
    p = {"spread_bps": 3.0, "requote_bps": 0.5, "qty": 0.01, "max_inventory": 0.02, **params}
    return Sandbox(MarketMaker(p), ["X"], cfg)


def live_quotes(sb: Sandbox) -> dict[int, float]:
    """side -> price of our resting quotes, from the orders and reports so far."""
    price: dict[int, tuple[int, float]] = {}
    for o in sb.orders:
        cid = int(o["client_order_id"])
        if int(o["action"]) in (E.ACTION_NEW, E.ACTION_REPLACE):
            price[cid] = (int(o["side"]), o["price"] / 1e8)
    for r in sb.reports:
        if int(r["status"]) in (E.FILLED, E.CANCELED) or (int(r["status"]) == E.REJECTED and r["leaves_qty"] == 0):
            price.pop(int(r["client_order_id"]), None)
    return {side: px for side, px in price.values()}


def test_quotes_both_sides_on_visible_levels_around_the_microprice() -> None:
    sb = mm()
    sb.feed(ladder(1000))
    sb.feed(ladder(1001))  # latency 0: acked with this record
    q = live_quotes(sb)
    # microprice 100.01 (equal sizes); half-spread 3 bps: targets 99.979997 / 100.040003, each joins the first
    # level at or behind it
    assert q == {E.BUY: pytest.approx(99.97), E.SELL: pytest.approx(100.05)}
    assert all(int(o["flags"]) & 0x100 for o in sb.orders)  # post-only
    assert [int(x) for x in sb.reports["status"]] == [E.ACK, E.ACK]


def test_microprice_leans_toward_the_thin_side() -> None:
    sb = mm(spread_bps=1.0)
    sb.feed(ladder(1000, bid_qty=9.0, ask_qty=1.0))  # heavy bid: microprice near the ask
    q = live_quotes(sb)
    micro = (100.0 * 1.0 + 100.02 * 9.0) / 10.0
    assert q[E.BUY] == pytest.approx(100.0)  # the target 100.008 is inside the spread: joins the best bid
    assert q[E.SELL] == pytest.approx(100.03)  # first level at or beyond micro + 1 bp = 100.028
    assert micro * (1 + 1e-4) == pytest.approx(100.028, abs=1e-3)


def test_requotes_only_beyond_the_tolerance() -> None:
    sb = mm(spread_bps=2.5)  # targets 99.985 / 100.035: mid-tick, away from a level boundary
    sb.feed(ladder(1000))
    n = len(sb.orders)
    sb.feed(ladder(1001, bid_qty=1.2))  # micro +0.001: the targets stay on the same levels
    assert len(sb.orders) == n
    sb.feed(ladder(1002, bid=100.01, ask=100.03))  # +0.01 (a tick, 1 bp): both quotes move, nothing crosses
    assert [int(o["action"]) for o in sb.orders[n:]] == [E.ACTION_REPLACE, E.ACTION_REPLACE]


def test_anomaly_level_widens_the_spread_up_to_double() -> None:
    def width(level: float) -> float:
        sb = mm(spread_bps=4.0)
        sb.set_score(0, anomaly=level)  # the level in [0, 1], never the raw error score
        sb.feed(ladder(1000))
        q = live_quotes(sb)
        return q[E.SELL] - q[E.BUY]

    calm, half, full = width(0.0), width(0.5), width(1.0)
    assert calm < half < full
    assert full - 0.02 == pytest.approx(2 * (calm - 0.02), abs=0.011)  # to a tick, net of the spread itself


def test_kill_switch_pulls_quotes_and_they_return_after_the_hold() -> None:
    sb = mm()
    sb.core.rp[E.RP_KILL_SWITCH] = 1.0
    sb.core.rp[E.RP_KILL_HOLD_MS] = 500.0
    sb.feed(ladder(1000))
    sb.feed(ladder(1001))
    sb.set_score(0, flag=True, anomaly=1.0)
    sb.feed(ladder(1100))
    sb.feed(ladder(1101))
    assert live_quotes(sb) == {}
    cancels = sb.reports[sb.reports["status"] == E.CANCELED]
    assert len(cancels) == 2 and set(cancels["reason"].tolist()) == {R.KILL_SWITCH_CANCEL}
    sb.feed(ladder(1300))
    assert live_quotes(sb) == {} and sb.rejects() == {}  # it stays out, it does not spam refused orders
    sb.set_score(0, flag=False)
    sb.feed(ladder(1400))  # clear, but the flag was last seen at 1300: held until 1800
    assert live_quotes(sb) == {}
    sb.feed(ladder(1800))
    sb.feed(ladder(1801))
    assert set(live_quotes(sb)) == {E.BUY, E.SELL}


def test_invalid_book_is_not_quoted() -> None:
    sb = mm()
    sb.feed(ladder(1000, valid=False))
    assert len(sb.orders) == 0 and sb.rejects() == {}


def test_inventory_limit_stops_the_side_that_would_add() -> None:
    sb = mm(qty=0.01, max_inventory=0.01)
    sb.feed(ladder(1000))
    sb.feed(ladder(1001))
    # the market sells through our bid: it fills, we are long the limit
    sb.feed(ladder(1002, bid=99.90, ask=99.92))
    assert sb.position(0) == pytest.approx(0.01)
    sb.feed(ladder(1003, bid=99.90, ask=99.92))
    sb.feed(ladder(1004, bid=99.90, ask=99.92))
    q = live_quotes(sb)
    assert E.BUY not in q and E.SELL in q  # only the side that reduces the inventory is quoted


def test_the_help_example_strategy_runs(tmp_path, monkeypatch) -> None:
    """The dozen-line strategy that run.py --help and the README show compiles and trades as it says."""
    import importlib
    import textwrap

    import run

    text = run.STRATEGY_HELP
    code = textwrap.dedent(text[text.index("    # lean.py"):text.index("    python run.py --strategy")])
    (tmp_path / "lean.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    lean = importlib.import_module("lean")
    cfg = Config()
    cfg.paper.latency_ms = 0.0
    sb = Sandbox(lean.Lean({"qty": 0.01, "edge": 0.1, "max_pos": 0.02}), ["X"], cfg)
    for i in range(5):  # P(up) 0.8 on every update: buys until the position limit
        sb.set_score(0, p_up=0.8)
        sb.feed(ladder(1000 + i))
    assert sb.position(0) == pytest.approx(0.02)
    assert all(int(o["side"]) == E.BUY and int(o["order_type"]) == E.MARKET for o in sb.orders)
    sb.set_score(0, p_up=0.55)  # inside the edge: nothing
    sb.feed(ladder(1010))
    assert len(sb.orders) == 2
