"""The machine a run's timings depend on, read once per recording (pyperf's run metadata, and more).

Each fact here moves a fork's latency with no change to the kernel's fork
path: transparent huge pages (the parent's page tables), SMT siblings, CPU
vulnerability mitigations (every kernel entry and exit), isolated and
tickless CPUs, the frequency range and boost, the load when the run began,
the cgroup's CPU quota, and the preemption model (where a thread inside
dup_mmap can be switched out: with preempt=none only where it blocks or
calls cond_resched()). What the host does not expose is None, never guessed.

Readers take a root directory so tests can give a made-up /proc and /sys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["machine_facts", "preempt_model", "vulnerability_summary"]

_CPU = "sys/devices/system/cpu"
# Boot parameters that change scheduling or the cost of a kernel entry.
_BOOT_PARAMS = ("isolcpus", "nohz_full", "mitigations", "preempt", "transparent_hugepage")
# CONFIG_PREEMPT_* set to y -> the model's name, as /sys/kernel/debug/sched/preempt spells it.
_PREEMPT_CONFIGS = (
    ("CONFIG_PREEMPT_RT", "rt"),
    ("CONFIG_PREEMPT_LAZY", "lazy"),
    ("CONFIG_PREEMPT", "full"),
    ("CONFIG_PREEMPT_VOLUNTARY", "voluntary"),
    ("CONFIG_PREEMPT_NONE", "none"),
)


def _read(root: Path, path: str) -> str | None:
    try:
        text = (root / path).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return None if text in ("", "(null)") else text


def _bracketed(text: str | None) -> str | None:
    """'always [madvise] never' -> 'madvise': the choice sysfs and debugfs mark."""
    if text is None:
        return None
    for word in text.split():
        if word.startswith(("[", "(")) and word.endswith(("]", ")")):
            return word[1:-1]
    return text


def _boot_params(cmdline: str | None) -> dict[str, str]:
    found = {}
    for arg in (cmdline or "").split():
        name, _, value = arg.partition("=")
        if name in _BOOT_PARAMS:
            found[name] = value
    return found


def preempt_model(root: Path, config: dict[str, str] | None, uname_version: str | None) -> str | None:
    """none, voluntary, full, lazy or rt: debugfs's choice, else preempt=, else the config's default."""
    chosen = _bracketed(_read(root, "sys/kernel/debug/sched/preempt"))
    if chosen:
        return chosen
    dynamic = "PREEMPT_DYNAMIC" in (uname_version or "") or (config or {}).get("CONFIG_PREEMPT_DYNAMIC") == "y"
    param = _boot_params(_read(root, "proc/cmdline")).get("preempt")
    if dynamic and param:
        return param
    for option, model in _PREEMPT_CONFIGS:
        if (config or {}).get(option) == "y":
            return model
    if uname_version and " PREEMPT_RT " in f" {uname_version} ":
        return "rt"
    return None


def _vulnerabilities(root: Path) -> dict[str, str] | None:
    directory = root / _CPU / "vulnerabilities"
    try:
        names = sorted(p.name for p in directory.iterdir())
    except OSError:
        return None
    return {name: _read(root, f"{_CPU}/vulnerabilities/{name}") or "" for name in names}


def vulnerability_summary(vulnerabilities: dict[str, str] | None) -> str | None:
    """'11 mitigated, 1 vulnerable, 8 not affected': a comparable line from the per-issue texts."""
    if not vulnerabilities:
        return None
    counts = {"mitigated": 0, "vulnerable": 0, "not affected": 0, "other": 0}
    for text in vulnerabilities.values():
        lower = text.lower()
        kind = ("not affected" if lower.startswith("not affected") else "vulnerable" if lower.startswith("vulnerable")
                else "mitigated" if lower.startswith("mitigation") else "other")
        counts[kind] += 1
    return ", ".join(f"{n} {kind}" for kind, n in counts.items() if n)


def _frequency(root: Path, cpu: int) -> dict[str, Any] | None:
    base = f"{_CPU}/cpu{cpu}/cpufreq"
    khz = {key: _read(root, f"{base}/scaling_{key}_freq") for key in ("min", "max", "cur")}
    driver = _read(root, f"{base}/scaling_driver")
    boost = _read(root, f"{_CPU}/cpufreq/boost")
    no_turbo = _read(root, f"{_CPU}/intel_pstate/no_turbo")
    if boost is None and no_turbo is not None:
        boost = "0" if no_turbo == "1" else "1"
    if driver is None and all(v is None for v in khz.values()) and boost is None:
        return None  # no cpufreq: a VM, or a fixed clock
    return {
        "cpu": cpu,
        "driver": driver,
        **{f"{key}_khz": int(v) if v and v.isdigit() else None for key, v in khz.items()},
        "boost": None if boost is None else boost == "1",
    }


def _loadavg(root: Path) -> list[float] | None:
    text = _read(root, "proc/loadavg")
    try:
        return [float(x) for x in text.split()[:3]] if text else None
    except ValueError:
        return None


def _cpu_quota(root: Path) -> str | None:
    """This process's cgroup CPU limit: 'QUOTA/PERIOD us at PATH' for the tightest found, 'max' for none."""
    text = _read(root, "proc/self/cgroup")
    if text is None:
        return None
    limits, seen = [], False
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        path = path.strip("/")
        parts = path.split("/") if path else []
        ancestors = ["/".join(parts[:i]) for i in range(len(parts), -1, -1)]
        if controllers == "":  # cgroup v2
            for cg in ancestors:
                value = _read(root, f"sys/fs/cgroup/{cg}/cpu.max".replace("//", "/"))
                if value is None:
                    value = _read(root, f"sys/fs/cgroup/unified/{cg}/cpu.max".replace("//", "/"))
                if value is not None:
                    seen = True
                    quota, _, period = value.partition(" ")
                    if quota != "max":
                        limits.append((int(quota) / int(period), f"{quota}/{period} us at /{cg}"))
        elif "cpu" in controllers.split(","):  # cgroup v1
            for mount in (controllers, "cpu", "cpu,cpuacct"):
                for cg in ancestors:
                    quota = _read(root, f"sys/fs/cgroup/{mount}/{cg}/cpu.cfs_quota_us".replace("//", "/"))
                    period = _read(root, f"sys/fs/cgroup/{mount}/{cg}/cpu.cfs_period_us".replace("//", "/"))
                    if quota is None or period is None:
                        continue
                    seen = True
                    if quota.lstrip("-").isdigit() and int(quota) > 0:
                        limits.append((int(quota) / int(period), f"{quota}/{period} us at /{cg}"))
                if seen:
                    break
    if limits:
        return min(limits)[1]
    return "max" if seen else None


def machine_facts(cpu: int | None = None, root: Path = Path("/"), config: dict[str, str] | None = None,
                  uname_version: str | None = None) -> dict[str, Any]:
    """The facts of the module docstring; cpu: the workload's CPU for the frequency (default 0)."""
    vulnerabilities = _vulnerabilities(root)
    return {
        "preempt": preempt_model(root, config, uname_version),
        "thp": _bracketed(_read(root, "sys/kernel/mm/transparent_hugepage/enabled")),
        "thp_defrag": _bracketed(_read(root, "sys/kernel/mm/transparent_hugepage/defrag")),
        "smt": _read(root, f"{_CPU}/smt/control"),
        "nohz_full": _read(root, f"{_CPU}/nohz_full"),
        "boot_params": _boot_params(_read(root, "proc/cmdline")),
        "mitigations": vulnerability_summary(vulnerabilities),
        "vulnerabilities": vulnerabilities,
        "frequency": _frequency(root, cpu or 0),
        "loadavg": _loadavg(root),
        "cpu_quota": _cpu_quota(root),
    }
