"""The pyperf benchmark program for one VMA count: `python -m tracer.bench.worker --vmas N`.

pyperf re-runs this module as its worker processes (program_args), each with
warmups and values; a value is the time of `loops` fork+exit+wait iterations of
spawn.c measured by spawn.c itself (CLOCK_MONOTONIC around its loop), so no
Python runs inside the timed region and pyperf's calibration only picks how
many forks make a value. pyperf divides by loops: values are seconds per fork.
Every pyperf option works (-p, -n, -w, -l, --fast, --rigorous, -o, --append).
"""

from __future__ import annotations

import platform
import sys

import pyperf

from tracer import __version__
from tracer.workload.spawn import LAYOUTS, run_spawn

__all__ = ["benchmark_name", "main"]

# forktrace_method in the metadata: a traced run's forks carry the tracer's
# cost, so `tracer compare` warns loudly when one side was traced and the
# other was not.
METHODS = {
    False: "pyperf spawn.c loop, untraced",
    True: "pyperf spawn.c loop, traced",
}


def benchmark_name(layout: str, vmas: int) -> str:
    """One name per setup, so pyperf compare_to and tracer compare match runs by it."""
    return f"spawn-{layout}-{vmas}"


def time_forks(loops: int, vmas: int, layout: str, cpu: int | None) -> float:
    """Seconds for `loops` forks of a process with `vmas` extra VMAs (setup not timed)."""
    result = run_spawn(vmas, forks=loops, cpu=cpu, layout=layout, timeout=600)
    if result.forks != loops:
        raise RuntimeError(f"spawn ran {result.forks} of {loops} forks ({result.stop}, {result.fork_error})")
    return result.elapsed_ns / 1e9


def _pass_args(cmd: list[str], args) -> None:
    """Our options, repeated on each worker's command line."""
    cmd += ["--vmas", str(args.vmas), "--layout", args.layout]
    if args.spawn_cpu is not None:
        cmd += ["--spawn-cpu", str(args.spawn_cpu)]
    if args.traced:
        cmd.append("--traced")


def main(argv: list[str] | None = None) -> None:
    runner = pyperf.Runner(program_args=("-m", "tracer.bench.worker"), add_cmdline_args=_pass_args)
    runner.argparser.add_argument("--vmas", type=int, required=True, help="extra VMAs of the forking process")
    runner.argparser.add_argument("--layout", choices=LAYOUTS, default="gapped")
    runner.argparser.add_argument("--spawn-cpu", type=int, default=None, help="pin the forking process to this CPU")
    runner.argparser.add_argument("--traced", action="store_true", help="say in the metadata that a tracer runs alongside")
    args = runner.parse_args(argv)
    runner.metadata["description"] = f"fork+exit+wait of a process with {args.vmas} extra VMAs ({args.layout})"
    runner.metadata["spawn_vmas"] = args.vmas
    runner.metadata["spawn_layout"] = args.layout
    if args.spawn_cpu is not None:
        runner.metadata["spawn_cpu"] = args.spawn_cpu
    runner.metadata["kernel_release"] = platform.release()
    runner.metadata["forktrace_version"] = __version__
    runner.metadata["forktrace_method"] = METHODS[args.traced]
    runner.bench_time_func(
        benchmark_name(args.layout, args.vmas), time_forks, args.vmas, args.layout, args.spawn_cpu
    )


if __name__ == "__main__":
    main(sys.argv[1:])
