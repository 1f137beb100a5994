"""The strategy engine in-process (procs/sandbox.py): risk checks, kill switch, max-loss halt, accounting,
callback order. One scripted strategy (compiled once) does what each test writes into its state."""

from __future__ import annotations

import numpy as np
import pytest

from procs.api import BUY, SELL, Strategy, cancel, cancel_all, limit, market, njit, replace
from procs.config import Config
from procs.kernels import engine as E
from procs.kernels import reasons as R
from procs.sandbox import Sandbox
from shm.records import BOOK, FLAG_BOOK_VALID

CMD_LIMIT, CMD_MARKET, CMD_CANCEL, CMD_REPLACE, CMD_CANCEL_ALL, CMD_LIMIT_TAKER = 1, 2, 3, 4, 5, 6


class Scripted(Strategy):
    """On the next book of a symbol, run the command in its state; trace every callback."""

    STATE = {"cmd": 0.0, "side": 0.0, "qty": 0.0, "px": 0.0, "tag": 0.0, "cid": 0.0, "ret": 0.0, "repeat": 0.0,
             "trace": 0.0, "n_fill": 0.0, "n_score": 0.0, "n_trade": 0.0, "n_timer": 0.0, "last_trade_qty": 0.0,
             "last_status": -1.0, "last_reason": 0.0}
    TAGS = {0: "a", 1: "b"}

    @staticmethod
    @njit
    def on_book(ctx, s, book):
        st = ctx.st[s]
        st.trace = (st.trace * 10 + 1) % 1e15
        c = st.cmd
        reps = max(int(st.repeat), 1)
        for _ in range(reps):
            if c == 1:
                st.ret = limit(ctx, s, int(st.side), st.px, st.qty, int(st.tag))
            elif c == 2:
                st.ret = market(ctx, s, int(st.side), st.qty, int(st.tag))
            elif c == 3:
                st.ret = 1.0 if cancel(ctx, int(st.cid)) else 0.0
            elif c == 4:
                st.ret = 1.0 if replace(ctx, int(st.cid), st.px, st.qty) else 0.0
            elif c == 5:
                st.ret = cancel_all(ctx, s)
            elif c == 6:
                st.ret = limit(ctx, s, int(st.side), st.px, st.qty, int(st.tag), False)
        st.cmd = 0.0
        st.repeat = 0.0

    @staticmethod
    @njit
    def on_fill(ctx, s, fill):
        st = ctx.st[s]
        st.trace = (st.trace * 10 + 2) % 1e15
        st.n_fill += 1
        st.last_status = fill.status
        st.last_reason = fill.reason

    @staticmethod
    @njit
    def on_score(ctx, s, score):
        st = ctx.st[s]
        st.trace = (st.trace * 10 + 3) % 1e15
        st.n_score += 1

    @staticmethod
    @njit
    def on_trade(ctx, s, px, qty):
        st = ctx.st[s]
        st.trace = (st.trace * 10 + 4) % 1e15
        st.n_trade += 1
        st.last_trade_qty = qty

    @staticmethod
    @njit
    def on_timer(ctx, s, now):
        st = ctx.st[s]
        st.trace = (st.trace * 10 + 5) % 1e15
        st.n_timer += 1


def book(s: int, ts: int, bids=((100.0, 1.0), (99.0, 2.0)), asks=((101.0, 1.0), (102.0, 2.0)), trade=None,
         valid: bool = True) -> np.ndarray:
    b = np.zeros(1, BOOK.dtype)
    r = b[0]
    r["symbol"] = s
    r["exch_ts_ms"] = ts
    r["flags"] = FLAG_BOOK_VALID if valid else 0
    for i, (p, q) in enumerate(bids):
        r["bid_pxs"][i], r["bid_qtys"][i] = round(p * 1e8), round(q * 1e8)
    for i, (p, q) in enumerate(asks):
        r["ask_pxs"][i], r["ask_qtys"][i] = round(p * 1e8), round(q * 1e8)
    r["bid_px"], r["bid_qty"] = r["bid_pxs"][0], r["bid_qtys"][0]
    r["ask_px"], r["ask_qty"] = r["ask_pxs"][0], r["ask_qtys"][0]
    if trade is not None:
        r["trade_px"], r["trade_qty"] = round(trade[0] * 1e8), round(trade[1] * 1e8)
    return b


