"""Run a strategy in-process over BOOK records: the engine of the strategy stage (paper exchange, risk,
accounting, callbacks) without rings or processes. For tests of strategy logic and for quick studies:

    sb = Sandbox(MyStrategy({"qty": 0.02}), ["BTCUSDT"], config)
    sb.feed(book_records)                  # numpy array of BOOK records, in order
    sb.orders, sb.reports                  # everything sent / reported so far (numpy ORDER / FILL arrays)
    sb.position(0), sb.equity(0), sb.rejects()

Scores can be set per symbol before a record (`set_score`), as the inference stage's board would.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from procs.api import Strategy
from procs.config import Config
from procs.kernels import engine as E
from procs.kernels import paper
from procs.kernels import reasons as R
from shm.records import BOOK, FILL, FLAG_ANOMALY, ORDER, SCORE, SCORE_ANOMALY, SCORE_N_VALUES, SCORE_UP


@njit
def _run(ctx, books, scores, use_scores, on_book, on_trade, on_score, on_fill, on_timer, out_orders, out_fills,
         counts, order_row, quoted, row0) -> None:
    for i in range(books.shape[0]):
        s = books[i].symbol
        if use_scores and scores[i].n_outputs > 0:  # the score of this row's own features, as the board would hold
            ctx.scores[s] = scores[i]
            ctx.scores[s].feature_seq = row0 + i + 1
            ctx.has_score[s] = 1
        E.process(ctx, books[i], on_book, on_trade, on_score, on_fill, on_timer)
        n = ctx.g[E.G_N_OUT]
        for j in range(n):
            if counts[0] < out_orders.shape[0]:
                out_orders[counts[0]] = ctx.out[j]
                order_row[counts[0]] = row0 + i
                counts[0] += 1
        nf = ctx.g[E.G_N_FILL]
        for j in range(nf):
            if counts[1] < out_fills.shape[0]:
                out_fills[counts[1]] = ctx.fills[j]
                counts[1] += 1
        ctx.g[E.G_N_OUT] = 0
        ctx.g[E.G_N_FILL] = 0
        ctx.g[E.G_DELIVERED] = 0
        if i < quoted.shape[0]:  # a live order of any sleeve on the row's symbol after it
            q = 0.0
            for tag in range(E.N_TAGS):
                a = ctx.acct[s * E.N_TAGS + tag]
                q += a[E.A_OPEN_BUY] + a[E.A_OPEN_SELL]
            quoted[i] = q > 0


class Sandbox:
    def __init__(self, strategy: Strategy, symbols: list[str], config: Config | None = None, *,
                 capacity: int = 1 << 16) -> None:
        from procs.strategy import _callbacks, risk_vector

        cfg = config or Config()
        self.strategy = strategy
        self.symbols = symbols
        pp = paper.params_from(cfg.paper.latency_ms, cfg.paper.maker_fee_bps, cfg.paper.taker_fee_bps)
        self.core = E.Core(len(symbols), risk_vector(cfg, strategy), pp)
        self.params = strategy.params_array()
        self.state = strategy.state_array(len(symbols))
        self.callbacks = _callbacks(type(strategy))
        self._orders = np.zeros(capacity, ORDER.dtype)
        self._fills = np.zeros(capacity, FILL.dtype)
        self._counts = np.zeros(2, np.int64)
        self._order_row = np.zeros(capacity, np.int64)
        self._rows = 0

    @property
    def ctx(self) -> Any:
        return self.core.ctx(self.params, self.state)

    def set_score(self, s: int, *, p_up: float = np.nan, anomaly: float = 0.0, flag: bool = False,
                  seq: int | None = None) -> None:
        """What the inference stage would have put on the board for symbol s."""
        sc = np.zeros(1, SCORE.dtype)[0]
        sc["values"][:] = np.nan
        sc["values"][SCORE_UP] = p_up
        sc["values"][SCORE_ANOMALY] = anomaly
        sc["flags"] = FLAG_ANOMALY if flag else 0
        sc["n_outputs"] = SCORE_N_VALUES
        sc["feature_seq"] = seq if seq is not None else int(self.core.scores[s]["feature_seq"]) + 1
        self.core.scores[s] = sc
        self.core.has_score[s] = 1

    def feed(self, books: np.ndarray, scores: np.ndarray | None = None) -> np.ndarray:
        """Process BOOK records in order; with `scores` (one SCORE per record; n_outputs 0 for none), each
        record's score is on the board when it is processed. Returns per record whether the strategy had a
        live order on that record's symbol after it."""
        if books.dtype != BOOK.dtype:  # e.g. np.concatenate drops the layout's padding: restore it
            books = books.astype(BOOK.dtype)
        books = np.ascontiguousarray(books)
        use = scores is not None
        sc = np.ascontiguousarray(scores.astype(SCORE.dtype)) if use else np.zeros(1, SCORE.dtype)
        if use and len(sc) != len(books):
            raise ValueError(f"scores: expected one per book record ({len(books)}), found {len(sc)}")
        quoted = np.zeros(len(books), np.bool_)
        _run(self.ctx, books, sc, use, *self.callbacks, self._orders, self._fills, self._counts, self._order_row,
             quoted, self._rows)
        self._rows += len(books)
        return quoted

    def take(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(orders, their book rows, reports) so far, copied; the buffers start empty again (long runs)."""
        out = (self.orders.copy(), self.order_rows.copy(), self.reports.copy())
        self._counts[:] = 0
        return out

    @property
    def order_rows(self) -> np.ndarray:
        """For each order sent, the index (over everything fed) of the book record that caused it."""
        return self._order_row[: self._counts[0]]

    @property
    def orders(self) -> np.ndarray:
        return self._orders[: self._counts[0]]

    @property
    def reports(self) -> np.ndarray:
        return self._fills[: self._counts[1]]

    def position(self, s: int, tag: int = 0) -> float:
        return float(self.core.acct[s * E.N_TAGS + tag, E.A_POS])

    def account(self, s: int, tag: int = 0) -> dict[str, float]:
        a = self.core.acct[s * E.N_TAGS + tag]
        names = ("position", "avg_price", "cash", "fees", "realized", "open_buy", "open_sell", "volume", "active")
        return {n: float(a[i]) for i, n in enumerate(names)}

    def equity(self, s: int, tag: int = 0) -> float:
        a = self.core.acct[s * E.N_TAGS + tag]
        b = self.core.books[s]
        mid = 0.5 * (b["bid_px"] + b["ask_px"]) / 1e8
        return float(a[E.A_CASH] + a[E.A_POS] * mid)

    def rejects(self) -> dict[str, int]:
        return {R.name(i): int(v) for i, v in enumerate(self.core.rej) if v}

    def counter(self, g_index: int) -> int:
        return int(self.core.g[g_index])
