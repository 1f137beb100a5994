"""Named shared-memory segments: /dev/shm/tickpipe-<run>-<name>.

The creator makes the file (mode 0600, O_EXCL), sizes and pre-faults it, and unlinks it on
close. `cleanup_dead()` removes segments whose creator process is gone (checked by pid *and*
process start time, so a recycled pid is not mistaken for the creator); run start calls it.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import re
import time
from pathlib import Path

from shm.native import ffi, lib

log = logging.getLogger("tickpipe.shm")

SHM_DIR = Path(os.environ.get("TICKPIPE_SHM_DIR", "/dev/shm"))
PREFIX = "tickpipe-"
_TOKEN = re.compile(r"^[A-Za-z0-9_.]+$")
#: A segment with no valid header yet is left alone for this long (its creator may be mid-setup).
_YOUNG_S = 10.0


class SegmentError(RuntimeError):
    """A segment could not be created, attached or validated; the message names the field."""


def segment_path(run: str, name: str) -> Path:
    for key, val in (("run", run), ("name", name)):
        if not _TOKEN.match(val):
            raise SegmentError(f"bad segment {key}: {key}={val!r} expected letters, digits, '_' or '.'")
    return SHM_DIR / f"{PREFIX}{run}-{name}"


def new_run_id() -> str:
    """A short id unique on this host: pid plus a time stamp, both hex."""
    return f"{os.getpid():x}{time.time_ns() // 1_000_000 % (1 << 32):08x}"


def process_start_time(pid: int) -> int:
    """Start time of `pid` in clock ticks since boot (0 when it does not exist or is a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return 0
    # the command name may contain spaces and parentheses: fields resume after the last ')'
    fields = data[data.rindex(b")") + 2:].split()
    if fields[0] in (b"Z", b"X"):  # killed but not yet reaped: dead for our purposes
        return 0
    return int(fields[19])


def pid_alive(pid: int, start_time: int) -> bool:
    """True if `pid` runs and is the same process that recorded `start_time`."""
    if pid <= 0:
        return False
    st = process_start_time(pid)
    return st != 0 and (start_time == 0 or st == start_time)


class Segment:
    """A mapped segment. `addr` is its base address as an int (what numba and C take)."""

    def __init__(self, path: Path, mm: mmap.mmap, size: int, owner: bool) -> None:
        self.path = path
        self.size = size
        self.owner = owner
        self._mm: mmap.mmap | None = mm
        self._buf = ffi.from_buffer(mm)  # holds the mapping exported while we use the address
        self.addr: int = int(ffi.cast("uintptr_t", self._buf))

    @classmethod
    def create(cls, path: Path, size: int, *, prefault: bool = True) -> Segment:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise SegmentError(f"segment exists: path={path} (another run, or a leftover: "
                               "`python run.py --cleanup` removes segments of dead runs)") from None
        except OSError as exc:
            raise SegmentError(f"cannot create segment: path={path} error={exc.strerror}") from None
        try:
            os.ftruncate(fd, size)
            flags = mmap.MAP_SHARED | (mmap.MAP_POPULATE if prefault else 0)
            mm = mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise SegmentError(f"cannot size segment: path={path} size={size} error={exc.strerror} "
                               f"(is {SHM_DIR} big enough? `df -h {SHM_DIR}`)") from None
        os.close(fd)
        seg = cls(path, mm, size, owner=True)
        if prefault:
            lib.tp_prefault(seg.addr, size)
        return seg

    @classmethod
    def attach(cls, path: Path) -> Segment:
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            raise SegmentError(f"no such segment: path={path} (was the run started, "
                               "and is the run id right?)") from None
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                raise SegmentError(f"segment is empty: path={path} size=0 (creator not finished?)")
            mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE,
                           prot=mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        return cls(path, mm, size, owner=False)

    def buffer(self) -> mmap.mmap:
        if self._mm is None:
            raise SegmentError(f"segment is closed: path={self.path}")
        return self._mm

    def unlink(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def close(self) -> None:
        """Unlink (if we created it) and unmap; unmapping is skipped while numpy views exist."""
        if self.owner:
            self.unlink()
        if self._mm is not None:
            self._buf = None
            with contextlib.suppress(BufferError):  # views still alive: the mapping goes with them
                self._mm.close()
            self._mm = None

    def __enter__(self) -> Segment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def list_segments(run: str | None = None) -> list[Path]:
    pattern = f"{PREFIX}{run}-*" if run else f"{PREFIX}*"
    return sorted(SHM_DIR.glob(pattern))


def remove_run(run: str) -> int:
    """Unlink every segment of `run`; returns how many were removed."""
    n = 0
    for p in list_segments(run):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            n += 1
    return n


def cleanup_dead() -> list[Path]:
    """Remove segments whose creator is dead; returns the paths removed."""
    hdr_size = ffi.sizeof("tp_ring_hdr_t")
    removed = []
    for p in list_segments():
        try:
            with open(p, "rb") as f:
                raw = f.read(hdr_size)
            age = time.time() - p.stat().st_mtime
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("cannot inspect segment %s: %s", p, exc)
            continue
        if len(raw) < hdr_size:
            if age > _YOUNG_S:
                removed.append(p)
            continue
        h = ffi.cast("tp_ring_hdr_t *", ffi.from_buffer(raw))
        if h.magic != MAGIC:
            if age > _YOUNG_S:
                removed.append(p)
            continue
        if not pid_alive(h.creator_pid, h.creator_start_time):
            removed.append(p)
    for p in removed:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
        log.info("removed segment of a dead run: %s", p)
    return removed


#: "TICKPIPE" as a little-endian u64: first field of every segment header.
MAGIC = 0x455049504B434954
#: Bumped whenever the header or cursor layout in native/tickpipe.h changes.
ABI_VERSION = 1
