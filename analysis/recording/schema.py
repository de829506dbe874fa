"""The recording format: one Parquet file, one row per dup_mmap call.

The file is what `pandas.read_parquet()` reads directly. Its rows hold the raw
bracket timestamps (CLOCK_MONOTONIC ns, as bpf_ktime_get_ns() gives them) and
in-kernel counters; derived phases are computed by analysis.recording.phases so that a
better correction never needs a new recording. Everything else -- kernel,
backend, method per phase, lost events, workload, VMA layouts, sampled stacks --
lives in one JSON document under the Parquet key/value metadata key `forktrace`.

Bump FORMAT_VERSION on any incompatible change; readers refuse newer versions.
"""

from __future__ import annotations

import pyarrow as pa

FORMAT_VERSION = 2  # 2: ADDED_COLUMNS (readers fill the ones an older file lacks)
METADATA_KEY = b"forktrace"

# One row per traced dup_mmap() call, in the order the bracket closed.
# ts_* are the six bracket points; 0 means "not seen" for first/last store.
FORK_COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("ts_parent_lock", pa.uint64(), "mmap_lock acquired (write) on the parent mm: dup_mmap starts"),
    ("ts_child_lock", pa.uint64(), "mmap_lock acquired (write) on the child mm: __mt_dup follows"),
    ("ts_first_store", pa.uint64(), "first ma_write 'mas_store' on the child tree (0: none)"),
    ("ts_last_store", pa.uint64(), "last ma_write 'mas_store' on the child tree (0: none)"),
    ("ts_child_unlock", pa.uint64(), "mmap_lock released on the child mm"),
    ("ts_parent_unlock", pa.uint64(), "mmap_lock released on the parent mm: dup_mmap ends"),
    ("pid", pa.uint32(), "forking process (tgid)"),
    ("tid", pa.uint32(), "forking thread"),
    ("comm", pa.string(), "forking thread's comm"),
    ("cpu", pa.uint16(), "CPU at the end of dup_mmap"),
    ("child_pid", pa.int64(), "child pid from sched_process_fork (-1: fork did not complete)"),
    ("stores", pa.uint32(), "ma_write 'mas_store' of a VMA: VMAs copied"),
    ("null_stores", pa.uint32(), "'mas_store' of NULL inside dup_mmap: none expected (VM_DONTCOPY VMAs are cleared by mas_store_gfp since v6.8, skipped before: see dontcopy_vmas)"),
    ("zero_stores", pa.uint32(), "'mas_store' of XA_ZERO_ENTRY: dup_mmap failed at that VMA"),
    ("other_writes", pa.uint32(), "ma_write events from other functions inside the bracket"),
    ("leaves", pa.uint32(), "child leaf nodes the replace loop writes (changes of ma_state->node between stores); before v6.8, the nodes the bulk appends pass through (a split makes new ones)"),
    ("parent_map_count", pa.int64(), "parent mm->map_count at the child lock (-1: not readable)"),
    ("failed", pa.bool_(), "dup_mmap failed (XA_ZERO_ENTRY stored) or fork did not complete"),
]

# The functions exact probes time inside dup_mmap (column stems, leading "_" dropped:
# __mt_dup -> mt_dup), in the order of exact.h's enum child_fn.
EXACT_CHILDREN: tuple[str, ...] = ("mt_dup", "mas_store", "vm_area_dup", "undo_dup_mmap")
NAN = float("nan")


def _exact_child_columns(child: str) -> list[tuple[str, pa.DataType, str, object]]:
    function = "__mt_dup" if child == "mt_dup" else child
    call = f"{function}() calls from this dup_mmap"
    return [
        (f"exact_{child}_calls", pa.uint32(), f"{call} that returned (0 where not probed)", 0),
        (f"exact_{child}_sum_ns", pa.float64(), f"{call}: entry->exit summed (NaN: not probed)", NAN),
        (f"exact_{child}_max_ns", pa.float64(), f"{call}: longest entry->exit (NaN: not probed or not called)", NAN),
        (f"exact_{child}_first_ns", pa.float64(), f"first {function}() entry, ns after dup_mmap entry (NaN: none)", NAN),
        (f"exact_{child}_no_exit", pa.uint32(), f"{call} whose exit never came (not timed)", 0),
    ]


