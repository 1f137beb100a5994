"""The compiled core (native._tickpipe), registered with numba so nopython code can call it.

Jitted functions that call `lib.*` cannot be cached by numba (the function addresses are
process-specific), so keep those thin drivers and put the record logic in cached kernels.
"""

from __future__ import annotations

try:
    from native import _tickpipe
except ImportError as exc:  # pragma: no cover - only without a build
    raise ImportError(
        "tickpipe's C extension is not built: run `python -m pip install -e \".[dev]\"` "
        f"from the repository root ({exc})") from exc

ffi = _tickpipe.ffi
lib = _tickpipe.lib

_registered = False


def register_with_numba() -> None:
    """Make `lib.*` callable from @njit code (idempotent)."""
    global _registered
    if not _registered:
        from numba.core.typing import cffi_utils

        cffi_utils.register_module(_tickpipe)
        _registered = True


def now_ns() -> int:
    """CLOCK_MONOTONIC in ns: the one clock every process and stage uses."""
    return lib.tp_now_ns()
