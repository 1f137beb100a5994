"""strategy: BOOK records + the newest SCORE per symbol → the user's strategy → risk → paper exchange →
ORDER and FILL records.

One `do_work()` is one C call into a compiled step (procs/kernels/cstep.py): peek a batch of book
updates; for each, read the symbol's newest score from the scores board (seqlock, never torn) and run
the engine (procs/kernels/engine.py): paper exchange, reports to `on_fill`, kill switch and max-loss
halt, then the strategy's callbacks, whose orders pass the risk checks into the paper exchange. Then
publish the staged orders (`orders` ring) and execution reports (`fills` ring), record the hop, the
tick-to-decision and the decision latency (the step taking the record → its orders published), release
the batch. The strategy class comes from `strategy.name` (a dotted path); see procs/api.py.

Files it writes into the run folder: equity.csv (position, cash, fees, P&L per symbol and sleeve every
`strategy.equity_interval_ms` of exchange time), risk_events.csv (the kill switch on and off per
symbol, the max-loss halt), strategy.json (name, params, sleeves, refusals by
reason), and whatever the strategy's `close()` writes (e.g. parents.csv).
"""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
from numba import cfunc

from procs.agent import AgentContext, StepAgent
from procs.api import Strategy, load_strategy
from procs.config import SCORES_QUEUE, Config
from procs.kernels import cstep, paper
from procs.kernels import engine as E
from procs.kernels import reasons as R
from procs.kernels.cstep import STEP_SIG, V1_I8, V2_F8, V2_I8, Pack
from shm import hdr
from shm import nbops as tp
from shm.records import BOOK, FILL, ORDER, PRICE_SCALE, SCORE
from shm.ring import Board, SpscRing

#: Book updates taken per step.
BATCH = 128

C_BOOKS_IN = 0
C_ORDERS_OUT = 1
C_ORDERS_DROPPED = 2
C_FILLS_OUT = 3
C_FILLS_DROPPED = 4
C_STEPS = 5
C_SCORE_MISMATCH = 6  #: lockstep: a queued SCORE that was not the one of its BOOK record (never, unless a bug)
N_STEP_COUNTERS = 7

#: engine globals exported as counters, in COUNTERS order after the step's own
_G_EXPORT = (("decisions", E.G_DECIDED), ("new", E.G_NEW), ("cancels", E.G_CANCELS), ("replaces", E.G_REPLACES),
             ("rejects", E.G_REJECTS), ("fills", E.G_FILLS), ("kills", E.G_KILLS), ("halted", E.G_HALTED),
             ("flattens", E.G_FLATTENS), ("out_full", E.G_OUT_FULL))
#: refusals exported one counter per common reason; the rest are summed in rejects_other
_REJ_EXPORT = (("rejects_max_position", R.MAX_POSITION), ("rejects_max_order_size", R.MAX_ORDER_SIZE),
               ("rejects_max_notional", R.MAX_NOTIONAL), ("rejects_rate_limit", R.RATE_LIMIT),
               ("rejects_max_loss", R.MAX_LOSS_HALTED), ("rejects_stale_book", R.STALE_BOOK),
               ("rejects_kill_switch", R.KILL_SWITCH))

V_BOOK = cstep.view1(BOOK.dtype)
V_ORDER = cstep.view1(ORDER.dtype)
V_FILL = cstep.view1(FILL.dtype)
V_SCORE = cstep.view1(SCORE.dtype)
V_OO = cstep.view1(E.OO_DTYPE)
V1_F8 = cstep.V1_F8


def _callbacks(cls: type[Strategy]) -> tuple:
    """The class's callbacks, the engine's no-ops for the ones it does not define."""
    def get(name: str, default: Callable) -> Callable:
        f = getattr(cls, name, None)
        if f is None:
            return default
        if hasattr(f, "enable_caching") and type(f._cache).__name__ == "NullCache":
            # a user's plain @njit: cache it on disk like ours, so the next run loads it instead of compiling
            with contextlib.suppress(Exception):  # e.g. defined in __main__ or a notebook: no file to cache by
                f.enable_caching()
        return f

    return (get("on_book", E.noop_book), get("on_trade", E.noop_trade), get("on_score", E.noop_score),
            get("on_fill", E.noop_fill), get("on_timer", E.noop_timer))


