"""The local exchange (procs/sources/exchange.py): Binance's protocol on loopback, its books, and every fault knob.

The client side is deliberately plain (websockets' sync client, urllib) and follows Binance's documented
book procedure itself, so these tests check the server independently of procs/sources/live.py.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from procs.sources.exchange import DEPTH_PATH, MALFORMED_KINDS, LocalExchange, capture_market
from procs.sources.replay import read_capture
from procs.sources.simulator import SimParams, Simulator, write_capture

REPO = Path(__file__).resolve().parents[1]
SYMS = ["BTCUSDT", "ETHUSDT"]
#: Payload keys, in order, of each message kind as Binance writes it (from the shared captures).
KEYS = {
    ("spot", "depthUpdate"): ["e", "E", "s", "U", "u", "b", "a"],
    ("spot", "bookTicker"): ["u", "s", "b", "B", "a", "A"],
    ("spot", "trade"): ["e", "E", "s", "t", "p", "q", "T", "m", "M"],
    ("spot", "aggTrade"): ["e", "E", "s", "a", "p", "q", "f", "l", "T", "m", "M"],
    ("usdm", "depthUpdate"): ["e", "E", "T", "s", "U", "u", "pu", "b", "a"],
    ("usdm", "bookTicker"): ["e", "u", "s", "b", "B", "a", "A", "T", "E"],
    ("usdm", "trade"): ["e", "E", "T", "s", "t", "p", "q", "X", "m"],
    ("usdm", "aggTrade"): ["e", "E", "a", "s", "p", "q", "f", "l", "T", "m"],
}
CAPTURES = [("spot_4sym_20211012.lines.gz", 30.0), ("usdm_4sym_20210722.lines.gz", 30.0),
            ("usdm_btcusdt_20240808_120s.lines.gz", 60.0)]


# -- a plain client ---------------------------------------------------------------------------------
def depth_url(ex: LocalExchange, symbol: str, limit: int | str = 1000) -> str:
    return f"{ex.rest_url}{DEPTH_PATH[ex.market]}?symbol={symbol}&limit={limit}"


def get_json(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def http_error(url: str) -> tuple[int, Any]:
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen(url, timeout=10.0)
    return ei.value.code, json.loads(ei.value.read())


def stream_url(ex: LocalExchange, names: list[str]) -> str:
    return f"{ex.ws_url}/stream?streams={'/'.join(names)}"


def next_diff(ws: ClientConnection, timeout: float = 5.0) -> dict:
    """The next depthUpdate payload, skipping anything else (and frames that are not JSON)."""
    deadline = time.monotonic() + timeout
    while True:
        m = ws.recv(timeout=max(deadline - time.monotonic(), 0.001))
        try:
            d = json.loads(m)["data"]
        except (ValueError, KeyError, TypeError):
            continue
        if d.get("e") == "depthUpdate" and "1.2.3" not in str(m):
            return d


def chained(market: str, prev: dict, d: dict) -> bool:
    """Binance's continuity rule: spot U == previous u + 1, USD-M pu == previous u."""
    return d["U"] == prev["u"] + 1 if market == "spot" else d["pu"] == prev["u"]


class ChainBroken(AssertionError):
    pass