# Columns added after format 1, with the value a reader gives them in an older
# recording (and the writer where the rows lack them). Readers accept a file
# without these; a file without a FORK_COLUMNS column is refused.
ADDED_COLUMNS: list[tuple[str, pa.DataType, str, object]] = [
    ("partial", pa.bool_(), "bracket in flight when tracing started or stopped: not a failure, not timed", False),
    # The spawn cycle around dup_mmap (record --cycle; tracer/probes/cycle.c), joined by child pid.
    ("ts_clone", pa.uint64(), "clone/fork syscall entered in the parent (0: not seen)", 0),
    ("clone_ns", pa.float64(), "clone syscall entry -> exit in the parent; dup_mmap runs inside it (NaN: not seen)", float("nan")),
    ("ts_exit_mmap", pa.uint64(), "the child's exit_mmap starts: its read lock on its own mm (0: not seen)", 0),
    ("exit_mmap_ns", pa.float64(), "the child's exit_mmap: read lock -> write unlock of its mm (NaN: not seen)", float("nan")),
    ("ts_wait", pa.uint64(), "wait4/waitid that reaped the child entered (0: not seen)", 0),
    ("wait_ns", pa.float64(), "that wait4/waitid's entry -> exit in the parent (NaN: not seen)", float("nan")),
    ("min_step_ns", pa.uint64(), "shortest store -> next store among the first 17 stores, ns (0: stores < 2, or not recorded)", 0),
    # Off-CPU time inside the bracket (sched_switch out -> back in), child lock -> parent unlock.
    ("offcpu_ns", pa.uint64(), "time switched out (preempted or blocked) between the child lock and the parent unlock, ns (0: none, or not recorded)", 0),
    ("offcpu_mt_dup_ns", pa.uint64(), "offcpu_ns that began in the child lock -> first store window (0 at level fork)", 0),
    ("offcpu_vma_loop_ns", pa.uint64(), "offcpu_ns that began in the first store -> child unlock window (0 at level fork)", 0),
    ("offcpu_tail_ns", pa.uint64(), "offcpu_ns that began in the child unlock -> parent unlock window", 0),
    ("switches", pa.uint32(), "times the thread was switched out between the child lock and the parent unlock", 0),
    # dup_mmap and its callees timed exactly (fentry/kprobe; tracer/probes/exact.c), joined by thread and time.
    ("exact_ts_entry", pa.uint64(), "dup_mmap entry, from an exact probe (0: none matched this bracket)", 0),
    ("exact_ts_exit", pa.uint64(), "dup_mmap return, from an exact probe (0: none)", 0),
    ("exact_dup_mmap_ns", pa.float64(), "exact_ts_exit - exact_ts_entry (NaN: no exact probe)", NAN),
    ("exact_ret", pa.int64(), "dup_mmap's return value, 0 or -errno (0 also where not probed)", 0),
    *(column for child in EXACT_CHILDREN for column in _exact_child_columns(child)),
]

# The ADDED_COLUMNS that record --cycle fills: (timestamp column, duration column) per part.
CYCLE_PARTS: dict[str, tuple[str, str]] = {
    "clone": ("ts_clone", "clone_ns"),
    "exit_mmap": ("ts_exit_mmap", "exit_mmap_ns"),
    "wait": ("ts_wait", "wait_ns"),
}

FORK_SCHEMA = pa.schema(
    [pa.field(name, dtype, metadata={"doc": doc}) for name, dtype, doc in FORK_COLUMNS]
    + [pa.field(name, dtype, metadata={"doc": doc}) for name, dtype, doc, _ in ADDED_COLUMNS]
)
REQUIRED_COLUMNS: tuple[str, ...] = tuple(name for name, _, _ in FORK_COLUMNS)
COLUMN_DEFAULTS: dict[str, object] = {name: default for name, _, _, default in ADDED_COLUMNS}

