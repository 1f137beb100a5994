"""Paper exchange: simulated order matching against the replayed L2 book, on the exchange clock.

Runs inside the strategy's process: the strategy's compiled step calls `on_book` for every BOOK
record (before its own callbacks) and `submit` for every order message it sends. Every function on
the hot path is `@njit(cache=True)` over numpy arrays and numba Records, allocates nothing and raises
nothing, so a numba cfunc can call it.

Model (L2, BOOK_DEPTH visible levels per side, our orders invisible to the feed — no market impact):
- Latency: a message submitted with decision time t and latency L takes effect at the first BOOK
  record of its symbol that arrives after the submit with exch_ts_ms >= t + L, matched against that
  record (the post-update book). Due times never decrease along the FIFO, so messages of one symbol
  apply in submission order; a symbol with no record yet does not hold back other symbols' messages.
- New limit: post-only that would cross is rejected; a marketable one takes the opposite visible
  levels up to its price as taker (one fill per level), the remainder rests. Market: walks the whole
  opposite visible depth, the remainder is canceled NO_LIQUIDITY.
- Queue (hftbacktest ProbQueueModel, linear): a resting order joins behind the visible qty at its
  price (0 when it improves on the best; unknown beyond the visible depth until the price enters it).
  Trades at its price consume `ahead` then fill it; a trade through its price fills it fully; a level
  decrease not explained by trades at that price is cancels, which cut `ahead` by
  decrease * ahead / level_qty; `ahead` never exceeds the visible qty. A book that crosses its price
  fills it fully at its price as maker (minus the liquidity it took itself as a taker, which the feed
  still shows until it changes).
- Cancel / replace find the resting order by (symbol, client_order_id, tag); not resting (filled,
  canceled, never accepted) → rejected UNKNOWN_ORDER. A replace's qty is the new open (leaves) qty; same
  price and a lower qty keeps the queue position, anything else rejoins at the back (a marketable,
  non-post-only new price takes liquidity first; a post-only one that would cross is rejected and the
  order stays as it was).
- Fees: bps of notional (price * qty // QTY_SCALE, fixed point at PRICE_SCALE), maker / taker,
  negative bps = rebate. Every event writes one FILL record (the execution report): ack (leaves = qty),
  partial / filled (one per taken level; one per record for a resting order), canceled and rejected
  (qty 0, leaves 0; a refused replace shows the order's unchanged leaves), replaced (new price, leaves).
- Out buffer: a message is delivered only when its worst-case reports fit (else it waits for the next
  call); a resting fill that does not fit is kept on its order and reported first on the next call.

Hot functions are `_nrt=False`: no refcounting of the array arguments on every internal call (10x
faster here). State lives in four arrays from `alloc`: the order table, the message FIFO, the last
BOOK per symbol, and `glob` (N_PG counters / state slots, then per symbol: resting-list head, tail,
last record tick). Resting orders are a doubly linked list per symbol in time priority, so on_book
touches only its symbol's orders.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from procs.kernels.reasons import (
    BAD_ORDER,
    EXCHANGE_FULL,
    NO_LIQUIDITY,
    NO_MARKET_DATA,
    POST_ONLY_WOULD_CROSS,
    UNKNOWN_ORDER,
    USER_CANCEL,
)
from shm.records import BOOK, BOOK_DEPTH, FILL, FLAG_BOOK_VALID, KIND_FILL, QTY_SCALE

# -- params (float64 vector) ----------------------------------------------------------------------
PP_LATENCY_MS = 0  #: exchange-time ms between decision and arrival
PP_MAKER_FEE_BPS = 1  #: bps of notional on maker fills (< 0: rebate)
PP_TAKER_FEE_BPS = 2
N_PP = 3

# -- glob: counters ------------------------------------------------------------------------------
G_SUBMITTED = 0  #: messages accepted by submit
G_MSGS_FULL = 1  #: submits refused: FIFO full
G_DELIVERED = 2  #: messages that reached the exchange
G_REPORTS = 3  #: FILL records written
G_REPORTS_OVERFLOW = 4  #: times work was deferred because `out` had no room
G_FILLS = 5  #: fill events (maker + taker)
G_MAKER_FILLS = 6
G_TAKER_FILLS = 7
G_ACKS = 8
G_REJECTS = 9
G_CANCELS = 10  #: canceled reports (user cancels and market remainders)
G_REPLACES = 11
G_ORDERS_FULL = 12  #: new orders rejected EXCHANGE_FULL (order table full)
G_BOOKS = 13  #: on_book calls (also the tick that orders messages against records)
G_BAD_SYMBOL = 14  #: BOOK records with a symbol id >= n_symbols (ignored)
N_PG_COUNTERS = 15
# -- glob: state (not counters) --------------------------------------------------------------------
G_MSG_HEAD = 15  #: FIFO position of the oldest undelivered message
G_MSG_TAIL = 16  #: FIFO position of the next submit
G_FREE = 17  #: first free order slot (-1: table full)
G_PENDING = 18  #: order slots holding a fill report that did not fit in `out`
G_LAST_DUE = 19  #: due time of the newest message (due times are kept non-decreasing)
G_CLOCK = 20  #: newest exch_ts_ms seen on any symbol
G_RESTING = 21  #: resting orders now
N_PG = 22
# -- glob: per symbol s, at N_PG + PS_STRIDE * s + ... ---------------------------------------------
PS_HEAD = 0  #: first resting order slot of the symbol (-1: none), time priority order
PS_TAIL = 1
PS_TICK = 2  #: G_BOOKS value of the symbol's last record
PS_STRIDE = 3

#: names of the counters glob[:N_PG_COUNTERS], for the stage's counter export
COUNTER_NAMES: tuple[str, ...] = (
    "submitted", "msgs_full", "delivered", "reports", "reports_overflow", "fills", "maker_fills",
    "taker_fills", "acks", "rejects", "cancels", "replaces", "orders_full", "books", "bad_symbol",
)

# -- enums (as in the ORDER / FILL records) ----------------------------------------------------------
SIDE_BUY = 0
SIDE_SELL = 1
OTYPE_LIMIT = 0
OTYPE_MARKET = 1
ACTION_NEW = 0
ACTION_CANCEL = 1
ACTION_REPLACE = 2
STATUS_ACK = 0
STATUS_PARTIAL = 1
STATUS_FILLED = 2
STATUS_CANCELED = 3
STATUS_REJECTED = 4
STATUS_REPLACED = 5
LIQ_MAKER = 0
LIQ_TAKER = 1
# order slot states
OS_FREE = 0
OS_RESTING = 1
OS_DONE_PENDING = 2  #: filled, its last fill report still waiting for room in `out`

#: most reports one message can produce: ack + one fill per visible level + a final cancel
MSG_MAX_REPORTS = BOOK_DEPTH + 2

ORDER_SLOT_DTYPE = np.dtype([
    ("cid", "u8"),
    ("price", "i8"),
    ("leaves", "i8"),  #: open qty
    ("cum_qty", "i8"),  #: filled so far
    ("ahead", "i8"),  #: visible qty ahead of us at our price (-1: unknown, price beyond the visible depth)
    ("lvl", "i8"),  #: visible qty at our price on the last record seen (-1: beyond the visible depth)
    ("pend_trade", "i8"),  #: trade volume at our price not yet seen as a level decrease
    ("shadow", "i8"),  #: liquidity this order took as a taker that the feed may still show
    ("order_ts_ms", "i8"),
    ("mid_px", "i8"),
    ("pend_qty", "i8"),  #: maker fill qty not yet reported (out was full)
    ("pend_fee", "i8"),
    ("pend_ts_ms", "i8"),
    ("pend_origin_ns", "i8"),
    ("join_tick", "i8"),  #: G_BOOKS when it (re)joined the queue: not matched against that record again
    ("next", "i8"),  #: next slot in the symbol's resting list (or the free list)
    ("prev", "i8"),
    ("symbol", "u4"),
    ("tag", "u2"),
    ("side", "u1"),
    ("state", "u1"),  #: OS_*
    ("post_only", "u1"),
], align=True)

MSG_DTYPE = np.dtype([
    ("cid", "u8"),
    ("price", "i8"),
    ("qty", "i8"),
    ("decision_ms", "i8"),
    ("mid_px", "i8"),
    ("due_ms", "i8"),  #: earliest exch_ts_ms of the record it takes effect at
    ("tick", "i8"),  #: G_BOOKS at submit: only a later record of its symbol can deliver it
    ("symbol", "u4"),
    ("tag", "u2"),
    ("action", "u1"),
    ("side", "u1"),
    ("otype", "u1"),
    ("post_only", "u1"),
    ("done", "u1"),  #: delivered (a hole until the FIFO head passes it)
], align=True)

FILL_DTYPE = FILL.dtype
BOOK_DTYPE = BOOK.dtype


def alloc(n_symbols: int, max_orders: int = 1024, max_msgs: int = 4096
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(orders, msgs, books, glob). max_msgs is rounded up to a power of two (the FIFO masks)."""
    if n_symbols < 1 or max_orders < 1 or max_msgs < 1:
        raise ValueError(f"sizes must be >= 1: n_symbols={n_symbols} max_orders={max_orders} max_msgs={max_msgs}")
    orders = np.zeros(max_orders, ORDER_SLOT_DTYPE)
    orders["next"] = np.arange(1, max_orders + 1)
    orders["next"][-1] = -1
    orders["prev"] = -1
    msgs = np.zeros(1 << (max_msgs - 1).bit_length(), MSG_DTYPE)
    books = np.zeros(n_symbols, BOOK.dtype)
    glob = np.zeros(N_PG + PS_STRIDE * n_symbols, np.int64)
    glob[G_FREE] = 0
    glob[G_LAST_DUE] = np.iinfo(np.int64).min
    per = glob[N_PG:].reshape(n_symbols, PS_STRIDE)
    per[:, PS_HEAD] = -1
    per[:, PS_TAIL] = -1
    return orders, msgs, books, glob


