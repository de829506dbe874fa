"""`tracer record`: attach the bracket, run or follow the targets, write one recording.

Order matters here and is the point of this package: everything that can fail
on bad input is checked before any BPF is loaded (options, output); the targets
are known to the kernel filter before they fork (session); stop signals are
flags from before loading until after writing (stopping); the recording is
written once, atomically, whatever ends the run (count reached, -d elapsed,
command exited, Ctrl-C, SIGTERM, SIGHUP), with the context of the run
(context), to the file asked for or, failing that, to one it names (output).
"""

from __future__ import annotations

import signal
import sys
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from analysis.errors import TracerError
from tracer.probes import cycle as cycle_probe
from tracer.probes.bracket import BracketConfig, BracketProbe, offsets_from_btf
from tracer.probes.cycle import SYSCALLS, CycleConfig, CycleProbe
from tracer.probes.exact import ExactConfig, ExactProbe
from tracer.probes.program import BCC_MISSING
from tracer.record.context import run_metadata, runs_mt_dup
from tracer.record.cycle import join_cycle
from tracer.record.attached import ProbeSet
from tracer.record.options import RecordOptions, default_output, resolve_options
from tracer.record.output import Output, prepare_output, save_recording
from tracer.record.runs import Arm, RunPlan, arms_of, plan_runs, run_entry
from tracer.record.session import Session
from tracer.record.stopping import StopRequests

__all__ = ["RecordOptions", "Recorded", "record"]


@dataclass(frozen=True)
class Recorded:
    """What a run wrote, and the status `tracer record` exits with."""

    path: Path  # the recording, or with several runs the directory of them
    exit_status: int  # -- CMD: the command's, as a shell reports it (as perf); else 0 (runs: the first non-zero)
    paths: list[Path] = field(default_factory=list)  # every recording written


