"""L2 order books per symbol (numba), synced from REST snapshots plus depth diffs by Binance's rules.

Levels live in `procs/kernels/levels.py` (sorted blocks, ~100 ns per level change on real BTCUSDT
diffs; the reasons are written there). This module holds the sync state machine and the emission.

Sync rules (Binance "How to manage a local order book correctly"):
- spot: drop diffs with u <= lastUpdateId; the first applied has U <= lastUpdateId+1 <= u; then each
  U == previous u + 1.
- USD-M / COIN-M: drop u < lastUpdateId; the first applied has U <= lastUpdateId <= u (u may equal
  lastUpdateId), or pu == lastUpdateId (a snapshot taken exactly between two diffs); then each
  pu == previous u.
Diffs before the snapshot (or after a gap) are buffered per symbol (bounded: the oldest whole
messages are evicted) and replayed when the snapshot ends. A diff that does not chain is a gap: the
book turns invalid, `S_NEED_SNAPSHOT` is raised (the feed should fetch a new snapshot), the buffer
restarts with that diff. Deleting a level that is not in the book is normal (counted, not an error).
A KIND_RESET record (a live source lost its connection) invalidates the book the same way, with an
empty buffer: whatever was missed cannot be bridged.

The batch kernel reads MARKET records and, after every message that changes what a consumer sees
(an applied diff, a snapshot, a trade, a gap), writes one BOOK and one FEATURES record, so the output
never outgrows the input: n_out <= number of records with FLAG_LAST_IN_MESSAGE <= n. Records of one
message must be contiguous in the input (one feed per book stage), but may span kernel calls.

Usage per batch (ring slots or plain arrays; mask -1 means no wrap):

    st = BookState(n_symbols)
    n_out = st.process(inp, n, out_book, out_features)          # plain arrays from index 0
    n_out = st.process(slots, n, book_slots, feat_slots, in_pos=pos, in_mask=cap - 1,
                       out_pos=opos, out_mask=ocap - 1)           # ring slots, positions wrap
"""

from __future__ import annotations

import numpy as np
from numba import njit

from procs.kernels import features as ft
from procs.kernels import levels as lv
from shm.records import (
    BOOK,
    BOOK_DEPTH,
    FEATURES,
    FLAG_ASK,
    FLAG_BOOK_VALID,
    FLAG_BUYER_MAKER,
    FLAG_FEATURES_WARM,
    FLAG_LAST_IN_MESSAGE,
    FLAG_SNAPSHOT_BEGIN,
    FLAG_SNAPSHOT_END,
    KIND_BOOK,
    KIND_DEPTH,
    KIND_DEPTH_EMPTY,
    KIND_FEATURES,
    KIND_RESET,
    KIND_SNAPSHOT,
    KIND_TICKER,
    KIND_TRADE,
    MARKET,
    MARKET_SPOT,
)

#: Default levels kept per side; deeper levels are evicted (Binance snapshots hold at most 5000).
DEFAULT_LEVELS = 8192
#: Default diff records buffered per symbol while waiting for a snapshot.
DEFAULT_BUFFER = 8192

# -- book status per symbol ------------------------------------------------------------------------
#: No snapshot yet, or a gap happened: diffs are buffered, the book is invalid.
ST_EMPTY = 0
#: Receiving the levels of a snapshot.
ST_SNAPSHOT = 1
#: Snapshot applied; waiting for the first diff that bridges lastUpdateId. The book is valid.
ST_SYNCING = 2
#: Diffs chain; the book is valid.
ST_LIVE = 3

