"""Binary captures (procs/sources/binary.py, scripts/convert_capture.py): the records equal the parser's,
the header refuses any mismatch, the replay paces them exactly as the JSON replay paces the lines, and
run.py plays them end to end with the same results as the JSON capture."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_data_dir
from test_e2e import assert_counts_add_up, no_segments_left, run_py, summary_of

from procs.agent import AgentContext
from procs.book import BookAgent
from procs.config import Config
from procs.feed import BINARY_BATCH_RECORDS, Feed
from procs.kernels.parse_json import ERR_NO_SPACE, PC_NO_SPACE, Parser, SymbolTable
from procs.sources.binary import (
    MAGIC,
    VERSION,
    BinaryCapture,
    BinaryReplay,
    CaptureFormatError,
    convert_capture,
    encode_header,
    layout_fields,
)
from procs.sources.replay import CaptureReader, ReplayOptions, capture_format, paced, read_capture, scan_symbols
from procs.sources.simulator import SimParams, write_capture
from procs.strategy import StrategyAgent
from shm.metrics import RunState
from shm.records import BOOK, FEATURES, FILL, FLAG_LAST_IN_MESSAGE, KIND_TRADE, MARKET, ORDER, SCORE
from shm.ring import Board, SpscRing

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "convert_capture.py"
BTC = "usdm_btcusdt_20240808_120s.lines.gz"
_DATA = shared_data_dir()
CAPTURES = sorted(p.name for p in _DATA.glob("*.lines.gz")) if _DATA.is_dir() else []
SYMS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]


def parse_all(path: Path) -> tuple[np.ndarray, Parser]:
    """Every record of a JSON capture as a replay's feed parses them (its symbol table, its bare symbol)."""
    syms = scan_symbols(path)
    parser = Parser(SymbolTable(syms, auto_add=False), bare_symbol=syms[0] if len(syms) == 1 else None)
    out = np.zeros(1 << 16, MARKET.dtype)
    n = 0
    for ts, raw in read_capture(path):
        k = parser.parse(raw, ts, out, n)
        while k == ERR_NO_SPACE:
            bigger = np.zeros(2 * len(out), MARKET.dtype)  # not np.concatenate: it strips the dtype's padding
            bigger[:n] = out[:n]
            out = bigger
            parser.counters[PC_NO_SPACE] -= 1  # a retry, as in the converter: not a lost message
            k = parser.parse(raw, ts, out, n)
        n += max(k, 0)
    return out[:n], parser


def comparable(recs: np.ndarray) -> bytes:
    """The records' bytes with seq and t_publish_ns zeroed (the ring stamps both when it publishes)."""
    r = np.frombuffer(bytearray(recs.tobytes()), MARKET.dtype)  # raw bytes: a structured copy skips the padding
    r["seq"] = 0
    r["t_publish_ns"] = 0
    return r.tobytes()


