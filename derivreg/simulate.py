"""Systems with known coefficients, simulated exactly, for tests, docs and benchmarks.

Every simulator returns a :class:`pandas.DataFrame` whose ``.attrs["truth"]`` holds the true
coefficients keyed by the formula term that multiplies them (``"x"``, ``"u"``, ``"Intercept"``,
``"d(x)"``, ``"sign(d(x))"``, ``"x:y"``, ...), so that a fit can be compared with the truth by name.

Exactness
---------
* :func:`first_order` and :func:`second_order` step the exact discretisation of the linear SDE
  between the sample times (held or linearly interpolated input, exact process-noise covariance):
  the samples have exactly the distribution of the continuous-time model.
* :func:`motor` steps the DC-motor relation with the exact matrix exponential while the sign of
  the velocity is constant, locates velocity zero crossings and breakaway (stiction) instants by
  root finding on the closed-form flow, and so is exact without process noise.
* :func:`logistic` uses the closed-form solution; :func:`ode`, :func:`lotka_volterra` and
  :func:`sir` use :func:`scipy.integrate.solve_ivp` (DOP853, ``rtol=1e-10``, ``atol=1e-12``).

Random numbers come from independent streams spawned from ``seed`` (input, process noise,
measurement noise), so adding measurement noise leaves the true path of the same seed unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.linalg
from scipy.integrate import solve_ivp
from scipy.optimize import brentq

from derivreg._typing import FloatArray
from derivreg.exceptions import ConvergenceError, DataError, LengthMismatchError, TimeIndexError

__all__ = [
    "INPUT_KINDS",
    "MOTOR_TESTS",
    "as_sysid_log",
    "discretize",
    "exact_terms",
    "first_order",
    "inputs",
    "logistic",
    "lotka_volterra",
    "motor",
    "ode",
    "second_order",
    "sir",
    "sysid_check_log",
]

INPUT_KINDS = ("switching", "square", "multisine", "step", "ramp", "constant")
MOTOR_TESTS = ("slow-forward", "slow-backward", "fast-forward", "fast-backward")
_HOLDS = ("zoh", "linear")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _streams(seed: Any, k: int) -> list[np.random.Generator]:
    """``k`` independent generators spawned from ``seed`` (None: fresh entropy)."""
    if isinstance(seed, np.random.Generator):
        return list(seed.spawn(k))
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(k)]


def _time_grid(n: int, dt: float, t: Any) -> FloatArray:
    if t is None:
        if int(n) < 2:
            raise DataError(f"n must be at least 2, got {n}")
        if not np.isfinite(dt) or dt <= 0:
            raise DataError(f"dt must be a positive finite number, got {dt}")
        return dt * np.arange(int(n), dtype=float)
    times = np.asarray(t, dtype=float).ravel()
    if times.size < 2:
        raise DataError("t must hold at least 2 sample times")
    if not np.all(np.isfinite(times)):
        raise TimeIndexError("t contains non-finite values")
    if np.any(np.diff(times) <= 0):
        raise TimeIndexError("t must be strictly increasing")
    return times


def _check_hold(input_hold: str) -> str:
    if input_hold not in _HOLDS:
        raise DataError(f"input_hold must be one of {_HOLDS}, got {input_hold!r}")
    return input_hold


def _input_values(
    u: Any, t: FloatArray, *, period: float | None, rng: np.random.Generator
) -> FloatArray:
    """Input samples at ``t`` from a kind name, an array or a callable ``u(t)``."""
    if isinstance(u, str):
        return inputs(u, t, period=period, seed=rng)
    if callable(u):
        vals = np.asarray(u(t), dtype=float)
        if vals.shape == ():
            vals = np.full(t.shape, float(vals))
    else:
        vals = np.asarray(u, dtype=float)
        if vals.shape == ():
            vals = np.full(t.shape, float(vals))
    vals = vals.ravel()
    if vals.size != t.size:
        raise LengthMismatchError(f"u has {vals.size} samples but there are {t.size} times")
    if not np.all(np.isfinite(vals)):
        raise DataError("the input u contains non-finite values")
    return vals


def _expm1_over(z: FloatArray) -> FloatArray:
    """``expm1(z) / z`` with the limit 1 at z = 0."""
    z = np.asarray(z, dtype=float)
    out = np.ones_like(z)
    nz = z != 0
    out[nz] = np.expm1(z[nz]) / z[nz]
    return out


def exact_terms(a: float, dts: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Exact discretisation terms of ``dx = (a x + g(t)) dt + σ dW`` over steps ``Δ``.

    Returns ``φ = e^{aΔ}``, ``I0 = (φ − 1)/a``, ``I1 = (φ − 1)/a² − Δ/a`` and
    ``V = (φ² − 1)/(2a)`` (the process-noise variance per unit σ²), each with its a → 0 limit
    (``Δ``, ``Δ²/2``, ``Δ``); so ``x_{k+1} = φ x_k + g_k I0 + ġ_k I1 + η_k``, ``Var η = σ² V``.
    """
    dts = np.asarray(dts, dtype=float)
    z = a * dts
    phi = np.exp(z)
    i0 = dts * _expm1_over(z)
    small = np.abs(z) < 0.5
    zs = np.where(small, 1.0, z)
    phi2 = (np.expm1(zs) - zs) / zs**2
    series = np.zeros_like(z)
    term = np.ones_like(z)
    for k in range(24):
        series += term / ((k + 1) * (k + 2))
        term = term * z / (k + 1)
    i1 = dts**2 * np.where(small, series, phi2)
    var = dts * _expm1_over(2 * z)
    return phi, i0, i1, var


