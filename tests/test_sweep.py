"""`tracer sweep`: bad input refused before any recording; a tiny real sweep on this host."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from analysis.errors import TracerError, UsageError
from analysis.recording import load_recording
from conftest import ROOT, TRACER
from tracer.sweep import SweepOptions, check, parse_list, plan_sweep, recording_name


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


def test_one_run_a_cell_keeps_the_names_and_order_of_a_plain_sweep(tmp_path):
    plans = plan_sweep(SweepOptions(output=tmp_path, vmas=(0, 100), layouts=("adjacent", "gapped")))
    assert [p.path.name for p in plans] == [recording_name(layout, v) for v in (0, 100) for layout in ("adjacent", "gapped")]
    assert [(p.order, p.index) for p in plans] == [(1, 1), (2, 1), (3, 1), (4, 1)]
    assert all(p.path.parent == tmp_path for p in plans)


def test_several_runs_go_round_by_round_every_cell_once_a_round_in_rotated_order(tmp_path):
    opts = SweepOptions(output=tmp_path, vmas=(10, 50, 200), layouts=("gapped",), runs=4, forks=30, sample_hz=0, cpu=0)
    plans = plan_sweep(opts)
    assert [p.order for p in plans] == list(range(1, 13))
    rounds = [plans[i:i + 3] for i in range(0, 12, 3)]
    for n, round_ in enumerate(rounds, 1):
        assert {p.index for p in round_} == {n}
        assert sorted(p.arm.opts.spawn_vmas for p in round_) == [10, 50, 200]
    assert [r[0].arm.opts.spawn_vmas for r in rounds] == [10, 50, 200, 10]  # no cell always first
    names = [p.path.name for p in plans]
    assert len(set(names)) == 12 and all(p.path.parent == tmp_path for p in plans)
    assert recording_name("gapped", 50, 3, 4) == "spawn-gapped-00050-run03.parquet" in names
    assert recording_name("gapped", 50, 3, 100) == "spawn-gapped-00050-run003.parquet"
    first = plans[0].arm.opts
    assert (first.layout, first.forks, first.sample_hz, first.cpu, first.runs) == ("gapped", 30, 0, 0, 1)
    assert len({p.arm.label for p in plans}) == 3


def test_runs_below_one_are_refused(tmp_path):
    with pytest.raises(UsageError, match="--runs"):
        check(SweepOptions(output=tmp_path / "s", runs=0))


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


@pytest.mark.bpf
@pytest.mark.usefixtures("bpf_host")
def test_sweep_runs_records_each_cell_n_times_as_runs_of_one_series(tmp_path):
    out = tmp_path / "sweep"
    proc = subprocess.run(
        [*TRACER, "sweep", "-o", str(out), "--vmas", "10,400", "--layout", "gapped", "--forks", "20", "--runs", "2",
         "--sample", "4999", "-q"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    names = {recording_name("gapped", v, i, 2) for v in (10, 400) for i in (1, 2)}
    assert {p.name for p in out.glob("*.parquet")} == names
    index = json.loads((out / "index.json").read_text())
    assert index["runs"] == 2 and index["stopped"] is None
    assert {(e["file"], e["extra_vmas"], e["run"]) for e in index["recordings"]} == {
        (recording_name("gapped", v, i, 2), v, i) for v in (10, 400) for i in (1, 2)}
    runs = {}
    for entry in index["recordings"]:
        rec = load_recording(out / entry["file"])
        assert rec.meta["workload"]["extra_vmas"] == entry["extra_vmas"]
        assert len(rec.forks[rec.forks.usable]) == 20
        runs[entry["file"]] = rec.meta["run"]
    assert len({r["id"] for r in runs.values()}) == 4  # each file its own run
    assert len({r["series"] for r in runs.values()}) == 1  # one series: compare pairs the cells round by round
    assert sorted(r["order"] for r in runs.values()) == [1, 2, 3, 4]
    for v in (10, 400):
        cell = [runs[recording_name("gapped", v, i, 2)] for i in (1, 2)]
        assert [r["index"] for r in cell] == [1, 2] and {r["of"] for r in cell} == {2}
        assert {r["arm"] for r in cell} == {f"gapped-{v}"}
    # The report's intervals over sampled shares bootstrap over the cell's two runs.
    doc = json.loads((out / "report.json").read_text())
    group = next(g for g in doc["groups"] if g["vmas"] == 400)
    assert len(group["recordings"]) == 2
    assert group["functions"]["runs"] == 2 and group["functions"]["interval"].startswith("bootstrap over 2 runs")
    # compare across two cells: two runs a side, paired round by round.
    cmp = subprocess.run(
        [*TRACER, "compare", "-f", "json", *(a for v in (10, 400) for i in (1, 2) for a in
                                            ("-b" if v == 10 else "-n", str(out / recording_name("gapped", v, i, 2))))],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert cmp.returncode == 0, cmp.stderr
    rows = [row for g in json.loads(cmp.stdout)["groups"] for row in g["rows"]]
    assert rows and all((row["base_runs"], row["new_runs"]) == (2, 2) for row in rows)


@pytest.mark.bpf
@pytest.mark.usefixtures("bpf_host")
def test_a_stop_ends_a_sweep_of_runs_with_the_index_covering_what_was_recorded(tmp_path):
    out = tmp_path / "s"
    proc = subprocess.Popen([*TRACER, "sweep", "-o", str(out), "--vmas", "0,100", "--layout", "gapped",
                             "--forks", "2000000", "--runs", "2", "--sample", "0", "-q"],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        while "[1/4]" not in (line := proc.stderr.readline()):
            assert line, "exited before its first run"
        deadline = time.monotonic() + 120
        while not subprocess.run(["pgrep", "-P", str(proc.pid), "spawn"], capture_output=True).stdout:
            assert time.monotonic() < deadline, "the first run's workload never started"
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        assert proc.wait(timeout=120) == 128 + signal.SIGINT, rest
    finally:
        if proc.poll() is None:
            proc.kill()
    first = recording_name("gapped", 0, 1, 2)
    assert "[2/4]" not in rest
    assert rest.strip().splitlines()[-1].startswith(f"tracer: error: SIGINT: sweep stopped (1 of 4 recordings, {first} cut short)")
    index = json.loads((out / "index.json").read_text())
    assert [(r["file"], r["cut_by"]) for r in index["recordings"]] == [(first, "SIGINT")]
    assert {p.name for p in out.glob("*.parquet")} == {first}
    assert json.loads((out / "report.json").read_text())["sweep_stopped"]["planned"] == 4
