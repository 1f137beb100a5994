"""scripts/eval_mm.py on a hand-built run folder with every figure worked out by hand, and one short real run.

The folder (exchange ms): BTCUSDT quotes cid 1/2 from 1000, cid 1 fills at 5000, cid 3 joins; the kill switch
cancels 2 and 3 at 11000 (gone 11006); quotes 4/5 from 15000 (4 replaced at 17000, 5 partly filled at 20000);
a kill at 21000 (gone 21005), a requote (cid 6) at 22500 that fills at 23000, then nothing. ETHUSDT quotes 7/8
from 2000, 7 replaced at 10500, 8 fills at 11500, 9 joins; a replace of 9 refused at 12503 (it keeps resting);
7 canceled by the user at 30000. The run's records span 1000..31000.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("eval_mm", ROOT / "scripts" / "eval_mm.py")
assert _spec is not None and _spec.loader is not None
eval_mm = importlib.util.module_from_spec(_spec)
sys.modules["eval_mm"] = eval_mm  # dataclasses look their module up while the class is built
_spec.loader.exec_module(eval_mm)
A = pytest.approx

FILL_HDR = ("exch_ts_ms,symbol,tag,client_order_id,side,status,price,qty,leaves_qty,fee,liquidity,reason,"
            "order_ts_ms,mid_at_decision")
ORDER_HDR = "exch_ts_ms,symbol,tag,client_order_id,action,type,side,price,qty,mid_at_decision,post_only"
EQ_HDR = "exch_ts_ms,symbol,tag,position,avg_price,cash,fees,realized,unrealized,mid,equity"
K = "kill_switch_cancel"


def f(ts: int, sym: str, cid: int, side: str, status: str, px: float, qty: float = 0.0, leaves: float = 0.0,
      fee: float = 0.0, liq: str = "", reason: str = "none") -> str:
    return f"{ts},{sym},0,{cid},{side},{status},{px},{qty},{leaves},{fee},{liq},{reason},{ts - 3},{px}"


def o(ts: int, sym: str, cid: int, action: str, side: str, px: float, qty: float = 0.01) -> str:
    return f"{ts},{sym},0,{cid},{action},limit,{side},{px},{qty if action != 'cancel' else 0},{px},1"


ORDERS = [
    o(1000, "BTCUSDT", 1, "new", "buy", 100.0), o(1000, "BTCUSDT", 2, "new", "sell", 100.2),
    o(2000, "ETHUSDT", 7, "new", "buy", 3000.0), o(2000, "ETHUSDT", 8, "new", "sell", 3001.0),
    o(5000, "BTCUSDT", 3, "new", "buy", 99.9),
    o(10500, "ETHUSDT", 7, "replace", "buy", 3000.5),
    o(11000, "BTCUSDT", 2, "cancel", "sell", 100.2), o(11000, "BTCUSDT", 3, "cancel", "buy", 99.9),
    o(11500, "ETHUSDT", 9, "new", "sell", 3001.5),
    o(12500, "ETHUSDT", 9, "replace", "sell", 3000.9),
    o(15000, "BTCUSDT", 4, "new", "buy", 100.1), o(15000, "BTCUSDT", 5, "new", "sell", 100.3),
    o(17000, "BTCUSDT", 4, "replace", "buy", 100.15),
    o(21000, "BTCUSDT", 4, "cancel", "buy", 100.15), o(21000, "BTCUSDT", 5, "cancel", "sell", 100.3),
    o(22500, "BTCUSDT", 6, "new", "buy", 100.0),
    o(30000, "ETHUSDT", 7, "cancel", "buy", 3000.5),
]
FILLS = [
    f(1005, "BTCUSDT", 1, "buy", "ack", 100.0, leaves=0.01), f(1005, "BTCUSDT", 2, "sell", "ack", 100.2, leaves=0.01),
    f(2003, "ETHUSDT", 7, "buy", "ack", 3000.0, leaves=0.01), f(2003, "ETHUSDT", 8, "sell", "ack", 3001.0, leaves=0.01),
    f(5000, "BTCUSDT", 1, "buy", "filled", 100.0, qty=0.01, fee=0.1, liq="maker"),
    f(5005, "BTCUSDT", 3, "buy", "ack", 99.9, leaves=0.01),
    f(10503, "ETHUSDT", 7, "buy", "replaced", 3000.5, leaves=0.01),
    f(11005, "BTCUSDT", 2, "sell", "canceled", 100.2, reason=K),
    f(11006, "BTCUSDT", 3, "buy", "canceled", 99.9, reason=K),
    f(11500, "ETHUSDT", 8, "sell", "filled", 3001.0, qty=0.01, fee=0.3, liq="maker"),
    f(11503, "ETHUSDT", 9, "sell", "ack", 3001.5, leaves=0.01),
    f(12503, "ETHUSDT", 9, "sell", "rejected", 3000.9, leaves=0.01, reason="post_only_would_cross"),
    f(15005, "BTCUSDT", 4, "buy", "ack", 100.1, leaves=0.01), f(15005, "BTCUSDT", 5, "sell", "ack", 100.3, leaves=0.01),
    f(17005, "BTCUSDT", 4, "buy", "replaced", 100.15, leaves=0.01),
    f(20000, "BTCUSDT", 5, "sell", "partial", 100.3, qty=0.004, leaves=0.006, fee=0.04, liq="maker"),
    f(21005, "BTCUSDT", 4, "buy", "canceled", 100.15, reason=K),
    f(21005, "BTCUSDT", 5, "sell", "canceled", 100.3, reason=K),
    f(22505, "BTCUSDT", 6, "buy", "ack", 100.0, leaves=0.01),
    f(23000, "BTCUSDT", 6, "buy", "filled", 100.0, qty=0.01, fee=0.1, liq="maker"),
    f(30003, "ETHUSDT", 7, "buy", "canceled", 3000.5, reason="user_cancel"),
]
EQUITY = [
    "1000,BTCUSDT,0,0,0,0,0,0,0,100,0", "1000,ETHUSDT,0,0,0,0,0,0,0,3000,0",
    "11000,BTCUSDT,0,0.01,100,-1,0.1,-0.1,-0.4,100,-0.5", "11000,ETHUSDT,0,0,0,0,0,0.2,0,3000,0.2",
    "21000,BTCUSDT,0,0.006,100,-1,0.14,-0.5,-0.5,100,-1.0", "21000,ETHUSDT,0,-0.01,3001,30,0.3,-0.5,0,3000,-0.5",
    "31000,BTCUSDT,0,0.016,100,-1.8,0.24,-0.1,-0.1,100,-0.2", "31000,ETHUSDT,0,-0.01,3001,30,0.3,0.25,0.05,3000,0.3",
]
LABELS = [
    ("BTCUSDT", "price_spike", 10000, 14000), ("ETHUSDT", "volume_surge", 10000, 12000),
    ("BTCUSDT", "book_wipe", 20000, 24000), ("BTCUSDT", "spread_blowout", 25000, 27000),
    ("ETHUSDT", "price_spike", 29000, 33000), ("BTCUSDT", "volume_surge", 40000, 43000),
]
PARAMS = {"qty": 0.01, "spread_bps": 2.0, "inv_skew_bps": 1.0, "dir_skew_bps": 1.0, "max_inventory": 0.05,
          "requote_bps": 0.5, "anomaly_widen": 1.0}
RISK = {"max_position": 1.0, "max_order_qty": 0.5, "max_notional": 100000.0, "max_orders_per_s": 50.0,
        "max_loss": 5000.0, "stale_ms": 5000.0, "kill_switch": True, "kill_hold_ms": 1000.0, "kill_flatten": False}


def make_run(d: Path, fills: list[str] = FILLS, params: dict | None = None, risk: dict | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "fills.csv").write_text("\n".join([FILL_HDR, *fills]) + "\n")
    (d / "orders.csv").write_text("\n".join([ORDER_HDR, *ORDERS]) + "\n")
    (d / "equity.csv").write_text("\n".join([EQ_HDR, *EQUITY]) + "\n")
    (d / "labels.jsonl").write_text("".join(json.dumps({"kind": k, "symbol": s, "start_E_ms": a, "end_E_ms": b,
                                                         "seed": 1}) + "\n" for s, k, a, b in LABELS))
    strat = {"name": "procs.strategies.market_maker:MarketMaker", "params": {**PARAMS, **(params or {})},
             "tags": {"0": "mm"}, "rejects": {}, "risk": {**RISK, **(risk or {})}}
    (d / "strategy.json").write_text(json.dumps(strat))
    (d / "summary.json").write_text(json.dumps({"counters": {
        "strategy": {"kills": 3, "halted": 0, "orders_dropped": 0, "fills_dropped": 0, "out_full": 0},
        "inference": {"alerts": 10, "cold": 4}, "orders_sink": {"received": len(ORDERS), "reports": len(FILLS)}}}))
    return d


@pytest.fixture
def rep(tmp_path: Path) -> dict:
    return eval_mm.evaluate(make_run(tmp_path / "run"))


def test_live_steps_and_rate_helpers() -> None:
    st = eval_mm.LiveSteps([10, 20, 30], [1, 2, 0])
    assert (st.at(9), st.at(10), st.at(25), st.at(30)) == (0, 1, 2, 0)
    assert st.segments(5, 35) == [(5, 10, 0), (10, 20, 1), (20, 30, 2), (30, 35, 0)]
    assert st.quoted_ms(15, 40) == 15
    assert st.first_zero(12, 40) == 30
    assert st.first_zero(12, 30) is None
    # (t - 1000, t]: an order exactly 1000 ms older is outside the window, as in the engine's rate check
    assert eval_mm.max_orders_in_1s([0, 999, 1000, 1999]) == 2
    assert eval_mm.max_orders_in_1s([0, 500, 999]) == 3


def test_limits(rep: dict) -> None:
    lim = rep["limits"]
    assert lim["inventory"]["value"] == A(0.016)  # +0.01, -0.004, +0.01 on BTC
    assert lim["inventory"]["limit"] == A(0.05)
    assert lim["inventory"]["per_symbol"] == {"BTCUSDT/0": {"max_abs": A(0.016), "final": A(0.016)},
                                              "ETHUSDT/0": {"max_abs": A(0.01), "final": A(-0.01)}}
    assert lim["loss"]["value"] == A(-1.5) and lim["loss"]["worst_at_ms"] == 21000 and lim["loss"]["ok"]
    fr = lim["fill_rate"]
    assert (fr["orders_acked"], fr["orders_filled"]) == (9, 4)
    assert fr["value"] == A(4 / 9)
    assert fr["range"] == [A(1 / 3), A(0.5)]
    assert lim["order_size"]["value"] == A(0.01)
    assert lim["order_notional"]["value"] == A(30.015)
    assert lim["order_rate"]["value"] == 2
    pnl = lim["pnl"]
    assert (pnl["realized"], pnl["unrealized"], pnl["fees"], pnl["equity"]) == (A(0.15), A(-0.05), A(0.54), A(0.1))
    assert rep["verdict"]["limits"]["ok"] is True


def test_limits_breached(tmp_path: Path) -> None:
    rep = eval_mm.evaluate(make_run(tmp_path / "run", params={"max_inventory": 0.015}, risk={"max_loss": 1.0}))
    assert rep["limits"]["inventory"]["ok"] is False and rep["limits"]["inventory"]["limit"] == A(0.015)
    assert rep["limits"]["loss"]["ok"] is False and rep["limits"]["loss"]["limit"] == A(-1.0)
    assert rep["verdict"]["limits"]["ok"] is False


def test_windows(rep: dict) -> None:
    w = {x["index"]: x for x in rep["windows"]}
    assert sorted(w) == [0, 1, 2, 3, 4]  # the window at 40000 starts after the last record (31000)
    assert rep["span_ms"] == [1000, 31000]
    # (a) the kill switch
    assert w[0]["kill"] == {"kills_in_window": 1, "kill_ms": 11000, "gone_ms": 11006, "requote_ms": None,
                            "first_kill_held": True, "held": True, "held_kill_ms": 11000, "last_kill_before_ms": None}
    assert w[2]["kill"]["kill_ms"] == 21000 and w[2]["kill"]["gone_ms"] == 21005
    assert w[2]["kill"]["requote_ms"] == 22500 and w[2]["kill"]["held"] is False
    assert w[1]["kill"]["kills_in_window"] == 0
    # (b) dark share
    assert [w[i]["dark_share"] for i in range(5)] == [A(2994 / 4000), 0.0, A(2500 / 4000), 1.0, 0.0]
    # (c) quotes: BTC sent 6 of its 7 quotes outside its 10 s of windows (20 s of 30 s outside): 0.3 per second
    assert [w[i]["quotes"]["in_window"] for i in range(5)] == [0, 2, 1, 0, 0]
    assert [w[i]["quotes"]["expected_outside"] for i in range(5)] == [A(1.2), A(3 / 13), A(1.2), A(0.6), A(3 / 13)]
    assert w[1]["quotes"]["ratio"] == A(26 / 3)
    assert w[2]["quotes"]["before"] == 1 and w[2]["quotes"]["before_overlaps_window"] is False
    assert w[3]["quotes"]["before_overlaps_window"] is True
    assert w[4]["truncated"] is True and w[4]["end_ms"] == 31000
    # verdicts per window
    assert [w[i]["stopped"] for i in range(5)] == [True, False, False, True, False]
    assert [w[i]["stop_delay_ms"] for i in range(5)] == [1006, None, None, 0, None]
    assert w[0]["why"] == "stopped: kill switch at +1000 ms, quotes gone at +1006 ms, held"
    assert w[2]["why"].startswith("missed: kill switch at +1000 ms but quoting resumed at +2500 ms")
    assert w[1]["why"].startswith("missed: no kill-switch activation while the symbol quoted (live quote from +0 ms")
    assert w[3]["why"] == "dark throughout: no live quote and no quote sent (no kill-switch record)"
    agg = rep["windows_summary"]
    assert (agg["windows_labelled"], agg["windows_observed"], agg["stopped"], agg["held"]) == (6, 5, 2, 1)
    assert agg["dark_share_mean"] == A((2994 / 4000 + 2500 / 4000 + 1.0) / 5)
    assert agg["dark_share_median"] == A(0.625)
    assert (agg["stop_delay_ms_median"], agg["stop_delay_ms_max"]) == (503, 1006)
    assert agg["quotes_ratio"] == A(3 / (3.0 + 6 / 13))
    assert rep["verdict"]["stops_quoting"]["ok"] is False
    assert rep["verdict"]["stops_quoting"]["text"].startswith("2/5 observed windows stopped")


def test_kill_attribution(rep: dict, tmp_path: Path) -> None:
    ks = rep["kill_switch"]
    assert ks["attribution"] == "reason"
    assert (ks["kills_counter"], ks["activations_traced"], ks["kills_untraced"]) == (3, 2, 1)
    assert ks["activations_by_symbol"] == {"BTCUSDT": 2}
    assert ks["activations_outside_windows"] == []
    # an engine that reports every cancel as user_cancel: the bursts are inferred, the same two
    old = make_run(tmp_path / "old", fills=[x.replace(K, "user_cancel") for x in FILLS])
    kills, how = eval_mm.kill_decisions(eval_mm.read_orders(old), eval_mm.read_reports(old), 1000.0)
    assert kills == {"BTCUSDT": [11000, 21000]} and how.startswith("inferred")
    # with a hold longer than the 1500 ms to the requote, the second burst is not a kill
    kills, _ = eval_mm.kill_decisions(eval_mm.read_orders(old), eval_mm.read_reports(old), 2000.0)
    assert kills == {"BTCUSDT": [11000]}


def test_kill_activations_come_from_risk_events_when_the_run_has_them(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    # the engine's log also has an activation with no order open (ETHUSDT), which no cancel shows
    (run / "risk_events.csv").write_text("exch_ts_ms,symbol,event\n11000,BTCUSDT,kill_switch_on\n"
                                         "12500,BTCUSDT,kill_switch_off\n15000,ETHUSDT,kill_switch_on\n"
                                         "21000,BTCUSDT,kill_switch_on\n")
    ks = eval_mm.evaluate(run)["kill_switch"]
    assert ks["attribution"] == "risk_events.csv"
    assert ks["activations_by_symbol"] == {"BTCUSDT": 2, "ETHUSDT": 1}
    assert "risk_events" not in eval_mm.evaluate(run)["missing_records"]


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path / "run")
    assert eval_mm.main([str(run), "--json", str(tmp_path / "r.json")]) == 1  # a window was missed
    out = capsys.readouterr().out
    assert "VERDICT limits (P&L, fill rate, inventory within configured limits): PASS" in out
    assert "VERDICT stops quoting during every labelled anomaly window: FAIL — 2/5 observed windows stopped" in out
    assert json.loads((tmp_path / "r.json").read_text())["windows_summary"]["stopped"] == 2


def test_end_to_end(tmp_path: Path) -> None:
    """A short simulator run of the market maker: the report has its parts, and the inventory limit holds."""
    out = tmp_path / "runs"
    subprocess.run([sys.executable, "run.py", "--duration", "6", "--speed", "10", "--quiet", "--out", str(out)],
                   cwd=ROOT, check=True, timeout=240, capture_output=True)
    (run,) = list(out.iterdir())
    rep = eval_mm.evaluate(run)
    assert set(rep) >= {"limits", "windows", "windows_summary", "kill_switch", "verdict", "integrity"}
    assert rep["strategy"] == "procs.strategies.market_maker:MarketMaker"
    inv = rep["limits"]["inventory"]
    assert inv["limit"] == A(0.05)  # min(max_inventory 0.05, max_position 1.0)
    assert 0.0 < inv["value"] <= 0.05 * (1 + 1e-9)
    assert inv["ok"] is True
    assert rep["integrity"]["complete"] is True
    assert rep["integrity"]["orders_csv_rows"] == rep["integrity"]["orders_sink_received"]
    n_labels = len((run / "labels.jsonl").read_text().splitlines())
    assert rep["windows_summary"]["windows_labelled"] == n_labels
    assert rep["simulated_s"] > 30.0  # 6 s at 10x


def test_scores_csv_tells_never_flagged_from_flag_not_acted_on(tmp_path: Path) -> None:
    """Window 1 (ETHUSDT, 10–12 s) was missed with no kill switch: scores.csv says whether the model flagged it."""
    head = "exch_ts_ms,symbol,anomaly,anomaly_raw,flag,p_up,skipped\n"
    never = make_run(tmp_path / "never")
    (never / "scores.csv").write_text(head + "".join(f"{t},ETHUSDT,0.1,0.2,0,0.5,0\n" for t in range(9000, 13000, 10)))
    rep = eval_mm.evaluate(never)
    w = rep["windows"][1]
    assert w["flag"] == {"samples": 200, "flagged_samples": 0, "first_flag_ms": None}
    assert w["why"].endswith("the model never flagged it (200 scores.csv samples in the window, none flagged)")
    assert "scores.csv" not in rep["missing_records"] and "risk_events" in rep["missing_records"]
    assert rep["windows_summary"]["flagged"] == 0
    raised = make_run(tmp_path / "raised")
    (raised / "scores.csv").write_text(head + "".join(
        f"{t},ETHUSDT,0.9,0.9,{1 if t >= 10500 else 0},0.5,0\n" for t in range(9000, 13000, 10)))
    w = eval_mm.evaluate(raised)["windows"][1]
    assert w["flag"]["first_flag_ms"] == 10500 and w["flag"]["flagged_samples"] == 150
    assert "flag raised from +500 ms (150 of 200 samples): the strategy did not act on it" in w["why"]
    # a run folder without scores.csv keeps the old wording and names what is missing
    assert "flag" not in eval_mm.evaluate(make_run(tmp_path / "old"))["windows"][1]


def test_a_run_without_labelled_windows_checks_the_limits_only(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path / "run")
    (run / "labels.jsonl").write_text("")
    assert eval_mm.main([str(run)]) == 0
    out = capsys.readouterr().out
    assert "VERDICT stops quoting during every labelled anomaly window: N/A — no labelled anomaly window" in out
    assert "None ms" not in out
