"""feed: a source (replay file or the built-in market) → parsed MARKET records → the market ring.

Replay is paced on the recorded receive timestamps scaled by `speed`; a message's t_origin_ns
is its *scheduled* emission time, so a stall anywhere downstream shows up as latency rather
than silently stretching the schedule (no coordinated omission). At speed 0 there is no
schedule: t_origin_ns is when the feed picked the message up. The feed's own lateness (now -
scheduled) is its hop histogram.

A binary capture (scripts/convert_capture.py, procs/sources/binary.py) takes a separate path,
`BinaryFeed`: its records are already parsed, so whole due messages are copied from the file in batches
of thousands of records, stamped and written to the ring; nothing else about the replay changes (pacing,
offset, duration, loop, backpressure). Its parse counters count the replayed messages by type, as a
JSON replay would; messages the conversion could not use have no records and are counted in the file's
header (logged at start) instead.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterator

import numpy as np

from procs.agent import Agent, AgentContext
from procs.kernels.parse_json import ERR_NO_SPACE, PARSE_COUNTER_NAMES, Parser, SymbolTable
from procs.kernels.sync import write_resets
from procs.sources.binary import BinaryCapture, BinaryReplay, CaptureFormatError, summarize
from procs.sources.live import LOST
from procs.sources.replay import SPIN_NS, CaptureReader, ReplayOptions, capture_format, paced
from shm import hdr
from shm.native import lib
from shm.records import MARKET
from shm.ring import SpscRing

tp_write = lib.tp_write

#: Decode ahead only when the next message is due later than this (one 64 KB step takes ~0.2 ms).
PREFETCH_SLACK_NS = 500_000
#: Messages taken per do_work(): enough to amortise the ring calls, small enough to stay fresh.
BATCH_MESSAGES = 64
#: Malformed messages logged in full (all are counted).
LOG_BAD_MESSAGES = 20
#: Records staged per do_work(): room for a full 5000-level REST snapshot (10,000 records).
STAGE_RECORDS = 16384
#: Binary captures: records per batch (whole messages). The book takes up to 32 x 256 per pass, so the
#: ring (64K slots by default) stays busy without one batch holding the thread for long.
BINARY_BATCH_RECORDS = 8192
#: Live source idle: retry snapshot requests and add up stale time at most this often.
IDLE_ACCOUNT_NS = 1_000_000
#: Live-source counters, appended to the feed's as live_<name> (names of LiveIngest.counters).
LIVE_COUNTERS = ("frames", "reconnects", "connect_failures", "gaps", "resyncs", "snapshots_received",
                 "snapshot_failures", "stale_ms", "bad_frames", "server_shutdowns", "pings_sent")


def open_source(ctx: AgentContext, start_ns: int) -> tuple[Iterator[tuple[int, int, bytes]], Callable[[], bool]]:
    """(due_ns, source_ts_ns, raw) in emission order, and a `prefetch()` that does a bounded step of
    the source's work ahead of time (decoding the next lines of a capture; False when there is none)."""
    src = ctx.config.source
    if src.kind == "replay":
        opts = ReplayOptions(speed=src.speed, offset_ns=int(src.start_offset_s * 1e9),
                             duration_ns=int(src.replay_duration_s * 1e9) or None, loop=src.loop)
        current: list[CaptureReader] = []

        def messages() -> Iterator[tuple[int, bytes]]:
            current[:] = [CaptureReader(src.path)]  # a loop opens the file again: prefetch the new pass
            return iter(current[0])

        return paced(messages, start_ns, opts), lambda: bool(current) and current[0].prefetch()
    from procs.sources import simulator

    sim = Ahead(simulator.paced_messages(ctx.config, start_ns, labels_path=os.path.join(ctx.run_dir, "labels.jsonl")))
    return sim, sim.prefetch


