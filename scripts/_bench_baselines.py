"""The other IPC mechanisms for scripts/bench_rings.py, measured the same way as tickpipe's:
a pinned echo process for round trips, a pinned consumer that checks every sequence number
for throughput, 64-byte messages. Batched = 32 records packed into one message, which is how
a user would batch over these transports."""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import struct
import tempfile
import time
from collections.abc import Callable

import numpy as np

CTX = mp.get_context("fork")
MSG = 64
BATCH = 32
_SEQ = struct.Struct("<Q")


def _pin(cpu: int) -> None:
    os.sched_setaffinity(0, {cpu})


def _msg(i: int) -> bytes:
    return _SEQ.pack(i) + bytes(MSG - 8)


def _batch_msg(start: int) -> bytes:
    return b"".join(_SEQ.pack(start + j) + bytes(MSG - 8) for j in range(BATCH))


# Each transport: make() -> (a_end, b_end) factories usable after fork, plus send/recv callables.
class Transport:
    name = ""

    def pair(self):  # returns (parent_end_factory, child_end_factory)
        raise NotImplementedError

    def cleanup(self) -> None:
        pass


def _run_pair(transport: Transport, child_fn: Callable, parent_fn: Callable, cpus: list[int]):
    parent_end, child_end = transport.pair()
    kid = CTX.Process(target=child_fn, args=(child_end, cpus[1]))
    try:
        kid.start()
        _pin(cpus[0])
        return parent_fn(parent_end)
    finally:
        kid.join(60)
        if kid.is_alive():
            kid.kill()
            kid.join()
        transport.cleanup()
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))


# -- transports --------------------------------------------------------------------------------
class MpPipe(Transport):
    name = "mp-pipe"

    def pair(self):
        a, b = CTX.Pipe(duplex=True)
        return (lambda: (a.send_bytes, a.recv_bytes)), (lambda: (b.send_bytes, b.recv_bytes))


class MpQueue(Transport):
    name = "mp-queue"

    def pair(self):
        q1, q2 = CTX.Queue(), CTX.Queue()
        return (lambda: (q1.put, q2.get)), (lambda: (q2.put, q1.get))


class FasterFifo(Transport):
    name = "faster-fifo"

    def pair(self):
        from faster_fifo import Queue

        q1, q2 = Queue(1 << 20), Queue(1 << 20)
        return (lambda: (q1.put, q2.get)), (lambda: (q2.put, q1.get))


class PyzmqIpc(Transport):
    name = "pyzmq-ipc"

    def pair(self):
        self._dir = tempfile.mkdtemp(prefix="tickpipe-zmq-")
        addr = f"ipc://{self._dir}/sock"

        def end(bind: bool):
            import zmq

            sock = zmq.Context.instance().socket(zmq.PAIR)
            (sock.bind if bind else sock.connect)(addr)
            return sock.send, sock.recv

        return (lambda: end(True)), (lambda: end(False))

    def cleanup(self) -> None:
        import shutil

        shutil.rmtree(getattr(self, "_dir", ""), ignore_errors=True)


#: iceoryx2's receive polls; a lost sample would otherwise hang the benchmark
RECV_TIMEOUT_S = 10.0


class _IoxMsg(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint8 * MSG)]


class _IoxBatch(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint8 * (MSG * BATCH))]