def sandbox(n_sym: int = 1, **risk: float) -> Sandbox:
    cfg = Config()
    cfg.paper.latency_ms = 0.0
    cfg.paper.maker_fee_bps = 1.0
    cfg.paper.taker_fee_bps = 4.0
    cfg.risk.kill_switch = False
    for name in ("max_position", "max_order_qty", "max_notional", "max_orders_per_s", "max_loss", "stale_ms"):
        setattr(cfg.risk, name, 0.0)  # every limit off unless the test turns it on
    for k, v in risk.items():
        section, _, name = k.partition("__")
        setattr(getattr(cfg, section), name, v)
    return Sandbox(Scripted(), [f"S{i}" for i in range(n_sym)], cfg)


def do(sb: Sandbox, s: int, ts: int, cmd: int, **kw: float) -> float:
    """Run one command on the next book of s at time ts; the command's return value."""
    st = sb.state
    st[s]["cmd"] = cmd
    book_kw = ("bids", "asks", "trade", "valid")
    for k, v in kw.items():
        if k not in book_kw:
            st[s][k] = v
    sb.feed(book(s, ts, **{k: v for k, v in kw.items() if k in book_kw}))
    return float(st[s]["ret"])


@pytest.fixture(scope="module")
def warm() -> None:
    sb = sandbox()
    do(sb, 0, 1, CMD_MARKET, side=BUY, qty=0.1)


def test_market_order_walks_and_accounts(warm: None) -> None:
    sb = sandbox()
    cid = do(sb, 0, 1000, CMD_MARKET, side=BUY, qty=1.5)
    assert cid == 1
    sb.feed(book(0, 1001))  # latency 0: it takes effect on the next record
    r = sb.reports
    assert [int(x) for x in r["status"]] == [E.ACK, E.PARTIAL, E.FILLED]
    acct = sb.account(0)
    assert acct["position"] == pytest.approx(1.5)
    assert acct["avg_price"] == pytest.approx((101.0 * 1.0 + 102.0 * 0.5) / 1.5)
    fees = (101.0 * 1.0 + 102.0 * 0.5) * 4e-4
    assert acct["fees"] == pytest.approx(fees)
    assert acct["cash"] == pytest.approx(-(101.0 + 51.0) - fees)
    assert acct["open_buy"] == 0.0
    # equity at the mid 100.5: cash + 1.5 * 100.5
    assert sb.equity(0) == pytest.approx(-(152.0) - fees + 1.5 * 100.5)


def test_average_cost_through_a_flip(warm: None) -> None:
    sb = sandbox(risk__max_position=10.0, risk__max_order_qty=10.0)
    do(sb, 0, 1000, CMD_MARKET, side=BUY, qty=1.0)  # 1 @ 101
    do(sb, 0, 1001, CMD_MARKET, side=SELL, qty=3.0, bids=((100.0, 5.0),))  # fills: the buy; then sell 3 @ 100
    sb.feed(book(0, 1002, bids=((100.0, 5.0),)))
    a = sb.account(0)
    assert a["position"] == pytest.approx(-2.0)
    assert a["avg_price"] == pytest.approx(100.0)  # the flipped part opens at the fill price
    fees = (101.0 + 300.0) * 4e-4
    assert a["realized"] == pytest.approx((100.0 - 101.0) * 1.0 - fees)
    assert a["fees"] == pytest.approx(fees)


