"""Flame graphs of a run: py-spy per stage process, perf over the whole run.

    python run.py --profile --duration 10        # the run, then flame/*.svg in its run folder

What the launcher does under --profile (see procs/launcher.py, the only hook): it spawns the stages
through `profiling.perfmap.profiled_host_main` (which writes /tmp/perf-<pid>.map so perf can name numba's
JIT code), and once every stage is ready, just before `go`, calls `Profiler.start` with the stage pids.
At the end, before the report, `Profiler.finish` waits for the profilers and renders:

- `flame/<stage>.svg`: `py-spy record --native --pid PID` per stage process (py-spy renders the SVG):
  Python frames (the agents' do_work, the launcher-side code) with the native frames under them
  (cffi ring calls into _tickpipe, onnxruntime). numba's JIT code has no symbols for py-spy: it shows as
  the Python frame that called the kernel.
- `flame/perf.svg`: `perf record -g -e cpu-clock` on the launcher and every stage (a software clock:
  this VM exposes no hardware counters), `perf script`, folded here into `flame/perf.folded` (the
  standard collapsed-stack format, readable by flamegraph.pl, inferno or speedscope) and drawn by
  `render_svg`. JIT frames are named `numba:<module>.<function>` from the perf maps, which are kept in
  `flame/perf-<pid>.map` (copy them back to /tmp to run `perf report -i flame/perf.data` with names).

The perf picture is drawn here because no maintained renderer installs from the registries this
project uses: flamegraph.pl is not packaged in Debian 12 nor on PyPI, inferno is a Rust crate, and
perf's own `flamegraph` script writes HTML that loads d3 from a CDN. `render_svg` draws the same
classic layout (x: share of samples, sorted by name; y: stack depth; hover for counts).
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import os
import re
import shutil
import signal
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

#: py-spy samples per second: each sample stops the stage (--native needs a consistent stack)
PYSPY_RATE = 97
#: perf samples per second per CPU (cpu-clock, software event)
PERF_FREQ = 499
_OFFSET = re.compile(r"\+0x[0-9a-f]+$")


def stage_label(agents: list[str] | tuple[str, ...]) -> str:
    return "+".join(agents)


class Profiler:
    """py-spy per stage and perf over the run; `finish` renders and returns what was written (for summary.json)."""

    def __init__(self, run_dir: str | Path, *, pyspy: bool = True, perf: bool = True) -> None:
        self.dir = Path(run_dir) / "flame"
        self.want_pyspy = pyspy and shutil.which("py-spy") is not None
        self.want_perf = perf and shutil.which("perf") is not None
        self.notes: list[str] = []
        if pyspy and not self.want_pyspy:
            self.notes.append("py-spy not found: no per-stage flame graphs (pip install -e '.[profile]')")
        if perf and not self.want_perf:
            self.notes.append("perf not found: no whole-run flame graph (apt-get install linux-perf)")
        self.spies: dict[str, tuple[int, subprocess.Popen]] = {}
        self.perf: subprocess.Popen | None = None
        self.pids: dict[int, str] = {}
        self._logs: list[Any] = []

    def start(self, stages: dict[str, int], launcher_pid: int | None = None) -> None:
        """Attach to the stage processes (label → pid) and, for perf, to the launcher too."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pids = {pid: label for label, pid in stages.items()}
        if launcher_pid:
            self.pids[launcher_pid] = "launcher"
        if self.want_pyspy:
            for label, pid in stages.items():
                log = (self.dir / f"{label}.py-spy.log").open("wb")
                self._logs.append(log)
                cmd = ["py-spy", "record", "--pid", str(pid), "--native", "--rate", str(PYSPY_RATE),
                       "--format", "flamegraph", "--output", str(self.dir / f"{label}.svg")]
                self.spies[label] = (pid, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                           stdin=subprocess.DEVNULL))
        if self.want_perf:
            log = (self.dir / "perf-record.log").open("wb")
            self._logs.append(log)
            cmd = ["perf", "record", "-g", "-e", "cpu-clock", "-F", str(PERF_FREQ), "-o", str(self.dir / "perf.data"),
                   "-p", ",".join(str(p) for p in self.pids)]
            self.perf = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        time.sleep(0.3)  # py-spy and perf attach in ~0.1 s: let them see the first messages
        for label, (_, p) in self.spies.items():
            if p.poll() is not None:
                self.notes.append(f"py-spy on {label} exited at once (status {p.returncode}): "
                                  f"{self._tail(self.dir / f'{label}.py-spy.log')}")
        if self.perf is not None and self.perf.poll() is not None:
            self.notes.append(f"perf record exited at once (status {self.perf.returncode}): "
                              f"{self._tail(self.dir / 'perf-record.log')}")

    @staticmethod
    def _tail(path: Path) -> str:
        with contextlib.suppress(OSError):
            return " | ".join(path.read_text(errors="replace").strip().splitlines()[-3:])
        return "?"

    def finish(self, timeout_s: float = 20.0) -> dict[str, Any]:
        """Wait for the profilers (the stages have exited), render perf's flame graph, return the file list."""
        out: dict[str, Any] = {"folder": "flame", "py_spy": {}, "perf": None, "notes": self.notes}
        deadline = time.monotonic() + timeout_s
        for label, (_, p) in self.spies.items():
            _wait_or_interrupt(p, deadline)
            svg = self.dir / f"{label}.svg"
            if svg.is_file() and svg.stat().st_size > 0:
                out["py_spy"][label] = f"flame/{svg.name}"
            else:
                log = self._tail(self.dir / f"{label}.py-spy.log")
                self.notes.append(f"py-spy wrote no flame graph for {label}: {log}")
        if self.perf is not None:
            _wait_or_interrupt(self.perf, deadline, first=signal.SIGINT)
            try:
                out["perf"] = self._render_perf()
            except Exception as e:  # the run's report matters more than its picture
                self.notes.append(f"perf flame graph failed: {e!r}")
        self.stop()
        return out

    def _render_perf(self) -> str | None:
        data = self.dir / "perf.data"
        if not data.is_file() or data.stat().st_size == 0:
            self.notes.append(f"perf wrote no data: {self._tail(self.dir / 'perf-record.log')}")
            return None
        script = subprocess.run(["perf", "script", "-i", str(data), "-F", "pid,tid,ip,sym,dso"], capture_output=True,
                                text=True, errors="replace", timeout=300)
        if script.returncode != 0:
            self.notes.append(f"perf script failed: {script.stderr.strip()[-300:]}")
            return None
        folded = collapse_perf_script(script.stdout, self.pids)
        (self.dir / "perf.folded").write_text("".join(f"{s} {n}\n" for s, n in sorted(folded.items())),
                                              encoding="utf-8")
        for pid in self.pids:  # keep the maps with the data; /tmp is not the run's
            src = Path(f"/tmp/perf-{pid}.map")
            if src.is_file():
                shutil.move(str(src), self.dir / src.name)
        svg = self.dir / "perf.svg"
        svg.write_text(render_svg(folded, title="tickpipe run: perf record -g -e cpu-clock (launcher and stages)"),
                       encoding="utf-8")
        return f"flame/{svg.name}"

    def stop(self) -> None:
        """Kill whatever profiler is still running (error paths); idempotent."""
        for p in [p for _, p in self.spies.values()] + ([self.perf] if self.perf else []):
            if p.poll() is None:
                p.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(5)
        for log in self._logs:
            log.close()
        self._logs = []
        for pid in self.pids:  # maps left by a run that never reached the rendering
            with contextlib.suppress(OSError):
                Path(f"/tmp/perf-{pid}.map").unlink()
            with contextlib.suppress(OSError):
                Path(f"/tmp/perf-{pid}.map.tmp").unlink()


