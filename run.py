#!/usr/bin/env python
"""tickpipe: run the pipeline (feed → book → strategy + paper exchange, inference beside it); report latency and P&L.

    python run.py                                  # demo: the built-in market for 20 s, then the report
    python run.py --replay CAPTURE --speed 10      # a recorded Binance session, ten times faster
    python run.py --live BTCUSDT,ETHUSDT           # Binance spot, live (--market usdm for USD-M futures)
    python run.py --live BTCUSDT --local-exchange  # live mode against the built-in exchange on 127.0.0.1
    python run.py --config my.toml --set strategy.params.spread_bps=3
    python run.py --strategy procs.strategies.execution:Twap --replay CAPTURE   # a built-in or your own class

Settings come from the defaults, then the TOML file (--config), then the options below; every
setting is documented in tickpipe.example.toml. Exit status: 0 on a normal end (duration,
--max-messages, end of the replay), 1 when a stage fails or dies, 2 on a bad configuration,
128+N when stopped by signal N (130 for Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tomllib
from pathlib import Path

from procs import one_blas_thread

one_blas_thread(os.environ)  # before numpy loads (procs.config imports it); the launcher does it for the stages

from procs import config as cfgmod  # noqa: E402
from procs.config import Config, ConfigError  # noqa: E402
from procs.placement import PlacementError  # noqa: E402

STRATEGY_HELP = """\
Writing a strategy (procs/api.py has the whole API; built-ins in procs/strategies/):

    # lean.py: trade toward the direction model's call, within a position limit
    from procs.api import BUY, SELL, Strategy, market, njit, position, score_up, tradable

    class Lean(Strategy):
        PARAMS = {"qty": 0.01, "edge": 0.1, "max_pos": 0.05}

        @staticmethod
        @njit
        def on_score(ctx, s, score):
            p = score_up(ctx, s)  # P(next mid move is up); NaN without a direction model
            if tradable(ctx, s) and p > 0.5 + ctx.p.edge and position(ctx, s) < ctx.p.max_pos:
                market(ctx, s, BUY, ctx.p.qty)
            elif tradable(ctx, s) and p < 0.5 - ctx.p.edge and position(ctx, s) > -ctx.p.max_pos:
                market(ctx, s, SELL, ctx.p.qty)

    python run.py --strategy lean:Lean --set strategy.params.edge=0.2
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run.py", description=__doc__.split("\n\n")[0],
        epilog=STRATEGY_HELP + "\nReports go to runs/<time>-<run id>/: summary.json, percentiles.txt, latency.png, "
               "hlog/*.hlog (HdrHistogram interval logs), stages.log, labels.jsonl (simulator); the strategy's "
               "orders.csv, fills.csv, equity.csv, strategy.json and results (results.txt, equity.png).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("source")
    src.add_argument("--replay", metavar="FILE",
                     help="replay a capture instead of the built-in market: <ts_ns> <json> lines (gzip or plain) "
                          "or a binary .tpc capture (scripts/convert_capture.py)")
    src.add_argument("--speed", type=float, metavar="X",
                     help="pacing: 1 real time, 10 ten times faster, 0.5 half speed, 0 as fast as possible "
                          "(default 1)")
    src.add_argument("--start-offset", type=float, metavar="S", help="replay: skip the first S seconds of the capture")
    src.add_argument("--replay-duration", type=float, metavar="S", help="replay: play only S seconds of the capture")
    src.add_argument("--loop", action="store_true", default=None, help="replay: start again at the end")
    src.add_argument("--symbols", metavar="A,B",
                     help="simulator: symbols to simulate (default BTCUSDT,ETHUSDT,SOLUSDT,BNBUSDT)")
    src.add_argument("--seed", type=int, help="simulator: random seed (default 7)")
    src.add_argument("--live", metavar="A,B",
                     help="live Binance market data for these symbols (WebSocket combined streams + REST snapshots)")
    src.add_argument("--market", choices=("spot", "usdm"), help="live: spot or USD-M futures (default spot)")
    src.add_argument("--ws-url", metavar="URL", help="live: WebSocket base URL (default Binance's for the market)")
    src.add_argument("--rest-url", metavar="URL", help="live: REST base URL for depth snapshots (default Binance's)")
    src.add_argument("--local-exchange", action="store_true",
                     help="live: start the built-in exchange (the simulator speaking Binance's protocol) on "
                          "127.0.0.1 and connect to it instead of Binance; no network needed")
    run = p.add_argument_group("run")
    run.add_argument("--config", metavar="TOML", help="settings file (see tickpipe.example.toml)")
    run.add_argument("--duration", type=float, metavar="S",
                     help="stop after S seconds (default 20 for the simulator; a replay plays to its end, a live "
                          "feed runs until Ctrl-C; 0: no limit)")
    run.add_argument("--max-messages", type=int, metavar="N", help="stop after the feed has published N messages")
    run.add_argument("--placement", metavar="TEXT",
                     help="processes and CPUs, e.g. 'feed,book,strategy@0 inference@1' (default: auto, from the "
                          "cores available: one agent per core on a big host, grouped on a small one)")
    run.add_argument("--wait", metavar="SPEC",
                     help="idle strategy: spin | yield[:spin_ns=N] | park[:spin_ns=N,yield_ns=N,park_timeout_ns=N] "
                          "| auto (default: spin only when every process has a core of its own, else park)")
    run.add_argument("--strategy", metavar="PKG.MODULE:CLASS",
                     help="the strategy to run (default procs.strategies.market_maker:MarketMaker); its parameters "
                          "with --set strategy.params.NAME=VALUE; see 'Writing a strategy' below")
    run.add_argument("--model", metavar="ONNX", help="anomaly model with a sidecar JSON (default models/anomaly.onnx)")
    run.add_argument("--direction-model", metavar="ONNX",
                     help="direction model with a sidecar JSON, scored beside the anomaly model (default "
                          "models/direction.onnx, skipped with a warning while it does not exist; \"\" for none)")
    run.add_argument("--lockstep", action="store_const", const="on", default=None,
                     help="score every book update and hold the strategy on each until its score is in: a replay "
                          "or seeded simulator run then decides identically every time. The default (auto) does "
                          "this at --speed 0, a backtest; paced or live, conflated scoring never makes the "
                          "strategy wait")
    run.add_argument("--no-lockstep", dest="lockstep", action="store_const", const="off",
                     help="conflated scoring even at --speed 0 (the scores a decision sees then depend on timing)")
    run.add_argument("--out", metavar="DIR", help="folder for run reports (default runs/)")
    run.add_argument("--realtime", action="store_true", default=None,
                     help="mlockall, and SCHED_FIFO for pinned stages that park (warns when not permitted or "
                          "when it would starve a core)")
    run.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                     help="override any setting, e.g. --set rings.market=131072 (value in TOML syntax); repeatable")
    run.add_argument("--quiet", action="store_true", help="no status lines, only errors and the report path")
    run.add_argument("--metrics-port", type=int, metavar="PORT",
                     help="serve Prometheus metrics on 127.0.0.1:PORT (metrics.host to change; default off)")
    run.add_argument("--print-config", action="store_true", help="print the effective settings as TOML and exit")
    run.add_argument("--doctor", nargs="?", const="text", choices=("text", "json"),
                     help="check the host's tuning (CPUs, isolation, governor, THP, IRQs, SMT, mlock, SCHED_FIFO, "
                          "/dev/shm, clock source, ...) with a fix for each, and exit: 0 tuned, 1 something bad, "
                          "3 warnings only (--doctor=json for JSON)")
    run.add_argument("--profile", action="store_true",
                     help="profile the run: flame/<stage>.svg (py-spy per stage) and flame/perf.svg (perf over the "
                          "run, numba frames named) in the run folder, shown in report.html")
    return p