# Phase durations, derived from the timestamps above (analysis.recording.phases.derive_phases)
# and written beside them so that pandas.read_parquet() alone gives them.
# Readers re-derive them from the raw columns; these are a convenience copy.
PHASE_COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("dup_mmap_ns", pa.float64(), "parent lock -> parent unlock"),
    ("mt_dup_raw_ns", pa.float64(), "child lock -> first store (__mt_dup + first VMA's pre-store work)"),
    ("mt_dup_ns", pa.float64(), "mt_dup_raw_ns less the shortest VMA step (the mean one where min_step_ns is 0), clamped at 0 (NaN: stores < 2)"),
    ("vma_loop_ns", pa.float64(), "first -> last store: stores - 1 VMA steps"),
    ("vma_step_ns", pa.float64(), "vma_loop_ns / (stores - 1)"),
    ("tail_ns", pa.float64(), "last store -> parent unlock"),
    ("dup_mmap_oncpu_ns", pa.float64(), "dup_mmap_ns less offcpu_ns: time on a CPU (off-CPU time is its own part, never in a phase's cost)"),
]

PHASE_SCHEMA = pa.schema([pa.field(name, dtype, metadata={"doc": doc}) for name, dtype, doc in PHASE_COLUMNS])

# Top-level keys of the metadata document, with what they hold.
METADATA_FIELDS = {
    "format_version": "int: FORMAT_VERSION of the writer",
    "tool_version": "str: forktrace version",
    "kernel": "{release, version, machine}: uname of the traced host",
    "host": "{hostname, cpus, cpu_model, lockdown, governor, isolated_cpus; preempt, thp, thp_defrag, smt, nohz_full, boot_params, mitigations, vulnerabilities, frequency, loadavg, cpu_quota (tracer.host.machine; absent in older recordings)}",
    "backend": "str: 'raw_tracepoint' or 'tracepoint' (how the bracket was attached)",
    "backend_reason": "str: why that backend (doctor's reason, or 'forced by --backend')",
    "level": "str: 'fork' (lock bracket only), 'phase' (plus the per-VMA program) or 'full' (plus sampling); absent: phase",
    "stores_timed": "str: 'sparse' (the first 17 stores and the last) or 'every' (no __mt_dup: the last store is not known in advance, so every store is timed, at more cost per VMA); absent: sparse",
    "per_vma_program": "{type: 'tp_btf' (BTF-typed: plain reads), 'raw_tracepoint' (probe reads) or 'tracepoint', or null at level fork; refused: why not tp_btf, or null}; absent: not recorded",
    "methods": "{phase: method}: how each phase was obtained (exact, bracket, bracket-corrected, sampled, unavailable)",
    "exact": "{attach: {function: {via, symbol}}, counters, missed, unmatched, unmatched_calls: first 20 [{tid, seq, ts_entry, dup_mmap_ns}]} or null: the exact probes beside the bracket",
    "algorithm": "{name: 'mt_dup', 'bulk_append' or 'unknown'; evidence: [str]}: how this kernel builds the child's tree",
    "probes": "doctor's findings: per symbol and per tracepoint availability",
    "headers": "str: kernel headers bcc compiled against",
    "targets": "{mode: system|pid|command|spawn, pids, command}",
    "workload": "--spawn: {kind, pid, extra_vmas, forks, cpu, vmas_total, forks_per_sec, ...}; -- CMD: {kind, command, pid, exit_status}; else null",
    "start": "{wall: ISO-8601 UTC, mono_ns}",
    "end": "{wall, mono_ns}",
    "lost": "{ringbuf: records dropped in the kernel, unpaired: brackets that never closed after attach (anomalies); open_at_attach: those left open by attaching}",
    "events": "{lost_ringbuf, ma_write, lock_events, dups, reentry, storage_fail, samples, sample_lost}: in-kernel counters",
    "sample": "{hz, stacks: [{stack: 'a;b;c', phase, count}], lost} or null",
    "maps": "[{pid, comm, ts_mono_ns, maps: /proc/PID/maps text}]: parent VMA layouts",
    "cycle": "{backend, syscalls, events: in-kernel counters, joined: {part: forks}} or null: record --cycle",
    "run": "{id, series, index, of, arm, order; inject_store_ns (test-only injected cost)}: this run's place in its series (record --runs, A/B arms); absent in older recordings",
}