# -- per-symbol int state: column indices into sym_state[n_symbols, N_SYM_FIELDS] ------------------
#: ST_* status.
S_STATUS = 0
#: u of the last applied diff (lastUpdateId right after a snapshot).
S_LAST_ID = 1
#: MARKET_* of the last diff seen (decides the sync rule).
S_MARKET = 2
#: Diff buffer ring: index of the oldest record and number of records.
S_BUF_HEAD = 3
S_BUF_LEN = 4
#: Last trade price, and the signed quantity of the trade in the current update (0 if none).
S_TRADE_PX = 5
S_TRADE_QTY = 6
#: Exchange time (ms) of the last message that carried one.
S_EXCH_TS = 7
#: 1 while the book needs a (new) snapshot: set at start and by gaps, cleared by a snapshot.
S_NEED_SNAPSHOT = 8
#: 1 if the book was crossed after the last update.
S_CROSSED = 9
#: Exchange time (ms) of the symbol's first message that carried one: the start of its feature history.
S_FIRST_TS = 10
#: Number of per-symbol int state columns.
N_SYM_FIELDS = 11
#: History (exchange ms) after which a symbol's features are warm: the longest feature window (10 s).
FEATURES_WARM_MS = 10_000

# -- stage-wide state: indices into glob[N_GLOBAL] -------------------------------------------------
#: 1 while inside a message (its first record has been seen, its last not yet).
G_IN_MSG = 0
#: A_* action decided at the first record of the current message.
G_ACTION = 1
#: seq of the next output record.
G_OUT_SEQ = 2
#: Records whose symbol id is out of range (skipped).
G_BAD_SYMBOL = 3
#: Levels collected so far by the snapshot in progress, bids then asks.
G_SNAP_N = 4
#: Number of stage-wide state slots.
N_GLOBAL = 6

# -- per-symbol counters: columns of counters[n_symbols, N_BOOK_COUNTERS] --------------------------
#: Diff messages applied (including KIND_DEPTH_EMPTY and buffered ones replayed after a snapshot).
C_DIFFS_APPLIED = 0
#: Level changes applied.
C_LEVELS_APPLIED = 1
#: Deletes of levels not in the book (normal: the snapshot holds only the top levels).
C_DELETE_UNKNOWN = 2
#: Diff messages dropped as already contained in the book (u too old).
C_STALE = 3
#: Diff messages buffered while waiting for a snapshot.
C_BUFFERED = 4
#: Buffered messages evicted because the buffer was full (oldest first).
C_BUFFER_EVICTED = 5
#: Messages larger than the whole buffer, dropped.
C_BUFFER_OVERFLOW = 6
#: Gaps in the update-id chain of a synced book.
C_GAPS = 7
#: Times the book asked for a new snapshot (gaps, and snapshots too old for the buffered diffs).
C_RESYNCS_NEEDED = 8
#: Snapshots applied.
C_SNAPSHOTS = 9
#: Snapshots ignored because the live book was already past them.
C_SNAPSHOTS_STALE = 10
#: Updates after which the book was crossed (best bid >= best ask).
C_CROSSED = 11
#: Trades seen.
C_TRADES = 12
#: Tickers seen (ignored by the book).
C_TICKERS = 13
#: Levels dropped because a side was full (the deepest ones go first).
C_LEVELS_EVICTED = 14
#: BOOK + FEATURES pairs written.
C_EMITTED = 15
#: Resets by the source (it lost its stream): the book was dropped until the next snapshot.
C_RESETS = 16
#: Number of per-symbol counters.
N_BOOK_COUNTERS = 17

#: Counter names, by index.
BOOK_COUNTER_NAMES: tuple[str, ...] = (
    "diffs_applied", "levels_applied", "delete_unknown", "stale", "buffered", "buffer_evicted",
    "buffer_overflow", "gaps", "resyncs_needed", "snapshots", "snapshots_stale", "crossed", "trades",
    "tickers", "levels_evicted", "emitted", "resets",
)

# -- actions decided at the first record of a message -----------------------------------------------
A_IGNORE = 0
A_APPLY = 1
A_STALE = 2
A_BUFFER = 3
A_GAP = 4
A_SNAPSHOT = 5
A_TRADE = 6
A_DROP = 7
A_DROP_GAP = 8
A_RESET = 9

_LAST = FLAG_LAST_IN_MESSAGE


