"""mas_store() for the replay model: the kernel's write paths and their shape decisions.

Modelled on lib/maple_tree.c as of v6.18 (store-type selection in
mas_wr_store_type()), with the bulk-insert behaviour of v6.1 to v6.7 that
dup_mmap() used before __mt_dup():

* exact fit, append, slot/node store: contents change, the shape does not;
* split (mas_split): push into the left sibling, then the right
  (mas_push_data), else split with mab_calc_split() -- in bulk mode
  `split = b_end - mt_min_slots` (the right node keeps the minimum, minus one
  if the split lands on NULL), otherwise `b_end / 2`, a 3-way split when the
  data cannot fit in two nodes, and mab_no_null_split() so no node ends on NULL;
  the split then climbs while parents overflow, and the root splits upwards;
* rebalance (mas_rebalance): a node left with `new_end < mt_min_slots` is
  combined with its next sibling (else its previous one) and re-split if the
  result does not fit; a parent that loses a child is checked the same way;
* spanning store (mas_wr_spanning_store): a store that crosses a leaf boundary,
  or a NULL store that would end a node on NULL, rebuilds the leaves it covers.

Simplifications, kept deliberately and visible in the counters:

* Rebalancing looks at siblings under the same parent only; the kernel's
  mast_spanning_rebalance() may also take a cousin at the same level when a
  parent has no sibling. A node the model cannot rebalance stays under-full,
  which is still a valid tree (the kernel does not promise minimum fill
  either: bulk mode leaves it to mas_destroy()).
* A spanning store is done as "remove the covered leaves, rewrite the left
  one, then split or rebalance it and rebalance the parents that lost
  children", not by the kernel's level-by-level rebuild; the resulting shape
  can differ from the kernel's in nodes near the store.
* Nodes are updated in place instead of copied (no RCU); `node_allocs` counts
  what the kernel path would allocate: 2 nodes per level mas_split() splits,
  1 for the node that ends the split (mas_split_final_node()), 1 per node
  written by a rebalance.
* Gaps (arange64 gap[]) are recomputed by MapleTree.update_gaps(), not per store.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, fields

from analysis.model.constants import ULONG_MAX, mt_min_slot_count, mt_slot_count
from analysis.model.tree import MapleTree, Node

__all__ = ["WriteCounters", "BulkState", "bulk_store_event", "mas_store", "mas_destroy"]


@dataclass
class WriteCounters:
    """What the write paths did, by the kernel's names for them."""

    stores: int = 0  # mas_store() calls
    stores_exact_fit: int = 0  # wr_exact_fit: one pointer store
    stores_append: int = 0  # wr_append: entry added at the end of a leaf
    stores_node: int = 0  # wr_node_store / wr_slot_store: leaf rewritten, same shape
    stores_split: int = 0  # wr_split_store: leaf overflowed
    stores_rebalance: int = 0  # wr_rebalance: leaf became insufficient
    stores_spanning: int = 0  # wr_spanning_store: crossed a leaf boundary
    splits: int = 0  # levels split by mas_split() (root included)
    push_left: int = 0  # mas_push_data() into the left sibling
    push_right: int = 0  # mas_push_data() into the right sibling
    rebalances: int = 0  # node combined with a sibling (mas_rebalance levels)
    height_grows: int = 0  # new root above a split root
    height_shrinks: int = 0  # single-child root removed
    node_allocs: int = 0  # nodes the kernel path would allocate
    destroy_rebalances: int = 0  # mas_destroy_rebalance() of the last leaf (bulk)
    # ma_write events besides mas_store()'s, by the v6.1 path a bulk store takes (bulk_store_event()).
    node_store_events: int = 0  # mas_wr_node_store(): a gapped append that fits
    bnode_events: int = 0  # mas_wr_bnode(): the slow path (node rebuilt in place, or split)

    def add(self, other: "WriteCounters") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class BulkState:
    """The ma_state flags of a bulk insert (mas_expected_entries() .. mas_destroy())."""

    expected: int = 0
    prealloc_nodes: int = 0  # what mas_expected_entries() asks the allocator for
    rebalance: bool = False  # MA_STATE_REBALANCE
    last_index: int = 0  # mas->index of the last store, where mas_destroy() looks


