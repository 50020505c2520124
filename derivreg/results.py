"""DiffRegResults: the estimated coefficients of a differential relation and everything around them.

Every model form (gradient, integral, arimax, state-space, ...) returns this one class, built from
the coefficient vector ``θ̂`` of ``x^(p)(t) = Σ_j θ_j g_j(t)``, its covariance, the term names and
the diagnostics of the fit. Inference is Wald/normal by default:
``z_j = θ̂_j / se_j``, ``p_j = 2 Φ(-|z_j|)``, interval ``θ̂_j ± z_{1-α/2} se_j``
(Student t with ``df_resid`` when ``use_t=True``).
"""

from __future__ import annotations

import html
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats

from derivreg._typing import FloatArray
from derivreg.diagnostics import Diagnostics
from derivreg.exceptions import ConvergenceWarning, DataError, MethodNotAvailableError
from derivreg.formula import ModelSpec, derivative_label

if TYPE_CHECKING:
    from derivreg.models.base import Model
    from derivreg.timebase import SampledData

__all__ = ["DiffRegResults"]


class DiffRegResults:
    """Results of fitting a differential relation.

    Parameters
    ----------
    params : array (k,)
        Coefficient estimates, in the order of ``names``.
    cov : array (k, k)
        Their covariance.
    names : list of str
        Term names (``"d(x)"``, ``"u"``, ``"sign(d(x))"``, ``"Intercept"``).
    model : Model, optional
        The model that produced the fit (gives the spec, data, input hold, time/segment args).
    spec, data : ModelSpec, SampledData, optional
        Needed when ``model`` is not given.
    equations : list of str, optional
        Equation label of every coefficient (systems: params get a (equation, term) MultiIndex).
    method : str
        Regression form, e.g. ``"integral"``.
    cov_type : str
        Covariance estimator used, e.g. ``"HAC"``.
    noise_model : str
        The noise model the method assumed (shown in the summary).
    nobs : int
        Number of observations used.
    resid, fittedvalues : array (n_kept,) or (n_kept, n_equations), optional
        On the kept rows of ``data``; placed on the caller's index (NaN elsewhere).
    resid_names : list of str, optional
        Names of the residual series (default: the left sides).
    nuisance : DataFrame, optional
        Nuisance parameters reported apart from the coefficients (e.g. initial conditions per
        segment; columns ``segment, term, estimate, se``).
    initial_conditions : dict, optional
        ``{segment position: {(state, order): value}}`` used by :meth:`simulate`.
    diagnostics : Diagnostics, optional
    warnings : list of str, optional
        Messages of warnings issued during the fit (also shown in the summary).
    info : dict, optional
        Method-specific details (derivative estimator, bandwidth, method chosen by "auto", ...).
    use_t, df_resid
        Student-t inference with ``df_resid`` degrees of freedom.
    """

    def __init__(
        self,
        params: Sequence[float] | FloatArray,
        cov: FloatArray,
        names: Sequence[str],
        *,
        model: Model | None = None,
        spec: ModelSpec | None = None,
        data: SampledData | None = None,
        equations: Sequence[str] | None = None,
        method: str = "",
        cov_type: str = "",
        noise_model: str = "",
        nobs: int | None = None,
        resid: FloatArray | None = None,
        fittedvalues: FloatArray | None = None,
        resid_names: Sequence[str] | None = None,
        nuisance: pd.DataFrame | None = None,
        initial_conditions: dict[int, dict[tuple[str, int], float]] | None = None,
        diagnostics: Diagnostics | None = None,
        warnings: Sequence[str] = (),
        info: dict[str, Any] | None = None,
        use_t: bool = False,
        df_resid: float | None = None,
    ) -> None:
        p = np.asarray(params, dtype=float).reshape(-1)
        c = np.asarray(cov, dtype=float)
        if c.shape != (p.size, p.size):
            raise DataError(f"cov has shape {c.shape}, expected {(p.size, p.size)}")
        if len(names) != p.size:
            raise DataError(f"{len(names)} names for {p.size} parameters")
        self.model = model
        self.spec: ModelSpec | None = spec if spec is not None else getattr(model, "spec", None)
        self.data: SampledData | None = data if data is not None else getattr(model, "data", None)
        eqs = list(equations) if equations is not None else None
        if eqs is not None and len(set(eqs)) > 1:
            index: pd.Index = pd.MultiIndex.from_arrays(
                [eqs, list(names)], names=["equation", "term"]
            )
        else:
            index = pd.Index(list(names), name="term")
        self._index = index
        self._equations = eqs
        self._params = p
        self._cov = c
        self.method = method
        self.cov_type = cov_type
        self.noise_model = noise_model
        self.nobs = int(nobs if nobs is not None else (self.data.nobs if self.data else 0))
        self._resid = resid
        self._fitted = fittedvalues
        self._resid_names = list(resid_names) if resid_names is not None else None
        self.nuisance = nuisance
        self.initial_conditions = initial_conditions
        self.diagnostics = diagnostics if diagnostics is not None else Diagnostics()
        self.warnings = list(warnings)
        self.info = dict(info or {})
        self.use_t = use_t
        self.df_resid = df_resid

    # ------------------------------------------------------------------ inference
    @property
    def params(self) -> pd.Series:
        """Coefficient estimates by term."""
        return pd.Series(self._params, index=self._index, name="estimate")

    @property
    def bse(self) -> pd.Series:
        """Standard errors by term."""
        return pd.Series(
            np.sqrt(np.clip(np.diag(self._cov), 0, None)), index=self._index, name="se"
        )

    @property
    def tvalues(self) -> pd.Series:
        """``estimate / se``."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return (self.params / self.bse).rename("t")

    def _sf(self, z: FloatArray) -> FloatArray:
        # module-level distribution functions: building a frozen scipy distribution costs ms
        if self.use_t and self.df_resid is not None:
            return stats.t.sf(z, self.df_resid)
        return stats.norm.sf(z)

    def _ppf(self, q: float) -> float:
        if self.use_t and self.df_resid is not None:
            return float(stats.t.ppf(q, self.df_resid))
        return float(stats.norm.ppf(q))

    @property
    def pvalues(self) -> pd.Series:
        """Two-sided p-values of ``θ_j = 0``."""
        return pd.Series(2 * self._sf(np.abs(self.tvalues.to_numpy())), index=self._index, name="p")

    def conf_int(self, alpha: float = 0.05) -> pd.DataFrame:
        """Confidence intervals ``θ̂ ± q_{1-α/2} se`` (columns ``lower``, ``upper``)."""
        if not 0 < alpha < 1:
            raise DataError(f"alpha must be in (0, 1), got {alpha}")
        q = self._ppf(1 - alpha / 2)
        se = self.bse.to_numpy()
        return pd.DataFrame(
            {"lower": self._params - q * se, "upper": self._params + q * se}, index=self._index
        )

    def cov_params(self) -> pd.DataFrame:
        """Covariance matrix of the coefficients."""
        return pd.DataFrame(self._cov, index=self._index, columns=self._index)

    # ------------------------------------------------------------ series on the caller's index
    def _on_caller(self, arr: FloatArray | None, what: str) -> Any:
        if arr is None:
            raise MethodNotAvailableError(f"method {self.method!r} does not provide {what}")
        a = np.asarray(arr, dtype=float)
        names = self._resid_names or (
            [eq.lhs for eq in self.spec.equations] if self.spec is not None else [what]
        )
        if self.data is None:
            return a
        full = self.data.to_caller(a)
        if self.data.index is None:
            return full
        if full.ndim == 1:
            return pd.Series(full, index=self.data.index, name=names[0])
        return pd.DataFrame(full, index=self.data.index, columns=names[: full.shape[1]])

    @property
    def resid(self) -> Any:
        """Residuals on the caller's index (NaN where the method has none)."""
        return self._on_caller(self._resid, "residuals")

    @property
    def fittedvalues(self) -> Any:
        """Fitted values of the regression's left side on the caller's index."""
        return self._on_caller(self._fitted, "fitted values")

    # ------------------------------------------------------------------ tables
    def to_frame(self, alpha: float = 0.05) -> pd.DataFrame:
        """Tidy table: term, estimate, se, t, p, lower, upper (+ equation for systems)."""
        ci = self.conf_int(alpha)
        out = pd.DataFrame(
            {
                "estimate": self._params,
                "se": self.bse.to_numpy(),
                "t": self.tvalues.to_numpy(),
                "p": self.pvalues.to_numpy(),
                "lower": ci["lower"].to_numpy(),
                "upper": ci["upper"].to_numpy(),
            }
        )
        if isinstance(self._index, pd.MultiIndex):
            out.insert(0, "term", list(self._index.get_level_values("term")))
            out.insert(0, "equation", list(self._index.get_level_values("equation")))
        else:
            out.insert(0, "term", list(self._index))
        return out

    def _header(self) -> list[tuple[str, str]]:
        eq = self.spec.describe() if self.spec is not None else ""
        rows = [("Equation" if "\n" not in eq else "Equations", eq)]
        rows += [
            ("Method", self.method),
            ("Noise model", self.noise_model or "-"),
            ("Covariance", self.cov_type),
            ("No. observations", str(self.nobs)),
        ]
        if self.data is not None and len(self.data.segments) > 1:
            rows.append(("No. segments", str(len(self.data.segments))))
        for k, v in self.info.items():
            if isinstance(v, (str, int, float)):
                rows.append((k, f"{v:.4g}" if isinstance(v, float) else str(v)))
        return rows

    def summary(self, alpha: float = 0.05) -> str:
        """A statsmodels-style text table: equation, method, noise model, covariance,
        coefficients with SEs and intervals, diagnostics and warnings."""
        width = 88
        lines = ["=" * width, "Differential relation results".center(width), "=" * width]
        header = self._header()
        w = max(22, *(len(k) + 2 for k, _ in header))
        for key, val in header:
            parts = val.split("\n")
            lines.append(f"{key + ':':<{w}}{parts[0]}")
            lines.extend(f"{'':<{w}}{p}" for p in parts[1:])
        lines.append("-" * width)
        stat = "t" if self.use_t and self.df_resid is not None else "z"
        lo, hi = f"[{alpha / 2:.3g}", f"{1 - alpha / 2:.3g}]"
        head = (
            f"{'':<26}{'coef':>11}{'std err':>11}{stat:>9}{'P>|' + stat + '|':>9}{lo:>11}{hi:>11}"
        )
        lines.append(head)
        lines.append("-" * width)
        tab = self.to_frame(alpha)
        last_eq = None
        for _, row in tab.iterrows():
            if "equation" in tab.columns and row["equation"] != last_eq:
                last_eq = row["equation"]
                lines.append(f"{last_eq}:")
            label = str(row["term"])
            label = label if len(label) <= 25 else label[:22] + "..."
            lines.append(
                f"{label:<26}{row['estimate']:>11.4g}{row['se']:>11.4g}{row['t']:>9.3f}"
                f"{row['p']:>9.3f}{row['lower']:>11.4g}{row['upper']:>11.4g}"
            )
        if self.nuisance is not None and len(self.nuisance):
            lines.append("-" * width)
            lines.append(f"Nuisance parameters: {len(self.nuisance)} (see .nuisance)")
        lines.append("-" * width)
        lines.append("Diagnostics")
        rows = self.diagnostics.rows()
        w = max(28, *(len(k) + 2 for k, _ in rows)) if rows else 28
        for key, val in rows:
            lines.append(f"  {key + ':':<{w}}{val}")
        if self.warnings:
            lines.append("-" * width)
            lines.append("Warnings")
            for i, w in enumerate(self.warnings, 1):
                lines.append(f"  [{i}] {w}")
        lines.append("=" * width)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        eq = self.spec.describe().replace("\n", "; ") if self.spec is not None else ""
        return f"<DiffRegResults {self.method}: {eq}, nobs={self.nobs}, cov_type={self.cov_type}>"

    def _repr_html_(self) -> str:
        head = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
            f"<td style='text-align:left'>{html.escape(v).replace(chr(10), '<br>')}</td></tr>"
            for k, v in self._header()
        )
        diag = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
            for k, v in self.diagnostics.rows()
        )
        warn = "".join(f"<li>{html.escape(w)}</li>" for w in self.warnings)
        table = self.to_frame().to_html(index=False, float_format=lambda v: f"{v:.4g}")
        return (
            "<div><h4>Differential relation results</h4>"
            f"<table>{head}</table>{table}<table>{diag}</table>"
            + (f"<p>Warnings:</p><ul>{warn}</ul>" if warn else "")
            + "</div>"
        )

    # ------------------------------------------------------------------ simulation
    def simulate(self, data: Any = None, *, rtol: float = 1e-7, atol: float = 1e-9) -> Any:
        """Integrate the fitted relation from the data's initial conditions (``solve_ivp``).

        Parameters
        ----------
        data : DataFrame, optional
            Inputs and initial states (default: the fitted data). Exogenous columns are
            interpolated between samples as the model's ``input_hold`` says.

        Returns
        -------
        DataFrame on the data's index with one column per state and its derivatives below the
        equation order (``x``, ``d(x)``), NaN on rows that were not used.

        Notes
        -----
        A ``sign()`` of the top state (Coulomb friction, ``kA x'' = u − kV x' − kS sign(x')``)
        is integrated as a stick-slip switch: at ``x' = 0`` the mechanism stays at rest while
        the drive cannot overcome the friction (``|u| ≤ kS``) and breaks away in the direction
        of the drive otherwise (:func:`_solve_switching`), as the exact simulator
        :func:`derivreg.simulate.motor` does.
        """
        return _simulate(self, data, rtol=rtol, atol=atol)

    def refine(self, **options: Any) -> DiffRegResults:
        """Refine this fit by trajectory (output-error) least squares, started from it.

        Minimises ``Σ (y_k − x̂(t_k; θ, x_0))²`` over the coefficients and the initial states by
        integrating the fitted relation (Gauss–Newton); efficient under measurement noise, also
        for relations nonlinear in the state. ``options`` are those of
        :class:`derivreg.models.trajectory.Trajectory` (``scale``, ``rtol``, ...) and
        ``cov_type``. Returns a new fit with ``method="trajectory"``.
        """
        from derivreg.models.trajectory import refine

        return refine(self, **options)

    def plot(self, *args: Any, **kwargs: Any) -> Any:
        """Plot the fit (needs :mod:`derivreg.plotting`)."""
        try:
            from derivreg import plotting  # type: ignore[attr-defined]
        except ImportError:
            raise MethodNotAvailableError(
                "plotting of fit results is not available in this version"
            ) from None
        fn = getattr(plotting, "plot_results", None)
        if fn is None:
            raise MethodNotAvailableError(
                "plotting of fit results is not available in this version"
            )
        return fn(self, *args, **kwargs)

    # ------------------------------------------------------------------ helpers
    def params_of(self, equation: str | None = None) -> pd.Series:
        """Coefficients of one equation, indexed by term."""
        if not isinstance(self._index, pd.MultiIndex):
            return self.params
        if equation is None:
            raise DataError("this is a system: name the equation")
        return self.params.xs(equation, level="equation")

    def state_label(self, var: str, order: int) -> str:
        return derivative_label(var, order)


