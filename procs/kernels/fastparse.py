"""Fast path for Binance depthUpdate, bookTicker, trade and aggTrade messages: one numba call per message,
raw bytes → MARKET records.

`FastDepth.depth` / `FastDepth.tick` give exactly what `Parser._depth` / `_ticker` / `_trade` (the orjson
path) give for the messages they accept (same record bytes, return code, seq advance), or `NOT_HANDLED`,
and then the caller runs the orjson path, so behaviour never changes. Accepted: those events (spot,
USD-M, COIN-M field sets; a bookTicker with no "e" as spot sends it, recognised by the orjson path's
rule: "u", "b" and "A" present), bare or in the combined-stream wrapper `{"stream":..,"data":{..}}`
(keys in any order, JSON whitespace anywhere), made only of plain printable-ASCII strings without
escapes, int64 integers, true / false / null and (depth) level arrays of exactly two strings. Anything
else (escapes, non-ASCII, floats, exponents, nested values, duplicate keys of interest, missing fields
or fields of another type, another "e", trailing bytes) is not handled.

The kernels validate the whole message first (pass 1, which also locates the fields and parses the
decimal strings straight to fixed point, with the exact rules of `parse_json.parse_fixed`), so a message
that orjson would reject never reaches the writing pass; pass 2 writes the records through an int64
view of the output (MARKET is 128 bytes: 16 int64 words; the `market` byte is merged into its word so
the padding bytes stay untouched, as with `struct.pack_into`). Every function is `_nrt=False` (nothing
is allocated): numba would otherwise refcount the array arguments of each helper call atomically
(~13 ns a call, 3x the whole parse). The wrapper calls the compiled kernels directly (`_entry`), not
through numba's dispatcher.

Symbol names are resolved by the caller's SymbolTable the first time each spelling is seen; the
kernels then find them in a small open-addressing table of (length, 3 name words, id) rows, so a
known symbol costs no Python work. Names longer than 24 bytes are not handled.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numba import njit, types

from shm.records import (
    FLAG_ASK,
    FLAG_BUYER_MAKER,
    FLAG_LAST_IN_MESSAGE,
    KIND_DEPTH,
    KIND_DEPTH_EMPTY,
    KIND_TICKER,
    KIND_TRADE,
    MARKET,
    MARKET_COINM,
    MARKET_SPOT,
    MARKET_USDM,
    PRICE_SCALE,
    QTY_SCALE,
)

#: The message is not one the fast path accepts: run the orjson path.
NOT_HANDLED = -1000
#: Kernel only: the symbol spelling is not in the table; its byte span is in tab[0, 0:2].
SYMBOL_MISS = -1001
#: Kernel only: a side has more levels than the scratch holds; the count needed is in tab[0, 2].
NEED_SCRATCH = -1002
#: Same values as parse_json's (asserted there): a bad decimal string / too little room in `out`.
ERR_NUMBER = -3
ERR_NO_SPACE = -4

assert PRICE_SCALE == QTY_SCALE == 10**8, "the kernel assumes one 1e8 scale"
assert MARKET.size == 128 and MARKET.offsets["market"] == 96, "MARKET layout changed: update the kernel"
assert [MARKET.offsets[n] for n in ("seq", "t_origin_ns", "t_publish_ns", "symbol", "kind", "flags", "price",
                                    "qty", "price2", "qty2", "first_id", "last_id", "prev_id",
                                    "exch_ts_ms")] == [0, 8, 16, 24, 28, 30, 32, 40, 48, 56, 64, 72, 80, 88], \
    "MARKET offsets changed: update the kernel"
#: int64 words per record.
_WORDS = MARKET.size // 8
_MAX_NAME = 24
_I64_MAX = (1 << 63) - 1
# multiplier by number of decimals written ("1.5" → × 10**7) and the largest digit value it keeps in int64
_POW = np.array([10 ** (8 - k) for k in range(9)], np.int64)
_LIM = np.array([_I64_MAX // 10 ** (8 - k) for k in range(9)], np.int64)
# byte class inside a string: 0 plain printable ASCII, 1 the closing quote, 2 anything orjson may treat
# differently from a plain byte (escape, control, non-ASCII): not handled
_CLS = np.full(256, 2, np.uint8)
_CLS[32:127] = 0
_CLS[34] = 1
_CLS[92] = 2
_DEPTH_UPDATE = np.frombuffer(b"depthUpdate", np.uint8).copy()
_STREAM_Q = np.frombuffer(b'stream"', np.uint8).copy()
_DATA_Q = np.frombuffer(b'data"', np.uint8).copy()
_HASH_MUL = 0x1E3779B97F4A7C15  # odd, < 2**63 so numba keeps it int64
_M64 = (1 << 64) - 1

# key ids (bit positions in the seen-mask)
_K_E, _K_S, _K_U, _K_LU, _K_E2, _K_B, _K_A, _K_PU, _K_PS = range(9)
_REQUIRED = (1 << _K_E) | (1 << _K_S) | (1 << _K_U) | (1 << _K_LU) | (1 << _K_E2) | (1 << _K_B) | (1 << _K_A)

# key ids of the bookTicker / trade / aggTrade scanner (bit positions in its masks, slots in its values)
_T_LE, _T_E, _T_S, _T_LU, _T_LB, _T_B, _T_LA, _T_A, _T_P, _T_Q, _T_T, _T_L, _T_LM, _T_M, _T_PS = range(15)
# single-byte key → key id (-1: a key the orjson path does not read for these kinds)
_TKEY = np.full(256, -1, np.int64)
for _k, _c in ((_T_LE, "e"), (_T_E, "E"), (_T_S, "s"), (_T_LU, "u"), (_T_LB, "b"), (_T_B, "B"), (_T_LA, "a"),
               (_T_A, "A"), (_T_P, "p"), (_T_Q, "q"), (_T_T, "t"), (_T_L, "l"), (_T_LM, "m"), (_T_M, "M")):
    _TKEY[ord(_c)] = _k
# keys whose string value is a price / quantity: parsed to fixed point while scanning
_TNUM = (1 << _T_LB) | (1 << _T_B) | (1 << _T_LA) | (1 << _T_A) | (1 << _T_P) | (1 << _T_Q)
_BOOK_TICKER = np.frombuffer(b"bookTicker", np.uint8).copy()
_TRADE = np.frombuffer(b"trade", np.uint8).copy()
_AGG_TRADE = np.frombuffer(b"aggTrade", np.uint8).copy()
_TRUE = np.frombuffer(b"true", np.uint8).copy()
_FALSE = np.frombuffer(b"false", np.uint8).copy()
_NULL = np.frombuffer(b"null", np.uint8).copy()
_EV_TICKER, _EV_TRADE, _EV_AGG = 1, 2, 3
#: `FastDepth.tick` results: one bookTicker record / one trade or aggTrade record written.
TICKER = 1
TRADE = 2


@njit(cache=True, _nrt=False)
def _ws(raw, i, n):
    if i < n and raw[i] > 32:
        return i  # Binance sends no whitespace: one test
    while i < n:
        c = raw[i]
        if c != 32 and c != 10 and c != 13 and c != 9:
            break
        i += 1
    return i


@njit(cache=True, _nrt=False)
def _str_end(raw, i, n):
    # i is just past the opening quote: index of the closing one, -1 for escapes/control/non-ASCII
    while i < n:
        k = _CLS[raw[i]]
        if k != 0:
            return i if k == 1 else -1
        i += 1
    return -1


@njit(cache=True, _nrt=False)
def _eq(raw, i, n, lit):
    if i + len(lit) > n:
        return False
    for k in range(len(lit)):  # noqa: SIM110 - a plain loop: numba does not compile all(<generator>)
        if raw[i + k] != lit[k]:
            return False
    return True


@njit(cache=True, _nrt=False)
def _int(raw, i, n):
    # JSON integer at i → (value, end); end -1 when it is not a plain integer that fits int64
    neg = False
    if i < n and raw[i] == 45:
        neg = True
        i += 1
    if i >= n or raw[i] < 48 or raw[i] > 57:
        return 0, -1
    v = 0
    if raw[i] == 48:
        i += 1
    else:
        while i < n:
            d = np.int64(raw[i]) - 48
            if d < 0 or d > 9:
                break
            if v > (_I64_MAX - d) // 10:
                return 0, -1
            v = v * 10 + d
            i += 1
    if i < n:
        c = raw[i]
        if c == 46 or c == 101 or c == 69 or (48 <= c <= 57):
            return 0, -1  # fraction, exponent or leading zero: orjson decides
    return (-v if neg else v), i


@njit(cache=True, _nrt=False)
def _level_str(raw, a, n):
    # the string starting at a (just past its quote) → (parse_fixed value or -1, index of its closing
    # quote); end -1 when the string is not plain ASCII (orjson's decoding would decide). Up to 18
    # digits cannot overflow int64, so the common case needs no per-digit check.
    v = 0
    j = a
    while j < n and 48 <= raw[j] <= 57:
        v = v * 10 + (np.int64(raw[j]) - 48)
        j += 1
    if j >= n:
        return 0, -1
    ip = j - a
    if raw[j] == 34:
        if ip == 0 or ip > 19:
            return -1, j
        if ip > 18:
            return _fixed_exact(raw, a, j), j
        return (v * 100_000_000 if v <= _LIM[0] else -1), j
    if raw[j] == 46 and ip > 0:
        j += 1
        fa = j
        while j < n and 48 <= raw[j] <= 57:
            v = v * 10 + (np.int64(raw[j]) - 48)
            j += 1
        if j >= n:
            return 0, -1
        nd = j - fa
        if raw[j] == 34:
            if nd == 0 or j - a > 32:
                return -1, j
            if nd > 8 or ip + nd > 18:
                return _fixed_exact(raw, a, j), j  # extra zero decimals, or a value that may not fit
            return (v * _POW[nd] if v <= _LIM[nd] else -1), j
    e = _str_end(raw, j, n)  # not a number: still a plain string?
    return -1, e


@njit(cache=True, _nrt=False)
def _past(raw, i, n, ch):
    # index just past the byte `ch` after optional whitespace at i; -1 if it is not there (or i < 0,
    # so checks can be chained and tested once)
    if i < 0:
        return -1
    i = _ws(raw, i, n)
    if i >= n or raw[i] != ch:
        return -1
    return i + 1


@njit(cache=True, _nrt=False)
def _levels(raw, i, n, sc, side):
    # i at '[': validates [["str","str"], ...] and parses its strings into sc[side] (as far as it
    # holds) → (index past ']', level count); (-1, 0) when not handled
    i = _ws(raw, i + 1, n)
    if i < n and raw[i] == 93:
        return i + 1, 0
    cap = sc.shape[1] // 2
    k = 0
    while True:
        i = _past(raw, i, n, 91)  # [
        i = _past(raw, i, n, 34)  # "
        if i < 0:
            return -1, 0
        p, i = _level_str(raw, i, n)
        if i < 0:
            return -1, 0
        i = _past(raw, i + 1, n, 44)  # ,
        i = _past(raw, i, n, 34)  # "
        if i < 0:
            return -1, 0
        q, i = _level_str(raw, i, n)
        if i < 0:
            return -1, 0
        i = _past(raw, i + 1, n, 93)  # ]
        if i < 0:
            return -1, 0
        i -= 1  # at the ']'
        if k < cap:
            sc[side, 2 * k] = p
            sc[side, 2 * k + 1] = q
        k += 1
        i = _ws(raw, i + 1, n)
        if i >= n:
            return -1, 0
        if raw[i] == 93:
            return i + 1, k
        if raw[i] != 44:
            return -1, 0
        i = _ws(raw, i + 1, n)


@njit(cache=True, _nrt=False)
def _wrapper_key(raw, ka, ke, n):
    # the key raw[ka:ke] is "data" or "stream": in a bare event, orjson's path may read it as a wrapper
    kl = ke - ka
    return (kl == 4 and _eq(raw, ka, n, _DATA_Q)) or (kl == 6 and _eq(raw, ka, n, _STREAM_Q))


@njit(cache=True, _nrt=False)
def _stream(raw, i, n):
    # i just past the "stream" key: index past its string value, -1 when not a plain string
    i = _ws(raw, i, n)
    if i >= n or raw[i] != 58:
        return -1
    i = _ws(raw, i + 1, n)
    if i >= n or raw[i] != 34:
        return -1
    e = _str_end(raw, i + 1, n)
    return -1 if e < 0 else e + 1


@njit(cache=True, _nrt=False)
def _open(raw, n):
    # → (index of the event's '{', state): state 0 bare event, 1 inside {"stream":..,"data":, 2 inside
    # {"data": (the "stream" string must follow the event); index -1 when not handled. The wrapper must
    # hold exactly "stream" (a string) and "data" (an object), the orjson path's combined-stream shape
    i = _ws(raw, 0, n)
    if i >= n or raw[i] != 123:
        return -1, 0
    j = _ws(raw, i + 1, n)
    if j >= n or raw[j] != 34:
        return i, 0
    if _eq(raw, j + 1, n, _STREAM_Q):
        j = _stream(raw, j + 8, n)
        if j < 0:
            return -1, 0
        j = _ws(raw, j, n)
        if j >= n or raw[j] != 44:
            return -1, 0
        j = _ws(raw, j + 1, n)
        if j >= n or raw[j] != 34 or not _eq(raw, j + 1, n, _DATA_Q):
            return -1, 0
        state = 1
    elif _eq(raw, j + 1, n, _DATA_Q):
        state = 2
    else:
        return i, 0
    j = _ws(raw, j + 6, n)
    if j >= n or raw[j] != 58:
        return -1, 0
    j = _ws(raw, j + 1, n)
    if j >= n or raw[j] != 123:
        return -1, 0
    return j, state


@njit(cache=True, _nrt=False)
def _close(raw, i, n, state):
    # i just past the event's '}': the rest of the wrapper (see _open) and nothing but whitespace after it
    if state == 2:
        i = _ws(raw, i, n)
        if i >= n or raw[i] != 44:
            return False
        i = _ws(raw, i + 1, n)
        if i >= n or raw[i] != 34 or not _eq(raw, i + 1, n, _STREAM_Q):
            return False
        i = _stream(raw, i + 8, n)
        if i < 0:
            return False
    if state != 0:
        i = _ws(raw, i, n)
        if i >= n or raw[i] != 125:
            return False
        i += 1
    return _ws(raw, i, n) == n


@njit(cache=True, _nrt=False)
def _event(raw, i, n, sc, bare):
    # i at '{' of the depthUpdate object → (end, s_a, s_b, U, u, pu, has_pu, has_ps, E, nb, na), the
    # levels parsed into sc; end -1 when it is not an event the fast path accepts
    seen = 0
    s_a = s_b = 0
    first = last = pu = ets = 0
    nb = na = 0
    i = _ws(raw, i + 1, n)
    while True:
        if i >= n or raw[i] != 34:
            return -1, 0, 0, 0, 0, 0, False, False, 0, 0, 0
        ka = i + 1
        ke = _str_end(raw, ka, n)
        if ke < 0:
            return -1, 0, 0, 0, 0, 0, False, False, 0, 0, 0
        i = _ws(raw, ke + 1, n)
        if i >= n or raw[i] != 58:
            return -1, 0, 0, 0, 0, 0, False, False, 0, 0, 0
        i = _ws(raw, i + 1, n)
        if i >= n:
            return -1, 0, 0, 0, 0, 0, False, False, 0, 0, 0
        key = -1
        klen = ke - ka
        if klen == 1:
            k0 = raw[ka]
            if k0 == 101:
                key = _K_E
            elif k0 == 115:
                key = _K_S
            elif k0 == 85:
                key = _K_U
            elif k0 == 117:
                key = _K_LU
            elif k0 == 69:
                key = _K_E2
            elif k0 == 98:
                key = _K_B
            elif k0 == 97:
                key = _K_A
        elif klen == 2 and raw[ka] == 112:
            if raw[ka + 1] == 117:
                key = _K_PU
            elif raw[ka + 1] == 115:
                key = _K_PS
        elif bare and _wrapper_key(raw, ka, ke, n):
            return -1, 0, 0, 0, 0, 0, False, False, 0, 0, 0
        if key >= 0:
            if seen & (1 << key):
                return -1, 0, 0, 0, 0, 0, False, False, 0, 0, 0  # duplicate key: orjson's rules apply
            seen |= 1 << key
        c = raw[i]
        if key == _K_E:
            if c != 34:
                return -1, 0, 0, 0, 0, 0, False, False, 0, 0, 0
            e = _str_end(raw, i + 1, n)
            if e != i + 12 or not _eq(raw, i + 1, n, _DEPTH_UPDATE):
                return -1, 0, 0, 0, 0, 0, False, False, 0, 0, 0  # another event type
            i = e + 1
        elif key == _K_S:
            if c != 34:
                return -1, 0, 0, 0, 0, 0, False, False, 0, 0, 0
            e = _str_end(raw, i + 1, n)
            if e < 0:
                return -1, 0, 0, 0, 0, 0, False, False, 0, 0, 0
            s_a = i + 1
            s_b = e
            i = e + 1
        elif key in (_K_B, _K_A):
            if c != 91:
                return -1, 0, 0, 0, 0, 0, False, False, 0, 0, 0
            e, cnt = _levels(raw, i, n, sc, 0 if key == _K_B else 1)
            if e < 0:
                return -1, 0, 0, 0, 0, 0, False, False, 0, 0, 0
            if key == _K_B:
                nb = cnt
            else:
                na = cnt
            i = e
        elif key in (_K_U, _K_LU, _K_E2, _K_PU):
            v, e = _int(raw, i, n)
            if e < 0:
                return -1, 0, 0, 0, 0, 0, False, False, 0, 0, 0
            if key == _K_U:
                first = v
            elif key == _K_LU:
                last = v
            elif key == _K_E2:
                ets = v
            else:
                pu = v
            i = e
        elif c == 34:  # "ps" or any other key: only its presence matters, if a plain string or integer
            e = _str_end(raw, i + 1, n)
            if e < 0:
                return -1, 0, 0, 0, 0, 0, False, False, 0, 0, 0
            i = e + 1
        else:
            v, e = _int(raw, i, n)
            if e < 0:
                return -1, 0, 0, 0, 0, 0, False, False, 0, 0, 0
            i = e
        i = _ws(raw, i, n)
        if i >= n:
            return -1, 0, 0, 0, 0, 0, False, False, 0, 0, 0
        if raw[i] == 125:
            break
        if raw[i] != 44:
            return -1, 0, 0, 0, 0, 0, False, False, 0, 0, 0
        i = _ws(raw, i + 1, n)
    if (seen & _REQUIRED) != _REQUIRED:
        return -1, 0, 0, 0, 0, 0, False, False, 0, 0, 0  # missing field: the orjson path reports it
    has_pu = (seen & (1 << _K_PU)) != 0
    has_ps = (seen & (1 << _K_PS)) != 0
    return i + 1, s_a, s_b, first, last, pu, has_pu, has_ps, ets, nb, na


@njit(cache=True, _nrt=False)
def _fixed_exact(raw, a, b):
    # parse_fixed on raw[a:b] (ASCII, no quotes): fixed point scaled by 1e8, -1 if invalid;
    # one overflow-checked step per digit (a division): for the rare long strings only
    n = b - a
    dot = -1
    for j in range(a, b):
        if raw[j] == 46:
            dot = j
            break
    if dot < 0:
        if n == 0 or n > 19:
            return -1
        nd = 0
        end = b
    else:
        nd = b - dot - 1
        if dot == a or nd == 0 or n > 32:
            return -1
        if nd > 8:
            for j in range(dot + 9, b):
                if raw[j] != 48:
                    return -1  # a non-zero digit past 1e-8 cannot be represented exactly
            nd = 8
        end = dot + 1 + nd
    lim = _LIM[nd]
    v = 0
    for j in range(a, end):
        if j == dot:
            continue
        d = np.int64(raw[j]) - 48
        if d < 0 or d > 9:
            return -1
        if v > (lim - d) // 10:
            return -1  # v * 10**(8-nd) would not fit int64
        v = v * 10 + d
    return v * _POW[nd]


@njit(cache=True, _nrt=False)
def _name_words(raw, a, b):
    w0 = w1 = w2 = 0
    for j in range(b - a):
        c = np.int64(raw[a + j]) << (8 * (j & 7))
        if j < 8:
            w0 |= c
        elif j < 16:
            w1 |= c
        else:
            w2 |= c
    return w0, w1, w2


@njit(cache=True, _nrt=False)
def _find_symbol(raw, s_a, s_b, tab):
    # symbol id of the name raw[s_a:s_b] from the table of spellings resolved so far; SYMBOL_MISS (its
    # span left in tab[0, 0:2]) or NOT_HANDLED (empty or too long a name)
    slen = s_b - s_a
    if slen == 0 or slen > _MAX_NAME:
        return NOT_HANDLED
    w0, w1, w2 = _name_words(raw, s_a, s_b)
    cap = tab.shape[0] - 1
    h = ((w0 ^ (w1 * 31) ^ (w2 * 961) ^ slen) * _HASH_MUL) >> 40
    slot = h & (cap - 1)
    for _ in range(cap):
        r = 1 + slot
        if tab[r, 0] == 0:
            break
        if tab[r, 0] == slen and tab[r, 1] == w0 and tab[r, 2] == w1 and tab[r, 3] == w2:
            return tab[r, 4]
        slot = (slot + 1) & (cap - 1)
    tab[0, 0] = s_a
    tab[0, 1] = s_b
    return SYMBOL_MISS


@njit(cache=True, _nrt=False)
def _write(o, r, seq, t0, head, p, q, p2, q2, first, last, pu, ets, market):
    o[r, 0] = seq
    o[r, 1] = t0
    o[r, 2] = 0
    o[r, 3] = head  # symbol u4 | kind u2 << 32 | flags u2 << 48
    o[r, 4] = p
    o[r, 5] = q
    o[r, 6] = p2
    o[r, 7] = q2
    o[r, 8] = first
    o[r, 9] = last
    o[r, 10] = pu
    o[r, 11] = ets
    o[r, 12] = (o[r, 12] & -256) | market  # only byte 96 is a field: keep the padding as pack_into does


@njit(cache=True, _nrt=False)
def depth_kernel(raw: bytes, o: np.ndarray, tab: np.ndarray, sc: np.ndarray, start: int, seq: int,
                 t0: int) -> int:
    """One depthUpdate: records written at o[start:] → count, ERR_NUMBER, ERR_NO_SPACE, SYMBOL_MISS,
    NEED_SCRATCH or NOT_HANDLED. `o` is the (len(out), 16) int64 view of a MARKET array; `tab` row 0
    returns the symbol span / scratch size needed, rows 1.. are the symbol table (power-of-two count);
    `sc` (2, 2 * max levels) int64 receives the parsed bid and ask levels."""
    n = len(raw)
    if start < 0 or seq < 0:
        return NOT_HANDLED
    i, state = _open(raw, n)
    if i < 0:
        return NOT_HANDLED
    ev = _event(raw, i, n, sc, state == 0)
    if ev[0] < 0 or not _close(raw, ev[0], n, state):
        return NOT_HANDLED
    _, s_a, s_b, first, last, pu, has_pu, has_ps, ets, nb, na = ev
    if 2 * max(nb, na) > sc.shape[1]:
        tab[0, 2] = max(nb, na)
        return NEED_SCRATCH
    sym = _find_symbol(raw, s_a, s_b, tab)
    if sym < 0:
        return sym

    nlev = nb + na
    if start + max(nlev, 1) > o.shape[0]:
        return ERR_NO_SPACE
    if has_pu:
        market = MARKET_COINM if has_ps else MARKET_USDM
    else:
        market = MARKET_SPOT
        pu = -1
    if nlev == 0:
        _write(o, start, seq, t0, sym | (KIND_DEPTH_EMPTY << 32) | (FLAG_LAST_IN_MESSAGE << 48), 0, 0, 0, 0,
               first, last, pu, ets, market)
        return 1
    k = 0
    for side in range(2):
        cnt = nb if side == 0 else na
        flag = 0 if side == 0 else FLAG_ASK
        for j in range(cnt):
            p = sc[side, 2 * j]
            q = sc[side, 2 * j + 1]
            if p < 0 or q < 0:
                return ERR_NUMBER  # the earlier levels stay written, as on the orjson path
            k += 1
            f = flag | FLAG_LAST_IN_MESSAGE if k == nlev else flag
            _write(o, start + k - 1, seq + k - 1, t0, sym | (KIND_DEPTH << 32) | (f << 48), p, q, 0, 0,
                   first, last, pu, ets, market)
    return nlev


@njit(cache=True, _nrt=False)
def _event_kind(raw, a, b, n):
    # the "e" string raw[a:b] → _EV_*; 0 for any other event type
    if b - a == 10 and _eq(raw, a, n, _BOOK_TICKER):
        return _EV_TICKER
    if b - a == 5 and _eq(raw, a, n, _TRADE):
        return _EV_TRADE
    if b - a == 8 and _eq(raw, a, n, _AGG_TRADE):
        return _EV_AGG
    return 0


@njit(cache=True, _nrt=False)
def _tick_event(raw, i, n, kv, bare):
    # i at '{' of a bookTicker / trade / aggTrade → (end, _EV_* from "e" or 0 without one, masks of the
    # keys seen / with a string / integer / boolean / true value, symbol span); key k's value (integer,
    # or fixed point of a decimal string, -1 if not one) in kv[0, k]. end -1 when not handled: another
    # "e", a nested value, float, escape, duplicate key of interest, ... (the orjson path decides)
    seen = strs = ints = bools = trues = 0
    ev = 0
    s_a = s_b = 0
    i = _ws(raw, i + 1, n)
    while True:
        if i >= n or raw[i] != 34:
            return -1, 0, 0, 0, 0, 0, 0, 0, 0
        ka = i + 1
        ke = _str_end(raw, ka, n)
        if ke < 0:
            return -1, 0, 0, 0, 0, 0, 0, 0, 0
        i = _ws(raw, ke + 1, n)
        if i >= n or raw[i] != 58:
            return -1, 0, 0, 0, 0, 0, 0, 0, 0
        i = _ws(raw, i + 1, n)
        if i >= n:
            return -1, 0, 0, 0, 0, 0, 0, 0, 0
        key = -1
        klen = ke - ka
        if klen == 1:
            key = _TKEY[raw[ka]]
        elif klen == 2 and raw[ka] == 112 and raw[ka + 1] == 115:
            key = _T_PS
        elif bare and _wrapper_key(raw, ka, ke, n):
            return -1, 0, 0, 0, 0, 0, 0, 0, 0
        bit = 0
        if key >= 0:
            bit = 1 << key
            if seen & bit:
                return -1, 0, 0, 0, 0, 0, 0, 0, 0  # duplicate key: orjson's rules apply
            seen |= bit
        c = raw[i]
        if c == 34:
            if bit & _TNUM:
                v, e = _level_str(raw, i + 1, n)
                kv[0, key] = v
            else:
                e = _str_end(raw, i + 1, n)
            if e < 0:
                return -1, 0, 0, 0, 0, 0, 0, 0, 0
            if key == _T_LE:
                ev = _event_kind(raw, i + 1, e, n)
                if ev == 0:
                    return -1, 0, 0, 0, 0, 0, 0, 0, 0  # kline, depthUpdate, ...: early exit
            elif key == _T_S:
                s_a = i + 1
                s_b = e
            strs |= bit
            i = e + 1
        elif c == 116:
            if not _eq(raw, i, n, _TRUE):
                return -1, 0, 0, 0, 0, 0, 0, 0, 0
            bools |= bit
            trues |= bit
            i += 4
        elif c == 102:
            if not _eq(raw, i, n, _FALSE):
                return -1, 0, 0, 0, 0, 0, 0, 0, 0
            bools |= bit
            i += 5
        elif c == 110:
            if not _eq(raw, i, n, _NULL):
                return -1, 0, 0, 0, 0, 0, 0, 0, 0
            i += 4
        else:
            v, e = _int(raw, i, n)
            if e < 0:
                return -1, 0, 0, 0, 0, 0, 0, 0, 0  # float, exponent, array, object: not handled
            if key >= 0:
                kv[0, key] = v
            ints |= bit
            i = e
        i = _ws(raw, i, n)
        if i >= n:
            return -1, 0, 0, 0, 0, 0, 0, 0, 0
        if raw[i] == 125:
            break
        if raw[i] != 44:
            return -1, 0, 0, 0, 0, 0, 0, 0, 0
        i = _ws(raw, i + 1, n)
    return i + 1, ev, seen, strs, ints, bools, trues, s_a, s_b


@njit(cache=True, _nrt=False)
def tick_kernel(raw: bytes, o: np.ndarray, tab: np.ndarray, sc: np.ndarray, start: int, seq: int,
                t0: int) -> int:
    """One bookTicker / trade / aggTrade: its record written at o[start] → TICKER, TRADE, ERR_NUMBER,
    ERR_NO_SPACE, SYMBOL_MISS or NOT_HANDLED. Arguments as for `depth_kernel` (sc row 0 is scratch)."""
    n = len(raw)
    if start < 0 or seq < 0:
        return NOT_HANDLED
    i, state = _open(raw, n)
    if i < 0:
        return NOT_HANDLED
    end, ev, seen, strs, ints, bools, trues, s_a, s_b = _tick_event(raw, i, n, sc, state == 0)
    if end < 0 or not _close(raw, end, n, state):
        return NOT_HANDLED
    if (strs & (1 << _T_S)) == 0:
        return NOT_HANDLED  # the symbol must be a plain string
    if ev == 0:
        # no "e" (a non-string "e" is not handled): the orjson path takes any event with u, b and A for a
        # bookTicker (spot's has no "e")
        if seen & (1 << _T_LE):
            return NOT_HANDLED
        if (seen & ((1 << _T_LU) | (1 << _T_LB) | (1 << _T_A))) != (1 << _T_LU) | (1 << _T_LB) | (1 << _T_A):
            return NOT_HANDLED
        ev = _EV_TICKER
    if ev == _EV_TICKER:
        need = (1 << _T_LB) | (1 << _T_B) | (1 << _T_LA) | (1 << _T_A)
        if (strs & need) != need or (ints & (1 << _T_LU)) == 0:
            return NOT_HANDLED
        if seen & (1 << _T_E):
            if (ints & (1 << _T_E)) == 0:
                return NOT_HANDLED
            market = MARKET_COINM if seen & (1 << _T_PS) else MARKET_USDM
            ets = sc[0, _T_E]
        else:
            market = MARKET_SPOT  # spot bookTicker carries neither e nor E
            ets = 0
        p = sc[0, _T_LB]
        q = sc[0, _T_B]
        p2 = sc[0, _T_LA]
        q2 = sc[0, _T_A]
        first = -1
        last = sc[0, _T_LU]
        head = KIND_TICKER << 32 | FLAG_LAST_IN_MESSAGE << 48
        done = TICKER
    else:
        need = (1 << _T_P) | (1 << _T_Q)
        idk = _T_T if ev == _EV_TRADE else _T_LA
        if ((strs & need) != need or (ints & (1 << _T_E)) == 0 or (ints & (1 << idk)) == 0
                or (bools & (1 << _T_LM)) == 0):
            return NOT_HANDLED
        p = sc[0, _T_P]
        q = sc[0, _T_Q]
        p2 = q2 = 0
        first = last = sc[0, idk]
        if ev == _EV_AGG and seen & (1 << _T_L):
            if (ints & (1 << _T_L)) == 0:
                return NOT_HANDLED
            last = sc[0, _T_L]
        flags = FLAG_LAST_IN_MESSAGE | FLAG_BUYER_MAKER if trues & (1 << _T_LM) else FLAG_LAST_IN_MESSAGE
        market = MARKET_COINM if seen & (1 << _T_PS) else MARKET_SPOT if seen & (1 << _T_M) else MARKET_USDM
        ets = sc[0, _T_E]
        head = KIND_TRADE << 32 | flags << 48
        done = TRADE
    sym = _find_symbol(raw, s_a, s_b, tab)
    if sym < 0:
        return sym
    if start >= o.shape[0]:
        return ERR_NO_SPACE
    if p < 0 or q < 0 or p2 < 0 or q2 < 0:
        return ERR_NUMBER
    _write(o, start, seq, t0, sym | head, p, q, p2, q2, first, last, -1, ets, market)
    return done


# the one signature the wrapper calls the kernels with (bytes, three C-contiguous int64 tables, 3 ints)
_I64_2D = types.Array(types.int64, 2, "C")
_SIG = (types.Bytes(types.uint8, 1, "C", readonly=True), _I64_2D, _I64_2D, _I64_2D, types.int64, types.int64,
        types.int64)


def _entry(kernel: Callable[..., int]) -> Callable[..., int]:
    # the compiled function itself (loaded from numba's cache if there): calling it skips the
    # dispatcher's type resolution (~0.14 µs a call); it converts arguments to _SIG without checking,
    # so the wrapper checks their types first
    return kernel.compile(_SIG)


_UNBOUND = object()


def name_slot(name: bytes, cap: int) -> int:
    """Home slot of `name` in a table of `cap` rows (the kernel's hash, on Python ints)."""
    w = [int.from_bytes(name[k:k + 8], "little") for k in (0, 8, 16)]
    h = (((w[0] ^ (w[1] * 31) ^ (w[2] * 961) ^ len(name)) * _HASH_MUL) & _M64) >> 40
    return h & (cap - 1)


class FastDepth:
    """Per-parser state of the fast path: the symbol table the kernels read and the bound output view.

    `resolve(name) -> id or -1` is the parser's own symbol lookup (it counts unknown symbols), called
    once per new spelling; `depth` / `tick` then retry the kernel. The int64 view of the last `out` array is
    kept (building it costs ~0.5 µs), so that array stays referenced until another one is passed.
    """

    def __init__(self, resolve: Callable[[str], int], capacity: int = 64) -> None:
        self._resolve = resolve
        self._names: dict[bytes, int] = {}
        self._tab = self._table(capacity)
        self._sc = np.zeros((2, 2 * 1024), np.int64)
        self._out: object = _UNBOUND  # not None: out=None must go through _bind and be refused
        self._o64: np.ndarray | None = None
        self._depth_k = _entry(depth_kernel)
        self._tick_k = _entry(tick_kernel)

    def _table(self, cap: int) -> np.ndarray:
        tab = np.zeros((1 + cap, 5), np.int64)
        for name, sid in self._names.items():
            slot = name_slot(name, cap)
            while tab[1 + slot, 0]:
                slot = (slot + 1) & (cap - 1)
            w = [int.from_bytes(name[k:k + 8], "little") for k in (0, 8, 16)]
            tab[1 + slot] = (len(name), w[0], w[1], w[2], sid)
        return tab

    def _bind(self, out: object) -> bool:
        # the int64 view is built once per output array (the feed reuses one staging array)
        if (type(out) is not np.ndarray or out.dtype != MARKET.dtype or out.ndim != 1
                or not out.flags.c_contiguous or not out.flags.writeable):
            return False
        o64 = out.view(np.int64).reshape(len(out), _WORDS)
        if not o64.flags.aligned:
            return False  # an unaligned view would make numba compile another specialisation
        self._out = out
        self._o64 = o64
        return True

    def depth(self, raw: bytes, t_origin_ns: int, out: np.ndarray, start: int, seq: int) -> int:
        """Records of one depthUpdate at out[start:] → count or ERR_*, exactly as the orjson path;
        NOT_HANDLED when the message is not one the fast path accepts (nothing was written)."""
        if out is not self._out and not self._bind(out):
            return NOT_HANDLED
        if type(raw) is not bytes or type(t_origin_ns) is not int or type(start) is not int or type(seq) is not int:
            return NOT_HANDLED  # the kernel would take any buffer and silently cast a float
        try:
            n = self._depth_k(raw, self._o64, self._tab, self._sc, start, seq, t_origin_ns)
        except OverflowError:
            return NOT_HANDLED  # an int beyond int64
        if n <= SYMBOL_MISS:
            n = self._retry(self._depth_k, n, raw, t_origin_ns, start, seq)
        return n

    def tick(self, raw: bytes, t_origin_ns: int, out: np.ndarray, start: int, seq: int) -> int:
        """The record of one bookTicker / trade / aggTrade at out[start] → TICKER or TRADE (one record
        written), 0 (unknown symbol) or ERR_*, exactly as the orjson path; NOT_HANDLED (nothing written)
        for any other message or one the fast path does not accept."""
        if out is not self._out and not self._bind(out):
            return NOT_HANDLED
        if type(raw) is not bytes or type(t_origin_ns) is not int or type(start) is not int or type(seq) is not int:
            return NOT_HANDLED  # the kernel would take any buffer and silently cast a float
        try:
            n = self._tick_k(raw, self._o64, self._tab, self._sc, start, seq, t_origin_ns)
        except OverflowError:
            return NOT_HANDLED  # an int beyond int64
        if n == SYMBOL_MISS:
            n = self._retry(self._tick_k, n, raw, t_origin_ns, start, seq)
        return n

    def _retry(self, kernel: Callable[..., int], n: int, raw: bytes, t0: int, start: int, seq: int) -> int:
        # a new symbol spelling or a message with more levels than the scratch holds: fix, call again
        for _ in range(2):
            if n == NEED_SCRATCH:
                self._sc = np.zeros((2, 2 * int(self._tab[0, 2])), np.int64)
            elif n == SYMBOL_MISS:
                name = raw[int(self._tab[0, 0]):int(self._tab[0, 1])]
                sid = self._resolve(name.decode("ascii"))
                if sid < 0:
                    return 0  # unknown symbol: counted by resolve, skipped like on the orjson path
                if len(self._names) >= 1 << 15:
                    return NOT_HANDLED
                self._names[name] = sid
                cap = len(self._tab) - 1
                while 2 * len(self._names) > cap:
                    cap *= 2  # keep the load at most 1/2 so probes stay short
                self._tab = self._table(cap)
            else:
                return n
            n = kernel(raw, self._o64, self._tab, self._sc, start, seq, t0)
        return NOT_HANDLED if n <= SYMBOL_MISS else n


_WARM = (b'{"stream":"x@depth","data":{"e":"depthUpdate","E":1,"s":"X","U":1,"u":2,"pu":0,'
         b'"b":[["1.5","2"]],"a":[]}}')
_WARM_TICK = b'{"stream":"x@trade","data":{"e":"trade","E":1,"s":"X","t":1,"p":"1.5","q":"2","m":true}}'


_warmed = False


def warm() -> None:
    """Compile (or load from numba's cache) the kernels, so the first real message does not pay for it."""
    global _warmed
    if not _warmed:
        fd = FastDepth(lambda name: 0)
        out = np.zeros(2, MARKET.dtype)
        n = fd.depth(_WARM, 0, out, 0, 0)
        assert n == 1, f"fast path self-check failed: {n}"
        n = fd.tick(_WARM_TICK, 0, out, 0, 0)
        assert n == TRADE, f"fast path self-check failed: {n}"
        _warmed = True
