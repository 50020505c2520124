"""Penalised (smoothing) spline derivatives with automatic smoothing and Bayesian standard errors.

Model
-----
For samples ``y_k`` at times ``t_k`` the estimate ``f`` minimises

    sum_k (y_k - f(t_k))^2 + lam * integral f^(m)(t)^2 dt,

the natural smoothing spline of penalty order ``m`` (piecewise polynomial of degree ``2m - 1``
with ``2m - 2`` continuous derivatives). Its Bayesian interpretation (Wahba 1978) is the posterior
mean of ``f`` under an ``m``-fold integrated white-noise prior with intensity ``q`` and measurement
noise variance ``r`` (``lam = r / q``, diffuse polynomial part); the posterior covariance gives
pointwise standard errors of ``f, f', ..., f^(m-1)``. ``lam`` is chosen by REML (the diffuse
marginal likelihood) or by generalised cross-validation,
``GCV(lam) = n RSS / (n - trace A(lam))^2``.

Numerics (:mod:`derivreg.preprocess._banded`): the state-space form with banded matrices, one
banded Cholesky per ``lam`` and an O(n) selected-inverse recursion for the trace and the
posterior variances; time is normalised to unit mean spacing internally, so the answer does not
depend on the time unit or offset. ``lam`` is searched from the smoothest end, gated by a
difference-based pilot estimate of the noise variance on long series (see
:meth:`derivreg.preprocess._banded.SmoothingSearch.search`). Series above 1e5 points choose
``lam`` on four blocks of 1e4 points (:func:`derivreg.preprocess._banded.block_lambda`) and are
fitted once at full size; measured: 10^6 regular points fit with calibrated SEs in 1.2 s CPU
(1.7 s wall on 2 shared cores; ``auto``, two penalty orders scored: 2.7 s CPU, 4.2 s wall),
derivative RMSE as at 2e4 points. Derivatives are those
of the fitted piecewise polynomial (never a refit on a derivative basis). For very smooth fits
the states live on a subset of the samples (knots spaced well below the smoothing scale) which
keeps the system well conditioned and gives the same fit to ~1e-7 relative.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from numpy.polynomial import Legendre, Polynomial
from scipy.linalg import cho_solve_banded

from derivreg._typing import FloatArray
from derivreg.exceptions import DataError, MethodNotAvailableError, TooFewPointsError
from derivreg.preprocess._banded import (
    BLOCK_FROM,
    CRITERIA,
    Selection,
    SmoothingSearch,
    block_lambda,
    hermite_columns,
)
from derivreg.preprocess.base import Preprocessor

__all__ = ["BANDS", "IRWState", "SmoothingSpline", "fit_irw", "fit_irw_select", "irw_derivative"]

#: pointwise band kinds: the Bayesian posterior SD, or calibrated (see :func:`irw_derivative`)
BANDS = ("calibrated", "posterior")

#: largest number of points for which the full covariance of a derivative estimate is formed
_MAX_COV_POINTS = 20_000
#: series at least this long are fitted with one BLAS thread (the switch costs milliseconds)
_ONE_THREAD_FROM = 50_000


@dataclass
class IRWState:
    """Fitted state of one (column, segment) series."""

    t0: float
    h: float  # mean spacing: tau = (t - t0) / h
    trend: Polynomial  # y = trend(tau) + scale * (standardised residual series)
    scale: float
    tau: FloatArray
    z: FloatArray  # standardised detrended data (0 where missing)
    w: FloatArray  # 1 observed, 0 missing
    criterion: str
    lam_t: float | None  # fixed lam in caller units, or None
    r_fixed: float | None  # fixed noise variance in caller units, or None
    q_fixed: float | None
    selections: dict[int, Selection] = field(default_factory=dict)
    blocks: dict[int, FloatArray] = field(default_factory=dict)  # m: joint, -m: state variances
    #: the searched lam is multiplied by this (derivative target, see :mod:`.auto`)
    lam_factor: float = 1.0
    band: str = "posterior"
    #: lam chosen by the criterion per penalty order, before ``lam_factor`` (tau units)
    lam_base: dict[int, float] = field(default_factory=dict)
    #: use the larger of the criterion's and GCV's lam (derivative target, see :mod:`.auto`)
    gcv_floor: bool = False
    #: lam chosen by GCV per penalty order when ``gcv_floor`` (tau units)
    lam_gcv: dict[int, float] = field(default_factory=dict)
    bias: dict[tuple[int, int], FloatArray] = field(default_factory=dict)  # (m, order)
    #: penalty order chosen by :func:`fit_irw_select` (None: fixed by the caller)
    m_chosen: int | None = None
    order_scores: dict[int, float] = field(default_factory=dict)


def _detrend(
    tau: FloatArray, y: FloatArray, w: FloatArray, m: int
) -> tuple[Polynomial, float, FloatArray]:
    """Least-squares polynomial of degree ``m - 1`` and scale of the rest.

    The spline reproduces such polynomials exactly, so removing one first changes nothing in
    exact arithmetic and keeps the banded system away from its (null-space) ill-conditioning.
    """
    obs = w > 0
    deg = min(m - 1, int(obs.sum()) - 1)
    lo, hi = float(tau[0]), float(tau[-1])
    x = (2.0 * tau - (lo + hi)) / (hi - lo) if hi > lo else np.zeros_like(tau)
    # normal equations on [-1, 1] in the Legendre basis (well conditioned, O(n) for 10^6 points)
    basis = np.polynomial.legendre.legvander(x[obs], deg)
    coef = np.linalg.solve(basis.T @ basis, basis.T @ y[obs])
    poly = Legendre(coef, domain=[lo, hi] if hi > lo else [lo, lo + 1.0]).convert(kind=Polynomial)
    resid = np.where(obs, y - poly(tau), 0.0)
    scale = float(np.sqrt(np.mean(resid[obs] ** 2)))
    if not np.isfinite(scale) or scale == 0.0:
        scale = 1.0
    return poly, scale, resid / scale


def fit_irw(
    t: FloatArray,
    y: FloatArray,
    m: int,
    *,
    criterion: str = "reml",
    lam: float | None = None,
    r: float | None = None,
    q: float | None = None,
    lam_factor: float = 1.0,
    band: str = "posterior",
    gcv_floor: bool = False,
) -> IRWState:
    """Fit the order-``m`` smoothing spline / IRW smoother to one series.

    Parameters
    ----------
    t, y : ndarray
        Strictly increasing times and values (NaN = missing).
    m : int
        Penalty order.
    criterion : {"reml", "gcv"}
        How ``lam`` is chosen when it is not fixed.
    lam : float, optional
        Fixed ``lam`` in the caller's time units (``integral f^(m)(t)^2 dt``).
    r, q : float, optional
        Fixed measurement-noise variance and/or random-walk intensity (caller units); ``lam``
        is then estimated by maximum likelihood with the other parameter(s) profiled out.
    lam_factor : float
        Multiplies the ``lam`` chosen by ``criterion`` (1: the criterion's own choice).
    band : {"posterior", "calibrated"}
        Kind of pointwise SE (:func:`irw_derivative`).
    gcv_floor : bool
        Use the larger of the ``lam`` chosen by ``criterion`` and by GCV (before
        ``lam_factor``): the derivative target of :mod:`derivreg.preprocess.auto`.
    """
    w = np.isfinite(y).astype(float)
    n_obs = int(w.sum())
    if n_obs < m + 2:
        raise TooFewPointsError(
            f"the penalty-order-{m} spline needs at least {m + 2} observed points, got {n_obs}"
        )
    state = _state_for(t, y, m, criterion, lam_factor, band, lam, r, q)
    state.gcv_floor = gcv_floor
    selection_for(state, m)
    return state


def _state_for(
    t: FloatArray,
    y: FloatArray,
    m: int,
    criterion: str,
    lam_factor: float,
    band: str,
    lam: float | None = None,
    r: float | None = None,
    q: float | None = None,
) -> IRWState:
    """The unfitted state: normalised time, detrended (degree ``m - 1``) standardised data."""
    w = np.isfinite(y).astype(float)
    t0 = float(t[0])
    h = float((t[-1] - t[0]) / (len(t) - 1))
    tau = (t - t0) / h
    poly, scale, z = _detrend(tau, np.where(w > 0, y, 0.0), w, m)
    return IRWState(
        t0, h, poly, scale, tau, z, w, criterion, lam, r, q, lam_factor=lam_factor, band=band
    )


def selection_for(state: IRWState, m: int) -> Selection:
    """The fitted order-``m`` problem of a state (fitted on first use, then cached)."""
    if m in state.selections:
        return state.selections[m]
    if int(state.w.sum()) < m + 2:
        raise TooFewPointsError(
            f"the penalty-order-{m} spline needs at least {m + 2} observed points"
        )
    if len(state.tau) >= _ONE_THREAD_FROM:
        # banded LAPACK/BLAS gain nothing from threads here; idle spinning threads cost ~2x CPU
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1):
            return _select(state, m)
    return _select(state, m)


def _select(state: IRWState, m: int) -> Selection:
    search = SmoothingSearch(state.tau, state.z, state.w, m)
    unit = state.h ** (2 * m - 1)  # lam_tau = lam_t / h^(2m-1); q_tau = q_t * h^(2m-1)
    s2 = state.scale**2
    r = None if state.r_fixed is None else state.r_fixed / s2
    q = None if state.q_fixed is None else state.q_fixed * unit / s2
    if not np.any(state.z):
        # the data are exactly a polynomial of degree < m: any lam reproduces them, no noise
        sel = search.fixed(1.0 if state.lam_t is None else state.lam_t / unit, "reml", 1.0)
        sel.r, sel.value = 0.0, math.nan
    elif state.lam_t is not None:
        sel = search.fixed(state.lam_t / unit, state.criterion, r)
    elif r is not None and q is not None:
        sel = search.fixed(r / q, "reml", r)
    elif r is not None or q is not None:
        sel = search.search("reml", r=r, q=q)
    else:
        # lam by the criterion (and by GCV with gcv_floor): on blocks for long series (see
        # block_lambda), unless chosen before (fit_irw_select); then one fit at the lam used
        base: Selection | None = None
        n_eval = 0
        long = len(state.tau) > BLOCK_FROM
        parts = None
        if m not in state.lam_base:
            if long:
                state.lam_base[m], n_eval, parts = block_lambda(
                    state.tau, state.z, state.w, m, state.criterion
                )
            else:
                base = search.search(state.criterion)
                state.lam_base[m], n_eval = base.lam, base.n_eval
        if state.gcv_floor and m not in state.lam_gcv:
            state.lam_gcv[m], n_gcv = gcv_lam(state, m, None if long else search, parts)
            n_eval += n_gcv
        lam = used_lam(state, m)
        if base is not None and lam == base.lam:
            sel = base
        else:
            sel = search.fixed(lam, state.criterion)
            sel.n_eval = n_eval + 1
            if base is not None and lam == base.lam * state.lam_factor:
                sel.at_bound = base.at_bound
    state.selections[m] = sel
    return sel


#: ``gcv_floor`` on a series searched whole: GCV's ``lam`` is sought between 0.1 and this
#: multiple of the criterion's (only the larger of the two is used)
GCV_FLOOR_MAX = 1000.0


def gcv_lam(
    state: IRWState, m: int, search: SmoothingSearch | None, parts: list[Any] | None = None
) -> tuple[float, int]:
    """GCV's ``lam`` (tau units) for ``gcv_floor`` and the number of evaluations.

    ``search``: the series' own search, walked from the criterion's ``lam`` / 10 to
    ``GCV_FLOOR_MAX`` times it: every GCV evaluation needs the hat matrix's trace (a selected
    inverse), and a walk over the whole range took 2/3 of the fit. ``None`` for a long series:
    the whole range on blocks (see :func:`~derivreg.preprocess._banded.block_lambda`, reusing
    ``parts`` when given), as ``criterion="gcv"`` does; GCV's curve is flat near its minimum
    there and a walk started near REML's ``lam`` ended 3x away from the full search's.
    """
    if search is None:
        lam, n_eval, _ = block_lambda(state.tau, state.z, state.w, m, "gcv", parts=parts)
        return lam, n_eval
    x0 = math.log10(state.lam_base[m]) / (2 * m)
    bounds = (x0 - 1.0 / (2 * m), x0 + math.log10(GCV_FLOOR_MAX) / (2 * m))
    before = search.n_eval
    lam = search.search("gcv", bounds=bounds).lam
    return lam, search.n_eval - before


def used_lam(state: IRWState, m: int) -> float:
    """The ``lam`` (tau units) fitted: the criterion's, or GCV's if larger and asked for,
    times ``lam_factor``."""
    lam = state.lam_base[m]
    if state.gcv_floor and m in state.lam_gcv:
        lam = max(lam, state.lam_gcv[m])
    return lam * state.lam_factor


def gcv_score(state: IRWState, m: int) -> float:
    """``n RSS / (n - trace A)^2`` of the fitted order-``m`` problem (standardised units).

    When every point is a knot the trace comes from the state variances, which are kept for
    the standard errors.
    """
    sel = selection_for(state, m)
    prob = sel.problem
    if prob.all_knots:
        if -m not in state.blocks:
            state.blocks[-m] = prob.selected_inverse(sel.fit, full="diag")
        trace = float(np.dot(state.w, state.blocks[-m][:, 0]))
    else:
        trace = prob.trace_hat(sel.fit)
    resid = state.w * (state.z - prob.at_data(sel.fit.mean, 0))
    n_obs = float(state.w.sum())
    return n_obs * float(np.dot(resid, resid)) / max(n_obs - trace, 1e-12) ** 2


def fit_irw_select(
    t: FloatArray,
    y: FloatArray,
    orders: tuple[int, ...] = (2, 3),
    *,
    criterion: str = "reml",
    lam_factor: float = 1.0,
    band: str = "posterior",
    gcv_floor: bool = False,
) -> IRWState:
    """Fit the spline of every penalty order in ``orders``; keep the one with the best GCV score.

    Each order's ``lam`` is chosen by ``criterion`` (the larger of it and GCV's with
    ``gcv_floor``) and multiplied by ``lam_factor``; the
    orders are compared by the GCV score at that ``lam`` (an estimate of the prediction error,
    comparable across orders, unlike the diffuse likelihoods). Series longer than
    ``BLOCK_FROM`` are scored on the blocks that choose ``lam`` and only the chosen order is
    fitted at full size. ``state.m_chosen`` records the choice, ``state.order_scores`` the
    scores.
    """
    n_obs = int(np.isfinite(y).sum())
    orders = tuple(m for m in orders if n_obs >= m + 2) or (min(orders),)
    states, scores, n_evals = {}, {}, {}
    for m in orders:  # each order with its own detrending (degree m - 1)
        if len(t) <= BLOCK_FROM:
            states[m] = fit_irw(
                t, y, m, criterion=criterion, lam_factor=lam_factor, band=band, gcv_floor=gcv_floor
            )
            scores[m] = gcv_score(states[m], m) * states[m].scale ** 2
        else:
            st = states[m] = _state_for(t, y, m, criterion, lam_factor, band)
            st.gcv_floor = gcv_floor
            lam, n_block, parts = block_lambda(st.tau, st.z, st.w, m, criterion)
            st.lam_base[m] = lam
            if gcv_floor:
                st.lam_gcv[m], n_gcv = gcv_lam(st, m, None, parts)
                n_block += n_gcv
            n_evals[m] = n_block + len(parts)
            log10_b = math.log10(used_lam(st, m)) / (2 * m)
            # GCV of the standardised blocks; scale back to compare orders (own detrending)
            scores[m] = st.scale**2 * sum(p.evaluate(log10_b, "gcv")[0] for p in parts)
    best = min(scores, key=lambda k: scores[k])
    state = states[best]
    selection_for(state, best).n_eval += n_evals.get(best, 0)
    state.m_chosen = best
    state.order_scores = scores
    return state


def irw_derivative(
    state: IRWState, order: int, m: int, want_se: bool = True, band: str | None = None
) -> tuple[FloatArray, FloatArray | None]:
    """Estimate and pointwise SE of the ``order``-th derivative at the fitted times.

    ``band="posterior"``: for ``order < m`` the SE is the posterior SD of ``f^(order)`` (a
    state component). For ``m <= order <= 2m - 2`` (the spline's derivative is still
    continuous) it is the posterior SD of the same linear functional of the knot states that
    gives the estimate (the derivative of the degree ``2m - 1`` interpolant of the states):
    exact for that functional, approximate for the true derivative, which the prior's sample
    paths do not have.

    ``band="calibrated"`` (``order < m``): the frequentist variance of the estimate plus an
    estimate of its squared bias, never more than the posterior variance. Interior of a regular
    grid, smoother eigenvalues ``a = 1 / (1 + u)``, ``u = (nu / nu0)^(2m)``, in units of the
    posterior variance of ``f^(k)`` (``s = (2k + 1) / (2m)``: 0.5 for the slope of the quintic,
    0.75 for the cubic):

    * posterior = frequentist variance ``1 - s`` + the squared bias the prior expects ``s``
      (Beta integrals of ``nu^(2k) a^2`` and ``nu^(2k) u a^2`` against ``nu^(2k) a``; measured
      0.50-0.57 for the variance on 401 points against the exact one);
    * the twice-smoothing bias estimate ``b = D(A f_hat - f_hat)`` (``A`` the smoother, ``D``
      the derivative) has, under the prior, ``E b^2 = g_s + g_n``: a signal part
      ``g_s = s (1 - s) (2 - s) / 6`` (the true bias attenuated by ``a^2``: ``b`` misses bias
      at high frequencies) and a noise part ``g_n = (1 + s) s (1 - s) / 6``;
    * ``rho`` = the observed signal energy of ``b``, ``sum (b^2 - g_n post)``, over the one
      the prior predicts, ``g_s sum post`` (observed points at least one smoothing scale from
      the ends; floored at 0): about 1 for draws of the prior itself, near 0 for signals
      smoother than the prior, above 1 for kinks. One number per series (a global
      empirical-Bayes ratio); local versions were noisier and covered less on prior draws.

    The variance is ``min(post, (1 - s) post + max(b^2 - g_n post, 0) + rho (s - g_s) post)``:
    for a smooth signal (``rho ~ 0``) the frequentist variance plus the locally estimated
    squared bias; for a signal as rough as the prior the posterior variance in expectation, the
    bias ``b`` does not see being restored by ``rho (s - g_s) post`` (whose shape follows the
    posterior, so gaps in the data and the ends get it too). The cap at the posterior keeps the
    band within the model's own. Cost: one more banded solve (``b``), O(n). Orders ``>= m``
    keep the posterior band (``s >= 1``: the decomposition does not hold). Coverage: see
    :class:`SmoothingSpline`.
    """
    sel = selection_for(state, m)
    prob = sel.problem
    unit = state.scale / state.h**order
    est = prob.at_data(sel.fit.mean, order) * unit
    est += state.trend.deriv(order)(state.tau) / state.h**order
    if not want_se:
        return est, None
    band = state.band if band is None else band
    if prob.all_knots and order < m:
        # a state component at every point: its variances only (the joint blocks of all knot
        # pairs would be 36 numbers per point, 300 MB at 1e6 points)
        key = -m
        if key not in state.blocks and m in state.blocks:
            state.blocks[key] = state.blocks[m][:, np.arange(m), np.arange(m)]
        if key not in state.blocks:
            state.blocks[key] = prob.selected_inverse(sel.fit, full="diag")
        var = sel.r * state.blocks[key][:, order]
    else:
        if m not in state.blocks:
            state.blocks[m] = prob.selected_inverse(sel.fit, full=True)
        var = sel.r * prob.var_at_data(state.blocks[m], order)
    if band == "calibrated" and order < m and math.isfinite(sel.r) and sel.r > 0:
        var = _calibrated_variance(state, sel, order, m, var)
    return est, np.sqrt(np.maximum(var, 0.0)) * unit


def _calibrated_variance(
    state: IRWState, sel: Selection, order: int, m: int, post: FloatArray
) -> FloatArray:
    """The ``band="calibrated"`` variance from the posterior one (standardised units).

    ``min(post, (1 - s) post + max(b^2 - g_n post, 0) + rho (s - g_s) post)``, see
    :func:`irw_derivative` for the terms; O(n), no solve beyond the bias estimate's.
    """
    s = (2 * order + 1) / (2 * m)
    # prior-expected b^2 per unit of posterior variance in the interior: noise and signal parts
    g_noise, g_signal = (s + 1.0) * s * (1.0 - s) / 6.0, s * (1.0 - s) * (2.0 - s) / 6.0
    excess = _twice_smoothing_bias(state, sel, order, m) ** 2 - g_noise * post
    # rho: the bias estimate's signal energy over what the prior predicts, on the observed
    # points at least one smoothing scale from the ends (the shares hold in the interior)
    n = len(post)
    margin = min(sel.lam ** (1.0 / (2 * m)), n / 4.0)
    keep = (
        (state.w > 0) & (state.tau - state.tau[0] >= margin) & (state.tau[-1] - state.tau >= margin)
    )
    if not np.any(keep):
        keep = state.w > 0
    prior = g_signal * float(np.sum(post[keep]))
    rho = max(float(np.sum(excess[keep])), 0.0) / prior if prior > 0 else 0.0
    var = (1.0 - s) * post + np.maximum(excess, 0.0) + rho * (s - g_signal) * post
    return np.minimum(var, post)


def _twice_smoothing_bias(state: IRWState, sel: Selection, order: int, m: int) -> FloatArray:
    """``D(A f_hat - f_hat)`` in standardised units: the smoother applied to its own fit."""
    key = (m, order)
    if key not in state.bias:
        prob = sel.problem
        fitted = prob.at_data(sel.fit.mean, 0)
        again = cho_solve_banded((sel.fit.chol, False), prob.project(fitted), check_finite=False)
        state.bias[key] = prob.at_data(again.reshape(prob.n_knots, m), order) - prob.at_data(
            sel.fit.mean, order
        )
    return state.bias[key]


def irw_derivative_cov(state: IRWState, order: int, m: int) -> FloatArray:
    """Full posterior covariance of the ``order``-th derivative at the fitted times (small n)."""
    sel = selection_for(state, m)
    prob = sel.problem
    n = prob.n
    if n > _MAX_COV_POINTS:
        raise MethodNotAvailableError(
            f"the full covariance is formed for at most {_MAX_COV_POINTS} points, got {n}"
        )
    g = np.zeros((n, prob.n_knots * m))
    rows = np.arange(n)
    if prob.all_knots and order < m:
        g[rows, rows * m + order] = 1.0
    else:
        j = prob.interval
        cols = hermite_columns(prob.delta[j], prob.rel, m, order)
        for c in range(2 * m):
            g[rows, j * m + c] = cols[c]
    x = cho_solve_banded((sel.fit.chol, False), g.T, check_finite=False)
    unit = state.scale / state.h**order
    return sel.r * (g @ x) * unit**2


def irw_info(state: IRWState, m: int) -> dict[str, Any]:
    """What was chosen for one series, in the caller's units."""
    sel = state.selections[m]
    unit = state.h ** (2 * m - 1)
    lam_t = sel.lam * unit
    r_t = sel.r * state.scale**2
    out: dict[str, Any] = {
        "penalty_order": m,
        "lam": lam_t,
        "criterion": sel.criterion if state.lam_t is None else "fixed",
        "noise_sd": math.sqrt(r_t) if math.isfinite(r_t) else float("nan"),
        "q": r_t / lam_t,
        "knot_step": sel.problem.step,
        "n_eval": sel.n_eval,
        "band": state.band,
    }
    if state.lam_factor != 1.0 and m in state.lam_base:
        out["lam_factor"] = state.lam_factor
        out["lam_criterion"] = state.lam_base[m] * unit
    if state.gcv_floor and m in state.lam_gcv:
        out["lam_by_criterion"] = {
            state.criterion: state.lam_base[m] * unit,
            "gcv": state.lam_gcv[m] * unit,
        }
    if sel.at_bound is not None:
        out["at_bound"] = sel.at_bound
    return out


