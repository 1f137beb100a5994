"""The built-in strategies: their rules on crafted books through the engine (no processes), and each one end to
end through run.py on the simulator and on a real capture, producing the results files.

The end-to-end runs are started together, in the background, by one module fixture (each run spends most of
its time compiling its strategy step, single-threaded: overlapping them keeps the file within its budget on
two cores); each test then waits for its own run.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_data_dir

from procs.kernels import engine as E
from procs.kernels import paper
from procs.strategies.execution import MAX_SLICES, P_CUM, P_VOL, Twap, Vwap, child_weights
from procs.strategies.scalper import SurgeScalper
from procs.strategy import _callbacks
from shm.records import BOOK, BOOK_DEPTH, FLAG_BOOK_VALID, PRICE_SCALE, QTY_SCALE, SCORE_UP

ROOT = Path(__file__).resolve().parents[1]
BTC = "usdm_btcusdt_20240808_120s.lines.gz"
T0 = 1_000_000  # exchange ms of the first crafted update


# == the engine without processes ====================================================================
class Harness:
    """One symbol through engine.process, as the strategy stage's step runs it (staging buffers drained)."""

    def __init__(self, cls: type, params: dict | None = None, latency_ms: float = 0.0) -> None:
        self.strategy = cls(params or {}, ["BTCUSDT"])
        rp = E.risk_params(max_position=1.0, max_order_qty=0.5, max_notional=1e6, latency_ms=latency_ms,
                           timer_ms=cls.TIMER_MS)
        self.core = E.Core(1, rp, paper.params_from(latency_ms, 0.0, 0.0))
        self.params = self.strategy.params_array()
        self.state = self.strategy.state_array(1)
        self.ctx = self.core.ctx(self.params, self.state)
        self.cb = _callbacks(cls)
        self.orders: list[dict] = []
        self.fills: list[dict] = []

    def step(self, t: int, bid: float = 100.0, ask: float = 100.1, qty: float = 5.0, trade: tuple | None = None,
             p_up: float | None = None) -> None:
        """One BOOK update at exchange ms t: 10 levels 0.1 apart of `qty` each side; trade = (px, signed qty)."""
        b = np.zeros(1, BOOK.dtype)[0]
        b["exch_ts_ms"] = t
        b["flags"] = FLAG_BOOK_VALID
        for i in range(BOOK_DEPTH):
            b["bid_pxs"][i] = round((bid - 0.1 * i) * PRICE_SCALE)
            b["ask_pxs"][i] = round((ask + 0.1 * i) * PRICE_SCALE)
            b["bid_qtys"][i] = b["ask_qtys"][i] = round(qty * QTY_SCALE)
        b["bid_px"], b["ask_px"] = b["bid_pxs"][0], b["ask_pxs"][0]
        b["bid_qty"], b["ask_qty"] = b["bid_qtys"][0], b["ask_qtys"][0]
        if trade:
            b["trade_px"], b["trade_qty"] = round(trade[0] * PRICE_SCALE), round(trade[1] * QTY_SCALE)
        if p_up is not None:
            self.core.scores[0]["values"][SCORE_UP] = p_up
            self.core.scores[0]["feature_seq"] += 1
            self.core.has_score[0] = 1
        E.process(self.ctx, b, *self.cb)
        g = self.core.g
        for o in self.core.out[:g[E.G_N_OUT]]:
            self.orders.append({"t": int(o["exch_ts_ms"]) - T0, "tag": int(o["tag"]), "cid": int(o["client_order_id"]),
                                "action": ("new", "cancel", "replace")[o["action"]],
                                "type": ("limit", "market")[o["order_type"]], "side": int(o["side"]),
                                "price": o["price"] / PRICE_SCALE, "qty": o["qty"] / QTY_SCALE})
        for f in self.core.fills[:g[E.G_N_FILL]]:
            self.fills.append({"t": int(f["exch_ts_ms"]) - T0, "tag": int(f["tag"]), "cid": int(f["client_order_id"]),
                               "status": E.STATUS_NAMES[f["status"]], "price": f["price"] / PRICE_SCALE,
                               "qty": f["qty"] / QTY_SCALE, "liq": int(f["liquidity"])})
        g[E.G_N_OUT] = g[E.G_N_FILL] = g[E.G_DELIVERED] = 0

    def run(self, t_from: int, t_to: int, every: int = 10, **kw: object) -> None:
        for t in range(t_from, t_to, every):
            self.step(T0 + t, **kw)

    def new(self, tag: int) -> list[tuple]:
        return [(o["t"], o["type"], o["qty"]) for o in self.orders if o["tag"] == tag and o["action"] == "new"]


