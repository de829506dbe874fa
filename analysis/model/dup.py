"""fork()'s tree work since v6.8: __mt_dup() and dup_mmap()'s replace loop, with counters.

__mt_dup() (mas_dup_build()) copies the parent's tree node by node in
depth-first pre-order: one 256-byte memcpy per node (mas_copy_node()), one
bulk allocation of all children per internal node (mas_dup_alloc()), and
ascends only when a subtree is done, so the edges of the rightmost path are
walked down but never up. It emits no tracepoint.

dup_mmap() then walks the child's tree with for_each_vma() (mas_find()) and
replaces each parent VMA by its copy with mas_store() over exactly the same
range: an exact fit, one pointer store, one maple_tree:ma_write event. A
VM_DONTCOPY VMA is cleared instead (a NULL store, which may rebuild or
rebalance a node); the model then re-walks from the root to the next index,
where the kernel continues from the ma_state the store left.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field, fields

from analysis.model.constants import MAPLE_NODE_SIZE
from analysis.model.tree import MapleTree, Node
from analysis.model.write import WriteCounters, mas_store

__all__ = ["DupCounters", "FindCounters", "ReplaceCounters", "mt_dup", "dup_mmap_replace", "mas_for_each"]


@dataclass
class DupCounters:
    """What mas_dup_build() does for one tree."""

    nodes_visited: int = 0  # source nodes read
    nodes_copied: int = 0  # mas_copy_node() memcpys
    bytes_copied: int = 0  # nodes_copied * 256
    single_allocs: int = 0  # mt_alloc_one() for the root
    bulk_allocs: int = 0  # mas_dup_alloc(): one kmem_cache_alloc_bulk per internal node
    nodes_bulk_allocated: int = 0  # children those bulk calls return
    edges_down: int = 0  # mas_descend() on each tree
    edges_up: int = 0  # mas_ascend() on each tree

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class FindCounters:
    """What mas_find() costs over a whole for_each_vma() loop."""

    mas_find_calls: int = 0  # including the last one, which finds nothing
    walk_descends: int = 0  # levels descended by mas_walk() from the root
    slots_stepped: int = 0  # mas_next_slot() offset advances, NULL slots included
    leaf_crossings: int = 0  # mas_next_node(): moves to the next leaf
    cross_edges_up: int = 0  # ascends inside those crossings
    cross_edges_down: int = 0  # descends inside those crossings

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class ReplaceCounters:
    """dup_mmap()'s loop after __mt_dup(): finds, exact-fit stores, VM_DONTCOPY clears."""

    find: FindCounters = field(default_factory=FindCounters)
    stores_exact_fit: int = 0  # one per copied VMA
    stores_null: int = 0  # VM_DONTCOPY clears
    ma_write_events: int = 0  # maple_tree:ma_write events the loop emits
    leaves_written: int = 0  # distinct leaves the exact-fit stores wrote (the recording's `leaves`)
    rewalks: int = 0  # walks from the root after a NULL store changed the tree
    null_store: WriteCounters = field(default_factory=WriteCounters)

    def as_dict(self) -> dict[str, int]:
        out = {k: v for k, v in self.find.as_dict().items()}
        for name in ("stores_exact_fit", "stores_null", "ma_write_events", "leaves_written", "rewalks"):
            out[name] = getattr(self, name)
        for k, v in self.null_store.as_dict().items():
            if k != "stores" and v:
                out[f"null_{k}"] = v
        return out


def mt_dup(tree: MapleTree) -> tuple[MapleTree, DupCounters]:
    """__mt_dup() / mas_dup_build(): copy `tree` node for node, in DFS pre-order."""
    c = DupCounters()
    if tree.root is None:
        return MapleTree(), c
    root = tree.root
    new_root = _mas_copy_node(root, c)
    c.single_allocs = 1
    src_path: list[list] = [[root, 0]]
    dst_path: list[list] = [[new_root, 0]]
    while True:
        src = src_path[-1][0]
        if not src.leaf:
            c.bulk_allocs += 1  # mas_dup_alloc()
            c.nodes_bulk_allocated += len(src.slots)
        else:
            if src.pivots[-1] == (1 << 64) - 1:
                break  # the last leaf: duplication is complete
            while True:  # mas_ascend() while at the last slot
                src_path.pop()
                dst_path.pop()
                c.edges_up += 1
                node, off = src_path[-1]
                if off != len(node.slots) - 1:
                    break
            src_path[-1][1] += 1
            dst_path[-1][1] += 1
        parent, off = src_path[-1]
        child = parent.slots[off]
        new_child = _mas_copy_node(child, c)
        dst_path[-1][0].slots[off] = new_child
        c.edges_down += 1
        src_path.append([child, 0])
        dst_path.append([new_child, 0])
    return MapleTree(new_root, tree.height), c


