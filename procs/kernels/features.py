"""Feature vector per book update (numba), in the order of `shm.features.FEATURE_NAMES`.

Called from the book kernel once per emitted update, never per level change. Rolling windows are
exponentially weighted sums (O(1) state, no ring of past events); horizon returns read a per-symbol
ring of mid change points (the mid is a step function, so its changes describe it exactly) with a
binary search. The book hands over its best `DEPTH_B` levels per side, best first.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from shm.features import FEATURE_INDEX
from shm.records import N_FEATURES, PRICE_SCALE, QTY_SCALE

#: Time constants of the EW windows, ms.
TAU_SHORT_MS = 1_000.0
TAU_LONG_MS = 10_000.0
#: Horizons of the mid returns, ms.
HORIZONS_MS = (100, 1_000, 10_000)
#: Depth of the top-N imbalances.
DEPTH_A = 5
DEPTH_B = 20
#: Mid change points kept per symbol; when a horizon reaches past them the oldest one is used.
HIST_CAP = 4096

# -- per-symbol float state: column indices into fstate[n_symbols, N_FSTATE] ----------------------
#: Time (ms) the EW sums were last decayed to; also the clamp that keeps time from going back.
FS_T = 0
FS_OFI = 1
FS_R2 = 2
FS_FLOW = 3
FS_SQ = 4
FS_Q = 5
FS_PQ = 6
FS_N = 7
#: Top of book at the previous emitted update (for OFI), and whether it was valid.
FS_PREV_VALID = 8
FS_PREV_BP = 9
FS_PREV_BQ = 10
FS_PREV_AP = 11
FS_PREV_AQ = 12
#: Mid at the previous valid update (for the per-update return in the volatility).
FS_PREV_MID = 13
#: Number of float state columns.
N_FSTATE = 14

_F_MID = FEATURE_INDEX["mid"]
_F_SPREAD = FEATURE_INDEX["spread_bps"]
_F_MICRO = FEATURE_INDEX["microprice_bps"]
_F_IMB1 = FEATURE_INDEX["imbalance_1"]
_F_IMBA = FEATURE_INDEX["imbalance_5"]
_F_IMBB = FEATURE_INDEX["imbalance_20"]
_F_OFI = FEATURE_INDEX["ofi"]
_F_OFI_EW = FEATURE_INDEX["ofi_1s"]
_F_RET0 = FEATURE_INDEX["ret_100ms_bps"]
_F_VOL = FEATURE_INDEX["vol_10s_bps"]
_F_FLOW = FEATURE_INDEX["trade_flow_1s"]
_F_TIMB = FEATURE_INDEX["trade_imbalance_10s"]
_F_VWAP = FEATURE_INDEX["vwap_offset_10s_bps"]
_F_RATE = FEATURE_INDEX["trade_rate_10s"]
_H0, _H1, _H2 = HORIZONS_MS
assert FEATURE_INDEX["ret_10s_bps"] == _F_RET0 + 2 and N_FEATURES == 16
_PX = float(PRICE_SCALE)
# the functions below allocate nothing, hence `_nrt=False`: no atomic refcounting of their array arguments
_QX = float(QTY_SCALE)


def alloc_state(n_symbols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(fstate, hist_t, hist_mid, hist_n) for `n_symbols` symbols, zeroed."""
    return (np.zeros((n_symbols, N_FSTATE), np.float64), np.zeros((n_symbols, HIST_CAP), np.int64),
            np.zeros((n_symbols, HIST_CAP), np.float64), np.zeros(n_symbols, np.int64))


@njit(cache=True, _nrt=False)
def advance(fs: np.ndarray, t_ms: int) -> float:
    """Decay the EW sums of one symbol (`fs` = fstate[s]) to `t_ms` (clamped to never go back); new t."""
    t = float(t_ms)
    t_prev = fs[FS_T]
    if t <= t_prev:
        return t_prev
    if t_prev > 0.0:
        dt = t - t_prev
        ds = math.exp(-dt / TAU_SHORT_MS)
        dl = math.exp(-dt / TAU_LONG_MS)
        fs[FS_OFI] *= ds
        fs[FS_FLOW] *= ds
        fs[FS_R2] *= dl
        fs[FS_SQ] *= dl
        fs[FS_Q] *= dl
        fs[FS_PQ] *= dl
        fs[FS_N] *= dl
    fs[FS_T] = t
    return t


@njit(cache=True, _nrt=False)
def add_trade(fs: np.ndarray, t_ms: int, px: int, signed_qty: int) -> None:
    """Account one trade (fixed-point price, quantity signed by aggressor: + buyer-initiated)."""
    advance(fs, t_ms)
    q = signed_qty / _QX
    aq = abs(q)
    fs[FS_FLOW] += q
    fs[FS_SQ] += q
    fs[FS_Q] += aq
    fs[FS_PQ] += aq * (px / _PX)
    fs[FS_N] += 1.0


