"""Integrated random walks of order m (METHODS.md section 1) for the smoother tests."""

from __future__ import annotations

from math import factorial

import numpy as np


def irw_matrices(delta: float, m: int, q: float) -> tuple[np.ndarray, np.ndarray]:
    """Transition ``T`` and noise covariance ``q Q`` of the order-``m`` walk over ``delta``."""
    tr, cov = np.zeros((m, m)), np.zeros((m, m))
    for i in range(m):
        for j in range(m):
            if j >= i:
                tr[i, j] = delta ** (j - i) / factorial(j - i)
            p = 2 * m - 1 - i - j
            cov[i, j] = q * delta**p / (p * factorial(m - 1 - i) * factorial(m - 1 - j))
    return tr, cov


def irw_states(t: np.ndarray, m: int, q: float, rng: np.random.Generator) -> np.ndarray:
    """States ``(f, f', ..., f^(m-1))`` of one draw of the walk at the times ``t``."""
    x = np.zeros((len(t), m))
    x[0] = rng.standard_normal(m)
    for k, d in enumerate(np.diff(t)):
        tr, cov = irw_matrices(d, m, q)
        x[k + 1] = tr @ x[k] + np.linalg.cholesky(cov) @ rng.standard_normal(m)
    return x
