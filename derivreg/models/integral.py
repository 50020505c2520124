"""Integrated form (integral matching): integrate the relation p times per segment, regress.

For ``x^(p)(t) = Σ_j θ_j g_j(t)``, integrating ``p`` times from the first sample ``t_0`` of a
segment (Cauchy's formula) gives

.. math:: x(t) = \\sum_{i<p} c_i \\frac{(t-t_0)^i}{i!} + \\sum_j \\theta_j (I^p g_j)(t),

with ``I^p`` the p-fold cumulative integral. A right-hand derivative of a state integrates to a
lower integral of the measured state, ``I^p x^{(k)} = I^{p-k} x`` minus a polynomial of degree
``< p`` that the initial-condition terms ``c_i`` absorb — so no numerical derivative is taken.
Inputs are integrated exactly under ``input_hold`` (held or piecewise linear between samples,
:func:`~derivreg.preprocess.integrated.integrate_input`); measured states by Simpson's rule
(``rule=``). Terms nonlinear in the state (``x:y``, ``sign(d(x))``) are evaluated on the measured
states and, for derivatives inside them, on a smoothed derivative estimate (``derivative=``), then
integrated. The ``c_i`` are nuisance parameters, one set per segment (``results.nuisance``).
``window=`` restarts the integrals every ``window`` time units (windowed variant: more nuisance
terms, errors that do not accumulate).

Error model and covariance
--------------------------
With measured states ``y_v = x_v + e_v`` (white, variance ``τ_v²``) and process noise ``σ dW`` on
``x^(p)``, the residual of the integrated equation is, to first order,

.. math:: r = \\sum_v A_v e_v + \\sigma\\, I^{p-1} W,\\qquad
          A_v = 1[v = x] I - \\sum_j \\theta_j \\, I^{p-k_j} \\text{ (or } I^p \\mathrm{diag}
          (\\partial g_j / \\partial v) \\text{ for a nonlinear term)},

so ``Ω = Σ_v τ_v² A_v A_vᵀ + σ² K`` with ``K`` the covariance of ``I^{p-1}W``. ``τ_v²`` is
estimated from the data by a median (MAD) version of the Gasser–Sroka–Jennen-Steinmetz
difference estimator, ``σ²`` by
moments from the OLS residuals (``E r̂ᵀr̂ = tr(P⊥Ω)``). The default ``cov_type="GLS"`` is feasible
GLS with this ``Ω`` (two iterations); ``"sandwich"`` keeps the OLS estimate with covariance
``(XᵀX)⁻¹ XᵀΩX (XᵀX)⁻¹``; ``"nonrobust"`` and ``"HAC"`` are for contrast (OLS SEs are far too small:
the residuals are integrated noise). Measured coverage is recorded in
``tests/test_models_integral.py``.
"""

from __future__ import annotations

import warnings
from math import factorial
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from derivreg._typing import FloatArray
from derivreg.covariance import system_cov
from derivreg.diagnostics import robust_noise_variance
from derivreg.exceptions import (
    BiasWarning,
    DataError,
    MethodNotAvailableError,
    TooFewPointsError,
)
from derivreg.formula import Equation, Term
from derivreg.models.base import Model, resolve_preprocessor
from derivreg.results import DiffRegResults

__all__ = ["IntegralOLS"]


def _integrate(t: FloatArray, y: FloatArray, order: int, rule: str) -> FloatArray:
    from derivreg.preprocess.integrated import cumulative_integral

    return cumulative_integral(t, y, order, rule)  # type: ignore[arg-type]


def _integrate_input(t: FloatArray, u: FloatArray, order: int, hold: str) -> FloatArray:
    from derivreg.preprocess.integrated import integrate_input

    return integrate_input(t, u, order, hold)  # type: ignore[arg-type]


