"""Record layouts declared once, as ordered fields.

A `Layout` is the single source of truth for a record type: the numpy structured
dtype, the C struct declaration and the 64-bit layout hash are all derived from
it, so the three can never disagree (tests/test_records.py holds them against
cffi's own `sizeof`/`offsetof`).

This module imports nothing outside the standard library at import time, because
the cffi build script (native/_build.py) loads it before numpy may be installed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

#: Every slot is a whole number of cache lines, so two slots never share a line.
CACHE_LINE = 64

# code -> (numpy type string, C type, size in bytes); little-endian is assumed
# throughout, which holds on every platform this runs on (x86-64, aarch64).
_TYPES: dict[str, tuple[str, str, int]] = {
    "i1": ("<i1", "int8_t", 1),
    "u1": ("<u1", "uint8_t", 1),
    "i2": ("<i2", "int16_t", 2),
    "u2": ("<u2", "uint16_t", 2),
    "i4": ("<i4", "int32_t", 4),
    "u4": ("<u4", "uint32_t", 4),
    "i8": ("<i8", "int64_t", 8),
    "u8": ("<u8", "uint64_t", 8),
    "f4": ("<f4", "float", 4),
    "f8": ("<f8", "double", 8),
}


@dataclass(frozen=True)
class Field:
    """One member of a record: a name, a type code from `_TYPES` and an optional count."""

    name: str
    code: str
    count: int = 1
    doc: str = ""

    def __post_init__(self) -> None:
        if self.code not in _TYPES:
            raise ValueError(f"unknown field type: field={self.name} code={self.code!r} "
                             f"expected one of {sorted(_TYPES)}")
        if self.count < 1:
            raise ValueError(f"field count must be >= 1: field={self.name} count={self.count}")

    @property
    def size(self) -> int:
        return _TYPES[self.code][2] * self.count

    @property
    def align(self) -> int:
        return _TYPES[self.code][2]


class Layout:
    """An ordered, naturally aligned record padded to a multiple of `CACHE_LINE` bytes."""

    def __init__(self, name: str, fields: list[Field] | tuple[Field, ...], *,
                 size: int | None = None) -> None:
        self.name = name
        self.fields: tuple[Field, ...] = tuple(fields)
        names = [f.name for f in self.fields]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate field names in {name}: {sorted(dup)}")
        offsets: dict[str, int] = {}
        off = 0
        for f in self.fields:
            off = (off + f.align - 1) // f.align * f.align
            offsets[f.name] = off
            off += f.size
        self.payload_size = off
        natural = (off + CACHE_LINE - 1) // CACHE_LINE * CACHE_LINE
        if size is not None:
            if size < natural or size % CACHE_LINE:
                raise ValueError(f"bad record size: layout={name} size={size} "
                                 f"expected a multiple of {CACHE_LINE} >= {natural}")
            natural = size
        self.size: int = natural
        self.offsets: dict[str, int] = offsets
        self._dtype: Any = None

    # -- derived views -------------------------------------------------------------------------
    @property
    def dtype(self) -> Any:
        """The numpy structured dtype (explicit offsets and itemsize, so it equals the C struct)."""
        if self._dtype is None:
            import numpy as np

            self._dtype = np.dtype({
                "names": [f.name for f in self.fields],
                "formats": [_TYPES[f.code][0] if f.count == 1 else (_TYPES[f.code][0], (f.count,))
                            for f in self.fields],
                "offsets": [self.offsets[f.name] for f in self.fields],
                "itemsize": self.size,
            })
        return self._dtype

    @property
    def c_name(self) -> str:
        return f"tp_{self.name.lower()}_t"

    def c_decl(self) -> str:
        """A C struct whose members and padding reproduce the layout exactly."""
        lines = ["typedef struct {"]
        off = 0
        pad = 0
        for f in self.fields:
            o = self.offsets[f.name]
            if o > off:
                lines.append(f"    uint8_t _pad{pad}[{o - off}];")
                pad += 1
            arr = f"[{f.count}]" if f.count > 1 else ""
            lines.append(f"    {_TYPES[f.code][1]} {f.name}{arr};")
            off = o + f.size
        if self.size > off:
            lines.append(f"    uint8_t _pad{pad}[{self.size - off}];")
        lines.append(f"}} {self.c_name};")
        return "\n".join(lines)

    @property
    def layout_hash(self) -> int:
        """64-bit hash of name, size and every field's type, count and offset."""
        desc = f"{self.name}/{self.size}/" + ";".join(
            f"{f.name}:{f.code}x{f.count}@{self.offsets[f.name]}" for f in self.fields)
        return int.from_bytes(hashlib.blake2b(desc.encode(), digest_size=8).digest(), "little")

    def __repr__(self) -> str:
        return f"Layout({self.name}, size={self.size}, hash={self.layout_hash:#018x})"