def _mas_copy_node(node: Node, c: DupCounters) -> Node:
    """mas_copy_node(): the whole node; an internal node's child pointers are refilled later."""
    c.nodes_visited += 1
    c.nodes_copied += 1
    c.bytes_copied += MAPLE_NODE_SIZE
    if node.leaf:
        return Node(True, node.pivots[:], node.slots[:])
    return Node(False, node.pivots[:], [None] * len(node.slots), node.gaps[:])


class _Cursor:
    """The ma_state of a for_each_vma() loop: a path of [node, offset] from the root."""

    __slots__ = ("path", "c", "pending")

    def __init__(self, c: FindCounters) -> None:
        self.path: list[list] = []
        self.c = c
        self.pending = False

    def seek(self, tree: MapleTree, index: int) -> None:
        """mas_walk() from the root to index."""
        self.path = [[n, off] for n, off, _, _ in tree.walk(index)]
        self.c.walk_descends += len(self.path) - 1
        self.pending = True

    def find(self):
        """mas_find(): the next non-NULL entry, or None past the end."""
        c = self.c
        c.mas_find_calls += 1
        path = self.path
        if self.pending:
            self.pending = False
            leaf, off = path[-1]
            if leaf.slots[off] is not None:
                return leaf.slots[off]
        while True:
            step = path[-1]
            leaf = step[0]
            if step[1] + 1 < len(leaf.slots):
                step[1] += 1
            else:  # mas_next_node()
                d = len(path) - 2
                while d >= 0 and path[d][1] == len(path[d][0].slots) - 1:
                    d -= 1
                if d < 0:
                    return None
                c.leaf_crossings += 1
                c.cross_edges_up += len(path) - 1 - d
                path[d][1] += 1
                del path[d + 1 :]
                node = path[d][0].slots[path[d][1]]
                while True:
                    path.append([node, 0])
                    c.cross_edges_down += 1
                    if node.leaf:
                        break
                    node = node.slots[0]
                leaf = node
            c.slots_stepped += 1
            entry = leaf.slots[path[-1][1]]
            if entry is not None:
                return entry

    def leaf(self) -> Node:
        return self.path[-1][0]

    def offset(self) -> int:
        return self.path[-1][1]


def mas_for_each(tree: MapleTree, counters: FindCounters | None = None):
    """mas_for_each(): yield every entry in address order, counting mas_find()'s work."""
    c = counters if counters is not None else FindCounters()
    if tree.root is None:
        c.mas_find_calls += 1
        return
    cur = _Cursor(c)
    cur.seek(tree, 0)
    while (entry := cur.find()) is not None:
        yield entry


def dup_mmap_replace(
    child: MapleTree,
    ranges: list[tuple[int, int]],
    dontcopy: Collection[int] = frozenset(),
) -> ReplaceCounters:
    """dup_mmap()'s loop over the duplicated tree (v6.8+): replace or clear every VMA.

    ranges[i] is (first, last) of VMA i (its entry in the tree is i);
    `dontcopy` holds the VMAs with VM_DONTCOPY.
    """
    rc = ReplaceCounters()
    if child.root is None:
        rc.find.mas_find_calls += 1
        return rc
    leaves: set[int] = set()
    cur = _Cursor(rc.find)
    cur.seek(child, 0)
    while (entry := cur.find()) is not None:
        if entry in dontcopy:
            first, last = ranges[entry]
            mas_store(child, first, last, None, rc.null_store)
            rc.stores_null += 1
            rc.ma_write_events += 1
            if last == (1 << 64) - 1 or child.root is None:
                break
            cur.seek(child, last + 1)
            rc.rewalks += 1
            continue
        leaf = cur.leaf()
        leaf.slots[cur.offset()] = entry  # the new VMA: same range, same index in the layout
        rc.stores_exact_fit += 1
        rc.ma_write_events += 1
        leaves.add(id(leaf))
    rc.leaves_written = len(leaves)
    if rc.stores_null:
        child.update_gaps()
    return rc
