"""Feature matrices with labels, made by the real parser and book kernel (the book stage's own code), over a
capture or the built-in simulator.

Each row is the FEATURES vector the book emits after an update of a valid book (FEATURE_NAMES order),
with its symbol, exchange time E (ms) and source time (ns). Labels:

- `anomaly`: simulator only, 0 for none or 1 + index into ANOMALY_KINDS for the labelled window of
  the row's symbol that contains its E (`start_E_ms <= E <= end_E_ms`).
- `direction(horizon_ms)`: the sign of the mid's next move. With horizon 0 (the default) it is the next
  *change* of the mid on the same symbol, however far ahead; with horizon h > 0 it is the sign of
  mid(first update at or after E + h) - mid(now). **Rows whose mid does not move (or that have no
  future update) are skipped (label -1), not modelled as a class**: a "no change" class would be mostly
  a statement about the tick size and the horizon, and the strategy needs up vs down.

Sampling (`Dataset.sample(how)`, a row mask; labels are always computed on all rows first):

- `all`: every book update. Rows between two mid changes share one label (with horizon 0), so one
  quiet stretch can stand for hundreds of near-identical rows.
- `change`: the first row of each run of constant mid, i.e. the update that moved the mid (and a
  symbol's first row): one row per label event, so rows are distinct observations of the next move.
- `<N>ms` (e.g. `100ms`): the newest row at or before every N ms of exchange time, per symbol: what a
  consumer polling the board every N ms sees.

The first `warmup_s` of each symbol are dropped: returns and volatility windows are still filling.

    python -m procs.datasets --sim-seeds 1,2 --seconds 600 --out sim.npz
    python -m procs.datasets --capture ../shared/data/binance/usdm_btcusdt_20240808_120s.lines.gz --out btc.npz
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from procs.kernels.book import BookState
from procs.kernels.parse_json import ERR_NO_SPACE, Parser, SymbolTable
from shm.features import FEATURE_INDEX, FEATURE_NAMES, feature_layout_hash
from shm.records import BOOK, FEATURES, FLAG_BOOK_VALID, MARKET

#: Anomaly kinds the simulator labels; label k+1 is ANOMALY_KINDS[k].
ANOMALY_KINDS: tuple[str, ...] = ("price_spike", "volume_surge", "spread_blowout", "book_wipe")
#: Fixed start of simulated time (2024-01-01 UTC), so datasets do not depend on the wall clock.
SIM_START_MS = 1_704_067_200_000
#: Records per book-kernel call.
BATCH = 1 << 14
#: Hash of the feature layout a dataset was made with (a model trained on it records it as `feature_layout`).
FEATURE_LAYOUT = feature_layout_hash()


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Dataset:
    """Labelled feature rows (see the module doc)."""

    x: np.ndarray  # (n, N_FEATURES) float64
    symbol: np.ndarray  # (n,) int64 id into `symbols`
    e_ms: np.ndarray  # (n,) int64 exchange time
    t_ns: np.ndarray  # (n,) int64 receive (capture) or simulated (simulator) time of the message
    anomaly: np.ndarray  # (n,) int64: 0 none, 1 + index into ANOMALY_KINDS
    symbols: list[str]
    source: str
    windows: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.x)

    @property
    def mid(self) -> np.ndarray:
        return self.x[:, FEATURE_INDEX["mid"]]

    def direction(self, horizon_ms: int = 0) -> np.ndarray:
        """Per row: 1 if the mid goes up, 0 if down, -1 when it does not move or has no future (skip)."""
        return direction_labels(self.mid, self.symbol, self.e_ms, horizon_ms)

    def sample(self, how: str = "all") -> np.ndarray:
        """Row mask of a sampling (see the module doc): 'all', 'change' or '<N>ms'."""
        return sample_mask(self.mid, self.symbol, self.e_ms, how)

    def sha256(self) -> str:
        """Hash of the rows and labels: the `training data hash` a model's sidecar records."""
        h = hashlib.sha256()
        for a in (self.x, self.symbol, self.e_ms, self.anomaly):
            h.update(np.ascontiguousarray(a).tobytes())
        h.update(",".join(self.symbols).encode())
        return h.hexdigest()

    def take(self, mask: np.ndarray) -> Dataset:
        return Dataset(self.x[mask], self.symbol[mask], self.e_ms[mask], self.t_ns[mask], self.anomaly[mask],
                       self.symbols, self.source, self.windows, dict(self.meta))

    def save(self, path: str | os.PathLike[str], horizon_ms: int = 0, sample: str = "all") -> None:
        """Rows, labels and `sampled` (the row mask of `sample`; every row is kept, so labels stay exact)."""
        meta = {**self.meta, "source": self.source, "symbols": self.symbols, "features": list(FEATURE_NAMES),
                "feature_layout": FEATURE_LAYOUT, "anomaly_kinds": list(ANOMALY_KINDS), "sha256": self.sha256(),
                "direction_horizon_ms": horizon_ms, "direction_sample": sample, "windows": self.windows}
        np.savez_compressed(path, x=self.x, symbol=self.symbol, e_ms=self.e_ms, t_ns=self.t_ns,
                            anomaly=self.anomaly, up=self.direction(horizon_ms), sampled=self.sample(sample),
                            meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Dataset:
        with np.load(path) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            if meta.get("features") != list(FEATURE_NAMES):
                raise ValueError(f"{path}: field=features expected={list(FEATURE_NAMES)} found={meta.get('features')}")
            return cls(z["x"], z["symbol"], z["e_ms"], z["t_ns"], z["anomaly"], list(meta["symbols"]),
                       meta["source"], list(meta.get("windows", [])),
                       {k: v for k, v in meta.items() if k not in ("windows",)})


def direction_labels(mid: np.ndarray, symbol: np.ndarray, e_ms: np.ndarray, horizon_ms: int = 0) -> np.ndarray:
    """See `Dataset.direction`. Rows must be in time order within each symbol."""
    if horizon_ms < 0:
        raise ValueError(f"horizon_ms expected >= 0 found={horizon_ms}")
    y = np.full(len(mid), -1, np.int64)
    for s in np.unique(symbol):
        idx = np.flatnonzero(symbol == s)
        m = mid[idx]
        if horizon_ms == 0:
            # the next different mid: index of the next change, found from the end backwards
            nxt = np.full(len(m), -1, np.int64)
            j = -1
            for i in range(len(m) - 1, -1, -1):
                if i + 1 < len(m) and m[i + 1] != m[i]:
                    j = i + 1
                nxt[i] = j
            ok = nxt >= 0
            fut = np.where(ok, m[np.maximum(nxt, 0)], m)
        else:
            e = e_ms[idx]
            k = np.searchsorted(e, e + horizon_ms, side="left")
            ok = k < len(m)
            fut = np.where(ok, m[np.minimum(k, len(m) - 1)], m)
        d = fut - m
        lab = np.where(d > 0, 1, np.where(d < 0, 0, -1))
        y[idx] = np.where(ok, lab, -1)
    return y


def sample_mask(mid: np.ndarray, symbol: np.ndarray, e_ms: np.ndarray, how: str = "all") -> np.ndarray:
    """See `Dataset.sample`. Rows must be in time order within each symbol; a row's membership depends on
    its own and earlier rows only (no look-ahead)."""
    if how == "all":
        return np.ones(len(mid), bool)
    step = 0
    if how != "change":
        try:
            step = int(how[:-2]) if how.endswith("ms") else 0
        except ValueError:
            step = 0
        if step <= 0:
            raise ValueError(f"sample expected 'all', 'change' or '<N>ms' with N > 0 found={how!r}")
    keep = np.zeros(len(mid), bool)
    for s in np.unique(symbol):
        idx = np.flatnonzero(symbol == s)
        if how == "change":
            keep[idx] = np.r_[True, mid[idx][1:] != mid[idx][:-1]]
            continue
        e = e_ms[idx]
        grid = np.arange(int(e[0]), int(e[-1]) + 1, step)
        # newest row at or before each grid point; a row can be the newest for several points
        keep[idx[np.unique(np.searchsorted(e, grid, side="right") - 1)]] = True
    return keep


def from_messages(messages: Iterable[tuple[int, bytes]], symbols: SymbolTable, *, bare_symbol: str | None = None,
                  source: str = "messages", warmup_s: float = 10.0, progress: bool = False) -> Dataset:
    """Parse `(ts_ns, raw)` messages, run the book kernel, keep the FEATURES rows of valid books."""
    parser = Parser(symbols, bare_symbol=bare_symbol)
    st = BookState(symbols.max_symbols if symbols.auto_add else max(1, len(symbols)))
    st.warm_up()
    recs = np.zeros(BATCH, MARKET.dtype)
    ob = np.zeros(BATCH, BOOK.dtype)
    of = np.zeros(BATCH, FEATURES.dtype)
    xs: list[np.ndarray] = []
    ss: list[np.ndarray] = []
    es: list[np.ndarray] = []
    ts_: list[np.ndarray] = []

    def flush(n: int) -> None:
        k = st.process(recs, n, ob, of)
        valid = (of["flags"][:k] & FLAG_BOOK_VALID) != 0  # an unsynced book has all-zero book features
        xs.append(of["values"][:k][valid].copy())
        ss.append(of["symbol"][:k][valid].astype(np.int64))
        es.append(ob["exch_ts_ms"][:k][valid].copy())
        ts_.append(of["t_origin_ns"][:k][valid].copy())

    n = 0
    wall = time.perf_counter()
    next_report = wall + 5.0
    for i, (ts, raw) in enumerate(messages):
        k = parser.parse(raw, ts, recs, n)
        if k == ERR_NO_SPACE:
            flush(n)
            n = 0
            k = parser.parse(raw, ts, recs, 0)
            if k == ERR_NO_SPACE:
                raise ValueError(f"{source}: one message has more than {BATCH} records")
        n += max(k, 0)
        if progress and time.perf_counter() >= next_report:
            next_report += 5.0
            _log(f"  {source}: {i + 1} messages, {time.perf_counter() - wall:.0f} s")
    if n:
        flush(n)
    width = len(FEATURE_NAMES)
    x = np.concatenate(xs) if xs else np.zeros((0, width))
    sym = np.concatenate(ss) if ss else np.zeros(0, np.int64)
    e = np.concatenate(es) if es else np.zeros(0, np.int64)
    t = np.concatenate(ts_) if ts_ else np.zeros(0, np.int64)
    keep = np.ones(len(x), bool)
    for s in np.unique(sym):
        m = sym == s
        keep &= ~m | (e >= e[m].min() + warmup_s * 1000)
    counts = parser.counts()
    meta = {"messages": counts["messages"], "parse_errors": counts["bad_json"] + counts["bad_field"] +
            counts["bad_number"], "warmup_s": warmup_s, "rows_dropped_warmup": int(len(x) - keep.sum())}
    return Dataset(x[keep], sym[keep], e[keep], t[keep], np.zeros(int(keep.sum()), np.int64), list(symbols.names),
                   source, [], meta)


def from_capture(path: str | os.PathLike[str], *, warmup_s: float = 5.0, progress: bool = False) -> Dataset:
    """Rows of a `<ts_ns> <json>` capture (gzip or plain). No anomaly labels (all 0)."""
    from procs.sources.replay import CaptureReader, scan_symbols

    names = scan_symbols(path)
    if not names:
        raise ValueError(f"{path}: no symbol found in its first lines (is it a <ts_ns> <json> capture?)")
    table = SymbolTable(names, auto_add=False)  # symbols first seen later are counted, not added
    ds = from_messages(iter(CaptureReader(path)), table, bare_symbol=names[0] if len(names) == 1 else None,
                       source=Path(path).name, warmup_s=warmup_s, progress=progress)
    ds.meta["file_sha256"] = _file_sha256(path)
    return ds


def from_simulator(seed: int, seconds: float, symbols: list[str], *, anomalies_per_min: float = 2.0,
                   depth_interval_ms: int = 100, warmup_s: float = 10.0, progress: bool = False) -> Dataset:
    """Rows of `seconds` of the built-in market, labelled with its anomaly windows."""
    from procs.sources.simulator import SimParams, Simulator

    params = SimParams(symbols=list(symbols), seed=seed, anomalies_per_min=anomalies_per_min,
                       depth_interval_ms=depth_interval_ms, rate_scale=1.0, start_ms=SIM_START_MS)
    sim = Simulator(params)
    end_ns = int(seconds * 1e9)

    def window() -> Iterator[tuple[int, bytes]]:
        t0 = None
        for ts, raw in sim.messages():
            if t0 is None:
                t0 = ts
            if ts - t0 >= end_ns:
                return
            yield ts, raw

    table = SymbolTable(list(symbols))
    ds = from_messages(window(), table, source=f"simulator seed={seed} seconds={seconds:g}", warmup_s=warmup_s,
                       progress=progress)
    ds.windows = [dict(w) for w in sim.labels]
    overlaps = 0
    for w in ds.windows:
        sid = table.lookup(w["symbol"])
        inside = (ds.symbol == sid) & (ds.e_ms >= w["start_E_ms"]) & (ds.e_ms <= w["end_E_ms"])
        overlaps += int(np.count_nonzero(inside & (ds.anomaly != 0)))
        ds.anomaly[inside] = ANOMALY_KINDS.index(w["kind"]) + 1
    ds.meta.update({"seed": seed, "seconds": seconds, "anomalies_per_min": anomalies_per_min,
                    "depth_interval_ms": depth_interval_ms, "overlapping_rows": overlaps})
    return ds


def concat(parts: list[Dataset]) -> Dataset:
    """Rows of several datasets with the same symbol table (time order kept within each part)."""
    if not parts:
        raise ValueError("concat: no datasets")
    syms = parts[0].symbols
    for p in parts[1:]:
        if p.symbols != syms:
            raise ValueError(f"concat: field=symbols expected={syms} found={p.symbols} ({p.source})")
    return Dataset(np.concatenate([p.x for p in parts]), np.concatenate([p.symbol for p in parts]),
                   np.concatenate([p.e_ms for p in parts]), np.concatenate([p.t_ns for p in parts]),
                   np.concatenate([p.anomaly for p in parts]), syms, " + ".join(p.source for p in parts),
                   [w for p in parts for w in p.windows], {"parts": [p.meta for p in parts]})


def _file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m procs.datasets", description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--capture", nargs="+", metavar="FILE", help="captures (<ts_ns> <json> lines)")
    src.add_argument("--sim-seeds", metavar="A,B", help="simulator seeds, one run each")
    ap.add_argument("--seconds", type=float, default=600.0, help="simulator: simulated seconds per seed")
    ap.add_argument("--symbols", default="BTCUSDT,ETHUSDT,SOLUSDT,BNBUSDT", help="simulator: symbols")
    ap.add_argument("--anomalies-per-min", type=float, default=2.0, help="simulator: labelled anomalies per minute")
    ap.add_argument("--horizon-ms", type=int, default=0,
                    help="direction label horizon; 0 (default): the next change of the mid")
    ap.add_argument("--sample", default="all",
                    help="rows marked `sampled` in the output: all, change (one per mid change) or <N>ms")
    ap.add_argument("--warmup-s", type=float, default=None, help="seconds dropped per symbol (sim 10, capture 5)")
    ap.add_argument("--out", required=True, help="output .npz")
    a = ap.parse_args(argv)
    if a.capture:
        parts = [from_capture(p, warmup_s=5.0 if a.warmup_s is None else a.warmup_s, progress=True)
                 for p in a.capture]
    else:
        try:
            seeds = [int(s) for s in a.sim_seeds.split(",") if s]
        except ValueError:
            ap.error(f"--sim-seeds expected comma-separated integers found={a.sim_seeds!r}")
        parts = [from_simulator(s, a.seconds, a.symbols.split(","), anomalies_per_min=a.anomalies_per_min,
                                warmup_s=10.0 if a.warmup_s is None else a.warmup_s, progress=True) for s in seeds]
    ds = parts[0] if len(parts) == 1 else concat(parts)
    try:
        sampled = ds.sample(a.sample)
    except ValueError as exc:
        ap.error(str(exc))
    ds.save(a.out, a.horizon_ms, a.sample)
    up = np.where(sampled, ds.direction(a.horizon_ms), -2)  # -2: not sampled
    _log(f"datasets: {len(ds)} rows, symbols {ds.symbols}, anomaly rows {int((ds.anomaly > 0).sum())}, "
         f"direction labels ({a.sample}) up {int((up == 1).sum())} down {int((up == 0).sum())} "
         f"skipped {int((up == -1).sum())} "
         f"→ {a.out} (sha256 {ds.sha256()[:16]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
