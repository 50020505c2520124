"""Small-sample bias of the state-space ML estimate: run-time predictor, parametric bootstrap.

For ``dx = (a x + Σ_j b_j w_j) dt + σ dW`` observed with or without measurement noise, the
exact Gaussian ML estimate of the mean-reversion rate ``a`` has the Kendall-type bias of an
autoregression, ``E[â] − a ≈ −4/T`` for an Ornstein–Uhlenbeck process with unknown mean over a
span ``T`` (each further regressor adds to it), while ``SD(â) ≈ sqrt(2|a|/T)``: the bias is
``≈ −2.8/sqrt(|a|T)`` standard deviations, not small until the record spans hundreds of time
constants. Inputs shrink it (they add variation of ``x`` that is not driven by the noise),
measurement noise does not add to it (it widens the SE instead). The other coefficients inherit
the bias through their correlation with ``â``.

:func:`predict_bias` turns this into a cheap run-time diagnostic (calibrated on the recovery
grid, ``benchmarks/results/recovery_full.md``); :func:`parametric_bootstrap` removes the bias:
it simulates the fitted model (estimated process and measurement noise, the same times, inputs,
segments, missing samples and initial states), refits every replicate from the estimate, and
returns the draws, whose mean estimates ``E[θ̂]`` at ``θ̂`` (bias-corrected estimate
``2θ̂ − mean(θ*)``) and whose covariance estimates ``Cov(θ̂)``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from derivreg._typing import FloatArray
from derivreg.exceptions import DataError, DerivregError

__all__ = [
    "BIAS_WARN",
    "BOTH_NOISE",
    "DEFAULT_BOOT",
    "KENDALL_C",
    "MIN_BOOT",
    "SHORT_SPAN",
    "BiasPrediction",
    "BootstrapDraws",
    "check_bootstrap_options",
    "parametric_bootstrap",
    "predict_bias",
]

#: predicted |bias| (in SE units) of any coefficient above which the default fit warns
BIAS_WARN = 0.2
#: constant of the predicted bias of ``a``: ``−KENDALL_C · s / T``. Theory for an OU process with
#: unknown mean: 4; least squares of the observed bias/SD of the default fit on the predicted one
#: over the 36 cells of the recovery grid gave 1.13 x 4 (x: 1.10, u: 1.35, Intercept: 1.02)
KENDALL_C = 4.5
#: process share of the one-step variance inside which both noise sources count as present
#: (as in :func:`derivreg.models.auto.noise_regime`)
BOTH_NOISE = (0.1, 0.9)
#: records shorter than this many time constants with both noise sources: the observed-information
#: SEs were measured 8% too small on the recovery grid (regime C, |a|T <= 30: mean SE/SD 0.92,
#: mean coverage 0.932, worst 0.88-0.91; regime B 1.03 / 0.951, regime A 0.96 / 0.945; C at
#: |a|T = 100: 1.00 / 0.943)
SHORT_SPAN = 50.0
#: fewest bootstrap replications accepted
MIN_BOOT = 10
#: replications when ``n_boot`` is not given
DEFAULT_BOOT = 199


# ---------------------------------------------------------------------- diagnostic
@dataclass
class BiasPrediction:
    """Predicted small-sample bias of each coefficient, in units of its standard error.

    Attributes
    ----------
    bias_se : dict
        ``{name: predicted bias / SE}``.
    time_constants : float
        ``|a| T``: record span in time constants of the fitted dynamics.
    noise_share : float
        ``s``: share of the (input-partialled) variation of ``x`` driven by the process noise.
    process_share : float
        Share of the process noise in the one-step variance of ``x`` (``σ²Δ / (σ²Δ + r)``).
    biased : bool
        ``max |bias/SE| > BIAS_WARN``.
    undercover : bool
        Both noise sources present (process share inside ``BOTH_NOISE``) and ``|a|T <
        SHORT_SPAN``: Wald intervals from the observed information under-cover.
    """

    bias_se: dict[str, float] = field(default_factory=dict)
    time_constants: float = float("nan")
    noise_share: float = float("nan")
    process_share: float = float("nan")
    biased: bool = False
    undercover: bool = False

    @property
    def flag(self) -> bool:
        """Whether the default fit warns (:attr:`biased` or :attr:`undercover`)."""
        return self.biased or self.undercover

    def text(self) -> str:
        return ", ".join(f"{k} {v:+.2f}" for k, v in self.bias_se.items())

    def worst(self) -> tuple[str, float]:
        name = max(self.bias_se, key=lambda k: abs(self.bias_se[k]))
        return name, self.bias_se[name]

    def as_info(self) -> dict[str, Any]:
        """The prediction as a results ``info`` entry (``info["small-sample bias"]``)."""
        return {
            "predicted bias/SE": dict(self.bias_se),
            "|a|T": self.time_constants,
            "process-noise share s": self.noise_share,
            "process share of one-step variance": self.process_share,
            "biased": self.biased,
            "wald under-coverage": self.undercover,
        }

    def warning_text(self, remedy: str) -> str:
        """The BiasWarning message for a flagged fit, ending with ``remedy`` (what to do)."""
        parts = []
        if self.biased:
            name, worst = self.worst()
            parts.append(
                f"the record spans only |a|T = {self.time_constants:.3g} time constants with "
                f"process noise, and the ML estimate has a small-sample (Kendall-type) bias of "
                f"about {worst:+.2f} SE in {name!r} (predicted bias/SE: {self.text()}; the bias "
                f"of a is about -{KENDALL_C:g} s/T with s = {self.noise_share:.2f} the share of "
                "the variation of x driven by the noise), so the Wald intervals are off-centre"
            )
        if self.undercover:
            parts.append(
                f"with both process and measurement noise (process share "
                f"{self.process_share:.0%} of the one-step variance) on a record of |a|T = "
                f"{self.time_constants:.3g} < {SHORT_SPAN:g} time constants, the "
                "likelihood-based SEs were measured about 8% too small (Wald coverage "
                "0.88-0.93 instead of 0.95 on the recovery grid)"
            )
        msg = "; ".join(parts)
        return msg[0].upper() + msg[1:] + ". " + remedy


def predict_bias(
    a: float,
    sigma2: float,
    r: float,
    dt: float,
    cov: FloatArray,
    names: Sequence[str],
    state_index: int,
    x_paths: Sequence[FloatArray],
    w_paths: Sequence[FloatArray],
    spans: Sequence[float],
) -> BiasPrediction:
    """Kendall-type prediction of the small-sample bias of a first-order relation.

    Model ``dx = (a x + Σ_j θ_j w_j) dt + σ dW``. With ``T`` the total span, ``V_n = σ²/(2|a|)``
    the stationary variance of the noise-driven part of ``x`` and ``V`` the variance of the
    (smoothed) state after regressing it on the exogenous regressors ``w``, the share
    ``s = min(V_n / V, 1)`` and

    .. math:: \\mathrm{bias}(\\hat a) \\approx -c\\, s / T, \\qquad
              \\mathrm{bias}(\\hat\\theta_j) \\approx
              \\frac{\\mathrm{Cov}(\\hat\\theta_j, \\hat a)}{\\mathrm{Var}(\\hat a)}
              \\mathrm{bias}(\\hat a),

    both divided by the fitted standard errors (``c = KENDALL_C``). Measurement noise enters
    through the SE (wider) only. ``|a|`` is floored at ``1/T`` (a record shorter than one time
    constant, or a non-stationary estimate, predicts a large bias). Separately, a record shorter
    than ``SHORT_SPAN`` time constants with both noise sources (process share of the one-step
    variance ``σ²Δ / (σ²Δ + r)`` inside ``BOTH_NOISE``) is marked ``undercover``.

    Parameters
    ----------
    a : float
        Fitted coefficient of ``x``.
    sigma2, r : float
        Fitted process-noise intensity and measurement-noise variance.
    dt : float
        Typical (median) sampling step.
    cov : array (k, k)
        Covariance of the coefficients (order of ``names``).
    names : sequence of str
    state_index : int
        Position of ``a`` in ``names``.
    x_paths, w_paths : per segment
        Smoothed state ``(n,)`` and exogenous regressors ``(n, m)``.
    spans : per segment
        Time span of each segment.
    """
    T = float(np.sum(spans))
    abs_a = max(abs(float(a)), 1.0 / T) if T > 0 else float("nan")
    x = np.concatenate([np.asarray(v, float) for v in x_paths])
    W = np.vstack([np.asarray(v, float) for v in w_paths])
    ok = np.isfinite(x) & np.all(np.isfinite(W), axis=1)
    x, W = x[ok], W[ok]
    if W.shape[1]:
        # a constant column is always among w or implied: partial out the mean too
        Wc = np.column_stack([W, np.ones(len(x))])
        beta, *_ = np.linalg.lstsq(Wc, x, rcond=None)
        resid = x - Wc @ beta
    else:
        resid = x - x.mean()
    V = float(np.mean(resid**2))
    Vn = max(float(sigma2), 0.0) / (2.0 * abs_a)
    s = min(Vn / V, 1.0) if V > 0 else 1.0
    se = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    proc = max(float(sigma2), 0.0) * float(dt)
    total = proc + max(float(r), 0.0)
    share = proc / total if total > 0 else float("nan")
    out = BiasPrediction(time_constants=abs_a * T, noise_share=s, process_share=share)
    lo, hi = BOTH_NOISE
    out.undercover = bool(lo < share < hi and abs_a * T < SHORT_SPAN)
    if not (T > 0 and np.all(np.isfinite(se)) and se[state_index] > 0):
        return out
    bias_a = -KENDALL_C * s / T
    var_a = float(cov[state_index, state_index])
    for j, name in enumerate(names):
        bias_j = float(cov[j, state_index]) / var_a * bias_a
        out.bias_se[str(name)] = bias_j / float(se[j]) if se[j] > 0 else float("nan")
    vals = np.array(list(out.bias_se.values()), dtype=float)
    out.biased = bool(np.nanmax(np.abs(vals)) > BIAS_WARN) if np.any(np.isfinite(vals)) else False
    return out


# ---------------------------------------------------------------------- bootstrap
@dataclass
class BootstrapDraws:
    """Refitted coefficients of a parametric bootstrap.

    Attributes
    ----------
    draws : ndarray (n_ok, k)
        Coefficients of the replicates whose refit succeeded.
    n_boot : int
        Replicates simulated.
    failures : int
        Replicates whose refit failed (exception, non-finite or not converged); not in ``draws``.
    errors : list of str
        Distinct failure messages.
    seconds : float
        Wall time.
    entropy : int
        Entropy of the ``SeedSequence`` used (pass it as ``seed`` to repeat the draws).
    """

    draws: FloatArray
    n_boot: int
    failures: int
    errors: list[str]
    seconds: float
    entropy: int

    @property
    def mean(self) -> FloatArray:
        return np.asarray(self.draws.mean(axis=0), float)

    @property
    def cov(self) -> FloatArray:
        k = self.draws.shape[1]
        return np.cov(self.draws, rowvar=False, ddof=1).reshape(k, k)


def check_bootstrap_options(cov_type: str, kwargs: dict[str, Any]) -> tuple[int, Any]:
    """Validate ``n_boot`` and ``seed`` (only with ``cov_type="bootstrap"``); return them."""
    opts = dict(kwargs)
    given = sorted(k for k in set(opts) & {"n_boot", "seed"} if opts[k] is not None)
    unknown = sorted(set(opts) - {"n_boot", "seed"})
    if unknown:
        raise DataError(
            f"unknown fit option(s) {unknown} for StateSpace; cov_type='bootstrap' takes n_boot "
            "and seed"
        )
    if cov_type != "bootstrap":
        if given:
            raise DataError(
                f"{', '.join(given)} only apply to cov_type='bootstrap' (got cov_type={cov_type!r})"
            )
        return 0, None
    n_boot = opts.get("n_boot")
    n_boot = DEFAULT_BOOT if n_boot is None else n_boot
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)):
        raise DataError(f"n_boot must be an integer, got {n_boot!r}")
    if n_boot < MIN_BOOT:
        raise DataError(
            f"n_boot={n_boot} is too few replications for a bias correction and a covariance; "
            f"use at least {MIN_BOOT} (99-199 is typical)"
        )
    seed = opts.get("seed")
    if seed is not None and not isinstance(seed, (int, np.integer, np.random.SeedSequence)):
        raise DataError(f"seed must be an integer, a SeedSequence or None, got {seed!r}")
    if isinstance(seed, (int, np.integer)) and seed < 0:
        raise DataError(f"seed must be non-negative, got {seed}")
    return int(n_boot), seed


def parametric_bootstrap(
    model: Any,
    params: FloatArray,
    x0: Sequence[FloatArray],
    n_boot: int,
    seed: Any,
    noise: str,
    maxiter: int = 200,
) -> BootstrapDraws:
    """Simulate the fitted model ``n_boot`` times and refit each replicate from the estimate.

    Parameters
    ----------
    model : _LinearSDE
        The likelihood of the fit (its observations are replaced by each replicate's; build a
        fresh one for the bootstrap).
    params : array
        Full parameter vector at the optimum (coefficients, noise, initial states).
    x0 : per segment, array (p,)
        Initial state of each replicate (the smoothed initial state of the data).
    n_boot : int
    seed : int, SeedSequence or None
        Replicate ``i`` draws from the ``i``-th child of ``SeedSequence(seed)``, so the draws
        are reproducible and do not depend on the order of the refits.
    noise : str
        The fit's noise model (the same one is refitted).
    maxiter : int
        BFGS iterations per refit (they start at the estimate).
    """
    from derivreg.models.statespace import _maximise

    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    children = ss.spawn(int(n_boot))
    k = model.k
    original = [seg.y.copy() for seg in model.segments]
    rows: list[FloatArray] = []
    errors: list[str] = []
    failures = 0
    t0 = time.perf_counter()
    try:
        for child in children:
            rng = np.random.default_rng(child)
            ys = model.simulate(params, x0, rng)
            try:
                model.set_observations(ys)
                x, best, _, converged = _maximise(model, params, noise, maxiter, gtol=1e-6)
                if not converged:  # BFGS lost precision: restart once from where it stopped
                    x, best, _, converged = _maximise(model, x, noise, maxiter, gtol=1e-6)
            except (DerivregError, np.linalg.LinAlgError, ValueError) as exc:
                failures += 1
                msg = f"{type(exc).__name__}: {exc}"
                if msg not in errors:
                    errors.append(msg)
                continue
            theta = x[:k]
            if not converged or not np.all(np.isfinite(theta)):
                failures += 1
                msg = f"refit did not converge ({best.message})"
                if msg not in errors:
                    errors.append(msg)
                continue
            rows.append(theta.copy())
    finally:
        model.set_observations(original)
    draws = np.array(rows, dtype=float).reshape(len(rows), k)
    return BootstrapDraws(
        draws, int(n_boot), failures, errors, time.perf_counter() - t0, int(ss.entropy)
    )