def _input_function(t: FloatArray, u: FloatArray, hold: str) -> Any:
    """``f(s, order)``: the input (order 0) or its derivative between samples under ``hold``."""

    def f(s: float, order: int) -> float:
        if order == 0:
            if hold == "zoh":
                k = int(np.clip(np.searchsorted(t, s, side="right") - 1, 0, len(t) - 1))
                return float(u[k])
            return float(np.interp(s, t, u))
        if order == 1 and hold == "linear" and len(t) > 1:
            k = int(np.clip(np.searchsorted(t, s, side="right") - 1, 0, len(t) - 2))
            return float((u[k + 1] - u[k]) / (t[k + 1] - t[k]))
        return 0.0

    return f


def ode_rhs(
    spec: ModelSpec,
    theta: FloatArray,
    slots: dict[tuple[str, int], int],
    inputs: dict[str, Any],
) -> Any:
    """Right-hand side ``dz/dt`` of the fitted relation as a first-order ODE system.

    The state vector ``z`` holds every state and its derivatives below its equation order, at the
    positions ``slots[(var, k)]``; ``z_(var,k)' = z_(var,k+1)`` below the top order and the top
    derivative is the equation's right side ``Σ_j θ_j g_j`` evaluated on ``z`` and the inputs
    (``inputs[name](s, order)``, see :func:`_input_function`). Shared by :meth:`simulate` and the
    trajectory form.
    """
    eq_params: list[FloatArray] = []
    start = 0
    for eq in spec.equations:
        eq_params.append(np.asarray(theta[start : start + len(eq.terms)], dtype=float))
        start += len(eq.terms)
    chain = [(j, slots[(var, k + 1)]) for (var, k), j in slots.items() if k + 1 < spec.states[var]]
    rows = [slots[(eq.response, eq.order - 1)] for eq in spec.equations]

    def rhs(s: float, y: FloatArray) -> FloatArray:
        def value(var: str, order: int) -> float:
            if (var, order) in slots:
                return float(y[slots[(var, order)]])
            return inputs[var](s, order)

        dy = np.empty_like(y)
        for j, nxt in chain:
            dy[j] = y[nxt]
        for eq, th, row in zip(spec.equations, eq_params, rows, strict=True):
            dy[row] = float(eq.rhs(th, value))
        return dy

    return rhs


