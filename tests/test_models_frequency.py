"""Frequency-domain regression (method="fourier"): recovery, coverage, errors.

A coverage estimate from R replications has standard error ``sqrt(0.95·0.05/R)``; the tests
accept [0.93, 0.97] widened by two of those.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import derivreg as dr
from derivreg.exceptions import BiasWarning, IrregularSamplingError, MethodNotAvailableError
from derivreg.models.frequency import FrequencyDomain, _window, window_coefficients
from derivreg.simulate import first_order, second_order

Z = 1.959964
TRUTH = np.array([-1.0, 1.0, 0.5])  # x, u, Intercept


def _fit(df, formula="d(x) ~ x + u", hold="zoh", **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FrequencyDomain(formula, df, input_hold=hold, **kw).fit()


def test_window_series_and_derivatives() -> None:
    T, q = 3.0, 2
    tau = np.linspace(0, T, 2001)
    w = _window(tau, T, q, 0)
    np.testing.assert_allclose(w, np.sin(np.pi * tau / T) ** (2 * q), atol=1e-12)
    d1 = _window(tau, T, q, 1)
    np.testing.assert_allclose(d1, np.gradient(w, tau), atol=2e-4)
    # the window and its first 2q - 1 derivatives vanish at both ends
    for j in range(2 * q):
        assert abs(_window(np.array([0.0, T]), T, q, j)).max() < 1e-9
    assert window_coefficients(1) == pytest.approx([0.5, -0.5])


@pytest.mark.parametrize(("u", "hold"), [("switching", "zoh"), ("multisine", "linear")])
def test_first_order_recovered_within_3_se(u: str, hold: str) -> None:
    df = first_order(-1.0, 1.0, 0.5, n=400, dt=0.1, tau=0.05, u=u, input_hold=hold, seed=8)
    res = _fit(df[["x", "u"]], hold=hold)
    est = res.params[["x", "u", "Intercept"]].to_numpy()
    se = res.bse[["x", "u", "Intercept"]].to_numpy()
    assert np.all(np.abs(est - TRUTH) < 3 * se), res.to_frame()
    assert res.info["bins used"] >= 10


def test_second_order_recovered_within_3_se() -> None:
    df = second_order(-4.0, -1.0, 2.0, 0.3, n=600, dt=0.05, tau=0.01, seed=1)
    res = _fit(df[["x", "u"]], "d(x, 2) ~ x + d(x) + u")
    for term, val in df.attrs["truth"].items():
        assert abs(res.params[term] - val) < 3 * res.bse[term], res.to_frame()


def _mc(R: int, seed0: int, cov_type: str = "noise", **kw):
    est, se = [], []
    for r in range(R):
        df = first_order(-1.0, 1.0, 0.5, n=300, dt=0.1, tau=0.1, seed=seed0 + r)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = FrequencyDomain("d(x) ~ x + u", df[["x", "u"]], input_hold="zoh", **kw).fit(
                cov_type=cov_type
            )
        est.append(res.params[["x", "u", "Intercept"]].to_numpy())
        se.append(res.bse[["x", "u", "Intercept"]].to_numpy())
    return np.array(est), np.array(se)


def test_coverage_under_measurement_noise() -> None:
    R = 150
    est, se = _mc(R, 100)
    cover = np.mean(np.abs(est - TRUTH) <= Z * se, axis=0)
    mc = np.sqrt(0.95 * 0.05 / R)
    assert np.all((cover >= 0.93 - 2 * mc) & (cover <= 0.97 + 2 * mc)), cover
    bias = (est.mean(axis=0) - TRUTH) / est.std(axis=0, ddof=1)
    assert np.all(np.abs(bias) < 0.2 + 2 / np.sqrt(R)), bias
    # without the errors-in-variables correction the state coefficient is attenuated
    raw, _ = _mc(R // 3, 100, eiv_correction=False)
    assert abs(raw[:, 0].mean()) < abs(est[: R // 3, 0].mean())


@pytest.mark.slow
def test_coverage_under_measurement_noise_slow() -> None:
    R = 1000
    est, se = _mc(R, 20000)
    cover = np.mean(np.abs(est - TRUTH) <= Z * se, axis=0)
    mc = np.sqrt(0.95 * 0.05 / R)
    assert np.all((cover >= 0.93 - 2 * mc) & (cover <= 0.97 + 2 * mc)), cover


def test_process_noise_warns() -> None:
    df = first_order(-1.0, 1.0, 0.5, n=300, dt=0.1, sigma=0.5, seed=3)
    with pytest.warns(BiasWarning, match="statespace"):
        FrequencyDomain("d(x) ~ x + u", df[["x", "u"]], input_hold="zoh").fit()


def test_errors() -> None:
    rng = np.random.default_rng(1)
    t = np.cumsum(rng.uniform(0.05, 0.15, 200))
    df = first_order(-1.0, 1.0, 0.5, t=t, tau=0.05, seed=1)
    with pytest.raises(IrregularSamplingError, match="regular"):
        dr.fit("d(x) ~ x + u", df[["x", "u"]], method="fourier")
    reg = first_order(-1.0, 1.0, 0.5, n=200, dt=0.1, tau=0.05, seed=1)
    with pytest.raises(MethodNotAvailableError, match="nonlinear"):
        dr.fit("d(x) ~ x + I(x**2) + u", reg[["x", "u"]], method="fourier")
    with pytest.raises(MethodNotAvailableError):
        dr.fit(["d(x) ~ x + u", "d(u) ~ x"], reg[["x", "u"]], method="fourier")


# ---------------------------------------------------------------- kinks of held inputs (issue 7)
@pytest.mark.parametrize("u", ["switching", "step"])
def test_noise_free_held_input_recovered_to_o_dt4(u: str) -> None:
    # a held input kinks the state at every change: without the Euler–Maclaurin kink term the
    # trapezoid transform of the state was off by 0.2% in b (1 SD at τ = 0.02 SD(x))
    df = first_order(-1.0, 1.0, 0.5, n=300, dt=0.1, u=u, input_hold="zoh", seed=3)
    res = _fit(df[["x", "u"]])
    np.testing.assert_allclose(res.params[["x", "u", "Intercept"]], TRUTH, rtol=3e-5, atol=3e-5)


def _grid_mc(R: int, seed0: int, *, a: float, dt: float, n: int, ratio: float):
    pilot = first_order(a, 1.0, 0.5, n=n, dt=dt, u="switching", seed=seed0 - 1)
    tau = ratio * float(pilot["x_true"].std())
    est, se, fails = [], [], 0
    for r in range(R):
        df = first_order(a, 1.0, 0.5, n=n, dt=dt, u="switching", tau=tau, seed=seed0 + r)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                res = FrequencyDomain("d(x) ~ x + u", df[["x", "u"]], input_hold="zoh").fit()
            except dr.exceptions.IdentificationError:
                fails += 1
                continue
        if any(issubclass(w.category, BiasWarning) for w in caught):
            fails += 1
            continue
        est.append(res.params[["x", "u", "Intercept"]].to_numpy())
        se.append(res.bse[["x", "u", "Intercept"]].to_numpy())
    return np.array(est), np.array(se), fails


def test_tiny_measurement_noise_unbiased_and_covers() -> None:
    # recovery-grid cell 1 (τ = 0.02 SD(x)): b was biased by +0.9 SD, coverage 0.87
    R = 120
    est, se, fails = _grid_mc(R, 52000, a=-1.0, dt=0.1, n=300, ratio=0.02)
    assert fails <= 3
    truth = np.array([-1.0, 1.0, 0.5])
    cover = np.mean(np.abs(est - truth) <= Z * se, axis=0)
    bias = (est.mean(axis=0) - truth) / est.std(axis=0, ddof=1)
    mc = np.sqrt(0.95 * 0.05 / len(est))
    assert np.all((cover >= 0.93 - 2 * mc) & (cover <= 0.97 + 2 * mc)), (cover, bias)
    assert np.all(np.abs(bias) < 0.2 + 2 / np.sqrt(len(est))), (cover, bias)


def test_coarse_grid_noise_variance_rescaled_and_unwarned_fits_cover() -> None:
    # recovery-grid cell 26 (|a|Δ = 0.5, τ = 0.02 SD(x)): the difference-based noise variance
    # reads the path's curvature as noise (SD 0.6 for 0.057); rescaled, the fits that neither
    # fail nor warn (too few bins) cover
    R = 60
    est, se, fails = _grid_mc(R, 61000, a=-0.2, dt=2.5, n=200, ratio=0.02)
    assert fails <= R // 2
    truth = np.array([-0.2, 1.0, 0.5])
    cover = np.mean(np.abs(est - truth) <= Z * se, axis=0)
    mc = np.sqrt(0.95 * 0.05 / len(est))
    assert np.all(cover >= 0.93 - 3 * mc), cover
    df = first_order(-0.2, 1.0, 0.5, n=200, dt=2.5, u="switching", tau=0.05, seed=61003)
    res = _fit(df[["x", "u"]])
    assert (
        res.info["noise variance rescaled (equation errors far below the difference estimate)"]
        < 0.1
    )
    assert res.info["measurement noise variance (EIV correction)"] < 0.01
