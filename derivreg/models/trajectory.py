"""Trajectory refinement (output error): fit the integrated relation to the measured states.

For ``x^(p)(t) = Σ_j θ_j g_j(t)`` (one equation per state, all states observed) the model is

.. math::

    y_{v,k} = x_v(t_k; θ, z_0) + e_{v,k}, \\qquad e_{v,k} \\sim N(0, s_v^2) \\text{ white},

where ``x(t; θ, z_0)`` solves the relation from the initial state ``z_0 = (x, x', ...,
x^{(p-1)})(t_0)`` of each segment, with the inputs held or linear between samples
(``input_hold``). ``θ`` and every segment's ``z_0`` minimise ``Σ_v Σ_k (y_{v,k} - x_v(t_k))² /
s_v²`` (Gauss–Newton / trust-region least squares, :func:`scipy.optimize.least_squares`, with a
central-difference Jacobian), started from another estimate (the integral form by default).

Paths: a relation linear in the state is stepped exactly between samples with the matrix
exponential of :mod:`derivreg.discretize` (``z_{k+1} = Φ z_k + Γ0 w_k + Γ1 w_{k+1}``); any other
relation (``x:y``, ``I(x**2)``, ``sign(d(x))``) is integrated by
:meth:`DiffRegResults.simulate <derivreg.results.DiffRegResults.simulate>` (``solve_ivp``,
LSODA), the same integrator the results use.

``scale="log"`` fits ``log y`` instead (multiplicative, lognormal measurement error — the usual
model for population counts such as the lynx–hare pelts).

Covariance: ``"nonrobust"`` — ``ŝ² (JᵀJ)⁻¹`` of the weighted residuals (Gauss–Newton / inverse
Fisher information for Gaussian measurement noise), ``"sandwich"`` —
``(JᵀJ)⁻¹ Jᵀ diag(r²) J (JᵀJ)⁻¹ · N/(N-K)``. Both assume independent measurement errors; process
noise makes the residuals autocorrelated and the intervals too narrow (the fit warns with
:class:`~derivreg.exceptions.AutocorrelationWarning` when a Ljung–Box test on ``min(10, n/5)``
or on two lags rejects whiteness at p < 1e-3, Bonferroni-adjusted; use ``method="statespace"``
there). Measured over the 36 cells of ``benchmarks/recovery.py`` (R = 50 per cell): flagged in
every fit of the cells with process noise except the short coarse one (n = 60, |a|Δ = 0.5: 72%
of fits, coverage of the unflagged 0.79-0.86), in 0-2% of fits under measurement noise only.
On a short record an unflagged fit is therefore no proof of white errors: with process noise
possible, use ``method="statespace"``.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import scipy.optimize

from derivreg._typing import FloatArray
from derivreg.diagnostics import robust_noise_variance
from derivreg.discretize import discretize, unique_steps
from derivreg.exceptions import (
    AutocorrelationWarning,
    ConvergenceWarning,
    DataError,
    DerivregError,
    IdentificationError,
    NonFiniteError,
)
from derivreg.formula import derivative_label
from derivreg.models.base import Model
from derivreg.results import DiffRegResults, _initial_state, _input_function, ode_rhs

__all__ = ["Trajectory", "refine"]

#: Ljung–Box p-value below which the residuals are called autocorrelated
WHITENESS_P = 1e-3
_BIG = 1e3  # residual (in noise SDs) for a failed integration


def _whiteness(R: FloatArray, p_default: float, lags_default: int) -> tuple[float, int]:
    """Ljung–Box p-value of the output-error residuals, made more sensitive to short-lag
    correlation: the smallest of the default test (``min(10, n/5)`` lags) and the one on two lags
    over every observed state, Bonferroni-adjusted for the number of tests.

    Process noise makes output-error residuals an autoregression-like process (lag-one
    correlation ``≈ e^{aΔ}`` for the process part), which two lags detect with more power than
    ten on short records: recovery-grid cell 24 (n = 60, process and measurement noise) was
    flagged in 58% of fits by the ten-lag test and in 72% with both; under measurement noise
    only (cells 2, 7, 20, 23, 26) both flag 0-2%.
    """
    from derivreg.diagnostics import ljung_box

    best, lags = np.inf, lags_default
    m = 2 * R.shape[1]  # tests made
    for j in range(R.shape[1]):
        for h in (None, 2):
            _, p, used = ljung_box(R[:, j], h)
            if np.isfinite(p) and m * p < best:
                best, lags = m * p, used
    if not np.isfinite(best):
        return p_default, lags_default
    return float(min(best, 1.0)), int(lags)


class Trajectory(Model):
    """Output-error least squares over ``θ`` and the initial states (see the module docstring).

    Model: ``y_{v,k} = x_v(t_k; θ, z_0) + e_{v,k}`` with ``x`` the solution of
    ``x^(p) = Σ_j θ_j g_j`` from ``z_0`` per segment, ``e`` white with one variance per state.

    Options
    -------
    start : {"integral", "gradient"}, DiffRegResults, dict or Series
        Starting estimate: a form to fit first (default the integral form; the other form is tried
        if it fails), an earlier fit (its coefficients and, when present, initial conditions), or
        coefficients by term name.
    scale : {"linear", "log"}
        Residuals of ``y`` or of ``log y`` (lognormal measurement error; needs ``y > 0``).
    rtol, atol : float
        Tolerances of the ODE integration for relations nonlinear in the state (``atol`` relative
        to each state's range).
    max_nfev : int
        Residual evaluations allowed to the least-squares solver.

    Covariance types: ``"nonrobust"`` (default) and ``"sandwich"``. Measured coverage of the
    default (95% intervals, ``tests/test_models_trajectory.py``): logistic growth ``r = 0.8``,
    ``K = 10``, n = 40, τ = 0.2 (R = 300): 0.94 / 0.93; ``d(x) ~ x + u`` with measurement noise
    τ = 0.1, n = 200, Δ = 0.2 (R = 200): 0.93 / 0.965 / 0.94 (a, b, c), |bias| <= 0.06 SD. Under
    process noise the intervals are far too narrow (use ``"statespace"``).
    """

    method: ClassVar[str] = "trajectory"
    noise_model: ClassVar[str] = (
        "white measurement noise on every state (output error); no process noise"
    )
    cov_types: ClassVar[tuple[str, ...]] = ("nonrobust", "sandwich")
    default_cov_type: ClassVar[str] = "nonrobust"
    option_defaults: ClassVar[dict[str, Any]] = {
        "start": "integral",
        "scale": "linear",
        "rtol": 1e-9,
        "atol": 1e-10,
        "max_nfev": 200,
    }
    supports_systems: ClassVar[bool] = True
    supports_nonlinear: ClassVar[bool] = True

    def min_points(self) -> int:
        return max(self.spec.states.values()) + 3

    # ------------------------------------------------------------------ structure
    def _setup(self) -> None:
        spec = self.spec
        self.slots_: dict[tuple[str, int], int] = {}
        for var, p in spec.states.items():
            for k in range(p):
                self.slots_[(var, k)] = len(self.slots_)
        self.k_theta_ = len(spec.param_names)
        self.n_seg_ = len(self.data.segments)
        self.observed_ = [self.slots_[(v, 0)] for v in spec.states]
        exact = spec.linear and all(
            t.kind in ("intercept", "state") or all(k == 0 for _, k in t.variables)
            for eq in spec.equations
            for t in eq.terms
        )
        self.exact_ = exact
        if exact:
            self._setup_linear()

    def _setup_linear(self) -> None:
        """Exogenous regressors at the sample times and the unique steps, for the exact path."""
        spec = self.spec
        self.exog_: list[tuple[int, int]] = []  # (param position, column of w)
        holds: list[str] = []
        cols: list[Any] = []
        pos = 0
        for eq in spec.equations:
            for term in eq.terms:
                if term.kind != "state":
                    self.exog_.append((pos, len(cols)))
                    cols.append(term)
                    holds.append(self.input_hold if term.kind == "exogenous" else "zoh")
                pos += 1
        self.holds_ = holds
        self.W_: list[FloatArray] = []
        for _, p_, _t in self.data.iter_segments():
            vals = self.columns_dict(p_)
            W = np.column_stack(
                [np.broadcast_to(c.evaluate(vals, len(p_)), (len(p_),)) for c in cols]
            )
            if not np.all(np.isfinite(W)):
                raise NonFiniteError(
                    "the right-hand terms have NaN values; drop or fill those rows"
                )
            self.W_.append(W.reshape(len(p_), len(cols)))
        dts = np.concatenate([np.diff(t) for _, _, t in self.data.iter_segments()])
        self.steps_, inverse = unique_steps(np.concatenate([[0.0], np.cumsum(dts)]))
        self.step_idx_: list[np.ndarray] = []
        start = 0
        for pos_ in self.data.segments:
            self.step_idx_.append(inverse[start : start + len(pos_) - 1])
            start += len(pos_) - 1

    def _matrices(self, theta: FloatArray) -> tuple[FloatArray, FloatArray]:
        spec = self.spec
        ns = len(self.slots_)
        A = np.zeros((ns, ns))
        for (var, k), j in self.slots_.items():
            if k + 1 < spec.states[var]:
                A[j, self.slots_[(var, k + 1)]] = 1.0
        B = np.zeros((ns, len(self.holds_)))
        exog = dict(self.exog_)
        pos = 0
        for eq in spec.equations:
            row = self.slots_[(eq.response, eq.order - 1)]
            for term in eq.terms:
                if term.kind == "state":
                    A[row, self.slots_[(term.var, term.order)]] += theta[pos]
                else:
                    B[row, exog[pos]] = theta[pos]
                pos += 1
        return A, B

    # ------------------------------------------------------------------ simulation
    def paths(self, theta: FloatArray, z0: FloatArray) -> FloatArray:
        """States ``(n, n_slots)`` on the kept rows for coefficients and initial states.

        Parameters
        ----------
        theta : array (k,)
            Coefficients in the order of ``spec.param_names``.
        z0 : array (n_segments, n_slots)
            Initial state of each segment (slots: each state and its derivatives below the
            equation order, in ``spec.states`` order).
        """
        if self.exact_:
            return self._paths_exact(theta, z0)
        return self._paths_ode(theta, z0)

    def _paths_exact(self, theta: FloatArray, z0: FloatArray) -> FloatArray:
        A, B = self._matrices(theta)
        ns = A.shape[0]
        disc = discretize(A, B, None, self.steps_, self.holds_)
        out = np.empty((self.data.nobs, ns))
        for i, pos in enumerate(self.data.segments):
            idx = self.step_idx_[i]
            W = self.W_[i]
            forcing = np.einsum("kij,kj->ki", disc.gamma0[idx], W[:-1]) + np.einsum(
                "kij,kj->ki", disc.gamma1[idx], W[1:]
            )
            z = np.empty((len(pos), ns))
            z[0] = z0[i]
            if ns == 1:
                from scipy.signal import lfilter

                phi = disc.phi[idx, 0, 0]
                if np.all(phi == phi[0]):
                    zi = np.array([phi[0] * z0[i, 0]])
                    z[1:, 0], _ = lfilter([1.0], [1.0, -phi[0]], forcing[:, 0], zi=zi)
                else:
                    for k in range(len(pos) - 1):
                        z[k + 1, 0] = phi[k] * z[k, 0] + forcing[k, 0]
            else:
                phis = disc.phi[idx]
                for k in range(len(pos) - 1):
                    z[k + 1] = phis[k] @ z[k] + forcing[k]
            out[pos] = z
        return out

    def _paths_ode(self, theta: FloatArray, z0: FloatArray) -> FloatArray:
        """``solve_ivp`` (LSODA) per segment, inputs as in :meth:`DiffRegResults.simulate`.

        The integration stops (NaN from there on) when a state leaves ``bound_`` — a trial
        coefficient far off makes e.g. Lotka–Volterra explode, and LSODA would crawl.
        """
        from scipy.integrate import solve_ivp

        spec = self.spec
        slots = self.slots_
        sd = self.data
        out = np.full((sd.nobs, len(slots)), np.nan)
        bound = self.bound_

        def blowup(_s: float, y: FloatArray, *_: Any) -> float:
            return bound - float(np.max(np.abs(y)))

        blowup.terminal = True  # type: ignore[attr-defined]
        for i, (_, pos, t) in enumerate(sd.iter_segments()):
            inputs = {
                c: _input_function(t, sd.values[pos, sd.columns.index(c)], self.input_hold)
                for c in spec.exogenous
            }

            rhs = ode_rhs(spec, theta, slots, inputs)
            max_step = float(np.min(np.diff(t))) if self.input_hold == "zoh" and inputs else np.inf
            with np.errstate(all="ignore"):
                sol = solve_ivp(
                    rhs,
                    (t[0], t[-1]),
                    z0[i],
                    t_eval=t,
                    rtol=self.options["rtol"],
                    atol=self._atol,
                    max_step=max_step,
                    method="LSODA",
                    events=blowup,
                )
            m = sol.y.shape[1]
            out[pos[:m]] = sol.y.T
        return out

    # ------------------------------------------------------------------ fit
    def _start(self) -> tuple[FloatArray, FloatArray, str]:
        """Starting coefficients, initial states (n_seg, n_slots) and a note on their source."""
        start = self.options["start"]
        names = self.spec.param_names
        res: DiffRegResults | None = None
        note = ""
        if isinstance(start, DiffRegResults):
            res, note = start, f"{start.method} fit passed in"
        elif isinstance(start, str):
            if start not in ("integral", "gradient"):
                raise DataError(f"start must be 'integral', 'gradient' or a fit, got {start!r}")

            order = [start, "gradient" if start == "integral" else "integral"]
            errors = []
            for form in order:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        res = self.with_form(form).fit()
                    note = f"{form} fit"
                    break
                except DerivregError as exc:
                    errors.append(f"{form}: {exc}")
            if res is None:
                raise DataError("no starting estimate could be fitted: " + "; ".join(errors))
        if res is not None:
            theta = np.asarray(res._params, dtype=float)
            if theta.size != len(names):
                raise DataError(
                    f"the starting fit has {theta.size} coefficients, the relation {len(names)}"
                )
        else:
            given = pd.Series(start) if isinstance(start, dict) else start
            if not isinstance(given, pd.Series):
                raise DataError(
                    "start must be 'integral', 'gradient', a DiffRegResults, or coefficients "
                    "by term name (dict or Series)"
                )
            missing = [n for n in names if n not in given.index]
            if missing or self.spec.is_system:
                if self.spec.is_system:
                    raise DataError(
                        "for a system pass start= as a fit (DiffRegResults) or a form name"
                    )
                raise DataError(f"start lacks coefficients for {missing}")
            theta = given[names].to_numpy(dtype=float)
            note = "coefficients passed in"
        if not np.all(np.isfinite(theta)):
            raise DataError("the starting coefficients are not finite")
        # initial states: from the data's first samples, or the start's own (integral: from its
        # initial-condition terms, which can be far off); the caller keeps the better fitting one
        z_data = np.empty((self.n_seg_, len(self.slots_)))
        z_fit = z_data.copy()
        ic = getattr(res, "initial_conditions", None) if res is not None else None
        same_data = res is not None and res.data is not None and res.data.nobs == self.data.nobs
        for i, (_, pos, t) in enumerate(self.data.iter_segments()):
            for var, p in self.spec.states.items():
                est = _initial_state(t, self.column(var)[pos], p)
                for k in range(p):
                    j = self.slots_[(var, k)]
                    z_data[i, j] = z_fit[i, j] = est[k]
                    if same_data and ic is not None and i in ic and (var, k) in ic[i]:
                        cand = float(ic[i][(var, k)])
                        z_fit[i, j] = cand if np.isfinite(cand) else est[k]
        return theta, np.stack([z_data, z_fit]), note

    def _fit(self, cov_type: str, **kwargs: Any) -> DiffRegResults:
        if kwargs:
            raise DataError(f"unknown fit option(s) {sorted(kwargs)} for Trajectory")
        scale = self.options["scale"]
        if scale not in ("linear", "log"):
            raise DataError(f"scale must be 'linear' or 'log', got {scale!r}")
        self._setup()
        sd = self.data
        states = list(self.spec.states)
        Y = np.column_stack([self.column(v) for v in states])
        if scale == "log":
            if np.any(Y <= 0):
                raise DataError("scale='log' needs positive observations of every state")
            Yt = np.log(Y)
        else:
            Yt = Y
        span = np.ptp(Y, axis=0)
        big = float(np.max(np.where(span > 0, span, 1.0)))
        self._atol = float(self.options["atol"]) * big
        self.bound_ = 1e3 * (big + float(np.max(np.abs(Y))))
        theta0, z_cands, start_note = self._start()
        k = self.k_theta_
        ns = len(self.slots_)

        # noise scale of each state (weights); re-estimated from the residuals below
        s = np.empty(len(states))
        for j in range(len(states)):
            v = [robust_noise_variance(t, Yt[pos, j]) for _, pos, t in sd.iter_segments()]
            s[j] = np.sqrt(np.mean(v))
            if not s[j] > 0:
                s[j] = max(float(np.std(np.diff(Yt[:, j]))), 1e-12)

        def predict(z: FloatArray) -> FloatArray:
            X = self.paths(z[:k], z[k:].reshape(self.n_seg_, ns))[:, self.observed_]
            if scale == "log":
                with np.errstate(divide="ignore", invalid="ignore"):
                    X = np.where(X > 0, np.log(np.where(X > 0, X, 1.0)), np.nan)
            return X

        def residuals(z: FloatArray, s: FloatArray) -> FloatArray:
            R = (Yt - predict(z)) / s
            R = np.where(np.isfinite(R), R, _BIG)
            return R.ravel()

        cands = [np.concatenate([theta0, zc.ravel()]) for zc in z_cands]
        costs = [float(np.sum(residuals(c, s) ** 2)) for c in cands]
        x0 = cands[int(np.argmin(costs))]
        x_scale = np.maximum(np.abs(x0), 1e-3 * np.maximum(np.abs(x0).max(), 1.0))
        fit = None
        for _ in range(3 if len(states) > 1 else 1):
            fit = scipy.optimize.least_squares(
                residuals,
                x0 if fit is None else fit.x,
                jac="3-point",
                diff_step=1e-5,
                x_scale=x_scale,
                method="trf",
                max_nfev=int(self.options["max_nfev"]),
                args=(s,),
            )
            if len(states) == 1:
                break
            # one noise SD per state: refit while the weights move by more than 5%
            s_new = np.sqrt(np.nanmean((Yt - predict(fit.x)) ** 2, axis=0))
            if np.allclose(s_new, s, rtol=0.05):
                break
            s = s_new
        assert fit is not None
        z = fit.x
        pred = predict(z)
        R = (Yt - pred) / s
        if not np.all(np.isfinite(R)):
            raise NonFiniteError(
                "the fitted relation could not be integrated over the data (it blows up or "
                "leaves the positive range); try another start"
            )
        J = np.asarray(fit.jac, dtype=float)
        r = R.ravel()
        N, K = r.size, z.size
        if N <= K:
            raise IdentificationError(f"{N} observations for {K} parameters")
        JtJ = J.T @ J
        ev = np.linalg.eigvalsh(JtJ)
        if ev.min() <= 1e-12 * ev.max():
            raise IdentificationError(
                "the trajectory does not identify every coefficient and initial state (singular "
                "Jacobian): check excitation and the terms"
            )
        bread = np.linalg.inv(JtJ)
        s2 = float(r @ r) / (N - K)
        if cov_type == "sandwich":
            meat = (J * (r**2)[:, None]).T @ J
            cov = bread @ meat @ bread * N / (N - K)
        else:
            cov = s2 * bread
        if not fit.success or fit.status == 0:
            warnings.warn(
                f"trajectory least squares did not converge: {fit.message}",
                ConvergenceWarning,
                stacklevel=2,
            )
        theta = z[:k]
        z0 = z[k:].reshape(self.n_seg_, ns)
        se = np.sqrt(np.clip(np.diag(cov), 0, None))
        labels = sd.segment_labels
        nuis, ic = [], {}
        inv_slots = {j: key for key, j in self.slots_.items()}
        for i in range(self.n_seg_):
            ic[i] = {inv_slots[j]: float(z0[i, j]) for j in range(ns)}
            for j in range(ns):
                var, order = inv_slots[j]
                nuis.append(
                    {
                        "segment": labels[i],
                        "term": f"initial {derivative_label(var, order)}",
                        "estimate": float(z0[i, j]),
                        "se": float(se[k + i * ns + j]),
                    }
                )
        for j, v in enumerate(states):
            nuis.append(
                {
                    "segment": None,
                    "term": f"measurement noise SD of {'log ' if scale == 'log' else ''}{v}",
                    "estimate": float(s[j] * np.sqrt(s2)),
                    "se": np.nan,
                }
            )
        paths = self.paths(theta, z0)
        fitted = paths[:, self.observed_]
        resid = Y - fitted
        diag = self.diagnose(J[:, :k], R[:, 0], extra={"trajectory RMS (weighted)": np.sqrt(s2)})
        lb_p, lb_lags = _whiteness(R, diag.ljung_box_pvalue, diag.ljung_box_lags)
        if lb_p < WHITENESS_P:
            warnings.warn(
                f"the trajectory residuals are autocorrelated (Ljung-Box p = {lb_p:.2g} over "
                f"{lb_lags} lags, Bonferroni-adjusted): the output-error intervals assume white "
                "measurement noise only, so they are too narrow under process noise or model "
                "error; use method='statespace' (process + measurement noise) for a linear "
                "relation",
                AutocorrelationWarning,
                stacklevel=2,
            )
        info: dict[str, Any] = {
            "start": start_note,
            "integration": "exact (matrix exponential)" if self.exact_ else "solve_ivp (LSODA)",
            "scale": scale,
            "nfev": int(fit.nfev),
            "converged": bool(fit.success),
        }
        multi = len(states) > 1
        return self.make_results(
            theta,
            cov[:k, :k],
            cov_type=cov_type,
            nobs=sd.nobs,
            resid=resid if multi else resid[:, 0],
            fittedvalues=fitted if multi else fitted[:, 0],
            resid_names=states,
            nuisance=pd.DataFrame(nuis),
            initial_conditions=ic,
            diagnostics=diag,
            info=info,
            df_resid=float(N - K),
        )


def refine(results: DiffRegResults, **options: Any) -> DiffRegResults:
    """Refine a fit by trajectory (output-error) least squares, started from it.

    Parameters
    ----------
    results : DiffRegResults
        A fit by any form (its coefficients and initial conditions are the start).
    **options
        Options of :class:`Trajectory` (``scale``, ``rtol``, ...) and ``cov_type``.

    Returns
    -------
    DiffRegResults
        ``method="trajectory"``; ``info["start"]`` names the form refined.
    """
    model = results.model
    if model is None:
        raise DataError("refine() needs the results of a model fit (results.model is None)")
    cov_type = options.pop("cov_type", None)
    return model.with_form(Trajectory, start=results, **options).fit(cov_type=cov_type)
