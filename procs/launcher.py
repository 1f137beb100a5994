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
import multiprocessing as mp
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from procs import placement as pl
from procs import report
from procs.config import Config
from procs.host import HostSpec, host_main
from shm import hdr, metrics, reaper
from shm.hdr import Histogram
from shm.metrics import RunState
from shm.native import lib
from shm.records import BOOK, FEATURES, MARKET, ORDER, SCORE
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
    """Drains the strategy's orders ring (until the exchange issue puts a paper exchange there):
    counts them by action and appends the raw records to `orders.bin` (numpy dtype in summary.json)."""

    def __init__(self, ring: SpscRing, path: Path) -> None:
        self.cons = ring.consumer(0)
        self.file = path.open("wb")
        self.count = 0
        self.by_action = np.zeros(3, np.int64)
        self.hop = hdr.new_counts()
        hdr.record_many(self.hop, np.zeros(0, np.int64))  # load the kernel now: ~200 ms at the first order

    def drain(self) -> int:
        total = 0
        while True:
            recs = self.cons.read(4096)
            if len(recs) == 0:
                return total
            now = lib.tp_now_ns()
            hdr.record_many(self.hop, now - recs["t_publish_ns"])
            self.by_action += np.bincount(recs["action"], minlength=3)[:3]
            self.file.write(recs.tobytes())
            self.count += len(recs)
            total += len(recs)

    def close(self) -> None:
        self.file.close()


def _fmt_us(ns: float) -> str:
    return "-" if ns <= 0 else (f"{ns / 1e3:.1f}" if ns < 1e7 else f"{ns / 1e6:.0f}k")


