"""Check the sampled split of dup_mmap's per-VMA work against exact timings of the same run.

Where the kernel lets probes attach (fentry, else kprobe) to vm_area_dup,
anon_vma_fork and copy_page_range, exact_split.c sums each one's
entry->exit inside copy_process() while `tracer record --spawn --level full`
samples the same forks. Each function's exact ns per fork must lie between
the lower end of the sampled function's 95% interval and its upper end plus
the samples taken in that function's own probe (fentry -> fexit holds the
body and part of the trampoline, which the samples give to the tracer),
widened by TOLERANCE. vm_area_dup's calls per fork must equal the VMAs
copied. Where the probes take more than MAX_TRACER_SHARE of all samples (a
guest under emulation, where a trampoline costs microseconds) there is no
verdict: the result says "inconclusive" and why.

    python3 scripts/exact_split.py [--vmas 400] [--forks 100] [--hz 1999] [--json OUT]

Exit status 0 when every attached function agrees, 1 when one does not, 77
(automake's "skipped") when the kernel refuses the probes, with its reason.
This host's kind of kernel (lockdown=integrity, no kprobes) refuses them;
the Debian 6.1 and 6.12 guests allow them (guest step `exact-split`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SOURCE = Path(__file__).with_name("exact_split.c")
FUNCTIONS = ("vm_area_dup", "anon_vma_fork", "copy_page_range")  # enum fn in exact_split.c, in order
FORKS_KEY = len(FUNCTIONS)  # FN_FORKS
TOLERANCE = 0.10
# Above this share of the samples in the tracer, the probes dominate what they check: no verdict.
MAX_TRACER_SHARE = 0.25
SKIPPED = 77


@dataclass(frozen=True)
class Attach:
    """How one function can be probed here: fentry or kprobe at `symbol`, or None and why not."""

    function: str
    how: str | None
    symbol: str | None
    reason: str


def how_to_attach(function: str) -> Attach:
    """Ask the kernel: fentry by BTF id first, then a kprobe on each kallsyms name (clones included)."""
    from analysis.errors import TracerError
    from tracer.host import btf
    from tracer.host.attach import try_fentry, try_kprobe
    from tracer.host.kallsyms import symbol_names

    refusals = []
    try:
        ids = btf.load_btf().find(function, "func")
    except (TracerError, OSError) as err:
        ids, _ = [], refusals.append(f"fentry: no BTF ({err})")
    if ids:
        a = try_fentry(ids[0])
        if a.ok:
            return Attach(function, "fentry", function, "fentry attaches")
        refusals.append(f"fentry: {a.stage} {a.errno or a.log}")
    elif not refusals:
        refusals.append("fentry: not in BTF")
    # A .cold part is not the function's entry: a kprobe there would time nothing useful.
    names = [n for n in symbol_names([function]).get(function) or [] if not n.endswith(".cold")]
    if not names:
        refusals.append("kprobe: no kallsyms symbol (inlined)")
    for name in names:
        a = try_kprobe(name)
        if a.ok:
            return Attach(function, "kprobe", name, f"kprobe on {name} attaches")
        refusals.append(f"kprobe {name}: {a.stage} {a.errno or a.log}")
    return Attach(function, None, None, "; ".join(refusals))


def _cflags(attach: Mapping[str, Attach]) -> list[str]:
    via = {"fentry": "VIA_FENTRY", "kprobe": "VIA_KPROBE"}
    return [f"-DHOW_{fn.upper()}={via[a.how]}" for fn, a in attach.items() if a.how]


def compare(totals: Mapping[int, Mapping[str, int]], functions: Mapping[str, Any], stores: float,
            tolerance: float = TOLERANCE, probe_ns: Mapping[str, float] | None = None,
            tracer_share: float = 0.0) -> dict[str, Any]:
    """Exact sums of one process (enum fn -> calls, sum_ns; FORKS_KEY -> calls) against sampled functions.

    functions: analysis SampleEstimate.functions() of the same run (name -> Aggregate).
    Pure, so the rule is tested without BPF.
    """
    forks = int(totals.get(FORKS_KEY, {}).get("calls", 0))
    rows = []
    for i, name in enumerate(FUNCTIONS):
        t = totals.get(i)
        if t is None:
            continue
        exact = t["sum_ns"] / forks if forks else float("nan")
        sampled = functions.get(name)
        point = sampled.ns_per_fork if sampled else 0.0
        lo, hi = sampled.ci95 if sampled else (0.0, 0.0)
        # fentry -> fexit holds the body and part of the function's own trampoline: between the
        # sampled body and the body plus the samples taken in its trampoline and programs.
        own_probe = (probe_ns or {}).get(name, 0.0)
        agree = bool(forks) and lo * (1 - tolerance) <= exact <= (hi + own_probe) * (1 + tolerance)
        rows.append({"function": name, "calls_per_fork": t["calls"] / forks if forks else None,
                     "exact_ns_per_fork": exact, "sampled_ns_per_fork": point, "sampled_ci95": [lo, hi],
                     "samples": sampled.samples if sampled else 0, "nested": t.get("nested", 0),
                     "own_probe_ns_per_fork": own_probe, "agree": agree})
    vm = next((r for r in rows if r["function"] == "vm_area_dup"), None)
    calls_ok = vm is None or (vm["calls_per_fork"] is not None and abs(vm["calls_per_fork"] - stores) < 0.5)
    out = {"forks": forks, "stores": stores, "rows": rows, "tolerance": tolerance, "tracer_share": tracer_share,
           "vm_area_dup_calls_match_stores": calls_ok, "agree": bool(rows) and calls_ok and all(r["agree"] for r in rows)}
    if tracer_share > MAX_TRACER_SHARE:
        out["inconclusive"] = (f"the probes' own cost is {100 * tracer_share:.0f}% of the samples (more than "
                               f"{100 * MAX_TRACER_SHARE:.0f}%): the split they are checked against is mostly theirs")
    return out


def own_probe_samples(stacks, functions: Sequence[str]) -> dict[str, int]:
    """Samples taken in each function's own probe (its trampoline or programs, inside its call)."""
    from analysis.attribution.functions import _anchor, _lookup, _through_trampolines, classify
    from analysis.recording.stacks import stack_frames

    out: dict[str, int] = {}
    for (stack, window), n in stacks.items():
        if classify(stack, window).work != "tracer":
            continue
        frames = _through_trampolines(stack_frames(stack))
        at = _anchor(frames)
        work = next((w for f in frames[at + 1:] if (w := _lookup("work", f))), None) if at is not None else None
        if work in functions:
            out[work] = out.get(work, 0) + n
    return out