def _overrides(args: argparse.Namespace) -> dict:
    o: dict[str, dict] = {}

    def put(section: str, key: str, value: object) -> None:
        if value is not None:
            o.setdefault(section, {})[key] = value

    if args.replay:
        put("source", "kind", "replay")
        put("source", "path", args.replay)
    put("source", "speed", args.speed)
    put("source", "start_offset_s", args.start_offset)
    put("source", "replay_duration_s", args.replay_duration)
    put("source", "loop", args.loop)
    if args.symbols:
        put("sim", "symbols", [s.strip().upper() for s in args.symbols.split(",") if s.strip()])
    put("sim", "seed", args.seed)
    if args.live:
        put("source", "kind", "live")
        put("live", "symbols", [s.strip().upper() for s in args.live.split(",") if s.strip()])
    put("live", "market", args.market)
    put("live", "ws_url", args.ws_url)
    put("live", "rest_url", args.rest_url)
    put("run", "duration_s", args.duration)
    put("run", "max_messages", args.max_messages)
    put("run", "placement", args.placement)
    put("run", "wait", args.wait)
    put("run", "out_dir", args.out)
    put("run", "realtime", args.realtime)
    put("strategy", "name", args.strategy)
    put("inference", "model", args.model)
    put("inference", "direction_model", args.direction_model)
    put("inference", "lockstep", args.lockstep)
    put("metrics", "port", args.metrics_port)
    for item in args.set:
        key, eq, val = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not eq or not dot:
            raise ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. --set rings.market=131072")
        try:
            value = tomllib.loads(f"v = {val}")["v"]
        except tomllib.TOMLDecodeError:
            value = val  # a bare word is a string
        o.setdefault(section, {})[name] = value
    return o


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return str(v)


def _to_toml(d: dict) -> str:
    lines = []
    for section, values in d.items():
        lines.append(f"[{section}]")
        tables = {k: v for k, v in values.items() if isinstance(v, dict)}
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if k not in tables]
        for k, table in tables.items():  # sub-tables after the section's own keys, as TOML requires
            lines += ["", f"[{section}.{k}]", *(f"{kk} = {_toml_value(vv)}" for kk, vv in table.items())]
        lines.append("")
    return "\n".join(lines)


