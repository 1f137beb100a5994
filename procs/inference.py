"""inference: the newest FEATURES of every symbol (conflated board) → two ONNX models → one SCORE per symbol (board).

Both models run in this one process, each session on one ONNX Runtime intra-op thread: the anomaly model
(`inference.model`, required) and the direction model (`inference.direction_model`, optional). A pass
reads the newest feature vector of every symbol that changed, scores the batch with both models (one
ONNX Runtime call: the two graphs merged into one session by procs.model.ModelPair when the `onnx`
package is installed, else one call per model) and writes one SCORE record per symbol holding both,
laid out as `shm.records.SCORE_*` says:

    values[SCORE_ANOMALY]        anomaly level in [0, 1] (P(anomaly), or min(error / threshold, 1)) of the
                                 alert value: column 0, or with a sidecar `history` its EW time mean
    values[SCORE_ANOMALY_RAW]    the anomaly model's column 0; FLAG_ANOMALY when the alert value is above
                                 the threshold
    values[SCORE_UP]             P(up) from the direction model's column 0 (NaN without one)
    values[SCORE_DIRECTION_1]    the direction model's column 1 (NaN without one)
    values[SCORE_ANOMALY_EXTRA:] the anomaly model's columns 1, 2, ... (NaN where it has fewer)

Scoring is conflated on purpose: when features arrive faster than the models score them, the newest
vector of each symbol is scored and the rest skipped (the board's per-key update counter says how
many, counted as `features_skipped`), so the scores never fall behind the market. Passes are at most
`inference.min_interval_us` apart.

With `inference.lockstep` the stage scores every FEATURES record instead, in order, from the book's
features queue, and writes one SCORE per record to the scores queue (and the newest per symbol to the
board as usual); the strategy takes BOOK record n together with the SCORE of features n. Nothing is
skipped and no timing decides which score a decision sees, so a replay decides the same in every run,
at the cost of the strategy waiting for the models on every update (a backtest's trade-off, not live's).

Never in the way of book → strategy (unless lockstep): the stage reads the features board and writes the scores board,
both seqlocked (no ring, so no backpressure on the book), and a SCORE write holds a key's seqlock for
one 128-byte copy only (the record is complete before the lock is taken). The default placement gives
inference a core of its own, and it sleeps between passes (SPINS = False).
"""

from __future__ import annotations

import csv
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numba import carray, cfunc, njit

from procs import scorelog
from procs.agent import Agent, AgentContext
from procs.config import DEFAULT_DIRECTION_MODEL, FEATURES_QUEUE, SCORES_QUEUE, InferenceConfig
from procs.kernels import cstep
from procs.kernels.cstep import STEP_SIG, V1_F8, V1_I8, V2_F8, Pack, address_as_pointer
from procs.model import Model, ModelPair, ew_step, resolve_model_path
from shm import hdr
from shm import nbops as tp
from shm.native import ffi, lib
from shm.records import (
    FEATURES,
    FLAG_ANOMALY,
    FLAG_FEATURES_WARM,
    KIND_SCORE,
    SCORE,
    SCORE_ANOMALY,
    SCORE_ANOMALY_EXTRA,
    SCORE_ANOMALY_RAW,
    SCORE_DIRECTION_1,
    SCORE_N_VALUES,
    SCORE_UP,
)
from shm.ring import Board, SpscRing, address

C_BATCHES = 0
C_SCORED = 1
C_SKIPPED = 2
C_ALERTS = 3
C_SCORED_ANOMALY = 4
C_SCORED_DIRECTION = 5
C_COLD = 6
N_COUNTERS = 7
#: Shortest sleep between board polls when idle (a score is at most this much later than it could be).
PARK_MIN_NS = 100_000
#: lockstep: FEATURES records scored per ONNX Runtime call at most (a replay's backlog is scored in batches)
QUEUE_BATCH = 256


