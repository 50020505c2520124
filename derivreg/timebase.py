"""Time axis, validation, segments and the NaN policy shared by every derivreg entry point.

All pandas handling of time happens here: callers get float times, float value arrays, the list of
segments (experiments that nothing may cross) and a way back to the caller's index.

Rules
-----
* A numeric index (or ``time=`` column) is used as given, as float.
* A ``DatetimeIndex``/``TimedeltaIndex`` (or datetime/timedelta column) is converted to floats in
  ``time_unit`` from the differences to the first stamp — never from raw integer nanoseconds, so no
  precision is lost to the epoch offset.
* Within each segment, times must be finite, strictly increasing and unique.
* ``nan_policy="raise"`` (default) raises on NaN values; ``"drop"`` drops rows with NaN in a used
  column and warns with :class:`~derivreg.exceptions.DataWarning`. Infinite values always raise.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from derivreg._typing import FloatArray, IntArray, NanPolicy
from derivreg.exceptions import (
    ColumnNotFoundError,
    DataError,
    DataWarning,
    IrregularSamplingError,
    LengthMismatchError,
    NonFiniteError,
    TimeIndexError,
    TooFewPointsError,
)

__all__ = [
    "SampledData",
    "check_time",
    "is_regular",
    "prepare_data",
    "require_regular",
    "time_values",
]

_TIME_UNITS = {"ns", "us", "ms", "s", "min", "h", "D"}


def _datetime_to_float(values: pd.Index | pd.Series, time_unit: str) -> FloatArray:
    if time_unit not in _TIME_UNITS:
        raise TimeIndexError(
            f"time_unit={time_unit!r} is not supported; use one of {sorted(_TIME_UNITS)}"
        )
    vals = pd.Index(values)
    if len(vals) == 0:
        return np.empty(0)
    if vals.isna().any():
        raise TimeIndexError("the time stamps contain NaT; remove those rows first")
    delta = vals - vals[0]
    return np.asarray(delta / pd.Timedelta(1, unit=time_unit), dtype=float)


def _to_float_time(values: Any, time_unit: str, what: str) -> FloatArray:
    if isinstance(values, (pd.DatetimeIndex, pd.TimedeltaIndex)):
        return _datetime_to_float(values, time_unit)
    if isinstance(values, (pd.Series, pd.Index)):
        if pd.api.types.is_datetime64_any_dtype(values) or pd.api.types.is_timedelta64_dtype(
            values
        ):
            return _datetime_to_float(values, time_unit)
        if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            raise TimeIndexError(
                f"{what} has dtype {values.dtype}; it must be numeric, datetime or timedelta "
                "(pass time='column' to use a column as time)"
            )
        return np.asarray(values, dtype=float)
    arr = np.asarray(values)
    if np.issubdtype(arr.dtype, np.datetime64) or np.issubdtype(arr.dtype, np.timedelta64):
        return _datetime_to_float(pd.Index(arr), time_unit)
    if not np.issubdtype(arr.dtype, np.number) or arr.dtype == bool:
        raise TimeIndexError(f"{what} must be numeric, datetime or timedelta, got {arr.dtype}")
    return np.asarray(arr, dtype=float).reshape(-1)


def time_values(
    data: pd.DataFrame | pd.Series | np.ndarray,
    time: str | Sequence[float] | np.ndarray | pd.Index | None = None,
    time_unit: str = "s",
) -> FloatArray:
    """Float time of every row of ``data``.

    Parameters
    ----------
    data : DataFrame, Series or ndarray
        The data whose rows are time samples.
    time : str, array-like or None
        ``None`` uses the index of a pandas object; a string names a column of a DataFrame; an
        array gives the times directly (required for an ndarray).
    time_unit : str
        Unit for datetime/timedelta time: one of ``ns, us, ms, s, min, h, D``.

    Returns
    -------
    ndarray of float, one time per row (not yet validated).
    """
    n = len(data)
    if isinstance(time, str):
        if not isinstance(data, pd.DataFrame):
            raise TimeIndexError(f"time={time!r} names a column, but data is not a DataFrame")
        if time not in data.columns:
            raise ColumnNotFoundError(
                f"time column {time!r} is not in the data; columns are {list(data.columns)}"
            )
        t = _to_float_time(data[time], time_unit, f"time column {time!r}")
    elif time is None:
        if isinstance(data, (pd.DataFrame, pd.Series)):
            if isinstance(data.index, pd.MultiIndex):
                raise TimeIndexError(
                    "a MultiIndex cannot be used as time; reset it and pass time= and segment="
                )
            t = _to_float_time(data.index, time_unit, "the index")
        else:
            raise TimeIndexError("an ndarray has no index: pass the sample times with time=")
    else:
        t = _to_float_time(time, time_unit, "time")
    if len(t) != n:
        raise LengthMismatchError(f"time has {len(t)} values but the data have {n} rows")
    return t


def check_time(t: FloatArray, *, what: str = "time", min_points: int = 1) -> None:
    """Validate one segment's times: finite, strictly increasing, unique, long enough.

    Raises
    ------
    TimeIndexError, TooFewPointsError
    """
    if len(t) < min_points:
        raise TooFewPointsError(
            f"{what} has {len(t)} usable points; at least {min_points} are needed"
        )
    if not np.all(np.isfinite(t)):
        raise TimeIndexError(f"{what} contains non-finite time values")
    if len(t) < 2:
        return
    dt = np.diff(t)
    if np.any(dt == 0):
        k = int(np.flatnonzero(dt == 0)[0])
        raise TimeIndexError(
            f"{what} has duplicate time stamps (first at position {k + 1}, t={t[k + 1]!r}); "
            "aggregate or drop duplicates first"
        )
    if np.any(dt < 0):
        k = int(np.flatnonzero(dt < 0)[0])
        raise TimeIndexError(
            f"{what} is not sorted (t decreases at position {k + 1}); sort by time first "
            "(e.g. df.sort_index())"
        )


def is_regular(t: FloatArray, rtol: float = 1e-6) -> bool:
    """True when the spacing of ``t`` is constant to a relative tolerance ``rtol``."""
    if len(t) < 3:
        return True
    dt = np.diff(t)
    h = np.median(dt)
    return bool(np.all(np.abs(dt - h) <= rtol * abs(h) + 1e-12 * np.max(np.abs(t))))


def require_regular(t: FloatArray, method: str, rtol: float = 1e-6, hint: str = "") -> float:
    """Return the step of a regular grid, or raise :class:`IrregularSamplingError`."""
    if not is_regular(t, rtol):
        dt = np.diff(t)
        msg = (
            f"{method} needs a regular time grid, but the spacing varies from {dt.min():.6g} "
            f"to {dt.max():.6g}"
        )
        if hint:
            msg += f"; {hint}"
        raise IrregularSamplingError(msg)
    return float(np.mean(np.diff(t))) if len(t) > 1 else float("nan")


@dataclass
class SampledData:
    """Validated numeric view of a data set: float time, values, segments, way back to pandas.

    Attributes
    ----------
    t : ndarray (n,)
        Float times of the kept rows.
    values : ndarray (n, k)
        Values of the used columns at the kept rows.
    columns : list of str
        Names of the columns of ``values``.
    segments : list of ndarray
        Positions (into ``t``/``values``) of the rows of each segment, in time order.
    segment_labels : list
        Label of each segment (``None`` for a single unnamed segment).
    rows : ndarray (n,)
        Positions of the kept rows in the caller's data.
    n_total : int
        Number of rows of the caller's data.
    index : pandas Index or None
        The caller's index (``None`` for ndarray input).
    """

    t: FloatArray
    values: FloatArray
    columns: list[str]
    segments: list[IntArray]
    segment_labels: list[Any]
    rows: IntArray
    n_total: int
    index: pd.Index | None = None
    time_unit: str = "s"
    n_dropped: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def nobs(self) -> int:
        return len(self.t)

    def column(self, name: str) -> FloatArray:
        """Values of one used column (kept rows)."""
        try:
            return self.values[:, self.columns.index(name)]
        except ValueError:
            raise ColumnNotFoundError(
                f"column {name!r} is not among the prepared columns {self.columns}"
            ) from None

    def iter_segments(self):
        """Yield ``(label, positions, t_segment)`` for each segment."""
        for label, pos in zip(self.segment_labels, self.segments, strict=True):
            yield label, pos, self.t[pos]

    def to_caller(self, values: np.ndarray, fill: float = np.nan) -> np.ndarray:
        """Place per-kept-row ``values`` (n, ...) back on the caller's rows, ``fill`` elsewhere."""
        values = np.asarray(values, dtype=float)
        out = np.full((self.n_total, *values.shape[1:]), fill, dtype=float)
        out[self.rows] = values
        return out

    @property
    def regular(self) -> bool:
        return all(is_regular(self.t[pos]) for pos in self.segments)


