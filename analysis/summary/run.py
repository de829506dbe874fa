"""One recording (one run) reduced to a FleetSummary, streaming its rows batch by batch.

Only the columns the summary needs are read (pyarrow's ParquetFile.iter_batches),
so memory is one batch of a few columns, whatever the file's size. The
metadata is checked as analysis.recording.reader checks it, the columns as
its load_recording() casts them, and the phases come from the one formula
(analysis.recording.phases.phase_arrays). A file that cannot be read is not an
error of the whole: summarize_file() returns it as skipped, with one line.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from analysis.errors import TracerError
from analysis.recording.phases import TIMESTAMPS, phase_arrays
from analysis.files import open_input
from analysis.recording.reader import _READ_ERRORS, _first_line, _read_metadata
from analysis.recording.schema import FORK_SCHEMA, REQUIRED_COLUMNS
from analysis.summary.column import ColumnSummary
from analysis.summary.group import COLUMNS, FleetSummary, GroupSummary, Unit

__all__ = ["BATCH_ROWS", "BY_ALIASES", "LACKABLE", "summarize_file", "by_value", "run_id"]

BATCH_ROWS = 1 << 18  # rows per batch: ~30 MB of the columns read, whatever the file holds

# Short names for --by, as metadata key paths.
BY_ALIASES: dict[str, str] = {
    "kernel": "kernel.release",
    "host": "host.hostname",
    "cpu_model": "host.cpu_model",
    "cpus": "host.cpus",
    "level": "level",
    "backend": "backend",
    "algorithm": "algorithm.name",
    "series": "run.series",
    "arm": "run.arm",
}
GROUP_KEYS = ("workload", "layout", "vmas")  # already in every group key

# Columns a recording of an older format lacks, with what the summary does without them.
LACKABLE: dict[str, str] = {
    "partial": "no fork counts as partial",
    "min_step_ns": "mt_dup subtracts the mean VMA step",
    "offcpu_ns": "dup_mmap_oncpu includes off-CPU time",
    "clone_ns": "no clone times",
    "exit_mmap_ns": "no exit_mmap times",
    "wait_ns": "no wait times",
}
_CYCLE = {"clone": "clone_ns", "exit_mmap": "exit_mmap_ns", "wait": "wait_ns"}


def summarize_file(path: str | Path, by: Sequence[str] = (), batch_rows: int = BATCH_ROWS) -> FleetSummary:
    """The summary of one recording; an unreadable one comes back in `skipped` with its reason."""
    by = tuple(by)
    try:
        return _summarize(Path(path), by, batch_rows)
    except TracerError as err:
        return FleetSummary(by, {}, {str(path): str(err)}, 1)
    except _READ_ERRORS as err:  # corrupt pages met while streaming
        return FleetSummary(by, {}, {str(path): f"{path} is corrupt: {_first_line(err)}"}, 1)


def _summarize(path: Path, by: tuple[str, ...], batch_rows: int) -> FleetSummary:
    # Regular files only, opened once (a FIFO or device is refused, not waited on).
    f = open_input(path, "recording")
    try:
        return _summarize_open(path, f, by, batch_rows)
    finally:
        f.close()


def _summarize_open(path: Path, f, by: tuple[str, ...], batch_rows: int) -> FleetSummary:
    try:
        parquet = pq.ParquetFile(f, page_checksum_verification=True)
        # The file's key/value metadata: the forktrace document whether or not the Arrow schema repeats it.
        kv = parquet.metadata.metadata or {}
        names = parquet.schema_arrow.names
    except PermissionError:
        raise TracerError(f"recording {path} is not readable (permission denied)") from None
    except _READ_ERRORS as err:
        raise TracerError(f"{path} is not a readable Parquet file (truncated or corrupt?): {_first_line(err)}") from None
    meta = _read_metadata(path, kv)
    missing = [name for name in REQUIRED_COLUMNS if name not in names]
    if missing:
        raise TracerError(f"{path} lacks fork columns: {', '.join(missing)}")

    have = set(names)
    workload = meta.get("workload") if isinstance(meta.get("workload"), dict) else {}
    spawn = workload.get("kind") == "spawn" and isinstance(workload.get("extra_vmas"), int)
    methods = meta.get("methods") if isinstance(meta.get("methods"), dict) else {}
    exact: dict[str, str] = {}
    if any(str(m or "").startswith("exact") for m in methods.values()):
        from analysis.recording.exact import EXACT_PHASE_COLUMNS  # pandas comes with it: only where needed

        exact = {p: c for p, c in EXACT_PHASE_COLUMNS.items() if str(methods.get(p) or "").startswith("exact") and c in have}
    wanted = [*TIMESTAMPS, "stores", "failed", "leaves", *(c for c in LACKABLE if c in have), *exact.values()]
    if not spawn:
        wanted.append("comm")

    g = GroupSummary()
    stores_seen: Counter[int] = Counter()
    comms: Counter[str] = Counter()
    for batch in parquet.iter_batches(batch_size=batch_rows, columns=wanted):
        cols = _arrays(path, batch)
        _add_batch(g, cols, len(batch), exact, stores_seen)
        if not spawn:
            usable_comm = np.asarray(cols["comm"], dtype=object)[cols["_usable"]]
            comms.update(usable_comm.tolist())

    if spawn:
        key_base: tuple = ("spawn", str(workload.get("layout") or "gapped"), int(workload["extra_vmas"]))
    else:
        comm = comms.most_common(1)[0][0] if comms else "?"
        key_base = (comm, "", _median_of_counts(stores_seen))
    key = key_base + tuple(by_value(meta, name) for name in by if name not in GROUP_KEYS)

    for column in LACKABLE:
        if column not in have:
            g.lacks[column] = 1
    level = str(meta.get("level") or "phase (not recorded)")
    g.levels[level] = 1
    for phase, method in methods.items():
        g.methods[str(phase)] = {str(method): 1}
    _add_stacks(path, g, meta)

    run = run_id(meta, path)
    g.units[str(path)] = Unit(
        run=run,
        path=str(path),
        host=_str_or_none(by_value(meta, "host")),
        kernel=_str_or_none(by_value(meta, "kernel")),
        usable=g.counts["usable"],
        medians={c: g.columns[c].quantile(0.5) for c in COLUMNS},
    )
    return FleetSummary(tuple(by), {key: g}, {}, 1)


def _arrays(path: Path, batch: pa.RecordBatch) -> dict[str, np.ndarray]:
    """The batch's columns as numpy, cast to the format's types; nulls refused as the reader refuses them."""
    out: dict[str, np.ndarray] = {}
    for name, column in zip(batch.schema.names, batch.columns):
        if column.null_count:
            raise TracerError(f"{path}: fork column {name} holds null values")
        try:
            column = column.cast(FORK_SCHEMA.field(name).type)
        except _READ_ERRORS as err:
            raise TracerError(f"{path}: fork column {name} has an unexpected type: {_first_line(err)}") from None
        out[name] = column.to_numpy(zero_copy_only=False)
    return out


def _add_batch(
    g: GroupSummary, cols: dict[str, np.ndarray], rows: int, exact: Mapping[str, str], stores_seen: Counter[int]
) -> None:
    derived = phase_arrays(cols, rows)
    usable = derived["usable"]
    cols["_usable"] = usable
    failed = cols["failed"].astype(bool)
    partial = cols["partial"].astype(bool) if "partial" in cols else np.zeros(rows, dtype=bool)
    stores = cols["stores"].astype("int64")
    counts = g.counts
    counts["forks"] += rows
    counts["usable"] += int(usable.sum())
    counts["failed"] += int(failed.sum())
    counts["partial"] += int(partial.sum())
    counts["unordered"] += int((~derived["bracket_ok"] & ~failed & ~partial).sum())
    counts["no_stores"] += int((usable & (stores == 0)).sum())
    counts["mt_dup_clamped"] += int((usable & derived["mt_dup_clamped"]).sum())

    for phase in ("dup_mmap", "mt_dup", "vma_loop", "vma_step", "tail", "dup_mmap_oncpu"):
        source = cols[exact[phase]] if phase in exact else derived[f"{phase}_ns"]
        g.columns[phase].add(source[usable])
    for part, column in _CYCLE.items():
        if column in cols:
            g.columns[part].add(cols[column][usable])
        else:
            g.columns[part].missing += int(usable.sum())
    copied = usable & (stores > 0)
    g.columns["stores"].add(stores[copied].astype("float64"))
    g.columns["leaves"].add(cols["leaves"][copied].astype("float64"))
    values, n = np.unique(stores[usable], return_counts=True)  # the group's VMA count, as analysis.frame.group_key takes it
    stores_seen.update(dict(zip(values.tolist(), n.tolist())))


def _median_of_counts(counts: Counter[int]) -> int:
    """np.median of the values counted, as an int (the group key's VMA count); 0 when none."""
    total = sum(counts.values())
    if not total:
        return 0
    ordered = sorted(counts.items())
    lo_rank, hi_rank = (total - 1) // 2, total // 2
    seen, lo = 0, None
    for value, n in ordered:
        seen += n
        if lo is None and seen > lo_rank:
            lo = value
        if seen > hi_rank:
            return int((lo + value) / 2)
    raise AssertionError("unreachable")


def _add_stacks(path: Path, g: GroupSummary, meta: Mapping[str, Any]) -> None:
    sample = meta.get("sample")
    if not isinstance(sample, dict):
        return
    if isinstance(sample.get("hz"), int):
        g.sample_hz[sample["hz"]] = 1
    for i, entry in enumerate(sample.get("stacks") or []):
        try:
            stack, phase, count = str(entry["stack"]), str(entry["phase"]), int(entry["count"])
        except (KeyError, TypeError, ValueError):
            raise TracerError(f"{path}: sampled stack entry {i} lacks stack, phase or count") from None
        g.stacks[(phase, stack)] = g.stacks.get((phase, stack), 0) + count


def by_value(meta: Mapping[str, Any], name: str) -> str | int | None:
    """The value of metadata key path `name` (or its alias: kernel, host, cpu_model, ...); None where absent."""
    value: Any = meta
    for part in BY_ALIASES.get(name, name).split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value if not isinstance(value, float) else repr(value)
    return repr(value)  # a dict or list: its text, so equal values group together


def run_id(meta: Mapping[str, Any], path: Path) -> str:
    """The run's id where the recording names one (metadata `run.id`), else its file."""
    run = meta.get("run")
    if isinstance(run, dict) and run.get("id") not in (None, ""):
        return str(run["id"])
    return str(path)


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
