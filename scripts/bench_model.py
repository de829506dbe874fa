#!/usr/bin/env python3
"""Time the replay model: build a parent tree, __mt_dup() it, run the replace loop.

Prints seconds per step at several VMA counts, measured side by side in one run,
and the ratio of the 65,530-VMA total (vm.max_map_count's default) to the 2 s
target. Informational only: it asserts nothing.

    .venv/bin/python scripts/bench_model.py [--repeat N]
"""

from __future__ import annotations

import argparse
import statistics
import time

from analysis.model import (
    build_bulk,
    build_from_history,
    compare_paths,
    dup_mmap_replace,
    history_mmap_order,
    mt_dup,
    synthetic_layout,
)

TARGET_S = 2.0
SIZES = (1_000, 10_000, 65_530)


def one_run(n: int, parent_build: str) -> dict[str, float]:
    layout = synthetic_layout(n, gaps=True)
    ranges = [(v.start, v.end - 1) for v in layout]
    t0 = time.perf_counter()
    if parent_build == "bulk":
        tree = build_bulk(layout).tree
    else:
        tree = build_from_history(history_mmap_order(layout, "descending"))
    t1 = time.perf_counter()
    child, _ = mt_dup(tree)
    t2 = time.perf_counter()
    dup_mmap_replace(child, ranges)
    t3 = time.perf_counter()
    return {"build": t1 - t0, "dup": t2 - t1, "replace": t3 - t2, "total": t3 - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs per point; medians are printed")
    args = ap.parse_args()
    print(f"{'VMAs':>7}  {'parent build':<16} {'build s':>8} {'dup s':>7} {'replace s':>9} {'total s':>8}  total/2s")
    for parent_build in ("bulk", "mmap_descending"):
        for n in SIZES:
            runs = [one_run(n, parent_build) for _ in range(args.repeat)]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            print(
                f"{n:>7,}  {parent_build:<16} {med['build']:>8.3f} {med['dup']:>7.3f} "
                f"{med['replace']:>9.3f} {med['total']:>8.3f}  {med['total'] / TARGET_S:>7.2f}"
            )
    t0 = time.perf_counter()
    compare_paths(synthetic_layout(65_530, gaps=True))
    print(f"\ncompare_paths (both kernels' paths, what `tracer model --vmas 65530` runs): "
          f"{time.perf_counter() - t0:.3f} s")


if __name__ == "__main__":
    main()
