"""The three ring shapes over a shared-memory segment, for plain Python and numba.

- `SpscRing`: one producer, one consumer, lossless, backpressure.
- `BroadcastRing`: one producer, N consumers each with its own cursor; lossless, the
  producer is held by the slowest consumer; each consumer's lag is readable.
- `Board`: the latest record per key under a seqlock; lossy by design (readers want the
  newest value); the per-key update counter tells a reader how many it skipped.

Positions are 64-bit counters that only grow; slot = position & (capacity - 1). The hot
calls (claim/publish/peek/release/offer/poll) return counts and never raise; every check
happens at create/attach time and raises `RingMismatch` naming field, expected and found.
Layout of the header and cursors: native/tickpipe.h. Algorithm: native/tickpipe.c.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any, ClassVar

import numpy as np

from shm.layout import Layout
from shm.native import ffi, lib
from shm.segment import (
    ABI_VERSION,
    MAGIC,
    Segment,
    SegmentError,
    pid_alive,
    process_start_time,
    segment_path,
)

SHAPE_SPSC = 1
SHAPE_BROADCAST = 2
SHAPE_BOARD = 3
SHAPE_BLOB = 4
SHAPE_NAMES = {SHAPE_SPSC: "spsc", SHAPE_BROADCAST: "broadcast", SHAPE_BOARD: "board", SHAPE_BLOB: "blob"}
#: Consumers per ring: the producer keeps their parked flags in one 32-bit word.
MAX_CONSUMERS = 32

STATE_INIT = 0
STATE_READY = 1
STATE_CLOSED = 2



def address(arr: np.ndarray) -> int:
    """The address of a C-contiguous array's data, for the C calls that take `uint64_t` pointers.
    Through cffi's from_buffer: ~0.4 µs against ~0.9 µs for `arr.ctypes.data`, which builds a ctypes object."""
    return int(ffi.cast("uintptr_t", ffi.from_buffer(arr)))

class RingMismatch(SegmentError):
    """Attaching found a header that does not match what the caller expects."""


def _fmt(field: str, v: Any) -> str:
    return f"{v:#018x}" if field in ("magic", "layout_hash") else str(v)


