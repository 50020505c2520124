"""Spectral derivatives on a regular grid: detrend, extend/taper, FFT, (i2πν)^p, low-pass, invert.

Model: ``y_k = x(t_k) + e_k`` on a regular grid of step ``Δ``. With ``x = τ + g`` (``τ`` a trend
removed first, differentiated analytically) and ``ĝ`` the low-passed Fourier series of the
(extended, tapered) remainder,

.. math:: \\hat x^{(p)}(t) = τ^{(p)}(t)
          + \\sum_{|ν| \\le ν_c} (i 2 π ν)^p \\, \\hat G(ν) \\, e^{i 2 π ν t}.

A taper ``w`` is not differentiation-neutral: ``(w g)' = w g' + w' g``, so where ``w < 1`` (and
within the width of the low-pass impulse response from the ends) the estimate is reported as
unreliable — NaN by default.
"""

from __future__ import annotations

from typing import Any, Literal, Self

import numpy as np
import pandas as pd
from scipy.signal.windows import tukey
from scipy.stats import gamma

from derivreg._typing import FloatArray
from derivreg.exceptions import DataError
from derivreg.preprocess.base import Preprocessor

__all__ = ["WindowedFourier", "noise_floor_cutoff"]


def noise_floor_cutoff(
    freqs: FloatArray, power: FloatArray, dof: int = 2, level: float = 0.001
) -> tuple[float, float]:
    """Cut-off frequency where a smoothed periodogram sinks into its white-noise floor.

    Under white noise each periodogram ordinate is ``floor · χ²_dof / dof`` (``dof = 2`` for a
    complex Fourier coefficient, 1 for the real coefficients of a mirrored series). The floor is
    the mean of ``P`` over the upper half of the frequencies (assumed free of signal; the mean,
    not the median, because the threshold sits far in the tail and a median-based floor of
    ``χ²₁`` ordinates is biased low enough to let noise through). The periodogram is smoothed
    by a running mean over ``k`` bins (``k ≈ N/100``, at least 5), under noise
    ``floor · Gamma(k·dof/2, 2/(k·dof))``.
    The cut-off is the highest frequency whose smoothed power exceeds the ``1 - level/M``
    quantile of that law (``M`` bins: a Bonferroni bound, so pure noise passes with probability
    about ``level``). When no frequency is above the floor the cut-off is 0: only the mean of
    the remainder is kept and the estimate is the derivative of the trend.

    Returns
    -------
    cutoff, floor : float
    """
    n = len(power)
    upper = power[n // 2 :]
    floor = float(np.mean(upper)) if len(upper) else 0.0
    k = max(5, 2 * (n // 200) + 1)
    smooth = np.convolve(power, np.ones(k) / k, mode="same")
    shape = k * dof / 2.0
    thresh = floor * float(gamma.isf(level / max(n, 1), shape, scale=1.0 / shape))
    above = np.flatnonzero(smooth[1:] > thresh) + 1
    if len(above) == 0:
        return 0.0, floor
    return float(freqs[above[-1]]), floor


class WindowedFourier(Preprocessor):
    """Windowed Fourier (spectral) derivatives with an automatic noise-floor cut-off.

    Model: ``x̂^{(p)} = τ^{(p)} + F⁻¹[(i2πν)^p 1{|ν| ≤ ν_c} F(ext(w·(y - τ)))]``, restricted
    to the original samples (see the module docstring).

    Parameters
    ----------
    cutoff : float, optional
        Low-pass cut-off ``ν_c`` in cycles per time unit. Default: chosen per column and segment
        from the noise floor of the periodogram (:func:`noise_floor_cutoff`), recorded in
        ``info_["cutoff"]``.
    detrend : {"linear", "mean", None} or int
        Trend ``τ`` removed before the FFT and differentiated analytically: ``"linear"`` the line
        through the end points (makes the ends meet, so the extension is continuous), ``"mean"``
        the mean, an int ``k`` the least-squares polynomial of degree ``k``, None nothing.
    taper : {"tukey", None}
        Taper applied to the detrended series before extending it. Default None: the cut-off
        truncates the spectrum of the taper's lobes, which rings into the interior (measured on
        ``exp(0.2t) + sin(1.3t)``, 501 samples, noise sd 0.01: interior RMSE of the first
        derivative 0.036 with Tukey + mirror vs 0.009 with the default; of the third derivative
        7.8 vs 0.22).
    extend : {"odd", "mirror", None}
        Odd reflection about the end points (default; after ``detrend="linear"`` the ends are
        zero, so the periodic extension is continuous with a continuous slope and the spectrum
        decays like ``1/ν³``; with another ``detrend`` the end-point line of the remainder is
        removed as well), even reflection (continuous, but the slope jumps at the ends: pair
        it with a taper), or none (the series is treated as one period).
    taper_alpha : float
        Fraction of the series inside the Tukey taper's cosine lobes (half at each end).
    edges : {"nan", "keep"}
        ``"nan"`` (default): NaN on the unreliable edge regions — the tapered samples plus ``p``
        half cut-off wavelengths (``⌈p/(2 ν_c Δ)⌉`` samples) at each end for derivative order
        ``p``. ``"keep"``: return the values there anyway. ``info_["edge_samples"]`` gives the
        width for ``p = 1``.

    Notes
    -----
    Needs a regular grid (``requires_regular``): irregular times raise
    :class:`~derivreg.exceptions.IrregularSamplingError`. A sharp cut-off rings (Gibbs) when the
    spectrum is not negligible at ``ν_c``.
    """

    name = "fourier"
    requires_regular = True
    max_order = 3

    def __init__(
        self,
        cutoff: float | None = None,
        detrend: Literal["linear", "mean"] | int | None = "linear",
        taper: Literal["tukey"] | None = None,
        extend: Literal["mirror", "odd"] | None = "odd",
        taper_alpha: float = 0.1,
        edges: Literal["nan", "keep"] = "nan",
    ) -> None:
        self.cutoff = cutoff
        self.detrend = detrend
        self.taper = taper
        self.extend = extend
        self.taper_alpha = taper_alpha
        self.edges = edges

    def _validate(self) -> None:
        if self.cutoff is not None and not (np.isfinite(self.cutoff) and self.cutoff > 0):
            raise DataError(f"cutoff must be a positive frequency, got {self.cutoff!r}")
        d = self.detrend
        ok_int = isinstance(d, (int, np.integer)) and not isinstance(d, bool) and 0 <= d <= 5
        if d not in ("linear", "mean", None) and not ok_int:
            raise DataError(f"detrend must be 'linear', 'mean', None or a degree 0..5, got {d!r}")
        if self.taper not in ("tukey", None):
            raise DataError(f"taper must be 'tukey' or None, got {self.taper!r}")
        if self.extend not in ("mirror", "odd", None):
            raise DataError(f"extend must be 'mirror', 'odd' or None, got {self.extend!r}")
        if not 0 <= self.taper_alpha <= 1:
            raise DataError(f"taper_alpha must be in [0, 1], got {self.taper_alpha!r}")
        if self.edges not in ("nan", "keep"):
            raise DataError(f"edges must be 'nan' or 'keep', got {self.edges!r}")

    def min_points(self) -> int:
        return 8

    def fit(self, data: pd.DataFrame | pd.Series | np.ndarray, **kwargs: Any) -> Self:
        """Fit every column and segment (see :meth:`Preprocessor.fit`); fills ``info_``."""
        self._validate()
        super().fit(data, **kwargs)
        sd = self.data_
        segs = range(len(sd.segments))
        self.info_ = {
            key: {c: [self.states_[(j, i)][key] for i in segs] for j, c in enumerate(sd.columns)}
            for key in ("cutoff", "noise_floor", "edge_samples")
        }
        self.info_["cutoff_selection"] = "given" if self.cutoff is not None else "noise floor"
        return self

    # ------------------------------------------------------------------ pieces
    def _trend(self, t: FloatArray, y: FloatArray) -> np.polynomial.Polynomial:
        P = np.polynomial.Polynomial
        d = self.detrend
        if d is None:
            return P([0.0])
        if d == "mean":
            return P([float(np.mean(y))])
        if d == "linear":
            slope = (y[-1] - y[0]) / (t[-1] - t[0])
            return P([y[0] - slope * t[0], slope])
        return P.fit(t, y, int(d)).convert()

    def _extend(self, g: FloatArray) -> FloatArray:
        if self.extend == "mirror":
            return np.concatenate([g, g[-2:0:-1]])
        if self.extend == "odd":
            return np.concatenate([g, -g[-2:0:-1]])
        return g

    def _fit_1d(self, t: FloatArray, y: FloatArray) -> dict[str, Any]:
        n = len(y)
        h = float(np.mean(np.diff(t)))
        tc = t - t[0]
        trend = self._trend(tc, y)
        g = y - trend(tc)
        if self.extend == "odd" and self.detrend != "linear":
            # the odd reflection needs zero ends: also remove the end-point line of the remainder
            line = np.polynomial.Polynomial([g[0], (g[-1] - g[0]) / tc[-1]])
            trend = trend + line
            g = g - line(tc)
        w = tukey(n, self.taper_alpha) if self.taper == "tukey" else np.ones(n)
        z = self._extend(w * g)
        spec = np.fft.rfft(z)
        freqs = np.fft.rfftfreq(len(z), h)
        if self.cutoff is None:
            dof = 2 if self.extend is None else 1
            cutoff, floor = noise_floor_cutoff(freqs, np.abs(spec) ** 2 / len(z), dof)
        else:
            cutoff, floor = float(self.cutoff), float("nan")
        spec = np.where(freqs <= cutoff, spec, 0.0)
        n_taper = int(np.sum(w[: n // 2] < 1.0 - 1e-12))
        return {
            "n": n,
            "h": h,
            "n_taper": n_taper,
            "spec": spec,
            "freqs": freqs,
            "nfft": len(z),
            "trend": trend,
            "t0": float(t[0]),
            "cutoff": cutoff,
            "noise_floor": floor,
            "edge_samples": self._edge(n, h, n_taper, cutoff, 1),
        }

    @staticmethod
    def _edge(n: int, h: float, n_taper: int, cutoff: float, order: int) -> int:
        """Unreliable samples at each end: the taper plus ``order`` half cut-off wavelengths."""
        # cut-off 0 keeps a constant: no filter transient at the ends
        n_filter = int(np.ceil(order * 0.5 / (cutoff * h))) if cutoff > 0 else 0
        return min(n_taper + n_filter, n // 2)

    def _derivative_1d(
        self, state: dict[str, Any], t: FloatArray, order: int
    ) -> tuple[FloatArray, None]:
        n = len(t)
        spec, freqs, nfft = state["spec"], state["freqs"], state["nfft"]
        mult = (2j * np.pi * freqs) ** order
        if order % 2 == 1 and nfft % 2 == 0:
            mult[-1] = 0.0  # the Nyquist bin has no odd derivative
        g = np.fft.irfft(spec * mult, nfft)[:n]
        est = g + state["trend"].deriv(order)(t - state["t0"])
        e = self._edge(n, state["h"], state["n_taper"], state["cutoff"], max(order, 1))
        if self.edges == "nan" and e > 0:
            est[:e] = np.nan
            est[n - e :] = np.nan
        return est, None
