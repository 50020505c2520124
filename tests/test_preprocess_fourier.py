"""Windowed Fourier derivatives: spectral accuracy, noise-floor cut-off, edges, regular grid."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import derivreg as dr
from derivreg.exceptions import DataError, IrregularSamplingError
from derivreg.preprocess.differencing import Differencing
from derivreg.preprocess.fourier import WindowedFourier, noise_floor_cutoff


def periodic(t):
    w1, w2 = 2 * np.pi / 5, 2 * np.pi * 3 / 10
    x = np.sin(w1 * t) + 0.3 * np.cos(w2 * t)
    d = [
        w1 * np.cos(w1 * t) - 0.3 * w2 * np.sin(w2 * t),
        -(w1**2) * np.sin(w1 * t) - 0.3 * w2**2 * np.cos(w2 * t),
        -(w1**3) * np.cos(w1 * t) + 0.3 * w2**3 * np.sin(w2 * t),
    ]
    return x, d


def nonperiodic(t):
    x = np.exp(0.2 * t) + np.sin(1.3 * t)
    d = [
        0.2 * np.exp(0.2 * t) + 1.3 * np.cos(1.3 * t),
        0.04 * np.exp(0.2 * t) - 1.3**2 * np.sin(1.3 * t),
        0.008 * np.exp(0.2 * t) - 1.3**3 * np.cos(1.3 * t),
    ]
    return x, d


def rmse(a, b):
    ok = ~np.isnan(a)
    return float(np.sqrt(np.mean((a[ok] - b[ok]) ** 2)))


@pytest.mark.parametrize("order", [1, 2, 3])
def test_spectral_accuracy_on_a_periodic_signal(order):
    t = np.arange(500) * 0.02  # exactly two periods of the slow component
    x, d = periodic(t)
    est = WindowedFourier(detrend=None, extend=None).fit(x, time=t)
    got = est.derivative(order)
    assert np.nanmax(np.abs(got - d[order - 1])) < 1e-8 * np.abs(d[order - 1]).max()


@pytest.mark.parametrize("order", [1, 2, 3])
def test_nonperiodic_noiseless_interior_accuracy(order):
    t = np.linspace(0, 10, 501)
    x, d = nonperiodic(t)
    got = WindowedFourier().fit(x, time=t).derivative(order)
    # odd extension after removing the end-point line: C1 periodic extension
    assert rmse(got, d[order - 1]) < [1e-4, 1e-2, 0.3][order - 1] * np.abs(d[order - 1]).max()


@pytest.mark.parametrize("make", [periodic, nonperiodic])
@pytest.mark.parametrize("sd", [0.01, 0.05])
def test_noisy_interior_near_truth_and_beats_differencing(make, sd, rng):
    t = np.linspace(0, 10, 501)
    x, d = make(t)
    y = x + sd * rng.normal(size=len(t))
    est = WindowedFourier().fit(y, time=t)
    got = est.derivative(1)
    amp = np.abs(d[0]).max()
    err = rmse(got, d[0])
    assert err < {0.01: 0.04, 0.05: 0.06}[sd] * amp  # worst of 150 seeds: 0.031, 0.038
    naive = Differencing().fit(y, time=t).derivative(1)
    assert err < rmse(naive, d[0]) / 3  # worst of 150 seeds: 1/4
    cut = est.info_["cutoff"]["x0"][0]
    # the signal lives below 0.3 cycles per unit; the cut-off sits above it, far below Nyquist
    assert 0.2 < cut < 5.0


def test_cutoff_from_noise_floor_rejects_pure_noise_and_finds_a_tone(rng):
    n, h = 2000, 0.01
    t = np.arange(n) * h
    freqs = np.fft.rfftfreq(n, h)
    noise = rng.normal(size=n)
    cut, floor = noise_floor_cutoff(freqs, np.abs(np.fft.rfft(noise)) ** 2 / n)
    assert cut == 0.0  # nothing above the floor
    assert 0.8 < floor < 1.2  # white noise of variance 1
    tone = noise + 2 * np.sin(2 * np.pi * 7.0 * t)
    cut, _ = noise_floor_cutoff(freqs, np.abs(np.fft.rfft(tone)) ** 2 / n)
    assert 7.0 <= cut < 8.0


def test_edges_reported_as_nan_and_kept_on_request():
    t = np.linspace(0, 10, 501)
    x, _ = nonperiodic(t)
    est = WindowedFourier(cutoff=2.0).fit(x, time=t)
    e = est.info_["edge_samples"]["x0"][0]
    assert e == int(np.ceil(0.5 / (2.0 * 0.02)))
    got = est.derivative(1)
    assert np.isnan(got[:e]).all() and np.isnan(got[-e:]).all()
    assert not np.isnan(got[e:-e]).any()
    assert np.isnan(est.derivative(3)[: 3 * e - 2]).all()  # wider for higher orders
    kept = WindowedFourier(cutoff=2.0, edges="keep").fit(x, time=t).derivative(1)
    assert not np.isnan(kept).any()
    np.testing.assert_allclose(kept[e:-e], got[e:-e])
    tapered = WindowedFourier(cutoff=2.0, taper="tukey", extend="mirror").fit(x, time=t)
    assert tapered.info_["edge_samples"]["x0"][0] > e  # the taper region is unreliable too


def test_trends_are_differentiated_analytically():
    t = np.linspace(0, 4, 201)
    line = 3.0 - 2.0 * t
    np.testing.assert_allclose(WindowedFourier().fit(line, time=t).derivative(1), -2.0, atol=1e-10)
    quad = 1 + t - 0.5 * t**2
    for extend in (None, "odd"):
        est = WindowedFourier(detrend=2, extend=extend).fit(quad, time=t)
        got = est.derivative(2)
        np.testing.assert_allclose(got[~np.isnan(got)], -1.0, atol=1e-9)
    # any detrend with the odd extension: exact for a line, accurate for a smooth signal
    x, d = nonperiodic(t)
    for detrend in (None, "mean", 1, 3):
        got = WindowedFourier(detrend=detrend).fit(x, time=t).derivative(1)
        assert rmse(got, d[0]) < 1e-3, detrend


@settings(max_examples=20, deadline=None)
@given(
    shift=st.floats(-1e3, 1e3),
    a=st.floats(-5, 5),
    n=st.integers(40, 200),
    order=st.integers(1, 3),
)
def test_property_fixed_cutoff_is_linear_and_shift_invariant(shift, a, n, order):
    t = np.linspace(0, 6, n)
    x, z = np.sin(t) + t, np.cos(2 * t)
    est = WindowedFourier(cutoff=1.0)
    dx = est.fit(x, time=t).derivative(order)
    dz = est.fit(z, time=t).derivative(order)
    both = est.fit(a * x + z, time=t).derivative(order)
    np.testing.assert_allclose(both, a * dx + dz, atol=1e-8 * (1 + abs(a)))
    np.testing.assert_allclose(est.fit(x, time=t + shift).derivative(order), dx, atol=1e-7)


def test_irregular_sampling_raises():
    t = np.r_[0.0, 0.1, 0.25, 0.3, 0.45, np.arange(0.5, 2.0, 0.1)]
    with pytest.raises(IrregularSamplingError, match="regular"):
        WindowedFourier().fit(np.sin(t), time=t)
    with pytest.raises(IrregularSamplingError):
        dr.derivative(pd.Series(np.sin(t), index=t), method="fourier")


def test_segments_each_regular_and_separate(rng):
    t1, t2 = np.arange(200) * 0.05, np.arange(150) * 0.1  # different steps per segment
    x1, d1 = nonperiodic(t1)
    x2 = 4 * t2
    df = pd.DataFrame({"t": np.r_[t1, t2], "x": np.r_[x1, x2], "s": [0] * 200 + [1] * 150})
    out = WindowedFourier().fit(df, time="t", segment="s").derivative(1)["d(x)"].to_numpy()
    assert rmse(out[:200], d1[0]) < 0.01
    np.testing.assert_allclose(out[200:][~np.isnan(out[200:])], 4.0, atol=1e-9)


def test_pandas_series_datetime_index_and_bad_parameters():
    idx = pd.date_range("2025-06-01", periods=300, freq="20ms")
    t = np.arange(300) * 0.02
    s = pd.Series(np.sin(2 * t), index=idx, name="x")
    out = dr.derivative(s, method="fourier")
    assert isinstance(out, pd.Series) and out.name == "d(x)" and out.index.equals(idx)
    assert rmse(out.to_numpy(), 2 * np.cos(2 * t)) < 1e-3
    assert out.attrs["info"]["cutoff_selection"] == "noise floor"
    for bad in (
        {"cutoff": -1.0},
        {"detrend": "cubic"},
        {"taper": "hann"},
        {"extend": "zero"},
        {"edges": "drop"},
    ):
        with pytest.raises(DataError):
            WindowedFourier(**bad).fit(s)


def test_noisy_interior_accuracy_over_many_draws():
    t = np.linspace(0, 10, 501)
    for make in (periodic, nonperiodic):
        x, d = make(t)
        amp = np.abs(d[0]).max()
        for sd, tol in ((0.01, 0.04), (0.05, 0.06)):
            errs = []
            for seed in range(100):
                y = x + sd * np.random.default_rng(seed).normal(size=len(t))
                errs.append(rmse(WindowedFourier().fit(y, time=t).derivative(1), d[0]) / amp)
            assert max(errs) < tol and np.median(errs) < tol / 2, (make.__name__, sd)
