"""Binary captures: a JSON-lines capture parsed once into MARKET records, replayed with no parsing.

File layout (little-endian), written by `convert_capture` (scripts/convert_capture.py):

    offset 0    MAGIC (8 bytes, b"TPCAP\\0\\1\\0")
    offset 8    uint64 header length H
    offset 16   H bytes of UTF-8 JSON: the header (below)
    ...         zero padding up to `data_offset`, a multiple of DATA_ALIGN (4096: mmap pages, cache lines)
    data_offset `records` MARKET records of `record_size` bytes, nothing after them

The header names what the records are and where they came from: `format`, `version`, `layout` (the
record layout's name, "Market"), `layout_hash` (hex), `record_size`, `dtype` (numpy descr), `data_offset`,
`records`, `messages`, `max_message_records`, `symbols` (names in id order: records carry ids), `markets`,
`ts0_ns` (the first line's receive time: the replay's time origin, as for the JSON file, even when that
line gave no records), `first_ts_ns`/`last_ts_ns` (first and last message with records), `bare_symbol`,
`source` (file name, size, sha256, lines, bad lines) and `parse` (the parser's counters over the
conversion: malformed and unknown messages are counted there, since they have no records). A reader
(`BinaryCapture`) refuses any mismatch with the field, the expected and the found value, and refuses
truncated files.

Records are exactly what `Parser.parse` wrote for the JSON capture, with `t_origin_ns` the message's
recorded receive time (ns) and `t_publish_ns` 0; `FLAG_LAST_IN_MESSAGE` ends each message, so message
boundaries and pacing survive. `BinaryReplay` takes whole due messages in large batches, paced by the same
rules as `replay.paced()` (speed, start offset, duration, loop).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from procs.kernels.parse_json import (
    ERR_NO_SPACE,
    PARSE_COUNTER_NAMES,
    PC_DEPTH,
    PC_MESSAGES,
    PC_NO_SPACE,
    PC_RECORDS,
    PC_SNAPSHOT,
    PC_TICKER,
    PC_TRADE,
    Parser,
    SymbolTable,
)
from procs.sources.replay import BINARY_MAGIC, CaptureReader, ReplayOptions, loop_shift_ns, scan_symbols
from shm.layout import Layout
from shm.records import (
    FLAG_LAST_IN_MESSAGE,
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

MAGIC = BINARY_MAGIC
#: Format version: bump on any change to the file layout or the header's meaning.
VERSION = 1
FORMAT_NAME = "tickpipe binary capture"
#: Records start at a multiple of this: page-aligned for mmap, so every record is cache-line aligned too.
DATA_ALIGN = 4096
_PREAMBLE = struct.Struct("<8sQ")
#: A header larger than this is corrupt (1024 symbols take ~20 KB).
MAX_HEADER_BYTES = 16 << 20
#: Records indexed per step of `BinaryReplay` (4 MB of MARKET): bounds a step's stall at speed 1.
CHUNK_RECORDS = 1 << 15
#: Below this many indexed messages, an idle `prefetch()` indexes the next chunk.
PREFETCH_MESSAGES = 4096
#: Records parsed per batch by the converter before they go to disk.
CONVERT_BATCH = 1 << 16

MARKET_NAMES = {MARKET_SPOT: "spot", MARKET_USDM: "usdm", MARKET_COINM: "coinm"}

# record kind of a message's last record → the parse counter a JSON replay advances for that message
_KIND_COUNTER = {KIND_DEPTH: PC_DEPTH, KIND_DEPTH_EMPTY: PC_DEPTH, KIND_SNAPSHOT: PC_SNAPSHOT,
                 KIND_TRADE: PC_TRADE, KIND_TICKER: PC_TICKER}


class CaptureFormatError(ValueError):
    """A binary capture that this reader must not use: `field`, `expected` and `found` say why."""

    def __init__(self, path: str | os.PathLike[str], field: str, expected: object, found: object,
                 note: str = "") -> None:
        self.path, self.field, self.expected, self.found = str(path), field, expected, found
        msg = f"binary capture {path}: field={field} expected={expected} found={found}"
        super().__init__(msg + (f" ({note})" if note else ""))


def _jsonable(obj: object) -> Any:
    """`obj` as it reads back from JSON (tuples become lists), so header values compare with ==."""
    return json.loads(json.dumps(obj))


def layout_fields(layout: Layout) -> dict[str, Any]:
    """The header fields that pin the record layout (checked on open)."""
    return {"layout": layout.name, "layout_hash": f"{layout.layout_hash:#018x}", "record_size": layout.size,
            "dtype": _jsonable(layout.dtype.descr)}


def data_offset_for(header_bytes: int) -> int:
    return (_PREAMBLE.size + header_bytes + DATA_ALIGN - 1) // DATA_ALIGN * DATA_ALIGN


def encode_header(header: dict[str, Any]) -> bytes:
    """Magic, header length, header JSON and padding: every byte before the records. Sets `data_offset`."""
    header = dict(header, data_offset=0)
    # data_offset depends on the header's length, which depends on data_offset's digits: iterate to a fixpoint
    while True:
        raw = json.dumps(header, separators=(",", ":")).encode()
        off = data_offset_for(len(raw))
        if off == header["data_offset"]:
            return _PREAMBLE.pack(MAGIC, len(raw)) + raw + b"\0" * (off - _PREAMBLE.size - len(raw))
        header["data_offset"] = off


class BinaryHeader:
    """A checked header: the JSON dict plus typed accessors for what the replay needs."""

    def __init__(self, path: Path, d: dict[str, Any]) -> None:
        self.path = path
        self.d = d
        self.records: int = d["records"]
        self.messages: int = d["messages"]
        self.symbols: list[str] = list(d["symbols"])
        self.data_offset: int = d["data_offset"]
        self.record_size: int = d["record_size"]
        self.max_message_records: int = d["max_message_records"]
        self.ts0_ns: int = d["ts0_ns"]

    @property
    def parse(self) -> dict[str, int]:
        """The parser's counters over the conversion (malformed / unknown messages were counted, not kept)."""
        return dict(self.d.get("parse", {}))


