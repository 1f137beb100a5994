#!/usr/bin/env python3
"""Parse throughput of one feed process, per message type: the numba fast path vs the orjson path, same run.

For each message set it times `Parser.parse` over the messages (cycled) with `Parser(fast=True)` and with
`Parser(fast=False)`, alternating the two within each repetition, and reports messages/s (median, p10 and
p90 of the repetitions) and ns/message, the ratio fast/orjson, and the fast path without its wrappers:
`FastDepth` (FastDepth.depth / .tick called directly: no Parser.parse routing and counting), `entry` (the
compiled kernel called straight from a Python loop: no FastDepth checks either) and `kernel` (a numba loop
over the messages: no Python at all). `wrapper` = fast − kernel, the Python layers' share.

Message sets (rows):
- depth20 real: real USD-M BTCUSDT depthUpdates of the shared capture with >= 10 levels a side, cut to their
  first 10 bids + 10 asks (all other fields as received), re-serialised compactly (Binance's own layout);
- depth20 synthetic: generated 20-level depthUpdates in the exact Binance USD-M shape (only without the
  capture, or with --synthetic);
- depth real: every depthUpdate of the captures as received (spot: the 4-symbol spot capture; USD-M: both
  USD-M captures);
- bookTicker, trade, aggTrade, spot and USD-M, as received. The spot captures hold no plain trade, so the
  spot trade row uses the built-in simulator's spot trades (same shape as Binance spot, with "M").

Wall-clock time (time.perf_counter), GC off while timing. On a shared machine the figures are noisy: the
medians are the figures to quote; the load average before and after is printed and saved.

    python scripts/bench_parse.py                  # table
    python scripts/bench_parse.py --json bench_parse.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
from numba import njit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from procs.kernels import fastparse
from procs.kernels.parse_json import Parser
from procs.sources.replay import read_capture
from shm.records import MARKET

DATA = Path(os.environ.get("TICKPIPE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "binance"))
SPOT = "spot_4sym_20211012.lines.gz"
USDM = ("usdm_4sym_20210722.lines.gz", "usdm_btcusdt_20240808_120s.lines.gz")
BTC = "usdm_btcusdt_20240808_120s.lines.gz"
#: The acceptance bar: 20-level depthUpdates through Parser.parse, messages/s, on this VM.
TARGET_DEPTH20 = 500_000
_OUT_RECORDS = 8192


@dataclass
class Row:
    name: str
    source: str
    msgs: list[tuple[int, bytes]]
    depth: bool  # depthUpdate (depth kernel) or bookTicker / trade / aggTrade (tick kernel)


def _event(raw: bytes) -> dict:
    o = orjson.loads(raw)
    return o.get("data", o)


def _kind(raw: bytes) -> str:
    d = _event(raw)
    return d.get("e") or ("snapshot" if "lastUpdateId" in d else "bookTicker")


def depth20_real(msgs: list[tuple[int, bytes]], per_side: int = 10) -> list[tuple[int, bytes]]:
    """Real depthUpdates with >= `per_side` levels a side, cut to exactly that many a side."""
    out = []
    for ts, raw in msgs:
        o = orjson.loads(raw)
        d = o.get("data", o)
        if d.get("e") != "depthUpdate" or len(d["b"]) < per_side or len(d["a"]) < per_side:
            continue
        d["b"], d["a"] = d["b"][:per_side], d["a"][:per_side]
        out.append((ts, orjson.dumps(o)))  # compact, keys in the received order: Binance's own layout
    return out


def depth20_synthetic(n: int = 2000, seed: int = 1) -> list[tuple[int, bytes]]:
    """20-level USD-M BTCUSDT depthUpdates in the exact Binance shape (prices 1 decimal, sizes 3)."""
    rng = np.random.default_rng(seed)
    out = []
    u = 5_123_107_839_020
    for k in range(n):
        mid = 6_180_000 + int(rng.integers(-5000, 5000))  # tenths of a dollar
        bids = [[f"{(mid - 1 - j) / 10:.1f}", f"{rng.integers(0, 20000) / 1000:.3f}"] for j in range(10)]
        asks = [[f"{(mid + 1 + j) / 10:.1f}", f"{rng.integers(0, 20000) / 1000:.3f}"] for j in range(10)]
        e = 1_723_161_256_314 + k
        d = {"e": "depthUpdate", "E": e, "T": e - 1, "s": "BTCUSDT", "U": u + 1, "u": u + 40, "pu": u,
             "b": bids, "a": asks}
        u += 40
        out.append((e * 1_000_000, orjson.dumps({"stream": "btcusdt@depth@0ms", "data": d})))
    return out


def build_rows(data: Path, synthetic: bool = False, sim_seconds: float = 20.0) -> tuple[list[Row], list[str]]:
    """The message sets, and notes on what is missing."""
    notes: list[str] = []
    spot = list(read_capture(data / SPOT)) if (data / SPOT).is_file() else []
    usdm = [m for f in USDM if (data / f).is_file() for m in read_capture(data / f)]
    btc = list(read_capture(data / BTC)) if (data / BTC).is_file() else []
    if not spot or len(usdm) == 0:
        notes.append(f"captures missing in {data}: only the synthetic / simulated rows")
    rows: list[Row] = []
    d20 = depth20_real(btc)
    if d20 and not synthetic:
        rows.append(Row("depth20 real", f"{len(d20)} BTCUSDT USD-M diffs cut to 10+10 levels", d20, True))
    else:
        rows.append(Row("depth20 synthetic", "generated, exact Binance USD-M shape", depth20_synthetic(), True))
    by = {}
    for market, msgs in (("spot", spot), ("usdm", usdm)):
        for ts, raw in msgs:
            by.setdefault((market, _kind(raw)), []).append((ts, raw))
    sim_trades = _sim_spot_trades(sim_seconds)
    for market, label in (("spot", "spot"), ("usdm", "USD-M")):
        dm = by.get((market, "depthUpdate"), [])
        if dm:
            lv = sum(len(_event(r)["b"]) + len(_event(r)["a"]) for _, r in dm) / len(dm)
            rows.append(Row(f"depth real {label}", f"{len(dm)} captured, {lv:.1f} levels mean", dm, True))
    for kind in ("bookTicker", "trade", "aggTrade"):
        for market, label in (("spot", "spot"), ("usdm", "USD-M")):
            ms = by.get((market, kind), [])
            src = f"{len(ms)} captured"
            if not ms and market == "spot" and kind == "trade":
                ms, src = sim_trades, f"{len(sim_trades)} simulated (no spot trade captured)"
            if ms:
                rows.append(Row(f"{kind} {label}", src, ms, False))
            else:
                notes.append(f"no {kind} {label} messages")
    return rows, notes


def _sim_spot_trades(seconds: float) -> list[tuple[int, bytes]]:
    from procs.sources.simulator import SimParams, Simulator

    sim = Simulator(SimParams(["BTCUSDT", "ETHUSDT"], seed=3))
    end = sim.base_ns + int(seconds * 1e9)
    out = []
    for ts, raw in sim.messages():
        if ts >= end:
            break
        if b'"e":"trade"' in raw:
            out.append((ts, raw))
    return out


# ---------------------------------------------------------------------------------------------------------------
@njit(cache=True, _nrt=False)
def _kernel_loop(buf: np.ndarray, offs: np.ndarray, o: np.ndarray, tab: np.ndarray, sc: np.ndarray, count: int,
                 depth: bool) -> int:
    # the kernel alone: `count` messages (cycled) from one buffer, no Python between them
    tot = 0
    m = len(offs) - 1
    for k in range(count):
        j = k % m
        raw = buf[offs[j]:offs[j + 1]]
        if depth:
            tot += fastparse.depth_kernel(raw, o, tab, sc, 0, 0, 0)
        else:
            tot += fastparse.tick_kernel(raw, o, tab, sc, 0, 0, 0)
    return tot


def _cycle(msgs: list[tuple[int, bytes]], count: int) -> list[tuple[int, bytes]]:
    reps = -(-count // len(msgs))
    return (msgs * reps)[:count]


def _time_parse(p: Parser, msgs: list[tuple[int, bytes]], out: np.ndarray) -> float:
    parse = p.parse
    t = time.perf_counter()
    for ts, raw in msgs:
        parse(raw, ts, out, 0)
    return time.perf_counter() - t


def _time_fastdepth(call: Callable[..., int], msgs: list[tuple[int, bytes]], out: np.ndarray) -> float:
    t = time.perf_counter()
    for ts, raw in msgs:
        call(raw, ts, out, 0, 0)
    return time.perf_counter() - t


def _time_entry(kernel: Callable[..., int], raws: list[bytes], o64: np.ndarray, tab: np.ndarray,
                sc: np.ndarray) -> float:
    t = time.perf_counter()
    for raw in raws:
        kernel(raw, o64, tab, sc, 0, 0, 0)
    return time.perf_counter() - t


def _stats(rates: list[float]) -> dict[str, float]:
    rs = sorted(rates)
    q = statistics.quantiles(rs, n=10, method="inclusive") if len(rs) > 1 else [rs[0]] * 9
    med = statistics.median(rs)
    return {"median": med, "p10": q[0], "p90": q[8], "ns_per_msg": 1e9 / med, "reps": len(rs)}


def measure(row: Row, reps: int, seconds: float, count: int | None) -> dict:
    """Rates of one row: parse fast / parse orjson (alternating within each repetition), entry, kernel."""
    out = np.zeros(_OUT_RECORDS, MARKET.dtype)
    fast, slow = Parser(fast=True), Parser(fast=False)
    for p in (fast, slow):  # warm: symbols resolved, caches filled, nothing compiled inside the timing
        for ts, raw in row.msgs:
            assert p.parse(raw, ts, out, 0) > 0, f"{row.name}: a message gave no record: {raw[:200]!r}"
    fd = fast._fast
    o64, tab, sc = fd._o64, fd._tab, fd._sc
    kernel = fd._depth_k if row.depth else fd._tick_k
    raws = [raw for _, raw in row.msgs]
    assert all(kernel(r, o64, tab, sc, 0, 0, 0) > 0 for r in raws), f"{row.name}: the kernel did not answer"
    buf = np.frombuffer(b"".join(raws), np.uint8)
    offs = np.cumsum([0] + [len(r) for r in raws]).astype(np.int64)

    def n_for(per_msg_s: float) -> int:
        return count if count is not None else max(len(raws), int(seconds / per_msg_s))

    # size each side's repetition to about `seconds` (one probe pass to estimate)
    est = {k: f() / len(raws) for k, f in (("fast", lambda: _time_parse(fast, row.msgs, out)),
                                           ("orjson", lambda: _time_parse(slow, row.msgs, out)),
                                           ("entry", lambda: _time_entry(kernel, raws, o64, tab, sc)))}
    seqs = {"fast": _cycle(row.msgs, n_for(est["fast"])), "orjson": _cycle(row.msgs, n_for(est["orjson"])),
            "entry": [r for _, r in _cycle(row.msgs, n_for(est["entry"]))]}
    n_kernel = n_for(est["entry"] / 3)
    _kernel_loop(buf, offs, o64, tab, sc, len(raws), row.depth)  # compile / load before timing
    call = fd.depth if row.depth else fd.tick
    rates: dict[str, list[float]] = {k: [] for k in ("fast", "orjson", "fastdepth", "entry", "kernel")}
    gc.disable()
    try:
        for _ in range(reps):
            rates["fast"].append(len(seqs["fast"]) / _time_parse(fast, seqs["fast"], out))
            rates["orjson"].append(len(seqs["orjson"]) / _time_parse(slow, seqs["orjson"], out))
            rates["fastdepth"].append(len(seqs["fast"]) / _time_fastdepth(call, seqs["fast"], out))
            rates["entry"].append(len(seqs["entry"]) / _time_entry(kernel, seqs["entry"], o64, tab, sc))
            t = time.perf_counter()
            tot = _kernel_loop(buf, offs, o64, tab, sc, n_kernel, row.depth)
            rates["kernel"].append(n_kernel / (time.perf_counter() - t))
            assert tot >= n_kernel, f"{row.name}: kernel loop wrote nothing"
    finally:
        gc.enable()
    res = {k: _stats(v) for k, v in rates.items()}
    levels = sum(max(1, raw.count(b"[") - 2) for raw in raws) / len(raws) if row.depth else 1.0
    return {"name": row.name, "source": row.source, "messages": len(raws), "records_per_msg": round(levels, 2),
            "bytes_per_msg": round(sum(map(len, raws)) / len(raws), 1), **res,
            "ratio_fast_orjson": res["fast"]["median"] / res["orjson"]["median"],
            "wrapper_ns": res["fast"]["ns_per_msg"] - res["kernel"]["ns_per_msg"],
            "parser_ns": res["fast"]["ns_per_msg"] - res["fastdepth"]["ns_per_msg"]}


def _k(x: float) -> str:
    return f"{x / 1e3:,.0f}K" if x < 1e7 else f"{x / 1e6:,.1f}M"


def table(results: list[dict]) -> str:
    head = ("| message set | msgs | rec/msg | fast msg/s median [p10–p90] | ns/msg | orjson msg/s median [p10–p90] "
            "| ns/msg | fast/orjson | FastDepth ns | entry ns | kernel ns | wrapper ns |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        f, s = r["fast"], r["orjson"]
        lines.append(f"| {r['name']} | {r['messages']:,} | {r['records_per_msg']:g} | "
                     f"{_k(f['median'])} [{_k(f['p10'])}–{_k(f['p90'])}] | {f['ns_per_msg']:,.0f} | "
                     f"{_k(s['median'])} [{_k(s['p10'])}–{_k(s['p90'])}] | {s['ns_per_msg']:,.0f} | "
                     f"{r['ratio_fast_orjson']:.1f}x | {r['fastdepth']['ns_per_msg']:,.0f} | "
                     f"{r['entry']['ns_per_msg']:,.0f} | "
                     f"{r['kernel']['ns_per_msg']:,.0f} | {r['wrapper_ns']:,.0f} |")
    return "\n".join(lines)


def _env() -> dict:
    cpu = "?"
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu_model": cpu, "nproc": os.cpu_count(), "kernel": platform.release(), "python": sys.version.split()[0],
            "loadavg_before": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA, help=f"capture folder (default {DATA})")
    ap.add_argument("--reps", type=int, default=7, help="repetitions per row and path (default 7)")
    ap.add_argument("--seconds", type=float, default=0.25, help="target seconds per repetition (default 0.25)")
    ap.add_argument("--count", type=int, default=None, help="messages per repetition instead of --seconds")
    ap.add_argument("--only", default="", help="comma-separated substrings: rows whose name contains one")
    ap.add_argument("--synthetic", action="store_true", help="synthetic 20-level depth even with the capture")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args(argv)
    if args.reps < 1 or args.seconds <= 0 or (args.count is not None and args.count < 1):
        ap.error("--reps and --count must be >= 1, --seconds > 0")
    env = _env()
    rows, notes = build_rows(args.data, args.synthetic)
    if args.only:
        keys = [k.strip() for k in args.only.split(",") if k.strip()]
        rows = [r for r in rows if any(k in r.name for k in keys)]
        if not rows:
            ap.error(f"no row matches --only {args.only!r}")
    fastparse.warm()
    results = []
    for row in rows:
        res = measure(row, args.reps, args.seconds, args.count)
        results.append(res)
        print(f"  {row.name:22s} fast {_k(res['fast']['median']):>6s}/s  orjson {_k(res['orjson']['median']):>6s}/s"
              f"  ({row.source})", file=sys.stderr, flush=True)
    env["loadavg_after"] = os.getloadavg()
    print(table(results))
    for n in notes:
        print(f"note: {n}")
    d20 = next((r for r in results if r["name"].startswith("depth20")), None)
    acceptance = None
    if d20 is not None:
        med = d20["fast"]["median"]
        acceptance = {"target_msgs_per_s": TARGET_DEPTH20, "measured_median": med, "met": med >= TARGET_DEPTH20}
        verdict = "MET" if acceptance["met"] else "NOT MET"
        print(f"acceptance: {d20['name']} through Parser.parse (fast path) median {med:,.0f} msg/s "
              f"(p10 {d20['fast']['p10']:,.0f}) vs target {TARGET_DEPTH20:,}: {verdict}")
    print(f"load average before {env['loadavg_before'][0]:.2f}, after {env['loadavg_after'][0]:.2f} "
          f"({env['nproc']} CPUs; wall-clock figures, medians of {args.reps} repetitions)")
    if args.json is not None:
        args.json.write_text(json.dumps({"env": env, "params": {"reps": args.reps, "seconds": args.seconds,
                                                                "count": args.count},
                                         "results": results, "acceptance": acceptance, "notes": notes}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
