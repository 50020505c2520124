"""Gaussian-process derivative estimator: the posterior of the derivative process.

Model (one segment of one column)::

    y_k = μ + f(t_k) + e_k,   f ~ GP(0, k),   e_k ~ N(0, σ_n²) i.i.d.,

with a stationary kernel ``k(a, b) = s² ρ((a - b)/ℓ)``: squared-exponential (``"se"``,
``ρ(r) = exp(-r²/2)``) or Matérn-ν with ν = 3/2 or 5/2, and an unknown constant ``μ`` under a
flat prior. With ``K = k(X, X) + σ_n² I`` and ``α = K⁻¹ (y - μ̂)`` the p-th derivative of ``f`` is
Gaussian a posteriori (METHODS.md §1)::

    E[f⁽ᵖ⁾(a)]              = ∂ᵖ_a k(a, X) α
    Cov[f⁽ᵖ⁾(a), f⁽ᵖ⁾(b)]   = ∂ᵖ_a ∂ᵖ_b k(a, b) - ∂ᵖ_a k(a, X) K⁻¹ ∂ᵖ_b k(X, b) + R_a R_b / c,

where the last term is the uncertainty of ``μ`` (Rasmussen & Williams 2006, §2.7, flat-prior
limit): ``μ̂ = 1ᵀK⁻¹y / c``, ``c = 1ᵀK⁻¹1``, ``R_a = h_a - 1ᵀK⁻¹ ∂ᵖ_b k(X, a)`` with ``h_a = 1``
for order 0 and 0 otherwise. Without it, centring the data would shrink ``s²`` and the bands.

For a stationary kernel ``k(a, b) = κ(a - b)``: ``∂ᵖ_a ∂^q_b k = (-1)^q κ⁽ᵖ⁺q⁾(a - b)``. These are
derivatives of the *process*, not the gradient of the kernel with respect to its hyperparameters.
A Matérn-ν process is mean-square differentiable p times iff ν > p: Matérn-3/2 supports order 1,
Matérn-5/2 orders 1-2, the squared-exponential orders 1-3.

Hyperparameters ``(ℓ, s², σ_n²)`` maximise the log marginal likelihood with ``μ`` integrated out
(the restricted likelihood) ``-½ (y - μ̂)ᵀ K⁻¹ (y - μ̂) - ½ log|K| - ½ log c - (n-1)/2 log 2π``
(L-BFGS-B on log-parameters with an analytic gradient, a few deterministic restarts). Time is
mapped to ``[0, 1]`` and the values are centred and scaled before the fit, so the optimisation is
independent of the units of ``t`` and ``y``; results are mapped back.

Dense linear algebra runs with one BLAS thread (``threadpoolctl``): on a shared machine
multi-threaded BLAS on these matrix sizes was measured 10-100 times slower under load.

The exact GP costs O(n³) time and O(n²) memory per series: above ``max_points`` samples per segment
the fit stops with :class:`~derivreg.exceptions.DataError`; use ``"spline"`` or ``"kalman"`` (the
state-space form of a smoothing-spline prior, O(n)) for long series.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Self

import numpy as np
import scipy.linalg as sla
import scipy.optimize as sopt
from numpy.polynomial import hermite_e as herm
from numpy.polynomial import polynomial as poly
from threadpoolctl import threadpool_limits

from derivreg._typing import FloatArray
from derivreg.exceptions import ConvergenceError, ConvergenceWarning, DataError, TooFewPointsError
from derivreg.preprocess.base import Preprocessor

__all__ = ["KERNELS", "GaussianProcess", "kernel_derivative"]

KernelName = Literal["se", "matern32", "matern52"]

#: kernel name -> highest derivative order of the process (mean-square differentiability)
KERNELS: dict[str, int] = {"se": 3, "matern32": 1, "matern52": 2}

# Matérn-(p+1/2): κ(r) = s² P(u) e^{-u}, u = sqrt(2ν) |r| / ℓ, P in increasing powers of u.
_MATERN: dict[str, tuple[float, FloatArray]] = {
    "matern32": (math.sqrt(3.0), np.array([1.0, 1.0])),
    "matern52": (math.sqrt(5.0), np.array([1.0, 1.0, 1.0 / 3.0])),
}

_JITTER = 1e-10  # relative to the unit signal variance of the normalised problem
_LOG_NOISE_MIN = math.log(1e-10)
#: largest series for which the hyperparameter uncertainty is propagated (memory: one Cholesky
#: factor per sigma point)
_LAPLACE_MAX = 2000


def _matern_poly(p0: FloatArray, m: int) -> FloatArray:
    """Polynomial ``Q_m`` with ``d^m/du^m [P(u) e^{-u}] = Q_m(u) e^{-u}``."""
    q = p0.copy()
    for _ in range(m):
        q = poly.polysub(poly.polyder(q), q) if len(q) > 1 else -q
    return np.atleast_1d(q)


def kernel_derivative(
    kernel: str, r: FloatArray, m: int, length_scale: float, signal_var: float = 1.0
) -> FloatArray:
    """m-th derivative ``κ⁽ᵐ⁾(r)`` of the stationary kernel ``κ(r) = k(a, b)``, ``r = a - b``.

    ``∂ᵖ_a ∂^q_b k(a, b) = (-1)^q κ⁽ᵖ⁺q⁾(a - b)``.

    Squared-exponential: ``κ⁽ᵐ⁾(r) = s² (-1)^m ℓ^{-m} He_m(r/ℓ) exp(-r²/(2ℓ²))`` (He: probabilists'
    Hermite polynomials). Matérn-(p+1/2): ``κ⁽ᵐ⁾(r) = s² sign(r)^m c^m Q_m(c|r|) e^{-c|r|}``,
    ``c = sqrt(2ν)/ℓ``, defined for ``m <= 2p`` (the value at ``r = 0`` is the continuous limit).

    Parameters
    ----------
    kernel : {"se", "matern32", "matern52"}
    r : ndarray
        Lags ``a - b``.
    m : int
        Derivative order, ``>= 0``.
    length_scale, signal_var : float
        ``ℓ`` and ``s²``.
    """
    r = np.asarray(r, dtype=float)
    ell = float(length_scale)
    if kernel == "se":
        z = r / ell
        coef = np.zeros(m + 1)
        coef[m] = 1.0
        return signal_var * (-1.0) ** m * ell**-m * herm.hermeval(z, coef) * np.exp(-0.5 * z * z)
    if kernel not in _MATERN:
        raise DataError(f"unknown kernel {kernel!r}; choose one of {list(KERNELS)}")
    if m > 2 * KERNELS[kernel]:
        raise DataError(
            f"the {kernel} kernel is only {2 * KERNELS[kernel]} times differentiable at 0, "
            f"derivative {m} requested"
        )
    sq, p0 = _MATERN[kernel]
    c = sq / ell
    u = c * np.abs(r)
    q = _matern_poly(p0, m)
    sign = np.sign(r) ** m if m % 2 else 1.0
    return signal_var * sign * c**m * poly.polyval(u, q) * np.exp(-u)


@dataclass
class _GPState:
    """Fitted GP of one series, in normalised units (time in [0, 1], unit-scale values)."""

    t0: float
    span: float
    y_mean: float
    y_scale: float
    x: FloatArray  # normalised observation times
    ell: float
    s2: float
    noise: float
    chol: tuple[FloatArray, bool]
    alpha: FloatArray  # K⁻¹ (z - μ̂)
    mu: float  # GLS estimate of the constant mean (normalised units)
    kinv1: FloatArray  # K⁻¹ 1
    c: float  # 1ᵀ K⁻¹ 1
    lml: float  # log marginal likelihood in the caller's units of y
    n_opt: int  # samples used to fit the hyperparameters (0: all fixed)
    #: equally weighted posteriors at sigma points of the Laplace approximation of the
    #: hyperparameters (empty: plug-in maximum likelihood)
    mixture: list[_GPState] = field(default_factory=list)
    uncertainty: str = "plug-in"


class GaussianProcess(Preprocessor):
    """Derivatives from the posterior of a Gaussian process (exact, O(n³)).

    Model: ``y_k = μ + f(t_k) + e_k``, ``f ~ GP(0, s² ρ((a-b)/ℓ))``, ``e_k ~ N(0, σ_n²)``, ``μ``
    flat; the p-th derivative estimate is ``E[f⁽ᵖ⁾(t) | y] = ∂ᵖ_a k(t, X) K⁻¹ (y - μ̂)`` with
    pointwise standard error from
    ``Var[f⁽ᵖ⁾(t) | y] = ∂ᵖ_a ∂ᵖ_b k(t, t) - ∂ᵖ_a k(t, X) K⁻¹ ∂ᵖ_b k(X, t) + R_t² / c`` (see the
    module docstring), averaged over the hyperparameter uncertainty (below).

    Parameters
    ----------
    kernel : {"se", "matern32", "matern52"}
        Squared-exponential (derivative orders 1-3), Matérn-3/2 (order 1) or Matérn-5/2
        (orders 1-2): a Matérn-ν process is mean-square differentiable p times iff ν > p.
    length_scale : float, optional
        Fixed ``ℓ`` in units of time; default: maximum marginal likelihood.
    signal_var : float, optional
        Fixed ``s²`` in units of ``y²``; default: maximum marginal likelihood.
    noise_var : float, optional
        Fixed measurement-noise variance ``σ_n²`` in units of ``y²``; default: maximum marginal
        likelihood.
    max_points : int
        Largest number of samples per segment (the exact GP is O(n³)); longer segments raise
        :class:`~derivreg.exceptions.DataError` pointing to ``"spline"``/``"kalman"``.
    n_restarts : int
        Number of starting points of the likelihood optimisation (deterministic, spread over
        length scales).
    opt_points : int
        The hyperparameters are fitted on at most this many samples (an even stride through
        longer segments: each likelihood evaluation is O(n³)); the posterior then conditions on
        all samples. ``info_`` records how many were used.
    hyperparameter_uncertainty : bool
        Propagate the uncertainty of the estimated hyperparameters into the bands: Laplace
        approximation ``log θ ~ N(θ̂, H⁻¹)`` (H the Hessian of the negative log likelihood), the
        posterior is averaged over its 2d sigma points (``θ̂ ± sqrt(d) H^{-1/2} e_i``, equal
        weights; mixture mean and variance). In the Monte-Carlo tests (functions drawn from the
        prior) plug-in ML bands covered 0.90-0.92 instead of 0.95 for n = 60 to 300; with this,
        0.93 (n = 100, orders 1 and 2). Used up to 2000 points per segment; parameters fixed by
        the caller or at a search bound stay fixed.

    Attributes
    ----------
    info_ : dict
        ``kernel`` and, per (column, segment), a dict in ``info_["series"]`` with the fitted
        ``length_scale``, ``signal_var``, ``noise_var`` (caller's units), the restricted
        ``log_marginal_likelihood``, ``n``, ``n_hyperparameter_fit`` (samples used for the
        hyperparameters) and ``hyperparameter_uncertainty`` (``"plug-in"`` or the Laplace SDs);
        with a single series these keys are also at the top level.
    """

    name: ClassVar[str] = "gp"
    requires_regular: ClassVar[bool] = False
    handles_missing: ClassVar[bool] = True
    provides_se: ClassVar[bool] = True
    max_order: ClassVar[int] = 3

    def __init__(
        self,
        kernel: KernelName = "se",
        length_scale: float | None = None,
        signal_var: float | None = None,
        noise_var: float | None = None,
        max_points: int = 5000,
        n_restarts: int = 3,
        opt_points: int = 500,
        hyperparameter_uncertainty: bool = True,
    ) -> None:
        self.kernel = kernel
        self.length_scale = length_scale
        self.signal_var = signal_var
        self.noise_var = noise_var
        self.max_points = max_points
        self.n_restarts = n_restarts
        self.opt_points = opt_points
        self.hyperparameter_uncertainty = hyperparameter_uncertainty

    def min_points(self) -> int:
        return 5

    # ------------------------------------------------------------------ checks
    def _validate(self) -> None:
        if self.kernel not in KERNELS:
            raise DataError(f"unknown kernel {self.kernel!r}; choose one of {list(KERNELS)}")
        for nm in ("length_scale", "signal_var"):
            v = getattr(self, nm)
            if v is not None and not (np.isfinite(v) and v > 0):
                raise DataError(f"{nm} must be a positive finite number or None, got {v!r}")
        if self.noise_var is not None and not (np.isfinite(self.noise_var) and self.noise_var >= 0):
            raise DataError(f"noise_var must be >= 0 or None, got {self.noise_var!r}")
        if int(self.max_points) < self.min_points():
            raise DataError(f"max_points must be at least {self.min_points()}")
        if int(self.n_restarts) < 1:
            raise DataError("n_restarts must be at least 1")
        if not isinstance(self.hyperparameter_uncertainty, (bool, np.bool_)):
            raise DataError("hyperparameter_uncertainty must be True or False")
        if int(self.opt_points) < self.min_points():
            raise DataError(f"opt_points must be at least {self.min_points()}")

    def _check_order(self, order: int) -> int:
        order = super()._check_order(order)
        kmax = KERNELS.get(self.kernel, self.max_order)
        if order > kmax:
            nu = {"matern32": "3/2", "matern52": "5/2"}.get(self.kernel, "")
            raise DataError(
                f"a Matérn-{nu} process is mean-square differentiable only {kmax} time(s) "
                f"(ν > p is needed for the p-th derivative); order {order} needs "
                f"kernel='matern52' (order <= 2) or kernel='se' (order <= 3)"
            )
        return order

    # ------------------------------------------------------------------ fitting
    def fit(self, data: Any, **kwargs: Any) -> Self:
        """Fit the GP to every column and segment (see :meth:`Preprocessor.fit`)."""
        self._validate()
        with threadpool_limits(limits=1):
            super().fit(data, **kwargs)
        series = []
        for (j, i), st in self.states_.items():
            series.append(
                {
                    "column": self.data_.columns[j],
                    "segment": self.data_.segment_labels[i],
                    "length_scale": st.ell * st.span,
                    "signal_var": st.s2 * st.y_scale**2,
                    "noise_var": st.noise * st.y_scale**2,
                    "log_marginal_likelihood": st.lml,
                    "n": int(st.x.size),
                    "n_hyperparameter_fit": st.n_opt,
                    "hyperparameter_uncertainty": st.uncertainty,
                }
            )
        info: dict[str, Any] = {"kernel": self.kernel, "series": series}
        if len(series) == 1:
            info.update({k: v for k, v in series[0].items() if k not in ("column", "segment")})
        self.info_ = info
        return self

    def _gram(self, x: FloatArray, ell: float, s2: float, noise: float) -> FloatArray:
        """``K = s² ρ(|x_i - x_j|/ℓ) + (σ_n² + jitter) I``."""
        k, _ = self._kernel0(np.abs(x[:, None] - x[None, :]), ell)
        k *= s2
        k[np.diag_indices_from(k)] += noise + _JITTER
        return k

    def _kernel0(self, absr: FloatArray, ell: float) -> tuple[FloatArray, FloatArray]:
        """Unit-variance ``κ(|r|)`` and ``∂κ/∂ log ℓ`` on a matrix of absolute lags."""
        if self.kernel == "se":
            z2 = absr / ell
            z2 *= z2
            kf = np.exp(-0.5 * z2)
            z2 *= kf
            return kf, z2
        sq, p0 = _MATERN[self.kernel]
        u = absr * (sq / ell)
        e = np.exp(-u)
        kf = poly.polyval(u, p0) * e
        dk = -u * poly.polyval(u, _matern_poly(p0, 1)) * e
        return kf, dk

    def _neg_lml(
        self,
        theta: FloatArray,
        free: list[str],
        fixed: dict[str, float],
        absr: FloatArray,
        y: FloatArray,
    ) -> tuple[float, FloatArray]:
        """Negative restricted log likelihood and its gradient in the free log-parameters.

        ``-log p(y) = ½ yᵀPy + ½ log|K| + ½ log c + (n-1)/2 log 2π`` with
        ``P = K⁻¹ - K⁻¹11ᵀK⁻¹/c``, ``c = 1ᵀK⁻¹1`` (constant mean under a flat prior);
        ``∂/∂θ = -½ tr((ααᵀ - P) ∂K/∂θ)`` with ``α = Py``.
        """
        par = dict(fixed)
        par.update({nm: math.exp(v) for nm, v in zip(free, theta, strict=True)})
        ell, s2, noise = par["ell"], par["s2"], par["noise"]
        kf, dk = self._kernel0(absr, ell)
        k = s2 * kf
        k[np.diag_indices_from(k)] += noise + _JITTER
        try:
            cf = sla.cho_factor(k, lower=True, overwrite_a=True, check_finite=False)
        except np.linalg.LinAlgError:
            return 1e25, np.zeros_like(theta)
        del k
        n = y.size
        sol = sla.cho_solve(cf, np.column_stack([y, np.ones(n)]), check_finite=False)
        kinv1 = sol[:, 1]
        c = float(kinv1.sum())
        alpha = sol[:, 0] - (sol[:, 0].sum() / c) * kinv1
        nll = (
            0.5 * y @ alpha
            + np.log(np.diag(cf[0])).sum()
            + 0.5 * math.log(c)
            + 0.5 * (n - 1) * math.log(2 * math.pi)
        )
        if not (np.isfinite(nll) and c > 0):
            return 1e25, np.zeros_like(theta)
        grad = np.empty_like(theta)
        if not free:
            return float(nll), grad
        kinv, info = sla.lapack.dpotri(cf[0], lower=1, overwrite_c=True)
        if info != 0:
            return 1e25, np.zeros_like(theta)
        kinv = np.tril(kinv)
        kinv = kinv + np.tril(kinv, -1).T
        kinv -= np.outer(kinv1 / c, kinv1)  # P
        # tr(W dK) with W = ααᵀ - P (both symmetric)
        for g, nm in enumerate(free):
            if nm == "ell":
                tr = alpha @ dk @ alpha - np.vdot(kinv, dk)
                grad[g] = -0.5 * s2 * tr
            elif nm == "s2":
                tr = alpha @ kf @ alpha - np.vdot(kinv, kf)
                grad[g] = -0.5 * s2 * tr
            else:
                tr = alpha @ alpha - np.trace(kinv)
                grad[g] = -0.5 * noise * tr
        return float(nll), grad

    def _fit_1d(self, t: FloatArray, y: FloatArray) -> _GPState:
        ok = np.isfinite(y)
        n = int(ok.sum())
        if n > self.max_points:
            raise DataError(
                f"GaussianProcess is exact and O(n³): {n} points in one segment exceed "
                f"max_points={self.max_points}; use method='spline' or method='kalman' "
                "(O(n), with standard errors) for long series, or raise max_points"
            )
        if n < self.min_points():
            raise TooFewPointsError(
                f"GaussianProcess needs at least {self.min_points()} finite values per segment, "
                f"got {n}"
            )
        t0 = float(t[0])
        span = float(t[-1] - t[0])
        x = (t[ok] - t0) / span
        yo = y[ok]
        y_mean = float(yo.mean())
        y_scale = float(yo.std())
        if not y_scale > 0:
            y_scale = 1.0
        z = (yo - y_mean) / y_scale

        fixed: dict[str, float] = {}
        if self.length_scale is not None:
            fixed["ell"] = float(self.length_scale) / span
        if self.signal_var is not None:
            fixed["s2"] = float(self.signal_var) / y_scale**2
        if self.noise_var is not None:
            fixed["noise"] = float(self.noise_var) / y_scale**2
        free = [nm for nm in ("ell", "s2", "noise") if nm not in fixed]

        n_opt = 0
        if free:
            # hyperparameters from at most opt_points samples (an even stride through the segment)
            step = max(1, math.ceil(n / int(self.opt_points)))
            xs, zs = x[::step], z[::step]
            n_opt = int(xs.size)
            absr = np.abs(xs[:, None] - xs[None, :])
            theta = self._optimise(free, fixed, absr, zs, float(np.median(np.diff(xs))))
            del absr
            par = dict(fixed)
            par.update({nm: math.exp(v) for nm, v in zip(free, theta, strict=True)})
        else:
            par = fixed
        state = self._condition(t0, span, y_mean, y_scale, x, z, par, n_opt)
        if free and self.hyperparameter_uncertainty and n <= _LAPLACE_MAX:
            self._laplace_mixture(state, z, free, par)
        return state

    def _condition(
        self,
        t0: float,
        span: float,
        y_mean: float,
        y_scale: float,
        x: FloatArray,
        z: FloatArray,
        par: dict[str, float],
        n_opt: int,
    ) -> _GPState:
        """Condition the GP with hyperparameters ``par`` (normalised units) on ``(x, z)``."""
        n = x.size
        ell, s2, noise = par["ell"], par["s2"], par["noise"]
        cf = self._cholesky(self._gram(x, ell, s2, noise))
        sol = sla.cho_solve(cf, np.column_stack([z, np.ones(n)]), check_finite=False)
        kinv1 = sol[:, 1]
        c = float(kinv1.sum())
        mu = float(sol[:, 0].sum() / c)
        alpha = sol[:, 0] - mu * kinv1
        lml = -(
            0.5 * z @ alpha
            + np.log(np.diag(cf[0])).sum()
            + 0.5 * math.log(c)
            + 0.5 * (n - 1) * math.log(2 * math.pi)
        )
        # the flat-prior density of y is that of z times y_scale^-(n-1)
        lml -= (n - 1) * math.log(y_scale)
        return _GPState(
            t0, span, y_mean, y_scale, x, ell, s2, noise, cf, alpha, mu, kinv1, c, float(lml), n_opt
        )

    def _laplace_mixture(
        self, state: _GPState, z: FloatArray, free: list[str], par: dict[str, float]
    ) -> None:
        """Attach the sigma-point posteriors of the Laplace approximation to ``state``."""
        bounds = self._bounds(float(np.median(np.diff(state.x))))
        inner = [
            nm for nm in free if bounds[nm][0] + 1e-3 < math.log(par[nm]) < bounds[nm][1] - 1e-3
        ]
        if not inner:
            state.uncertainty = "plug-in (estimates at search bounds)"
            return
        fixed = {nm: v for nm, v in par.items() if nm not in inner}
        theta = np.array([math.log(par[nm]) for nm in inner])
        absr = np.abs(state.x[:, None] - state.x[None, :])
        d, h = theta.size, 1e-4
        hess = np.empty((d, d))
        for j in range(d):
            e = np.zeros(d)
            e[j] = h
            gp_ = self._neg_lml(theta + e, inner, fixed, absr, z)[1]
            gm_ = self._neg_lml(theta - e, inner, fixed, absr, z)[1]
            hess[:, j] = (gp_ - gm_) / (2 * h)
        del absr
        hess = 0.5 * (hess + hess.T)
        try:
            root = np.linalg.cholesky(np.linalg.inv(hess))
        except np.linalg.LinAlgError:
            state.uncertainty = "plug-in (likelihood Hessian not positive definite)"
            return
        # sigma points stay inside the search box: a flat likelihood (few points, a Hessian near
        # singular) put them at exp(1e3) and overflowed; the posterior is truncated to the box
        lo = np.array([bounds[nm][0] for nm in inner])
        hi = np.array([bounds[nm][1] for nm in inner])
        comps = []
        clipped = False
        try:
            for j in range(d):
                for sgn in (1.0, -1.0):
                    raw = theta + sgn * math.sqrt(d) * root[:, j]
                    th = np.clip(raw, lo, hi)
                    clipped = clipped or bool(np.any(th != raw))
                    p = dict(fixed)
                    p.update({nm: math.exp(v) for nm, v in zip(inner, th, strict=True)})
                    comps.append(
                        self._condition(
                            state.t0, state.span, state.y_mean, state.y_scale, state.x, z, p, 0
                        )
                    )
        except ConvergenceError:
            state.uncertainty = "plug-in (a sigma point's covariance is not positive definite)"
            return
        state.mixture = comps
        sd = np.sqrt(np.diag(root @ root.T))
        state.uncertainty = "laplace, SD of " + ", ".join(
            f"log {nm}: {v:.2g}" for nm, v in zip(inner, sd, strict=True)
        )
        if clipped:
            state.uncertainty += " (sigma points truncated to the search bounds)"

    @staticmethod
    def _cholesky(k: FloatArray) -> tuple[FloatArray, bool]:
        jitter = 0.0
        scale = float(np.mean(np.diag(k)))
        for _ in range(6):
            try:
                kk = k if jitter == 0 else k + jitter * scale * np.eye(k.shape[0])
                return sla.cho_factor(kk, lower=True, check_finite=False)
            except np.linalg.LinAlgError:
                jitter = 1e-10 if jitter == 0 else jitter * 100
        raise ConvergenceError("the GP covariance matrix is not positive definite")

    @staticmethod
    def _bounds(h: float) -> dict[str, tuple[float, float]]:
        """Search bounds of the log-hyperparameters (normalised units; ``h`` median step)."""
        return {
            "ell": (math.log(max(h / 4, 1e-6)), math.log(10.0)),
            "s2": (math.log(1e-6), math.log(1e4)),
            "noise": (_LOG_NOISE_MIN, math.log(10.0)),
        }

    def _optimise(
        self, free: list[str], fixed: dict[str, float], absr: FloatArray, z: FloatArray, h: float
    ) -> FloatArray:
        """Maximise the marginal likelihood over the free log-parameters (restarts over ℓ).

        ``h`` is the median sampling step of the (normalised) times behind ``absr``.
        """
        bounds_all = self._bounds(h)
        nr = int(self.n_restarts)
        lo, hi = math.log(max(5 * h, 0.01)), math.log(0.5)
        ell_starts = np.exp(np.linspace(hi, lo, nr)) if nr > 1 else np.array([0.1])
        best: tuple[FloatArray, float] | None = None
        for e0 in ell_starts:
            start = {"ell": math.log(e0), "s2": 0.0, "noise": math.log(0.05)}
            th0 = np.array([start[nm] for nm in free])
            bnds = [bounds_all[nm] for nm in free]
            th0 = np.clip(th0, [b[0] for b in bnds], [b[1] for b in bnds])
            res = sopt.minimize(
                self._neg_lml,
                th0,
                args=(free, fixed, absr, z),
                jac=True,
                method="L-BFGS-B",
                bounds=bnds,
            )
            if np.isfinite(res.fun) and res.fun < 1e24 and (best is None or res.fun < best[1]):
                best = (np.asarray(res.x, dtype=float), float(res.fun))
        if best is None:
            raise ConvergenceError(
                "the GP marginal-likelihood optimisation failed from every starting point; "
                "fix length_scale/noise_var or use method='spline'"
            )
        theta = best[0]
        if "ell" in free:
            lo_b, hi_b = bounds_all["ell"]
            g = theta[free.index("ell")]
            if g >= hi_b - 1e-6:
                warnings.warn(
                    "GP length scale reached its upper bound (10 × the segment span): the "
                    "series is smoother than the kernel can express at this span; check the "
                    "derivative against method='spline'",
                    ConvergenceWarning,
                    stacklevel=4,
                )
            elif g <= lo_b + 1e-6:
                warnings.warn(
                    "GP length scale reached its lower bound (a quarter of the sampling step): "
                    "the series looks like white noise and its derivative is not resolved",
                    ConvergenceWarning,
                    stacklevel=4,
                )
        return theta

    # ------------------------------------------------------------------ prediction
    def derivative_arrays(self, order: int = 1) -> tuple[FloatArray, FloatArray | None]:
        """Estimate and SE arrays on the kept rows (see :class:`Preprocessor`)."""
        with threadpool_limits(limits=1):
            return super().derivative_arrays(order)

    def derivative_cov(self, order: int = 1, column: int = 0, segment: int = 0) -> FloatArray:
        """Posterior covariance matrix of the ``order``-th derivative on one series."""
        with threadpool_limits(limits=1):
            return super().derivative_cov(order, column, segment)

    def _cross(self, state: _GPState, t: FloatArray, order: int) -> tuple[FloatArray, FloatArray]:
        """Normalised prediction points and ``G = ∂ᵖ_a k(a, X)`` (normalised units)."""
        xa = (np.asarray(t, dtype=float) - state.t0) / state.span
        g = kernel_derivative(
            self.kernel, xa[:, None] - state.x[None, :], order, state.ell, state.s2
        )
        return xa, g

    def _unit(self, state: _GPState, order: int) -> float:
        return state.y_scale / state.span**order

    @staticmethod
    def _mean_term(state: _GPState, g: FloatArray, order: int) -> FloatArray:
        """``R_a = h_a - 1ᵀK⁻¹ ∂ᵖ_b k(X, a)``: how the unknown mean enters the estimate at ``a``."""
        return (1.0 if order == 0 else 0.0) - g @ state.kinv1

    def _moments(
        self, state: _GPState, t: FloatArray, order: int, full: bool
    ) -> tuple[FloatArray, FloatArray]:
        """Posterior mean and variance (``full``: covariance) of ``f⁽ᵖ⁾`` in normalised units."""
        xa, g = self._cross(state, t, order)
        mean = g @ state.alpha
        v = sla.solve_triangular(state.chol[0], g.T, lower=True, check_finite=False)
        rm = self._mean_term(state, g, order)
        if full:
            prior = (-1.0) ** order * kernel_derivative(
                self.kernel, xa[:, None] - xa[None, :], 2 * order, state.ell, state.s2
            )
            cov = prior - v.T @ v + np.outer(rm, rm) / state.c
            return mean, 0.5 * (cov + cov.T)
        prior0 = (-1.0) ** order * kernel_derivative(self.kernel, np.zeros(1), 2 * order, state.ell)
        var = state.s2 * prior0[0] - np.einsum("ij,ij->j", v, v) + rm * rm / state.c
        return mean, var

    def _mixture_moments(
        self, state: _GPState, t: FloatArray, order: int, full: bool
    ) -> tuple[FloatArray, FloatArray]:
        """Moments of the equally weighted mixture over the sigma points (or the plug-in fit).

        Mean ``m̄ = mean_i m_i``; covariance ``mean_i C_i + mean_i (m_i - m̄)(m_i - m̄)ᵀ``.
        """
        comps = state.mixture or [state]
        moments = [self._moments(comp, t, order, full) for comp in comps]
        means = np.array(
            [
                m + (comp.mu if order == 0 else 0.0)
                for (m, _), comp in zip(moments, comps, strict=True)
            ]
        )
        mean = means.mean(axis=0)
        dev = means - mean
        within = np.mean([v for _, v in moments], axis=0)
        between = dev.T @ dev / len(comps) if full else np.mean(dev * dev, axis=0)
        return mean, within + between

    def _derivative_1d(
        self, state: _GPState, t: FloatArray, order: int
    ) -> tuple[FloatArray, FloatArray]:
        mean, var = self._mixture_moments(state, t, order, full=False)
        u = self._unit(state, order)
        est = mean * u
        if order == 0:
            est = est + state.y_mean
        return est, np.sqrt(np.clip(var, 0.0, None)) * u

    def _derivative_cov_1d(self, state: _GPState, t: FloatArray, order: int) -> FloatArray:
        """Full posterior covariance of ``f⁽ᵖ⁾`` at the times ``t`` (caller's units)."""
        _, cov = self._mixture_moments(state, t, order, full=True)
        cov = 0.5 * (cov + cov.T)
        return cov * self._unit(state, order) ** 2
