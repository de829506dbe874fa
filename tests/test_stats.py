"""analysis.stats: percentiles and funclatency-style log2 histograms."""

from __future__ import annotations

import math
import re
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.report.stats import (
    UNITS,
    Log2Histogram,
    choose_unit,
    format_log2_histogram,
    log2_histogram,
    percentiles,
    slot_bounds,
)

latencies = st.lists(st.integers(0, 2**40).map(float), max_size=300)


@settings(max_examples=200)
@given(values=latencies, unit=st.sampled_from(sorted(UNITS)))
def test_histogram_counts_sum_to_n(values, unit):
    assert log2_histogram(values, unit).n == len(values)


@settings(max_examples=200)
@given(values=latencies, unit=st.sampled_from(sorted(UNITS)))
def test_each_value_lands_in_the_bucket_whose_bounds_contain_it(values, unit):
    hist = log2_histogram(values, unit)
    scaled = [int(v // UNITS[unit]) for v in values]
    for lo, hi, count in hist.buckets():
        assert count == sum(lo <= v <= hi for v in scaled)


@given(st.integers(1, 64))
def test_slots_tile_the_integers_from_zero(top):
    bounds = [slot_bounds(k) for k in range(1, top + 1)]
    assert bounds[0][0] == 0
    for (_, hi), (lo, _) in zip(bounds, bounds[1:]):
        assert lo == hi + 1


def test_nan_is_not_counted():
    assert log2_histogram([1.0, math.nan, 3.0]).n == 2


def test_negative_latency_is_refused():
    with pytest.raises(ValueError):
        log2_histogram([5.0, -1.0])


def test_unknown_unit_is_refused():
    with pytest.raises(ValueError):
        log2_histogram([5.0], "fortnights")


def test_usecs_truncate_like_funclatency():
    # funclatency divides by 1000 in the kernel: 1999 ns is 1 usec, bucket 0 -> 1.
    hist = log2_histogram([1_999.0, 2_000.0, 3_999.0], "usecs")
    assert hist.buckets() == [(0, 1, 1), (2, 3, 2)]


def test_format_matches_print_log2_hist_by_hand():
    # 0,1 -> slot "0 -> 1"; 2,3,3 -> "2 -> 3"; 5 -> "4 -> 7". Bars: floor(40 * c / 3).
    text = format_log2_histogram(log2_histogram([0, 1, 2, 3, 3, 5]))
    assert text.splitlines() == [
        "     nsecs               : count     distribution",
        "         0 -> 1          : 2        |**************************              |",
        "         2 -> 3          : 3        |****************************************|",
        "         4 -> 7          : 1        |*************                           |",
    ]


@settings(max_examples=100)
@given(values=st.lists(st.integers(0, 2**31), min_size=1, max_size=200))
def test_format_lines_are_well_formed(values):
    lines = format_log2_histogram(log2_histogram(values)).splitlines()
    assert lines[0] == "     nsecs               : count     distribution"
    line = re.compile(r"^ {0,9}\d+ -> \d+ +: (\d+) +\|(\**) *\|$")
    counts = []
    for text in lines[1:]:
        m = line.match(text)
        assert m, text
        assert len(text.split("|")[1]) == 40
        counts.append(int(m.group(1)))
    peak = max(counts)
    for text, count in zip(lines[1:], counts):
        assert text.split("|")[1].count("*") == 40 * count // peak


def test_wide_layout_beyond_32_slots():
    text = format_log2_histogram(log2_histogram([2.0**33]))
    lines = text.splitlines()
    assert lines[0].startswith("               nsecs")
    assert len(lines) == 1 + 34
    assert lines[-1].endswith("|" + "*" * 20 + "|")


def test_empty_histogram_formats_to_nothing():
    assert format_log2_histogram(log2_histogram([])) == ""


@given(values=latencies.filter(bool), unit=st.sampled_from(sorted(UNITS)))
def test_from_buckets_round_trips(values, unit):
    hist = log2_histogram(values, unit)
    assert Log2Histogram.from_buckets(unit, hist.buckets()) == hist


@settings(max_examples=200)
@given(values=st.lists(st.floats(0, 1e9, allow_nan=False), min_size=1, max_size=300))
def test_percentiles_agree_with_the_standard_library(values):
    p = percentiles(values)
    assert p.n == len(values)
    assert math.isclose(p.p50, statistics.median(values), rel_tol=1e-9, abs_tol=1e-6)
    assert math.isclose(p.mean, statistics.fmean(values), rel_tol=1e-9, abs_tol=1e-6)
    # Some float rounding is allowed between interpolated percentiles.
    slack = 1e-9 * max(values) + 1e-9
    assert p.min - slack <= p.p50 <= p.p90 + slack <= p.p99 + 2 * slack <= p.max + 3 * slack


def test_percentiles_drop_nan_and_say_how_many_values_remain():
    p = percentiles([math.nan, 10.0, 20.0, math.nan, 30.0])
    assert (p.n, p.p50, p.min, p.max) == (3, 20.0, 10.0, 30.0)


def test_percentiles_of_nothing_are_none():
    p = percentiles([math.nan])
    assert p.n == 0 and p.p50 is None and p.mean is None
    assert p.as_dict("_ns") == {
        "n": 0, "p50_ns": None, "p90_ns": None, "p99_ns": None, "mean_ns": None, "min_ns": None, "max_ns": None,
    }


def test_choose_unit():
    assert choose_unit([500.0, 900.0]) == "nsecs"
    assert choose_unit([20_000.0, 50_000.0]) == "usecs"
    assert choose_unit([]) == "nsecs"
