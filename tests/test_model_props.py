"""Property tests: random layouts and store histories keep every invariant, and the
tree always holds what a brute-force interval map says it should."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analysis.recording.layout import Vma
from analysis.model import (
    MapleTree,
    WriteCounters,
    build_bulk,
    build_from_history,
    dup_mmap_replace,
    history_with_churn,
    layout_slots,
    mas_store,
    mt_dup,
)
from analysis.model.constants import ULONG_MAX

U = 700  # the small address space the reference array covers; [U, ULONG_MAX] is one tail value

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def expected_ranges(cells: list, tail) -> list[tuple[int, int, object]]:
    """Run-length encoding of the reference: what the tree's ranges must be."""
    runs: list[list] = []
    for i, value in enumerate(cells + [tail]):
        last = i if i < len(cells) else ULONG_MAX
        if runs and runs[-1][2] == value:
            runs[-1][1] = last
        else:
            runs.append([i, last, value])
    return [tuple(r) for r in runs]


stores = st.lists(
    st.tuples(
        st.integers(0, U - 1),
        st.one_of(st.integers(0, 12), st.integers(0, 120), st.integers(0, U)),
        st.sampled_from(["map", "map", "unmap", "to_end"]),
    ),
    min_size=1,
    max_size=150,
)


@SETTINGS
@given(stores)
def test_random_histories_keep_invariants_and_contents(ops):
    tree = MapleTree()
    counters = WriteCounters()
    cells: list = [None] * U
    tail = None
    for serial, (index, length, kind) in enumerate(ops):
        if kind == "to_end":
            last, entry = ULONG_MAX, serial
        else:
            last, entry = min(index + length, U - 1), (serial if kind == "map" else None)
        mas_store(tree, index, last, entry, counters)
        for i in range(index, min(last, U - 1) + 1):
            cells[i] = entry
        if last == ULONG_MAX:
            tail = entry
        tree.update_gaps()
        tree.validate()
        assert list(tree.ranges()) == expected_ranges(cells, tail)
    assert counters.stores == len(ops)


layouts = st.lists(st.tuples(st.integers(0, 3), st.integers(1, 4)), min_size=0, max_size=400).map(
    lambda spec: _layout_from_spec(spec)
)


def _layout_from_spec(spec: list[tuple[int, int]]) -> list[Vma]:
    at = 0x400000
    out = []
    for gap_pages, size_pages in spec:
        at += gap_pages * 4096
        out.append(Vma(at, at + size_pages * 4096))
        at += size_pages * 4096
    return out


@SETTINGS
@given(layouts, st.sets(st.integers(0, 399), max_size=30))
def test_bulk_build_dup_and_replace(layout, dontcopy_raw):
    dontcopy = {i for i in dontcopy_raw if i < len(layout)}
    built = build_bulk(layout)
    parent = built.tree
    parent.validate()
    shape = parent.shape()
    assert parent.entries() == [(v.start, v.end - 1, i) for i, v in enumerate(layout)]
    assert shape.slots_used == layout_slots(layout)
    assert built.counters.stores == len(layout)

    child, dup = mt_dup(parent)
    assert dup.nodes_copied == shape.nodes
    assert dup.bulk_allocs == shape.internal
    assert dup.edges_down == max(shape.nodes - 1, 0)
    assert dup.edges_up == max(shape.nodes - shape.height, 0)

    rc = dup_mmap_replace(child, [(v.start, v.end - 1) for v in layout], dontcopy)
    child.validate()
    assert rc.stores_exact_fit == len(layout) - len(dontcopy)
    assert rc.stores_null == len(dontcopy)
    assert child.entries() == [(v.start, v.end - 1, i) for i, v in enumerate(layout) if i not in dontcopy]
    if not dontcopy and layout:
        assert rc.find.leaf_crossings == shape.leaves - 1
        assert rc.find.slots_stepped == shape.slots_used - 1


@SETTINGS
@given(layouts, st.integers(0, 2**32), st.integers(0, 60))
def test_churned_history_ends_with_the_layout(layout, seed, temporaries):
    history = history_with_churn(layout, seed=seed, temporaries=temporaries)
    tree = build_from_history(history)
    tree.validate()
    assert tree.entries() == [(v.start, v.end - 1, i) for i, v in enumerate(layout)]


@pytest.mark.parametrize("seed", range(6))
def test_seeded_churn_on_deeper_trees(seed):
    """Hypothesis keeps trees small; this drives height 3-4 trees through every write path."""
    rng = random.Random(seed)
    size = 6000
    tree, counters = MapleTree(), WriteCounters()
    cells: list = [None] * size
    for serial in range(1500):
        index = rng.randrange(size)
        last = min(index + rng.choice([0, 1, 2, 3, rng.randrange(40), rng.randrange(400)]), size - 1)
        entry = serial if rng.random() < 0.7 else None
        mas_store(tree, index, last, entry, counters)
        cells[index : last + 1] = [entry] * (last - index + 1)
    tree.update_gaps()
    tree.validate()
    assert list(tree.ranges()) == expected_ranges(cells, None)
    assert tree.height >= 3
    assert counters.stores_spanning and counters.stores_rebalance and counters.splits
