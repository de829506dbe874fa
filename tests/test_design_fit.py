"""The designed-experiment fit on synthetic runs from a known cost model.

Runs are generated with the replay model's own counts for each shape (so the
design matrix is the real one) and known unit costs that depend on the cache
state; the fit must recover them within its intervals, refuse a model that
cannot produce the data, and predict a shape it never saw.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.attribution.design import (
    MODELS,
    WS_BYTES_PER_NODE,
    WS_BYTES_PER_OWN_ANON_VMA,
    WS_BYTES_PER_TOUCHED_VMA,
    WS_BYTES_PER_VMA,
    design_fit,
    fit_model,
)
from analysis.model.build import build_from_history
from analysis.model.history import spawn_history
from analysis.attribution.counts import _count
from analysis.recording.layout import Vma

PAGE = 4096
L2 = 1 << 20

# Known costs (ns): warm per unit, and the cold increments. The tree window's
# terms make its time, the others the rest of dup_mmap's.
TREE = ("tree_fixed", "nodes_copied", "cold_tree_fixed", "cold_nodes", "nodes_beyond_l2")
COST = {"tree_fixed": 500.0, "nodes_copied": 300.0, "fixed": 3000.0, "vmas": 120.0, "gapped_vmas": 40.0,
        "touched_vmas": 250.0, "own_anon_vmas": 60.0, "file_vmas": 90.0}
COLD = {"cold_tree_fixed": 800.0, "cold_nodes": 120.0, "cold_fixed": 2000.0, "cold_vmas": 80.0}
SPILL = 150.0  # per VMA beyond L2 (working-set model)
SPILL_NODE = 100.0  # per node beyond L2
SPILL_TOUCHED = 300.0  # per touched VMA beyond L2


def spawn_layout(extra: int, adjacent: bool = False) -> list[Vma]:
    """A process like spawn.c's: a few base VMAs below and above the extra ones."""
    lo = [Vma(0x400000 + i * 0x10000, 0x400000 + i * 0x10000 + 0x1000, "r--p") for i in range(8)]
    top = 0x7F0000000000
    if adjacent:
        first = top - (extra + 1) * PAGE
        region = [Vma(first + i * PAGE, first + (i + 1) * PAGE, ("rw-p", "r--p")[i % 2]) for i in range(extra)]
    else:
        first = top - 2 * extra * PAGE
        region = [Vma(first + 2 * i * PAGE, first + (2 * i + 1) * PAGE, "rw-p") for i in range(extra)]
    hi = [Vma(top + i * 0x10000, top + i * 0x10000 + 0x2000, "r--p") for i in range(8)]
    return lo + region + hi


SHAPES = {"gapped-ascending": ("ascending", False), "gapped-descending": ("descending", False),
          "gapped-scatter": ("scatter", False), "adjacent": ("ascending", True)}


def counts(extra: int, level: str):
    order, adjacent = SHAPES.get(level, ("ascending", False))
    layout = spawn_layout(extra, adjacent)
    tree = build_from_history(spawn_history(layout, extra, munmap_order=order,
                                            spawn_layout="adjacent" if adjacent else "gapped"))
    return _count(tree, layout)


