"""Plots of fitted relations and derivative estimates (matplotlib, imported only when plotting).

Two functions, both ``ax=`` in, axes out:

* :func:`plot_results` — for a fitted relation ``x^(p)(t) = Σ_j θ_j g_j(t)`` (``res.plot()``):
  the data with the simulated fit, the derivative estimate with its pointwise band beside the
  fitted right side ``Σ_j θ̂_j g_j(t)`` with its parameter band, the residuals, and their
  autocorrelation.
* :func:`plot_derivative` — for a derivative estimator (preprocessor) or the frame returned by
  :func:`derivreg.derivative`: the estimate ``x̂^(k)(t)`` with the pointwise band
  ``x̂^(k)(t) ± z_{1-α/2} se(t)`` where the method has standard errors, the data alongside.

matplotlib is optional: without it these functions raise
:class:`~derivreg.exceptions.MethodNotAvailableError`. They never choose a backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats

from derivreg._typing import FloatArray
from derivreg.exceptions import DataError, DerivregError, MethodNotAvailableError

if TYPE_CHECKING:
    from derivreg.preprocess.base import Preprocessor
    from derivreg.results import DiffRegResults

__all__ = ["PANELS", "plot_derivative", "plot_results", "residual_acf"]

#: panels of :func:`plot_results`, in their default order
PANELS: tuple[str, ...] = ("fit", "derivative", "resid", "acf")

#: largest segment for which a band is formed from a full covariance matrix (n x n floats)
_MAX_COV_POINTS = 3000


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _pyplot() -> Any:
    """``matplotlib.pyplot``, or a clear error when matplotlib is not installed."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MethodNotAvailableError(
            "plotting needs matplotlib, which is not installed; `pip install matplotlib`"
        ) from exc
    return plt


def _axes_list(ax: Any, n: int, nrows: int, ncols: int, figsize: Any) -> list[Any]:
    """``n`` axes: a new ``nrows x ncols`` figure when ``ax`` is None, else the given ones."""
    if ax is None:
        plt = _pyplot()
        fig, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False)
        flat = list(np.asarray(axes).ravel())
        for extra in flat[n:]:
            fig.delaxes(extra)
        return flat[:n]
    if hasattr(ax, "plot") and not isinstance(ax, (Sequence, np.ndarray)):
        given = [ax]
    else:
        given = list(np.asarray(ax, dtype=object).ravel())
    if len(given) != n:
        raise DataError(f"ax: expected {n} axes (one per panel), got {len(given)}")
    for a in given:
        if not hasattr(a, "plot"):
            raise DataError(f"ax: {a!r} is not a matplotlib Axes")
    return given


def _z(alpha: float) -> float:
    if not 0 < alpha < 1:
        raise DataError(f"alpha must be in (0, 1), got {alpha}")
    return float(stats.norm.ppf(1 - alpha / 2))


def _segment_positions(sd: Any, segment: Any) -> list[tuple[Any, np.ndarray]]:
    """``[(label, positions)]`` of every segment, or of the one named by ``segment``."""
    pairs = list(zip(sd.segment_labels, sd.segments, strict=True))
    if segment is None:
        return pairs
    for label, pos in pairs:
        if label == segment or str(label) == str(segment):
            return [(label, pos)]
    raise DataError(f"segment {segment!r} is not in the data; segments are {sd.segment_labels}")


def _time_label(res: DiffRegResults, sd: Any) -> str:
    """x-axis label: the time column's name, or ``time [unit]`` for a datetime-like index."""
    model = res.model
    time = getattr(model, "time", None)
    if isinstance(time, str):
        return time
    raw = getattr(model, "raw_data", None)
    index = getattr(raw, "index", None)
    if isinstance(index, (pd.DatetimeIndex, pd.TimedeltaIndex)):
        return f"time [{sd.time_unit}]"
    if index is not None and index.name is not None:
        return str(index.name)
    return "time"


def _line(ax: Any, t: FloatArray, y: FloatArray, label: str | None, **kw: Any) -> Any:
    (ln,) = ax.plot(t, y, label=label, **kw)
    return ln


