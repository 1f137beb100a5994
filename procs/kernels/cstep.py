"""Call a stage's jitted step through one C call instead of numba's dispatcher.

numba's dispatcher type-checks and unboxes every argument on each call: the book kernel's 21
arrays cost ~5 µs per call on this VM, more than the work of a small batch. A stage instead puts
the addresses and shapes of its arrays in one int64 descriptor (`Pack`), and its step is a numba
`cfunc` taking that descriptor's address; it rebuilds zero-copy views with `view1/view2/view3`
and calls the cached kernels. Calling the cfunc through cffi costs one foreign call (~0.2 µs).

    pack = Pack()
    i_state = pack.add(state)                 # index of the array's entry in the descriptor
    @cfunc(STEP_SIG)
    def step(d):
        state = V2_I8(d, I_STATE)             # views are rebuilt from (address, shape...)
        ...
    call = bind(step)                         # call() -> int, the step's return value

The arrays must stay alive and C-contiguous while the step may run: `Pack` holds references.
Scalars (ring addresses, batch sizes) go in the descriptor too (`pack.scalar`), readable as d[i].
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numba import carray, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from shm.native import ffi

#: Signature of every step cfunc: int64 step(int64 *descriptor).
STEP_SIG = types.int64(types.CPointer(types.int64))


@intrinsic
def address_as_pointer(typingctx, addr):  # type: ignore[no-untyped-def]
    """An integer address as a void* (what carray needs); numba has no cast for it."""

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return types.voidptr(types.int64), codegen


def view1(dtype: np.dtype) -> Callable:
    """A jitted (descriptor, index) -> 1-D array view of `dtype`."""
    dt = np.dtype(dtype)

    @njit(inline="always")
    def view(d, i):  # type: ignore[no-untyped-def]
        return carray(address_as_pointer(d[i]), (d[i + 1],), dt)

    return view


def view2(dtype: np.dtype) -> Callable:
    dt = np.dtype(dtype)

    @njit(inline="always")
    def view(d, i):  # type: ignore[no-untyped-def]
        return carray(address_as_pointer(d[i]), (d[i + 1], d[i + 2]), dt)

    return view


def view3(dtype: np.dtype) -> Callable:
    dt = np.dtype(dtype)

    @njit(inline="always")
    def view(d, i):  # type: ignore[no-untyped-def]
        return carray(address_as_pointer(d[i]), (d[i + 1], d[i + 2], d[i + 3]), dt)

    return view


def view4(dtype: np.dtype) -> Callable:
    dt = np.dtype(dtype)

    @njit(inline="always")
    def view(d, i):  # type: ignore[no-untyped-def]
        return carray(address_as_pointer(d[i]), (d[i + 1], d[i + 2], d[i + 3], d[i + 4]), dt)

    return view


V1_I8 = view1(np.int64)
V2_I8 = view2(np.int64)
V3_I8 = view3(np.int64)
V1_F8 = view1(np.float64)
V2_F8 = view2(np.float64)
V4_I8 = view4(np.int64)


class Pack:
    """The int64 descriptor a step cfunc reads: arrays as (address, shape...), scalars as values."""

    def __init__(self, capacity: int = 256) -> None:
        self.desc = np.zeros(capacity, np.int64)
        self.n = 0
        self._keep: list[np.ndarray] = []

    def _push(self, values: list[int]) -> int:
        i = self.n
        if i + len(values) > len(self.desc):
            raise ValueError(f"descriptor full: capacity={len(self.desc)} needed={i + len(values)}")
        self.desc[i:i + len(values)] = values
        self.n += len(values)
        return i

    def add(self, arr: np.ndarray) -> int:
        """Register an array; returns its index for view1/2/3."""
        if not arr.flags.c_contiguous:
            raise ValueError(f"array must be C-contiguous: shape={arr.shape} strides={arr.strides}")
        self._keep.append(arr)
        return self._push([arr.ctypes.data, *arr.shape])

    def scalar(self, value: int) -> int:
        """Register an integer the step reads (and may update) as d[index]."""
        return self._push([int(value)])

    def __setitem__(self, index: int, value: int) -> None:
        self.desc[index] = value

    def __getitem__(self, index: int) -> int:
        return int(self.desc[index])

    @property
    def address(self) -> int:
        return self.desc.ctypes.data


def bind(step, pack: Pack) -> Callable[[], int]:  # type: ignore[no-untyped-def]
    """A zero-argument Python callable running `step(pack)` through one cffi call."""
    fn = ffi.cast("int64_t (*)(int64_t *)", step.address)
    ptr = ffi.cast("int64_t *", pack.address)

    def call() -> int:
        return fn(ptr)

    call.keep = (step, pack)  # type: ignore[attr-defined]
    return call
