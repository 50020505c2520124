"""Plots render under Agg with the expected artists, and what they draw is the right numbers."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

mpl = pytest.importorskip("matplotlib")
mpl.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import LineCollection, PolyCollection  # noqa: E402

import derivreg as dr  # noqa: E402
from derivreg import plotting  # noqa: E402
from derivreg.exceptions import DataError, MethodNotAvailableError  # noqa: E402
from derivreg.simulate import first_order  # noqa: E402

Z = 1.959963984540054
# the fits' own warnings (bias, excitation) are tested with the models; here only plots matter
pytestmark = pytest.mark.filterwarnings("ignore::derivreg.exceptions.DerivregWarning")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    df = first_order(-0.5, 2.0, 1.0, n=200, dt=0.1, sigma=0.05, tau=0.05, seed=7)
    return df[["x", "u"]]


@pytest.fixture(scope="module")
def res_integral(data):
    return dr.fit("d(x) ~ x + u", data=data, method="integral", input_hold="zoh")


@pytest.fixture(scope="module")
def res_gradient(data):
    return dr.fit(
        "d(x) ~ x + u", data=data, method="gradient", derivative="difference", input_hold="zoh"
    )


def _new_ax():
    return plt.figure().add_subplot()


def _line(ax, label):
    found = [ln for ln in ax.get_lines() if ln.get_label() == label]
    assert len(found) == 1, [ln.get_label() for ln in ax.get_lines()]
    return found[0]


def _bands(ax):
    return [c for c in ax.collections if isinstance(c, PolyCollection)]


def _band_limits(poly):
    y = np.concatenate([p.vertices[:, 1] for p in poly.get_paths()])
    return y.min(), y.max()


def test_results_figure_has_four_panels_with_the_simulated_fit(res_integral, data):
    axes = plotting.plot_results(res_integral)
    assert len(axes) == 4
    assert len(axes[0].figure.axes) == 4
    fit_line = _line(axes[0], "x (simulated fit)")
    sim = res_integral.simulate()["x"].to_numpy()
    np.testing.assert_allclose(fit_line.get_ydata(), sim)
    np.testing.assert_allclose(fit_line.get_xdata(), data.index.to_numpy(dtype=float))
    np.testing.assert_array_equal(_line(axes[0], "x (data)").get_ydata(), data["x"].to_numpy())
    assert axes[0].get_xlabel() == "t"  # the index's name; no unit is invented for numeric time


def test_derivative_panel_draws_the_fitted_right_side_with_its_parameter_band(res_integral, data):
    (ax,) = plotting.plot_results(res_integral, panels=["derivative"], ax=_new_ax())
    p = res_integral.params
    X = np.column_stack([np.ones(len(data)), data["x"], data["u"]])
    expected = X @ p[["Intercept", "x", "u"]].to_numpy()
    fitted = _line(ax, "d(x) fitted: Intercept + x + u")
    np.testing.assert_allclose(fitted.get_ydata(), expected, rtol=1e-12)
    # two bands: the spline estimate's pointwise band and the coefficient band of X θ
    bands = _bands(ax)
    assert len(bands) == 2
    cov = res_integral.cov_params().loc[["Intercept", "x", "u"], ["Intercept", "x", "u"]]
    se = np.sqrt(np.einsum("ij,jk,ik->i", X, cov.to_numpy(), X))
    lo, hi = _band_limits(bands[1])
    assert lo == pytest.approx(np.min(expected - Z * se))
    assert hi == pytest.approx(np.max(expected + Z * se))
    # the estimate is the spline's, with its SE band
    spline = dr.derivative(data["x"], method="spline", return_se=True)
    est = _line(ax, "d(x) estimate (SmoothingSpline)")
    np.testing.assert_allclose(est.get_ydata(), spline["estimate"].to_numpy(), rtol=1e-6)
    lo, hi = _band_limits(bands[0])
    assert lo == pytest.approx(np.min(spline["estimate"] - Z * spline["se"]), rel=1e-5)
    assert hi == pytest.approx(np.max(spline["estimate"] + Z * spline["se"]), rel=1e-5)


def test_gradient_fit_reuses_its_estimator_and_fitted_values(res_gradient, data):
    (ax,) = plotting.plot_results(res_gradient, panels=["derivative"], ax=_new_ax())
    est = _line(ax, "d(x) estimate (Differencing)")
    fd = dr.derivative(data["x"], method="difference")
    np.testing.assert_allclose(est.get_ydata(), fd.to_numpy(), equal_nan=True)
    fitted = _line(ax, "d(x) fitted: Intercept + x + u")
    fv = res_gradient.fittedvalues.to_numpy()
    # away from input switches (where the gradient form averages the held input over the stencil)
    u = data["u"].to_numpy()
    steady = np.r_[False, u[1:] == u[:-1]] & np.r_[u[1:] == u[:-1], False]
    ok = np.isfinite(fv) & steady
    assert ok.sum() > 150
    np.testing.assert_allclose(fitted.get_ydata()[ok], fv[ok], rtol=1e-10)
    # differencing has no pointwise SE but an exact covariance: its band comes from the diagonal
    assert len(_bands(ax)) == 2


def test_residual_panels(res_integral):
    ax_r, ax_a = plotting.plot_results(
        res_integral, panels=["resid", "acf"], ax=plt.subplots(1, 2)[1], lags=12
    )
    (line,) = [ln for ln in ax_r.get_lines() if ln.get_label() == "x"]
    np.testing.assert_allclose(line.get_ydata(), res_integral.resid.to_numpy())
    (stems,) = [c for c in ax_a.collections if isinstance(c, LineCollection)]
    heights = np.array([seg[1, 1] for seg in stems.get_segments()])
    from statsmodels.tsa.stattools import acf

    np.testing.assert_allclose(heights, acf(res_integral.resid.to_numpy(), nlags=12)[1:])
    lo, hi = _band_limits(_bands(ax_a)[0])
    assert hi == pytest.approx(Z / np.sqrt(res_integral.resid.notna().sum()))
    assert lo == pytest.approx(-hi)


def test_residual_acf_pools_segments_without_crossing_them(rng):
    e = rng.standard_normal(60)
    segs = [np.arange(30), np.arange(30, 60)]
    r = plotting.residual_acf(e, segs, 3)
    c = e - e.mean()
    lag1 = (c[:29] @ c[1:30] + c[30:59] @ c[31:60]) / (c @ c)
    assert r[0] == pytest.approx(1.0)
    assert r[1] == pytest.approx(lag1)


def test_segment_selection_and_results_plot_method(data):
    two = pd.concat([data.assign(run="a"), data.assign(run="b")]).reset_index(names="t")
    res = dr.fit(
        "d(x) ~ x + u", data=two, time="t", segment="run", method="integral", input_hold="zoh"
    )
    axes = res.plot(segment="b", panels=["fit", "resid"])
    assert len(axes) == 2
    assert axes[1].get_xlabel() == "t"
    fit_line = _line(axes[0], "x (simulated fit)")
    assert len(fit_line.get_xdata()) == len(data)
    # one segment of several is simulated alone, from its own rows
    sim = res.simulate(two[two["run"] == "b"])["x"].to_numpy()
    np.testing.assert_allclose(fit_line.get_ydata(), sim)
    np.testing.assert_allclose(fit_line.get_xdata(), data.index.to_numpy(dtype=float))
    with pytest.raises(DataError, match="segment"):
        res.plot(segment="zzz")


def test_bad_arguments(res_integral):
    with pytest.raises(DataError, match="panel"):
        plotting.plot_results(res_integral, panels=["nope"])
    with pytest.raises(DataError, match="expected 2 axes"):
        plotting.plot_results(res_integral, panels=["fit", "acf"], ax=[_new_ax()])
    with pytest.raises(DataError, match="alpha"):
        plotting.plot_results(res_integral, alpha=2.0)


def test_plot_derivative_of_an_estimator_with_se(data):
    est = dr.preprocess.SmoothingSpline().fit(data["x"])
    axes = plotting.plot_derivative(est)
    assert len(axes) == 2  # data above, derivative below
    e, s = est.derivative_arrays(1)
    line = _line(axes[1], "estimate (SmoothingSpline)")
    np.testing.assert_allclose(line.get_ydata(), e[:, 0])
    (band,) = _bands(axes[1])
    lo, hi = _band_limits(band)
    assert lo == pytest.approx(np.min(e[:, 0] - Z * s[:, 0]))
    assert hi == pytest.approx(np.max(e[:, 0] + Z * s[:, 0]))
    np.testing.assert_array_equal(_line(axes[0], "data").get_ydata(), data["x"].to_numpy())


def test_plot_derivative_band_level_and_truth(data):
    est = dr.preprocess.SmoothingSpline().fit(data["x"])
    (ax,) = plotting.plot_derivative(est, ax=_new_ax(), alpha=0.32, truth=np.zeros(len(data)))
    e, s = est.derivative_arrays(1)
    z = 0.994457883209753  # norm.ppf(0.84)
    lo, hi = _band_limits(_bands(ax)[0])
    assert lo == pytest.approx(np.min(e[:, 0] - z * s[:, 0]))
    assert hi == pytest.approx(np.max(e[:, 0] + z * s[:, 0]))
    assert np.all(_line(ax, "truth").get_ydata() == 0)


def test_plot_derivative_without_se_has_no_band(data):
    est = dr.preprocess.WindowedFourier().fit(data["x"])
    (ax,) = plotting.plot_derivative(est, ax=_new_ax())
    assert _bands(ax) == []


def test_plot_derivative_of_frames(data):
    fr = dr.derivative(data["x"], method="spline", return_se=True)
    axes = plotting.plot_derivative(fr, data=data["x"])
    assert len(axes) == 2
    assert len(_bands(axes[1])) == 1
    s = dr.derivative(data, method="difference", columns=["x"])
    (ax,) = plotting.plot_derivative(s, ax=_new_ax())
    assert _bands(ax) == []
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), s["d(x)"].to_numpy(), equal_nan=True)
    with pytest.raises(DataError, match="Preprocessor"):
        plotting.plot_derivative(np.zeros(3))
    with pytest.raises(DataError, match="not fitted"):
        plotting.plot_derivative(dr.preprocess.SmoothingSpline())


def test_missing_matplotlib_is_a_clear_error(res_integral, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(MethodNotAvailableError, match="matplotlib"):
        plotting.plot_results(res_integral)


def test_system_draws_each_equation_with_its_own_coefficients():
    lv = dr.simulate.lotka_volterra(n=60, t_end=15.0, tau=0.01, seed=3)[["x", "y"]]
    res = dr.fit(
        {"x": "d(x) ~ x + x:y - 1", "y": "d(y) ~ y + x:y - 1"},
        data=lv,
        method="gradient",
        derivative="spline",
    )
    axes = plotting.plot_results(res, panels=["fit", "derivative", "resid"])
    x, y = lv["x"].to_numpy(), lv["y"].to_numpy()
    px, py = res.params_of("x"), res.params_of("y")
    np.testing.assert_allclose(
        _line(axes[1], "d(x) fitted: x + x:y").get_ydata(), px["x"] * x + px["x:y"] * x * y
    )
    np.testing.assert_allclose(
        _line(axes[1], "d(y) fitted: y + x:y").get_ydata(), py["y"] * y + py["x:y"] * x * y
    )
    assert len(_bands(axes[1])) == 4  # estimate and fitted band per equation
    sim = res.simulate()
    for var in ("x", "y"):
        np.testing.assert_allclose(
            _line(axes[0], f"{var} (simulated fit)").get_ydata(), sim[var].to_numpy()
        )
    assert {ln.get_label() for ln in axes[2].get_lines()} >= {"d(x)", "d(y)"}
