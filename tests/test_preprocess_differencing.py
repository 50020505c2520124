"""Finite differences: Fornberg weights, accuracy order, covariance W R Wᵀ, segments, pandas."""

from __future__ import annotations

from math import factorial

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import derivreg as dr
from derivreg.exceptions import DataError, TooFewPointsError
from derivreg.preprocess.differencing import (
    Differencing,
    fornberg_weights,
    noise_variance,
    stencil_size,
)

KINDS = ["central", "forward", "backward"]
ACCS = [2, 4, 6]
ORDERS = [1, 2, 3]


def irregular_grid(n: int, rng: np.random.Generator, t_end: float = 2.0) -> np.ndarray:
    h = t_end / (n - 1)
    return np.linspace(0.0, t_end, n) + rng.uniform(-0.3 * h, 0.3 * h, n) * (
        np.arange(n) % (n - 1) != 0
    )


def test_fornberg_reproduces_textbook_central_weights():
    w = fornberg_weights(np.array([-2.0, -1.0, 0.0, 1.0, 2.0]), 3)
    np.testing.assert_allclose(w[1], [1 / 12, -2 / 3, 0, 2 / 3, -1 / 12], atol=1e-14)
    np.testing.assert_allclose(w[2], [-1 / 12, 4 / 3, -5 / 2, 4 / 3, -1 / 12], atol=1e-14)
    np.testing.assert_allclose(w[3], [-1 / 2, 1, 0, -1, 1 / 2], atol=1e-14)


def test_fornberg_moment_conditions_on_random_nodes(rng):
    x = np.sort(rng.uniform(-1, 1, 6))
    w = fornberg_weights(x, 3)
    # sum_k w[p, k] x_k^j = p! delta_{jp} for j < number of nodes
    moments = w @ (x[:, None] ** np.arange(6))
    expected = np.zeros((4, 6))
    for p in range(4):
        expected[p, p] = factorial(p)
    np.testing.assert_allclose(moments, expected, atol=1e-9)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("accuracy", ACCS)
