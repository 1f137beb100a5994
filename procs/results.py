"""A strategy run's results (issue 6): P&L, fills, slippage, latency, rejects and the execution A/B.

Reads the run folder's `fills.csv`, `orders.csv`, `equity.csv`, `parents.csv` and `summary.json` (formats in
the issue 6 spec, "Run-folder files"; the strategy's name, sleeves and reject counters come from
summary.json["strategy"], or from the stage's own strategy.json when summary.json has none) and writes
`results.json`, `results.txt`, `equity.png` and, for execution (TWAP/VWAP) runs, `slippage.png`. Missing files
give a partial result with a note, malformed rows are counted and skipped, and a run without fills says "no fills".

How to read it (all money in the quote currency, all times on the exchange clock):

- P&L: realised is by average cost with fees included (a fee lowers it, a rebate raises it); unrealised is
  position × (mid − average price) at the last equity.csv row; equity = realised + unrealised = cash +
  position × mid. Every run starts flat with equity 0. "realised check" recomputes realised from fills.csv
  and flags a relative difference above 1e-6 (a bug in the strategy stage or a truncated equity.csv); differences
  within the fixed-point rounding (2e-8 per fill) are not flagged, so a flat run does not trip on 1e-15.
- Max drawdown: the largest fall of equity from its running peak (peak starting at 0), on the 1 s equity.csv
  samples, so a dip and recovery inside one second is not seen.
- Fill rate: orders with at least one fill / new orders acknowledged by the exchange (an order filled at once
  counts as acknowledged), and filled qty / qty of the new orders sent.
- Slippage (bps): against the mid at decision time, positive = cost: buy (px − mid)/mid, sell (mid − px)/mid.
  The mean is weighted by fill qty; median and p90 are over fills. A maker fill usually has negative slippage
  (it earns part of the spread); a taker fill pays at least half the spread.
- Percentiles are nearest-rank (pNN = the smallest sample with NN% of samples at or below it), the same rule
  as the latency report's HdrHistogram percentiles.
- Order-to-fill latency (exchange ms): first fill time − decision time of the order, per order that filled;
  it includes the paper exchange's configured latency and the queue wait.
- Decision latency: summary.json's `strategy.decision` histogram (ns, book record in → order record out).
- Rejects: fills.csv reports with status `rejected`, by reason, per sleeve; the strategy's own counters
  (summary.json) are shown beside them, not added (risk rejects appear in both).
- Execution: shortfall vs arrival (bps, + = cost) = side × (average fill price − arrival mid)/arrival mid, on
  the filled part only (completion % shows how much was left); per sleeve it is weighted by filled qty.
- A/B: two sleeves that worked the same parents (symbol, side, qty, start, end). Δ = B − A, so a negative Δ
  means B cost less. The headline Δ is over all child fills of the common parents (qty-weighted); its 95% CI
  is a bootstrap over parents (2,000 resamples, seed 0). The paired per-parent mean difference and its
  Student t 95% CI are given too; with fewer than 10 parents the verdict quotes that t CI beside the bootstrap
  one, because a percentile bootstrap over a handful of parents is too narrow. Child fills are matched to a
  parent by sleeve, symbol, side and decision time inside [start_ms, end_ms].
- equity.png: per (sleeve, symbol), equity (top) and position (bottom, exact steps at every fill) against
  exchange time since the first record. slippage.png: the distribution of per-fill slippage per sleeve, the
  dashed lines at each sleeve's qty-weighted mean; values beyond the 1st/99th percentiles are piled into the
  edge bins. scores.png (when the run has scores.csv): per symbol, the anomaly level the strategy saw (the
  launcher's 5 ms samples), the stretches where the flag was up, the labelled anomaly windows of a
  simulator run (labels.jsonl) and the kill switch's activations (risk_events.csv): what the model saw
  against what was injected and what the strategy did.

CLI: `python -m procs.results RUN_DIR` writes the results and prints results.txt; `--json` prints the dict;
`--no-write` computes without writing anything.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import csv
import html
import math
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from procs import report

FILL_COLS = ("exch_ts_ms", "symbol", "tag", "client_order_id", "side", "status", "price", "qty", "leaves_qty",
             "fee", "liquidity", "reason", "order_ts_ms", "mid_at_decision")
ORDER_COLS = ("exch_ts_ms", "symbol", "tag", "client_order_id", "action", "type", "side", "price", "qty",
              "mid_at_decision", "post_only")
EQUITY_COLS = ("exch_ts_ms", "symbol", "tag", "position", "avg_price", "cash", "fees", "realized", "unrealized",
               "mid", "equity")
PARENT_COLS = ("tag", "symbol", "side", "qty", "start_ms", "end_ms", "arrival_mid", "filled_qty", "avg_fill_price",
               "slices")
FILES = {"fills.csv": FILL_COLS, "orders.csv": ORDER_COLS, "equity.csv": EQUITY_COLS, "parents.csv": PARENT_COLS}
STATUSES = ("ack", "partial", "filled", "canceled", "rejected", "replaced")
ACTIONS = ("new", "cancel", "replace")
#: relative difference between equity.csv's realised P&L and the one recomputed from fills.csv worth flagging
REL_TOL = 1e-6
BOOTSTRAP_N = 2000
BOOTSTRAP_SEED = 0
ALL = "(all)"  # symbol label of a sleeve's all-symbols row
MAX_EXAMPLES = 5  # malformed rows quoted per file


# -- rows --------------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Fill:
    ts: int
    symbol: str
    tag: str
    cid: str
    side: int  # +1 buy, -1 sell
    status: str
    price: float
    qty: float
    leaves: float
    fee: float
    liquidity: str
    reason: str
    order_ts: int | None  # None: not written
    mid: float


@dataclass(slots=True)
class Order:
    ts: int
    symbol: str
    tag: str
    cid: str
    action: str
    otype: str
    side: int
    price: float
    qty: float
    mid: float


@dataclass(slots=True)
class EquityRow:
    ts: int
    symbol: str
    tag: str
    position: float
    avg_price: float
    fees: float
    realized: float
    unrealized: float
    mid: float
    equity: float


@dataclass(slots=True)
class Parent:
    tag: str
    symbol: str
    side: int
    qty: float
    start: int
    end: int
    arrival_mid: float
    filled_qty: float
    avg_fill_price: float
    slices: int


def _num(s: str) -> float:
    v = float(s)
    if not math.isfinite(v):
        raise ValueError(f"not a finite number: {s!r}")
    return v


def _int(s: str) -> int:
    try:
        return int(s)  # the common case, 4x faster than the float round trip below
    except ValueError:
        pass
    v = _num(s)
    if v != int(v):
        raise ValueError(f"not an integer: {s!r}")
    return int(v)


def _side(s: str) -> int:
    s = s.strip().lower()
    if s in ("buy", "b", "0"):
        return 1
    if s in ("sell", "s", "1"):
        return -1
    raise ValueError(f"unknown side {s!r}")


def _tag(s: str) -> str:
    if s.isdigit():
        return str(int(s))
    s = s.strip()
    # "1" and "1.0" are one sleeve; a non-numeric tag is kept as written
    try:
        return str(_int(s))
    except ValueError:
        if not s:
            raise ValueError("empty tag") from None
        return s


def _parse_fill(r: dict[str, str]) -> Fill:
    status = r["status"].strip().lower()
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}")
    liq = r["liquidity"].strip().lower()
    if liq not in ("maker", "taker", ""):
        raise ValueError(f"unknown liquidity {liq!r}")
    mid = r["mid_at_decision"].strip()
    return Fill(_int(r["exch_ts_ms"]), r["symbol"].strip(), _tag(r["tag"]), r["client_order_id"].strip(),
                _side(r["side"]), status, _num(r["price"]), _num(r["qty"]), _num(r["leaves_qty"] or "0"),
                _num(r["fee"] or "0"), liq, (r["reason"].strip() or "none").lower(),
                _int(r["order_ts_ms"]) if r["order_ts_ms"].strip() else None, _num(mid) if mid else 0.0)


def _parse_order(r: dict[str, str]) -> Order:
    action = r["action"].strip().lower()
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    mid = r["mid_at_decision"].strip()
    return Order(_int(r["exch_ts_ms"]), r["symbol"].strip(), _tag(r["tag"]), r["client_order_id"].strip(), action,
                 r["type"].strip().lower(), _side(r["side"]), _num(r["price"] or "0"), _num(r["qty"] or "0"),
                 _num(mid) if mid else 0.0)


def _parse_equity(r: dict[str, str]) -> EquityRow:
    return EquityRow(_int(r["exch_ts_ms"]), r["symbol"].strip(), _tag(r["tag"]), _num(r["position"]),
                     _num(r["avg_price"]), _num(r["fees"]), _num(r["realized"]), _num(r["unrealized"]),
                     _num(r["mid"]), _num(r["equity"]))


def _parse_parent(r: dict[str, str]) -> Parent:
    return Parent(_tag(r["tag"]), r["symbol"].strip(), _side(r["side"]), _num(r["qty"]), _int(r["start_ms"]),
                  _int(r["end_ms"]), _num(r["arrival_mid"]), _num(r["filled_qty"]), _num(r["avg_fill_price"] or "0"),
                  _int(r["slices"] or "0"))


def _read_csv(path: Path, cols: tuple[str, ...], parse: Callable[[dict[str, str]], Any]) -> tuple[list, dict]:
    """Parsed rows and a file report {present, rows, malformed, examples, error}."""
    info: dict[str, Any] = {"present": path.is_file(), "rows": 0, "malformed": 0, "examples": [], "error": None}
    if not info["present"]:
        return [], info
    out: list = []
    try:
        with path.open(newline="", encoding="utf-8", errors="replace") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                return [], info
            names = [h.strip() for h in header]
            first_data: list[list[str]] = []
            if not set(cols) <= set(names):
                # a file written without its header row is still readable when it has exactly the spec's columns
                if len(names) == len(cols):
                    first_data, names = [header], list(cols)
                else:
                    info["error"] = f"missing columns: {', '.join(c for c in cols if c not in names)}"
                    return [], info
            lineno = 2 - len(first_data)
            for row in (*first_data, *reader):
                lineno += 1
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank line
                info["rows"] += 1
                try:
                    if len(row) != len(names):
                        raise ValueError(f"{len(row)} fields, expected {len(names)}")
                    out.append(parse(dict(zip(names, row, strict=True))))
                except (ValueError, KeyError) as e:
                    info["malformed"] += 1
                    if len(info["examples"]) < MAX_EXAMPLES:
                        info["examples"].append(f"line {lineno - 1}: {e}")
    except OSError as e:
        info["error"] = f"unreadable: {e}"
    return out, info


def _load_summary(path: Path) -> tuple[dict, dict]:
    info: dict[str, Any] = {"present": path.is_file(), "error": None}
    if not info["present"]:
        return {}, info
    try:
        data = orjson.loads(path.read_bytes())
    except (orjson.JSONDecodeError, OSError) as e:
        info["error"] = f"not valid JSON: {e}"
        return {}, info
    if not isinstance(data, dict):
        info["error"] = "not a JSON object"
        return {}, info
    return data, info


def _strategy(summary: dict) -> dict:
    s = summary.get("strategy")
    return s if isinstance(s, dict) else {}


def _names(summary: dict) -> dict[str, str]:
    """Sleeve id -> name from summary.json["strategy"]["tags"]; a bad entry is skipped, not fatal."""
    tags = _strategy(summary).get("tags")
    out: dict[str, str] = {}
    for k, v in (tags.items() if isinstance(tags, dict) else ()):
        try:
            out[_tag(str(k))] = str(v)
        except ValueError:
            continue
    return out


# -- statistics ---------------------------------------------------------------------------------------------------
def percentile(values: Iterable[float], p: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least p% of the values at or below it."""
    v = sorted(values)
    if not v:
        return None
    # round before ceil: 0.29 * 100 is 28.999999999999996 in binary
    k = max(1, math.ceil(round(p / 100.0 * len(v), 9)))
    return float(v[min(k, len(v)) - 1])


