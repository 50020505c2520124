"""Savitzky–Golay / local polynomial derivatives, uniform or irregular grids, window by LOO-CV.

In a window of ``m`` samples around ``t_i`` fit ``y_k ≈ Σ_{j=0}^{p} β_j (t_k - t_i)^j`` by least
squares; the estimate of ``x^{(d)}(t_i)`` is ``d! β_d``. The estimate is linear in the data,
``x̂^{(d)} = W_d y``, so under white noise of variance ``r`` its covariance is ``r W_d W_dᵀ``.
"""

from __future__ import annotations

from math import factorial
from typing import Any, Self

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.signal import savgol_coeffs, savgol_filter

from derivreg._typing import FloatArray, IntArray
from derivreg.exceptions import DataError, TooFewPointsError
from derivreg.preprocess.base import Preprocessor
from derivreg.preprocess.differencing import noise_variance
from derivreg.timebase import is_regular

__all__ = ["SavitzkyGolay", "local_polynomial_weights"]

#: largest window tried by cross-validation on an irregular grid (the cost is O(n·m))
MAX_CV_WINDOW_IRREGULAR = 501


def local_polynomial_weights(
    t: FloatArray, window: int, polyorder: int, order: int
) -> tuple[FloatArray, IntArray]:
    """Weights of the local least-squares polynomial derivative at every sample.

    The window of sample ``i`` is the ``window`` samples centred on ``i``, shifted inwards at
    the ends so that it always holds ``window`` samples (the ``mode="interp"`` edge handling of
    :func:`scipy.signal.savgol_filter`).

    Returns
    -------
    weights : ndarray (n, window)
        ``x̂^{(order)}(t_i) = Σ_k weights[i, k] y[start[i] + k]``.
    start : ndarray (n,)
        First sample of each window.
    """
    t = np.asarray(t, dtype=float)
    n = len(t)
    i = np.arange(n)
    start = np.clip(i - window // 2, 0, n - window).astype(np.intp)
    idx = start[:, None] + np.arange(window)[None, :]
    dx = t[idx] - t[:, None]
    scale = np.max(np.abs(dx), axis=1, keepdims=True)
    x = (dx / scale)[..., None] ** np.arange(polyorder + 1)  # (n, m, p+1)
    q, r = np.linalg.qr(x)  # (n, m, p+1), (n, p+1, p+1)
    # (XᵀX)⁻¹Xᵀ = R⁻¹Qᵀ; only row `order` is needed: solve Rᵀ z = e_order, weights = Q z
    e = np.zeros((n, polyorder + 1, 1))
    e[:, order, 0] = 1.0
    z = np.linalg.solve(np.swapaxes(r, 1, 2), e)
    w = (q @ z)[..., 0]
    w *= factorial(order) / scale**order
    return w, start


def _apply(w: FloatArray, start: IntArray, y: FloatArray) -> FloatArray:
    idx = start[:, None] + np.arange(w.shape[1])[None, :]
    return np.sum(w * y[idx], axis=1)


def _uniform_hat_diag(n: int, window: int, polyorder: int) -> FloatArray:
    """Diagonal of the smoother matrix of ``savgol_filter(mode="interp")`` on a regular grid."""
    half = window // 2
    diag = np.full(n, savgol_coeffs(window, polyorder, deriv=0, use="dot")[half])
    x = np.linspace(-1.0, 1.0, window)[:, None] ** np.arange(polyorder + 1)
    q, _ = np.linalg.qr(x)
    hdiag = np.sum(q**2, axis=1)  # projection onto the first/last window
    diag[:half] = hdiag[:half]
    diag[n - half :] = hdiag[window - half :]
    return diag


def _candidate_windows(n: int, polyorder: int, cap: int) -> list[int]:
    lo = polyorder + 2 + (polyorder + 2 + 1) % 2  # smallest odd window > polyorder + 1
    hi = min(n, cap)
    hi -= 1 - hi % 2
    if hi < lo:
        return []
    grid = np.unique(np.round(np.geomspace(lo, hi, 30)).astype(int))
    grid = np.unique(grid + 1 - grid % 2)
    return [int(m) for m in grid if lo <= m <= hi]


class SavitzkyGolay(Preprocessor):
    """Savitzky–Golay (local polynomial least-squares) derivatives.

    Model: around each sample ``t_i``, ``y_k = Σ_{j≤p} β_j (t_k - t_i)^j + e_k`` for the ``m``
    samples of the window, ``x̂^{(d)}(t_i) = d! β̂_d``; linear in ``y`` with covariance
    ``r W_d W_dᵀ`` under white noise of variance ``r``.

    Parameters
    ----------
    window : int, optional
        Odd number of samples ``m`` in each window (``> polyorder``). Default: chosen per column
        and segment by leave-one-out cross-validation of the smoothed series,
        ``CV(m) = mean(((y_i - ŷ_i) / (1 - L_ii))²)`` with ``L_ii`` the hat-matrix diagonal of
        the local fit, over a geometric grid of odd windows (up to the segment length on a
        regular grid, up to 501 samples on an irregular one). The choice is in ``info_``.
    polyorder : int
        Degree ``p`` of the local polynomial; derivatives up to order ``min(p, 3)``.

    Notes
    -----
    Regular grids use :func:`scipy.signal.savgol_filter` (``mode="interp"``); irregular ones the
    same local fit with the weights computed per sample (:func:`local_polynomial_weights`).
    Edges: the window is shifted inwards so it always holds ``m`` samples, i.e. the polynomial
    fitted to the first (last) ``m`` samples is evaluated at the first (last) ``m // 2`` samples.
    Estimates exist everywhere, but their variance and bias grow towards the ends (the covariance
    shows by how much). The LOO-CV window is tuned for the smoothed series; for derivatives the
    optimal window is somewhat larger, so the chosen window errs on the noisy side.
    """

    name = "savgol"
    max_order = 3

    def __init__(self, window: int | None = None, polyorder: int = 3) -> None:
        self.window = window
        self.polyorder = polyorder

    def _validate(self) -> None:
        p = self.polyorder
        if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or not 1 <= p <= 8:
            raise DataError(f"polyorder must be an integer in 1..8, got {p!r}")
        m = self.window
        if m is not None and (
            isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m % 2 == 0 or m <= p
        ):
            raise DataError(f"window must be an odd integer > polyorder ({p}), got {m!r}")

    def min_points(self) -> int:
        return int(self.window) if self.window is not None else int(self.polyorder) + 2

    def fit(self, data: pd.DataFrame | pd.Series | np.ndarray, **kwargs: Any) -> Self:
        """Fit (choose windows) for every column and segment; see :meth:`Preprocessor.fit`."""
        self._validate()
        super().fit(data, **kwargs)
        sd = self.data_
        windows = {
            c: [int(self.states_[(j, i)]["window"]) for i in range(len(sd.segments))]
            for j, c in enumerate(sd.columns)
        }
        self.info_ = {
            "polyorder": int(self.polyorder),
            "window_selection": "given" if self.window is not None else "loo-cv",
            "windows": windows,
        }
        flat = {m for ws in windows.values() for m in ws}
        if len(flat) == 1:
            self.info_["window"] = flat.pop()
        if self.window is None:
            self.info_["cv_scores"] = {
                c: [self.states_[(j, i)]["cv"] for i in range(len(sd.segments))]
                for j, c in enumerate(sd.columns)
            }
        return self

    # ------------------------------------------------------------------ window choice
    def _cv_score(self, t: FloatArray, y: FloatArray, m: int, regular: bool) -> float:
        p = int(self.polyorder)
        if regular:
            yhat = savgol_filter(y, m, p, deriv=0, mode="interp")
            lii = _uniform_hat_diag(len(y), m, p)
        else:
            w, start = local_polynomial_weights(t, m, p, 0)
            yhat = _apply(w, start, y)
            lii = w[np.arange(len(y)), np.arange(len(y)) - start]
        return float(np.mean(((y - yhat) / (1.0 - lii)) ** 2))

    def _fit_1d(self, t: FloatArray, y: FloatArray) -> dict[str, Any]:
        n = len(y)
        regular = is_regular(t)
        state: dict[str, Any] = {"y": np.array(y, dtype=float), "regular": regular}
        if self.window is not None:
            if n < self.window:
                raise TooFewPointsError(
                    f"SavitzkyGolay window={self.window} needs that many points per segment, "
                    f"got {n}"
                )
            state["window"] = int(self.window)
            return state
        cap = n if regular else MAX_CV_WINDOW_IRREGULAR
        cands = _candidate_windows(n, int(self.polyorder), cap)
        if not cands:
            raise TooFewPointsError(
                f"SavitzkyGolay with polyorder={self.polyorder} needs at least "
                f"{self.polyorder + 2} points per segment to choose a window, got {n}"
            )
        scores = [self._cv_score(t, y, m, regular) for m in cands]
        best = int(np.argmin(scores))
        state["window"] = cands[best]
        state["cv"] = {"windows": cands, "scores": [float(s) for s in scores]}
        return state

    # ------------------------------------------------------------------ protocol
    def _check_deriv(self, order: int) -> None:
        if order > self.polyorder:
            raise DataError(
                f"a local polynomial of degree {self.polyorder} cannot estimate a derivative of "
                f"order {order}; raise polyorder"
            )

    def _derivative_1d(
        self, state: dict[str, Any], t: FloatArray, order: int
    ) -> tuple[FloatArray, None]:
        self._check_deriv(order)
        y, m = state["y"], state["window"]
        if state["regular"]:
            h = float(np.mean(np.diff(t)))
            est = savgol_filter(y, m, int(self.polyorder), deriv=order, delta=h, mode="interp")
            return np.asarray(est, dtype=float), None
        w, start = local_polynomial_weights(t, m, int(self.polyorder), order)
        return _apply(w, start, y), None

    def weights(self, t: FloatArray, order: int, window: int) -> sp.csr_array:
        """Sparse ``W`` (n × n) with ``x̂^{(order)} = W y`` for the given window."""
        self._validate()
        n = len(t)
        w, start = local_polynomial_weights(
            np.asarray(t, dtype=float), window, self.polyorder, order
        )
        cols = start[:, None] + np.arange(window)[None, :]
        return sp.csr_array(
            (w.ravel(), (np.repeat(np.arange(n), window), cols.ravel())), shape=(n, n)
        )

    def _derivative_cov_1d(self, state: dict[str, Any], t: FloatArray, order: int) -> FloatArray:
        """Dense ``r̂ W Wᵀ`` with ``r̂`` the Gasser–Sroka–Jennen-Steinmetz noise variance."""
        self._check_deriv(order)
        w = self.weights(t, order, state["window"])
        r = noise_variance(t, state["y"])
        return (r * (w @ w.T)).toarray()