def params_from(latency_ms: float, maker_fee_bps: float, taker_fee_bps: float) -> np.ndarray:
    p = np.zeros(N_PP, np.float64)
    p[PP_LATENCY_MS] = latency_ms
    p[PP_MAKER_FEE_BPS] = maker_fee_bps
    p[PP_TAKER_FEE_BPS] = taker_fee_bps
    return p


def counters(glob: np.ndarray) -> dict[str, int]:
    """The counters by name (not for the hot path)."""
    return {name: int(glob[i]) for i, name in enumerate(COUNTER_NAMES)}


# -- helpers ---------------------------------------------------------------------------------------
@njit(cache=True, inline="always", _nrt=False)
def notional(price: int, qty: int) -> int:
    """price * qty // QTY_SCALE without the int64 overflow of the plain product (BTC: 6e12 * 1e8)."""
    a = price // QTY_SCALE
    r = price % QTY_SCALE
    c = qty // QTY_SCALE
    d = qty % QTY_SCALE
    return a * qty + r * c + (r * d) // QTY_SCALE


@njit(cache=True, inline="always", _nrt=False)
def fee_of(price: int, qty: int, bps: float) -> int:
    """notional * bps / 1e4, rounded half away from zero."""
    x = notional(price, qty) * bps * 1e-4
    return int(x + 0.5) if x >= 0 else -int(-x + 0.5)


