"""The preprocessor protocol: estimate derivatives of sampled series, per column and segment.

A preprocessor follows the scikit-learn conventions without depending on scikit-learn: parameters
are set in ``__init__`` and never changed by ``fit``; ``fit(data)`` validates the data through
:mod:`derivreg.timebase`, fits every (column, segment) series independently and returns ``self``;
fitted state ends in ``_``; ``derivative(order)`` returns the estimate in the caller's shape and on
the caller's index, NaN where it is undefined.

A subclass implements two numeric methods on plain arrays of one segment of one column:

``_fit_1d(t, y) -> state``
    ``t`` strictly increasing float times, ``y`` values (NaN only if ``handles_missing``).
``_derivative_1d(state, t, order) -> (estimate, se_or_None)``
    ``order`` 0 is the smoothed series (where the method has one).

and may implement ``_derivative_cov_1d(state, t, order)`` for the full covariance of the estimate.
"""

from __future__ import annotations

import abc
import inspect
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd

from derivreg._typing import FloatArray, NanPolicy
from derivreg.exceptions import DataError, MethodNotAvailableError, TooFewPointsError
from derivreg.timebase import SampledData, prepare_data, require_regular

__all__ = ["Preprocessor", "derivative_name"]


def derivative_name(name: str, order: int) -> str:
    """Column name of the ``order``-th derivative of ``name``: ``x``, ``d(x)``, ``d(x, 2)``."""
    if order == 0:
        return name
    if order == 1:
        return f"d({name})"
    return f"d({name}, {order})"