def load_models(cfg: InferenceConfig, warn: Callable[[str], Any] | None = None) -> tuple[Model, Model | None]:
    """The anomaly model and the direction model (None when `direction_model` is "", or is the default
    path and that file does not exist yet: then `warn` is told). Errors name the config field."""
    anomaly = Model.load(resolve_model_path(cfg.model), intra_op_threads=cfg.intra_op_threads, kind="anomaly")
    if not cfg.direction_model:
        return anomaly, None
    path = resolve_model_path(cfg.direction_model)
    if cfg.direction_model == DEFAULT_DIRECTION_MODEL and not (path.is_file() and path.with_suffix(".json").is_file()):
        if warn:
            warn(f"inference.direction_model: the default {DEFAULT_DIRECTION_MODEL} (or its sidecar) does not exist; "
                 "scoring with the anomaly model only (SCORE_UP is NaN)")
        return anomaly, None
    try:
        direction = Model.load(path, intra_op_threads=cfg.intra_op_threads, kind="direction")
    except FileNotFoundError as e:
        raise FileNotFoundError(f"inference.direction_model: {e}") from e
    if not direction.kind_declared and warn:
        warn(f"inference.direction_model: {path.with_suffix('.json')} declares no \"kind\"; taken as a direction "
             "model (column 0 = P(up))")
    return anomaly, direction


def pair_id(anomaly: Model, direction: Model | None) -> int:
    """SCORE.model_id: crc32 of the anomaly graph's bytes continued over the direction graph's (so with no
    direction model it is the anomaly model's own model_id)."""
    if direction is None:
        return anomaly.model_id
    return zlib.crc32(direction.graph_bytes, anomaly.model_id) & 0xFFFFFFFF


V_FEAT = cstep.view1(FEATURES.dtype)
V_SCORE = cstep.view1(SCORE.dtype)


@njit(cache=True, nogil=True)
def fill_scores(out: np.ndarray, rows: np.ndarray, m: int, a: np.ndarray, d: np.ndarray, threshold: float,
                inv_threshold: float, model_id: int, now: int, hist_hop: np.ndarray, hist_e2e: np.ndarray,
                ctr: np.ndarray, skipped: int, tau_ms: float, ew: np.ndarray) -> int:
    """SCORE records out[:m] for feature rows[:m] from the anomaly outputs a (m, ka) and the direction
    outputs d (m, kd; kd = 0 without a direction model). inv_threshold > 0 marks an error score (level =
    score / threshold), 0 a probability. tau_ms > 0: the alert and SCORE_ANOMALY use the symbol's EW time
    mean of column 0 (procs.model.ew_history), kept in ew[symbol] = (mean, previous value, last ms, seen).
    Records the latencies and counts the pass into ctr (the stage's counters); returns the alerts raised."""
    alerts = 0
    cold = 0
    ka = a.shape[1]
    kd = d.shape[1]
    for j in range(m):
        r = out[j]
        f = rows[j]
        r.t_origin_ns = f.t_origin_ns
        r.t_publish_ns = now
        r.symbol = f.symbol
        r.kind = KIND_SCORE
        r.feature_seq = f.seq
        r.exch_ts_ms = f.exch_ts_ms
        r.model_id = model_id
        r.n_outputs = SCORE_N_VALUES
        raw = np.float64(a[j, 0])
        # features not yet warm (< 10 s of the symbol's history): the model was never trained on such rows
        # and would flag most of them, so no alert and level 0; the raw score is still published
        warm = (f.flags & FLAG_FEATURES_WARM) != 0
        cold += not warm
        hist = raw
        if tau_ms > 0.0 and warm:
            # as procs.model.ew_history_into, on exchange time: the same at any replay speed
            e = ew[f.symbol]
            t_ms = np.float64(f.exch_ts_ms)
            e[0] = ew_step(e[0], e[1], t_ms - e[2], tau_ms) if e[3] > 0.0 else raw
            e[1] = raw
            e[2] = t_ms
            e[3] = 1.0
            hist = e[0]
        alert = warm and hist > threshold
        r.flags = FLAG_ANOMALY if alert else 0
        alerts += alert
        level = hist * inv_threshold if inv_threshold > 0.0 else hist
        r.values[SCORE_ANOMALY] = min(max(level, 0.0), 1.0) if warm else 0.0
        r.values[SCORE_ANOMALY_RAW] = raw
        r.values[SCORE_UP] = d[j, 0] if kd > 0 else np.nan
        r.values[SCORE_DIRECTION_1] = d[j, 1] if kd > 1 else np.nan
        for c in range(SCORE_N_VALUES - SCORE_ANOMALY_EXTRA):
            r.values[SCORE_ANOMALY_EXTRA + c] = a[j, 1 + c] if 1 + c < ka else np.nan
        hdr.record(hist_hop, now - f.t_publish_ns)
        hdr.record(hist_e2e, now - f.t_origin_ns)
    ctr[C_BATCHES] += 1
    ctr[C_SCORED] += m
    ctr[C_SKIPPED] += skipped
    ctr[C_ALERTS] += alerts
    ctr[C_COLD] += cold
    ctr[C_SCORED_ANOMALY] += m
    if kd > 0:
        ctr[C_SCORED_DIRECTION] += m
    return alerts


