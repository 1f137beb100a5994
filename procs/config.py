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
    orders: int = 1 << 12  #: strategy -> orders sink


@dataclass
class StrategyConfig:
    spread_bps: float = 2.0  #: quoted half-spread around the microprice
    skew_bps: float = 1.0  #: quote shift per unit of predicted direction
    order_qty: float = 0.01
    max_position: float = 1.0
    requote_bps: float = 0.5  #: only move a quote when it is off by more than this
    pause_hold_ms: float = 500.0  #: after an anomaly alert, stay out until the flag has been clear this long


#: The direction model run.py loads when none is named; its absence only warns (the anomaly model runs alone).
DEFAULT_DIRECTION_MODEL = "models/direction.onnx"


@dataclass
class InferenceConfig:
    model: str = "models/anomaly.onnx"  #: anomaly model (ONNX) with a sidecar JSON next to it
    #: direction model (ONNX + sidecar) scored in the same pass, P(up) in SCORE; "" for none
    direction_model: str = DEFAULT_DIRECTION_MODEL
    intra_op_threads: int = 1
    min_interval_us: float = 1000.0  #: one scoring pass at most this often (scores are conflated; 0: on every update)


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    live: LiveConfig = field(default_factory=LiveConfig)
    rings: RingsConfig = field(default_factory=RingsConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, origin: str = "config") -> Config:
        cfg = cls()
        cfg.update(data, origin=origin)
        return cfg

    def update(self, data: dict[str, Any], *, origin: str = "config") -> None:
        for section, values in data.items():
            if not hasattr(self, section):
                raise ConfigError(f"{origin}: unknown section [{section}] expected one of "
                                  f"{[f.name for f in dataclasses.fields(self)]}")
            if not isinstance(values, dict):
                raise ConfigError(f"{origin}: field={section} expected a table found={type(values).__name__}")
            target = getattr(self, section)
            for key, val in values.items():
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
        for name in ("market", "book", "orders"):
            cap = getattr(self.rings, name)
            need(cap >= 2 and cap & (cap - 1) == 0, f"rings.{name}", "a power of two >= 2", cap)
        need(self.run.duration_s >= 0, "run.duration_s", ">= 0", self.run.duration_s)
        need(self.run.max_messages >= 0, "run.max_messages", ">= 0", self.run.max_messages)
        need(self.sim.rate_scale > 0, "sim.rate_scale", "> 0", self.sim.rate_scale)
        need(self.sim.depth_interval_ms >= 0, "sim.depth_interval_ms", ">= 0", self.sim.depth_interval_ms)
        need(len(self.sim.symbols) >= 1, "sim.symbols", "at least one symbol", self.sim.symbols)
        need(self.strategy.pause_hold_ms >= 0, "strategy.pause_hold_ms", ">= 0", self.strategy.pause_hold_ms)
        need(self.inference.intra_op_threads >= 1, "inference.intra_op_threads", ">= 1 (0 would take every core)",
             self.inference.intra_op_threads)
        need(self.inference.min_interval_us >= 0, "inference.min_interval_us", ">= 0",
             self.inference.min_interval_us)
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
        need(self.strategy.max_position > 0, "strategy.max_position", "> 0", self.strategy.max_position)


def set_field(target: Any, key: str, val: Any, where: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(target)}
    if key not in fields:
        raise ConfigError(f"{where} unknown key; expected one of {sorted(fields)}")
    current = getattr(target, key)
    if isinstance(current, bool):
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
