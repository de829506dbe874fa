"""Compare pyperf benchmark files (or suites) with the statistics used for recordings.

pyperf compare_to tests with a t-test; here the values of each benchmark
(every run's values, warmups excluded, seconds per fork for `tracer bench`) go
through the same Mann-Whitney U, bootstrap CI and Holm correction as phases
do, benchmarks matched by name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from analysis.compare.context import benchmark_context
from analysis.compare.result import Comparison
from analysis.compare.samples import SamplePair, compare_samples
from analysis.compare.stats import ALPHA, MIN_SAMPLES
from analysis.errors import InputError, TracerError
from analysis.files import check_input, open_input

__all__ = ["is_pyperf_file", "load_benchmarks", "compare_benchmarks"]


def is_pyperf_file(path: Path | str, strict: bool = False) -> bool:
    """A pyperf JSON file (plain or .json.gz), told apart from a recording by its name and head.

    strict: a plain .json must name "benchmarks" in its head (pyperf writes it
    first), so other JSON in a directory (a sweep's index.json) is not taken for one.
    """
    name = str(path)
    if name.endswith(".json.gz"):
        return True
    if not name.endswith(".json"):
        return False
    if not strict:
        return True  # named .json: read as pyperf's, whose loader says what is wrong with it
    try:
        with open_input(path, "benchmark file") as f:
            head = f.read(4096)
    except InputError:
        return True  # let the loader report the error
    return b'"benchmarks"' in head


def load_benchmarks(paths: Sequence[Path | str]) -> list[tuple[str, Any]]:
    """(file, pyperf.Benchmark) for every benchmark of every file."""
    import pyperf

    out = []
    for path in paths:
        check_input(path, "benchmark file")  # a regular file: a FIFO would hang pyperf's reader
        try:
            suite = pyperf.BenchmarkSuite.load(str(path))
        except FileNotFoundError:
            raise InputError(f"benchmark file {path} does not exist") from None
        except json.JSONDecodeError as err:
            raise InputError(f"{path} is not JSON, so not a pyperf benchmark file: {err.msg} at line {err.lineno}") from None
        except RecursionError:
            raise InputError(f"{path} is not a pyperf benchmark file: JSON nested too deeply") from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError) as err:
            raise InputError(f"{path} is not a pyperf benchmark file: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
        for bench in suite.get_benchmarks():
            out.append((str(path), bench))
    if not out:
        raise TracerError("no pyperf benchmarks given")
    return out


def compare_benchmarks(
    base_paths: Sequence[Path | str],
    new_paths: Sequence[Path | str],
    *,
    alpha: float = ALPHA,
    min_samples: int = MIN_SAMPLES,
    resamples: int = 2000,
) -> Comparison:
    base, new = load_benchmarks(base_paths), load_benchmarks(new_paths)

    def by_name(items: list[tuple[str, Any]]) -> dict[str, list[float]]:
        values: dict[str, list[float]] = {}
        for _, bench in items:
            values.setdefault(bench.get_name(), []).extend(bench.get_values())
        return values

    base_values, new_values = by_name(base), by_name(new)
    names = [n for n in base_values if n in new_values]
    only_base = [n for n in base_values if n not in new_values]
    only_new = [n for n in new_values if n not in base_values]
    warnings: list[str] = []
    if not names and len(base_values) == 1 and len(new_values) == 1:
        (b_name,), (n_name,) = base_values, new_values
        warnings.append(f"DIFFERENT BENCHMARKS PAIRED: base {b_name}, new {n_name}")
        pairs = [SamplePair("", f"{b_name} -> {n_name}", base_values[b_name], new_values[n_name])]
        only_base, only_new = [], []
    else:
        pairs = [SamplePair("", name, base_values[name], new_values[name]) for name in names]
    context = benchmark_context([b.get_metadata() for _, b in base], [b.get_metadata() for _, b in new])
    warnings = [f"{item.key.upper()} DIFFERS: base {item.base}, new {item.new}" for item in context if item.loud] + warnings
    if not pairs:
        warnings.append("NO BENCHMARK IN COMMON: nothing was compared")
    rows = compare_samples(pairs, alpha=alpha, min_samples=min_samples, resamples=resamples)
    notes = [
        f"{r.metric}: {r.base_n} base and {r.new_n} new values; at least {min_samples} a side are needed to decide"
        for r in rows
        if not r.decided
    ]
    comparison = Comparison(
        kind="pyperf",
        unit="s",
        base_files=sorted({f for f, _ in base}),
        new_files=sorted({f for f, _ in new}),
        context=context,
        rows=rows,
        unmatched_base=only_base,
        unmatched_new=only_new,
        warnings=warnings,
        notes=notes,
        alpha=alpha,
        min_samples=min_samples,
        groups=[""],
    )
    comparison.values = {(p.group, p.metric): (p.base, p.new) for p in pairs}
    return comparison