def mas_store(
    tree: MapleTree,
    index: int,
    last: int,
    entry: object,
    counters: WriteCounters | None = None,
    bulk: BulkState | None = None,
) -> None:
    """mas_store(): store entry (an int, or None for NULL) over [index, last].

    bulk: a BulkState while inside mas_expected_entries() .. mas_destroy().
    """
    if not 0 <= index <= last <= ULONG_MAX:
        raise ValueError(f"bad range [{index:#x}, {last:#x}]")
    c = counters if counters is not None else WriteCounters()
    c.stores += 1
    if bulk is not None:
        bulk.last_index = index
    if index == 0 and last == ULONG_MAX:
        _mas_new_root(tree, entry, c)
        return
    if tree.root is None:
        _mas_root_expand(tree, index, last, entry, c)
        return

    lpath = tree.walk(index)
    leaf, loff, lmin, lmax = lpath[-1]
    if bulk is not None:  # (a new root, or mas_root_expand() above, traces no write path)
        event = bulk_store_event(leaf, loff, lmin, lmax, index, last)
        if event == "mas_wr_node_store":
            c.node_store_events += 1
        elif event == "mas_wr_bnode":
            c.bnode_events += 1
    spanning = last > lmax or (entry is None and last == lmax and lmax != ULONG_MAX)
    rleaf = tree.walk(last + 1 if last < ULONG_MAX else last)[-1][0] if spanning else leaf

    # The leaf's new contents, as mas_store_b_node() assembles them.
    pivots, slots = leaf.pivots, leaf.slots
    start = pivots[loff - 1] + 1 if loff else lmin
    new_p = pivots[:loff]
    new_s = slots[:loff]
    if start < index:
        new_p.append(index - 1)
        new_s.append(slots[loff])
    new_p.append(last)
    new_s.append(entry)
    j = bisect_right(rleaf.pivots, last)
    new_p.extend(rleaf.pivots[j:])
    new_s.extend(rleaf.slots[j:])
    merged = _merge_nulls(new_p, new_s) if entry is None else False

    if not spanning and start == index and pivots[loff] == last and not merged:
        c.stores_exact_fit += 1
        slots[loff] = entry
        return

    if spanning:
        c.stores_spanning += 1
        if len(new_s) == 1 and new_s[0] is None and lmin == 0 and new_p[0] == ULONG_MAX:
            _mas_new_root(tree, None, c)
            return
        _mas_wr_spanning_store(tree, lpath, rleaf, new_p, new_s, c)
        return

    count = len(new_s)
    depth = len(lpath) - 1
    if count > mt_slot_count(True):
        c.stores_split += 1
        if bulk is not None and lmax == ULONG_MAX:
            bulk.rebalance = False  # mas_bulk_rebalance(): the last node was sufficient
        _mas_split(tree, lpath, depth, new_p, new_s, c, bulk)
    elif count - 1 < mt_min_slot_count(True) and depth > 0 and bulk is None:
        c.stores_rebalance += 1
        leaf.pivots, leaf.slots = new_p, new_s
        _mas_rebalance(tree, lpath, depth, c)
    else:
        if loff == len(slots) - 1:
            c.stores_append += 1
        else:
            c.stores_node += 1
        leaf.pivots, leaf.slots = new_p, new_s


def bulk_store_event(leaf: Node, loff: int, lmin: int, lmax: int, index: int, last: int) -> str | None:
    """The function besides mas_store() that emits ma_write for this bulk append on v6.1, or None.

    leaf, loff, lmin, lmax: where the store's walk landed (mas_store() counts it from its own walk).

    For ascending appends, as dup_mmap()'s loop makes before v6.8 (other
    stores may take mas_wr_slot_store(), which this does not tell apart).
    dup_mmap() writes with RCU off, so v6.1's mas_wr_modify() picks: the slow path mas_wr_bnode()
    (it traces first) when `node_end - offset_end + offset + 2`, plus one in
    the node that ends at ULONG_MAX, reaches the slot count; else a silent
    in-place append (mas_wr_append()) for a range that starts where the slot's
    does and ends before it; else mas_wr_node_store() (it traces), the
    slot-store fast path returning before its tracepoint for such a store.
    An exact fit is a silent pointer swap. Checked against Debian's 6.1.176
    lib/maple_tree.c run in the kernel's userspace harness: every store of 300
    random gapped/adjacent append sequences took the path this names.
    """
    pivots = leaf.pivots
    r_min = pivots[loff - 1] + 1 if loff else lmin
    r_max = pivots[loff] if loff < len(pivots) else lmax
    if r_min == index and r_max == last:
        return None  # direct replacement
    node_end = len(leaf.slots) - 1
    offset_end = min(bisect_left(pivots, last), node_end)
    node_size = node_end - offset_end + loff + 2 + (lmax == ULONG_MAX)
    if node_size >= mt_slot_count(True):
        return "mas_wr_bnode"
    if r_min == index and last < r_max and loff == node_end:
        return None  # mas_wr_append(), in place
    return "mas_wr_node_store"