def _frame(t: FloatArray, columns: dict[str, FloatArray]) -> pd.DataFrame:
    return pd.DataFrame(columns, index=pd.Index(t, name="t", dtype=float))


def _measure(
    x: FloatArray, tau: float, rng: np.random.Generator, *, log_noise: bool = False
) -> FloatArray:
    if tau < 0:
        raise DataError(f"tau must be non-negative, got {tau}")
    if tau == 0:
        return x.copy()
    e = rng.standard_normal(x.shape)
    if log_noise:
        if np.any(x <= 0):
            raise DataError("log_noise=True needs a positive true state")
        return x * np.exp(tau * e)
    return x + tau * e


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------
def inputs(
    kind: str,
    t: Any,
    *,
    period: float | None = None,
    amplitude: float = 1.0,
    seed: Any = None,
) -> FloatArray:
    """Input signal sampled at the times ``t``.

    Parameters
    ----------
    kind : str
        * ``"switching"``: ``±amplitude``, alternating sign, each level held for a random duration
          uniform on ``[0.5, 1.5]·period`` (first sign random); default period: span / 10.
        * ``"square"``: the same with fixed durations ``period`` (first level ``+amplitude``).
        * ``"multisine"``: ``amplitude·(sin(0.5 ω t') + 0.5 sin(1.3 ω t'))``, ``ω = 2π/period``
          (default ω = 1), ``t' = t − t[0]``.
        * ``"step"``: 0, then ``amplitude`` from the first sample at or after ``t[0] + period``
          (default period: span / 10), so that a held input switches exactly at a sample.
        * ``"ramp"``: ``amplitude·(t − t[0]) / period`` (default period 1: slope ``amplitude``).
        * ``"constant"``: ``amplitude``.
    t : array_like
        Sample times (increasing).
    period : float, optional
        Time scale of the signal, as above.
    amplitude : float
        Level of the signal.
    seed : int, Generator or None
        Randomness of ``"switching"``.

    Returns
    -------
    ndarray
        ``u(t)``.
    """
    times = np.asarray(t, dtype=float).ravel()
    if times.size == 0:
        return np.empty(0)
    t0 = times[0]
    span = float(times[-1] - t0)
    if period is not None and (not np.isfinite(period) or period <= 0):
        raise DataError(f"period must be a positive finite number, got {period}")
    if kind in ("switching", "square"):
        p = period if period is not None else max(span / 10, np.finfo(float).tiny)
        if kind == "square":
            level = np.where(np.floor((times - t0) / p) % 2 == 0, 1.0, -1.0)
            return amplitude * level
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        n_switch = int(np.ceil(span / (0.5 * p))) + 2
        edges = t0 + np.cumsum(rng.uniform(0.5 * p, 1.5 * p, size=n_switch))
        first = rng.choice([-1.0, 1.0])
        count = np.searchsorted(edges, times, side="right")
        return amplitude * first * np.where(count % 2 == 0, 1.0, -1.0)
    if kind == "multisine":
        w = 2 * np.pi / period if period is not None else 1.0
        tt = times - t0
        return amplitude * (np.sin(0.5 * w * tt) + 0.5 * np.sin(1.3 * w * tt))
    if kind == "step":
        target = t0 + (period if period is not None else span / 10)
        k = min(int(np.searchsorted(times, target, side="left")), times.size - 1)
        return np.where(np.arange(times.size) >= k, float(amplitude), 0.0)
    if kind == "ramp":
        p = period if period is not None else 1.0
        return amplitude * (times - t0) / p
    if kind == "constant":
        return np.full(times.shape, float(amplitude))
    raise DataError(f"unknown input kind {kind!r}; use one of {INPUT_KINDS}")


