"""The built-in market: a seeded multi-symbol exchange emitting Binance spot combined-stream messages.

Model, per symbol (all prices are plain ints in ticks, all sizes ints in lots; no floats in the book):

- A fair price (float, in ticks) follows a Gaussian random walk in simulated time.
- Order flow is one Poisson process per symbol whose events are drawn Gillespie-style from the
  current rates: limit buys and sells (placed around the fair price at a distance drawn from a
  mixture of a near-touch and a deep exponential; log-normal sizes), market orders (log-normal
  sizes, walk the book), and cancels (rate proportional to resting orders; half hit the most
  recent order at a best level, half a random order, biased to the one farther from fair). The
  resting depth settles at a few dozen levels per side.
- A real price-time-priority matching engine: per price level a FIFO deque of orders, per side a
  sorted price list. Marketable limit orders match first and rest the remainder; every fill is a
  trade against the maker order at the head of the queue. The order generator (never the engine)
  keeps each side non-empty: market orders take at most a quarter of a side, limit prices stop short of
  the deepest opposite level, and cancels never remove a side's last levels.
- Every book-changing event gets the next per-symbol update id. depthUpdate carries the net
  quantity of every level touched since the previous diff (one diff per event with
  depth_interval_ms=0), so diffs chain U == previous u + 1. A bookTicker goes out on every top
  change with that event's id; with aggregation, if the interval's last top change was not its last
  event, one more bookTicker (same top) carries the interval's u, so tickers and diffs line up.
- One wrapped REST snapshot per symbol, taken at the first event after that symbol's first 1-2
  diffs, so a client must buffer diffs and bridge with U <= lastUpdateId+1 <= u, as on Binance.
- Labelled anomalies arrive as a Poisson process in simulated time on a random free symbol, kinds in
  shuffled round-robin so every requested kind appears early: price_spike (fair jumps several
  sigma, then decays back), volume_surge (market order rate x10-20, one-sided), spread_blowout
  (orders near the top pulled, new ones placed far), book_wipe (one side cancelled en masse, slow
  refill). Labels carry their window in simulated ns and exchange ms, and their own seed.

One `random.Random(seed)` drives everything in event order, so a seed gives identical bytes.
Simulated time starts at `start_ms` (epoch ms); message timestamps are epoch ns of simulated time.
Before t=0 the book is seeded and the flow runs for `WARMUP_NS` unobserved (~10 ms of CPU), so the
first message already sees a settled book.

Two opt-in flavours, off by default (the default output is unchanged, byte for byte):
`market="usdm"` writes Binance USD-M futures messages (depthUpdate with "T" and "pu", bookTicker with
"e"/"T"/"E", trade with "X", snapshots with "E"/"T"; key order as in real captures), and
`agg_trades=True` adds an `@aggTrade` message per taker order and price next to the trades. For a
server that paces the market in real time (procs/sources/exchange.py) the simulator can also be
stepped: `run_until(t)` runs every event up to simulated time t, `flush_pending()` emits the pending
diffs now, and `book_snapshot()` is the current book as a REST depth answer.
"""

from __future__ import annotations

import argparse
import bisect
import gzip
import heapq
import math
import random
import sys
import time
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson

from procs.sources.replay import schedule_ns

if TYPE_CHECKING:
    from procs.config import Config

#: Anomaly kinds, in the order used when none are asked for explicitly.
ANOMALY_KINDS: tuple[str, ...] = ("price_spike", "volume_surge", "spread_blowout", "book_wipe")
#: Fair-price volatility per sqrt(second), relative to price (calm enough for a dense book).
SIGMA_REL = 1e-5
#: Limit orders per second per side at activity 1.
LIMIT_RATE = 50.0
#: Market orders per second at activity 1.
MARKET_RATE = 8.0
#: Cancel rate per resting order per second at activity 1 (sets ~60 resting orders per side).
CANCEL_RATE = 0.8
#: Share of limit orders placed near the touch (the rest spread deep into the book).
NEAR_SHARE = 0.4
#: Mean distance (ticks) of near-touch limit orders from fair.
NEAR_TICKS = 1.5
#: Simulated time run before t=0 so the book is already populated when output starts.
WARMUP_NS = 1_000_000_000
#: Levels kept on a side by mass cancels (a side is never emptied).
KEEP_LEVELS = 3
#: Levels per side in the REST snapshot (Binance's limit=1000).
SNAPSHOT_LIMIT = 1000
#: Zero quantity as Binance writes it: deletes a level.
ZERO_QTY = "0.00000000"
#: Message flavours: Binance spot, or USD-M futures.
MARKETS: tuple[str, ...] = ("spot", "usdm")
#: Bound on the cached decimal strings per symbol.
_FMT_CACHE = 1 << 16

# heap entry kinds; ties at one instant run in this order
_K_FLUSH = 0
_K_ANOM_END = 1
_K_ANOM = 2
_K_EVENT = 3


@dataclass(frozen=True)
class SymbolSpec:
    """Static market parameters of one symbol."""

    price: float  #: starting price
    tick_decimals: int  #: price precision: tick = 10**-tick_decimals
    lot_decimals: int  #: quantity precision: lot = 10**-lot_decimals
    activity: float  #: multiplier on all order-flow rates
    size_median: float  #: median limit order size in base units


