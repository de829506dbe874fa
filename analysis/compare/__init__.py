"""Regression triage between two sets of recordings or pyperf benchmarks (issue 8).

Pure: statistics (stats), one family of two-sample tests (samples), per-unit
costs and tree shape (components), what else differs (context), the two
kinds of input (recordings, benchmarks), the result and its verdict (result),
renderers (render) and the optional plot (plot, matplotlib loaded lazily).
"""

from analysis.compare.benchmarks import compare_benchmarks, is_pyperf_file
from analysis.compare.components import compare_components
from analysis.compare.recordings import compare_recordings
from analysis.compare.render import FORMATS, render
from analysis.compare.result import Comparison, Verdict, regressions_beyond

__all__ = [
    "FORMATS",
    "Comparison",
    "Verdict",
    "compare_benchmarks",
    "compare_components",
    "compare_recordings",
    "is_pyperf_file",
    "regressions_beyond",
    "render",
]
