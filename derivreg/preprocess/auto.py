"""``method="auto"``: choose and tune a derivative estimator from the data, and say why.

Rules (measured on pynumdiff-style test signals, see the module tests and the report):

* any missing value (NaN) in a used column -> :class:`~derivreg.preprocess.kalman.KalmanSmoother`
  (integrated random walk of order 3, ``q`` and ``r`` by maximum likelihood): it estimates
  through the gaps;
* otherwise -> :class:`~derivreg.preprocess.spline.SmoothingSpline`, quintic (penalty order 3),
  smoothing by REML. On the test signals the quintic REML spline has the lowest worst-case
  derivative RMSE relative to an oracle cubic spline among {cubic, quintic} x {GCV, REML};
  GCV is erratic on smooth monotone signals (logistic growth) and the cubic REML spline
  undersmooths very smooth ones;
* a segment with fewer than 8 points -> the cubic spline (penalty order 2; it needs 4 points)
  when derivatives up to order 2 are enough, since a quintic has too many free parameters.

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
from derivreg.preprocess.spline import SmoothingSpline
from derivreg.timebase import prepare_data

__all__ = ["AutoDerivative"]

#: segments shorter than this get the cubic instead of the quintic spline
_SMALL_N = 8


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
        if n_min < _SMALL_N:
            return SmoothingSpline(criterion=self.criterion, penalty_order=2), (
                f"only {n_min} points in the shortest segment: cubic smoothing spline "
                f"(fewer free parameters than the quintic), smoothing by {self.criterion}"
            )
        return SmoothingSpline(criterion=self.criterion, penalty_order=3), (
            f"complete data: quintic smoothing spline (penalty order 3, continuous derivatives "
            f"up to order 4), smoothing by {self.criterion}"
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
            est = SmoothingSpline(criterion=self.criterion, penalty_order=3)
            why = "nan_policy='drop': rows with NaN dropped, quintic smoothing spline"
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
        self, state: Any, t: FloatArray, order: int
    ) -> tuple[FloatArray, FloatArray | None]:
        return self.estimator_._derivative_1d(state, t, order)

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
