#!/usr/bin/env python
"""Whole-pipeline benchmark: run.py per source × placement, then throughput and latency from each report.

    python scripts/bench_pipeline.py                       # sim + the BTCUSDT capture, every placement
    python scripts/bench_pipeline.py --only sim-speed0 --placements "feed,book,strategy@0 inference@1"
    python scripts/bench_pipeline.py --only btc-speed0 --only btc-bin-speed0 --repeat 5   # JSON vs binary
    python scripts/bench_pipeline.py --soak 600            # memory over a 10-minute simulator run
    python scripts/bench_pipeline.py --exporter-ab --only sim-speed1 --repeat 5   # Prometheus exporter off vs on
    python scripts/bench_pipeline.py --exporter-within --only sim-speed1 --seconds 125 --repeat 4   # within runs

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
  tick-to-decision p50 / p99 medians of both and their ratio. Runs differ by ±10% on this VM, so a handful
  a side cannot resolve 1%.
- `--exporter-within`: the exporter on in every run, and inside each run windows of --window seconds in
  which a thread (pinned to --scraper-cpus, off the spinning chain) GETs /metrics every --scrape-interval
  (0: back to back) alternate with silent windows, ABBA. Each window's tick-to-decision histogram is the
  run's 1 s .hlog intervals inside it. Three estimates of the on/off p50 ratio: (1) each scraped window
  against its silent neighbour; (2) crossover: with --repeat 2+, odd runs use the opposite schedule (BAAB),
  so window i scraped in one run is silent in the other, on the same simulated market; (3) with back-to-
  back scraping, the p50 of the silent distribution mixed with the scraped one in the ratio of the scrape
  rates (1/s, 1/15 s over the rate achieved): what a Prometheus-like rate would give if each scrape's
  disturbance is independent of the others.
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
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the project's modules (procs, shm), imported where used
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


def run_once(args: list[str], placement: str, out: Path, scrape_port: int = 0,
             scraper_cls: type[_Scraper] | None = None) -> dict:
    """One run.py run; with `scrape_port`, the exporter on that port and a scraper (`scraper_cls`, default
    _Scraper: a GET every second) polling it (the summary then has "scrapes": how many GETs returned the
    metrics, "scraper": the scraper, and "run_dir")."""
    before = set(out.iterdir()) if out.exists() else set()
    cmd = [sys.executable, str(ROOT / "run.py"), "--quiet", "--out", str(out), "--placement", placement, *args]
    if scrape_port:
        cmd += ["--metrics-port", str(scrape_port)]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    scraper = (scraper_cls or _Scraper)(scrape_port, p.pid) if scrape_port else None
    stdout, stderr = p.communicate()
    if scraper is not None:
        scraper.stop()
    if p.returncode != 0:
        raise SystemExit(f"run failed ({p.returncode}): {' '.join(cmd)}\n{stderr}{stdout}")
    (run_dir,) = [d for d in out.iterdir() if d not in before]
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["run_dir"] = str(run_dir)
    if scraper is not None:
        summary["scrapes"] = scraper.ok
        summary["scraper"] = scraper
    return summary


class _Scraper:
    """What Prometheus does to the exporter: GET /metrics every second (from this, the benchmark's process)."""

    def __init__(self, port: int, pid: int = 0, interval_s: float = 1.0) -> None:
        self.url, self.interval_s, self.ok = f"http://127.0.0.1:{port}/metrics", interval_s, 0
        self.pid = pid  # run.py's launcher: its CPU time per window prices a scrape
        self.busy_s = 0.0  # wall time inside successful GETs
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.ok += self._get()

    def _get(self) -> bool:
        t = time.perf_counter()
        try:
            with urllib.request.urlopen(self.url, timeout=2) as r:
                ok = r.status == 200 and b"tickpipe_e2e_latency_seconds_bucket" in r.read()
        except OSError:
            return False  # not listening yet (stages starting) or already gone
        if ok:
            self.busy_s += time.perf_counter() - t
        return ok

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


class _WindowScraper(_Scraper):
    """Scrapes in alternate windows of one run: silent (off) or a GET every `interval_s` (on; 0: back to
    back), in ABBA order (off on, on off, ...) so a drift within the run weighs on both alike. Windows
    start `warmup_s` after the first successful GET (the pipeline is then live); `windows` holds, per
    window, its mode, t0 and t1 (epoch seconds: the clock of the run's .hlog stamps), the GETs and the
    seconds spent inside them."""

    window_s = 5.0
    warmup_s = 10.0
    interval_s = 1.0
    cpus: set[int] | None = None
    phase = 0  # 2: BAAB instead of ABBA, so window i of an odd run is scraped where the even run's was silent

    def __init__(self, port: int, pid: int = 0) -> None:
        self.windows: list[dict] = []
        super().__init__(port, pid, self.interval_s)

    def _run(self) -> None:
        if self.cpus:
            # where a co-located Prometheus belongs: off the spinning stages' cores (only the exporter is measured)
            os.sched_setaffinity(threading.get_native_id(), self.cpus)
        while not self._get():
            if self._stop.wait(0.2):
                return
        self.ok += 1
        if self._stop.wait(self.warmup_s):
            return
        i = 0
        while not self._stop.is_set():
            mode = "on" if (i + self.phase) % 4 in (1, 2) else "off"
            t0, busy0, cpu0 = time.time(), self.busy_s, _cpu_s(self.pid)
            t1 = t0 + self.window_s
            n = 0
            while (left := t1 - time.time()) > 0:
                if mode == "on":
                    n += self._get()
                    left = min(self.interval_s, t1 - time.time())
                if self._stop.wait(max(left, 0.0)):
                    return  # the run ended inside this window: it is not counted
            self.ok += n
            self.windows.append({"i": i, "mode": mode, "t0": t0, "t1": t1, "scrapes": n, "busy_s": self.busy_s - busy0,
                                 "launcher_cpu_s": _cpu_s(self.pid) - cpu0})
            i += 1


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (every thread), 0.0 when unknown."""
    from procs.prom import proc_stat

    got = proc_stat(pid) if pid else None
    return got[0] if got else 0.0


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


def window_histograms(run_dir: Path, windows: list[dict], name: str = "strategy.e2e") -> list[dict]:
    """Per scrape window: the run's .hlog intervals of `name` that lie wholly inside it, merged into one
    shm.hdr.Histogram ("hist"), with its count, p50 and p99 (ns). Windows holding no whole interval are dropped."""
    from hdrh.histogram import HdrHistogram
    from hdrh.log import HistogramLogReader

    from procs.report import hlog_name
    from shm.hdr import HIGHEST, LOWEST, SIG_FIGS, Histogram

    merged = [Histogram() for _ in windows]
    inside = [0] * len(windows)
    reader = HistogramLogReader(str(Path(run_dir) / "hlog" / f"{hlog_name(name)}.hlog"),
                                HdrHistogram(LOWEST, HIGHEST, SIG_FIGS))
    try:
        while (h := reader.get_next_interval_histogram()) is not None:
            t0, t1 = h.get_start_time_stamp() / 1000.0, h.get_end_time_stamp() / 1000.0
            for i, w in enumerate(windows):
                if t0 >= w["t0"] and t1 <= w["t1"]:
                    merged[i].counts += Histogram.from_hdrh(h).counts
                    inside[i] += 1
                    break
    finally:
        reader.close()
    return [w | {"intervals": k, "hist": h, "count": h.count, "p50": h.percentile(50.0), "p99": h.percentile(99.0)}
            for w, h, k in zip(windows, merged, inside, strict=True) if k and h.count]


def paired_ratios(wins: list[dict]) -> list[dict]:
    """on/off ratios of p50 and p99 for each adjacent (off, on) or (on, off) pair of windows in ABBA order."""
    out = []
    for a, b in zip(wins[0::2], wins[1::2], strict=False):
        if {a["mode"], b["mode"]} != {"on", "off"}:
            continue
        on, off = (a, b) if a["mode"] == "on" else (b, a)
        out.append({k: on[k] / max(off[k], 1) for k in ("p50", "p99")})
    return out


def crossover_ratios(a: list[dict], b: list[dict]) -> list[dict]:
    """on/off ratios of the same window position in two runs of one seeded scenario with opposite schedules
    (ABBA and BAAB): the market is the same in both, and each run is scraped half the time, so neither the
    market's calm and busy stretches nor one run being faster than the other enter the ratio."""
    by_i = {w["i"]: w for w in b}
    out = []
    for w in a:
        o = by_i.get(w["i"])
        if o is None or o["mode"] == w["mode"]:
            continue
        on, off = (w, o) if w["mode"] == "on" else (o, w)
        out.append({k: on[k] / max(off[k], 1) for k in ("p50", "p99")})
    return out


def geo_ci(ratios: list[float], seed: int = 0, n_boot: int = 10_000) -> tuple[float, float, float]:
    """Geometric mean of ratios and its percentile-bootstrap 95% interval."""
    import numpy as np

    logs = np.log(np.asarray(ratios, float))
    rng = np.random.default_rng(seed)
    boot = logs[rng.integers(0, len(logs), (n_boot, len(logs)))].mean(axis=1)
    return float(np.exp(logs.mean())), float(np.exp(np.percentile(boot, 2.5))), float(np.exp(np.percentile(boot, 97.5)))


def mixture_percentile(off: Any, on: Any, w: float, p: float) -> float:
    """Percentile p of (1 - w) * off + w * on, both normalised (shm.hdr.Histogram): the distribution when a
    fraction w of the scraped windows' scrapes happen (each scrape's disturbance taken as independent)."""
    import numpy as np

    from shm.hdr import highest_equivalent

    mix = (1.0 - w) * off.counts / max(off.count, 1) + w * on.counts / max(on.count, 1)
    idx = int(np.searchsorted(np.cumsum(mix), p / 100.0 - 1e-12))
    return float(highest_equivalent(idx))


#: Prometheus-like scrape rates (per second) the back-to-back figures are scaled to: 1 s and 15 s intervals.
RATES = (1.0, 1 / 15)


def exporter_within(todo: dict[str, list[str]], names: list[str], placements: list[str], repeat: int, out: Path,
                    window_s: float, interval_s: float, scraper_cpus: set[int] | None = None) -> dict:
    """The exporter on in every run; within each run, scraped windows alternate with silent ones (ABBA), and
    tick-to-decision p50/p99 of each scraped window is divided by its silent neighbour's. Then, from the
    pooled histograms, the p50 expected at Prometheus-like rates (1 and 1/15 per second): the silent
    distribution mixed with the scraped one in the ratio of the scrape rates."""
    from shm.hdr import Histogram

    _WindowScraper.window_s, _WindowScraper.interval_s, _WindowScraper.cpus = window_s, interval_s, scraper_cpus
    rows: dict[str, dict] = {}
    for name in names:
        for placement in placements:
            pairs: list[dict] = []
            cross: list[dict] = []
            runs: list[list[dict]] = []
            pooled = {"on": Histogram(), "off": Histogram()}
            scrapes, on_s, busy_s = 0, 0.0, 0.0
            cpu = {"on": 0.0, "off": 0.0}  # launcher CPU and seconds over every window, scrapes in the scraped ones
            secs = {"on": 0.0, "off": 0.0}
            cpu_scrapes = 0
            for rep in range(repeat):
                print(f"  running {name} [{placement}] {rep + 1}/{repeat}: windows of {window_s:g} s, scraping every "
                      f"{interval_s:g} s in the 'on' ones ...", file=sys.stderr, flush=True)
                _WindowScraper.phase = 2 * (rep % 2)
                s = run_once(todo[name], placement, out / "runs", scrape_port=_free_port(), scraper_cls=_WindowScraper)
                wins = window_histograms(Path(s["run_dir"]), s["scraper"].windows)
                got = paired_ratios(wins)
                pairs += got
                runs.append(wins)
                if rep % 2:
                    cross += crossover_ratios(runs[-2], wins)
                for w in s["scraper"].windows:
                    cpu[w["mode"]] += w["launcher_cpu_s"]
                    secs[w["mode"]] += w["t1"] - w["t0"]
                    cpu_scrapes += w["scrapes"]
                for w in wins:
                    pooled[w["mode"]].counts += w["hist"].counts
                    if w["mode"] == "on":
                        scrapes += w["scrapes"]
                        on_s += w["t1"] - w["t0"]
                        busy_s += w["busy_s"]
                    print(f"    {w['i']:3d} {w['mode']:3s} {w['t0'] - wins[0]['t0']:6.1f} s  {w['count']:7,} "
                          f"decisions  p50 {fmt_us(w['p50'])} µs  p99 {fmt_us(w['p99'])} µs  {w['scrapes']} scrapes",
                          file=sys.stderr)
                r50 = statistics.median(g["p50"] for g in got) if got else float("nan")
                print(f"| {name} | `{placement}` | {rep + 1} | {len(wins)} | {len(got)} | "
                      f"{sum(w['scrapes'] for w in wins)} | {r50:.4f} |", flush=True)
            if not pairs or not scrapes:
                print(f"{name} [{placement}]: no complete window pairs (run too short for --window {window_s:g})")
                continue
            rate = scrapes / on_s
            off50, on50 = pooled["off"].percentile(50.0), pooled["on"].percentile(50.0)
            get_s = busy_s / scrapes
            # back to back only: the scraped distribution is then the disturbed one, to be diluted
            est = {r: mixture_percentile(pooled["off"], pooled["on"], min(1.0, r / rate), 50.0) / off50
                   for r in RATES} if interval_s <= 0 else {}
            # any mode: if every decision made while a GET is in flight (a fraction get_s * r of the time) went to
            # the far tail, the median would move up to the silent distribution's 50 / (1 - f) percentile
            bound = {r: pooled["off"].percentile(min(100.0, 50.0 / max(1e-9, 1.0 - get_s * r))) / off50 for r in RATES}
            rows[f"{name} {placement}"] = {
                "pairs": pairs, "geo_p50": geo_ci([p["p50"] for p in pairs]), "crossover": cross,
                "cross_p50": geo_ci([p["p50"] for p in cross]) if cross else None,
                "geo_p99": geo_ci([p["p99"] for p in pairs]), "scrapes": scrapes, "scrapes_per_s": rate,
                "get_ms": 1e3 * get_s, "pooled_p50": {"off": off50, "on": on50},
                # the launcher's CPU in scraped windows over what it uses in silent ones, per scrape
                "cpu_ms_per_scrape": 1e3 * (cpu["on"] - cpu["off"] / max(secs["off"], 1e-9) * secs["on"])
                / max(cpu_scrapes, 1),
                "pooled_p99": {"off": pooled["off"].percentile(99.0), "on": pooled["on"].percentile(99.0)},
                "estimated_p50_ratio": {f"{r:g}/s": v for r, v in est.items()},
                "worst_case_p50_ratio": {f"{r:g}/s": v for r, v in bound.items()}}
    print(f"\n# exporter scraped vs silent within runs (windows of {window_s:g} s; scraped windows: "
          f"{'GETs back to back' if interval_s <= 0 else f'a GET every {interval_s:g} s'}): tick-to-decision\n")
    print("| scenario | placement | pairs | scrapes/s scraped | GET ms | launcher CPU ms per scrape | "
          "p50 on/off: geometric mean [95% CI] | "
          "crossover pairs: p50 on/off [95% CI] | pooled p50 off / on µs | p99 on/off: geometric mean [95% CI] | "
          "est. p50 ratio at 1/s, 1/15 s | worst case at 1/s, 1/15 s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for key, r in rows.items():
        name, placement = key.split(" ", 1)
        (g, lo, hi), (g9, lo9, hi9) = r["geo_p50"], r["geo_p99"]
        est = ", ".join(f"{v:.4f}" for v in r["estimated_p50_ratio"].values()) or "- (needs --scrape-interval 0)"
        xc = (f"{len(r['crossover'])}: {r['cross_p50'][0]:.4f} [{r['cross_p50'][1]:.4f}, {r['cross_p50'][2]:.4f}]"
              if r["cross_p50"] else "- (needs --repeat 2+)")
        print(f"| {name} | `{placement}` | {len(r['pairs'])} | {r['scrapes_per_s']:.1f} | {r['get_ms']:.2f} | "
              f"{r['cpu_ms_per_scrape']:.2f} | "
              f"{g:.4f} [{lo:.4f}, {hi:.4f}] | {xc} | "
              f"{fmt_us(r['pooled_p50']['off'])} / {fmt_us(r['pooled_p50']['on'])} | "
              f"{g9:.4f} [{lo9:.4f}, {hi9:.4f}] | "
              f"{est} | "
              f"{', '.join(f'{v:.4f}' for v in r['worst_case_p50_ratio'].values())} |")
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
    ap.add_argument("--placements", action="append",
                    help=f"placement text (repeatable; default: the {len(PLACEMENTS)} layouts of PLACEMENTS)")
    ap.add_argument("--seconds", type=float, default=10,
                    help="simulator and loop run length (default 10)")
    ap.add_argument("--speed1-seconds", type=float, default=120,
                    help="seconds of the capture replayed at speed 1 (default 120: all of it)")
    ap.add_argument("--soak", type=float, metavar="S", help="instead: memory soak of S seconds on the simulator")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--exporter-ab", action="store_true",
                    help="run each scenario without and with the Prometheus exporter (scraped every second), "
                         "alternating, and compare tick-to-decision p50/p99")
    ap.add_argument("--exporter-within", action="store_true",
                    help="one run per scenario with the exporter on; inside it, windows scraped every "
                         "--scrape-interval alternate (ABBA) with silent ones, and tick-to-decision p50/p99 of each "
                         "scraped window is divided by its silent neighbour's (a paired comparison: the run-to-run "
                         "spread drops out)")
    ap.add_argument("--window", type=float, default=5.0, metavar="S",
                    help="--exporter-within window length (default 5 s)")
    ap.add_argument("--scrape-interval", type=float, default=1.0, metavar="S",
                    help="--exporter-within: seconds between GETs in a scraped window (default 1; Prometheus's "
                         "scrape_interval is usually 15 s); 0: back to back")
    ap.add_argument("--scraper-cpus", default=str((os.cpu_count() or 1) - 1), metavar="LIST",
                    help="--exporter-within: CPUs the scraping thread runs on, comma-separated (default the last "
                         "CPU: off the spinning chain of the 2-core placements; '' for anywhere)")
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
        if args.exporter_within:
            print("| scenario | placement | run | windows | pairs | scrapes | p50 on/off median |")
            print("|---|---|---|---|---|---|---|")
            cpus = {int(c) for c in args.scraper_cpus.split(",") if c.strip()} or None
            within = exporter_within(todo, names, placements, args.repeat, out, args.window, args.scrape_interval,
                                     cpus)
            end = os.getloadavg()
            print(f"\nload average at the end: {end[0]:.2f} {end[1]:.2f} {end[2]:.2f} (1, 5, 15 min)")
            if args.json:
                Path(args.json).write_text(json.dumps({"load_at_start": load, "load_at_end": end,
                                                       "exporter_within": within}, indent=1, default=str))
            return 0
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
