"""Diagnostics of a fitted relation: residual autocorrelation, conditioning, excitation.

* **Identification** (:func:`check_identification`): a regressor that is constant (other than the
  intercept) or a design of deficient rank raises :class:`IdentificationError` naming the terms.
* **Conditioning**: condition number of the design with columns scaled to unit norm (scaling
  removes the effect of units; values above ~1e3 mean near-collinear terms).
* **Excitation** (:func:`steady_state_share`): the share of samples at steady state — inputs not
  changing and the highest derivative ``x^(p)`` near zero. Such samples add noise, not information
  (the "regression dilution" of motor characterisation runs); above
  :data:`STEADY_STATE_WARN` an :class:`ExcitationWarning` says what to change.
* **Residual autocorrelation**: Ljung–Box test (statsmodels) on the residuals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from derivreg._typing import FloatArray, IntArray
from derivreg.exceptions import IdentificationError

__all__ = [
    "STEADY_STATE_WARN",
    "Diagnostics",
    "check_identification",
    "condition_number",
    "ljung_box",
    "robust_noise_variance",
    "steady_state_share",
]

#: share of steady-state samples above which an ExcitationWarning is issued
STEADY_STATE_WARN = 0.5


@dataclass
class Diagnostics:
    """Diagnostics attached to a result (``res.diagnostics``).

    Attributes
    ----------
    ljung_box_stat, ljung_box_pvalue, ljung_box_lags
        Ljung–Box test of the residuals (small p: autocorrelated residuals).
    condition_number
        Of the unit-norm-scaled design.
    steady_state_share
        Share of samples at steady state (NaN when not computed).
    extra
        Method-specific entries (e.g. HAC bandwidth, derivative estimator, noise estimates).
    """

    ljung_box_stat: float = float("nan")
    ljung_box_pvalue: float = float("nan")
    ljung_box_lags: int = 0
    condition_number: float = float("nan")
    steady_state_share: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = {
            "ljung_box_stat": self.ljung_box_stat,
            "ljung_box_pvalue": self.ljung_box_pvalue,
            "ljung_box_lags": self.ljung_box_lags,
            "condition_number": self.condition_number,
            "steady_state_share": self.steady_state_share,
        }
        out.update(self.extra)
        return out

    def __getitem__(self, key: str) -> Any:
        return self.as_dict()[key]

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs for the summary table."""
        out = []
        if self.ljung_box_lags:
            out.append(
                (
                    f"Ljung-Box Q({self.ljung_box_lags})",
                    f"{self.ljung_box_stat:.4g} (p={self.ljung_box_pvalue:.3g})",
                )
            )
        out.append(("Cond. No. (scaled)", f"{self.condition_number:.4g}"))
        if np.isfinite(self.steady_state_share):
            out.append(("Steady-state share", f"{self.steady_state_share:.1%}"))
        for k, v in self.extra.items():
            out.append((k, f"{v:.4g}" if isinstance(v, float) else str(v)))
        return out


def condition_number(X: FloatArray) -> float:
    """Condition number of ``X`` after scaling every column to unit Euclidean norm."""
    if X.size == 0:
        return float("nan")
    norms = np.linalg.norm(X, axis=0)
    norms[norms == 0] = 1.0
    s = np.linalg.svd(X / norms, compute_uv=False)
    return float(s[0] / s[-1]) if s[-1] > 0 else float("inf")


