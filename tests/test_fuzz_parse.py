"""The mutation fuzzer of scripts/fuzz_parse.py (fast path == orjson path == an independent decoding) on a few
thousand cases, the full 10^6 under --long, checks that its oracle does catch planted bugs, and regression
tests for the bugs it found in the orjson path."""

from __future__ import annotations

import importlib.util
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
from conftest import shared_data_dir

from procs.kernels.parse_json import (
    ERR_FIELD,
    PC_BAD_FIELD,
    PC_RECORDS,
    Parser,
    SymbolTable,
)
from shm.records import MARKET

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "fuzz_parse.py"


def _load() -> object:
    spec = importlib.util.spec_from_file_location("fuzz_parse", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


fz = _load()


@pytest.fixture(scope="module")
def corpus() -> dict[str, list[bytes]]:
    # the real captures when present (else the simulator's messages alone: the fuzzer still runs)
    return fz.load_corpus(shared_data_dir(), sim_seconds=3.0)


def test_a_few_thousand_mutations_agree(corpus: dict[str, list[bytes]]) -> None:
    res = fz.run(4000, seed=11, corpus=corpus, rotate=800)  # every parser configuration gets a turn
    assert res.problems == 0, fz.report(res)
    # the fuzzer reaches every outcome, and the kernels answer a good share themselves
    for label in ("records", "unknown_type", "unknown_symbol", "ERR_JSON", "ERR_FIELD", "ERR_NUMBER", "ERR_NO_SPACE"):
        assert res.outcomes.get(label, 0) > 0, (label, res.outcomes)
    assert res.fast_answered > 0.15 * res.n, res.fast_answered
    assert sum(res.outcomes.values()) == res.n


def test_the_mutations_are_reproducible_and_varied(corpus: dict[str, list[bytes]]) -> None:
    m1, m2 = fz.Mutator(random.Random(5), corpus), fz.Mutator(random.Random(5), corpus)
    first = [m1.mutate() for _ in range(300)]
    assert first == [m2.mutate() for _ in range(300)]  # a seed replays the same cases
    assert len(set(first)) > 250
    seeds = {raw for msgs in corpus.values() for raw in msgs}
    assert sum(raw not in seeds for raw in first) > 270  # nearly all of them mutated


@pytest.mark.long
def test_a_million_mutations_agree(corpus: dict[str, list[bytes]]) -> None:
    res = fz.run(1_000_000, seed=0, corpus=corpus)
    assert res.problems == 0, fz.report(res)


# -- the oracle catches planted bugs -----------------------------------------------------------------------------
def _fast_path_off_by_one(config: str, fast: bool) -> Parser:
    """A fast parser whose kernel writes a price one unit (1e-8) too high: only the pair comparison can tell."""
    p = fz.make_parsers(config, fast)
    if fast:
        fd = p._fast
        inner = fd.tick

        def tick(raw: bytes, t0: int, out: np.ndarray, start: int, seq: int) -> int:
            n = inner(raw, t0, out, start, seq)
            if n > 0:
                out[start]["price"] += 1
            return n

        fd.tick = tick
    return p


class _RoundingCache(dict):
    """Decimal string → fixed point with the 8th decimal dropped: a wrong rule both parsers would share."""

    def __missing__(self, s: str) -> int:
        from procs.kernels.parse_json import parse_fixed

        v = parse_fixed(s)
        return v - v % 10 if v > 0 else v


def _both_paths_round(config: str, fast: bool) -> Parser:
    p = fz.make_parsers(config, False)  # both sides on the orjson path, both with the same wrong rule
    p._fx = _RoundingCache()
    return p


def test_a_fast_path_bug_is_caught_and_saved(corpus: dict[str, list[bytes]], tmp_path: Path) -> None:
    res = fz.run(600, seed=3, corpus=corpus, factory=_fast_path_off_by_one, keep=3)
    assert res.problems > 20 and {p.what for p in res.first} == {"bytes"}
    fz.save(res.first, tmp_path)
    assert len(list(tmp_path.glob("case*.raw"))) == 3
    replayed = fz.replay(tmp_path, factory=_fast_path_off_by_one)
    assert [p is not None and p.what == "bytes" for _, p in replayed] == [True] * 3  # reproduced from the files
    assert all(p is None for _, p in fz.replay(tmp_path))  # and the real parser is right on them


def test_a_bug_both_paths_share_is_caught_by_the_independent_decoding(corpus: dict[str, list[bytes]]) -> None:
    res = fz.run(600, seed=4, corpus=corpus, factory=_both_paths_round, keep=3)
    assert res.problems > 0 and {p.what for p in res.first} == {"reference"}  # with or without the shared captures
    assert "reference" in res.first[0].detail


def test_an_exception_is_a_problem(corpus: dict[str, list[bytes]]) -> None:
    def raising(config: str, fast: bool) -> Parser:
        p = fz.make_parsers(config, fast)
        if fast:
            p._fast.depth = lambda *a: 1 // 0
        return p

    res = fz.run(300, seed=5, corpus=corpus, factory=raising, keep=1)
    assert res.problems > 0 and res.first[0].what == "exception:fast" and res.outcomes["exception"] == res.problems


def test_the_reference_decodes_exactly() -> None:
    ref = fz.Reference()
    ex = ref.expect(b'{"stream":"x@depth","data":{"e":"depthUpdate","E":5,"s":"btcusdt","U":1,"u":2,"pu":0,'
                    b'"b":[["92233720368.54775807","0.00000001"]],"a":[["1.000000000000","0"]]}}', None, None)
    assert ex.kind == "records" and [r[3:5] for r in ex.recs] == [(2**63 - 1, 1), (10**8, 0)]
    for bad in ("92233720368.54775808", "1.000000001", "1e5", "-1", "", "1.", "\u0661", "0" * 20):
        assert ref.expect(orjson.dumps({"e": "trade", "E": 1, "s": "X", "t": 1, "p": bad, "q": "1", "m": True}),
                          None, None).kind == "bad", bad


def test_cli_runs_and_reports(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, str(SCRIPT), "--n", "1500", "--seed", "2", "--progress", "0.5",
                          "--sim-seconds", "1", "--save-dir", str(tmp_path)], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1,500 mutated messages" in res.stdout and "disagreements / exceptions: 0" in res.stdout
    for label in ("records", "ERR_JSON", "ERR_FIELD", "ERR_NUMBER", "not handled"):
        assert label in res.stdout
    assert not list(tmp_path.iterdir())  # nothing saved when nothing failed


def test_cli_exits_1_and_saves_the_cases_on_a_disagreement(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from procs.kernels import fastparse

    inner = fastparse.FastDepth.tick

    def tick(self: fastparse.FastDepth, raw: bytes, t0: int, out: np.ndarray, start: int, seq: int) -> int:
        n = inner(self, raw, t0, out, start, seq)
        if n > 0:
            out[start]["qty"] ^= 1  # the planted bug: one unit off in the last bit of the size
        return n

    monkeypatch.setattr(fastparse.FastDepth, "tick", tick)
    argv = ["--n", "400", "--seed", "9", "--sim-seconds", "1", "--keep", "2", "--save-dir", str(tmp_path)]
    assert fz.main(argv) == 1
    text = capsys.readouterr().out
    assert "disagreements / exceptions: 0" not in text and f"saved 2 cases to {tmp_path}" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case000.json", "case000.raw", "case001.json",
                                                          "case001.raw"]
    assert fz.main(["--replay", str(tmp_path)]) == 1  # still wrong under the planted bug
    monkeypatch.undo()
    assert fz.main(["--replay", str(tmp_path)]) == 0  # and right without it


# -- regressions: malformed messages the orjson path used to turn into records ---------------------------------
def _trade(**kw: object) -> dict:
    return {"e": "trade", "E": 1_723_161_256_322, "s": "BTCUSDT", "t": 5_266_583_935, "p": "61800.30", "q": "0.006",
            "m": False, **kw}


def _agg(**kw: object) -> dict:
    return {"e": "aggTrade", "E": 1_626_992_741_575, "a": 16_599_292, "s": "BTCUSDT", "p": "1.011", "q": "10",
            "f": 1, "l": 23_961_325, "m": True, **kw}


def _depth(**kw: object) -> dict:
    return {"e": "depthUpdate", "E": 1_700_000_000_123, "s": "BTCUSDT", "U": 100, "u": 105, "pu": 99,
            "b": [["61800.20", "1.5"]], "a": [["61800.30", "0.014"]], **kw}


def _ticker(**kw: object) -> dict:
    return {"e": "bookTicker", "u": 5_123_107_839_020, "s": "BTCUSDT", "b": "61800.20", "B": "2.507",
            "a": "61800.30", "A": "2.510", "E": 1_723_161_256_314, **kw}


def _wrap(d: dict, stream: str = "btcusdt@x") -> bytes:
    return orjson.dumps({"stream": stream, "data": d})


_SNAP = {"lastUpdateId": 5, "bids": [["1.5", "2"]], "asks": [["1.6", "3"]]}

REGRESSIONS = [
    # "m" that is not a boolean: its truthiness set the buyer-maker flag
    *(pytest.param(_wrap(_trade(m=v)), id=f"trade-m-{v!r}") for v in (1, 0, "true", "BTCUSDT", None, [], {}, [False])),
    pytest.param(_wrap(_agg(m=353)), id="agg-m-int"),
    # JSON booleans where an integer id / time goes: struct packed them as 1 / 0
    *(pytest.param(_wrap(_depth(**{k: True})), id=f"depth-{k}-true") for k in ("U", "u", "pu", "E")),
    pytest.param(_wrap(_depth(E=False)), id="depth-E-false"),
    *(pytest.param(_wrap(_trade(**{k: False})), id=f"trade-{k}-false") for k in ("t", "E")),
    *(pytest.param(_wrap(_agg(**{k: True})), id=f"agg-{k}-true") for k in ("a", "l", "E")),
    *(pytest.param(_wrap(_ticker(**{k: True})), id=f"ticker-{k}-true") for k in ("u", "E")),
    pytest.param(_wrap({**_SNAP, "lastUpdateId": True}, "btcusdt@depthSnapshot"), id="snapshot-id-true"),
    pytest.param(_wrap({**_SNAP, "E": False}, "btcusdt@depthSnapshot"), id="snapshot-E-false"),
    # a level that is not [price, qty]: "12" was read as price "1", qty "2"; extra items were ignored
    pytest.param(_wrap(_depth(b=[], a=["12"])), id="depth-level-string"),
    pytest.param(_wrap(_depth(b=[["61800.20", "1.5", "1"]])), id="depth-level-3-items"),
    pytest.param(_wrap(_depth(b=[{"1": 1, "2": 2}, ["61800.20", "1.5"]])), id="depth-level-object"),  # was refused
    pytest.param(_wrap({**_SNAP, "bids": [], "asks": ["60001.87"]}, "btcusdt@depthSnapshot"),
                 id="snapshot-level-string"),
    pytest.param(_wrap({**_SNAP, "bids": [["1.5", "2", 1]]}, "btcusdt@depthSnapshot"), id="snapshot-level-3-items"),
    # a side that is not an array: "" and {} passed for an empty side (an empty update was written)
    *(pytest.param(_wrap(_depth(b=v, a=[])), id=f"depth-side-{v!r}") for v in ("", {}, "12")),  # "12" was refused
    pytest.param(_wrap({**_SNAP, "bids": "", "asks": []}, "btcusdt@depthSnapshot"), id="snapshot-side-string"),
    # an empty symbol: auto-added to the table as a symbol named ""
    pytest.param(_wrap(_depth(s="")), id="depth-empty-symbol"),
    pytest.param(_wrap(_ticker(s="")), id="ticker-empty-symbol"),
    pytest.param(orjson.dumps({k: v for k, v in _ticker(s="").items() if k not in "eE"}), id="spot-ticker-empty"),
    pytest.param(_wrap(_agg(s="")), id="agg-empty-symbol"),
    pytest.param(_wrap(_SNAP, "@depthSnapshot"), id="snapshot-empty-stream-symbol"),
]


@pytest.mark.parametrize("raw", REGRESSIONS)
def test_malformed_fields_are_refused_not_written(raw: bytes) -> None:
    for fast in (True, False):
        p = Parser(SymbolTable(), fast=fast)
        out = np.zeros(8, MARKET.dtype)
        assert p.parse(raw, 7, out, 0) == ERR_FIELD
        assert p.counters[PC_BAD_FIELD] == 1 and p.counters[PC_RECORDS] == 0 and p.seq == 0
        assert not out.view(np.uint8).any() and "" not in p.symbols.names
    res_fast, res_slow = (fz.Harness("auto", fz.make_parsers).check(raw, 7, 0) for _ in range(2))
    assert res_fast[2] is None and res_slow[0] == "ERR_FIELD"  # the fuzzer's oracle agrees


def test_the_well_formed_neighbours_still_parse() -> None:
    p = Parser(SymbolTable())
    out = np.zeros(8, MARKET.dtype)
    for raw, n in ((_wrap(_trade(m=True)), 1), (_wrap(_agg()), 1), (_wrap(_depth()), 2), (_wrap(_ticker()), 1),
                   (_wrap(_depth(b=[], a=[])), 1), (_wrap(_SNAP, "btcusdt@depthSnapshot"), 2),
                   (_wrap(_depth(pu=None)), 2), (_wrap(_depth(U=-1, u=0, E=0)), 2)):
        assert p.parse(raw, 7, out, 0) == n, raw