# --------------------------------------------------------------------------------------------
# first order
# --------------------------------------------------------------------------------------------
def first_order(
    a: float,
    b: float = 1.0,
    c: float = 0.0,
    *,
    n: int = 500,
    dt: float = 0.1,
    t: Any = None,
    u: Any = "switching",
    input_hold: str = "zoh",
    x0: float | None = None,
    sigma: float = 0.0,
    tau: float = 0.0,
    seed: Any = None,
    substeps: int = 1,
) -> pd.DataFrame:
    r"""Simulate ``dx = (a x + b u + c) dt + σ dW`` exactly, observed as ``y = x + τ e``.

    Between samples the input is held (``input_hold="zoh"``) or linear (``"linear"``) and the
    exact recursion is used, with ``φ = e^{aΔ}``:

    .. math::

        x_{k+1} = φ x_k + b [u_k I_0 + (u_{k+1} − u_k)/Δ · I_1] + c I_0 + η_k,\quad
        I_0 = (φ−1)/a,\ I_1 = (φ−1)/a² − Δ/a,\ \operatorname{Var} η_k = σ²(φ²−1)/(2a)

    (a → 0 limits ``Δ``, ``Δ²/2``, ``σ²Δ``). Irregular sample times are allowed (``t=``).

    Parameters
    ----------
    a, b, c : float
        Coefficients of ``x``, ``u`` and the intercept.
    n, dt : int, float
        Regular grid ``t_k = k·dt``, k = 0..n−1 (ignored when ``t`` is given).
    t : array_like, optional
        Sample times (strictly increasing; irregular allowed).
    u : str, array_like or callable
        Input: a kind of :func:`inputs` (time scale ``2/|a|`` for switching/square, ``ω = |a|``
        for multisine; ``|a|`` replaced by 1 when a = 0), input samples at ``t``, or ``u(t)``.
    input_hold : {"zoh", "linear"}
        Input between samples: held at ``u_k`` or linearly interpolated.
    x0 : float, optional
        Initial state. Default: the stationary mean for the first input value,
        ``−(b u_0 + c)/a`` when ``a < 0``, else 0. (Deterministic: the initial state carries no
        stationary noise.)
    sigma, tau : float
        Process-noise intensity σ and measurement-noise SD τ.
    seed : int, Generator or None
        Seed of the random streams (input, process noise, measurement noise).
    substeps : int
        1 (default): the input is held/interpolated between the returned samples, exactly.
        ``m > 1``: a kind name or callable input is evaluated on a grid ``m`` times finer and
        held/interpolated there (still exact for that fine input, process noise included); the
        returned rows are every m-th fine sample. Use it to approximate a continuous input such
        as a multisine (the error of the linear hold falls as ``1/m²``). Array inputs are
        refined by their own hold, which changes nothing.

    Returns
    -------
    DataFrame
        Index ``t`` (float time); columns ``x`` (observed), ``x_true``, ``u``.
        ``attrs``: ``truth = {"x": a, "u": b, "Intercept": c}``, ``sigma``, ``tau``,
        ``input_hold``.
    """
    hold = _check_hold(input_hold)
    if sigma < 0:
        raise DataError(f"sigma must be non-negative, got {sigma}")
    times = _time_grid(n, dt, t)
    rng_u, rng_w, rng_e = _streams(seed, 3)
    scale = abs(a) if a != 0 else 1.0
    period = None
    if isinstance(u, str):
        period = 2.0 / scale if u in ("switching", "square") else None
        if u == "multisine":
            period = 2 * np.pi / scale
    m = int(substeps)
    if m < 1:
        raise DataError(f"substeps must be a positive integer, got {substeps}")
    dts = np.full(times.size - 1, float(dt)) if t is None else np.diff(times)
    if m > 1:  # simulate on a grid m times finer; return every m-th sample
        frac = np.arange(m) / m
        fine = np.concatenate([(times[:-1, None] + dts[:, None] * frac).ravel(), times[-1:]])
        if not isinstance(u, str) and not callable(u):
            vals = _input_values(u, times, period=period, rng=rng_u)
            if hold == "linear":
                uf = np.interp(fine, times, vals)
            else:
                uf = np.append(np.repeat(vals[:-1], m), vals[-1])
        else:
            uf = _input_values(u, fine, period=period, rng=rng_u)
        dfine = np.repeat(dts / m, m)
    else:
        fine, dfine = times, dts
        uf = _input_values(u, times, period=period, rng=rng_u)

    phi, i0, i1, var = exact_terms(a, dfine)
    slope = np.diff(uf) / dfine if hold == "linear" else np.zeros_like(dfine)
    forcing = b * (uf[:-1] * i0 + slope * i1) + c * i0
    if sigma > 0:
        forcing = forcing + sigma * np.sqrt(var) * rng_w.standard_normal(dfine.size)
    if x0 is None:
        x0 = -(b * uf[0] + c) / a if a < 0 else 0.0
    x = _ar1(phi, forcing, float(x0))[::m]
    uu = uf[::m]
    out = _frame(times, {"x": _measure(x, tau, rng_e), "x_true": x, "u": uu})
    out.attrs.update(
        truth={"x": float(a), "u": float(b), "Intercept": float(c)},
        sigma=float(sigma),
        tau=float(tau),
        input_hold=hold,
        x0=float(x0),
        substeps=m,
    )
    return out


def _ar1(phi: FloatArray, forcing: FloatArray, x0: float) -> FloatArray:
    """``x_{k+1} = φ_k x_k + f_k`` from ``x_0``."""
    from scipy.signal import lfilter

    if np.all(phi == phi[0]):
        y, _ = lfilter([1.0], [1.0, -phi[0]], forcing, zi=[phi[0] * x0])
        return np.concatenate([[x0], y])
    x = np.empty(phi.size + 1)
    x[0] = x0
    xk = x0
    for k, (p, f) in enumerate(zip(phi.tolist(), forcing.tolist(), strict=True)):
        xk = p * xk + f
        x[k + 1] = xk
    return x


# --------------------------------------------------------------------------------------------
# linear systems of any order (Van Loan)
# --------------------------------------------------------------------------------------------
def discretize(
    A: FloatArray, B: FloatArray, c: FloatArray, G: FloatArray | None, dts: FloatArray
) -> dict[str, FloatArray]:
    r"""Exact discretisation of ``dz = (A z + B w(t) + c) dt + G dW`` over the steps ``Δ_k``.

    With ``w(t) = w_k + s_k (t − t_k)`` on each step (``s_k = 0`` for a held input),
    ``z_{k+1} = Φ z_k + Γ_w w_k + Γ_s s_k + γ_c + η_k``, ``Cov η = Q``; all blocks come from
    matrix exponentials of augmented matrices (Van Loan), so ``A`` may be singular.

    Returns
    -------
    dict
        ``Phi`` (K, n, n), ``Gw`` (K, n, m), ``Gs`` (K, n, m), ``gc`` (K, n), ``Q`` (K, n, n)
        (zeros when ``G`` is None), for the K steps.
    """
    A = np.atleast_2d(np.asarray(A, dtype=float))
    nz = A.shape[0]
    B = np.asarray(B, dtype=float).reshape(nz, -1)
    m = B.shape[1]
    c = np.asarray(c, dtype=float).reshape(nz)
    dts = np.asarray(dts, dtype=float)
    uniq, inv = np.unique(dts, return_inverse=True)
    size = nz + 2 * m + 1
    M = np.zeros((size, size))
    M[:nz, :nz] = A
    M[:nz, nz : nz + m] = B
    M[nz : nz + m, nz + m : nz + 2 * m] = np.eye(m)
    M[:nz, -1] = c
    E = scipy.linalg.expm(uniq[:, None, None] * M)
    out = {
        "Phi": E[:, :nz, :nz],
        "Gw": E[:, :nz, nz : nz + m],
        "Gs": E[:, :nz, nz + m : nz + 2 * m],
        "gc": E[:, :nz, -1],
    }
    if G is None:
        out["Q"] = np.zeros((uniq.size, nz, nz))
    else:
        G = np.asarray(G, dtype=float).reshape(nz, -1)
        H = np.zeros((2 * nz, 2 * nz))
        H[:nz, :nz] = -A
        H[:nz, nz:] = G @ G.T
        H[nz:, nz:] = A.T
        F = scipy.linalg.expm(uniq[:, None, None] * H)
        phi = np.transpose(F[:, nz:, nz:], (0, 2, 1))
        Q = phi @ F[:, :nz, nz:]
        out["Q"] = 0.5 * (Q + np.transpose(Q, (0, 2, 1)))
    return {k: v[inv] for k, v in out.items()}


