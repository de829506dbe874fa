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


def generate(real: Path, out: Path, files: int, forks: int, kv_only: bool = False) -> list[Path]:
    """`files` recordings of `forks` rows each, made from `real`'s rows and metadata (kept if present).

    kv_only: the forktrace document in the file's key/value metadata only, not
    repeated (base64) inside the Arrow schema that pyarrow also stores there.
    """
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
        if kv_only:
            plain = big.replace_schema_metadata(None)
            with pq.ParquetWriter(tmp, plain.schema) as writer:
                writer.add_key_value_metadata({METADATA_KEY.decode(): json.dumps(doc)})
                writer.write_table(plain)
        else:
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


def run_report(files: list[Path], args: list[str]) -> tuple[float, float, float, str]:
    """(wall s, CPU s, max RSS MB of the report and its workers, forks) of one `tracer report` child."""
    cmd = [sys.executable, "-c", "from tracer.cli import main; main()", "report", "--format", "json", *args]
    # A directory would be globbed by the report; pass the files themselves.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.run([*cmd, *map(str, files)], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # this process runs one report: its own figures
    if proc.returncode:
        raise SystemExit(f"report failed: {proc.stderr.strip()[:500]}")
    doc = json.loads(proc.stdout)
    forks = sum(g["counts"]["forks"] for g in doc["groups"])
    # ru_maxrss of children: the largest single process among the report and its reaped workers, in KiB.
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, f"{forks} forks"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("real", type=Path, help="A real recording to replicate.")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/forktrace-fleet-bench"), help="Where the files go.")
    ap.add_argument("--files", default="10,100,1000", help="File counts to measure.")
    ap.add_argument("--forks", type=int, default=10_000, help="Forks per file.")
    ap.add_argument("--dask-files", type=int, default=1000, help="File count for the local-vs-dask comparison.")
    ap.add_argument("--output", type=Path, default=None, help="Also write the figures here.")
    ap.add_argument("--clean", action="store_true", help="Remove the generated files afterwards.")
    ap.add_argument("--kv-only", action="store_true", help="Also measure files whose forktrace document is not repeated in the Arrow schema.")
    args = ap.parse_args()
    counts = [int(x) for x in args.files.split(",")]
    total = max(counts + [args.dask_files])
    t0 = time.perf_counter()
    paths = generate(args.real, args.dir, total, args.forks)
    size = sum(p.stat().st_size for p in paths)
    lines = [
        f"bench_fleet: {total} files x {args.forks} forks from {args.real.name} ({size / 1e9:.2f} GB, made in {time.perf_counter() - t0:.0f} s)",
        f"host: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, pyarrow {pa.__version__}; "
        "`tracer report --format json --engine E FILE...`, one child each, one after another",
        "max RSS: the largest single process (the report or a worker it reaped); CPU: user+sys of all of them",
        "",
        f"{'input':<32} {'engine':<20} {'wall s':>7} {'CPU s':>6} {'max RSS MB':>11}  loadavg 1/5/15 min before",
    ]
    print("\n".join(lines), flush=True)

    def measure(n: int, engine: str, where: Path = args.dir, note: str = "") -> None:
        load = loadavg()
        # Each measurement in a fresh child so that RUSAGE_CHILDREN is its own.
        out = subprocess.run(
            [sys.executable, __file__, "--_one", str(n), engine, str(where)], capture_output=True, text=True
        )
        if out.returncode:
            raise SystemExit(out.stderr.strip()[-800:])
        wall, cpu, rss, what = json.loads(out.stdout)
        line = f"{n:>5} files ({what:>16}){note:<2} {engine:<20} {wall:7.2f} {cpu:6.1f} {rss:11.0f}  {load}"
        print(line, flush=True)
        lines.append(line)

    for n in counts:
        measure(n, "local")
    measure(args.dask_files, "dask://local:2")
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        measure(args.dask_files, "dask://" + cluster.scheduler_address.removeprefix("tcp://"))
    lines.append("(dask://local:2 starts a 2-worker LocalCluster inside the report; dask://HOST:PORT is one started"
                 " beforehand, whose workers' memory and CPU are not the report's)")
    if args.kv_only:
        kv_dir = args.dir.with_name(args.dir.name + "-kv")
        generate(args.real, kv_dir, args.dask_files, args.forks, kv_only=True)
        measure(args.dask_files, "local", kv_dir, " *")
        lines.append("* the forktrace document in the file's key/value metadata only, not repeated in the Arrow schema")
    text = "\n".join(lines) + "\n"
    if args.output:
        args.output.write_text(text)
        print(f"wrote {args.output}")
    if args.clean:
        shutil.rmtree(args.dir)


def _one(n: int, engine: str, where: Path) -> None:
    files = sorted(where.glob("host-*.parquet"))[:n]
    print(json.dumps(run_report(files, ["--engine", engine])))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--_one":
        _one(int(sys.argv[2]), sys.argv[3], Path(sys.argv[4]))
    else:
        main()