class Ahead:
    """An iterator that can produce items ahead of time: the simulator spends ~10 µs making each
    message, which on the critical path delayed every message of a burst by the ones after it."""

    def __init__(self, it: Iterator[tuple[int, int, bytes]], *, max_ahead: int = 4096, step: int = 16) -> None:
        self.it = it
        self.buf: deque[tuple[int, int, bytes]] = deque()
        self.max_ahead = max_ahead
        self.step = step  # items per prefetch() call: ~0.2 ms of simulator work
        self.done = False

    def __iter__(self) -> Ahead:
        return self

    def __next__(self) -> tuple[int, int, bytes]:
        if self.buf:
            return self.buf.popleft()
        return next(self.it)

    def prefetch(self) -> bool:
        if self.done or len(self.buf) >= self.max_ahead:
            return False
        for _ in range(self.step):
            item = next(self.it, None)
            if item is None:
                self.done = True
                break
            self.buf.append(item)
        return True


class _Staging:
    """A staged batch of MARKET records and its write to the market ring, shared by the feed's source paths.

    What does not fit in the ring stays staged (`_bl_start:_bl_end`) for the next call: backpressure,
    counted in `ring_full`, never a drop and never a block (the book may run in the same thread).
    """

    _ring_addr: int
    _stage_addr: int
    _rec_size: int
    _bl_start: int
    _bl_end: int
    _full: int
    _done: bool
    _sent: int
    _records: int
    _fwd: int
    _exported: int
    ctx: AgentContext
    parser: Parser

    def _export(self) -> None:
        raise NotImplementedError

    def _flush(self) -> int:
        """Write what is staged; what does not fit waits for the next call (backpressure, counted)."""
        # straight to C with the stage's precomputed address: no numpy slice, no address lookup per call
        written = tp_write(self._ring_addr, self._stage_addr + self._bl_start * self._rec_size,
                           self._bl_end - self._bl_start, self._rec_size)
        self._bl_start += written
        if self._bl_start < self._bl_end:
            self._full += 1
        return written

    def _export_parsed(self) -> np.ndarray:
        """The counters every parsing path has (messages, records, ring full, parser's, forwarded); the array."""
        self._exported = self._sent
        c = self.ctx.counters
        c[0] = self._sent
        c[1] = self._records
        c[2] = self._full
        self.parser.export_counters(c[3:])
        c[3 + len(PARSE_COUNTER_NAMES)] = self._fwd
        return c

    def finished(self) -> bool:
        done = self._done and self._bl_start >= self._bl_end
        if done:
            self._export()  # the launcher reads the final counts as soon as it sees `finished`
        return done


