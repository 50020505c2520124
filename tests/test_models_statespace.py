"""Continuous-time state-space ML: likelihood cross-checks, coverage and bias by Monte Carlo.

Monte-Carlo tolerances: a coverage estimate from R replications has standard error
``sqrt(0.95·0.05/R)`` (0.031 at R = 50, 0.0097 at R = 500) and a bias/SD estimate about
``1/sqrt(R)``; the tests widen the targets of issue 4 (coverage in [0.93, 0.97], |bias| < 0.2 SD)
by two of those standard errors. Measured at R = 200 (n = 200, |a|Δ = 0.5): coverage of a, b
0.92-0.96 and |bias| <= 0.16 SD in all three regimes; the slow tests run R = 500.

The design has |a|T = 100: the ML estimate of ``a`` has an O(1/T) small-sample bias (measured
-0.49 SD at |a|T = 20 under process noise), so short records do not meet |bias| < 0.2 SD.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.stats

import derivreg as dr
from derivreg.discretize import discretize_steps
from derivreg.exceptions import BiasWarning, MethodNotAvailableError, NonFiniteError
from derivreg.models.statespace import StateSpace, _LinearSDE, fit_linear_sde
from derivreg.simulate import first_order, motor, second_order

TRUTH = np.array([-1.0, 1.0])  # a (x), b (u)


def _segment(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = df.index.to_numpy(dtype=float)
    return t, df["x"].to_numpy(), np.column_stack([df["u"].to_numpy(), np.ones(len(df))])


# ---------------------------------------------------------------------- likelihood
def _numpy_kalman_loglike(t, y, W, a, b, c, sigma2, r, x0, hold) -> float:
    """Independent scalar Kalman filter with a known initial state (no statsmodels)."""
    d = discretize_steps([[a]], [[b, c]], [[np.sqrt(sigma2)]], t, [hold, "zoh"])
    m, P, ll = x0, 0.0, 0.0
    for k in range(len(t)):
        if np.isfinite(y[k]):
            F = P + r
            v = y[k] - m
            ll += scipy.stats.norm.logpdf(v, scale=np.sqrt(F))
            K = P / F
            m, P = m + K * v, (1 - K) * P
        if k < len(t) - 1:
            phi = d.phi[k, 0, 0]
            m = phi * m + d.gamma0[k, 0] @ W[k] + d.gamma1[k, 0] @ W[k + 1]
            P = phi * P * phi + d.q[k, 0, 0]
    return ll


@pytest.mark.parametrize("irregular", [False, True])
def test_loglike_matches_independent_filter(irregular: bool) -> None:
    rng = np.random.default_rng(3)
    t = np.cumsum(rng.exponential(0.3, 80)) if irregular else np.arange(80) * 0.3
    df = first_order(-0.8, 1.2, 0.3, t=t, u="multisine", input_hold="linear", sigma=0.4, tau=0.2)
    t, y, W = _segment(df)
    y = y.copy()
    y[[5, 17]] = np.nan  # missing observations
    model = _LinearSDE([(t, y, W)], 1, [0], ["linear", "zoh"], "both", "estimated")
    a, b, c, sigma2, r, x0 = -0.8, 1.2, 0.3, 0.16, 0.04, 0.7
    # (log s², ρ) with σ² = s² K cos²ρ, r = s² sin²ρ
    rho = np.arctan(np.sqrt(r * model.k_sigma / sigma2))
    s2 = r / np.sin(rho) ** 2
    params = np.array([a, b, c, np.log(s2), rho, x0])
    np.testing.assert_allclose(model.noise_variances(params), (sigma2, r), rtol=1e-12)
    expected = _numpy_kalman_loglike(t, y, W, a, b, c, sigma2, r, x0, "linear")
    np.testing.assert_allclose(model.loglike(params), expected, rtol=1e-9)


def test_regular_and_time_varying_paths_agree_and_segments_add() -> None:
    df = first_order(-1.0, 1.0, 0.5, n=120, dt=0.2, u="switching", sigma=0.5, tau=0.1, seed=8)
    t, y, W = _segment(df)
    params = np.array([-0.9, 1.1, 0.4, np.log(0.05), 0.6])
    regular = _LinearSDE([(t, y, W)], 1, [0], "zoh", "both", "diffuse")
    varying = _LinearSDE([(t, y, W)], 1, [0], "zoh", "both", "diffuse")
    varying.segments[0].regular = False  # force the time-varying system matrices
    np.testing.assert_allclose(regular.loglike(params), varying.loglike(params), rtol=1e-10)
    halves = [(t[:60], y[:60], W[:60]), (t[60:], y[60:], W[60:])]
    joint = _LinearSDE(halves, 1, [0], "zoh", "both", "diffuse")
    parts = [_LinearSDE([h], 1, [0], "zoh", "both", "diffuse").loglike(params) for h in halves]
    np.testing.assert_allclose(joint.loglike(params), sum(parts), rtol=1e-10)


# ---------------------------------------------------------------------- fits
def test_irregular_and_missing_data_fit() -> None:
    rng = np.random.default_rng(11)
    t = np.cumsum(rng.exponential(0.5, 250))
    df = first_order(-1.0, 1.0, 0.5, t=t, u="switching", sigma=0.3, tau=0.05, seed=12)
    df.loc[df.index[rng.choice(250, 25, replace=False)], "x"] = np.nan
    res = StateSpace("d(x) ~ x + u", df[["x", "u"]], input_hold="zoh").fit()
    z = (res.params[["x", "u", "Intercept"]] - [-1.0, 1.0, 0.5]) / res.bse[["x", "u", "Intercept"]]
    assert np.all(np.abs(z) < 3.5), z
    assert res.nobs == 225
    assert res.resid.isna().sum() == 25  # no innovation where y is missing


def test_second_order_linear_with_spring() -> None:
    df = second_order(
        -4.0, -0.8, 2.0, 0.0, n=400, dt=0.05, u="switching", sigma=0.3, tau=0.02, seed=2
    )
    res = StateSpace("d(x, 2) ~ x + d(x) + u - 1", df[["x", "u"]], input_hold="zoh").fit()
    z = (res.params[["x", "d(x)", "u"]] - [-4.0, -0.8, 2.0]) / res.bse[["x", "d(x)", "u"]]
    assert np.all(np.abs(z) < 3.5), (res.params, res.bse)
    assert res.initial_conditions is not None and ("x", 1) in res.initial_conditions[0]


def test_motor_sign_fallback_is_documented_and_close() -> None:
    kS, kV, kA = 0.5, 2.0, 0.4
    df = motor(kS, kV, kA, dt=0.01, quasistatic_duration=3.0, tau=1e-4, seed=4)
    # drop the rows held by static friction before breakaway (the relation does not hold there)
    moving = df.groupby("test", sort=False)["v_true"].transform(lambda v: (v != 0).cummax())
    df = df[moving.to_numpy()]
    res = StateSpace(
        "d(x, 2) ~ d(x) + u + sign(d(x)) - 1", df, time="t", segment="test", input_hold="zoh"
    ).fit()
    truth = pd.Series({"d(x)": -kV / kA, "u": 1 / kA, "sign(d(x))": -kS / kA})
    np.testing.assert_allclose(res.params[truth.index], truth, rtol=0.05)
    assert "not an extended Kalman filter" in res.info["nonlinear terms"]


def test_noise_regime_option_and_results() -> None:
    df = first_order(-1.0, 1.0, 0.5, n=150, dt=0.5, u="switching", sigma=0.5, seed=9)
    res = dr.fit("d(x) ~ x + u", df[["x", "u"]], method="statespace", noise="process")
    assert res.info["measurement noise r"] == 0.0
    assert res.info["noise at zero"] == "r"
    assert res.method == "statespace" and res.cov_type == "oim"
    assert set(res.nuisance["term"]) >= {"sigma2 (process noise intensity)"}
    # innovations of a correct model are white
    assert res.diagnostics.ljung_box_pvalue > 0.001


def test_bad_input() -> None:
    df = first_order(-1.0, 1.0, 0.5, n=50, dt=0.5, u="switching", seed=1)[["x", "u"]]
    df.loc[df.index[3], "u"] = np.nan
    with pytest.raises(NonFiniteError, match="inputs"):
        StateSpace("d(x) ~ x + u", df).fit()
    with pytest.raises(MethodNotAvailableError, match="derivative of an input"):
        StateSpace("d(x) ~ x + d(u)", df.fillna(0.0)).fit()
    with pytest.raises(MethodNotAvailableError):
        StateSpace(["d(x) ~ x + u", "d(u) ~ x"], df.fillna(0.0))


# ---------------------------------------------------------------------- Monte Carlo
CELLS = {
    "process": dict(u="switching", hold="zoh", sigma=0.5, tau=0.0, irregular=False),
    "measurement": dict(u="multisine", hold="linear", sigma=0.0, tau=0.1, irregular=False),
    "both-irregular": dict(u="switching", hold="zoh", sigma=0.5, tau=0.1, irregular=True),
}


def _mc(R: int, u: str, hold: str, sigma: float, tau: float, irregular: bool, seed0: int):
    est, se = [], []
    for r in range(R):
        rng = np.random.default_rng(seed0 + r)
        t = np.cumsum(rng.exponential(0.5, 200)) if irregular else None
        df = first_order(
            -1.0,
            1.0,
            0.5,
            n=200,
            dt=0.5,
            t=t,
            u=u,
            input_hold=hold,
            sigma=sigma,
            tau=tau,
            seed=seed0 + r,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = StateSpace("d(x) ~ x + u", df[["x", "u"]], input_hold=hold).fit()
        est.append(res.params[["x", "u"]].to_numpy())
        se.append(res.bse[["x", "u"]].to_numpy())
    est, se = np.array(est), np.array(se)
    cov = np.mean(np.abs(est - TRUTH) <= 1.959964 * se, axis=0)
    bias = (est.mean(axis=0) - TRUTH) / est.std(axis=0, ddof=1)
    return cov, bias


@pytest.mark.parametrize("cell", list(CELLS))
def test_mc_coverage_and_bias(cell: str) -> None:
    R = 50
    cov, bias = _mc(R, **CELLS[cell], seed0=7000)
    mc = np.sqrt(0.95 * 0.05 / R)
    assert np.all((cov >= 0.93 - 2 * mc) & (cov <= 0.97 + 2 * mc)), (cov, bias)
    assert np.all(np.abs(bias) < 0.2 + 2 / np.sqrt(R)), (cov, bias)


@pytest.mark.slow
@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("u", ["switching", "multisine"])
def test_mc_coverage_and_bias_slow(cell: str, u: str) -> None:
    R = 500
    spec = {**CELLS[cell], "u": u, "hold": "zoh" if u == "switching" else "linear"}
    cov, bias = _mc(R, **spec, seed0=90000)
    print(f"statespace {cell} {u}: coverage (a, b) {cov}, bias/SD {np.round(bias, 3)}")
    mc = np.sqrt(0.95 * 0.05 / R)
    assert np.all((cov >= 0.93 - 2 * mc) & (cov <= 0.97 + 2 * mc)), (cov, bias)
    assert np.all(np.abs(bias) < 0.2 + 2 / np.sqrt(R)), (cov, bias)


def test_core_agrees_with_model_class() -> None:
    df = first_order(-1.0, 1.0, 0.5, n=100, dt=0.5, u="switching", sigma=0.5, tau=0.1, seed=5)
    core = fit_linear_sde([_segment(df)], order=1, state_terms=[0], hold=["zoh", "zoh"])
    res = StateSpace("d(x) ~ x + u", df[["x", "u"]], input_hold="zoh").fit()
    np.testing.assert_allclose(res.params[["x", "u", "Intercept"]], core.theta, rtol=1e-4)


def test_time_unit_rescales_coefficients_and_errors() -> None:
    # the same data with time in milliseconds: rates are 1000x smaller, so are their SEs
    df = first_order(-1.0, 1.0, 0.5, n=150, dt=0.5, u="switching", sigma=0.5, tau=0.1, seed=21)
    ms = df[["x", "u"]].copy()
    ms.index = ms.index * 1000.0
    r_s = StateSpace("d(x) ~ x + u", df[["x", "u"]], input_hold="zoh").fit()
    r_ms = StateSpace("d(x) ~ x + u", ms, input_hold="zoh").fit()
    np.testing.assert_allclose(r_ms.params * 1000, r_s.params, rtol=1e-3)
    np.testing.assert_allclose(r_ms.bse * 1000, r_s.bse, rtol=2e-2)


def test_wrong_input_hold_is_detected_and_the_right_one_is_not_flagged():
    # a square wave held between samples, fast dynamics (a dt = -1): fitted as a linear hold
    # (the default) the estimate of a is +1.5 instead of -4.9; the innovations follow the
    # input's changes and the fit says so
    df = first_order(-4.9, 2.0, 0.5, n=200, dt=0.2, tau=0.02, seed=3, u="square")[["x", "u"]]
    with pytest.warns(BiasWarning, match="input_hold='zoh'"):
        wrong = dr.fit("d(x) ~ x + u", df, method="statespace")
    assert wrong.info["input hold check p-value"] < 1e-3
    assert "Input hold check" in wrong.summary()
    with warnings.catch_warnings():
        warnings.simplefilter("error", BiasWarning)
        right = dr.fit("d(x) ~ x + u", df, method="statespace", input_hold="zoh")
    assert right.info["input hold check p-value"] > 1e-3
    assert abs(right.params["x"] + 4.9) < 3 * right.bse["x"]


def test_input_hold_check_has_no_false_alarms_under_the_right_hold():
    # measured: 0 of 400 correctly specified fits flagged at p < 1e-3 (p < 0.05 in 0-3%)
    pvals = []
    for seed in range(20):
        for hold, u in (("linear", "multisine"), ("zoh", "square")):
            df = first_order(
                -2.0,
                2.0,
                0.5,
                n=200,
                dt=0.1,
                sigma=0.3,
                tau=0.05,
                seed=seed,
                u=u,
                input_hold=hold,
            )
            res = dr.fit("d(x) ~ x + u", df[["x", "u"]], method="statespace", input_hold=hold)
            pvals.append(res.info["input hold check p-value"])
    pvals = np.array(pvals)
    assert np.all(pvals > 1e-3)
    assert np.mean(pvals < 0.05) <= 0.15
