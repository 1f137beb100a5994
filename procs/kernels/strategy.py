"""The first-cut strategy: two-sided quotes around the microprice, widened by the anomaly score,
pulled while the model flags an anomaly.

Per BOOK record of a valid book:
- fair = microprice (bid·ask_qty + ask·bid_qty) / (bid_qty + ask_qty), shifted against inventory by
  `skew_bps · position / max_position`;
- half-spread = `spread_bps · (1 + level)`, level = SCORE.values[SCORE_ANOMALY] in [0, 1] (P(anomaly), or an
  error score / its threshold): the more unusual the market, the wider we quote;
- while the score carries FLAG_ANOMALY (output above the model's threshold) both quotes are
  cancelled and none are placed until the flag has been clear for `pause_hold_ms` of exchange time
  (the flag flickers at the edges of an anomaly; requoting on every flicker would be order spam);
- quotes never cross the book (post-only), a side at its position limit is not quoted, and a quote
  moves only when the target is more than `requote_bps` away (no order spam on every tick).

All prices are fixed-point int64 like the records. Position comes from fills (the exchange issue
wires them in); until then it stays 0 and the skew is idle.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from shm.records import FLAG_ANOMALY, FLAG_BOOK_VALID, KIND_ORDER, ORDER, SCORE, SCORE_ANOMALY

# -- per-symbol state columns (int64) -----------------------------------------------------------
Q_BID_PX = 0  #: our resting bid price (0: none)
Q_ASK_PX = 1
Q_BID_ID = 2  #: client order id of the resting bid
Q_ASK_ID = 3
Q_PAUSED = 4  #: 1 while the anomaly flag holds
Q_POSITION = 5  #: signed position, fixed-point qty
Q_PAUSE_UNTIL_MS = 6  #: exchange time until which the pause holds after the last alert
N_QSTATE = 7

# -- parameters (float64) -----------------------------------------------------------------------
P_SPREAD_BPS = 0
P_SKEW_BPS = 1
P_ORDER_QTY = 2  #: fixed-point qty as float
P_MAX_POSITION = 3  #: fixed-point qty as float
P_REQUOTE_BPS = 4
P_PAUSE_HOLD_MS = 5
N_PARAMS = 6

# -- global counters (int64) -------------------------------------------------------------------
G_NEXT_ID = 0
G_DECISIONS = 1  #: valid book updates acted on
G_INVALID = 2  #: updates skipped because the book was not valid
G_PAUSES = 3  #: anomaly pauses started
G_ORDERS = 4
G_NO_SCORE = 5  #: decisions made before the first score arrived
N_GLOBAL = 6

SIDE_BUY = 0
SIDE_SELL = 1
ACTION_NEW = 0
ACTION_CANCEL = 1
ACTION_REPLACE = 2


def alloc(n_symbols: int) -> tuple[np.ndarray, np.ndarray]:
    """(per-symbol state, global counters)."""
    g = np.zeros(N_GLOBAL, np.int64)
    g[G_NEXT_ID] = 1
    return np.zeros((n_symbols, N_QSTATE), np.int64), g


def params_from(spread_bps: float, skew_bps: float, order_qty: int, max_position: int,
                requote_bps: float, pause_hold_ms: float = 0.0) -> np.ndarray:
    p = np.zeros(N_PARAMS, np.float64)
    p[P_SPREAD_BPS] = spread_bps
    p[P_SKEW_BPS] = skew_bps
    p[P_ORDER_QTY] = order_qty
    p[P_MAX_POSITION] = max_position
    p[P_REQUOTE_BPS] = requote_bps
    p[P_PAUSE_HOLD_MS] = pause_hold_ms
    return p


@njit(cache=True, inline="always")
def _order(out: np.ndarray, n: int, b, g: np.ndarray, oid: int, side: int, action: int, price: int,
           qty: int) -> int:
    o = out[n]
    o.t_origin_ns = b.t_origin_ns
    o.t_publish_ns = 0
    o.symbol = b.symbol
    o.kind = KIND_ORDER
    o.flags = 0
    o.client_order_id = oid
    o.price = price
    o.qty = qty
    o.side = side
    o.order_type = 0
    o.action = action
    g[G_ORDERS] += 1
    return n + 1


@njit(cache=True, inline="always")
def _pull(out: np.ndarray, n: int, b, g: np.ndarray, q: np.ndarray, px: int, oid: int, side: int) -> int:
    """Cancel our resting quote on one side (columns px/oid of the symbol's state), if there is one."""
    if q[px] != 0:
        n = _order(out, n, b, g, q[oid], side, ACTION_CANCEL, q[px], 0)
        q[px] = 0
    return n


@njit(cache=True, inline="always")
def _quote(out: np.ndarray, n: int, b, g: np.ndarray, q: np.ndarray, px: int, oid: int, side: int,
           at_limit: bool, target: int, tol: float, qty: int) -> int:
    """One side's quote: pulled at the position limit, placed if absent, moved only beyond `tol`."""
    if at_limit:
        return _pull(out, n, b, g, q, px, oid, side)
    if q[px] == 0:
        q[oid] = g[G_NEXT_ID]
        g[G_NEXT_ID] += 1
        q[px] = target
        return _order(out, n, b, g, q[oid], side, ACTION_NEW, target, qty)
    if abs(target - q[px]) > tol:
        q[px] = target
        return _order(out, n, b, g, q[oid], side, ACTION_REPLACE, target, qty)
    return n


@njit(cache=True)
def decide(b, score, has_score: bool, st: np.ndarray, params: np.ndarray, g: np.ndarray,
           out: np.ndarray, n: int) -> int:
    """Act on one BOOK record `b` given the newest SCORE of its symbol; append orders to out[n:].
    Returns the new n. `out` must have room for 2 more orders."""
    s = b.symbol
    q = st[s]
    if not (b.flags & FLAG_BOOK_VALID) or b.bid_px <= 0 or b.ask_px <= 0 or b.bid_qty <= 0 or b.ask_qty <= 0:
        g[G_INVALID] += 1
        return n
    g[G_DECISIONS] += 1
    alert = has_score and (score.flags & FLAG_ANOMALY) != 0
    prob = score.values[SCORE_ANOMALY] if has_score else 0.0  # the level, never a raw error score
    if not has_score:
        g[G_NO_SCORE] += 1
    if alert:
        q[Q_PAUSE_UNTIL_MS] = b.exch_ts_ms + int(params[P_PAUSE_HOLD_MS])
    if alert or (q[Q_PAUSED] != 0 and b.exch_ts_ms < q[Q_PAUSE_UNTIL_MS]):
        if q[Q_PAUSED] == 0:
            q[Q_PAUSED] = 1
            g[G_PAUSES] += 1
        # pull both quotes and stay out until the flag has been clear for the hold time
        n = _pull(out, n, b, g, q, Q_BID_PX, Q_BID_ID, SIDE_BUY)
        return _pull(out, n, b, g, q, Q_ASK_PX, Q_ASK_ID, SIDE_SELL)
    q[Q_PAUSED] = 0
    bid = float(b.bid_px)
    ask = float(b.ask_px)
    bq = float(b.bid_qty)
    aq = float(b.ask_qty)
    micro = (bid * aq + ask * bq) / (bq + aq)
    mid = 0.5 * (bid + ask)
    inv = q[Q_POSITION] / params[P_MAX_POSITION]
    fair = micro * (1.0 - params[P_SKEW_BPS] * 1e-4 * inv)
    half = params[P_SPREAD_BPS] * 1e-4 * (1.0 + min(max(prob, 0.0), 1.0))
    # post-only: never at or through the other side's best
    tgt_bid = min(int(fair * (1.0 - half)), b.ask_px - 1)
    tgt_ask = max(int(fair * (1.0 + half)) + 1, b.bid_px + 1)
    tol = params[P_REQUOTE_BPS] * 1e-4 * mid
    qty = int(params[P_ORDER_QTY])
    limit = params[P_MAX_POSITION]
    n = _quote(out, n, b, g, q, Q_BID_PX, Q_BID_ID, SIDE_BUY, q[Q_POSITION] >= limit, tgt_bid, tol, qty)
    return _quote(out, n, b, g, q, Q_ASK_PX, Q_ASK_ID, SIDE_SELL, q[Q_POSITION] <= -limit, tgt_ask, tol, qty)


#: dtypes the agent's staging arrays use (re-exported for tests)
ORDER_DTYPE = ORDER.dtype
SCORE_DTYPE = SCORE.dtype
