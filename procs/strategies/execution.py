"""TWAP / VWAP execution of parent orders, a naive and an ML-hybrid slicer side by side (A/B in one run).

Parents: per symbol, `parents` parent orders of `qty` (base currency) run one after another. Parent i is
due at t0 + i·window_s, t0 = the symbol's first book update + start_delay_s (the delay lets the direction
model warm up: it scores only after 10 s of history), and starts at the first book update at or after that
time once the previous parent is complete (so a late catch-up delays the next parent, never overlaps it).
Side: `side` = +1 buys, −1 sells, 0 alternates buy, sell, buy… (the default: the position swings between 0
and ±qty, so risk.max_position ≥ qty is enough; with a fixed side set risk.max_position ≥ parents·qty).
Each parent is cut into `slices` child slices of window_s / slices each; child k's qty is:
- `Twap`: qty / slices;
- `Vwap`: qty · v_k / Σv, v_k = the traded volume (on_trade, |qty|) seen so far in the run in time bucket k of
  the window grid (bucket = ((t − t0) mod window) · slices / window: the "time of day" of a window, as a
  day's VWAP profile is by time of day). Before `vwap_min_windows` windows of history (or with no volume) it
  falls back to TWAP. The weights are frozen at the parent's start, so the children always add up to qty and
  both sleeves get the same children.
Two sleeves trade the SAME parents (same symbol, side, qty, start, children), each with its own position:
- tag 0 `naive`: at the slice start, a post-only limit at the near touch (best bid for a buy, best ask for a
  sell); at the slice end it is canceled (the next child goes out at the same time) and, once the exchange has
  confirmed the cancel (so nothing can overfill), what the ended slices lack is crossed with a market order;
- tag 1 `ml-hybrid`: at the slice start, if the direction model predicts an adverse move — for a buy
  P(up) = score_up ≥ 0.5 + threshold, for a sell P(up) ≤ 0.5 − threshold — a market order at once, else the
  same passive child and catch-up as naive (also when there is no score yet).
Both sleeves complete every parent (the catch-up repeats until the parent qty is filled: a market order cut by
the visible depth, a post-only rejection, a kill-switch cancel all end in a catch-up), so their slippage is
compared on the same qty. A parent ends when both sleeves are complete; its end_ms is that time (≥ the window
end: the last catch-up lands a latency after it), common to both sleeves so the results module pairs them.
Child quantities sit on the 1e-8 qty grid and add up to the parent qty exactly.

Risk: defaults (qty 0.1, children ≤ 0.1) pass the default [risk] limits (max_position 1, max_order_qty 0.5,
max_notional 100k at BTC's price). A due order is held back while the symbol is not tradable (the anomaly kill
switch, a stale or invalid book: it would only be refused) and sent on the first update that is; both sleeves
are held alike, so the parent finishes late, and execution.json counts the episodes and the held-back time per
sleeve. A parent only starts on a tradable symbol. An order the risk checks still refuse (rate limit, size) is
counted by reason in strategy.json and per sleeve in execution.json, and tried again after RETRY_MS of exchange
time. Keep risk.kill_flatten off: a flatten would undo the parent's fills (they still count as executed).
Note: the anomaly model shipped in models/ was trained on the simulator and flags most of the real BTCUSDT
capture, so with the kill switch on, a replay of it executes almost nothing (risk.kill_switch=false to A/B).

State: scalar fields per symbol (STATE) plus three fixed-size float64 arrays in each symbol's state record
(STATE_ARRAYS): `sl` the per-sleeve working state, `prof` the VWAP volume
profile and frozen child weights, `rec` up to MAX_PARENTS finished parents × 2 sleeves, which `close` turns
into parents.csv (format in the issue 6 spec) and execution.json (per-sleeve counts of child orders).
A parent still running when the run ends is not in parents.csv (its sleeves are not comparable yet); it is
counted as `unfinished` in execution.json and its fills stay unassigned in the results.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from procs.api import (
    BUY,
    FILLED,
    PARTIAL,
    REJECTED,
    SELL,
    Strategy,
    StrategyError,
    ask,
    bid,
    cancel,
    fill_price,
    fill_qty,
    limit,
    market,
    mid,
    njit,
    now_ms,
    order_live,
    score_up,
    tradable,
)
from shm.records import QTY_SCALE

#: parents kept per symbol for parents.csv (more are refused by validate)
MAX_PARENTS = 512
#: children per parent
MAX_SLICES = 64
#: exchange ms before an order the risk checks refused is tried again (no refusal storm on every update)
RETRY_MS = 100
#: qty below this is "nothing left" (float sums of 1e-8 fixed-point fills)
EPS = 1e-9
N_SLEEVES = 2

# -- sl: per-sleeve working state, row = tag * N_SL ----------------------------------------------
S_CID = 0  #: the current slice's child order (0: none)
S_KPOST = 1  #: the slice S_CID belongs to (−1: none yet)
S_FILLED = 2  #: parent qty filled so far
S_NOTIONAL = 3  #: Σ fill px · qty of this parent
S_DONE = 4  #: 1 once the parent's qty is filled
S_RETRY_MS = 5  #: no new order before this exchange time (after a refusal)
S_OLD = 6  #: the previous slice's child, canceled, until the exchange confirms it is done
S_MKT = 7  #: the live catch-up market order
S_CFILL = 8  #: qty filled by S_CID (owed by nobody: it belongs to the running slice)
S_N_PASSIVE = 9  #: run totals from here on: passive children posted
S_N_CROSS = 10  #: children crossed at once (hybrid's adverse-move calls)
S_N_CATCHUP = 11  #: catch-up market orders
S_N_REFUSED = 12  #: orders refused by the risk checks
S_N_REJECTED = 13  #: orders the paper exchange rejected (e.g. post-only would cross)
S_N_FILLS = 14
S_N_BLOCKS = 15  #: times a due order was held back because the symbol was not tradable
S_BLOCKED_MS = 16  #: exchange ms due orders spent held back
S_BLOCK_T0 = 17  #: start of the current hold-back (0: none)
N_SL = 18

# -- prof: VWAP profile -------------------------------------------------------------------------
P_VOL = 0  #: prof[P_VOL + k]: traded volume in window bucket k so far
P_CUM = MAX_SLICES  #: prof[P_CUM + k]: the current parent's cumulative child weight through slice k (last = 1)

# -- rec: finished parents, rec[(i * N_SLEEVES + tag) * N_REC + field] -----------------------------
R_SIDE = 0  #: 0 buy, 1 sell
R_QTY = 1
R_START = 2
R_END = 3
R_ARRIVAL = 4
R_FILLED = 5
R_AVG = 6
R_SLICES = 7
N_REC = 8

PARENT_COLUMNS = ("tag", "symbol", "side", "qty", "start_ms", "end_ms", "arrival_mid", "filled_qty",
                  "avg_fill_price", "slices")


@njit(cache=True)
def child_weights(prof, n: int, use_profile: bool) -> None:
    """Freeze the cumulative child weights of a new parent into prof[P_CUM:]: volume profile or equal."""
    tot = 0.0
    if use_profile:
        for k in range(n):
            tot += prof[P_VOL + k]
    acc = 0.0
    for k in range(n):
        acc += prof[P_VOL + k] / tot if tot > 0 else 1.0 / n
        prof[P_CUM + k] = acc
    prof[P_CUM + n - 1] = 1.0  # exact: the children add up to the parent qty


@njit(cache=True)
def _target(st, k: int, qty: float) -> float:
    """Parent qty due through slice k (−1: nothing), on the 1e-8 qty grid: the children, differences of these,
    are exact fixed-point quantities that add up to the parent qty (no 1e-8 over- or underfill)."""
    if k < 0:
        return 0.0
    return round(qty * st.prof[P_CUM + k] * QTY_SCALE) / QTY_SCALE


@njit(cache=True)
def _init(ctx, s: int) -> None:
    st = ctx.st[s]
    if st.t0 == 0.0:
        st.t0 = float(now_ms(ctx)) + ctx.p.start_delay_s * 1000.0


@njit(cache=True)
def _track_volume(ctx, s: int, qty: float) -> None:
    """Add a trade to its bucket of the window grid (the VWAP profile)."""
    _init(ctx, s)
    st = ctx.st[s]
    n = int(ctx.p.slices)
    w = ctx.p.window_s * 1000.0
    phase = (float(now_ms(ctx)) - st.t0) % w  # Python semantics: in [0, w) also before t0
    st.prof[P_VOL + min(int(phase * n / w), n - 1)] += abs(qty)


@njit(cache=True)
def _start_parent(ctx, s: int, now: int, vwap: bool) -> None:
    st = ctx.st[s]
    i = int(st.pidx)
    sd = ctx.p.side
    st.p_side = float(BUY if sd > 0 else SELL if sd < 0 else (BUY if i % 2 == 0 else SELL))
    st.p_start = float(now)
    st.p_end = float(now) + ctx.p.window_s * 1000.0
    st.arrival = mid(ctx, s)
    history = float(now) - (st.t0 - ctx.p.start_delay_s * 1000.0)
    child_weights(st.prof, int(ctx.p.slices), vwap and history >= ctx.p.vwap_min_windows * ctx.p.window_s * 1000.0)
    for tag in range(N_SLEEVES):
        r = tag * N_SL
        for f in range(S_N_PASSIVE):  # the per-parent fields; the run totals stay
            st.sl[r + f] = 0.0
        st.sl[r + S_KPOST] = -1.0
    st.active = 1.0


@njit(cache=True)
def _finish_parent(ctx, s: int, now: int) -> None:
    """Both sleeves are done: keep the parent's record for parents.csv and move to the next."""
    st = ctx.st[s]
    i = int(st.pidx)
    if i < MAX_PARENTS:
        for tag in range(N_SLEEVES):
            r = tag * N_SL
            base = (i * N_SLEEVES + tag) * N_REC
            f = st.sl[r + S_FILLED]
            st.rec[base + R_SIDE] = st.p_side
            st.rec[base + R_QTY] = ctx.p.qty
            st.rec[base + R_START] = st.p_start
            st.rec[base + R_END] = float(now)
            st.rec[base + R_ARRIVAL] = st.arrival
            st.rec[base + R_FILLED] = f
            st.rec[base + R_AVG] = st.sl[r + S_NOTIONAL] / f if f > 0 else 0.0
            st.rec[base + R_SLICES] = ctx.p.slices
        st.n_rec = float(i + 1)
    st.pidx = float(i + 1)
    st.active = 0.0


