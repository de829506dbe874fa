"""Which algorithm the traced kernel used to build the child's maple tree.

v6.8 replaced the bulk build (the VMA loop appends each VMA to an empty tree,
splitting nodes as it goes) by __mt_dup() (copy the parent's tree whole, then
replace entries). The recording says which one ran and why, so a report names
the phase after the child's lock for what it is, and an A/B between kernels
on both sides of v6.8 is read as an algorithm change, not a regression.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ALGORITHMS", "PHASE_LABELS", "infer_algorithm"]

ALGORITHMS = ("mt_dup", "bulk_append", "unknown")

# What the phase after the child's lock is called under each algorithm.
PHASE_LABELS = {"mt_dup": "mt_dup", "bulk_append": "bulk build", "unknown": "mt_dup"}


def infer_algorithm(
    mt_dup_in_kallsyms: bool | None, forks: int, stores: int, other_writes: int
) -> dict[str, Any]:
    """{name, evidence}: kallsyms decides; the writes seen inside the brackets corroborate.

    On the bulk build, ma_write events from functions other than mas_store
    (mas_wr_bnode when a node splits) appear inside dup_mmap; on __mt_dup only
    mas_store replaces entries. Disagreement is kept in the evidence, not hidden.
    """
    evidence: list[str] = []
    if mt_dup_in_kallsyms is True:
        name = "mt_dup"
        evidence.append("__mt_dup in kallsyms")
    elif mt_dup_in_kallsyms is False:
        name = "bulk_append"
        evidence.append("__mt_dup not in kallsyms")
    else:
        name = "unknown"
        evidence.append("kallsyms not read")
    if forks and stores:
        evidence.append(f"{other_writes} non-mas_store ma_write events over {forks} forks and {stores} stores")
        seen = "bulk_append" if other_writes else "mt_dup"
        if name == "unknown":
            name = seen
            evidence.append(f"taken from the events: {seen}")
        elif seen != name and name == "mt_dup":
            evidence.append("note: other writes inside dup_mmap although __mt_dup exists "
                            "(a VM_DONTCOPY VMA is cleared through mas_store_gfp, whose writes show here)")
        elif seen != name:
            evidence.append("note: no other writes seen (few VMAs never split a node)")
    else:
        evidence.append("no stores seen: the events do not say")
    return {"name": name, "evidence": evidence}