def _wait_or_interrupt(p: subprocess.Popen, deadline: float, first: int = signal.SIGINT) -> None:
    # py-spy and perf both write their output on SIGINT, as after Ctrl-C
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(max(0.1, deadline - time.monotonic()))
        return
    with contextlib.suppress(ProcessLookupError):
        p.send_signal(first)
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(10)


# -- perf script → folded stacks -------------------------------------------------------------------
def _frame(line: str) -> str:
    """`    7f12 book_kernel+0x1c (/path/lib.so)` → `book_kernel`; unknown symbols → `[lib.so]`."""
    parts = line.strip().split(None, 1)
    rest = parts[1] if len(parts) > 1 else ""
    sym, _, dso = rest.rpartition(" (")
    dso = dso.rstrip(")")
    sym = _OFFSET.sub("", sym.strip())
    if not sym or sym == "[unknown]":
        base = os.path.basename(dso) if dso and dso != "[unknown]" else "unknown"
        return f"[{base}]"
    return sym.replace(";", ":")


def collapse_perf_script(text: str, labels: dict[int, str] | None = None) -> dict[str, int]:
    """`perf script` output (-F pid,tid,ip,sym,dso with -g) → {"root;...;leaf": samples}, root = process label."""
    labels = labels or {}
    folded: dict[str, int] = defaultdict(int)
    head: str | None = None
    frames: list[str] = []

    def flush() -> None:
        if head is not None:
            folded[";".join([head, *reversed(frames)])] += 1

    for line in text.splitlines():
        if not line.strip():
            flush()
            head, frames = None, []
        elif line[0] == "\t":  # a callchain frame; the sample's header line is padded with spaces, not a tab
            if head is not None:
                frames.append(_frame(line))
        else:
            flush()
            frames = []
            pid_txt = line.split()[0].split("/")[0] if line.split() else ""
            pid = int(pid_txt) if pid_txt.isdigit() else -1
            head = labels.get(pid, f"pid {pid}")
    flush()
    return dict(folded)


