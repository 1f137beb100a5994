"""The launcher behind run.py: segments, spawn + pin, readiness barrier, supervision, report, cleanup.

    cleanup_dead() → reaper → segments → spawn one host per placement group → barrier (every
    agent READY: rings attached, JIT compiled) → go → supervise (status line, interval
    histograms, orders sink, child deaths, duration, end of source) → stop in order → report →
    remove every segment.

Stop order: the sources stop first (`drain`), the other stages empty the rings, then every stage
is told to stop (`stop`); a stage still alive after the grace period gets SIGTERM, then SIGKILL.
Exit status: 0 when the run ends normally (duration, message limit or end of the replay),
1 when a stage fails or dies, 128+N when the launcher is stopped by signal N.
"""

from __future__ import annotations

import contextlib
import csv
import multiprocessing as mp
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from procs import one_blas_thread, prom, report, results, scorelog
from procs import placement as pl
from procs.config import FEATURES_QUEUE, SCORES_QUEUE, Config
from procs.host import HostSpec, host_main
from procs.kernels import engine as E
from procs.kernels import reasons
from shm import hdr, metrics, reaper
from shm.hdr import Histogram
from shm.metrics import RunState
from shm.native import lib
from shm.records import (
    BOOK,
    FEATURES,
    FILL,
    FLAG_POST_ONLY,
    MARKET,
    ORDER,
    PRICE_SCALE,
    QTY_SCALE,
    SCORE,
)
from shm.ring import Board, SpscRing
from shm.segment import cleanup_dead, new_run_id, remove_run

#: How often the supervisor wakes: drains the orders ring, checks children.
TICK_S = 0.005
#: Longest wait for the rings to drain after the sources stop.
DRAIN_TIMEOUT_S = 2.0
#: Agent modules, imported here only for their class attributes (COUNTERS, SPINS).
_AGENT_MODULES = {"feed": "procs.feed", "book": "procs.book", "strategy": "procs.strategy",
                  "inference": "procs.inference"}


class RunError(RuntimeError):
    """A run that could not start (bad placement, missing model, a stage not ready)."""


def agent_class(agent: str) -> type:
    import importlib

    return importlib.import_module(_AGENT_MODULES[agent]).AGENT


def counter_names(agent: str) -> tuple[str, ...]:
    return agent_class(agent).COUNTERS


@dataclass
class Outcome:
    exit_code: int
    reason: str
    run_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)


class _Signals:
    """SIGINT/SIGTERM to the launcher: remember the first one, stop in order."""

    def __init__(self) -> None:
        self.signum = 0
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._on)
        return self

    def _on(self, signum: int, frame: object) -> None:
        if not self.signum:
            self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


