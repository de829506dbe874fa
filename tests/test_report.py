"""analysis.report: the summary's figures against what the synthetic recording put in."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from analysis.recording import load_recording
from analysis.report.summary import render_report, summarize
from recordings import MONO_BASE_NS, default_metadata, fork_row, fork_rows, write_synthetic
from analysis.errors import TracerError

REQUIRED_PHASE_KEYS = {"p50_ns", "p90_ns", "p99_ns", "mean_ns", "method"}


def varied_rows() -> list[dict]:
    """Five completed forks of 10..50 VMAs and one failed fork of 999."""
    rows, start = [], MONO_BASE_NS
    for vmas, failed in [(30, False), (10, False), (999, True), (50, False), (20, False), (40, False)]:
        rows.append(fork_row(start, vmas=vmas, mt_dup_ns=7_000, vma_step_ns=400, tail_ns=9_000, failed=failed,
                             leaves=vmas // 5))
        start = rows[-1]["ts_parent_unlock"] + 10_000
    return rows


@pytest.fixture
def varied(tmp_path):
    rows = varied_rows()
    meta = default_metadata(rows, lost={"ringbuf": 7, "unpaired": 2})
    return write_synthetic(tmp_path / "varied.parquet", rows, meta)


def test_json_has_what_consumers_rely_on(varied):
    doc = json.loads(render_report(varied, "json"))
    assert doc["forks"] == 6
    assert doc["failed"] == 1
    assert doc["kernel"] == "6.18.0-test-amd64"
    assert doc["backend"] == "raw_tracepoint"
    assert doc["lost_events"] == 9
    assert doc["vmas"] == {"min": 10, "median": 30, "max": 50}  # the failed fork's 999 is excluded
    assert doc["leaves"]["median"] == 6
    for phase in ("dup_mmap", "mt_dup", "vma_loop", "tail"):
        assert REQUIRED_PHASE_KEYS <= set(doc["phases"][phase]), phase
        assert doc["phases"][phase]["n"] == 5, phase
    assert doc["phases"]["mt_dup"]["method"] == "bracket-corrected"


def test_phase_figures_match_the_costs_put_in(varied):
    phases = json.loads(render_report(varied, "json"))["phases"]
    for key in ("p50_ns", "p90_ns", "p99_ns", "mean_ns"):
        assert phases["mt_dup"][key] == pytest.approx(7_000)
        assert phases["vma_step"][key] == pytest.approx(400)
        assert phases["tail"][key] == pytest.approx(9_000)
    # vma_loop over 9, 19, 29, 39, 49 steps of 400 ns: median 29 steps.
    assert phases["vma_loop"]["p50_ns"] == pytest.approx(29 * 400)
    assert phases["vma_loop"]["mean_ns"] == pytest.approx(29 * 400)
    assert phases["vma_loop"]["max_ns"] == pytest.approx(49 * 400)


def test_text_shows_header_table_and_a_histogram_per_phase(varied):
    text = render_report(varied, "text")
    assert "6.18.0-test-amd64" in text
    assert "raw_tracepoint" in text
    assert "7 ring buffer records dropped, 2 unpaired brackets  (!)" in text
    assert "failed    1 (excluded from latencies)" in text
    assert "min 10, median 30, max 50" in text
    table = {line.split()[0]: line for line in text.splitlines() if line.split()[:1] and line.split()[-1] in
             ("bracket", "bracket-corrected")}
    assert set(table) >= {"dup_mmap", "mt_dup", "vma_loop", "tail"}
    assert "7 us" in table["mt_dup"]
    for phase in ("dup_mmap", "mt_dup", "vma_loop", "tail"):
        assert f"\n{phase}: " in text
    assert text.count(": count     distribution") == 5
    assert "* fewer than 100 values" in text


def test_empty_recording_reports_cleanly(tmp_path):
    path = write_synthetic(tmp_path / "empty.parquet", rows=[])
    doc = json.loads(render_report(path, "json"))
    assert doc["forks"] == 0 and doc["failed"] == 0
    assert doc["vmas"] == {"min": None, "median": None, "max": None}
    for phase in ("dup_mmap", "mt_dup", "vma_loop"):
        assert doc["phases"][phase]["p50_ns"] is None
        assert doc["phases"][phase]["n"] == 0
    assert "no forks were traced" in render_report(path, "text")


def test_all_failed_says_so(tmp_path):
    path = write_synthetic(tmp_path / "failed.parquet", fork_rows(3, failed=[0, 1, 2]))
    assert "no usable forks: all 3" in render_report(path, "text")
    assert json.loads(render_report(path, "json"))["phases"]["dup_mmap"]["n"] == 0


def test_unmeasured_phases_are_null_not_nan(tmp_path):
    rows = [fork_row(MONO_BASE_NS, vmas=0, mt_dup_ns=1_000, vma_step_ns=100),
            fork_row(MONO_BASE_NS + 10**6, vmas=1, mt_dup_ns=1_000, vma_step_ns=100)]
    doc = json.loads(render_report(write_synthetic(tmp_path / "r.parquet", rows), "json"))
    assert doc["phases"]["mt_dup"]["p50_ns"] is None
    assert doc["phases"]["vma_loop"]["n"] == 1
    assert doc["no_stores"] == 1


def test_lost_unknown_is_not_zero(tmp_path):
    rows = fork_rows(2)
    meta = default_metadata(rows)
    del meta["lost"]
    path = write_synthetic(tmp_path / "r.parquet", rows, meta)
    assert json.loads(render_report(path, "json"))["lost_events"] is None
    assert "unknown ring buffer records dropped" in render_report(path, "text")


def sampled(path, stacks: list[dict], hz: int = 99):
    """A synthetic recording at `path` whose metadata holds these sampled kernel stacks."""
    rows = fork_rows(4)
    return write_synthetic(path, rows, default_metadata(rows, sample={"hz": hz, "stacks": stacks, "lost": 0}))


def test_top_functions_by_self_samples(tmp_path):
    stacks = [
        {"stack": "entry_SYSCALL_64;__x64_sys_clone;copy_process;dup_mmap;__mt_dup;mas_dup_alloc", "phase": "mt_dup", "count": 5},
        {"stack": "entry_SYSCALL_64;__x64_sys_clone;copy_process;dup_mmap;__mt_dup+0x1a/0x40", "phase": "mt_dup", "count": 3},
        {"stack": "copy_process;dup_mmap;mas_dup_alloc+0x10/0x200", "phase": "mt_dup", "count": 4},
        {"stack": "copy_process;dup_mmap;copy_page_range", "phase": "vma_loop", "count": 11},
    ]
    path = sampled(tmp_path / "r.parquet", stacks, hz=999)
    samples = json.loads(render_report(path, "json"))["samples"]
    top = samples["phases"]["mt_dup"]["top"]
    assert [(f["function"], f["self"]) for f in top] == [("mas_dup_alloc", 9), ("__mt_dup", 3)]
    assert samples["phases"]["mt_dup"]["samples"] == 12
    assert samples["phases"]["vma_loop"]["top"][0]["share"] == 1.0
    text = render_report(path, "text")
    assert "top kernel functions by self samples (999 Hz;" in text
    assert "mas_dup_alloc" in text


def test_malformed_sample_stacks_are_a_tracer_error(tmp_path):
    rows = fork_rows(2)
    meta = default_metadata(rows, sample={"hz": 99, "stacks": [{"stack": "a;b"}]})
    with pytest.raises(TracerError, match="entry 0"):  # refused by the reader, once, for every command
        load_recording(write_synthetic(tmp_path / "r.parquet", rows, meta))


def test_unknown_format_is_refused(varied):
    with pytest.raises(TracerError):
        render_report(varied, "yaml")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracer.cli", "report", *args], capture_output=True, text=True,
                          timeout=120)


def test_cli_prints_one_line_for_a_bad_file(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    result = run_cli(str(bad))
    assert result.returncode == 2  # bad input, refused before any work (issue 19)
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert str(bad) in result.stderr


def test_cli_json(varied):
    result = run_cli(str(varied), "--format", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["forks"] == 6


def test_no_warning_when_nothing_was_lost(tmp_path):
    text = render_report(write_synthetic(tmp_path / "r.parquet", fork_rows(3)), "text")
    assert "0 ring buffer records dropped, 0 unpaired brackets" in text
    assert "(!)" not in text


def test_command_workload_stays_on_one_header_line(tmp_path):
    rows = fork_rows(2)
    command = ["/usr/bin/python3", "-c", "import os\nfor i in range(9):\n    os.fork()"]
    meta = default_metadata(rows, workload={"kind": "command", "command": command, "pid": 77},
                            targets={"mode": "command", "pids": [], "command": command})
    text = render_report(write_synthetic(tmp_path / "r.parquet", rows, meta), "text")
    (line,) = [line for line in text.splitlines() if line.startswith("  workload")]
    assert line.endswith("command: /usr/bin/python3 -c import os for i in range(9): os.fork()")


def test_folded_output_merges_stacks_per_phase_for_flamegraph(tmp_path):
    stacks = [
        {"stack": "copy_process;dup_mmap;__mt_dup", "phase": "mt_dup", "count": 3},
        {"stack": "copy_process;dup_mmap;__mt_dup", "phase": "mt_dup", "count": 2},
        {"stack": "copy_process;dup_mmap;mas_store", "phase": "vma_loop", "count": 7},
    ]
    lines = render_report(sampled(tmp_path / "s.parquet", stacks), "folded").splitlines()
    assert lines == [
        "dup_mmap[mt_dup];copy_process;dup_mmap;__mt_dup 5",
        "dup_mmap[vma_loop];copy_process;dup_mmap;mas_store 7",
    ]


def test_folded_without_samples_is_an_error(tmp_path):
    path = write_synthetic(tmp_path / "n.parquet")
    with pytest.raises(TracerError, match="--sample"):
        render_report(path, "folded")


def test_exact_phase_figures_and_the_bulk_build_are_named(tmp_path):
    rows = fork_rows(10, vmas=30)
    for i, row in enumerate(rows):
        row["exact_ts_entry"] = row["ts_parent_lock"] - 500
        row["exact_ts_exit"] = row["ts_parent_unlock"] + 700 + i
        row["exact_dup_mmap_ns"] = float(row["exact_ts_exit"] - row["exact_ts_entry"])
    methods = dict(default_metadata(rows)["methods"])
    methods["dup_mmap"] = "exact (fentry/fexit on dup_mmap: exact_dup_mmap_ns; bracket kept in dup_mmap_ns)"
    algorithm = {"name": "bulk_append", "evidence": ["__mt_dup not in kallsyms"]}
    path = write_synthetic(tmp_path / "x.parquet", rows, default_metadata(rows, methods=methods, algorithm=algorithm))
    summary = summarize(load_recording(path))
    exact = sorted(r["exact_dup_mmap_ns"] for r in rows)
    assert summary["phases"]["dup_mmap"]["p50_ns"] == pytest.approx((exact[4] + exact[5]) / 2)
    text = render_report(path, "text")
    assert "algorithm bulk_append (__mt_dup not in kallsyms)" in text
    assert any(line.startswith("bulk build ") for line in text.splitlines())
    assert "dup_mmap: entry -> return (exact probe)" in text
    # Without an exact method the bracket's figure is the one shown.
    plain = write_synthetic(tmp_path / "b.parquet", rows, default_metadata(rows))
    bracket = sorted(r["ts_parent_unlock"] - r["ts_parent_lock"] for r in rows)
    assert summarize(load_recording(plain))["phases"]["dup_mmap"]["p50_ns"] == pytest.approx((bracket[4] + bracket[5]) / 2)


def test_partial_forks_are_counted_beside_failed_and_kept_out_of_latencies(tmp_path):
    # In flight at attach: a partial row with no child and a start before the
    # run's; its timestamps must not reach the figures (its mt_dup would be 1 ms).
    rows = varied_rows()
    inflight = fork_row(MONO_BASE_NS - 5_000_000, vmas=30, mt_dup_ns=1_000_000, vma_step_ns=400, partial=True)
    inflight["child_pid"] = -1
    path = write_synthetic(tmp_path / "partial.parquet", [inflight, *rows], default_metadata(rows))
    doc = json.loads(render_report(path, "json"))
    assert (doc["forks"], doc["failed"], doc["partial"], doc["unordered"], doc["usable"]) == (7, 1, 1, 0, 5)
    assert doc["phases"]["mt_dup"]["p99_ns"] == pytest.approx(7_000)
    text = render_report(path, "text")
    assert "failed    1 (excluded from latencies); partial 1 (in flight when tracing started or stopped; excluded)" in text
    # Without partial rows the line is as it was.
    whole = render_report(write_synthetic(tmp_path / "whole.parquet", rows), "text")
    assert "failed    1 (excluded from latencies)\n" in whole
