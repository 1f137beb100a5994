"""The built-in market: determinism, Binance message shapes, the matching engine, book sync, anomalies, pacing."""

from __future__ import annotations

import gzip
import itertools
import random
import statistics
from pathlib import Path

import numpy as np
import orjson
import pytest

from procs.book_check import check_capture
from procs.config import Config
from procs.kernels.parse_json import Parser, SymbolTable
from procs.sources import simulator as simmod
from procs.sources.simulator import ANOMALY_KINDS, Book, SimParams, Simulator, paced_messages, write_capture
from shm.records import MARKET

SYMS4 = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT"]


def take(sim: Simulator, seconds: float) -> list[tuple[int, bytes]]:
    end = sim.base_ns + int(seconds * 1e9)
    return list(itertools.takewhile(lambda m: m[0] < end, sim.messages()))


# -- determinism ----------------------------------------------------------------------------------
def test_same_seed_same_bytes_different_seed_different() -> None:
    p = SimParams(SYMS4, seed=11, anomalies_per_min=30)
    a = take(Simulator(p), 8)
    sim_b = Simulator(SimParams(SYMS4, seed=11, anomalies_per_min=30))
    b = take(sim_b, 8)
    assert a == b and len(a) > 1000
    c = take(Simulator(SimParams(SYMS4, seed=12, anomalies_per_min=30)), 8)
    assert [r for _, r in c[:200]] != [r for _, r in a[:200]]


def test_labels_are_deterministic() -> None:
    s1 = Simulator(SimParams(["BTCUSDT"], seed=5, anomalies_per_min=30))
    s2 = Simulator(SimParams(["BTCUSDT"], seed=5, anomalies_per_min=30))
    take(s1, 20)
    take(s2, 20)
    assert s1.labels == s2.labels and s1.labels


# -- messages: shapes, parsing, chaining ----------------------------------------------------------
@pytest.mark.parametrize("interval", [100, 0])
def test_every_message_parses_and_diffs_chain(interval: int) -> None:
    sim = Simulator(SimParams([*SYMS4, "XYZUSDT"], seed=3, anomalies_per_min=20, depth_interval_ms=interval))
    msgs = take(sim, 10)
    parser = Parser(SymbolTable([*SYMS4, "XYZUSDT"], auto_add=False))
    out = np.zeros(1 << 14, MARKET.dtype)
    last_u: dict[str, int] = {}
    snap: dict[str, int] = {}
    prev_ts = 0
    kinds = set()
    for ts, raw in msgs:
        assert ts >= prev_ts, "messages out of time order"
        prev_ts = ts
        assert parser.parse(raw, ts, out, 0) > 0, raw[:200]
        m = orjson.loads(raw)
        stream, d = m["stream"], m["data"]
        kind = stream.split("@", 1)[1]
        kinds.add(kind)
        if d.get("e") == "depthUpdate":
            sym = d["s"]
            assert stream == f"{sym.lower()}@depth@{interval}ms"
            assert d["U"] <= d["u"] and (d["b"] or d["a"])
            if sym in last_u:
                assert d["U"] == last_u[sym] + 1, f"{sym}: U={d['U']} after u={last_u[sym]}"
            last_u[sym] = d["u"]
            assert d["E"] * 1_000_000 <= ts < (d["E"] + 1) * 1_000_000
            if interval == 0:
                assert d["U"] == d["u"]
        elif kind == "depthSnapshot":
            sym = stream.split("@")[0].upper()
            assert sym not in snap, "one snapshot per symbol"
            snap[sym] = d["lastUpdateId"]
            assert sym in last_u, "the snapshot comes after the first diffs"
            assert d["bids"] and d["asks"] and float(d["bids"][0][0]) < float(d["asks"][0][0])
        elif d.get("e") == "trade":
            assert d["M"] is True and isinstance(d["m"], bool) and float(d["q"]) > 0
        else:
            assert kind == "bookTicker" and set(d) == {"u", "s", "b", "B", "a", "A"}
            assert float(d["b"]) < float(d["a"])
    c = parser.counts()
    assert c["bad_json"] == c["bad_field"] == c["bad_number"] == c["unknown_type"] == c["unknown_symbol"] == 0
    assert c["messages"] == len(msgs)
    assert kinds == {f"depth@{interval}ms", "trade", "bookTicker", "depthSnapshot"}
    assert set(snap) == set(last_u) == {*SYMS4, "XYZUSDT"}
    # spot bridging rule: some later diff has U <= lastUpdateId + 1 <= u
    for sym, lid in snap.items():
        assert last_u[sym] > lid


