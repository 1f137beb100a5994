"""End to end: `run.py --live` against the local exchange on loopback, with faults injected while it runs
(a drop, malformed frames, a kill, a reorder).

The book's equality with the exchange through each fault is checked in-process by tests/test_live.py;
here the real stage processes run, and the report must show each fault detected and handled."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from test_e2e import ROOT, no_segments_left, summary_of

from procs.sources.exchange import LocalExchange


def test_live_run_against_the_local_exchange_survives_faults(tmp_path: Path) -> None:
    with LocalExchange(symbols=["BTCUSDT", "ETHUSDT"], market="usdm", seed=3, depth_interval_ms=50) as ex:
        cmd = [sys.executable, str(ROOT / "run.py"), "--out", str(tmp_path), "--live", "BTCUSDT,ETHUSDT",
               "--market", "usdm", "--ws-url", ex.ws_url, "--rest-url", ex.rest_url, "--duration", "9",
               "--set", "live.backoff_initial_s=0.05", "--set", "live.snapshot_min_interval_s=0.1"]
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert ex.wait_clients(1, timeout=60.0), "the feed never connected"
            time.sleep(2.0)
            ex.send_malformed(4)  # one of each kind: truncated, not JSON, bad number, binary
            ex.drop_diff("BTCUSDT")
            time.sleep(1.5)
            ex.close_connections()
            time.sleep(1.5)
            ex.reorder_diffs("ETHUSDT")
            out, err = p.communicate(timeout=120)
        finally:
            if p.poll() is None:
                p.kill()
    assert p.returncode == 0, err + out
    s = summary_of(tmp_path)
    feed, book = s["counters"]["feed"], s["counters"]["book"]
    assert feed["live_reconnects"] >= 1
    assert feed["live_gaps"] >= 2  # the drop and the reorder (a reconnect may add more)
    assert feed["live_snapshots_received"] >= 2 + feed["live_gaps"]  # first sync, then one per resync
    assert book["snapshots"] == feed["snapshot"] == feed["live_snapshots_received"]  # all reached the book
    assert book["crossed"] == 0 and book["diffs_applied"] > 20
    assert feed["bad_json"] >= 2 and feed["bad_number"] >= 1 and feed["live_bad_frames"] >= 1  # all counted
    assert book["messages_in"] == feed["messages_forwarded"] and book["records_in"] == feed["records_out"]
    assert s["histograms"]["tick_to_decision"]["count"] > 0
    assert "source=live:usdm" in out
    no_segments_left(tmp_path)
