"""Integrated form: recovery, coverage by Monte Carlo, exact input integration, segments, windows.

Measured (seeds as in the tests, default ``cov_type="sandwich"`` with the implied
measurement-noise covariance and the errors-in-variables correction):

* ``dx/dt = -x + 2u + 0.5``, switching input held between samples, n = 300, Δ = 0.05,
  measurement noise τ = 0.05: coverage of the 95% intervals (intercept, a, b) = 0.93, 0.96, 0.96
  over 300 replications, |bias| <= 0.1 SD;
* under process noise (σ = 0.3, τ = 0.05) coverage drops to about 0.90 and a is biased by 0.3 SD
  (regressors correlated with the accumulated noise): the fit warns (BiasWarning) — use
  ``method="statespace"`` there;
* motor ``d(x, 2) ~ d(x) + u + sign(d(x))``, position only (τ = 0.002, Δ = 0.02), four tests as
  segments, 100 replications: coverage 0.98, 0.98, 0.97 (d(x), u, sign(d(x))), |bias| <= 0.06
  SD, SE/SD 1.06-1.10 (slightly conservative).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import derivreg as dr
from derivreg.exceptions import (
    BiasWarning,
    DataError,
    ExcitationWarning,
    IdentificationError,
    MethodNotAvailableError,
)
from derivreg.models import IntegralOLS
from derivreg.simulate import first_order, lotka_volterra, motor

FIRST = "d(x) ~ x + u"
MOTOR = "d(x, 2) ~ d(x) + u + sign(d(x)) - 1"
TRUTH_FIRST = {"Intercept": 0.5, "x": -1.0, "u": 2.0}


def _first(seed: int, n: int = 300, tau: float = 0.05, **kw) -> pd.DataFrame:
    return first_order(-1.0, 2.0, 0.5, n=n, dt=0.05, tau=tau, seed=seed, **kw)


def _motor(seed: int, tau: float = 0.002, dt: float = 0.02, **kw) -> pd.DataFrame:
    df = motor(kS=0.5, kV=2.0, kA=0.4, dt=dt, tau=tau, seed=seed, **kw)
    # the mechanism sits at rest (held by static friction) until the voltage exceeds kS: the
    # relation does not hold there, so the test starts each segment at breakaway
    return df[df["v_true"] != 0]


def _coverage(reps: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    truth = np.array(list(TRUTH_FIRST.values()))
    est, se = [], []
    for seed in range(reps):
        res = dr.fit(FIRST, _first(seed, n=n), method="integral", input_hold="zoh")
        est.append(res.params[list(TRUTH_FIRST)].to_numpy())
        se.append(res.bse[list(TRUTH_FIRST)].to_numpy())
    e, s = np.array(est), np.array(se)
    cover = (np.abs(e - truth) <= 1.959964 * s).mean(axis=0)
    bias_sd = (e.mean(axis=0) - truth) / e.std(axis=0)
    return cover, bias_sd, s.mean(axis=0) / e.std(axis=0)


def test_integral_covers_a_b_in_092_098_measurement_noise_first_order():
    """200 replications (n = 300): coverage of a and b in [0.92, 0.98], |bias| < 0.2 SD."""
    cover, bias_sd, _ = _coverage(200, 300)
    assert 0.92 <= cover[1] <= 0.98, cover
    assert 0.92 <= cover[2] <= 0.98, cover
    assert np.all(np.abs(bias_sd[1:]) < 0.2), bias_sd


@pytest.mark.slow
def test_integral_covers_slow_1000_replications():
    cover, bias_sd, ratio = _coverage(1000, 300)
    assert np.all((cover >= 0.93) & (cover <= 0.97)), cover
    assert np.all(np.abs(bias_sd) < 0.2), bias_sd
    assert np.all(np.abs(ratio - 1) < 0.15), ratio


def test_ols_standard_errors_too_small_for_contrast():
    df = _first(3)
    default = dr.fit(FIRST, df, method="integral", input_hold="zoh")
    naive = dr.fit(FIRST, df, method="integral", input_hold="zoh", cov_type="nonrobust")
    assert default.cov_type == "sandwich"
    assert naive.bse["x"] < 0.7 * default.bse["x"]  # measured 0.56


def test_noise_free_zoh_input_integrated_exactly_but_linear_hold_biases():
    df = first_order(-1.0, 2.0, 0.5, n=400, dt=0.05, tau=0.0, seed=2, input_hold="zoh")
    exact = IntegralOLS(FIRST, df, input_hold="zoh").fit(cov_type="nonrobust")
    wrong = IntegralOLS(FIRST, df, input_hold="linear").fit(cov_type="nonrobust")
    err_exact = np.abs(exact.params - pd.Series(TRUTH_FIRST)).max()
    err_wrong = np.abs(wrong.params - pd.Series(TRUTH_FIRST)).max()
    # measured: 4.3e-4 (quadrature of the state's kinks) vs 3.7e-2 with the wrong hold
    assert err_exact < 1e-3
    assert err_wrong > 30 * err_exact


def test_initial_conditions_are_nuisance_and_simulate_reproduces_the_path():
    df = _first(5, tau=0.01)
    res = dr.fit(FIRST, df, method="integral", input_hold="zoh")
    assert list(res.params.index) == ["Intercept", "x", "u"]
    assert len(res.nuisance) == 1
    assert res.nuisance["estimate"].iloc[0] == pytest.approx(df["x_true"].iloc[0], abs=0.02)
    sim = res.simulate()
    assert list(sim.columns) == ["x"]
    assert np.abs(sim["x"] - df["x_true"]).max() < 0.05


def test_window_variant_recovers_coefficients_with_one_ic_per_window():
    df = _first(7, n=400)
    res = dr.fit(FIRST, df, method="integral", input_hold="zoh", window=5.0)
    assert len(res.nuisance) == 4
    z = (res.params - pd.Series(TRUTH_FIRST)) / res.bse
    assert np.all(np.abs(z) < 3), z
    assert res.info["window"] == 5.0


def test_motor_recovered_within_3_se_from_position_only():
    df = _motor(11)
    res = dr.fit(MOTOR, df, method="integral", time="t", segment="test", input_hold="zoh")
    truth = pd.Series(df.attrs["truth"])
    z = (res.params - truth[res.params.index]) / res.bse
    assert np.all(np.abs(z) < 3), z
    assert len(res.nuisance) == 8  # two initial-condition terms per test
    text = res.summary()
    for word in ("d(x, 2) ~ d(x) + u + sign(d(x))", "sandwich", "No. segments", "Ljung-Box"):
        assert word in text


def test_motor_coverage_in_range_20_replications():
    """20 replications: every coefficient covered at least 17 times (binomial 95% band)."""
    truth = np.array([-5.0, 2.5, -1.25])
    hits = np.zeros(3)
    for seed in range(20):
        df = _motor(100 + seed)
        res = dr.fit(MOTOR, df, method="integral", time="t", segment="test", input_hold="zoh")
        ci = res.conf_int()
        hits += (ci["lower"].to_numpy() <= truth) & (truth <= ci["upper"].to_numpy())
    assert np.all(hits >= 17), hits


@pytest.mark.slow
def test_motor_coverage_slow_100_replications_measured_098_098_097():
    truth = np.array([-5.0, 2.5, -1.25])
    est, se = [], []
    for seed in range(100):
        res = dr.fit(
            MOTOR, _motor(seed), method="integral", time="t", segment="test", input_hold="zoh"
        )
        est.append(res.params.to_numpy())
        se.append(res.bse.to_numpy())
    e, s = np.array(est), np.array(se)
    cover = (np.abs(e - truth) <= 1.959964 * s).mean(axis=0)
    assert np.all((cover >= 0.92) & (cover <= 0.99)), cover
    assert np.all(np.abs((e.mean(axis=0) - truth) / e.std(axis=0)) < 0.2)


def test_process_noise_regime_warns_bias():
    """sigma = 0.3: warned in 100 of 100 seeds, none of 100 without process noise (measured)."""
    df = _first(2, sigma=0.3)
    with pytest.warns(BiasWarning, match="process noise"):
        res = dr.fit(FIRST, df, method="integral", input_hold="zoh")
    assert res.info["process noise SD x"] > 0.1
    with warnings.catch_warnings():
        warnings.simplefilter("error", BiasWarning)
        dr.fit(FIRST, _first(2), method="integral", input_hold="zoh")


def test_motor_dominated_by_steady_state_warns_excitation():
    df = _motor(12, steady_state=25.0)
    with pytest.warns(ExcitationWarning, match="steady state"):
        res = dr.fit(MOTOR, df, method="integral", time="t", segment="test", input_hold="zoh")
    assert res.diagnostics.steady_state_share > 0.5
    assert any("steady state" in w for w in res.warnings)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExcitationWarning)
        ok = dr.fit(
            MOTOR, _motor(12), method="integral", time="t", segment="test", input_hold="zoh"
        )
    assert ok.diagnostics.steady_state_share < 0.3


def test_lotka_volterra_system_all_four_parameters():
    df = lotka_volterra(n=200, t_end=20.0, tau=0.01, seed=4)
    res = dr.fit(["d(x) ~ x + x:y - 1", "d(y) ~ y + x:y - 1"], df, method="integral")
    truth = df.attrs["truth"]
    got = res.params
    assert isinstance(got.index, pd.MultiIndex)
    for eq, name in (("d(x)", "x"), ("d(y)", "y")):
        for term, value in truth[name].items():
            assert got[(eq, term)] == pytest.approx(value, rel=0.05, abs=0.02)
            assert abs(got[(eq, term)] - value) < 4 * res.bse[(eq, term)]
    cov = res.cov_params()
    assert cov.shape == (4, 4)
    assert abs(cov.loc[("d(x)", "x"), ("d(y)", "y")]) > 0  # cross-equation covariance
    assert set(res.to_frame()["equation"]) == {"d(x)", "d(y)"}


def test_irregular_time_datetime_index_and_segments():
    rng = np.random.default_rng(1)
    t = np.cumsum(rng.uniform(0.03, 0.07, 300))
    df = first_order(-1.0, 2.0, 0.5, t=t, tau=0.02, seed=8)
    res = dr.fit(FIRST, df, method="integral", input_hold="zoh")
    z = (res.params - pd.Series(TRUTH_FIRST)) / res.bse
    assert np.all(np.abs(z) < 3.5), z
    stamped = df.set_axis(pd.Timestamp("2026-01-01") + pd.to_timedelta(df.index, unit="s"))
    res_dt = dr.fit(FIRST, stamped, method="integral", input_hold="zoh")
    np.testing.assert_allclose(res_dt.params, res.params, rtol=1e-9)
    assert res_dt.resid.index.equals(stamped.index)
    # two experiments as segments: nothing integrated across the boundary
    a, b = _first(21, n=200), _first(22, n=200)
    both = pd.concat([a.assign(run=1), b.assign(run=2)])
    res2 = dr.fit(
        FIRST, both.reset_index(), method="integral", time="t", segment="run", input_hold="zoh"
    )
    assert len(res2.nuisance) == 2
    assert res2.resid.index.equals(both.reset_index().index)


def test_identification_and_option_errors():
    df = _first(1).assign(k=3.0)
    with pytest.raises(IdentificationError, match="'k'"):
        dr.fit("d(x) ~ x + u + k", df, method="integral")
    with pytest.raises(MethodNotAvailableError):
        dr.fit("d(x) ~ x + d(u, 2)", df, method="integral")
    with pytest.raises(DataError, match="no option"):
        dr.fit(FIRST, df, method="integral", bogus=1)
    with pytest.raises(DataError, match="cov_type"):
        dr.fit(FIRST, df, method="integral", cov_type="HC3")
