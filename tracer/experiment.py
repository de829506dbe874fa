"""`tracer sweep --vary FACTOR`: designed experiments that change one thing at a time.

A sweep over VMA counts moves every count of the model together (nodes,
slot steps, stores, VMAs), so a fit over it cannot say which costs what, and
a claim such as "the curve bends because the caches fill" is not tested by
it. Each factor here changes one thing about what a fork copies, at the same
VMA counts, with everything else as the default workload has it:

shape   the tree: the same extra VMAs reached by other histories (spawn.c
        --order descending / scatter) and the adjacent layout: other node
        counts, fill and height (and, adjacent, half the slot steps)
cache   warm vs cold: both levels map the same shared buffer (2x the last
        level cache); the cold level reads it through right before every fork
weight  what each extra VMA holds: nothing, a resident page sharing one
        anon_vma (touch), a page with its own anon_vma (touch-each), or a
        memfd page (file-backed): copy_page_range() and anon_vma_fork() work

The run (one workload process) is the unit of replication: every
(level, VMA count) cell is recorded `runs` times, in blocks (one block per
replicate, its cells in a seeded random order) so that drift on a shared
host falls on all levels alike. BPF is compiled and loaded once for the
whole design; each run still gets its own recording, with the run's own
events, samples and counters (differences from before the run).

design.json lists the runs; the fit across them (analysis.attribution.design)
is written beside it as design-fit.json and design-fit.txt.

The directory follows the sweep's rules (docs/safety.md): opened and checked
once (analysis.files.Directory), locked for the whole experiment with the
sweep's lock (a second sweep into it is refused), refused if not empty
without --force, and every name the experiment will write checked before BPF
is loaded; everything is then written through that descriptor, atomically. A
stop signal ends the run under way (written, marked `cut_by`) and the
experiment: design.json and the fit cover the runs recorded, and the exit
status is 128 + the signal.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from analysis.errors import TracerError, UsageError
from analysis.files import Directory
from tracer.sweep import LOCK, _opened, check_empty, check_output_dir

__all__ = ["FACTORS", "DEFAULT_VMAS", "ExperimentOptions", "Level", "Run", "cache_sizes", "evict_mb", "parse_factors",
           "plan_runs", "run_experiment"]

DEFAULT_VMAS = (100, 400, 1600, 6400)
DESIGN = "design.json"
FIT_FILES = ("design-fit.json", "design-fit.txt")


@dataclass(frozen=True)
class Level:
    """One level of a factor: the workload options that differ from the default run."""

    factor: str
    name: str
    workload: tuple[tuple[str, Any], ...] = ()

    def options(self, evict: int) -> dict[str, Any]:
        opts = dict(self.workload)
        if opts.get("evict_mb") == "llc":
            opts["evict_mb"] = evict
        return opts


FACTORS: dict[str, tuple[Level, ...]] = {
    "shape": (
        Level("shape", "gapped-ascending"),
        Level("shape", "gapped-descending", (("order", "descending"),)),
        Level("shape", "gapped-scatter", (("order", "scatter"),)),
        Level("shape", "adjacent", (("layout", "adjacent"),)),
    ),
    "cache": (
        Level("cache", "warm", (("evict_mb", "llc"),)),
        Level("cache", "cold", (("evict_mb", "llc"), ("cold", True))),
    ),
    "weight": (
        Level("weight", "none"),
        Level("weight", "touch", (("touch", True),)),
        Level("weight", "touch-each", (("weight", "touch-each"),)),
        Level("weight", "file", (("weight", "file"),)),
    ),
}


CPU0_CACHE = Path("/sys/devices/system/cpu/cpu0/cache")


def cache_sizes(sysfs: Path = CPU0_CACHE) -> dict[str, int]:
    """CPU 0's data and unified caches as {"L1": bytes, "L2": ..., "L3": ...}; {} where sysfs says nothing."""
    out: dict[str, int] = {}
    for index in sorted(sysfs.glob("index*")):
        try:
            kind = (index / "type").read_text().strip()
            level = (index / "level").read_text().strip()
            text = (index / "size").read_text().strip()
            size = int(text.rstrip("KMG")) * {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        except (OSError, ValueError):
            continue
        if kind in ("Data", "Unified"):
            out[f"L{level}"] = size
    return out


def evict_mb(sysfs: Path = CPU0_CACHE) -> int:
    """Twice the largest cache CPU 0 reports (its LLC), in MiB; 64 where sysfs says nothing."""
    largest = max(cache_sizes(sysfs).values(), default=0)
    return max(1, 2 * largest >> 20) if largest else 64


@dataclass(frozen=True)
class Run:
    level: Level
    vmas: int
    rep: int
    order: int  # position in the design (the order it is recorded in)

    @property
    def file(self) -> str:
        return f"{self.level.factor}-{self.level.name}-v{self.vmas:05d}-r{self.rep}.parquet"


# Runs per cell by default: at 3 a cell's standard error on this host was 4-11%
# and predictions to an unseen shape missed by 15-18%; at 8 it was 3-6% and
# they held within 10% (docs/experiments.md).
DEFAULT_RUNS = 8


@dataclass
class ExperimentOptions:
    output: Path
    factors: tuple[str, ...]
    vmas: tuple[int, ...] = DEFAULT_VMAS
    runs: int = DEFAULT_RUNS
    forks: int = 200
    sample_hz: int = 0
    cpu: int | None = None
    force: bool = False
    seed: int = 0
    quiet: bool = False
    evict_mb: int | None = None  # None: evict_mb() (2x this host's LLC)
    recorded: list[dict] = field(default_factory=list)


def parse_factors(text: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    if not names:
        raise UsageError("--vary needs a factor: " + ", ".join(FACTORS))
    bad = [n for n in names if n not in FACTORS]
    if bad:
        raise UsageError(f"--vary: unknown factor {bad[0]!r} (known: {', '.join(FACTORS)})")
    if len(set(names)) != len(names):
        raise UsageError(f"--vary names a factor twice: {text!r}")
    return names


def plan_runs(factors: tuple[str, ...], vmas: tuple[int, ...], runs: int, seed: int = 0) -> list[Run]:
    """Every (level, count) cell `runs` times: one block per replicate, cells shuffled within it (seeded)."""
    rng = random.Random(seed)
    cells = [(level, v) for f in factors for level in FACTORS[f] for v in vmas]
    plan: list[Run] = []
    for rep in range(runs):
        block = list(cells)
        rng.shuffle(block)
        plan += [Run(level, v, rep, len(plan) + i) for i, (level, v) in enumerate(block)]
    return plan


def check(opts: ExperimentOptions) -> None:
    """Everything that needs no BPF, so bad input fails first."""
    from tracer.workload.spawn import SpawnWorkload

    if not opts.vmas or any(v <= 0 for v in opts.vmas):
        raise UsageError("--vary: VMA counts must be > 0 (the fit needs VMAs to copy)")
    if opts.runs < 2:
        raise UsageError("--runs must be at least 2: the run is the unit of replication, and one run has no noise estimate")
    if opts.forks <= 0:
        raise UsageError("--forks must be positive")
    evict = opts.evict_mb if opts.evict_mb is not None else evict_mb()
    for f in opts.factors:
        for level in FACTORS[f]:
            for v in opts.vmas:
                try:
                    SpawnWorkload(v, forks=opts.forks, cpu=opts.cpu, **level.options(evict))  # checks only
                except UsageError:
                    raise
                except TracerError as err:  # vm.max_map_count: still refused before any work
                    raise UsageError(f"--vmas {v}: {err}") from None
    check_output_dir(opts.output, opts.force, "experiment")


def _check_names(directory: Directory, plan: list[Run]) -> None:
    """Every name the experiment will write, and a test file, before BPF is loaded (UsageError)."""
    for run in plan:
        directory.check_target(run.file, keep_old=True)
    for name in (DESIGN, *FIT_FILES):
        directory.check_target(name)
    try:  # the only sure test of a directory is to create a file in it (EROFS, quota, inodes)
        name, fd = directory.temp_file()
        os.close(fd)
        os.unlink(name, dir_fd=directory.fd)
    except OSError as err:
        raise UsageError(f"cannot write into {directory.path}: {err.strerror}") from None


class _Router:
    """The loaded probe's callbacks, passed on to the run being recorded."""

    def __init__(self) -> None:
        self.session = None

    def on_dup(self, event, raw) -> None:
        if self.session is not None:
            self.session.on_dup(event, raw)

    def on_child(self, tid: int, seq: int, child_pid: int) -> None:
        if self.session is not None:
            self.session.on_child(tid, seq, child_pid)


def _stack_diff(after: list[dict], before: list[dict]) -> list[dict]:
    """This run's samples: the kernel's counts after it minus before it."""
    seen = {(s["stack"], s["phase"]): s["count"] for s in before}
    out = []
    for s in after:
        n = s["count"] - seen.get((s["stack"], s["phase"]), 0)
        if n > 0:
            out.append({**s, "count": n})
    return out


def run_experiment(opts: ExperimentOptions, log: Callable[[str], None] | None = None) -> Path:
    """Record the design, then write design.json and the fit; returns the directory.

    As `tracer sweep`: the directory is locked for the whole experiment, and a
    stop signal (SIGINT, SIGTERM, SIGHUP) ends the run under way, which is
    written and marked as cut, and the experiment: design.json and the fit
    cover what was recorded, and the exit status is 128 + the signal.
    """
    from tracer.record.stopping import StopRequests

    log = log or (lambda msg: None)
    check(opts)
    if os.geteuid() != 0:
        raise TracerError("tracer sweep loads BPF programs and needs root: run it with sudo")
    evict = opts.evict_mb if opts.evict_mb is not None else evict_mb()
    plan = plan_runs(opts.factors, opts.vmas, opts.runs, opts.seed)
    with Directory.open(opts.output, create=True) as directory, directory.lock(LOCK, "sweep"):
        check_empty(opts.output, directory.names(), opts.force, "experiment")  # again, now that no other sweep can add files
        _check_names(directory, plan)
        with StopRequests() as stop:  # one for the whole experiment: a stop ends it, not only one run
            _record_plan(opts, plan, evict, stop, log, directory)
            stop.writing = True
            stopped = None
            if stop.requested:
                cut = [e["file"] for e in opts.recorded if "cut_by" in e]
                stopped = {"signal": signal.Signals(stop.signum).name, "recorded": len(opts.recorded),
                           "planned": len(plan), "cut": cut[0] if cut else None}
            fitted = None
            if opts.recorded:
                write_design(opts, evict, directory, stopped)
                fitted = write_fit(opts.output, log, directory, stopped)
    if stopped is not None:
        what = f"{len(opts.recorded)} of {len(plan)} runs" + (f", {stopped['cut']} cut short" if stopped["cut"] else "")
        if not opts.recorded:
            done = "nothing recorded"
        else:
            done = f"{DESIGN} and the fit written" if fitted else f"{DESIGN} written, no fit"
        err = TracerError(f"{stopped['signal']}: sweep --vary stopped ({what}); {done} in {opts.output}")
        err.exit_code = 128 + stop.signum
        raise err
    return opts.output


def _record_plan(opts: ExperimentOptions, plan: list[Run], evict: int, stop, log: Callable[[str], None],
                 directory: Directory) -> None:
    """One BPF load, one recording per run (written through `directory`)."""
    base, probes, router, facts, plan_m, hdrs = _load_probes(opts, plan, log)
    cpus = os.sched_getaffinity(0)
    try:
        for run in plan:
            if stop.requested:
                log(f"stopped before run {run.order + 1}/{len(plan)}: the runs recorded so far are kept")
                break
            os.sched_setaffinity(0, cpus)
            log(f"[{run.order + 1}/{len(plan)}] {run.level.factor}={run.level.name}, {run.vmas} extra VMAs, run {run.rep}")
            cut = _record_run(opts, run, evict, base, probes, router, facts, plan_m, hdrs, stop, directory, log)
            entry = {"file": run.file, "factor": run.level.factor, "level": run.level.name,
                     "extra_vmas": run.vmas, "rep": run.rep, "order": run.order}
            if cut:
                entry["cut_by"] = signal.Signals(stop.signum).name
            opts.recorded.append(entry)
    finally:
        os.sched_setaffinity(0, cpus)
        probes.close()


def _load_probes(opts: ExperimentOptions, plan: list[Run], log: Callable[[str], None]) -> tuple:
    """The bracket probe, compiled and loaded once for all runs.

    Returns (base options, probes, router, host facts, methods, headers).
    """
    from tracer.host import headers, kernel
    from tracer.host.methods import choose_methods
    from tracer.host.survey import survey_host
    from tracer.probes.bracket import BracketProbe
    from tracer.probes.program import BCC_MISSING
    from tracer.record import _bracket_config
    from tracer.record.options import RecordOptions, level_and_rate
    from tracer.record.attached import ProbeSet

    base = RecordOptions(spawn_vmas=0, forks=opts.forks, cpu=opts.cpu, sample_hz=opts.sample_hz, quiet=True,
                         cycle=False)
    base.level, base.sample_hz = level_and_rate(base.level, base.sample_hz)
    facts = survey_host(try_load=True, kinds=())  # no exact probes: the bracket alone, loaded once
    if facts.bcc.importable is False:
        raise TracerError(BCC_MISSING)
    plan_m = choose_methods(facts, forced=None)
    if plan_m.backend is None:
        raise TracerError(f"cannot trace dup_mmap on this kernel: {plan_m.reason} (see tracer doctor)")
    config = _bracket_config(base, plan_m.backend, facts)
    if plan_m.backend == "tracepoint":
        kernel.ensure_tracefs()
    hdrs = headers.resolve_headers()
    headers.apply(hdrs)
    router = _Router()
    probes = ProbeSet(BracketProbe(config, on_dup=router.on_dup, on_child=router.on_child))
    log(f"loading BPF once for {len(plan)} runs ({plan_m.backend}, level {base.level}"
        + (f", sampling {opts.sample_hz} Hz" if opts.sample_hz else "") + ") ...")
    probes.load()
    return base, probes, router, facts, plan_m, hdrs


def _record_run(opts, run: Run, evict: int, base, probes, router, facts, plan_m, hdrs, stop, directory: Directory,
                log: Callable[[str], None]) -> bool:
    """Record one run and write it; True if a stop cut its workload short."""
    from dataclasses import replace

    from tracer.host import kernel
    from tracer.record.context import keep_off_cpu, run_metadata, wall_mono
    from tracer.record.output import save_recording
    from tracer.record.session import Session
    from tracer.workload.spawn import SpawnWorkload

    path = opts.output / run.file
    ropts = replace(base, spawn_vmas=run.vmas, output=path, layout=dict(run.level.options(evict)).get("layout", "gapped"))
    session = Session(ropts, lambda msg: None, stop)
    before_counters = probes.counters()
    before_stacks = probes.sampled_stacks()
    tracer_cpus = keep_off_cpu(opts.cpu)
    router.session = session
    cut = False
    try:
        with SpawnWorkload(run.vmas, forks=opts.forks, cpu=opts.cpu, **run.level.options(evict)) as work:
            pid, _ = work.start()
            probes.add_targets([pid])
            session.snapshot(pid)
            session.start = wall_mono()
            work.go()
            while not work.finished():
                if stop.requested:
                    work.stop()
                    cut = True
                probes.poll(100)
            work.wait(timeout=120)
        session.end = wall_mono()
        for _ in range(3):
            probes.poll(20)
    finally:
        router.session = None
    after = probes.counters()
    session.counters = {k: v - before_counters.get(k, 0) for k, v in after.items()}
    session.stacks = _stack_diff(probes.sampled_stacks(), before_stacks)
    session.workload = {"pid": pid, **work.metadata(), "tracer_cpus": tracer_cpus}
    forks = session.fork_table()
    per_vma = {"type": probes.bracket.per_vma_program, "refused": probes.bracket.typed_refused}
    meta = run_metadata(ropts, session, facts, plan_m, hdrs.description, kernel.lockdown_mode(), per_vma)
    meta["cycle"] = None
    meta["experiment"] = {"factor": run.level.factor, "level": run.level.name, "rep": run.rep, "order": run.order,
                          "seed": opts.seed}
    if cut:
        meta["experiment"]["cut_by"] = signal.Signals(stop.signum).name
    stop.writing = True
    save_recording(_output(directory, path), forks, meta, lambda msg: None)
    stop.writing = False
    return cut


def _output(directory: Directory, path: Path):
    """The run's recording, written through the experiment's directory (save_recording closes its own copy)."""
    from tracer.record.output import Output

    return Output(path, Directory(directory.path, os.dup(directory.fd), directory.shared))


def write_design(opts: ExperimentOptions, evict: int, directory: Directory | None = None,
                 stopped: dict | None = None) -> Path:
    """design.json: the factors, their levels' workload options, and every run recorded."""
    doc = {
        "factors": {f: {lv.name: lv.options(evict) for lv in FACTORS[f]} for f in opts.factors},
        "vmas": list(opts.vmas),
        "runs": opts.runs,
        "forks": opts.forks,
        "sample_hz": opts.sample_hz,
        "cpu": opts.cpu,
        "seed": opts.seed,
        "evict_mb": evict,
        "caches": cache_sizes(),
        "recorded": opts.recorded,
        "stopped": stopped,
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with _opened(opts.output, directory) as d:
        d.write(DESIGN, (json.dumps(doc, indent=2) + "\n").encode())
    return opts.output / DESIGN


def write_fit(path: Path, log: Callable[[str], None], directory: Directory | None = None,
              stopped: dict | None = None) -> bool:
    """design-fit.json and design-fit.txt: the cost model fitted across the design's runs; False if none could be.

    After a stop the runs recorded may be too few for any model: the files
    then say why (no stale fit of an earlier experiment is left beside the new
    design.json), and so does one line of the log.
    """
    from analysis.attribution.design import design_fit, load_design_runs, render_design

    note = ""
    if stopped is not None:
        note = (f"stopped by {stopped['signal']} after {stopped['recorded']} of {stopped['planned']} runs"
                + (f"; {stopped['cut']} was cut short" if stopped["cut"] else ""))
    try:
        result = design_fit(load_design_runs(path), directory=path)
    except (TracerError, ArithmeticError, ValueError, LookupError) as err:
        if stopped is None:
            raise
        why = str(err).splitlines()[0] if str(err) else type(err).__name__
        doc, text = {"fit": None, "why": why, "design_stopped": stopped}, f"no fit ({note}): {why}"
        fitted = False
        log(f"no fit over the {stopped['recorded']} runs recorded: {why}")
    else:
        doc, text = result, render_design(result)
        if stopped is not None:
            doc = {**result, "design_stopped": stopped}
            head, _, rest = text.partition("\n")
            text = f"{head}\n{note[0].upper()}{note[1:]}.\n{rest}"
        fitted = True
    with _opened(path, directory) as d:
        d.write(FIT_FILES[0], (json.dumps(doc, indent=2, default=float) + "\n").encode())
        d.write(FIT_FILES[1], (text + "\n").encode())
    if fitted:
        log(f"fit: {path / FIT_FILES[1]}, {path / FIT_FILES[0]}")
    return fitted
