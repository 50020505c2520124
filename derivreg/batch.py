"""Fit one differential relation to many series: :func:`fit_many` and its backends.

For every group ``g`` of rows (one motor, patient, sensor or region) the same relation

    d^p x_g / dt^p = Σ_j θ_{g,j} f_j(t)          (for example  dx/dt = a x + b u + c)

is fitted on its own, by the same method, and the coefficients are stacked into one tidy table:
one row per group and term.

How the work is organised (throughput matters: users fit thousands of series):

* the formula is parsed and checked once, before any group is touched — an error in the formula
  raises at once instead of failing every group;
* the data are sorted by group once and cut into numpy arrays with group offsets; groups are shipped
  to workers in *chunks* (contiguous runs of groups), so the per-task overhead is paid per chunk,
  not per group;
* the process backend forks its workers after the split (Linux), so they read the arrays without
  copying them through pipes; elsewhere each chunk's arrays are sent with the task;
* every chunk runs with one BLAS thread (threadpoolctl): the workers are the parallelism, and a
  fixed thread count keeps results bit-identical across backends;
* two engines: ``"fit"`` calls :func:`derivreg.fit` per group (full diagnostics and warnings);
  ``"vectorized"`` solves the OLS forms with the OLS covariance for many equal-length groups in
  one set of array operations (same numbers; see :func:`fit_many`); ``"auto"`` picks it when the
  fit qualifies;
* a group that fails gives one row with ``status="error"`` and the message; the others are
  unaffected;
* the output order is deterministic: groups sorted by their key values (as
  ``DataFrame.groupby(by, sort=True, dropna=False)`` orders them, missing keys last), terms within a
  group in the model's order — whatever the backend, the number of workers or the completion order.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from derivreg._threads import blas_limit
from derivreg.exceptions import (
    ColumnNotFoundError,
    DataError,
    DerivregError,
    MethodNotAvailableError,
)

__all__ = [
    "BACKENDS",
    "ENGINES",
    "RESULT_COLUMNS",
    "BatchRun",
    "ChunkResult",
    "RichProgress",
    "fit_many",
    "group_codes",
    "normalize_table",
    "prepare_batch",
    "sort_table",
]

Backend = Literal["serial", "process", "dask"]
BACKENDS: tuple[str, ...] = ("serial", "process", "dask")

#: Columns of the table returned by :func:`fit_many` after the group-key columns.
RESULT_COLUMNS: tuple[str, ...] = (
    "term",
    "estimate",
    "se",
    "lower",
    "upper",
    "nobs",
    "method",
    "status",
    "error",
    "warning",
)
_FLOAT_COLUMNS = ("estimate", "se", "lower", "upper")
_TEXT_COLUMNS = ("term", "method", "status", "error", "warning")

#: Signature of a progress callback: ``progress(finished_groups, failed_groups, total_groups)``.
ProgressCallback = Callable[[int, int, int], None]


# --------------------------------------------------------------------------------------------
# the fitting specification (parsed once, shipped to every worker)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    """Everything a worker needs to fit one group, identical for all groups."""

    formula: Any
    method: str
    time: str | None
    time_unit: str
    segment: str | None
    input_hold: str
    options: dict[str, Any]
    columns: tuple[str, ...]
    index_name: Any
    vector: Any = None  # _Vector when the vectorised engine is used


def _check_method(method: str, options: dict[str, Any]) -> None:
    """Unknown or unavailable methods and unknown options raise once, up front."""
    from derivreg import api

    cls = api.get_model_class(method)
    known = getattr(cls, "option_defaults", None)
    if known is None:
        return
    unknown = sorted(set(options) - set(known) - {"cov_type", "nan_policy"})
    if unknown:
        raise DataError(
            f"method={method!r} has no option(s) {unknown}; valid options: {sorted(known)}"
        )


ENGINES: tuple[str, ...] = ("auto", "fit", "vectorized")


def _choose_engine(
    engine: str,
    df: pd.DataFrame,
    model_spec: Any,
    method: str,
    time: str | None,
    segment: str | None,
    input_hold: str,
    options: dict[str, Any],
) -> Any:
    if engine not in ENGINES:
        raise DataError(f"engine must be one of {list(ENGINES)}, got {engine!r}")
    if engine == "fit":
        return None
    vector, why = _vector_plan(model_spec, method, segment, input_hold, options)
    if vector is not None:
        when = df.index if time is None else df[time]
        if not pd.api.types.is_numeric_dtype(when) or pd.api.types.is_bool_dtype(when):
            vector, why = None, "the time is not numeric"
        elif any(
            not pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c])
            for c in model_spec.columns
        ):
            vector, why = None, "a column of the formula is not numeric"
    if vector is None and engine == "vectorized":
        raise MethodNotAvailableError(
            f"engine='vectorized' does not cover this fit ({why}); use engine='fit' or 'auto'"
        )
    return vector


def _parse(formula: Any) -> Any:
    """Parse the formula once; a bad formula raises :class:`FormulaError` here, not per group."""
    from derivreg.formula import parse_formula

    return parse_formula(formula)


# --------------------------------------------------------------------------------------------
# splitting the data into groups and chunks
# --------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    """The data sorted by group, as numpy arrays with group offsets."""

    keys: pd.DataFrame  # one row per group, in output order
    offsets: np.ndarray  # (ngroups + 1,) row offsets into the arrays
    arrays: dict[str, np.ndarray]
    index: np.ndarray | None

    @property
    def ngroups(self) -> int:
        return len(self.keys)


def _as_list(by: str | Sequence[str]) -> list[str]:
    if isinstance(by, str):
        return [by]
    by = list(by)
    if not by:
        raise DataError("by= must name at least one column")
    return by


def _one_blas_thread() -> Any:
    """Context manager limiting BLAS/OpenMP pools to one thread (cheap: see ``_threads``)."""
    return blas_limit(1)


def group_codes(frame: pd.DataFrame, by: Sequence[str]) -> np.ndarray:
    """Group number of every row, numbered in output order (sorted keys, missing keys last)."""
    return frame.groupby(list(by), sort=True, dropna=False, observed=True).ngroup().to_numpy()


def _sorted_offsets(df: pd.DataFrame, by: Sequence[str]) -> np.ndarray | None:
    """Group offsets when one numeric key column is already sorted (the usual panel), else None.

    Saves the factorisation and sort of the general path: the groups are the runs of equal keys.
    """
    if len(by) != 1 or len(df) == 0:
        return None
    col = df[by[0]]
    if not pd.api.types.is_numeric_dtype(col) or not isinstance(col.dtype, np.dtype):
        return None
    values = col.to_numpy()
    if values.dtype.kind == "f" and np.isnan(values).any():
        return None
    if not bool(np.all(values[1:] >= values[:-1])):
        return None
    starts = np.flatnonzero(values[1:] != values[:-1]) + 1
    return np.concatenate([[0], starts, [len(values)]]).astype(np.int64)


def _make_plan(df: pd.DataFrame, by: list[str], columns: Sequence[str], use_index: bool) -> _Plan:
    offsets = _sorted_offsets(df, by)
    order = None
    if offsets is None:
        codes = group_codes(df, by)
        if not bool(np.all(codes[1:] >= codes[:-1])):  # rows not yet in group order
            order = np.argsort(codes, kind="stable")
        sorted_codes = codes if order is None else codes[order]
        ngroups = int(sorted_codes[-1]) + 1 if len(sorted_codes) else 0
        counts = np.bincount(sorted_codes, minlength=ngroups)
        offsets = np.zeros(ngroups + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
    first = offsets[:-1] if order is None else order[offsets[:-1]]
    keys = df[by].iloc[first].reset_index(drop=True)
    arrays: dict[str, np.ndarray] = {}
    for col in columns:
        values = df[col].to_numpy()
        arrays[col] = values if order is None else values[order]
    index = None
    if use_index:
        values = df.index.to_numpy()
        index = values if order is None else values[order]
    return _Plan(keys=keys, offsets=offsets, arrays=arrays, index=index)


def _chunk_bounds(ngroups: int, chunk_size: int | None) -> list[tuple[int, int]]:
    """Contiguous runs of groups; the size depends on the number of groups only (not n_jobs)."""
    if ngroups == 0:
        return []
    if chunk_size is None:
        chunk_size = max(1, min(500, math.ceil(ngroups / 40)))
    if chunk_size < 1:
        raise DataError(f"chunk_size must be a positive integer, got {chunk_size}")
    return [(s, min(s + chunk_size, ngroups)) for s in range(0, ngroups, chunk_size)]


@dataclass
class _Payload:
    """The rows of one chunk of groups, ready to ship to a worker."""

    start: int  # number of the first group of the chunk (in the plan)
    offsets: np.ndarray  # (n + 1,) offsets into the chunk's arrays
    arrays: dict[str, np.ndarray]
    index: np.ndarray | None


def _payload(plan: _Plan, start: int, stop: int) -> _Payload:
    lo, hi = int(plan.offsets[start]), int(plan.offsets[stop])
    return _Payload(
        start=start,
        offsets=plan.offsets[start : stop + 1] - lo,
        arrays={k: v[lo:hi] for k, v in plan.arrays.items()},
        index=None if plan.index is None else plan.index[lo:hi],
    )


# --------------------------------------------------------------------------------------------
# fitting one chunk (runs in the workers)
# --------------------------------------------------------------------------------------------


@dataclass
class ChunkResult:
    """Tidy rows of one chunk of groups, column by column.

    ``group`` holds the number of the group (its position in the output order) of every row.
    """

    group: list[int] = field(default_factory=list)
    term: list[Any] = field(default_factory=list)
    estimate: list[float] = field(default_factory=list)
    se: list[float] = field(default_factory=list)
    lower: list[float] = field(default_factory=list)
    upper: list[float] = field(default_factory=list)
    nobs: list[Any] = field(default_factory=list)
    method: list[str] = field(default_factory=list)
    status: list[str] = field(default_factory=list)
    error: list[Any] = field(default_factory=list)
    warning: list[Any] = field(default_factory=list)

    @property
    def groups(self) -> int:
        return len(set(self.group))

    @property
    def failed(self) -> int:
        return len({g for g, s in zip(self.group, self.status, strict=True) if s == "error"})

    def add_error(self, group: int, method: str, message: str, warning: str | None) -> None:
        self.group.append(group)
        self.term.append(None)
        for name in _FLOAT_COLUMNS:
            getattr(self, name).append(math.nan)
        self.nobs.append(None)
        self.method.append(method)
        self.status.append("error")
        self.error.append(message)
        self.warning.append(warning)

    def add_block(
        self,
        groups: np.ndarray,
        names: Sequence[str],
        estimate: np.ndarray,
        se: np.ndarray,
        nobs: int,
        method: str,
    ) -> None:
        """Rows of many fitted groups at once: ``estimate``/``se`` are (groups, terms)."""
        n = estimate.size
        self.group.extend(np.repeat(groups, len(names)).tolist())
        self.term.extend(list(names) * len(groups))
        self.estimate.extend(estimate.ravel().tolist())
        self.se.extend(se.ravel().tolist())
        self.lower.extend((estimate - _Z975 * se).ravel().tolist())
        self.upper.extend((estimate + _Z975 * se).ravel().tolist())
        self.nobs.extend([int(nobs)] * n)
        self.method.extend([method] * n)
        self.status.extend(["ok"] * n)
        self.error.extend([None] * n)
        self.warning.extend([None] * n)

    def add_fit(self, group: int, tidy: pd.DataFrame, nobs: int, method: str, warning: Any) -> None:
        n = len(tidy)
        self.group.extend([group] * n)
        self.term.extend(str(t) for t in tidy["term"])
        for name, col in (
            ("estimate", "estimate"),
            ("se", "se"),
            ("lower", "lower"),
            ("upper", "upper"),
        ):
            getattr(self, name).extend(np.asarray(tidy[col], dtype=float).tolist())
        self.nobs.extend([int(nobs)] * n)
        self.method.extend([method] * n)
        self.status.extend(["ok"] * n)
        self.error.extend([None] * n)
        self.warning.extend([warning] * n)


def _error_message(exc: BaseException) -> str:
    text = str(exc).strip() or repr(exc)
    return f"{type(exc).__name__}: {text}"


def _group_frame(spec: _Spec, payload: _Payload, i: int) -> pd.DataFrame:
    lo, hi = int(payload.offsets[i]), int(payload.offsets[i + 1])
    data = {col: payload.arrays[col][lo:hi] for col in spec.columns}
    index = None
    if payload.index is not None:
        index = pd.Index(payload.index[lo:hi], name=spec.index_name)
    return pd.DataFrame(data, index=index, copy=False)


#: Recording warnings (``warnings.catch_warnings``) changes process-wide state, so fits that
#: record them must not overlap in threads (a dask worker with several threads): one at a time.
_FIT_LOCK = threading.Lock()


def _new_fit_lock() -> None:  # a child forked while another thread held the lock must not hang
    global _FIT_LOCK
    _FIT_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_fit_lock)


def _fit_one(spec: _Spec, frame: pd.DataFrame, group: int, out: ChunkResult) -> None:
    from derivreg.api import fit

    with _FIT_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            res = fit(
                spec.formula,
                frame,
                method=spec.method,
                time=spec.time,
                time_unit=spec.time_unit,
                segment=spec.segment,
                input_hold=spec.input_hold,
                **spec.options,
            )
            tidy = res.to_frame()
            nobs = int(res.nobs)
            method = str(res.method)
        except Exception as exc:  # a failing group must not stop the others
            message = _error_message(exc)
            out.add_error(group, spec.method, message, _warning_text(caught))
            return
    out.add_fit(group, tidy, nobs, method, _warning_text(caught))


def _warning_text(caught: list[warnings.WarningMessage]) -> str | None:
    if not caught:
        return None
    seen: list[str] = []
    for w in caught:
        text = f"{w.category.__name__}: {w.message}"
        if text not in seen:
            seen.append(text)
    return "; ".join(seen)


def _run_chunk(spec: _Spec, payload: _Payload) -> ChunkResult:
    """Fit every group of one chunk (the caller limits BLAS threads)."""
    if spec.vector is not None:
        return _run_chunk_vector(spec, payload)
    out = ChunkResult()
    for i in range(len(payload.offsets) - 1):
        group = payload.start + i
        try:
            frame = _group_frame(spec, payload, i)
        except Exception as exc:
            out.add_error(group, spec.method, _error_message(exc), None)
            continue
        _fit_one(spec, frame, group, out)
    return out


def _run_chunk_vector(spec: _Spec, payload: _Payload) -> ChunkResult:
    """Fit a chunk with the vectorised engine; groups it does not clear go to derivreg.fit."""
    v = spec.vector
    assert v is not None
    out = ChunkResult()
    k = len(v.terms)
    n_cols = k + 1 if v.form == "integral" else k
    min_len = max(4, n_cols + 1) if v.form == "integral" else n_cols + 3
    checked = np.array([kind != "intercept" for kind, _ in v.terms], dtype=bool)
    time_arr = payload.index if spec.time is None else payload.arrays[spec.time]
    t_all = np.asarray(time_arr, dtype=float)
    values = {
        c: np.asarray(payload.arrays[c], dtype=float)
        for c in {v.response, *(var for _, var in v.terms if var is not None)}
    }
    lengths = np.diff(payload.offsets)
    generic: list[int] = []
    for length in np.unique(lengths):
        idx = np.flatnonzero(lengths == length)
        if length < min_len:
            generic.extend(idx.tolist())
            continue
        if len(idx) == len(lengths):  # every group of the chunk has this length: views
            T = t_all.reshape(len(idx), length)
            C = {c: a.reshape(len(idx), length) for c, a in values.items()}
        else:
            rows = payload.offsets[idx][:, None] + np.arange(length)
            T = t_all[rows]
            C = {c: a[rows] for c, a in values.items()}
        good = np.isfinite(T).all(axis=1) & (np.diff(T, axis=1) > 0).all(axis=1)
        for a in C.values():
            good &= np.isfinite(a).all(axis=1)
        generic.extend(idx[~good].tolist())
        idx = idx[good]
        if not len(idx):
            continue
        Cg = {c: a[good] for c, a in C.items()}
        X, y = _vector_design(v, T[good], Cg)
        beta, se, ok = _vector_solve(X, y, k, checked)
        if v.form == "integral" and v.rule == "exact":
            # the exact state integral depends on a: fixed point, as IntegralOLS does
            js = next(j for j, (kind, _) in enumerate(v.terms) if kind == "state")
            for _ in range(30):
                a_g = np.where(ok, beta[:, js], 0.0)
                X, y = _vector_design(v, T[good], Cg, a_g)
                beta_new, se, ok = _vector_solve(X, y, k, checked)
                moved = np.abs(beta_new[:, js] - a_g) > 1e-10 * (1 + np.abs(beta_new[:, js]))
                beta = beta_new
                if not np.any(moved & ok):
                    break
        generic.extend(idx[~ok].tolist())
        out.add_block(payload.start + idx[ok], v.names, beta[ok], se[ok], y.shape[-1], v.form)
    for i in sorted(generic):
        group = payload.start + i
        try:
            frame = _group_frame(spec, payload, i)
        except Exception as exc:
            out.add_error(group, spec.method, _error_message(exc), None)
            continue
        _fit_one(spec, frame, group, out)
    return out


def _run_chunk_one_thread(spec: _Spec, payload: _Payload) -> ChunkResult:
    """:func:`_run_chunk` with one BLAS thread for its duration (dask workers)."""
    with _one_blas_thread():
        return _run_chunk(spec, payload)


# --------------------------------------------------------------------------------------------
# the vectorised engine: the OLS forms with OLS covariance, many groups in one set of array ops
# --------------------------------------------------------------------------------------------
#
# For ``method="integral"`` and ``method="gradient"`` (central differences) with
# ``cov_type="nonrobust"`` every group's fit is one small least-squares problem. Groups of equal
# length are stacked into arrays (G, n, k) and solved together:
#
#   integral:  x(t) = c0 + Σ_j θ_j (I g_j)(t) + r   (I: trapezoid for the state, exact integral of
#              the held input for inputs, t - t0 for the intercept)
#   gradient:  x̂'(t_k) = Σ_j θ_j g_j(t_k) + ε_k    (x̂' central differences, interior rows;
#              a held input enters as (u_{k-1} + u_k)/2, as GradientOLS does)
#
# θ̂ from the column-scaled normal equations, cov = s² (XᵀX)⁻¹ with s² = êᵀê / (n - K), normal
# quantiles — the numbers derivreg.fit gives for the same options (tests compare them). Groups
# that the fast checks do not clear (NaN, unsorted time, too few points, a constant or nearly
# collinear regressor) are fitted by derivreg.fit, which gives the usual result or error message.
# Per-group diagnostics (steady-state, errors-in-variables warnings) are not computed here.

_Z975 = 1.959963984540054  # scipy.stats.norm.ppf(0.975)
#: below this many rows the process backend runs the vectorised engine in this process
_VECTOR_POOL_ROWS = 1_000_000


@dataclass(frozen=True)
class _Vector:
    """What the vectorised engine needs: form, term layout and the hold of the inputs."""

    form: str  # "integral" or "gradient"
    response: str
    terms: tuple[tuple[str, str | None], ...]  # (kind, column) per right-hand term
    names: tuple[str, ...]
    hold: str
    rule: str = "trapezoid"  # quadrature of the state (integral form)


def _vector_plan(
    model_spec: Any, method: str, segment: Any, input_hold: str, options: dict[str, Any]
) -> tuple[_Vector | None, str]:
    """The vectorised layout when this fit qualifies, else ``None`` and the reason."""
    if method not in ("integral", "gradient"):
        return None, f"method={method!r} (only 'integral' and 'gradient')"
    opts = dict(options)
    if opts.pop("cov_type", None) != "nonrobust":
        return None, "cov_type is not 'nonrobust' (the OLS covariance)"
    if opts.pop("nan_policy", "raise") != "raise":
        return None, "nan_policy is not 'raise'"
    from derivreg.api import get_model_class

    try:
        defaults = dict(getattr(get_model_class(method), "option_defaults", {}))
    except DerivregError as exc:
        return None, str(exc)
    unknown = sorted(set(opts) - set(defaults))
    if unknown:
        return None, f"option(s) {unknown}"
    eff = {**defaults, **opts}
    rule = "trapezoid"
    if method == "integral":
        rule = eff.get("rule")
        if rule == "auto":
            rule = "exact"  # every vectorised layout (d(x) ~ x + inputs) takes the exact integral
        if rule not in ("trapezoid", "simpson", "exact"):
            return None, f"rule={rule!r}"
        if eff.get("window") is not None:
            return None, "window= is given"
    else:
        if eff.get("derivative") != "difference" or eff.get("derivative_options"):
            return None, "derivative is not 'difference' with its default options"
        from derivreg.preprocess import get_preprocessor

        pre = get_preprocessor("difference")
        stencil = (getattr(pre, "kind", None), getattr(pre, "accuracy", None))
        if stencil != ("central", 2) or getattr(pre, "edges", None) != "nan":
            return None, "the default difference stencil is not the 3-point central one"
    if segment is not None:
        return None, "segment= is given"
    if model_spec.is_system:
        return None, "a system of equations"
    eq = model_spec.equations[0]
    if eq.order != 1:
        return None, "a derivative order above 1 on the left"
    terms: list[tuple[str, str | None]] = []
    for term in eq.terms:
        if term.kind == "intercept":
            terms.append(("intercept", None))
        elif term.kind in ("state", "exogenous") and term.var is not None and term.order == 0:
            terms.append((term.kind, term.var))
        else:
            return None, f"term {term.name!r} (only columns and the intercept)"
    vector = _Vector(method, eq.response, tuple(terms), tuple(eq.term_names), input_hold, rule)
    return vector, ""


def _simpson_regular(g: np.ndarray, d: np.ndarray) -> np.ndarray:
    """scipy's cumulative Simpson rule on regular grids (row steps ``d``, shape (G, 1)), 0 first.

    Interval ``i`` is integrated with the quadratic through ``i, i+1, i+2`` when ``i`` is even
    and through ``i-1, i, i+1`` when ``i`` is odd or last — the layout of
    ``scipy.integrate.cumulative_simpson`` — without its copies.
    """
    G, n = g.shape
    out = np.zeros((G, n))
    if n < 3:
        out[:, 1:] = np.cumsum(d * (g[:, 1:] + g[:, :-1]) / 2.0, axis=1)
        return out
    c = d / 3.0
    sub = np.empty((G, n - 1))
    a, b, e = g[:, 0 : n - 2 : 2], g[:, 1 : n - 1 : 2], g[:, 2:n:2]
    sub[:, 0 : n - 2 : 2] = c * (5.0 * a / 4.0 + 2.0 * b - e / 4.0)
    sub[:, 1 : n - 1 : 2] = c * (5.0 * e / 4.0 + 2.0 * b - a / 4.0)[:, : (n - 1) // 2]
    sub[:, n - 2] = c[:, 0] * (5.0 * g[:, n - 1] / 4.0 + 2.0 * g[:, n - 2] - g[:, n - 3] / 4.0)
    np.cumsum(sub, axis=1, out=out[:, 1:])
    return out


def _state_integral(t: np.ndarray, h: np.ndarray, g: np.ndarray, rule: str) -> np.ndarray:
    """Cumulative integral of each row of ``g`` over ``t`` (same rule as the integral form).

    On regular grids Simpson's rule uses the equal-interval formula with each row's step (the
    unequal-interval formula scipy applies for ``x=`` reduces to it, to rounding).
    """
    from scipy.integrate import cumulative_simpson, cumulative_trapezoid

    if rule != "simpson":
        return cumulative_trapezoid(g, x=t, axis=1, initial=0.0)
    step = h[:, :1]
    if np.all(np.abs(h - step) <= 1e-9 * np.abs(step)):
        return _simpson_regular(g, step)
    return cumulative_simpson(g, x=t, axis=1, initial=0.0)


def _vector_design(
    v: _Vector, t: np.ndarray, cols: dict[str, np.ndarray], a: np.ndarray | None = None
):
    """Stacked designs, one row per regressor: X (G, K, m), y (G, m); θ's are the first rows.

    ``rule="exact"``: the state integral exact under the input hold at the coefficient ``a`` of
    each group (trapezoid while ``a`` is None, the start of the fixed-point iteration), as in
    :func:`derivreg.models.integral.exact_state_integral_rows`.
    """
    from derivreg.models.integral import exact_state_integral_rows

    y = cols[v.response]
    G, n = t.shape
    if v.form == "integral":
        h = np.diff(t, axis=1)
        X = np.empty((G, len(v.terms) + 1, n))
        for j, (kind, var) in enumerate(v.terms):
            if kind == "intercept":
                np.subtract(t, t[:, :1], out=X[:, j])
                continue
            g = cols[var]  # type: ignore[index]
            exact = v.rule == "exact" and a is not None
            if kind == "state":
                if exact:
                    X[:, j] = exact_state_integral_rows(t, g, a)[0]  # type: ignore[arg-type]
                else:
                    rule = "trapezoid" if v.rule == "exact" else v.rule
                    X[:, j] = _state_integral(t, h, g, rule)
                continue
            if v.hold == "linear":
                step = g[:, :-1] * h + (g[:, 1:] - g[:, :-1]) * h / 2.0
            else:
                step = g[:, :-1] * h
            X[:, j, 0] = 0.0
            np.cumsum(step, axis=1, out=X[:, j, 1:])
            if exact and v.hold == "linear":
                X[:, j] += exact_state_integral_rows(t, g, a, g)[1]  # type: ignore[arg-type,operator]
        X[:, -1] = 1.0  # initial condition
        return X, y
    h0 = t[:, 1:-1] - t[:, :-2]
    h1 = t[:, 2:] - t[:, 1:-1]
    dy = (
        -h1 / (h0 * (h0 + h1)) * y[:, :-2]
        + (h1 - h0) / (h0 * h1) * y[:, 1:-1]
        + h0 / (h1 * (h0 + h1)) * y[:, 2:]
    )
    X = np.empty((G, len(v.terms), n - 2))
    for j, (kind, var) in enumerate(v.terms):
        if kind == "intercept":
            X[:, j] = 1.0
        elif kind == "exogenous" and v.hold == "zoh":  # held input: mean of both sides
            g = cols[var]  # type: ignore[index]
            X[:, j] = 0.5 * (g[:, 1:-1] + g[:, :-2])
        else:
            X[:, j] = cols[var][:, 1:-1]  # type: ignore[index]
    return X, dy


def _vector_solve(X: np.ndarray, y: np.ndarray, k: int, checked: np.ndarray):
    """OLS of every stacked group (X as (G, K, m)), and which groups are clearly identified.

    ``checked`` marks the θ rows that must not be constant (all but the intercept).
    """
    _, K, m = X.shape
    scale = np.sqrt(np.einsum("gkm,gkm->gk", X, X))
    scale[scale == 0] = 1.0
    gram = np.matmul(X, X.transpose(0, 2, 1)) / (scale[:, :, None] * scale[:, None, :])
    eig = np.linalg.eigvalsh(gram)
    ok = eig[:, 0] > 1e-8 * eig[:, -1]  # condition number of the scaled design below 1e4
    if checked.any():
        Xc = X[:, :k][:, checked]
        top = np.max(np.abs(Xc), axis=2)
        constant = (np.ptp(Xc, axis=2) <= 1e-8 * top) | (top == 0)
        ok &= ~constant.any(axis=1)
    gram_ok = np.where(ok[:, None, None], gram, np.eye(K))
    inv = np.linalg.inv(gram_ok)
    xty = np.matmul(X, y[:, :, None])[:, :, 0] / scale
    beta = np.matmul(inv, xty[:, :, None])[:, :, 0] / scale
    resid = y - np.matmul(beta[:, None, :], X)[:, 0, :]
    s2 = np.einsum("gm,gm->g", resid, resid) / max(m - K, 1)
    var = s2[:, None] * np.diagonal(inv, axis1=1, axis2=2) / scale**2
    return beta[:, :k], np.sqrt(np.clip(var[:, :k], 0.0, None)), ok


# --- process backend: workers forked after the plan exists read it from this global ---------
_FORK_STATE: tuple[_Spec, _Plan] | None = None


def _init_worker() -> None:
    _one_blas_thread()  # kept for the life of the worker


def _run_forked_chunk(start: int, stop: int) -> ChunkResult:
    if _FORK_STATE is None:  # pragma: no cover - only when the start method is not fork
        raise RuntimeError("worker was not forked from a process holding the batch plan")
    spec, plan = _FORK_STATE
    return _run_chunk(spec, _payload(plan, start, stop))


# --------------------------------------------------------------------------------------------
# backends
# --------------------------------------------------------------------------------------------


def _n_workers(n_jobs: int | None) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cores = os.cpu_count() or 1
    if n_jobs is None or n_jobs == 0:
        return 1
    if n_jobs < 0:
        return max(1, cores + 1 + n_jobs)
    return int(n_jobs)


def _iter_serial(spec: _Spec, plan: _Plan, bounds: list[tuple[int, int]]) -> Iterator[ChunkResult]:
    for start, stop in bounds:
        yield _run_chunk(spec, _payload(plan, start, stop))


def _iter_process(
    spec: _Spec, plan: _Plan, bounds: list[tuple[int, int]], workers: int
) -> Iterator[ChunkResult]:
    global _FORK_STATE
    workers = min(workers, len(bounds))
    if workers <= 1:
        yield from _iter_serial(spec, plan, bounds)
        return
    use_fork = sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods()
    ctx = mp.get_context("fork" if use_fork else None)
    if use_fork:
        _FORK_STATE = (spec, plan)
    try:
        with ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=_init_worker
        ) as pool:
            pending: set[Future[ChunkResult]] = set()
            queue = iter(bounds)
            # keep at most a few chunks in flight per worker: memory stays bounded for big panels
            for start, stop in queue:
                pending.add(_submit(pool, spec, plan, start, stop, use_fork))
                if len(pending) >= 2 * workers:
                    break
            try:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        for start, stop in queue:
                            pending.add(_submit(pool, spec, plan, start, stop, use_fork))
                            break
                        yield fut.result()
            except BaseException:
                for fut in pending:
                    fut.cancel()
                raise
    finally:
        if use_fork:
            _FORK_STATE = None


def _submit(
    pool: ProcessPoolExecutor, spec: _Spec, plan: _Plan, start: int, stop: int, forked: bool
) -> Future[ChunkResult]:
    if forked:
        return pool.submit(_run_forked_chunk, start, stop)
    return pool.submit(_run_chunk, spec, _payload(plan, start, stop))


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise MethodNotAvailableError(
            "backend='dask' needs dask.distributed, which is not installed: "
            "pip install 'derivreg[dask]'"
        ) from exc
    return distributed


def _dask_client(scheduler: Any, client: Any) -> Any:
    distributed = _import_distributed()
    if client is not None:
        return client
    if scheduler is not None:
        return distributed.Client(scheduler, set_as_default=False)
    try:
        return distributed.default_client()
    except ValueError:
        raise DataError(
            "backend='dask' needs a running dask.distributed cluster: pass scheduler='tcp://...' "
            "or client=Client(...)"
        ) from None


def _iter_dask(
    spec: _Spec, plan: _Plan, bounds: list[tuple[int, int]], scheduler: Any, client: Any
) -> Iterator[ChunkResult]:
    own = client is None and scheduler is not None
    dask_client = _dask_client(scheduler, client)
    try:
        from distributed import as_completed

        futures = [
            dask_client.submit(_run_chunk_one_thread, spec, _payload(plan, start, stop), pure=False)
            for start, stop in bounds
        ]
        try:
            for fut in as_completed(futures):
                yield fut.result()
        except BaseException:
            dask_client.cancel(futures)
            raise
    finally:
        if own:
            dask_client.close()


# --------------------------------------------------------------------------------------------
# public functions
# --------------------------------------------------------------------------------------------


@dataclass
class _Prepared:
    spec: _Spec
    plan: _Plan
    by: list[str]
    bounds: list[tuple[int, int]]


def _prepare(
    df: pd.DataFrame,
    formula: Any,
    by: str | Sequence[str],
    method: str,
    time: str | None,
    time_unit: str,
    segment: str | None,
    input_hold: str,
    chunk_size: int | None,
    options: dict[str, Any],
    engine: str = "auto",
) -> _Prepared:
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"fit_many needs a DataFrame, got {type(df).__name__}")
    if df.attrs:  # pandas deep-copies attrs on every operation: drop them once, here
        df = df.copy(deep=False)
        df.attrs = {}
    by_cols = _as_list(by)
    missing = [c for c in by_cols if c not in df.columns]
    if missing:
        raise ColumnNotFoundError(
            f"group column(s) {missing} not in the data; columns are {list(df.columns)}"
        )
    for name, col in (("time", time), ("segment", segment)):
        if col is not None and col not in df.columns:
            raise ColumnNotFoundError(
                f"{name} column {col!r} is not in the data; columns are {list(df.columns)}"
            )
    model_spec = _parse(formula)
    _check_method(method, options)
    model_spec.validate(df.columns)
    used = {str(c) for c in model_spec.columns} | {c for c in (time, segment) if c is not None}
    columns = [c for c in df.columns if str(c) in used]
    vector = _choose_engine(engine, df, model_spec, method, time, segment, input_hold, options)
    spec = _Spec(
        formula=model_spec,  # parsed once; dr.fit passes a ModelSpec through unchanged
        method=method,
        time=time,
        time_unit=time_unit,
        segment=segment,
        input_hold=input_hold,
        options=dict(options),
        columns=tuple(columns),
        index_name=df.index.name,
        vector=vector,
    )
    plan = _make_plan(df, by_cols, columns, use_index=time is None)
    return _Prepared(spec, plan, by_cols, _chunk_bounds(plan.ngroups, chunk_size))


class BatchRun:
    """A prepared batch fit: the formula checked, the data split into groups and chunks.

    Made by :func:`prepare_batch`; :func:`fit_many` is ``prepare_batch(...).table()``. The
    command line uses :meth:`tables` to write results as chunks finish.
    """

    def __init__(
        self, prep: _Prepared, backend: str, n_jobs: int | None, scheduler: Any, client: Any
    ) -> None:
        self._prep = prep
        self.backend = backend
        self.n_jobs = n_jobs
        self.scheduler = scheduler
        self.client = client

    @property
    def by(self) -> list[str]:
        """Group-key columns."""
        return list(self._prep.by)

    @property
    def keys(self) -> pd.DataFrame:
        """One row per group, in output order."""
        return self._prep.plan.keys

    @property
    def ngroups(self) -> int:
        return self._prep.plan.ngroups

    def chunks(self) -> Iterator[ChunkResult]:
        """Raw chunk results in completion order."""
        prep = self._prep
        if self.backend == "serial":
            with _one_blas_thread():
                yield from _iter_serial(prep.spec, prep.plan, prep.bounds)
        elif self.backend == "process":
            workers = _n_workers(self.n_jobs)
            if prep.spec.vector is not None and prep.plan.offsets[-1] < _VECTOR_POOL_ROWS:
                workers = 1  # array work this small finishes before workers would start
            yield from _iter_process(prep.spec, prep.plan, prep.bounds, workers)
        else:
            yield from _iter_dask(prep.spec, prep.plan, prep.bounds, self.scheduler, self.client)

    def tables(self) -> Iterator[tuple[pd.DataFrame, ChunkResult]]:
        """Yield ``(table, chunk)`` per finished chunk: whole groups, output order within."""
        for chunk in self.chunks():
            yield _table(self.keys, self.by, [chunk]), chunk

    def table(self, progress: bool | ProgressCallback | None = None) -> pd.DataFrame:
        """Fit every group and return the whole tidy table in output order."""
        chunks: list[ChunkResult] = []
        done = failed = 0
        with _progress_context(progress, self.ngroups) as report:
            report(0, 0, self.ngroups)
            for chunk in self.chunks():
                chunks.append(chunk)
                done += chunk.groups
                failed += chunk.failed
                report(done, failed, self.ngroups)
        return _table(self.keys, self.by, chunks)


def prepare_batch(
    df: pd.DataFrame,
    formula: Any,
    by: str | Sequence[str],
    method: str = "auto",
    backend: Backend = "process",
    n_jobs: int | None = -1,
    scheduler: Any = None,
    client: Any = None,
    time: str | None = None,
    time_unit: str = "s",
    segment: str | None = None,
    input_hold: str = "linear",
    chunk_size: int | None = None,
    engine: str = "auto",
    **options: Any,
) -> BatchRun:
    """Check the arguments, parse the formula once and split ``df`` into groups and chunks.

    Same arguments as :func:`fit_many`; nothing is fitted until the returned
    :class:`BatchRun` is iterated.
    """
    if backend not in BACKENDS:
        raise DataError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if backend == "dask":
        _import_distributed()
    prep = _prepare(
        df, formula, by, method, time, time_unit, segment, input_hold, chunk_size, options, engine
    )
    return BatchRun(prep, backend, n_jobs, scheduler, client)


def _table(keys: pd.DataFrame, by: list[str], chunks: Sequence[ChunkResult]) -> pd.DataFrame:
    """Stack chunk results into the tidy table, rows in output order."""
    group = np.concatenate([np.asarray(c.group, dtype=np.int64) for c in chunks] or [[]])
    order = np.argsort(group, kind="stable")
    group = group[order].astype(np.intp)
    out = keys.iloc[group].reset_index(drop=True)
    for name in RESULT_COLUMNS:
        values = [v for c in chunks for v in getattr(c, name)]
        if name in _FLOAT_COLUMNS:
            out[name] = np.asarray(values, dtype=float)[order]
        else:
            out[name] = pd.Series(np.asarray(values, dtype=object)[order], dtype=object)
    return normalize_table(out, by)


def normalize_table(table: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Fixed column order and dtypes for a result table (also after a Parquet/CSV round trip)."""
    out = table[[*by, *RESULT_COLUMNS]].copy()
    for name in _FLOAT_COLUMNS:
        out[name] = pd.to_numeric(out[name], errors="coerce").astype("float64")
    out["nobs"] = pd.array(pd.to_numeric(out["nobs"], errors="coerce"), dtype="Int64")
    for name in _TEXT_COLUMNS:
        values = out[name].astype(object)
        out[name] = pd.array(values.where(values.notna(), None), dtype="string")
    return out.reset_index(drop=True)


