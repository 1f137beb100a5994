"""The stage agents in one process over real rings: the book stage's C-called step gives exactly what
the book kernel gives when called directly, and the strategy sees every book update."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from procs.agent import AgentContext
from procs.book import BookAgent
from procs.config import Config
from procs.feed import Feed
from procs.kernels.book import BookState
from procs.kernels.parse_json import Parser, SymbolTable
from procs.sources.replay import read_capture, scan_symbols
from procs.strategy import StrategyAgent
from shm import hdr
from shm.metrics import RunState
from shm.records import BOOK, FEATURES, FILL, MARKET, ORDER, SCORE
from shm.ring import Board, SpscRing

SPOT = "spot_4sym_20211012.lines.gz"


def test_book_and_strategy_steps_match_the_direct_kernel(run_id: str, data_dir: Path, tmp_path: Path) -> None:
    path = str(data_dir / SPOT)
    syms = scan_symbols(path)
    # the stages on boards, as paced: lockstep (speed 0's default) would need the queues too
    cfg = Config.from_dict({"source": {"kind": "replay", "path": path, "speed": 0.0}, "inference": {"lockstep": "off"}})
    state = RunState.create(run_id, 3)
    rings = [SpscRing.create(run_id, "market", MARKET, 1 << 12), SpscRing.create(run_id, "book", BOOK, 1 << 10),
             SpscRing.create(run_id, "orders", ORDER, 1 << 12), Board.create(run_id, "features", FEATURES, len(syms)),
             Board.create(run_id, "scores", SCORE, len(syms)), SpscRing.create(run_id, "fills", FILL, 1 << 14)]
    # a tap on the book ring would need a second consumer; instead the strategy's counters and
    # the features board are compared with the direct run
    agents = []
    try:
        for i, cls in enumerate((Feed, BookAgent, StrategyAgent)):
            a = cls()
            a.on_start(AgentContext(run=run_id, run_dir=str(tmp_path), config=cfg, symbols=syms,
                                    counters=state.stats.slots[i]["counters"], hist_hop=state.hist(i, 0),
                                    hist_e2e=state.hist(i, 1), log=logging.getLogger("test")))
            agents.append(a)
        orders = rings[2].consumer(0)
        fills = rings[5].consumer(0)
        n_orders = n_fills = 0
        for _ in range(1_000_000):
            work = sum(a.do_work() for a in agents)
            n_orders += len(orders.read(4096))
            n_fills += len(fills.read(4096))
            if work == 0 and agents[0].finished():
                break
        for a in agents:
            a.on_close()
            agents_closed = True
        c = state.stats.slots["counters"]
        feed_c = dict(zip(Feed.COUNTERS, c[0].tolist(), strict=False))
        book_c = dict(zip(BookAgent.COUNTERS, c[1].tolist(), strict=False))
        strat_c = dict(zip(StrategyAgent.COUNTERS, c[2].tolist(), strict=False))

        # the same capture through the parser and the kernel, called directly
        parser = Parser(SymbolTable(syms, auto_add=False))
        recs = np.zeros(1 << 16, MARKET.dtype)
        n = 0
        for ts, raw in read_capture(path):
            n += max(parser.parse(raw, ts, recs, n), 0)
        direct = BookState(len(syms))
        out_b = np.zeros(n, BOOK.dtype)
        out_f = np.zeros(n, FEATURES.dtype)
        n_out = direct.process(recs, n, out_b, out_f)

        assert feed_c["records_out"] == n == book_c["records_in"]
        assert book_c["books_out"] == n_out == strat_c["books_in"]
        assert book_c["diffs_applied"] == direct.counts()["diffs_applied"] > 0
        assert book_c["gaps"] == 0 and book_c["crossed"] == 0
        assert strat_c["orders_out"] == n_orders == strat_c["new"] + strat_c["cancels"] + strat_c["replaces"] > 0
        assert strat_c["fills_out"] == n_fills > 0 and strat_c["orders_dropped"] == strat_c["fills_dropped"] == 0
        # the board holds each symbol's newest feature vector: the direct run's last one per symbol
        got = np.zeros(1, FEATURES.dtype)
        for s in range(len(syms)):
            mine = np.nonzero(out_f["symbol"][:n_out] == s)[0]
            if len(mine) == 0:
                continue
            assert rings[3].read(s, got) == len(mine)
            np.testing.assert_array_equal(got["values"][0], out_f["values"][mine[-1]])
        # one hop and one since-origin latency per message, in each stage's histograms
        assert hdr.Histogram(state.hist(1, 0).copy()).count == book_c["messages_in"] == feed_c["messages_forwarded"]
        assert hdr.Histogram(state.hist(2, 1).copy()).count == strat_c["books_in"]
        assert agents_closed
    finally:
        for r in rings:
            r.close()
        state.close()


def test_one_blas_thread_defaults_and_keeps_the_users_choice() -> None:
    from procs import BLAS_THREAD_VARS, one_blas_thread

    env = {"OMP_NUM_THREADS": "4"}
    one_blas_thread(env)
    assert env["OMP_NUM_THREADS"] == "4"  # the user's setting stands
    assert all(env[v] for v in BLAS_THREAD_VARS)
    assert env["OPENBLAS_NUM_THREADS"] == "1"
