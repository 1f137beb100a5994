"""Name numba's JIT code for perf: write /tmp/perf-<pid>.map from inside a stage process.

perf shows samples in anonymous executable memory as `[unknown]` unless the process wrote
/tmp/perf-<pid>.map ("<start hex> <size hex> <name>" per line). numba's NUMBA_ENABLE_PROFILING only
registers LLVM's Intel/OProfile listeners, which this llvmlite build leaves out (tried: no map, no
jitdump), so the map is written here: every function in numba's execution engine (cached kernels,
the stages' step cfuncs, NRT), at the address the engine gave it. Kernels loaded from numba's cache keep no object
code, so sizes are the distance to the next symbol (capped): exact enough for attribution.

`profiled_host_main` is what the launcher spawns instead of `procs.host.host_main` under --profile.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

#: the last symbol of a code block has no successor: assume at most this much code
_MAX_SIZE = 1 << 16
_MANGLED = re.compile(r"^(cfunc\.)?_ZN(.*)$")


def demangle(name: str) -> str:
    """numba's Itanium-style names to dotted ones: `_ZN5procs7kernels4book11book_kernelB2v1...` →
    `procs.kernels.book.book_kernel`; cpython/cfunc wrappers say so."""
    m = _MANGLED.match(name)
    if not m:
        return name
    rest, parts, i = m.group(2), [], 0
    while i < len(rest) and rest[i].isdigit():
        j = i
        while j < len(rest) and rest[j].isdigit():
            j += 1
        n = int(rest[i:j])
        parts.append(rest[j:j + n])
        i = j + n
    if not parts:
        return name
    suffix = ""
    if parts[0] == "cpython":
        parts, suffix = parts[1:], " [cpython wrapper]"
    elif m.group(1):
        suffix = " [cfunc]"
    dotted = ".".join(parts)
    # numba escapes characters that are not identifiers as _XX hex: `<locals>` reads back
    dotted = re.sub(r"_([0-9a-f]{2})", lambda h: chr(int(h.group(1), 16)) if h.group(1) in ("3c", "3e") else
                    h.group(0), dotted)
    return dotted + suffix


def _engine() -> Any:
    """llvmlite's execution engine behind numba's CPU target: it holds every module loaded or compiled."""
    from numba.core.registry import cpu_target

    return cpu_target.target_context.codegen()._engine._ee


def numba_symbols() -> list[tuple[int, int, str]]:
    """(start, size, readable name) of every function in numba's JIT engine (kernels, cfuncs, NRT), sorted.

    A library loaded from numba's cache has an empty final module; its functions are listed by the
    bitcode it keeps for linking (`_shared_module`), and resolved by name in the engine.
    """
    ee = _engine()
    addrs: dict[int, str] = {}
    for mod in list(ee._modules):
        lib = getattr(mod, "_CPUCodeLibrary__library", None)  # numba's back-reference (a name-mangled attribute)
        names = [fn.name for fn in mod.functions if not fn.is_declaration]
        try:
            shared = getattr(lib, "_shared_module", None) if lib is not None else None
        except ReferenceError:  # a weak proxy to a library numba has already freed: its module's names suffice
            shared = None
        if shared is not None:
            names += [fn.name for fn in shared.functions if not fn.is_declaration]
        for name in names:
            try:
                a = int(ee.get_function_address(name))
            except Exception:
                continue
            if a:
                addrs.setdefault(a, demangle(name))
    starts = sorted(addrs)
    out = []
    for k, a in enumerate(starts):
        nxt = starts[k + 1] if k + 1 < len(starts) else a + _MAX_SIZE
        out.append((a, max(1, min(nxt - a, _MAX_SIZE)), "numba:" + addrs[a]))
    return out


def map_path(pid: int | None = None) -> Path:
    return Path(f"/tmp/perf-{pid or os.getpid()}.map")


def write_perf_map(pid: int | None = None) -> Path:
    """Write (replace atomically) this process's perf map; returns its path."""
    path = map_path(pid)
    tmp = path.with_suffix(".map.tmp")
    tmp.write_text("".join(f"{a:x} {n:x} {name}\n" for a, n, name in numba_symbols()), encoding="utf-8")
    os.replace(tmp, path)
    return path


def _signature() -> int:
    # cheap change detector: modules in the engine (one per compiled or loaded library)
    return len(_engine()._modules)


def _writer(interval_s: float, settle_s: float) -> None:
    # every interval while kernels load, then rarely: each pass takes the GIL from the stage's loop
    last = -1
    since_change = 0.0
    while True:
        time.sleep(interval_s if since_change < settle_s else 10 * interval_s)
        try:
            if "numba" not in sys.modules:
                continue
            sig = _signature()
            if sig != last:
                write_perf_map()
                last, since_change = sig, 0.0
            else:
                since_change += interval_s
        except Exception as e:  # never take a stage down for a profiling aid
            print(f"tickpipe: perf map writer: {e!r}", file=sys.stderr, flush=True)
            return


def start_writer(interval_s: float = 0.5, settle_s: float = 10.0) -> threading.Thread:
    t = threading.Thread(target=_writer, args=(interval_s, settle_s), name="perf-map", daemon=True)
    t.start()
    return t


def profiled_host_main(spec: Any) -> None:
    """procs.host.host_main with a perf-map writer thread beside it (spawned under run.py --profile)."""
    from procs.host import host_main

    start_writer()
    host_main(spec)