@njit(cache=True)
def _send(ctx, s: int, tag: int, side: int, qty: float, passive: bool, now: int) -> int:
    """A child or catch-up order, or 0: held back while the symbol is not tradable (kill switch, stale or
    invalid book; counted as a block, tried again on the next update) or refused by the risk checks (counted,
    tried again after RETRY_MS)."""
    st = ctx.st[s]
    r = tag * N_SL
    if not tradable(ctx, s):  # the order would only be refused: wait, and count how long
        if st.sl[r + S_BLOCK_T0] == 0.0:
            st.sl[r + S_BLOCK_T0] = float(now)
            st.sl[r + S_N_BLOCKS] += 1.0
        return 0
    if st.sl[r + S_BLOCK_T0] != 0.0:
        st.sl[r + S_BLOCKED_MS] += float(now) - st.sl[r + S_BLOCK_T0]
        st.sl[r + S_BLOCK_T0] = 0.0
    if passive:
        # the near touch: join the best bid for a buy, the best ask for a sell (post-only)
        cid = limit(ctx, s, side, bid(ctx, s) if side == BUY else ask(ctx, s), qty, tag)
    else:
        cid = market(ctx, s, side, qty, tag)
    if cid == 0:
        st.sl[r + S_N_REFUSED] += 1.0
        st.sl[r + S_RETRY_MS] = float(now + RETRY_MS)
    return cid