@njit(cache=True, inline="always", _nrt=False)
def _level_qty(pxs, qtys, price: int, sgn: int) -> int:
    """Visible qty at `price` on one side (best first; sgn +1 bids, -1 asks): 0 when the price is inside
    the visible range but has no level, -1 when it lies beyond the visible depth."""
    for i in range(BOOK_DEPTH):
        p = pxs[i]
        if p == 0:
            return 0  # the side has fewer levels than the depth: everything is visible
        if p == price:
            return qtys[i]
        if sgn * p < sgn * price:
            return 0  # passed our price: no level there
    return -1


@njit(cache=True, inline="always", _nrt=False)
def _crossing_qty(pxs, qtys, price: int, sgn: int) -> int:
    """Visible opposite qty at prices a `sgn` order at `price` would take."""
    t = 0
    for i in range(BOOK_DEPTH):
        p = pxs[i]
        if p == 0 or sgn * p > sgn * price:
            break
        t += qtys[i]
    return t


@njit(cache=True, inline="always", _nrt=False)
def write_report(r, origin_ns: int, ts_ms: int, symbol: int, cid: int, side: int, tag: int, status: int,
                 price: int, qty: int, leaves: int, fee: int, liq: int, reason: int, order_ts: int, mid: int) -> None:
    """Every field of one FILL record (also the engine's own reports: risk refusals)."""
    r.seq = 0
    r.t_origin_ns = origin_ns
    r.t_publish_ns = 0
    r.symbol = symbol
    r.kind = KIND_FILL
    r.flags = 0
    r.client_order_id = cid
    r.price = price
    r.qty = qty
    r.leaves_qty = leaves
    r.fee = fee
    r.side = side
    r.status = status
    r.tag = tag
    r.liquidity = liq
    r.reason = reason
    r.exch_ts_ms = ts_ms
    r.order_ts_ms = order_ts
    r.mid_px = mid


@njit(cache=True, inline="always", _nrt=False)
def _emit(out, n: int, origin_ns: int, ts_ms: int, glob, symbol: int, cid: int, side: int, tag: int,
          status: int, price: int, qty: int, leaves: int, fee: int, liq: int, reason: int, order_ts: int,
          mid: int) -> int:
    write_report(out[n], origin_ns, ts_ms, symbol, cid, side, tag, status, price, qty, leaves, fee, liq, reason,
                 order_ts, mid)
    glob[G_REPORTS] += 1
    return n + 1


