"""Synthetic recordings, written with the real writer, for tests.

The rows follow the bracket order the probes see on a real kernel (parent lock,
child lock, first store, ..., last store, child unlock, parent unlock) with
known per-phase costs, so a test can check what analysis derives against what
was put in rather than against what the implementation happens to return.

    rows = fork_rows(100, vmas=1600, mt_dup_ns=40_000, vma_step_ns=900)
    path = write_synthetic(tmp_path / "rec.parquet", rows)
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Iterable, Mapping

from analysis.recording.writer import write_recording

__all__ = ["MONO_BASE_NS", "fork_row", "fork_rows", "default_metadata", "write_synthetic"]

# bracket.c times the first 1 + MIN_STEP_STEPS stores (MIN_STEP_STORES there).
MIN_STEP_STEPS = 16

# A plausible CLOCK_MONOTONIC value (~3 h of uptime), so subtraction bugs show.
MONO_BASE_NS = 11_000_000_000_000


def fork_row(
    start_ns: int,
    *,
    vmas: int,
    mt_dup_ns: float,
    vma_step_ns: float,
    first_step_ns: float | None = None,
    lock_gap_ns: int = 1_500,
    tail_ns: int = 20_000,
    child_unlock_before_end_ns: int = 2_000,
    leaves: int | None = None,
    pid: int = 4242,
    tid: int | None = None,
    comm: str = "spawn",
    cpu: int = 1,
    child_pid: int = 5000,
    failed: bool = False,
    partial: bool = False,
    null_stores: int = 0,
    step_jitter_ns: int = 0,
    cycle: tuple[int, int, int] | None = None,
    steps_ns: list[int] | None = None,
    rng: random.Random | None = None,
) -> dict[str, Any]:
    """One dup_mmap row starting at `start_ns` with the given phase costs.

    The first store comes `mt_dup_ns + first_step_ns` after the child lock
    (first_step_ns defaults to vma_step_ns: the model the frame corrects for);
    then `vmas - 1` steps of `vma_step_ns` (+- uniform jitter); the parent unlock
    comes `tail_ns` after the last store. vmas == 0 gives a row with no stores.
    cycle: (clone_extra_ns, exit_mmap_ns, wait_ns) for the spawn cycle's columns:
    the clone syscall spans the bracket plus clone_extra_ns; the child's
    exit_mmap and the parent's wait follow it. None: not seen (as without --cycle).
    `steps_ns` (vmas - 1 values) gives each step instead, and min_step_ns is
    then what the probe records: the shortest of the first MIN_STEP_STEPS.
    """
    rng = rng or random.Random(0)
    first_step = vma_step_ns if first_step_ns is None else first_step_ns
    parent_lock = int(start_ns)
    child_lock = parent_lock + lock_gap_ns
    if vmas > 0:
        first_store = child_lock + int(round(mt_dup_ns + first_step))
        last_store = first_store
        if steps_ns is None:
            steps = []
            for _ in range(vmas - 1):
                jitter = rng.randint(-step_jitter_ns, step_jitter_ns) if step_jitter_ns else 0
                steps.append(max(1, int(round(vma_step_ns)) + jitter))
        else:
            assert len(steps_ns) == vmas - 1, "steps_ns: one per store after the first"
            steps = list(steps_ns)
        last_store += sum(steps)
        parent_unlock = last_store + tail_ns
    else:
        first_store = last_store = 0
        steps = []
        parent_unlock = child_lock + int(round(mt_dup_ns)) + tail_ns
    child_unlock = max(parent_unlock - child_unlock_before_end_ns, last_store, child_lock)
    return {
        "ts_parent_lock": parent_lock,
        "ts_child_lock": child_lock,
        "ts_first_store": first_store,
        "ts_last_store": last_store,
        "ts_child_unlock": child_unlock,
        "ts_parent_unlock": parent_unlock,
        "pid": pid,
        "tid": pid if tid is None else tid,
        "comm": comm,
        "cpu": cpu,
        "child_pid": -1 if failed else child_pid,
        "stores": vmas,
        "null_stores": null_stores,
        "zero_stores": 1 if failed else 0,
        "other_writes": 0,
        "leaves": (max(1, -(-vmas // 10)) if vmas else 0) if leaves is None else leaves,
        "parent_map_count": vmas + null_stores,
        "failed": failed,
        "partial": partial,
        "min_step_ns": min(steps[:MIN_STEP_STEPS]) if steps_ns is not None and vmas >= 2 else 0,
        # Never switched out: synthetic brackets are all on-CPU time.
        "offcpu_ns": 0, "offcpu_mt_dup_ns": 0, "offcpu_vma_loop_ns": 0, "offcpu_tail_ns": 0, "switches": 0,
        **_cycle_columns(parent_lock, parent_unlock, None if failed else cycle),
    }


def _cycle_columns(parent_lock: int, parent_unlock: int, cycle: tuple[int, int, int] | None) -> dict[str, Any]:
    if cycle is None:
        nan = float("nan")
        return {"ts_clone": 0, "clone_ns": nan, "ts_exit_mmap": 0, "exit_mmap_ns": nan, "ts_wait": 0, "wait_ns": nan}
    clone_extra, exit_mmap, wait = cycle
    ts_clone = parent_lock - clone_extra // 2
    clone_end = parent_unlock + clone_extra - clone_extra // 2
    return {
        "ts_clone": ts_clone,
        "clone_ns": float(clone_end - ts_clone),
        "ts_exit_mmap": clone_end + 1_000,
        "exit_mmap_ns": float(exit_mmap),
        "ts_wait": clone_end + 500,
        "wait_ns": float(wait),
    }


def fork_rows(
    n: int,
    *,
    vmas: int = 40,
    mt_dup_ns: float = 5_000,
    vma_step_ns: float = 600,
    gap_ns: int = 50_000,
    failed: Iterable[int] = (),
    seed: int = 1,
    **row_kwargs: Any,
) -> list[dict[str, Any]]:
    """`n` consecutive forks by one process, `gap_ns` apart; indices in `failed` fail."""
    rng = random.Random(seed)
    failed_set = set(failed)
    rows, start = [], MONO_BASE_NS
    for i in range(n):
        row = fork_row(
            start,
            vmas=vmas,
            mt_dup_ns=mt_dup_ns,
            vma_step_ns=vma_step_ns,
            child_pid=10_000 + i,
            failed=i in failed_set,
            rng=rng,
            **row_kwargs,
        )
        rows.append(row)
        start = row["ts_parent_unlock"] + gap_ns
    return rows


def default_metadata(rows: list[Mapping[str, Any]] | None = None, **overrides: Any) -> dict[str, Any]:
    """A metadata document shaped like `tracer record --spawn` writes, per METADATA_FIELDS."""
    rows = rows or []
    start = rows[0]["ts_parent_lock"] - 1_000_000 if rows else MONO_BASE_NS
    end = rows[-1]["ts_parent_unlock"] + 1_000_000 if rows else MONO_BASE_NS + 1_000_000_000
    vmas = rows[0]["stores"] if rows else 0
    meta: dict[str, Any] = {
        "tool_version": "0.1.0",
        "kernel": {"release": "6.18.0-test-amd64", "version": "#1 SMP PREEMPT_DYNAMIC Debian 6.18", "machine": "x86_64"},
        "host": {"hostname": "testhost", "cpus": 2, "cpu_model": "Synthetic CPU", "lockdown": "integrity"},
        "backend": "raw_tracepoint",
        "methods": {
            "dup_mmap": "bracket",
            "mt_dup": "bracket-corrected",
            "vma_loop": "bracket",
            "tail": "bracket",
        },
        "probes": {},
        "headers": "/usr/src/linux-headers-6.18.0-test",
        "targets": {"mode": "spawn", "pids": [4242], "command": None},
        "workload": {"kind": "spawn", "extra_vmas": max(vmas - 30, 0), "forks": len(rows), "cpu": 1, "vmas_total": vmas},
        "start": {"wall": "2026-01-01T00:00:00Z", "mono_ns": start},
        "end": {"wall": "2026-01-01T00:00:10Z", "mono_ns": end},
        "lost": {"ringbuf": 0, "unpaired": 0},
        "events": {"ma_write": sum(r["stores"] for r in rows), "lock_events": 4 * len(rows), "forks": len(rows)},
        "sample": None,
        "maps": [],
    }
    meta.update(overrides)
    return meta


def write_synthetic(
    path: Path,
    rows: list[Mapping[str, Any]] | None = None,
    meta: Mapping[str, Any] | None = None,
    **row_kwargs: Any,
) -> Path:
    """Write `rows` (default: fork_rows(20, **row_kwargs)) with `meta` through the real writer."""
    if rows is None:
        rows = fork_rows(20, **row_kwargs)
    if meta is None:
        meta = default_metadata(list(rows))
    write_recording(Path(path), rows, meta)
    return Path(path)


# ---------------------------------------------------------------- known costs


def spawn_maps(extra: int, base: int = 6, page: int = 4096) -> str:
    """/proc/PID/maps text shaped like the spawn workload's: `base` file VMAs, then `extra`
    one-page anonymous rw-p VMAs a page apart (what spawn.c leaves), then a stack."""
    lines = []
    addr = 0x555555554000
    for i in range(base):
        lines.append(f"{addr:x}-{addr + page:x} {'r--p' if i % 2 else 'r-xp'} {i * page:08x} 08:01 1234 /usr/bin/spawn")
        addr += page
    region = 0x7F0000000000
    for i in range(extra):
        lo = region + (2 * i + 1) * page
        lines.append(f"{lo:x}-{lo + page:x} rw-p 00000000 00:00 0")
    stack = 0x7FFFFFFDE000
    lines.append(f"{stack:x}-{stack + 33 * page:x} rw-p 00000000 00:00 0 [stack]")
    return "\n".join(lines) + "\n"


def costed_rows(
    n: int, *, stores: int, total_ns: float, noise_ns: float = 0.0, leaves: int = 1, seed: int = 0,
    mt_dup_ns: float | None = None,
) -> list[dict[str, Any]]:
    """`n` forks of `stores` VMAs whose dup_mmap takes total_ns (+ gaussian noise_ns) each.

    The time is laid out as the bracket sees it: 1.5 us lock gap, 10% in
    mt_dup (or mt_dup_ns), 2 us tail, the rest spread evenly over the VMA steps.
    """
    rng = random.Random(seed)
    rows, start = [], MONO_BASE_NS
    for i in range(n):
        total = max(total_ns + rng.gauss(0.0, noise_ns), 10_000.0)
        lock_gap, tail = 1_500, 2_000
        mt_dup = 0.1 * total if mt_dup_ns is None else mt_dup_ns
        step = (total - lock_gap - tail - mt_dup) / max(stores, 1)
        row = fork_row(start, vmas=stores, mt_dup_ns=mt_dup, vma_step_ns=step, lock_gap_ns=lock_gap, tail_ns=tail,
                       leaves=leaves, child_pid=10_000 + i, child_unlock_before_end_ns=1_000)
        rows.append(row)
        start = row["ts_parent_unlock"] + 50_000
    return rows


def write_costed(
    path: Path,
    extra: int,
    costs: Mapping[str, float],
    fixed_ns: float,
    *,
    n: int = 200,
    noise_ns: float = 0.0,
    seed: int = 0,
    sample: Mapping[str, Any] | None = None,
    mt_dup_ns: float | None = None,
) -> Path:
    """A spawn recording at `extra` VMAs whose forks cost fixed_ns + sum(costs[count] * model count).

    The counts are the replay model's for the saved layout (as the analysis
    computes them), so a fit must recover `costs` up to its noise.
    """
    from analysis.attribution.counts import counts_for_layout
    from analysis.recording.layout import parse_maps

    maps = spawn_maps(extra)
    workload = {"kind": "spawn", "pid": 4242, "extra_vmas": extra, "forks": n, "forks_per_sec": 1000.0}
    counts, _ = counts_for_layout(parse_maps(maps), workload, None)
    total = fixed_ns + sum(cost * counts.unit(name) for name, cost in costs.items())
    rows = costed_rows(n, stores=counts.stores, total_ns=total, noise_ns=noise_ns, leaves=counts.predicted_leaves,
                       seed=seed, mt_dup_ns=mt_dup_ns)
    meta = default_metadata(rows, workload=workload, sample=sample,
                            maps=[{"pid": 4242, "comm": "spawn", "ts_mono_ns": MONO_BASE_NS, "maps": maps}])
    write_recording(Path(path), rows, meta)
    return Path(path)
