"""The replay model against the running kernel (issue 3), and the history generator behind it.

The BPF tests record the built-in spawn workload and compare the distinct
leaves its forks' replace loops wrote with the model's leaf count for the
saved layout, the parent's tree built by replaying spawn.c's own history
(analysis.model.history.spawn_history). The tolerance is zero: on this host
the history build equalled the observed leaves exactly at every count tried
(0, 100, 200, 500, 1000, 3000, 6400 extra VMAs; scripts/model_vs_kernel.py
prints that table), and every fork of one process wrote the same number.

The what-if test cuts the same region's holes top-down instead (a small C
program from scripts/model_vs_kernel.py, recorded in command mode). There the
model was exact at 400-1000 and 3000-6400 extra VMAs but one leaf over at 500
(73 observed, 74 modelled, in the leftmost leaves where the region meets the
binary's leaf), so that test allows one leaf; the two orders differ by 18
leaves at 1000, far outside it.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess

import pytest

from analysis.recording import load_recording, write_recording
from analysis.recording.layout import Vma, format_maps, parse_maps
from analysis.model.build import build_bulk, build_from_history, layout_slots
from analysis.model.render import run_model
from analysis.model.parent import RecordedTarget, choose_parent_build, parent_tree
from analysis.model.history import (
    PAGE_SIZE,
    TEMPORARY,
    find_spawn_region,
    history_mmap_order,
    munmap_stores,
    spawn_history,
)
from conftest import ROOT, TRACER
from recordings import MONO_BASE_NS, default_metadata, fork_row

PAGE = PAGE_SIZE


# -- pure: the history generator ----------------------------------------------------


def spawn_like_layout(extra: int, region_top: int = 0x7F0000100000, adjacent: bool = False) -> list[Vma]:
    """A layout shaped like spawn.c's: a binary, its bss, the extra VMAs, libc-like and stack VMAs."""
    exe = dict(dev="fe:00", inode=42, path="/usr/bin/spawn")
    libc = dict(dev="fe:00", inode=7, path="/usr/lib/libc.so.6")
    base_lo = [
        Vma(0x555500000000, 0x555500001000, "r--p", **exe),
        Vma(0x555500001000, 0x555500003000, "r-xp", 0x1000, **exe),
        Vma(0x555500003000, 0x555500004000, "r--p", 0x3000, **exe),
        Vma(0x555500004000, 0x555500005000, "rw-p", 0x4000, **exe),
        Vma(0x555500005000, 0x555500015000, "rw-p"),  # bss
    ]
    if adjacent:  # side by side, rw-p and r--p alternating
        first = region_top - (extra + 1) * PAGE
        region = [Vma(first + i * PAGE, first + (i + 1) * PAGE, ("rw-p", "r--p")[i % 2]) for i in range(extra)]
    else:
        first = region_top - (2 * extra) * PAGE  # one free page above the last extra VMA
        region = [Vma(first + 2 * i * PAGE, first + (2 * i + 1) * PAGE, "rw-p") for i in range(extra)]
    base_hi = [
        Vma(region_top, region_top + 0x3000, "rw-p"),  # TLS, right above the top hole
        Vma(region_top + 0x3000, region_top + 0x29000, "r--p", **libc),
        Vma(region_top + 0x29000, region_top + 0x17F000, "r-xp", 0x26000, **libc),
        Vma(0x7FFD00000000, 0x7FFD00021000, "rw-p", path="[stack]"),
    ]
    return base_lo + region + base_hi


def test_munmap_stores_follow_mm_vma_order():
    """Split below (new lower VMA stored), split at end (new upper VMA stored), then NULL."""
    vm_start, vm_end = 0x10000, 0x20000
    assert munmap_stores(vm_start, vm_end, 0x14000, 0x15000, low=1, high=2) == [
        (0x10000, 0x13FFF, 1),
        (0x15000, 0x1FFFF, 2),
        (0x14000, 0x14FFF, None),
    ]
    # At either edge only one split happens; the whole VMA needs none.
    assert munmap_stores(vm_start, vm_end, vm_start, 0x11000, high=2) == [(0x11000, 0x1FFFF, 2), (0x10000, 0x10FFF, None)]
    assert munmap_stores(vm_start, vm_end, 0x1F000, vm_end, low=1) == [(0x10000, 0x1EFFF, 1), (0x1F000, 0x1FFFF, None)]
    assert munmap_stores(vm_start, vm_end, vm_start, vm_end) == [(vm_start, vm_end - 1, None)]
    with pytest.raises(ValueError, match="not inside"):
        munmap_stores(vm_start, vm_end, 0xF000, 0x11000, low=1, high=2)
    with pytest.raises(ValueError, match="lower part"):
        munmap_stores(vm_start, vm_end, 0x14000, 0x15000, high=2)