@njit(cache=True, inline="always", _nrt=False)
def _store_book(d, b) -> None:
    """books[s] = b field by field: also works for a record whose dtype lost BOOK's padding (np.concatenate)."""
    d.seq = b.seq
    d.t_origin_ns = b.t_origin_ns
    d.t_publish_ns = b.t_publish_ns
    d.symbol = b.symbol
    d.kind = b.kind
    d.flags = b.flags
    d.bid_px = b.bid_px
    d.bid_qty = b.bid_qty
    d.ask_px = b.ask_px
    d.ask_qty = b.ask_qty
    d.last_id = b.last_id
    d.exch_ts_ms = b.exch_ts_ms
    d.trade_px = b.trade_px
    d.trade_qty = b.trade_qty
    for i in range(BOOK_DEPTH):
        d.bid_pxs[i] = b.bid_pxs[i]
        d.bid_qtys[i] = b.bid_qtys[i]
        d.ask_pxs[i] = b.ask_pxs[i]
        d.ask_qtys[i] = b.ask_qtys[i]


@njit(cache=True, inline="always", _nrt=False)
def _append(orders, glob, s: int, j: int) -> None:
    h = N_PG + PS_STRIDE * s
    t = glob[h + PS_TAIL]
    orders[j].prev = t
    orders[j].next = -1
    if t >= 0:
        orders[t].next = j
    else:
        glob[h + PS_HEAD] = j
    glob[h + PS_TAIL] = j


@njit(cache=True, inline="always", _nrt=False)
def _unlink(orders, glob, s: int, j: int) -> None:
    h = N_PG + PS_STRIDE * s
    p = orders[j].prev
    x = orders[j].next
    if p >= 0:
        orders[p].next = x
    else:
        glob[h + PS_HEAD] = x
    if x >= 0:
        orders[x].prev = p
    else:
        glob[h + PS_TAIL] = p
    orders[j].prev = -1
    orders[j].next = -1


@njit(cache=True, inline="always", _nrt=False)
def _free(orders, glob, j: int) -> None:
    orders[j].state = OS_FREE
    orders[j].next = glob[G_FREE]
    glob[G_FREE] = j


@njit(cache=True, inline="always", _nrt=False)
def _find(orders, glob, s: int, cid: int, tag: int) -> int:
    """Slot of the resting order (cid, tag) of symbol s, -1 if none."""
    j = glob[N_PG + PS_STRIDE * s + PS_HEAD]
    while j >= 0:
        o = orders[j]
        if o.cid == cid and o.tag == tag:
            return j
        j = o.next
    return -1


@njit(cache=True, inline="always", _nrt=False)
def _join(o, bk, tick: int) -> None:
    """(Re)join the queue at o.price behind the visible qty of bk."""
    if o.side == SIDE_BUY:
        q = _level_qty(bk.bid_pxs, bk.bid_qtys, o.price, 1)
    else:
        q = _level_qty(bk.ask_pxs, bk.ask_qtys, o.price, -1)
    o.ahead = q
    o.lvl = q
    o.pend_trade = 0
    o.join_tick = tick


@njit(cache=True, _nrt=False)
def _take(out, n: int, origin_ns: int, ts_ms: int, glob, bk, symbol: int, cid: int, side: int, tag: int,
          limit_px: int, is_market: bool, rem: int, bps: float, order_ts: int, mid: int) -> tuple[int, int, int]:
    """Take the opposite visible levels (up to limit_px unless a market order) as taker, one report per
    level. Returns (n, remaining qty, qty taken)."""
    sgn = 1 if side == SIDE_BUY else -1
    pxs = bk.ask_pxs if side == SIDE_BUY else bk.bid_pxs
    qtys = bk.ask_qtys if side == SIDE_BUY else bk.bid_qtys
    taken = 0
    for i in range(BOOK_DEPTH):
        if rem <= 0:
            break
        p = pxs[i]
        if p == 0 or (not is_market and sgn * p > sgn * limit_px):
            break
        q = min(qtys[i], rem)
        if q <= 0:
            continue
        rem -= q
        taken += q
        glob[G_FILLS] += 1
        glob[G_TAKER_FILLS] += 1
        n = _emit(out, n, origin_ns, ts_ms, glob, symbol, cid, side, tag,
                  STATUS_FILLED if rem == 0 else STATUS_PARTIAL, p, q, rem, fee_of(p, q, bps), LIQ_TAKER, 0,
                  order_ts, mid)
    return n, rem, taken


