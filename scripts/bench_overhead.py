#!/usr/bin/env python3
"""How much does tracing slow fork() down? Side by side, interleaved, in one run.

For each extra-VMA count, the spawn workload (pinned to one CPU) runs:
  untraced  no BPF at all
  empty     programs that return at once, on the same tracepoints: the floor
            any tracepoint-based tracer pays here
  traced    the full bracket, system-wide, as `tracer record` runs it
Rounds interleave the three (A B C A B C ...) because this shared machine
drifts by several percent between minutes; medians over rounds are compared.
Prints forks/s and ratios; it asserts nothing. Needs root.

    sudo .venv/bin/python scripts/bench_overhead.py [--rounds 5] [--seconds 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tracer.host import headers  # noqa: E402
from tracer.host.methods import choose_methods  # noqa: E402
from tracer.host.probe import probe_host  # noqa: E402
from tracer.probes.bracket import BracketConfig, BracketProbe, offsets_from_btf  # noqa: E402
from tracer.record.context import keep_off_cpu  # noqa: E402
from tracer.workload.spawn import SpawnWorkload  # noqa: E402

MODES = ("untraced", "empty", "traced")


def one_run(vmas: int, seconds: float, cpu: int, probe: BracketProbe | None) -> float:
    """forks/s of one spawn run, with `probe` (if any) drained meanwhile."""
    with SpawnWorkload(vmas, seconds=seconds, cpu=cpu) as work:
        work.start()
        stop = threading.Event()
        poller = None
        if probe is not None and not probe.config.empty:
            def drain() -> None:
                while not stop.is_set():
                    probe.poll(50)
            poller = threading.Thread(target=drain, daemon=True)
            poller.start()
        work.go()
        result = work.wait(timeout=seconds + 120)
        stop.set()
        if poller:
            poller.join()
    return result.forks_per_sec


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vmas", type=int, nargs="+", default=[0, 1600, 6400])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one run")
    parser.add_argument("--cpu", type=int, default=0)
    parser.add_argument("--backend", default=None, help="raw_tracepoint or tracepoint (default: doctor's choice)")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args()

    keep_off_cpu(args.cpu)  # as `tracer record --cpu` does
    plan = choose_methods(probe_host(try_load=False), forced=args.backend)
    if plan.backend is None:
        raise SystemExit(f"bench_overhead: {plan.reason}")
    backend = plan.backend
    headers.apply(headers.resolve_headers())
    offsets = offsets_from_btf()
    configs = {
        "empty": BracketConfig(backend=backend, empty=True, **offsets),
        "traced": BracketConfig(backend=backend, **offsets),
    }
    print(f"backend {backend}; {args.rounds} interleaved rounds of {args.seconds:g} s per mode, CPU {args.cpu}", flush=True)

    figures: dict[int, dict[str, list[float]]] = {v: {m: [] for m in MODES} for v in args.vmas}
    lost = 0
    for rnd in range(args.rounds):
        for vmas in args.vmas:
            for mode in MODES:
                if mode == "untraced":
                    figures[vmas][mode].append(one_run(vmas, args.seconds, args.cpu, None))
                    continue
                with BracketProbe(configs[mode]) as probe:
                    figures[vmas][mode].append(one_run(vmas, args.seconds, args.cpu, probe))
                    lost += probe.counters()["lost_ringbuf"]
        print(f"  round {rnd + 1}/{args.rounds} done", file=sys.stderr, flush=True)

    print()
    print(f"{'extra VMAs':>10} {'untraced/s':>11} {'empty/s':>9} {'traced/s':>9} "
          f"{'empty/untr':>10} {'traced/untr':>11} {'traced/empty':>12} {'ns/fork added':>13}")
    summary = {}
    for vmas in args.vmas:
        med = {m: statistics.median(figures[vmas][m]) for m in MODES}
        added_ns = (1 / med["traced"] - 1 / med["untraced"]) * 1e9
        summary[vmas] = {**{f"{m}_forks_per_s": med[m] for m in MODES}, "added_ns_per_fork": added_ns}
        print(f"{vmas:>10} {med['untraced']:>11.0f} {med['empty']:>9.0f} {med['traced']:>9.0f} "
              f"{med['empty'] / med['untraced']:>10.3f} {med['traced'] / med['untraced']:>11.3f} "
              f"{med['traced'] / med['empty']:>12.3f} {added_ns:>13.0f}")
    print(f"\nratios are forks/s relative to untraced (1.000 = no slowdown); ring buffer records lost: {lost}")
    if args.json:
        args.json.write_text(json.dumps({"backend": backend, "rounds": args.rounds, "seconds": args.seconds,
                                         "raw": figures, "median": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