@pytest.mark.parametrize("extra", [0, 1, 2, 7, 300])
@pytest.mark.parametrize("munmap_order", ["ascending", "descending"])
def test_spawn_history_ends_with_the_layout(extra, munmap_order):
    layout = spawn_like_layout(extra)
    stores = spawn_history(layout, extra, munmap_order=munmap_order)
    base = len(layout) - extra
    # base mmaps; probe mmap + munmap; the region's mmap; three stores per hole cut.
    expected = base + (3 + 3 * (extra - 1) if extra else 0)
    assert len(stores) == expected
    tree = build_from_history(stores)
    tree.validate()
    assert tree.entries() == [(v.start, v.end - 1, i) for i, v in enumerate(layout)]
    assert TEMPORARY not in {e for _, _, e in tree.entries()}
    shape = tree.shape()
    assert shape.slots_used == layout_slots(layout)
    assert shape.null_slots == layout_slots(layout) - len(layout)


def test_spawn_history_cuts_holes_in_the_order_asked():
    layout = spawn_like_layout(4)
    region = find_spawn_region(layout, 4)
    nulls = lambda stores: [a for a, _, e in stores if e is None and region.base < a < region.end - PAGE]  # noqa: E731
    holes = [region.base + i * PAGE for i in (2, 4, 6)]
    assert nulls(spawn_history(layout, 4)) == holes
    assert nulls(spawn_history(layout, 4, munmap_order="descending")) == holes[::-1]


def test_find_spawn_region():
    layout = spawn_like_layout(5)
    assert find_spawn_region(layout, 0) is None
    region = find_spawn_region(layout, 5)
    assert region.first == 5 and region.count == 5 and region.pages == 11
    assert region.base == layout[5].start - PAGE and region.end == layout[9].end + PAGE
    with pytest.raises(ValueError, match="no run of 6"):
        find_spawn_region(layout, 6)
    twice = spawn_like_layout(3, region_top=0x7F0000100000)
    twice[5:5] = [Vma(0x600000000000 + 2 * i * PAGE, 0x600000000000 + (2 * i + 1) * PAGE, "rw-p") for i in range(3)]
    with pytest.raises(ValueError, match="2 runs"):
        find_spawn_region(sorted(twice, key=lambda v: v.start), 3)
    with pytest.raises(ValueError):
        find_spawn_region(layout, -1)


def test_parent_tree_is_built_once_per_target():
    layout = spawn_like_layout(20)
    spawn = {"kind": "spawn", "pid": 1, "extra_vmas": 20}
    first = parent_tree(RecordedTarget(layout, 3.0, "", 1, spawn))
    # An equal target (another list, another note) gets the same tree; anything that decides the tree does not.
    assert parent_tree(RecordedTarget(list(layout), 3.0, "other", 1, dict(spawn))) is first
    other = parent_tree(RecordedTarget(layout, 5.0, "", 1, None))
    assert (other.build, first.build) == ("observed_leaves", "spawn_history")
    assert other.tree.shape().leaves == 5
    assert parent_tree(RecordedTarget(layout, 6.0, "", 1, None)).tree.shape().leaves == 6
    assert first.assumed_leaves is None
    assert other.assumed_leaves == build_from_history(history_mmap_order(layout, "descending")).shape().leaves


