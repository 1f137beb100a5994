"""The Prometheus exporter: the collector on synthetic shared state, and the real Prometheus server
(Debian's `prometheus`) scraping a short run.py run, queried through its HTTP API."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from prometheus_client.core import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from procs import prom
from procs.launcher import counter_names
from shm import metrics
from shm.hdr import COUNTS_LEN, Histogram
from shm.metrics import STATS
from shm.records import BOOK
from shm.segment import list_segments

ROOT = Path(__file__).resolve().parents[1]
AGENTS = ["feed", "book", "strategy", "inference"]


# -- the collector on synthetic state ----------------------------------------------------------------
class _Ring:
    def __init__(self, capacity: int, lags: list[int], published: int) -> None:
        self.capacity, self.n_consumers, self._lags, self.producer_position = capacity, len(lags), lags, published
        self.slots = np.zeros(capacity, BOOK.dtype)

    def lag(self, i: int) -> int:
        return self._lags[i]


def _view(strategy_counters: tuple[str, ...]) -> tuple[prom.PipelineView, dict[int, np.ndarray]]:
    names = {"feed": ("messages_out", "records_out", "messages", "depth", "trade", "bad_json", "bad_field"),
             "book": ("books_out", "gaps", "resyncs_needed", "levels_applied"),
             "strategy": strategy_counters, "inference": ("scored", "alerts")}
    stats = np.zeros(len(AGENTS), STATS.dtype)
    values = {"feed": (100, 250, 103, 60, 40, 2, 1), "book": (80, 3, 1, 900), "inference": (40, 5)}
    for i, a in enumerate(AGENTS):
        row = values.get(a, tuple(range(10, 10 + len(names[a]))))
        stats[i]["counters"][:len(row)] = row
        stats[i]["pid"] = 0 if a != "feed" else os.getpid()
        stats[i]["heartbeat_ns"] = 1_000_000_000
        stats[i]["state"] = metrics.STATE_RUNNING
    stats[0]["loops"] = 77
    hists = {i: np.zeros(COUNTS_LEN, np.int64) for i in range(len(AGENTS) * metrics.N_HISTS)}
    # strategy e2e: 10 at 1.234 µs, 5 at 45 µs, 1 at 3 ms (values well inside one bucket of BUCKETS_S)
    hists[2 * metrics.N_HISTS + metrics.HIST_E2E][:] = Histogram.from_values(
        np.array([1234] * 10 + [45_000] * 5 + [3_000_000])).counts
    hists[2 * metrics.N_HISTS + metrics.HIST_AUX][:] = Histogram.from_values(np.array([800, 900])).counts
    book = _Ring(64, [3, 7], 900)
    # the newest BOOK records: ETHUSDT (id 1) at positions 898 and 899, BTCUSDT (id 0) at 897
    book.slots[897 & 63]["symbol"], book.slots[898 & 63]["symbol"], book.slots[899 & 63]["symbol"] = 0, 1, 1
    book.slots[897 & 63]["bid_pxs"][:3] = 1
    book.slots[899 & 63]["ask_pxs"][:2] = 1
    view = prom.PipelineView(
        agents=AGENTS, counter_names=names, stats=stats,
        hist=lambda agent, which: hists[agent * metrics.N_HISTS + which], aux_hists={"strategy": "decision"},
        rings={"market": _Ring(1024, [256], 5000), "book": book}, symbols=["BTCUSDT", "ETHUSDT"],
        boards={"scores": SimpleNamespace(version=41)},
        processes={"feed": "feed+book+strategy", "book": "feed+book+strategy", "strategy": "feed+book+strategy",
                   "inference": "inference"},
        sink=SimpleNamespace(count=6, by_action=np.array([2, 1, 3])), info={"run": "r1", "source": "sim"},
        now_ns=lambda: 1_500_000_000, t_start_ns=1_000_000_000)
    return view, hists


def _scrape(collector: prom.PipelineCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)  # type: ignore[arg-type]
    text = generate_latest(reg).decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_collector_exports_named_generic_ring_and_histogram_series() -> None:
    # a strategy with counters another engineer may add: risk rejections, fills, P&L
    view, _ = _view(("books_in", "orders_out", "orders_dropped", "rejects_max_position", "risk_kill_switch",
                     "fills", "pnl_realized"))
    view.stats[2]["counters"][6] = (1 << 64) - 250  # pnl_realized = -250 as int64
    got = _scrape(prom.PipelineCollector(view))

    def v(metric: str, /, **labels: str) -> float:
        return got[(metric, tuple(sorted(labels.items())))]

    assert v("tickpipe_messages_received_total") == 103
    assert v("tickpipe_messages_parsed_total") == 100  # depth + trade
    assert v("tickpipe_messages_malformed_total", reason="json") == 2
    assert v("tickpipe_messages_malformed_total", reason="field") == 1
    assert v("tickpipe_book_updates_total") == 80 and v("tickpipe_book_gaps_total") == 3
    assert v("tickpipe_book_resyncs_total") == 1 and v("tickpipe_book_levels_applied_total") == 900
    assert v("tickpipe_scores_total") == 40 and v("tickpipe_anomaly_alerts_total") == 5
    assert v("tickpipe_orders_submitted_total") == 11
    assert v("tickpipe_orders_rejected_total", reason="ring_full") == 12
    assert v("tickpipe_orders_rejected_total", reason="max_position") == 13
    assert v("tickpipe_orders_rejected_total", reason="kill_switch") == 14
    assert v("tickpipe_orders_filled_total") == 15
    assert v("tickpipe_pnl_realized") == -250
    assert v("tickpipe_orders_sink_received_total", action="replace") == 3
    # the generic series carries every counter of every agent, new ones included
    assert v("tickpipe_stage_counter_total", stage="strategy", name="risk_kill_switch") == 14
    assert v("tickpipe_stage_counter_total", stage="feed", name="records_out") == 250
    assert sum(1 for (n, lb) in got if n == "tickpipe_stage_counter_total") == 7 + 4 + 6 + 2
    # rings: occupancy is the slowest consumer's backlog
    assert v("tickpipe_ring_capacity_records", ring="market") == 1024
    assert v("tickpipe_ring_occupancy_ratio", ring="market") == 0.25
    assert v("tickpipe_ring_occupancy_records", ring="book") == 7
    assert v("tickpipe_ring_consumer_lag_records", ring="book", consumer="0") == 3
    assert v("tickpipe_ring_published_records_total", ring="market") == 5000
    assert v("tickpipe_board_updates_total", board="scores") == 41
    assert v("tickpipe_book_depth_levels", symbol="BTCUSDT", side="bid") == 3
    assert v("tickpipe_book_depth_levels", symbol="ETHUSDT", side="ask") == 2  # the newest record of ETHUSDT
    assert v("tickpipe_book_depth_levels", symbol="ETHUSDT", side="bid") == 0
    # histograms: cumulative buckets in seconds, +Inf = count, sum from the bucket midpoints
    b = {dict(lb)["le"]: val for (n, lb), val in got.items()
         if n == "tickpipe_e2e_latency_seconds_bucket" and dict(lb)["stage"] == "strategy"}
    assert b["1e-06"] == 0 and b["1.5e-06"] == 10 and b["3e-05"] == 10 and b["5e-05"] == 15
    assert b["0.002"] == 15 and b["0.003"] == 15 and b["0.005"] == 16 and b["+Inf"] == 16
    assert v("tickpipe_e2e_latency_seconds_count", stage="strategy") == 16
    assert v("tickpipe_e2e_latency_seconds_sum", stage="strategy") == pytest.approx(
        10 * 1.234e-6 + 5 * 45e-6 + 3e-3, rel=1e-3)
    buckets = [val for (n, lb), val in sorted(got.items()) if n == "tickpipe_hop_latency_seconds_bucket"]
    assert buckets and all(x == 0 for x in buckets)  # empty histograms still export their buckets
    assert ("tickpipe_e2e_latency_seconds_count", (("stage", "feed"),)) not in got  # the feed has no e2e
    assert v("tickpipe_stage_latency_seconds_count", stage="strategy", name="decision") == 2
    assert v("tickpipe_stage_latency_seconds_bucket", stage="strategy", name="decision", le="1e-06") == 2
    # stages and processes
    assert v("tickpipe_stage_heartbeat_age_seconds", stage="book") == 0.5
    assert v("tickpipe_stage_state", stage="inference") == metrics.STATE_RUNNING
    assert v("tickpipe_process_loops_total", process="feed+book+strategy") == 77
    assert v("tickpipe_run_uptime_seconds") == 0.5
    rss = [val for (n, lb), val in got.items() if n == "tickpipe_process_resident_memory_bytes"]
    assert rss and all(x > 1_000_000 for x in rss)  # this process (as the feed) and the launcher (this process)


def test_a_closed_collector_reads_nothing() -> None:
    view, _ = _view(("books_in", "orders_out"))
    c = prom.PipelineCollector(view)
    assert _scrape(c)
    c.close()
    assert _scrape(c) == {}


def test_bucket_conversion_matches_counting_the_values() -> None:
    rng = np.random.default_rng(3)
    values = np.exp(rng.uniform(np.log(200), np.log(5e9), 5000)).astype(np.int64)
    buckets, total = prom.prom_buckets(Histogram.from_values(values).counts)
    for le, count in buckets[:-1]:
        bound_ns = float(le) * 1e9
        exact = int((values <= bound_ns).sum())
        # HDR buckets are 0.1% wide: only values within 0.1% below a bound can be counted one bucket later
        near = int(((values <= bound_ns) & (values > bound_ns * 0.999)).sum())
        assert exact - near <= count <= exact, le
    assert buckets[-1] == ("+Inf", 5000.0)
    assert total == pytest.approx(values.sum() / 1e9, rel=1e-3)


DASHBOARD = ROOT / "profiling" / "grafana_dashboard.json"


def _dashboard_exprs() -> list[str]:
    d = json.loads(DASHBOARD.read_text())
    assert isinstance(d["schemaVersion"], int) and d["panels"]
    exprs = [t["expr"] for p in d["panels"] for t in p["targets"]]
    assert all(exprs)
    return exprs


def test_dashboard_uses_only_exported_series() -> None:
    from procs.strategy import StrategyAgent

    view, _ = _view(StrategyAgent.COUNTERS)  # the strategy's real counters: its P&L gauges included
    exported = {n for n, _ in _scrape(prom.PipelineCollector(view))}
    used = {m for e in _dashboard_exprs() for m in re.findall(r"\btickpipe_\w+", e)}
    assert {"tickpipe_strategy_equity", "tickpipe_strategy_realized"} <= used <= exported, used - exported


# -- the real Prometheus server ------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def test_real_prometheus_scrapes_a_run(tmp_path: Path) -> None:
    binary = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").is_file() else None)
    if binary is None:
        pytest.skip("the prometheus server binary is not installed (Debian: apt-get install prometheus; "
                    ".ci/run installs it when apt-get is available)")
    metrics_port, prom_port = _free_port(), _free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n"
        "scrape_configs:\n  - job_name: tickpipe\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{metrics_port}']\n")
    api = f"http://127.0.0.1:{prom_port}"
    with (tmp_path / "prom.log").open("w") as log:
        server = subprocess.Popen([binary, f"--config.file={tmp_path / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                   f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
                                  stdout=subprocess.DEVNULL, stderr=log)
    out = tmp_path / "runs"
    try:
        for _ in range(300):  # until the server answers (a bound, not a timing check)
            try:
                with urllib.request.urlopen(f"{api}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "prom.log").read_text()
            time.sleep(0.1)
        run = subprocess.run([sys.executable, str(ROOT / "run.py"), "--out", str(out), "--duration", "5",
                              "--metrics-port", str(metrics_port)], cwd=ROOT, capture_output=True, text=True,
                             timeout=180)
        assert run.returncode == 0, run.stderr + run.stdout
        assert f"http://127.0.0.1:{metrics_port}/metrics" in run.stdout
        (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
        summary = json.loads((run_dir / "summary.json").read_text())
        assert list_segments(run_dir.name.rsplit("-", 1)[-1]) == []

        def query(expr: str) -> list[dict]:
            # max_over_time: the target is gone now, so its series are stale at "now"; their samples are not
            got = _get(f"{api}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
            assert got["status"] == "success", got
            return got["data"]["result"]

        def scalar(expr: str) -> float:
            res = query(expr)
            assert len(res) == 1, (expr, res)
            return float(res[0]["value"][1])

        for _ in range(50):  # the last scrape may still be in the head block's append path
            if query('max_over_time(up{job="tickpipe"}[5m])'):
                break
            time.sleep(0.1)
        assert scalar('max_over_time(up{job="tickpipe"}[5m])') == 1
        feed = summary["counters"]["feed"]
        received = scalar("max_over_time(tickpipe_messages_received_total[5m])")
        assert 0 < received <= feed["messages"]
        assert 0 < scalar("max_over_time(tickpipe_book_updates_total[5m])") <= summary["counters"]["book"]["books_out"]
        assert scalar("max_over_time(tickpipe_messages_malformed_total{reason=\"json\"}[5m])") == 0
        assert scalar('max_over_time(tickpipe_ring_capacity_records{ring="market"}[5m])') == 65536
        lags = query("max_over_time(tickpipe_ring_consumer_lag_records[5m])")
        assert {r["metric"]["ring"] for r in lags} >= {"market", "book", "orders"}
        # every strategy counter appears in the generic series, whatever the strategy's COUNTERS hold now
        assert scalar('count(max_over_time(tickpipe_stage_counter_total{stage="strategy"}[5m]))') == \
            len([n for n in counter_names("strategy") if not n.startswith("pnl_")])  # P&L: gauges of their own
        assert scalar('max_over_time(tickpipe_e2e_latency_seconds_count{stage="strategy"}[5m])') > 0
        assert len(query("max_over_time(tickpipe_strategy_equity[5m])")) == 1  # the P&L gauge the dashboard plots
        buckets = 'max_over_time(tickpipe_e2e_latency_seconds_bucket{stage="strategy"}[5m])'
        p50 = scalar(f"histogram_quantile(0.5, {buckets})")
        assert 1e-7 < p50 < 10
        p99 = scalar(f"histogram_quantile(0.99, {buckets})")
        assert p50 <= p99
        assert len(query("max_over_time(tickpipe_hop_latency_seconds_count[5m])")) == 4
        rss = query("max_over_time(tickpipe_process_resident_memory_bytes[5m])")
        assert {r["metric"]["process"] for r in rss} >= {"launcher", "inference"}
        assert all(float(r["value"][1]) > 1e6 for r in rss)
        assert all(float(r["value"][1]) > 0 for r in query("max_over_time(tickpipe_process_cpu_seconds_total[5m])"))
        ages = query("min_over_time(tickpipe_stage_heartbeat_age_seconds[5m])")
        assert {r["metric"]["stage"] for r in ages} == {"feed", "book", "strategy", "inference"}
        assert all(float(r["value"][1]) >= 0 for r in ages)
        for expr in _dashboard_exprs():  # the dashboard's queries are valid PromQL for this server
            query(expr.replace("$__rate_interval", "1m"))
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
