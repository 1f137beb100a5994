"""Binance JSON messages → MARKET records, written straight into a preallocated record array.

One raw message (bytes) becomes one record per level change / snapshot level / trade / ticker; the
last record of the message carries `FLAG_LAST_IN_MESSAGE`. Accepted shapes:

- combined-stream wrapper `{"stream": ..., "data": {...}}` or the bare event (single-stream socket);
- `depthUpdate` (spot: U/u; USD-M: U/u/pu; COIN-M: U/u/pu plus `ps`), `trade`, `aggTrade`,
  `bookTicker` (spot has no `e` field: recognised by its keys);
- REST depth snapshot, bare `{"lastUpdateId", "bids", "asks"}` (its symbol is `Parser.bare_symbol`,
  or the only symbol seen so far) or wrapped as `<symbol>@depthSnapshot`.

Partial-depth streams (`<symbol>@depth20`) look like snapshots but are not: counted as unknown.
Decimal strings become fixed-point int64 with `parse_fixed` (exact, no float). Nothing raises out of
`parse_message`: malformed input returns a negative `ERR_*` code and is counted; unknown message types
and unknown symbols return 0 and are counted. Records are written with one `struct.pack_into` each
(0.2 µs; a numpy field-by-field write from Python costs ~3 µs).
depthUpdate, bookTicker, trade and aggTrade messages first go through `fastparse` (one numba call,
same records); whatever it does not handle comes back here (`Parser(fast=False)` turns it off).
"""

from __future__ import annotations

import struct

import numpy as np
import orjson

from procs.kernels import fastparse
from shm.records import (
    FLAG_ASK,
    FLAG_BUYER_MAKER,
    FLAG_LAST_IN_MESSAGE,
    FLAG_SNAPSHOT_BEGIN,
    FLAG_SNAPSHOT_END,
    KIND_DEPTH,
    KIND_DEPTH_EMPTY,
    KIND_SNAPSHOT,
    KIND_TICKER,
    KIND_TRADE,
    MARKET,
    MARKET_COINM,
    MARKET_SPOT,
    MARKET_USDM,
    PRICE_SCALE,
    QTY_SCALE,
)

# -- return codes (negative: the message was malformed or could not be written) -----------------
#: Not valid JSON, or not a JSON object.
ERR_JSON = -1
#: A required field is missing or has the wrong type.
ERR_FIELD = -2
#: A price or quantity is not a plain decimal with at most 8 decimals, or overflows int64.
ERR_NUMBER = -3
#: `out` has too little room after `start` for this message; nothing was written and only PC_NO_SPACE
#: counted, so the caller can publish what it has and retry the same message.
ERR_NO_SPACE = -4
assert (fastparse.ERR_NUMBER, fastparse.ERR_NO_SPACE) == (ERR_NUMBER, ERR_NO_SPACE), "fast path codes differ"
_NOT_HANDLED = fastparse.NOT_HANDLED

# -- parser counters: indices into `Parser.counters` (int64) ------------------------------------
#: Messages handed to the parser (a retry after ERR_NO_SPACE is not counted again).
PC_MESSAGES = 0
#: depthUpdate messages parsed.
PC_DEPTH = 1
#: Depth snapshots parsed.
PC_SNAPSHOT = 2
#: trade / aggTrade messages parsed.
PC_TRADE = 3
#: bookTicker messages parsed.
PC_TICKER = 4
#: Valid JSON of a type we do not handle (kline, markPrice, partial depth ...): skipped.
PC_UNKNOWN_TYPE = 5
#: Messages for a symbol not in the table while auto-add is off (or the table is full): skipped.
PC_UNKNOWN_SYMBOL = 6
#: ERR_JSON returns.
PC_BAD_JSON = 7
#: ERR_FIELD returns.
PC_BAD_FIELD = 8
#: ERR_NUMBER returns.
PC_BAD_NUMBER = 9
#: ERR_NO_SPACE returns.
PC_NO_SPACE = 10
#: Records written.
PC_RECORDS = 11
#: Number of parser counters.
N_PARSE_COUNTERS = 12