class Preprocessor(abc.ABC):
    """Base class of derivative estimators (see the module docstring for the protocol)."""

    #: registry name, e.g. ``"spline"``
    name: ClassVar[str] = ""
    #: the method needs a regular time grid within each segment
    requires_regular: ClassVar[bool] = False
    #: NaN values may be passed to ``_fit_1d`` (rows are kept, estimates produced there too)
    handles_missing: ClassVar[bool] = False
    #: ``_derivative_1d`` returns pointwise standard errors
    provides_se: ClassVar[bool] = False
    #: highest derivative order supported
    max_order: ClassVar[int] = 3
    #: ``_derivative_1d`` takes ``want_se=False`` to skip the SEs (they cost extra work)
    _se_optional: ClassVar[bool] = False

    # ------------------------------------------------------------------ parameters
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [
            p.name
            for p in sig.parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        ]

    def get_params(self) -> dict[str, Any]:
        """Parameters given to ``__init__`` (scikit-learn convention)."""
        return {k: getattr(self, k) for k in self._param_names()}

    def set_params(self, **params: Any) -> Self:
        """Set ``__init__`` parameters; unknown names raise :class:`DataError`."""
        valid = set(self._param_names())
        for k, v in params.items():
            if k not in valid:
                raise DataError(f"{type(self).__name__} has no parameter {k!r}; valid: {valid}")
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def min_points(self) -> int:
        """Fewest samples per segment the method accepts with the current parameters."""
        return 3

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        data: pd.DataFrame | pd.Series | np.ndarray,
        *,
        columns: list[str] | None = None,
        time: Any = None,
        time_unit: str = "s",
        segment: Any = None,
        nan_policy: NanPolicy = "raise",
    ) -> Self:
        """Fit the estimator to every column and segment of ``data``.

        Parameters
        ----------
        data : Series, DataFrame or ndarray
            Samples in rows. An ndarray needs ``time=``.
        columns : list of str, optional
            DataFrame columns to differentiate (default: all numeric except time/segment).
        time, time_unit, segment, nan_policy
            See :func:`derivreg.timebase.prepare_data`.

        Returns
        -------
        self
        """
        sd = prepare_data(
            data,
            columns,
            time=time,
            time_unit=time_unit,
            segment=segment,
            nan_policy=nan_policy,
            min_points=self.min_points(),
            allow_missing=self.handles_missing,
            what=f"data for {type(self).__name__}",
        )
        if self.requires_regular:
            for label, _, t in sd.iter_segments():
                where = "" if label is None else f" (segment {label!r})"
                require_regular(
                    t,
                    f"{type(self).__name__}{where}",
                    hint="use method='spline' or 'kalman' for irregular sampling, "
                    "or resample to a regular grid",
                )
        self.data_: SampledData = sd
        self.states_: dict[tuple[int, int], Any] = {}
        for j in range(len(sd.columns)):
            for i, pos in enumerate(sd.segments):
                self.states_[(j, i)] = self._fit_1d(sd.t[pos], sd.values[pos, j])
        if isinstance(data, pd.DataFrame):
            self._kind_ = "frame"
        elif isinstance(data, pd.Series):
            self._kind_ = "series"
        else:
            self._kind_ = "array1" if np.ndim(data) == 1 else "array2"
        self.n_features_in_ = len(sd.columns)
        self.feature_names_in_ = list(sd.columns)
        return self

    @abc.abstractmethod
    def _fit_1d(self, t: FloatArray, y: FloatArray) -> Any:
        """Fit one segment of one column; return whatever ``_derivative_1d`` needs."""

    @abc.abstractmethod
    def _derivative_1d(
        self, state: Any, t: FloatArray, order: int
    ) -> tuple[FloatArray, FloatArray | None]:
        """Estimate (and SE, or None) of the ``order``-th derivative at the times ``t``."""

    def _derivative_cov_1d(self, state: Any, t: FloatArray, order: int) -> FloatArray:
        raise MethodNotAvailableError(
            f"{type(self).__name__} does not provide the covariance of its derivative estimate"
        )

    # ------------------------------------------------------------------ results
    def _state_key(self, column: int, segment: int) -> str:
        """Label of one fitted series in ``info_``: the column, ``column[segment]`` if segmented."""
        key = str(self.data_.columns[column])
        label = self.data_.segment_labels[segment]
        return key if label is None else f"{key}[{label}]"

    def _check_fitted(self) -> None:
        if not hasattr(self, "states_"):
            raise DataError(f"{type(self).__name__} is not fitted; call fit(data) first")

    def _check_order(self, order: int) -> int:
        if isinstance(order, bool) or not isinstance(order, (int, np.integer)):
            raise DataError(f"order must be an integer, got {order!r}")
        order = int(order)
        if not 0 <= order <= self.max_order:
            raise DataError(
                f"{type(self).__name__} supports derivative orders 0..{self.max_order}, got {order}"
            )
        return order

    def derivative_arrays(
        self, order: int = 1, want_se: bool = True
    ) -> tuple[FloatArray, FloatArray | None]:
        """Estimate and SE as arrays ``(n_kept, n_columns)`` on the kept rows (internal use).

        ``want_se=False`` lets methods whose SEs cost extra work (``_se_optional``) skip them;
        the SE is then ``None``.
        """
        self._check_fitted()
        order = self._check_order(order)
        sd = self.data_
        lazy = not want_se and self._se_optional
        est = np.full(sd.values.shape, np.nan)
        se = np.full(sd.values.shape, np.nan) if self.provides_se and not lazy else None
        for (j, i), state in self.states_.items():
            pos = sd.segments[i]
            if lazy:
                e, s = self._derivative_1d(state, sd.t[pos], order, want_se=False)  # type: ignore[call-arg]
            else:
                e, s = self._derivative_1d(state, sd.t[pos], order)
            est[pos, j] = e
            if se is not None and s is not None:
                se[pos, j] = s
        return est, se

    def derivative_cov(self, order: int = 1, column: int = 0, segment: int = 0) -> FloatArray:
        """Covariance matrix of the derivative estimate on one segment of one column."""
        self._check_fitted()
        order = self._check_order(order)
        pos = self.data_.segments[segment]
        return self._derivative_cov_1d(self.states_[(column, segment)], self.data_.t[pos], order)

    def derivative(self, order: int = 1, return_se: bool = False) -> Any:
        """The ``order``-th derivative, in the shape and on the index of the fitted data.

        Parameters
        ----------
        order : int
            Derivative order (0 = the smoothed series where the method has one).
        return_se : bool
            Also return pointwise standard errors (``spline``, ``kalman``, ``gp``). A Series input
            then gives a DataFrame with columns ``estimate`` and ``se``; a DataFrame input gives
            columns ``d(x)`` and ``se(d(x))``; an ndarray input gives a tuple ``(estimate, se)``.
        """
        if return_se and not self.provides_se:
            raise MethodNotAvailableError(
                f"{type(self).__name__} has no pointwise standard errors; use 'spline', "
                "'kalman' or 'gp' for return_se=True"
            )
        if self._se_optional:  # skip SEs nobody asked for (some subclasses override the arrays)
            est, se = self.derivative_arrays(order, want_se=return_se)
        else:
            est, se = self.derivative_arrays(order)
        sd = self.data_
        est_c = sd.to_caller(est)
        se_c = sd.to_caller(se) if se is not None else None
        names = [derivative_name(c, order) for c in sd.columns]
        attrs = {
            "method": self.name,
            "order": int(order),
            "estimator": repr(self),
            "info": dict(getattr(self, "info_", {}) or {}),
        }
        if self._kind_ in ("array1", "array2"):
            if self._kind_ == "array1":
                est_c = est_c[:, 0]
                se_c = se_c[:, 0] if se_c is not None else None
            return (est_c, se_c) if return_se else est_c
        if self._kind_ == "series":
            if return_se:
                out = pd.DataFrame(
                    {"estimate": est_c[:, 0], "se": se_c[:, 0]},
                    index=sd.index,  # type: ignore[index]
                )
            else:
                out = pd.Series(est_c[:, 0], index=sd.index, name=names[0])
            out.attrs.update(attrs)
            return out
        cols: dict[str, FloatArray] = {}
        for j, nm in enumerate(names):
            cols[nm] = est_c[:, j]
            if return_se:
                cols[f"se({nm})"] = se_c[:, j]  # type: ignore[index]
        frame = pd.DataFrame(cols, index=sd.index)
        frame.attrs.update(attrs)
        return frame

    def smooth(self, return_se: bool = False) -> Any:
        """The smoothed series (derivative of order 0), where the method has one."""
        return self.derivative(0, return_se=return_se)

    def plot(self, ax: Any = None, **kwargs: Any) -> Any:
        """Data and derivative estimate with pointwise bands (needs matplotlib).

        See :func:`derivreg.plotting.plot_derivative` for the options.
        """
        from derivreg.plotting import plot_derivative

        return plot_derivative(self, ax=ax, **kwargs)


def check_min_points(n: int, need: int, who: str) -> None:
    """Raise :class:`TooFewPointsError` unless ``n >= need``."""
    if n < need:
        raise TooFewPointsError(f"{who} needs at least {need} points per segment, got {n}")