def build_step(ix: dict[str, int], strategy: Strategy, n_sym: int) -> Callable:
    """The step cfunc for one strategy class: the callbacks are compiled into it."""
    on_book, on_trade, on_score, on_fill, on_timer = _callbacks(type(strategy))
    v_params = cstep.view1(strategy.params_array().dtype)
    v_state = cstep.view1(strategy.state_array(1).dtype)
    v_xorders = cstep.view1(paper.alloc(1, 1, 1)[0].dtype)
    v_xmsgs = cstep.view1(paper.alloc(1, 1, 1)[1].dtype)
    Ctx = E.Ctx
    i_b, i_o, i_f, i_s, i_batch = ix["b_addr"], ix["o_addr"], ix["f_addr"], ix["s_addr"], ix["batch"]
    i_slots, i_mask = ix["b_slots"], ix["b_mask"]
    i_p, i_st, i_books, i_scores, i_has = ix["params"], ix["state"], ix["books"], ix["scores"], ix["has"]
    i_acct, i_oo, i_g, i_rej, i_rp, i_rs = ix["acct"], ix["oo"], ix["g"], ix["rej"], ix["rp"], ix["rs"]
    i_rate, i_out, i_fills, i_eq = ix["rate"], ix["out"], ix["fills"], ix["eq"]
    i_xo, i_xm, i_xg, i_xp, i_ev = ix["x_orders"], ix["x_msgs"], ix["x_glob"], ix["x_params"], ix["ev"]
    i_hop, i_e2e, i_dec, i_ctr = ix["hop"], ix["e2e"], ix["dec"], ix["ctr"]
    # inference.lockstep: BOOK record n is taken only with the SCORE of FEATURES n (the scores queue)
    i_q = ix.get("q_addr", -1)
    i_qslots, i_qmask = ix.get("q_slots", -1), ix.get("q_mask", -1)
    order_size = ORDER.size
    fill_size = FILL.size
    score_size = SCORE.size
    g_n_out, g_n_fill, g_delivered, g_decided = E.G_N_OUT, E.G_N_FILL, E.G_DELIVERED, E.G_DECIDED

    @cfunc(STEP_SIG)
    def step(d):  # type: ignore[no-untyped-def]
        b_addr = d[i_b]
        k = tp.peek(b_addr, 0, d[i_batch])
        if k == 0:
            return 0
        if i_q >= 0:
            k = tp.peek(d[i_q], 0, k)  # the books whose scores are in; the rest wait for inference
            if k == 0:
                return 0
        slots = V_BOOK(d, i_slots)
        mask = d[i_mask]
        pos = tp.cons_pos(b_addr, 0)
        g = V1_I8(d, i_g)
        has = V1_I8(d, i_has)
        ctx = Ctx(v_params(d, i_p)[0], v_state(d, i_st), V_BOOK(d, i_books), V_SCORE(d, i_scores), has,
                  V2_F8(d, i_acct), V_OO(d, i_oo), g, V1_I8(d, i_rej), V1_F8(d, i_rp), V2_I8(d, i_rs),
                  V1_I8(d, i_rate), V_ORDER(d, i_out), V_FILL(d, i_fills), V2_F8(d, i_eq), v_xorders(d, i_xo),
                  v_xmsgs(d, i_xm), V1_I8(d, i_xg), V1_F8(d, i_xp), V2_F8(d, i_ev))
        s_addr = d[i_s]
        ctr = V1_I8(d, i_ctr)
        dec = V1_I8(d, i_dec)
        out = ctx.out
        decided = 0
        qpos = tp.cons_pos(d[i_q], 0) if i_q >= 0 else 0
        for i in range(k):
            b = slots[(pos + i) & mask]
            s = b.symbol
            if s >= n_sym:
                continue
            t_in = tp.now_ns()
            if i_q >= 0:
                sc = V_SCORE(d, i_qslots)[(qpos + i) & d[i_qmask]]
                if sc.feature_seq != b.seq or sc.symbol != s:
                    ctr[C_SCORE_MISMATCH] += 1  # a pairing bug: the score is still not used for another book
                else:
                    ctx.scores[s] = sc
                    has[s] = sc.seq
            else:
                has[s] = tp.board_read(s_addr, s, d[i_scores] + s * score_size)
            E.process(ctx, b, on_book, on_trade, on_score, on_fill, on_timer)
            n = g[g_n_out]
            if n:  # out at once: an order never waits for the rest of the batch
                t_out = tp.now_ns()
                for j in range(n):
                    out[j].t_publish_ns = t_out
                written = tp.write(d[i_o], d[i_out], n, order_size)
                ctr[C_ORDERS_OUT] += written
                ctr[C_ORDERS_DROPPED] += n - written
                g[g_n_out] = 0
                hdr.record(dec, t_out - t_in)  # this record taken → its orders published
                decided += 1
        now = tp.now_ns()
        nf = g[g_n_fill]
        if nf:
            fills = ctx.fills
            for j in range(nf):
                fills[j].t_publish_ns = now
            written = tp.write(d[i_f], d[i_fills], nf, fill_size)
            ctr[C_FILLS_OUT] += written
            ctr[C_FILLS_DROPPED] += nf - written
        g[g_n_fill] = 0
        g[g_delivered] = 0
        g[g_decided] += decided
        hop = V1_I8(d, i_hop)
        e2e = V1_I8(d, i_e2e)
        for i in range(k):
            b = slots[(pos + i) & mask]
            hdr.record(hop, now - b.t_publish_ns)
            hdr.record(e2e, now - b.t_origin_ns)  # tick to decision: acted on, orders out
        tp.release(b_addr, 0, k)
        if i_q >= 0:
            tp.release(d[i_q], 0, k)
        ctr[C_BOOKS_IN] += k
        ctr[C_STEPS] += 1
        return k

    return step


