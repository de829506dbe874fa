"""Non-negative least squares (Lawson and Hanson's active-set method) in numpy.

A cost per unit of work cannot be negative, and ordinary least squares on
counts that nearly move together happily returns one large positive and one
large negative cost. NNLS keeps every coefficient >= 0; a count the data do
not need gets exactly 0.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["nnls", "weighted_solver"]


def weighted_solver(x: np.ndarray, weights: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """A solver of x beta ~ y (beta >= 0) for any y with these row weights.

    Each column is scaled to a maximum of 1 first, so one tolerance serves
    terms counted in forks and in thousands of VMAs alike; the returned beta is
    in the columns' own units. One matrix, many right-hand sides: the fit and
    each of its bootstrap draws.
    """
    scale = np.abs(x).max(axis=0)
    scale[scale == 0] = 1.0
    a = (x / scale) * weights[:, None]

    def solve(y: np.ndarray) -> np.ndarray:
        beta, _ = nnls(a, y * weights)
        return beta / scale

    return solve


def nnls(a: np.ndarray, b: np.ndarray, max_iter: int | None = None) -> tuple[np.ndarray, float]:
    """x >= 0 minimising ||a x - b||_2, and that residual norm.

    >>> x, r = nnls(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([2.0, -1.0]))
    >>> x.tolist(), round(r, 6)
    ([2.0, 0.0], 1.0)
    """
    a = np.asarray(a, dtype="float64")
    b = np.asarray(b, dtype="float64")
    if a.ndim != 2 or b.ndim != 1 or a.shape[0] != b.shape[0]:
        raise ValueError(f"nnls needs a (m, n) matrix and an m-vector, got {a.shape} and {b.shape}")
    m, n = a.shape
    x = np.zeros(n)
    if n == 0:
        return x, float(np.linalg.norm(b))
    passive = np.zeros(n, dtype=bool)
    tol = 10 * np.finfo(float).eps * max(m, n) * max(np.abs(a).sum(axis=0).max(), 1.0)
    max_iter = max_iter if max_iter is not None else 3 * n + 30
    w = a.T @ (b - a @ x)
    outer = 0
    while (~passive).any() and w[~passive].max() > tol:
        outer += 1
        if outer > max_iter:
            break
        j = int(np.argmax(np.where(passive, -np.inf, w)))
        passive[j] = True
        while True:
            s = np.zeros(n)
            s[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if s[passive].min() > 0:
                break
            # Step from x towards s until the first passive coefficient reaches 0.
            blocking = passive & (s <= 0) & (x - s > 0)
            if not blocking.any():
                s[~passive | (s < 0)] = 0.0
                break
            alpha = np.min(x[blocking] / (x[blocking] - s[blocking]))
            x = x + alpha * (s - x)
            passive &= x > tol
            x[~passive] = 0.0
            if not passive.any():
                s = np.zeros(n)
                break
        x = s
        w = a.T @ (b - a @ x)
    return x, float(np.linalg.norm(a @ x - b))