@njit(cache=True)
def _decide(market: int, status: int, last: int, first_id: int, last_id: int, prev_id: int) -> int:
    """A_APPLY / A_STALE / A_BUFFER / A_GAP for a diff message, by Binance's rules."""
    if status in (ST_EMPTY, ST_SNAPSHOT):
        return A_BUFFER
    if market == MARKET_SPOT:
        if status == ST_SYNCING:
            if last_id <= last:
                return A_STALE
            return A_APPLY if first_id <= last + 1 else A_GAP
        if first_id == last + 1:
            return A_APPLY
        return A_STALE if last_id <= last else A_GAP
    if status == ST_SYNCING:
        if last_id < last:
            return A_STALE
        # pu == lastUpdateId: the snapshot fell exactly between two diffs and this one follows it directly
        return A_APPLY if first_id <= last or prev_id == last else A_GAP
    if prev_id == last:
        return A_APPLY
    return A_STALE if last_id <= last else A_GAP


# hot-path helpers are `_nrt=False` (no allocation inside): no atomic refcounting of array arguments
@njit(cache=True, _nrt=False)
def _apply_record(blk: np.ndarray, dirs: np.ndarray, meta: np.ndarray, counters: np.ndarray, s: int,
                  flags: int, price: int, qty: int) -> None:
    if flags & FLAG_ASK:
        code = lv.set_level(blk, dirs, meta, 2 * s + 1, -price, qty)
    else:
        code = lv.set_level(blk, dirs, meta, 2 * s, price, qty)
    counters[s, C_LEVELS_APPLIED] += 1
    if code == lv.SET_UNKNOWN_DELETE:
        counters[s, C_DELETE_UNKNOWN] += 1
    elif code == lv.SET_EVICTED:
        counters[s, C_LEVELS_EVICTED] += 1


@njit(cache=True)
def _mark_gap(sym_state: np.ndarray, counters: np.ndarray, s: int, live: bool) -> None:
    if live:
        counters[s, C_GAPS] += 1
    counters[s, C_RESYNCS_NEEDED] += 1
    sym_state[s, S_STATUS] = ST_EMPTY
    sym_state[s, S_NEED_SNAPSHOT] = 1


@njit(cache=True)
def _buffer_push(buf: np.ndarray, sym_state: np.ndarray, counters: np.ndarray, s: int, rec) -> bool:
    """Append a record to the symbol's diff buffer, evicting its oldest whole message if full."""
    cap = buf.shape[0] // sym_state.shape[0]
    base = s * cap
    head = sym_state[s, S_BUF_HEAD]
    ln = sym_state[s, S_BUF_LEN]
    if ln == cap:
        j = 0
        while j < ln and not (buf[base + (head + j) % cap].flags & _LAST):
            j += 1
        if j == ln:
            return False  # the current message alone fills the buffer
        head = (head + j + 1) % cap
        ln -= j + 1
        counters[s, C_BUFFER_EVICTED] += 1
    buf[base + (head + ln) % cap] = rec
    sym_state[s, S_BUF_HEAD] = head
    sym_state[s, S_BUF_LEN] = ln + 1
    return True


@njit(cache=True)
def _replay_buffer(buf: np.ndarray, blk: np.ndarray, dirs: np.ndarray, meta: np.ndarray,
                   sym_state: np.ndarray, counters: np.ndarray, s: int) -> None:
    """After a snapshot: run the buffered diffs through the sync rules; stop (keeping the rest) on a gap."""
    cap = buf.shape[0] // sym_state.shape[0]
    base = s * cap
    head = sym_state[s, S_BUF_HEAD]
    ln = sym_state[s, S_BUF_LEN]
    while ln > 0:
        r0 = buf[base + head]
        market = r0.market
        sym_state[s, S_MARKET] = market
        action = _decide(market, sym_state[s, S_STATUS], sym_state[s, S_LAST_ID], r0.first_id, r0.last_id,
                         r0.prev_id)
        if action == A_GAP:
            # while syncing: the snapshot is older than the buffered diffs; once live: a real gap
            _mark_gap(sym_state, counters, s, sym_state[s, S_STATUS] == ST_LIVE)
            break
        while ln > 0:
            r = buf[base + head]
            head = (head + 1) % cap
            ln -= 1
            if action == A_APPLY and r.kind == KIND_DEPTH:
                _apply_record(blk, dirs, meta, counters, s, r.flags, r.price, r.qty)
            if r.flags & _LAST:
                break
        if action == A_APPLY:
            sym_state[s, S_LAST_ID] = r0.last_id
            sym_state[s, S_STATUS] = ST_LIVE
            counters[s, C_DIFFS_APPLIED] += 1
        else:
            counters[s, C_STALE] += 1
    sym_state[s, S_BUF_HEAD] = head if ln > 0 else 0
    sym_state[s, S_BUF_LEN] = ln


