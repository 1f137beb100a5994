#!/usr/bin/env python3
"""Mutation fuzzer for the Binance JSON parser: the numba fast path against the orjson path, and both
against an independent decoding.

Seeds: every message of the shared real captures (`$TICKPIPE_DATA` or ../shared/data/binance) plus
a few seconds of the built-in simulator. Each case takes one seed and applies structure-aware
mutations to its JSON tree (number strings, integers, types, duplicate / dropped / reordered /
renamed keys, escapes and non-ASCII in strings, symbols, "e" values, the combined-stream wrapper,
level arrays from empty to thousands of levels, whitespace) and / or byte-level ones (bit flips,
inserted / deleted / duplicated bytes, truncation, digit changes, splices with another message).

Oracle, per mutated message:
1. `Parser(fast=True)` and `Parser(fast=False)` write into identical garbage-filled arrays: same
   return code, same bytes over the whole array, same counters and seq; no exception escapes.
2. An independent decoding (orjson for the JSON, `decimal` for prices and sizes, the field rules
   written out here from the parser's documented contract) says what the message must give: its
   records field by field (price * 1e8 exact), or that it is malformed / unknown. So both paths
   being wrong the same way is caught too.

    python scripts/fuzz_parse.py --n 1000000 --seed 0

Exit status 1 on any disagreement or exception; the first few cases are saved (mutated bytes plus
the parser state needed) to --save-dir, and `--replay DIR` re-checks saved cases.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from procs.kernels import fastparse
from procs.kernels.parse_json import (
    ERR_FIELD,
    ERR_JSON,
    ERR_NO_SPACE,
    ERR_NUMBER,
    PC_UNKNOWN_SYMBOL,
    PC_UNKNOWN_TYPE,
    Parser,
    SymbolTable,
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

DATA_DIR = Path(os.environ.get("TICKPIPE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "binance"))
CAPTURES = ("spot_4sym_20211012.lines.gz", "usdm_4sym_20210722.lines.gz", "usdm_btcusdt_20240808_120s.lines.gz")
NOT_HANDLED = fastparse.NOT_HANDLED
#: Records in the output arrays of ordinary cases; messages with more '[' than this use the big pair.
SMALL_OUT = 64
BIG_OUT = 8192
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
_U64 = 1 << 64
#: First seq of the "highseq" configuration: records cross 2**63, where the kernel hands over to the orjson path.
_HIGH_SEQ = (1 << 63) - 40
#: Parser configurations the fuzzer rotates through (fresh parsers every `rotate` cases).
CONFIGS: tuple[str, ...] = ("auto", "fixed", "tiny", "bare", "highseq")


# ---------------------------------------------------------------------------------------------------------------
# JSON tree: keeps key order, duplicate keys, the exact spelling of numbers and strings
class Tok:
    """A token emitted verbatim: a number, true / false / null, or junk."""

    __slots__ = ("b",)

    def __init__(self, b: bytes) -> None:
        self.b = b


class Str:
    """A JSON string: its value, or `raw` (the bytes between the quotes) for an unusual spelling."""

    __slots__ = ("raw", "s")

    def __init__(self, s: str, raw: bytes | None = None) -> None:
        self.s = s
        self.raw = raw


class Obj:
    """A JSON object as a list of [key Str, value] pairs (duplicates and order kept)."""

    __slots__ = ("items",)

    def __init__(self, items: list[list]) -> None:
        self.items = items


Node = Tok | Str | Obj | list


def to_tree(v: object) -> Node:
    """orjson-decoded value → tree."""
    t = type(v)
    if t is dict:
        return Obj([[Str(k), to_tree(x)] for k, x in v.items()])
    if t is list:
        return [to_tree(x) for x in v]
    if t is str:
        return Str(v)
    if v is True:
        return Tok(b"true")
    if v is False:
        return Tok(b"false")
    if v is None:
        return Tok(b"null")
    return Tok(orjson.dumps(v))


_WS_OK = (b" ", b"\t", b"\n", b"\r", b"  ", b"\r\n")
_WS_BAD = (b"\x0b", b"\x0c", b"\xc2\xa0", b"\x00")


class Emitter:
    """Tree → bytes, optionally with whitespace around every structural character."""

    def __init__(self, rng: random.Random, ws: float = 0.0, bad_ws: bool = False) -> None:
        self.rng = rng
        self.ws = ws
        self.bad_ws = bad_ws

    def _sp(self, out: list[bytes]) -> None:
        if self.ws and self.rng.random() < self.ws:
            pool = _WS_BAD if self.bad_ws and self.rng.random() < 0.1 else _WS_OK
            out.append(self.rng.choice(pool))

    def emit(self, node: Node) -> bytes:
        out: list[bytes] = []
        self._sp(out)
        self._emit(node, out)
        self._sp(out)
        return b"".join(out)

    def _emit(self, node: Node, out: list[bytes]) -> None:
        t = type(node)
        if t is Tok:
            out.append(node.b)
        elif t is Str:
            out.append(_str_bytes(node))
        elif t is Obj:
            out.append(b"{")
            for k, (key, val) in enumerate(node.items):
                if k:
                    self._sp(out)
                    out.append(b",")
                self._sp(out)
                out.append(_str_bytes(key) if type(key) is Str else key.b)
                self._sp(out)
                out.append(b":")
                self._sp(out)
                self._emit(val, out)
            self._sp(out)
            out.append(b"}")
        else:
            out.append(b"[")
            for k, val in enumerate(node):
                if k:
                    self._sp(out)
                    out.append(b",")
                self._sp(out)
                self._emit(val, out)
            self._sp(out)
            out.append(b"]")


def _str_bytes(s: Str) -> bytes:
    if s.raw is not None:
        return b'"' + s.raw + b'"'
    return orjson.dumps(s.s)


def slots(node: Node, acc: list[tuple[list, int, bool]]) -> list[tuple[list, int, bool]]:
    """Every value position under `node`: (container, index, in-object)."""
    if type(node) is Obj:
        for k, it in enumerate(node.items):
            acc.append((node.items, k, True))
            slots(it[1], acc)
    elif type(node) is list:
        for k, v in enumerate(node):
            acc.append((node, k, False))
            slots(v, acc)
    return acc


def get(slot: tuple[list, int, bool]) -> Node:
    c, k, obj = slot
    return c[k][1] if obj else c[k]


def put(slot: tuple[list, int, bool], v: Node) -> None:
    c, k, obj = slot
    if obj:
        c[k][1] = v
    else:
        c[k] = v


def objects(node: Node, acc: list[Obj]) -> list[Obj]:
    if type(node) is Obj:
        acc.append(node)
        for it in node.items:
            objects(it[1], acc)
    elif type(node) is list:
        for v in node:
            objects(v, acc)
    return acc


def level_arrays(node: Node, acc: list[list]) -> list[list]:
    """Lists whose items are all lists (the "b" / "a" / "bids" / "asks" shapes), empty lists too."""
    if type(node) is Obj:
        for it in node.items:
            v = it[1]
            if type(v) is list and all(type(x) is list for x in v):
                acc.append(v)
            level_arrays(v, acc)
    elif type(node) is list:
        for v in node:
            level_arrays(v, acc)
    return acc


# ---------------------------------------------------------------------------------------------------------------
# mutations
_KEYS = ("e", "E", "s", "U", "u", "pu", "ps", "b", "a", "B", "A", "p", "q", "t", "l", "m", "M", "T", "f", "X",
         "data", "stream", "lastUpdateId", "bids", "asks", "pair", "k", "S", "P", "id", "result", "")
_EVENTS = ("depthUpdate", "bookTicker", "trade", "aggTrade", "kline", "depthupdate", "DepthUpdate", "depthUpdate ",
           " trade", "", "markPriceUpdate", "24hrTicker", "depthUpdateX", "trad", "aggtrade", "bookTickers",
           "forceOrder", "depth", "depthUpdat", "tradeX")
_STREAMS = ("btcusdt@depth", "btcusdt@depth@100ms", "btcusdt@depthSnapshot", "x@depthSnapshot", "@depthSnapshot",
            "btcusdt@bookTicker", "btcusdt@trade", "btcusdt@aggTrade", "", "btcusdt@depth20", "BTCUSDT@depthSnapshot",
            "ethusdt@depthSnapshot ", "depthSnapshot")
_SYMBOLS = ("BTCUSDT", "btcusdt", "BtcUsdt", "ETHUSDT", "NKNUSDT", "SUSHIUSDT", "BTCUSD_PERP", "X", "",
            "A" * 24, "B" * 25, "C" * 40, "BTC USDT", "BTCUSDT\u00e9", "1000SHIBUSDT", "BTCUSD_240927", "b" * 8,
            "c" * 16, "d" * 17, "BTC\"USDT", "BTC\\USDT", "\u00c9THUSDT", "S0USDT", "S1USDT")
_WEIRD_DECIMALS = (
    "", ".", "-", "+", ".5", "5.", "-0", "-1", "+1", "0", "0.0", "00", "0.00000001", "0.000000001", "0.000000010",
    "1e5", "1E-3", "1.5e3", "NaN", "Infinity", "-Infinity", "inf", "0x1A", "1_000", "1,5", "1.2.3", "1..2",
    " 1", "1 ", "1\t", "\u0661\u0662\u0663", "\uff11\uff12", "\u00b2", "1.\u0665", "9223372036854775807",
    "9223372036854775808", "92233720368", "92233720369", "92233720368.54775807", "92233720368.54775808",
    "92233720368.547758070", "92233720368.547758071", "0000000000000000001", "00000000000000000001",
    "000000000000000000001.5", "1." + "0" * 23, "1." + "0" * 24, "1." + "0" * 40, "0." + "0" * 30 + "1",
    "12345678901234567.8", "1234567890123456.78", "123456789012345678", "1234567890123456789", "999999999999.99999999",
    "92233720368.5477580", "18446744073709551616", "1" * 20, "9" * 19, "9" * 18, "99999999999.99999999",
    "abc", "true", "null", "\u0000", "1/2",
)
_INT_TOKENS = (b"0", b"-0", b"1", b"-1", b"9223372036854775807", b"9223372036854775808", b"-9223372036854775808",
               b"-9223372036854775809", b"18446744073709551615", b"18446744073709551616", b"1" + b"0" * 30,
               b"01", b"00", b"1.0", b"1.5", b"1e3", b"1E3", b"1e-3", b"-", b"--1", b"+1", b"1.", b".1", b"0x10",
               b"1_0", b"Infinity", b"NaN", b"-Infinity", b'"123"', b"true", b"false", b"null", b"[]", b"{}",
               b"[1]", b'""', b"-01", b"0.0", b"1E+2", b"12345678901234567890")
#: Seed category weights by event kind (the fast path's four kinds first; full snapshots are big and slow).
_KIND_WEIGHT = {"depthUpdate": 4.0, "bookTicker": 3.0, "trade": 2.0, "aggTrade": 2.0, "kline": 0.5, "snapshot": 0.5,
                "snapshot_full": 0.05}
_INTERESTING_BYTES = b'"\\{}[],:.-+0123456789eE \t\n\r\x00\x7f\x80\xff'


def _digits(rng: random.Random, k: int, nines: bool = False) -> str:
    if nines and rng.random() < 0.5:
        return "9" * k
    return "".join(rng.choice("0123456789") for _ in range(k))


def weird_decimal(rng: random.Random, s: str) -> str:
    """A decimal string near `s` that stresses the fixed-point rules (or one from the edge list)."""
    r = rng.randrange(16)
    if r == 0:
        return rng.choice(_WEIRD_DECIMALS)
    if r == 1 and s:  # extra dot somewhere
        k = rng.randrange(len(s) + 1)
        return s[:k] + "." + s[k:]
    if r == 2:
        return rng.choice("-+") + s
    if r == 3:
        return s + rng.choice(("e", "E", "e-", "e+")) + str(rng.randrange(30))
    if r == 4:  # 9+ decimals, the tail zero or not
        tail = "0" * rng.randrange(1, 20) if rng.random() < 0.5 else _digits(rng, rng.randrange(1, 20)) + "1"
        return _digits(rng, rng.randrange(1, 12)) + "." + _digits(rng, 8) + tail
    if r == 5:  # integer of 17..22 digits
        return _digits(rng, rng.randrange(17, 23), nines=True)
    if r == 6:  # long digit runs
        k = rng.randrange(20, 300)
        return rng.choice(("1" * k, "0" * k + "1", "0." + "0" * k + "1", "1." + "0" * k, "9" * k + ".5"))
    if r == 7:  # the kernel's boundaries: ip + nd around 18 / 19 digits, nd around 8
        ip = rng.randrange(1, 21)
        nd = rng.randrange(0, 13)
        t = _digits(rng, ip, nines=True)
        return t + "." + _digits(rng, nd, nines=True) if nd else t
    if r == 8 and s:  # change a digit
        k = rng.randrange(len(s))
        return s[:k] + rng.choice("0123456789") + s[k + 1:]
    if r == 9 and s:  # drop or duplicate a character
        k = rng.randrange(len(s))
        return s[:k] + s[k + 1:] if rng.random() < 0.5 else s[:k] + s[k] + s[k:]
    if r == 10:
        return "0" * rng.randrange(1, 25) + s
    if r == 11:
        return s + "0" * rng.randrange(1, 30) if "." in s else s + "." + "0" * rng.randrange(1, 30)
    if r == 12 and s:
        return s[:rng.randrange(len(s))]
    if r == 13:  # int64 edge after scaling: 92233720368.54775807 and neighbours
        v = _I64_MAX + rng.randrange(-3, 4)
        t = str(v)
        return t[:-8] + "." + t[-8:]
    if r == 14:
        return s + s
    return str(rng.randrange(10 ** rng.randrange(1, 12))) + "." + _digits(rng, rng.randrange(1, 9))


def weird_int(rng: random.Random) -> bytes:
    if rng.random() < 0.6:
        return rng.choice(_INT_TOKENS)
    v = rng.choice((rng.randrange(_I64_MIN, _I64_MAX), rng.randrange(-(1 << 70), 1 << 70),
                    _I64_MAX + rng.randrange(-2, 3), _I64_MIN + rng.randrange(-2, 3), rng.randrange(1000)))
    return str(v).encode()


def random_value(rng: random.Random, near: Node | None = None) -> Node:
    """A value of some other JSON type (string / number / null / bool / array / object / nested)."""
    r = rng.randrange(14)
    text = _str_bytes(near).strip(b'"').decode("utf-8", "replace") if type(near) is Str else None
    if r == 0 and type(near) is Tok:
        return Str(near.b.decode("ascii", "replace"))  # number → string of the same digits
    if r == 1 and text is not None:
        return Tok(text.encode()) if text else Tok(b"0")  # string → bare token (a number if digits)
    if r == 2:
        return Tok(b"null")
    if r == 3:
        return Tok(rng.choice((b"true", b"false")))
    if r == 4:
        return []
    if r == 5 and near is not None:
        return [near]
    if r == 6:
        return Obj([])
    if r == 7 and near is not None:
        return Obj([[Str(rng.choice(_KEYS)), near]])
    if r == 8:
        return Tok(rng.choice((b"1.5", b"1e30", b"-0.0", b"0.1", b"1E2", b"61800.2")))
    if r == 9:
        return Str(weird_decimal(rng, text or "1.5"))
    if r == 10:
        return Tok(weird_int(rng))
    if r == 11:
        return [Str("1.5"), Str("2")]
    if r == 12:
        return [[Str("1.5"), Str("2")]]
    return Str(rng.choice(("", "x", "depthUpdate", "BTCUSDT", "\u00e9", "a b", "true")))


def escaped(rng: random.Random, s: str) -> Str:
    """The same string (or a near one) spelt with escapes / non-ASCII: "\\u0042TCUSDT", "\\/", raw UTF-8."""
    r = rng.randrange(6)
    if r == 0 and s:  # one character as \\uXXXX, hex case random
        k = rng.randrange(len(s))
        h = f"{ord(s[k]):04x}" if ord(s[k]) < 0x10000 else "fffd"
        h = h.upper() if rng.random() < 0.5 else h
        return Str(s, _plain(s[:k]).encode() + b"\\u" + h.encode() + _plain(s[k + 1:]).encode())
    if r == 1:  # every character escaped
        return Str(s, b"".join(b"\\u%04x" % min(ord(c), 0xFFFD) for c in s))
    if r == 2:  # a needless escape: \/ (same value) or a real one (another value)
        k = rng.randrange(len(s) + 1)
        esc = rng.choice((b"\\/", b"\\n", b"\\t", b'\\"', b"\\\\", b"\\b", b"\\u0000", b"\\ud83d\\ude00", b"\\ud800",
                          b"\\x41", b"\\u12", b"\\"))
        return Str(s, _plain(s[:k]).encode() + esc + _plain(s[k:]).encode())
    if r == 3:  # non-ASCII, valid UTF-8
        k = rng.randrange(len(s) + 1)
        return Str(s[:k] + rng.choice(("\u00e9", "\u4e2d", "\U0001f600", "\u0130", "\u212a", "\u00a0")) + s[k:])
    if r == 4:  # raw control or invalid UTF-8 bytes inside the quotes
        k = rng.randrange(len(s) + 1)
        bad = rng.choice((b"\x01", b"\x1f", b"\x7f", b"\x80", b"\xc3", b"\xff", b"\xed\xa0\x80", b"\t", b"\n"))
        return Str(s, _plain(s[:k]).encode() + bad + _plain(s[k:]).encode())
    return Str(s.lower() if rng.random() < 0.5 else s.upper())


def _plain(s: str) -> str:
    return orjson.dumps(s).decode()[1:-1]


def _is_decimal_str(n: Node) -> bool:
    return type(n) is Str and n.raw is None and bool(n.s) and n.s[0].isdigit()


class Mutator:
    """Mutated messages from a corpus of seeds, reproducible from the rng."""

    def __init__(self, rng: random.Random, corpus: dict[str, list[bytes]]) -> None:
        self.rng = rng
        self.cats = sorted(corpus)
        self.corpus = corpus
        self._cw = [_KIND_WEIGHT.get(c.split(":")[1], 1.0) for c in self.cats]
        self.tree_ops: list[tuple[Callable[[Node], Node], int]] = [
            (self.m_decimal, 18), (self.m_int, 8), (self.m_type, 8), (self.m_drop_key, 5), (self.m_dup_key, 5),
            (self.m_order, 4), (self.m_rename_key, 4), (self.m_add_key, 5), (self.m_escape, 6), (self.m_symbol, 5),
            (self.m_event, 5), (self.m_wrapper, 6), (self.m_levels, 10), (self.m_splice, 3)]
        self.byte_ops: list[tuple[Callable[[bytes], bytes], int]] = [
            (self.b_flip, 4), (self.b_set, 4), (self.b_insert, 4), (self.b_delete, 4), (self.b_truncate, 3),
            (self.b_dup, 2), (self.b_swap, 1), (self.b_digit, 8), (self.b_edges, 2), (self.b_splice, 1)]
        self._tw = [w for _, w in self.tree_ops]
        self._bw = [w for _, w in self.byte_ops]

    # -- drivers ---------------------------------------------------------------------------------------------
    def seed(self) -> bytes:
        cat = self.rng.choices(self.cats, self._cw)[0]
        return self.rng.choice(self.corpus[cat])

    def mutate(self) -> bytes:
        rng = self.rng
        raw = self.seed()
        r = rng.random()
        if r < 0.02:
            return raw  # the seed as it is: the baseline must agree too
        if r < 0.80:
            tree = to_tree(orjson.loads(raw))
            for op in rng.choices([o for o, _ in self.tree_ops], self._tw, k=1 + int(rng.expovariate(1.2))):
                tree = op(tree)
            ws = 0.0
            if rng.random() < 0.12:
                ws = rng.choice((0.05, 0.2, 0.6))
            raw = Emitter(rng, ws, bad_ws=rng.random() < 0.3).emit(tree)
            if rng.random() > 0.25:
                return raw
        for op in rng.choices([o for o, _ in self.byte_ops], self._bw, k=1 + int(rng.expovariate(1.0))):
            raw = op(raw)
        return raw

    # -- tree mutations --------------------------------------------------------------------------------------
    def _pick_slot(self, tree: Node, want: Callable[[Node], bool] | None = None) -> tuple[list, int, bool] | None:
        s = slots(tree, [])
        if want is not None:
            s = [x for x in s if want(get(x))]
        return self.rng.choice(s) if s else None

    def m_decimal(self, tree: Node) -> Node:
        slot = self._pick_slot(tree, _is_decimal_str) or self._pick_slot(tree, lambda n: type(n) is Str)
        if slot is not None:
            put(slot, Str(weird_decimal(self.rng, get(slot).s)))
        return tree

    def m_int(self, tree: Node) -> Node:
        slot = self._pick_slot(tree, lambda n: type(n) is Tok)
        if slot is not None:
            put(slot, Tok(weird_int(self.rng)))
        return tree

    def m_type(self, tree: Node) -> Node:
        slot = self._pick_slot(tree)
        if slot is not None:
            put(slot, random_value(self.rng, get(slot)))
        return tree

    def m_drop_key(self, tree: Node) -> Node:
        obs = [o for o in objects(tree, []) if o.items]
        if obs:
            o = self.rng.choice(obs)
            del o.items[self.rng.randrange(len(o.items))]
        return tree

    def m_dup_key(self, tree: Node) -> Node:
        obs = [o for o in objects(tree, []) if o.items]
        if obs:
            o = self.rng.choice(obs)
            k, v = o.items[self.rng.randrange(len(o.items))]
            if self.rng.random() < 0.5:
                v = random_value(self.rng, v) if self.rng.random() < 0.5 else Str(weird_decimal(self.rng, "1.5"))
            o.items.insert(self.rng.randrange(len(o.items) + 1), [k, v])
        return tree

    def m_order(self, tree: Node) -> Node:
        obs = [o for o in objects(tree, []) if len(o.items) > 1]
        if obs:
            o = self.rng.choice(obs)
            if self.rng.random() < 0.5:
                self.rng.shuffle(o.items)
            else:
                o.items.reverse()
        return tree

    def m_rename_key(self, tree: Node) -> Node:
        obs = [o for o in objects(tree, []) if o.items]
        if obs:
            it = self.rng.choice(self.rng.choice(obs).items)
            k = it[0].s
            r = self.rng.random()
            it[0] = Str(k.swapcase() if r < 0.3 else self.rng.choice(_KEYS)) if r < 0.8 else escaped(self.rng, k)
        return tree

    def m_add_key(self, tree: Node) -> Node:
        obs = objects(tree, [])
        if obs:
            o = self.rng.choice(obs)
            k = self.rng.choice(_KEYS)
            v = self.rng.choice((Tok(b"1"), Str("BTCUSD"), Tok(b"null"), Tok(b"true"), Tok(b"1.5"), [], Obj([]),
                                 Str("x\u00e9"), Str("a\\b"), Tok(weird_int(self.rng))))
            o.items.insert(self.rng.randrange(len(o.items) + 1), [Str(k), v])
        return tree

    def m_escape(self, tree: Node) -> Node:
        slot = self._pick_slot(tree, lambda n: type(n) is Str and n.raw is None)
        if slot is not None and self.rng.random() < 0.8:
            put(slot, escaped(self.rng, get(slot).s))
        else:  # a key instead
            obs = [o for o in objects(tree, []) if o.items]
            if obs:
                it = self.rng.choice(self.rng.choice(obs).items)
                if it[0].raw is None:
                    it[0] = escaped(self.rng, it[0].s)
        return tree

    def _key_slots(self, tree: Node, names: Iterable[str]) -> list[list]:
        names = set(names)
        return [it for o in objects(tree, []) for it in o.items if type(it[0]) is Str and it[0].s in names]

    def m_symbol(self, tree: Node) -> Node:
        its = self._key_slots(tree, ("s", "stream"))
        if its:
            it = self.rng.choice(its)
            name = self.rng.choice(_SYMBOLS)
            if it[0].s == "stream":
                name = name.lower() + self.rng.choice(("@depthSnapshot", "@depth", "@trade", ""))
            it[1] = Str(name)
        return tree

    def m_event(self, tree: Node) -> Node:
        its = self._key_slots(tree, ("e",))
        r = self.rng.random()
        if its and r < 0.8:
            self.rng.choice(its)[1] = Str(self.rng.choice(_EVENTS)) if r < 0.7 else random_value(self.rng)
        elif its:
            for o in objects(tree, []):
                o.items = [it for it in o.items if not (type(it[0]) is Str and it[0].s == "e")]
        else:
            obs = objects(tree, [])
            o = obs[-1] if obs else None
            if o is not None:
                o.items.insert(self.rng.randrange(len(o.items) + 1), [Str("e"), Str(self.rng.choice(_EVENTS[:4]))])
        return tree

    def m_wrapper(self, tree: Node) -> Node:
        rng = self.rng
        wrapped = type(tree) is Obj and any(type(k) is Str and k.s == "data" for k, _ in tree.items)
        r = rng.randrange(8)
        if r == 0 and wrapped:  # unwrap
            for k, v in tree.items:
                if type(k) is Str and k.s == "data":
                    return v
        if r == 1:  # wrap (again)
            return Obj([[Str("stream"), Str(rng.choice(_STREAMS))], [Str("data"), tree]])
        if r == 2:  # data first
            return Obj([[Str("data"), tree], [Str("stream"), Str(rng.choice(_STREAMS))]])
        if r == 3 and type(tree) is Obj:  # an extra key in the wrapper
            tree.items.insert(rng.randrange(len(tree.items) + 1), [Str(rng.choice(("id", "result", "x", "stream"))),
                                                                   Tok(b"1")])
            return tree
        if r == 4 and wrapped:  # stream of another type, or another stream name
            for it in tree.items:
                if type(it[0]) is Str and it[0].s == "stream":
                    it[1] = random_value(rng) if rng.random() < 0.5 else Str(rng.choice(_STREAMS))
            return tree
        if r == 5 and wrapped:  # data of another type
            for it in tree.items:
                if type(it[0]) is Str and it[0].s == "data":
                    it[1] = random_value(rng, it[1])
            return tree
        if r == 6:
            return [tree] if rng.random() < 0.5 else Obj([[Str("data"), tree]])
        return Obj([[Str("stream"), Str(rng.choice(_STREAMS))], [Str("data"), Obj([[Str("data"), tree],
                                                                                     [Str("stream"), Str("x")]])]])

    def m_levels(self, tree: Node) -> Node:
        rng = self.rng
        arrs = level_arrays(tree, [])
        if not arrs:
            return self.m_type(tree)
        arr = rng.choice(arrs)
        r = rng.randrange(12)
        if r == 0:
            arr.clear()
        elif r == 1:  # huge: hundreds to thousands of levels (past the fast path's 1,024 scratch rows)
            n = rng.choice((rng.randrange(60, 600), rng.randrange(1000, 1100), rng.randrange(1100, 4000)))
            base = rng.randrange(1, 100000)
            arr[:] = [[Str(f"{base + k}.{k % 100:02d}"), Str(f"{k % 7}.{k % 1000:03d}")] for k in range(n)]
            if rng.random() < 0.3:
                arr[rng.randrange(n)][rng.randrange(2)] = Str(weird_decimal(rng, "1.5"))
        elif r == 2 and arr:
            arr.insert(rng.randrange(len(arr) + 1), rng.choice(arr))
        elif r == 3 and arr:
            del arr[rng.randrange(len(arr))]
        elif r == 4 and arr:  # a level of 0, 1, 3 elements
            lv = rng.choice(arr)
            if type(lv) is list:
                k = rng.randrange(4)
                lv[:] = lv[:1] if k == 0 else [] if k == 1 else [*lv, Str("1")] if k == 2 else [*lv, Tok(b"1")]
        elif r == 5 and arr:  # a level that is a string, number, object or nested array
            k = rng.randrange(len(arr))
            arr[k] = rng.choice((Str("12"), Str("1.52"), Str(""), Tok(b"12"), Obj([]), [arr[k]], Tok(b"null")))
        elif r == 6 and arr:  # a price / size of another type
            lv = rng.choice(arr)
            if type(lv) is list and lv:
                lv[rng.randrange(len(lv))] = random_value(rng, lv[0])
        elif r == 7:  # levels array of another type
            arr[:] = []
            for o in objects(tree, []):
                for it in o.items:
                    if it[1] is arr:
                        it[1] = rng.choice((Str("ab"), Str(""), Str("12"), Obj([]), Tok(b"null"), Tok(b"5"),
                                            Obj([[Str("1"), Str("2")]])))
        elif r == 8 and arr:  # a decimal of a level
            lv = rng.choice(arr)
            if type(lv) is list and lv:
                k = rng.randrange(len(lv))
                lv[k] = Str(weird_decimal(rng, lv[k].s if type(lv[k]) is Str else "1"))
        elif r == 9:  # swap the sides, or duplicate one side under the other key
            for o in objects(tree, []):
                keys = [it for it in o.items if type(it[0]) is Str and it[0].s in ("b", "a", "bids", "asks")]
                if len(keys) == 2:
                    keys[0][1], keys[1][1] = keys[1][1], keys[0][1]
        elif r == 10 and arr:  # many copies of one level (the same price repeated)
            arr.extend([arr[0]] * rng.randrange(1, 80))
        else:
            arr[:] = [[Str(weird_decimal(rng, "61800.20")), Str(weird_decimal(rng, "0.5"))] for _ in range(3)]
        return tree

    def m_splice(self, tree: Node) -> Node:
        other = to_tree(orjson.loads(self.seed()))
        src = slots(other, [])
        slot = self._pick_slot(tree)
        if src and slot is not None:
            put(slot, get(self.rng.choice(src)))
        return tree

    # -- byte mutations ----------------------------------------------------------------------------------------
    def _pos(self, raw: bytes) -> int:
        return self.rng.randrange(len(raw) + 1)

    def b_flip(self, raw: bytes) -> bytes:
        if not raw:
            return raw
        k = self.rng.randrange(len(raw))
        return raw[:k] + bytes([raw[k] ^ (1 << self.rng.randrange(8))]) + raw[k + 1:]

    def b_set(self, raw: bytes) -> bytes:
        if not raw:
            return raw
        k = self.rng.randrange(len(raw))
        return raw[:k] + bytes([self.rng.choice(_INTERESTING_BYTES)]) + raw[k + 1:]

    def b_insert(self, raw: bytes) -> bytes:
        k = self._pos(raw)
        if self.rng.random() < 0.7:
            ins = bytes(self.rng.choice(_INTERESTING_BYTES) for _ in range(self.rng.randrange(1, 4)))
        else:
            ins = self.rng.randbytes(self.rng.randrange(1, 8))
        return raw[:k] + ins + raw[k:]

    def b_delete(self, raw: bytes) -> bytes:
        k = self._pos(raw)
        return raw[:k] + raw[k + self.rng.randrange(1, 9):]

    def b_truncate(self, raw: bytes) -> bytes:
        return raw[:self._pos(raw)]

    def b_dup(self, raw: bytes) -> bytes:
        a = self._pos(raw)
        b = min(len(raw), a + self.rng.randrange(1, 40))
        return raw[:b] + raw[a:b] + raw[b:]

    def b_swap(self, raw: bytes) -> bytes:
        a, b = sorted((self._pos(raw), self._pos(raw)))
        c = min(b, a + self.rng.randrange(1, 20))
        d = min(len(raw), b + (c - a))
        return raw[:a] + raw[b:d] + raw[c:b] + raw[a:c] + raw[d:]

    def b_digit(self, raw: bytes) -> bytes:
        # structure kept, a value changed: the case where only a correct decoder gets the record right
        idx = [m.start() for m in re.finditer(rb"[0-9]", raw)]
        if not idx:
            return self.b_set(raw)
        k = self.rng.choice(idx)
        return raw[:k] + bytes([self.rng.choice(b"0123456789.-e")]) + raw[k + 1:]

    def b_edges(self, raw: bytes) -> bytes:
        r = self.rng.randrange(6)
        if r == 0:
            return b"\xef\xbb\xbf" + raw  # BOM
        if r == 1:
            return raw + self.rng.choice((b" ", b"\n", b"x", b"{}", b"}", b"]", b"\x00", b",", b"\r\n"))
        if r == 2:
            return self.rng.choice((b" ", b"\n", b"\t", b"x", b"[")) + raw
        if r == 3:
            return raw.replace(b'"', b"'", 1)
        if r == 4:
            return raw.replace(b"],[", b"] , [").replace(b'","', b'" , "')
        return raw.replace(b'":', b'":' + self.rng.choice((b" ", b"\t", b"\n", b"\x0b")))

    def b_splice(self, raw: bytes) -> bytes:
        other = self.seed()
        return raw[:self._pos(raw)] + other[self.rng.randrange(len(other) + 1):]


# ---------------------------------------------------------------------------------------------------------------
# independent decoding: what a message must give, from the parser's documented contract
#: parse_fixed's documented limits: int64 holds 19 digits, and at most 32 characters with a '.'.
_REF_MAX_INT_LEN = 19
_REF_MAX_LEN = 32
_DEC_RE = re.compile(r"[0-9]+(\.[0-9]+)?")


class Bad(Exception):
    """The message is malformed: the parser must refuse it (no records)."""


@dataclass
class Expect:
    """What the independent decoding says: `kind` is "json" (ERR_JSON), "unknown" (an event type the parser
    skips), "bad" (malformed: an error code), or "records" with `recs` (symbol name, kind, flags, price,
    qty, price2, qty2, first_id, last_id, prev_id, exch_ts_ms, market) per record."""

    kind: str
    why: str = ""
    symbol: str | None = None
    recs: list[tuple] = field(default_factory=list)


class Reference:
    """Independent decoder (orjson for JSON, `decimal` for numbers)."""

    def __init__(self) -> None:
        self._dec: dict[str, int | None] = {}

    def fixed(self, s: object) -> int:
        """Decimal string → exact value × 1e8 (raises Bad)."""
        if type(s) is not str:
            raise Bad("price/qty not a string")
        v = self._dec.get(s, 0)
        if v == 0 and s not in self._dec:
            v = self._fixed(s)
            if len(self._dec) > 200_000:
                self._dec.clear()
            self._dec[s] = v
        if v is None:
            raise Bad(f"bad decimal {s!r}")
        return v

    @staticmethod
    def _fixed(s: str) -> int | None:
        if not s.isascii() or not _DEC_RE.fullmatch(s):
            return None
        if "." not in s and len(s) > _REF_MAX_INT_LEN:
            return None
        if "." in s and len(s) > _REF_MAX_LEN:
            return None
        try:
            num, den = Decimal(s).as_integer_ratio()
        except InvalidOperation:
            return None
        v, rem = divmod(num * 10**8, den)
        if rem or v > _I64_MAX:
            return None  # not exact at 1e-8, or beyond int64
        return v

    @staticmethod
    def i64(v: object, what: str) -> int:
        if type(v) is not int or not _I64_MIN <= v <= _I64_MAX:
            raise Bad(f"{what} not an int64: {v!r}")
        return v

    @staticmethod
    def symbol(v: object) -> str:
        if type(v) is not str or not v:
            raise Bad(f"symbol not a non-empty string: {v!r}")
        return v

    def levels(self, v: object, what: str) -> list[tuple[int, int]]:
        if type(v) is not list:
            raise Bad(f"{what} not an array")
        out = []
        for lv in v:
            if type(lv) is not list or len(lv) != 2:
                raise Bad(f"{what} level not [price, qty]: {lv!r}")
            out.append((self.fixed(lv[0]), self.fixed(lv[1])))
        return out

    def expect(self, raw: bytes, only_symbol: str | None, bare_symbol: str | None) -> Expect:
        """What `raw` must give; `only_symbol` is the table's symbol if it holds exactly one (bare snapshots)."""
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return Expect("json", "not JSON")
        if type(obj) is not dict:
            return Expect("json", "not an object")
        stream = None
        data = obj.get("data")
        if data is not None and "stream" in obj:  # the combined-stream wrapper
            stream = obj["stream"]
            if type(stream) is not str or type(data) is not dict:
                return Expect("bad", "wrapper of wrong types")
        else:
            data = obj
        e = data.get("e")
        try:
            if e == "depthUpdate":
                return self.depth(data)
            if e == "bookTicker" or (e is None and "u" in data and "b" in data and "A" in data):
                return self.ticker(data)
            if e in ("trade", "aggTrade"):
                return self.trade(data, e)
            if e is None and "lastUpdateId" in data and (stream is None or stream.endswith("@depthSnapshot")):
                return self.snapshot(data, stream, only_symbol, bare_symbol)
        except Bad as ex:
            sym = data.get("s") if e is not None or "lastUpdateId" not in data else None
            return Expect("bad", str(ex), symbol=sym if type(sym) is str else None)
        return Expect("unknown", f"event {e!r}")

    def depth(self, d: dict) -> Expect:
        sym = d.get("s")
        for k in ("s", "U", "u", "E", "b", "a"):
            if k not in d:
                raise Bad(f"no {k}")
        sym = self.symbol(d["s"])
        first = self.i64(d["U"], "U")
        last = self.i64(d["u"], "u")
        ets = self.i64(d["E"], "E")
        pu = d.get("pu")
        if pu is None:
            market, pu = MARKET_SPOT, -1  # spot sends no pu (a null pu counts as none, as documented)
        else:
            pu = self.i64(pu, "pu")
            market = MARKET_COINM if "ps" in d else MARKET_USDM
        bids = self.levels(d["b"], "b")
        asks = self.levels(d["a"], "a")
        n = len(bids) + len(asks)
        if n == 0:
            rec = (sym, KIND_DEPTH_EMPTY, FLAG_LAST_IN_MESSAGE, 0, 0, 0, 0, first, last, pu, ets, market)
            return Expect("records", symbol=sym, recs=[rec])
        recs = []
        for side, lvs in ((0, bids), (FLAG_ASK, asks)):
            for p, q in lvs:
                flags = side | (FLAG_LAST_IN_MESSAGE if len(recs) == n - 1 else 0)
                recs.append((sym, KIND_DEPTH, flags, p, q, 0, 0, first, last, pu, ets, market))
        return Expect("records", symbol=sym, recs=recs)

    def ticker(self, d: dict) -> Expect:
        for k in ("s", "u", "b", "B", "a", "A"):
            if k not in d:
                raise Bad(f"no {k}")
        sym = self.symbol(d["s"])
        last = self.i64(d["u"], "u")
        bp, bq, ap, aq = (self.fixed(d[k]) for k in ("b", "B", "a", "A"))
        if "E" in d:
            ets = self.i64(d["E"], "E")
            market = MARKET_COINM if "ps" in d else MARKET_USDM
        else:
            ets, market = 0, MARKET_SPOT
        return Expect("records", symbol=sym, recs=[(sym, KIND_TICKER, FLAG_LAST_IN_MESSAGE, bp, bq, ap, aq, -1, last,
                                                    -1, ets, market)])

    def trade(self, d: dict, e: str) -> Expect:
        idk = "t" if e == "trade" else "a"
        for k in ("s", "p", "q", idk, "m", "E"):
            if k not in d:
                raise Bad(f"no {k}")
        sym = self.symbol(d["s"])
        p = self.fixed(d["p"])
        q = self.fixed(d["q"])
        first = last = self.i64(d[idk], idk)
        if e == "aggTrade" and "l" in d:
            last = self.i64(d["l"], "l")
        if type(d["m"]) is not bool:
            raise Bad(f"m not a boolean: {d['m']!r}")
        flags = FLAG_LAST_IN_MESSAGE | (FLAG_BUYER_MAKER if d["m"] else 0)
        ets = self.i64(d["E"], "E")
        market = MARKET_COINM if "ps" in d else MARKET_SPOT if "M" in d else MARKET_USDM
        return Expect("records", symbol=sym, recs=[(sym, KIND_TRADE, flags, p, q, 0, 0, first, last, -1, ets, market)])

    def snapshot(self, d: dict, stream: str | None, only_symbol: str | None, bare_symbol: str | None) -> Expect:
        if stream is not None:
            sym = stream[:-len("@depthSnapshot")]
        elif bare_symbol is not None:
            sym = bare_symbol
        elif only_symbol is not None:
            sym = only_symbol
        else:
            raise Bad("bare snapshot, symbol unknown")
        sym = self.symbol(sym)
        for k in ("lastUpdateId", "bids", "asks"):
            if k not in d:
                raise Bad(f"no {k}")
        last = self.i64(d["lastUpdateId"], "lastUpdateId")
        ets = self.i64(d["E"], "E") if "E" in d else 0
        market = MARKET_COINM if "pair" in d else MARKET_USDM if ("E" in d or "T" in d) else MARKET_SPOT
        lvs = [(0, p, q) for p, q in self.levels(d["bids"], "bids")] + \
              [(FLAG_ASK, p, q) for p, q in self.levels(d["asks"], "asks")]
        if not lvs:
            return Expect("records", symbol=sym, recs=[(sym, KIND_SNAPSHOT, FLAG_SNAPSHOT_BEGIN | FLAG_SNAPSHOT_END
                                                        | FLAG_LAST_IN_MESSAGE, 0, 0, 0, 0, -1, last, -1, ets, market)])
        recs = []
        for k, (side, p, q) in enumerate(lvs):
            flags = side | (FLAG_SNAPSHOT_BEGIN if k == 0 else 0)
            if k == len(lvs) - 1:
                flags |= FLAG_SNAPSHOT_END | FLAG_LAST_IN_MESSAGE
            recs.append((sym, KIND_SNAPSHOT, flags, p, q, 0, 0, -1, last, -1, ets, market))
        return Expect("records", symbol=sym, recs=recs)