class Ring:
    """A ring segment. Create it once (the creator unlinks it), attach from other processes."""

    SHAPE: ClassVar[int] = SHAPE_SPSC

    def __init__(self, seg: Segment, layout: Layout, name: str) -> None:
        self.segment = seg
        self.layout = layout
        self.name = name
        self.addr: int = seg.addr
        self.hdr = ffi.cast("tp_ring_hdr_t *", seg.addr)
        self.capacity: int = int(self.hdr.capacity)
        self.n_consumers: int = int(self.hdr.n_consumers)
        self.mask: int = self.capacity - 1
        self.slot_size: int = int(self.hdr.slot_size)
        self._data_offset = int(self.hdr.data_offset)

    # -- lifecycle -----------------------------------------------------------------------------
    @classmethod
    def _create(cls, run: str, name: str, layout: Layout, capacity: int, n_consumers: int,
                *, prefault: bool = True) -> Ring:
        shape = cls.SHAPE
        if shape in (SHAPE_SPSC, SHAPE_BROADCAST) and (capacity < 2 or capacity & (capacity - 1)):
            raise SegmentError(f"capacity must be a power of two >= 2: ring={name} capacity={capacity}")
        if shape in (SHAPE_BOARD, SHAPE_BLOB) and capacity < 1:
            raise SegmentError(f"needs at least one entry: ring={name} entries={capacity}")
        if not 1 <= n_consumers <= MAX_CONSUMERS:
            raise SegmentError(f"bad consumer count: ring={name} consumers={n_consumers} "
                               f"expected 1..{MAX_CONSUMERS}")
        seq = next((f for f in layout.fields if f.name == "seq"), None)
        if shape != SHAPE_BLOB and (seq is None or layout.offsets["seq"] != 0 or seq.code != "u8"):
            raise SegmentError(f"ring records must start with the u64 `seq` of the common header: "
                               f"ring={name} layout={layout.name}")
        size = lib.tp_ring_bytes(shape, layout.size, capacity, n_consumers)
        seg = Segment.create(segment_path(run, name), size, prefault=prefault)
        rc = lib.tp_ring_init(seg.addr, size, shape, layout.layout_hash, layout.size, capacity,
                              n_consumers, os.getpid(), process_start_time(os.getpid()))
        if rc != 0:  # unreachable after the checks above; kept so C and Python never disagree silently
            seg.close()
            raise SegmentError(f"tp_ring_init failed: ring={name} rc={rc}")
        ring = cls(seg, layout, name)
        ring.hdr.state = STATE_READY
        return ring

    @classmethod
    def attach(cls, run: str, name: str, layout: Layout, *, capacity: int | None = None,
               n_consumers: int | None = None) -> Ring:
        """Map an existing ring; refuse it unless every header field matches."""
        path = segment_path(run, name)
        seg = Segment.attach(path)
        try:
            hdr = ffi.cast("tp_ring_hdr_t *", seg.addr)
            if seg.size < ffi.sizeof("tp_ring_hdr_t"):
                raise RingMismatch(f"segment {path}: field=segment_size expected>="
                                   f"{ffi.sizeof('tp_ring_hdr_t')} found={seg.size}")
            expect = [("magic", MAGIC), ("abi_version", ABI_VERSION), ("shape", cls.SHAPE),
                      ("layout_hash", layout.layout_hash), ("slot_size", layout.size),
                      ("segment_size", seg.size)]
            if capacity is not None:
                expect.append(("capacity", capacity))
            if n_consumers is not None:
                expect.append(("n_consumers", n_consumers))
            for field, want in expect:
                got = int(getattr(hdr, field))
                if got != want:
                    extra = ""
                    if field == "layout_hash":
                        extra = f" (record {layout.name}: the writer uses a different record layout)"
                    elif field == "shape":
                        extra = f" ({SHAPE_NAMES.get(want)} expected, {SHAPE_NAMES.get(got, '?')} found)"
                    raise RingMismatch(f"segment {path}: field={field} expected={_fmt(field, want)} "
                                       f"found={_fmt(field, got)}{extra}")
            if cls.SHAPE in (SHAPE_SPSC, SHAPE_BROADCAST) and hdr.capacity & (hdr.capacity - 1):
                raise RingMismatch(f"segment {path}: field=capacity expected=power of two "
                                   f"found={hdr.capacity}")
            if int(hdr.data_offset) != lib.tp_data_offset(hdr.n_consumers):
                raise RingMismatch(f"segment {path}: field=data_offset "
                                   f"expected={lib.tp_data_offset(hdr.n_consumers)} found={hdr.data_offset}")
        except BaseException:
            seg.close()
            raise
        return cls(seg, layout, name)

    def close(self) -> None:
        if self.segment.owner and self.hdr is not None:
            self.hdr.state = STATE_CLOSED
        self.slots = None  # drop our view so the mapping can go
        self.hdr = None
        self.segment.close()

    def __enter__(self) -> Ring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- views ---------------------------------------------------------------------------------
    @property
    def slots(self) -> np.ndarray:
        """The records as a structured array over the mapping (zero-copy)."""
        if getattr(self, "_slots", None) is None:
            self._slots = np.frombuffer(self.segment.buffer(), dtype=self.layout.dtype,
                                        count=self.capacity, offset=self._data_offset)
        return self._slots

    @slots.setter
    def slots(self, value: None) -> None:
        self._slots = value

    @property
    def path(self) -> str:
        return str(self.segment.path)

    @property
    def producer_position(self) -> int:
        return int(lib.tp_prod_pos(self.addr))

    def consumer_position(self, index: int) -> int:
        return int(lib.tp_cons_pos(self.addr, index))

    def lag(self, index: int) -> int:
        """Records published but not yet released by consumer `index`."""
        return int(lib.tp_lag(self.addr, index))

    def producer(self) -> Producer:
        return Producer(self)

    def consumer(self, index: int = 0, *, parks: bool = False) -> Consumer:
        return Consumer(self, index, parks=parks)

    def enable_park(self) -> None:
        """Producers start checking for parked waiters on every publish (one fence)."""
        lib.tp_enable_park(self.addr)


class SpscRing(Ring):
    SHAPE = SHAPE_SPSC

    @classmethod
    def create(cls, run: str, name: str, layout: Layout, capacity: int, *, prefault: bool = True) -> SpscRing:
        return cls._create(run, name, layout, capacity, 1, prefault=prefault)  # type: ignore[return-value]


class BroadcastRing(Ring):
    SHAPE = SHAPE_BROADCAST

    @classmethod
    def create(cls, run: str, name: str, layout: Layout, capacity: int, n_consumers: int,
               *, prefault: bool = True) -> BroadcastRing:
        return cls._create(run, name, layout, capacity, n_consumers,  # type: ignore[return-value]
                           prefault=prefault)


