"""book: MARKET records → L2 books per symbol → BOOK records (ring) + newest FEATURES per symbol (board).

One `do_work()` is one C call into a jitted step (procs/kernels/cstep.py): peek a batch of market
records, run the cached book kernel over the ring slots in place, stamp, record the hop and
since-origin latency of every message, publish the BOOK records and write each FEATURES record
to the conflated board, release the batch. The book ring is lossless: when the strategy falls
behind, the book waits (and counts it), and the wait shows in the latency.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numba import carray, cfunc

from procs.agent import AgentContext, StepAgent
from procs.config import FEATURES_QUEUE
from procs.kernels import cstep
from procs.kernels.book import BOOK_COUNTER_NAMES, G_BAD_SYMBOL, BookState, book_kernel
from procs.kernels.cstep import STEP_SIG, V1_I8, V2_F8, V2_I8, V3_I8, V4_I8, Pack, address_as_pointer
from shm import hdr
from shm import nbops as tp
from shm.records import BOOK, FEATURES, FLAG_LAST_IN_MESSAGE, MARKET
from shm.ring import Board, SpscRing

#: Market records taken per step: a 20-level diff is 20 records; 256 keeps a batch in L1/L2.
BATCH = 256

#: Counter slots written by the step itself (the rest are exported from BookState by Python).
C_RECORDS_IN = 0
C_MESSAGES_IN = 1
C_BOOKS_OUT = 2
C_RING_FULL = 3
C_STEPS = 4
N_STEP_COUNTERS = 5

V_MKT = cstep.view1(MARKET.dtype)
V_BOOK = cstep.view1(BOOK.dtype)
V_FEAT = cstep.view1(FEATURES.dtype)
_LAST = FLAG_LAST_IN_MESSAGE
_FEAT_DT = FEATURES.dtype


def build_step(ix: dict[str, int]) -> Callable:
    """The book stage's step as a cfunc over the descriptor laid out by `ix` (name → index)."""
    i_m, i_b, i_f, i_batch = ix["m_addr"], ix["b_addr"], ix["f_addr"], ix["batch"]
    i_mslots, i_mmask, i_ob, i_of = ix["m_slots"], ix["m_mask"], ix["ob"], ix["of"]
    i_blk, i_dirs, i_meta, i_snap, i_tops = ix["blk"], ix["dirs"], ix["meta"], ix["snap"], ix["tops"]
    i_sym, i_glob, i_cnt, i_buf = ix["sym_state"], ix["glob"], ix["counters"], ix["buf"]
    i_fst, i_ht, i_hm, i_hn = ix["fstate"], ix["hist_t"], ix["hist_mid"], ix["hist_n"]
    i_hop, i_e2e, i_ctr = ix["hop"], ix["e2e"], ix["ctr"]
    i_q = ix.get("q_addr", -1)  # inference.lockstep: the features queue (every FEATURES record, in BOOK order)
    book_size = BOOK.size
    feat_size = FEATURES.size

    @cfunc(STEP_SIG)
    def step(d):  # type: ignore[no-untyped-def]
        m_addr = d[i_m]
        b_addr = d[i_b]
        ctr = V1_I8(d, i_ctr)
        k = tp.peek(m_addr, 0, d[i_batch])
        if k == 0:
            return 0
        room = tp.claim(b_addr, k)  # at most one BOOK record per input record
        if i_q >= 0:  # and as many FEATURES: both queues take the same records, so BOOK.seq = FEATURES.seq
            room = min(room, tp.claim(d[i_q], k))
        if room < k:
            ctr[C_RING_FULL] += 1
            if room == 0:
                return 0
            k = room
        inp = V_MKT(d, i_mslots)
        mask = d[i_mmask]
        pos = tp.cons_pos(m_addr, 0)
        ob = V_BOOK(d, i_ob)
        of = V_FEAT(d, i_of)
        n_out = book_kernel(inp, pos, k, mask, ob, of, 0, -1,
                            V4_I8(d, i_blk), V3_I8(d, i_dirs), V2_I8(d, i_meta), V3_I8(d, i_snap),
                            V2_I8(d, i_tops), V2_I8(d, i_sym), V1_I8(d, i_glob), V2_I8(d, i_cnt),
                            V_MKT(d, i_buf), V2_F8(d, i_fst), V2_I8(d, i_ht), V2_F8(d, i_hm), V1_I8(d, i_hn))
        now = tp.now_ns()
        f_addr = d[i_f]
        for j in range(n_out):
            ob[j].t_publish_ns = now
            of[j].t_publish_ns = now
            dst = carray(address_as_pointer(tp.board_begin(f_addr, of[j].symbol)), (1,), _FEAT_DT)
            dst[0] = of[j]
            tp.board_commit(f_addr, of[j].symbol)
        if n_out:
            if i_q >= 0:  # before the BOOK records: a strategy holding BOOK n waits only on inference
                tp.write(d[i_q], d[i_of], n_out, feat_size)
            tp.write(b_addr, d[i_ob], n_out, book_size)
        hop = V1_I8(d, i_hop)
        e2e = V1_I8(d, i_e2e)
        msgs = 0
        for i in range(k):
            r = inp[(pos + i) & mask]
            if r.flags & _LAST:
                hdr.record(hop, now - r.t_publish_ns)
                hdr.record(e2e, now - r.t_origin_ns)
                msgs += 1
        tp.release(m_addr, 0, k)
        ctr[C_RECORDS_IN] += k
        ctr[C_MESSAGES_IN] += msgs
        ctr[C_BOOKS_OUT] += n_out
        ctr[C_STEPS] += 1
        return k

    return step