TWAP1 = {"side": 1.0, "qty": 0.1, "window_s": 1.0, "slices": 4.0, "parents": 1.0, "start_delay_s": 0.0}


def test_twap_slices_count_and_timing() -> None:
    h = Harness(Twap, TWAP1)
    h.run(0, 1200)  # a still book, no trades: no passive child fills, every slice ends in a catch-up
    for tag in (0, 1):
        # a post-only bid at the slice start (every 250 ms), crossed 10 ms (one update) after its cancel
        assert h.new(tag) == [(0, "limit", 0.025), (250, "limit", 0.025), (260, "market", 0.025),
                              (500, "limit", 0.025), (510, "market", 0.025), (750, "limit", 0.025),
                              (760, "market", 0.025), (1010, "market", 0.025)]
        assert all(o["price"] == 100.0 for o in h.orders if o["tag"] == tag and o["type"] == "limit")
        assert [o["t"] for o in h.orders if o["tag"] == tag and o["action"] == "cancel"] == [250, 500, 750, 1000]
    rows = h.strategy.parents(h.state)
    assert [(r["tag"], r["side"], r["qty"], r["start_ms"] - T0, r["end_ms"] - T0, r["arrival_mid"], r["filled_qty"],
             r["avg_fill_price"], r["slices"]) for r in rows] == [
        (t, "buy", "0.10000000", 0, 1020, "100.05", "0.10000000", "100.1", 4) for t in (0, 1)]
    assert h.state[0]["pidx"] == 1 and h.state[0]["active"] == 0  # parents=1: no second parent
    assert h.strategy.summary(h.state)["sleeves"]["naive"]["catchup_orders"] == 4


def test_hybrid_crosses_on_an_adverse_call_and_posts_otherwise() -> None:
    # side 0 alternates: parent 0 buys, parent 1 sells; P(up) = 0.8 is adverse to the buy, favourable to the sell
    h = Harness(Twap, {**TWAP1, "side": 0.0, "parents": 2.0, "threshold": 0.1})
    h.step(T0, p_up=0.8)
    h.run(10, 2200)
    assert [o["type"] for o in h.orders if o["tag"] == 1 and o["action"] == "new" and o["side"] == 0] == ["market"] * 4
    sells = [(t - 1030, ty, q) for t, ty, q in h.new(1) if t >= 1030]
    assert sells[:2] == [(0, "limit", 0.025), (250, "limit", 0.025)]  # P(up) 0.8 ≥ 0.5 − 0.1: post passively
    s = h.strategy.summary(h.state)["sleeves"]
    assert (s["ml-hybrid"]["crossed_children"], s["ml-hybrid"]["passive_children"]) == (4, 4)
    assert (s["naive"]["crossed_children"], s["naive"]["passive_children"]) == (0, 8)
    # a crossed buy child pays the ask at once and needs no catch-up
    assert [f["price"] for f in h.fills if f["tag"] == 1 and f["status"] == "filled" and f["t"] < 1000] == [100.1] * 4


def test_hybrid_threshold_edge_and_no_score() -> None:
    h = Harness(Twap, {**TWAP1, "threshold": 0.1})
    h.step(T0)  # no score yet: P(up) is NaN, the hybrid posts like naive
    h.run(10, 500, p_up=0.59)  # below 0.5 + threshold: still passive at the next slice
    h.run(500, 700, p_up=0.6)  # at 0.5 + threshold: crosses
    # slice 1's child, slice 0's catch-up, slice 2's child crossed at once, slice 1's catch-up
    assert h.new(1) == [(0, "limit", 0.025), (250, "limit", 0.025), (260, "market", 0.025), (500, "market", 0.025),
                        (510, "market", 0.025)]
    assert h.new(0) == [(0, "limit", 0.025), (250, "limit", 0.025), (260, "market", 0.025), (500, "limit", 0.025),
                        (510, "market", 0.025)]


