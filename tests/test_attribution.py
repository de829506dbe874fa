"""Attribution against synthetic data made from known costs: fit, collinearity, samples, report."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from analysis.attribution.attribute import attribute_groups
from analysis.attribution.components import COMPONENTS, REGRESSOR_ORDER
from analysis.attribution.fit import fit_costs
from analysis.attribution.samples import classify_stack, sample_counts
from analysis.frame import group_recordings, load_recordings
from analysis.report.summary import render_report
from recordings import fork_rows, write_costed, write_synthetic

ROOT = "entry_SYSCALL_64_after_hwframe;do_syscall_64;__do_sys_clone;kernel_clone;copy_process;dup_mmap"

# (stack below dup_mmap, window, component it must be classified as)
STACKS = [
    ("__mt_dup;mas_dup_alloc.isra.0;kmem_cache_refill_sheaf;__kmem_cache_alloc_bulk", "mt_dup", "copy"),
    ("__mt_dup;mas_copy_node.isra.0", "mt_dup", "copy"),
    ("__mt_dup", "mt_dup", "traversal"),
    ("mas_find;mas_next_slot", "vma_loop", "traversal"),
    ("mas_find", "vma_loop", "traversal"),
    ("mas_store;mas_wr_store_type", "vma_loop", "replace"),
    ("mas_store", "vma_loop", "replace"),
    ("mas_store;bpf_trace_run4;bpf_prog_21ed752ecb199e00_raw_tracepoint__ma_write;ktime_get_mono_fast_ns;read_tsc",
     "vma_loop", "tracer"),
    ("mas_store;bpf_trace_run4;bpf_prog_21ed_ma_write;bpf_task_storage_get_recur", "vma_loop", "tracer"),
    ("mas_store;bpf_trace_run4;bpf_prog_1_ma_write;bpf_probe_read_kernel;copy_from_kernel_nofault", "vma_loop", "tracer"),
    ("vm_area_dup;kmem_cache_alloc_noprof;__memcg_slab_post_alloc_hook", "vma_loop", "other"),
    ("copy_page_range;__pte_alloc;pte_alloc_one", "vma_loop", "other"),
    ("anon_vma_fork", "vma_loop", "other"),
    ("security_vm_enough_memory_mm;bpf_lsm_vm_enough_memory", "vma_loop", "other"),
    ("vm_area_dup;asm_sysvec_apic_timer_interrupt;sysvec_apic_timer_interrupt;__irq_exit_rcu;handle_softirqs",
     "vma_loop", "other"),
    ("", "vma_loop", "other"),
    ("", "tail", "fixed"),
    ("uprobe_start_dup_mmap", "mt_dup", "fixed"),
    ("ksm_fork", "mt_dup", "fixed"),
]


@pytest.mark.parametrize("below, window, component", STACKS)
def test_stack_classification(below, window, component):
    stack = ROOT + (";" + below if below else "")
    assert classify_stack(stack, window) == component


def test_a_bare_bpf_frame_without_dup_mmap_is_the_tracer():
    assert classify_stack("bpf_prog_21ed752ecb199e00_raw_tracepoint__ma_write", "vma_loop") == "tracer"


def synthetic_stacks(samples_per_component: dict[str, int]) -> list[dict]:
    """Stacks with known counts per component, spread over several stack shapes each."""
    out = []
    for below, window, component in STACKS:
        n = samples_per_component.get(component, 0)
        shapes = sum(1 for _, _, c in STACKS if c == component)
        out.append({"stack": ROOT + (";" + below if below else ""), "phase": window, "count": n // shapes})
    return out


def test_sample_shares_are_what_was_put_in():
    want = {"copy": 300, "traversal": 150, "replace": 200, "other": 600, "fixed": 30, "tracer": 120}
    stacks = synthetic_stacks(want)
    got = sample_counts([{"sample": {"hz": 999, "stacks": stacks, "lost": 0}}]).by_component()
    expected = {c: 0 for c in COMPONENTS}
    for s in stacks:
        expected[next(c for b, w, c in STACKS if ROOT + (";" + b if b else "") == s["stack"] and w == s["phase"])] += s["count"]
    assert got == expected
    assert got["tracer"] == 120 and got["copy"] == 300


# ---------------------------------------------------------------- the fit


def independent_counts(cells: int, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({name: rng.integers(10, 2000, cells).astype(float) for name in REGRESSOR_ORDER})


def test_fit_recovers_known_costs_within_its_intervals():
    truth = {"stores": 90.0, "vmas": 400.0, "nodes_copied": 250.0, "allocs": 600.0, "edges": 20.0,
             "find_steps": 15.0, "leaf_crossings": 80.0}
    fixed = 30_000.0
    cells = independent_counts(14)
    rng = np.random.default_rng(0)
    rows, y = [], []
    for _, cell in cells.iterrows():
        mean = fixed + sum(truth[k] * cell[k] for k in truth)
        for _ in range(150):
            rows.append(cell)
            y.append(mean + rng.normal(0, 0.02 * mean))
    fit = fit_costs(np.array(y), pd.DataFrame(rows).reset_index(drop=True), boot=300)
    assert fit.missing is None
    assert fit.inseparable == [] and fit.folded_into_fixed == []
    # Eight 95% intervals: about one in three such fits has one miss by chance, so allow one.
    inside = [name for name, cost in {**truth, "fixed": fixed}.items() if fit.ci95[name][0] <= cost <= fit.ci95[name][1]]
    assert len(inside) >= 7, fit.ci95
    for name, cost in truth.items():
        assert fit.coef[name] == pytest.approx(cost, rel=0.1), name
    assert fit.coef["fixed"] == pytest.approx(fixed, rel=0.25)
    assert fit.r2 > 0.9


def test_counts_that_move_together_are_reported_inseparable_not_split():
    cells = independent_counts(8)
    cells["vmas"] = cells["stores"]  # every VMA copied: stores and VMAs are one count
    cells["edges"] = 2 * cells["nodes_copied"] - 2  # __mt_dup walks each edge down and up
    y = 20_000 + 300 * cells["stores"] + 500 * cells["nodes_copied"] + 40 * cells["find_steps"]
    rows = cells.loc[cells.index.repeat(50)].reset_index(drop=True)
    fit = fit_costs(np.repeat(y.to_numpy(), 50) * (1 + np.random.default_rng(1).normal(0, 0.01, len(rows))), rows,
                    boot=200)
    merged = [set(m["members"]) for m in fit.inseparable]
    assert {"stores", "vmas"} in merged or any({"stores", "vmas"} <= m for m in merged)
    assert any({"nodes_copied", "edges"} <= m for m in merged)
    names = [r.name for r in fit.regressors]
    assert "stores" not in names and "vmas" not in names  # never printed as a split
    assert all(len(set(r.members) & {"stores", "vmas"}) in (0, 2) for r in fit.regressors)


def test_one_layout_gives_no_fit_and_says_why():
    cells = independent_counts(1)
    fit = fit_costs(np.full(20, 1e5), cells.loc[cells.index.repeat(20)].reset_index(drop=True))
    assert fit.missing and "same counts" in fit.missing


def test_fit_over_synthetic_spawn_recordings(tmp_path):
    """Forks costing 25 us + 450 ns per store at four VMA counts: the per-store cost comes back."""
    for extra in (0, 100, 400, 800):
        write_costed(tmp_path / f"s{extra}.parquet", extra, {"stores": 450.0}, 25_000.0, noise_ns=2_000, seed=extra)
    att = attribute_groups(group_recordings(load_recordings([tmp_path])), boot=300)
    fit = att.fit
    assert fit.missing is None and fit.cells == 4
    assert fit.inseparable, "spawn layouts move every count together: the fit must say so"
    (reg,) = [r for r in fit.regressors if "stores" in r.members]
    assert reg.unit == "stores"
    lo, hi = fit.ci95[reg.name]
    assert lo <= 450.0 <= hi
    lo, hi = fit.ci95["fixed"]
    assert lo <= 25_000.0 <= hi
    assert not any(r["misfit"] for r in fit.residuals)
    for g in att.groups:
        assert g.model_check["source"] == "spawn_history"
        assert g.model_check["observed_leaves"] == g.model_check["predicted_leaves"]


def test_misfit_is_reported_where_the_model_does_not_explain_the_data(tmp_path):
    """The largest layout costs 40% more than linear: the report says the model does not explain it."""
    for extra, bump in ((0, 1.0), (100, 1.0), (200, 1.0), (400, 1.0), (800, 1.4)):
        write_costed(tmp_path / f"s{extra}.parquet", extra, {"stores": 450.0 * bump}, 25_000.0, noise_ns=1_000,
                     seed=extra)
    fit = attribute_groups(group_recordings(load_recordings([tmp_path])), boot=100).fit
    assert any(r["misfit"] for r in fit.residuals)
    assert any("does not explain" in n for n in fit.notes)


# ---------------------------------------------------------------- samples: a changed cost


ONE_STACK = {  # one stack shape per component, for recordings with known shares
    "copy": ("__mt_dup;mas_copy_node.isra.0", "mt_dup"),
    "traversal": ("mas_find;mas_next_slot", "vma_loop"),
    "replace": ("mas_store;mas_wr_store_type", "vma_loop"),
    "other": ("vm_area_dup;kmem_cache_alloc_noprof", "vma_loop"),
    "tracer": ("mas_store;bpf_trace_run4;bpf_prog_1_ma_write;read_tsc", "vma_loop"),
}


def sampled(tmp_path, name: str, ns: dict[str, float], extra: int = 400, n: int = 300):
    """A recording whose dup_mmap splits into `ns` per component, with samples proportional to time.

    copy runs before the first store (the mt_dup window); the rest in the loop.
    """
    stacks = [{"stack": f"{ROOT};{ONE_STACK[c][0]}", "phase": ONE_STACK[c][1], "count": int(v * n / 10_000)}
              for c, v in ns.items()]
    total = sum(ns.values())
    return write_costed(tmp_path / name, extra, {}, total, n=n, noise_ns=0.01 * total,
                        sample={"hz": 999, "stacks": stacks, "lost": 0}, mt_dup_ns=ns["copy"])


def test_a_changed_cost_is_attributed_to_its_component(tmp_path):
    base = {"copy": 40_000.0, "traversal": 30_000.0, "replace": 60_000.0, "other": 200_000.0, "tracer": 40_000.0}
    slower = {**base, "replace": 120_000.0}
    a = attribute_groups(group_recordings(load_recordings([sampled(tmp_path, "a.parquet", base)])), boot=200).groups[0]
    b = attribute_groups(group_recordings(load_recordings([sampled(tmp_path, "b.parquet", slower)])), boot=200).groups[0]
    assert a.estimate == b.estimate == "samples"
    diff = {c: b.components[c]["ns_per_fork"] - a.components[c]["ns_per_fork"] for c in COMPONENTS}
    assert max(diff, key=lambda c: diff[c]) == "replace"
    assert diff["replace"] == pytest.approx(60_000, rel=0.25)
    for c in ("traversal", "other", "tracer"):
        lo, hi = b.components[c]["ci95"]
        assert lo <= a.components[c]["ns_per_fork"] <= hi, c


# ---------------------------------------------------------------- the report


def test_report_without_samples_or_layout_says_which_estimate_is_missing(tmp_path):
    path = write_synthetic(tmp_path / "plain.parquet", fork_rows(30, vmas=40))
    doc = json.loads(render_report(path, "json"))
    assert doc["estimates_missing"]["samples"].startswith("not sampled")
    assert "no parent layout" in doc["estimates_missing"]["counts"]
    assert doc["fit"]["missing"]
    assert doc["attribution"] is None
    assert doc["cycle"] is None and "dup_mmap only" in doc["cycle_note"]
    text = render_report(path, "text")
    assert "samples   missing: not sampled" in text
    assert "fit       missing:" in text


def test_json_keys_of_a_sampled_recording(tmp_path):
    base = {"copy": 40_000.0, "traversal": 30_000.0, "replace": 60_000.0, "other": 200_000.0, "tracer": 40_000.0}
    doc = json.loads(render_report(sampled(tmp_path, "a.parquet", base), "json"))
    att = doc["attribution"]
    assert set(att) == set(COMPONENTS)
    for c in COMPONENTS:
        assert {"share", "ns_per_fork", "ns_per_unit", "ci95"} <= set(att[c])
    assert math.isclose(sum(att[c]["share"] for c in COMPONENTS), 1.0, abs_tol=1e-9)
    assert set(doc["samples"]["components"]) == set(COMPONENTS)
    assert doc["model_check"]["observed_leaves"] == doc["model_check"]["predicted_leaves"]
    assert {"r2", "method", "n", "inseparable"} <= set(doc["fit"])
    assert "cycle" in doc and doc["cycle"] is None


def test_cycle_columns_are_reported_as_p50(tmp_path):
    """clone = dup_mmap + clone_extra per fork; exit_mmap and wait as given."""
    rows = fork_rows(11, vmas=40, mt_dup_ns=5_000, vma_step_ns=600, cycle=(7_000, 30_000, 5_000))
    doc = json.loads(render_report(write_synthetic(tmp_path / "c.parquet", rows), "json"))
    dup = [r["ts_parent_unlock"] - r["ts_parent_lock"] for r in rows]
    assert doc["cycle"]["dup_mmap"] == pytest.approx(sorted(dup)[5])
    assert doc["cycle"]["clone"] == pytest.approx(sorted(dup)[5] + 7_000, abs=1)
    assert (doc["cycle"]["exit_mmap"], doc["cycle"]["wait"]) == (30_000.0, 5_000.0)


def test_several_recordings_markdown_predict_and_plots(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir(), dst.mkdir()
    for extra in (0, 200, 800):
        write_costed(src / f"s{extra}.parquet", extra, {"stores": 450.0}, 25_000.0, noise_ns=1_000, seed=extra)
    target = write_costed(dst / "s400.parquet", 400, {"stores": 450.0}, 25_000.0, noise_ns=1_000, seed=9)
    doc = json.loads(render_report([src], "json", predict=[target]))
    assert [g["vmas"] for g in doc["groups"]] == [0, 200, 800]
    assert len(doc["table"]) == 3 and doc["table"][0]["forks_per_10s"] == pytest.approx(10_000)
    (row,) = doc["prediction"]["groups"]
    assert abs(row["error_pct"]) < 5
    md = render_report([src], "markdown")
    assert md.startswith("# forktrace report: 3 recordings in 3 groups")
    assert "| group | forks | forks/10s |" in md
    text = render_report([src], "text")
    assert max(len(line) for line in text.splitlines()) <= 110
    pytest.importorskip("matplotlib")
    from analysis.report.plots import write_plots
    from analysis.report.summary import build_report

    files = write_plots(build_report([src]).attribution, tmp_path / "plots")
    assert {f.suffix for f in files} == {".png", ".svg"} and all(f.stat().st_size > 0 for f in files)


def test_a_bulk_append_kernel_gets_its_own_model_check_and_no_mt_dup_units(tmp_path):
    """Before v6.8 (no __mt_dup) the component units do not exist; the leaves a probe saw are the bulk build's."""
    from analysis.model import build_bulk
    from analysis.recording.layout import parse_maps
    from analysis.recording.writer import write_recording
    from recordings import MONO_BASE_NS, costed_rows, default_metadata, spawn_maps

    maps = spawn_maps(400)
    layout = parse_maps(maps)
    seen = build_bulk(layout).leaves_seen
    rows = costed_rows(50, stores=len(layout), total_ns=5e6, leaves=seen)
    workload = {"kind": "spawn", "pid": 4242, "extra_vmas": 400, "forks": 50, "forks_per_sec": 100.0}
    meta = default_metadata(rows, workload=workload, algorithm={"name": "bulk_append", "evidence": ["test"]},
                            maps=[{"pid": 4242, "comm": "spawn", "ts_mono_ns": MONO_BASE_NS, "maps": maps}])
    write_recording(tmp_path / "v61.parquet", rows, meta)
    (g,) = attribute_groups(group_recordings(load_recordings([tmp_path])), boot=100).groups
    assert g.model_check["source"] == "bulk_append"
    assert g.model_check["observed_leaves"] == g.model_check["predicted_leaves"] == seen
    assert seen > build_bulk(layout).tree.shape().leaves  # splits make new nodes: more than the final leaves
    assert g.counts is None and "bulk appends" in g.counts_missing
    text = render_report([tmp_path], "text")
    assert "child tree from bulk appends" in text and "no component counts" in text
