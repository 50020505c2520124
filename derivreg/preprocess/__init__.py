"""Derivative estimators ("preprocessors") and the :func:`derivative` front door.

One class per method, each in its own module, registered here by name. ``method="auto"`` chooses
and tunes an estimator from the data and records what it chose in ``.attrs["info"]``.
"""

from __future__ import annotations

import importlib
from typing import Any

from derivreg.exceptions import DataError, MethodNotAvailableError
from derivreg.preprocess.base import Preprocessor, derivative_name

__all__ = [
    "METHODS",
    "Differencing",
    "GaussianProcess",
    "Integrated",
    "KalmanSmoother",
    "Preprocessor",
    "SavitzkyGolay",
    "SmoothingSpline",
    "WindowedFourier",
    "derivative",
    "derivative_name",
    "get_preprocessor",
]

#: method name -> "module:Class"
_REGISTRY: dict[str, str] = {
    "difference": "derivreg.preprocess.differencing:Differencing",
    "savgol": "derivreg.preprocess.savgol:SavitzkyGolay",
    "fourier": "derivreg.preprocess.fourier:WindowedFourier",
    "spline": "derivreg.preprocess.spline:SmoothingSpline",
    "kalman": "derivreg.preprocess.kalman:KalmanSmoother",
    "gp": "derivreg.preprocess.gp:GaussianProcess",
    "auto": "derivreg.preprocess.auto:AutoDerivative",
}
_CLASSES = {
    "Differencing": "difference",
    "SavitzkyGolay": "savgol",
    "WindowedFourier": "fourier",
    "SmoothingSpline": "spline",
    "KalmanSmoother": "kalman",
    "GaussianProcess": "gp",
    "AutoDerivative": "auto",
}
METHODS: tuple[str, ...] = tuple(_REGISTRY)


def _load(path: str) -> type[Preprocessor]:
    module, _, cls = path.partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            raise MethodNotAvailableError(f"{cls} is not available in this version") from exc
        raise
    return getattr(mod, cls)


def __getattr__(name: str) -> Any:
    if name in _CLASSES:
        return _load(_REGISTRY[_CLASSES[name]])
    if name == "Integrated":
        return _load("derivreg.preprocess.integrated:Integrated")
    raise AttributeError(f"module 'derivreg.preprocess' has no attribute {name!r}")


def get_preprocessor(method: str | Preprocessor = "auto", **options: Any) -> Preprocessor:
    """A preprocessor instance from a method name (with options) or an instance (as is)."""
    if isinstance(method, Preprocessor):
        if options:
            raise DataError("options cannot be combined with a preprocessor instance")
        return method
    if isinstance(method, type) and issubclass(method, Preprocessor):
        return method(**options)
    if not isinstance(method, str) or method not in _REGISTRY:
        raise DataError(f"unknown derivative method {method!r}; choose one of {list(_REGISTRY)}")
    cls = _load(_REGISTRY[method])
    try:
        return cls(**options)
    except TypeError as exc:
        raise DataError(f"bad option for method={method!r}: {exc}") from exc


def derivative(
    data: Any,
    method: str | Preprocessor = "auto",
    order: int = 1,
    time: Any = None,
    time_unit: str = "s",
    *,
    segment: Any = None,
    nan_policy: str = "raise",
    return_se: bool = False,
    columns: list[str] | None = None,
    **options: Any,
) -> Any:
    """Estimate the ``order``-th time derivative of sampled series.

    Parameters
    ----------
    data : Series, DataFrame or ndarray
        Samples in rows, indexed by time (numeric, ``DatetimeIndex`` or ``TimedeltaIndex``), or
        with a ``time=`` column or array.
    method : str or Preprocessor
        ``"difference"``, ``"savgol"``, ``"fourier"``, ``"spline"``, ``"kalman"``, ``"gp"`` or
        ``"auto"`` (default: chooses and tunes a method and says what it chose in ``.attrs``).
    order : int
        Derivative order (1-3).
    time, time_unit, segment, nan_policy
        See :func:`derivreg.timebase.prepare_data`.
    return_se : bool
        Return pointwise standard errors too (methods that have them).
    **options
        Passed to the estimator's ``__init__``.

    Returns
    -------
    Same kind as ``data``: a Series named ``d(x)``, a DataFrame with columns ``d(x)``, or an
    ndarray; NaN where the derivative is undefined.
    """
    est = get_preprocessor(method, **options)
    est.fit(
        data,
        columns=columns,
        time=time,
        time_unit=time_unit,
        segment=segment,
        nan_policy=nan_policy,  # type: ignore[arg-type]
    )
    return est.derivative(order, return_se=return_se)