def _trapezoid_matrix(t: FloatArray) -> FloatArray:
    """Matrix ``J`` of the cumulative trapezoid rule on ``t``: ``(J y)_i = ∫_{t_0}^{t_i} y``."""
    h = np.diff(t)
    n = len(t)
    J = np.zeros((n, n))
    if n < 2:
        return J
    # row i: h_0/2, (h_0+h_1)/2, ..., (h_{i-2}+h_{i-1})/2, h_{i-1}/2, 0 ...
    full = np.zeros(n)
    full[0] = h[0] / 2
    full[1:-1] = (h[:-1] + h[1:]) / 2
    J[:, :] = np.tril(np.broadcast_to(full, (n, n)), k=-1)
    idx = np.arange(1, n)
    J[idx, idx] = h / 2
    return J


class IntegralOLS(Model):
    """Integral matching: regress the measured state on p-fold integrals of the regressors.

    Model (per segment or window starting at ``t_0``):
    ``y(t) = Σ_{i<p} c_i (t-t_0)^i/i! + Σ_j θ_j (I^p g_j)(t) + r(t)``,
    ``r`` integrated measurement and process noise (see the module docstring).

    Options
    -------
    rule : {"simpson", "trapezoid"}
        Quadrature for measured states (inputs are always integrated exactly).
    window : float or None
        Restart the integrals every ``window`` time units (each window gets its own
        initial-condition terms).
    derivative : str or Preprocessor
        Estimator of derivatives used inside nonlinear terms (``sign(d(x))``); default ``"auto"``.
    derivative_options : dict
        Options of that estimator.
    noise : {"auto", "measurement", "process"}
        Error components in ``Ω``: both (default; process noise kept only when the residuals
        exceed the measurement part by 3 null SDs), measurement only, process only.
    eiv_correction : bool
        Correct the least-squares estimate for the measurement noise inside the integrated
        states (default True; measured on the motor: bias 0.47 SD -> 0.15 SD).

    Covariance types: ``"sandwich"`` (default), ``"GLS"``, ``"nonrobust"``, ``"HAC"``.
    Measured coverage of the default (95% intervals):

    * first order, measurement noise τ = 0.05, n = 300: 0.93 / 0.96 / 0.96 (Intercept, a, b),
      |bias| <= 0.1 SD (300 replications);
    * motor, position only, τ = 0.002, Δ = 0.02, four tests as segments: 0.98 / 0.98 / 0.97,
      |bias| <= 0.06 SD (100 replications);
    * process noise σ = 0.3 (τ = 0.05): about 0.90, a biased by 0.3 SD — the fit warns.

    ``"GLS"`` covered the first-order case (0.94 / 0.97 / 0.96) but on the motor amplified small
    model errors (sign of the velocity at segment starts, quadrature) to 5-8 SE biases, so it is
    not the default.
    """

    method: ClassVar[str] = "integral"
    noise_model: ClassVar[str] = (
        "white measurement noise (variance from the data) + process noise (moment estimate)"
    )
    cov_types: ClassVar[tuple[str, ...]] = ("GLS", "sandwich", "nonrobust", "HAC")
    default_cov_type: ClassVar[str] = "sandwich"
    option_defaults: ClassVar[dict[str, Any]] = {
        "rule": "simpson",
        "window": None,
        "derivative": "auto",
        "derivative_options": None,
        "noise": "auto",
        "eiv_correction": True,
    }

    def min_points(self) -> int:
        return max(self.spec.states.values()) + 3

    # ------------------------------------------------------------------ blocks
    def _blocks(self) -> list[tuple[int, np.ndarray]]:
        """(segment number, positions) of each integration block (segments or windows)."""
        window = self.options["window"]
        out: list[tuple[int, np.ndarray]] = []
        p_max = max(self.spec.states.values())
        for i, pos in enumerate(self.data.segments):
            if window is None:
                out.append((i, pos))
                continue
            if not window > 0:
                raise DataError(f"window must be a positive length of time, got {window!r}")
            t = self.data.t[pos]
            edges = np.floor((t - t[0]) / float(window)).astype(int)
            for w in np.unique(edges):
                sub = pos[edges == w]
                if len(sub) >= p_max + 3:
                    out.append((i, sub))
            if not out or out[-1][0] != i:
                raise TooFewPointsError(
                    f"window={window} leaves fewer than {p_max + 3} samples per window"
                )
        return out

    # ------------------------------------------------------------------ values
    def _values(self) -> dict[tuple[str, int], FloatArray]:
        values = self.columns_dict()
        # derivatives inside any term: nonlinear terms need them for the fit, the others only
        # for the steady-state diagnostic (the right side evaluated on smoothed derivatives)
        need = {
            (v, k) for eq in self.spec.equations for t in eq.terms for v, k in t.variables if k >= 1
        }
        if need:
            pre, self.derivative_note_ = resolve_preprocessor(
                self.options["derivative"], self.options.get("derivative_options")
            )
            sd = self.data
            cols = sorted({v for v, _ in need})
            codes = np.empty(sd.nobs, dtype=np.intp)
            for i, pos in enumerate(sd.segments):
                codes[pos] = i
            X = np.column_stack([sd.column(c) for c in cols])
            pre.fit(X, columns=cols, time=sd.t, segment=codes if len(sd.segments) > 1 else None)
            for order in sorted({k for _, k in need}):
                est, _ = pre.derivative_arrays(order)
                for v, k in need:
                    if k == order:
                        col = est[:, cols.index(v)]
                        if np.isnan(col).any():
                            col = pd.Series(col).interpolate(limit_direction="both").to_numpy()
                        if k == 1:
                            col = self._repair_signs(v, col)
                        values[(v, k)] = col
        return values

    def _repair_signs(self, v: str, est: FloatArray) -> FloatArray:
        """Fix the sign of a smoothed velocity where the data's displacement contradicts it.

        Smoothers misjudge the direction of motion near segment edges (e.g. a start from rest,
        where the spline's boundary behaviour gives a velocity of the wrong sign). For each sample
        the secant ``(x_{k+j} - x_{k-j}) / (t_{k+j} - t_{k-j})`` over the shortest span whose
        displacement exceeds ``4·√2`` measurement-noise SDs has a reliable sign; where it
        disagrees with the smoother, the secant replaces the estimate. Only terms that use the
        derivative inside a nonlinear function (``sign(d(x))``) see this.
        """
        out = est.copy()
        x_all = self.column(v)
        for pos in self.data.segments:
            t = self.data.t[pos]
            x = x_all[pos]
            n = len(x)
            if n < 3:
                continue
            thr = 4.0 * np.sqrt(2.0 * robust_noise_variance(t, x))
            slope = np.full(n, np.nan)
            idx = np.arange(n)
            todo = np.ones(n, dtype=bool)
            for j in range(1, max(n // 4, 2)):
                hi = np.minimum(idx + j, n - 1)
                lo = np.maximum(idx - j, 0)
                dx = x[hi] - x[lo]
                hit = todo & (np.abs(dx) > thr)
                slope[hit] = dx[hit] / (t[hi[hit]] - t[lo[hit]])
                todo &= ~hit
                if not todo.any():
                    break
            e = out[pos]
            flip = np.isfinite(slope) & (np.sign(e) != np.sign(slope))
            e[flip] = slope[flip]
            out[pos] = e
        return out

    def _term_column(
        self, eq: Equation, term: Term, t: FloatArray, pos: np.ndarray, values: dict
    ) -> FloatArray:
        p = eq.order
        rule = self.options["rule"]
        if term.kind == "intercept":
            return (t - t[0]) ** p / factorial(p)
        if term.var is not None and term.order is not None:
            k = term.order
            if k > p:
                raise MethodNotAvailableError(
                    f"{term.name} on the right of {eq.formula!r}: the integral form integrates "
                    f"{p} times and cannot remove a derivative of order {k}; use "
                    "method='gradient'"
                )
            y = values[(term.var, 0)][pos]
            if term.kind == "state":
                return _integrate(t, y, p - k, rule)
            return _integrate_input(t, y, p - k, self.input_hold)
        g = np.broadcast_to(term.evaluate(values, self.data.nobs), (self.data.nobs,))[pos]
        if term.kind == "exogenous":
            return _integrate_input(t, g, p, self.input_hold)
        rough = any(k >= 1 for _, k in term.variables)
        return _integrate(t, g, p, "trapezoid" if rough else rule)

    # ------------------------------------------------------------------ fit
    def _fit(self, cov_type: str, **kwargs: Any) -> DiffRegResults:
        if kwargs:
            raise DataError(f"unknown fit option(s) {sorted(kwargs)} for IntegralOLS")
        if self.options["rule"] not in ("simpson", "trapezoid"):
            raise DataError(f"rule must be 'simpson' or 'trapezoid', got {self.options['rule']!r}")
        if self.options["noise"] not in ("auto", "measurement", "process"):
            raise DataError(
                f"noise must be 'auto', 'measurement' or 'process', got {self.options['noise']!r}"
            )
        sd = self.data
        blocks = self._blocks()
        values = self._values()
        eqs = self.spec.equations
        n = sd.nobs
        rows = np.concatenate([pos for _, pos in blocks])
        nb = len(blocks)
        X_eq, y_eq, names_eq = [], [], []
        for eq in eqs:
            p = eq.order
            k = len(eq.terms)
            X = np.zeros((len(rows), k + p * nb))
            start = 0
            for b, (_, pos) in enumerate(blocks):
                t = sd.t[pos]
                sl = slice(start, start + len(pos))
                for j, term in enumerate(eq.terms):
                    X[sl, j] = self._term_column(eq, term, t, pos, values)
                for i in range(p):
                    X[sl, k + b * p + i] = (t - t[0]) ** i / factorial(i)
                start += len(pos)
            ic_names = [
                f"initial-condition term (t-t0)^{i} of "
                + (f"segment {sd.segment_labels[seg]!r}" if len(sd.segments) > 1 else "the data")
                + (f", window {b}" if self.options["window"] is not None else "")
                for b, (seg, _) in enumerate(blocks)
                for i in range(p)
            ]
            names = eq.term_names + ic_names
            self.check_design(X, names, allow_constant=tuple(ic_names))
            X_eq.append(X)
            y_eq.append(values[(eq.response, 0)][rows])
            names_eq.append(names)
        betas = [np.linalg.lstsq(X, y, rcond=None)[0] for X, y in zip(X_eq, y_eq, strict=True)]
        details: dict[str, Any] = {}
        if cov_type in ("nonrobust", "HAC"):
            resid_b = [y - X @ b for X, y, b in zip(X_eq, y_eq, betas, strict=True)]
            bounds = np.cumsum([0, *[len(pos) for _, pos in blocks]])
            segs = [np.arange(bounds[i], bounds[i + 1]) for i in range(nb)]
            cov, details = system_cov(X_eq, resid_b, cov_type, segments=segs)
        else:
            betas, cov, details = self._gls(cov_type, blocks, values, X_eq, y_eq, betas)
        # assemble
        theta_idx, ic_idx = [], []
        off = 0
        for eq, X in zip(eqs, X_eq, strict=True):
            k = len(eq.terms)
            theta_idx += list(range(off, off + k))
            ic_idx.append(list(range(off + k, off + X.shape[1])))
            off += X.shape[1]
        beta_all = np.concatenate(betas)
        theta = beta_all[theta_idx]
        cov_theta = cov[np.ix_(theta_idx, theta_idx)]
        se_all = np.sqrt(np.clip(np.diag(cov), 0, None))
        nuis = []
        labels = sd.segment_labels
        for e, eq in enumerate(eqs):
            for b, (seg, pos) in enumerate(blocks):
                for i in range(eq.order):
                    j = ic_idx[e][b * eq.order + i]
                    nuis.append(
                        {
                            "equation": eq.name,
                            "segment": labels[seg],
                            "block": b,
                            "t0": float(sd.t[pos[0]]),
                            "term": f"(t-t0)^{i}/{i}!" if i else "1",
                            "estimate": float(beta_all[j]),
                            "se": float(se_all[j]),
                        }
                    )
        resid = np.full((n, len(eqs)), np.nan)
        fitted = np.full((n, len(eqs)), np.nan)
        for e, (X, y, b) in enumerate(zip(X_eq, y_eq, betas, strict=True)):
            fitted[rows, e] = X @ b
            resid[rows, e] = y - X @ b
        highest = np.full(n, np.nan)
        highest[rows] = np.asarray(eqs[0].rhs(theta[: len(eqs[0].terms)], values, n))[rows]
        extra = {k: v for k, v in details.items() if not isinstance(v, dict)}
        if getattr(self, "derivative_note_", None):
            extra["derivative (nonlinear terms)"] = self.derivative_note_
        diag = self.diagnose(X_eq, resid[rows, 0], highest=highest, extra=extra)
        ic = (
            None
            if self.options["window"] is not None
            else self._initial_conditions(theta, beta_all, ic_idx, blocks)
        )
        info = {k: v for k, v in details.items() if isinstance(v, (int, float, str))}
        if self.options["window"] is not None:
            info["window"] = self.options["window"]
        return self.make_results(
            theta,
            cov_theta,
            cov_type=cov_type,
            nobs=len(rows),
            resid=resid[:, 0] if len(eqs) == 1 else resid,
            fittedvalues=fitted[:, 0] if len(eqs) == 1 else fitted,
            resid_names=[eq.response for eq in eqs],
            nuisance=pd.DataFrame(nuis),
            initial_conditions=ic,
            diagnostics=diag,
            info=info,
        )

    # ------------------------------------------------------------------ covariance
    def _noise_variances(self) -> dict[tuple[str, int], float]:
        """Measurement-noise variance of every state, per segment (GSJS difference estimator)."""
        out: dict[tuple[str, int], float] = {}
        for v in self.spec.states:
            y = self.column(v)
            for i, pos in enumerate(self.data.segments):
                out[(v, i)] = robust_noise_variance(self.data.t[pos], y[pos])
        return out

    def _operators(
        self, eq: Equation, t: FloatArray, pos: np.ndarray, values: dict
    ) -> dict[str, list[tuple[int, FloatArray]]]:
        """Noise operators ``N_jv``: term ``j``'s integrated response to state ``v``'s noise.

        ``A_v = 1[v = response] I - Σ_j θ_j N_jv``; the ``N_jv`` do not depend on ``θ``.
        """
        cache: dict[int, FloatArray] = {}

        def J(m: int) -> FloatArray:
            if m not in cache:
                cache[m] = _trapezoid_matrix(t) if m == 1 else J(1) @ J(m - 1)
            return cache[m]

        out: dict[str, list[tuple[int, FloatArray]]] = {}
        for v in self.spec.states:
            ops: list[tuple[int, FloatArray]] = []
            for j, term in enumerate(eq.terms):
                if term.kind == "state" and term.var == v:
                    ops.append((j, J(eq.order - term.order)))  # type: ignore[operator]
                elif term.kind == "nonlinear" and (v, 0) in term.variables:
                    base = values[(v, 0)]
                    h = 1e-6 * max(float(np.max(np.abs(base[pos]))), 1.0)
                    up = {**values, (v, 0): base + h}
                    dn = {**values, (v, 0): base - h}
                    n = self.data.nobs
                    dg = (term.evaluate(up, n) - term.evaluate(dn, n))[pos] / (2 * h)
                    if np.any(dg != 0):
                        ops.append((j, J(eq.order) * dg[None, :]))
            if v == eq.response or ops:
                out[v] = ops
        return out

    def _process_K(self, eq: Equation, t: FloatArray) -> FloatArray:
        """Covariance of ``I^{p-1} W`` (Wiener process from ``t_0``); closed form for p <= 2."""
        s = t - t[0]
        lo = np.minimum.outer(s, s)
        if eq.order == 1:
            return lo
        hi = np.maximum.outer(s, s)
        if eq.order == 2:
            return lo**2 * hi / 2 - lo**3 / 6
        J = _trapezoid_matrix(t)
        Jm = np.linalg.matrix_power(J, eq.order - 1)
        return Jm @ lo @ Jm.T

    def _gls(
        self,
        cov_type: str,
        blocks: list[tuple[int, np.ndarray]],
        values: dict,
        X_eq: list[FloatArray],
        y_eq: list[FloatArray],
        betas: list[FloatArray],
    ) -> tuple[list[FloatArray], FloatArray, dict[str, Any]]:
        from scipy.linalg import solve_triangular

        eqs = self.spec.equations
        m = len(eqs)
        mode = self.options["noise"]
        self._warned_process = False
        tau2 = self._noise_variances()
        if mode == "process":
            tau2 = {k: 0.0 for k in tau2}
        ks = [X.shape[1] for X in X_eq]
        offs = np.cumsum([0, *ks])
        K_tot = int(offs[-1])
        bounds = np.cumsum([0, *[len(pos) for _, pos in blocks]])
        # θ-independent pieces per block: noise operators, their products, process covariances
        prepared = []
        for seg, pos in blocks:
            t = self.data.t[pos]
            ops = [self._operators(eq, t, pos, values) for eq in eqs]
            prods: dict[tuple[int, int, str, int, int], FloatArray] = {}
            for i in range(m):
                for jj in range(i, m):
                    for v in set(ops[i]) & set(ops[jj]):
                        for a, Na in ops[i][v]:
                            for b, Nb in ops[jj][v]:
                                prods[(i, jj, v, a, b)] = Na @ Nb.T
            procs = [self._process_K(eq, t) for eq in eqs] if mode != "measurement" else None
            prepared.append((seg, len(pos), ops, prods, procs))

        def omega_meas(b: int, thetas: list[FloatArray]) -> FloatArray:
            seg, nbk, ops, prods, _ = prepared[b]
            Om = np.zeros((m * nbk, m * nbk))
            eye = np.eye(nbk)
            for i in range(m):
                for jj in range(i, m):
                    blk = np.zeros((nbk, nbk))
                    for v in set(ops[i]) & set(ops[jj]):
                        tv = tau2[(v, seg)]
                        if tv == 0:
                            continue
                        # A_i A_j^T with A = δ I - Σ θ N
                        part = eye.copy() if (v == eqs[i].response and v == eqs[jj].response) else 0
                        part = part if isinstance(part, np.ndarray) else np.zeros((nbk, nbk))
                        if v == eqs[jj].response:
                            for a, Na in ops[i][v]:
                                part -= thetas[i][a] * Na
                        if v == eqs[i].response:
                            for b2, Nb in ops[jj][v]:
                                part -= thetas[jj][b2] * Nb.T
                        for a, _ in ops[i][v]:
                            for b2, _ in ops[jj][v]:
                                part += thetas[i][a] * thetas[jj][b2] * prods[(i, jj, v, a, b2)]
                        blk += tv * part
                    Om[i * nbk : (i + 1) * nbk, jj * nbk : (jj + 1) * nbk] = blk
                    if i != jj:
                        Om[jj * nbk : (jj + 1) * nbk, i * nbk : (i + 1) * nbk] = blk.T
            return Om

        if self.options["eiv_correction"] and mode != "process":
            betas = self._corrected_ols(X_eq, y_eq, prepared, tau2)
            bread_mats = self._bread
        else:
            bread_mats = [np.linalg.pinv(X.T @ X) for X in X_eq]

        iterations = 2 if cov_type == "GLS" else 1
        sigma2 = np.zeros(m)
        cov = np.zeros((K_tot, K_tot))
        for _ in range(iterations):
            thetas = [betas[e][: len(eq.terms)] for e, eq in enumerate(eqs)]
            om_meas = [omega_meas(b, thetas) for b in range(len(blocks))]
            if mode != "measurement":
                sigma2 = self._process_variance(X_eq, y_eq, om_meas, prepared, bounds, mode)
            XtOiX = np.zeros((K_tot, K_tot))
            XtOiy = np.zeros(K_tot)
            meat = np.zeros((K_tot, K_tot))
            for b in range(len(blocks)):
                nbk = int(bounds[b + 1] - bounds[b])
                Om = om_meas[b]
                if mode != "measurement":
                    procs = prepared[b][4]
                    for e in range(m):
                        sl = slice(e * nbk, (e + 1) * nbk)
                        Om[sl, sl] += sigma2[e] * procs[e]
                Xb = np.zeros((m * nbk, K_tot))
                yb = np.zeros(m * nbk)
                for e in range(m):
                    Xb[e * nbk : (e + 1) * nbk, offs[e] : offs[e + 1]] = X_eq[e][
                        bounds[b] : bounds[b + 1]
                    ]
                    yb[e * nbk : (e + 1) * nbk] = y_eq[e][bounds[b] : bounds[b + 1]]
                if cov_type == "sandwich":
                    meat += Xb.T @ Om @ Xb
                    continue
                scale = float(np.mean(np.diag(Om))) or 1.0
                L = np.linalg.cholesky(Om / scale + 1e-10 * np.eye(len(Om)))
                Xw = solve_triangular(L, Xb, lower=True)
                yw = solve_triangular(L, yb, lower=True)
                XtOiX += Xw.T @ Xw / scale
                XtOiy += Xw.T @ yw / scale
            if cov_type == "sandwich":
                bread = np.zeros((K_tot, K_tot))
                for e in range(m):
                    bread[offs[e] : offs[e + 1], offs[e] : offs[e + 1]] = bread_mats[e]
                cov = bread @ meat @ bread
            else:
                cov = np.linalg.pinv(XtOiX)
                beta_all = cov @ XtOiy
                betas = [beta_all[offs[e] : offs[e + 1]] for e in range(m)]
        details: dict[str, Any] = {}
        nseg = len(self.data.segments)
        for v in self.spec.states:
            sd_v = float(np.sqrt(np.mean([tau2[(v, s)] for s in range(nseg)])))
            details[f"meas. noise SD {v}"] = sd_v
        if mode != "measurement":
            for e, eq in enumerate(eqs):
                details[f"process noise SD {eq.response}"] = float(np.sqrt(sigma2[e]))
        return betas, cov, details

    def _corrected_ols(
        self,
        X_eq: list[FloatArray],
        y_eq: list[FloatArray],
        prepared: list[Any],
        tau2: dict[tuple[str, int], float],
    ) -> list[FloatArray]:
        """Errors-in-variables corrected least squares (measurement noise in integrated states).

        With ``X_S = X₀ + E`` for the state columns (``E_a = N_a e``: integrated noise), the
        noise-free columns ``Z`` (inputs, intercept, initial-condition terms), ``M = I - P_Z`` and
        ``y = x + e``: ``E[X_SᵀM X_S] = X₀ᵀM X₀ + T`` and ``E[X_SᵀM y] = X₀ᵀM x + t`` with
        ``T_ab = Σ τ² tr(N_aᵀ M N_b)``, ``t_a = Σ τ² tr(M N_a)`` (the latter only through the
        response's own noise). Solving ``(XᵀX - T̃) β = Xᵀy - t̃`` (``T̃``, ``t̃``: ``T``, ``t`` in
        the state rows) is then consistent. Stores the bread ``(XᵀX - T̃)⁻¹`` for the sandwich.
        """
        eqs = self.spec.equations
        out = []
        self._bread = []
        for e, eq in enumerate(eqs):
            X, y = X_eq[e], y_eq[e]
            k = X.shape[1]
            noisy = sorted(
                {a for _, _, ops, _, _ in prepared for lst in ops[e].values() for a, _ in lst}
            )
            zcols = [j for j in range(k) if j not in noisy]
            Z = X[:, zcols]
            W = np.linalg.pinv(Z.T @ Z)
            T = np.zeros((k, k))
            tv = np.zeros(k)
            start = 0
            for seg, nbk, ops, _, _ in prepared:
                Zb = Z[start : start + nbk]
                start += nbk
                for v, lst in ops[e].items():
                    w = tau2[(v, seg)]
                    if w == 0:
                        continue
                    ZN = {a: Zb.T @ Na for a, Na in lst}  # (q, nbk)
                    for a, Na in lst:
                        if v == eq.response:
                            tv[a] += w * (float(np.trace(Na)) - float(np.sum(W * (ZN[a] @ Zb).T)))
                        for b, Nb in lst:
                            full = float(np.sum(Na * Nb))
                            proj = float(np.sum(W * (ZN[b] @ ZN[a].T).T))
                            T[a, b] += w * (full - proj)
            M = X.T @ X - T
            self._bread.append(np.linalg.pinv(M))
            out.append(self._bread[-1] @ (X.T @ y - tv))
        return out

    def _process_variance(
        self,
        X_eq: list[FloatArray],
        y_eq: list[FloatArray],
        om_meas: list[FloatArray],
        prepared: list[Any],
        bounds: np.ndarray,
        mode: str,
    ) -> FloatArray:
        """Process-noise variance per equation by moments from the OLS residuals.

        ``E r̂ᵀr̂ = tr(P⊥Ω_meas) + σ² tr(P⊥K)``; σ² is kept only when the excess over the
        measurement part is above 3 null SDs (``Var r̂ᵀr̂ = 2 tr((P⊥Ω)²)`` plus the uncertainty of
        the estimated noise variance), or ``noise="process"``.
        """
        m = len(X_eq)
        sigma2 = np.zeros(m)
        for e in range(m):
            X, y = X_eq[e], y_eq[e]
            B = np.linalg.pinv(X.T @ X)
            r = y - X @ (B @ (X.T @ y))
            tr_meas = tr_proc = tr_sq = 0.0
            for b in range(len(prepared)):
                nbk = int(bounds[b + 1] - bounds[b])
                Xb = X[bounds[b] : bounds[b + 1]]
                Om = om_meas[b][e * nbk : (e + 1) * nbk, e * nbk : (e + 1) * nbk]
                Kp = prepared[b][4][e]
                POm = Om - Xb @ (B @ (Xb.T @ Om))
                tr_meas += float(np.trace(POm))
                tr_sq += float(np.sum(POm * POm.T))
                tr_proc += float(np.trace(Kp) - np.trace(B @ (Xb.T @ Kp @ Xb)))
            excess = float(r @ r) - tr_meas
            # null SD of the excess: chi-square part plus the uncertainty of the MAD-based
            # noise variance (relative variance ~5.4/n: MAD has 37% Gaussian efficiency)
            null_sd = np.sqrt(2.0 * tr_sq + tr_meas**2 * 5.4 / max(len(y), 1))
            if tr_proc > 0 and (mode == "process" or excess > 3.0 * null_sd):
                sigma2[e] = max(excess / tr_proc, 0.0)
                if mode == "auto" and excess > 0.5 * float(r @ r) and not self._warned_process:
                    self._warned_process = True
                    warnings.warn(
                        f"process noise dominates the residuals of {self.spec.equations[e].lhs} "
                        f"({excess / float(r @ r):.0%} of the residual variance): the integrated "
                        "regressors carry the accumulated noise, so the integral form is biased "
                        "(measured ~0.3 SD, coverage ~0.90 on a first-order system); use "
                        "method='statespace' for process noise",
                        BiasWarning,
                        stacklevel=6,
                    )
        return sigma2

    # ------------------------------------------------------------------ initial conditions
    def _initial_conditions(
        self,
        theta: FloatArray,
        beta_all: FloatArray,
        ic_idx: list[list[int]],
        blocks: list[tuple[int, np.ndarray]],
    ) -> dict[int, dict[tuple[str, int], float]] | None:
        """``x^(i)(t_0)`` per segment from the ``c_i`` (undoing the absorbed polynomials)."""
        out: dict[int, dict[tuple[str, int], float]] = {}
        start = 0
        thetas = []
        for eq in self.spec.equations:
            thetas.append(theta[start : start + len(eq.terms)])
            start += len(eq.terms)
        for e, eq in enumerate(self.spec.equations):
            p = eq.order
            for term in eq.terms:
                if term.kind == "state" and term.var != eq.response:
                    return None
                if term.kind == "exogenous" and term.order and term.order > 0:
                    return None
            for b in range(len(blocks)):
                c = [beta_all[ic_idx[e][b * p + i]] for i in range(p)]
                x0: list[float] = []
                for i in range(p):
                    val = c[i]
                    for th, term in zip(thetas[e], eq.terms, strict=True):
                        if term.kind == "state" and term.order:
                            lag = p - term.order
                            if i >= lag:
                                val += th * x0[i - lag]
                    x0.append(float(val))
                out.setdefault(b, {}).update({(eq.response, i): x0[i] for i in range(p)})
        return out

    def __repr__(self) -> str:
        return f"IntegralOLS({self.spec.describe()!r}, nobs={self.data.nobs})"