def _t_two_sided_prob(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer df (Abramowitz & Stegun 26.7.3, exact finite series)."""
    theta = math.atan(t / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2:
        if df == 1:
            return 2.0 * theta / math.pi
        term = total = math.cos(theta)
        for j in range(1, (df - 1) // 2):
            term *= c2 * (2 * j) / (2 * j + 1)
            total += term
        return 2.0 / math.pi * (theta + s * total)
    term = total = 1.0
    for j in range(df // 2 - 1):
        term *= c2 * (2 * j + 1) / (2 * j + 2)
        total += term
    return s * total


def t_quantile_975(df: int) -> float:
    """The 97.5% quantile of Student's t (the half-width factor of a two-sided 95% CI), by bisection."""
    if df < 1:
        raise ValueError("df must be >= 1")
    if df > 100_000:
        return 1.959963984540054  # the normal quantile: the series would be long and the difference < 1e-5
    lo, hi = 0.0, 1000.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if _t_two_sided_prob(mid, df) < 0.95:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _dist(values: list[float], weights: list[float] | None = None) -> dict[str, Any]:
    """n, qty-weighted mean (or plain mean), median, p90 and max of a sample; None fields when empty."""
    n = len(values)
    if not n:
        return {"n": 0, "qty": 0.0, "mean": None, "median": None, "p90": None}
    w = weights if weights is not None else [1.0] * n
    tw = math.fsum(w)
    mean = math.fsum(v * x for v, x in zip(values, w, strict=True)) / tw if tw > 0 else None
    return {"n": n, "qty": tw if weights is not None else None, "mean": mean,
            "median": percentile(values, 50), "p90": percentile(values, 90)}


def _lat(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "p50": percentile(values, 50), "p90": percentile(values, 90),
            "p99": percentile(values, 99), "max": max(values) if values else None}


def slippage_bps(side: int, price: float, mid: float) -> float:
    """Signed slippage in bps, positive = cost: buy (px − mid)/mid, sell (mid − px)/mid."""
    return side * (price - mid) / mid * 1e4


def max_drawdown(ts: list[int], equity: list[float]) -> dict[str, Any]:
    """Largest fall from the running peak (which starts at 0: a run starts flat) with its peak and trough times."""
    if not equity:
        return {"value": None, "peak_ms": None, "trough_ms": None}
    peak, peak_t = 0.0, None
    best, best_peak_t, best_trough_t = 0.0, None, None
    for t, e in zip(ts, equity, strict=True):
        if e > peak:
            peak, peak_t = e, t
        if peak - e > best:
            best, best_peak_t, best_trough_t = peak - e, peak_t, t
    return {"value": best, "peak_ms": best_peak_t, "trough_ms": best_trough_t}


@dataclass(slots=True)
class _Book:
    """Average-cost position keeping, fees included in realised P&L (the strategy stage's rule)."""

    position: float = 0.0
    avg_price: float = 0.0
    realized: float = 0.0
    cash: float = 0.0
    max_abs: float = 0.0

    def fill(self, side: int, price: float, qty: float, fee: float) -> None:
        q = side * qty
        self.cash -= q * price + fee
        self.realized -= fee
        pos = self.position
        if pos == 0 or (pos > 0) == (q > 0):
            self.avg_price = (self.avg_price * abs(pos) + price * qty) / (abs(pos) + qty)
            self.position = pos + q
        else:
            self.realized += min(qty, abs(pos)) * (price - self.avg_price) * (1 if pos > 0 else -1)
            new = pos + q
            # fills are multiples of 1e-8: a remainder below float noise is flat, not a tiny flipped position
            if abs(new) <= 1e-9 * max(abs(pos), qty):
                self.position, self.avg_price = 0.0, 0.0
            elif qty > abs(pos):
                self.position, self.avg_price = new, price  # flipped: the remainder was opened at this price
            else:
                self.position = new  # reduced: the rest keeps its cost
        self.max_abs = max(self.max_abs, abs(self.position))


# -- compute ------------------------------------------------------------------------------------------------------
def _tag_sort_key(tag: str) -> tuple[int, int | str]:
    return (0, int(tag)) if tag.lstrip("-").isdigit() else (1, tag)


def _realized_agrees(a: float, b: float, n_fills: int) -> bool:
    """Within REL_TOL relative, or within the stage's fixed-point rounding (1e-8 on notional and fee per fill)."""
    return abs(a - b) <= max(REL_TOL * max(abs(a), abs(b)), 2e-8 * (n_fills + 1))


def _combined_equity(series: list[tuple[list[int], list[float]]]) -> tuple[list[int], list[float]]:
    """Sum of several step series (each symbol's equity), each held at its last value, 0 before its first."""
    events = sorted((t, i, e) for i, (ts, es) in enumerate(series) for t, e in zip(ts, es, strict=True))
    cur = [0.0] * len(series)
    out_t: list[int] = []
    out_e: list[float] = []
    for t, i, e in events:
        cur[i] = e
        if out_t and out_t[-1] == t:
            out_e[-1] = math.fsum(cur)
        else:
            out_t.append(t)
            out_e.append(math.fsum(cur))
    return out_t, out_e


def _metrics(fills: list[Fill], orders: list[Order], eq_rows: list[EquityRow], symbol: str | None) -> dict[str, Any]:
    """One (sleeve, symbol) block; symbol None = the sleeve over all symbols (fills span several books)."""
    execs = [f for f in fills if f.status in ("partial", "filled") and f.qty > 0]
    m: dict[str, Any] = {}
    m["orders"] = {a: sum(1 for o in orders if o.action == a) for a in ACTIONS}
    m["orders"].update({t: sum(1 for o in orders if o.action == "new" and o.otype == t) for t in ("limit", "market")})
    m["fills"] = len(execs)
    m["maker_fills"] = sum(1 for f in execs if f.liquidity == "maker")
    m["taker_fills"] = sum(1 for f in execs if f.liquidity == "taker")
    m["filled_qty"] = math.fsum(f.qty for f in execs) if symbol is not None else None  # qty of different assets
    m["buy_qty"] = math.fsum(f.qty for f in execs if f.side > 0) if symbol is not None else None
    m["sell_qty"] = math.fsum(f.qty for f in execs if f.side < 0) if symbol is not None else None
    m["notional"] = math.fsum(f.qty * f.price for f in execs)
    m["fees"] = math.fsum(f.fee for f in execs)
    m["fees_paid"] = math.fsum(f.fee for f in execs if f.fee > 0)
    m["rebates"] = math.fsum(-f.fee for f in execs if f.fee < 0)

    # P&L recomputed from the fills, per symbol (average cost does not mix books)
    books: dict[str, _Book] = defaultdict(_Book)
    last_mid: dict[str, float] = {}
    for f in fills:
        if f.mid > 0:
            last_mid[f.symbol] = f.mid
        if f.status in ("partial", "filled") and f.qty > 0:
            books[f.symbol].fill(f.side, f.price, f.qty, f.fee)
    realized_fills = math.fsum(b.realized for b in books.values())

    last_eq: dict[str, EquityRow] = {}
    for r in eq_rows:
        if r.symbol not in last_eq or r.ts >= last_eq[r.symbol].ts:
            last_eq[r.symbol] = r
    pnl: dict[str, Any]
    if last_eq:
        rows = list(last_eq.values())
        pnl = {"source": "equity.csv", "as_of_ms": max(r.ts for r in rows),
               "realized": math.fsum(r.realized for r in rows), "unrealized": math.fsum(r.unrealized for r in rows),
               "equity": math.fsum(r.equity for r in rows)}
        if symbol is not None:
            r = last_eq.get(symbol)
            pnl.update(position=r.position if r else 0.0, avg_price=r.avg_price if r else 0.0, mid=r.mid if r else None)
    elif books:
        # no equity.csv: mark at the last decision mid seen in fills.csv, the best price this folder has
        unreal = math.fsum(b.position * (last_mid.get(s, b.avg_price) - b.avg_price) for s, b in books.items())
        pnl = {"source": "fills.csv (marked at the last decision mid)", "as_of_ms": max(f.ts for f in fills),
               "realized": realized_fills, "unrealized": unreal, "equity": realized_fills + unreal}
        if symbol is not None:
            b = books.get(symbol, _Book())
            pnl.update(position=b.position, avg_price=b.avg_price, mid=last_mid.get(symbol))
    else:
        pnl = {"source": None, "as_of_ms": None, "realized": 0.0, "unrealized": 0.0, "equity": 0.0}
        if symbol is not None:
            pnl.update(position=0.0, avg_price=0.0, mid=None)
    m["pnl"] = pnl
    check: dict[str, Any] = {"recomputed": realized_fills, "reported": pnl["realized"] if last_eq else None}
    if last_eq:
        last_fill = max((f.ts for f in execs), default=None)
        check["diff"] = pnl["realized"] - realized_fills
        check["ok"] = _realized_agrees(pnl["realized"], realized_fills, len(execs))
        if not check["ok"] and last_fill is not None and last_fill > pnl["as_of_ms"]:
            check["note"] = "equity.csv ends before the last fill (no final row?)"
    else:
        check.update(diff=None, ok=None)
    m["realized_check"] = check

    # drawdown on the equity curve (per symbol, or the sum over the sleeve's symbols)
    by_sym: dict[str, tuple[list[int], list[float]]] = {}
    for r in sorted(eq_rows, key=lambda r: r.ts):
        ts, es = by_sym.setdefault(r.symbol, ([], []))
        ts.append(r.ts)
        es.append(r.equity)
    ts, es = _combined_equity(list(by_sym.values())) if by_sym else ([], [])
    m["max_drawdown"] = max_drawdown(ts, es)
    if symbol is not None:
        m["max_abs_position"] = max([abs(r.position) for r in eq_rows] + [b.max_abs for b in books.values()],
                                    default=0.0)
    else:
        m["max_abs_position"] = None  # positions of different assets do not add

    # fill rate: an order counts once however many partial fills it had
    acked = {(f.symbol, f.cid) for f in fills if f.status == "ack"}
    filled = {(f.symbol, f.cid) for f in execs}
    new_qty = math.fsum(o.qty for o in orders if o.action == "new")
    m["fill_rate"] = {"orders_acked": len(acked | filled), "orders_filled": len(filled),
                      "order_ratio": len(filled) / len(acked | filled) if acked | filled else None,
                      "qty_ordered": new_qty if symbol is not None and new_qty > 0 else None,
                      "qty_filled": m["filled_qty"],
                      "qty_ratio": (m["filled_qty"] / new_qty) if symbol is not None and new_qty > 0 else None}
    if symbol is None and new_qty > 0:
        # over several assets a ratio of sums is meaningless; the notional ratio is the comparable one
        new_notional = math.fsum(o.qty * (o.price if o.price > 0 else o.mid) for o in orders if o.action == "new")
        m["fill_rate"]["notional_ratio"] = m["notional"] / new_notional if new_notional > 0 else None

    # slippage vs decision mid
    slip: dict[str, Any] = {}
    with_mid = [f for f in execs if f.mid > 0]
    for label, sel in (("all", with_mid), ("maker", [f for f in with_mid if f.liquidity == "maker"]),
                       ("taker", [f for f in with_mid if f.liquidity == "taker"])):
        slip[label] = _dist([slippage_bps(f.side, f.price, f.mid) for f in sel], [f.qty for f in sel])
    slip["no_mid"] = len(execs) - len(with_mid)
    m["slippage_bps"] = slip

    # order-to-fill latency: first fill of each order
    first: dict[tuple[str, str], Fill] = {}
    for f in execs:
        k = (f.symbol, f.cid)
        if k not in first or f.ts < first[k].ts:
            first[k] = f
    m["order_to_fill_ms"] = _lat([float(f.ts - f.order_ts) for f in first.values() if f.order_ts is not None])

    rej: dict[str, int] = defaultdict(int)
    for f in fills:
        if f.status == "rejected":
            rej[f.reason] += 1
    m["rejects"] = dict(sorted(rej.items(), key=lambda kv: (-kv[1], kv[0])))
    return m


def _execution(parents: list[Parent], fills: list[Fill], names: dict[str, str]) -> dict[str, Any]:
    """Per parent and sleeve: shortfall, completion, child-fill slippage; and the A/B of every pair of sleeves."""
    execs = [f for f in fills if f.status in ("partial", "filled") and f.qty > 0 and f.mid > 0]
    # child fills to parents: same sleeve, symbol and side, decision time inside the parent's window
    by_key: dict[tuple[str, str, int], list[int]] = defaultdict(list)
    for i in sorted(range(len(parents)), key=lambda i: parents[i].start):
        by_key[(parents[i].tag, parents[i].symbol, parents[i].side)].append(i)
    # per key: starts (sorted) and the longest window, so a decision time only looks at starts in [t - span, t]
    starts = {k: [parents[i].start for i in v] for k, v in by_key.items()}
    span = {k: max(parents[i].end - parents[i].start for i in v) for k, v in by_key.items()}
    children: list[list[Fill]] = [[] for _ in parents]
    unassigned = ambiguous = 0
    exec_tags = {p.tag for p in parents}
    for f in execs:
        if f.tag not in exec_tags:
            continue
        k = (f.tag, f.symbol, f.side)
        if k not in by_key or f.order_ts is None:
            unassigned += 1
            continue
        lo = bisect.bisect_left(starts[k], f.order_ts - span[k])
        hi = bisect.bisect_right(starts[k], f.order_ts)
        hits = [i for i in by_key[k][lo:hi] if f.order_ts <= parents[i].end]
        if not hits:
            unassigned += 1
            continue
        if len(hits) > 1:
            ambiguous += 1
        # overlapping windows: the latest-started parent is the one the decision was working on
        children[max(hits, key=lambda i: (parents[i].start, i))].append(f)

    rows: list[dict[str, Any]] = []
    for p, ch in zip(parents, children, strict=True):
        q = math.fsum(f.qty for f in ch)
        wslip = math.fsum(f.qty * slippage_bps(f.side, f.price, f.mid) for f in ch)
        rows.append({
            "tag": p.tag, "name": names.get(p.tag, p.tag), "symbol": p.symbol, "side": "buy" if p.side > 0 else "sell",
            "qty": p.qty, "start_ms": p.start, "end_ms": p.end, "arrival_mid": p.arrival_mid,
            "filled_qty": p.filled_qty, "avg_fill_price": p.avg_fill_price, "slices": p.slices,
            "completion_pct": 100.0 * p.filled_qty / p.qty if p.qty > 0 else None,
            "shortfall_bps": (slippage_bps(p.side, p.avg_fill_price, p.arrival_mid)
                              if p.filled_qty > 0 and p.arrival_mid > 0 and p.avg_fill_price > 0 else None),
            "child_fills": len(ch), "child_qty": q,
            "_wslip": wslip, "slippage_bps": wslip / q if q > 0 else None,
        })

    sleeves: dict[str, Any] = {}
    for tag in sorted(exec_tags, key=_tag_sort_key):
        rs = [r for r in rows if r["tag"] == tag]
        with_is = [r for r in rs if r["shortfall_bps"] is not None]
        fq = math.fsum(r["filled_qty"] for r in with_is)
        cq = math.fsum(r["child_qty"] for r in rs)
        sleeves[tag] = {
            "name": names.get(tag, tag), "parents": len(rs), "qty": math.fsum(r["qty"] for r in rs),
            "filled_qty": math.fsum(r["filled_qty"] for r in rs),
            "completion_pct": (100.0 * math.fsum(r["filled_qty"] for r in rs) / math.fsum(r["qty"] for r in rs)
                               if math.fsum(r["qty"] for r in rs) > 0 else None),
            "shortfall_bps": math.fsum(r["shortfall_bps"] * r["filled_qty"] for r in with_is) / fq if fq > 0 else None,
            "slices": sum(r["slices"] for r in rs), "child_fills": sum(r["child_fills"] for r in rs),
            "slippage_bps": math.fsum(r["_wslip"] for r in rs) / cq if cq > 0 else None,
        }

    ab = []
    tags = sorted(exec_tags, key=_tag_sort_key)
    for ia, a in enumerate(tags):
        for b in tags[ia + 1:]:
            ab.append(_ab_pair(a, b, rows, names))
    for r in rows:
        del r["_wslip"]
    return {"parents": rows, "sleeves": sleeves, "unassigned_fills": unassigned, "ambiguous_fills": ambiguous,
            "ab": ab}


def _pkey(r: dict[str, Any]) -> tuple:
    return (r["symbol"], r["side"], round(r["qty"], 8), r["start_ms"], r["end_ms"])


def _paired(num_a: np.ndarray, den_a: np.ndarray, num_b: np.ndarray, den_b: np.ndarray) -> dict[str, Any]:
    """Δ = B − A of two weighted means over paired parents, bootstrap CI over parents, and the paired t CI."""
    n = len(num_a)
    a, b = float(num_a.sum() / den_a.sum()), float(num_b.sum() / den_b.sum())
    out: dict[str, Any] = {"a": a, "b": b, "diff": b - a, "ci95": None, "per_parent_mean_diff": None,
                           "per_parent_ci95": None}
    d = num_b / den_b - num_a / den_a
    out["per_parent_mean_diff"] = float(d.mean())
    if n >= 2:
        rng = np.random.default_rng(BOOTSTRAP_SEED)
        idx = rng.integers(0, n, size=(BOOTSTRAP_N, n))
        boot = num_b[idx].sum(1) / den_b[idx].sum(1) - num_a[idx].sum(1) / den_a[idx].sum(1)
        lo, hi = np.percentile(boot, [2.5, 97.5])
        out["ci95"] = [float(lo), float(hi)]
        half = t_quantile_975(n - 1) * float(d.std(ddof=1)) / math.sqrt(n)
        out["per_parent_ci95"] = [float(d.mean()) - half, float(d.mean()) + half]
    return out


def _ab_pair(a: str, b: str, rows: list[dict[str, Any]], names: dict[str, str]) -> dict[str, Any]:
    pa: dict[tuple, list[dict]] = defaultdict(list)
    pb: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if r["tag"] == a:
            pa[_pkey(r)].append(r)
        elif r["tag"] == b:
            pb[_pkey(r)].append(r)
    # the same parent twice in a sleeve is paired in file order
    pairs = [(x, y) for k in pa if k in pb for x, y in zip(pa[k], pb[k], strict=False)]
    na, nb = names.get(a, a), names.get(b, b)
    res: dict[str, Any] = {"a": a, "b": b, "a_name": na, "b_name": nb, "common_parents": len(pairs)}
    sp = [(x, y) for x, y in pairs if x["child_qty"] > 0 and y["child_qty"] > 0]
    res["slippage"] = {"parents": len(sp), "slices_a": sum(x["child_fills"] for x, _ in sp),
                       "slices_b": sum(y["child_fills"] for _, y in sp)}
    if sp:
        res["slippage"].update(_paired(
            np.array([x["_wslip"] for x, _ in sp]), np.array([x["child_qty"] for x, _ in sp]),
            np.array([y["_wslip"] for _, y in sp]), np.array([y["child_qty"] for _, y in sp])))
    ip = [(x, y) for x, y in pairs if x["shortfall_bps"] is not None and y["shortfall_bps"] is not None]
    res["shortfall"] = {"parents": len(ip)}
    if ip:
        res["shortfall"].update(_paired(
            np.array([x["shortfall_bps"] * x["filled_qty"] for x, _ in ip]),
            np.array([x["filled_qty"] for x, _ in ip]),
            np.array([y["shortfall_bps"] * y["filled_qty"] for _, y in ip]),
            np.array([y["filled_qty"] for _, y in ip])))
    res["verdict"] = _verdict(res)
    return res


def _verdict(res: dict[str, Any]) -> str:
    na, nb = res["a_name"], res["b_name"]
    s = res["slippage"]
    if not s.get("parents"):
        return f"{nb} vs {na}: no common parent with fills in both sleeves, no comparison"
    d = s["diff"]
    word = "lower" if d < 0 else "higher" if d > 0 else "no different"
    slices = s["slices_a"] + s["slices_b"]
    # the CI is of the magnitude quoted, so "lower by 0.4 (0.1–0.7)" reads without sign gymnastics
    if s["ci95"]:
        lo, hi = (-s["ci95"][1], -s["ci95"][0]) if d < 0 else s["ci95"]
        sig = "" if (lo > 0 or hi < 0) else ", not significant"
        ci = f" (95% CI {lo:.2f}–{hi:.2f}{sig})"
    else:
        ci = " (one parent: no CI)"
    if s["per_parent_ci95"] and s["parents"] < 10:
        # a percentile bootstrap over a handful of parents is too narrow: show the paired t interval beside it
        lo_t, hi_t = s["per_parent_ci95"]
        ci += f" [only {s['parents']} parents: paired t 95% CI of Δ {lo_t:+.2f}…{hi_t:+.2f}]"
    text = (f"{nb} slippage {abs(d):.2f} bps {word} than {na} over {s['parents']} parents / {slices} slices{ci}"
            if d else f"{nb} slippage equal to {na} over {s['parents']} parents / {slices} slices")
    sf = res["shortfall"]
    if sf.get("parents"):
        ds = sf["diff"]
        text += f"; shortfall vs arrival {abs(ds):.2f} bps {'lower' if ds < 0 else 'higher' if ds > 0 else 'equal'}"
        if sf["ci95"]:
            lo, hi = (-sf["ci95"][1], -sf["ci95"][0]) if ds < 0 else sf["ci95"]
            ci = f" (95% CI {lo:.2f}–{hi:.2f}{'' if (lo > 0 or hi < 0) else ', not significant'})"
            text += ci
    return text


@dataclass(slots=True)
class _Run:
    summary: dict
    fills: list[Fill]
    orders: list[Order]
    equity: list[EquityRow]
    parents: list[Parent]
    info: dict[str, dict]


def _load(run_dir: Path) -> _Run:
    summary, s_info = _load_summary(run_dir / "summary.json")
    if not _strategy(summary) and (run_dir / "strategy.json").is_file():
        # the strategy stage writes strategy.json itself; summary.json["strategy"] is the same dict when merged
        strat, st_info = _load_summary(run_dir / "strategy.json")
        if strat and not st_info["error"]:
            summary = {**summary, "strategy": strat}
    fills, f_info = _read_csv(run_dir / "fills.csv", FILL_COLS, _parse_fill)
    orders, o_info = _read_csv(run_dir / "orders.csv", ORDER_COLS, _parse_order)
    equity, e_info = _read_csv(run_dir / "equity.csv", EQUITY_COLS, _parse_equity)
    parents, p_info = _read_csv(run_dir / "parents.csv", PARENT_COLS, _parse_parent)
    # exchange time order; stable, so reports with one timestamp keep the order the exchange sent them
    fills.sort(key=lambda f: f.ts)
    orders.sort(key=lambda o: o.ts)
    info = {"summary.json": s_info, "fills.csv": f_info, "orders.csv": o_info, "equity.csv": e_info,
            "parents.csv": p_info}
    return _Run(summary, fills, orders, equity, parents, info)


def compute(run_dir: str | Path) -> dict[str, Any]:
    """The run's results as a JSON-able dict (see the module docstring for each figure's definition)."""
    run_dir = Path(run_dir)
    return _compute(run_dir, _load(run_dir))


def _compute(run_dir: Path, run: _Run) -> dict[str, Any]:
    summary, fills, orders, equity, parents = run.summary, run.fills, run.orders, run.equity, run.parents

    strat = _strategy(summary)
    names = _names(summary)
    res: dict[str, Any] = {
        "run": run_dir.name,
        "files": run.info,
        "strategy": {"name": strat.get("name"), "params": strat.get("params"), "tags": names},
    }
    n_exec = sum(1 for f in fills if f.status in ("partial", "filled") and f.qty > 0)
    if not (fills or orders or equity or parents):
        res["status"] = "no strategy output"
        res["message"] = "no fills: no fills.csv, orders.csv, equity.csv or parents.csv rows in this run folder"
    elif n_exec == 0:
        res["status"] = "no fills"
        res["message"] = f"no fills: {len(orders)} order messages, {len(fills)} execution reports, none a fill"
    else:
        res["status"] = "ok"
        res["message"] = f"{n_exec} fills"

    keys: dict[str, set[str]] = defaultdict(set)
    for x in (*fills, *orders, *equity, *parents):
        keys[x.tag].add(x.symbol)
    by_ts: dict[tuple[str, str], tuple[list, list, list]] = defaultdict(lambda: ([], [], []))
    for f in fills:
        by_ts[(f.tag, f.symbol)][0].append(f)
    for o in orders:
        by_ts[(o.tag, o.symbol)][1].append(o)
    for e in equity:
        by_ts[(e.tag, e.symbol)][2].append(e)
    tags: dict[str, Any] = {}
    for tag in sorted(keys, key=_tag_sort_key):
        syms = sorted(keys[tag])
        t_f = [f for f in fills if f.tag == tag]
        t_o = [o for o in orders if o.tag == tag]
        t_e = [e for e in equity if e.tag == tag]
        tags[tag] = {"name": names.get(tag, tag),
                     "symbols": {s: _metrics(*by_ts[(tag, s)], s) for s in syms},
                     "overall": _metrics(t_f, t_o, t_e, None)}
    res["tags"] = tags
    res["consistency"] = [
        {"tag": t, "symbol": s, **m["realized_check"]}
        for t, v in tags.items() for s, m in v["symbols"].items() if m["realized_check"]["ok"] is False]

    counters = strat.get("rejects")
    if isinstance(counters, dict):
        counters = {str(k): v for k, v in counters.items() if isinstance(v, int | float)}
        counters = dict(sorted(counters.items(), key=lambda kv: (-kv[1], kv[0])))
    res["rejects_counters"] = counters or None
    hists = summary.get("histograms") if isinstance(summary.get("histograms"), dict) else {}
    res["decision_latency_ns"] = hists.get("strategy.decision")
    res["execution"] = _execution(parents, fills, names) if parents else None
    return res


# -- text ---------------------------------------------------------------------------------------------------------
def _f(v: Any, spec: str = ",.2f") -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isnan(v):
        return "-"
    return format(v, spec)


def _q(v: Any) -> str:
    return "-" if v is None else f"{v:,.8g}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned first two columns, the rest right-aligned (numbers)."""
    allr = [header, *rows]
    w = [max(len(r[i]) for r in allr) for i in range(len(header))]
    out = []
    for r in allr:
        cells = [c.ljust(w[i]) if i < 2 else c.rjust(w[i]) for i, c in enumerate(r)]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


def _rows(res: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(sleeve name, symbol, metrics) for every symbol row, then the sleeve's all-symbols row when it has > 1."""
    out = []
    for v in res["tags"].values():
        for s, m in v["symbols"].items():
            out.append((v["name"], s, m))
        if len(v["symbols"]) > 1:
            out.append((v["name"], ALL, v["overall"]))
    return out


def _fmt_ns(v: Any) -> str:
    return report.fmt_ns(v)


def format_text(res: dict[str, Any]) -> str:
    """results.txt: P&L, fill stats, slippage, latency, rejects, execution and the A/B verdicts."""
    names = res["strategy"]["tags"]
    out = [f"tickpipe results, run {res['run']}",
           f"strategy: {res['strategy']['name'] or '-'}"
           + (f"   sleeves: {', '.join(f'{k}={v}' for k, v in names.items())}" if names else ""),
           f"status: {res['status']} ({res['message']})"]
    files = []
    for name, info in res["files"].items():
        if not info["present"]:
            files.append(f"{name} missing")
        elif info.get("error"):
            files.append(f"{name} {info['error']}")
        elif name != "summary.json":
            bad = f" ({info['malformed']} malformed)" if info["malformed"] else ""
            files.append(f"{name} {info['rows']} rows{bad}")
    out.append("files: " + ", ".join(files))
    for name, info in res["files"].items():
        for ex in info.get("examples") or ():
            out.append(f"  malformed {name} {ex}")
    rows = _rows(res)
    if not rows:
        out += ["", "no fills: nothing to report"]
        return "\n".join(out) + "\n"

    out += ["", "P&L (quote currency; realised by average cost, fees included)"]
    out.append(_table(
        ["sleeve", "symbol", "orders new/cxl/rpl", "fills", "filled qty", "notional", "fees paid", "rebates",
         "realised", "unrealised", "equity", "max DD", "max |pos|", "position"],
        [[n, s, f"{m['orders']['new']}/{m['orders']['cancel']}/{m['orders']['replace']}", str(m["fills"]),
          _q(m["filled_qty"]), _f(m["notional"]), _f(m["fees_paid"]), _f(m["rebates"]), _f(m["pnl"]["realized"]),
          _f(m["pnl"]["unrealized"]), _f(m["pnl"]["equity"]), _f(m["max_drawdown"]["value"]),
          _q(m["max_abs_position"]), _q(m["pnl"].get("position"))] for n, s, m in rows]))
    srcs = {m["pnl"]["source"] for _, _, m in rows if m["pnl"]["source"]}
    if srcs - {"equity.csv"}:
        out.append("  (no equity.csv: P&L recomputed from fills.csv, marked at the last decision mid; no drawdown)")
    for c in res["consistency"]:
        note = f" — {c['note']}" if "note" in c else ""
        out.append(f"  REALISED MISMATCH {names.get(c['tag'], c['tag'])} {c['symbol']}: equity.csv "
                   f"{c['reported']:.6f} vs fills.csv {c['recomputed']:.6f} (diff {c['diff']:.6g}){note}")

    out += ["", "Fills"]
    out.append(_table(
        ["sleeve", "symbol", "acked", "filled", "order fill rate", "qty ordered", "qty filled", "qty fill rate",
         "maker", "taker"],
        [[n, s, str(m["fill_rate"]["orders_acked"]), str(m["fill_rate"]["orders_filled"]),
          _f(m["fill_rate"]["order_ratio"], ".1%"), _q(m["fill_rate"]["qty_ordered"]), _q(m["fill_rate"]["qty_filled"]),
          _f(m["fill_rate"]["qty_ratio"], ".1%"), str(m["maker_fills"]), str(m["taker_fills"])] for n, s, m in rows]))

    out += ["", "Slippage vs mid at decision (bps, + = cost; mean qty-weighted, median/p90 over fills)"]
    srows = []
    for n, s, m in rows:
        for liq in ("all", "maker", "taker"):
            d = m["slippage_bps"][liq]
            if d["n"] or liq == "all":
                srows.append([n, s, liq, str(d["n"]), _q(d["qty"]), _f(d["mean"], "+.2f"), _f(d["median"], "+.2f"),
                              _f(d["p90"], "+.2f")])
    out.append(_table(["sleeve", "symbol", "liquidity", "fills", "qty", "mean", "median", "p90"], srows))

    out += ["", "Order-to-fill latency (exchange ms, first fill − decision)"]
    out.append(_table(["sleeve", "symbol", "orders", "p50", "p90", "p99", "max"],
                      [[n, s, str(m["order_to_fill_ms"]["n"]),
                        *(_f(m["order_to_fill_ms"][k], ",.0f") for k in ("p50", "p90", "p99", "max"))]
                       for n, s, m in rows]))
    dl = res["decision_latency_ns"]
    if isinstance(dl, dict):
        out.append("decision latency (book in → order out): n=" + str(dl.get("count", 0)) + "  " + "  ".join(
            f"{k} {_fmt_ns(dl.get(k))}" for k in ("p50", "p90", "p99", "p99.9", "max")))
    else:
        out.append("decision latency: no strategy.decision histogram in summary.json")

    out += ["", "Rejects"]
    rej = [[n, s, r, str(c)] for n, s, m in rows if s != ALL for r, c in m["rejects"].items()]
    out.append(_table(["sleeve", "symbol", "reason", "count"], rej) if rej else "fills.csv: none")
    if res["rejects_counters"]:
        out.append("strategy counters (summary.json): "
                   + ", ".join(f"{r}={c}" for r, c in res["rejects_counters"].items()))

    ex = res["execution"]
    if ex:
        out += ["", "Execution by sleeve (shortfall vs arrival mid on the filled part, bps, + = cost)"]
        out.append(_table(
            ["sleeve", "", "parents", "qty", "filled", "completion", "shortfall", "slippage", "slices", "child fills"],
            [[v["name"], "", str(v["parents"]), _q(v["qty"]), _q(v["filled_qty"]), _f(v["completion_pct"], ".1f") + "%",
              _f(v["shortfall_bps"], "+.2f"), _f(v["slippage_bps"], "+.2f"), str(v["slices"]), str(v["child_fills"])]
             for v in ex["sleeves"].values()]))
        if ex["unassigned_fills"] or ex["ambiguous_fills"]:
            out.append(f"  child fills outside every parent window: {ex['unassigned_fills']}, "
                       f"in overlapping windows: {ex['ambiguous_fills']}")
        out += ["", "Execution by parent"]
        out.append(_table(
            ["sleeve", "symbol", "side", "qty", "start ms", "end ms", "arrival", "completion", "shortfall", "slippage",
             "fills"],
            [[r["name"], r["symbol"], r["side"], _q(r["qty"]), str(r["start_ms"]), str(r["end_ms"]),
              _q(r["arrival_mid"]), _f(r["completion_pct"], ".1f") + "%", _f(r["shortfall_bps"], "+.2f"),
              _f(r["slippage_bps"], "+.2f"), str(r["child_fills"])] for r in ex["parents"]]))
        for p in ex["ab"]:
            out += ["", f"A/B: {p['b_name']} − {p['a_name']} ({p['common_parents']} common parents; Δ < 0: "
                        f"{p['b_name']} cost less)"]
            trows = []
            for label, key in (("slippage vs decision mid", "slippage"), ("shortfall vs arrival", "shortfall")):
                d = p[key]
                if not d.get("parents"):
                    trows.append([label, "", "0", "-", "-", "-", "-", "-", "-"])
                    continue
                ci = d["ci95"]
                pci = d["per_parent_ci95"]
                trows.append([label, "", str(d["parents"]), _f(d["a"], "+.2f"), _f(d["b"], "+.2f"),
                              _f(d["diff"], "+.2f"), f"{ci[0]:+.2f}…{ci[1]:+.2f}" if ci else "-",
                              _f(d["per_parent_mean_diff"], "+.2f"), f"{pci[0]:+.2f}…{pci[1]:+.2f}" if pci else "-"])
            out.append(_table(["bps", "", "parents", p["a_name"], p["b_name"], "Δ", "95% CI (bootstrap)",
                               "per-parent Δ", "95% CI (t)"], trows))
            out.append(f"slices: {p['a_name']} {p['slippage']['slices_a']}, {p['b_name']} {p['slippage']['slices_b']}")
            out.append("verdict: " + p["verdict"])
    return "\n".join(out) + "\n"


# -- plots --------------------------------------------------------------------------------------------------------
def _time_axis(t0: int, span_ms: float) -> tuple[float, str]:
    unit, div = ("s", 1e3) if span_ms < 2 * 3600e3 else ("min", 60e3) if span_ms < 48 * 3600e3 else ("h", 3600e3)
    start = datetime.fromtimestamp(t0 / 1e3, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if t0 > 10**11 else f"{t0} ms"
    return div, f"exchange time ({unit} since {start})"


def _figure(size: tuple[float, float]) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)  # Agg without pyplot: no global state, no display needed
    return fig


def plot(run_dir: str | Path) -> Path:
    """Write equity.png (and slippage.png for execution runs) into run_dir; return equity.png's path."""
    run_dir = Path(run_dir)
    return _plot(run_dir, _load(run_dir))


def _plot(run_dir: Path, run: _Run) -> Path:
    equity, names = run.equity, _names(run.summary)
    execs = [f for f in run.fills if f.status in ("partial", "filled") and f.qty > 0]
    by_key: dict[tuple[str, str], tuple[list[EquityRow], list[Fill]]] = defaultdict(lambda: ([], []))
    for e in equity:
        by_key[(e.tag, e.symbol)][0].append(e)
    for f in execs:
        by_key[(f.tag, f.symbol)][1].append(f)

    fig = _figure((11, 7.5))
    ax_e, ax_p = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    times = [e.ts for e in equity] + [f.ts for f in execs]
    if not times:
        ax_e.text(0.5, 0.5, "no fills", ha="center", va="center", transform=ax_e.transAxes, fontsize=14)
        ax_p.text(0.5, 0.5, "no fills", ha="center", va="center", transform=ax_p.transAxes, fontsize=14)
        xlabel = "exchange time"
        div, t0 = 1e3, 0
    else:
        t0 = min(times)
        div, xlabel = _time_axis(t0, max(times) - t0)
    x_end = (max(times) - t0) / div if times else 0.0
    keys = sorted(by_key, key=lambda k: (_tag_sort_key(k[0]), k[1]))
    for i, (tag, sym) in enumerate(keys):
        color = f"C{i % 10}"
        label = f"{names.get(tag, tag)} {sym}"
        rows = sorted(by_key[(tag, sym)][0], key=lambda e: e.ts)
        fs = by_key[(tag, sym)][1]
        if rows:
            ax_e.plot([(e.ts - t0) / div for e in rows], [e.equity for e in rows], color=color, lw=1.3, label=label)
        elif fs:
            # no equity.csv: realised P&L from the fills is the best curve this folder has
            b = _Book()
            xs, ys = [], []
            for f in fs:
                b.fill(f.side, f.price, f.qty, f.fee)
                xs.append((f.ts - t0) / div)
                ys.append(b.realized)
            xs.append(x_end)  # hold the last value to the end, or a post step draws no final segment
            ys.append(ys[-1])
            ax_e.step(xs, ys, where="post", color=color, lw=1.3, label=f"{label} (realised, no equity.csv)")
        if fs:
            b = _Book()
            xs, ys = [(fs[0].ts - t0) / div], [0.0]
            for f in fs:
                b.fill(f.side, f.price, f.qty, f.fee)
                xs.append((f.ts - t0) / div)
                ys.append(b.position)
            xs.append(x_end)
            ys.append(b.position)
            ax_p.step(xs, ys, where="post", color=color, lw=1.2, label=label)
        elif rows:
            ax_p.step([(e.ts - t0) / div for e in rows], [e.position for e in rows], where="post", color=color,
                      lw=1.2, label=label)
    for ax in (ax_e, ax_p):
        ax.axhline(0, color="0.5", lw=0.7)
        ax.grid(True, alpha=0.35)
    ax_e.set_ylabel("equity (quote currency)")
    ax_p.set_ylabel("position (base units)")
    ax_p.set_xlabel(xlabel)
    ax_e.set_title(f"run {run_dir.name}: equity and position by sleeve and symbol")
    if keys:
        ax_e.legend(loc="best", fontsize="small")
    fig.tight_layout()
    path = run_dir / "equity.png"
    fig.savefig(str(path), format="png")

    if run.info["parents.csv"]["present"]:
        _plot_slippage(run_dir, execs, names)
    _plot_scores(run_dir)
    return path


def _plot_scores(run_dir: Path) -> Path | None:
    """scores.png from scores.csv (+ labels.jsonl, risk_events.csv when present); None without scores rows."""
    rows: dict[str, tuple[list[int], list[float], list[int]]] = defaultdict(lambda: ([], [], []))
    try:
        with (run_dir / "scores.csv").open(newline="") as f:
            for r in csv.DictReader(f):
                try:
                    t, a, fl = int(r["exch_ts_ms"]), float(r["anomaly"]), int(r["flag"])
                except (KeyError, TypeError, ValueError):
                    continue  # a malformed row loses that sample only
                ts, lv, fs = rows[r["symbol"]]
                ts.append(t)
                lv.append(a)
                fs.append(fl)
    except OSError:
        return None
    if not rows:
        return None
    labels: list[dict[str, Any]] = []
    with contextlib.suppress(OSError, ValueError):
        labels = [orjson.loads(ln) for ln in (run_dir / "labels.jsonl").read_text().splitlines() if ln.strip()]
    kills: dict[str, list[int]] = defaultdict(list)
    with contextlib.suppress(OSError, KeyError, ValueError), (run_dir / "risk_events.csv").open(newline="") as f:
        for r in csv.DictReader(f):
            if r.get("event") == "kill_switch_on":
                kills[r["symbol"]].append(int(r["exch_ts_ms"]))
    syms = sorted(rows)
    t0 = min(min(v[0]) for v in rows.values())
    div, xlabel = _time_axis(t0, max(max(v[0]) for v in rows.values()) - t0)
    fig = _figure((11, 1.9 * len(syms) + 1.2))
    axes = fig.subplots(len(syms), 1, sharex=True, squeeze=False)[:, 0]
    for ax, sym in zip(axes, syms, strict=True):
        ts, lv, fs = (np.asarray(v) for v in rows[sym])
        order = np.argsort(ts, kind="stable")
        x = (ts[order] - t0) / div
        ax.step(x, lv[order], where="post", color="C0", lw=0.9, label="anomaly level")
        ax.fill_between(x, 0, 1, where=fs[order] > 0, step="post", color="C3", alpha=0.25, lw=0, label="flag up")
        for i, lab in enumerate(w for w in labels if w.get("symbol") == sym):
            ax.axvspan((int(lab["start_E_ms"]) - t0) / div, (int(lab["end_E_ms"]) - t0) / div, color="C1", alpha=0.18,
                       lw=0, label="labelled anomaly" if i == 0 else None)
        for i, k in enumerate(kills.get(sym, [])):
            ax.axvline((k - t0) / div, color="k", lw=0.8, ls=":", label="kill switch on" if i == 0 else None)
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel(sym, fontsize="small")
        ax.grid(True, alpha=0.3)
    axes[0].legend(loc="upper right", fontsize="x-small", ncol=4)
    axes[0].set_title(f"run {run_dir.name}: anomaly level the strategy saw, flag, labels and kill switch")
    axes[-1].set_xlabel(xlabel)
    fig.tight_layout()
    path = run_dir / "scores.png"
    fig.savefig(str(path), format="png")
    return path


def _plot_slippage(run_dir: Path, execs: list[Fill], names: dict[str, str]) -> Path:
    fig = _figure((10, 5.5))
    ax = fig.add_subplot()
    per_tag: dict[str, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    for f in execs:
        if f.mid > 0:
            per_tag[f.tag][0].append(slippage_bps(f.side, f.price, f.mid))
            per_tag[f.tag][1].append(f.qty)
    allv = [v for vs, _ in per_tag.values() for v in vs]
    if allv:
        lo, hi = percentile(allv, 1), percentile(allv, 99)
        if lo == hi:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, 41)
        for i, tag in enumerate(sorted(per_tag, key=_tag_sort_key)):
            vs, qs = per_tag[tag]
            mean = math.fsum(v * q for v, q in zip(vs, qs, strict=True)) / math.fsum(qs)
            color = f"C{i % 10}"
            ax.hist(np.clip(vs, lo, hi), bins=edges, histtype="stepfilled", alpha=0.35, color=color,
                    label=f"{names.get(tag, tag)} (n={len(vs)}, qty-weighted mean {mean:+.2f} bps)")
            ax.axvline(mean, color=color, ls="--", lw=1.2)
        ax.legend(loc="best", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no fills", ha="center", va="center", transform=ax.transAxes, fontsize=14)
    ax.set_xlabel("slippage vs mid at decision (bps, + = cost; beyond p1/p99 piled into the edge bins)")
    ax.set_ylabel("child fills")
    ax.set_title(f"run {run_dir.name}: per-fill slippage by sleeve")
    ax.grid(True, alpha=0.35)
    fig.tight_layout()
    path = run_dir / "slippage.png"
    fig.savefig(str(path), format="png")
    return path


# -- outputs ------------------------------------------------------------------------------------------------------
def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS,
                        default=str)


def write(run_dir: str | Path) -> dict[str, Any]:
    """Write results.json, results.txt, equity.png (and slippage.png) into run_dir; return the results dict."""
    run_dir = Path(run_dir)
    run = _load(run_dir)
    res = _compute(run_dir, run)
    (run_dir / "results.json").write_bytes(_dumps(res) + b"\n")
    (run_dir / "results.txt").write_text(format_text(res), encoding="utf-8")
    try:
        _plot(run_dir, run)
    except Exception as e:  # a plot must never cost the numbers
        res["plot_error"] = repr(e)
        (run_dir / "results.json").write_bytes(_dumps(res) + b"\n")
    return res


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="results"><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>'


def html_fragment(run_dir: str | Path) -> str:
    """An HTML <section> of the results (tables and the plots) for report.html; plots are drawn if missing."""
    run_dir = Path(run_dir)
    res = compute(run_dir)
    if not (run_dir / "equity.png").is_file():
        with contextlib.suppress(Exception):  # the tables are still worth showing without the plot
            plot(run_dir)
    parts = ['<section class="tickpipe-results">', "<h2>Strategy results</h2>",
             f"<p>strategy {html.escape(str(res['strategy']['name'] or '-'))}; "
             f"{html.escape(res['status'])}: {html.escape(res['message'])}</p>"]
    for name, info in res["files"].items():
        if info.get("malformed") or info.get("error"):
            parts.append(f"<p>{html.escape(name)}: {info.get('malformed', 0)} malformed rows"
                         f"{html.escape('; ' + info['error']) if info.get('error') else ''}</p>")
    rows = _rows(res)
    if rows:
        parts.append("<h3>P&amp;L (quote currency)</h3>")
        parts.append(_html_table(
            ["sleeve", "symbol", "fills", "notional", "fees", "realised", "unrealised", "equity", "max DD",
             "max |pos|"],
            [[n, s, str(m["fills"]), _f(m["notional"]), _f(m["fees"]), _f(m["pnl"]["realized"]),
              _f(m["pnl"]["unrealized"]), _f(m["pnl"]["equity"]), _f(m["max_drawdown"]["value"]),
              _q(m["max_abs_position"])] for n, s, m in rows]))
        parts.append("<h3>Fills, slippage (bps vs decision mid, + = cost) and order-to-fill latency (ms)</h3>")
        parts.append(_html_table(
            ["sleeve", "symbol", "order fill rate", "qty fill rate", "slippage mean", "maker", "taker", "median", "p90",
             "latency p50", "p99"],
            [[n, s, _f(m["fill_rate"]["order_ratio"], ".1%"), _f(m["fill_rate"]["qty_ratio"], ".1%"),
              _f(m["slippage_bps"]["all"]["mean"], "+.2f"), _f(m["slippage_bps"]["maker"]["mean"], "+.2f"),
              _f(m["slippage_bps"]["taker"]["mean"], "+.2f"), _f(m["slippage_bps"]["all"]["median"], "+.2f"),
              _f(m["slippage_bps"]["all"]["p90"], "+.2f"), _f(m["order_to_fill_ms"]["p50"], ",.0f"),
              _f(m["order_to_fill_ms"]["p99"], ",.0f")] for n, s, m in rows]))
        rej = [[n, s, r, str(c)] for n, s, m in rows if s != ALL for r, c in m["rejects"].items()]
        if rej:
            parts.append("<h3>Rejects</h3>" + _html_table(["sleeve", "symbol", "reason", "count"], rej))
    ex = res["execution"]
    if ex:
        parts.append("<h3>Execution by sleeve (bps, + = cost)</h3>")
        parts.append(_html_table(
            ["sleeve", "parents", "completion", "shortfall vs arrival", "slippage vs decision", "child fills"],
            [[v["name"], str(v["parents"]), _f(v["completion_pct"], ".1f") + "%", _f(v["shortfall_bps"], "+.2f"),
              _f(v["slippage_bps"], "+.2f"), str(v["child_fills"])] for v in ex["sleeves"].values()]))
        for p in ex["ab"]:
            parts.append(f"<p><b>A/B:</b> {html.escape(p['verdict'])}</p>")
    parts.append('<img src="equity.png" alt="equity and position over exchange time">')
    if ex and (run_dir / "slippage.png").is_file():
        parts.append('<img src="slippage.png" alt="per-fill slippage by sleeve">')
    if (run_dir / "scores.png").is_file():
        parts.append('<img src="scores.png" alt="anomaly level, flag, labelled windows and kill switch per symbol">')
    parts.append("</section>")
    return "\n".join(parts)


@report.register_section
def report_section(summary: dict, folder: Path) -> str:
    """report.html's strategy section, once write() has run (the launcher's second pass of report.html, and
    `python -m procs.report RUN_DIR --html`)."""
    return html_fragment(folder) if (Path(folder) / "results.json").is_file() else ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m procs.results",
        description="A strategy run's results: P&L, fills, slippage, latency, rejects and the TWAP/VWAP A/B. "
                    "Writes results.json, results.txt, equity.png (and slippage.png) into RUN_DIR and prints "
                    "results.txt.",
        epilog="Definitions of every figure: the docstring of procs/results.py. Exit status 2: no such run folder.")
    ap.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="a run folder written by run.py")
    ap.add_argument("--json", action="store_true", help="print the results dict as JSON instead of the text")
    ap.add_argument("--no-write", action="store_true", help="compute and print only; write nothing into RUN_DIR")
    args = ap.parse_args(argv)
    if not args.run_dir.is_dir():
        print(f"results: no such run folder: {args.run_dir}", file=sys.stderr)
        return 2
    res = compute(args.run_dir) if args.no_write else write(args.run_dir)
    if args.json:
        sys.stdout.write(_dumps(res).decode() + "\n")
    else:
        sys.stdout.write(format_text(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
