"""record --runs: arms, their interleaved order, the output directory (no BPF)."""

from __future__ import annotations

from pathlib import Path

import pytest

from analysis.errors import UsageError
from tracer.record.options import RecordOptions
from tracer.record.runs import arms_of, check_series_dir, plan_runs, run_entry


def test_arms_from_the_one_option_given_a_list():
    assert [a.label for a in arms_of(RecordOptions(spawn_vmas=100, layout="gapped,adjacent"))] == ["gapped", "adjacent"]
    arms = arms_of(RecordOptions(command=["./a", "1", ":::", "./b", "2"]))
    assert [(a.label, a.opts.command) for a in arms] == [("A", ["./a", "1"]), ("B", ["./b", "2"])]
    arms = arms_of(RecordOptions(spawn_vmas=100, spawn_list=[100, 400]))
    assert [(a.label, a.opts.spawn_vmas) for a in arms] == [("spawn100", 100), ("spawn400", 400)]
    # An A/A check: the repeated arm is numbered.
    assert [a.label for a in arms_of(RecordOptions(spawn_vmas=1, inject_store_ns=(0, 0, 9)))] == ["inject0.1", "inject0.2", "inject9"]
    single = RecordOptions(spawn_vmas=5, runs=3)
    (arm,) = arms_of(single)
    assert arm.label == "" and arm.opts is not single  # resolving may change an arm, never the options
    with pytest.raises(UsageError, match="one thing at a time"):
        arms_of(RecordOptions(spawn_vmas=100, spawn_list=[100, 400], layout="gapped,adjacent"))
    with pytest.raises(UsageError, match="empty command"):
        arms_of(RecordOptions(command=["./a", ":::"]))


def test_rounds_rotate_the_order_and_name_one_file_per_run():
    arms = arms_of(RecordOptions(spawn_vmas=100, layout="gapped,adjacent"))
    plans = plan_runs(None, arms, 3, Path("d"))
    assert [(p.arm.label, p.index, p.order) for p in plans] == [
        ("gapped", 1, 1), ("adjacent", 1, 2), ("adjacent", 2, 3), ("gapped", 2, 4), ("gapped", 3, 5), ("adjacent", 3, 6)]
    assert plans[0].path == Path("d/gapped/run-01.parquet")
    single = plan_runs(None, arms_of(RecordOptions(spawn_vmas=1, runs=100)), 100, Path("d"))
    assert single[0].path == Path("d/run-001.parquet") and len(single) == 100
    entry = run_entry(plans[2], "s", 3, 0)
    assert entry["series"] == "s" and entry["arm"] == "adjacent" and entry["index"] == 2 and "inject_store_ns" not in entry
    assert run_entry(plans[2], "s", 3, 40)["inject_store_ns"] == 40


def test_a_series_directory_is_new_or_holds_no_recordings(tmp_path):
    arms = arms_of(RecordOptions(spawn_vmas=100, layout="gapped,adjacent"))
    check_series_dir(tmp_path / "new", arms)
    assert (tmp_path / "new" / "gapped").is_dir() and (tmp_path / "new" / "adjacent").is_dir()
    (tmp_path / "new" / "adjacent" / "run-01.parquet").write_bytes(b"x")
    with pytest.raises(UsageError, match="already holds recordings"):
        check_series_dir(tmp_path / "new", arms)
    (tmp_path / "file").write_text("keep")
    with pytest.raises(UsageError, match="not a directory"):
        check_series_dir(tmp_path / "file", arms)
    assert (tmp_path / "file").read_text() == "keep"


def test_cli_refuses_bad_runs_before_loading_anything(tmp_path):
    import subprocess

    from conftest import ROOT, TRACER

    for args, message in ((["--runs", "0"], "--runs"), (["--spawn", "1,x"], "--spawn"),
                          (["--spawn", "1,2", "--layout", "gapped,adjacent"], "one thing at a time")):
        proc = subprocess.run([*TRACER, "record", *(["--spawn", "10"] if "--spawn" not in args else []), *args,
                               "-o", str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_an_ab_defaults_to_the_runs_its_power_needs_and_short_runs(tmp_path):
    """Arms without --runs: DEFAULT_AB_RUNS a side of SERIES_FORKS forks; one recording stays one run of 1000."""
    import os

    from tracer.record.options import DEFAULT_AB_RUNS, SERIES_FORKS, resolve_options

    if os.geteuid() != 0:
        pytest.skip("resolve_options refuses to go on without root (record loads BPF)")
    ab = resolve_options(RecordOptions(spawn_vmas=10, layout="gapped,adjacent", output=tmp_path / "ab"))
    assert (ab.runs, ab.forks) == (DEFAULT_AB_RUNS, SERIES_FORKS)
    one = resolve_options(RecordOptions(spawn_vmas=10, output=tmp_path / "one.parquet"))
    assert (one.runs, one.forks) == (1, 1000) and not one.series
    asked = resolve_options(RecordOptions(spawn_vmas=10, layout="gapped,adjacent", runs=4, forks=7, output=tmp_path / "n"))
    assert (asked.runs, asked.forks) == (4, 7)
    series = resolve_options(RecordOptions(spawn_vmas=10, runs=3, output=tmp_path / "s"))
    assert (series.runs, series.forks) == (3, SERIES_FORKS)
    timed = resolve_options(RecordOptions(spawn_vmas=10, runs=3, duration=1.0, output=tmp_path / "d"))
    assert timed.forks is None  # -d bounds each run instead
