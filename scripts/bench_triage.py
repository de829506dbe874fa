#!/usr/bin/env python3
"""Does `tracer compare` cry wolf, and does it see a real change? Measured on this host.

One tracer process records one interleaved series of the spawn workload with
three arms per round (the order rotated each round):
  aa1, aa2   the same setup twice (A/A): any flag between them is a false alarm
  inj        the same setup with a known extra cost per VMA store: bracket.c's
             test-only INJECT_STORE build spins N ns before every mas_store()
             but the first, so vma_loop grows and mt_dup and tail do not
N is chosen by a short pilot series to make vma_loop about --effect % slower;
the change it really made is measured over every round of the main series
(median of the per-round ratios) and printed as the ground truth.

The rounds are cut into disjoint blocks of --runs rounds; each block is one
comparison of --runs runs a side, tested as `tracer compare` does:
  paired      aa1 vs aa2 (and aa1 vs inj) of the same rounds: the interleaved
              A/B that `record --runs N` with arms records
  separate    aa1 of block j vs aa2 of block j+1: runs recorded minutes apart,
              as two separate `record --runs N` invocations would be (Welch)
  forks       one run a side, Mann-Whitney on its forks: what compare did
              before runs were the unit (the issue's false alarms)
Then the power and false-alarm rate at other numbers of runs and of forks
per run, to say what the defaults need. Asserts nothing. Needs root.

    sudo .venv/bin/python scripts/bench_triage.py [--rounds 100] [--runs 5] [--forks 100] [--json FILE]
        [--keep DIR]  then  scripts/bench_triage.py --from DIR --per-run p10  (the same runs, another statistic)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.compare import compare_recordings  # noqa: E402
from analysis.compare.samples import SamplePair, compare_samples  # noqa: E402
from analysis.recording import PHASES, Recording, load_recording  # noqa: E402
from tracer.record import RecordOptions, record  # noqa: E402

PARTS = ("mt_dup", "vma_loop", "tail")
READ_ONLY = False  # --from: analyse a kept series instead of recording


def record_series(out: Path, vmas: int, forks: int, rounds: int, inject: tuple[int, ...], cpu: int | None) -> dict[str, list[Recording]]:
    """One tracer process, BPF loaded once: `rounds` rounds of every arm; recordings by arm (--from: read only)."""
    if not READ_ONLY:
        opts = RecordOptions(spawn_vmas=vmas, spawn_list=[vmas], forks=forks, runs=rounds, inject_store_ns=inject,
                             output=out, quiet=True, cycle=False, cpu=cpu)
        record(opts, log=lambda msg: None)
    arms = {}
    for d in sorted(p for p in out.iterdir() if p.is_dir()):
        arms[d.name] = sorted((load_recording(p) for p in d.glob("*.parquet")), key=lambda r: r.meta["run"]["index"])
    return arms


def phase_median(rec: Recording, phase: str) -> float:
    f = rec.forks[rec.forks["usable"]]
    return float(np.nanmedian(f[phase].to_numpy(float)))


def realized(base: list[Recording], new: list[Recording], column: str) -> float:
    """The change `new` made, in %: median over rounds of the ratio of the rounds' medians."""
    ratios = [phase_median(n, column) / phase_median(b, column) for b, n in zip(base, new)]
    return 100.0 * (float(np.median(ratios)) - 1.0)


def truncated(rec: Recording, forks: int) -> Recording:
    return Recording(rec.path, rec.forks.head(forks), rec.meta)


def flags(c) -> dict[str, str]:
    return {r.metric: r.change for r in c.rows}


STATISTIC = "median"  # --per-run