@njit(cache=True)
def _finish_snapshot(blk: np.ndarray, dirs: np.ndarray, meta: np.ndarray, snap: np.ndarray, glob: np.ndarray,
                     counters: np.ndarray, s: int) -> None:
    """Load the levels a snapshot collected (arrival order, best first) into the book, best last."""
    for side in range(2):
        n = glob[G_SNAP_N + side]
        k = snap[side, 0, :n]
        q = snap[side, 1, :n]
        order = np.argsort(k, kind="mergesort")  # already sorted (reversed) on Binance: O(n)
        ks = np.empty(n, np.int64)
        qs = np.empty(n, np.int64)
        m = 0
        for i in range(n):
            key = k[order[i]]
            if m > 0 and ks[m - 1] == key:
                m -= 1  # a repeated price: the later line wins
            ks[m] = key
            qs[m] = q[order[i]]
            m += 1
        counters[s, C_LEVELS_EVICTED] += lv.load_sorted(blk, dirs, meta, 2 * s + side, ks, qs, m)
        glob[G_SNAP_N + side] = 0


@njit(cache=True, _nrt=False)
def _emit(r, s: int, out_book: np.ndarray, out_feat: np.ndarray, j: int, blk: np.ndarray, dirs: np.ndarray,
          meta: np.ndarray, tops: np.ndarray, sym_state: np.ndarray, glob: np.ndarray, counters: np.ndarray,
          fstate: np.ndarray, hist_t: np.ndarray, hist_mid: np.ndarray, hist_n: np.ndarray) -> None:
    depth = tops.shape[1]
    nb = lv.top_levels(blk, dirs, meta, 2 * s, tops[0], tops[1], depth)
    na = lv.top_levels(blk, dirs, meta, 2 * s + 1, tops[2], tops[3], depth)
    for i in range(na):
        tops[2, i] = -tops[2, i]
    status = sym_state[s, S_STATUS]
    crossed = False
    if status >= ST_SYNCING and nb > 0 and na > 0 and tops[0, 0] >= tops[2, 0]:
        crossed = True
        counters[s, C_CROSSED] += 1
    sym_state[s, S_CROSSED] = 1 if crossed else 0
    valid = status >= ST_SYNCING and not crossed
    flags = FLAG_BOOK_VALID if valid else 0
    first = sym_state[s, S_FIRST_TS]
    if valid and first > 0 and sym_state[s, S_EXCH_TS] - first >= FEATURES_WARM_MS:
        flags |= FLAG_FEATURES_WARM  # the windowed features are filled: the models may judge this row
    seq = glob[G_OUT_SEQ]
    glob[G_OUT_SEQ] = seq + 1
    ob = out_book[j]
    ob.seq = seq
    ob.t_origin_ns = r.t_origin_ns
    ob.t_publish_ns = 0
    ob.symbol = s
    ob.kind = KIND_BOOK
    ob.flags = flags
    ob.bid_px = tops[0, 0] if nb > 0 else 0
    ob.bid_qty = tops[1, 0] if nb > 0 else 0
    ob.ask_px = tops[2, 0] if na > 0 else 0
    ob.ask_qty = tops[3, 0] if na > 0 else 0
    ob.last_id = sym_state[s, S_LAST_ID]
    ob.exch_ts_ms = sym_state[s, S_EXCH_TS]
    ob.trade_px = sym_state[s, S_TRADE_PX]
    ob.trade_qty = sym_state[s, S_TRADE_QTY]
    sym_state[s, S_TRADE_QTY] = 0
    for i in range(BOOK_DEPTH):  # the visible depth the paper exchange queues and walks against
        ob.bid_pxs[i] = tops[0, i] if i < nb else 0
        ob.bid_qtys[i] = tops[1, i] if i < nb else 0
        ob.ask_pxs[i] = tops[2, i] if i < na else 0
        ob.ask_qtys[i] = tops[3, i] if i < na else 0
    of = out_feat[j]
    of.seq = seq
    of.t_origin_ns = r.t_origin_ns
    of.t_publish_ns = 0
    of.symbol = s
    of.kind = KIND_FEATURES
    of.flags = flags
    of.last_id = sym_state[s, S_LAST_ID]
    of.exch_ts_ms = sym_state[s, S_EXCH_TS]
    ft.compute(fstate, hist_t, hist_mid, hist_n, s, sym_state[s, S_EXCH_TS], valid,
               tops[0], tops[1], nb, tops[2], tops[3], na, of.values)
    counters[s, C_EMITTED] += 1