def mas_destroy(tree: MapleTree, bulk: BulkState, counters: WriteCounters | None = None) -> None:
    """mas_destroy() ending a bulk insert: rebalance the last leaf if a bulk split left it short.

    Mirrors mas_destroy_rebalance(): when MA_STATE_REBALANCE is set and the
    leaf holding the last stored index has fewer than mt_min_slots - 1 slots,
    the left sibling keeps its first mt_slots/2 (+1 if that would end it on
    NULL) slots and hands the rest over.
    """
    c = counters if counters is not None else WriteCounters()
    if not bulk.rebalance or tree.root is None:
        bulk.rebalance = False
        return
    bulk.rebalance = False
    path = tree.walk(bulk.last_index)
    node, _, _, _ = path[-1]
    end = len(node.slots)
    if len(path) < 2 or end >= mt_min_slot_count(True) - 1:
        return
    parent, poff, _, _ = path[-2]
    if poff == 0:
        return  # no left sibling under the same parent: nothing the kernel could take from
    left = parent.slots[poff - 1]
    split = mt_slot_count(True) // 2
    if left.slots[split] is None:
        split += 1
    node.pivots = left.pivots[split + 1 :] + node.pivots
    node.slots = left.slots[split + 1 :] + node.slots
    left.pivots = left.pivots[: split + 1]
    left.slots = left.slots[: split + 1]
    parent.pivots[poff - 1] = left.pivots[-1]
    c.destroy_rebalances += 1


# -- helpers ---------------------------------------------------------------------


def _mas_new_root(tree: MapleTree, entry: object, c: WriteCounters) -> None:
    """mas_new_root(): a store over [0, ULONG_MAX] replaces the whole tree."""
    if entry is None:
        tree.root, tree.height = None, 0
        return
    tree.root, tree.height = Node(True, [ULONG_MAX], [entry]), 1
    c.node_allocs += 1


def _mas_root_expand(tree: MapleTree, index: int, last: int, entry: object, c: WriteCounters) -> None:
    """mas_root_expand(): the first store into an empty tree makes a one-leaf tree."""
    if entry is None:
        return
    pivots: list[int] = []
    slots: list = []
    if index:
        pivots.append(index - 1)
        slots.append(None)
    pivots.append(last)
    slots.append(entry)
    if last != ULONG_MAX:
        pivots.append(ULONG_MAX)
        slots.append(None)
    tree.root, tree.height = Node(True, pivots, slots), 1
    c.node_allocs += 1


def _merge_nulls(pivots: list[int], slots: list) -> bool:
    """mas_wr_extend_null(): fold adjacent NULL ranges into one slot. True if any merged."""
    i = 1
    merged = False
    while i < len(slots):
        if slots[i] is None and slots[i - 1] is None:
            del pivots[i - 1]
            del slots[i - 1]
            merged = True
        else:
            i += 1
    return merged


def _mab_no_null_split(slots: list, split: int, cap: int, min_slots: int) -> int:
    """mab_no_null_split(): move a split point off a NULL so no node ends on NULL."""
    if slots[split] is None:
        if split < cap - 1 and (len(slots) - 1 - split) > min_slots:
            return split + 1
        return split - 1
    return split


