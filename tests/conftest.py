"""Shared fixtures: unique run ids, segment cleanup, the --long option, the shared data path."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from shm.segment import list_segments, remove_run


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true", default=False,
                     help="run the long stress variants (10^9 records; minutes)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "long: long stress run, only with --long")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--long"):
        return
    skip = pytest.mark.skip(reason="long stress run: pass --long to run it")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def run_id() -> str:
    """A run id unique to the test; its segments are removed (and must be gone) afterwards."""
    rid = "test" + uuid.uuid4().hex[:10]
    _ISSUED.add(rid)
    yield rid
    leftover = list_segments(rid)
    remove_run(rid)
    assert not leftover, f"test left segments behind: {[str(p) for p in leftover]}"


def shared_data_dir() -> Path:
    env = os.environ.get("TICKPIPE_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data" / "binance"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = shared_data_dir()
    if not d.is_dir():
        pytest.skip(f"shared Binance captures not found at {d} (set TICKPIPE_DATA to their folder); "
                    "they are not part of the repository")
    return d


#: run ids this session handed out: only their segments are this session's to check (another pytest
#: session on the same host, e.g. a second checkout's, has its own)
_ISSUED: set[str] = set()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    left = [p for p in list_segments() for rid in _ISSUED if p.name.startswith(f"tickpipe-{rid}-")]
    if left:
        for p in left:
            p.unlink(missing_ok=True)
        session.config.stash[_LEFT] = [str(p) for p in left]
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_LEFT = pytest.StashKey[list]()


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    left = config.stash.get(_LEFT, [])
    if left:
        terminalreporter.write_line(f"ERROR: tests left shared-memory segments behind: {left}", red=True)
