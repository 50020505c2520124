"""Mechanism characterisation: feedforward gains kS, kV, kA (+ kG, arm offset) with intervals.

Robotics teams characterise motors and mechanisms with WPILib SysId, which fits

    u = kS·sgn(v) + kV·v + kA·a                 (simple motor, flywheel, drivetrain side)
    u = kS·sgn(v) + kV·v + kA·a + kG            (elevator)
    u = kS·sgn(v) + kV·v + kA·a + kG·cos(θ + offset)    (arm)

as the first-order relation in the velocity ``v`` (``a = dv/dt``)

    a = α v + β u + γ sgn(v)  [+ δ]  [+ δ cos θ + ε sin θ],

so that ``kS = −γ/β``, ``kV = −α/β``, ``kA = 1/β``, elevator ``kG = −δ/β``, arm
``kG = hypot(δ, ε)/β`` and ``offset = atan2(ε, −δ)``. SysId reports no standard errors; here every
gain gets one by the delta method from the fitted coefficients and their covariance.

:func:`characterize` is the front door. ``method="sysid"`` runs the legacy SysId pipeline
(:func:`sysid_pipeline`, then OLS) so that users see "the number SysId gives" — with the standard
errors of its OLS, which SysId never showed. Every other method is a
derivreg fit of the same relation through :func:`derivreg.api.fit`.

Quantised velocities: the constant rounding error of a steady state (which no number of
samples averages out under weak reading noise) is added to the gains' covariance
(:func:`_plateau_quantisation`). Fast mechanisms: when ``kA/kV`` spans fewer than 3 sample
intervals the log does not determine kA (a few quantised readings of the step response, and
any sensor lag reads as kA); ``"auto"`` then reports the state-space fit with intervals that
include the disagreement with the integral fit, the readings' rounding and a one-sample
timing ambiguity, and warns (:class:`~derivreg.exceptions.BiasWarning` naming kA).

Process noise: the integral form's estimates are biased under it (its trapezoid regressor
carries the increment's noise), so ``"auto"`` reports the state-space fit when the integral
fit's pretest finds process noise; the state-space innovations' whiteness (free with that fit)
then tells whether the log fits the model, and if not the intervals are widened by the
disagreement with the integral fit. Long steady-state holds are detected from the fitted
time constant and flagged (:class:`~derivreg.exceptions.ExcitationWarning`).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from derivreg._typing import ArrayLike, FloatArray
from derivreg.exceptions import (
    BiasWarning,
    ColumnNotFoundError,
    DataError,
    DerivregError,
    ExcitationWarning,
    IdentificationError,
    MethodNotAvailableError,
    TooFewPointsError,
)
from derivreg.io.sysid import DRIVETRAIN_TESTS, MECHANISMS, TESTS, read_sysid

__all__ = [
    "FIT_METHODS",
    "Characterization",
    "characterize",
    "compare",
    "gains_from_coefficients",
    "noise_floor",
    "prepare_fit_data",
    "sysid_pipeline",
]

#: Methods that fit the relation with :func:`derivreg.api.fit` (``"auto"`` picks one).
FIT_METHODS: tuple[str, ...] = (
    "auto",
    "integral",
    "gradient",
    "arimax",
    "statespace",
    "fourier",
    "trajectory",
)
_METHODS = ("sysid", *FIT_METHODS)

#: Coefficient names of the regression ``a = α v + β u + γ sgn(v) [+ δ] [+ δ cos θ + ε sin θ]``.
_COEFS = {
    "simple": ("alpha", "beta", "gamma"),
    "drivetrain": ("alpha", "beta", "gamma"),
    "drivetrain-angular": ("alpha", "beta", "gamma"),
    "elevator": ("alpha", "beta", "gamma", "delta"),
    "arm": ("alpha", "beta", "gamma", "delta", "epsilon"),
}
_MODEL = {
    "simple": "u = kS·sgn(v) + kV·v + kA·a",
    "drivetrain": "u = kS·sgn(v) + kV·v + kA·a  (left and right combined)",
    "drivetrain-angular": "u = kS·sgn(ω) + kV·ω + kA·ω'  (u: SysId's 2·|V_left|·sgn(ω))",
    "elevator": "u = kS·sgn(v) + kV·v + kA·a + kG",
    "arm": "u = kS·sgn(v) + kV·v + kA·a + kG·cos(θ + offset)",
}
_ANGLE_SCALE = {"radians": 1.0, "degrees": math.pi / 180.0, "rotations": 2.0 * math.pi}
_NOISE_WINDOW = 9
#: consecutive moving samples that confirm the start of motion (see _moving_stretch)
MOTION_CONFIRM = 5


# --------------------------------------------------------------------------------------------
# gains from the regression coefficients (delta method)
# --------------------------------------------------------------------------------------------


def _gain_values(theta: FloatArray, mechanism: str) -> FloatArray:
    alpha, beta, gamma = theta[:3]
    out = [-gamma / beta, -alpha / beta, 1.0 / beta]
    if mechanism == "elevator":
        out.append(-theta[3] / beta)
    elif mechanism == "arm":
        delta, eps = theta[3], theta[4]
        out.append(math.hypot(delta, eps) / beta)
        out.append(math.atan2(eps, -delta))
    return np.asarray(out, dtype=float)


def _gain_jacobian(theta: FloatArray, mechanism: str) -> FloatArray:
    """Analytic Jacobian d(gains)/d(α, β, γ[, δ, ε])."""
    alpha, beta, gamma = theta[:3]
    k = len(theta)
    rows = []
    r = np.zeros(k)
    r[1], r[2] = gamma / beta**2, -1.0 / beta  # kS = -γ/β
    rows.append(r)
    r = np.zeros(k)
    r[0], r[1] = -1.0 / beta, alpha / beta**2  # kV = -α/β
    rows.append(r)
    r = np.zeros(k)
    r[1] = -1.0 / beta**2  # kA = 1/β
    rows.append(r)
    if mechanism == "elevator":
        r = np.zeros(k)
        r[1], r[3] = theta[3] / beta**2, -1.0 / beta  # kG = -δ/β
        rows.append(r)
    elif mechanism == "arm":
        delta, eps = theta[3], theta[4]
        h = math.hypot(delta, eps)
        r = np.zeros(k)  # kG = hypot(δ, ε)/β
        r[1] = -h / beta**2
        if h > 0:
            r[3], r[4] = delta / (h * beta), eps / (h * beta)
        rows.append(r)
        r = np.zeros(k)  # offset = atan2(ε, -δ)
        if h > 0:
            r[3], r[4] = eps / h**2, -delta / h**2
        rows.append(r)
    return np.vstack(rows)


def _gain_names(mechanism: str) -> list[str]:
    names = ["kS", "kV", "kA"]
    if mechanism == "elevator":
        names.append("kG")
    elif mechanism == "arm":
        names += ["kG", "offset"]
    return names


def _delta_method(
    fun: Callable[[FloatArray], FloatArray],
    jac: Callable[[FloatArray], FloatArray],
    params: FloatArray,
    cov: FloatArray,
) -> tuple[FloatArray, FloatArray]:
    """Values and covariance of ``fun(params)`` by the delta method, ``J Σ Jᵀ``.

    Uses :func:`derivreg.covariance.delta_method` (given the analytic Jacobian ``jac``) when
    that module is available, else computes ``J Σ Jᵀ`` here.
    """
    try:
        from derivreg.covariance import delta_method
    except ImportError:  # the shared helper is not available: analytic Jacobian here
        return fun(params), jac(params) @ cov @ jac(params).T
    value, vcov = delta_method(fun, params, cov, jac=jac)
    return np.atleast_1d(np.asarray(value, dtype=float)), np.atleast_2d(
        np.asarray(vcov, dtype=float)
    )


def gains_from_coefficients(
    params: Sequence[float] | pd.Series,
    cov: ArrayLike,
    mechanism: str = "simple",
    *,
    alpha: float = 0.05,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Feedforward gains, standard errors and Wald intervals from fitted (α, β, γ[, δ, ε]).

    For ``a = α v + β u + γ sgn(v) [+ δ] [+ δ cos θ + ε sin θ]``: ``kS = −γ/β``, ``kV = −α/β``,
    ``kA = 1/β``; elevator ``kG = −δ/β``; arm ``kG = hypot(δ, ε)/β``, ``offset = atan2(ε, −δ)``.
    The covariance of the gains is ``J Σ Jᵀ`` with the analytic Jacobian ``J`` (delta method).

    Parameters
    ----------
    params : sequence of float or Series
        ``(α, β, γ)``, plus ``δ`` (elevator) or ``(δ, ε)`` (arm), in that order.
    cov : array (k, k)
        Their covariance.
    mechanism : str
        ``simple``, ``drivetrain``, ``drivetrain-angular``, ``elevator`` or ``arm``.
    alpha : float
        1 − confidence level of the intervals.

    Returns
    -------
    gains : DataFrame
        Indexed by gain; columns ``estimate``, ``se``, ``lower``, ``upper``.
    cov : DataFrame
        Covariance of the gains.
    """
    mechanism = _normalise_mechanism(mechanism)
    theta = np.asarray(params, dtype=float).ravel()
    k = len(_COEFS[mechanism])
    cov_arr = np.asarray(cov, dtype=float)
    if theta.shape != (k,) or cov_arr.shape != (k, k):
        raise DataError(
            f"a {mechanism} characterisation needs {k} coefficients {_COEFS[mechanism]} and a "
            f"{k}x{k} covariance; got {theta.shape} and {cov_arr.shape}"
        )
    if not np.isfinite(theta[1]) or theta[1] == 0.0:
        raise IdentificationError(
            "the voltage coefficient β = 1/kA is zero or not finite: the gains are not identified"
        )
    names = _gain_names(mechanism)
    value, gcov = _delta_method(
        lambda p: _gain_values(p, mechanism), lambda p: _gain_jacobian(p, mechanism), theta, cov_arr
    )
    se = np.sqrt(np.clip(np.diag(gcov), 0.0, None))
    z = stats.norm.ppf(1.0 - alpha / 2.0)
    gains = pd.DataFrame(
        {"estimate": value, "se": se, "lower": value - z * se, "upper": value + z * se},
        index=pd.Index(names, name="gain"),
    )
    return gains, pd.DataFrame(gcov, index=names, columns=names)


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------


