"""State-space (Kalman) smoothing of an integrated random walk: derivatives with missing data.

Model
-----
State ``x(t) = (f, f', ..., f^(m-1))`` with ``f^(m)`` white noise of intensity ``q`` (the
integrated random walk of order ``m``); observations ``y_k = f(t_k) + eps_k``,
``eps_k ~ N(0, r)``; diffuse initial state. Between samples ``delta`` apart
``x_{k+1} = T x_k + eta_k`` with ``T_ij = delta^(j-i)/(j-i)!`` and
``Cov eta = q Q``, ``Q_ij = delta^(2m-i-j+1) / ((2m-i-j+1)(m-i)!(m-j)!)`` (METHODS.md section 1).

``q`` and ``r`` are estimated by maximum likelihood (the diffuse likelihood, ``r`` profiled out
analytically, ``lam = r / q`` by a one-dimensional search) unless given. The smoothed mean is
the natural smoothing spline of penalty order ``m`` with ``lam = r / q``; the smoothed state
covariance gives pointwise SEs of ``f, ..., f^(m-1)`` (``band="posterior"``); the default
``band="calibrated"`` turns them into the frequentist variance plus an estimated squared bias,
capped at the posterior variance (see :class:`KalmanSmoother`). Missing values (NaN) are skipped
by the likelihood and still get smoothed estimates. The smoother is computed in O(n) by the
banded solver shared with :mod:`derivreg.preprocess.spline` (not a Python-loop Kalman filter,
which would take minutes at 10^6 points); the result is the Rauch-Tung-Striebel smoother's and
the likelihood equals statsmodels' exact diffuse likelihood up to a constant (tested). Limit:
the banded information form loses digits when the signal exceeds the noise by ~1e5 in amplitude
(see :mod:`derivreg.preprocess._banded`); statsmodels' covariance form does not.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from derivreg._typing import FloatArray
from derivreg.exceptions import DataError, MethodNotAvailableError
from derivreg.preprocess.base import Preprocessor
from derivreg.preprocess.spline import (
    BANDS,
    IRWState,
    fit_irw,
    irw_derivative,
    irw_derivative_cov,
    irw_info,
)

__all__ = ["KalmanSmoother"]


def _check_positive(name: str, value: Any) -> None:
    if value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.integer, np.floating))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise DataError(f"{name} must be a positive finite number or None, got {value!r}")


class KalmanSmoother(Preprocessor):
    """Integrated-random-walk state-space smoother with ML noise parameters and SEs.

    Parameters
    ----------
    order : {2, 3, 4}
        Order ``m`` of the integrated random walk = number of state components
        ``(f, f', ..., f^(m-1))``: derivatives up to ``m - 1`` are available, with SEs.
    q : float, optional
        Intensity of the white noise driving ``f^(m)`` (caller's time and value units);
        default: maximum likelihood.
    r : float, optional
        Measurement-noise variance; default: maximum likelihood.
    band : {"calibrated", "posterior"}
        Pointwise SEs: ``"calibrated"`` (default) as in
        :class:`~derivreg.preprocess.spline.SmoothingSpline` (frequentist variance plus an
        estimated squared bias, capped at the posterior variance; see
        :func:`~derivreg.preprocess.spline.irw_derivative`); ``"posterior"`` the smoothed state
        SDs of the model (nominal coverage when the signal follows the integrated random walk,
        conservative for derivatives of signals smoother than that). Measured slope coverage
        of the 95% band (401 points, dt = 0.01, noise SD 0.1, 40 draws), calibrated /
        posterior: 0.94-0.98 / 0.97-0.99 on the smooth signals of ``benchmarks/derivatives.py``
        (numbers in :class:`~derivreg.preprocess.spline.SmoothingSpline`); over 200 draws of
        the walk itself 0.914 / 0.943 (order 2), 0.893 / 0.927 (order 3); with 50 of the 401
        points missing (a 0.5 s gap), inside the gap (200 draws): sum of sines 0.986 / 0.998,
        smooth GP draws 0.959 / 0.984, walk draws 0.911 / 0.939 (order 2), 0.854 / 0.901
        (order 3). The default was ``"posterior"`` before (it over-covers the slope of smooth
        signals: 0.97-0.99). ``derivative_cov`` is the posterior covariance in both cases.
    """

    name: ClassVar[str] = "kalman"
    provides_se: ClassVar[bool] = True
    handles_missing: ClassVar[bool] = True
    max_order: ClassVar[int] = 3
    _se_optional: ClassVar[bool] = True

    def __init__(
        self,
        order: int = 3,
        q: float | None = None,
        r: float | None = None,
        band: str = "calibrated",
    ) -> None:
        self.order = order
        self.q = q
        self.r = r
        self.band = band

    def _check_params(self) -> None:
        m = self.order
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or not 2 <= m <= 4:
            raise DataError(f"order (of the integrated random walk) must be 2, 3 or 4, got {m!r}")
        _check_positive("q", self.q)
        _check_positive("r", self.r)
        if self.band not in BANDS:
            raise DataError(f"band must be one of {BANDS}, got {self.band!r}")

    def min_points(self) -> int:
        self._check_params()
        return int(self.order) + 2

    def fit(self, data: Any, **kwargs: Any) -> KalmanSmoother:  # type: ignore[override]
        self._check_params()
        super().fit(data, **kwargs)
        self._finish_fit()
        return self

    def _finish_fit(self) -> None:
        m = int(self.order)
        per: dict[str, Any] = {}
        for (j, i), st in self.states_.items():
            key = self._state_key(j, i)
            sel = st.selections[m]
            neg2, _ = sel.problem.neg2_loglik(sel.fit, sel.r)
            n_obs = int(st.w.sum())
            info = irw_info(st, m)
            info.update(
                {
                    "r": sel.r * st.scale**2,
                    "loglik": -0.5 * neg2 - n_obs * math.log(st.scale),
                    "n_missing": int(len(st.w) - n_obs),
                }
            )
            info.pop("criterion", None)
            info["estimated"] = [p for p, v in (("q", self.q), ("r", self.r)) if v is None] or [
                "none"
            ]
            per[key] = info
        self.info_ = {"method": self.name, "series": per}
        if len(per) == 1:
            self.info_.update(next(iter(per.values())))

    def _fit_1d(self, t: FloatArray, y: FloatArray) -> IRWState:
        return fit_irw(t, y, int(self.order), criterion="reml", r=self.r, q=self.q, band=self.band)

    def _check_state_order(self, order: int) -> None:
        if order > int(self.order) - 1:
            raise MethodNotAvailableError(
                f"an order-{self.order} integrated random walk has states up to derivative "
                f"{int(self.order) - 1}; use KalmanSmoother(order={order + 1}) for order {order}"
            )

    def _derivative_1d(
        self, state: IRWState, t: FloatArray, order: int, want_se: bool = True
    ) -> tuple[FloatArray, FloatArray | None]:
        self._check_state_order(order)
        return irw_derivative(state, order, int(self.order), want_se=want_se)

    def _derivative_cov_1d(self, state: IRWState, t: FloatArray, order: int) -> FloatArray:
        self._check_state_order(order)
        return irw_derivative_cov(state, order, int(self.order))
