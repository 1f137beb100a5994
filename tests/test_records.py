"""One definition per record: numpy dtype, C struct and hash must agree."""

from __future__ import annotations

import numpy as np
import pytest

from shm import records as R
from shm.layout import Field, Layout
from shm.native import ffi, lib


def test_native_module_imports() -> None:
    assert lib.tp_now_ns() > 0
    assert ffi.sizeof("tp_ring_hdr_t") == 5 * 64
    assert ffi.sizeof("tp_consumer_t") == 3 * 64


@pytest.mark.parametrize("layout", list(R.LAYOUTS.values()), ids=list(R.LAYOUTS))
def test_dtype_matches_c_struct(layout: Layout) -> None:
    dt = layout.dtype
    cfields = dict(ffi.typeof(layout.c_name).fields)
    assert dt.itemsize == layout.size == ffi.sizeof(layout.c_name)
    assert layout.size % 64 == 0
    for f in layout.fields:
        assert dt.fields[f.name][1] == layout.offsets[f.name] == cfields[f.name].offset, f.name
        assert dt.fields[f.name][0].itemsize == f.size == ffi.sizeof(cfields[f.name].type), f.name


@pytest.mark.parametrize("layout", list(R.LAYOUTS.values()), ids=list(R.LAYOUTS))
def test_common_header_first(layout: Layout) -> None:
    names = [f.name for f in layout.fields[: len(R.HEADER)]]
    assert names == ["seq", "t_origin_ns", "t_publish_ns", "symbol", "kind", "flags"]
    assert layout.offsets["t_origin_ns"] == 8 and layout.offsets["flags"] == 30


def test_hash_changes_with_layout() -> None:
    a = Layout("X", [Field("a", "i8"), Field("b", "i8")])
    b = Layout("X", [Field("b", "i8"), Field("a", "i8")])
    c = Layout("X", [Field("a", "i8"), Field("b", "u8")])
    assert len({a.layout_hash, b.layout_hash, c.layout_hash}) == 3
    assert a.layout_hash == Layout("X", [Field("a", "i8"), Field("b", "i8")]).layout_hash
    assert len({lay.layout_hash for lay in R.LAYOUTS.values()}) == len(R.LAYOUTS)


def test_alignment_and_padding() -> None:
    lay = Layout("P", [Field("a", "u1"), Field("b", "i8"), Field("c", "u2", 3)])
    assert lay.offsets == {"a": 0, "b": 8, "c": 16}
    assert lay.size == 64
    arr = np.zeros(2, lay.dtype)
    arr["c"][1] = [1, 2, 3]
    assert arr.tobytes()[64 + 16:64 + 22] == b"\x01\x00\x02\x00\x03\x00"
    assert "uint8_t _pad0[7];" in lay.c_decl()


def test_bad_layouts_refused() -> None:
    with pytest.raises(ValueError, match="code='q8'"):
        Field("x", "q8")
    with pytest.raises(ValueError, match="duplicate"):
        Layout("D", [Field("a", "i8"), Field("a", "i8")])
    with pytest.raises(ValueError, match="size=100"):
        Layout("S", [Field("a", "i8")], size=100)


def test_fixed_point_range() -> None:
    # a BTC price of 10^6 and a quantity of 10^9 units still fit int64 at the chosen scales
    assert 10**6 * R.PRICE_SCALE < 2**63 and 10**9 * R.QTY_SCALE < 2**63
