"""Liquidity-surge scalping: enter on a volume surge with a price rejection in the trend's direction, exit at
ATR-based take profit / stop loss.

Bars: `bar_ms` of exchange time per symbol, built from the trades (on_trade): open/high/low/close/volume
(|qty|). A bar closes at the first update (trade or book) of a later period; a period with no trade makes no
bar (the indicators only move on traded bars). At each bar close, with C/H/L/V the bar's close/high/low/volume:
- surge: V > vol_mult · (EMA of the previous bars' volume over vol_bars, α = 2/(vol_bars + 1)); the current
  bar is left out of its own mean, or a surge would dampen the bar it is measured against;
- rejection: range = H − L > 0 and (C − L)/range ≥ 1 − reject_frac (close in the top 30 %: lows rejected,
  bullish) or ≤ reject_frac (bottom 30 %: highs rejected, bearish);
- trend: EMA(ema_fast) vs EMA(ema_slow) of the closes, this bar included: fast > slow confirms a long, fast <
  slow a short;
- ATR: Wilder's average of the true range over atr_bars bars.
With all three in one direction, after `min_bars` bars (the slow EMA and the ATR warm up), on a flat symbol:
a market order of qty = fraction · equity / price, equity = capital + total_equity (the strategy's P&L so far),
price = the touch it takes, capped at max_qty (keep it ≤ risk.max_order_qty and risk.max_position). Once it
fills, entry = the average fill price, tp = entry + dir·k_tp·ATR, sl = entry − dir·k_sl·ATR (ATR of the signal
bar). On every book update the touch we would exit at (bid for a long, ask for a short) is checked: at or
beyond tp or sl, a market order closes the position (and again for any remainder the visible depth did not
fill). One position at a time per symbol. An entry the risk checks refuse (kill switch, stale book, ...) is
dropped (the signal is gone; strategy.json counts the refusal); exits wait while the symbol is not tradable
(they would only be refused), and a refused exit is tried again after RETRY_MS of exchange time.
close() writes scalper.json: bars, surges, signals, entries, take profits and stop losses per symbol.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from procs.api import (
    BUY,
    SELL,
    Strategy,
    StrategyError,
    ask,
    avg_price,
    bid,
    market,
    njit,
    now_ms,
    order_live,
    position,
    total_equity,
    tradable,
)

#: exchange ms before a refused exit is sent again
RETRY_MS = 100
#: |position| below this is flat
EPS = 1e-9

FLAT = 0
ENTERING = 1
IN_POSITION = 2
EXITING = 3


@njit(cache=True)
def close_bar(ctx, s: int) -> bool:
    """Fold the finished bar into the indicators; enter if all three conditions hold. True if it entered."""
    st = ctx.st[s]
    p = ctx.p
    c, h, lo, v = st.c, st.h, st.l, st.v
    first = st.nbars == 0
    tr = h - lo if first else max(h - lo, abs(h - st.prev_c), abs(lo - st.prev_c))
    surge = not first and v > p.vol_mult * st.vol_ema
    st.vol_ema = v if first else st.vol_ema + 2.0 / (p.vol_bars + 1.0) * (v - st.vol_ema)
    st.ema_f = c if first else st.ema_f + 2.0 / (p.ema_fast + 1.0) * (c - st.ema_f)
    st.ema_s = c if first else st.ema_s + 2.0 / (p.ema_slow + 1.0) * (c - st.ema_s)
    st.atr = tr if first else st.atr + (tr - st.atr) / p.atr_bars
    st.prev_c = c
    st.nbars += 1.0
    rng = h - lo
    loc = (c - lo) / rng if rng > 0 else 0.5
    bull = rng > 0 and loc >= 1.0 - p.reject_frac
    bear = rng > 0 and loc <= p.reject_frac
    if surge:
        st.n_surges += 1.0
    if st.nbars < p.min_bars or st.phase != FLAT or not surge or st.atr <= 0:
        return False
    if bull and st.ema_f > st.ema_s:
        side = BUY
    elif bear and st.ema_f < st.ema_s:
        side = SELL
    else:
        return False
    px = ask(ctx, s) if side == BUY else bid(ctx, s)
    if px <= 0:
        return False
    qty = min(p.fraction * (p.capital + total_equity(ctx)) / px, p.max_qty)
    if qty <= 0:
        return False
    cid = market(ctx, s, side, qty)
    st.n_signals += 1.0
    if cid == 0:
        return False
    st.cid = float(cid)
    st.dir = 1.0 if side == BUY else -1.0
    st.atr_e = st.atr
    st.phase = ENTERING
    st.n_entries += 1.0
    return True


@njit(cache=True)
def roll(ctx, s: int, now: int) -> None:
    """Close the bar being built if `now` is in a later period."""
    st = ctx.st[s]
    if st.v > 0 and now // int(ctx.p.bar_ms) > st.bar_id:
        close_bar(ctx, s)
        st.v = 0.0


@njit(cache=True)
def add_trade(ctx, s: int, price: float, qty: float) -> None:
    now = now_ms(ctx)
    roll(ctx, s, now)
    st = ctx.st[s]
    q = abs(qty)
    if st.v == 0.0:
        st.bar_id = float(now // int(ctx.p.bar_ms))
        st.o = price
        st.h = price
        st.l = price
        st.c = price
        st.v = q
        return
    st.h = max(st.h, price)
    st.l = min(st.l, price)
    st.c = price
    st.v += q


@njit(cache=True)
def _exit(ctx, s: int, now: int) -> None:
    st = ctx.st[s]
    pos = position(ctx, s)
    cid = market(ctx, s, SELL if pos > 0 else BUY, abs(pos))
    if cid == 0:
        st.retry_ms = float(now + RETRY_MS)
    else:
        st.cid = float(cid)
        st.phase = EXITING


@njit(cache=True)
def manage(ctx, s: int) -> None:
    """Per book update: close a finished bar, then move the position's state (fill, tp / sl, exit)."""
    now = now_ms(ctx)
    roll(ctx, s, now)
    st = ctx.st[s]
    if st.phase == FLAT or order_live(ctx, int(st.cid)):
        return
    pos = position(ctx, s)
    if abs(pos) < EPS:  # entry unfilled, exit done, or flattened by the risk engine
        st.phase = FLAT
        st.cid = 0.0
        return
    if st.phase == ENTERING:
        e = avg_price(ctx, s)
        st.entry = e
        st.tp = e + st.dir * ctx.p.k_tp * st.atr_e
        st.sl = e - st.dir * ctx.p.k_sl * st.atr_e
        st.phase = IN_POSITION
    if now < st.retry_ms or not tradable(ctx, s):  # an exit would only be refused: hold, look again later
        return
    if st.phase == EXITING:  # the remainder of an exit the visible depth did not fill
        _exit(ctx, s, now)
        return
    px = bid(ctx, s) if pos > 0 else ask(ctx, s)  # the touch the exit would take
    if px <= 0:
        return
    d = 1.0 if pos > 0 else -1.0
    if d * (px - st.tp) >= 0:
        st.n_tp += 1.0
        _exit(ctx, s, now)
    elif d * (px - st.sl) <= 0:
        st.n_sl += 1.0
        _exit(ctx, s, now)