def build_pass(ix: dict[str, int], n_sym: int) -> tuple[Callable, Callable]:
    """The conflated pass's two halves as cfuncs over the descriptor laid out by `ix`: `gather` reads every
    symbol whose features changed into rows[:m] (returns m), `publish` fills their SCORE records from the
    model outputs and writes them to the scores board. numba's dispatcher charged ~1.5 µs for fill_scores'
    15 arguments and the board loops ~1.5 µs more in Python; one cffi call each costs ~0.2 µs."""
    i_f, i_s, i_seen, i_rows, i_syms, i_out = ix["f_addr"], ix["s_addr"], ix["seen"], ix["rows"], ix["syms"], ix["out"]
    i_m, i_a, i_d, i_ka, i_kd, i_skip = ix["m"], ix["a"], ix["d"], ix["ka"], ix["kd"], ix["skipped"]
    i_fp, i_mid, i_hop, i_e2e, i_ctr, i_ew = ix["fparams"], ix["model_id"], ix["hop"], ix["e2e"], ix["ctr"], ix["ew"]
    i_t0, i_pass = ix["t0"], ix["pass"]
    feat_size = FEATURES.size
    score_dt = SCORE.dtype

    @cfunc(STEP_SIG)
    def gather(d):  # type: ignore[no-untyped-def]
        d[i_t0] = tp.now_ns()  # the pass starts: inference.pass runs from here to the last SCORE published
        f_addr = d[i_f]
        seen = V1_I8(d, i_seen)
        syms = V1_I8(d, i_syms)
        rows_addr = d[i_rows]
        m = 0
        skipped = 0
        for s in range(n_sym):
            if tp.board_updates(f_addr, s) == seen[s]:
                continue
            got = tp.board_read(f_addr, s, rows_addr + m * feat_size)
            if got == 0:
                continue
            if got - seen[s] > 1:
                skipped += got - seen[s] - 1
            seen[s] = got
            syms[m] = s
            m += 1
        d[i_skip] = skipped
        d[i_m] = m
        return m

    @cfunc(STEP_SIG)
    def publish(d):  # type: ignore[no-untyped-def]
        m = d[i_m]
        a = carray(address_as_pointer(d[i_a]), (m, d[i_ka]), np.float32)
        dd = carray(address_as_pointer(d[i_d]), (m, d[i_kd]), np.float32)
        fp = V1_F8(d, i_fp)
        out = V_SCORE(d, i_out)
        syms = V1_I8(d, i_syms)
        fill_scores(out, V_FEAT(d, i_rows), m, a, dd, fp[0], fp[1], d[i_mid], tp.now_ns(), V1_I8(d, i_hop),
                    V1_I8(d, i_e2e), V1_I8(d, i_ctr), d[i_skip], fp[2], V2_F8(d, i_ew))
        s_addr = d[i_s]
        for j in range(m):
            # the record is complete before begin: the key's seqlock is held for one copy
            dst = carray(address_as_pointer(tp.board_begin(s_addr, syms[j])), (1,), score_dt)
            dst[0] = out[j]
            tp.board_commit(s_addr, syms[j])
        hdr.record(V1_I8(d, i_pass), tp.now_ns() - d[i_t0])
        return m

    return gather, publish


@njit(cache=True)
def newest_per_symbol(out: np.ndarray, k: int, last: np.ndarray) -> np.ndarray:
    """Indices j < k of each symbol's last record in out[:k] (symbols outside `last` are left out)."""
    last[:] = -1
    for j in range(k):
        s = out[j].symbol
        if s < last.shape[0]:
            last[s] = j
    return last[last >= 0]


