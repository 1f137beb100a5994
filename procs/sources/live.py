"""Live Binance market data: one combined-stream WebSocket plus REST depth snapshots, polled without blocking.

The feed calls `LiveSource.poll(out)` on every pass; it appends `(receive_ns, raw_json)` pairs and never
waits; a lost connection appears in that order as `(ts, LOST)`. The socket is read non-blocking and
decoded with websockets' Sans-I/O protocol (`ClientProtocol`), so the receive timestamp is taken the
moment `recv()` returns the bytes, before any framing or parsing, and the feed needs no thread or event
loop on its hot path. Only slow, blocking work runs in a small thread pool: the TCP + TLS + HTTP upgrade
of a new connection, and REST snapshot requests. A finished job wakes a parked feed through a pipe
that `wait()` selects on along with the socket.

REST snapshots come back wrapped as `{"stream":"<symbol>@depthSnapshot","data":<body>}`, the capture
format's convention, so the parser, the book and the recorder treat them like any other message.
Which symbols need one is the caller's decision (the feed mirrors the book's sync rules); this module
only fetches them, at most one request in flight per symbol and at most one per
`snapshot_min_interval_s`, answering HTTP 429/418 (rate limit / ban) with a longer wait.

Connection life: connect → (frames) → lost (EOF, error, missing pong, `serverShutdown`, max age) →
wait with exponential backoff and full jitter → connect again. After every (re)connect every symbol
needs a fresh snapshot: diffs were missed while down. TLS certificates are verified with the system
store (or `ca_file`); `ws://` and `http://` URLs are for the local exchange on loopback.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import select
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

#: Default endpoints per market (Binance's documented base URLs).
DEFAULT_WS = {"spot": "wss://stream.binance.com:9443", "usdm": "wss://fstream.binance.com"}
DEFAULT_REST = {"spot": "https://api.binance.com", "usdm": "https://fapi.binance.com"}
DEPTH_PATH = {"spot": "/api/v3/depth", "usdm": "/fapi/v1/depth"}
#: Streams subscribed per symbol when none are configured (USD-M has aggTrade rather than trade).
DEFAULT_STREAMS = {"spot": ("depth@100ms", "bookTicker", "trade"), "usdm": ("depth@100ms", "bookTicker", "aggTrade")}
#: Bytes asked of each recv(): a burst of frames in one syscall.
RECV_BYTES = 1 << 18
#: Wait before asking again for a snapshot the exchange refused (HTTP 400).
REFUSED_RETRY_S = 60.0
#: Snapshot requests and stale time are brought up to date at least this often (and at once on a gap).
ACCOUNT_NS = 1_000_000
#: Largest message accepted (a 5000-level snapshot is ~250 KB; frames are far smaller).
MAX_MESSAGE = 1 << 22

#: Appended by `poll` as `(ts, LOST)` where a connection was lost: messages after it come from a new
#: connection, so every book must be dropped until its next snapshot (the feed publishes KIND_RESET).
LOST = b""

#: Counter names, in export order.
LIVE_COUNTER_NAMES: tuple[str, ...] = (
    "connects", "reconnects", "connect_failures", "frames", "bytes_in", "bad_frames", "pings_sent",
    "pongs_received", "server_shutdowns", "max_age_reconnects", "snapshots_requested", "snapshots_received",
    "snapshot_failures", "rate_limited",
)


@dataclass
class LiveOptions:
    """Everything the live source needs; procs.config.LiveConfig maps onto it."""

    market: str = "spot"
    symbols: list[str] = field(default_factory=lambda: ["BTCUSDT"])
    streams: list[str] = field(default_factory=list)  #: per symbol; empty: DEFAULT_STREAMS[market]
    ws_url: str = ""  #: base URL; empty: DEFAULT_WS[market]
    rest_url: str = ""  #: base URL; empty: DEFAULT_REST[market]
    snapshot_limit: int = 1000
    connect_timeout_s: float = 10.0
    ping_interval_s: float = 20.0  #: send a ping after this long without receiving anything
    pong_timeout_s: float = 10.0  #: ...and call the connection dead if nothing arrives this long after it
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    max_connection_age_s: float = 23.5 * 3600  #: reconnect before Binance's 24 h cut, at a moment we choose
    snapshot_min_interval_s: float = 1.0
    ca_file: str = ""  #: extra CA bundle (PEM) to trust; empty: the system store

    def __post_init__(self) -> None:
        if self.market not in DEFAULT_WS:
            raise ValueError(f"field=live.market expected=one of {sorted(DEFAULT_WS)} found={self.market!r}")
        if not self.symbols:
            raise ValueError("field=live.symbols expected=at least one symbol found=[]")

    @property
    def ws_base(self) -> str:
        return (self.ws_url or DEFAULT_WS[self.market]).rstrip("/")

    @property
    def rest_base(self) -> str:
        return (self.rest_url or DEFAULT_REST[self.market]).rstrip("/")

    def stream_names(self) -> list[str]:
        per = self.streams or list(DEFAULT_STREAMS[self.market])
        return [f"{sym.lower()}@{s}" for sym in self.symbols for s in per]

    def stream_url(self) -> str:
        return f"{self.ws_base}/stream?streams={'/'.join(self.stream_names())}"

    def depth_url(self, symbol: str) -> str:
        q = urllib.parse.urlencode({"symbol": symbol.upper(), "limit": self.snapshot_limit})
        return f"{self.rest_base}{DEPTH_PATH[self.market]}?{q}"


def options_from_config(cfg: object) -> LiveOptions:
    """LiveOptions from a procs.config.LiveConfig (same field names)."""
    import dataclasses

    return LiveOptions(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(LiveOptions)})


def backoff_delay(attempt: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(max, initial * 2**attempt)] (AWS's rule), so
    clients cut off together do not come back together."""
    return rng.uniform(0.0, min(max_s, initial_s * (2 ** min(attempt, 30))))