# -- folded stacks → SVG ------------------------------------------------------------------------------
def _color(name: str) -> str:
    """Warm hues for native code, blue for numba JIT, green for the kernel, aqua for the C ring library."""
    h = int(hashlib.md5(name.encode()).hexdigest()[:4], 16) / 0xFFFF
    if name.startswith("numba:"):
        return f"rgb({int(80 + 60 * h)},{int(130 + 60 * h)},230)"
    if name.startswith("tp_") or "_tickpipe" in name:
        return f"rgb(60,{int(190 + 40 * h)},{int(190 + 40 * h)})"
    if name.startswith(("[k]", "entry_SYSCALL", "__x64_sys", "do_syscall")) or name == "[kernel.kallsyms]":
        return f"rgb({int(100 + 50 * h)},{int(190 + 40 * h)},90)"
    return f"rgb(230,{int(100 + 110 * h)},{int(40 + 50 * h)})"


def render_svg(folded: dict[str, int], title: str = "flame graph", width: int = 1200, row: int = 16,
               min_px: float = 0.3) -> str:
    """A classic flame graph (root at the bottom, siblings sorted by name, width ∝ samples) as one SVG."""
    tree: dict[str, Any] = {"n": 0, "kids": {}}
    for stack, n in folded.items():
        node = tree
        node["n"] += n
        for f in stack.split(";"):
            node = node["kids"].setdefault(f, {"n": 0, "kids": {}})
            node["n"] += n
    total = max(tree["n"], 1)

    def depth(node: dict) -> int:
        return 1 + max((depth(k) for k in node["kids"].values()), default=0)

    levels = depth(tree) - 1
    pad_top, pad_bottom = 40, 20
    height = pad_top + pad_bottom + max(levels, 1) * row
    scale = (width - 20) / total
    rects: list[str] = []

    def draw(name: str, node: dict, x: float, level: int) -> None:
        w = node["n"] * scale
        if w < min_px:  # too narrow to see: it would only bloat the file
            return
        y = height - pad_bottom - (level + 1) * row
        pct = 100.0 * node["n"] / total
        label = name if len(name) * 7 < w else (name[: max(0, int(w / 7) - 2)] + ".." if w > 28 else "")
        esc = html.escape(name)
        rects.append(f'<g><title>{esc} ({node["n"]:,} samples, {pct:.2f}%)</title>'
                     f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row - 1}" fill="{_color(name)}" rx="2"/>'
                     + (f'<text x="{x + 3:.1f}" y="{y + row - 4}">{html.escape(label)}</text>' if label else "")
                     + "</g>")
        cx = x
        for kname in sorted(node["kids"]):
            kid = node["kids"][kname]
            draw(kname, kid, cx, level + 1)
            cx += kid["n"] * scale

    x = 10.0
    for name in sorted(tree["kids"]):
        draw(name, tree["kids"][name], x, 0)
        x += tree["kids"][name]["n"] * scale
    return (f'<?xml version="1.0" standalone="no"?>\n'
            f'<svg version="1.1" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'xmlns="http://www.w3.org/2000/svg">\n'
            '<style>text{font-family:Verdana,sans-serif;font-size:11px;fill:#000;pointer-events:none}'
            'rect:hover{stroke:#000;stroke-width:0.8}</style>\n'
            f'<rect width="100%" height="100%" fill="#f8f8f0"/>\n'
            f'<text x="{width / 2}" y="22" text-anchor="middle" style="font-size:16px">{html.escape(title)}</text>\n'
            f'<text x="10" y="{height - 5}">{total:,} samples; width = share of samples, bottom = process, '
            'top = the function on CPU; hover a frame for its count</text>\n'
            + "\n".join(rects) + "\n</svg>\n")