class ClientBook:
    """One symbol's book the way Binance documents it: snapshot, drop stale diffs, bridge, then chain."""

    def __init__(self, market: str, snap: dict, limit: int = 1000) -> None:
        self.market = market
        self.last_update_id = snap["lastUpdateId"]
        self.sides: tuple[dict[float, tuple[str, str]], ...] = tuple(
            {float(p): (p, q) for p, q in snap[k] if float(q)} for k in ("bids", "asks"))
        # a snapshot cut at `limit` says nothing of levels beyond its last price, until a diff touches them
        b, a = snap["bids"], snap["asks"]
        self.known = (float(b[-1][0]) if len(b) >= limit else 0.0, float(a[-1][0]) if len(a) >= limit else 1e300)
        self.u: int | None = None  # None until the first diff bridges the snapshot
        self.applied = 0

    def on_diff(self, d: dict) -> bool:
        L = self.last_update_id
        if self.u is None:
            if d["u"] < L or (self.market == "spot" and d["u"] == L):
                return False  # older than the snapshot
            if self.market == "spot":
                assert d["U"] <= L + 1 <= d["u"], f"spot bridge: U={d['U']} u={d['u']} lastUpdateId={L}"
            else:  # futures: U <= L <= u, or the snapshot fell between diffs (pu == L)
                assert d["U"] <= L <= d["u"] or d["pu"] == L, f"usdm bridge: U={d['U']} u={d['u']} pu={d['pu']} L={L}"
        elif not chained(self.market, {"u": self.u}, d):
            raise ChainBroken(f"{d['s']}: U={d['U']} pu={d.get('pu')} after u={self.u}")
        for side, key in zip(self.sides, ("b", "a"), strict=True):
            for p, q in d[key]:
                if float(q):
                    side[float(p)] = (p, q)
                else:
                    side.pop(float(p), None)
        self.u = d["u"]
        self.applied += 1
        return True

    @property
    def at(self) -> int:
        return self.last_update_id if self.u is None else self.u

    def levels(self, side: int) -> list[tuple[str, str]]:
        s = self.sides[side]
        return [s[k] for k in sorted(s, reverse=side == 0)]

    def knowable(self, side: int, levels: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The part of `levels` this client can know: within the price range of its snapshot."""
        lo, hi = self.known
        return [lv for lv in levels if (float(lv[0]) >= lo if side == 0 else float(lv[0]) <= hi)]

    def top(self) -> tuple[float, float, float, float]:
        b, a = self.sides
        bb, ba = max(b), min(a)
        return bb, float(b[bb][1]), ba, float(a[ba][1])


def as_tuples(levels: list) -> list[tuple[str, str]]:
    return [tuple(x) for x in levels]


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


# -- subscriptions -----------------------------------------------------------------------------------
def test_a_client_gets_exactly_the_streams_it_subscribed() -> None:
    with LocalExchange(SYMS, seed=3, rate_scale=2.0, depth_interval_ms=50) as ex, \
            connect(stream_url(ex, ["btcusdt@trade", "ethusdt@bookTicker", "ethusdt@depth"]), max_queue=None) as ws, \
            connect(f"{ex.ws_url}/ws/btcusdt@aggTrade", max_queue=None) as raw:
        got: list[dict] = []
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            got.append(json.loads(ws.recv(timeout=5)))
        by_stream: dict[str, list[dict]] = {}
        for m in got:
            assert set(m) == {"stream", "data"}
            by_stream.setdefault(m["stream"], []).append(m["data"])
        assert set(by_stream) == {"btcusdt@trade", "ethusdt@bookTicker", "ethusdt@depth"}
        assert all(d["e"] == "trade" and d["s"] == "BTCUSDT" for d in by_stream["btcusdt@trade"])
        assert all("e" not in d and d["s"] == "ETHUSDT" and d["u"] > 0 for d in by_stream["ethusdt@bookTicker"])
        # @depth is an alias of the diff stream: the frames carry the name the client used
        assert all(d["e"] == "depthUpdate" and d["s"] == "ETHUSDT" for d in by_stream["ethusdt@depth"])
        assert len(by_stream["ethusdt@depth"]) >= 10
        r = json.loads(raw.recv(timeout=5))  # /ws/<name>: the bare payload, no wrapper
        assert r["e"] == "aggTrade" and r["s"] == "BTCUSDT" and r["f"] <= r["l"] and "stream" not in r
    assert ex.stats["connections"] == 2 and ex.stats["frames_sent"] >= len(got)


def test_live_subscribe_unsubscribe_and_list() -> None:
    with LocalExchange(["BTCUSDT"], seed=4) as ex, connect(f"{ex.ws_url}/stream") as ws:

        def reply(rid: int) -> dict:
            while True:
                m = json.loads(ws.recv(timeout=5))
                if m.get("id") == rid:
                    return m

        ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@bookTicker"], "id": 1}))
        assert reply(1) == {"result": None, "id": 1}
        m = json.loads(ws.recv(timeout=5))
        assert m["stream"] == "btcusdt@bookTicker" and m["data"]["s"] == "BTCUSDT"
        ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 2}))
        assert reply(2) == {"result": ["btcusdt@bookTicker"], "id": 2}
        ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["nopeusdt@trade"], "id": 3}))
        err = reply(3)
        assert err["code"] == 2 and "nopeusdt" in err["msg"]
        ws.send(json.dumps({"method": "UNSUBSCRIBE", "params": ["btcusdt@bookTicker"], "id": 4}))
        assert reply(4) == {"result": None, "id": 4}
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.4)  # nothing subscribed any more
    assert ex.stats["subscribe_requests"] == 3


def test_unknown_streams_and_symbols_are_refused_with_binance_errors() -> None:
    with LocalExchange(["BTCUSDT"], seed=2) as ex:
        assert http_error(depth_url(ex, "NOPEUSDT")) == (400, {"code": -1121, "msg": "Invalid symbol."})
        code, body = http_error(depth_url(ex, "btcusdt"))
        assert code == 400 and body["code"] == -1100 and "'symbol'" in body["msg"]
        code, body = http_error(f"{ex.rest_url}/api/v3/depth?limit=5")
        assert code == 400 and body["code"] == -1102
        code, body = http_error(depth_url(ex, "BTCUSDT", "ten"))
        assert code == 400 and body["code"] == -1100
        code, body = http_error(f"{ex.rest_url}/fapi/v1/depth?symbol=BTCUSDT")  # a futures path on spot
        assert code == 404 and "/api/v3/depth" in body["msg"]
        for bad in ("nopeusdt@trade", "BTCUSDT@trade", "btcusdt@kline_1m"):
            with pytest.raises(InvalidStatus) as ei:
                connect(stream_url(ex, [bad]), open_timeout=5)
            assert ei.value.response.status_code == 400
            assert bad in ei.value.response.body.decode()
        assert get_json(f"{ex.rest_url}/api/v3/ping") == {}
        assert abs(get_json(f"{ex.rest_url}/api/v3/time")["serverTime"] - time.time() * 1e3) < 5000
        ex.pause()
        try:  # limit clamps to the book; paused, the snapshot is exactly the truth
            u, bids, asks = ex.truth("BTCUSDT")
            big = get_json(depth_url(ex, "BTCUSDT", 100000))
            three = get_json(depth_url(ex, "BTCUSDT", 3))
        finally:
            ex.resume()
        assert big["lastUpdateId"] == u and as_tuples(big["bids"]) == bids and as_tuples(big["asks"]) == asks
        assert as_tuples(three["bids"]) == bids[:3] and as_tuples(three["asks"]) == asks[:3]
    assert ex.stats["http_errors"] == 8 and ex.stats["snapshots_served"] == 2


def test_constructor_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="market: expected one of"):
        LocalExchange(["BTCUSDT"], market="coinm")
    with pytest.raises(ValueError, match="drop_rate: expected a probability"):
        LocalExchange(["BTCUSDT"], drop_rate=1.5)
    with pytest.raises(ValueError, match="symbols: expected at least one symbol"):
        LocalExchange([])
    with pytest.raises(FileNotFoundError, match="no such file"):
        LocalExchange(source="/nonexistent/capture.lines.gz")
    with pytest.raises(RuntimeError, match="not running"):
        LocalExchange(["BTCUSDT"]).truth("BTCUSDT")


# -- message shapes and the simulator's stepping ------------------------------------------------------
def kind_of(stream: str, data: dict) -> str:
    return data.get("e") or stream.split("@", 1)[1]


@pytest.mark.parametrize("market", ["spot", "usdm"])
def test_messages_have_binance_key_order(market: str) -> None:
    with LocalExchange(["BTCUSDT"], market=market, seed=3, rate_scale=3.0) as ex, \
            connect(stream_url(ex, [f"btcusdt@{k}" for k in ("depth@100ms", "bookTicker", "trade", "aggTrade")]),
                    max_queue=None) as ws:
        seen: dict[str, list[str]] = {}
        deadline = time.monotonic() + 10
        while len(seen) < 4 and time.monotonic() < deadline:
            m = json.loads(ws.recv(timeout=5))
            seen.setdefault(kind_of(m["stream"], m["data"]), list(m["data"]))
    assert seen == {k: v for (mk, k), v in KEYS.items() if mk == market}


def test_key_orders_are_the_captures(data_dir: Path) -> None:
    files = {"spot": ["spot_4sym_20211012.lines.gz"],
             "usdm": ["usdm_4sym_20210722.lines.gz", "usdm_btcusdt_20240808_120s.lines.gz"]}
    found: dict[tuple[str, str], list[str]] = {}
    for market, names in files.items():
        for name in names:
            if not (data_dir / name).is_file():
                pytest.skip(f"{name} not in {data_dir}")
            for _, raw in read_capture(data_dir / name):
                m = json.loads(raw)
                if "stream" in m and not m["stream"].endswith("@depthSnapshot"):
                    found.setdefault((market, kind_of(m["stream"], m["data"])), list(m["data"]))
    # the spot captures hold aggTrade, not trade; the simulator's spot trade is Binance's documented one
    assert {k: v for k, v in found.items() if k in KEYS} == {k: v for k, v in KEYS.items() if k != ("spot", "trade")}


def test_stepping_the_simulator_gives_the_same_bytes_as_iterating_it() -> None:
    p = SimParams(["BTCUSDT", "ETHUSDT"], seed=12, anomalies_per_min=20)
    it = Simulator(p)
    end = 5 * 10**9
    want = []
    for ts, raw in it.messages():
        if ts - it.base_ns > end:
            break
        want.append((ts, raw))
    stepped = Simulator(SimParams(["BTCUSDT", "ETHUSDT"], seed=12, anomalies_per_min=20))
    got = []
    for t in range(0, end + 1, 7_000_000):  # uneven steps: batching must not matter
        got += stepped.run_until(t)
    got += stepped.run_until(end)
    assert got == want and len(got) > 1000
    with pytest.raises(RuntimeError, match="runs one way"):
        it.run_until(end)
    # flush_pending emits the interval's diff now; the chain and the book snapshot stay consistent
    snap = stepped.book_snapshot("BTCUSDT", 5)
    flushed = [json.loads(r) for _, r in stepped.flush_pending()]
    diffs = [m["data"] for m in flushed if m["data"].get("e") == "depthUpdate" and m["data"]["s"] == "BTCUSDT"]
    last_u = max(json.loads(r)["data"]["u"] for _, r in want if b'"depthUpdate"' in r and b"BTCUSDT" in r)
    if diffs:
        assert diffs[0]["U"] == last_u + 1 and diffs[0]["u"] == snap["lastUpdateId"]
    else:
        assert snap["lastUpdateId"] == last_u
    assert len(snap["bids"]) == len(snap["asks"]) == 5 and float(snap["bids"][0][0]) < float(snap["asks"][0][0])
    with pytest.raises(KeyError, match="symbol expected one of"):
        stepped.book_snapshot("NOPE")


# -- the book: snapshot + diffs == truth ------------------------------------------------------------
@pytest.mark.parametrize("market", ["spot", "usdm"])
def test_snapshot_plus_diffs_rebuild_the_exchange_book(market: str) -> None:
    with LocalExchange(SYMS, market=market, seed=5, depth_interval_ms=50, rate_scale=2.0) as ex, \
            connect(stream_url(ex, [f"{s.lower()}@depth@100ms" for s in SYMS]), max_queue=None) as ws:
        assert ex.wait_clients(1)
        books = {s: ClientBook(market, get_json(depth_url(ex, s))) for s in SYMS}

        def step() -> None:
            m = json.loads(ws.recv(timeout=5))
            books[m["data"]["s"]].on_diff(m["data"])

        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            step()
        ex.pause()
        try:
            truths = {s: ex.truth(s) for s in SYMS}
            while any(books[s].at != truths[s][0] for s in SYMS):  # pause() flushed everything: it all arrives
                step()
            paused = get_json(depth_url(ex, SYMS[0]))
        finally:
            ex.resume()
        for s in SYMS:
            u, bids, asks = truths[s]
            assert books[s].applied >= 10 and books[s].at == u, s
            assert books[s].levels(0) == bids and books[s].levels(1) == asks, f"{s}: book differs from truth"
            assert len(bids) > 5 and len(asks) > 5
        assert paused["lastUpdateId"] == truths[SYMS[0]][0] and as_tuples(paused["bids"]) == truths[SYMS[0]][1]
        if market == "usdm":
            assert set(paused) == {"lastUpdateId", "E", "T", "bids", "asks"}
        # the flow resumes where it stopped, still chained
        for _ in range(4):
            step()
    st = ex.stats
    assert st["diffs_dropped"] == st["diffs_reordered"] == st["malformed_sent"] == 0 and st["late_messages"] == 0


@pytest.mark.parametrize("speed", [1.0, 4.0])
def test_messages_are_paced_in_real_time(speed: float) -> None:
    with LocalExchange(["BTCUSDT"], seed=1, speed=speed) as ex, \
            connect(stream_url(ex, ["btcusdt@depth@100ms"]), max_queue=None) as ws:
        next_diff(ws)
        t0, first = time.monotonic(), next_diff(ws)
        wall0 = time.time() * 1e3
        n, last = 0, first
        while time.monotonic() - t0 < 1.5:
            last = next_diff(ws)
            n += 1
        wall = time.time() * 1e3 - wall0
        assert 0.75 * 15 * speed <= n <= 1.25 * 15 * speed + 1, f"{n} diffs of 100 ms in 1.5 s at speed {speed}"
        assert abs((last["E"] - first["E"]) - wall * speed) < 250 * speed  # simulated time runs at speed x wall
        if speed == 1.0:
            assert abs(last["E"] - time.time() * 1e3) < 250  # E is the wall clock, and frames arrive on time
    assert ex.stats["late_messages"] == 0 and ex.stats["lag_ms_max"] < 100


def test_the_server_pings_and_answers_pings() -> None:
    with LocalExchange(["BTCUSDT"], seed=1, ping_interval_s=0.1, ping_timeout_s=2.0) as ex, \
            connect(stream_url(ex, ["btcusdt@bookTicker"]), max_queue=None) as ws:
        assert ws.ping().wait(2.0)  # our ping is answered
        # the server's keepalive ping got our (automatic) pong: it measured a latency
        wait_for(lambda: ex.client_info()[0]["latency_ms"] > 0, 3.0, "the server's ping round trip")
        assert ex.client_info()[0]["streams"] == ["btcusdt@bookTicker"]


# -- faults -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("market", ["spot", "usdm"])
def test_a_dropped_diff_breaks_the_chain_by_exactly_the_dropped_ids(market: str) -> None:
    with LocalExchange(["BTCUSDT"], market=market, seed=9, depth_interval_ms=20) as ex, \
            connect(stream_url(ex, ["btcusdt@depth@100ms"]), max_queue=None) as ws:
        prev = next_diff(ws)
        ex.drop_diff("BTCUSDT", 2)
        for _ in range(500):
            d = next_diff(ws)
            if not chained(market, prev, d):
                break
            prev = d
        else:
            raise AssertionError("no chain break after drop_diff")
        drops = [f for f in ex.faults() if f["fault"] == "drop"]
        assert len(drops) == 2 and ex.stats["diffs_dropped"] == 2
        missing = set(range(prev["u"] + 1, d["U"]))
        assert missing == set().union(*(range(f["U"], f["u"] + 1) for f in drops))
        if market == "usdm":
            assert drops[0]["pu"] == prev["u"] and d["pu"] == drops[1]["u"]
        assert chained(market, d, next_diff(ws))  # and the stream goes on from there


@pytest.mark.parametrize("market", ["spot", "usdm"])
def test_reorder_swaps_the_next_two_diffs(market: str) -> None:
    with LocalExchange(["BTCUSDT"], market=market, seed=8, depth_interval_ms=20) as ex, \
            connect(stream_url(ex, ["btcusdt@depth@100ms"]), max_queue=None) as ws:
        prev = next_diff(ws)
        ex.reorder_diffs("BTCUSDT")
        for _ in range(500):
            second = next_diff(ws)
            if not chained(market, prev, second):
                break
            prev = second
        else:
            raise AssertionError("no out-of-order diff after reorder_diffs")
        first = next_diff(ws)
        assert chained(market, prev, first) and chained(market, first, second)  # the pair, swapped
        assert ex.faults() == [{"fault": "reorder", "symbol": "BTCUSDT", "first": [first["U"], first["u"]],
                                "second": [second["U"], second["u"]]}]
        assert chained(market, second, next_diff(ws))
    assert ex.stats["diffs_reordered"] == 2


def test_malformed_frames_arrive_and_the_stream_goes_on() -> None:
    with LocalExchange(["BTCUSDT"], market="usdm", seed=6, depth_interval_ms=20) as ex, \
            connect(stream_url(ex, ["btcusdt@depth@100ms"]), max_queue=None) as ws:
        prev = next_diff(ws)
        assert ex.send_malformed(4) == 4  # "mixed": one of each kind
        assert ex.send_malformed(2, kind="binary") == 2
        seen: dict[str, list] = {k: [] for k in MALFORMED_KINDS}
        diffs = []
        while sum(map(len, seen.values())) < 6:
            m = ws.recv(timeout=5)
            if isinstance(m, bytes):
                seen["binary"].append(m)
                continue
            try:
                j = json.loads(m)
            except ValueError:
                seen["not_json" if m.startswith("<html>") else "truncated"].append(m)
                continue
            if "1.2.3" in m:
                seen["bad_number"].append(j)
            else:
                diffs.append(j["data"])
        assert {k: len(v) for k, v in seen.items()} == {"truncated": 1, "not_json": 1, "bad_number": 1, "binary": 3}
        assert seen["truncated"][0].startswith('{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate"')
        bad = seen["bad_number"][0]
        assert bad["stream"] == "btcusdt@depth@100ms" and bad["data"]["b"][0][1] == "1.2.3"
        assert set(bad["data"]) == {"e", "E", "T", "s", "U", "u", "pu", "b", "a"}
        for d in [*diffs, next_diff(ws)]:  # real diffs still chain around the junk
            assert chained("usdm", prev, d)
            prev = d
    assert ex.stats["malformed_sent"] == 6 and ex.stats["connections"] == 1  # the junk closed nothing


@pytest.mark.parametrize("mode", ["abort", "close"])
def test_close_connections_closes_and_clients_can_reconnect(mode: str) -> None:
    with LocalExchange(["BTCUSDT"], seed=2) as ex:
        url = stream_url(ex, ["btcusdt@bookTicker"])
        with connect(url) as ws:
            ws.recv(timeout=5)
            assert ex.close_connections(mode) == 1
            with pytest.raises(ConnectionClosed) as ei:
                while True:
                    ws.recv(timeout=5)
            if mode == "abort":
                assert ei.value.rcvd is None  # TCP gone, no close frame
            else:
                assert ei.value.rcvd is not None and ei.value.rcvd.code == 1001
        wait_for(lambda: ex.stats["clients"] == 0, 5.0, "the server to drop the client")
        with connect(url) as ws2:
            assert json.loads(ws2.recv(timeout=5))["stream"] == "btcusdt@bookTicker"
    assert ex.stats["closes"] == 1 and ex.stats["connections"] == 2


def test_snapshot_delay_delays_rest_but_not_the_stream() -> None:
    with LocalExchange(["BTCUSDT"], seed=3, depth_interval_ms=20) as ex, \
            connect(stream_url(ex, ["btcusdt@depth@100ms"]), max_queue=None) as ws:
        t0 = time.monotonic()
        get_json(depth_url(ex, "BTCUSDT"))
        fast = time.monotonic() - t0
        ex.snapshot_delay_ms = 400
        res: dict[str, Any] = {}
        th = threading.Thread(target=lambda: res.update(snap=get_json(depth_url(ex, "BTCUSDT"))))
        t0 = time.monotonic()
        th.start()
        during = []
        while th.is_alive():
            with contextlib.suppress(TimeoutError):
                during.append(json.loads(ws.recv(timeout=0.05))["data"])
        th.join()
        slow = time.monotonic() - t0
        assert fast < 0.3 and slow >= 0.4, (fast, slow)
        assert len(during) >= 5  # diffs kept flowing while the answer was held back
        # the snapshot was taken when asked: diffs sent during the wait carry later ids
        assert res["snap"]["lastUpdateId"] < during[-1]["u"]
        ex.snapshot_delay_ms = 0
        t0 = time.monotonic()
        get_json(depth_url(ex, "BTCUSDT"))
        assert time.monotonic() - t0 < 0.3
    with pytest.raises(ValueError, match="snapshot_delay_ms"):
        ex.snapshot_delay_ms = -1


def test_server_shutdown_event_arrives_then_the_connection_closes() -> None:
    with LocalExchange(["BTCUSDT"], seed=2, shutdown_close_s=0.3) as ex:
        url = stream_url(ex, ["btcusdt@bookTicker"])
        with connect(url) as ws:
            assert ex.wait_clients(1)
            assert ex.server_shutdown() == 1
            event: dict | None = None
            t_event = 0.0
            with pytest.raises(ConnectionClosed) as ei:
                while True:
                    m = json.loads(ws.recv(timeout=5))
                    if m.get("e") == "serverShutdown":
                        event, t_event = m, time.monotonic()
            closed_after = time.monotonic() - t_event
            assert event is not None and set(event) == {"e", "E"} and abs(event["E"] - time.time() * 1e3) < 5000
            assert ei.value.rcvd is not None and ei.value.rcvd.code == 1001
            assert closed_after > 0.2
        with connect(url) as ws2:  # the exchange itself stays up: a new connection works
            assert ex.server_shutdown(close_after_s=0.0, wrapped=True) == 1
            while "event" not in (m := json.loads(ws2.recv(timeout=5))):
                pass
            assert m["event"]["e"] == "serverShutdown"
    assert ex.stats["shutdown_events"] == 2 and ex.stats["closes"] == 2


def test_random_fault_rates_are_seeded_and_visible() -> None:
    with LocalExchange(["BTCUSDT"], seed=4, depth_interval_ms=20, drop_rate=0.2, malformed_rate=0.2) as ex, \
            connect(stream_url(ex, ["btcusdt@depth@100ms"]), max_queue=None) as ws:
        diffs, junk = [], 0
        end = time.monotonic() + 1.5
        paused = False
        while True:
            if not paused and time.monotonic() > end:
                ex.pause()  # then read what is left: every fault is on the wire
                paused = True
            try:
                m = ws.recv(timeout=0.3 if paused else 5)
            except TimeoutError:
                break
            try:
                d = json.loads(m)["data"]
            except (ValueError, TypeError):
                junk += 1
                continue
            if "1.2.3" in str(m):
                junk += 1
            else:
                diffs.append(d)
        faults = ex.faults()
    got = set().union(*(range(d["U"], d["u"] + 1) for d in diffs))
    lo, hi = diffs[0]["U"], diffs[-1]["u"]
    missing = set(range(lo, hi + 1)) - got
    dropped = set().union(*(range(f["U"], f["u"] + 1) for f in faults if f["fault"] == "drop"))
    assert missing and missing == {i for i in dropped if lo <= i <= hi}
    malformed = [f for f in faults if f["fault"] == "malformed"]
    assert junk == len(malformed) > 0
    assert ex.stats["diffs_dropped"] == len([f for f in faults if f["fault"] == "drop"])


# -- capture replay --------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "speed"), CAPTURES)
def test_a_capture_is_served_and_snapshot_plus_diffs_match_its_tickers(data_dir: Path, name: str,
                                                                       speed: float) -> None:
    path = data_dir / name
    if not path.is_file():
        pytest.skip(f"{name} not in {data_dir}")
    market = capture_market(path)
    assert market is not None
    lines = [json.loads(raw) for _, raw in read_capture(path)]
    n_tickers = sum(1 for m in lines if m.get("stream", "").endswith("@bookTicker"))
    n_diffs = sum(1 for m in lines if m.get("data", {}).get("e") == "depthUpdate")
    with LocalExchange(source=path, market=market, speed=speed) as ex:
        streams = [f"{s.lower()}@{k}" for s in ex.symbols for k in ("depth@100ms", "bookTicker")]
        with connect(stream_url(ex, streams), max_queue=None) as ws:  # the replay starts now
            books = {s: ClientBook(market, get_json(depth_url(ex, s))) for s in ex.symbols}
            tops: dict[str, dict[int, tuple]] = {s: {} for s in ex.symbols}
            tickers: list[dict] = []

            def step(timeout: float) -> None:
                m = json.loads(ws.recv(timeout=timeout))
                d = m["data"]
                assert not m["stream"].endswith("@depthSnapshot")
                if m["stream"].endswith("@bookTicker"):
                    tickers.append(d)
                elif books[d["s"]].on_diff(d):
                    tops[d["s"]][d["u"]] = books[d["s"]].top()

            while True:
                try:
                    step(0.05)
                except TimeoutError:
                    if ex.wait_finished(0):
                        break
            ex.pause()
            try:
                while True:
                    step(0.3)
            except TimeoutError:
                pass
            truths = {s: ex.truth(s) for s in ex.symbols}
    checks = mismatches = 0
    for t in tickers:
        top = tops[t["s"]].get(t["u"])
        if top is not None:
            checks += 1
            mismatches += top != (float(t["b"]), float(t["B"]), float(t["a"]), float(t["A"]))
    assert checks > 0 and mismatches == 0, f"{checks} ticker checks, {mismatches} mismatches"
    assert len(tickers) == n_tickers and ex.stats["diffs_sent"] == n_diffs  # every line, none of the snapshots
    for s in ex.symbols:
        u, bids, asks = truths[s]
        b = books[s]
        assert b.at == u, s
        assert b.knowable(0, b.levels(0)) == b.knowable(0, bids), f"{s} bids differ"
        assert b.knowable(1, b.levels(1)) == b.knowable(1, asks), f"{s} asks differ"
        assert len(b.knowable(0, bids)) > 100 or len(bids) < 1000, s
    assert ex.stats["capture_done"] == 1 and ex.stats["capture_bad_lines"] == 0


def test_a_capture_with_damaged_lines_is_served_around_them(tmp_path: Path) -> None:
    path = tmp_path / "sim.lines"
    write_capture(str(path), SimParams(SYMS, seed=2, market="usdm", depth_interval_ms=50), 3.0)
    lines = path.read_bytes().splitlines()
    ts = lines[60].split()[0]
    bad = [ts + b" {not json", ts + b" [1, 2]", ts + b' {"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate"}}']
    path.write_bytes(b"\n".join(lines[:60] + bad + lines[60:]) + b"\n")
    n_diffs = sum(b'"depthUpdate","E"' in ln for ln in lines)
    with LocalExchange(source=path, market="usdm", speed=6.0) as ex, \
            connect(stream_url(ex, [f"{s.lower()}@depth@0ms" for s in SYMS]), max_queue=None) as ws:
        books = {s: ClientBook("usdm", get_json(depth_url(ex, s))) for s in SYMS}
        paused = False
        while True:
            try:
                d = json.loads(ws.recv(timeout=0.3 if paused else 0.05))["data"]
                books[d["s"]].on_diff(d)
            except TimeoutError:
                if paused:
                    break
                if ex.wait_finished(0):
                    ex.pause()  # every frame is written: read them to the end
                    paused = True
        for s in SYMS:
            u, bids, asks = ex.truth(s)
            assert books[s].at == u and books[s].levels(0) == bids and books[s].levels(1) == asks, s
    assert ex.stats["capture_bad_lines"] == 3 and ex.stats["diffs_sent"] == n_diffs


def test_capture_market_mismatch_is_refused(data_dir: Path) -> None:
    path = data_dir / "usdm_4sym_20210722.lines.gz"
    if not path.is_file():
        pytest.skip(f"{path.name} not in {data_dir}")
    with pytest.raises(ValueError, match="holds usdm diffs"):
        LocalExchange(source=path, market="spot")
    with pytest.raises(ValueError, match="expected symbols of capture"):
        LocalExchange(["BTCUSDT"], source=path, market="usdm")


# -- command line ----------------------------------------------------------------------------------
def test_cli_serves_until_sigterm() -> None:
    r = subprocess.run([sys.executable, "-m", "procs.sources.exchange", "--help"], capture_output=True, text=True,
                       cwd=REPO, timeout=60)
    assert r.returncode == 0 and "--drop-rate" in r.stdout and "--capture" in r.stdout
    r = subprocess.run([sys.executable, "-m", "procs.sources.exchange", "--drop-rate", "2"], capture_output=True,
                       text=True, cwd=REPO, timeout=60)
    assert r.returncode == 2 and "drop_rate: expected a probability in [0, 1] found=2.0" in r.stderr
    p = subprocess.Popen([sys.executable, "-m", "procs.sources.exchange", "--port", "0", "--symbols", "BTCUSDT",
                          "--market", "usdm"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        out = [p.stdout.readline() for _ in range(3)] if p.stdout else []
        ws_url = out[1].split()[1]
        rest_url = out[2].split()[1]
        assert ws_url.startswith("ws://127.0.0.1:") and "/fapi/v1/depth?symbol=BTCUSDT" in rest_url
        assert set(get_json(rest_url)) == {"lastUpdateId", "E", "T", "bids", "asks"}
        with connect(ws_url) as ws:
            assert json.loads(ws.recv(timeout=5))["stream"].startswith("btcusdt@")
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 128 + signal.SIGTERM
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
