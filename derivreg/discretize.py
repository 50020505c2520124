"""Exact discretisation of a continuous-time linear system between sample times.

The system

.. math::

    dz = (A z + B u(t)) \\, dt + G \\, dW,

with state ``z`` (n), inputs ``u`` (m; a constant is an input that is always 1) and Wiener
increments ``dW`` (g), sampled at ``t_k`` with steps ``Δ_k = t_{k+1} - t_k``, satisfies exactly

.. math::

    z_{k+1} = Φ_k z_k + Γ^{(0)}_k u_k + Γ^{(1)}_k u_{k+1} + η_k,
    \\qquad η_k \\sim N(0, Q_k),

when every input is held between samples (``"zoh"``: ``u(t) = u_k``) or linearly interpolated
(``"linear"``, first-order hold: ``u(t_k + s) = u_k + (u_{k+1} - u_k) s/Δ``), with

* ``Φ = e^{AΔ}``, ``M_0 = ∫_0^Δ e^{Aτ} dτ B``, ``M_1 = ∫_0^Δ e^{Aτ} (Δ - τ) dτ B / Δ``;
* zero-order hold: ``Γ^{(0)} = M_0``, ``Γ^{(1)} = 0``; first-order hold: ``Γ^{(0)} = M_0 - M_1``,
  ``Γ^{(1)} = M_1``;
* ``Q = ∫_0^Δ e^{As} G Gᵀ e^{Aᵀs} ds`` (Van Loan).

All of them come from one block matrix exponential per step (``scipy.linalg.expm``, vectorised
over a stack of steps): the transposed input block ``[[Aᵀ,0,0],[Bᵀ,0,0],[0,I,0]]`` sits below
Van Loan's ``[[-A, GGᵀ],[0, Aᵀ]]`` and shares its ``Aᵀ`` block. Steps are grouped by unique value
(to a relative tolerance), so a regular grid costs one exponential.

For one state (``n = 1``, ``dz = (a z + b u) dt + σ dW``) the closed forms are
``φ = e^{aΔ}``, ``I0 = (φ - 1)/a``, ``I1 = (φ - 1)/a² - Δ/a``, ``M_0 = b I0``, ``M_1 = b I1/Δ``,
``Q = σ² (φ² - 1)/(2a)`` (with their ``a → 0`` limits ``Δ``, ``Δ²/2``, ``σ² Δ``); see
:func:`first_order_terms`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from derivreg._typing import FloatArray
from derivreg.exceptions import DataError, LengthMismatchError

__all__ = [
    "Discretization",
    "discretize",
    "discretize_steps",
    "first_order_terms",
    "hold_mask",
    "unique_steps",
]

_HOLDS = ("zoh", "linear")


@dataclass(frozen=True)
class Discretization:
    """Exact discrete-time system matrices for a stack of ``K`` steps.

    Attributes
    ----------
    dt : ndarray (K,)
        The steps ``Δ``.
    phi : ndarray (K, n, n)
        State transition ``e^{AΔ}``.
    gamma0 : ndarray (K, n, m)
        Coefficient of the input at the start of the step, ``u_k``.
    gamma1 : ndarray (K, n, m)
        Coefficient of the input at the end of the step, ``u_{k+1}`` (zero for held inputs).
    q : ndarray (K, n, n)
        Covariance of the integrated process noise over the step.
    """

    dt: FloatArray
    phi: FloatArray
    gamma0: FloatArray
    gamma1: FloatArray
    q: FloatArray

    def __len__(self) -> int:
        return len(self.dt)

    def take(self, index: np.ndarray) -> Discretization:
        """Matrices for the steps ``index`` (e.g. the inverse of :func:`unique_steps`)."""
        return Discretization(
            self.dt[index], self.phi[index], self.gamma0[index], self.gamma1[index], self.q[index]
        )


def hold_mask(hold: str | Sequence[str], m: int) -> np.ndarray:
    """Boolean mask (m,) of inputs with first-order (linear) hold; validates ``hold``."""
    if isinstance(hold, str):
        holds = [hold] * m
    else:
        holds = list(hold)
        if len(holds) != m:
            raise LengthMismatchError(f"hold has {len(holds)} entries for {m} inputs")
    bad = [h for h in holds if h not in _HOLDS]
    if bad:
        raise DataError(f"input hold must be 'zoh' or 'linear', got {bad[0]!r}")
    return np.array([h == "linear" for h in holds], dtype=bool)


def _as_matrices(
    A: FloatArray, B: FloatArray | None, G: FloatArray | None
) -> tuple[FloatArray, FloatArray, FloatArray]:
    A = np.atleast_2d(np.asarray(A, dtype=float))
    n = A.shape[0]
    if A.shape != (n, n):
        raise LengthMismatchError(f"A must be square, got shape {A.shape}")
    B = np.zeros((n, 0)) if B is None else np.asarray(B, dtype=float).reshape(n, -1)
    G = np.zeros((n, 0)) if G is None else np.asarray(G, dtype=float).reshape(n, -1)
    if not (np.all(np.isfinite(A)) and np.all(np.isfinite(B)) and np.all(np.isfinite(G))):
        raise DataError("the system matrices contain non-finite values")
    return A, B, G


def discretize(
    A: FloatArray,
    B: FloatArray | None = None,
    G: FloatArray | None = None,
    dt: float | FloatArray = 1.0,
    hold: str | Sequence[str] = "zoh",
) -> Discretization:
    """Exact discretisation of ``dz = (A z + B u) dt + G dW`` over each step in ``dt``.

    Parameters
    ----------
    A : array (n, n)
        Drift matrix.
    B : array (n, m), optional
        Input matrix (a constant term is an input column that is always 1).
    G : array (n, g), optional
        Diffusion matrix; the noise intensity is ``G Gᵀ``.
    dt : float or array (K,)
        Steps; each gets its own matrices (no caching here; see :func:`discretize_steps`).
    hold : {"zoh", "linear"} or sequence of them (one per input)
        How each input behaves between samples.

    Returns
    -------
    Discretization
        Matrices with a leading axis of length ``K`` (1 for a scalar ``dt``).
    """
    A, B, G = _as_matrices(A, B, G)
    n, m = A.shape[0], B.shape[1]
    linear = hold_mask(hold, m)
    dts = np.atleast_1d(np.asarray(dt, dtype=float)).reshape(-1)
    if np.any(~np.isfinite(dts)) or np.any(dts <= 0):
        raise DataError("time steps must be positive and finite")
    if n == 1:
        return _discretize_scalar(A[0, 0], B[0], G[0], dts, linear)
    # block matrix of size 2n + 2m, transposed form (see the module docstring)
    size = 2 * n + 2 * m
    M = np.zeros((size, size))
    M[:n, :n] = -A
    M[:n, n : 2 * n] = G @ G.T
    M[n : 2 * n, n : 2 * n] = A.T
    M[2 * n : 2 * n + m, n : 2 * n] = B.T
    M[2 * n + m :, 2 * n : 2 * n + m] = np.eye(m)
    E = scipy.linalg.expm(M[None, :, :] * dts[:, None, None])
    F22 = E[:, n : 2 * n, n : 2 * n]  # = Φᵀ
    phi = np.swapaxes(F22, 1, 2)
    q = phi @ E[:, :n, n : 2 * n]
    q = 0.5 * (q + np.swapaxes(q, 1, 2))
    m0 = np.swapaxes(E[:, 2 * n : 2 * n + m, n : 2 * n], 1, 2)
    m1 = np.swapaxes(E[:, 2 * n + m :, n : 2 * n], 1, 2) / dts[:, None, None]
    gamma0 = np.where(linear[None, None, :], m0 - m1, m0)
    gamma1 = np.where(linear[None, None, :], m1, 0.0)
    return Discretization(dts, phi, gamma0, gamma1, q)


def first_order_terms(
    a: float | FloatArray, dt: float | FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Closed forms for one state: ``φ = e^{aΔ}``, ``I0``, ``I1`` and ``V = (φ² - 1)/(2a)``.

    ``I0 = ∫_0^Δ e^{aτ} dτ = (φ - 1)/a``, ``I1 = ∫_0^Δ e^{aτ}(Δ - τ) dτ = (φ - 1)/a² - Δ/a`` and
    ``V = ∫_0^Δ e^{2aτ} dτ`` (the noise variance per unit ``σ²``), evaluated stably with
    ``expm1`` and by series near ``aΔ = 0``.
    """
    a = np.asarray(a, dtype=float)
    dt = np.asarray(dt, dtype=float)
    x = a * dt
    phi = np.exp(x)
    small = np.abs(x) < 1e-4
    xs = np.where(small, 1.0, x)  # avoid 0/0 in the unused branch
    e1 = np.expm1(xs)
    e2 = np.expm1(2 * xs)
    i0 = np.where(small, dt * (1 + x / 2 + x**2 / 6 + x**3 / 24), dt * e1 / xs)
    i1 = np.where(
        small,
        dt**2 * (0.5 + x / 6 + x**2 / 24 + x**3 / 120),
        dt**2 * (e1 - xs) / xs**2,
    )
    v = np.where(small, dt * (1 + x + 2 * x**2 / 3 + x**3 / 3), dt * e2 / (2 * xs))
    return phi, i0, i1, v


