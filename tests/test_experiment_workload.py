"""The designed-experiment variants of the spawn workload, run for real (no BPF).

What the experiments rely on: each variant gives the parent the layout it is
meant to (read back from /proc/PID/maps of the running workload), the replay
model replays each history to exactly that layout, and the tree shapes of the
--order variants differ at the same VMA count (else the shape experiment
varies nothing). Default runs keep the command line they always had.
"""

from __future__ import annotations

import os
import re

import pytest

from analysis.attribution.counts import counts_for_layout
from analysis.errors import UsageError
from analysis.model.build import build_from_history
from analysis.model.history import SpawnRegion, cut_holes, find_spawn_region, hole_order, spawn_history
from analysis.model.parent import layout_from_maps_text
from tracer.host.procmaps import read_maps
from tracer.workload.spawn import SpawnWorkload, build_spawn

PAGE = os.sysconf("SC_PAGE_SIZE")


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory):
    """Build into a throwaway cache, not the user's ~/.cache."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    build_spawn()
    yield
    if old is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = old


def ready_layout(extra: int, **kw):
    """(layout at ready, workload metadata, smaps text) of a workload variant."""
    with SpawnWorkload(extra, forks=1, **kw) as spawn:
        ready = spawn.start()
        layout = layout_from_maps_text(read_maps(ready.pid), "maps")
        smaps = open(f"/proc/{ready.pid}/smaps").read()
        meta = {"pid": ready.pid, **spawn.metadata()}
    assert ready.vmas_total == len(layout)
    return layout, meta, smaps


def test_default_command_line_is_unchanged():
    w = SpawnWorkload(10, forks=5)
    assert w.argv("spawn") == ["spawn", "--vmas", "10", "--layout", "gapped", "--forks", "5"]
    assert not {"order", "weight", "evict_mb", "cold"} & set(w.metadata())
    w = SpawnWorkload(10, forks=5, order="scatter", weight="file", evict_mb=8, cold=True)
    assert w.argv("spawn")[-7:] == ["--order", "scatter", "--weight", "file", "--evict-mb", "8", "--cold"]


@pytest.mark.parametrize("kw, message", [
    (dict(order="random"), "--order"),
    (dict(weight="heavy"), "--weight"),
    (dict(layout="adjacent", order="scatter"), "gapped layout"),
    (dict(cold=True), "--evict-mb"),
    (dict(touch=True, weight="file"), "--touch"),
])
def test_bad_variants_are_one_line_usage_errors(kw, message):
    with pytest.raises(UsageError, match=message) as err:
        SpawnWorkload(10, forks=1, **kw)
    assert "\n" not in str(err.value)


def test_hole_order_is_a_permutation_that_spreads_the_cuts():
    for k in (0, 1, 2, 5, 8, 99):
        for order in ("ascending", "descending", "scatter"):
            assert sorted(hole_order(k, order)) == list(range(k))
    assert hole_order(8, "scatter")[:3] == [0, 4, 2]


def test_cut_holes_in_order_is_spawn_histories_own():
    """The general replay (any order) gives exactly the stores of the ascending and descending ones."""
    layout, _, _ = ready_layout(50)
    region = find_spawn_region(layout, 50)
    for order in ("ascending", "descending"):
        full = spawn_history(layout, 50, munmap_order=order)
        assert full[-3 * 49:] == cut_holes(region, hole_order(49, order))


@pytest.mark.parametrize("order", ["ascending", "descending", "scatter"])
def test_each_order_gives_the_same_layout_and_the_model_replays_it(order):
    extra = 300
    layout, meta, _ = ready_layout(extra, order=order)
    region = find_spawn_region(layout, extra)
    assert region.count == extra  # one-page VMAs, a page apart: the layout is the order's, not the tree
    tree = build_from_history(spawn_history(layout, extra, munmap_order=order))
    tree.validate()
    assert tree.entries() == [(v.start, v.end - 1, i) for i, v in enumerate(layout)]
    assert meta.get("order", "ascending") == order


def test_orders_give_different_trees_at_the_same_vma_count():
    """The shape experiment's point: same VMAs, other node counts (model counts from the recorded layout)."""
    extra = 1000
    counts = {}
    for order in ("ascending", "descending", "scatter"):
        layout, meta, _ = ready_layout(extra, order=order)
        counts[order], source = counts_for_layout(layout, meta, None)
        assert source.source == "spawn_history" and f"{order}" in source.reason
    assert len({c.vmas for c in counts.values()}) == 1
    assert len({c.stores for c in counts.values()}) == 1
    nodes = {o: c.nodes_copied for o, c in counts.items()}
    assert len(set(nodes.values())) == 3, nodes
    assert nodes["scatter"] > nodes["ascending"] * 1.1, nodes


def _extra_smaps(smaps: str, region: SpawnRegion, layout) -> list[dict[str, str]]:
    """smaps fields of the extra VMAs."""
    starts = {layout[i].start for i in region.indexes}
    out, current = [], None
    for line in smaps.splitlines():
        m = re.match(r"^([0-9a-f]+)-[0-9a-f]+ ", line)
        if m:
            current = {} if int(m.group(1), 16) in starts else None
            if current is not None:
                out.append(current)
        elif current is not None and ":" in line:
            k, v = line.split(":", 1)
            current[k] = v.strip()
    return out


def test_weight_file_maps_the_extra_vmas_from_a_memfd():
    extra = 64
    layout, meta, smaps = ready_layout(extra, weight="file")
    with pytest.raises(ValueError):
        find_spawn_region(layout, extra)  # not anonymous
    region = find_spawn_region(layout, extra, backing="file")
    assert all(layout[i].path.startswith("/memfd:forktrace-spawn") for i in region.indexes)
    assert {f["Rss"] for f in _extra_smaps(smaps, region, layout)} == {"0 kB"}
    counts, source = counts_for_layout(layout, meta, None)
    assert source.source == "spawn_history" and counts.vmas == len(layout)


@pytest.mark.parametrize("weight", ["touch", "touch-each"])
def test_touch_weights_make_each_extra_page_resident(weight):
    extra = 64
    layout, meta, smaps = ready_layout(extra, weight=weight)
    region = find_spawn_region(layout, extra)
    fields = _extra_smaps(smaps, region, layout)
    assert len(fields) == extra and {f["Anonymous"] for f in fields} == {f"{PAGE // 1024} kB"}
    assert meta["touch"] is (weight == "touch")


def test_evict_buffer_is_one_shared_vma_and_cold_runs():
    layout, _, _ = ready_layout(10, evict_mb=4)
    shared = [v for v in layout if v.perms == "rw-s" and v.end - v.start == 4 << 20]
    assert len(shared) == 1
    plain, _, _ = ready_layout(10)
    assert len(layout) == len(plain) + 1
    with SpawnWorkload(10, forks=20, evict_mb=4, cold=True) as spawn:
        spawn.start()
        spawn.go()
        result = spawn.wait(timeout=60)
    assert result.forks == 20
