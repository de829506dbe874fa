#!/usr/bin/env python3
"""Fleet-scale report benchmark: `tracer report` over 10 to 1,000 files x 10,000 forks.

The recordings are synthetic but realistic: a real recording's rows (record one
with `tracer record --spawn 6400 --level full --forks 500 -o real.parquet`)
replicated to FORKS rows per file, its metadata copied with a host name of
its own per file (host-0000, ...), so `--by host` has a thousand groups' worth
of units and `--by kernel` one group.

Each measurement runs `tracer report` as a child process (wall clock, and the
child's max RSS from getrusage(RUSAGE_CHILDREN)), one after another in one
run, with the load average beside it: the machine may be shared.

    scripts/bench_fleet.py real.parquet --dir /tmp/fleet-bench [--files 10,100,1000] [--forks 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from analysis.recording.schema import METADATA_KEY  # noqa: E402


def generate(real: Path, out: Path, files: int, forks: int) -> list[Path]:
    """`files` recordings of `forks` rows each, made from `real`'s rows and metadata (kept if present)."""
    out.mkdir(parents=True, exist_ok=True)
    table = pq.read_table(real)
    meta = json.loads(table.schema.metadata[METADATA_KEY])
    reps = -(-forks // table.num_rows)
    big = pa.concat_tables([_shifted(table, r) for r in range(reps)]).slice(0, forks).combine_chunks()
    paths = []
    for i in range(files):
        path = out / f"host-{i:04d}.parquet"
        paths.append(path)
        if path.exists():
            continue
        doc = json.loads(json.dumps(meta))
        doc.setdefault("host", {})["hostname"] = f"host-{i:04d}"
        if isinstance(doc.get("workload"), dict):
            doc["workload"]["forks"] = forks
        tmp = path.with_suffix(".tmp")
        pq.write_table(big.replace_schema_metadata({**table.schema.metadata, METADATA_KEY: json.dumps(doc).encode()}), tmp)
        tmp.rename(path)
    return paths


def _shifted(table: pa.Table, rep: int) -> pa.Table:
    """The rows again, `rep` recordings' durations later: timestamps that keep increasing, as a long run's do."""
    import pyarrow.compute as pc

    span = pc.max(table["ts_parent_unlock"]).as_py() - pc.min(table["ts_parent_lock"]).as_py() + 1
    for name in table.column_names:
        if name.startswith("ts_") or name == "exact_ts_entry" or name == "exact_ts_exit":
            col = table[name]
            moved = pc.if_else(pc.equal(col, 0), col, pc.add(col, pa.scalar(rep * span, col.type)))
            table = table.set_column(table.column_names.index(name), name, moved)
    return table


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_report(files: list[Path], args: list[str]) -> tuple[float, float, str]:
    """(wall s, max RSS MB of the report and its workers, first line) of one `tracer report` child."""
    listing = files[0].parent / f".list-{len(files)}"
    cmd = [sys.executable, "-c", "from tracer.cli import main; main()", "report", "--format", "json", *args]
    # A directory would be globbed by the report; pass the files themselves.
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.run([*cmd, *map(str, files)], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode:
        raise SystemExit(f"report failed: {proc.stderr.strip()[:500]}")
    doc = json.loads(proc.stdout)
    forks = sum(g["counts"]["forks"] for g in doc["groups"])
    # ru_maxrss of children is the largest single child (the report, or one of its workers), in KiB.
    return wall, max(after, before) / 1024, f"{forks} forks"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("real", type=Path, help="A real recording to replicate.")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/forktrace-fleet-bench"), help="Where the files go.")
    ap.add_argument("--files", default="10,100,1000", help="File counts to measure.")
    ap.add_argument("--forks", type=int, default=10_000, help="Forks per file.")
    ap.add_argument("--dask-files", type=int, default=1000, help="File count for the local-vs-dask comparison.")
    ap.add_argument("--output", type=Path, default=None, help="Also write the figures here.")
    ap.add_argument("--clean", action="store_true", help="Remove the generated files afterwards.")
    args = ap.parse_args()
    counts = [int(x) for x in args.files.split(",")]
    total = max(counts + [args.dask_files])
    t0 = time.perf_counter()
    paths = generate(args.real, args.dir, total, args.forks)
    size = sum(p.stat().st_size for p in paths)
    lines = [
        f"bench_fleet: {total} files x {args.forks} forks from {args.real.name} ({size / 1e9:.2f} GB, made in {time.perf_counter() - t0:.0f} s)",
        f"host: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, pyarrow {pa.__version__}",
        "",
        f"{'input':<28} {'engine':<16} {'wall s':>7} {'max RSS MB':>11}  loadavg (1/5/15 min) before",
    ]
    print("\n".join(lines), flush=True)

    def measure(n: int, engine: str) -> None:
        load = loadavg()
        # Each measurement in a fresh child so that RUSAGE_CHILDREN's max is its own.
        out = subprocess.run(
            [sys.executable, __file__, "--_one", str(n), engine, str(args.dir)], capture_output=True, text=True
        )
        if out.returncode:
            raise SystemExit(out.stderr.strip()[-800:])
        wall, rss, what = json.loads(out.stdout)
        line = f"{n:>5} files ({what:>16}) {engine:<16} {wall:7.2f} {rss:11.0f}  {load}"
        print(line, flush=True)
        lines.append(line)

    for n in counts:
        measure(n, "local")
    measure(args.dask_files, "dask://local:2")
    text = "\n".join(lines) + "\n"
    if args.output:
        args.output.write_text(text)
        print(f"wrote {args.output}")
    if args.clean:
        shutil.rmtree(args.dir)


def _one(n: int, engine: str, where: Path) -> None:
    files = sorted(where.glob("host-*.parquet"))[:n]
    wall, rss, what = run_report(files, ["--engine", engine])
    print(json.dumps([wall, rss, what]))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--_one":
        _one(int(sys.argv[2]), sys.argv[3], Path(sys.argv[4]))
    else:
        main()