class Feed(_Staging, Agent):
    name = "feed"
    SOURCE = True
    COUNTERS = ("messages_out", "records_out", "ring_full", *PARSE_COUNTER_NAMES, "messages_forwarded",
                *(f"live_{n}" for n in LIVE_COUNTERS))

    def on_start(self, ctx: AgentContext) -> None:
        super().on_start(ctx)
        self.ring = SpscRing.attach(ctx.run, "market", MARKET)
        self.prod = self.ring.producer()  # registers this process as the writer (consumers check it is alive)
        # a binary capture and a live source each have their own path (same do_work/parker/finished/close)
        self._bin: BinaryFeed | LiveFeed | None = BinaryFeed.open(ctx, self.ring) or LiveFeed.open(ctx, self.ring)
        if self._bin is not None:
            return
        # the launcher scanned the source for its symbols: any other symbol is counted, not added
        # a single-symbol capture may hold a bare REST snapshot, which names no symbol
        self.parser = Parser(SymbolTable(ctx.symbols, auto_add=False),
                             bare_symbol=ctx.symbols[0] if len(ctx.symbols) == 1 else None)
        self.stage = np.zeros(STAGE_RECORDS, MARKET.dtype)
        self._stage_addr = self.stage.ctypes.data
        self._ring_addr = self.ring.addr
        self._rec_size = MARKET.size
        self.asap = ctx.config.source.speed == 0
        # every message already due goes in one batch, paced or not: with parsing at ~1 µs a message,
        # one pass of the stages per message (~5 µs) queued bursts more than batching them does
        # (BTCUSDT at speed 1: tick-to-decision p99 177 µs one at a time, 105 µs batched)
        self.batch = BATCH_MESSAGES
        self.max_messages = ctx.config.run.max_messages
        # the source is opened (file read, simulator built and warmed) before the barrier, on a schedule
        # relative to 0; the first do_work() after go fixes the base, so the first message is not late
        self._src, self._prefetch = open_source(ctx, 0)
        self._first = next(self._src, None)
        self._base = 0
        self._pending: tuple[int, int, bytes] | None = None
        self._done = self._first is None  # an empty source ends at once
        self._sent = 0
        self._exported = -1
        self._t_first = self._t_last = 0
        self._full = 0
        self._records = 0
        self._calls = 0
        self._logged = 0
        self._fwd = 0
        self._bl_start = self._bl_end = 0  # staged records not yet in the ring
        self._lat = np.zeros(BATCH_MESSAGES, np.int64)
        hdr.record_many(ctx.hist_hop, self._lat[:0])  # compile before the barrier

    def _next(self) -> tuple[int, int, bytes] | None:
        if self._pending is None and not self._done:
            item = next(self._src, None)
            if item is None:
                self._done = True
            else:
                self._pending = (item[0] + self._base, item[1], item[2])
        return self._pending

    def do_work(self) -> int:
        if self._bin is not None:
            return self._bin.do_work()
        if self._bl_end > self._bl_start:
            # the ring was full: finish the staged batch before parsing more, never blocking (the
            # book may run in this same thread)
            return self._flush()
        if self._done or (self.max_messages and self._sent >= self.max_messages):
            self._done = True
            return 0
        now = lib.tp_now_ns()
        if self._first is not None:  # the first call after go: the schedule starts now
            self._base = now
            self._pending = (self._first[0] + now, self._first[1], self._first[2])
            self._first = None
        n_rec = 0
        n_msg = 0
        stage = self.stage
        parse = self.parser.parse
        lat = self._lat
        while n_msg < self.batch:
            item = self._next()
            if item is None or (not self.asap and item[0] > now):
                break
            due = now if self.asap else item[0]
            n = parse(item[2], due, stage, n_rec)
            if n == ERR_NO_SPACE:
                if n_rec:
                    break  # the next call stages it
                # larger than the whole staging area: counted by the parser, logged, skipped
                self.ctx.log.error("message with more than %d records skipped: %r", len(stage), item[2][:200])
                self._pending = None
                continue
            if n < 0 and self._logged < LOG_BAD_MESSAGES:  # counted by the parser; the first few are shown
                self._logged += 1
                self.ctx.log.warning("malformed message (error %d, counted, skipped): %r", n, item[2][:200])
            lat[n_msg] = now - due
            n_rec += max(n, 0)
            self._fwd += n > 0  # messages that became records (unknown types and errors do not)
            n_msg += 1
            self._pending = None
            if self.max_messages and self._sent + n_msg >= self.max_messages:
                break
        if n_msg == 0:
            pend = self._pending
            if pend is not None and pend[0] - now > PREFETCH_SLACK_NS:
                self._prefetch()  # time to spare before the next message: decode ahead, off its path
            if self._exported != self._sent:
                self._export()  # idle: a good moment to publish counters (once, not on every idle pass)
            return 0
        if n_rec:
            stage["t_publish_ns"][:n_rec] = lib.tp_now_ns()
            self._bl_start, self._bl_end = 0, n_rec
            self._flush()
        if self._sent == 0:
            self._t_first = now
        self._t_last = now
        self._sent += n_msg
        self._records += n_rec
        hdr.record_many(self.ctx.hist_hop, lat[:n_msg])  # lateness; the feed's e2e would be the same numbers
        self._calls += 1
        if self._calls & 63 == 0:  # numpy writes cost ~1 µs: not on every call
            self._export()
        return n_msg

    def _export(self) -> None:
        self._export_parsed()

    def parker(self) -> Callable[[int], bool]:
        """Sleep until shortly before the next message is due (then the idle strategy spins)."""
        if self._bin is not None:
            return self._bin.parker()

        def park(timeout_ns: int) -> bool:
            item = self._pending
            if item is None or self.asap:
                return False
            left = item[0] - lib.tp_now_ns() - SPIN_NS
            if left > 0:
                time.sleep(min(left, timeout_ns) * 1e-9)
            return True

        return park

    def finished(self) -> bool:
        if self._bin is not None:
            return self._bin.finished()
        return super().finished()

    def on_close(self) -> None:
        if self._bin is not None:
            self._bin.close()
            self.ring.close()
            return
        self._export()
        if self._sent > 1:
            span = max(self._t_last - self._t_first, 1) / 1e9
            self.ctx.log.info("feed: %d messages, %d records; %.3f s from the first batch to the last (%.0f msg/s)",
                              self._sent, self._records, span, self._sent / span)
        self.ring.close()


