"""NNLS (Lawson-Hanson) against problems whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.attribution.nnls import nnls


def test_unconstrained_optimum_inside_the_orthant_is_least_squares():
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 1, (30, 4))
    x_true = np.array([1.0, 2.0, 0.5, 3.0])
    x, r = nnls(a, a @ x_true)
    assert x == pytest.approx(x_true, rel=1e-9)
    assert r == pytest.approx(0.0, abs=1e-9)


def test_negative_direction_is_clamped_to_zero():
    # Least squares would give x = (2, -1); the best non-negative answer drops the second column.
    a = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    b = np.array([2.0, -1.0, 1.0])
    x, r = nnls(a, b)
    assert x[1] == 0.0
    assert x[0] == pytest.approx(1.5)  # argmin over x0 of (x0-2)^2 + (x0-1)^2
    assert r == pytest.approx(np.sqrt(0.25 + 1 + 0.25))


def test_kkt_conditions_hold_on_random_problems():
    rng = np.random.default_rng(7)
    for _ in range(50):
        m, n = rng.integers(3, 12), rng.integers(1, 6)
        a = rng.normal(size=(m, n))
        b = rng.normal(size=m)
        x, _ = nnls(a, b)
        w = a.T @ (b - a @ x)  # the negative gradient
        assert (x >= 0).all()
        assert (w <= 1e-8).all()  # no direction improves
        assert np.abs(w[x > 0]).max(initial=0) < 1e-8  # free coefficients are at their optimum


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        nnls(np.ones((3, 2)), np.ones(4))
