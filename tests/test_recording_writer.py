"""The writer: atomic, self-describing, and documented in docs/format.md."""

from __future__ import annotations

import json
import os

import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import ROOT
from analysis.errors import TracerError
from analysis.recording.schema import ADDED_COLUMNS, FORK_COLUMNS, FORMAT_VERSION, METADATA_FIELDS, METADATA_KEY, PHASE_COLUMNS
from analysis.files import Directory
from analysis.recording.writer import write_recording
from recordings import fork_rows


def test_pandas_reads_rows_and_metadata(tmp_path):
    path = tmp_path / "r.parquet"
    rows = fork_rows(5, vmas=100, mt_dup_ns=5000, vma_step_ns=900)
    write_recording(path, rows, {"backend": "raw_tracepoint"})
    df = pd.read_parquet(path)
    added = [(name, dtype, doc) for name, dtype, doc, _ in ADDED_COLUMNS]
    assert list(df.columns) == [name for name, _, _ in FORK_COLUMNS + added + PHASE_COLUMNS]
    assert len(df) == 5 and (df.stores == rows[0]["stores"]).all()
    # The phase copies are what the bracket timestamps say.
    assert (df.dup_mmap_ns == (df.ts_parent_unlock.astype("int64") - df.ts_parent_lock.astype("int64"))).all()
    assert (df.vma_loop_ns == (df.ts_last_store.astype("int64") - df.ts_first_store.astype("int64"))).all()
    assert ((df.vma_step_ns - df.vma_loop_ns / (df.stores - 1)).abs() < 1e-6).all()
    meta = json.loads(pq.read_schema(path).metadata[METADATA_KEY])
    assert meta["format_version"] == FORMAT_VERSION and meta["backend"] == "raw_tracepoint"


def test_recording_gets_ordinary_file_mode(tmp_path):
    path = tmp_path / "r.parquet"
    old = os.umask(0o022)
    try:
        write_recording(path, fork_rows(1, vmas=10, mt_dup_ns=1000, vma_step_ns=500), {})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_failed_write_leaves_previous_file_and_no_temp(tmp_path):
    path = tmp_path / "r.parquet"
    write_recording(path, fork_rows(2, vmas=10, mt_dup_ns=1000, vma_step_ns=500), {})
    before = path.read_bytes()
    with pytest.raises(Exception):
        write_recording(path, [{"stores": "not a number"}], {})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.parquet"]


def test_unwritable_destinations_are_one_line_errors(tmp_path):
    with pytest.raises(TracerError, match="does not exist"):
        write_recording(tmp_path / "missing" / "r.parquet", fork_rows(1), {})
    with pytest.raises(TracerError, match="directory"):
        write_recording(tmp_path, fork_rows(1), {})
    (tmp_path / "sub").mkdir()
    with pytest.raises(TracerError, match="is a directory"):
        Directory.open(tmp_path).check_target("sub")


def test_format_doc_documents_every_column_and_metadata_key():
    readme = (ROOT / "docs" / "format.md").read_text()
    added = [(name, dtype, doc) for name, dtype, doc, _ in ADDED_COLUMNS]
    for name, dtype, doc in FORK_COLUMNS + added + PHASE_COLUMNS:
        assert f"| `{name}` | {dtype} | {doc} |" in readme, name
    for key in METADATA_FIELDS:
        assert f"`{key}`" in readme, key


def test_a_format_1_recording_reads_with_defaults_for_added_columns(tmp_path):
    """Columns added since format 1 are filled with their default, not refused."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from analysis.recording import load_recording
    from analysis.recording.schema import REQUIRED_COLUMNS

    rows = fork_rows(4, vmas=50)
    table = pa.Table.from_pylist([{k: r[k] for k in REQUIRED_COLUMNS} for r in rows])
    doc = {"format_version": 1}
    pq.write_table(table.replace_schema_metadata({METADATA_KEY: json.dumps(doc).encode()}), tmp_path / "v1.parquet")
    rec = load_recording(tmp_path / "v1.parquet")
    for name, _, _, default in ADDED_COLUMNS:
        if default != default:  # NaN: "not seen"
            assert rec.forks[name].isna().all(), name
        else:
            assert (rec.forks[name] == default).all(), name
    assert rec.forks["usable"].all()
