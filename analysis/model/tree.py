"""The replay model's maple tree: nodes, walks, gap tracking, shape and validate().

A node holds parallel lists, one element per used slot:

* `pivots[i]` is the inclusive upper index of slot i. The kernel leaves the last
  pivot implied (the node's max, from the parent); here it is stored, so
  `pivots[-1]` is always the node's max and a walk needs no parent pointers.
* `slots[i]` is, in a leaf (maple_leaf_64), the entry: an int (which VMA of the
  layout) or None for an unmapped interval; in an internal node
  (maple_arange_64), the child Node.
* `gaps[i]` (internal nodes only) is the largest NULL range below child i, as
  the kernel's arange64 `gap[]` tracks it for get_unmapped_area().

Gaps never change a tree's shape, so write paths leave them stale and
`MapleTree.update_gaps()` recomputes them bottom-up in one pass (mas_update_gap
done once instead of per store). validate() checks them.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

from analysis.model.constants import (
    MAPLE_ARANGE64_SLOTS,
    MAPLE_NODE_SIZE,
    MAPLE_RANGE64_SLOTS,
    ULONG_MAX,
)

__all__ = ["Node", "MapleTree", "TreeShape", "TreeInvalid", "PathStep"]


class TreeInvalid(AssertionError):
    """validate() found a broken invariant: a bug in the model, never bad input."""


class Node:
    """One 256-byte maple node (struct maple_node), leaf or arange64."""

    __slots__ = ("leaf", "pivots", "slots", "gaps")

    def __init__(self, leaf: bool, pivots: list[int], slots: list, gaps: list[int] | None = None) -> None:
        self.leaf = leaf
        self.pivots = pivots
        self.slots = slots
        self.gaps = gaps if gaps is not None else ([] if leaf else [0] * len(slots))

    def __len__(self) -> int:
        return len(self.slots)

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        kind = "leaf" if self.leaf else "arange64"
        return f"<{kind} {len(self.slots)} slots max={self.pivots[-1]:#x}>"


# (node, offset, min, max): one level of a walk, like the ma_state a kernel walk keeps.
PathStep = tuple[Node, int, int, int]


@dataclass(frozen=True)
class TreeShape:
    """What a tree looks like: the figures `tracer model` prints."""

    height: int
    nodes: int
    leaves: int
    internal: int
    nodes_per_level: list[int]  # root first
    entries: int  # non-NULL slots (VMAs)
    null_slots: int
    leaf_fill: dict[int, int] = field(default_factory=dict)  # slots used -> leaves
    internal_fill: dict[int, int] = field(default_factory=dict)

    @property
    def slots_used(self) -> int:
        """S: entries plus NULL ranges, the kernel's slot demand for a layout."""
        return self.entries + self.null_slots

    @property
    def bytes(self) -> int:
        return self.nodes * MAPLE_NODE_SIZE

    @property
    def mean_leaf_fill(self) -> float:
        return self.slots_used / self.leaves if self.leaves else 0.0


