"""End to end: run.py as a user runs it, on the simulator and on replayed real captures.

Each run starts real stage processes (spawn, pin, JIT from the numba cache), so these tests take
a few seconds each; they check counts and exit codes, never timing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shm.segment import list_segments

ROOT = Path(__file__).resolve().parents[1]
BTC = "usdm_btcusdt_20240808_120s.lines.gz"


def run_py(*args: str, out: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), "--out", str(out), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def summary_of(out: Path) -> dict:
    runs = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(runs) == 1, f"expected one run folder in {out}, found {runs}"
    return json.loads((runs[0] / "summary.json").read_text())


def assert_counts_add_up(s: dict) -> None:
    c = s["counters"]
    feed, book, strat, sink = c["feed"], c["book"], c["strategy"], c["orders_sink"]
    # every message the feed published reached the book, every book update the strategy, every order the sink
    assert feed["messages_out"] > 0
    assert book["messages_in"] == feed["messages_forwarded"]
    assert feed["messages_forwarded"] + feed["unknown_type"] + feed["unknown_symbol"] == feed["messages_out"]
    assert book["records_in"] == feed["records_out"]
    assert strat["books_in"] == book["books_out"]
    assert sink["received"] == strat["orders_out"] == strat["new"] + strat["cancels"] + strat["replaces"]
    assert sink["reports"] == strat["fills_out"]
    assert strat["orders_dropped"] == strat["fills_dropped"] == 0
    assert feed["bad_json"] == feed["bad_field"] == feed["bad_number"] == 0
    assert book["crossed"] == 0
    assert s["histograms"]["tick_to_decision"]["count"] == strat["books_in"]


def no_segments_left(out: Path) -> None:
    """None of the runs under `out` left a segment (run ids are the last part of each run folder's name;
    other runs on the machine, e.g. a benchmark, may hold their own)."""
    runs = [p.name.rsplit("-", 1)[-1] for p in out.iterdir() if p.is_dir()]
    assert runs, f"no run folder in {out}"
    left = [seg for r in runs for seg in list_segments(r)]
    assert left == [], f"segments left: {left}"


def test_simulator_run_exits_0_with_a_report_that_adds_up(tmp_path: Path) -> None:
    r = run_py("--duration", "4", out=tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    s = summary_of(tmp_path)
    assert_counts_add_up(s)
    c = s["counters"]
    assert c["book"]["gaps"] == 0
    assert c["inference"]["scored"] > 0
    assert s["meta"]["lockstep"] is False  # paced: conflated scoring, the strategy never waits
    assert c["strategy"]["new"] > 0 and c["orders_sink"]["reports_ack"] > 0
    assert "tick_to_decision" in r.stdout and "p99.9" in r.stdout
    run_dir = next(p for p in tmp_path.iterdir() if p.is_dir())
    for name in ("summary.json", "percentiles.txt", "latency.png", "stages.log", "orders.csv", "fills.csv",
                 "equity.csv", "risk_events.csv", "strategy.json", "results.json", "results.txt", "equity.png",
                 "report.html", "scores.csv", "scores.png"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "hlog").glob("*.hlog"))
    # scores.csv samples the scores board: one row per symbol per change seen, never more than were scored
    score_rows = (run_dir / "scores.csv").read_text().splitlines()
    assert score_rows[0] == "exch_ts_ms,symbol,anomaly,anomaly_raw,flag,p_up,skipped"
    assert 0 < len(score_rows) - 1 == s["meta"]["scores_file"]["records"] <= c["inference"]["scored"]
    # the results were computed from the whole files (they are flushed before the report reads them)
    files = json.loads((run_dir / "results.json").read_text())["files"]
    for name in ("fills.csv", "orders.csv"):
        assert files[name]["rows"] == len((run_dir / name).read_text().splitlines()) - 1, name
    no_segments_left(tmp_path)


def test_replay_speed_0_plays_the_whole_capture(tmp_path: Path, data_dir: Path) -> None:
    r = run_py("--replay", str(data_dir / BTC), "--speed", "0", out=tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    s = summary_of(tmp_path)
    assert_counts_add_up(s)
    c = s["counters"]
    assert c["feed"]["messages_out"] == 29042  # every line of the capture
    assert c["book"]["gaps"] == 0 and c["book"]["snapshots"] == 1
    assert s["meta"]["stop_reason"] == "end of the source"
    # a backtest: lockstep by default at speed 0, every update scored
    assert s["meta"]["lockstep"] is True and "lockstep=on" in r.stdout
    assert c["inference"]["scored"] == c["book"]["books_out"] and c["strategy"]["score_mismatch"] == 0
    no_segments_left(tmp_path)


def test_replay_speed_20_window(tmp_path: Path, data_dir: Path) -> None:
    r = run_py("--replay", str(data_dir / BTC), "--speed", "20", "--replay-duration", "20", out=tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    s = summary_of(tmp_path)
    assert_counts_add_up(s)
    assert 0 < s["counters"]["feed"]["messages_out"] < 29042
    # paced at speed 20: 20 s of capture take about 1 s (not asserted tightly: a noisy 2-core VM)
    assert s["rates"]["seconds"] >= 0.9
    no_segments_left(tmp_path)


def test_max_messages_stops_the_run(tmp_path: Path, data_dir: Path) -> None:
    r = run_py("--replay", str(data_dir / BTC), "--speed", "0", "--max-messages", "5000", out=tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    s = summary_of(tmp_path)
    assert s["counters"]["feed"]["messages_out"] == 5000
    assert s["meta"]["stop_reason"] == "message limit reached"
    assert_counts_add_up(s)


#: the run folder's files that hold decisions, fills, P&L and (lockstep) every score: all on exchange time
DECISION_FILES = ("orders.csv", "fills.csv", "equity.csv", "risk_events.csv", "scores.csv")


def _lockstep_twice(tmp_path: Path, *args: str) -> tuple[list[Path], list[dict]]:
    dirs, sums = [], []
    for i in range(2):
        out = tmp_path / f"run{i}"
        r = run_py(*args, "--lockstep", "--speed", "0", out=out)
        assert r.returncode == 0, r.stderr + r.stdout
        s = summary_of(out)
        assert_counts_add_up(s)
        c = s["counters"]
        # every book update scored, none skipped, and each taken with the score of its own features
        assert c["inference"]["scored"] == c["book"]["books_out"] == c["strategy"]["books_in"]
        assert c["inference"]["features_skipped"] == 0
        assert c["strategy"]["score_mismatch"] == 0
        assert s["meta"]["scores_file"]["records"] == c["inference"]["scored"]
        dirs.append(next(p for p in out.iterdir() if p.is_dir()))
        assert len((dirs[-1] / "scores.csv").read_text().splitlines()) == 1 + c["inference"]["scored"]
        sums.append(s)
        no_segments_left(out)
    return dirs, sums


def test_lockstep_replay_decides_the_same_in_every_run(tmp_path: Path, data_dir: Path) -> None:
    """A model-driven strategy (the hybrid TWAP acts on P(up)) replayed as fast as possible twice: with
    lockstep scoring the orders, fills, equity and parents are byte for byte the same."""
    dirs, sums = _lockstep_twice(tmp_path, "--replay", str(data_dir / BTC), "--strategy",
                                 "procs.strategies.execution:Twap", "--set", "risk.kill_switch=false")
    assert sums[0]["counters"]["feed"]["messages_out"] == 29042
    assert sums[0]["counters"]["strategy"]["fills"] > 100
    for name in (*DECISION_FILES, "parents.csv"):
        assert (dirs[0] / name).read_bytes() == (dirs[1] / name).read_bytes(), f"{name} differs between two replays"
    assert len((dirs[0] / "parents.csv").read_text().splitlines()) > 1


def test_lockstep_simulator_decides_the_same_in_every_run(tmp_path: Path) -> None:
    """The seeded simulator, message-limited, with the default market maker (quotes skewed by P(up), halted by
    the anomaly flag): two lockstep runs make the same decisions."""
    dirs, sums = _lockstep_twice(tmp_path, "--max-messages", "20000", "--set", "sim.anomalies_per_min=20")
    assert sums[0]["counters"]["strategy"]["new"] > 0
    assert sums[0]["counters"]["inference"]["alerts"] > 0  # the kill switch had flags to act on
    for name in DECISION_FILES:
        assert (dirs[0] / name).read_bytes() == (dirs[1] / name).read_bytes(), f"{name} differs"


def _stage_pids(launcher_pid: int) -> list[int]:
    pids = []
    for task in Path(f"/proc/{launcher_pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                cmd = Path(f"/proc/{child}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            if b"spawn_main" in cmd:
                pids.append(int(child))
    return pids


def _start_and_wait_running(tmp_path: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "--out", str(tmp_path), "--duration", "60"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    assert p.stdout is not None
    for line in p.stdout:
        if "ready in" in line:
            break
        assert time.monotonic() < deadline, "stages never became ready"
    time.sleep(1.0)
    return p


def test_killed_stage_stops_the_run_non_zero_and_cleans_up(tmp_path: Path) -> None:
    p = _start_and_wait_running(tmp_path)
    pids = _stage_pids(p.pid)
    assert pids, "no stage process found"
    os.kill(pids[-1], signal.SIGKILL)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 1, out
    assert "died" in out and "SIGKILL" in out
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    no_segments_left(tmp_path)


def test_sigint_stops_in_order_with_128_plus_signal(tmp_path: Path) -> None:
    p = _start_and_wait_running(tmp_path)
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 130, out
    assert "stopped by SIGINT" in out
    s = summary_of(tmp_path)  # the report is still written
    assert_counts_add_up(s)
    no_segments_left(tmp_path)


def test_bad_config_is_refused_naming_the_field(tmp_path: Path) -> None:
    r = run_py("--speed", "-1", out=tmp_path)
    assert r.returncode == 2
    assert "field=source.speed" in r.stderr and "expected=>= 0" in r.stderr
    r = run_py("--placement", "feed@0 book@0 strategy@0", out=tmp_path)
    assert r.returncode == 2 and "inference" in r.stderr
    r = run_py("--set", "rings.market=1000", out=tmp_path)
    assert r.returncode == 2 and "field=rings.market" in r.stderr
    r = run_py("--set", "strategy.params.nope=1", out=tmp_path)
    assert r.returncode == 2 and "field=strategy.params.nope" in r.stderr
    r = run_py("--strategy", "procs.nothere:X", out=tmp_path)
    assert r.returncode == 2 and "field=strategy.name" in r.stderr
    r = run_py("--model", str(tmp_path / "nope.onnx"), out=tmp_path)
    assert r.returncode == 2 and "field=inference.model" in r.stderr
    assert not [p for p in tmp_path.iterdir() if p.is_dir()], "a refused configuration must not start a run"


def test_print_config_round_trips(tmp_path: Path) -> None:
    r = run_py("--print-config", "--speed", "3", "--set", "strategy.params.spread_bps=4.5", out=tmp_path)
    assert r.returncode == 0, r.stderr
    cfg = tmp_path / "c.toml"
    cfg.write_text(r.stdout)
    r2 = run_py("--print-config", "--config", str(cfg), out=tmp_path)
    assert r2.returncode == 0, r2.stderr
    assert r2.stdout == r.stdout
    assert "speed = 3.0" in r.stdout and "spread_bps = 4.5" in r.stdout


@pytest.mark.parametrize("flag", ["--help"])
def test_help_explains_options(flag: str, tmp_path: Path) -> None:
    r = run_py(flag, out=tmp_path)
    assert r.returncode == 0
    for opt in ("--replay", "--speed", "--duration", "--max-messages", "--placement", "--wait", "--realtime"):
        assert opt in r.stdout


def test_a_strategy_that_does_not_compile_is_named_with_the_reason(tmp_path: Path) -> None:
    mod = tmp_path / "mods"
    mod.mkdir()
    (mod / "typo_strategy.py").write_text(
        "from procs.api import BUY, Strategy, market, njit\n\n"
        "class Typo(Strategy):\n"
        "    PARAMS = {'qty': 0.01}\n\n"
        "    @staticmethod\n"
        "    @njit\n"
        "    def on_book(ctx, s, book):\n"
        "        market(ctx, s, BUY, ctx.p.qtty)\n")
    env = {**os.environ, "PYTHONPATH": f"{mod}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = tmp_path / "runs"
    r = subprocess.run([sys.executable, str(ROOT / "run.py"), "--out", str(out), "--strategy", "typo_strategy:Typo",
                        "--duration", "2"], cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 1
    assert "strategy typo_strategy:Typo: its callbacks did not compile" in r.stdout + r.stderr
    assert "'qtty'" in r.stdout + r.stderr
    no_segments_left(out)
