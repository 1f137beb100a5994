"""The feed's sync mirror (procs/kernels/sync.py) agrees with the book after every message, whatever the
order of diffs and snapshots: that agreement is what lets a live feed ask for snapshots exactly when the
book stage needs one, without a channel back from the book."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from procs.kernels.book import S_LAST_ID, S_NEED_SNAPSHOT, S_STATUS, ST_LIVE, BookState
from procs.kernels.parse_json import Parser, SymbolTable
from procs.kernels.sync import T_GAPS, T_LAST_ID, T_STATUS, SyncMirror, write_resets
from procs.sources.replay import read_capture
from procs.sources.simulator import SimParams, Simulator
from shm.records import BOOK, FEATURES, KIND_DEPTH, KIND_DEPTH_EMPTY, KIND_SNAPSHOT, MARKET

FILES = ("spot_4sym_20211012.lines.gz", "usdm_4sym_20210722.lines.gz", "usdm_btcusdt_20240808_120s.lines.gz")


def _messages(raws: list[bytes], symbols: SymbolTable, bare: str | None) -> list[np.ndarray]:
    """Each raw message's records (one array per message; unknown types give none)."""
    p = Parser(symbols, bare_symbol=bare)
    out = np.zeros(16384, MARKET.dtype)
    msgs = []
    for raw in raws:
        n = p.parse(raw, 0, out, 0)
        if n > 0:
            msgs.append(out[:n].copy())
    return msgs


def _mutate(msgs: list[np.ndarray], rng: random.Random, p_fault: float, n_sym: int) -> list[np.ndarray]:
    """Drop, swap and duplicate diffs, replay old snapshots and reset every book at random points: every path
    of the rules."""
    snaps = [m for m in msgs if m[0]["kind"] == KIND_SNAPSHOT]
    res: list[np.ndarray] = []
    i = 0
    while i < len(msgs):
        m = msgs[i]
        diff = m[0]["kind"] in (KIND_DEPTH, KIND_DEPTH_EMPTY)
        u = rng.random()
        if diff and u < p_fault:
            i += 1  # dropped: a gap
            continue
        if diff and u < 2 * p_fault and i + 1 < len(msgs):
            res += [msgs[i + 1], m]  # reordered
            i += 2
            continue
        if diff and u < 3 * p_fault:
            res += [m, m]  # duplicated: stale the second time
        elif snaps and u < 4 * p_fault:
            res += [rng.choice(snaps), m]  # an old snapshot: ignored, or too old for the buffered diffs
        elif u < 5 * p_fault:
            resets = np.zeros(n_sym, MARKET.dtype)
            write_resets(resets, 0, n_sym, 0)
            res += [resets, m]  # a lost connection: every book dropped
        else:
            res.append(m)
        i += 1
    return res


def _agree(msgs: list[np.ndarray], n_sym: int, buffer: int) -> dict[str, int]:
    st = BookState(n_sym, buffer=buffer)
    mirror = SyncMirror(n_sym, buffer_records=buffer)
    ob = np.zeros(16384, BOOK.dtype)
    of = np.zeros(16384, FEATURES.dtype)
    seen = {"gaps": 0, "needs": 0, "live": 0}
    for k, m in enumerate(msgs):
        st.process(m, len(m), ob, of)
        # split the message across two calls sometimes: the mirror carries a message across batches
        cut = len(m) // 2 if len(m) > 1 and k % 3 == 0 else len(m)
        mirror.process(m, 0, cut)
        mirror.process(m, cut, len(m))
        for s in range(n_sym):
            ctx = f"message {k} symbol {s} kind {m[0]['kind']}"
            assert mirror.st[s, T_STATUS] == st.sym_state[s, S_STATUS], ctx
            assert mirror.need[s] == st.sym_state[s, S_NEED_SNAPSHOT], ctx
            if st.sym_state[s, S_STATUS] >= 2:
                assert mirror.st[s, T_LAST_ID] == st.sym_state[s, S_LAST_ID], ctx
        seen["needs"] += int(mirror.need.sum())
        seen["live"] += int((mirror.st[:, T_STATUS] == ST_LIVE).sum())
    seen["resets"] = st.counts()["resets"]
    assert int(mirror.st[:, T_GAPS].sum()) == st.counts()["gaps"]
    seen["gaps"] = st.counts()["gaps"]
    return seen


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("buffer", [8192, 24])
def test_mirror_agrees_with_the_book_on_real_captures_with_faults(data_dir: Path, name: str, buffer: int) -> None:
    path = data_dir / name
    if not path.is_file():
        pytest.skip(f"{name} not in {data_dir}")
    raws = [raw for _, raw in read_capture(path)]
    symbols = SymbolTable()
    bare = "BTCUSDT" if "btcusdt" in name else None
    msgs = _messages(raws, symbols, bare)
    clean = _agree(msgs, len(symbols), buffer)
    assert clean["live"] > 0 or buffer < 100  # a tiny buffer may drop the diffs that bridge the snapshot
    faulty = _agree(_mutate(msgs, random.Random(3), 0.02, len(symbols)), len(symbols), buffer)
    assert faulty["needs"] > 0 and faulty["gaps"] + faulty["resets"] > 0  # the faults did break the chain


def test_mirror_agrees_on_the_simulator_with_a_tiny_buffer() -> None:
    sim = Simulator(SimParams(symbols=["AAA", "BBB"], seed=5, depth_interval_ms=0))
    raws = []
    for _ts, raw in sim.messages():
        raws.append(raw)
        if len(raws) >= 4000:
            break
    symbols = SymbolTable()
    msgs = _messages(raws, symbols, None)
    seen = _agree(_mutate(msgs, random.Random(9), 0.03, len(symbols)), len(symbols), 6)
    assert seen["gaps"] > 0 and seen["live"] > 0


def test_a_message_larger_than_the_buffer_empties_it_like_the_book() -> None:
    symbols = SymbolTable(["X"])
    raws = [b'{"e":"depthUpdate","E":1,"s":"X","U":5,"u":6,"b":[["1.0","1"],["2.0","1"],["3.0","1"]],"a":[]}',
            b'{"lastUpdateId":3,"bids":[["1.0","1"]],"asks":[["9.0","1"]]}']
    msgs = _messages(raws, symbols, "X")
    seen = _agree(msgs, 1, 2)
    assert seen["needs"] > 0
