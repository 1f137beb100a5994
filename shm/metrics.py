"""Shared-memory run state: the control word, per-agent stats and per-agent histograms.

All three are `Blob` segments (the standard header, so attach checks and dead-run cleanup
apply). Each agent writes only its own stats record and histograms (single writer, no locks);
the launcher reads them to export, print status and write the report.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shm import hdr
from shm.layout import Field, Layout
from shm.ring import Blob

CONTROL = Layout("Control", [
    Field("go", "u4", doc="set by the launcher once every agent is ready"),
    Field("stop", "u4", doc="set by the launcher to stop every agent"),
    Field("drain", "u4", doc="set by the launcher to stop the sources first, so the other stages drain"),
    Field("t_go_ns", "i8", doc="CLOCK_MONOTONIC when go was set"),
    Field("n_agents", "u4"),
])

#: Agent lifecycle states in AgentStats.state.
STATE_STARTING = 0
STATE_READY = 1
STATE_RUNNING = 2
STATE_STOPPED = 3
STATE_FAILED = 4
STATE_NAMES = {STATE_STARTING: "starting", STATE_READY: "ready", STATE_RUNNING: "running",
               STATE_STOPPED: "stopped", STATE_FAILED: "failed"}

MAX_COUNTERS = 32

STATS = Layout("AgentStats", [
    Field("pid", "u4"),
    Field("state", "u4", doc="STATE_* constant"),
    Field("cpu", "i4", doc="pinned CPU, -1 when unpinned"),
    Field("finished", "u4", doc="a source agent that has produced everything it will"),
    Field("heartbeat_ns", "i8"),
    Field("loops", "u8", doc="passes of the host loop"),
    Field("work", "u8", doc="sum of do_work() results"),
    Field("parks", "u8", doc="times the idle strategy parked"),
    Field("counters", "u8", MAX_COUNTERS, doc="agent-specific, named by the agent's COUNTERS"),
])

#: Histograms per agent: hop latency, latency since t_origin_ns, and one the agent names itself
#: (`Agent.AUX_HIST`; the strategy's decision latency, book record in → order record out).
HIST_HOP = 0
HIST_E2E = 1
HIST_AUX = 2
N_HISTS = 3

HIST = Layout("Hist", [Field("counts", "i8", hdr.COUNTS_LEN)])


@dataclass
class RunState:
    control: Blob
    stats: Blob
    hists: Blob

    @classmethod
    def create(cls, run: str, n_agents: int) -> RunState:
        control = Blob.create(run, "control", CONTROL, 1)
        control.slots[0]["n_agents"] = n_agents
        return cls(control, Blob.create(run, "stats", STATS, n_agents),
                   Blob.create(run, "hists", HIST, n_agents * N_HISTS))

    @classmethod
    def attach(cls, run: str) -> RunState:
        control = Blob.attach(run, "control", CONTROL, capacity=1)
        n = int(control.slots[0]["n_agents"])
        return cls(control, Blob.attach(run, "stats", STATS, capacity=n),
                   Blob.attach(run, "hists", HIST, capacity=n * N_HISTS))

    @property
    def ctl(self) -> np.void:
        return self.control.slots[0]

    def hist(self, agent: int, which: int) -> np.ndarray:
        return self.hists.slots[agent * N_HISTS + which]["counts"]

    def close(self) -> None:
        for b in (self.control, self.stats, self.hists):
            b.close()
