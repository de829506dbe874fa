"""`tracer sweep`: bad input refused before any recording; a tiny real sweep on this host."""

from __future__ import annotations

import json
import subprocess

import pytest

from analysis.errors import TracerError, UsageError
from analysis.recording import load_recording
from conftest import ROOT, TRACER
from tracer.sweep import SweepOptions, check, parse_list, recording_name


def test_parse_list():
    assert parse_list("0, 100,200", "--vmas", int) == (0, 100, 200)
    with pytest.raises(UsageError, match="whole numbers"):
        parse_list("0,x", "--vmas", int)
    with pytest.raises(UsageError, match="twice"):
        parse_list("gapped,gapped", "--layout")
    with pytest.raises(UsageError, match="at least one"):
        parse_list(" , ", "--layout")


def test_recording_names_sort_by_vmas():
    names = [recording_name("gapped", v) for v in (6400, 0, 800)]
    assert sorted(names) == [recording_name("gapped", v) for v in (0, 800, 6400)]


def test_a_non_empty_directory_is_kept_unless_forced(tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(TracerError, match="not empty"):
        check(SweepOptions(output=tmp_path))
    check(SweepOptions(output=tmp_path, force=True))
    with pytest.raises(TracerError, match="not a directory"):
        check(SweepOptions(output=tmp_path / "mine.txt"))
    with pytest.raises(UsageError, match="--layout"):
        check(SweepOptions(output=tmp_path / "new", layouts=("gapped", "packed")))


def test_the_cli_refuses_bad_lists_in_one_line(tmp_path):
    proc = subprocess.run([*TRACER, "sweep", "-o", str(tmp_path / "s"), "--vmas", "0,ten"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == ["tracer: error: --vmas: not a list of whole numbers: '0,ten'"]
    assert not (tmp_path / "s").exists()


@pytest.mark.bpf
@pytest.mark.usefixtures("bpf_host")
def test_a_tiny_sweep_records_both_layouts_and_the_model_predicts_their_leaves(tmp_path):
    out = tmp_path / "sweep"
    proc = subprocess.run(
        [*TRACER, "sweep", "-o", str(out), "--vmas", "0,100", "--forks", "50", "--cpu", "0", "--sample", "4999", "-q"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    index = json.loads((out / "index.json").read_text())
    assert {(r["layout"], r["extra_vmas"]) for r in index["recordings"]} == {
        (layout, v) for layout in ("adjacent", "gapped") for v in (0, 100)
    }
    slots = {}
    for entry in index["recordings"]:
        rec = load_recording(out / entry["file"])
        w = rec.meta["workload"]
        assert (w["layout"], w["extra_vmas"], w["forks"]) == (entry["layout"], entry["extra_vmas"], 50)
        assert rec.meta["sample"]["hz"] == 4999 and rec.meta["cycle"] is not None
        forks = rec.forks[rec.forks.usable]
        assert len(forks) == 50
        check_ = entry["model_check"]
        assert check_["parent_build"] == "spawn_history"
        assert check_["observed_leaves"] == forks.leaves.median()
        assert check_["predicted_leaves"] == check_["observed_leaves"], entry
        slots[entry["layout"], entry["extra_vmas"]] = int(forks.stores.median())
    # One more VMA per extra VMA in both layouts: the layouts differ in holes, not in VMAs.
    for layout in ("adjacent", "gapped"):
        assert slots[layout, 100] - slots[layout, 0] == 100
    # The report over the whole sweep: attribution per group sums to the whole, model check agrees.
    doc = json.loads((out / "report.json").read_text())
    assert len(doc["groups"]) == 4
    for group in doc["groups"]:
        if group["vmas"] == 0 and group["attribution_estimate"] != "samples":
            continue  # 50 forks of ~25 us: a few samples at best; the fit's split then shows what it supports
        assert group["attribution_estimate"] == "samples", group["group"]
        shares = [c["share"] for c in group["attribution"].values()]
        assert abs(sum(shares) - 1) < 1e-6, group["group"]
        assert group["model_check"]["observed_leaves"] == group["model_check"]["predicted_leaves"], group["group"]
    assert (out / "report.md").read_text().startswith("# forktrace report")
    assert sorted(p.suffix for p in (out / "plots").iterdir()) and all(
        p.suffix in (".png", ".svg") for p in (out / "plots").iterdir()
    )
