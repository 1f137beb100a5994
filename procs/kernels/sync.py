"""The feed's mirror of the book's sync state machine, so a live feed knows when to fetch a snapshot.

The book stage (procs/kernels/book.py) decides, per diff message, apply / stale / buffer / gap by
Binance's rules and buffers diffs while it waits for a snapshot. Only the feed can fetch one, and the
book must not wait on a reverse channel, so the feed runs the same decisions over the same records it
publishes, in the same order: `_decide` itself, the same snapshot acceptance rules, and the same
bounded diff buffer (record-counted, oldest whole message evicted first). When the mirror sees the
book turn to "needs a snapshot" (a gap, a snapshot older than the buffered diffs, a truncated
snapshot) it raises `need[s]`, and the feed requests a REST snapshot for that symbol.

The buffer is mirrored by message: (first_id, last_id, prev_id, market, records) per buffered diff.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from procs.kernels.book import (
    A_APPLY,
    A_BUFFER,
    A_GAP,
    A_STALE,
    DEFAULT_BUFFER,
    ST_EMPTY,
    ST_LIVE,
    ST_SNAPSHOT,
    ST_SYNCING,
    _decide,
)
from shm.records import (
    FLAG_LAST_IN_MESSAGE,
    FLAG_SNAPSHOT_BEGIN,
    FLAG_SNAPSHOT_END,
    KIND_DEPTH,
    KIND_DEPTH_EMPTY,
    KIND_RESET,
    KIND_SNAPSHOT,
    MARKET,
)


def write_resets(out: np.ndarray, start: int, n_symbols: int, t_origin_ns: int) -> int:
    """One KIND_RESET record per symbol at out[start:] (a lost connection); the number written, or 0 if
    there is no room. Every book turns invalid until its next snapshot, and so does the mirror."""
    if start + n_symbols > len(out):
        return 0
    r = out[start:start + n_symbols]
    r[:] = 0
    r["t_origin_ns"] = t_origin_ns
    r["symbol"] = np.arange(n_symbols)
    r["kind"] = KIND_RESET
    r["flags"] = FLAG_LAST_IN_MESSAGE
    return n_symbols

# per-symbol state columns
T_STATUS = 0
T_LAST_ID = 1
T_HEAD = 2  # buffered messages: ring of message rows, oldest at HEAD
T_LEN = 3
T_RECS = 4  # records those messages hold (the book's buffer is counted in records)
T_IN_SNAP = 5  # 1 while inside an accepted snapshot message
T_GAPS = 6  # gaps seen on a live book (the book's own `gaps` counter)
T_NEED_COUNT = 7  # times a snapshot became necessary
T_BREAKS = 8  # diffs that broke the chain of a synced book (live, or just after its snapshot)
N_T = 9

# columns of a buffered message row
_M_FIRST, _M_LAST, _M_PREV, _M_MARKET, _M_RECS = range(5)


@njit(cache=True)
def _mark(st: np.ndarray, need: np.ndarray, s: int, live: bool) -> None:
    if live:
        st[s, T_GAPS] += 1
    st[s, T_STATUS] = ST_EMPTY
    st[s, T_NEED_COUNT] += 1
    need[s] = 1


@njit(cache=True)
def _push(st: np.ndarray, msgs: np.ndarray, s: int, r, cap_records: int) -> None:
    """Buffer one diff message of `r.recs` records the way book._buffer_push does, record by record."""
    cap_msgs = msgs.shape[1]
    nrec = r[_M_RECS]
    # the book pushes record by record and, when full, evicts the oldest *whole* message; the message being
    # pushed cannot evict itself, so a message larger than the buffer empties it and is dropped
    if nrec > cap_records:
        st[s, T_HEAD] = 0
        st[s, T_LEN] = 0
        st[s, T_RECS] = 0
        return
    while st[s, T_RECS] + nrec > cap_records or st[s, T_LEN] == cap_msgs:
        h = st[s, T_HEAD]
        st[s, T_RECS] -= msgs[s, h, _M_RECS]
        st[s, T_HEAD] = (h + 1) % cap_msgs
        st[s, T_LEN] -= 1
    j = (st[s, T_HEAD] + st[s, T_LEN]) % cap_msgs
    for c in range(5):
        msgs[s, j, c] = r[c]
    st[s, T_LEN] += 1
    st[s, T_RECS] += nrec


@njit(cache=True)
def _replay(st: np.ndarray, msgs: np.ndarray, need: np.ndarray, s: int) -> None:
    """book._replay_buffer on the mirrored ids: stop (keeping the rest) at the first diff that does not chain."""
    cap_msgs = msgs.shape[1]
    while st[s, T_LEN] > 0:
        h = st[s, T_HEAD]
        action = _decide(msgs[s, h, _M_MARKET], st[s, T_STATUS], st[s, T_LAST_ID], msgs[s, h, _M_FIRST],
                         msgs[s, h, _M_LAST], msgs[s, h, _M_PREV])
        if action == A_GAP:
            _mark(st, need, s, st[s, T_STATUS] == ST_LIVE)
            break
        if action == A_APPLY:
            st[s, T_LAST_ID] = msgs[s, h, _M_LAST]
            st[s, T_STATUS] = ST_LIVE
        st[s, T_RECS] -= msgs[s, h, _M_RECS]
        st[s, T_HEAD] = (h + 1) % cap_msgs
        st[s, T_LEN] -= 1
    if st[s, T_LEN] == 0:
        st[s, T_HEAD] = 0
        st[s, T_RECS] = 0


@njit(cache=True)
def sync_kernel(recs: np.ndarray, start: int, end: int, st: np.ndarray, msgs: np.ndarray, need: np.ndarray,
                cap_records: int, cur: np.ndarray) -> int:
    """Run recs[start:end] (whole or partial messages) through the mirror; number of symbols newly needing
    a snapshot (`need[s]` set to 1). `cur` carries the message in progress across calls: [symbol, first
    record's kind, records so far, snapshot accepted]."""
    n_sym = st.shape[0]
    raised = 0
    for i in range(start, end):
        r = recs[i]
        s = r.symbol
        if s >= n_sym:
            continue
        kind = r.kind
        if cur[2] == 0:  # first record of a message
            cur[0] = s
            cur[1] = kind
            cur[3] = 0
            if kind == KIND_SNAPSHOT:
                if not r.flags & FLAG_SNAPSHOT_BEGIN:
                    cur[3] = 0
                elif st[s, T_STATUS] == ST_LIVE and r.last_id <= st[s, T_LAST_ID]:
                    cur[3] = 0  # the book ignores a snapshot it is already past
                else:
                    cur[3] = 1
                    st[s, T_STATUS] = ST_SNAPSHOT
        cur[2] += 1
        if not r.flags & FLAG_LAST_IN_MESSAGE:
            continue
        nrec = cur[2]
        cur[2] = 0
        k0 = cur[1]
        if k0 in (KIND_DEPTH, KIND_DEPTH_EMPTY):
            status = st[s, T_STATUS]
            action = _decide(r.market, status, st[s, T_LAST_ID], r.first_id, r.last_id, r.prev_id)
            row = np.empty(5, np.int64)
            row[_M_FIRST] = r.first_id
            row[_M_LAST] = r.last_id
            row[_M_PREV] = r.prev_id
            row[_M_MARKET] = r.market
            row[_M_RECS] = nrec
            if action == A_APPLY:
                st[s, T_LAST_ID] = r.last_id
                st[s, T_STATUS] = ST_LIVE
            elif action == A_BUFFER:
                _push(st, msgs, s, row, cap_records)
            elif action == A_GAP:
                st[s, T_BREAKS] += 1
                was = need[s]
                _mark(st, need, s, status == ST_LIVE)
                st[s, T_HEAD] = 0
                st[s, T_LEN] = 0
                st[s, T_RECS] = 0
                _push(st, msgs, s, row, cap_records)
                raised += 1 - was
            elif action == A_STALE:
                pass
        elif k0 == KIND_RESET:
            was = need[s]
            if st[s, T_STATUS] != ST_EMPTY:
                st[s, T_NEED_COUNT] += 1
            st[s, T_STATUS] = ST_EMPTY
            st[s, T_HEAD] = 0
            st[s, T_LEN] = 0
            st[s, T_RECS] = 0
            need[s] = 1
            raised += 1 - was
        elif k0 == KIND_SNAPSHOT and cur[3] == 1:
            if r.flags & FLAG_SNAPSHOT_END:
                st[s, T_LAST_ID] = r.last_id
                st[s, T_STATUS] = ST_SYNCING
                need[s] = 0
                _replay(st, msgs, need, s)
                raised += need[s]
            else:
                was = need[s]
                st[s, T_STATUS] = ST_EMPTY
                st[s, T_NEED_COUNT] += 1
                need[s] = 1
                raised += 1 - was
    return raised


class SyncMirror:
    """Per-symbol mirror state; `process(records, start, end)` returns how many symbols now need a snapshot.

    `need` (uint8 per symbol) stays 1 until an accepted snapshot clears it; the caller keeps track of the
    requests it has in flight. `buffer_records` must equal the book's diff buffer per symbol.
    """

    def __init__(self, n_symbols: int, *, buffer_records: int = DEFAULT_BUFFER) -> None:
        self.st = np.zeros((n_symbols, N_T), np.int64)
        self.msgs = np.zeros((n_symbols, min(buffer_records, 1 << 16), 5), np.int64)
        self.need = np.ones(n_symbols, np.int64)  # a new book needs its first snapshot
        self.cur = np.zeros(4, np.int64)
        self.cap = buffer_records

    def process(self, recs: np.ndarray, start: int, end: int) -> int:
        return int(sync_kernel(recs, start, end, self.st, self.msgs, self.need, self.cap, self.cur))

    def synced(self, s: int) -> bool:
        """Whether the book of symbol s is valid (a snapshot applied and the chain unbroken since)."""
        return int(self.st[s, T_STATUS]) >= ST_SYNCING

    def gaps(self) -> int:
        """Chain breaks seen on synced books (a diff missing or out of order after the snapshot applied)."""
        return int(self.st[:, T_BREAKS].sum())

    def warm_up(self) -> None:
        """Compile (or load from cache) the kernel now, not on the first live message."""
        r = np.zeros(1, MARKET.dtype)
        r[0]["symbol"] = self.st.shape[0]  # out of range: touches no state
        r[0]["flags"] = FLAG_LAST_IN_MESSAGE
        self.process(r, 0, 1)
