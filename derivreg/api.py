"""``dr.fit``: the one-line front door over the model forms in :mod:`derivreg.models`.

``fit(formula, data, method=...)`` builds ``Model(formula, data, ...)`` for the form registered
under ``method`` and returns ``.fit(cov_type=...)``, statsmodels style (``smf.ols(...).fit()``).
"""

from __future__ import annotations

import importlib
from typing import Any

import pandas as pd

from derivreg.exceptions import DataError, MethodNotAvailableError
from derivreg.results import DiffRegResults

__all__ = ["MODELS", "fit", "get_model_class"]

#: method name -> "module:Class"
MODELS: dict[str, str] = {
    "gradient": "derivreg.models.gradient:GradientOLS",
    "integral": "derivreg.models.integral:IntegralOLS",
    "arimax": "derivreg.models.arimax:ARIMAX",
    "statespace": "derivreg.models.statespace:StateSpace",
    "fourier": "derivreg.models.frequency:FrequencyDomain",
    "trajectory": "derivreg.models.trajectory:Trajectory",
    "auto": "derivreg.models.auto:AutoModel",
}


def get_model_class(method: str) -> type:
    """The model class registered under ``method``.

    Raises
    ------
    DataError
        Unknown name.
    MethodNotAvailableError
        A known name whose module is not available in this version.
    """
    if not isinstance(method, str) or method not in MODELS:
        raise DataError(f"unknown method {method!r}; choose one of {list(MODELS)}")
    module, _, cls = MODELS[method].partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            raise MethodNotAvailableError(
                f"method={method!r} ({cls}) is not available in this version"
            ) from exc
        raise
    try:
        return getattr(mod, cls)
    except AttributeError:
        raise MethodNotAvailableError(
            f"method={method!r} ({cls}) is not available in this version"
        ) from None


def fit(
    formula: str | list[str] | dict[str, str],
    data: pd.DataFrame | pd.Series | Any,
    method: str = "auto",
    time: Any = None,
    time_unit: str = "s",
    segment: Any = None,
    input_hold: str = "linear",
    *,
    cov_type: str | None = None,
    nan_policy: str = "raise",
    **options: Any,
) -> DiffRegResults:
    """Fit a differential relation ``x^(p)(t) = Σ_j θ_j g_j(t)`` to sampled data.

    Parameters
    ----------
    formula : str, list of str or dict
        ``"d(x) ~ x + u"``, ``"d(x, 2) ~ d(x) + u + sign(d(x))"``, or several equations as a list
        or ``{name: formula}`` (fitted jointly, with cross-equation covariance).
    data : DataFrame
        Samples in rows, indexed by time or with a ``time=`` column.
    method : str
        ``"gradient"``, ``"integral"``, ``"arimax"``, ``"statespace"``, ``"fourier"``,
        ``"trajectory"`` or ``"auto"`` (the default: diagnoses the relation and the noise regime,
        chooses a form and says which and why in ``results.info["chosen"]`` and the summary).
    time, time_unit, segment, input_hold, nan_policy
        See :class:`derivreg.models.base.Model`.
    cov_type : str, optional
        Covariance estimator (default: the form's default, checked to cover).
    **options
        Form-specific options (e.g. ``derivative=`` for ``"gradient"``).

    Returns
    -------
    DiffRegResults
    """
    cls = get_model_class(method)
    model = cls(
        formula,
        data,
        time=time,
        time_unit=time_unit,
        segment=segment,
        input_hold=input_hold,
        nan_policy=nan_policy,
        **options,
    )
    return model.fit(cov_type=cov_type)