def _noise_draws(Q: FloatArray, rng: np.random.Generator) -> FloatArray:
    """Draws ``η_k ~ N(0, Q_k)`` for a stack of covariances (PSD allowed)."""
    w, V = np.linalg.eigh(Q)
    w = np.clip(w, 0.0, None)
    e = rng.standard_normal(Q.shape[:2])
    return np.einsum("kij,kj->ki", V, np.sqrt(w) * e)


def second_order(
    a0: float,
    a1: float,
    b: float = 1.0,
    c: float = 0.0,
    *,
    n: int = 500,
    dt: float = 0.05,
    t: Any = None,
    u: Any = "switching",
    input_hold: str = "zoh",
    x0: float = 0.0,
    v0: float = 0.0,
    sigma: float = 0.0,
    tau: float = 0.0,
    seed: Any = None,
) -> pd.DataFrame:
    r"""Simulate the linear second-order system ``x'' = a0 x + a1 x' + b u + c`` exactly.

    State ``(x, v = x')``, ``dv = (a0 x + a1 v + b u + c) dt + σ dW``, observed ``y = x + τ e``;
    exact discretisation (Van Loan block exponentials, :func:`discretize`) with a held or linear
    input. For the DC motor with Coulomb friction use :func:`motor`.

    Parameters
    ----------
    a0, a1, b, c : float
        Coefficients of ``x``, ``d(x)``, ``u`` and the intercept.
    n, dt, t, u, input_hold, sigma, tau, seed
        As in :func:`first_order` (input time scale from the natural frequency
        ``sqrt(|a0|)``, or 1).
    x0, v0 : float
        Initial position and velocity.

    Returns
    -------
    DataFrame
        Index ``t``; columns ``x`` (observed), ``x_true``, ``v_true``, ``u``.
        ``attrs["truth"] = {"x": a0, "d(x)": a1, "u": b, "Intercept": c}``.
    """
    hold = _check_hold(input_hold)
    if sigma < 0:
        raise DataError(f"sigma must be non-negative, got {sigma}")
    times = _time_grid(n, dt, t)
    rng_u, rng_w, rng_e = _streams(seed, 3)
    scale = np.sqrt(abs(a0)) if a0 != 0 else 1.0
    period = None
    if isinstance(u, str):
        period = 2 * np.pi / scale if u == "multisine" else 2.0 / scale
    uu = _input_values(u, times, period=period, rng=rng_u)
    dts = np.full(times.size - 1, float(dt)) if t is None else np.diff(times)
    A = np.array([[0.0, 1.0], [a0, a1]])
    d = discretize(A, [[0.0], [b]], [0.0, c], [[0.0], [sigma]] if sigma > 0 else None, dts)
    slope = np.diff(uu) / dts if hold == "linear" else np.zeros_like(dts)
    f = d["Gw"][:, :, 0] * uu[:-1, None] + d["Gs"][:, :, 0] * slope[:, None] + d["gc"]
    if sigma > 0:
        f = f + _noise_draws(d["Q"], rng_w)
    z = np.empty((times.size, 2))
    z[0] = (x0, v0)
    for k in range(dts.size):
        z[k + 1] = d["Phi"][k] @ z[k] + f[k]
    out = _frame(
        times,
        {"x": _measure(z[:, 0], tau, rng_e), "x_true": z[:, 0], "v_true": z[:, 1], "u": uu},
    )
    out.attrs.update(
        truth={"x": float(a0), "d(x)": float(a1), "u": float(b), "Intercept": float(c)},
        sigma=float(sigma),
        tau=float(tau),
        input_hold=hold,
    )
    return out


# --------------------------------------------------------------------------------------------
# DC motor / mechanism with Coulomb friction and stiction
# --------------------------------------------------------------------------------------------
def _phis(z: float) -> tuple[float, float, float]:
    """``φ1 = (e^z−1)/z``, ``φ2 = (e^z−1−z)/z²``, ``φ3 = (e^z−1−z−z²/2)/z³``.

    Limits 1, 1/2, 1/6 at z = 0; Taylor series for ``|z| < 0.5`` (no cancellation).
    """
    if abs(z) < 0.5:
        p1 = p2 = p3 = 0.0
        term = 1.0  # z^k / k!
        for k in range(24):
            p1 += term / (k + 1)
            p2 += term / ((k + 1) * (k + 2))
            p3 += term / ((k + 1) * (k + 2) * (k + 3))
            term *= z / (k + 1)
        return p1, p2, p3
    em1 = math.expm1(z)
    return em1 / z, (em1 - z) / z**2, (em1 - z - 0.5 * z * z) / z**3