class OrdersSink:
    """Drains the strategy's `orders` ring (every order message sent to the paper exchange) into orders.csv
    and its `fills` ring (every execution report, risk refusals included) into fills.csv, counting both;
    with the `scores` board, samples it at every drain into scores.csv (each symbol's newest SCORE when it
    changed: the anomaly-flag timeline at the supervisor's TICK_S (5 ms) pace; `skipped` counts the SCOREs between
    two samples). The formats are in README ("Reading the report"); procs/results.py reads them."""

    ORDER_COLUMNS = ("exch_ts_ms", "symbol", "tag", "client_order_id", "action", "type", "side", "price", "qty",
                     "mid_at_decision", "post_only")
    FILL_COLUMNS = ("exch_ts_ms", "symbol", "tag", "client_order_id", "side", "status", "price", "qty",
                    "leaves_qty", "fee", "liquidity", "reason", "order_ts_ms", "mid_at_decision")
    SCORE_COLUMNS = scorelog.COLUMNS

    def __init__(self, ring: SpscRing, fills: SpscRing | None, run_dir: Path, symbols: list[str],
                 scores: Board | None = None) -> None:
        self.cons = ring.consumer(0)
        self.fcons = fills.consumer(0) if fills is not None else None
        self.symbols = np.array([*symbols, "?"], dtype=object)
        self.ofile = (run_dir / "orders.csv").open("w", newline="")
        self.ffile = (run_dir / "fills.csv").open("w", newline="")
        self.files = [self.ofile, self.ffile]
        self.ow = csv.writer(self.ofile)
        self.fw = csv.writer(self.ffile)
        self.ow.writerow(self.ORDER_COLUMNS)
        self.fw.writerow(self.FILL_COLUMNS)
        self.count = 0
        self.by_action = np.zeros(3, np.int64)
        self.fills_count = 0
        self.by_status = np.zeros(len(E.STATUS_NAMES), np.int64)
        self.hop = hdr.new_counts()
        hdr.record_many(self.hop, np.zeros(0, np.int64))  # load the kernel now: ~200 ms at the first order
        self.scores = scores
        self.scores_count = 0
        if scores is not None:
            self.sfile = (run_dir / "scores.csv").open("w", newline="")
            self.files.append(self.sfile)
            self.sw = csv.writer(self.sfile)
            self.sw.writerow(self.SCORE_COLUMNS)
            self.score_seen = [0] * len(symbols)
            self.score_rec = np.zeros(1, SCORE.dtype)

    def _sym(self, ids: np.ndarray) -> np.ndarray:
        return self.symbols[np.minimum(ids, len(self.symbols) - 1)]

    def drain(self) -> int:
        total = 0
        while True:
            recs = self.cons.read(4096)
            if len(recs) == 0:
                break
            now = lib.tp_now_ns()
            hdr.record_many(self.hop, now - recs["t_publish_ns"])
            self.by_action += np.bincount(recs["action"], minlength=3)[:3]
            sym = self._sym(recs["symbol"])
            px = recs["price"] / PRICE_SCALE
            qty = recs["qty"] / QTY_SCALE
            mid = recs["mid_px"] / PRICE_SCALE
            for i, r in enumerate(recs):  # the log is background work: plain Python is fine here
                self.ow.writerow((int(r["exch_ts_ms"]), sym[i], int(r["tag"]), int(r["client_order_id"]),
                                  _ACTIONS[min(int(r["action"]), 3)], "market" if r["order_type"] else "limit",
                                  "sell" if r["side"] else "buy", f"{px[i]:.10g}", f"{qty[i]:.10g}", f"{mid[i]:.10g}",
                                  1 if int(r["flags"]) & FLAG_POST_ONLY else 0))
            self.count += len(recs)
            total += len(recs)
        while self.fcons is not None:
            recs = self.fcons.read(4096)
            if len(recs) == 0:
                break
            st = np.minimum(recs["status"], len(E.STATUS_NAMES) - 1)
            self.by_status += np.bincount(st, minlength=len(E.STATUS_NAMES))[:len(E.STATUS_NAMES)]
            sym = self._sym(recs["symbol"])
            px = recs["price"] / PRICE_SCALE
            qty = recs["qty"] / QTY_SCALE
            leaves = recs["leaves_qty"] / QTY_SCALE
            fee = recs["fee"] / PRICE_SCALE
            mid = recs["mid_px"] / PRICE_SCALE
            for i, r in enumerate(recs):
                filled = r["qty"] > 0
                self.fw.writerow((int(r["exch_ts_ms"]), sym[i], int(r["tag"]), int(r["client_order_id"]),
                                  "sell" if r["side"] else "buy", E.STATUS_NAMES[st[i]], f"{px[i]:.10g}",
                                  f"{qty[i]:.10g}", f"{leaves[i]:.10g}", f"{fee[i]:.10g}",
                                  ("taker" if r["liquidity"] else "maker") if filled else "",
                                  reasons.name(int(r["reason"])), int(r["order_ts_ms"]), f"{mid[i]:.10g}"))
            self.fills_count += len(recs)
            total += len(recs)
        if self.scores is not None:
            self._sample_scores()
        return total

    def _sample_scores(self) -> None:
        b, rec, seen = self.scores, self.score_rec, self.score_seen
        for s, name in enumerate(self.symbols[:-1]):
            if b.updates(s) == seen[s]:
                continue
            got = b.read(s, rec)
            if got == 0 or got == seen[s]:
                continue
            self.sw.writerow(scorelog.row(rec[0], name, max(0, got - seen[s] - 1)))
            seen[s] = got
            self.scores_count += 1

    def flush(self) -> None:
        """Everything drained so far onto disk: the results module reads these files before close()."""
        for f in self.files:
            f.flush()

    def close(self) -> None:
        for f in self.files:
            f.close()