class BinaryCapture:
    """A binary capture opened read-only: `header` and `records` (a numpy memmap of `layout.dtype`)."""

    def __init__(self, path: str | os.PathLike[str], layout: Layout = MARKET) -> None:
        self.path = Path(path)
        self.header = self.read_header(self.path, layout)
        self.layout = layout
        n = self.header.records
        # an empty memmap is not allowed by numpy: an empty capture is an empty array
        self.records: np.ndarray = (np.memmap(self.path, dtype=layout.dtype, mode="r",
                                              offset=self.header.data_offset, shape=(n,))
                                    if n else np.zeros(0, layout.dtype))
        if n and not int(self.records[n - 1]["flags"]) & FLAG_LAST_IN_MESSAGE:
            raise CaptureFormatError(self.path, "last_record_flags", "FLAG_LAST_IN_MESSAGE set",
                                     int(self.records[n - 1]["flags"]), "the last message is cut off")

    @property
    def symbols(self) -> list[str]:
        return self.header.symbols

    def close(self) -> None:
        """Drop this object's view; the mapping goes when the last view of it does (closing the mmap
        itself while a view lives, e.g. a BinaryReplay's, would make that view's next read segfault)."""
        self.records = np.zeros(0, self.layout.dtype)

    def __enter__(self) -> BinaryCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def read_header(path: str | os.PathLike[str], layout: Layout = MARKET) -> BinaryHeader:
        """Read and check the header against `layout` and the file's size; CaptureFormatError on any mismatch."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"capture not found: path={path}")
        size = path.stat().st_size
        with open(path, "rb") as f:
            pre = f.read(_PREAMBLE.size)
            if len(pre) < len(MAGIC) or pre[:len(MAGIC)] != MAGIC:
                raise CaptureFormatError(path, "magic", MAGIC, pre[:len(MAGIC)])
            if len(pre) < _PREAMBLE.size:
                raise CaptureFormatError(path, "file_size", f">= {_PREAMBLE.size} bytes", f"{size} bytes",
                                         "truncated in the preamble")
            _, hlen = _PREAMBLE.unpack(pre)
            if hlen > MAX_HEADER_BYTES:
                raise CaptureFormatError(path, "header_length", f"<= {MAX_HEADER_BYTES}", hlen, "corrupt preamble")
            raw = f.read(hlen)
        if len(raw) < hlen:
            raise CaptureFormatError(path, "file_size", f">= {_PREAMBLE.size + hlen} bytes", f"{size} bytes",
                                     "truncated in the header")
        try:
            d = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CaptureFormatError(path, "header", "JSON", f"{exc}") from None
        if not isinstance(d, dict):
            raise CaptureFormatError(path, "header", "a JSON object", type(d).__name__)
        checks = {"format": FORMAT_NAME, "version": VERSION, **layout_fields(layout)}
        for name, want in checks.items():  # version first: a newer file may mean anything by the rest
            got = d.get(name)
            if got != want:
                raise CaptureFormatError(path, name, want, got)
        for name in ("records", "messages", "data_offset", "max_message_records", "ts0_ns"):
            v = d.get(name)
            if type(v) is not int or v < 0:
                raise CaptureFormatError(path, name, "an integer >= 0", v)
        syms = d.get("symbols")
        if not isinstance(syms, list) or not all(isinstance(s, str) for s in syms):
            raise CaptureFormatError(path, "symbols", "a list of names", syms)
        if d["data_offset"] != data_offset_for(hlen):
            raise CaptureFormatError(path, "data_offset", data_offset_for(hlen), d["data_offset"])
        want_size = d["data_offset"] + d["records"] * layout.size
        if size != want_size:
            have = (size - d["data_offset"]) / layout.size
            raise CaptureFormatError(path, "file_size", f"{want_size} bytes ({d['records']} records)",
                                     f"{size} bytes ({int(have)} records)" if have == int(have) else
                                     f"{size} bytes ({have:.1f} records)",
                                     "truncated" if size < want_size else "trailing bytes after the records")
        if d["records"] and not (0 < d["messages"] <= d["records"]):
            raise CaptureFormatError(path, "messages", f"1..{d['records']}", d["messages"])
        return BinaryHeader(path, d)


# -- conversion -------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def convert_capture(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, force: bool = False,
                    progress: Callable[[dict[str, int]], None] | None = None,
                    progress_interval_s: float = 1.0) -> dict[str, Any]:
    """Parse a JSON-lines capture into a binary capture at `dst`; returns the header written.

    The symbol table starts as `scan_symbols(src)`, exactly what a JSON replay of `src` uses (so ids and the
    bare-snapshot symbol agree), and auto-adds symbols that first appear later (a JSON replay would count
    those as unknown). The file appears under `dst` only when complete (written beside it, then renamed);
    an existing `dst` is refused unless `force`. `progress`, if given, is called about every
    `progress_interval_s` with the counts so far.
    """
    src, dst = Path(src), Path(dst)
    if dst.exists() and not force:
        raise FileExistsError(f"output exists: path={dst} (pass force=True / --force to overwrite)")
    if dst.resolve() == src.resolve():
        raise ValueError(f"output would overwrite the input: path={dst}")
    reader = CaptureReader(src)  # refuses a binary input with a clear message
    size = src.stat().st_size
    scanned = scan_symbols(src)
    table = SymbolTable(scanned, auto_add=True)
    bare = scanned[0] if len(scanned) == 1 else None  # as run.py/feed.py: a bare snapshot is the only symbol's
    parser = Parser(table, bare_symbol=bare)
    stage = np.zeros(CONVERT_BATCH, MARKET.dtype)
    n_rec = n_msg = 0
    max_msg = 0
    markets: set[int] = set()
    first_ts = last_ts = 0
    ts0: int | None = None
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".records", dir=dst.parent)
    body = os.fdopen(fd, "wb")
    t_next = time.monotonic() + progress_interval_s

    def flush(n: int) -> None:
        nonlocal n_msg, max_msg
        if not n:
            return
        recs = stage[:n]
        ends = np.flatnonzero(recs["flags"] & FLAG_LAST_IN_MESSAGE)
        n_msg += len(ends)
        lens = np.diff(ends, prepend=-1)
        max_msg = max(max_msg, int(lens.max()))  # every batch ends on a message end: no message spans two
        markets.update(np.unique(recs["market"]).tolist())
        body.write(recs.tobytes())

    try:
        k = 0  # records staged
        for ts, raw in reader:
            if ts0 is None:
                ts0 = ts
            n = parser.parse(raw, ts, stage, k)
            if n == ERR_NO_SPACE:
                parser.counters[PC_NO_SPACE] -= 1  # a full batch, retried at once: not a lost message
                flush(k)
                k = 0
                n = parser.parse(raw, ts, stage, 0)
                while n == ERR_NO_SPACE:  # one message larger than the whole stage: grow it
                    parser.counters[PC_NO_SPACE] -= 1
                    stage = np.zeros(2 * len(stage), MARKET.dtype)
                    n = parser.parse(raw, ts, stage, 0)
            if n > 0:
                if n_rec == 0:
                    first_ts = ts
                last_ts = ts
                n_rec += n
                k += n
            if progress is not None and time.monotonic() >= t_next:
                t_next += progress_interval_s
                progress({"lines": reader.lines, "records": n_rec, "bytes_read": reader.bytes_read,
                          "bytes": size, "symbols": len(table)})
        flush(k)
        body.close()
        header: dict[str, Any] = {
            "format": FORMAT_NAME, "version": VERSION, **layout_fields(MARKET),
            "records": n_rec, "messages": n_msg, "max_message_records": max_msg,
            "symbols": list(table.names), "bare_symbol": bare,
            "markets": [MARKET_NAMES.get(m, str(m)) for m in sorted(markets)],
            "ts0_ns": ts0 or 0, "first_ts_ns": first_ts, "last_ts_ns": last_ts,
            "source": {"name": src.name, "bytes": size, "sha256": _sha256(src), "lines": reader.lines,
                       "bad_lines": reader.bad_lines},
            "parse": parser.counts(),
            "created_by": "tickpipe scripts/convert_capture.py",
            "created_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        head = encode_header(header)
        header["data_offset"] = len(head)
        fd2, out_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".partial", dir=dst.parent)
        try:
            with os.fdopen(fd2, "wb") as out, open(tmp_name, "rb") as recs_in:
                out.write(head)
                shutil.copyfileobj(recs_in, out, 1 << 22)
            os.chmod(out_name, 0o644)
            os.replace(out_name, dst)  # only a complete file ever carries the final name
        except BaseException:
            Path(out_name).unlink(missing_ok=True)
            raise
    finally:
        body.close()
        Path(tmp_name).unlink(missing_ok=True)
    return header


def summarize(header: dict[str, Any]) -> str:
    """One paragraph for people: what a conversion kept and what it counted as skipped."""
    p = header["parse"]
    skipped = {k: p[k] for k in ("unknown_type", "unknown_symbol", "bad_json", "bad_field", "bad_number",
                                 "no_space") if p.get(k)}
    src = header["source"]
    return (f"messages {header['messages']:,} (of {src['lines']:,} lines; bad lines {src['bad_lines']}), "
            f"records {header['records']:,}, symbols {len(header['symbols'])} ({','.join(header['symbols'][:8])}"
            f"{',...' if len(header['symbols']) > 8 else ''}), markets {','.join(header['markets']) or '-'}, "
            f"by type: depth {p['depth']:,} snapshot {p['snapshot']:,} trade {p['trade']:,} ticker {p['ticker']:,}; "
            f"skipped (counted, no records): {skipped or 'none'}")


# -- replay -----------------------------------------------------------------------------------------
class BinaryReplay:
    """Whole messages of a binary capture, taken in batches as they fall due, paced like `replay.paced()`.

    The schedule is relative to `start_ns` (the feed sets it at go): a message recorded at ts (its records'
    t_origin_ns) is due at start_ns + (ts + loop shift - ts0 - offset) / speed, ts0 being the JSON file's
    first timestamp (header `ts0_ns`), so a window selects the same messages as on the JSON file; speed 0
    makes everything due at once. One difference: the loop shift spans the first to the last window
    message *with records* (a JSON replay also counts a trailing message it cannot use: at most one
    message's gap). The file is indexed `chunk_records` at a time (message ends, times, kinds), so memory
    stays flat on any file size.
    `take()` copies the due messages' records into a caller's array and stamps their t_origin_ns with the
    due time; `parse_counters()` counts the taken messages as a JSON replay would (by their last kind).
    """

    def __init__(self, cap: BinaryCapture, opts: ReplayOptions, *, start_ns: int = 0,
                 chunk_records: int = CHUNK_RECORDS) -> None:
        self.cap = cap
        self.rec = cap.records.view(np.ndarray)  # not the memmap subclass: its slicing costs ~1 µs in Python
        size = cap.layout.size
        # copies go through bytes: a structured-array copy measured 37 ns a record, a byte copy 3.8 ns
        self._bytes = self.rec.view(np.uint8).reshape(len(self.rec), size)
        self._out: np.ndarray | None = None
        self._out_b = self._out_t = self._bytes[:0]
        self.opts = opts
        self.start_ns = start_ns
        self.chunk = max(1, chunk_records)
        self.asap = opts.speed == 0
        n = len(self.rec)
        self._n = n
        self._ts0 = cap.header.ts0_ns
        self._base = self._ts0 + opts.offset_ns
        self._pass = 0
        self._shift = 0
        self._first0 = self._last0 = 0
        self._n_pass = 0  # messages in the window so far in this pass
        self._rpos = 0  # next record of the file to index
        self._pass_over = n == 0
        self.done = n == 0
        # indexed messages not yet taken start at _mi: first record, end record (exclusive), due (relative to
        # start_ns), the running max of due (a search key even if the capture's times step back), last kind,
        # and the number of record gaps before each (messages skipped inside the window's start)
        self._ms: list[int] = []
        self._me: list[int] = []
        self._due_l: list[int] = []
        self._due = np.zeros(0, np.int64)
        self._cmax = np.zeros(0, np.int64)
        self._me_a = np.zeros(0, np.int64)
        self._ms_a = np.zeros(0, np.int64)
        self._kind = np.zeros(0, np.int64)
        self._gaps: list[int] = []
        self._mi = 0
        self._counted = 0
        self._kinds = np.zeros(64, np.int64)
        self.messages = 0
        self.records = 0

    # -- indexing ----------------------------------------------------------------------------------
    def _extend(self) -> bool:
        """Index the next chunk of this pass; False when the pass has no more (end of file or window)."""
        if self._pass_over:
            return False
        rec, n, lo = self.rec, self._n, self._rpos
        hi = min(lo + self.chunk, n)
        while True:
            ends = np.flatnonzero(rec["flags"][lo:hi] & FLAG_LAST_IN_MESSAGE)
            if len(ends) or hi == n:
                break
            hi = min(lo + 2 * (hi - lo), n)  # a message longer than a chunk: look further
        if not len(ends):  # BinaryCapture checked the last record's flag: cannot happen on a checked file
            raise CaptureFormatError(self.cap.path, "flags", "a message end", "none", f"records {lo}..{n}")
        ends += lo + 1
        starts = np.empty_like(ends)
        starts[0] = lo
        starts[1:] = ends[:-1]
        self._rpos = int(ends[-1])
        if self._rpos >= n:
            self._pass_over = True
        ts = rec["t_origin_ns"][ends - 1].astype(np.int64)
        rel = ts - self._base
        keep = rel >= 0
        dur = self.opts.duration_ns
        if dur is not None:
            over = np.flatnonzero(rel >= dur)
            if len(over):  # captures are in arrival order: nothing after it is in the window
                cut = int(over[0])
                keep = keep[:cut]
                ends, starts, ts = ends[:cut], starts[:cut], ts[:cut]
                self._pass_over = True
        if not keep.all():
            ends, starts, ts = ends[keep], starts[keep], ts[keep]
        if len(ends):
            if self._pass == 0:
                if self._n_pass == 0:
                    self._first0 = int(ts[0])
                self._last0 = int(ts[-1])
            self._n_pass += len(ends)
            if self.asap:
                due = np.zeros(len(ends), np.int64)
            else:
                rel = ts + self._shift - self._base
                sp = self.opts.speed
                due = rel if sp == 1 else np.rint(rel / sp).astype(np.int64)  # rint: round() half to even
            self._append(starts, ends, due, rec["kind"][ends - 1].astype(np.int64))
        return True

    def _append(self, starts: np.ndarray, ends: np.ndarray, due: np.ndarray, kind: np.ndarray) -> None:
        mi = self._mi
        self.count_kinds()  # before the taken prefix is dropped
        prev_end = self._me[-1] if mi < len(self._me) else None
        self._ms_a = np.concatenate((self._ms_a[mi:], starts))
        self._me_a = np.concatenate((self._me_a[mi:], ends))
        self._due = np.concatenate((self._due[mi:], due))
        self._kind = np.concatenate((self._kind[mi:], kind))
        self._cmax = np.maximum.accumulate(self._due) if len(self._due) else self._due
        # a gap is a record range between two consecutive indexed messages that the window skipped
        gap = np.empty(len(starts), np.int64)
        gap[0] = prev_end is not None and int(starts[0]) != prev_end
        gap[1:] = starts[1:] != ends[:-1]
        base = self._gaps[-1] if mi < len(self._gaps) else 0
        self._gaps = self._gaps[mi:] + (np.cumsum(gap) + base).tolist()
        self._ms = self._ms[mi:] + starts.tolist()
        self._me = self._me[mi:] + ends.tolist()
        self._due_l = self._due_l[mi:] + due.tolist()
        self._mi = self._counted = 0

    def _ensure(self) -> bool:
        """At least one indexed message is waiting, starting the next loop pass if needed; False at the end."""
        while self._mi >= len(self._me):
            if self.done:
                return False
            if not self._extend():
                if self.opts.loop and self._n_pass:
                    self._pass += 1
                    self._shift = loop_shift_ns(self._pass, self._first0, self._last0, self.opts.loop_gap_ns)
                    self._rpos, self._n_pass, self._pass_over = 0, 0, False
                else:
                    self.done = True
                    return False
        return True

    def prefetch(self) -> bool:
        """Index the next chunk ahead of need (while the feed waits for the next due time); whether it did."""
        if self.done or self._pass_over or len(self._me) - self._mi >= PREFETCH_MESSAGES:
            return False
        return self._extend()

    # -- taking --------------------------------------------------------------------------------------
    def next_due(self) -> int | None:
        """Absolute due time of the next message, None at the end of the replay."""
        if not self._ensure():
            return None
        return self.start_ns + self._due_l[self._mi]

    def take(self, now_ns: int, out: np.ndarray, max_records: int, max_messages: int,
             lateness: np.ndarray | None = None) -> tuple[int, int]:
        """Copy the whole messages due at `now_ns` into out[:n], up to `max_records` (at least one message)
        and `max_messages`; stamp their t_origin_ns with their due time (speed 0: `now_ns`) and, if
        given, write each message's lateness (now - due) to `lateness`. Returns (messages, records)."""
        if max_messages < 1 or (self._mi >= len(self._me) and not self._ensure()):
            return 0, 0
        now_rel = now_ns - self.start_ns
        due_l = self._due_l
        if not self.asap and due_l[self._mi] > now_rel:
            return 0, 0  # the common idle poll at speed > 0: one list lookup
        if (not self._pass_over and self._me[-1] - self._ms[self._mi] < max_records
                and (self.asap or due_l[-1] <= now_rel)):
            self._extend()  # everything indexed is due: a full batch, not the tail of a chunk
            due_l = self._due_l
        mi = self._mi
        lim = min(len(self._me), mi + max_messages)
        if self.asap:
            m_hi = lim
        else:
            # paced batches are mostly a message or two: scan a few in Python, search only a backlog
            m_hi = mi + 1
            stop = min(lim, mi + 8)
            while m_hi < stop and due_l[m_hi] <= now_rel:
                m_hi += 1
            if m_hi == stop < lim:
                m_hi = mi + int(np.searchsorted(self._cmax[mi:lim], now_rel, "right"))
        s0 = self._ms[mi]
        if self._me[m_hi - 1] - s0 > max_records:  # only whole messages, within the record budget
            m_hi = max(mi + 1, mi + int(np.searchsorted(self._me_a[mi:m_hi], s0 + max_records, "right")))
        e1 = self._me[m_hi - 1]
        k = m_hi - mi
        if out is not self._out:  # byte and field views of the caller's array, made once
            self._out, self._out_b, self._out_t = out, out.view(np.uint8).reshape(len(out), -1), out["t_origin_ns"]
        ob = self._out_b
        if self._gaps[m_hi - 1] == self._gaps[mi]:  # contiguous in the file: one copy
            n = e1 - s0
            if n > len(out):
                raise CaptureFormatError(self.cap.path, "max_message_records", f">= {n}",
                                         self.cap.header.max_message_records, "a message is larger than stated")
            ob[:n] = self._bytes[s0:e1]
        else:
            n = 0
            for j in range(mi, m_hi):
                a, b = self._ms[j], self._me[j]
                ob[n:n + b - a] = self._bytes[a:b]
                n += b - a
        if self.asap:
            self._out_t[:n] = now_ns
            if lateness is not None:
                lateness[:k] = 0
        elif k == 1:
            self._out_t[:n] = self.start_ns + due_l[mi]
            if lateness is not None:
                lateness[0] = now_rel - due_l[mi]
        else:
            due = self._due[mi:m_hi]
            self._out_t[:n] = np.repeat(due + self.start_ns, self._me_a[mi:m_hi] - self._ms_a[mi:m_hi])
            if lateness is not None:
                lateness[:k] = now_rel - due
        self._mi = m_hi
        self.messages += k
        self.records += n
        return k, n

    # -- counters -------------------------------------------------------------------------------------
    def count_kinds(self) -> None:
        """Fold the kinds of the messages taken since the last call into the per-kind counts."""
        mi = self._mi
        if mi > self._counted:
            bc = np.bincount(self._kind[self._counted:mi], minlength=len(self._kinds))
            if len(bc) > len(self._kinds):
                self._kinds = np.concatenate((self._kinds, np.zeros(len(bc) - len(self._kinds), np.int64)))
            self._kinds[:len(bc)] += bc
            self._counted = mi

    def parse_counters(self) -> list[int]:
        """The parser's counters as a JSON replay of the same messages would report them: messages and
        records taken, by type; the error and unknown counters are 0 (those messages have no records:
        the conversion's counts of them are in the header)."""
        self.count_kinds()
        c = [0] * len(PARSE_COUNTER_NAMES)
        c[PC_MESSAGES] = self.messages
        c[PC_RECORDS] = self.records
        for kind, idx in _KIND_COUNTER.items():
            if kind < len(self._kinds):
                c[idx] += int(self._kinds[kind])
        return c

