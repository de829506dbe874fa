"""`tracer sweep`: the built-in workload at the seed's VMA counts, both layouts, one directory.

The review thread's benchmark ran spawn at 0 to 6400 extra VMAs; a sweep
records each count in each layout (holes between the VMAs, as there, and
none) with the cycle and, by default, sampling, so that one report over the
directory can explain the curve part by part. The two layouts at one count
are recorded back to back, so slow drift on a shared host hits both alike.

With --runs N each (count, layout) is recorded N times, each a fresh workload
process (a run, the unit compare replicates), from one tracer process: the
BPF programs are loaded once, and the runs go round by round, every cell once
a round in an order rotated each round (tracer.record.runs.plan_runs), so the
drift of the host during the sweep is shared by all cells.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from analysis.errors import TracerError, UsageError
from analysis.files import Directory
from tracer.workload.spawn import SEED_VMAS

__all__ = ["DEFAULT_VMAS", "SweepOptions", "check_empty", "check_output_dir", "recording_name", "parse_list", "plan_sweep", "sweep"]

DEFAULT_VMAS = SEED_VMAS
LAYOUTS = ("gapped", "adjacent")
INDEX = "index.json"
# flock'd for the whole sweep: a second sweep into the directory is refused, not interleaved.
LOCK = ".forktrace-sweep.lock"


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
    runs: int = 1  # --runs: recordings (fresh workload processes) per (count, layout)
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


def recording_name(layout: str, vmas: int, run: int = 1, runs: int = 1) -> str:
    """spawn-<layout>-<vmas>.parquet, zero-padded so a directory listing sorts by VMAs;
    with several runs spawn-<layout>-<vmas>-run<NN>.parquet (one directory: `tracer report DIR` reads them all)."""
    if runs == 1:
        return f"spawn-{layout}-{vmas:05d}.parquet"
    return f"spawn-{layout}-{vmas:05d}-run{run:0{max(2, len(str(runs)))}d}.parquet"


def plan_sweep(opts: SweepOptions) -> list:
    """Every recording of the sweep, in recording order, as tracer.record.runs.RunPlan (arm: one cell).

    One run a cell: the cells in order, counts then layouts. Several: round by
    round, each cell once a round, the order rotated each round.
    """
    from tracer.record import RecordOptions
    from tracer.record.runs import Arm, plan_runs

    arms = [
        Arm(f"{layout}-{vmas}", RecordOptions(spawn_vmas=vmas, layout=layout, forks=opts.forks, cpu=opts.cpu,
                                              sample_hz=opts.sample_hz, quiet=True, runs=1))
        for vmas in opts.vmas for layout in opts.layouts
    ]
    return [replace(p, path=opts.output / recording_name(p.arm.opts.layout, p.arm.opts.spawn_vmas, p.index, opts.runs))
            for p in plan_runs(None, arms, opts.runs, opts.output)]


def check(opts: SweepOptions) -> None:
    """Every check that needs no BPF: bad input fails before the first recording."""
    if any(v < 0 for v in opts.vmas):
        raise UsageError("--vmas: counts must be >= 0")
    bad = [layout for layout in opts.layouts if layout not in LAYOUTS]
    if bad:
        raise UsageError(f"--layout must name {' or '.join(LAYOUTS)}, not {', '.join(bad)}")
    if opts.forks <= 0:
        raise UsageError("--forks must be positive")
    if opts.runs < 1:
        raise UsageError("--runs must be at least 1")
    from tracer.workload.spawn import check_args

    for vmas in opts.vmas:  # every count, so a bad one fails before the first recording
        for layout in opts.layouts:
            try:
                check_args(vmas, opts.forks, None, opts.cpu, layout)
            except TracerError as err:
                raise UsageError(f"--vmas {vmas}: {err}") from None
    check_output_dir(opts.output, opts.force)


def check_output_dir(out: Path, force: bool, what: str = "sweep") -> None:
    """A directory to be, or one empty but for the lock (else --force): `what` names the command's files."""
    if os.path.lexists(out) and not out.is_dir():
        raise UsageError(f"output {out} exists and is not a directory")
    if out.is_dir():
        check_empty(out, os.listdir(out), force, what)


def check_empty(out: Path, names: list[str], force: bool, what: str = "sweep") -> None:
    if not force and [n for n in names if n != LOCK]:
        raise UsageError(f"output directory {out} is not empty; give --force to replace the {what}'s files in it")