class Launcher:
    def __init__(self, config: Config, *, symbols: list[str], quiet: bool = False,
                 out: Any = sys.stdout) -> None:
        self.config = config
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
        try:
            cfg = self.config
            n_sym = len(self.symbols)
            state = RunState.create(self.run, len(self.agents))
            market = SpscRing.create(self.run, "market", MARKET, cfg.rings.market)
            book = SpscRing.create(self.run, "book", BOOK, cfg.rings.book)
            orders = SpscRing.create(self.run, "orders", ORDER, cfg.rings.orders)
            features = Board.create(self.run, "features", FEATURES, n_sym)
            scores = Board.create(self.run, "scores", SCORE, n_sym)
            rings = [market, book, orders, features, scores]
            for r in (market, book):
                r.enable_park()
            sink = OrdersSink(orders, self.run_dir / "orders.bin")
            ctx = mp.get_context("spawn")  # a fresh interpreter per stage: no inherited locks or threads
            # only processes that may spin count: background agents (inference) sleep between passes
            n_proc = sum(any(agent_class(a).SPINS for a in g.agents) for g in self.groups)
            self.say(f"tickpipe: run {self.run} → {self.run_dir}")
            self.say(f"tickpipe: source={self._source_text()} symbols={','.join(self.symbols)} "
                     f"placement=\"{pl.format_placement(self.groups)}\" wait={cfg.run.wait}")
            for g in self.groups:
                spec = HostSpec(run=self.run, run_dir=str(self.run_dir), agents=list(g.agents),
                                agent_ids=[self.ids[a] for a in g.agents], cpu=g.cpu, config=cfg.to_dict(),
                                symbols=self.symbols, wait=cfg.run.wait, n_spinning=n_proc,
                                parent_pid=os.getpid(), log_path=str(self.run_dir / "stages.log"),
                                realtime=cfg.run.realtime)
                p = ctx.Process(target=host_main, args=(spec,), name="tickpipe-" + "+".join(g.agents), daemon=False)
                p.start()
                procs.append((g, p))
            with _Signals() as sigs:
                return self._supervise(state, procs, rings, sink, sigs)
        finally:
            self._stop_children(state, procs)
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
        if t_go is not None and code != 1:
            ctl["drain"] = 1  # sources first; the others empty the rings
            market, book = rings[0], rings[1]
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            while time.monotonic() < deadline and (market.lag(0) or book.lag(0)):
                sink.drain()
                time.sleep(TICK_S)
        t_end = lib.tp_now_ns()
        ctl["stop"] = 1
        if procs:
            self._join(procs, self.config.run.stop_grace_s)
        sink.drain()
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

    # -- histograms, counters -------------------------------------------------------------------
    def _hist_names(self) -> list[str]:
        return [f"{a}.{k}" for a in self.agents for k in ("hop", "e2e")]

    def _hist_counts(self, state: RunState) -> dict[str, np.ndarray]:
        out = {}
        for a in self.agents:
            i = self.ids[a]
            out[f"{a}.hop"] = state.hist(i, metrics.HIST_HOP).copy()
            out[f"{a}.e2e"] = state.hist(i, metrics.HIST_E2E).copy()
        return out

    def _counter_snapshot(self, stats: np.ndarray) -> dict[str, np.ndarray]:
        return {a: stats[self.ids[a]]["counters"].copy() for a in self.agents}

    def _status(self, stats: np.ndarray, state: RunState, elapsed: float) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        cur = self._counter_snapshot(stats)
        dt = max(now - self._prev_t, 1e-9)
        f, b, s = cur["feed"], cur["book"], cur["strategy"]
        pf, pb, ps = self._prev["feed"], self._prev["book"], self._prev["strategy"]
        t2d = Histogram(state.hist(self.ids["strategy"], metrics.HIST_E2E).copy())
        late = Histogram(state.hist(self.ids["feed"], metrics.HIST_HOP).copy())
        inf = cur["inference"]
        self.say(f"[{elapsed:6.1f}s] feed {(f[0] - pf[0]) / dt:8.0f} msg/s  book {(b[2] - pb[2]) / dt:8.0f} upd/s  "
                 f"strategy {(s[0] - ps[0]) / dt:8.0f} upd/s  orders {s[1]:7d}  scores {inf[1]:6d}  "
                 f"tick→decision p50 {_fmt_us(t2d.percentile(50))} p99 {_fmt_us(t2d.percentile(99))} µs  "
                 f"feed late p99 {_fmt_us(late.percentile(99))} µs")
        self._prev, self._prev_t = cur, now

    def _report(self, state: RunState, counts: dict[str, np.ndarray], sink: OrdersSink, code: int, reason: str,
                seconds: float) -> dict[str, Any]:
        stats = state.stats.slots
        labels = {"feed.hop": "feed.lateness", "feed.e2e": None, "book.hop": "feed→book",
                  "book.e2e": "origin→book", "strategy.hop": "book→strategy",
                  "strategy.e2e": "tick_to_decision", "inference.hop": "book→inference",
                  "inference.e2e": "origin→score"}
        hists = {labels[k]: Histogram(v) for k, v in counts.items() if labels.get(k)}
        hists["orders.sink_poll"] = Histogram(sink.hop)
        counters = {}
        for a in self.agents:
            names = counter_names(a)
            row = stats[self.ids[a]]["counters"]
            counters[a] = {n: int(row[i]) for i, n in enumerate(names)}
        counters["orders_sink"] = {"received": sink.count, "new": int(sink.by_action[0]),
                                   "cancel": int(sink.by_action[1]), "replace": int(sink.by_action[2])}
        rates = {"seconds": seconds,
                 "messages_per_s": counters["feed"].get("messages_out", 0) / max(seconds, 1e-9),
                 "records_per_s": counters["feed"].get("records_out", 0) / max(seconds, 1e-9),
                 "book_updates_per_s": counters["book"].get("books_out", 0) / max(seconds, 1e-9),
                 "orders_per_s": sink.count / max(seconds, 1e-9)}
        meta = {"run": self.run, "exit_code": code, "stop_reason": reason, "source": self._source_text(),
                "symbols": self.symbols, "placement": pl.format_placement(self.groups), "wait": self.config.run.wait,
                "config": self.config.to_dict(), "host": _host_info(),
                "orders_file": {"path": "orders.bin", "dtype": ORDER.dtype.descr, "records": sink.count},
                "stages": {a: {"pid": int(stats[self.ids[a]]["pid"]), "cpu": int(stats[self.ids[a]]["cpu"]),
                               "state": metrics.STATE_NAMES.get(int(stats[self.ids[a]]["state"]), "?"),
                               "loops": int(stats[self.ids[a]]["loops"]), "parks": int(stats[self.ids[a]]["parks"])}
                           for a in self.agents}}
        if self.config.source.kind == "sim":
            meta["labels_file"] = "labels.jsonl"
        summary = report.write_report(self.run_dir, hists=hists, counters=counters, meta=meta, rates=rates)
        self.say("")
        self.say(report.percentile_table(hists))
        self.say("")
        f = counters["feed"]
        bk = counters["book"]
        self.say(f"messages {f.get('messages_out', 0)} ({rates['messages_per_s']:.0f}/s), records "
                 f"{f.get('records_out', 0)}, book updates {bk.get('books_out', 0)}, gaps {bk.get('gaps', 0)}, "
                 f"crossed {bk.get('crossed', 0)}, parse errors {_parse_errors(f)}, orders {sink.count}, "
                 f"scores {counters['inference'].get('scored', 0)} (alerts {counters['inference'].get('alerts', 0)})")
        if self.config.source.kind == "live":
            self.say(f"live: frames {f.get('live_frames', 0)}, reconnects {f.get('live_reconnects', 0)}, gaps "
                     f"{f.get('live_gaps', 0)}, resyncs {f.get('live_resyncs', 0)}, snapshots "
                     f"{f.get('live_snapshots_received', 0)} ({f.get('live_snapshot_failures', 0)} failed), "
                     f"out of sync {f.get('live_stale_ms', 0) / 1e3:.1f} symbol-s, bad frames "
                     f"{f.get('live_bad_frames', 0)}")
        self.say(f"report: {self.run_dir}/ (summary.json, percentiles.txt, latency.png, hlog/)")
        return summary


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
