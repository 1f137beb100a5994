"""Live mode against the local exchange (procs/sources/exchange.py) on loopback: the book rebuilt from the
WebSocket diffs and REST snapshots stays equal to the exchange's own book through every injected fault;
each dropped diff is detected and resynced; a killed connection reconnects.

The client side here is exactly what the feed stage runs (LiveIngest: connection, snapshots, the sync
mirror), followed by the parser and the book kernel in this process."""

from __future__ import annotations

import base64
import hashlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from procs.kernels.book import ST_LIVE, BookState
from procs.kernels.parse_json import ERR_NO_SPACE, Parser, SymbolTable, parse_fixed
from procs.sources.exchange import LocalExchange
from procs.sources.live import LiveIngest, LiveOptions, backoff_delay, wrap_snapshot
from shm.records import BOOK, FEATURES, MARKET

SYMBOLS = ["BTCUSDT", "ETHUSDT"]


class Client:
    """LiveIngest → Parser → BookState, driven by `run_until`."""

    def __init__(self, ex: LocalExchange, market: str, **kw: object) -> None:
        opts = LiveOptions(market=market, symbols=list(ex.symbols), ws_url=ex.ws_url, rest_url=ex.rest_url,
                           backoff_initial_s=0.05, backoff_max_s=0.2, snapshot_min_interval_s=0.05,
                           connect_timeout_s=5.0, **kw)  # type: ignore[arg-type]
        self.ingest = LiveIngest(opts)
        self.parser = Parser(SymbolTable(opts.symbols, auto_add=False))
        self.book = BookState(len(opts.symbols))
        self.out = np.zeros(16384, MARKET.dtype)
        self.ob = np.zeros(16384, BOOK.dtype)
        self.of = np.zeros(16384, FEATURES.dtype)
        self.buf: list[tuple[int, bytes]] = []
        self.messages = 0

    def step(self) -> int:
        self.buf.clear()
        n = self.ingest.poll(self.buf)
        k = 0
        for ts, raw in self.buf:
            r = self.parser.parse(raw, ts, self.out, k)
            if r == ERR_NO_SPACE:
                self._apply(k)
                k = 0
                r = self.parser.parse(raw, ts, self.out, 0)
            k += max(r, 0)
        self._apply(k)
        self.messages += n
        return n

    def _apply(self, k: int) -> None:
        self.ingest.after_parse(self.out, 0, k)
        if k:
            self.book.process(self.out, k, self.ob, self.of)

    def run_until(self, cond: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.step() == 0:
                if cond():
                    return
                self.ingest.wait(0.005)
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; counters {self.counters()} "
                             f"parser {self.parser.counts()}")

    def run_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.step() == 0:
                self.ingest.wait(0.005)

    def counters(self) -> dict[str, int]:
        return self.ingest.counters

    def synced(self) -> bool:
        """Every book valid and live (a diff applied after its snapshot)."""
        return all(self.book.valid(s) and self.book.status(s) == ST_LIVE and not self.ingest.mirror.need[s]
                   for s in range(len(SYMBOLS)))

    def close(self) -> None:
        self.ingest.close()


def _levels(side: object) -> list[tuple[int, int]]:
    out = []
    for p, q in side:  # type: ignore[attr-defined]
        out.append((parse_fixed(p) if isinstance(p, str) else int(p), parse_fixed(q) if isinstance(q, str) else int(q)))
    return out


def assert_books_equal(ex: LocalExchange, c: Client) -> None:
    """Pause the exchange, let the client apply everything sent, then compare every level of every book."""
    ex.pause()
    try:
        for s, sym in enumerate(ex.symbols):
            last_u, bids, asks = ex.truth(sym)
            c.run_until(lambda s=s, u=last_u: c.book.valid(s) and int(c.book.sym_state[s, 1]) >= u, 10.0,
                        f"{sym} to reach u={last_u}")
            assert int(c.book.sym_state[s, 1]) == last_u, sym
            assert c.book.levels(s, 0) == _levels(bids), f"{sym} bids differ"
            assert c.book.levels(s, 1) == _levels(asks), f"{sym} asks differ"
            assert len(bids) > 5 and len(asks) > 5
    finally:
        ex.resume()


