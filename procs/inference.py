"""inference: the newest FEATURES of every symbol (conflated board) → ONNX model → SCORE per symbol (board).

Scoring is conflated on purpose: when features arrive faster than the model scores them, the
model scores the newest vector of each symbol and skips the rest (the board's per-key update
counter says how many, counted as `features_skipped`), so the scores never fall behind the market.
All symbols that changed since the last pass are scored in one batch (one ONNX Runtime call), and
passes are at most `inference.min_interval_us` apart.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from procs.agent import Agent, AgentContext
from procs.model import Model
from shm import hdr
from shm.native import lib
from shm.records import FEATURES, FLAG_ANOMALY, KIND_SCORE, SCORE
from shm.ring import Board

C_BATCHES = 0
C_SCORED = 1
C_SKIPPED = 2
C_ALERTS = 3
#: Shortest sleep between board polls when idle (a score is at most this much later than it could be).
PARK_MIN_NS = 100_000


class InferenceAgent(Agent):
    name = "inference"
    COUNTERS = ("batches", "scored", "features_skipped", "alerts")
    SPINS = False  # conflated and rate-limited: polling the board between passes needs no spinning core

    def on_start(self, ctx: AgentContext) -> None:
        super().on_start(ctx)
        cfg = ctx.config.inference
        self.model = Model.load(cfg.model, intra_op_threads=cfg.intra_op_threads)
        n = len(ctx.symbols)
        self.features = Board.attach(ctx.run, "features", FEATURES)
        self.scores = Board.attach(ctx.run, "scores", SCORE)
        self.n = n
        self.seen = np.zeros(n, np.int64)
        self.rows = np.zeros(n, FEATURES.dtype)
        self.one = np.zeros(1, FEATURES.dtype)
        self.out = np.zeros(1, SCORE.dtype)
        self.lat_hop = np.zeros(n, np.int64)
        self.lat_e2e = np.zeros(n, np.int64)
        self.version = 0
        # a pass costs ~20 µs (ONNX Runtime call + Python); bounding the pass rate bounds how long the
        # strategy sharing this thread can be held up, and the CPU taken from it
        self.min_interval_ns = int(cfg.min_interval_us * 1000)
        self.last_pass_ns = 0
        self.n_out = min(self.model.n_outputs, SCORE.dtype["values"].shape[0])
        self._stats = np.zeros(4, np.int64)
        # warm up ONNX Runtime (first run allocates and plans) and the histogram kernel
        self.model.score(np.zeros((n, FEATURES.dtype["values"].shape[0]), np.float64))
        hdr.record_many(ctx.hist_hop, self.lat_hop[:0])

    def do_work(self) -> int:
        version = self.features.version
        if version == self.version:
            return 0
        t = lib.tp_now_ns()
        if t - self.last_pass_ns < self.min_interval_ns:
            return 0  # conflated: the newest vectors are still there at the next pass
        self.last_pass_ns = t
        self.version = version
        board = self.features
        m = 0
        idx = []
        for s in range(self.n):
            u = board.updates(s)
            if u == self.seen[s]:
                continue
            got = board.read(s, self.one)
            if got == 0:
                continue
            self._stats[C_SKIPPED] += max(0, got - self.seen[s] - 1)
            self.seen[s] = got
            self.rows[m] = self.one[0]
            idx.append(s)
            m += 1
        if m == 0:
            return 0
        rows = self.rows[:m]
        scores = self.model.score(rows["values"])
        now = lib.tp_now_ns()
        out = self.out
        thr = self.model.threshold
        for j, s in enumerate(idx):
            rec = out[0]
            rec["t_origin_ns"] = rows["t_origin_ns"][j]
            rec["t_publish_ns"] = now
            rec["symbol"] = s
            rec["kind"] = KIND_SCORE
            alert = bool(scores[j, 0] > thr)
            rec["flags"] = FLAG_ANOMALY if alert else 0
            rec["feature_seq"] = rows["seq"][j]
            rec["model_id"] = self.model.model_id
            rec["n_outputs"] = self.n_out
            rec["values"][:self.n_out] = scores[j, :self.n_out]
            self.scores.write(s, out)
            self._stats[C_ALERTS] += alert
        self.lat_hop[:m] = now - rows["t_publish_ns"]
        self.lat_e2e[:m] = now - rows["t_origin_ns"]
        hdr.record_many(self.ctx.hist_hop, self.lat_hop[:m])
        hdr.record_many(self.ctx.hist_e2e, self.lat_e2e[:m])
        self._stats[C_BATCHES] += 1
        self._stats[C_SCORED] += m
        self.ctx.counters[:4] = self._stats
        return m

    def parker(self) -> Callable[[int], bool]:
        """The features board has no futex: sleep until the next pass may run (at least 100 µs)."""

        def park(timeout_ns: int) -> bool:
            left = self.last_pass_ns + self.min_interval_ns - lib.tp_now_ns()
            time.sleep(min(max(left, PARK_MIN_NS), timeout_ns) * 1e-9)
            return False

        return park

    def on_close(self) -> None:
        self.ctx.counters[:4] = self._stats
        self.features.close()
        self.scores.close()


AGENT = InferenceAgent