#: Counter names, by index (for reports and Prometheus labels).
PARSE_COUNTER_NAMES: tuple[str, ...] = (
    "messages", "depth", "snapshot", "trade", "ticker", "unknown_type", "unknown_symbol",
    "bad_json", "bad_field", "bad_number", "no_space", "records",
)

#: Decimal places representable exactly by the fixed-point scale (PRICE_SCALE == QTY_SCALE == 1e8).
FIXED_DECIMALS = 8
assert 10 ** FIXED_DECIMALS == PRICE_SCALE == QTY_SCALE, "parse_fixed assumes one 1e8 scale"

#: Longest decimal string accepted: int64 holds 19 digits; also bounds the cost of int() on garbage.
_MAX_NUMBER_LEN = 32
_INT64_LIMIT = 1 << 63
# multiplier by number of decimals written: "1.5" has 1 decimal → × 10**7
_POW = tuple(10 ** (FIXED_DECIMALS - k) for k in range(FIXED_DECIMALS + 1))
#: Cache of decimal string → fixed point: prices and sizes repeat heavily (0.08 µs hit vs 0.6 µs parse).
_CACHE_LIMIT = 1 << 16

_REC = struct.Struct("<QqqIHHqqqqqqqqB")
assert MARKET.dtype.names == ("seq", "t_origin_ns", "t_publish_ns", "symbol", "kind", "flags", "price", "qty",
                              "price2", "qty2", "first_id", "last_id", "prev_id", "exch_ts_ms", "market"), \
    "MARKET layout changed: update _REC"
assert all(MARKET.offsets[n] == struct.calcsize("<" + _REC.format[1:][:i])
           for i, n in enumerate(MARKET.dtype.names)), "MARKET offsets do not match _REC"
_REC_SIZE = MARKET.size
_ASK_LAST = FLAG_ASK | FLAG_LAST_IN_MESSAGE
_pack = _REC.pack_into


def parse_fixed(s: str) -> int:
    """Plain decimal string ("61800.20", "6195", "0.000") → int scaled by 1e8; -1 if invalid.

    Valid: ASCII digits, optionally one '.' followed by 1 to 8 digits (more are accepted only when the
    extra ones are zeros, so the value stays exact). No sign, exponent, spaces, '_' or empty parts.
    """
    n = len(s)
    i = s.find(".")
    if i < 0:
        if 0 < n <= 19 and s.isascii() and s.isdigit():
            v = int(s) * PRICE_SCALE
            return v if v < _INT64_LIMIT else -1
        return -1
    nd = n - i - 1
    if i == 0 or nd == 0 or n > _MAX_NUMBER_LEN:
        return -1
    if nd > FIXED_DECIMALS:
        tail = s[i + 1 + FIXED_DECIMALS:]
        if tail.strip("0"):
            return -1  # a non-zero digit past 1e-8 cannot be represented exactly
        s = s[:i + 1 + FIXED_DECIMALS]
        nd = FIXED_DECIMALS
    d = s[:i] + s[i + 1:]
    if d.isascii() and d.isdigit():
        v = int(d) * _POW[nd]
        return v if v < _INT64_LIMIT else -1
    return -1


class _FixedCache(dict):
    """str → fixed point; a hit is one C-level dict lookup, a miss parses (and bounds the size)."""

    def __missing__(self, s: str) -> int:
        v = parse_fixed(s)
        if len(self) >= _CACHE_LIMIT:
            self.clear()
        self[s] = v
        return v


