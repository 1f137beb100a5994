"""The strategy engine: what runs around a user's callbacks for every BOOK record, all compiled.

Per BOOK record of symbol s (`process`):
1. the paper exchange takes it (procs/kernels/paper.py): due order messages take effect, resting orders
   queue and fill; its execution reports are applied to the account and handed to `on_fill`;
2. the risk state moves: the anomaly kill switch (cancel, flatten, block the symbol while the flag holds)
   and the max-loss halt (cancel everything, flatten, refuse all new orders for the rest of the run);
3. the user's callbacks: `on_score` when the symbol's score changed, `on_trade` when the update carried a
   trade, `on_book`, and `on_timer` every `timer_ms` of exchange time;
4. every TIMER of exchange time a row of position, cash, fees and equity per (symbol, tag) for equity.csv.

Orders from callbacks go through `send`: the risk checks first (a refusal is counted by reason and comes
back as a `rejected` report), then the paper exchange's message queue, the client order table and the
`orders` ring's staging buffer. All state lives in the arrays of one `Ctx` namedtuple, so the whole path
is one numba cfunc call per batch (procs/strategy.py) and user callbacks are plain @njit functions.

Units: records carry fixed-point int64 (×1e8); the account and the user-facing helpers use floats in
natural units (price in quote currency, qty in base currency).
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np
from numba import njit

from procs.kernels import paper
from procs.kernels import reasons as R
from shm.records import (
    FILL,
    FLAG_ANOMALY,
    FLAG_BOOK_VALID,
    FLAG_POST_ONLY,
    KIND_ORDER,
    ORDER,
    PRICE_SCALE,
    QTY_SCALE,
    SCORE_ANOMALY,
    SCORE_UP,
)

BUY = 0
SELL = 1
LIMIT = 0
MARKET = 1
ACTION_NEW = 0
ACTION_CANCEL = 1
ACTION_REPLACE = 2
# execution report statuses (FILL.status)
ACK = 0
PARTIAL = 1
FILLED = 2
CANCELED = 3
REJECTED = 4
REPLACED = 5
STATUS_NAMES = ("ack", "partial", "filled", "canceled", "rejected", "replaced")

#: strategy sleeves per symbol (ORDER.tag): e.g. naive and ML-hybrid TWAP side by side in one run
N_TAGS = 4
#: client order table slots (a power of two: slot = cid & mask)
MAX_OPEN = 1024
#: staged orders / reports per step before they are published (the rings take them after each batch)
OUT_CAP = 4096
FILL_CAP = 8192
#: equity rows buffered between the agent's flushes to equity.csv
EQ_CAP = 1 << 15
#: risk events (kill switch on/off, halt) buffered between flushes to risk_events.csv
EV_CAP = 4096
EV_KILL_ON = 1
EV_KILL_OFF = 2
EV_HALT = 3
EV_NAMES = {EV_KILL_ON: "kill_switch_on", EV_KILL_OFF: "kill_switch_off", EV_HALT: "max_loss_halt"}

# -- globals g (int64) ---------------------------------------------------------------------------
G_NEXT_ID = 0
G_N_OUT = 1  #: orders staged in ctx.out
G_N_FILL = 2  #: reports staged in ctx.fills
G_DELIVERED = 3  #: reports already applied and handed to on_fill
G_NOW_MS = 4  #: newest exchange time seen on any symbol
G_CUR_MS = 5  #: exchange time of the record being processed (decision time)
G_HALTED = 6  #: max loss hit: everything refused for the rest of the run
G_BOOKS = 7
G_NEW = 8
G_CANCELS = 9
G_REPLACES = 10
G_REJECTS = 11
G_FILLS = 12  #: fill events (partial or full)
G_KILLS = 13  #: kill-switch activations
G_N_EQ = 14
G_NEXT_EQ_MS = 15
G_RATE_HEAD = 16  #: orders ever counted by the rate limiter (index into ctx.rate)
G_OUT_FULL = 17  #: orders refused because the staging buffer was full
G_FILLS_LOST = 18  #: reports that found no room (never expected: FILL_CAP is large)
G_EQ_DROPPED = 19
G_DECIDED = 20  #: book records after which at least one order was staged
G_FLATTENS = 21  #: flattening market orders sent by the kill switch or the max-loss halt
G_N_EV = 22  #: risk events staged in ctx.ev (risk_events.csv)
G_EV_DROPPED = 23
N_G = 24

# -- account rows (float64), one per (symbol, tag): row = s * N_TAGS + tag ------------------------
A_POS = 0
A_AVG = 1
A_CASH = 2
A_FEES = 3
A_REAL = 4  #: realised P&L by average cost, net of fees
A_OPEN_BUY = 5  #: qty of our live buy orders (sent, not yet filled or canceled)
A_OPEN_SELL = 6
A_VOLUME = 7  #: traded notional
A_ACTIVE = 8  #: 1 once the row has sent an order (equity.csv lists only active rows)
N_A = 9

# -- risk parameters (float64) -------------------------------------------------------------------
RP_MAX_POSITION = 0  #: |position| if every live order on that side filled (base qty); 0: off
RP_MAX_ORDER_QTY = 1
RP_MAX_NOTIONAL = 2  #: one order's notional (quote)
RP_MAX_ORDERS_PER_S = 3  #: new + replace in any 1 s of exchange time; cancels are never limited
RP_MAX_LOSS = 4  #: halt, cancel and flatten when total equity falls below -max_loss
RP_STALE_MS = 5  #: refuse orders on a book older than this (exchange time) or invalid
RP_KILL_SWITCH = 6  #: 1: the anomaly flag halts the symbol
RP_KILL_HOLD_MS = 7  #: the symbol stays halted until the flag has been clear this long
RP_KILL_FLATTEN = 8  #: 1: the kill switch also flattens the symbol's position
RP_LATENCY_MS = 9  #: order latency to the paper exchange (exchange ms)
RP_TIMER_MS = 10
RP_EQ_INTERVAL_MS = 11
N_RP = 12

# -- per-symbol risk / dispatch state (int64) ----------------------------------------------------
RS_KILLED = 0
RS_KILL_UNTIL_MS = 1
RS_SCORE_SEQ = 2  #: feature_seq of the last score handed to on_score
RS_NEXT_TIMER_MS = 3
N_RS = 4

#: client order table entry
#: live: 0 free, 1 live, 2 live with a cancel on its way (cancel_reason: why, for the report)
OO_DTYPE = np.dtype([("cid", "i8"), ("symbol", "i8"), ("tag", "i8"), ("side", "i8"), ("otype", "i8"),
                     ("price", "i8"), ("qty", "i8"), ("leaves", "i8"), ("live", "i8"), ("cancel_reason", "i8"),
                     ("post_only", "i8")])
#: equity.csv columns
EQ_COLUMNS = ("exch_ts_ms", "symbol", "tag", "position", "avg_price", "cash", "fees", "realized", "unrealized",
              "mid", "equity")

Ctx = namedtuple("Ctx", ["p", "st", "books", "scores", "has_score", "acct", "oo", "g", "rej", "rp", "rs",
                         "rate", "out", "fills", "eq", "x_orders", "x_msgs", "x_glob", "x_params", "ev"])


class Core:
    """The engine's arrays for one run (everything but the user's params and state)."""

    def __init__(self, n_symbols: int, rp: np.ndarray, paper_params: np.ndarray, *, max_orders: int = 1024,
                 max_msgs: int = 4096) -> None:
        from shm.records import BOOK, SCORE

        self.n_symbols = n_symbols
        self.x_orders, self.x_msgs, self.books, self.x_glob = paper.alloc(n_symbols, max_orders, max_msgs)
        self.x_params = paper_params
        self.scores = np.zeros(n_symbols, SCORE.dtype)
        self.has_score = np.zeros(n_symbols, np.int64)
        self.acct = np.zeros((n_symbols * N_TAGS, N_A), np.float64)
        self.oo = np.zeros(MAX_OPEN, OO_DTYPE)
        self.g = np.zeros(N_G, np.int64)
        self.g[G_NEXT_ID] = 1
        self.rej = np.zeros(R.N_REASONS, np.int64)
        self.rp = rp
        self.rs = np.zeros((n_symbols, N_RS), np.int64)
        self.rate = np.zeros(max(int(rp[RP_MAX_ORDERS_PER_S]), 1), np.int64)
        self.out = np.zeros(OUT_CAP, ORDER.dtype)
        self.fills = np.zeros(FILL_CAP, FILL.dtype)
        self.eq = np.zeros((EQ_CAP, len(EQ_COLUMNS)), np.float64)
        self.ev = np.zeros((EV_CAP, 3), np.float64)  # exch_ts_ms, symbol (-1: all), EV_* code
        assert BOOK.dtype == self.books.dtype

    def ctx(self, params: np.ndarray, state: np.ndarray) -> tuple:
        return Ctx(params[0], state, self.books, self.scores, self.has_score, self.acct, self.oo, self.g, self.rej,
                   self.rp, self.rs, self.rate, self.out, self.fills, self.eq, self.x_orders, self.x_msgs,
                   self.x_glob, self.x_params, self.ev)


def risk_params(*, max_position: float = 0.0, max_order_qty: float = 0.0, max_notional: float = 0.0,
                max_orders_per_s: float = 0.0, max_loss: float = 0.0, stale_ms: float = 0.0,
                kill_switch: bool = False, kill_hold_ms: float = 0.0, kill_flatten: bool = False,
                latency_ms: float = 0.0, timer_ms: float = 1000.0, equity_interval_ms: float = 1000.0) -> np.ndarray:
    """The risk vector; a limit of 0 is off."""
    rp = np.zeros(N_RP, np.float64)
    rp[RP_MAX_POSITION] = max_position
    rp[RP_MAX_ORDER_QTY] = max_order_qty
    rp[RP_MAX_NOTIONAL] = max_notional
    rp[RP_MAX_ORDERS_PER_S] = max_orders_per_s
    rp[RP_MAX_LOSS] = max_loss
    rp[RP_STALE_MS] = stale_ms
    rp[RP_KILL_SWITCH] = 1.0 if kill_switch else 0.0
    rp[RP_KILL_HOLD_MS] = kill_hold_ms
    rp[RP_KILL_FLATTEN] = 1.0 if kill_flatten else 0.0
    rp[RP_LATENCY_MS] = latency_ms
    rp[RP_TIMER_MS] = timer_ms
    rp[RP_EQ_INTERVAL_MS] = equity_interval_ms
    return rp


# == user-facing helpers (re-exported by procs.api) =================================================
@njit(cache=True, inline="always", _nrt=False)
def to_px(x: float) -> int:
    return round(x * PRICE_SCALE)


@njit(cache=True, inline="always", _nrt=False)
def to_qty(x: float) -> int:
    return round(x * QTY_SCALE)


@njit(cache=True, _nrt=False)
def now_ms(ctx) -> int:
    """Exchange time of the record being processed (the decision time)."""
    return ctx.g[G_CUR_MS]


@njit(cache=True, _nrt=False)
def book_valid(ctx, s: int) -> bool:
    b = ctx.books[s]
    return (b.flags & FLAG_BOOK_VALID) != 0 and b.bid_px > 0 and b.ask_px > 0


@njit(cache=True, _nrt=False)
def bid(ctx, s: int) -> float:
    return ctx.books[s].bid_px / PRICE_SCALE


@njit(cache=True, _nrt=False)
def ask(ctx, s: int) -> float:
    return ctx.books[s].ask_px / PRICE_SCALE


@njit(cache=True, _nrt=False)
def bid_qty(ctx, s: int) -> float:
    return ctx.books[s].bid_qty / QTY_SCALE


@njit(cache=True, _nrt=False)
def ask_qty(ctx, s: int) -> float:
    return ctx.books[s].ask_qty / QTY_SCALE


@njit(cache=True, _nrt=False)
def mid(ctx, s: int) -> float:
    b = ctx.books[s]
    return 0.5 * (b.bid_px + b.ask_px) / PRICE_SCALE


@njit(cache=True, _nrt=False)
def microprice(ctx, s: int) -> float:
    """Size-weighted mid: leans toward the side with less size (the likelier next move)."""
    b = ctx.books[s]
    bq = float(b.bid_qty)
    aq = float(b.ask_qty)
    if bq + aq <= 0:
        return mid(ctx, s)
    return (b.bid_px * aq + b.ask_px * bq) / (bq + aq) / PRICE_SCALE


@njit(cache=True, _nrt=False)
def spread_bps(ctx, s: int) -> float:
    b = ctx.books[s]
    m = 0.5 * (b.bid_px + b.ask_px)
    return (b.ask_px - b.bid_px) / m * 1e4 if m > 0 else np.nan


@njit(cache=True, _nrt=False)
def has_score(ctx, s: int) -> bool:
    return ctx.has_score[s] > 0


@njit(cache=True, _nrt=False)
def score_up(ctx, s: int) -> float:
    """P(next mid move is up) from the direction model; NaN before the first score or without the model."""
    return ctx.scores[s].values[SCORE_UP] if ctx.has_score[s] > 0 else np.nan


@njit(cache=True, _nrt=False)
def score_age_ms(ctx, s: int) -> int:
    """How old the symbol's newest score is: now − the exchange time of the book state it scored (-1: none)."""
    return ctx.g[G_CUR_MS] - ctx.scores[s].exch_ts_ms if ctx.has_score[s] > 0 else -1