def _initial_state(t: FloatArray, y: FloatArray, order: int) -> list[float]:
    """``x(t0), x'(t0), ...`` from a local polynomial fit of the first samples."""
    if order == 1:
        m = min(len(t), 5)
        deg = 1
    else:
        m = min(len(t), max(2 * order + 3, 9))
        deg = min(order + 1, m - 1)
    c = np.polynomial.polynomial.polyfit(t[:m] - t[0], y[:m], deg)
    out = [float(c[0]) if order > 1 else float(y[0])]
    for k in range(1, order):
        out.append(float(c[k] * np.prod(np.arange(1, k + 1))) if k < len(c) else 0.0)
    return out


def _simulate(res: DiffRegResults, data: Any, rtol: float, atol: float) -> Any:

    from derivreg.timebase import prepare_data

    spec = res.spec
    if spec is None or res.data is None:
        raise MethodNotAvailableError("simulate() needs the model spec and data of the fit")
    model = res.model
    hold = getattr(model, "input_hold", "linear")
    use_ic = data is None and res.initial_conditions is not None
    if data is None:
        sd = res.data
    else:
        sd = prepare_data(
            data,
            spec.columns,
            time=getattr(model, "time", None),
            time_unit=getattr(model, "time_unit", "s"),
            segment=getattr(model, "segment", None),
            min_points=2,
        )
    params = res._params
    states = list(spec.states.items())
    slots: dict[tuple[str, int], int] = {}
    for var, p in states:
        for k in range(p):
            slots[(var, k)] = len(slots)
    out = np.full((sd.nobs, len(slots)), np.nan)
    for i, pos in enumerate(sd.segments):
        t = sd.t[pos]
        if len(t) < 2:
            continue
        inputs = {
            c: _input_function(t, sd.values[pos, sd.columns.index(c)], hold) for c in spec.exogenous
        }
        y0 = np.empty(len(slots))
        ic = res.initial_conditions.get(i) if use_ic and res.initial_conditions else None
        for var, p in states:
            est = _initial_state(t, sd.values[pos, sd.columns.index(var)], p)
            for k in range(p):
                key = (var, k)
                y0[slots[key]] = ic[key] if ic is not None and key in ic else est[k]

        rhs = ode_rhs(spec, params, slots, inputs)
        max_step = float(np.min(np.diff(t))) if hold == "zoh" else np.inf
        label = "" if sd.segment_labels[i] is None else f" (segment {sd.segment_labels[i]!r})"
        tops = [slots[(eq.response, eq.order - 1)] for eq in spec.equations]
        switch = _switching_slot(rhs, t, y0, tops)
        if switch is None:
            sol, why = _solve_guarded(rhs, t, y0, rtol=rtol, atol=atol, max_step=max_step)
        else:
            sol, why = _solve_switching(rhs, t, y0, switch, rtol=rtol, atol=atol, max_step=max_step)
        if sol is None:
            warnings.warn(
                f"simulate(){label}: {why}; the simulated path is NaN there",
                ConvergenceWarning,
                stacklevel=3,
            )
            continue
        n_ok = sol.y.shape[1]
        out[pos[:n_ok]] = sol.y.T
        if n_ok < len(t):
            warnings.warn(
                f"simulate(){label}: the fitted relation diverges at t={sol.t[-1]:.6g} "
                f"(|state| beyond {_BLOWUP:g} times the data scale); NaN after that",
                ConvergenceWarning,
                stacklevel=3,
            )
    cols = [derivative_label(v, k) for v, k in slots]
    full = sd.to_caller(out)
    if sd.index is None:
        return full
    return pd.DataFrame(full, index=sd.index, columns=cols)