class _MotorStepper:
    """Exact stepping of ``v' = a v + b u(t) + c·sign(v)`` with stiction, ``x' = v``.

    While the friction sign ``s`` is constant the forcing ``g(r) = g0 + g1 r`` is linear in the
    time ``r`` since the stretch began, and the flow is closed-form:
    ``v(r) = e^{ar} v0 + g0 r φ1 + g1 r² φ2``, ``x(r) = x0 + v0 r φ1 + g0 r² φ2 + g1 r³ φ3``
    with ``φ_j = φ_j(a r)``.
    """

    def __init__(self, a: float, b: float, kS: float, friction: str, sigma: float) -> None:
        self.a, self.b, self.kS = a, b, kS
        self.c = -b * kS
        self.friction = friction
        self.sigma = sigma

    def flow(self, x: float, v: float, g0: float, g1: float, r: float) -> tuple[float, float]:
        z = self.a * r
        p1, p2, p3 = _phis(z)
        v_new = math.exp(z) * v + g0 * r * p1 + g1 * r * r * p2
        x_new = x + v * r * p1 + g0 * r * r * p2 + g1 * r**3 * p3
        return x_new, v_new

    def run(
        self,
        t: FloatArray,
        u: FloatArray,
        hold: str,
        rng: np.random.Generator,
        start: tuple[float, float] = (0.0, 0.0),
    ) -> tuple[FloatArray, FloatArray]:
        dts = np.diff(t)
        if self.sigma > 0:
            uniq, inv = np.unique(dts, return_inverse=True)
            A = np.array([[0.0, 1.0], [0.0, self.a]])
            Q = discretize(A, [[0.0], [0.0]], [0.0, 0.0], [[0.0], [self.sigma]], uniq)["Q"]
            etas = _noise_draws(Q[inv], rng).tolist()
        x = np.zeros(t.size)
        v = np.zeros(t.size)
        xk, vk = float(start[0]), float(start[1])
        x[0], v[0] = xk, vk
        uu = u.tolist()
        for k, delta in enumerate(dts.tolist()):
            slope = (uu[k + 1] - uu[k]) / delta if hold == "linear" else 0.0
            if self.friction == "sysid":
                g0 = self.b * uu[k] + self.c * _sign(vk)
                xk, vk = self.flow(xk, vk, g0, self.b * slope, delta)
            else:
                xk, vk = self._interval(xk, vk, uu[k], slope, delta)
            if self.sigma > 0 and vk != 0.0:
                xk, vk = xk + etas[k][0], vk + etas[k][1]
            x[k + 1], v[k + 1] = xk, vk
        return x, v

    def _interval(
        self, x: float, v: float, u0: float, m: float, delta: float
    ) -> tuple[float, float]:
        b, c, kS = self.b, self.c, self.kS
        r = 0.0
        for _ in range(64):
            if v == 0.0:
                ur = u0 + m * r
                if abs(ur) > kS:
                    s = _sign(ur)
                elif m == 0.0:
                    return x, 0.0  # held by static friction for the whole interval
                else:
                    r1 = (_sign(m) * kS - u0) / m  # |u| reaches kS (|u| increasing)
                    if r1 >= delta or r1 < r:
                        return x, 0.0
                    r, s = max(r1, r), _sign(m)
            else:
                s = _sign(v)
            g0 = b * (u0 + m * r) + c * s
            g1 = b * m
            rem = delta - r
            lo_g, hi_g = s * g0, s * (g0 + g1 * rem)
            if min(lo_g, hi_g) >= 0.0:  # forcing pushes along the motion: it cannot stop
                return self.flow(x, v, g0, g1, rem)
            xe, ve = self.flow(x, v, g0, g1, rem)
            if max(lo_g, hi_g) <= 0.0 and self.a <= 0.0:
                # forcing opposes the motion throughout: s·v decreases while positive and cannot
                # return, so the sign at the end tells whether it stopped
                if s * ve > 0.0:
                    return xe, ve
                lo, hi = 0.0, rem
            else:
                grid = np.linspace(0.0, rem, 33)[1:].tolist()
                vg = [self.flow(x, v, g0, g1, rr)[1] for rr in grid]
                hit = [j for j, val in enumerate(vg) if s * val <= 0.0]
                if not hit:
                    return xe, ve
                j = hit[0]
                lo, hi = (0.0 if j == 0 else grid[j - 1]), grid[j]
            if s * self.flow(x, v, g0, g1, hi)[1] == 0.0:
                rstar = hi
            else:
                rstar = brentq(
                    lambda rr, x=x, v=v, g0=g0, g1=g1: self.flow(x, v, g0, g1, rr)[1],
                    lo,
                    hi,
                    xtol=1e-300,
                    rtol=4 * np.finfo(float).eps,
                )
            x, _ = self.flow(x, v, g0, g1, rstar)
            v = 0.0
            r = r + rstar
            if r >= delta:
                return x, 0.0
        raise ConvergenceError("motor stepping did not settle within a sample interval")


def _sign(value: float) -> float:
    return 1.0 if value > 0 else (-1.0 if value < 0 else 0.0)


