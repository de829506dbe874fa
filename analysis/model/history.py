"""Histories that replay how a real process's tree got its shape.

__mt_dup() copies the parent's tree as it is, so the child's leaves are the
parent's leaves, and the parent's leaves are whatever its own history of
mmap()/munmap()/mprotect() stores left behind -- not a function of the final
layout alone. This module writes those histories down as the range stores
the kernel performs, for build_from_history() to replay in normal mode.

The store sequences follow mm/vma.c as of v6.18:

* mmap() of a new range that merges with nothing: __mmap_region() ->
  __mmap_new_vma() -> vma_iter_store_new(): one store of the VMA.
* munmap() of [start, end) inside one VMA [vm_start, vm_end)
  (do_vmi_munmap() -> do_vmi_align_munmap()):

  1. vms_gather_munmap_vmas(): if start > vm_start, __split_vma(vma, start,
     new_below=1): the new VMA is the part below start, and vma_complete()
     stores it over [vm_start, start - 1]; the old VMA keeps [start, vm_end).
  2. still in the gather loop: if vm_end > end, __split_vma(vma, end,
     new_below=0): the new VMA is the part from end, stored over
     [end, vm_end - 1].
  3. do_vmi_align_munmap(): vma_iter_clear_gfp() stores NULL over
     [start, end - 1].

  (The VMAs removed are kept in a separate on-stack tree, mt_detach, which
  never touches mm->mm_mt's shape.)

Which history is the spawn workload's (tracer/workload/spawn.c,
make_extra_vmas()): for nr extra VMAs it takes span = 2*nr + 1 pages,

1. mmap(NULL, span pages, PROT_NONE): a top-down search places it; one store;
2. munmap() of all of it: one NULL store (no split);
3. mmap(base + 1 page, span - 2 pages, MAP_FIXED_NOREPLACE): one store of one
   VMA over the middle 2*nr - 1 pages;
4. munmap() of pages 2, 4, ..., 2*nr - 2, in ascending order: each one cuts
   the last, still unsplit, part of that VMA in three (the stores above).

spawn.c's --order descending cuts the holes of step 4 top-down instead, and
--order scatter in bit-reversed order (hole_order()): each cut then splits
whichever piece of the region holds its page, so the same final VMAs are
reached through other node splits (another node count, fill and height).
--weight file maps the region from a memfd instead of anonymous memory: the
same stores, the extra VMAs file-backed.

With --layout adjacent (make_adjacent_vmas()) the span is nr + 2 pages:
steps 1-2 as above, 3: mmap of the middle nr pages as one VMA, 4: mprotect()
of pages 1, 3, 5, ... ascending (mprotect_fixup() -> vma_modify(): no merge
is possible, so __split_vma() below the page and, unless it is the last page,
at its end: the two stores of munmap's splits, with no NULL store).

Before it, the process's own exec and ld.so history built the other VMAs
(stack, the binary, ld.so, vdso/vvar, libc and their anonymous neighbours).
That part is not replayed store for store: the base VMAs are mapped one store
each, in `base_order` (descending by default: what top-down mmap does). On
the layouts this host produces the base is about 25 VMAs (2 leaves' worth),
and ascending, descending or shuffled base orders give the same leaf count
(tests/test_model_vs_kernel.py checks this).

Entries, as in analysis.model.build, are the index of the VMA in the final
layout; TEMPORARY marks a VMA that does not survive into the final layout
(the PROT_NONE probe, the still-unsplit remainder of the region).
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from dataclasses import dataclass

from analysis.recording.layout import Vma
from analysis.model.build import Store, check_layout

__all__ = [
    "PAGE_SIZE",
    "TEMPORARY",
    "SpawnRegion",
    "find_spawn_region",
    "SPAWN_LAYOUTS",
    "mmap_store",
    "mprotect_stores",
    "munmap_stores",
    "base_history",
    "history_mmap_order",
    "history_with_churn",
    "hole_order",
    "spawn_history",
    "SPAWN_ORDERS",
]

PAGE_SIZE = 4096

# Entry of a VMA that exists only during the history (history_with_churn() uses -1 too).
TEMPORARY = -1

# spawn.c's --layout values: holes between the extra VMAs, or none.
SPAWN_LAYOUTS = ("gapped", "adjacent")

# spawn.c's --order values: the order the gapped layout's holes are cut in.
SPAWN_ORDERS = ("ascending", "descending", "scatter")


@dataclass(frozen=True)
class SpawnRegion:
    """Where spawn.c put its extra VMAs, recovered from the final layout.

    first: index in the layout of the lowest extra VMA; count: how many.
    base: the address mmap(NULL, ...) returned for the PROT_NONE probe, one
    page below the first extra VMA; pages: the probe's length (2*count + 1,
    or count + 2 for the adjacent layout).
    """

    first: int
    count: int
    base: int
    pages: int
    layout: str = "gapped"

    @property
    def indexes(self) -> range:
        return range(self.first, self.first + self.count)

    @property
    def end(self) -> int:
        """One past the probe mapping: base + pages pages."""
        return self.base + self.pages * PAGE_SIZE


def _is_extra(v: Vma, page: int, backing: str = "anon") -> bool:
    """A VMA spawn.c could have made: one private read-write page, anonymous (or of its memfd, --weight file)."""
    if v.end - v.start != page or v.perms != "rw-p":
        return False
    if backing == "file":
        return v.inode != 0 and v.path.startswith("/memfd:forktrace-spawn")
    return v.inode == 0 and not v.path


def _adjacent_runs(layout: Sequence[Vma], page: int) -> list[tuple[int, int]]:
    """Maximal runs of one-page anonymous VMAs side by side, rw-p first, then r--p, rw-p, ..."""
    want = ("rw-p", "r--p")
    runs: list[tuple[int, int]] = []
    i = 0
    while i < len(layout):
        v = layout[i]
        if not (v.end - v.start == page and v.perms == want[0] and v.inode == 0 and not v.path):
            i += 1
            continue
        j = i
        while j + 1 < len(layout):
            w = layout[j + 1]
            if not (w.end - w.start == page and w.perms == want[(j + 1 - i) % 2] and w.inode == 0 and not w.path):
                break
            if w.start != layout[j].end:
                break
            j += 1
        runs.append((i, j - i + 1))
        i = j + 1
    return runs


def find_spawn_region(
    layout: Sequence[Vma], extra_vmas: int, page: int = PAGE_SIZE, spawn_layout: str = "gapped",
    backing: str = "anon",
) -> SpawnRegion | None:
    """The run of `extra_vmas` one-page anonymous VMAs spawn.c made.

    gapped: rw-p VMAs, each one page after the last; adjacent: side by side,
    rw-p and r--p alternating. Returns None for extra_vmas == 0. Raises
    ValueError (one line) when the layout holds no such run, or more than
    one: then this layout is not the one spawn.c made and its history cannot
    be replayed.
    """
    if extra_vmas < 0:
        raise ValueError(f"extra_vmas must be >= 0, not {extra_vmas}")
    if spawn_layout not in SPAWN_LAYOUTS:
        raise ValueError(f"spawn layout must be one of {', '.join(SPAWN_LAYOUTS)}, not {spawn_layout!r}")
    if extra_vmas == 0:
        return None
    if spawn_layout == "adjacent":
        # A run may be longer than asked only if a lookalike neighbour sits right beside it.
        first, count, base = _the_one_run(
            layout, _adjacent_runs(layout, page), extra_vmas, page,
            vmas="adjacent one-page anonymous VMAs alternating rw-p/r--p",
            several="adjacent one-page VMAs",
            layout_name="the adjacent layout",
        )
        return SpawnRegion(first=first, count=count, base=base, pages=count + 2, layout="adjacent")
    # A run longer than asked for cannot be cut apart (each extra VMA has a hole on
    # both sides, so a neighbour that looks alike would be one page away only by chance).
    first, count, base = _the_one_run(
        layout, _gapped_runs(layout, page, backing), extra_vmas, page,
        vmas="one-page rw-p anonymous VMAs a page apart",
        several="one-page anonymous VMAs",
        layout_name="the layout",
    )
    return SpawnRegion(first=first, count=count, base=base, pages=2 * count + 1)


def _gapped_runs(layout: Sequence[Vma], page: int, backing: str = "anon") -> list[tuple[int, int]]:
    """Maximal runs of one-page rw-p anonymous (or memfd) VMAs, each one page after the last."""
    runs: list[tuple[int, int]] = []
    i = 0
    while i < len(layout):
        if not _is_extra(layout[i], page, backing):
            i += 1
            continue
        j = i
        while (j + 1 < len(layout) and _is_extra(layout[j + 1], page, backing)
               and layout[j + 1].start == layout[j].end + page):
            j += 1
        runs.append((i, j - i + 1))
        i = j + 1
    return runs


def _the_one_run(
    layout: Sequence[Vma], runs: list[tuple[int, int]], extra_vmas: int, page: int,
    *, vmas: str, several: str, layout_name: str,
) -> tuple[int, int, int]:
    """The only run of exactly `extra_vmas` VMAs, with a free page below and above: (first, count, base).

    Both layouts are told apart from a lookalike the same way; vmas, several
    and layout_name are how the one-line errors name what was looked for.
    """
    fits = [r for r in runs if r[1] == extra_vmas]
    if not fits:
        longest = max((n for _, n in runs), default=0)
        raise ValueError(
            f"no run of {extra_vmas} {vmas} in the layout "
            f"(longest run: {longest}): not {layout_name} spawn.c makes"
        )
    if len(fits) > 1:
        raise ValueError(f"{len(fits)} runs of {extra_vmas} {several}: cannot tell which is spawn.c's")
    first, count = fits[0]
    lo, hi = layout[first].start - page, layout[first + count - 1].end + page
    if first > 0 and layout[first - 1].end > lo or first + count < len(layout) and layout[first + count].start < hi:
        raise ValueError("the extra VMAs have no free page below the first or above the last: not spawn.c's layout")
    return first, count, lo


def mprotect_stores(
    vm_start: int, vm_end: int, start: int, end: int, low: int | None = None, high: int | None = None
) -> list[Store]:
    """The mm->mm_mt stores of mprotect([start, end)) inside [vm_start, vm_end) when nothing merges.

    vma_modify() splits below start and at end (the same two stores as
    munmap's splits); the protected part stays the old VMA, in place: no store.
    """
    return [st for st in munmap_stores(vm_start, vm_end, start, end, low, high) if st[2] is not None]


def mmap_store(start: int, end: int, entry: int) -> Store:
    """mmap() of [start, end) that merges with no neighbour: vma_iter_store_new() of the VMA."""
    return (start, end - 1, entry)


def munmap_stores(
    vm_start: int, vm_end: int, start: int, end: int, low: int | None = None, high: int | None = None
) -> list[Store]:
    """The mm->mm_mt stores of munmap([start, end)) inside the VMA [vm_start, vm_end), in order.

    low / high: the entries of the parts left below start / from end (their
    new VMAs). See the module docstring for where each store comes from.
    """
    if not vm_start <= start < end <= vm_end:
        raise ValueError(f"munmap [{start:#x}, {end:#x}) is not inside the VMA [{vm_start:#x}, {vm_end:#x})")
    stores: list[Store] = []
    if start > vm_start:
        if low is None:
            raise ValueError("a split below start needs the entry of the lower part")
        stores.append((vm_start, start - 1, low))  # __split_vma(new_below=1): vma_complete() stores new
    if end < vm_end:
        if high is None:
            raise ValueError("a split at end needs the entry of the upper part")
        stores.append((end, vm_end - 1, high))  # __split_vma(new_below=0): vma_complete() stores new
    stores.append((start, end - 1, None))  # vma_iter_clear_gfp()
    return stores


def history_mmap_order(
    layout: Sequence[Vma], order: str = "descending", seed: int = 0, skip: range = range(0)
) -> list[Store]:
    """One mmap-like store per VMA (those outside `skip`), in the given address order.

    'descending' is what a process that maps anonymous regions top-down (x86-64
    mmap without a hint) does; 'ascending' is check_forking()'s order;
    'random' shuffles with `seed`. The entry stored is the VMA's index.
    """
    stores = [(v.start, v.end - 1, i) for i, v in enumerate(layout) if i not in skip]
    if order == "descending":
        stores.reverse()
    elif order == "random":
        random.Random(seed).shuffle(stores)
    elif order != "ascending":
        raise ValueError(f"order must be ascending, descending or random, not {order!r}")
    return stores


def history_with_churn(
    layout: Sequence[Vma], seed: int = 0, temporaries: int = 0, split_adjacent: bool = True
) -> list[Store]:
    """A history that ends with exactly `layout`, with the churn a real process has.

    Adjacent VMAs are first mapped as one range and then split by storing each
    part over it (what mprotect() on part of a mapping does); `temporaries`
    short-lived one-page mappings are placed in unmapped intervals and
    unmapped again later (munmap: a NULL store). Order is shuffled by `seed`.
    """
    check_layout(layout)
    rng = random.Random(seed)
    runs: list[list[int]] = []
    for i, v in enumerate(layout):
        if split_adjacent and runs and layout[runs[-1][-1]].end == v.start:
            runs[-1].append(i)
        else:
            runs.append([i])
    rng.shuffle(runs)
    stores: list[Store] = []
    for run in runs:
        first, last = layout[run[0]], layout[run[-1]]
        if len(run) > 1:
            stores.append((first.start, last.end - 1, run[0]))
            for i in rng.sample(run, len(run)):
                stores.append((layout[i].start, layout[i].end - 1, i))
        else:
            stores.append((first.start, first.end - 1, run[0]))
    holes = [(a.end, b.start - 1) for a, b in zip(layout, layout[1:]) if b.start > a.end]
    temps: list[tuple[int, int]] = []
    for _ in range(temporaries if holes else 0):
        lo, hi = rng.choice(holes)
        temps.append((lo, min(hi, lo + 4095)))
    mapped: set[tuple[int, int]] = set()
    for lo, hi in temps:
        if (lo, hi) in mapped:
            continue
        mapped.add((lo, hi))
        at = rng.randrange(len(stores) + 1)
        stores.insert(at, (lo, hi, -1))  # -1: a temporary VMA, never in the final layout
        stores.insert(rng.randrange(at + 1, len(stores) + 1), (lo, hi, None))
    return stores


def base_history(
    layout: Sequence[Vma], skip: range = range(0), order: str = "descending", seed: int = 0
) -> list[Store]:
    """The stand-in for exec's and ld.so's history: one mmap per VMA outside `skip`."""
    return history_mmap_order(layout, order, seed, skip)


def spawn_history(
    layout: Sequence[Vma],
    extra_vmas: int,
    base_order: str = "descending",
    seed: int = 0,
    munmap_order: str = "ascending",
    spawn_layout: str = "gapped",
    backing: str = "anon",
) -> list[Store]:
    """The stores that gave spawn.c's process its tree: the base VMAs, then make_extra_vmas().

    layout: the process's final layout (its /proc/PID/maps without [vsyscall]);
    extra_vmas: spawn.c's --vmas. Replaying the result with
    build_from_history() ends with exactly `layout` in the tree.
    munmap_order: spawn.c's --order ("ascending" by default; "descending"
    cuts the holes top-down, "scatter" in hole_order()'s bit-reversed order).
    backing: "file" for --weight file (the extra VMAs map spawn.c's memfd).
    Raises ValueError if the layout is not one spawn.c can have made.
    """
    check_layout(layout)
    if munmap_order not in SPAWN_ORDERS:
        raise ValueError(f"munmap_order must be one of {', '.join(SPAWN_ORDERS)}, not {munmap_order!r}")
    region = find_spawn_region(layout, extra_vmas, spawn_layout=spawn_layout, backing=backing)
    skip = region.indexes if region else range(0)
    stores = base_history(layout, skip, base_order, seed)
    if region is None:
        return stores
    page = PAGE_SIZE
    # 1-2: find a free range top-down with a PROT_NONE mapping, then give it back.
    stores.append(mmap_store(region.base, region.end, TEMPORARY))
    stores += munmap_stores(region.base, region.end, region.base, region.end)
    if region.layout == "adjacent":
        return stores + _adjacent_cuts(region)
    # 3: map its middle (everything but the end holes) as one VMA.
    vm_start, vm_end = region.base + page, region.end - page
    stores.append(mmap_store(vm_start, vm_end, region.first if region.count == 1 else TEMPORARY))
    # 4: munmap every other page. The VMA being cut is always the unsplit
    # remainder [vm_start, vm_end); each cut leaves one extra VMA on the side
    # it moves away from, and the remainder is one VMA until the last cut.
    holes = list(range(2, region.pages - 2, 2))
    if munmap_order == "scatter":
        return stores + cut_holes(region, hole_order(len(holes), munmap_order))
    if munmap_order == "ascending":
        for n, hole in enumerate(holes):
            start = region.base + hole * page
            k = region.first + n
            high = k + 1 if n == len(holes) - 1 else TEMPORARY
            stores += munmap_stores(vm_start, vm_end, start, start + page, low=k, high=high)
            vm_start = start + page
    else:
        for n, hole in enumerate(reversed(holes)):
            start = region.base + hole * page
            k = region.first + region.count - 1 - n
            low = k - 1 if n == len(holes) - 1 else TEMPORARY
            stores += munmap_stores(vm_start, vm_end, start, start + page, low=low, high=k)
            vm_end = start
    return stores


def hole_order(k: int, order: str) -> list[int]:
    """The holes of the gapped region (0 = the lowest) in the order spawn.c cuts them (its hole_at()).

    >>> hole_order(5, "scatter")
    [0, 4, 2, 1, 3]
    """
    if order == "ascending":
        return list(range(k))
    if order == "descending":
        return list(range(k - 1, -1, -1))
    if order != "scatter":
        raise ValueError(f"order must be one of {', '.join(SPAWN_ORDERS)}, not {order!r}")
    bits = max(0, (k - 1).bit_length()) if k > 1 else 0
    out = []
    for v in range(1 << bits):
        r = int(format(v, f"0{bits}b")[::-1], 2) if bits else 0
        if r < k:
            out.append(r)
    return out


def cut_holes(region: SpawnRegion, order: Sequence[int]) -> list[Store]:
    """make_extra_vmas() step 4 in any order: munmap each hole from whichever piece holds it.

    The region starts as one VMA over its middle (step 3, already stored);
    each munmap splits the piece around its page (munmap_stores()). A piece
    that is one extra VMA of the final layout is stored with that VMA's entry,
    any larger piece as TEMPORARY. For the ascending and descending orders
    this gives exactly spawn_history()'s stores.
    """
    page = PAGE_SIZE
    pieces = [(region.base + page, region.end - page)]

    def entry(lo: int, hi: int) -> int:
        if hi - lo == page:
            return region.first + (lo - region.base - page) // (2 * page)
        return TEMPORARY

    stores: list[Store] = []
    for h in order:
        start = region.base + (2 + 2 * h) * page
        j = bisect.bisect_right([p[0] for p in pieces], start) - 1
        lo, hi = pieces[j]
        stores += munmap_stores(lo, hi, start, start + page, low=entry(lo, start), high=entry(start + page, hi))
        pieces[j:j + 1] = [p for p in ((lo, start), (start + page, hi)) if p[1] > p[0]]
    return stores


def _adjacent_cuts(region: SpawnRegion) -> list[Store]:
    """make_adjacent_vmas() after the probe: map the middle, mprotect every other page ascending.

    mprotect() keeps the VMA it was given for the protected page and stores
    new VMAs for the parts split off, so the remainder VMA of one cut is the
    protected page of the next: its entry is that page's index from the start.
    """
    page, n, first = PAGE_SIZE, region.count, region.first
    vm_start, vm_end = region.base + page, region.end - page
    stores = [mmap_store(vm_start, vm_end, first + (1 if n > 1 else 0))]
    for i in range(1, n, 2):  # page i (odd) becomes read-only: extra VMA first + i
        start = region.base + (1 + i) * page
        if i == n - 1:
            high = None  # the last page: nothing above it to split off
        else:
            high = first + (i + 2 if i + 2 < n else n - 1)  # the new remainder's page-to-be
        stores += mprotect_stores(vm_start, vm_end, start, start + page, low=first + i - 1, high=high)
        vm_start = start + page
    return stores