def rates(aa1, aa2, inj, k: int, forks: int | None = None) -> dict:
    """Blocks of k rounds: paired A/A false alarms, separate-series A/A false alarms, power."""
    cut = (lambda rs: [truncated(r, forks) for r in rs]) if forks else (lambda rs: rs)
    blocks = len(aa1) // k
    out = {"runs": k, "forks": forks, "comparisons": blocks, "aa_paired": 0, "aa_separate": 0, "separate_comparisons": 0,
           "power": 0, "power_others_quiet": 0, "inj_others_flagged": 0}
    for j in range(blocks):
        sl = slice(j * k, (j + 1) * k)
        a, b, x = cut(aa1[sl]), cut(aa2[sl]), cut(inj[sl])
        aa = compare_recordings(a, b, model=False, attribute=None, statistic=STATISTIC)
        out["aa_paired"] += aa.verdict.change != "~"
        pw = compare_recordings(a, x, model=False, attribute=None, statistic=STATISTIC)
        f = flags(pw)
        hit = f["vma_loop"] == "regression"
        others = any(f[p] not in ("~",) for p in ("mt_dup", "tail"))
        out["power"] += hit
        out["power_others_quiet"] += hit and not others
        out["inj_others_flagged"] += others
        if j + 1 < blocks:
            nxt = slice((j + 1) * k, (j + 2) * k)
            sep = compare_recordings(a, cut(aa2[nxt]), model=False, attribute=None, statistic=STATISTIC)
            out["aa_separate"] += sep.verdict.change != "~"
            out["separate_comparisons"] += 1
    return out


def fork_level(aa1, aa2, inj) -> dict:
    """One run a side, forks as the unit (Mann-Whitney, Holm over the 5 phases): the old test."""
    false, hits = 0, 0
    for a, b, x in zip(aa1, aa2, inj):
        def test(u, v):
            pairs = [SamplePair("", p.name, u.forks[u.forks["usable"]][p.column].to_numpy(float),
                                v.forks[v.forks["usable"]][p.column].to_numpy(float)) for p in PHASES]
            return {r.metric: r.change for r in compare_samples(pairs, resamples=10)}
        false += any(c in ("regression", "improvement") for c in test(a, b).values())
        hits += test(a, x)["vma_loop"] == "regression"
    return {"comparisons": len(aa1), "aa_flagged": false, "power": hits}