def motor(
    kS: float,
    kV: float,
    kA: float,
    *,
    dt: float = 0.005,
    ramp: float = 0.25,
    step: float = 7.0,
    tests: Sequence[str] = MOTOR_TESTS,
    quasistatic_duration: float = 10.0,
    dynamic_duration: float | None = None,
    steady_state: float = 0.0,
    sigma: float = 0.0,
    tau: float = 0.0,
    tau_velocity: float = 0.0,
    velocity_quantum: float | None = None,
    leading_zeros: int = 0,
    dt_jitter: float = 0.0,
    input_hold: str = "zoh",
    friction: str = "stiction",
    clock_offset: float | None = None,
    seed: Any = None,
) -> pd.DataFrame:
    r"""Simulate a SysId-style characterisation of a DC motor / mechanism.

    .. math::

        k_A x'' = u − k_V x' − k_S \operatorname{sign}(x'),\quad\text{i.e.}\quad
        x'' = a x' + b u + c \operatorname{sign}(x'),\ a = −k_V/k_A,\ b = 1/k_A,\ c = −k_S/k_A

    Four kinds of test, each its own segment starting from rest at ``x = 0``: quasistatic ramps
    ``u = ±ramp·t`` (``"slow-forward"``, ``"slow-backward"``) and dynamic steps ``u = ±step``
    (``"fast-forward"``, ``"fast-backward"``).

    Exactness: while the sign of the velocity is constant the dynamics are linear and are stepped
    with the matrix exponential; velocity zero crossings and breakaway instants are located by
    root finding on the closed-form flow. With ``friction="stiction"`` (default) a mechanism at
    rest stays at rest while ``|u| ≤ kS``; with ``friction="sysid"`` the friction sign is that of
    the velocity at the start of each sample interval and ``sign(0) = 0`` (no stiction) — the
    plant of WPILib SysId's own noise-free check (see :func:`sysid_check_log`).

    Parameters
    ----------
    kS, kV, kA : float
        Static-friction voltage, velocity gain and acceleration gain (``kA > 0``).
    dt : float
        Sample period (controller loop), seconds.
    ramp, step : float
        Quasistatic ramp rate (V/s) and dynamic step voltage (V).
    tests : sequence of str
        Which tests to run, in order, from ``"slow-forward"``, ``"slow-backward"``,
        ``"fast-forward"``, ``"fast-backward"``.
    quasistatic_duration : float
        Length of each ramp test (s); ``round(duration/dt)`` samples.
    dynamic_duration : float, optional
        Length of each step test before the extra steady state; default five time constants
        ``5·kA/kV`` (at least 1 s).
    steady_state : float
        Extra seconds appended to each dynamic test, spent at the terminal velocity
        ``(step − kS)/kV`` (long steady state dilutes the information on kA).
    sigma : float
        Process noise on the acceleration (``dv = … dt + σ dW``); exact (Van Loan) increments
        while moving, none while held by static friction. Zero-crossing handling under process
        noise is approximate (the noise is added at the sample times).
    tau, tau_velocity : float
        Measurement-noise SDs of position and velocity.
    velocity_quantum : float, optional
        Measured velocity rounded to multiples of this (encoder-like repeated values).
    leading_zeros : int
        Rows at 0 V at the start of each dynamic test (counted within its duration).
    dt_jitter : float
        Sample intervals ``dt·(1 + dt_jitter·U(−1, 1))`` (``0 ≤ dt_jitter < 1``).
    input_hold : {"zoh", "linear"}
        Voltage between samples for the ramps: held at the logged value (default, what a
        controller does) or the continuous ramp. Steps are piecewise constant either way.
    friction : {"stiction", "sysid"}
        Friction model, as above.
    clock_offset : float, optional
        None (default): ``t`` starts at 0 in each test. A number: the tests are laid on one
        controller clock starting at ``clock_offset``, separated by 2 s pauses.
    seed : int, Generator or None
        Seed of the jitter, process-noise and measurement-noise streams.

    Returns
    -------
    DataFrame
        Tidy, one row per sample: ``test``, ``t``, ``u`` (voltage), ``x``, ``v`` (measured position
        and velocity), ``x_true``, ``v_true``, ``a_true`` (true acceleration; 0 while held by
        static friction). ``attrs``: ``truth = {"d(x)": a, "u": b, "sign(d(x))": c}``,
        ``gains = {"kS", "kV", "kA"}``, ``friction``, ``input_hold``, noise settings.
    """
    hold = _check_hold(input_hold)
    if friction not in ("stiction", "sysid"):
        raise DataError(f"friction must be 'stiction' or 'sysid', got {friction!r}")
    if not (kA > 0 and kV >= 0 and kS >= 0):
        raise DataError(f"need kA > 0, kV >= 0, kS >= 0; got kS={kS}, kV={kV}, kA={kA}")
    if not (0 <= dt_jitter < 1):
        raise DataError(f"dt_jitter must be in [0, 1), got {dt_jitter}")
    if dt <= 0:
        raise DataError(f"dt must be positive, got {dt}")
    for name, val in (("sigma", sigma), ("tau", tau), ("tau_velocity", tau_velocity)):
        if val < 0:
            raise DataError(f"{name} must be non-negative, got {val}")
    unknown = [name for name in tests if name not in MOTOR_TESTS]
    if unknown or len(tests) == 0:
        raise DataError(f"unknown motor test(s) {unknown}; use some of {MOTOR_TESTS}")
    if dynamic_duration is None:
        dynamic_duration = max(1.0, 5.0 * kA / kV) if kV > 0 else 5.0
    a, b = -kV / kA, 1.0 / kA
    c = -kS / kA
    rng_t, rng_w, rng_e = _streams(seed, 3)
    stepper = _MotorStepper(a, b, kS, friction, sigma)
    frames = []
    clock = clock_offset
    for name in tests:
        dynamic = name.startswith("fast")
        sign = 1.0 if name.endswith("forward") else -1.0
        duration = dynamic_duration + steady_state if dynamic else quasistatic_duration
        n = round(duration / dt)
        if n < 2:
            raise DataError(f"test {name!r} would have fewer than 2 samples")
        steps = np.full(n - 1, dt)
        if dt_jitter > 0:
            steps = dt * (1.0 + dt_jitter * rng_t.uniform(-1.0, 1.0, n - 1))
        t = np.concatenate([[0.0], np.cumsum(steps)])
        if dynamic:
            u = np.where(np.arange(n) >= leading_zeros, sign * step, 0.0)
            test_hold = "zoh"
        else:
            u = sign * ramp * t
            test_hold = hold
        x_true, v_true = stepper.run(t, u, test_hold, rng_w)
        if friction == "sysid":
            acc = a * v_true + b * u + c * np.sign(v_true)
        else:
            moving = v_true != 0
            breakaway = ~moving & (np.abs(u) > kS)
            acc = np.where(moving, a * v_true + b * u + c * np.sign(v_true), 0.0)
            acc = np.where(breakaway, b * u + c * np.sign(u), acc)
        x_meas = _measure(x_true, tau, rng_e)
        v_meas = _measure(v_true, tau_velocity, rng_e)
        if velocity_quantum is not None:
            if velocity_quantum <= 0:
                raise DataError("velocity_quantum must be positive")
            v_meas = velocity_quantum * np.round(v_meas / velocity_quantum)
        tt = t if clock is None else clock + t
        if clock is not None:
            clock = float(tt[-1]) + 2.0
        frames.append(
            pd.DataFrame(
                {
                    "test": name,
                    "t": tt,
                    "u": u,
                    "x": x_meas,
                    "v": v_meas,
                    "x_true": x_true,
                    "v_true": v_true,
                    "a_true": acc,
                }
            )
        )
    out = pd.concat(frames, ignore_index=True)
    out.attrs.update(
        truth={"d(x)": a, "u": b, "sign(d(x))": c},
        gains={"kS": float(kS), "kV": float(kV), "kA": float(kA)},
        friction=friction,
        input_hold=hold,
        dt=float(dt),
        sigma=float(sigma),
        tau=float(tau),
        tau_velocity=float(tau_velocity),
    )
    return out