@njit(cache=True)
def _settled(ctx, st, slot: int) -> bool:
    """True once the order in sl[slot] is done (and the slot cleared)."""
    cid = int(st.sl[slot])
    if cid > 0 and order_live(ctx, cid):
        return False
    st.sl[slot] = 0.0
    return True


@njit(cache=True)
def _work_sleeve(ctx, s: int, tag: int, now: int) -> None:
    """One sleeve's step: pull the child of an ended slice, cross what the ended slices lack once nothing of
    theirs can still fill, and send the running slice's child."""
    st = ctx.st[s]
    r = tag * N_SL
    if st.sl[r + S_DONE] != 0.0:
        return
    n = int(ctx.p.slices)
    w = ctx.p.window_s * 1000.0
    k = n if now >= st.p_end else min(int((now - st.p_start) * n / w), n - 1)
    side = int(st.p_side)
    qty = ctx.p.qty
    # the child's slice ended: cancel it; its remainder is owed to the catch-up (one such child at a time)
    if st.sl[r + S_KPOST] < k and st.sl[r + S_CID] > 0 and _settled(ctx, st, r + S_OLD):
        st.sl[r + S_OLD] = st.sl[r + S_CID]
        st.sl[r + S_CID] = 0.0
        st.sl[r + S_CFILL] = 0.0
    if not _settled(ctx, st, r + S_OLD):
        cancel(ctx, int(st.sl[r + S_OLD]))  # no-op while a cancel is on its way; resends one that found no room
    elif _settled(ctx, st, r + S_MKT) and now >= st.sl[r + S_RETRY_MS]:
        # everything of the ended slices is settled: cross what they lack (never more: no overfill)
        owed = _target(st, k - 1, qty) - (st.sl[r + S_FILLED] - st.sl[r + S_CFILL])
        if owed > EPS:
            cid = _send(ctx, s, tag, side, owed, False, now)
            if cid > 0:
                st.sl[r + S_MKT] = float(cid)
                st.sl[r + S_N_CATCHUP] += 1.0
    if k >= n:
        if st.sl[r + S_OLD] == 0.0 and st.sl[r + S_MKT] == 0.0 and st.sl[r + S_FILLED] >= qty - EPS:
            st.sl[r + S_DONE] = 1.0
        return
    if st.sl[r + S_KPOST] >= k or st.sl[r + S_CID] > 0 or now < st.sl[r + S_RETRY_MS]:
        return
    q = _target(st, k, qty) - _target(st, k - 1, qty)
    if q <= EPS:  # a VWAP slice with no volume in its bucket: no child
        st.sl[r + S_KPOST] = float(k)
        return
    cross = False
    if tag == 1:
        p = score_up(ctx, s)
        thr = ctx.p.threshold
        # NaN (no score yet) compares false: post passively
        cross = (p >= 0.5 + thr) if side == BUY else (p <= 0.5 - thr)
    cid = _send(ctx, s, tag, side, q, not cross, now)
    if cid > 0:
        st.sl[r + S_CID] = float(cid)
        st.sl[r + S_KPOST] = float(k)
        st.sl[r + S_N_CROSS if cross else r + S_N_PASSIVE] += 1.0