def load_config(args: argparse.Namespace) -> Config:
    config = cfgmod.load(args.config)
    file_sets_duration = False
    if args.config:
        with open(args.config, "rb") as f:
            file_sets_duration = "duration_s" in tomllib.load(f).get("run", {})
    config.update(_overrides(args), origin="command line")
    if config.source.kind in ("replay", "live") and args.duration is None and not file_sets_duration:
        config.run.duration_s = 0.0  # a replay plays to its end, a live feed runs until Ctrl-C, unless told
    return config


def _check_model(config: Config, key: str) -> str | None:
    """Resolve inference.<key> (a relative default works from any working directory); what is wrong with it."""
    model = Path(getattr(config.inference, key))
    if not model.is_absolute() and not model.is_file() and (Path(__file__).parent / model).is_file():
        model = Path(__file__).parent / model
        setattr(config.inference, key, str(model))
    side = model.with_suffix(".json")
    if model.is_file() and side.is_file():
        return None
    return (f"field=inference.{key} expected=an ONNX file with a sidecar JSON next to it found={model} "
            f"(exists: {model.is_file()}, sidecar {side} exists: {side.is_file()})")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args)
    except ConfigError as exc:
        print(f"run.py: bad configuration: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(_to_toml(config.to_dict()))
        return 0
    if args.doctor:
        from procs import doctor

        try:
            checks = doctor.run_checks(placement=config.run.placement, config=config)
        except PlacementError as exc:
            print(f"run.py: bad configuration: run.placement: {exc}", file=sys.stderr)
            return 2
        print(doctor.format_checks(checks) if args.doctor == "text" else
              json.dumps(doctor.as_dict(checks), indent=2, ensure_ascii=False))
        return doctor.exit_code(checks)
    from procs.launcher import Launcher, RunError
    from procs.sources.replay import scan_symbols

    exchange = None
    if args.local_exchange and config.source.kind != "live":
        print("run.py: bad configuration: --local-exchange expected=--live SYMBOLS (or source.kind = \"live\") "
              f"found=source.kind {config.source.kind!r}", file=sys.stderr)
        return 2
    if config.source.kind == "replay":
        try:
            symbols = scan_symbols(config.source.path)
        except ValueError as exc:  # a binary capture with a bad header names the field itself
            print(f"run.py: bad configuration: {exc}", file=sys.stderr)
            return 2
        if not symbols:
            print(f"run.py: no symbol found in the first lines of {config.source.path} "
                  "(is it a <ts_ns> <json> capture?)", file=sys.stderr)
            return 2
    elif config.source.kind == "live":
        symbols = list(config.live.symbols)
    else:
        symbols = list(config.sim.symbols)
    problem = _check_model(config, "model")
    if problem:
        print(f"run.py: bad configuration: {problem}", file=sys.stderr)
        return 2
    if config.inference.direction_model:
        problem = _check_model(config, "direction_model")
        if problem and args.direction_model is None and \
                config.inference.direction_model == cfgmod.DEFAULT_DIRECTION_MODEL:
            # the default direction model may not be trained yet: the anomaly model runs alone
            print(f"run.py: warning: no direction model ({problem}); scoring with the anomaly model only",
                  file=sys.stderr)
            config.inference.direction_model = ""
        elif problem:
            print(f"run.py: bad configuration: {problem}", file=sys.stderr)
            return 2
    try:  # the strategy class and its parameters are checked before anything starts
        from procs.api import StrategyError
        from procs.strategy import make_strategy

        make_strategy(config, symbols)
    except StrategyError as exc:
        print(f"run.py: bad configuration: {exc}", file=sys.stderr)
        return 2
    if args.local_exchange:
        from procs.sources.exchange import LocalExchange

        exchange = LocalExchange(symbols=symbols, market=config.live.market, seed=config.sim.seed)
        exchange.start()
        config.live.ws_url, config.live.rest_url = exchange.ws_url, exchange.rest_url
        print(f"run.py: local exchange on {exchange.ws_url} (REST {exchange.rest_url})", file=sys.stderr)
    try:
        try:
            launcher = Launcher(config, symbols=symbols, quiet=args.quiet, profile=args.profile)
        except PlacementError as exc:
            print(f"run.py: bad configuration: run.placement: {exc}", file=sys.stderr)
            return 2
        try:
            outcome = launcher.execute()
        except RunError as exc:
            print(f"run.py: {exc}", file=sys.stderr)
            return 1
    finally:
        if exchange is not None:
            exchange.stop()
    if outcome.exit_code:
        print(f"run.py: {outcome.reason} (exit {outcome.exit_code})", file=sys.stderr)
    if args.quiet:
        print(outcome.run_dir)
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())
