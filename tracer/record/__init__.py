"""`tracer record`: attach the bracket, run or follow the targets, write one recording.

Order matters here and is the point of this package: everything that can fail
on bad input is checked before any BPF is loaded (options); the targets are
known to the kernel filter before they fork (session); the recording is
written once, atomically, whatever ends the run (count reached, -d elapsed,
command exited, Ctrl-C), with the context of the run (context).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Callable

from analysis.errors import TracerError
from analysis.recording.writer import write_recording
from tracer.probes.bracket import BCC_MISSING, BracketConfig, BracketProbe, offsets_from_btf
from tracer.probes.exact import ExactConfig, ExactProbe
from tracer.record.context import run_metadata
from tracer.record.options import RecordOptions, validate
from tracer.record.probeset import ProbeSet
from tracer.record.session import Session

__all__ = ["RecordOptions", "record"]


def record(opts: RecordOptions, log: Callable[[str], None] | None = None) -> Path:
    """Run one recording to completion and return the path written."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    validate(opts)
    from tracer.host import headers, kernel
    from tracer.host.methods import choose_methods, exact_kinds
    from tracer.host.probe import probe_host

    # Real load attempts decide the exact probes, as doctor's do; only the
    # kinds this run could use are tried (each load takes seconds under emulation).
    facts = probe_host(try_load=True, kinds=exact_kinds(opts.backend))
    if facts.bcc.importable is False:
        raise TracerError(BCC_MISSING)
    plan = choose_methods(facts, forced=opts.backend)
    backend = plan.backend
    if backend is None:
        raise TracerError(f"cannot trace dup_mmap on this kernel: {plan.reason} (see tracer doctor)")
    config = _bracket_config(opts, backend)
    if backend == "tracepoint":
        kernel.ensure_tracefs()  # classic tracepoints: bcc reads event ids and formats there
    hdrs = headers.resolve_headers()
    headers.apply(hdrs)
    log(hdrs.description)

    session = Session(opts, log)
    exact = None
    if plan.exact:
        exact_config = ExactConfig(
            attach={fn: (a.via, a.symbol) for fn, a in plan.exact.items()},
            filter_tgids=config.filter_tgids,
            follow_children=config.follow_children and config.task_pid_off is not None,
            task_pid_off=config.task_pid_off,
        )
        exact = ExactProbe(exact_config, on_event=session.on_exact)
        session.exact_timed = set(plan.exact)
    probe = ProbeSet(BracketProbe(config, on_dup=session.on_dup, on_child=session.on_child), exact)
    timed = f"; exact: {', '.join(f'{fn} ({a.via})' for fn, a in plan.exact.items())}" if plan.exact else ""
    log(f"loading BPF ({backend}{timed}{', sampling %d Hz' % opts.sample_hz if opts.sample_hz else ''}) ...")
    probe.load()
    try:
        session.run(probe)
    finally:
        probe.close()

    # From here on the recording is only written: a second Ctrl-C must not lose it.
    previous_sigint = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        forks = session.fork_table()
        meta = run_metadata(opts, session, facts, plan, hdrs.description, kernel.lockdown_mode())
        write_recording(opts.output, forks, meta)
    finally:
        signal.signal(signal.SIGINT, previous_sigint)
    lost = meta["lost"]["ringbuf"] + ((meta.get("exact") or {}).get("counters") or {}).get("lost_ringbuf", 0)
    log(f"wrote {forks.num_rows} forks to {opts.output}" + (f" (LOST {lost} records)" if lost else " (no events lost)"))
    return opts.output


def _bracket_config(opts: RecordOptions, backend: str) -> BracketConfig:
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
        **offsets,
    )