@pytest.mark.parametrize(("risk", "kw", "reason"), [
    ({"risk__max_order_qty": 0.5}, {"side": BUY, "qty": 0.6}, "max_order_size"),
    ({"risk__max_notional": 50.0}, {"side": BUY, "qty": 0.6}, "max_notional"),  # 0.6 * 101 > 50
    ({"risk__max_position": 0.5}, {"side": SELL, "qty": 0.6}, "max_position"),
], ids=["size", "notional", "position"])
def test_each_limit_refuses_with_its_reason(warm: None, risk: dict, kw: dict, reason: str) -> None:
    sb = sandbox(**risk)
    assert do(sb, 0, 1000, CMD_MARKET, **kw) == 0.0
    assert sb.rejects() == {reason: 1}
    rep = sb.reports[-1]
    assert int(rep["status"]) == E.REJECTED and int(rep["client_order_id"]) == 0
    assert sb.state[0]["last_status"] == E.REJECTED  # the refusal reached on_fill
    assert len(sb.orders) == 0  # nothing was sent


def test_max_position_counts_live_orders(warm: None) -> None:
    sb = sandbox(risk__max_position=1.0)
    assert do(sb, 0, 1000, CMD_LIMIT, side=BUY, px=99.0, qty=0.6) > 0  # rests: 0.6 open
    assert do(sb, 0, 1001, CMD_LIMIT, side=BUY, px=98.0, qty=0.6) == 0  # 0.6 + 0.6 > 1
    assert sb.rejects() == {"max_position": 1}
    assert do(sb, 0, 1002, CMD_LIMIT, side=SELL, px=105.0, qty=0.6) > 0  # the other side is fine


def test_rate_limit_counts_orders_per_exchange_second(warm: None) -> None:
    sb = sandbox(risk__max_orders_per_s=3.0, risk__max_position=100.0)
    do(sb, 0, 1000, CMD_LIMIT, side=BUY, px=90.0, qty=0.01, repeat=5)
    assert sb.counter(E.G_NEW) == 3
    assert sb.rejects() == {"rate_limit": 2}
    do(sb, 0, 1999, CMD_LIMIT, side=BUY, px=90.0, qty=0.01)
    assert sb.rejects() == {"rate_limit": 3}  # still within 1 s of the first
    do(sb, 0, 2000, CMD_LIMIT, side=BUY, px=90.0, qty=0.01)
    assert sb.counter(E.G_NEW) == 4
    assert do(sb, 0, 2001, CMD_CANCEL_ALL) == 4  # cancels are never rate limited


def test_stale_and_invalid_books_are_refused(warm: None) -> None:
    sb = sandbox(n_sym=2, risk__stale_ms=500.0)
    sb.feed(book(0, 1000))
    sb.feed(book(1, 1600))  # symbol 0's book is now 600 ms behind the newest exchange time
    sb.state[0]["cmd"] = CMD_LIMIT
    sb.state[0]["side"], sb.state[0]["px"], sb.state[0]["qty"] = BUY, 99.0, 0.1
    # symbol 0 decides on its own update at ts 1000 (an old one, e.g. a quiet symbol) while another is at 1600
    sb.feed(book(0, 1000))
    assert sb.rejects() == {"stale_book": 1}
    assert do(sb, 0, 1700, CMD_LIMIT, side=BUY, px=99.0, qty=0.1) > 0  # fresh again
    assert do(sb, 0, 1800, CMD_LIMIT, side=BUY, px=99.0, qty=0.1, valid=False) == 0  # invalid after a gap
    assert sb.rejects() == {"stale_book": 2}


def test_bad_orders_are_refused(warm: None) -> None:
    sb = sandbox()
    assert do(sb, 0, 1000, CMD_LIMIT, side=BUY, px=0.0, qty=0.1) == 0
    assert do(sb, 0, 1001, CMD_LIMIT, side=BUY, px=99.0, qty=0.0) == 0
    assert do(sb, 0, 1002, CMD_LIMIT, side=BUY, px=99.0, qty=0.1, tag=7) == 0
    assert sb.rejects() == {"bad_order": 3}