def _segment_codes(data: Any, segment: Any, n: int) -> tuple[np.ndarray, list[Any]]:
    if segment is None:
        return np.zeros(n, dtype=np.intp), [None]
    if isinstance(segment, str):
        if not isinstance(data, pd.DataFrame):
            raise DataError(f"segment={segment!r} names a column, but data is not a DataFrame")
        if segment not in data.columns:
            raise ColumnNotFoundError(
                f"segment column {segment!r} is not in the data; columns are {list(data.columns)}"
            )
        seg = data[segment]
    else:
        seg = pd.Series(np.asarray(segment))
        if len(seg) != n:
            raise LengthMismatchError(f"segment has {len(seg)} labels but the data have {n} rows")
    if pd.isna(seg).any():
        raise NonFiniteError("the segment labels contain missing values")
    codes, uniques = pd.factorize(pd.Series(np.asarray(seg)), sort=False)
    return codes.astype(np.intp), list(uniques)


def _select_values(
    data: Any, columns: Sequence[str] | None, exclude: set[str]
) -> tuple[np.ndarray, list[str]]:
    if isinstance(data, pd.DataFrame):
        if columns is None:
            columns = [
                c
                for c in data.columns
                if c not in exclude
                and pd.api.types.is_numeric_dtype(data[c])
                and not pd.api.types.is_bool_dtype(data[c])
            ]
            if not columns:
                raise DataError("the DataFrame has no numeric columns to use")
        missing = [c for c in columns if c not in data.columns]
        if missing:
            raise ColumnNotFoundError(
                f"column(s) {missing} not in the data; columns are {list(data.columns)}"
            )
        cols = [str(c) for c in columns]
        out = np.empty((len(data), len(cols)), dtype=float)
        for j, c in enumerate(columns):
            col = data[c]
            if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
                raise DataError(f"column {c!r} has dtype {col.dtype}; a numeric column is needed")
            out[:, j] = col.to_numpy(dtype=float, na_value=np.nan)
        return out, cols
    if isinstance(data, pd.Series):
        if not pd.api.types.is_numeric_dtype(data) or pd.api.types.is_bool_dtype(data):
            raise DataError(f"the Series has dtype {data.dtype}; a numeric Series is needed")
        name = "x" if data.name is None else str(data.name)
        return data.to_numpy(dtype=float, na_value=np.nan).reshape(-1, 1), [name]
    arr = np.asarray(data)
    if not np.issubdtype(arr.dtype, np.number) or arr.dtype == bool:
        raise DataError(f"data must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(float)
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    elif arr.ndim != 2:
        raise DataError(f"data must be 1-D or 2-D, got {arr.ndim} dimensions")
    names = list(columns) if columns is not None else [f"x{j}" for j in range(arr.shape[1])]
    if len(names) != arr.shape[1]:
        raise LengthMismatchError(f"{len(names)} column names for {arr.shape[1]} columns")
    return arr, [str(c) for c in names]


def prepare_data(
    data: pd.DataFrame | pd.Series | np.ndarray,
    columns: Sequence[str] | None = None,
    *,
    time: Any = None,
    time_unit: str = "s",
    segment: Any = None,
    nan_policy: NanPolicy = "raise",
    min_points: int = 2,
    allow_missing: bool = False,
    what: str = "data",
) -> SampledData:
    """Validate data and convert it to float arrays with time and segments.

    Parameters
    ----------
    data : DataFrame, Series or ndarray
        Rows are samples in time.
    columns : sequence of str, optional
        Columns to use; default all numeric columns other than ``time`` and ``segment``.
    time, time_unit
        See :func:`time_values`.
    segment : str or array-like, optional
        Column name (or labels) marking independent experiments. Each segment is validated and
        processed on its own; its rows need not be contiguous but must be time-sorted.
    nan_policy : {"raise", "drop"}
        What to do with rows holding NaN in a used column. ``"drop"`` warns with
        :class:`DataWarning`. Infinite values always raise.
    min_points : int
        Minimum number of usable points in every segment.
    allow_missing : bool
        Keep NaN values (for estimators that handle missing data natively); rows are still kept.

    Returns
    -------
    SampledData
    """
    if nan_policy not in ("raise", "drop"):
        raise DataError(f"nan_policy must be 'raise' or 'drop', got {nan_policy!r}")
    if not isinstance(data, (pd.DataFrame, pd.Series, np.ndarray, list, tuple)):
        raise DataError(f"data must be a DataFrame, Series or ndarray, got {type(data).__name__}")
    n_total = len(data)
    exclude = {c for c in (time, segment) if isinstance(c, str)}
    values, cols = _select_values(data, columns, exclude)
    t_all = time_values(data if not isinstance(data, (list, tuple)) else values, time, time_unit)
    codes, labels = _segment_codes(data, segment, n_total)

    if np.isinf(values).any():
        bad = [cols[j] for j in range(values.shape[1]) if np.isinf(values[:, j]).any()]
        raise NonFiniteError(f"infinite values in column(s) {bad}; derivreg never drops inf")
    nan_rows = np.isnan(values).any(axis=1)
    nan_rows |= ~np.isfinite(t_all)
    keep = np.ones(n_total, dtype=bool)
    n_dropped = 0
    if nan_rows.any() and not allow_missing:
        bad = [cols[j] for j in range(values.shape[1]) if np.isnan(values[:, j]).any()]
        if nan_policy == "raise":
            raise NonFiniteError(
                f"{int(nan_rows.sum())} row(s) have NaN in column(s) {bad or ['time']}; "
                "clean the data or pass nan_policy='drop'"
            )
        keep = ~nan_rows
        n_dropped = int(nan_rows.sum())
        warnings.warn(
            f"dropped {n_dropped} of {n_total} rows with NaN in {bad or ['time']}",
            DataWarning,
            stacklevel=3,
        )
    elif allow_missing and (~np.isfinite(t_all)).any():
        raise TimeIndexError("the time values contain NaN or inf")

    rows = np.flatnonzero(keep).astype(np.intp)
    t = t_all[rows]
    vals = values[rows]
    kept_codes = codes[rows]
    segments: list[IntArray] = []
    seg_labels: list[Any] = []
    for code, label in enumerate(labels):
        pos = np.flatnonzero(kept_codes == code).astype(np.intp)
        name = what if label is None else f"segment {label!r} of {what}"
        if len(pos) == 0:
            raise TooFewPointsError(f"{name} has no usable points")
        check_time(t[pos], what=name, min_points=min_points)
        if allow_missing:
            n_ok = int((~np.isnan(vals[pos]).any(axis=1)).sum())
            if n_ok < min_points:
                raise TooFewPointsError(
                    f"{name} has {n_ok} non-missing points; at least {min_points} are needed"
                )
        segments.append(pos)
        seg_labels.append(label)
    index = data.index if isinstance(data, (pd.DataFrame, pd.Series)) else None
    return SampledData(
        t=t,
        values=vals,
        columns=cols,
        segments=segments,
        segment_labels=seg_labels,
        rows=rows,
        n_total=n_total,
        index=index,
        time_unit=time_unit,
        n_dropped=n_dropped,
    )