def test_both_sleeves_complete_each_parent_after_partial_passive_fills() -> None:
    h = Harness(Twap, {**TWAP1, "parents": 2.0, "side": 0.0})
    h.run(0, 20)  # the children reach the exchange on the second update (latency 0: the next one)
    # 5.01 sold at our bid: 5 ahead of us in the queue, then 0.01 of our 0.025
    h.step(T0 + 20, trade=(100.0, -5.01))
    h.run(30, 2200)
    rows = h.strategy.parents(h.state)
    assert len(rows) == 4
    assert [(r["tag"], r["side"], r["filled_qty"]) for r in rows] == [
        (0, "buy", "0.10000000"), (1, "buy", "0.10000000"), (0, "sell", "0.10000000"), (1, "sell", "0.10000000")]
    first = [(f["cid"], f["qty"], f["liq"]) for f in h.fills if f["tag"] == 0 and f["qty"] > 0][:2]
    assert first == [(1, 0.01, 0), (5, 0.015, 1)]  # maker partial, then the 0.015 rest crossed at the slice end
    buy = rows[0]
    assert float(buy["avg_fill_price"]) == pytest.approx((0.01 * 100.0 + 0.09 * 100.1) / 0.1)
    assert rows[2]["start_ms"] == rows[0]["end_ms"] + 10  # the next parent: the first update after both finish
    # both sleeves flat again after the buy and the sell parent
    assert E.position(h.ctx, 0, 0) == pytest.approx(0.0, abs=1e-12)
    assert E.position(h.ctx, 0, 1) == pytest.approx(0.0, abs=1e-12)


def test_close_writes_parents_csv_and_execution_json(tmp_path: Path) -> None:
    h = Harness(Twap, TWAP1)
    h.run(0, 1200)
    h.strategy.close(h.state, str(tmp_path))
    with (tmp_path / "parents.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["tag", "symbol", "side", "qty", "start_ms", "end_ms", "arrival_mid", "filled_qty",
                             "avg_fill_price", "slices"]
    assert [(r["tag"], r["symbol"], r["slices"]) for r in rows] == [("0", "BTCUSDT", "4"), ("1", "BTCUSDT", "4")]
    ex = json.loads((tmp_path / "execution.json").read_text())
    assert ex["parents_finished"] == 1 and ex["unfinished"] == 0 and ex["algo"] == "twap"


def test_vwap_child_weights_follow_the_volume_profile() -> None:
    prof = np.zeros(2 * MAX_SLICES)
    prof[P_VOL:P_VOL + 4] = [1.0, 3.0, 0.0, 4.0]
    child_weights(prof, 4, True)
    assert prof[P_CUM:P_CUM + 4].tolist() == [0.125, 0.5, 0.5, 1.0]
    child_weights(prof, 4, False)  # before enough history: TWAP
    assert prof[P_CUM:P_CUM + 4].tolist() == [0.25, 0.5, 0.75, 1.0]
    prof[P_VOL:P_VOL + 4] = 0.0
    child_weights(prof, 4, True)  # no volume seen: TWAP too
    assert prof[P_CUM:P_CUM + 4].tolist() == [0.25, 0.5, 0.75, 1.0]
    assert Vwap.VWAP and not Twap.VWAP and Vwap.TAGS == {0: "naive", 1: "ml-hybrid"}


def test_execution_params_are_checked() -> None:
    from procs.api import StrategyError

    for bad in ({"slices": 0.0}, {"slices": 2.5}, {"side": 2.0}, {"parents": 1e6}, {"threshold": 0.7}):
        with pytest.raises(StrategyError, match=f"strategy.params.{next(iter(bad))}"):
            Twap(bad)


