"""Small-sample bias of the state-space fit: the run-time BiasWarning and the parametric bootstrap.

Truth: ``dx = (a x + b u + c) dt + σ dW`` simulated exactly (:func:`derivreg.simulate.first_order`).
The ML estimate of ``a`` from a record of ``T`` time units has the Kendall-type bias of an
autoregression with unknown mean: ``E[φ̂] − φ ≈ −(1 + 3φ)/n`` for ``φ = e^{aΔ}``, i.e.
``E[â] − a ≈ −(1 + 3φ)/(φ n Δ) ≈ −4/T``, against ``SD(â) ≈ sqrt(2|a|/T)``.

Monte-Carlo tolerances: a bias/SD estimate from R replications has SE ``1/sqrt(R)``; a coverage
``sqrt(0.95·0.05/R)``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import derivreg as dr
from derivreg.exceptions import BiasWarning, DataError, MethodNotAvailableError
from derivreg.models._smallsample import KENDALL_C
from derivreg.models.statespace import StateSpace, _LinearSDE
from derivreg.simulate import first_order


def _bias_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, BiasWarning)]


def _fit(df, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = dr.fit("d(x) ~ x + u", df[["x", "u"]], input_hold="zoh", **kw)
    return res, _bias_warnings(caught)


# ---------------------------------------------------------------------- simulation
def test_simulate_matches_the_stationary_variances_and_keeps_missing_samples() -> None:
    # OU with measurement noise: Var x = σ²/(2|a|), Var y = Var x + r, Cov(y_k, y_k+1) = φ Var x
    a, sigma2, r, dt, n = -1.0, 0.25, 0.01, 0.1, 40_000
    t = np.arange(n) * dt
    y = np.zeros(n)
    y[[10, 500]] = np.nan
    model = _LinearSDE([(t, y, np.ones((n, 1)))], 1, [0], "zoh", "both", "diffuse")
    # (log s², ρ) with σ² = s² K cos²ρ, r = s² sin²ρ
    rho = np.arctan(np.sqrt(r * model.k_sigma / sigma2))
    params = np.array([a, 0.0, np.log(r / np.sin(rho) ** 2), rho])
    np.testing.assert_allclose(model.noise_variances(params), (sigma2, r), rtol=1e-12)
    (sim,) = model.simulate(params, [np.zeros(1)], np.random.default_rng(0))
    assert np.array_equal(np.isnan(sim), np.isnan(y))
    x = sim[1000:]
    x = x[np.isfinite(x)]
    vx = sigma2 / (2 * abs(a))
    # SE of a variance estimate of an AR(1) with φ = 0.905 over 39k samples: ~3.5%
    np.testing.assert_allclose(np.var(x), vx + r, rtol=0.1)
    lag = sim[1001:] * sim[1000:-1]
    np.testing.assert_allclose(np.nanmean(lag), np.exp(a * dt) * vx, rtol=0.1)


# ---------------------------------------------------------------------- diagnostic
def test_predicted_bias_matches_kendall_for_an_ou_process() -> None:
    # no input: s = 1, bias(a) = -c/T, SE(a) = sqrt(2|a|/T) -> bias/SE = -c / sqrt(2 |a| T)
    preds = []
    for seed in range(4):
        df = first_order(-1.0, 0.0, 0.5, n=150, dt=0.2, u=np.zeros(150), sigma=0.5, seed=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = dr.fit("d(x) ~ x", df[["x"]], method="statespace")
        info = res.info["small-sample bias"]
        aT = info["|a|T"]
        preds.append(info["predicted bias/SE"]["x"] * np.sqrt(2 * aT) / -KENDALL_C)
        assert 0.7 < info["process-noise share s"] <= 1.0
    # the fitted SE and the smoothed-state variance stand in for the asymptotic ones
    assert 0.6 < np.mean(preds) < 1.25, preds  # measured 0.79 (0.66-0.88)


def test_warning_fires_on_a_short_record_with_process_noise() -> None:
    # |a|T = 30 with a step input: the grid's cell 15 (bias -0.5 SD in x, +0.34 SD in u)
    df = first_order(-1.0, 1.0, 0.5, n=150, dt=0.2, u="step", sigma=0.5, seed=5)
    res, msgs = _fit(df)
    assert len(msgs) == 1, msgs
    msg = msgs[0]
    assert "|a|T = " in msg and "time constants" in msg and "cov_type='bootstrap'" in msg
    pred = res.info["small-sample bias"]["predicted bias/SE"]
    assert pred["x"] < -0.2 and pred["u"] > 0.1
    assert msg in res.warnings
    text = res.summary()
    assert "Small-sample bias/SE (pred.)" in text and "use cov_type='bootstrap'" in text


@pytest.mark.parametrize(
    "kind, kwargs",
    [
        # |a|T = 400 with process noise: predicted bias ~ -0.1 SE
        ("long record", dict(n=800, dt=0.5, sigma=0.5, tau=0.0)),
        # |a|T = 30, measurement noise only: no Kendall bias (grid regime B: |bias| <= 0.2 SD)
        ("measurement noise", dict(n=300, dt=0.1, sigma=0.0, tau=0.05)),
    ],
)
def test_warning_does_not_fire(kind: str, kwargs: dict) -> None:
    for seed in range(3):
        df = first_order(-1.0, 1.0, 0.5, u="switching", seed=seed, **kwargs)
        res, msgs = _fit(df)
        assert msgs == [], (kind, msgs)
        pred = res.info["small-sample bias"]["predicted bias/SE"]
        assert max(abs(v) for v in pred.values()) < 0.2, (kind, pred)
        assert res.diagnostics["Small-sample check"] == "ok"


def test_warning_on_both_noises_and_a_short_record() -> None:
    # regime C (process share ~ 40%) at |a|T = 30: observed-information SEs ~8% too small
    df = first_order(-1.0, 1.0, 0.5, n=300, dt=0.1, u="switching", sigma=0.5, tau=0.2, seed=1)
    res, msgs = _fit(df)
    info = res.info["small-sample bias"]
    assert 0.1 < info["process share of one-step variance"] < 0.9
    assert info["wald under-coverage"]
    assert len(msgs) == 1 and "8% too small" in msgs[0]


# ---------------------------------------------------------------------- bootstrap
def test_bootstrap_bias_estimate_matches_the_kendall_bias() -> None:
    # OU with unknown mean, |a|T = 30, Δ = 0.3: E[â] − a ≈ −(1 + 3φ)/(φ n Δ) = −0.145 (SD 0.26)
    a, n, dt = -1.0, 100, 0.3
    phi = np.exp(a * dt)
    kendall = -(1 + 3 * phi) / (phi * n * dt)
    biases, moved = [], []
    for seed in range(6):
        df = first_order(a, 0.0, 0.5, n=n, dt=dt, u=np.zeros(n), sigma=0.5, seed=100 + seed)
        res = dr.fit(
            "d(x) ~ x",
            df[["x"]],
            method="statespace",
            noise="process",
            cov_type="bootstrap",
            n_boot=24,
            seed=seed,
        )
        assert res.cov_type == "bootstrap" and res.info["n_boot"] == 24
        assert res.info["bootstrap failures"] <= 2
        b = res.info["bootstrap bias"]["x"]
        biases.append(b)
        before = res.info["estimate before bias correction"]["x"]
        moved.append(res.params["x"] - before)
        np.testing.assert_allclose(res.params["x"], before - b, rtol=1e-12)
        # bootstrap SE close to the observed-information SE here (no regime-C problem)
        ratio = res.bse["x"] / res.info["oim standard errors"]["x"]
        assert 0.6 < ratio < 1.6, ratio
    # mean of 6 bias estimates, each with MC SD ~ 0.26/sqrt(24) = 0.05 plus its θ̂-dependence
    assert 0.5 * kendall > np.mean(biases) > 1.8 * kendall, (biases, kendall)
    assert np.all(np.array(moved) > 0)  # the correction moves â towards 0 (up), as it should


def test_bootstrap_is_reproducible_with_seed() -> None:
    df = first_order(-1.0, 1.0, 0.5, n=80, dt=0.25, u="switching", sigma=0.5, tau=0.05, seed=4)
    kw = dict(method="statespace", input_hold="zoh", cov_type="bootstrap", n_boot=12)
    r1 = dr.fit("d(x) ~ x + u", df[["x", "u"]], seed=7, **kw)
    r2 = StateSpace("d(x) ~ x + u", df[["x", "u"]], input_hold="zoh").fit(
        cov_type="bootstrap", n_boot=12, seed=7
    )
    r3 = dr.fit("d(x) ~ x + u", df[["x", "u"]], seed=8, **kw)
    np.testing.assert_array_equal(r1.params, r2.params)
    np.testing.assert_array_equal(r1.bse, r2.bse)
    assert not np.allclose(r1.bse, r3.bse)
    assert r1.info["bootstrap seed entropy"] == "7"
    # the diagnostic is still reported, the warning is not issued (the bias was removed)
    assert "small-sample bias" in r1.info
    assert not any("Kendall" in w for w in r1.warnings)
    assert r1.diagnostics["Small-sample check"] == "bias removed by the bootstrap"


def test_bootstrap_with_missing_values_and_segments() -> None:
    parts = []
    for k in range(2):
        d = first_order(-1.0, 1.0, 0.5, n=60, dt=0.25, u="switching", sigma=0.5, seed=20 + k)
        d = d[["x", "u"]].copy()
        d["run"] = k
        d.index = d.index + 100 * k
        parts.append(d)
    df = pd.concat(parts)
    df.iloc[[5, 17, 70], 0] = np.nan
    res = dr.fit(
        "d(x) ~ x + u",
        df,
        method="statespace",
        segment="run",
        input_hold="zoh",
        cov_type="bootstrap",
        n_boot=10,
        seed=3,
    )
    assert res.nobs == 117
    assert np.all(np.isfinite(res.bse)) and res.info["bootstrap failures"] <= 1


# ---------------------------------------------------------------------- auto and options
def test_auto_passes_bootstrap_through_to_statespace() -> None:
    df = first_order(-1.0, 1.0, 0.5, n=80, dt=0.25, u="switching", sigma=0.5, seed=6)
    kw = dict(input_hold="zoh", cov_type="bootstrap", n_boot=10, seed=2)
    auto = dr.fit("d(x) ~ x + u", df[["x", "u"]], **kw)
    direct = dr.fit("d(x) ~ x + u", df[["x", "u"]], method="statespace", **kw)
    assert auto.info["chosen"] == "statespace" and auto.cov_type == "bootstrap"
    np.testing.assert_array_equal(auto.params, direct.params)
    np.testing.assert_array_equal(auto.bse, direct.bse)
    default = dr.fit("d(x) ~ x + u", df[["x", "u"]], input_hold="zoh")
    assert default.cov_type == "oim" and "n_boot" not in default.info
    with pytest.raises(MethodNotAvailableError, match="bootstrap"):
        dr.fit("d(x) ~ x + I(x**2) + u", df[["x", "u"]], cov_type="bootstrap", n_boot=10)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(cov_type="bootstrap", n_boot=5), "at least 10"),
        (dict(cov_type="bootstrap", n_boot=20.5), "integer"),
        (dict(cov_type="bootstrap", n_boot=True), "integer"),
        (dict(cov_type="bootstrap", seed="x"), "seed"),
        (dict(cov_type="bootstrap", seed=-1), "seed"),
        (dict(n_boot=50), "only apply to cov_type='bootstrap'"),
        (dict(seed=1), "only apply to cov_type='bootstrap'"),
    ],
)
@pytest.mark.parametrize("method", ["statespace", "auto"])
def test_bad_bootstrap_options(kwargs: dict, match: str, method: str) -> None:
    df = first_order(-1.0, 1.0, 0.5, n=40, dt=0.25, u="switching", sigma=0.5, seed=1)
    with pytest.raises(DataError, match=match):
        dr.fit("d(x) ~ x + u", df[["x", "u"]], method=method, **kwargs)


def test_bad_fit_keyword_and_nonlinear_bootstrap() -> None:
    df = first_order(-1.0, 1.0, 0.5, n=40, dt=0.25, u="switching", sigma=0.5, seed=1)
    model = StateSpace("d(x) ~ x + u", df[["x", "u"]])
    with pytest.raises(DataError, match="unknown fit option"):
        model.fit(cov_type="bootstrap", n_bootstrap=20)
    with pytest.raises(MethodNotAvailableError, match="nonlinear"):
        StateSpace("d(x) ~ x + I(x**2) + u", df[["x", "u"]]).fit(cov_type="bootstrap", n_boot=10)


# ---------------------------------------------------------------------- Monte Carlo (slow)
@pytest.mark.slow
def test_bootstrap_removes_the_short_record_bias_monte_carlo() -> None:
    """R = 150, |a|T = 30, step input, process noise (grid cell 15: default bias -0.5 SD)."""
    a, b, c = -1.0, 1.0, 0.5
    est, boot, se_b, cov_d, cov_b = [], [], [], [], []
    for rep in range(150):
        df = first_order(a, b, c, n=150, dt=0.2, u="step", sigma=0.5, seed=1000 + rep)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            d = dr.fit("d(x) ~ x + u", df[["x", "u"]], input_hold="zoh")
            bt = dr.fit(
                "d(x) ~ x + u",
                df[["x", "u"]],
                input_hold="zoh",
                cov_type="bootstrap",
                n_boot=49,
                seed=rep,
            )
        est.append(d.params["x"])
        boot.append(bt.params["x"])
        se_b.append(bt.bse["x"])
        lo, hi = d.conf_int().loc["x"]
        cov_d.append(lo <= a <= hi)
        lo, hi = bt.conf_int().loc["x"]
        cov_b.append(lo <= a <= hi)
    sd = np.std(est, ddof=1)
    bias_d = (np.mean(est) - a) / sd
    bias_b = (np.mean(boot) - a) / np.std(boot, ddof=1)
    # MC SE of a bias/SD at R = 150: 0.08
    assert bias_d < -0.25, bias_d
    assert abs(bias_b) < 0.2 and abs(bias_b) < abs(bias_d) - 0.2, (bias_b, bias_d)
    assert 0.91 <= np.mean(cov_b) <= 0.99, np.mean(cov_b)
    assert 0.8 < np.mean(se_b) / np.std(boot, ddof=1) < 1.25
