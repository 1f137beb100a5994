#!/usr/bin/env python
"""Whole-pipeline benchmark: run.py per source × placement, then throughput and latency from each report.

    python scripts/bench_pipeline.py                       # sim + the BTCUSDT capture, every placement
    python scripts/bench_pipeline.py --only sim-speed0 --placements "feed,book,strategy@0 inference@1"
    python scripts/bench_pipeline.py --only btc-speed0 --only btc-bin-speed0 --repeat 5   # JSON vs binary
    python scripts/bench_pipeline.py --soak 600            # memory over a 10-minute simulator run

Scenarios:
- `sim-speed0`: the built-in market as fast as the pipeline takes it (messages/s sustained).
- `btc-speed0`: the real BTCUSDT capture (../shared/data/binance) as fast as possible.
- `btc-bin-speed0`: the same capture converted (into the temporary folder, by scripts/convert_capture.py's
  code) to a binary capture, as fast as possible: the feed copies records instead of parsing JSON.
  A comparison table of the JSON and binary medians follows the main table.
- `btc-speed1`: the same capture in real time: tick-to-decision without coordinated omission
  (t_origin_ns is the scheduled time, so any stall shows).
- `live-local`: live mode (`--live ... --local-exchange`) for --seconds: the simulator's four symbols served
  over Binance's WebSocket + REST protocol on loopback by the local exchange, which runs inside run.py's
  launcher process (so it shares the 2 cores with the stages). tick-to-decision runs from the moment the
  feed's recv() returned the frame; the exchange's own pacing and the loopback hop are not in it.
- Only with --only: `btc-loop-speed0` and `btc-bin-loop-speed0` loop the capture for --seconds, for a
  sustained rate (a single pass of the binary capture takes ~30 ms, so the run's start and stop weigh
  in). Passes after the first replay the same update ids, so the book drops their diffs as stale: less
  book work per record than in the first pass, for both formats alike.
Each run is `python run.py ... --quiet`; the figures come from its summary.json. The soak mode samples
the resident memory of every stage process while the simulator runs at speed 1 and prints the growth.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("TICKPIPE_DATA", ROOT.parent / "shared" / "data")) / "binance"
BTC = DATA / "usdm_btcusdt_20240808_120s.lines.gz"
#: Scenarios run when --only is not given (the loop ones are opt-in).
DEFAULT = ("sim-speed0", "btc-speed0", "btc-bin-speed0", "btc-speed1", "live-local")

PLACEMENTS = (
    "feed,book,strategy@0 inference@1",  # the 2-core default: the critical chain in one thread, inference beside
    "feed,book@0 strategy,inference@1",  # 2 pinned processes, strategy shares its thread with inference
    "feed,book,strategy,inference@0",  # one process: no hops between cores at all
    "feed@0 book@1 strategy@0 inference@1",  # 4 processes on 2 cores: auto parks instead of spinning
)


def scenarios(seconds: float, speed1_seconds: float, btc_bin: Path) -> dict[str, list[str]]:
    return {
        "sim-speed0": ["--speed", "0", "--duration", str(seconds)],
        "btc-speed0": ["--replay", str(BTC), "--speed", "0"],
        "btc-bin-speed0": ["--replay", str(btc_bin), "--speed", "0"],
        "btc-speed1": ["--replay", str(BTC), "--speed", "1", "--replay-duration", str(speed1_seconds)],
        "live-local": ["--live", "BTCUSDT,ETHUSDT,SOLUSDT,BNBUSDT", "--local-exchange", "--duration", str(seconds)],
        "btc-loop-speed0": ["--replay", str(BTC), "--speed", "0", "--loop", "--duration", str(seconds)],
        "btc-bin-loop-speed0": ["--replay", str(btc_bin), "--speed", "0", "--loop", "--duration", str(seconds)],
    }


def convert_btc(out: Path) -> Path:
    """The BTCUSDT capture as a binary capture in `out` (the converter's own code, in this process)."""
    sys.path.insert(0, str(ROOT))
    from procs.sources.binary import convert_capture

    dst = out / "btc.tpc"
    t0 = time.monotonic()
    h = convert_capture(BTC, dst)
    print(f"  converted {BTC.name} → {dst.name}: {h['messages']:,} messages, {h['records']:,} records in "
          f"{time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)
    return dst


def compare_formats(results: list[dict]) -> None:
    """Medians of the JSON and binary runs of the capture, per placement, side by side."""
    pairs = [("btc-speed0", "btc-bin-speed0"), ("btc-loop-speed0", "btc-bin-loop-speed0")]
    rows = []
    for js, bn in pairs:
        for placement in dict.fromkeys(r["placement"] for r in results):
            got = {}
            for name in (js, bn):
                rs = [r["rates"] for r in results if r["scenario"] == name and r["placement"] == placement]
                if rs:
                    got[name] = (statistics.median(r["messages_per_s"] for r in rs),
                                 statistics.median(r["records_per_s"] for r in rs), len(rs))
            if len(got) == 2:
                (jm, jr, jn), (bm, br, bnn) = got[js], got[bn]
                rows.append(f"| {js} vs {bn} | `{placement}` | {jm:,.0f} | {jr:,.0f} | {bm:,.0f} | {br:,.0f} | "
                            f"{br / max(jr, 1e-9):.1f}x | {jn} / {bnn} |")
    if rows:
        print("\n# JSON vs binary capture (medians)\n")
        print("| scenarios | placement | JSON msgs/s | JSON records/s | binary msgs/s | binary records/s | "
              "binary / JSON | runs |")
        print("|---|---|---|---|---|---|---|---|")
        print("\n".join(rows))


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


def table_row(name: str, placement: str, s: dict) -> str:
    h, r = s["histograms"], s["rates"]
    t2d, fb, bs, late = h["tick_to_decision"], h["feed→book"], h["book→strategy"], h["feed.lateness"]
    return (f"| {name} | `{placement}` | {r['messages_per_s']:,.0f} | {r['records_per_s']:,.0f} | "
            f"{fmt_us(late['p99'])} | {fmt_us(fb['p50'])} / {fmt_us(fb['p99'])} | "
            f"{fmt_us(bs['p50'])} / {fmt_us(bs['p99'])} | {fmt_us(t2d['p50'])} / {fmt_us(t2d['p99'])} / "
            f"{fmt_us(t2d['p99.9'])} / {fmt_us(t2d['max'])} | {s['counters']['orders_sink']['received']} | "
            f"{s['counters']['inference']['alerts']} |")


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
    ap.add_argument("--only", action="append",
                    help="scenario name (repeatable): sim-speed0, btc-speed0, btc-bin-speed0, btc-speed1, live-local, "
                         "btc-loop-speed0, btc-bin-loop-speed0 (default: all but the loop ones)")
    ap.add_argument("--repeat", type=int, default=1, metavar="N",
                    help="run each scenario and placement N times (one row each; the comparison uses medians)")
    ap.add_argument("--placements", action="append", help="placement text (repeatable; default: three layouts)")
    ap.add_argument("--seconds", type=float, default=10,
                    help="simulator and loop run length (default 10)")
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
        todo = scenarios(args.seconds, args.speed1_seconds, out / "btc.tpc")
        names = args.only or list(DEFAULT)
        unknown = [n for n in names if n not in todo]
        if unknown:
            ap.error(f"unknown scenario(s) {unknown}: expected some of {list(todo)}")
        if any(n.startswith("btc") for n in names) and not BTC.is_file():
            print(f"skipping btc-* scenarios: {BTC} not found (set TICKPIPE_DATA)", file=sys.stderr)
            names = [n for n in names if not n.startswith("btc")]
        if any(n.startswith("btc-bin") for n in names):
            convert_btc(out)
        placements = args.placements or list(PLACEMENTS)
        load = os.getloadavg()[0]
        print(f"# tickpipe pipeline benchmark\n\n{os.cpu_count()} CPUs, load average at start {load:.2f}\n")
        print("| scenario | placement | msgs/s | records/s | feed late p99 µs | feed→book p50/p99 µs | "
              "book→strategy p50/p99 µs | tick→decision p50 / p99 / p99.9 / max µs | orders | alerts |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        results = []
        for name in names:
            for placement in placements:
                for rep in range(args.repeat):
                    print(f"  running {name} [{placement}] {rep + 1}/{args.repeat} ...", file=sys.stderr, flush=True)
                    s = run_once(todo[name], placement, out / "runs")
                    print(table_row(name, placement, s), flush=True)
                    results.append({"scenario": name, "placement": placement, "rates": s["rates"],
                                    "histograms": s["histograms"], "counters": s["counters"]})
        compare_formats(results)
        if args.json:
            Path(args.json).write_text(json.dumps({"load_at_start": load, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