# -- scalper ---------------------------------------------------------------------------------------
def scalper_history(h: Harness, n: int = 25, trend: float = 0.1) -> float:
    """n quiet 1 s bars (volume 1, close mid-range) drifting by `trend` per bar; returns the last price."""
    px = 100.0
    for k in range(n):
        t = T0 + 1000 * k
        px += trend
        h.step(t + 100, px - 0.05, px + 0.05, trade=(px, 0.5))
        h.step(t + 200, px - 0.05, px + 0.05, trade=(px + 0.2, 0.25))
        h.step(t + 300, px - 0.05, px + 0.05, trade=(px + 0.1, -0.25))
    return px


def surge_bar(h: Harness, px: float, k: int, vol: float = 6.0, close_at: float = 0.9) -> int:
    """Bar k: low px − 0.5, high px + 0.3, close at `close_at` of the range, volume `vol`; returns the next bar's
    first ms (the bar closes there)."""
    t = T0 + 1000 * k
    lo, hi = px - 0.5, px + 0.3
    h.step(t + 100, px - 0.05, px + 0.05, trade=(lo, -vol / 3))
    h.step(t + 200, px - 0.05, px + 0.05, trade=(hi, vol / 3))
    h.step(t + 300, px - 0.05, px + 0.05, trade=(lo + close_at * (hi - lo), vol / 3))
    return t + 1000


def test_scalper_enters_only_when_surge_rejection_and_trend_agree() -> None:
    cases = {"all three": ({}, 1), "volume 2.5x": ({"vol": 2.5}, 0), "close mid-range": ({"close_at": 0.5}, 0)}
    for name, (kw, entries) in cases.items():
        h = Harness(SurgeScalper)
        px = scalper_history(h)
        t = surge_bar(h, px, 25, **kw)
        h.step(t, px - 0.05, px + 0.05)  # the bar closes on the next period's first update
        assert h.state[0]["nbars"] == 26, name
        assert h.state[0]["n_entries"] == entries, name
        assert len([o for o in h.orders if o["action"] == "new"]) == entries, name
    # all three, but the EMAs say down (prices fell for 25 bars): a bullish rejection is not confirmed
    h = Harness(SurgeScalper)
    px = scalper_history(h, trend=-0.1)
    h.step(surge_bar(h, px, 25), px - 0.05, px + 0.05)
    assert (h.state[0]["n_surges"], h.state[0]["n_entries"]) == (1, 0)
    assert h.state[0]["ema_f"] < h.state[0]["ema_s"]


def entered(p: dict | None = None) -> tuple[Harness, float]:
    h = Harness(SurgeScalper, p)
    px = scalper_history(h)
    t = surge_bar(h, px, 25)
    h.step(t, px - 0.05, px + 0.05)
    h.step(t + 10, px - 0.05, px + 0.05)  # the market order fills at the ask
    h.step(t + 20, px - 0.05, px + 0.05)
    return h, t + 30


def test_scalper_size_tp_and_sl_from_the_atr() -> None:
    h, t = entered()
    st = h.state[0]
    px = 102.5
    # 0.1 · 10000 / ask → 9.7, capped at max_qty 0.5; entry at the ask
    assert [(o["type"], o["side"], o["qty"]) for o in h.orders] == [("market", 0, 0.5)]
    assert st["phase"] == 2 and st["entry"] == pytest.approx(px + 0.05)
    assert st["tp"] == pytest.approx(st["entry"] + 2.0 * st["atr_e"])
    assert st["sl"] == pytest.approx(st["entry"] - 1.0 * st["atr_e"])
    bid_tp = st["tp"] + 0.01
    h.step(t, st["tp"] - 0.02, st["tp"] + 0.08)  # the bid just short of tp: hold
    assert len(h.orders) == 1
    h.step(t + 10, bid_tp, bid_tp + 0.1)  # the bid reaches tp: sell it all
    h.step(t + 20, bid_tp, bid_tp + 0.1)
    h.step(t + 30, bid_tp, bid_tp + 0.1)
    assert [(o["type"], o["side"], o["qty"]) for o in h.orders][1:] == [("market", 1, 0.5)]
    assert (st["n_tp"], st["n_sl"], st["phase"]) == (1, 0, 0)
    assert E.position(h.ctx, 0) == 0.0
    assert E.realized(h.ctx, 0) == pytest.approx(0.5 * (bid_tp - (px + 0.05)))

    h, t = entered({"fraction": 0.004})  # 0.004 · 10000 / 102.55 = 0.39 (under the cap)
    st = h.state[0]
    assert h.orders[0]["qty"] == pytest.approx(40.0 / (px + 0.05), abs=1e-8)
    h.step(t, st["sl"] - 0.01, st["sl"] + 0.09)  # the bid falls through sl: stop out
    h.step(t + 10, st["sl"] - 0.01, st["sl"] + 0.09)
    h.step(t + 20, st["sl"] - 0.01, st["sl"] + 0.09)
    assert (st["n_tp"], st["n_sl"], st["phase"]) == (0, 1, 0)
    assert h.orders[-1]["side"] == 1 and E.position(h.ctx, 0) == 0.0