class SymbolTable:
    """Symbol names (case-insensitive, stored upper-case) ↔ small integer ids, in order of addition.

    With `auto_add`, an unknown symbol gets the next id until `max_symbols` are taken; otherwise the
    parser skips its messages and counts them (`PC_UNKNOWN_SYMBOL`).
    """

    def __init__(self, names: tuple[str, ...] | list[str] = (), *, auto_add: bool = True,
                 max_symbols: int = 1024) -> None:
        if max_symbols < 1:
            raise ValueError(f"max_symbols must be >= 1: max_symbols={max_symbols}")
        self.auto_add = auto_add
        self.max_symbols = max_symbols
        self.names: list[str] = []
        self._ids: dict[str, int] = {}
        for name in names:
            if self.add(name) < 0:
                raise ValueError(f"too many symbols: max_symbols={max_symbols} names={len(names)}")

    def __len__(self) -> int:
        return len(self.names)

    def add(self, name: str) -> int:
        """Id of `name`, adding it if new; -1 if the table is full."""
        key = name.upper()
        sid = self._ids.get(key)
        if sid is not None:
            self._ids[name] = sid
            return sid
        if len(self.names) >= self.max_symbols:
            return -1
        sid = len(self.names)
        self.names.append(key)
        self._ids[key] = sid
        self._ids[name] = sid  # the spelling as received (lower-case stream names) hits the dict directly
        return sid

    def lookup(self, name: str) -> int:
        """Id of `name` (any case), auto-adding it if configured; -1 if unknown."""
        sid = self._ids.get(name)
        if sid is not None:
            return sid
        key = name.upper()
        sid = self._ids.get(key)
        if sid is not None:
            self._ids[name] = sid
            return sid
        return self.add(name) if self.auto_add else -1

    def name(self, sid: int) -> str:
        return self.names[sid]


