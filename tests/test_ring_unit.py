"""Single-process ring behaviour: wrap, full, empty, batch edges, validation errors."""

from __future__ import annotations

import os

import numpy as np
import pytest

from shm import records as R
from shm import wait
from shm.native import ffi, lib
from shm.ring import Board, BroadcastRing, RingMismatch, SpscRing
from shm.segment import SegmentError, cleanup_dead, list_segments, pid_alive, process_start_time, segment_path


def _batch(start: int, n: int) -> np.ndarray:
    a = np.zeros(n, R.BENCH.dtype)
    a["value"] = np.arange(start, start + n)
    a["check"] = a["value"] * 3 + 1
    return a


def test_empty_ring_reads_nothing(run_id: str) -> None:
    with SpscRing.create(run_id, "r", R.BENCH, 16) as ring:
        c = ring.consumer()
        assert c.peek(1) == 0 and c.peek(100) == 0 and c.peek(0) == 0
        assert len(c.read(10)) == 0
        buf = ffi.new("char[64]")
        assert not c.poll(buf)
        assert ring.lag(0) == 0


def test_full_ring_refuses_then_accepts(run_id: str) -> None:
    with SpscRing.create(run_id, "r", R.BENCH, 8) as ring:
        p, c = ring.producer(), ring.consumer()
        assert p.claim(100) == 8  # capped at capacity
        assert p.write(_batch(0, 10)) == 8
        assert p.claim(1) == 0 and p.write(_batch(8, 1)) == 0
        assert not p.offer(b"\0" * 64)
        assert ring.lag(0) == 8
        assert list(c.read(3)["value"]) == [0, 1, 2]
        assert p.claim(5) == 3  # only what was released
        assert p.write(_batch(8, 5)) == 3
        got = c.read(100)
        assert list(got["value"]) == list(range(3, 11))
        assert list(got["seq"]) == list(range(4, 12))  # the ring stamps seq = position + 1


def test_wraparound_many_times_preserves_order(run_id: str) -> None:
    with SpscRing.create(run_id, "r", R.BENCH, 16) as ring:
        p, c = ring.producer(), ring.consumer()
        rng = np.random.default_rng(1)
        written = read = 0
        for _ in range(2000):
            written += p.write(_batch(written, int(rng.integers(0, 20))))
            got = c.read(int(rng.integers(0, 20)))
            assert np.array_equal(got["value"], np.arange(read, read + len(got)))
            assert np.array_equal(got["seq"], got["value"] + 1)
            assert np.array_equal(got["check"], got["value"] * 3 + 1)
            read += len(got)
        assert ring.producer_position == written > 16 * 100
        assert ring.consumer_position(0) == read


def test_copy_into_across_the_wrap_releases_nothing(run_id: str) -> None:
    with SpscRing.create(run_id, "r", R.BENCH, 8) as ring:
        p, c = ring.producer(), ring.consumer()
        assert p.write(_batch(0, 6)) == 6 and len(c.read(6)) == 6
        assert p.write(_batch(6, 5)) == 5  # positions 6..10: slots 6, 7, 0, 1, 2
        out = np.zeros(8, R.BENCH.dtype)
        c.copy_into(out, c.peek(8))
        assert list(out["value"][:5]) == [6, 7, 8, 9, 10] and (out["value"][5:] == 0).all()
        assert ring.lag(0) == 5  # still there: the caller releases when it is done with them
        assert list(c.read(8)["value"]) == [6, 7, 8, 9, 10]


def test_claim_publish_peek_release_batch_edges(run_id: str) -> None:
    with SpscRing.create(run_id, "r", R.BENCH, 4) as ring:
        p, c = ring.producer(), ring.consumer()
        slots = ring.slots
        for n in (1, 4, 3, 2, 4):  # batches that end exactly on, before and across the wrap
            k = p.claim(n)
            assert k == n
            base = p.position
            for i in range(k):
                slots[(base + i) & ring.mask]["value"] = base + i
            assert c.peek(n) == 0  # nothing visible before publish
            p.publish(k)
            assert c.peek(10) == k
            start = c.position
            got = [int(slots[(start + i) & ring.mask]["value"]) for i in range(k)]
            assert got == list(range(start, start + k))
            seqs = [int(slots[(start + i) & ring.mask]["seq"]) for i in range(k)]
            assert seqs == list(range(start + 1, start + k + 1))
            c.release(k)
            assert c.peek(10) == 0


