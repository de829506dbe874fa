"""Maple tree constants, named as in include/linux/maple_tree.h and lib/maple_tree.c.

Only the node types a process's tree uses are modelled: `mm->mm_mt` is created
with MT_FLAGS_ALLOC_RANGE, so its leaves are maple_leaf_64 and its internal
nodes maple_arange_64 (v6.1 to v6.18 alike).
"""

from __future__ import annotations

__all__ = [
    "ULONG_MAX",
    "MAPLE_NODE_SIZE",
    "MAPLE_RANGE64_SLOTS",
    "MAPLE_ARANGE64_SLOTS",
    "maple_leaf_64",
    "maple_arange_64",
    "mt_slots",
    "mt_min_slots",
    "mt_slot_count",
    "mt_min_slot_count",
]

ULONG_MAX = (1 << 64) - 1

# sizeof(struct maple_node): the slab "maple_node" has size = align = 256.
MAPLE_NODE_SIZE = 256

MAPLE_RANGE64_SLOTS = 16
MAPLE_ARANGE64_SLOTS = 10

maple_leaf_64 = "maple_leaf_64"
maple_arange_64 = "maple_arange_64"

# mt_slots[] and mt_min_slots[] for the two types of an allocation-range tree.
mt_slots = {maple_leaf_64: MAPLE_RANGE64_SLOTS, maple_arange_64: MAPLE_ARANGE64_SLOTS}
mt_min_slots = {
    maple_leaf_64: MAPLE_RANGE64_SLOTS // 2 - 2,  # 6
    maple_arange_64: MAPLE_ARANGE64_SLOTS // 2 - 1,  # 4
}


def mt_slot_count(leaf: bool) -> int:
    """mt_slot_count(): slots of a leaf (16) or of an arange64 internal node (10)."""
    return MAPLE_RANGE64_SLOTS if leaf else MAPLE_ARANGE64_SLOTS


def mt_min_slot_count(leaf: bool) -> int:
    """mt_min_slot_count(): the fill under which a node is 'insufficient'."""
    return mt_min_slots[maple_leaf_64] if leaf else mt_min_slots[maple_arange_64]
