"""Latency statistics: percentiles, and log2 histograms printed like bcc's funclatency.

Pure functions over sequences of ns values; NaN means "not measured" and is
dropped before counting, so `n` always says how many values a figure rests on.
The histogram buckets a value v (after integer division by the unit, as
funclatency does in the kernel) into slot max(bit_length(v), 1), which is
what bcc's bpf_log2l() + 1 yields: slot 1 covers 0..1, slot k >= 2 covers
2^(k-1)..2^k - 1. Rendering follows print_log2_hist(): header
"     nsecs               : count     distribution", one "lo -> hi : count |***|"
line per slot from 1 to the highest non-empty one, bars of 40 stars (20 when
values pass 2^32 and the wide layout is used).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np

__all__ = [
    "UNITS",
    "Percentiles",
    "Log2Histogram",
    "finite_values",
    "percentiles",
    "log2_slot",
    "slot_bounds",
    "log2_histogram",
    "choose_unit",
    "format_log2_histogram",
]

# funclatency's unit names, and ns per unit.
UNITS: dict[str, int] = {"nsecs": 1, "usecs": 1_000, "msecs": 1_000_000}

STARS_MAX = 40


@dataclass(frozen=True)
class Percentiles:
    """Summary of one latency sample; None everywhere when n == 0.

    Percentiles interpolate linearly between order statistics (numpy's default),
    so with n < 100 p99 lies between the two largest values.
    """

    n: int
    p50: float | None
    p90: float | None
    p99: float | None
    mean: float | None
    min: float | None
    max: float | None

    def as_dict(self, suffix: str = "") -> dict[str, float | int | None]:
        """Plain dict; `suffix` (e.g. "_ns") is appended to every key but n."""
        return {(k if k == "n" else k + suffix): v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Log2Histogram:
    """Counts per log2 slot, in `unit`; counts[k] is slot k (counts[0] unused, always 0)."""

    unit: str
    counts: tuple[int, ...]

    @classmethod
    def from_buckets(cls, unit: str, buckets: Iterable[Sequence[int]]) -> "Log2Histogram":
        """Rebuild from buckets() output, e.g. after a JSON round trip."""
        counts: dict[int, int] = {log2_slot(lo): int(count) for lo, _hi, count in buckets}
        top = max(counts, default=0)
        return cls(unit, tuple(counts.get(k, 0) for k in range(top + 1)))

    @property
    def n(self) -> int:
        return sum(self.counts)

    def buckets(self) -> list[tuple[int, int, int]]:
        """(lo, hi, count) for slots 1 .. highest non-empty, as funclatency prints them."""
        top = max((k for k, c in enumerate(self.counts) if c), default=0)
        return [(*slot_bounds(k), self.counts[k]) for k in range(1, top + 1)]


def finite_values(values: Iterable[float]) -> np.ndarray:
    """Values as float64 with NaN (not measured) dropped; infinities are a caller bug."""
    if not hasattr(values, "__len__"):
        values = list(values)
    arr = np.asarray(values, dtype="float64")
    arr = arr[~np.isnan(arr)]
    if np.isinf(arr).any():
        raise ValueError("latency values must be finite")
    return arr


def percentiles(values: Iterable[float]) -> Percentiles:
    """p50/p90/p99/mean/min/max over the non-NaN values."""
    arr = finite_values(values)
    if arr.size == 0:
        return Percentiles(0, None, None, None, None, None, None)
    p50, p90, p99 = (float(x) for x in np.percentile(arr, [50, 90, 99]))
    return Percentiles(
        n=int(arr.size),
        p50=p50,
        p90=p90,
        p99=p99,
        mean=float(arr.mean()),
        min=float(arr.min()),
        max=float(arr.max()),
    )


def log2_slot(value: int) -> int:
    """bcc's bpf_log2l(value) + 1 for value >= 0: 0 and 1 share slot 1."""
    if value < 0:
        raise ValueError(f"negative latency {value}")
    return max(int(value).bit_length(), 1)


def slot_bounds(slot: int) -> tuple[int, int]:
    """Inclusive (lo, hi) of a slot, as print_log2_hist labels it (slot 1 is 0 -> 1)."""
    if slot < 1:
        raise ValueError(f"slot {slot} < 1")
    if slot == 1:
        return 0, 1
    return 1 << (slot - 1), (1 << slot) - 1


def log2_histogram(values_ns: Iterable[float], unit: str = "nsecs") -> Log2Histogram:
    """Bucket ns values into log2 slots of `unit` (values truncated to whole units)."""
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {', '.join(UNITS)}, not {unit!r}")
    arr = finite_values(values_ns)
    if (arr < 0).any():
        raise ValueError(f"negative latency {arr.min()}")
    scaled = np.floor(arr / UNITS[unit]).astype("uint64") if arr.size else np.zeros(0, "uint64")
    if scaled.size == 0:
        return Log2Histogram(unit, (0,))
    slots = [log2_slot(int(v)) for v in scaled]
    counts = np.bincount(slots, minlength=max(slots) + 1)
    return Log2Histogram(unit, tuple(int(c) for c in counts))


def choose_unit(values_ns: Sequence[float] | np.ndarray) -> str:
    """usecs once the median reaches 10 us (keeps a histogram to ~20 lines), else nsecs."""
    arr = finite_values(values_ns)
    if arr.size and float(np.median(arr)) >= 10_000:
        return "usecs"
    return "nsecs"


def _stars(count: int, count_max: int, width: int) -> str:
    """floor(width * count / count_max) stars, capped at width: print_log2_hist's bar."""
    if count_max <= 0:
        return ""
    return "*" * min(width, math.floor(width * count / count_max))


def format_log2_histogram(hist: Log2Histogram) -> str:
    """The histogram as funclatency prints it; "" when it holds no values."""
    buckets = hist.buckets()
    if not buckets:
        return ""
    count_max = max(c for _, _, c in buckets)
    if len(buckets) <= 32:
        header = f"     {hist.unit:<19} : count     distribution"
        lo_w, width = 10, STARS_MAX
    else:
        header = f"               {hist.unit:<29} : count     distribution"
        lo_w, width = 20, STARS_MAX // 2
    lines = [header]
    for lo, hi, count in buckets:
        lines.append(f"{lo:>{lo_w}} -> {hi:<{lo_w}} : {count:<8} |{_stars(count, count_max, width):<{width}}|")
    return "\n".join(lines)
