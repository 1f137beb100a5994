"""cffi build script: compiles native/tickpipe.c into the out-of-line module native._tickpipe.

The declarations are native/tickpipe.h (no preprocessor lines, so cffi reads it as is)
plus the record structs generated from shm/records.py, so C sees the same layouts as numpy.
"""

import importlib.util
import pathlib
import sys

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent


def _record_decls() -> str:
    # load shm/layout.py and shm/records.py by path: the package is not installed yet at build time
    for name in ("shm.layout", "shm.records"):
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(name, ROOT / (name.replace(".", "/") + ".py"))
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod
            spec.loader.exec_module(mod)
    return sys.modules["shm.records"].c_declarations()


ffibuilder = FFI()
_decls = (HERE / "tickpipe.h").read_text() + "\n" + _record_decls()
ffibuilder.cdef(_decls)
ffibuilder.set_source(
    "native._tickpipe",
    '#include "tickpipe.h"\n' + _record_decls(),
    sources=[str((HERE / "tickpipe.c").relative_to(ROOT))],
    include_dirs=[str(HERE.relative_to(ROOT))],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-std=gnu11"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