_ACTIONS = ("new", "cancel", "replace", "?")


class Launcher:
    _live: prom.LiveStatus | None = None

    def __init__(self, config: Config, *, symbols: list[str], quiet: bool = False,
                 out: Any = sys.stdout, profile: bool = False) -> None:
        self.config = config
        self.profile = profile  # run.py --profile: py-spy per stage and perf over the run (profiling/flame.py)
        self.profiler: Any = None
        self.doctor: dict[str, Any] | None = None
        self.symbols = symbols
        self.quiet = quiet
        self.out = out
        self.run = new_run_id()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.run_dir = Path(config.run.out_dir) / f"{stamp}-{self.run}"
        cpus = os.sched_getaffinity(0)
        text = config.run.placement
        self.groups = pl.default_placement(cpus) if text == "auto" else pl.parse(text, cpus=cpus)
        self.agents = [a for g in self.groups for a in g.agents]
        self.ids = {a: i for i, a in enumerate(self.agents)}

    def say(self, msg: str) -> None:
        if not self.quiet:
            print(msg, file=self.out, flush=True)

    # -- the run ---------------------------------------------------------------------------------
    def execute(self) -> Outcome:
        removed = cleanup_dead()
        if removed:
            self.say(f"tickpipe: removed {len(removed)} segment(s) left by dead runs")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        reap = reaper.start(self.run)
        procs: list[tuple[pl.Group, mp.process.BaseProcess]] = []
        state: RunState | None = None
        rings: list[Any] = []
        sink: OrdersSink | None = None
        exporter: prom.Exporter | None = None
        try:
            cfg = self.config
            n_sym = len(self.symbols)
            state = RunState.create(self.run, len(self.agents))
            market = SpscRing.create(self.run, "market", MARKET, cfg.rings.market)
            book = SpscRing.create(self.run, "book", BOOK, cfg.rings.book)
            orders = SpscRing.create(self.run, "orders", ORDER, cfg.rings.orders)
            fills = SpscRing.create(self.run, "fills", FILL, cfg.rings.fills)
            features = Board.create(self.run, "features", FEATURES, n_sym)
            scores = Board.create(self.run, "scores", SCORE, n_sym)
            rings = [market, book, orders, features, scores, fills]
            for r in (market, book):
                r.enable_park()
            if cfg.lockstep_on():  # every FEATURES and every SCORE queued, none conflated away
                for name, layout in ((FEATURES_QUEUE, FEATURES), (SCORES_QUEUE, SCORE)):
                    q = SpscRing.create(self.run, name, layout, cfg.rings.book)
                    q.enable_park()
                    rings.append(q)
            # lockstep: the inference stage writes scores.csv itself, every SCORE (a sample would miss some)
            sink = OrdersSink(orders, fills, self.run_dir, self.symbols, None if cfg.lockstep_on() else scores)
            self._view = prom.view_of(state, self.agents, self.groups, self.symbols, rings, sink,
                                      {"run": self.run, "source": self._source_text(),
                                       "placement": pl.format_placement(self.groups)}, lib.tp_now_ns)
            if cfg.metrics.port:  # the exporter reads shared memory in its own (niced) scrape threads
                try:
                    exporter = prom.Exporter(self._view, cfg.metrics.host, cfg.metrics.port)
                except OSError as exc:
                    raise RunError(f"metrics: cannot serve on {cfg.metrics.host}:{cfg.metrics.port}: {exc}") from None
                self.say(f"tickpipe: Prometheus metrics on {exporter.url}")
            ctx = mp.get_context("spawn")  # a fresh interpreter per stage: no inherited locks or threads
            one_blas_thread(os.environ)  # the stages inherit it before their numpy loads
            self._run_doctor()
            target: Any = host_main
            if self.profile:
                from profiling.flame import Profiler
                from profiling.perfmap import profiled_host_main

                self.profiler, target = Profiler(self.run_dir), profiled_host_main  # stages write perf maps
            # only processes that may spin count: background agents (inference) sleep between passes
            n_proc = sum(any(agent_class(a).SPINS for a in g.agents) for g in self.groups)
            self.say(f"tickpipe: run {self.run} → {self.run_dir}")
            self.say(f"tickpipe: source={self._source_text()} lockstep={'on' if cfg.lockstep_on() else 'off'} "
                     f"symbols={','.join(self.symbols)} "
                     f"placement=\"{pl.format_placement(self.groups)}\" wait={cfg.run.wait}")
            for g in self.groups:
                spec = HostSpec(run=self.run, run_dir=str(self.run_dir), agents=list(g.agents),
                                agent_ids=[self.ids[a] for a in g.agents], cpu=g.cpu, config=cfg.to_dict(),
                                symbols=self.symbols, wait=cfg.run.wait, n_spinning=n_proc,
                                parent_pid=os.getpid(), log_path=str(self.run_dir / "stages.log"),
                                realtime=cfg.run.realtime)
                p = ctx.Process(target=target, args=(spec,), name="tickpipe-" + "+".join(g.agents), daemon=False)
                p.start()
                procs.append((g, p))
            self._keep_off_spinning_cpus()
            with _Signals() as sigs:
                return self._supervise(state, procs, rings, sink, sigs)
        finally:
            if exporter is not None:
                exporter.stop()  # before the segments it reads are unmapped
            self._stop_children(state, procs)
            if self.profiler is not None:
                self.profiler.stop()
            if sink is not None:
                sink.close()
            for r in rings:
                with contextlib.suppress(Exception):
                    r.close()
            if state is not None:
                state.close()
            remove_run(self.run)
            with contextlib.suppress(Exception):
                reap.stdin.close()  # type: ignore[union-attr]
                reap.wait(timeout=5)

    def _keep_off_spinning_cpus(self) -> None:
        """Move every launcher thread (supervisor, sinks, Prometheus scrapes) off the CPUs of stages that may
        spin, once they are spawned: a scrape or a drain on a spinner's core preempts the order path."""
        allowed = os.sched_getaffinity(0)
        spinning = {g.cpu for g in self.groups if g.cpu is not None and any(agent_class(a).SPINS for a in g.agents)}
        keep = allowed - spinning
        if not keep or keep == allowed:
            return
        try:
            for tid in os.listdir("/proc/self/task"):  # sched_setaffinity(0) would move only this thread
                os.sched_setaffinity(int(tid), keep)
        except OSError as exc:  # a thread that just ended, or a restricted container: keep going as we are
            self.say(f"tickpipe: launcher stays on CPUs {sorted(allowed)}: {exc}")
            return
        self.say(f"tickpipe: launcher on CPU(s) {','.join(map(str, sorted(keep)))}, off the spinning stages' cores")

    def _source_text(self) -> str:
        s = self.config.source
        if s.kind == "replay":
            return f"replay:{s.path} speed={s.speed:g}"
        if s.kind == "live":
            from procs.sources.live import options_from_config

            o = options_from_config(self.config.live)
            return f"live:{o.market} {o.ws_base} (snapshots {o.rest_base})"
        return f"sim(seed={self.config.sim.seed}) speed={s.speed:g}"

    def _supervise(self, state: RunState, procs: list, rings: list, sink: OrdersSink, sigs: _Signals) -> Outcome:
        cfg = self.config
        stats = state.stats.slots
        ctl = state.ctl
        # -- readiness barrier ------------------------------------------------------------------
        t0 = time.monotonic()
        self.say(f"tickpipe: starting {len(procs)} stage process(es), waiting until every stage is ready "
                 "(rings attached, kernels compiled)...")
        while True:
            states = [int(stats[i]["state"]) for i in range(len(self.agents))]
            if all(s == metrics.STATE_READY for s in states):
                break
            failed = self._dead(procs, stats)
            if failed or metrics.STATE_FAILED in states:
                return self._finish(state, rings, sink, 1, f"stage {failed or 'start-up'} failed before the "
                                    f"barrier (see {self.run_dir / 'stages.log'})", t_go=None)
            if sigs.signum:
                return self._finish(state, rings, sink, 128 + sigs.signum,
                                    f"stopped by {signal.Signals(sigs.signum).name} before the start", t_go=None)
            if time.monotonic() - t0 > cfg.run.ready_timeout_s:
                not_ready = [a for a, s in zip(self.agents, states, strict=True) if s != metrics.STATE_READY]
                return self._finish(state, rings, sink, 1, f"stages not ready after {cfg.run.ready_timeout_s:g} s: "
                                    f"{not_ready}", t_go=None)
            time.sleep(0.01)
        self.say(f"tickpipe: all stages ready in {time.monotonic() - t0:.1f} s; go")
        if self.profiler is not None:
            self.profiler.start({"+".join(g.agents): p.pid for g, p in procs}, os.getpid())
        t_go = lib.tp_now_ns()
        ctl["t_go_ns"] = t_go
        ctl["go"] = 1
        logger = report.IntervalLogger(self.run_dir / "hlog", self._hist_names(), start_time_s=time.time())
        self._logger = logger
        start = time.monotonic()
        next_status = start + cfg.run.status_interval_s
        next_snap = start + cfg.run.snapshot_interval_s
        self._prev = self._counter_snapshot(stats)
        self._prev_t = start
        feed_id = self.ids["feed"]
        code, reason = 0, ""
        while True:
            time.sleep(TICK_S)
            sink.drain()
            now = time.monotonic()
            failed = self._dead(procs, stats)
            if failed:
                code, reason = 1, f"stage {failed} died (see {self.run_dir / 'stages.log'})"
                break
            if sigs.signum:
                code, reason = 128 + sigs.signum, f"stopped by {signal.Signals(sigs.signum).name}"
                break
            if cfg.run.duration_s and now - start >= cfg.run.duration_s:
                reason = f"duration {cfg.run.duration_s:g} s reached"
                break
            if stats[feed_id]["finished"]:
                reason = ("message limit reached" if cfg.run.max_messages and
                          stats[feed_id]["counters"][0] >= cfg.run.max_messages else "end of the source")
                break
            if now >= next_snap:
                logger.snapshot(time.time(), self._hist_counts(state))
                next_snap += cfg.run.snapshot_interval_s
            if now >= next_status:
                self._status(stats, state, now - start)
                next_status += cfg.run.status_interval_s
        return self._finish(state, rings, sink, code, reason, t_go=t_go, procs=procs)

    # -- stop and report ---------------------------------------------------------------------------
    def _finish(self, state: RunState, rings: list, sink: OrdersSink, code: int, reason: str, *,
                t_go: int | None, procs: list | None = None) -> Outcome:
        ctl = state.ctl
        if self._live is not None:
            self._live.end()  # a status line rewritten in place needs its newline
        if t_go is not None and code != 1:
            ctl["drain"] = 1  # sources first; the others empty the rings
            market, book = rings[0], rings[1]
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            # lockstep: a BOOK record is taken only with its SCORE, so an empty book ring means every score was used
            while time.monotonic() < deadline and (market.lag(0) or book.lag(0)):
                sink.drain()
                time.sleep(TICK_S)
        t_end = lib.tp_now_ns()
        ctl["stop"] = 1
        if procs:
            self._join(procs, self.config.run.stop_grace_s)
        sink.drain()
        sink.flush()  # the report's results read orders.csv, fills.csv and scores.csv next
        self.say(f"tickpipe: stopping: {reason}" if reason else "tickpipe: stopping")
        summary: dict[str, Any] = {}
        if t_go is not None:
            counts = self._hist_counts(state)
            self._logger.snapshot(time.time(), counts)
            self._logger.close()
            summary = self._report(state, counts, sink, code, reason, (t_end - t_go) / 1e9)
        return Outcome(code, reason, self.run_dir, summary)

    def _join(self, procs: list, grace_s: float) -> None:
        deadline = time.monotonic() + grace_s
        for _, p in procs:
            p.join(max(0.0, deadline - time.monotonic()))

    def _stop_children(self, state: RunState | None, procs: list) -> None:
        """SIGTERM whatever is still alive, SIGKILL after the grace period."""
        if state is not None:
            with contextlib.suppress(Exception):
                state.ctl["stop"] = 1
        alive = [p for _, p in procs if p.is_alive()]
        if not alive:
            return
        grace = self.config.run.stop_grace_s
        for p in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in alive:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in alive:
            if p.is_alive():
                self.say(f"tickpipe: {p.name} ignored SIGTERM for {grace:g} s: SIGKILL")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
                p.join(2)

    def _dead(self, procs: list, stats: np.ndarray) -> str:
        for g, p in procs:
            if not p.is_alive():
                code = p.exitcode
                how = f"killed by {signal.Signals(-code).name}" if code and code < 0 else f"exit status {code}"
                return f"{'+'.join(g.agents)} (pid {p.pid}, {how})"
            for a in g.agents:
                if int(stats[self.ids[a]]["state"]) == metrics.STATE_FAILED:
                    return f"{'+'.join(g.agents)} (pid {p.pid}, failed)"
        return ""

    def _run_doctor(self) -> None:
        """The host checks (procs/doctor.py, ~0.1 s, no privileges needed) for summary.json and report.html."""
        try:
            from procs import doctor

            self.doctor = doctor.as_dict(doctor.run_checks(placement=self.config.run.placement, config=self.config))
        except Exception as e:  # a run must not fail because the doctor could not read the host
            self.doctor = {"verdict": f"doctor failed: {e!r}", "exit_code": None, "checks": []}

    # -- histograms, counters -------------------------------------------------------------------
    def _hist_names(self) -> list[str]:
        return [f"{a}.{k}" for a in self.agents for k in ("hop", "e2e", agent_class(a).AUX_HIST) if k]

    def _hist_counts(self, state: RunState) -> dict[str, np.ndarray]:
        out = {}
        for a in self.agents:
            i = self.ids[a]
            out[f"{a}.hop"] = state.hist(i, metrics.HIST_HOP).copy()
            out[f"{a}.e2e"] = state.hist(i, metrics.HIST_E2E).copy()
            aux = agent_class(a).AUX_HIST
            if aux:
                out[f"{a}.{aux}"] = state.hist(i, metrics.HIST_AUX).copy()
        return out

    def _counter_snapshot(self, stats: np.ndarray) -> dict[str, np.ndarray]:
        return {a: stats[self.ids[a]]["counters"].copy() for a in self.agents}

    def _status(self, stats: np.ndarray, state: RunState, elapsed: float) -> None:
        """The live status line (procs.prom.LiveStatus): off with --quiet, and unless stdout is a TTY or
        metrics.status = "line"; tick-to-decision percentiles over the last interval only."""
        if self._live is None:
            self._live = prom.LiveStatus(self.out, "off" if self.quiet else self.config.metrics.status)
        if not self._live.enabled:
            return
        try:
            e2e = state.hist(self.ids["strategy"], metrics.HIST_E2E).copy()
            self._live.update(prom.StatusSample(time.monotonic(), self._view.counters(), e2e,
                                                self._view.ring_fill()), elapsed)
        except Exception as exc:  # a status line must never end a run
            self._live.enabled = False
            self.say(f"tickpipe: status line off after an error: {exc!r}")

    def _report(self, state: RunState, counts: dict[str, np.ndarray], sink: OrdersSink, code: int, reason: str,
                seconds: float) -> dict[str, Any]:
        stats = state.stats.slots
        labels = {"feed.hop": "feed.lateness", "feed.e2e": None, "book.hop": "feed→book",
                  "book.e2e": "origin→book", "strategy.hop": "book→strategy",
                  "strategy.e2e": "tick_to_decision", "inference.hop": "book→inference",
                  "inference.e2e": "origin→score", "strategy.decision": "strategy.decision",
                  "inference.pass": "inference.pass"}
        hists = {labels[k]: Histogram(v) for k, v in counts.items() if labels.get(k)}
        hists["orders.sink_poll"] = Histogram(sink.hop)
        counters = {}
        for a in self.agents:
            names = counter_names(a)
            row = stats[self.ids[a]]["counters"]
            counters[a] = {n: int(row[i]) if not n.startswith("pnl_") else int(np.int64(row[i].view(np.int64)))
                           for i, n in enumerate(names)}
        counters["orders_sink"] = {"received": sink.count, "new": int(sink.by_action[0]),
                                   "cancel": int(sink.by_action[1]), "replace": int(sink.by_action[2]),
                                   "reports": sink.fills_count,
                                   **{f"reports_{n}": int(sink.by_status[i]) for i, n in enumerate(E.STATUS_NAMES)}}
        rates = {"seconds": seconds,
                 "messages_per_s": counters["feed"].get("messages_out", 0) / max(seconds, 1e-9),
                 "records_per_s": counters["feed"].get("records_out", 0) / max(seconds, 1e-9),
                 "book_updates_per_s": counters["book"].get("books_out", 0) / max(seconds, 1e-9),
                 "orders_per_s": sink.count / max(seconds, 1e-9)}
        meta = {"run": self.run, "exit_code": code, "stop_reason": reason, "source": self._source_text(),
                "symbols": self.symbols, "placement": pl.format_placement(self.groups), "wait": self.config.run.wait,
                "lockstep": self.config.lockstep_on(),
                "config": self.config.to_dict(), "host": _host_info(),
                "orders_file": {"path": "orders.csv", "records": sink.count},
                "fills_file": {"path": "fills.csv", "records": sink.fills_count},
                "scores_file": {"path": "scores.csv", "records": counters["inference"].get("scored", 0)
                                if self.config.lockstep_on() else sink.scores_count,
                                "writer": "inference (every SCORE)" if self.config.lockstep_on()
                                else "launcher (5 ms sample of the board)"},
                "stages": {a: {"pid": int(stats[self.ids[a]]["pid"]), "cpu": int(stats[self.ids[a]]["cpu"]),
                               "state": metrics.STATE_NAMES.get(int(stats[self.ids[a]]["state"]), "?"),
                               "loops": int(stats[self.ids[a]]["loops"]), "parks": int(stats[self.ids[a]]["parks"])}
                           for a in self.agents}}
        if self.config.source.kind == "sim":
            meta["labels_file"] = "labels.jsonl"
        meta["doctor"] = self.doctor
        if self.profiler is not None:  # the stages have exited: the profilers write their output now
            meta["profile"] = self.profiler.finish()
        strat_file = self.run_dir / "strategy.json"
        if strat_file.is_file():  # written by the strategy stage at close: name, params, sleeves, refusals
            with contextlib.suppress(ValueError, OSError):
                meta["strategy"] = orjson.loads(strat_file.read_bytes())
        summary = report.write_report(self.run_dir, hists=hists, counters=counters, meta=meta, rates=rates)
        res = self._results()
        self.say("")
        self.say(report.percentile_table(hists))
        self.say("")
        for line in _results_lines(res):
            self.say(line)
        f = counters["feed"]
        bk = counters["book"]
        self.say(f"messages {f.get('messages_out', 0)} ({rates['messages_per_s']:.0f}/s), records "
                 f"{f.get('records_out', 0)}, book updates {bk.get('books_out', 0)}, gaps {bk.get('gaps', 0)}, "
                 f"crossed {bk.get('crossed', 0)}, parse errors {_parse_errors(f)}, orders {sink.count}, "
                 f"scores {counters['inference'].get('scored', 0)} (alerts {counters['inference'].get('alerts', 0)})")
        inf = counters["inference"]
        warm = inf.get("scored", 0) - inf.get("cold", 0)
        if warm >= 100 and inf.get("alerts", 0) > 0.3 * warm and self.config.risk.kill_switch:
            # a model trained on the simulator can find a real market anomalous throughout: say so, not just "no fills"
            self.say(f"tickpipe: warning: the anomaly model flagged {inf.get('alerts', 0)} of {warm} warm scores "
                     f"({100 * inf.get('alerts', 0) / warm:.0f}%), so the kill switch kept the strategy out most of "
                     "the run; the shipped model is trained on the simulator (models/anomaly.md). Use "
                     "--set risk.kill_switch=false, or a model trained on this market.")
        if self.config.source.kind == "live":
            self.say(f"live: frames {f.get('live_frames', 0)}, reconnects {f.get('live_reconnects', 0)}, gaps "
                     f"{f.get('live_gaps', 0)}, resyncs {f.get('live_resyncs', 0)}, snapshots "
                     f"{f.get('live_snapshots_received', 0)} ({f.get('live_snapshot_failures', 0)} failed), "
                     f"out of sync {f.get('live_stale_ms', 0) / 1e3:.1f} symbol-s, bad frames "
                     f"{f.get('live_bad_frames', 0)}")
        self.say(f"report: {self.run_dir}/ (report.html, summary.json, percentiles.txt, latency.png, hlog/; "
                 f"results.txt, fills.csv, equity.png)")
        return summary

    def _results(self) -> dict[str, Any]:
        """The strategy's results (procs/results.py) from the files the run wrote; report.html again with them."""
        try:
            res = results.write(self.run_dir)
        except Exception as exc:  # results are post-processing: a bug there must not lose the latency report
            self.say(f"tickpipe: strategy results failed: {exc!r}")
            return {}
        with contextlib.suppress(Exception):
            report.write_html(self.run_dir, orjson.loads((self.run_dir / "summary.json").read_bytes()))
        return res