@njit(cache=True, inline="always", _nrt=False)
def _has_market(bk, side: int) -> bool:
    """The book is valid and has a level on the side an order of `side` would trade against."""
    if not (bk.flags & FLAG_BOOK_VALID):
        return False
    return (bk.ask_pxs[0] > 0 and bk.ask_qtys[0] > 0) if side == SIDE_BUY else (bk.bid_pxs[0] > 0 and
                                                                                 bk.bid_qtys[0] > 0)


@njit(cache=True, inline="always", _nrt=False)
def _crosses(bk, side: int, price: int) -> bool:
    if side == SIDE_BUY:
        return bk.ask_pxs[0] > 0 and bk.ask_pxs[0] <= price
    return bk.bid_pxs[0] > 0 and bk.bid_pxs[0] >= price


@njit(cache=True, _nrt=False)
def _apply(orders, books, glob, params, m, b, tick: int, out, n: int) -> int:
    """Deliver one message against its symbol's last book; reports stamped with the record b."""
    s = np.int64(m.symbol)
    origin = b.t_origin_ns
    ts = b.exch_ts_ms
    n_sym = books.shape[0]
    act = m.action
    if act > ACTION_REPLACE:  # unknown action
        glob[G_REJECTS] += 1
        return _emit(out, n, origin, ts, glob, s, m.cid, m.side, m.tag, STATUS_REJECTED, m.price, 0, 0, 0, 0,
                     BAD_ORDER, m.decision_ms, m.mid_px)
    if act != ACTION_NEW:
        j = _find(orders, glob, s, m.cid, m.tag) if s < n_sym else -1
        if j < 0:  # already filled / canceled (or never accepted): the cancel lost the race
            glob[G_REJECTS] += 1
            return _emit(out, n, origin, ts, glob, s, m.cid, m.side, m.tag, STATUS_REJECTED, m.price, 0, 0, 0,
                         0, UNKNOWN_ORDER, m.decision_ms, m.mid_px)
        o = orders[j]
        if act == ACTION_CANCEL:
            glob[G_CANCELS] += 1
            n = _emit(out, n, origin, ts, glob, s, o.cid, o.side, o.tag, STATUS_CANCELED, o.price, 0, 0, 0, 0,
                      USER_CANCEL, o.order_ts_ms, o.mid_px)
            _unlink(orders, glob, s, j)
            glob[G_RESTING] -= 1
            if o.pend_qty > 0:
                o.state = OS_DONE_PENDING  # its last fill is still to be reported (it came first)
            else:
                _free(orders, glob, j)
            return n
        bk = books[s]
        reason = 0
        if not _has_market(bk, o.side):
            reason = NO_MARKET_DATA
        elif m.qty <= 0 or m.price <= 0:
            reason = BAD_ORDER
        elif m.post_only and _crosses(bk, o.side, m.price):
            reason = POST_ONLY_WOULD_CROSS
        if reason != 0:  # the order stays as it was
            glob[G_REJECTS] += 1
            return _emit(out, n, origin, ts, glob, s, o.cid, o.side, o.tag, STATUS_REJECTED, m.price, 0, o.leaves,
                         0, 0, reason, o.order_ts_ms, o.mid_px)
        glob[G_REPLACES] += 1
        o.post_only = m.post_only
        if m.price == o.price and m.qty < o.leaves:  # a size cut keeps the queue position
            o.leaves = m.qty
            return _emit(out, n, origin, ts, glob, s, o.cid, o.side, o.tag, STATUS_REPLACED, o.price, 0,
                         o.leaves, 0, 0, 0, o.order_ts_ms, o.mid_px)
        o.price = m.price
        o.leaves = m.qty
        o.shadow = 0
        n = _emit(out, n, origin, ts, glob, s, o.cid, o.side, o.tag, STATUS_REPLACED, o.price, 0, o.leaves, 0, 0,
                  0, o.order_ts_ms, o.mid_px)
        _unlink(orders, glob, s, j)  # loses priority: back of our own time order too
        if _crosses(bk, o.side, o.price):
            n, rem, taken = _take(out, n, origin, ts, glob, bk, s, o.cid, o.side, o.tag, o.price, False, o.leaves,
                                  params[PP_TAKER_FEE_BPS], o.order_ts_ms, o.mid_px)
            o.cum_qty += o.leaves - rem
            o.leaves = rem
            o.shadow = taken
            if rem == 0:
                glob[G_RESTING] -= 1
                if o.pend_qty > 0:
                    o.state = OS_DONE_PENDING
                else:
                    _free(orders, glob, j)
                return n
        _append(orders, glob, s, j)
        _join(o, bk, tick)
        return n
    # -- new order
    reason = 0
    if s >= n_sym or not _has_market(books[s], m.side):
        reason = NO_MARKET_DATA
    elif m.qty <= 0 or (m.otype == OTYPE_LIMIT and m.price <= 0) or m.side > SIDE_SELL or m.otype > OTYPE_MARKET:
        reason = BAD_ORDER
    elif m.otype == OTYPE_LIMIT and m.post_only and _crosses(books[s], m.side, m.price):
        reason = POST_ONLY_WOULD_CROSS
    elif m.otype == OTYPE_LIMIT and glob[G_FREE] < 0:
        reason = EXCHANGE_FULL
        glob[G_ORDERS_FULL] += 1
    if reason != 0:
        glob[G_REJECTS] += 1
        return _emit(out, n, origin, ts, glob, s, m.cid, m.side, m.tag, STATUS_REJECTED, m.price, 0, 0, 0, 0,
                     reason, m.decision_ms, m.mid_px)
    bk = books[s]
    glob[G_ACKS] += 1
    n = _emit(out, n, origin, ts, glob, s, m.cid, m.side, m.tag, STATUS_ACK, m.price, 0, m.qty, 0, 0, 0,
              m.decision_ms, m.mid_px)
    rem = m.qty
    taken = 0
    is_market = m.otype == OTYPE_MARKET
    if is_market or _crosses(bk, m.side, m.price):
        n, rem, taken = _take(out, n, origin, ts, glob, bk, s, m.cid, m.side, m.tag, m.price, is_market, rem,
                              params[PP_TAKER_FEE_BPS], m.decision_ms, m.mid_px)
    if rem == 0:
        return n
    if is_market:  # nothing visible left to take
        glob[G_CANCELS] += 1
        return _emit(out, n, origin, ts, glob, s, m.cid, m.side, m.tag, STATUS_CANCELED, m.price, 0, 0, 0, 0,
                     NO_LIQUIDITY, m.decision_ms, m.mid_px)
    j = glob[G_FREE]
    o = orders[j]
    glob[G_FREE] = o.next
    o.state = OS_RESTING
    o.cid = m.cid
    o.price = m.price
    o.leaves = rem
    o.cum_qty = m.qty - rem
    o.shadow = taken
    o.order_ts_ms = m.decision_ms
    o.mid_px = m.mid_px
    o.pend_qty = 0
    o.pend_fee = 0
    o.symbol = s
    o.tag = m.tag
    o.side = m.side
    o.post_only = m.post_only
    _append(orders, glob, s, j)
    _join(o, bk, tick)
    glob[G_RESTING] += 1
    return n


