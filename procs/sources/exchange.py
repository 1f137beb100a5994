"""The local exchange: a Binance-protocol server on 127.0.0.1 for tests and the live-mode demo.

One port serves both halves of Binance's market-data API, as `wss://stream.binance.com:9443` and
`https://api.binance.com` (or `fstream`/`fapi` for USD-M futures) would:

- WebSocket, combined streams: `GET /stream?streams=btcusdt@depth@100ms/btcusdt@trade/...`; every frame
  is a text frame `{"stream":"<name>","data":{...}}`, the stream named as the client subscribed it.
  Raw streams (`/ws/<name>`, frames are the bare payload) and the live `SUBSCRIBE` / `UNSUBSCRIBE` /
  `LIST_SUBSCRIPTIONS` requests work too. Kinds: `@depth`, `@depth@100ms`, `@depth@0ms` (all three
  get the exchange's diffs, aggregated every `depth_interval_ms`), `@trade`, `@aggTrade`, `@bookTicker`;
  a capture may add any kind it holds (`@kline_1m`, ...). Stream symbols are lower-case, as on Binance;
  an unknown stream is refused (HTTP 400 naming it) rather than silently serving nothing. The server
  pings every `ping_interval_s` (Binance: 20 s) and answers pings.
- REST, plain HTTP GETs answered from websockets' `process_request` hook: spot
  `/api/v3/depth?symbol=BTCUSDT&limit=1000` → `{"lastUpdateId","bids","asks"}`, USD-M `/fapi/v1/depth`
  → `{"lastUpdateId","E","T","bids","asks"}`; also `/api/v3/ping`, `/api/v3/time` (`/fapi/v1/...`).
  The snapshot is the book *now*: its lastUpdateId is the last event applied, usually later than the
  last diff sent (diffs are aggregated), so a client must buffer diffs and bridge, exactly as on
  Binance. Errors are Binance's: unknown symbol → 400 `{"code":-1121,"msg":"Invalid symbol."}`.

Sources. `source="sim"`: procs/sources/simulator.py stepped in simulated time by a producer task that
runs every event due by the clock (`run_until`), so the market is never ahead of real time and a REST
snapshot is the current book; messages go out when due (1 ms granularity) at `speed` x real time; a
scheduled tick costs well under a millisecond, so it does not fall behind at the default rates.
Timestamps ("E") start at the wall clock when the exchange starts. `source=<capture path>`: the capture's
WebSocket lines are replayed at `speed` from the moment the first client connects (or at server start
with `replay_start="server"`); its snapshot lines are not sent, they seed the exchange's own book
(a dict per symbol, kept by applying the capture's diffs as they go out), which the REST endpoint
serves. Each symbol's first snapshot is loaded before the replay starts, so a client can sync at any
time; until the replay reaches it that snapshot is ahead of the diffs, as a REST answer may be.

Ground truth for tests: `truth(symbol)` is the exchange's book as of the last diff it published
(after `pause()`, which flushes every pending diff, that is everything a client can have). Faults
change only what goes on the wire, never the book: `drop_diff`, `reorder_diffs`, `send_malformed`,
`close_connections`, `server_shutdown`, `snapshot_delay_ms`, and seeded per-diff random rates. Every
fault injected is listed by `faults()`. All public methods are thread-safe: they run on the exchange's
own event loop (a background thread) and wait for it.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import http
import inspect
import os
import random
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from procs.sources.replay import CaptureReader, scan_symbols
from procs.sources.simulator import SimParams, Simulator

#: Market flavours: Binance spot, or USD-M futures.
MARKETS: tuple[str, ...] = ("spot", "usdm")
#: REST paths per market.
DEPTH_PATH = {"spot": "/api/v3/depth", "usdm": "/fapi/v1/depth"}
PING_PATH = {"spot": "/api/v3/ping", "usdm": "/fapi/v1/ping"}
TIME_PATH = {"spot": "/api/v3/time", "usdm": "/fapi/v1/time"}
#: Depth `limit` when absent, and its ceiling (Binance: spot 100 / 5000, futures 500 / 1000).
DEPTH_LIMIT_DEFAULT = {"spot": 100, "usdm": 500}
DEPTH_LIMIT_MAX = {"spot": 5000, "usdm": 1000}
#: Stream kinds that name the diff-depth stream; all get the same diffs.
DEPTH_ALIASES: tuple[str, ...] = ("depth", "depth@100ms", "depth@0ms")
#: Other stream kinds the simulator serves.
SIM_KINDS: tuple[str, ...] = ("trade", "aggTrade", "bookTicker")
#: Kinds of malformed frame `send_malformed` can send; "mixed" cycles through them.
MALFORMED_KINDS: tuple[str, ...] = ("truncated", "not_json", "bad_number", "binary")
#: How `close_connections` ends connections.
CLOSE_MODES: tuple[str, ...] = ("abort", "close")
#: When a capture replay starts.
REPLAY_STARTS: tuple[str, ...] = ("first_client", "server")
#: Counter names of `stats`, in order.
STAT_NAMES: tuple[str, ...] = (
    "connections", "clients", "disconnects", "frames_sent", "messages", "diffs", "diffs_sent", "diffs_dropped",
    "diffs_reordered", "malformed_sent", "snapshots_served", "http_errors", "closes", "shutdown_events",
    "subscribe_requests", "slow_client_closes", "late_messages", "capture_done", "capture_bad_lines")
#: Producer granularity: messages due within this are sent in one batch.
TICK_S = 0.001
#: Longest producer sleep, so pause/stop/clock changes are seen promptly.
MAX_SLEEP_S = 0.05
#: A message sent later than this after its due time counts in stats["late_messages"].
LATE_NS = 100_000_000
#: Frames queued for one client before it is cut off as too slow (Binance drops slow consumers too).
CLIENT_QUEUE_MAX = 1 << 16
#: Capture lines read ahead to find every symbol's first snapshot before the replay starts.
SCAN_LINES = 1_000_000
#: Binance's errors.
ERR_INVALID_SYMBOL = {"code": -1121, "msg": "Invalid symbol."}
ERR_NO_SYMBOL = {"code": -1102, "msg": "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."}
ERR_BAD_SYMBOL = {"code": -1100, "msg": "Illegal characters found in parameter 'symbol'; legal range is "
                  "'^[A-Z0-9-_.]{1,20}$'."}
ERR_BAD_LIMIT = {"code": -1100, "msg": "Illegal characters found in parameter 'limit'; legal range is '^[0-9]{1,20}$'."}
ERR_NOT_READY = {"code": -1001, "msg": "Internal error; unable to process your request. Please try again."}
#: What a proxy in front of an exchange sends on a bad day: text, not JSON.
NOT_JSON = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
#: A binary frame (Binance's JSON streams send text only), not valid UTF-8 either.
BINARY_JUNK = b"\x00\x01\xfe\xff binary frame \x80\x81"

_PREFIX = b'{"stream":"'
_SYMBOL_RE = re.compile(r"[A-Z0-9\-_.]{1,20}")
_DATA_SEP = b'","data":'

Level = tuple[str, str]


class LevelBook:
    """A price-level book built from Binance depth messages: the strings as sent, sorted by value when read.

    Used for the capture's current book and for the simulator's ground truth. `u` is the update id the
    book is at; `E`/`T` the times of the last message applied (USD-M snapshots repeat them).
    """

    def __init__(self) -> None:
        self.sides: tuple[dict[float, Level], dict[float, Level]] = ({}, {})
        self.u = 0
        self.E = 0
        self.T = 0
        self.ready = False

    def load_snapshot(self, data: dict) -> None:
        """Replace the book by a REST depth answer."""
        for side, key in zip(self.sides, ("bids", "asks"), strict=True):
            side.clear()
            for p, q in data[key]:
                if float(q):
                    side[float(p)] = (p, q)
        self.u = int(data["lastUpdateId"])
        self.E = int(data.get("E", self.E))
        self.T = int(data.get("T", self.T))
        self.ready = True

    def apply_diff(self, d: dict) -> bool:
        """Apply a depthUpdate unless it is older than the book (u < book u; an equal u changes nothing)."""
        if not self.ready or d["u"] < self.u:
            return False
        for side, key in zip(self.sides, ("b", "a"), strict=True):
            for p, q in d[key]:
                if float(q):
                    side[float(p)] = (p, q)
                else:
                    side.pop(float(p), None)  # deleting a level the book never had is normal
        self.u = d["u"]
        self.E = d.get("E", self.E)
        self.T = d.get("T", self.T)
        return True

    def levels(self, side: int, limit: int | None = None) -> list[Level]:
        """(price, qty) strings of a side (0 bids, 1 asks), best first, at most `limit`."""
        s = self.sides[side]
        keys = sorted(s, reverse=side == 0)
        return [s[k] for k in (keys if limit is None else keys[:limit])]

    def snapshot(self, limit: int, market: str) -> dict:
        """The book as Binance's REST depth answer."""
        bids = [list(x) for x in self.levels(0, limit)]
        asks = [list(x) for x in self.levels(1, limit)]
        if market == "usdm":
            return {"lastUpdateId": self.u, "E": self.E, "T": self.T, "bids": bids, "asks": asks}
        return {"lastUpdateId": self.u, "bids": bids, "asks": asks}


