"""``method="auto"``: choose and tune a derivative estimator from the data, and say why.

Rules (measured on the pynumdiff test signals of ``benchmarks/derivatives.py`` and validated on
three more: a chirp, an exponential decay and random smooth Gaussian-process draws; see
``benchmarks/results/derivatives.md``):

* any missing value (NaN) in a used column -> :class:`~derivreg.preprocess.kalman.KalmanSmoother`
  (integrated random walk of order 3, ``q`` and ``r`` by maximum likelihood): it estimates
  through the gaps. Its bands are its default calibrated ones; inside a gap the estimate is an
  interpolation whose error is almost all bias, which the calibrated band carries through its
  share of the posterior variance (measured slope coverage inside a 0.5 s gap, 200 draws:
  0.99 on sines, 0.96 on smooth GP draws, 0.91 / 0.85 on draws of the cubic / quintic prior,
  where the posterior band gives 0.93 / 0.90);
* otherwise -> a smoothing spline whose penalty order is chosen per series between cubic
  (``m = 2``) and quintic (``m = 3``) by the GCV score (an estimate of the prediction error,
  comparable across orders). The quintic suits smooth signals, the cubic signals with kinks
  (a triangle wave: its derivative jumps). Measured ratios of the derivative RMSE to the
  oracle cubic spline: a fixed quintic gives 1.09 on the triangle, the choice 1.01;
* smoothing: for each order the larger of the ``lam`` chosen by REML and by GCV. REML and GCV
  both target the function, and the derivative's risk is minimised at a larger ``lam`` (its
  variance grows faster as ``lam`` falls: ``~ lam^(-(2k+1)/(2m))`` for order ``k``). How much
  larger depends on the signal: none when it is as rough as the spline's prior (the posterior
  mean is then optimal for every derivative: a triangle wave for the cubic), more the smoother
  it is. REML undersmooths signals smoother than the prior while GCV does not, so ``lam_GCV /
  lam_REML`` grows with that excess smoothness; measured on 7 signals x 12 draws, the
  derivative-optimal ``lam`` is 1-2.6 x the larger of the two (the quintic on a triangle wave
  excepted: 0.13 x; the cubic is chosen there). Ratios to the oracle cubic spline
  (``benchmarks/results/derivatives.md``, 20 draws), REML x 2 (the previous rule) -> max(REML,
  GCV): sines 0.89 -> 0.76, triangle 1.03 -> 1.01 (scipy's GCV spline: 1.02), logistic 1.20 ->
  1.25 (scipy 1.30), linear3 0.85 -> 0.86, chirp 0.86 -> 0.86, exponential decay 0.76 -> 0.74,
  GP draws 0.86 -> 0.84; and on three signals added to check the rule (before: 12-20 draws of a
  separate run): damped sine 0.82 -> 0.78, Runge's function 1.09 -> 1.05, a rounded square wave
  1.05 -> 1.03. GCV alone sometimes undersmooths badly (the quintic on a triangle wave: lam 4x
  below REML's); the larger of the two never follows it there. The smoothed series (order 0)
  uses the same ``lam``. This is ``target="derivative"``, for derivatives as the result. The
  model forms (``dr.fit(..., method="gradient")``, derivatives inside the terms of the integral
  form) use ``target="regressor"``: REML's ``lam`` x 2, smoothing less where GCV would smooth
  more, because a regression averages the derivative's noise but not its bias. Measured (``d(x)
  ~ x + u``, multisine input, 200 points, measurement noise 0.005): the derivative target lowers
  the quintic's derivative RMSE from 0.0072 to 0.0067, but its bias makes the gradient form's
  residuals 2.3x what the derivative noise explains (BiasWarning) where REML x 2 covers
  0.91-0.92;
* pointwise SEs are calibrated (``band="calibrated"`` of
  :class:`~derivreg.preprocess.spline.SmoothingSpline`: frequentist variance plus an estimated
  squared bias, capped at the posterior variance) instead of the posterior SDs, which cover
  0.99-1.00 of the derivative on smooth signals. At the derivative target's larger ``lam`` the
  band is conservative: slope coverage 0.98-0.99 on the smooth benchmark signals, 0.94-0.96 on
  the exponential decay, Runge's function and the rounded square wave (the bias estimate's
  share for what it misses is sized for the REML ``lam``; without it the band covers only
  0.90-0.92 on the logistic curve and the exponential decay);
* a segment with fewer than 8 points -> the cubic spline only (a quintic has too many free
  parameters).

Both choices give pointwise standard errors, so ``provides_se`` is ``True`` for the class.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pandas as pd

from derivreg._typing import FloatArray
from derivreg.exceptions import DataError
from derivreg.preprocess.base import Preprocessor
from derivreg.preprocess.kalman import KalmanSmoother
from derivreg.preprocess.spline import (
    IRWState,
    SmoothingSpline,
    fit_irw_select,
    irw_derivative,
    irw_derivative_cov,
    irw_info,
)
from derivreg.timebase import prepare_data

__all__ = ["REGRESSOR_LAM_FACTOR", "TARGETS", "AutoDerivative"]

#: segments shorter than this get the cubic spline only
_SMALL_N = 8
#: what the smoothing is tuned for (module docstring)
TARGETS = ("derivative", "regressor")
#: ``target="regressor"``: the criterion's lam times this
REGRESSOR_LAM_FACTOR = 2.0


class _AutoSpline(SmoothingSpline):
    """Smoothing spline with the penalty order chosen per series (cubic or quintic, by GCV
    score), ``lam`` for the ``target`` (module docstring), calibrated bands."""

    def __init__(
        self,
        criterion: str = "reml",
        orders: tuple[int, ...] = (2, 3),
        target: str = "derivative",
    ) -> None:
        super().__init__(criterion=criterion, penalty_order=max(orders), band="calibrated")
        self.orders = orders
        self.target = target

    def _fit_1d(self, t: FloatArray, y: FloatArray) -> IRWState:
        return fit_irw_select(
            t,
            y,
            self.orders,
            criterion=self.criterion,
            band="calibrated",
            gcv_floor=self.target == "derivative",
            lam_factor=REGRESSOR_LAM_FACTOR if self.target == "regressor" else 1.0,
        )

    @staticmethod
    def _m_state(state: IRWState, order: int) -> int:
        m = int(state.m_chosen or 3)
        return m if order <= 2 * m - 2 else 3

    def _finish_fit(self) -> None:
        per: dict[str, Any] = {}
        for (j, i), st in self.states_.items():
            key = self._state_key(j, i)
            info = irw_info(st, int(st.m_chosen or 3))
            info["gcv_by_order"] = dict(st.order_scores)
            per[key] = info
        self.info_ = {"method": self.name, "series": per}
        if len(per) == 1:
            self.info_.update(next(iter(per.values())))

    def _derivative_1d(
        self, state: IRWState, t: FloatArray, order: int, want_se: bool = True
    ) -> tuple[FloatArray, FloatArray | None]:
        return irw_derivative(state, order, self._m_state(state, order), want_se=want_se)

    def _derivative_cov_1d(self, state: IRWState, t: FloatArray, order: int) -> FloatArray:
        return irw_derivative_cov(state, order, self._m_state(state, order))


def _fit_prepared(est: Any, sd: Any, data: Any) -> None:
    """``est.fit`` on already prepared data (saves a second validation pass at 10^6 points).

    Valid for the spline and the Kalman smoother: neither needs a regular grid, and NaN values
    reach ``_fit_1d`` only when present (then the Kalman smoother, which handles them, is used).
    """
    est._check_params()
    est.data_ = sd
    est.states_ = {}
    for j in range(len(sd.columns)):
        for i, pos in enumerate(sd.segments):
            est.states_[(j, i)] = est._fit_1d(sd.t[pos], sd.values[pos, j])
    if isinstance(data, pd.DataFrame):
        est._kind_ = "frame"
    elif isinstance(data, pd.Series):
        est._kind_ = "series"
    else:
        est._kind_ = "array1" if np.ndim(data) == 1 else "array2"
    est.n_features_in_ = len(sd.columns)
    est.feature_names_in_ = list(sd.columns)
    est._finish_fit()


class AutoDerivative(Preprocessor):
    """Chooses the derivative estimator from the data; ``info_`` records the choice and why.

    Parameters
    ----------
    criterion : {"reml", "gcv"}
        Smoothing criterion of the spline when the spline is chosen.
    target : {"derivative", "regressor"}
        What the spline's smoothing is tuned for. ``"derivative"`` (default): the derivative's
        own error, ``lam`` the larger of the criterion's and GCV's (module docstring).
        ``"regressor"``: the derivative as a regressor or response of a model fit, where the
        smoothing bias does not average out over samples and the variance does (the first
        stage of a two-step estimator should not be tuned for its own RMSE): the criterion's
        ``lam`` times ``REGRESSOR_LAM_FACTOR`` (2), the rule the model forms' coverage was
        measured with (``benchmarks/results/recovery_full.md``). The model classes use it.
    """

    name: ClassVar[str] = "auto"
    #: every estimator auto can choose provides pointwise SEs
    provides_se: ClassVar[bool] = True
    handles_missing: ClassVar[bool] = True
    max_order: ClassVar[int] = 3
    _se_optional: ClassVar[bool] = True

    def __init__(self, criterion: str = "reml", target: str = "derivative") -> None:
        self.criterion = criterion
        self.target = target

    def min_points(self) -> int:
        return 4

    def _choose(self, sd: Any) -> tuple[Preprocessor, str]:
        n_min = min(len(pos) for pos in sd.segments)
        if np.isnan(sd.values).any():
            n_nan = int(np.isnan(sd.values).sum())
            m = 3 if n_min - n_nan >= 5 else 2
            return KalmanSmoother(order=m), (
                f"{n_nan} missing value(s): state-space smoother (integrated random walk of "
                f"order {m}, q and r by maximum likelihood) estimates through the gaps"
            )
        if self.target == "regressor":
            lam = (
                f"smoothing by {self.criterion} x {REGRESSOR_LAM_FACTOR:g} (regressor target: "
                "the bias of a smoother derivative would not average out in a model fit)"
            )
        elif self.criterion != "gcv":
            lam = f"smoothing lam the larger of {self.criterion}'s and gcv's (derivative target)"
        else:
            lam = "smoothing by gcv"
        if n_min < _SMALL_N:
            return _AutoSpline(criterion=self.criterion, orders=(2,), target=self.target), (
                f"only {n_min} points in the shortest segment: cubic smoothing spline "
                f"(fewer free parameters than the quintic), {lam}"
            )
        return _AutoSpline(criterion=self.criterion, target=self.target), (
            "complete data: smoothing spline, penalty order per series by GCV score between "
            f"cubic (2) and quintic (3), {lam}, calibrated bands"
        )

    def fit(self, data: Any, **kwargs: Any) -> AutoDerivative:  # type: ignore[override]
        if self.criterion not in ("reml", "gcv"):
            raise DataError(f"criterion must be 'reml' or 'gcv', got {self.criterion!r}")
        if self.target not in TARGETS:
            raise DataError(f"target must be one of {TARGETS}, got {self.target!r}")
        sd = prepare_data(
            data,
            kwargs.get("columns"),
            time=kwargs.get("time"),
            time_unit=kwargs.get("time_unit", "s"),
            segment=kwargs.get("segment"),
            nan_policy=kwargs.get("nan_policy", "raise"),
            min_points=self.min_points(),
            allow_missing=True,
            what="data for AutoDerivative",
        )
        est, why = self._choose(sd)
        if kwargs.get("nan_policy", "raise") == "drop" and np.isnan(sd.values).any():
            # the caller asked to drop NaN rows: honour it and use the spline
            est = _AutoSpline(criterion=self.criterion, target=self.target)
            why = (
                "nan_policy='drop': rows with NaN dropped, smoothing spline (penalty order by "
                "GCV score)"
            )
            est.fit(data, **kwargs)
        else:
            _fit_prepared(est, sd, data)
        self.estimator_ = est
        self.data_ = est.data_
        self.states_ = est.states_
        self._kind_ = est._kind_
        self.n_features_in_ = est.n_features_in_
        self.feature_names_in_ = est.feature_names_in_
        inner = dict(getattr(est, "info_", {}) or {})
        self.info_ = {"chosen": est.name, "estimator": repr(est), "reason": why, **inner}
        self.info_["method"] = "auto"
        return self

    def _fit_1d(self, t: FloatArray, y: FloatArray) -> Any:  # pragma: no cover - delegated
        raise NotImplementedError("AutoDerivative fits through the chosen estimator")

    def _derivative_1d(
        self, state: Any, t: FloatArray, order: int, want_se: bool = True
    ) -> tuple[FloatArray, FloatArray | None]:
        if want_se:
            return self.estimator_._derivative_1d(state, t, order)
        return self.estimator_._derivative_1d(state, t, order, want_se=False)

    def _derivative_cov_1d(self, state: Any, t: FloatArray, order: int) -> FloatArray:
        return self.estimator_._derivative_cov_1d(state, t, order)

    def derivative(self, order: int = 1, return_se: bool = False) -> Any:
        """The ``order``-th derivative from the chosen estimator (``.attrs["info"]`` says which)."""
        self._check_fitted()
        self._check_order(order)
        out = super().derivative(order, return_se=return_se)
        inner = dict(getattr(self.estimator_, "info_", {}) or {})
        self.info_ = {**self.info_, **inner, "method": "auto"}
        if hasattr(out, "attrs"):
            out.attrs["info"] = dict(self.info_)
            out.attrs["method"] = "auto"
        return out
