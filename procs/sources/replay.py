"""Replay of recorded captures: `<ts_ns> <json>` per line, gzip or plain, or a binary record file made by
scripts/convert_capture.py (procs/sources/binary.py); the three are told apart by magic bytes (`capture_format`).

`CaptureReader` streams (ts_ns, raw) pairs in large chunks, so memory stays flat on any file size and
the per-line cost is a split and an int(). Lines that are not `<int> <payload>` are skipped and
counted, never fatal.

The pacing maths are pure functions so they can be tested without a clock:

    due_ns = start_ns + (ts - ts0 - offset_ns) / speed        (speed 0: due immediately)

and with `loop`, pass k shifts every timestamp by k * (span + loop_gap_ns), so time keeps increasing.
`paced()` composes them over a reader; the feed waits until `due_ns` (`wait_until`), stamps the
record's `t_origin_ns` with `due_ns` (the *scheduled* time, so a stall downstream shows up as latency)
and reports its own lateness (actual - due).
"""

from __future__ import annotations

import os
import re
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

#: First two bytes of every gzip member.
GZIP_MAGIC = b"\x1f\x8b"
#: First bytes of a binary capture (procs/sources/binary.py); kept here so detection needs no numpy import.
BINARY_MAGIC = b"TPCAP\x00\x01\x00"
#: Bytes read per chunk: big enough that the per-chunk Python overhead vanishes, small for the cache.
CHUNK_BYTES = 1 << 20
#: Decompressed bytes produced per step (a few hundred lines).
STEP_BYTES = 1 << 16
#: Lines the feed decodes ahead while it waits (a few 64 KB steps).
PREFETCH_LINES = 2048
#: Default pause between the last message of a loop pass and the first of the next.
LOOP_GAP_NS = 1_000_000
#: Before a deadline, sleep until this close, then spin (sleep overshoots by ~50-100 µs on Linux).
SPIN_NS = 200_000


def capture_format(path: str | os.PathLike[str]) -> str:
    """"binary", "gzip" or "text", from the file's first bytes (never from its name)."""
    with open(path, "rb") as f:
        head = f.read(len(BINARY_MAGIC))
    if head == BINARY_MAGIC:
        return "binary"
    return "gzip" if head[:2] == GZIP_MAGIC else "text"


