"""Exact discretisation against closed forms and brute-force quadrature."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.integrate
import scipy.linalg

from derivreg.discretize import (
    discretize,
    discretize_steps,
    first_order_terms,
    hold_mask,
    unique_steps,
)
from derivreg.exceptions import DataError, LengthMismatchError


@pytest.mark.parametrize("a", [-5.0, -0.3, 1e-7, 0.0, 0.7])
@pytest.mark.parametrize("dt", [0.01, 0.5])
def test_first_order_closed_forms(a: float, dt: float) -> None:
    phi, i0, i1, v = first_order_terms(a, dt)
    # quadrature of the defining integrals
    q0 = scipy.integrate.quad(lambda s: np.exp(a * s), 0, dt)[0]
    q1 = scipy.integrate.quad(lambda s: np.exp(a * s) * (dt - s), 0, dt)[0]
    qv = scipy.integrate.quad(lambda s: np.exp(2 * a * s), 0, dt)[0]
    np.testing.assert_allclose(phi, np.exp(a * dt), rtol=1e-14)
    np.testing.assert_allclose(i0, q0, rtol=1e-10)
    np.testing.assert_allclose(i1, q1, rtol=1e-10)
    np.testing.assert_allclose(v, qv, rtol=1e-10)
    if abs(a * dt) > 1e-3:  # the formulas of METHODS.md, away from the removable singularity
        np.testing.assert_allclose(i0, (phi - 1) / a, rtol=1e-12)
        np.testing.assert_allclose(i1, (phi - 1) / a**2 - dt / a, rtol=1e-9)
        np.testing.assert_allclose(v, (phi**2 - 1) / (2 * a), rtol=1e-12)


@pytest.mark.parametrize("hold", ["zoh", "linear"])
def test_scalar_matches_block_exponential(hold: str) -> None:
    # a 1-state system through the closed form vs the same system embedded as a 2-state block
    # diagonal system (which goes through the block matrix exponential)
    a, b, c, s = -1.3, 0.8, 0.4, 0.6
    dts = np.array([0.05, 0.4, 2.0])
    d1 = discretize([[a]], [[b, c]], [[s]], dts, hold)
    A2 = np.diag([a, -7.0])
    B2 = np.array([[b, c], [1.0, 0.0]])
    G2 = np.array([[s], [0.0]])
    d2 = discretize(A2, B2, G2, dts, hold)
    np.testing.assert_allclose(d2.phi[:, :1, :1], d1.phi, rtol=1e-12)
    np.testing.assert_allclose(d2.gamma0[:, :1, :], d1.gamma0, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(d2.gamma1[:, :1, :], d1.gamma1, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(d2.q[:, :1, :1], d1.q, rtol=1e-10)


def test_first_order_input_terms_are_the_documented_ones() -> None:
    a, b, dt = -0.9, 2.0, 0.3
    _, i0, i1, _ = first_order_terms(a, dt)
    d = discretize([[a]], [[b]], [[1.0]], dt, "linear")
    # x_{k+1} = φ x_k + b [u_k I0 + (u_{k+1} - u_k)/Δ · I1]
    np.testing.assert_allclose(d.gamma0[0, 0, 0], b * (i0 - i1 / dt))
    np.testing.assert_allclose(d.gamma1[0, 0, 0], b * i1 / dt)
    dz = discretize([[a]], [[b]], [[1.0]], dt, "zoh")
    np.testing.assert_allclose(dz.gamma0[0, 0, 0], b * i0)
    assert dz.gamma1[0, 0, 0] == 0.0


@pytest.mark.parametrize("m", [2, 3])
def test_integrated_random_walk_q(m: int) -> None:
    # METHODS.md §1: T_ij = δ^(j-i)/(j-i)!, Q_ij = q δ^(2m-i-j+1) / ((2m-i-j+1)(m-i)!(m-j)!)
    from math import factorial

    q, d = 2.5, 0.37
    A = np.diag(np.ones(m - 1), 1)
    G = np.zeros((m, 1))
    G[-1, 0] = np.sqrt(q)
    disc = discretize(A, None, G, d)
    T = np.array(
        [[d ** (j - i) / factorial(j - i) if j >= i else 0.0 for j in range(m)] for i in range(m)]
    )
    Q = np.array(
        [
            [
                q
                * d ** (2 * m - i - j + 1)
                / ((2 * m - i - j + 1) * factorial(m - i) * factorial(m - j))
                for j in range(1, m + 1)
            ]
            for i in range(1, m + 1)
        ]
    )
    np.testing.assert_allclose(disc.phi[0], T, rtol=1e-12)
    np.testing.assert_allclose(disc.q[0], Q, rtol=1e-10)
    if m == 2:
        np.testing.assert_allclose(disc.q[0], q * np.array([[d**3 / 3, d**2 / 2], [d**2 / 2, d]]))


def test_second_order_against_quadrature() -> None:
    # motor-like companion system with two inputs, one held and one linear
    A = np.array([[0.0, 1.0], [0.0, -2.2]])
    B = np.array([[0.0, 0.0], [1.5, -0.4]])
    G = np.array([[0.0], [0.7]])
    dt = 0.25
    d = discretize(A, B, G, dt, ["linear", "zoh"])

    def expA(s: float) -> np.ndarray:
        return scipy.linalg.expm(A * s)

    def quad_mat(f) -> np.ndarray:
        shape = f(0.0).shape
        out = np.empty(shape)
        for idx in np.ndindex(shape):
            out[idx] = scipy.integrate.quad(lambda s, i=idx: f(s)[i], 0, dt, epsabs=1e-13)[0]
        return out

    m0 = quad_mat(lambda s: expA(s) @ B)
    m1 = quad_mat(lambda s: expA(s) @ B * (dt - s)) / dt
    Q = quad_mat(lambda s: expA(s) @ G @ G.T @ expA(s).T)
    np.testing.assert_allclose(d.phi[0], expA(dt), rtol=1e-12)
    np.testing.assert_allclose(d.q[0], Q, rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(d.gamma0[0][:, 0], (m0 - m1)[:, 0], rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(d.gamma1[0][:, 0], m1[:, 0], rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(d.gamma0[0][:, 1], m0[:, 1], rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(d.gamma1[0][:, 1], 0.0)


def test_discrete_recursion_reproduces_the_ode_under_linear_input() -> None:
    # noiseless: propagate with the discrete matrices and compare with solve_ivp on a piecewise
    # linear input; exactness means agreement to integration tolerance for any step size
    A = np.array([[0.0, 1.0], [-4.0, -0.8]])
    B = np.array([[0.0, 0.0], [1.0, 0.5]])  # input u and a constant
    t = np.sort(np.random.default_rng(1).uniform(0, 6, 40))
    t[0] = 0.0
    u = np.sin(1.7 * t) + 0.3 * t
    disc = discretize_steps(A, B, None, t, "linear")
    z = np.zeros((len(t), 2))
    z[0] = [1.0, -0.5]
    uu = np.column_stack([u, np.ones_like(u)])
    for k in range(len(t) - 1):
        z[k + 1] = disc.phi[k] @ z[k] + disc.gamma0[k] @ uu[k] + disc.gamma1[k] @ uu[k + 1]
    sol = scipy.integrate.solve_ivp(
        lambda s, y: A @ y + B @ np.array([np.interp(s, t, u), 1.0]),
        (0, t[-1]),
        z[0],
        t_eval=t,
        rtol=1e-11,
        atol=1e-12,
        max_step=0.02,
    )
    np.testing.assert_allclose(z, sol.y.T, atol=1e-7)


def test_unique_steps_and_caching() -> None:
    t = np.arange(50) * 0.1 + 3.0  # float round-off makes np.diff not exactly equal
    steps, inv = unique_steps(t)
    assert len(steps) == 1 and np.all(inv == 0)
    t2 = np.concatenate([t, t[-1] + np.cumsum([0.2, 0.2, 0.05])])
    steps2, inv2 = unique_steps(t2)
    assert len(steps2) == 3
    np.testing.assert_allclose(steps2[inv2], np.diff(t2), rtol=1e-9)
    d = discretize_steps([[-1.0]], [[1.0]], [[1.0]], t2)
    assert d.phi.shape == (len(t2) - 1, 1, 1)
    np.testing.assert_allclose(d.phi[:, 0, 0], np.exp(-np.diff(t2)), rtol=1e-8)


def test_bad_input() -> None:
    with pytest.raises(DataError, match="hold"):
        hold_mask("cubic", 1)
    with pytest.raises(LengthMismatchError):
        hold_mask(["zoh"], 2)
    with pytest.raises(DataError, match="positive"):
        discretize([[-1.0]], dt=[0.1, 0.0])
    with pytest.raises(LengthMismatchError, match="square"):
        discretize(np.ones((2, 3)))
    with pytest.raises(DataError, match="non-finite"):
        discretize([[np.nan]])
