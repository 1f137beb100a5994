"""The strategy API: write a class, select it by dotted path in the config, run it on any source.

    from procs.api import BUY, SELL, Strategy, limit, cancel_all, mid, njit, position, score_up, tradable

    class Lean(Strategy):
        '''Quote one side, toward the direction model's call, 2 bps from the mid.'''
        PARAMS = {"qty": 0.01, "bps": 2.0, "edge": 0.1}

        @staticmethod
        @njit
        def on_book(ctx, s, book):
            cancel_all(ctx, s)
            p = score_up(ctx, s)
            if tradable(ctx, s) and abs(p - 0.5) > ctx.p.edge:
                side = BUY if p > 0.5 else SELL
                limit(ctx, s, side, mid(ctx, s) * (1 - (1 if side == BUY else -1) * ctx.p.bps * 1e-4), ctx.p.qty)

    python run.py --strategy mypkg.lean:Lean --set strategy.params.bps=3

Callbacks are @njit functions (static methods), all optional; they run inside the strategy stage's
compiled step, in this order for each book update of symbol `s`: `on_fill` for every execution report the
paper exchange produced, `on_score(ctx, s, score)` when the symbol's model scores changed,
`on_trade(ctx, s, price, qty)` when the update carried a trade (qty > 0: buyer aggressed),
`on_book(ctx, s, book)`, and `on_timer(ctx, s, now_ms)` every TIMER_MS of exchange time.
`on_fill(ctx, s, fill)` gets every report: ack, partial, filled, canceled, rejected (a risk refusal has
client_order_id 0 and its reason), replaced; use `fill_price/fill_qty/fill_status`.

`ctx.p` holds PARAMS (floats, overridable from the config), `ctx.st[s]` the per-symbol STATE record
(floats; `ctx.st[s].name = x` writes it) with the STATE_ARRAYS float64 arrays (`ctx.st[s].hist[i]`).
Orders: `limit`, `market`, `cancel`, `replace`, `cancel_all`; each new order passes the risk checks
([risk] in the config) and returns its client order id, or 0 when refused. Market view:
`bid/ask/mid/microprice/spread_bps/bid_qty/ask_qty/book_valid`, the raw BOOK record
(`book.bid_pxs[i]` … fixed point ×1e8), `score_up/anomaly_level/anomaly_flag/score_age_ms`; account: `position`,
`avg_price`, `open_qty`, `realized`, `equity`, `total_equity`; `tradable(ctx, s)` says whether a new order
would pass the state checks (halt, kill switch, stale book). Times are exchange milliseconds.
`tag` (0..3) splits a strategy into sleeves with their own positions and results (A/B in one run).
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar

import numpy as np
from numba import njit

from procs.kernels.engine import (
    ACK,
    BUY,
    CANCELED,
    FILLED,
    LIMIT,
    MARKET,
    N_TAGS,
    PARTIAL,
    REJECTED,
    REPLACED,
    SELL,
    anomaly_flag,
    anomaly_level,
    ask,
    ask_qty,
    avg_price,
    bid,
    bid_qty,
    book_valid,
    cancel,
    cancel_all,
    equity,
    halted,
    has_score,
    limit,
    market,
    microprice,
    mid,
    now_ms,
    open_qty,
    order_leaves,
    order_live,
    position,
    realized,
    replace,
    score_age_ms,
    score_up,
    spread_bps,
    total_equity,
    tradable,
)
from shm.records import PRICE_SCALE, QTY_SCALE

__all__ = [
    "ACK", "BUY", "CANCELED", "FILLED", "LIMIT", "MARKET", "N_TAGS", "PARTIAL", "REJECTED", "REPLACED", "SELL",
    "Strategy", "StrategyError", "anomaly_flag", "anomaly_level", "ask", "ask_qty", "avg_price", "bid", "bid_qty",
    "book_valid", "cancel", "cancel_all", "equity", "fill_price", "fill_qty", "fill_status", "halted", "has_score",
    "limit", "load_strategy", "market", "microprice", "mid", "njit", "now_ms", "open_qty", "order_leaves",
    "order_live", "position", "realized", "replace", "score_age_ms", "score_up", "spread_bps", "total_equity",
    "tradable",
]


class StrategyError(ValueError):
    pass


@njit(cache=True)
def fill_price(fill) -> float:
    return fill.price / PRICE_SCALE


@njit(cache=True)
def fill_qty(fill) -> float:
    """Qty filled by this report (0 for ack, canceled, rejected, replaced)."""
    return fill.qty / QTY_SCALE


@njit(cache=True)
def fill_status(fill) -> int:
    return fill.status


class Strategy:
    """Base class: set PARAMS / STATE, define any of the callbacks as @staticmethod @njit functions."""

    #: parameters (name -> default), read in callbacks as ctx.p.<name>; all stored as float64
    PARAMS: ClassVar[dict[str, float]] = {}
    #: per-symbol state (name -> initial value), read and written as ctx.st[s].<name>; float64
    STATE: ClassVar[dict[str, float]] = {}
    #: per-symbol float64 arrays (name -> length), zeroed at start: ctx.st[s].<name>[i] (histories, records)
    STATE_ARRAYS: ClassVar[dict[str, int]] = {}
    #: sleeves this strategy trades (tag -> name): results are reported per sleeve
    TAGS: ClassVar[dict[int, str]] = {0: "main"}
    #: on_timer period in exchange milliseconds (0: no timer)
    TIMER_MS: ClassVar[int] = 1000

    on_book: ClassVar[Any] = None
    on_trade: ClassVar[Any] = None
    on_score: ClassVar[Any] = None
    on_fill: ClassVar[Any] = None
    on_timer: ClassVar[Any] = None

    def __init__(self, params: dict[str, Any] | None = None, symbols: list[str] | None = None) -> None:
        self.symbols = list(symbols or [])
        merged = dict(self.PARAMS)
        for k, v in (params or {}).items():
            if k not in self.PARAMS:
                raise StrategyError(f"field=strategy.params.{k} expected one of {sorted(self.PARAMS)} "
                                    f"(parameters of {type(self).__name__}) found={k!r}")
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise StrategyError(f"field=strategy.params.{k} expected=a number found={v!r}")
            merged[k] = float(v)
        self.params = merged
        for tag in self.TAGS:
            if not 0 <= tag < N_TAGS:
                raise StrategyError(f"field={type(self).__name__}.TAGS expected tags 0..{N_TAGS - 1} found={tag}")
        self.validate()

    def validate(self) -> None:
        """Refuse bad parameter values (override; raise StrategyError naming the field)."""

    def params_array(self) -> np.ndarray:
        """PARAMS as a one-element record array: ctx.p is its record (numba reads fields by name)."""
        names = list(self.params) or ["_none"]
        arr = np.zeros(1, np.dtype([(n, "f8") for n in names]))
        for n, v in self.params.items():
            arr[0][n] = v
        return arr

    def state_array(self, n_symbols: int) -> np.ndarray:
        """One record per symbol: STATE's floats, then STATE_ARRAYS' float64 sub-arrays."""
        fields: list[tuple] = [(n, "f8") for n in self.STATE]
        for n, size in self.STATE_ARRAYS.items():
            if n in self.STATE or not isinstance(size, int) or size < 1:
                raise StrategyError(f"field={type(self).__name__}.STATE_ARRAYS[{n!r}] expected=a length >= 1 "
                                    f"not also in STATE found={size!r}")
            fields.append((n, "f8", (size,)))
        arr = np.zeros(n_symbols, np.dtype(fields or [("_none", "f8")]))
        for n, v in self.STATE.items():
            arr[n] = v
        return arr

    def close(self, state: np.ndarray, run_dir: str) -> None:
        """At the end of the run, in Python: write extra result files (e.g. parents.csv) from the state."""


def load_strategy(path: str) -> type[Strategy]:
    """`package.module:Class` or `package.module.Class` → the Strategy subclass, or a StrategyError naming it."""
    mod_name, sep, cls_name = path.partition(":")
    if not sep:
        mod_name, _, cls_name = path.rpartition(".")
    if not mod_name or not cls_name:
        raise StrategyError(f"field=strategy.name expected=a dotted path like 'mypkg.module:MyStrategy' found={path!r}")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as exc:
        raise StrategyError(f"field=strategy.name expected=an importable module found={mod_name!r} ({exc})") from None
    cls = getattr(mod, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise StrategyError(f"field=strategy.name expected=a tickpipe Strategy subclass found={path!r} "
                            f"({type(cls).__name__ if cls is not None else 'no such name'})")
    return cls