def _mab_calc_split(pivots: list[int], slots: list, leaf: bool, bulk: BulkState | None) -> list[tuple[list, list]]:
    """mab_calc_split(): cut overfull contents into 2 (rarely 3) nodes' worth."""
    b_end = len(slots) - 1
    cap = mt_slot_count(leaf)
    min_slots = mt_min_slot_count(leaf)
    if bulk is not None:
        split = b_end - min_slots
        if leaf:
            bulk.rebalance = True
            if slots[split] is None:
                split -= 1
        cuts = [split]
    else:
        split = b_end // 2
        mid = 0
        if b_end >= 2 * cap or (slots[split] is None and b_end >= 2 * cap - 1):  # mab_middle_node()
            split = b_end // 3
            mid = split * 2
        split = _mab_no_null_split(slots, split, cap, min_slots)
        cuts = [split]
        if mid:
            cuts.append(_mab_no_null_split(slots, mid, cap, min_slots))
    pieces = []
    lo = 0
    for cut in cuts:
        pieces.append((pivots[lo : cut + 1], slots[lo : cut + 1]))
        lo = cut + 1
    pieces.append((pivots[lo:], slots[lo:]))
    return pieces


def _mas_push_data(parent: Node, poff: int, pivots: list[int], slots: list, leaf: bool, left: bool) -> bool:
    """mas_push_data(): instead of splitting, share the data with a sibling that has room."""
    if left:
        if poff == 0:
            return False
        sib = parent.slots[poff - 1]
    else:
        if poff == len(parent.slots) - 1:
            return False
        sib = parent.slots[poff + 1]
    cap = mt_slot_count(leaf)
    slot_total = (len(slots) - 1) + (len(sib.slots) - 1)
    space = 2 * cap - 2  # -2 instead of -1 to ensure there is no triple split
    if leaf:
        space -= 1
    if pivots[-1] == ULONG_MAX:
        space -= 1
    if slot_total >= space:
        return False
    if left:
        cp, cs = sib.pivots + pivots, sib.slots + slots
        split = cap - 2
        i = poff - 1
    else:
        cp, cs = pivots + sib.pivots, slots + sib.slots
        split = slot_total - (cap - 2)
        i = poff
    split = _mab_no_null_split(cs, split, cap, mt_min_slot_count(leaf))
    parent.slots[i] = Node(leaf, cp[: split + 1], cs[: split + 1])
    parent.slots[i + 1] = Node(leaf, cp[split + 1 :], cs[split + 1 :])
    parent.pivots[i] = cp[split]
    parent.pivots[i + 1] = cp[-1]
    return True


def _set_contents(node: Node, pivots: list[int], slots: list) -> None:
    node.pivots = pivots
    node.slots = slots
    if not node.leaf:
        node.gaps = [0] * len(slots)


def _mas_split(
    tree: MapleTree,
    path: list,
    depth: int,
    pivots: list[int],
    slots: list,
    c: WriteCounters,
    bulk: BulkState | None,
) -> None:
    """mas_split(): give the node at path[depth] overfull contents, splitting upwards."""
    while True:
        node, _, _, _ = path[depth]
        leaf = node.leaf
        if len(slots) <= mt_slot_count(leaf):
            _set_contents(node, pivots, slots)  # mas_split_final_node()
            c.node_allocs += 1
            return
        c.node_allocs += 2
        if depth == 0:
            pieces = _mab_calc_split(pivots, slots, leaf, bulk)
            children = [Node(leaf, p, s) for p, s in pieces]
            tree.root = Node(False, [p[-1] for p, _ in pieces], children)
            tree.height += 1
            c.splits += 1
            c.height_grows += 1
            c.node_allocs += 1
            return
        parent, poff, _, _ = path[depth - 1]
        if _mas_push_data(parent, poff, pivots, slots, leaf, left=True):
            c.push_left += 1
            c.node_allocs += 1
            return
        if _mas_push_data(parent, poff, pivots, slots, leaf, left=False):
            c.push_right += 1
            c.node_allocs += 1
            return
        pieces = _mab_calc_split(pivots, slots, leaf, bulk)
        c.splits += 1
        children = [Node(leaf, p, s) for p, s in pieces]
        pivots = parent.pivots[:poff] + [p[-1] for p, _ in pieces] + parent.pivots[poff + 1 :]
        slots = parent.slots[:poff] + children + parent.slots[poff + 1 :]
        depth -= 1