class MapleTree:
    """A process's VMA tree (MT_FLAGS_ALLOC_RANGE): root node and height.

    An empty tree has root None and height 0, as mt_init_flags() leaves it.
    """

    __slots__ = ("root", "height")

    def __init__(self, root: Node | None = None, height: int = 0) -> None:
        self.root = root
        self.height = height

    # -- walks -----------------------------------------------------------------

    def walk(self, index: int) -> list[PathStep]:
        """mas_wr_walk()/mtree_range_walk(): the path from the root to the leaf holding index."""
        path: list[PathStep] = []
        node, lo, hi = self.root, 0, ULONG_MAX
        while True:
            pivots = node.pivots
            off = bisect_left(pivots, index)
            path.append((node, off, lo, hi))
            if node.leaf:
                return path
            if off:
                lo = pivots[off - 1] + 1
            hi = pivots[off]
            node = node.slots[off]

    def load(self, index: int):
        """mtree_load(): the entry covering index (None for unmapped)."""
        if self.root is None:
            return None
        node, off, _, _ = self.walk(index)[-1]
        return node.slots[off]

    def iter_nodes(self) -> Iterator[tuple[Node, int, int, int]]:
        """Every node in depth-first pre-order, as (node, depth, min, max)."""
        if self.root is None:
            return
        stack = [(self.root, 0, 0, ULONG_MAX)]
        while stack:
            node, depth, lo, hi = stack.pop()
            yield node, depth, lo, hi
            if not node.leaf:
                pivots = node.pivots
                for i in range(len(node.slots) - 1, -1, -1):
                    clo = pivots[i - 1] + 1 if i else lo
                    stack.append((node.slots[i], depth + 1, clo, pivots[i]))

    def leaves(self) -> list[Node]:
        """The leaves, left to right."""
        return [n for n, _, _, _ in self.iter_nodes() if n.leaf]

    def ranges(self) -> Iterator[tuple[int, int, object]]:
        """Every (first, last, entry) range in address order, NULL ranges included."""
        if self.root is None:
            yield 0, ULONG_MAX, None
            return
        for node, _, lo, _ in self.iter_nodes():
            if node.leaf:
                first = lo
                for piv, entry in zip(node.pivots, node.slots):
                    yield first, piv, entry
                    first = piv + 1

    def entries(self) -> list[tuple[int, int, object]]:
        """The non-NULL ranges (the VMAs) in address order."""
        return [r for r in self.ranges() if r[2] is not None]

    # -- gaps (arange64) ---------------------------------------------------------

    def update_gaps(self) -> None:
        """Recompute every internal node's gap[] bottom-up (mas_update_gap, all at once)."""
        if self.root is not None:
            _subtree_max_gap(self.root, 0)

    # -- shape -------------------------------------------------------------------

    def shape(self) -> TreeShape:
        """Height, nodes per level and fill histograms of this tree."""
        per_level: Counter[int] = Counter()
        leaf_fill: Counter[int] = Counter()
        internal_fill: Counter[int] = Counter()
        entries = nulls = 0
        for node, depth, _, _ in self.iter_nodes():
            per_level[depth] += 1
            if node.leaf:
                leaf_fill[len(node.slots)] += 1
                n = sum(1 for s in node.slots if s is None)
                nulls += n
                entries += len(node.slots) - n
            else:
                internal_fill[len(node.slots)] += 1
        leaves = sum(leaf_fill.values())
        internal = sum(internal_fill.values())
        return TreeShape(
            height=self.height,
            nodes=leaves + internal,
            leaves=leaves,
            internal=internal,
            nodes_per_level=[per_level[d] for d in range(self.height)],
            entries=entries,
            null_slots=nulls,
            leaf_fill=dict(sorted(leaf_fill.items())),
            internal_fill=dict(sorted(internal_fill.items())),
        )

    # -- invariants --------------------------------------------------------------

    def validate(self) -> None:
        """Check every invariant of a process's maple tree; raise TreeInvalid on the first broken one.

        Checked: node capacities (16 leaf slots, 10 arange64 slots), pivots
        strictly ascending inside [min, max] and the last pivot equal to the
        node's max, the root spanning [0, ULONG_MAX], all leaves at depth
        height-1, no empty node, an internal root with at least two children,
        no two adjacent NULL entries (also across leaves), no node ending on
        NULL except the rightmost leaf, and every gap[] equal to the largest
        NULL range below that child.
        """
        if self.root is None:
            _check(self.height == 0, "empty tree with non-zero height")
            return
        _check(self.height >= 1, "tree with a root but height 0")
        if not self.root.leaf:
            _check(len(self.root.slots) >= 2, "internal root with a single child")
        prev_null = False
        expect_lo = 0
        for node, depth, lo, hi in self.iter_nodes():
            n = len(node.slots)
            _check(n >= 1, f"empty node at depth {depth}")
            _check(len(node.pivots) == n, "pivots and slots differ in length")
            cap = MAPLE_RANGE64_SLOTS if node.leaf else MAPLE_ARANGE64_SLOTS
            _check(n <= cap, f"node with {n} slots, more than {cap}")
            _check(node.pivots[-1] == hi, f"node's last pivot {node.pivots[-1]:#x} is not its max {hi:#x}")
            prev = lo - 1
            for piv in node.pivots:
                _check(prev < piv, f"pivots not ascending at {piv:#x}")
                prev = piv
            if node.leaf:
                _check(depth == self.height - 1, f"leaf at depth {depth}, height {self.height}")
                _check(lo == expect_lo, f"leaf starts at {lo:#x}, expected {expect_lo:#x}")
                expect_lo = hi + 1 if hi != ULONG_MAX else hi
                for entry in node.slots:
                    _check(not (prev_null and entry is None), f"two adjacent NULL ranges near {lo:#x}")
                    prev_null = entry is None
                if hi != ULONG_MAX:
                    _check(node.slots[-1] is not None, f"leaf ending at {hi:#x} ends on NULL")
            else:
                _check(len(node.gaps) == n, "gaps and slots differ in length")
                _check(depth < self.height - 1, "internal node at leaf depth")
                for i, child in enumerate(node.slots):
                    _check(isinstance(child, Node), "internal slot does not hold a node")
                    clo = node.pivots[i - 1] + 1 if i else lo
                    want = _node_max_gap(child, clo)
                    _check(node.gaps[i] == want, f"gap[{i}] is {node.gaps[i]}, largest NULL range below is {want}")
        _check(expect_lo == ULONG_MAX, "leaves do not reach ULONG_MAX")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise TreeInvalid(message)


def leaf_max_gap(node: Node, lo: int) -> int:
    """mas_leaf_max_gap(): the largest NULL range in a leaf, in indexes."""
    best = 0
    first = lo
    for piv, entry in zip(node.pivots, node.slots):
        if entry is None and piv - first + 1 > best:
            best = piv - first + 1
        first = piv + 1
    return best


def _node_max_gap(node: Node, lo: int) -> int:
    """mas_max_gap(): a leaf's largest NULL range, or an internal node's largest gap[]."""
    if node.leaf:
        return leaf_max_gap(node, lo)
    return max(node.gaps)


def _subtree_max_gap(node: Node, lo: int) -> int:
    if node.leaf:
        return leaf_max_gap(node, lo)
    pivots = node.pivots
    gaps = [
        _subtree_max_gap(child, pivots[i - 1] + 1 if i else lo) for i, child in enumerate(node.slots)
    ]
    node.gaps = gaps
    return max(gaps)