@njit(cache=True, _nrt=False)
def anomaly_level(ctx, s: int) -> float:
    """The anomaly model's level in [0, 1]; 0 before the first score."""
    return ctx.scores[s].values[SCORE_ANOMALY] if ctx.has_score[s] > 0 else 0.0


@njit(cache=True, _nrt=False)
def anomaly_flag(ctx, s: int) -> bool:
    return ctx.has_score[s] > 0 and (ctx.scores[s].flags & FLAG_ANOMALY) != 0


@njit(cache=True, _nrt=False)
def position(ctx, s: int, tag: int = 0) -> float:
    return ctx.acct[s * N_TAGS + tag, A_POS]


@njit(cache=True, _nrt=False)
def avg_price(ctx, s: int, tag: int = 0) -> float:
    return ctx.acct[s * N_TAGS + tag, A_AVG]


@njit(cache=True, _nrt=False)
def open_qty(ctx, s: int, side: int, tag: int = 0) -> float:
    """Qty of our live orders on one side (sent and not yet filled or canceled)."""
    return ctx.acct[s * N_TAGS + tag, A_OPEN_BUY + side]


@njit(cache=True, _nrt=False)
def realized(ctx, s: int, tag: int = 0) -> float:
    return ctx.acct[s * N_TAGS + tag, A_REAL]