def _band(
    ax: Any, t: FloatArray, est: FloatArray, se: FloatArray, z: float, label: str | None, color: Any
) -> Any:
    ok = np.isfinite(est) & np.isfinite(se)
    return ax.fill_between(
        t, est - z * se, est + z * se, where=ok, alpha=0.25, color=color, linewidth=0, label=label
    )


def residual_acf(resid: FloatArray, segments: Sequence[np.ndarray], nlags: int) -> FloatArray:
    """Autocorrelation of residuals pooled over segments, lags ``0..nlags``.

    ``r_k = Σ_s Σ_t ẽ_{s,t} ẽ_{s,t+k} / Σ_s Σ_t ẽ_{s,t}²`` with ``ẽ = e − ē`` (overall mean),
    NaN residuals left out, no product across a segment boundary. For one segment without NaN
    this is statsmodels' ``acf(e, nlags, adjusted=False)``.
    """
    e = np.asarray(resid, dtype=float)
    finite = np.isfinite(e)
    if finite.sum() < 2:
        return np.full(nlags + 1, np.nan)
    e = e - e[finite].mean()
    num = np.zeros(nlags + 1)
    den = 0.0
    for pos in segments:
        s = e[pos]
        s = s[np.isfinite(s)]
        den += float(s @ s)
        for k in range(min(nlags, len(s) - 1) + 1):
            num[k] += float(s[: len(s) - k] @ s[k:])
    return num / den if den > 0 else np.full(nlags + 1, np.nan)


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------
def _results_parts(res: DiffRegResults) -> tuple[Any, Any]:
    spec, sd = res.spec, res.data
    if spec is None or sd is None:
        raise MethodNotAvailableError("plotting needs the model spec and data of the fit")
    return spec, sd


def _derivative_estimates(
    res: DiffRegResults, sd: Any, need: set[tuple[str, int]], derivative: Any
) -> tuple[dict[tuple[str, int], FloatArray], dict[tuple[str, int], FloatArray | None], str]:
    """Estimates (and SEs) of the derivatives ``need`` on the kept rows of the fit's data."""
    from derivreg.preprocess import get_preprocessor

    est: dict[tuple[str, int], FloatArray] = {}
    ses: dict[tuple[str, int], FloatArray | None] = {}
    if not need:
        return est, ses, ""
    cols = sorted({v for v, _ in need})
    pre = None
    if derivative is None:
        used = getattr(res.model, "preprocessor_", None)
        if used is not None and set(cols) <= set(getattr(used, "feature_names_in_", [])):
            pre = used
    if pre is None:
        method = "spline" if derivative is None else derivative
        try:
            pre = get_preprocessor(method)
        except MethodNotAvailableError:
            if derivative is not None:
                raise
            pre = get_preprocessor("difference")
        codes = np.empty(sd.nobs, dtype=np.intp)
        for i, pos in enumerate(sd.segments):
            codes[pos] = i
        X = np.column_stack([sd.column(c) for c in cols])
        pre.fit(X, columns=cols, time=sd.t, segment=codes if len(sd.segments) > 1 else None)
    names = list(pre.feature_names_in_)
    for order in sorted({k for _, k in need}):
        e, s = pre.derivative_arrays(order)
        if s is None:
            s = _se_from_cov(pre, order)
        for v, k in need:
            if k == order:
                j = names.index(v)
                est[(v, k)] = e[:, j]
                ses[(v, k)] = None if s is None else s[:, j]
    return est, ses, type(pre).__name__


def _se_from_cov(pre: Preprocessor, order: int) -> FloatArray | None:
    """Pointwise SEs from the diagonal of the estimate's covariance, where the method has one."""
    sd = pre.data_
    out = np.full(sd.values.shape, np.nan)
    for j in range(len(sd.columns)):
        for i, pos in enumerate(sd.segments):
            if len(pos) > _MAX_COV_POINTS:
                return None
            try:
                cov = pre.derivative_cov(order, column=j, segment=i)
            except MethodNotAvailableError:
                return None
            out[pos, j] = np.sqrt(np.clip(np.diag(cov), 0, None))
    return out


