"""tickpipe's own mechanisms for scripts/bench_rings.py: numba, plain Python, the C floor,
and the 4-process chain per wait strategy. Each function pins its processes to the CPU ids
it is given, verifies every record it moves, and returns raw RTT samples (ns) or records/s.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from shm import records as R
from shm import stress
from shm.native import ffi, lib
from shm.ring import SpscRing
from shm.segment import new_run_id, remove_run

CTX = mp.get_context("fork")
ROOT = Path(__file__).resolve().parents[1]
CAPACITY = 1024
#: idle parameters of the jitted loops: mode, spin_ns, yield_ns
MODES = {
    "spin": (stress.IDLE_SPIN, 0, 0),
    "yield": (stress.IDLE_YIELD, 20_000, 1 << 62),
    "park": (stress.IDLE_PARK, 20_000, 200_000),
    # park at once: what a wake-up from a futex costs
    "park-now": (stress.IDLE_PARK, 0, 0),
    # shared cores: never spin (a spinning waiter delays the stage it shares a core with)
    "yield-now": (stress.IDLE_YIELD, 0, 1 << 62),
    "yield-park": (stress.IDLE_PARK, 0, 200_000),
}


def _pin(cpu: int) -> None:
    os.sched_setaffinity(0, {cpu})


def _rings(run: str, names: list[str]) -> list[SpscRing]:
    return [SpscRing.create(run, n, R.BENCH, CAPACITY) for n in names]


def _warm() -> None:
    """Compile the jitted drivers in the parent so forked children start at once."""
    run = new_run_id()
    try:
        a, b = _rings(run, ["wa", "wb"])
        a.consumer(), b.consumer()
        s = np.zeros(8, np.int64)
        for m in MODES.values():
            stress.produce(a.addr, a.slots, a.mask, 0, 1, 1, m[0], m[1], m[2], lib.tp_now_ns() + 10**10)
            stress.pong(a.addr, 0, a.slots, a.mask, b.addr, b.slots, b.mask, 1, m[0], m[1], m[2])
            stress.ping(a.addr, a.slots, a.mask, b.addr, 0, b.slots, b.mask, 0, 0, m[0], m[1], m[2], s, 0)
            stress.pong(b.addr, 0, b.slots, b.mask, a.addr, a.slots, a.mask, 1, m[0], m[1], m[2])
            stress.consume_verify(a.addr, 0, a.slots, a.mask, 0, 1, 1, m[0], m[1], m[2], lib.tp_now_ns() + 10**10,
                                  np.zeros(stress.N_STATS, np.int64))
        for r in (a, b):
            r.close()
    finally:
        remove_run(run)


def _relay(run: str, src: str, dst: str, cpu: int, n: int, mode: str) -> None:
    _pin(cpu)
    a = SpscRing.attach(run, src, R.BENCH)
    b = SpscRing.attach(run, dst, R.BENCH)
    a.consumer(parks=MODES[mode][0] == stress.IDLE_PARK)
    b.producer()
    m = MODES[mode]
    stress.pong(a.addr, 0, a.slots, a.mask, b.addr, b.slots, b.mask, n, m[0], m[1], m[2])
    os._exit(0)


def chain_rtt(n: int, cpus: list[int], mode: str = "spin", warmup: int = 2000,
              ping_mode: str | None = None, gap_ns: int = 0) -> np.ndarray:
    """Round trips through len(cpus) processes in a ring of SPSC rings; cpus[0] pings.

    With two entries this is the plain ping-pong; with [0, 1, 0, 1] it is the 4-process chain
    on 2 cores. `mode` is the relays' wait, `ping_mode` the pinger's (default: the same)."""
    run = new_run_id()
    k = len(cpus)
    names = [f"h{i}" for i in range(k)]
    rings = _rings(run, names)
    kids = []
    try:
        if MODES[mode][0] == stress.IDLE_PARK:
            for r in rings:
                r.enable_park()
        for i in range(1, k):
            p = CTX.Process(target=_relay, args=(run, names[i - 1], names[i], cpus[i], n + warmup, mode))
            p.start()
            kids.append(p)
        _pin(cpus[0])
        out, back = rings[0], rings[-1]
        out.producer()
        back.consumer(parks=MODES[mode][0] == stress.IDLE_PARK)
        samples = np.zeros(n, np.int64)
        m = MODES[ping_mode or mode]
        rc = stress.ping(out.addr, out.slots, out.mask, back.addr, 0, back.slots, back.mask, n, warmup,
                         m[0], m[1], m[2], samples, gap_ns)
        if rc != n:
            raise RuntimeError(f"ping-pong lost or reordered an echo: mode={mode} rc={rc}")
        for p in kids:
            p.join(30)
        return samples
    finally:
        for p in kids:
            if p.is_alive():
                p.kill()
                p.join()
        for r in rings:
            r.close()
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))


def _consumer_proc(run: str, cpu: int, n: int, batch: int, q: mp.Queue) -> None:
    _pin(cpu)
    r = SpscRing.attach(run, "t", R.BENCH)
    r.consumer()
    st = np.zeros(stress.N_STATS, np.int64)
    stress.consume_verify(r.addr, 0, r.slots, r.mask, 0, n, batch, stress.IDLE_SPIN, 0, 0,
                          lib.tp_now_ns() + 300 * 10**9, st)
    q.put(st.tolist())
    q.close()
    q.join_thread()
    os._exit(0)


def numba_throughput(n: int, cpus: list[int], batch: int) -> float:
    """Records/s from a jitted producer to a jitted consumer, claims and peeks of `batch`."""
    run = new_run_id()
    ring = SpscRing.create(run, "t", R.BENCH, CAPACITY)
    q = CTX.Queue()
    kid = CTX.Process(target=_consumer_proc, args=(run, cpus[1], n, batch, q))
    try:
        kid.start()
        _pin(cpus[0])
        ring.producer()
        t0 = time.perf_counter_ns()
        stress.produce(ring.addr, ring.slots, ring.mask, 0, n, batch, stress.IDLE_SPIN, 0, 0,
                       lib.tp_now_ns() + 300 * 10**9)
        st = q.get(timeout=300)
        dt = time.perf_counter_ns() - t0
        kid.join(30)
        if st[stress.ST_RECEIVED] != n or st[stress.ST_BAD_SEQ] or st[stress.ST_BAD_PAYLOAD]:
            raise RuntimeError(f"throughput run lost or corrupted records: stats={st}")
        return n * 1e9 / dt
    finally:
        if kid.is_alive():
            kid.kill()
            kid.join()
        ring.close()
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))


# -- plain Python -------------------------------------------------------------------------------
def _py_pong(run: str, cpu: int, n: int) -> None:
    _pin(cpu)
    a = SpscRing.attach(run, "a", R.BENCH)
    b = SpscRing.attach(run, "b", R.BENCH)
    c = a.consumer()
    p = b.producer()
    buf = ffi.new("char[64]")
    poll, offer = c.poll_raw, p.offer_raw
    for _ in range(n):
        while not poll(buf, 64):
            pass
        while not offer(buf, 64):
            pass
    os._exit(0)


def python_rtt(n: int, cpus: list[int], warmup: int = 2000) -> np.ndarray:
    """Plain-Python ping-pong: one offer and one poll per hop (each a single C call)."""
    run = new_run_id()
    a, b = _rings(run, ["a", "b"])
    kid = CTX.Process(target=_py_pong, args=(run, cpus[1], n + warmup))
    try:
        kid.start()
        _pin(cpus[0])
        p, c = a.producer(), b.consumer()
        out = ffi.new("char[64]")
        obuf = ffi.buffer(out)
        msgs = [np.array([(0, 0, 0, 0, 1, 0, i, 0)], R.BENCH.dtype).tobytes() for i in range(n + warmup)]
        times = [0] * (n + warmup + 1)
        low_bytes = [bytes((b,)) for b in range(256)]
        now = time.perf_counter_ns  # CLOCK_MONOTONIC too, and no cffi call layer
        offer, poll = p.offer_raw, c.poll_raw
        times[0] = now()
        for i in range(n + warmup):
            offer(msgs[i], 64)
            while not poll(out, 64):
                pass
            times[i + 1] = now()  # one clock read per round trip: it ends this one and starts the next
            if obuf[32] != low_bytes[i & 0xFF]:
                raise RuntimeError(f"python ping-pong echo mismatch at {i}")
        samples = np.diff(np.array(times, np.int64))
        kid.join(30)
        return samples[warmup:]
    finally:
        if kid.is_alive():
            kid.kill()
            kid.join()
        a.close()
        b.close()
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))


def _py_consumer(run: str, cpu: int, n: int, batch: int, q: mp.Queue) -> None:
    _pin(cpu)
    r = SpscRing.attach(run, "t", R.BENCH)
    c = r.consumer()
    got = 0
    bad = 0
    if batch == 1:
        buf = ffi.new("char[64]")
        b = ffi.buffer(buf)
        while got < n:
            if c.poll(buf):
                bad += int.from_bytes(b[32:40], "little") != got
                got += 1
    else:
        while got < n:
            recs = c.read(batch)
            if len(recs):
                bad += int(np.count_nonzero(recs["value"] != np.arange(got, got + len(recs))))
                got += len(recs)
    q.put((got, bad))
    q.close()
    q.join_thread()
    os._exit(0)


def python_throughput(n: int, cpus: list[int], batch: int) -> float:
    """Records/s from plain Python: offer/poll one at a time, or write/read numpy batches."""
    run = new_run_id()
    ring = SpscRing.create(run, "t", R.BENCH, CAPACITY)
    q = CTX.Queue()
    kid = CTX.Process(target=_py_consumer, args=(run, cpus[1], n, batch, q))
    try:
        kid.start()
        _pin(cpus[0])
        p = ring.producer()
        t0 = time.perf_counter_ns()
        if batch == 1:
            rec = np.zeros(1, R.BENCH.dtype)
            view = memoryview(rec.view(np.uint8))
            offer = p.offer
            for i in range(n):
                rec["value"] = i
                while not offer(view.tobytes()):
                    pass
        else:
            recs = np.zeros(batch, R.BENCH.dtype)
            sent = 0
            while sent < n:
                k = min(batch, n - sent)
                recs["value"][:k] = np.arange(sent, sent + k)
                sent += p.write(recs[:k])
        got, bad = q.get(timeout=300)
        dt = time.perf_counter_ns() - t0
        kid.join(30)
        if got != n or bad:
            raise RuntimeError(f"python throughput run lost or corrupted records: got={got} bad={bad}")
        return n * 1e9 / dt
    finally:
        if kid.is_alive():
            kid.kill()
            kid.join()
        ring.close()
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))


# -- the C floor ----------------------------------------------------------------------------------
def build_floor() -> Path | None:
    """Compile native/floor.c (the same ring code driven from C); None without a C compiler."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        return None
    out = Path(tempfile.gettempdir()) / f"tickpipe-floor-{os.getuid()}"
    src = [ROOT / "native" / "floor.c", ROOT / "native" / "tickpipe.c"]
    if not out.exists() or any(s.stat().st_mtime > out.stat().st_mtime for s in src):
        subprocess.run([cc, "-O2", "-std=gnu11", "-o", str(out), *map(str, src), f"-I{ROOT / 'native'}"],
                       check=True)
    return out


