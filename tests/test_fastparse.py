"""The numba fast path (depthUpdate, bookTicker, trade, aggTrade) gives exactly what the orjson path gives:
record bytes, codes, counters, seq."""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from procs.kernels import fastparse
from procs.kernels.parse_json import (
    ERR_NO_SPACE,
    ERR_NUMBER,
    PC_NO_SPACE,
    PC_TICKER,
    PC_TRADE,
    PC_UNKNOWN_SYMBOL,
    Parser,
    SymbolTable,
)
from procs.sources.replay import read_capture
from procs.sources.simulator import SimParams, Simulator
from shm.records import (
    FLAG_BUYER_MAKER,
    FLAG_LAST_IN_MESSAGE,
    KIND_DEPTH_EMPTY,
    KIND_TICKER,
    KIND_TRADE,
    MARKET,
    MARKET_COINM,
    MARKET_SPOT,
    MARKET_USDM,
)

NOT_HANDLED = fastparse.NOT_HANDLED


def garbage(n: int) -> np.ndarray:
    """An output array full of the same arbitrary bytes each time: shows exactly which bytes a parser wrote."""
    out = np.zeros(n, MARKET.dtype)
    out.view(np.uint8)[:] = np.random.default_rng(1).integers(0, 256, out.nbytes, dtype=np.uint8)
    return out


class Pair:
    """A fast and an orjson-only parser fed the same messages into identical output arrays."""

    def __init__(self, n_out: int = 4096, symbols: Callable[[], SymbolTable] = SymbolTable, **kw: object) -> None:
        self.fast = Parser(symbols(), fast=True, **kw)
        self.slow = Parser(symbols(), fast=False, **kw)
        self.out_f = garbage(n_out)
        self.out_s = garbage(n_out)
        # a FastDepth of its own, to see whether the fast path (not the fallback) answered
        self.probe = fastparse.FastDepth(symbols().lookup)
        self.probe_out = garbage(n_out)  # one array: the probe's output is never looked at
        self.fast_answers = 0  # messages Parser.parse routed to the fast path and it answered
        for method in ("depth", "tick"):
            setattr(self.fast._fast, method, self._counting(getattr(self.fast._fast, method)))

    def _counting(self, inner: Callable[..., int]) -> Callable[..., int]:
        def counting(*args: object) -> int:
            n = inner(*args)
            self.fast_answers += n != NOT_HANDLED
            return n

        return counting

    def feed(self, raw: bytes, start: int = 0, t0: object = 123) -> int:
        seq = self.slow.seq
        a = self.fast.parse(raw, t0, self.out_f, start)
        b = self.slow.parse(raw, t0, self.out_s, start)
        assert a == b, (a, b, raw[:300])
        if len(self.out_f) <= 64:
            assert self.out_f.tobytes() == self.out_s.tobytes(), raw[:300]  # the whole array, padding included
        else:  # a parser writes at most one record per '[' (+1 for an empty update) from start on
            w = slice(max(start, 0), max(start, 0) + raw.count(b"[") + 1)
            assert self.out_f[w].tobytes() == self.out_s[w].tobytes(), raw[:300]
        assert self.fast.counters == self.slow.counters and self.fast.seq == self.slow.seq, raw[:300]
        assert self.slow.seq == seq + max(a, 0)
        return a

    def handled(self, raw: bytes, start: int = 0) -> bool:
        out = self.probe_out
        return (self.probe.depth(raw, 7, out, start, 0) != NOT_HANDLED
                or self.probe.tick(raw, 7, out, start, 0) != NOT_HANDLED)


