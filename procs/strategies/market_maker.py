"""ML-skewed market maker: two quotes around the microprice, leaning with the direction model and against
the inventory, wider when the anomaly model is uneasy, pulled by the kill switch.

Per book update of a tradable symbol:
- fair = microprice · (1 + (dir_skew_bps · d − inv_skew_bps · i) · 1e-4), d = 2·P(up) − 1 in [-1, 1] (0 with
  no direction model), i = position / max_inventory;
- half-spread = spread_bps · (1 + anomaly_widen · anomaly level) bps;
- each quote joins the first visible level at or behind its target (prices stay on the exchange's tick
  grid and the paper exchange knows the queue ahead), never crossing the other side (post-only);
- a side whose fill would take |inventory| past max_inventory is not quoted; a quote moves only when its
  target level changed by more than requote_bps (no order spam on every tick).
The anomaly kill switch (risk.kill_switch) cancels both quotes and refuses new ones while the flag holds;
the strategy sees that through `tradable()` and stays out.
"""

from __future__ import annotations

from procs.api import (
    BUY,
    CANCELED,
    FILLED,
    REJECTED,
    SELL,
    Strategy,
    anomaly_level,
    cancel,
    limit,
    microprice,
    mid,
    njit,
    position,
    replace,
    score_up,
    tradable,
)
from shm.records import BOOK_DEPTH, PRICE_SCALE


@njit(cache=True)
def join_bid(book, target: float) -> float:
    """The best visible bid price at or below target (the deepest level when all are above it)."""
    px = 0.0
    for i in range(BOOK_DEPTH):
        p = book.bid_pxs[i]
        if p <= 0:
            break
        px = p / PRICE_SCALE
        if px <= target * (1.0 + 1e-12):  # a target computed onto a level is on it despite rounding
            break
    return px


@njit(cache=True)
def join_ask(book, target: float) -> float:
    px = 0.0
    for i in range(BOOK_DEPTH):
        p = book.ask_pxs[i]
        if p <= 0:
            break
        px = p / PRICE_SCALE
        if px >= target * (1.0 - 1e-12):
            break
    return px


@njit(cache=True)
def _quote(ctx, s: int, side: int, cid: float, cur: float, target: float, allowed: bool) -> tuple[float, float]:
    """One side: (client order id, quoted price) after placing, moving or pulling the quote."""
    if not allowed or target <= 0:
        if cid > 0:
            cancel(ctx, int(cid))
        return 0.0, 0.0
    if cid > 0:
        if abs(target - cur) > ctx.p.requote_bps * 1e-4 * mid(ctx, s) and replace(ctx, int(cid), target, ctx.p.qty):
            return cid, target
        return cid, cur
    new = limit(ctx, s, side, target, ctx.p.qty)
    return float(new), target if new > 0 else 0.0


class MarketMaker(Strategy):
    PARAMS = {"qty": 0.01, "spread_bps": 2.0, "inv_skew_bps": 1.0, "dir_skew_bps": 1.0, "max_inventory": 0.05,
              "requote_bps": 0.5, "anomaly_widen": 1.0}
    STATE = {"bid_id": 0.0, "ask_id": 0.0, "bid_px": 0.0, "ask_px": 0.0}
    TAGS = {0: "mm"}

    def validate(self) -> None:
        from procs.api import StrategyError

        p = self.params
        for k in ("qty", "max_inventory"):
            if p[k] <= 0:
                raise StrategyError(f"field=strategy.params.{k} expected=> 0 found={p[k]}")
        if p["spread_bps"] < 0:
            raise StrategyError(f"field=strategy.params.spread_bps expected=>= 0 found={p['spread_bps']}")

    @staticmethod
    @njit
    def on_book(ctx, s, book):
        st = ctx.st[s]
        if not tradable(ctx, s):  # halted, kill switch, stale or invalid book: stay out
            if st.bid_id > 0:
                cancel(ctx, int(st.bid_id))
            if st.ask_id > 0:
                cancel(ctx, int(st.ask_id))
            st.bid_id = 0.0
            st.ask_id = 0.0
            return
        p_up = score_up(ctx, s)
        d = 0.0 if p_up != p_up else 2.0 * p_up - 1.0  # NaN: no direction model
        pos = position(ctx, s)
        inv = pos / ctx.p.max_inventory
        fair = microprice(ctx, s) * (1.0 + (ctx.p.dir_skew_bps * d - ctx.p.inv_skew_bps * inv) * 1e-4)
        half = ctx.p.spread_bps * 1e-4 * (1.0 + ctx.p.anomaly_widen * anomaly_level(ctx, s))
        best_bid = book.bid_px / PRICE_SCALE
        best_ask = book.ask_px / PRICE_SCALE
        tgt_bid = join_bid(book, min(fair * (1.0 - half), best_bid))
        tgt_ask = join_ask(book, max(fair * (1.0 + half), best_ask))
        q = ctx.p.qty
        st.bid_id, st.bid_px = _quote(ctx, s, BUY, st.bid_id, st.bid_px, tgt_bid,
                                      pos + q <= ctx.p.max_inventory * (1 + 1e-9))
        st.ask_id, st.ask_px = _quote(ctx, s, SELL, st.ask_id, st.ask_px, tgt_ask,
                                      pos - q >= -ctx.p.max_inventory * (1 + 1e-9))

    @staticmethod
    @njit
    def on_fill(ctx, s, fill):
        st = ctx.st[s]
        # a refused replace leaves the order resting (leaves > 0): it is still our quote
        done = fill.status == FILLED or fill.status == CANCELED or (fill.status == REJECTED and fill.leaves_qty == 0)
        if done and fill.client_order_id == int(st.bid_id):
            st.bid_id = 0.0
        if done and fill.client_order_id == int(st.ask_id):
            st.ask_id = 0.0