class InferenceAgent(Agent):
    name = "inference"
    COUNTERS = ("batches", "scored", "features_skipped", "alerts", "scored_anomaly", "scored_direction", "cold")
    SPINS = False  # conflated and rate-limited: polling the board between passes needs no spinning core
    #: one scoring pass, board read (or queue peek) to the last SCORE written: what the models cost in the run
    AUX_HIST = "pass"

    def on_start(self, ctx: AgentContext) -> None:
        super().on_start(ctx)
        cfg = ctx.config.inference
        self.anomaly, self.direction = load_models(cfg, warn=ctx.log.warning)
        ctx.log.info("inference: anomaly %r; direction %r", self.anomaly, self.direction)
        self.pair: ModelPair | None = None
        if self.direction is not None:
            # one ONNX Runtime call for both models per pass when the graphs merge (else two)
            self.pair, why = ModelPair.build(self.anomaly, self.direction, cfg.intra_op_threads)
            if self.pair is None:
                ctx.log.info("inference: %s", why)
        n = len(ctx.symbols)
        self.features = Board.attach(ctx.run, "features", FEATURES)
        self.scores = Board.attach(ctx.run, "scores", SCORE)
        self.n = n
        self.seen = np.zeros(max(n, 1), np.int64)  # per symbol: the board's update count at the last read
        self.lockstep = ctx.config.lockstep_on()
        cap = max(n, QUEUE_BATCH) if self.lockstep else n  # lockstep scores batches of queued records
        self.rows = np.zeros(cap, FEATURES.dtype)
        self.values = self.rows["values"]
        self.out = np.zeros(cap, SCORE.dtype)
        self.syms = np.zeros(cap, np.int64)  # the symbol of each row of a pass
        # one (m, 0) array per batch size, made once: the pass rebinds its addresses only when an output changes
        empty = np.zeros((cap, 0), np.float32)
        self.no_direction = [empty[:m] for m in range(cap + 1)]
        self.model_id = pair_id(self.anomaly, self.direction)
        self.threshold = self.anomaly.threshold
        self.inv_threshold = 1.0 / self.threshold if self.anomaly.score_kind == "error" else 0.0
        self.tau_ms = self.anomaly.history_tau_ms
        # per symbol id: EW mean, previous column 0, its time (ms), seen (procs.model.ew_history's state)
        self.ew = np.zeros((max(n, 1), 4), np.float64)
        self.ctr = ctx.counters.view(np.int64)  # the kernel counts straight into shared memory
        self.version = 0
        # bounding the pass rate bounds the CPU taken from whatever shares this core
        self.min_interval_ns = int(cfg.min_interval_us * 1000)
        self.last_pass_ns = 0
        if self.lockstep:
            self.q_in = SpscRing.attach(ctx.run, FEATURES_QUEUE, FEATURES)
            self.q_cons = self.q_in.consumer(0, parks=True)
            self.q_out = SpscRing.attach(ctx.run, SCORES_QUEUE, SCORE)
            self.q_prod = self.q_out.producer()
            self.last_of = np.full(max(n, 1), -1, np.int64)
            # scores.csv: every SCORE, written here (the launcher's board sample would miss most at speed 0)
            self.names = np.array([*ctx.symbols, "?"], dtype=object)
            self._log_file = (Path(ctx.run_dir) / "scores.csv").open("w", newline="")
            self._log = csv.writer(self._log_file)
            self._log.writerow(scorelog.COLUMNS)
            self._log_dirty = False
        self._build_pass(ctx)
        # warm up ONNX Runtime (first run allocates and plans) and the compiled kernels, on scratch copies
        for k in sorted({1, n}):
            self._score(k)
        a, d = self._score(1)
        scratch = np.zeros_like(self.ctr)
        fill_scores(self.out.copy(), self.rows, 1, a, d, 1.0, 0.0, 0, 0, ctx.hist_hop.copy(), ctx.hist_e2e.copy(),
                    scratch, 0, self.tau_ms, self.ew.copy())

    def _build_pass(self, ctx: AgentContext) -> None:
        """The conflated pass's compiled halves (build_pass) over one descriptor."""
        pack = Pack()
        ka = self.anomaly.n_outputs
        kd = self.direction.n_outputs if self.direction is not None else 0
        ix = {
            "f_addr": pack.scalar(self.features.addr), "s_addr": pack.scalar(self.scores.addr),
            "seen": pack.add(self.seen), "rows": pack.add(self.rows), "syms": pack.add(self.syms),
            "out": pack.add(self.out), "m": pack.scalar(0), "a": pack.scalar(0), "d": pack.scalar(0),
            "ka": pack.scalar(ka), "kd": pack.scalar(kd), "skipped": pack.scalar(0),
            "fparams": pack.add(np.array([self.threshold, self.inv_threshold, self.tau_ms], np.float64)),
            "model_id": pack.scalar(self.model_id), "hop": pack.add(ctx.hist_hop), "e2e": pack.add(ctx.hist_e2e),
            "ctr": pack.add(self.ctr), "ew": pack.add(self.ew), "t0": pack.scalar(0), "pass": pack.add(ctx.hist_aux),
        }
        gather, publish = build_pass(ix, self.n)
        self.gather, self.publish = cstep.bind(gather, pack), cstep.bind(publish, pack)
        self._desc = pack.desc
        self._i_a, self._i_d = ix["a"], ix["d"]
        self._bound: tuple[Any, Any] = (None, None)  # the output arrays whose addresses the descriptor holds

    def _score(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        """Both models on rows[:m]: (anomaly outputs, direction outputs or an (m, 0) array), no copies."""
        x = self.values[:m]
        if self.pair is not None:
            return self.pair.score(x)
        a = self.anomaly.score(x, copy=False)
        d = self.direction.score(x, copy=False) if self.direction is not None else self.no_direction[m]
        return a, d

    def do_work(self) -> int:
        if self.lockstep:
            return self._do_queue()
        version = self.features.version
        if version == self.version:
            return 0
        t = lib.tp_now_ns()
        if t - self.last_pass_ns < self.min_interval_ns:
            return 0  # conflated: the newest vectors are still there at the next pass
        self.last_pass_ns = t
        self.version = version
        m = self.gather()  # rows[:m]: the symbols whose features changed
        if m == 0:
            return 0
        a, d = self._score(m)
        if a is not self._bound[0] or d is not self._bound[1]:  # the models' buffers are per batch size
            self._desc[self._i_a] = address(a)
            self._desc[self._i_d] = address(d)
            self._bound = (a, d)
        # SCORE fill and board write: the record is complete before its key's seqlock is taken and the
        # lock is held for one copy, so a reader (the strategy) never waits on the models
        return self.publish()

    def _do_queue(self) -> int:
        """lockstep: score the next FEATURES records of the queue, in order, one SCORE each into the scores
        queue and scores.csv; the newest of each symbol also goes to the board (Prometheus and any other
        reader of the board see the same as in a conflated run)."""
        k = self.q_cons.peek(QUEUE_BATCH)
        if k == 0:
            if self._log_dirty:  # idle: scores.csv onto disk, so that a run's end finds it whole
                self._log_file.flush()
                self._log_dirty = False
            return 0
        k = min(k, self.q_prod.claim(k))
        if k == 0:
            return 0  # the strategy is behind: the queue keeps the features until it catches up
        t0 = lib.tp_now_ns()
        self.q_cons.copy_into(self.rows, k)  # released once their SCOREs are in the scores queue
        a, d = self._score(k)
        fill_scores(self.out, self.rows, k, a, d, self.threshold, self.inv_threshold, self.model_id, lib.tp_now_ns(),
                    self.ctx.hist_hop, self.ctx.hist_e2e, self.ctr, 0, self.tau_ms, self.ew)
        self.q_prod.write(self.out[:k])
        self.q_cons.release(k)
        hdr.record(self.ctx.hist_aux, lib.tp_now_ns() - t0)  # the strategy has the scores from here
        out = self.out[:k]
        self._log.writerows(scorelog.rows(out, self.names[np.minimum(out["symbol"], len(self.names) - 1)]))
        self._log_dirty = True
        last = newest_per_symbol(self.out, k, self.last_of)
        s_addr, size, base = self.scores.addr, SCORE.dtype.itemsize, address(self.out)
        for j in last:
            s = int(self.out[j]["symbol"])
            ffi.memmove(ffi.cast("char *", lib.tp_board_begin(s_addr, s)), ffi.cast("char *", base + j * size), size)
            lib.tp_board_commit(s_addr, s)
        return k

    def parker(self) -> Callable[[int], bool]:
        """The features board has no futex: sleep until the next pass may run (at least 100 µs).
        lockstep: a futex wait on the features queue."""
        if self.lockstep:
            return self.q_cons.park

        def park(timeout_ns: int) -> bool:
            left = self.last_pass_ns + self.min_interval_ns - lib.tp_now_ns()
            time.sleep(min(max(left, PARK_MIN_NS), timeout_ns) * 1e-9)
            return False

        return park

    def describe(self) -> dict[str, Any]:
        def one(m: Model | None) -> dict[str, Any] | None:
            if m is None:
                return None
            return {"path": str(m.path), "kind": m.kind, "version": m.version, "model_id": m.model_id,
                    "outputs": m.outputs, "threshold": m.threshold, "score_kind": m.score_kind,
                    "history_tau_ms": m.history_tau_ms}

        return {"anomaly": one(self.anomaly), "direction": one(self.direction), "score_model_id": self.model_id,
                "one_session": self.pair is not None}

    def on_close(self) -> None:
        self.features.close()
        self.scores.close()
        if self.lockstep:
            self.q_in.close()
            self.q_out.close()
            self._log_file.close()


AGENT = InferenceAgent