def with_defaults(table: pa.Table) -> pa.Table:
    """`table` with every ADDED_COLUMNS column it lacks, at its default, in FORK_SCHEMA order."""
    for name, default in COLUMN_DEFAULTS.items():
        if name not in table.column_names:
            field = FORK_SCHEMA.field(name)
            table = table.append_column(field, pa.array([default] * table.num_rows, type=field.type))
    return table.select(FORK_SCHEMA.names)


# -- what a reader accepts in the metadata document ---------------------------------
# A recording may come from another host or another tool: readers check the
# document once (reader.load_recording) so that report, compare and model meet
# only the types below. Keys not listed are kept and never looked at as a type.
MAX_METADATA_DEPTH = 32  # the writer's deepest is 5 (exact.missed); 5,000 levels once made RecursionError

_OBJECT, _TEXT, _NUMBER = (dict,), (str,), (int, float)
METADATA_TYPES: dict[str, tuple[type, ...]] = {
    "tool_version": _TEXT, "backend": _TEXT, "backend_reason": _TEXT, "level": _TEXT, "stores_timed": _TEXT,
    "headers": _TEXT, "kernel": _OBJECT, "host": _OBJECT, "per_vma_program": _OBJECT, "methods": _OBJECT,
    "exact": _OBJECT, "algorithm": _OBJECT, "probes": _OBJECT, "targets": _OBJECT, "workload": _OBJECT,
    "start": _OBJECT, "end": _OBJECT, "lost": _OBJECT, "events": _OBJECT, "sample": _OBJECT, "maps": (list,),
    "cycle": _OBJECT,
}


def _is(value: object, types: tuple[type, ...]) -> bool:
    return isinstance(value, types) and not isinstance(value, bool)


def metadata_problem(meta: dict) -> str | None:
    """What in a metadata document is not of the type readers use (None: nothing), in a few words."""
    for key, types in METADATA_TYPES.items():
        value = meta.get(key)
        if value is not None and not _is(value, types):
            want = {_OBJECT: "an object", _TEXT: "a string", (list,): "a list"}[types]
            return f"{key!r} must be {want} or null, not {type(value).__name__}"
    for i, entry in enumerate(meta.get("maps") or []):
        if not (isinstance(entry, dict) and _is(entry.get("pid"), (int,)) and isinstance(entry.get("maps"), str)
                and isinstance(entry.get("comm", ""), str)):
            return f"'maps' entry {i} is not an object with an integer pid and maps text"
    sample = meta.get("sample")
    if sample is not None:
        if sample.get("hz") is not None and not _is(sample["hz"], _NUMBER):
            return "'sample.hz' must be a number"
        stacks = sample.get("stacks")
        if stacks is not None and not isinstance(stacks, list):
            return "'sample.stacks' must be a list"
        for i, entry in enumerate(stacks or []):
            if not (isinstance(entry, dict) and isinstance(entry.get("stack"), str) and _is(entry.get("count"), (int,))
                    and (entry.get("phase") is None or isinstance(entry.get("phase"), str))):
                return f"'sample.stacks' entry {i} is not an object with a stack string and an integer count"
    for key in ("workload", "lost", "events", "start", "end", "kernel"):
        for sub, value in (meta.get(key) or {}).items():
            if isinstance(value, (dict, list)) and key in ("lost", "events", "start", "end"):
                return f"'{key}.{sub}' must be a number or string, not {type(value).__name__}"
    workload = meta.get("workload") or {}
    for sub in ("extra_vmas", "forks", "pid"):
        if workload.get(sub) is not None and not _is(workload[sub], (int,)):
            return f"'workload.{sub}' must be an integer"
    for sub in ("forks_per_sec", "vmas_total"):
        if workload.get(sub) is not None and not _is(workload[sub], _NUMBER):
            return f"'workload.{sub}' must be a number"
    return None
