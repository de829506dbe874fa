"""How `record` will obtain each phase on a host: pure decisions from HostFacts.

A backend is a way of timing phases: the tracepoint bracket (raw or classic
tracepoints), or exact probes on the functions themselves (fentry/fexit,
kprobe/kretprobe). Each one says whether the host allows it and, if so, how
it obtains each phase it covers. choose_methods() takes the first usable
bracket, and beside it, per function, the best exact probe the kernel allows
(fentry, then kprobe): the bracket alone gives the per-VMA phases, an exact
probe gives the function's own entry->exit time. --backend forces one kind:
a bracket backend alone, or an exact kind (with the preferred bracket beside it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from analysis.errors import UsageError
from analysis.recording.phases import PHASES
from tracer.host.facts import MT_DUP_SINCE, HostFacts

__all__ = [
    "BACKENDS",
    "EXACT_BACKENDS",
    "EXACT_FUNCTIONS",
    "ExactAttach",
    "ExactBackend",
    "exact_kinds",
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
            # Before v6.8 the VMA loop builds the child's tree by appends: after the
            # child's lock comes the bulk build's setup (mas_expected_entries), not __mt_dup.
            bulk = PhaseMethod(
                "bracket-corrected",
                "bulk build: child lock -> first store, minus one VMA step (kernel predates __mt_dup, v6.8)",
            )
            phases["mt_dup"] = bulk if store else no_store
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


# Functions an exact backend times: dup_mmap, then what it calls (exact.c's enum child_fn).
EXACT_FUNCTIONS: tuple[str, ...] = ("dup_mmap", "__mt_dup", "mas_store", "vm_area_dup", "undo_dup_mmap")
_PROBE_PAIR = {"fentry": "fentry/fexit", "kprobe": "kprobe/kretprobe"}


@dataclass(frozen=True)
class ExactAttach:
    """One function exact.c will time: how (fentry or kprobe) and the kallsyms name to attach to."""

    via: Literal["fentry", "kprobe"]
    symbol: str


def _attach_symbol(function: str, names: tuple[str, ...]) -> str:
    """The kallsyms name to attach a kprobe to: the function's own, else its first compiler clone."""
    return function if function in names or not names else names[0]


@dataclass(frozen=True)
class ExactBackend:
    """exact.c on one probe kind: each function timed from its own entry and exit.

    Usable where the kernel let a test program of that kind attach to dup_mmap
    (survey.py's real load attempt); the functions dup_mmap calls are added
    where their own attempt succeeded.
    """

    name: Literal["fentry", "kprobe"]

    def _check(self, facts: HostFacts, function: str):
        return getattr(facts.symbol(function), self.name)

    def usable(self, facts: HostFacts) -> tuple[bool, str]:
        check = self._check(facts, "dup_mmap")
        if check.available:
            return True, f"{_PROBE_PAIR[self.name]} on dup_mmap: {check.reason}"
        return False, f"{self.name} on dup_mmap: {check.reason or 'not checked'}"

    def attachments(self, facts: HostFacts) -> dict[str, ExactAttach]:
        """The functions this kind can time here ({} without dup_mmap)."""
        if not self.usable(facts)[0]:
            return {}
        return {
            function: ExactAttach(self.name, _attach_symbol(function, facts.symbol(function).names))
            for function in EXACT_FUNCTIONS
            if self._check(facts, function).available
        }

    def phase_methods(self, facts: HostFacts) -> dict[str, PhaseMethod]:
        return exact_phase_methods(facts, self.attachments(facts))

    def notes(self, facts: HostFacts) -> list[str]:
        return exact_notes(facts, self.attachments(facts))


def exact_kinds(forced: str | None) -> tuple[str, ...]:
    """The probe kinds record may use under --backend `forced`, in order of preference."""
    if forced is None:
        return tuple(b.name for b in EXACT_BACKENDS)
    return (forced,) if forced in {b.name for b in EXACT_BACKENDS} else ()


def best_attachments(facts: HostFacts) -> dict[str, ExactAttach]:
    """Per function the best probe the kernel allows: fentry/fexit, then kprobe/kretprobe.

    Nothing unless dup_mmap itself can be probed: the other functions are
    timed per dup_mmap call.
    """
    found: dict[str, ExactAttach] = {}
    for function in EXACT_FUNCTIONS:
        symbol = facts.symbol(function)
        for via in ("fentry", "kprobe"):
            if getattr(symbol, via).available:
                found[function] = ExactAttach(via, _attach_symbol(function, symbol.names))
                break
    return found if "dup_mmap" in found else {}


def exact_phase_methods(facts: HostFacts, attach: dict[str, ExactAttach]) -> dict[str, PhaseMethod]:
    """The phases exact probes give (they replace the bracket's method for those phases)."""
    phases: dict[str, PhaseMethod] = {}
    if "dup_mmap" not in attach:
        return phases

    def on(function: str) -> str:
        return f"{_PROBE_PAIR[attach[function].via]} on {attach[function].symbol}"

    phases["dup_mmap"] = PhaseMethod("exact", f"{on('dup_mmap')}: exact_dup_mmap_ns; bracket kept in dup_mmap_ns")
    if "__mt_dup" in attach:
        phases["mt_dup"] = PhaseMethod("exact", f"{on('__mt_dup')}: exact_mt_dup_sum_ns")
    if "undo_dup_mmap" in attach:
        phases["undo_dup_mmap"] = PhaseMethod("exact", f"{on('undo_dup_mmap')}: exact_undo_dup_mmap_sum_ns")
    return phases


