"""Benchmark of derivative estimators (BENCHMARKS.md §2).

Part 1, accuracy. pynumdiff's four kinds of test signal, generated here with exact derivatives:
4 s at dt = 0.01 (401 points), noise N(0, 0.1²):

* ``sines``: ``sin(2πt) + sin(2π·1.7t)``;
* ``triangle``: triangle wave of amplitude 1 at 2/3 Hz, ``x' = ±8/3`` (corners off the grid);
* ``logistic``: ``1 / (1 + exp(-3(t - 2)))``, ``x' = 3x(1 - x)``;
* ``linear3``: first state of ``z' = A z`` with a damped oscillation coupled to a third state.

Every derivreg method (a method that raises MethodNotAvailableError/ImportError is listed as
not available) against ``scipy.interpolate.make_smoothing_spline`` (GCV), pynumdiff's
``butterdiff`` tuned by ``pynumdiff.optimize.optimize`` (bandlimit given, no ground truth), the
``derivative`` package (Kalman with its default ``alpha`` and Savitzky–Golay with a fixed ±0.1 s
window, as a user would call them) and ``np.gradient``; missing peers are listed as not installed.
Metrics over R noise draws, on the interior (5 samples dropped at each end, the same points for
every method): derivative RMSE against the truth, RMSE relative to an oracle smoothing spline
(``make_smoothing_spline``, λ chosen per draw to minimise the derivative RMSE against the truth),
pointwise 95% band coverage for methods with standard errors, median time per fit (fit and
derivative).

Coverage is reported per signal. The triangle's derivative is a square wave: no smoother can
cover it at the jumps, so its coverage is also given excluding the points within
``KINK_ZONE`` = 0.1 s (10 samples) of a corner ("coverage excl. kinks"). Beside the defaults,
``spline`` and ``kalman`` with the posterior band are listed (see ``SmoothingSpline(band=...)``).

Part 1b, validation signals: a chirp, an exponential decay and random draws of a smooth
Gaussian process (squared-exponential kernel, length 0.3 s, via 200 random Fourier features;
one new function per draw), which were used with part 1 to choose ``auto``'s smoothing rule,
and a damped sine, Runge's function and a rounded square wave, added to check it; same grid
and noise, for the derivreg smoothers with standard errors and scipy's GCV spline.

Part 2, scaling. The ``sines`` signal continued at dt = 0.01 to n = 10³ … 10⁶ points (10⁵ in
``--quick``) for ``auto``, ``spline`` and ``kalman``: median time and peak traced memory
(``tracemalloc``, numpy buffers included) and CPU time of the process (``time.process_time``,
beside the wall time: the machine is shared), and ``make_smoothing_spline`` at n = 2·10⁴ for the
ratio.

Usage: ``python benchmarks/derivatives.py [--quick] [--reps R] [--no-write] [--skip-scaling]
[--skip-validation] [--only-scaling]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.interpolate as si
import scipy.linalg as sla
import scipy.optimize as sopt

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import header, human_bytes, markdown_table, peak_memory, write_results

from derivreg.exceptions import MethodNotAvailableError
from derivreg.preprocess import METHODS, get_preprocessor

DT = 0.01
SPAN = 4.0
NOISE_SD = 0.1
EDGE = 5  # samples dropped at each end for the metrics
KINK_ZONE = 0.1  # s: triangle points this close to a corner are excluded in "excl. kinks"
PACKAGES = ["numpy", "scipy", "pandas", "statsmodels", "derivreg", "pynumdiff", "derivative"]

Signal = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


# ----------------------------------------------------------------------------- test signals
def sines(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum of sines at 1 and 1.7 Hz."""
    w1, w2 = 2 * np.pi, 2 * np.pi * 1.7
    return np.sin(w1 * t) + np.sin(w2 * t), w1 * np.cos(w1 * t) + w2 * np.cos(w2 * t)