def test_choose_parent_build():
    layout = spawn_like_layout(20)
    spawn = RecordedTarget(layout, 3.0, "", 1, {"kind": "spawn", "pid": 1, "extra_vmas": 20})
    build, why, extra = choose_parent_build(spawn)
    assert (build, extra) == ("spawn_history", 20) and "spawn --vmas 20" in why
    wrong = RecordedTarget(layout, 3.0, "", 1, {"kind": "spawn", "pid": 1, "extra_vmas": 21})
    build, why, extra = choose_parent_build(wrong)
    assert (build, extra) == ("observed_leaves", None) and "no run of 21" in why
    # An unknown history uses what the recording observed; with nothing observed, top-down order.
    command = RecordedTarget(layout, 3.0, "", 1, {"kind": "command", "pid": 1})
    assert choose_parent_build(command)[0] == "observed_leaves"
    assert choose_parent_build(RecordedTarget(layout, 3.0, "", 1, None))[0] == "observed_leaves"
    assert choose_parent_build(RecordedTarget(layout, None, "", 1, None))[0] == "mmap_descending"
    # The layout in the metadata selects the history: an adjacent region is not a gapped one.
    adjacent = spawn_like_layout(20, adjacent=True)
    target = RecordedTarget(adjacent, 3.0, "", 1, {"kind": "spawn", "pid": 1, "extra_vmas": 20, "layout": "adjacent"})
    build, why, extra = choose_parent_build(target)
    assert (build, extra) == ("spawn_history", 20) and "adjacent" in why
    target.workload["layout"] = "gapped"
    assert choose_parent_build(target)[0] == "observed_leaves"


@pytest.mark.parametrize("extra", [0, 1, 2, 3, 8, 301])
def test_adjacent_spawn_history_ends_with_the_layout(extra):
    layout = spawn_like_layout(extra, adjacent=True)
    stores = spawn_history(layout, extra, spawn_layout="adjacent")
    base = len(layout) - extra
    # base mmaps; probe mmap + munmap; the region's mmap; per odd page a split below and, but for the last page, above.
    cuts = sum(1 + (i != extra - 1) for i in range(1, extra, 2))
    assert len(stores) == base + (3 + cuts if extra else 0)
    assert not [st for st in stores[base + 2 :] if st[2] is None], "mprotect stores no NULL"
    tree = build_from_history(stores)
    tree.validate()
    assert tree.entries() == [(v.start, v.end - 1, i) for i, v in enumerate(layout)]
    assert tree.shape().slots_used == layout_slots(layout)
    if extra > 1:
        with pytest.raises(ValueError, match="not the layout spawn.c makes"):
            find_spawn_region(layout, extra)  # an adjacent region is not a gapped one


def test_unknown_history_uses_the_observed_leaves_and_says_how_far_off(tmp_path):
    layout = spawn_like_layout(300)
    maps = [{"pid": 9, "comm": "redis-server", "ts_mono_ns": 0, "maps": format_maps(layout)}]
    forks = [fork_row(MONO_BASE_NS + i * 10**6, vmas=40, mt_dup_ns=5_000, vma_step_ns=600, pid=9, leaves=n)
             for i, n in enumerate([50, 52, 52])]
    path = tmp_path / "app.parquet"
    write_recording(path, forks, default_metadata(forks, maps=maps, workload=None))
    doc = json.loads(run_model(None, False, None, path, True))
    assert doc["parent_build"] == "observed_leaves"
    assert doc["shape"]["parent"]["leaves"] == 52 == doc["leaf_counts"]["observed_leaves"]
    assumed = doc["leaf_counts"]["mmap_descending"]
    assert assumed != 52
    assert f"would predict {assumed} leaves ({(assumed - 52) / 52:+.0%} off)" in doc["parent_build_reason"]
    text = run_model(None, False, None, path, False)
    assert "observed leaves (used)" in text


def _write_spawn_recording(path, layout, extra, leaves):
    maps = [{"pid": 9, "comm": "spawn", "ts_mono_ns": 0, "maps": format_maps(layout)}]
    forks = [fork_row(MONO_BASE_NS + i * 10**6, vmas=40, mt_dup_ns=5_000, vma_step_ns=600, pid=9, leaves=n)
             for i, n in enumerate(leaves)]
    write_recording(path, forks, default_metadata(forks, maps=maps, workload={"kind": "spawn", "pid": 9, "extra_vmas": extra}))


def test_run_model_on_a_spawn_recording_uses_its_history(tmp_path):
    layout = spawn_like_layout(200)
    rec = tmp_path / "rec.parquet"
    _write_spawn_recording(rec, layout, 200, [30, 30])
    doc = json.loads(run_model(None, True, None, rec, True))
    assert doc["parent_build"] == "spawn_history"
    assert "spawn --vmas 200" in doc["parent_build_reason"]
    counts = doc["leaf_counts"]
    assert counts["observed_median"] == 30
    assert counts["model_parent"] == counts["spawn_history"] == doc["shape"]["parent"]["leaves"]
    assert counts["bulk_append"] == build_bulk(layout).tree.shape().leaves
    assert "mmap_descending" in counts
    text = run_model(None, True, None, rec, False)
    assert "parent tree: built by spawn history" in text and "  why: " in text
    assert "spawn history (used)" in text