@njit(cache=True, inline="always", _nrt=False)
def _need(m) -> int:
    """Reports a message may write (reserved before it is delivered)."""
    if m.action == ACTION_CANCEL:
        return 1
    if m.action == ACTION_REPLACE:
        return 1 + BOOK_DEPTH
    return MSG_MAX_REPORTS


@njit(cache=True, _nrt=False)
def _deliver(orders, msgs, books, glob, params, b, tick: int, out, n: int) -> int:
    """Deliver due messages in FIFO order; a message whose symbol has not had a record at or after its due
    time yet is skipped (left as is), later ones go on."""
    mask = msgs.shape[0] - 1
    head = glob[G_MSG_HEAD]
    tail = glob[G_MSG_TAIL]
    clock = glob[G_CLOCK]
    n_sym = books.shape[0]
    cap = out.shape[0]
    i = head
    while i < tail:
        m = msgs[i & mask]
        if m.done:
            if i == head:
                head += 1
            i += 1
            continue
        if m.due_ms > clock:
            break  # due times are non-decreasing: nothing further is due
        s = np.int64(m.symbol)
        if s < n_sym and (glob[N_PG + PS_STRIDE * s + PS_TICK] <= m.tick or books[s].exch_ts_ms < m.due_ms):
            i += 1
            continue
        if cap - n < _need(m):
            glob[G_REPORTS_OVERFLOW] += 1
            break  # keep FIFO order: this and everything after waits for the next call
        n = _apply(orders, books, glob, params, m, b, tick, out, n)
        m.done = 1
        glob[G_DELIVERED] += 1
        if i == head:
            head += 1
        i += 1
    glob[G_MSG_HEAD] = head
    return n