def pct(n: int, d: int) -> str:
    return f"{n}/{d} = {100.0 * n / d:.0f}%" if d else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vmas", type=int, default=1000)
    ap.add_argument("--forks", type=int, default=100, help="forks per run")
    ap.add_argument("--rounds", type=int, default=100, help="rounds of the main series (each: aa1, aa2, inj)")
    ap.add_argument("--runs", type=int, default=5, help="runs a side per comparison (the default to judge)")
    ap.add_argument("--effect", type=float, default=10.0, help="injected change of vma_loop, in %%")
    ap.add_argument("--cpu", type=int, default=None, help="pin the workload to this CPU")
    ap.add_argument("--inject-ns", type=int, default=None, help="the spin per store, instead of the pilot's choice for --effect")
    ap.add_argument("--runs-list", default="2,3,5,8,10", type=lambda t: [int(x) for x in t.split(",")],
                    help="other runs a side to report the rates at (each needs 5 blocks: rounds >= 5 x runs)")
    ap.add_argument("--keep", type=Path, default=None, help="keep the recordings in this new directory")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    ap.add_argument("--from", dest="source", type=Path, default=None, help="analyse the series kept by --keep instead of recording")
    ap.add_argument("--per-run", default="median", help="what each run is reduced to (compare --per-run): median or p10")
    args = ap.parse_args()
    global READ_ONLY, STATISTIC
    STATISTIC = args.per_run
    if args.source is not None:
        READ_ONLY, args.keep = True, args.source

    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-triage-") as tmp:
        root = args.keep or Path(tmp)
        # Pilot: the realized extra per store at two spin targets, to aim at --effect (every arm
        # pays the spin's clock reads; the loop's granularity is one bpf_ktime_get_ns() call).
        if args.inject_ns is not None or READ_ONLY:  # no pilot: its 6 rounds are noisy where runs are
            step, extra, inject = float("nan"), {}, args.inject_ns or 0
        else:
            pilot = record_series(root / "pilot", args.vmas, args.forks, 6, (0, 1, 60), args.cpu)
            base = pilot["inject0"]
            step = float(np.median([phase_median(r, "vma_step_ns") for r in base]))
            extra = {ns: float(np.median([phase_median(n, "vma_step_ns") - phase_median(b, "vma_step_ns")
                                          for b, n in zip(base, pilot[f"inject{ns}"])])) for ns in (1, 60)}
            slope = max((extra[60] - extra[1]) / 59.0, 0.1)
            want = step * args.effect / 100.0
            inject = int(round(min(2000.0, max(1.0, 1 + (want - extra[1]) / slope))))
        arms = record_series(root / "main", args.vmas, args.forks, args.rounds, (0, 0, inject), args.cpu)
        if READ_ONLY:
            inject = int(next(a for a in arms if "." not in a)[len("inject"):])
        aa1, aa2, inj = arms["inject0.1"], arms["inject0.2"], arms[f"inject{inject}"]
        truth = {p: realized(aa1, inj, f"{p}_ns") for p in ("dup_mmap", "mt_dup", "vma_loop", "tail")}
        truth_aa = {p: realized(aa1, aa2, f"{p}_ns") for p in ("dup_mmap", "mt_dup", "vma_loop", "tail")}
        spread = {p: 100.0 * float(np.std(np.log([phase_median(r, f"{p}_ns") for r in aa1]), ddof=1))
                  for p in ("mt_dup", "vma_loop", "tail")}
        main_rates = rates(aa1, aa2, inj, args.runs)
        by_runs = [rates(aa1, aa2, inj, k) for k in args.runs_list if k != args.runs and len(aa1) // k >= 5]
        by_forks = [rates(aa1, aa2, inj, args.runs, f) for f in (25, 50) if f < args.forks]
        old = fork_level(aa1, aa2, inj)
    doc = {
        "host_kernel": aa1[0].meta["kernel"]["release"],
        "vmas": args.vmas, "forks": args.forks, "rounds": args.rounds, "runs": args.runs,
        "pilot": {"vma_step_ns": step, "extra_ns_per_store": extra, "inject_ns": inject},
        "realized_change_pct": truth, "aa_change_pct": truth_aa, "between_run_sd_pct": spread,
        "default": main_rates, "by_runs": by_runs, "by_forks": by_forks, "fork_level": old,
        "seconds": round(time.monotonic() - t0), "per_run": STATISTIC,
    }
    print(f"bench_triage: spawn {args.vmas} extra VMAs, {args.forks} forks a run, {args.rounds} rounds x 3 arms "
          f"(aa1, aa2, inj), one tracer process, kernel {doc['host_kernel']}, {doc['seconds']} s; per run: {STATISTIC}")
    if extra:
        print(f"injected: {inject} ns spin per mas_store (pilot: vma_step {step:.0f} ns; 1 ns -> +{extra[1]:.0f} ns, "
              f"60 ns -> +{extra[60]:.0f} ns a store)")
    else:
        print(f"injected: {inject} ns spin per mas_store (--inject-ns, no pilot)")
    print("ground truth, median over rounds of inj/aa1 (and aa2/aa1):")
    for p in truth:
        print(f"  {p:<9} {truth[p]:+6.1f}%   (A/A {truth_aa[p]:+5.1f}%)")
    print("between-run sd of the per-run median (aa1, log scale): " + ", ".join(f"{p} {v:.1f}%" for p, v in spread.items()))
    print()
    print(f"{'runs':>4} {'forks':>5} {'n':>3}  {'A/A paired':>14} {'A/A separate':>14} {'power +inj':>14} {'others flagged':>14}")
    for r in [main_rates, *by_runs, *by_forks]:
        print(f"{r['runs']:>4} {r['forks'] or args.forks:>5} {r['comparisons']:>3}  {pct(r['aa_paired'], r['comparisons']):>14} "
              f"{pct(r['aa_separate'], r['separate_comparisons']):>14} {pct(r['power'], r['comparisons']):>14} "
              f"{pct(r['inj_others_flagged'], r['comparisons']):>14}")
    print()
    print(f"before (one run a side, Mann-Whitney on forks): A/A flagged {pct(old['aa_flagged'], old['comparisons'])}, "
          f"injected change found {pct(old['power'], old['comparisons'])}")
    print("A/A paired: aa1 vs aa2 of the same rounds; separate: aa1 of one block vs aa2 of the next (Welch);")
    print("power: vma_loop flagged slower, aa1 vs inj of the same rounds; others flagged: mt_dup or tail flagged.")
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
