"""`record --runs N`: several runs, and A/B arms interleaved, from one tracer process.

A run is one fresh workload process traced once; compare replicates runs,
not forks (analysis.compare.runs). The BPF programs are loaded once and serve
every run (a compile costs 10-30 s, a run seconds): between runs the targets
are cleared and counters restarted (ProbeSet.new_run).

Arms (an A/B on one kernel) come from one option given a list:
`--layout gapped,adjacent`, `--spawn 100,400`, or `-- CMD_A ::: CMD_B`. Their runs
alternate, A B, B A, A B ..., so drift during the series (frequency,
co-tenants, memory state) is shared by both arms rather than taken for the
change, and compare pairs each round's A with its B (analysis.compare.across).

Output: one run writes FILE as before. Several runs (or arms) write a
directory, as a perf user gets one file per run: DIR/run-01.parquet ... or,
with arms, DIR/<arm>/run-01.parquet, so `tracer compare DIR/A DIR/B` compares
the arms. A directory that already holds recordings is refused: runs of two
series in one directory would be compared as one side.
"""

from __future__ import annotations

import copy
import os
import platform
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from analysis.errors import UsageError
from analysis.files import Directory

__all__ = ["ARM_SEPARATOR", "Arm", "RunPlan", "arms_of", "plan_runs", "run_entry", "series_dir"]

# Separates the arms' commands: `tracer record --runs 5 -- ./a ::: ./b` (as GNU parallel's).
ARM_SEPARATOR = ":::"


@dataclass(frozen=True)
class Arm:
    label: str  # '' for a single arm
    opts: object  # RecordOptions with this arm's one value


@dataclass(frozen=True)
class RunPlan:
    arm: Arm
    index: int  # 1-based within its arm
    order: int  # 1-based position in the whole series
    path: Path


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",")]


def arms_of(opts) -> list[Arm]:
    """The arms the options ask for: the one option given a list, each value one arm."""
    varied = []
    if ARM_SEPARATOR in opts.command:
        varied.append("command")
    if "," in (opts.layout or ""):
        varied.append("layout")
    if isinstance(opts.spawn_list, list) and len(opts.spawn_list) > 1:
        varied.append("spawn")
    if len(opts.inject_store_ns) > 1:
        varied.append("inject")
    if len(varied) > 1:
        raise UsageError(f"A/B arms vary one thing at a time, not {' and '.join(varied)}")
    if not varied:
        return [Arm("", _with(opts))]
    arms = []
    if varied == ["command"]:
        commands, current = [], []
        for word in opts.command:
            if word == ARM_SEPARATOR:
                commands.append(current)
                current = []
            else:
                current.append(word)
        commands.append(current)
        if any(not c for c in commands):
            raise UsageError(f"an empty command around {ARM_SEPARATOR}: give CMD_A {ARM_SEPARATOR} CMD_B")
        for i, command in enumerate(commands):
            arms.append(Arm(chr(ord("A") + i), _with(opts, command=command)))
    elif varied == ["layout"]:
        for layout in _split(opts.layout):
            arms.append(Arm(layout, _with(opts, layout=layout)))
    elif varied == ["spawn"]:
        for vmas in opts.spawn_list:
            arms.append(Arm(f"spawn{vmas}", _with(opts, spawn_vmas=vmas, spawn_list=[vmas])))
    else:
        for ns in opts.inject_store_ns:
            arms.append(Arm(f"inject{ns}", _with(opts, inject_store_ns=(ns,))))
    labels = [a.label for a in arms]
    if len(set(labels)) != len(labels):  # an A/A check (--layout gapped,gapped): repeated arms numbered
        seen: dict[str, int] = {}
        for i, arm in enumerate(arms):
            if labels.count(arm.label) > 1:
                seen[arm.label] = seen.get(arm.label, 0) + 1
                arms[i] = Arm(f"{arm.label}.{seen[arm.label]}", arm.opts)
    return arms


def _with(opts, **changes):
    out = copy.copy(opts)
    for key, value in changes.items():
        setattr(out, key, value)
    return out


def series_dir(opts, now: datetime | None = None) -> Path:
    """forktrace-<mode>[-<vmas>]-<kernel>-<time>/ in the current directory."""
    now = now or datetime.now()
    tag = opts.mode if opts.spawn_vmas is None else f"spawn{opts.spawn_vmas}"
    return Path(f"forktrace-{tag}-{platform.release()}-{now:%Y%m%d-%H%M%S}")


def plan_runs(opts, arms: list[Arm], runs: int, directory: Path) -> list[RunPlan]:
    """Every run's arm and file, in recording order: each round runs every arm once, the order
    rotated each round (A B, B A, ...; A B C, B C A, ...) so that no arm always runs first."""
    width = max(2, len(str(runs)))
    plans = []
    for i in range(1, runs + 1):
        shift = (i - 1) % len(arms)
        for arm in arms[shift:] + arms[:shift]:
            where = directory / arm.label if arm.label else directory
            plans.append(RunPlan(arm, i, len(plans) + 1, where / f"run-{i:0{width}d}.parquet"))
    return plans


def check_series_dir(directory: Path, arms: list[Arm]) -> None:
    """A new or recording-free directory (and arm subdirectories), creatable now."""
    for where in [directory] + [directory / a.label for a in arms if a.label]:
        if where.exists() and not where.is_dir():
            raise UsageError(f"{where} exists and is not a directory (with --runs or A/B arms, -o names a directory)")
        if where.is_dir() and any(where.glob("*.parquet")):
            raise UsageError(f"{where} already holds recordings: a new series needs its own directory")
    for where in [directory] + [directory / a.label for a in arms if a.label]:
        # Made and checked as every output directory is (analysis.files): no links
        # planted by other users, no world-writable parents; each run's file is
        # checked again when written.
        Directory.open(where, create=True).close()
        if not os.access(where, os.W_OK):
            raise UsageError(f"{where} is not writable")


def run_entry(plan: RunPlan | None, series: str, runs: int, inject_ns: int) -> dict:
    """The recording's `run` metadata: what compare groups runs by."""
    entry = {
        "id": str(uuid.uuid4()),
        "series": series,
        "index": plan.index if plan else 1,
        "of": runs,
        "arm": plan.arm.label if plan else "",
        "order": plan.order if plan else 1,
    }
    if inject_ns:
        entry["inject_store_ns"] = inject_ns  # a test-only injected cost (bracket.c INJECT_STORE)
    return entry