class Board(Ring):
    """Latest record per key. `capacity` is the number of keys; consumers wait on any update."""

    SHAPE = SHAPE_BOARD

    @classmethod
    def create(cls, run: str, name: str, layout: Layout, n_keys: int, n_readers: int = 1,
               *, prefault: bool = True) -> Board:
        return cls._create(run, name, layout, n_keys, n_readers, prefault=prefault)  # type: ignore[return-value]

    def __init__(self, seg: Segment, layout: Layout, name: str) -> None:
        super().__init__(seg, layout, name)
        self.mask = -1  # not a power-of-two ring
        self.entry_size = 64 + self.slot_size

    @property
    def slots(self) -> np.ndarray:
        """Raw slots per key; read them with `read` (seqlock), not directly."""
        raise AttributeError("board records must be read through Board.read (seqlock)")

    @slots.setter
    def slots(self, value: None) -> None:
        pass

    @property
    def write_view(self) -> np.ndarray:
        """Per-key records for the single writer (numba): touch key k only between
        `board_begin(addr, k)` and `board_commit(addr, k)`."""
        if getattr(self, "_wview", None) is None:
            self._wview = np.ndarray((self.capacity,), dtype=self.layout.dtype, buffer=self.segment.buffer(),
                                     offset=self._data_offset + 64, strides=(self.entry_size,))
        return self._wview

    def close(self) -> None:
        self._wview = None
        super().close()

    def write(self, key: int, record: np.ndarray | np.void | bytes) -> None:
        """Publish the newest record for `key` (single writer)."""
        dst = lib.tp_board_begin(self.addr, key)
        data = record.tobytes() if hasattr(record, "tobytes") else record
        ffi.memmove(ffi.cast("char *", dst), data, min(len(data), self.slot_size))
        lib.tp_board_commit(self.addr, key)

    def read(self, key: int, out: np.ndarray) -> int:
        """Copy the newest record of `key` into `out` (one record); returns its update count, 0 if none."""
        return int(lib.tp_board_read(self.addr, key, address(out)))

    def updates(self, key: int) -> int:
        return int(lib.tp_board_updates(self.addr, key))

    @property
    def version(self) -> int:
        """Total updates over all keys: what consumers wait on."""
        return self.producer_position


class Blob(Ring):
    """Plain shared state with the standard header (so attach checks and dead-run cleanup apply):
    an array of `n` records of `layout`, e.g. per-process control words, counters, histograms."""

    SHAPE = SHAPE_BLOB

    @classmethod
    def create(cls, run: str, name: str, layout: Layout, n: int, *, prefault: bool = True) -> Blob:
        return cls._create(run, name, layout, n, 1, prefault=prefault)  # type: ignore[return-value]

    def __init__(self, seg: Segment, layout: Layout, name: str) -> None:
        super().__init__(seg, layout, name)
        self.mask = -1

    @property
    def slots(self) -> np.ndarray:
        if getattr(self, "_slots", None) is None:
            self._slots = np.frombuffer(self.segment.buffer(), dtype=self.layout.dtype,
                                        count=self.capacity, offset=self._data_offset)
        return self._slots

    @slots.setter
    def slots(self, value: None) -> None:
        self._slots = value


class Producer:
    """The single writer of a ring. Hot calls return counts and never raise."""

    def __init__(self, ring: Ring) -> None:
        self.ring = ring
        self.addr = ring.addr
        h = ring.hdr
        h.prod_pid = os.getpid()
        h.prod_start_time = process_start_time(os.getpid())
        #: fast path for plain-Python hot loops: offer_raw(data, size) -> 0/1, a C call with no
        #: Python frame in between (a method call costs ~100 ns more on this VM)
        self.offer_raw = partial(lib.tp_offer, self.addr)
        self.heartbeat()

    def claim(self, n: int) -> int:
        """Slots free for writing, up to n, starting at `position`."""
        return lib.tp_claim(self.addr, n)

    def publish(self, n: int) -> None:
        lib.tp_publish(self.addr, n)

    @property
    def position(self) -> int:
        return int(lib.tp_prod_pos(self.addr))

    def offer(self, data: bytes) -> bool:
        """Claim, copy and publish one record in a single C call; False when full."""
        return bool(lib.tp_offer(self.addr, data, len(data)))

    def write(self, records: np.ndarray) -> int:
        """Copy as many of `records` as fit (handling the wrap), publish them; returns the count.

        Each record's `seq` is left to the ring (it is the slot's commit flag)."""
        if records.dtype.itemsize != self.ring.slot_size or not records.flags.c_contiguous:
            records = np.ascontiguousarray(records, dtype=self.ring.layout.dtype)
        return int(lib.tp_write(self.addr, address(records), len(records), records.dtype.itemsize))

    def park(self, timeout_ns: int) -> bool:
        """Sleep until a consumer frees space or `timeout_ns` passes; False on timeout."""
        return bool(lib.tp_prod_park(self.addr, timeout_ns))

    def heartbeat(self, now_ns: int | None = None) -> None:
        lib.tp_heartbeat(self.addr, -1, lib.tp_now_ns() if now_ns is None else now_ns)