def fit_many(
    df: pd.DataFrame,
    formula: Any,
    by: str | Sequence[str],
    method: str = "auto",
    backend: Backend = "process",
    n_jobs: int | None = -1,
    scheduler: Any = None,
    client: Any = None,
    time: str | None = None,
    time_unit: str = "s",
    segment: str | None = None,
    input_hold: str = "linear",
    progress: bool | ProgressCallback | None = None,
    chunk_size: int | None = None,
    engine: str = "auto",
    **options: Any,
) -> pd.DataFrame:
    """Fit the same differential relation to every group of rows of a panel.

    For every group ``g`` (rows sharing the values of ``by``) the relation

        d^p x_g / dt^p = Σ_j θ_{g,j} f_j(t)

    is fitted separately with :func:`derivreg.fit` (same ``formula``, ``method`` and options), and
    the coefficients ``θ_{g,j}`` with their standard errors and confidence intervals are stacked
    into one tidy table.

    Parameters
    ----------
    df : DataFrame
        Long panel: the group-key column(s), the time (index or ``time=`` column) and the variables
        of the formula. Within a group, rows must be in time order (as for :func:`derivreg.fit`).
    formula : str, list or dict
        The relation, e.g. ``"d(x) ~ x + u"``. Parsed once: an invalid formula raises
        :class:`~derivreg.exceptions.FormulaError` before any group is fitted.
    by : str or list of str
        Group-key column(s).
    method : str
        Fitting method (``"gradient"``, ``"integral"``, ``"arimax"``, ``"statespace"``,
        ``"fourier"``, ``"auto"``), as in :func:`derivreg.fit`.
    backend : {"process", "serial", "dask"}
        ``"process"`` (default) runs chunks of groups in local worker processes; ``"serial"`` in
        this process; ``"dask"`` on an existing ``dask.distributed`` cluster given by
        ``scheduler=`` (an address) or ``client=`` (a ``Client``), else the default client.
        All backends give identical tables.
    n_jobs : int
        Worker processes for ``"process"``: ``-1`` all cores, ``-2`` all but one, ``1`` no pool
        (the chunks then run in this process). The vectorised engine on fewer than a million rows
        also runs in this process: it is done before workers would have started.
    scheduler, client
        The dask cluster for ``backend="dask"``.
    time, time_unit, segment, input_hold, **options
        Passed to :func:`derivreg.fit` for every group.
    progress : bool or callable, optional
        ``True`` shows a progress bar (rich); a callable is called as
        ``progress(finished_groups, failed_groups, total_groups)`` after every chunk.
    chunk_size : int, optional
        Groups per task. Default: about 40 chunks in total, at most 500 groups each. It depends on
        the number of groups only, so results never depend on the number of workers.
    engine : {"auto", "fit", "vectorized"}
        ``"fit"`` calls :func:`derivreg.fit` for every group. ``"vectorized"`` solves many groups
        in one set of array operations; it covers the OLS forms with the OLS covariance —
        ``method="integral"`` or ``method="gradient"`` with ``derivative="difference"``, both with
        ``cov_type="nonrobust"``, one first-order equation whose terms are columns and the
        intercept, numeric time, no ``segment`` — and gives the same estimates, standard errors
        and intervals as :func:`derivreg.fit` (groups it cannot clear quickly, e.g. with NaN or a
        constant regressor, are passed to :func:`derivreg.fit`). It does not run the per-group
        diagnostics, so its ``warning`` column is empty. ``"auto"`` (default) uses it when the
        fit qualifies — which requires asking for ``cov_type="nonrobust"``: the forms' default
        covariances (GLS, HAC) always go through :func:`derivreg.fit`.

    Returns
    -------
    DataFrame
        Columns: the group keys, ``term``, ``estimate``, ``se``, ``lower``, ``upper`` (95%
        interval as reported by the method), ``nobs``, ``method`` (the method used, e.g. what
        ``"auto"`` chose), ``status`` (``"ok"`` or ``"error"``), ``error`` (the message of a failed
        group, else missing) and ``warning`` (warnings raised while fitting the group, if any).
        One row per group and term; a failed group has one row with ``term`` missing. Groups are
        in sorted key order (missing keys last), terms in the model's order.

    Raises
    ------
    FormulaError
        The formula cannot be parsed (raised once, up front).
    ColumnNotFoundError
        A group, time, segment or formula column is not in ``df``.
    MethodNotAvailableError
        ``backend="dask"`` without dask installed.

    Examples
    --------
    >>> import derivreg as dr
    >>> panel = dr.datasets.load("cooling_panel")  # 50 units: unit, t, u, x
    >>> table = dr.fit_many(panel, "d(x) ~ x + u", by="unit", time="t", method="integral",
    ...                     input_hold="zoh")
    >>> table.columns.tolist()[:4]
    ['unit', 'term', 'estimate', 'se']
    >>> int((table["status"] == "ok").sum())
    150
    """
    run = prepare_batch(
        df,
        formula,
        by,
        method=method,
        backend=backend,
        n_jobs=n_jobs,
        scheduler=scheduler,
        client=client,
        time=time,
        time_unit=time_unit,
        segment=segment,
        input_hold=input_hold,
        chunk_size=chunk_size,
        engine=engine,
        **options,
    )
    return run.table(progress)


