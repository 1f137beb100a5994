"""Multi-process ring behaviour: no loss, no duplication, no reordering, no torn reads,
dead peers detected, parked sides woken. Processes are forked after the numba drivers are
compiled, and attach to the rings by name as real stages do."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

import numpy as np
import pytest

from shm import records as R
from shm import stress
from shm.native import lib
from shm.ring import Board, BroadcastRing, SpscRing

CTX = mp.get_context("fork")
SPIN_NS = 50_000  # spin this long, then yield: polite on a 2-core machine shared with pytest
YIELD_NS = 1_000_000_000


def _deadline(seconds: float) -> int:
    return lib.tp_now_ns() + int(seconds * 1e9)


@pytest.fixture(scope="module", autouse=True)
def warm_jit() -> None:
    # compile once in the parent so forked children start at once
    run = f"warm{os.getpid()}"
    with SpscRing.create(run, "w", R.BENCH, 8) as ring:
        c = ring.consumer(parks=True)
        st = np.zeros(stress.N_STATS, np.int64)
        stress.produce(ring.addr, ring.slots, ring.mask, 0, 4, 4, stress.IDLE_PARK, 0, 0, _deadline(5))
        stress.consume_verify(ring.addr, 0, ring.slots, ring.mask, 0, 4, 4, stress.IDLE_PARK, 0, 0, _deadline(5), st)
        del c


def _producer_child(run: str, name: str, cls: type, n: int, batch: int, mode: int, spin_ns: int,
                    yield_ns: int) -> None:
    ring = cls.attach(run, name, R.BENCH)
    ring.producer()
    done = stress.produce(ring.addr, ring.slots, ring.mask, 0, n, batch, mode, spin_ns, yield_ns, _deadline(600))
    os._exit(0 if done == n else 3)


def _consumer_child(run: str, name: str, cls: type, ci: int, n: int, batch: int, mode: int,
                    pause_every: int, q: mp.Queue) -> None:
    ring = cls.attach(run, name, R.BENCH)
    ring.consumer(ci, parks=mode == stress.IDLE_PARK)
    st = np.zeros(stress.N_STATS, np.int64)
    got = 0
    chunk = pause_every or n
    while got < n:
        # a slow consumer: read a chunk, then sleep, holding the producer back
        stress.consume_verify(ring.addr, ci, ring.slots, ring.mask, got, min(chunk, n - got), batch, mode,
                              SPIN_NS if mode != stress.IDLE_PARK else 0, YIELD_NS if mode != stress.IDLE_PARK else 0,
                              _deadline(600), st)
        got = int(st[stress.ST_RECEIVED])
        if st[stress.ST_TIMED_OUT] or st[stress.ST_BAD_SEQ]:
            break
        if pause_every:
            time.sleep(0.002)
    q.put(st.tolist())
    q.close()
    q.join_thread()  # os._exit skips the queue's feeder thread: flush it first
    os._exit(0)


def _join(procs: list, timeout: float = 600) -> None:
    for p in procs:
        p.join(timeout)
        if p.is_alive():
            p.kill()
            p.join()
            pytest.fail(f"child {p.pid} did not finish")


@pytest.mark.parametrize("n", [10**7, pytest.param(10**9, marks=pytest.mark.long)], ids=["1e7", "1e9"])
def test_spsc_no_loss_no_dup_no_reorder(run_id: str, n: int) -> None:
    with SpscRing.create(run_id, "q", R.BENCH, 1024) as ring:
        prod = CTX.Process(target=_producer_child,
                           args=(run_id, "q", SpscRing, n, 37, stress.IDLE_YIELD, SPIN_NS, YIELD_NS))
        prod.start()
        ring.consumer()
        st = np.zeros(stress.N_STATS, np.int64)
        stress.consume_verify(ring.addr, 0, ring.slots, ring.mask, 0, n, 64, stress.IDLE_YIELD, SPIN_NS,
                              YIELD_NS, _deadline(900), st)
        _join([prod])
        assert prod.exitcode == 0
        assert st[stress.ST_TIMED_OUT] == 0
        assert st[stress.ST_RECEIVED] == n
        assert st[stress.ST_BAD_SEQ] == 0, f"first bad seq {st[stress.ST_FIRST_BAD]}"
        assert st[stress.ST_BAD_PAYLOAD] == 0
        assert ring.producer_position == ring.consumer_position(0) == n


def test_broadcast_slow_consumer_loses_nothing(run_id: str) -> None:
    n = 300_000
    q = CTX.Queue()
    with BroadcastRing.create(run_id, "b", R.BENCH, 256, 3) as ring:
        kids = [CTX.Process(target=_consumer_child,
                            args=(run_id, "b", BroadcastRing, ci, n, 64, stress.IDLE_YIELD, pause, q))
                for ci, pause in ((0, 0), (1, 0), (2, 20_000))]  # consumer 2 sleeps every 20k records
        for k in kids:
            k.start()
        ring.producer()
        max_lag = 0
        sent = 0
        while sent < n:
            sent += stress.produce(ring.addr, ring.slots, ring.mask, sent, min(10_000, n - sent), 32,
                                   stress.IDLE_YIELD, SPIN_NS, YIELD_NS, _deadline(120))
            max_lag = max(max_lag, *(ring.lag(i) for i in range(3)))
        results = [q.get(timeout=120) for _ in kids]
        _join(kids)
        for st in results:
            assert st[stress.ST_RECEIVED] == n and st[stress.ST_BAD_SEQ] == 0 and st[stress.ST_BAD_PAYLOAD] == 0
        assert max_lag <= ring.capacity  # the producer never ran more than a ring ahead of the slowest


def _board_writer(run: str, n: int) -> None:
    b = Board.attach(run, "f", R.FEATURES)
    b.producer()
    stress.board_hammer_write(b.addr, b.write_view, 0, n)
    os._exit(0)


def test_board_readers_never_see_torn_records(run_id: str) -> None:
    with Board.create(run_id, "f", R.FEATURES, 4) as board:
        out = np.zeros(1, R.FEATURES.dtype)
        st = np.zeros(3, np.int64)
        stress.board_hammer_read(board.addr, 0, out, 1, st)  # compile before the writer starts
        st[:] = 0
        w = CTX.Process(target=_board_writer, args=(run_id, 2_000_000))
        w.start()
        while w.is_alive() or st[0] == 0:
            stress.board_hammer_read(board.addr, 0, out, 20_000, st)
        _join([w])
        stress.board_hammer_read(board.addr, 0, out, 1, st)
        assert st[1] == 0, f"{st[1]} torn or out-of-order reads"
        assert st[0] > 0
        assert board.updates(0) == 2_000_000 and out["seq"][0] == 2_000_000
        assert st[2] > 0  # conflation: the reader skipped updates and knows how many


def _slow_producer(run: str) -> None:
    ring = SpscRing.attach(run, "k", R.BENCH)
    p = ring.producer()
    seq = 0
    while True:
        rec = np.zeros(1, R.BENCH.dtype)
        rec["seq"] = seq
        if p.write(rec):
            seq += 1
        p.heartbeat()
        time.sleep(0.001)


def test_kill9_producer_detected_within_100ms(run_id: str) -> None:
    with SpscRing.create(run_id, "k", R.BENCH, 64) as ring:
        child = CTX.Process(target=_slow_producer, args=(run_id,))
        child.start()
        c = ring.consumer()
        got = 0
        t_end = time.monotonic() + 30
        while got < 20 and time.monotonic() < t_end:
            got += len(c.read(64))
        assert got >= 20 and c.producer_alive()
        os.kill(child.pid, signal.SIGKILL)
        t_kill = time.monotonic()
        detected = None
        while time.monotonic() - t_kill < 5:
            if len(c.read(64)) == 0 and not c.producer_alive():  # checked on the idle path
                detected = time.monotonic() - t_kill
                break
            time.sleep(0.002)
        child.join()
        assert detected is not None and detected <= 0.1, f"dead producer noticed after {detected}s"


def _creator_then_killed(run: str, ready: mp.Event) -> None:
    SpscRing.create(run, "orphan", R.BENCH, 8)
    ready.set()
    time.sleep(60)


def test_segments_of_a_killed_creator_are_cleaned(run_id: str) -> None:
    from shm.segment import cleanup_dead, list_segments

    ready = CTX.Event()
    child = CTX.Process(target=_creator_then_killed, args=(run_id, ready))
    child.start()
    assert ready.wait(30)
    assert list_segments(run_id)
    assert not [p for p in cleanup_dead() if run_id in p.name]  # creator still alive: kept
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert [p.name for p in cleanup_dead() if run_id in p.name] == [f"tickpipe-{run_id}-orphan"]
    assert not list_segments(run_id)


def test_parked_consumer_and_producer_are_woken(run_id: str) -> None:
    n = 2000
    q = CTX.Queue()
    with SpscRing.create(run_id, "p", R.BENCH, 16) as ring:
        kid = CTX.Process(target=_consumer_child,
                          args=(run_id, "p", SpscRing, 0, n, 8, stress.IDLE_PARK, 500, q))
        kid.start()
        ring.producer()
        ring.enable_park()
        sent = 0
        while sent < n:
            # bursts with gaps: the consumer parks in the gaps, the producer parks when the ring is full
            sent += stress.produce(ring.addr, ring.slots, ring.mask, sent, min(100, n - sent), 8,
                                   stress.IDLE_PARK, 0, 0, _deadline(60))
            time.sleep(0.001)
        st = q.get(timeout=60)
        _join([kid])
        assert st[stress.ST_RECEIVED] == n and st[stress.ST_BAD_SEQ] == 0 and st[stress.ST_BAD_PAYLOAD] == 0
        assert st[stress.ST_TIMED_OUT] == 0
        assert st[stress.ST_PARKS] > 0  # it really slept, and was woken every time