def test_offer_poll_round_trip(run_id: str) -> None:
    with SpscRing.create(run_id, "r", R.BENCH, 4) as ring:
        p, c = ring.producer(), ring.consumer()
        out = ffi.new("char[64]")
        for i in range(10):
            rec = _batch(i, 1)
            assert p.offer(rec.tobytes())
            assert c.poll(out)
            got = np.frombuffer(ffi.buffer(out), R.BENCH.dtype)[0]
            assert got["value"] == i and got["seq"] == i + 1


def test_broadcast_held_by_slowest_and_lag(run_id: str) -> None:
    with BroadcastRing.create(run_id, "b", R.BENCH, 8, 3) as ring:
        p = ring.producer()
        cs = [ring.consumer(i) for i in range(3)]
        assert p.write(_batch(0, 8)) == 8
        cs[0].read(8)
        cs[1].read(8)
        assert [ring.lag(i) for i in range(3)] == [0, 0, 8]
        assert p.claim(1) == 0  # consumer 2 holds the producer
        cs[2].read(2)
        assert p.claim(8) == 2
        cs[2].detach()  # a consumer that leaves stops holding the producer
        assert p.claim(8) == 8
        for c in cs[:2]:
            assert len(c.read(8)) == 0


def test_board_latest_value_and_update_counter(run_id: str) -> None:
    with Board.create(run_id, "f", R.FEATURES, 4) as board:
        out = np.zeros(1, R.FEATURES.dtype)
        assert board.read(3, out) == 0  # never written
        for v in range(5):
            rec = np.zeros(1, R.FEATURES.dtype)
            rec["values"][0, :] = v
            rec["symbol"] = 3
            board.write(3, rec)
        assert board.read(3, out) == 5  # five updates: the reader knows it skipped four
        assert out["values"][0, 0] == 4 and out["symbol"][0] == 3
        assert board.updates(3) == 5 and board.version == 5 and board.updates(0) == 0
        with pytest.raises(AttributeError, match="seqlock"):
            board.slots  # noqa: B018


def test_capacity_validation(run_id: str) -> None:
    for cap in (0, 1, 3, 12):
        with pytest.raises(SegmentError, match=f"capacity={cap}"):
            SpscRing.create(run_id, "c", R.BENCH, cap)
    with pytest.raises(SegmentError, match="consumers=33"):
        BroadcastRing.create(run_id, "c", R.BENCH, 8, 33)
    with pytest.raises(SegmentError, match="run='bad-run'"):
        segment_path("bad-run", "x")
    assert not list_segments(run_id)


def test_header_validation_names_field_expected_found(run_id: str) -> None:
    with SpscRing.create(run_id, "h", R.BENCH, 8) as ring:
        with pytest.raises(RingMismatch, match=r"field=layout_hash expected=0x[0-9a-f]{16} found=0x"):
            SpscRing.attach(run_id, "h", R.MARKET)
        with pytest.raises(RingMismatch, match="field=shape expected=2 found=1"):
            BroadcastRing.attach(run_id, "h", R.BENCH)
        with pytest.raises(RingMismatch, match="field=capacity expected=16 found=8"):
            SpscRing.attach(run_id, "h", R.BENCH, capacity=16)
        with pytest.raises(RingMismatch, match="field=n_consumers expected=2 found=1"):
            SpscRing.attach(run_id, "h", R.BENCH, n_consumers=2)
        ring.hdr.abi_version = 99
        with pytest.raises(RingMismatch, match="field=abi_version expected=1 found=99"):
            SpscRing.attach(run_id, "h", R.BENCH)
        ring.hdr.abi_version = 1
        ring.hdr.magic = 0x1234
        with pytest.raises(RingMismatch, match="field=magic expected=0x455049504b434954 found=0x0000000000001234"):
            SpscRing.attach(run_id, "h", R.BENCH)
        ring.hdr.magic = 0x455049504B434954
        ok = SpscRing.attach(run_id, "h", R.BENCH, capacity=8, n_consumers=1)
        ok.close()
    with pytest.raises(SegmentError, match="no such segment"):
        SpscRing.attach(run_id, "h", R.BENCH)
    with pytest.raises(SegmentError, match="bad consumer index"), SpscRing.create(run_id, "i", R.BENCH, 8) as r:
        r.consumer(1)


def test_create_refuses_existing_segment(run_id: str) -> None:
    with SpscRing.create(run_id, "x", R.BENCH, 8), pytest.raises(SegmentError, match="segment exists"):
        SpscRing.create(run_id, "x", R.BENCH, 8)


def test_segment_is_private_and_unlinked(run_id: str) -> None:
    ring = SpscRing.create(run_id, "m", R.BENCH, 8)
    path = ring.path
    assert os.stat(path).st_mode & 0o777 == 0o600
    attached = SpscRing.attach(run_id, "m", R.BENCH)
    attached.close()  # an attacher never unlinks
    assert os.path.exists(path)
    ring.close()
    assert not os.path.exists(path)


