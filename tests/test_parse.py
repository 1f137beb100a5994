"""Parser: exact fixed point, every Binance message shape, malformed input counted and never raised."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from procs.kernels.parse_json import (
    ERR_FIELD,
    ERR_JSON,
    ERR_NO_SPACE,
    ERR_NUMBER,
    PC_BAD_FIELD,
    PC_BAD_JSON,
    PC_BAD_NUMBER,
    PC_MESSAGES,
    PC_NO_SPACE,
    PC_RECORDS,
    PC_UNKNOWN_SYMBOL,
    PC_UNKNOWN_TYPE,
    Parser,
    SymbolTable,
    parse_fixed,
    parse_message,
)
from procs.sources.replay import read_capture
from shm.records import (
    FLAG_ASK,
    FLAG_BUYER_MAKER,
    FLAG_LAST_IN_MESSAGE,
    FLAG_SNAPSHOT_BEGIN,
    FLAG_SNAPSHOT_END,
    KIND_DEPTH,
    KIND_DEPTH_EMPTY,
    KIND_SNAPSHOT,
    KIND_TICKER,
    KIND_TRADE,
    MARKET,
    MARKET_COINM,
    MARKET_SPOT,
    MARKET_USDM,
)

SCALE = 10**8


def out_array(n: int = 4096) -> np.ndarray:
    return np.zeros(n, MARKET.dtype)


def parse(raw: bytes | str, parser: Parser | None = None, out: np.ndarray | None = None,
          start: int = 0) -> tuple[int, np.ndarray, Parser]:
    parser = parser or Parser()
    out = out_array() if out is None else out
    if isinstance(raw, str):
        raw = raw.encode()
    n = parser.parse(raw, 123, out, start)
    return n, out[start:start + max(n, 0)], parser


# -- decimal strings → fixed point -------------------------------------------------------------------
@pytest.mark.parametrize(("text", "value"), [
    ("61800.20", 6_180_020_000_000),
    ("0.35130000", 35_130_000),
    ("6195.00000000", 619_500_000_000),
    ("0.00000001", 1),
    ("0.000", 0),
    ("0", 0),
    ("2", 200_000_000),
    ("1.5", 150_000_000),
    ("1.000000000", 100_000_000),  # extra zero decimals are exact
    ("92233720368.54775807", 2**63 - 1),
])
def test_parse_fixed_exact(text: str, value: int) -> None:
    assert parse_fixed(text) == value


@pytest.mark.parametrize("text", [
    "", ".", ".5", "5.", "-1", "+1", "1e5", "1E-3", " 1", "1 ", "1_000", "1,5", "1.2.3", "abc", "0x10",
    "1.000000001", "0.123456789", "１", "٣", "NaN", "inf", "92233720368.54775808", "99999999999999999999",
    "1" * 5000, "1." + "0" * 40,
])
def test_parse_fixed_rejects(text: str) -> None:
    assert parse_fixed(text) == -1


@given(st.decimals(min_value=0, max_value=Decimal("92233720368"), places=8, allow_nan=False,
                   allow_infinity=False))
def test_parse_fixed_matches_decimal(d: Decimal) -> None:
    text = f"{d:f}"
    assert parse_fixed(text) == int(d * SCALE)


@given(st.integers(min_value=0, max_value=92233720367), st.integers(min_value=0, max_value=8),
       st.integers(min_value=0, max_value=10**8 - 1))
def test_parse_fixed_binance_style(whole: int, places: int, frac: int) -> None:
    # Binance pads to the symbol's precision: "61800.20", "0.010", "6195.00000000"
    frac %= 10**places if places else 1
    text = f"{whole}.{frac:0{places}d}" if places else str(whole)
    assert parse_fixed(text) == whole * SCALE + frac * 10 ** (8 - places)


_VALID = re.compile(r"[0-9]+(\.[0-9]+)?")


@given(st.text(alphabet="0123456789.-+eE _x١", max_size=24))
def test_parse_fixed_garbage_is_rejected_or_exact(text: str) -> None:
    v = parse_fixed(text)
    # a plain integer has at most 19 characters (int64's digits, leading zeros included): the fast path's rule
    if _VALID.fullmatch(text) and len(text) <= (32 if "." in text else 19):
        d = Decimal(text) * SCALE
        if d == d.to_integral_value() and d < 2**63:
            assert v == int(d)
            return
    assert v == -1


# -- message shapes ----------------------------------------------------------------------------------
def wrap(stream: str, data: dict) -> bytes:
    return orjson.dumps({"stream": stream, "data": data})


def test_spot_depth_update() -> None:
    raw = wrap("btcusdt@depth@100ms", {"e": "depthUpdate", "E": 1000, "s": "BTCUSDT", "U": 10, "u": 12,
                                        "b": [["100.5", "1.25"], ["100.4", "0"]], "a": [["100.6", "3"]]})
    n, recs, p = parse(raw)
    assert n == 3
    assert recs["kind"].tolist() == [KIND_DEPTH] * 3
    assert recs["price"].tolist() == [10_050_000_000, 10_040_000_000, 10_060_000_000]
    assert recs["qty"].tolist() == [125_000_000, 0, 300_000_000]
    assert (recs["flags"] & FLAG_ASK).astype(bool).tolist() == [False, False, True]
    assert (recs["flags"] & FLAG_LAST_IN_MESSAGE).astype(bool).tolist() == [False, False, True]
    assert set(recs["first_id"]) == {10} and set(recs["last_id"]) == {12} and set(recs["prev_id"]) == {-1}
    assert set(recs["market"]) == {MARKET_SPOT} and set(recs["exch_ts_ms"]) == {1000}
    assert set(recs["t_origin_ns"]) == {123} and set(recs["symbol"]) == {0}
    assert recs["seq"].tolist() == [0, 1, 2] and p.seq == 3


def test_usdm_and_coinm_depth_update() -> None:
    d = {"e": "depthUpdate", "E": 5, "T": 4, "s": "BTCUSDT", "U": 10, "u": 20, "pu": 9,
         "b": [["1.0", "1"]], "a": []}
    n, recs, _ = parse(wrap("btcusdt@depth@0ms", d))
    assert n == 1 and recs[0]["market"] == MARKET_USDM and recs[0]["prev_id"] == 9
    n, recs, _ = parse(wrap("btcusd_perp@depth", {**d, "s": "BTCUSD_PERP", "ps": "BTCUSD"}))
    assert n == 1 and recs[0]["market"] == MARKET_COINM


def test_empty_depth_update_keeps_the_chain() -> None:
    raw = wrap("x@depth", {"e": "depthUpdate", "E": 5, "s": "X", "U": 7, "u": 9, "pu": 6, "b": [], "a": []})
    n, recs, _ = parse(raw)
    assert n == 1
    r = recs[0]
    assert r["kind"] == KIND_DEPTH_EMPTY and r["flags"] == FLAG_LAST_IN_MESSAGE
    assert (r["first_id"], r["last_id"], r["prev_id"]) == (7, 9, 6)


def test_bare_depth_event_without_wrapper() -> None:
    raw = orjson.dumps({"e": "depthUpdate", "E": 5, "s": "X", "U": 7, "u": 9, "b": [["1", "2"]], "a": []})
    n, recs, _ = parse(raw)
    assert n == 1 and recs[0]["kind"] == KIND_DEPTH


def test_trades() -> None:
    n, recs, _ = parse(wrap("btcusdt@trade", {"e": "trade", "E": 7, "T": 6, "s": "BTCUSDT", "t": 55,
                                              "p": "61800.30", "q": "0.006", "X": "MARKET", "m": False}))
    assert n == 1
    r = recs[0]
    assert r["kind"] == KIND_TRADE and r["price"] == 6_180_030_000_000 and r["qty"] == 600_000
    assert r["flags"] == FLAG_LAST_IN_MESSAGE and r["first_id"] == r["last_id"] == 55
    n, recs, _ = parse(wrap("nknusdt@aggTrade", {"e": "aggTrade", "E": 8, "s": "NKNUSDT", "a": 3,
                                                 "p": "0.3513", "q": "100", "f": 10, "l": 12, "T": 8,
                                                 "m": True, "M": True}))
    r = recs[0]
    assert n == 1 and r["flags"] & FLAG_BUYER_MAKER and (r["first_id"], r["last_id"]) == (3, 12)
    assert r["market"] == MARKET_SPOT


def test_book_tickers() -> None:
    # spot bookTicker has no "e" and no "E"; futures has both
    n, recs, _ = parse(wrap("nknusdt@bookTicker", {"u": 400, "s": "NKNUSDT", "b": "0.3521", "B": "672",
                                                   "a": "0.3526", "A": "3199.5"}))
    r = recs[0]
    assert n == 1 and r["kind"] == KIND_TICKER and r["market"] == MARKET_SPOT and r["last_id"] == 400
    assert (r["price"], r["qty"], r["price2"], r["qty2"]) == (35_210_000, 67_200_000_000, 35_260_000,
                                                              319_950_000_000)
    n, recs, _ = parse(wrap("btcusdt@bookTicker", {"e": "bookTicker", "u": 9, "s": "BTCUSDT", "b": "1",
                                                   "B": "2", "a": "3", "A": "4", "T": 5, "E": 6}))
    assert n == 1 and recs[0]["market"] == MARKET_USDM and recs[0]["exch_ts_ms"] == 6


def test_wrapped_snapshot_flags() -> None:
    raw = wrap("nknusdt@depthSnapshot", {"lastUpdateId": 77, "bids": [["2", "1"], ["1", "1"]],
                                         "asks": [["3", "1"]]})
    n, recs, p = parse(raw)
    assert n == 3 and set(recs["kind"]) == {KIND_SNAPSHOT} and set(recs["last_id"]) == {77}
    assert recs["flags"].tolist() == [FLAG_SNAPSHOT_BEGIN, 0,
                                      FLAG_ASK | FLAG_SNAPSHOT_END | FLAG_LAST_IN_MESSAGE]
    assert p.symbols.names == ["NKNUSDT"] and recs[0]["market"] == MARKET_SPOT


def test_empty_snapshot_still_begins_and_ends() -> None:
    n, recs, _ = parse(wrap("x@depthSnapshot", {"lastUpdateId": 5, "bids": [], "asks": []}))
    assert n == 1
    assert recs[0]["flags"] == FLAG_SNAPSHOT_BEGIN | FLAG_SNAPSHOT_END | FLAG_LAST_IN_MESSAGE
    assert recs[0]["qty"] == 0 and recs[0]["last_id"] == 5
    n, recs, _ = parse(wrap("x@depthSnapshot", {"lastUpdateId": 5, "bids": [], "asks": [["1", "1"]]}))
    assert n == 1
    assert recs[0]["flags"] == FLAG_ASK | FLAG_SNAPSHOT_BEGIN | FLAG_SNAPSHOT_END | FLAG_LAST_IN_MESSAGE


def test_bare_snapshot_symbol() -> None:
    snap = orjson.dumps({"lastUpdateId": 9, "E": 1, "T": 1, "bids": [["1", "1"]], "asks": [["2", "1"]]})
    # named explicitly
    n, recs, _ = parse(snap, Parser(bare_symbol="ethusdt"))
    assert n == 2 and recs[0]["market"] == MARKET_USDM
    # the only symbol seen so far
    p = Parser()
    parse(wrap("btcusdt@trade", {"e": "trade", "E": 1, "s": "BTCUSDT", "t": 1, "p": "1", "q": "1",
                                 "m": True}), p)
    n, recs, _ = parse(snap, p)
    assert n == 2 and set(recs["symbol"]) == {0}
    # ambiguous: refused and counted, not guessed
    p = Parser(SymbolTable(["A", "B"]))
    n, _, _ = parse(snap, p)
    assert n == ERR_FIELD and p.counters[PC_BAD_FIELD] == 1


def test_unknown_types_are_counted_not_errors() -> None:
    p = Parser()
    kline = wrap("ctkusdt@kline_1m", {"e": "kline", "E": 1, "s": "CTKUSDT", "k": {"t": 1}})
    partial = wrap("btcusdt@depth20", {"lastUpdateId": 1, "bids": [["1", "1"]], "asks": []})  # not a snapshot
    for raw in (kline, partial, b'{"result":null,"id":1}'):
        n, _, _ = parse(raw, p)
        assert n == 0
    assert p.counters[PC_UNKNOWN_TYPE] == 3 and p.counters[PC_MESSAGES] == 3


def test_symbol_table() -> None:
    t = SymbolTable(["btcusdt"], auto_add=False)
    assert t.lookup("BTCUSDT") == t.lookup("btcusdt") == t.lookup("BtcUsdt") == 0
    assert t.lookup("ETHUSDT") == -1 and len(t) == 1
    p = Parser(t)
    n, _, _ = parse(wrap("ethusdt@trade", {"e": "trade", "E": 1, "s": "ETHUSDT", "t": 1, "p": "1", "q": "1",
                                           "m": True}), p)
    assert n == 0 and p.counters[PC_UNKNOWN_SYMBOL] == 1
    auto = SymbolTable(max_symbols=2)
    assert [auto.lookup(s) for s in ("a", "B", "A", "c")] == [0, 1, 0, -1]
    assert auto.names == ["A", "B"]


def test_no_space_writes_nothing_and_can_be_retried() -> None:
    p = Parser()
    raw = wrap("x@depth", {"e": "depthUpdate", "E": 1, "s": "X", "U": 1, "u": 2,
                           "b": [["1", "1"], ["2", "2"]], "a": []})
    out = out_array(3)
    assert p.parse(raw, 1, out, 2) == ERR_NO_SPACE
    assert not out.view(np.uint8).any() and p.counters[PC_NO_SPACE] == 1 and p.counters[PC_MESSAGES] == 0
    assert p.parse(raw, 1, out, 0) == 2
    assert p.counters[PC_MESSAGES] == 1 and p.counters[PC_RECORDS] == 2


def test_functional_form() -> None:
    out = out_array(4)
    raw = wrap("x@trade", {"e": "trade", "E": 1, "s": "X", "t": 1, "p": "1.5", "q": "2", "m": False})
    assert parse_message(raw, 9, out, 1, SymbolTable()) == 1
    assert out[1]["price"] == 150_000_000 and out[1]["t_origin_ns"] == 9


# -- malformed input ---------------------------------------------------------------------------------
DEPTH = {"e": "depthUpdate", "E": 1, "s": "X", "U": 1, "u": 2, "b": [["1", "1"]], "a": []}
MALFORMED = [
    (b"", ERR_JSON), (b"not json", ERR_JSON), (b'{"stream":"x@depth","data":{"e":"depthUpdate"', ERR_JSON),
    (b"[1,2,3]", ERR_JSON), (b"5", ERR_JSON), (b'{"stream":"x@depth","data":5}', ERR_FIELD),
    (wrap("x@depth", {k: v for k, v in DEPTH.items() if k != "U"}), ERR_FIELD),
    (wrap("x@depth", {k: v for k, v in DEPTH.items() if k != "s"}), ERR_FIELD),
    (wrap("x@depth", {**DEPTH, "b": [["1"]]}), ERR_FIELD),
    (wrap("x@depth", {**DEPTH, "b": 5}), ERR_FIELD),
    (wrap("x@depth", {**DEPTH, "U": "1"}), ERR_FIELD),
    (wrap("x@depth", {**DEPTH, "U": 1.5}), ERR_FIELD),
    (wrap("x@depth", {**DEPTH, "u": 2**64 - 1}), ERR_FIELD),  # JSON allows it, int64 does not
    (b'{"stream":"x@depth","data":{"e":"depthUpdate","E":1,"s":"X","U":1,"u":1180591620717411303424,'
     b'"b":[["1","1"]],"a":[]}}', ERR_FIELD),  # orjson reads it as a float
    (wrap("x@depth", {**DEPTH, "b": [["1", 5]]}), ERR_FIELD),
    (wrap("x@depth", {**DEPTH, "b": [["abc", "1"]]}), ERR_NUMBER),
    (wrap("x@depth", {**DEPTH, "a": [["1.000000001", "1"]]}), ERR_NUMBER),
    (wrap("x@depth", {**DEPTH, "b": [["-1", "1"]]}), ERR_NUMBER),
    (wrap("x@trade", {"e": "trade", "E": 1, "s": "X", "t": 1, "p": "1e3", "q": "1", "m": True}), ERR_NUMBER),
    (wrap("x@trade", {"e": "trade", "E": 1, "s": "X", "t": 1, "p": "1", "m": True}), ERR_FIELD),
    (wrap("x@bookTicker", {"e": "bookTicker", "u": 1, "s": "X", "b": "1", "B": "x", "a": "1", "A": "1"}),
     ERR_NUMBER),
    (wrap("x@depthSnapshot", {"lastUpdateId": 1, "bids": [["1", "1", "x"], ["1"]], "asks": []}), ERR_FIELD),
    (wrap("x@depthSnapshot", {"bids": [], "asks": []}), 0),  # no lastUpdateId: not a snapshot, unknown
]


@pytest.mark.parametrize(("raw", "code"), MALFORMED)
def test_malformed_is_counted_not_raised(raw: bytes, code: int) -> None:
    p = Parser()
    out = out_array(8)
    assert p.parse(raw, 1, out, 0) == code
    counted = {ERR_JSON: PC_BAD_JSON, ERR_FIELD: PC_BAD_FIELD, ERR_NUMBER: PC_BAD_NUMBER, 0: PC_UNKNOWN_TYPE}
    assert p.counters[counted[code]] == 1 and p.counters[PC_MESSAGES] == 1 and p.counters[PC_RECORDS] == 0


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise(raw: bytes) -> None:
    p = Parser()
    n = p.parse(raw, 0, out_array(16), 0)
    assert isinstance(n, int) and n <= 16


@settings(max_examples=300)
@given(st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(
                        st.sampled_from(["e", "s", "U", "u", "pu", "b", "a", "B", "A", "p", "q", "m", "t",
                                         "E", "lastUpdateId", "bids", "asks", "stream", "data"]),
                        c, max_size=6),
                    max_leaves=12),
       st.sampled_from(["depthUpdate", "trade", "aggTrade", "bookTicker", None]))
def test_random_json_never_raises(data: object, event: str | None) -> None:
    if isinstance(data, dict) and event:
        data["e"] = event
    p = Parser()
    n = p.parse(orjson.dumps({"stream": "x@depthSnapshot", "data": data}), 0, out_array(16), 0)
    assert isinstance(n, int) and n <= 16


# -- every message of the real captures --------------------------------------------------------------
def _expected_records(obj: dict, bare: str | None) -> list[tuple]:
    """The records a message must give, computed independently (Decimal, explicit rules)."""
    def fx(s: str) -> int:
        return int(Decimal(s) * SCALE)

    d = obj.get("data", obj)
    e = d.get("e")
    if e == "depthUpdate":
        lv = [(fx(p), fx(q), 0) for p, q in d["b"]] + [(fx(p), fx(q), FLAG_ASK) for p, q in d["a"]]
        return [(KIND_DEPTH, p, q, f, d["U"], d["u"], d.get("pu", -1)) for p, q, f in lv]
    if "lastUpdateId" in d:
        lv = [(fx(p), fx(q), 0) for p, q in d["bids"]] + [(fx(p), fx(q), FLAG_ASK) for p, q in d["asks"]]
        return [(KIND_SNAPSHOT, p, q, f, -1, d["lastUpdateId"], -1) for p, q, f in lv]
    if e in ("trade", "aggTrade"):
        return [(KIND_TRADE, fx(d["p"]), fx(d["q"]), FLAG_BUYER_MAKER if d["m"] else 0)]
    if e == "bookTicker" or "A" in d:
        return [(KIND_TICKER, fx(d["b"]), fx(d["B"]), fx(d["a"]), fx(d["A"]), d["u"])]
    return []


def test_every_message_of_the_real_captures(data_dir: Path) -> None:
    files = sorted(data_dir.glob("*.lines.gz"))
    assert files, f"no captures in {data_dir}"
    kinds_seen: set[int] = set()
    for path in files:
        p = Parser()
        out = out_array(8192)
        for ts, raw in read_capture(path):
            n = p.parse(raw, ts, out, 0)
            exp = _expected_records(orjson.loads(raw), None)
            assert n == len(exp), (path.name, raw[:200])
            recs = out[:n]
            for r, x in zip(recs, exp, strict=True):
                if x[0] == KIND_TICKER:
                    got = (r["kind"], r["price"], r["qty"], r["price2"], r["qty2"], r["last_id"])
                elif x[0] == KIND_TRADE:
                    got = (r["kind"], r["price"], r["qty"], r["flags"] & FLAG_BUYER_MAKER)
                else:
                    got = (r["kind"], r["price"], r["qty"], r["flags"] & FLAG_ASK, r["first_id"],
                           r["last_id"], r["prev_id"])
                assert tuple(int(v) for v in got) == x
            if n:
                kinds_seen.add(int(recs[0]["kind"]))
                last = (recs["flags"] & FLAG_LAST_IN_MESSAGE).tolist()
                assert last == [0] * (n - 1) + [FLAG_LAST_IN_MESSAGE]
                assert set(recs["t_origin_ns"]) == {ts}
        c = p.counts()
        assert c["bad_json"] == c["bad_field"] == c["bad_number"] == c["no_space"] == 0, (path.name, c)
        assert c["depth"] > 0 and c["snapshot"] > 0 and c["ticker"] > 0 and c["trade"] > 0, (path.name, c)
    assert kinds_seen == {KIND_DEPTH, KIND_SNAPSHOT, KIND_TRADE, KIND_TICKER}
