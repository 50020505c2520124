"""Gradient form: estimate the derivatives the formula names, then regress.

For each equation ``x^(p)(t_k) = Σ_j θ_j g_j(t_k) + ε_k``, the left side and every right-hand
derivative ``d(x, k)`` are replaced by estimates from a derivative preprocessor (``derivative=``),
levels (``x``, inputs) are the measured columns, and ``θ`` is estimated by OLS equation by equation
(jointly for systems: the same estimates, with cross-equation covariance).

Error structure: the residual is ``r = ε_p - Σ_j θ_j ε_j``, the left-hand derivative-estimate
error (autocorrelated by construction) minus the noise of the measured or estimated regressors.
The default covariance is the sandwich ``B XᵀΩX B`` with ``Ω`` built from the estimator's own
covariance of its derivative (``W R Wᵀ`` for differences, posterior covariance for spline /
Kalman / GP) plus the regressors' noise; HAC (Newey–West, Bartlett kernel, Andrews AR(1) plug-in
bandwidth, lags summed within segments only) is available and used when the estimator has no
covariance. Noisy regressors bias OLS toward zero (errors in variables); the fit estimates that
attenuation, ``bias ≈ -n (XᵀX)⁻¹ diag(ν) θ̂`` with ``ν_j`` the noise variance of regressor ``j``,
and warns with :class:`~derivreg.exceptions.BiasWarning` when it exceeds half a standard error;
it also warns when the residuals are far larger than ``Ω`` explains (smoothing bias at steps and
kinks, or a misspecified relation).

Inputs under ``input_hold="zoh"`` enter as the mean of the held values on both sides of each
sample, ``(u_{k-1} + u_k)/2``, which is what a symmetric derivative estimate sees.

Supplying known derivatives: ``derivative={"d(x)": array_or_column}`` (arrays on the caller's
rows). The fit is then exactly OLS on those arrays.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from derivreg._typing import FloatArray
from derivreg.covariance import system_cov
from derivreg.exceptions import (
    BiasWarning,
    DataError,
    LengthMismatchError,
    MethodNotAvailableError,
    TooFewPointsError,
)
from derivreg.formula import derivative_label
from derivreg.models.base import Model, resolve_preprocessor
from derivreg.results import DiffRegResults

__all__ = ["GradientOLS"]

_LABEL_KEYS = ("d(", "d (")


class GradientOLS(Model):
    """Gradient matching: OLS of estimated derivatives on the right-hand terms.

    Model: ``x̂^(p)(t_k) = Σ_j θ_j ĝ_j(t_k) + ε_k``, ε autocorrelated (derivative-estimate error).

    Options
    -------
    derivative : str, Preprocessor or dict
        Derivative estimator name (``"spline"``, ``"difference"``, ``"kalman"``, ``"gp"``,
        ``"auto"``...) or instance, or a dict of known derivatives ``{"d(x)": array or column}``.
        Default ``"auto"``.
    derivative_options : dict
        Options for the estimator named by ``derivative``.
    maxlags : int or None
        HAC bandwidth (default automatic).

    Covariance types: ``"sandwich"`` (default: ``B XᵀΩX B`` with ``Ω`` the derivative
    estimator's covariance plus the measured regressors' noise; HAC when the estimator has no
    covariance), ``"HAC"``, ``"nonrobust"``, ``"HC0"``, ``"HC1"`` (for contrast). Measured
    (first order, multisine input, τ = 0.005, spline): coverage 0.92 / 0.91 for a / b; HAC
    1.00 / 0.99 (SE 40% too large). Details in ``tests/test_models_gradient.py``.
    """

    method: ClassVar[str] = "gradient"
    noise_model: ClassVar[str] = (
        "white measurement noise: derivative-estimate error (estimator's covariance) "
        "+ noise of measured regressors"
    )
    cov_types: ClassVar[tuple[str, ...]] = ("sandwich", "HAC", "nonrobust", "HC0", "HC1")
    default_cov_type: ClassVar[str] = "sandwich"
    option_defaults: ClassVar[dict[str, Any]] = {
        "derivative": "auto",
        "derivative_options": None,
        "maxlags": None,
    }

    # ------------------------------------------------------------------ derivatives
    def _supplied(self, given: Mapping[str, Any]) -> dict[tuple[str, int], FloatArray]:
        sd = self.data
        out: dict[tuple[str, int], FloatArray] = {}
        labels = {derivative_label(v, k): (v, k) for v, k in self.spec.derivatives}
        for key, val in given.items():
            norm = str(key).replace(" ", "").replace(",", ", ")
            if norm not in labels:
                raise DataError(
                    f"derivative={{{key!r}: ...}} is not a derivative the formula uses; "
                    f"needed: {sorted(labels)}"
                )
            if isinstance(val, str):
                if not isinstance(self.raw_data, pd.DataFrame) or val not in self.raw_data:
                    raise DataError(f"derivative column {val!r} is not in the data")
                arr = self.raw_data[val].to_numpy(dtype=float)
            else:
                arr = np.asarray(val, dtype=float).reshape(-1)
            if len(arr) != sd.n_total:
                raise LengthMismatchError(
                    f"the supplied {key} has {len(arr)} values; the data have {sd.n_total} rows"
                )
            out[labels[norm]] = arr[sd.rows]
        missing = [derivative_label(v, k) for v, k in self.spec.derivatives if (v, k) not in out]
        if missing:
            raise DataError(
                f"derivative= gives known derivatives but not {missing}; supply them all, or pass "
                "an estimator name such as derivative='spline'"
            )
        return out

    def _estimated(self) -> tuple[dict[tuple[str, int], FloatArray], dict[tuple[str, int], Any]]:
        sd = self.data
        pre, self.derivative_note_ = resolve_preprocessor(
            self.options["derivative"], self.options.get("derivative_options")
        )
        need = sorted(self.spec.derivatives)
        cols = sorted({v for v, _ in need})
        codes = np.empty(sd.nobs, dtype=np.intp)
        for i, pos in enumerate(sd.segments):
            codes[pos] = i
        X = np.column_stack([sd.column(c) for c in cols])
        pre.fit(X, columns=cols, time=sd.t, segment=codes if len(sd.segments) > 1 else None)
        self.preprocessor_ = pre
        est: dict[tuple[str, int], FloatArray] = {}
        se: dict[tuple[str, int], Any] = {}
        for order in sorted({k for _, k in need}):
            e, s = pre.derivative_arrays(order)
            for v, k in need:
                if k == order:
                    j = cols.index(v)
                    est[(v, k)] = e[:, j]
                    se[(v, k)] = None if s is None else s[:, j]
        return est, se

    def _held_inputs(self) -> dict[tuple[str, int], FloatArray]:
        """Inputs as a symmetric derivative estimate sees them under a zero-order hold.

        A held input jumps at the sample times; a central estimate of ``x'(t_k)`` averages the
        relation over the intervals on both sides, where the input is ``u_{k-1}`` and ``u_k``.
        The matching regressor is the local mean ``(u_{k-1} + u_k) / 2`` (exact for the central
        difference; without it the input enters half a sample late and every coefficient is
        biased).
        """
        out: dict[tuple[str, int], FloatArray] = {}
        for c in self.spec.exogenous:
            u = self.column(c)
            avg = u.copy()
            for pos in self.data.segments:
                seg = u[pos]
                shifted = np.concatenate([seg[:1], seg[:-1]])
                avg[pos] = 0.5 * (seg + shifted)
            out[(c, 0)] = avg
        return out

    # ------------------------------------------------------------------ fit
    def _fit(self, cov_type: str, maxlags: int | None = None, **kwargs: Any) -> DiffRegResults:
        if kwargs:
            raise DataError(f"unknown fit option(s) {sorted(kwargs)} for GradientOLS")
        sd = self.data
        given = self.options["derivative"]
        supplied = isinstance(given, Mapping)
        if supplied:
            derivs = self._supplied(given)
            ses: dict[tuple[str, int], Any] = {k: None for k in derivs}
            deriv_name = "supplied"
        else:
            derivs, ses = self._estimated()
            deriv_name = self.derivative_note_
        values: dict[tuple[str, int], FloatArray] = {**self.columns_dict(), **derivs}
        if self.input_hold == "zoh" and not supplied:
            values.update(self._held_inputs())
        n = sd.nobs
        ys = [values[(eq.response, eq.order)] for eq in self.spec.equations]
        Xs = [eq.design(values, n) for eq in self.spec.equations]
        ok = np.ones(n, dtype=bool)
        for y, X in zip(ys, Xs, strict=True):
            ok &= np.isfinite(y) & np.all(np.isfinite(X), axis=1)
        rows = np.flatnonzero(ok)
        k_max = max(X.shape[1] for X in Xs)
        if len(rows) <= k_max:
            raise TooFewPointsError(
                f"only {len(rows)} samples have every derivative defined; {k_max + 1} are needed"
            )
        segs = [np.flatnonzero(np.isin(rows, pos)) for pos in sd.segments]
        segs = [s for s in segs if len(s)]
        params, resid_b, X_b, fitted = [], [], [], []
        for eq, y, X in zip(self.spec.equations, ys, Xs, strict=True):
            Xr, yr = X[rows], y[rows]
            self.check_design(Xr, eq.term_names)
            beta, *_ = np.linalg.lstsq(Xr, yr, rcond=None)
            params.append(beta)
            resid_b.append(yr - Xr @ beta)
            X_b.append(Xr)
            fitted.append(Xr @ beta)
        theta = np.concatenate(params)
        details: dict[str, Any] = {}
        if cov_type == "sandwich":
            omega = None if supplied else self._derivative_omega(rows, theta)
            if omega is None:
                cov_type = "HAC"
                details["cov_note"] = "HAC (the derivative estimator has no covariance)"
            else:
                cov = self._sandwich(X_b, omega)
                details["misfit ratio"] = self._misfit_check(X_b, resid_b, omega)
        if cov_type != "sandwich":
            cov, more = system_cov(
                X_b, resid_b, cov_type, segments=segs, maxlags=maxlags or self.options["maxlags"]
            )
            details.update(more)
        bse = np.sqrt(np.clip(np.diag(cov), 0, None))
        if not supplied:
            self._bias_check(theta, bse, X_b, rows, values, ses)
        resid = np.full((n, len(ys)), np.nan)
        fit_full = np.full((n, len(ys)), np.nan)
        for i in range(len(ys)):
            resid[rows, i] = resid_b[i]
            fit_full[rows, i] = fitted[i]
        highest = np.full(n, np.nan)
        highest[rows] = fitted[0]
        diag = self.diagnose(X_b, resid_b[0], highest=highest, extra={"derivative": deriv_name})
        if len(ys) == 1:
            resid, fit_full = resid[:, 0], fit_full[:, 0]
        info: dict[str, Any] = {"derivative": deriv_name}
        if "maxlags" in details:
            info["HAC maxlags"] = details["maxlags"]
        if "misfit ratio" in details:
            info["misfit ratio"] = details["misfit ratio"]
        if "cov_note" in details:
            info["covariance"] = details["cov_note"]
        return self.make_results(
            theta,
            cov,
            cov_type=cov_type,
            nobs=len(rows),
            resid=resid,
            fittedvalues=fit_full,
            diagnostics=diag,
            info=info,
        )

    # ------------------------------------------------------------------ covariance
    def _derivative_omega(
        self, rows: np.ndarray, theta: FloatArray
    ) -> list[list[FloatArray]] | None:
        """Covariance of each equation's residual, per segment, on ``rows``.

        ``r = ε_p - Σ_j θ_j ε_j``: the left-hand derivative error ``ε_p`` (covariance from the
        preprocessor: ``W R Wᵀ`` for differences, the posterior covariance for spline / Kalman /
        GP), plus the errors of the noisy regressors — measured levels (white, variance by the
        median difference estimator) and estimated lower derivatives (their covariance from the
        preprocessor). Cross-covariances between ``ε_p`` and a level's noise vanish for symmetric
        estimators (odd-derivative weights are antisymmetric) and are neglected; those between
        two derivative estimates are neglected too. Cross-equation blocks are zero.
        """
        from derivreg.diagnostics import robust_noise_variance

        pre = getattr(self, "preprocessor_", None)
        if pre is None:
            return None
        cols = list(pre.data_.columns)
        out: list[list[FloatArray]] = []
        start = 0
        for eq in self.spec.equations:
            th = theta[start : start + len(eq.terms)]
            start += len(eq.terms)
            per_seg = []
            for i, pos in enumerate(self.data.segments):
                keep = np.isin(pos, rows)
                t_seg = self.data.t[pos]
                try:
                    C = np.asarray(
                        pre.derivative_cov(eq.order, column=cols.index(eq.response), segment=i),
                        dtype=float,
                    ).copy()
                    for coef, term in zip(th, eq.terms, strict=True):
                        if term.kind != "state" or term.var is None or term.order is None:
                            continue
                        if term.order == 0:
                            r = robust_noise_variance(t_seg, self.column(term.var)[pos])
                            C[np.diag_indices_from(C)] += coef**2 * r
                        else:
                            Cj = pre.derivative_cov(
                                term.order, column=cols.index(term.var), segment=i
                            )
                            C += coef**2 * np.asarray(Cj, dtype=float)
                except (MethodNotAvailableError, NotImplementedError):
                    return None
                per_seg.append(C[np.ix_(keep, keep)])
            out.append(per_seg)
        return out

    def _misfit_check(
        self,
        X_b: list[FloatArray],
        resid_b: list[FloatArray],
        omega: list[list[FloatArray]],
    ) -> float:
        """Ratio of the residual sum of squares to what the estimate noise explains.

        Under the noise model ``E r̂ᵀr̂ = tr(P⊥Ω)``; a ratio far above 1 (beyond 4 null SDs,
        ``Var r̂ᵀr̂ ≈ 2 tr((P⊥Ω)²)``) means smoothing bias (the estimator cannot follow steps or
        kinks) or a misspecified relation, and the intervals do not cover: warn.
        """
        worst = 0.0
        for X, r, blocks in zip(X_b, resid_b, omega, strict=True):
            B = np.linalg.pinv(X.T @ X)
            expected = 0.0
            var = 0.0
            start = 0
            for C in blocks:
                Xs = X[start : start + len(C)]
                start += len(C)
                PC = C - Xs @ (B @ (Xs.T @ C))
                expected += float(np.trace(PC))
                var += 2.0 * float(np.sum(PC * PC.T))
            rss = float(r @ r)
            ratio = rss / expected if expected > 0 else np.inf
            worst = max(worst, ratio)
            if rss - expected > 4.0 * np.sqrt(var) and ratio > 1.5:
                warnings.warn(
                    f"the residuals are {ratio:.1f} times larger than the derivative-estimate "
                    "noise explains: smoothing bias (the estimator cannot follow steps or kinks) "
                    "or a misspecified relation; the gradient-form estimates are biased and the "
                    "intervals do not cover. Use method='integral' (or 'statespace')",
                    BiasWarning,
                    stacklevel=5,
                )
        return worst

    def _sandwich(self, X_b: list[FloatArray], omega: list[list[FloatArray]]) -> FloatArray:
        """``B Xᵀ Ω X B``, ``B = blockdiag((X_iᵀX_i)⁻¹)``, ``Ω`` block-diagonal by segment."""
        ks = [X.shape[1] for X in X_b]
        offs = np.cumsum([0, *ks])
        K = int(offs[-1])
        B = np.zeros((K, K))
        meat = np.zeros((K, K))
        for e, X in enumerate(X_b):
            B[offs[e] : offs[e + 1], offs[e] : offs[e + 1]] = np.linalg.pinv(X.T @ X)
            start = 0
            for C in omega[e]:
                Xs = X[start : start + len(C)]
                start += len(C)
                meat[offs[e] : offs[e + 1], offs[e] : offs[e + 1]] += Xs.T @ C @ Xs
        return B @ meat @ B

    # ------------------------------------------------------------------ errors in variables
    def _noise_var(self, key: tuple[str, int], values: FloatArray, se: Any) -> float:
        from derivreg.preprocess.differencing import noise_variance

        if se is not None and np.any(np.isfinite(se)):
            return float(np.nanmean(np.asarray(se) ** 2))
        v = []
        for pos in self.data.segments:
            y = values[pos]
            good = np.isfinite(y)
            if good.sum() >= 3:
                v.append(noise_variance(self.data.t[pos][good], y[good]))
        return float(np.mean(v)) if v else 0.0

    def _bias_check(
        self,
        theta: FloatArray,
        bse: FloatArray,
        X_b: list[FloatArray],
        rows: np.ndarray,
        values: dict[tuple[str, int], FloatArray],
        ses: dict[tuple[str, int], Any],
    ) -> None:
        """Warn when the errors-in-variables attenuation exceeds half a standard error."""
        start = 0
        cache: dict[tuple[str, int], float] = {}
        for eq, X in zip(self.spec.equations, X_b, strict=True):
            k = X.shape[1]
            nu = np.zeros(k)
            for j, term in enumerate(eq.terms):
                if term.kind in ("intercept", "exogenous"):
                    continue
                if term.var is not None and term.order is not None:
                    key = (term.var, term.order)
                    if key not in cache:
                        cache[key] = self._noise_var(key, values[key], ses.get(key))
                    nu[j] = cache[key]
                else:
                    col = np.full(self.data.nobs, np.nan)
                    col[rows] = X[:, j]
                    nu[j] = self._noise_var(("", -1), col, None)
            th = theta[start : start + k]
            se = bse[start : start + k]
            bias = -len(rows) * np.linalg.pinv(X.T @ X) @ (nu * th)
            bad = [
                (eq.terms[j].name, bias[j], se[j])
                for j in range(k)
                if se[j] > 0 and abs(bias[j]) > 0.5 * se[j]
            ]
            if bad:
                desc = ", ".join(f"{nm}: ~{b:.3g} (se {s:.3g})" for nm, b, s in bad)
                warnings.warn(
                    f"errors in variables: noisy regressors bias the gradient-form estimates "
                    f"toward zero by about {desc}; the intervals do not cover in this regime. "
                    "Use method='integral' (or 'statespace'), or a smoother derivative estimate",
                    BiasWarning,
                    stacklevel=4,
                )
            start += k