#: Realistic defaults for the usual symbols; others get `default_spec(name)`.
SPECS: dict[str, SymbolSpec] = {
    "BTCUSDT": SymbolSpec(60_000.0, 2, 5, 2.0, 0.02),
    "ETHUSDT": SymbolSpec(3_000.0, 2, 4, 1.5, 0.3),
    "SOLUSDT": SymbolSpec(150.0, 2, 3, 1.0, 5.0),
    "BNBUSDT": SymbolSpec(600.0, 2, 3, 0.8, 1.0),
}


def default_spec(name: str) -> SymbolSpec:
    """Spec of `name`: the table entry, else one derived from a stable hash of the name."""
    spec = SPECS.get(name.upper())
    if spec is not None:
        return spec
    h = zlib.crc32(name.upper().encode())  # stable across runs, unlike hash()
    price = (2.0, 25.0, 250.0)[h % 3]
    tick_dec = (4, 3, 2)[h % 3]  # ~1e4-1e5 ticks per price, like real listings
    return SymbolSpec(price * (1 + (h >> 8) % 100 / 100), tick_dec, 2, 0.6, 500.0 / price)


@dataclass
class SimParams:
    """What to simulate; everything is in simulated time."""

    symbols: list[str]
    seed: int = 7
    anomalies_per_min: float = 2.0
    depth_interval_ms: int = 100
    rate_scale: float = 1.0
    start_ms: int = 1_700_000_000_000
    anomaly_kinds: tuple[str, ...] = field(default=ANOMALY_KINDS)
    market: str = "spot"  #: message flavour, one of MARKETS
    agg_trades: bool = False  #: also emit <symbol>@aggTrade messages

    def __post_init__(self) -> None:
        if not self.symbols:
            raise ValueError("symbols must not be empty")
        self.symbols = [s.upper() for s in self.symbols]
        if len(set(self.symbols)) != len(self.symbols):
            raise ValueError(f"duplicate symbols: symbols={self.symbols}")
        if self.anomalies_per_min < 0 or self.depth_interval_ms < 0 or self.rate_scale <= 0:
            raise ValueError(f"need anomalies_per_min >= 0, depth_interval_ms >= 0, rate_scale > 0: {self}")
        bad = [k for k in self.anomaly_kinds if k not in ANOMALY_KINDS]
        if bad or not self.anomaly_kinds:
            raise ValueError(f"anomaly_kinds expected a non-empty subset of {ANOMALY_KINDS} found={bad}")
        if self.market not in MARKETS:
            raise ValueError(f"market expected one of {MARKETS} found={self.market!r}")


class _Fmt(dict):
    """int (ticks or lots) → decimal string, cached: prices and sizes repeat heavily."""

    def __init__(self, decimals: int) -> None:
        super().__init__()
        self.decimals = decimals
        self.scale = 10 ** decimals

    def __missing__(self, v: int) -> str:
        d = self.decimals
        s = f"{v // self.scale}.{v % self.scale:0{d}d}" if d else str(v)
        if len(self) >= _FMT_CACHE:
            self.clear()
        self[v] = s
        return s