def _discretize_scalar(
    a: float, b: FloatArray, g: FloatArray, dts: FloatArray, linear: np.ndarray
) -> Discretization:
    phi, i0, i1, v = first_order_terms(a, dts)
    m0 = i0[:, None] * b[None, :]
    m1 = (i1 / dts)[:, None] * b[None, :]
    gamma0 = np.where(linear[None, :], m0 - m1, m0)
    gamma1 = np.where(linear[None, :], m1, 0.0)
    q = v * float(g @ g)
    K = len(dts)
    return Discretization(
        dts, phi.reshape(K, 1, 1), gamma0[:, None, :], gamma1[:, None, :], q.reshape(K, 1, 1)
    )


def unique_steps(t: FloatArray, rtol: float = 1e-9) -> tuple[FloatArray, np.ndarray]:
    """Unique steps of ``t`` (to a relative tolerance) and the index of each step into them."""
    dt = np.diff(np.asarray(t, dtype=float))
    if len(dt) == 0:
        return dt, np.zeros(0, dtype=np.intp)
    scale = float(np.median(np.abs(dt))) or 1.0
    keys = np.round(dt / (scale * rtol)).astype(np.int64) if rtol > 0 else dt
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return dt[first], inverse.reshape(-1).astype(np.intp)


def discretize_steps(
    A: FloatArray,
    B: FloatArray | None,
    G: FloatArray | None,
    t: FloatArray,
    hold: str | Sequence[str] = "zoh",
    rtol: float = 1e-9,
) -> Discretization:
    """Matrices for every step between consecutive times ``t`` (length ``len(t) - 1``).

    Steps equal to a relative tolerance ``rtol`` share one matrix exponential, so a regular grid
    costs one evaluation and an irregular one a single vectorised ``expm`` over its unique steps.
    """
    steps, inverse = unique_steps(t, rtol)
    return discretize(A, B, G, steps, hold).take(inverse)
