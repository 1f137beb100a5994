"""Observability read from the run's shared memory by the launcher: the Prometheus exporter and the live status line.

Nothing here runs inside a stage. The exporter is a prometheus-client custom collector: at scrape time
(in the HTTP server's request thread, niced) it copies the per-agent counters and HdrHistogram counts
out of the run-state segment, the ring cursors and /proc, and yields metric families. The histograms
are converted at scrape time into cumulative `le` buckets (seconds), never `observe()`d per sample.

Series (every name has the `tickpipe_` prefix; counters end in `_total`):

- `stage_counter_total{stage,name}`: every counter of every agent's COUNTERS tuple, so a counter added
  to an agent appears without a change here; plus named series for the well-known ones:
  `messages_received_total`, `messages_parsed_total`, `messages_malformed_total{reason}`,
  `records_published_total`, `book_updates_total`, `book_gaps_total`, `book_resyncs_total`,
  `book_levels_applied_total`, `book_depth_levels{symbol,side}` (levels in the newest BOOK record,
  at most BOOK_DEPTH), `scores_total`, `anomaly_alerts_total`, `orders_submitted_total`,
  `orders_rejected_total{reason}` (strategy counters named `rejects_*` / `rejected_*` / `risk_*`, and
  `orders_dropped` as reason `ring_full`), `orders_filled_total` (a `fills`/`filled` counter),
  `orders_sink_received_total{action}`, `pnl_<name>` gauges (strategy counters named `pnl_*`, int64).
- `ring_capacity_records`, `ring_occupancy_records`, `ring_occupancy_ratio`, `ring_published_records_total`
  per ring; `ring_consumer_lag_records{ring,consumer}`; `board_updates_total{board}`.
- `hop_latency_seconds{stage}` and `e2e_latency_seconds{stage}` histograms (hop: the stage's own hop,
  for the feed its lateness; e2e: since `t_origin_ns`); `stage_latency_seconds{stage,name}` for the
  histogram an agent names itself (`AUX_HIST`).
- `process_cpu_seconds_total{process,pid}`, `process_resident_memory_bytes{process,pid}` for every stage
  process and the launcher; `stage_heartbeat_age_seconds{stage}`, `stage_state{stage}`,
  `process_loops_total{process}`, `process_parks_total{process}`; `run_info{run,source,placement}`,
  `run_uptime_seconds`.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import start_http_server
from prometheus_client.utils import floatToGoString

from shm import hdr, metrics
from shm.hdr import Histogram

PREFIX = "tickpipe_"
#: Histogram bucket bounds in seconds: 1, 1.5, 2, 3, 5, 7 per decade from 100 ns to 10 s, fine enough
#: for histogram_quantile at the µs scale and few enough (49 series per histogram) to scrape cheaply.
BUCKETS_S: tuple[float, ...] = (*(float(f"{m}e{e}") for e in range(-7, 1) for m in (1, 1.5, 2, 3, 5, 7)), 10.0)
#: Strategy counters read as rejection reasons: `rejects_<reason>` (the strategy's risk checks), `rejected_`, `risk_`.
_REJECT_PREFIXES = ("rejects_", "rejected_", "risk_")
_FILL_NAMES = ("fills", "filled", "orders_filled")
_MALFORMED = ("bad_json", "bad_field", "bad_number")
_PARSED = ("depth", "snapshot", "trade", "ticker")
#: How many of the newest BOOK records book_depth_levels looks through to find each symbol's latest.
_DEPTH_SCAN = 1024


# -- histogram conversion ------------------------------------------------------------------------------
class _Buckets:
    """Precomputed HDR index cut-offs for BUCKETS_S (computed once: 27,648 bucket tops)."""

    def __init__(self, bounds_s: Iterable[float]) -> None:
        idx = np.arange(hdr.COUNTS_LEN, dtype=np.int64)
        tops = np.asarray(hdr.highest_equivalent(idx), dtype=np.int64)
        if np.any(np.diff(tops) < 0):  # searchsorted needs the HDR layout to be ordered by value
            raise RuntimeError("HdrHistogram bucket tops are not ordered")
        self.bounds = tuple(bounds_s)
        # an HDR bucket counts under `le` only when its whole range is <= le (over by < 0.1% otherwise)
        self.cuts = np.searchsorted(tops, np.array([round(b * 1e9) for b in self.bounds]), side="right")
        self.mids_s = (np.asarray(hdr.value_from_index(idx), dtype=np.float64) + tops) / 2e9
        self.labels = [floatToGoString(b) for b in self.bounds] + ["+Inf"]


_BUCKETS: _Buckets | None = None


def prom_buckets(counts: np.ndarray) -> tuple[list[tuple[str, float]], float]:
    """Cumulative (le, count) pairs ending with +Inf, and the sum in seconds, from an HdrHistogram counts array."""
    global _BUCKETS
    if _BUCKETS is None:
        _BUCKETS = _Buckets(BUCKETS_S)
    b = _BUCKETS
    c = np.asarray(counts, dtype=np.int64)
    cum = np.concatenate(([0], np.cumsum(c)))
    values = [*cum[b.cuts].tolist(), int(cum[-1])]
    # an element-wise product, not a dot: a 27,648-long dot wakes OpenBLAS's spinning workers (tens of ms of CPU
    # per scrape on a loaded 2-core host) and int64 @ float64 takes numpy's slow mixed-type loop
    return list(zip(b.labels, (float(v) for v in values), strict=True)), float((c * b.mids_s).sum())


# -- what the collector reads -----------------------------------------------------------------------
@dataclass
class PipelineView:
    """Everything the collector and the status line read, so they can be tested without a run.

    `stats` is the AgentStats array (shared memory), `hist(agent_id, which)` a counts array; `rings`
    maps a name to an object with `capacity`, `n_consumers`, `producer_position`, `lag(i)` and, for
    the book ring, `slots`; `boards` maps a name to one with `version`; `sink` has `count` and
    `by_action` (new, cancel, replace)."""

    agents: list[str]
    counter_names: dict[str, tuple[str, ...]]
    stats: np.ndarray
    hist: Callable[[int, int], np.ndarray]
    aux_hists: dict[str, str] = field(default_factory=dict)  #: agent -> name of its HIST_AUX histogram
    rings: dict[str, Any] = field(default_factory=dict)
    boards: dict[str, Any] = field(default_factory=dict)
    processes: dict[str, str] = field(default_factory=dict)  #: agent -> its process label ("feed+book")
    symbols: list[str] = field(default_factory=list)
    sink: Any = None
    info: dict[str, str] = field(default_factory=dict)
    now_ns: Callable[[], int] | None = None
    t_start_ns: int = 0

    def counters(self) -> dict[str, dict[str, int]]:
        """Every agent's counters by name (one copy of the shared array)."""
        rows = np.array(self.stats["counters"], copy=True)
        return {a: {n: int(rows[i][j]) for j, n in enumerate(self.counter_names.get(a, ())[:metrics.MAX_COUNTERS])}
                for i, a in enumerate(self.agents)}

    def ring_fill(self) -> dict[str, float]:
        """Occupancy / capacity per ring (the slowest consumer's backlog)."""
        out = {}
        for name, r in self.rings.items():
            with contextlib.suppress(Exception):
                out[name] = max(r.lag(i) for i in range(r.n_consumers)) / r.capacity
        return out


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