def record(opts: RecordOptions, log: Callable[[str], None] | None = None, stop: StopRequests | None = None,
           plans: list[RunPlan] | None = None) -> Recorded:
    """Run one recording to completion and return what was written.

    `stop`: the caller's stop requests (a sweep's, held across recordings), instead of this run's own.
    `plans`: the caller's own series (a sweep's cells, round by round), its files checked by the
    caller: each arm's options are checked as one run's, `opts` gives what the runs share.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    opts = resolve_options(opts)
    if plans is not None:
        arms: dict[str, Arm] = {}
        for p in plans:
            if p.arm.label not in arms:
                arms[p.arm.label] = Arm(p.arm.label, resolve_options(p.arm.opts))
        plans = [replace(p, arm=arms[p.arm.label]) for p in plans]
    # One run: its file, checked and its directory held open now. Several: the
    # directory resolve_options made, each run's file checked when written.
    output = None if opts.series or plans is not None else prepare_output(opts.output or default_output(opts))
    if output is not None:
        opts.output = output.path
    try:
        if stop is not None:
            return _record(opts, output, log, stop, plans)
        with StopRequests() as stop:
            return _record(opts, output, log, stop, plans)
    finally:
        if output is not None:
            output.close()


def _record(opts: RecordOptions, output: Output | None, log: Callable[[str], None], stop: StopRequests,
            plans: list[RunPlan] | None = None) -> Recorded:
    from tracer.host import headers, kernel
    from tracer.host.methods import choose_methods, exact_kinds
    from tracer.host.survey import survey_host

    # Real load attempts decide the exact probes, as doctor's do; only the
    # kinds this run could use are tried (each load takes seconds under emulation).
    facts = survey_host(try_load=True, kinds=exact_kinds(opts.backend))
    if facts.bcc.importable is False:
        raise TracerError(BCC_MISSING)
    plan = choose_methods(facts, forced=opts.backend)
    backend = plan.backend
    if backend is None:
        raise TracerError(f"cannot trace dup_mmap on this kernel: {plan.reason} (see tracer doctor)")
    config = _bracket_config(opts, backend, facts)
    if backend == "tracepoint":
        kernel.ensure_tracefs()  # classic tracepoints: bcc reads event ids and formats there
    hdrs = headers.resolve_headers()
    headers.apply(hdrs)
    log(hdrs.description)

    cycle_config = _cycle_config(opts, backend, log)
    session = Session(opts, log, stop)
    exact = None
    if plan.exact:
        exact_config = ExactConfig(
            attach={fn: (a.via, a.symbol) for fn, a in plan.exact.items()},
            filter_tgids=config.filter_tgids,
            follow_children=config.follow_children and "FORK_CHILD_ARG" in config.arg_macros,
            task_pid_off=config.task_pid_off,
            fork_child_arg=config.arg_macros.get("FORK_CHILD_ARG"),
        )
        exact = ExactProbe(exact_config, on_event=session.on_exact)
        session.exact_timed = set(plan.exact)
    probes = ProbeSet(
        BracketProbe(config, on_dup=session.on_dup, on_child=session.on_child),
        cycle=CycleProbe(cycle_config) if cycle_config is not None else None,
        exact=exact,
    )
    extras = [f"level {opts.level}"] + ([f"sampling {opts.sample_hz} Hz"] if opts.samples else [])
    extras += ["clone/exit_mmap/wait"] if cycle_config else []
    extras += [f"exact: {', '.join(f'{fn} ({a.via})' for fn, a in plan.exact.items())}"] if plan.exact else []
    log(f"loading BPF ({', '.join([backend, *extras])}) ...")
    stop.writing = False
    probes.load()
    runs = plans or _plans(opts)
    rounds = max(run.index for run in runs)
    series = str(uuid.uuid4())
    written: list[Recorded] = []
    try:
        if stop.requested:  # while bcc compiled: nothing was traced, nothing to keep
            err = TracerError(f"{signal.Signals(stop.signum).name} before tracing started; nothing recorded")
            err.exit_code = 128 + stop.signum
            raise err
        for i, run in enumerate(runs):
            if i and stop.requested:
                log(f"stopped after {i} of {len(runs)} runs; the recorded ones are kept")
                break
            if i or run.arm.opts is not opts:
                session = Session(run.arm.opts, log, stop)
                probes.route(session.on_dup, session.on_child, session.on_exact)
            if len(runs) > 1:
                label = f" ({run.arm.label})" if run.arm.label else ""
                log(f"run {run.order}/{len(runs)}{label} -> {run.path}")
            inject = (run.arm.opts.inject_store_ns or (0,))[0]
            probes.new_run(inject_store_ns=inject)
            entry = run_entry(run, series, rounds, inject)
            last = i == len(runs) - 1 or stop.requested
            written.append(_one_run(run.arm.opts, output or run.path, session, probes, facts, plan, hdrs, backend, entry, stop, log, last))
    finally:
        probes.close()
    status = next((r.exit_status for r in written if r.exit_status), 0)
    return Recorded(written[0].path if len(runs) == 1 else opts.output, status, [r.path for r in written])


def _plans(opts: RecordOptions) -> list[RunPlan]:
    """The runs to record, in order: one, or opts.runs per arm interleaved into opts.output (a directory)."""
    if not opts.series:
        return [RunPlan(Arm("", opts), 1, 1, opts.output)]
    return plan_runs(opts, arms_of(opts), opts.runs, opts.output)


def _one_run(opts, path, session, probes, facts, plan, hdrs, backend, entry, stop, log, last) -> Recorded:
    """Trace one run with the loaded probes and write its recording (the probes stay loaded)."""
    from tracer.host import kernel

    try:
        session.run(probes)
        cycle_counters = probes.cycle_counters()  # while loaded; its records outlive close()
    finally:
        if last:
            probes.close()
    stop.writing = True
    forks = session.fork_table()
    per_vma = {"type": probes.bracket.per_vma_program, "refused": probes.bracket.typed_refused}
    meta = run_metadata(opts, session, facts, plan, hdrs.description, kernel.lockdown_mode(), per_vma)
    meta["run"] = entry
    meta["cycle"] = None
    if probes.cycle is not None:
        forks, joined = join_cycle(forks, probes.cycle.records())
        meta["cycle"] = {
            "backend": backend,
            "syscalls": {str(nr): name for nr, name in sorted(SYSCALLS.items())},
            "events": cycle_counters,
            "joined": joined,
        }
    path = save_recording(path, forks, meta, log)
    stop.writing = False
    lost = meta["lost"]["ringbuf"] + ((meta.get("exact") or {}).get("counters") or {}).get("lost_ringbuf", 0)
    log(f"wrote {forks.num_rows} forks to {path}" + (f" (LOST {lost} records)" if lost else " (no events lost)"))
    missed = session.counters.get("last_store_missed", 0)
    if missed:  # bracket.c: more VM_DONTCOPY clears than it can see, or a store it did not expect
        log(f"note: {missed} forks' last mas_store was not timed: mt_dup, vma_loop and tail are not split for them")
    return Recorded(path, session.exit_status or 0)


def _bracket_config(opts: RecordOptions, backend: str, facts) -> BracketConfig:
    offsets: dict[str, int | None] = {"ma_state_node_off": None, "task_pid_off": None, "mm_map_count_off": None}
    try:
        offsets.update(offsets_from_btf())
    except TracerError:
        if backend == "raw_tracepoint":
            raise
    return BracketConfig(
        backend=backend,
        filter_tgids=opts.mode != "system",
        follow_children=opts.mode == "command",
        sample_hz=opts.sample_hz,
        level=opts.level,
        time_every_store=not runs_mt_dup(facts),
        inject_store=any(opts.inject_store_ns),
        **offsets,
    )


def _cycle_config(opts: RecordOptions, backend: str, log: Callable[[str], None]) -> CycleConfig | None:
    """The cycle probe's build, or None when it is off (or, by default only, unsupported here)."""
    if not opts.trace_cycle:
        return None
    why = cycle_probe.missing_support()
    offsets: dict[str, int] = {}
    if why is None and backend == "raw_tracepoint":
        try:
            offsets = cycle_probe.offsets_from_btf()
        except TracerError as err:
            why = str(err)
    if why is not None:
        if opts.cycle:
            raise TracerError(f"--cycle: {why}")
        log(f"not tracing clone/exit_mmap/wait: {why}")
        return None
    return CycleConfig(
        backend=backend,
        offsets=offsets,
        filter_tgids=opts.mode != "system",
        follow_children=opts.mode == "command",
    )