@dataclass
class Characterization:
    """Feedforward gains of a mechanism with standard errors and intervals.

    Attributes
    ----------
    gains : DataFrame
        Indexed ``kS``, ``kV``, ``kA`` (+ ``kG``; + ``offset`` in radians for an arm); columns
        ``estimate``, ``se``, ``lower``, ``upper``.
    fit : object
        The underlying results object: a statsmodels OLS result for ``method="sysid"``, a
        :class:`~derivreg.results.DiffRegResults` otherwise.
    method : str
        The method that produced the gains.
    mechanism : str
        ``simple``, ``elevator``, ``arm``, ``drivetrain`` or ``drivetrain-angular``.
    coefficients : Series
        The fitted relation's coefficients ``alpha, beta, gamma[, delta, epsilon]``.
    cov : DataFrame
        Covariance of the gains (delta method).
    alpha : float
        1 − confidence level of ``lower``/``upper``.
    units : str
        Position units of the log (velocity is units/s, voltages in volts).
    info : dict
        What the method did (thresholds, trimming, sample counts, fit statistics).
    """

    gains: pd.DataFrame
    fit: Any
    method: str
    mechanism: str
    coefficients: pd.Series
    cov: pd.DataFrame
    alpha: float = 0.05
    units: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def params(self) -> pd.Series:
        """Gain estimates (a Series named by gain)."""
        return self.gains["estimate"]

    @property
    def bse(self) -> pd.Series:
        """Standard errors of the gains."""
        return self.gains["se"]

    def conf_int(self, alpha: float | None = None) -> pd.DataFrame:
        """Wald intervals ``estimate ± z·se`` (``lower``, ``upper``) at level ``1 − alpha``."""
        a = self.alpha if alpha is None else alpha
        z = stats.norm.ppf(1.0 - a / 2.0)
        est, se = self.gains["estimate"], self.gains["se"]
        return pd.DataFrame({"lower": est - z * se, "upper": est + z * se})

    def to_frame(self) -> pd.DataFrame:
        """Tidy table: gain, estimate, se, lower, upper, method, mechanism, units."""
        out = self.gains.reset_index()
        out["method"] = self.method
        out["mechanism"] = self.mechanism
        out["units"] = self.units
        return out

    def summary(self) -> str:
        """A plain-text table of the gains with their intervals and the fit's key facts."""
        level = f"{100 * (1 - self.alpha):g}%"
        lines = [
            f"Mechanism characterisation: {self.mechanism}"
            + (f" (position units: {self.units})" if self.units else ""),
            f"model:  {_MODEL[self.mechanism]}",
            f"method: {self.method}" + (f" — {self.info['note']}" if "note" in self.info else ""),
        ]
        if "nobs" in self.info:
            lines.append(f"nobs:   {self.info['nobs']}")
        header = (
            f"{'gain':<8}{'estimate':>13}{'se':>13}{'lower ' + level:>15}{'upper ' + level:>15}"
        )
        lines += ["", header, "-" * len(header)]
        for name, row in self.gains.iterrows():
            lines.append(
                f"{name!s:<8}{row['estimate']:>13.6g}{row['se']:>13.4g}"
                f"{row['lower']:>15.6g}{row['upper']:>15.6g}"
            )
        extra = {k: v for k, v in self.info.items() if k in ("r2", "rmse", "velocity_threshold")}
        extra.update({k: v for k, v in self.info.items() if k == "step_duration"})
        if extra:
            lines.append("")
            lines += [f"{k}: {v:.6g}" for k, v in extra.items() if isinstance(v, (int, float))]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        return f"<pre>{self.summary()}</pre>"


# --------------------------------------------------------------------------------------------
# the legacy SysId pipeline
# --------------------------------------------------------------------------------------------


def noise_floor(x: FloatArray, window: int = _NOISE_WINDOW) -> float:
    """SysId's noise floor of a signal: spread around a causal moving average.

    ``m_i = (1/w) Σ_{j=i−w+1..i} x_j`` with ``x_j = 0`` for ``j < 0`` (the filter starts from a
    zero-filled buffer) and ``floor = sqrt(Σ_{i≥s} (x_{i−s} − m_i)² / (N − s))`` with
    ``s = w // 2``.

    Parameters
    ----------
    x : array (N,)
        The signal.
    window : int
        Moving-average window ``w`` (SysId uses 9).

    Returns
    -------
    float
    """
    x = np.asarray(x, dtype=float)
    n, step = len(x), window // 2
    if n <= step:
        raise TooFewPointsError(
            f"a noise floor with window {window} needs more than {step} samples, got {n}"
        )
    csum = np.concatenate([[0.0], np.cumsum(x)])
    idx = np.arange(n)
    mean = (csum[idx + 1] - csum[np.maximum(idx - window + 1, 0)]) / window
    resid = x[: n - step] - mean[step:]
    return float(np.sqrt(np.sum(resid**2) / (n - step)))


@dataclass
class _Seg:
    """One test (and drivetrain side) inside the SysId pipeline."""

    test: str
    side: str | None
    t: FloatArray
    u: FloatArray
    x: FloatArray
    v: FloatArray
    dt: FloatArray
    a: FloatArray | None = None

    def keep(self, mask: np.ndarray) -> None:
        for name in ("t", "u", "x", "v", "dt", "a"):
            val = getattr(self, name)
            if val is not None:
                setattr(self, name, val[mask])

    @property
    def key(self) -> str:
        return self.test if self.side is None else f"{self.side}-{self.test}"


def _segments(
    log: pd.DataFrame,
    mechanism: str,
    acceleration: str | None,
    *,
    keep_last: bool = False,
    sign_voltage: bool = True,
) -> list[_Seg]:
    """Split the log into pipeline segments: sign-corrected voltage, last row dropped."""
    segs: list[_Seg] = []
    drive = mechanism == "drivetrain"
    sides: list[str | None]
    if mechanism in DRIVETRAIN_TESTS:
        sides = ["left", "right"] if drive else ["left"]
        if "side" not in log.columns:
            raise ColumnNotFoundError(f"a {mechanism} log needs a 'side' column (left/right)")
    else:
        sides = [None]
    for side in sides:
        for test in TESTS:
            mask = (log["test"] == test).to_numpy()
            if side is not None:
                mask = mask & (log["side"] == side).to_numpy()
            d = log.loc[mask]
            if len(d) < 3:
                raise TooFewPointsError(
                    f"test {test!r}{'' if side is None else f' ({side})'} has {len(d)} rows; "
                    "the SysId pipeline needs all four tests"
                )
            t = d["time"].to_numpy(dtype=float)
            if mechanism == "drivetrain-angular":
                # SysId's angular analysis: voltage 2·copysign(V_left, ω), angle and rate
                v = d["angular_rate"].to_numpy(dtype=float)
                x = d["angle"].to_numpy(dtype=float)
                u = 2.0 * d["voltage"].to_numpy(dtype=float)
            else:
                v = d["velocity"].to_numpy(dtype=float)
                x = d["position"].to_numpy(dtype=float)
                u = d["voltage"].to_numpy(dtype=float)
            if sign_voltage:
                u = np.copysign(u, v)
            if keep_last:
                dt = np.append(np.diff(t), np.diff(t)[-1:])
                seg = _Seg(test, side, t, u, x, v, dt)
            else:
                seg = _Seg(test, side, t[:-1], u[:-1], x[:-1], v[:-1], np.diff(t))
            if acceleration is not None:
                if acceleration not in log.columns:
                    raise ColumnNotFoundError(
                        f"acceleration column {acceleration!r} is not in the log"
                    )
                acc = d[acceleration].to_numpy(dtype=float)
                seg.a = acc if keep_last else acc[:-1]
            segs.append(seg)
    return segs


def _central_acceleration(seg: _Seg) -> FloatArray:
    """SysId's acceleration: central difference with the test's mean dt (0 < dt < 0.5 s)."""
    dt = seg.dt[(seg.dt > 0) & (seg.dt < 0.5)]
    if len(dt) == 0 or len(seg.v) < 2:
        raise TooFewPointsError(f"test {seg.key!r} has too few samples left after trimming")
    h = float(np.mean(dt))
    v = seg.v
    a = np.zeros_like(v)
    prev = np.concatenate([[v[0]], v[:-2]])
    a[:-1] = (v[1:] - prev) / (2.0 * h)
    return a