def test_price_and_qty_strings_use_symbol_precision() -> None:
    msgs = take(Simulator(SimParams(["BTCUSDT", "SOLUSDT"], seed=1, depth_interval_ms=0)), 2)
    for _, raw in msgs:
        d = orjson.loads(raw)["data"]
        if d.get("e") == "trade":
            dec_p = len(d["p"].split(".")[1])
            dec_q = len(d["q"].split(".")[1])
            assert dec_p == 2 and dec_q == (5 if d["s"] == "BTCUSDT" else 3)
        if d.get("e") == "depthUpdate":
            for _, q in d["b"] + d["a"]:
                assert q == "0.00000000" or float(q) > 0


def test_defaults_are_realistic() -> None:
    sim = Simulator(SimParams(SYMS4, seed=2, anomalies_per_min=0))
    msgs = take(sim, 10)
    assert 300 <= len(msgs) / 10 <= 5000, "a few hundred to a few thousand messages/s"
    mids = {}
    for _, raw in msgs:
        d = orjson.loads(raw)["data"]
        if "A" in d:
            mids[d["s"]] = (float(d["b"]) + float(d["a"])) / 2
    for sym, ref in (("BTCUSDT", 60000), ("ETHUSDT", 3000), ("SOLUSDT", 150), ("BNBUSDT", 600)):
        assert abs(mids[sym] / ref - 1) < 0.01
    for s in sim.syms:
        assert 10 <= len(s.book.px[0]) <= 100 and 10 <= len(s.book.px[1]) <= 100
    assert simmod.default_spec("FOOBAR").price > 0


# -- matching engine -------------------------------------------------------------------------------
def check_invariants(b: Book) -> None:
    for side in (0, 1):
        assert b.px[side] == sorted(b.px[side])
        assert len(set(b.px[side])) == len(b.px[side])
        keys = {p if side == 0 else -p for p in b.lv[side]}
        assert keys == set(b.px[side])
        for p, lv in b.lv[side].items():
            live = [o for o in lv[1] if o[0]]
            assert lv[0] == sum(o[0] for o in live) > 0
            assert all(o[3] == p and o[2] == side for o in live)
        assert b.total[side] == sum(lv[0] for lv in b.lv[side].values())
    assert not b.crossed()
    assert all(b.live[o[4]] is o for o in b.live)


def test_price_time_priority() -> None:
    b = Book()
    first = b.limit(1, 100, 5)
    second = b.limit(1, 100, 7)
    b.limit(1, 101, 3)
    assert b.top() == (0, 0, 100, 12)
    assert b.take(0, 6) == 0
    # the earlier order at 100 filled first, entirely, then one lot of the later one
    assert [(p, q, m, oid) for p, q, m, oid in b.fills] == [(100, 5, False, first[1]), (100, 1, False, second[1])]
    assert first[0] == 0 and second[0] == 6
    check_invariants(b)