@pytest.mark.parametrize("order", ORDERS)
def test_exact_on_polynomials_of_stencil_degree_irregular(kind, accuracy, order, rng):
    m = stencil_size(order, accuracy, kind)
    t = irregular_grid(40, rng)
    coef = rng.normal(size=m)  # degree m - 1
    poly = np.polynomial.Polynomial(coef)
    est = Differencing(kind=kind, accuracy=accuracy).fit(poly(t), time=t).derivative(order)
    ok = ~np.isnan(est)
    np.testing.assert_allclose(est[ok], poly.deriv(order)(t[ok]), rtol=1e-7, atol=1e-7)
    # NaN exactly where the stencil does not fit
    n_nan = {"central": (m - 1) // 2, "forward": 0, "backward": m - 1}[kind]
    assert np.isnan(est[:n_nan]).all() and not np.isnan(est[n_nan]).any()
    assert ok.sum() == 40 - (m - 1)


@pytest.mark.parametrize("accuracy", ACCS)
@pytest.mark.parametrize(("kind", "order"), [("central", 1), ("central", 2), ("forward", 1)])
def test_convergence_rate_matches_accuracy_uniform(kind, accuracy, order):
    # nested grids on [0, 2], error at t = 1; coarse enough that rounding stays negligible
    n0 = {2: 21, 4: 11, 6: 9}[accuracy] if kind == "central" else 21
    errs = []
    for n in (n0, 2 * n0 - 1, 4 * n0 - 3):
        t = np.linspace(0.0, 2.0, n)
        d = Differencing(kind=kind, accuracy=accuracy).fit(np.sin(3 * t), time=t).derivative(order)
        truth = [3 * np.cos(3.0), -9 * np.sin(3.0)][order - 1]
        errs.append(abs(d[(n - 1) // 2] - truth))
    rates = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all(np.abs(rates - accuracy) < 0.35), rates


def test_convergence_rate_irregular_first_derivative(rng):
    # same relative jitter at every resolution: rate stays m - p = accuracy for order 1
    errs = []
    base = rng.uniform(-0.3, 0.3, 641)
    for n in (81, 161, 321):
        h = 1.0 / (n - 1)
        t = np.linspace(0, 1, n) + base[:n] * h * (np.arange(n) % (n - 1) != 0)
        d = Differencing(accuracy=4).fit(np.exp(t), time=t).derivative(1)
        errs.append(np.nanmax(np.abs(d - np.exp(t))))
    rates = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all(rates > 3.5), rates


def test_central_even_order_loses_one_order_on_irregular_grids():
    errs = []
    base = np.random.default_rng(7).uniform(-0.3, 0.3, 641)
    for n in (81, 161, 321):
        h = 1.0 / (n - 1)
        t = np.linspace(0, 1, n) + base[:n] * h * (np.arange(n) % (n - 1) != 0)
        d = Differencing(accuracy=2).fit(np.exp(t), time=t).derivative(2)
        errs.append(np.nanmax(np.abs(d - np.exp(t))))
    rates = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all(np.abs(rates - 1) < 0.3), rates


def test_fitted_weights_per_segment_reproduce_the_estimate(rng):
    t = np.r_[np.sort(rng.uniform(0, 1, 20)), np.sort(rng.uniform(0, 1, 15))]
    y = rng.normal(size=35)
    seg = [0] * 20 + [1] * 15
    est = Differencing(accuracy=4).fit(y, time=t, segment=seg)
    d = est.derivative(1)
    for i, pos in enumerate([np.arange(20), np.arange(20, 35)]):
        w = est.derivative_weights(1, segment=i)
        ok = est.defined(t[pos], 1)
        np.testing.assert_allclose((w @ y[pos])[ok], d[pos][ok])
        assert np.all(w.toarray()[~ok] == 0)


def test_order_zero_returns_data_and_order_three_works():
    t = np.linspace(0, 1, 30)
    y = t**3
    d = Differencing(accuracy=2).fit(y, time=t)
    np.testing.assert_array_equal(d.derivative(0), y)
    np.testing.assert_allclose(d.derivative(3)[2:-2], 6.0, rtol=1e-6)


def test_edges_shift_gives_one_sided_stencils_without_nan(rng):
    t = irregular_grid(25, rng)
    poly = np.polynomial.Polynomial(rng.normal(size=5))
    d = Differencing(accuracy=4, edges="shift").fit(poly(t), time=t).derivative(1)
    assert not np.isnan(d).any()
    np.testing.assert_allclose(d, poly.deriv()(t), rtol=1e-7, atol=1e-7)


# --------------------------------------------------------------------- properties
grids = st.integers(12, 40).flatmap(
    lambda n: st.lists(st.floats(0.05, 1.0), min_size=n - 1, max_size=n - 1)
)


@settings(max_examples=25, deadline=None)
@given(
    steps=grids,
    shift=st.floats(-1e3, 1e3),
    kind=st.sampled_from(KINDS),
    acc=st.sampled_from(ACCS),
)
def test_property_invariant_to_shifting_time(steps, shift, kind, acc):
    t = np.concatenate([[0.0], np.cumsum(steps)])
    y = np.sin(t)
    est = Differencing(kind=kind, accuracy=acc)
    a = est.fit(y, time=t).derivative(1)
    b = est.fit(y, time=t + shift).derivative(1)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * np.nanmax(np.abs(a)))


@settings(max_examples=25, deadline=None)
@given(steps=grids, a=st.floats(-5, 5), b=st.floats(-5, 5), order=st.sampled_from(ORDERS))
def test_property_linear_in_data(steps, a, b, order):
    t = np.concatenate([[0.0], np.cumsum(steps)])
    x, z = np.sin(t), np.cos(2 * t) + t
    est = Differencing(accuracy=2)
    lhs = est.fit(a * x + b * z, time=t).derivative(order)
    dx = est.fit(x, time=t).derivative(order)
    dz = est.fit(z, time=t).derivative(order)
    scale = np.nanmax(np.abs(dx)) + np.nanmax(np.abs(dz)) + 1.0
    np.testing.assert_allclose(lhs, a * dx + b * dz, atol=1e-9 * scale * 10)


@settings(max_examples=25, deadline=None)
@given(
    steps=grids,
    coef=st.lists(st.floats(-3, 3), min_size=3, max_size=3),
    kind=st.sampled_from(KINDS),
)
def test_property_exact_for_quadratics_any_grid(steps, coef, kind):
    t = np.concatenate([[0.0], np.cumsum(steps)])
    poly = np.polynomial.Polynomial(coef)
    d = Differencing(kind=kind, accuracy=2).fit(poly(t), time=t).derivative(1)
    ok = ~np.isnan(d)
    np.testing.assert_allclose(d[ok], poly.deriv()(t[ok]), atol=1e-8 * (1 + np.abs(coef).sum()))


# --------------------------------------------------------------------- covariance
@pytest.mark.parametrize(("kind", "accuracy", "order"), [("central", 2, 1), ("forward", 4, 2)])
def test_covariance_matches_monte_carlo(kind, accuracy, order, rng):
    n, reps, r = 30, 4000, 0.04
    t = np.sort(rng.uniform(0, 3, n))
    x = np.sin(t)
    est = Differencing(kind=kind, accuracy=accuracy, noise_var=r).fit(x, time=t)
    cov = est.derivative_cov(order)
    ok = ~np.isnan(np.diag(cov))
    w = est.weights(t, order)
    y = x[:, None] + np.sqrt(r) * rng.standard_normal((n, reps))
    draws = (w @ y)[ok]
    emp = np.cov(draws)
    c = cov[np.ix_(ok, ok)]
    # elementwise: sampling sd of a covariance estimate ~ sqrt((c_ii c_jj + c_ij^2) / reps)
    sd = np.sqrt((np.outer(np.diag(c), np.diag(c)) + c**2) / reps)
    assert np.max(np.abs(emp - c) / sd) < 5.0
    # banded: stencils that do not overlap are uncorrelated
    m = stencil_size(order, accuracy, kind)
    i, j = np.nonzero(ok[:, None] & ok[None, :])
    far = np.abs(i - j) >= m
    assert np.all(cov[i[far], j[far]] == 0.0)


def test_central_first_difference_variance_is_r_over_2h2():
    t = np.arange(20) * 0.1
    est = Differencing(noise_var=0.5).fit(np.zeros(20), time=t)
    cov = est.derivative_cov(1)
    np.testing.assert_allclose(np.diag(cov)[1:-1], 0.5 / (2 * 0.1**2))
    assert np.isnan(cov[0]).all() and np.isnan(cov[:, -1]).all()
    sparse, ok = est.derivative_cov_sparse(1)
    np.testing.assert_allclose(sparse.toarray()[np.ix_(ok, ok)], cov[np.ix_(ok, ok)])


def test_noise_variance_estimator_recovers_r_on_irregular_grid(rng):
    n, r = 400, 0.01
    t = np.sort(rng.uniform(0, 10, n))
    est = [noise_variance(t, np.sin(t) + np.sqrt(r) * rng.standard_normal(n)) for _ in range(50)]
    assert abs(np.mean(est) / r - 1) < 0.05
    y = np.sin(t) + np.sqrt(r) * rng.standard_normal(n)
    fitted = Differencing().fit(y, time=t)
    assert fitted.fitted_noise_var() == noise_variance(t, y)
    assert Differencing(noise_var=0.3).fit(y, time=t).fitted_noise_var() == 0.3
    assert fitted.info_["noise_var_source"] == "GSJS estimate"


# --------------------------------------------------------------------- segments & pandas
def test_segments_never_differenced_across_boundary(rng):
    t1 = np.linspace(0, 1, 15)
    t2 = np.linspace(0, 1, 12)
    y1, y2 = t1**2, 5 + 3 * t2
    df = pd.DataFrame({"t": np.r_[t1, t2], "x": np.r_[y1, y2], "run": ["a"] * 15 + ["b"] * 12})
    out = Differencing().fit(df, time="t", segment="run").derivative(1)
    d = out["d(x)"].to_numpy()
    np.testing.assert_allclose(d[1:14], 2 * t1[1:14], atol=1e-12)
    np.testing.assert_allclose(d[16:26], 3.0, atol=1e-12)
    assert np.isnan(d[[0, 14, 15, 26]]).all()


def test_pandas_series_frame_and_datetime_index():
    idx = pd.date_range("2025-03-01", periods=30, freq="500ms")
    t = np.arange(30) * 0.5
    s = pd.Series(np.sin(t), index=idx, name="x")
    out = dr.derivative(s, method="difference", accuracy=4)
    assert isinstance(out, pd.Series) and out.name == "d(x)"
    assert out.index.equals(idx)
    # result is per second (time_unit="s")
    np.testing.assert_allclose(out.iloc[2:-2], np.cos(t[2:-2]), atol=3e-3)
    out_ms = dr.derivative(s, method="difference", time_unit="ms", accuracy=4)
    np.testing.assert_allclose(out_ms.iloc[2:-2], np.cos(t[2:-2]) / 1000, atol=3e-6)
    frame = pd.DataFrame({"x": np.sin(t), "y": t**2}, index=t)
    dfo = Differencing().fit(frame).derivative(2)
    assert list(dfo.columns) == ["d(x, 2)", "d(y, 2)"]
    np.testing.assert_allclose(dfo["d(y, 2)"].iloc[1:-1], 2.0)
    assert dfo.attrs["method"] == "difference"
    arr = Differencing().fit(np.sin(t), time=t).derivative(1)
    assert isinstance(arr, np.ndarray) and arr.shape == (30,)


def test_too_few_points_and_bad_parameters():
    t = np.linspace(0, 1, 8)
    with pytest.raises(TooFewPointsError):
        Differencing().fit(np.ones(2), time=t[:2])
    est = Differencing(accuracy=6).fit(np.sin(t), time=t)  # 7 points for order 1
    assert np.isfinite(est.derivative(1)[3])
    with pytest.raises(TooFewPointsError, match="9 points"):
        est.derivative(3)
    with pytest.raises(TooFewPointsError):
        Differencing(accuracy=6).fit(np.sin(t[:6]), time=t[:6])
    with pytest.raises(DataError, match="kind"):
        Differencing(kind="centered").fit(np.sin(t), time=t)
    with pytest.raises(DataError, match="accuracy"):
        Differencing(accuracy=3).fit(np.sin(t), time=t)
    with pytest.raises(DataError, match="orders"):
        Differencing().fit(np.sin(t), time=t).derivative(4)


def test_intervals_from_estimated_covariance_cover_on_a_quadratic(rng):
    # no truncation error for a quadratic: W R Wᵀ with the GSJS estimate of r must cover
    n, reps, sd = 60, 400, 0.1
    t = np.sort(rng.uniform(0, 3, n))
    x = 1 + t - 0.4 * t**2
    truth = 1 - 0.8 * t
    hits = []
    for _ in range(reps):
        est = Differencing().fit(x + sd * rng.normal(size=n), time=t)
        d = est.derivative(1)
        se = np.sqrt(np.diag(est.derivative_cov(1)))
        ok = ~np.isnan(d)
        hits.append(np.abs(d[ok] - truth[ok]) <= 1.96 * se[ok])
    coverage = np.mean(hits)
    assert 0.93 < coverage < 0.97, coverage


@pytest.mark.slow
def test_slow_covariance_monte_carlo_all_stencils(rng):
    n, reps, r = 40, 20000, 0.01
    t = np.sort(rng.uniform(0, 2, n))
    for kind in KINDS:
        for acc in ACCS:
            for order in ORDERS:
                est = Differencing(kind=kind, accuracy=acc, noise_var=r).fit(np.sin(t), time=t)
                ok = est.defined(t, order)
                c = est.derivative_cov(order)[np.ix_(ok, ok)]
                draws = est.weights(t, order) @ (np.sqrt(r) * rng.standard_normal((n, reps)))
                emp = np.cov(draws[ok])
                se = np.sqrt((np.outer(np.diag(c), np.diag(c)) + c**2) / reps)
                assert np.max(np.abs(emp - c) / se) < 5.5, (kind, acc, order)
