#!/usr/bin/env python
"""Where the time goes: every stage's do_work() timed in ONE process, over a capture or the simulator.

The stages run exactly as in run.py (same agents, same rings, same kernels) but in one thread, so
each call's cost is pure CPU work with no cross-core hop or wake-up in it. The report gives, per
stage, the calls that did work, the ns per call (p50/p99) and the ns per message and per output;
that is the floor the pipeline's hop latencies stand on.

    python profiling/stage_costs.py                                  # the built-in market, 100k messages
    python profiling/stage_costs.py --replay ../shared/data/binance/usdm_btcusdt_20240808_120s.lines.gz
    python profiling/stage_costs.py --batch 1                        # one message per feed call (speed-1-like)

For a flame graph of the same loop: py-spy record --native -o stages.svg -- python profiling/stage_costs.py
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from procs import feed as feed_mod  # noqa: E402
from procs.agent import AgentContext  # noqa: E402
from procs.book import BookAgent  # noqa: E402
from procs.config import Config  # noqa: E402
from procs.feed import Feed  # noqa: E402
from procs.inference import InferenceAgent  # noqa: E402
from procs.sources.replay import scan_symbols  # noqa: E402
from procs.strategy import StrategyAgent  # noqa: E402
from shm.metrics import RunState  # noqa: E402
from shm.records import BOOK, FEATURES, FILL, MARKET, ORDER, SCORE  # noqa: E402
from shm.ring import Board, SpscRing  # noqa: E402
from shm.segment import new_run_id, remove_run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replay", metavar="FILE", help="capture to replay (default: the built-in market)")
    ap.add_argument("--messages", type=int, default=100_000,
                    help="stop after this many messages (default 100000; the simulator is endless)")
    ap.add_argument("--batch", type=int, default=feed_mod.BATCH_MESSAGES,
                    help=f"messages per feed call (default {feed_mod.BATCH_MESSAGES}, as run.py at speed 0)")
    ap.add_argument("--model", default=str(ROOT / "models" / "anomaly.onnx"), help="ONNX model with sidecar")
    args = ap.parse_args(argv)

    feed_mod.BATCH_MESSAGES = args.batch
    src = {"kind": "replay", "path": args.replay, "speed": 0.0} if args.replay else {"kind": "sim", "speed": 0.0}
    # conflated scoring (what a paced or live run does): lockstep would need the queues and a strategy that waits
    cfg = Config.from_dict({"source": src, "inference": {"model": args.model, "min_interval_us": 0, "lockstep": "off"},
                            "run": {"max_messages": args.messages}})
    syms = scan_symbols(args.replay) if args.replay else list(cfg.sim.symbols)
    run = new_run_id()
    state = RunState.create(run, 4)
    rings = [SpscRing.create(run, "market", MARKET, cfg.rings.market),
             SpscRing.create(run, "book", BOOK, cfg.rings.book),
             SpscRing.create(run, "orders", ORDER, cfg.rings.orders),
             Board.create(run, "features", FEATURES, len(syms)), Board.create(run, "scores", SCORE, len(syms)),
             SpscRing.create(run, "fills", FILL, cfg.rings.fills)]
    classes = (Feed, BookAgent, StrategyAgent, InferenceAgent)
    agents = []
    tmp = tempfile.TemporaryDirectory()
    try:
        print(f"compiling and warming up {', '.join(c.name for c in classes)} ...", file=sys.stderr)
        for i, cls in enumerate(classes):
            a = cls()
            a.on_start(AgentContext(run=run, run_dir=tmp.name, config=cfg, symbols=syms,
                                    counters=state.stats.slots[i]["counters"], hist_hop=state.hist(i, 0),
                                    hist_e2e=state.hist(i, 1), log=logging.getLogger("stage_costs")))
            agents.append(a)
        orders = rings[2].consumer(0)
        fills = rings[5].consumer(0)
        costs: list[list[int]] = [[] for _ in agents]
        clock = time.perf_counter_ns
        t_wall = time.monotonic()
        while True:
            work = 0
            for i, a in enumerate(agents):
                t0 = clock()
                n = a.do_work()
                dt = clock() - t0
                if n:
                    costs[i].append(dt)
                work += n
            orders.read(4096)
            fills.read(4096)
            if work == 0 and agents[0].finished():
                break
        wall = time.monotonic() - t_wall
        for a in agents:
            a.on_close()
        c = state.stats.slots["counters"]
        messages = int(c[0][0])
        books = int(c[1][2])
        outputs = {"feed": ("messages", messages), "book": ("book updates", books),
                   "strategy": ("book updates", int(c[2][0])), "inference": ("scores", int(c[3][1]))}
        print(f"\n{messages} messages, {int(c[0][1])} records, {books} book updates in {wall:.2f} s "
              f"({messages / wall:,.0f} msg/s through all four stages on one core)\n")
        print("| stage | calls with work | ns/call p50 | p99 | total ms | ns per message | ns per output |")
        print("|---|---|---|---|---|---|---|")
        for a, cs in zip(agents, costs, strict=True):
            v = np.array(cs or [0], np.int64)
            what, n_out = outputs[a.name]
            per_msg = v.sum() / max(messages, 1)
            print(f"| {a.name} | {len(cs)} | {np.percentile(v, 50):,.0f} | {np.percentile(v, 99):,.0f} | "
                  f"{v.sum() / 1e6:,.1f} | {per_msg:,.0f} | {v.sum() / max(n_out, 1):,.0f} ({what}) |")
    finally:
        for r in rings:
            r.close()
        state.close()
        remove_run(run)
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
