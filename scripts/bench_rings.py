#!/usr/bin/env python
"""Ring benchmark: tickpipe against the usual ways two Python processes exchange messages.

Side by side in one run, processes pinned to the CPU ids given, 64-byte records:
  * ping-pong round trip (p50, p99, p99.9, max from an HDR histogram; warm-up discarded)
  * one-way throughput, one record per call and batched (32 per call)
for tickpipe from numba, tickpipe from plain Python, the C-only floor (native/floor.c),
multiprocessing.Queue and Pipe, pyzmq ipc://, faster-fifo and iceoryx2. Then:
  * a 4-process chain on 2 cores (ping → relay → relay → relay → ping) per wait strategy
  * a parked consumer's wake-up round trip, and the CPU an idle parked consumer burns.

Every mechanism checks every sequence number it moves; nothing is timed that was not verified.
This is a benchmark, not a test: run it on a quiet machine and read medians and ratios.

    python scripts/bench_rings.py --cpus 0,1 --json bench.json
    python scripts/bench_rings.py --quick --only tickpipe-numba,mp-pipe
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_baselines as base
import _bench_tickpipe as tpb

from shm.hdr import Histogram

MECHANISMS = ("tickpipe-numba", "tickpipe-python", "c-floor", "mp-queue", "mp-pipe", "pyzmq-ipc",
              "faster-fifo", "iceoryx2")
CHAIN_STRATEGIES = ("spin", "yield", "park", "auto")


def env_info(cpus: list[int]) -> dict:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    hp = Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
    return {"cpu_model": model, "nproc": os.cpu_count(), "cpus": cpus, "kernel": platform.release(),
            "python": platform.python_version(), "loadavg_start": os.getloadavg(),
            "guest_halt_poll_ns": hp.read_text().strip() if hp.exists() else None,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S")}


def rtt_stats(samples: np.ndarray) -> dict:
    h = Histogram.from_values(samples)
    return {"p50": h.percentile(50), "p99": h.percentile(99), "p99.9": h.percentile(99.9), "max": h.max,
            "n": h.count}


def measure(name: str, cpus: list[int], n_rtt: int, n_records: int) -> dict:
    if name == "tickpipe-numba":
        rtt = tpb.chain_rtt(n_rtt, cpus, "spin")
        single = tpb.numba_throughput(n_records, cpus, 1)
        batched = tpb.numba_throughput(n_records * 4, cpus, base.BATCH)
    elif name == "tickpipe-python":
        rtt = tpb.python_rtt(max(n_rtt // 4, 1000), cpus)
        single = tpb.python_throughput(max(n_records // 20, 10_000), cpus, 1)
        batched = tpb.python_throughput(max(n_records // 4, 10_000), cpus, base.BATCH)
    elif name == "c-floor":
        if tpb.build_floor() is None:
            return {"mechanism": name, "skipped": "no C compiler (set CC)"}
        r = tpb.floor_run(["rtt", str(n_rtt), str(cpus[0]), str(cpus[1])])
        single = tpb.floor_run(["tput", str(n_records), "1", str(cpus[0]), str(cpus[1])])["throughput_per_s"]
        batched = tpb.floor_run(["tput", str(n_records * 4), str(base.BATCH), str(cpus[0]),
                                 str(cpus[1])])["throughput_per_s"]
        rtt_ns = {k: r["rtt_ns"][k] for k in ("p50", "p99", "p99.9", "max")} | {"n": r["n"]}
        return {"mechanism": name, "rtt_ns": rtt_ns,
                "throughput_per_s": {"single": round(single), "batched": round(batched)}}
    else:
        n_base = max(n_rtt // 50, 500)
        rtt = base.rtt(name, n_base, cpus)
        single = base.throughput(name, max(n_records // 100, 20_000), cpus, batched=False)
        batched = base.throughput(name, max(n_records // 20, 64_000), cpus, batched=True)
    return {"mechanism": name, "rtt_ns": rtt_stats(rtt),
            "throughput_per_s": {"single": round(single), "batched": round(batched)}}


def chain(strategy: str, cpus: list[int], n: int) -> dict:
    four = [cpus[0], cpus[1], cpus[0], cpus[1]]
    mode = {"spin": "spin", "yield": "yield", "park": "park", "auto": "yield-park"}[strategy]
    # busy spin with two spinners per core waits for the scheduler tick: only a few round trips
    count = max(n // 100, 50) if strategy == "spin" else n
    return {"strategy": strategy, "mode": mode, "rtt_ns": rtt_stats(tpb.chain_rtt(count, four, mode, warmup=20))}


def fmt_ns(v: float) -> str:
    if v >= 1e6:
        return f"{v / 1e6:.2f} ms"
    if v >= 1e4:
        return f"{v / 1e3:.1f} µs"
    return f"{v:,.0f} ns"


def fmt_rate(v: float | None) -> str:
    return "–" if not v else f"{v / 1e6:.2f} M/s" if v >= 1e6 else f"{v / 1e3:.0f} K/s"


def table(results: list[dict]) -> str:
    best = next((r for r in results if r["mechanism"] == "tickpipe-numba" and "rtt_ns" in r), None)
    lines = ["| mechanism | RTT p50 | p99 | p99.9 | max | RTT p50 vs tickpipe-numba | one per call | batched (32) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['mechanism']} | skipped: {r['skipped']} | | | | | | |")
            continue
        t = r["rtt_ns"]
        ratio = f"{t['p50'] / best['rtt_ns']['p50']:.0f}×" if best else "–"
        if best and r is best:
            ratio = "1×"
        lines.append(f"| {r['mechanism']} | {fmt_ns(t['p50'])} | {fmt_ns(t['p99'])} | {fmt_ns(t['p99.9'])} | "
                     f"{fmt_ns(t['max'])} | {ratio} | {fmt_rate(r['throughput_per_s']['single'])} | "
                     f"{fmt_rate(r['throughput_per_s']['batched'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpus", default="0,1", help="two CPU ids to pin the two ends to (default 0,1)")
    ap.add_argument("--rtt-count", type=int, default=200_000, help="round trips for the tickpipe mechanisms "
                    "(the slow baselines do 1/50 of it, at least 500)")
    ap.add_argument("--records", type=int, default=20_000_000, help="records for tickpipe's throughput runs "
                    "(batched runs move 4x; baselines move 1/100 and 1/20)")
    ap.add_argument("--only", default="", help="comma-separated mechanisms, e.g. tickpipe-numba,mp-pipe; "
                    f"known: {', '.join(MECHANISMS)}; 'none' skips them")
    ap.add_argument("--no-chain", action="store_true", help="skip the 4-process chain and the parking figures")
    ap.add_argument("--quick", action="store_true", help="tiny counts: a smoke run, not a measurement")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)

    try:
        cpus = [int(c) for c in args.cpus.split(",")]
    except ValueError:
        ap.error(f"--cpus: expected two integers like 0,1, found {args.cpus!r}")
    allowed = os.sched_getaffinity(0)
    if len(cpus) != 2 or any(c not in allowed for c in cpus):
        ap.error(f"--cpus: expected two of {sorted(allowed)}, found {args.cpus!r}")
    only = [m for m in args.only.split(",") if m] if args.only else list(MECHANISMS)
    if only == ["none"]:
        only = []
    unknown = [m for m in only if m not in MECHANISMS]
    if unknown:
        ap.error(f"--only: unknown mechanism(s) {unknown}; known: {list(MECHANISMS)}")
    n_rtt, n_rec = (2_000, 100_000) if args.quick else (args.rtt_count, args.records)

    env = env_info(cpus)
    print(f"# tickpipe ring benchmark\n\n{env['cpu_model']}, {env['nproc']} CPUs, kernel {env['kernel']}, "
          f"Python {env['python']}, pinned to CPUs {cpus}, load average at start {env['loadavg_start'][0]:.2f}, "
          f"guest_halt_poll_ns={env['guest_halt_poll_ns']}\n", flush=True)
    shm_before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    tpb._warm()
    results: list[dict] = []
    try:
        for name in only:
            print(f"measuring {name} ...", file=sys.stderr, flush=True)
            try:
                results.append(measure(name, cpus, n_rtt, n_rec))
            except ImportError as exc:
                results.append({"mechanism": name, "skipped": f"not installed ({exc.name})"})
            except Exception as exc:  # a broken baseline must not hide the others' figures
                results.append({"mechanism": name, "skipped": f"failed: {exc!r}"})
        print(table(results) + "\n")
        extra: dict = {}
        if not args.no_chain:
            print("measuring the 4-process chain and parking ...", file=sys.stderr, flush=True)
            extra["chain_4proc_2cores"] = [chain(s, cpus, max(n_rtt // 10, 500)) for s in CHAIN_STRATEGIES]
            wake = tpb.chain_rtt(max(n_rtt // 40, 200), cpus, "park-now", ping_mode="spin", gap_ns=100_000,
                                 warmup=20)
            extra["parked_wake_rtt_ns"] = rtt_stats(wake)
            extra["idle_parked_cpu_fraction"] = round(tpb.idle_cpu_fraction(cpus[1], 1.5 if args.quick else 3.0), 4)
            print("| 4 processes on 2 cores, wait | RTT p50 | p99 | p99.9 | max |\n|---|---|---|---|---|")
            for c in extra["chain_4proc_2cores"]:
                t = c["rtt_ns"]
                print(f"| {c['strategy']} ({c['mode']}) | {fmt_ns(t['p50'])} | {fmt_ns(t['p99'])} | "
                      f"{fmt_ns(t['p99.9'])} | {fmt_ns(t['max'])} |")
            w = extra["parked_wake_rtt_ns"]
            print(f"\nparked consumer woken by the producer: RTT p50 {fmt_ns(w['p50'])}, p99 {fmt_ns(w['p99'])}; "
                  f"an idle parked consumer burns {extra['idle_parked_cpu_fraction'] * 100:.2f}% of a core")
        out = {"env": env, "results": results, **extra}
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2))
            print(f"\nwrote {args.json}", file=sys.stderr)
    finally:
        # iceoryx2 keeps its own files in /dev/shm; remove the ones this run created
        if os.path.isdir("/dev/shm"):
            for f in set(os.listdir("/dev/shm")) - shm_before:
                if f.startswith("iox2_"):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join("/dev/shm", f))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