def test_market_order_walks_levels() -> None:
    b = Book()
    for p, q in ((100, 2), (101, 3), (102, 4), (103, 5)):
        b.limit(1, p, q)
    b.limit(0, 99, 1)
    b.touched[1].clear()
    assert b.take(0, 8) == 0
    assert [(p, q) for p, q, _, _ in b.fills] == [(100, 2), (101, 3), (102, 3)]
    assert all(m is False for _, _, m, _ in b.fills), "taker buys: the buyer is not the maker"
    assert b.levels(1) == [(102, 1), (103, 5)]
    assert b.touched[1] == {100, 101, 102}
    assert b.level_qty(1, 100) == b.level_qty(1, 101) == 0
    b.fills.clear()
    # a sell walks the bids; the buyer is the maker
    b.limit(0, 98, 4)
    assert b.take(1, 10) == 5
    assert [(p, q, m) for p, q, m, _ in b.fills] == [(99, 1, True), (98, 4, True)]
    assert b.levels(0) == []
    check_invariants(b)


def test_marketable_limit_matches_then_rests() -> None:
    b = Book()
    b.limit(1, 100, 2)
    b.limit(1, 101, 2)
    o = b.limit(0, 100, 5)  # takes the 2 at 100, rests 3 at 100 (101 is above the limit)
    assert o is not None and o[0] == 3
    assert b.top() == (100, 3, 101, 2)
    check_invariants(b)


def test_cancel_removes_quantity_and_levels() -> None:
    b = Book()
    o1 = b.limit(0, 50, 4)
    o2 = b.limit(0, 50, 6)
    o3 = b.limit(0, 49, 1)
    assert b.cancel(o1) and not b.cancel(o1)
    assert b.level_qty(0, 50) == 6 and b.top()[:2] == (50, 6)
    assert b.cancel(o2)
    assert b.level_qty(0, 50) == 0 and b.top()[:2] == (49, 1) and b.touched[0] == {49, 50}
    b.take(1, 1)
    assert o3[0] == 0 and b.live == [] and b.px[0] == []
    check_invariants(b)


def test_random_order_flow_never_crosses() -> None:
    rng = random.Random(1)
    b = Book()
    for i in range(20000):
        x = rng.random()
        if x < 0.45:
            side = rng.randrange(2)
            b.limit(side, 1000 + rng.randrange(-30, 31), rng.randrange(1, 20))
        elif x < 0.85 and b.live:
            b.cancel(b.live[rng.randrange(len(b.live))])
        else:
            b.take(rng.randrange(2), rng.randrange(1, 60), None if rng.random() < 0.5 else 1000)
        assert not b.crossed()
        if i % 997 == 0:
            check_invariants(b)
    check_invariants(b)


def test_simulated_books_stay_consistent() -> None:
    sim = Simulator(SimParams(SYMS4, seed=9, anomalies_per_min=40, depth_interval_ms=0))
    end = sim.base_ns + 20 * 10**9
    for i, (ts, _) in enumerate(sim.messages()):
        if ts >= end:
            break
        if i % 500 == 0:
            for s in sim.syms:
                check_invariants(s.book)
                assert s.book.px[0] and s.book.px[1], "a side emptied"


# -- captures through the project's book checker ----------------------------------------------------
@pytest.mark.parametrize("interval", [100, 0])
def test_capture_passes_book_check(tmp_path: Path, interval: int) -> None:
    path = tmp_path / "sim.lines.gz"
    labels = tmp_path / "labels.jsonl"
    res = write_capture(str(path), SimParams(SYMS4, seed=7, anomalies_per_min=12, depth_interval_ms=interval),
                        30, labels_path=str(labels))
    assert res["messages"] > 10000 and res["depthSnapshot"] == 4
    assert res["labels"] == len(labels.read_bytes().splitlines()) > 0
    with gzip.open(path, "rb") as f:
        assert f.readline().split(b" ", 1)[0].isdigit()
    chk = check_capture(path)
    assert chk.bad_lines == 0 and chk.lines == res["messages"]
    p = chk.parse
    assert p["bad_json"] == p["bad_field"] == p["bad_number"] == p["unknown_type"] == 0
    assert {s.name for s in chk.symbols} == set(SYMS4)
    for s in chk.symbols:
        assert s.mismatches == 0, s.examples
        assert s.crossed == 0 and s.gaps == 0 and s.resyncs_needed == 0
        assert s.snapshots == 1 and 1 <= s.buffered <= 2
        assert s.ticker_checks >= (250 if interval else 1000), s
    assert chk.ok


