"""A stage process: pin, start its agents, wait at the readiness barrier, loop, close.

    while not stop:
        idle.idle(sum(agent.do_work() for agent in agents))

run.py spawns one host per placement group. The host dies with the launcher (PR_SET_PDEATHSIG),
stops on SIGTERM/SIGINT or the shared stop flag, and records its state, heartbeat and loop
counts in the shared stats so the launcher can supervise it.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from procs.agent import Agent, AgentContext
from procs.config import Config
from shm import metrics, wait
from shm.metrics import RunState
from shm.native import lib

_PR_SET_PDEATHSIG = 1
_MCL_CURRENT = 1
_MCL_FUTURE = 2
#: SCHED_FIFO priority when --realtime is asked for: above normal threads, below the kernel's own.
_FIFO_PRIORITY = 10
#: With several agents in one process, a park lasts at most this long so the others are polled.
_MULTI_PARK_NS = 200_000
#: Heartbeat and stop-flag checks: every this many busy passes, and at most every _CHECK_NS when idle
#: (they cost ~4 µs; on every idle pass they delayed the next message's pickup by as much).
_CHECK_EVERY = 256
_CHECK_NS = 1_000_000


def _die_with_parent(parent_pid: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:  # the launcher died before prctl took effect
        os._exit(1)


def load_agent(name: str) -> Agent:
    """procs/<name>.py defines AGENT, the agent class of that stage."""
    module = importlib.import_module(f"procs.{name}")
    return module.AGENT()


@dataclass
class HostSpec:
    """What one stage process runs; built by run.py, pickled to the spawned child."""

    run: str
    run_dir: str
    agents: list[str]
    agent_ids: list[int]
    cpu: int | None
    config: dict
    symbols: list[str]
    wait: str
    n_spinning: int
    parent_pid: int
    log_path: str
    realtime: bool = False


def _realtime(spec: HostSpec, idle: wait.IdleStrategy, log: logging.Logger) -> None:
    """mlockall, and SCHED_FIFO only where it cannot starve a core (a parking stage on its own CPU)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mlockall(_MCL_CURRENT | _MCL_FUTURE) != 0:
        _warn(log, f"realtime: mlockall failed: {os.strerror(ctypes.get_errno())} (raise RLIMIT_MEMLOCK or run "
                   "with CAP_IPC_LOCK); continuing without it")
    if spec.cpu is None:
        _warn(log, "realtime: SCHED_FIFO skipped: this stage is not pinned (a FIFO thread could take any core)")
        return
    if not idle.parks:
        _warn(log, f"realtime: SCHED_FIFO skipped: wait strategy {idle!r} never sleeps, so a FIFO thread would "
                   f"starve everything else on CPU {spec.cpu} (kernel threads, the launcher); use a park strategy")
        return
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(_FIFO_PRIORITY))
        log.info("realtime: SCHED_FIFO priority %d on CPU %d", _FIFO_PRIORITY, spec.cpu)
    except PermissionError:
        _warn(log, "realtime: SCHED_FIFO not permitted (needs CAP_SYS_NICE or an RLIMIT_RTPRIO); continuing "
                   "with the normal scheduler")


def _warn(log: logging.Logger, msg: str) -> None:
    log.warning(msg)
    print(f"tickpipe: warning: {msg}", file=sys.stderr, flush=True)


