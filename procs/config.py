"""Run configuration: defaults, a TOML file, then command-line overrides (in that order).

Every field is typed; a wrong type or value is refused with a message that names the field,
the expected and the found value. `tickpipe.example.toml` documents every key.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    pass


@dataclass
class RunConfig:
    duration_s: float = 20.0  #: stop after this many seconds (0: until the source ends or Ctrl-C)
    max_messages: int = 0  #: stop after the feed has published this many raw messages (0: no limit)
    placement: str = "auto"  #: e.g. "feed,book,strategy@0 inference@1"; auto picks from the cores
    wait: str = "auto"  #: spin | yield | park | auto, with parameters: "park:yield_ns=100000"
    out_dir: str = "runs"  #: each run writes a folder here
    status_interval_s: float = 1.0  #: one status line this often (--quiet turns them off)
    snapshot_interval_s: float = 1.0  #: histogram interval for the .hlog files
    ready_timeout_s: float = 120.0  #: give up if a stage is not ready (JIT compiled, attached) by then
    stop_grace_s: float = 3.0  #: SIGTERM, then SIGKILL after this long
    realtime: bool = False  #: mlockall and SCHED_FIFO for pinned stages (only when asked)


@dataclass
class SourceConfig:
    kind: str = "sim"  #: sim | replay | live
    path: str = ""  #: replay: capture file (<ts_ns> <json> lines, gzip or plain)
    speed: float = 1.0  #: replay/sim pacing: 1 real time, 10 ten times faster, 0 as fast as possible
    start_offset_s: float = 0.0  #: replay: skip this much of the capture
    replay_duration_s: float = 0.0  #: replay: play this much of the capture (0: all)
    loop: bool = False  #: replay: start again at the end


@dataclass
class SimConfig:
    symbols: list[str] = field(default_factory=lambda: ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT"])
    seed: int = 7
    anomalies_per_min: float = 2.0  #: labelled anomalies injected per minute of simulated time
    depth_interval_ms: int = 100  #: depthUpdate aggregation, like @depth@100ms (0: one per event)
    rate_scale: float = 1.0  #: multiplies the order-flow rates (2: twice the messages per simulated second)


@dataclass
class LiveConfig:
    market: str = "spot"  #: spot | usdm (Binance USD-M futures)
    symbols: list[str] = field(default_factory=lambda: ["BTCUSDT"])
    streams: list[str] = field(default_factory=list)  #: per symbol, e.g. ["depth@100ms", "trade"]; empty: by market
    ws_url: str = ""  #: WebSocket base URL; empty: Binance's (wss://stream.binance.com:9443, wss://fstream.binance.com)
    rest_url: str = ""  #: REST base URL for depth snapshots; empty: Binance's (https://api.binance.com, ...)
    snapshot_limit: int = 1000  #: levels per side asked of the REST depth snapshot
    connect_timeout_s: float = 10.0  #: TCP + TLS + upgrade, and each REST request
    ping_interval_s: float = 20.0  #: ping the server after this long without data
    pong_timeout_s: float = 10.0  #: reconnect when nothing arrives this long after that ping
    backoff_initial_s: float = 0.5  #: reconnect delay: full jitter up to initial * 2^attempt ...
    backoff_max_s: float = 30.0  #: ... capped here
    max_connection_age_s: float = 84600.0  #: reconnect (and resync) before Binance's 24 h disconnect
    snapshot_min_interval_s: float = 1.0  #: at most one snapshot request per symbol this often
    ca_file: str = ""  #: extra CA bundle (PEM) to trust for wss/https; certificates are always verified


@dataclass
class RingsConfig:
    market: int = 1 << 16  #: feed -> book slots (power of two)
    book: int = 1 << 14  #: book -> strategy
    orders: int = 1 << 12  #: strategy -> orders sink (orders.csv)
    fills: int = 1 << 14  #: strategy's paper exchange -> fills sink (fills.csv)


#: The strategy run.py runs when none is named: the ML-skewed market maker.
DEFAULT_STRATEGY = "procs.strategies.market_maker:MarketMaker"


@dataclass
class StrategyConfig:
    name: str = DEFAULT_STRATEGY  #: dotted path of a procs.api.Strategy subclass, "package.module:Class"
    #: the strategy's parameters ([strategy.params] table; keys are the class's PARAMS, checked at start)
    params: dict = field(default_factory=dict)
    equity_interval_ms: float = 1000.0  #: equity.csv gets a row per symbol and sleeve this often (exchange time)


@dataclass
class RiskConfig:
    """Checks in front of every order; a limit of 0 is off. Refusals are counted by reason."""
    max_position: float = 1.0  #: |position| per symbol and sleeve, counting every live order on that side as filled
    max_order_qty: float = 0.5  #: one order's qty (base currency)
    max_notional: float = 100000.0  #: one order's notional (quote currency)
    max_orders_per_s: float = 50.0  #: new + replace orders in any 1 s of exchange time (cancels always pass)
    max_loss: float = 5000.0  #: total equity below -max_loss: cancel all, flatten, refuse every order after
    stale_ms: float = 5000.0  #: no orders on a book older than this (exchange time) or invalid after a gap
    kill_switch: bool = True  #: the anomaly flag halts the symbol: cancel its orders, refuse new ones
    #: ... until the flag has been clear this long; 2.5 s because a simulated price spike's effect fades
    #: seconds before its labelled window ends (1 s let 2 of 28 windows quote again: scripts/eval_mm.py)
    kill_hold_ms: float = 2500.0
    kill_flatten: bool = False  #: the kill switch also flattens the symbol's position with market orders


@dataclass
class PaperConfig:
    """The paper exchange inside the strategy's process (exchange-time clock: results do not depend on speed)."""
    latency_ms: float = 5.0  #: an order, cancel or replace takes effect this long after the decision
    maker_fee_bps: float = 1.0  #: fee on a passive fill, bps of notional (negative: a rebate)
    taker_fee_bps: float = 4.0  #: fee on an aggressive fill


