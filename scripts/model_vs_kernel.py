#!/usr/bin/env python3
"""The replay model against the running kernel: leaves observed vs each parent build path.

For each extra-VMA count, records the built-in spawn workload with the real
tracer (`tracer record --spawn N`), takes the parent's saved /proc/PID/maps,
and prints, per count, the distinct leaves the replace loop wrote (every fork
of one process writes the same number; the script says so if not) beside the
model's leaf count for that layout under each way of building the parent:

  spawn history    spawn.c's own history replayed (analysis.model.history):
                   what `tracer model --recording` uses for this workload
  munmap desc      the same, but the holes cut top-down: a what-if, to show
                   that the order of the munmaps is what decides the shape
  mmap desc        one store per VMA, top-down: the default for a bare layout
  bulk append      the v6.1-v6.7 child: appends in bulk mode

A second table is the what-if made real: CUT_C below is spawn.c's
make_extra_vmas() with the holes cut in either order, compiled on the fly and
recorded in command mode (`tracer record -- cut N FORKS desc`). Bulk append
predicts the same leaves for both orders, since the final layouts are alike;
the history model predicts different ones, and the kernel decides.

Needs root (BPF) and cc. Asserts nothing; prints the tables.

    sudo .venv/bin/python scripts/model_vs_kernel.py [--vmas 0 100 ...] [--forks 20] [--keep DIR] [--no-what-if]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from analysis.recording import load_recording  # noqa: E402
from analysis.recording.layout import parse_maps  # noqa: E402
from analysis.model.build import build_bulk, build_from_history, layout_slots  # noqa: E402
from analysis.model.history import history_mmap_order  # noqa: E402
from analysis.model.history import spawn_history  # noqa: E402

COUNTS = (0, 100, 200, 500, 1000, 3000, 6400)

# spawn.c's make_extra_vmas() without its checks and messages, the holes cut
# ascending ("asc", as spawn.c does) or top-down ("desc"); then fork N times.
CUT_C = r"""
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	long nr, forks;
	size_t page = 4096, span;
	char *base;
	int desc;

	if (argc != 4 || (strcmp(argv[3], "asc") && strcmp(argv[3], "desc")))
		return 2;
	nr = atol(argv[1]);
	forks = atol(argv[2]);
	desc = !strcmp(argv[3], "desc");
	span = 2 * (size_t)nr + 1;
	if (nr > 0) {
		base = mmap(NULL, span * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (base == MAP_FAILED || munmap(base, span * page))
			return 1;
		if (mmap(base + page, (span - 2) * page, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0) != base + page)
			return 1;
		for (size_t k = 0; 2 * k + 3 < span; k++) {
			size_t i = desc ? span - 3 - 2 * k : 2 + 2 * k;

			if (munmap(base + i * page, page))
				return 1;
		}
	}
	for (long f = 0; f < forks; f++) {
		pid_t child = fork();

		if (child == 0)
			_exit(0);
		if (child < 0 || waitpid(child, NULL, 0) < 0)
			return 1;
	}
	return 0;
}
"""


def build_cut(directory: Path) -> Path:
    """Compile CUT_C into directory/cut; one-line SystemExit if cc fails."""
    src, exe = directory / "cut.c", directory / "cut"
    src.write_text(CUT_C)
    proc = subprocess.run(["cc", "-O2", "-Wall", "-o", str(exe), str(src)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"model_vs_kernel: cc failed on cut.c: {(proc.stderr.strip().splitlines() or ['?'])[0]}")
    return exe


def record_cut(exe: Path, vmas: int, forks: int, order: str, out: Path) -> Path:
    path = out / f"cut{vmas}-{order}.parquet"
    run_record(["-o", str(path), "--", str(exe), str(vmas), str(forks), order], f"cut {vmas} {order}")
    return path


def cut_row(path: Path, vmas: int, order: str) -> dict:
    """Observed leaves of the cut program's forks, and the model's for its layout."""
    rec = load_recording(path)
    pid = rec.meta["workload"]["pid"]
    forks = rec.forks[(rec.forks.pid == pid) & ~rec.forks.failed]
    (snap,) = [m for m in rec.meta["maps"] if m["pid"] == pid]
    layout = [v for v in parse_maps(snap["maps"]) if v.path != "[vsyscall]"]
    munmap_order = "ascending" if order == "asc" else "descending"
    return {
        "extra": vmas,
        "order": order,
        "observed": sorted(int(x) for x in forks.leaves.unique()),
        "spawn_history": build_from_history(spawn_history(layout, vmas, munmap_order=munmap_order)).shape().leaves,
        "bulk_append": build_bulk(layout).tree.shape().leaves,
    }
COLUMNS = ("spawn_history", "munmap_desc", "mmap_desc", "bulk_append")


def run_record(args: list[str], what: str) -> None:
    cmd = [sys.executable, "-m", "tracer.cli", "record", "-q", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"model_vs_kernel: tracer record ({what}) failed: {last}")


def record(vmas: int, forks: int, cpu: int, out: Path) -> Path:
    path = out / f"spawn{vmas}.parquet"
    run_record(["--spawn", str(vmas), "--forks", str(forks), "--cpu", str(cpu), "-o", str(path)], f"--spawn {vmas}")
    return path


def row(path: Path) -> dict:
    rec = load_recording(path)
    w = rec.meta["workload"]
    forks = rec.forks[(rec.forks.pid == w["pid"]) & ~rec.forks.failed]
    (snap,) = [m for m in rec.meta["maps"] if m["pid"] == w["pid"]]
    layout = [v for v in parse_maps(snap["maps"]) if v.path != "[vsyscall]"]
    extra = w["extra_vmas"]
    leaves = sorted(int(x) for x in forks.leaves.unique())
    stores = sorted(int(x) for x in forks.stores.unique())
    model = {
        "spawn_history": build_from_history(spawn_history(layout, extra)).shape(),
        "munmap_desc": build_from_history(spawn_history(layout, extra, munmap_order="descending")).shape(),
        "mmap_desc": build_from_history(history_mmap_order(layout, "descending")).shape(),
        "bulk_append": build_bulk(layout).tree.shape(),
    }
    return {
        "extra": extra,
        "vmas": len(layout),
        "slots": layout_slots(layout),
        "forks": len(forks),
        "stores": stores,
        "observed": leaves,
        "model": model,
    }


def render(rows: list[dict]) -> str:
    header = ["extra VMAs", "VMAs", "slots S", "forks", "observed", "fill obs", *COLUMNS]
    lines = []
    for r in rows:
        obs = r["observed"]
        obs_s = "/".join(str(x) for x in obs)
        fill = f"{r['slots'] / obs[0]:.2f}" if len(obs) == 1 and obs[0] else "-"
        cells = [str(r["extra"]), f"{r['vmas']:,}", f"{r['slots']:,}", str(r["forks"]), obs_s, fill]
        for c in COLUMNS:
            n = r["model"][c].leaves
            cells.append(f"{n}" if len(obs) != 1 or n == obs[0] else f"{n} ({n - obs[0]:+d})")
        lines.append(cells)
    out = table(header, lines)
    out.append("")
    out.append("observed: distinct leaves per fork (one value when every fork agrees); fill obs: mean slots")
    out.append("per leaf, S / observed leaves; (+n): model minus observed.")
    for r in rows:
        if r["stores"] != [r["vmas"]]:
            out.append(f"note: --spawn {r['extra']}: stores per fork {r['stores']}, not the {r['vmas']} VMAs of the maps")
    hist = ", ".join(
        f"{r['extra']}: {r['model']['spawn_history'].leaf_fill}" for r in rows if r["extra"] in (0, 1000)
    )
    out.append(f"spawn-history leaf fill (slots: leaves) at {hist}")
    return "\n".join(out)


def table(header: list[str], lines: list[list[str]]) -> list[str]:
    widths = [max(len(x) for x in col) for col in zip(header, *lines)]
    fmt = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return [fmt(header), fmt(["-" * w for w in widths])] + [fmt(c) for c in lines]


def render_cut(rows: list[dict]) -> str:
    header = ["extra VMAs", "holes cut", "observed", "history (that order)", "bulk_append"]
    lines = []
    for r in rows:
        obs = r["observed"]
        cells = [str(r["extra"]), "ascending" if r["order"] == "asc" else "descending", "/".join(map(str, obs))]
        for key in ("spawn_history", "bulk_append"):
            n = r[key]
            cells.append(f"{n}" if len(obs) != 1 or n == obs[0] else f"{n} ({n - obs[0]:+d})")
        lines.append(cells)
    out = ["what-if made real: the same region, holes cut in either order (cut.c, command mode)"]
    return "\n".join(out + table(header, lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vmas", type=int, nargs="+", default=list(COUNTS), help="extra-VMA counts")
    ap.add_argument("--forks", type=int, default=20)
    ap.add_argument("--cpu", type=int, default=0)
    ap.add_argument("--keep", type=Path, help="keep the recordings in this directory")
    ap.add_argument("--no-what-if", action="store_true", help="skip the cut.c table")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("model_vs_kernel: needs root (it records with BPF); run it with sudo")
    with tempfile.TemporaryDirectory(prefix="forktrace-mvk-") as tmp:
        out = args.keep or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        rows = []
        for n in args.vmas:
            print(f"recording --spawn {n} ...", file=sys.stderr, flush=True)
            rows.append(row(record(n, args.forks, args.cpu, out)))
        cut_rows = []
        if not args.no_what_if:
            exe = build_cut(Path(tmp))
            for n in [n for n in args.vmas if n >= 100]:
                for order in ("asc", "desc"):
                    print(f"recording cut {n} {order} ...", file=sys.stderr, flush=True)
                    cut_rows.append(cut_row(record_cut(exe, n, args.forks, order, out), n, order))
    print(render(rows))
    if cut_rows:
        print()
        print(render_cut(cut_rows))


if __name__ == "__main__":
    main()
