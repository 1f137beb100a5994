#!/usr/bin/env python
"""Decision latency of the strategy stage: book record in → order record out, in one process, real rings.

    python scripts/bench_decision.py                                   # the BTCUSDT capture, 3 repeats, CPU 1
    python scripts/bench_decision.py --records 50000 --repeat 5 --cpu 0 --json /tmp/decision.json
    python scripts/bench_decision.py --capture ../shared/data/binance/usdm_4sym_20210722.lines.gz

The BOOK stream is made once: a real capture (default ../shared/data/binance/usdm_btcusdt_20240808_120s,
or the simulator when that folder is absent) through the real parser and book kernel (scripts/bench_paper.py's
`book_stream`). When --records exceeds the stream it is looped, each pass shifted later in exchange time.
Every --score-every records the record's symbol gets a SCORE on the `scores` board (P(up) a seeded random
walk in [0.25, 0.75], anomaly 0) so the direction-driven strategies act.

Per strategy a real `StrategyAgent` attaches to its own run's `book` / `orders` / `fills` rings and `scores`
board (as procs/launcher.py creates them) and compiles its step. Then, per case:
- `single`: each BOOK record is written to the book ring stamped t_publish_ns = now, then `do_work()` runs:
  the latency case (as the default placement, where the book stage's write is followed by strategy's pass);
- `batch`: --batch records written at once, one `do_work()`: the throughput case.
Per order, `order.t_publish_ns − book.t_publish_ns` is the decision latency (record in → order out, with the
ring hop inside the process and the host loop's Python call). Also read: the stage's own `strategy.decision`
histogram (its step start → orders published) and its hop histogram (record in → the step's publish point,
for every record). The no-op strategy has no orders; its baseline is that hop figure over all records, the
same interval an order would have had. The orders and fills rings are drained after every call.

Each case runs --repeat times (strategies interleaved, engine state reset in place so the compiled step is
reused); the report prints the median of each percentile over the repeats. Timing on a shared machine: read
the load averages printed at the start and end.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from procs.agent import MAX_COUNTERS, AgentContext  # noqa: E402
from procs.api import Strategy, StrategyError, load_strategy  # noqa: E402
from procs.config import Config  # noqa: E402
from procs.kernels import engine as E  # noqa: E402
from procs.strategy import StrategyAgent  # noqa: E402
from shm import hdr  # noqa: E402
from shm import nbops as tp  # noqa: E402
from shm.records import BOOK, FILL, ORDER, SCORE, SCORE_ANOMALY, SCORE_ANOMALY_RAW, SCORE_UP  # noqa: E402
from shm.ring import Board, SpscRing  # noqa: E402
from shm.segment import new_run_id, remove_run  # noqa: E402

DATA = Path(os.environ.get("TICKPIPE_DATA", ROOT.parent / "shared" / "data")) / "binance"
DEFAULT_CAPTURE = DATA / "usdm_btcusdt_20240808_120s.lines.gz"
#: the acceptance line of issue 6
TARGET_P99_US = 20.0
PCTS = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))
MODES = ("single", "batch")


class NoOp(Strategy):
    """No callbacks: what the engine and the paper exchange cost around a strategy (the baseline)."""


STRATEGIES = (("noop", f"{NoOp.__module__}:NoOp"),
              ("market_maker", "procs.strategies.market_maker:MarketMaker"),
              ("twap", "procs.strategies.execution:Twap"))


# -- the BOOK stream and the scores ----------------------------------------------------------------
def book_records(capture: Path | None, sim_seconds: float) -> tuple[np.ndarray, list[str], str]:
    """(BOOK records, symbols, description): the capture through the parser and book kernel, or the simulator."""
    from bench_paper import from_capture, from_simulator

    if capture is not None and capture.is_file():
        from procs.sources.replay import scan_symbols

        return from_capture(str(capture)), scan_symbols(str(capture)), f"capture {capture.name}"
    syms = ["BTCUSDT", "ETHUSDT"]
    why = f"capture {capture} not found: " if capture is not None else ""
    return (from_simulator(sim_seconds, syms, 11), syms,
            f"{why}SIMULATOR ({sim_seconds:g} s, {','.join(syms)}, seed 11)")


def loop_stream(recs: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    """The first n records, looping the stream with each pass shifted after the previous one in exchange
    time (the engine's clocks only move forward). Returns (records, passes)."""
    if n <= len(recs):
        return recs[:n].copy(), 1
    span = int(recs["exch_ts_ms"].max() - recs["exch_ts_ms"].min()) + 1000
    passes = -(-n // len(recs))
    parts = []
    for i in range(passes):
        p = recs.copy()
        p["exch_ts_ms"] += i * span
        parts.append(p)
    return np.concatenate(parts)[:n].astype(BOOK.dtype), passes


def score_plan(recs: np.ndarray, every: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(record indices before which a score is published, the SCORE records): P(up) a clipped random walk."""
    idx = np.arange(0, len(recs), max(every, 1))
    rng = np.random.default_rng(seed)
    p = np.clip(0.5 + np.cumsum(rng.normal(0.0, 0.04, len(idx))), 0.25, 0.75)
    sc = np.zeros(len(idx), SCORE.dtype)
    sc["feature_seq"] = np.arange(1, len(idx) + 1)
    sc["n_outputs"] = sc.dtype["values"].shape[0]
    sc["values"] = np.nan
    sc["values"][:, SCORE_ANOMALY] = 0.0  # no anomaly: the kill switch stays off, the strategies quote
    sc["values"][:, SCORE_ANOMALY_RAW] = 0.0
    sc["values"][:, SCORE_UP] = p
    sc["symbol"] = recs["symbol"][idx]
    return idx, sc


@njit  # cffi's clock and ring calls are dynamic globals: not cacheable
def publish(addr: int, recs: np.ndarray, start: int, k: int, size: int) -> int:
    """Stamp recs[start:start+k] with one `now` and write them to the ring: the book stage's publish."""
    now = tp.now_ns()
    for j in range(start, start + k):
        recs[j].t_publish_ns = now
        recs[j].t_origin_ns = now
    if tp.write(addr, recs.ctypes.data + start * size, k, size) != k:
        return -1
    return now


# -- one strategy's harness --------------------------------------------------------------------------
@dataclass
class Harness:
    """One run's segments and a started StrategyAgent over them."""

    key: str
    path: str
    symbols: list[str]
    tmp: str
    #: new_run_id is per millisecond: the key keeps two harnesses made in one apart
    run: str = ""
    agent: StrategyAgent = field(init=False)

    def __post_init__(self) -> None:
        self.run = self.run or f"{new_run_id()}{self.key[:2]}"
        cfg = Config.from_dict({"strategy": {"name": self.path}})
        n_sym = len(self.symbols)
        self.rings = [SpscRing.create(self.run, "book", BOOK, cfg.rings.book),
                      SpscRing.create(self.run, "orders", ORDER, cfg.rings.orders),
                      SpscRing.create(self.run, "fills", FILL, cfg.rings.fills)]
        self.board = Board.create(self.run, "scores", SCORE, n_sym)
        self.book_prod = self.rings[0].producer()
        self.orders = self.rings[1].consumer(0)
        self.fills = self.rings[2].consumer(0)
        self.ctx = AgentContext(run=self.run, run_dir=self.tmp, config=cfg, symbols=self.symbols,
                                counters=np.zeros(MAX_COUNTERS, np.uint64), hist_hop=hdr.new_counts(),
                                hist_e2e=hdr.new_counts(), log=logging.getLogger("bench_decision"))
        self.agent = StrategyAgent()
        try:
            self.agent.on_start(self.ctx)
        except BaseException:  # a failed compile must not leave the run's segments behind
            for r in (*self.rings, self.board):
                r.close()
            remove_run(self.run)
            raise
        self.n_sym = n_sym

    def reset(self) -> None:
        """Fresh engine, strategy state and histograms in the arrays the compiled step points at."""
        a = self.agent
        fresh = E.Core(self.n_sym, a.core.rp.copy(), a.core.x_params.copy())
        for name, v in vars(fresh).items():
            if isinstance(v, np.ndarray):
                getattr(a.core, name)[...] = v
        a.state[...] = a.strategy.state_array(self.n_sym)
        for h in (self.ctx.hist_hop, self.ctx.hist_e2e, self.ctx.hist_aux, self.ctx.counters):
            h[...] = 0
        self.orders.read(1 << 20)
        self.fills.read(1 << 20)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.agent.on_close()  # closes the agent's attachments
        for r in (*self.rings, self.board):
            r.close()
        remove_run(self.run)


def run_case(h: Harness, recs: np.ndarray, score_idx: np.ndarray, scores: np.ndarray, batch: int) -> dict[str, Any]:
    """One pass of the stream through the stage, `batch` records per do_work(); raw samples in ns."""
    addr = h.rings[0].addr
    size = BOOK.dtype.itemsize
    do_work = h.agent.do_work
    orders, fills, board = h.orders, h.fills, h.board
    clock = time.perf_counter_ns
    n = len(recs)
    calls = -(-n // batch)
    step_ns = np.empty(calls, np.int64)
    order_lat: list[np.ndarray] = []
    dec_call: list[int] = []  # the call (record, in the single case) of each decision, to align repeats
    dec_lat: list[int] = []
    n_fills = 0
    si = 0
    gc.collect()
    gc.disable()  # as procs/host.py does in its hot loop
    try:
        for c in range(calls):
            start = c * batch
            k = min(batch, n - start)
            while si < len(score_idx) and score_idx[si] < start + k:  # the newest scores before the records
                board.write(int(scores[si]["symbol"]), scores[si:si + 1])
                si += 1
            t_pub = publish(addr, recs, start, k, size)
            if t_pub < 0:
                raise RuntimeError("book ring full")
            t0 = clock()
            done = do_work()
            step_ns[c] = clock() - t0
            if done != k:
                raise RuntimeError(f"the stage took {done} of {k} records")
            o = orders.read(4096)
            if len(o):
                order_lat.append(o["t_publish_ns"].astype(np.int64) - t_pub)
                dec_call.append(c)
                dec_lat.append(int(o["t_publish_ns"][0]) - t_pub)
            n_fills += len(fills.read(1 << 14))
    finally:
        gc.enable()
    lat = np.concatenate(order_lat) if order_lat else np.zeros(0, np.int64)
    return {"order_lat_ns": lat, "dec_call": np.array(dec_call, np.int64), "dec_lat_ns": np.array(dec_lat, np.int64),
            "step_ns": step_ns, "records": n, "calls": calls, "fills": n_fills,
            "decisions": int(h.agent.core.g[E.G_DECIDED]), "orders": len(lat),
            "stage_decision": hdr.Histogram(h.ctx.hist_aux.copy()), "stage_hop": hdr.Histogram(h.ctx.hist_hop.copy())}


def min_over_repeats(runs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Percentiles of each decision's fastest repeat (one order per decision). The stream is the same in every
    repeat, so the same records decide: the minimum drops interference (preemption, interrupts, a neighbour
    on the CPU) unless it hit that record every time, and leaves what the record's work costs."""
    calls = runs[0][0]
    if len(calls) == 0 or any(not np.array_equal(c, calls) for c, _ in runs):
        return {}
    return pcts_us(np.min(np.stack([v for _, v in runs]), axis=0))


def pcts_us(v: np.ndarray) -> dict[str, float]:
    if len(v) == 0:
        return {}
    out = {name: float(np.percentile(v, q)) / 1e3 for name, q in PCTS}
    out["max"] = float(v.max()) / 1e3
    return out


def hist_us(h: hdr.Histogram) -> dict[str, float]:
    if h.count == 0:
        return {}
    out = {name: h.percentile(q) / 1e3 for name, q in PCTS}
    out["max"] = h.max / 1e3
    return out


def summarize(raw: dict[str, Any], batch: int) -> dict[str, Any]:
    """One repeat's figures (µs)."""
    per_rec = raw["step_ns"] / batch if batch > 1 else raw["step_ns"]
    return {"records": raw["records"], "calls": raw["calls"], "decisions": raw["decisions"], "orders": raw["orders"],
            "fills": raw["fills"], "decision_us": pcts_us(raw["order_lat_ns"]),
            "stage_decision_us": hist_us(raw["stage_decision"]), "stage_decision_count": raw["stage_decision"].count,
            "record_to_publish_us": hist_us(raw["stage_hop"]),
            "step_call_us": pcts_us(raw["step_ns"]), "step_per_record_us": pcts_us(per_rec)}


def median_of(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """The median over repeats of every number (nested dicts of percentiles included)."""
    out: dict[str, Any] = {}
    for k, v in reps[0].items():
        if isinstance(v, dict):
            out[k] = median_of([r[k] for r in reps]) if all(r[k] for r in reps) else {}
        else:
            out[k] = statistics.median(r[k] for r in reps)
    return out


def fmt(d: dict[str, float], key: str) -> str:
    return f"{d[key]:.2f}" if key in d else "-"


def ratio(a: dict[str, float], b: dict[str, float], key: str) -> str:
    return f"{a[key] / b[key]:.2f}×" if key in a and key in b and b[key] > 0 else "-"


def load_line() -> str:
    la = os.getloadavg()
    return f"{la[0]:.2f} {la[1]:.2f} {la[2]:.2f} ({os.cpu_count()} CPUs)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--capture", type=Path, default=DEFAULT_CAPTURE,
                    help="capture to replay (default: the BTCUSDT capture; the simulator if it is absent)")
    ap.add_argument("--records", type=int, default=20_000,
                    help="BOOK records per case (default 20000; the stream loops if shorter)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per case; medians are reported (default 3)")
    ap.add_argument("--batch", type=int, default=32, help="records per do_work() in the batch case (default 32)")
    ap.add_argument("--cpu", type=int, default=(os.cpu_count() or 1) - 1, help="CPU to pin to (default: the last)")
    ap.add_argument("--score-every", type=int, default=10, help="a SCORE before every Nth record (default 10)")
    ap.add_argument("--warmup", type=int, default=2000, help="records run untimed per strategy first (default 2000)")
    ap.add_argument("--sim-seconds", type=float, default=60.0, help="simulated seconds when no capture (default 60)")
    ap.add_argument("--only", action="append", choices=[k for k, _ in STRATEGIES],
                    help="run only this strategy (repeatable; the no-op baseline always runs)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)
    if args.records < 1 or args.repeat < 1 or not 1 <= args.batch <= StrategyAgent.BATCH:
        ap.error(f"--records and --repeat must be >= 1 and --batch in 1..{StrategyAgent.BATCH}")

    os.sched_setaffinity(0, {args.cpu})
    load_start = load_line()
    print(f"pinned to CPU {sorted(os.sched_getaffinity(0))}; load average at start: {load_start}")
    t = time.perf_counter()
    base, symbols, source = book_records(args.capture, args.sim_seconds)
    recs, passes = loop_stream(base, args.records)
    score_idx, scores = score_plan(recs, args.score_every, 7)
    print(f"{source}: {len(base)} BOOK records ({len(symbols)} symbols), {len(recs)} used ({passes} pass(es)), "
          f"{len(score_idx)} scores, built in {time.perf_counter() - t:.1f} s")

    wanted = {"noop", *(args.only or [k for k, _ in STRATEGIES])}
    tmp = tempfile.TemporaryDirectory()
    harnesses: list[Harness] = []
    skipped: dict[str, str] = {}
    results: dict[str, dict[str, Any]] = {}
    try:
        for key, path in STRATEGIES:
            if key not in wanted:
                continue
            try:
                load_strategy(path)
            except StrategyError as exc:  # e.g. execution.py not written yet
                skipped[key] = str(exc)
                print(f"skipping {key}: {exc}", file=sys.stderr)
                continue
            t = time.perf_counter()
            d = Path(tmp.name, key)
            d.mkdir()
            try:
                h = Harness(key, path, symbols, str(d))
            except Exception as exc:  # e.g. a strategy module mid-edit by someone else: report it, go on
                if key == "noop":
                    raise
                skipped[key] = f"failed to start: {exc!r}"[:500]
                print(f"skipping {key}: {skipped[key]}", file=sys.stderr)
                continue
            harnesses.append(h)
            warm = recs[:min(args.warmup, len(recs))].copy()
            run_case(h, warm, *score_plan(warm, args.score_every, 3), 1)  # warm caches and lazy paths
            print(f"  {key}: step compiled and warmed in {time.perf_counter() - t:.1f} s", file=sys.stderr)

        reps: dict[tuple[str, str], list[dict[str, Any]]] = {(h.key, m): [] for h in harnesses for m in MODES}
        per_dec: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {h.key: [] for h in harnesses}
        for r in range(args.repeat):
            for mode in MODES:
                for h in harnesses:  # interleaved: a load change hits every strategy alike
                    h.reset()
                    raw = run_case(h, recs.copy(), score_idx, scores, 1 if mode == "single" else args.batch)
                    reps[(h.key, mode)].append(summarize(raw, 1 if mode == "single" else args.batch))
                    if mode == "single":
                        per_dec[h.key].append((raw["dec_call"], raw["dec_lat_ns"]))
            print(f"  repeat {r + 1}/{args.repeat} done", file=sys.stderr)
        for (key, mode), rs in reps.items():
            results.setdefault(key, {})[mode] = median_of(rs) | {"repeats": rs}
        for key, runs in per_dec.items():
            results[key]["single"]["decision_min_over_repeats_us"] = min_over_repeats(runs)
    finally:
        for h in harnesses:
            h.close()
        tmp.cleanup()
    load_end = load_line()

    print(f"\nmedians over {args.repeat} repeat(s), µs; ratios vs the no-op's record-in → publish point "
          "over all its records (it sends no orders)\n")
    print("| strategy | case | records | decisions | orders | p50 | p90 | p99 | p99.9 | max | p50 vs no-op | "
          "p99 vs no-op | stage decision p50 / p99 | step/record p50 / p99 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for key, modes in results.items():
        for mode in MODES:
            m = modes[mode]
            base_l = results["noop"][mode]["record_to_publish_us"]
            lat = m["decision_us"] if key != "noop" else m["record_to_publish_us"]
            label = key if key != "noop" else "noop (all records)"
            sd, sp = m["stage_decision_us"], m["step_per_record_us"]
            print(f"| {label} | {mode}{'' if mode == 'single' else f' ×{args.batch}'} | {m['records']:.0f} | "
                  f"{m['decisions']:.0f} | {m['orders']:.0f} | {fmt(lat, 'p50')} | {fmt(lat, 'p90')} | "
                  f"{fmt(lat, 'p99')} | {fmt(lat, 'p99.9')} | {fmt(lat, 'max')} | {ratio(lat, base_l, 'p50')} | "
                  f"{ratio(lat, base_l, 'p99')} | {fmt(sd, 'p50')} / {fmt(sd, 'p99')} | "
                  f"{fmt(sp, 'p50')} / {fmt(sp, 'p99')} |")
    if args.repeat > 1:
        print(f"\nnoise-filtered (single): each decision's fastest of {args.repeat} repeats, µs\n")
        print("| strategy | decisions | p50 | p90 | p99 | p99.9 | max |")
        print("|---|---|---|---|---|---|---|")
        for key, modes in results.items():
            d = modes["single"].get("decision_min_over_repeats_us")
            if d:
                print(f"| {key} | {modes['single']['decisions']:.0f} | " +
                      " | ".join(fmt(d, k) for k in ("p50", "p90", "p99", "p99.9", "max")) + " |")
    verdicts = {}
    for key in results:
        if key == "noop":
            continue
        p99 = results[key]["single"]["decision_us"].get("p99")
        verdicts[key] = None if p99 is None else p99 <= TARGET_P99_US
        ok = p99 is not None and p99 <= TARGET_P99_US
        state = "no decisions" if p99 is None else \
            f"p99 {p99:.2f} µs {'≤' if ok else '>'} {TARGET_P99_US:g} µs: {'PASS' if ok else 'FAIL'}"
        print(f"\nverdict {key} (single, book record in → order record out): {state}")
    for key, why in skipped.items():
        print(f"skipped {key}: {why}")
    print(f"\nload average at start: {load_start}; at end: {load_end}; pinned to CPU {args.cpu}")

    if args.json:
        doc = {"env": {"cpu": args.cpu, "load_start": load_start, "load_end": load_end, "nproc": os.cpu_count(),
                       "python": platform.python_version(), "kernel": platform.release(), "source": source},
               "args": {"records": len(recs), "repeat": args.repeat, "batch": args.batch,
                        "score_every": args.score_every, "passes": passes},
               "target_p99_us": TARGET_P99_US, "verdicts": verdicts, "skipped": skipped, "results": results}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
