"""Time axis, validation, segments and NaN policy."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from derivreg.exceptions import (
    ColumnNotFoundError,
    DataWarning,
    DerivregError,
    IrregularSamplingError,
    LengthMismatchError,
    NonFiniteError,
    TimeIndexError,
    TooFewPointsError,
)
from derivreg.timebase import is_regular, prepare_data, require_regular, time_values


def test_numeric_index_used_as_given():
    s = pd.Series([1.0, 2.0, 4.0], index=[0.5, 1.0, 2.5])
    np.testing.assert_array_equal(time_values(s), [0.5, 1.0, 2.5])


def test_datetime_index_converted_from_differences_in_unit():
    idx = pd.date_range("2024-01-01 00:00:00", periods=4, freq="250ms")
    s = pd.Series(np.arange(4.0), index=idx)
    np.testing.assert_allclose(time_values(s, time_unit="s"), [0, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(time_values(s, time_unit="ms"), [0, 250, 500, 750])


def test_datetime_far_from_epoch_keeps_nanosecond_precision():
    # raw int64 nanoseconds since 1970 lose precision as floats; differences do not
    idx = pd.DatetimeIndex(["2262-01-01 00:00:00.000000001", "2262-01-01 00:00:00.000000003"])
    t = time_values(pd.Series([1.0, 2.0], index=idx), time_unit="ns")
    np.testing.assert_array_equal(t, [0.0, 2.0])


def test_timedelta_index_and_tz_aware_index():
    s = pd.Series([1.0, 2.0], index=pd.to_timedelta([0, 90], unit="min"))
    np.testing.assert_allclose(time_values(s, time_unit="h"), [0, 1.5])
    idx = pd.date_range("2024-03-31", periods=3, freq="h", tz="Europe/Berlin")
    np.testing.assert_allclose(
        time_values(pd.Series([1.0, 2, 3], index=idx), time_unit="h"), [0, 1, 2]
    )


def test_time_column_and_ndarray_time():
    df = pd.DataFrame({"t": [0.0, 0.1, 0.3], "x": [1.0, 2, 3]})
    sd = prepare_data(df, time="t")
    assert sd.columns == ["x"]
    np.testing.assert_allclose(sd.t, [0, 0.1, 0.3])
    np.testing.assert_allclose(time_values(np.ones(3), time=[1, 2, 3]), [1, 2, 3])
    with pytest.raises(TimeIndexError, match="time="):
        time_values(np.ones(3))


def test_bad_time_axes_raise_named_errors():
    with pytest.raises(TimeIndexError, match="not sorted"):
        prepare_data(pd.Series([1.0, 2, 3], index=[0.0, 2, 1]))
    with pytest.raises(TimeIndexError, match="duplicate"):
        prepare_data(pd.Series([1.0, 2, 3], index=[0.0, 1, 1]))
    with pytest.raises(TimeIndexError, match="dtype"):
        prepare_data(pd.Series([1.0, 2], index=["a", "b"]))
    with pytest.raises(ColumnNotFoundError, match="'tt'"):
        prepare_data(pd.DataFrame({"x": [1.0, 2]}), time="tt")
    with pytest.raises(LengthMismatchError):
        time_values(np.ones(3), time=[1.0, 2.0])
    with pytest.raises(TimeIndexError, match="time_unit"):
        time_values(pd.Series([1.0], index=pd.to_datetime(["2020-01-01"])), time_unit="fortnight")


def test_nan_policy_raise_drop_and_inf_always_raises():
    s = pd.Series([1.0, np.nan, 3.0, 4.0], index=[0.0, 1, 2, 3])
    with pytest.raises(NonFiniteError, match="nan_policy"):
        prepare_data(s)
    with pytest.warns(DataWarning, match="dropped 1"):
        sd = prepare_data(s, nan_policy="drop")
    np.testing.assert_array_equal(sd.rows, [0, 2, 3])
    back = sd.to_caller(sd.values[:, 0])
    assert np.isnan(back[1]) and back[3] == 4.0
    with pytest.raises(NonFiniteError, match="infinite"):
        prepare_data(pd.Series([1.0, np.inf, 3.0]), nan_policy="drop")


def test_all_nan_and_too_few_points():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        with pytest.raises(TooFewPointsError):
            prepare_data(pd.Series([np.nan] * 5), nan_policy="drop")
    with pytest.raises(TooFewPointsError, match="at least 3"):
        prepare_data(pd.Series([1.0, 2.0]), min_points=3)


def test_segments_validated_separately_and_time_may_restart():
    df = pd.DataFrame(
        {"run": ["a"] * 3 + ["b"] * 3, "t": [0.0, 1, 2, 0, 1, 2], "x": np.arange(6.0)}
    )
    sd = prepare_data(df, ["x"], time="t", segment="run")
    assert sd.segment_labels == ["a", "b"]
    np.testing.assert_array_equal(sd.segments[1], [3, 4, 5])
    df.loc[4, "t"] = 5.0
    with pytest.raises(TimeIndexError, match="segment 'b'"):
        prepare_data(df, ["x"], time="t", segment="run")


def test_errors_share_one_base_class():
    for exc in (TimeIndexError, NonFiniteError, TooFewPointsError, IrregularSamplingError):
        assert issubclass(exc, DerivregError) and issubclass(exc, ValueError)


def test_regular_grid_detection():
    t = np.linspace(1e9, 1e9 + 10, 101)
    assert is_regular(t)
    assert require_regular(t, "m") == pytest.approx(0.1, rel=1e-6)
    t2 = np.sort(np.random.default_rng(0).uniform(0, 10, 50))
    assert not is_regular(t2)
    with pytest.raises(IrregularSamplingError, match="regular time grid"):
        require_regular(t2, "fourier")