class _SymState:
    """Per-symbol exchange state: the book, the wire position, and the armed faults."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.book = LevelBook()
        self.sent_u = 0  # u of the last diff that went on the wire
        self.drop = 0  # diffs still to drop
        self.reorder = 0  # swaps still to do
        self.held: tuple[bytes, int, dict] | None = None  # (raw, name end, data) of a diff held for a swap


class _Client:
    """One WebSocket connection: its subscriptions and its outgoing queue, drained by a writer task."""

    def __init__(self, cid: int, ws: ServerConnection, raw_mode: bool) -> None:
        self.id = cid
        self.ws = ws
        self.raw = raw_mode  # /ws: bare payloads, no {"stream","data"} wrapper
        self.names: list[str] = []  # subscribed stream names, in order
        self.queue: asyncio.Queue[tuple[bytes, bool]] = asyncio.Queue()
        self.busy = False  # a frame is being written
        self.frames = 0
        self.closing = False
        self.writer: asyncio.Task | None = None


def parse_stream(name: str, symbols: Sequence[str], any_kind: bool = False) -> tuple[str, str]:
    """(SYMBOL, kind) of a stream name; the kind is "depth" for every diff-depth alias.

    `any_kind` accepts any kind (a capture may hold kline, partial depth, ...). Raises ValueError naming
    the stream, what was expected and what was found.
    """
    sym, sep, kind = name.partition("@")
    if not sep or not sym or not kind:
        raise ValueError(f"stream {name!r}: expected <symbol>@<kind> found no symbol or kind")
    if sym != sym.lower():
        raise ValueError(f"stream {name!r}: expected a lower-case symbol found={sym!r}")
    if kind in DEPTH_ALIASES or (any_kind and kind.startswith("depth@")):
        kind = "depth"
    elif kind not in SIM_KINDS and not (any_kind and kind.replace("_", "").replace("@", "").isalnum()):
        raise ValueError(f"stream {name!r}: expected kind in {[*DEPTH_ALIASES, *SIM_KINDS]} found={kind!r}")
    if sym.upper() not in symbols:
        raise ValueError(f"stream {name!r}: expected symbol in {[s.lower() for s in symbols]} found={sym!r}")
    return sym.upper(), kind


def capture_market(path: str | os.PathLike[str], max_lines: int = SCAN_LINES) -> str | None:
    """"usdm" if the capture's first depthUpdate has "pu", "spot" if it has none, None without diffs."""
    for i, (_, raw) in enumerate(CaptureReader(path)):
        if i >= max_lines:
            break
        if b'"depthUpdate"' in raw:
            try:
                d = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            d = d.get("data", d)
            return "usdm" if "pu" in d else "spot"
    return None


def _json_response(status: int, obj: Any) -> Response:
    body = orjson.dumps(obj)
    st = http.HTTPStatus(status)
    headers = Headers([("Date", email.utils.formatdate(usegmt=True)), ("Connection", "close"),
                       ("Content-Type", "application/json;charset=UTF-8"), ("Content-Length", str(len(body)))])
    return Response(st.value, st.phrase, headers, body)