class BinaryFeed(_Staging):
    """The feed's path for a binary capture: whole due messages, already parsed, copied in large batches.

    At speed 0 a batch is up to BINARY_BATCH_RECORDS records, so the feed costs two memcpys per record
    and the rings bound the throughput; paced, each batch holds the messages due now. t_origin_ns is the
    due time (speed 0: now), t_publish_ns when the batch was staged; the ring stamps seq. What does not fit
    in the ring waits for the next call (backpressure, counted in ring_full), never dropped.
    """

    @classmethod
    def open(cls, ctx: AgentContext, ring: SpscRing) -> BinaryFeed | None:
        """A BinaryFeed if the source is a binary capture, else None (the feed's usual path)."""
        src = ctx.config.source
        if src.kind != "replay" or capture_format(src.path) != "binary":
            return None
        return cls(ctx, ring)

    def __init__(self, ctx: AgentContext, ring: SpscRing) -> None:
        src = ctx.config.source
        self.ctx = ctx
        self.ring = ring
        self.cap = BinaryCapture(src.path)  # checks magic, version, layout, size
        h = self.cap.header
        if self.cap.symbols != list(ctx.symbols):  # records carry ids into the file's table: it must be the run's
            raise CaptureFormatError(src.path, "symbols", list(ctx.symbols), self.cap.symbols,
                                     "the run's symbol table must be the file's (run.py takes it from scan_symbols)")
        opts = ReplayOptions(speed=src.speed, offset_ns=int(src.start_offset_s * 1e9),
                             duration_ns=int(src.replay_duration_s * 1e9) or None, loop=src.loop)
        self.src = BinaryReplay(self.cap, opts)
        self.asap = opts.speed == 0
        self.batch = BINARY_BATCH_RECORDS
        self.stage = np.zeros(max(self.batch, h.max_message_records), MARKET.dtype)  # a whole message always fits
        self._stage_addr = self.stage.ctypes.data
        self._pub = self.stage["t_publish_ns"]  # the field view, made once (~0.4 µs each time otherwise)
        self._ring_addr = ring.addr
        self._rec_size = MARKET.size
        self._lat = np.zeros(len(self.stage), np.int64)  # one lateness per message, at most one per record
        self.max_messages = ctx.config.run.max_messages
        self._started = False
        self._done = h.records == 0
        self._sent = self._records = self._full = self._calls = 0
        self._exported = -1
        self._t_first = self._t_last = 0
        self._bl_start = self._bl_end = 0
        self.src.prefetch()  # index the first chunk before the barrier
        hdr.record_many(ctx.hist_hop, self._lat[:0])  # compile before the barrier
        ctx.log.info("feed: binary capture %s: %s", src.path, summarize(h.d))

    def do_work(self) -> int:
        if self._bl_end > self._bl_start:
            return self._flush()  # the ring was full: finish the staged batch first, never blocking
        if self._done:
            return 0
        left = self.batch
        if self.max_messages:
            left = min(left, self.max_messages - self._sent)
            if left <= 0:
                self._done = True
                return 0
        now = lib.tp_now_ns()
        if not self._started:  # the first call after go: the schedule starts now
            self._started = True
            self.src.start_ns = now
        k, n = self.src.take(now, self.stage, self.batch, left, self._lat)
        if k == 0:
            if self.src.done:
                self._done = True
            else:
                due = self.src.next_due()
                if due is not None and due - now > PREFETCH_SLACK_NS:
                    self.src.prefetch()  # time to spare: index the next chunk, off the next message's path
            if self._exported != self._sent:
                self._export()
            return 0
        self._pub[:n] = lib.tp_now_ns()
        self._bl_start, self._bl_end = 0, n
        self._flush()
        if self._sent == 0:
            self._t_first = now
        self._t_last = now
        self._sent += k
        self._records += n
        hdr.record_many(self.ctx.hist_hop, self._lat[:k])
        self._calls += 1
        if self._calls & 63 == 0:
            self._export()
        return k

    def _export(self) -> None:
        self._exported = self._sent
        c = self.ctx.counters
        c[0] = self._sent
        c[1] = self._records
        c[2] = self._full
        pc = self.src.parse_counters()
        c[3:3 + len(pc)] = pc
        c[3 + len(PARSE_COUNTER_NAMES)] = self._sent  # every message of a binary capture has records

    def parker(self) -> Callable[[int], bool]:
        """Sleep until shortly before the next message is due (then the idle strategy spins)."""

        def park(timeout_ns: int) -> bool:
            if self.asap or self._done:
                return False
            due = self.src.next_due()
            if due is None:
                return False
            left = due - lib.tp_now_ns() - SPIN_NS
            if left > 0:
                time.sleep(min(left, timeout_ns) * 1e-9)
            return True

        return park

    def close(self) -> None:
        self._export()
        if self._sent > 1:
            span = max(self._t_last - self._t_first, 1) / 1e9
            self.ctx.log.info("feed: binary capture: %d messages, %d records; %.3f s from the first batch to the "
                              "last (%.0f msg/s, %.0f records/s)", self._sent, self._records, span,
                              self._sent / span, self._records / span)
        self.cap.close()