# -- anomalies ----------------------------------------------------------------------------------------
def observe(params: SimParams, seconds: float) -> tuple[Simulator, dict, dict]:
    """Rebuild each book from snapshot + diffs (0 ms diffs): per symbol (ts, spread, mid, levels) series."""
    sim = Simulator(params)
    books: dict[str, list] = {}
    series: dict[str, list] = {s: [] for s in params.symbols}
    trades: dict[str, list] = {s: [] for s in params.symbols}
    for ts, raw in take(sim, seconds):
        m = orjson.loads(raw)
        d = m["data"]
        if m["stream"].endswith("@depthSnapshot"):
            books[m["stream"].split("@")[0].upper()] = [dict(d["bids"]), dict(d["asks"]), d["lastUpdateId"]]
        elif d.get("e") == "depthUpdate":
            bk = books.get(d["s"])
            if bk is None or d["u"] <= bk[2]:
                continue
            for side, key in ((0, "b"), (1, "a")):
                for p, q in d[key]:
                    if float(q) == 0:
                        bk[side].pop(p, None)
                    else:
                        bk[side][p] = q
            bk[2] = d["u"]
            bb, ba = max(map(float, bk[0])), min(map(float, bk[1]))
            assert bb < ba
            series[d["s"]].append((ts, ba - bb, (ba + bb) / 2, min(len(bk[0]), len(bk[1]))))
        elif d.get("e") == "trade":
            trades[d["s"]].append((ts, float(d["q"])))
    return sim, series, trades


