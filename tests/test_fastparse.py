"""The numba depthUpdate fast path gives exactly what the orjson path gives: record bytes, codes, counters."""

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
from procs.kernels.parse_json import ERR_NO_SPACE, ERR_NUMBER, PC_NO_SPACE, Parser, SymbolTable
from procs.sources.replay import read_capture
from procs.sources.simulator import SimParams, Simulator
from shm.records import KIND_DEPTH_EMPTY, MARKET, MARKET_COINM, MARKET_SPOT, MARKET_USDM

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
        self.fast_answers = 0  # messages Parser.parse routed to the fast path and it answered
        inner = self.fast._fast.depth

        def counting(*args: object) -> int:
            n = inner(*args)
            self.fast_answers += n != NOT_HANDLED
            return n

        self.fast._fast.depth = counting

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
        return self.probe.depth(raw, 7, garbage(len(self.out_f)), start, 0) != NOT_HANDLED


def feed_all(pair: Pair, msgs: Iterable[tuple[int, bytes]]) -> tuple[int, int]:
    """Feed every message; (depth messages, depth messages the fast path answered itself)."""
    depth = fast = 0
    for ts, raw in msgs:
        pair.feed(raw, 0, ts)
        if b'"depthUpdate"' in raw:
            depth += 1
            fast += pair.handled(raw)
    return depth, fast


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
    n_depth, n_fast = feed_all(pair, read_capture(path))
    assert n_depth > 100 and n_fast == n_depth == pair.fast_answers  # every real depthUpdate took the fast path
    assert pair.fast.counters[1] == n_depth


def test_every_message_of_a_simulated_session(tmp_path: Path) -> None:
    sim = Simulator(SimParams(["BTCUSDT", "ETHUSDT", "nknusdt"], seed=3, anomalies_per_min=6))
    end = sim.base_ns + 20 * 10**9
    msgs = []
    for ts, raw in sim.messages():
        if ts >= end:
            break
        msgs.append((ts, raw))
    pair = Pair(8192)
    n_depth, n_fast = feed_all(pair, msgs)
    assert n_depth > 100 and n_fast == n_depth == pair.fast_answers


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
