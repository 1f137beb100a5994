"""A run's latency report: summary.json, percentiles.txt, latency.png, report.html and .hlog interval logs.

How to read it (what each hop measures is in README):

- Every latency is in nanoseconds in summary.json; the table and plot use µs (table: ns/µs/ms per value).
- pNN is the value that NN% of the recorded samples were at or below; p99.99 is 1 sample in 10,000.
  Values are HdrHistogram bucket tops (3 significant figures), so they may exceed the true sample by < 0.1%.
- A percentile needs enough samples to mean anything: p99.99 of 5,000 samples is just the max.
- latency.png is the classic HdrHistogram plot: x is 1/(1-p) on a log scale, so each decade right is
  "one more nine"; a line that bends upward at the right is a tail.
- hlog/<name>.hlog holds one interval histogram per snapshot (the delta since the previous one), in the
  standard HdrHistogram log format: HistogramLogProcessor, HdrHistogramVisualizer or hdrh read them.

CLI: `python -m procs.report RUN_DIR` prints meta, counters and the table; `--hlog NAME` prints a log's intervals;
`--html` rewrites report.html from summary.json.

report.html gathers the table, the plot (embedded), the flame graphs (linked SVGs), the counters and the
doctor's verdict; `results_section` and `register_section` are where other modules add theirs.
"""

from __future__ import annotations

import argparse
import base64
import html
import logging
import math
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from shm.hdr import HIGHEST, LOWEST, PERCENTILES, SIG_FIGS, Histogram, highest_equivalent

log = logging.getLogger(__name__)

#: summary.json keys per histogram, in table order
PCT_KEYS = tuple(f"p{p:g}" for p in PERCENTILES)
STAT_KEYS = ("count", "min", "mean", *PCT_KEYS, "max")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def hlog_name(name: str) -> str:
    """File stem of a histogram's .hlog (characters other than letters, digits, `._-` become `_`)."""
    return _UNSAFE.sub("_", name)


def _as_counts(h: Histogram | np.ndarray) -> np.ndarray:
    # always copy: a live shared-memory array must be read once, not once per use
    return np.array(h.counts if isinstance(h, Histogram) else h, dtype=np.int64, copy=True)


def _as_hist(h: Histogram | np.ndarray) -> Histogram:
    return h if isinstance(h, Histogram) else Histogram(h)


# -- interval logs --------------------------------------------------------------------------------
class _Log:
    def __init__(self, path: Path, writer: Any, prev: np.ndarray, prev_t: float) -> None:
        self.path, self.writer, self.prev, self.prev_t = path, writer, prev, prev_t
        self.hh = None  # reused hdrh histogram (see Histogram.to_hdrh)


