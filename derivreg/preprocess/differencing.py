"""Finite differences on uniform and irregular grids, with the exact covariance of the estimate.

The ``p``-th derivative at sample ``i`` is a weighted sum of the samples of a stencil around it,

.. math:: \\hat x^{(p)}(t_i) = \\sum_{k \\in S_i} w_{ik} \\, y_k, \\qquad
          \\hat{\\mathbf x}^{(p)} = W \\mathbf y,

with weights from Fornberg's recursion (exact for polynomials of degree ``|S_i| - 1`` on any
grid). Under white measurement noise ``y_k = x(t_k) + e_k``, ``Var e_k = r``, the estimate has the
exact covariance ``Cov = r W W^T`` (a banded matrix: neighbours are MA-correlated).
"""

from __future__ import annotations

from typing import Any, Literal, Self

import numpy as np
import pandas as pd
import scipy.sparse as sp

from derivreg._typing import FloatArray, IntArray
from derivreg.exceptions import DataError, TooFewPointsError
from derivreg.preprocess.base import Preprocessor
from derivreg.timebase import is_regular

__all__ = ["Differencing", "fornberg_weights", "noise_variance", "stencil_size"]

Kind = Literal["central", "forward", "backward"]


def fornberg_weights(offsets: np.ndarray, max_order: int) -> FloatArray:
    """Finite-difference weights for derivatives ``0..max_order`` at offset 0 (Fornberg 1988).

    Parameters
    ----------
    offsets : ndarray (..., m)
        Node positions relative to the evaluation point, ``x_k - z``; any leading batch shape.
    max_order : int
        Highest derivative order.

    Returns
    -------
    ndarray (..., max_order + 1, m)
        ``w[..., p, k]``: weight of node ``k`` in the ``p``-th derivative,
        ``f^{(p)}(z) ~ sum_k w[p, k] f(x_k)``, exact for polynomials of degree ``m - 1``.
    """
    x = np.asarray(offsets, dtype=float)
    m = x.shape[-1]
    batch = x.shape[:-1]
    c = np.zeros((*batch, max_order + 1, m))
    c[..., 0, 0] = 1.0
    c1 = np.ones(batch)
    c4 = x[..., 0].copy()
    for i in range(1, m):
        mn = min(i, max_order)
        c2 = np.ones(batch)
        c5 = c4
        c4 = x[..., i].copy()
        for j in range(i):
            c3 = x[..., i] - x[..., j]
            c2 = c2 * c3
            if j == i - 1:
                for k in range(mn, 0, -1):
                    c[..., k, i] = c1 * (k * c[..., k - 1, i - 1] - c5 * c[..., k, i - 1]) / c2
                c[..., 0, i] = -c1 * c5 * c[..., 0, i - 1] / c2
            for k in range(mn, 0, -1):
                c[..., k, j] = (c4 * c[..., k, j] - k * c[..., k - 1, j]) / c3
            c[..., 0, j] = c4 * c[..., 0, j] / c3
        c1 = c2
    return c