@njit(cache=True)
def book_kernel(inp: np.ndarray, in_pos: int, n: int, in_mask: int,
                out_book: np.ndarray, out_feat: np.ndarray, out_pos: int, out_mask: int,
                blk: np.ndarray, dirs: np.ndarray, meta: np.ndarray, snap: np.ndarray, tops: np.ndarray,
                sym_state: np.ndarray, glob: np.ndarray, counters: np.ndarray, buf: np.ndarray,
                fstate: np.ndarray, hist_t: np.ndarray, hist_mid: np.ndarray, hist_n: np.ndarray) -> int:
    """Consume MARKET records inp[(in_pos + i) & in_mask], i < n; write BOOK / FEATURES pairs at
    out_*[(out_pos + k) & out_mask]; return the number of pairs written (<= n)."""
    n_sym = sym_state.shape[0]
    n_out = 0
    for i in range(n):
        r = inp[(in_pos + i) & in_mask]
        s = r.symbol
        flags = r.flags
        last = flags & _LAST
        if s >= n_sym:
            glob[G_BAD_SYMBOL] += 1
            if last:
                glob[G_IN_MSG] = 0
            continue
        kind = r.kind
        if glob[G_IN_MSG] == 0:
            # first record of a message: decide what the whole message does
            if r.exch_ts_ms > 0:
                sym_state[s, S_EXCH_TS] = max(sym_state[s, S_EXCH_TS], r.exch_ts_ms)
                if sym_state[s, S_FIRST_TS] == 0:
                    sym_state[s, S_FIRST_TS] = r.exch_ts_ms
            if kind in (KIND_DEPTH, KIND_DEPTH_EMPTY):
                sym_state[s, S_MARKET] = r.market
                status = sym_state[s, S_STATUS]
                action = _decide(r.market, status, sym_state[s, S_LAST_ID], r.first_id, r.last_id, r.prev_id)
                if action == A_STALE:
                    counters[s, C_STALE] += 1
                elif action == A_BUFFER:
                    counters[s, C_BUFFERED] += 1
                elif action == A_GAP:
                    _mark_gap(sym_state, counters, s, status == ST_LIVE)
                    sym_state[s, S_BUF_HEAD] = 0
                    sym_state[s, S_BUF_LEN] = 0  # the diffs needed after the next snapshot start here
                    counters[s, C_BUFFERED] += 1
            elif kind == KIND_SNAPSHOT:
                if not flags & FLAG_SNAPSHOT_BEGIN:
                    action = A_IGNORE  # the start of this snapshot was lost
                elif sym_state[s, S_STATUS] == ST_LIVE and r.last_id <= sym_state[s, S_LAST_ID]:
                    counters[s, C_SNAPSHOTS_STALE] += 1
                    action = A_IGNORE
                else:
                    action = A_SNAPSHOT
                    sym_state[s, S_STATUS] = ST_SNAPSHOT
                    glob[G_SNAP_N] = 0
                    glob[G_SNAP_N + 1] = 0
            elif kind == KIND_TRADE:
                action = A_TRADE
            elif kind == KIND_RESET:
                action = A_RESET
            else:
                if kind == KIND_TICKER:
                    counters[s, C_TICKERS] += 1
                action = A_IGNORE
            glob[G_ACTION] = action
            glob[G_IN_MSG] = 1
        else:
            action = glob[G_ACTION]

        if action == A_APPLY:
            if kind == KIND_DEPTH:
                _apply_record(blk, dirs, meta, counters, s, flags, r.price, r.qty)
        elif action in (A_BUFFER, A_GAP):
            if not _buffer_push(buf, sym_state, counters, s, r):
                sym_state[s, S_BUF_HEAD] = 0
                sym_state[s, S_BUF_LEN] = 0
                counters[s, C_BUFFER_OVERFLOW] += 1
                action = A_DROP if action == A_BUFFER else A_DROP_GAP
                glob[G_ACTION] = action
        elif action == A_SNAPSHOT:
            if r.qty > 0:
                side = 1 if flags & FLAG_ASK else 0
                k = glob[G_SNAP_N + side]
                if k < snap.shape[2]:
                    snap[side, 0, k] = -r.price if side else r.price
                    snap[side, 1, k] = r.qty
                    glob[G_SNAP_N + side] = k + 1
                else:
                    counters[s, C_LEVELS_EVICTED] += 1
        elif action == A_TRADE:
            sq = -r.qty if flags & FLAG_BUYER_MAKER else r.qty
            sym_state[s, S_TRADE_PX] = r.price
            sym_state[s, S_TRADE_QTY] += sq
            counters[s, C_TRADES] += 1
            ft.add_trade(fstate[s], sym_state[s, S_EXCH_TS], r.price, sq)

        if not last:
            continue
        glob[G_IN_MSG] = 0
        emit = False
        if action == A_APPLY:
            sym_state[s, S_LAST_ID] = r.last_id
            sym_state[s, S_STATUS] = ST_LIVE
            counters[s, C_DIFFS_APPLIED] += 1
            emit = True
        elif action == A_SNAPSHOT:
            if flags & FLAG_SNAPSHOT_END:
                _finish_snapshot(blk, dirs, meta, snap, glob, counters, s)
                sym_state[s, S_LAST_ID] = r.last_id
                sym_state[s, S_STATUS] = ST_SYNCING
                sym_state[s, S_NEED_SNAPSHOT] = 0
                counters[s, C_SNAPSHOTS] += 1
                _replay_buffer(buf, blk, dirs, meta, sym_state, counters, s)
            else:
                sym_state[s, S_STATUS] = ST_EMPTY  # truncated snapshot: wait for another
                sym_state[s, S_NEED_SNAPSHOT] = 1
            emit = True
        elif action == A_RESET:
            # the diffs that would follow are lost: nothing buffered can bridge, the next snapshot starts over
            counters[s, C_RESETS] += 1
            if sym_state[s, S_STATUS] != ST_EMPTY:
                counters[s, C_RESYNCS_NEEDED] += 1
            sym_state[s, S_STATUS] = ST_EMPTY
            sym_state[s, S_NEED_SNAPSHOT] = 1
            sym_state[s, S_BUF_HEAD] = 0
            sym_state[s, S_BUF_LEN] = 0
            emit = True
        elif action in (A_GAP, A_DROP_GAP, A_TRADE):
            emit = True
        if emit:
            _emit(r, s, out_book, out_feat, (out_pos + n_out) & out_mask, blk, dirs, meta, tops, sym_state,
                  glob, counters, fstate, hist_t, hist_mid, hist_n)
            n_out += 1
    return n_out


