"""The replay model of a process's maple tree (lib/maple_tree.c, v6.1 to v6.18).

Pure Python, no root needed. Build a parent's tree (bulk appends, a history of
stores, or an observed leaf partition), duplicate it as __mt_dup() does, run
dup_mmap()'s replace loop, and count what each step costs; compare with the
pre-v6.8 bulk-insert path on the same layout.
"""

from analysis.model.build import (
    BulkBuild,
    Store,
    build_bulk,
    build_from_history,
    build_from_partition,
    check_layout,
    layout_slots,
    mas_expected_entries,
    synthetic_layout,
)
from analysis.model.compare import ModelReport, compare_paths, model_leaf_counts, seed_node_estimate
from analysis.model.history import history_mmap_order, history_with_churn, spawn_history
from analysis.model.dup import DupCounters, FindCounters, ReplaceCounters, dup_mmap_replace, mas_for_each, mt_dup
from analysis.model.tree import MapleTree, Node, TreeInvalid, TreeShape
from analysis.model.write import BulkState, WriteCounters, mas_destroy, mas_store

__all__ = [
    "BulkBuild",
    "BulkState",
    "DupCounters",
    "FindCounters",
    "MapleTree",
    "ModelReport",
    "Node",
    "ReplaceCounters",
    "Store",
    "TreeInvalid",
    "TreeShape",
    "WriteCounters",
    "build_bulk",
    "build_from_history",
    "build_from_partition",
    "check_layout",
    "compare_paths",
    "dup_mmap_replace",
    "history_mmap_order",
    "history_with_churn",
    "layout_slots",
    "mas_destroy",
    "mas_expected_entries",
    "mas_for_each",
    "mas_store",
    "model_leaf_counts",
    "mt_dup",
    "seed_node_estimate",
    "spawn_history",
    "synthetic_layout",
]