@pytest.fixture(scope="module")
def sim_capture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 20 s simulator capture (three symbols, wrapped snapshots) and its binary conversion."""
    d = tmp_path_factory.mktemp("sim")
    src = d / "sim.lines.gz"
    write_capture(str(src), SimParams(SYMS, seed=11), 20)
    dst = d / "sim.tpc"
    convert_capture(src, dst)
    return src, dst


def assert_round_trip(src: Path, dst: Path) -> None:
    want, parser = parse_all(src)
    with BinaryCapture(dst) as cap:
        h = cap.header
        assert len(cap.records) == len(want) == h.records > 0
        assert comparable(cap.records) == comparable(want)  # byte for byte, padding included
        assert h.symbols == scan_symbols(src) == parser.symbols.names
        assert h.messages == int(np.count_nonzero(want["flags"] & FLAG_LAST_IN_MESSAGE))
        assert h.d["parse"] == parser.counts()  # skipped messages are counted, never silently lost
        assert h.d["source"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
        assert h.d["source"]["name"] == src.name
        assert h.ts0_ns == next(read_capture(src))[0]
        assert (cap.records["t_publish_ns"] == 0).all()


@pytest.mark.parametrize("name", CAPTURES or [None])
def test_round_trip_real_capture(name: str | None, tmp_path: Path) -> None:
    if name is None:
        pytest.skip(f"shared Binance captures not found at {_DATA} (set TICKPIPE_DATA); not part of the repository")
    src = _DATA / name
    dst = tmp_path / "c.tpc"
    convert_capture(src, dst)
    assert_round_trip(src, dst)


def test_round_trip_simulator_capture(sim_capture: tuple[Path, Path]) -> None:
    src, dst = sim_capture
    assert_round_trip(src, dst)
    with BinaryCapture(dst) as cap:
        assert cap.header.d["markets"] == ["spot"]
        assert sorted(set(cap.records["symbol"].tolist())) == [0, 1, 2]


def test_unusable_messages_are_counted_in_the_header(tmp_path: Path) -> None:
    src = tmp_path / "mixed.lines"
    lines = [b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":5,"p":"1.5","q":"2",'
             b'"T":1,"m":true,"M":true}}',
             b'{"stream":"btcusdt@kline_1m","data":{"e":"kline","s":"BTCUSDT"}}',
             b'{"stream":"btcusdt@trade","data":{"e":"trade","E":2,"s":"BTCUSDT","t":6,"p":"x","q":"2",'
             b'"T":2,"m":false,"M":true}}',
             b"not json at all"]
    src.write_bytes(b"".join(b"%d %b\n" % (1000 + i, ln) for i, ln in enumerate(lines)) + b"garbage\n")
    h = convert_capture(src, tmp_path / "mixed.tpc")
    assert h["records"] == h["messages"] == 1
    p = h["parse"]
    assert (p["messages"], p["trade"], p["unknown_type"], p["bad_number"], p["bad_json"]) == (4, 1, 1, 1, 1)
    assert h["source"]["bad_lines"] == 1 and h["source"]["lines"] == 4
    with BinaryCapture(tmp_path / "mixed.tpc") as cap:
        r = cap.records[0]
        assert (r["kind"], r["price"], r["t_origin_ns"], r["flags"] & FLAG_LAST_IN_MESSAGE) == (
            KIND_TRADE, 150_000_000, 1000, FLAG_LAST_IN_MESSAGE)


# -- the header refuses what this reader must not use -----------------------------------------------------
def _parts(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (hlen,) = struct.unpack_from("<Q", raw, 8)
    h = json.loads(raw[16:16 + hlen])
    return h, raw[h["data_offset"]:]


def _rewrite(src: Path, dst: Path, **changes: object) -> Path:
    h, body = _parts(src)
    h.update(changes)
    dst.write_bytes(encode_header(h) + body)
    return dst


@pytest.mark.parametrize(("field", "value"), [
    ("version", VERSION + 1),
    ("layout", "Book"),
    ("layout_hash", "0x0123456789abcdef"),
    ("record_size", 64),
    ("dtype", [["seq", "<u8"]]),
    ("format", "something else"),
    ("records", -1),
    ("symbols", "BTCUSDT"),
])
def test_header_mismatch_is_refused_naming_the_field(sim_capture: tuple[Path, Path], tmp_path: Path,
                                                     field: str, value: object) -> None:
    bad = _rewrite(sim_capture[1], tmp_path / "bad.tpc", **{field: value})
    with pytest.raises(CaptureFormatError, match=f"field={field} ") as ei:
        BinaryCapture(bad)
    assert str(bad) in str(ei.value) and ei.value.field == field
    if field == "layout_hash":  # the expected value is this build's layout, the found one the file's
        assert ei.value.expected == f"{MARKET.layout_hash:#018x}" and ei.value.found == "0x0123456789abcdef"
    with pytest.raises(CaptureFormatError, match=f"field={field} "):
        scan_symbols(bad)  # run.py learns the symbols from the header: it is checked there first


def test_wrong_magic_and_other_layout_are_refused(sim_capture: tuple[Path, Path], tmp_path: Path) -> None:
    good = sim_capture[1]
    raw = good.read_bytes()
    bad = tmp_path / "magic.tpc"
    bad.write_bytes(b"TPCAX" + raw[5:])
    with pytest.raises(CaptureFormatError, match="field=magic"):
        BinaryCapture(bad)
    assert capture_format(bad) == "text"  # not binary by its bytes: a replay reads it as (bad) text lines
    with pytest.raises(CaptureFormatError, match="field=layout expected=Book found=Market"):
        BinaryCapture(good, layout=BOOK)  # a reader built for another record refuses the file


def test_truncated_and_padded_files_are_refused(sim_capture: tuple[Path, Path], tmp_path: Path) -> None:
    raw = sim_capture[1].read_bytes()
    h, _ = _parts(sim_capture[1])
    cases = {"records": raw[:-100], "header": raw[:40], "preamble": raw[:10]}
    for where, data in cases.items():
        p = tmp_path / f"cut-{where}.tpc"
        p.write_bytes(data)
        with pytest.raises(CaptureFormatError, match=r"field=file_size .*truncated") as ei:
            BinaryCapture(p)
        if where == "records":
            assert f"expected={len(raw)} bytes ({h['records']} records)" in str(ei.value)
    p = tmp_path / "long.tpc"
    p.write_bytes(raw + b"\0" * 128)
    with pytest.raises(CaptureFormatError, match=r"field=file_size .*trailing bytes"):
        BinaryCapture(p)


def test_a_cut_off_last_message_is_refused(sim_capture: tuple[Path, Path], tmp_path: Path) -> None:
    h, body = _parts(sim_capture[1])
    recs = np.frombuffer(body, MARKET.dtype)
    cut = int(np.flatnonzero((recs["flags"] & FLAG_LAST_IN_MESSAGE) == 0)[-1]) + 1  # ends inside a message
    h["records"] = cut
    p = tmp_path / "cut.tpc"
    p.write_bytes(encode_header(h) + recs[:cut].tobytes())
    with pytest.raises(CaptureFormatError, match="field=last_record_flags"):
        BinaryCapture(p)


# -- format detection, symbols, the converter's command line -----------------------------------------------
def test_format_detection_and_scan_symbols(sim_capture: tuple[Path, Path], tmp_path: Path) -> None:
    src, dst = sim_capture
    plain = tmp_path / "plain.gz"  # a misleading name: detection is by content
    plain.write_bytes(gzip.decompress(src.read_bytes()))
    assert (capture_format(src), capture_format(plain), capture_format(dst)) == ("gzip", "text", "binary")
    assert dst.read_bytes()[:len(MAGIC)] == MAGIC
    assert scan_symbols(dst) == scan_symbols(src) == scan_symbols(plain)  # order of first appearance
    assert sorted(scan_symbols(dst)) == sorted(SYMS)
    with pytest.raises(ValueError, match="is a binary capture"):
        CaptureReader(dst)  # read as text it would be all bad lines: refused with the reason instead


def test_convert_script_help_overwrite_and_force(sim_capture: tuple[Path, Path], tmp_path: Path) -> None:
    src, _ = sim_capture
    r = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--force" in r.stdout and "IN" in r.stdout
    out = tmp_path / "x.tpc"
    out.write_bytes(b"precious")
    r = subprocess.run([sys.executable, str(SCRIPT), str(src), str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--force" in r.stderr
    assert out.read_bytes() == b"precious"  # refused: untouched
    r = subprocess.run([sys.executable, str(SCRIPT), "--force", str(src), str(out)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "records" in r.stdout and "skipped" in r.stdout
    with BinaryCapture(out) as cap:
        assert cap.header.symbols == scan_symbols(src)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".x.tpc")]  # no temporary file left
    r = subprocess.run([sys.executable, str(SCRIPT), str(out), str(tmp_path / "y.tpc")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "is a binary capture" in r.stderr


# -- pacing: the same schedule as the JSON replay ------------------------------------------------------
def _binary_schedule(path: Path, opts: ReplayOptions, limit: int, chunk: int) -> list[tuple[int, int, int]]:
    """(due, records, first price) per message, one message per take, from a clock far in the future."""
    with BinaryCapture(path) as cap:
        rp = BinaryReplay(cap, opts, start_ns=1_000, chunk_records=chunk)
        out = np.zeros(cap.header.max_message_records + 1, MARKET.dtype)
        lat = np.zeros(len(out), np.int64)
        got = []
        while len(got) < limit:
            k, n = rp.take(1 << 62, out, 1 << 20, 1, lat)
            if k == 0:
                break
            assert (out["t_origin_ns"][:n] == out["t_origin_ns"][0]).all()
            assert lat[0] == (1 << 62) - out["t_origin_ns"][0] or opts.speed == 0
            got.append((int(out["t_origin_ns"][0]), n, int(out["price"][0])))
        return got


def _json_schedule(path: Path, opts: ReplayOptions, limit: int) -> list[tuple[int, int, int]]:
    syms = scan_symbols(path)
    parser = Parser(SymbolTable(syms, auto_add=False), bare_symbol=syms[0] if len(syms) == 1 else None)
    out = np.zeros(1 << 14, MARKET.dtype)
    got = []
    for due, _, raw in paced(lambda: read_capture(path), 1_000, opts):
        n = parser.parse(raw, due, out, 0)
        if n > 0:
            got.append((1 << 62 if opts.speed == 0 else due, n, int(out["price"][0])))
        if len(got) >= limit:
            break
    return got


@pytest.mark.parametrize("opts", [
    ReplayOptions(speed=1.0),
    ReplayOptions(speed=7.5, offset_ns=3_000_000_000, duration_ns=5_000_000_000),
    ReplayOptions(speed=0.5, duration_ns=2_000_000_000, loop=True, loop_gap_ns=123_456),
    ReplayOptions(speed=0, offset_ns=19_000_000_000, loop=True),
], ids=["speed1", "offset-duration", "loop", "speed0-loop"])
def test_binary_replay_schedule_equals_the_json_replay(sim_capture: tuple[Path, Path], opts: ReplayOptions) -> None:
    src, dst = sim_capture
    limit = 30_000
    want = _json_schedule(src, opts, limit)
    assert len(want) > 100
    for chunk in (7, 4096):  # chunk edges everywhere, and the default-like case
        assert _binary_schedule(dst, opts, limit, chunk) == want


def test_take_gives_whole_due_messages_within_the_budget(sim_capture: tuple[Path, Path]) -> None:
    _, dst = sim_capture
    with BinaryCapture(dst) as cap:
        opts = ReplayOptions(speed=3.0, duration_ns=6_000_000_000)
        rp = BinaryReplay(cap, opts, start_ns=0, chunk_records=1000)
        ref = BinaryReplay(cap, opts, start_ns=0)
        dues = []
        while (d := ref.next_due()) is not None:
            dues.append(d)
            ref.take(d, np.zeros(cap.header.max_message_records, MARKET.dtype), 1, 1)
        out = np.zeros(4096, MARKET.dtype)
        lat = np.zeros(4096, np.int64)
        taken = 0
        for now in range(0, dues[-1] + 50_000_000, 50_000_000):  # a clock in 50 ms steps
            while True:
                k, n = rp.take(now, out, 64, 4096, lat)
                if k == 0:
                    break
                ends = np.flatnonzero(out["flags"][:n] & FLAG_LAST_IN_MESSAGE)
                assert len(ends) == k and ends[-1] == n - 1  # whole messages only
                assert n <= 64 or k == 1  # the budget holds, unless one message is larger
                assert (lat[:k] >= 0).all() and (out["t_origin_ns"][:n] <= now).all()
                taken += k
            assert taken == sum(1 for d in dues if d <= now)  # everything due, nothing early
        assert rp.next_due() is None and rp.done and taken == len(dues)


def test_messages_skipped_inside_the_window_are_not_copied(tmp_path: Path) -> None:
    """A capture whose receive times step back: messages before the window start are skipped even in the
    middle of a batch, as the JSON replay skips them."""
    ts = [1_000, 400, 2_000, 900, 3_000, 3_500]
    sizes = [2, 1, 3, 1, 2, 1]
    recs = np.zeros(sum(sizes), MARKET.dtype)
    i = 0
    for m, (t, k) in enumerate(zip(ts, sizes, strict=True)):
        recs[i:i + k]["t_origin_ns"] = t
        recs[i:i + k]["price"] = m
        recs[i + k - 1]["flags"] = FLAG_LAST_IN_MESSAGE
        i += k
    header = {"format": "tickpipe binary capture", "version": VERSION, **layout_fields(MARKET),
              "records": len(recs), "messages": len(ts), "max_message_records": 3, "symbols": ["X"],
              "ts0_ns": 1_000}
    p = tmp_path / "back.tpc"
    p.write_bytes(encode_header(header) + recs.tobytes())
    opts = ReplayOptions(speed=1.0)
    want = [(due, m) for due, _, m in paced(lambda: iter(zip(ts, range(6), strict=True)), 0, opts)]
    assert [m for _, m in want] == [0, 2, 4, 5]
    for chunk in (64, 4):  # all in one take (the per-message copy), and over chunk edges
        with BinaryCapture(p) as cap:
            rp = BinaryReplay(cap, opts, start_ns=0, chunk_records=chunk)
            out = np.zeros(16, MARKET.dtype)
            got = []
            while True:
                k, n = rp.take(10_000, out, 16, 16)
                if k == 0:
                    break
                got.extend(out[:n][["price", "t_origin_ns"]].tolist())
                if chunk == 64:
                    assert k == 4 and n == 2 + 3 + 2 + 1
        want_recs = [(m, due) for due, m in want for _ in range(sizes[m])]
        assert got == want_recs


# -- the feed: batches, backpressure, counters -------------------------------------------------------------
def test_feed_book_strategy_over_a_small_ring_lose_nothing(run_id: str, sim_capture: tuple[Path, Path],
                                                           tmp_path: Path) -> None:
    """The feed's batch (BINARY_BATCH_RECORDS) is larger than this market ring: writes must wait, never drop."""
    src, dst = sim_capture
    syms = scan_symbols(dst)
    cap = 1 << 11
    assert cap < BINARY_BATCH_RECORDS
    want, parser = parse_all(src)
    results = {}
    for path in (dst, src):
        rid = f"{run_id}{'b' if path == dst else 'j'}"
        # the stages on boards, as paced: lockstep (speed 0's default) would need the queues too
        cfg = Config.from_dict({"source": {"kind": "replay", "path": str(path), "speed": 0.0},
                                "inference": {"lockstep": "off"}})
        state = RunState.create(rid, 3)
        rings = [SpscRing.create(rid, "market", MARKET, cap), SpscRing.create(rid, "book", BOOK, 1 << 12),
                 SpscRing.create(rid, "orders", ORDER, 1 << 12), Board.create(rid, "features", FEATURES, len(syms)),
                 Board.create(rid, "scores", SCORE, len(syms)), SpscRing.create(rid, "fills", FILL, 1 << 14)]
        try:
            agents = []
            for i, cls in enumerate((Feed, BookAgent, StrategyAgent)):
                a = cls()
                a.on_start(AgentContext(run=rid, run_dir=str(tmp_path), config=cfg, symbols=syms,
                                        counters=state.stats.slots[i]["counters"], hist_hop=state.hist(i, 0),
                                        hist_e2e=state.hist(i, 1), log=logging.getLogger("test")))
                agents.append(a)
            orders = rings[2].consumer(0)
            fills = rings[5].consumer(0)
            for _ in range(1_000_000):
                work = sum(a.do_work() for a in agents)
                orders.read(4096)
                fills.read(4096)
                if work == 0 and agents[0].finished():
                    break
            for a in agents:
                a.on_close()
            c = state.stats.slots["counters"]
            results[path.suffix] = [dict(zip(cls.COUNTERS, c[i].tolist(), strict=False))
                                    for i, cls in enumerate((Feed, BookAgent, StrategyAgent))]
        finally:
            for r in rings:
                r.close()
            state.close()
    (feed_b, book_b, strat_b), (feed_j, book_j, strat_j) = results[".tpc"], results[".gz"]
    assert feed_b["ring_full"] > 0  # the ring really was full at times
    assert feed_b["records_out"] == book_b["records_in"] == len(want)
    assert feed_b["messages_out"] == book_b["messages_in"] == feed_b["messages_forwarded"]
    assert book_b["gaps"] == 0 and book_b["crossed"] == 0
    # the same book and strategy work as from the JSON capture, and the same counters by message type
    for key in ("books_out", "diffs_applied", "snapshots", "trades", "tickers"):
        assert book_b[key] == book_j[key], key
    assert strat_b["books_in"] == strat_j["books_in"]
    for key in ("messages", "depth", "snapshot", "trade", "ticker", "records", "bad_json", "unknown_type"):
        assert feed_b[key] == feed_j[key] == parser.counts()[key], key