class BookState:
    """Every array the book kernel keeps between batches, for `n_symbols` symbols.

    `levels` bounds each side of each book (the deepest levels go first), `buffer` the diff records
    kept per symbol while waiting for a snapshot. All state is plain numpy, so a stage can place it
    anywhere (even in shared memory) and inspect it between batches.
    """

    def __init__(self, n_symbols: int, *, levels: int = DEFAULT_LEVELS, buffer: int = DEFAULT_BUFFER) -> None:
        if n_symbols < 1 or levels < 1 or buffer < 1:
            raise ValueError(f"sizes must be >= 1: n_symbols={n_symbols} levels={levels} buffer={buffer}")
        self.n_symbols = n_symbols
        self.blk, self.dirs, self.meta = lv.alloc(2 * n_symbols, levels)
        self.snap = np.zeros((2, 2, levels), np.int64)
        self.tops = np.zeros((4, ft.DEPTH_B), np.int64)
        self.sym_state = np.zeros((n_symbols, N_SYM_FIELDS), np.int64)
        self.sym_state[:, S_NEED_SNAPSHOT] = 1  # a new book needs its first snapshot
        self.glob = np.zeros(N_GLOBAL, np.int64)
        self.counters = np.zeros((n_symbols, N_BOOK_COUNTERS), np.int64)
        self.buf = np.zeros(n_symbols * buffer, MARKET.dtype)
        self.fstate, self.hist_t, self.hist_mid, self.hist_n = ft.alloc_state(n_symbols)

    def process(self, inp: np.ndarray, n: int, out_book: np.ndarray, out_features: np.ndarray, *,
                in_pos: int = 0, in_mask: int = -1, out_pos: int = 0, out_mask: int = -1) -> int:
        """Run the kernel over n input records; number of BOOK/FEATURES pairs written.

        Without masks, `out_book` / `out_features` need room for n records after `out_pos` (the
        kernel writes at most one pair per input record); with masks, ring arrays of mask + 1 slots.
        """
        if (len(inp) < (in_pos + n if in_mask == -1 else in_mask + 1)
                or min(len(out_book), len(out_features)) < (out_pos + n if out_mask == -1 else out_mask + 1)):
            raise ValueError(f"arrays too small: n={n} in_pos={in_pos} in_mask={in_mask} len(inp)={len(inp)} "
                             f"out_pos={out_pos} out_mask={out_mask} len(out_book)={len(out_book)} "
                             f"len(out_features)={len(out_features)}")
        return book_kernel(inp, in_pos, n, in_mask, out_book, out_features, out_pos, out_mask,
                           self.blk, self.dirs, self.meta, self.snap, self.tops, self.sym_state, self.glob,
                           self.counters, self.buf, self.fstate, self.hist_t, self.hist_mid, self.hist_n)

    def warm_up(self) -> None:
        """Compile (or load from cache) the kernel before the first real batch."""
        inp = np.zeros(1, MARKET.dtype)
        inp[0]["symbol"] = self.n_symbols  # out of range: exercises the call, changes no book
        inp[0]["flags"] = FLAG_LAST_IN_MESSAGE
        self.process(inp, 1, np.zeros(1, BOOK.dtype), np.zeros(1, FEATURES.dtype))
        self.glob[G_BAD_SYMBOL] -= 1

    # -- inspection (not for the hot path) ------------------------------------------------------------
    def levels(self, s: int, side: int, depth: int = 1 << 30) -> list[tuple[int, int]]:
        """(price, qty) of one side (0 bids, 1 asks), best first."""
        n = int(self.meta[2 * s + side, lv.M_LIVE])
        k = np.zeros(n, np.int64)
        q = np.zeros(n, np.int64)
        m = lv.top_levels(self.blk, self.dirs, self.meta, 2 * s + side, k, q, min(n, depth))
        sign = -1 if side else 1
        return [(sign * int(k[i]), int(q[i])) for i in range(m)]

    def top(self, s: int) -> tuple[int, int, int, int]:
        """(bid_px, bid_qty, ask_px, ask_qty) of symbol s, zeros for an empty side."""
        b = self.levels(s, 0, 1)
        a = self.levels(s, 1, 1)
        return (*(b[0] if b else (0, 0)), *(a[0] if a else (0, 0)))

    def status(self, s: int) -> int:
        return int(self.sym_state[s, S_STATUS])

    def valid(self, s: int) -> bool:
        return self.status(s) >= ST_SYNCING and not self.sym_state[s, S_CROSSED]

    def counts(self, s: int | None = None) -> dict[str, int]:
        """Counters by name, for one symbol or summed over all."""
        row = self.counters.sum(axis=0) if s is None else self.counters[s]
        return {name: int(row[i]) for i, name in enumerate(BOOK_COUNTER_NAMES)}