# ---------------------------------------------------------------------------------------------------------------
# the harness: two parsers, identical garbage arrays, the oracle
def garbage(n: int, seed: int = 1) -> np.ndarray:
    """An output array of `n` records full of arbitrary (seeded) bytes."""
    out = np.zeros(n, MARKET.dtype)
    out.view(np.uint8)[:] = np.random.default_rng(seed).integers(0, 256, out.nbytes, dtype=np.uint8)
    return out


def make_parsers(config: str, fast: bool) -> Parser:
    """A parser in one of the CONFIGS: auto-add symbols / a fixed table without auto-add / a table of 4 /
    a bare-snapshot symbol / a seq near 2**63 (the kernel's int64 boundary)."""
    if config == "fixed":
        names = ["BTCUSDT", "NKNUSDT", "BLZETH", "LRCBTC", "RUNEEUR", "SUSHIUSDT", "AKROUSDT", "KEEPUSDT", "CTKUSDT",
                 "ETHUSDT"]
        return Parser(SymbolTable(names, auto_add=False), fast=fast)
    if config == "tiny":
        return Parser(SymbolTable(max_symbols=4), fast=fast)
    if config == "bare":
        return Parser(SymbolTable(), bare_symbol="btcusdt", fast=fast)
    if config == "highseq":
        return Parser(SymbolTable(), first_seq=_HIGH_SEQ, fast=fast)
    return Parser(SymbolTable(), fast=fast)