class CaptureReader:
    """Iterate (ts_ns, raw_json_bytes) over one capture file; `lines` and `bad_lines` count as it goes.

    `bytes_read` counts the file's bytes consumed so far (compressed, for gzip), for progress reports."""

    def __init__(self, path: str | os.PathLike[str], *, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"capture not found: path={self.path}")
        self.chunk_bytes = chunk_bytes
        self.lines = 0
        self.bad_lines = 0
        self.bytes_read = 0
        fmt = capture_format(self.path)
        if fmt == "binary":  # read as text it would be all bad lines: say what it is instead
            raise ValueError(f"capture {self.path} is a binary capture (records, not JSON lines): "
                             "open it with procs.sources.binary.BinaryCapture")
        self.compressed = fmt == "gzip"
        self._it: Iterator[bytes] | None = None
        self._tail = b""
        self._eof = False
        self._ready: list[tuple[int, bytes]] = []  # decoded lines not yet taken, from index _pos
        self._pos = 0

    def _chunks(self) -> Iterator[bytes]:
        """The file's bytes, decompressed, in steps of at most STEP_BYTES.

        Small steps bound the feed's stall when it needs the next lines: inflating a whole 1 MB gzip
        chunk at once (~10 MB of text) took ~25 ms, a 64 KB step ~0.2 ms. Members of concatenated
        gzip files follow one another.
        """
        with open(self.path, "rb") as f:
            if not self.compressed:
                while chunk := f.read(STEP_BYTES):
                    self.bytes_read += len(chunk)
                    yield chunk
                return
            d = zlib.decompressobj(wbits=31)
            pending = b""
            while True:
                if not pending:
                    pending = f.read(self.chunk_bytes)
                    if not pending:
                        break
                    self.bytes_read += len(pending)
                out = d.decompress(pending, STEP_BYTES)
                pending = d.unconsumed_tail
                if out:
                    yield out
                if d.eof:  # the next gzip member, if any, starts in unused_data (which then equals the tail)
                    pending = d.unused_data
                    d = zlib.decompressobj(wbits=31)
            tail = d.flush()
            if tail:
                yield tail

    def fill(self) -> bool:
        """Decode one more step of the file (up to STEP_BYTES) into the buffer of ready lines.

        Called by the iterator when the buffer runs dry, and by the feed while it waits for the next
        message's time (`prefetch`), so that decompressing and splitting stay off the critical path.
        Returns False at the end of the file.
        """
        if self._eof:
            return False
        if self._it is None:
            self._it = self._chunks()
        chunk = next(self._it, None)
        if chunk is None:
            self._eof = True
            lines = [self._tail] if self._tail else []
            self._tail = b""
        else:
            lines = (self._tail + chunk).split(b"\n") if self._tail else chunk.split(b"\n")
            self._tail = lines.pop()  # incomplete last line (or b"" after a final newline)
        ready = self._ready
        for line in lines:
            sp = line.find(b" ")
            if sp <= 0:
                if line.strip():
                    self.bad_lines += 1
                continue
            try:
                ts = int(line[:sp])
            except ValueError:
                self.bad_lines += 1
                continue
            self.lines += 1
            ready.append((ts, line[sp + 1:]))  # orjson accepts the trailing '\r' of CRLF files as whitespace
        return not self._eof

    def prefetch(self, max_ready: int = PREFETCH_LINES) -> bool:
        """Fill one step if fewer than `max_ready` lines are buffered; whether it did any work."""
        if self._eof or len(self._ready) - self._pos >= max_ready:
            return False
        self.fill()
        return True

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        while True:
            if self._pos >= len(self._ready):
                self._ready.clear()
                self._pos = 0
                if not self.fill() and not self._ready:
                    return
                continue
            item = self._ready[self._pos]
            self._pos += 1
            yield item


def read_capture(path: str | os.PathLike[str]) -> Iterator[tuple[int, bytes]]:
    """(ts_ns, raw) for every well-formed line of a capture, streaming."""
    return iter(CaptureReader(path))


_STREAM_SYMBOL = re.compile(rb'"stream"\s*:\s*"([A-Za-z0-9_\-]+)@')
_FIELD_SYMBOL = re.compile(rb'"s"\s*:\s*"([A-Za-z0-9_\-]+)"')


def scan_symbols(path: str | os.PathLike[str], max_lines: int = 2_000_000) -> list[str]:
    """Symbols of a capture in order of first appearance (upper-case), from its first `max_lines` lines.

    The launcher sizes the books and boards from this before any stage starts; a symbol that first
    appears later is counted by the parser as unknown, never silently added. For a binary capture it is
    the header's symbol table (the ids its records carry), after the header has been checked."""
    if capture_format(path) == "binary":
        from procs.sources.binary import BinaryCapture  # imported here: binary.py builds on this module

        return BinaryCapture.read_header(path).symbols
    seen: dict[str, None] = {}
    reader = CaptureReader(path)
    for i, (_, raw) in enumerate(reader):
        if i >= max_lines:
            break
        m = _STREAM_SYMBOL.search(raw) or _FIELD_SYMBOL.search(raw)
        if m:
            seen.setdefault(m.group(1).decode().upper(), None)
    return list(seen)


# -- pacing maths (pure) ----------------------------------------------------------------------------
def schedule_ns(ts_ns: int, ts0_ns: int, start_ns: int, speed: float, offset_ns: int = 0) -> int:
    """When a message recorded at `ts_ns` is due: start_ns + (ts - ts0 - offset) / speed.

    `ts0_ns` is the capture's first timestamp, `offset_ns` the replay's start offset into it, so the
    first replayed message is due at `start_ns`. Speed 0 means as fast as possible: due at once
    (returns `start_ns`, which is never in the future).
    """
    if speed < 0:
        raise ValueError(f"speed must be >= 0: speed={speed}")
    if speed == 0:
        return start_ns
    rel = ts_ns - ts0_ns - offset_ns
    return start_ns + (rel if speed == 1 else round(rel / speed))