def test_kill_switch_lets_an_order_that_only_reduces_the_position_through(warm: None) -> None:
    sb = sandbox(risk__kill_switch=True, risk__kill_hold_ms=1000.0)
    do(sb, 0, 1000, CMD_MARKET, side=BUY, qty=0.5)
    sb.feed(book(0, 1001))
    sb.set_score(0, flag=True, anomaly=1.0)
    assert do(sb, 0, 1100, CMD_MARKET, side=BUY, qty=0.1) == 0  # adds: refused
    assert do(sb, 0, 1101, CMD_MARKET, side=SELL, qty=0.6) == 0  # would flip short: refused
    assert do(sb, 0, 1102, CMD_LIMIT, side=SELL, px=100.5, qty=0.3) > 0  # only reduces: passes
    assert do(sb, 0, 1103, CMD_MARKET, side=SELL, qty=0.3) == 0  # with the live 0.3 it would pass flat
    assert do(sb, 0, 1104, CMD_MARKET, side=SELL, qty=0.2) > 0
    assert sb.rejects() == {"kill_switch": 3}


def test_kill_switch_cancels_flattens_refuses_then_recovers(warm: None) -> None:
    sb = sandbox(risk__kill_switch=True, risk__kill_flatten=True, risk__kill_hold_ms=1000.0)
    do(sb, 0, 1000, CMD_MARKET, side=BUY, qty=0.5)
    resting = do(sb, 0, 1001, CMD_LIMIT, side=BUY, px=99.0, qty=0.2)
    sb.feed(book(0, 1002))
    assert sb.position(0) == pytest.approx(0.5)
    sb.set_score(0, flag=True, anomaly=1.0)
    sb.feed(book(0, 1100))  # the flag: cancel the resting bid, flatten with a market sell
    assert sb.counter(E.G_KILLS) == 1 and sb.counter(E.G_FLATTENS) == 1
    sent = sb.orders
    assert int(sent[-2]["action"]) == E.ACTION_CANCEL and int(sent[-2]["client_order_id"]) == resting
    assert int(sent[-1]["order_type"]) == E.MARKET and int(sent[-1]["side"]) == SELL
    sb.feed(book(0, 1101))
    assert sb.position(0) == pytest.approx(0.0)
    canceled = sb.reports[sb.reports["status"] == E.CANCELED]
    assert [int(x) for x in canceled["reason"]] == [R.KILL_SWITCH_CANCEL]  # the report says why
    assert do(sb, 0, 1200, CMD_LIMIT, side=BUY, px=99.0, qty=0.1) == 0
    assert sb.rejects() == {"kill_switch": 1}
    sb.set_score(0, flag=False)
    assert do(sb, 0, 1500, CMD_LIMIT, side=BUY, px=99.0, qty=0.1) == 0  # clear, but not for kill_hold_ms yet
    assert do(sb, 0, 2100, CMD_LIMIT, side=BUY, px=99.0, qty=0.1) == 0  # the flag was last seen at 1200
    assert do(sb, 0, 2200, CMD_LIMIT, side=BUY, px=99.0, qty=0.1) > 0  # kill_hold_ms after the last flag
    ev = sb.core.ev[: sb.counter(E.G_N_EV)]  # what risk_events.csv gets: on at the flag, off after the hold
    assert ev.tolist() == [[1100.0, 0.0, E.EV_KILL_ON], [2200.0, 0.0, E.EV_KILL_OFF]]
    assert sb.rejects() == {"kill_switch": 3}


def test_max_loss_halts_cancels_and_flattens(warm: None) -> None:
    sb = sandbox(risk__max_loss=5.0, risk__max_position=10.0, risk__max_order_qty=10.0)
    do(sb, 0, 1000, CMD_MARKET, side=BUY, qty=2.0, asks=((101.0, 5.0),))
    do(sb, 0, 1001, CMD_LIMIT, side=SELL, px=110.0, qty=0.5, asks=((101.0, 5.0),))
    sb.feed(book(0, 1002, asks=((101.0, 5.0),)))
    assert sb.position(0) == pytest.approx(2.0)
    # the market drops 4: 2 * (98.5 - 101) - fees < -5
    sb.feed(book(0, 2000, bids=((97.0, 5.0),), asks=((100.0, 5.0),)))
    assert sb.counter(E.G_HALTED) == 1
    assert sb.core.ev[: sb.counter(E.G_N_EV)].tolist() == [[2000.0, -1.0, E.EV_HALT]]
    sb.feed(book(0, 2001, bids=((97.0, 5.0),), asks=((100.0, 5.0),)))
    assert sb.position(0) == pytest.approx(0.0)
    assert [int(x) for x in sb.reports["status"][-3:]] == [E.CANCELED, E.ACK, E.FILLED]
    assert int(sb.reports["reason"][-3]) == R.MAX_LOSS_CANCEL
    assert do(sb, 0, 2002, CMD_MARKET, side=BUY, qty=0.1) == 0
    assert sb.rejects() == {"max_loss_halted": 1}