def _mas_rebalance(tree: MapleTree, path: list, depth: int, c: WriteCounters) -> None:
    """mas_rebalance(): combine an insufficient node with a sibling, climbing while parents shrink."""
    while depth > 0:
        node, _, _, _ = path[depth]
        leaf = node.leaf
        if len(node.slots) > mt_min_slot_count(leaf):
            break
        parent, poff, _, _ = path[depth - 1]
        if poff + 1 < len(parent.slots):
            i = poff  # mas_next_sibling() first
        elif poff > 0:
            i = poff - 1  # else mas_prev_sibling()
        else:
            depth -= 1  # an only child: the parent is insufficient too, rebalance it
            continue
        a, b = parent.slots[i], parent.slots[i + 1]
        cp, cs = a.pivots + b.pivots, a.slots + b.slots
        c.rebalances += 1
        if len(cs) <= mt_slot_count(leaf):
            parent.slots[i : i + 2] = [Node(leaf, cp, cs)]
            parent.pivots[i : i + 2] = [cp[-1]]
            parent.gaps = [0] * len(parent.slots)
            c.node_allocs += 1
            depth -= 1
            continue
        pieces = _mab_calc_split(cp, cs, leaf, None)
        parent.slots[i : i + 2] = [Node(leaf, p, s) for p, s in pieces]
        parent.pivots[i : i + 2] = [p[-1] for p, _ in pieces]
        parent.gaps = [0] * len(parent.slots)
        c.node_allocs += len(pieces)
        break
    _collapse_root(tree, c)


def _collapse_root(tree: MapleTree, c: WriteCounters) -> None:
    """A root left with one child hands the root over to it (height - 1)."""
    while tree.root is not None and not tree.root.leaf and len(tree.root.slots) == 1:
        tree.root = tree.root.slots[0]
        tree.height -= 1
        c.height_shrinks += 1


def _mas_wr_spanning_store(
    tree: MapleTree, lpath: list, rleaf: Node, pivots: list[int], slots: list, c: WriteCounters
) -> None:
    """mas_wr_spanning_store(), simplified: drop the leaves after the left one up to rleaf,
    give the left leaf the combined contents, then split or rebalance where needed."""
    height = tree.height
    path = [[n, off] for n, off, _, _ in lpath]
    touched: list[tuple[Node, int]] = []
    while True:
        d = height - 2
        while d >= 0 and path[d][1] == len(path[d][0].slots) - 1:
            d -= 1
        if d < 0:
            break
        npath = [list(step) for step in path[: d + 1]]
        npath[d][1] += 1
        node = npath[d][0].slots[npath[d][1]]
        while not node.leaf:
            npath.append([node, 0])
            node = node.slots[0]
        victim = node
        dd = len(npath) - 1
        while dd >= 0:
            parent, poff = npath[dd]
            del parent.slots[poff]
            del parent.pivots[poff]
            touched.append((parent, dd))
            if parent.slots:
                break
            dd -= 1
        if victim is rleaf:
            break

    leaf = path[-1][0]
    depth = height - 1
    # The left leaf now ends where rleaf ended: fix the pivots above it.
    for d in range(height - 2, -1, -1):
        parent, off = path[d]
        child = parent.slots[off]
        parent.pivots[off] = (pivots[-1] if d == height - 2 else child.pivots[-1])
    for parent, _ in touched:
        parent.gaps = [0] * len(parent.slots)
    spath = [(n, off, 0, 0) for n, off in path]
    c.node_allocs += 1
    if len(slots) > mt_slot_count(True):
        _mas_split(tree, spath, depth, pivots, slots, c, None)
    else:
        leaf.pivots, leaf.slots = pivots, slots
        if depth > 0 and len(slots) - 1 < mt_min_slot_count(True):
            _mas_rebalance(tree, spath, depth, c)

    # Parents on the right that lost children may now be insufficient.
    for node, d in sorted(touched, key=lambda t: -t[1]):
        if tree.root is None or tree.root.leaf or d == 0:
            continue
        if len(node.slots) > mt_min_slot_count(False) or not node.slots:
            continue
        depth_now = d - (height - tree.height)
        if depth_now <= 0:
            continue
        found = tree.walk(node.pivots[-1])
        if depth_now >= len(found) or found[depth_now][0] is not node:
            continue  # merged away or moved by an earlier fix
        _mas_rebalance(tree, found, depth_now, c)
    _collapse_root(tree, c)