def sort_table(table: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Rows in output order: groups by sorted keys (missing last), terms as they came."""
    codes = group_codes(table, by)
    order = np.argsort(codes, kind="stable")
    return normalize_table(table.iloc[order], by)


class _NoProgress:
    def __enter__(self) -> ProgressCallback:
        return lambda done, failed, total: None

    def __exit__(self, *exc: object) -> None:
        return None


class _CallbackProgress:
    def __init__(self, func: ProgressCallback) -> None:
        self.func = func

    def __enter__(self) -> ProgressCallback:
        return self.func

    def __exit__(self, *exc: object) -> None:
        return None


def _progress_context(progress: bool | ProgressCallback | None, total: int) -> Any:
    if progress is None or progress is False:
        return _NoProgress()
    if progress is True:
        return RichProgress(total)
    if callable(progress):
        return _CallbackProgress(progress)
    raise DataError("progress must be None, True/False or a callable(done, failed, total)")


class RichProgress:
    """A rich progress bar showing finished and failed groups; use as a context manager."""

    def __init__(self, total: int | None = None, description: str = "fitting") -> None:
        self.total = total
        self.description = description
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> ProgressCallback:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("groups, [red]{task.fields[failed]} failed"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
        self._progress.__enter__()
        self._task = self._progress.add_task(self.description, total=self.total, failed=0)
        return self.update

    def update(self, done: int, failed: int, total: int | None) -> None:
        kwargs: dict[str, Any] = {"completed": done, "failed": failed}
        if total:
            kwargs["total"] = total
        self._progress.update(self._task, **kwargs)

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(*exc)
