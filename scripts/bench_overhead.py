#!/usr/bin/env python3
"""How much does tracing slow fork() down, and which piece of the tracer costs what?

For each extra-VMA count, the spawn workload (pinned to one CPU) runs under
each mode, side by side in one run:
  untraced        no BPF at all
  empty           programs that return at once, on the same tracepoints: the
                  floor any tracepoint-based tracer pays here
  fork            `record --level fork`: the lock bracket, no per-VMA program
  phase           `record --level phase` (the default): the full bracket
  before          the per-VMA program as it was before the CPU slot, the
                  sparse timestamps and tp_btf (task storage lookup, every
                  store timed, ma_state read by bpf_probe_read_kernel)
  -<piece>        `phase` without one piece of its per-VMA program (ablation;
                  see ABLATIONS in tracer/probes/bracket.py): its cost is
                  what the mode saves against `phase`
Every variant is compiled and loaded once, then attached only for its own
runs. Rounds interleave the modes (A B C ... A B C ...) because this shared
machine drifts by several percent between minutes; each mode is set against
untraced's run of the same round (paired: the drift they share cancels) and
the median over rounds is taken. Prints forks/s and its ratio to untraced,
and the ns per VMA a mode adds to the forking thread's CPU time (relative to
untraced, and as a multiple of what the empty programs add); then the
issue's targets, each with a 95% bootstrap interval over rounds and a
verdict: met or missed only when the whole interval says so, otherwise "not
settled". Asserts nothing. Needs root.

With --switches, each mode also runs a pipe ping-pong between two processes
pinned to one CPU (every message is a context switch, as in `perf bench sched
pipe`): the sched_switch program, which tracks time off CPU inside a bracket,
runs on every switch of the machine, so its cost is per switch, not per VMA.

    sudo .venv/bin/python scripts/bench_overhead.py [--rounds 5] [--seconds 1] [--switches] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import statistics
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tracer.host import headers  # noqa: E402
from tracer.host.methods import choose_methods  # noqa: E402
from tracer.host.survey import survey_host  # noqa: E402
from tracer.probes.bracket import BracketConfig, BracketProbe, offsets_from_btf  # noqa: E402
from tracer.record.context import keep_off_cpu  # noqa: E402
from tracer.workload.spawn import SpawnWorkload  # noqa: E402

# mode -> BracketConfig fields beyond backend and offsets (None: untraced).
MODES: dict[str, dict | None] = {
    "untraced": None,
    "empty": {"empty": True},
    "fork": {"level": "fork"},
    "phase": {},
    "before": {"ablate": ("lookup_task_storage", "time_every_store"), "typed_ma_write": False},
    "no_body": {"ablate": ("vma_body",)},
    "no_fn_check": {"ablate": ("fn_check",)},
    "no_ma_state": {"ablate": ("ma_state",)},
    "no_timestamp": {"ablate": ("timestamp",)},
    "no_leaves": {"ablate": ("leaves",)},
    "task_storage": {"ablate": ("lookup_task_storage",)},
    "every_ts": {"ablate": ("time_every_store",)},
    "probe_read": {"typed_ma_write": False},
}
DEFAULT_MODES = list(MODES)

# Ablation rows: mode -> (what the row measures, sign). A "no_" mode removes a
# piece, whose cost is phase minus the mode; the others replace a piece with
# what the program did before, whose extra cost is the mode minus phase.
MEANING = {
    "no_body": ("everything after the state lookup", +1),
    "no_fn_check": ("function-name check", +1),
    "no_ma_state": ("ma_state->node read", +1),
    "no_timestamp": ("store timestamps", +1),
    "no_leaves": ("leaf tracking", +1),
    "task_storage": ("task storage lookup, over the CPU slot", -1),
    "every_ts": ("timing every store, over sparse", -1),
    "probe_read": ("raw tracepoint + probe read, over tp_btf", -1),
}


def one_run(vmas: int, seconds: float, cpu: int, probe: BracketProbe | None) -> tuple[float, float, int]:
    """forks/s, CPU ns per fork of the forking thread, and VMAs per fork of one spawn run,
    with `probe` (if any) attached and drained."""
    with SpawnWorkload(vmas, seconds=seconds, cpu=cpu) as work:
        _, vmas_total = work.start()
        stop = threading.Event()
        poller = None
        if probe is not None:
            probe.attach()
            if not probe.config.empty:
                def drain() -> None:
                    while not stop.is_set():
                        probe.poll(50)
                poller = threading.Thread(target=drain, daemon=True)
                poller.start()
        try:
            work.go()
            result = work.wait(timeout=seconds + 120)
        finally:
            stop.set()
            if poller:
                poller.join()
            if probe is not None:
                probe.detach()
                probe.poll(0)
    return result.forks_per_sec, result.cpu_ns / max(result.forks, 1), vmas_total


def switch_run(seconds: float, cpu: int, probe: BracketProbe | None) -> float:
    """Wall ns per context switch of a two-process pipe ping-pong on one CPU, `probe` attached."""
    to_child, to_parent = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:  # echo every byte back until the pipe closes
        try:
            os.sched_setaffinity(0, {cpu})
            os.close(to_child[1])
            os.close(to_parent[0])
            while os.read(to_child[0], 1):
                os.write(to_parent[1], b"x")
        finally:
            os._exit(0)
    os.close(to_child[0])
    os.close(to_parent[1])
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    if probe is not None:
        probe.attach()
    try:
        trips, start = 0, time.perf_counter_ns()
        deadline = start + int(seconds * 1e9)
        while True:
            for _ in range(200):
                os.write(to_child[1], b"x")
                os.read(to_parent[0], 1)
            trips += 200
            now = time.perf_counter_ns()
            if now >= deadline:
                break
    finally:
        if probe is not None:
            probe.detach()
        os.close(to_child[1])
        os.waitpid(pid, 0)
        os.close(to_parent[0])
        os.sched_setaffinity(0, saved)
    return (now - start) / (2 * trips)  # a round trip is two switches


# The issue's targets: phase's added cost per VMA at most 2x the empty programs';
# --level fork at most 2% fewer forks/s than untraced at 6400 VMAs.
PHASE_X_EMPTY_MAX = 2.0
FORK_RATE_MIN = 0.98


# Paired statistics over rounds: each mode is set against untraced's run of the
# same round (seconds apart), so drift shared by a round cancels. Each takes
# {mode: per-round figures as numpy arrays}, resampled or not.


def paired_ratio(a: dict, mode: str, base: str = "untraced") -> float:
    """Median over rounds of mode / base."""
    import numpy as np

    return float(np.median(a[mode] / a[base]))


def paired_added(a: dict, mode: str, base: str = "untraced") -> float:
    """Median over rounds of mode - base."""
    import numpy as np

    return float(np.median(a[mode] - a[base]))


def x_empty(a: dict, mode: str) -> float | None:
    """What mode adds over untraced, as a multiple of what the empty programs add (None: no floor measured)."""
    floor = paired_added(a, "empty")
    return paired_added(a, mode) / floor if floor > 0 else None


def bootstrap_interval(rounds: dict[str, list[float]], stat, resamples: int = 2000, seed: int = 1) -> tuple[float, float]:
    """95% percentile interval of stat({mode: arrays}) over rounds resampled with replacement.

    Rounds are resampled whole (the same indices for every mode), so a paired
    statistic stays paired.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    arrays = {m: np.asarray(v, dtype=float) for m, v in rounds.items()}
    n = min(len(a) for a in arrays.values())
    values = []
    for _ in range(resamples):
        idx = rng.integers(0, n, n)
        value = stat({m: a[idx] for m, a in arrays.items()})
        if value is not None and np.isfinite(value):
            values.append(value)
    if not values:
        return (float("nan"), float("nan"))
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def verdict(interval: tuple[float, float], limit: float, upper: bool) -> str:
    """'met' when the whole interval is on the right side of the limit, 'missed' when it is all on the wrong one."""
    lo, hi = interval
    if upper:
        return "met" if hi <= limit else "missed" if lo > limit else "not settled (interval spans the limit)"
    return "met" if lo >= limit else "missed" if hi < limit else "not settled (interval spans the limit)"


