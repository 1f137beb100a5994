"""Numba drivers that push sequenced BENCH records through rings and verify them.

Shared by the multi-process tests and scripts/bench_rings.py. The producer's own
counter travels in `value` and `check = g(value)`; the ring stamps `seq = position + 1` at
publish. A reader checks both, so loss, duplication, reordering and torn records are
detected without trusting the transport.
"""

from __future__ import annotations

import numba
import numpy as np

from shm import nbops as tp

#: Idle modes of the jitted loops (the Python-side strategies live in shm.wait).
IDLE_SPIN = 0
IDLE_YIELD = 1
IDLE_PARK = 2

#: stats slots filled by `consume_verify`
ST_RECEIVED = 0
ST_BAD_SEQ = 1
ST_BAD_PAYLOAD = 2
ST_FIRST_BAD = 3
ST_TIMED_OUT = 4
ST_PARKS = 5
N_STATS = 6

_MUL = np.uint64(0x9E3779B97F4A7C15)


@numba.njit(inline="always")
def checksum(counter: int) -> np.uint64:
    return (np.uint64(counter) * _MUL + np.uint64(7)) ^ (np.uint64(counter) >> np.uint64(3))


@numba.njit(inline="always")
def _idle(mode, idle_since, now, spin_ns, yield_ns, park_addr, park_ci, is_producer):
    # spin, then yield, then park: the jitted twin of shm.wait.SpinYieldPark
    if mode == IDLE_SPIN or now - idle_since < spin_ns:
        tp.pause()
        return 0
    if mode == IDLE_YIELD or now - idle_since < spin_ns + yield_ns:
        tp.yield_cpu()
        return 0
    if is_producer:
        tp.prod_park(park_addr, 10_000_000)
    else:
        tp.cons_park(park_addr, park_ci, 10_000_000)
    return 1


@numba.njit
def produce(addr, slots, mask, start, n, batch, mode, spin_ns, yield_ns, deadline_ns):
    """Publish records start..start+n-1 in claims of up to `batch`; returns how many."""
    seq = start
    end = start + n
    idle_since = 0
    while seq < end:
        k = tp.claim(addr, min(batch, end - seq))
        if k == 0:
            now = tp.now_ns()
            if idle_since == 0:
                idle_since = now
            if now > deadline_ns:
                break
            _idle(mode, idle_since, now, spin_ns, yield_ns, addr, 0, True)
            continue
        idle_since = 0
        pos = tp.prod_pos(addr)
        for i in range(k):
            r = slots[(pos + i) & mask]
            r.value = seq
            r.check = checksum(seq)
            r.kind = 1
            seq += 1
        tp.publish(addr, k)
    return seq - start


@numba.njit
def consume_verify(addr, ci, slots, mask, start, n, batch, mode, spin_ns, yield_ns, deadline_ns, stats):
    """Read n records and check sequence and payload of each; fills `stats` (see ST_*)."""
    expect = start
    end = start + n
    idle_since = 0
    while expect < end:
        k = tp.peek(addr, ci, batch)
        if k == 0:
            now = tp.now_ns()
            if idle_since == 0:
                idle_since = now
            if now > deadline_ns:
                stats[ST_TIMED_OUT] = 1
                break
            stats[ST_PARKS] += _idle(mode, idle_since, now, spin_ns, yield_ns, addr, ci, False)
            continue
        idle_since = 0
        pos = tp.cons_pos(addr, ci)
        for i in range(k):
            r = slots[(pos + i) & mask]
            if r.value != expect or r.seq != pos + i + 1:
                if stats[ST_BAD_SEQ] == 0:
                    stats[ST_FIRST_BAD] = expect
                stats[ST_BAD_SEQ] += 1
                expect = r.value  # resynchronise so one fault is not counted n times
            elif r.check != checksum(expect):
                stats[ST_BAD_PAYLOAD] += 1
            expect += 1
        stats[ST_RECEIVED] += k
        tp.release(addr, ci, k)
    return stats[ST_RECEIVED]


@numba.njit(inline="always")
def _wait_readable(addr, ci, mode, spin_ns, yield_ns):
    # spin without reading the clock; look at it only every 256 empty polls
    polls = 0
    idle_since = 0
    while tp.peek(addr, ci, 1) == 0:
        polls += 1
        if mode == IDLE_SPIN or (spin_ns > 0 and polls & 255):
            tp.pause()
            continue
        now = tp.now_ns()
        if idle_since == 0:
            idle_since = now
        _idle(mode, idle_since, now, spin_ns, yield_ns, addr, ci, False)


@numba.njit
def ping(out_addr, out_slots, out_mask, in_addr, in_ci, in_slots, in_mask, n, warmup, mode, spin_ns,
         yield_ns, samples, gap_ns=0):
    """Send one record, wait for its echo; samples[i] = RTT ns (after warm-up). One clock read per
    round trip: the read that ends one round trip starts the next. `gap_ns` > 0 waits that long
    between round trips (not timed), so a parking peer is really asleep when the next one comes."""
    t0 = tp.now_ns()
    for i in range(n + warmup):
        if gap_ns > 0:
            while tp.now_ns() - t0 < gap_ns:
                tp.pause()
            t0 = tp.now_ns()
        while tp.claim(out_addr, 1) == 0:
            tp.pause()
        r = out_slots[tp.prod_pos(out_addr) & out_mask]
        r.value = i
        r.t_origin_ns = t0
        tp.publish(out_addr, 1)
        _wait_readable(in_addr, in_ci, mode, spin_ns, yield_ns)
        t1 = tp.now_ns()
        back = in_slots[tp.cons_pos(in_addr, in_ci) & in_mask]
        if back.value != i:
            return -1
        tp.release(in_addr, in_ci, 1)
        if i >= warmup:
            samples[i - warmup] = t1 - t0
        t0 = t1
    return n


@numba.njit
def pong(in_addr, in_ci, in_slots, in_mask, out_addr, out_slots, out_mask, n, mode, spin_ns, yield_ns):
    """Echo n records from `in` to `out` (the far end of `ping`, or a middle stage of a chain)."""
    for _ in range(n):
        _wait_readable(in_addr, in_ci, mode, spin_ns, yield_ns)
        src = in_slots[tp.cons_pos(in_addr, in_ci) & in_mask]
        while tp.claim(out_addr, 1) == 0:
            tp.pause()
        dst = out_slots[tp.prod_pos(out_addr) & out_mask]
        dst.value = src.value
        dst.t_origin_ns = src.t_origin_ns
        tp.release(in_addr, in_ci, 1)
        tp.publish(out_addr, 1)
    return n


@numba.njit
def board_hammer_write(addr, view, key, n):
    """Write n updates of `key` through the writer view; every value of update i equals i."""
    for i in range(1, n + 1):
        tp.board_begin(addr, key)
        r = view[key]
        r.seq = i
        for j in range(r.values.shape[0]):
            r.values[j] = i
        tp.board_commit(addr, key)
    return n


@numba.njit
def board_hammer_read(addr, key, out, n, stats):
    """Read `key` n times; a record whose values differ from its seq is torn (stats[1])."""
    last = 0
    for _ in range(n):
        updates = tp.board_read(addr, key, out.ctypes.data)
        if updates == 0:
            continue
        r = out[0]
        torn = False
        for j in range(r.values.shape[0]):
            if r.values[j] != r.seq:
                torn = True
        if torn or updates < last or r.seq != updates:
            stats[1] += 1
        stats[0] += 1
        stats[2] += updates - last - 1 if updates > last else 0  # skipped updates (conflation)
        last = updates
    return stats[0]
