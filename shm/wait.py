"""Wait (idle) strategies: what a loop does when a `do_work()` call found nothing to do.

Named, configurable objects, Agrona-style: `strategy.idle(work_count)` after every pass.
- `BusySpin`: pause instruction only. Lowest latency, burns a core: only when every spinning
  process has a core of its own (3 spinners on 2 cores measured 8 ms round trips here).
- `SpinYield`: spin for `spin_ns`, then sched_yield() so a co-scheduled stage can run.
- `SpinYieldPark`: spin, yield for `yield_ns`, then park on a futex for at most
  `park_timeout_ns`; the producer wakes a parked consumer only when it said it parks, so a
  busy pipeline makes no syscalls.
- `auto`: `BusySpin` when every spinning process has a core of its own, else `SpinYieldPark`.

Phases are measured in time, not iterations, so behaviour does not depend on loop cost.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from shm.native import lib

#: Parker: sleep at most timeout_ns or until woken; returns whether it was woken.
Parker = Callable[[int], bool]


def _sleep_park(timeout_ns: int) -> bool:
    # fallback when nothing to park on is bound: a plain timed sleep
    time.sleep(timeout_ns / 1e9)
    return False


class IdleStrategy:
    name = "base"

    def idle(self, work_count: int) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def reset(self) -> None:
        """Forget the current idle streak (called when work was done)."""

    def bind(self, parker: Parker) -> IdleStrategy:
        """Give a park-capable strategy the futex wait of the input it should sleep on."""
        return self

    @property
    def parks(self) -> bool:
        return False

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{self.name}({params})"


class BusySpin(IdleStrategy):
    name = "spin"

    def idle(self, work_count: int) -> None:
        if work_count <= 0:
            lib.tp_pause()


class SpinYield(IdleStrategy):
    name = "yield"

    def __init__(self, spin_ns: int = 20_000) -> None:
        self.spin_ns = int(spin_ns)
        self._since = 0

    def reset(self) -> None:
        self._since = 0

    def idle(self, work_count: int) -> None:
        if work_count > 0:
            self._since = 0
            return
        now = lib.tp_now_ns()
        if self._since == 0:
            self._since = now
        if now - self._since < self.spin_ns:
            lib.tp_pause()
        else:
            os.sched_yield()


class SpinYieldPark(IdleStrategy):
    name = "park"

    def __init__(self, spin_ns: int = 20_000, yield_ns: int = 200_000,
                 park_timeout_ns: int = 50_000_000, parker: Parker | None = None) -> None:
        self.spin_ns = int(spin_ns)
        self.yield_ns = int(yield_ns)
        self.park_timeout_ns = int(park_timeout_ns)
        self._parker: Parker = parker or _sleep_park
        self._since = 0
        self.parks_count = 0

    @property
    def parks(self) -> bool:
        return True

    def bind(self, parker: Parker) -> SpinYieldPark:
        self._parker = parker
        return self

    def reset(self) -> None:
        self._since = 0

    def idle(self, work_count: int) -> None:
        if work_count > 0:
            self._since = 0
            return
        now = lib.tp_now_ns()
        if self._since == 0:
            self._since = now
        idle_ns = now - self._since
        if idle_ns < self.spin_ns:
            lib.tp_pause()
        elif idle_ns < self.spin_ns + self.yield_ns:
            os.sched_yield()
        else:
            self.parks_count += 1
            self._parker(self.park_timeout_ns)


def auto(n_spinning_processes: int, cpus: set[int] | None = None, *,
         distinct_pins: bool = True) -> IdleStrategy:
    """Busy spin only when every spinning process has a core of its own. Otherwise yield at once,
    then park: on a shared core any spin phase delays the stage that shares it (measured here,
    4 processes on 2 cores: 20 µs of spin gave a 60 µs chain RTT, no spin 2-4 µs)."""
    n_cpus = len(cpus if cpus is not None else os.sched_getaffinity(0))
    if distinct_pins and n_spinning_processes <= n_cpus:
        return BusySpin()
    return SpinYieldPark(spin_ns=0, yield_ns=200_000)


_STRATEGIES: dict[str, type[IdleStrategy]] = {"spin": BusySpin, "yield": SpinYield, "park": SpinYieldPark}


def parse(spec: str, *, n_spinning_processes: int = 1, cpus: set[int] | None = None) -> IdleStrategy:
    """Build a strategy from text: `spin`, `yield:spin_ns=5000`, `park:yield_ns=1e5`, or `auto`."""
    name, _, params = spec.partition(":")
    name = name.strip().lower()
    if name == "auto":
        if params:
            raise ValueError(f"bad wait strategy: spec={spec!r} ('auto' takes no parameters)")
        return auto(n_spinning_processes, cpus)
    if name not in _STRATEGIES:
        raise ValueError(f"bad wait strategy: name={name!r} expected one of "
                         f"{sorted([*_STRATEGIES, 'auto'])}")
    kwargs: dict[str, int] = {}
    for item in filter(None, (p.strip() for p in params.split(","))):
        key, eq, val = item.partition("=")
        if not eq:
            raise ValueError(f"bad wait strategy parameter: spec={spec!r} item={item!r} expected key=value")
        try:
            kwargs[key.strip()] = int(float(val))
        except ValueError:
            raise ValueError(f"bad wait strategy parameter: {key}={val!r} expected a number") from None
    try:
        return _STRATEGIES[name](**kwargs)
    except TypeError:
        allowed = [p for p in _STRATEGIES[name].__init__.__code__.co_varnames[1:] if p != "parker"]
        raise ValueError(f"bad wait strategy parameter for {name!r}: given={sorted(kwargs)} "
                         f"allowed={allowed}") from None