def summarise(figures: dict, cpu: dict, vmas_totals: dict, modes: list[str]) -> dict:
    """Per VMA count: medians per mode; paired ratios to untraced; per-VMA cost vs the empty floor; intervals.

    The per-VMA cost comes from the forking thread's CPU time per fork, not
    from forks/s: on a shared machine the wall clock also counts whoever else
    ran on the CPU, while the thread's CPU time holds fork's own work and the
    BPF programs that run inside it.
    """
    import numpy as np

    summary = {}
    for vmas, by_mode in figures.items():
        rate = {m: np.asarray(by_mode[m], dtype=float) for m in modes}
        ns = {m: np.asarray(cpu[vmas][m], dtype=float) for m in modes}
        traced = [m for m in modes if m != "untraced"]
        added = {m: paired_added(ns, m) / max(vmas_totals[vmas], 1) for m in traced}
        has_floor = "empty" in modes and added.get("empty", 0) > 0
        summary[vmas] = {
            "vmas_total": vmas_totals[vmas],
            "forks_per_s": {m: statistics.median(by_mode[m]) for m in modes},
            "cpu_ns_per_fork": {m: statistics.median(cpu[vmas][m]) for m in modes},
            "vs_untraced": {"untraced": 1.0, **{m: paired_ratio(rate, m) for m in traced}},
            "added_ns_per_vma": added,
            "x_empty": {m: x_empty(ns, m) for m in traced} if has_floor else {},
            "ablation_ns_per_vma": (
                {m: MEANING[m][1] * (added["phase"] - added[m]) for m in modes if m in MEANING and "phase" in added}
            ),
            "vs_untraced_ci": {m: bootstrap_interval(by_mode, lambda a, m=m: paired_ratio(a, m)) for m in traced},
            # untraced's CPU time per fork over the mode's: the forks/s that CPU time allows.
            "cpu_ratio": {"untraced": 1.0, **{m: 1 / paired_ratio(ns, m) for m in traced}},
            "cpu_ratio_ci": {
                m: tuple(sorted(1 / x for x in bootstrap_interval(cpu[vmas], lambda a, m=m: paired_ratio(a, m))))
                for m in traced
            },
            "x_empty_ci": (
                {m: bootstrap_interval(cpu[vmas], lambda a, m=m: x_empty(a, m)) for m in traced if m != "empty"}
                if has_floor
                else {}
            ),
        }
    return summary