# == end to end through run.py ======================================================================
SIM = ("--duration", "4")
REAL = ("--speed", "0", "--replay-duration", "25")
#: name -> (strategy, source args, extra args); sim runs are short, exchange time = wall time there
RUNS = {
    "mm_sim": ("procs.strategies.market_maker:MarketMaker", SIM, ()),
    "mm_real": ("procs.strategies.market_maker:MarketMaker", REAL, ()),
    # VWAP here (its profile takes over after the first 1 s window), TWAP on the capture: both classes run
    "vwap_sim": ("procs.strategies.execution:Vwap", SIM,
                 ("strategy.params.start_delay_s=0", "strategy.params.window_s=1", "strategy.params.slices=4")),
    # the sim-trained anomaly model flags most of this capture: without the kill switch the parents trade
    "twap_real": ("procs.strategies.execution:Twap", REAL,
                  ("strategy.params.start_delay_s=1", "strategy.params.window_s=4", "strategy.params.slices=4",
                   "risk.kill_switch=false")),
    "scalp_sim": ("procs.strategies.scalper:SurgeScalper", SIM, ("strategy.params.bar_ms=100",
                                                                 "strategy.params.min_bars=10")),
    "scalp_real": ("procs.strategies.scalper:SurgeScalper", REAL, ("strategy.params.bar_ms=500",
                                                                   "strategy.params.min_bars=10",
                                                                   "risk.kill_switch=false")),
}


@pytest.fixture(scope="module", autouse=True)
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Start every end-to-end run at once, before the first test (the unit tests run while they compile);
    real-capture runs only when the captures are there."""
    data = shared_data_dir()
    started = {}
    for name, (strategy, source, extra) in RUNS.items():
        if source is REAL and not data.is_dir():
            continue
        out = tmp_path_factory.mktemp(name)
        args = [sys.executable, str(ROOT / "run.py"), "--out", str(out), "--quiet", "--wait", "park",
                "--strategy", strategy, *(("--replay", str(data / BTC)) if source is REAL else ()), *source]
        for s in extra:
            args += ["--set", s]
        started[name] = (subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True), out)
    yield started
    for p, _ in started.values():
        if p.poll() is None:
            p.kill()
            p.wait()


def finished(runs: dict, name: str) -> Path:
    if name not in runs:
        pytest.skip(f"shared Binance captures not found at {shared_data_dir()} (set TICKPIPE_DATA to their "
                    "folder); they are not part of the repository")
    p, out = runs[name]
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 0, stderr + stdout
    dirs = [d for d in out.iterdir() if d.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def check_results(d: Path, strategy: str, tags: dict) -> tuple[list[dict], list[dict]]:
    """The common results files, consistent with each other and with the strategy stage's counters."""
    for name in ("orders.csv", "fills.csv", "equity.csv", "strategy.json", "summary.json"):
        assert (d / name).is_file(), name
    orders, fills = read_csv(d / "orders.csv"), read_csv(d / "fills.csv")
    sj = json.loads((d / "strategy.json").read_text())
    assert sj["name"] == strategy and sj["tags"] == {str(k): v for k, v in tags.items()}
    counters = json.loads((d / "summary.json").read_text())["counters"]["strategy"]
    assert len(orders) == counters["orders_out"] and counters["orders_dropped"] == 0
    assert len(fills) == counters["fills_out"] and counters["fills_dropped"] == 0
    assert sum(sj["rejects"].values()) == counters["rejects"]
    header = (d / "equity.csv").read_text().splitlines()[0]
    assert header == ",".join(E.EQ_COLUMNS)
    return orders, fills