def _simulated_paths(res: DiffRegResults, spec: Any, sd: Any, segs: list) -> dict[str, FloatArray]:
    """Simulated states on the kept rows (NaN outside the plotted segments).

    One segment of several is simulated alone (from the caller's rows of that segment, initial
    state estimated from its first samples), which is much cheaper than the whole data.
    """
    raw = getattr(res.model, "raw_data", None)
    out = {var: np.full(sd.nobs, np.nan) for var in spec.states}
    if len(segs) == 1 and len(sd.segments) > 1 and isinstance(raw, pd.DataFrame):
        pos = segs[0][1]
        rows = np.sort(sd.rows[pos])
        sim = res.simulate(raw.iloc[rows])
        at = np.searchsorted(rows, sd.rows[pos])
        for var in spec.states:
            out[var][pos] = np.asarray(sim[var], dtype=float)[at]
        return out
    sim = res.simulate()
    for var in spec.states:
        out[var] = np.asarray(sim[var], dtype=float)[sd.rows]
    return out


def _panel_fit(
    ax: Any, res: DiffRegResults, spec: Any, sd: Any, segs: list, simulate: bool
) -> None:
    paths = None
    if simulate:
        try:
            paths = _simulated_paths(res, spec, sd, segs)
        except DerivregError as exc:
            note = f"no simulation: {exc}"
            ax.text(0.02, 0.95, note, transform=ax.transAxes, va="top", fontsize=8)
    for var in spec.states:
        y = sd.column(var)
        path = None if paths is None else paths[var]
        for i, (_, pos) in enumerate(segs):
            first = i == 0
            pts = _line(
                ax,
                sd.t[pos],
                y[pos],
                f"{var} (data)" if first else None,
                ls="none",
                marker="o",
                ms=2.5,
                alpha=0.6,
            )
            if path is not None:
                _line(
                    ax,
                    sd.t[pos],
                    path[pos],
                    f"{var} (simulated fit)" if first else None,
                    color=pts.get_color(),
                    lw=1.5,
                )
    ax.set_title("data and simulated fit")
    ax.set_xlabel(_time_label(res, sd))
    ax.legend(fontsize=8)


def _panel_derivative(
    ax: Any, res: DiffRegResults, spec: Any, sd: Any, segs: list, z: float, derivative: Any
) -> None:
    need = set(spec.derivatives)
    est, ses, who = _derivative_estimates(res, sd, need, derivative)
    values = {(c, 0): sd.values[:, j] for j, c in enumerate(sd.columns)}
    values.update(est)
    theta = res.params.to_numpy()
    cov = res.cov_params().to_numpy()
    eqs = np.asarray(spec.param_equations)
    for eq in spec.equations:
        idx = np.flatnonzero(eqs == eq.name)
        X = eq.design(values, sd.nobs)
        fit = X @ theta[idx]
        fit_se = np.sqrt(np.clip(np.einsum("ij,jk,ik->i", X, cov[np.ix_(idx, idx)], X), 0, None))
        key = (eq.response, eq.order)
        e, s = est[key], ses[key]
        for i, (_, pos) in enumerate(segs):
            first = i == 0
            ln = _line(ax, sd.t[pos], e[pos], f"{eq.lhs} estimate ({who})" if first else None, lw=1)
            if s is not None:
                _band(ax, sd.t[pos], e[pos], s[pos], z, None, ln.get_color())
            fl = _line(
                ax,
                sd.t[pos],
                fit[pos],
                f"{eq.lhs} fitted: {' + '.join(eq.term_names)}" if first else None,
                lw=1.5,
                ls="--",
            )
            _band(ax, sd.t[pos], fit[pos], fit_se[pos], z, None, fl.get_color())
    ax.set_title("derivative: estimate and fitted relation (bands pointwise)")
    ax.set_xlabel(_time_label(res, sd))
    ax.legend(fontsize=8)


def _resid_matrix(res: DiffRegResults, sd: Any) -> tuple[FloatArray, list[str]]:
    r = res.resid
    if isinstance(r, pd.DataFrame):
        return r.to_numpy(dtype=float)[sd.rows], [str(c) for c in r.columns]
    if isinstance(r, pd.Series):
        return r.to_numpy(dtype=float)[sd.rows][:, None], [str(r.name)]
    arr = np.asarray(r, dtype=float)
    arr = arr[sd.rows] if arr.shape[0] == sd.n_total else arr
    return arr.reshape(arr.shape[0], -1), [
        f"resid {i}" for i in range(arr.reshape(len(arr), -1).shape[1])
    ]