def targets(summary: dict, cpu: dict) -> list[dict]:
    """The issue's two targets, each with its estimate, 95% interval and verdict.

    phase: at the counts the issue names (1600 and 6400 extra VMAs). fork: at
    6400, from forks/s and from the forking thread's CPU time per fork; and,
    when a smaller count ran, from the CPU time fork adds per fork there
    (fork attaches no per-VMA program, so what it adds does not grow with
    VMAs, and it is measured best where forks are short) over untraced's CPU
    time per fork at 6400.
    """
    import numpy as np

    out = []

    def add(target: str, vmas, estimate, ci, limit: float, upper: bool) -> None:
        out.append({"target": target, "vmas": vmas, "estimate": estimate, "ci": ci,
                    "verdict": verdict(ci, limit, upper)})

    for vmas, s in summary.items():
        if "phase" in s["x_empty_ci"] and int(vmas) in (1600, 6400):
            add(f"phase adds <= {PHASE_X_EMPTY_MAX:g}x the empty programs' ns/VMA", vmas, s["x_empty"].get("phase"),
                s["x_empty_ci"]["phase"], PHASE_X_EMPTY_MAX, upper=True)
    large = next((v for v in summary if int(v) == 6400), None)
    if large is None or "fork" not in summary[large]["vs_untraced_ci"]:
        return out
    s = summary[large]
    keep = f"--level fork keeps >= {FORK_RATE_MIN:g} of untraced forks/s"
    add(keep, large, s["vs_untraced"]["fork"], s["vs_untraced_ci"]["fork"], FORK_RATE_MIN, upper=False)
    add(f"{keep} (by CPU time per fork)", large, s["cpu_ratio"]["fork"], s["cpu_ratio_ci"]["fork"], FORK_RATE_MIN,
        upper=False)
    small = min(summary, key=int)
    if int(small) < int(large):
        rounds = {f"{m}@{v}": cpu[v][m] for v in (small, large) for m in ("untraced", "fork")}

        def scaled(a: dict) -> float:
            fork_ns = float(np.median(a[f"untraced@{large}"]))
            return fork_ns / (fork_ns + paired_added(a, f"fork@{small}", f"untraced@{small}"))

        arrays = {k: np.asarray(v, dtype=float) for k, v in rounds.items()}
        add(f"{keep} (its per-fork CPU cost at {small} VMAs, over a fork's at {large})", large, scaled(arrays),
            bootstrap_interval(rounds, scaled), FORK_RATE_MIN, upper=False)
    return out


