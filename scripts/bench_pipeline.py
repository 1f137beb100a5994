#!/usr/bin/env python
"""Whole-pipeline benchmark: run.py per source × placement, then throughput and latency from each report.

    python scripts/bench_pipeline.py                       # sim + the BTCUSDT capture, every placement
    python scripts/bench_pipeline.py --only sim-speed0 --placements "feed,book,strategy@0 inference@1"
    python scripts/bench_pipeline.py --only btc-speed0 --only btc-bin-speed0 --repeat 5   # JSON vs binary
    python scripts/bench_pipeline.py --soak 600            # memory over a 10-minute simulator run
    python scripts/bench_pipeline.py --exporter-ab --only sim-speed1 --repeat 5   # Prometheus exporter off vs on

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
- Only with --only: `sim-speed1`, the built-in market in real time for --seconds (what the exporter
  comparison uses: tick-to-decision at the pace a live market has).
- `--exporter-ab`: every run twice, alternating, without and with the Prometheus exporter
  (`--metrics-port`, a scraper thread GETting /metrics every second while the run goes), then the
  tick-to-decision p50 / p99 medians of both and their ratio.
Each run is `python run.py ... --quiet`; the figures come from its summary.json. The soak mode samples
the resident memory of every stage process while the simulator runs at speed 1 and prints the growth.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
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
        "sim-speed1": ["--speed", "1", "--duration", str(seconds)],
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


def run_once(args: list[str], placement: str, out: Path, scrape_port: int = 0) -> dict:
    """One run.py run; with `scrape_port`, the exporter on that port and a scraper polling it every second
    (the summary then has "scrapes": how many GETs returned the metrics)."""
    before = set(out.iterdir()) if out.exists() else set()
    cmd = [sys.executable, str(ROOT / "run.py"), "--quiet", "--out", str(out), "--placement", placement, *args]
    if scrape_port:
        cmd += ["--metrics-port", str(scrape_port)]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    scraper = _Scraper(scrape_port) if scrape_port else None
    stdout, stderr = p.communicate()
    if scraper is not None:
        scraper.stop()
    if p.returncode != 0:
        raise SystemExit(f"run failed ({p.returncode}): {' '.join(cmd)}\n{stderr}{stdout}")
    (run_dir,) = [d for d in out.iterdir() if d not in before]
    summary = json.loads((run_dir / "summary.json").read_text())
    if scraper is not None:
        summary["scrapes"] = scraper.ok
    return summary


class _Scraper:
    """What Prometheus does to the exporter: GET /metrics every second (from this, the benchmark's process)."""

    def __init__(self, port: int, interval_s: float = 1.0) -> None:
        self.url, self.interval_s, self.ok = f"http://127.0.0.1:{port}/metrics", interval_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:
                    if r.status == 200 and b"tickpipe_e2e_latency_seconds_bucket" in r.read():
                        self.ok += 1
            except OSError:
                pass  # not listening yet (stages starting) or already gone

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def exporter_ab(todo: dict[str, list[str]], names: list[str], placements: list[str], repeat: int, out: Path) -> dict:
    """Each scenario run `repeat` times without and with the exporter, alternating; tick-to-decision p50/p99."""
    rows: dict[str, dict] = {}
    for name in names:
        for placement in placements:
            got: dict[str, list[dict]] = {"off": [], "on": []}
            for rep in range(repeat):
                for mode in (("off", "on") if rep % 2 == 0 else ("on", "off")):  # alternate: drift hits both
                    print(f"  running {name} [{placement}] exporter {mode} {rep + 1}/{repeat} ...", file=sys.stderr,
                          flush=True)
                    s = run_once(todo[name], placement, out / "runs", scrape_port=_free_port() if mode == "on" else 0)
                    t2d = s["histograms"]["tick_to_decision"]
                    got[mode].append({"p50": t2d["p50"], "p99": t2d["p99"], "count": t2d["count"],
                                      "scrapes": s.get("scrapes", 0)})
                    print(f"| {name} | `{placement}` | {mode} | {rep + 1} | {t2d['count']:,} | {fmt_us(t2d['p50'])} | "
                          f"{fmt_us(t2d['p99'])} | {s.get('scrapes', '-')} |", flush=True)
            rows[f"{name} {placement}"] = got
    print("\n# exporter off vs on: medians of tick-to-decision\n")
    print("| scenario | placement | runs | p50 off µs | p50 on µs | p50 on / off | p99 off µs | p99 on µs | "
          "p99 on / off | scrapes per run |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for key, got in rows.items():
        name, placement = key.split(" ", 1)
        med = {m: {k: statistics.median(r[k] for r in got[m]) for k in ("p50", "p99")} for m in got}
        scrapes = statistics.median(r["scrapes"] for r in got["on"])
        print(f"| {name} | `{placement}` | {len(got['off'])} + {len(got['on'])} | {fmt_us(med['off']['p50'])} | "
              f"{fmt_us(med['on']['p50'])} | {med['on']['p50'] / max(med['off']['p50'], 1):.3f} | "
              f"{fmt_us(med['off']['p99'])} | {fmt_us(med['on']['p99'])} | "
              f"{med['on']['p99'] / max(med['off']['p99'], 1):.3f} | {scrapes:.0f} |")
    return rows


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
    ap.add_argument("--exporter-ab", action="store_true",
                    help="run each scenario without and with the Prometheus exporter (scraped every second), "
                         "alternating, and compare tick-to-decision p50/p99")
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
        if args.exporter_ab:
            print("| scenario | placement | exporter | run | tick→decision count | p50 µs | p99 µs | scrapes |")
            print("|---|---|---|---|---|---|---|---|")
            ab = exporter_ab(todo, names, placements, args.repeat, out)
            end = os.getloadavg()
            print(f"\nload average at the end: {end[0]:.2f} {end[1]:.2f} {end[2]:.2f} (1, 5, 15 min)")
            if args.json:
                Path(args.json).write_text(json.dumps({"load_at_start": load, "load_at_end": end,
                                                       "exporter_ab": ab}, indent=1))
            return 0
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
