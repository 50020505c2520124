"""The Model base class shared by every regression form (gradient, integral, arimax, ...).

All forms estimate the same continuous-time coefficients ``θ`` of

.. math:: x^{(p)}(t) = \\sum_j \\theta_j g_j(t),

named by right-hand term, and return a :class:`~derivreg.results.DiffRegResults`.

How to add a model form
-----------------------
1. Create ``derivreg/models/<form>.py`` with a subclass of :class:`Model` and register it in
   ``derivreg.api.MODELS`` (``"name": "derivreg.models.<form>:Class"``) and in
   ``derivreg/models/__init__.py``.
2. Set the class attributes: ``method`` (registry name), ``noise_model`` (text for the summary,
   e.g. ``"measurement noise (white)"``), ``cov_types`` and ``default_cov_type`` (the default must
   give intervals that cover — say the measured coverage in the class docstring),
   ``option_defaults`` (every keyword option the form accepts, with its default: unknown options
   raise :class:`DataError`), and where relevant ``supports_systems``, ``supports_nonlinear``,
   ``requires_regular``, ``handles_missing``, ``blas_threads`` (BLAS threads during ``_fit``,
   default 1).
3. Implement ``_fit(self, cov_type, **kw) -> DiffRegResults``. Everything is prepared by
   ``__init__``:

   * ``self.spec`` — the parsed :class:`~derivreg.formula.ModelSpec` (equations, terms with their
     kind, ``Term.evaluate``/``Equation.design`` on any arrays, ``param_names``,
     ``param_equations``);
   * ``self.data`` — the validated :class:`~derivreg.timebase.SampledData` of ``spec.columns``
     (float time ``t``, ``values``, ``segments``, ``to_caller``);
   * ``self.options`` — the options merged over ``option_defaults``;
   * ``self.input_hold`` — ``"zoh"`` or ``"linear"``;
   * helpers: :meth:`column`, :meth:`columns_dict`, :meth:`check_design`,
     :meth:`diagnose`, :meth:`make_results`.

   Build the result with ``self.make_results(params, cov, cov_type=..., resid=..., ...)``: it fills
   names, equations, method and noise model from the class and the spec. ``params``/``cov`` are
   in the order of ``spec.param_names``. Pass ``resid``/``fittedvalues`` on the kept rows
   (``(n,)`` or ``(n, n_equations)``), ``nuisance`` (DataFrame of nuisance parameters such as
   initial conditions), ``initial_conditions`` (``{segment: {(state, order): value}}`` for
   ``simulate``), ``diagnostics`` (from :meth:`diagnose`) and ``info`` (method details).
4. Warnings issued inside ``_fit`` (any :class:`DerivregWarning`) are recorded in
   ``results.warnings`` and shown in the summary by :meth:`fit`.
"""

from __future__ import annotations

import abc
import warnings
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from derivreg._threads import blas_limit
from derivreg._typing import FloatArray, NanPolicy
from derivreg.diagnostics import (
    HOLD_CHECK_ALPHA,
    STEADY_STATE_WARN,
    Diagnostics,
    check_identification,
    condition_number,
    ljung_box,
    steady_state_share,
)
from derivreg.exceptions import (
    BiasWarning,
    DataError,
    DerivregWarning,
    ExcitationWarning,
    MethodNotAvailableError,
)
from derivreg.formula import ModelSpec, parse_formula
from derivreg.results import DiffRegResults
from derivreg.timebase import SampledData, prepare_data, require_regular

__all__ = ["INPUT_HOLDS", "Model", "resolve_preprocessor"]

INPUT_HOLDS = ("zoh", "linear")


def resolve_preprocessor(method: Any, options: dict[str, Any] | None = None) -> tuple[Any, str]:
    """A derivative preprocessor for a model, and a note on what was used.

    ``"auto"`` is :class:`~derivreg.preprocess.auto.AutoDerivative` with
    ``target="regressor"`` unless the options say otherwise.
    """
    from derivreg.preprocess import get_preprocessor

    opts = dict(options or {})
    if method == "auto":
        # derivatives as regressors/responses: smoothing tuned for the fit, not the derivative's
        # own RMSE (see derivreg.preprocess.auto)
        opts.setdefault("target", "regressor")
    pre = get_preprocessor(method, **opts)
    return pre, repr(pre)


