"""Integrated form (integral matching): integrate the relation p times per segment, regress.

For ``x^(p)(t) = Σ_j θ_j g_j(t)``, integrating ``p`` times from the first sample ``t_0`` of a
segment (Cauchy's formula) gives

.. math:: x(t) = \\sum_{i<p} c_i \\frac{(t-t_0)^i}{i!} + \\sum_j \\theta_j (I^p g_j)(t),

with ``I^p`` the p-fold cumulative integral. A right-hand derivative of a state integrates to a
lower integral of the measured state, ``I^p x^{(k)} = I^{p-k} x`` minus a polynomial of degree
``< p`` that the initial-condition terms ``c_i`` absorb — so no numerical derivative is taken.
Inputs are integrated exactly under ``input_hold`` (held or piecewise linear between samples,
:func:`~derivreg.preprocess.integrated.integrate_input`); measured states by Simpson's rule
(``rule=``). Terms nonlinear in the state (``x:y``, ``sign(d(x))``) are evaluated on the measured
states and, for derivatives inside them, on a smoothed derivative estimate (``derivative=``), then
integrated. The ``c_i`` are nuisance parameters, one set per segment (``results.nuisance``).
``window=`` restarts the integrals every ``window`` time units (windowed variant: more nuisance
terms, errors that do not accumulate).

Error model and covariance
--------------------------
With measured states ``y_v = x_v + e_v`` (white, variance ``τ_v²``) and process noise ``σ dW`` on
``x^(p)``, the residual of the integrated equation is, to first order,

.. math:: r = \\sum_v A_v e_v + \\sigma\\, I^{p-1} W,\\qquad
          A_v = 1[v = x] I - \\sum_j \\theta_j \\, I^{p-k_j} \\text{ (or } I^p \\mathrm{diag}
          (\\partial g_j / \\partial v) \\text{ for a nonlinear term)},

so ``Ω = Σ_v τ_v² A_v A_vᵀ + σ² K`` with ``K`` the covariance of ``I^{p-1}W``. ``τ_v²`` is
estimated from the data by a median (MAD) version of the Gasser–Sroka–Jennen-Steinmetz
difference estimator, ``σ²`` by
moments from the OLS residuals (``E r̂ᵀr̂ = tr(P⊥Ω)``). The default ``cov_type="GLS"`` is feasible
GLS with this ``Ω`` (two iterations); ``"sandwich"`` keeps the OLS estimate with covariance
``(XᵀX)⁻¹ XᵀΩX (XᵀX)⁻¹``; ``"nonrobust"`` and ``"HAC"`` are for contrast (OLS SEs are far too small:
the residuals are integrated noise). Measured coverage is recorded in
``tests/test_models_integral.py``.

Process noise
-------------
When the pretest attributes more than half the residual variance to process noise the fit warns
(:class:`~derivreg.exceptions.BiasWarning`) that the estimates are unreliable: the integrated
regressors carry the accumulated noise and the estimates shrink toward 0 as the record grows.
Measured on ``dx/dt = -x + u + 0.5``, ``σ = 0.5``, ``τ = 0.1``, 4000 samples over 400 time units,
30 replications: default ``a = -0.06`` (SD 0.05), ``cov_type="GLS"`` (whitening with the
random-walk covariance, i.e. differencing) ``-0.61``, ``window=2`` ``-0.61``, ``window=1`` with
GLS ``-0.62``; coverage 0 for all. GLS removes the random walk but not the correlation of the
trapezoid regressor ``(x_{k-1} + x_k)/2`` with the current increment, so none of them is made
the default: use ``method="statespace"``.

Computation: O(n) per block, no n×n matrix
------------------------------------------
The trapezoid operator ``J`` is a forward cumulative sum and ``Jᵀ`` a reverse one; a noise
operator ``N = J^m diag(d)`` is applied to the design in O(n k). The sandwich's ``XᵀΩX`` is
``Σ_v τ_v² G_vᵀG_v`` with ``G_v = A_vᵀX``; ``XᵀKX`` for ``K = Cov(I^{p-1}W)`` a sum over
intervals of quadratic forms in reverse cumulative sums; the traces ``tr N``, ``tr NNᵀ`` (errors-
in-variables correction, moment estimate of ``σ²``) are closed forms of the columns of ``J``,
``J²``; ``tr Ω²`` (scale of the process-noise pretest only) is exact up to
:data:`EXACT_TRACE_LIMIT` samples per block and a Hutch++ estimate above (36 fixed probes;
measured within 0.3%). ``cov_type="GLS"``: for a first-order relation ``D Ω Dᵀ`` (``D`` the first
difference) is banded, so GLS is a banded Cholesky solve; for higher orders it is dense and
refused (:class:`~derivreg.exceptions.MethodNotAvailableError`) above :data:`DENSE_GLS_LIMIT`
rows. Integrals of order >= 3 inside the noise operators and the process covariance of relations
of order >= 3 take O(n²) time (O(n) memory) and are refused above :data:`QUADRATIC_LIMIT` samples
per block. The results equal the former dense computation to 1e-8 (tested against a dense
reference). Each window (or segment) adds its initial-condition columns to one dense design, so
many windows cost O(n · columns²): n = 1e5 with ``window`` giving 500 windows takes ~70 s, and
designs above :data:`DESIGN_LIMIT` entries are refused.

Measured fit time, before (dense) → after, one core:

=====  ================================  ===========================================
n      first order, one segment          motor, four tests as segments (samples kept)
=====  ================================  ===========================================
1e3    0.6 s → 0.4 s                     1.6 s → 1.3 s (446)
1e4    113 s → 0.5 s                     2.7 s → 2.0 s (9 894)
1e5    needs 80 GB → 4.5 s               needs ~25 GB → 6.7 s (98 996)
=====  ================================  ===========================================

At n = 1e5 about 3 s of those are the Ljung–Box diagnostic (``derivreg.diagnostics``, O(n²)).
"""

from __future__ import annotations

import warnings
from math import factorial
from typing import Any, ClassVar, NamedTuple

import numpy as np
import pandas as pd

from derivreg._typing import FloatArray
from derivreg.covariance import system_cov
from derivreg.diagnostics import robust_noise_variance
from derivreg.exceptions import (
    BiasWarning,
    DataError,
    MethodNotAvailableError,
    TooFewPointsError,
)
from derivreg.formula import Equation, Term
from derivreg.models.base import Model, resolve_preprocessor
from derivreg.results import DiffRegResults

__all__ = ["IntegralOLS", "exact_state_integral", "exact_state_integral_rows"]


def _integrate(t: FloatArray, y: FloatArray, order: int, rule: str) -> FloatArray:
    from derivreg.preprocess.integrated import cumulative_integral

    return cumulative_integral(t, y, order, rule)  # type: ignore[arg-type]


def _integrate_input(t: FloatArray, u: FloatArray, order: int, hold: str) -> FloatArray:
    from derivreg.preprocess.integrated import integrate_input

    return integrate_input(t, u, order, hold)  # type: ignore[arg-type]


