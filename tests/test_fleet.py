"""Fleet summaries: exact merges, the sketch's error bound, unreadable files among good ones, engines that agree."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.errors import UsageError
from analysis.recording import load_recording
from analysis.recording.schema import ADDED_COLUMNS, METADATA_KEY
from analysis.report.summary import summarize
from analysis.summary import FleetSummary, parse_engine, summarize_file, summarize_files
from analysis.summary.column import ColumnSummary
from analysis.summary.engine import Engine
from analysis.summary.fleet import fleet_doc, render_fleet
from analysis.summary.sketch import ALPHA, LogSketch
from analysis.summary.units import compare_units
from tests.recordings import default_metadata, fork_rows, write_synthetic

latencies = st.lists(
    st.one_of(st.floats(0, 1e10, allow_nan=False), st.integers(0, 10**9).map(float), st.just(0.0)),
    min_size=1, max_size=300,
)


@settings(max_examples=200, deadline=None)
@given(latencies, st.sampled_from([0.0, 0.01, 0.1, 0.25, 0.5, 0.9, 0.99, 1.0]))
def test_sketch_quantile_within_its_stated_error(values, q):
    sketch = LogSketch()
    sketch.add(np.array(values))
    exact = float(np.quantile(np.array(values), q, method="lower"))
    got = sketch.quantile(q)
    if exact < 1.0:  # the zero bucket: values below 1 ns are reported as 0
        assert got == 0.0
    else:
        assert abs(got - exact) <= ALPHA * exact * (1 + 1e-9)


@settings(max_examples=100, deadline=None)
@given(st.lists(latencies, min_size=1, max_size=6), st.randoms(use_true_random=False))
def test_column_merged_in_any_order_equals_the_whole(parts, rnd):
    whole = ColumnSummary()
    whole.add(np.concatenate([np.array(p) for p in parts]))
    summaries = []
    for p in parts:
        s = ColumnSummary()
        s.add(np.array(p))
        summaries.append(s)
    rnd.shuffle(summaries)
    merged = ColumnSummary()
    while summaries:  # merge as a random tree, not a left fold
        i = rnd.randrange(len(summaries))
        if len(summaries) > 1 and rnd.random() < 0.5:
            a, b = summaries.pop(i), summaries.pop(rnd.randrange(len(summaries)))
            summaries.append(a.merge(b))
        else:
            merged = summaries.pop(i).merge(merged) if rnd.random() < 0.5 else merged.merge(summaries.pop(i))
    assert merged.as_dict() == whole.as_dict()
    assert merged.quantile(0.5) == whole.quantile(0.5)


def test_sums_are_exact_for_large_values():
    values = np.array([3e10, 1e9 + 0.5, 7.0, 123456789.25])
    c = ColumnSummary()
    c.add(values)
    assert c.sum_q == sum(round(v * 16) for v in values)
    assert c.sumsq_q == sum(round(v * 16) ** 2 for v in values)
    assert c.stdev == pytest.approx(float(np.std(values, ddof=1)), rel=1e-12)


def _meta(rows, host="h0", kernel="6.18.0", **kw):
    meta = default_metadata(rows, **kw)
    meta["host"] = {**meta["host"], "hostname": host}
    meta["kernel"] = {**meta["kernel"], "release": kernel}
    meta["sample"] = {"hz": 999, "lost": 0, "stacks": [
        {"stack": "dup_mmap;__mt_dup;mas_copy_node+0x10/0x40", "phase": "mt_dup", "count": 3},
        {"stack": f"dup_mmap;vm_area_dup;{host}_fn", "phase": "vma_loop", "count": 2},
    ]}
    return meta


def _write(path: Path, n=40, host="h0", kernel="6.18.0", seed=1, vma_step_ns=600, **kw) -> Path:
    rows = fork_rows(n, seed=seed, vma_step_ns=vma_step_ns, step_jitter_ns=200, failed=[3], **kw)
    return write_synthetic(path, rows, _meta(rows, host, kernel))


def test_summary_matches_the_detailed_report(tmp_path):
    path = _write(tmp_path / "a.parquet", n=300)
    detailed = summarize(load_recording(path))
    (key, g), = summarize_file(path).groups.items()
    assert g.counts["forks"] == detailed["forks"] and g.counts["usable"] == detailed["usable"]
    assert g.counts["failed"] == detailed["failed"] == 1
    for phase, p in detailed["phases"].items():
        c = g.columns[phase]
        assert c.n == p["n"]
        assert c.min == p["min_ns"] and c.max == p["max_ns"]
        assert c.mean == pytest.approx(p["mean_ns"], abs=1 / 32)
        values = np.sort(load_recording(path).forks.query("usable")[f"{phase}_ns"].dropna().to_numpy())
        assert abs(c.quantile(0.5) - values[(len(values) - 1) // 2]) <= ALPHA * values[(len(values) - 1) // 2] * (1 + 1e-9)


def test_files_merged_in_any_order_equal_the_concatenation(tmp_path):
    """Two runs' rows written as one file summarize to the two files' merge (batches of 7 rows: streaming too)."""
    rows_a = fork_rows(50, seed=1, step_jitter_ns=300)
    rows_b = fork_rows(70, seed=2, step_jitter_ns=300, failed=[5])
    meta = _meta(rows_a)
    a, b, ab = tmp_path / "a.parquet", tmp_path / "b.parquet", tmp_path / "ab.parquet"
    write_synthetic(a, rows_a, meta)
    write_synthetic(b, rows_b, meta)
    write_synthetic(ab, rows_a + rows_b, meta)
    merged_ab = summarize_file(a, batch_rows=7).merge(summarize_file(b, batch_rows=13))
    merged_ba = summarize_file(b).merge(summarize_file(a, batch_rows=3))
    whole = summarize_file(ab, batch_rows=11)
    assert merged_ab.canonical() == merged_ba.canonical()
    (ga,), (gw,) = merged_ab.groups.values(), whole.groups.values()
    for part in ("counts", "columns"):
        assert ga.canonical()[part] == gw.canonical()[part]
    assert ga.stacks == {k: 2 * v for k, v in gw.stacks.items()}  # each file carries the same sampled stacks
    assert ga.runs == 2 and gw.runs == 1


def test_unreadable_files_among_a_thousand_good_ones(tmp_path):
    good = _write(tmp_path / "good.parquet", n=12)
    paths = []
    for i in range(1000):
        p = tmp_path / f"run-{i:04d}.parquet"
        shutil.copyfile(good, p)
        paths.append(p)
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    foreign = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"x": [1, 2, 3]}), foreign)
    text = tmp_path / "notes.parquet"
    text.write_text("not parquet at all\n")
    warnings: list[str] = []
    from tracer.fleet import fleet_report

    out = fleet_report([*paths[:500], truncated, foreign, *paths[500:], text], "json", [], None, warnings.append)
    doc = json.loads(out)
    assert doc["runs"] == 1000 and doc["files"] == 1003
    assert doc["groups"][0]["counts"]["forks"] == 12_000
    assert len(warnings) == 3 and all("\n" not in w for w in warnings)
    for bad in (truncated, foreign, text):
        assert sum(str(bad) in w for w in warnings) == 1
    assert any("not a forktrace recording" in w for w in warnings)


def _older_format(src: Path, dst: Path) -> Path:
    """src as format 1 wrote it: none of the ADDED_COLUMNS."""
    table = pq.read_table(src)
    meta = json.loads(table.schema.metadata[METADATA_KEY])
    meta["format_version"] = 1
    added = {name for name, *_ in ADDED_COLUMNS}
    table = table.select([n for n in table.column_names if n not in added])
    pq.write_table(table.replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode()}), dst)
    return dst


def test_by_kernel_with_a_run_lacking_columns(tmp_path):
    old = _older_format(_write(tmp_path / "src.parquet", host="old-host", kernel="6.1.0"), tmp_path / "old.parquet")
    files = [old] + [_write(tmp_path / f"n{i}.parquet", host=f"h{i}", kernel=k, seed=i) for i, k in enumerate(["6.1.0", "6.18.0", "6.18.0"])]
    summary = summarize_files(files, ["kernel", "host.rack"], Engine("local", workers=1))
    doc = fleet_doc(summary)
    assert [g["key"]["kernel"] for g in doc["groups"]] == ["6.1.0", "6.18.0"]
    assert [g["runs"] for g in doc["groups"]] == [2, 2]
    assert all(g["key"]["host.rack"] is None for g in doc["groups"])
    assert set(doc["lacks"]) == {"partial", "min_step_ns", "offcpu_ns", "clone_ns", "exit_mmap_ns", "wait_ns"}
    assert all(lack["runs"] == 1 for lack in doc["lacks"].values())
    old_group = doc["groups"][0]
    assert old_group["columns"]["dup_mmap"]["n"] == 2 * 39  # the old run's forks count in its group
    text = render_fleet(doc)
    assert text.count("lack min_step_ns") == 1 and "host.rack=(none)" in text


def test_compare_by_kernel_runs_as_units(tmp_path):
    files = [_write(tmp_path / f"b{i}.parquet", host=f"b{i}", kernel="6.1.0", seed=i) for i in range(6)]
    files += [_write(tmp_path / f"n{i}.parquet", host=f"n{i}", kernel="6.18.0", seed=10 + i, vma_step_ns=900) for i in range(6)]
    cmp = compare_units(summarize_files(files, ["kernel"], Engine("local", workers=1)), "kernel")
    assert (cmp.base_value, cmp.new_value) == ("6.1.0", "6.18.0")
    rows = {r.phase: r for r in cmp.rows}
    assert rows["vma_step"].change == "regression" and rows["vma_step"].base_runs == 6
    assert rows["vma_step"].delta_pct == pytest.approx(50, abs=3)
    assert rows["mt_dup"].change == "~"  # mt_dup_ns is the same on both sides
    with pytest.raises(UsageError):
        compare_units(summarize_files(files[:6], ["kernel"], Engine("local", workers=1)), "kernel")


def test_parse_engine():
    assert parse_engine(None).kind == "local"
    assert parse_engine("local:3").workers == 3
    e = parse_engine("dask://10.0.0.1:8786")
    assert (e.kind, e.address) == ("dask", "tcp://10.0.0.1:8786")
    for bad in ("spark://x:1", "dask://", "local:0", "dask://hostonly"):
        with pytest.raises(UsageError):
            parse_engine(bad)


def test_dask_local_cluster_equals_the_local_engine(tmp_path):
    distributed = pytest.importorskip("distributed")
    files = [_write(tmp_path / f"r{i}.parquet", n=30 + i, host=f"h{i % 5}", kernel=["6.1.0", "6.18.0"][i % 2], seed=i) for i in range(16)]
    files.append(tmp_path / "missing.parquet")
    local = summarize_files(files, ["kernel"], Engine("local", workers=2))
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as cluster:
        remote = summarize_files(files, ["kernel"], parse_engine(cluster.scheduler_address.replace("tcp://", "dask://")))
    assert remote.canonical() == local.canonical()
    assert fleet_doc(remote) == fleet_doc(local)
    assert len(local.skipped) == 1 and math.isclose(sum(g.counts["forks"] for g in local.groups.values()), sum(30 + i for i in range(16)))


def test_empty_merge_identity():
    s = FleetSummary(("kernel",))
    assert s.merge(FleetSummary(("kernel",))).canonical() == s.canonical()


def _cli(*args: str):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return subprocess.run([sys.executable, "-m", "tracer.cli", *args], capture_output=True, text=True, env=env)


def test_cli_summary_rule_and_errors(tmp_path):
    few = [str(_write(tmp_path / f"r{i}.parquet", host=f"h{i}", seed=i)) for i in range(3)]
    detailed = _cli("report", "-f", "json", *few)
    assert detailed.returncode == 0 and "attribution" in detailed.stdout and '"report": "fleet"' not in detailed.stdout
    summary = _cli("report", "-f", "json", "--by", "host", *few)
    assert summary.returncode == 0 and json.loads(summary.stdout)["runs"] == 3
    bad = _cli("report", "--detailed", "--engine", "local", *few)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "tracer: error:" in bad.stderr
    bad = _cli("compare", "--by", "kernel", *few)  # one kernel: nothing to compare
    assert bad.returncode == 2 and "two" in bad.stderr and bad.stderr.count("\n") == 1
    (tmp_path / "junk.parquet").write_text("junk")
    skipped = _cli("report", "--summary", *few, str(tmp_path / "junk.parquet"))
    assert skipped.returncode == 0 and skipped.stderr.count("tracer: skipped:") == 1 and "3 runs" in skipped.stdout


def test_group_key_of_another_workload_is_the_detailed_reports(tmp_path):
    from analysis.frame import group_key

    rows = fork_rows(25, vmas=57, comm="redis-server", failed=[0, 1])
    meta = _meta(rows, workload={"kind": "command", "command": ["redis-server"]})
    path = write_synthetic(tmp_path / "redis.parquet", rows, meta)
    (key,) = summarize_file(path).groups
    k = group_key(load_recording(path))
    assert key == (k.workload, k.layout, k.vmas) == ("redis-server", "", 57)
    twice = summarize_files([path, str(path)], (), Engine("local", workers=1))  # given twice: one run
    assert twice.files == 1 and sum(g.runs for g in twice.groups.values()) == 1