def stencil_size(order: int, accuracy: int, kind: Kind) -> int:
    """Number of points of the stencil for derivative ``order`` at ``accuracy`` (uniform grid).

    Central stencils have ``2*floor((order+1)/2) - 1 + accuracy`` points, one-sided ones
    ``order + accuracy``.
    """
    if order == 0:
        return 1
    if kind == "central":
        return 2 * ((order + 1) // 2) - 1 + accuracy
    return order + accuracy


def noise_variance(t: FloatArray, y: FloatArray) -> float:
    """Measurement-noise variance by the Gasser–Sroka–Jennen-Steinmetz difference estimator.

    Pseudo-residuals compare each interior sample with the line through its two neighbours,
    ``ε_i = a_i y_{i-1} + b_i y_{i+1} - y_i`` (``a_i, b_i`` the linear-interpolation weights on the
    possibly irregular grid), scaled to unit noise variance:
    ``r̂ = mean(ε_i² / (a_i² + b_i² + 1))``. Exact in expectation for locally linear signals; the
    bias for a smooth signal is ``O(Δ⁴ x''²)``.
    """
    t = np.asarray(t, dtype=float)
    y = np.asarray(y, dtype=float)
    if len(y) < 3:
        raise TooFewPointsError(f"the noise-variance estimator needs 3 points, got {len(y)}")
    h0 = t[1:-1] - t[:-2]
    h1 = t[2:] - t[1:-1]
    a = h1 / (h0 + h1)
    b = h0 / (h0 + h1)
    eps = a * y[:-2] + b * y[2:] - y[1:-1]
    return float(np.mean(eps**2 / (a**2 + b**2 + 1.0)))


class Differencing(Preprocessor):
    """Finite-difference derivatives (Fornberg weights), central, forward or backward.

    Model: ``y_k = x(t_k) + e_k`` with white noise of variance ``r``; the estimate of
    ``x^{(p)}(t_i)`` is ``(W y)_i`` with stencil weights ``W`` exact for polynomials of degree
    ``m - 1`` (``m`` points in the stencil) and covariance ``r W W^T``.

    Parameters
    ----------
    kind : {"central", "forward", "backward"}
        Stencil placement around each sample.
    accuracy : {2, 4, 6}
        Accuracy order on a uniform grid: the error is ``O(Δ^accuracy)``. On an irregular grid
        the same number of points is used; central stencils of even derivative order then lose
        one order (the symmetric cancellation needs symmetric nodes); all stencils stay exact for
        polynomials of degree ``m - 1``.
    edges : {"nan", "shift"}
        ``"nan"`` (default): NaN where the stencil does not fit (the first/last ``m // 2`` points
        of a central stencil; the end of a forward or the start of a backward one).
        ``"shift"``: at those points use the nearest stencil of the same size that fits (one-sided
        at the edges; accuracy drops to ``m - p`` and the variance grows).
    noise_var : float, optional
        Known measurement-noise variance ``r``; default estimated per column and segment by
        :func:`noise_variance` (Gasser–Sroka–Jennen-Steinmetz). Used only by the covariance.

    Notes
    -----
    Nothing is differenced across a segment boundary: edges of every segment are treated like
    the ends of the series. Derivative order 0 returns the data themselves.
    """

    name = "difference"
    max_order = 3

    def __init__(
        self,
        kind: Kind = "central",
        accuracy: int = 2,
        edges: Literal["nan", "shift"] = "nan",
        noise_var: float | None = None,
    ) -> None:
        self.kind = kind
        self.accuracy = accuracy
        self.edges = edges
        self.noise_var = noise_var

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        if self.kind not in ("central", "forward", "backward"):
            raise DataError(f"kind must be 'central', 'forward' or 'backward', got {self.kind!r}")
        if isinstance(self.accuracy, bool) or self.accuracy not in (2, 4, 6):
            raise DataError(f"accuracy must be 2, 4 or 6, got {self.accuracy!r}")
        if self.edges not in ("nan", "shift"):
            raise DataError(f"edges must be 'nan' or 'shift', got {self.edges!r}")
        if self.noise_var is not None and not (np.isfinite(self.noise_var) and self.noise_var >= 0):
            raise DataError(f"noise_var must be a finite number >= 0, got {self.noise_var!r}")

    def min_points(self) -> int:
        """Points of the first-derivative stencil (higher orders are checked when asked)."""
        return max(3, stencil_size(1, self.accuracy, self.kind))

    def fit(self, data: pd.DataFrame | pd.Series | np.ndarray, **kwargs: Any) -> Self:
        """Validate the parameters and store the data (see :meth:`Preprocessor.fit`)."""
        self._validate()
        super().fit(data, **kwargs)
        sd = self.data_
        self.info_ = {
            "kind": self.kind,
            "accuracy": self.accuracy,
            "noise_var": {
                c: [float(self.states_[(j, i)]["noise_var"]) for i in range(len(sd.segments))]
                for j, c in enumerate(sd.columns)
            },
            "noise_var_source": "given" if self.noise_var is not None else "GSJS estimate",
        }
        return self

    # ------------------------------------------------------------------ stencils
    def _stencil_start(self, n: int, order: int) -> tuple[IntArray, np.ndarray, int]:
        """First index of each point's stencil, whether it is defined, and the stencil size."""
        m = stencil_size(order, self.accuracy, self.kind)
        i = np.arange(n)
        if self.kind == "central":
            start = i - (m - 1) // 2
        elif self.kind == "forward":
            start = i.copy()
        else:
            start = i - (m - 1)
        ok = (start >= 0) & (start + m <= n)
        if self.edges == "shift":
            start = np.clip(start, 0, n - m)
            ok = np.ones(n, dtype=bool)
        return start, ok, m

    def weights(self, t: FloatArray, order: int = 1) -> sp.csr_array:
        """Stencil weight matrix ``W`` (n × n, sparse): the estimate is ``W @ y``.

        Rows of points where the derivative is undefined (see ``edges``) are all zero; use
        :meth:`defined` for the mask. ``order`` 0 gives the identity.

        Raises
        ------
        TooFewPointsError
            If ``t`` has fewer points than the stencil.
        """
        self._validate()
        t = np.asarray(t, dtype=float)
        n = len(t)
        order = self._check_order(order)
        if order == 0:
            return sp.csr_array(sp.identity(n, format="csr"))
        start, ok, m = self._stencil_start(n, order)
        if n < m:
            raise TooFewPointsError(
                f"a {self.kind} difference of order {order} at accuracy {self.accuracy} needs "
                f"{m} points per segment, got {n}"
            )
        rows = np.flatnonzero(ok)
        cols = start[rows, None] + np.arange(m)[None, :]
        offsets = t[cols] - t[rows, None]
        if is_regular(t):
            h = float(np.mean(np.diff(t)))
            # one set of weights per distinct stencil position (all identical inside)
            rel = cols - rows[:, None]
            uniq, inv = np.unique(rel, axis=0, return_inverse=True)
            w = fornberg_weights(uniq.astype(float), order)[:, order, :] / h**order
            w = w[np.ravel(inv)]
        else:
            # scale offsets to O(1) for accuracy; weights scale back by scale**-order
            scale = np.max(np.abs(offsets), axis=1, keepdims=True)
            w = fornberg_weights(offsets / scale, order)[:, order, :] / scale**order
        mat = sp.csr_array((w.ravel(), (np.repeat(rows, m), cols.ravel())), shape=(n, n))
        return mat

    def defined(self, t: FloatArray, order: int = 1) -> np.ndarray:
        """Boolean mask of the points where the ``order``-th difference is defined."""
        self._validate()
        order = self._check_order(order)
        if order == 0:
            return np.ones(len(t), dtype=bool)
        return self._stencil_start(len(t), order)[1]

    # ------------------------------------------------------------------ protocol
    def _fit_1d(self, t: FloatArray, y: FloatArray) -> dict[str, Any]:
        r = float(self.noise_var) if self.noise_var is not None else noise_variance(t, y)
        return {"y": np.array(y, dtype=float), "noise_var": r}

    def _derivative_1d(
        self, state: dict[str, Any], t: FloatArray, order: int
    ) -> tuple[FloatArray, None]:
        y = state["y"]
        if order == 0:
            return y.copy(), None
        est = self.weights(t, order) @ y
        est[~self.defined(t, order)] = np.nan
        return est, None

    def _derivative_cov_1d(self, state: dict[str, Any], t: FloatArray, order: int) -> FloatArray:
        """Dense ``r W W^T`` (n × n), NaN rows and columns where the estimate is undefined."""
        cov, ok = self._cov_sparse(state, t, order)
        out = cov.toarray()
        out[~ok, :] = np.nan
        out[:, ~ok] = np.nan
        return out

    def _cov_sparse(
        self, state: dict[str, Any], t: FloatArray, order: int
    ) -> tuple[sp.csr_array, np.ndarray]:
        w = self.weights(t, order)
        return sp.csr_array(state["noise_var"] * (w @ w.T)), self.defined(t, order)

    def derivative_cov_sparse(
        self, order: int = 1, column: int = 0, segment: int = 0
    ) -> tuple[sp.csr_array, np.ndarray]:
        """Sparse covariance ``r W W^T`` of one segment of one column, and the defined mask.

        Entries in rows/columns where the mask is False are zero (the estimate is NaN there).
        Prefer this to :meth:`derivative_cov` for long series: it is banded.
        """
        self._check_fitted()
        order = self._check_order(order)
        pos = self.data_.segments[segment]
        return self._cov_sparse(self.states_[(column, segment)], self.data_.t[pos], order)

    def derivative_weights(self, order: int = 1, column: int = 0, segment: int = 0) -> sp.csr_array:
        """Fitted ``W`` of one segment (rows/columns index that segment's samples in time order).

        The estimate there is ``W @ y_segment`` (NaN on the all-zero rows, see :meth:`defined`).
        ``column`` does not change ``W``; it is accepted for symmetry with other estimators.
        """
        self._check_fitted()
        order = self._check_order(order)
        return self.weights(self.data_.t[self.data_.segments[segment]], order)

    def fitted_noise_var(self, column: int = 0, segment: int = 0) -> float:
        """Measurement-noise variance used for one column and segment (given or estimated)."""
        self._check_fitted()
        return float(self.states_[(column, segment)]["noise_var"])
