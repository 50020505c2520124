"""The pandas accessor: ``df.derivreg.derivative(...)`` and ``df.derivreg.fit(...)``.

A thin layer over :func:`derivreg.derivative` and :func:`derivreg.fit`: the DataFrame (or Series)
is passed as ``data`` and every other argument is forwarded unchanged, so the accessor and the
functions always give the same answer.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

__all__ = ["DerivregFrameAccessor", "DerivregSeriesAccessor"]


@pd.api.extensions.register_dataframe_accessor("derivreg")
class DerivregFrameAccessor:
    """``df.derivreg``: derivative estimation and relation fitting on a DataFrame."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self._frame = frame

    def derivative(
        self,
        columns: str | list[str] | None = None,
        method: Any = "auto",
        order: int = 1,
        **kwargs: Any,
    ) -> Any:
        """Derivative of one column (a Series) or of several (a DataFrame).

        ``df.derivreg.derivative("x", method="spline")`` equals
        ``dr.derivative(df["x"], method="spline")`` (also with ``time=``/``segment=`` columns: one
        column name always gives a Series, or ``estimate``/``se`` columns with ``return_se``); a
        list of columns (or ``None`` for all numeric columns other than ``time=``/``segment=``)
        returns a DataFrame of ``d(col)``.
        """
        from derivreg.preprocess import derivative, derivative_name

        if isinstance(columns, str):
            if kwargs.get("time") is None and kwargs.get("segment") is None:
                return derivative(self._frame[columns], method=method, order=order, **kwargs)
            # time/segment are columns of the frame: differentiate there, return the one column
            # as a Series (or estimate/se like a Series input) so the shape does not depend on them
            out = derivative(self._frame, method=method, order=order, columns=[columns], **kwargs)
            name = derivative_name(columns, order)
            if kwargs.get("return_se"):
                frame = pd.DataFrame(
                    {"estimate": out[name].to_numpy(), "se": out[f"se({name})"].to_numpy()},
                    index=out.index,
                )
                frame.attrs.update(out.attrs)
                return frame
            series = out[name]
            series.attrs.update(out.attrs)
            return series
        return derivative(self._frame, method=method, order=order, columns=columns, **kwargs)

    def fit(self, formula: Any, method: str = "auto", **kwargs: Any) -> Any:
        """Fit a differential relation: ``df.derivreg.fit(f)`` is ``dr.fit(f, data=df)``."""
        from derivreg.api import fit

        return fit(formula, data=self._frame, method=method, **kwargs)


@pd.api.extensions.register_series_accessor("derivreg")
class DerivregSeriesAccessor:
    """``s.derivreg.derivative(...)`` on a Series indexed by time."""

    def __init__(self, series: pd.Series) -> None:
        self._series = series

    def derivative(self, method: Any = "auto", order: int = 1, **kwargs: Any) -> Any:
        """Same as ``dr.derivative(series, method=..., order=...)``."""
        from derivreg.preprocess import derivative

        return derivative(self._series, method=method, order=order, **kwargs)
