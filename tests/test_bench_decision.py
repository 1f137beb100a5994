"""scripts/bench_decision.py runs end to end on a tiny stream and writes its JSON (structure only: timing on a
shared machine is not a test, so no figure is compared with a bound)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("p50", "p90", "p99", "p99.9", "max")


def test_bench_decision_smoke(tmp_path: Path) -> None:
    out = tmp_path / "decision.json"
    # the market maker only (plus the no-op baseline, always run): each strategy's step compile costs seconds
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_decision.py"), "--records", "1500",
                          "--repeat", "1", "--warmup", "200", "--batch", "8", "--cpu", "0", "--only", "market_maker",
                          "--json", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    doc = json.loads(out.read_text())
    assert {"cpu", "load_start", "load_end", "source"} <= set(doc["env"]) and doc["env"]["cpu"] == 0
    assert set(doc["results"]) == {"noop", "market_maker"}
    for key, modes in doc["results"].items():
        for mode in ("single", "batch"):
            m = modes[mode]
            assert m["records"] == 1500 and len(m["repeats"]) == 1
            for fig in ("record_to_publish_us", "step_per_record_us", "step_call_us"):
                assert all(k in m[fig] for k in KEYS), (key, mode, fig)
                assert 0 < m[fig]["p50"] <= m[fig]["p99"] <= m[fig]["max"]
            if key == "noop":
                assert m["decisions"] == m["orders"] == 0 and m["decision_us"] == {}
            else:
                assert m["decisions"] > 0 and m["orders"] >= m["decisions"]
                assert m["stage_decision_count"] == m["decisions"]
                assert all(k in m["decision_us"] for k in KEYS)
                assert 0 < m["decision_us"]["p50"] <= m["decision_us"]["p99"] <= m["decision_us"]["max"]
    assert doc["verdicts"]["market_maker"] in (True, False)
    assert "| market_maker | single |" in res.stdout and "load average at start" in res.stdout
    assert "verdict market_maker" in res.stdout