def _feed_ctx(run_id: str, cfg: Config, syms: list[str], state: RunState, tmp_path: Path) -> AgentContext:
    return AgentContext(run=run_id, run_dir=str(tmp_path), config=cfg, symbols=syms,
                        counters=state.stats.slots[0]["counters"], hist_hop=state.hist(0, 0),
                        hist_e2e=state.hist(0, 1), log=logging.getLogger("test"))


def test_feed_refuses_a_run_whose_symbols_are_not_the_files(run_id: str, sim_capture: tuple[Path, Path],
                                                           tmp_path: Path) -> None:
    _, dst = sim_capture
    syms = scan_symbols(dst)
    cfg = Config.from_dict({"source": {"kind": "replay", "path": str(dst), "speed": 0.0}})
    state = RunState.create(run_id, 1)
    ring = SpscRing.create(run_id, "market", MARKET, 1 << 10)
    try:
        with pytest.raises(CaptureFormatError, match="field=symbols") as ei:
            Feed().on_start(_feed_ctx(run_id, cfg, syms[::-1], state, tmp_path))  # ids would mean other symbols
        assert ei.value.expected == syms[::-1] and ei.value.found == syms
    finally:
        ring.close()
        state.close()


def test_feed_max_messages_and_ring_stamps(run_id: str, sim_capture: tuple[Path, Path], tmp_path: Path) -> None:
    """The feed stops after exactly max_messages whole messages; the ring stamps seq, the feed t_publish_ns and
    (speed 0) t_origin_ns; the rest of every record is the file's."""
    _, dst = sim_capture
    syms = scan_symbols(dst)
    limit = 1234
    cfg = Config.from_dict({"source": {"kind": "replay", "path": str(dst), "speed": 0.0},
                            "run": {"max_messages": limit}})
    state = RunState.create(run_id, 1)
    ring = SpscRing.create(run_id, "market", MARKET, 1 << 12)
    feed = Feed()
    try:
        cons = ring.consumer(0)
        feed.on_start(_feed_ctx(run_id, cfg, syms, state, tmp_path))
        got = []
        while True:
            work = feed.do_work()
            got.append(cons.read(1 << 12).copy())
            if work == 0 and feed.finished():
                break
        feed.on_close()
        recs = np.concatenate(got)
        c = dict(zip(Feed.COUNTERS, state.stats.slots[0]["counters"].tolist(), strict=False))
    finally:
        ring.close()
        state.close()
    with BinaryCapture(dst) as cap:
        ends = np.flatnonzero(cap.records["flags"] & FLAG_LAST_IN_MESSAGE)
        n = int(ends[limit - 1]) + 1
        want = cap.records[:n]
        assert c["messages_out"] == c["messages_forwarded"] == c["messages"] == limit
        assert c["records_out"] == c["records"] == len(recs) == n
        assert c["depth"] + c["snapshot"] + c["trade"] + c["ticker"] == limit
        assert (recs["seq"] == np.arange(1, n + 1)).all()  # position + 1: stamped by the ring
        assert (recs["t_publish_ns"] >= recs["t_origin_ns"]).all() and (recs["t_origin_ns"] > 0).all()
        for name in MARKET.dtype.names:
            if name not in ("seq", "t_origin_ns", "t_publish_ns"):
                assert (recs[name] == want[name]).all(), name


