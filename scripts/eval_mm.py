#!/usr/bin/env python
"""Evaluate a finished simulator run of the market maker against its configured limits and the anomaly labels.

Usage: `python scripts/eval_mm.py RUN_DIR [--json PATH]`. Reads the run folder's strategy.json (params, risk),
summary.json (stage counters), labels.jsonl, fills.csv, orders.csv and equity.csv (formats: /work/notes/issue6_spec.md
"Run-folder files"), and P&L / fill rate from `procs.results.compute()`. All times are exchange ms.

Limits (clause 1: "P&L, fill rate and inventory stay within the configured limits"):
- inventory: max |position| per (symbol, sleeve) over the run, on the exact path (fills.csv fills cumulated in
  report order, not the 1 s equity.csv samples), must be <= min(params.max_inventory, risk.max_position) (a risk
  limit of 0 is off and is left out of the min);
- loss: worst total equity (every (symbol, sleeve) of equity.csv held at its last sample and summed, every sample
  time) must be >= -risk.max_loss, and the max-loss halt must not have fired (summary counter `halted`);
- fill rate: orders with at least one fill / orders acknowledged (procs.results' definition), overall and its
  range over symbols. No setting limits it, so the check is only that it lies in [0, 1];
- order size / notional / rate: max qty and price*qty of new+replace orders (orders.csv) <= risk.max_order_qty and
  risk.max_notional; the most new+replace orders in any (t - 1000, t] ms (the engine's rule, all symbols) <=
  risk.max_orders_per_s;
- P&L (reported, limited only through max_loss): realised, unrealised, fees, equity, max drawdown from compute().

Live quotes: an order (symbol, sleeve, client id) rests from its `ack` report until its `filled` or `canceled`
report (or a `partial`/`rejected` report with leaves 0); a rejected replace leaves it resting. The symbol has a
live quote at t when at least one of its orders rests after every report stamped <= t was applied.

Kill-switch attribution: a cancel in orders.csv is the kill switch's when its report in fills.csv says
`kill_switch_cancel` (the engine stamps it since commit 6249e22); its decision time is the orders.csv row's. When
no report in the run carries that reason (older engines report every cancel as user_cancel) the fallback infers
it: a decision time at which every order still open on the symbol was canceled and after which no new/replace
order for the symbol follows for risk.kill_hold_ms. An activation that found no open order leaves no record at
all; `kills_untraced` = summary.json's `kills` counter minus the activations seen.

Anomaly windows (clause 2: "stops quoting during every labelled anomaly window"): each label of labels.jsonl is
[start_E_ms, end_E_ms) on its symbol, clipped to the run's last record (windows starting after it are dropped).
Per window:
- (a) kill: `kill_ms` = the first kill-switch cancel decision inside the window; `gone_ms` = the first time >=
  kill_ms at which the symbol has no live quote; `requote_ms` = the first new/replace order for the symbol after
  kill_ms inside the window. `first_kill_held` = gone_ms < end and no requote. `held` = the same for some kill
  inside the window (a later kill may hold when the first one lapsed);
- (b) dark share: the share of the window's duration with no live quote on the symbol;
- (c) new quotes: new+replace orders for the symbol inside the window; `before` = the same count over the same
  duration just before it; `expected` = the symbol's rate outside all its windows x the duration; ratio = in /
  expected.
- (d) with scores.csv (the launcher's 5 ms samples of each symbol's newest SCORE): the flagged samples inside
  the window and the first one, so a miss says whether the model never flagged the window or the strategy did
  not act on the flag;
- stopped (the clause's per-window test) = held, or dark throughout (no live quote and no new/replace order in
  the whole window); `stop_delay_ms` = gone_ms - start (0 when dark throughout). Every other window is missed,
  with the reason the records support.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import json
import math
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from procs import results  # noqa: E402 - after the sys.path fix, so the script runs from a checkout

KILL_REASON = "kill_switch_cancel"
END_STATUSES = ("filled", "canceled")
QUOTE_ACTIONS = ("new", "replace")
#: relative slack on limit comparisons: positions are sums of 1e-8 fixed-point fills printed as floats
REL_EPS = 1e-9
#: summary.json counters that mean records were lost, so the reconstruction from the CSVs is incomplete
LOSS_COUNTERS = (("strategy", "orders_dropped"), ("strategy", "fills_dropped"), ("strategy", "out_full"))

Key = tuple[str, str, str]  # (symbol, tag, client order id)


@dataclass(slots=True)
class Report:
    ts: int
    symbol: str
    tag: str
    cid: str
    side: int
    status: str
    qty: float
    leaves: float
    reason: str


@dataclass(slots=True)
class OrderMsg:
    ts: int
    symbol: str
    tag: str
    cid: str
    action: str
    price: float
    qty: float


@dataclass
class LiveSteps:
    """Live-quote count of one symbol as a step function: counts[i] holds on [times[i], times[i+1])."""

    times: list[int] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)

    def at(self, t: int) -> int:
        i = bisect.bisect_right(self.times, t) - 1
        return self.counts[i] if i >= 0 else 0

    def segments(self, s: int, e: int) -> list[tuple[int, int, int]]:
        """(from, to, count) pieces covering [s, e)."""
        out: list[tuple[int, int, int]] = []
        i = bisect.bisect_right(self.times, s) - 1
        t, c = s, (self.counts[i] if i >= 0 else 0)
        for j in range(i + 1, len(self.times)):
            nt = self.times[j]
            if nt >= e:
                break
            if nt > t:
                out.append((t, nt, c))
            t, c = max(t, nt), self.counts[j]
        if e > t:
            out.append((t, e, c))
        return out

    def quoted_ms(self, s: int, e: int) -> int:
        return sum(b - a for a, b, c in self.segments(s, e) if c > 0)

    def first_zero(self, t0: int, e: int) -> int | None:
        """The first time in [t0, e) at which no quote is live."""
        for a, _, c in self.segments(t0, e):
            if c == 0:
                return a
        return None


# -- reading ------------------------------------------------------------------------------------------------------
def _rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def read_reports(run_dir: Path) -> list[Report]:
    out = [Report(int(r["exch_ts_ms"]), r["symbol"], r["tag"], r["client_order_id"], 1 if r["side"] == "buy" else -1,
                  r["status"], float(r["qty"] or 0), float(r["leaves_qty"] or 0), r["reason"] or "none")
           for r in _rows(run_dir / "fills.csv")]
    out.sort(key=lambda r: r.ts)  # stable: reports of one instant keep the exchange's order
    return out


def read_orders(run_dir: Path) -> list[OrderMsg]:
    out = [OrderMsg(int(r["exch_ts_ms"]), r["symbol"], r["tag"], r["client_order_id"], r["action"],
                    float(r["price"] or 0), float(r["qty"] or 0)) for r in _rows(run_dir / "orders.csv")]
    out.sort(key=lambda o: o.ts)
    return out


def read_labels(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# -- reconstruction -----------------------------------------------------------------------------------------------
def live_steps(reports: list[Report]) -> dict[str, LiveSteps]:
    """Per symbol, the live-quote count after all reports of each instant (module docstring, "Live quotes")."""
    live: set[Key] = set()
    count: dict[str, int] = defaultdict(int)
    steps: dict[str, LiveSteps] = defaultdict(LiveSteps)
    for r in reports:
        k = (r.symbol, r.tag, r.cid)
        ends = r.status in END_STATUSES or (r.status in ("partial", "rejected") and r.leaves <= 0)
        if r.status == "ack" and k not in live:
            live.add(k)
            count[r.symbol] += 1
        elif ends and k in live:
            live.discard(k)
            count[r.symbol] -= 1
        else:
            continue
        st = steps[r.symbol]
        if st.times and st.times[-1] == r.ts:
            st.counts[-1] = count[r.symbol]  # one step per instant: a quote acked and filled at once never rests
        else:
            st.times.append(r.ts)
            st.counts.append(count[r.symbol])
    return dict(steps)


def position_paths(reports: list[Report]) -> dict[tuple[str, str], dict[str, float]]:
    """Per (symbol, tag): max |position| on the exact fill path, and the final position."""
    pos: dict[tuple[str, str], float] = defaultdict(float)
    mx: dict[tuple[str, str], float] = defaultdict(float)
    for r in reports:
        if r.status in ("partial", "filled") and r.qty > 0:
            k = (r.symbol, r.tag)
            pos[k] = round(pos[k] + r.side * r.qty, 8)  # fills are multiples of 1e-8: keep the sum exact
            mx[k] = max(mx[k], abs(pos[k]))
    return {k: {"max_abs": mx[k], "final": pos[k]} for k in pos}


def kill_decisions(orders: list[OrderMsg], reports: list[Report], kill_hold_ms: float) -> tuple[dict[str, list[int]],
                                                                                                   str]:
    """Per symbol, the sorted decision times of kill-switch cancels, and how they were attributed."""
    killed = {(r.symbol, r.tag, r.cid) for r in reports if r.status == "canceled" and r.reason == KILL_REASON}
    out: dict[str, set[int]] = defaultdict(set)
    if killed:
        for o in orders:
            if o.action == "cancel" and (o.symbol, o.tag, o.cid) in killed:
                out[o.symbol].add(o.ts)
        return {s: sorted(v) for s, v in out.items()}, "reason"
    # fallback: a cancel of every open order of the symbol at one instant, then silence for kill_hold_ms
    open_: dict[str, set[Key]] = defaultdict(set)
    ended = {(r.symbol, r.tag, r.cid): r.ts for r in reports
             if r.status in END_STATUSES or (r.status in ("partial", "rejected") and r.leaves <= 0)}
    quotes: dict[str, list[int]] = defaultdict(list)
    for o in orders:
        if o.action in QUOTE_ACTIONS:
            quotes[o.symbol].append(o.ts)
    by_ts: dict[tuple[str, int], list[OrderMsg]] = defaultdict(list)
    for o in orders:
        by_ts[(o.symbol, o.ts)].append(o)
    for (sym, ts), msgs in sorted(by_ts.items(), key=lambda kv: kv[0][1]):
        open_[sym] = {k for k in open_[sym] if ended.get(k, math.inf) > ts}
        cancels = {(o.symbol, o.tag, o.cid) for o in msgs if o.action == "cancel"}
        if cancels and open_[sym] and open_[sym] <= cancels:
            q = quotes[sym]
            nxt = bisect.bisect_right(q, ts)
            if nxt == len(q) or q[nxt] - ts >= kill_hold_ms:
                out[sym].add(ts)
        open_[sym] |= {(o.symbol, o.tag, o.cid) for o in msgs if o.action == "new"}
    return {s: sorted(v) for s, v in out.items()}, "inferred (no kill_switch_cancel reasons in fills.csv)"


def _count_in(ts: list[int], a: int, b: int) -> int:
    """Items of sorted ts in [a, b)."""
    return bisect.bisect_left(ts, b) - bisect.bisect_left(ts, a)


def _union_ms(spans: list[tuple[int, int]]) -> int:
    tot, cur_a, cur_b = 0, None, None
    for a, b in sorted(spans):
        if cur_b is None or a > cur_b:
            if cur_b is not None:
                tot += cur_b - cur_a
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    return tot + (cur_b - cur_a if cur_b is not None else 0)


def max_orders_in_1s(ts: list[int]) -> int:
    """Most orders in any (t - 1000, t] ms: the engine's rate rule (the lim-th most recent must be >= 1 s old)."""
    best, i = 0, 0
    for j, t in enumerate(ts):
        while t - ts[i] >= 1000:
            i += 1
        best = max(best, j - i + 1)
    return best