@pytest.fixture(params=["spot", "usdm"])
def market(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def exchange(market: str) -> Iterator[LocalExchange]:
    with LocalExchange(symbols=SYMBOLS, market=market, seed=11, depth_interval_ms=50, rate_scale=3.0) as ex:
        yield ex


@pytest.fixture
def client(exchange: LocalExchange, market: str) -> Iterator[Client]:
    c = Client(exchange, market)
    c.run_until(c.synced, 15.0, "the first sync")
    yield c
    c.close()


def test_syncs_and_stays_equal_to_the_exchange(exchange: LocalExchange, client: Client) -> None:
    client.run_for(1.0)
    assert_books_equal(exchange, client)
    c = client.counters()
    assert c["gaps"] == 0 and c["reconnects"] == 0 and c["connects"] == 1
    assert c["snapshots_received"] >= len(SYMBOLS)
    assert client.book.counts()["crossed"] == 0
    assert client.parser.counts()["depth"] > 10


def test_a_dropped_diff_is_detected_and_resynced(exchange: LocalExchange, client: Client) -> None:
    for k in range(3):
        before = client.counters()
        exchange.drop_diff(SYMBOLS[k % 2])
        client.run_until(lambda b=before: client.counters()["gaps"] > b["gaps"], 10.0, "the gap")
        client.run_until(lambda b=before: client.synced() and client.counters()["snapshots_received"] >
                         b["snapshots_received"], 10.0, "the resync")
    assert client.counters()["gaps"] == 3
    assert client.book.counts()["gaps"] == 3  # each drop hit a live book, and the book saw it too
    assert_books_equal(exchange, client)


def test_reordered_diffs_resync(exchange: LocalExchange, client: Client) -> None:
    exchange.reorder_diffs(SYMBOLS[0])
    client.run_until(lambda: client.counters()["gaps"] >= 1, 10.0, "the gap from the reorder")
    client.run_until(client.synced, 10.0, "the resync")
    assert_books_equal(exchange, client)


def test_a_killed_connection_reconnects_and_resyncs(exchange: LocalExchange, client: Client) -> None:
    exchange.close_connections()
    client.run_until(lambda: client.counters()["reconnects"] >= 1 and client.ingest.src.connected, 10.0,
                     "the reconnect")
    client.run_until(client.synced, 10.0, "the resync after the reconnect")
    client.run_for(0.3)
    assert_books_equal(exchange, client)


def test_a_slow_snapshot_is_waited_for_while_diffs_buffer(exchange: LocalExchange, client: Client) -> None:
    exchange.snapshot_delay_ms = 400
    exchange.drop_diff(SYMBOLS[1])
    client.run_until(lambda: client.counters()["gaps"] >= 1, 10.0, "the gap")
    assert not client.synced()
    client.run_until(client.synced, 10.0, "the delayed resync")
    assert client.book.counts()["buffered"] > 0
    assert_books_equal(exchange, client)


def test_malformed_frames_are_counted_and_change_nothing(exchange: LocalExchange, client: Client) -> None:
    exchange.send_malformed(8)
    client.run_until(lambda: sum(v for k, v in client.parser.counts().items() if k.startswith("bad_")) +
                     client.counters()["bad_frames"] >= 4, 10.0, "the malformed frames")
    assert client.ingest.src.connected
    assert_books_equal(exchange, client)


def test_server_shutdown_moves_to_a_new_connection(exchange: LocalExchange, client: Client) -> None:
    exchange.server_shutdown()
    client.run_until(lambda: client.counters()["server_shutdowns"] == 1 and client.counters()["reconnects"] >= 1
                     and client.ingest.src.connected, 10.0, "the move after serverShutdown")
    client.run_until(client.synced, 10.0, "the resync")
    assert_books_equal(exchange, client)


def test_no_server_retries_with_backoff_then_connects() -> None:
    with LocalExchange(symbols=["BTCUSDT"], market="spot", seed=2) as ex:
        url, rest = ex.ws_url, ex.rest_url
    # the exchange is gone: the port refuses
    opts = LiveOptions(market="spot", symbols=["BTCUSDT"], ws_url=url, rest_url=rest, backoff_initial_s=0.02,
                       backoff_max_s=0.05, connect_timeout_s=1.0)
    ing = LiveIngest(opts)
    try:
        buf: list[tuple[int, bytes]] = []
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            ing.poll(buf)
            ing.wait(0.01)
        assert ing.counters["connect_failures"] >= 3
        assert not buf and not ing.src.connected
        assert ing.counters["stale_ms"] > 0  # the book was out of sync all along
    finally:
        ing.close()


def test_backoff_is_jittered_and_capped() -> None:
    import random

    rng = random.Random(1)
    ds = [backoff_delay(a, 0.5, 30.0, rng) for a in range(12) for _ in range(50)]
    assert all(0 <= d <= 30.0 for d in ds)
    assert max(ds[:50]) <= 0.5 and max(ds[-50:]) > 10  # grows with attempts, up to the cap
    assert len({round(d, 6) for d in ds[-50:]}) > 40  # jittered, not one value


def test_snapshot_wrapper_is_the_capture_convention() -> None:
    w = wrap_snapshot("BTCUSDT", b' {"lastUpdateId":5,"bids":[],"asks":[]}\n')
    assert w == b'{"stream":"btcusdt@depthSnapshot","data":{"lastUpdateId":5,"bids":[],"asks":[]}}'


def test_default_urls_and_streams() -> None:
    o = LiveOptions(market="usdm", symbols=["BTCUSDT", "ETHUSDT"])
    assert o.stream_url() == ("wss://fstream.binance.com/stream?streams=btcusdt@depth@100ms/btcusdt@bookTicker/"
                              "btcusdt@aggTrade/ethusdt@depth@100ms/ethusdt@bookTicker/ethusdt@aggTrade")
    assert o.depth_url("ethusdt") == "https://fapi.binance.com/fapi/v1/depth?symbol=ETHUSDT&limit=1000"
    s = LiveOptions(market="spot", symbols=["BTCUSDT"])
    assert s.stream_url().startswith("wss://stream.binance.com:9443/stream?streams=btcusdt@depth@100ms/")
    assert s.depth_url("BTCUSDT") == "https://api.binance.com/api/v3/depth?symbol=BTCUSDT&limit=1000"
    with pytest.raises(ValueError, match=r"field=live\.market"):
        LiveOptions(market="coinm")


def test_idle_connection_is_pinged_and_an_old_one_replaced(exchange: LocalExchange, market: str) -> None:
    c = Client(exchange, market, ping_interval_s=0.2, pong_timeout_s=5.0, max_connection_age_s=1.5)
    try:
        c.run_until(c.synced, 15.0, "the first sync")
        exchange.pause()  # nothing to receive: the client pings, the server answers
        try:
            c.run_until(lambda: c.counters()["pongs_received"] >= 1, 5.0, "a pong")
            assert c.counters()["pings_sent"] >= 1 and c.ingest.src.connected
        finally:
            exchange.resume()
        c.run_until(lambda: c.counters()["max_age_reconnects"] >= 1 and c.ingest.src.connected, 10.0,
                    "the reconnect at the maximum age")
        c.run_until(c.synced, 10.0, "the resync on the new connection")
        assert_books_equal(exchange, c)
    finally:
        c.close()


def _silent_server() -> tuple[socket.socket, threading.Event]:
    """Accepts WebSocket upgrades, then never sends or answers anything (a half-dead peer)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            lines = conn.recv(4096).decode().split("\r\n")
            key = next((ln.split(":", 1)[1].strip() for ln in lines if ln.lower().startswith("sec-websocket-key")), "")
            if not key:  # a REST snapshot request: refused
                conn.close()
                continue
            accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            held.append(conn)
        for c in held:
            c.close()

    threading.Thread(target=serve, daemon=True).start()
    return srv, stop


def test_a_silent_peer_is_dropped_after_the_pong_timeout() -> None:
    srv, stop = _silent_server()
    port = srv.getsockname()[1]
    opts = LiveOptions(market="spot", symbols=["BTCUSDT"], ws_url=f"ws://127.0.0.1:{port}",
                       rest_url=f"http://127.0.0.1:{port}", ping_interval_s=0.1, pong_timeout_s=0.2,
                       backoff_initial_s=0.01, backoff_max_s=0.02, snapshot_min_interval_s=10.0)
    ing = LiveIngest(opts)
    try:
        buf: list[tuple[int, bytes]] = []
        end = time.monotonic() + 3.0
        while time.monotonic() < end and ing.counters["reconnects"] < 2:
            ing.poll(buf)
            ing.wait(0.01)
        c = ing.counters
        assert c["pings_sent"] >= 2 and c["pongs_received"] == 0
        assert c["reconnects"] >= 2  # each connection was given up after its missing pong
    finally:
        ing.close()
        stop.set()
        srv.close()


def test_an_unknown_symbol_is_reported_and_retried_slowly(exchange: LocalExchange, market: str, caplog) -> None:  # type: ignore[no-untyped-def]
    # the streams come from `exchange`; the snapshots from another that does not list BTCUSDT (HTTP 400, -1121)
    with LocalExchange(symbols=["ETHUSDT"], market=market, seed=1) as other:
        opts = LiveOptions(market=market, symbols=["BTCUSDT", "ETHUSDT"], ws_url=exchange.ws_url,
                           rest_url=other.rest_url, snapshot_min_interval_s=0.05)
        ing = LiveIngest(opts)
        try:
            buf: list[tuple[int, bytes]] = []
            end = time.monotonic() + 5.0
            while time.monotonic() < end and (ing.counters["snapshot_failures"] == 0 or
                                              ing.counters["snapshots_received"] == 0):
                ing.poll(buf)
                ing.after_parse(None, 0, 0)
                ing.wait(0.01)
            assert ing.counters["snapshot_failures"] == 1 and ing.counters["snapshots_received"] == 1
            assert "refused the snapshot request for BTCUSDT" in caplog.text and "-1121" in caplog.text
            assert ing.src._snap_next_ok_ns[0] - time.monotonic_ns() > 50e9  # not hammered every second
        finally:
            ing.close()


def test_a_refused_handshake_says_why(exchange: LocalExchange, market: str, caplog) -> None:  # type: ignore[no-untyped-def]
    opts = LiveOptions(market=market, symbols=["BTCUSDT"], streams=["depth@100ms", "nosuchstream"],
                       ws_url=exchange.ws_url, rest_url=exchange.rest_url, backoff_initial_s=0.01)
    ing = LiveIngest(opts)
    try:
        buf: list[tuple[int, bytes]] = []
        end = time.monotonic() + 3.0
        while time.monotonic() < end and ing.counters["connect_failures"] == 0:
            ing.poll(buf)
            ing.wait(0.01)
        assert ing.counters["connect_failures"] >= 1 and not ing.src.connected
        assert "HTTP 400" in caplog.text and "nosuchstream" in caplog.text
    finally:
        ing.close()