# -- end to end -----------------------------------------------------------------------------------------
def test_run_py_replays_a_binary_capture_like_the_json_one(data_dir: Path, tmp_path: Path) -> None:
    src = data_dir / BTC
    if not src.is_file():
        pytest.skip(f"{BTC} not in {data_dir}")
    dst = tmp_path / "btc.tpc"
    convert_capture(src, dst)
    n_records = BinaryCapture(dst).header.records
    summaries = {}
    for name, path in (("binary", dst), ("json", src)):
        out = tmp_path / name
        out.mkdir()
        r = run_py("--replay", str(path), "--speed", "0", "--quiet", out=out)
        assert r.returncode == 0, r.stderr + r.stdout
        s = summaries[name] = summary_of(out)
        assert_counts_add_up(s)
        assert s["meta"]["stop_reason"] == "end of the source"
        no_segments_left(out)
    b, j = summaries["binary"]["counters"], summaries["json"]["counters"]
    assert b["feed"]["records_out"] == b["book"]["records_in"] == n_records == j["feed"]["records_out"]
    assert b["feed"]["messages_out"] == j["feed"]["messages_out"] == 29042
    assert b["book"]["gaps"] == 0 and b["book"]["crossed"] == 0 and b["book"]["snapshots"] == 1
    assert b["book"]["books_out"] == j["book"]["books_out"] > 0
    assert summaries["binary"]["histograms"]["feed.lateness"]["count"] == 29042
