"""Which kernel function a sampled stack inside dup_mmap() is doing work for: the tables.

A stack (root first) is read along its path from the last `dup_mmap` frame
down, on two axes. Where dup_mmap() is inlined into its callers (static in
kernel/fork.c before v6.15: Debian's 6.1 and 6.12 builds show
copy_process;vm_area_dup), the innermost of its callers dup_mm, copy_mm,
copy_process stands for it (INLINED_INTO): samples are only taken inside
dup_mmap's bracket, so that frame is dup_mmap's code.

work  what dup_mmap() is doing: the first frame below it that WORK lists (the
      function dup_mmap called, directly or through code inlined into it).
      A stack that ends in dup_mmap, or whose first frame below it is a
      generic helper HOW lists, is dup_mmap's own work; one whose first frame
      neither table lists is "unlisted: <frame>", named, never "other".
how   what that code is spending the time on: the innermost frame below the
      work's frame (or the work's frame itself) that HOW lists (slab
      allocator, memcg charge, page allocation, locks, ...); "own code"
      where none is listed.

Two kinds of frame override the work when they are inside its call (or
below dup_mmap's frame in a stack without a work; anywhere in one without
dup_mmap's frame), the innermost one winning: forktrace's
own BPF programs, probes and the tracepoint machinery that runs only because
they are attached ("tracer"), and interrupts ("interrupts"). A trampoline
above the work (an fentry probe on vm_area_dup) leaves the work its own, and
one that calls the probed function's body (`f;bpf_trampoline_N;f`, fexit)
is read as `f`: only a sample in the trampoline or its programs is the
tracer's.

Each work belongs to one component of components.py, so the fit and the
samples still compare; COMPONENT_BY_HOW and COMPONENT_BY_WINDOW are the
exceptions, written as tables. Keys ending in "*" are prefixes. The names
are the kernel's, v6.1 to v6.18 (mm/mmap.c, kernel/fork.c, lib/maple_tree.c,
mm/slub.c); a kernel that renames a function shows up as "unlisted: <name>"
in the report, which is the cue to add it here.

    >>> classify("entry_SYSCALL_64;copy_process;dup_mmap;vm_area_dup;kmem_cache_alloc_noprof", "vma_loop")
    Cell(work='vm_area_dup', how='slab allocator', component='other')
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping

from analysis.attribution.components import COMPONENTS
from analysis.recording.stacks import stack_frames

__all__ = [
    "Work",
    "WORKS",
    "WORK",
    "HOW",
    "OVERRIDE",
    "COMPONENT_BY_HOW",
    "COMPONENT_BY_WINDOW",
    "OWN_CODE",
    "Cell",
    "classify",
    "work_doc",
    "MEASURED",
]


@dataclass(frozen=True)
class Work:
    """One row of the report's function table."""

    name: str
    component: str  # components.COMPONENTS
    per: str  # "vma": done for each VMA the loop visits; "fork": once per fork
    doc: str