def make_strategy(config: Config, symbols: list[str]) -> Strategy:
    """The configured strategy class with its parameters (StrategyError names a bad one)."""
    return load_strategy(config.strategy.name)(dict(config.strategy.params), symbols)


def risk_vector(config: Config, strategy: Strategy) -> np.ndarray:
    """[risk], the paper exchange's latency and the strategy's timer as the engine's risk vector."""
    rk = config.risk
    return E.risk_params(max_position=rk.max_position, max_order_qty=rk.max_order_qty,
                         max_notional=rk.max_notional, max_orders_per_s=rk.max_orders_per_s,
                         max_loss=rk.max_loss, stale_ms=rk.stale_ms, kill_switch=rk.kill_switch,
                         kill_hold_ms=rk.kill_hold_ms, kill_flatten=rk.kill_flatten,
                         latency_ms=config.paper.latency_ms, timer_ms=type(strategy).TIMER_MS,
                         equity_interval_ms=config.strategy.equity_interval_ms)


class StrategyAgent(StepAgent):
    BATCH = BATCH  # the step's batch: do_work takes more while they come full
    name = "strategy"
    AUX_HIST = "decision"
    COUNTERS = ("books_in", "orders_out", "orders_dropped", "fills_out", "fills_dropped", "steps", "score_mismatch",
                *(n for n, _ in _G_EXPORT), *(n for n, _ in _REJ_EXPORT), "rejects_other",
                # P&L over every sleeve and symbol in millionths of the quote currency (counters are int64):
                # Prometheus shows them as tickpipe_strategy_equity / _realized / _fees
                "pnl_equity_e6", "pnl_realized_e6", "pnl_fees_e6")

    def on_start(self, ctx: AgentContext) -> None:
        super().on_start(ctx)
        cfg = ctx.config
        n_sym = len(ctx.symbols)
        self.strategy = make_strategy(cfg, ctx.symbols)
        self.books = SpscRing.attach(ctx.run, "book", BOOK)
        self.cons = self.books.consumer(0, parks=True)
        self.orders = SpscRing.attach(ctx.run, "orders", ORDER)
        self.prod = self.orders.producer()  # registers this process as the writer; the step writes in C
        self.fills = SpscRing.attach(ctx.run, "fills", FILL)
        self.fprod = self.fills.producer()
        self.scores = Board.attach(ctx.run, "scores", SCORE)
        self.queue = SpscRing.attach(ctx.run, SCORES_QUEUE, SCORE) if cfg.lockstep_on() else None
        if self.queue is not None:
            self.qcons = self.queue.consumer(0, parks=True)
        pp = paper.params_from(cfg.paper.latency_ms, cfg.paper.maker_fee_bps, cfg.paper.taker_fee_bps)
        self.core = E.Core(n_sym, risk_vector(cfg, self.strategy), pp)
        self.params = self.strategy.params_array()
        self.state = self.strategy.state_array(n_sym)
        self._eq_path = Path(ctx.run_dir) / "equity.csv"
        self._eq_file = self._eq_path.open("w", newline="")
        self._eq = csv.writer(self._eq_file)
        self._eq.writerow(E.EQ_COLUMNS)
        self._ev_file = (Path(ctx.run_dir) / "risk_events.csv").open("w", newline="")
        self._ev = csv.writer(self._ev_file)
        self._ev.writerow(("exch_ts_ms", "symbol", "event"))
        c = self.core
        pack = Pack()
        ix = {
            "b_addr": pack.scalar(self.books.addr), "o_addr": pack.scalar(self.orders.addr),
            "f_addr": pack.scalar(self.fills.addr), "s_addr": pack.scalar(self.scores.addr),
            "batch": pack.scalar(BATCH), "b_slots": pack.add(self.books.slots), "b_mask": pack.scalar(self.books.mask),
            "params": pack.add(self.params), "state": pack.add(self.state), "books": pack.add(c.books),
            "scores": pack.add(c.scores), "has": pack.add(c.has_score), "acct": pack.add(c.acct),
            "oo": pack.add(c.oo), "g": pack.add(c.g), "rej": pack.add(c.rej), "rp": pack.add(c.rp),
            "rs": pack.add(c.rs), "rate": pack.add(c.rate), "out": pack.add(c.out), "fills": pack.add(c.fills),
            "eq": pack.add(c.eq), "x_orders": pack.add(c.x_orders), "x_msgs": pack.add(c.x_msgs),
            "x_glob": pack.add(c.x_glob), "x_params": pack.add(c.x_params), "ev": pack.add(c.ev),
            "hop": pack.add(ctx.hist_hop), "e2e": pack.add(ctx.hist_e2e), "dec": pack.add(ctx.hist_aux),
            "ctr": pack.add(ctx.counters.view(np.int64)),
        }
        if self.queue is not None:
            ix.update(q_addr=pack.scalar(self.queue.addr), q_slots=pack.add(self.queue.slots),
                      q_mask=pack.scalar(self.queue.mask))
        try:
            step = build_step(ix, self.strategy, n_sym)
        except Exception as exc:  # numba's message is long and deep: say whose code it is first
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise RuntimeError(f"strategy {cfg.strategy.name}: its callbacks did not compile "
                               f"({type(exc).__name__}: {first[:300]}); ctx.p.<name> must be in PARAMS, "
                               f"ctx.st[s].<name> in STATE or STATE_ARRAYS, functions from procs.api; "
                               f"the full error is in stages.log") from exc
        self.step = cstep.bind(step, pack)

    def parker(self) -> Callable[[int], bool]:
        """A futex wait on the book ring; lockstep: on the scores queue while a book waits for its score."""
        if self.queue is None:
            return self.cons.park
        books, qcons = self.cons, self.qcons

        def park(timeout_ns: int) -> bool:
            return (qcons if books.lag else books).park(timeout_ns)

        return park

    def _flush_files(self) -> None:
        """equity.csv and risk_events.csv rows staged by the engine (background work, between steps)."""
        g = self.core.g
        syms = self.ctx.symbols
        k = int(g[E.G_N_EQ])
        if k:
            for row in self.core.eq[:k]:
                s = int(row[1])
                self._eq.writerow([int(row[0]), syms[s] if s < len(syms) else s, int(row[2]),
                                   *(f"{x:.10g}" for x in row[3:])])
            g[E.G_N_EQ] = 0
            self._eq_file.flush()
        k = int(g[E.G_N_EV])
        if k:
            for ts, sym, code in self.core.ev[:k]:
                self._ev.writerow((int(ts), syms[int(sym)] if 0 <= sym < len(syms) else "*",
                                   E.EV_NAMES.get(int(code), int(code))))
            g[E.G_N_EV] = 0
            self._ev_file.flush()

    def export(self) -> None:
        c = self.ctx.counters
        g = self.core.g
        rej = self.core.rej
        base = N_STEP_COUNTERS
        for j, (_, gi) in enumerate(_G_EXPORT):
            c[base + j] = g[gi]
        base += len(_G_EXPORT)
        named = 0
        for j, (_, code) in enumerate(_REJ_EXPORT):
            c[base + j] = rej[code]
            named += int(rej[code])
        c[base + len(_REJ_EXPORT)] = int(rej.sum()) - named
        base += len(_REJ_EXPORT) + 1
        acct = self.core.acct
        books = self.core.books
        mids = 0.5 * (books["bid_px"] + books["ask_px"]) / PRICE_SCALE
        rows = acct[:, E.A_ACTIVE] != 0
        sym = np.arange(acct.shape[0]) // E.N_TAGS
        eq = float(np.sum(acct[rows, E.A_CASH] + acct[rows, E.A_POS] * mids[sym[rows]]))
        for j, v in enumerate((eq, float(acct[rows, E.A_REAL].sum()), float(acct[rows, E.A_FEES].sum()))):
            c[base + j] = np.int64(round(v * 1e6)).view(np.uint64)  # the slots are u8: keep the sign's bits
        self._flush_files()

    def results(self) -> dict:
        rej = self.core.rej
        s = self.strategy
        return {"name": self.ctx.config.strategy.name, "class": type(s).__name__, "params": s.params,
                "tags": {str(k): v for k, v in type(s).TAGS.items()},
                "rejects": {R.name(i): int(v) for i, v in enumerate(rej) if v},
                "risk": dict(vars(self.ctx.config.risk)), "paper": dict(vars(self.ctx.config.paper)),
                "paper_counters": paper.counters(self.core.x_glob)}

    def on_close(self) -> None:
        c = self.core
        E.write_equity(c.ctx(self.params, self.state), int(c.g[E.G_NOW_MS]))  # the final marks
        self.export()
        self._eq_file.close()
        self._ev_file.close()
        run_dir = self.ctx.run_dir
        try:
            self.strategy.close(self.state, run_dir)
        finally:
            Path(run_dir, "strategy.json").write_bytes(orjson.dumps(self.results(), option=orjson.OPT_INDENT_2))
            for ring in (self.books, self.orders, self.fills, self.scores, self.queue):
                if ring is not None:
                    ring.close()


AGENT = StrategyAgent
