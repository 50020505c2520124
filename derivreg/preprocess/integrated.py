"""Cumulative p-fold integrals of sampled series: the building block of the integrated form.

The integrated reformulation regresses ``x`` on p-fold integrals of the regressors,

.. math:: (I^p g)(t) = \\int_{t_0}^{t} \\frac{(t-s)^{p-1}}{(p-1)!} \\, g(s) \\, ds,

started at 0 at the first sample ``t_0`` of every segment (Cauchy's formula for repeated
integration). Two ways to compute it on the sample grid:

* :func:`cumulative_integral` — repeated cumulative quadrature (trapezoid or Simpson) of a smooth
  sampled signal;
* :func:`integrate_input` — the exact p-fold integral of the zero-order-hold (piecewise constant)
  or first-order-hold (piecewise linear) interpolant of an input. Use it for switching inputs: the
  trapezoid rule applied to a held step smears the step over one interval and biases coefficients.

:class:`Integrated` applies either to the columns of a data set, per segment, in the
:class:`~derivreg.preprocess.base.Preprocessor` conventions. It is not a derivative estimator.
"""

from __future__ import annotations

from math import factorial
from typing import Any, Literal, Self

import numpy as np
import pandas as pd
from scipy.integrate import cumulative_simpson, cumulative_trapezoid

from derivreg._typing import FloatArray, InputHold
from derivreg.exceptions import DataError, LengthMismatchError, MethodNotAvailableError
from derivreg.preprocess.base import Preprocessor
from derivreg.timebase import check_time

__all__ = ["Integrated", "cumulative_integral", "integral_name", "integrate_input"]

Rule = Literal["trapezoid", "simpson"]


def integral_name(name: str, order: int) -> str:
    """Column name of the ``order``-fold integral of ``name``: ``I(x)``, ``I(x, 2)``."""
    if order == 0:
        return name
    if order == 1:
        return f"I({name})"
    return f"I({name}, {order})"


def _check_order(order: int) -> int:
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order < 0:
        raise DataError(f"the integration order must be an integer >= 0, got {order!r}")
    return int(order)


def _check_arrays(t: Any, y: Any) -> tuple[FloatArray, FloatArray]:
    t = np.asarray(t, dtype=float)
    y = np.asarray(y, dtype=float)
    if t.ndim != 1:
        raise DataError(f"t must be 1-D, got {t.ndim} dimensions")
    if y.ndim not in (1, 2):
        raise DataError(f"values must be 1-D or 2-D (samples in rows), got {y.ndim} dimensions")
    if y.shape[0] != len(t):
        raise LengthMismatchError(f"t has {len(t)} values but the data have {y.shape[0]} rows")
    check_time(t, what="t", min_points=1)
    return t, y


def cumulative_integral(t: Any, y: Any, order: int = 1, rule: Rule = "trapezoid") -> FloatArray:
    """p-fold cumulative integral of samples by repeated cumulative quadrature, 0 at ``t[0]``.

    Computes ``(I^p y)(t_k)`` (see the module docstring) by applying the cumulative rule ``p``
    times on the sample grid (which may be irregular).

    Parameters
    ----------
    t : array (n,)
        Strictly increasing sample times.
    y : array (n,) or (n, k)
        Samples in rows.
    order : int
        Number of integrations ``p`` (0 returns a copy of ``y``).
    rule : {"trapezoid", "simpson"}
        ``"trapezoid"``: :func:`scipy.integrate.cumulative_trapezoid`; error ``O(Δ²)`` for smooth
        ``y``; ``p = 1`` is exact for lines, ``p = 2`` for constants, ``p = 3`` only for zero
        (each pass integrates a polynomial of one degree more). For exactness at any ``p`` on
        a piecewise-linear signal use :func:`integrate_input` with ``hold="linear"``.
        ``"simpson"``: :func:`scipy.integrate.cumulative_simpson` (quadratic through each three
        points, also on irregular grids); error ``O(Δ⁴)`` on uniform grids for smooth ``y``
        (measured: rate 4 for p = 1, 2), ``p = 1`` exact for quadratics.

    Returns
    -------
    ndarray, same shape as ``y``.
    """
    order = _check_order(order)
    if rule not in ("trapezoid", "simpson"):
        raise DataError(f"rule must be 'trapezoid' or 'simpson', got {rule!r}")
    t, y = _check_arrays(t, y)
    out = np.array(y, dtype=float)
    if len(t) < 2:
        return np.zeros_like(out) if order > 0 else out
    for _ in range(order):
        if rule == "trapezoid":
            out = cumulative_trapezoid(out, x=t, axis=0, initial=0.0)
        else:
            out = cumulative_simpson(out, x=t, axis=0, initial=0.0)
    return out


