"""The components a fork's dup_mmap time is split into, and which model count drives each.

copy       __mt_dup's node allocation and 256-byte memcpy (mas_dup_alloc, mas_copy_node)
traversal  __mt_dup's descend/ascend, the loop's mas_find steps and leaf crossings
replace    the loop's mas_store of each new VMA (exact fit)
other      the rest of the per-VMA work: vm_area_dup, anon_vma_fork, copy_page_range, ...
fixed      once per fork, whatever the layout
tracer     forktrace's own BPF programs (mostly the per-store ma_write program):
           never silently part of another component
offcpu     the forking thread switched out (preempted, or blocked) inside dup_mmap:
           wall-clock time no code ran in, measured by sched_switch, never
           spread over the on-CPU components by their sample shares
"""

from __future__ import annotations

__all__ = ["COMPONENTS", "COMPONENT_UNITS", "REGRESSORS", "REGRESSOR_ORDER", "UNIT_DOC"]

COMPONENTS: tuple[str, ...] = ("copy", "traversal", "replace", "other", "fixed", "tracer", "offcpu")

# The model count one unit of a component's work is measured in (ns_per_unit divides by it).
COMPONENT_UNITS: dict[str, str] = {
    "copy": "nodes_copied",
    "traversal": "traversal_steps",
    "replace": "stores",
    "other": "vmas",
    "fixed": "forks",
    "tracer": "stores",  # the ma_write program runs once per mas_store
    "offcpu": "forks",  # scheduling, not work: per fork, driven by the host's load
}

UNIT_DOC: dict[str, str] = {
    "nodes_copied": "node copied by __mt_dup",
    "traversal_steps": "edge or slot step (__mt_dup edges + mas_find slot steps + crossing edges)",
    "stores": "exact-fit mas_store of a VMA",
    "vmas": "VMA in the parent's layout",
    "forks": "fork",
}

# The fit's regressors (model counts) and the component each one's cost belongs to.
# Order = priority: when counts move together, the merged regressor is named after
# (and measured in units of) the first of them in this order.
REGRESSORS: dict[str, str] = {
    "stores": "replace",
    "vmas": "other",
    "nodes_copied": "copy",
    "allocs": "copy",
    "edges": "traversal",
    "find_steps": "traversal",
    "leaf_crossings": "traversal",
}
REGRESSOR_ORDER: tuple[str, ...] = tuple(REGRESSORS)