class BookAgent(StepAgent):
    BATCH = BATCH  # the step's batch: do_work takes more while they come full
    name = "book"
    COUNTERS = ("records_in", "messages_in", "books_out", "ring_full", "steps", "bad_symbol",
                *BOOK_COUNTER_NAMES)

    def on_start(self, ctx: AgentContext) -> None:
        super().on_start(ctx)
        self.market = SpscRing.attach(ctx.run, "market", MARKET)
        self.cons = self.market.consumer(0, parks=True)
        self.books = SpscRing.attach(ctx.run, "book", BOOK)
        self.prod = self.books.producer()  # registers this process as the writer; the step writes in C
        self.board = Board.attach(ctx.run, "features", FEATURES)
        self.queue = SpscRing.attach(ctx.run, FEATURES_QUEUE, FEATURES) if ctx.config.lockstep_on() else None
        if self.queue is not None:
            self.qprod = self.queue.producer()
        self.state = BookState(len(ctx.symbols))
        self.state.warm_up()
        st = self.state
        ctr = ctx.counters.view(np.int64)  # the shared stats record; the step adds to its first slots
        pack = Pack()
        ix = {
            "m_addr": pack.scalar(self.market.addr), "b_addr": pack.scalar(self.books.addr),
            "f_addr": pack.scalar(self.board.addr), "batch": pack.scalar(BATCH),
            "m_slots": pack.add(self.market.slots), "m_mask": pack.scalar(self.market.mask),
            "ob": pack.add(np.zeros(BATCH, BOOK.dtype)), "of": pack.add(np.zeros(BATCH, FEATURES.dtype)),
            "blk": pack.add(st.blk), "dirs": pack.add(st.dirs), "meta": pack.add(st.meta),
            "snap": pack.add(st.snap), "tops": pack.add(st.tops), "sym_state": pack.add(st.sym_state),
            "glob": pack.add(st.glob), "counters": pack.add(st.counters), "buf": pack.add(st.buf),
            "fstate": pack.add(st.fstate), "hist_t": pack.add(st.hist_t), "hist_mid": pack.add(st.hist_mid),
            "hist_n": pack.add(st.hist_n), "hop": pack.add(ctx.hist_hop), "e2e": pack.add(ctx.hist_e2e),
            "ctr": pack.add(ctr),
        }
        if self.queue is not None:
            ix["q_addr"] = pack.scalar(self.queue.addr)
        self.step = cstep.bind(build_step(ix), pack)  # compiles here, before the readiness barrier

    def export(self) -> None:
        c = self.ctx.counters
        c[N_STEP_COUNTERS] = self.state.glob[G_BAD_SYMBOL]
        c[N_STEP_COUNTERS + 1:N_STEP_COUNTERS + 1 + len(BOOK_COUNTER_NAMES)] = self.state.counters.sum(axis=0)

    def describe(self) -> dict:
        return {"symbols": {name: {"valid": self.state.valid(i), **self.state.counts(i)}
                            for i, name in enumerate(self.ctx.symbols)}}

    def on_close(self) -> None:
        self.export()
        for ring in (self.market, self.books, self.board, self.queue):
            if ring is not None:
                ring.close()


AGENT = BookAgent
