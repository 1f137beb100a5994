"""The agent shape every stage has: on_start, do_work, on_close.

    class Book(Agent):
        name = "book"
        COUNTERS = ("records_in", "books_out", ...)
        def on_start(self, ctx): ...   # attach rings, warm the JIT
        def do_work(self) -> int: ...  # drain a batch, one numba kernel, publish; returns work done
        def on_close(self): ...

The host process (procs/host.py) loops `idle.idle(sum(agent.do_work() for agent in agents))`
until the stop flag. Counters live in shared memory (`ctx.counters`, named by COUNTERS) so the
launcher reads them without asking the stage; histograms likewise (`ctx.hist_hop`, `ctx.hist_e2e`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from procs.config import Config
from shm import hdr

#: Counters each agent may name; the shared stats record has room for this many.
MAX_COUNTERS = 32


@dataclass
class AgentContext:
    run: str
    #: the run's output folder (reports, logs, labels)
    run_dir: str
    config: Config
    symbols: list[str]
    #: this agent's counters (uint64[MAX_COUNTERS]) in shared memory, named by the agent's COUNTERS
    counters: np.ndarray
    #: HDR counts of hop latency (input record's t_publish_ns to now) and since t_origin_ns
    hist_hop: np.ndarray
    hist_e2e: np.ndarray
    log: logging.Logger
    #: the agent's own histogram (AUX_HIST names it); a private one when the caller gives none (tests)
    hist_aux: np.ndarray = dataclasses.field(default_factory=hdr.new_counts)


class Agent:
    name: ClassVar[str] = "agent"
    #: a source produces from outside the rings; it is stopped first so the others can drain
    SOURCE: ClassVar[bool] = False
    #: names of this agent's counters, in slot order
    COUNTERS: ClassVar[tuple[str, ...]] = ()
    #: False for a background agent that never needs a spinning thread: a process holding only such
    #: agents sleeps in its parker between passes, whatever the wait strategy, and is not counted as
    #: a spinner by `auto` (a spinning neighbour on the other vCPU slowed the feed by 40% here)
    SPINS: ClassVar[bool] = True
    #: name of the histogram this agent records into ctx.hist_aux ("" for none); the report shows "<name>.<AUX_HIST>"
    AUX_HIST: ClassVar[str] = ""

    def on_start(self, ctx: AgentContext) -> None:
        """Attach rings, allocate buffers, compile the kernels. Runs before the readiness barrier."""
        self.ctx = ctx

    def do_work(self) -> int:
        """One pass: returns how much work was done (0 lets the idle strategy wait)."""
        raise NotImplementedError

    def on_close(self) -> None:
        """Release what on_start took. Called once, also after a failure."""

    def parker(self) -> Callable[[int], bool] | None:
        """A futex wait on this agent's main input, for park-capable idle strategies."""
        return None

    def finished(self) -> bool:
        """True when a source agent has nothing more to produce (end of a replay)."""
        return False

    def describe(self) -> dict[str, Any]:
        return {}


class StepAgent(Agent):
    """An agent whose work is a compiled step (`procs/kernels/cstep.py`): one C call per batch of up to
    `BATCH` input records from the consumer `self.cons`. Subclasses set `self.step` in on_start and
    write `export()`, which copies counters kept outside the step into `ctx.counters`."""

    BATCH: ClassVar[int] = 256
    #: batches taken per do_work() while they come full: bounds how long the thread's other agents wait
    MAX_STEPS: ClassVar[int] = 32
    step: Callable[[], int]
    _calls = 0
    _dirty = True

    def do_work(self) -> int:
        # full batches: take more now, so a backlog drains in one call instead of one batch per loop pass
        n = k = self.step()
        steps = 1
        while k == self.BATCH and steps < self.MAX_STEPS:
            k = self.step()
            n += k
            steps += 1
        self._calls += 1
        if n:
            self._dirty = True
            if self._calls & 1023 == 0:
                self.export()
        elif self._dirty:  # idle: publish the counters once, not on every idle pass
            self._dirty = False
            self.export()
        return n

    def export(self) -> None:
        raise NotImplementedError

    def parker(self) -> Callable[[int], bool]:
        return self.cons.park  # type: ignore[attr-defined]