#: a simulated state this many times larger than the data scale counts as divergence
_BLOWUP = 1e6


class _BudgetExceeded(Exception):
    pass


def _solve_guarded(
    rhs: Any, t: FloatArray, y0: FloatArray, *, rtol: float, atol: float, max_step: float
) -> tuple[Any, str]:
    """``solve_ivp`` that cannot hang: an evaluation budget and a divergence event.

    A fitted relation may be unstable (it then grows without bound) or chatter at a switching
    term such as ``sign(d(x))`` at rest; an unguarded adaptive solver can take minutes there.
    Returns ``(solution, "")`` (possibly ending early at divergence) or ``(None, reason)``.
    """
    from scipy.integrate import solve_ivp

    scale = 1.0 + float(np.max(np.abs(y0)))
    budget = 2000 + 150 * len(t)  # held inputs jump at every sample: steps get rejected there
    calls = [0]

    def counted(s: float, y: FloatArray) -> FloatArray:
        calls[0] += 1
        if calls[0] > budget:
            raise _BudgetExceeded
        return rhs(s, y)

    def blowup(s: float, y: FloatArray) -> float:
        return _BLOWUP * scale - float(np.max(np.abs(y)))

    blowup.terminal = True  # type: ignore[attr-defined]
    try:
        sol = solve_ivp(
            counted,
            (t[0], t[-1]),
            y0,
            t_eval=t,
            rtol=rtol,
            atol=atol,
            max_step=max_step,
            method="LSODA",
            events=blowup,
        )
    except _BudgetExceeded:
        return None, (
            f"the solver needed more than {budget} evaluations (a stiff, chattering or unstable "
            "fitted relation, e.g. sign() of a velocity at rest)"
        )
    if sol.status == -1:
        return None, f"the ODE solver failed ({sol.message})"
    return sol, ""


