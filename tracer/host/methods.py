"""How `record` will obtain each phase on a host: pure decisions from HostFacts.

A backend is a way of timing phases (today: the tracepoint bracket, through
raw or classic tracepoints). Each one says whether the host allows it and,
if so, how it obtains each phase it covers; choose_methods() takes the first
usable one in order of preference, or the one --backend forces. Exact
backends (fentry/fexit, kprobe/kretprobe) plug in as further Backend values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from analysis.errors import UsageError
from analysis.recording.phases import PHASES
from tracer.host.facts import MT_DUP_SINCE, HostFacts

__all__ = [
    "BACKENDS",
    "Backend",
    "BracketBackend",
    "DOCTOR_PHASES",
    "MethodPlan",
    "PhaseMethod",
    "choose_methods",
]

# The phases a method is chosen for: the recording's measured phases (derived ones
# follow from them), then undo_dup_mmap, which a kernel may have but no backend times yet.
DOCTOR_PHASES: tuple[str, ...] = (*(p.name for p in PHASES if not p.derived), "undo_dup_mmap")

Kind = Literal["exact", "bracket", "bracket-corrected", "sampled", "model", "unavailable"]

_LOCK_TPS = ("mmap_lock:mmap_lock_acquire_returned", "mmap_lock:mmap_lock_released")
_STORE_TP = "maple_tree:ma_write"
_FORK_TP = "sched:sched_process_fork"


@dataclass(frozen=True)
class PhaseMethod:
    """How one phase is obtained. applicable=False: the phase does not exist on this kernel."""

    kind: Kind
    detail: str
    applicable: bool = True

    def __str__(self) -> str:
        """The text doctor shows and a recording stores: 'bracket (mmap_lock acquire/release)'."""
        return f"{self.kind if self.applicable else 'not applicable'} ({self.detail})"


class Backend(Protocol):
    """A way of timing phases that record can load."""

    name: str

    def usable(self, facts: HostFacts) -> tuple[bool, str]:
        """Whether this host allows it, and why (or what is missing)."""
        ...

    def phase_methods(self, facts: HostFacts) -> dict[str, PhaseMethod]:
        """How it obtains each phase it covers on this host."""
        ...

    def notes(self, facts: HostFacts) -> list[str]:
        """What it will not know on this host although it loads."""
        ...


@dataclass(frozen=True)
class BracketBackend:
    """bracket.c: mmap_lock acquire/release around dup_mmap, ma_write stores inside it.

    via "btf": raw tracepoints, which cost half of classic ones per event but read
    fields at BTF offsets; via "tracefs": classic tracepoints (record mounts tracefs as root).
    """

    name: str
    via: Literal["btf", "tracefs"]

    def _has(self, facts: HostFacts, tp: str) -> bool:
        entry = facts.tracepoint(tp)
        return bool(entry.btf if self.via == "btf" else entry.exists)

    def usable(self, facts: HostFacts) -> tuple[bool, str]:
        if self.via == "btf":
            load = facts.raw_tracepoint_load
            if not facts.btf.usable:
                return False, facts.btf.error or "no BTF"
            if load is not None and load.ok is False:
                return False, f"a raw tracepoint program did not load ({load.errno or load.log})"
            missing = [tp for tp in _LOCK_TPS if not facts.tracepoint(tp).btf]
            if missing:
                return False, f"no btf_trace typedef for {', '.join(missing)}"
            return True, "BTF gives the field offsets; raw tracepoints halve the per-event cost"
        if not (facts.tracefs or facts.root):
            return False, "tracefs is not mounted and mounting it needs root"
        # tracefs unmounted: BTF still proves the tracepoint exists, record mounts tracefs.
        unmounted = facts.tracefs is None
        missing = [
            tp
            for tp in _LOCK_TPS
            if not (facts.tracepoint(tp).tracefs or (unmounted and facts.tracepoint(tp).btf))
        ]
        if missing:
            return False, f"missing tracepoints {', '.join(missing)}"
        why = facts.btf.error or "no usable BTF for raw tracepoint field offsets"
        return True, f"classic tracepoints: {why}"

    def phase_methods(self, facts: HostFacts) -> dict[str, PhaseMethod]:
        no_store = PhaseMethod("unavailable", "no maple_tree:ma_write tracepoint")
        store = self._has(facts, _STORE_TP)
        phases = {"dup_mmap": PhaseMethod("bracket", "mmap_lock acquire/release")}
        version = facts.kernel.version_tuple
        if version is not None and version < MT_DUP_SINCE and not facts.symbol("__mt_dup").kallsyms:
            phases["mt_dup"] = PhaseMethod(
                "unavailable", "kernel predates __mt_dup, v6.8: the VMA loop builds the tree", applicable=False
            )
        else:
            corrected = PhaseMethod("bracket-corrected", "child lock -> first store, minus one VMA step")
            phases["mt_dup"] = corrected if store else no_store
        phases["vma_loop"] = PhaseMethod("bracket", "first -> last mas_store") if store else no_store
        phases["tail"] = PhaseMethod("bracket", "last mas_store -> parent mmap_lock release") if store else no_store
        return phases

    def notes(self, facts: HostFacts) -> list[str]:
        if not self._has(facts, _FORK_TP):
            return ["no sched:sched_process_fork: child pids and fork failures will not be known"]
        return []


# In order of preference.
BACKENDS: tuple[Backend, ...] = (BracketBackend("raw_tracepoint", "btf"), BracketBackend("tracepoint", "tracefs"))


@dataclass(frozen=True)
class MethodPlan:
    """The backend record will load (None: none can) and the method per phase."""

    backend: str | None
    reason: str
    phases: dict[str, PhaseMethod] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def phase_texts(self) -> dict[str, str]:
        """{phase: method text}: what a recording stores as `methods`."""
        return {phase: str(method) for phase, method in self.phases.items()}

    def to_dict(self) -> dict[str, Any]:
        """The `methods` object of `doctor --json`."""
        return {
            "backend": self.backend,
            "backend_reason": self.reason,
            "phases": self.phase_texts(),
            "notes": list(self.notes),
        }


def _no_backend_reason(facts: HostFacts) -> str:
    missing = [tp for tp in (*_LOCK_TPS, _STORE_TP) if not facts.tracepoint(tp).exists]
    if missing:
        return f"no usable bracket: missing tracepoints {', '.join(missing)}"
    return "no usable bracket: neither BTF nor tracefs is usable"


def choose_methods(facts: HostFacts, forced: str | None = None) -> MethodPlan:
    """The backend and, per phase, how `record` will obtain it on this host.

    forced (record's --backend) replaces the preference order; if this host does
    not allow it, the plan has no backend and the reason says what is missing.
    """
    by_name = {b.name: b for b in BACKENDS}
    if forced is not None and forced not in by_name:
        raise UsageError(f"unknown backend {forced!r} (known: {', '.join(by_name)})")
    notes: list[str] = []
    load = facts.raw_tracepoint_load
    if load is not None and load.ok is False:
        notes.append(f"a raw tracepoint program did not load ({load.errno or load.log})")

    preferred = None
    for backend in BACKENDS:
        ok, why = backend.usable(facts)
        if ok:
            preferred = (backend, why)
            break
    if forced is not None:
        ok, why = by_name[forced].usable(facts)
        chosen = by_name[forced] if ok else None
        if not ok:
            reason = f"--backend {forced} is not usable here: {why}"
        elif preferred is not None and preferred[0].name == forced:
            reason = why
        else:
            reason = "forced by --backend"
    elif preferred is not None:
        chosen, reason = preferred
    else:
        chosen, reason = None, _no_backend_reason(facts)

    if chosen is None:
        phases = {phase: PhaseMethod("unavailable", "no bracket tracepoints") for phase in DOCTOR_PHASES}
    else:
        phases = dict(chosen.phase_methods(facts))
    undo = facts.symbol("undo_dup_mmap")
    phases["undo_dup_mmap"] = PhaseMethod(
        "unavailable", "symbol present; this version has no probe for it" if undo.kallsyms else "symbol absent"
    )

    dup = facts.symbol("dup_mmap")
    direct = [how for how, check in (("fentry", dup.fentry), ("kprobe", dup.kprobe)) if check.available]
    if direct:
        notes.append(
            f"dup_mmap: {' and '.join(direct)} available; this version uses the tracepoint bracket on every kernel"
        )
    if chosen is not None and not facts.root:
        notes.append("not root: record needs root to load BPF programs")
    if chosen is not None:
        notes += chosen.notes(facts)
    if not facts.perf_event.sampling:
        notes.append("perf sampling not allowed: no sampled kernel stacks inside the phases")
    return MethodPlan(backend=chosen.name if chosen else None, reason=reason, phases=phases, notes=tuple(notes))