def wrap_snapshot(symbol: str, body: bytes) -> bytes:
    """A REST depth body as the capture format's wrapped snapshot message."""
    return b'{"stream":"%s@depthSnapshot","data":%s}' % (symbol.lower().encode(), body.strip())


class SnapshotError(Exception):
    def __init__(self, msg: str, *, rate_limited: bool = False, retry_after_s: float = 0.0,
                 refused: bool = False) -> None:
        super().__init__(msg)
        self.rate_limited = rate_limited
        self.retry_after_s = retry_after_s
        self.refused = refused  # HTTP 400: the request itself is wrong (e.g. an unknown symbol)


def ssl_context(ca_file: str = "") -> ssl.SSLContext:
    """Certificates and host names verified (the default context does both); `ca_file` adds a CA."""
    ctx = ssl.create_default_context()
    if ca_file:
        ctx.load_verify_locations(cafile=ca_file)
    return ctx


def fetch_snapshot(url: str, timeout_s: float, ctx: ssl.SSLContext | None) -> bytes:
    """GET a depth snapshot; the body, or SnapshotError naming the URL and the status."""
    req = urllib.request.Request(url, headers={"User-Agent": "tickpipe", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s, context=ctx if url.startswith("https") else None) as r:
            body = r.read()
    except urllib.error.HTTPError as exc:
        retry = float(exc.headers.get("Retry-After", "0") or 0) if exc.headers else 0.0
        raise SnapshotError(f"GET {url}: HTTP {exc.code} {exc.read()[:200]!r}", rate_limited=exc.code in (418, 429),
                            retry_after_s=retry, refused=exc.code == 400) from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise SnapshotError(f"GET {url}: {exc}") from None
    if not body.lstrip().startswith(b"{") or b"lastUpdateId" not in body:
        raise SnapshotError(f"GET {url}: not a depth snapshot: {body[:200]!r}")
    return body


@dataclass
class _Conn:
    sock: socket.socket
    proto: ClientProtocol
    opened_ns: int
    early: list[tuple[int, bytes]]  # frames that came with the handshake response


def open_connection(url: str, timeout_s: float, ctx: ssl.SSLContext | None, now_ns: Callable[[], int]) -> _Conn:
    """TCP + TLS + WebSocket upgrade, blocking (run in a worker thread); the socket is returned non-blocking."""
    wsuri = parse_uri(url)
    sock = socket.create_connection((wsuri.host, wsuri.port), timeout=timeout_s)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if wsuri.secure:
            sock = (ctx or ssl_context()).wrap_socket(sock, server_hostname=wsuri.host)
        proto = ClientProtocol(wsuri, max_size=MAX_MESSAGE)
        proto.send_request(proto.connect())
        for data in proto.data_to_send():
            sock.sendall(data)
        deadline = time.monotonic() + timeout_s
        early: list[tuple[int, bytes]] = []
        while proto.state is State.CONNECTING:
            if time.monotonic() > deadline:
                raise TimeoutError(f"WebSocket handshake with {url} took more than {timeout_s} s")
            data = sock.recv(RECV_BYTES)
            ts = now_ns()
            if not data:
                proto.receive_eof()
            else:
                proto.receive_data(data)
            for ev in proto.events_received():
                if isinstance(ev, Response):
                    continue
                if ev.opcode is Opcode.TEXT:
                    early.append((ts, bytes(ev.data)))
            if not data:
                break
        if proto.state is not State.OPEN:
            exc = proto.handshake_exc
            resp = getattr(exc, "response", None)
            body = bytes(resp.body or b"")[:300] if resp is not None else b""
            # the server's own words (a Binance 400 names the bad stream)
            raise ConnectionError(f"WebSocket handshake with {url} failed: {exc}"
                                  + (f" {body.decode(errors='replace')!r}" if body else "")) from exc
        sock.setblocking(False)
        return _Conn(sock, proto, now_ns(), early)
    except BaseException:
        sock.close()
        raise


class LiveSource:
    """The connection state machine and the snapshot requests; see the module doc."""

    def __init__(self, opts: LiveOptions, *, log: logging.Logger | None = None,
                 now_ns: Callable[[], int] = time.monotonic_ns, stamp_ns: Callable[[], int] | None = None,
                 rng: random.Random | None = None) -> None:
        self.opts = opts
        self.log = log or logging.getLogger("tickpipe.live")
        self.now_ns = now_ns  # timers (backoff, pings, ages): a monotonic clock
        self.stamp_ns = stamp_ns or now_ns  # receive timestamps (the recorder writes epoch ns)
        self.rng = rng or random.Random()
        self.counters = dict.fromkeys(LIVE_COUNTER_NAMES, 0)
        self._ssl = ssl_context(opts.ca_file) if (opts.ws_base.startswith("wss") or
                                                  opts.rest_base.startswith("https")) else None
        self._pool = ThreadPoolExecutor(max_workers=3, thread_name_prefix="live-io")
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._conn: _Conn | None = None
        self._connecting: Future[_Conn] | None = None
        self._next_connect_ns = 0
        self._attempt = 0
        self._last_rx_ns = 0
        self._ping_sent_ns = 0
        self._pending_out = b""
        self._frag: list[bytes] = []
        self._frag_ts = 0
        self._snap_jobs: dict[int, Future[bytes]] = {}
        self._snap_next_ok_ns = [0] * len(opts.symbols)
        self._snap_wanted: set[int] = set()
        self._closed = False
        self._lost = False  # a connection was lost since the last poll: LOST goes out in order
        #: True from a (re)connect until the caller has taken `reconnected()`: every book needs a snapshot.
        self._reconnected = False

    # -- the feed's side ------------------------------------------------------------------------------
    def poll(self, out: list[tuple[int, bytes]]) -> int:
        """Do whatever is ready (read frames, finish a connect or a snapshot, send pongs); append the messages
        received to `out`; never blocks. Returns the number appended."""
        n0 = len(out)
        now = self.now_ns()
        conn = self._conn
        if conn is not None:
            self._read(conn, out)
            if self._conn is not None:
                self._keepalive(self._conn, now)
        elif self._connecting is not None:
            if self._connecting.done():
                self._finish_connect(out)
        elif not self._closed and now >= self._next_connect_ns:
            self._start_connect()
        if self._lost:
            self._lost = False
            out.append((self.stamp_ns(), LOST))
        if self._snap_jobs or self._snap_wanted:
            self._snapshots(out, now)
        return len(out) - n0

    def request_snapshot(self, sym: int) -> None:
        """Ask for a fresh REST snapshot of symbol index `sym` (no-op while one is in flight: it is fresh)."""
        if sym not in self._snap_jobs:
            self._snap_wanted.add(sym)

    def snapshot_in_flight(self, sym: int) -> bool:
        return sym in self._snap_jobs or sym in self._snap_wanted

    def reconnected(self) -> bool:
        """Whether a new connection opened since the last call (the caller resyncs every book)."""
        r = self._reconnected
        self._reconnected = False
        return r

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def wait(self, timeout_s: float) -> None:
        """Sleep until data arrives, a job finishes, or `timeout_s` passes (the feed's parker)."""
        conn = self._conn
        if conn is not None and isinstance(conn.sock, ssl.SSLSocket) and conn.sock.pending():
            return  # decrypted bytes already buffered: select() would not see them
        if conn is None and self._connecting is None and not self._closed:
            timeout_s = min(timeout_s, max(0.0, (self._next_connect_ns - self.now_ns()) * 1e-9))
        fds = [self._wake_r] if conn is None else [self._wake_r, conn.sock.fileno()]
        try:
            r, _, _ = select.select(fds, [], [], timeout_s)
        except (OSError, ValueError):
            return
        if self._wake_r in r:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass

    def close(self) -> None:
        self._closed = True
        if self._conn is not None:
            self._drop("closing", reconnect=False)
        for fut in [self._connecting, *self._snap_jobs.values()]:
            if fut is not None:
                fut.cancel()
        if self._connecting is not None and self._connecting.done() and not self._connecting.cancelled():
            exc = self._connecting.exception()
            if exc is None:
                self._connecting.result().sock.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- connection ------------------------------------------------------------------------------------
    def _wake(self, _fut: Future | None = None) -> None:
        with contextlib.suppress(OSError):  # pipe full (a wake is pending anyway) or closed
            os.write(self._wake_w, b"!")

    def _start_connect(self) -> None:
        url = self.opts.stream_url()
        self.log.info("live: connecting to %s (attempt %d)", url.split("?")[0], self._attempt + 1)
        self._connecting = self._pool.submit(open_connection, url, self.opts.connect_timeout_s, self._ssl,
                                             self.stamp_ns)
        self._connecting.add_done_callback(self._wake)

    def _finish_connect(self, out: list[tuple[int, bytes]]) -> None:
        fut = self._connecting
        self._connecting = None
        assert fut is not None
        try:
            conn = fut.result()
        except Exception as exc:  # any failure to connect is retried, never fatal
            self.counters["connect_failures"] += 1
            self._schedule_reconnect(f"connect failed: {exc}")
            return
        self._conn = conn
        self.counters["connects"] += 1
        if self.counters["connects"] > 1:
            self.counters["reconnects"] += 1
        self._attempt = 0
        self._last_rx_ns = conn.opened_ns = self.now_ns()
        self._ping_sent_ns = 0
        self._pending_out = b""
        self._frag.clear()
        self._reconnected = True
        self.log.info("live: connected (%d streams)", len(self.opts.stream_names()))
        for ts, raw in conn.early:
            self._message(ts, raw, out)

    def _schedule_reconnect(self, why: str, *, immediate: bool = False) -> None:
        delay = 0.0 if immediate else backoff_delay(self._attempt, self.opts.backoff_initial_s,
                                                    self.opts.backoff_max_s, self.rng)
        self._attempt += 0 if immediate else 1
        self._next_connect_ns = self.now_ns() + int(delay * 1e9)
        self.log.warning("live: %s; reconnecting in %.2f s", why, delay)

    def _drop(self, why: str, *, reconnect: bool = True, immediate: bool = False) -> None:
        conn = self._conn
        self._conn = None
        if conn is not None:
            self._lost = not self._closed
            with contextlib.suppress(OSError):
                conn.sock.close()
        if reconnect and not self._closed:
            self._schedule_reconnect(why, immediate=immediate)

    def _read(self, conn: _Conn, out: list[tuple[int, bytes]]) -> None:
        sock = conn.sock
        proto = conn.proto
        got = False
        while True:
            try:
                data = sock.recv(RECV_BYTES)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            except (ConnectionError, OSError, ssl.SSLError) as exc:
                self._drop(f"connection lost: {exc}")
                return
            ts = self.stamp_ns()  # the receive timestamp: as soon as the bytes are ours
            if not data:
                proto.receive_eof()
                self._events(proto, ts, out)
                self._drop("connection closed by the server")
                return
            got = True
            self._last_rx_ns = self.now_ns() if self.stamp_ns is not self.now_ns else ts
            self._ping_sent_ns = 0
            self.counters["bytes_in"] += len(data)
            proto.receive_data(data)
            if not self._events(proto, ts, out):
                return
            if len(data) < RECV_BYTES:
                break  # the socket is drained: another recv would only say EAGAIN
        if got or self._pending_out:
            self._send(proto)

    def _events(self, proto: ClientProtocol, ts: int, out: list[tuple[int, bytes]]) -> bool:
        """Handle decoded frames; False when the connection was dropped."""
        for ev in proto.events_received():
            op = ev.opcode
            if op is Opcode.TEXT:
                if ev.fin:
                    self._message(ts, bytes(ev.data), out)
                else:
                    self._frag = [bytes(ev.data)]
                    self._frag_ts = ts
            elif op is Opcode.CONT:
                self._frag.append(bytes(ev.data))
                if ev.fin and self._frag:
                    self._message(self._frag_ts, b"".join(self._frag), out)
                    self._frag = []
            elif op is Opcode.BINARY:
                self.counters["bad_frames"] += 1  # Binance's JSON streams send text only
                if self.counters["bad_frames"] <= 20:
                    self.log.warning("live: binary frame of %d bytes ignored (counted)", len(ev.data))
            elif op is Opcode.PONG:
                self.counters["pongs_received"] += 1
            elif op is Opcode.CLOSE:
                self._send(proto)
                rcvd = proto.close_rcvd
                self._drop(f"server closed the WebSocket (code {rcvd.code if rcvd else None} "
                           f"{rcvd.reason if rcvd else ''!r})")
                return False
        if proto.parser_exc is not None:
            self._drop(f"WebSocket protocol error: {proto.parser_exc}")
            return False
        return True

    def _message(self, ts: int, raw: bytes, out: list[tuple[int, bytes]]) -> None:
        self.counters["frames"] += 1
        if len(raw) < 256 and b"serverShutdown" in raw:
            # Binance's notice ~10 min before a maintenance cut: move now, at a time of our choosing
            self.counters["server_shutdowns"] += 1
            self._drop("serverShutdown received", immediate=True)
            return
        out.append((ts, raw))

    def _send(self, proto: ClientProtocol) -> None:
        """Flush what the protocol wants sent (pongs, close); a full socket buffer keeps the rest for later."""
        conn = self._conn
        if conn is None:
            return
        data = self._pending_out + b"".join(proto.data_to_send())
        while data:
            try:
                n = conn.sock.send(data)
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                break
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                self._drop(f"send failed: {exc}")
                return
            data = data[n:]
        self._pending_out = data

    def _keepalive(self, conn: _Conn, now: int) -> None:
        o = self.opts
        if now - conn.opened_ns > o.max_connection_age_s * 1e9:
            self.counters["max_age_reconnects"] += 1
            self._drop(f"connection older than {o.max_connection_age_s:.0f} s", immediate=True)
            return
        idle = now - self._last_rx_ns
        if self._ping_sent_ns:
            if now - self._ping_sent_ns > o.pong_timeout_s * 1e9:
                self._drop(f"no data or pong {o.pong_timeout_s:g} s after a ping")
        elif idle > o.ping_interval_s * 1e9:
            conn.proto.send_ping(os.urandom(4))
            self._ping_sent_ns = now
            self.counters["pings_sent"] += 1
            self._send(conn.proto)

    # -- snapshots -------------------------------------------------------------------------------------
    def _snapshots(self, out: list[tuple[int, bytes]], now: int) -> None:
        for sym, fut in list(self._snap_jobs.items()):
            if not fut.done():
                continue
            del self._snap_jobs[sym]
            name = self.opts.symbols[sym]
            try:
                body = fut.result()
            except SnapshotError as exc:
                self.counters["snapshot_failures"] += 1
                wait_s = self.opts.snapshot_min_interval_s
                if exc.rate_limited:
                    self.counters["rate_limited"] += 1
                    wait_s = max(exc.retry_after_s, 10 * wait_s)
                if exc.refused:
                    wait_s = max(wait_s, REFUSED_RETRY_S)  # retrying fast will not fix a wrong symbol
                self._snap_next_ok_ns[sym] = now + int(wait_s * 1e9)
                self._snap_wanted.add(sym)  # still needed: retried after the wait
                if exc.refused:
                    self.log.error("live: the exchange refused the snapshot request for %s (is the symbol listed on "
                                   "this market?): %s; its book stays invalid; retrying in %.0f s", name, exc, wait_s)
                else:
                    self.log.warning("live: snapshot of %s failed (%s); retrying in %.1f s", name, exc, wait_s)
                continue
            except Exception as exc:  # a bug in a worker must not kill the feed: counted, retried
                self.counters["snapshot_failures"] += 1
                self._snap_wanted.add(sym)
                self.log.error("live: snapshot of %s raised %r", name, exc)
                continue
            self.counters["snapshots_received"] += 1
            out.append((self.stamp_ns(), wrap_snapshot(name, body)))
        for sym in list(self._snap_wanted):
            if sym in self._snap_jobs or now < self._snap_next_ok_ns[sym]:
                continue
            if self._conn is None:
                continue  # a snapshot is only useful with the stream open (diffs must follow it)
            self._snap_wanted.discard(sym)
            self._snap_next_ok_ns[sym] = now + int(self.opts.snapshot_min_interval_s * 1e9)
            self.counters["snapshots_requested"] += 1
            fut = self._pool.submit(fetch_snapshot, self.opts.depth_url(self.opts.symbols[sym]),
                                    self.opts.connect_timeout_s, self._ssl)
            fut.add_done_callback(self._wake)
            self._snap_jobs[sym] = fut


class LiveIngest:
    """A `LiveSource` plus the book's sync rules mirrored (`procs.kernels.sync`): the caller parses each
    batch of messages into MARKET records and hands them to `after_parse`, which requests a REST snapshot
    for every symbol whose book now needs one (first sync, a gap, a snapshot older than the buffered
    diffs, a reconnect). Used by the feed stage and by the recorder, so both resync the same way.

    `stale_ns` adds up, over symbols, the time their book was not in sync (not connected, waiting for a
    snapshot, or after a gap): the "stale seconds" counter.
    """

    def __init__(self, opts: LiveOptions, *, log: logging.Logger | None = None,
                 now_ns: Callable[[], int] = time.monotonic_ns, stamp_ns: Callable[[], int] | None = None,
                 buffer_records: int | None = None) -> None:
        from procs.kernels.sync import SyncMirror  # numba: imported only by the users of a live feed

        self.src = LiveSource(opts, log=log, now_ns=now_ns, stamp_ns=stamp_ns)
        n = len(opts.symbols)
        self.mirror = SyncMirror(n) if buffer_records is None else SyncMirror(n, buffer_records=buffer_records)
        self.mirror.warm_up()
        self.now_ns = now_ns
        self.stale_ns = 0
        self._stale_t = now_ns()
        self._n_stale = n
        self.resyncs = 0  # snapshot requests made because a book needed one
        self._polled = False

    @property
    def counters(self) -> dict[str, int]:
        c = dict(self.src.counters)
        c["gaps"] = self.mirror.gaps()
        c["resyncs"] = self.resyncs
        c["stale_ms"] = (self.stale_ns + (self.now_ns() - self._stale_t) * self._n_stale) // 1_000_000
        return c

    def poll(self, out: list[tuple[int, bytes]]) -> int:
        if not self._polled:  # stale time counts from the first poll (a feed is built well before it starts)
            self._polled = True
            self._stale_t = self.now_ns()
        n = self.src.poll(out)
        if self.src.reconnected():
            # diffs were missed while down (or this is the first connection): every book resyncs
            for s in range(len(self.src.opts.symbols)):
                self.src.request_snapshot(s)
        return n

    def after_parse(self, recs: object, start: int, end: int) -> None:
        """Mirror the records just produced (start:end of a MARKET array) and ask for the snapshots needed.

        The per-symbol pass (snapshot requests, stale time) runs when the mirror raised a need, and
        otherwise at most every ACCOUNT_NS: a Python loop over the symbols per batch cost microseconds."""
        raised = self.mirror.process(recs, start, end) if end > start else 0  # type: ignore[arg-type]
        now = self.now_ns()
        if raised or now - self._stale_t >= ACCOUNT_NS:
            self._account(now)

    def _account(self, now: int) -> None:
        self.stale_ns += (now - self._stale_t) * self._n_stale
        self._stale_t = now
        need = self.mirror.need
        connected = self.src.connected
        n_stale = 0
        for s in range(len(need)):
            if need[s] or not connected or not self.mirror.synced(s):
                n_stale += 1
            if need[s] and not self.src.snapshot_in_flight(s):
                self.src.request_snapshot(s)
                self.resyncs += 1
        self._n_stale = n_stale

    def wait(self, timeout_s: float) -> None:
        self.src.wait(timeout_s)

    def close(self) -> None:
        self.src.close()