class Parser:
    """Per-feed parser state: symbol table, counters, the next record sequence number, options.

    `bare_symbol` names the symbol of bare REST snapshots (they carry none); when None, the only
    symbol in the table is used (single-symbol captures), else the snapshot is rejected (ERR_FIELD).
    `counters` is a plain list (a numpy element increment costs ~0.25 µs, a list one ~0.03 µs);
    `export_counters` copies it into an int64 array, e.g. a shared-memory view, at reporting time.
    `seq` is the sequence number of the next record written.
    `fast` (default) sends depthUpdate, bookTicker, trade and aggTrade messages through `fastparse` first
    (same records, codes and counters; it keeps a view of the last `out` array); `fast=False` is the
    orjson path alone.
    """

    def __init__(self, symbols: SymbolTable | None = None, *, bare_symbol: str | None = None,
                 first_seq: int = 0, fast: bool = True) -> None:
        self.symbols = symbols if symbols is not None else SymbolTable()
        self.bare_symbol = bare_symbol
        self.counters: list[int] = [0] * N_PARSE_COUNTERS
        self.seq = first_seq
        self._fx = _FixedCache()
        self._ids = self.symbols._ids  # fast path for known symbols: one dict lookup
        self._fast: fastparse.FastDepth | None = None
        if fast:
            fastparse.warm()  # compile / load the kernel now, not on the first depth message
            self._fast = fastparse.FastDepth(self._symbol)

    def counts(self) -> dict[str, int]:
        """Counters by name."""
        return dict(zip(PARSE_COUNTER_NAMES, self.counters, strict=True))

    def export_counters(self, out: np.ndarray) -> None:
        """Copy the counters into `out[:N_PARSE_COUNTERS]` (int64)."""
        out[:N_PARSE_COUNTERS] = self.counters

    def parse(self, raw: bytes, t_origin_ns: int, out: np.ndarray, start: int) -> int:
        """Write the records of one raw message at out[start:]; number written, or a negative ERR_*.

        `out` must be a C-contiguous array of `MARKET.dtype`. Never raises.
        """
        c = self.counters
        n = _NOT_HANDLED
        fast = self._fast
        if fast is not None and type(raw) is bytes and len(raw) > 32:
            # Binance ends a depthUpdate with its "a" array (`]]}}`, `[]}}`, bare `]]}`, `[]}`): testing that
            # byte first spares the other messages the substring search (~0.15 µs); a depthUpdate with
            # another key last is still parsed, by the orjson path
            if raw[-3] == 93 or raw[-2] == 93:
                if b"depthUpdate" in raw:
                    n = fast.depth(raw, t_origin_ns, out, start, self.seq)
                    if n > 0:  # the common case, accounted here to keep the hot path short
                        c[PC_DEPTH] += 1
                        c[PC_MESSAGES] += 1
                        c[PC_RECORDS] += n
                        self.seq += n
                        return n
            else:
                # bookTicker / trade / aggTrade end in a string, number or boolean: no Python test tells
                # them apart cheaper than the kernel, which gives up on other events at their "e" value
                # or first nested value (~0.3 µs lost on a kline before the orjson path)
                n = fast.tick(raw, t_origin_ns, out, start, self.seq)
                if n > 0:
                    c[_TICK_COUNTER[n]] += 1
                    c[PC_MESSAGES] += 1
                    c[PC_RECORDS] += 1
                    self.seq += 1
                    return 1
        if n == _NOT_HANDLED:
            try:
                n = self._parse(raw, t_origin_ns, out, start)
            except orjson.JSONDecodeError:
                n = ERR_JSON
            except (KeyError, TypeError, AttributeError, IndexError, ValueError, struct.error, OverflowError):
                n = ERR_FIELD  # missing field, wrong JSON type, id that does not fit int64
        if n > 0:
            c[PC_MESSAGES] += 1
            self.seq += n
            c[PC_RECORDS] += n
        elif n == 0:
            c[PC_MESSAGES] += 1
        else:
            c[_ERR_COUNTER[n]] += 1
            if n != ERR_NO_SPACE:
                c[PC_MESSAGES] += 1  # a message refused for space is retried by the caller: count it once
        return n

    # -- implementation ------------------------------------------------------------------------
    def _parse(self, raw: bytes, t_origin_ns: int, out: np.ndarray, start: int) -> int:
        obj = orjson.loads(raw)
        if type(obj) is not dict:
            return ERR_JSON
        data = obj.get("data")
        stream = None
        if data is not None and "stream" in obj:
            stream = obj["stream"]
            if type(data) is not dict or type(stream) is not str:
                return ERR_FIELD
        else:
            data = obj
        e = data.get("e")
        if e == "depthUpdate":
            return self._depth(data, t_origin_ns, out, start)
        if e == "bookTicker" or (e is None and "u" in data and "b" in data and "A" in data):
            return self._ticker(data, t_origin_ns, out, start)
        if e == "trade" or e == "aggTrade":
            return self._trade(data, e, t_origin_ns, out, start)
        if e is None and "lastUpdateId" in data:
            if stream is None:
                return self._snapshot(data, None, t_origin_ns, out, start)
            if stream.endswith("@depthSnapshot"):
                return self._snapshot(data, stream[:-14], t_origin_ns, out, start)
        self.counters[PC_UNKNOWN_TYPE] += 1
        return 0

    def _symbol(self, name: str) -> int:
        sid = self._ids.get(name)
        if sid is not None:
            return sid
        if type(name) is not str or not name:
            # malformed (ERR_FIELD), not a new symbol: "" would be auto-added as one (fastparse never passes it)
            raise ValueError(f"symbol not a non-empty string: {name!r}")
        sid = self.symbols.lookup(name)
        if sid < 0:
            self.counters[PC_UNKNOWN_SYMBOL] += 1
        return sid

    def _depth(self, d: dict, t0: int, out: np.ndarray, start: int) -> int:
        sym = self._symbol(d["s"])
        if sym < 0:
            return 0
        bids = d["b"]
        asks = d["a"]
        if type(bids) is not list or type(asks) is not list:
            return ERR_FIELD  # "" or {} would pass for an empty side
        nb = len(bids)
        n = nb + len(asks)
        if start + max(n, 1) > len(out):
            return ERR_NO_SPACE
        first = d["U"]
        last = d["u"]
        pu = d.get("pu")
        if pu is None:
            market = MARKET_SPOT
            pu = -1
        else:
            market = MARKET_COINM if "ps" in d else MARKET_USDM
        ets = d["E"]
        if type(first) is bool or type(last) is bool or type(pu) is bool or type(ets) is bool:
            return ERR_FIELD  # struct packs JSON true / false as 1 / 0
        seq = self.seq
        fx = self._fx
        if n == 0:
            _pack(out, start * _REC_SIZE, seq, t0, 0, sym, KIND_DEPTH_EMPTY, FLAG_LAST_IN_MESSAGE,
                  0, 0, 0, 0, first, last, pu, ets, market)
            self.counters[PC_DEPTH] += 1
            return 1
        off = start * _REC_SIZE
        k = 0
        for lv in bids:
            if type(lv) is not list:
                return ERR_FIELD  # a string "12" would unpack to price "1", qty "2"
            ps, qs = lv  # exactly [price, qty]: ValueError (ERR_FIELD) otherwise
            p = fx[ps]
            q = fx[qs]
            if p < 0 or q < 0:
                return ERR_NUMBER
            k += 1
            _pack(out, off, seq, t0, 0, sym, KIND_DEPTH, FLAG_LAST_IN_MESSAGE if k == n else 0,
                  p, q, 0, 0, first, last, pu, ets, market)
            seq += 1
            off += _REC_SIZE
        for lv in asks:
            if type(lv) is not list:
                return ERR_FIELD
            ps, qs = lv
            p = fx[ps]
            q = fx[qs]
            if p < 0 or q < 0:
                return ERR_NUMBER
            k += 1
            _pack(out, off, seq, t0, 0, sym, KIND_DEPTH, _ASK_LAST if k == n else FLAG_ASK,
                  p, q, 0, 0, first, last, pu, ets, market)
            seq += 1
            off += _REC_SIZE
        self.counters[PC_DEPTH] += 1
        return n

    def _snapshot(self, d: dict, name: str | None, t0: int, out: np.ndarray, start: int) -> int:
        if name is None:
            name = self.bare_symbol
            if name is None:
                if len(self.symbols) != 1:
                    return ERR_FIELD  # bare snapshot, and no way to tell whose
                name = self.symbols.names[0]
        sym = self._symbol(name)
        if sym < 0:
            return 0
        bids = d["bids"]
        asks = d["asks"]
        if type(bids) is not list or type(asks) is not list:
            return ERR_FIELD
        n = len(bids) + len(asks)
        if start + max(n, 1) > len(out):
            return ERR_NO_SPACE
        last = d["lastUpdateId"]
        if "pair" in d:
            market = MARKET_COINM
        elif "E" in d or "T" in d:
            market = MARKET_USDM
        else:
            market = MARKET_SPOT
        ets = d.get("E", 0)
        if type(last) is bool or type(ets) is bool:
            return ERR_FIELD
        seq = self.seq
        fx = self._fx
        if n == 0:
            # an empty book is still a snapshot: the book must clear and learn lastUpdateId
            _pack(out, start * _REC_SIZE, seq, t0, 0, sym, KIND_SNAPSHOT,
                  FLAG_SNAPSHOT_BEGIN | FLAG_SNAPSHOT_END | FLAG_LAST_IN_MESSAGE,
                  0, 0, 0, 0, -1, last, -1, ets, market)
            self.counters[PC_SNAPSHOT] += 1
            return 1
        off = start * _REC_SIZE
        k = 0
        for side_flag, levels in ((0, bids), (FLAG_ASK, asks)):
            for lv in levels:
                if type(lv) is not list:
                    return ERR_FIELD
                ps, qs = lv
                p = fx[ps]
                q = fx[qs]
                if p < 0 or q < 0:
                    return ERR_NUMBER
                flags = side_flag
                if k == 0:
                    flags |= FLAG_SNAPSHOT_BEGIN
                k += 1
                if k == n:
                    flags |= FLAG_SNAPSHOT_END | FLAG_LAST_IN_MESSAGE
                _pack(out, off, seq, t0, 0, sym, KIND_SNAPSHOT, flags, p, q, 0, 0, -1, last, -1, ets, market)
                seq += 1
                off += _REC_SIZE
        self.counters[PC_SNAPSHOT] += 1
        return n

    def _trade(self, d: dict, e: str, t0: int, out: np.ndarray, start: int) -> int:
        sym = self._symbol(d["s"])
        if sym < 0:
            return 0
        if start >= len(out):
            return ERR_NO_SPACE
        fx = self._fx
        p = fx[d["p"]]
        q = fx[d["q"]]
        if p < 0 or q < 0:
            return ERR_NUMBER
        if e == "trade":
            first = last = d["t"]
        else:
            first = d["a"]
            last = d.get("l", first)
        m = d["m"]
        if m is True:
            flags = FLAG_LAST_IN_MESSAGE | FLAG_BUYER_MAKER
        elif m is False:
            flags = FLAG_LAST_IN_MESSAGE
        else:
            return ERR_FIELD  # not a boolean: its truthiness is no answer
        ets = d["E"]
        if type(first) is bool or type(last) is bool or type(ets) is bool:
            return ERR_FIELD
        market = MARKET_COINM if "ps" in d else MARKET_SPOT if "M" in d else MARKET_USDM
        _pack(out, start * _REC_SIZE, self.seq, t0, 0, sym, KIND_TRADE, flags,
              p, q, 0, 0, first, last, -1, ets, market)
        self.counters[PC_TRADE] += 1
        return 1

    def _ticker(self, d: dict, t0: int, out: np.ndarray, start: int) -> int:
        sym = self._symbol(d["s"])
        if sym < 0:
            return 0
        if start >= len(out):
            return ERR_NO_SPACE
        fx = self._fx
        bp = fx[d["b"]]
        bq = fx[d["B"]]
        ap = fx[d["a"]]
        aq = fx[d["A"]]
        if bp < 0 or bq < 0 or ap < 0 or aq < 0:
            return ERR_NUMBER
        if "E" in d:
            market = MARKET_COINM if "ps" in d else MARKET_USDM
            ets = d["E"]
        else:
            market = MARKET_SPOT  # spot bookTicker carries neither e nor E
            ets = 0
        last = d["u"]
        if type(last) is bool or type(ets) is bool:
            return ERR_FIELD
        _pack(out, start * _REC_SIZE, self.seq, t0, 0, sym, KIND_TICKER, FLAG_LAST_IN_MESSAGE,
              bp, bq, ap, aq, -1, last, -1, ets, market)
        self.counters[PC_TICKER] += 1
        return 1


_ERR_COUNTER = {ERR_JSON: PC_BAD_JSON, ERR_FIELD: PC_BAD_FIELD, ERR_NUMBER: PC_BAD_NUMBER,
                ERR_NO_SPACE: PC_NO_SPACE}
# fastparse's TICKER / TRADE result → the counter it advances
_TICK_COUNTER = (-1, PC_TICKER, PC_TRADE)
assert (fastparse.TICKER, fastparse.TRADE) == (1, 2), "fast path result codes changed: update _TICK_COUNTER"


def parse_message(raw: bytes, t_origin_ns: int, out: np.ndarray, start: int, symbols: SymbolTable, *,
                  parser: Parser | None = None) -> int:
    """Functional form of `Parser.parse` (records get seq 0 unless a `parser` carries state)."""
    if parser is None:
        parser = Parser(symbols)
    return parser.parse(raw, t_origin_ns, out, start)
