"""Fleet scale: each run reduced to a summary that merges exactly, computed here or on a cluster.

sketch (quantiles within a stated relative error), column (one latency column's
counts, sums, log2 histogram and sketch), group (per-group summaries and their
merge), run (one recording streamed into a summary), engine (process pool or
Dask), fleet (the report's document and rendering), units (runs compared as units).
"""

from analysis.summary.engine import Engine, parse_engine, summarize_files
from analysis.summary.group import FleetSummary, GroupSummary
from analysis.summary.run import summarize_file

__all__ = ["Engine", "FleetSummary", "GroupSummary", "parse_engine", "summarize_file", "summarize_files"]