def worst_total_equity(eq_rows: list[dict[str, str]]) -> tuple[float, int | None]:
    """Minimum over sample times of the sum of each (symbol, tag)'s latest equity (0 before its first row)."""
    cur: dict[tuple[str, str], float] = {}
    by_t: dict[int, list[tuple[tuple[str, str], float]]] = defaultdict(list)
    for r in eq_rows:
        by_t[int(r["exch_ts_ms"])].append(((r["symbol"], r["tag"]), float(r["equity"])))
    worst, at = 0.0, None
    for t in sorted(by_t):
        for k, v in by_t[t]:
            cur[k] = v
        tot = math.fsum(cur.values())
        if tot < worst:
            worst, at = tot, t
    return worst, at


# -- evaluation ---------------------------------------------------------------------------------------------------
def _check(ok: bool, value: Any, limit: Any, **extra: Any) -> dict[str, Any]:
    return {"ok": ok, "value": value, "limit": limit, **extra}


def evaluate_limits(run_dir: Path, reports: list[Report], orders: list[OrderMsg], strat: dict[str, Any],
                    counters: dict[str, Any], res: dict[str, Any]) -> dict[str, Any]:
    params, risk = strat.get("params") or {}, strat.get("risk") or {}
    inv_lims = [float(v) for v in (params.get("max_inventory"), risk.get("max_position")) if v]
    inv_lim = min(inv_lims) if inv_lims else math.inf
    paths = position_paths(reports)
    per = {f"{s}/{t}": v for (s, t), v in sorted(paths.items())}
    max_inv = max((v["max_abs"] for v in paths.values()), default=0.0)
    out: dict[str, Any] = {}
    out["inventory"] = _check(max_inv <= inv_lim * (1 + REL_EPS), max_inv, inv_lim, per_symbol=per)

    eq_rows = _rows(run_dir / "equity.csv")
    worst, at = worst_total_equity(eq_rows)
    max_loss = float(risk.get("max_loss") or 0)
    halted = int(counters.get("halted", 0) or 0)
    out["loss"] = _check((max_loss <= 0 or worst >= -max_loss) and halted == 0, worst,
                         -max_loss if max_loss > 0 else None, worst_at_ms=at, halted=halted)

    quotes = [o for o in orders if o.action in QUOTE_ACTIONS]
    mq = max((o.qty for o in quotes), default=0.0)
    lim_q = float(risk.get("max_order_qty") or 0) or math.inf
    out["order_size"] = _check(mq <= lim_q * (1 + REL_EPS), mq, lim_q, params_qty=params.get("qty"))
    mn = max((o.qty * o.price for o in quotes), default=0.0)
    lim_n = float(risk.get("max_notional") or 0) or math.inf
    out["order_notional"] = _check(mn <= lim_n * (1 + REL_EPS), mn, lim_n)
    rate = max_orders_in_1s([o.ts for o in quotes])
    lim_r = float(risk.get("max_orders_per_s") or 0) or math.inf
    out["order_rate"] = _check(rate <= lim_r, rate, lim_r, rate_limit_rejects=(strat.get("rejects") or {})
                               .get("rate_limit", 0))

    # fill rate and P&L: procs.results' figures for the market maker's sleeves
    fr_sym: dict[str, float] = {}
    acked = filled = 0
    pnl = {"realized": 0.0, "unrealized": 0.0, "fees": 0.0, "equity": 0.0}
    mdd: list[Any] = []
    for tag in (res.get("tags") or {}).values():
        ov = tag["overall"]
        acked += ov["fill_rate"]["orders_acked"]
        filled += ov["fill_rate"]["orders_filled"]
        for k in ("realized", "unrealized", "equity"):
            pnl[k] += ov["pnl"][k]
        pnl["fees"] += ov["fees"]
        mdd.append(ov["max_drawdown"])
        for s, m in tag["symbols"].items():
            if m["fill_rate"]["order_ratio"] is not None:
                fr_sym[f"{s}/{tag['name']}"] = m["fill_rate"]["order_ratio"]
    rate_all = filled / acked if acked else None
    rng = [min(fr_sym.values()), max(fr_sym.values())] if fr_sym else None
    out["fill_rate"] = _check(rate_all is None or (0.0 <= rate_all <= 1.0 and filled <= acked), rate_all, [0.0, 1.0],
                              orders_acked=acked, orders_filled=filled, per_symbol=fr_sym, range=rng,
                              note="no configured fill-rate limit: only the [0, 1] sanity range is checked")
    out["pnl"] = {**pnl, "max_drawdown": mdd, "realized_check_failures": res.get("consistency") or []}
    return out


