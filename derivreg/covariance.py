"""Covariance estimators for least-squares coefficients, chosen by name, and the delta method.

For ``θ̂ = (XᵀX)⁻¹ Xᵀ y`` with residuals ``ê`` the estimators are

* ``"nonrobust"``: ``s² (XᵀX)⁻¹``, ``s² = êᵀê / (n - k)``;
* ``"HC0"`` / ``"HC1"``: ``(XᵀX)⁻¹ (Σ ê_t² x_t x_tᵀ) (XᵀX)⁻¹`` (HC1 scaled by ``n / (n - k)``);
* ``"HAC"``: Newey–West with Bartlett weights ``1 - l/(L+1)`` summed within segments only, the
  bandwidth ``L`` chosen automatically by Andrews' (1991) AR(1) plug-in rule unless given;
* ``"GLS"``-type sandwich: ``(XᵀX)⁻¹ Xᵀ Ω X (XᵀX)⁻¹`` for a known error covariance ``Ω``
  (:func:`sandwich`).

The parametric bootstrap of the state-space form lives with that model
(:func:`derivreg.models._smallsample.parametric_bootstrap`).

:func:`delta_method` maps a covariance through a smooth function ``g(θ)``:
``Cov g(θ̂) ≈ J Cov(θ̂) Jᵀ``, ``J = ∂g/∂θ`` (analytic if given, else central differences).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from derivreg._typing import FloatArray, IntArray
from derivreg.exceptions import DataError

__all__ = [
    "COV_TYPES",
    "andrews_bandwidth",
    "delta_method",
    "hac_cov",
    "hc_cov",
    "nonrobust_cov",
    "ols_cov",
    "sandwich",
    "system_cov",
]

COV_TYPES = ("nonrobust", "HC0", "HC1", "HAC")


def _bread(X: FloatArray) -> FloatArray:
    return np.linalg.pinv(X.T @ X)


def nonrobust_cov(X: FloatArray, resid: FloatArray) -> FloatArray:
    """``s² (XᵀX)⁻¹`` with ``s² = êᵀê / (n - k)``."""
    n, k = X.shape
    s2 = float(resid @ resid) / max(n - k, 1)
    return s2 * _bread(X)


def hc_cov(X: FloatArray, resid: FloatArray, kind: str = "HC1") -> FloatArray:
    """White heteroskedasticity-robust covariance (HC0 or HC1)."""
    n, k = X.shape
    B = _bread(X)
    S = (X * resid[:, None] ** 2).T @ X
    cov = B @ S @ B
    if kind == "HC1":
        cov *= n / max(n - k, 1)
    elif kind != "HC0":
        raise DataError(f"unknown HC covariance {kind!r}; use 'HC0' or 'HC1'")
    return cov


def andrews_bandwidth(scores: FloatArray, segments: Sequence[IntArray] | None = None) -> float:
    """Andrews (1991) AR(1) plug-in bandwidth for the Bartlett kernel.

    Each score column is fitted an AR(1) coefficient ``ρ_j`` (pooled within segments); with
    ``α = Σ 4ρ²σ⁴/((1-ρ)⁶(1+ρ)²) / Σ σ⁴/(1-ρ)⁴``, the bandwidth is ``1.1447 (α n)^{1/3}``.
    """
    n = scores.shape[0]
    segs = list(segments) if segments is not None else [np.arange(n)]
    num = 0.0
    den = 0.0
    for j in range(scores.shape[1]):
        s = scores[:, j]
        a = np.concatenate([s[p[1:]] for p in segs if len(p) > 1])
        b = np.concatenate([s[p[:-1]] for p in segs if len(p) > 1])
        bb = float(b @ b)
        if bb <= 0:
            continue
        rho = float(np.clip(a @ b / bb, -0.97, 0.97))
        sig2 = float(np.mean((a - rho * b) ** 2))
        num += 4 * rho**2 * sig2**2 / ((1 - rho) ** 6 * (1 + rho) ** 2)
        den += sig2**2 / (1 - rho) ** 4
    if den <= 0:
        return 0.0
    alpha = num / den
    return float(1.1447 * (alpha * n) ** (1 / 3))


def hac_cov(
    X: FloatArray,
    resid: FloatArray,
    maxlags: int | None = None,
    segments: Sequence[IntArray] | None = None,
    small_sample: bool = True,
) -> tuple[FloatArray, int]:
    """Newey–West HAC covariance with Bartlett weights, lags summed within segments only.

    Parameters
    ----------
    X, resid : arrays
        Design ``(n, k)`` and residuals ``(n,)``.
    maxlags : int, optional
        Bandwidth ``L``; default :func:`andrews_bandwidth` of the scores ``x_t ê_t``.
    segments : list of index arrays, optional
        Rows of each independent segment (no lag crosses a boundary).
    small_sample : bool
        Scale by ``n / (n - k)``.

    Returns
    -------
    cov : ndarray (k, k)
    maxlags : int
        The bandwidth used.
    """
    n, k = X.shape
    scores = X * resid[:, None]
    segs = list(segments) if segments is not None else [np.arange(n)]
    if maxlags is None:
        maxlags = int(np.ceil(andrews_bandwidth(scores, segs)))
        longest = max(len(p) for p in segs)
        maxlags = int(min(maxlags, max(longest // 2, 1)))
    S = scores.T @ scores
    for lag in range(1, maxlags + 1):
        w = 1.0 - lag / (maxlags + 1.0)
        G = np.zeros((k, k))
        for p in segs:
            if len(p) > lag:
                G += scores[p[lag:]].T @ scores[p[:-lag]]
        S += w * (G + G.T)
    B = _bread(X)
    cov = B @ S @ B
    if small_sample:
        cov *= n / max(n - k, 1)
    return cov, int(maxlags)


def system_cov(
    X_blocks: Sequence[FloatArray],
    resid_blocks: Sequence[FloatArray],
    cov_type: str,
    *,
    segments: Sequence[IntArray] | None = None,
    maxlags: int | None = None,
) -> tuple[FloatArray, dict[str, Any]]:
    """Joint covariance of equation-by-equation OLS coefficients (systems, time-aligned rows).

    With ``B = blockdiag((X_iᵀX_i)⁻¹)`` and per-sample scores ``s_t = [x_1t e_1t, ..., x_mt e_mt]``
    the covariance is ``B M B`` where the "meat" ``M`` is ``Σ_ij σ̂_ij X_iᵀX_j`` (nonrobust, with
    ``σ̂_ij = e_iᵀe_j / (n - k̄)``), ``Σ_t s_t s_tᵀ`` (HC0/HC1) or its Bartlett-weighted HAC version
    summed within segments. For one equation this is :func:`ols_cov`.
    """
    n = X_blocks[0].shape[0]
    ks = [X.shape[1] for X in X_blocks]
    K = sum(ks)
    B = np.zeros((K, K))
    offs = np.cumsum([0, *ks])
    for i, X in enumerate(X_blocks):
        B[offs[i] : offs[i + 1], offs[i] : offs[i + 1]] = _bread(X)
    dof = n - float(np.mean(ks))
    details: dict[str, Any] = {}
    if cov_type == "nonrobust":
        M = np.zeros((K, K))
        for i, (Xi, ei) in enumerate(zip(X_blocks, resid_blocks, strict=True)):
            for j, (Xj, ej) in enumerate(zip(X_blocks, resid_blocks, strict=True)):
                sij = float(ei @ ej) / max(dof, 1)
                M[offs[i] : offs[i + 1], offs[j] : offs[j + 1]] = sij * Xi.T @ Xj
        return B @ M @ B, details
    scores = np.hstack([X * e[:, None] for X, e in zip(X_blocks, resid_blocks, strict=True)])
    M = scores.T @ scores
    if cov_type == "HAC":
        segs = list(segments) if segments is not None else [np.arange(n)]
        if maxlags is None:
            maxlags = int(np.ceil(andrews_bandwidth(scores, segs)))
            maxlags = int(min(maxlags, max(max(len(p) for p in segs) // 2, 1)))
        for lag in range(1, maxlags + 1):
            w = 1.0 - lag / (maxlags + 1.0)
            G = np.zeros((K, K))
            for p in segs:
                if len(p) > lag:
                    G += scores[p[lag:]].T @ scores[p[:-lag]]
            M += w * (G + G.T)
        details["maxlags"] = int(maxlags)
    elif cov_type not in ("HC0", "HC1"):
        raise DataError(f"unknown cov_type {cov_type!r}; choose one of {list(COV_TYPES)}")
    cov = B @ M @ B
    if cov_type != "HC0":
        cov *= n / max(dof, 1)
    return cov, details


def sandwich(X: FloatArray, omega: FloatArray | Callable[[FloatArray], FloatArray]) -> FloatArray:
    """``(XᵀX)⁻¹ Xᵀ Ω X (XᵀX)⁻¹`` for a known error covariance ``Ω``.

    ``omega`` is the matrix ``(n, n)`` or a function returning ``Ω X`` for a given ``X`` (for
    structured covariances that should not be formed densely).
    """
    B = _bread(X)
    OX = omega(X) if callable(omega) else omega @ X
    return B @ (X.T @ OX) @ B


def ols_cov(
    X: FloatArray,
    resid: FloatArray,
    cov_type: str,
    *,
    segments: Sequence[IntArray] | None = None,
    maxlags: int | None = None,
) -> tuple[FloatArray, dict[str, Any]]:
    """Covariance of OLS coefficients by name: ``nonrobust``, ``HC0``, ``HC1`` or ``HAC``.

    Returns the covariance and a dict of details (e.g. the HAC bandwidth).
    """
    if cov_type == "nonrobust":
        return nonrobust_cov(X, resid), {}
    if cov_type in ("HC0", "HC1"):
        return hc_cov(X, resid, cov_type), {}
    if cov_type == "HAC":
        cov, lags = hac_cov(X, resid, maxlags=maxlags, segments=segments)
        return cov, {"maxlags": lags}
    raise DataError(f"unknown cov_type {cov_type!r}; choose one of {list(COV_TYPES)}")


def _numerical_jacobian(fun: Callable[[FloatArray], Any], x: FloatArray) -> FloatArray:
    f0 = np.atleast_1d(np.asarray(fun(x), dtype=float))
    J = np.empty((f0.size, x.size))
    for i in range(x.size):
        h = 1e-6 * max(abs(x[i]), 1.0)
        xp = x.copy()
        xm = x.copy()
        xp[i] += h
        xm[i] -= h
        fp = np.atleast_1d(np.asarray(fun(xp), dtype=float))
        fm = np.atleast_1d(np.asarray(fun(xm), dtype=float))
        J[:, i] = (fp - fm) / (2 * h)
    return J


def delta_method(
    fun: Callable[[Any], Any],
    params: pd.Series | FloatArray | Sequence[float],
    cov: pd.DataFrame | FloatArray,
    jac: Callable[[Any], Any] | FloatArray | None = None,
    names: Sequence[str] | None = None,
) -> tuple[Any, Any]:
    """Value and covariance of ``g(θ)`` by the delta method: ``Cov g(θ̂) ≈ J Σ Jᵀ``.

    Parameters
    ----------
    fun : callable
        ``g``; receives ``params`` in the form given (a Series keeps its labels, so
        ``lambda p: -p["c"] / p["b"]`` works) and returns a scalar, array, Series or dict.
    params : Series or array
        Estimates ``θ̂``.
    cov : DataFrame or array
        ``Cov(θ̂)``.
    jac : callable or array, optional
        Analytic Jacobian ``∂g/∂θ`` (rows: outputs, columns: params); default: central
        differences.
    names : list of str, optional
        Labels of the outputs (default: Series/dict keys of ``fun``'s result, else g0, g1, ...).

    Returns
    -------
    value : Series when outputs are labelled (dict/Series result, ``names``, or Series params
        with an array result); float for a scalar ``g``; else ndarray
    cov : DataFrame, float or ndarray accordingly
    """
    is_series = isinstance(params, pd.Series)
    x = np.asarray(params, dtype=float).copy()
    index = params.index if is_series else None
    S = np.asarray(cov, dtype=float)
    if S.shape != (x.size, x.size):
        raise DataError(f"cov has shape {S.shape}, expected {(x.size, x.size)}")

    def wrap(v: FloatArray) -> Any:
        return pd.Series(v, index=index) if is_series else v

    raw = fun(wrap(x))
    out_names: list[str] | None = None
    if isinstance(raw, pd.Series):
        out_names = [str(i) for i in raw.index]
    elif isinstance(raw, dict):
        out_names = [str(k) for k in raw]

    def flat(v: FloatArray) -> FloatArray:
        r = fun(wrap(v))
        if isinstance(r, dict):
            r = list(r.values())
        return np.atleast_1d(np.asarray(r, dtype=float))

    g0 = flat(x)
    if jac is None:
        J = _numerical_jacobian(flat, x)
    else:
        J = np.atleast_2d(np.asarray(jac(wrap(x)) if callable(jac) else jac, dtype=float))
    if J.shape != (g0.size, x.size):
        raise DataError(f"Jacobian has shape {J.shape}, expected {(g0.size, x.size)}")
    C = J @ S @ J.T
    if names is not None:
        out_names = [str(n) for n in names]
    if out_names is None and g0.size == 1 and np.ndim(raw) == 0:
        return float(g0[0]), float(C[0, 0])
    if out_names is None and not is_series:
        return g0, C
    if out_names is None:
        out_names = [f"g{i}" for i in range(g0.size)]
    return pd.Series(g0, index=out_names), pd.DataFrame(C, index=out_names, columns=out_names)
