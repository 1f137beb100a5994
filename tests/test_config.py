"""Run configuration and placement: defaults, overrides, and errors that name field, expected, found."""

from __future__ import annotations

from pathlib import Path

import pytest

from procs import placement as pl
from procs.config import Config, ConfigError, load


def test_default_placement_keeps_the_critical_chain_in_one_thread_on_small_hosts() -> None:
    assert pl.format_placement(pl.default_placement({0, 1})) == "feed,book,strategy@0 inference@1"
    assert pl.format_placement(pl.default_placement({3})) == "feed,book,strategy,inference@3"
    # 3-4 cores: CPU 0 is left to the OS and the launcher
    assert pl.format_placement(pl.default_placement({0, 1, 2, 3})) == "feed,book,strategy@1 inference@2"
    # enough cores: one agent per core, none on CPU 0
    assert pl.format_placement(pl.default_placement(set(range(8)))) == "feed@1 book@2 strategy@3 inference@4"


def test_placement_text_round_trips_and_bad_text_names_the_problem() -> None:
    groups = pl.parse("feed,book@0 strategy,inference@1", cpus={0, 1})
    assert [g.agents for g in groups] == [("feed", "book"), ("strategy", "inference")]
    assert pl.format_placement(groups) == "feed,book@0 strategy,inference@1"
    assert pl.parse("feed,book,strategy,inference", cpus={0})[0].cpu is None  # unpinned
    with pytest.raises(pl.PlacementError, match="cpu=7 expected one of"):
        pl.parse("feed,book@7 strategy,inference@1", cpus={0, 1})
    with pytest.raises(pl.PlacementError, match="agent='booook'"):
        pl.parse("feed,booook@0 strategy,inference@1", cpus={0, 1})
    with pytest.raises(pl.PlacementError, match="placed twice"):
        pl.parse("feed,book@0 book,strategy,inference@1", cpus={0, 1})
    with pytest.raises(pl.PlacementError, match=r"\['inference'\] not placed"):
        pl.parse("feed,book@0 strategy@1", cpus={0, 1})


def test_overrides_are_typed_and_bad_values_name_the_field(tmp_path: Path) -> None:
    cfg = Config.from_dict({"strategy": {"params": {"spread_bps": 3}}, "rings": {"market": 1024}})
    assert cfg.strategy.params == {"spread_bps": 3} and cfg.rings.market == 1024
    cfg.update({"strategy": {"params.qty": 0.5}}, origin="command line")  # --set strategy.params.qty=0.5 merges
    assert cfg.strategy.params == {"spread_bps": 3, "qty": 0.5}
    with pytest.raises(ConfigError, match=r"field=strategy\.params\.qty expected=a number"):
        Config.from_dict({"strategy": {"params": {"qty": "lots"}}})
    with pytest.raises(ConfigError, match=r"field=risk\.max_loss expected=>= 0"):
        Config.from_dict({"risk": {"max_loss": -1}})
    with pytest.raises(ConfigError, match=r"field=rings\.market expected=a power of two >= 2 found=1000"):
        Config.from_dict({"rings": {"market": 1000}})
    with pytest.raises(ConfigError, match=r"field=strategy\.nope"):
        Config.from_dict({"strategy": {"nope": 1}})
    with pytest.raises(ConfigError, match=r"field=inference\.intra_op_threads expected=>= 1"):
        Config.from_dict({"inference": {"intra_op_threads": 0}})
    with pytest.raises(ConfigError, match=r"field=source\.path expected=an existing file"):
        Config.from_dict({"source": {"kind": "replay", "path": str(tmp_path / "missing.gz")}})
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\nduration_s = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(bad)


def test_the_example_file_is_every_default() -> None:
    example = Path(__file__).resolve().parents[1] / "tickpipe.example.toml"
    assert load(example).to_dict() == Config().to_dict()


def test_live_settings_are_checked() -> None:
    for bad, field in (({"market": "coinm"}, "live.market"), ({"symbols": []}, "live.symbols"),
                       ({"ws_url": "http://x"}, "live.ws_url"), ({"rest_url": "ws://x"}, "live.rest_url"),
                       ({"streams": ["trade"]}, "live.streams"), ({"streams": ["depth", "a/b"]}, "live.streams"),
                       ({"ping_interval_s": 0}, "live.ping_interval_s"), ({"ca_file": "/nope.pem"}, "live.ca_file")):
        with pytest.raises(ConfigError, match=f"field={field} "):
            Config().update({"live": bad})
    Config().update({"source": {"kind": "live"}, "live": {"market": "usdm", "streams": ["depth@0ms", "aggTrade"]}})


@pytest.mark.parametrize(("kind", "speed", "setting", "on"), [
    ("sim", 1.0, "auto", False), ("sim", 0.0, "auto", True), ("sim", 10.0, "on", True), ("sim", 0.0, "off", False),
    ("live", 0.0, "auto", False), ("live", 1.0, "on", True),
])
def test_lockstep_auto_is_on_only_for_a_backtest(kind: str, speed: float, setting: str, on: bool) -> None:
    cfg = Config.from_dict({"source": {"kind": kind, "speed": speed}, "inference": {"lockstep": setting}})
    assert cfg.lockstep_on() is on


def test_lockstep_takes_auto_on_or_off() -> None:
    with pytest.raises(ConfigError, match=r"field=inference.lockstep expected=auto, on or off found='yes'"):
        Config.from_dict({"inference": {"lockstep": "yes"}})
    with pytest.raises(ConfigError, match=r"inference.lockstep expected=str found=True"):
        Config.from_dict({"inference": {"lockstep": True}})
