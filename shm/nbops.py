"""Ring operations as globals that @njit code can call (they compile to direct C calls).

    from shm import nbops as tp
    @numba.njit
    def drain(addr, ci, slots, mask):
        k = tp.peek(addr, ci, 64)
        pos = tp.cons_pos(addr, ci)
        for i in range(k):
            rec = slots[(pos + i) & mask]
            ...
        tp.release(addr, ci, k)
        return k

Functions that use these cannot be numba-cached (C addresses differ per process): keep such
drivers thin and call cached kernels for the record logic. Addresses are plain uint64 ints
(cffi pointers cannot be numba arguments), which is why every C entry takes `uint64_t base`.
"""

from __future__ import annotations

from shm.native import lib, register_with_numba

register_with_numba()

claim = lib.tp_claim
publish = lib.tp_publish
write = lib.tp_write
prod_pos = lib.tp_prod_pos
prod_park = lib.tp_prod_park
peek = lib.tp_peek
release = lib.tp_release
cons_pos = lib.tp_cons_pos
cons_park = lib.tp_cons_park
lag = lib.tp_lag
board_begin = lib.tp_board_begin
board_commit = lib.tp_board_commit
board_read = lib.tp_board_read
board_updates = lib.tp_board_updates
heartbeat = lib.tp_heartbeat
now_ns = lib.tp_now_ns
rdtsc = lib.tp_rdtsc
pause = lib.tp_pause
yield_cpu = lib.tp_yield