@njit(cache=True, _nrt=False)
def equity(ctx, s: int, tag: int = 0) -> float:
    """Cash + position at the mid: realised + unrealised P&L, net of fees."""
    a = ctx.acct[s * N_TAGS + tag]
    return a[A_CASH] + a[A_POS] * mid(ctx, s)


@njit(cache=True, _nrt=False)
def total_equity(ctx) -> float:
    tot = 0.0
    for r in range(ctx.acct.shape[0]):
        a = ctx.acct[r]
        if a[A_ACTIVE] != 0:
            tot += a[A_CASH] + a[A_POS] * mid(ctx, r // N_TAGS)
    return tot


@njit(cache=True, _nrt=False)
def halted(ctx) -> bool:
    return ctx.g[G_HALTED] != 0


@njit(cache=True, _nrt=False)
def tradable(ctx, s: int) -> bool:
    """New orders on s would pass the state checks: not halted, no kill switch, a fresh valid book."""
    if ctx.g[G_HALTED] != 0 or ctx.rs[s, RS_KILLED] != 0 or not book_valid(ctx, s):
        return False
    stale = ctx.rp[RP_STALE_MS]
    return not (stale > 0 and ctx.g[G_NOW_MS] - ctx.books[s].exch_ts_ms > stale)


@njit(cache=True, _nrt=False)
def order_leaves(ctx, cid: int) -> float:
    """Unfilled qty of our live order `cid`, 0 once it is done (filled, canceled, rejected) or unknown."""
    o = ctx.oo[cid & (MAX_OPEN - 1)]
    return o.leaves / QTY_SCALE if o.live != 0 and o.cid == cid else 0.0


@njit(cache=True, _nrt=False)
def order_live(ctx, cid: int) -> bool:
    o = ctx.oo[cid & (MAX_OPEN - 1)]
    return cid > 0 and o.live != 0 and o.cid == cid


# == the order path ===================================================================================
@njit(cache=True, _nrt=False)
def _report(ctx, s: int, cid: int, tag: int, side: int, px: int, leaves: int, status: int, reason: int,
            mid_px: int) -> None:
    """A report made by the engine itself (a risk refusal): staged like the exchange's, delivered in order."""
    n = ctx.g[G_N_FILL]
    if n >= ctx.fills.shape[0]:
        ctx.g[G_FILLS_LOST] += 1
        return
    now = ctx.g[G_CUR_MS]
    paper.write_report(ctx.fills[n], ctx.books[s].t_origin_ns, now, s, cid, side, tag, status, px, 0, leaves, 0, 0,
                       reason, now, mid_px)
    ctx.g[G_N_FILL] = n + 1


@njit(cache=True, _nrt=False)
def _refuse(ctx, s: int, tag: int, side: int, px: int, qty: int, reason: int, mid_px: int) -> int:
    ctx.rej[reason] += 1
    ctx.g[G_REJECTS] += 1
    _report(ctx, s, 0, tag, side, px, qty, REJECTED, reason, mid_px)
    return 0


@njit(cache=True, _nrt=False)
def _stage(ctx, s: int, cid: int, tag: int, side: int, otype: int, action: int, post_only: bool, px: int, qty: int,
           mid_px: int) -> bool:
    """Put an order on the paper exchange's wire and in the orders ring's staging buffer."""
    n = ctx.g[G_N_OUT]
    if n >= ctx.out.shape[0]:
        ctx.g[G_OUT_FULL] += 1
        return False
    if not paper.submit(ctx.x_msgs, ctx.x_glob, action, cid, s, tag, side, otype, 1 if post_only else 0, px, qty,
                        ctx.g[G_CUR_MS], mid_px, int(ctx.rp[RP_LATENCY_MS])):
        return False
    o = ctx.out[n]
    o.seq = 0
    o.t_origin_ns = ctx.books[s].t_origin_ns
    o.t_publish_ns = 0
    o.symbol = s
    o.kind = KIND_ORDER
    o.flags = FLAG_POST_ONLY if post_only else 0
    o.client_order_id = cid
    o.price = px
    o.qty = qty
    o.side = side
    o.order_type = otype
    o.action = action
    o.tag = tag
    o.exch_ts_ms = ctx.g[G_CUR_MS]
    o.mid_px = mid_px
    ctx.g[G_N_OUT] = n + 1
    return True


@njit(cache=True, _nrt=False)
def _mid_px(ctx, s: int) -> int:
    b = ctx.books[s]
    return (b.bid_px + b.ask_px) // 2 if b.bid_px > 0 and b.ask_px > 0 else 0


@njit(cache=True, _nrt=False)
def _rate_ok(ctx) -> bool:
    cap = ctx.rate.shape[0]
    lim = int(ctx.rp[RP_MAX_ORDERS_PER_S])
    if lim <= 0:
        return True
    h = ctx.g[G_RATE_HEAD]
    # the lim-th most recent order must be at least 1 s old
    return h < lim or ctx.g[G_CUR_MS] - ctx.rate[(h - lim) % cap] >= 1000


@njit(cache=True, _nrt=False)
def _rate_push(ctx) -> None:
    cap = ctx.rate.shape[0]
    h = ctx.g[G_RATE_HEAD]
    ctx.rate[h % cap] = ctx.g[G_CUR_MS]
    ctx.g[G_RATE_HEAD] = h + 1


@njit(cache=True, _nrt=False)
def _reduces(ctx, s: int, tag: int, side: int, qty: int) -> bool:
    """The order, with every live order on its side, can only shrink the sleeve's |position|."""
    a = ctx.acct[s * N_TAGS + tag]
    pos = a[A_POS]
    q = qty / QTY_SCALE + a[A_OPEN_BUY + side]
    if side == SELL:
        return pos > 0 and q <= pos * (1 + 1e-12)
    return pos < 0 and q <= -pos * (1 + 1e-12)


@njit(cache=True, _nrt=False)
def _check(ctx, s: int, tag: int, side: int, otype: int, px: int, qty: int, old_leaves: int) -> int:
    """The risk checks for a new (or replaced: `old_leaves` is what it replaces) order; 0 or a reason."""
    if side < 0 or side > 1 or otype < 0 or otype > 1 or qty <= 0 or (otype == LIMIT and px <= 0) \
            or tag < 0 or tag >= N_TAGS or s < 0 or s >= ctx.books.shape[0]:
        return R.BAD_ORDER
    if ctx.g[G_HALTED] != 0:
        return R.MAX_LOSS_HALTED
    if ctx.rs[s, RS_KILLED] != 0 and not _reduces(ctx, s, tag, side, qty):
        return R.KILL_SWITCH  # an order that only shrinks the position may still leave the market
    if not book_valid(ctx, s):
        return R.STALE_BOOK
    rp = ctx.rp
    if rp[RP_STALE_MS] > 0 and ctx.g[G_NOW_MS] - ctx.books[s].exch_ts_ms > rp[RP_STALE_MS]:
        return R.STALE_BOOK
    q = qty / QTY_SCALE
    if rp[RP_MAX_ORDER_QTY] > 0 and q > rp[RP_MAX_ORDER_QTY] * (1 + 1e-12):
        return R.MAX_ORDER_SIZE
    ref = px if otype == LIMIT else (ctx.books[s].ask_px if side == BUY else ctx.books[s].bid_px)
    if rp[RP_MAX_NOTIONAL] > 0 and q * ref / PRICE_SCALE > rp[RP_MAX_NOTIONAL] * (1 + 1e-12):
        return R.MAX_NOTIONAL
    if rp[RP_MAX_POSITION] > 0:
        a = ctx.acct[s * N_TAGS + tag]
        # worst case: this order and every live order on its side fill
        if side == BUY:
            worst = a[A_POS] + a[A_OPEN_BUY] - old_leaves / QTY_SCALE + q
        else:
            worst = -(a[A_POS] - a[A_OPEN_SELL] + old_leaves / QTY_SCALE - q)
        if worst > rp[RP_MAX_POSITION] * (1 + 1e-12) + 1e-12:
            return R.MAX_POSITION
    if not _rate_ok(ctx):
        return R.RATE_LIMIT
    return R.NONE


@njit(cache=True, _nrt=False)
def _send_new(ctx, s: int, tag: int, side: int, otype: int, px: int, qty: int, post_only: bool,
              bypass: bool) -> int:
    mid_px = _mid_px(ctx, s)
    if not bypass:
        reason = _check(ctx, s, tag, side, otype, px, qty, 0)
        if reason != R.NONE:
            return _refuse(ctx, s, tag, side, px, qty, reason, mid_px)
    cid = ctx.g[G_NEXT_ID]
    slot = cid & (MAX_OPEN - 1)
    o = ctx.oo[slot]
    if o.live != 0:  # the order MAX_OPEN ids ago is still live: the table is full
        return _refuse(ctx, s, tag, side, px, qty, R.TOO_MANY_OPEN, mid_px)
    if not _stage(ctx, s, cid, tag, side, otype, ACTION_NEW, post_only, px, qty, mid_px):
        return _refuse(ctx, s, tag, side, px, qty, R.EXCHANGE_FULL, mid_px)
    ctx.g[G_NEXT_ID] = cid + 1
    o.cid = cid
    o.symbol = s
    o.tag = tag
    o.side = side
    o.otype = otype
    o.price = px
    o.qty = qty
    o.leaves = qty
    o.live = 1
    o.cancel_reason = 0
    o.post_only = 1 if post_only else 0
    a = ctx.acct[s * N_TAGS + tag]
    a[A_OPEN_BUY + side] += qty / QTY_SCALE
    a[A_ACTIVE] = 1.0
    ctx.g[G_NEW] += 1
    _rate_push(ctx)
    return cid


@njit(cache=True, _nrt=False)
def limit(ctx, s: int, side: int, price: float, qty: float, tag: int = 0, post_only: bool = True) -> int:
    """A limit order (post-only by default). Returns its client order id, or 0 if the risk checks refused it
    (the refusal also comes back to on_fill as a `rejected` report with the reason)."""
    return _send_new(ctx, s, tag, side, LIMIT, to_px(price), to_qty(qty), post_only, False)


@njit(cache=True, _nrt=False)
def market(ctx, s: int, side: int, qty: float, tag: int = 0) -> int:
    """A market order: takes the visible depth on the other side. Returns its id, or 0 if refused."""
    return _send_new(ctx, s, tag, side, MARKET, 0, to_qty(qty), False, False)


@njit(cache=True, _nrt=False)
def cancel(ctx, cid: int) -> bool:
    """Ask the exchange to cancel a live order (never refused by risk: cancels only reduce it)."""
    return _cancel(ctx, cid, R.USER_CANCEL)


@njit(cache=True, _nrt=False)
def _cancel(ctx, cid: int, why: int) -> bool:
    """A cancel whose report will carry `why` (the exchange only knows it was asked to cancel)."""
    slot = cid & (MAX_OPEN - 1)
    o = ctx.oo[slot]
    if cid <= 0 or o.live != 1 or o.cid != cid:  # live 2: a cancel is already on its way
        return False
    if _stage(ctx, o.symbol, cid, o.tag, o.side, o.otype, ACTION_CANCEL, False, o.price, 0, _mid_px(ctx, o.symbol)):
        o.live = 2
        o.cancel_reason = why
        ctx.g[G_CANCELS] += 1
        return True
    return False


@njit(cache=True, _nrt=False)
def replace(ctx, cid: int, price: float, qty: float) -> bool:
    """Move a live limit order to a new price and/or qty (same price and less qty keeps its queue place)."""
    slot = cid & (MAX_OPEN - 1)
    o = ctx.oo[slot]
    if cid <= 0 or o.live != 1 or o.cid != cid or o.otype != LIMIT:
        return False
    px = to_px(price)
    q = to_qty(qty)
    s = o.symbol
    mid_px = _mid_px(ctx, s)
    reason = _check(ctx, s, o.tag, o.side, LIMIT, px, q, o.leaves)
    if reason != R.NONE:
        _refuse(ctx, s, o.tag, o.side, px, q, reason, mid_px)
        return False
    # a replace keeps the order's post-only: a quote moved into the spread must not start taking
    if not _stage(ctx, s, cid, o.tag, o.side, LIMIT, ACTION_REPLACE, o.post_only != 0, px, q, mid_px):
        return False
    ctx.g[G_REPLACES] += 1
    _rate_push(ctx)
    return True


@njit(cache=True, _nrt=False)
def cancel_all(ctx, s: int, tag: int = -1) -> int:
    """Cancel every live order on symbol s (of one tag, or all tags with -1). Returns how many."""
    n = 0
    for i in range(ctx.oo.shape[0]):
        o = ctx.oo[i]
        if o.live != 0 and o.symbol == s and (tag < 0 or o.tag == tag) and cancel(ctx, o.cid):
            n += 1
    return n


@njit(cache=True, _nrt=False)
def _flatten(ctx, s: int) -> None:
    """Market orders that bring every tag's position on s to zero, past the risk checks (they reduce risk)."""
    for tag in range(N_TAGS):
        p = ctx.acct[s * N_TAGS + tag, A_POS]
        q = to_qty(abs(p))
        if q > 0 and _send_new(ctx, s, tag, SELL if p > 0 else BUY, MARKET, 0, q, False, True) > 0:
            ctx.g[G_FLATTENS] += 1


# == reports ==========================================================================================
@njit(cache=True, _nrt=False)
def _account_fill(a, side: int, px: float, q: float, fee: float) -> None:
    """Average-cost accounting of one fill (a = the (symbol, tag) account row)."""
    sgn = 1.0 if side == BUY else -1.0
    pos = a[A_POS]
    if pos == 0.0 or (pos > 0) == (sgn > 0):
        new = pos + sgn * q
        a[A_AVG] = (abs(pos) * a[A_AVG] + q * px) / abs(new)
        a[A_POS] = new
    else:
        closing = min(q, abs(pos))
        a[A_REAL] += closing * (px - a[A_AVG]) * (1.0 if pos > 0 else -1.0)
        new = pos + sgn * q
        if abs(new) < 1e-12:
            new = 0.0
            a[A_AVG] = 0.0
        elif (new > 0) != (pos > 0):  # flipped: the rest opens a position at this price
            a[A_AVG] = px
        a[A_POS] = new
    a[A_CASH] -= sgn * px * q + fee
    a[A_FEES] += fee
    a[A_REAL] -= fee
    a[A_VOLUME] += px * q


@njit(cache=True, _nrt=False)
def _apply(ctx, r) -> None:
    """Fold one execution report into the client order table and the account."""
    if r.client_order_id == 0:  # a risk refusal: nothing was live
        return
    o = ctx.oo[r.client_order_id & (MAX_OPEN - 1)]
    if o.live == 0 or o.cid != r.client_order_id:
        return
    a = ctx.acct[o.symbol * N_TAGS + o.tag]
    if r.status == CANCELED and o.live == 2:
        r.reason = o.cancel_reason  # the report (and fills.csv) says why we canceled: user, kill switch, max loss
    if r.qty > 0:
        _account_fill(a, o.side, r.price / PRICE_SCALE, r.qty / QTY_SCALE, r.fee / PRICE_SCALE)
        ctx.g[G_FILLS] += 1
    st = r.status
    # a refused replace reports the leaves it left resting; a refused new order or cancel reports 0
    new_leaves = 0 if st in (CANCELED, FILLED) else r.leaves_qty
    a[A_OPEN_BUY + o.side] += (new_leaves - o.leaves) / QTY_SCALE
    if abs(a[A_OPEN_BUY + o.side]) < 1e-12:
        a[A_OPEN_BUY + o.side] = 0.0
    o.leaves = new_leaves
    if st == REPLACED:
        o.price = r.price
    if new_leaves == 0 and st != ACK and st != REPLACED:
        o.live = 0
    elif st == REJECTED and o.live == 2 and r.reason == R.UNKNOWN_ORDER:
        o.live = 1  # never expected (a cancel loses only to the order's end); keep the table consistent


@njit(cache=True, _nrt=False)
def next_report(ctx) -> int:
    """Apply the next staged report to the order table and the account; its index in ctx.fills, or -1."""
    i = ctx.g[G_DELIVERED]
    if i >= ctx.g[G_N_FILL]:
        return -1
    ctx.g[G_DELIVERED] = i + 1
    _apply(ctx, ctx.fills[i])
    return i


@njit
def _deliver(ctx, on_fill) -> None:
    """Hand each staged report to the user in order (whose orders may add more: loop)."""
    i = next_report(ctx)
    while i >= 0:
        r = ctx.fills[i]
        on_fill(ctx, r.symbol, r)
        i = next_report(ctx)


@njit(cache=True, _nrt=False)
def _event(ctx, s: int, code: int) -> None:
    """A risk event for risk_events.csv: when the kill switch or the halt acted, even with no order open."""
    k = ctx.g[G_N_EV]
    if k >= ctx.ev.shape[0]:
        ctx.g[G_EV_DROPPED] += 1
        return
    ctx.ev[k, 0] = ctx.g[G_CUR_MS]
    ctx.ev[k, 1] = s
    ctx.ev[k, 2] = code
    ctx.g[G_N_EV] = k + 1


@njit(cache=True, _nrt=False)
def _risk_state(ctx, s: int) -> None:
    """Kill switch on s and the max-loss halt, driven by the newest score and the account."""
    rp = ctx.rp
    now = ctx.g[G_CUR_MS]
    if rp[RP_KILL_SWITCH] != 0:
        if anomaly_flag(ctx, s):
            ctx.rs[s, RS_KILL_UNTIL_MS] = now + int(rp[RP_KILL_HOLD_MS])
            if ctx.rs[s, RS_KILLED] == 0:
                ctx.rs[s, RS_KILLED] = 1
                ctx.g[G_KILLS] += 1
                _event(ctx, s, EV_KILL_ON)
                for i in range(ctx.oo.shape[0]):
                    o = ctx.oo[i]
                    if o.live == 1 and o.symbol == s:
                        _cancel(ctx, o.cid, R.KILL_SWITCH_CANCEL)
                if rp[RP_KILL_FLATTEN] != 0:
                    _flatten(ctx, s)
        elif ctx.rs[s, RS_KILLED] != 0 and now >= ctx.rs[s, RS_KILL_UNTIL_MS]:
            ctx.rs[s, RS_KILLED] = 0
            _event(ctx, s, EV_KILL_OFF)
    if rp[RP_MAX_LOSS] > 0 and ctx.g[G_HALTED] == 0 and total_equity(ctx) < -rp[RP_MAX_LOSS]:
        ctx.g[G_HALTED] = 1
        _event(ctx, -1, EV_HALT)
        for i in range(ctx.oo.shape[0]):
            o = ctx.oo[i]
            if o.live == 1:
                _cancel(ctx, o.cid, R.MAX_LOSS_CANCEL)
        for sym in range(ctx.books.shape[0]):
            if book_valid(ctx, sym):
                _flatten(ctx, sym)


@njit(cache=True, _nrt=False)
def _sample_equity(ctx) -> None:
    now = ctx.g[G_CUR_MS]
    if now < ctx.g[G_NEXT_EQ_MS]:
        return
    iv = max(int(ctx.rp[RP_EQ_INTERVAL_MS]), 1)
    ctx.g[G_NEXT_EQ_MS] = (now // iv + 1) * iv
    write_equity(ctx, now)


@njit(cache=True, _nrt=False)
def write_equity(ctx, now: int) -> None:
    for row in range(ctx.acct.shape[0]):
        a = ctx.acct[row]
        if a[A_ACTIVE] == 0:
            continue
        k = ctx.g[G_N_EQ]
        if k >= ctx.eq.shape[0]:
            ctx.g[G_EQ_DROPPED] += 1
            continue
        s = row // N_TAGS
        m = mid(ctx, s)
        e = ctx.eq[k]
        e[0] = now
        e[1] = s
        e[2] = row % N_TAGS
        e[3] = a[A_POS]
        e[4] = a[A_AVG]
        e[5] = a[A_CASH]
        e[6] = a[A_FEES]
        e[7] = a[A_REAL]
        e[8] = a[A_POS] * (m - a[A_AVG]) if a[A_POS] != 0 else 0.0
        e[9] = m
        e[10] = a[A_CASH] + a[A_POS] * m
        ctx.g[G_N_EQ] = k + 1


@njit(cache=True, _nrt=False)
def begin(ctx, b) -> None:
    """Clocks, then the paper exchange on the record (its reports staged for delivery)."""
    ts = b.exch_ts_ms
    ctx.g[G_CUR_MS] = ts
    if ts > ctx.g[G_NOW_MS]:
        ctx.g[G_NOW_MS] = ts
    ctx.g[G_BOOKS] += 1
    ctx.g[G_N_FILL] = paper.on_book(ctx.x_orders, ctx.x_msgs, ctx.books, ctx.x_glob, ctx.x_params, b, ctx.fills,
                                    ctx.g[G_N_FILL])


@njit(cache=True, _nrt=False)
def score_due(ctx, s: int) -> bool:
    """The symbol's score changed since on_score last saw it (marks it seen)."""
    if ctx.has_score[s] > 0 and ctx.scores[s].feature_seq != ctx.rs[s, RS_SCORE_SEQ]:
        ctx.rs[s, RS_SCORE_SEQ] = ctx.scores[s].feature_seq
        return True
    return False


@njit(cache=True, _nrt=False)
def timer_due(ctx, s: int, ts: int) -> bool:
    tm = int(ctx.rp[RP_TIMER_MS])
    if tm > 0 and ts >= ctx.rs[s, RS_NEXT_TIMER_MS]:
        ctx.rs[s, RS_NEXT_TIMER_MS] = (ts // tm + 1) * tm
        return True
    return False


@njit
def process(ctx, b, on_book, on_trade, on_score, on_fill, on_timer) -> None:
    """Everything one BOOK record causes (module docstring). The score board has been read into
    ctx.scores[s] by the caller. Only this thin sequence is compiled per strategy (it takes the
    callbacks); the work is in the cached functions it calls, so a run starts without recompiling them."""
    s = b.symbol
    begin(ctx, b)
    _deliver(ctx, on_fill)
    _risk_state(ctx, s)
    _deliver(ctx, on_fill)
    if score_due(ctx, s):
        on_score(ctx, s, ctx.scores[s])
        _deliver(ctx, on_fill)
    if b.trade_qty != 0:
        on_trade(ctx, s, b.trade_px / PRICE_SCALE, b.trade_qty / QTY_SCALE)
        _deliver(ctx, on_fill)
    on_book(ctx, s, b)
    _deliver(ctx, on_fill)
    if timer_due(ctx, s, b.exch_ts_ms):
        on_timer(ctx, s, b.exch_ts_ms)
        _deliver(ctx, on_fill)
    _sample_equity(ctx)


# -- no-op callbacks for the ones a strategy does not define -----------------------------------------
@njit(cache=True, _nrt=False)
def noop_book(ctx, s, b) -> None:
    pass


@njit(cache=True, _nrt=False)
def noop_trade(ctx, s, px, qty) -> None:
    pass


@njit(cache=True, _nrt=False)
def noop_score(ctx, s, score) -> None:
    pass


@njit(cache=True, _nrt=False)
def noop_fill(ctx, s, fill) -> None:
    pass


@njit(cache=True, _nrt=False)
def noop_timer(ctx, s, now) -> None:
    pass
