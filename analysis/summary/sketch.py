"""A quantile sketch with a stated relative error, merged exactly by adding counts.

DDSketch's logarithmic buckets (Masson, Rim, Lee, VLDB 2019): a value v > 0
falls into bucket i = ceil(log_gamma(v)), gamma = (1 + alpha) / (1 - alpha),
which covers (gamma^(i-1), gamma^i]; the bucket is reported as
2 gamma^i / (gamma + 1), within alpha of every value in it. Values of 0 (and
below MIN_VALUE) have a bucket of their own, reported as 0.

What a quantile means: the order statistic of rank floor(q (n - 1)) of the
values counted (numpy's `method="lower"`), so quantile(q) is within
alpha * |x| of that value x. Counts are integers, so merging two sketches
(adding counts per bucket) is exact, associative and commutative: sketches
of parts merged in any order equal the sketch of the whole, and so do their
quantiles.

The buckets stay few: latencies from 1 ns to 100 s at alpha = 1% are ~1,270
buckets at most, and a phase's values of one run fill a few hundred.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

__all__ = ["ALPHA", "MIN_VALUE", "LogSketch"]

ALPHA = 0.01  # relative accuracy of every quantile
MIN_VALUE = 1.0  # ns: below this a value counts as 0 (the zero bucket)


@dataclass
class LogSketch:
    """Counts per logarithmic bucket; `zeros` counts values below MIN_VALUE."""

    alpha: float = ALPHA
    zeros: int = 0
    buckets: dict[int, int] = field(default_factory=dict)

    @property
    def gamma(self) -> float:
        return (1.0 + self.alpha) / (1.0 - self.alpha)

    @property
    def n(self) -> int:
        return self.zeros + sum(self.buckets.values())

    def add(self, values: np.ndarray) -> None:
        """Count finite non-negative values (the caller drops NaN)."""
        values = np.asarray(values, dtype="float64")
        small = values < MIN_VALUE
        self.zeros += int(small.sum())
        big = values[~small]
        if big.size == 0:
            return
        index = np.ceil(np.log(big) * (1.0 / math.log(self.gamma))).astype("int64")
        low = int(index.min())
        counts = np.bincount(index - low)
        buckets = self.buckets
        for k in np.flatnonzero(counts).tolist():
            buckets[k + low] = buckets.get(k + low, 0) + int(counts[k])

    def merge(self, other: "LogSketch") -> "LogSketch":
        """A new sketch counting both (exact: counts add)."""
        if other.alpha != self.alpha:
            raise ValueError(f"cannot merge sketches of relative error {self.alpha} and {other.alpha}")
        buckets = dict(self.buckets)
        for k, c in other.buckets.items():
            buckets[k] = buckets.get(k, 0) + c
        return LogSketch(self.alpha, self.zeros + other.zeros, buckets)

    def quantile(self, q: float) -> float | None:
        """The value of rank floor(q (n - 1)), within alpha of it; None when empty."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile {q} outside [0, 1]")
        n = self.n
        if n == 0:
            return None
        rank = math.floor(q * (n - 1))
        if rank < self.zeros:
            return 0.0
        seen = self.zeros
        gamma = self.gamma
        for k in sorted(self.buckets):
            seen += self.buckets[k]
            if seen > rank:
                return 2.0 * gamma**k / (gamma + 1.0)
        raise AssertionError("rank beyond the counts")  # unreachable: rank < n

    def as_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "zeros": self.zeros, "buckets": {str(k): c for k, c in sorted(self.buckets.items())}}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> "LogSketch":
        return cls(float(doc["alpha"]), int(doc["zeros"]), {int(k): int(c) for k, c in doc["buckets"].items()})