def _results_lines(res: dict[str, Any]) -> list[str]:
    """One line per sleeve: P&L, fills, slippage (results.txt has the full tables)."""
    out = []
    for tag, t in sorted(res.get("tags", {}).items()):
        o = t.get("overall", {})
        pnl = o.get("pnl") or {}
        slip = (o.get("slippage_bps") or {}).get("all", {}).get("mean")
        rate = (o.get("fill_rate") or {}).get("order_ratio")
        out.append(f"sleeve {t.get('name', tag)}: equity {pnl.get('equity') or 0.0:,.2f} (realised "
                   f"{pnl.get('realized') or 0.0:,.2f}, unrealised {pnl.get('unrealized') or 0.0:,.2f}, fees "
                   f"{o.get('fees') or 0.0:,.2f}), fills {o.get('fills', 0)}, order fill rate "
                   f"{'-' if rate is None else f'{100 * rate:.0f}%'}, slippage "
                   f"{'-' if slip is None else f'{slip:+.2f} bps'} vs mid at decision")
    return out


def _parse_errors(feed: dict[str, int]) -> int:
    return sum(v for k, v in feed.items() if k.startswith("bad_"))


def _host_info() -> dict[str, Any]:
    info: dict[str, Any] = {"cpus": sorted(os.sched_getaffinity(0)), "python": sys.version.split()[0],
                            "kernel": os.uname().release, "loadavg": os.getloadavg()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    except OSError:
        pass
    return info