@njit(cache=True)
def work(ctx, s: int, vwap: bool) -> None:
    """Per book update: start the next parent when due, then step both sleeves."""
    _init(ctx, s)
    st = ctx.st[s]
    now = now_ms(ctx)
    st.last_ms = float(now)
    if st.active == 0.0:
        # a parent starts on a tradable symbol only: its arrival mid is a price it could have traded at
        if st.pidx >= ctx.p.parents or now < st.t0 + st.pidx * ctx.p.window_s * 1000.0 or not tradable(ctx, s):
            return
        _start_parent(ctx, s, now, vwap)
    for tag in range(N_SLEEVES):
        _work_sleeve(ctx, s, tag, now)
    if st.sl[S_DONE] != 0.0 and st.sl[N_SL + S_DONE] != 0.0:
        _finish_parent(ctx, s, now)


@njit(cache=True)
def account(ctx, s: int, fill) -> None:
    """Fold an execution report into its sleeve's parent (only the sleeve's own live order counts)."""
    tag = fill.tag
    if tag >= N_SLEEVES:
        return
    st = ctx.st[s]
    r = tag * N_SL
    if fill.client_order_id == 0:
        return  # a risk refusal: already counted when the order function returned 0
    cid = fill.client_order_id
    current = cid == int(st.sl[r + S_CID])
    if not (current or cid == int(st.sl[r + S_OLD]) or cid == int(st.sl[r + S_MKT])):
        return
    if fill.status == REJECTED:
        st.sl[r + S_N_REJECTED] += 1.0
    if (fill.status == PARTIAL or fill.status == FILLED) and fill.qty > 0:
        q = fill_qty(fill)
        st.sl[r + S_FILLED] += q
        st.sl[r + S_NOTIONAL] += q * fill_price(fill)
        st.sl[r + S_N_FILLS] += 1.0
        if current:
            st.sl[r + S_CFILL] += q