class IntervalLogger:
    """One HdrHistogram interval log (.hlog, format 1.2) per histogram name.

    Timestamps are seconds relative to `start_time_s` (written as StartTime and BaseTime), so standard
    readers recover absolute times. Each `snapshot` appends the delta since the previous snapshot.
    """

    def __init__(self, folder: str | Path, names: list[str], start_time_s: float) -> None:
        from hdrh.log import HistogramLogWriter

        from shm.hdr import COUNTS_LEN

        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.start_time_s = float(start_time_s)
        # integer ms shared by the writer's base time and the histograms' stamps, so hdrh's fallback
        # (it ignores a 0.0 start and recomputes from the stamps) lands on the same relative time
        self._base_ms = round(self.start_time_s * 1000)
        self._logs: dict[str, _Log] = {}
        stems: dict[str, str] = {}
        started = datetime.fromtimestamp(self.start_time_s, UTC).isoformat(" ")
        try:
            for name in names:
                stem = hlog_name(name)
                if stem in stems:
                    raise ValueError(f"histogram names {stems[stem]!r} and {name!r} map to one file {stem}.hlog")
                stems[stem] = name
                path = self.folder / f"{stem}.hlog"
                f = path.open("w", encoding="utf-8")
                w = HistogramLogWriter(f)
                w.base_time = self._base_ms
                w.output_comment(f"[tickpipe interval log of histogram {name}; values in ns, Interval_Max in us]")
                w.output_log_format_version()
                # written by hand: hdrh's output_start_time calls datetime.iso_format, which does not exist
                w.output_comment(f"[StartTime: {self.start_time_s:f} (seconds since epoch), {started}]")
                w.output_base_time(self._base_ms)
                w.output_legend()
                f.flush()
                self._logs[name] = _Log(path, w, np.zeros(COUNTS_LEN, np.int64), self.start_time_s)
        except BaseException:
            self.close()
            raise

    @property
    def paths(self) -> dict[str, Path]:
        return {name: lg.path for name, lg in self._logs.items()}

    def snapshot(self, t_s: float, counts_by_name: dict[str, Histogram | np.ndarray]) -> None:
        """Log, per name, what was recorded since its previous snapshot as one interval ending at `t_s` (epoch s).

        Accepts `shm.hdr.Histogram` objects or raw counts arrays (cumulative, as read from shared memory).
        Names not passed are skipped (their next interval covers the gap); unknown names are ignored.
        """
        for name, lg in self._logs.items():
            cur = counts_by_name.get(name)
            if cur is None:
                continue
            counts = _as_counts(cur)
            delta = counts - lg.prev
            if (delta < 0).any():
                delta = counts  # the array went backwards, so it was reset: all of it is new
            start = lg.prev_t
            end = max(float(t_s), start)  # a wall-clock step back must not write a negative length
            rel_start, rel_end = start - self.start_time_s, end - self.start_time_s
            hh = lg.hh = Histogram(delta).to_hdrh(self._base_ms + round(rel_start * 1000),
                                                  self._base_ms + round(rel_end * 1000), into=lg.hh)
            # Interval_Max column in µs: the default ratio (ms) floors every sub-ms max to 0
            lg.writer.output_interval_histogram(hh, rel_start, rel_end, max_value_unit_ratio=1000.0)
            lg.writer.log.flush()  # readable up to the last snapshot even if the launcher dies
            lg.prev, lg.prev_t = counts, end

    def close(self) -> None:
        for lg in self._logs.values():
            if not lg.writer.log.closed:
                lg.writer.close()

    def __enter__(self) -> IntervalLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- numbers and table ---------------------------------------------------------------------------
def fmt_ns(v: float | None) -> str:
    """A latency in ns as text with a unit chosen for it: '812 ns', '12.3 µs', '4.56 ms', '1.20 s'."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    for scale, unit in ((1, "ns"), (1e3, "µs"), (1e6, "ms")):
        if v < 999.5 * scale:
            return f"{v:.0f} ns" if unit == "ns" else _three_digits(v / scale, unit)
    return _three_digits(v / 1e9, "s")


def _three_digits(x: float, unit: str) -> str:
    decimals = 2 if x < 9.995 else 1 if x < 99.95 else 0
    return f"{x:.{decimals}f} {unit}"


def hist_stats(h: Histogram | np.ndarray) -> dict[str, Any]:
    """count, min, mean, p50 … p99.99, max in ns; everything but count is None for an empty histogram."""
    h = _as_hist(h)
    if h.count == 0:
        return {k: (0 if k == "count" else None) for k in STAT_KEYS}
    return h.summary()


def format_table(stats: dict[str, dict[str, Any]]) -> str:
    """The aligned percentile table from per-name stats (as in summary.json's "histograms")."""
    cols = ("count", *PCT_KEYS, "max")
    rows = [["name", *cols]]
    for name, s in stats.items():
        rows.append([name, str(s.get("count", 0)), *(fmt_ns(s.get(k)) for k in cols[1:])])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join([r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True))])
             for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def percentile_table(hists: dict[str, Histogram]) -> str:
    """Aligned text table: name, count, p50, p90, p99, p99.9, p99.99, max, each in a unit chosen per value."""
    return format_table({name: hist_stats(h) for name, h in hists.items()})


