"""Per-run results (procs.results) on hand-built run folders with every figure worked out by hand."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from procs import results
from procs.results import EQUITY_COLS, FILL_COLS, ORDER_COLS, PARENT_COLS

ROOT = Path(__file__).resolve().parents[1]
A = pytest.approx


def write_csv(path: Path, cols: tuple[str, ...], rows: list[tuple], header: bool = True) -> None:
    lines = [",".join(cols)] if header else []
    lines += [",".join("" if v is None else str(v) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def fill(ts: int, cid: int, side: str, status: str, px: float, qty: float, fee: float = 0.0, liq: str = "",
         reason: str = "none", order_ts: int = 0, mid: float = 0.0, leaves: float = 0.0, tag: int = 0,
         sym: str = "BTCUSDT") -> tuple:
    return (ts, sym, tag, cid, side, status, px, qty, leaves, fee, liq, reason, order_ts, mid)


def order(ts: int, cid: int, action: str, otype: str, side: str, px: float, qty: float, mid: float,
          post_only: int = 0, tag: int = 0, sym: str = "BTCUSDT") -> tuple:
    return (ts, sym, tag, cid, action, otype, side, px, qty, mid, post_only)


# A market maker's run through a position flip. Position path: +2 @ 99.95, +1 @ 100.1 (avg 100), sell 5 @ 104.895
# (closes 3 for +14.685, opens -2 @ 104.895), sell 1 @ 105.105 (avg 104.965), buy 1 @ 99.95 (closes 1 for +5.015).
# Fees: -0.02 + 0.02 + 0.03 + 0.25 - 0.01 - 0.01 = 0.26 -> realised 19.7 - 0.26 = 19.44; final mid 100:
# unrealised -2 * (100 - 104.965) = 9.93, equity 29.37.
MM_FILLS = [
    fill(1005, 1, "buy", "ack", 99.95, 0, leaves=2, order_ts=1000, mid=100),
    fill(1100, 1, "buy", "filled", 99.95, 2, fee=-0.02, liq="maker", order_ts=1000, mid=100),  # -5 bps
    # a market order filled at once, in two parts, with no ack: it still counts as acknowledged
    fill(2010, 2, "buy", "partial", 100.1, 0.4, fee=0.02, liq="taker", order_ts=2000, mid=100, leaves=0.6),  # +10
    fill(2030, 2, "buy", "filled", 100.1, 0.6, fee=0.03, liq="taker", order_ts=2000, mid=100),  # +10
    fill(3005, 3, "sell", "ack", 0, 0, leaves=5, order_ts=3000, mid=105),
    fill(3010, 3, "sell", "filled", 104.895, 5, fee=0.25, liq="taker", order_ts=3000, mid=105),  # +10
    fill(4002, 4, "sell", "ack", 105.105, 0, leaves=1, order_ts=4000, mid=105),
    fill(4500, 4, "sell", "filled", 105.105, 1, fee=-0.01, liq="maker", order_ts=4000, mid=105),  # -10
    fill(5001, 5, "buy", "ack", 99.95, 0, leaves=1, order_ts=5000, mid=100),
    fill(5300, 5, "buy", "filled", 99.95, 1, fee=-0.01, liq="maker", order_ts=5000, mid=100),  # -5
    fill(6001, 6, "buy", "ack", 95, 0, leaves=1, order_ts=6000, mid=100),
    fill(6101, 6, "buy", "replaced", 96, 0, leaves=1, order_ts=6100, mid=100),
    fill(6201, 6, "buy", "canceled", 96, 0, reason="user_cancel", order_ts=6200, mid=100),
    fill(6500, 7, "buy", "rejected", 99, 0, reason="max_position", order_ts=6500, mid=100),
    fill(6600, 8, "sell", "rejected", 99, 0, reason="post_only_would_cross", order_ts=6590, mid=100),
    fill(6700, 9, "buy", "rejected", 99, 0, reason="max_position", order_ts=6700, mid=100),
]
MM_ORDERS = [
    order(1000, 1, "new", "limit", "buy", 99.95, 2, 100),
    order(2000, 2, "new", "market", "buy", 0, 1, 100),
    order(3000, 3, "new", "market", "sell", 0, 5, 105),
    order(4000, 4, "new", "limit", "sell", 105.105, 1, 105, post_only=1),
    order(5000, 5, "new", "limit", "buy", 99.95, 1, 100),
    order(6000, 6, "new", "limit", "buy", 95, 1, 100),
    order(6100, 6, "replace", "limit", "buy", 96, 1, 100),
    order(6200, 6, "cancel", "limit", "buy", 96, 1, 100),
    order(6590, 8, "new", "limit", "sell", 99, 1, 100, post_only=1),
]
# exch_ts_ms,symbol,tag,position,avg_price,cash,fees,realized,unrealized,mid,equity (hand-computed at each second)
MM_EQUITY = [
    (1000, "BTCUSDT", 0, 0, 0, 0, 0, 0, 0, 100, 0),
    (2000, "BTCUSDT", 0, 2, 99.95, -199.88, -0.02, 0.02, -1.9, 99, -1.88),
    (3000, "BTCUSDT", 0, 3, 100, -300.03, 0.03, -0.03, 9, 103, 8.97),
    (4000, "BTCUSDT", 0, -2, 104.895, 224.195, 0.28, 14.405, -2.21, 106, 12.195),
    (5000, "BTCUSDT", 0, -3, 104.965, 329.31, 0.27, 14.415, -9.105, 108, 5.31),
    (6000, "BTCUSDT", 0, -2, 104.965, 229.37, 0.26, 19.44, 9.93, 100, 29.37),
]
DECISION = {"count": 9, "min": 800, "mean": 2100.0, "p50": 1500, "p90": 4000, "p99": 9000, "p99.9": 9000,
            "p99.99": 9000, "max": 9000}


def mm_run(d: Path, equity: bool = True) -> Path:
    write_csv(d / "fills.csv", FILL_COLS, MM_FILLS)
    write_csv(d / "orders.csv", ORDER_COLS, MM_ORDERS)
    if equity:
        write_csv(d / "equity.csv", EQUITY_COLS, MM_EQUITY)
    summary = {"meta": {"run": d.name}, "histograms": {"strategy.decision": DECISION}, "counters": {}, "rates": {},
               "strategy": {"name": "procs.strategies.mm.MarketMaker", "params": {}, "tags": {"0": "mm"},
                            "rejects": {"max_position": 2}}}
    (d / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return d


def test_pnl_through_a_position_flip_with_fees_and_rebates(tmp_path: Path) -> None:
    res = results.compute(mm_run(tmp_path))
    assert res["status"] == "ok"
    m = res["tags"]["0"]["symbols"]["BTCUSDT"]
    assert res["tags"]["0"]["name"] == "mm"
    assert m["fills"] == 6 and m["maker_fills"] == 3 and m["taker_fills"] == 3
    assert m["filled_qty"] == A(10) and m["buy_qty"] == A(4) and m["sell_qty"] == A(6)
    assert m["notional"] == A(199.9 + 40.04 + 60.06 + 524.475 + 105.105 + 99.95)
    assert m["fees"] == A(0.26) and m["fees_paid"] == A(0.30) and m["rebates"] == A(0.04)
    pnl = m["pnl"]
    assert pnl["source"] == "equity.csv" and pnl["as_of_ms"] == 6000
    assert pnl["realized"] == A(19.44) and pnl["unrealized"] == A(9.93) and pnl["equity"] == A(29.37)
    assert pnl["position"] == A(-2) and pnl["avg_price"] == A(104.965) and pnl["mid"] == A(100)
    # recomputed from fills.csv by average cost: the same 19.44
    assert m["realized_check"]["recomputed"] == A(19.44, abs=1e-9)
    assert m["realized_check"]["ok"] is True and res["consistency"] == []
    # peak 12.195 at 4 s, trough 5.31 at 5 s (the early dip to -1.88 is smaller)
    assert m["max_drawdown"] == {"value": A(6.885), "peak_ms": 4000, "trough_ms": 5000}
    assert m["max_abs_position"] == A(3)
    # a single-symbol sleeve's overall row carries the same money
    o = res["tags"]["0"]["overall"]
    assert o["pnl"]["equity"] == A(29.37) and o["max_drawdown"]["value"] == A(6.885) and o["filled_qty"] is None


def test_fill_rate_orders_and_latency(tmp_path: Path) -> None:
    m = results.compute(mm_run(tmp_path))["tags"]["0"]["symbols"]["BTCUSDT"]
    assert m["orders"] == {"new": 7, "cancel": 1, "replace": 1, "limit": 5, "market": 2}
    # acknowledged: 1, 3, 4, 5, 6 by ack + 2 filled without one; filled: 1-5
    fr = m["fill_rate"]
    assert fr["orders_acked"] == 6 and fr["orders_filled"] == 5 and fr["order_ratio"] == A(5 / 6)
    assert fr["qty_ordered"] == A(12) and fr["qty_filled"] == A(10) and fr["qty_ratio"] == A(10 / 12)
    # first fill − decision: 100, 10, 10, 500, 300 ms (order 2's second partial does not count)
    assert m["order_to_fill_ms"] == {"n": 5, "p50": 100.0, "p90": 500.0, "p99": 500.0, "max": 500.0}


def test_slippage_signs_for_buys_sells_maker_taker(tmp_path: Path) -> None:
    s = results.compute(mm_run(tmp_path))["tags"]["0"]["symbols"]["BTCUSDT"]["slippage_bps"]
    # per fill: buy maker -5 (x2 qty), buy taker +10 (0.4, 0.6), sell taker +10 (5), sell maker -10 (1), buy maker -5
    assert s["all"]["n"] == 6 and s["all"]["qty"] == A(10)
    assert s["all"]["mean"] == A(3.5) and s["all"]["median"] == A(-5) and s["all"]["p90"] == A(10)
    assert s["maker"]["n"] == 3 and s["maker"]["mean"] == A(-6.25) and s["maker"]["median"] == A(-5)
    assert s["taker"]["n"] == 3 and s["taker"]["mean"] == A(10) and s["taker"]["p90"] == A(10)
    assert s["no_mid"] == 0
    assert results.slippage_bps(1, 100.1, 100) == A(10)  # buy above the mid: a cost
    assert results.slippage_bps(-1, 99.9, 100) == A(10)  # sell below the mid: a cost
    assert results.slippage_bps(-1, 100.1, 100) == A(-10)  # sell above the mid: a gain


def test_rejects_by_reason_and_decision_latency(tmp_path: Path) -> None:
    res = results.compute(mm_run(tmp_path))
    m = res["tags"]["0"]["symbols"]["BTCUSDT"]
    assert m["rejects"] == {"max_position": 2, "post_only_would_cross": 1}
    assert res["rejects_counters"] == {"max_position": 2}
    assert res["decision_latency_ns"]["p99"] == 9000 and res["decision_latency_ns"]["count"] == 9
    text = results.format_text(res)
    assert "max_position" in text and "strategy counters (summary.json): max_position=2" in text
    assert "decision latency (book in → order out): n=9" in text and "p99 9.00 µs" in text


def test_realised_mismatch_is_reported(tmp_path: Path) -> None:
    mm_run(tmp_path)
    rows = [*MM_EQUITY[:-1], (6000, "BTCUSDT", 0, -2, 104.965, 229.37, 0.26, 19.5, 9.93, 100, 29.43)]
    write_csv(tmp_path / "equity.csv", EQUITY_COLS, rows)
    res = results.compute(tmp_path)
    (c,) = res["consistency"]
    assert c["tag"] == "0" and c["symbol"] == "BTCUSDT"
    assert c["reported"] == A(19.5) and c["recomputed"] == A(19.44) and c["diff"] == A(0.06) and c["ok"] is False
    assert "REALISED MISMATCH mm BTCUSDT" in results.format_text(res)
    # float noise on a flat book is not a mismatch; 1e-6 relative is
    assert results._realized_agrees(0.0, 1e-15, 3) is True
    assert results._realized_agrees(1000.0, 1000.0009, 3) is True
    assert results._realized_agrees(1000.0, 1000.0011, 3) is False


def test_without_equity_csv_pnl_comes_from_fills(tmp_path: Path) -> None:
    m = results.compute(mm_run(tmp_path, equity=False))["tags"]["0"]["symbols"]["BTCUSDT"]
    assert m["pnl"]["source"].startswith("fills.csv")
    assert m["pnl"]["realized"] == A(19.44) and m["pnl"]["position"] == A(-2)
    # marked at the last decision mid in fills.csv (100): -2 * (100 - 104.965)
    assert m["pnl"]["unrealized"] == A(9.93) and m["pnl"]["equity"] == A(29.37)
    assert m["max_drawdown"]["value"] is None and m["realized_check"]["ok"] is None
    assert m["max_abs_position"] == A(3)


def test_two_symbols_drawdown_on_the_summed_equity(tmp_path: Path) -> None:
    # ETH's equity moves at other times: the sleeve's curve holds each symbol's last value
    rows = [(1000, "BTCUSDT", 0, 0, 0, 0, 0, 0, 0, 100, 10.0), (3000, "BTCUSDT", 0, 0, 0, 0, 0, 0, 0, 100, 4.0),
            (2000, "ETHUSDT", 0, 0, 0, 0, 0, 0, 0, 10, 5.0), (4000, "ETHUSDT", 0, 0, 0, 0, 0, 0, 0, 10, 1.0)]
    write_csv(tmp_path / "equity.csv", EQUITY_COLS, rows)
    res = results.compute(tmp_path)
    # summed: 10 (1 s), 15 (2 s), 9 (3 s), 5 (4 s) -> drawdown 10 from 2 s to 4 s
    o = res["tags"]["0"]["overall"]
    assert o["max_drawdown"] == {"value": A(10), "peak_ms": 2000, "trough_ms": 4000}
    assert o["pnl"]["equity"] == A(5) and o["max_abs_position"] is None
    assert res["tags"]["0"]["symbols"]["BTCUSDT"]["max_drawdown"]["value"] == A(6)
    assert res["status"] == "no fills"


# -- execution A/B -------------------------------------------------------------------------------------------------
# Three parents worked by both sleeves: buy 2 over [k*10 s, k*10 s + 5 s], arrival mid 100. Each sleeve sends two
# 1-lot children, decided at mid 100 and at mid 101. Naive pays +5 bps on each child; ml-hybrid pays +2, +3, +4 bps
# on parents 0, 1, 2. Shortfall vs arrival: avg fill 100.5 (1 + s/1e4) -> 50 + 1.005 s bps (naive 55.025).
# A fourth parent is naive-only (filled 1 of 2 at +5 bps); one ml-hybrid fill falls outside every window.
def exec_run(d: Path) -> Path:
    fills, parents = [], []
    cid = 0
    for k, ml_bps in enumerate((2.0, 3.0, 4.0)):
        start = k * 10_000
        for tag, bps in ((0, 5.0), (1, ml_bps)):
            for j, mid in enumerate((100.0, 101.0)):
                cid += 1
                px = round(mid * (1 + bps / 1e4), 8)
                fills.append(fill(start + 1000 * j + 50, cid, "buy", "filled", px, 1, fee=0.01, liq="taker",
                                  order_ts=start + 1000 * j, mid=mid, tag=tag))
            avg = round(100.5 * (1 + bps / 1e4), 8)
            parents.append((tag, "BTCUSDT", "buy", 2, start, start + 5000, 100, 2, avg, 2))
    cid += 1
    fills.append(fill(30_050, cid, "buy", "filled", 100.05, 1, liq="taker", order_ts=30_000, mid=100, tag=0))
    parents.append((0, "BTCUSDT", "buy", 2, 30_000, 35_000, 100, 1, 100.05, 2))
    cid += 1
    fills.append(fill(50_050, cid, "buy", "filled", 100.05, 1, liq="taker", order_ts=50_000, mid=100, tag=1))
    fills.sort(key=lambda r: r[0])
    write_csv(d / "fills.csv", FILL_COLS, fills)
    write_csv(d / "parents.csv", PARENT_COLS, parents)
    summary = {"strategy": {"name": "procs.strategies.twap.Twap", "tags": {"0": "naive", "1": "ml-hybrid"}}}
    (d / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return d


def test_execution_per_parent_and_sleeve(tmp_path: Path) -> None:
    res = results.compute(exec_run(tmp_path))
    ex = res["execution"]
    assert ex["unassigned_fills"] == 1 and ex["ambiguous_fills"] == 0
    (p0,) = [p for p in ex["parents"] if p["tag"] == "1" and p["start_ms"] == 0]
    assert p0["name"] == "ml-hybrid" and p0["child_fills"] == 2 and p0["completion_pct"] == A(100)
    assert p0["slippage_bps"] == A(2) and p0["shortfall_bps"] == A(52.01)
    naive, ml = ex["sleeves"]["0"], ex["sleeves"]["1"]
    assert naive["parents"] == 4 and naive["completion_pct"] == A(87.5) and naive["child_fills"] == 7
    assert naive["slippage_bps"] == A(5) and naive["slices"] == 8
    assert naive["shortfall_bps"] == A((55.025 * 6 + 5.0) / 7)
    assert ml["parents"] == 3 and ml["child_fills"] == 6 and ml["slippage_bps"] == A(3)
    assert ml["shortfall_bps"] == A(53.015)
    # every child fills 50 ms after its decision (the first one decided at exchange time 0)
    assert res["tags"]["0"]["symbols"]["BTCUSDT"]["order_to_fill_ms"] == {"n": 7, "p50": 50.0, "p90": 50.0,
                                                                          "p99": 50.0, "max": 50.0}


def test_ab_comparison_of_two_sleeves(tmp_path: Path) -> None:
    res = results.write(exec_run(tmp_path))
    (ab,) = res["execution"]["ab"]
    assert (ab["a_name"], ab["b_name"], ab["common_parents"]) == ("naive", "ml-hybrid", 3)
    s = ab["slippage"]
    assert s["parents"] == 3 and s["slices_a"] == 6 and s["slices_b"] == 6
    assert s["a"] == A(5) and s["b"] == A(3) and s["diff"] == A(-2) and s["per_parent_mean_diff"] == A(-2)
    # per-parent Δ -3, -2, -1: sd 1, t(2) = 4.302653
    half = 4.302652729749462 / math.sqrt(3)
    assert s["per_parent_ci95"] == [A(-2 - half), A(-2 + half)]
    # 3 parents: a resample of all-parent-0 (p = 1/27 > 2.5%) is the bootstrap's lower end, all-parent-2 the upper
    assert s["ci95"] == [A(-3), A(-1)]
    f = ab["shortfall"]
    assert f["parents"] == 3 and f["a"] == A(55.025) and f["b"] == A(53.015) and f["diff"] == A(-2.01)
    assert f["ci95"] == [A(-3.015), A(-1.005)]
    # 3 parents: the bootstrap CI is too narrow to trust alone, so the verdict quotes the paired t CI beside it
    assert ab["verdict"] == ("ml-hybrid slippage 2.00 bps lower than naive over 3 parents / 12 slices "
                             "(95% CI 1.00–3.00) [only 3 parents: paired t 95% CI of Δ -4.48…+0.48]; "
                             "shortfall vs arrival 2.01 bps lower (95% CI 1.01–3.02)")
    text = (tmp_path / "results.txt").read_text(encoding="utf-8")
    assert "verdict: ml-hybrid slippage 2.00 bps lower than naive" in text
    assert (tmp_path / "slippage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ab_bootstrap_is_exact_when_every_parent_improves_equally(tmp_path: Path) -> None:
    fills, parents = [], []
    for k, level in enumerate((1.0, 7.0, 4.0, 10.0)):
        for tag, bps in ((0, level + 1.5), (1, level)):
            px = round(100 * (1 + bps / 1e4), 8)
            fills.append(fill(k * 1000 + 10, 10 * k + tag, "sell", "filled", round(200 - px, 8), 3, liq="maker",
                              order_ts=k * 1000, mid=100, tag=tag, sym="ETHUSDT"))
            parents.append((tag, "ETHUSDT", "sell", 3, k * 1000, k * 1000 + 500, 100, 3, round(200 - px, 8), 1))
    write_csv(tmp_path / "fills.csv", FILL_COLS, fills)
    write_csv(tmp_path / "parents.csv", PARENT_COLS, parents)
    (ab,) = results.compute(tmp_path)["execution"]["ab"]
    # sells below the mid: slippage = +bps; sleeve 1 is 1.5 bps cheaper on every parent
    assert ab["a_name"] == "0" and ab["b_name"] == "1"
    assert ab["slippage"]["diff"] == A(-1.5) and ab["slippage"]["ci95"] == [A(-1.5), A(-1.5)]
    assert ab["slippage"]["per_parent_ci95"] == [A(-1.5), A(-1.5)]
    assert ab["verdict"] == ("1 slippage 1.50 bps lower than 0 over 4 parents / 8 slices (95% CI 1.50–1.50) "
                             "[only 4 parents: paired t 95% CI of Δ -1.50…-1.50]; "
                             "shortfall vs arrival 1.50 bps lower (95% CI 1.50–1.50)")


# -- missing and malformed inputs ----------------------------------------------------------------------------------
def test_empty_run_folder_says_no_fills(tmp_path: Path) -> None:
    res = results.write(tmp_path)
    assert res["status"] == "no strategy output" and res["tags"] == {} and res["execution"] is None
    assert res["message"].startswith("no fills")
    text = (tmp_path / "results.txt").read_text(encoding="utf-8")
    assert "no fills: nothing to report" in text and "fills.csv missing" in text
    assert (tmp_path / "equity.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "slippage.png").exists()
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "no strategy output"
    assert '<img src="equity.png"' in results.html_fragment(tmp_path)


def test_orders_without_fills(tmp_path: Path) -> None:
    write_csv(tmp_path / "orders.csv", ORDER_COLS, MM_ORDERS[5:8])
    write_csv(tmp_path / "fills.csv", FILL_COLS, MM_FILLS[10:13])
    res = results.write(tmp_path)
    assert res["status"] == "no fills"
    assert res["message"] == "no fills: 3 order messages, 3 execution reports, none a fill"
    m = res["tags"]["0"]["symbols"]["BTCUSDT"]
    assert m["fills"] == 0 and m["fill_rate"]["order_ratio"] == A(0) and m["slippage_bps"]["all"]["mean"] is None
    assert m["order_to_fill_ms"] == {"n": 0, "p50": None, "p90": None, "p99": None, "max": None}
    assert m["pnl"]["equity"] == 0.0 and m["rejects"] == {}
    assert "status: no fills" in (tmp_path / "results.txt").read_text(encoding="utf-8")


def test_malformed_rows_are_counted_not_fatal(tmp_path: Path) -> None:
    mm_run(tmp_path)
    with (tmp_path / "fills.csv").open("a", encoding="utf-8") as f:
        f.write("7000,BTCUSDT,0,10,buy,filled,abc,1,0,0,maker,none,6990,100\n")  # line 18: bad price
        f.write("7001,BTCUSDT,0,11,buy,filled\n")  # line 19: short row
        f.write("7002,BTCUSDT,0,12,buy,exploded,100,1,0,0,maker,none,6990,100\n")  # line 20: unknown status
    (tmp_path / "summary.json").write_text("{not json", encoding="utf-8")
    res = results.compute(tmp_path)
    info = res["files"]["fills.csv"]
    assert info["rows"] == 19 and info["malformed"] == 3
    assert info["examples"][0].startswith("line 18: ") and "abc" in info["examples"][0]
    assert info["examples"][1] == "line 19: 6 fields, expected 14"
    assert info["examples"][2] == "line 20: unknown status 'exploded'"
    assert res["files"]["summary.json"]["error"].startswith("not valid JSON")
    # the good rows still give the same P&L, and the sleeve is named by its id without summary.json
    m = res["tags"]["0"]["symbols"]["BTCUSDT"]
    assert m["pnl"]["realized"] == A(19.44) and m["fills"] == 6 and res["tags"]["0"]["name"] == "0"
    assert "fills.csv 19 rows (3 malformed)" in results.format_text(res)


def test_strategy_json_stands_in_for_summary_strategy(tmp_path: Path) -> None:
    exec_run(tmp_path)
    strat = json.loads((tmp_path / "summary.json").read_text())["strategy"]
    strat["rejects"] = {"rate_limit": 4}
    (tmp_path / "strategy.json").write_text(json.dumps(strat), encoding="utf-8")
    (tmp_path / "summary.json").write_text(json.dumps({"histograms": {}}), encoding="utf-8")
    res = results.compute(tmp_path)
    assert res["strategy"]["tags"] == {"0": "naive", "1": "ml-hybrid"}
    assert res["rejects_counters"] == {"rate_limit": 4} and res["tags"]["1"]["name"] == "ml-hybrid"


def test_missing_columns_and_headerless_files(tmp_path: Path) -> None:
    (tmp_path / "orders.csv").write_text("ts,what\n1,2\n", encoding="utf-8")
    write_csv(tmp_path / "equity.csv", EQUITY_COLS, MM_EQUITY, header=False)
    res = results.compute(tmp_path)
    assert res["files"]["orders.csv"]["error"].startswith("missing columns: exch_ts_ms, symbol")
    # a headerless equity.csv with exactly the spec's columns is read as data
    assert res["files"]["equity.csv"]["rows"] == 6 and res["files"]["equity.csv"]["malformed"] == 0
    assert res["tags"]["0"]["symbols"]["BTCUSDT"]["pnl"]["equity"] == A(29.37)


# -- outputs -------------------------------------------------------------------------------------------------------
def test_write_plot_html_and_cli(tmp_path: Path) -> None:
    res = results.write(mm_run(tmp_path))
    assert json.loads((tmp_path / "results.json").read_text())["tags"]["0"]["overall"]["fills"] == 6
    assert res["tags"]["0"]["symbols"]["BTCUSDT"]["pnl"]["equity"] == A(29.37)
    assert (tmp_path / "equity.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "slippage.png").exists()  # not an execution run
    frag = results.html_fragment(tmp_path)
    assert frag.startswith('<section class="tickpipe-results">') and frag.endswith("</section>")
    assert '<img src="equity.png"' in frag and "<td>29.37</td>" in frag and "P&amp;L" in frag
    out = subprocess.run([sys.executable, "-m", "procs.results", str(tmp_path)], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out == (tmp_path / "results.txt").read_text(encoding="utf-8")
    assert "mm      BTCUSDT" in out
    js = subprocess.run([sys.executable, "-m", "procs.results", "--json", "--no-write", str(tmp_path)], cwd=ROOT,
                        capture_output=True, text=True, check=True).stdout
    assert json.loads(js)["tags"]["0"]["symbols"]["BTCUSDT"]["pnl"]["realized"] == A(19.44)
    bad = subprocess.run([sys.executable, "-m", "procs.results", str(tmp_path / "nope")], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "no such run folder" in bad.stderr


def test_percentile_and_t_quantile() -> None:
    assert results.percentile([], 50) is None
    assert results.percentile([4, 1, 3, 2], 50) == 2.0  # nearest rank: ceil(0.5 * 4) = 2nd
    assert results.percentile(range(1, 101), 29) == 29.0  # 0.29 * 100 must not round up to the 30th
    assert results.percentile(range(1, 11), 99) == 10.0
    for df, t in ((1, 12.706204736), (2, 4.302652730), (5, 2.570581836), (30, 2.042272456)):
        assert results.t_quantile_975(df) == A(t, abs=1e-8)
    assert results.max_drawdown([1, 2, 3], [-1.0, 2.0, 0.5]) == {"value": 1.5, "peak_ms": 2, "trough_ms": 3}


def test_scores_png_from_scores_labels_and_risk_events(tmp_path: Path) -> None:
    """scores.png when the run has scores.csv (a malformed row skipped), labels and kill activations drawn."""
    mm_run(tmp_path)
    assert not (tmp_path / "scores.png").exists() or results._plot_scores(tmp_path) is None
    rows = [(1_000 + 10 * i, sym, f"{0.9 if 200 <= i < 300 else 0.1}", "0.5", 1 if 200 <= i < 300 else 0, "0.5", 0)
            for i in range(500) for sym in ("BTCUSDT", "ETHUSDT")]
    write_csv(tmp_path / "scores.csv", ("exch_ts_ms", "symbol", "anomaly", "anomaly_raw", "flag", "p_up", "skipped"),
              [*rows, ("x", "BTCUSDT", "?", "", "", "", "")])
    (tmp_path / "labels.jsonl").write_text('{"symbol": "BTCUSDT", "kind": "price_spike", "start_E_ms": 2900, '
                                           '"end_E_ms": 4000}\n')
    (tmp_path / "risk_events.csv").write_text("exch_ts_ms,symbol,event\n3050,BTCUSDT,kill_switch_on\n")
    results.write(tmp_path)
    assert (tmp_path / "scores.png").read_bytes()[:4] == b"\x89PNG"
    assert '<img src="scores.png"' in results.html_fragment(tmp_path)
    (tmp_path / "scores.csv").write_text("exch_ts_ms,symbol,anomaly,anomaly_raw,flag,p_up,skipped\n")
    assert results._plot_scores(tmp_path) is None  # a header alone: nothing to draw
