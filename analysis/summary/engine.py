"""Where the per-run summaries are computed: a process pool here, or a Dask cluster.

Both map summarize_file() over the files and merge the results as they
arrive. Merging is exact and order-free (analysis.summary.group), so the two
engines give the same summary number for number, and the driver holds one
summary per group at any time, never the forks.

`--engine local[:N]` (default) uses N worker processes (default: the CPUs);
`--engine dask://HOST:PORT` sends the work to a running Dask scheduler, whose
workers must have forktrace installed and see the files at the same paths (a
shared file system, or object-store URLs they can open). For tests and one
machine, `dask://local[:N]` starts a LocalCluster of N worker processes.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Sequence

from analysis.errors import UsageError
from analysis.summary.group import FleetSummary
from analysis.summary.run import summarize_file

__all__ = ["Engine", "parse_engine", "summarize_files"]

# Files per task: a task's fixed cost (pickling, scheduling) is paid once per chunk, not per file.
CHUNK_FILES = 8


class Engine:
    """A parsed --engine: kind 'local' (processes) or 'dask' (a scheduler address, or 'local[:N]')."""

    def __init__(self, kind: str, address: str | None = None, workers: int | None = None):
        self.kind, self.address, self.workers = kind, address, workers

    def __repr__(self) -> str:
        return f"Engine({self.kind!r}, {self.address!r}, {self.workers!r})"


def parse_engine(text: str | None) -> Engine:
    """'local', 'local:4', 'dask://HOST:PORT' or 'dask://local:2'."""
    text = (text or "local").strip()
    if text == "local" or text.startswith("local:"):
        return Engine("local", None, _workers(text, "local"))
    if text.startswith("dask://"):
        rest = text[len("dask://"):]
        if rest == "local" or rest.startswith("local:"):
            return Engine("dask", None, _workers(rest, "dask://local") or 2)
        if not rest or ":" not in rest:
            raise UsageError(f"--engine {text}: give the scheduler as dask://HOST:PORT")
        return Engine("dask", f"tcp://{rest}")
    raise UsageError(f"--engine must be local[:N], dask://HOST:PORT or dask://local[:N], not {text!r}")


def _workers(text: str, name: str) -> int | None:
    if ":" not in text:
        return None
    try:
        n = int(text.split(":", 1)[1])
    except ValueError:
        n = 0
    if n < 1:
        raise UsageError(f"--engine {text}: {name}:N takes a number of workers of 1 or more")
    return n


def summarize_chunk(paths: Sequence[str], by: Sequence[str]) -> FleetSummary:
    """One task: the merged summary of a few files (unreadable ones in `skipped`)."""
    total = FleetSummary(tuple(by))
    for path in paths:
        total = total.merge(summarize_file(path, by))
    return total


def _chunks(paths: Sequence[str], workers: int) -> list[list[str]]:
    # Small enough to spread over the workers, large enough to amortize a task's cost.
    size = max(1, min(CHUNK_FILES, -(-len(paths) // (4 * workers))))
    return [list(paths[i : i + size]) for i in range(0, len(paths), size)]


def summarize_files(
    paths: Iterable[str | Path], by: Sequence[str] = (), engine: Engine | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> FleetSummary:
    """The merged summary of every file, computed by `engine` (default: local processes)."""
    engine = engine or Engine("local")
    paths = list(dict.fromkeys(str(p) for p in paths))  # a file given twice (a directory and its file) counts once
    by = tuple(by)
    if engine.kind == "dask":
        return _dask(paths, by, engine, progress)
    workers = engine.workers or len(os.sched_getaffinity(0))
    chunks = _chunks(paths, workers)
    total = FleetSummary(by)
    if workers == 1 or len(chunks) == 1:
        for chunk in chunks:
            total = total.merge(summarize_chunk(chunk, by))
            if progress:
                progress(total.files, len(paths))
        return total
    with ProcessPoolExecutor(max_workers=min(workers, len(chunks))) as pool:
        futures = [pool.submit(summarize_chunk, chunk, by) for chunk in chunks]
        for future in as_completed(futures):
            total = total.merge(future.result())
            if progress:
                progress(total.files, len(paths))
    return total


def _dask(paths: list[str], by: tuple[str, ...], engine: Engine, progress: Callable[[int, int], None] | None) -> FleetSummary:
    try:
        from distributed import Client, LocalCluster, as_completed as dask_completed
    except ImportError:
        raise UsageError("--engine dask://... needs Dask distributed: pip install 'dask[distributed]'") from None
    cluster = None
    try:
        if engine.address is None:
            cluster = LocalCluster(n_workers=engine.workers, threads_per_worker=1, processes=True, dashboard_address=None)
            client = Client(cluster)
        else:
            try:
                client = Client(engine.address, timeout=10)
            except OSError as err:
                raise UsageError(f"--engine: no Dask scheduler at {engine.address}: {err}") from None
        with client:
            workers = max(1, len(client.scheduler_info().get("workers", {})))
            futures = client.map(partial(summarize_chunk, by=by), _chunks(paths, workers), pure=False)
            total = FleetSummary(by)
            for future in dask_completed(futures):
                total = total.merge(future.result())
                future.release()
                if progress:
                    progress(total.files, len(paths))
            return total
    finally:
        if cluster is not None:
            cluster.close()