def test_cleanup_dead_removes_only_dead_creators(run_id: str) -> None:
    live = SpscRing.create(run_id, "live", R.BENCH, 8)
    dead = SpscRing.create(run_id, "dead", R.BENCH, 8)
    dead.hdr.creator_pid = 2**22 + 12345  # beyond pid_max: certainly not running
    recycled = SpscRing.create(run_id, "recycled", R.BENCH, 8)
    recycled.hdr.creator_start_time = process_start_time(os.getpid()) + 1  # our pid, another process
    removed = {p.name for p in cleanup_dead()}
    assert removed >= {f"tickpipe-{run_id}-dead", f"tickpipe-{run_id}-recycled"}
    assert f"tickpipe-{run_id}-live" not in removed and os.path.exists(live.path)
    for r in (live, dead, recycled):
        r.close()


def test_pid_alive() -> None:
    assert pid_alive(os.getpid(), process_start_time(os.getpid()))
    assert not pid_alive(os.getpid(), process_start_time(os.getpid()) + 7)
    assert not pid_alive(0, 0) and not pid_alive(2**22 + 1, 0)


def test_wait_strategy_parsing() -> None:
    s = wait.parse("park:spin_ns=1000,yield_ns=5e3,park_timeout_ns=2000000")
    assert isinstance(s, wait.SpinYieldPark) and s.yield_ns == 5000 and s.park_timeout_ns == 2_000_000
    assert isinstance(wait.parse("spin"), wait.BusySpin)
    assert isinstance(wait.parse("yield:spin_ns=10"), wait.SpinYield)
    with pytest.raises(ValueError, match="name='fast'"):
        wait.parse("fast")
    with pytest.raises(ValueError, match="allowed="):
        wait.parse("yield:park_timeout_ns=3")
    with pytest.raises(ValueError, match="expected a number"):
        wait.parse("park:spin_ns=abc")


def test_auto_spins_only_with_a_core_each() -> None:
    assert isinstance(wait.auto(2, {0, 1}), wait.BusySpin)
    assert isinstance(wait.auto(3, {0, 1}), wait.SpinYieldPark)
    assert isinstance(wait.auto(2, {0, 1}, distinct_pins=False), wait.SpinYieldPark)


def test_spin_yield_park_phases() -> None:
    calls: list[int] = []
    s = wait.SpinYieldPark(spin_ns=0, yield_ns=0, park_timeout_ns=123, parker=lambda t: calls.append(t) or False)
    s.idle(0)
    s.idle(0)
    assert calls and calls[-1] == 123
    s.idle(5)  # work resets the streak
    assert s._since == 0


def test_park_times_out_and_wakes(run_id: str) -> None:
    with SpscRing.create(run_id, "p", R.BENCH, 8) as ring:
        p, c = ring.producer(), ring.consumer(parks=True)
        t0 = lib.tp_now_ns()
        assert not c.park(2_000_000)  # nothing published: times out
        assert lib.tp_now_ns() - t0 >= 1_000_000
        p.write(_batch(0, 1))
        assert c.park(1_000_000_000)  # data already there: returns at once
        assert not ring.hdr.waiters


def test_copies_leave_seq_to_the_ring(run_id: str) -> None:
    # a forwarded record carries another ring's seq; if a copy wrote it, a value equal to the
    # slot's commit word would publish the slot before its payload is complete
    ring = SpscRing.create(run_id, "fwd", R.BENCH, 8)
    try:
        prod, cons = ring.producer(), ring.consumer()
        recs = np.zeros(5, R.BENCH.dtype)
        recs["seq"] = [1, 2, 3, 4, 999]  # what this ring would stamp, and garbage
        recs["value"] = np.arange(5) + 100
        assert prod.write(recs[:3]) == 3
        assert prod.offer(recs[3:4].tobytes())
        assert prod.write(recs[4:]) == 1
        got = cons.read(8)
        assert got["seq"].tolist() == [1, 2, 3, 4, 5]
        assert got["value"].tolist() == [100, 101, 102, 103, 104]
        # a wrap inside one write keeps order and seq
        more = np.zeros(6, R.BENCH.dtype)
        more["value"] = np.arange(6) + 200
        assert prod.write(more) == 6
        got = cons.read(8)
        assert got["seq"].tolist() == list(range(6, 12))
        assert got["value"].tolist() == list(range(200, 206))
    finally:
        ring.close()
