"""The parse benchmark runs end to end with tiny counts and writes its JSON (correctness only: no figure is
checked against a bar, since timing on a shared machine is not a test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import shared_data_dir

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "bench_parse.py"


def test_bench_parse_tiny_run_schema(tmp_path: Path) -> None:
    out = tmp_path / "bench_parse.json"
    res = subprocess.run([sys.executable, str(SCRIPT), "--count", "300", "--reps", "2", "--json", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    assert {"cpu_model", "nproc", "loadavg_before", "loadavg_after"} <= set(data["env"])
    names = [r["name"] for r in data["results"]]
    assert names[0].startswith("depth20") and "trade spot" in names  # the simulator supplies spot trades
    if (shared_data_dir() / "usdm_btcusdt_20240808_120s.lines.gz").is_file():
        assert names[0] == "depth20 real"
        assert {"depth real spot", "depth real USD-M", "bookTicker spot", "bookTicker USD-M", "trade USD-M",
                "aggTrade spot", "aggTrade USD-M"} <= set(names)
    for r in data["results"]:
        for path in ("fast", "orjson", "fastdepth", "entry", "kernel"):
            s = r[path]
            assert 0 < s["p10"] <= s["median"] <= s["p90"] and s["reps"] == 2, (r["name"], path, s)
            assert abs(s["ns_per_msg"] * s["median"] - 1e9) < 1e3
        assert r["ratio_fast_orjson"] == r["fast"]["median"] / r["orjson"]["median"]
        assert r["records_per_msg"] >= 1 and r["messages"] > 0
    d20 = data["results"][0]
    assert d20["records_per_msg"] == 20  # exactly 20 levels per message
    acc = data["acceptance"]
    assert acc["target_msgs_per_s"] == 500_000 and acc["met"] == (acc["measured_median"] >= 500_000)
    assert "| depth20" in res.stdout and "acceptance:" in res.stdout


def test_bench_parse_synthetic_and_only(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, str(SCRIPT), "--count", "200", "--reps", "1", "--synthetic", "--only",
                          "depth20", "--data", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    rows = [ln for ln in res.stdout.splitlines() if ln.startswith("| depth")]
    assert len(rows) == 1 and rows[0].startswith("| depth20 synthetic |")


def test_bench_parse_rejects_bad_arguments() -> None:
    res = subprocess.run([sys.executable, str(SCRIPT), "--only", "carrier-pigeon", "--count", "10"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 2 and "no row matches" in res.stderr
    res = subprocess.run([sys.executable, str(SCRIPT), "--reps", "0"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