def sysid_pipeline(
    log: pd.DataFrame,
    mechanism: str,
    *,
    acceleration: str | None = None,
    velocity_threshold: float | None = None,
    step_duration: float | None = None,
    angle_unit: str | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The legacy SysId data preparation, step by step (SYSID.md), returning the regression data.

    1. Per test (and drivetrain side): voltage takes the sign of velocity (``copysign``); the
       last row is dropped; ``dt_k = t_{k+1} − t_k`` is kept. (Positions and velocities are
       already multiplied by ``unitsPerRotation`` by :func:`~derivreg.io.read_sysid`.)
    2. Velocity threshold: the smallest :func:`noise_floor` (window 9) of velocity over the
       quasistatic tests.
    3. Quasistatic tests: samples with ``|V| ≤ 0`` or ``|v| <`` threshold are deleted.
    4. Acceleration per test: ``a_i = (v_{i+1} − v_{i−1}) / (2 h̄)`` with ``v_{−1} := v_0``, ``h̄``
       the mean of that test's ``0 < dt < 0.5``; the last ``a`` is 0.
    5. Dynamic tests: samples before the largest ``|a|`` are dropped. The duration ``D`` is set
       once, on the first dynamic test visited (``fast-forward``; ``right-fast-backward`` for
       drivetrains): ``D = min(t_last(|a| > floor_a) − t_front + 1 s, longest raw dynamic
       test)``; every dynamic test keeps ``t − t_front ≤ D``.
    6. Samples with ``a == 0.0`` exactly are deleted — except for drivetrains, whose combined
       left+right data SysId concatenates before that step.

    Parameters
    ----------
    log : DataFrame
        As returned by :func:`~derivreg.io.read_sysid`.
    mechanism : str
        Normalised mechanism name.
    acceleration : str, optional
        Column holding a measured (or exact) acceleration to use instead of step 4.
    velocity_threshold, step_duration : float, optional
        Override SysId's automatic threshold (step 2) and duration ``D`` (step 5).
    angle_unit : str, optional
        Unit of the arm's position (``radians``, ``degrees``, ``rotations``); default from
        ``log.attrs["units"]``.

    Returns
    -------
    data : DataFrame
        Columns ``test`` (and ``side``), ``time``, ``a``, ``v``, ``u``, ``sgn`` (and ``const``
        for an elevator, ``cos``, ``sin`` for an arm) — the regression rows in SysId's order.
    info : dict
        ``velocity_threshold``, ``step_duration``, ``nobs_by_test``.
    """
    segs = _segments(log, mechanism, acceleration)
    quasi = [s for s in segs if s.test.startswith("slow")]
    dyn = [s for s in segs if s.test.startswith("fast")]

    # 2. velocity threshold from the quasistatic tests' noise floor
    thr = (
        min(noise_floor(s.v) for s in quasi)
        if velocity_threshold is None
        else float(velocity_threshold)
    )
    max_duration = max(float(s.t[-1] - s.t[0]) for s in dyn)

    # 3. quasistatic trimming
    for s in quasi:
        s.keep((np.abs(s.u) > 0) & (np.abs(s.v) >= thr))
        if len(s.v) < 2:
            raise TooFewPointsError(
                f"quasistatic test {s.key!r} has fewer than 2 samples with |v| >= {thr:.4g} "
                "(the velocity threshold)"
            )

    # 4. acceleration
    if acceleration is None:
        for s in segs:
            s.a = _central_acceleration(s)

    # 5. dynamic trimming
    first = (
        ("right", "fast-backward") if mechanism == "drivetrain" else (dyn[0].side, "fast-forward")
    )
    order = sorted(dyn, key=lambda s: (s.side, s.test) != first)
    duration = step_duration
    for s in order:
        assert s.a is not None
        s.keep(np.arange(len(s.a)) >= int(np.argmax(np.abs(s.a))))
        t0 = s.t[0]
        if duration is None:
            floor_a = noise_floor(s.a) if len(s.a) > _NOISE_WINDOW // 2 else 0.0
            above = np.nonzero(np.abs(s.a) > floor_a)[0]
            last = s.t[above[-1]] if len(above) else t0
            duration = min(float(last - t0) + 1.0, max_duration)
        s.keep(s.t - t0 <= duration)

    # regression rows, in SysId's order (per side: slow-forward, slow-backward, fast-..., ...)
    assert all(s.a is not None for s in segs)
    data = _regression_frame(segs, [s.a for s in segs], log, mechanism, angle_unit)
    # 6. exact-zero accelerations (drivetrains keep them: combined before the filter)
    if mechanism != "drivetrain":
        data = data.loc[data["a"].to_numpy() != 0.0].reset_index(drop=True)
    info = {
        "velocity_threshold": thr,
        "step_duration": float(duration) if duration is not None else float("nan"),
        "nobs_by_test": data.groupby("test", sort=False).size().to_dict(),
    }
    return data, info


def _untrimmed(
    log: pd.DataFrame,
    mechanism: str,
    *,
    acceleration: str | None = None,
    angle_unit: str | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """SysId's regression rows without its data preparation (``trim=False``).

    Every row of every test, voltage as logged, ``sgn = copysign(1, v)``, acceleration from the
    column ``acceleration`` or SysId's per-test central difference — the setting of SysId's own
    noise-free unit check, which regresses the exact acceleration of a simulated plant.
    """
    segs = _segments(log, mechanism, acceleration, keep_last=True, sign_voltage=False)
    accels = [_central_acceleration(s) if acceleration is None else s.a for s in segs]
    data = _regression_frame(segs, accels, log, mechanism, angle_unit)
    info = {"nobs_by_test": data.groupby("test", sort=False).size().to_dict()}
    return data, info


def _angle_scale(log: pd.DataFrame, angle_unit: str | None) -> float:
    unit = (angle_unit or str(log.attrs.get("units", ""))).strip().lower()
    if unit not in _ANGLE_SCALE:
        raise DataError(
            f"an arm needs its position as an angle; units {unit!r} are not one of "
            f"{list(_ANGLE_SCALE)} (pass angle_unit=...)"
        )
    return _ANGLE_SCALE[unit]


def _fit_sysid(
    log: pd.DataFrame,
    mechanism: str,
    alpha: float,
    *,
    cov_type: str = "nonrobust",
    cov_kwds: dict[str, Any] | None = None,
    trim: bool = True,
    **options: Any,
) -> Characterization:
    import statsmodels.api as sm

    if trim:
        data, info = sysid_pipeline(log, mechanism, **options)
    else:
        data, info = _untrimmed(log, mechanism, **options)
    cols = ["v", "u", "sgn", *{"elevator": ["const"], "arm": ["cos", "sin"]}.get(mechanism, [])]
    names = list(_COEFS[mechanism])
    if len(data) <= len(cols):
        raise TooFewPointsError(
            f"the SysId pipeline left {len(data)} samples for {len(cols)} coefficients"
        )
    X = pd.DataFrame(data[cols].to_numpy(), columns=names)
    if np.linalg.matrix_rank(X.to_numpy()) < len(cols):
        raise IdentificationError(
            f"the SysId regression of a on [{', '.join(cols)}] is rank-deficient after trimming "
            f"({info.get('nobs_by_test', {})} rows per test): the tests do not excite the "
            "mechanism enough (e.g. quasistatic ramps that never break static friction)"
        )
    model = sm.OLS(data["a"].to_numpy(), X, hasconst=mechanism == "elevator")
    res = model.fit(cov_type=cov_type, cov_kwds=cov_kwds or {})
    params = pd.Series(np.asarray(res.params), index=names)
    gains, gcov = gains_from_coefficients(
        params, np.asarray(res.cov_params()), mechanism, alpha=alpha
    )
    info.update(
        {
            "nobs": int(res.nobs),
            "r2": float(res.rsquared),
            "rmse": float(np.sqrt(np.mean(np.asarray(res.resid) ** 2))),
            "cov_type": cov_type,
            "note": f"legacy SysId pipeline, OLS of a on [{', '.join(cols)}], SE {cov_type}",
        }
    )
    info["data"] = data
    return Characterization(
        gains=gains,
        fit=res,
        method="sysid",
        mechanism=mechanism,
        coefficients=params,
        cov=gcov,
        alpha=alpha,
        units=str(log.attrs.get("units", "")),
        info=info,
    )


# --------------------------------------------------------------------------------------------
# front door
# --------------------------------------------------------------------------------------------


def _normalise_mechanism(mechanism: str) -> str:
    key = str(mechanism).strip()
    if key in MECHANISMS:
        return MECHANISMS[key]
    low = key.lower().replace("_", "-").replace(" (angular)", "-angular")
    aliases = {"flywheel": "simple", "motor": "simple", "angular": "drivetrain-angular"}
    low = aliases.get(low, low)
    if low in _COEFS:
        return low
    raise DataError(
        f"unknown mechanism {mechanism!r}; use one of {sorted(_COEFS)} or a SysId test name "
        f"{list(MECHANISMS)}"
    )


def _check_log(log: Any, mechanism: str | None) -> tuple[pd.DataFrame, str]:
    if isinstance(log, (str, os.PathLike)):
        # a WPILog does not say which mechanism it holds: pass it on (JSON logs ignore it)
        log = read_sysid(log, mechanism=_normalise_mechanism(mechanism) if mechanism else None)
    if not isinstance(log, pd.DataFrame):
        raise DataError(
            f"characterize needs a SysId log: a path or the DataFrame of dr.io.read_sysid, got "
            f"{type(log).__name__}"
        )
    if mechanism is None:
        mechanism = log.attrs.get("mechanism")
        if mechanism is None:
            raise DataError(
                "the log does not say which mechanism it is (no .attrs['mechanism']); pass "
                f"mechanism= one of {sorted(_COEFS)}"
            )
    mech = _normalise_mechanism(mechanism)
    need = {"test", "time", "voltage", "position", "velocity"}
    if mech in DRIVETRAIN_TESTS:
        need |= {"side"}
    if mech == "drivetrain-angular":
        need |= {"angle", "angular_rate"}
    missing = sorted(need - set(log.columns))
    if missing:
        raise ColumnNotFoundError(
            f"the log lacks the columns {missing}; a SysId frame (dr.io.read_sysid) has "
            f"{sorted(need)}"
        )
    unknown = sorted(set(log["test"].unique()) - set(TESTS))
    if unknown:
        raise DataError(f"unknown test names {unknown}; SysId tests are {list(TESTS)}")
    return log, mech


def characterize(
    log: pd.DataFrame | str | os.PathLike[str],
    mechanism: str | None = None,
    method: str = "auto",
    *,
    alpha: float = 0.05,
    **options: Any,
) -> Characterization:
    """Feedforward gains kS, kV, kA (+ kG, arm offset) of a mechanism, with intervals.

    The relation fitted is ``dv/dt = α v + β u + γ sgn(v) [+ δ] [+ δ cos θ + ε sin θ]``; the
    gains are ``kS = −γ/β``, ``kV = −α/β``, ``kA = 1/β`` (elevator ``kG = −δ/β``; arm
    ``kG = hypot(δ, ε)/β``, ``offset = atan2(ε, −δ)``) with delta-method standard errors.

    Parameters
    ----------
    log : DataFrame or path
        A SysId log: the frame of :func:`derivreg.io.read_sysid`, or a path to read.
    mechanism : str, optional
        ``simple``, ``elevator``, ``arm``, ``drivetrain``, ``drivetrain-angular`` (or the SysId
        test names); default: ``log.attrs["mechanism"]``.
    method : str
        ``"sysid"``: the legacy SysId pipeline (:func:`sysid_pipeline` + OLS), "the number
        SysId gives", with OLS standard errors (options: ``acceleration`` — a column to use
        instead of SysId's central difference; ``velocity_threshold``, ``step_duration`` —
        override SysId's automatic trimming; ``trim=False`` — SysId's regression on every row
        without its data preparation, as in SysId's own unit check; ``angle_unit``;
        ``cov_type``, ``cov_kwds`` — statsmodels OLS covariance, default ``"nonrobust"``).
        ``"auto"`` (default, the recommended method: the integral form with feasible GLS,
        ``AUTO_METHOD``/``AUTO_OPTIONS``, when its residuals are explained by measurement
        noise; when its pretest finds process noise, under which the integral form is biased
        (kA +1.3 SD on a simulated motor, +3.5 SD with 20 s of steady state per step), the
        state-space fit (exact discretisation, process and measurement noise; ``info
        ["auto_choice"]``), whose intervals are widened by the disagreement with the integral
        fit when its innovations are not white (Ljung–Box p < ``MISFIT_PVALUE``: the log
        departs from the model), with a BiasWarning; when the fitted time constant ``kA/kV``
        spans fewer than 3 intervals between the rows used, the estimates of the state-space
        fit with intervals widened as under ``cross_check`` below, by the
        rounding of the step-response readings and by a one-sample timing ambiguity, and a
        BiasWarning that kA is not determined by the log),
        ``"integral"``, ``"gradient"``, ``"arimax"``, ``"statespace"``, ``"fourier"``,
        ``"trajectory"``: a derivreg fit of the relation by :func:`derivreg.fit` on the log
        cleaned by :func:`prepare_fit_data` (options: ``signal="velocity"`` or ``"position"``
        — the second-order relation in the position alone; ``fresh`` — drop held readings,
        ``"auto"``; ``angle_unit``; ``cross_check`` — ``"auto"`` (default): when the fitted
        time constant ``kA/kV`` spans fewer than 3 of the intervals between the rows used
        (``info["resolution"]``), a :class:`~derivreg.exceptions.BiasWarning` says kA is not
        determined by the log and, for ``method="auto"``, the gains' intervals are widened by
        their disagreement with a state-space fit (``se' = sqrt(se² + Δ²)``); ``True``: also
        cross-check well-resolved logs and widen the gains on which the two fits disagree
        beyond twice their combined SE; ``False``: no cross-check; anything else, e.g.
        ``cov_type``, goes to :func:`derivreg.fit`). Warns with
        :class:`~derivreg.exceptions.ExcitationWarning` when a gain's relative standard error
        exceeds 25%, and when more than half of the rows lie more than 5 time constants
        ``kA/kV`` after the start of motion of a dynamic test (settled steady state, carrying
        nothing about kA; ``info["steady_state"]``).
    alpha : float
        1 − confidence level of the intervals.
    **options
        Passed to the method.

    Returns
    -------
    Characterization
    """
    if method not in _METHODS:
        raise MethodNotAvailableError(
            f"unknown characterisation method {method!r}; use one of {list(_METHODS)}"
        )
    if not 0.0 < alpha < 1.0:
        raise DataError(f"alpha must be in (0, 1), got {alpha}")
    frame, mech = _check_log(log, mechanism)
    if method == "sysid":
        return _fit_sysid(frame, mech, alpha, **options)
    return _fit_derivreg(frame, mech, method, alpha, **options)


def _longest_run(mask: np.ndarray) -> tuple[int, int]:
    """``(start, stop)`` of the longest run of True in ``mask`` (``(0, 0)`` if none)."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    starts, stops = edges[::2], edges[1::2]
    if len(starts) == 0:
        return 0, 0
    i = int(np.argmax(stops - starts))
    return int(starts[i]), int(stops[i])


def _interval_means(t: FloatArray, y: FloatArray, idx: np.ndarray, t_end: float) -> FloatArray:
    """Time averages of the held (ZOH) signal ``y`` over ``[t[idx_j], t[idx_{j+1}])``."""
    edges = np.append(t[1:], t_end)
    area = np.concatenate([[0.0], np.cumsum(y * (edges - t))])
    stops = np.append(idx[1:], len(t))
    t_stop = np.append(t[idx[1:]], t_end)
    return (area[stops] - area[idx]) / (t_stop - t[idx])


def prepare_fit_data(
    log: pd.DataFrame,
    mechanism: str,
    *,
    signal: str = "velocity",
    fresh: bool | str = "auto",
    angle_unit: str | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Clean a SysId log for a derivreg fit of ``dv/dt = α v + β u + γ s (+ gravity terms)``.

    Per test (and drivetrain side), one segment of the fit:

    * **leading zero-voltage rows and stiction**: only the stretch in which the mechanism moves
      is kept — voltage applied and ``s·v`` above its level at rest (the largest ``|v|`` over
      the leading 0-V rows) and above three times the velocity noise; it ends with the longest
      such run and starts where motion is first confirmed (``MOTION_CONFIRM`` moving samples,
      see :func:`_moving_stretch`), so that dips below the threshold at slow speed do not
      select the rows kept. Samples held by static friction obey ``a = 0``, not the relation,
      and are left out.
    * **friction sign**: ``s`` is the test's direction of motion (the sign of its mean
      velocity), constant over the segment — never the sign of a noisy velocity near zero; the
      voltage is ``|V|·s`` (SysId's ``copysign``, per test rather than per sample).
    * **held (stale) readings** (``fresh="auto"``): when the sensor updates slower than the log
      (readings change on a fixed schedule of every ``m ≥ 2`` rows, see
      :func:`_held_readings`), a repeated row is an old reading, not a measurement, and
      is dropped; the voltage of each kept row becomes its time average until the next kept
      row, so the first integral of the held voltage stays exact. Merely quantised readings
      are kept (dropping them would select samples by their noise). Jittery or irregular time
      stamps are kept as they are: the fits use the actual times.

    Parameters
    ----------
    log : DataFrame
        From :func:`~derivreg.io.read_sysid`.
    mechanism : str
        Normalised mechanism name.
    signal : {"velocity", "position"}
        Fit the first-order relation in the logged velocity, or the second-order relation in
        the logged position (``d(x, 2) ~ d(x) + u + s``).
    fresh : bool or "auto"
        Drop repeated readings (True), keep them (False), or decide from the log ("auto").
    angle_unit : str, optional
        Arm angle unit (default from ``log.attrs["units"]``).

    Returns
    -------
    data : DataFrame
        Columns ``segment``, ``time``, ``v`` (or ``x``), ``u``, ``s`` (+ ``cos_theta``,
        ``sin_theta`` for an arm).
    info : dict
        Rows kept per segment (``rows_by_segment``) and whether repeats were dropped
        (``fresh``).
    """
    if signal not in ("velocity", "position"):
        raise DataError(f"signal must be 'velocity' or 'position', got {signal!r}")
    scale = _angle_scale(log, angle_unit) if mechanism == "arm" else 1.0
    keys = ["test", "side"] if mechanism in DRIVETRAIN_TESTS else ["test"]
    sides = ["left", "right"] if mechanism == "drivetrain" else ["left"]
    frames, kept, stretches = [], {}, []
    for key, d in log.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        if mechanism in DRIVETRAIN_TESTS and key[1] not in sides:
            continue
        t = d["time"].to_numpy(dtype=float)
        volt = d["voltage"].to_numpy(dtype=float)
        if mechanism == "drivetrain-angular":
            v = d["angular_rate"].to_numpy(dtype=float)
            x = d["angle"].to_numpy(dtype=float)
            volt = 2.0 * volt  # SysId's angular voltage: 2·|V_left|
        else:
            v = d["velocity"].to_numpy(dtype=float)
            x = d["position"].to_numpy(dtype=float)
        label = "/".join(str(k) for k in key[::-1])
        a, b, direction = _moving_stretch(v, volt, label)
        dt = np.diff(t)
        t_end = t[b] if b < len(t) else t[b - 1] + float(np.median(dt))
        t, volt, v, x = t[a:b], volt[a:b], v[a:b], x[a:b]
        u = np.abs(volt) * direction
        y = v if signal == "velocity" else x
        stretches.append((label, key[0], t, u, y, x, direction, t_end))
    if fresh == "auto":
        fresh = _held_readings([(y, test) for _, test, _, _, y, *_ in stretches])
    for label, _, t, u, y, x, direction, t_end in stretches:
        idx = np.flatnonzero(np.concatenate([[True], np.diff(y) != 0])) if fresh else None
        frame: dict[str, Any] = {"segment": label}
        if idx is not None:
            frame.update(time=t[idx], u=_interval_means(t, u, idx, t_end))
            y_out = y[idx]
        else:
            frame.update(time=t, u=u)
            y_out = y
        frame["v" if signal == "velocity" else "x"] = y_out
        frame["s"] = direction
        if mechanism == "arm":
            theta = x * scale
            for name, g in (("cos_theta", np.cos(theta)), ("sin_theta", np.sin(theta))):
                frame[name] = g if idx is None else _interval_means(t, g, idx, t_end)
        out = pd.DataFrame(frame)
        kept[label] = len(out)
        frames.append(out)
    data = pd.concat(frames, ignore_index=True)
    return data, {"rows_by_segment": kept, "fresh": bool(fresh)}


def _moving_stretch(v: FloatArray, volt: FloatArray, label: str) -> tuple[int, int, float]:
    """``(start, stop, direction)`` of the stretch in which the mechanism moves.

    Direction ``s``: the sign of the mean velocity while voltage is applied. Moving: voltage
    applied and ``s·v`` above both the largest ``|v|`` over the leading 0-V rows and three
    times the velocity noise (robust first-difference estimate ``1.4826·MAD(Δv)/√2``). The
    stretch ends where the longest moving run ends. It starts where motion is first confirmed,
    not where the longest run starts: when the first run of ``MOTION_CONFIRM`` or more moving
    samples precedes the longest run (the velocity dipped below the threshold in between, as
    it does under process noise at the slow start of a ramp) and the voltage stays on, the
    stretch starts at the last sample of that confirmation window, a time fixed by the past
    alone. The start of the longest run is the last upward crossing of the threshold: rows
    after it are selected for never dipping again, a path conditioned to rise, which biased
    kS by −0.49 SD and kV by +0.45 SD on the recovery grid's motor with process noise
    (``benchmarks/results/sysid_motor_after.md``). When the first confirmed run is the
    longest one (a step), its start is kept.
    """
    on = np.flatnonzero(volt != 0)
    if len(on) == 0:
        raise TooFewPointsError(f"segment {label!r}: no voltage is ever applied")
    direction = float(np.sign(np.mean(v[on])))
    if direction == 0.0:
        raise DataError(f"segment {label!r}: the direction of motion is undetermined")
    rest = float(np.max(np.abs(v[: on[0]]))) if on[0] > 0 else 0.0
    dv = np.diff(v[on])
    noise = 1.4826 * float(np.median(np.abs(dv - np.median(dv)))) / math.sqrt(2.0) if len(dv) else 0
    moving = (direction * v > max(rest, 3.0 * noise)) & (volt != 0)
    a, b = _longest_run(moving)
    if b - a < 5:
        raise TooFewPointsError(
            f"segment {label!r}: the mechanism never moves for 5 consecutive samples"
        )
    padded = np.concatenate([[False], moving, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    for start, stop in zip(edges[::2], edges[1::2], strict=True):
        if start >= a:
            break
        if stop - start >= MOTION_CONFIRM:
            if np.all(volt[start:b] != 0):
                a = int(start) + MOTION_CONFIRM - 1
            break
    return a, b, direction


def _held_readings(signals: list[tuple[FloatArray, str]], share: float = 0.8) -> bool:
    """Whether the sensor updates slower than the log: readings held over several rows.

    A held reading changes on a fixed schedule: the gaps (in rows) between successive changes
    are multiples of the update period ``m ≥ 2`` (SysId logs at 5 ms, many motor controllers
    report every 20 ms: ``m = 4``). A quantised but fresh reading changes whenever the true
    value crosses a quantum, at irregular gaps whose most frequent value is 1 (geometric
    gaps under noise; every row while the velocity moves by more than a quantum per row). So
    the log holds readings when, in most segments, the modal gap ``m`` is at least 2 and at
    least ``share`` of the gaps are multiples of it. (Judging by how often the reading changes
    would mistake a fast, quantised mechanism that reaches steady state within a few rows for
    a held sensor, and dropping repeats of merely quantised readings selects samples by their
    noise: on a 12-ms flywheel that turned kS negative and multiplied kA by six.)
    """
    votes = []
    for y, _ in signals:
        gaps = np.diff(np.flatnonzero(np.diff(y) != 0))
        if len(gaps) < 5:
            continue
        m = int(np.argmax(np.bincount(gaps)))
        votes.append(m >= 2 and float(np.mean(gaps % m == 0)) >= share)
    return bool(votes) and float(np.mean(votes)) > 0.5


def _formula(mechanism: str, signal: str) -> tuple[str, list[str]]:
    """Formula of the relation and the names of (α, β, γ[, δ, ε]) among its terms."""
    lhs, lag = ("d(v)", "v") if signal == "velocity" else ("d(x, 2)", "d(x)")
    rhs = [lag, "u", "s"]
    names = [lag, "u", "s"]
    if mechanism == "elevator":
        names.append("Intercept")
        return f"{lhs} ~ {' + '.join(rhs)}", names
    if mechanism == "arm":
        rhs += ["cos_theta", "sin_theta"]
        names += ["cos_theta", "sin_theta"]
    return f"{lhs} ~ {' + '.join(rhs)} - 1", names


#: what ``method="auto"`` runs first: :func:`derivreg.fit` method and options (the state-space
#: fit replaces it under process noise or when kA/kV spans fewer than 3 samples)
AUTO_METHOD = "integral"
AUTO_OPTIONS: dict[str, Any] = {"cov_type": "GLS"}

#: a gain is flagged when its relative standard error exceeds this
POOR_RELATIVE_SE = 0.25


def compare(
    log: pd.DataFrame | str | os.PathLike[str],
    methods: Sequence[str] = ("sysid", "auto"),
    mechanism: str | None = None,
    *,
    alpha: float = 0.05,
    **options: Any,
) -> pd.DataFrame:
    """Gains by several methods side by side (e.g. SysId's numbers next to the recommended ones).

    Parameters
    ----------
    log, mechanism, alpha
        As in :func:`characterize` (a path is read once).
    methods : sequence of str
        Methods to run, in order.
    **options
        Passed to every method (use :func:`characterize` for method-specific options).

    Returns
    -------
    DataFrame
        Tidy: one row per method and gain (``gain``, ``estimate``, ``se``, ``lower``,
        ``upper``, ``method``, ``mechanism``, ``units``); a failing method gets one row with
        its error in ``error``.
    """
    frame, mech = _check_log(log, mechanism)
    rows = []
    for method in methods:
        try:
            rows.append(characterize(frame, mech, method, alpha=alpha, **options).to_frame())
        except DerivregError as exc:
            rows.append(
                pd.DataFrame({"method": [method], "mechanism": [mech], "error": [str(exc)]})
            )
    return pd.concat(rows, ignore_index=True)


def _fit_recorded(call: Callable[[], Any]) -> tuple[Any, list[warnings.WarningMessage]]:
    """Run a fit, recording its warnings (re-emitted by :func:`_reemit` if its result is used)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = call()
    return res, list(caught)


def _reemit(
    caught: list[warnings.WarningMessage], drop: Callable[[warnings.WarningMessage], bool]
) -> None:
    """Issue the recorded warnings again (at the caller of :func:`characterize`), except those
    ``drop`` says another check of this module states better."""
    for w in caught:
        if not drop(w):
            warnings.warn(w.message, w.category, stacklevel=4)


def _process_noise_found(res: Any) -> bool:
    """Whether the integral fit's pretest kept process noise (``process noise SD`` > 0).

    Its covariance then includes process noise, but its estimates do not correct for it: the
    trapezoid regressor ``(v_{k−1} + v_k)/2`` carries the increment's noise, which biases
    ``α`` and ``β`` (kA by +1.3 SD on the recovery grid's motor, +3.5 SD with 20 s of steady
    state per step), the more so the longer the record.
    """
    info = getattr(res, "info", {}) or {}
    return any(
        str(k).startswith("process noise SD") and isinstance(v, (int, float)) and v > 0
        for k, v in info.items()
    )


#: Ljung–Box p-value of the state-space innovations below which ``"auto"`` treats the log as
#: departing from the model (and cross-checks its gains against the integral fit's)
MISFIT_PVALUE = 0.01

#: a dynamic-test row this many time constants ``kA/kV`` after the start of motion is settled
STEADY_TIME_CONSTANTS = 5.0

#: share of settled rows above which an ExcitationWarning says so
STEADY_SHARE_WARN = 0.5


def _steady_state(data: pd.DataFrame, gains: pd.DataFrame) -> dict[str, Any]:
    """Rows of the dynamic tests more than :data:`STEADY_TIME_CONSTANTS` time constants after
    the start of motion, where the step response has settled.

    After a voltage step the velocity approaches its terminal value as ``e^{−t/τ}``,
    ``τ = kA/kV``; its sensitivity to kA is ``∝ (t/τ) e^{−t/τ}``, so the rows after ``5τ`` carry
    ``∫_5^∞ x² e^{−2x} dx / ∫_0^∞ x² e^{−2x} dx ≈ 0.3%`` of the log's information on kA (they
    inform kV and kS only). Detected from the fitted τ, not from a smoothed acceleration, which
    process noise keeps away from zero (the generic steady-state diagnostic saw 21% of such a
    log at rest when 72% was).
    """
    kv, ka = gains.loc["kV", "estimate"], gains.loc["kA", "estimate"]
    tau = ka / kv if kv > 0 and ka > 0 else float("nan")
    out: dict[str, Any] = {"time_constant": float(tau), "rows": 0, "share": 0.0, "seconds": 0.0}
    if not np.isfinite(tau):
        return out
    rows, secs = 0, 0.0
    for label, g in data.groupby("segment", sort=False)["time"]:
        if "fast" not in str(label):
            continue
        t = g.to_numpy(dtype=float)
        late = t - t[0] > STEADY_TIME_CONSTANTS * tau
        rows += int(late.sum())
        if late.any():
            secs += float(t[-1] - t[late][0])
    out.update(rows=rows, share=rows / max(len(data), 1), seconds=secs)
    return out


def _warn_steady(steady: dict[str, Any]) -> None:
    """ExcitationWarning: most rows are settled steady state that carries nothing about kA."""
    tau = steady["time_constant"]
    warnings.warn(
        f"{steady['share']:.0%} of the rows the fit uses ({steady['rows']} rows, "
        f"{steady['seconds']:.3g} s of the dynamic tests) lie more than "
        f"{STEADY_TIME_CONSTANTS:g} time constants (kA/kV = {1e3 * tau:.3g} ms) after the start "
        "of motion: the velocity has settled, and these rows inform kV and kS but carry almost "
        f"nothing about kA (< 0.3% of the log's information on it); kA rests on the first "
        f"{STEADY_TIME_CONSTANTS * tau:.3g} s of each step. A long hold adds no precision to kA "
        "and lets any steady-state model error (quantisation, cogging, supply sag) weigh on the "
        "fit: shorten the dynamic tests or repeat the steps",
        ExcitationWarning,
        stacklevel=4,
    )


def _is_generic_steady(w: warnings.WarningMessage) -> bool:
    return issubclass(w.category, ExcitationWarning) and "at steady state" in str(w.message)


def _fit_derivreg(
    log: pd.DataFrame,
    mechanism: str,
    method: str,
    alpha: float,
    *,
    signal: str = "velocity",
    fresh: bool | str = "auto",
    angle_unit: str | None = None,
    cross_check: bool | str = "auto",
    **fit_options: Any,
) -> Characterization:
    try:
        from derivreg.api import fit
    except ImportError:  # pragma: no cover - the fitting API ships with the package
        raise MethodNotAvailableError(
            f"method={method!r} needs derivreg.fit, which is not available in this version; "
            "use method='sysid'"
        ) from None
    if cross_check not in ("auto", True, False):
        raise DataError(f"cross_check must be 'auto', True or False, got {cross_check!r}")
    data, info = prepare_fit_data(log, mechanism, signal=signal, fresh=fresh, angle_unit=angle_unit)
    formula, names = _formula(mechanism, signal)
    fit_method = method
    if method == "auto":
        # integral form with feasible GLS on the implied measurement + process noise covariance:
        # measured on simulated SysId logs it covers under measurement noise and stays
        # unbiased under process noise, where the OLS/sandwich integral fit biases kA
        fit_method = AUTO_METHOD
        for key, value in AUTO_OPTIONS.items():
            fit_options.setdefault(key, value)
    fit_options.setdefault("input_hold", "zoh")
    state_options = {k: v for k, v in fit_options.items() if k == "input_hold"}

    def run(how: str, frame: pd.DataFrame) -> Any:
        opts = fit_options if how == fit_method else state_options
        return fit(formula, frame, method=how, time="time", segment="segment", **opts)

    def gains_of(res: Any, how: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series, list]:
        params = res.params
        missing = [n for n in names if n not in params.index]
        if missing:
            raise IdentificationError(
                f"the {how} fit of {formula!r} returned no coefficient for {missing}"
            )
        theta = params[names].to_numpy(dtype=float)
        cov = res.cov_params().loc[names, names].to_numpy(dtype=float)
        g, gc = gains_from_coefficients(theta, cov, mechanism, alpha=alpha)
        quant: list[dict[str, Any]] = []
        if signal == "velocity":
            g, gc, quant = _plateau_quantisation(
                data, g, gc, alpha, mechanism, names, lambda d: run(how, d)
            )
        return g, gc, pd.Series(theta, index=list(_COEFS[mechanism])), quant

    res, caught = _fit_recorded(lambda: run(fit_method, data))
    gains, gcov, coefs, info["quantisation"] = gains_of(res, fit_method)
    resolution = _resolution(data, gains)
    misfit: dict[str, Any] | None = None
    if method == "auto" and not resolution["under_resolved"] and _process_noise_found(res):
        # the integral form is biased under process noise (_process_noise_found): report the
        # state-space fit (exact discretisation, process + measurement noise in the likelihood)
        first = {"method": AUTO_METHOD, "gains": gains, "fit": res}
        res, caught = _fit_recorded(lambda: run(CROSS_CHECK_METHOD, data))
        fit_method = CROSS_CHECK_METHOD
        gains, gcov, coefs, info["quantisation"] = gains_of(res, fit_method)
        resolution = _resolution(data, gains)
        info["auto_choice"] = (
            "the integral fit's pretest found process noise, under which the integral form is "
            f"biased: {CROSS_CHECK_METHOD} fit reported"
        )
        misfit = first
    steady = _steady_state(data, gains)
    _reemit(caught, drop=lambda w: steady["share"] > STEADY_SHARE_WARN and _is_generic_steady(w))
    checked = fit_method != CROSS_CHECK_METHOD and (
        cross_check is True or (cross_check == "auto" and method == "auto")
    )
    if resolution["under_resolved"]:
        if checked:
            gains, gcov, resolution["rise_rounding"] = _rise_rounding(
                data, gains, gcov, alpha, mechanism, names, info["quantisation"],
                lambda d: run(fit_method, d),
            )  # fmt: skip
            check = _cross_check(formula, names, data, mechanism, alpha, fit_options)
            resolution["cross_check"] = check
            if "gains" in check:
                gains, gcov = _widen(gains, gcov, check["gains"], alpha)
                if method == "auto":
                    # exact discretisation between samples: right where the integral rule on
                    # 2-3 samples per time constant is not (simulated flywheel, kA RMSE
                    # 1.6e-5 vs 5.5e-5); the widened intervals are symmetric in the two
                    integral_gains = gains["estimate"].copy()
                    resolution["integral_estimates"] = integral_gains
                    gains = gains.assign(estimate=check["gains"]["estimate"])
                    gains["lower"] = gains["estimate"] - (integral_gains - gains["lower"])
                    gains["upper"] = gains["estimate"] + (gains["upper"] - integral_gains)
                    res, fit_method = check.pop("fit"), CROSS_CHECK_METHOD
                    check["gains"] = check["gains"].assign(estimate=integral_gains)
                    check["method"] = AUTO_METHOD
                    coefs = pd.Series(check.pop("theta"), index=list(_COEFS[mechanism]))
            gains, gcov, resolution["timing_se"] = _timing_ambiguity(
                gains, gcov, resolution["sample_interval"], alpha
            )
        _warn_under_resolved(resolution, fit_method, checked)
    elif misfit is not None:
        gains, gcov = _check_misfit(res, gains, gcov, misfit, resolution, cross_check, alpha)
    elif cross_check is True and checked:
        check = _cross_check(formula, names, data, mechanism, alpha, fit_options)
        resolution["cross_check"] = check
        if "gains" in check:
            gains, gcov = _widen_disagreeing(gains, gcov, check, fit_method, alpha)
    info["resolution"] = resolution
    info["steady_state"] = steady
    if steady["share"] > STEADY_SHARE_WARN:
        _warn_steady(steady)
    _warn_poor(gains, mechanism)
    info.update(
        {
            "nobs": int(getattr(res, "nobs", len(data))),
            "formula": formula,
            "fit_method": fit_method,
            "note": f"derivreg {fit_method} fit of {formula}"
            + (" (auto)" if method == "auto" else "")
            + f", SE {getattr(res, 'cov_type', '')}",
            "data": data,
        }
    )
    return Characterization(
        gains=gains,
        fit=res,
        method=method if method != "auto" else f"auto ({fit_method})",
        mechanism=mechanism,
        coefficients=coefs,
        cov=gcov,
        alpha=alpha,
        units=str(log.attrs.get("units", "")),
        info=info,
    )


def _check_misfit(
    res: Any,
    gains: pd.DataFrame,
    gcov: pd.DataFrame,
    first: dict[str, Any],
    resolution: dict[str, Any],
    cross_check: bool | str,
    alpha: float,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``"auto"`` after switching to the state-space fit: is the log consistent with the model?

    Under the model the standardized innovations of the state-space fit are white; their
    Ljung–Box p-value (already computed by the fit) below :data:`MISFIT_PVALUE` says the log
    departs from it (a filtered or lagged velocity, sides or tests with different gains,
    unmodelled friction), and the intervals, which hold under the model, are too narrow. Then
    — or always with ``cross_check=True`` — the gains on which the integral fit (computed
    first, no extra cost) disagrees beyond twice their combined SE are widened by the
    disagreement (:func:`_widen_disagreeing`, BiasWarning). ``cross_check=False``: warn only.
    """
    diag = getattr(res, "diagnostics", None)
    pvalue = float(getattr(diag, "ljung_box_pvalue", float("nan")))
    misfit = bool(np.isfinite(pvalue) and pvalue < MISFIT_PVALUE)
    check: dict[str, Any] = {
        "method": first["method"],
        "gains": first["gains"],
        "innovations_ljung_box_p": pvalue,
        "misfit": misfit,
    }
    resolution["cross_check"] = check
    if cross_check is False:
        if misfit:
            warnings.warn(
                f"the {CROSS_CHECK_METHOD} fit's innovations are autocorrelated (Ljung–Box p = "
                f"{pvalue:.2g}): the log departs from the model (e.g. a filtered or lagged "
                "velocity, sides or tests with different gains), so the intervals, which hold "
                "under the model, are too narrow; cross_check='auto' widens them by the "
                "disagreement with the integral fit",
                BiasWarning,
                stacklevel=4,
            )
        return gains, gcov
    if not (misfit or cross_check is True):
        return gains, gcov
    why = (
        f"its innovations are autocorrelated (Ljung–Box p = {pvalue:.2g}), so the log departs "
        "from the model"
        if misfit
        else "cross_check=True"
    )
    return _widen_disagreeing(gains, gcov, check, CROSS_CHECK_METHOD, alpha, why=why)


#: harmonics of the rounding error summed in the dithered-quantiser bias variance
_HARMONICS = np.arange(1, 41)


def _quantum(v: FloatArray) -> float | None:
    """The reading's quantum ``q`` if ``v`` is quantised (its changes are integer multiples
    of the smallest one, to 2%, in at least 90% of them), else None."""
    dv = np.abs(np.diff(v))
    dv = dv[dv > 0]
    if len(dv) < 3:
        return None
    q = float(np.min(dv))
    r = dv / q
    return q if float(np.mean(np.abs(r - np.round(r)) < 0.02)) >= 0.9 else None


def _plateau_quantisation(
    data: pd.DataFrame,
    gains: pd.DataFrame,
    gcov: pd.DataFrame,
    alpha: float,
    mechanism: str,
    names: list[str],
    refit: Callable[[pd.DataFrame], Any],
) -> tuple[pd.DataFrame, pd.DataFrame, list[dict[str, Any]]]:
    """Add the steady-state quantisation bias to the gains' covariance.

    At the steady state of a dynamic test the true velocity is constant, so its rounding
    error ``ε = round((v + e)/q)·q − (v + e)`` does not average out over the samples: with
    Gaussian reading noise ``e ~ N(0, σ²)`` its mean is the constant
    ``b(v) = Σ_k (q/πk)(−1)^(k+1) sin(2πk v/q) exp(−2π²k²σ²/q²)``, unknown because ``v/q mod 1``
    is. Over a uniform phase ``b`` has variance ``Σ_k (q/πk)² exp(−4π²k²σ²/q²)/2`` (``q²/12``
    without noise, negligible once ``σ ≳ q/2``). Both fits and their white-noise covariances
    treat it as averaging to zero, so a long steady state gives kV and kS intervals far too
    narrow (0% coverage on a 0.307 rad/s quantum with σ = 0.05). Here each dynamic test's
    plateau (the tail within 3 quanta of its median) gets an offset of one bias SD, the
    relation is refitted, and the change of the gains ``Δ_j`` adds ``Σ_j Δ_j Δ_jᵀ`` to their
    covariance (plateaus independent). ``σ`` is estimated conservatively from the plateau's
    spread, ``σ̂² = max(var − q²/12, 0)``.
    """
    records: list[dict[str, Any]] = []
    extra = np.zeros((len(gains), len(gains)))
    for label, idx in data.groupby("segment", sort=False).indices.items():
        if "fast" not in str(label):
            continue
        v = data["v"].to_numpy(dtype=float)[idx]
        q = _quantum(v)
        if q is None or len(v) < 20:
            continue
        centre = float(np.median(v[len(v) // 2 :]))
        off = np.flatnonzero(np.abs(v - centre) > 3.0 * q)
        start = int(off[-1]) + 1 if len(off) else 0
        plateau = v[start:]
        if len(plateau) < 10:
            continue
        sigma2 = max(float(np.var(plateau)) - q * q / 12.0, 0.0)
        k = _HARMONICS
        bias_var = float(
            np.sum((q / (np.pi * k)) ** 2 * np.exp(-4 * np.pi**2 * k**2 * sigma2 / q**2)) / 2
        )
        record = {"segment": label, "quantum": q, "plateau_rows": len(plateau),
                  "plateau_start": start, "noise_sd": math.sqrt(sigma2),
                  "bias_sd": math.sqrt(bias_var)}  # fmt: skip
        records.append(record)
        if math.sqrt(bias_var) < 0.01 * q:
            continue
        shifted = data.copy()
        rows = idx[start:]
        shifted.iloc[rows, shifted.columns.get_loc("v")] += math.sqrt(bias_var)
        try:
            with warnings.catch_warnings():  # the base fit has already warned
                warnings.simplefilter("ignore")
                res = refit(shifted)
            theta = res.params[names].to_numpy(dtype=float)
            moved = _gain_values(theta, mechanism)
        except (DerivregError, KeyError) as exc:
            record["error"] = str(exc)
            continue
        delta = moved - gains["estimate"].to_numpy()
        delta = np.where(np.isfinite(delta), delta, 0.0)
        if mechanism == "arm":
            delta[-1] = 0.0  # the offset is an angle; its bias is not propagated
        record["gain_shift"] = dict(zip(gains.index, delta, strict=True))
        extra += np.outer(delta, delta)
    if not extra.any():
        return gains, gcov, records
    cov = gcov + extra
    se = np.sqrt(np.clip(np.diag(cov.to_numpy()), 0.0, None))
    return _with_se(gains, se, alpha), cov, records


def _with_se(gains: pd.DataFrame, se: Any, alpha: float) -> pd.DataFrame:
    """A copy of ``gains`` with standard errors ``se`` and the Wald intervals they give."""
    z = stats.norm.ppf(1.0 - alpha / 2.0)
    out = gains.copy()
    out["se"] = se
    out["lower"] = out["estimate"] - z * out["se"]
    out["upper"] = out["estimate"] + z * out["se"]
    return out


#: random rounding-error draws propagated through the fit on under-resolved logs
RISE_DRAWS = 16


def _rise_rounding(
    data: pd.DataFrame,
    gains: pd.DataFrame,
    gcov: pd.DataFrame,
    alpha: float,
    mechanism: str,
    names: list[str],
    plateaus: list[dict[str, Any]],
    refit: Callable[[pd.DataFrame], Any],
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Add the rounding error of the step-response readings to the gains' covariance.

    When ``kA/kV`` spans a few samples, kA rests on the handful of readings taken while the
    velocity rises by many quanta per sample; each carries an independent rounding error
    ``U(−q/2, q/2)`` (variance ``q²/12``). The fits estimate one noise level for all rows, set
    by the plateaus and ramps, where the rounding error is small or constant, so they trust
    these readings too much (kA intervals covered 15–25% on a noise-free 0.307 rad/s
    quantum). Propagated by Monte Carlo through the fit (:data:`RISE_DRAWS` draws of the
    rounding errors on the rise rows, fixed seed): ``Σ += mean_k Δ_k Δ_kᵀ``.
    """
    rows, quanta = [], []
    for rec in plateaus:
        idx = data.groupby("segment", sort=False).indices[rec["segment"]]
        rise = idx[: rec["plateau_start"]]
        rows.append(rise)
        quanta.append(np.full(len(rise), rec["quantum"]))
    out: dict[str, Any] = {"rows": int(sum(len(r) for r in rows)), "draws": 0}
    if not rows or out["rows"] == 0:
        return gains, gcov, out
    rise_rows, q = np.concatenate(rows), np.concatenate(quanta)
    rng = np.random.default_rng(20260581)
    col = data.columns.get_loc("v")
    base = gains["estimate"].to_numpy()
    deltas = []
    for _ in range(RISE_DRAWS):
        shifted = data.copy()
        shifted.iloc[rise_rows, col] += q * rng.uniform(-0.5, 0.5, len(rise_rows))
        try:
            with warnings.catch_warnings():  # the base fit has already warned
                warnings.simplefilter("ignore")
                res = refit(shifted)
            moved = _gain_values(res.params[names].to_numpy(dtype=float), mechanism)
        except (DerivregError, KeyError):
            continue
        d = moved - base
        if mechanism == "arm":
            d[-1] = 0.0
        if np.all(np.isfinite(d)):
            deltas.append(d)
    out["draws"] = len(deltas)
    if len(deltas) < 2:
        return gains, gcov, out
    extra = np.mean([np.outer(d, d) for d in deltas], axis=0)
    out["added_se"] = dict(zip(gains.index, np.sqrt(np.diag(extra)), strict=True))
    cov = gcov + extra
    se = np.sqrt(np.clip(np.diag(cov.to_numpy()), 0.0, None))
    return _with_se(gains, se, alpha), cov, out


def _timing_ambiguity(
    gains: pd.DataFrame, gcov: pd.DataFrame, interval: float, alpha: float
) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    """Add the sub-sample timing ambiguity of the velocity readings to kA's variance.

    A reading taken (or averaged, or delivered) ``δ`` later than its time stamp makes the
    fitted relation read ``kA + kV·δ`` (``u = kS + kV v(t − δ) + kA a ≈ kS + kV v + (kA −
    kV δ) a``). When ``kA/kV`` spans a few sample intervals ``Δ`` the log cannot separate the
    two; with ``δ`` uniform over one interval, kA gains the variance ``(kV Δ)²/12``.
    """
    if not (np.isfinite(interval) and interval > 0):
        return gains, gcov, float("nan")
    extra = (gains.loc["kV", "estimate"] * interval) ** 2 / 12.0
    cov = gcov.copy()
    cov.loc["kA", "kA"] += extra
    se = gains["se"].copy()
    se.loc["kA"] = math.sqrt(max(float(cov.loc["kA", "kA"]), 0.0))
    return _with_se(gains, se, alpha), cov, math.sqrt(extra)


#: kA is flagged as not determined when the time constant kA/kV spans fewer sample intervals
UNDER_RESOLVED_SAMPLES = 3.0

#: the method whose estimates are compared with the recommended one's on under-resolved logs
CROSS_CHECK_METHOD = "statespace"


def _sample_interval(data: pd.DataFrame) -> float:
    """Median interval between the rows the fit uses (the sensor period when repeats are held)."""
    steps = [np.diff(g.to_numpy(dtype=float)) for _, g in data.groupby("segment")["time"]]
    steps = [d for d in steps if len(d)]
    return float(np.median(np.concatenate(steps))) if steps else float("nan")


def _resolution(data: pd.DataFrame, gains: pd.DataFrame) -> dict[str, Any]:
    """How many sample intervals the fitted time constant ``τ = kA/kV`` spans.

    Below :data:`UNDER_RESOLVED_SAMPLES` the velocity's response to a voltage step is seen at
    two or three samples: kA rests on the shape of those few, quantised readings (and on any
    sensor lag or filtering, which the model does not have: a lag ``δ`` in the velocity
    reading reads as ``kA + kV·δ``). Forms that integrate or differentiate the samples are
    then biased by their discretisation (the trapezoid rule on an exponential of 2–3 samples;
    its error shows up as spurious "process noise"), and their covariance models, built for
    white measurement and process noise, do not account for it.
    """
    h = _sample_interval(data)
    kv, ka = gains.loc["kV", "estimate"], gains.loc["kA", "estimate"]
    tau = ka / kv if kv > 0 else float("nan")
    samples = tau / h if h > 0 else float("nan")
    return {
        "time_constant": float(tau),
        "sample_interval": h,
        "samples_per_time_constant": float(samples),
        # a negative or non-finite τ (kA ≤ 0) is no better determined than a short one
        "under_resolved": bool(not samples >= UNDER_RESOLVED_SAMPLES),
    }


def _cross_check(
    formula: str,
    names: list[str],
    data: pd.DataFrame,
    mechanism: str,
    alpha: float,
    fit_options: dict[str, Any],
) -> dict[str, Any]:
    """Gains by :data:`CROSS_CHECK_METHOD` on the same rows (exact discretisation of the flow
    between samples, measurement noise in the likelihood), or the reason it failed."""
    from derivreg.api import fit

    opts = {k: v for k, v in fit_options.items() if k == "input_hold"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            res = fit(formula, data, method=CROSS_CHECK_METHOD, time="time", segment="segment",
                      **opts)  # fmt: skip
            theta = res.params[names].to_numpy(dtype=float)
            cov = res.cov_params().loc[names, names].to_numpy(dtype=float)
            gains, _ = gains_from_coefficients(theta, cov, mechanism, alpha=alpha)
        except (DerivregError, KeyError) as exc:
            return {"method": CROSS_CHECK_METHOD, "error": str(exc)}
    out: dict[str, Any] = {"method": CROSS_CHECK_METHOD, "gains": gains, "fit": res,
                           "theta": theta}  # fmt: skip
    if caught:
        out["warnings"] = [str(w.message) for w in caught]
    return out


def _widen(
    gains: pd.DataFrame, gcov: pd.DataFrame, other: pd.DataFrame, alpha: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Add the disagreement with another method to each gain's variance.

    ``se' = sqrt(se² + (θ̂ − θ̂_other)²)``: when two consistent estimators differ by more than
    their standard errors allow, the difference is a lower bound on the bias one of them
    carries, and the interval of the reported estimate must at least reach the other's.
    The covariance is rescaled by ``se'/se`` so that correlations are kept.
    """
    common = [g for g in gains.index if g in other.index and g != "offset"]
    diff = (gains.loc[common, "estimate"] - other.loc[common, "estimate"]).abs()
    se = gains["se"].copy()
    se.loc[common] = np.sqrt(se.loc[common] ** 2 + diff**2)
    scale = (se / gains["se"].where(gains["se"] > 0)).fillna(1.0).to_numpy()
    return _with_se(gains, se, alpha), gcov * np.outer(scale, scale)


def _widen_disagreeing(
    gains: pd.DataFrame,
    gcov: pd.DataFrame,
    check: dict[str, Any],
    fit_method: str,
    alpha: float,
    *,
    why: str = "",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Widen (and name in a BiasWarning) the gains on which the two methods disagree beyond
    their standard errors: ``|θ̂ − θ̂_other| > 2·sqrt(se² + se_other²)`` (conservative: the two
    estimators share the data, so their difference varies less than that)."""
    other = check["gains"]
    common = [g for g in gains.index if g in other.index and g != "offset"]
    diff = (gains.loc[common, "estimate"] - other.loc[common, "estimate"]).abs()
    spread = np.sqrt(gains.loc[common, "se"] ** 2 + other.loc[common, "se"] ** 2)
    bad = [g for g in common if diff[g] > 2.0 * spread[g]]
    check["disagree"] = bad
    if not bad:
        return gains, gcov
    keep = other.copy()
    keep.loc[[g for g in other.index if g not in bad], "estimate"] = gains["estimate"]
    widened, cov = _widen(gains, gcov, keep, alpha)
    warnings.warn(
        f"the {fit_method} and {check['method']} fits disagree beyond their standard errors on "
        + ", ".join(
            f"{g} ({gains.loc[g, 'estimate']:.4g} vs {other.loc[g, 'estimate']:.4g})" for g in bad
        )
        + (f" ({fit_method} fit checked because {why})" if why else "")
        + ": the log departs from the model (e.g. sensor lag or filtering, process noise, "
        "unmodelled friction); their intervals are widened by the disagreement",
        BiasWarning,
        stacklevel=4,
    )
    return widened, cov


def _warn_under_resolved(resolution: dict[str, Any], fit_method: str, auto: bool) -> None:
    """BiasWarning naming kA: the log does not resolve the mechanism's time constant."""
    tau, h = resolution["time_constant"], resolution["sample_interval"]
    what = (
        f"the fitted time constant kA/kV = {1e3 * tau:.3g} ms spans "
        f"{resolution['samples_per_time_constant']:.2g} sample intervals of {1e3 * h:.3g} ms"
        if np.isfinite(tau) and tau > 0
        else f"the fitted kA is not positive (samples every {1e3 * h:.3g} ms)"
    )
    tail = ""
    check = resolution.get("cross_check", {})
    if auto and "gains" in check:
        other = check["gains"].loc["kA"]
        tail = (
            f"; the {check['method']} fit gives kA = {other['estimate']:.4g} ± {other['se']:.2g}"
            " and the intervals are widened by the disagreement of the two methods, the rounding"
            " of the step-response readings and a one-sample timing ambiguity of the velocity"
        )
    elif auto:
        tail = f"; the {check.get('method')} cross-check failed ({check.get('error')})"
    warnings.warn(
        f"kA is not determined by this log: {what} (fewer than {UNDER_RESOLVED_SAMPLES:g}), so "
        f"the step response is seen at a few quantised readings and the {fit_method} estimate of "
        "kA rests on their discretisation and on any lag or filtering in the velocity sensor "
        "(a 'process noise' diagnosis here reflects that, not real process noise)"
        + tail
        + ". Log faster (or a slower mechanism/filtered-free velocity) to measure kA; read its "
        "interval, not the point estimate",
        BiasWarning,
        stacklevel=4,
    )


def _warn_poor(gains: pd.DataFrame, mechanism: str) -> None:
    """ExcitationWarning for gains whose interval is wide relative to the estimate."""
    poor = []
    for name, row in gains.iterrows():
        if name == "offset":
            continue
        rel = row["se"] / abs(row["estimate"]) if row["estimate"] != 0 else np.inf
        if not rel <= POOR_RELATIVE_SE:
            poor.append(f"{name} (relative SE {100 * rel:.0f}%)")
    if poor:
        warnings.warn(
            f"poorly determined gain(s) of the {mechanism}: {', '.join(poor)}; the tests do "
            "not excite them enough (e.g. dynamic tests mostly at steady state for kA, "
            "negligible friction for kS) — read their intervals, not the point estimates",
            ExcitationWarning,
            stacklevel=3,
        )


def _regression_frame(
    segs: list[Any], accels: list[Any], log: Any, mechanism: str, angle_unit: Any
) -> pd.DataFrame:
    """Rows of SysId's regression ``a ~ v + u + sgn(v)`` (+ ``const`` for an elevator, ``cos``
    and ``sin`` of the angle for an arm, ``side`` for drivetrains), one block per test."""
    frames = []
    for s, a in zip(segs, accels, strict=True):
        frame = {"test": s.test, "time": s.t, "a": a, "v": s.v, "u": s.u}
        if mechanism == "drivetrain":
            frame["side"] = s.side
        if mechanism == "arm":
            theta = s.x * _angle_scale(log, angle_unit)
            frame["cos"], frame["sin"] = np.cos(theta), np.sin(theta)
        frames.append(pd.DataFrame(frame))
    data = pd.concat(frames, ignore_index=True)
    data["sgn"] = np.copysign(1.0, data["v"].to_numpy())
    if mechanism == "elevator":
        data["const"] = 1.0
    return data
