"""Ways to build a parent's tree for the replay model, and the layouts that feed them.

1. build_bulk(): ascending appends in bulk mode, as dup_mmap() built the child's
   tree from v6.1 to v6.7 (mas_expected_entries(), mas_store() per VMA,
   mas_destroy()).
2. build_from_history(): normal-mode range stores (mmap, munmap, mprotect-like),
   which is how a live process's tree -- the one __mt_dup() copies -- gets its shape.
   The histories themselves are written in analysis.model.history.
3. build_from_partition(): the leaves a recording observed (which VMAs were
   written into the same child leaf node), with internal levels packed evenly
   because a recording cannot see them.

Entries are ints: the index of the VMA in the layout. NULL is None.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from analysis.recording.layout import Vma
from analysis.model.constants import (
    MAPLE_ARANGE64_SLOTS,
    MAPLE_RANGE64_SLOTS,
    ULONG_MAX,
)
from analysis.model.tree import MapleTree, Node
from analysis.model.write import BulkState, WriteCounters, mas_destroy, mas_store

__all__ = [
    "Store",
    "synthetic_layout",
    "layout_slots",
    "check_layout",
    "mas_expected_entries",
    "build_bulk",
    "build_from_history",
    "build_from_partition",
    "even_leaf_partition",
]

# A range store of a history: (index, last, entry); entry None is a munmap.
Store = tuple[int, int, "int | None"]


def synthetic_layout(n: int, gaps: bool = True, start: int = 0x10000000, page: int = 4096) -> list[Vma]:
    """n one-page VMAs from `start`: with gaps, a free page between each (S = 2n + 1
    slots); without, adjacent VMAs that cannot merge (alternating permissions,
    S = n + 2: the gap below `start` and the trailing NULL).

    >>> layout_slots(synthetic_layout(10, gaps=True))
    21
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    if start <= 0 or start % page:
        raise ValueError("start must be a positive multiple of page")
    step = 2 * page if gaps else page
    perms = ("r--p", "rw-p")
    return [Vma(start + i * step, start + i * step + page, perms[i % 2]) for i in range(n)]


def check_layout(layout: Sequence[Vma]) -> None:
    """Raise ValueError unless the layout is non-overlapping, ascending and non-empty per VMA."""
    prev_end = 0
    for i, v in enumerate(layout):
        if v.end <= v.start:
            raise ValueError(f"VMA {i} [{v.start:#x}, {v.end:#x}) is empty")
        if v.start < prev_end:
            raise ValueError(f"VMA {i} at {v.start:#x} overlaps or precedes the one before")
        if v.end - 1 > ULONG_MAX:
            raise ValueError(f"VMA {i} ends beyond ULONG_MAX")
        prev_end = v.end


def layout_slots(layout: Sequence[Vma]) -> int:
    """S: slots a layout needs (VMAs + maximal unmapped intervals, trailing NULL included).

    An empty layout needs none: an empty tree has no node.
    """
    if not layout:
        return 0
    s = len(layout) + (1 if layout[0].start > 0 else 0)
    for a, b in zip(layout, layout[1:]):
        if a.end != b.start:
            s += 1
    if layout[-1].end - 1 < ULONG_MAX:
        s += 1
    return s