def synthetic_runs(runs: int = 3, noise: float = 0.01, spill: float = 0.0, spill_node: float = 0.0,
                   spill_touched: float = 0.0, seed: int = 1,
                   vmas=(100, 400, 1600, 6400)) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    design = [("shape", lv) for lv in SHAPES] + [("cache", "warm"), ("cache", "cold")] + \
        [("weight", w) for w in ("none", "touch", "touch-each", "file")]
    rows = []
    cache: dict = {}
    for factor, level in design:
        for extra in vmas:
            key = (extra, level if factor == "shape" else "gapped-ascending")
            c = cache.setdefault(key, counts(*key))
            weight = level if factor == "weight" else "none"
            cold = level == "cold"
            gapped = level != "adjacent"
            touched = extra if weight in ("touch", "touch-each") else 0
            own = extra if weight == "touch-each" else 0
            ws = (c.vmas * WS_BYTES_PER_VMA + c.nodes_copied * WS_BYTES_PER_NODE
                  + touched * WS_BYTES_PER_TOUCHED_VMA + own * WS_BYTES_PER_OWN_ANON_VMA)
            share = 0.0 if cold else max(0.0, 1 - L2 / ws)  # a cold fork pays its cold increments instead
            x = {"tree_fixed": 1, "nodes_copied": c.nodes_copied, "fixed": 1, "vmas": c.vmas,
                 "gapped_vmas": c.vmas if gapped else 0,
                 "touched_vmas": extra if weight in ("touch", "touch-each") else 0,
                 "own_anon_vmas": extra if weight == "touch-each" else 0,
                 "file_vmas": extra if weight == "file" else 0,
                 "cold_tree_fixed": cold, "cold_nodes": cold * c.nodes_copied, "cold_fixed": cold,
                 "cold_vmas": cold * c.vmas,
                 "nodes_beyond_l2": c.nodes_copied * share, "vmas_beyond_l2": c.vmas * share,
                 "touched_vmas_beyond_l2": touched * share}
            cost = {**COST, **COLD, "nodes_beyond_l2": spill_node, "vmas_beyond_l2": spill,
                    "touched_vmas_beyond_l2": spill_touched}
            tree = sum(cost[k] * x[k] for k in TREE)
            rest = sum(cost[k] * v for k, v in x.items() if k not in TREE)
            for rep in range(runs):
                t = tree * (1 + noise * rng.standard_normal())
                r = rest * (1 + noise * rng.standard_normal())
                rows.append({"file": f"{factor}-{level}-{extra}-{rep}", "factor": factor, "level": level,
                             "extra_vmas": extra, "rep": rep, "forks": 200, "mean_ns": t + r, "tree_ns": t,
                             "rest_ns": r, "cold": cold, "gapped": gapped, "vmas": c.vmas,
                             "nodes_copied": c.nodes_copied, "touched_vmas": x["touched_vmas"],
                             "own_anon_vmas": x["own_anon_vmas"], "file_vmas": x["file_vmas"],
                             "stores": c.stores, "observed_leaves": c.predicted_leaves,
                             "predicted_leaves": c.predicted_leaves, "samples": 0, "true_ns": tree + rest})
    df = pd.DataFrame(rows)
    df["median_ns"] = df["mean_ns"]
    df["tree_median_ns"] = df["tree_ns"]
    df["rest_median_ns"] = df["rest_ns"]
    df.attrs["l2_bytes"] = L2
    return df


def test_warm_cold_model_recovers_cache_dependent_unit_costs():
    runs = synthetic_runs()
    fit = fit_model(runs, "warm-cold")
    assert not fit.get("missing"), fit.get("missing")
    # Every cost within its interval at once: Bonferroni over the terms (twelve
    # 95% intervals would all cover the truth only about half the time).
    truths = {**COST, **COLD}
    tail = 100 * 0.05 / len(truths) / 2
    for name, true in truths.items():
        lo, hi = np.percentile(fit["_draws"][:, fit["terms"].index(name)], [tail, 100 - tail])
        assert lo <= true <= hi, (name, true, lo, hi, fit["costs"][name])
    assert fit["r2_cells"] > 0.99
    assert fit["misfits"] == []
    # The tree window is timed on its own: its per-node cost is pinned, though
    # the node count moves with the VMA count at every shape.
    lo, hi = fit["costs"]["nodes_copied"]["ci95"]
    assert hi - lo < 0.1 * COST["nodes_copied"], (lo, hi)


def test_the_constant_model_is_refused_where_the_caches_matter():
    doc = design_fit(synthetic_runs())
    assert doc["supported"] == "warm-cold"
    refused = {r["model"]: r["why"] for r in doc["refused"]}
    assert "constant" in refused and "cache/cold" in refused["constant"]
    cw = doc["cold_vs_warm"]["vmas"]
    assert cw["warm_ci95"][0] <= COST["vmas"] <= cw["warm_ci95"][1]
    assert cw["cold_ci95"][0] <= COST["vmas"] + COLD["cold_vmas"] <= cw["cold_ci95"][1]