# -- against the kernel ----------------------------------------------------------------

FORKS = 10
COUNTS = (0, 200, 1000, 3000)


def run_tracer(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([*TRACER, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _process(path, pid=None):
    """(layout, forks of the workload's process) of a recording."""
    rec = load_recording(path)
    pid = rec.meta["workload"]["pid"] if pid is None else pid
    forks = rec.forks[(rec.forks.pid == pid) & ~rec.forks.failed]
    (snap,) = [m for m in rec.meta["maps"] if m["pid"] == pid]
    return [v for v in parse_maps(snap["maps"]) if v.path != "[vsyscall]"], forks, rec.meta


@pytest.fixture(scope="module")
def spawn_recordings(bpf_host, tmp_path_factory):
    out = {}
    for vmas in COUNTS:
        path = tmp_path_factory.mktemp("mvk") / f"spawn{vmas}.parquet"
        proc = run_tracer("record", "--spawn", str(vmas), "--forks", str(FORKS), "--cpu", "0", "-q", "-o", str(path))
        assert proc.returncode == 0, proc.stderr
        out[vmas] = path
    return out


@pytest.mark.bpf
@pytest.mark.usefixtures("bpf_host")
@pytest.mark.parametrize("vmas", COUNTS)
def test_spawn_history_leaves_equal_observed(spawn_recordings, vmas):
    layout, forks, _ = _process(spawn_recordings[vmas])
    assert len(forks) == FORKS
    assert (forks.stores == len(layout)).all(), "the maps snapshot is not the layout the forks copied"
    observed = set(forks.leaves)
    assert len(observed) == 1, f"forks of one process wrote different numbers of leaves: {sorted(observed)}"
    (observed,) = observed
    tree = build_from_history(spawn_history(layout, vmas))
    tree.validate()
    assert tree.shape().leaves == observed
    # The base VMAs' own order is an assumption; on these layouts it does not matter.
    for order in ("ascending", "random"):
        assert build_from_history(spawn_history(layout, vmas, base_order=order, seed=vmas)).shape().leaves == observed


@pytest.mark.bpf
@pytest.mark.usefixtures("bpf_host")
def test_tracer_model_recording_uses_spawn_history(spawn_recordings):
    path = spawn_recordings[1000]
    _, forks, _ = _process(path)
    proc = run_tracer("model", "--recording", str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["parent_build"] == "spawn_history"
    counts = doc["leaf_counts"]
    assert counts["observed_median"] == forks.leaves.median()
    assert counts["spawn_history"] == counts["observed_median"]
    assert {"mmap_descending", "bulk_append"} <= set(counts)


def _load_script():
    spec = importlib.util.spec_from_file_location("model_vs_kernel", ROOT / "scripts" / "model_vs_kernel.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.bpf
@pytest.mark.usefixtures("bpf_host")
def test_hole_order_decides_the_shape(tmp_path):
    """Same final layout kind, holes cut up or down: the kernel's leaves follow the history.

    Bulk append sees only the final layout, so it cannot tell the two apart;
    the history model must match both (within the one leaf the module
    docstring explains).
    """
    script = _load_script()
    exe = script.build_cut(tmp_path)
    vmas = 1000
    observed, modelled = {}, {}
    for order, munmap_order in (("asc", "ascending"), ("desc", "descending")):
        path = tmp_path / f"cut-{order}.parquet"
        proc = run_tracer("record", "-q", "-o", str(path), "--", str(exe), str(vmas), str(FORKS), order)
        assert proc.returncode == 0, proc.stderr
        meta_pid = load_recording(path).meta["workload"]["pid"]
        layout, forks, _ = _process(path, meta_pid)
        assert len(forks) == FORKS and forks.leaves.nunique() == 1
        observed[order] = int(forks.leaves.iloc[0])
        modelled[order] = build_from_history(spawn_history(layout, vmas, munmap_order=munmap_order)).shape().leaves
    for order in observed:
        assert abs(modelled[order] - observed[order]) <= 1, (order, observed, modelled)
    assert abs(observed["desc"] - observed["asc"]) > 2, observed
