"""Kernel functions from sampled stacks: the tables, the estimate by function, and the report's use of them.

Synthetic stacks with known shares go in; what comes out must be those shares
times the measured window times, sum to the measured dup_mmap time, and carry
intervals that say what they were resampled over.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from analysis.attribution.attribute import attribute_groups
from analysis.attribution.functions import HOW, OVERRIDE, WORK, WORKS, classify
from analysis.attribution.samples import sample_counts, sample_estimate
from analysis.frame import group_recordings, load_recordings
from analysis.recording import load_recording
from analysis.recording.stacks import frame_name, stack_frames
from analysis.report.summary import render_report
from recordings import write_costed

ROOT = "entry_SYSCALL_64_after_hwframe;do_syscall_64;__do_sys_clone;kernel_clone;copy_process;dup_mmap"

# (below dup_mmap, window) -> (work, how, component)
CASES = [
    ("vm_area_dup;kmem_cache_alloc_noprof;__memcg_slab_post_alloc_hook;obj_cgroup_charge_account", "vma_loop",
     ("vm_area_dup", "memcg charge", "other")),
    ("vm_area_dup;kmem_cache_alloc_noprof;__pcs_replace_empty_main;__kmem_cache_alloc_bulk;___slab_alloc", "vma_loop",
     ("vm_area_dup", "slab allocator", "other")),
    ("vm_area_dup", "vma_loop", ("vm_area_dup", "own code", "other")),
    ("security_vm_enough_memory_mm;cap_vm_enough_memory", "vma_loop", ("vm_enough_memory", "LSM hooks", "other")),
    ("__vm_enough_memory;percpu_counter_add_batch", "vma_loop", ("vm_enough_memory", "percpu counter", "other")),
    ("__vma_start_write", "vma_loop", ("vma_start_write", "own code", "other")),
    ("anon_vma_fork;anon_vma_clone;anon_vma_interval_tree_insert", "vma_loop", ("anon_vma_fork", "rb/interval tree", "other")),
    ("copy_page_range;__pte_alloc;pte_alloc_one;alloc_pages_noprof;get_page_from_freelist;__list_del_entry_valid_or_report",
     "vma_loop", ("copy_page_range", "page allocation", "other")),
    ("dup_userfaultfd", "vma_loop", ("dup_userfaultfd", "own code", "other")),
    ("vma_dup_policy", "vma_loop", ("vma_dup_policy", "own code", "other")),
    ("mas_find;mas_next_slot;mas_ascend", "vma_loop", ("mas_find", "tree walk", "traversal")),
    ("mas_store;mas_wr_store_type", "vma_loop", ("mas_store", "own code", "replace")),
    ("__mt_dup;mas_dup_alloc.isra.0;kmem_cache_refill_sheaf;__kmem_cache_alloc_bulk", "mt_dup", ("__mt_dup", "slab allocator", "copy")),
    ("__mt_dup;mas_copy_node.isra.0", "mt_dup", ("__mt_dup", "node copy", "copy")),
    ("__mt_dup;mas_ascend", "mt_dup", ("__mt_dup", "tree walk", "traversal")),
    ("__mt_dup", "mt_dup", ("__mt_dup", "own code", "traversal")),
    ("ksm_fork", "mt_dup", ("fork hooks", "own code", "fixed")),
    ("uprobe_start_dup_mmap;percpu_down_read", "mt_dup", ("fork hooks", "locks", "fixed")),
    ("", "vma_loop", ("dup_mmap", "own code", "other")),
    ("", "tail", ("dup_mmap", "own code", "fixed")),
    ("down_write", "vma_loop", ("dup_mmap", "locks", "other")),  # i_mmap_lock_write, inlined into dup_mmap
    ("mas_store;bpf_trace_run4;bpf_prog_6b83_ma_write;bpf_get_current_task", "vma_loop", ("tracer", "own code", "tracer")),
    ("__mmap_lock_do_trace_released;__traceiter_mmap_lock_released;bpf_trace_run2", "tail", ("tracer", "own code", "tracer")),
    ("vm_area_dup;asm_sysvec_apic_timer_interrupt;sysvec_apic_timer_interrupt;__irq_exit_rcu;handle_softirqs;rcu_core",
     "vma_loop", ("interrupts", "own code", "other")),
    # exact probes on the per-VMA functions: their machinery is the tracer's, the function's body is its own
    ("bpf_trampoline_6442491234;vm_area_dup;kmem_cache_alloc_noprof", "vma_loop", ("vm_area_dup", "slab allocator", "other")),
    ("bpf_trampoline_6442491234;bpf_prog_aa_kfunc__vm_area_dup", "vma_loop", ("tracer", "own code", "tracer")),
    ("bpf_trampoline_6442491234", "vma_loop", ("tracer", "own code", "tracer")),
    ("anon_vma_fork;kprobe_ftrace_handler;kprobe_perf_func;trace_call_bpf", "vma_loop", ("tracer", "own code", "tracer")),
    ("arch_rethook_trampoline;arch_rethook_trampoline_callback;rethook_trampoline_handler", "vma_loop",
     ("tracer", "own code", "tracer")),
    ("some_new_helper;kmem_cache_alloc_noprof", "vma_loop", ("unlisted: some_new_helper", "slab allocator", "other")),
    ("some_new_helper", "mt_dup", ("unlisted: some_new_helper", "own code", "fixed")),
]


@pytest.mark.parametrize("below, window, want", CASES)
def test_each_stack_is_named_by_the_tables(below, window, want):
    assert tuple(vars(classify(ROOT + (";" + below if below else ""), window)).values()) == want


def test_stacks_the_unwinder_cut_short_are_named_so():
    assert classify("__pi___x86_indirect_thunk_rax", "vma_loop").work == "unwound short"
    assert classify("__pi___x86_indirect_thunk_rax", "vma_loop").how == "mitigation thunks"
    assert classify("bpf_prog_21ed752ecb199e00_raw_tracepoint__ma_write", "vma_loop").work == "tracer"


def test_tables_name_only_known_works():
    names = {w.name for w in WORKS}
    assert set(WORK.values()) <= names and set(OVERRIDE.values()) <= names
    assert not set(WORK) & set(OVERRIDE), "a frame is either a work or an override"
    # A prefix must not swallow the BPF LSM hook (policy, not forktrace) into the tracer.
    assert classify(ROOT + ";security_vm_enough_memory_mm;bpf_lsm_vm_enough_memory", "vma_loop").work == "vm_enough_memory"
    assert all(k.count("*") <= 1 and (k.endswith("*") or "*" not in k) for t in (WORK, HOW, OVERRIDE) for k in t)


@pytest.mark.parametrize("frame, name", [
    ("mas_copy_node.isra.0", "mas_copy_node"),
    ("mas_copy_node.isra.0+0x1f/0x60", "mas_copy_node"),
    ("copy_pte_range.constprop.0.cold", "copy_pte_range"),
    ("foo.part.0", "foo"),
    ("bar.llvm.123456", "bar"),
    ("__pi___x86_indirect_thunk_rax", "__x86_indirect_thunk_rax"),
    ("dup_mmap+0x2a/0x610", "dup_mmap"),
])
def test_one_frame_name_for_every_reader(frame, name, tmp_path):
    assert frame_name(frame) == name
    assert stack_frames(f"copy_process;dup_mmap;{frame}")[-1] == name


# ---------------------------------------------------------------- estimate from known shares

KNOWN = {  # below dup_mmap -> vma_loop samples: known shares of the loop's on-CPU time
    "vm_area_dup;kmem_cache_alloc_noprof": 300,
    "vm_area_dup": 100,
    "security_vm_enough_memory_mm": 200,
    "anon_vma_fork": 100,
    "copy_page_range": 50,
    "mas_store": 150,
    "mas_store;bpf_trace_run4;bpf_prog_1_ma_write": 100,
}
MT_DUP = {"__mt_dup;mas_copy_node.isra.0": 60, "__mt_dup": 40}


def known_stacks(scale: int = 1) -> list[dict]:
    out = [{"stack": f"{ROOT};{b}", "phase": "vma_loop", "count": n * scale} for b, n in KNOWN.items()]
    out += [{"stack": f"{ROOT};{b}", "phase": "mt_dup", "count": n * scale} for b, n in MT_DUP.items()]
    return out + [{"stack": ROOT, "phase": "tail", "count": 10 * scale}]


def test_functions_get_their_share_of_the_measured_window_and_sum_to_dup_mmap(tmp_path):
    path = write_costed(tmp_path / "k.parquet", 400, {"stores": 500.0}, 20_000.0, n=100, noise_ns=2_000,
                        sample={"hz": 999, "stacks": known_stacks(), "lost": 0})
    rec = load_recording(path)
    forks = rec.forks[rec.forks.usable]
    est = sample_estimate(forks, sample_counts([rec.meta]), boot=200)
    loop = float((forks.ts_child_unlock.astype("int64") - forks.ts_first_store.astype("int64")).mean())
    mt_dup = float((forks.ts_first_store.astype("int64") - forks.ts_child_lock.astype("int64")).mean())
    fn = est.functions()
    total_loop = sum(KNOWN.values())
    assert fn["vm_area_dup"].ns_per_fork == pytest.approx(400 / total_loop * loop)
    assert fn["vm_enough_memory"].ns_per_fork == pytest.approx(200 / total_loop * loop)
    assert fn["tracer"].ns_per_fork == pytest.approx(100 / total_loop * loop)
    assert fn["__mt_dup"].ns_per_fork == pytest.approx(mt_dup)
    # Every ns of dup_mmap is somewhere, named: functions, and components, sum to the measured mean.
    assert sum(a.ns_per_fork for a in fn.values()) == pytest.approx(est.total_ns)
    assert sum(est.ns_per_fork.values()) == pytest.approx(est.total_ns)
    assert est.total_ns == pytest.approx(float(forks.dup_mmap_ns.mean()))
    # vm_area_dup's time splits by what it was spent on, in the shares put in.
    within = est.within("vm_area_dup")
    assert within["slab allocator"].ns_per_fork == pytest.approx(0.75 * fn["vm_area_dup"].ns_per_fork)
    # Over all functions: slab time is vm_area_dup's here; the tracer's own code is not dup_mmap's.
    hows = est.hows()
    assert hows["slab allocator"].ns_per_fork == pytest.approx(300 / total_loop * loop)
    assert sum(a.ns_per_fork for a in hows.values()) == pytest.approx(
        sum(a.ns_per_fork for name, a in fn.items() if name not in ("tracer", "lock gap", "off CPU", "unsampled window")))
    for a in fn.values():
        assert a.ci95[0] <= a.ns_per_fork + 1e-6 and a.ns_per_fork <= a.ci95[1] + 1e-6
    assert est.runs == 1 and est.interval.startswith("one run")


def test_several_runs_give_an_interval_over_runs(tmp_path):
    for seed in range(3):
        write_costed(tmp_path / f"r{seed}.parquet", 400, {"stores": 500.0}, 20_000.0, n=60, noise_ns=2_000, seed=seed,
                     sample={"hz": 999, "stacks": known_stacks(scale=seed + 1), "lost": 0})
    (ga,) = attribute_groups(group_recordings(load_recordings([tmp_path])), boot=200).groups
    est = ga.sample_est
    assert est.runs == 3 and "over 3 runs" in est.interval
    # Same shares in every run: the pooled point keeps them whatever the runs' sample counts.
    fn = est.functions()
    assert fn["vm_area_dup"].ns_per_fork / fn["vm_enough_memory"].ns_per_fork == pytest.approx(2.0)


def test_report_names_the_functions_per_vma_in_text_and_json(tmp_path):
    path = write_costed(tmp_path / "k.parquet", 400, {"stores": 500.0}, 20_000.0, n=100,
                        sample={"hz": 999, "stacks": known_stacks(), "lost": 0})
    doc = json.loads(render_report(path, "json"))
    f = doc["functions"]
    rows = {r["function"]: r for r in f["functions"]}
    assert f["vmas"] == pytest.approx(doc["vmas"]["median"])
    r = rows["vm_area_dup"]
    assert r["ns_per_vma"] == pytest.approx(r["ns_per_fork"] / f["vmas"])
    assert r["how"]["slab allocator"] == pytest.approx(0.75)
    assert r["components"] == {"other": pytest.approx(1.0)}
    assert rows["__mt_dup"]["components"].keys() == {"copy", "traversal"}
    assert sum(r["share"] for r in f["functions"]) == pytest.approx(1.0)
    assert not f["unnamed_over_limit"]
    text = render_report(path, "text")
    assert "by function (samples):" in text and "vm_enough_memory" in text
    assert "one run: bootstrap over its forks and samples only" in " ".join(text.split())


def test_a_large_unlisted_bucket_is_flagged(tmp_path):
    stacks = [{"stack": f"{ROOT};brand_new_function", "phase": "vma_loop", "count": 500},
              {"stack": f"{ROOT};vm_area_dup", "phase": "vma_loop", "count": 100}]
    path = write_costed(tmp_path / "u.parquet", 100, {"stores": 500.0}, 20_000.0, n=40,
                        sample={"hz": 999, "stacks": stacks, "lost": 0})
    f = json.loads(render_report(path, "json"))["functions"]
    assert f["unnamed_over_limit"] and f["largest_unnamed"]["function"] == "unlisted: brand_new_function"
    assert "extend the tables in analysis/attribution/functions.py" in " ".join(render_report(path, "text").split())


def test_identical_stacks_across_recordings_are_classified_once(tmp_path):
    classify.cache_clear()
    metas = [{"sample": {"hz": 999, "stacks": known_stacks(), "lost": 0}} for _ in range(20)]
    sc = sample_counts(metas)
    assert len(sc.runs) == 20 and sc.total == 20 * sum(s["count"] for s in known_stacks())
    assert classify.cache_info().misses == len(known_stacks())


def test_the_plot_of_functions_per_vma_is_drawn_for_sampled_groups(tmp_path):
    pytest.importorskip("matplotlib")
    from analysis.report.plots import write_plots
    from analysis.report.summary import build_report

    src = tmp_path / "src"
    src.mkdir()
    for extra in (100, 400, 1600):
        write_costed(src / f"s{extra}.parquet", extra, {"stores": 500.0}, 20_000.0, n=40, seed=extra,
                     sample={"hz": 999, "stacks": known_stacks(), "lost": 0})
    files = write_plots(build_report([src]).attribution, tmp_path / "plots")
    assert {f.name for f in files} >= {"functions_per_vma.png", "functions_per_vma.svg"}


# Stacks sampled in Debian's 6.12 guest with fentry probes on copy_process and vm_area_dup:
# dup_mmap is inlined into copy_process there, and copy_process's trampoline sits above it.
GUEST_612 = "entry_SYSCALL_64_after_hwframe;do_syscall_64;__do_sys_clone;kernel_clone;copy_process;bpf_trampoline_6442466311;copy_process"


def test_an_inlined_dup_mmap_is_read_from_its_caller():
    assert classify(GUEST_612 + ";vm_area_dup;kmem_cache_alloc", "vma_loop").work == "vm_area_dup"
    assert classify(GUEST_612 + ";anon_vma_fork", "vma_loop").work == "anon_vma_fork"
    # dup_mmap's own code (inlined): not the tracer's, although a trampoline sits above it
    assert classify(GUEST_612, "vma_loop").work == "dup_mmap"
    # a trampoline inside the work's call is the probe's cost
    assert classify(GUEST_612 + ";vm_area_dup;bpf_trampoline_6442466360", "vma_loop").work == "tracer"
    # fexit: the trampoline calls the body, whose time is the function's
    assert classify(GUEST_612 + ";vm_area_dup;bpf_trampoline_6442466360;vm_area_dup;kmem_cache_alloc_noprof",
                    "vma_loop") == classify(GUEST_612 + ";vm_area_dup;kmem_cache_alloc_noprof", "vma_loop")
    assert classify(GUEST_612 + ";vm_area_dup;bpf_trampoline_6442466360;vm_area_dup", "vma_loop").work == "vm_area_dup"
    assert classify(GUEST_612 + ";vm_area_dup;bpf_trampoline_1;bpf_prog_ab_vm_area_dup", "vma_loop").work == "tracer"
    # where dup_mmap has its own frame, it wins over its callers
    assert classify("copy_process;dup_mmap;copy_process_helper_not_listed", "vma_loop").work.startswith("unlisted")
    assert classify("vm_area_dup;kmem_cache_alloc", "vma_loop").work == "unwound short"