def check_identification(
    X: FloatArray, names: Sequence[str], *, allow_constant: Sequence[str] = ("Intercept",)
) -> None:
    """Raise :class:`IdentificationError` for constant or collinear regressors.

    Parameters
    ----------
    X : ndarray (n, k)
        Design matrix.
    names : list of str
        Column names (terms).
    allow_constant : list of str
        Names that may be constant (the intercept, initial-condition terms).
    """
    n, k = X.shape
    if n < k:
        raise IdentificationError(
            f"{k} coefficients cannot be estimated from {n} usable samples; collect more data "
            "or drop terms"
        )
    for j, name in enumerate(names):
        col = X[:, j]
        if name in allow_constant:
            continue
        scale = np.max(np.abs(col)) if col.size else 0.0
        if scale == 0 or np.ptp(col) <= 1e-10 * scale:
            raise IdentificationError(
                f"regressor {name!r} is constant over the data, so its coefficient is not "
                "identified (it is confounded with the intercept or initial conditions); vary it "
                "in the experiment or drop it from the formula"
            )
    norms = np.linalg.norm(X, axis=0)
    norms[norms == 0] = 1.0
    Xs = X / norms
    _, s, vt = np.linalg.svd(Xs, full_matrices=False)
    tol = s[0] * max(n, k) * 1e-10 if s.size else 0.0
    rank = int(np.sum(s > tol))
    if rank < k:
        null = vt[rank:]
        weight = np.sqrt(np.sum(null**2, axis=0))
        involved = [names[j] for j in range(k) if weight[j] > 1e-6]
        raise IdentificationError(
            f"the design has rank {rank} < {k}: terms {involved} are collinear (a combination "
            "of them is exactly zero over the data), so their coefficients are not identified; "
            "drop one of them or change the experiment so they vary independently"
        )


