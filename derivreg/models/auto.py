"""Automatic choice of the regression form (``method="auto"``, the default of ``dr.fit``).

Every form estimates the same coefficients ``θ`` of ``x^(p)(t) = Σ_j θ_j g_j(t)``; they differ
in the noise they assume. The choice, measured on ``dx/dt = a x + b u + c`` (a = −1, b = 1,
c = 0.5, switching input, Δ = 0.1, n = 300, 60 replications):

* process noise only: ``statespace`` covers (0.95 / 0.93) and is unbiased; the integral form is
  biased (a: +0.58, coverage 0.33) and worse the longer the record;
* measurement noise only: ``statespace`` 0.95 / 0.95, SD(a) 0.022; ``arimax`` 0.88 / 0.92 with
  the same SD; ``integral`` 0.87 / 0.93 with SD 0.039; ``gradient`` biased (coverage 0);
* timings (n = 300 / 2000 / 10000): ``statespace`` 0.6 / 0.75 / 4.1 s, ``arimax`` 0.1 / 0.18 /
  1.0 s, ``integral`` 0.08 / 1.2 / 107 s.

So the rule is:

1. one equation, linear in the state (``d(x) ~ x + u``, ``d(x, 2) ~ d(x) + u``):
   ``statespace`` — it estimates both noise variances, so it is right in every regime, handles
   irregular sampling and missing values; the results report the regime it found (the shares of
   process and measurement noise in the one-step variance). ``arimax`` (ML, ``noise="both"``)
   is 4-6x faster with similar efficiency on regular grids but covered only 0.88 / 0.92 under
   measurement noise, so it is not chosen.
2. terms nonlinear in the state or several equations: the noise regime is diagnosed from the
   output-error residuals — ``trajectory`` (exact for nonlinear relations, efficient under
   measurement noise) is fitted first, started from the integral form; if its residuals are
   white (Ljung–Box p ≥ 0.01) measurement noise dominates and it is kept; otherwise process noise
   (or model error) is present and a single equation goes to ``statespace`` (its fixed-regressor
   treatment of nonlinear terms), a system to ``integral`` (no form here models process noise
   in a system; the integral form then warns about its bias).
   Non-smooth terms (``sign``, ``abs``: Coulomb friction, the motor) skip the trajectory
   (integrating through velocity reversals and stiction is fragile) and use ``statespace``
   (one equation) or ``integral`` (system).

Covariance: the chosen form's default. ``cov_type="bootstrap"`` (with ``n_boot=``, ``seed=``)
is passed through to the state-space fit when the relation is one equation linear in the state
(rule 1): a parametric bootstrap that removes the small-sample bias of short records with
process noise (see :mod:`derivreg.models.statespace`); for other relations it raises
:class:`~derivreg.exceptions.MethodNotAvailableError`. The default stays the fast fit, which
warns (:class:`~derivreg.exceptions.BiasWarning`) when its small-sample diagnostic predicts a
bias above 0.2 SE or under-covering intervals, and says to refit with the bootstrap.

``results.info["chosen"]`` and ``info["reason"]`` say what was used and why (both are shown in
the summary, and ``results.method`` reads ``"auto -> <form>"``); the results are otherwise those
of the chosen form.

Measured (``tests/test_models_auto.py``, R = 200, n = 200, Δ = 0.5, a = −1, b = 1, c = 0.5,
switching input): RMSE of auto / state-space = 1.00 in all three regimes (auto runs the same
fit), coverage of a, b: process noise (σ = 0.5) 0.935 / 0.94, measurement noise (τ = 0.1)
0.935 / 0.93, both (σ = 0.5, τ = 0.2) 0.94 / 0.95; the regime named correctly in 85% / 92.5% /
91.5% of the replications.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import numpy as np

from derivreg.exceptions import DataError, DerivregError, MethodNotAvailableError
from derivreg.models.base import Model
from derivreg.results import DiffRegResults

__all__ = ["WHITE_P", "AutoModel", "noise_regime"]

#: Ljung–Box p-value of the trajectory residuals at or above which they count as white
WHITE_P = 0.01
#: share of the one-step variance below which a noise source counts as absent (its estimate is
#: rarely exactly zero: with σ = 0.5, Δ = 0.5 and no measurement noise the share of r was
#: 5-10% in a third of the replications)
_ABSENT = 0.1
_NONSMOOTH = ("sign", "abs")


def noise_regime(sigma2: float, r: float, dt: float, order: int = 1) -> tuple[str, float]:
    """Regime name and process share from the state-space noise estimates.

    The one-step variance of ``x`` is ``σ² Δ^(2p-1)`` (process) + ``r`` (measurement); a source
    with less than 10% of the total counts as absent.

    Returns
    -------
    (str, float)
        ``"process"``, ``"measurement"`` or ``"both"``, and the process share.
    """
    proc = float(sigma2) * float(dt) ** (2 * order - 1)
    total = proc + float(r)
    if not total > 0:
        return "none detected", float("nan")
    share = proc / total
    if share < _ABSENT:
        return "measurement", share
    if share > 1 - _ABSENT:
        return "process", share
    return "both", share


class AutoModel(Model):
    """Choose the form from the relation and the data, fit it, say why (module docstring).

    Model: whichever form is chosen; ``results.info["chosen"]`` names it, ``info["reason"]``
    gives the diagnosis. Covariance: the chosen form's default (``cov_type="auto"``), whose
    coverage is documented with that form, or ``"bootstrap"`` (state-space choice only: the
    parametric bootstrap of :class:`~derivreg.models.statespace.StateSpace`).

    Options
    -------
    whiteness_p : float
        Ljung–Box p-value at or above which output-error residuals count as white (0.01).
    n_boot, seed
        Bootstrap replications and seed, for ``cov_type="bootstrap"`` only.
    """

    method: ClassVar[str] = "auto"
    noise_model: ClassVar[str] = "chosen from the data"
    cov_types: ClassVar[tuple[str, ...]] = ("auto", "bootstrap")
    default_cov_type: ClassVar[str] = "auto"
    option_defaults: ClassVar[dict[str, Any]] = {
        "whiteness_p": WHITE_P,
        "n_boot": None,
        "seed": None,
    }
    supports_systems: ClassVar[bool] = True
    supports_nonlinear: ClassVar[bool] = True
    handles_missing: ClassVar[bool] = True

    def min_points(self) -> int:
        return 3

    def _form(self, method: str, **options: Any) -> Model:
        return self.with_form(method, **options)

    def _statespace_ok(self) -> bool:
        if self.spec.is_system:
            return False
        from derivreg.models.statespace import linear_relation

        try:
            rel = linear_relation(self)
        except MethodNotAvailableError:
            return False
        return not any(
            k > 0 for t in rel.exog_terms for _, k in t.variables if t.kind != "nonlinear"
        )

    def _nonsmooth(self) -> bool:
        return any(
            fn in f
            for eq in self.spec.equations
            for t in eq.terms
            if t.kind == "nonlinear"
            for f in t.factors
            for fn in _NONSMOOTH
        )

    def _statespace(self, cov_type: str, boot: dict[str, Any]) -> DiffRegResults:
        """The state-space fit, with the bootstrap when it was asked for."""
        if cov_type == "bootstrap":
            return self._form("statespace").fit(cov_type="bootstrap", **boot)
        return self._form("statespace").fit()

    def _fit(self, cov_type: str, **kwargs: Any) -> DiffRegResults:
        unknown = sorted(set(kwargs) - {"n_boot", "seed"})
        if unknown:
            raise DataError(f"unknown fit option(s) {unknown} for AutoModel")
        boot = {k: self.options[k] for k in ("n_boot", "seed") if self.options[k] is not None}
        boot.update({k: v for k, v in kwargs.items() if v is not None})
        if boot and cov_type != "bootstrap":
            raise DataError(
                f"{', '.join(sorted(boot))} only apply to cov_type='bootstrap' (got "
                f"cov_type={cov_type!r})"
            )
        p_white = float(self.options["whiteness_p"])
        missing = bool(np.isnan(self.data.values).any())
        single_ok = self._statespace_ok()
        if cov_type == "bootstrap" and not (single_ok and self.spec.linear):
            raise MethodNotAvailableError(
                "cov_type='bootstrap' is available when auto chooses the state-space fit (one "
                "equation linear in the state); for this relation fit a form directly with its "
                "own cov_type"
            )
        if single_ok and self.spec.linear:
            res = self._statespace(cov_type, boot)
            return self._label(
                res, "statespace", self._statespace_reason(res, "one equation linear in the state")
            )
        if missing and single_ok:
            res = self._form("statespace").fit()
            why = "missing observations (only the state-space likelihood handles them)"
            return self._label(res, "statespace", self._statespace_reason(res, why))
        kind = "several equations" if self.spec.is_system else "terms nonlinear in the state"
        if self._nonsmooth():
            why = (
                f"{kind} with non-smooth terms (sign/abs): integrating through reversals is "
                "fragile, so no trajectory fit"
            )
            if single_ok:
                res = self._form("statespace").fit()
                return self._label(res, "statespace", self._statespace_reason(res, why))
            return self._label(self._form("integral").fit(), "integral", why)
        traj_error = None
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                traj = self._form("trajectory").fit()
            pval = traj.diagnostics.ljung_box_pvalue
        except DerivregError as exc:
            traj, pval, caught, traj_error = None, float("nan"), [], exc
        if traj is not None and np.isfinite(pval) and pval >= p_white:
            for w in caught:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            why = (
                f"{kind}; the output-error residuals are white (Ljung-Box p = {pval:.2g} >= "
                f"{p_white:g}): measurement noise dominates, where the trajectory fit is exact "
                "and efficient"
            )
            traj.info["noise regime"] = "measurement"
            return self._label(traj, "trajectory", why)
        if traj_error is not None:
            diag = f"the trajectory fit failed ({traj_error})"
        else:
            diag = (
                f"the output-error residuals are autocorrelated (Ljung-Box p = {pval:.2g} < "
                f"{p_white:g}): process noise or model error"
            )
        if single_ok:
            res = self._form("statespace").fit()
            return self._label(res, "statespace", self._statespace_reason(res, f"{kind}; {diag}"))
        res = self._form("integral").fit()
        res.info["noise regime"] = "process noise or model error"
        return self._label(
            res, "integral", f"{kind}; {diag}; no form fits process noise in a system"
        )

    def _statespace_reason(self, res: DiffRegResults, why: str) -> str:
        sigma2 = float(res.info.get("process noise sigma2", np.nan))
        r = float(res.info.get("measurement noise r", np.nan))
        dt = float(np.median(np.concatenate([np.diff(t) for _, _, t in self.data.iter_segments()])))
        order = self.spec.equations[0].order
        regime, share = noise_regime(sigma2, r, dt, order)
        res.info["noise regime"] = regime
        return (
            f"{why}: the state-space likelihood estimates both noise sources and covers in every "
            f"regime; found {regime} noise (process share of the one-step variance "
            f"{share:.0%})"
        )

    def _label(self, res: DiffRegResults, chosen: str, reason: str) -> DiffRegResults:
        res.info = {"chosen": chosen, "reason": reason, **res.info}
        res.method = f"auto -> {chosen}"
        return res
