"""`tracer doctor`'s text: host facts, functions, tracepoints, then record's method per phase.

Pure: renders HostFacts and a MethodPlan, so it is tested on synthetic hosts.
Unknowns read as unknown ("?"), never as yes or no.
"""

from __future__ import annotations

from typing import Any

from tracer.host.facts import HostFacts
from tracer.host.methods import MethodPlan

__all__ = ["doctor_json", "render_doctor"]


def _mark(value: bool | None) -> str:
    return {True: "✓", False: "✗"}.get(value, "?")


def doctor_json(facts: HostFacts, plan: MethodPlan) -> dict[str, Any]:
    """`doctor --json`: the facts, with the plan under "methods"."""
    return {**facts.to_dict(), "methods": plan.to_dict()}


def render_doctor(facts: HostFacts, plan: MethodPlan) -> str:
    """Aligned text: host facts, functions, tracepoints, then record's method per phase."""
    uts = facts.kernel
    lines = [f"forktrace doctor: Linux {uts.release or '?'} {uts.machine or ''}".rstrip(), ""]

    def row(label: str, ok: bool | None, text: str) -> None:
        lines.append(f"  {_mark(ok)} {label:<16} {text}".rstrip())

    btf, config, bcc, headers, perf = facts.btf, facts.config, facts.bcc, facts.headers, facts.perf_event
    offsets = ", ".join(f"{k} at {v}" for k, v in btf.offsets.items())
    lockdown = facts.lockdown
    lines.append("Host")
    row("root", facts.root, "yes" if facts.root else "no: BPF loading needs root")
    row("lockdown", None if lockdown == "unknown" else lockdown != "confidentiality", lockdown)
    row("BTF", btf.present and not btf.error, btf.error or f"{btf.path} ({offsets})")
    row("kernel config", config.source is not None, config.source or "unavailable (no /proc/config.gz or /boot/config-*)")
    row("tracefs", facts.tracefs is not None, facts.tracefs or "not mounted or not readable (record mounts it as root)")
    row("bcc", bcc.importable, f"bcc {bcc.version}" if bcc.importable else bcc.error or "")
    row("kernel headers", headers.ok, (headers.description or "").removeprefix("kernel headers: "))
    row("perf sampling", perf.sampling, f"perf_event_paranoid={perf.paranoid}" + (", root" if facts.root else ""))

    lines += ["", "Functions"]
    for symbol, entry in facts.symbols.items():
        names = list(entry.names)
        where = "kallsyms" if names in ([], [symbol]) else f"kallsyms as {', '.join(names)}"
        found = where if entry.kallsyms else "not in kallsyms"
        lines.append(f"  {_mark(entry.kallsyms)} {symbol:<16} {found}")
        if not entry.kallsyms:
            lines.append(f"    {'':<16} {entry.fentry.reason}")
            continue
        for how, probe in (("fentry", entry.fentry), ("kprobe", entry.kprobe)):
            lines.append(f"    {_mark(probe.available)} {how:<14} {probe.reason}")
        ftrace = entry.ftrace
        ftrace_ok = True if ftrace == "traceable" else False if ftrace.startswith("notrace") else None
        lines.append(f"    {_mark(ftrace_ok)} {'ftrace':<14} {ftrace}")

    lines += ["", "Tracepoints"]
    for tp, entry in facts.tracepoints.items():
        seen = [via for via, found in (("tracefs", entry.tracefs), ("btf", entry.btf)) if found]
        text = f"({' and '.join(seen)})" if seen else "not found"
        lines.append(f"  {_mark(entry.exists)} {tp:<38} {text}")

    typed = facts.typed_tracepoint_load
    if typed is not None:
        if typed.ok:
            text = "attaches: record's per-VMA program reads ma_state with plain loads"
        else:
            refusal = " ".join(part for part in (typed.log, typed.errno) if part)
            text = f"refused ({refusal}): record's per-VMA program is a raw tracepoint (probe reads)"
        lines.append(f"  {_mark(typed.ok)} {'maple_tree:ma_write as tp_btf':<38} {text}")

    lines += ["", f"record will use: {plan.backend or 'nothing'} ({plan.reason})"]
    for phase, method in plan.phases.items():
        lines.append(f"  {phase:<16} {method}")
    for note in plan.notes:
        lines.append(f"  note: {note}")
    return "\n".join(lines)