class PipelineCollector:
    """prometheus-client custom collector over a PipelineView; reads only at scrape time."""

    def __init__(self, view: PipelineView) -> None:
        self.view = view
        self._lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        """After this, collect() yields nothing: the launcher unmaps the segments next."""
        with self._lock:
            self._closed = True

    def collect(self) -> Iterator[Metric]:
        _nice_this_thread()
        with self._lock:  # held while reading shared memory, so close() waits for a scrape in flight
            if self._closed:
                return
            fams = list(self._families())
        yield from fams

    def describe(self) -> Iterator[Metric]:
        return iter(())  # no describe-at-register: the segments may not be readable yet

    # -- families ------------------------------------------------------------------------------------
    def _families(self) -> Iterator[Metric]:
        v = self.view
        ctr = v.counters()
        yield from self._counters(ctr)
        yield from self._rings()
        yield from self._hists()
        yield from self._stages()
        yield from self._processes()

    def _counters(self, ctr: dict[str, dict[str, int]]) -> Iterator[Metric]:
        v = self.view
        gen = CounterMetricFamily(PREFIX + "stage_counter", "Every agent counter, by stage and counter name "
                                  "(the agent's COUNTERS tuple)", labels=["stage", "name"])
        for a, row in ctr.items():
            for n, val in row.items():
                if not n.startswith("pnl_"):
                    gen.add_metric([a, n], val)
        yield gen
        feed, book = ctr.get("feed", {}), ctr.get("book", {})
        strat, inf = ctr.get("strategy", {}), ctr.get("inference", {})

        def one(name: str, doc: str, value: float | None) -> Iterator[Metric]:
            if value is not None:
                yield CounterMetricFamily(PREFIX + name, doc, value=value)

        if feed:
            yield from one("messages_received", "Raw messages the feed took from its source", feed.get("messages"))
            yield from one("messages_parsed", "Messages parsed into records (depth, snapshot, trade, ticker)",
                           sum(feed.get(k, 0) for k in _PARSED))
            mal = CounterMetricFamily(PREFIX + "messages_malformed", "Messages refused as malformed, by reason",
                                      labels=["reason"])
            for k in _MALFORMED:
                mal.add_metric([k.removeprefix("bad_")], feed.get(k, 0))
            yield mal
            yield from one("records_published", "MARKET records the feed published", feed.get("records_out"))
        if book:
            yield from one("book_updates", "BOOK records the book stage published", book.get("books_out"))
            yield from one("book_gaps", "Update-id gaps detected by the book", book.get("gaps"))
            yield from one("book_resyncs", "Resyncs the book needed (a fresh snapshot)", book.get("resyncs_needed"))
            yield from one("book_levels_applied", "Price-level changes applied to the books",
                           book.get("levels_applied"))
            yield from self._depth()
        if inf:
            yield from one("scores", "Symbols scored by the inference stage", inf.get("scored"))
            yield from one("anomaly_alerts", "Anomaly alerts raised by the inference stage", inf.get("alerts"))
        if strat:
            yield from one("orders_submitted", "Orders the strategy published", strat.get("orders_out"))
            rej = CounterMetricFamily(PREFIX + "orders_rejected", "Orders refused before submission, by reason",
                                      labels=["reason"])
            rej.add_metric(["ring_full"], strat.get("orders_dropped", 0))
            for n, val in strat.items():
                for p in _REJECT_PREFIXES:
                    if n.startswith(p) and n != p:
                        rej.add_metric([n.removeprefix(p)], val)
            yield rej
            fill = next((n for n in _FILL_NAMES if n in strat), None)
            if fill is not None:
                yield from one("orders_filled", f"Fills reported to the strategy (counter {fill})", strat[fill])
            for n, val in strat.items():
                if n.startswith("pnl_") and n.endswith("_e6"):  # millionths of the quote currency
                    name = n.removeprefix("pnl_").removesuffix("_e6")
                    yield GaugeMetricFamily(PREFIX + "strategy_" + name, f"Strategy {name} over every sleeve and "
                                            "symbol, quote currency", value=_signed(val) / 1e6)
                elif n.startswith("pnl_") and len(n) > 4:
                    yield GaugeMetricFamily(PREFIX + n, f"Strategy counter {n} (int64, the strategy's units)",
                                            value=_signed(val))
        if v.sink is not None:
            sink = CounterMetricFamily(PREFIX + "orders_sink_received", "Orders the launcher's orders sink read, "
                                       "by action", labels=["action"])
            by = np.array(v.sink.by_action, copy=True)
            for i, act in enumerate(("new", "cancel", "replace")):
                sink.add_metric([act], int(by[i]))
            yield sink

    def _depth(self) -> Iterator[Metric]:
        ring = self.view.rings.get("book")
        if ring is None or not self.view.symbols:
            return
        slots = ring.slots
        names = slots.dtype.names or ()
        if "bid_pxs" not in names or "ask_pxs" not in names:
            return
        pos = int(ring.producer_position)
        n = min(pos, ring.capacity, _DEPTH_SCAN)
        if n <= 0:
            return
        mask = ring.capacity - 1
        idx = np.arange(pos - n, pos, dtype=np.int64) & mask
        # only the symbol column of the scan (a 1,024-record copy of whole BOOK records costs ~0.4 MB and a
        # Python loop); a slot being rewritten gives at worst one torn gauge value
        syms = slots["symbol"][idx][::-1]
        uniq, first = np.unique(syms, return_index=True)
        g = GaugeMetricFamily(PREFIX + "book_depth_levels", "Price levels per side in the newest BOOK record of "
                              "each symbol (capped at the record's depth)", labels=["symbol", "side"])
        for s, j in zip(uniq.tolist(), first.tolist(), strict=True):
            if not 0 <= s < len(self.view.symbols):
                continue
            r = slots[idx[n - 1 - j]]
            g.add_metric([self.view.symbols[s], "bid"], int(np.count_nonzero(r["bid_pxs"])))
            g.add_metric([self.view.symbols[s], "ask"], int(np.count_nonzero(r["ask_pxs"])))
        yield g

    def _rings(self) -> Iterator[Metric]:
        v = self.view
        cap = GaugeMetricFamily(PREFIX + "ring_capacity_records", "Slots in the ring", labels=["ring"])
        occ = GaugeMetricFamily(PREFIX + "ring_occupancy_records", "Records published and not yet released by "
                                "the slowest consumer", labels=["ring"])
        ratio = GaugeMetricFamily(PREFIX + "ring_occupancy_ratio", "Occupancy / capacity", labels=["ring"])
        pub = CounterMetricFamily(PREFIX + "ring_published_records", "Records published into the ring",
                                  labels=["ring"])
        lag = GaugeMetricFamily(PREFIX + "ring_consumer_lag_records", "Records published and not yet released, "
                                "per consumer", labels=["ring", "consumer"])
        for name, r in v.rings.items():
            lags = [int(r.lag(i)) for i in range(r.n_consumers)]
            top = max(lags) if lags else 0
            cap.add_metric([name], r.capacity)
            occ.add_metric([name], top)
            ratio.add_metric([name], top / r.capacity)
            pub.add_metric([name], int(r.producer_position))
            for i, x in enumerate(lags):
                lag.add_metric([name, str(i)], x)
        board = CounterMetricFamily(PREFIX + "board_updates", "Records written to a conflated board (lossy by "
                                    "design: readers take the newest)", labels=["board"])
        for name, b in v.boards.items():
            board.add_metric([name], int(b.version))
        yield from (cap, occ, ratio, pub, lag, board)

    def _hists(self) -> Iterator[Metric]:
        v = self.view
        hop = HistogramMetricFamily(PREFIX + "hop_latency_seconds", "Per-stage hop latency (the feed: its "
                                    "lateness, now - scheduled emission)", labels=["stage"], unit="seconds")
        e2e = HistogramMetricFamily(PREFIX + "e2e_latency_seconds", "Latency since the message's t_origin_ns, "
                                    "per stage (strategy: tick to decision)", labels=["stage"], unit="seconds")
        for i, a in enumerate(v.agents):
            for fam, which in ((hop, metrics.HIST_HOP), (e2e, metrics.HIST_E2E)):
                buckets, total = prom_buckets(np.array(v.hist(i, which), copy=True))
                if a == "feed" and which == metrics.HIST_E2E and buckets[-1][1] == 0:
                    continue  # the feed records no e2e: an empty series would only confuse quantile panels
                fam.add_metric([a], buckets, total)
        yield hop
        yield e2e
        which_aux = getattr(metrics, "HIST_AUX", None)
        if which_aux is not None and v.aux_hists:
            aux = HistogramMetricFamily(PREFIX + "stage_latency_seconds", "A latency the stage names itself "
                                        "(Agent.AUX_HIST, e.g. the strategy's decision time)", labels=["stage", "name"],
                                        unit="seconds")
            for i, a in enumerate(v.agents):
                if a in v.aux_hists:
                    buckets, total = prom_buckets(np.array(v.hist(i, which_aux), copy=True))
                    aux.add_metric([a, v.aux_hists[a]], buckets, total)
            yield aux

    def _stages(self) -> Iterator[Metric]:
        v = self.view
        st = np.array(v.stats, copy=True)
        now = v.now_ns() if v.now_ns is not None else 0
        age = GaugeMetricFamily(PREFIX + "stage_heartbeat_age_seconds", "Time since the stage's host loop last "
                                "wrote its heartbeat", labels=["stage"])
        state = GaugeMetricFamily(PREFIX + "stage_state", "0 starting, 1 ready, 2 running, 3 stopped, 4 failed",
                                  labels=["stage"])
        loops = CounterMetricFamily(PREFIX + "process_loops", "Passes of the stage process's host loop",
                                    labels=["process"])
        parks = CounterMetricFamily(PREFIX + "process_parks", "Times the stage process's idle strategy parked",
                                    labels=["process"])
        per_proc: dict[str, tuple[int, int]] = {}
        for i, a in enumerate(v.agents):
            hb = int(st[i]["heartbeat_ns"])
            if hb > 0 and now:
                age.add_metric([a], max(0, now - hb) / 1e9)
            state.add_metric([a], int(st[i]["state"]))
            # the host writes loops and parks into its first agent's record only
            was = per_proc.get(v.processes.get(a, a), (0, 0))
            per_proc[v.processes.get(a, a)] = (max(was[0], int(st[i]["loops"])), max(was[1], int(st[i]["parks"])))
        for proc, (lp, pk) in per_proc.items():
            loops.add_metric([proc], lp)
            parks.add_metric([proc], pk)
        yield from (age, state, loops, parks)
        if v.info:
            keys = sorted(v.info)
            info = GaugeMetricFamily(PREFIX + "run_info", "The run: id, source, placement (value 1)", labels=keys)
            info.add_metric([v.info[k] for k in keys], 1)
            yield info
        if now and v.t_start_ns:
            yield GaugeMetricFamily(PREFIX + "run_uptime_seconds", "Seconds since the launcher started exporting",
                                    value=(now - v.t_start_ns) / 1e9)

    def _processes(self) -> Iterator[Metric]:
        v = self.view
        st = np.array(v.stats, copy=True)
        procs: dict[int, str] = {os.getpid(): "launcher"}
        for i, a in enumerate(v.agents):
            pid = int(st[i]["pid"])
            if pid:
                procs.setdefault(pid, v.processes.get(a, a))
        cpu = CounterMetricFamily(PREFIX + "process_cpu_seconds", "User + system CPU time of the process",
                                  labels=["process", "pid"])
        rss = GaugeMetricFamily(PREFIX + "process_resident_memory_bytes", "Resident memory of the process",
                                labels=["process", "pid"])
        for pid, label in procs.items():
            got = proc_stat(pid)
            if got is not None:
                cpu.add_metric([label, str(pid)], got[0])
                rss.add_metric([label, str(pid)], got[1])
        yield cpu
        yield rss


