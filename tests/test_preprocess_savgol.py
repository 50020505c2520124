"""Savitzky–Golay / local polynomial: scipy agreement, exactness, LOO-CV window, segments."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.signal import savgol_filter

import derivreg as dr
from derivreg.exceptions import DataError, TooFewPointsError
from derivreg.preprocess.differencing import noise_variance
from derivreg.preprocess.savgol import (
    SavitzkyGolay,
    _candidate_windows,
    _local_moments,
    local_polynomial_weights,
)


def signal(t):
    x = np.sin(t) + 0.5 * np.sin(2.3 * t)
    dx = np.cos(t) + 1.15 * np.cos(2.3 * t)
    return x, dx


@pytest.mark.parametrize("order", [0, 1, 2, 3])
def test_uniform_grid_matches_scipy_and_the_local_fit(order, rng):
    t = np.linspace(0, 5, 120)
    y = np.sin(2 * t) + 0.1 * rng.normal(size=120)
    est = SavitzkyGolay(window=15, polyorder=3).fit(y, time=t).derivative(order)
    ref = savgol_filter(y, 15, 3, deriv=order, delta=t[1] - t[0], mode="interp")
    np.testing.assert_allclose(est, ref, atol=1e-9 * (1 + np.abs(ref).max()))
    w, start = local_polynomial_weights(t, 15, 3, order)
    generic = np.sum(w * y[start[:, None] + np.arange(15)], axis=1)
    np.testing.assert_allclose(generic, ref, atol=1e-8 * (1 + np.abs(ref).max()))


@pytest.mark.parametrize("polyorder", [2, 3, 4])
def test_exact_for_polynomials_up_to_polyorder_irregular_including_edges(polyorder, rng):
    t = np.sort(rng.uniform(0, 3, 50))
    poly = np.polynomial.Polynomial(rng.normal(size=polyorder + 1))
    est = SavitzkyGolay(window=9, polyorder=polyorder).fit(poly(t), time=t)
    for order in range(min(polyorder, 3) + 1):
        got = est.derivative(order)
        assert not np.isnan(got).any()
        np.testing.assert_allclose(got, poly.deriv(order)(t), rtol=1e-7, atol=1e-7)


def test_convergence_rate_interior_first_derivative():
    # symmetric cubic window of fixed size m: interior bias O(h^4) for the first derivative
    errs = []
    for n in (41, 81, 161):
        t = np.linspace(0, 2, n)
        d = SavitzkyGolay(window=9, polyorder=3).fit(np.exp(t), time=t).derivative(1)
        errs.append(abs(d[(n - 1) // 2] - np.exp(1.0)))
    rates = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all(np.abs(rates - 4) < 0.3), rates


@settings(max_examples=20, deadline=None)
@given(
    steps=st.lists(st.floats(0.05, 1.0), min_size=12, max_size=40),
    shift=st.floats(-500, 500),
    a=st.floats(-4, 4),
    coef=st.lists(st.floats(-2, 2), min_size=4, max_size=4),
)
def test_property_shift_linearity_cubic_exactness(steps, shift, a, coef):
    t = np.concatenate([[0.0], np.cumsum(steps)])
    est = SavitzkyGolay(window=7, polyorder=3)
    y = np.sin(t)
    d = est.fit(y, time=t).derivative(1)
    np.testing.assert_allclose(est.fit(y, time=t + shift).derivative(1), d, atol=1e-6)
    z = np.cos(t)
    dz = est.fit(z, time=t).derivative(1)
    np.testing.assert_allclose(est.fit(a * y + z, time=t).derivative(1), a * d + dz, atol=1e-8)
    poly = np.polynomial.Polynomial(coef)
    dp = est.fit(poly(t), time=t).derivative(1)
    np.testing.assert_allclose(dp, poly.deriv()(t), atol=1e-6 * (1 + np.abs(coef).sum()))


def test_loo_formula_equals_explicit_refit_irregular(rng):
    t = np.sort(rng.uniform(0, 4, 40))
    y = np.sin(t) + 0.1 * rng.normal(size=40)
    m, p = 9, 3
    w, start = local_polynomial_weights(t, m, p, 0)
    i = np.arange(40)
    yhat = np.sum(w * y[start[:, None] + np.arange(m)], axis=1)
    lii = w[i, i - start]
    loo = (y - yhat) / (1 - lii)
    for k in (0, 3, 20, 39):
        idx = [j for j in range(start[k], start[k] + m) if j != k]
        coef = np.polyfit(t[idx] - t[k], y[idx], p)
        assert abs((y[k] - coef[-1]) - loo[k]) < 1e-9


@pytest.mark.parametrize(("selection", "tol"), [("plugin", 1.4), ("loocv", 2.5)])
@pytest.mark.parametrize("regular", [True, False])
def test_selected_window_near_the_oracle(selection, tol, regular):
    # oracle: the candidate window with the smallest RMSE of x' against the truth
    n = 400
    ratios = []
    for seed in (1, 2):
        rng = np.random.default_rng(seed)
        t = np.linspace(0, 10, n) if regular else np.sort(rng.uniform(0, 10, n))
        x, dx = signal(t)
        y = x + 0.05 * rng.normal(size=n)
        est = SavitzkyGolay(selection=selection).fit(y, time=t)
        chosen = est.info_["window"]
        rmse = {
            m: np.sqrt(np.mean((SavitzkyGolay(window=m).fit(y, time=t).derivative(1) - dx) ** 2))
            for m in _candidate_windows(n, 3, 501)
        }
        oracle = min(rmse, key=rmse.get)
        ratios.append(rmse[chosen] / rmse[oracle])
        assert est.info_["window_selection"] == selection
        assert est.info_["windows"][1]["x0"] == [chosen]
    # measured over 40 draws: plugin median 1.00 / max 1.33; loocv median 1.12 / max 1.73
    assert max(ratios) <= tol, ratios


def test_plugin_tunes_each_order_and_records_it(rng):
    t = np.linspace(0, 10, 300)
    x, _ = signal(t)
    y = x + 0.05 * rng.normal(size=300)
    est = SavitzkyGolay().fit(y, time=t)
    assert list(est.info_["windows"]) == [1]
    out = est.derivative(3)
    w3 = est.info_["windows"][3]["x0"][0]
    assert out.shape == (300,) and list(est.info_["windows"]) == [1, 3]
    fixed = SavitzkyGolay(window=w3).fit(y, time=t).derivative(3)
    np.testing.assert_allclose(out, fixed)
    np.testing.assert_allclose(est.derivative_weights(3) @ y, out, atol=1e-9 * np.abs(out).max())


def test_covariance_is_r_w_wt_and_matches_monte_carlo(rng):
    n, reps, sd = 40, 3000, 0.2
    t = np.sort(rng.uniform(0, 4, n))
    y0 = np.sin(t) + sd * rng.normal(size=n)
    est = SavitzkyGolay(window=9).fit(y0, time=t)
    cov = est.derivative_cov(1)
    r_hat = noise_variance(t, y0)
    w = est.weights(t, 1, 9)
    np.testing.assert_allclose(cov, r_hat * (w @ w.T).toarray())
    draws = w @ (sd * rng.standard_normal((n, reps)))
    emp = np.cov(draws)
    c = sd**2 * (w @ w.T).toarray()
    se = np.sqrt((np.outer(np.diag(c), np.diag(c)) + c**2) / reps)
    assert np.max(np.abs(emp - c) / se) < 5.0


def test_segments_are_fitted_separately(rng):
    t1, t2 = np.linspace(0, 3, 60), np.linspace(0, 2, 45)
    y1 = np.sin(t1) + 0.02 * rng.normal(size=60)
    y2 = 10 + t2**3
    df = pd.DataFrame({"t": np.r_[t1, t2], "x": np.r_[y1, y2], "g": ["a"] * 60 + ["b"] * 45})
    est = SavitzkyGolay().fit(df, time="t", segment="g")
    d = est.derivative(1)["d(x)"].to_numpy()
    w1 = est.info_["windows"][1]["x"][0]
    alone = SavitzkyGolay(window=w1).fit(y1, time=t1).derivative(1)
    np.testing.assert_allclose(d[:60], alone, atol=1e-12)
    # the cubic segment is reproduced exactly whatever window was chosen
    np.testing.assert_allclose(d[60:], 3 * t2**2, atol=1e-8)


def test_pandas_series_and_registry():
    idx = pd.date_range("2025-01-01", periods=80, freq="1s")
    t = np.arange(80.0)
    s = pd.Series(np.sin(0.1 * t), index=idx, name="pos")
    out = dr.derivative(s, method="savgol", window=11)
    assert isinstance(out, pd.Series) and out.name == "d(pos)" and out.index.equals(idx)
    truth = 0.1 * np.cos(0.1 * t)
    np.testing.assert_allclose(out.iloc[5:-5], truth[5:-5], atol=5e-5)
    np.testing.assert_allclose(out, truth, atol=2e-3)  # shifted (one-sided) windows at the edges
    auto = dr.derivative(s, method="savgol")
    assert auto.attrs["info"]["window_selection"] == "plugin"


def test_bad_inputs():
    t = np.linspace(0, 1, 20)
    with pytest.raises(DataError, match="odd"):
        SavitzkyGolay(window=10).fit(np.sin(t), time=t)
    with pytest.raises(DataError, match="odd"):
        SavitzkyGolay(window=3, polyorder=3).fit(np.sin(t), time=t)
    with pytest.raises(TooFewPointsError):
        SavitzkyGolay(window=21).fit(np.sin(t), time=t)
    with pytest.raises(TooFewPointsError):
        SavitzkyGolay().fit(np.sin(t[:4]), time=t[:4])
    with pytest.raises(DataError, match="polyorder"):
        SavitzkyGolay(window=5, polyorder=2).fit(np.sin(t), time=t).derivative(3)


@pytest.mark.parametrize("order", [0, 1, 2])
def test_regular_fast_path_of_bias_variance_moments_matches_generic(order):
    t = np.linspace(0, 3, 60)
    fast = _local_moments(t, 13, 3, order, regular=True)
    slow = _local_moments(t, 13, 3, order, regular=False)
    np.testing.assert_allclose(fast, slow, rtol=1e-7, atol=1e-10 * np.abs(slow).max())


@pytest.mark.slow
def test_slow_plugin_window_near_oracle_over_many_draws():
    n = 400
    ratios = {"plugin": [], "loocv": []}
    cands = _candidate_windows(n, 3, 501)
    for seed in range(20):
        for regular in (True, False):
            rng = np.random.default_rng(100 + seed)
            t = np.linspace(0, 10, n) if regular else np.sort(rng.uniform(0, 10, n))
            x, dx = signal(t)
            y = x + 0.05 * rng.normal(size=n)
            rmse = {
                m: np.sqrt(
                    np.mean((SavitzkyGolay(window=m).fit(y, time=t).derivative(1) - dx) ** 2)
                )
                for m in cands
            }
            best = min(rmse.values())
            for sel in ratios:
                chosen = SavitzkyGolay(selection=sel).fit(y, time=t).info_["window"]
                ratios[sel].append(rmse[chosen] / best)
    assert np.median(ratios["plugin"]) < 1.1 and max(ratios["plugin"]) < 1.6
    assert np.median(ratios["plugin"]) <= np.median(ratios["loocv"])