#: The direction model run.py loads when none is named; its absence only warns (the anomaly model runs alone).
DEFAULT_DIRECTION_MODEL = "models/direction.onnx"


#: inference.lockstep's queues: book → inference every FEATURES record, inference → strategy every SCORE record
FEATURES_QUEUE = "features_q"
SCORES_QUEUE = "scores_q"


@dataclass
class InferenceConfig:
    model: str = "models/anomaly.onnx"  #: anomaly model (ONNX) with a sidecar JSON next to it
    #: direction model (ONNX + sidecar) scored in the same pass, P(up) in SCORE; "" for none
    direction_model: str = DEFAULT_DIRECTION_MODEL
    intra_op_threads: int = 1
    min_interval_us: float = 1000.0  #: one scoring pass at most this often (scores are conflated; 0: on every update)
    #: on: score every book update and hold the strategy on each until its own score is in (queues, not
    #: boards), so a replay decides the same in every run; off: conflated, never waits; auto: on for a
    #: replay or the simulator at speed 0 (a backtest), off otherwise
    lockstep: str = "auto"


@dataclass
class MetricsConfig:
    port: int = 0  #: Prometheus endpoint port (0: no exporter), e.g. 9464
    host: str = "127.0.0.1"  #: address the endpoint binds; 0.0.0.0 exposes it beyond this host
    status: str = "auto"  #: live status line: auto (on a TTY, rewritten in place), line (always, one per line), off


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    live: LiveConfig = field(default_factory=LiveConfig)
    rings: RingsConfig = field(default_factory=RingsConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    risk: RiskConfig = field(default_factory=RiskConfig)
    paper: PaperConfig = field(default_factory=PaperConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, origin: str = "config") -> Config:
        cfg = cls()
        cfg.update(data, origin=origin)
        return cfg

    def lockstep_on(self) -> bool:
        """inference.lockstep resolved: auto is on for a replay or the simulator at speed 0, where nothing
        waits on the clock and the conflated scores would be a timing accident (a backtest)."""
        v = self.inference.lockstep
        return v == "on" or (v == "auto" and self.source.kind != "live" and self.source.speed == 0)

    def update(self, data: dict[str, Any], *, origin: str = "config") -> None:
        for section, values in data.items():
            if not hasattr(self, section):
                raise ConfigError(f"{origin}: unknown section [{section}] expected one of "
                                  f"{[f.name for f in dataclasses.fields(self)]}")
            if not isinstance(values, dict):
                raise ConfigError(f"{origin}: field={section} expected a table found={type(values).__name__}")
            target = getattr(self, section)
            for key, val in values.items():
                head, dot, rest = key.partition(".")
                if dot:  # --set strategy.params.qty=0.02: one key of a table field
                    key, val = head, {rest: val}
                set_field(target, key, val, f"{origin}: field={section}.{key}")
        self.validate()

    def validate(self) -> None:
        def need(cond: bool, fld: str, expected: str, found: Any) -> None:
            if not cond:
                raise ConfigError(f"field={fld} expected={expected} found={found!r}")

        need(self.source.kind in ("sim", "replay", "live"), "source.kind", "sim, replay or live", self.source.kind)
        need(self.source.speed >= 0, "source.speed", ">= 0", self.source.speed)
        if self.source.kind == "replay":
            need(bool(self.source.path), "source.path", "a capture file for kind=replay", self.source.path)
            need(Path(self.source.path).is_file(), "source.path", "an existing file", self.source.path)
        for name in ("market", "book", "orders", "fills"):
            cap = getattr(self.rings, name)
            need(cap >= 2 and cap & (cap - 1) == 0, f"rings.{name}", "a power of two >= 2", cap)
        need(self.run.duration_s >= 0, "run.duration_s", ">= 0", self.run.duration_s)
        need(self.run.max_messages >= 0, "run.max_messages", ">= 0", self.run.max_messages)
        need(self.sim.rate_scale > 0, "sim.rate_scale", "> 0", self.sim.rate_scale)
        need(self.sim.depth_interval_ms >= 0, "sim.depth_interval_ms", ">= 0", self.sim.depth_interval_ms)
        need(len(self.sim.symbols) >= 1, "sim.symbols", "at least one symbol", self.sim.symbols)
        need(bool(self.strategy.name.strip()), "strategy.name", "a dotted path, e.g. mypkg.module:MyStrategy",
             self.strategy.name)
        need(self.strategy.equity_interval_ms > 0, "strategy.equity_interval_ms", "> 0",
             self.strategy.equity_interval_ms)
        for k, v in self.strategy.params.items():
            need(isinstance(v, int | float) and not isinstance(v, bool), f"strategy.params.{k}", "a number", v)
        for name in ("max_position", "max_order_qty", "max_notional", "max_orders_per_s", "max_loss", "stale_ms",
                     "kill_hold_ms"):
            need(getattr(self.risk, name) >= 0, f"risk.{name}", ">= 0 (0: off)", getattr(self.risk, name))
        need(self.risk.max_orders_per_s <= 100000, "risk.max_orders_per_s", "<= 100000", self.risk.max_orders_per_s)
        need(self.paper.latency_ms >= 0, "paper.latency_ms", ">= 0", self.paper.latency_ms)
        need(self.inference.intra_op_threads >= 1, "inference.intra_op_threads", ">= 1 (0 would take every core)",
             self.inference.intra_op_threads)
        need(self.inference.min_interval_us >= 0, "inference.min_interval_us", ">= 0",
             self.inference.min_interval_us)
        need(self.inference.lockstep in ("auto", "on", "off"), "inference.lockstep", "auto, on or off",
             self.inference.lockstep)
        lv = self.live
        need(lv.market in ("spot", "usdm"), "live.market", "spot or usdm", lv.market)
        need(len(lv.symbols) >= 1, "live.symbols", "at least one symbol", lv.symbols)
        for name in ("ws_url", "rest_url"):
            url = getattr(lv, name)
            schemes = ("ws://", "wss://") if name == "ws_url" else ("http://", "https://")
            need(not url or url.startswith(schemes), f"live.{name}", f"a URL starting {' or '.join(schemes)}", url)
        need(lv.snapshot_limit >= 1, "live.snapshot_limit", ">= 1", lv.snapshot_limit)
        need(not lv.streams or any(x == "depth" or x.startswith("depth@") for x in lv.streams), "live.streams",
             "a diff depth stream among them (depth, depth@100ms or depth@0ms: the book is built from it)",
             lv.streams)
        need(all(x and "/" not in x and not any(c.isspace() for c in x) for x in lv.streams), "live.streams",
             "stream names without the symbol, e.g. depth@100ms, trade", lv.streams)
        for name in ("connect_timeout_s", "ping_interval_s", "pong_timeout_s", "backoff_initial_s", "backoff_max_s",
                     "max_connection_age_s"):
            need(getattr(lv, name) > 0, f"live.{name}", "> 0", getattr(lv, name))
        need(lv.snapshot_min_interval_s >= 0, "live.snapshot_min_interval_s", ">= 0", lv.snapshot_min_interval_s)
        need(not lv.ca_file or Path(lv.ca_file).is_file(), "live.ca_file", "an existing PEM file", lv.ca_file)
        mc = self.metrics
        need(0 <= mc.port <= 65535, "metrics.port", "0 (off) or a TCP port 1..65535", mc.port)
        need(bool(mc.host.strip()), "metrics.host", "an address to bind, e.g. 127.0.0.1", mc.host)
        need(mc.status in ("auto", "line", "off"), "metrics.status", "auto, line or off", mc.status)


def set_field(target: Any, key: str, val: Any, where: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(target)}
    if key not in fields:
        raise ConfigError(f"{where} unknown key; expected one of {sorted(fields)}")
    current = getattr(target, key)
    if isinstance(current, dict):
        ok = isinstance(val, dict)
        val = {**current, **val} if ok else val  # a table merges into the one before (file, then --set)
    elif isinstance(current, bool):
        ok = isinstance(val, bool)
    elif isinstance(current, int):
        ok = isinstance(val, int) and not isinstance(val, bool)
    elif isinstance(current, float):
        ok = isinstance(val, int | float) and not isinstance(val, bool)
        val = float(val) if ok else val
    elif isinstance(current, list):
        ok = isinstance(val, list) and all(isinstance(v, str) for v in val)
    else:
        ok = isinstance(val, str)
    if not ok:
        raise ConfigError(f"{where} expected={type(current).__name__} found={val!r}")
    setattr(target, key, val)


def load(path: str | Path | None) -> Config:
    if path is None:
        return Config()
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: path={p}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file is not valid TOML: path={p} error={exc}") from None
    return Config.from_dict(data, origin=str(p))