Factory = Callable[[str, bool], Parser]


@dataclass
class Problem:
    """One disagreement: what differed, and the case to reproduce it."""

    what: str
    detail: str
    raw: bytes
    start: int
    t0: int
    config: str
    seq: int
    names: list[str]
    index: int


_RC_NAMES = {ERR_JSON: "ERR_JSON", ERR_FIELD: "ERR_FIELD", ERR_NUMBER: "ERR_NUMBER", ERR_NO_SPACE: "ERR_NO_SPACE"}


class Harness:
    """Feeds one message to both parsers and checks them against each other and the reference."""

    def __init__(self, config: str = "auto", factory: Factory = make_parsers) -> None:
        self.config = config
        self.fast = factory(config, True)
        self.slow = factory(config, False)
        self.outs = {SMALL_OUT: (garbage(SMALL_OUT), garbage(SMALL_OUT)), BIG_OUT: (garbage(BIG_OUT), garbage(BIG_OUT))}
        self.ref = Reference()
        self.last_fast = NOT_HANDLED
        fd = self.fast._fast
        if fd is not None:  # see what the kernel answered (NOT_HANDLED: the orjson path ran)
            for method in ("depth", "tick"):
                setattr(fd, method, self._spy(getattr(fd, method)))

    def _spy(self, inner: Callable[..., int]) -> Callable[..., int]:
        def spy(*args: object) -> int:
            n = inner(*args)
            self.last_fast = n
            return n

        return spy

    def check(self, raw: bytes, t0: int, start: int, index: int = 0) -> tuple[str, bool, Problem | None]:
        """→ (outcome label, fast path answered, the first problem found or None)."""
        size = BIG_OUT if raw.count(b"[") > SMALL_OUT - 8 else SMALL_OUT
        of, os_ = self.outs[size]
        if start < 0:
            start = size + 1 + start  # counted from the end: -1 is len(out), no room at all
        fast, slow = self.fast, self.slow
        if self.config == "highseq" and slow.seq > _HIGH_SEQ + 200:
            fast.seq = slow.seq = _HIGH_SEQ  # back below 2**63, where the fast path runs again
        seq0 = slow.seq
        n_names = len(slow.symbols.names)  # names are only appended: names[:n_names] is the table before
        c0 = list(slow.counters)
        self.last_fast = NOT_HANDLED

        def problem(what: str, detail: str) -> Problem:
            return Problem(what, detail, raw, start, t0, self.config, seq0, slow.symbols.names[:n_names], index)

        try:
            a = fast.parse(raw, t0, of, start)
        except Exception as ex:  # nothing may escape Parser.parse
            return "exception", False, problem("exception:fast", repr(ex))
        answered = self.last_fast != NOT_HANDLED
        try:
            b = slow.parse(raw, t0, os_, start)
        except Exception as ex:
            return "exception", answered, problem("exception:orjson", repr(ex))
        label = _label(b, slow.counters, c0)
        if a != b:
            return label, answered, problem("rc", f"fast={a} orjson={b}")
        if of.tobytes() != os_.tobytes():
            diff = np.flatnonzero(of != os_)
            return label, answered, problem("bytes", f"records differ at {diff[:8].tolist()}: fast={of[diff[:1]]} "
                                                     f"orjson={os_[diff[:1]]}")
        if fast.counters != slow.counters or fast.seq != slow.seq:
            return label, answered, problem("counters", f"fast={fast.counters}/{fast.seq} "
                                                        f"orjson={slow.counters}/{slow.seq}")
        only = slow.symbols.names[0] if n_names == 1 else None
        detail = self._against_reference(raw, b, start, size, seq0, only, c0, t0)
        if detail is not None:
            return label, answered, problem("reference", detail)
        return label, answered, None

    def _against_reference(self, raw: bytes, rc: int, start: int, size: int, seq0: int, only: str | None,
                           c0: list[int], t0: int) -> str | None:
        ex = self.ref.expect(raw, only, self.slow.bare_symbol)
        c = self.slow.counters
        if ex.kind == "json" or rc == ERR_JSON:
            return None if (ex.kind == "json") == (rc == ERR_JSON) else f"rc={rc} but reference: {ex.kind} {ex.why}"
        if ex.kind == "unknown" or (rc == 0 and c[PC_UNKNOWN_TYPE] != c0[PC_UNKNOWN_TYPE]):
            ok = ex.kind == "unknown" and rc == 0 and c[PC_UNKNOWN_TYPE] == c0[PC_UNKNOWN_TYPE] + 1
            return None if ok else f"rc={rc} but reference: {ex.kind} {ex.why}"
        if rc == 0:  # the symbol was refused: it must be new to a table that cannot take it
            tab = self.slow.symbols
            if c[PC_UNKNOWN_SYMBOL] != c0[PC_UNKNOWN_SYMBOL] + 1:
                return "rc=0 without an unknown symbol counted"
            takes = tab.auto_add and len(tab) < tab.max_symbols
            if ex.symbol is not None and (ex.symbol.upper() in tab.names or takes):
                return f"symbol {ex.symbol!r} refused though the table takes it"
            return None
        if ex.kind == "bad":
            if rc > 0:
                return f"wrote {rc} records for a malformed message ({ex.why})"
            return None
        n = len(ex.recs)
        if rc == ERR_NO_SPACE:
            return None if start + n > size else f"ERR_NO_SPACE with room for {n} at {start} of {size}"
        if seq0 + n > _U64:
            return None if rc < 0 else "seq beyond uint64 written"
        if rc != n:
            return f"rc={rc}, reference: {n} records"
        got = self.outs[size][1][start:start + n]
        names = self.slow.symbols.names
        for k, (want, r) in enumerate(zip(ex.recs, got.tolist(), strict=True)):
            seq, t_or, t_pub, sym, kind, flags, p, q, p2, q2, first, last, prev, ets, market = r
            have = (names[sym] if sym < len(names) else f"#{sym}", kind, flags, p, q, p2, q2, first, last, prev, ets,
                    market)
            want = (want[0].upper(), *want[1:])
            if have != want or seq != seq0 + k or t_or != t0 or t_pub != 0:
                return f"record {k}: got {have} seq={seq} t0={t_or} t_pub={t_pub}; reference {want} seq={seq0 + k}"
        return None