class Consumer:
    """One reader of a ring, with its own cursor."""

    def __init__(self, ring: Ring, index: int, *, parks: bool = False) -> None:
        if not 0 <= index < ring.n_consumers:
            raise SegmentError(f"bad consumer index: ring={ring.name} index={index} "
                               f"expected 0..{ring.n_consumers - 1}")
        self.ring = ring
        self.index = index
        self.addr = ring.addr
        c = ffi.cast("tp_consumer_t *", ring.addr + ffi.sizeof("tp_ring_hdr_t")) + index
        c.pid = os.getpid()
        c.start_time = process_start_time(os.getpid())
        self._c = c
        #: fast path for plain-Python hot loops: poll_raw(cffi_char_buffer, size) -> 0/1
        self.poll_raw = partial(lib.tp_poll, self.addr, index)
        if parks:
            ring.enable_park()
        self.heartbeat()

    def peek(self, n: int) -> int:
        """Records readable, up to n, starting at `position`."""
        return lib.tp_peek(self.addr, self.index, n)

    def release(self, n: int) -> None:
        lib.tp_release(self.addr, self.index, n)

    @property
    def position(self) -> int:
        return int(lib.tp_cons_pos(self.addr, self.index))

    @property
    def lag(self) -> int:
        return int(lib.tp_lag(self.addr, self.index))

    def poll(self, out: Any) -> bool:
        """Copy the next record into `out` (a cffi char buffer) and release it; False when empty."""
        return bool(lib.tp_poll(self.addr, self.index, out, len(out)))

    def read(self, max_n: int) -> np.ndarray:
        """Copy out up to `max_n` records (handling the wrap) and release them."""
        k = lib.tp_peek(self.addr, self.index, max_n)
        out = np.empty(k, dtype=self.ring.slots.dtype)
        self.copy_into(out, k)
        lib.tp_release(self.addr, self.index, k)
        return out

    def copy_into(self, out: np.ndarray, k: int) -> None:
        """Copy the next k readable records (k <= peek's count) into out[:k], handling the wrap; no release."""
        slots = self.ring.slots
        start = lib.tp_cons_pos(self.addr, self.index) & self.ring.mask
        first = min(k, self.ring.capacity - start)
        out[:first] = slots[start:start + first]
        if k > first:
            out[first:k] = slots[:k - first]

    def park(self, timeout_ns: int) -> bool:
        """Sleep until the producer publishes or `timeout_ns` passes; False on timeout.

        The producer only pays for a wake-up when a consumer is parked; it learns that through
        `enable_park` (set by consumers created with parks=True)."""
        return bool(lib.tp_cons_park(self.addr, self.index, timeout_ns))

    def detach(self) -> None:
        """Stop holding the producer back (a consumer that leaves for good)."""
        lib.tp_set_active(self.addr, self.index, 0)

    def heartbeat(self, now_ns: int | None = None) -> None:
        lib.tp_heartbeat(self.addr, self.index, lib.tp_now_ns() if now_ns is None else now_ns)

    def producer_alive(self, max_heartbeat_age_ns: int | None = None) -> bool:
        """False if the producer's process is gone (pid and start time) or its heartbeat is stale."""
        h = self.ring.hdr
        pid = int(h.prod_pid)
        if pid == 0:
            return pid_alive(int(h.creator_pid), int(h.creator_start_time))
        if not pid_alive(pid, int(h.prod_start_time)):
            return False
        if max_heartbeat_age_ns is not None:
            return lib.tp_now_ns() - int(h.prod_heartbeat_ns) <= max_heartbeat_age_ns
        return True