def _read_totals(bpf, tgid: int) -> dict[int, dict[str, int]]:
    out: dict[int, dict[str, int]] = {}
    for k, v in bpf["totals"].items():
        if k.tgid == tgid:
            out[int(k.fn)] = {"calls": int(v.calls), "sum_ns": int(v.sum_ns), "nested": int(v.nested)}
    return out


def run_check(vmas: int = 400, forks: int = 100, hz: int = 1999, workdir: Path | None = None) -> dict[str, Any]:
    """Probe, record and compare; {'skipped': why} where the kernel refuses the probes."""
    from analysis.attribution.attribute import attribute_groups
    from analysis.frame import group_recordings
    from analysis.recording import load_recording
    from tracer.host.headers import apply, resolve_headers
    from tracer.record import RecordOptions, record

    fork = how_to_attach("copy_process")
    attach = {fn: how_to_attach(fn) for fn in FUNCTIONS}
    result: dict[str, Any] = {"kernel": os.uname().release, "attach": {a.function: asdict(a) for a in (fork, *attach.values())}}
    if fork.how is None:
        return {**result, "skipped": f"copy_process cannot be probed: {fork.reason}"}
    if not any(a.how for a in attach.values()):
        return {**result, "skipped": "; ".join(f"{a.function}: {a.reason}" for a in attach.values())}
    from bcc import BPF

    apply(resolve_headers())
    bpf = BPF(text=SOURCE.read_text().encode(), cflags=_cflags({"copy_process": fork, **attach}))
    try:
        for a in (fork, *attach.values()):
            if a.how == "kprobe":
                bpf.attach_kprobe(event=a.symbol.encode(), fn_name=f"on_{a.function}_entry".encode())
                bpf.attach_kretprobe(event=a.symbol.encode(), fn_name=f"on_{a.function}_return".encode(), maxactive=64)
        workdir = Path(workdir or tempfile.mkdtemp(prefix="forktrace-exact-split-"))
        out = workdir / "exact-split.parquet"
        record(RecordOptions(spawn_vmas=vmas, forks=forks, sample_hz=hz, level="full", output=out, quiet=True),
               log=lambda msg: None)
        rec = load_recording(out)
        totals = _read_totals(bpf, int(rec.meta["workload"]["pid"]))
    finally:
        bpf.cleanup()
    (group,) = attribute_groups(group_recordings([rec])).groups
    if group.sample_est is None:
        return {**result, "skipped": f"no samples inside dup_mmap: {group.samples_missing}"}
    from analysis.recording.stacks import sampled_stacks

    stores = float(group.forks["stores"].median())
    functions = group.sample_est.functions()
    total = sum(a.samples for a in functions.values())
    per_sample = sum(a.ns_per_fork for a in functions.values()) / total if total else 0.0
    probe_ns = {f: n * per_sample for f, n in own_probe_samples(sampled_stacks(rec.meta) or {}, FUNCTIONS).items()}
    tracer_share = functions["tracer"].samples / total if total and "tracer" in functions else 0.0
    # What the samples were attributed to, largest first: says why a function got none (unwinding, the tracer).
    seen = sorted(((name, a.samples, a.ns_per_fork) for name, a in functions.items()), key=lambda t: -t[1])[:12]
    stacks = sorted((s for s in (rec.meta.get("sample") or {}).get("stacks") or []), key=lambda s: -s["count"])[:5]
    return {**result, "recording": str(out), **compare(totals, functions, stores, probe_ns=probe_ns, tracer_share=tracer_share),
            "sampled_functions": [{"function": n, "samples": int(c), "ns_per_fork": float(v)} for n, c, v in seen],
            "top_stacks": [{"stack": s["stack"], "phase": s.get("phase"), "count": s["count"]} for s in stacks]}