def sysid_check_log(kS: float, kV: float, kA: float) -> pd.DataFrame:
    """The noise-free log of WPILib SysId's own feedforward check, reproduced.

    Plant ``v' = −kV/kA v + u/kA − kS/kA sign(v)`` stepped with the exact zero-order hold at
    5 ms, friction sign from the velocity at each step's start (``sign(0) = 0``); four 5-s tests
    of 1000 samples: ramps ``u_k = ±0.25·k·dt`` V and steps with one row at 0 V then ±7 V.
    SysId checks its fit on gains (1.01, 3.060, 0.327) and (0.547, 0.0693, 0.117).
    Equivalent to ``motor(kS, kV, kA, dt=0.005, ramp=0.25, step=7.0, quasistatic_duration=5,
    dynamic_duration=5, leading_zeros=1, input_hold="zoh", friction="sysid")``.
    """
    return motor(
        kS,
        kV,
        kA,
        dt=0.005,
        ramp=0.25,
        step=7.0,
        quasistatic_duration=5.0,
        dynamic_duration=5.0,
        leading_zeros=1,
        input_hold="zoh",
        friction="sysid",
    )


def as_sysid_log(df: pd.DataFrame, *, units: str = "Rotations") -> pd.DataFrame:
    """A :func:`motor` frame in the layout of :func:`derivreg.io.read_sysid` (Simple mechanism).

    Renames ``t, u, x, v`` to ``time, voltage, position, velocity`` (the true columns are kept)
    and sets ``attrs`` ``mechanism="simple"``, ``test_type="Simple"``, ``units``,
    ``unitsPerRotation=1.0``, ``source="derivreg.simulate.motor"``, plus the ``truth`` and
    ``gains`` of the simulation, so that ``dr.characterize(as_sysid_log(motor(...)))`` works.
    """
    out = df.rename(columns={"t": "time", "u": "voltage", "x": "position", "v": "velocity"})
    out["test"] = out["test"].astype(object)
    out.attrs = {
        **df.attrs,
        "mechanism": "simple",
        "test_type": "Simple",
        "units": units,
        "unitsPerRotation": 1.0,
        "source": "derivreg.simulate.motor",
    }
    return out


