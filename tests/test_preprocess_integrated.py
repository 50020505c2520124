"""Cumulative p-fold integrals: quadrature accuracy, exact held-input integrals, segments."""

from __future__ import annotations

import itertools
from math import factorial

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import quad

from derivreg.exceptions import DataError, DataWarning, MethodNotAvailableError, TooFewPointsError
from derivreg.preprocess import Integrated
from derivreg.preprocess.integrated import cumulative_integral, integrate_input


def exp_integral(t: np.ndarray, p: int) -> np.ndarray:
    """p-fold integral of exp from 0: exp(t) - sum_{i<p} t^i / i!."""
    return np.exp(t) - sum(t**i / factorial(i) for i in range(p))


def held(t: np.ndarray, u: np.ndarray, hold: str):
    def f(s: float) -> float:
        k = min(int(np.searchsorted(t, s, side="right")) - 1, len(t) - 2)
        if hold == "zoh":
            return float(u[k])
        return float(u[k] + (u[k + 1] - u[k]) * (s - t[k]) / (t[k + 1] - t[k]))

    return f


def cauchy_integral(f, t0: float, tk: float, p: int, breaks: np.ndarray) -> float:
    """(I^p f)(tk) by adaptive quadrature of Cauchy's formula, piece by piece."""
    pts = np.r_[t0, breaks[(breaks > t0) & (breaks < tk)], tk]
    return sum(
        quad(lambda s: (tk - s) ** (p - 1) / factorial(p - 1) * f(s), a, b, epsabs=1e-13)[0]
        for a, b in itertools.pairwise(pts)
    )


@pytest.mark.parametrize(("rule", "rate"), [("trapezoid", 2), ("simpson", 4)])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_quadrature_convergence_rate(rule, rate, order):
    errs = []
    for n in (21, 41, 81):
        t = np.linspace(0, 2, n)
        errs.append(
            np.max(np.abs(cumulative_integral(t, np.exp(t), order, rule) - exp_integral(t, order)))
        )
    rates = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all(np.abs(rates - rate) < 0.15), rates


@pytest.mark.parametrize(
    ("rule", "order", "degree"),
    [("trapezoid", 1, 1), ("trapezoid", 2, 0), ("simpson", 1, 2), ("simpson", 2, 1)],
)
def test_quadrature_exact_on_low_degree_polynomials_irregular(rule, order, degree, rng):
    t = np.sort(rng.uniform(0.5, 3.0, 25))
    poly = np.polynomial.Polynomial(rng.normal(size=degree + 1))
    q = poly  # p-fold integral with every level vanishing at t0
    for _ in range(order):
        q = q.integ(1, lbnd=t[0])
    truth = q(t)
    np.testing.assert_allclose(cumulative_integral(t, poly(t), order, rule), truth, atol=1e-10)


