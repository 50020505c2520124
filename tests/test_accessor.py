"""The pandas accessor gives exactly what the functions give."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import derivreg as dr
from derivreg.simulate import first_order


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    df = first_order(-0.4, 1.5, 0.5, n=150, dt=0.1, sigma=0.05, tau=0.03, seed=11)
    return df[["x", "u"]]


@pytest.mark.parametrize("method", ["difference", "spline", "savgol"])
def test_series_accessor_matches_function(frame, method):
    s = frame["x"]
    got = s.derivreg.derivative(method=method)
    want = dr.derivative(s, method=method)
    pd.testing.assert_series_equal(got, want)
    assert got.name == "d(x)"
    assert got.index.equals(frame.index)


@pytest.mark.parametrize("method", ["difference", "spline"])
def test_series_accessor_second_order_and_se(frame, method):
    s = frame["x"]
    pd.testing.assert_series_equal(
        s.derivreg.derivative(method=method, order=2), dr.derivative(s, method=method, order=2)
    )
    if method == "spline":
        got = s.derivreg.derivative(method=method, return_se=True)
        pd.testing.assert_frame_equal(got, dr.derivative(s, method=method, return_se=True))
        assert list(got.columns) == ["estimate", "se"]


@pytest.mark.parametrize("method", ["difference", "spline"])
def test_frame_accessor_one_column_is_the_series_derivative(frame, method):
    got = frame.derivreg.derivative("x", method=method)
    pd.testing.assert_series_equal(got, dr.derivative(frame["x"], method=method))


@pytest.mark.parametrize("method", ["difference", "spline"])
def test_frame_accessor_columns(frame, method):
    got = frame.derivreg.derivative(["x", "u"], method=method)
    want = dr.derivative(frame, method=method, columns=["x", "u"])
    pd.testing.assert_frame_equal(got, want)
    assert list(got.columns) == ["d(x)", "d(u)"]
    every = frame.derivreg.derivative(method=method)
    pd.testing.assert_frame_equal(every, dr.derivative(frame, method=method))


def test_frame_accessor_with_time_column_and_segments(frame):
    long = pd.concat([frame.assign(run=1), frame.assign(run=2)]).reset_index(names="t")
    got = long.derivreg.derivative("x", method="spline", time="t", segment="run")
    want = dr.derivative(long, method="spline", time="t", segment="run", columns=["x"])
    # one column name gives a Series, whatever the time/segment arguments
    assert isinstance(got, pd.Series)
    pd.testing.assert_series_equal(got, want["d(x)"])
    assert got.attrs["method"] == "spline"
    # nothing is differentiated across the boundary: each run equals the run alone
    alone = dr.derivative(frame["x"], method="spline").to_numpy()
    np.testing.assert_allclose(got.to_numpy()[len(frame) :], alone, rtol=1e-8)
    with_se = long.derivreg.derivative(
        "x", method="spline", time="t", segment="run", return_se=True
    )
    single = dr.derivative(frame["x"], method="spline", return_se=True)
    assert list(with_se.columns) == ["estimate", "se"]
    wide = dr.derivative(
        long, method="spline", time="t", segment="run", columns=["x"], return_se=True
    )
    np.testing.assert_array_equal(with_se["se"].to_numpy(), wide["se(d(x))"].to_numpy())
    assert single.shape[1] == with_se.shape[1]


@pytest.mark.parametrize(
    ("method", "options"),
    [("integral", {}), ("gradient", {"derivative": "difference"}), ("arimax", {})],
)
def test_fit_accessor_matches_dr_fit(frame, method, options):
    got = frame.derivreg.fit("d(x) ~ x + u", method=method, input_hold="zoh", **options)
    want = dr.fit("d(x) ~ x + u", data=frame, method=method, input_hold="zoh", **options)
    pd.testing.assert_series_equal(got.params, want.params)
    pd.testing.assert_frame_equal(got.cov_params(), want.cov_params())
    pd.testing.assert_frame_equal(got.conf_int(), want.conf_int())
    assert got.method == want.method == method
    assert got.nobs == want.nobs
    pd.testing.assert_series_equal(got.resid, want.resid)
    # and the estimates are near the truth (a -0.4, b 1.5, c 0.5), so the comparison is not vacuous
    assert got.params["x"] == pytest.approx(-0.4, abs=0.15)


def test_fit_accessor_forwards_options(frame):
    long = frame.reset_index(names="time")
    got = long.derivreg.fit("d(x) ~ x + u", method="integral", time="time", cov_type="HAC")
    want = dr.fit("d(x) ~ x + u", data=long, method="integral", time="time", cov_type="HAC")
    pd.testing.assert_series_equal(got.bse, want.bse)
    assert got.cov_type == "HAC"