class LocalExchange:
    """A Binance-protocol market-data server on loopback; see the module docstring.

    Use as a context manager (or `start()` / `stop()`). `symbols` are upper-case names (for a capture:
    the subset to serve, all of the capture's when empty). Fault rates are per depth diff, drawn from
    `random.Random(fault_seed if given else seed)`.
    """

    def __init__(self, symbols: Sequence[str] | None = None, *, market: str = "spot",
                 source: str | os.PathLike[str] = "sim", seed: int = 7, speed: float = 1.0,
                 depth_interval_ms: int = 100, rate_scale: float = 1.0, anomalies_per_min: float = 2.0,
                 host: str = "127.0.0.1", port: int = 0, snapshot_delay_ms: int = 0, drop_rate: float = 0.0,
                 reorder_rate: float = 0.0, malformed_rate: float = 0.0, fault_seed: int | None = None,
                 ping_interval_s: float | None = 20.0, ping_timeout_s: float | None = 60.0,
                 replay_start: str = "first_client", shutdown_close_s: float = 1.0) -> None:
        if market not in MARKETS:
            raise ValueError(f"market: expected one of {MARKETS} found={market!r}")
        if not speed > 0:
            raise ValueError(f"speed: expected > 0 found={speed}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port: expected 0..65535 found={port}")
        for name, rate in (("drop_rate", drop_rate), ("reorder_rate", reorder_rate),
                           ("malformed_rate", malformed_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1] found={rate}")
        if replay_start not in REPLAY_STARTS:
            raise ValueError(f"replay_start: expected one of {REPLAY_STARTS} found={replay_start!r}")
        if shutdown_close_s < 0:
            raise ValueError(f"shutdown_close_s: expected >= 0 found={shutdown_close_s}")
        self.market = market
        self.speed = float(speed)
        self.seed = seed
        self.host = host
        self._port_wanted = port
        self.depth_interval_ms = depth_interval_ms
        self.rate_scale = rate_scale
        self.anomalies_per_min = anomalies_per_min
        self.drop_rate = drop_rate
        self.reorder_rate = reorder_rate
        self.malformed_rate = malformed_rate
        self.ping_interval_s = ping_interval_s
        self.ping_timeout_s = ping_timeout_s
        self.replay_start = replay_start
        self.shutdown_close_s = shutdown_close_s
        self.snapshot_delay_ms = snapshot_delay_ms
        self._frng = random.Random(seed if fault_seed is None else fault_seed)
        wanted = [s.upper() for s in (symbols or [])]
        self.capture: Path | None = None
        self._snaps: dict[str, dict] = {}
        self._bare_symbol: str | None = None
        if str(source) == "sim":
            if not wanted:
                raise ValueError("symbols: expected at least one symbol for source='sim' found none")
            # validated here, so a bad value fails in the constructor, not in the server thread
            SimParams(symbols=wanted, seed=seed, anomalies_per_min=anomalies_per_min,
                      depth_interval_ms=depth_interval_ms, rate_scale=rate_scale, market=market)
            self.symbols = wanted
        else:
            self.capture = Path(source)
            if not self.capture.is_file():
                raise FileNotFoundError(f"source: expected 'sim' or a capture file found={str(source)!r} "
                                        "(no such file)")
            self.symbols = self._scan_capture(wanted)
        self._states = {s: _SymState(s) for s in self.symbols}
        self._stats = dict.fromkeys(STAT_NAMES, 0)
        self._lag_ms_max = 0.0
        self._faults: list[dict] = []
        self._clients: dict[int, _Client] = {}
        self._routes: dict[tuple[str, str], dict[_Client, list[bytes]]] = {}
        self._keys: dict[bytes, tuple[str, str] | None] = {}  # source stream name -> route key (None: not served)
        self._next_cid = 1
        self._tasks: set[asyncio.Future] = set()
        self._sim: Simulator | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Server | None = None
        self._port = 0
        self._ready = threading.Event()
        self._finished = threading.Event()
        self._startup_error: BaseException | None = None
        self._producer_error: str | None = None
        self._stop_event: asyncio.Event | None = None
        self._resumed: asyncio.Event | None = None
        self._first_client: asyncio.Event | None = None
        self._paused = False
        self._paused_at = 0
        self._base_ns = 0

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> LocalExchange:
        """Start the server thread and wait until it listens (raises what went wrong, e.g. port in use)."""
        if self._thread is not None:
            raise RuntimeError("LocalExchange.start(): already started (one start per instance)")
        self._thread = threading.Thread(target=self._thread_main, name="local-exchange", daemon=True)
        self._thread.start()
        if not self._ready.wait(30.0):
            raise RuntimeError("LocalExchange.start(): the server thread did not come up within 30 s")
        if self._startup_error is not None:
            self._thread.join(5.0)
            raise self._startup_error
        return self

    def stop(self) -> None:
        """Close every connection and the port, end the thread; raises if the producer had failed."""
        t = self._thread
        if t is None or self._loop is None:
            return
        if t.is_alive() and self._stop_event is not None:
            self._loop.call_soon_threadsafe(self._stop_event.set)
        t.join(20.0)
        if t.is_alive():
            raise RuntimeError("LocalExchange.stop(): the server thread did not end within 20 s")
        if self._producer_error:
            raise RuntimeError(f"LocalExchange: the market producer failed:\n{self._producer_error}")

    def __enter__(self) -> LocalExchange:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Listening and producing (False before start, after stop, or after a producer failure)."""
        return self._ready.is_set() and self._startup_error is None and self._thread is not None \
            and self._thread.is_alive()

    @property
    def port(self) -> int:
        return self._port

    @property
    def ws_url(self) -> str:
        """Base WebSocket URL, e.g. ws://127.0.0.1:PORT (append /stream?streams=...)."""
        self._need_running()
        return f"ws://{self.host}:{self._port}"

    @property
    def rest_url(self) -> str:
        """Base REST URL, e.g. http://127.0.0.1:PORT (append /api/v3/depth?... or /fapi/v1/depth?...)."""
        self._need_running()
        return f"http://{self.host}:{self._port}"

    @property
    def stats(self) -> dict[str, float]:
        """Counters, plus lag_ms_max (the latest any message went out after its due time, in ms).

        connections (accepted in total) / clients (now) / disconnects; frames_sent (every frame written,
        replies and junk included); messages (source messages for served symbols); diffs (depth diffs
        made) / diffs_sent / diffs_dropped / diffs_reordered (2 per swap); malformed_sent (frames);
        snapshots_served / http_errors; closes (connections the server ended: close_connections and
        server_shutdown) / shutdown_events; subscribe_requests; slow_client_closes (cut off with
        CLIENT_QUEUE_MAX frames queued); late_messages (sent more than 100 ms late); capture_done (1 when
        a replay has sent its last line) / capture_bad_lines (lines skipped: not JSON, or a snapshot or
        diff missing its fields).
        """
        d: dict[str, float] = dict(self._stats)
        d["lag_ms_max"] = round(self._lag_ms_max, 3)
        return d

    @property
    def snapshot_delay_ms(self) -> int:
        """Delay added to every REST answer (the snapshot is taken on arrival, sent after the delay)."""
        return self._snapshot_delay_ms

    @snapshot_delay_ms.setter
    def snapshot_delay_ms(self, ms: int) -> None:
        if not 0 <= ms <= 30_000:
            raise ValueError(f"snapshot_delay_ms: expected 0..30000 found={ms}")
        self._snapshot_delay_ms = int(ms)  # one attribute store: safe from any thread

    def wait_finished(self, timeout: float | None = None) -> bool:
        """Capture mode: wait until the replay has sent its last line (sim mode never finishes)."""
        return self._finished.wait(timeout)

    def wait_clients(self, n: int, timeout: float = 5.0) -> bool:
        """Wait until at least `n` WebSocket clients are connected and subscribed."""
        deadline = time.monotonic() + timeout
        while self._stats["clients"] < n:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.002)
        return True

    # -- ground truth and control (thread-safe) -----------------------------------------------------
    def truth(self, symbol: str) -> tuple[int, list[Level], list[Level]]:
        """(last_u, bids, asks) of the exchange's book as of the last diff published, levels best first as
        (price, qty) decimal strings exactly as on the wire. Faults never alter it."""
        return self._call(self._truth, symbol)

    def pause(self) -> None:
        """Flush every pending diff (and any diff held for a swap), stop the event flow, and return once
        every client's queue is written out. A REST snapshot taken while paused equals `truth()`."""
        self._call(self._pause)

    def resume(self) -> None:
        """Restart the event flow where it stopped (the paused time is skipped, not caught up)."""
        self._call(self._resume)

    def drop_diff(self, symbol: str, n: int = 1) -> None:
        """Drop the next `n` depth diffs of `symbol` on the wire (spot clients see U > last u + 1, futures
        clients pu != last u). The book still applies them."""
        if n < 1:
            raise ValueError(f"drop_diff: n expected >= 1 found={n}")
        self._call(self._arm, symbol, "drop", n)

    def reorder_diffs(self, symbol: str) -> None:
        """Swap the next two depth diffs of `symbol` on the wire."""
        self._call(self._arm, symbol, "reorder", 1)

    def close_connections(self, mode: str = "abort", code: int = 1001, reason: str = "close_connections") -> int:
        """End every client connection: "abort" drops the TCP connection with no close frame, "close" sends
        a close frame (`code`, `reason`). Returns how many."""
        if mode not in CLOSE_MODES:
            raise ValueError(f"close_connections: mode expected one of {CLOSE_MODES} found={mode!r}")
        return self._call(self._close_all, mode, code, reason)

    def send_malformed(self, n: int = 1, kind: str = "mixed") -> int:
        """Send `n` malformed frames to every client; returns the frames sent. Kinds (MALFORMED_KINDS):
        "truncated" (the first half of a depthUpdate frame), "not_json" (a proxy's HTML error page),
        "bad_number" (a well-formed depthUpdate of the next update id whose quantity is "1.2.3"),
        "binary" (a binary frame); "mixed" cycles through them."""
        if n < 1:
            raise ValueError(f"send_malformed: n expected >= 1 found={n}")
        if kind != "mixed" and kind not in MALFORMED_KINDS:
            raise ValueError(f"send_malformed: kind expected 'mixed' or one of {MALFORMED_KINDS} found={kind!r}")
        return self._call(self._malformed_all, n, kind)

    def server_shutdown(self, close_after_s: float | None = None, wrapped: bool = False) -> int:
        """Send Binance's serverShutdown event to every client, then close them (close frame 1001) after
        `close_after_s` (default: the constructor's shutdown_close_s). Returns how many clients.

        The frame is `{"e":"serverShutdown","E":<ms>}`: Binance's stream docs announce the event without
        showing its payload, so this is the bare event; `wrapped=True` sends the WebSocket API's documented
        form `{"event":{"e":"serverShutdown","E":<ms>}}` instead.
        """
        delay = self.shutdown_close_s if close_after_s is None else close_after_s
        if delay < 0:
            raise ValueError(f"server_shutdown: close_after_s expected >= 0 found={delay}")
        return self._call(self._shutdown_all, delay, wrapped)

    def faults(self) -> list[dict]:
        """Every fault injected so far, in order: {"fault": "drop"|"reorder"|"malformed"|"close"|"shutdown", ...}."""
        return list(self._faults)

    def client_info(self) -> list[dict]:
        """Per connected client: id, peer, streams, frames sent, keepalive latency (ms; 0 before a pong)."""
        return self._call(self._client_info)

    # -- thread plumbing ---------------------------------------------------------------------------
    def _need_running(self) -> None:
        if self._loop is None or not self._ready.is_set() or self._startup_error is not None:
            raise RuntimeError("LocalExchange is not running: call start() or use it as a context manager")

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn` (plain or async) on the exchange's loop and return its result."""
        self._need_running()
        loop = self._loop
        assert loop is not None
        if self._thread is not None and threading.get_ident() == self._thread.ident:
            res = fn(*args)
            if inspect.isawaitable(res):
                raise RuntimeError(f"{fn.__name__}: cannot wait for the exchange from its own thread")
            return res
        if not self._thread or not self._thread.is_alive():
            raise RuntimeError("LocalExchange is stopped")

        async def run() -> Any:
            res = fn(*args)
            return await res if inspect.isawaitable(res) else res

        return asyncio.run_coroutine_threadsafe(run(), loop).result(60.0)

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # handed to start(), which re-raises it
            if not self._ready.is_set():
                self._startup_error = exc
                self._ready.set()
            else:
                self._producer_error = self._producer_error or traceback.format_exc()
        finally:
            loop.close()

    async def _main(self) -> None:
        self._stop_event = asyncio.Event()
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._first_client = asyncio.Event()
        if self.capture is None:
            self._start_sim()
        else:
            for sym, snap in self._snaps.items():
                self._states[sym].book.load_snapshot(snap)
        self._server = await serve(
            self._handler, self.host, self._port_wanted, process_request=self._process_request,
            compression=None,  # Binance's streams are uncompressed; deflate per frame would cost CPU
            ping_interval=self.ping_interval_s, ping_timeout=self.ping_timeout_s, close_timeout=2.0,
            open_timeout=60.0,  # covers a delayed REST answer, which runs inside the handshake
            max_size=1 << 16, server_header="tickpipe-local-exchange")
        self._port = self._server.sockets[0].getsockname()[1]
        producer = asyncio.create_task(self._produce())
        self._ready.set()
        stop = asyncio.create_task(self._stop_event.wait())
        done, _ = await asyncio.wait([producer, stop], return_when=asyncio.FIRST_COMPLETED)
        if producer in done and producer.exception() is None:
            await stop  # the replay is over: keep serving the final book until stopped
        producer.cancel()
        stop.cancel()
        self._server.close()
        await self._server.wait_closed()
        try:
            await producer
        except asyncio.CancelledError:
            pass
        except Exception:  # reported by stop(), shown at once for a CLI user
            self._producer_error = traceback.format_exc()
            print(f"exchange: the market producer failed:\n{self._producer_error}", file=sys.stderr, flush=True)

    # -- the market --------------------------------------------------------------------------------
    def _start_sim(self) -> None:
        params = SimParams(symbols=self.symbols, seed=self.seed, anomalies_per_min=self.anomalies_per_min,
                           depth_interval_ms=self.depth_interval_ms, rate_scale=self.rate_scale,
                           start_ms=time.time_ns() // 1_000_000, market=self.market, agg_trades=True)
        sim = Simulator(params)
        sim.run_until(0)  # the warm-up: the book is settled before anyone connects
        for sym, st in self._states.items():
            st.book.load_snapshot(sim.book_snapshot(sym, 1 << 30))  # the truth starts as the whole book
            st.sent_u = st.book.u
        self._sim = sim
        self._base_ns = time.monotonic_ns()

    def _sim_now(self) -> int:
        return int((time.monotonic_ns() - self._base_ns) * self.speed)

    async def _produce(self) -> None:
        if self._sim is not None:
            await self._produce_sim(self._sim)
        else:
            await self._produce_capture()

    async def _produce_sim(self, sim: Simulator) -> None:
        assert self._resumed is not None
        speed = self.speed
        base = sim.base_ns
        while True:
            if self._paused:
                await self._resumed.wait()
                continue
            t = self._sim_now()
            msgs = sim.run_until(t)
            if msgs:
                self._note_lag((t - (msgs[0][0] - base)) / speed, len(msgs))
                for _, raw in msgs:
                    self._dispatch(raw)
            wait_s = (sim.next_event_ns() - t) / speed / 1e9
            await asyncio.sleep(min(max(wait_s, TICK_S), MAX_SLEEP_S))

    async def _produce_capture(self) -> None:
        assert self._resumed is not None and self._first_client is not None and self.capture is not None
        if self.replay_start == "first_client":
            await self._first_client.wait()
        self._base_ns = time.monotonic_ns()
        speed = self.speed
        ts0: int | None = None
        n = 0
        for ts, raw in CaptureReader(self.capture):
            if ts0 is None:
                ts0 = ts
            while True:
                if self._paused:
                    await self._resumed.wait()
                    continue
                late = time.monotonic_ns() - (self._base_ns + (ts - ts0) / speed)
                if late >= 0:
                    break
                await asyncio.sleep(min(max(-late / 1e9, 0.0002), MAX_SLEEP_S))
            self._note_lag(late, 1)
            self._capture_line(raw)
            n += 1
            if n % 256 == 0:
                await asyncio.sleep(0)  # a long catch-up burst still lets the writers and REST run
        self._stats["capture_done"] = 1
        self._finished.set()

    def _note_lag(self, late_ns: float, n: int) -> None:
        ms = late_ns / 1e6
        if ms > self._lag_ms_max:
            self._lag_ms_max = ms
        if late_ns > LATE_NS:
            self._stats["late_messages"] += n

    def _scan_capture(self, wanted: list[str]) -> list[str]:
        """Symbols to serve, the market check, and each symbol's first snapshot (loaded at start)."""
        assert self.capture is not None
        found = scan_symbols(self.capture)
        if not found:
            raise ValueError(f"source: capture {self.capture} holds no symbol (no stream names, no \"s\" fields)")
        missing = [s for s in wanted if s not in found]
        if missing:
            raise ValueError(f"symbols: expected symbols of capture {self.capture.name} ({found}) found={missing}")
        symbols = wanted or found
        market = capture_market(self.capture)
        if market is not None and market != self.market:
            raise ValueError(f"market: capture {self.capture.name} holds {market} diffs "
                             f"({'with' if market == 'usdm' else 'without'} \"pu\") found market={self.market!r}")
        self._bare_symbol = found[0] if len(found) == 1 else None  # a bare snapshot line names no symbol
        for i, (_, raw) in enumerate(CaptureReader(self.capture)):
            if i >= SCAN_LINES or len(self._snaps) == len(symbols):
                break
            if b"lastUpdateId" not in raw:
                continue
            sym, data = self._snapshot_line(raw)
            if sym in symbols and sym not in self._snaps:
                self._snaps[sym] = data
        return symbols

    def _snapshot_line(self, raw: bytes) -> tuple[str | None, dict]:
        """(symbol, data) of a capture snapshot line, wrapped `<symbol>@depthSnapshot` or bare."""
        try:
            m = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None, {}
        if not isinstance(m, dict):
            return None, {}
        if "stream" in m:
            name = m["stream"]
            return (name.split("@", 1)[0].upper() if name.endswith("@depthSnapshot") else None), m.get("data", {})
        return (self._bare_symbol if "lastUpdateId" in m else None), m

    def _capture_line(self, raw: bytes) -> None:
        try:
            self._replay_line(raw.rstrip())
        except (orjson.JSONDecodeError, KeyError, ValueError, TypeError, IndexError):
            self._stats["capture_bad_lines"] += 1  # a damaged line is skipped, as the replay reader does

    def _replay_line(self, raw: bytes) -> None:
        if not raw.startswith(_PREFIX) or raw.find(_DATA_SEP, len(_PREFIX)) != raw.find(b'"', len(_PREFIX)):
            m = orjson.loads(raw)
            if not isinstance(m, dict):
                raise TypeError(f"capture line: expected a JSON object found {type(m).__name__}")
            if "stream" in m and "data" in m:
                raw = orjson.dumps({"stream": m["stream"], "data": m["data"]})  # our canonical wrapper
            elif "lastUpdateId" in m:
                if self._bare_symbol in self._states:
                    self._load_newer(self._bare_symbol, m)
                return
            else:
                raise KeyError("capture line: expected \"stream\" and \"data\", or a bare snapshot")
        end = raw.index(b'"', len(_PREFIX))
        name = raw[len(_PREFIX):end]
        if name.endswith(b"@depthSnapshot"):
            sym, data = self._snapshot_line(raw)
            if sym in self._states:
                self._load_newer(sym, data)
            return
        self._dispatch(raw)

    def _load_newer(self, sym: str, data: dict) -> None:
        """A snapshot in the capture replaces the book only if it is ahead (the first was loaded at start)."""
        st = self._states[sym]
        if int(data.get("lastUpdateId", 0)) > st.book.u:
            st.book.load_snapshot(data)

    # -- routing and faults ------------------------------------------------------------------------
    def _route_key(self, name: bytes) -> tuple[str, str] | None:
        try:
            return self._keys[name]
        except KeyError:
            pass
        sym, _, kind = name.decode().partition("@")
        if kind == "depth" or kind.startswith("depth@"):
            kind = "depth"
        key = (sym.upper(), kind) if sym.upper() in self._states else None
        self._keys[name] = key
        return key

    def _dispatch(self, raw: bytes) -> None:
        """One source message: depth diffs through the book and the faults, the rest straight to subscribers."""
        end = raw.index(b'"', len(_PREFIX))
        name = raw[len(_PREFIX):end]
        key = self._route_key(name)
        if key is None or key[1] == "depthSnapshot":
            return
        self._stats["messages"] += 1
        if key[1] == "depth":
            self._on_diff(key, raw, end)
        else:
            self._send(key, raw, end)

    def _on_diff(self, key: tuple[str, str], raw: bytes, end: int) -> None:
        d = orjson.loads(raw)["data"]
        st = self._states[key[0]]
        st.book.apply_diff(d)
        self._stats["diffs"] += 1
        frng = self._frng
        if st.drop > 0 or (self.drop_rate and frng.random() < self.drop_rate):
            st.drop = max(st.drop - 1, 0)
            self._stats["diffs_dropped"] += 1
            self._faults.append({"fault": "drop", "symbol": key[0], "U": d["U"], "u": d["u"], "pu": d.get("pu")})
            return
        if st.held is not None:
            held_raw, held_end, held = st.held
            st.held = None
            self._send_diff(key, st, raw, end, d)
            self._send_diff(key, st, held_raw, held_end, held)
            self._stats["diffs_reordered"] += 2
            self._faults.append({"fault": "reorder", "symbol": key[0], "first": [held["U"], held["u"]],
                                 "second": [d["U"], d["u"]]})
            return
        if st.reorder > 0 or (self.reorder_rate and frng.random() < self.reorder_rate):
            st.reorder = max(st.reorder - 1, 0)
            st.held = (raw, end, d)
            return
        if self.malformed_rate and frng.random() < self.malformed_rate:
            kind = MALFORMED_KINDS[frng.randrange(len(MALFORMED_KINDS))]
            for client in self._routes.get(key, {}):
                self._push(client, *self._malformed_frame(client, kind, key[0]))
                self._stats["malformed_sent"] += 1
            self._faults.append({"fault": "malformed", "kind": kind, "symbol": key[0]})
        self._send_diff(key, st, raw, end, d)

    def _send_diff(self, key: tuple[str, str], st: _SymState, raw: bytes, end: int, d: dict) -> None:
        st.sent_u = max(st.sent_u, d["u"])
        self._stats["diffs_sent"] += 1
        self._send(key, raw, end)

    def _send(self, key: tuple[str, str], raw: bytes, end: int) -> None:
        """To every subscriber of `key`, relabelled with the stream name it subscribed (or bare on /ws)."""
        subs = self._routes.get(key)
        if not subs:
            return
        name = raw[len(_PREFIX):end]
        for client, names in subs.items():
            if client.raw:
                self._push(client, raw[end + len(_DATA_SEP):-1], True)
                continue
            for sub in names:
                self._push(client, raw if sub == name else _PREFIX + sub + raw[end:], True)

    def _push(self, client: _Client, frame: bytes, text: bool) -> None:
        if client.closing:
            return
        if client.queue.qsize() >= CLIENT_QUEUE_MAX:
            client.closing = True
            self._stats["slow_client_closes"] += 1
            client.ws.transport.abort()  # a consumer this far behind is cut off, as Binance does
            return
        client.queue.put_nowait((frame, text))

    def _arm(self, symbol: str, what: str, n: int) -> None:
        st = self._state(symbol)
        if what == "drop":
            st.drop += n
        else:
            st.reorder += n

    def _state(self, symbol: str) -> _SymState:
        st = self._states.get(symbol.upper())
        if st is None:
            raise KeyError(f"symbol: expected one of {self.symbols} found={symbol!r}")
        return st

    def _truth(self, symbol: str) -> tuple[int, list[Level], list[Level]]:
        book = self._state(symbol).book
        return book.u, book.levels(0), book.levels(1)

    async def _pause(self) -> None:
        if self._paused:
            return
        self._paused = True
        self._paused_at = time.monotonic_ns()
        assert self._resumed is not None
        self._resumed.clear()
        sim = self._sim
        if sim is not None:
            for _, raw in sim.run_until(self._sim_now()) + sim.flush_pending():
                self._dispatch(raw)
        for sym, st in self._states.items():
            if st.held is not None:  # nothing came to swap with: send it late rather than never
                held_raw, held_end, held = st.held
                st.held = None
                self._send_diff((sym, "depth"), st, held_raw, held_end, held)
        await self._drain(10.0)

    def _resume(self) -> None:
        if not self._paused:
            return
        self._base_ns += time.monotonic_ns() - self._paused_at
        self._paused = False
        assert self._resumed is not None
        self._resumed.set()

    async def _drain(self, timeout_s: float) -> None:
        """Until every live client's queue is written to its socket (or the timeout)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(c.closing or (c.queue.empty() and not c.busy) for c in self._clients.values()):
                return
            await asyncio.sleep(0.001)

    def _close_all(self, mode: str, code: int, reason: str) -> int:
        clients = [c for c in self._clients.values() if not c.closing]
        for c in clients:
            c.closing = True
            if mode == "abort":
                c.ws.transport.abort()
            else:
                self._spawn(c.ws.close(code, reason))
        self._stats["closes"] += len(clients)
        self._faults.append({"fault": "close", "mode": mode, "clients": len(clients)})
        return len(clients)

    def _shutdown_all(self, delay_s: float, wrapped: bool) -> int:
        ev = {"e": "serverShutdown", "E": time.time_ns() // 1_000_000}
        frame = orjson.dumps({"event": ev} if wrapped else ev)
        clients = [c for c in self._clients.values() if not c.closing]
        for c in clients:
            self._push(c, frame, True)
        self._stats["shutdown_events"] += len(clients)
        self._faults.append({"fault": "shutdown", "clients": len(clients), "frame": frame.decode()})
        assert self._loop is not None
        self._loop.call_later(delay_s, self._close_after_shutdown, clients)
        return len(clients)

    def _spawn(self, coro: Any) -> None:
        """A fire-and-forget task, referenced until done (the loop keeps only weak references)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _close_after_shutdown(self, clients: list[_Client]) -> None:
        for c in clients:
            if not c.closing and c.id in self._clients:
                c.closing = True  # no new frames; what is queued (the event at least) still goes out
                self._stats["closes"] += 1
                self._spawn(self._close_when_written(c, 1001, "server shutdown"))

    async def _close_when_written(self, c: _Client, code: int, reason: str) -> None:
        deadline = time.monotonic() + 5.0
        while (not c.queue.empty() or c.busy) and time.monotonic() < deadline and c.id in self._clients:
            await asyncio.sleep(0.001)
        await c.ws.close(code, reason)

    def _malformed_all(self, n: int, kind: str) -> int:
        sent = 0
        for c in list(self._clients.values()):
            for i in range(n):
                k = MALFORMED_KINDS[i % len(MALFORMED_KINDS)] if kind == "mixed" else kind
                self._push(c, *self._malformed_frame(c, k, None))
                sent += 1
        self._stats["malformed_sent"] += sent
        self._faults.append({"fault": "malformed", "kind": kind, "frames": sent})
        return sent

    def _malformed_frame(self, client: _Client, kind: str, symbol: str | None) -> tuple[bytes, bool]:
        """(payload, is_text) of one malformed frame, shaped for `client` (its stream name, or bare on /ws)."""
        if kind == "not_json":
            return NOT_JSON, True
        if kind == "binary":
            return BINARY_JUNK, False
        depth_subs = [n for n in client.names if n.partition("@")[2] in DEPTH_ALIASES]
        if symbol is None:
            symbol = depth_subs[0].partition("@")[0].upper() if depth_subs else \
                (client.names[0].partition("@")[0].upper() if client.names else self.symbols[0])
        name = next((n for n in depth_subs if n.partition("@")[0] == symbol.lower()), f"{symbol.lower()}@depth@100ms")
        st = self._states[symbol]
        bids = st.book.levels(0, 1)
        price = bids[0][0] if bids else "1.00"
        nxt = st.sent_u + 1  # the next id: a client must parse, not skip it as stale, to notice
        now = time.time_ns() // 1_000_000
        qty = "1.2.3" if kind == "bad_number" else "1.0"
        data: dict[str, Any] = {"e": "depthUpdate", "E": now, "s": symbol, "U": nxt, "u": nxt,
                                "b": [[price, qty]], "a": []}
        if self.market == "usdm":
            data = {"e": "depthUpdate", "E": now, "T": now, "s": symbol, "U": nxt, "u": nxt, "pu": st.sent_u,
                    "b": [[price, qty]], "a": []}
        frame = orjson.dumps(data if client.raw else {"stream": name, "data": data})
        return (frame[: len(frame) // 2] if kind == "truncated" else frame), True

    def _client_info(self) -> list[dict]:
        return [{"id": c.id, "peer": c.ws.remote_address, "streams": list(c.names), "frames": c.frames,
                 "raw": c.raw, "latency_ms": round(c.ws.latency * 1e3, 3)} for c in self._clients.values()]

    # -- HTTP and WebSocket ------------------------------------------------------------------------
    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        path = url.path
        if path == "/stream" or path == "/ws" or path.startswith("/ws/"):
            try:
                conn.tp_subs = self._ws_streams(path, url.query)  # type: ignore[attr-defined]
            except ValueError as exc:
                self._stats["http_errors"] += 1
                return _json_response(400, {"code": 2, "msg": f"Invalid request: {exc}"})
            return None  # go on with the WebSocket handshake
        q = parse_qs(url.query)
        if path == DEPTH_PATH[self.market]:
            return await self._depth(q)
        if path == PING_PATH[self.market]:
            return _json_response(200, {})
        if path == TIME_PATH[self.market]:
            return _json_response(200, {"serverTime": time.time_ns() // 1_000_000})
        self._stats["http_errors"] += 1
        return _json_response(404, {"code": -1, "msg": f"no such path {path!r}: this {self.market} exchange serves "
                                    f"{DEPTH_PATH[self.market]}, {PING_PATH[self.market]}, "
                                    f"{TIME_PATH[self.market]}, /stream, /ws"})

    def _ws_streams(self, path: str, query: str) -> tuple[list[str], bool]:
        """(stream names, raw mode) of a WebSocket URL; ValueError naming a bad one."""
        if path == "/stream":
            names = [n for n in "/".join(parse_qs(query).get("streams", [])).split("/") if n]
            raw = False
        else:
            names = [n for n in path[len("/ws"):].split("/") if n]
            raw = True
        for n in names:
            parse_stream(n, self.symbols, any_kind=self.capture is not None)
        return names, raw

    async def _depth(self, q: dict[str, list[str]]) -> Response:
        symbol = (q.get("symbol") or [""])[0]
        if not symbol:
            self._stats["http_errors"] += 1
            return _json_response(400, ERR_NO_SYMBOL)
        if not _SYMBOL_RE.fullmatch(symbol):
            self._stats["http_errors"] += 1
            return _json_response(400, ERR_BAD_SYMBOL)  # e.g. lower case, which Binance refuses too
        if symbol not in self._states:
            self._stats["http_errors"] += 1
            return _json_response(400, ERR_INVALID_SYMBOL)
        limit_s = (q.get("limit") or [""])[0]
        if limit_s and not (limit_s.isdigit() and len(limit_s) <= 20):
            self._stats["http_errors"] += 1
            return _json_response(400, ERR_BAD_LIMIT)
        limit = min(max(int(limit_s) if limit_s else DEPTH_LIMIT_DEFAULT[self.market], 1),
                    DEPTH_LIMIT_MAX[self.market])
        if self._sim is not None:
            body = self._sim.book_snapshot(symbol, limit)
        else:
            book = self._states[symbol].book
            if not book.ready:
                self._stats["http_errors"] += 1
                return _json_response(503, ERR_NOT_READY)
            body = book.snapshot(limit, self.market)
        resp = _json_response(200, body)  # taken on arrival: a delay makes it older by the time it lands
        if self._snapshot_delay_ms:
            await asyncio.sleep(self._snapshot_delay_ms / 1000)
        self._stats["snapshots_served"] += 1
        return resp

    async def _handler(self, ws: ServerConnection) -> None:
        names, raw_mode = getattr(ws, "tp_subs", ([], False))
        client = _Client(self._next_cid, ws, raw_mode)
        self._next_cid += 1
        self._clients[client.id] = client
        self._subscribe(client, names)
        self._stats["connections"] += 1
        self._stats["clients"] += 1
        assert self._first_client is not None
        self._first_client.set()
        client.writer = asyncio.create_task(self._writer(client))
        try:
            async for msg in ws:
                self._control(client, msg)
        except ConnectionClosed:
            pass
        finally:
            self._unsubscribe(client, list(client.names))
            del self._clients[client.id]
            client.closing = True
            client.writer.cancel()
            self._stats["clients"] -= 1
            self._stats["disconnects"] += 1

    async def _writer(self, client: _Client) -> None:
        q = client.queue
        ws = client.ws
        try:
            while True:
                frame, text = await q.get()
                client.busy = True
                await ws.send(frame, text=text)
                client.busy = False
                client.frames += 1
                self._stats["frames_sent"] += 1
        except ConnectionClosed:
            client.closing = True
        finally:
            client.busy = False

    def _subscribe(self, client: _Client, names: list[str]) -> None:
        for n in names:
            if n in client.names:
                continue
            key = parse_stream(n, self.symbols, any_kind=self.capture is not None)
            client.names.append(n)
            self._routes.setdefault(key, {}).setdefault(client, []).append(n.encode())

    def _unsubscribe(self, client: _Client, names: list[str]) -> None:
        for n in names:
            if n not in client.names:
                continue
            key = parse_stream(n, self.symbols, any_kind=self.capture is not None)
            client.names.remove(n)
            subs = self._routes.get(key, {})
            lst = subs.get(client, [])
            if n.encode() in lst:
                lst.remove(n.encode())
            if not lst:
                subs.pop(client, None)

    def _control(self, client: _Client, msg: str | bytes) -> None:
        """Binance's live requests: SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS; answers go in the frame queue."""
        try:
            req = orjson.loads(msg)
            if not isinstance(req, dict):
                raise orjson.JSONDecodeError("expected a JSON object", str(msg), 0)
        except orjson.JSONDecodeError as exc:
            self._push(client, orjson.dumps({"code": 3, "msg": f"Invalid JSON: {exc}"}), True)
            return
        rid = req.get("id")
        method = req.get("method")
        params = req.get("params") or []
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            self._stats["subscribe_requests"] += 1
            try:
                if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
                    raise ValueError(f"params: expected a list of stream names found={params!r}")
                for p in params:
                    parse_stream(p, self.symbols, any_kind=self.capture is not None)
            except ValueError as exc:
                self._push(client, orjson.dumps({"code": 2, "msg": f"Invalid request: {exc}", "id": rid}), True)
                return
            (self._subscribe if method == "SUBSCRIBE" else self._unsubscribe)(client, params)
            self._push(client, orjson.dumps({"result": None, "id": rid}), True)
        elif method == "LIST_SUBSCRIPTIONS":
            self._push(client, orjson.dumps({"result": list(client.names), "id": rid}), True)
        else:
            err = (f"Invalid request: unknown variant {method!r}, expected one of `SUBSCRIBE`, `UNSUBSCRIBE`, "
                   "`LIST_SUBSCRIPTIONS`")
            self._push(client, orjson.dumps({"code": 2, "msg": err, "id": rid}), True)


# -- command line -------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m procs.sources.exchange",
        description="The local exchange: a Binance-protocol market-data server (combined-stream WebSocket and "
                    "REST depth snapshots on one port) fed by the built-in market or a recorded capture.",
        epilog="examples:\n"
               "  python -m procs.sources.exchange --symbols BTCUSDT,ETHUSDT --port 9443\n"
               "  python -m procs.sources.exchange --market usdm --drop-rate 0.01 --malformed-rate 0.001\n"
               "  python -m procs.sources.exchange --capture ../shared/data/binance/usdm_4sym_20210722.lines.gz\n"
               "exit status: 0 at the end of --duration, 128+N when stopped by signal N (130 for Ctrl-C), "
               "2 on a bad option or a port that cannot be bound.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--symbols", default="",
                    help="comma-separated symbols (default BTCUSDT,ETHUSDT,SOLUSDT,BNBUSDT; with --capture: all of it)")
    ap.add_argument("--market", choices=MARKETS, default=None,
                    help="message flavour and REST paths (default spot; with --capture: the capture's)")
    ap.add_argument("--capture", metavar="PATH", default=None,
                    help="replay this <ts_ns> <json> capture (gzip or plain) instead of simulating")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    ap.add_argument("--port", type=int, default=9443, help="TCP port, 0 for any free one (default %(default)s)")
    ap.add_argument("--seed", type=int, default=7, help="simulator and fault seed (default %(default)s)")
    ap.add_argument("--speed", type=float, default=1.0, help="time factor: 1 real time, 10 ten times faster")
    ap.add_argument("--depth-interval-ms", type=int, default=100,
                    help="diff aggregation, 0 for one diff per event (default %(default)s)")
    ap.add_argument("--rate-scale", type=float, default=1.0, help="multiplier on the simulated order flow")
    ap.add_argument("--anomalies-per-min", type=float, default=2.0, help="simulated anomalies per minute")
    ap.add_argument("--drop-rate", type=float, default=0.0, help="probability that a depth diff is dropped")
    ap.add_argument("--reorder-rate", type=float, default=0.0,
                    help="probability that a depth diff is swapped with the next one of its symbol")
    ap.add_argument("--malformed-rate", type=float, default=0.0,
                    help="probability that a malformed frame goes out before a depth diff")
    ap.add_argument("--snapshot-delay-ms", type=int, default=0, help="delay added to every REST answer")
    ap.add_argument("--ping-interval", type=float, default=20.0, help="seconds between server pings (Binance: 20)")
    ap.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: until stopped)")
    ap.add_argument("--status-every", type=float, default=0.0, metavar="S",
                    help="print the counters every S seconds to stderr (0: never)")
    a = ap.parse_args(argv)
    market = a.market
    if a.capture and market is None:
        market = capture_market(a.capture) if Path(a.capture).is_file() else None
    market = market or "spot"
    symbols = [s for s in a.symbols.split(",") if s] or ([] if a.capture else ["BTCUSDT", "ETHUSDT", "SOLUSDT",
                                                                               "BNBUSDT"])
    try:
        ex = LocalExchange(symbols, market=market, source=a.capture or "sim", seed=a.seed, speed=a.speed,
                           depth_interval_ms=a.depth_interval_ms, rate_scale=a.rate_scale,
                           anomalies_per_min=a.anomalies_per_min, host=a.host, port=a.port,
                           snapshot_delay_ms=a.snapshot_delay_ms, drop_rate=a.drop_rate,
                           reorder_rate=a.reorder_rate, malformed_rate=a.malformed_rate,
                           ping_interval_s=a.ping_interval or None)
        ex.start()
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"exchange: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    got: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        got.append(signum)
        stop.set()

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, on_signal)
    low = ex.symbols[0].lower()
    kind = "aggTrade" if market == "usdm" else "trade"
    print(f"local exchange: {market}, {'capture ' + str(ex.capture) if ex.capture else 'simulated'}, "
          f"symbols {','.join(ex.symbols)}", flush=True)
    print(f"  websocket {ex.ws_url}/stream?streams={low}@depth@100ms/{low}@bookTicker/{low}@{kind}", flush=True)
    print(f"  rest      {ex.rest_url}{DEPTH_PATH[market]}?symbol={ex.symbols[0]}&limit=1000", flush=True)
    if ex.capture:
        print("  the replay starts when the first WebSocket client connects", flush=True)
    print("  Ctrl-C to stop", flush=True)
    deadline = time.monotonic() + a.duration if a.duration > 0 else None
    next_status = time.monotonic() + a.status_every if a.status_every > 0 else None
    while not stop.is_set() and ex.running:
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            break
        if next_status is not None and now >= next_status:
            next_status += a.status_every
            print(f"exchange: {ex.stats}", file=sys.stderr, flush=True)
        stop.wait(0.2)
    try:
        ex.stop()
    except RuntimeError as exc:
        print(f"exchange: {exc}", file=sys.stderr, flush=True)
        return 1
    print(f"exchange: stopped; {ex.stats}", file=sys.stderr, flush=True)
    return 128 + got[0] if got else 0


if __name__ == "__main__":
    sys.exit(main())