# --------------------------------------------------------------------------------------------
# nonlinear ODEs
# --------------------------------------------------------------------------------------------
def ode(
    rhs: Callable[..., Any],
    y0: Sequence[float],
    t: Any,
    *,
    args: tuple[Any, ...] = (),
    tau: float = 0.0,
    log_noise: bool = False,
    seed: Any = None,
    names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Integrate ``y' = rhs(t, y, *args)`` with tight tolerances and add measurement noise.

    :func:`scipy.integrate.solve_ivp` (DOP853, ``rtol=1e-10``, ``atol=1e-12``), evaluated at ``t``.
    Observed ``y = y_true + τ e`` or, with ``log_noise=True``, ``y = y_true·exp(τ e)``.

    Returns
    -------
    DataFrame
        Index ``t``; one observed column per state (``names``, default ``y0, y1, …``) then
        ``<name>_true`` columns.
    """
    times = _time_grid(0, 1.0, t)
    y0 = np.asarray(y0, dtype=float).ravel()
    if names is None:
        names = [f"y{i}" for i in range(y0.size)]
    names = list(names)
    if len(names) != y0.size:
        raise LengthMismatchError(f"{len(names)} names for {y0.size} states")
    sol = solve_ivp(
        rhs,
        (times[0], times[-1]),
        y0,
        method="DOP853",
        t_eval=times,
        args=args,
        rtol=1e-10,
        atol=1e-12,
    )
    if not sol.success:
        raise DataError(f"the ODE integration failed: {sol.message}")
    (rng_e,) = _streams(seed, 1)
    cols: dict[str, FloatArray] = {}
    for i, name in enumerate(names):
        cols[name] = _measure(sol.y[i], tau, rng_e, log_noise=log_noise)
    for i, name in enumerate(names):
        cols[f"{name}_true"] = sol.y[i]
    out = _frame(times, cols)
    out.attrs.update(tau=float(tau), log_noise=bool(log_noise))
    return out


def _grid(n: int, t_end: float, t0: float = 0.0) -> FloatArray:
    if int(n) < 2 or not t_end > t0:
        raise DataError(f"need n >= 2 and t_end > {t0}; got n={n}, t_end={t_end}")
    return np.linspace(t0, t_end, int(n))


def lotka_volterra(
    alpha: float = 2 / 3,
    beta: float = 4 / 3,
    gamma: float = 1.0,
    delta: float = 1.0,
    *,
    x0: tuple[float, float] = (1.0, 1.0),
    n: int = 100,
    t_end: float = 20.0,
    tau: float = 0.0,
    log_noise: bool = False,
    seed: Any = None,
) -> pd.DataFrame:
    """Predator–prey system ``d(x) = αx − βxy``, ``d(y) = −γy + δxy``.

    ``n`` samples on ``[0, t_end]``; invariant ``V = δx − γ ln x + βy − α ln y``.

    Returns
    -------
    DataFrame
        Index ``t``; columns ``x`` (prey), ``y`` (predator), ``x_true``, ``y_true``.
        ``attrs["truth"] = {"x": {"x": α, "x:y": −β}, "y": {"y": −γ, "x:y": δ}}`` (per equation).
    """

    def rhs(_t: float, s: FloatArray) -> list[float]:
        x, y = s
        return [alpha * x - beta * x * y, -gamma * y + delta * x * y]

    out = ode(rhs, x0, _grid(n, t_end), tau=tau, log_noise=log_noise, seed=seed, names=["x", "y"])
    out.attrs["truth"] = {
        "x": {"x": float(alpha), "x:y": -float(beta)},
        "y": {"y": -float(gamma), "x:y": float(delta)},
    }
    out.attrs["params"] = {"alpha": alpha, "beta": beta, "gamma": gamma, "delta": delta}
    return out


def logistic(
    r: float,
    K: float,
    *,
    x0: float | None = None,
    n: int = 100,
    t_end: float | None = None,
    tau: float = 0.0,
    log_noise: bool = False,
    seed: Any = None,
) -> pd.DataFrame:
    """Logistic growth ``d(x) = r x − (r/K) x²``, from its closed form.

    ``x(t) = K / (1 + (K/x0 − 1) e^{−rt})``; default ``x0 = K/20``, ``t_end = 10/r``.

    Returns
    -------
    DataFrame
        Index ``t``; columns ``x`` (observed), ``x_true``.
        ``attrs["truth"] = {"x": r, "I(x ** 2)": −r/K}``.
    """
    if K <= 0 or r == 0:
        raise DataError(f"need K > 0 and r != 0; got r={r}, K={K}")
    x0 = K / 20 if x0 is None else float(x0)
    if x0 <= 0:
        raise DataError(f"x0 must be positive, got {x0}")
    t = _grid(n, 10.0 / abs(r) if t_end is None else t_end)
    x = K / (1.0 + (K / x0 - 1.0) * np.exp(-r * t))
    (rng_e,) = _streams(seed, 1)
    out = _frame(t, {"x": _measure(x, tau, rng_e, log_noise=log_noise), "x_true": x})
    out.attrs.update(
        truth={"x": float(r), "I(x ** 2)": -float(r) / float(K)},
        tau=float(tau),
        log_noise=bool(log_noise),
    )
    return out


def sir(
    beta: float,
    gamma: float,
    *,
    N: float = 1.0,
    i0: float = 0.01,
    r0: float = 0.0,
    n: int = 100,
    t_end: float | None = None,
    tau: float = 0.0,
    log_noise: bool = False,
    seed: Any = None,
) -> pd.DataFrame:
    """SIR epidemic ``d(S) = −(β/N) S I``, ``d(I) = (β/N) S I − γ I``, ``d(R) = γ I``.

    Starts from ``I = i0·N``, ``R = r0·N``, ``S = N − I − R``; default ``t_end = 5/γ``.

    Returns
    -------
    DataFrame
        Index ``t``; columns ``S``, ``I``, ``R`` (observed) and ``*_true``.
        ``attrs["truth"] = {"S": {"S:I": −β/N}, "I": {"S:I": β/N, "I": −γ}, "R": {"I": γ}}``.
    """
    if N <= 0 or not (0 < i0 < 1) or not (0 <= r0 < 1 - i0):
        raise DataError("need N > 0, 0 < i0 < 1 and 0 <= r0 < 1 - i0")

    def rhs(_t: float, s: FloatArray) -> list[float]:
        S, I, _R = s
        inf = beta * S * I / N
        return [-inf, inf - gamma * I, gamma * I]

    y0 = [N * (1 - i0 - r0), N * i0, N * r0]
    t = _grid(n, 5.0 / gamma if t_end is None else t_end)
    out = ode(rhs, y0, t, tau=tau, log_noise=log_noise, seed=seed, names=["S", "I", "R"])
    out.attrs["truth"] = {
        "S": {"S:I": -beta / N},
        "I": {"S:I": beta / N, "I": -float(gamma)},
        "R": {"I": float(gamma)},
    }
    return out