_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def proc_stat(pid: int) -> tuple[float, int] | None:
    """(CPU seconds, resident bytes) of a process from /proc, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open(f"/proc/{pid}/statm", "rb") as f:
            statm = f.read().split()
    except OSError:
        return None
    rest = stat[stat.rindex(b")") + 2:].split()  # the command name may hold spaces and parentheses
    utime, stime = int(rest[11]), int(rest[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / _TICK, int(statm[1]) * _PAGE


def _nice_this_thread() -> None:
    # scrapes are background work: never compete with a stage for a core (Linux: per-thread nice)
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        if os.getpriority(os.PRIO_PROCESS, tid) < 10:
            os.setpriority(os.PRIO_PROCESS, tid, 10)


class Exporter:
    """The HTTP endpoint (prometheus-client's server, one thread per scrape) serving a PipelineCollector."""

    def __init__(self, view: PipelineView, host: str, port: int) -> None:
        self.collector = PipelineCollector(view)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)  # type: ignore[arg-type]
        self.server, self.thread = start_http_server(port, addr=host, registry=self.registry)
        self.host, self.port = host, int(self.server.server_port)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def stop(self) -> None:
        """Refuse further reads (waits for a scrape in flight), then close the listening socket."""
        self.collector.close()
        with contextlib.suppress(Exception):
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(2)


