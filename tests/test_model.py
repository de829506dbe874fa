"""Replay model: invariants, kernel split rules on hand-worked cases, dup and replace counts."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis.recording.layout import Vma, format_maps
from analysis.model import (
    MapleTree,
    Node,
    TreeInvalid,
    build_bulk,
    build_from_history,
    build_from_partition,
    compare_paths,
    dup_mmap_replace,
    history_mmap_order,
    layout_slots,
    model_leaf_counts,
    mt_dup,
    seed_node_estimate,
    synthetic_layout,
)
from analysis.model.render import run_model
from analysis.model.constants import MAPLE_NODE_SIZE, ULONG_MAX
from analysis.errors import TracerError, UsageError
from analysis.recording import write_recording
from recordings import MONO_BASE_NS, default_metadata, fork_row

PAGE = 4096


def ranges_of(layout):
    return [(v.start, v.end - 1) for v in layout]


def leaf_fills(tree: MapleTree) -> list[int]:
    return [len(leaf.slots) for leaf in tree.leaves()]


# -- validate() can fail --------------------------------------------------------------


def _two_leaf_tree(left_slots, right_slots) -> MapleTree:
    left = Node(True, [9, 19], left_slots)
    right = Node(True, [29, ULONG_MAX], right_slots)
    tree = MapleTree(Node(False, [19, ULONG_MAX], [left, right]), 2)
    tree.update_gaps()
    return tree


def test_validate_accepts_a_well_formed_tree():
    _two_leaf_tree([None, 1], [2, None]).validate()


@pytest.mark.parametrize(
    "left, right, why",
    [
        ([1, None], [None, 2], "adjacent NULL"),  # also: left ends on NULL
        ([1, None], [2, None], "ends on NULL"),
        ([None, 1], [None, None], "adjacent NULL"),
    ],
)
def test_validate_rejects_null_rules(left, right, why):
    with pytest.raises(TreeInvalid):
        _two_leaf_tree(left, right).validate()


def test_validate_rejects_stale_gap_and_overfull_leaf():
    tree = _two_leaf_tree([None, 1], [2, None])
    tree.root.gaps[0] = 0
    with pytest.raises(TreeInvalid, match="gap"):
        tree.validate()
    big = Node(True, list(range(10, 10 * 17, 10)) + [ULONG_MAX], list(range(16)) + [None])
    with pytest.raises(TreeInvalid, match="more than 16"):
        MapleTree(big, 1).validate()


# -- layouts ------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 7, 100])
def test_synthetic_layout_slot_counts(n):
    assert layout_slots(synthetic_layout(n, gaps=True)) == (2 * n + 1 if n else 0)
    assert layout_slots(synthetic_layout(n, gaps=False)) == (n + 2 if n else 0)


def test_tree_slots_match_layout_slots():
    for gaps in (True, False):
        layout = synthetic_layout(300, gaps=gaps)
        assert build_bulk(layout).tree.shape().slots_used == layout_slots(layout)


# -- split rules on hand-worked cases -----------------------------------------------------
# 15 adjacent VMAs from a non-zero start: [NULL, v0..v14, NULL] = 17 slots, one over 16.


def test_bulk_split_leaves_the_minimum_on_the_right():
    tree = build_bulk(synthetic_layout(15, gaps=False)).tree
    # mab_calc_split() in bulk mode: split = b_end - mt_min_slots = 16 - 6 -> 11 | 6.
    assert leaf_fills(tree) == [11, 6]
    assert tree.height == 2


def test_normal_split_halves():
    layout = synthetic_layout(15, gaps=False)
    tree = build_from_history(history_mmap_order(layout, "ascending"))
    # Normal mode: split = b_end / 2 = 8 -> 9 | 8.
    assert leaf_fills(tree) == [9, 8]


def test_bulk_split_moves_off_null():
    # With gaps: [NULL, v0, NULL, v1, ..., v7, NULL] = 17 slots when v7 arrives.
    # split = 16 - 6 = 10 is slot "NULL before v5"; the kernel takes one less -> 10 | 7.
    tree = build_bulk(synthetic_layout(8, gaps=True)).tree
    assert leaf_fills(tree) == [10, 7]
    tree.validate()


def test_push_left_before_splitting():
    # Bulk, adjacent: after the first split (11 | 6) the right leaf grows by one per VMA;
    # at 17 slots it pushes into the left sibling (11 + 17 - 2 = 26 < 28) instead of
    # splitting: left takes mt_slots - 2 + 1 = 15, right keeps 13.
    build = build_bulk(synthetic_layout(26, gaps=False))
    assert build.counters.push_left == 1
    assert build.counters.splits == 1  # the root leaf; the new root above it is the final node
    assert build.counters.height_grows == 1
    assert leaf_fills(build.tree) == [15, 13]


# Debian's 6.1.176 lib/maple_tree.c, run in the kernel's userspace harness (tools/testing/radix-tree)
# as dup_mmap() drives it (mas_expected_entries, RCU off, one mas_store per range, mas_destroy), on 40
# ranges each after a gap: the function besides mas_store() that traced ma_write at each store, and the
# rightmost leaf's entries after it (N: mas_wr_node_store, B: mas_wr_bnode, -: none); and the runs of
# equal ma_state->node at the mas_store() events (MAS_START first), which a per-VMA probe counts as leaves.
KERNEL_6_1_NODE_RUNS = [1, 7, 5, 3, 5, 3, 5, 3, 5, 3]
KERNEL_6_1_GAPPED_40 = (
    "-NNNNNNBNNNNBNNBNNNNBNNBNNNNBNNBNNNNBNNB",
    [3, 5, 7, 9, 11, 13, 15, 7, 9, 11, 13, 15, 11, 13, 15, 7, 9, 11, 13, 15, 11, 13, 15, 7, 9, 11, 13, 15, 11,
     13, 15, 7, 9, 11, 13, 15, 11, 13, 15, 7],
)


def test_bulk_store_events_follow_v6_1_write_paths():
    """Per store: which v6.1 function traces ma_write besides mas_store(), and the leaf it leaves."""
    from analysis.model.build import mas_expected_entries
    from analysis.model.write import BulkState, WriteCounters, mas_store

    layout = synthetic_layout(40, gaps=True)
    tree, counters = MapleTree(), WriteCounters()
    bulk = BulkState(expected=40, prealloc_nodes=mas_expected_entries(40))
    events, fills = "", []
    for i, vma in enumerate(layout):
        before = (counters.node_store_events, counters.bnode_events)
        mas_store(tree, vma.start, vma.end - 1, i, counters, bulk)
        after = (counters.node_store_events, counters.bnode_events)
        events += {(0, 0): "-", (1, 0): "N", (0, 1): "B"}[(after[0] - before[0], after[1] - before[1])]
        fills.append(len(tree.walk(vma.start)[-1][0].slots))
    assert (events, fills) == KERNEL_6_1_GAPPED_40
    assert counters.stores_split == 9  # the harness's nine ma_op "mas_split", pushes into the left sibling included


def test_bulk_build_counts_what_a_per_vma_probe_sees_on_v6_1():
    """The same 40 stores through build_bulk(): 39 extra ma_write events, and the node changes a probe sees
    (a split at the last store is seen by no later event)."""
    build = build_bulk(synthetic_layout(40, gaps=True))
    assert build.counters.node_store_events == KERNEL_6_1_GAPPED_40[0].count("N")
    assert build.counters.bnode_events == KERNEL_6_1_GAPPED_40[0].count("B")
    assert sum(KERNEL_6_1_NODE_RUNS) == 40
    assert build.leaves_seen == len(KERNEL_6_1_NODE_RUNS)
    # Adjacent ranges append in place until the leaf is nearly full: no extra event before that.
    adjacent = build_bulk(synthetic_layout(12, gaps=False))
    assert adjacent.counters.node_store_events == adjacent.counters.bnode_events == 0


# -- known figures --------------------------------------------------------------------------


def test_check_forking_tree():
    """lib/test_maple_tree.c check_forking(): 135 ranges [i*10, i*10+5], normal stores."""
    history = [(i * 10, i * 10 + 5, i) for i in range(135)]
    tree = build_from_history(history)
    tree.validate()
    shape = tree.shape()
    # 135 entries + 134 gaps between them + the trailing NULL (the first range starts at 0).
    assert shape.slots_used == 270
    min_leaves = math.ceil(270 / 16)  # 17: more than one arange64 root can hold
    assert shape.leaves >= min_leaves
    assert shape.height == 3
    assert shape.nodes >= min_leaves + math.ceil(min_leaves / 10) + 1
    # The seed's (n-1)/15 counts VMAs only, as if nodes held 16 of them and had no parents.
    assert shape.nodes > 2 * seed_node_estimate(135)


@pytest.mark.parametrize("n", [1_000, 10_000])
def test_seed_estimate_undercounts_gapped_layouts(n):
    shape = build_bulk(synthetic_layout(n, gaps=True)).tree.shape()
    # 2n+1 slots in leaves of at most 16: at least (2n+1)/16 leaves, ~1.9x the estimate.
    assert shape.leaves >= (2 * n + 1) / 16
    assert shape.nodes > 1.8 * seed_node_estimate(n)


# -- __mt_dup and the replace loop -----------------------------------------------------------


@pytest.mark.parametrize("build", ["bulk", "descending", "ascending"])
@pytest.mark.parametrize("n, gaps", [(1, True), (40, False), (700, True)])
def test_dup_counts_follow_shape(build, n, gaps):
    layout = synthetic_layout(n, gaps=gaps)
    parent = build_bulk(layout).tree if build == "bulk" else build_from_history(history_mmap_order(layout, build))
    shape = parent.shape()
    child, dup = mt_dup(parent)
    assert dup.nodes_copied == shape.nodes
    assert dup.bytes_copied == MAPLE_NODE_SIZE * shape.nodes
    assert dup.bulk_allocs == shape.internal
    assert dup.nodes_bulk_allocated == shape.nodes - 1
    assert dup.edges_down == shape.nodes - 1
    assert dup.edges_up == shape.nodes - shape.height  # the rightmost path is never ascended
    assert list(child.ranges()) == list(parent.ranges())
    child.validate()
    parent_ids = {id(node) for node, *_ in parent.iter_nodes()}
    assert not parent_ids & {id(node) for node, *_ in child.iter_nodes()}


def test_replace_loop_counts():
    layout = synthetic_layout(500, gaps=True)
    parent = build_from_history(history_mmap_order(layout, "descending"))
    shape = parent.shape()
    child, _ = mt_dup(parent)
    rc = dup_mmap_replace(child, ranges_of(layout))
    assert rc.stores_exact_fit == rc.ma_write_events == 500
    assert rc.find.mas_find_calls == 501
    assert rc.find.slots_stepped == layout_slots(layout) - 1
    assert rc.find.leaf_crossings == shape.leaves - 1
    assert rc.leaves_written == shape.leaves
    assert list(child.ranges()) == list(parent.ranges())


def test_replace_loop_dontcopy_clears_ranges():
    layout = synthetic_layout(200, gaps=False)
    dontcopy = {0, 3, 4, 5, 100, 199}
    child, _ = mt_dup(build_bulk(layout).tree)
    rc = dup_mmap_replace(child, ranges_of(layout), dontcopy)
    child.validate()
    assert rc.stores_null == len(dontcopy)
    assert rc.stores_exact_fit == 200 - len(dontcopy)
    kept = [(v.start, v.end - 1, i) for i, v in enumerate(layout) if i not in dontcopy]
    assert child.entries() == kept


# -- partition --------------------------------------------------------------------------------


def test_partition_reproduces_observed_leaves():
    layout = synthetic_layout(900, gaps=True)
    tree = build_from_history(history_mmap_order(layout, "random", seed=3))
    leaf_of = {}
    for k, leaf in enumerate(tree.leaves()):
        for entry in leaf.slots:
            if entry is not None:
                leaf_of[entry] = k
    rebuilt = build_from_partition(layout, [leaf_of[i] for i in range(len(layout))])
    rebuilt.validate()
    # Same grouping of VMAs; NULL slots follow the VMA after them, as the kernel's do.
    assert [leaf.slots for leaf in rebuilt.leaves()] == [leaf.slots for leaf in tree.leaves()]


def test_partition_rejects_overfull_leaf():
    layout = synthetic_layout(9, gaps=True)  # 9 VMAs + 10 NULLs in one leaf = 19 slots
    with pytest.raises(ValueError, match="slots"):
        build_from_partition(layout, [0] * 9)


def test_model_leaf_counts_entry_point():
    layout = synthetic_layout(300, gaps=True)
    history = history_mmap_order(layout, "ascending")
    counts = model_leaf_counts(layout, 40.0, history=history, partition=[i // 7 for i in range(300)])
    assert counts["observed"] == 40.0
    assert counts["partition"] == math.ceil(300 / 7)
    assert counts["history"] == build_from_history(history).shape().leaves
    assert counts["bulk_append"] == build_bulk(layout).tree.shape().leaves
    assert model_leaf_counts(layout, None)["history"] is None


# -- compare and CLI ---------------------------------------------------------------------------


def test_compare_rows_agree_with_parts():
    layout = synthetic_layout(1200, gaps=False)
    report = compare_paths(layout)
    rows = {m: (n, o) for m, n, o in report.rows}
    assert rows["child tree nodes"] == (report.parent_shape.nodes, report.old_child_shape.nodes)
    assert rows["nodes copied (memcpy 256 B)"][0] == report.parent_shape.nodes
    assert rows["mas_find calls"] == (1201, 1201)
    assert report.old["stores"] == 1200


def test_run_model_text_and_json():
    text = run_model(300, True, None, None, False)
    assert "tree shape" in text and "leaf crossings" in text
    doc = json.loads(run_model(300, False, None, None, True))
    assert doc["vmas"] == 300 and doc["slots"] == 302
    assert doc["shape"]["parent"]["nodes"] == doc["new"]["nodes_copied"]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(vmas=None, maps=None, recording=None),
        dict(vmas=10, maps="x", recording=None),
        dict(vmas=-1, maps=None, recording=None),
    ],
)
def test_run_model_usage_errors(kwargs, tmp_path):
    with pytest.raises(UsageError):
        run_model(kwargs["vmas"], True, kwargs["maps"] and tmp_path / kwargs["maps"], kwargs["recording"], False)


def test_run_model_bad_files(tmp_path):
    with pytest.raises(TracerError, match="does not exist"):
        run_model(None, True, tmp_path / "missing", None, False)
    junk = tmp_path / "junk"
    junk.write_text("hello world\n")
    with pytest.raises(TracerError, match="not a /proc/PID/maps"):
        run_model(None, True, junk, None, False)
    with pytest.raises(TracerError):
        run_model(None, True, None, junk, False)


def test_run_model_maps_drops_vsyscall(tmp_path):
    layout = synthetic_layout(20, gaps=True) + [Vma(0xFFFFFFFFFF600000, 0xFFFFFFFFFF601000, "--xp", path="[vsyscall]")]
    maps = tmp_path / "maps"
    maps.write_text(format_maps(layout))
    doc = json.loads(run_model(None, True, maps, None, True))
    assert doc["vmas"] == 20


def _write_recording(path, maps_entries, rows, with_meta=True):
    """A real recording (the writer's) whose forks are (pid, leaves) pairs."""
    if not with_meta:
        pq.write_table(pa.table({"pid": pa.array([r[0] for r in rows], pa.uint32())}), path)
        return
    forks = [fork_row(MONO_BASE_NS + i * 10**6, vmas=40, mt_dup_ns=5_000, vma_step_ns=600, pid=pid, leaves=leaves)
             for i, (pid, leaves) in enumerate(rows)]
    write_recording(path, forks, default_metadata(forks, maps=maps_entries, workload=None))


def test_run_model_recording_uses_busiest_pid(tmp_path):
    small, big = synthetic_layout(5, True), synthetic_layout(50, True)
    entries = [
        {"pid": 1, "comm": "a", "ts_mono_ns": 0, "maps": format_maps(small)},
        {"pid": 2, "comm": "b", "ts_mono_ns": 0, "maps": format_maps(big)},
    ]
    rec = tmp_path / "rec.parquet"
    _write_recording(rec, entries, [(1, 1), (2, 7), (2, 9), (2, 8)])
    doc = json.loads(run_model(None, True, None, rec, True))
    assert doc["vmas"] == 50
    assert doc["leaf_counts"]["observed_median"] == 8


def test_run_model_recording_without_metadata(tmp_path):
    rec = tmp_path / "rec.parquet"
    _write_recording(rec, [], [(1, 1)], with_meta=False)
    with pytest.raises(TracerError, match="not a forktrace recording"):
        run_model(None, True, None, rec, False)