class SmoothingSpline(Preprocessor):
    """Smoothing spline derivative with REML/GCV smoothing and Bayesian pointwise SEs.

    Minimises ``sum_k (y_k - f(t_k))^2 + lam * integral f^(m)(t)^2 dt`` (see the module
    docstring); derivatives are those of the fitted spline.

    Parameters
    ----------
    lam : float, optional
        Smoothing parameter in the data's time units; default chosen by ``criterion``.
    criterion : {"reml", "gcv"}
        REML (diffuse marginal likelihood of the Bayesian model) or generalised cross-validation.
    penalty_order : int
        ``m``: 2 = cubic, 3 = quintic (default), 4 = septic spline. The spline has ``2m - 2``
        continuous derivatives, so orders up to ``2m - 2`` are available (the cubic spline gives
        orders 0-2, the quintic 0-4). SEs: posterior SDs of ``f^(k)`` for ``k < m``; for higher
        orders the posterior SD of the spline-derivative functional (see :func:`irw_derivative`).
    band : {"calibrated", "posterior"}
        Pointwise SEs: ``"calibrated"`` (default) the frequentist variance plus an estimate of
        the squared bias (local, from smoothing the fit again, plus the share that estimate
        misses, scaled by how rough the series is against the fitted prior), capped at the
        posterior variance; ``"posterior"`` the Bayesian posterior SD (Wahba), right for
        signals as rough as the prior and conservative for derivatives of smoother ones (see
        :func:`irw_derivative`). Measured slope coverage of the 95% band (401 points,
        dt = 0.01, noise SD 0.1, 5 points dropped at each end, 40 draws, quintic; the
        signals of ``benchmarks/derivatives.py``), calibrated / posterior: sum of sines
        0.971 / 0.994, triangle wave away from its corners 0.973 / 0.974 (0.79 / 0.79 with
        them), logistic 0.949 / 0.972, linear3 0.960 / 0.990, chirp 0.976 / 0.993,
        exponential decay 0.943 / 0.965, smooth GP draws 0.973 / 0.991; draws of the
        integrated random walk itself (the prior; penalty order = walk order, 200 draws)
        0.914 / 0.943 (cubic), 0.893 / 0.927 (quintic). The previous calibrated band
        (without the missed share and the cap) gave 0.922-0.973 on the smooth signals, 0.917
        on the triangle and 0.73 / 0.84 on the walk draws. ``derivative_cov`` is the posterior
        covariance in both cases.
    """

    name: ClassVar[str] = "spline"
    provides_se: ClassVar[bool] = True
    _se_optional: ClassVar[bool] = True
    max_order: ClassVar[int] = 3

    def __init__(
        self,
        lam: float | None = None,
        criterion: str = "reml",
        penalty_order: int = 3,
        band: str = "calibrated",
    ) -> None:
        self.lam = lam
        self.criterion = criterion
        self.penalty_order = penalty_order
        self.band = band

    def _check_params(self) -> None:
        if self.criterion not in CRITERIA:
            raise DataError(f"criterion must be one of {CRITERIA}, got {self.criterion!r}")
        if self.band not in BANDS:
            raise DataError(f"band must be one of {BANDS}, got {self.band!r}")
        m = self.penalty_order
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or not 2 <= m <= 4:
            raise DataError(f"penalty_order must be an integer 2..4, got {m!r}")
        if self.lam is not None and (
            isinstance(self.lam, bool)
            or not isinstance(self.lam, (int, float, np.integer, np.floating))
            or not math.isfinite(self.lam)
            or self.lam <= 0
        ):
            raise DataError(f"lam must be a positive finite number or None, got {self.lam!r}")

    def _m_for(self, order: int) -> int:
        m = int(self.penalty_order)
        if order > 2 * m - 2:
            raise MethodNotAvailableError(
                f"a penalty-order-{m} spline has only {2 * m - 2} continuous derivatives; "
                f"use penalty_order >= {(order + 3) // 2} for derivative order {order}"
            )
        return m

    def min_points(self) -> int:
        self._check_params()
        return int(self.penalty_order) + 2

    def fit(self, data: Any, **kwargs: Any) -> SmoothingSpline:  # type: ignore[override]
        self._check_params()
        super().fit(data, **kwargs)
        self._finish_fit()
        return self

    def _finish_fit(self) -> None:
        self._update_info(self._m_for(1))

    def _update_info(self, m: int) -> None:
        per = {}
        for (j, i), st in self.states_.items():
            if m in st.selections:
                per[self._state_key(j, i)] = irw_info(st, m)
        info = dict(getattr(self, "info_", {}) or {})
        info["method"] = self.name
        info[f"m{m}"] = per
        if len(per) == 1:
            info.update(next(iter(per.values())))
        self.info_ = info

    def _fit_1d(self, t: FloatArray, y: FloatArray) -> IRWState:
        return fit_irw(t, y, self._m_for(1), criterion=self.criterion, lam=self.lam, band=self.band)

    def _derivative_1d(
        self, state: IRWState, t: FloatArray, order: int, want_se: bool = True
    ) -> tuple[FloatArray, FloatArray | None]:
        m = self._m_for(order)
        fresh = m not in state.selections
        out = irw_derivative(state, order, m, want_se=want_se)
        if fresh:
            self._update_info(m)
        return out

    def _derivative_cov_1d(self, state: IRWState, t: FloatArray, order: int) -> FloatArray:
        return irw_derivative_cov(state, order, self._m_for(order))