def in_window(ts_ns: int, ts0_ns: int, offset_ns: int = 0, duration_ns: int | None = None) -> bool:
    """Whether a message recorded at `ts_ns` falls in [ts0 + offset, ts0 + offset + duration)."""
    rel = ts_ns - ts0_ns - offset_ns
    return rel >= 0 and (duration_ns is None or rel < duration_ns)


def loop_shift_ns(pass_index: int, first_ts_ns: int, last_ts_ns: int, loop_gap_ns: int = LOOP_GAP_NS) -> int:
    """Shift added to the timestamps of loop pass `pass_index` (0 for the first pass).

    Each pass lasts span + gap, so the first message of pass k+1 comes `loop_gap_ns` after the last of
    pass k and timestamps keep increasing.
    """
    return pass_index * (last_ts_ns - first_ts_ns + loop_gap_ns)


@dataclass(frozen=True)
class ReplayOptions:
    """How to replay a capture: speed factor, start offset and duration into it, loop."""

    speed: float = 1.0
    offset_ns: int = 0
    duration_ns: int | None = None
    loop: bool = False
    loop_gap_ns: int = LOOP_GAP_NS

    def __post_init__(self) -> None:
        if self.speed < 0:
            raise ValueError(f"speed must be >= 0: speed={self.speed}")
        if self.offset_ns < 0:
            raise ValueError(f"offset must be >= 0: offset_ns={self.offset_ns}")
        if self.duration_ns is not None and self.duration_ns <= 0:
            raise ValueError(f"duration must be > 0: duration_ns={self.duration_ns}")
        if self.loop_gap_ns <= 0:
            raise ValueError(f"loop gap must be > 0: loop_gap_ns={self.loop_gap_ns}")


def paced(messages: Callable[[], Iterator[tuple[int, bytes]]], start_ns: int,
          opts: ReplayOptions) -> Iterator[tuple[int, int, bytes]]:
    """(due_ns, shifted_ts_ns, raw) for every message in the replay window, looping if asked.

    `messages` opens a fresh pass over the capture each call (e.g. `lambda: read_capture(path)`).
    `ts0` is the first timestamp of the file; the window is [ts0 + offset, ts0 + offset + duration).
    A pass that yields nothing ends the replay, even with `loop`.
    """
    ts0: int | None = None
    first0 = last0 = 0  # span of pass 0, which fixes the shift of every later pass
    k = 0
    speed = opts.speed
    asap, real_time = speed == 0, speed == 1
    base = 0
    while True:
        shift = loop_shift_ns(k, first0, last0, opts.loop_gap_ns)
        n = 0
        for ts, raw in messages():
            if ts0 is None:
                ts0 = ts
                base = ts0 + opts.offset_ns
            rel = ts - ts0 - opts.offset_ns
            if rel < 0:
                continue
            if opts.duration_ns is not None and rel >= opts.duration_ns:
                break  # captures are in arrival order: nothing later is in the window
            if k == 0:
                if n == 0:
                    first0 = ts
                last0 = ts
            n += 1
            st = ts + shift
            # schedule_ns, inlined: a call per message cost ~0.15 µs on the feed's critical path
            rel = st - base
            yield (start_ns if asap else start_ns + (rel if real_time else round(rel / speed))), st, raw
        if n == 0 or not opts.loop:
            return
        k += 1


def wait_until(deadline_ns: int, now_ns: Callable[[], int] = time.monotonic_ns,
               spin_ns: int = SPIN_NS) -> int:
    """Sleep until `spin_ns` before the deadline, then spin; returns the lateness (now - deadline, >= 0)."""
    now = now_ns()
    left = deadline_ns - now
    if left > spin_ns:
        time.sleep((left - spin_ns) * 1e-9)
    while (now := now_ns()) < deadline_ns:
        pass
    return now - deadline_ns