@njit(cache=True, _nrt=False)
def _depth_imbalance(bq: np.ndarray, nb: int, aq: np.ndarray, na: int, depth: int) -> float:
    sb = 0
    for i in range(min(nb, depth)):
        sb += bq[i]
    sa = 0
    for i in range(min(na, depth)):
        sa += aq[i]
    tot = sb + sa
    return (sb - sa) / tot if tot > 0 else 0.0


@njit(cache=True, _nrt=False)
def _mid_at(hist_t: np.ndarray, hist_mid: np.ndarray, n: int, target: int) -> float:
    """Mid at time `target` from the change points of one symbol; 0 if the history starts later."""
    lo = max(0, n - HIST_CAP)
    if hist_t[lo % HIST_CAP] > target:
        # before the first kept point: unknown, unless older points were overwritten (use the oldest)
        return hist_mid[lo % HIST_CAP] if lo > 0 else 0.0
    hi = n - 1
    while lo < hi:  # last logical index with t <= target
        mid = (lo + hi + 1) >> 1
        if hist_t[mid % HIST_CAP] <= target:
            lo = mid
        else:
            hi = mid - 1
    return hist_mid[lo % HIST_CAP]


@njit(cache=True, _nrt=False)
def compute(fstate: np.ndarray, hist_t: np.ndarray, hist_mid: np.ndarray, hist_n: np.ndarray, s: int,
            t_ms: int, valid: bool, bpx: np.ndarray, bqty: np.ndarray, nb: int,
            apx: np.ndarray, aqty: np.ndarray, na: int, out: np.ndarray) -> None:
    """Write the N_FEATURES values of symbol `s` after an update into `out`; advances its state.

    Sides: fixed-point prices and quantities of the best nb / na (<= DEPTH_B) levels, best first.
    Call once per emitted update, after any `add_trade` of that update.
    """
    fs = fstate[s]
    t = advance(fs, t_ms)
    ti = int(t)
    for k in range(N_FEATURES):
        out[k] = 0.0
    ok = valid and nb > 0 and na > 0
    if ok:
        bp = bpx[0]
        ap = apx[0]
        bq = bqty[0]
        aq = aqty[0]
        mid_fx = 0.5 * (bp + ap)
        mid = mid_fx / _PX
        out[_F_MID] = mid
        out[_F_SPREAD] = (ap - bp) / mid_fx * 1e4
        fbq = float(bq)
        faq = float(aq)
        if bq + aq > 0:
            micro = (bp * faq + ap * fbq) / (fbq + faq)
            out[_F_MICRO] = (micro - mid_fx) / mid_fx * 1e4
            out[_F_IMB1] = (fbq - faq) / (fbq + faq)
        out[_F_IMBA] = _depth_imbalance(bqty, nb, aqty, na, DEPTH_A)
        out[_F_IMBB] = _depth_imbalance(bqty, nb, aqty, na, DEPTH_B)
        # Cont et al. e_n: size added at or above the old best bid minus size removed, mirrored for asks
        if fs[FS_PREV_VALID] != 0.0:
            pbp = fs[FS_PREV_BP]
            pap = fs[FS_PREV_AP]
            e = 0.0
            if bp >= pbp:
                e += fbq
            if bp <= pbp:
                e -= fs[FS_PREV_BQ]
            if ap <= pap:
                e -= faq
            if ap >= pap:
                e += fs[FS_PREV_AQ]
            e /= _QX
            out[_F_OFI] = e
            fs[FS_OFI] += e
        fs[FS_PREV_BP] = bp
        fs[FS_PREV_BQ] = fbq
        fs[FS_PREV_AP] = ap
        fs[FS_PREV_AQ] = faq
        # volatility from the per-update log return against the previous valid mid
        pm = fs[FS_PREV_MID]
        if pm > 0.0:
            r = 1e4 * math.log(mid / pm)
            fs[FS_R2] += r * r
        fs[FS_PREV_MID] = mid
        # mid change points for the horizon returns
        n = hist_n[s]
        ht = hist_t[s]
        hm = hist_mid[s]
        if n == 0 or hm[(n - 1) % HIST_CAP] != mid:
            ht[n % HIST_CAP] = ti
            hm[n % HIST_CAP] = mid
            n += 1
            hist_n[s] = n
        for h in range(3):
            hz = _H0 if h == 0 else (_H1 if h == 1 else _H2)
            m0 = _mid_at(ht, hm, n, ti - hz)
            if m0 > 0.0:
                out[_F_RET0 + h] = 1e4 * math.log(mid / m0)
        q = fs[FS_Q]
        if q > 0.0:
            out[_F_VWAP] = (fs[FS_PQ] / q - mid) / mid * 1e4
    fs[FS_PREV_VALID] = 1.0 if ok else 0.0
    out[_F_OFI_EW] = fs[FS_OFI]
    out[_F_VOL] = math.sqrt(fs[FS_R2])
    out[_F_FLOW] = fs[FS_FLOW]
    q = fs[FS_Q]
    if q > 0.0:
        out[_F_TIMB] = fs[FS_SQ] / q
    out[_F_RATE] = fs[FS_N] / (TAU_LONG_MS / 1000.0)
