"""Replay reader (gzip or plain by content, bad lines counted) and the pacing maths."""

from __future__ import annotations

import gzip
import itertools
from pathlib import Path

import pytest

from procs.sources.replay import (
    CaptureReader,
    ReplayOptions,
    in_window,
    loop_shift_ns,
    paced,
    read_capture,
    schedule_ns,
    wait_until,
)

LINES = [(1_000, b'{"a":1}'), (1_500, b'{"a":2}'), (4_000, b'{"a":3}'), (10_000, b'{"a":4}')]


def _write(path: Path, lines: list[tuple[int, bytes]], compress: bool, extra: bytes = b"") -> Path:
    body = b"".join(b"%d %s\n" % (ts, raw) for ts, raw in lines) + extra
    path.write_bytes(gzip.compress(body) if compress else body)
    return path


@pytest.mark.parametrize("compress", [True, False])
def test_reader_detects_format_by_content(tmp_path: Path, compress: bool) -> None:
    # misleading names on purpose: detection is by magic bytes
    path = _write(tmp_path / ("plain.txt" if compress else "capture.gz"), LINES, compress)
    r = CaptureReader(path)
    assert r.compressed == compress
    assert list(r) == LINES and r.lines == 4 and r.bad_lines == 0


def test_reader_counts_bad_lines_and_handles_chunk_edges(tmp_path: Path) -> None:
    lines = [(i * 10, b'{"k":"' + b"x" * (i % 37) + b'"}') for i in range(2000)]
    path = _write(tmp_path / "c", lines, True, extra=b"garbage\n\n12x {}\n 5 {}\r\n99 {\"last\":1}")
    r = CaptureReader(path, chunk_bytes=61)  # lines straddle chunks all the time
    got = list(r)
    assert got[:-1] == lines and got[-1] == (99, b'{"last":1}')  # no final newline: still read
    assert r.bad_lines == 3 and r.lines == 2001


def test_reader_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="capture not found"):
        read_capture(tmp_path / "none")


def test_schedule_maths() -> None:
    assert schedule_ns(1_000, 1_000, 50, 1.0) == 50
    assert schedule_ns(3_000, 1_000, 50, 1.0) == 2_050
    assert schedule_ns(3_000, 1_000, 50, 10.0) == 250
    assert schedule_ns(3_000, 1_000, 50, 0.5) == 4_050
    assert schedule_ns(3_000, 1_000, 50, 1.0, offset_ns=500) == 1_550
    assert schedule_ns(10**18, 0, 0, 0) == 0  # speed 0: due at once
    with pytest.raises(ValueError, match="speed"):
        schedule_ns(1, 0, 0, -1)


def test_window_and_loop_shift() -> None:
    assert in_window(1_000, 1_000) and in_window(5_000, 1_000, 0, None)
    assert not in_window(1_999, 1_000, 1_000) and in_window(2_000, 1_000, 1_000, 500)
    assert not in_window(2_500, 1_000, 1_000, 500)
    assert loop_shift_ns(0, 100, 900, 50) == 0
    assert loop_shift_ns(3, 100, 900, 50) == 3 * 850


def test_paced_offset_duration_speed() -> None:
    got = list(paced(lambda: iter(LINES), 7, ReplayOptions(speed=2.0, offset_ns=400, duration_ns=3_200)))
    # window [1400, 4600): messages at 1500 and 4000
    assert [(due, ts) for due, ts, _ in got] == [(7 + 50, 1_500), (7 + 1_300, 4_000)]


def test_paced_loop_keeps_time_increasing() -> None:
    opts = ReplayOptions(speed=1.0, loop=True, loop_gap_ns=100)
    it = paced(lambda: iter(LINES), 0, opts)
    got = [next(it) for _ in range(10)]
    ts = [t for _, t, _ in got]
    assert ts[:4] == [1_000, 1_500, 4_000, 10_000]
    assert ts[4:8] == [1_000 + 9_100, 1_500 + 9_100, 4_000 + 9_100, 10_000 + 9_100]  # span 9000 + gap 100
    assert all(b > a for a, b in itertools.pairwise(ts))
    assert [due for due, _, _ in got] == [t - 1_000 for t in ts]
    assert [raw for _, _, raw in got[4:8]] == [raw for _, raw in LINES]


def test_paced_speed_zero_is_due_at_once() -> None:
    got = list(paced(lambda: iter(LINES), 42, ReplayOptions(speed=0)))
    assert [due for due, _, _ in got] == [42] * 4


def test_replay_options_validate() -> None:
    for kw in ({"speed": -1}, {"offset_ns": -1}, {"duration_ns": 0}, {"loop_gap_ns": 0}):
        with pytest.raises(ValueError, match="must be"):
            ReplayOptions(**kw)


def test_wait_until_with_a_fake_clock() -> None:
    now = [0]

    def clock() -> int:
        now[0] += 40_000
        return now[0]

    late = wait_until(100_000, clock, spin_ns=10**9)  # spins on the fake clock, never sleeps
    assert now[0] >= 100_000 and late == now[0] - 100_000 and 0 <= late < 40_000
