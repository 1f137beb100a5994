"""Host doctor: is this machine tuned for a low-latency run, and what would change it.

    python run.py --doctor            # one line per check: status, what was found, the fix
    python -m procs.doctor --json     # the same as JSON

Every check reads files under a root path (default `/`: /proc, /sys, /dev/shm), so tests feed a fake
tree. Statuses: `ok`; `warn` (runs work, but the tail latency pays for it); `bad` (runs misbehave).

Exit status: 0 every check ok (tuned); 1 at least one check bad; 3 warnings only (runs fine, not
tuned); 2 a usage error (argparse).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from procs import placement as pl

OK, WARN, BAD = "ok", "warn", "bad"
EXIT_TUNED, EXIT_BAD, EXIT_UNTUNED = 0, 1, 3
_CAP_IPC_LOCK = 14
_CAP_SYS_NICE = 23
#: a stage process holds numba, numpy and onnxruntime: mlockall needs at least this much
_MLOCK_NEED = 1 << 30
#: C-states that take longer than this to leave add their exit latency to a parked stage's wake-up
_IDLE_LATENCY_US = 10
#: suggested guest halt-polling window: longer than a futex wake round trip, far shorter than a tick
_HALT_POLL_NS = 200_000


@dataclass
class Check:
    name: str
    status: str
    found: str
    fix: str = ""


class Host:
    """Reads the host's /proc and /sys below `root`; `live` enables the probes that act on this process."""

    def __init__(self, root: str | Path = "/", live: bool | None = None) -> None:
        self.root = Path(root)
        self.live = self.root.resolve() == Path("/") if live is None else live

    def path(self, rel: str) -> Path:
        return self.root / rel.lstrip("/")

    def read(self, rel: str) -> str | None:
        try:
            return self.path(rel).read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            return None

    def cpus(self) -> set[int]:
        online = self.read("sys/devices/system/cpu/online")
        cpus = parse_cpu_list(online) if online else set(range(os.cpu_count() or 1))
        if self.live:  # the CPUs run.py may use: its affinity, as the launcher sees it
            cpus &= os.sched_getaffinity(0)
        return cpus