def _panel_resid(ax: Any, res: DiffRegResults, sd: Any, segs: list) -> None:
    R, names = _resid_matrix(res, sd)
    for j, name in enumerate(names):
        color = None
        for i, (_, pos) in enumerate(segs):
            ln = _line(ax, sd.t[pos], R[pos, j], name if i == 0 else None, lw=0.8, color=color)
            color = ln.get_color()
    ax.axhline(0.0, color="0.4", lw=0.8)
    ax.set_title(f"residuals ({res.method})")
    ax.set_xlabel(_time_label(res, sd))
    if len(names) > 1:
        ax.legend(fontsize=8)


def _panel_acf(ax: Any, res: DiffRegResults, sd: Any, z: float, lags: int | None) -> None:
    R, names = _resid_matrix(res, sd)
    n = int(np.isfinite(R[:, 0]).sum())
    nlags = lags if lags is not None else int(max(1, min(40, n // 4)))
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        r = residual_acf(R[:, j], sd.segments, nlags)
        k = np.arange(1, nlags + 1) + (j - (len(names) - 1) / 2) * width
        ax.vlines(k, 0.0, r[1:], lw=2, color=f"C{j}", label=name if len(names) > 1 else None)
    lim = z / np.sqrt(max(n, 1))
    ax.fill_between(
        [0.5, nlags + 0.5], -lim, lim, color="0.6", alpha=0.3, lw=0, label="white-noise band"
    )
    ax.axhline(0.0, color="0.4", lw=0.8)
    ax.set_xlim(0.5, nlags + 0.5)
    ax.set_title("residual autocorrelation")
    ax.set_xlabel("lag (samples)")
    ax.legend(fontsize=8)


def plot_results(
    res: DiffRegResults,
    ax: Any = None,
    *,
    panels: Sequence[str] = PANELS,
    segment: Any = None,
    derivative: Any = None,
    alpha: float = 0.05,
    lags: int | None = None,
    simulate: bool = True,
    figsize: tuple[float, float] | None = None,
) -> list[Any]:
    """Plot a fitted relation ``x^(p)(t) = Σ_j θ_j g_j(t)``: fit, derivative, residuals, ACF.

    Panels (in the order of ``panels``):

    * ``"fit"`` — the data of every state and the fitted relation integrated from the data's
      initial conditions (:meth:`DiffRegResults.simulate`);
    * ``"derivative"`` — a nonparametric estimate of the left side ``x^(p)`` with its pointwise
      ``1 − alpha`` band (where the estimator has standard errors), and the fitted right side
      ``Σ_j θ̂_j g_j(t)`` on the data with the band ``± z·sqrt(g(t)ᵀ Σ̂_θ g(t))`` from the
      coefficient covariance;
    * ``"resid"`` — the method's residuals (their scale depends on the form: derivative for
      gradient, state for integral, one-step error for arimax/statespace);
    * ``"acf"`` — their autocorrelation (pooled within segments) with the white-noise band
      ``± z/√n``.

    Parameters
    ----------
    res : DiffRegResults
        A fitted relation.
    ax : Axes or sequence of Axes, optional
        One Axes per panel; default: a new 2×2 figure (or fewer panels).
    panels : sequence of str
        Which panels, from ``"fit"``, ``"derivative"``, ``"resid"``, ``"acf"``.
    segment : label, optional
        Plot only this segment (the ACF always pools every segment).
    derivative : str or Preprocessor, optional
        Estimator of the derivatives in the ``"derivative"`` panel; default: the one the fit used
        (gradient form), else a smoothing spline (REML), which has pointwise SEs.
    alpha : float
        Bands are ``1 − alpha`` pointwise intervals.
    lags : int, optional
        ACF lags (default ``min(40, n/4)``).
    simulate : bool
        Draw the simulated fit in the ``"fit"`` panel (``False``: data only — for relations whose
        integration is slow, e.g. Coulomb friction ``sign(d(x))`` chattering at rest).
    figsize : tuple, optional
        Size of a new figure.

    Returns
    -------
    list of Axes
        One per panel, in the order of ``panels``.

    Raises
    ------
    MethodNotAvailableError
        matplotlib is not installed.
    """
    panels = list(panels)
    bad = [p for p in panels if p not in PANELS]
    if bad or not panels:
        raise DataError(f"unknown panel(s) {bad}; choose from {list(PANELS)}")
    z = _z(alpha)
    spec, sd = _results_parts(res)
    segs = _segment_positions(sd, segment)
    n = len(panels)
    ncols = 2 if n > 1 else 1
    nrows = (n + 1) // 2
    axes = _axes_list(ax, n, nrows, ncols, figsize or (6.0 * ncols, 3.8 * nrows))
    for a, p in zip(axes, panels, strict=True):
        if p == "fit":
            _panel_fit(a, res, spec, sd, segs, simulate)
        elif p == "derivative":
            _panel_derivative(a, res, spec, sd, segs, z, derivative)
        elif p == "resid":
            _panel_resid(a, res, sd, segs)
        else:
            _panel_acf(a, res, sd, z, lags)
    if ax is None:
        axes[0].figure.tight_layout()
    return axes


# --------------------------------------------------------------------------------------------
# derivative estimators
# --------------------------------------------------------------------------------------------
def _from_estimator(
    pre: Preprocessor, order: int, column: Any, segment: Any
) -> tuple[
    list[tuple[FloatArray, FloatArray, FloatArray | None, FloatArray, FloatArray | None]], str
]:
    """Per segment: ``(t, estimate, se, data, smooth)`` of one column of a fitted estimator."""
    sd = pre.data_
    names = list(sd.columns)
    if column is None:
        j = 0
    elif column in names:
        j = names.index(column)
    else:
        raise DataError(f"column {column!r} is not among the estimator's columns {names}")
    est, se = pre.derivative_arrays(order)
    if se is None:
        se = _se_from_cov(pre, order)
    try:
        smooth, _ = pre.derivative_arrays(0)
    except DerivregError:
        smooth = None
    parts = []
    for _, pos in _segment_positions(sd, segment):
        parts.append(
            (
                sd.t[pos],
                est[pos, j],
                None if se is None else se[pos, j],
                sd.values[pos, j],
                None if smooth is None else smooth[pos, j],
            )
        )
    return parts, names[j]


def _from_frame(
    obj: pd.Series | pd.DataFrame, column: Any
) -> tuple[Any, FloatArray, FloatArray | None, str]:
    """``(x, estimate, se, name)`` from the output of :func:`derivreg.derivative`."""
    if isinstance(obj, pd.Series):
        return obj.index, obj.to_numpy(dtype=float), None, str(obj.name)
    cols = [str(c) for c in obj.columns]
    if "estimate" in cols:
        se = obj["se"].to_numpy(dtype=float) if "se" in cols else None
        return obj.index, obj["estimate"].to_numpy(dtype=float), se, "estimate"
    cands = [c for c in cols if not c.startswith("se(")]
    if column is None:
        if not cands:
            raise DataError("the frame has no estimate column")
        name = cands[0]
    elif str(column) in cands:
        name = str(column)
    else:
        raise DataError(f"column {column!r} is not in the frame; columns are {cols}")
    sename = f"se({name})"
    se = obj[sename].to_numpy(dtype=float) if sename in cols else None
    return obj.index, obj[name].to_numpy(dtype=float), se, name


def plot_derivative(
    estimator_or_frame: Any,
    ax: Any = None,
    *,
    order: int = 1,
    column: Any = None,
    data: Any = None,
    segment: Any = None,
    truth: Any = None,
    alpha: float = 0.05,
    figsize: tuple[float, float] | None = None,
) -> list[Any]:
    """Plot a derivative estimate ``x̂^(k)(t)`` with its pointwise ``1 − alpha`` band.

    The band is ``x̂^(k)(t) ± z_{1-α/2} se(t)``, with ``se`` the method's pointwise standard error
    (``spline``, ``kalman``, ``gp``, ``auto``) or the square root of the diagonal of its
    covariance (``difference``, ``savgol``); methods without either are drawn without a band.

    Parameters
    ----------
    estimator_or_frame : Preprocessor, Series or DataFrame
        A fitted estimator (an unfitted one is fitted to ``data``), or the output of
        :func:`derivreg.derivative` (a Series; a frame with ``estimate``/``se``; or ``d(x)`` with
        ``se(d(x))`` columns).
    ax : Axes or sequence of two Axes, optional
        One Axes: the derivative only. Two: ``[data, derivative]``. Default: a new figure with
        the data above the derivative when data are available.
    order : int
        Derivative order (estimators only).
    column : str, optional
        Which column (default: the first).
    data : Series or DataFrame, optional
        Data to show alongside a frame (and to fit an unfitted estimator to).
    segment : label, optional
        Only this segment (estimators only).
    truth : callable or array, optional
        Known derivative, ``truth(t)`` or values at the samples, drawn for comparison.
    alpha : float
        Band level.
    figsize : tuple, optional

    Returns
    -------
    list of Axes
        ``[data_axes, derivative_axes]``, or ``[derivative_axes]``.
    """
    from derivreg.preprocess.base import Preprocessor

    z = _z(alpha)
    obj = estimator_or_frame
    if isinstance(obj, Preprocessor):
        if not hasattr(obj, "states_"):
            if data is None:
                raise DataError("the estimator is not fitted: fit it first or pass data=")
            obj.fit(data)
        parts, name = _from_estimator(obj, order, column, segment)
        label = f"{type(obj).__name__}"
        dname = name
    elif isinstance(obj, (pd.Series, pd.DataFrame)):
        x, est, se, name = _from_frame(obj, column)
        label = str(obj.attrs.get("estimator", name)).split("(")[0] or name
        parts = [(x, est, se, None, None)]
        dname = None
        if data is not None:
            dser = data if isinstance(data, pd.Series) else None
            if isinstance(data, pd.DataFrame):
                pick = [c for c in data.columns if f"d({c})" == name or name.startswith(f"d({c},")]
                dcol = pick[0] if pick else data.select_dtypes("number").columns[0]
                dser = data[dcol]
            if dser is not None:
                dname = str(dser.name)
                parts = [(x, est, se, dser.reindex(x).to_numpy(dtype=float), None)]
    else:
        raise DataError(
            "plot_derivative needs a Preprocessor or the Series/DataFrame of dr.derivative, got "
            f"{type(obj).__name__}"
        )
    has_data = any(p[3] is not None for p in parts)
    if ax is None:
        n = 2 if has_data else 1
        size = figsize or (7.0, 3.2 * n)
        plt = _pyplot()
        _fig, axs = plt.subplots(n, 1, figsize=size, sharex=True, squeeze=False)
        axes = list(axs[:, 0])
    else:
        axes = _axes_list(ax, 1 if hasattr(ax, "plot") else 2, 1, 1, None)
    dax = axes[-1]
    data_ax = axes[0] if len(axes) == 2 else None
    lhs = f"d({dname})" if order == 1 else f"d({dname}, {order})"
    for i, (t, est, se, y, smooth) in enumerate(parts):
        first = i == 0
        ln = _line(dax, t, est, f"estimate ({label})" if first else None, lw=1.2, color="C0")
        if se is not None:
            _band(
                dax,
                np.asarray(t),
                est,
                se,
                z,
                f"{1 - alpha:.0%} pointwise band" if first else None,
                ln.get_color(),
            )
        if truth is not None:
            tv = truth(np.asarray(t, dtype=float)) if callable(truth) else np.asarray(truth)
            _line(dax, t, tv, "truth" if first else None, lw=1, ls="--", color="k")
        if data_ax is not None and y is not None:
            _line(
                data_ax, t, y, "data" if first else None, ls="none", marker="o", ms=2.5, color="C1"
            )
            if smooth is not None and np.any(np.isfinite(smooth)):
                _line(data_ax, t, smooth, "smoothed" if first else None, lw=1.2, color="C0")
    dax.set_title(f"derivative estimate{'' if dname is None else ' ' + lhs}")
    dax.set_xlabel("time")
    dax.legend(fontsize=8)
    if data_ax is not None:
        data_ax.set_title(f"data{'' if dname is None else ' ' + dname}")
        data_ax.legend(fontsize=8)
    if ax is None:
        axes[0].figure.tight_layout()
    return axes