class Twap(Strategy):
    """Parent orders in equal time slices; naive (tag 0) vs ML-hybrid (tag 1) children (module docstring)."""

    PARAMS = {"side": 0.0, "qty": 0.1, "window_s": 10.0, "slices": 10.0, "parents": 100.0, "start_delay_s": 10.0,
              "threshold": 0.1, "vwap_min_windows": 1.0}
    STATE = {"t0": 0.0, "pidx": 0.0, "active": 0.0, "p_side": 0.0, "p_start": 0.0, "p_end": 0.0, "arrival": 0.0,
             "n_rec": 0.0, "last_ms": 0.0}
    #: per sleeve working state, the VWAP profile, finished-parent records (module docstring)
    STATE_ARRAYS = {"sl": N_SLEEVES * N_SL, "prof": 2 * MAX_SLICES, "rec": MAX_PARENTS * N_SLEEVES * N_REC}
    TAGS = {0: "naive", 1: "ml-hybrid"}
    TIMER_MS = 0
    #: Vwap sets this: child qty from the volume profile
    VWAP = False

    def validate(self) -> None:
        p = self.params
        checks = (("side", p["side"] in (-1.0, 0.0, 1.0), "-1, 0 (alternate) or 1"),
                  ("qty", p["qty"] > 0, "> 0"), ("window_s", p["window_s"] > 0, "> 0"),
                  ("slices", p["slices"] == int(p["slices"]) and 1 <= p["slices"] <= MAX_SLICES,
                   f"an integer in 1..{MAX_SLICES}"),
                  ("parents", p["parents"] == int(p["parents"]) and 0 <= p["parents"] <= MAX_PARENTS,
                   f"an integer in 0..{MAX_PARENTS}"),
                  ("start_delay_s", p["start_delay_s"] >= 0, ">= 0"),
                  ("threshold", 0 <= p["threshold"] <= 0.5, "in [0, 0.5]"),
                  ("vwap_min_windows", p["vwap_min_windows"] >= 0, ">= 0"))
        for name, ok, want in checks:
            if not ok:
                raise StrategyError(f"field=strategy.params.{name} expected={want} found={p[name]}")
        if p["window_s"] * 1000.0 / p["slices"] < 1.0:
            raise StrategyError(f"field=strategy.params.slices expected=slices of >= 1 ms "
                                f"found={p['slices']} slices in {p['window_s']} s")

    def parents(self, state: np.ndarray) -> list[dict]:
        """The finished parents as parents.csv rows (both sleeves of each), in start order per symbol."""
        rows = []
        for s in range(len(state)):
            st = state[s]
            for i in range(int(st["n_rec"])):
                for tag in range(N_SLEEVES):
                    rec = st["rec"][(i * N_SLEEVES + tag) * N_REC:(i * N_SLEEVES + tag + 1) * N_REC]
                    rows.append({"tag": tag, "symbol": self.symbols[s] if s < len(self.symbols) else str(s),
                                 "side": "buy" if int(rec[R_SIDE]) == BUY else "sell", "qty": f"{rec[R_QTY]:.8f}",
                                 "start_ms": int(rec[R_START]), "end_ms": int(rec[R_END]),
                                 "arrival_mid": f"{rec[R_ARRIVAL]:.10g}", "filled_qty": f"{rec[R_FILLED]:.8f}",
                                 "avg_fill_price": f"{rec[R_AVG]:.10g}", "slices": int(rec[R_SLICES])})
        return rows

    def summary(self, state: np.ndarray) -> dict:
        """Per sleeve: how its children were worked (summed over symbols), and parents not finished."""
        names = {S_N_PASSIVE: "passive_children", S_N_CROSS: "crossed_children", S_N_CATCHUP: "catchup_orders",
                 S_N_REFUSED: "risk_refusals", S_N_REJECTED: "exchange_rejects", S_N_FILLS: "fills",
                 S_N_BLOCKS: "blocked_episodes", S_BLOCKED_MS: "blocked_ms"}
        out: dict = {"algo": "vwap" if self.VWAP else "twap",
                     "parents_finished": int(state["n_rec"].sum()) if len(state) else 0,
                     "unfinished": int(state["active"].sum()) if len(state) else 0, "sleeves": {}}
        for tag, name in self.TAGS.items():
            out["sleeves"][name] = {k: int(state["sl"][:, tag * N_SL + f].sum()) for f, k in names.items()}
        return out

    def close(self, state: np.ndarray, run_dir: str) -> None:
        with Path(run_dir, "parents.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=PARENT_COLUMNS)
            w.writeheader()
            w.writerows(self.parents(state))
        Path(run_dir, "execution.json").write_text(json.dumps(self.summary(state), indent=2) + "\n")

    @staticmethod
    @njit
    def on_book(ctx, s, book):
        work(ctx, s, False)

    @staticmethod
    @njit
    def on_trade(ctx, s, price, qty):
        _track_volume(ctx, s, qty)

    @staticmethod
    @njit
    def on_fill(ctx, s, fill):
        account(ctx, s, fill)


class Vwap(Twap):
    """Parent orders sliced by the run's traded-volume profile over the window (module docstring)."""

    VWAP = True

    @staticmethod
    @njit
    def on_book(ctx, s, book):
        work(ctx, s, True)