def parse_cpu_list(text: str) -> set[int]:
    """'0-3,8,10-11' → {0, 1, 2, 3, 8, 10, 11}; '' → set()."""
    out: set[int] = set()
    for part in text.replace("\n", ",").split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        try:
            out.update(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            continue
    return out


def format_cpu_list(cpus: set[int] | list[int]) -> str:
    """{0, 1, 2, 5} → '0-2,5'."""
    xs = sorted(cpus)
    parts: list[str] = []
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        parts.append(str(xs[i]) if i == j else f"{xs[i]}-{xs[j]}")
        i = j + 1
    return ",".join(parts)


def _bracketed(text: str | None) -> str | None:
    m = re.search(r"\[(\w+)\]", text or "")
    return m.group(1) if m else None


def _cmdline_param(cmdline: str, key: str) -> str | None:
    for tok in cmdline.split():
        k, eq, v = tok.partition("=")
        if k == key:
            return v if eq else ""
    return None


def _isolcpus_list(value: str) -> set[int]:
    # isolcpus=[flag,...,]cpu-list: flags are words (nohz, domain, managed_irq)
    return parse_cpu_list(",".join(p for p in value.split(",") if not re.fullmatch(r"[a-z_]+", p)))


# -- context: what a run would use ------------------------------------------------------------------
@dataclass
class Plan:
    cpus: list[int]
    groups: list[pl.Group]
    spins: dict[str, bool]

    @property
    def spinning(self) -> list[pl.Group]:
        return [g for g in self.groups if any(self.spins.get(a, True) for a in g.agents)]

    @property
    def hot_cpus(self) -> set[int]:
        """CPUs where a spinning stage is pinned: the ones that must be quiet."""
        return {g.cpu for g in self.spinning if g.cpu is not None}

    @property
    def pinned(self) -> set[int]:
        return {g.cpu for g in self.groups if g.cpu is not None}

    @property
    def housekeeping(self) -> int:
        return self.cpus[0]


#: the agents' SPINS attributes as shipped, for when the agent modules cannot be imported
_KNOWN_SPINS = {"feed": True, "book": True, "strategy": True, "inference": False}


def default_spins() -> dict[str, bool]:
    """Each agent's SPINS class attribute (the launcher counts spinning processes the same way)."""
    try:
        from procs.launcher import agent_class

        return {a: bool(agent_class(a).SPINS) for a in pl.AGENTS}
    except Exception:  # the doctor must answer even when a stage module is broken or half-installed
        return dict(_KNOWN_SPINS)


def make_plan(host: Host, placement: str = "auto", spins: dict[str, bool] | None = None) -> Plan:
    cpus = host.cpus()
    groups = pl.default_placement(cpus) if placement == "auto" else pl.parse(placement, cpus=cpus)
    return Plan(sorted(cpus), groups, spins if spins is not None else default_spins())


# -- the checks -------------------------------------------------------------------------------------
def check_cpus(host: Host, plan: Plan) -> Check:
    n, n_agents, n_spin = len(plan.cpus), len(pl.AGENTS), len(plan.spinning)
    layout = pl.format_placement(plan.groups)
    if n_spin > n:
        return Check("cpus", BAD, f"{n} CPU(s) for {n_spin} spinning processes (placement \"{layout}\")",
                     "group agents into fewer processes (--placement 'feed,book,strategy@0 inference@1') or let "
                     "them park (--wait park): spinners sharing a core measured 8 ms round trips")
    if n >= n_agents + 1:
        return Check("cpus", OK, f"{n} CPUs: one core per agent, CPU {plan.housekeeping} left to the OS "
                                 f"(placement \"{layout}\")")
    return Check("cpus", WARN,
                 f"{n} CPU(s) for {n_agents} agents: placement \"{layout}\" ({n_spin} spinning process(es)); stages "
                 "share threads and no CPU is left to the OS alone",
                 f"give the host >= {n_agents + 1} CPUs (one per agent + one for the OS, IRQs and the launcher); "
                 "the default placement then pins one agent per core")


def check_isolation(host: Host, plan: Plan) -> Check:
    cmdline = host.read("proc/cmdline") or ""
    iso_param = _cmdline_param(cmdline, "isolcpus")
    isolated = parse_cpu_list(host.read("sys/devices/system/cpu/isolated") or "")
    if iso_param:
        isolated |= _isolcpus_list(iso_param)
    nohz = parse_cpu_list(host.read("sys/devices/system/cpu/nohz_full") or _cmdline_param(cmdline, "nohz_full") or "")
    rcu = parse_cpu_list(_cmdline_param(cmdline, "rcu_nocbs") or "")
    found = (f"isolated={format_cpu_list(isolated) or 'none'} nohz_full={format_cpu_list(nohz) or 'none'} "
             f"rcu_nocbs={format_cpu_list(rcu) or 'none'}; spinning stages pinned on "
             f"{format_cpu_list(plan.hot_cpus) or 'no CPU'}")
    if len(plan.cpus) < 2:
        return Check("isolation", WARN, found + "; one CPU: nothing can be isolated",
                     "give the host >= 2 CPUs, then isolate all but CPU 0")
    hot = plan.hot_cpus
    if hot and hot <= isolated and hot <= nohz and hot <= rcu:
        return Check("isolation", OK, found)
    target = set(plan.cpus[1:])  # every CPU but the housekeeping one, which keeps the kernel's own work
    lst = format_cpu_list(target)
    fix = (f"add to the kernel command line: isolcpus=nohz,domain,managed_irq,{lst} nohz_full={lst} rcu_nocbs={lst} "
           "(GRUB_CMDLINE_LINUX in /etc/default/grub, update-grub, reboot; for a VM, its boot arguments)")
    if plan.housekeeping in hot:
        # the default placement on < 3 CPUs uses CPU 0, which can never be isolated: move the chain off it
        moved = " ".join(f"{','.join(g.agents)}@{plan.cpus[1] if g.cpu == plan.housekeeping else plan.cpus[0]}"
                         for g in plan.groups)
        fix += (f"; CPU {plan.housekeeping} (housekeeping, cannot be isolated) runs a spinning stage: pin it on an "
                f"isolated CPU, e.g. --placement '{moved}', or use >= {len(pl.AGENTS) + 1} CPUs")
    return Check("isolation", WARN, found, fix)


def check_governor(host: Host, plan: Plan) -> Check:
    govs = {}
    for c in plan.cpus:
        g = host.read(f"sys/devices/system/cpu/cpu{c}/cpufreq/scaling_governor")
        if g is not None:
            govs[c] = g
    if not govs:
        return Check("governor", WARN,
                     "no cpufreq in this kernel (a VM guest: the hypervisor sets the CPU frequency)",
                     "nothing to change in the guest; on the hypervisor host: cpupower frequency-set -g performance "
                     "and disable deep C-states for the vCPUs' cores")
    slow = {c: g for c, g in govs.items() if g != "performance"}
    found = ", ".join(f"cpu{c}={g}" for c, g in sorted(govs.items()))
    if not slow:
        return Check("governor", OK, found)
    return Check("governor", WARN, found + " (frequency ramps up after work arrives: the first messages pay)",
                 "cpupower frequency-set -g performance (or echo performance > "
                 "/sys/devices/system/cpu/cpu*/cpufreq/scaling_governor)")


def check_thp(host: Host, plan: Plan) -> Check:
    enabled = _bracketed(host.read("sys/kernel/mm/transparent_hugepage/enabled"))
    defrag = _bracketed(host.read("sys/kernel/mm/transparent_hugepage/defrag"))
    if enabled is None:
        return Check("thp", OK, "transparent huge pages not available")
    found = f"enabled={enabled} defrag={defrag or '?'}"
    fixes = []
    if enabled == "always":
        fixes.append("echo madvise > /sys/kernel/mm/transparent_hugepage/enabled (or transparent_hugepage=madvise): "
                     "khugepaged collapses and page-fault compaction stall the stages")
    if defrag == "always":
        fixes.append("echo defer+madvise > /sys/kernel/mm/transparent_hugepage/defrag (no synchronous compaction)")
    return Check("thp", WARN if fixes else OK, found, "; ".join(fixes))


def _running(host: Host, comm: str) -> list[int]:
    pids = []
    try:
        entries = list(host.path("proc").iterdir())
    except OSError:
        return pids
    for d in entries:
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().strip() == comm:
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


def check_irqbalance(host: Host, plan: Plan) -> Check:
    pids = _running(host, "irqbalance")
    default = host.read("proc/irq/default_smp_affinity") or "?"
    if not pids:
        return Check("irqbalance", OK, f"not running (IRQs stay where set; default_smp_affinity={default})")
    mask = 1 << plan.housekeeping
    return Check("irqbalance", WARN, f"running (pid {pids[0]}): it moves device interrupts onto the pinned CPUs",
                 f"systemctl disable --now irqbalance, then keep IRQs on CPU {plan.housekeeping}: echo {mask:x} > "
                 f"/proc/irq/default_smp_affinity (and each /proc/irq/*/smp_affinity); or set "
                 f"IRQBALANCE_BANNED_CPULIST={format_cpu_list(set(plan.cpus[1:])) or plan.housekeeping} in "
                 "/etc/default/irqbalance")


def check_smt(host: Host, plan: Plan) -> Check:
    pinned = plan.pinned
    if not pinned:
        return Check("smt", OK, "no stage is pinned")
    shared, unknown = [], []
    for c in sorted(pinned):
        text = host.read(f"sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list")
        if text is None:
            unknown.append(c)
            continue
        others = parse_cpu_list(text) - {c}
        if others:
            shared.append(f"cpu{c}+{format_cpu_list(others)}")
    if unknown and not shared:
        return Check("smt", WARN, f"no topology for CPU(s) {format_cpu_list(set(unknown))}",
                     "check lscpu: a pinned stage's hyperthread sibling must stay idle")
    if not shared:
        return Check("smt", OK, f"no SMT sibling on pinned CPU(s) {format_cpu_list(pinned)}")
    return Check("smt", WARN, f"pinned CPUs share a core with a sibling: {' '.join(shared)} (a busy sibling "
                              "halves the core's throughput and adds jitter)",
                 "keep every sibling of a pinned CPU idle (isolate it and pin nothing there), or disable SMT: "
                 "echo off > /sys/devices/system/cpu/smt/control (or nosmt on the kernel command line)")


def _status_field(host: Host, key: str) -> str | None:
    for line in (host.read("proc/self/status") or "").splitlines():
        k, _, v = line.partition(":")
        if k == key:
            return v.strip()
    return None


def _has_cap(host: Host, bit: int) -> bool:
    eff = _status_field(host, "CapEff")
    try:
        return bool(int(eff or "0", 16) >> bit & 1)
    except ValueError:
        return False


def _limit(host: Host, label: str) -> int | None:
    """Soft limit from /proc/self/limits: None = unlimited, -1 = unknown."""
    for line in (host.read("proc/self/limits") or "").splitlines():
        if line.startswith(label):
            soft = line[len(label):].split()[0]
            return None if soft == "unlimited" else int(soft)
    return -1


def check_mlock(host: Host, plan: Plan) -> Check:
    lim = _limit(host, "Max locked memory")
    cap = _has_cap(host, _CAP_IPC_LOCK)
    lim_txt = "unlimited" if lim is None else "unknown" if lim == -1 else f"{lim / 2**20:g} MiB"
    found = f"RLIMIT_MEMLOCK={lim_txt} CAP_IPC_LOCK={'yes' if cap else 'no'}"
    if cap or lim is None or lim >= _MLOCK_NEED:
        return Check("mlock", OK, found + " (--realtime's mlockall will succeed)")
    return Check("mlock", WARN, found + ": --realtime's mlockall will fail, so stage pages can be reclaimed",
                 "ulimit -l unlimited before run.py (limits.conf: '<user> - memlock unlimited'; systemd: "
                 "LimitMEMLOCK=infinity) or grant CAP_IPC_LOCK")


def _try_fifo() -> str:
    """SCHED_FIFO on a throwaway thread (pid 0 = the calling thread), restored before it ends."""
    result = ["not tried"]

    def probe() -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            result[0] = "ok"
        except OSError as e:
            result[0] = e.strerror or str(e)

    t = threading.Thread(target=probe, name="doctor-fifo-probe")
    t.start()
    t.join(5)
    return result[0]


def check_sched_fifo(host: Host, plan: Plan) -> Check:
    rtprio = _limit(host, "Max realtime priority")
    cap = _has_cap(host, _CAP_SYS_NICE)
    permitted = cap or rtprio is None or (rtprio is not None and rtprio > 0)
    found = f"CAP_SYS_NICE={'yes' if cap else 'no'} RLIMIT_RTPRIO={'unlimited' if rtprio is None else rtprio}"
    if host.live:
        probe = _try_fifo()
        found += f", tried on a thread: {probe}"
        permitted = probe == "ok"
    runtime = host.read("proc/sys/kernel/sched_rt_runtime_us")
    if runtime and runtime != "-1":
        found += f" (RT throttling: {runtime} µs per s)"
    if permitted:
        return Check("sched_fifo", OK, found + " (--realtime can use SCHED_FIFO for parking stages)")
    return Check("sched_fifo", WARN, found + ": --realtime's SCHED_FIFO will be refused",
                 "ulimit -r 10 (limits.conf: '<user> - rtprio 10'; systemd: LimitRTPRIO=10) or grant CAP_SYS_NICE")


def shm_needed(config: Any = None, n_symbols: int | None = None) -> int:
    """Bytes of /dev/shm one run takes: its rings, boards and run-state segments (from the config)."""
    from procs.config import Config
    from shm import metrics, records
    from shm.native import lib
    from shm.records import BOOK, FEATURES, MARKET, ORDER, SCORE
    from shm.ring import Blob, Board, SpscRing

    cfg = config if config is not None else Config()
    n_sym = n_symbols if n_symbols is not None else len(cfg.sim.symbols)
    n_agents = len(pl.AGENTS)
    parts = [(SpscRing.SHAPE, MARKET, cfg.rings.market, 1), (SpscRing.SHAPE, BOOK, cfg.rings.book, 1),
             (SpscRing.SHAPE, ORDER, cfg.rings.orders, 1), (Board.SHAPE, FEATURES, n_sym, 1),
             (Board.SHAPE, SCORE, n_sym, 1), (Blob.SHAPE, metrics.CONTROL, 1, 1),
             (Blob.SHAPE, metrics.STATS, n_agents, 1), (Blob.SHAPE, metrics.HIST, n_agents * metrics.N_HISTS, 1)]
    if hasattr(cfg.rings, "fills") and hasattr(records, "FILL"):  # the paper exchange's fills ring
        parts.append((SpscRing.SHAPE, records.FILL, cfg.rings.fills, 1))
    return sum(int(lib.tp_ring_bytes(shape, layout.size, n, c)) for shape, layout, n, c in parts)


def check_dev_shm(host: Host, plan: Plan, config: Any = None) -> Check:
    need = shm_needed(config)
    try:
        st = os.statvfs(host.path("dev/shm"))
    except OSError as e:
        return Check("dev_shm", BAD, f"/dev/shm not usable: {e.strerror}",
                     "mount -t tmpfs -o size=1g tmpfs /dev/shm")
    free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
    found = f"{free / 2**20:,.0f} MiB free of {total / 2**20:,.0f} MiB; a run with these ring sizes needs " \
            f"{need / 2**20:,.1f} MiB"
    if need > free:
        return Check("dev_shm", BAD, found, f"mount -o remount,size={max(need * 2, 1 << 30) // 2**20}m /dev/shm, "
                                            "or smaller rings (--set rings.market=...)")
    if need * 2 > free:
        return Check("dev_shm", WARN, found + " (less than twice what one run needs)",
                     f"mount -o remount,size={max(need * 4, 1 << 30) // 2**20}m /dev/shm")
    return Check("dev_shm", OK, found)


def check_clocksource(host: Host, plan: Plan) -> Check:
    base = "sys/devices/system/clocksource/clocksource0"
    cur = host.read(f"{base}/current_clocksource")
    avail = (host.read(f"{base}/available_clocksource") or "").split()
    if cur is None:
        return Check("clocksource", WARN, "unknown (no clocksource in /sys)", "check dmesg | grep clocksource")
    found = f"{cur} (available: {' '.join(avail) or '?'})"
    if cur == "tsc":
        return Check("clocksource", OK, found + ": clock_gettime stays in the vDSO (~20-30 ns)")
    offered = "" if "tsc" in avail else " (tsc is not offered here: the hypervisor must expose a stable TSC)"
    fix = ("add clocksource=tsc tsc=reliable to the kernel command line if the CPU has constant_tsc and nonstop_tsc "
           "(grep -o 'constant_tsc\\|nonstop_tsc' /proc/cpuinfo), or now: echo tsc > "
           f"/sys/devices/system/clocksource/clocksource0/current_clocksource{offered}")
    if cur in ("hpet", "acpi_pm", "jiffies"):
        return Check("clocksource", BAD, found + ": every timestamp is a slow hardware read (µs), on every message",
                     fix)
    return Check("clocksource", WARN, found + ": a paravirtual clock costs more per read than the TSC", fix)


def check_cpuidle(host: Host, plan: Plan) -> Check:
    driver = host.read("sys/devices/system/cpu/cpuidle/current_driver")
    if driver is None or driver == "none":
        return Check("cpuidle", OK, "no cpuidle driver (idle is a plain halt)")
    if driver == "haltpoll":
        poll = host.read("sys/module/haltpoll/parameters/guest_halt_poll_ns")
        found = f"driver=haltpoll guest_halt_poll_ns={poll if poll is not None else '?'}"
        if poll is not None and poll.isdigit() and int(poll) == 0:
            return Check("cpuidle", WARN, found + ": an idle vCPU halts at once, so waking a parked stage (inference, "
                                                  "--wait park) costs a VM exit and a host IPI",
                         f"set haltpoll.guest_halt_poll_ns={_HALT_POLL_NS} on the kernel command line (now: echo "
                         f"{_HALT_POLL_NS} > /sys/module/haltpoll/parameters/guest_halt_poll_ns)")
        return Check("cpuidle", OK, found)
    deep = []
    state_dir = host.path("sys/devices/system/cpu/cpu0/cpuidle")
    for d in sorted(state_dir.glob("state*")) if state_dir.is_dir() else []:
        try:
            lat = int((d / "latency").read_text().strip())
            disabled = (d / "disable").read_text().strip() == "1" if (d / "disable").exists() else False
            name = (d / "name").read_text().strip() if (d / "name").exists() else d.name
        except (OSError, ValueError):
            continue
        if lat > _IDLE_LATENCY_US and not disabled:
            deep.append(f"{name}({lat} µs)")
    if not deep:
        return Check("cpuidle", OK, f"driver={driver}, no enabled C-state exits slower than {_IDLE_LATENCY_US} µs")
    return Check("cpuidle", WARN, f"driver={driver}, deep C-states enabled: {' '.join(deep)} (a parked stage "
                                  "wakes through their exit latency)",
                 f"cpupower idle-set -D {_IDLE_LATENCY_US} (or processor.max_cstate=1 intel_idle.max_cstate=0 on the "
                 "kernel command line)")


def check_swap(host: Host, plan: Plan) -> Check:
    lines = (host.read("proc/swaps") or "").splitlines()[1:]
    swappiness = host.read("proc/sys/vm/swappiness") or "?"
    if not [ln for ln in lines if ln.strip()]:
        return Check("swap", OK, f"no swap (vm.swappiness={swappiness})")
    devs = ", ".join(ln.split()[0] for ln in lines if ln.strip())
    return Check("swap", WARN, f"swap on {devs} (vm.swappiness={swappiness}): an idle stage's pages can be swapped "
                               "out and fault back in on the next message",
                 "swapoff -a, or run with --realtime (mlockall keeps stage memory resident)")


def check_numa_balancing(host: Host, plan: Plan) -> Check:
    v = host.read("proc/sys/kernel/numa_balancing")
    if v in (None, "0"):
        return Check("numa_balancing", OK, "off" if v == "0" else "not available")
    return Check("numa_balancing", WARN, f"kernel.numa_balancing={v}: it unmaps pages to sample accesses, so hot "
                                         "ring pages take minor faults", "sysctl -w kernel.numa_balancing=0")


def check_watchdog(host: Host, plan: Plan) -> Check:
    nmi = host.read("proc/sys/kernel/nmi_watchdog")
    soft = host.read("proc/sys/kernel/watchdog")
    mask = parse_cpu_list(host.read("proc/sys/kernel/watchdog_cpumask") or "")
    found = f"nmi_watchdog={nmi or 'n/a'} watchdog={soft or 'n/a'} watchdog_cpumask={format_cpu_list(mask) or 'n/a'}"
    fixes = []
    if nmi == "1":
        fixes.append("sysctl -w kernel.nmi_watchdog=0 (or nmi_watchdog=0): a perf-counter NMI on every CPU")
    # the housekeeping CPU keeps the watchdog; a spinning stage there is the isolation check's business
    hot_watched = (plan.hot_cpus - {plan.housekeeping}) & (mask or set(plan.cpus))
    if soft == "1" and hot_watched:
        fixes.append(f"sysctl -w kernel.watchdog_cpumask={plan.housekeeping} (or nowatchdog): the soft-lockup "
                     f"timer wakes CPU(s) {format_cpu_list(hot_watched)} every few seconds")
    return Check("watchdog", WARN if fixes else OK, found, "; ".join(fixes))


CHECKS = (check_cpus, check_isolation, check_governor, check_thp, check_irqbalance, check_smt, check_mlock,
          check_sched_fifo, check_dev_shm, check_clocksource, check_cpuidle, check_swap, check_numa_balancing,
          check_watchdog)


def run_checks(root: str | Path = "/", *, placement: str = "auto", spins: dict[str, bool] | None = None,
               config: Any = None, live: bool | None = None) -> list[Check]:
    """Every check, in order; a check that raises is reported as `warn` with its error, never lost."""
    host = Host(root, live)
    plan = make_plan(host, placement, spins)
    out = []
    for fn in CHECKS:
        name = fn.__name__.removeprefix("check_")
        try:
            out.append(fn(host, plan, config) if fn is check_dev_shm else fn(host, plan))
        except Exception as e:  # a doctor that crashes on an odd host tells nothing
            out.append(Check(name, WARN, f"check failed: {e!r}", "report this host's layout"))
    return out


def exit_code(checks: list[Check]) -> int:
    statuses = {c.status for c in checks}
    return EXIT_BAD if BAD in statuses else EXIT_UNTUNED if WARN in statuses else EXIT_TUNED


def verdict(checks: list[Check]) -> str:
    n_bad = sum(c.status == BAD for c in checks)
    n_warn = sum(c.status == WARN for c in checks)
    if n_bad:
        return f"bad: {n_bad} check(s) bad, {n_warn} warning(s): runs will misbehave until the bad ones are fixed"
    if n_warn:
        return f"not tuned: {n_warn} warning(s): runs work, tail latency pays for each"
    return "tuned: every check ok"


def as_dict(checks: list[Check]) -> dict[str, Any]:
    """The doctor's result as stored in summary.json (meta.doctor) and printed by --json."""
    return {"verdict": verdict(checks), "exit_code": exit_code(checks), "checks": [asdict(c) for c in checks]}


def format_checks(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        line = f"{c.status:<4}  {c.name:<{width}}  {c.found}"
        if c.fix:
            line += f"  → fix: {c.fix}"
        lines.append(line)
    lines.append(f"verdict: {verdict(checks)} (exit {exit_code(checks)})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m procs.doctor", description=__doc__.split("\n\n")[0],
                                epilog="exit status: 0 tuned, 1 something bad, 3 warnings only, 2 usage error")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.add_argument("--root", default="/", help="read /proc and /sys below this folder (a copy of another host's)")
    p.add_argument("--placement", default="auto", help="placement to check against (default: auto, as run.py)")
    args = p.parse_args(argv)
    try:
        checks = run_checks(args.root, placement=args.placement)
    except pl.PlacementError as e:
        print(f"doctor: {e}", file=sys.stderr)
        return 2
    if args.json:
        import orjson

        print(orjson.dumps(as_dict(checks), option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_checks(checks))
    return exit_code(checks)


if __name__ == "__main__":
    sys.exit(main())
