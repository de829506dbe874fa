"""The context of a run, recorded with it: kernel, host, CPUs, what the tracer used.

Like pyperf's metadata collection: a later comparison is only as trustworthy
as what it knows about both runs (kernel, CPU model, pinning, governor).
"""

from __future__ import annotations

import os
import platform
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

from typing import TYPE_CHECKING, Any, Protocol

from analysis.recording.phases import WINDOWS
from tracer import __version__

if TYPE_CHECKING:
    from tracer.host.facts import HostFacts
    from tracer.host.methods import MethodPlan
    from tracer.record.options import RecordOptions

__all__ = ["Collected", "level_methods", "run_metadata", "host_context", "keep_off_cpu", "wall_mono"]


class Collected(Protocol):
    """What a finished run collected (tracer.record.session.Session has these)."""

    workload: dict | None
    start: dict
    end: dict
    counters: dict[str, int]
    ma_writes: int
    stacks: list[dict]
    maps: list[dict]
    stores: int
    other_writes: int
    forks: int
    exact_counters: dict[str, int] | None
    exact_missed: dict[str, object] | None
    exact_unmatched: int
    exact_unmatched_calls: list[dict]


# Phases timed from ma_write stores: --level fork attaches no per-VMA program.
STORE_PHASES = WINDOWS


def runs_mt_dup(facts: HostFacts) -> bool:
    """__mt_dup in kallsyms: one mas_store() per VMA, so bracket.c knows the last store in advance.

    Otherwise (the bulk build before v6.8, or kallsyms unread) it times every store.
    """
    mt_dup = facts.symbols.get("__mt_dup")
    return mt_dup is not None and mt_dup.kallsyms is True


def level_methods(phases: dict[str, str], level: str | None) -> dict[str, str]:
    """Doctor's method per phase, as the chosen level leaves it (pure)."""
    if level != "fork":
        return dict(phases)
    why = "unavailable (--level fork: no per-VMA program; dup_mmap only)"
    # An exact probe times its function whatever the bracket's level.
    return {
        phase: why if phase in STORE_PHASES and not method.startswith("exact") else method
        for phase, method in phases.items()
    }


def run_metadata(
    opts: RecordOptions,
    session: Collected,
    facts: HostFacts,
    plan: MethodPlan,
    headers: str,
    lockdown: str,
    per_vma: dict | None = None,
) -> dict:
    """The recording's self-description: enough to trust, or distrust, every number in it."""
    return {
        "tool_version": __version__,
        "kernel": {"release": platform.release(), "version": platform.version(), "machine": platform.machine()},
        "host": host_context(lockdown, opts.cpu),
        "backend": plan.backend,
        "level": opts.level,
        "stores_timed": "sparse" if runs_mt_dup(facts) else "every",
        "per_vma_program": per_vma,
        "methods": level_methods(plan.phase_texts(), opts.level),
        "backend_reason": plan.reason,
        "probes": facts.to_dict(),
        "headers": headers,
        "targets": {"mode": opts.mode, "pids": opts.pids, "command": opts.command},
        "workload": session.workload,
        "start": session.start,
        "end": session.end,
        "lost": {
            "ringbuf": session.counters.get("lost_ringbuf", 0),
            "unpaired": session.counters.get("reentry", 0),
            "open_at_attach": session.counters.get("open_at_attach", 0),
        },
        "events": {**session.counters, "ma_write": session.ma_writes},
        "sample": (
            {"hz": opts.sample_hz, "stacks": session.stacks, "lost": session.counters.get("sample_lost", 0)}
            if opts.samples
            else None
        ),
        "maps": session.maps,
        "exact": (
            {
                "attach": plan.to_dict()["exact"],
                "counters": session.exact_counters,
                "missed": session.exact_missed,
                "unmatched": session.exact_unmatched,
                "unmatched_calls": session.exact_unmatched_calls,
            }
            if plan.exact
            else None
        ),
        "algorithm": _algorithm(facts, session),
    }


def _algorithm(facts: HostFacts, session: Collected) -> dict:
    """Which tree-building algorithm ran: kallsyms, corroborated by the writes seen in the brackets."""
    from analysis.recording.algorithm import infer_algorithm

    mt_dup = facts.symbol("__mt_dup").kallsyms
    return infer_algorithm(mt_dup, session.forks, session.stores, session.other_writes)



def host_context(lockdown: str, cpu: int | None = None) -> dict[str, Any]:
    """The host facts a comparison of two runs needs: CPU model, governor, isolated CPUs, and tracer.host.machine's."""
    from tracer.host.kernel import kernel_config
    from tracer.host.machine import machine_facts

    config = kernel_config()
    machine = machine_facts(cpu, config=config.options if config else None, uname_version=platform.version())
    return {
        "hostname": socket.gethostname(),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "lockdown": lockdown,
        "governor": _read_first("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "isolated_cpus": _read_first("/sys/devices/system/cpu/isolated"),
        **machine,
    }


def _read_first(path: str) -> str | None:
    """First line of a sysfs file, or None where the kernel has no such file (no cpufreq in a VM)."""
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


def keep_off_cpu(cpu: int | None) -> list[int]:
    """Run the tracer's own thread off the workload's CPU, where there is another.

    Reading the ring buffer costs a few microseconds per record in Python; on
    the workload's CPU that would be charged to the forks being measured.
    """
    cpus = os.sched_getaffinity(0)
    if cpu is not None and len(cpus - {cpu}) > 0:
        cpus = cpus - {cpu}
        os.sched_setaffinity(0, cpus)
    return sorted(cpus)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def wall_mono() -> dict:
    return {"wall": datetime.now(timezone.utc).isoformat(), "mono_ns": time.monotonic_ns()}