WORKS: tuple[Work, ...] = (
    Work("__mt_dup", "traversal", "vma",
         "copies the parent's maple tree node by node (v6.8+): its walk is traversal, its node "
         "allocation and 256-byte copies are copy (COMPONENT_BY_HOW)"),
    Work("mas_find", "traversal", "vma", "for_each_vma(): the VMA iterator's step to the next VMA"),
    Work("mas_store", "replace", "vma",
         "the VMA iterator's store of each new VMA (vma_iter_bulk_store); mas_store_gfp clears a "
         "VM_DONTCOPY VMA; before v6.8 the bulk build's appends and splits"),
    Work("vm_area_dup", "other", "vma", "allocates the child's vm_area_struct and copies the parent's into it"),
    Work("vm_enough_memory", "other", "vma",
         "commit accounting of each VM_ACCOUNT VMA (private writable): security_vm_enough_memory_mm() "
         "runs the LSM hooks, __vm_enough_memory() adds to vm_committed_as"),
    Work("vma_start_write", "other", "vma", "write-locks each parent VMA (per-VMA locks, v6.4+)"),
    Work("anon_vma_fork", "other", "vma", "links the child VMA into the parent's anon_vma chains (anonymous VMAs)"),
    Work("copy_page_range", "other", "vma",
         "copies the page tables of VMAs that need it (anonymous pages present, PFN maps, ...)"),
    Work("dup_userfaultfd", "other", "vma", "userfaultfd context of each VMA (a check when none is registered)"),
    Work("vma_dup_policy", "other", "vma", "NUMA memory policy of each VMA"),
    Work("file VMA link", "other", "vma",
         "file-backed VMAs: the file reference and the i_mmap interval tree; hugetlb reservations"),
    Work("fork hooks", "fixed", "fork",
         "once per fork: uprobes, KSM, khugepaged, the exe file, arch hooks, cache and TLB flushes"),
    Work("dup_mmap", "other", "vma",
         "dup_mmap()'s own code and what the compiler inlined into it (the loop, the VMA iterator's "
         "setup, vm_stat_account, map_count, ...); fixed outside the VMA loop (COMPONENT_BY_WINDOW)"),
    Work("interrupts", "other", "vma", "interrupts and softirqs that hit the forking thread: not dup_mmap's work"),
    Work("tracer", "tracer", "vma", "forktrace's BPF programs and the tracepoint calls that run only because they are attached"),
    Work("unwound short", "other", "vma",
         "stacks the unwinder did not follow back to dup_mmap (a BPF program, a thunk): fixed outside the VMA loop"),
)
_BY_NAME: dict[str, Work] = {w.name: w for w in WORKS}

# Measured, not sampled: the time split that no sample is taken in (samples.py).
MEASURED: dict[str, Work] = {
    "lock gap": Work("lock gap", "fixed", "fork",
                     "parent lock -> child lock (flush_cache_dup_mm, uprobe_dup_mmap, the child's mmap_lock): "
                     "not sampled, measured by the bracket"),
    "off CPU": Work("off CPU", "offcpu", "fork", "the thread switched out inside the bracket, measured by sched_switch"),
    "unsampled window": Work("unsampled window", "other", "fork",
                             "a window's time where no sample landed in the group: not given to a guess"),
}

# frame -> work: the functions dup_mmap() calls (the first one listed below dup_mmap wins).
WORK: dict[str, str] = {
    # the tree copy (v6.8+)
    "__mt_dup": "__mt_dup", "mt_dup": "__mt_dup", "mas_dup_build": "__mt_dup",
    "mas_dup_alloc": "__mt_dup", "mas_copy_node": "__mt_dup",
    # the VMA iterator: for_each_vma
    "mas_find": "mas_find", "mas_find_range": "mas_find", "mas_next_slot": "mas_find", "mas_next": "mas_find",
    "mas_next_entry": "mas_find", "mas_walk": "mas_find", "vma_next": "mas_find", "vma_find": "mas_find",
    "vma_iter_next*": "mas_find", "vma_iter_load": "mas_find", "mas_prev*": "mas_find",
    # the VMA iterator's stores (and v6.1's bulk build)
    "mas_store": "mas_store", "mas_store_gfp": "mas_store", "mas_store_prealloc": "mas_store",
    "mas_wr_*": "mas_store", "vma_iter_bulk_store": "mas_store", "vma_iter_store*": "mas_store",
    "vma_iter_clear_gfp": "mas_store", "mas_state_walk": "mas_store", "mas_expected_entries": "mas_store",
    "mas_destroy": "mas_store", "mas_split": "mas_store", "mas_commit_b_node": "mas_store",
    "mas_spanning_rebalance": "mas_store",
    # the child's vm_area_struct
    "vm_area_dup": "vm_area_dup", "vm_area_init_from": "vm_area_dup", "dup_anon_vma_name": "vm_area_dup",
    "vma_lock_init": "vm_area_dup", "vma_numab_state_init": "vm_area_dup", "vm_area_free": "vm_area_dup",
    # commit accounting
    "security_vm_enough_memory_mm": "vm_enough_memory", "__vm_enough_memory": "vm_enough_memory",
    "vm_acct_memory": "vm_enough_memory", "vm_unacct_memory": "vm_enough_memory",
    # per-VMA locks
    "__vma_start_write": "vma_start_write", "vma_start_write": "vma_start_write",
    "vma_start_write_killable": "vma_start_write", "__vma_enter_locked": "vma_start_write",
    # anon_vma
    "anon_vma_fork": "anon_vma_fork", "anon_vma_clone": "anon_vma_fork", "unlink_anon_vmas": "anon_vma_fork",
    # page tables
    "copy_page_range": "copy_page_range", "copy_hugetlb_page_range": "copy_page_range",
    "track_pfn_copy": "copy_page_range", "vma_needs_copy": "copy_page_range",
    # small per-VMA duties
    "dup_userfaultfd": "dup_userfaultfd", "vma_dup_policy": "vma_dup_policy", "mpol_dup": "vma_dup_policy",
    "__mpol_dup": "vma_dup_policy",
    "vma_interval_tree_insert_after": "file VMA link", "flush_dcache_mmap_lock": "file VMA link",
    "hugetlb_dup_vma_private": "file VMA link", "fixup_hugetlb_reservations": "file VMA link",
    "__vma_link_file": "file VMA link",
    # once per fork
    "uprobe_*": "fork hooks", "ksm_fork": "fork hooks", "__ksm_enter": "fork hooks",
    "khugepaged_fork": "fork hooks", "__khugepaged_enter": "fork hooks", "dup_mm_exe_file": "fork hooks",
    "arch_dup_mmap": "fork hooks", "ldt_dup_context": "fork hooks", "flush_cache_dup_mm": "fork hooks", "flush_tlb_mm*": "fork hooks",
    "dup_userfaultfd_complete": "fork hooks", "dup_userfaultfd_fail": "fork hooks", "mt_set_in_rcu": "fork hooks",
    "mt_clear_in_rcu": "fork hooks", "__mt_destroy": "fork hooks", "vma_iter_free": "fork hooks",
    "mmap_write_*": "fork hooks", "lru_add_drain*": "fork hooks",
}