#: the magnitude standing in for "just above/below zero" when a switching term is evaluated
_TINY = float(np.finfo(float).tiny)


def _side(rhs: Any, s: float, y: FloatArray, w: int, sign: float) -> float:
    """``dw/dt`` evaluated with the switching state ``w`` at ``sign·0⁺`` (one side of the jump)."""
    yy = np.array(y, dtype=float)
    yy[w] = sign * _TINY
    return float(rhs(s, yy)[w])


def _switching_slot(rhs: Any, t: FloatArray, y0: FloatArray, tops: list[int]) -> int | None:
    """The state across whose zero the right side jumps (``sign(d(x))``: Coulomb friction).

    The top state ``w`` of an equation is a switching state when ``dw/dt`` at ``w = 0⁺`` and
    ``w = 0⁻`` differ (a ``sign(w)`` term with a non-zero coefficient), checked at the initial
    state with the inputs at the start, middle and end of the segment. Only one switching
    state is handled (a single mechanism); None when there is none or more than one.
    """
    found = []
    for w in tops:
        for s in (float(t[0]), float(t[len(t) // 2]), float(t[-1])):
            up, down = _side(rhs, s, y0, w, 1.0), _side(rhs, s, y0, w, -1.0)
            if (
                np.isfinite(up)
                and np.isfinite(down)
                and abs(up - down) > 1e-9 * (1.0 + abs(up) + abs(down))
            ):
                found.append(w)
                break
    return found[0] if len(found) == 1 else None


def _solve_switching(
    rhs: Any,
    t: FloatArray,
    y0: FloatArray,
    w: int,
    *,
    rtol: float,
    atol: float,
    max_step: float,
) -> tuple[Any, str]:
    """Integrate a relation with a ``sign(w)`` term as a stick-slip (Filippov) system.

    For ``w' = f(z) + c·sign(w)`` (e.g. ``kA v' = u − kV v − kS sign(v)``) the right side jumps
    at ``w = 0``. Let ``f⁺``, ``f⁻`` be ``w'`` just above and below zero. Then

    * **slip** (``w ≠ 0``, direction ``s``): the sign is held at ``s`` and the flow is smooth;
      the integration stops at the event ``w = 0``;
    * at ``w = 0``: if ``f⁺ ≤ 0 ≤ f⁻`` (static friction holds: ``|u − kV·0| ≤ kS``) the state
      **sticks**, ``w = 0`` and ``w' = 0`` (lower derivatives follow), until ``f⁺ > 0`` or
      ``f⁻ < 0`` (breakaway, an event on the inputs); otherwise it slips toward the side
      whose ``w'`` points away from zero.

    The mode is decided on the inputs a moment (``1e-9`` of the span) after the switching time,
    so that a held input's jump at a sample time is seen on its new side. Without this, an
    adaptive solver chatters around ``w = 0`` at rest and exhausts its budget.
    Returns ``(solution, "")`` (``sol.t``, ``sol.y`` on the sample times reached) or
    ``(None, reason)``.
    """
    from types import SimpleNamespace

    from scipy.integrate import solve_ivp

    t_end = float(t[-1])
    delta = 1e-9 * max(t_end - float(t[0]), 1e-300)
    scale = 1.0 + float(np.max(np.abs(y0)))
    budget = 2000 + 150 * len(t)
    calls = [0]
    out = np.full((len(y0), len(t)), np.nan)
    reached = 0

    def decide(s: float, y: FloatArray) -> int:
        if y[w] != 0.0:
            return 1 if y[w] > 0 else -1
        look = min(s + delta, t_end)
        up, down = _side(rhs, look, y, w, 1.0), _side(rhs, look, y, w, -1.0)
        if up <= 0.0 <= down:
            return 0
        if up > 0.0 and down >= 0.0:
            return 1
        if down < 0.0 and up <= 0.0:
            return -1
        return 1 if up + down >= 0.0 else -1  # repelling at rest: either way; the larger push

    def blowup(s: float, y: FloatArray) -> float:
        return _BLOWUP * scale - float(np.max(np.abs(y)))

    blowup.terminal = True  # type: ignore[attr-defined]

    def counted(f: Any) -> Any:
        def g(s: float, y: FloatArray) -> FloatArray:
            calls[0] += 1
            if calls[0] > budget:
                raise _BudgetExceeded
            return f(s, y)

        return g

    cur, z = float(t[0]), np.array(y0, dtype=float)
    mode = decide(cur, z)
    switches, max_switches = 0, 20 * len(t) + 100
    while True:
        if mode == 0:
            z[w] = 0.0

            def flow(s: float, y: FloatArray) -> FloatArray:
                yy = np.array(y, dtype=float)
                yy[w] = 0.0
                d = np.asarray(rhs(s, yy), dtype=float).copy()
                d[w] = 0.0
                return d

            def leave_up(s: float, y: FloatArray) -> float:
                return _side(rhs, s, y, w, 1.0)

            def leave_down(s: float, y: FloatArray) -> float:
                return -_side(rhs, s, y, w, -1.0)

            leave_up.terminal = leave_down.terminal = True  # type: ignore[attr-defined]
            leave_up.direction = leave_down.direction = 1.0  # type: ignore[attr-defined]
            events: list[Any] = [leave_up, leave_down, blowup]
        else:
            sgn = float(mode)

            def flow(s: float, y: FloatArray, sgn: float = sgn) -> FloatArray:
                yy = np.array(y, dtype=float)
                yy[w] = sgn * max(sgn * yy[w], _TINY)  # hold the sign through the last step
                return rhs(s, yy)

            def stop(s: float, y: FloatArray, sgn: float = sgn) -> float:
                return sgn * float(y[w])

            stop.terminal = True  # type: ignore[attr-defined]
            stop.direction = -1.0  # type: ignore[attr-defined]
            events = [stop, blowup]
        first = int(np.searchsorted(t, cur, side="left"))
        try:
            sol = solve_ivp(
                counted(flow),
                (cur, t_end),
                z,
                t_eval=t[first:],
                rtol=rtol,
                atol=atol,
                max_step=max_step,
                method="LSODA",
                events=events,
            )
        except _BudgetExceeded:
            return None, (
                f"the solver needed more than {budget} evaluations (a stiff or unstable fitted "
                "relation)"
            )
        if sol.status == -1:
            return None, f"the ODE solver failed ({sol.message})"
        n_new = len(sol.t)
        out[:, first : first + n_new] = sol.y
        reached = max(reached, first + n_new)
        if sol.status != 1:
            break
        hit = [k for k, te in enumerate(sol.t_events) if len(te)]
        if events[hit[0]] is blowup:  # diverged: the caller reports the early end
            break
        switches += 1
        if switches > max_switches:
            return None, f"the stick-slip switching did not settle ({switches} switches)"
        cur = float(sol.t_events[hit[0]][0])
        z = np.array(sol.y_events[hit[0]][0], dtype=float)
        if mode != 0:
            z[w] = 0.0
        new = decide(cur, z)
        if mode == 0 and new == 0:  # at the breakaway root itself: leave as the event says
            new = 1 if events[hit[0]] is events[0] else -1
        mode = new
        if cur >= t_end:
            break
    return SimpleNamespace(t=t[:reached], y=out[:, :reached]), ""