def render(result: Mapping[str, Any]) -> str:
    lines = [f"exact vs sampled split, kernel {result.get('kernel')}"]
    for a in result.get("attach", {}).values():
        lines.append(f"  {a['function']:<16} {a['how'] or 'refused'}: {a['reason']}")
    if "skipped" in result:
        return "\n".join(lines + [f"skipped: {result['skipped']}"])
    lines.append(f"  {result['forks']} forks of {result['stores']:.0f} VMAs; agree when exact is inside the sampled "
                 f"95% CI widened by {100 * result['tolerance']:.0f}%")
    lines.append(f"  {'function':<16} {'calls/fork':>10} {'exact ns/fork':>14} {'sampled':>10} {'95% CI':>21} {'samples':>8}  agree")
    for r in result["rows"]:
        lo, hi = r["sampled_ci95"]
        lines.append(f"  {r['function']:<16} {r['calls_per_fork']:>10.1f} {r['exact_ns_per_fork']:>14.0f} "
                     f"{r['sampled_ns_per_fork']:>10.0f} {lo:>10.0f}-{hi:<10.0f} {r['samples']:>8}  {'yes' if r['agree'] else 'NO'}")
    if not result["vm_area_dup_calls_match_stores"]:
        lines.append("  vm_area_dup calls per fork differ from the VMAs copied")
    if result.get("inconclusive"):
        lines.append(f"  INCONCLUSIVE: {result['inconclusive']}")
    if result.get("sampled_functions"):
        lines.append("  samples by function: " + ", ".join(f"{f['function']} {f['samples']}" for f in result["sampled_functions"]))
    for st in result.get("top_stacks") or []:
        lines.append(f"  stack x{st['count']} ({st['phase']}): {st['stack'][-300:]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vmas", type=int, default=400)
    p.add_argument("--forks", type=int, default=100)
    p.add_argument("--hz", type=int, default=1999)
    p.add_argument("--json", type=Path, help="also write the result as JSON here")
    args = p.parse_args(argv)
    result = run_check(args.vmas, args.forks, args.hz)
    print(render(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    if "skipped" in result:
        return SKIPPED
    return 0 if result["agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
