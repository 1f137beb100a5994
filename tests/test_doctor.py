"""The host doctor on fake /proc and /sys trees (a tuned host, an untuned VM, broken hosts) and on this host."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from procs import doctor
from procs.config import Config

ROOT = Path(__file__).resolve().parents[1]
SPINS = {"feed": True, "book": True, "strategy": True, "inference": False}
# CapEff with every capability, and with none
ALL_CAPS, NO_CAPS = "000001ffffffffff", "0000000000000000"


def limits(memlock: str, rtprio: str) -> str:
    return ("Limit                     Soft Limit           Hard Limit           Units\n"
            f"Max locked memory         {memlock:<20} {memlock:<20} bytes\n"
            f"Max realtime priority     {rtprio:<20} {rtprio:<20}\n")


def make_tree(root: Path, *, n_cpus: int, isolated: str = "", cmdline: str = "quiet", governor: str | None = None,
              thp: str = "always madvise [never]", irqbalance: bool = False, siblings: dict[int, str] | None = None,
              caps: str = ALL_CAPS, memlock: str = "unlimited", rtprio: str = "unlimited",
              clocksource: str = "tsc", idle_driver: str = "intel_idle", deep_state_us: int = 2,
              swap: bool = False, numa: str = "0", watchdog: str = "0") -> Path:
    files = {
        "proc/cmdline": cmdline,
        "sys/devices/system/cpu/online": f"0-{n_cpus - 1}",
        "sys/devices/system/cpu/isolated": isolated,
        "sys/kernel/mm/transparent_hugepage/enabled": thp,
        "sys/kernel/mm/transparent_hugepage/defrag": "always defer [madvise] never",
        "proc/self/status": f"Name:\tpython\nCapEff:\t{caps}\n",
        "proc/self/limits": limits(memlock, rtprio),
        "proc/sys/kernel/sched_rt_runtime_us": "950000",
        "sys/devices/system/clocksource/clocksource0/current_clocksource": clocksource,
        "sys/devices/system/clocksource/clocksource0/available_clocksource": "tsc kvm-clock hpet",
        "sys/devices/system/cpu/cpuidle/current_driver": idle_driver,
        "sys/devices/system/cpu/cpu0/cpuidle/state0/latency": "0",
        "sys/devices/system/cpu/cpu0/cpuidle/state0/name": "POLL",
        "sys/devices/system/cpu/cpu0/cpuidle/state1/latency": str(deep_state_us),
        "sys/devices/system/cpu/cpu0/cpuidle/state1/name": "C6",
        "sys/devices/system/cpu/cpu0/cpuidle/state1/disable": "0",
        "proc/swaps": "Filename Type Size Used Priority\n" + ("/swapfile file 1048572 0 -2\n" if swap else ""),
        "proc/sys/vm/swappiness": "60",
        "proc/sys/kernel/numa_balancing": numa,
        "proc/sys/kernel/nmi_watchdog": "0",
        "proc/sys/kernel/watchdog": watchdog,
        "proc/sys/kernel/watchdog_cpumask": f"0-{n_cpus - 1}",
        "proc/irq/default_smp_affinity": "1",
        "proc/1/comm": "systemd",
    }
    if isolated:
        files["sys/devices/system/cpu/nohz_full"] = isolated
    if irqbalance:
        files["proc/812/comm"] = "irqbalance"
    for c in range(n_cpus):
        files[f"sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list"] = (siblings or {}).get(c, str(c))
        if governor is not None:
            files[f"sys/devices/system/cpu/cpu{c}/cpufreq/scaling_governor"] = governor
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    (root / "dev/shm").mkdir(parents=True, exist_ok=True)
    return root


def checks_of(root: Path, **kw: object) -> dict[str, doctor.Check]:
    return {c.name: c for c in doctor.run_checks(root, spins=SPINS, live=False, **kw)}  # type: ignore[arg-type]


def tuned(tmp_path: Path) -> Path:
    iso = "1-5"
    return make_tree(tmp_path, n_cpus=6, isolated=iso, governor="performance",
                     cmdline=f"quiet isolcpus=nohz,domain,managed_irq,{iso} nohz_full={iso} rcu_nocbs={iso}")


def test_a_tuned_host_is_ok_everywhere_and_exits_0(tmp_path: Path) -> None:
    checks = doctor.run_checks(tuned(tmp_path), spins=SPINS, live=False)
    assert {c.name: c.status for c in checks if c.status != "ok"} == {}
    assert doctor.exit_code(checks) == doctor.EXIT_TUNED == 0
    assert doctor.verdict(checks).startswith("tuned")
    assert all(c.fix == "" for c in checks)


def test_the_two_vcpu_vm_is_untuned_with_concrete_fixes(tmp_path: Path) -> None:
    # this VM's layout: 2 vCPUs, no isolation, no cpufreq, haltpoll with polling off, soft-lockup watchdog
    root = make_tree(tmp_path, n_cpus=2, cmdline="console=ttyS0 haltpoll.guest_halt_poll_ns=0",
                     thp="always [madvise] never", idle_driver="haltpoll", watchdog="1", memlock="8388608",
                     rtprio="0")
    (root / "sys/module/haltpoll/parameters").mkdir(parents=True)
    (root / "sys/module/haltpoll/parameters/guest_halt_poll_ns").write_text("0\n")
    c = checks_of(root)
    assert c["cpus"].status == "warn" and "feed,book,strategy@0 inference@1" in c["cpus"].found
    assert ">= 5 CPUs" in c["cpus"].fix
    iso = c["isolation"]
    assert iso.status == "warn"
    assert "isolcpus=nohz,domain,managed_irq,1 nohz_full=1 rcu_nocbs=1" in iso.fix
    assert "--placement 'feed,book,strategy@1 inference@0'" in iso.fix  # CPU 0 cannot be isolated
    assert c["governor"].status == "warn" and "cpupower frequency-set -g performance" in c["governor"].fix
    assert c["cpuidle"].status == "warn" and "haltpoll.guest_halt_poll_ns=200000" in c["cpuidle"].fix
    for ok in ("thp", "irqbalance", "smt", "mlock", "sched_fifo", "dev_shm", "clocksource", "swap"):
        assert c[ok].status == "ok", (ok, c[ok])
    checks = list(c.values())
    assert doctor.exit_code(checks) == doctor.EXIT_UNTUNED == 3
    assert "bad" not in {x.status for x in checks}


@pytest.mark.parametrize(("kw", "name", "status", "fix_part"), [
    ({"governor": "powersave"}, "governor", "warn", "cpupower frequency-set -g performance"),
    ({"thp": "[always] madvise never"}, "thp", "warn", "echo madvise >"),
    ({"irqbalance": True}, "irqbalance", "warn", "systemctl disable --now irqbalance"),
    ({"siblings": {1: "1,7", 7: "1,7"}}, "smt", "warn", "smt/control"),
    ({"caps": NO_CAPS, "memlock": "65536"}, "mlock", "warn", "ulimit -l unlimited"),
    ({"caps": NO_CAPS, "rtprio": "0"}, "sched_fifo", "warn", "ulimit -r"),
    ({"clocksource": "kvm-clock"}, "clocksource", "warn", "clocksource=tsc"),
    ({"clocksource": "hpet"}, "clocksource", "bad", "clocksource=tsc"),
    ({"deep_state_us": 133}, "cpuidle", "warn", "cpupower idle-set -D 10"),
    ({"swap": True}, "swap", "warn", "swapoff -a"),
    ({"numa": "1"}, "numa_balancing", "warn", "kernel.numa_balancing=0"),
    ({"watchdog": "1"}, "watchdog", "warn", "kernel.watchdog_cpumask=0"),
])
def test_each_bad_setting_is_caught_with_its_fix(tmp_path: Path, kw: dict, name: str, status: str,
                                                 fix_part: str) -> None:
    iso = "1-7"
    root = make_tree(tmp_path, n_cpus=8, isolated=iso, governor=kw.pop("governor", "performance"),
                     cmdline=f"isolcpus={iso} nohz_full={iso} rcu_nocbs={iso}", **kw)
    c = checks_of(root)
    assert c[name].status == status, c[name]
    assert fix_part in c[name].fix
    others = {n: x.status for n, x in c.items() if n != name and x.status != "ok"}
    assert others == {}, others  # one setting changed, one check flags it
    assert doctor.exit_code(list(c.values())) == (1 if status == "bad" else 3)


def test_more_spinners_than_cpus_is_bad_and_exits_1(tmp_path: Path) -> None:
    root = make_tree(tmp_path, n_cpus=2)
    c = checks_of(root, placement="feed@0 book@1 strategy@1 inference@0")
    assert c["cpus"].status == "bad" and "3 spinning processes" in c["cpus"].found
    assert doctor.exit_code(list(c.values())) == doctor.EXIT_BAD == 1


def test_dev_shm_too_small_for_the_rings_is_bad(tmp_path: Path) -> None:
    root = make_tree(tmp_path, n_cpus=6)
    config = Config()
    config.rings.market = 1 << 40  # 2^40 slots: more than any /dev/shm holds
    c = {x.name: x for x in doctor.run_checks(root, spins=SPINS, live=False, config=config)}
    assert c["dev_shm"].status == "bad" and "remount" in c["dev_shm"].fix
    assert doctor.shm_needed(config) > doctor.shm_needed(Config())


def test_partial_isolation_still_warns(tmp_path: Path) -> None:
    # the stages are pinned on 1-5, only 1-2 are isolated
    root = make_tree(tmp_path, n_cpus=6, isolated="1-2", governor="performance",
                     cmdline="isolcpus=1-2 nohz_full=1-2 rcu_nocbs=1-2")
    iso = checks_of(root)["isolation"]
    assert iso.status == "warn" and "isolcpus=nohz,domain,managed_irq,1-5" in iso.fix


def test_cpu_lists_parse_and_format() -> None:
    assert doctor.parse_cpu_list("0-3,8,10-11\n") == {0, 1, 2, 3, 8, 10, 11}
    assert doctor.format_cpu_list({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"
    assert doctor._isolcpus_list("nohz,domain,managed_irq,2-3,6") == {2, 3, 6}


def test_on_this_host_every_check_answers_and_the_cli_agrees() -> None:
    checks = doctor.run_checks()
    names = [c.name for c in checks]
    assert names == [fn.__name__.removeprefix("check_") for fn in doctor.CHECKS]
    assert all(c.status in ("ok", "warn", "bad") and c.found for c in checks)
    assert all(c.fix for c in checks if c.status != "ok"), "every warning says what to change"
    r = subprocess.run([sys.executable, str(ROOT / "run.py"), "--doctor=json"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    data = json.loads(r.stdout)
    assert r.returncode == data["exit_code"] == doctor.exit_code(checks)
    assert [c["name"] for c in data["checks"]] == names
    text = subprocess.run([sys.executable, "-m", "procs.doctor"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert text.returncode == r.returncode
    assert len(text.stdout.strip().splitlines()) == len(names) + 1 and "verdict:" in text.stdout