def check_parents(d: Path, n_slices: int) -> list[dict]:
    rows = read_csv(d / "parents.csv")
    assert rows, "no parent finished"
    assert len(rows) % 2 == 0
    for a, b in zip(rows[::2], rows[1::2], strict=True):  # both sleeves, the same parent, both complete
        assert (a["tag"], b["tag"]) == ("0", "1")
        for k in ("symbol", "side", "qty", "start_ms", "end_ms", "arrival_mid", "slices"):
            assert a[k] == b[k], k
        assert a["filled_qty"] == a["qty"] == b["filled_qty"]
        assert int(a["slices"]) == n_slices
    return rows


def test_market_maker_on_the_simulator(runs: dict) -> None:
    d = finished(runs, "mm_sim")
    orders, _ = check_results(d, "procs.strategies.market_maker:MarketMaker", {0: "mm"})
    assert orders and all(o["type"] == "limit" and o["post_only"] == "1" for o in orders if o["action"] == "new")
    assert {o["symbol"] for o in orders} == {"BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT"}


def test_market_maker_on_the_real_capture(runs: dict) -> None:
    d = finished(runs, "mm_real")
    orders, _ = check_results(d, "procs.strategies.market_maker:MarketMaker", {0: "mm"})
    assert orders and {o["symbol"] for o in orders} == {"BTCUSDT"}


def test_vwap_on_the_simulator(runs: dict) -> None:
    d = finished(runs, "vwap_sim")
    orders, _ = check_results(d, "procs.strategies.execution:Vwap", {0: "naive", 1: "ml-hybrid"})
    rows = check_parents(d, 4)
    assert {r["symbol"] for r in rows} == {"BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT"}
    assert {o["tag"] for o in orders} == {"0", "1"}
    ex = json.loads((d / "execution.json").read_text())
    assert ex["algo"] == "vwap" and ex["parents_finished"] == len(rows) // 2
    # children in profile proportions: after the first window they are no longer all qty / slices
    qtys = {round(float(o["qty"]), 8) for o in orders if o["action"] == "new" and o["type"] == "limit"}
    assert len(qtys) > 1


def test_twap_on_the_real_capture(runs: dict) -> None:
    d = finished(runs, "twap_real")
    check_results(d, "procs.strategies.execution:Twap", {0: "naive", 1: "ml-hybrid"})
    rows = check_parents(d, 4)
    assert len(rows) // 2 >= 4  # 25 s of capture, 1 s delay, 4 s windows
    # parents start one after the other: never before the previous one ended
    starts = [int(r["start_ms"]) for r in rows[::2]]
    ends = [int(r["end_ms"]) for r in rows[::2]]
    assert all(s >= e for s, e in zip(starts[1:], ends, strict=False))
    assert all(e - s >= 4000 for s, e in zip(starts, ends, strict=True))


def test_scalper_on_the_simulator(runs: dict) -> None:
    d = finished(runs, "scalp_sim")
    check_results(d, "procs.strategies.scalper:SurgeScalper", {0: "scalp"})
    sc = json.loads((d / "scalper.json").read_text())
    assert set(sc) == {"BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT"}
    assert all(v["bars"] > 10 for v in sc.values())


def test_scalper_on_the_real_capture(runs: dict) -> None:
    d = finished(runs, "scalp_real")
    orders, _ = check_results(d, "procs.strategies.scalper:SurgeScalper", {0: "scalp"})
    sc = json.loads((d / "scalper.json").read_text())["BTCUSDT"]
    assert sc["bars"] >= 40  # 25 s of a busy market in 500 ms bars
    # every new order is an entry or an exit (an exit may take more than one order: the depth, a refusal)
    assert len([o for o in orders if o["action"] == "new"]) >= sc["entries"] + sc["take_profits"] + sc["stop_losses"]
    assert sc["entries"] >= sc["take_profits"] + sc["stop_losses"] and sc["signals"] >= sc["entries"]
