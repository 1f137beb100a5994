"""The live status line: interval percentiles and rates, TTY / plain / quiet output, safe failure."""

from __future__ import annotations

import io

import numpy as np

from procs.config import Config
from procs.launcher import Launcher
from procs.prom import LiveStatus, StatusSample
from shm.hdr import Histogram


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


class _Broken(_Tty):
    def write(self, s: str) -> int:
        raise OSError("stdout is gone")


def _counts(*values_ns: int) -> np.ndarray:
    return Histogram.from_values(np.array(values_ns, dtype=np.int64)).counts


def _sample(t: float, books: int, orders: int, e2e: np.ndarray, fill: float = 0.25) -> StatusSample:
    return StatusSample(t=t, counters={"feed": {"messages_out": books * 3}, "book": {"books_out": books, "gaps": 2},
                                       "strategy": {"books_in": books, "orders_out": orders},
                                       "inference": {"scored": books // 2}},
                        e2e=e2e, fill={"market": fill, "book": 0.0})


def test_percentiles_cover_only_the_last_interval() -> None:
    first = _counts(*[10_000] * 100)  # 100 samples at 10 µs
    second = first + _counts(*[2_000_000] * 300)  # then 300 at 2 ms
    st = LiveStatus(io.StringIO(), "line")
    line1 = st.update(_sample(10.0, 100, 4, first), elapsed=1.0)
    line2 = st.update(_sample(12.0, 500, 10, second), elapsed=3.0)
    assert "p50 10.0 µs p99 10.0 µs (n=100)" in line1
    # the cumulative histogram would give p50 2 ms and p99 2 ms too, but n=400: the interval has only the new 300
    assert "p50 2.00 ms p99 2.00 ms (n=300)" in line2
    # rates over the 2 s between the samples: (500 - 100) / 2 books/s, (10 - 4) / 2 orders/s
    assert "book     200 upd/s" in line2 and "strategy     200 upd/s" in line2
    assert "feed     600 msg/s" in line2
    assert "orders 10 (3/s)" in line2
    assert "fill market 25% book 0%" in line2 and "gaps 2" in line2


def test_an_empty_interval_prints_dashes_not_stale_percentiles() -> None:
    h = _counts(5_000, 6_000)
    st = LiveStatus(io.StringIO(), "line")
    st.update(_sample(1.0, 10, 0, h), elapsed=1.0)
    line = st.update(_sample(2.0, 10, 0, h.copy()), elapsed=2.0)
    assert "p50 - p99 - (n=0)" in line
    assert "book       0 upd/s" in line


def test_a_reset_histogram_counts_as_all_new() -> None:
    st = LiveStatus(io.StringIO(), "line")
    st.update(_sample(1.0, 10, 0, _counts(*[1_000] * 50)), elapsed=1.0)
    line = st.update(_sample(2.0, 20, 0, _counts(7_000)), elapsed=2.0)
    assert "p50 7.00 µs p99 7.00 µs (n=1)" in line


def test_output_modes() -> None:
    h = _counts(1_000)
    plain = io.StringIO()  # not a TTY: quiet in auto mode
    st = LiveStatus(plain, "auto")
    assert not st.enabled
    st.update(_sample(1.0, 1, 0, h), elapsed=1.0)
    st.end()
    assert plain.getvalue() == ""

    forced = io.StringIO()  # "line": a plain line per interval even when piped
    st = LiveStatus(forced, "line")
    st.update(_sample(1.0, 1, 0, h), elapsed=1.0)
    st.update(_sample(2.0, 2, 0, h), elapsed=2.0)
    out = forced.getvalue()
    assert out.count("\n") == 2 and "\r" not in out

    tty = _Tty()  # a terminal: one line rewritten in place, finished by end()
    st = LiveStatus(tty, "auto")
    st.update(_sample(1.0, 1, 0, h), elapsed=1.0)
    st.update(_sample(2.0, 2, 0, h), elapsed=2.0)
    assert tty.getvalue().count("\r") == 2 and "\n" not in tty.getvalue()
    assert tty.getvalue().endswith("\x1b[K")
    st.end()
    st.end()
    assert tty.getvalue().endswith("\x1b[K\n") and tty.getvalue().count("\n") == 1

    off = _Tty()
    st = LiveStatus(off, "off")
    st.update(_sample(1.0, 1, 0, h), elapsed=1.0)
    assert off.getvalue() == ""


def test_a_broken_stdout_turns_the_line_off_instead_of_failing() -> None:
    st = LiveStatus(_Broken(), "auto")
    assert st.enabled
    line = st.update(_sample(1.0, 1, 0, _counts(1_000)), elapsed=1.0)
    assert line is not None and not st.enabled
    st.end()


class _FailingState:
    def hist(self, agent: int, which: int) -> np.ndarray:
        raise RuntimeError("segment unmapped")


def test_launcher_status_survives_a_failing_read() -> None:
    cfg = Config()
    cfg.metrics.status = "line"
    out = io.StringIO()
    launcher = Launcher(cfg, symbols=["BTCUSDT"], out=out)
    launcher._status(np.zeros(0), _FailingState(), 1.0)  # type: ignore[arg-type]
    assert "status line off after an error" in out.getvalue()
    assert launcher._live is not None and not launcher._live.enabled
    launcher._status(np.zeros(0), _FailingState(), 2.0)  # type: ignore[arg-type]
    assert out.getvalue().count("status line off") == 1


def test_launcher_status_is_quiet_with_quiet() -> None:
    cfg = Config()
    cfg.metrics.status = "line"
    out = _Tty()
    launcher = Launcher(cfg, symbols=["BTCUSDT"], out=out, quiet=True)
    launcher._status(np.zeros(0), _FailingState(), 1.0)  # type: ignore[arg-type]
    assert out.getvalue() == ""
