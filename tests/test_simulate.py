"""Exactness of the simulators in derivreg.simulate against closed forms and scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.integrate import solve_ivp
from scipy.linalg import solve_continuous_lyapunov
from scipy.signal import cont2discrete

from derivreg import simulate as sim
from derivreg.exceptions import DataError, LengthMismatchError, TimeIndexError


# ------------------------------------------------------------------------------------ inputs
def test_inputs_kinds() -> None:
    t = np.linspace(0.0, 50.0, 5001)
    u = sim.inputs("switching", t, period=2.0, amplitude=3.0, seed=1)
    assert set(np.unique(u)) == {-3.0, 3.0}
    switches = t[1:][np.diff(u) != 0]
    gaps = np.diff(switches)
    assert gaps.min() >= 1.0 - 0.011 and gaps.max() <= 3.0 + 0.011
    assert np.all(np.diff(u)[np.diff(u) != 0] * np.sign(u[:-1][np.diff(u) != 0]) < 0)
    np.testing.assert_array_equal(u, sim.inputs("switching", t, period=2.0, amplitude=3.0, seed=1))
    sq = sim.inputs("square", t, period=5.0)
    assert sq[0] == 1.0 and sq[np.searchsorted(t, 7.0)] == -1.0
    ms = sim.inputs("multisine", t, period=2 * np.pi / 0.5)
    np.testing.assert_allclose(ms, np.sin(0.25 * t) + 0.5 * np.sin(0.65 * t))
    st = sim.inputs("step", t, period=10.0, amplitude=2.0)
    assert st[t < 10.0].max() == 0.0 and st[t >= 10.0].min() == 2.0
    np.testing.assert_allclose(sim.inputs("ramp", t, period=2.0), t / 2.0)
    assert np.all(sim.inputs("constant", t, amplitude=-1.5) == -1.5)
    with pytest.raises(DataError, match="unknown input kind"):
        sim.inputs("chirp", t)


# ------------------------------------------------------------------------------- first order
@pytest.mark.parametrize("irregular", [False, True])
def test_first_order_step_matches_closed_form(irregular: bool, rng: np.random.Generator) -> None:
    a, b, c = -0.8, 1.5, 0.3
    t = np.cumsum(rng.exponential(0.1, 300)) if irregular else None
    df = sim.first_order(a, b, c, n=300, dt=0.1, t=t, u="step", input_hold="zoh")
    tt = df.index.to_numpy()
    ts = tt[np.argmax(df["u"].to_numpy() > 0)]
    x0 = -c / a
    x_inf = -(b + c) / a
    expected = np.where(tt >= ts, x_inf + (x0 - x_inf) * np.exp(a * (tt - ts)), x0)
    np.testing.assert_allclose(df["x_true"], expected, rtol=0, atol=1e-12)
    assert df.index.name == "t"
    assert df.attrs["truth"] == {"x": a, "u": b, "Intercept": c}
    assert df.attrs["input_hold"] == "zoh"
    assert (df["x"] == df["x_true"]).all()


@pytest.mark.parametrize("a", [-1.3, 0.4, 0.0])
def test_first_order_linear_hold_matches_solve_ivp(a: float) -> None:
    b, c, dt = 0.7, -0.2, 0.25
    df = sim.first_order(a, b, c, n=81, dt=dt, u="multisine", input_hold="linear", x0=0.5)
    t = df.index.to_numpy()
    u = df["u"].to_numpy()
    x = [0.5]
    for k in range(t.size - 1):  # integrate interval by interval: the input has kinks
        sol = solve_ivp(
            lambda s, y: a * y + b * np.interp(s, t, u) + c,
            (t[k], t[k + 1]),
            [x[-1]],
            method="DOP853",
            rtol=1e-12,
            atol=1e-13,
        )
        x.append(sol.y[0, -1])
    np.testing.assert_allclose(df["x_true"], x, rtol=1e-9, atol=1e-9)


def test_first_order_small_a_is_continuous() -> None:
    kw = {"n": 200, "dt": 0.3, "u": "square", "input_hold": "linear", "x0": 1.0}
    zero = sim.first_order(0.0, 1.0, 0.2, **kw)
    at_zero, u = zero["x_true"].to_numpy(), zero["u"].to_numpy()
    # a = 0: x is the exact integral of the linearly interpolated input plus c
    integral = 1.0 + np.concatenate([[0.0], np.cumsum(0.3 * (u[1:] + u[:-1]) / 2 + 0.2 * 0.3)])
    np.testing.assert_allclose(at_zero, integral, atol=1e-12)
    span = 0.3 * 199
    for a in (1e-12, -1e-7, 2e-4, -9e-4, 1.1e-3):
        near = sim.first_order(a, 1.0, 0.2, **{**kw, "u": u})["x_true"].to_numpy()
        # d x / d a = ∫ e^{a(t-s)} x(s) ds: bounded by span·max|x|·e^{|a| span}
        bound = abs(a) * span * np.abs(at_zero).max() * np.exp(abs(a) * span) * 1.1
        assert np.max(np.abs(near - at_zero)) <= bound + 1e-12


def test_exact_terms_match_direct_formulas() -> None:
    dts = np.array([0.01, 0.1, 1.0, 3.0])
    for a in (-2.0, -0.01, 0.5):
        phi, i0, i1, var = sim.exact_terms(a, dts)
        np.testing.assert_allclose(phi, np.exp(a * dts), rtol=1e-14)
        np.testing.assert_allclose(i0, (np.exp(a * dts) - 1) / a, rtol=1e-12)
        np.testing.assert_allclose(i1, (np.exp(a * dts) - 1) / a**2 - dts / a, rtol=1e-8)
        np.testing.assert_allclose(var, (np.exp(2 * a * dts) - 1) / (2 * a), rtol=1e-12)
    phi, i0, i1, var = sim.exact_terms(0.0, dts)
    np.testing.assert_allclose(np.c_[phi, i0, i1, var], np.c_[dts**0, dts, dts**2 / 2, dts])


def test_process_noise_has_exact_variance() -> None:
    a, sigma, dt, n = -0.5, 0.7, 0.8, 20_000
    df = sim.first_order(a, 1.0, 0.0, n=n, dt=dt, u="constant", sigma=sigma, seed=3, x0=0.0)
    x = df["x_true"].to_numpy()
    phi = np.exp(a * dt)
    eta = x[1:] - phi * x[:-1] - (phi - 1) / a  # u = 1 held
    var = sigma**2 * (phi**2 - 1) / (2 * a)
    # sample variance of n iid normals: relative SE sqrt(2/n) ~ 1 %; allow 4.5 SE
    assert abs(eta.var() / var - 1) < 4.5 * np.sqrt(2 / n)
    assert abs(eta.mean()) < 4.5 * np.sqrt(var / n)
    assert abs(np.corrcoef(eta[1:], eta[:-1])[0, 1]) < 4.5 / np.sqrt(n)


def test_process_noise_irregular_times_and_zero_a(rng: np.random.Generator) -> None:
    t = np.cumsum(rng.exponential(0.5, 20_000))
    for a in (0.0, -1.2):
        df = sim.first_order(a, 0.0, 0.0, t=t, sigma=1.3, seed=5, x0=0.0)
        x = df["x_true"].to_numpy()
        phi, _, _, var = sim.exact_terms(a, np.diff(t))
        z = (x[1:] - phi * x[:-1]) / (1.3 * np.sqrt(var))
        assert abs(z.var() - 1) < 4.5 * np.sqrt(2 / z.size)


def test_measurement_noise_leaves_true_path_unchanged() -> None:
    kw = {"n": 4000, "dt": 0.1, "sigma": 0.5, "seed": 11}
    clean = sim.first_order(-1.0, **kw)
    noisy = sim.first_order(-1.0, tau=0.2, **kw)
    np.testing.assert_array_equal(clean["x_true"], noisy["x_true"])
    np.testing.assert_array_equal(clean["u"], noisy["u"])
    e = noisy["x"] - noisy["x_true"]
    assert abs(e.std() / 0.2 - 1) < 4.5 / np.sqrt(2 * 4000)


def test_first_order_input_forms_and_errors() -> None:
    t = np.linspace(0, 5, 51)
    arr = sim.first_order(-1.0, t=t, u=np.sin(t))
    fun = sim.first_order(-1.0, t=t, u=np.sin)
    np.testing.assert_array_equal(arr["x_true"], fun["x_true"])
    assert arr.attrs["x0"] == 0.0  # stationary mean for u(0) = 0, c = 0
    with pytest.raises(LengthMismatchError):
        sim.first_order(-1.0, t=t, u=np.ones(3))
    with pytest.raises(TimeIndexError):
        sim.first_order(-1.0, t=t[::-1])
    with pytest.raises(DataError, match="input_hold"):
        sim.first_order(-1.0, input_hold="cubic")


# ----------------------------------------------------------------------------- second order
def test_second_order_matches_solve_ivp_and_first_order() -> None:
    a0, a1, b, c = -4.0, -0.6, 2.0, 0.5
    df = sim.second_order(a0, a1, b, c, n=61, dt=0.1, u="multisine", input_hold="linear", x0=1.0)
    t, u = df.index.to_numpy(), df["u"].to_numpy()
    state = [np.array([1.0, 0.0])]
    for k in range(t.size - 1):
        sol = solve_ivp(
            lambda s, y: [y[1], a0 * y[0] + a1 * y[1] + b * np.interp(s, t, u) + c],
            (t[k], t[k + 1]),
            state[-1],
            method="DOP853",
            rtol=1e-12,
            atol=1e-13,
        )
        state.append(sol.y[:, -1])
    state = np.array(state)
    np.testing.assert_allclose(df["x_true"], state[:, 0], atol=1e-9)
    np.testing.assert_allclose(df["v_true"], state[:, 1], atol=1e-9)
    # the Van Loan discretisation of a 1x1 system equals the scalar formulas
    dts = np.array([0.05, 0.5, 2.0])
    d = sim.discretize([[-0.9]], [[1.0]], [0.0], [[0.4]], dts)
    phi, i0, i1, var = sim.exact_terms(-0.9, dts)
    np.testing.assert_allclose(d["Phi"][:, 0, 0], phi, rtol=1e-13)
    np.testing.assert_allclose(d["Gw"][:, 0, 0], i0, rtol=1e-13)
    np.testing.assert_allclose(d["Gs"][:, 0, 0], i1, rtol=1e-10)
    np.testing.assert_allclose(d["Q"][:, 0, 0], 0.16 * var, rtol=1e-12)


# ------------------------------------------------------------------------------------ motor
GAINS = [(1.01, 3.060, 0.327), (0.547, 0.0693, 0.117)]


@pytest.mark.parametrize(("kS", "kV", "kA"), GAINS)
def test_motor_step_matches_closed_form_and_terminal_velocity(kS, kV, kA) -> None:
    df = sim.motor(kS, kV, kA, tests=("fast-forward", "fast-backward"), steady_state=40.0)
    a = -kV / kA
    v_inf = (7.0 - kS) / kV
    for name, sign in (("fast-forward", 1.0), ("fast-backward", -1.0)):
        d = df[df["test"] == name]
        t = d["t"].to_numpy()
        v = sign * v_inf * (1 - np.exp(a * t))
        x = sign * v_inf * (t - np.expm1(a * t) / a)
        np.testing.assert_allclose(d["v_true"], v, rtol=1e-11, atol=1e-12 * v_inf)
        np.testing.assert_allclose(d["x_true"], x, rtol=1e-11, atol=1e-12 * v_inf)
        assert d["v_true"].iloc[-1] == pytest.approx(sign * v_inf, rel=1e-9)
    assert df.attrs["truth"] == {"d(x)": -kV / kA, "u": 1 / kA, "sign(d(x))": -kS / kA}
    assert df.attrs["gains"] == {"kS": kS, "kV": kV, "kA": kA}


def test_motor_relation_holds_on_finite_differences() -> None:
    kS, kV, kA = 1.01, 3.060, 0.327
    df = sim.motor(kS, kV, kA, dt=0.001, quasistatic_duration=8.0, input_hold="linear")
    tr = df.attrs["truth"]
    for _, d in df.groupby("test"):
        v, acc, u = (d[c].to_numpy() for c in ("v_true", "a_true", "u"))
        moving = v != 0
        rel = tr["d(x)"] * v + tr["u"] * u + tr["sign(d(x))"] * np.sign(v)
        np.testing.assert_allclose(acc[moving], rel[moving], atol=1e-12)
        fd = (v[2:] - v[:-2]) / (2 * 0.001)
        inner = moving[1:-1] & moving[:-2] & moving[2:]
        # central differences err by h²/6 times the third derivative; here |a''| is at most
        # (kV/kA)·|a'| and |a'| at most (kV/kA)·max|a| + b·ramp (the quasistatic ramp)
        rate, h2 = kV / kA, 0.001**2 / 6
        jerk = rate * np.abs(acc).max() + 0.25 / kA
        assert np.max(np.abs(fd[inner] - acc[1:-1][inner])) < 1.2 * h2 * rate * jerk + 1e-9
        x = d["x_true"].to_numpy()
        fdx = (x[2:] - x[:-2]) / (2 * 0.001)
        assert np.max(np.abs(fdx - v[1:-1])[inner]) < 1.2 * h2 * jerk + 1e-9


def test_motor_stiction_and_exact_breakaway() -> None:
    kS, kV, kA, ramp = 1.01, 3.060, 0.327, 0.25
    df = sim.motor(kS, kV, kA, tests=("slow-forward",), input_hold="linear", ramp=ramp)
    t, u, v, x = (df[c].to_numpy() for c in ("t", "u", "v_true", "x_true"))
    at_rest = np.abs(u) <= kS
    assert np.all(v[at_rest] == 0) and np.all(x[at_rest] == 0)
    assert np.all(df["a_true"].to_numpy()[at_rest] == 0)
    # after breakaway at t* = kS/ramp: v' = a v + b ramp (t - t*), v(t*) = 0
    a, b = -kV / kA, 1 / kA
    s = t[~at_rest] - kS / ramp
    v_exact = b * ramp * (np.expm1(a * s) / a**2 - s / a)
    np.testing.assert_allclose(v[~at_rest], v_exact, rtol=1e-10, atol=1e-14)
    # a mechanism that does not move: the step never exceeds static friction
    stuck = sim.motor(8.0, 1.0, 0.2, step=7.0, ramp=0.5, quasistatic_duration=4.0)
    assert (stuck["v_true"] == 0).all() and (stuck["x_true"] == 0).all()
    assert (stuck["a_true"] == 0).all()


def test_motor_stops_exactly_when_coasting() -> None:
    kS, kV, kA, v0 = 0.5, 1.0, 0.25, 2.0
    a, b = -kV / kA, 1 / kA
    c = -kS * b
    stepper = sim._MotorStepper(a, b, kS, "stiction", 0.0)
    t = np.arange(0, 2.0, 0.01)
    x, v = stepper.run(t, np.zeros_like(t), "zoh", np.random.default_rng(0), start=(0.0, v0))
    t_stop = np.log((c / a) / (v0 + c / a)) / a
    moving = t < t_stop
    v_exact = np.exp(a * t) * (v0 + c / a) - c / a
    np.testing.assert_allclose(v[moving], v_exact[moving], atol=1e-13)
    assert np.all(v[~moving] == 0)
    x_stop = (v0 + c / a) * np.expm1(a * t_stop) / a - c / a * t_stop
    np.testing.assert_allclose(x[~moving], x_stop, rtol=1e-12)


def test_motor_irregular_times_noise_and_layout() -> None:
    df = sim.motor(
        0.3,
        1.2,
        0.2,
        dt_jitter=0.3,
        tau=1e-3,
        tau_velocity=0.01,
        velocity_quantum=0.02,
        leading_zeros=3,
        clock_offset=100.0,
        seed=4,
    )
    assert list(df.columns) == ["test", "t", "u", "x", "v", "x_true", "v_true", "a_true"]
    assert list(df["test"].unique()) == list(sim.MOTOR_TESTS)
    fast = df[df["test"] == "fast-forward"]
    assert (fast["u"].iloc[:3] == 0).all() and (fast["u"].iloc[3:] == 7.0).all()
    np.testing.assert_allclose(np.round(df["v"] / 0.02) * 0.02, df["v"], atol=1e-12)
    starts = df.groupby("test", sort=False)["t"].first().to_numpy()
    assert starts[0] == 100.0 and np.all(np.diff(starts) > 0)
    # exactness survives irregular sampling: closed-form step response from the step onset
    t = fast["t"].to_numpy()
    on = t[3]
    dts = np.diff(t)
    assert dts.min() >= 0.7 * 0.005 - 1e-15 and dts.max() <= 1.3 * 0.005 + 1e-15
    a, v_inf = -1.2 / 0.2, (7.0 - 0.3) / 1.2
    s = t[3:] - on
    np.testing.assert_allclose(fast["v_true"].iloc[3:], v_inf * -np.expm1(a * s), atol=1e-12)
    assert abs((df["x"] - df["x_true"]).std() - 1e-3) < 1e-4


@pytest.mark.parametrize(("kS", "kV", "kA"), GAINS)
def test_sysid_check_log_matches_wpilib_discrete_plant(kS, kV, kA) -> None:
    df = sim.sysid_check_log(kS, kV, kA)
    assert df.groupby("test").size().eq(1000).all()
    A = np.array([[0.0, 1.0], [0.0, -kV / kA]])
    B = np.array([[0.0], [1 / kA]])
    Ad, Bd, *_ = cont2discrete((A, B, np.eye(2), np.zeros((2, 1))), 0.005, method="zoh")
    for name, d in df.groupby("test"):
        u = d["u"].to_numpy()
        k = np.arange(u.size)
        if name.startswith("slow"):
            np.testing.assert_allclose(np.abs(u), 0.25 * 0.005 * k, atol=1e-12)
        else:
            assert u[0] == 0 and np.all(np.abs(u[1:]) == 7.0)
        z = np.zeros(2)
        states = [z]
        for uk in u[:-1]:
            z = Ad @ z + Bd[:, 0] * (uk - kS * np.sign(z[1]))
            states.append(z)
        states = np.array(states)
        np.testing.assert_allclose(d["x_true"], states[:, 0], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(d["v_true"], states[:, 1], rtol=1e-9, atol=1e-12)
    # SysId's GetAcceleration: A x + B u + c sgn(v) row by row, so OLS recovers the gains exactly
    X = np.c_[df["v_true"], df["u"], np.sign(df["v_true"])]
    coef, *_ = np.linalg.lstsq(X, df["a_true"].to_numpy(), rcond=None)
    np.testing.assert_allclose([-coef[2] / coef[1], -coef[0] / coef[1], 1 / coef[1]], [kS, kV, kA])


def test_motor_rejects_bad_arguments() -> None:
    with pytest.raises(DataError, match="unknown motor test"):
        sim.motor(1, 1, 1, tests=("slow-sideways",))
    with pytest.raises(DataError, match="kA > 0"):
        sim.motor(1, 1, 0)
    with pytest.raises(DataError, match="friction"):
        sim.motor(1, 1, 1, friction="viscous")


# ------------------------------------------------------------------------------------- ODEs
def test_lotka_volterra_conserves_invariant() -> None:
    df = sim.lotka_volterra(n=400, t_end=40.0)
    x, y = df["x_true"].to_numpy(), df["y_true"].to_numpy()
    al, be, ga, de = 2 / 3, 4 / 3, 1.0, 1.0
    V = de * x - ga * np.log(x) + be * y - al * np.log(y)
    assert np.max(np.abs(V - V[0])) < 1e-6
    assert df.attrs["truth"]["x"] == {"x": al, "x:y": -be}
    assert df.attrs["truth"]["y"] == {"y": -ga, "x:y": de}
    noisy = sim.lotka_volterra(tau=0.1, log_noise=True, seed=2)
    assert (noisy[["x", "y"]] > 0).all().all()
    r = np.log(noisy["x"] / noisy["x_true"])
    assert 0.07 < r.std() < 0.13


def test_logistic_closed_form_agrees_with_ode() -> None:
    df = sim.logistic(0.8, 50.0, n=60)
    num = sim.ode(
        lambda _t, x: 0.8 * x - 0.8 / 50.0 * x**2, [df["x_true"].iloc[0]], df.index, names=["x"]
    )
    np.testing.assert_allclose(df["x_true"], num["x_true"], rtol=1e-8)
    assert df.attrs["truth"] == {"x": 0.8, "I(x ** 2)": -0.8 / 50.0}


def test_sir_conserves_population() -> None:
    df = sim.sir(0.5, 0.1, N=1000.0, n=50)
    total = df[["S_true", "I_true", "R_true"]].sum(axis=1)
    np.testing.assert_allclose(total, 1000.0, rtol=1e-9)
    assert df["S_true"].is_monotonic_decreasing and df["R_true"].is_monotonic_increasing
    assert df.attrs["truth"]["I"] == {"S:I": 0.5 / 1000.0, "I": -0.1}


def test_motor_process_noise_has_exact_velocity_variance() -> None:
    kS, kV, kA, sigma, dt = 0.3, 1.0, 0.1, 2.0, 0.005
    df = sim.motor(kS, kV, kA, tests=("fast-forward",), steady_state=40.0, sigma=sigma, seed=8)
    v = df["v_true"].to_numpy()
    a, b, c = -kV / kA, 1 / kA, -kS / kA
    phi = np.exp(a * dt)
    # while moving forward: v_{k+1} = φ v_k + (b·7 + c)(φ − 1)/a + η_k, Var η = σ²(φ² − 1)/(2a)
    eta = v[1:] - phi * v[:-1] - (b * 7.0 + c) * (phi - 1) / a
    var = sigma**2 * (phi**2 - 1) / (2 * a)
    assert np.all(v[1:] > 0)
    assert abs(eta.var() / var - 1) < 4.5 * np.sqrt(2 / eta.size)


def test_motor_events_are_grid_independent() -> None:
    """Reversals, stops and stiction inside coarse intervals equal a fine-grid run."""
    kS, kV, kA = 0.8, 1.5, 0.3
    stepper = sim._MotorStepper(-kV / kA, 1 / kA, kS, "stiction", 0.0)
    rng = np.random.default_rng(0)
    t_coarse = np.arange(0.0, 6.0, 0.25)
    u_coarse = rng.uniform(-4.0, 4.0, t_coarse.size)
    u_coarse[5:8] = [0.3, -0.5, 0.1]  # a stop held by static friction
    t_fine = np.linspace(0.0, t_coarse[-1], 25 * (t_coarse.size - 1) + 1)
    u_fine = np.interp(t_fine, t_coarse, u_coarse)
    xc, vc = stepper.run(t_coarse, u_coarse, "linear", rng)
    xf, vf = stepper.run(t_fine, u_fine, "linear", rng)
    np.testing.assert_allclose(xc, xf[::25], atol=1e-11)
    np.testing.assert_allclose(vc, vf[::25], atol=1e-11)
    assert np.sum(np.diff(np.sign(vf[vf != 0])) != 0) >= 2  # the run does reverse
    assert np.any(vf[1:] == 0)  # and does stop


def test_sysid_check_reproduces_wpilib_tolerance() -> None:
    """SysId's own check: OLS of the plant's acceleration on [v, u, sgn v] within 8 %."""
    characterize = pytest.importorskip("derivreg.sysid").characterize
    for gains in GAINS:
        log = sim.as_sysid_log(sim.sysid_check_log(*gains))
        assert log.attrs["mechanism"] == "simple" and log.attrs["gains"]["kS"] == gains[0]
        ch = characterize(log, method="sysid", acceleration="a_true", trim=False)
        est = ch.gains.loc[["kS", "kV", "kA"], "estimate"].to_numpy()
        np.testing.assert_allclose(est, gains, rtol=0.08)


def test_first_order_substeps() -> None:
    t = np.linspace(0.0, 20.0, 41)
    u = np.sin(0.7 * t)
    for hold in ("zoh", "linear"):
        plain = sim.first_order(-0.9, t=t, u=u, input_hold=hold, x0=0.2)
        fine = sim.first_order(-0.9, t=t, u=u, input_hold=hold, x0=0.2, substeps=7)
        np.testing.assert_allclose(fine["x_true"], plain["x_true"], atol=1e-12)
    # a continuous input: the fine linear hold converges to the continuous solution
    sol = solve_ivp(
        lambda s, y: -0.9 * y + np.sin(0.7 * s),
        (0.0, 20.0),
        [0.2],
        t_eval=t,
        rtol=1e-12,
        atol=1e-13,
        method="DOP853",
    )
    errs = [
        np.abs(
            sim.first_order(
                -0.9, t=t, u=lambda s: np.sin(0.7 * s), input_hold="linear", x0=0.2, substeps=m
            )["x_true"].to_numpy()
            - sol.y[0]
        ).max()
        for m in (1, 8)
    ]
    assert errs[1] < errs[0] / 40  # the linear-hold error falls as 1/m²
    # the returned samples keep the exact process-noise variance
    noisy = sim.first_order(-0.5, 0.0, n=8000, dt=0.6, sigma=1.0, seed=1, x0=0.0, substeps=4)
    x = noisy["x_true"].to_numpy()
    phi, _, _, var = sim.exact_terms(-0.5, np.array([0.6]))
    z = (x[1:] - phi * x[:-1]) / np.sqrt(var)
    assert abs(z.var() - 1) < 4.5 * np.sqrt(2 / z.size)


def test_second_order_process_noise_covariance_is_exact() -> None:
    a0, a1, sigma, dt, n = -2.0, -0.5, 0.8, 0.2, 20_000
    df = sim.second_order(a0, a1, 0.0, n=n, dt=dt, sigma=sigma, seed=9, u="constant")
    z = df[["x_true", "v_true"]].to_numpy()
    d = sim.discretize([[0.0, 1.0], [a0, a1]], [[0.0], [0.0]], [0.0, 0.0], None, [dt])
    eta = z[1:] - z[:-1] @ d["Phi"][0].T
    # for a stable A, Q = P − Φ P Φᵀ with P the stationary covariance (A P + P Aᵀ + G Gᵀ = 0):
    # independent of the Van Loan formula used by the simulator
    A = np.array([[0.0, 1.0], [a0, a1]])
    P = solve_continuous_lyapunov(A, -np.array([[0.0, 0.0], [0.0, sigma**2]]))
    Phi = d["Phi"][0]
    Q = P - Phi @ P @ Phi.T
    emp = np.cov(eta.T)
    se = np.sqrt((Q**2 + np.outer(np.diag(Q), np.diag(Q))) / n)  # SE of a sample covariance
    assert np.all(np.abs(emp - Q) < 4.5 * se)
