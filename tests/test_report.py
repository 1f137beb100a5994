"""The run report: its percentiles match hdrh and numpy, its .hlog files read back with hdrh, its CLI works."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogReader

from procs import report
from shm import hdr

ROOT = Path(__file__).resolve().parents[1]
PCTS = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99.9": 99.9, "p99.99": 99.99}


def latencies(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # µs-scale body with a long tail reaching ms, like a real hop
    return np.concatenate([rng.lognormal(9, 0.6, n), rng.integers(10**5, 5 * 10**7, n // 1000)]).astype(np.int64)


def write(tmp_path: Path, hists: dict) -> dict:
    return report.write_report(tmp_path, hists=hists, counters={"feed": {"messages_out": 7}},
                               meta={"run": "t1", "stop_reason": "test"}, rates={"seconds": 1.5})


def test_summary_percentiles_agree_with_hdrh_and_numpy(tmp_path: Path) -> None:
    values = latencies(100_000, 1)
    write(tmp_path, {"hop": hdr.Histogram.from_values(values)})
    s = json.loads((tmp_path / "summary.json").read_text())["histograms"]["hop"]
    ref = HdrHistogram(hdr.LOWEST, hdr.HIGHEST, hdr.SIG_FIGS)
    for v in values:
        ref.record_value(int(v))
    assert s["count"] == ref.get_total_count() == len(values)
    assert s["max"] == ref.get_max_value()
    assert ref.values_are_equivalent(s["min"], int(values.min()))
    assert s["mean"] == pytest.approx(ref.get_mean_value(), rel=1e-3)
    for key, p in PCTS.items():
        # same HdrHistogram bucket as hdrh's own answer
        assert ref.values_are_equivalent(s[key], ref.get_value_at_percentile(p)), key
        # the bucket top of numpy's sample at that rank: never below it, above by < 1/1000 (3 significant figures)
        raw = float(np.percentile(values, p, method="inverted_cdf"))
        assert raw <= s[key] <= raw * (1 + 1e-3), (key, raw, s[key])


def test_interval_logs_read_back_with_hdrh(tmp_path: Path) -> None:
    start = 1_700_000_000.25
    names = ["strategy.e2e", "feed→book"]
    live = {n: hdr.new_counts() for n in names}  # cumulative, as the stages' shared arrays
    deltas: dict[str, list[np.ndarray]] = {n: [] for n in names}
    with report.IntervalLogger(tmp_path / "hlog", names, start_time_s=start) as logger:
        for i, n_values in enumerate((1000, 0, 2500)):
            for k, name in enumerate(names):
                before = live[name].copy()
                hdr.record_many(live[name], latencies(n_values, 10 * i + k)[:n_values])
                deltas[name].append(live[name] - before)
            # the launcher passes raw counts; Histogram objects must work as well
            logger.snapshot(start + i + 1, {"strategy.e2e": live["strategy.e2e"].copy(),
                                            "feed→book": hdr.Histogram(live["feed→book"])})
    assert sorted(p.name for p in (tmp_path / "hlog").iterdir()) == ["feed_book.hlog", "strategy.e2e.hlog"]
    for name in names:
        reader = HistogramLogReader(str(logger.paths[name]), HdrHistogram(hdr.LOWEST, hdr.HIGHEST, hdr.SIG_FIGS))
        got = []
        while (h := reader.get_next_interval_histogram()) is not None:
            got.append(h)
        reader.close()
        assert reader.get_start_time_sec() == pytest.approx(start)
        assert len(got) == 3
        for i, h in enumerate(got):
            assert h.get_total_count() == int(deltas[name][i].sum())
            assert np.array_equal(hdr.Histogram.from_hdrh(h).counts, deltas[name][i])
            assert h.get_start_time_stamp() / 1000 == pytest.approx(start + i, abs=2e-3)
            assert h.get_end_time_stamp() / 1000 == pytest.approx(start + i + 1, abs=2e-3)
        assert sum(h.get_total_count() for h in got) == int(live[name].sum()) == 3500


def test_write_report_writes_json_table_and_png(tmp_path: Path) -> None:
    hists = {"tick_to_decision": hdr.Histogram.from_values(latencies(20_000, 2)),
             "feed→book": hdr.Histogram.from_values(np.full(100, 800)),
             "orders.sink_poll": hdr.Histogram.from_values(np.full(10, 3_000_000))}
    summary = write(tmp_path, hists)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == summary
    assert set(on_disk) == {"meta", "histograms", "counters", "rates"}
    assert set(on_disk["histograms"]["feed→book"]) == set(report.STAT_KEYS)
    png = (tmp_path / "latency.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    table = (tmp_path / "percentiles.txt").read_text()
    assert table.strip() == report.percentile_table(hists)
    for word in (*hists, "p99.9", "p99.99", "µs", "ns", "ms"):
        assert word in table, word
    header, *rows = table.strip().splitlines()
    assert len(rows) == 3 and all(len(r) <= len(header) for r in rows)  # right-aligned under the header


def test_units_are_chosen_per_value() -> None:
    assert report.fmt_ns(812) == "812 ns"
    assert report.fmt_ns(12_345) == "12.3 µs"
    assert report.fmt_ns(1_234) == "1.23 µs"
    assert report.fmt_ns(999_700) == "1.00 ms"
    assert report.fmt_ns(4_560_000) == "4.56 ms"
    assert report.fmt_ns(1_200_000_000) == "1.20 s"
    assert report.fmt_ns(None) == "-"


def test_empty_histogram_is_null_and_left_out_of_the_plot(tmp_path: Path, monkeypatch) -> None:
    plotted: list[list[str]] = []
    real = report.plot_percentiles
    monkeypatch.setattr(report, "plot_percentiles", lambda h, path, title: (plotted.append(list(h)),
                                                                           real(h, path, title)))
    summary = write(tmp_path, {"busy": hdr.Histogram.from_values(np.arange(1, 1000)), "idle": hdr.Histogram()})
    idle = summary["histograms"]["idle"]
    assert idle["count"] == 0 and all(idle[k] is None for k in report.STAT_KEYS if k != "count")
    assert plotted == [["busy"]]
    assert "idle" in (tmp_path / "percentiles.txt").read_text()
    # nothing recorded at all: still a (labelled) plot, no error
    write(tmp_path / "none", {"idle": hdr.Histogram()})
    assert (tmp_path / "none" / "latency.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_failure_is_logged_not_fatal(tmp_path: Path, monkeypatch, caplog) -> None:
    def boom(*a: object) -> None:
        raise RuntimeError("no fonts")

    monkeypatch.setattr(report, "plot_percentiles", boom)
    with caplog.at_level(logging.WARNING, logger="procs.report"):
        summary = write(tmp_path, {"hop": hdr.Histogram.from_values(np.arange(1, 100))})
    assert summary["histograms"]["hop"]["count"] == 99
    assert (tmp_path / "summary.json").is_file() and (tmp_path / "percentiles.txt").is_file()
    assert "latency plot" in caplog.text


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "procs.report", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_cli_prints_report_and_rejects_missing_folder(tmp_path: Path) -> None:
    write(tmp_path, {"tick_to_decision": hdr.Histogram.from_values(latencies(5000, 3))})
    r = cli(str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "tick_to_decision" in r.stdout and "p99.9" in r.stdout and "messages_out=7" in r.stdout
    assert "stop_reason: test" in r.stdout
    r = cli(str(tmp_path / "absent"))
    assert r.returncode == 2 and "no such run folder" in r.stderr


def test_cli_hlog_intervals_and_missing_files(tmp_path: Path, capsys) -> None:
    counts = hdr.new_counts()
    with report.IntervalLogger(tmp_path / "hlog", ["book.hop"], start_time_s=1_700_000_000.0) as logger:
        for i in range(3):
            hdr.record_many(counts, np.full(10 * (i + 1), 5_000 * (i + 1)))
            logger.snapshot(1_700_000_000.0 + i + 1, {"book.hop": counts})
    assert report.main([str(tmp_path), "--hlog", "book.hop"]) == 0
    out = capsys.readouterr().out
    assert "3 interval(s)" in out
    lines = out.splitlines()
    assert [ln.split()[3] for ln in lines[2:5]] == ["10", "20", "30"]  # count column per interval
    assert lines[-1].split()[0] == "total" and lines[-1].split()[3] == "60"
    assert "15.0 µs" in lines[-1]  # the total's max
    assert report.main([str(tmp_path), "--hlog", "nope"]) == 2
    assert "available: book.hop" in capsys.readouterr().err
    assert report.main([str(tmp_path)]) == 2  # no summary.json
    assert "no summary.json" in capsys.readouterr().err


# -- report.html ------------------------------------------------------------------------------------
def rich_summary(tmp_path: Path, *, with_flame: bool) -> dict:
    meta: dict = {"run": "t9", "stop_reason": "duration 3 s reached", "exit_code": 0, "placement": "feed,book@0",
                  "doctor": {"verdict": "not tuned: 1 warning(s)", "exit_code": 3, "checks": [
                      {"name": "isolation", "status": "warn", "found": "isolated=none <x>",
                       "fix": "add isolcpus=1 to the kernel command line"},
                      {"name": "clocksource", "status": "ok", "found": "tsc", "fix": ""}]}}
    if with_flame:
        (tmp_path / "flame").mkdir()
        (tmp_path / "flame" / "feed+book.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'></svg>")
        (tmp_path / "flame" / "perf.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'></svg>")
        meta["profile"] = {"folder": "flame", "py_spy": {"feed+book": "flame/feed+book.svg"},
                           "perf": "flame/perf.svg", "notes": ["py-spy on inference exited at once"]}
    return report.write_report(tmp_path, hists={"tick_to_decision": hdr.Histogram.from_values(latencies(5000, 4))},
                               counters={"feed": {"messages_out": 1234}, "book": {"gaps": 0}}, meta=meta,
                               rates={"seconds": 3.0, "messages_per_s": 411.3})


def test_report_html_gathers_table_plot_counters_doctor_and_flames(tmp_path: Path) -> None:
    summary = rich_summary(tmp_path, with_flame=True)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    # the percentile table: every column, with the same numbers as percentiles.txt
    s = summary["histograms"]["tick_to_decision"]
    for k in ("p50", "p99.99", "max"):
        assert f"<th>{k}</th>" in page and report.fmt_ns(s[k]) in page
    # the plot is embedded, so the page reads alone; the flame graphs are linked by relative path
    assert "data:image/png;base64,iVBORw0KGgo" in page
    assert 'data="flame/feed+book.svg"' in page and 'data="flame/perf.svg"' in page
    assert "py-spy on inference exited at once" in page
    # counters, rates, doctor verdict and fixes; every value escaped
    assert "messages_out" in page and "1,234" in page and "messages_per_s" in page
    assert "not tuned: 1 warning(s)" in page and "fix: add isolcpus=1" in page
    assert 'class="warn"' in page and "isolated=none &lt;x&gt;" in page and "<x>" not in page
    # self-contained: nothing fetched from the network
    assert "http://" not in page.replace("http://www.w3.org", "") and "https://" not in page


def test_report_html_without_profile_says_how_to_take_one(tmp_path: Path) -> None:
    rich_summary(tmp_path, with_flame=False)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "python run.py --profile" in page and "<object" not in page


def test_report_html_sections_plug_in(tmp_path: Path, monkeypatch) -> None:
    assert report.results_section({"meta": {}}) == ""
    monkeypatch.setattr(report, "SECTIONS", [])
    report.register_section(lambda summary, folder: f"<h2>P&amp;L</h2><p>run {summary['meta']['run']}</p>")
    monkeypatch.setattr(report, "results_section", lambda summary: "<h2>Strategy results</h2>")

    def broken(summary: dict, folder: Path) -> str:
        raise ValueError("a broken section must not lose the report")

    report.register_section(broken)
    rich_summary(tmp_path, with_flame=False)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<h2>P&amp;L</h2><p>run t9</p>" in page and "<h2>Strategy results</h2>" in page
    assert page.index("Latency percentiles") < page.index("Strategy results") < page.index("P&amp;L")


def test_cli_rewrites_report_html(tmp_path: Path) -> None:
    rich_summary(tmp_path, with_flame=False)
    (tmp_path / "report.html").unlink()
    r = cli(str(tmp_path), "--html")
    assert r.returncode == 0, r.stderr
    assert "tick_to_decision" in (tmp_path / "report.html").read_text(encoding="utf-8")


def test_cli_html_keeps_the_strategy_results_section(tmp_path: Path) -> None:
    """`python -m procs.report RUN --html` on a run with results: the section procs.results registers is there
    (under -m the CLI's module is __main__, not the procs.report the section registers with)."""
    rich_summary(tmp_path, with_flame=False)
    (tmp_path / "fills.csv").write_text("exch_ts_ms,symbol,tag,client_order_id,side,status,price,qty,leaves_qty,fee,"
                                        "liquidity,reason,order_ts_ms,mid_at_decision\n")
    (tmp_path / "results.json").write_text("{}")
    r = cli(str(tmp_path), "--html")
    assert r.returncode == 0, r.stderr
    assert "<h2>Strategy results</h2>" in (tmp_path / "report.html").read_text(encoding="utf-8")
