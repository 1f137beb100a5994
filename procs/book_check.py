"""Replay a capture through the real parser and book kernel, and check the book against bookTicker.

Ground truth (see ../shared/data/binance/README.md): after a diff with last update id u is applied,
the book's best bid/ask (price and quantity) must equal every bookTicker carrying the same u. A
ticker whose u matches no applied diff (most of them: diffs bundle many updates) checks nothing. The
join streams: book states are remembered by u for a bounded window, tickers that arrive before their
diff wait in a bounded pending set, so memory stays flat on long captures.

Used by scripts/verify_book.py and tests/test_real_data.py.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from procs.kernels.book import BookState
from procs.kernels.parse_json import ERR_NO_SPACE, Parser, SymbolTable
from procs.sources.replay import CaptureReader
from shm.records import BOOK, FEATURES, FLAG_BOOK_VALID, KIND_TICKER, MARKET

#: Records parsed per kernel call.
BATCH_RECORDS = 1 << 16
#: Book states remembered per symbol for tickers that arrive after their diff.
RECENT_STATES = 1 << 16
#: Tickers waiting per symbol for a diff with their u.
PENDING_TICKERS = 1 << 16
#: Mismatches described in full per symbol.
MISMATCH_EXAMPLES = 5

Top = tuple[int, int, int, int]


@dataclass
class SymbolCheck:
    """What the check saw for one symbol."""

    name: str
    diffs_applied: int = 0
    ticker_checks: int = 0
    mismatches: int = 0
    crossed: int = 0
    tickers: int = 0
    gaps: int = 0
    resyncs_needed: int = 0
    stale: int = 0
    buffered: int = 0
    snapshots: int = 0
    delete_unknown: int = 0
    examples: list[str] = field(default_factory=list)


@dataclass
class CaptureCheck:
    """Per-symbol results for one capture, plus the reader's and parser's counts."""

    path: str
    symbols: list[SymbolCheck]
    lines: int
    bad_lines: int
    parse: dict[str, int]

    @property
    def ok(self) -> bool:
        return all(s.mismatches == 0 and s.crossed == 0 for s in self.symbols)


class _Join:
    """Streaming join of book states and tickers on (symbol, u)."""

    def __init__(self) -> None:
        self.recent: dict[int, OrderedDict[int, Top]] = {}
        self.pending: dict[int, dict[int, list[Top]]] = {}
        self.last_u: dict[int, int] = {}

    def book(self, sym: int, u: int, top: Top, res: SymbolCheck) -> None:
        recent = self.recent.setdefault(sym, OrderedDict())
        if u in recent:
            return  # a later update (a trade) with the same u: same book
        recent[u] = top
        if len(recent) > RECENT_STATES:
            recent.popitem(last=False)
        self.last_u[sym] = max(self.last_u.get(sym, u), u)
        waiting = self.pending.get(sym)
        if waiting:
            for t in waiting.pop(u, ()):
                self._compare(u, t, top, res)

    def ticker(self, sym: int, u: int, top: Top, res: SymbolCheck) -> None:
        res.tickers += 1
        book = self.recent.get(sym, {}).get(u)
        if book is not None:
            self._compare(u, top, book, res)
        elif u > self.last_u.get(sym, -1):
            waiting = self.pending.setdefault(sym, {})
            waiting.setdefault(u, []).append(top)
            if len(waiting) > PENDING_TICKERS:
                floor = self.last_u.get(sym, -1)  # tickers at or below the applied u can no longer match
                for k in [k for k in waiting if k <= floor]:
                    del waiting[k]

    @staticmethod
    def _compare(u: int, ticker: Top, book: Top, res: SymbolCheck) -> None:
        res.ticker_checks += 1
        if ticker != book:
            res.mismatches += 1
            if len(res.examples) < MISMATCH_EXAMPLES:
                res.examples.append(f"u={u} ticker(bid,bq,ask,aq)={ticker} book={book}")


def check_capture(path: str | os.PathLike[str], *, bare_symbol: str | None = None, max_symbols: int = 64,
                  batch_records: int = BATCH_RECORDS) -> CaptureCheck:
    """Replay one capture through parser and book; raises FileNotFoundError if it does not exist."""
    reader = CaptureReader(path)
    symbols = SymbolTable(max_symbols=max_symbols)
    parser = Parser(symbols, bare_symbol=bare_symbol)
    st = BookState(max_symbols)
    st.warm_up()
    recs = np.zeros(batch_records, MARKET.dtype)
    out_book = np.zeros(batch_records, BOOK.dtype)
    out_feat = np.zeros(batch_records, FEATURES.dtype)
    join = _Join()
    results: dict[int, SymbolCheck] = {}

    def res(sym: int) -> SymbolCheck:
        r = results.get(sym)
        if r is None:
            r = results[sym] = SymbolCheck(symbols.name(sym))
        return r

    def flush(n: int) -> None:
        k = st.process(recs, n, out_book, out_feat)
        ob = out_book[:k]
        valid = ob[(ob["flags"] & FLAG_BOOK_VALID) != 0]
        for sym, u, bp, bq, ap, aq in zip(valid["symbol"].tolist(), valid["last_id"].tolist(),
                                          valid["bid_px"].tolist(), valid["bid_qty"].tolist(),
                                          valid["ask_px"].tolist(), valid["ask_qty"].tolist(), strict=True):
            join.book(sym, u, (bp, bq, ap, aq), res(sym))
        tk = recs[:n][recs["kind"][:n] == KIND_TICKER]
        for sym, u, bp, bq, ap, aq in zip(tk["symbol"].tolist(), tk["last_id"].tolist(), tk["price"].tolist(),
                                          tk["qty"].tolist(), tk["price2"].tolist(), tk["qty2"].tolist(),
                                          strict=True):
            join.ticker(sym, u, (bp, bq, ap, aq), res(sym))

    n = 0
    for ts, raw in reader:
        k = parser.parse(raw, ts, recs, n)
        if k == ERR_NO_SPACE:
            flush(n)
            n = 0
            k = parser.parse(raw, ts, recs, 0)
            while k == ERR_NO_SPACE:  # one message bigger than a whole batch: grow the batch
                recs = np.zeros(2 * len(recs), MARKET.dtype)
                out_book = np.zeros(len(recs), BOOK.dtype)
                out_feat = np.zeros(len(recs), FEATURES.dtype)
                k = parser.parse(raw, ts, recs, 0)
        if k > 0:
            n += k
    if n:
        flush(n)
    for sym in range(len(symbols)):
        r = res(sym)
        c = st.counts(sym)
        r.diffs_applied = c["diffs_applied"]
        r.crossed = c["crossed"]
        r.gaps = c["gaps"]
        r.resyncs_needed = c["resyncs_needed"]
        r.stale = c["stale"]
        r.buffered = c["buffered"]
        r.snapshots = c["snapshots"]
        r.delete_unknown = c["delete_unknown"]
    return CaptureCheck(str(path), [results[s] for s in sorted(results)], reader.lines, reader.bad_lines,
                        parser.counts())