class Book:
    """Price-time-priority limit order book of one symbol (the matching engine, no message output).

    Orders are lists `[qty, oid, side, price, live_index]` (side 0 bid, 1 ask); a level is
    `[total_qty, deque[order]]`. Bid prices are kept ascending, ask prices negated ascending, so
    both bests are at `[-1]`. Cancelled orders are zeroed and skipped lazily at the queue head.
    `touched[side]` collects the prices changed since the caller last cleared it; `fills` receives
    `(price, qty, buyer_is_maker, maker_oid)` per match.
    """

    def __init__(self) -> None:
        self.px: tuple[list[int], list[int]] = ([], [])
        self.lv: tuple[dict[int, list], dict[int, list]] = ({}, {})
        self.total = [0, 0]  # resting quantity per side, for clamping market orders
        self.live: list[list[int]] = []
        self.next_oid = 1
        self.touched: tuple[set[int], set[int]] = (set(), set())
        self.fills: list[tuple[int, int, bool, int]] = []

    # -- queries ----------------------------------------------------------------------------
    def best(self, side: int) -> int:
        """Best price of a side in ticks (0 if empty)."""
        px = self.px[side]
        if not px:
            return 0
        return px[-1] if side == 0 else -px[-1]

    def top(self) -> tuple[int, int, int, int]:
        """(bid, bid_qty, ask, ask_qty), zeros for an empty side."""
        bpx, apx = self.px
        bp = bpx[-1] if bpx else 0
        ap = -apx[-1] if apx else 0
        return bp, self.lv[0][bp][0] if bpx else 0, ap, self.lv[1][ap][0] if apx else 0

    def level_qty(self, side: int, price: int) -> int:
        lv = self.lv[side].get(price)
        return lv[0] if lv is not None else 0

    def levels(self, side: int) -> list[tuple[int, int]]:
        """(price, qty) of a side, best first."""
        lvs = self.lv[side]
        return [(p, lvs[p][0]) for p in reversed(self.px[0])] if side == 0 else \
            [(-n, lvs[-n][0]) for n in reversed(self.px[1])]

    def deepest(self, side: int) -> int:
        px = self.px[side]
        return (px[0] if side == 0 else -px[0]) if px else 0

    # -- operations -------------------------------------------------------------------------
    def take(self, side: int, qty: int, limit: int | None = None) -> int:
        """A taker on `side` (0 buy, 1 sell) matches up to `qty` at prices no worse than `limit`.

        Returns the unfilled quantity. Fills go to `self.fills`, levels emptied are deleted.
        """
        opp = 1 - side
        px = self.px[opp]
        lvs = self.lv[opp]
        touched = self.touched[opp]
        fills = self.fills
        maker_is_buyer = side == 1
        total = self.total
        while qty and px:
            p = -px[-1] if side == 0 else px[-1]
            if limit is not None and (p > limit if side == 0 else p < limit):
                break
            lv = lvs[p]
            dq = lv[1]
            while qty and dq:
                o = dq[0]
                oq = o[0]
                if oq == 0:
                    dq.popleft()  # lazily cancelled
                    continue
                f = oq if oq <= qty else qty
                fills.append((p, f, maker_is_buyer, o[1]))
                o[0] = oq - f
                lv[0] -= f
                total[opp] -= f
                qty -= f
                if oq == f:
                    dq.popleft()
                    self._unlive(o)
            touched.add(p)
            if lv[0] == 0:
                del lvs[p]
                px.pop()
        return qty

    def limit(self, side: int, price: int, qty: int) -> list[int] | None:
        """Limit order: match what crosses, rest the remainder; returns the resting order or None."""
        qty = self.take(side, qty, price)
        if not qty:
            return None
        oid = self.next_oid
        self.next_oid = oid + 1
        o = [qty, oid, side, price, len(self.live)]
        self.live.append(o)
        lvs = self.lv[side]
        lv = lvs.get(price)
        if lv is None:
            lvs[price] = [qty, deque((o,))]
            bisect.insort(self.px[side], price if side == 0 else -price)
        else:
            lv[0] += qty
            lv[1].append(o)
        self.total[side] += qty
        self.touched[side].add(price)
        return o

    def cancel(self, o: list[int]) -> bool:
        """Cancel a resting order; False if it is no longer live."""
        q = o[0]
        if q == 0:
            return False
        side = o[2]
        p = o[3]
        lvs = self.lv[side]
        lv = lvs[p]
        lv[0] -= q
        self.total[side] -= q
        o[0] = 0
        self._unlive(o)
        self.touched[side].add(p)
        if lv[0] == 0:
            del lvs[p]
            px = self.px[side]
            key = p if side == 0 else -p
            del px[bisect.bisect_left(px, key)]
        elif lv[1][0] is o:
            lv[1].popleft()  # keep the queue head live: cheap when it is
        return True

    def _unlive(self, o: list[int]) -> None:
        live = self.live
        last = live.pop()
        if last is not o:
            i = o[4]
            live[i] = last
            last[4] = i

    def crossed(self) -> bool:
        bpx, apx = self.px
        return bool(bpx and apx and bpx[-1] >= -apx[-1])