def host_main(spec: HostSpec) -> None:
    _die_with_parent(spec.parent_pid)
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the launcher, which stops us in order
    label = "+".join(spec.agents)
    logging.basicConfig(filename=spec.log_path, level=logging.INFO,
                        format=f"%(asctime)s {label}[%(process)d] %(levelname)s %(message)s")
    log = logging.getLogger("tickpipe." + label)
    cpus = os.sched_getaffinity(0)  # before pinning: `auto` counts the cores the run may use
    if spec.cpu is not None:
        os.sched_setaffinity(0, {spec.cpu})
    state = RunState.attach(spec.run)
    stats = state.stats.slots
    agents: list[Agent] = []
    for aid in spec.agent_ids:
        stats[aid]["pid"] = os.getpid()
        stats[aid]["cpu"] = -1 if spec.cpu is None else spec.cpu
    final = metrics.STATE_FAILED
    try:
        config = Config.from_dict(spec.config, origin="launcher")
        for name, aid in zip(spec.agents, spec.agent_ids, strict=True):
            agent = load_agent(name)
            ctx = AgentContext(run=spec.run, run_dir=spec.run_dir, config=config, symbols=spec.symbols,
                               counters=stats[aid]["counters"], hist_hop=state.hist(aid, metrics.HIST_HOP),
                               hist_e2e=state.hist(aid, metrics.HIST_E2E),
                               hist_aux=state.hist(aid, metrics.HIST_AUX), log=log)
            agent.on_start(ctx)
            agents.append(agent)
        if any(a.SPINS for a in agents):
            idle = wait.parse(spec.wait, n_spinning_processes=spec.n_spinning, cpus=cpus)
        else:  # background agents only: sleep in their parker between passes
            idle = wait.SpinYieldPark(spin_ns=0, yield_ns=0, park_timeout_ns=10_000_000)
        parkers = [p for p in (a.parker() for a in agents) if p is not None]
        if idle.parks and len(parkers) == 1 and len(agents) == 1:
            idle.bind(parkers[0])
        elif idle.parks and parkers:
            # several agents: park on one input with a short timeout so the others are polled too
            first = parkers[0]
            idle.bind(lambda timeout_ns: first(min(timeout_ns, _MULTI_PARK_NS)))
        if spec.realtime:
            _realtime(spec, idle, log)
        # before the barrier: a full collection of a process holding numba and onnxruntime takes
        # ~100 ms, which after `go` showed up as latency on the first messages
        gc.collect()
        gc.freeze()  # warm-up garbage is frozen; the hot loop allocates nothing worth collecting
        gc.disable()
        log.info("ready: agents=%s cpu=%s idle=%r", spec.agents, spec.cpu, idle)
        for aid in spec.agent_ids:
            stats[aid]["state"] = metrics.STATE_READY
        ctl = state.ctl
        while not ctl["go"] and not ctl["stop"] and not stop:
            time.sleep(0.0002)  # the wait between go and the first pass is part of the first message's latency
        for aid in spec.agent_ids:
            stats[aid]["state"] = metrics.STATE_RUNNING
        _loop(agents, spec.agent_ids, stats, ctl, idle, lambda: stop)
        final = metrics.STATE_STOPPED
    except BaseException:
        log.error("stage failed:\n%s", traceback.format_exc())
        print(f"tickpipe: stage {label} failed: {sys.exc_info()[1]!r} (log: {spec.log_path})", file=sys.stderr,
              flush=True)
        final = metrics.STATE_FAILED
    for agent in reversed(agents):
        try:
            agent.on_close()
        except Exception:
            log.error("on_close failed:\n%s", traceback.format_exc())
            final = metrics.STATE_FAILED
    for aid in spec.agent_ids:
        stats[aid]["state"] = final
        stats[aid]["heartbeat_ns"] = lib.tp_now_ns()
    state.close()
    logging.shutdown()
    sys.stdout.flush()
    os._exit(0 if final == metrics.STATE_STOPPED else 1)


def _loop(agents: list[Agent], agent_ids: list[int], stats: np.ndarray, ctl: np.void, idle: wait.IdleStrategy,
          stopped: Callable[[], bool]) -> None:
    recs = [stats[aid] for aid in agent_ids]
    first = recs[0]
    passes = 0
    work_total = 0
    active = list(agents)
    draining = False
    last_check = 0
    now_ns = lib.tp_now_ns
    while True:
        n = 0
        for agent in active:
            n += agent.do_work()
        work_total += n
        idle.idle(n)
        passes += 1
        if passes % _CHECK_EVERY == 0 or (n == 0 and now_ns() - last_check >= _CHECK_NS):
            now = last_check = now_ns()
            for rec, agent in zip(recs, agents, strict=True):
                rec["heartbeat_ns"] = now
                if agent.finished():
                    rec["finished"] = 1
            first["loops"] = passes
            first["work"] = work_total
            first["parks"] = getattr(idle, "parks_count", 0)
            if ctl["stop"] or stopped():
                return
            if ctl["drain"] and not draining:
                draining = True  # sources stop first; the stages after them drain what is in the rings
                active = [a for a in agents if not a.SOURCE]
                for rec, agent in zip(recs, agents, strict=True):
                    if agent.SOURCE:
                        rec["finished"] = 1