def read_flags(path: Path) -> dict[str, tuple[list[int], list[int]]] | None:
    """scores.csv (the launcher's per-symbol sample of the scores board, 5 ms pace) as, per symbol, the sorted
    sample times and the times of the flagged samples; None when the run folder has no scores.csv."""
    if not path.is_file():
        return None
    out: dict[str, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for r in _rows(path):
        t = int(r["exch_ts_ms"])
        every, flagged = out[r["symbol"]]
        every.append(t)
        if r["flag"] == "1":
            flagged.append(t)
    return {k: (sorted(a), sorted(b)) for k, (a, b) in out.items()}


def evaluate_windows(labels: list[dict[str, Any]], reports: list[Report], orders: list[OrderMsg],
                     kills: dict[str, list[int]], data_start: int, data_end: int,
                     flags: dict[str, tuple[list[int], list[int]]] | None = None) -> list[dict[str, Any]]:
    steps = live_steps(reports)
    quotes: dict[str, list[int]] = defaultdict(list)
    for o in orders:
        if o.action in QUOTE_ACTIONS:
            quotes[o.symbol].append(o.ts)
    spans: dict[str, list[tuple[int, int]]] = defaultdict(list)
    wins = []
    for i, lab in enumerate(labels):
        s, e = int(lab["start_E_ms"]), min(int(lab["end_E_ms"]), data_end)
        if s >= data_end or e <= s:
            continue  # the run ended before this window: nothing was observed
        wins.append((i, lab, s, e))
        spans[lab["symbol"]].append((max(s, data_start), e))
    # the symbol's quoting rate outside all of its windows: the baseline for view (c)
    span_ms = max(data_end - data_start, 1)
    base: dict[str, float] = {}
    for sym in {lab["symbol"] for _, lab, _, _ in wins}:
        q = quotes.get(sym, [])
        inside = sum(_count_in(q, a, b) for a, b in spans[sym])
        out_ms = span_ms - _union_ms(spans[sym])
        base[sym] = (len(q) - inside) / out_ms if out_ms > 0 else math.nan
    out = []
    for i, lab, s, e in wins:
        sym = lab["symbol"]
        st = steps.get(sym, LiveSteps())
        q = quotes.get(sym, [])
        dur = e - s
        n_in = _count_in(q, s, e)
        quoted = st.quoted_ms(s, e)
        w: dict[str, Any] = {"index": i, "symbol": sym, "kind": lab["kind"], "start_ms": s, "end_ms": e,
                             "duration_ms": dur, "truncated": e < int(lab["end_E_ms"])}
        # (a) the kill switch
        ks = kills.get(sym, [])
        in_win = ks[bisect.bisect_left(ks, s):bisect.bisect_left(ks, e)]
        held_kill = None
        first: dict[str, Any] = {}
        for j, k in enumerate(in_win):
            gone = st.first_zero(k, e)
            nq = bisect.bisect_right(q, k)
            requote = q[nq] if nq < len(q) and q[nq] < e else None
            ok = gone is not None and requote is None
            if j == 0:
                first = {"kill_ms": k, "gone_ms": gone, "requote_ms": requote, "first_kill_held": ok}
            if ok:
                held_kill = (k, gone)
                break
        prev = ks[bisect.bisect_left(ks, s) - 1] if bisect.bisect_left(ks, s) > 0 else None
        w["kill"] = {"kills_in_window": len(in_win), "kill_ms": first.get("kill_ms"), "gone_ms": first.get("gone_ms"),
                     "requote_ms": first.get("requote_ms"), "first_kill_held": bool(first.get("first_kill_held")),
                     "held": held_kill is not None, "held_kill_ms": held_kill[0] if held_kill else None,
                     "last_kill_before_ms": prev}
        # (b) dark share
        w["dark_share"] = 1.0 - quoted / dur
        # (c) new quotes in the window vs the same duration outside
        bef_overlaps = any(a < s and b > s - dur for a, b in spans[sym] if (a, b) != (max(s, data_start), e))
        exp = base[sym] * dur
        w["quotes"] = {"in_window": n_in, "before": _count_in(q, s - dur, s) if s - dur >= data_start else None,
                       "before_overlaps_window": bef_overlaps, "expected_outside": exp,
                       "ratio": n_in / exp if exp > 0 else None}
        if flags is not None:  # (d) the model's flag, as scores.csv sampled it
            every, flagged = flags.get(sym, ([], []))
            f_in = flagged[bisect.bisect_left(flagged, s):bisect.bisect_left(flagged, e)]
            w["flag"] = {"samples": _count_in(every, s, e), "flagged_samples": len(f_in),
                         "first_flag_ms": f_in[0] if f_in else None}
        dark_all = quoted == 0 and n_in == 0
        w["stopped"] = held_kill is not None or dark_all
        w["stop_delay_ms"] = 0 if dark_all else (held_kill[1] - s if held_kill else None)
        w["why"] = _why(w, dark_all, st, s, e, q)
        out.append(w)
    return out


def _why(w: dict[str, Any], dark_all: bool, st: LiveSteps, s: int, e: int, q: list[int]) -> str:
    """The reason the records support for a window's outcome."""
    k = w["kill"]
    if dark_all:
        pre = k["last_kill_before_ms"]
        held_from = pre is not None and _count_in(q, pre + 1, s) == 0
        return (f"dark throughout: kill switch at {pre - s:+d} ms still holding" if held_from
                else "dark throughout: no live quote and no quote sent (no kill-switch record)")
    if k["held"]:
        return f"stopped: kill switch at +{k['held_kill_ms'] - s} ms, quotes gone at +{w['stop_delay_ms']} ms, held"
    if k["kills_in_window"]:
        if k["requote_ms"] is not None:
            return (f"missed: kill switch at +{k['kill_ms'] - s} ms but quoting resumed at +{k['requote_ms'] - s} ms "
                    f"(the flag cleared for kill_hold_ms while the anomaly went on)")
        return f"missed: kill switch at +{k['kill_ms'] - s} ms but a quote still rested at the window's end"
    live_from = next((a for a, _, c in st.segments(s, e) if c > 0), None)
    f = w.get("flag")
    if f is None:
        flag = "the anomaly flag was not raised for it inside the window"
    elif f["flagged_samples"]:
        flag = (f"yet scores.csv has the flag raised from +{f['first_flag_ms'] - s} ms ({f['flagged_samples']} of "
                f"{f['samples']} samples): the strategy did not act on it")
    else:
        flag = f"the model never flagged it ({f['samples']} scores.csv samples in the window, none flagged)"
    return (f"missed: no kill-switch activation while the symbol quoted (live quote from +{live_from - s} ms, "
            f"{w['quotes']['in_window']} quotes sent): {flag}"
            if live_from is not None else
            f"missed: no kill-switch record; {w['quotes']['in_window']} quotes sent, none rested")


def evaluate(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    summary = _json(run_dir / "summary.json")
    strat = _json(run_dir / "strategy.json") or (summary.get("strategy") or {})
    counters = (summary.get("counters") or {})
    s_ctr = counters.get("strategy") or {}
    reports = read_reports(run_dir)
    orders = read_orders(run_dir)
    labels = read_labels(run_dir / "labels.jsonl")
    res = results.compute(run_dir)
    eq_ts = [int(r["exch_ts_ms"]) for r in _rows(run_dir / "equity.csv")]
    all_ts = [*eq_ts, *(r.ts for r in reports), *(o.ts for o in orders)]
    data_start, data_end = (min(all_ts), max(all_ts)) if all_ts else (0, 0)
    kill_hold = float((strat.get("risk") or {}).get("kill_hold_ms") or 0)
    events = run_dir / "risk_events.csv"
    if events.is_file():  # the engine's own log: activations with no order open included
        on: dict[str, list[int]] = defaultdict(list)
        for r in _rows(events):
            if r.get("event") == "kill_switch_on":
                on[r["symbol"]].append(int(r["exch_ts_ms"]))
        kills, attribution = {k: sorted(v) for k, v in on.items()}, "risk_events.csv"
    else:
        kills, attribution = kill_decisions(orders, reports, kill_hold)
    flags = read_flags(run_dir / "scores.csv")
    windows = evaluate_windows(labels, reports, orders, kills, data_start, data_end, flags)
    limits = evaluate_limits(run_dir, reports, orders, strat, s_ctr, res)
    traced = sum(len(v) for v in kills.values())
    # activations outside every window of their symbol: pauses the labels do not explain (false alarms or echoes)
    by_sym_win: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for lab in labels:
        by_sym_win[lab["symbol"]].append((int(lab["start_E_ms"]), int(lab["end_E_ms"])))
    outside = [{"symbol": s, "kill_ms": k, "after_last_window_ms": min((k - b for a, b in by_sym_win[s] if b <= k),
                                                                       default=None)}
               for s, ks in sorted(kills.items()) for k in ks if not any(a <= k < b for a, b in by_sym_win[s])]
    n_kills = s_ctr.get("kills")
    stopped = [w for w in windows if w["stopped"]]
    delays = [w["stop_delay_ms"] for w in stopped]
    exp_sum = math.fsum(w["quotes"]["expected_outside"] for w in windows if math.isfinite(w["quotes"]
                                                                                          ["expected_outside"]))
    in_sum = sum(w["quotes"]["in_window"] for w in windows)
    agg = {"windows_labelled": len(labels), "windows_observed": len(windows), "stopped": len(stopped),
           "first_kill_held": sum(w["kill"]["first_kill_held"] for w in windows),
           "held": sum(w["kill"]["held"] for w in windows),
           "with_kill": sum(1 for w in windows if w["kill"]["kills_in_window"]),
           "dark_share_mean": statistics.fmean(w["dark_share"] for w in windows) if windows else None,
           "dark_share_median": statistics.median(w["dark_share"] for w in windows) if windows else None,
           "stop_delay_ms_median": statistics.median(delays) if delays else None,
           "stop_delay_ms_max": max(delays) if delays else None,
           "quotes_in_windows": in_sum, "quotes_expected_outside": exp_sum,
           "quotes_ratio": in_sum / exp_sum if exp_sum > 0 else None,
           "flagged": sum(1 for w in windows if (w.get("flag") or {}).get("flagged_samples")) if flags is not None
           else None,
           # the launcher samples the board every 5 ms of wall time (that much exchange time x the speed); in
           # lockstep the inference stage writes every score instead
           "flag_sample_speed": ((summary.get("meta") or {}).get("config") or {}).get("source", {}).get("speed"),
           "flag_every_score": bool((summary.get("meta") or {}).get("lockstep")),
           "by_kind": {k: {"windows": sum(1 for w in windows if w["kind"] == k),
                           "stopped": sum(1 for w in windows if w["kind"] == k and w["stopped"])}
                       for k in sorted({w["kind"] for w in windows})}}
    lost = {f"{a}.{b}": (counters.get(a) or {}).get(b) for a, b in LOSS_COUNTERS}
    integrity = {"lost_records": lost, "complete": not any(lost.values()),
                 "orders_csv_rows": len(orders), "fills_csv_rows": len(reports),
                 "orders_sink_received": (counters.get("orders_sink") or {}).get("received"),
                 "fills_sink_received": (counters.get("orders_sink") or {}).get("reports")}
    lim_ok = all(limits[k]["ok"] for k in ("inventory", "loss", "fill_rate", "order_size", "order_notional",
                                           "order_rate"))
    verdict = {
        "limits": {"ok": lim_ok, "text": _limits_text(limits)},
        "stops_quoting": {"ok": len(stopped) == len(windows),
                          "text": f"{len(stopped)}/{len(windows)} observed windows stopped"
                                  f" (kill switch held in {agg['held']}, dark throughout in "
                                  f"{len(stopped) - agg['held']}); mean dark share {_pct(agg['dark_share_mean'])}"}
        if windows else
        {"ok": None, "text": "no labelled anomaly window in the run: nothing to check (labels.jsonl comes from "
                             "simulator runs with sim.anomalies_per_min > 0)"},
    }
    return {
        "run": str(run_dir), "strategy": strat.get("name"), "params": strat.get("params"), "risk": strat.get("risk"),
        "span_ms": [data_start, data_end], "simulated_s": (data_end - data_start) / 1000,
        "kill_switch": {"attribution": attribution, "kills_counter": n_kills, "activations_traced": traced,
                        "kills_untraced": n_kills - traced if isinstance(n_kills, int) else None,
                        "activations_by_symbol": {s: len(v) for s, v in sorted(kills.items())},
                        "activations_outside_windows": outside,
                        "inference_alerts": (counters.get("inference") or {}).get("alerts"),
                        "inference_cold": (counters.get("inference") or {}).get("cold")},
        "limits": limits, "windows": windows, "windows_summary": agg, "integrity": integrity, "verdict": verdict,
        "missing_records": "; ".join(([] if flags is not None else [MISSING_FLAGS]) +
                                     ([] if events.is_file() else [MISSING_EVENTS])),
    }


#: what a run folder without scores.csv cannot tell
MISSING_FLAGS = ("per-symbol anomaly flag timeline (exch_ts_ms, symbol, level, flag) from the inference stage, e.g. "
                 "scores.csv, to tell 'never flagged' from 'flagged while the kill switch already held' or 'flagged "
                 "while no quote was open'")
#: what a run folder without risk_events.csv cannot tell
MISSING_EVENTS = ("the kill switch's on/off transitions (exch_ts_ms, symbol, on|off, cause) from the strategy engine, "
                  "e.g. risk_events.csv: an activation with no open order and every release leave no trace in "
                  "orders.csv/fills.csv")


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _limits_text(lim: dict[str, Any]) -> str:
    inv, loss, fr = lim["inventory"], lim["loss"], lim["fill_rate"]
    rng = fr["range"]
    return (f"max |position| {inv['value']:g} <= {inv['limit']:g}: {'ok' if inv['ok'] else 'EXCEEDED'}; "
            f"worst equity {loss['value']:.4f} >= {loss['limit']}: {'ok' if loss['ok'] else 'BREACHED'} "
            f"(halted={loss['halted']}); fill rate {_pct(fr['value'])} "
            f"(symbols {_pct(rng[0]) if rng else 'n/a'}–{_pct(rng[1]) if rng else 'n/a'}, no configured limit); "
            f"order qty {lim['order_size']['value']:g} <= {lim['order_size']['limit']:g}, "
            f"rate {lim['order_rate']['value']}/s <= {lim['order_rate']['limit']:g}/s, "
            f"notional {lim['order_notional']['value']:.2f} <= {lim['order_notional']['limit']:g}")


def format_text(rep: dict[str, Any]) -> str:
    L: list[str] = []
    L.append(f"run {rep['run']}  strategy {rep['strategy']}  simulated {rep['simulated_s']:.1f} s")
    p = rep["limits"]["pnl"]
    L.append(f"P&L: realised {p['realized']:.4f}  unrealised {p['unrealized']:.4f}  fees {p['fees']:.4f}  "
             f"equity {p['equity']:.4f}  (quote currency)")
    for k in ("inventory", "loss", "fill_rate", "order_size", "order_notional", "order_rate"):
        c = rep["limits"][k]
        L.append(f"  {k:15s} {'ok  ' if c['ok'] else 'FAIL'} value={c['value']} limit={c['limit']}")
    for s, v in rep["limits"]["inventory"]["per_symbol"].items():
        L.append(f"    {s:14s} max|pos| {v['max_abs']:g}  final {v['final']:g}")
    ks = rep["kill_switch"]
    L.append(f"kill switch: attribution {ks['attribution']}; kills counter {ks['kills_counter']}, traced "
             f"{ks['activations_traced']}, untraced {ks['kills_untraced']}; inference alerts {ks['inference_alerts']}")
    for o in ks["activations_outside_windows"]:
        after = o["after_last_window_ms"]
        L.append(f"  kill outside the windows: {o['symbol']} at {o['kill_ms']} ms ("
                 + (f"{after} ms after its last window end)" if after is not None else "no window of it before)"))
    L.append(f"{'#':>3} {'symbol':8} {'kind':14} {'dur ms':>6} {'kill+ms':>7} {'gone+ms':>7} {'requote+':>8} "
             f"{'held':4} {'dark%':>6} {'in':>4} {'before':>6} {'exp':>6}  verdict")
    for w in rep["windows"]:
        k, q, s = w["kill"], w["quotes"], w["start_ms"]

        def rel(v: int | None, s: int = s) -> str:
            return "-" if v is None else f"{v - s}"

        L.append(f"{w['index']:>3} {w['symbol']:8} {w['kind']:14} {w['duration_ms']:>6} {rel(k['kill_ms']):>7} "
                 f"{rel(k['gone_ms']):>7} {rel(k['requote_ms']):>8} {'y' if k['held'] else 'n':4} "
                 f"{100 * w['dark_share']:6.1f} {q['in_window']:>4} {'-' if q['before'] is None else q['before']:>6}"
                 f" {q['expected_outside']:6.1f}  {w['why']}")
    a = rep["windows_summary"]
    if not a["windows_observed"]:
        L.append(f"windows: none observed ({a['windows_labelled']} labelled)")
    else:
        L.append(f"windows: {a['windows_observed']} observed of {a['windows_labelled']} labelled; stopped "
                 f"{a['stopped']}; kill in window {a['with_kill']}, first kill held {a['first_kill_held']}, some kill "
                 f"held {a['held']}; "
                 f"dark share mean {_pct(a['dark_share_mean'])} median {_pct(a['dark_share_median'])}; "
                 f"stop delay median {a['stop_delay_ms_median']} ms max {a['stop_delay_ms_max']} ms; quotes in windows "
                 f"{a['quotes_in_windows']} vs {a['quotes_expected_outside']:.1f} expected at the outside rate "
                 f"(ratio {a['quotes_ratio'] if a['quotes_ratio'] is None else round(a['quotes_ratio'], 3)})")
    L.append(f"  by kind: {a['by_kind']}")
    if a.get("flagged") is not None:
        sp = a.get("flag_sample_speed")
        how = ("every score, lockstep" if a.get("flag_every_score") else
               "sampled every 5 ms of wall time: at speed 0 that spans far more exchange time, so a short flag can "
               "be missed" if sp == 0 else "sampled every 5 ms" + (f" ({5 * sp:g} ms of exchange time)" if sp else ""))
        L.append(f"  the model's flag (scores.csv, {how}): raised in {a['flagged']} of {a['windows_observed']} windows")
    if not rep["integrity"]["complete"]:
        L.append(f"WARNING: records were lost, the reconstruction is incomplete: {rep['integrity']['lost_records']}")
    v = rep["verdict"]
    L.append(f"VERDICT limits (P&L, fill rate, inventory within configured limits): "
             f"{'PASS' if v['limits']['ok'] else 'FAIL'} — {v['limits']['text']}")
    sq = v["stops_quoting"]["ok"]
    L.append(f"VERDICT stops quoting during every labelled anomaly window: "
             f"{'N/A' if sq is None else 'PASS' if sq else 'FAIL'} — {v['stops_quoting']['text']}")
    if rep["missing_records"]:
        L.append(f"not in the run folder: {rep['missing_records']}")
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter,
                                 epilog="Exit status: 0 when both verdicts pass (or the run has no labelled window and "
                                        "the limits pass), 1 when one fails, 2 on a bad argument.")
    ap.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="a finished run folder of run.py")
    ap.add_argument("--json", metavar="PATH", type=Path, help="also write the full report as JSON here")
    a = ap.parse_args(argv)
    if not (a.run_dir / "fills.csv").is_file():
        ap.error(f"no fills.csv in {a.run_dir}: not a strategy run folder")
    rep = evaluate(a.run_dir)
    print(format_text(rep))
    if a.json:
        a.json.write_text(json.dumps(rep, indent=2, default=str))
    # no labelled window (a replay) checks the limits only
    return 0 if rep["verdict"]["limits"]["ok"] and rep["verdict"]["stops_quoting"]["ok"] is not False else 1


if __name__ == "__main__":
    sys.exit(main())