def test_labels_cover_kinds_and_anomalies_are_visible() -> None:
    seconds = 150
    sim, series, trades = observe(SimParams(["BTCUSDT", "SOLUSDT"], seed=3, anomalies_per_min=12,
                                            depth_interval_ms=0), seconds)
    labels = sim.labels
    assert {lab["kind"] for lab in labels} == set(ANOMALY_KINDS)
    assert 10 <= len(labels) <= 60
    t0 = sim.base_ns
    by_sym: dict[str, list] = {}
    for lab in labels:
        assert set(lab) == {"kind", "symbol", "start_ns", "end_ns", "start_E_ms", "end_E_ms", "seed"}
        assert lab["symbol"] in ("BTCUSDT", "SOLUSDT")
        assert t0 < lab["start_ns"] < t0 + seconds * 10**9
        assert 1e9 <= lab["end_ns"] - lab["start_ns"] <= 10e9
        assert lab["start_E_ms"] == lab["start_ns"] // 1_000_000 and lab["end_E_ms"] == lab["end_ns"] // 1_000_000
        by_sym.setdefault(lab["symbol"], []).append(lab)
    for labs in by_sym.values():  # one anomaly at a time per symbol
        labs.sort(key=lambda x: x["start_ns"])
        assert all(a["end_ns"] <= b["start_ns"] for a, b in itertools.pairwise(labs))

    ratios: dict[str, list[float]] = {k: [] for k in ANOMALY_KINDS}
    for lab in labels:
        sym, a, b = lab["symbol"], lab["start_ns"], lab["end_ns"]
        if b > t0 + seconds * 10**9:
            continue
        quiet = [(x["start_ns"], x["end_ns"] + 3 * 10**9) for x in by_sym[sym]]  # plus recovery

        def calm(ts: int, quiet: list = quiet) -> bool:
            return not any(x <= ts < y for x, y in quiet)

        ser, trd = series[sym], trades[sym]
        inside = [r for r in ser if a <= r[0] < b]
        outside = [r for r in ser if calm(r[0])]
        kind = lab["kind"]
        if kind == "spread_blowout":
            ratios[kind].append(statistics.median(r[1] for r in inside) / statistics.median(r[1] for r in outside))
        elif kind == "volume_surge":
            vol_in = sum(q for ts, q in trd if a <= ts < b) / (b - a)
            calm_ns = sum(1 for r in ser if calm(r[0])) / len(ser) * seconds * 1e9
            vol_out = sum(q for ts, q in trd if calm(ts)) / calm_ns
            ratios[kind].append(vol_in / vol_out)
        elif kind == "book_wipe":
            ratios[kind].append(statistics.median(r[3] for r in outside) / min(r[3] for r in inside))
        else:
            # largest move of the mid in the window vs the same statistic over calm windows as long
            dev_in = max(abs(r[2] - inside[0][2]) for r in inside)
            devs = []
            for k in range(0, len(outside) - 1, max(1, len(outside) // 50)):
                s0 = outside[k]
                w = [r for r in outside[k:k + 20000] if r[0] < s0[0] + (b - a)]
                devs.append(max(abs(r[2] - s0[2]) for r in w))
            ratios[kind].append(dev_in / statistics.median(devs))
    assert all(ratios.values()), ratios
    assert min(ratios["spread_blowout"]) > 5, ratios
    assert min(ratios["volume_surge"]) > 2.5, ratios
    assert min(ratios["book_wipe"]) > 4, ratios
    assert min(ratios["price_spike"]) > 3, ratios


def test_anomaly_kinds_can_be_restricted_and_turned_off() -> None:
    sim = Simulator(SimParams(["ETHUSDT"], seed=4, anomalies_per_min=30, anomaly_kinds=("book_wipe",)))
    take(sim, 30)
    assert sim.labels and {x["kind"] for x in sim.labels} == {"book_wipe"}
    off = Simulator(SimParams(["ETHUSDT"], seed=4, anomalies_per_min=0))
    take(off, 30)
    assert off.labels == []
    with pytest.raises(ValueError):
        SimParams(["ETHUSDT"], anomaly_kinds=("meteor",))


# -- pacing, CLI ---------------------------------------------------------------------------------------
def config(speed: float, **sim: object) -> Config:
    cfg = Config()
    cfg.source.speed = speed
    for k, v in sim.items():
        setattr(cfg.sim, k, v)
    return cfg


def test_paced_speed_10_scales_sim_time() -> None:
    start = 5_000_000_000
    items = list(itertools.islice(paced_messages(config(10.0), start), 3000))
    ts0 = items[0][1]
    assert items[0][0] == start
    for due, ts, _ in items:
        assert due == start + round((ts - ts0) / 10)
    dues = [d for d, _, _ in items]
    assert dues == sorted(dues) and dues[-1] > start


def test_paced_speed_0_is_due_at_once_and_writes_labels(tmp_path: Path) -> None:
    labels = tmp_path / "labels.jsonl"
    gen = paced_messages(config(0.0, anomalies_per_min=60.0, symbols=["BTCUSDT", "ETHUSDT"]), 123,
                         labels_path=str(labels))
    last_ts = 0
    for due, ts, _ in itertools.islice(gen, 30000):
        assert due == 123
        last_ts = ts
    assert last_ts > 0
    lines = labels.read_bytes().splitlines()  # flushed while the generator is still open
    assert lines and all(orjson.loads(x)["start_ns"] <= last_ts for x in lines)
    gen.close()


def test_cli_writes_a_capture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        simmod.main(["--help"])
    assert e.value.code == 0 and "--anomalies-per-min" in capsys.readouterr().out
    out = tmp_path / "c.lines.gz"
    lab = tmp_path / "c.labels.jsonl"
    assert simmod.main([str(out), "--seconds", "3", "--symbols", "BTCUSDT,ETHUSDT", "--seed", "7",
                        "--anomalies-per-min", "60", "--labels", str(lab)]) == 0
    assert "wrote" in capsys.readouterr().err
    chk = check_capture(out)
    assert chk.ok and {s.name for s in chk.symbols} == {"BTCUSDT", "ETHUSDT"}
    assert lab.is_file()