class _Symbol:
    """One simulated symbol: order flow + book + message output."""

    def __init__(self, sim: Simulator, index: int, name: str) -> None:
        self.sim = sim
        self.index = index
        self.name = name
        self.spec = spec = default_spec(name)
        low = name.lower()
        self.s_depth = f"{low}@depth@{sim.params.depth_interval_ms}ms" if sim.params.depth_interval_ms else \
            f"{low}@depth@0ms"
        self.s_trade = f"{low}@trade"
        self.s_agg = f"{low}@aggTrade"
        self.s_ticker = f"{low}@bookTicker"
        self.s_snap = f"{low}@depthSnapshot"
        self.usdm = sim.params.market == "usdm"
        self.pstr = _Fmt(spec.tick_decimals)
        self.qstr = _Fmt(spec.lot_decimals)
        # futures write zero in the lot precision ("0.000"), spot always with 8 decimals
        self.zero = self.qstr[0] if self.usdm else ZERO_QTY
        self.qstr[0] = self.zero
        rng = sim.rng
        tick = 10.0 ** -spec.tick_decimals
        self.fair = spec.price / tick
        self.sigma = spec.price * SIGMA_REL / tick  # ticks per sqrt(second)
        self.deep = max(15.0, self.sigma)  # mean depth (ticks) of deep limit orders
        self.size_mu = math.log(spec.size_median * 10 ** spec.lot_decimals)
        act = spec.activity * sim.params.rate_scale
        self.act = act
        self.book = Book()
        self.uid = rng.randrange(10 ** 9, 5 * 10 ** 10)  # Binance-like large ids
        self.tid = rng.randrange(10 ** 8, 4 * 10 ** 9)
        self.aid = self.tid // 2  # aggTrade ids: derived, so the flavour draws nothing from rng
        self.first_u = 0  # U of the diff being accumulated (0: nothing pending)
        self.last_top: tuple[int, int, int, int] = (0, 0, 0, 0)
        self.last_tu = 0  # update id of the last bookTicker
        self.spread_avg = 2.0  # EWMA of the spread in ticks, sizes spread_blowout
        self.n_pre = rng.choice((1, 2))  # diffs before the snapshot
        self.pre_diffs = self.n_pre
        self.snap_pending = False
        self.snapped = False
        self.t_last = -WARMUP_NS
        self.E = 0
        self.T = 0  # ms of the last book-changing event: futures' transaction time "T"
        self.last_du = 0  # u of the previous diff: futures' "pu"
        self.reset_flow()
        self.anom: str | None = None
        self.spike = 0.0
        self.spike_t0 = 0
        self.spike_dur = 1

    def reset_flow(self) -> None:
        """Normal order-flow rates (also the end of every anomaly)."""
        act = self.act
        self.lam_b = self.lam_a = LIMIT_RATE * act
        self.lam_m = MARKET_RATE * act
        self.theta = CANCEL_RATE * act
        self.buy_share = 0.5
        self.min_dist = 0.0
        self.msize = 1.0
        self.anom = None
        self.spike = 0.0

    # -- order flow --------------------------------------------------------------------------
    def _size(self, mult: float = 1.0) -> int:
        return int(self.sim.rng.lognormvariate(self.size_mu, 0.9) * mult) + 1

    def _ref(self, t: int) -> float:
        if self.spike:
            x = (t - self.spike_t0) / self.spike_dur
            return self.fair + (self.spike * (1.0 - x) ** 2 if x < 1.0 else 0.0)  # jump, then decay
        return self.fair

    def _limit(self, side: int, ref: float) -> bool:
        rng = self.sim.rng
        book = self.book
        d = self.min_dist + rng.expovariate(1.0 / NEAR_TICKS if rng.random() < NEAR_SHARE else 1.0 / self.deep)
        if side == 0:
            price = max(1, math.floor(ref - d))
            opp = book.px[1]
            if opp and price >= -opp[0]:
                price = -opp[0] - 1  # never sweep the whole opposite side
        else:
            price = max(1, math.ceil(ref + d))
            opp = book.px[0]
            if opp and price <= opp[0]:
                price = opp[0] + 1
        book.limit(side, price, self._size())
        return True

    def _market(self) -> bool:
        rng = self.sim.rng
        side = 0 if rng.random() < self.buy_share else 1
        book = self.book
        cap = book.total[1 - side] // 4  # at most a quarter of a side: a side is never emptied
        q = min(self._size(2.0 * self.msize), cap)
        if q <= 0:
            return False
        book.take(side, q)
        return True

    def _cancel(self, ref: float) -> bool:
        rng = self.sim.rng
        book = self.book
        live = book.live
        if not live:
            return False
        if rng.random() < 0.5:
            side = 0 if rng.random() < 0.5 else 1  # the newest order at a best level
            px = book.px[side]
            if not px:
                return False
            p = px[-1] if side == 0 else -px[-1]
            o = None
            for c in reversed(book.lv[side][p][1]):
                if c[0]:
                    o = c
                    break
            if o is None:
                return False
        else:
            a = live[int(rng.random() * len(live))]
            b = live[int(rng.random() * len(live))]
            o = a if abs(a[3] - ref) >= abs(b[3] - ref) else b  # far orders go stale first
        side = o[2]
        if len(book.px[side]) <= KEEP_LEVELS and book.lv[side][o[3]][0] == o[0]:
            return False  # would remove one of a side's last levels
        return book.cancel(o)

    def step(self, t: int) -> int:
        """Run one order-flow event at `t` (ns); returns the time of the next."""
        rng = self.sim.rng
        dt = t - self.t_last
        self.t_last = t
        self.E = self.sim.start_ms + t // 1_000_000
        self.fair += self.sigma * math.sqrt(dt * 1e-9) * rng.gauss(0.0, 1.0)
        ref = self._ref(t)
        lb = self.lam_b
        la = lb + self.lam_a
        lm = la + self.lam_m
        rate = lm + self.theta * len(self.book.live)
        x = rng.random() * rate
        if x < lb:
            changed = self._limit(0, ref)
        elif x < la:
            changed = self._limit(1, ref)
        elif x < lm:
            changed = self._market()
        else:
            changed = self._cancel(ref)
        if changed:
            self.after_event(t)
        return t + int(rng.expovariate(rate) * 1e9) + 1

    # -- output ------------------------------------------------------------------------------
    def after_event(self, t: int) -> None:
        """Book changed: next update id, trades, bookTicker on a top change, snapshot, 0 ms diff."""
        sim = self.sim
        self.uid = uid = self.uid + 1
        if not self.first_u:
            self.first_u = uid
        out = sim.out
        ts = sim.base_ns + t
        self.T = sim.start_ms + t // 1_000_000
        book = self.book
        if book.fills:
            E = self.E
            name = self.name
            pstr = self.pstr
            qstr = self.qstr
            stream = self.s_trade
            tid0 = self.tid + 1
            if self.usdm:
                for p, q, m, _ in book.fills:
                    self.tid += 1
                    out.append((ts, orjson.dumps({"stream": stream, "data": {
                        "e": "trade", "E": E, "T": E, "s": name, "t": self.tid, "p": pstr[p], "q": qstr[q],
                        "X": "MARKET", "m": m}})))
            else:
                for p, q, m, _ in book.fills:
                    self.tid += 1
                    out.append((ts, orjson.dumps({"stream": stream, "data": {
                        "e": "trade", "E": E, "s": name, "t": self.tid, "p": pstr[p], "q": qstr[q], "T": E,
                        "m": m, "M": True}})))
            if sim.params.agg_trades:
                self._agg_trades(ts, E, tid0)
            sim.counts[1] += len(book.fills)
            book.fills.clear()
        top = book.top()
        if top != self.last_top:
            self.last_top = top
            self._ticker(ts, uid, top)
            if top[0] and top[2]:
                self.spread_avg += 0.01 * (top[2] - top[0] - self.spread_avg)
        if self.snap_pending:
            self._snapshot(ts)
        if not sim.interval_ns:
            self.flush(t)

    def _agg_trades(self, ts: int, E: int, tid0: int) -> None:
        """One aggTrade per run of fills at one price (one taker order), trade ids tid0.. in fill order."""
        out = self.sim.out
        fills = self.book.fills
        pstr = self.pstr
        qstr = self.qstr
        name = self.name
        stream = self.s_agg
        i = 0
        n = len(fills)
        while i < n:
            p, q, m, _ = fills[i]
            j = i + 1
            while j < n and fills[j][0] == p:
                q += fills[j][1]
                j += 1
            self.aid += 1
            f, last = tid0 + i, tid0 + j - 1
            data = {"e": "aggTrade", "E": E, "a": self.aid, "s": name, "p": pstr[p], "q": qstr[q], "f": f,
                    "l": last, "T": E, "m": m} if self.usdm else \
                {"e": "aggTrade", "E": E, "s": name, "a": self.aid, "p": pstr[p], "q": qstr[q], "f": f, "l": last,
                 "T": E, "m": m, "M": True}
            out.append((ts, orjson.dumps({"stream": stream, "data": data})))
            i = j

    def _ticker(self, ts: int, uid: int, top: tuple[int, int, int, int]) -> None:
        self.last_tu = uid
        pstr = self.pstr
        qstr = self.qstr
        if self.usdm:
            E = self.sim.start_ms + (ts - self.sim.base_ns) // 1_000_000
            self.sim.out.append((ts, orjson.dumps({"stream": self.s_ticker, "data": {
                "e": "bookTicker", "u": uid, "s": self.name, "b": pstr[top[0]], "B": qstr[top[1]],
                "a": pstr[top[2]], "A": qstr[top[3]], "T": self.T, "E": E}})))
        else:
            self.sim.out.append((ts, orjson.dumps({"stream": self.s_ticker, "data": {
                "u": uid, "s": self.name, "b": pstr[top[0]], "B": qstr[top[1]], "a": pstr[top[2]],
                "A": qstr[top[3]]}})))
        self.sim.counts[2] += 1

    def snapshot_data(self, limit: int, E: int) -> dict:
        """The book as a REST depth answer (levels best first, at most `limit` a side); futures add E and T."""
        pstr = self.pstr
        qstr = self.qstr
        book = self.book
        bids = [[pstr[p], qstr[q]] for p, q in book.levels(0)[:limit]]
        asks = [[pstr[p], qstr[q]] for p, q in book.levels(1)[:limit]]
        if self.usdm:
            return {"lastUpdateId": self.uid, "E": E, "T": self.T, "bids": bids, "asks": asks}
        return {"lastUpdateId": self.uid, "bids": bids, "asks": asks}

    def _snapshot(self, ts: int) -> None:
        self.snap_pending = False
        self.snapped = True
        data = self.snapshot_data(SNAPSHOT_LIMIT, self.sim.start_ms + (ts - self.sim.base_ns) // 1_000_000)
        self.sim.out.append((ts, orjson.dumps({"stream": self.s_snap, "data": data})))
        self.sim.counts[3] += 1

    def flush(self, t: int) -> None:
        """Emit the depthUpdate for the levels touched since the last one (nothing if none)."""
        if not self.first_u:
            return
        book = self.book
        tb, ta = book.touched
        pstr = self.pstr
        qstr = self.qstr
        lb, la = book.lv
        uid = self.uid
        zero = self.zero
        b = [[pstr[p], qstr[lb[p][0]] if p in lb else zero] for p in sorted(tb, reverse=True)]
        a = [[pstr[p], qstr[la[p][0]] if p in la else zero] for p in sorted(ta)]
        tb.clear()
        ta.clear()
        sim = self.sim
        ts = sim.base_ns + t
        E = sim.start_ms + t // 1_000_000
        if self.usdm:
            sim.out.append((ts, orjson.dumps({"stream": self.s_depth, "data": {
                "e": "depthUpdate", "E": E, "T": self.T, "s": self.name, "U": self.first_u, "u": uid,
                "pu": self.last_du, "b": b, "a": a}})))
        else:
            sim.out.append((ts, orjson.dumps({"stream": self.s_depth, "data": {
                "e": "depthUpdate", "E": E, "s": self.name, "U": self.first_u, "u": uid, "b": b, "a": a}})))
        self.last_du = uid
        sim.counts[0] += 1
        if self.first_u <= self.last_tu < uid:
            self._ticker(ts, uid, self.last_top)  # the interval's top again, under the u a book can check
        self.first_u = 0
        if not self.snapped and not self.snap_pending:
            self.pre_diffs -= 1
            if self.pre_diffs <= 0:
                self.snap_pending = True  # taken at the next event, mid-interval like a REST call

    def go_live(self) -> None:
        """End of warm-up: forget what was touched, so the first diff starts now."""
        for s in self.book.touched:
            s.clear()
        self.book.fills.clear()
        self.first_u = 0
        self.last_du = self.uid  # the first live diff chains onto the (unseen) warm-up ones
        self.last_top = self.book.top()
        self.last_tu = 0
        self.pre_diffs = self.n_pre  # 0 ms diffs of the warm-up do not count
        self.snap_pending = False
        self.snapped = False

    # -- anomalies ---------------------------------------------------------------------------
    def _mass_cancel(self, t: int, orders: list[list[int]]) -> None:
        """Cancel many orders at one instant, one update id each (a burst, like a real pull)."""
        book = self.book
        for o in orders:
            side = o[2]
            if len(book.px[side]) <= KEEP_LEVELS and book.lv[side][o[3]][0] == o[0]:
                continue
            if book.cancel(o):
                self.after_event(t)

    def start_anomaly(self, kind: str, sub: random.Random, t: int, dur_ns: int) -> None:
        self.anom = kind
        book = self.book
        if kind == "price_spike":
            self.spike = sub.choice((-1, 1)) * sub.uniform(6.0, 10.0) * max(2.0 * self.sigma, self.deep)
            self.spike_t0 = t
            self.spike_dur = dur_ns
        elif kind == "volume_surge":
            self.lam_m = MARKET_RATE * self.act * sub.uniform(12.0, 20.0)
            self.buy_share = sub.choice((0.2, 0.8))
            self.msize = 1.5
            if self.buy_share > 0.5:
                self.lam_a *= 1.5  # makers refill the side being hit, so the burst keeps trading
            else:
                self.lam_b *= 1.5
        elif kind == "spread_blowout":
            half = max(6.0, sub.uniform(5.0, 8.0) * self.spread_avg)
            self.min_dist = half
            bb, ba = book.best(0), book.best(1)
            mid = (bb + ba) / 2 if bb and ba else self.fair
            victims = [o for o in book.live if (o[2] == 0 and o[3] > mid - half) or (o[2] == 1 and o[3] < mid + half)]
            victims.sort(key=lambda o: abs(o[3] - mid))  # innermost first, like a real pull
            self._mass_cancel(t, victims)
        elif kind == "book_wipe":
            side = sub.choice((0, 1))
            keep = set(book.px[side][:KEEP_LEVELS])
            key = 1 if side == 0 else -1
            victims = [o for o in book.live if o[2] == side and o[3] * key not in keep]
            victims.sort(key=lambda o: -o[3] * key)  # from the top down
            self._mass_cancel(t, victims)
            if side == 0:
                self.lam_b *= 0.1  # liquidity providers stay away for the window
            else:
                self.lam_a *= 0.1


#: Duration range (s) per anomaly kind.
_DURATION_S = {"price_spike": (3.0, 8.0), "volume_surge": (2.0, 5.0), "spread_blowout": (2.0, 5.0),
               "book_wipe": (2.0, 4.0)}


class Simulator:
    """The market: `messages()` yields (sim_ts_ns, raw JSON bytes) forever, in time order.

    `labels` lists the anomalies injected so far (dicts, see the module docstring); `counts` the
    messages generated per kind (depthUpdate, trade, bookTicker, depthSnapshot).
    """

    def __init__(self, params: SimParams) -> None:
        self.params = params
        self.rng = random.Random(params.seed)
        self.start_ms = params.start_ms
        self.base_ns = params.start_ms * 1_000_000
        self.interval_ns = params.depth_interval_ms * 1_000_000
        self.out: list[tuple[int, bytes]] = []
        self.counts = [0, 0, 0, 0]
        self.labels: list[dict] = []
        self.syms = [_Symbol(self, i, n) for i, n in enumerate(params.symbols)]
        self._by_name = {s.name: s for s in self.syms}
        self._kinds: list[str] = []
        self._started = False
        self._iterating = False  # messages() owns the run; run_until() may not step it
        self._heap: list[tuple[int, int, int]] = []
        self._live = False  # past the warm-up (an entry at t >= 0 has run)
        self._now = -WARMUP_NS  # the latest run_until() time
        for s in self.syms:
            self._seed_book(s)

    def _seed_book(self, s: _Symbol) -> None:
        """Initial resting orders, so warm-up starts from a plausible book."""
        for _ in range(60):
            s._limit(0, s.fair)
            s._limit(1, s.fair)

    @property
    def message_counts(self) -> dict[str, int]:
        return dict(zip(("depthUpdate", "trade", "bookTicker", "depthSnapshot"), self.counts, strict=True))

    def _next_anomaly_ns(self, t: int) -> int:
        rate = self.params.anomalies_per_min / 60.0
        return t + int(self.rng.expovariate(rate) * 1e9) + 1

    def _start_anomaly(self, t: int, heap: list) -> None:
        rng = self.rng
        free = [s for s in self.syms if s.anom is None]
        if not free:
            return
        s = rng.choice(free)
        if not self._kinds:
            self._kinds = list(self.params.anomaly_kinds)
            rng.shuffle(self._kinds)  # round-robin over shuffled kinds: every kind shows up early
        kind = self._kinds.pop()
        seed = rng.getrandbits(32)
        sub = random.Random(seed)
        lo, hi = _DURATION_S[kind]
        dur = int(sub.uniform(lo, hi) * 1e9)
        self.labels.append({"kind": kind, "symbol": s.name, "start_ns": self.base_ns + t,
                            "end_ns": self.base_ns + t + dur, "start_E_ms": self.start_ms + t // 1_000_000,
                            "end_E_ms": self.start_ms + (t + dur) // 1_000_000, "seed": seed})
        s.E = self.start_ms + t // 1_000_000
        s.start_anomaly(kind, sub, t, dur)
        heapq.heappush(heap, (t + dur, _K_ANOM_END, s.index))

    def messages(self) -> Iterator[tuple[int, bytes]]:
        """(sim_ts_ns, raw) forever, time-ordered. One pass per Simulator (the market state is not rewound)."""
        if self._started:
            raise RuntimeError("Simulator.messages() can be iterated once; make a new Simulator to start over")
        self._started = True
        self._iterating = True
        return self._run()

    def _run(self) -> Iterator[tuple[int, bytes]]:
        self._init_heap()  # on the first next(), as before: nothing draws from rng earlier
        out = self.out
        step = self._step
        while True:
            step()
            if out:
                yield from out
                out.clear()

    def _init_heap(self) -> None:
        """The first arrivals, the first flush and the first anomaly: the run's first draws from rng."""
        rng = self.rng
        heap: list[tuple[int, int, int]] = []
        for s in self.syms:
            heap.append((-WARMUP_NS + int(rng.expovariate(200.0) * 1e9), _K_EVENT, s.index))
        if self.interval_ns:
            heap.append((self.interval_ns, _K_FLUSH, 0))
        if self.params.anomalies_per_min > 0:
            heap.append((self._next_anomaly_ns(0), _K_ANOM, 0))
        heapq.heapify(heap)
        self._heap = heap

    def _step(self) -> None:
        """Run the next heap entry (event, flush, anomaly start or end); its messages are left in `out`.

        Warm-up output (t < 0) is discarded; the first entry at t >= 0 resets the counts and every
        symbol's pending diff, so output starts clean.
        """
        heap = self._heap
        t, kind, i = heapq.heappop(heap)
        syms = self.syms
        if not self._live and t >= 0:
            self._live = True
            self.out.clear()
            self.counts[:] = [0, 0, 0, 0]
            for s in syms:
                s.go_live()
        if kind == _K_EVENT:
            heapq.heappush(heap, (syms[i].step(t), _K_EVENT, i))
        elif kind == _K_FLUSH:
            for s in syms:
                s.flush(t)
            heapq.heappush(heap, (t + self.interval_ns, _K_FLUSH, 0))
        elif kind == _K_ANOM:
            self._start_anomaly(t, heap)
            heapq.heappush(heap, (self._next_anomaly_ns(t), _K_ANOM, 0))
        else:
            syms[i].reset_flow()
        if not self._live:
            self.out.clear()

    # -- stepping in simulated time (for a server pacing the market in real time) ------------------
    def run_until(self, t_ns: int) -> list[tuple[int, bytes]]:
        """Run every event at simulated time <= `t_ns` (ns after start_ms) and return its messages, time-ordered.

        The stepping counterpart of `messages()` (a Simulator runs one way or the other, not both): a
        server calls it with its clock, so the book never runs ahead of time and `book_snapshot()` is
        the book as of now. The first call also runs the warm-up. Same seed and same calls, same bytes.
        """
        if not self._started:
            self._started = True
            self._init_heap()
        elif self._iterating:
            raise RuntimeError("Simulator.run_until() after messages(): a Simulator runs one way; make a new one")
        heap = self._heap
        out = self.out
        step = self._step
        res: list[tuple[int, bytes]] = []
        while heap[0][0] <= t_ns:
            step()
            if out:
                res.extend(out)
                out.clear()
        if t_ns > self._now:
            self._now = t_ns
        return res

    def next_event_ns(self) -> int:
        """Simulated time (ns after start_ms) of the next event, flush or anomaly; needs run_until() first."""
        if not self._heap:
            raise RuntimeError("Simulator.next_event_ns() before run_until(): the market has not started")
        return self._heap[0][0]

    def flush_pending(self) -> list[tuple[int, bytes]]:
        """Emit every symbol's pending diff now (at the last run_until time) and return the messages.

        Diffs still chain (U == previous u + 1); the periodic flushes keep their schedule, so the next
        one carries only what changed since. Nothing before the market is live (t >= 0).
        """
        if not self._live:
            return []
        for s in self.syms:
            s.flush(self._now)
        res = list(self.out)
        self.out.clear()
        return res

    def book_snapshot(self, symbol: str, limit: int = SNAPSHOT_LIMIT) -> dict:
        """The current book of `symbol` as Binance's REST depth answer: lastUpdateId is the last event applied.

        Levels best first, at most `limit` a side; USD-M adds "E" (now) and "T" (the last event's time).
        """
        s = self._by_name.get(symbol.upper())
        if s is None:
            raise KeyError(f"book_snapshot: symbol expected one of {list(self._by_name)} found={symbol!r}")
        if limit < 1:
            raise ValueError(f"book_snapshot: limit expected >= 1 found={limit}")
        return s.snapshot_data(limit, self.start_ms + max(self._now, 0) // 1_000_000)


def paced_messages(config: Config, start_ns: int, labels_path: str | None = None) -> Iterator[tuple[int, int, bytes]]:
    """(due_ns, sim_ts_ns, raw) of the simulator configured by `config.sim`, paced by `config.source.speed`.

    due_ns = start_ns + (ts - ts0) / speed on the caller's monotonic clock (speed 0: start_ns, i.e. at
    once); the caller waits, this never sleeps. Each new label is appended to `labels_path` (JSON
    lines, flushed) as soon as it exists. Endless.
    """
    sc = config.sim
    params = SimParams(symbols=list(sc.symbols), seed=sc.seed, anomalies_per_min=sc.anomalies_per_min,
                       depth_interval_ms=sc.depth_interval_ms, rate_scale=sc.rate_scale)
    speed = config.source.speed
    sim = Simulator(params)
    labels = sim.labels
    f = open(labels_path, "ab") if labels_path else None  # noqa: SIM115 - lives as long as the generator
    written = 0
    ts0 = None
    try:
        for ts, raw in sim.messages():
            if ts0 is None:
                ts0 = ts
            if f is not None and len(labels) > written:
                for lab in labels[written:]:
                    f.write(orjson.dumps(lab) + b"\n")
                f.flush()
                written = len(labels)
            yield schedule_ns(ts, ts0, start_ns, speed), ts, raw
    finally:
        if f is not None:
            f.close()


def write_capture(path: str, params: SimParams, seconds: float, labels_path: str | None = None,
                  progress: bool = False) -> dict:
    """Write `seconds` of simulated market as `<ts_ns> <json>` lines (gzip if path ends .gz); returns counts."""
    sim = Simulator(params)
    end = sim.base_ns + int(seconds * 1e9)
    n = 0
    buf: list[bytes] = []
    t_wall = time.perf_counter()
    next_report = t_wall + 1.0
    with (gzip.open(path, "wb", compresslevel=5) if str(path).endswith(".gz") else open(path, "wb")) as f:
        for ts, raw in sim.messages():
            if ts >= end:
                break
            buf.append(b"%d %b\n" % (ts, raw))
            n += 1
            if len(buf) >= 4096:
                f.write(b"".join(buf))
                buf.clear()
                if progress and time.perf_counter() >= next_report:
                    next_report += 1.0
                    print(f"simulator: {(ts - sim.base_ns) / 1e9:7.1f}/{seconds:g} s simulated, {n} messages",
                          file=sys.stderr, flush=True)
        f.write(b"".join(buf))
    if labels_path:
        with open(labels_path, "wb") as lf:
            for lab in sim.labels:
                lf.write(orjson.dumps(lab) + b"\n")
    wall = time.perf_counter() - t_wall
    res = {"messages": n, **sim.message_counts, "labels": len(sim.labels), "seconds": seconds,
           "symbols": list(params.symbols), "wall_s": round(wall, 3),
           "messages_per_s": round(n / wall) if wall > 0 else 0}
    if progress:
        print(f"simulator: wrote {path}: {res}", file=sys.stderr, flush=True)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m procs.sources.simulator",
                                 description="Write a simulated Binance capture (<ts_ns> <json> lines) "
                                             "that run.py --replay and scripts/verify_book.py accept.")
    ap.add_argument("out", metavar="OUT", help="capture file to write (gzip if it ends .gz)")
    ap.add_argument("--seconds", type=float, default=60.0, help="simulated seconds (default %(default)s)")
    ap.add_argument("--symbols", default="BTCUSDT,ETHUSDT,SOLUSDT,BNBUSDT",
                    help="comma-separated symbols (default %(default)s)")
    ap.add_argument("--seed", type=int, default=7, help="random seed (default %(default)s)")
    ap.add_argument("--anomalies-per-min", type=float, default=2.0,
                    help="labelled anomalies per simulated minute (default %(default)s)")
    ap.add_argument("--depth-interval-ms", type=int, default=100,
                    help="depthUpdate aggregation in ms, 0 for one diff per event (default %(default)s)")
    ap.add_argument("--rate-scale", type=float, default=1.0, help="multiplier on order-flow rates")
    ap.add_argument("--market", choices=MARKETS, default="spot",
                    help="message flavour: Binance spot or USD-M futures (default %(default)s)")
    ap.add_argument("--labels", metavar="PATH", default=None, help="write the anomaly labels here (JSON lines)")
    ap.add_argument("--quiet", action="store_true", help="no progress on stderr")
    a = ap.parse_args(argv)
    if a.seconds <= 0:
        ap.error(f"--seconds must be > 0: found {a.seconds}")
    try:
        params = SimParams(symbols=[s for s in a.symbols.split(",") if s], seed=a.seed,
                           anomalies_per_min=a.anomalies_per_min, depth_interval_ms=a.depth_interval_ms,
                           rate_scale=a.rate_scale, market=a.market)
    except ValueError as exc:
        ap.error(str(exc))
    write_capture(a.out, params, a.seconds, labels_path=a.labels, progress=not a.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