# -- plot ------------------------------------------------------------------------------------------
def percentile_curve(h: Histogram, points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """(x = 1/(1-p), value in ns) along the percentile distribution, ending at (count, max)."""
    total = h.count
    cum = np.cumsum(h.counts)
    x = np.logspace(0, math.log10(max(total, 1)), points)
    p = 1.0 - 1.0 / x
    # the same rule as Histogram.percentile, vectorised
    target = np.maximum(1, np.ceil(p * total)).astype(np.int64)
    values = highest_equivalent(np.searchsorted(cum, target))
    return np.append(x, float(max(total, 1))), np.append(values.astype(float), float(h.max))


def plot_percentiles(hists: dict[str, Histogram], path: str | Path, title: str) -> None:
    """The HdrHistogram percentile-distribution plot (x: percentile on a 1/(1-p) log scale, y: µs, log)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    fig = Figure(figsize=(10, 6), dpi=100)
    FigureCanvasAgg(fig)  # Agg without pyplot: no global state, no display needed
    ax = fig.add_subplot()
    top = 5  # decades on x: up to 99.999%, more when a histogram holds enough samples to show them
    drawn = 0
    for name, h in hists.items():
        h = _as_hist(h)
        if h.count == 0:
            continue
        x, v = percentile_curve(h)
        ax.plot(x, np.maximum(v / 1e3, 1e-3), label=f"{name} (n={h.count:,}, max {fmt_ns(h.max)})", lw=1.5)
        top = max(top, math.ceil(math.log10(h.count)))
        drawn += 1
    if not drawn:
        ax.text(0.5, 0.5, "no samples recorded", ha="center", va="center", transform=ax.transAxes)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(1, 10.0**top)
    ticks = [2.0] + [10.0**k for k in range(1, top + 1)]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda t, _: f"{100 - 100 / t:.{max(0, round(math.log10(t)) - 2)}f}%"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda t, _: f"{t:g}"))
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency (µs)")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.5)
    ax.grid(True, which="minor", axis="y", alpha=0.15)
    if drawn:
        ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    fig.savefig(str(path), format="png")


# -- report ---------------------------------------------------------------------------------------
def _json_default(obj: Any) -> Any:
    # meta carries config objects, paths, numpy dtypes: anything else is written as its text
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=str)
    return str(obj)


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, default=_json_default,
                        option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


def write_report(folder: str | Path, *, hists: dict[str, Histogram], counters: dict, meta: dict,
                 rates: dict) -> dict:
    """Write summary.json, percentiles.txt and latency.png into `folder`; return the summary dict."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hists = {name: _as_hist(h) for name, h in hists.items()}
    summary = {"meta": meta, "histograms": {name: hist_stats(h) for name, h in hists.items()},
               "counters": counters, "rates": rates}
    (folder / "summary.json").write_bytes(dumps(summary) + b"\n")
    (folder / "percentiles.txt").write_text(format_table(summary["histograms"]) + "\n", encoding="utf-8")
    run = meta.get("run", folder.name) if isinstance(meta, dict) else folder.name
    try:
        plot_percentiles({n: h for n, h in hists.items() if h.count}, folder / "latency.png",
                         f"tickpipe latency by percentile, run {run}")
    except Exception:
        log.warning("latency plot %s failed; the rest of the report is written", folder / "latency.png",
                    exc_info=True)
    try:
        write_html(folder, summary)
    except Exception:
        log.warning("report.html in %s failed; the rest of the report is written", folder, exc_info=True)
    return summary


# -- report.html ----------------------------------------------------------------------------------
#: Extra sections for report.html: functions (summary, run folder) -> an HTML fragment ("" for none),
#: appended after the built-in sections. Modules add theirs with `register_section`.
SECTIONS: list[Any] = []

_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1200px;color:#222;
padding:0 1em}h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;
text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}.meta td{text-align:left}
.ok{background:#e5f5e5}.warn{background:#fff4d6}.bad{background:#fbdcdc}.fix{font-size:.85em;color:#444}
img,object{max-width:100%;border:1px solid #ddd}.note{color:#666;font-size:.9em}code{background:#f4f4f4;padding:0 .2em}
td.left{text-align:left}"""


def register_section(fn: Any) -> Any:
    """Add `fn(summary, folder) -> str` (an HTML fragment) to every report.html written after this call."""
    if fn not in SECTIONS:
        SECTIONS.append(fn)
    return fn


def results_section(summary: dict) -> str:
    """Strategy results (P&L, fills, ...) as an HTML fragment: the hook for the paper exchange's report."""
    return ""


def _e(v: Any) -> str:
    return html.escape(str(v))


def _table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    """Rows are already-escaped HTML cells."""
    out = [f'<table class="{cls}">' if cls else "<table>",
           "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows]
    return "\n".join([*out, "</table>"])


def _percentiles_html(summary: dict) -> str:
    cols = ("count", *PCT_KEYS, "max")
    rows = [[_e(name), _e(s.get("count", 0)), *(_e(fmt_ns(s.get(k))) for k in cols[1:])]
            for name, s in (summary.get("histograms") or {}).items()]
    return "<h2>Latency percentiles</h2>" + _table(["name", *cols], rows)


def _plot_html(folder: Path) -> str:
    png = folder / "latency.png"
    if not png.is_file():
        return "<h2>Latency plot</h2><p class=note>latency.png was not written (see the run's log).</p>"
    data = base64.b64encode(png.read_bytes()).decode()  # embedded: the page stays readable when copied alone
    return ("<h2>Latency plot</h2><p class=note>x: percentile, each decade right is one more nine; y: latency "
            f'(µs, log). A line bending up at the right is a tail.</p><img alt="latency by percentile" '
            f'src="data:image/png;base64,{data}">')


def _counters_html(summary: dict) -> str:
    parts = ["<h2>Counters</h2>"]
    for stage, row in (summary.get("counters") or {}).items():
        if isinstance(row, dict) and row:
            parts.append(f"<h3>{_e(stage)}</h3>" + _table(["counter", "value"],
                                                          [[_e(k), _e(f"{v:,}" if isinstance(v, int) else v)]
                                                           for k, v in row.items()]))
    rates = summary.get("rates") or {}
    if rates:
        parts.append("<h3>rates</h3>" + _table(["rate", "value"], [[_e(k), _e(f"{v:,.1f}" if isinstance(v, float)
                                                                              else v)] for k, v in rates.items()]))
    return "\n".join(parts)


def _meta_html(summary: dict) -> str:
    meta = summary.get("meta") or {}
    keys = ("run", "exit_code", "stop_reason", "source", "symbols", "placement", "wait")
    rows = [[_e(k), _e(meta[k] if not isinstance(meta[k], list) else ", ".join(map(str, meta[k])))]
            for k in keys if k in meta]
    host = meta.get("host") or {}
    if host:
        rows.append(["host", _e(", ".join(f"{k}={v}" for k, v in host.items()))])
    stages = meta.get("stages") or {}
    rows += [[_e(f"stage {a}"), _e(", ".join(f"{k}={v}" for k, v in st.items()))] for a, st in stages.items()]
    return _table(["", ""], rows, "meta")


def _flame_html(summary: dict, folder: Path) -> str:
    prof = (summary.get("meta") or {}).get("profile")
    if not prof:
        return ("<h2>Flame graphs</h2><p class=note>Not taken for this run: <code>python run.py --profile</code> "
                "writes them.</p>")
    parts = ["<h2>Flame graphs</h2><p class=note>x: share of samples (not time order), y: stack depth, the top "
             "edge is the function on CPU. Hover a frame for its sample count; open the SVG alone to zoom.</p>"]
    pics = [(f"py-spy --native: stage {label}", rel) for label, rel in (prof.get("py_spy") or {}).items()]
    if prof.get("perf"):
        pics.append(("perf record -g -e cpu-clock: whole run (numba JIT frames in blue as numba:...)", prof["perf"]))
    for title, rel in pics:
        if (folder / rel).is_file():  # relative: py-spy's SVGs are interactive, <object> keeps their script
            parts.append(f'<h3>{_e(title)}</h3><object type="image/svg+xml" data="{_e(rel)}"></object>'
                         f'<p class=note><a href="{_e(rel)}">{_e(rel)}</a></p>')
    for note in prof.get("notes") or []:
        parts.append(f"<p class=note>{_e(note)}</p>")
    return "\n".join(parts)


def _doctor_html(summary: dict) -> str:
    doc = (summary.get("meta") or {}).get("doctor")
    if not doc:
        return ""
    rows = []
    for c in doc.get("checks") or []:
        status = c.get("status", "")
        fix = f'<div class=fix>fix: {_e(c["fix"])}</div>' if c.get("fix") else ""
        rows.append(f'<tr class="{_e(status)}"><td>{_e(status)}</td><td>{_e(c.get("name"))}</td>'
                    f'<td class="left">{_e(c.get("found"))}{fix}</td></tr>')
    return (f"<h2>Host (doctor)</h2><p><b>{_e(doc.get('verdict'))}</b> (<code>python run.py --doctor</code> "
            "prints the same checks)</p><table><tr><th>status</th><th>check</th><th>found / fix</th></tr>"
            + "\n".join(rows) + "</table>")


def render_html(summary: dict, folder: str | Path) -> str:
    """report.html's text: meta, percentile table, plot, flame graphs, counters, doctor, results, extras."""
    folder = Path(folder)
    meta = summary.get("meta") or {}
    sections = [_meta_html(summary), _percentiles_html(summary), _plot_html(folder), results_section(summary),
                _flame_html(summary, folder), _counters_html(summary), _doctor_html(summary)]
    for fn in SECTIONS:
        try:
            sections.append(fn(summary, folder))
        except Exception:
            log.warning("report section %r failed", fn, exc_info=True)
    title = f"tickpipe run {meta.get('run', folder.name)}"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{_CSS}</style></head><body>\n<h1>{_e(title)}</h1>\n" + "\n".join(s for s in sections if s)
            + "\n</body></html>\n")


def write_html(folder: str | Path, summary: dict) -> Path:
    """Write report.html (self-contained but for the flame graph SVGs, linked by relative path)."""
    path = Path(folder) / "report.html"
    path.write_text(render_html(summary, folder), encoding="utf-8")
    return path


# -- CLI -------------------------------------------------------------------------------------------
def _short(v: Any, limit: int = 160) -> str:
    text = v if isinstance(v, str) else orjson.dumps(v, default=_json_default).decode()
    return text if len(text) <= limit else f"{text[:limit - 20]}… ({len(text)} chars, see summary.json)"


def format_summary(summary: dict) -> str:
    """Meta, counters, rates and the percentile table of a summary.json, as text."""
    out = ["meta:"]
    for k, v in (summary.get("meta") or {}).items():
        if k == "stages" and isinstance(v, dict):
            out.append("  stages:")
            out += [f"    {a}: {_short(s)}" for a, s in v.items()]
        else:
            out.append(f"  {k}: {_short(v)}")
    out.append("counters:")
    for stage, row in (summary.get("counters") or {}).items():
        if isinstance(row, dict):
            out.append(f"  {stage}: " + ", ".join(f"{n}={c}" for n, c in row.items()))
        else:
            out.append(f"  {stage}: {row}")
    rates = summary.get("rates") or {}
    out.append("rates: " + ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
                                     for k, v in rates.items()))
    out += ["", format_table(summary.get("histograms") or {})]
    return "\n".join(out)


def format_hlog(path: Path) -> str:
    """Every interval of an .hlog (count, p50, p99, max) and their total, read with hdrh's HistogramLogReader."""
    from hdrh.histogram import HdrHistogram
    from hdrh.log import HistogramLogReader

    reader = HistogramLogReader(str(path), HdrHistogram(LOWEST, HIGHEST, SIG_FIGS))
    total = HdrHistogram(LOWEST, HIGHEST, SIG_FIGS)
    rows = [["#", "start_s", "length_s", "count", "p50", "p99", "max"]]

    def row(label: str, h: Any, start: str, length: str) -> list[str]:
        n = h.get_total_count()
        pv = h.get_percentile_to_value_dict([50.0, 99.0]) if n else {}
        return [label, start, length, str(n), fmt_ns(pv.get(50.0)), fmt_ns(pv.get(99.0)),
                fmt_ns(h.get_max_value() if n else None)]

    try:
        i = 0
        first = last = None
        while (h := reader.get_next_interval_histogram()) is not None:
            i += 1
            start = h.get_start_time_stamp() / 1000.0 - reader.get_start_time_sec()
            end = h.get_end_time_stamp() / 1000.0 - reader.get_start_time_sec()
            first = start if first is None else first
            last = end
            rows.append(row(str(i), h, f"{start:.3f}", f"{end - start:.3f}"))
            if h.get_total_count():
                total.add(h)
        started = reader.get_start_time_sec()
    finally:
        reader.close()
    span = f"{(last or 0.0) - (first or 0.0):.3f}"
    rows.append(row("total", total, f"{first or 0.0:.3f}", span))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    when = datetime.fromtimestamp(started, UTC).isoformat(" ", "seconds") if started else "?"
    return "\n".join([f"{path}: {i} interval(s), start {when}", *lines])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m procs.report",
        description="Print a tickpipe run's report: meta, counters and the latency percentile table from "
                    "RUN_DIR/summary.json; with --hlog NAME, the intervals of RUN_DIR/hlog/NAME.hlog read with "
                    "the hdrh package's HistogramLogReader (proof the logs are standard HdrHistogram logs).",
        epilog="Percentiles are HdrHistogram values (3 significant figures); summary.json has them in ns. "
               "Exit status 2: missing run folder or file.")
    ap.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="a run folder written by run.py")
    ap.add_argument("--hlog", metavar="NAME",
                    help="histogram name (e.g. strategy.e2e) or file stem under RUN_DIR/hlog/ to print per interval")
    ap.add_argument("--html", action="store_true", help="write RUN_DIR/report.html again from summary.json")
    args = ap.parse_args(argv)
    run_dir: Path = args.run_dir
    if not run_dir.is_dir():
        print(f"report: no such run folder: {run_dir}", file=sys.stderr)
        return 2
    if args.hlog:
        stem = hlog_name(args.hlog.removesuffix(".hlog"))
        path = run_dir / "hlog" / f"{stem}.hlog"
        if not path.is_file():
            have = sorted(p.stem for p in (run_dir / "hlog").glob("*.hlog"))
            print(f"report: no interval log {path}; available: {', '.join(have) or 'none'}", file=sys.stderr)
            return 2
        print(format_hlog(path))
        return 0
    path = run_dir / "summary.json"
    if not path.is_file():
        print(f"report: no summary.json in {run_dir} (the run did not reach its report)", file=sys.stderr)
        return 2
    try:
        summary = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as e:
        print(f"report: {path} is not valid JSON: {e}", file=sys.stderr)
        return 2
    if args.html:
        # procs.results registers the strategy results section in the importable procs.report; under
        # `python -m`, this module is __main__, a second copy whose SECTIONS nobody fills
        import procs.report
        import procs.results

        print(procs.report.write_html(run_dir, summary))
        return 0
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
