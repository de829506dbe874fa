"""A recording as a data frame, with dup_mmap's phases derived from its brackets.

The probes record six raw timestamps per dup_mmap() call, in the forking thread
(CLOCK_MONOTONIC ns, see tracer/recording/schema.py):

    ts_parent_lock    mmap_lock_acquire_returned, write, parent mm: dup_mmap starts
    ts_child_lock     mmap_lock_acquire_returned, write, child mm: __mt_dup follows
    ts_first_store    first maple_tree:ma_write "mas_store" on the child tree
    ts_last_store     last  maple_tree:ma_write "mas_store" on the child tree
    ts_child_unlock   mmap_lock_released, child mm
    ts_parent_unlock  mmap_lock_released, parent mm: dup_mmap ends

No probe fires where __mt_dup() returns (lib/ is built without ftrace hooks and
__mt_dup emits no tracepoint), so its cost is not bracketed directly. Between
the child lock and the first store lie __mt_dup(), the first mas_find() of
for_each_vma(), and the first VMA's pre-store work (vm_area_dup(), anon_vma_fork(),
...). Between two consecutive stores lies one per-VMA step: the rest of one
VMA's copy (copy_page_range(), ...) plus the next VMA's pre-store work. So, in
ns, as float (NaN where not measurable):

    dup_mmap_ns   = ts_parent_unlock - ts_parent_lock
    mt_dup_raw_ns = ts_first_store - ts_child_lock
    vma_loop_ns   = ts_last_store - ts_first_store           (stores - 1 steps)
    vma_step_ns   = vma_loop_ns / (stores - 1)               (stores >= 2)
    mt_dup_ns     = max(mt_dup_raw_ns - vma_step_ns, 0)      (stores >= 2)
    tail_ns       = ts_parent_unlock - ts_last_store

mt_dup_ns removes one *mean* per-VMA step from mt_dup_raw_ns: the step that
precedes the first store. It assumes the first VMA costs what the average VMA
costs; where that makes the difference negative it is clamped to 0 and
`mt_dup_clamped` is set, so a reader can count how often the assumption failed.

Rows with stores == 0, or a store timestamp of 0 ("not seen"), get NaN for every
store-based phase. A bracket whose timestamps run backwards is flagged with
`bracket_ok = False` rather than dropped. Failed forks (`failed`) stay in the
frame; `usable` marks rows that latency statistics may use (not failed, bracket
in order), so excluded rows are counted rather than silently lost.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from analysis.layout import Vma, parse_maps
from tracer.errors import TracerError
from tracer.recording.schema import FORK_SCHEMA, FORMAT_VERSION, METADATA_KEY

__all__ = ["PHASES", "Recording", "load_recording", "derive_phases"]

# Derived phase columns, in bracket order; each is "<phase>_ns" in the frame.
PHASES: tuple[str, ...] = ("dup_mmap", "mt_dup", "vma_loop", "vma_step", "tail")

_TS_ORDER = (
    "ts_parent_lock",
    "ts_child_lock",
    "ts_first_store",
    "ts_last_store",
    "ts_child_unlock",
    "ts_parent_unlock",
)

# Anything pyarrow raises on a file it cannot decode: ArrowInvalid and friends
# (ArrowException), ArrowIOError (an OSError), and plain errors from codecs.
_READ_ERRORS = (pa.ArrowException, OSError, ValueError, EOFError, IndexError, KeyError)


@dataclass
class Recording:
    """One recording: its fork rows (raw + derived phases) and its metadata document."""

    path: Path
    forks: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)

    def maps(self) -> list[tuple[int, str, list[Vma]]]:
        """Parent VMA layouts saved with the recording, as (pid, comm, VMAs)."""
        layouts = []
        for i, entry in enumerate(self.meta.get("maps") or []):
            try:
                pid, comm, text = int(entry["pid"]), str(entry.get("comm", "")), entry["maps"]
                layouts.append((pid, comm, parse_maps(text)))
            except (KeyError, TypeError, ValueError, AttributeError) as err:
                raise TracerError(f"{self.path}: saved maps entry {i} is unusable: {err}") from None
        return layouts


def load_recording(path: Path | str) -> Recording:
    """Read a recording written by tracer.recording.writer, refusing anything else.

    Every failure is a TracerError whose one line names the file.
    """
    path = Path(path)
    if not path.exists():
        raise TracerError(f"recording {path} does not exist")
    if path.is_dir():
        raise TracerError(f"recording {path} is a directory, not a file")
    try:
        # Verifies page CRCs when the writer stored them; harmless when it did not.
        parquet = pq.ParquetFile(path, page_checksum_verification=True)
        schema = parquet.schema_arrow
    except PermissionError:
        raise TracerError(f"recording {path} is not readable (permission denied)") from None
    except _READ_ERRORS as err:
        raise TracerError(f"{path} is not a readable Parquet file (truncated or corrupt?): {_first_line(err)}") from None

    meta = _read_metadata(path, schema.metadata or {})
    missing = [name for name in FORK_SCHEMA.names if name not in schema.names]
    if missing:
        raise TracerError(f"{path} lacks fork columns: {', '.join(missing)}")

    try:
        table = parquet.read(columns=FORK_SCHEMA.names)
    except _READ_ERRORS as err:
        raise TracerError(f"{path} is corrupt: {_first_line(err)}") from None
    try:
        table = table.cast(FORK_SCHEMA.remove_metadata())
    except _READ_ERRORS as err:
        raise TracerError(f"{path}: fork columns have unexpected types: {_first_line(err)}") from None
    nulls = [name for name in table.column_names if table.column(name).null_count]
    if nulls:
        raise TracerError(f"{path}: fork columns hold null values: {', '.join(nulls)}")
    forks = table.to_pandas()
    return Recording(path=path, forks=derive_phases(forks), meta=meta)


def _read_metadata(path: Path, kv: dict[bytes, bytes]) -> dict[str, Any]:
    """The forktrace JSON document, checked for a version this reader understands."""
    raw = kv.get(METADATA_KEY)
    if raw is None:
        raise TracerError(f"{path} is a Parquet file but not a forktrace recording (no {METADATA_KEY.decode()!r} metadata)")
    try:
        meta = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TracerError(f"{path}: forktrace metadata is not valid JSON: {err}") from None
    if not isinstance(meta, dict):
        raise TracerError(f"{path}: forktrace metadata is not a JSON object")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise TracerError(f"{path}: forktrace metadata has no valid format_version (got {version!r})")
    if version > FORMAT_VERSION:
        raise TracerError(
            f"{path} has recording format {version}, newer than this forktrace reads ({FORMAT_VERSION}); upgrade forktrace"
        )
    return meta


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def derive_phases(forks: pd.DataFrame) -> pd.DataFrame:
    """Return a copy of `forks` with the phase columns of the module docstring added.

    Pure: the input is not modified. Needs the ts_* columns and `stores`,
    `failed`; extra columns pass through.
    """
    df = forks.copy()
    # int64 before subtracting: uint64 differences would wrap instead of going negative.
    ts = {name: df[name].astype("int64").to_numpy() for name in _TS_ORDER}
    stores = df["stores"].astype("int64").to_numpy()
    failed = df["failed"].astype(bool).to_numpy()

    def span(end: str, start: str, valid: np.ndarray) -> np.ndarray:
        out = (ts[end] - ts[start]).astype("float64")
        return np.where(valid, out, np.nan)

    seen = {name: ts[name] != 0 for name in _TS_ORDER}
    bracket = seen["ts_parent_lock"] & seen["ts_parent_unlock"]
    stored = (stores > 0) & seen["ts_first_store"] & seen["ts_last_store"]

    dup_mmap = span("ts_parent_unlock", "ts_parent_lock", bracket)
    mt_dup_raw = span("ts_first_store", "ts_child_lock", stored & seen["ts_child_lock"])
    vma_loop = span("ts_last_store", "ts_first_store", stored)
    with np.errstate(divide="ignore", invalid="ignore"):
        vma_step = np.where(stored & (stores >= 2), vma_loop / (stores - 1), np.nan)
    corrected = mt_dup_raw - vma_step
    clamped = corrected < 0  # False where NaN
    mt_dup = np.where(clamped, 0.0, corrected)
    tail = span("ts_parent_unlock", "ts_last_store", stored & seen["ts_parent_unlock"])

    # Seen timestamps must not run backwards along the bracket.
    ordered = np.ones(len(df), dtype=bool)
    last_seen = np.zeros(len(df), dtype="int64")
    for name in _TS_ORDER:
        here = ts[name]
        ordered &= ~seen[name] | (here >= last_seen)
        last_seen = np.where(seen[name], here, last_seen)

    df["dup_mmap_ns"] = dup_mmap
    df["mt_dup_raw_ns"] = mt_dup_raw
    df["vma_loop_ns"] = vma_loop
    df["vma_step_ns"] = vma_step
    df["mt_dup_ns"] = mt_dup
    df["mt_dup_clamped"] = clamped
    df["tail_ns"] = tail
    df["bracket_ok"] = ordered & bracket
    df["usable"] = ordered & bracket & ~failed
    return df