def _exp_moments(x: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """``(e^x - 1)/x``, ``(e^x - 1 - x)/x²`` and ``(e^x - 1 - x - x²/2)/x³`` (series near 0)."""
    x = np.asarray(x, dtype=float)
    small = np.abs(x) < 1e-3
    xs = np.where(small, 1.0, x)
    e1 = np.expm1(xs)
    m0 = np.where(small, 1 + x / 2 + x**2 / 6 + x**3 / 24, e1 / xs)
    m1 = np.where(small, 0.5 + x / 6 + x**2 / 24 + x**3 / 120, (e1 - xs) / xs**2)
    m2 = np.where(small, 1 / 6 + x / 24 + x**2 / 120 + x**3 / 720, (e1 - xs - xs**2 / 2) / xs**3)
    return m0, m1, m2


def exact_state_integral(
    t: FloatArray, y: FloatArray, a: float, g: FloatArray | None = None
) -> tuple[FloatArray, FloatArray | None]:
    r"""Cumulative integral of the state of ``x' = a x + v(t)`` from its samples, exact for ``a``.

    Over an interval of length ``h`` with ``v`` held (``v(s) = v_0``), ``x(s) = x_k e^{as} +
    v_0 (e^{as} - 1)/a``; eliminating ``v_0`` with ``x_{k+1}`` gives

    .. math:: \int_{t_k}^{t_{k+1}} x = w_0 x_k + w_1 x_{k+1},\quad w_1 = I_1/I_0,\;
              w_0 = I_0 - φ w_1,

    (``φ = e^{ah}``, ``I_0 = ∫_0^h e^{as} ds``, ``I_1 = ∫_0^h e^{as}(h - s) ds``), whatever
    ``v_0``: the trapezoid rule is the ``a = 0`` case (``w_0 = w_1 = h/2``), and its error per
    interval is ``-a h² (x_{k+1} - x_k)/12 + O(a² h³)`` — the same sign on every rising
    interval, so it accumulates. For a linear input piece ``v(s) = v_0 + v_1 s`` the integral gains
    ``v_1 G`` with ``G = K - I_1²/I_0``, ``K = ∫_0^h ∫_0^s e^{a(s-r)} r dr ds``: with
    ``v_1 = θ Δg_k / h`` for a regressor ``g`` of coefficient ``θ``, the relation's integrated
    form ``x - x_0 = a ∫x + θ ∫g + …`` holds exactly when ``g``'s integral gets
    ``a Σ_k G_k Δg_k / h_k`` added (returned as the second value, cumulative; ``None`` without
    ``g``).

    Parameters
    ----------
    t : array (n,)
        Sample times (any spacing).
    y : array (n,)
        Samples of the state.
    a : float
        The coefficient of the state.
    g : array (n,) or (n, m), optional
        Regressors interpolated linearly between samples.

    Returns
    -------
    (ndarray (n,), ndarray or None)
        The cumulative integral (0 at ``t[0]``) and the cumulative correction of ``g``'s integral.
    """
    h = np.diff(t)
    m0, m1, m2 = _exp_moments(a * h)
    i0, i1, kk = h * m0, h**2 * m1, h**3 * m2
    phi = np.exp(a * h)
    w1 = i1 / i0
    w0 = i0 - phi * w1
    out = np.zeros(len(t))
    out[1:] = np.cumsum(w0 * y[:-1] + w1 * y[1:])
    if g is None:
        return out, None
    gg = np.asarray(g, dtype=float)
    G = kk - i1**2 / i0
    step = _col(a * G / h, gg[1:]) * np.diff(gg, axis=0)
    corr = np.zeros_like(gg)
    corr[1:] = np.cumsum(step, axis=0)
    return out, corr


def exact_state_integral_rows(
    t: FloatArray, y: FloatArray, a: FloatArray, g: FloatArray | None = None
) -> tuple[FloatArray, FloatArray | None]:
    """:func:`exact_state_integral` for many series at once (rows), each with its own ``a``.

    Parameters
    ----------
    t, y : array (G, n)
        Sample times and state samples, one series per row.
    a : array (G,)
        The coefficient of the state of each series.
    g : array (G, n), optional
        One regressor per series, interpolated linearly between samples.

    Returns
    -------
    (ndarray (G, n), ndarray (G, n) or None)
        Cumulative integrals (0 in the first column) and the cumulative corrections of ``g``.
    """
    t = np.asarray(t, dtype=float)
    y = np.asarray(y, dtype=float)
    a = np.asarray(a, dtype=float)[:, None]
    h = np.diff(t, axis=1)
    m0, m1, m2 = _exp_moments(a * h)
    i0, i1 = h * m0, h**2 * m1
    w1 = i1 / i0
    w0 = i0 - np.exp(a * h) * w1
    out = np.zeros_like(y)
    out[:, 1:] = np.cumsum(w0 * y[:, :-1] + w1 * y[:, 1:], axis=1)
    if g is None:
        return out, None
    gg = np.asarray(g, dtype=float)
    G = h**3 * m2 - i1**2 / i0
    corr = np.zeros_like(gg)
    corr[:, 1:] = np.cumsum(a * G / h * np.diff(gg, axis=1), axis=1)
    return out, corr


#: Samples per integration block above which a quantity without an O(n) form (operators J^m
#: with m >= 3, the process covariance of a relation of order >= 3) is refused rather than
#: computed in O(n²) time.
QUADRATIC_LIMIT = 20_000
#: Entries of the design (samples x columns, initial-condition columns included) above which a
#: fit with many windows or segments is refused: n = 1e5 with 500 windows (5e7) takes ~70 s.
DESIGN_LIMIT = 50_000_000
#: Rows of Ω up to which ``cov_type="GLS"`` uses dense algebra where no banded form exists
#: (relations of order >= 2, integrals of order >= 2 inside the noise operators).
DENSE_GLS_LIMIT = 3_000
#: Samples per block up to which tr(Ω²) (scale of the process-noise pretest) is computed
#: exactly; above it a Hutch++ estimate with 3 x 12 fixed Rademacher probes is used.
EXACT_TRACE_LIMIT = 500
_PROBES = 12
_CHUNK = 256


def _col(v: FloatArray, like: FloatArray) -> FloatArray:
    """``v`` shaped to broadcast along the rows of ``like``."""
    return v.reshape((-1,) + (1,) * (like.ndim - 1))


def _revcumsum(Y: FloatArray) -> FloatArray:
    """``R_k = Σ_{i >= k} Y_i`` along the rows."""
    return np.cumsum(Y[::-1], axis=0)[::-1]


class _Grid:
    """The cumulative trapezoid operator ``J`` of one block's grid, applied in O(n).

    ``(J y)_i = Σ_{l=1}^{i} h_l (y_{l-1} + y_l) / 2`` (``h_l = t_l - t_{l-1}``): a forward
    cumulative sum. Its columns are ``J e_k = α_k e_k + β_k u_{k+1}`` with ``α_k = h_k/2``,
    ``β_k = (h_k + h_{k+1})/2`` (``h_0 = h_n = 0``) and ``u_l`` the step ``1[i >= l]``, so
    ``Jᵀ y`` is a reverse cumulative sum, and ``D J`` (``D`` the first difference with first row
    ``e_0``) is lower bidiagonal.
    """

    def __init__(self, t: FloatArray) -> None:
        self.t = t
        self.n = len(t)
        self.h = np.diff(t)
        self.alpha = np.concatenate([[0.0], self.h / 2])
        hh = np.concatenate([[0.0], self.h, [0.0]])
        self.beta = (hh[:-1] + hh[1:]) / 2
        self._gram: dict[tuple[int, int], FloatArray] = {}

    def J(self, Y: FloatArray, m: int = 1) -> FloatArray:
        """``J^m Y`` (rows = samples)."""
        Y = np.asarray(Y, dtype=float)
        for _ in range(m):
            out = np.zeros_like(Y)
            if self.n > 1:
                out[1:] = np.cumsum(_col(self.h / 2, Y[1:]) * (Y[:-1] + Y[1:]), axis=0)
            Y = out
        return Y

    def JT(self, Y: FloatArray, m: int = 1) -> FloatArray:
        """``(Jᵀ)^m Y``."""
        Y = np.asarray(Y, dtype=float)
        for _ in range(m):
            tail = np.zeros_like(Y)
            tail[:-1] = _revcumsum(Y)[1:]
            Y = _col(self.alpha, Y) * Y + _col(self.beta, Y) * tail
        return Y

    def diag(self, m: int) -> FloatArray:
        """Diagonal of ``J^m`` (lower triangular: ``α^m``)."""
        return self.alpha**m

    def colgram(self, ma: int, mb: int) -> FloatArray:
        """``g_k = <J^{ma} e_k, J^{mb} e_k>`` for every column ``k``.

        For ``ma, mb <= 2`` in closed form: ``J e_k = α e_k + β u_{k+1}`` and
        ``J² e_k = α² e_k + β (α + h_{k+1}/2) u_{k+1} + β ρ_{k+1}`` with the ramp
        ``ρ_l = (t_i - t_l) 1[i >= l]``, whose moments ``P_q(l) = Σ_{i>=l} (t_i - t_l)^q`` follow
        from reverse cumulative sums of positive terms. Higher powers column by column (O(n²)
        time, O(n) memory), refused above :data:`QUADRATIC_LIMIT` samples.
        """
        key = (min(ma, mb), max(ma, mb))
        if key in self._gram:
            return self._gram[key]
        n = self.n
        if key[1] <= 2:
            P0 = np.arange(n, -1, -1, dtype=float)  # P_q(l) for l = 0..n
            hn = np.concatenate([self.h, [0.0]])  # h_{l+1} for l = 0..n-1
            P1 = np.zeros(n + 1)
            P1[:-1] = _revcumsum(hn * P0[1:])
            P2 = np.zeros(n + 1)
            P2[:-1] = _revcumsum(2 * hn * P1[1:] + hn**2 * P0[1:])
            a, b = self.alpha, self.beta
            coef = {1: (a, b, np.zeros(n)), 2: (a**2, b * (a + hn / 2), b)}
            (x0, x1, x2), (y0, y1, y2) = coef[key[0]], coef[key[1]]
            g = x0 * y0 + x1 * y1 * P0[1:] + (x1 * y2 + x2 * y1) * P1[1:] + x2 * y2 * P2[1:]
        else:
            _refuse_quadratic(n, f"an operator J^{key[1]} (integral of order {key[1]})")
            g = np.zeros(n)
            for start in range(0, n, _CHUNK):
                idx = np.arange(start, min(start + _CHUNK, n))
                E = np.zeros((n, len(idx)))
                E[idx, np.arange(len(idx))] = 1.0
                g[idx] = np.sum(self.J(E, key[0]) * self.J(E, key[1]), axis=0)
        self._gram[key] = g
        return g

    # ---------------------------------------------------------------- process noise
    def process_gram(self, X: FloatArray, p: int) -> FloatArray:
        """``Xᵀ K X`` for ``K = Cov(I^{p-1} W)`` (Wiener process started at ``t_0``), O(n).

        Over each interval ``(t_{l-1}, t_l]`` the integrand of
        ``K_ij = ∫ (t_i - r)^{p-1} (t_j - r)^{p-1} / ((p-1)!)² dr`` is a polynomial in
        ``a_il = t_i - t_l`` and ``w = t_l - r``, so ``Xᵀ K X`` is a sum over intervals of small
        quadratic forms in ``R_l = Σ_{i>=l} x_i`` and ``G_l = Σ_{i>=l} x_i a_il`` (reverse
        cumulative sums). ``p = 1``: ``K = min(s_i, s_j)``; ``p = 2``: ``K = lo² hi/2 - lo³/6``
        (exact); ``p >= 3``: ``J^{p-1} min(s_i, s_j) J^{p-1 ᵀ}`` (trapezoid), as before.
        """
        X = np.asarray(X, dtype=float)
        if X.ndim == 1:
            X = X[:, None]
        if p >= 3:
            return self.process_gram(self.JT(X, p - 1), 1)
        R = _revcumsum(X)[1:]  # l = 1..n-1
        h = self.h[:, None]
        if p == 1:
            return (R * h).T @ R
        Rf = _revcumsum(X)
        G = np.zeros_like(X)
        G[:-1] = _revcumsum(h * Rf[1:])  # G_l = G_{l+1} + h_{l+1} R_{l+1}
        G = G[1:]
        cross = (G * h**2 / 2).T @ R
        return (G * h).T @ G + cross + cross.T + (R * h**3 / 3).T @ R

    def process_trace(self, p: int) -> float:
        """``tr K`` (see :meth:`process_gram`)."""
        s = self.t - self.t[0]
        if p == 1:
            return float(np.sum(s))
        if p == 2:
            return float(np.sum(s**3) / 3)
        _refuse_quadratic(self.n, f"the process-noise covariance of a relation of order {p}")
        n = self.n
        d = np.zeros(n)
        for start in range(1, n, _CHUNK):
            idx = np.arange(start, min(start + _CHUNK, n))
            U = (np.arange(n)[:, None] >= idx[None, :]).astype(float)
            d += np.sum(self.J(U, p - 1) ** 2 * self.h[idx - 1][None, :], axis=1)
        return float(np.sum(d))


def _refuse_quadratic(n: int, what: str) -> None:
    if n > QUADRATIC_LIMIT:
        raise MethodNotAvailableError(
            f"{what} has no O(n) form in the integral method; a block of {n} samples exceeds "
            f"the limit of {QUADRATIC_LIMIT} for the O(n²) computation. Split the data into "
            "segments, use window=, or method='statespace'"
        )


_Op = tuple[int, int, "FloatArray | None"]


class _Block(NamedTuple):
    """θ-independent pieces of one integration block (segment or window)."""

    seg: int
    n: int
    grid: _Grid
    ops: list[dict[str, list[_Op]]]
    tr_n: dict[tuple[int, str, int], float]
    tr_nn: dict[tuple[int, str, int, int], float]
    tr_k: list[float]


class IntegralOLS(Model):
    """Integral matching: regress the measured state on p-fold integrals of the regressors.

    Model (per segment or window starting at ``t_0``):
    ``y(t) = Σ_{i<p} c_i (t-t_0)^i/i! + Σ_j θ_j (I^p g_j)(t) + r(t)``,
    ``r`` integrated measurement and process noise (see the module docstring).

    Options
    -------
    rule : {"auto", "exact", "simpson", "trapezoid"}
        Quadrature for measured states (inputs are always integrated exactly). ``"exact"``:
        for a first-order relation linear in its own state with only inputs and an intercept
        besides (``d(x) ~ x + u + …``), the integral of the state that is exact under the input
        hold for the estimated ``a`` (:func:`exact_state_integral`; ``a`` iterated to a fixed
        point), so coarse grids (``|a|Δ`` up to 0.5 and beyond) and irregular grids carry no
        quadrature bias. ``"auto"`` (default): ``"exact"`` where it applies, otherwise Simpson's
        rule on regular grids and the trapezoid rule on irregular ones (Simpson's weights on
        very unequal neighbouring gaps amplify the measurement noise far beyond what ``Ω``
        describes). Measured (``benchmarks/recovery.py`` cells, R = 200): ``|a|Δ = 0.5``,
        ``a = -0.2``, tiny measurement noise: bias of ``b`` +3.5 SD, coverage 0.43 with Simpson
        → within 0.2 SD, coverage 0.93-0.96 with the exact integral; exponential gaps (mean
        ``Δ``, ``|a|Δ = 0.1``): bias 1.2 SD, coverage 0.41-0.49 → see the tests.
    window : float or None
        Restart the integrals every ``window`` time units (each window gets its own
        initial-condition terms).
    derivative : str or Preprocessor
        Estimator of derivatives used inside nonlinear terms (``sign(d(x))``); default ``"auto"``.
    derivative_options : dict
        Options of that estimator.
    noise : {"auto", "measurement", "process"}
        Error components in ``Ω``: both (default; process noise kept only when the residuals
        exceed the measurement part by 3 null SDs), measurement only, process only.
    eiv_correction : bool
        Correct the least-squares estimate for the measurement noise inside the integrated
        states (default True; measured on the motor: bias 0.47 SD -> 0.15 SD).

    Covariance types: ``"sandwich"`` (default), ``"GLS"``, ``"nonrobust"``, ``"HAC"``.
    Measured coverage of the default (95% intervals):

    * first order, measurement noise τ = 0.05, n = 300: 0.93 / 0.96 / 0.96 (Intercept, a, b),
      |bias| <= 0.1 SD (300 replications);
    * motor, position only, τ = 0.002, Δ = 0.02, four tests as segments: 0.98 / 0.98 / 0.97,
      |bias| <= 0.06 SD (100 replications);
    * process noise σ = 0.3 (τ = 0.05): about 0.90, a biased by 0.3 SD — the fit warns; over
      long records the estimates collapse toward 0 (module docstring, "Process noise").

    ``"GLS"`` covered the first-order case (0.94 / 0.97 / 0.96) but on the motor amplified small
    model errors (sign of the velocity at segment starts, quadrature) to 5-8 SE biases, so it is
    not the default.
    """

    method: ClassVar[str] = "integral"
    noise_model: ClassVar[str] = (
        "white measurement noise (variance from the data) + process noise (moment estimate)"
    )
    cov_types: ClassVar[tuple[str, ...]] = ("GLS", "sandwich", "nonrobust", "HAC")
    default_cov_type: ClassVar[str] = "sandwich"
    option_defaults: ClassVar[dict[str, Any]] = {
        "rule": "auto",
        "window": None,
        "derivative": "auto",
        "derivative_options": None,
        "noise": "auto",
        "eiv_correction": True,
    }

    def min_points(self) -> int:
        return max(self.spec.states.values()) + 3

    # ------------------------------------------------------------------ blocks
    def _blocks(self) -> list[tuple[int, np.ndarray]]:
        """(segment number, positions) of each integration block (segments or windows)."""
        window = self.options["window"]
        out: list[tuple[int, np.ndarray]] = []
        p_max = max(self.spec.states.values())
        for i, pos in enumerate(self.data.segments):
            if window is None:
                out.append((i, pos))
                continue
            if not window > 0:
                raise DataError(f"window must be a positive length of time, got {window!r}")
            t = self.data.t[pos]
            edges = np.floor((t - t[0]) / float(window)).astype(int)
            for w in np.unique(edges):
                sub = pos[edges == w]
                if len(sub) >= p_max + 3:
                    out.append((i, sub))
            if not out or out[-1][0] != i:
                raise TooFewPointsError(
                    f"window={window} leaves fewer than {p_max + 3} samples per window"
                )
        return out

    # ------------------------------------------------------------------ values
    def _values(self) -> dict[tuple[str, int], FloatArray]:
        values = self.columns_dict()
        # derivatives inside any term: nonlinear terms need them for the fit, the others only
        # for the steady-state diagnostic (the right side evaluated on smoothed derivatives)
        need = {
            (v, k) for eq in self.spec.equations for t in eq.terms for v, k in t.variables if k >= 1
        }
        if need:
            pre, self.derivative_note_ = resolve_preprocessor(
                self.options["derivative"], self.options.get("derivative_options")
            )
            sd = self.data
            cols = sorted({v for v, _ in need})
            codes = np.empty(sd.nobs, dtype=np.intp)
            for i, pos in enumerate(sd.segments):
                codes[pos] = i
            X = np.column_stack([sd.column(c) for c in cols])
            pre.fit(X, columns=cols, time=sd.t, segment=codes if len(sd.segments) > 1 else None)
            for order in sorted({k for _, k in need}):
                est, _ = pre.derivative_arrays(order)
                for v, k in need:
                    if k == order:
                        col = est[:, cols.index(v)]
                        if np.isnan(col).any():
                            col = pd.Series(col).interpolate(limit_direction="both").to_numpy()
                        if k == 1:
                            col = self._repair_signs(v, col)
                        values[(v, k)] = col
        return values

    def _repair_signs(self, v: str, est: FloatArray) -> FloatArray:
        """Fix the sign of a smoothed velocity where the data's displacement contradicts it.

        Smoothers misjudge the direction of motion near segment edges (e.g. a start from rest,
        where the spline's boundary behaviour gives a velocity of the wrong sign). For each sample
        the secant ``(x_{k+j} - x_{k-j}) / (t_{k+j} - t_{k-j})`` over the shortest span whose
        displacement exceeds ``4·√2`` measurement-noise SDs has a reliable sign; where it
        disagrees with the smoother, the secant replaces the estimate. Only terms that use the
        derivative inside a nonlinear function (``sign(d(x))``) see this.
        """
        out = est.copy()
        x_all = self.column(v)
        for pos in self.data.segments:
            t = self.data.t[pos]
            x = x_all[pos]
            n = len(x)
            if n < 3:
                continue
            thr = 4.0 * np.sqrt(2.0 * robust_noise_variance(t, x))
            slope = np.full(n, np.nan)
            idx = np.arange(n)  # samples still without a reliable secant
            for j in range(1, max(n // 4, 2)):
                hi = np.minimum(idx + j, n - 1)
                lo = np.maximum(idx - j, 0)
                dx = x[hi] - x[lo]
                hit = np.abs(dx) > thr
                slope[idx[hit]] = dx[hit] / (t[hi[hit]] - t[lo[hit]])
                idx = idx[~hit]
                if not idx.size:
                    break
            e = out[pos]
            flip = np.isfinite(slope) & (np.sign(e) != np.sign(slope))
            e[flip] = slope[flip]
            out[pos] = e
        return out

    def _exact_eligible(self, eq: Equation) -> bool:
        """Whether the exact state integral applies: ``d(x) ~ x + inputs (+ intercept)``."""
        if eq.order != 1:
            return False
        own = [
            tm for tm in eq.terms if tm.kind == "state" and tm.var == eq.response and tm.order == 0
        ]
        others_ok = all(
            tm.kind == "intercept" or (tm.kind == "exogenous" and tm.order in (None, 0))
            for tm in eq.terms
            if tm not in own
        )
        return len(own) == 1 and others_ok

    def _rule(self, eq: Equation) -> str:
        """Quadrature of the measured states of ``eq`` (option ``rule``, ``"auto"`` resolved)."""
        rule = self.options["rule"]
        if rule in ("auto", "exact") and self._exact_eligible(eq):
            return "exact"
        if rule == "exact":
            raise MethodNotAvailableError(
                f"rule='exact' applies to first-order relations linear in their own state with "
                f"only inputs and an intercept besides (d(x) ~ x + u); {eq.formula!r} is not one. "
                "Use rule='simpson' or 'trapezoid'"
            )
        if rule == "auto":
            regular = True
            for pos in self.data.segments:
                h = np.diff(self.data.t[pos])
                if h.size and float(np.ptp(h)) > 1e-6 * float(np.max(h)):
                    regular = False
            return "simpson" if regular else "trapezoid"
        return str(rule)

    def _term_column(
        self,
        eq: Equation,
        term: Term,
        t: FloatArray,
        pos: np.ndarray,
        values: dict,
        exact_a: float | None = None,
    ) -> FloatArray:
        p = eq.order
        rule = self._rule(eq)
        if rule == "exact" and exact_a is None:
            rule = "trapezoid"  # the start of the fixed-point iteration (a = 0)
        if term.kind == "intercept":
            return (t - t[0]) ** p / factorial(p)
        if term.var is not None and term.order is not None:
            k = term.order
            if k > p:
                raise MethodNotAvailableError(
                    f"{term.name} on the right of {eq.formula!r}: the integral form integrates "
                    f"{p} times and cannot remove a derivative of order {k}; use "
                    "method='gradient'"
                )
            y = values[(term.var, 0)][pos]
            if term.kind == "state":
                if rule == "exact":
                    return exact_state_integral(t, y, float(exact_a))[0]  # type: ignore[arg-type]
                return _integrate(t, y, p - k, rule)
            col = _integrate_input(t, y, p - k, self.input_hold)
            if rule == "exact" and self.input_hold == "linear":
                col = col + exact_state_integral(t, y, float(exact_a), y)[1]  # type: ignore[arg-type,operator]
            return col
        g = np.broadcast_to(term.evaluate(values, self.data.nobs), (self.data.nobs,))[pos]
        if term.kind == "exogenous":
            col = _integrate_input(t, g, p, self.input_hold)
            if rule == "exact" and self.input_hold == "linear":
                col = col + exact_state_integral(t, g, float(exact_a), g)[1]  # type: ignore[arg-type,operator]
            return col
        rough = any(k >= 1 for _, k in term.variables)
        return _integrate(t, g, p, "trapezoid" if rough or rule == "exact" else rule)

    # ------------------------------------------------------------------ fit
    def _fit(self, cov_type: str, **kwargs: Any) -> DiffRegResults:
        if kwargs:
            raise DataError(f"unknown fit option(s) {sorted(kwargs)} for IntegralOLS")
        if self.options["rule"] not in ("auto", "exact", "simpson", "trapezoid"):
            raise DataError(
                "rule must be 'auto', 'exact', 'simpson' or 'trapezoid', got "
                f"{self.options['rule']!r}"
            )
        if self.options["noise"] not in ("auto", "measurement", "process"):
            raise DataError(
                f"noise must be 'auto', 'measurement' or 'process', got {self.options['noise']!r}"
            )
        blocks = self._blocks()
        values = self._values()
        eqs = self.spec.equations
        rows = np.concatenate([pos for _, pos in blocks])
        nb = len(blocks)
        width = sum(len(eq.terms) + eq.order * nb for eq in eqs)
        if len(rows) * width > DESIGN_LIMIT:
            raise MethodNotAvailableError(
                f"{nb} integration blocks ({'windows' if self.options['window'] else 'segments'}"
                f") over {len(rows)} samples: the integral method carries each block's "
                f"initial-condition terms as design columns, a dense {len(rows)}x{width} design "
                f"(limit {DESIGN_LIMIT:.0e} entries; time grows as n x columns²). Use a longer "
                "window, fewer segments, or fit independent series with dr.fit_many"
            )
        exact = [self._rule(eq) == "exact" for eq in eqs]
        X_eq, y_eq, names_eq = self._design(blocks, values, rows, [None] * len(eqs))
        betas = [np.linalg.lstsq(X, y, rcond=None)[0] for X, y in zip(X_eq, y_eq, strict=True)]
        a_used: list[float | None] = [None] * len(eqs)
        if any(exact):
            # the exact state integral depends on a: fixed point of the least-squares fit
            for _ in range(30):
                a_new = [
                    self._own_coef(eq, b) if ex else None
                    for eq, b, ex in zip(eqs, betas, exact, strict=True)
                ]
                moved = any(
                    an is not None and (ao is None or abs(an - ao) > 1e-10 * (1 + abs(an)))
                    for an, ao in zip(a_new, a_used, strict=True)
                )
                if not moved:
                    break
                a_used = a_new
                X_eq, y_eq, names_eq = self._design(blocks, values, rows, a_used)
                betas = [
                    np.linalg.lstsq(X, y, rcond=None)[0] for X, y in zip(X_eq, y_eq, strict=True)
                ]
        self._tau2_model = (
            self._model_noise_variances(blocks, X_eq, y_eq, betas, a_used) if any(exact) else {}
        )
        details: dict[str, Any] = {}
        if cov_type in ("nonrobust", "HAC"):
            resid_b = [y - X @ b for X, y, b in zip(X_eq, y_eq, betas, strict=True)]
            bounds = np.cumsum([0, *[len(pos) for _, pos in blocks]])
            segs = [np.arange(bounds[i], bounds[i + 1]) for i in range(nb)]
            cov, details = system_cov(X_eq, resid_b, cov_type, segments=segs)
        else:
            ols = betas
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                betas, cov, details = self._gls(cov_type, blocks, values, X_eq, y_eq, ols)
            if any(exact):
                # the corrected/GLS estimate of a moved from the least-squares one: one more pass
                # with the state integral at the final a (its weights change by O(Δa h²))
                a_fin = [
                    self._own_coef(eq, b) if ex else None
                    for eq, b, ex in zip(eqs, betas, exact, strict=True)
                ]
                if any(
                    af is not None and au is not None and abs(af - au) > 1e-8 * (1 + abs(af))
                    for af, au in zip(a_fin, a_used, strict=True)
                ):
                    X_eq, y_eq, names_eq = self._design(blocks, values, rows, a_fin)
                    ols = [
                        np.linalg.lstsq(X, y, rcond=None)[0]
                        for X, y in zip(X_eq, y_eq, strict=True)
                    ]
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        betas, cov, details = self._gls(cov_type, blocks, values, X_eq, y_eq, ols)
            for w in caught:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        for e, eq in enumerate(eqs):
            details[f"quadrature ({eq.response})"] = (
                f"exact, a={a_used[e]:.4g}" if exact[e] else self._rule(eq)
            )
        return self._assemble(
            cov_type, blocks, values, rows, X_eq, y_eq, names_eq, betas, cov, details
        )

    def _own_coef(self, eq: Equation, beta: FloatArray) -> float:
        """The coefficient of the response's own state in ``eq`` (``a`` of ``d(x) ~ x + …``)."""
        for j, tm in enumerate(eq.terms):
            if tm.kind == "state" and tm.var == eq.response and tm.order == 0:
                return float(beta[j])
        raise AssertionError("no own-state term")  # pragma: no cover

    def _design(
        self,
        blocks: list[tuple[int, np.ndarray]],
        values: dict,
        rows: np.ndarray,
        exact_a: list[float | None],
    ) -> tuple[list[FloatArray], list[FloatArray], list[list[str]]]:
        """Integrated design, response and column names of every equation."""
        sd = self.data
        nb = len(blocks)
        X_eq, y_eq, names_eq = [], [], []
        for e, eq in enumerate(self.spec.equations):
            p = eq.order
            k = len(eq.terms)
            X = np.zeros((len(rows), k + p * nb))
            start = 0
            for b, (_, pos) in enumerate(blocks):
                t = sd.t[pos]
                sl = slice(start, start + len(pos))
                for j, term in enumerate(eq.terms):
                    X[sl, j] = self._term_column(eq, term, t, pos, values, exact_a[e])
                for i in range(p):
                    X[sl, k + b * p + i] = (t - t[0]) ** i / factorial(i)
                start += len(pos)
            ic_names = [
                f"initial-condition term (t-t0)^{i} of "
                + (f"segment {sd.segment_labels[seg]!r}" if len(sd.segments) > 1 else "the data")
                + (f", window {b}" if self.options["window"] is not None else "")
                for b, (seg, _) in enumerate(blocks)
                for i in range(p)
            ]
            names = eq.term_names + ic_names
            self.check_design(X, names, allow_constant=tuple(ic_names))
            X_eq.append(X)
            y_eq.append(values[(eq.response, 0)][rows])
            names_eq.append(names)
        return X_eq, y_eq, names_eq

    def _assemble(
        self,
        cov_type: str,
        blocks: list[tuple[int, np.ndarray]],
        values: dict,
        rows: np.ndarray,
        X_eq: list[FloatArray],
        y_eq: list[FloatArray],
        names_eq: list[list[str]],
        betas: list[FloatArray],
        cov: FloatArray,
        details: dict[str, Any],
    ) -> DiffRegResults:
        sd = self.data
        eqs = self.spec.equations
        n = sd.nobs
        theta_idx, ic_idx = [], []
        off = 0
        for eq, X in zip(eqs, X_eq, strict=True):
            k = len(eq.terms)
            theta_idx += list(range(off, off + k))
            ic_idx.append(list(range(off + k, off + X.shape[1])))
            off += X.shape[1]
        beta_all = np.concatenate(betas)
        theta = beta_all[theta_idx]
        cov_theta = cov[np.ix_(theta_idx, theta_idx)]
        se_all = np.sqrt(np.clip(np.diag(cov), 0, None))
        nuis = []
        labels = sd.segment_labels
        for e, eq in enumerate(eqs):
            for b, (seg, pos) in enumerate(blocks):
                for i in range(eq.order):
                    j = ic_idx[e][b * eq.order + i]
                    nuis.append(
                        {
                            "equation": eq.name,
                            "segment": labels[seg],
                            "block": b,
                            "t0": float(sd.t[pos[0]]),
                            "term": f"(t-t0)^{i}/{i}!" if i else "1",
                            "estimate": float(beta_all[j]),
                            "se": float(se_all[j]),
                        }
                    )
        resid = np.full((n, len(eqs)), np.nan)
        fitted = np.full((n, len(eqs)), np.nan)
        for e, (X, y, b) in enumerate(zip(X_eq, y_eq, betas, strict=True)):
            fitted[rows, e] = X @ b
            resid[rows, e] = y - X @ b
        highest = np.full(n, np.nan)
        highest[rows] = np.asarray(eqs[0].rhs(theta[: len(eqs[0].terms)], values, n))[rows]
        extra = {k: v for k, v in details.items() if not isinstance(v, dict)}
        if getattr(self, "derivative_note_", None):
            extra["derivative (nonlinear terms)"] = self.derivative_note_
        diag = self.diagnose(X_eq, resid[rows, 0], highest=highest, extra=extra)
        ic = (
            None
            if self.options["window"] is not None
            else self._initial_conditions(theta, beta_all, ic_idx, blocks)
        )
        info = {k: v for k, v in details.items() if isinstance(v, (int, float, str))}
        if self.options["window"] is not None:
            info["window"] = self.options["window"]
        return self.make_results(
            theta,
            cov_theta,
            cov_type=cov_type,
            nobs=len(rows),
            resid=resid[:, 0] if len(eqs) == 1 else resid,
            fittedvalues=fitted[:, 0] if len(eqs) == 1 else fitted,
            resid_names=[eq.response for eq in eqs],
            nuisance=pd.DataFrame(nuis),
            initial_conditions=ic,
            diagnostics=diag,
            info=info,
        )

    # ------------------------------------------------------------------ covariance
    def _noise_variances(self) -> dict[tuple[str, int], float]:
        """Measurement-noise variance of every state, per segment (GSJS difference estimator)."""
        out: dict[tuple[str, int], float] = {}
        cap = getattr(self, "_tau2_model", {})
        for v in self.spec.states:
            y = self.column(v)
            for i, pos in enumerate(self.data.segments):
                out[(v, i)] = robust_noise_variance(self.data.t[pos], y[pos])
                if (v, i) in cap:
                    out[(v, i)] = min(out[(v, i)], cap[(v, i)])
        return out

    def _model_noise_variances(
        self,
        blocks: list[tuple[int, np.ndarray]],
        X_eq: list[FloatArray],
        y_eq: list[FloatArray],
        betas: list[FloatArray],
        exact_a: list[float | None],
    ) -> dict[tuple[str, int], float]:
        """Measurement-noise variance of the state of each exactly integrated equation.

        The difference estimator of :func:`~derivreg.diagnostics.robust_noise_variance` reads the
        curvature of the path between samples as noise: on coarse grids (``|a|Δ = 0.5``, a path
        relaxing over two samples) it overstated a noise SD of 0.057 as 0.62, and the
        errors-in-variables correction then biased ``b`` by +0.18 (3.5 SD). With the exact
        integral the first differences of the residual are ``(1 - a w_1) e_k - (1 + a w_0)
        e_{k-1}`` (plus process noise and lack of fit, which only add), so ``Σ (Δr)² / Σ [(1 - a
        w_1)² + (1 + a w_0)²]`` is a model-based value that does not see the curvature; the
        smaller of the two is used.
        """
        out: dict[tuple[str, int], float] = {}
        sd = self.data
        for e, eq in enumerate(self.spec.equations):
            a = exact_a[e]
            if a is None:
                continue
            resid = y_eq[e] - X_eq[e] @ betas[e]
            num: dict[int, float] = {}
            den: dict[int, float] = {}
            start = 0
            for seg, pos in blocks:
                r = resid[start : start + len(pos)]
                start += len(pos)
                if len(pos) < 3:
                    continue
                h = np.diff(sd.t[pos])
                m0, m1, _ = _exp_moments(a * h)
                i0, i1 = h * m0, h**2 * m1
                w1 = i1 / i0
                w0 = i0 - np.exp(a * h) * w1
                num[seg] = num.get(seg, 0.0) + float(np.sum(np.diff(r) ** 2))
                c = (1 - a * w1) ** 2 + (1 + a * w0) ** 2
                den[seg] = den.get(seg, 0.0) + float(np.sum(c))
            for seg, nu in num.items():
                out[(eq.response, seg)] = nu / den[seg]
        return out

    def _operators(self, eq: Equation, pos: np.ndarray, values: dict) -> dict[str, list[_Op]]:
        """Noise operators ``N_jv = J^m diag(d)``: term ``j``'s integrated response to noise in v.

        ``A_v = 1[v = response] I - Σ_j θ_j N_jv``; the ``N_jv`` do not depend on ``θ``. Each is
        kept as ``(j, m, d)`` (``d`` None for the identity) and applied in O(n).
        """
        out: dict[str, list[_Op]] = {}
        for v in self.spec.states:
            ops: list[_Op] = []
            for j, term in enumerate(eq.terms):
                if term.kind == "state" and term.var == v:
                    ops.append((j, eq.order - term.order, None))  # type: ignore[operator]
                elif term.kind == "nonlinear" and (v, 0) in term.variables:
                    base = values[(v, 0)]
                    h = 1e-6 * max(float(np.max(np.abs(base[pos]))), 1.0)
                    up = {**values, (v, 0): base + h}
                    dn = {**values, (v, 0): base - h}
                    n = self.data.nobs
                    dg = (term.evaluate(up, n) - term.evaluate(dn, n))[pos] / (2 * h)
                    if np.any(dg != 0):
                        ops.append((j, eq.order, np.asarray(dg, dtype=float)))
            if v == eq.response or ops:
                out[v] = ops
        return out

    def _prepare(self, seg: int, pos: np.ndarray, values: dict, mode: str) -> _Block:
        """θ-independent pieces of one block: grid, operators, their traces, tr K."""
        grid = _Grid(self.data.t[pos])
        ops = [self._operators(eq, pos, values) for eq in self.spec.equations]
        tr_n: dict[tuple[int, str, int], float] = {}
        tr_nn: dict[tuple[int, str, int, int], float] = {}
        for e, ops_e in enumerate(ops):
            for v, lst in ops_e.items():
                for a, ma, da in lst:
                    tr_n[(e, v, a)] = float(np.sum(grid.diag(ma) * (1.0 if da is None else da)))
                    for b, mb, db in lst:
                        w = grid.colgram(ma, mb)
                        if da is not None:
                            w = w * da
                        if db is not None:
                            w = w * db
                        tr_nn[(e, v, a, b)] = float(np.sum(w))
        tr_k = (
            [grid.process_trace(eq.order) for eq in self.spec.equations]
            if mode != "measurement"
            else []
        )
        return _Block(seg, len(pos), grid, ops, tr_n, tr_nn, tr_k)

    @staticmethod
    def _apply(
        blk: _Block,
        e: int,
        v: str,
        delta: float,
        theta: FloatArray,
        Y: FloatArray,
        transpose: bool = False,
    ) -> FloatArray:
        """``A_v Y`` (or ``A_vᵀ Y``) with ``A_v = δ I - Σ_j θ_j N_jv`` for equation ``e``."""
        out = delta * Y if delta else np.zeros_like(Y, dtype=float)
        g = blk.grid
        for j, m, d in blk.ops[e][v]:
            if transpose:
                NY = g.JT(Y, m)
                if d is not None:
                    NY = _col(d, NY) * NY
            else:
                NY = g.J(Y if d is None else _col(d, Y) * Y, m)
            out = out - theta[j] * NY
        return out

    def _trace_aat(self, blk: _Block, e: int, v: str, theta: FloatArray) -> float:
        """``tr(A_v A_vᵀ)`` from the θ-independent traces."""
        delta = 1.0 if v == self.spec.equations[e].response else 0.0
        lst = blk.ops[e][v]
        out = delta * blk.n
        for a, _, _ in lst:
            out -= 2 * delta * theta[a] * blk.tr_n[(e, v, a)]
            for b, _, _ in lst:
                out += theta[a] * theta[b] * blk.tr_nn[(e, v, a, b)]
        return out

    def _delta(self, e: int, v: str) -> float:
        return 1.0 if v == self.spec.equations[e].response else 0.0

    def _omega_apply(
        self, blk: _Block, e: int, theta: FloatArray, tau2: dict, Y: FloatArray
    ) -> tuple[FloatArray, FloatArray]:
        """``(Yᵀ Ω_e Y, Ω_e Y)`` for the measurement part of equation ``e``'s covariance."""
        gram = np.zeros((Y.shape[1], Y.shape[1]))
        OY = np.zeros_like(Y, dtype=float)
        for v in blk.ops[e]:
            w = tau2[(v, blk.seg)]
            if w == 0:
                continue
            d = self._delta(e, v)
            AtY = self._apply(blk, e, v, d, theta, Y, transpose=True)
            gram += w * AtY.T @ AtY
            OY += w * self._apply(blk, e, v, d, theta, AtY)
        return gram, OY

    def _trace_omega_sq(self, blk: _Block, e: int, theta: FloatArray, tau2: dict) -> float:
        """``tr(Ω_e²)``: exact up to :data:`EXACT_TRACE_LIMIT` samples, else Hutch++."""
        if blk.n <= EXACT_TRACE_LIMIT:
            eye = np.eye(blk.n)
            om = np.zeros((blk.n, blk.n))
            for v in blk.ops[e]:
                w = tau2[(v, blk.seg)]
                if w:
                    A = self._apply(blk, e, v, self._delta(e, v), theta, eye)
                    om += w * A @ A.T
            return float(np.sum(om * om))
        # Hutch++ (Meyer et al. 2021) on Ω²: the few large eigenvalues of an integrated-noise
        # covariance are captured exactly by a sketch, the rest by Hutchinson probes
        rng = np.random.default_rng(0)

        def om(Y: FloatArray) -> FloatArray:
            return self._omega_apply(blk, e, theta, tau2, np.asfortranarray(Y))[1]

        S = rng.choice([-1.0, 1.0], size=(blk.n, _PROBES))
        Q, _ = np.linalg.qr(om(om(S)))
        G = rng.choice([-1.0, 1.0], size=(blk.n, _PROBES))
        G -= Q @ (Q.T @ G)
        return float(np.sum(om(Q) ** 2) + np.sum(om(G) ** 2) / _PROBES)

    def _gls(
        self,
        cov_type: str,
        blocks: list[tuple[int, np.ndarray]],
        values: dict,
        X_eq: list[FloatArray],
        y_eq: list[FloatArray],
        betas: list[FloatArray],
    ) -> tuple[list[FloatArray], FloatArray, dict[str, Any]]:
        eqs = self.spec.equations
        m = len(eqs)
        mode = self.options["noise"]
        self._warned_process = False
        tau2 = self._noise_variances()
        if mode == "process":
            tau2 = {k: 0.0 for k in tau2}
        ks = [X.shape[1] for X in X_eq]
        offs = np.cumsum([0, *ks])
        K_tot = int(offs[-1])
        bounds = np.cumsum([0, *[len(pos) for _, pos in blocks]])
        prepared = [self._prepare(seg, pos, values, mode) for seg, pos in blocks]
        banded = cov_type == "GLS" and all(
            eq.order == 1 and all(mm == 1 for lst in blk.ops[e].values() for _, mm, _ in lst)
            for blk in prepared
            for e, eq in enumerate(eqs)
        )
        if cov_type == "GLS" and not banded:
            biggest = max(m * blk.n for blk in prepared)
            if biggest > DENSE_GLS_LIMIT:
                raise MethodNotAvailableError(
                    "cov_type='GLS' has a banded (O(n)) form only for first-order relations; "
                    f"here it would need a dense {biggest}x{biggest} covariance (limit "
                    f"{DENSE_GLS_LIMIT}). Use the default cov_type='sandwich'"
                )

        if self.options["eiv_correction"] and mode != "process":
            betas = self._corrected_ols(X_eq, y_eq, prepared, tau2, bounds)
            bread_mats = self._bread
        else:
            bread_mats = [np.linalg.pinv(X.T @ X) for X in X_eq]

        iterations = 2 if cov_type == "GLS" else 1
        sigma2 = np.zeros(m)
        cov = np.zeros((K_tot, K_tot))
        for _ in range(iterations):
            thetas = [betas[e][: len(eq.terms)] for e, eq in enumerate(eqs)]
            if mode != "measurement":
                sigma2 = self._process_variance(X_eq, y_eq, thetas, prepared, bounds, mode, tau2)
            XtOiX = np.zeros((K_tot, K_tot))
            XtOiy = np.zeros(K_tot)
            meat = np.zeros((K_tot, K_tot))
            for b, blk in enumerate(prepared):
                sl = slice(bounds[b], bounds[b + 1])
                Xs = [X_eq[e][sl] for e in range(m)]
                ys = [y_eq[e][sl] for e in range(m)]
                if cov_type == "sandwich":
                    meat += self._meat(blk, thetas, tau2, sigma2, Xs, offs)
                    continue
                solve = self._banded_solver if banded else self._dense_solver
                XtX, Xty = solve(blk, thetas, tau2, sigma2, Xs, ys, offs)
                XtOiX += XtX
                XtOiy += Xty
            if cov_type == "sandwich":
                bread = np.zeros((K_tot, K_tot))
                for e in range(m):
                    bread[offs[e] : offs[e + 1], offs[e] : offs[e + 1]] = bread_mats[e]
                cov = bread @ meat @ bread
            else:
                cov = np.linalg.pinv(XtOiX)
                beta_all = cov @ XtOiy
                betas = [beta_all[offs[e] : offs[e + 1]] for e in range(m)]
        details: dict[str, Any] = {}
        nseg = len(self.data.segments)
        for v in self.spec.states:
            sd_v = float(np.sqrt(np.mean([tau2[(v, s)] for s in range(nseg)])))
            details[f"meas. noise SD {v}"] = sd_v
        if mode != "measurement":
            for e, eq in enumerate(eqs):
                details[f"process noise SD {eq.response}"] = float(np.sqrt(sigma2[e]))
        return betas, cov, details

    def _meat(
        self,
        blk: _Block,
        thetas: list[FloatArray],
        tau2: dict,
        sigma2: FloatArray,
        Xs: list[FloatArray],
        offs: np.ndarray,
    ) -> FloatArray:
        """``Xᵀ Ω X`` of one block: ``Σ_v τ_v² G_vᵀ G_v + Σ_e σ_e² X_eᵀ K X_e``, O(n k).

        ``G_v = [A_{1v}ᵀ X_1, ..., A_{mv}ᵀ X_m]`` (reverse cumulative sums).
        """
        K_tot = int(offs[-1])
        meat = np.zeros((K_tot, K_tot))
        for v in self.spec.states:
            w = tau2[(v, blk.seg)]
            users = [e for e in range(len(Xs)) if v in blk.ops[e]]
            if w == 0 or not users:
                continue
            G = np.zeros((blk.n, K_tot))
            for e in users:
                G[:, offs[e] : offs[e + 1]] = self._apply(
                    blk, e, v, self._delta(e, v), thetas[e], Xs[e], transpose=True
                )
            meat += w * G.T @ G
        for e, eq in enumerate(self.spec.equations):
            if sigma2[e]:
                sl = slice(offs[e], offs[e + 1])
                meat[sl, sl] += sigma2[e] * blk.grid.process_gram(Xs[e], eq.order)
        return meat

    def _scale(
        self, blk: _Block, thetas: list[FloatArray], tau2: dict, sigma2: FloatArray
    ) -> float:
        """Mean diagonal of the block's Ω (sets the relative jitter ``1e-10`` of the solve)."""
        tot = 0.0
        for e in range(len(thetas)):
            for v in blk.ops[e]:
                tot += tau2[(v, blk.seg)] * self._trace_aat(blk, e, v, thetas[e])
            if sigma2[e]:
                tot += sigma2[e] * blk.tr_k[e]
        return tot / (len(thetas) * blk.n) or 1.0

    def _banded_solver(
        self,
        blk: _Block,
        thetas: list[FloatArray],
        tau2: dict,
        sigma2: FloatArray,
        Xs: list[FloatArray],
        ys: list[FloatArray],
        offs: np.ndarray,
    ) -> tuple[FloatArray, FloatArray]:
        """GLS pieces ``XᵀΩ⁻¹X``, ``XᵀΩ⁻¹y`` of a first-order block in O(n).

        With the first difference ``D`` (first row ``e_0``), ``D A_v = δ D - Σ θ_j (DJ) diag(d_j)``
        is lower bidiagonal and ``D K Dᵀ = diag(0, h_1, ..., h_{n-1})`` for ``K = min(s_i, s_j)``,
        so ``D Ω Dᵀ`` is banded (tridiagonal per pair of equations; the equations interleaved):
        GLS on the differenced data with a banded Cholesky factor (``scipy.linalg
        .cholesky_banded``) equals GLS with ``Ω``.
        """
        from scipy.linalg import cho_solve_banded, cholesky_banded

        m, n, g = len(Xs), blk.n, blk.grid
        eps = 1e-10 * self._scale(blk, thetas, tau2, sigma2)
        # lower-bidiagonal factors L_ev = D A_ev: (main, sub) with sub[k] at (k, k-1), sub[0] = 0
        facs: dict[tuple[int, str], tuple[FloatArray, FloatArray]] = {}
        for e in range(m):
            for v in blk.ops[e]:
                d = self._delta(e, v)
                main = np.full(n, d)
                sub = np.full(n, -d)
                sub[0] = 0.0
                for j, _, dj in blk.ops[e][v]:
                    w = np.ones(n) if dj is None else dj
                    main = main - thetas[e][j] * g.alpha * w
                    sub[1:] = sub[1:] - thetas[e][j] * g.alpha[1:] * w[:-1]
                facs[(e, v)] = (main, sub)
        u = 2 * m - 1
        ab = np.zeros((u + 1, m * n))
        k = np.arange(n)
        for i in range(m):
            for jq in range(m):
                dia = np.zeros(n)
                low = np.zeros(n)  # (k, k-1)
                upp = np.zeros(n)  # (k-1, k)
                for v in self.spec.states:
                    w = tau2[(v, blk.seg)]
                    if w == 0 or (i, v) not in facs or (jq, v) not in facs:
                        continue
                    a0, a1 = facs[(i, v)]
                    b0, b1 = facs[(jq, v)]
                    dia += w * (a0 * b0 + a1 * b1)
                    low[1:] += w * a1[1:] * b0[:-1]
                    upp[1:] += w * a0[:-1] * b1[1:]
                if i == jq:
                    dia[1:] += sigma2[i] * g.h
                    dia += eps * np.where(k == 0, 1.0, 2.0)
                    low[1:] -= eps
                    upp[1:] -= eps
                for rr, cc, val in (
                    (k, k, dia),
                    (k[1:], k[1:] - 1, low[1:]),
                    (k[1:] - 1, k[1:], upp[1:]),
                ):
                    r, c = rr * m + i, cc * m + jq
                    keep = r <= c
                    ab[u + r[keep] - c[keep], c[keep]] = val[keep]
        K_tot = int(offs[-1])
        Xt = np.zeros((m * n, K_tot))
        yt = np.zeros(m * n)
        for e in range(m):
            Xt[e::m, offs[e] : offs[e + 1]] = np.diff(Xs[e], axis=0, prepend=0.0)
            yt[e::m] = np.diff(ys[e], prepend=0.0)
        cb = cholesky_banded(ab, lower=False)
        Z = cho_solve_banded((cb, False), np.column_stack([Xt, yt]))
        return Xt.T @ Z[:, :-1], Xt.T @ Z[:, -1]

    def _dense_solver(
        self,
        blk: _Block,
        thetas: list[FloatArray],
        tau2: dict,
        sigma2: FloatArray,
        Xs: list[FloatArray],
        ys: list[FloatArray],
        offs: np.ndarray,
    ) -> tuple[FloatArray, FloatArray]:
        """GLS pieces with a dense Ω (only below :data:`DENSE_GLS_LIMIT` rows)."""
        from scipy.linalg import cho_factor, cho_solve

        m, n = len(Xs), blk.n
        eye = np.eye(n)
        A = {
            (e, v): self._apply(blk, e, v, self._delta(e, v), thetas[e], eye)
            for e in range(m)
            for v in blk.ops[e]
        }
        om = np.zeros((m * n, m * n))
        for i in range(m):
            for jq in range(m):
                blk_ij = np.zeros((n, n))
                for v in self.spec.states:
                    w = tau2[(v, blk.seg)]
                    if w and (i, v) in A and (jq, v) in A:
                        blk_ij += w * A[(i, v)] @ A[(jq, v)].T
                if i == jq and sigma2[i]:
                    blk_ij += sigma2[i] * blk.grid.process_gram(eye, self.spec.equations[i].order)
                om[i * n : (i + 1) * n, jq * n : (jq + 1) * n] = blk_ij
        om += 1e-10 * self._scale(blk, thetas, tau2, sigma2) * np.eye(m * n)
        K_tot = int(offs[-1])
        Xb = np.zeros((m * n, K_tot))
        for e in range(m):
            Xb[e * n : (e + 1) * n, offs[e] : offs[e + 1]] = Xs[e]
        c = cho_factor(om, lower=True)
        Z = cho_solve(c, np.column_stack([Xb, np.concatenate(ys)]))
        return Xb.T @ Z[:, :-1], Xb.T @ Z[:, -1]

    def _corrected_ols(
        self,
        X_eq: list[FloatArray],
        y_eq: list[FloatArray],
        prepared: list[_Block],
        tau2: dict[tuple[str, int], float],
        bounds: np.ndarray,
    ) -> list[FloatArray]:
        """Errors-in-variables corrected least squares (measurement noise in integrated states).

        With ``X_S = X₀ + E`` for the state columns (``E_a = N_a e``: integrated noise), the
        noise-free columns ``Z`` (inputs, intercept, initial-condition terms), ``M = I - P_Z`` and
        ``y = x + e``: ``E[X_SᵀM X_S] = X₀ᵀM X₀ + T`` and ``E[X_SᵀM y] = X₀ᵀM x + t`` with
        ``T_ab = Σ τ² tr(N_aᵀ M N_b)``, ``t_a = Σ τ² tr(M N_a)`` (the latter only through the
        response's own noise). Solving ``(XᵀX - T̃) β = Xᵀy - t̃`` (``T̃``, ``t̃``: ``T``, ``t`` in
        the state rows) is then consistent. Stores the bread ``(XᵀX - T̃)⁻¹`` for the sandwich.
        The traces ``tr N_a`` and ``tr N_a N_bᵀ`` are closed forms of the grid (O(n)); the
        projected parts need only ``N_a Z`` and ``N_aᵀ Z`` (cumulative sums).
        """
        eqs = self.spec.equations
        out = []
        self._bread = []
        for e, eq in enumerate(eqs):
            X, y = X_eq[e], y_eq[e]
            k = X.shape[1]
            noisy = sorted(
                {a for blk in prepared for lst in blk.ops[e].values() for a, _, _ in lst}
            )
            zcols = [j for j in range(k) if j not in noisy]
            Z = X[:, zcols]
            W = np.linalg.pinv(Z.T @ Z)
            T = np.zeros((k, k))
            tv = np.zeros(k)
            for b, blk in enumerate(prepared):
                Zb = Z[bounds[b] : bounds[b + 1]]
                g = blk.grid
                for v, lst in blk.ops[e].items():
                    w = tau2[(v, blk.seg)]
                    if w == 0:
                        continue
                    NtZ = {}
                    for a, ma, da in lst:
                        NtZ[a] = g.JT(Zb, ma)
                        if da is not None:
                            NtZ[a] = _col(da, Zb) * NtZ[a]
                    for a, ma, da in lst:
                        if v == eq.response:
                            NZ = g.J(Zb if da is None else _col(da, Zb) * Zb, ma)
                            proj = float(np.sum(W * (Zb.T @ NZ)))
                            tv[a] += w * (blk.tr_n[(e, v, a)] - proj)
                        for bb, _, _ in lst:
                            proj = float(np.sum(W * (NtZ[a].T @ NtZ[bb])))
                            T[a, bb] += w * (blk.tr_nn[(e, v, a, bb)] - proj)
            M = X.T @ X - T
            self._bread.append(np.linalg.pinv(M))
            out.append(self._bread[-1] @ (X.T @ y - tv))
        return out

    def _process_variance(
        self,
        X_eq: list[FloatArray],
        y_eq: list[FloatArray],
        thetas: list[FloatArray],
        prepared: list[_Block],
        bounds: np.ndarray,
        mode: str,
        tau2: dict,
    ) -> FloatArray:
        """Process-noise variance per equation by moments from the OLS residuals.

        ``E r̂ᵀr̂ = tr(P⊥Ω_meas) + σ² tr(P⊥K)``; σ² is kept only when the excess over the
        measurement part is above 3 null SDs (``Var r̂ᵀr̂ = 2 tr((P⊥Ω)²)`` plus the uncertainty of
        the estimated noise variance), or ``noise="process"``. Every trace is reduced to
        ``tr Ω``, ``tr K`` (closed forms), ``XᵀΩX``, ``XᵀKX``, ``ΩX`` (O(n k)) and ``tr Ω²``.
        """
        m = len(X_eq)
        sigma2 = np.zeros(m)
        for e in range(m):
            X, y = X_eq[e], y_eq[e]
            B = np.linalg.pinv(X.T @ X)
            r = y - X @ (B @ (X.T @ y))
            tr_meas = tr_proc = tr_sq = 0.0
            for b, blk in enumerate(prepared):
                Xb = X[bounds[b] : bounds[b + 1]]
                tr_om = sum(
                    tau2[(v, blk.seg)] * self._trace_aat(blk, e, v, thetas[e]) for v in blk.ops[e]
                )
                xox, ox = self._omega_apply(blk, e, thetas[e], tau2, Xb)
                bx = B @ xox
                tr_meas += tr_om - float(np.trace(bx))
                if tr_om:
                    tr_sq += (
                        self._trace_omega_sq(blk, e, thetas[e], tau2)
                        - 2.0 * float(np.sum(B * (ox.T @ ox)))
                        + float(np.sum(bx * bx.T))
                    )
                xkx = blk.grid.process_gram(Xb, self.spec.equations[e].order)
                tr_proc += blk.tr_k[e] - float(np.sum(B * xkx))
            excess = float(r @ r) - tr_meas
            # null SD of the excess: chi-square part plus the uncertainty of the MAD-based
            # noise variance (relative variance ~5.4/n: MAD has 37% Gaussian efficiency)
            null_sd = np.sqrt(max(2.0 * tr_sq, 0.0) + tr_meas**2 * 5.4 / max(len(y), 1))
            if tr_proc > 0 and (mode == "process" or excess > 3.0 * null_sd):
                sigma2[e] = max(excess / tr_proc, 0.0)
                if mode == "auto" and excess > 0.5 * float(r @ r) and not self._warned_process:
                    self._warned_process = True
                    warnings.warn(
                        f"process noise dominates the residuals of {self.spec.equations[e].lhs} "
                        f"({excess / float(r @ r):.0%} of the residual variance): the integrated "
                        "regressors carry the accumulated noise, so these integral-form "
                        "estimates are UNRELIABLE: biased toward 0, the more so the longer the "
                        "record, with intervals that do not cover (measured on dx/dt = -x + u: "
                        "a = -0.06 over 400 time units; cov_type='GLS' or window= still give "
                        "-0.6). Use method='statespace' for process noise",
                        BiasWarning,
                        stacklevel=6,
                    )
        return sigma2

    # ------------------------------------------------------------------ initial conditions
    def _initial_conditions(
        self,
        theta: FloatArray,
        beta_all: FloatArray,
        ic_idx: list[list[int]],
        blocks: list[tuple[int, np.ndarray]],
    ) -> dict[int, dict[tuple[str, int], float]] | None:
        """``x^(i)(t_0)`` per segment from the ``c_i`` (undoing the absorbed polynomials)."""
        out: dict[int, dict[tuple[str, int], float]] = {}
        start = 0
        thetas = []
        for eq in self.spec.equations:
            thetas.append(theta[start : start + len(eq.terms)])
            start += len(eq.terms)
        for e, eq in enumerate(self.spec.equations):
            p = eq.order
            for term in eq.terms:
                if term.kind == "state" and term.var != eq.response:
                    return None
                if term.kind == "exogenous" and term.order and term.order > 0:
                    return None
            for b in range(len(blocks)):
                c = [beta_all[ic_idx[e][b * p + i]] for i in range(p)]
                x0: list[float] = []
                for i in range(p):
                    val = c[i]
                    for th, term in zip(thetas[e], eq.terms, strict=True):
                        if term.kind == "state" and term.order:
                            lag = p - term.order
                            if i >= lag:
                                val += th * x0[i - lag]
                    x0.append(float(val))
                out.setdefault(b, {}).update({(eq.response, i): x0[i] for i in range(p)})
        return out

    def __repr__(self) -> str:
        return f"IntegralOLS({self.spec.describe()!r}, nobs={self.data.nobs})"