def exact_notes(facts: HostFacts, attach: dict[str, ExactAttach]) -> list[str]:
    """What the exact probes add, and why each function they do not time is left out."""
    if "dup_mmap" not in attach:
        return []
    timed = ", ".join(f"{fn} ({a.via})" for fn, a in attach.items())
    notes = [f"exact probes time {timed} per dup_mmap call"]
    for function in EXACT_FUNCTIONS:
        if function in attach:
            continue
        symbol = facts.symbol(function)
        if symbol.kallsyms is None and not symbol.fentry.reason:
            notes.append(f"exact: {function} not timed: not checked")
        elif symbol.kallsyms is False:
            notes.append(f"exact: {function} not timed: {symbol.fentry.reason or 'not in kallsyms'}")
        else:
            notes.append(f"exact: {function} not timed: fentry: {symbol.fentry.reason}; kprobe: {symbol.kprobe.reason}")
    return notes


# In order of preference.
BACKENDS: tuple[Backend, ...] = (BracketBackend("raw_tracepoint", "btf"), BracketBackend("tracepoint", "tracefs"))
EXACT_BACKENDS: tuple[ExactBackend, ...] = (ExactBackend("fentry"), ExactBackend("kprobe"))


@dataclass(frozen=True)
class MethodPlan:
    """The backend record will load (None: none can) and the method per phase."""

    backend: str | None
    reason: str
    phases: dict[str, PhaseMethod] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    exact: dict[str, ExactAttach] = field(default_factory=dict)  # functions exact.c times, beside the bracket

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
            "exact": {fn: {"via": a.via, "symbol": a.symbol} for fn, a in self.exact.items()},
        }


def _no_backend_reason(facts: HostFacts) -> str:
    missing = [tp for tp in (*_LOCK_TPS, _STORE_TP) if not facts.tracepoint(tp).exists]
    if missing:
        return f"no usable bracket: missing tracepoints {', '.join(missing)}"
    return "no usable bracket: neither BTF nor tracefs is usable"


def choose_methods(facts: HostFacts, forced: str | None = None) -> MethodPlan:
    """The backend and, per phase, how `record` will obtain it on this host.

    The bracket (first usable in BACKENDS) gives every phase; exact probes, per
    function the best kind the kernel allows, replace the methods of the
    phases they time. forced (record's --backend) names one kind: a bracket
    backend runs alone; an exact kind times every function it can, beside
    the preferred bracket. If this host does not allow it, the plan has no
    backend and the reason says what is missing.
    """
    by_name = {b.name: b for b in BACKENDS}
    exact_by_name = {b.name: b for b in EXACT_BACKENDS}
    if forced is not None and forced not in by_name and forced not in exact_by_name:
        known = [*by_name, *exact_by_name]
        raise UsageError(f"unknown backend {forced!r} (known: {', '.join(known)})")
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
    exact: dict[str, ExactAttach] = {}
    exact_blocked = None
    if forced in exact_by_name:
        ok, why = exact_by_name[forced].usable(facts)
        if ok:
            exact = exact_by_name[forced].attachments(facts)
        else:
            exact_blocked = f"--backend {forced} is not usable here: {why}"
        forced_bracket = None
    else:
        forced_bracket = forced
        if forced is None:
            exact = best_attachments(facts)
    if forced_bracket is not None:
        ok, why = by_name[forced_bracket].usable(facts)
        chosen = by_name[forced_bracket] if ok else None
        if not ok:
            reason = f"--backend {forced_bracket} is not usable here: {why}"
        elif preferred is not None and preferred[0].name == forced_bracket:
            reason = why
        else:
            reason = "forced by --backend"
    elif preferred is not None:
        chosen, reason = preferred
    else:
        chosen, reason = None, _no_backend_reason(facts)
    if exact_blocked is not None:
        chosen, reason, exact = None, exact_blocked, {}

    if chosen is None:
        phases = {phase: PhaseMethod("unavailable", "no bracket tracepoints") for phase in DOCTOR_PHASES}
    else:
        phases = dict(chosen.phase_methods(facts))
    undo = facts.symbol("undo_dup_mmap")
    phases["undo_dup_mmap"] = PhaseMethod(
        "unavailable", "symbol present; no probe the kernel allows" if undo.kallsyms else "symbol absent"
    )
    if chosen is not None:
        phases.update(exact_phase_methods(facts, exact))
        notes += exact_notes(facts, exact)

    dup = facts.symbol("dup_mmap")
    direct = [how for how, check in (("fentry", dup.fentry), ("kprobe", dup.kprobe)) if check.available]
    if direct and chosen is not None and not exact:
        notes.append(f"dup_mmap: {' and '.join(direct)} available; not used with --backend {forced}")
    elif chosen is not None and not direct:
        notes.append(f"no exact probes: dup_mmap: fentry: {dup.fentry.reason or '?'}; kprobe: {dup.kprobe.reason or '?'}")
    if chosen is not None and not facts.root:
        notes.append("not root: record needs root to load BPF programs")
    if chosen is not None:
        notes += chosen.notes(facts)
    if not facts.perf_event.sampling:
        notes.append("perf sampling not allowed: no sampled kernel stacks inside the phases")
    return MethodPlan(
        backend=chosen.name if chosen else None, reason=reason, phases=phases, notes=tuple(notes), exact=exact
    )
