"""strategy: BOOK records + the newest SCORE per symbol → ORDER records.

One `do_work()` is one C call into a jitted step: peek a batch of book updates, read each symbol's
newest score from the scores board (seqlock, never torn), run the cached decision kernel
(procs/kernels/strategy.py), publish the orders, record the hop latency and tick-to-decision
(t_origin_ns → orders published), release the batch.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numba import cfunc

from procs.agent import AgentContext, StepAgent
from procs.kernels import cstep
from procs.kernels import strategy as sk
from procs.kernels.cstep import STEP_SIG, V1_F8, V1_I8, V2_I8, Pack
from shm import hdr
from shm import nbops as tp
from shm.records import BOOK, ORDER, QTY_SCALE, SCORE
from shm.ring import Board, SpscRing

#: Book updates taken per step.
BATCH = 128

C_BOOKS_IN = 0
C_ORDERS_OUT = 1
C_ORDERS_DROPPED = 2
C_STEPS = 3
N_STEP_COUNTERS = 4

V_BOOK = cstep.view1(BOOK.dtype)
V_ORDER = cstep.view1(ORDER.dtype)
V_SCORE = cstep.view1(SCORE.dtype)


def build_step(ix: dict[str, int]) -> Callable:
    i_b, i_o, i_s, i_batch = ix["b_addr"], ix["o_addr"], ix["s_addr"], ix["batch"]
    i_slots, i_mask, i_scores, i_has = ix["b_slots"], ix["b_mask"], ix["scores"], ix["has"]
    i_st, i_par, i_g, i_out = ix["state"], ix["params"], ix["glob"], ix["out"]
    i_hop, i_e2e, i_ctr = ix["hop"], ix["e2e"], ix["ctr"]
    order_size = ORDER.size
    score_size = SCORE.size

    @cfunc(STEP_SIG)
    def step(d):  # type: ignore[no-untyped-def]
        b_addr = d[i_b]
        k = tp.peek(b_addr, 0, d[i_batch])
        if k == 0:
            return 0
        slots = V_BOOK(d, i_slots)
        mask = d[i_mask]
        pos = tp.cons_pos(b_addr, 0)
        scores = V_SCORE(d, i_scores)
        has = V1_I8(d, i_has)
        st = V2_I8(d, i_st)
        params = V1_F8(d, i_par)
        g = V1_I8(d, i_g)
        out = V_ORDER(d, i_out)
        n_sym = st.shape[0]
        s_addr = d[i_s]
        n = 0
        for i in range(k):
            b = slots[(pos + i) & mask]
            s = b.symbol
            if s >= n_sym:
                continue
            has[s] = tp.board_read(s_addr, s, d[i_scores] + s * score_size)
            n = sk.decide(b, scores[s], has[s] > 0, st, params, g, out, n)
        now = tp.now_ns()
        ctr = V1_I8(d, i_ctr)
        if n:
            for j in range(n):
                out[j].t_publish_ns = now
            written = tp.write(d[i_o], d[i_out], n, order_size)
            ctr[C_ORDERS_OUT] += written
            ctr[C_ORDERS_DROPPED] += n - written
        hop = V1_I8(d, i_hop)
        e2e = V1_I8(d, i_e2e)
        for i in range(k):
            b = slots[(pos + i) & mask]
            hdr.record(hop, now - b.t_publish_ns)
            hdr.record(e2e, now - b.t_origin_ns)  # tick to decision: acted on, orders out
        tp.release(b_addr, 0, k)
        ctr[C_BOOKS_IN] += k
        ctr[C_STEPS] += 1
        return k

    return step


class StrategyAgent(StepAgent):
    BATCH = BATCH  # the step's batch: do_work takes more while they come full
    name = "strategy"
    COUNTERS = ("books_in", "orders_out", "orders_dropped", "steps", "decisions", "invalid_book", "pauses",
                "orders", "no_score")

    def on_start(self, ctx: AgentContext) -> None:
        super().on_start(ctx)
        cfg = ctx.config.strategy
        n_sym = len(ctx.symbols)
        self.books = SpscRing.attach(ctx.run, "book", BOOK)
        self.cons = self.books.consumer(0, parks=True)
        self.orders = SpscRing.attach(ctx.run, "orders", ORDER)
        self.prod = self.orders.producer()  # registers this process as the writer; the step writes in C
        self.scores = Board.attach(ctx.run, "scores", SCORE)
        self.state, self.glob = sk.alloc(n_sym)
        params = sk.params_from(cfg.spread_bps, cfg.skew_bps, round(cfg.order_qty * QTY_SCALE),
                                round(cfg.max_position * QTY_SCALE), cfg.requote_bps,
                                cfg.pause_hold_ms)
        pack = Pack()
        ix = {
            "b_addr": pack.scalar(self.books.addr), "o_addr": pack.scalar(self.orders.addr),
            "s_addr": pack.scalar(self.scores.addr), "batch": pack.scalar(BATCH),
            "b_slots": pack.add(self.books.slots), "b_mask": pack.scalar(self.books.mask),
            "scores": pack.add(np.zeros(n_sym, SCORE.dtype)), "has": pack.add(np.zeros(n_sym, np.int64)),
            "state": pack.add(self.state), "params": pack.add(params), "glob": pack.add(self.glob),
            "out": pack.add(np.zeros(2 * BATCH, ORDER.dtype)),
            "hop": pack.add(ctx.hist_hop), "e2e": pack.add(ctx.hist_e2e),
            "ctr": pack.add(ctx.counters.view(np.int64)),
        }
        self.step = cstep.bind(build_step(ix), pack)

    def export(self) -> None:
        c = self.ctx.counters
        g = self.glob
        c[N_STEP_COUNTERS:N_STEP_COUNTERS + 5] = (g[sk.G_DECISIONS], g[sk.G_INVALID], g[sk.G_PAUSES],
                                                  g[sk.G_ORDERS], g[sk.G_NO_SCORE])

    def on_close(self) -> None:
        self.export()
        for ring in (self.books, self.orders, self.scores):
            ring.close()


AGENT = StrategyAgent
