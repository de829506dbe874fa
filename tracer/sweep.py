"""`tracer sweep`: the built-in workload at the seed's VMA counts, both layouts, one directory.

The review thread's benchmark ran spawn at 0 to 6400 extra VMAs; a sweep
records each count in each layout (holes between the VMAs, as there, and
none) with the cycle and, by default, sampling, so that one report over the
directory can explain the curve part by part. The two layouts at one count
are recorded back to back, so slow drift on a shared host hits both alike.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from analysis.errors import TracerError, UsageError
from tracer.workload.spawn import SEED_VMAS

__all__ = ["DEFAULT_VMAS", "SweepOptions", "recording_name", "parse_list", "sweep"]

DEFAULT_VMAS = SEED_VMAS
LAYOUTS = ("gapped", "adjacent")
INDEX = "index.json"


@dataclass
class SweepOptions:
    output: Path
    vmas: tuple[int, ...] = DEFAULT_VMAS
    layouts: tuple[str, ...] = ("adjacent", "gapped")
    forks: int = 1000
    sample_hz: int = 999
    cpu: int | None = None
    force: bool = False
    quiet: bool = False
    recordings: list[dict] = field(default_factory=list)


def parse_list(text: str, what: str, convert=str) -> tuple:
    """'0,100,200' -> (0, 100, 200); a clear one-line error for anything else."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise UsageError(f"{what} needs at least one value")
    try:
        values = tuple(convert(item) for item in items)
    except ValueError:
        raise UsageError(f"{what}: not a list of whole numbers: {text!r}") from None
    if len(set(values)) != len(values):
        raise UsageError(f"{what}: {text!r} names a value twice")
    return values


def recording_name(layout: str, vmas: int) -> str:
    """spawn-<layout>-<vmas>.parquet, zero-padded so a directory listing sorts by VMAs."""
    return f"spawn-{layout}-{vmas:05d}.parquet"


def check(opts: SweepOptions) -> None:
    """Every check that needs no BPF: bad input fails before the first recording."""
    if any(v < 0 for v in opts.vmas):
        raise UsageError("--vmas: counts must be >= 0")
    bad = [layout for layout in opts.layouts if layout not in LAYOUTS]
    if bad:
        raise UsageError(f"--layout must name {' or '.join(LAYOUTS)}, not {', '.join(bad)}")
    if opts.forks <= 0:
        raise UsageError("--forks must be positive")
    out = opts.output
    if out.exists() and not out.is_dir():
        raise TracerError(f"output {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not opts.force:
        raise TracerError(f"output directory {out} is not empty; give --force to replace the sweep's files in it")


def sweep(opts: SweepOptions, log: Callable[[str], None] | None = None) -> Path:
    """Record every (count, layout), then the index and the report; returns the directory."""
    from tracer.record import RecordOptions, record

    log = log or (lambda msg: None)
    check(opts)
    opts.output.mkdir(parents=True, exist_ok=True)
    runs = [(v, layout) for v in opts.vmas for layout in opts.layouts]
    # record() moves the tracer off the workload's CPU; every recording starts from the same CPUs.
    cpus = os.sched_getaffinity(0)
    for n, (vmas, layout) in enumerate(runs, 1):
        os.sched_setaffinity(0, cpus)
        path = opts.output / recording_name(layout, vmas)
        log(f"[{n}/{len(runs)}] spawn {vmas} extra VMAs, {layout} ...")
        record(
            RecordOptions(
                spawn_vmas=vmas, layout=layout, forks=opts.forks, cpu=opts.cpu, sample_hz=opts.sample_hz,
                output=path, quiet=True,
            ),
            log=lambda msg: None if opts.quiet else log("  " + msg),
        )
        opts.recordings.append({"file": path.name, "layout": layout, "extra_vmas": vmas})
    os.sched_setaffinity(0, cpus)
    write_index(opts)
    write_report(opts.output, log)
    return opts.output


def write_index(opts: SweepOptions) -> Path:
    """index.json: what the sweep recorded, with the model's leaves beside the observed ones."""
    from analysis.model.check import model_check
    from analysis.recording import load_recording

    entries = []
    for entry in opts.recordings:
        rec = load_recording(opts.output / entry["file"])
        w = rec.meta.get("workload") or {}
        entries.append(
            {
                **entry,
                "forks": w.get("forks"),
                "forks_per_sec": w.get("forks_per_sec"),
                "vmas_total": w.get("vmas_total"),
                "model_check": model_check(opts.output / entry["file"]),
            }
        )
    doc = {"vmas": list(opts.vmas), "layouts": list(opts.layouts), "forks": opts.forks, "sample_hz": opts.sample_hz,
           "cpu": opts.cpu, "recordings": entries}
    path = opts.output / INDEX
    tmp = path.with_name(f".{INDEX}.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def write_report(directory: Path, log: Callable[[str], None]) -> None:
    """report.md, report.json and plots/ over all recordings of the sweep: built once, rendered twice."""
    from analysis.report.plots import write_plots
    from analysis.report.summary import build_report, render_doc, report_doc

    inp = build_report([directory])
    doc = report_doc(inp)
    for fmt, name in (("markdown", "report.md"), ("json", "report.json")):
        (directory / name).write_text(render_doc(inp, doc, fmt) + "\n")
    written = write_plots(inp.attribution, directory / "plots")
    log(f"report: {directory / 'report.md'}, {directory / 'report.json'}, {len(written)} plots in {directory / 'plots'}")