@pytest.mark.parametrize("hold", ["zoh", "linear"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_integrate_input_exact_for_held_switching_input(hold, order, rng):
    t = np.sort(rng.uniform(0, 4, 14))
    u = np.sign(np.sin(3 * t)) + 0.3 * rng.normal(size=14)
    f = held(t, u, hold)
    truth = [cauchy_integral(f, t[0], tk, order, t) for tk in t]
    np.testing.assert_allclose(integrate_input(t, u, order, hold), truth, atol=1e-11)


def test_zoh_step_closed_form_and_trapezoid_bias():
    # unit step held from t = 1: I^p u(t) = (t - 1)^p / p! for t >= 1
    t = np.arange(0.0, 3.01, 0.25)
    u = (t >= 1.0).astype(float)
    for p in (1, 2, 3):
        exact = np.where(t >= 1, (t - 1) ** p / factorial(p), 0.0)
        np.testing.assert_allclose(integrate_input(t, u, p, "zoh"), exact, atol=1e-14)
    # the trapezoid rule smears the step over one interval: a constant offset of h/2 after it
    trap = cumulative_integral(t, u, 1, "trapezoid")
    np.testing.assert_allclose(trap[t > 1] - (t[t > 1] - 1), 0.125)


def test_linear_hold_equals_trapezoid_for_one_integration(rng):
    t = np.sort(rng.uniform(0, 5, 30))
    u = rng.normal(size=(30, 2))
    np.testing.assert_allclose(
        integrate_input(t, u, 1, "linear"), cumulative_integral(t, u, 1, "trapezoid"), atol=1e-12
    )


@settings(max_examples=30, deadline=None)
@given(
    steps=st.lists(st.floats(0.01, 1.0), min_size=3, max_size=30),
    shift=st.floats(-100, 100),
    a=st.floats(-3, 3),
    order=st.integers(1, 3),
    hold=st.sampled_from(["zoh", "linear"]),
)
def test_property_shift_invariance_and_linearity(steps, shift, a, order, hold):
    t = np.concatenate([[0.0], np.cumsum(steps)])
    u = np.cos(t)
    v = t**2
    base = integrate_input(t, u, order, hold)
    np.testing.assert_allclose(integrate_input(t + shift, u, order, hold), base, atol=1e-8)
    lin = integrate_input(t, a * u + v, order, hold)
    np.testing.assert_allclose(
        lin, a * base + integrate_input(t, v, order, hold), atol=1e-9 * (1 + np.abs(lin).max())
    )


@settings(max_examples=30, deadline=None)
@given(
    steps=st.lists(st.floats(0.01, 1.0), min_size=2, max_size=30),
    c=st.floats(-5, 5),
    order=st.integers(1, 3),
)
def test_property_constant_input_integrates_to_power(steps, c, order):
    t = np.concatenate([[0.0], np.cumsum(steps)])
    expected = c * (t - t[0]) ** order / factorial(order)
    for hold in ("zoh", "linear"):
        got = integrate_input(t, np.full_like(t, c), order, hold)
        np.testing.assert_allclose(got, expected, atol=1e-9 * (1 + np.abs(expected).max()))
    if order <= 2:  # repeated trapezoid: exact for constants up to two integrations only
        got = cumulative_integral(t, np.full_like(t, c), order, "trapezoid")
        np.testing.assert_allclose(got, expected, atol=1e-9 * (1 + np.abs(expected).max()))


def test_segments_restart_at_zero_and_never_cross(rng):
    t1 = np.linspace(0, 1, 11)
    t2 = np.linspace(5, 6, 9)
    df = pd.DataFrame(
        {"t": np.r_[t1, t2], "x": np.r_[np.ones(11), 2 * np.ones(9)], "run": [1] * 11 + [2] * 9}
    )
    out = Integrated(order=2).fit(df, time="t", segment="run").integrate()
    assert list(out.columns) == ["I(x, 2)"]
    got = out["I(x, 2)"].to_numpy()
    np.testing.assert_allclose(got[:11], t1**2 / 2, atol=1e-12)
    np.testing.assert_allclose(got[11:], 2 * (t2 - 5) ** 2 / 2, atol=1e-12)


def test_pandas_in_out_and_hold_parameter():
    idx = pd.date_range("2024-05-01", periods=21, freq="100ms")
    s = pd.Series(np.ones(21), index=idx, name="u")
    out = Integrated().fit(s).integrate()
    assert isinstance(out, pd.Series) and out.name == "I(u)" and out.index.equals(idx)
    np.testing.assert_allclose(out.to_numpy(), np.arange(21) * 0.1, atol=1e-12)
    out3 = Integrated(order=1).fit(s).integrate(3)
    assert out3.name == "I(u, 3)"
    t = np.arange(6.0)
    frame = pd.DataFrame({"u": [0, 0, 1, 1, 0, 0.0], "v": t}, index=t)
    res = Integrated(hold="zoh").fit(frame).integrate()
    assert list(res.columns) == ["I(u)", "I(v)"]
    np.testing.assert_allclose(res["I(u)"], [0, 0, 0, 1, 2, 2])
    arr = Integrated(rule="simpson").fit(t**2, time=t).integrate()
    np.testing.assert_allclose(arr, t**3 / 3, atol=1e-12)


def test_nan_rows_dropped_come_back_as_nan():
    t = np.arange(6.0)
    s = pd.Series([1.0, 1.0, np.nan, 1.0, 1.0, 1.0], index=t)
    with pytest.warns(DataWarning):
        out = Integrated().fit(s, nan_policy="drop").integrate()
    assert np.isnan(out.iloc[2])
    np.testing.assert_allclose(out.drop(2.0).to_numpy(), [0, 1, 3, 4, 5])


def test_not_a_derivative_estimator_and_bad_inputs():
    t = np.arange(5.0)
    est = Integrated().fit(t, time=t)
    with pytest.raises(MethodNotAvailableError, match="integrate"):
        est.derivative(1)
    with pytest.raises(DataError, match="rule"):
        Integrated(rule="midpoint").fit(t, time=t)
    with pytest.raises(DataError, match="hold"):
        integrate_input(t, t, 1, "cubic")
    with pytest.raises(DataError, match="order"):
        cumulative_integral(t, t, -1)
    with pytest.raises(TooFewPointsError):
        Integrated().fit(np.ones(1), time=[0.0])
    with pytest.raises(DataError):
        integrate_input(t, t[:4], 1)
