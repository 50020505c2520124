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
* every chunk runs under ``threadpoolctl.threadpool_limits(1)``: one BLAS thread per worker (the
  workers are the parallelism, and a fixed thread count keeps results bit-identical across
  backends);
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
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from derivreg.exceptions import (
    ColumnNotFoundError,
    DataError,
    MethodNotAvailableError,
)

__all__ = [
    "BACKENDS",
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


def _check_method(method: str, options: dict[str, Any]) -> None:
    """Unknown or unavailable methods and unknown options raise once, up front."""
    from derivreg import api

    try:
        cls = api.get_model_class(method)
    except MethodNotAvailableError:
        if method != "auto":
            raise
        cls = api.get_model_class(getattr(api, "AUTO_FALLBACK", "integral"))
    known = getattr(cls, "option_defaults", None)
    if known is None:
        return
    unknown = sorted(set(options) - set(known) - {"cov_type", "nan_policy"})
    if unknown:
        raise DataError(
            f"method={method!r} has no option(s) {unknown}; valid options: {sorted(known)}"
        )


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


def group_codes(frame: pd.DataFrame, by: Sequence[str]) -> np.ndarray:
    """Group number of every row, numbered in output order (sorted keys, missing keys last)."""
    return frame.groupby(list(by), sort=True, dropna=False, observed=True).ngroup().to_numpy()


def _make_plan(df: pd.DataFrame, by: list[str], columns: Sequence[str], use_index: bool) -> _Plan:
    codes = group_codes(df, by)
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    ngroups = int(sorted_codes[-1]) + 1 if len(sorted_codes) else 0
    counts = np.bincount(sorted_codes, minlength=ngroups)
    offsets = np.zeros(ngroups + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    first = order[offsets[:-1]]
    keys = df[by].iloc[first].reset_index(drop=True)
    identity = bool(np.all(order == np.arange(len(order))))
    arrays: dict[str, np.ndarray] = {}
    for col in columns:
        values = df[col].to_numpy()
        arrays[col] = values if identity else values[order]
    index = None
    if use_index:
        values = df.index.to_numpy()
        index = values if identity else values[order]
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


def _fit_one(spec: _Spec, frame: pd.DataFrame, group: int, out: ChunkResult) -> None:
    from derivreg.api import fit

    with warnings.catch_warnings(record=True) as caught:
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


def _run_chunk_one_thread(spec: _Spec, payload: _Payload) -> ChunkResult:
    """:func:`_run_chunk` with one BLAS thread for its duration (dask workers)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return _run_chunk(spec, payload)


# --- process backend: workers forked after the plan exists read it from this global ---------
_FORK_STATE: tuple[_Spec, _Plan] | None = None


def _init_worker() -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)


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
    spec = _Spec(
        formula=formula,
        method=method,
        time=time,
        time_unit=time_unit,
        segment=segment,
        input_hold=input_hold,
        options=dict(options),
        columns=tuple(columns),
        index_name=df.index.name,
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
            from threadpoolctl import threadpool_limits

            with threadpool_limits(limits=1):
                yield from _iter_serial(prep.spec, prep.plan, prep.bounds)
        elif self.backend == "process":
            workers = _n_workers(self.n_jobs)
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
        df, formula, by, method, time, time_unit, segment, input_hold, chunk_size, options
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
        out[name] = pd.Series([values[i] for i in order], dtype=object)
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
        (the chunks then run in this process).
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
    >>> panel = dr.datasets.load("cooling_panel")                      # doctest: +SKIP
    >>> table = dr.fit_many(panel, "d(temp) ~ temp + ambient", by="unit",
    ...                     method="integral")                         # doctest: +SKIP
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
