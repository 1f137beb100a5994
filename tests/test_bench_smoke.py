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