@njit(cache=True, _nrt=False)
def _flush_pending(orders, glob, out, n: int) -> int:
    """Report maker fills that found no room in `out` earlier (rare: scans the table)."""
    cap = out.shape[0]
    for j in range(orders.shape[0]):
        if glob[G_PENDING] == 0 or n >= cap:
            break
        o = orders[j]
        if o.state == OS_FREE or o.pend_qty == 0:
            continue
        n = _emit(out, n, o.pend_origin_ns, o.pend_ts_ms, glob, o.symbol, o.cid, o.side, o.tag,
                  STATUS_FILLED if o.leaves == 0 and o.state == OS_DONE_PENDING else STATUS_PARTIAL, o.price,
                  o.pend_qty, o.leaves if o.state == OS_RESTING else 0, o.pend_fee, LIQ_MAKER, 0, o.order_ts_ms,
                  o.mid_px)
        o.pend_qty = 0
        o.pend_fee = 0
        glob[G_PENDING] -= 1
        if o.state == OS_DONE_PENDING:
            _free(orders, glob, j)
    return n


@njit(cache=True, _nrt=False)
def _match(orders, glob, params, b, s: int, tick: int, out, n: int) -> int:
    """Match the resting orders of symbol s against the record b: trade, depth changes, crossing."""
    if not (b.flags & FLAG_BOOK_VALID):
        return n  # a gapped book says nothing reliable about queues
    j = glob[N_PG + PS_STRIDE * s + PS_HEAD]
    if j < 0:
        return n
    cap = out.shape[0]
    tq = b.trade_qty
    tp = b.trade_px
    vol = abs(tq)
    used = 0  # trade volume at tp already given to our earlier orders (they are ahead of later ones)
    bps = params[PP_MAKER_FEE_BPS]
    while j >= 0:
        o = orders[j]
        nxt = o.next
        if o.join_tick == tick:
            j = nxt
            continue  # joined on this very record: its trade and depth are already behind it
        P = o.price
        leaves = o.leaves
        if o.side == SIDE_BUY:
            sgn = 1
            q = _level_qty(b.bid_pxs, b.bid_qtys, P, 1)
            opp_px = b.ask_pxs[0]
        else:
            sgn = -1
            q = _level_qty(b.ask_pxs, b.ask_qtys, P, -1)
            opp_px = b.bid_pxs[0]
        entered = False
        if o.lvl < 0 and q >= 0:  # the price (re)enters the visible depth: now we know the queue
            o.ahead = q if o.ahead < 0 else min(o.ahead, q)
            o.lvl = q
            o.pend_trade = 0
            entered = True
        fill = 0
        if tq != 0 and sgn * tq < 0:  # the aggressor hit our side
            if sgn * tp < sgn * P:
                fill = leaves  # traded through our price: we were filled
            elif tp == P and o.ahead >= 0:
                avail = max(vol - used, 0)
                c = min(o.ahead, avail)
                o.ahead -= c
                fill = min(leaves, avail - c)
                used += fill
                o.pend_trade += vol
        if q >= 0:
            if not entered:
                lvl = o.lvl
                if q < lvl:
                    dec = lvl - q
                    expl = min(dec, o.pend_trade)
                    canc = dec - expl
                    base = lvl - expl
                    if canc > 0 and base > 0 and o.ahead > 0:  # cancels: ahead's share of them
                        o.ahead -= int(canc * (o.ahead / base))
                if q != lvl:
                    o.pend_trade = 0
                o.lvl = q
            if o.ahead > q:
                o.ahead = q
        else:
            o.lvl = -1  # beyond the visible depth: keep the last estimate of ahead
        crossing = opp_px > 0 and sgn * opp_px <= sgn * P
        if crossing and fill < leaves:
            if o.shadow > 0:  # part of what crosses is liquidity we already took
                if o.side == SIDE_BUY:
                    oq = _crossing_qty(b.ask_pxs, b.ask_qtys, P, 1)
                else:
                    oq = _crossing_qty(b.bid_pxs, b.bid_qtys, P, -1)
                if oq > o.shadow:
                    fill = leaves
                else:
                    o.shadow = oq
            else:
                fill = leaves
        elif not crossing:
            o.shadow = 0
        if fill > 0:
            leaves -= fill
            o.leaves = leaves
            o.cum_qty += fill
            fee = fee_of(P, fill, bps)
            glob[G_FILLS] += 1
            glob[G_MAKER_FILLS] += 1
            if n < cap:
                if o.pend_qty > 0:
                    glob[G_PENDING] -= 1
                n = _emit(out, n, b.t_origin_ns, b.exch_ts_ms, glob, s, o.cid, o.side, o.tag,
                          STATUS_FILLED if leaves == 0 else STATUS_PARTIAL, P, fill + o.pend_qty, leaves,
                          fee + o.pend_fee, LIQ_MAKER, 0, o.order_ts_ms, o.mid_px)
                o.pend_qty = 0
                o.pend_fee = 0
            else:  # no room: report it first thing next call
                if o.pend_qty == 0:
                    glob[G_PENDING] += 1
                o.pend_qty += fill
                o.pend_fee += fee
                o.pend_ts_ms = b.exch_ts_ms
                o.pend_origin_ns = b.t_origin_ns
                glob[G_REPORTS_OVERFLOW] += 1
            if leaves == 0:
                _unlink(orders, glob, s, j)
                glob[G_RESTING] -= 1
                if o.pend_qty > 0:
                    o.state = OS_DONE_PENDING
                else:
                    _free(orders, glob, j)
        j = nxt
    return n