# frame -> what the time is spent on below a work's own frame (the innermost one listed wins).
HOW: dict[str, str] = {
    # SLUB: the allocation and freeing paths, sheaves and barns (v6.18), slab pages
    "kmem_cache_*": "slab allocator", "__kmem_cache_*": "slab allocator", "___slab_*": "slab allocator",
    "__slab_*": "slab allocator", "slab_*": "slab allocator", "barn_*": "slab allocator",
    "__pcs_*": "slab allocator", "allocate_slab": "slab allocator", "new_slab": "slab allocator",
    "alloc_slab_*": "slab allocator", "get_partial*": "slab allocator", "__kmalloc*": "slab allocator",
    "kmalloc*": "slab allocator", "kfree": "slab allocator", "put_cpu_partial": "slab allocator",
    "mas_alloc_nodes": "slab allocator", "mt_alloc_bulk": "slab allocator",
    # memory cgroup charging of slab objects and pages
    "__memcg_*": "memcg charge", "memcg_*": "memcg charge", "obj_cgroup_*": "memcg charge",
    "__account_obj_stock": "memcg charge", "refill_obj_stock": "memcg charge", "consume_obj_stock": "memcg charge",
    "drain_obj_stock": "memcg charge", "mod_memcg_*": "memcg charge", "__mod_memcg_*": "memcg charge",
    "mod_objcg_state": "memcg charge", "try_charge_memcg": "memcg charge", "page_counter_*": "memcg charge",
    # page allocation (page-table pages)
    "alloc_pages*": "page allocation", "__alloc_pages*": "page allocation", "__alloc_frozen_pages*": "page allocation",
    "get_page_from_freelist": "page allocation", "__rmqueue*": "page allocation", "rmqueue*": "page allocation",
    "clear_page*": "page allocation", "pte_alloc_one": "page allocation", "__pte_alloc": "page allocation",
    "__pmd_alloc": "page allocation", "__pud_alloc": "page allocation", "__p4d_alloc": "page allocation",
    "prep_new_page": "page allocation", "post_alloc_hook": "page allocation",
    "lruvec_stat_mod_folio": "page allocation",
    # the maple tree's own node copy
    "mas_copy_node": "node copy", "memcpy*": "node copy", "__memcpy*": "node copy",
    # tree walking
    "mas_ascend": "tree walk", "mas_descend": "tree walk", "mas_next_slot": "tree walk", "mas_next_node": "tree walk",
    "mas_prev_slot": "tree walk", "mas_start": "tree walk", "mtree_range_walk": "tree walk",
    "mas_wr_walk*": "tree walk",
    # locks and RCU
    "_raw_spin_*": "locks", "_raw_write_*": "locks", "_raw_read_*": "locks", "down_write*": "locks",
    "up_write": "locks", "down_read*": "locks", "up_read": "locks", "percpu_down_*": "locks",
    "percpu_up_*": "locks", "mutex_*": "locks", "__rcu_read_*": "locks", "rwsem_*": "locks",
    # rb and interval trees (anon_vma chains, i_mmap)
    "__rb_insert_augmented": "rb/interval tree", "rb_insert_color": "rb/interval tree",
    "anon_vma_interval_tree_*": "rb/interval tree", "vma_interval_tree_*": "rb/interval tree",
    # commit accounting's pieces
    "cap_vm_enough_memory": "LSM hooks", "cap_capable": "LSM hooks", "bpf_lsm_*": "LSM hooks",
    "security_*": "LSM hooks", "percpu_counter_*": "percpu counter", "__percpu_counter_*": "percpu counter",
    # speculative-execution mitigations
    "__x86_indirect_thunk_*": "mitigation thunks", "__x86_return_thunk": "mitigation thunks",
    "srso_*": "mitigation thunks", "retbleed_*": "mitigation thunks", "entry_ibpb": "mitigation thunks",
}
OWN_CODE = "own code"