class SurgeScalper(Strategy):
    """Volume surge + price rejection + EMA trend → market entry; ATR take profit / stop loss (module docstring)."""

    PARAMS = {"bar_ms": 1000.0, "vol_mult": 3.0, "vol_bars": 20.0, "reject_frac": 0.3, "ema_fast": 5.0,
              "ema_slow": 20.0, "atr_bars": 14.0, "k_tp": 2.0, "k_sl": 1.0, "fraction": 0.1, "capital": 10000.0,
              "max_qty": 0.5, "min_bars": 20.0}
    STATE = {"bar_id": 0.0, "o": 0.0, "h": 0.0, "l": 0.0, "c": 0.0, "v": 0.0, "nbars": 0.0, "prev_c": 0.0,
             "vol_ema": 0.0, "ema_f": 0.0, "ema_s": 0.0, "atr": 0.0, "phase": 0.0, "cid": 0.0, "dir": 0.0,
             "atr_e": 0.0, "entry": 0.0, "tp": 0.0, "sl": 0.0, "retry_ms": 0.0, "n_surges": 0.0,
             "n_signals": 0.0, "n_entries": 0.0, "n_tp": 0.0, "n_sl": 0.0}
    TAGS = {0: "scalp"}
    TIMER_MS = 0

    def validate(self) -> None:
        p = self.params
        for k in ("bar_ms", "vol_mult", "vol_bars", "ema_fast", "ema_slow", "atr_bars", "k_tp", "k_sl", "fraction",
                  "capital", "max_qty"):
            if p[k] <= 0:
                raise StrategyError(f"field=strategy.params.{k} expected=> 0 found={p[k]}")
        if not 0 < p["reject_frac"] < 0.5:
            raise StrategyError(f"field=strategy.params.reject_frac expected=in (0, 0.5) found={p['reject_frac']}")
        if p["bar_ms"] != int(p["bar_ms"]):
            raise StrategyError(f"field=strategy.params.bar_ms expected=an integer found={p['bar_ms']}")
        if p["ema_fast"] >= p["ema_slow"]:
            raise StrategyError(f"field=strategy.params.ema_fast expected=< ema_slow ({p['ema_slow']}) "
                                f"found={p['ema_fast']}")

    def close(self, state: np.ndarray, run_dir: str) -> None:
        """scalper.json: per symbol, the bars, surges, signals, entries and exits of the run."""
        keys = {"nbars": "bars", "n_surges": "surges", "n_signals": "signals", "n_entries": "entries",
                "n_tp": "take_profits", "n_sl": "stop_losses"}
        out = {(self.symbols[s] if s < len(self.symbols) else str(s)): {v: int(state[s][k]) for k, v in keys.items()}
               for s in range(len(state))}
        Path(run_dir, "scalper.json").write_text(json.dumps(out, indent=2) + "\n")

    @staticmethod
    @njit
    def on_trade(ctx, s, price, qty):
        add_trade(ctx, s, price, qty)

    @staticmethod
    @njit
    def on_book(ctx, s, book):
        manage(ctx, s)