class Iceoryx2(Transport):
    name = "iceoryx2"

    def __init__(self, batched: bool = False) -> None:
        self.batched = batched

    def pair(self):
        tag = f"tickpipe-bench-{os.getpid()}-{time.monotonic_ns()}"
        typ = _IoxBatch if self.batched else _IoxMsg

        def end(out_name: str, in_name: str):
            import iceoryx2 as iox2

            iox2.set_log_level_from_env_or(iox2.LogLevel.Error)
            node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
            svc_out = node.service_builder(iox2.ServiceName.new(out_name)).publish_subscribe(typ) \
                .subscriber_max_buffer_size(BATCH * 64).history_size(0).open_or_create()
            svc_in = node.service_builder(iox2.ServiceName.new(in_name)).publish_subscribe(typ) \
                .subscriber_max_buffer_size(BATCH * 64).history_size(0).open_or_create()
            pub = svc_out.publisher_builder().create()
            sub = svc_in.subscriber_builder().create()
            # a sample sent before the peer's subscriber exists is lost (history 0): give the peer time to
            # connect, and let recv() time out rather than hang if it still happens on a loaded machine
            time.sleep(1.0)
            keep = (node, svc_out, svc_in)

            def send(data: bytes) -> None:
                s = pub.loan_uninit()
                payload = typ.from_buffer_copy(data)
                s.write_payload(payload).send()

            def recv() -> bytes:
                deadline = time.monotonic() + RECV_TIMEOUT_S
                while True:
                    s = sub.receive()
                    if s is not None:
                        b = bytes(s.payload().contents.data)
                        s.delete()
                        return b
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"iceoryx2: no sample for {RECV_TIMEOUT_S:g} s (lost before the peer "
                                           "connected?)")

            send.keep = keep  # type: ignore[attr-defined]
            return send, recv

        return (lambda: end(tag + "/ab", tag + "/ba")), (lambda: end(tag + "/ba", tag + "/ab"))


TRANSPORTS: dict[str, type[Transport]] = {t.name: t for t in (MpQueue, MpPipe, PyzmqIpc, FasterFifo, Iceoryx2)}


# -- measurements ------------------------------------------------------------------------------
def _echo(n: int):
    def child(end, cpu):
        _pin(cpu)
        send, recv = end()
        for _ in range(n):
            send(recv())
        time.sleep(0.2)
        os._exit(0)
    return child


def rtt(name: str, n: int, cpus: list[int], warmup: int = 1000) -> np.ndarray:
    """Round trips of one 64-byte message; each echo's sequence number is checked."""
    msgs = [_msg(i) for i in range(n + warmup)]

    def parent(end):
        send, recv = end()
        samples = np.zeros(n + warmup, np.int64)
        now = time.perf_counter_ns
        for i in range(n + warmup):
            t0 = now()
            send(msgs[i])
            back = recv()
            samples[i] = now() - t0
            if back[:8] != msgs[i][:8]:
                raise RuntimeError(f"{name}: echo mismatch at {i}")
        return samples[warmup:]

    return _run_pair(TRANSPORTS[name](), _echo(n + warmup), parent, cpus)


def throughput(name: str, n: int, cpus: list[int], batched: bool) -> float:
    """Messages/s one way; the consumer checks every sequence number and acknowledges at the end."""
    per = BATCH if batched else 1
    n_msgs = n // per
    transport = Iceoryx2(batched=True) if name == "iceoryx2" and batched else TRANSPORTS[name]()

    def consumer(end, cpu):
        _pin(cpu)
        send, recv = end()
        expect = 0
        bad = 0
        for _ in range(n_msgs):
            m = recv()
            for j in range(per):
                bad += _SEQ.unpack_from(m, j * MSG)[0] != expect
                expect += 1
        send(_SEQ.pack(bad) + bytes(MSG - 8) if not batched else _SEQ.pack(bad) + bytes(MSG * BATCH - 8))
        time.sleep(0.2)
        os._exit(0)

    payloads = [_batch_msg(i * per) if batched else _msg(i) for i in range(n_msgs)]  # built before timing

    def producer(end):
        send, recv = end()
        t0 = time.perf_counter_ns()
        for p in payloads:
            send(p)
        ack = recv()
        dt = time.perf_counter_ns() - t0
        if _SEQ.unpack_from(ack, 0)[0]:
            raise RuntimeError(f"{name}: consumer saw {_SEQ.unpack_from(ack, 0)[0]} out-of-order records")
        return n_msgs * per * 1e9 / dt

    return _run_pair(transport, consumer, producer, cpus)