# frame -> work, wherever it is in the stack (the innermost one listed wins).
OVERRIDE: dict[str, str] = {
    # forktrace: its BPF programs, the helpers and maps they use, and the tracepoint calls into them
    "bpf_trace_run*": "tracer", "__bpf_trace_*": "tracer", "bpf_prog_*": "tracer", "__bpf_prog_*": "tracer",
    "trace_call_bpf": "tracer", "perf_trace_ma_write": "tracer", "perf_trace_mmap_lock*": "tracer",
    "bpf_task_storage_*": "tracer", "bpf_probe_read*": "tracer", "bpf_ringbuf_*": "tracer",
    "bpf_ktime_get*": "tracer", "bpf_get_current*": "tracer", "bpf_map_*": "tracer", "htab_map_*": "tracer",
    "__htab_map_*": "tracer", "bpf_perf_event_*": "tracer", "bpf_get_stackid*": "tracer", "__bpf_*": "tracer",
    "bpf_dispatcher_*": "tracer", "__mmap_lock_do_trace_*": "tracer", "__traceiter_*": "tracer",
    # exact probes' machinery: fentry/fexit trampolines, kprobes, kretprobes' return trampolines
    "bpf_trampoline_*": "tracer", "__bpf_tramp_*": "tracer", "kprobe_*": "tracer", "kretprobe_*": "tracer",
    "__kretprobe_*": "tracer", "arch_rethook_*": "tracer", "rethook_*": "tracer", "fprobe_*": "tracer",
    "ftrace_regs_caller": "tracer", "ftrace_caller": "tracer", "perf_trace_buf_*": "tracer",
    # interrupts and softirqs
    "asm_sysvec_*": "interrupts", "asm_common_interrupt": "interrupts", "sysvec_*": "interrupts",
    "__irq_exit_rcu": "interrupts", "irq_exit_rcu": "interrupts", "handle_softirqs": "interrupts",
    "__do_softirq": "interrupts", "asm_exc_*": "interrupts",
}

# (work, how) whose component is not the work's.
COMPONENT_BY_HOW: dict[tuple[str, str], str] = {
    ("__mt_dup", "node copy"): "copy",
    ("__mt_dup", "slab allocator"): "copy",
    ("__mt_dup", "memcg charge"): "copy",
    ("__mt_dup", "page allocation"): "copy",
}

# (work, window) whose component is not the work's: dup_mmap's own code outside the loop is per fork.
COMPONENT_BY_WINDOW: dict[tuple[str, str], str] = {
    ("dup_mmap", "mt_dup"): "fixed",
    ("dup_mmap", "tail"): "fixed",
    ("unwound short", "mt_dup"): "fixed",
    ("unwound short", "tail"): "fixed",
    ("unlisted", "mt_dup"): "fixed",
    ("unlisted", "tail"): "fixed",
}

UNLISTED = "unlisted: "


