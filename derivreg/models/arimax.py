"""Exact discretisation in ARX / ARIMAX form (``method="arimax"``).

First order
-----------
For ``dx = (a x + Σ_j θ_j w_j(t)) dt + σ dW`` with each regressor ``w_j`` (inputs, the constant)
held (``"zoh"``) or linear (``"linear"``) between samples, on a regular grid with step ``Δ``,
``φ = e^{aΔ}``:

.. math::

    x_{k+1} = φ x_k + Σ_j θ_j [w_{j,k} I_0 + (w_{j,k+1} - w_{j,k}) I_1/Δ] + η_k,
    \\quad I_0 = (φ-1)/a,\\; I_1 = (φ-1)/a² - Δ/a,\\; \\operatorname{Var} η = σ²(φ²-1)/(2a).

This is an ARX: ``x_{k+1} = φ x_k + Σ_j (β_{j,0} w_{j,k} + β_{j,1} w_{j,k+1}) + η_k`` (the second
lag only for linear inputs), estimated by OLS, which is the exact conditional maximum likelihood
under process noise. Mapped back to continuous time: ``a = ln φ / Δ`` (not the O(Δ)-biased Euler
``(φ-1)/Δ``) and ``θ_j = (β_{j,0} + β_{j,1}) / I_0(a)`` (the lag coefficients always sum to
``θ_j I_0``); standard errors by the delta method. Intervals for ``a`` may instead be transformed
from the φ scale (``ln`` of the ends of the interval of φ), kept in ``results.info``.

Second order (the motor)
------------------------
For ``x'' = a x' + Σ_j θ_j w_j`` with only the position observed, the differences
``D_k = x_k - x_{k-1}`` follow exactly (zero-order hold, derived from the velocity recursion)

.. math::

    D_{k+1} = φ D_k + Σ_j θ_j [I_1 w_{j,k} + (I_0² - φ I_1) w_{j,k-1}] + ε_{k+1},

an ARIMAX(1,1,0) in ``x`` with two input lags (three for linear inputs: ``w_{k+1}`` too). The lag
coefficients sum to ``θ_j S(a)``, ``S = I_1 (1-φ) + I_0²``. The Coulomb term ``sign(d(x))`` is
evaluated as the direction of motion over each sampling interval, ``s_k = sign(x_{k+1} - x_k)``,
held over ``[t_k, t_{k+1})`` (so it is exact for intervals without a reversal); near reversals it
is as unreliable as any sign of an estimated velocity. The integrated process noise makes ``ε``
MA(1) even without measurement noise, so the default estimator there is maximum likelihood
(``estimator="ols"`` is available and warns with :class:`BiasWarning`).

Measurement noise
-----------------
With ``y_k = x_k + e_k`` the discrete model is an ARMAX: ``y_{k+1} = φ y_k + β'w + η_k + e_{k+1} -
φ e_k`` has MA(1) errors (MA(2) for the differenced second-order form), and OLS is inconsistent
(``y_k`` is correlated with ``e_k``). ``noise="measurement"`` or ``"both"`` estimates the ARMAX by
exact Gaussian maximum likelihood, conditional on the first lags: a regression of the response on
the *lagged output* and the input lags with MA(q) errors, ``r = X β + u``, ``u ~ MA(q)``. ``β`` and
the innovation variance are concentrated out by GLS through a banded Cholesky factor of the MA
correlation matrix; the MA coefficients maximise the profile likelihood. This is the model
statsmodels fits as ``SARIMAX(endog=y[1:], exog=[y[:-1], w lags], order=(0, 0, q))`` (the tests
check the two agree), about 50x faster. It is *not* what ``SARIMAX(y, exog=u, order=(1, 0, q))``
estimates: that is a regression with ARMA errors, ``y_k = β'u_k + ν_k`` with
``(1 - φL) ν_k = (1 + ψL) ε_k``, in which the input acts instantaneously and the AR coefficient
describes the *noise*, not the system's dynamics (its ``φ`` is not ``e^{aΔ}`` and its ``β`` is the
static gain, not ``b I_0``).

Irregular sampling cannot be written in this form (``φ`` changes with every step): it raises
:class:`IrregularSamplingError`; use ``method="statespace"``. Segments: lags never cross a
segment boundary (rows are built within segments, and the MA correlation matrix is block
diagonal over segments).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import scipy.special
import scipy.stats

from derivreg._typing import FloatArray
from derivreg.diagnostics import input_hold_check
from derivreg.discretize import first_order_terms, hold_mask
from derivreg.exceptions import (
    BiasWarning,
    ConvergenceError,
    ConvergenceWarning,
    DataError,
    IdentificationError,
    IrregularSamplingError,
    MethodNotAvailableError,
    TooFewPointsError,
)
from derivreg.models.base import Model
from derivreg.results import DiffRegResults
from derivreg.timebase import is_regular

__all__ = [
    "ARIMAX",
    "ARXDesign",
    "ARXFit",
    "arx_design",
    "fit_arx",
    "lag_coefficients",
    "lag_sum_scale",
]

Noise = Literal["process", "measurement", "both"]


def lag_sum_scale(a: float | FloatArray, dt: float, order: int) -> FloatArray:
    """``S(a)``: the sum of a regressor's lag coefficients divided by its coefficient ``θ``.

    ``I_0`` for first order; ``I_1 (1 - φ) + I_0²`` for the differenced second-order form.
    """
    phi, i0, i1, _ = first_order_terms(a, dt)
    if order == 1:
        return i0
    if order == 2:
        return i1 * (1 - phi) + i0**2
    raise MethodNotAvailableError(f"arimax handles orders 1 and 2, got {order}")


@dataclass
class ARXDesign:
    """Stacked ARX regression of all segments.

    Attributes
    ----------
    response : ndarray (N,)
        ``y_{k+1}`` (order 1) or ``D_{k+1}`` (order 2); with no state term, minus the lag.
    X : ndarray (N, K)
        ``[lagged response (if a state term), lags of every regressor]``.
    columns : list of (int, int)
        For each column of X after the lagged response: (regressor index, lag offset).
    rows : list of ndarray
        Per segment, the sample position (within the segment) of each row's response.
    seg_of_row : ndarray (N,)
    """

    response: FloatArray
    X: FloatArray
    columns: list[tuple[int, int]]
    has_state: bool
    rows: list[np.ndarray]
    seg_of_row: np.ndarray
    dt: float
    order: int
    const: set[int] = field(default_factory=set)


def arx_design(
    segments: Sequence[tuple[FloatArray, FloatArray, FloatArray]],
    *,
    order: int = 1,
    has_state: bool = True,
    hold: str | Sequence[str] = "linear",
) -> ARXDesign:
    """Build the exact ARX regression on a regular grid (see the module docstring).

    Parameters
    ----------
    segments : sequence of (t, y, w)
        Per segment: times (regular, the same step in every segment), observations, regressors
        (n, m) at the sample times.
    order : {1, 2}
        Left-hand derivative order.
    has_state : bool
        Whether the state term (``x`` for order 1, ``d(x)`` for order 2) is on the right; without
        it ``φ = 1`` is known and the lagged response is moved to the left.
    hold : str or one per regressor
    """
    if order not in (1, 2):
        raise MethodNotAvailableError(
            f"method='arimax' handles first- and second-order relations, got order {order}; "
            "use method='statespace'"
        )
    steps = []
    for t, _, _ in segments:
        if not is_regular(t):
            d = np.diff(t)
            raise IrregularSamplingError(
                f"method='arimax' needs a regular time grid (the spacing varies from "
                f"{d.min():.6g} to {d.max():.6g}); method='statespace' discretises exactly "
                "between every pair of sample times and handles irregular sampling"
            )
        steps.append(float(np.mean(np.diff(t))))
    dt = float(np.median(steps))
    if not np.allclose(steps, dt, rtol=1e-6):
        raise IrregularSamplingError(
            "method='arimax' needs the same sampling step in every segment (got "
            f"{min(steps):.6g} to {max(steps):.6g}); use method='statespace'"
        )
    m = segments[0][2].shape[1]
    linear = hold_mask(hold, m)
    # lag offsets relative to the row's "k" (response at k+1)
    # a regressor constant within every segment (the intercept) has all its lags equal: one
    # column carries their sum
    const = {j for j in range(m) if all(np.ptp(w[:, j]) == 0 for _, _, w in segments)}
    offsets: list[tuple[int, int]] = []
    for j in range(m):
        lags = [0, 1] if linear[j] else [0]
        if order == 2:
            lags = [-1, *lags]
        if j in const:
            lags = [0]
        offsets += [(j, o) for o in lags]
    resp, Xs, rows, segs = [], [], [], []
    for s_i, (t, y, w) in enumerate(segments):
        n = len(t)
        if order == 1:
            ks = np.arange(0, n - 1)
            z = np.asarray(y, float)
            r = z[ks + 1]
            lag = z[ks]
        else:
            ks = np.arange(1, n - 1)
            D = np.diff(np.asarray(y, float))  # D[k-1] = y_k - y_{k-1}
            r = D[ks]  # D_{k+1}
            lag = D[ks - 1]  # D_k
        if len(ks) < 1:
            continue
        cols = [w[ks + o, j] for j, o in offsets]
        X = np.column_stack(cols) if cols else np.empty((len(ks), 0))
        if has_state:
            X = np.column_stack([lag, X])
        else:
            r = r - lag
        resp.append(r)
        Xs.append(X)
        rows.append(ks + 1)
        segs.append(np.full(len(ks), s_i))
    if not resp:
        raise TooFewPointsError("too few samples for the ARX regression")
    return ARXDesign(
        np.concatenate(resp),
        np.vstack(Xs),
        offsets,
        has_state,
        rows,
        np.concatenate(segs),
        dt,
        order,
        const,
    )


@dataclass
class ARXFit:
    """Continuous-time coefficients from the ARX/ARMAX fit.

    Attributes
    ----------
    theta : ndarray
        ``[a (if a state term), θ_1..θ_m]``.
    cov_theta : ndarray
        Delta-method covariance.
    disc_params, disc_cov : ndarray
        The discrete-time estimates ``[φ, β...]`` (and MA terms, σ² for ML) and covariance.
    phi_interval : (float, float) or None
        ``(lower, upper)`` of ``a`` transformed from the 95% interval of ``φ``.
    resid, fitted : ndarray
        One-step residuals/predictions of the response per row.
    """

    theta: FloatArray
    cov_theta: FloatArray
    disc_params: FloatArray
    disc_cov: FloatArray
    estimator: str
    ma_order: int
    resid: FloatArray
    fitted: FloatArray
    sigma2: float
    df_resid: float
    phi_interval: tuple[float, float] | None = None
    info: dict[str, object] = field(default_factory=dict)


def _map_to_continuous(disc: FloatArray, design: ARXDesign, m: int) -> tuple[FloatArray, list[int]]:
    """``[a, θ]`` from ``[φ, β]`` (or ``θ`` from ``β`` with ``a = 0`` known)."""
    dt, order = design.dt, design.order
    if design.has_state:
        phi = disc[0]
        a = np.log(phi) / dt if phi > 0 else np.nan
        betas = disc[1:]
    else:
        a = 0.0
        betas = disc
    S = float(lag_sum_scale(a, dt, order))
    theta = np.zeros(m)
    for (j, _), b in zip(design.columns, betas, strict=True):
        theta[j] += b
    theta = theta / S
    return (np.concatenate([[a], theta]) if design.has_state else theta), []


def _delta(design: ARXDesign, disc: FloatArray, cov: FloatArray, m: int):
    def g(p: FloatArray) -> FloatArray:
        return _map_to_continuous(p, design, m)[0]

    theta = g(disc)
    k = len(disc)
    J = np.empty((len(theta), k))
    for i in range(k):
        h = 1e-6 * max(abs(disc[i]), 1e-3)
        e = np.zeros(k)
        e[i] = h
        J[:, i] = (g(disc + e) - g(disc - e)) / (2 * h)
    return theta, J @ cov @ J.T


def _phi_interval(design: ARXDesign, phi: float, se: float) -> tuple[float, float]:
    z = scipy.stats.norm.ppf(0.975)
    lo, hi = phi - z * se, phi + z * se
    f = lambda v: np.log(v) / design.dt if v > 0 else -np.inf  # noqa: E731
    return (f(lo), f(hi))


def fit_arx(
    segments: Sequence[tuple[FloatArray, FloatArray, FloatArray]],
    *,
    order: int = 1,
    has_state: bool = True,
    hold: str | Sequence[str] = "linear",
    noise: Noise = "process",
    estimator: Literal["auto", "ols", "nls", "ml"] = "auto",
) -> ARXFit:
    """Estimate the continuous-time coefficients through the exact discrete-time form.

    Parameters
    ----------
    segments : sequence of (t, y, w)
        See :func:`arx_design`.
    order, has_state, hold
        See :func:`arx_design`.
    noise : {"process", "measurement", "both"}
        The noise the data carry; decides the MA order ``q`` of the discrete errors (order 1:
        0 / 1 / 1; order 2: 1 / 2 / 2).
    estimator : {"auto", "ols", "nls", "ml"}
        ``"ols"``: unrestricted ARX by OLS (every lag of every regressor free), mapped back by the
        delta method. ``"nls"``: the same regression with the lag coefficients tied to ``a``
        (``β_{j,o} = θ_j c_o(a)``), profiled over ``a`` — the exact conditional maximum
        likelihood under process noise; identical to OLS for held inputs, and clearly more
        efficient for linear inputs (whose two lags are nearly collinear). ``"ml"``: the ARMAX
        by maximum likelihood. ``"auto"``: with white errors (first order, process noise) OLS
        for held inputs and NLS otherwise; ML when the errors are MA. ``"ols"``/``"nls"`` with
        coloured errors warn with :class:`BiasWarning`.

    Returns
    -------
    ARXFit
    """
    if noise not in ("process", "measurement", "both"):
        raise DataError(f"noise must be 'process', 'measurement' or 'both', got {noise!r}")
    if estimator not in ("auto", "ols", "nls", "ml"):
        raise DataError(f"estimator must be 'auto', 'ols', 'nls' or 'ml', got {estimator!r}")
    design = arx_design(segments, order=order, has_state=has_state, hold=hold)
    m = segments[0][2].shape[1]
    q = (0 if noise == "process" else 1) + (order - 1)
    linear = hold_mask(hold, m)
    if estimator == "auto":
        estimator = ("nls" if linear.any() or order == 2 else "ols") if q == 0 else "ml"
    if estimator in ("ols", "nls") and q > 0:
        why = "measurement noise" if noise != "process" else "integrated process noise"
        warnings.warn(
            f"the discrete errors of this model are MA({q}) ({why}); OLS on the ARX form is "
            "then inconsistent — use estimator='ml' (the default)",
            BiasWarning,
            stacklevel=2,
        )
    X, yv = design.X, design.response
    if X.shape[0] <= X.shape[1] + q + 1:
        raise TooFewPointsError(
            f"{X.shape[0]} rows for {X.shape[1]} ARX coefficients: too few samples"
        )
    rank = np.linalg.matrix_rank(X)
    if rank < X.shape[1]:
        raise IdentificationError(
            "the ARX regressors are collinear (a constant input together with the intercept, or "
            "an input that never changes); drop a term or add excitation"
        )
    disc, disc_cov, resid, fitted, s2, df = _ols(X, yv)
    info: dict[str, object] = {}
    k = X.shape[1]
    phi_int = None
    if has_state:
        if not disc[0] > 0:
            raise IdentificationError(
                f"the estimated φ = {disc[0]:.4g} is not positive: a = ln φ / Δ is undefined "
                "(sampling too slow for the dynamics, or the relation is wrong)"
            )
        phi_int = _phi_interval(design, float(disc[0]), float(np.sqrt(disc_cov[0, 0])))
    theta, cov = _delta(design, disc[:k], disc_cov[:k, :k], m)
    if estimator == "ml":
        theta, cov, resid, fitted, s2, df, info = _armax_ml(design, linear, q, theta, cov, noise)
        disc = np.concatenate([theta, info["ma"], [s2]])
        disc_cov = cov
        cov = cov[: len(theta), : len(theta)]
    if estimator == "nls":
        theta, cov, resid, fitted, s2, df = _nls(design, linear, theta, cov)
    if estimator in ("nls", "ml"):
        if has_state:
            phi = float(np.exp(theta[0] * design.dt))
            phi_int = _phi_interval(design, phi, phi * design.dt * float(np.sqrt(cov[0, 0])))
    return ARXFit(
        theta,
        cov,
        disc,
        disc_cov,
        estimator,
        q,
        resid,
        fitted,
        s2,
        df,
        phi_int,
        info,
    )


def lag_coefficients(a: float, dt: float, order: int, linear: np.ndarray) -> dict[int, FloatArray]:
    """Coefficient ``c_o(a)`` of ``w_{j,k+o}`` per unit ``θ_j``, for each lag offset ``o``.

    Order 1: ``c_0 = I_0 - I_1/Δ``, ``c_1 = I_1/Δ`` (linear) or ``c_0 = I_0`` (held). Order 2
    (differenced, ``z = (x, x')``, ``Γ`` from :func:`derivreg.discretize.discretize` per unit
    input on ``x'``): ``c_{-1} = I_0 Γ^0_v - φ Γ^0_x``, ``c_0 = I_0 Γ^1_v + Γ^0_x - φ Γ^1_x``,
    ``c_1 = Γ^1_x``.
    """
    from derivreg.discretize import discretize

    m = len(linear)
    hold = ["linear" if lin else "zoh" for lin in linear]
    if order == 1:
        d = discretize([[a]], np.ones((1, m)), None, dt, hold)
        return {0: d.gamma0[0, 0], 1: d.gamma1[0, 0]}
    A = np.array([[0.0, 1.0], [0.0, a]])
    B = np.zeros((2, m))
    B[1] = 1.0
    d = discretize(A, B, None, dt, hold)
    phi = float(np.exp(a * dt))
    i0 = d.phi[0, 0, 1]
    g0x, g0v = d.gamma0[0, 0], d.gamma0[0, 1]
    g1x, g1v = d.gamma1[0, 0], d.gamma1[0, 1]
    return {-1: i0 * g0v - phi * g0x, 0: i0 * g1v + g0x - phi * g1x, 1: g1x}


def _nls(design: ARXDesign, linear: np.ndarray, theta0: FloatArray, cov0: FloatArray):
    """Restricted ARX: profile the residual sum of squares over ``a`` (θ by OLS given ``a``)."""
    import scipy.optimize

    m = len(linear)
    y, lagged = design.response, design.X[:, 0] if design.has_state else None
    W = design.X[:, 1:] if design.has_state else design.X

    def regressors(a: float) -> FloatArray:
        c = lag_coefficients(a, design.dt, design.order, linear)
        total = c[-1] + c[0] + c[1] if design.order == 2 else c[0] + c[1]
        Z = np.zeros((len(y), m))
        for col, (j, o) in enumerate(design.columns):
            Z[:, j] += (total[j] if j in design.const else c[o][j]) * W[:, col]
        return Z

    def resid_of(p: FloatArray) -> FloatArray:
        a, th = (p[0], p[1:]) if design.has_state else (0.0, p)
        r = y - regressors(a) @ th
        if design.has_state:
            r = r - np.exp(a * design.dt) * lagged
        return r

    if design.has_state:

        def rss(a: float) -> float:
            Z = regressors(a)
            r0 = y - np.exp(a * design.dt) * lagged
            th, *_ = np.linalg.lstsq(Z, r0, rcond=None)
            e = r0 - Z @ th
            return float(e @ e)

        a0, se0 = float(theta0[0]), float(np.sqrt(max(cov0[0, 0], 1e-300)))
        width = 10 * se0 + 1e-6 * (1 + abs(a0))
        opt = scipy.optimize.minimize_scalar(
            rss, bounds=(a0 - width, a0 + width), method="bounded", options={"xatol": 1e-10}
        )
        a = float(opt.x)
        Z = regressors(a)
        th, *_ = np.linalg.lstsq(Z, y - np.exp(a * design.dt) * lagged, rcond=None)
        p = np.concatenate([[a], th])
    else:
        Z = regressors(0.0)
        th, *_ = np.linalg.lstsq(Z, y, rcond=None)
        p = th
    r = resid_of(p)
    k = len(p)
    J = np.empty((len(y), k))
    for i in range(k):
        h = 1e-6 * max(abs(p[i]), 1e-2)
        e = np.zeros(k)
        e[i] = h
        J[:, i] = -(resid_of(p + e) - resid_of(p - e)) / (2 * h)
    df = len(y) - k
    s2 = float(r @ r / df)
    cov = s2 * np.linalg.inv(J.T @ J)
    return p, cov, r, y - r, s2, float(df)


def _ols(X: FloatArray, y: FloatArray):
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    fitted = X @ beta
    resid = y - fitted
    df = X.shape[0] - X.shape[1]
    s2 = float(resid @ resid / df)
    XtX_inv = np.linalg.inv(X.T @ X)
    return beta, s2 * XtX_inv, resid, fitted, s2, float(df)


def _ma_bands(psi: FloatArray, seg: np.ndarray) -> FloatArray:
    """Lower band form of the MA(q) correlation matrix (unit innovation variance), block
    diagonal over segments: ``γ_j = Σ_i ψ_i ψ_{i+j}`` with ``ψ_0 = 1``."""
    q = len(psi)
    c = np.concatenate([[1.0], psi])
    n = len(seg)
    ab = np.zeros((q + 1, n))
    for j in range(q + 1):
        g = float(c[: q + 1 - j] @ c[j:])
        ab[j, : n - j] = g
        if j:
            ab[j, : n - j] *= seg[j:] == seg[: n - j]
    return ab


def _ma_whiten(psi: FloatArray, seg: np.ndarray, V: FloatArray) -> tuple[FloatArray, float]:
    """``L⁻¹ V`` and ``log|Ω|`` for the banded MA correlation ``Ω = L Lᵀ``."""
    import scipy.linalg

    q = len(psi)
    ab = _ma_bands(psi, seg)
    L = scipy.linalg.cholesky_banded(ab, lower=True, check_finite=False)
    # solve_banded wants (l, u) = (q, 0) in its own layout: row u + i - j holds L[i, j]
    W = scipy.linalg.solve_banded((q, 0), L, V, check_finite=False)
    return W, float(2 * np.sum(np.log(L[0])))


def _ma_loglike(
    beta: FloatArray, psi: FloatArray, s2: float, X: FloatArray, y: FloatArray, seg: np.ndarray
) -> float:
    if s2 <= 0:
        return -np.inf
    try:
        w, logdet = _ma_whiten(psi, seg, y - X @ beta)
    except np.linalg.LinAlgError:
        return -np.inf
    n = len(y)
    return float(-0.5 * (n * np.log(2 * np.pi * s2) + logdet + w @ w / s2))


def _psi_from(z: FloatArray) -> FloatArray:
    """Invertible MA coefficients from unconstrained ``z`` (partial-autocorrelation map)."""
    from statsmodels.tsa.statespace.tools import constrain_stationary_univariate

    return -constrain_stationary_univariate(np.asarray(z, float))


def _tied(design: ARXDesign, linear: np.ndarray):
    """``(r0(a), Z(a))``: response minus ``φ(a)`` times its lag, and the tied regressors."""
    m = len(linear)
    y = design.response
    lagged = design.X[:, 0] if design.has_state else None
    W = design.X[:, 1:] if design.has_state else design.X

    def parts(a: float) -> tuple[FloatArray, FloatArray]:
        c = lag_coefficients(a, design.dt, design.order, linear)
        total = c[-1] + c[0] + c[1] if design.order == 2 else c[0] + c[1]
        Z = np.zeros((len(y), m))
        for col, (j, o) in enumerate(design.columns):
            Z[:, j] += (total[j] if j in design.const else c[o][j]) * W[:, col]
        r0 = y - np.exp(a * design.dt) * lagged if design.has_state else y
        return r0, Z

    return parts


def _structural_psi(a: float, dt: float, s: float) -> float:
    """MA(1) coefficient of ``η_k + e_{k+1} - φ e_k`` (first order, process and measurement noise).

    Its lag-one autocorrelation ``-φτ²/(q + τ²(1 + φ²))`` (``q = Var η``) runs from ``0`` (no
    measurement noise) to ``-φ/(1 + φ²)`` (no process noise), so the invertible MA coefficient lies
    in ``[-min(φ, 1/φ), 0]``: ``ψ = -min(φ, 1/φ) s`` with ``s ∈ [0, 1]`` (``s = 1``: measurement
    noise only).
    """
    phi = float(np.exp(a * dt))
    return -min(phi, 1.0 / phi) * s


def _armax_ml(
    design: ARXDesign,
    linear: np.ndarray,
    q: int,
    theta0: FloatArray,
    cov0: FloatArray,
    noise: Noise = "both",
):
    """Exact Gaussian ML of the ARMAX with tied lags, conditional on the first lags.

    ``r0(a) = Z(a) θ + u``, ``u ~ MA(q)``: for given ``(a, ψ)``, ``θ`` and the innovation
    variance are concentrated out (GLS through a banded Cholesky factor of the MA correlation
    matrix, block diagonal over segments); ``(a, ψ)`` maximise the profile likelihood (ψ in an
    invertible parameterisation). Standard errors: inverse of the numerical Hessian of the full
    log-likelihood in ``(a, θ, ψ, σ²)`` (not block diagonal: the lagged output is correlated with
    past errors).

    First order with a state term: the MA coefficient is restricted to the values the noise model
    can produce, ``ψ = -min(φ, 1/φ) s`` (see :func:`_structural_psi`), with ``s = 1`` for
    ``noise="measurement"`` and ``s ∈ [0, 1]`` for ``noise="both"``. Left free, ``ψ`` piles up at
    the invertibility boundary ``-1`` in about one fit in ten under pure measurement noise
    (true ``ψ = -φ`` near ``-1``), where the information about ``θ`` is grossly overstated (the
    inverse MA filter integrates the regressors). When the maximum is on a boundary of ``s``
    (``0``: white errors; ``1``: measurement noise only) the information is that of the model with
    ``s`` fixed there.
    """
    import scipy.optimize
    from statsmodels.tools.numdiff import approx_hess3

    parts = _tied(design, linear)
    seg = design.seg_of_row
    n = len(design.response)
    has_a = design.has_state
    structural = has_a and design.order == 1 and q == 1
    dt = design.dt

    def psi_of(a: float, z: FloatArray, s_fixed: float | None) -> FloatArray:
        if not structural:
            return _psi_from(z)
        s = s_fixed if s_fixed is not None else float(scipy.special.expit(z[0]))
        return np.array([_structural_psi(a, dt, s)])

    def profile(v: FloatArray, s_fixed: float | None = None) -> tuple[float, FloatArray, float]:
        a = float(v[0]) if has_a else 0.0
        z = v[1:] if has_a else v
        psi = psi_of(a, z, s_fixed)
        r0, Z = parts(a)
        try:
            Wt, logdet = _ma_whiten(psi, seg, np.column_stack([r0, Z]))
        except (np.linalg.LinAlgError, ValueError):
            return -np.inf, np.zeros(Z.shape[1]), np.nan
        th, *_ = np.linalg.lstsq(Wt[:, 1:], Wt[:, 0], rcond=None)
        e = Wt[:, 0] - Wt[:, 1:] @ th
        s2 = float(e @ e / n)
        if not s2 > 0 or not np.isfinite(logdet):
            return -np.inf, th, np.nan
        return -0.5 * (n * np.log(2 * np.pi * s2) + logdet + n), th, s2

    a0 = [float(theta0[0])] if has_a else []
    s_fixed: float | None = None
    if structural and noise == "measurement":
        # ψ = -min(φ, 1/φ): a one-dimensional search over a
        s_fixed = 1.0
        se0 = float(np.sqrt(max(cov0[0, 0], 1e-300)))
        best = _search_a(lambda a: -profile(np.array([a]), 1.0)[0] / n, a0[0], se0)
        x_best = np.array([best])
    else:
        # the MA part first, at the starting a (one scalar search per MA coefficient), then all
        z0 = np.zeros(q)
        for i in range(q):

            def prof_i(zi: float, i: int = i) -> float:
                z = z0.copy()
                z[i] = zi
                return -profile(np.asarray([*a0, *z]))[0] / n

            z0[i] = scipy.optimize.minimize_scalar(prof_i, bounds=(-6.0, 6.0), method="bounded").x
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            opt = scipy.optimize.minimize(
                lambda v: -profile(v)[0] / n,
                np.asarray([*a0, *z0], float),
                method="Nelder-Mead",
                options={"xatol": 1e-7, "fatol": 1e-12, "maxiter": 4000},
            )
        x_best = np.asarray(opt.x, float)
        if structural:
            # the boundaries of s: the maximum over [0, 1] may sit on one (expit never reaches it)
            ll_best = profile(x_best)[0]
            se0 = float(np.sqrt(max(cov0[0, 0], 1e-300)))
            for s_b in (0.0, 1.0):
                a_b = _search_a(
                    lambda a, s_b=s_b: -profile(np.array([a]), s_b)[0] / n, float(x_best[0]), se0
                )
                ll_b = profile(np.array([a_b]), s_b)[0]
                if ll_b >= ll_best - 1e-9 * max(1.0, abs(ll_best)):
                    ll_best, x_best, s_fixed = ll_b, np.array([a_b]), s_b
    ll, th, s2 = profile(x_best, s_fixed)
    if not np.isfinite(ll):
        raise ConvergenceError("the ARMAX likelihood could not be evaluated")
    a = float(x_best[0]) if has_a else 0.0
    z = x_best[1:] if has_a else x_best
    psi = psi_of(a, z, s_fixed)
    if not structural and np.max(np.abs(z)) > 8:
        warnings.warn(
            "the MA part of the ARMAX is at the invertibility boundary (a near-unit MA root); "
            "its standard errors may be unreliable",
            ConvergenceWarning,
            stacklevel=3,
        )
    coef = np.concatenate([[a], th]) if has_a else th
    k = len(coef)
    # the Hessian in (a, θ, ψ, log σ²) — or (a, θ, log σ²) with ψ tied to a when s sits on a
    # boundary: σ² may be tiny in the data's units, and the θ block of the inverse does not
    # depend on how the nuisance parameters are parameterised
    free_psi = s_fixed is None
    full = np.concatenate([coef, psi if free_psi else [], [np.log(s2)]])
    q_free = q if free_psi else 0

    def ll_full(p: FloatArray) -> float:
        aa = float(p[0]) if has_a else 0.0
        tt = p[1:k] if has_a else p[:k]
        r0, Z = parts(aa)
        ps = p[k : k + q_free] if free_psi else psi_of(aa, np.zeros(0), s_fixed)
        return _ma_loglike(tt, ps, float(np.exp(p[k + q_free])), Z, r0, seg)

    steps = 1e-4 * np.maximum(np.abs(full), 1e-2 * (1.0 + np.max(np.abs(coef))))
    H = approx_hess3(full, ll_full, epsilon=steps)
    info_m = -0.5 * (H + H.T)
    try:
        cov = np.linalg.inv(info_m)
    except np.linalg.LinAlgError:
        raise IdentificationError(
            "the ARMAX information matrix is singular: the coefficients are not identified"
        ) from None
    if not np.all(np.isfinite(np.diag(cov))) or np.any(np.diag(cov)[:k] <= 0):
        raise IdentificationError(
            "the ARMAX information matrix is not positive definite: the coefficients are not "
            "identified (or the MA part is at the invertibility boundary)"
        )
    if not free_psi:
        # report the full layout (a, θ, ψ, log σ²) with ψ a function of a
        cov = np.insert(np.insert(cov, k, 0.0, axis=0), k, 0.0, axis=1)
    r0, Z = parts(a)
    resid = r0 - Z @ th
    fitted = design.response - resid
    info: dict[str, object] = {"ma": psi.tolist(), "loglike": float(ll)}
    if structural:
        info["ma boundary"] = (
            "none" if s_fixed is None else ("measurement noise only" if s_fixed else "white")
        )
    return coef, cov, resid, fitted, s2, float(n - len(full)), info


def _search_a(f, a0: float, se0: float) -> float:
    """Minimise a scalar function of ``a`` in a bracket of width ``±10 SE`` around ``a0``."""
    import scipy.optimize

    width = 10 * se0 + 1e-6 * (1 + abs(a0))
    opt = scipy.optimize.minimize_scalar(
        f, bounds=(a0 - width, a0 + width), method="bounded", options={"xatol": 1e-10}
    )
    return float(opt.x)


def _noise_split(fit: ARXFit, dt: float) -> tuple[float, float]:
    """``(σ², τ²)``: process-noise intensity and measurement-noise variance of a first-order fit.

    The discrete errors ``η_k + e_{k+1} - φ e_k`` have autocovariances ``γ_0 = q + τ²(1 + φ²)``
    and ``γ_1 = -φτ²`` (``q = σ² (φ² - 1)/(2a)``); the MA(1) fit gives ``γ_0 = s²(1 + ψ²)``,
    ``γ_1 = s²ψ``.
    """
    a = float(fit.theta[0])
    phi = float(np.exp(a * dt))
    per_unit = (phi**2 - 1) / (2 * a) if abs(a * dt) > 1e-12 else dt
    s2 = float(fit.sigma2)
    if fit.ma_order == 0:
        return s2 / per_unit, 0.0
    psi = float(fit.info["ma"][0])
    tau2 = max(-s2 * psi / phi, 0.0)
    q = max(s2 * (1 + psi**2) - tau2 * (1 + phi**2), 0.0)
    return q / per_unit, tau2


def _warn_small_sample(pred: Any) -> None:
    """BiasWarning when the Kendall-type diagnostic of :mod:`derivreg.models._smallsample` flags
    the fit (the same predictor and thresholds as ``method="statespace"``)."""
    if not pred.flag:
        return
    remedy = (
        "Refit with method='statespace', cov_type='bootstrap' (bias-corrected estimates and "
        "bootstrap standard errors) or use a longer record"
    )
    warnings.warn(pred.warning_text(remedy), BiasWarning, stacklevel=4)


class ARIMAX(Model):
    """Exact discretisation in ARX / ARIMAX form, mapped back to continuous time.

    Model (first order, see the module docstring for the second-order differenced form):
    ``x_{k+1} = e^{aΔ} x_k + Σ_j θ_j [w_{j,k} I_0 + (w_{j,k+1} - w_{j,k}) I_1/Δ] + η_k``,
    observed as ``y_k = x_k + e_k``.

    Options
    -------
    noise : {"both", "process", "measurement"}
        The noise the data carry (default ``"both"``). ``"process"``: white discrete errors
        (first order), estimated by least squares — OLS for held inputs, least squares with the
        lag coefficients tied to ``a`` for linear ones; ``"measurement"``/``"both"``: MA errors,
        ARMAX by exact Gaussian maximum likelihood.
    estimator : {"auto", "ols", "nls", "ml"}
        Override the estimator chosen from ``noise`` (see :func:`fit_arx`).

    Covariance: ``"nonrobust"`` — from the OLS/least-squares fit (mapped to ``(a, θ)`` by the
    delta method) or the inverse observed information of the ARMAX likelihood.
    ``results.info["a interval (phi scale)"]`` holds the 95% interval of ``a`` transformed from
    the interval of ``φ``. Measured (``tests/test_models_arimax.py``, slow tests: R = 500,
    n = 200, |a|Δ = 0.5, |a|T = 100, switching/held and multisine/linear inputs): coverage of
    a and b 0.932-0.972 in all three regimes (process: OLS / tied least squares; measurement and
    both: ARMAX ML), |bias| <= 0.20 SD (the largest, -0.20 SD for a under process noise, is the
    O(1/T) small-sample bias of autoregressive estimates; it grows on shorter records). Pure
    measurement noise with a slow sampling of the dynamics (``φ`` near 1, recovery-grid cells 2,
    13, 20, 26 of ``benchmarks/recovery.py``, R = 300): coverage 0.927-0.960, |bias| <= 0.10 SD,
    SE/SD 0.85-1.05 — the MA coefficient is restricted to the range the noise model allows
    (:func:`_armax_ml`); left free it piled up at ``-1`` and the coverage was 0.80-0.90.
    Under process noise on records of tens of time constants the estimate of ``a`` has the
    Kendall-type small-sample bias of every autoregression (shared by the exact state-space MLE:
    0.4-0.7 SD in several grid cells): first-order fits run the predictor of
    :mod:`derivreg.models._smallsample` (``results.info["small-sample bias"]``) and warn with
    :class:`BiasWarning` when it flags the fit, pointing to ``method="statespace",
    cov_type="bootstrap"``.

    Terms: first order ``d(x) ~ x + inputs``; second order ``d(x, 2) ~ d(x) + inputs`` (plus
    functions of ``d(x)`` alone such as ``sign(d(x))``, evaluated on the interval difference
    quotient ``(x_{k+1} - x_k)/Δ``, held). Anything else (``x`` in a second-order relation,
    ``x:y``) raises :class:`MethodNotAvailableError`; use ``method="statespace"``.
    """

    method: ClassVar[str] = "arimax"
    noise_model: ClassVar[str] = "exact discretisation; discrete errors white (process) or MA"
    cov_types: ClassVar[tuple[str, ...]] = ("nonrobust",)
    default_cov_type: ClassVar[str] = "nonrobust"
    option_defaults: ClassVar[dict[str, Any]] = {"noise": "both", "estimator": "auto"}
    supports_systems: ClassVar[bool] = False
    supports_nonlinear: ClassVar[bool] = True
    requires_regular: ClassVar[bool] = False  # checked with a pointer to statespace

    def min_points(self) -> int:
        return 5

    def _check_hold(
        self, rel: Any, fit: ARXFit, segs: list, design: ARXDesign, extra: dict[str, Any]
    ) -> float:
        """The input-timing check of :func:`~derivreg.diagnostics.input_hold_check` on the
        one-step innovations: the residuals, whitened through the MA(q) factor when there is
        one, over the innovation SD; each row's input change is over its own interval.

        Measured on the case of the state-space check (a square wave held between samples
        fitted as ``input_hold="linear"``: ``a`` +1.5 for a true -4.9): chi2(1) = 53.
        """
        cols = rel.input_columns
        if not cols or not (fit.sigma2 > 0):
            return float("nan")
        e = np.asarray(fit.resid, dtype=float)
        if fit.ma_order and "ma" in fit.info:
            e = _ma_whiten(np.asarray(fit.info["ma"], float), design.seg_of_row, e)[0]
        e = e / np.sqrt(fit.sigma2)
        es, us, start = [], [], 0
        for (_, _, W), rows in zip(segs, design.rows, strict=True):
            # prepend the sample before the first row: its change is the first row's interval
            es.append(np.concatenate([[np.nan], e[start : start + len(rows)]]))
            us.append(W[np.concatenate([[rows[0] - 1], rows])][:, cols])
            start += len(rows)
        return self.report_input_timing(*input_hold_check(es, us), extra)

    def _bias_prediction(self, rel: Any, fit: ARXFit, segs: list, cov: FloatArray) -> Any:
        """Kendall-type small-sample bias predictor for ``d(x) ~ x + ...`` (first order)."""
        from derivreg.models._smallsample import predict_bias

        if rel.order != 1 or list(rel.state_orders) != [0] or fit.ma_order > 1:
            return None
        if fit.ma_order and "ma" not in fit.info:
            return None  # least squares on MA errors: already warned as inconsistent
        dt = float(np.median(np.concatenate([np.diff(t) for t, _, _ in segs])))
        sigma2, tau2 = _noise_split(fit, dt)
        names = list(self.spec.param_names)
        return predict_bias(
            float(fit.theta[0]),
            sigma2,
            tau2,
            dt,
            cov,
            names,
            int(rel.state_pos[0]),
            [y for _, y, _ in segs],
            [w for _, _, w in segs],
            [float(t[-1] - t[0]) for t, _, _ in segs],
        )

    def _fit(self, cov_type: str, **kwargs: Any) -> DiffRegResults:
        from derivreg.models.statespace import linear_relation

        if kwargs:
            raise DataError(f"unknown fit option(s) {sorted(kwargs)} for ARIMAX")
        rel = linear_relation(self)
        p = rel.order
        if p not in (1, 2) or not set(rel.state_orders) <= {p - 1}:
            raise MethodNotAvailableError(
                "method='arimax' handles d(x) ~ x + inputs and d(x, 2) ~ d(x) + inputs (the "
                f"differenced ARIMAX form); {self.spec.describe()!r} needs method='statespace'"
            )
        for term in rel.exog_terms:
            if term.kind == "nonlinear" and set(term.variables) != {(rel.response, 1)}:
                raise MethodNotAvailableError(
                    f"term {term.name!r} is nonlinear in the state: the ARX form is only exact "
                    "for functions of d(x) alone (evaluated on difference quotients); use "
                    "method='statespace'"
                )
        sd = self.data
        segs = []
        for _, pos, t in sd.iter_segments():
            cols = self.columns_dict(pos)
            y = cols[(rel.response, 0)]
            dq = np.diff(y) / np.diff(t)
            path = {(rel.response, 1): np.concatenate([dq, dq[-1:]])}
            segs.append((t, y, rel.exog_values(cols, len(pos), path)))
        fit = fit_arx(
            segs,
            order=p,
            has_state=bool(rel.state_orders),
            hold=rel.exog_hold,
            noise=self.options["noise"],
            estimator=self.options["estimator"],
        )
        perm_full = [*rel.state_pos, *rel.exog_pos]
        perm = np.empty(len(perm_full), dtype=np.intp)
        for i, pos_ in enumerate(perm_full):
            perm[pos_] = i
        params = fit.theta[perm]
        cov = fit.cov_theta[np.ix_(perm, perm)]
        design = arx_design(segs, order=p, has_state=bool(rel.state_orders), hold=rel.exog_hold)
        resid = np.full(sd.nobs, np.nan)
        fitted = np.full(sd.nobs, np.nan)
        start = 0
        for pos, rows in zip(sd.segments, design.rows, strict=True):
            resid[pos[rows]] = fit.resid[start : start + len(rows)]
            fitted[pos[rows]] = fit.fitted[start : start + len(rows)]
            start += len(rows)
        pred = self._bias_prediction(rel, fit, segs, cov)
        extra: dict[str, Any] = {}
        if pred is not None and pred.bias_se:
            extra["Small-sample bias/SE (pred.)"] = pred.text()
            extra["Record span |a|T"] = float(pred.time_constants)
        hold_p = float("nan") if rel.nonlinear else self._check_hold(rel, fit, segs, design, extra)
        diag = self.diagnose(design.X, fit.resid, extra=extra)
        info: dict[str, Any] = {
            "noise": self.options["noise"],
            "estimator": fit.estimator,
            "discrete errors": "white" if fit.ma_order == 0 else f"MA({fit.ma_order})",
            "step": design.dt,
        }
        if np.isfinite(hold_p):
            info["input hold check p-value"] = hold_p
        if fit.phi_interval is not None:
            info["a interval (phi scale)"] = tuple(float(v) for v in fit.phi_interval)
        if "ma" in fit.info:
            info["MA coefficients"] = [round(float(v), 4) for v in fit.info["ma"]]
        if "ma boundary" in fit.info:
            info["MA boundary"] = fit.info["ma boundary"]
        if rel.nonlinear:
            info["nonlinear terms"] = (
                f"{', '.join(rel.nonlinear)} evaluated on (x[k+1] - x[k]) / Δ, held over each "
                "interval (the direction of motion over the interval)"
            )
        if pred is not None and pred.bias_se:
            info["small-sample bias"] = pred.as_info()
            _warn_small_sample(pred)
        return self.make_results(
            params,
            cov,
            cov_type=cov_type,
            nobs=len(fit.resid),
            resid=resid,
            fittedvalues=fitted,
            diagnostics=diag,
            info=info,
            df_resid=fit.df_resid,
        )