# -- interface -------------------------------------------------------------------------------------
@njit(cache=True, _nrt=False)
def submit(msgs: np.ndarray, glob: np.ndarray, action: int, cid: int, symbol: int, tag: int, side: int, otype: int,
           post_only: bool, price: int, qty: int, decision_ms: int, mid_px: int, latency_ms: float) -> bool:
    """Enqueue one order message; False (counted in G_MSGS_FULL) when the FIFO is full."""
    cap = msgs.shape[0]
    mask = cap - 1
    head = glob[G_MSG_HEAD]
    tail = glob[G_MSG_TAIL]
    if tail - head >= cap:
        # delivered messages behind an undelivered one leave holes: squeeze them out (rare)
        w = head
        for r in range(head, tail):
            if not msgs[r & mask].done:
                if w != r:
                    msgs[w & mask] = msgs[r & mask]
                w += 1
        tail = w
        glob[G_MSG_TAIL] = tail
        if tail - head >= cap:
            glob[G_MSGS_FULL] += 1
            return False
    m = msgs[tail & mask]
    m.action = action
    m.cid = cid
    m.symbol = symbol
    m.tag = tag
    m.side = side
    m.otype = otype
    m.post_only = 1 if post_only else 0
    m.price = price
    m.qty = qty
    m.decision_ms = decision_ms
    m.mid_px = mid_px
    due = decision_ms + np.int64(latency_ms)
    if due < glob[G_LAST_DUE]:
        due = glob[G_LAST_DUE]  # keep due times non-decreasing: FIFO order is arrival order
    glob[G_LAST_DUE] = due
    m.due_ms = due
    m.tick = glob[G_BOOKS]
    m.done = 0
    glob[G_MSG_TAIL] = tail + 1
    glob[G_SUBMITTED] += 1
    return True


@njit(cache=True, _nrt=False)
def on_book(orders: np.ndarray, msgs: np.ndarray, books: np.ndarray, glob: np.ndarray, params: np.ndarray, b: np.void,
            out: np.ndarray, n: int) -> int:
    """One BOOK record: store it as its symbol's last book, deliver due messages, match the symbol's
    resting orders. Appends FILL reports to out[n:]; returns the new n."""
    s = np.int64(b.symbol)
    if s >= books.shape[0]:
        glob[G_BAD_SYMBOL] += 1
        return n
    tick = glob[G_BOOKS] + 1
    glob[G_BOOKS] = tick
    _store_book(books[s], b)
    glob[N_PG + PS_STRIDE * s + PS_TICK] = tick
    if b.exch_ts_ms > glob[G_CLOCK]:
        glob[G_CLOCK] = b.exch_ts_ms
    if glob[G_PENDING] > 0:
        n = _flush_pending(orders, glob, out, n)
    if glob[G_PENDING] == 0 and glob[G_MSG_HEAD] < glob[G_MSG_TAIL]:
        n = _deliver(orders, msgs, books, glob, params, b, tick, out, n)  # reports stay in event order
    return _match(orders, glob, params, b, s, tick, out, n)


@njit(cache=True, _nrt=False)
def open_orders(orders: np.ndarray, symbol: int, tag: int, glob: np.ndarray | None = None) -> int:
    """Resting orders of (symbol, tag). With `glob`, walks the symbol's resting list (cheap: per record is
    fine); without it, scans the whole table (~1.5 µs at 1024 slots: for checks, not per record)."""
    k = 0
    if glob is not None:
        j = glob[N_PG + PS_STRIDE * symbol + PS_HEAD]
        while j >= 0:
            if orders[j].tag == tag:
                k += 1
            j = orders[j].next
        return k
    for j in range(orders.shape[0]):
        o = orders[j]
        if o.state == OS_RESTING and o.symbol == symbol and o.tag == tag:
            k += 1
    return k