def _compile(table: Mapping[str, str]) -> tuple[dict[str, str], tuple[tuple[str, str], ...]]:
    exact = {k: v for k, v in table.items() if not k.endswith("*")}
    prefixes = tuple(sorted(((k[:-1], v) for k, v in table.items() if k.endswith("*")), key=lambda kv: -len(kv[0])))
    return exact, prefixes


_TABLES = {name: _compile(t) for name, t in (("work", WORK), ("how", HOW), ("override", OVERRIDE))}


def _lookup(table: str, frame: str) -> str | None:
    exact, prefixes = _TABLES[table]
    hit = exact.get(frame)
    if hit is not None:
        return hit
    return next((v for p, v in prefixes if frame.startswith(p)), None)


@dataclass(frozen=True)
class Cell:
    """Where one sampled stack's time goes: the work, what it was spent on, its component."""

    work: str
    how: str
    component: str


def _component(work: str, how: str, window: str) -> str:
    base = "unlisted" if work.startswith(UNLISTED) else work
    by_window = COMPONENT_BY_WINDOW.get((base, window))
    if by_window:
        return by_window
    by_how = COMPONENT_BY_HOW.get((work, how))
    if by_how:
        return by_how
    return _BY_NAME[work].component if work in _BY_NAME else "other"


def _through_trampolines(frames: tuple[str, ...]) -> tuple[str, ...]:
    """`f;bpf_trampoline_N;f` -> `f`: an fentry/fexit trampoline that calls the probed function's body
    is a frame on the way, not where the time goes; a sample in the trampoline itself stays the tracer's."""
    out: list[str] = []
    i = 0
    while i < len(frames):
        f = frames[i]
        if (f.startswith("bpf_trampoline_") and out and i + 1 < len(frames) and frames[i + 1] == out[-1]):
            i += 2
            continue
        out.append(f)
        i += 1
    return tuple(out)


# dup_mmap's callers, innermost first: one of them is dup_mmap's frame where it is inlined.
INLINED_INTO = ("dup_mm", "copy_mm", "copy_process")


def _anchor(frames: tuple[str, ...] | list[str]) -> int | None:
    """The index of dup_mmap's frame: the last `dup_mmap`, else the last of INLINED_INTO present."""
    for name in ("dup_mmap", *INLINED_INTO):
        at = max((i for i, f in enumerate(frames) if f == name), default=None)
        if at is not None:
            return at
    return None


@lru_cache(maxsize=65536)
def classify(stack: str, window: str) -> Cell:
    """The Cell of a folded stack ('a;b;c', root first) sampled in `window`; see the module docstring."""
    frames = _through_trampolines(stack_frames(stack))
    at = _anchor(frames)
    below = frames[at + 1 :] if at is not None else ()
    i = next((i for i, f in enumerate(below) if _lookup("work", f)), None)
    # An override counts inside the work's call (a BPF program under mas_store), not above it:
    # an fentry trampoline between dup_mmap and vm_area_dup leaves vm_area_dup's time its own.
    inside = at + 1 + i if i is not None else (at if at is not None else -1)
    override = next((v for j in range(len(frames) - 1, inside, -1) if (v := _lookup("override", frames[j]))), None)
    if override is not None:
        work, start = override, len(frames)
    elif at is None:
        work, start = "unwound short", 0
    elif i is None and below and not _lookup("how", below[0]):
        work, start = UNLISTED + below[0], at + 1
    elif i is None:
        work, start = "dup_mmap", at + 1
    else:
        work, start = _lookup("work", below[i]), at + 1 + i
    # The work's own frame counts too: mas_copy_node inlined into dup_mmap is still a node copy.
    how = next((h for f in reversed(frames[start:]) if (h := _lookup("how", f))), OWN_CODE)
    return Cell(work, how, _component(work, how, window))


def work_doc(work: str) -> Work:
    """The Work row of a work name (an unlisted one gets a row that says so)."""
    if work in _BY_NAME:
        return _BY_NAME[work]
    if work in MEASURED:
        return MEASURED[work]
    return Work(work, "other", "vma", "a function dup_mmap calls that WORK does not list yet (analysis/attribution/functions.py)")


assert all(w.component in COMPONENTS for w in (*WORKS, *MEASURED.values()))
assert set(WORK.values()) <= set(_BY_NAME) and set(OVERRIDE.values()) <= set(_BY_NAME)