def integrate_input(t: Any, u: Any, order: int = 1, hold: InputHold = "zoh") -> FloatArray:
    """Exact p-fold integral of a held input, 0 at ``t[0]``.

    The input between samples is ``u(s) = u_k`` (``"zoh"``, zero-order hold: held until the next
    sample) or ``u_k + (u_{k+1} - u_k)(s - t_k)/Δ_k`` (``"linear"``, first-order hold). Over one
    interval of length ``Δ``, Taylor's formula with the integral remainder gives the recursion

    .. math:: I^j(t_{k+1}) = \\sum_{i=0}^{j-1} I^{j-i}(t_k) \\frac{Δ^i}{i!}
              + u_k \\frac{Δ^j}{j!} + [u_{k+1} - u_k] \\frac{Δ^j}{(j+1)!},

    (last term only for ``"linear"``), evaluated level by level with cumulative sums. The result
    is exact (to rounding) for that interpolation on any grid.

    Parameters
    ----------
    t : array (n,)
        Strictly increasing sample times.
    u : array (n,) or (n, k)
        Input samples in rows.
    order : int
        Number of integrations ``p``.
    hold : {"zoh", "linear"}
        Interpolation of the input between samples.

    Returns
    -------
    ndarray, same shape as ``u``.
    """
    order = _check_order(order)
    if hold not in ("zoh", "linear"):
        raise DataError(f"hold must be 'zoh' or 'linear', got {hold!r}")
    t, u = _check_arrays(t, u)
    if order == 0:
        return np.array(u, dtype=float)
    squeeze = u.ndim == 1
    u2 = u.reshape(len(t), -1)
    h = np.diff(t)[:, None]
    levels: list[FloatArray] = []  # levels[j-1] = I^j at every sample
    for j in range(1, order + 1):
        incr = u2[:-1] * h**j / factorial(j)
        if hold == "linear":
            incr = incr + (u2[1:] - u2[:-1]) * h**j / factorial(j + 1)
        for i in range(1, j):
            incr = incr + levels[j - i - 1][:-1] * h**i / factorial(i)
        level = np.zeros_like(u2)
        np.cumsum(incr, axis=0, out=level[1:])
        levels.append(level)
    out = levels[-1]
    return out[:, 0] if squeeze else out


class Integrated(Preprocessor):
    """p-fold cumulative integrals of the columns of a data set, per segment.

    Model: ``(I^p x)(t_k) = ∫_{t_0}^{t_k} (t_k - s)^{p-1}/(p-1)! x(s) ds`` with ``t_0`` the first
    sample of the segment of ``t_k``; nothing is integrated across a segment boundary.

    Parameters
    ----------
    order : int
        Default number of integrations ``p`` for :meth:`integrate`.
    rule : {"trapezoid", "simpson"}
        Quadrature for smooth sampled signals (see :func:`cumulative_integral`).
    hold : {"zoh", "linear"}, optional
        If given, integrate the columns exactly as held inputs (see :func:`integrate_input`)
        instead of by quadrature.

    Notes
    -----
    A subclass of :class:`~derivreg.preprocess.base.Preprocessor` for its validation, segment and
    pandas handling (``fit(data, time=, segment=, ...) -> self``), but not a derivative
    estimator: :meth:`derivative` raises :class:`MethodNotAvailableError`; use :meth:`integrate`.
    """

    name = "integrated"
    max_order = 3

    def __init__(
        self, order: int = 1, rule: Rule = "trapezoid", hold: InputHold | None = None
    ) -> None:
        self.order = order
        self.rule = rule
        self.hold = hold

    def min_points(self) -> int:
        return 2

    def fit(self, data: pd.DataFrame | pd.Series | np.ndarray, **kwargs: Any) -> Self:
        """Validate the parameters and store the data (see :meth:`Preprocessor.fit`)."""
        _check_order(self.order)
        if self.rule not in ("trapezoid", "simpson"):
            raise DataError(f"rule must be 'trapezoid' or 'simpson', got {self.rule!r}")
        if self.hold not in (None, "zoh", "linear"):
            raise DataError(f"hold must be None, 'zoh' or 'linear', got {self.hold!r}")
        return super().fit(data, **kwargs)

    def _fit_1d(self, t: FloatArray, y: FloatArray) -> FloatArray:
        return np.array(y, dtype=float)

    def _derivative_1d(self, state: Any, t: FloatArray, order: int) -> tuple[FloatArray, None]:
        raise MethodNotAvailableError(
            "Integrated computes integrals, not derivatives: use integrate(order)"
        )

    def integrate_arrays(self, order: int | None = None) -> FloatArray:
        """p-fold integrals as an array ``(n_kept, n_columns)`` on the kept rows."""
        self._check_fitted()
        order = _check_order(self.order if order is None else order)
        sd = self.data_
        out = np.full(sd.values.shape, np.nan)
        for (j, i), y in self.states_.items():
            pos = sd.segments[i]
            if self.hold is None:
                out[pos, j] = cumulative_integral(sd.t[pos], y, order, self.rule)
            else:
                out[pos, j] = integrate_input(sd.t[pos], y, order, self.hold)
        return out

    def integrate(self, order: int | None = None) -> Any:
        """The ``order``-fold cumulative integrals, in the caller's shape and index.

        Parameters
        ----------
        order : int, optional
            Number of integrations (default: the ``order`` parameter).

        Returns
        -------
        Series named ``I(x)`` / ``I(x, 2)`` for a Series, DataFrame with such columns for a
        DataFrame, ndarray for an ndarray; NaN on rows dropped by ``nan_policy="drop"``.
        """
        order = _check_order(self.order if order is None else order)
        values = self.integrate_arrays(order)
        sd = self.data_
        out = sd.to_caller(values)
        names = [integral_name(c, order) for c in sd.columns]
        attrs = {"method": self.name, "order": order, "estimator": repr(self)}
        if self._kind_ == "array1":
            return out[:, 0]
        if self._kind_ == "array2":
            return out
        if self._kind_ == "series":
            res: Any = pd.Series(out[:, 0], index=sd.index, name=names[0])
        else:
            res = pd.DataFrame(dict(zip(names, out.T, strict=True)), index=sd.index)
        res.attrs.update(attrs)
        return res
