"""Tests of the Gaussian-process derivative estimator (derivreg.preprocess.gp)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.optimize as sopt
import scipy.stats as sst

from derivreg.exceptions import DataError, DerivregError, DerivregWarning
from derivreg.preprocess import derivative, get_preprocessor
from derivreg.preprocess.gp import KERNELS, GaussianProcess, kernel_derivative

ORDERS = [(k, m) for k, p in KERNELS.items() for m in range(1, 2 * p + 1)]


# --------------------------------------------------------------------------- kernel algebra
@pytest.mark.parametrize(("kernel", "m"), ORDERS)
def test_kernel_derivative_matches_finite_differences(kernel: str, m: int) -> None:
    """κ⁽ᵐ⁾ is the numerical derivative of κ⁽ᵐ⁻¹⁾ (including across r = 0 where it exists)."""
    ell, s2, h = 0.7, 2.3, 1e-7  # small h: at r = 0 the top derivative has a kink
    r = np.linspace(-2.0, 2.0, 41)  # contains 0
    num = (
        kernel_derivative(kernel, r + h, m - 1, ell, s2)
        - kernel_derivative(kernel, r - h, m - 1, ell, s2)
    ) / (2 * h)
    ana = kernel_derivative(kernel, r, m, ell, s2)
    scale = np.abs(ana).max()
    np.testing.assert_allclose(ana, num, atol=1e-6 * scale)


def test_se_derivative_kernels_match_closed_forms() -> None:
    """METHODS.md §1: ∂_a k = -(a-b)/ℓ² k and ∂²k/∂a∂b = (1/ℓ² - (a-b)²/ℓ⁴) k."""
    ell, s2 = 0.4, 1.7
    a = np.linspace(-1, 1, 15)[:, None]
    b = np.linspace(-0.8, 1.3, 11)[None, :]
    r = a - b
    k = s2 * np.exp(-(r**2) / (2 * ell**2))
    np.testing.assert_allclose(kernel_derivative("se", r, 0, ell, s2), k, rtol=1e-13)
    np.testing.assert_allclose(kernel_derivative("se", r, 1, ell, s2), -r / ell**2 * k, rtol=1e-12)
    # ∂_a ∂_b k(a - b) = -κ''(a - b)
    np.testing.assert_allclose(
        -kernel_derivative("se", r, 2, ell, s2), (1 / ell**2 - r**2 / ell**4) * k, rtol=1e-12
    )


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_mixed_partial_by_two_variable_finite_differences(kernel: str) -> None:
    """∂_a ∂_b k(a, b) = -κ''(a - b), checked by a 2-D central difference of k(a, b)."""
    ell, h = 0.5, 1e-4
    a, b = 0.3, -0.45

    def k(x: float, y: float) -> float:
        return float(kernel_derivative(kernel, np.array([x - y]), 0, ell)[0])

    num = (k(a + h, b + h) - k(a + h, b - h) - k(a - h, b + h) + k(a - h, b - h)) / (4 * h * h)
    ana = -kernel_derivative(kernel, np.array([a - b]), 2, ell)[0]
    assert ana == pytest.approx(num, rel=1e-5)


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_likelihood_gradient_is_correct(kernel: str, rng: np.random.Generator) -> None:
    """The analytic gradient of the negative log marginal likelihood matches finite differences."""
    gp = GaussianProcess(kernel=kernel)
    x = np.sort(rng.uniform(0, 1, 40))
    z = np.sin(6 * x) + 0.1 * rng.standard_normal(40)
    absr = np.abs(x[:, None] - x[None, :])
    free = ["ell", "s2", "noise"]
    theta = np.log([0.2, 0.8, 0.02])

    def f(th: np.ndarray) -> float:
        return gp._neg_lml(th, free, {}, absr, z)[0]

    def g(th: np.ndarray) -> np.ndarray:
        return gp._neg_lml(th, free, {}, absr, z)[1]

    assert sopt.check_grad(f, g, theta, epsilon=1e-6) < 1e-4 * np.abs(g(theta)).max()
    # and the value is the restricted log likelihood (constant mean under a flat prior):
    # log N(z; μ̂ 1, K) + ½ log 2π - ½ log(1ᵀK⁻¹1), μ̂ the GLS mean
    k = 0.8 * kernel_derivative(kernel, x[:, None] - x[None, :], 0, 0.2) + 0.02 * np.eye(40)
    kinv1 = np.linalg.solve(k, np.ones(40))
    mu = kinv1 @ z / kinv1.sum()
    ref = sst.multivariate_normal(np.full(40, mu), k).logpdf(z)
    ref += 0.5 * np.log(2 * np.pi) - 0.5 * np.log(kinv1.sum())
    assert -f(theta) == pytest.approx(ref, rel=1e-7)


# --------------------------------------------------------------------------- accuracy
def test_noise_free_smooth_signal_recovers_derivatives() -> None:
    t = np.linspace(0, 10, 120)
    x = np.sin(1.3 * t) + 0.5 * np.cos(0.4 * t)
    dx = 1.3 * np.cos(1.3 * t) - 0.2 * np.sin(0.4 * t)
    d2x = -(1.3**2) * np.sin(1.3 * t) - 0.08 * np.cos(0.4 * t)
    gp = GaussianProcess().fit(pd.Series(x, index=t))
    d1 = gp.derivative(1).to_numpy()
    d2 = gp.derivative(2).to_numpy()
    assert np.sqrt(np.mean((d1 - dx) ** 2)) < 1e-3
    assert np.sqrt(np.mean((d2 - d2x) ** 2)) < 2e-2
    np.testing.assert_allclose(gp.derivative(0).to_numpy(), x, atol=1e-5)


def test_noisy_signal_beats_differencing(rng: np.random.Generator) -> None:
    t = np.linspace(0, 4, 201)
    x = np.sin(2 * np.pi * t) + np.sin(2 * np.pi * 1.7 * t)
    dx = 2 * np.pi * np.cos(2 * np.pi * t) + 2 * np.pi * 1.7 * np.cos(2 * np.pi * 1.7 * t)
    y = x + rng.normal(0, 0.1, t.size)
    est, se = derivative(y, method="gp", time=t, return_se=True)
    rmse = np.sqrt(np.mean((est - dx) ** 2))
    rmse_fd = np.sqrt(np.mean((np.gradient(y, t) - dx) ** 2))
    assert rmse < 0.1 * rmse_fd
    assert rmse < 1.0  # derivative amplitude ~ 17
    # the reported uncertainty is of the size of the error
    assert 0.5 < rmse / np.sqrt(np.mean(se**2)) < 2.0


def test_irregular_times(rng: np.random.Generator) -> None:
    t = np.cumsum(rng.exponential(0.05, 200))
    x = np.exp(-0.2 * t) * np.sin(t)
    dx = np.exp(-0.2 * t) * (np.cos(t) - 0.2 * np.sin(t))
    est = derivative(x, method="gp", time=t)
    assert np.sqrt(np.mean((est - dx) ** 2)) < 1e-3
    y = x + rng.normal(0, 0.02, t.size)
    est, se = derivative(y, method="gp", time=t, return_se=True)
    err = np.abs(est - dx)
    assert np.sqrt(np.mean(err**2)) < 0.1
    assert np.mean(err < 1.96 * se) > 0.8


@pytest.mark.parametrize("scale", [1e-3, 1e9])
def test_scale_free_time_and_values(scale: float, rng: np.random.Generator) -> None:
    """Changing the units of t (and an offset) rescales the derivative exactly as it should."""
    t = np.linspace(0, 5, 150)
    y = np.sin(2 * t) + rng.normal(0, 0.05, t.size)
    base = GaussianProcess().fit(y, time=t)
    d_base, se_base = base.derivative(1, return_se=True)
    ts = 3.0 * scale + t * scale  # offset of three spans
    ys = 1e4 * y
    gp = GaussianProcess().fit(ys, time=ts)
    d, se = gp.derivative(1, return_se=True)
    np.testing.assert_allclose(d * scale / 1e4, d_base, rtol=1e-5, atol=1e-6 * np.abs(d_base).max())
    np.testing.assert_allclose(se * scale / 1e4, se_base, rtol=1e-4)
    assert gp.info_["length_scale"] == pytest.approx(base.info_["length_scale"] * scale, rel=1e-5)
    assert gp.info_["noise_var"] == pytest.approx(base.info_["noise_var"] * 1e8, rel=1e-4)


# --------------------------------------------------------------------------- API behaviour
def test_pandas_in_pandas_out_and_info(rng: np.random.Generator) -> None:
    idx = pd.Index(np.linspace(0, 3, 60), name="time")
    s = pd.Series(np.cos(idx.to_numpy()) + rng.normal(0, 0.01, 60), index=idx, name="x")
    gp = get_preprocessor("gp", kernel="matern52")
    assert gp.provides_se
    gp.fit(s)
    out = gp.derivative(1, return_se=True)
    assert list(out.columns) == ["estimate", "se"]
    assert out.index.equals(idx)
    assert out.attrs["method"] == "gp"
    info = out.attrs["info"]
    assert info["kernel"] == "matern52"
    for key in ("length_scale", "signal_var", "noise_var", "log_marginal_likelihood"):
        assert np.isfinite(info[key])
    assert info["noise_var"] == pytest.approx(1e-4, rel=0.6)
    # the recorded log marginal likelihood is the density of y under the fitted model with the
    # constant mean integrated out under a flat prior
    t, y = idx.to_numpy(), s.to_numpy()
    k = kernel_derivative("matern52", t[:, None] - t[None, :], 0, info["length_scale"])
    k = info["signal_var"] * k + info["noise_var"] * np.eye(60)
    kinv1 = np.linalg.solve(k, np.ones(60))
    mu = kinv1 @ y / kinv1.sum()
    ref = sst.multivariate_normal(np.full(60, mu), k).logpdf(y)
    ref += 0.5 * np.log(2 * np.pi) - 0.5 * np.log(kinv1.sum())
    assert info["log_marginal_likelihood"] == pytest.approx(ref, abs=1e-3)


def test_full_covariance_is_consistent_with_se(rng: np.random.Generator) -> None:
    t = np.sort(rng.uniform(0, 2, 50))
    y = np.sin(3 * t) + rng.normal(0, 0.05, 50)
    gp = GaussianProcess().fit(y, time=t)
    for order in (0, 1, 2):
        _, se = gp.derivative(order, return_se=True)
        cov = gp.derivative_cov(order)
        np.testing.assert_allclose(np.sqrt(np.diag(cov)), se, rtol=1e-6, atol=1e-10 * se.max())
        assert np.linalg.eigvalsh(cov).min() > -1e-8 * np.abs(cov).max()
        # neighbouring derivative errors are strongly positively correlated
        corr = cov[10, 11] / np.sqrt(cov[10, 10] * cov[11, 11])
        assert corr > 0.5


def test_missing_values_are_predicted(rng: np.random.Generator) -> None:
    t = np.linspace(0, 4, 100)
    y = np.sin(t) + rng.normal(0, 0.01, 100)
    y[[20, 21, 50]] = np.nan
    est = derivative(pd.Series(y, index=t), method="gp")
    assert est.notna().all()
    np.testing.assert_allclose(est.to_numpy()[[20, 21, 50]], np.cos(t[[20, 21, 50]]), atol=0.05)


def test_fixed_hyperparameters_are_used() -> None:
    t = np.linspace(0, 1, 30)
    gp = GaussianProcess(length_scale=0.25, signal_var=2.0, noise_var=0.01).fit(np.sin(t), time=t)
    assert gp.info_["length_scale"] == pytest.approx(0.25)
    assert gp.info_["signal_var"] == pytest.approx(2.0)
    assert gp.info_["noise_var"] == pytest.approx(0.01)
    assert gp.info_["n_hyperparameter_fit"] == 0


@pytest.mark.parametrize(("kernel", "bad"), [("matern32", 2), ("matern52", 3)])
def test_matern_order_limits(kernel: str, bad: int, rng: np.random.Generator) -> None:
    t = np.linspace(0, 6, 80)
    gp = GaussianProcess(kernel=kernel).fit(np.sin(t) + rng.normal(0, 0.01, 80), time=t)
    with pytest.raises(DataError, match="mean-square differentiable"):
        gp.derivative(bad)
    with pytest.raises(DataError, match="mean-square differentiable"):
        gp.derivative_cov(bad)
    ok = gp.derivative(bad - 1)
    truth = [np.sin, np.cos, lambda x: -np.sin(x)][bad - 1](t)
    inner = slice(10, -10)
    assert np.sqrt(np.mean((ok[inner] - truth[inner]) ** 2)) < 0.05


def test_se_supports_third_derivative() -> None:
    t = np.linspace(0, 6, 80)
    d3 = GaussianProcess().fit(np.sin(t), time=t).derivative(3)
    assert np.sqrt(np.mean((d3 + np.cos(t)) ** 2)) < 0.05


def test_cap_raises_clear_error() -> None:
    t = np.arange(60.0)
    with pytest.raises(DataError, match=r"max_points=50.*spline.*kalman"):
        GaussianProcess(max_points=50).fit(np.sin(t / 5), time=t)


@pytest.mark.parametrize(
    "opts",
    [{"kernel": "rbf"}, {"length_scale": -1.0}, {"noise_var": np.nan}, {"n_restarts": 0}],
)
def test_bad_options(opts: dict) -> None:
    t = np.linspace(0, 1, 20)
    with pytest.raises(DerivregError):
        GaussianProcess(**opts).fit(np.sin(t), time=t)


def test_hyperparameters_from_subsample_for_long_series(rng: np.random.Generator) -> None:
    t = np.linspace(0, 10, 600)
    y = np.sin(t) + rng.normal(0, 0.05, t.size)
    gp = GaussianProcess(opt_points=200).fit(y, time=t)
    assert gp.info_["n_hyperparameter_fit"] == 200
    assert gp.info_["noise_var"] == pytest.approx(0.05**2, rel=0.5)
    est = gp.derivative(1)
    assert np.sqrt(np.mean((est - np.cos(t)) ** 2)) < 0.05


# --------------------------------------------------------------------------- coverage
def _prior_draws(
    rng: np.random.Generator, t: np.ndarray, ell: float, s2: float, order: int, reps: int
) -> tuple[np.ndarray, np.ndarray]:
    """Joint draws of (f(t), f⁽ᵖ⁾(t)) from the SE prior: Cov[f⁽ᵖ⁾(a), f(b)] = κ⁽ᵖ⁾(a - b)."""
    r = t[:, None] - t[None, :]
    c00 = kernel_derivative("se", r, 0, ell, s2)
    cp0 = kernel_derivative("se", r, order, ell, s2)
    cpp = (-1) ** order * kernel_derivative("se", r, 2 * order, ell, s2)
    cov = np.block([[c00, cp0.T], [cp0, cpp]])
    w, v = np.linalg.eigh(cov)
    root = v * np.sqrt(np.clip(w, 0, None))
    z = rng.standard_normal((reps, 2 * t.size)) @ root.T
    return z[:, : t.size], z[:, t.size :]


def _coverage(
    rng: np.random.Generator, reps: int, order: int, fixed: bool, n: int = 60
) -> tuple[float, float]:
    ell, s2, sd = 0.15, 1.0, 0.1
    t = np.sort(rng.uniform(0, 1, n))  # irregular on purpose
    f, fp = _prior_draws(rng, t, ell, s2, order, reps)
    hits = []
    for i in range(reps):
        y = f[i] + sd * rng.standard_normal(n)
        opts = {"length_scale": ell, "signal_var": s2, "noise_var": sd**2} if fixed else {}
        est, se = derivative(y, method="gp", time=t, order=order, return_se=True, **opts)
        hits.append(np.mean(np.abs(est - fp[i]) <= 1.959964 * se))
    hits_a = np.asarray(hits)
    return float(hits_a.mean()), float(hits_a.std(ddof=1) / np.sqrt(reps))


@pytest.mark.parametrize("fixed", [True, False])
def test_band_coverage_quick(fixed: bool) -> None:
    """Pointwise 95% bands of f' cover a function drawn from the GP prior (quick version).

    With the true hyperparameters the bands are exact Bayesian intervals; with estimated ones
    the Laplace sigma-point average makes up for most of the plug-in under-coverage.
    """
    cov, mcse = _coverage(np.random.default_rng(7 + fixed), reps=40, order=1, fixed=fixed)
    assert 0.90 < cov < 0.99, (cov, mcse)


def test_hyperparameter_uncertainty_widens_bands(rng: np.random.Generator) -> None:
    t = np.linspace(0, 1, 50)
    y = np.sin(7 * t) + rng.normal(0, 0.1, t.size)
    plug = GaussianProcess(hyperparameter_uncertainty=False).fit(y, time=t)
    lap = GaussianProcess().fit(y, time=t)
    assert plug.info_["hyperparameter_uncertainty"] == "plug-in"
    assert lap.info_["hyperparameter_uncertainty"].startswith("laplace")
    for order in (1, 2):
        e0, s0 = plug.derivative(order, return_se=True)
        e1, s1 = lap.derivative(order, return_se=True)
        assert np.mean(s1**2) > np.mean(s0**2)  # the between-sigma-point spread adds variance
        assert np.sqrt(np.mean((e1 - e0) ** 2)) < 0.5 * np.sqrt(np.mean(s0**2))
        np.testing.assert_allclose(np.sqrt(np.diag(lap.derivative_cov(order))), s1, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("order", [1, 2])
def test_band_coverage_long_known_hyperparameters(order: int) -> None:
    cov, mcse = _coverage(np.random.default_rng(100 + order), reps=500, order=order, fixed=True)
    assert 0.93 <= cov <= 0.97, (cov, mcse)


@pytest.mark.slow
@pytest.mark.parametrize("order", [1, 2])
def test_band_coverage_long_estimated_hyperparameters(order: int) -> None:
    """Estimated hyperparameters with the Laplace sigma-point average (the default)."""
    cov, mcse = _coverage(
        np.random.default_rng(200 + order), reps=400, order=order, fixed=False, n=100
    )
    assert 0.92 <= cov <= 0.97, (cov, mcse)


def test_flat_likelihood_on_few_points_gives_finite_bands_not_overflow() -> None:
    # regression: 12 points of an undersampled sine; the hyperparameter Hessian was nearly
    # singular and the Laplace sigma points overflowed (math range error). They are now kept
    # inside the search box and the result is finite.
    u = np.linspace(0.0, 1.0, 12)
    y = 0.001 * np.sin(2 * np.pi * 2.9 * u + 0.3) - 0.00707
    y = y + 2.4e-5 * np.random.default_rng(0).standard_normal(12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DerivregWarning)
        est = GaussianProcess().fit(y, time=3724.5 * u)
        d, se = est.derivative(1, return_se=True)
    assert np.all(np.isfinite(d)) and np.all(np.isfinite(se)) and np.all(se > 0)
