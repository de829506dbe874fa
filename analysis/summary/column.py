"""One latency column of many forks, reduced to what merges exactly.

count, sum and sum of squares (integers of 1/SCALE ns, so the sums of parts
add up to the sum of the whole in any order), min and max, a log2 histogram
of whole ns (bcc's funclatency slots, as analysis.report.stats draws them)
and a LogSketch for quantiles within its stated relative error. `missing`
counts usable forks that have no value in this column (NaN: not measured).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from analysis.summary.sketch import LogSketch

if TYPE_CHECKING:
    from analysis.report.stats import Log2Histogram

__all__ = ["SCALE", "ColumnSummary"]

SCALE = 16  # sums are kept in 1/16 ns: a mean is exact to 1/32 ns
_SPLIT = 20  # q = hi * 2^20 + lo: each part's square summed in int64 without overflow (batches < 2^17 rows)
_BATCH = 1 << 16


@dataclass
class ColumnSummary:
    n: int = 0
    missing: int = 0
    sum_q: int = 0  # sum of round(v * SCALE)
    sumsq_q: int = 0  # sum of round(v * SCALE)^2
    min: float | None = None
    max: float | None = None
    log2: dict[int, int] = field(default_factory=dict)  # funclatency slot of floor(v ns) -> count
    log2_us: dict[int, int] = field(default_factory=dict)  # the same of floor(v / 1000): funclatency -u
    sketch: LogSketch = field(default_factory=LogSketch)

    def add(self, values: np.ndarray) -> None:
        """Count the values (ns, float); NaN counts as missing. Negative values are a caller bug."""
        values = np.asarray(values, dtype="float64")
        nan = np.isnan(values)
        self.missing += int(nan.sum())
        v = values[~nan]
        if v.size == 0:
            return
        lo, hi = float(v.min()), float(v.max())
        if lo < 0 or math.isinf(hi):
            raise ValueError("latency values must be finite and not negative")
        self.n += int(v.size)
        self.min = lo if self.min is None else min(self.min, lo)
        self.max = hi if self.max is None else max(self.max, hi)
        for start in range(0, v.size, _BATCH):
            self._add_sums(v[start : start + _BATCH], hi)
        # funclatency's slot: bit_length(floor(v)), 0 and 1 in slot 1; frexp's exponent is the bit length.
        for hist, unit in ((self.log2, 1.0), (self.log2_us, 1000.0)):
            slots = np.maximum(np.frexp(np.floor(v / unit))[1], 1)
            for k, c in enumerate(np.bincount(slots).tolist()):
                if c:
                    hist[k] = hist.get(k, 0) + c
        self.sketch.add(v)

    def _add_sums(self, v: np.ndarray, top: float) -> None:
        q = np.rint(v * SCALE).astype("int64")
        self.sum_q += int(q.sum())
        if top * SCALE >= (1 << 37) - 1:  # hi < 2^17: hi^2, 2 hi lo and lo^2 each fit a batch's int64 sum
            big = q >= (1 << 37)
            self.sumsq_q += sum(int(x) * int(x) for x in q[big].tolist())
            q = q[~big]
        hi, lo = q >> _SPLIT, q & ((1 << _SPLIT) - 1)
        self.sumsq_q += (int((hi * hi).sum()) << (2 * _SPLIT)) + (int((2 * hi * lo).sum()) << _SPLIT) + int((lo * lo).sum())

    def merge(self, other: "ColumnSummary") -> "ColumnSummary":
        return ColumnSummary(
            n=self.n + other.n,
            missing=self.missing + other.missing,
            sum_q=self.sum_q + other.sum_q,
            sumsq_q=self.sumsq_q + other.sumsq_q,
            min=_pick(min, self.min, other.min),
            max=_pick(max, self.max, other.max),
            log2=_add(self.log2, other.log2),
            log2_us=_add(self.log2_us, other.log2_us),
            sketch=self.sketch.merge(other.sketch),
        )

    @property
    def mean(self) -> float | None:
        return self.sum_q / SCALE / self.n if self.n else None

    @property
    def stdev(self) -> float | None:
        """Sample standard deviation (n - 1), from the exact integer sums."""
        if self.n < 2:
            return None
        var_q = (self.sumsq_q * self.n - self.sum_q * self.sum_q) / (self.n * (self.n - 1))
        return math.sqrt(max(var_q, 0.0)) / SCALE

    def quantile(self, q: float) -> float | None:
        """The sketch's quantile, kept within [min, max] (which only brings it nearer the exact one)."""
        value = self.sketch.quantile(q)
        if value is None or self.min is None or self.max is None:
            return value
        return min(max(value, self.min), self.max)

    def histogram(self, unit: str) -> "Log2Histogram":
        """The log2 histogram in 'nsecs' or 'usecs', as analysis.report.stats draws it."""
        from analysis.report.stats import Log2Histogram

        hist = self.log2 if unit == "nsecs" else self.log2_us
        top = max((k for k, c in hist.items() if c), default=0)
        return Log2Histogram(unit, tuple(hist.get(k, 0) for k in range(top + 1)))

    def as_dict(self) -> dict[str, Any]:
        return {
            "n": self.n, "missing": self.missing, "sum_q": self.sum_q, "sumsq_q": self.sumsq_q,
            "min": self.min, "max": self.max, "log2": {str(k): c for k, c in sorted(self.log2.items())},
            "log2_us": {str(k): c for k, c in sorted(self.log2_us.items())},
            "sketch": self.sketch.as_dict(),
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> "ColumnSummary":
        return cls(
            int(doc["n"]), int(doc["missing"]), int(doc["sum_q"]), int(doc["sumsq_q"]), doc["min"], doc["max"],
            {int(k): int(c) for k, c in doc["log2"].items()}, {int(k): int(c) for k, c in doc["log2_us"].items()},
            LogSketch.from_dict(doc["sketch"]),
        )


def _add(a: dict[int, int], b: dict[int, int]) -> dict[int, int]:
    out = dict(a)
    for k, c in b.items():
        out[k] = out.get(k, 0) + c
    return out


def _pick(fn: Any, a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return fn(a, b)
