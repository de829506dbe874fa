#!/usr/bin/env python3
"""The tracepoint bracket checked against exact probes, per fork, in the same recordings.

Where the kernel lets fentry/fexit or kprobe/kretprobe attach to dup_mmap
(Debian's 6.1 does), `tracer record` runs both methods at once and joins
them per fork. For each recording given, this prints, over the forks both
measured, the median and p90 of:

  dup_mmap    bracket (parent lock -> parent unlock) vs exact (entry -> return):
              difference (exact - bracket, ns) and ratio (bracket / exact)
  outside     the parts of dup_mmap the bracket cannot see: entry -> parent
              lock, parent unlock -> return
  tree copy   the bracket's corrected mt_dup (child lock -> first store, less
              one mean VMA step) vs the span an exact neighbour closes: child
              lock -> first vm_area_dup entry (where vm_area_dup was probed)

The bracket is what most kernels allow; this is the evidence that it measures
what it claims. Times taken under emulation are not hardware latencies:
compare the ratios, and say so when quoting them.

    .venv/bin/python scripts/bracket_vs_exact.py REC.parquet [...] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from analysis.errors import TracerError  # noqa: E402
from analysis.recording import load_recording  # noqa: E402


def _spread(values: np.ndarray) -> dict[str, float | None]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"n": 0, "median": None, "p90": None}
    return {"n": int(values.size), "median": float(np.median(values)), "p90": float(np.percentile(values, 90))}


def compare(forks: pd.DataFrame) -> dict[str, dict]:
    """Per comparison: {difference, ratio} spreads over forks both methods timed (usable ones)."""
    both = forks[forks["usable"] & forks["exact_dup_mmap_ns"].notna()]
    exact = both["exact_dup_mmap_ns"].to_numpy(dtype="float64")
    bracket = both["dup_mmap_ns"].to_numpy(dtype="float64")
    entry = both["exact_ts_entry"].astype("int64").to_numpy()
    exit_ = both["exact_ts_exit"].astype("int64").to_numpy()
    out = {
        "forks": {"traced": int(len(forks)), "both": int(len(both))},
        "dup_mmap": {
            "exact_ns": _spread(exact),
            "bracket_ns": _spread(bracket),
            "difference_ns": _spread(exact - bracket),
            "ratio": _spread(bracket / exact),
        },
        "outside": {
            "entry_to_parent_lock_ns": _spread((both["ts_parent_lock"].astype("int64").to_numpy() - entry).astype(float)),
            "parent_unlock_to_return_ns": _spread(
                (exit_ - both["ts_parent_unlock"].astype("int64").to_numpy()).astype(float)
            ),
        },
    }
    first_dup = both["exact_vm_area_dup_first_ns"].to_numpy(dtype="float64")
    if np.isfinite(first_dup).any():
        tight = entry + first_dup - both["ts_child_lock"].astype("int64").to_numpy()
        corrected = both["mt_dup_ns"].to_numpy(dtype="float64")
        out["tree_copy"] = {
            "neighbour_ns": _spread(tight),
            "bracket_corrected_ns": _spread(corrected),
            "bracket_raw_ns": _spread(both["mt_dup_raw_ns"].to_numpy(dtype="float64")),
            "difference_ns": _spread(tight - corrected),
            "ratio": _spread(corrected / tight),
        }
    return out


def _fmt(spread: dict, unit: str = "ns") -> str:
    if not spread["n"]:
        return "n/a"
    if unit == "ratio":
        return f"median {spread['median']:.3f}  p90 {spread['p90']:.3f}"
    return f"median {spread['median'] / 1e3:9.2f} us  p90 {spread['p90'] / 1e3:9.2f} us"


def render(path: str, meta: dict, result: dict) -> str:
    kernel = (meta.get("kernel") or {}).get("release", "?")
    workload = meta.get("workload") or {}
    attach = ", ".join(f"{fn} ({a['via']})" for fn, a in ((meta.get("exact") or {}).get("attach") or {}).items())
    lines = [
        f"{path}: kernel {kernel}, {workload.get('extra_vmas', '?')} extra VMAs, exact: {attach or 'none'}",
        f"  forks timed by both: {result['forks']['both']} of {result['forks']['traced']}",
    ]
    d = result["dup_mmap"]
    lines += [
        f"  dup_mmap exact            {_fmt(d['exact_ns'])}",
        f"  dup_mmap bracket          {_fmt(d['bracket_ns'])}",
        f"  exact - bracket           {_fmt(d['difference_ns'])}",
        f"  bracket / exact           {_fmt(d['ratio'], 'ratio')}",
        f"  entry -> parent lock      {_fmt(result['outside']['entry_to_parent_lock_ns'])}",
        f"  parent unlock -> return   {_fmt(result['outside']['parent_unlock_to_return_ns'])}",
    ]
    if "tree_copy" in result:
        t = result["tree_copy"]
        lines += [
            f"  tree copy: child lock -> first vm_area_dup (exact end)  {_fmt(t['neighbour_ns'])}",
            f"  tree copy: bracket-corrected mt_dup                      {_fmt(t['bracket_corrected_ns'])}",
            f"  tree copy: bracket raw (child lock -> first store)       {_fmt(t['bracket_raw_ns'])}",
            f"  neighbour - corrected                                    {_fmt(t['difference_ns'])}",
            f"  corrected / neighbour                                    {_fmt(t['ratio'], 'ratio')}",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recordings", nargs="+")
    parser.add_argument("--json", action="store_true", help="one JSON document instead of text")
    args = parser.parse_args(argv)
    results = {}
    try:
        for path in args.recordings:
            rec = load_recording(path)
            if not (rec.forks["exact_dup_mmap_ns"].notna()).any():
                raise TracerError(f"{path}: no fork was timed by an exact probe (record where dup_mmap can be probed)")
            results[path] = (rec.meta, compare(rec.forks))
    except TracerError as err:
        print(f"bracket_vs_exact: error: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({path: result for path, (_, result) in results.items()}, indent=2))
    else:
        print("\n\n".join(render(path, meta, result) for path, (meta, result) in results.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