# -- live status line --------------------------------------------------------------------------------
def _lat(ns: float) -> str:
    from procs.report import fmt_ns

    return fmt_ns(ns) if ns > 0 else "-"


@dataclass
class StatusSample:
    """One snapshot the status line is computed from."""

    t: float  #: monotonic seconds
    counters: dict[str, dict[str, int]]
    e2e: np.ndarray  #: the strategy's tick-to-decision counts (cumulative)
    fill: dict[str, float]


class LiveStatus:
    """The once-per-second line: rates and tick-to-decision p50/p99 over the last interval.

    `mode`: "auto" (a line rewritten in place with \\r when `out` is a TTY, nothing otherwise), "line"
    (a plain line per interval, TTY or not) or "off". A write error turns it off instead of failing the run."""

    def __init__(self, out: TextIO, mode: str = "auto") -> None:
        self.out = out
        tty = False
        with contextlib.suppress(Exception):
            tty = bool(out.isatty())
        self.inplace = mode == "auto" and tty
        self.enabled = mode == "line" or self.inplace
        self.prev: StatusSample | None = None
        self._open = False  # a \r line is on screen without its newline

    def format(self, cur: StatusSample, elapsed: float) -> str:
        """The line for the interval since the previous sample (the first call covers the run so far)."""
        prev = self.prev
        dt = max(cur.t - prev.t, 1e-9) if prev else max(elapsed, 1e-9)

        def rate(stage: str, name: str) -> float:
            now = cur.counters.get(stage, {}).get(name, 0)
            was = prev.counters.get(stage, {}).get(name, 0) if prev else 0
            return max(now - was, 0) / dt

        delta = cur.e2e - prev.e2e if prev is not None else cur.e2e
        if (delta < 0).any():
            delta = cur.e2e  # the array was reset: all of it is new
        h = Histogram(delta)
        n = h.count
        c = cur.counters
        fill = " ".join(f"{k} {v * 100:.0f}%" for k, v in cur.fill.items())
        gaps = c.get("book", {}).get("gaps", 0)
        orders = c.get("strategy", {}).get("orders_out", 0)
        p50, p99 = (h.percentile(50), h.percentile(99)) if n else (0, 0)
        return (f"[{elapsed:6.1f}s] feed {rate('feed', 'messages_out'):7.0f} msg/s  "
                f"book {rate('book', 'books_out'):7.0f} upd/s  strategy {rate('strategy', 'books_in'):7.0f} upd/s  "
                f"inference {rate('inference', 'scored'):5.0f} sc/s | t→d p50 {_lat(p50)} p99 {_lat(p99)} (n={n}) | "
                f"fill {fill or '-'} | gaps {gaps} | orders {orders} ({rate('strategy', 'orders_out'):.0f}/s)")

    def update(self, cur: StatusSample, elapsed: float) -> str | None:
        """Format the interval ending at `cur`, write it when enabled, remember `cur`; returns the line."""
        line = self.format(cur, elapsed)
        self.prev = cur
        if not self.enabled:
            return line
        try:
            if self.inplace:
                self.out.write("\r" + line + "\x1b[K")
                self._open = True
            else:
                self.out.write(line + "\n")
            self.out.flush()
        except (OSError, ValueError):
            self.enabled = False  # a closed or broken stdout: stop printing, keep running
        return line

    def end(self) -> None:
        """Finish an in-place line so the next message starts on its own line."""
        if self._open:
            self._open = False
            with contextlib.suppress(OSError, ValueError):
                self.out.write("\n")
                self.out.flush()


def view_of(state: metrics.RunState, agents: list[str], groups: Iterable[Any], symbols: list[str],
            rings: list[Any], sink: Any, info: dict[str, str], now_ns: Callable[[], int]) -> PipelineView:
    """The launcher's run as a PipelineView: agents' COUNTERS and AUX_HIST, rings and boards by name,
    agents' process labels."""
    from procs.launcher import agent_class
    from shm.ring import Board

    classes = {a: agent_class(a) for a in agents}
    return PipelineView(
        agents=list(agents), counter_names={a: tuple(c.COUNTERS) for a, c in classes.items()},
        aux_hists={a: n for a, c in classes.items() if (n := getattr(c, "AUX_HIST", ""))},
        stats=state.stats.slots, hist=state.hist,
        rings={r.name: r for r in rings if not isinstance(r, Board)},
        boards={r.name: r for r in rings if isinstance(r, Board)},
        processes={a: "+".join(g.agents) for g in groups for a in g.agents}, symbols=list(symbols),
        sink=sink, info=info, now_ns=now_ns, t_start_ns=now_ns())
