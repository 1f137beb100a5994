"""Flame graphs: perf-script folding, the SVG renderer, numba perf maps, and `run.py --profile` end to end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from numba import njit

from profiling import flame, perfmap
from shm.segment import list_segments

ROOT = Path(__file__).resolve().parents[1]

PERF_SCRIPT = """ 4242/4242
\t    7f00000010 numba:procs.kernels.book.book_kernel (/tmp/perf-4242.map)
\t          1000a0 cdata_call+0x1c (/usr/lib/_cffi_backend.so)
\t          100667 _PyEval_EvalFrameDefault (/usr/lib/libpython3.11.so.1.0)

 4242/4242
\t    7f00000010 numba:procs.kernels.book.book_kernel (/tmp/perf-4242.map)
\t          1000a0 cdata_call+0x1c (/usr/lib/_cffi_backend.so)
\t          100667 _PyEval_EvalFrameDefault (/usr/lib/libpython3.11.so.1.0)

 4243/4243
\t    7f39249519e0 [unknown] (/usr/lib/libonnxruntime.so)
\t          2000 tp_ring_peek+0x10 (/work/native/_tickpipe.abi3.so)

 9/9
\tffffffff82203249 _raw_spin_unlock_irqrestore ([kernel.kallsyms])
"""


def test_perf_script_folds_into_stage_rooted_stacks() -> None:
    folded = flame.collapse_perf_script(PERF_SCRIPT, {4242: "feed+book+strategy", 4243: "inference"})
    assert folded == {
        "feed+book+strategy;_PyEval_EvalFrameDefault;cdata_call;numba:procs.kernels.book.book_kernel": 2,
        "inference;tp_ring_peek;[libonnxruntime.so]": 1,
        "pid 9;_raw_spin_unlock_irqrestore": 1,
    }


def test_svg_is_valid_xml_with_one_frame_per_node_and_counts() -> None:
    folded = {"book;do_work;numba:procs.kernels.book.book_kernel": 30, "book;do_work;tp_ring_peek": 10,
              "inference;run": 60}
    svg = flame.render_svg(folded, title="t <&>")
    root = ET.fromstring(svg)  # well-formed, escaped
    ns = "{http://www.w3.org/2000/svg}"
    titles = [t.text for t in root.iter(f"{ns}title")]
    assert "numba:procs.kernels.book.book_kernel (30 samples, 30.00%)" in titles
    assert "inference (60 samples, 60.00%)" in titles and "do_work (40 samples, 40.00%)" in titles
    assert len(titles) == 6  # book, do_work, kernel, peek, inference, run
    widths = {t.text.split(" (")[0]: float(g.find(f"{ns}rect").get("width"))
              for g in root.iter(f"{ns}g") for t in [g.find(f"{ns}title")]}
    assert widths["inference"] == pytest.approx(1.5 * widths["do_work"], rel=0.01)  # width ∝ samples
    assert "t &lt;&amp;&gt;" in svg


def test_demangle_reads_numba_names() -> None:
    assert perfmap.demangle("_ZN5procs7kernels4book11book_kernelB2v1B38c8tJTIeFIjxB2IKSgE5ArrayIxLi1E") == \
        "procs.kernels.book.book_kernel"
    assert perfmap.demangle("_ZN7cpython5procs4book4stepB2v1E") == "procs.book.step [cpython wrapper]"
    assert perfmap.demangle("cfunc._ZN5procs4book10build_step12_3clocals_3e4stepB2v1E") == \
        "procs.book.build_step.<locals>.step [cfunc]"
    assert perfmap.demangle("NRT_incref") == "NRT_incref"


@njit(cache=False)
def _profiled_kernel(a: np.ndarray) -> float:
    return float(a.sum())


def test_perf_map_names_jit_code_at_its_address(tmp_path: Path) -> None:
    _profiled_kernel(np.ones(4))
    syms = perfmap.numba_symbols()
    names = {name: (addr, size) for addr, size, name in syms}
    key = next(n for n in names if n.startswith("numba:") and n.endswith("_profiled_kernel"))
    addr = int(perfmap._engine().get_function_address(
        next(fn.name for cres in _profiled_kernel.overloads.values() for fn in cres.library.get_defined_functions()
             if fn.name.startswith("_ZN") and "_profiled_kernel" in fn.name)))
    assert names[key][0] == addr and names[key][1] > 0
    starts = [a for a, _, _ in syms]
    assert starts == sorted(starts) and all(a + n <= b for (a, n, _), b in zip(syms, starts[1:], strict=False))
    path = perfmap.write_perf_map(pid=10**9 - 7)  # a pid no process has: no clash with a real map
    try:
        line = next(ln for ln in path.read_text().splitlines() if ln.endswith("_profiled_kernel"))
        start, size, _ = line.split(" ", 2)
        assert int(start, 16) == addr and int(size, 16) > 0
    finally:
        path.unlink()


def _profiling_unavailable() -> str | None:
    if shutil.which("py-spy") is None:
        return "py-spy is not installed (pip install -e '.[profile]')"
    if shutil.which("perf") is None:
        return "perf is not installed (apt-get install linux-perf)"
    paranoid = Path("/proc/sys/kernel/perf_event_paranoid")
    if os.geteuid() != 0 and paranoid.is_file() and int(paranoid.read_text()) > 1:
        return "perf may not attach to processes here (kernel.perf_event_paranoid > 1 and not root)"
    scope = Path("/proc/sys/kernel/yama/ptrace_scope")
    if os.geteuid() != 0 and scope.is_file() and int(scope.read_text()) > 0:
        return "py-spy may not ptrace the stages (kernel.yama.ptrace_scope > 0 and not root)"
    return None


def test_run_py_profile_writes_named_flame_graphs(tmp_path: Path) -> None:
    reason = _profiling_unavailable()
    if reason:
        pytest.skip(reason)
    # --speed 0: the simulator as fast as it goes, so the kernels get enough of the samples to show
    r = subprocess.run([sys.executable, str(ROOT / "run.py"), "--profile", "--duration", "3", "--speed", "0", "--quiet",
                        "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr + r.stdout
    run_dir = next(p for p in tmp_path.iterdir() if p.is_dir())
    prof = json.loads((run_dir / "summary.json").read_text())["meta"]["profile"]
    notes = " ".join(prof["notes"])
    if "Operation not permitted" in notes or "Permission denied" in notes:
        pytest.skip(f"profiler not permitted here: {notes}")
    stages = json.loads((run_dir / "summary.json").read_text())["meta"]["placement"].split()
    labels = {g.split("@")[0].replace(",", "+") for g in stages}
    assert set(prof["py_spy"]) == labels, notes
    for label, rel in prof["py_spy"].items():
        svg = (run_dir / rel).read_text()
        assert svg.lstrip().startswith("<?xml") and "</svg>" in svg
        assert "host_main" in svg and "_loop" in svg, label  # the stage's Python frames, named by py-spy
    chain = next(label for label in labels if "feed" in label)
    assert "do_work" in (run_dir / prof["py_spy"][chain]).read_text()
    perf_svg = (run_dir / prof["perf"]).read_text()
    ET.fromstring(perf_svg)
    assert "launcher" in perf_svg and all(label in perf_svg for label in labels)
    folded = (run_dir / "flame" / "perf.folded").read_text()
    assert "numba:procs." in folded, "numba JIT frames are named from the perf maps"  # not [unknown]
    maps = " ".join(m.read_text() for m in (run_dir / "flame").glob("perf-*.map"))
    assert "numba:procs.kernels.book.book_kernel" in maps, "the perf maps (kept with perf.data) name the kernels"
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert all(f'data="{rel}"' in page for rel in [*prof["py_spy"].values(), prof["perf"]])
    run_id = run_dir.name.rsplit("-", 1)[-1]
    assert list_segments(run_id) == []
    left = subprocess.run(["pgrep", "-f", str(run_dir)], capture_output=True, text=True).stdout.split()
    assert left == [], f"profiler processes left running: {left}"
