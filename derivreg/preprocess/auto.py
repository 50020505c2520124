"""``method="auto"``: choose and tune a derivative estimator from the data, and say why.

Rules (measured on the pynumdiff test signals of ``benchmarks/derivatives.py`` and validated on
three more: a chirp, an exponential decay and random smooth Gaussian-process draws; see
``benchmarks/results/derivatives.md``):

* any missing value (NaN) in a used column -> :class:`~derivreg.preprocess.kalman.KalmanSmoother`
  (integrated random walk of order 3, ``q`` and ``r`` by maximum likelihood): it estimates
  through the gaps. Its bands are the posterior ones: inside a gap the estimate is an
  interpolation whose error is almost all bias, which the calibrated band's bias estimate does
  not see;
* otherwise -> a smoothing spline whose penalty order is chosen per series between cubic
  (``m = 2``) and quintic (``m = 3``) by the GCV score (an estimate of the prediction error,
  comparable across orders). The quintic suits smooth signals, the cubic signals with kinks
  (a triangle wave: its derivative jumps). Measured ratios of the derivative RMSE to the
  oracle cubic spline: a fixed quintic gives 1.09 on the triangle, the choice 1.03;
* smoothing: ``lam`` by REML for each order, then doubled (``DERIVATIVE_LAM_FACTOR``). REML
  (like GCV) targets the function; the derivative's variance grows faster as ``lam`` falls
  (``~ lam^(-(2k+1)/(2m))`` for order ``k``), so its risk is minimised at a larger ``lam``.
  Measured on 7 signals x 20 draws (RMSE / oracle, REML lam -> 2 x REML lam, quintic): sines
  1.04 -> 0.89, logistic 1.22 -> 1.17, linear3 0.87 -> 0.79, chirp 0.98 -> 0.86, GP draws
  0.93 -> 0.83; worse on the exponential decay (0.65 -> 0.71) and the triangle (1.09 -> 1.13,
  where the cubic is chosen instead). The smoothed series (order 0) uses the same ``lam``;
* pointwise SEs are calibrated (``band="calibrated"`` of
  :class:`~derivreg.preprocess.spline.SmoothingSpline`: frequentist variance plus an estimated
  squared bias) instead of the posterior SDs, which cover 0.99-1.00 of the derivative on smooth
  signals;
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

__all__ = ["DERIVATIVE_LAM_FACTOR", "AutoDerivative"]

#: segments shorter than this get the cubic spline only
_SMALL_N = 8
#: the criterion's lam is multiplied by this for derivative estimation (module docstring)
DERIVATIVE_LAM_FACTOR = 2.0


class _AutoSpline(SmoothingSpline):
    """Smoothing spline with the penalty order chosen per series (cubic or quintic, by GCV
    score), ``lam`` by ``criterion`` times ``DERIVATIVE_LAM_FACTOR``, calibrated bands."""

    def __init__(self, criterion: str = "reml", orders: tuple[int, ...] = (2, 3)) -> None:
        super().__init__(criterion=criterion, penalty_order=max(orders), band="calibrated")
        self.orders = orders

    def _fit_1d(self, t: FloatArray, y: FloatArray) -> IRWState:
        return fit_irw_select(
            t,
            y,
            self.orders,
            criterion=self.criterion,
            lam_factor=DERIVATIVE_LAM_FACTOR,
            band="calibrated",
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
    """

    name: ClassVar[str] = "auto"
    #: every estimator auto can choose provides pointwise SEs
    provides_se: ClassVar[bool] = True
    handles_missing: ClassVar[bool] = True
    max_order: ClassVar[int] = 3
    _se_optional: ClassVar[bool] = True

    def __init__(self, criterion: str = "reml") -> None:
        self.criterion = criterion

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
        lam = f"smoothing by {self.criterion} x {DERIVATIVE_LAM_FACTOR:g} (derivative target)"
        if n_min < _SMALL_N:
            return _AutoSpline(criterion=self.criterion, orders=(2,)), (
                f"only {n_min} points in the shortest segment: cubic smoothing spline "
                f"(fewer free parameters than the quintic), {lam}"
            )
        return _AutoSpline(criterion=self.criterion), (
            "complete data: smoothing spline, penalty order per series by GCV score between "
            f"cubic (2) and quintic (3), {lam}, calibrated bands"
        )

    def fit(self, data: Any, **kwargs: Any) -> AutoDerivative:  # type: ignore[override]
        if self.criterion not in ("reml", "gcv"):
            raise DataError(f"criterion must be 'reml' or 'gcv', got {self.criterion!r}")
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
            est = _AutoSpline(criterion=self.criterion)
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