def floor_run(args: list[str]) -> dict:
    import json

    exe = build_floor()
    if exe is None:
        raise RuntimeError("no C compiler found (set CC)")
    res = subprocess.run([str(exe), *args], check=True, capture_output=True, text=True, timeout=600)
    return json.loads(res.stdout)


def _idle_consumer(run: str, cpu: int, seconds: float) -> None:
    _pin(cpu)
    r = SpscRing.attach(run, "idle", R.BENCH)
    r.consumer(parks=True)
    st = np.zeros(stress.N_STATS, np.int64)
    m = MODES["park"]
    stress.consume_verify(r.addr, 0, r.slots, r.mask, 0, 1, 1, m[0], m[1], m[2],
                          lib.tp_now_ns() + int(seconds * 1e9), st)
    os._exit(0)


def idle_cpu_fraction(cpu: int, seconds: float = 3.0) -> float:
    """CPU share burnt by a consumer parked on an empty ring (spin→yield→park) for `seconds`."""
    run = new_run_id()
    ring = SpscRing.create(run, "idle", R.BENCH, CAPACITY)
    kid = CTX.Process(target=_idle_consumer, args=(run, cpu, seconds))
    try:
        kid.start()
        time.sleep(0.5)  # past start-up
        def cpu_ticks() -> int:
            with open(f"/proc/{kid.pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            return int(fields[11]) + int(fields[12])  # utime + stime
        t0, c0 = time.monotonic(), cpu_ticks()
        time.sleep(seconds - 1.0)
        t1, c1 = time.monotonic(), cpu_ticks()
        kid.join(seconds + 30)
        return (c1 - c0) / os.sysconf("SC_CLK_TCK") / (t1 - t0)
    finally:
        if kid.is_alive():
            kid.kill()
            kid.join()
        ring.close()