def test_cancel_and_replace_update_the_order_table(warm: None) -> None:
    sb = sandbox()
    cid = do(sb, 0, 1000, CMD_LIMIT, side=BUY, px=99.0, qty=0.3)
    sb.feed(book(0, 1001))
    assert sb.account(0)["open_buy"] == pytest.approx(0.3)
    assert do(sb, 0, 1002, CMD_REPLACE, cid=cid, px=98.0, qty=0.2) == 1.0
    sb.feed(book(0, 1003))
    assert int(sb.reports[-1]["status"]) == E.REPLACED
    assert sb.account(0)["open_buy"] == pytest.approx(0.2)
    assert do(sb, 0, 1004, CMD_CANCEL, cid=cid) == 1.0
    assert do(sb, 0, 1005, CMD_CANCEL, cid=cid) == 0.0  # a cancel is already on its way
    sb.feed(book(0, 1006))
    assert int(sb.reports[-1]["status"]) == E.CANCELED and int(sb.reports[-1]["reason"]) == R.USER_CANCEL
    assert sb.account(0)["open_buy"] == 0.0
    assert do(sb, 0, 1007, CMD_CANCEL, cid=cid) == 0.0  # no longer live


def test_callback_order_and_triggers(warm: None) -> None:
    sb = sandbox()
    do(sb, 0, 1000, CMD_LIMIT, side=BUY, px=100.0, qty=0.5)  # joins behind 1.0 at the bid
    st = sb.state[0]
    st["trace"] = 0
    st["n_timer"] = 0
    sb.feed(book(0, 1001))  # latency 0: the order arrives with this record (ack, then on_book)
    sb.set_score(0, p_up=0.7)
    # a sell trade of 1.2 at 100: 1.0 ahead of us, then our 0.5 fills 0.2
    sb.feed(book(0, 1002, trade=(100.0, -1.2)))
    # 1001: ack, book; 1002: partial, score, trade, book (the timer fired at 1000 already)
    assert int(st["trace"]) == 212341
    assert st["last_trade_qty"] == pytest.approx(-1.2)
    assert sb.position(0) == pytest.approx(0.2)
    sb.feed(book(0, 1003))
    assert st["n_score"] == 1  # the same score is not handed over twice
    sb.feed(book(0, 2000))
    assert st["n_timer"] == 1  # TIMER_MS = 1000 of exchange time


def test_a_replace_keeps_post_only(warm: None) -> None:
    sb = sandbox()
    cid = do(sb, 0, 1000, CMD_LIMIT, side=BUY, px=99.0, qty=0.3)  # post-only by default
    sb.feed(book(0, 1001))
    assert do(sb, 0, 1002, CMD_REPLACE, cid=cid, px=101.0, qty=0.3) == 1.0  # would cross the 101 ask
    sb.feed(book(0, 1003))
    rep = sb.reports[-1]
    assert int(rep["status"]) == E.REJECTED and int(rep["reason"]) == R.POST_ONLY_WOULD_CROSS
    assert rep["leaves_qty"] == round(0.3 * 1e8)  # refused: the order still rests at 99
    assert int(sb.orders[-1]["flags"]) & 0x100
    assert sb.position(0) == 0.0 and sb.account(0)["open_buy"] == pytest.approx(0.3)