class Model(abc.ABC):
    """Base class of the regression forms of ``x^(p) = Σ_j θ_j g_j`` (see the module docstring).

    Parameters
    ----------
    formula : str, list of str or dict
        ``"d(x) ~ x + u"``; several equations as a list or ``{name: formula}``.
    data : DataFrame, Series or ndarray
        Samples in rows, indexed by time (numeric, ``DatetimeIndex``, ``TimedeltaIndex``) or with
        a ``time=`` column.
    time, time_unit, segment, nan_policy
        See :func:`derivreg.timebase.prepare_data`. ``segment`` marks independent experiments:
        coefficients are shared, nothing is differenced or integrated across a boundary.
    input_hold : {"linear", "zoh"}
        How inputs behave between their samples: linear, or held (zero-order hold).
    **options
        Form-specific options (see the subclass's ``option_defaults``).
    """

    method: ClassVar[str] = ""
    noise_model: ClassVar[str] = ""
    cov_types: ClassVar[tuple[str, ...]] = ("nonrobust",)
    default_cov_type: ClassVar[str] = "nonrobust"
    option_defaults: ClassVar[dict[str, Any]] = {}
    supports_systems: ClassVar[bool] = True
    supports_nonlinear: ClassVar[bool] = True
    requires_regular: ClassVar[bool] = False
    handles_missing: ClassVar[bool] = False
    #: BLAS threads while fitting (1: the dense linear algebra here is small, and multithreaded
    #: BLAS on a loaded machine was measured 250x slower for a 300x300 Cholesky); None = no limit
    blas_threads: ClassVar[int | None] = 1

    def __init__(
        self,
        formula: str | list[str] | dict[str, str],
        data: pd.DataFrame | pd.Series | np.ndarray,
        time: Any = None,
        time_unit: str = "s",
        segment: Any = None,
        input_hold: str = "linear",
        nan_policy: NanPolicy = "raise",
        **options: Any,
    ) -> None:
        unknown = sorted(set(options) - set(self.option_defaults))
        if unknown:
            valid = sorted(self.option_defaults) or "none"
            raise DataError(
                f"{type(self).__name__} has no option(s) {unknown}; valid options: {valid}"
            )
        if input_hold not in INPUT_HOLDS:
            raise DataError(f"input_hold must be one of {INPUT_HOLDS}, got {input_hold!r}")
        self.formula = formula
        self.spec: ModelSpec = parse_formula(formula)
        if self.spec.is_system and not self.supports_systems:
            raise MethodNotAvailableError(
                f"method={self.method!r} fits one equation at a time; fit the equations separately "
                "or use method='gradient' or 'integral' for a joint fit"
            )
        if not self.spec.linear and not self.supports_nonlinear:
            bad = [t.name for eq in self.spec.equations for t in eq.terms if t.kind == "nonlinear"]
            raise MethodNotAvailableError(
                f"method={self.method!r} does not handle terms nonlinear in the state {bad}; use "
                "method='integral' or 'gradient'"
            )
        if isinstance(data, pd.DataFrame):
            self.spec.validate(data.columns)
        elif isinstance(data, pd.Series):
            self.spec.validate([data.name if data.name is not None else "x"])
        self.raw_data = data
        self.time = time
        self.time_unit = time_unit
        self.segment = segment
        self.input_hold = input_hold
        self.nan_policy = nan_policy
        self.options: dict[str, Any] = {**self.option_defaults, **options}
        self.data: SampledData = prepare_data(
            data,
            self.spec.columns,
            time=time,
            time_unit=time_unit,
            segment=segment,
            nan_policy=nan_policy,
            min_points=self.min_points(),
            allow_missing=self.handles_missing,
            what=f"data for {type(self).__name__}",
        )
        if self.requires_regular:
            for label, _, t in self.data.iter_segments():
                where = "" if label is None else f" (segment {label!r})"
                require_regular(t, f"method={self.method!r}{where}")

    # ------------------------------------------------------------------ to implement
    @abc.abstractmethod
    def _fit(self, cov_type: str, **kwargs: Any) -> DiffRegResults:
        """Estimate and return the results (see the module docstring)."""

    def min_points(self) -> int:
        """Fewest samples per segment the form accepts."""
        return 3

    # ------------------------------------------------------------------ public
    def fit(self, cov_type: str | None = None, **kwargs: Any) -> DiffRegResults:
        """Fit the relation.

        Parameters
        ----------
        cov_type : str, optional
            One of the class's ``cov_types``; default ``default_cov_type`` (the one whose
            intervals were checked to cover).
        **kwargs
            Passed to the form's ``_fit`` (e.g. ``maxlags`` for HAC, ``n_boot`` for bootstrap).
        """
        cov_type = self.default_cov_type if cov_type is None else cov_type
        if cov_type not in self.cov_types:
            raise DataError(
                f"cov_type={cov_type!r} is not available for method={self.method!r}; "
                f"choose one of {list(self.cov_types)}"
            )
        with warnings.catch_warnings(record=True) as caught, blas_limit(self.blas_threads):
            warnings.simplefilter("always")
            res = self._fit(cov_type, **kwargs)
        for w in caught:
            if issubclass(w.category, DerivregWarning):
                msg = str(w.message)
                if msg not in res.warnings:
                    res.warnings.append(msg)
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return res

    # ------------------------------------------------------------------ helpers for subclasses
    def with_form(self, method: str | type[Model], **options: Any) -> Model:
        """The same relation and data (time, segments, input hold, NaN policy) in another form.

        ``method`` is a registered name (``"integral"``, ...) or a model class; ``options`` are
        that form's options. Used where one form starts from or chooses another (auto,
        trajectory refinement).
        """
        if isinstance(method, str):
            from derivreg.api import get_model_class

            cls = get_model_class(method)
        else:
            cls = method
        return cls(
            self.formula,
            self.raw_data,
            time=self.time,
            time_unit=self.time_unit,
            segment=self.segment,
            input_hold=self.input_hold,
            nan_policy=self.nan_policy,
            **options,
        )

    def column(self, name: str) -> FloatArray:
        """Values of a data column on the kept rows."""
        return self.data.column(name)

    def columns_dict(
        self, positions: np.ndarray | None = None
    ) -> dict[tuple[str, int], FloatArray]:
        """``{(column, 0): values}`` for every column the relation reads (optionally some rows)."""
        sd = self.data
        rows = slice(None) if positions is None else positions
        return {(c, 0): sd.values[rows, j] for j, c in enumerate(sd.columns)}

    def check_design(
        self, X: FloatArray, names: list[str], allow_constant: tuple[str, ...] = ()
    ) -> None:
        """Raise :class:`IdentificationError` for constant or collinear design columns."""
        check_identification(X, names, allow_constant=("Intercept", *allow_constant))

    def report_input_timing(
        self, stat: float, pval: float, dof: int, extra: dict[str, Any]
    ) -> float:
        """Summary line and BiasWarning for :func:`~derivreg.diagnostics.input_hold_check`.

        Returns the p-value (NaN when the inputs never change).
        """
        if not np.isfinite(pval):
            return pval
        other = "zoh" if self.input_hold == "linear" else "linear"
        extra["Input hold check"] = f"chi2({dof}) = {stat:.3g}, p = {pval:.2g}"
        if pval < HOLD_CHECK_ALPHA:
            warnings.warn(
                f"the one-step innovations follow the inputs' changes between samples (chi2("
                f"{dof}) = {stat:.3g}, p = {pval:.2g}): the inputs do not act on the response as "
                "the model assumes, and every coefficient is biased. Either they do not behave as "
                f"input_hold={self.input_hold!r} assumes between samples (refit with "
                f"input_hold={other!r}; held: a logged set-point, steps, a square wave), or the "
                "response lags them by a dead time the relation lacks (shift the input column); "
                "compare the log-likelihoods",
                BiasWarning,
                stacklevel=5,
            )
        return pval

    def diagnose(
        self,
        X: FloatArray | list[FloatArray],
        resid: FloatArray,
        highest: FloatArray | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Diagnostics:
        """Diagnostics of a fit; warns :class:`ExcitationWarning` on long steady-state stretches.

        Parameters
        ----------
        X : design used for the estimate, or one per equation (conditioning: the worst).
        resid : residuals on the kept rows (Ljung–Box).
        highest : estimate of the left-hand derivative on the kept rows (steady-state share).
        """
        Xs = list(X) if isinstance(X, (list, tuple)) else [X]
        r = np.asarray(resid, dtype=float)
        r = r[:, 0] if r.ndim == 2 else r
        q, pval, lags = ljung_box(r)
        share = float("nan")
        if highest is not None:
            ex = [c for c in self.spec.exogenous]
            U = np.column_stack([self.column(c) for c in ex]) if ex else None
            share = steady_state_share(
                np.asarray(highest, dtype=float), U, self.data.segments, t=self.data.t
            )
            if np.isfinite(share) and share > STEADY_STATE_WARN:
                warnings.warn(
                    f"{share:.0%} of the samples are at steady state (inputs constant, "
                    f"{self.spec.equations[0].lhs} ~ 0): they add noise but no information about "
                    "the dynamics, which dilutes the estimate; shorten the constant-input holds, "
                    "add more transients (steps, ramps, reversals), or drop the steady-state "
                    "stretches",
                    ExcitationWarning,
                    stacklevel=3,
                )
        return Diagnostics(
            ljung_box_stat=q,
            ljung_box_pvalue=pval,
            ljung_box_lags=lags,
            condition_number=max(condition_number(x) for x in Xs),
            steady_state_share=share,
            extra=dict(extra or {}),
        )

    def make_results(self, params: FloatArray, cov: FloatArray, **kwargs: Any) -> DiffRegResults:
        """A :class:`DiffRegResults` with names, equations, method and noise model filled in."""
        kwargs.setdefault("method", self.method)
        kwargs.setdefault("noise_model", self.noise_model)
        kwargs.setdefault("nobs", self.data.nobs)
        return DiffRegResults(
            params,
            cov,
            self.spec.param_names,
            model=self,
            equations=self.spec.param_equations,
            **kwargs,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec.describe()!r}, nobs={self.data.nobs})"