def test_a_working_set_bend_needs_the_working_set_model():
    doc = design_fit(synthetic_runs(spill=SPILL, spill_node=SPILL_NODE, spill_touched=SPILL_TOUCHED))
    assert doc["supported"] == "working-set"
    costs = doc["models"]["working-set"]["costs"]
    for term, true in (("vmas_beyond_l2", SPILL), ("nodes_beyond_l2", SPILL_NODE),
                       ("touched_vmas_beyond_l2", SPILL_TOUCHED)):
        assert costs[term]["ci95"][0] <= true <= costs[term]["ci95"][1], (term, costs[term])
    assert {r["model"] for r in doc["refused"]} == {"constant", "warm-cold"}


def test_prediction_to_a_shape_the_fit_never_saw():
    doc = design_fit(synthetic_runs())
    by = {p["level"]: p for p in doc["predictions"]}
    assert set(by) == {"gapped-descending", "gapped-scatter", "adjacent"}
    for level in ("gapped-descending", "gapped-scatter"):
        assert by[level]["within_10pct"] and by[level]["worst_error_pct"] < 3, by[level]
    # Without the adjacent runs every VMA is gapped: the fit says it never saw
    # a VMA that is not, rather than guess what the gap costs.
    assert "never saw gapped_vmas" in by["adjacent"]["missing"], by["adjacent"]


def test_a_design_without_the_shape_factor_fits_with_the_layout_term_folded_in():
    runs = synthetic_runs()
    only = runs[runs["factor"] != "shape"].copy()
    only.attrs = runs.attrs
    fit = fit_model(only, "warm-cold")
    assert not fit.get("missing"), fit.get("missing")
    assert {"term": "gapped_vmas", "equal_to": "vmas",
            "why": "equal to vmas in every run: the design cannot tell them apart"} in fit["dropped"]
    # Every VMA here is gapped: the per-VMA cost holds the gap's, and the tree window still gives the node's.
    vmas = fit["costs"]["vmas"]["ci95"]
    assert vmas[0] <= COST["vmas"] + COST["gapped_vmas"] <= vmas[1], fit["costs"]["vmas"]
    nodes = fit["costs"]["nodes_copied"]["ci95"]
    assert nodes[0] <= COST["nodes_copied"] <= nodes[1], fit["costs"]["nodes_copied"]
    assert fit["misfits"] == []


def test_a_level_with_a_term_the_fit_never_saw_is_not_predicted():
    from analysis.attribution.design import predict_level

    runs = synthetic_runs()
    # Held out: the file-backed runs, the only ones with file-backed VMAs.
    p = predict_level(runs, "file", "constant", factor="weight")
    assert "never saw file_vmas" in p["missing"], p


def test_models_are_declared_nested():
    assert set(MODELS["constant"]) < set(MODELS["warm-cold"]) < set(MODELS["working-set"])


def test_agreement_parts_are_defined_alike_on_both_sides():
    from analysis.attribution.design import AGREEMENT_PARTS, INTERCEPTS, REST_PART, _part_of

    # A sampled stack goes to a part by its window and the kind of work it does.
    assert _part_of(("mt_dup", "__mt_dup", "node copy", "copy")) == "tree copy"
    assert _part_of(("mt_dup", "__mt_dup", "walk", "traversal")) == "tree copy"
    assert _part_of(("mt_dup", "vm_area_dup", "slab", "other")) == REST_PART
    assert _part_of(("vma_loop", "mas_find", "-", "traversal")) == REST_PART
    assert _part_of(("-", "off CPU", "-", "offcpu")) is None
    # The fit's tree copy is all of the tree window's terms (__mt_dup's per-call
    # cost with its per-node work); the intercepts shown apart are the rest's.
    tree_terms = set(AGREEMENT_PARTS["tree copy"][0])
    assert tree_terms == {t for t in MODELS["working-set"] if t.endswith(("nodes", "nodes_copied", "nodes_beyond_l2"))
                          or t in ("tree_fixed", "cold_tree_fixed")}
    assert not tree_terms & set(INTERCEPTS)