def mas_expected_entries(nr_entries: int) -> int:
    """Nodes mas_expected_entries() preallocates for a bulk insert of nr_entries."""
    nr_nodes = max(nr_entries, nr_entries * 2 + 1)
    nr_nodes = -(-nr_nodes // (MAPLE_RANGE64_SLOTS - 2))  # leaves, with room to grow
    nr_nodes += -(-nr_nodes // (MAPLE_ARANGE64_SLOTS - 2))  # internal nodes
    return nr_nodes + 3  # working room for a split and new parents


@dataclass
class BulkBuild:
    """The old path's result: the child's tree and what building it cost."""

    tree: MapleTree
    counters: WriteCounters
    prealloc_nodes: int
    stored: int
    # What a per-VMA program counts as leaves: changes of mas->node from one mas_store()
    # event to the next (the node the previous store left it on; the first counts once).
    leaves_seen: int = 0


def build_bulk(layout: Sequence[Vma], dontcopy: frozenset[int] = frozenset()) -> BulkBuild:
    """dup_mmap() before v6.8: append every copied VMA in address order in bulk mode.

    VM_DONTCOPY VMAs (indexes in `dontcopy`) are skipped, as the old loop did.
    """
    check_layout(layout)
    tree = MapleTree()
    counters = WriteCounters()
    bulk = BulkState(expected=len(layout), prealloc_nodes=mas_expected_entries(len(layout)))
    stored = leaves_seen = 0
    node: Node | None = None  # mas->node at the next mas_store() event; None: MAS_START
    seen: object = ()  # what the previous event saw; () matches nothing
    for i, vma in enumerate(layout):
        if i in dontcopy:
            continue
        if node is not seen:
            leaves_seen += 1
        seen = node
        mas_store(tree, vma.start, vma.end - 1, i, counters, bulk)
        node = tree.walk(vma.start)[-1][0]  # where the store left the ma_state
        stored += 1
    mas_destroy(tree, bulk, counters)
    tree.update_gaps()
    return BulkBuild(tree, counters, bulk.prealloc_nodes, stored, leaves_seen)


def build_from_history(history: Sequence[Store], counters: WriteCounters | None = None) -> MapleTree:
    """Replay normal-mode range stores into an empty tree (mas_store_gfp per store)."""
    tree = MapleTree()
    c = counters if counters is not None else WriteCounters()
    for index, last, entry in history:
        mas_store(tree, index, last, entry, c)
    tree.update_gaps()
    return tree


def build_from_partition(layout: Sequence[Vma], leaf_of_vma: Sequence[Hashable | None]) -> MapleTree:
    """A tree whose leaves group the VMAs as a recording observed them.

    leaf_of_vma[i] is the leaf node the VMA i was written into (the `node` of
    its ma_write event); None means "not observed" and keeps the VMA with the
    one before. Each unmapped interval goes with the VMA after it, since a
    leaf may start on NULL but not end on one; the trailing NULL ends the last
    leaf. Internal levels are not observable: they are packed as evenly as
    nodes of 10 allow.
    """
    check_layout(layout)
    if len(leaf_of_vma) != len(layout):
        raise ValueError(f"{len(leaf_of_vma)} leaf ids for {len(layout)} VMAs")
    if not layout:
        return MapleTree()
    groups: list[list[int]] = []
    current: Hashable | None = object()
    for i, node_id in enumerate(leaf_of_vma):
        if groups and (node_id is None or node_id == current):
            groups[-1].append(i)
        else:
            groups.append([i])
            current = node_id
    leaves: list[Node] = []
    prev_end = 0
    for g in groups:
        pivots: list[int] = []
        slots: list = []
        for i in g:
            v = layout[i]
            if v.start > prev_end:
                pivots.append(v.start - 1)
                slots.append(None)
            pivots.append(v.end - 1)
            slots.append(i)
            prev_end = v.end
        leaves.append(Node(True, pivots, slots))
    if prev_end - 1 < ULONG_MAX:
        leaves[-1].pivots.append(ULONG_MAX)
        leaves[-1].slots.append(None)
    for k, leaf in enumerate(leaves):
        if len(leaf.slots) > MAPLE_RANGE64_SLOTS:
            raise ValueError(f"observed leaf {k} would need {len(leaf.slots)} slots (> {MAPLE_RANGE64_SLOTS})")
    level: list[Node] = leaves
    height = 1
    while len(level) > 1:
        level = _pack_level(level)
        height += 1
    tree = MapleTree(level[0], height)
    tree.update_gaps()
    return tree


def even_leaf_partition(layout: Sequence[Vma], leaves: int) -> list[int]:
    """Leaf index per VMA: `leaves` leaves holding the layout's slots as evenly as possible.

    For a tree whose leaf count is known (a recording's `leaves`) but whose
    partition is not. Slots are counted as build_from_partition() places them:
    each VMA with the unmapped interval before it, the trailing NULL in the last leaf.

    >>> even_leaf_partition([Vma(i * 8192, i * 8192 + 4096, "rw-p") for i in range(1, 7)], 2)
    [0, 0, 0, 1, 1, 1]
    """
    check_layout(layout)
    if not 1 <= leaves <= max(1, len(layout)):
        raise ValueError(f"cannot spread {len(layout)} VMAs over {leaves} leaves")
    cost, prev_end = [], 0
    for v in layout:
        cost.append(2 if v.start > prev_end else 1)
        prev_end = v.end
    total = sum(cost) + 1
    out, before = [], 0
    for c in cost:
        out.append(min(leaves - 1, (2 * before + c) * leaves // (2 * total)))  # by the VMA's middle slot
        before += c
    return out


def _pack_level(children: list[Node]) -> list[Node]:
    """Parents for a level: as few arange64 nodes as fit, children spread evenly."""
    n = len(children)
    parents = -(-n // MAPLE_ARANGE64_SLOTS)
    base, extra = divmod(n, parents)
    out: list[Node] = []
    at = 0
    for p in range(parents):
        size = base + (1 if p < extra else 0)
        kids = children[at : at + size]
        at += size
        out.append(Node(False, [k.pivots[-1] for k in kids], kids))
    return out
