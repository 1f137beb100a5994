#!/usr/bin/env python
"""Whole-pipeline benchmark: run.py per source × placement, then throughput and latency from each report.

    python scripts/bench_pipeline.py                       # sim + the BTCUSDT capture, every placement
    python scripts/bench_pipeline.py --only sim-speed0 --placements "feed,book,strategy@0 inference@1"
    python scripts/bench_pipeline.py --soak 600            # memory over a 10-minute simulator run

Scenarios:
- `sim-speed0`: the built-in market as fast as the pipeline takes it (messages/s sustained).
- `btc-speed0`: the real BTCUSDT capture (../shared/data/binance) as fast as possible.
- `btc-speed1`: the same capture in real time: tick-to-decision without coordinated omission
  (t_origin_ns is the scheduled time, so any stall shows).
Each run is `python run.py ... --quiet`; the figures come from its summary.json. The soak mode samples
the resident memory of every stage process while the simulator runs at speed 1 and prints the growth.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("TICKPIPE_DATA", ROOT.parent / "shared" / "data")) / "binance"
BTC = DATA / "usdm_btcusdt_20240808_120s.lines.gz"

PLACEMENTS = (
    "feed,book,strategy@0 inference@1",  # the 2-core default: the critical chain in one thread, inference beside
    "feed,book@0 strategy,inference@1",  # 2 pinned processes, strategy shares its thread with inference
    "feed,book,strategy,inference@0",  # one process: no hops between cores at all
    "feed@0 book@1 strategy@0 inference@1",  # 4 processes on 2 cores: auto parks instead of spinning
)


def scenarios(seconds: float, speed1_seconds: float) -> dict[str, list[str]]:
    return {
        "sim-speed0": ["--speed", "0", "--duration", str(seconds)],
        "btc-speed0": ["--replay", str(BTC), "--speed", "0"],
        "btc-speed1": ["--replay", str(BTC), "--speed", "1", "--replay-duration", str(speed1_seconds)],
    }


def run_once(args: list[str], placement: str, out: Path) -> dict:
    before = set(out.iterdir()) if out.exists() else set()
    cmd = [sys.executable, str(ROOT / "run.py"), "--quiet", "--out", str(out), "--placement", placement, *args]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"run failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr}")
    (run_dir,) = [p for p in out.iterdir() if p not in before]
    return json.loads((run_dir / "summary.json").read_text())


def fmt_us(ns: float) -> str:
    return f"{ns / 1e3:.1f}"


def soak(seconds: float, out: Path) -> None:
    cmd = [sys.executable, str(ROOT / "run.py"), "--out", str(out), "--duration", str(seconds), "--quiet"]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples: dict[int, list[tuple[float, int]]] = {}
    t0 = time.monotonic()
    while p.poll() is None:
        time.sleep(5)
        for pid in [p.pid, *_children(p.pid)]:  # the launcher too: it holds the sink and the interval logs
            rss = _rss_kb(pid)
            if rss:
                samples.setdefault(pid, []).append((time.monotonic() - t0, rss))
        print(f"\r  {time.monotonic() - t0:6.0f} s / {seconds:.0f} s", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    print(f"# soak: simulator at speed 1 for {seconds:.0f} s; resident memory per stage process (MiB)\n")
    marks = [30.0, seconds / 4, seconds / 2, 3 * seconds / 4]
    print("| process | " + " | ".join(f"at {m:.0f} s" for m in marks) + " | end | growth after 30 s |")
    print("|---" * (len(marks) + 3) + "|")
    for pid, s in samples.items():
        at = [next((r for t, r in s if t >= m), s[-1][1]) for m in marks]
        who = "launcher" if pid == p.pid else f"stage {pid}"
        cells = " | ".join(f"{r / 1024:.1f}" for r in at)
        print(f"| {who} | {cells} | {s[-1][1] / 1024:.1f} | {(s[-1][1] - at[0]) / 1024:+.1f} |")


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = (task / "children").read_text().split()
        except OSError:
            continue
        for k in kids:
            try:
                if b"spawn_main" in Path(f"/proc/{k}/cmdline").read_bytes():
                    out.append(int(k))
            except OSError:
                pass
    return out


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--only", action="append", help="scenario name (repeatable): sim-speed0, btc-speed0, btc-speed1")
    ap.add_argument("--placements", action="append", help="placement text (repeatable; default: three layouts)")
    ap.add_argument("--seconds", type=float, default=10, help="simulator run length (default 10)")
    ap.add_argument("--speed1-seconds", type=float, default=120,
                    help="seconds of the capture replayed at speed 1 (default 120: all of it)")
    ap.add_argument("--soak", type=float, metavar="S", help="instead: memory soak of S seconds on the simulator")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tickpipe-bench-") as tmp:
        out = Path(tmp)
        if args.soak:
            soak(args.soak, out)
            return 0
        todo = scenarios(args.seconds, args.speed1_seconds)
        names = args.only or list(todo)
        if any(n.startswith("btc") for n in names) and not BTC.is_file():
            print(f"skipping btc-* scenarios: {BTC} not found (set TICKPIPE_DATA)", file=sys.stderr)
            names = [n for n in names if not n.startswith("btc")]
        placements = args.placements or list(PLACEMENTS)
        load = os.getloadavg()[0]
        print(f"# tickpipe pipeline benchmark\n\n{os.cpu_count()} CPUs, load average at start {load:.2f}\n")
        print("| scenario | placement | msgs/s | records/s | feed late p99 µs | feed→book p50/p99 µs | "
              "book→strategy p50/p99 µs | tick→decision p50 / p99 / p99.9 / max µs | orders | alerts |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        results = []
        for name in names:
            for placement in placements:
                print(f"  running {name} [{placement}] ...", file=sys.stderr, flush=True)
                s = run_once(todo[name], placement, out)
                h = s["histograms"]
                t2d, fb, bs, late = h["tick_to_decision"], h["feed→book"], h["book→strategy"], h["feed.lateness"]
                r = s["rates"]
                print(f"| {name} | `{placement}` | {r['messages_per_s']:,.0f} | {r['records_per_s']:,.0f} | "
                      f"{fmt_us(late['p99'])} | {fmt_us(fb['p50'])} / {fmt_us(fb['p99'])} | "
                      f"{fmt_us(bs['p50'])} / {fmt_us(bs['p99'])} | {fmt_us(t2d['p50'])} / {fmt_us(t2d['p99'])} / "
                      f"{fmt_us(t2d['p99.9'])} / {fmt_us(t2d['max'])} | {s['counters']['orders_sink']['received']} | "
                      f"{s['counters']['inference']['alerts']} |", flush=True)
                results.append({"scenario": name, "placement": placement, "rates": r, "histograms": h,
                                "counters": s["counters"]})
        if args.json:
            Path(args.json).write_text(json.dumps({"load_at_start": load, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