def ljung_box(resid: FloatArray, lags: int | None = None) -> tuple[float, float, int]:
    """Ljung–Box Q statistic, p-value and lag count.

    ``Q = n (n + 2) Σ_{k=1}^{h} ρ̂_k² / (n − k)`` with ``ρ̂`` from statsmodels' FFT ``acf``:
    the same statistic as ``acorr_ljungbox``, which computes the autocorrelation the O(n²) way
    (3 s at 10⁵ residuals, minutes at 10⁶).
    """
    from scipy import stats
    from statsmodels.tsa.stattools import acf

    r = np.asarray(resid, dtype=float)
    r = r[np.isfinite(r)]
    if r.size < 8:
        return float("nan"), float("nan"), 0
    if lags is None:
        lags = int(min(10, r.size // 5))
    n = r.size
    rho = acf(r, nlags=lags, fft=True)[1:]
    k = np.arange(1, lags + 1)
    q = float(n * (n + 2) * np.sum(rho**2 / (n - k)))
    return q, float(stats.chi2.sf(q, lags)), int(lags)


#: input-hold check: warn below this p-value
HOLD_CHECK_ALPHA = 1e-3


def input_hold_check(
    standardized: Sequence[FloatArray], inputs: Sequence[FloatArray]
) -> tuple[float, float, int]:
    """Do one-step innovations follow the inputs' changes between samples? Wald test.

    Under the model the standardized innovation ``e_k`` (of observation ``k`` given the past)
    is white with unit variance and uncorrelated with anything known before ``t_k``, including
    the input change ``d_k = u_k - u_(k-1)`` over the interval ``(t_(k-1), t_k]``. The two
    input holds integrate that interval differently by an amount proportional to ``d_k``, so
    a wrong ``input_hold`` leaves ``e_k`` correlated with ``d_k``. The statistic is
    ``e'D (D'D)^-1 D'e ~ chi2(p)`` with ``D`` the changes of the ``p`` input columns, pooled
    over segments (the first sample of each and missing innovations skipped).

    Returns the statistic, its p-value and ``p`` (NaN, NaN, 0 when no input changes).
    """
    from scipy import stats

    es, ds = [], []
    for e, u in zip(standardized, inputs, strict=True):
        e = np.asarray(e, dtype=float)
        u = np.asarray(u, dtype=float).reshape(len(e), -1)
        if len(e) < 2 or u.shape[1] == 0:
            continue
        d = np.diff(u, axis=0)
        ok = np.isfinite(e[1:]) & np.all(np.isfinite(d), axis=1)
        es.append(e[1:][ok])
        ds.append(d[ok])
    if not es:
        return float("nan"), float("nan"), 0
    e = np.concatenate(es)
    D = np.vstack(ds)
    keep = np.any(D != 0, axis=0)
    D = D[:, keep]
    if D.shape[1] == 0 or e.size <= D.shape[1] + 2:
        return float("nan"), float("nan"), 0
    g = D.T @ e
    try:
        stat = float(g @ np.linalg.solve(D.T @ D, g))
    except np.linalg.LinAlgError:
        return float("nan"), float("nan"), 0
    dof = int(D.shape[1])
    return stat, float(stats.chi2.sf(stat, dof)), dof


def steady_state_share(
    highest: FloatArray,
    inputs: FloatArray | None,
    segments: Sequence[IntArray],
    *,
    rel_tol: float = 0.03,
    t: FloatArray | None = None,
) -> float:
    """Share of samples at steady state.

    A sample is at steady state when the (estimated) highest derivative ``x^(p)`` is within
    ``rel_tol`` of the 99th percentile of ``|x^(p)|`` and no input changes from its neighbouring
    samples by more than its measurement noise (3 noise SDs, estimated by the
    Gasser–Sroka–Jennen-Steinmetz difference estimator, or ``1e-9`` of its range for clean
    inputs). Slow ramps are therefore not steady; holds at a settled state are.

    Parameters
    ----------
    highest : ndarray (n,)
        Estimate of the left-hand derivative at each sample (NaN ignored).
    inputs : ndarray (n, m) or None
        Exogenous columns.
    segments : list of index arrays
    t : ndarray (n,), optional
        Sample times (for the noise estimate on irregular grids).
    """
    h = np.abs(np.asarray(highest, dtype=float))
    ok = np.isfinite(h)
    if not ok.any():
        return float("nan")
    scale = np.quantile(h[ok], 0.99)
    if scale <= 0:
        return 1.0
    steady = ok & (h <= rel_tol * scale)
    if inputs is not None and inputs.size:
        U = np.asarray(inputs, dtype=float).reshape(len(h), -1)
        tt = np.arange(len(h), dtype=float) if t is None else np.asarray(t, dtype=float)
        moving = np.zeros(len(h), dtype=bool)
        for j in range(U.shape[1]):
            rng = float(np.ptp(U[:, j])) or 1.0
            for pos in segments:
                col = U[pos, j]
                if len(col) < 2:
                    continue
                noise = 0.0
                if len(col) >= 3:
                    from derivreg.preprocess.differencing import noise_variance

                    noise = float(np.sqrt(max(noise_variance(tt[pos], col), 0.0)))
                tol = 3.0 * noise + 1e-9 * rng
                jump = np.abs(np.diff(col)) > tol
                step = np.zeros(len(col), dtype=bool)
                step[1:] |= jump
                step[:-1] |= jump
                moving[pos] |= step
        steady &= ~moving
    return float(steady[ok].mean())


def robust_noise_variance(t: FloatArray, y: FloatArray) -> float:
    """Measurement-noise variance from pseudo-residuals, robust to kinks (median-based).

    Gasser–Sroka–Jennen-Steinmetz pseudo-residuals ``ε_i = a_i y_{i-1} + b_i y_{i+1} - y_i``
    scaled by ``sqrt(a_i² + b_i² + 1)`` are ``N(0, r)`` for a locally linear signal; the variance
    is estimated as ``(1.4826 · MAD)²`` rather than the mean square, so the few samples at input
    switches (kinks in ``x``) do not inflate it (the mean-square version was measured 13% high
    on a switching first-order system).
    """
    if len(y) < 3:
        return 0.0
    h0 = t[1:-1] - t[:-2]
    h1 = t[2:] - t[1:-1]
    a = h1 / (h0 + h1)
    b = h0 / (h0 + h1)
    eps = (a * y[:-2] + b * y[2:] - y[1:-1]) / np.sqrt(a**2 + b**2 + 1.0)
    mad = float(np.median(np.abs(eps - np.median(eps))))
    return (1.4826 * mad) ** 2