def _label(rc: int, c: list[int], c0: list[int]) -> str:
    if rc > 0:
        return "records"
    if rc == 0:
        return "unknown_type" if c[PC_UNKNOWN_TYPE] != c0[PC_UNKNOWN_TYPE] else "unknown_symbol"
    return _RC_NAMES.get(rc, f"rc{rc}")


# ---------------------------------------------------------------------------------------------------------------
# corpus, run, report
def load_corpus(data_dir: Path = DATA_DIR, sim_seconds: float = 5.0) -> dict[str, list[bytes]]:
    """Seed messages by category (one category per event kind and market, so rare kinds get picked too)."""
    corpus: dict[str, list[bytes]] = {}
    for name in CAPTURES:
        path = data_dir / name
        if not path.is_file():
            continue
        for _, raw in read_capture(path):
            _add_seed(corpus, name.split("_")[0], raw)
    if sim_seconds > 0:
        from procs.sources.simulator import SimParams, Simulator

        sim = Simulator(SimParams(["BTCUSDT", "ETHUSDT", "nknusdt"], seed=3, anomalies_per_min=6))
        end = sim.base_ns + int(sim_seconds * 1e9)
        for ts, raw in sim.messages():
            if ts >= end:
                break
            _add_seed(corpus, "sim", raw)
    if not corpus:
        raise FileNotFoundError(f"no seed messages: no capture in {data_dir} and no simulator")
    return corpus