def render(summary: dict, modes: list[str], goals: list[dict]) -> str:
    lines = []
    traced = [m for m in modes if m != "untraced"]
    head = f"{'mode':<13}" + "".join(f"{f'{v} VMAs':>34}" for v in summary)
    sub = f"{'':<13}" + "".join(f"{'forks/s':>9}{'/untr':>7}{'ns/VMA':>9}{'x empty':>9}" for _ in summary)
    lines += [head, sub]
    for m in modes:
        row = f"{m:<13}"
        for s in summary.values():
            add = s["added_ns_per_vma"].get(m)
            xe = s["x_empty"].get(m)
            row += f"{s['forks_per_s'][m]:>9.0f}{s['vs_untraced'][m]:>7.3f}"
            row += f"{add:>9.1f}" if add is not None else f"{'':>9}"
            row += f"{xe:>9.2f}" if xe is not None else f"{'':>9}"
        lines.append(row)
    if goals:
        lines += ["", "targets (estimate, 95% bootstrap interval over rounds):"]
        for g in goals:
            lo, hi = g["ci"]
            est = g["estimate"]
            lines.append(f"  {g['target']} at {g['vmas']} VMAs: {est:.3f} [{lo:.3f}, {hi:.3f}]  {g['verdict']}"
                         if est is not None else f"  {g['target']} at {g['vmas']} VMAs: no estimate")
    ablated = [m for m in modes if m in MEANING]
    if ablated and "phase" in traced:
        lines += ["", "ablation: ns per VMA that each piece of the per-VMA program costs (no_X: phase - no_X;"
                  " the last rows: what the older way costs over phase's)"]
        lines.append(f"{'piece':<40}" + "".join(f"{f'{v} VMAs':>12}" for v in summary))
        for m in ablated:
            lines.append(f"{MEANING[m][0]:<40}" + "".join(f"{s['ablation_ns_per_vma'][m]:>12.1f}" for s in summary.values()))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vmas", type=int, nargs="+", default=[1600, 6400])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one run")
    parser.add_argument("--cpu", type=int, default=0)
    parser.add_argument("--modes", nargs="+", default=DEFAULT_MODES, choices=list(MODES),
                        help="modes to run (untraced is always run)")
    parser.add_argument("--backend", default=None, help="raw_tracepoint or tracepoint (default: doctor's choice)")
    parser.add_argument("--switches", action="store_true", help="also time context switches under each mode")
    parser.add_argument("--json", type=Path, help="also write the raw figures and the summary here")
    args = parser.parse_args()

    modes = ["untraced"] + [m for m in args.modes if m != "untraced"]
    keep_off_cpu(args.cpu)  # as `tracer record --cpu` does
    plan = choose_methods(survey_host(try_load=False), forced=args.backend)
    if plan.backend is None:
        raise SystemExit(f"bench_overhead: {plan.reason}")
    backend = plan.backend
    headers.apply(headers.resolve_headers())
    offsets = offsets_from_btf()
    probes: dict[str, BracketProbe] = {}
    print(f"backend {backend}; loading {len(modes) - 1} variants ...", file=sys.stderr, flush=True)
    try:
        for m in modes[1:]:
            probes[m] = BracketProbe(BracketConfig(backend=backend, **offsets, **MODES[m])).load()
            probes[m].detach()
        programs = {m: p.per_vma_program for m, p in probes.items()}
        refused = {m: p.typed_refused for m, p in probes.items() if p.typed_refused}
        print("per-VMA program: " + ", ".join(f"{m} {prog or '-'}" for m, prog in programs.items())
              + "".join(f"; {m}: {why}" for m, why in refused.items()), flush=True)
        print(f"{args.rounds} interleaved rounds of {args.seconds:g} s per mode, CPU {args.cpu}", flush=True)
        figures = {v: {m: [] for m in modes} for v in args.vmas}
        cpu_per_fork = {v: {m: [] for m in modes} for v in args.vmas}
        vmas_totals: dict[int, int] = {}
        switch_ns: dict[str, list[float]] = {m: [] for m in modes}
        lost = 0
        for rnd in range(args.rounds):
            for vmas in args.vmas:
                for m in modes:
                    rate, cpu_ns, vmas_totals[vmas] = one_run(vmas, args.seconds, args.cpu, probes.get(m))
                    figures[vmas][m].append(rate)
                    cpu_per_fork[vmas][m].append(cpu_ns)
            if args.switches:
                for m in modes:
                    switch_ns[m].append(switch_run(args.seconds, args.cpu, probes.get(m)))
            print(f"  round {rnd + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        lost = sum(p.counters()["lost_ringbuf"] for p in probes.values())
    finally:
        for p in probes.values():
            p.close()

    summary = summarise(figures, cpu_per_fork, vmas_totals, modes)
    print()
    goals = targets(summary, cpu_per_fork)  # bootstrap intervals: computed once, printed and saved
    print(render(summary, modes, goals))
    switches = {}
    if args.switches:
        med = {m: statistics.median(v) for m, v in switch_ns.items()}
        switches = {"ns_per_switch": med, "added_ns": {m: med[m] - med["untraced"] for m in modes if m != "untraced"}}
        print("\ncontext switches (pipe ping-pong on one CPU): ns per switch, and added over untraced")
        for m in modes:
            added = switches["added_ns"].get(m)
            print(f"{m:<13}{med[m]:>9.0f}" + (f"{added:>+9.0f}" if added is not None else ""))
    print(f"\n/untr: forks/s relative to untraced (1.000 = no slowdown); ns/VMA: CPU time the forking thread "
          f"spends per fork over untraced's, over VMAs copied; x empty: that as a multiple of the empty "
          f"programs'. Ring buffer records lost: {lost}")
    if args.json:
        args.json.write_text(json.dumps({"backend": backend, "rounds": args.rounds, "seconds": args.seconds,
                                         "cpu": args.cpu, "modes": {m: MODES[m] for m in modes},
                                         "per_vma_program": programs,
                                         "raw": {"forks_per_s": figures, "cpu_ns_per_fork": cpu_per_fork},
                                         "summary": summary, "targets": goals, "switches": switches,
                                         "raw_switch_ns": switch_ns}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
