"""DiffRegResults, covariance estimators, diagnostics and the dr.fit front door."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats

import derivreg as dr
from derivreg import api
from derivreg.covariance import delta_method, hac_cov, ols_cov, system_cov
from derivreg.diagnostics import (
    check_identification,
    condition_number,
    robust_noise_variance,
    steady_state_share,
)
from derivreg.exceptions import (
    ColumnNotFoundError,
    ConvergenceWarning,
    DataError,
    FormulaError,
    IdentificationError,
    MethodNotAvailableError,
)
from derivreg.results import DiffRegResults
from derivreg.simulate import first_order

FIRST = "d(x) ~ x + u"


@pytest.fixture(scope="module")
def fitted() -> tuple[pd.DataFrame, DiffRegResults]:
    df = first_order(-1.0, 2.0, 0.5, n=300, dt=0.05, tau=0.02, seed=3)
    return df, dr.fit(FIRST, df, method="integral", input_hold="zoh")


def test_inference_attributes_are_consistent(fitted):
    _, res = fitted
    assert list(res.params.index) == ["Intercept", "x", "u"]
    cov = res.cov_params()
    np.testing.assert_allclose(cov.to_numpy(), cov.to_numpy().T)
    np.testing.assert_allclose(res.bse, np.sqrt(np.diag(cov)))
    np.testing.assert_allclose(res.tvalues, res.params / res.bse)
    np.testing.assert_allclose(res.pvalues, 2 * stats.norm.sf(np.abs(res.tvalues)))
    ci = res.conf_int(0.1)
    assert list(ci.columns) == ["lower", "upper"]
    np.testing.assert_allclose(ci["upper"], res.params + stats.norm.ppf(0.95) * res.bse)
    with pytest.raises(DataError):
        res.conf_int(1.5)


def test_tidy_frame_summary_and_html(fitted):
    df, res = fitted
    tidy = res.to_frame()
    assert list(tidy.columns) == ["term", "estimate", "se", "t", "p", "lower", "upper"]
    assert tidy["estimate"].to_numpy() == pytest.approx(res.params.to_numpy())
    text = res.summary()
    for piece in (
        "d(x) ~ Intercept + x + u",
        "integral",
        "Noise model",
        "sandwich",
        "No. observations:     300",
        "Ljung-Box",
        "Cond. No.",
        "Steady-state share",
    ):
        assert piece in text, piece
    html = res._repr_html_()
    assert "<table" in html and "Intercept" in html
    assert res.method == "integral" and res.nobs == 300
    assert res.resid.index.equals(df.index)
    np.testing.assert_allclose(res.resid + res.fittedvalues, df["x"])


def test_simulate_on_new_data_with_other_inputs(fitted):
    _, res = fitted
    new = first_order(-1.0, 2.0, 0.5, n=200, dt=0.05, tau=0.0, seed=9, u="multisine")
    sim = res.simulate(new)
    assert sim.index.equals(new.index)
    assert np.abs(sim["x"] - new["x_true"]).max() < 0.1


def test_simulate_of_a_diverging_relation_warns_and_stops(fitted):
    """An unstable fitted relation (x' = +8 x) must not hang the solver: NaN after blow-up."""
    _, res = fitted
    unstable = DiffRegResults(
        np.array([0.5, 8.0, 2.0]), res._cov, list(res.params.index), model=res.model
    )
    with pytest.warns(ConvergenceWarning, match="diverges"):
        sim = unstable.simulate()
    x = sim["x"].to_numpy()
    assert np.isfinite(x[:10]).all() and np.isnan(x[-10:]).all()
    finite = x[np.isfinite(x)]
    # e^(8 t) from x0 reaches 1e6 x the data scale before the end of the 15 s record
    assert np.abs(finite).max() <= 1e6 * (1 + np.abs(finite[0])) * 1.01


def test_auto_says_what_it_used_and_registry_errors(monkeypatch):
    df = first_order(-1.0, 2.0, 0.5, n=200, dt=0.05, tau=0.02, seed=1)
    res = dr.fit(FIRST, df, input_hold="zoh")  # method="auto" is the default
    assert res.method == f"auto -> {res.info['chosen']}"
    assert res.info["chosen"] in api.MODELS and res.info["reason"]
    assert res.info["reason"] in res.summary()
    with pytest.raises(DataError, match="unknown method"):
        dr.fit(FIRST, df, method="bogus")
    monkeypatch.setitem(api.MODELS, "later", "derivreg.models.not_written_yet:Later")
    with pytest.raises(MethodNotAvailableError, match="not available"):
        dr.fit(FIRST, df, method="later")


def test_formula_and_column_errors_through_fit():
    df = first_order(-1.0, 2.0, 0.5, n=100, dt=0.05, seed=1)
    with pytest.raises(ColumnNotFoundError, match="'w'"):
        dr.fit("d(x) ~ x + w", df, method="integral")
    with pytest.raises(ColumnNotFoundError, match="'z'"):
        dr.fit("d(z) ~ u", df, method="gradient")
    with pytest.raises(FormulaError):
        dr.fit("x ~ u", df, method="integral")


def test_hac_matches_statsmodels_and_segments_cut_lags():
    rng = np.random.default_rng(2)
    X = sm.add_constant(rng.normal(size=(200, 2)))
    e = np.convolve(rng.normal(size=203), np.ones(4) / 2, mode="valid")
    y = X @ [1.0, 2.0, -1.0] + e
    ols = sm.OLS(y, X).fit(cov_type="HAC", cov_kwds={"maxlags": 5, "use_correction": True})
    cov, used = hac_cov(X, ols.resid, maxlags=5)
    assert used == 5
    np.testing.assert_allclose(cov, ols.cov_params(), rtol=1e-10)
    auto_cov, info = ols_cov(X, ols.resid, "HAC")
    assert info["maxlags"] >= 2  # MA(3) errors need lags
    # the intercept's score is the MA(3) error itself: long-run variance 4x the variance
    assert auto_cov[0, 0] > 2.5 * ols_cov(X, ols.resid, "nonrobust")[0][0, 0]
    one, _ = system_cov([X], [ols.resid], "HAC", maxlags=5)
    np.testing.assert_allclose(one, cov, rtol=1e-10)
    segs = [np.arange(100), np.arange(100, 200)]
    cut, _ = hac_cov(X, ols.resid, maxlags=5, segments=segs)
    assert not np.allclose(cut, cov)


def test_delta_method_analytic_and_numerical():
    params = pd.Series({"b": 2.0, "c": -0.5})
    cov = pd.DataFrame([[0.04, 0.01], [0.01, 0.09]], index=params.index, columns=params.index)
    val, var = delta_method(lambda p: -p["c"] / p["b"], params, cov)
    J = np.array([params["c"] / params["b"] ** 2, -1 / params["b"]])  # d(-c/b)/d(b, c)
    assert val == pytest.approx(0.25)
    assert var == pytest.approx(J @ cov.to_numpy() @ J, rel=1e-6)
    vals, covs = delta_method(lambda p: {"kS": -p["c"] / p["b"], "kA": 1 / p["b"]}, params, cov)
    assert list(vals.index) == ["kS", "kA"]
    assert covs.loc["kA", "kA"] == pytest.approx(cov.loc["b", "b"] / 16, rel=1e-6)
    a_val, a_var = delta_method(np.log, [0.9], [[0.0004]], jac=lambda p: [[1 / p[0]]])
    assert a_val[0] == pytest.approx(np.log(0.9))
    assert a_var[0, 0] == pytest.approx(0.0004 / 0.81)


def test_identification_names_collinear_terms():
    rng = np.random.default_rng(0)
    x = rng.normal(size=50)
    u = rng.normal(size=50)
    X = np.column_stack([np.ones(50), x, u, 2 * x - u])
    with pytest.raises(IdentificationError, match=r"\['x', 'u', 'w'\]"):
        check_identification(X, ["Intercept", "x", "u", "w"])
    with pytest.raises(IdentificationError, match="'k' is constant"):
        check_identification(
            np.column_stack([np.ones(50), x, np.full(50, 3.0)]), ["Intercept", "x", "k"]
        )
    assert condition_number(np.column_stack([np.ones(50), x])) < 3


def test_steady_state_share_and_noise_estimate():
    t = np.arange(1000) * 0.01
    acc = np.where(t < 2, np.exp(-t), 0.0)  # transient, then steady
    held = np.where(t < 2, 1.0, 1.0)
    share = steady_state_share(acc, held[:, None], [np.arange(1000)], t=t)
    assert 0.75 < share < 0.85
    ramp = t.copy()  # a slowly changing input is not steady
    assert steady_state_share(acc, ramp[:, None], [np.arange(1000)], t=t) == 0.0
    rng = np.random.default_rng(1)
    y = np.sin(t) + 0.1 * rng.normal(size=1000)
    assert np.sqrt(robust_noise_variance(t, y)) == pytest.approx(0.1, rel=0.1)


def test_results_by_hand_system_index():
    res = DiffRegResults(
        [1.0, 2.0, 3.0],
        np.eye(3) * 0.01,
        ["x", "x:y", "y"],
        equations=["a", "a", "b"],
        method="manual",
        cov_type="nonrobust",
        nobs=10,
    )
    assert isinstance(res.params.index, pd.MultiIndex)
    assert res.params_of("b")["y"] == 3.0
    assert list(res.to_frame()["equation"]) == ["a", "a", "b"]
    with pytest.raises(DataError):
        DiffRegResults([1.0], np.eye(2), ["x"])


@pytest.mark.parametrize("n", [9, 50, 3000])
def test_ljung_box_equals_statsmodels(n):
    from statsmodels.stats.diagnostic import acorr_ljungbox

    from derivreg.diagnostics import ljung_box

    rng = np.random.default_rng(n)
    x = 0.1 * np.cumsum(rng.normal(size=n)) + rng.normal(size=n)
    lags = max(1, min(10, n // 5))
    ref = acorr_ljungbox(x - x.mean(), lags=[lags])
    q, p, used = ljung_box(x, lags)
    assert used == lags
    assert q == pytest.approx(float(ref["lb_stat"].iloc[0]), rel=1e-10)
    assert p == pytest.approx(float(ref["lb_pvalue"].iloc[0]), rel=1e-8, abs=1e-300)


def test_simulate_stick_slip_motor_matches_the_exact_simulator():
    """``kA x'' = u − kV x' − kS sign(x')`` with static friction: at rest below breakaway the
    ``sign()`` term used to make the solver chatter (budget exhausted, ~7 s, then NaN); as a
    stick-slip switch the simulated path equals the exact motor simulator's (same gains, same
    held voltages), holds still while ``|u| ≤ kS`` and is fast."""
    import time
    import warnings

    from derivreg.simulate import motor

    kS, kV, kA = 0.5, 2.0, 0.4
    clean = motor(kS, kV, kA, dt=0.02, leading_zeros=10, dynamic_duration=1.0)
    noisy = motor(kS, kV, kA, dt=0.02, leading_zeros=10, dynamic_duration=1.0, tau=0.002, seed=2)
    formula = "d(x, 2) ~ d(x) + u + sign(d(x)) - 1"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dr.DerivregWarning)
        fit = dr.fit(formula, noisy, method="gradient", time="t", segment="test",
                     input_hold="zoh")  # fmt: skip
    truth = pd.Series({"d(x)": -kV / kA, "u": 1 / kA, "sign(d(x))": -kS / kA})
    res = DiffRegResults(
        truth[list(fit.params.index)].to_numpy(), fit._cov, list(fit.params.index),
        model=fit.model,
    )  # fmt: skip
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        sim = res.simulate(clean)
    elapsed = time.perf_counter() - start
    assert np.isfinite(sim.to_numpy()).all()
    for col, true in (("x", "x_true"), ("d(x)", "v_true")):
        np.testing.assert_allclose(sim[col], clean[true], atol=1e-5 * clean[true].abs().max())
    held = (clean["v_true"] == 0).to_numpy()  # static friction holds (ramps below kS, 0-V rows)
    assert held.sum() > 150
    assert np.abs(sim["d(x)"].to_numpy()[held]).max() < 1e-9
    assert elapsed < 5.0, elapsed  # measured ~1 s (1100 samples, 4 tests); was ~7 s then NaN