def tick_kind(raw: bytes) -> str | None:
    """"ticker" / "trade" for a message the orjson path parses as a bookTicker / trade or aggTrade."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    d = obj.get("data", obj) if type(obj) is dict else None
    if type(d) is not dict:
        return None
    e = d.get("e")
    if e == "bookTicker" or (e is None and "u" in d and "b" in d and "A" in d):
        return "ticker"
    return "trade" if e in ("trade", "aggTrade") else None


def feed_all(pair: Pair, msgs: Iterable[tuple[int, bytes]]) -> tuple[int, int, int, int]:
    """Feed every message; (depth messages, depth messages the fast path answered itself, and the same for
    bookTicker / trade / aggTrade messages)."""
    depth = fast = tick = fast_tick = 0
    for ts, raw in msgs:
        pair.feed(raw, 0, ts)
        if b'"depthUpdate"' in raw:
            depth += 1
            fast += pair.handled(raw)
        elif tick_kind(raw):
            tick += 1
            fast_tick += pair.handled(raw)
    return depth, fast, tick, fast_tick


def wrap(data: dict, stream: str = "btcusdt@depth") -> bytes:
    return orjson.dumps({"stream": stream, "data": data})


def depth(**kw: object) -> dict:
    d = {"e": "depthUpdate", "E": 1_700_000_000_123, "T": 1_700_000_000_122, "s": "BTCUSDT", "U": 100, "u": 105,
         "pu": 99, "b": [["61800.20", "1.5"], ["61800.10", "0"]], "a": [["61800.30", "0.014"]]}
    d.update(kw)
    return d


# -- whole captures ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["spot_4sym_20211012.lines.gz", "usdm_4sym_20210722.lines.gz",
                                  "usdm_btcusdt_20240808_120s.lines.gz"])
def test_every_message_of_the_real_captures(data_dir: Path, name: str) -> None:
    path = data_dir / name
    if not path.is_file():
        pytest.skip(f"{name} not in {data_dir}")
    pair = Pair(8192)
    n_depth, n_fast, n_tick, n_fast_tick = feed_all(pair, read_capture(path))
    assert n_depth > 100 and n_fast == n_depth  # every real depthUpdate took the fast path
    assert n_tick > 80 and n_fast_tick == n_tick  # and every bookTicker / trade / aggTrade
    assert pair.fast_answers == n_depth + n_tick  # Parser.parse routed each of them there
    assert pair.fast.counters[1] == n_depth
    assert pair.fast.counters[PC_TICKER] + pair.fast.counters[PC_TRADE] == n_tick


def test_every_message_of_a_simulated_session(tmp_path: Path) -> None:
    sim = Simulator(SimParams(["BTCUSDT", "ETHUSDT", "nknusdt"], seed=3, anomalies_per_min=6))
    end = sim.base_ns + 20 * 10**9
    msgs = []
    for ts, raw in sim.messages():
        if ts >= end:
            break
        msgs.append((ts, raw))
    pair = Pair(8192)
    n_depth, n_fast, n_tick, n_fast_tick = feed_all(pair, msgs)
    assert n_depth > 100 and n_fast == n_depth
    assert n_tick > 1000 and n_fast_tick == n_tick and pair.fast_answers == n_depth + n_tick
    assert pair.fast.counters[PC_TICKER] > 100 and pair.fast.counters[PC_TRADE] > 100


# -- crafted messages ----------------------------------------------------------------------------------
def test_market_detection_and_field_sets() -> None:
    pair = Pair()
    spot = {k: v for k, v in depth().items() if k not in ("pu", "T")}
    for d, market in ((spot, MARKET_SPOT), (depth(), MARKET_USDM), (depth(ps="BTCUSD", s="BTCUSD_PERP"), MARKET_COINM)):
        raw = wrap(d)
        assert pair.handled(raw)
        assert pair.feed(raw) == 3
        assert set(pair.out_f[:3]["market"]) == {market}
        assert pair.feed(orjson.dumps(d), start=5) == 3  # bare event, single-stream socket


def test_key_order_and_whitespace_do_not_matter() -> None:
    pair = Pair()
    d = depth()
    raws = [
        b'{"data":' + orjson.dumps(dict(reversed(list(d.items())))) + b',"stream":"btcusdt@depth"}',
        orjson.dumps({"b": d["b"], "a": d["a"], "s": "BTCUSDT", "pu": 99, "u": 105, "U": 100, "E": 5,
                      "e": "depthUpdate"}),
        orjson.dumps({"stream": "x", "data": d}, option=orjson.OPT_INDENT_2),
        b' \r\n{ "stream" : "x" ,\t"data" : { "e" : "depthUpdate" , "E" : 5 , "s" : "BTCUSDT" , "U" : 1 , '
        b'"u" : 2 , "b" : [ [ "1.5" , "2" ] , [ "1" , "0" ] ] , "a" : [ ] } } \n',
    ]
    for raw in raws:
        assert pair.handled(raw), raw
        assert pair.feed(raw) > 0


def test_empty_updates() -> None:
    pair = Pair()
    for d in (depth(b=[], a=[]), {k: v for k, v in depth(b=[], a=[]).items() if k != "pu"}):
        raw = wrap(d)
        assert pair.handled(raw)
        assert pair.feed(raw) == 1
        assert pair.out_f[0]["kind"] == KIND_DEPTH_EMPTY
    assert pair.feed(wrap(depth(b=[], a=[["1", "1"]]))) == 1  # one ask only: flagged ask and last


@pytest.mark.parametrize(("text", "ok"), [
    ("0.00000001", True), ("12345678.12345678", True), ("61800", True), ("0", True), ("0.000", True),
    ("1.000000000", True), ("1.50000000000000000000", True), ("92233720368", True), ("92233720368.54775807", True),
    ("0000000000000000001", True), ("000000000000000000001.5", True), ("123456789012.345678", False),
    ("1.000000001", False), ("0.123456789", False), ("92233720369", False), ("92233720368.54775808", False),
    ("00000000000000000001", False), ("9999999999999999999", False), ("1." + "0" * 40, False),
    ("", False), (".5", False), ("5.", False), ("-1", False), ("+1", False), ("1e5", False), ("1E-3", False),
    (" 1", False), ("1 ", False), ("1_000", False), ("1,5", False), ("1.2.3", False), ("abc", False),
    ("0x10", False), ("NaN", False),
])
def test_decimal_strings(text: str, ok: bool) -> None:
    pair = Pair()
    for lv in ([text, "1"], ["1", text]):
        raw = wrap(depth(b=[["2", "2"], lv], a=[["3", "3"]]))
        assert pair.handled(raw)
        assert pair.feed(raw) == (3 if ok else ERR_NUMBER)  # a bad level leaves the levels before it written


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789.-+eE x", max_size=36), st.integers(0, 2), st.booleans())
def test_random_decimal_strings(text: str, at: int, ask: bool) -> None:
    pair = Pair(16)
    levels = [["1.5", "2"], ["2", "3"], ["3", "4"]]
    levels[at] = [text, "1"] if at % 2 else ["1", text]
    raw = wrap(depth(b=[] if ask else levels, a=levels if ask else []))
    assert pair.handled(raw)
    pair.feed(raw)


@pytest.mark.parametrize("raw", [
    wrap(depth(E="x\u00e9")),  # non-ASCII in a field
    wrap(depth(), stream="a\"b"),  # escaped quote in the stream name
    wrap(depth(X="a\\b")),  # escape in an unrelated field
    wrap(depth(X="\x01")),  # control character (orjson escapes it)
    wrap(depth(b=[["\u0031", "1"]])),  # orjson writes it plain; checked below with a real escape
    b'{"stream":"x","data":{"e":"depthUpdate","E":1,"s":"X","U":1,"u":2,"b":[["\\u0031","1"]],"a":[]}}',
    b'{"stream":"x","data":{"e":"depthUpdate","E":1,"s":"B\\u0054C","U":1,"u":2,"b":[["1","1"]],"a":[]}}',
    wrap(depth(T=1.5)), wrap(depth(T=1e30)), wrap(depth(T=None)), wrap(depth(T=True)), wrap(depth(T=[1])),
    wrap(depth(T={"x": 1})), wrap(depth(U=1.5)), wrap(depth(U="1")), wrap(depth(pu=None)), wrap(depth(U=2**63)),
    wrap(depth(u=2**64 - 1)), wrap(depth(U=-(2**63))), wrap(depth(E=-5)), wrap(depth(U=2**63 - 1, u=-(2**63) + 1)),
    b'{"stream":"x","data":{"e":"depthUpdate","E":1,"s":"X","U":1,"u":1180591620717411303424,"b":[],"a":[]}}',
    b'{"stream":"x","data":{"e":"depthUpdate","E":1,"s":"X","U":01,"u":2,"b":[],"a":[]}}',
    b'{"stream":"x","data":{"e":"depthUpdate","E":1,"s":"X","U":1e3,"u":2,"b":[],"a":[]}}',
    b'{"stream":"x","data":{"e":"depthUpdate","E":1,"s":"X","U":-0,"u":2,"b":[],"a":[]}}',
    b'{"stream":"x","data":{"e":"depthUpdate","E":1,"s":"X","U":1,"u":2,"b":[],"a":[],"b":[["1","1"]]}}',
    b'{"stream":"x","data":{"e":"depthUpdate","E":1,"s":"X","U":1,"u":2,"b":[],"a":[]},"stream":"y"}',
    b'{"stream":"x","data":{"e":"depthUpdate","E":1,"s":"X","U":1,"u":2,"b":[],"a":[]},"id":5}',
    b'{"data":{"e":"depthUpdate","E":1,"s":"X","U":1,"u":2,"b":[],"a":[]}}',  # no stream: not a wrapper
    b'{"stream":5,"data":{"e":"depthUpdate","E":1,"s":"X","U":1,"u":2,"b":[],"a":[]}}',
    b'{"stream":"x","data":[{"e":"depthUpdate"}]}',
    b'{"e":"depthUpdate","E":1,"s":"X","U":1,"u":2,"b":[],"a":[]} x',
    b'{"e":"depthUpdate","E":1,"s":"X","U":1,"u":2,"b":[],"a":[]}{}',
    b'{"e":"depthUpdate","E":1,"s":"X","U":1,"u":2,"b":[],"a":[],}',
    b'{"e":"depthUpdate","E":1,"s":"","U":1,"u":2,"b":[],"a":[]}',
    b'{"e":"depthUpdate","E":1,"s":"' + b"A" * 30 + b'","U":1,"u":2,"b":[["1","1"]],"a":[]}',
    wrap(depth(b=[["1", "1", "1"]])), wrap(depth(b=[["1"]])), wrap(depth(b=[[1, "1"]])), wrap(depth(b="ab")),
    wrap(depth(b=[["1", None]])), wrap(depth(b=[[]])), wrap(depth(b=[[["1", "1"]]])), wrap(depth(b=5)),
    wrap(depth(e="depthUpdateX")), wrap(depth(e="trade")), wrap(depth(s=5)), wrap(depth(s=None)),
    wrap({k: v for k, v in depth().items() if k != "U"}), wrap({k: v for k, v in depth().items() if k != "E"}),
    wrap({k: v for k, v in depth().items() if k != "a"}), wrap({k: v for k, v in depth().items() if k != "s"}),
    wrap({"e": "trade", "E": 1, "s": "depthUpdate", "t": 1, "p": "1", "q": "1", "m": True}),
    b"depthUpdate", b'"depthUpdate"', b"[depthUpdate]", b'{"depthUpdate":1}', b"{}",
])
def test_unusual_messages_behave_as_on_the_orjson_path(raw: bytes) -> None:
    pair = Pair(16)
    pair.feed(raw)


def test_escapes_and_odd_values_fall_back() -> None:
    pair = Pair()
    for raw in (wrap(depth(X="a\\b")), wrap(depth(X="x\u00e9")), wrap(depth(T=1.5)), wrap(depth(pu=None)),
                b'{"stream":"x","data":{"e":"depthUpdate","E":1,"s":"X","U":1,"u":2,"b":[["\\u0031","1"]],"a":[]}}'):
        assert not pair.handled(raw)
        pair.feed(raw)
    assert pair.fast.counters[1] == 5 and pair.fast.counters[8] == 0  # pu null is spot by the orjson rules


def test_truncated_at_every_byte() -> None:
    pair = Pair(16)
    raw = wrap(depth(ps="BTCUSD"))
    for k in range(len(raw) + 1):
        pair.feed(raw[:k])
        pair.feed(raw[:k] + b"}")


def test_bad_json_types_of_arguments() -> None:
    pair = Pair(16)
    raw = wrap(depth())
    for t0 in (1.5, 2**64, -1, True):
        pair.feed(raw, t0=t0)
    pair.feed(raw, start=-1)  # struct.pack_into counts a negative offset from the end
    for data in (bytearray(raw), memoryview(raw)):
        assert outcome(Parser(), data, garbage(8)) == outcome(Parser(fast=False), data, garbage(8))
    for make in (lambda: garbage(16), lambda: np.zeros(8, np.int64), lambda: garbage(8)[:0]):
        assert outcome(Parser(), raw, make()) == outcome(Parser(fast=False), raw, make())
    assert outcome(Parser(), raw, garbage(16), 2) == outcome(Parser(fast=False), raw, garbage(16), 2)  # strided


def outcome(p: Parser, raw: object, base: np.ndarray, step: int = 1) -> object:
    # the whole base buffer is compared: a copy of a strided structured array leaves its padding undefined
    try:
        return p.parse(raw, 0, base[::step], 0), base.tobytes()
    except Exception as e:  # whatever the orjson path does, the fast one must do too
        return type(e)


def test_huge_ids_and_sequence_numbers() -> None:
    pair = Pair(first_seq=2**63 - 2)
    assert pair.feed(wrap(depth(U=2**63 - 1, u=2**63 - 1, pu=-(2**63) + 1, E=2**63 - 1))) == 3  # seq crosses 2**63
    pair.feed(wrap(depth(U=2**63)))


def test_no_space_writes_nothing_and_retries() -> None:
    pair = Pair(4)
    raw = wrap(depth())
    assert pair.feed(raw, start=2) == ERR_NO_SPACE
    assert pair.fast.counters[PC_NO_SPACE] == 1
    assert pair.feed(raw, start=1) == 3
    assert pair.feed(wrap(depth(b=[], a=[])), start=4) == ERR_NO_SPACE
    assert pair.feed(wrap(depth(b=[], a=[])), start=3) == 1


def test_big_messages_grow_the_scratch() -> None:
    pair = Pair(8192)
    levels = [[f"{60000 + k}.{k % 100:02d}", f"{k}.001"] for k in range(3000)]
    raw = wrap(depth(b=levels, a=levels[:2500]))
    assert pair.handled(raw)
    assert pair.feed(raw) == 5500
    assert pair.feed(raw, start=3000) == ERR_NO_SPACE


def test_symbols_unknown_many_and_differently_spelled() -> None:
    pair = Pair(symbols=lambda: SymbolTable(["BTCUSDT"], auto_add=False))
    assert pair.feed(wrap(depth(s="ETHUSDT"))) == 0  # counted as unknown symbol, like the orjson path
    assert pair.feed(wrap(depth(s="ETHUSDT", b=[["bad", "1"]]))) == 0  # the symbol is checked first
    assert pair.feed(wrap(depth(s="btcusdt"))) == 3
    assert pair.fast.counters[6] == 2
    pair = Pair(symbols=lambda: SymbolTable(max_symbols=500))
    names = [f"S{k}USDT" for k in range(400)] + [f"s{k}usdt" for k in range(0, 400, 7)] + ["A" * 24]
    for name in names * 2:
        raw = wrap(depth(s=name))
        assert pair.feed(raw) == 3
    assert all(pair.fast._fast.depth(wrap(depth(s=name)), 0, garbage(8), 0, 0) == 3 for name in names)
    assert pair.fast.symbols.names == pair.slow.symbols.names


def test_name_slot_matches_the_kernel() -> None:
    fd = fastparse.FastDepth(lambda name: 1)
    for name in ("X", "BTCUSDT", "1000SHIBUSDT", "BTCUSD_240927", "A" * 24):
        assert fd.depth(wrap(depth(s=name)), 0, garbage(8), 0, 0) == 3
        row = fd._tab[1 + fastparse.name_slot(name.encode(), len(fd._tab) - 1)]
        assert row[0] == len(name)  # found at its home slot: Python and numba hash alike


def test_the_shared_capture_line_format(data_dir: Path, tmp_path: Path) -> None:
    """A capture rewritten with whitespace inside each JSON object parses the same."""
    src = data_dir / "spot_4sym_20211012.lines.gz"
    if not src.is_file():
        pytest.skip(f"{src} absent")
    with gzip.open(src) as f:
        lines = [ln for ln in f.read().split(b"\n") if ln]
    pair = Pair(8192)
    for ln in lines:
        ts, raw = ln.split(b" ", 1)
        pair.feed(orjson.dumps(orjson.loads(raw), option=orjson.OPT_INDENT_2), 0, int(ts))


@settings(max_examples=300, deadline=None)
@given(st.decimals(min_value=0, max_value=92233720368, places=8, allow_nan=False, allow_infinity=False),
       st.integers(0, 12), st.integers(0, 3))
def test_random_valid_decimals(d: object, zeros: int, lead: int) -> None:
    text = "0" * lead + f"{d:f}"
    if zeros:
        text += ("" if "." in text else ".") + "0" * zeros  # extra zero decimals stay exact
    pair = Pair(16)
    raw = wrap(depth(b=[[text, text]], a=[["1", text]]))
    assert pair.handled(raw)
    pair.feed(raw)


# -- bookTicker / trade / aggTrade -------------------------------------------------------------------------
def ticker(**kw: object) -> dict:
    """A USD-M bookTicker (spot drops e, E and T; COIN-M adds ps)."""
    d = {"e": "bookTicker", "u": 5_123_107_839_020, "s": "BTCUSDT", "b": "61800.20", "B": "2.507", "a": "61800.30",
         "A": "2.510", "T": 1_723_161_256_313, "E": 1_723_161_256_314}
    d.update(kw)
    return d


def trade(**kw: object) -> dict:
    """A USD-M trade (spot adds M, COIN-M ps)."""
    d = {"e": "trade", "E": 1_723_161_256_322, "T": 1_723_161_256_321, "s": "BTCUSDT", "t": 5_266_583_935,
         "p": "61800.30", "q": "0.006", "X": "MARKET", "m": False}
    d.update(kw)
    return d


def agg(**kw: object) -> dict:
    """A USD-M aggTrade (spot adds M)."""
    d = {"e": "aggTrade", "E": 1_626_992_741_575, "a": 16_599_292, "s": "BTCUSDT", "p": "1.01100", "q": "10",
         "f": 23_961_322, "l": 23_961_325, "T": 1_626_992_741_421, "m": True}
    d.update(kw)
    return d


def without(d: dict, *keys: str) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


SPOT_TICKER = without(ticker(), "e", "E", "T")


@pytest.mark.parametrize(("d", "kind", "market", "fields"), [
    (SPOT_TICKER, KIND_TICKER, MARKET_SPOT, dict(price=6_180_020_000_000, qty=250_700_000, price2=6_180_030_000_000,
                                                  qty2=251_000_000, first_id=-1, last_id=5_123_107_839_020,
                                                  prev_id=-1, exch_ts_ms=0)),
    (ticker(), KIND_TICKER, MARKET_USDM, dict(exch_ts_ms=1_723_161_256_314, last_id=5_123_107_839_020)),
    (ticker(s="BTCUSD_PERP", ps="BTCUSD"), KIND_TICKER, MARKET_COINM, {}),
    (without(ticker(), "e"), KIND_TICKER, MARKET_USDM, {}),  # no "e" but an "E": futures by the orjson rules
    (trade(), KIND_TRADE, MARKET_USDM, dict(price=6_180_030_000_000, qty=600_000, price2=0, qty2=0,
                                            first_id=5_266_583_935, last_id=5_266_583_935, prev_id=-1,
                                            exch_ts_ms=1_723_161_256_322, flags=FLAG_LAST_IN_MESSAGE)),
    (trade(M=True, m=True, b=88, a=50), KIND_TRADE, MARKET_SPOT, dict(flags=FLAG_LAST_IN_MESSAGE | FLAG_BUYER_MAKER)),
    (trade(ps="BTCUSD", M=True), KIND_TRADE, MARKET_COINM, {}),
    (agg(), KIND_TRADE, MARKET_USDM, dict(first_id=16_599_292, last_id=23_961_325,
                                          flags=FLAG_LAST_IN_MESSAGE | FLAG_BUYER_MAKER)),
    (agg(M=True), KIND_TRADE, MARKET_SPOT, {}),
    (agg(ps="BTCUSD"), KIND_TRADE, MARKET_COINM, {}),
    (without(agg(), "l"), KIND_TRADE, MARKET_USDM, dict(first_id=16_599_292, last_id=16_599_292)),
])
def test_ticker_and_trade_field_sets(d: dict, kind: int, market: int, fields: dict) -> None:
    pair = Pair(64)
    for raw in (wrap(d, "btcusdt@x"), orjson.dumps(d), orjson.dumps({"data": d, "stream": "x"})):
        assert pair.handled(raw), raw
        assert pair.feed(raw, start=3) == 1
        rec = pair.out_f[3]
        assert (rec["kind"], rec["market"], rec["flags"] & FLAG_LAST_IN_MESSAGE) == (kind, market, 1)
        for name, value in fields.items():
            assert rec[name] == value, name
    counter = PC_TICKER if kind == KIND_TICKER else PC_TRADE
    assert pair.fast.counters[counter] == 3 and pair.fast.seq == 3 and pair.fast_answers == 3


def test_ticker_and_trade_key_order_and_whitespace() -> None:
    pair = Pair(64)
    for d in (SPOT_TICKER, ticker(), trade(), agg()):
        for raw in (orjson.dumps(dict(reversed(list(d.items())))),
                    b'{"data":' + orjson.dumps(dict(sorted(d.items()))) + b',"stream":"x"}',
                    orjson.dumps({"stream": "x", "data": d}, option=orjson.OPT_INDENT_2),
                    b" \t" + orjson.dumps(d).replace(b",", b" ,\n ").replace(b":", b"\r: ") + b"\n"):
            assert pair.handled(raw), raw
            assert pair.feed(raw) == 1


def _variants() -> list[bytes]:
    # messages the fast path must leave to the orjson path, or answer exactly as it does
    out = []
    for base in (ticker(), SPOT_TICKER, trade(), agg()):
        for k in base:
            out.append(wrap(without(base, k)))  # every field missing in turn
        for k, v in (("s", 5), ("s", None), ("s", ""), ("s", "A" * 25), ("E", "1"), ("E", 1.5), ("E", None),
                     ("E", 2**63), ("u", "1"), ("u", None), ("u", True), ("u", -(2**63)), ("b", 1), ("B", None),
                     ("a", ["1"]), ("A", {"x": 1}), ("p", 61800.3), ("q", None), ("t", "5"), ("t", 1.0),
                     ("a", 5), ("a", "5"), ("l", None), ("l", "7"), ("m", 1), ("m", None), ("m", "true"),
                     ("m", [True]), ("M", None), ("M", [1]), ("ps", None), ("ps", 1.5), ("T", 1.5), ("T", None),
                     ("T", True), ("X", [1]), ("X", "a\\b"), ("X", "\u00e9"), ("X", "\x7f"), ("e", None), ("e", 5),
                     ("e", "kline"), ("e", "Trade"), ("e", "depthUpdate"), ("e", "bookTicker"), ("e", "trade"),
                     ("e", "aggTrade"), ("data", 5), ("stream", "x"), ("lastUpdateId", 5)):
            d = dict(base)
            d[k] = v
            out += [wrap(d), orjson.dumps(d)]
    out += [
        wrap(without(SPOT_TICKER, "b"), "x@bookTicker"),  # no "e" and no "b": not a bookTicker at all
        orjson.dumps({**SPOT_TICKER, "data": {"x": 1}, "stream": "y"}),  # a wrapper by the orjson rules
        orjson.dumps({**trade(), "data": 5, "stream": "y"}), orjson.dumps({**trade(), "data": None, "stream": "y"}),
        orjson.dumps({"stream": "x", "data": trade(), "id": 1}), orjson.dumps({"stream": 5, "data": trade()}),
        orjson.dumps({"data": trade()}), orjson.dumps({"stream": "x", "data": [trade()]}),
        b'{"stream":"x","data":{"e":"trade","E":1,"s":"X","t":1,"p":"1","q":"1","m":true},"stream":"y"}',
        b'{"e":"trade","E":1,"s":"X","t":1,"p":"1","q":"1","m":true,"p":"2"}',  # duplicate key
        b'{"e":"trade","E":1,"s":"X","t":1,"p":"1","q":"1","m":true,"e":"aggTrade","a":1}',
        b'{"e":"trade","E":1,"s":"X","t":1,"p":"1","q":"1","m":true,"T":5,"T":6}',  # duplicate unrelated key
        b'{"e":"trade","E":1,"s":"B\\u0054C","t":1,"p":"1","q":"1","m":true}',
        b'{"e":"trade","E":1,"s":"X","t":1,"p":"\\u0031","q":"1","m":true}',
        b'{"e":"tr\\u0061de","E":1,"s":"X","t":1,"p":"1","q":"1","m":true}',
        b'{"e":"trade","E":1,"s":"X","t":01,"p":"1","q":"1","m":true}',
        b'{"e":"trade","E":1,"s":"X","t":1e3,"p":"1","q":"1","m":true}',
        b'{"e":"trade","E":1,"s":"X","t":-0,"p":"1","q":"1","m":true}',
        b'{"e":"trade","E":1,"s":"X","t":1,"p":"1","q":"1","m":tru}',
        b'{"e":"trade","E":1,"s":"X","t":1,"p":"1","q":"1","m":truex}',
        b'{"e":"trade","E":1,"s":"X","t":1,"p":"1","q":"1","m":True}',
        b'{"e":"trade","E":1,"s":"X","t":1,"p":"1","q":"1","m":false,"M":nul}',
        b'{"e":"trade","E":1,"s":"X","t":1,"p":"1","q":"1","m":true,}',
        b'{"e":"trade","E":1,"s":"X","t":1,"p":"1","q":"1","m":true} x',
        b'{"e":"trade","E":1,"s":"X","t":1,"p":"1","q":"1","m":true}{}',
        b'{"e":"trade","E":1,"s":"X","t":1180591620717411303424,"p":"1","q":"1","m":true}',
        b'{"u":1,"s":"X","b":"1","B":"1","a":"1","A":"1","lastUpdateId":5}',  # ticker keys win, as in orjson's path
        b'{"u":1,"s":"X","b":"1","B":"1","a":"1","A":"1","e":null}',
        b'{"lastUpdateId":1,"bids":[],"asks":[]}', b'{"e":"kline","E":1,"s":"X","k":{"t":1}}', b"{}", b"[]",
    ]
    return out


@pytest.mark.parametrize("raw", _variants())
def test_unusual_tickers_and_trades_behave_as_on_the_orjson_path(raw: bytes) -> None:
    pair = Pair(16)
    pair.feed(raw)
    pair.feed(raw, start=16)  # no room: the checks before the space test decide the code


def test_escapes_and_odd_values_in_tickers_fall_back() -> None:
    pair = Pair()
    raws = [wrap(trade(X="a\\b")), wrap(trade(X="x\u00e9")), wrap(trade(T=1.5)), wrap(trade(m=None)),
            wrap(ticker(e=None)), wrap(agg(l=None)), wrap(ticker(), "a\"b"), orjson.dumps({**trade(), "data": 1}),
            b'{"e":"trade","E":1,"s":"X","t":1,"p":"\\u0031","q":"1","m":true}']
    for raw in raws:
        assert not pair.handled(raw), raw
        pair.feed(raw)
    assert pair.fast_answers == 0


@pytest.mark.parametrize("text", ["0.00000001", "1.000000000", "61800", "0", "1.000000001", "92233720369", "",
                                  ".5", "5.", "-1", "1e5", " 1", "abc", "00000000000000000001"])
def test_ticker_and_trade_decimal_strings(text: str) -> None:
    pair = Pair(16)
    for d in (ticker(b=text), ticker(B=text), ticker(a=text), ticker(A=text), trade(p=text), trade(q=text),
              agg(p=text), agg(q=text), without(ticker(A=text), "e", "E", "T")):
        raw = wrap(d)
        assert pair.handled(raw)
        assert pair.feed(raw) in (1, ERR_NUMBER)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789.-+eE x", max_size=30), st.sampled_from(["b", "B", "a", "A", "p", "q"]))
def test_random_ticker_and_trade_strings(text: str, key: str) -> None:
    pair = Pair(16)
    raw = wrap(ticker(**{key: text}) if key in "bBaA" else trade(**{key: text}))
    assert pair.handled(raw)
    pair.feed(raw)


def test_ticker_and_trade_truncated_at_every_byte() -> None:
    pair = Pair(16)
    for raw in (wrap(ticker(ps="BTCUSD")), orjson.dumps(SPOT_TICKER), wrap(trade(M=True)), orjson.dumps(agg())):
        for k in range(len(raw) + 1):
            pair.feed(raw[:k])
            pair.feed(raw[:k] + b"}")


def test_ticker_and_trade_no_space_and_unknown_symbols() -> None:
    pair = Pair(4, symbols=lambda: SymbolTable(["BTCUSDT"], auto_add=False))
    for d in (ticker(), trade(), agg(), SPOT_TICKER):
        assert pair.feed(wrap(d), start=4) == ERR_NO_SPACE
        assert pair.feed(wrap(d), start=3) == 1
        assert pair.feed(wrap({**d, "s": "ETHUSDT"}), start=4) == 0  # the symbol is checked before the space
        assert pair.feed(wrap({**d, "s": "ETHUSDT", "p": "bad", "b": "bad"})) == 0  # and before the numbers
        assert pair.feed(wrap({**d, "p": "bad", "b": "bad"}), start=4) == ERR_NO_SPACE  # space before numbers
        assert pair.feed(wrap({**d, "s": "btcusdt"}), start=1) == 1  # another spelling of a known symbol
    assert pair.fast.counters[PC_NO_SPACE] == 8 and pair.fast.counters[PC_UNKNOWN_SYMBOL] == 8
    assert pair.fast_answers == 24


def test_ticker_and_trade_huge_ids_and_sequence_numbers() -> None:
    pair = Pair(first_seq=2**63 - 2)
    for d in (ticker(u=2**63 - 1, E=2**63 - 1), trade(t=-(2**63) + 1), agg(a=2**63 - 1, l=0), trade(t=2**63),
              ticker(E=-(2**63))):
        pair.feed(wrap(d))  # seq crosses 2**63 on the way: the orjson path writes those
    assert pair.fast.seq == 2**63 + 2  # t=2**63 does not fit the record: ERR_FIELD


def test_bad_argument_types_for_tickers() -> None:
    pair = Pair(16)
    raw = wrap(trade())
    for t0 in (1.5, 2**64, -1, True):
        pair.feed(raw, t0=t0)
    pair.feed(raw, start=-1)
    for data in (bytearray(raw), memoryview(raw)):
        assert outcome(Parser(), data, garbage(8)) == outcome(Parser(fast=False), data, garbage(8))
    for make in (lambda: garbage(16), lambda: np.zeros(8, np.int64), lambda: garbage(8)[:0]):
        assert outcome(Parser(), raw, make()) == outcome(Parser(fast=False), raw, make())
    assert outcome(Parser(), raw, garbage(16), 2) == outcome(Parser(fast=False), raw, garbage(16), 2)
    fd = fastparse.FastDepth(lambda name: 0)
    assert fd.tick(bytearray(raw), 0, garbage(4), 0, 0) == NOT_HANDLED  # any buffer but bytes: orjson's path
    assert fd.tick(raw, 0, garbage(4), 0, 0) == fastparse.TRADE


def test_depth_and_tick_share_the_symbol_table() -> None:
    pair = Pair(64)
    names = [f"S{k}USDT" for k in range(100)]
    for name in names:
        assert pair.feed(wrap(ticker(s=name))) == 1
        assert pair.feed(wrap(depth(s=name))) == 3
        assert pair.feed(wrap(trade(s=name.lower()))) == 1
    assert pair.fast.symbols.names == pair.slow.symbols.names and len(pair.fast._fast._names) == 200
