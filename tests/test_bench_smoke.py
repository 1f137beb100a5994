"""The ring benchmark runs end to end and writes the documented JSON schema (correctness only:
no figure is checked, since timing on a shared machine is not a test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_rings_quick_schema(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_rings.py"), "--quick", "--only",
                          "tickpipe-numba,tickpipe-python,mp-pipe", "--no-chain", "--json", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    assert {"cpu_model", "nproc", "kernel", "python"} <= set(data["env"])
    names = [r["mechanism"] for r in data["results"]]
    assert names == ["tickpipe-numba", "tickpipe-python", "mp-pipe"]
    for r in data["results"]:
        assert "skipped" not in r, r
        assert set(r["rtt_ns"]) >= {"p50", "p99", "p99.9", "max"}
        assert 0 < r["rtt_ns"]["p50"] <= r["rtt_ns"]["p99"] <= r["rtt_ns"]["p99.9"] <= r["rtt_ns"]["max"]
        assert r["throughput_per_s"]["single"] > 0 and r["throughput_per_s"]["batched"] > 0
    assert "| tickpipe-numba |" in res.stdout


def test_bench_rings_rejects_bad_arguments() -> None:
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_rings.py"), "--only", "carrier-pigeon"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "unknown mechanism" in res.stderr


def test_stage_costs_profiles_every_stage_on_the_simulator() -> None:
    res = subprocess.run([sys.executable, str(ROOT / "profiling" / "stage_costs.py"), "--messages", "3000"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "3000 messages" in res.stdout
    for stage in ("feed", "book", "strategy", "inference"):
        row = next(ln for ln in res.stdout.splitlines() if ln.startswith(f"| {stage} |"))
        assert int(row.split("|")[2].replace(",", "")) > 0, row  # the stage did work


def test_bench_pipeline_help_lists_its_modes() -> None:
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_pipeline.py"), "--help"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "--soak" in res.stdout
    assert "--exporter-within" in res.stdout and "--scrape-interval" in res.stdout


def _bench_pipeline():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_pipeline", ROOT / "scripts" / "bench_pipeline.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_exporter_within_windows_take_the_whole_intervals_inside_them(tmp_path: Path) -> None:
    """window_histograms merges the .hlog intervals that lie wholly inside each window (as the launcher's
    IntervalLogger writes them); the pairing and mixture helpers compute what their docstrings say."""
    import numpy as np

    from procs.report import IntervalLogger
    from shm.hdr import Histogram

    bp = _bench_pipeline()
    t0 = 1_800_000_000.0
    log = IntervalLogger(tmp_path / "hlog", ["strategy.e2e"], start_time_s=t0)
    cum = Histogram()
    # 8 one-second intervals: 10 µs in even seconds, 20 µs in odd ones (1,000 decisions each)
    for k in range(8):
        cum.counts += Histogram.from_values(np.full(1000, 10_000 if k % 2 == 0 else 20_000)).counts
        log.snapshot(t0 + k + 1, {"strategy.e2e": cum.counts})
    log.close()
    windows = [{"i": i, "mode": m, "t0": t0 + 2 * i, "t1": t0 + 2 * i + 2, "scrapes": 0, "busy_s": 0.0}
               for i, m in enumerate(("off", "on", "on", "off"))]
    windows.append({"i": 4, "mode": "off", "t0": t0 + 7.5, "t1": t0 + 9.5, "scrapes": 0, "busy_s": 0.0})
    wins = bp.window_histograms(tmp_path, windows)
    assert [w["i"] for w in wins] == [0, 1, 2, 3]  # window 4 holds no whole interval
    assert all(w["count"] == 2000 and w["intervals"] == 2 for w in wins)
    assert all(abs(w["p99"] - 20_000) <= 20 for w in wins)
    assert bp.paired_ratios(wins) == [{"p50": 1.0, "p99": 1.0}, {"p50": 1.0, "p99": 1.0}]
    # the other schedule of the same windows: every position pairs, on over off
    other = [w | {"mode": "off" if w["mode"] == "on" else "on", "p50": w["p50"] * (1.1 if w["mode"] == "off" else 1)}
             for w in wins]
    cross = bp.crossover_ratios(wins, other)
    assert len(cross) == 4 and all(abs(c["p50"] - 1.1) < 1e-9 or c["p50"] == 1.0 for c in cross)
    g, lo, hi = bp.geo_ci([1.0, 1.02, 0.98, 1.01])
    assert lo <= g <= hi and abs(g - 1.0) < 0.01
    # mixing: 10% of a slow distribution barely moves the median; half of it moves it to the slow one's edge
    fast = Histogram.from_values(np.full(1000, 10_000))
    slow = Histogram.from_values(np.full(1000, 50_000))
    assert abs(bp.mixture_percentile(fast, slow, 0.1, 50.0) - 10_000) <= 10
    assert abs(bp.mixture_percentile(fast, slow, 0.6, 50.0) - 50_000) <= 50
