"""Mappings that fork() treats specially, recorded for real: every fork gets its phases.

A VM_DONTCOPY VMA (MADV_DONTFORK) is cleared in the child's tree with
mas_store_gfp(), not mas_store(): the bracket must still find the last
mas_store() and time it, whether the clear shows up as an ma_write of its own
(a gapped VMA) or not at all (an exact-fit clear between adjacent VMAs). The
other kinds (wipe on fork, huge pages, mlock, shared, file-backed) are copied
as usual. One recording holds them all (tests/mapping_kinds.py).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from analysis.recording import load_recording
from conftest import ROOT, TRACER
import mapping_kinds

pytestmark = [pytest.mark.bpf, pytest.mark.usefixtures("bpf_host")]


@pytest.fixture(scope="module")
def kinds_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kinds")
    out, pids = tmp / "kinds.parquet", tmp / "pids.json"
    proc = subprocess.run(
        [*TRACER, "record", "-q", "-o", str(out), "--", sys.executable, mapping_kinds.__file__, str(pids)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    rec = load_recording(out)
    return rec, {int(pid): kind for pid, kind in json.loads(pids.read_text()).items()}, proc.stderr


# Beyond what the bracket can time blindly: the last store may be missed (kernel-dependent), never silently.
MAY_MISS = {"dontfork_many_adjacent"}


@pytest.mark.parametrize("kind", list(mapping_kinds.KINDS))
def test_every_fork_has_its_phases_and_counts(kinds_run, kind):
    rec, pids, _ = kinds_run
    pid = next(p for p, k in pids.items() if k == kind)
    forks = rec.forks[rec.forks.pid == pid]
    assert len(forks) == mapping_kinds.FORKS
    assert forks.usable.all() and forks.dup_mmap_ns.notna().all()
    for phase in ("mt_dup", "vma_loop", "tail"):
        assert kind in MAY_MISS or forks[f"{phase}_ns"].notna().all(), f"{kind}: {phase} missing"
    # Stores count the copied VMAs; the clears are what map_count has beyond them.
    dontcopy = mapping_kinds.KINDS[kind]
    assert (forks.dontcopy_vmas == dontcopy).all(), forks.dontcopy_vmas.tolist()
    assert (forks.stores.astype(np.int64) + dontcopy == forks.parent_map_count).all()
    assert (forks.stores > mapping_kinds.LONE).all()


def test_a_missed_last_store_is_counted_and_said(kinds_run):
    rec, pids, stderr = kinds_run
    unsplit = rec.forks.vma_loop_ns.isna()
    may = rec.forks.pid.isin([p for p, k in pids.items() if k in MAY_MISS])
    assert not (unsplit & ~may).any(), "a kind the bracket must time lost its phases"
    missed = rec.meta["events"]["last_store_missed"]
    assert missed == int(unsplit.sum())
    assert (f"note: {missed} forks' last mas_store was not timed" in stderr) == (missed > 0), stderr