class LiveFeed(_Staging):
    """The feed's path for a live source (procs/sources/live.py): WebSocket frames and REST snapshots, parsed
    as they arrive; the sync mirror asks for a snapshot whenever the book will need one.

    t_origin_ns is the frame's receive time (taken right after recv(), on the pipeline's monotonic clock),
    so tick-to-decision includes the feed's own pickup and parsing; the hop histogram is receive → parse.
    Nothing is paced and the source never ends: the run stops on its duration, --max-messages or a signal.
    A lost connection publishes one KIND_RESET record per symbol, in order, so the book (and the strategy
    after it) stops trusting books that no longer receive their diffs.
    """

    @classmethod
    def open(cls, ctx: AgentContext, ring: SpscRing) -> LiveFeed | None:
        """A LiveFeed if the source is live, else None."""
        return cls(ctx, ring) if ctx.config.source.kind == "live" else None

    def __init__(self, ctx: AgentContext, ring: SpscRing) -> None:
        from procs.sources.live import LiveIngest, options_from_config

        self.ctx = ctx
        opts = options_from_config(ctx.config.live)
        if [s.upper() for s in opts.symbols] != list(ctx.symbols):
            raise ValueError(f"field=live.symbols expected={list(ctx.symbols)} (the run's symbol table) "
                             f"found={opts.symbols}")
        self.ingest = LiveIngest(opts, log=ctx.log, now_ns=lib.tp_now_ns)
        self._n_sym = len(ctx.symbols)
        self.parser = Parser(SymbolTable(ctx.symbols, auto_add=False))
        self.stage = np.zeros(STAGE_RECORDS, MARKET.dtype)
        self._stage_addr = self.stage.ctypes.data
        self._pub = self.stage["t_publish_ns"]
        self._ring_addr = ring.addr
        self._rec_size = MARKET.size
        self.max_messages = ctx.config.run.max_messages
        self._buf: list[tuple[int, bytes]] = []
        self._pos = 0
        self._done = False
        self._sent = self._records = self._full = self._calls = self._fwd = self._logged = 0
        self._exported = -1
        self._acct_t = 0
        self._bl_start = self._bl_end = 0
        self._lat = np.zeros(BATCH_MESSAGES, np.int64)
        hdr.record_many(ctx.hist_hop, self._lat[:0])  # compile before the barrier
        self._base = 3 + len(PARSE_COUNTER_NAMES) + 1

    def do_work(self) -> int:
        if self._bl_end > self._bl_start:
            return self._flush()  # the ring was full: finish the staged batch first, never blocking
        if self._done:
            return 0
        buf = self._buf
        if self._pos >= len(buf):
            buf.clear()
            self._pos = 0
            if self.ingest.poll(buf) == 0:
                now = lib.tp_now_ns()
                if now - self._acct_t > IDLE_ACCOUNT_NS:  # snapshot retries and stale time, not on every pass
                    self._acct_t = now
                    self.ingest.after_parse(self.stage, 0, 0)
                    self._export()
                return 0
        now = lib.tp_now_ns()
        stage = self.stage
        parse = self.parser.parse
        lat = self._lat
        n_rec = n_msg = 0
        while self._pos < len(buf) and n_msg < BATCH_MESSAGES:
            ts, raw = buf[self._pos]
            if raw is LOST:  # the connection dropped here: every book is invalid until its next snapshot
                k = write_resets(stage, n_rec, self._n_sym, ts)
                if k == 0:
                    break  # no room left in this batch: the next call writes them
                n_rec += k
                self._fwd += k
                self._pos += 1
                continue
            n = parse(raw, ts, stage, n_rec)
            if n == ERR_NO_SPACE:
                if n_rec:
                    break  # the next call stages it
                self.ctx.log.error("message with more than %d records skipped: %r", len(stage), raw[:200])
                self._pos += 1
                continue
            if n < 0 and self._logged < LOG_BAD_MESSAGES:
                self._logged += 1
                self.ctx.log.warning("malformed message (error %d, counted, skipped): %r", n, raw[:200])
            lat[n_msg] = now - ts
            n_rec += max(n, 0)
            self._fwd += n > 0
            n_msg += 1
            self._pos += 1
        if n_rec:
            self._pub[:n_rec] = lib.tp_now_ns()
            self._bl_start, self._bl_end = 0, n_rec
            self._flush()
        # after the write, off the records' path (a backlog keeps stage[:n_rec] until it is written)
        self.ingest.after_parse(stage, 0, n_rec)  # the book's sync state, mirrored: snapshots it will need
        self._acct_t = now
        self._sent += n_msg
        self._records += n_rec
        hdr.record_many(self.ctx.hist_hop, lat[:n_msg])  # receive → parsed
        self._calls += 1
        if self._calls & 63 == 0:
            self._export()
        if self.max_messages and self._sent >= self.max_messages:
            self._done = True
        return n_msg

    def _export(self) -> None:
        c = self._export_parsed()
        lc = self.ingest.counters
        for i, name in enumerate(LIVE_COUNTERS):
            c[self._base + i] = lc[name]

    def parker(self) -> Callable[[int], bool]:
        """Sleep in select() on the socket and the workers' wake pipe: a frame or a snapshot wakes the feed."""

        def park(timeout_ns: int) -> bool:
            self.ingest.wait(timeout_ns * 1e-9)
            return True

        return park

    def close(self) -> None:
        self._export()
        c = self.ingest.counters
        self.ctx.log.info("feed: live: %d messages, %d records, %d reconnects, %d gaps, %d resyncs, %.1f s stale",
                          self._sent, self._records, c["reconnects"], c["gaps"], c["resyncs"], c["stale_ms"] / 1e3)
        self.ingest.close()


AGENT = Feed