def _add_seed(corpus: dict[str, list[bytes]], source: str, raw: bytes) -> None:
    o = orjson.loads(raw)
    d = o.get("data", o)
    kind = d.get("e") or ("snapshot" if "lastUpdateId" in d else "bookTicker")
    if kind == "snapshot":
        # whole snapshots (1,000+ levels a side) kept under their own rare category; a 20-level cut for the rest
        corpus.setdefault(f"{source}:snapshot_full", []).append(raw)
        d["bids"], d["asks"] = d["bids"][:20], d["asks"][:20]
        raw = orjson.dumps(o)
    corpus.setdefault(f"{source}:{kind}", []).append(raw)


@dataclass
class Result:
    n: int
    seconds: float
    outcomes: dict[str, int]
    fast_answered: int
    problems: int
    first: list[Problem]


def run(n: int, seed: int = 0, *, corpus: dict[str, list[bytes]] | None = None, rotate: int = 25_000,
        progress_s: float = 5.0, keep: int = 10, factory: Factory = make_parsers,
        log: Callable[[str], None] | None = None) -> Result:
    """Fuzz `n` mutated messages; the parser pair is renewed every `rotate` cases, cycling CONFIGS."""
    rng = random.Random(seed)
    corpus = corpus if corpus is not None else load_corpus()
    mut = Mutator(rng, corpus)
    outcomes: dict[str, int] = {}
    answered = problems = 0
    first: list[Problem] = []
    harness = None
    t_start = time.perf_counter()
    t_next = t_start + progress_s
    for i in range(n):
        if i % rotate == 0 or harness is None:
            harness = Harness(CONFIGS[(i // rotate) % len(CONFIGS)], factory)
        raw = mut.mutate()
        r = rng.random()
        # mostly at 0; else anywhere in the small array, or 0-3 records from the end of either (no room)
        start = 0 if r < 0.6 else rng.randrange(SMALL_OUT // 2) if r < 0.8 else -rng.randrange(1, 5)
        t0 = rng.randrange(1 << 63) if rng.random() < 0.5 else 1_723_161_255_088_187_867
        label, fast_ok, prob = harness.check(raw, t0, start, i)
        outcomes[label] = outcomes.get(label, 0) + 1
        answered += fast_ok
        if prob is not None:
            problems += 1
            if len(first) < keep:
                first.append(prob)
            harness = Harness(harness.config, factory)  # a fresh pair: one disagreement must not cascade
        if log is not None and time.perf_counter() >= t_next:
            dt = time.perf_counter() - t_start
            log(f"[{dt:7.1f}s] {i + 1:>10,}/{n:,}  {(i + 1) / dt:8,.0f}/s  records {outcomes.get('records', 0):,}  "
                f"fast path {answered:,}  problems {problems}")
            t_next += progress_s
    return Result(n, time.perf_counter() - t_start, outcomes, answered, problems, first)


def save(problems: list[Problem], directory: Path) -> list[Path]:
    """Each problem as <k>.raw (the mutated bytes) + <k>.json (the case), for --replay."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, p in enumerate(problems):
        base = directory / f"case{k:03d}"
        base.with_suffix(".raw").write_bytes(p.raw)
        meta = {"what": p.what, "detail": p.detail, "start": p.start, "t0": p.t0, "config": p.config, "seq": p.seq,
                "names": p.names, "index": p.index}
        base.with_suffix(".json").write_text(json.dumps(meta, indent=1))
        paths.append(base.with_suffix(".raw"))
    return paths


def replay(directory: Path, factory: Factory = make_parsers) -> list[tuple[Path, Problem | None]]:
    """Re-check saved cases on fresh parsers restored to the saved symbol table and seq."""
    out = []
    for raw_path in sorted(directory.glob("case*.raw")):
        meta = json.loads(raw_path.with_suffix(".json").read_text())
        h = Harness(meta["config"], factory)
        for p in (h.fast, h.slow):
            for name in meta["names"]:
                p.symbols.add(name)
            p.seq = meta["seq"]
        _, _, prob = h.check(raw_path.read_bytes(), meta["t0"], meta["start"], meta["index"])
        out.append((raw_path, prob))
    return out


def report(res: Result) -> str:
    lines = [f"{res.n:,} mutated messages in {res.seconds:.1f} s ({res.n / max(res.seconds, 1e-9):,.0f}/s)",
             f"fast path answered {res.fast_answered:,} ({100 * res.fast_answered / max(res.n, 1):.1f}%), "
             f"not handled (orjson path) {res.n - res.fast_answered:,}", "outcome (return code):"]
    known = ("records", "unknown_type", "unknown_symbol", "ERR_JSON", "ERR_FIELD", "ERR_NUMBER", "ERR_NO_SPACE",
             "exception")
    for k in (*known, *sorted(set(res.outcomes) - set(known))):
        lines.append(f"  {k:15s} {res.outcomes.get(k, 0):>10,}")
    lines.append(f"disagreements / exceptions: {res.problems}")
    for p in res.first:
        lines.append(f"  #{p.index} {p.what}: {p.detail}\n    start={p.start} config={p.config} raw={p.raw[:300]!r}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="mutated messages (default 100,000)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--progress", type=float, default=5.0, help="seconds between progress lines (default 5)")
    ap.add_argument("--rotate", type=int, default=25_000, help="cases per parser pair (default 25,000)")
    ap.add_argument("--sim-seconds", type=float, default=5.0, help="simulated seconds of seed messages (default 5)")
    ap.add_argument("--keep", type=int, default=10, help="disagreements printed and saved (default 10)")
    ap.add_argument("--save-dir", type=Path, default=None,
                    help="where failing cases go (default: a fuzz_parse-<seed> folder in the temp directory)")
    ap.add_argument("--replay", type=Path, default=None, help="re-check the cases saved in this folder and exit")
    args = ap.parse_args(argv)
    if args.replay is not None:
        bad = 0
        for path, prob in replay(args.replay):
            print(f"{path}: {'OK' if prob is None else f'{prob.what}: {prob.detail}'}")
            bad += prob is not None
        return 1 if bad else 0
    if args.n < 1 or args.rotate < 1:
        ap.error("--n and --rotate must be >= 1")
    corpus = load_corpus(sim_seconds=args.sim_seconds)
    print(f"seeds: {sum(map(len, corpus.values())):,} messages in {len(corpus)} categories "
          f"({', '.join(f'{k} {len(v)}' for k, v in sorted(corpus.items()))})", flush=True)
    res = run(args.n, args.seed, corpus=corpus, rotate=args.rotate, progress_s=args.progress, keep=args.keep,
              log=lambda s: print(s, flush=True))
    print(report(res))
    if res.problems:
        d = args.save_dir or Path(tempfile.gettempdir()) / f"fuzz_parse-{args.seed}"
        save(res.first, d)
        print(f"saved {len(res.first)} cases to {d} (re-check: python scripts/fuzz_parse.py --replay {d})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