def sweep(opts: SweepOptions, log: Callable[[str], None] | None = None) -> Path:
    """Record every (count, layout), then the index and the report; returns the directory.

    The directory is locked for the whole sweep. A stop signal (SIGINT, SIGTERM,
    SIGHUP) ends the recording under way, which is written and marked as cut,
    and the sweep: the index and the report cover what was recorded, and the
    exit status is 128 + the signal.
    """
    from analysis.report.plots import PLOT_FILES
    from tracer.record.stopping import StopRequests

    log = log or (lambda msg: None)
    check(opts)
    runs = plan_sweep(opts)
    with Directory.open(opts.output, create=True) as directory, directory.lock(LOCK, "sweep"):
        check_empty(opts.output, directory.names(), opts.force)  # again, now that no other sweep can add files
        for run in runs:  # every name the sweep will write, before the first recording
            directory.check_target(run.path.name, keep_old=True)
        for name in (INDEX, "report.md", "report.json"):
            directory.check_target(name)
        with directory.subdirectory("plots") as plots:
            for name in PLOT_FILES:
                plots.check_target(name)
        # record() moves the tracer off the workload's CPU; every recording starts from the same CPUs.
        cpus = os.sched_getaffinity(0)
        # One run a cell: one record() each, as ever. Several: one record() for the whole
        # series, its BPF loaded once, the cells interleaved round by round.
        batches = [[run] for run in runs] if opts.runs == 1 else [runs]
        with StopRequests() as stop:  # one for the whole sweep: a stop ends it, not only one recording
            for batch in batches:
                if stop.requested:
                    break
                os.sched_setaffinity(0, cpus)
                try:
                    written = _record_batch(opts, batch, len(runs), log, stop)
                except TracerError as err:
                    if stop.requested and err.exit_code == 128 + stop.signum:
                        break  # stopped while BPF was loading: this one has nothing to keep
                    raise
                for run, path in zip(batch, written):
                    entry = {"file": path.name, "layout": run.arm.opts.layout, "extra_vmas": run.arm.opts.spawn_vmas}
                    if opts.runs > 1:
                        entry["run"] = run.index
                    opts.recordings.append(entry)
                if stop.requested and written:
                    opts.recordings[-1]["cut_by"] = signal.Signals(stop.signum).name
            os.sched_setaffinity(0, cpus)
            stop.writing = True
            stopped = None
            if stop.requested:
                cut = [e["file"] for e in opts.recordings if "cut_by" in e]
                stopped = {"signal": signal.Signals(stop.signum).name, "recorded": len(opts.recordings),
                           "planned": len(runs), "cut": cut[0] if cut else None}
            if opts.recordings:
                write_index(opts, directory, stopped)
                write_report(opts, log, directory, stopped)
    if stopped is not None:
        what = f"{len(opts.recordings)} of {len(runs)} recordings" + (f", {stopped['cut']} cut short" if stopped["cut"] else "")
        done = "index and report written" if opts.recordings else "nothing recorded"
        err = TracerError(f"{stopped['signal']}: sweep stopped ({what}); {done} in {opts.output}")
        err.exit_code = 128 + stop.signum
        raise err
    return opts.output


def _record_batch(opts: SweepOptions, batch: list, planned: int, log: Callable[[str], None], stop) -> list[Path]:
    """Record one cell (one run a cell) or the whole interleaved series; the files written, in plan order."""
    from tracer.record import record

    quiet = (lambda msg: None) if opts.quiet else (lambda msg: log("  " + msg))
    if len(batch) == 1:
        run = batch[0]
        log(f"[{run.order}/{planned}] spawn {run.arm.opts.spawn_vmas} extra VMAs, {run.arm.opts.layout} ...")
        return [record(replace(run.arm.opts, output=run.path), log=quiet, stop=stop).path]
    log(f"{len({run.arm.label for run in batch})} cells x {opts.runs} runs, interleaved round by round, BPF loaded once ...")

    def each(msg: str) -> None:  # record's "run K/N (cell) -> FILE": the sweep's one line per recording
        if msg.startswith("run ") and " -> " in msg:
            order, _, rest = msg[4:].partition(" ")
            log(f"[{order}] {rest}")
        else:
            quiet(msg)

    return record(replace(batch[0].arm.opts), log=each, stop=stop, plans=batch).paths


def write_index(opts: SweepOptions, directory: Directory | None = None, stopped: dict | None = None) -> Path:
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
    doc = {"vmas": list(opts.vmas), "layouts": list(opts.layouts), "forks": opts.forks, "runs": opts.runs,
           "sample_hz": opts.sample_hz, "cpu": opts.cpu, "stopped": stopped, "recordings": entries}
    with _opened(opts.output, directory) as d:
        d.write(INDEX, (json.dumps(doc, indent=2) + "\n").encode())
    return opts.output / INDEX


def write_report(opts: SweepOptions, log: Callable[[str], None], directory: Directory | None = None,
                 stopped: dict | None = None) -> None:
    """report.md, report.json and plots/ over this sweep's recordings (never others in the directory)."""
    from analysis.report.plots import write_plots
    from analysis.report.summary import build_report, render_doc, report_doc

    inp = build_report([opts.output / e["file"] for e in opts.recordings])
    doc = report_doc(inp)
    note = ""
    if stopped is not None:
        doc = {**doc, "sweep_stopped": stopped}
        note = (f"> Sweep stopped by {stopped['signal']} after {stopped['recorded']} of {stopped['planned']} recordings"
                + (f"; {stopped['cut']} was cut short." if stopped["cut"] else ".") + "\n\n")
    with _opened(opts.output, directory) as d:
        for fmt, name in (("markdown", "report.md"), ("json", "report.json")):
            text = render_doc(inp, doc, fmt)
            if fmt == "markdown" and note:
                head, _, rest = text.partition("\n")
                text = f"{head}\n\n{note}{rest.lstrip(chr(10))}"
            d.write(name, (text + "\n").encode())
        with d.subdirectory("plots") as plots:
            written = write_plots(inp.attribution, plots)
    log(f"report: {opts.output / 'report.md'}, {opts.output / 'report.json'}, {len(written)} plots in {opts.output / 'plots'}")


class _opened:
    """The sweep's directory as opened (left open), or opened for this write (closed after)."""

    def __init__(self, path: Path, directory: Directory | None):
        self.directory = directory or Directory.open(path, create=True)
        self.owned = directory is None

    def __enter__(self) -> Directory:
        return self.directory

    def __exit__(self, *exc) -> None:
        if self.owned:
            self.directory.close()
