"""A traced bench's recording is one run: its forking processes are not taken for pyperf's workers.

The fork table names the forking process but not its parent, so the spawn.c
processes of one pyperf worker cannot be told from another's (docs/runs.md).
"""

from __future__ import annotations

from analysis.compare.runs import runs_of
from analysis.recording import load_recording
from recordings import default_metadata, fork_rows, write_synthetic


def _bench_like(path, seed):
    """Forks of three spawn.c processes under one `record -- pyperf ...` session, one after another."""
    rows = []
    for k, pid in enumerate((501, 502, 503)):
        part = fork_rows(20, seed=seed + k, pid=pid, tid=pid)
        shift = k * 10_000_000_000
        for row in part:
            for key in [c for c in row if c.startswith("ts_") and row[c]]:
                row[key] += shift
        rows += part
    meta = default_metadata(rows, targets={"mode": "command", "pids": [], "command": ["python", "-m", "tracer.bench.worker"]},
                            workload={"kind": "command", "command": ["python", "-m", "tracer.bench.worker"], "pid": 500},
                            run={"id": f"run-{seed}", "series": f"series-{seed}", "index": 1, "of": 1, "arm": "", "order": 1})
    return write_synthetic(path, rows, meta)


def test_a_bench_recording_with_several_forking_processes_is_one_run(tmp_path):
    recs = [load_recording(_bench_like(tmp_path / f"b{i}.parquet", seed=10 * i)) for i in (1, 2)]
    assert all(rec.forks["pid"].nunique() == 3 for rec in recs)
    runs = runs_of(recs)
    assert [r.id for r in runs] == ["run-10", "run-20"]
    assert [r.forks for r in runs] == [60, 60]