def triangle(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Triangle wave ``(2/π) arcsin(sin θ)``, θ = 2πft + 0.1, f = 2/3 Hz; ``x' = 4f sign(cos θ)``.

    The corners (cos θ = 0) fall between grid points.
    """
    f = 2.0 / 3.0
    th = 2 * np.pi * f * t + 0.1
    return 2 / np.pi * np.arcsin(np.sin(th)), 4 * f * np.sign(np.cos(th))


def logistic(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logistic growth ``1 / (1 + exp(-3(t - 2)))``."""
    x = 1.0 / (1.0 + np.exp(-3.0 * (t - 2.0)))
    return x, 3.0 * x * (1.0 - x)


_A3 = np.array([[-0.1, 2.5, 0.0], [-2.5, -0.1, 1.0], [0.0, -1.0, -0.4]])
_Z0 = np.array([1.0, 0.0, 0.5])


def linear3(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First state of the linear system ``z' = A z``, ``z(0) = (1, 0, 0.5)``, exact via expm."""
    z = np.array([sla.expm(_A3 * ti) @ _Z0 for ti in t])
    return z[:, 0], (z @ _A3.T)[:, 0]


def triangle_kinks(t: np.ndarray) -> np.ndarray:
    """Times of the triangle's corners (cos θ = 0) within ``t``'s span."""
    f = 2.0 / 3.0
    k = np.arange(-2, int(SPAN * 2 * f) + 3)
    c = ((k + 0.5) * np.pi - 0.1) / (2 * np.pi * f)
    return c[(c >= t[0] - 1.0) & (c <= t[-1] + 1.0)]


def chirp(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Chirp ``sin(2π(0.3t + 0.25t²))``: frequency 0.3 -> 2.3 Hz over 4 s."""
    ph = 2 * np.pi * (0.3 * t + 0.25 * t**2)
    return np.sin(ph), np.cos(ph) * 2 * np.pi * (0.3 + 0.5 * t)


def expdecay(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exponential decay ``2 exp(-1.5 t)``."""
    return 2 * np.exp(-1.5 * t), -3 * np.exp(-1.5 * t)


def damped(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Damped oscillation ``exp(-t/2) sin(2π 1.2 t)``."""
    w, e = 2 * np.pi * 1.2, np.exp(-0.5 * t)
    return e * np.sin(w * t), e * (w * np.cos(w * t) - 0.5 * np.sin(w * t))


def runge(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runge's function ``1 / (1 + 25 (t - 2)²)``: a sharp peak on a flat background."""
    s = t - 2.0
    return 1.0 / (1.0 + 25.0 * s**2), -50.0 * s / (1.0 + 25.0 * s**2) ** 2


def rounded_square(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rounded square wave ``tanh(4 sin(π t))``: steep smooth edges, flat tops."""
    v = np.tanh(4.0 * np.sin(np.pi * t))
    return v, (1.0 - v**2) * 4.0 * np.pi * np.cos(np.pi * t)


def gp_draw(seed: int, ell: float = 0.3) -> Signal:
    """A smooth random function: squared-exponential GP draw (200 random Fourier features)."""
    g = np.random.default_rng(seed)
    k = 200
    w = g.normal(0.0, 1.0 / ell, k)
    ph = g.uniform(0.0, 2 * np.pi, k)
    a = np.sqrt(2.0 / k)

    def sig(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        arg = np.outer(t, w) + ph
        return a * np.cos(arg).sum(1), -a * (w * np.sin(arg)).sum(1)

    return sig


#: name -> (signal, bandlimit in Hz given to pynumdiff's optimiser)
SIGNALS: dict[str, tuple[Signal, float]] = {
    "sines": (sines, 1.7),
    "triangle": (triangle, 2.0),
    "logistic": (logistic, 0.5),
    "linear3": (linear3, 0.6),
}


# ----------------------------------------------------------------------------- estimators
class Unavailable(Exception):
    """The estimator cannot run here (not installed / not implemented)."""


Estimator = Callable[[np.ndarray, np.ndarray, float], tuple[np.ndarray, np.ndarray | None]]


def derivreg_estimator(method: str, **options: Any) -> Estimator:
    """Fit + first derivative (with SE where the method has it), default or given options."""

    def run(t: np.ndarray, y: np.ndarray, bandlimit: float) -> tuple[np.ndarray, Any]:
        try:
            est = get_preprocessor(method, **options)
        except (MethodNotAvailableError, ImportError) as exc:
            raise Unavailable(f"not available: {exc}") from exc
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                est.fit(y, time=t)
                if est.provides_se:
                    d, se = est.derivative(1, return_se=True)
                    return np.asarray(d, float), np.asarray(se, float)
                return np.asarray(est.derivative(1), float), None
            except (MethodNotAvailableError, ImportError) as exc:
                raise Unavailable(f"not available: {exc}") from exc

    return run


def scipy_gcv(t: np.ndarray, y: np.ndarray, bandlimit: float) -> tuple[np.ndarray, None]:
    spl = si.make_smoothing_spline(t, y)
    return spl.derivative()(t), None


def np_gradient(t: np.ndarray, y: np.ndarray, bandlimit: float) -> tuple[np.ndarray, None]:
    return np.gradient(y, t), None


def pynumdiff_butter(t: np.ndarray, y: np.ndarray, bandlimit: float) -> tuple[np.ndarray, None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import pynumdiff
            from pynumdiff.optimize import optimize
        except ImportError as exc:
            raise Unavailable("not installed") from exc
        dt = float(t[1] - t[0])
        params, _ = optimize(pynumdiff.butterdiff, y, dt, bandlimit=bandlimit, parallel=False)
        _, dxdt = pynumdiff.butterdiff(y, dt, **params)
    return np.asarray(dxdt, float), None


def _derivative_pkg(kind: str, **kw: Any) -> Estimator:
    def run(t: np.ndarray, y: np.ndarray, bandlimit: float) -> tuple[np.ndarray, None]:
        try:
            from derivative import dxdt
        except ImportError as exc:
            raise Unavailable("not installed") from exc
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(dxdt(y, t, kind=kind, **kw), float), None

    return run


PEERS: dict[str, Estimator] = {
    "scipy make_smoothing_spline (GCV)": scipy_gcv,
    "pynumdiff butterdiff + optimize": pynumdiff_butter,
    "derivative: kalman (default alpha)": _derivative_pkg("kalman"),
    "derivative: savitzky_golay (3, ±0.1 s)": _derivative_pkg(
        "savitzky_golay", order=3, left=0.1, right=0.1
    ),
    "np.gradient": np_gradient,
}
#: derivreg methods with non-default options
VARIANTS: dict[str, Estimator] = {
    "spline (band=posterior)": derivreg_estimator("spline", band="posterior"),
    "kalman (band=posterior)": derivreg_estimator("kalman", band="posterior"),
}
#: peers whose tuning is slow: at most this many noise draws
SLOW_PEERS = {"pynumdiff butterdiff + optimize": 3}


def oracle_spline(t: np.ndarray, y: np.ndarray, dx: np.ndarray, inner: slice) -> float:
    """Derivative RMSE of ``make_smoothing_spline`` with λ chosen on the true derivative."""

    def rmse(loglam: float) -> float:
        spl = si.make_smoothing_spline(t, y, lam=10.0**loglam)
        return float(np.sqrt(np.mean((spl.derivative()(t)[inner] - dx[inner]) ** 2)))

    grid = np.arange(-12.0, 3.01, 0.5)
    vals = [rmse(g) for g in grid]
    k = int(np.argmin(vals))
    lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    res = sopt.minimize_scalar(rmse, bounds=(lo, hi), method="bounded", options={"xatol": 0.01})
    return min(float(res.fun), vals[k])


# ----------------------------------------------------------------------------- part 1
def accuracy(reps: int, quick: bool) -> tuple[list[dict[str, Any]], dict[str, str], list[str]]:
    t = np.round(np.arange(0.0, SPAN + DT / 2, DT), 10)
    inner = slice(EDGE, t.size - EDGE)
    estimators: dict[str, Estimator] = {m: derivreg_estimator(m) for m in METHODS}
    estimators.update(VARIANTS)
    estimators.update(PEERS)
    status: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    rng = np.random.default_rng(20261125)
    noise = {s: rng.normal(0.0, NOISE_SD, (reps, t.size)) for s in SIGNALS}
    notes: list[str] = []
    for sname, (sig, band) in SIGNALS.items():
        x, dx = sig(t)
        away = None
        if sname == "triangle":
            dist = np.min(np.abs(t[:, None] - triangle_kinks(t)[None, :]), axis=1)
            away = (dist > KINK_ZONE)[inner]
        oracle = [oracle_spline(t, x + noise[sname][r], dx, inner) for r in range(reps)]
        o_rmse = float(np.mean(oracle))
        rows.append(
            {"signal": sname, "method": "oracle spline (λ on truth)", "RMSE": o_rmse, "ratio": 1.0}
        )
        for name, fn in estimators.items():
            if name in status:
                continue
            nrep = min(reps, SLOW_PEERS.get(name, reps))
            if quick and name in SLOW_PEERS:
                nrep = 1
            errs, covs, covs_x, times, ratios, defined = [], [], [], [], [], []
            try:
                for r in range(nrep):
                    y = x + noise[sname][r]
                    t0 = time.perf_counter()
                    d, se = fn(t, y, band)
                    times.append(time.perf_counter() - t0)
                    e = d[inner] - dx[inner]
                    defined.append(float(np.mean(np.isfinite(e))))
                    e = e[np.isfinite(e)]
                    rm = float(np.sqrt(np.mean(e**2)))
                    errs.append(rm)
                    ratios.append(rm / oracle[r])
                    if se is not None:
                        ok = np.isfinite(se[inner]) & np.isfinite(d[inner])
                        hit = np.abs(e) <= 1.959964 * se[inner][ok]
                        covs.append(np.mean(hit))
                        if away is not None:
                            covs_x.append(np.mean(hit[away[ok]]))
            except Unavailable as exc:
                status[name] = str(exc)
                continue
            except Exception as exc:  # a failure on one signal is a result, not a crash
                rows.append({"signal": sname, "method": name, "note": f"error: {exc}"[:120]})
                continue
            rows.append(
                {
                    "signal": sname,
                    "method": name,
                    "RMSE": float(np.mean(errs)),
                    "ratio": float(np.mean(ratios)),
                    "coverage": float(np.mean(covs)) if covs else None,
                    "coverage excl. kinks": float(np.mean(covs_x)) if covs_x else None,
                    "time [ms]": 1e3 * statistics.median(times),
                    "draws": nrep,
                    "defined": float(np.mean(defined)),
                }
            )
            print(
                f"  {sname:9s} {name:40s} RMSE {np.mean(errs):8.4g}  ratio "
                f"{np.mean(ratios):6.3g}  time {1e3 * statistics.median(times):9.3g} ms",
                flush=True,
            )
    return rows, status, notes


VALIDATION_METHODS = ["auto", "spline", "kalman", "spline (band=posterior)"]


def validation(reps: int) -> list[dict[str, Any]]:
    """RMSE / oracle and band coverage on the validation signals (module docstring)."""
    t = np.round(np.arange(0.0, SPAN + DT / 2, DT), 10)
    inner = slice(EDGE, t.size - EDGE)
    ests: dict[str, Estimator] = {m: derivreg_estimator(m) for m in VALIDATION_METHODS[:3]}
    ests["spline (band=posterior)"] = VARIANTS["spline (band=posterior)"]
    ests["kalman (band=posterior)"] = VARIANTS["kalman (band=posterior)"]
    ests["scipy make_smoothing_spline (GCV)"] = scipy_gcv
    rng = np.random.default_rng(99)
    noise = rng.normal(0.0, NOISE_SD, (reps, t.size))
    sigs: dict[str, Callable[[int], Signal]] = {
        "chirp": lambda r: chirp,
        "expdecay": lambda r: expdecay,
        "GP draws": lambda r: gp_draw(1000 + r),
        "damped sine": lambda r: damped,
        "Runge": lambda r: runge,
        "rounded square": lambda r: rounded_square,
    }
    rows: list[dict[str, Any]] = []
    for sname, make in sigs.items():
        acc: dict[str, dict[str, list[float]]] = {k: {"r": [], "q": [], "c": []} for k in ests}
        for r in range(reps):
            x, dx = make(r)(t)
            y = x + noise[r]
            o = oracle_spline(t, y, dx, inner)
            for name, fn in ests.items():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    d, se = fn(t, y, 0.0)
                e = d[inner] - dx[inner]
                rm = float(np.sqrt(np.mean(e**2)))
                acc[name]["r"].append(rm)
                acc[name]["q"].append(rm / o)
                if se is not None:
                    acc[name]["c"].append(float(np.mean(np.abs(e) <= 1.959964 * se[inner])))
        for name, a in acc.items():
            rows.append(
                {
                    "signal": sname,
                    "method": name,
                    "RMSE": float(np.mean(a["r"])),
                    "ratio": float(np.mean(a["q"])),
                    "± (MC SE)": float(np.std(a["q"]) / np.sqrt(reps)),
                    "coverage": float(np.mean(a["c"])) if a["c"] else None,
                    "draws": reps,
                }
            )
            print(f"  {sname:9s} {name:36s} ratio {np.mean(a['q']):6.3g}", flush=True)
    return rows


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per method: RMSE / oracle per signal and the geometric mean over signals."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r.get("ratio") is None:
            continue
        d = out.setdefault(r["method"], {"method": r["method"]})
        d[r["signal"]] = r["ratio"]
        if r.get("coverage") is not None:
            d.setdefault("_cov", []).append(r["coverage"])
    table = []
    for d in out.values():
        vals = [d[s] for s in SIGNALS if s in d]
        d["geo. mean"] = float(np.exp(np.mean(np.log(vals)))) if len(vals) == len(SIGNALS) else None
        covs = d.pop("_cov", None)
        d["mean coverage"] = float(np.mean(covs)) if covs else None
        table.append(d)
    table.sort(key=lambda d: (d["geo. mean"] is None, d["geo. mean"] or 0))
    return table


# ----------------------------------------------------------------------------- part 2
def scaling(quick: bool) -> tuple[list[dict[str, Any]], list[str]]:
    sizes = [1_000, 10_000, 20_000, 100_000] + ([] if quick else [1_000_000])
    methods = ["auto", "spline", "kalman"]
    rng = np.random.default_rng(7)
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    too_slow: set[str] = set()
    limit = 60.0 if quick else 600.0  # seconds per fit beyond which larger n are skipped
    for n in sizes:
        t = np.arange(n) * DT
        x, dx = sines(t)
        y = x + rng.normal(0.0, NOISE_SD, n)
        cands: list[tuple[str, Callable[[], Any]]] = []
        for m in methods:
            cands.append((m, _bind_derivreg(m, t, y)))
        if n == 20_000:
            cands.append(("scipy make_smoothing_spline (GCV)", lambda t=t, y=y: scipy_gcv(t, y, 0)))
        for name, fn in cands:
            if name in too_slow:
                rows.append({"n": n, "method": name, "note": "skipped (too slow at smaller n)"})
                continue
            repeats = 3 if (n <= 20_000 and not quick) else 1
            try:
                times, cpus = [], []
                for _ in range(repeats):
                    t0, c0 = time.perf_counter(), time.process_time()
                    d, _ = fn()
                    times.append(time.perf_counter() - t0)
                    cpus.append(time.process_time() - c0)
                err = np.asarray(d)[EDGE:-EDGE] - dx[EDGE:-EDGE]
                rmse = float(np.sqrt(np.nanmean(err**2)))
                # an estimate no better than zero (RMSE ≈ RMS of the derivative) is a failed fit
                failed = rmse > 0.5 * float(np.sqrt(np.mean(dx**2)))
                med = statistics.median(times)
                mem, _ = peak_memory(fn) if med < limit / 2 else (None, None)
            except Unavailable as exc:
                rows.append({"n": n, "method": name, "note": str(exc)[:100]})
                too_slow.add(name)
                continue
            except Exception as exc:
                rows.append({"n": n, "method": name, "note": f"error: {exc}"[:120]})
                continue
            if med > limit:
                too_slow.add(name)
            rows.append(
                {
                    "n": n,
                    "method": name,
                    "RMSE": rmse,
                    "time [s]": med,
                    "CPU [s]": statistics.median(cpus),
                    "µs / point": 1e6 * med / n,
                    "peak memory": human_bytes(mem) if mem is not None else "–",
                    "repeats": repeats,
                    "note": "FAILED FIT: estimate ≈ flat" if failed else None,
                }
            )
            print(f"  n={n:>8d} {name:36s} {med:9.3g} s  RMSE {rmse:.3g}", flush=True)
    at20 = {r["method"]: r for r in rows if r["n"] == 20_000}
    ref = {k: r.get("time [s]") for k, r in at20.items()}
    base = ref.get("scipy make_smoothing_spline (GCV)")
    if base:
        for m in methods:
            if ref.get(m):
                flag = [k for k in (m, "scipy make_smoothing_spline (GCV)") if at20[k].get("note")]
                warn = f" (failed fit: {', '.join(flag)})" if flag else ""
                notes.append(
                    f"at n = 20000: {m} takes {ref[m] / base:.3g}× make_smoothing_spline{warn}"
                )
    bad = sorted({(r["method"], r["n"]) for r in rows if (r.get("note") or "").startswith("FAIL")})
    if bad:
        notes.append(
            "failed fits (RMSE at the level of the derivative itself, i.e. the estimate is "
            "essentially flat): " + ", ".join(f"{m} at n = {n}" for m, n in bad)
        )
    return rows, notes


def _bind_derivreg(method: str, t: np.ndarray, y: np.ndarray) -> Callable[[], Any]:
    run = derivreg_estimator(method)
    return lambda: run(t, y, 0.0)


# ----------------------------------------------------------------------------- main
def _scaling_section(srows: list[dict[str, Any]], snotes: list[str]) -> str:
    """Markdown of the scaling table with its notes."""
    head = "RMSE of the first derivative on the interior (the oracle level at n = 401 is about "
    head += "0.48): a time is only meaningful where the fit is right. time = wall-clock "
    head += "median, CPU = process CPU time of the same fits (the machine is shared); peak "
    head += "memory = tracemalloc peak of one more fit.\n"
    cols = [
        "n",
        "method",
        "RMSE",
        "time [s]",
        "CPU [s]",
        "µs / point",
        "peak memory",
        "repeats",
        "note",
    ]
    lines = ["\n## Scaling (sum of sines continued at dt = 0.01)\n", head]
    lines.append(markdown_table(srows, cols))
    lines.extend(["", *(f"- {n}" for n in snotes)])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 noise draws, n up to 1e5")
    ap.add_argument("--reps", type=int, default=None, help="noise draws per signal")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--skip-scaling", action="store_true")
    ap.add_argument("--skip-validation", action="store_true", help="skip part 1b")
    ap.add_argument(
        "--only-scaling",
        action="store_true",
        help="run only the scaling part; write results/derivatives_scaling.md",
    )
    args = ap.parse_args(argv)
    reps = args.reps or (3 if args.quick else 20)
    if args.only_scaling:
        srows, snotes = scaling(args.quick)
        out = "\n".join(
            [
                header("Derivative estimators: scaling (BENCHMARKS.md §2)", PACKAGES, sys.argv),
                _scaling_section(srows, snotes),
            ]
        )
        print(out)
        if not args.no_write:
            print(f"written to {write_results('derivatives_scaling', out)}")
        return 0

    print(f"Part 1: accuracy, {reps} noise draws per signal", flush=True)
    rows, status, notes = accuracy(reps, args.quick)
    vrows = []
    if not args.skip_validation:
        print("Part 1b: validation signals", flush=True)
        vrows = validation(reps)
    print("Part 2: scaling", flush=True)
    srows, snotes = ([], []) if args.skip_scaling else scaling(args.quick)

    text = [header("Derivative estimators (BENCHMARKS.md §2)", PACKAGES, sys.argv)]
    text.append(
        f"Signals: 4 s at dt = {DT} ({int(SPAN / DT) + 1} points), noise N(0, {NOISE_SD}²), "
        f"{reps} noise draws (pynumdiff: at most {SLOW_PEERS['pynumdiff butterdiff + optimize']}"
        f"{', 1 in --quick' if args.quick else ''}); metrics on the interior ({EDGE} samples "
        "dropped at each end). ratio = RMSE / RMSE of the oracle smoothing spline (λ chosen on "
        "the true derivative, per draw); defined = share of interior points with a finite "
        "estimate (RMSE over those); coverage = share of interior points inside the "
        "pointwise 95% band (methods with standard errors), per signal; coverage excl. kinks "
        f"= the triangle's coverage without the points within {KINK_ZONE} s of a corner (its "
        "derivative jumps there: no smoother covers a jump); bands: `spline`, `kalman` and "
        "`auto` calibrated (frequentist variance + estimated squared bias, capped at the "
        "posterior), the posterior band (the model's smoothed state SD) listed as a variant; "
        "time = median "
        "per fit (fit + derivative), peers' tuning included.\n"
    )
    text.append("## Summary: RMSE / oracle (lower is better)\n")
    text.append(markdown_table(summary(rows), ["method", *SIGNALS, "geo. mean", "mean coverage"]))
    text.append("\n## Per signal\n")
    text.append(
        markdown_table(
            rows,
            [
                "signal",
                "method",
                "RMSE",
                "ratio",
                "coverage",
                "coverage excl. kinks",
                "time [ms]",
                "draws",
                "defined",
                "note",
            ],
        )
    )
    if vrows:
        text.append(
            "\n## Validation signals\n\n"
            "Chirp, exponential decay, smooth GP draws (a new function per draw), damped sine, "
            "Runge's function, rounded square wave; same grid and noise, "
            f"{reps} draws, noise seed 99. ratio = RMSE / oracle cubic spline per draw, ± its "
            "Monte-Carlo SE. The first three were used (with the four signals above) to choose "
            "auto's smoothing rule (the larger of the REML and GCV lam); the last three were "
            "added to check it.\n"
        )
        text.append(
            markdown_table(
                vrows, ["signal", "method", "RMSE", "ratio", "± (MC SE)", "coverage", "draws"]
            )
        )
    if status:
        text.append("\n## Not run\n")
        text.extend(f"- {k}: {v}" for k, v in status.items())
    if notes:
        text.append("\n## Notes\n")
        text.extend(f"- {n}" for n in sorted(set(notes)))
    if srows:
        text.append(_scaling_section(srows, snotes))
    else:
        text.append(
            "\n## Scaling\n\nNot run here: see `derivatives_scaling.md` (`--only-scaling`)."
        )
    out = "\n".join(text)
    print(out)
    if not args.no_write:
        path = write_results("derivatives", out)
        print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
