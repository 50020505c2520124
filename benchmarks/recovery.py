"""Coefficient recovery (BENCHMARKS.md §1): derivreg's methods side by side with what users run.

System ``dx = (αx + βu + γ) dt + σ dW``, observed ``y_k = x(t_k) + τ e_k``, β = 1, γ = 0.5, fitted
as ``d(x) ~ x + u`` (coefficients ``x`` = α, ``u`` = β, ``Intercept`` = γ). The fractional design
(:data:`DESIGN`, written out explicitly below) covers every level of every factor:
α ∈ {−0.2, −1, −5}; input switching / multisine / step; |α|Δt ∈ {0.01, 0.1, 0.5};
|α|T ∈ {10, 30, 100}; regular and irregular (exponential gaps) sampling; noise regimes
A (process only, σ = 0.5), B (measurement only, τ/SD(x) ∈ {0.02, 0.1, 0.3}) and
C (both, σ = 0.5, τ/SD(x) ∈ {0.1, 0.3}). SD(x) is the SD of the true path, measured once per
cell on pilot simulations. Sampling and span are chosen jointly so that n = T/Δ ≤ 1000.

Simulation is exact (:func:`derivreg.simulate.first_order`: exact AR recursion for held inputs;
the multisine on a grid 10 times finer with a first-order hold, fitted with
``input_hold="linear"``).

Estimators (all on the same replications):

* every registered derivreg method with its defaults (``gradient``, ``integral``, ``arimax``,
  ``statespace``, ``fourier``/``trajectory`` when installed) and ``"auto"``;
* naive finite-difference OLS as users write it: forward ``diff(y)/diff(t)`` on
  ``(1, y_k, u_k)`` and central ``np.gradient(y, t)`` on ``(1, y_k, u_k)``, statsmodels OLS with
  its default (nonrobust) standard errors;
* statsmodels ``SARIMAX(y, exog=u, order=(1, 0, 0), trend="c")`` as users call it, mapped to
  the continuous-time coefficients the way a user would: ``a = ln φ / Δ``, ``b = −a·β_u``,
  ``c = −a·μ`` with ``μ = c_trend / (1 − φ)`` (delta-method SEs). It fits a regression with
  AR(1) *errors*, not the dynamic model, so its ``a`` is not ``α``;
* the exact Gaussian MLE reference: derivreg's ``statespace`` (continuous-time Kalman-filter
  likelihood, exact discretisation) told the true noise structure (``noise="process"`` in A,
  ``"measurement"`` in B, ``"both"`` in C; in C that is the default ``statespace`` call, whose
  fit is reused).

Metrics per coefficient and cell: bias, SD, RMSE, RMSE/RMSE(exact MLE) (on the replications both
ran), mean SE / SD, 95% coverage (Wald intervals from ``conf_int()``), mean interval length,
failure rate (exception or non-finite estimate/SE) and median time per fit.

Also: the motor case (kS, kV, kA by each derivreg method through ``dr.characterize``, SysId's
pipeline and the plain central-difference OLS robotics users run, with and without long
steady-state stretches) and the nonlinear anchors (Lotka–Volterra, FitzHugh–Nagumo).

Usage: ``python benchmarks/recovery.py [--quick | --full] [--workers 2]``. Results (written
after every cell so that a partial run is useful): ``benchmarks/results/recovery_{quick,full}.md``
and ``benchmarks/results/recovery_headline.md``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import math  # noqa: E402
import multiprocessing as mp  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import RESULTS as RESULTS_DIR  # noqa: E402
from _common import fmt, header, markdown_table, write_results  # noqa: E402

import derivreg as dr  # noqa: E402
from derivreg import simulate as sim  # noqa: E402

BETA, GAMMA = 1.0, 0.5
SIGMA = 0.5
COEFS = ("x", "u", "Intercept")
FORMULA = "d(x) ~ x + u"
Z95 = 1.959963984540054
PACKAGES = ("derivreg", "numpy", "scipy", "pandas", "statsmodels", "threadpoolctl")

#: noise levels: name -> (regime, sigma, tau/SD(x))
NOISE: dict[str, tuple[str, float, float]] = {
    "A": ("A", SIGMA, 0.0),
    "B.02": ("B", 0.0, 0.02),
    "B.1": ("B", 0.0, 0.1),
    "B.3": ("B", 0.0, 0.3),
    "C.1": ("C", SIGMA, 0.1),
    "C.3": ("C", SIGMA, 0.3),
}


@dataclass(frozen=True)
class Cell:
    """One cell of the design: α, input, |α|Δ, |α|T, noise level, irregular sampling."""

    alpha: float
    u: str
    adt: float
    aT: float
    noise: str
    irregular: bool = False

    @property
    def dt(self) -> float:
        return self.adt / abs(self.alpha)

    @property
    def n(self) -> int:
        return round(self.aT / self.adt)

    @property
    def regime(self) -> str:
        return NOISE[self.noise][0]

    @property
    def label(self) -> str:
        irr = " irr" if self.irregular else ""
        return (
            f"α={self.alpha:g} {self.u} |α|Δ={self.adt:g} |α|T={self.aT:g} "
            f"{self.noise} n={self.n}{irr}"
        )


def _design() -> list[Cell]:
    """The fractional design (36 cells), explicitly.

    1. core (switching, |α|Δ = 0.1, |α|T = 30, n = 300): every noise level at α = −1, and
       α ∈ {−0.2, −5} under A, B.1 and C.3 (12 cells);
    2. inputs: multisine and step at α = −1 under A, B.1, C.3 (6 cells);
    3. sampling × span (n ≤ 1000: |α|Δ = 0.01 only with |α|T = 10), switching, rotating α and
       noise (9 cells);
    4. fourth α = −1 panel for B.02/B.3/C.1 with multisine and step (6 cells);
    5. irregular arm: exponential gaps with mean Δ, switching, α = −1, A / B.1 / C.3 (3 cells).
    """
    cells: list[Cell] = []
    for nz in NOISE:
        cells.append(Cell(-1.0, "switching", 0.1, 30, nz))
    for a in (-0.2, -5.0):
        for nz in ("A", "B.1", "C.3"):
            cells.append(Cell(a, "switching", 0.1, 30, nz))
    for u in ("multisine", "step"):
        for nz in ("A", "B.1", "C.3"):
            cells.append(Cell(-1.0, u, 0.1, 30, nz))
    cells += [
        Cell(-1.0, "switching", 0.01, 10, "A"),
        Cell(-5.0, "switching", 0.01, 10, "C.3"),
        Cell(-0.2, "switching", 0.1, 10, "B.1"),
        Cell(-1.0, "switching", 0.1, 100, "A"),
        Cell(-0.2, "switching", 0.1, 100, "C.1"),
        Cell(-5.0, "switching", 0.5, 10, "B.3"),
        Cell(-1.0, "switching", 0.5, 30, "C.1"),
        Cell(-1.0, "switching", 0.5, 100, "A"),
        Cell(-0.2, "switching", 0.5, 100, "B.02"),
    ]
    cells += [
        Cell(-1.0, "multisine", 0.1, 30, "B.02"),
        Cell(-1.0, "multisine", 0.1, 30, "C.1"),
        Cell(-5.0, "multisine", 0.1, 30, "B.3"),
        Cell(-1.0, "step", 0.1, 30, "B.3"),
        Cell(-0.2, "step", 0.1, 30, "C.1"),
        Cell(-5.0, "step", 0.1, 30, "B.02"),
    ]
    for nz in ("A", "B.1", "C.3"):
        cells.append(Cell(-1.0, "switching", 0.1, 30, nz, irregular=True))
    return cells


DESIGN: list[Cell] = _design()

#: run order of the full mode: the first 20 cells already cover every level of every factor, so a
#: run cut short by its time budget still spans the design
RUN_ORDER = (0, 1, 2, 3, 4, 5, 7, 11, 12, 16, 18, 19, 20, 21, 22, 23, 24, 25, 26, 34)
RUN_ORDER = RUN_ORDER + tuple(i for i in range(len(DESIGN)) if i not in RUN_ORDER)

#: cells of the quick mode (indices into DESIGN): one per regime plus irregular
QUICK_CELLS = (0, 2, 5, 13, 33)


# --------------------------------------------------------------------------------------------
# simulation
# --------------------------------------------------------------------------------------------
def _times(cell: Cell, rng: np.random.Generator) -> np.ndarray | None:
    if not cell.irregular:
        return None
    gaps = rng.exponential(cell.dt, cell.n - 1)
    return np.concatenate([[0.0], np.cumsum(gaps)])


def _simulate(cell: Cell, seed: Any, tau: float) -> pd.DataFrame:
    _, sigma, _ = NOISE[cell.noise]
    ss = np.random.SeedSequence(seed)
    s_time, s_sim = ss.spawn(2)
    t = _times(cell, np.random.default_rng(s_time))
    smooth = cell.u == "multisine"
    return sim.first_order(
        cell.alpha,
        BETA,
        GAMMA,
        n=cell.n,
        dt=cell.dt,
        t=t,
        u=cell.u,
        input_hold="linear" if smooth else "zoh",
        substeps=10 if smooth else 1,
        sigma=sigma,
        tau=tau,
        seed=np.random.default_rng(s_sim),
    )


def cell_tau(cell: Cell, index: int) -> tuple[float, float]:
    """``(τ, SD(x))``: SD of the true path over 20 pilot simulations, times the cell's ratio."""
    ratio = NOISE[cell.noise][2]
    sds = [float(np.std(_simulate(cell, (999, index, k), 0.0)["x_true"])) for k in range(20)]
    sd = float(np.mean(sds))
    return ratio * sd, sd


# --------------------------------------------------------------------------------------------
# estimators: each returns (estimates, ses, lower, upper) arrays in the order of COEFS
# --------------------------------------------------------------------------------------------
Est = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _from_results(res: Any) -> Est:
    ci = res.conf_int()
    cols = list(ci.columns)
    est = res.params[list(COEFS)].to_numpy(float)
    se = res.bse[list(COEFS)].to_numpy(float)
    lo = ci.loc[list(COEFS), cols[0]].to_numpy(float)
    hi = ci.loc[list(COEFS), cols[1]].to_numpy(float)
    return est, se, lo, hi


def _wald(est: np.ndarray, se: np.ndarray) -> Est:
    return est, se, est - Z95 * se, est + Z95 * se


def derivreg_fit(method: str, **options: Any) -> Callable[[pd.DataFrame, Cell], Est]:
    def run(df: pd.DataFrame, cell: Cell) -> Est:
        hold = "linear" if cell.u == "multisine" else "zoh"
        res = dr.fit(FORMULA, df[["x", "u"]], method=method, input_hold=hold, **options)
        return _from_results(res)

    return run


def bootstrap_fit(n_boot: int) -> Callable[[pd.DataFrame, Cell], Est]:
    """``dr.fit`` (auto, which picks statespace here) with ``cov_type="bootstrap"``: parametric
    bootstrap, bias-corrected estimates and bootstrap SEs. The bootstrap seed is derived from the
    replication's data, so a rerun repeats the draws."""

    def run(df: pd.DataFrame, cell: Cell) -> Est:
        hold = "linear" if cell.u == "multisine" else "zoh"
        seed = int(np.abs(df["x"].to_numpy()[:8]).sum() * 1e6) % (2**31)
        res = dr.fit(
            FORMULA,
            df[["x", "u"]],
            method="auto",
            input_hold=hold,
            cov_type="bootstrap",
            n_boot=n_boot,
            seed=seed,
        )
        return _from_results(res)

    return run


def exact_mle(df: pd.DataFrame, cell: Cell) -> Est:
    noise = {"A": "process", "B": "measurement", "C": "both"}[cell.regime]
    return derivreg_fit("statespace", noise=noise)(df, cell)


def _ols(dy: np.ndarray, y: np.ndarray, u: np.ndarray) -> Est:
    import statsmodels.api as sm

    X = np.column_stack([y, u])
    res = sm.OLS(dy, sm.add_constant(X)).fit()
    order = [1, 2, 0]  # x, u, const
    return _wald(np.asarray(res.params)[order], np.asarray(res.bse)[order])


def fd_forward(df: pd.DataFrame, cell: Cell) -> Est:
    t = df.index.to_numpy(float)
    y, u = df["x"].to_numpy(float), df["u"].to_numpy(float)
    return _ols(np.diff(y) / np.diff(t), y[:-1], u[:-1])


def fd_central(df: pd.DataFrame, cell: Cell) -> Est:
    t = df.index.to_numpy(float)
    y, u = df["x"].to_numpy(float), df["u"].to_numpy(float)
    return _ols(np.gradient(y, t), y, u)


def sarimax(df: pd.DataFrame, cell: Cell) -> Est:
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    y, u = df["x"].to_numpy(float), df["u"].to_numpy(float)
    delta = float(np.mean(np.diff(df.index.to_numpy(float))))
    res = SARIMAX(y, exog=u, order=(1, 0, 0), trend="c").fit(disp=False)
    p = np.asarray(res.params, float)  # intercept, x1, ar.L1, sigma2
    cov = np.asarray(res.cov_params(), float)[:3, :3]

    def g(q: np.ndarray) -> np.ndarray:
        c, bu, phi = q
        a = math.log(phi) / delta if phi > 0 else np.nan
        return np.array([a, -a * bu, -a * c / (1.0 - phi)])

    est = g(p[:3])
    J = np.empty((3, 3))
    for j in range(3):
        h = 1e-6 * max(1.0, abs(p[j]))
        up, dn = p[:3].copy(), p[:3].copy()
        up[j] += h
        dn[j] -= h
        J[:, j] = (g(up) - g(dn)) / (2 * h)
    se = np.sqrt(np.clip(np.diag(J @ cov @ J.T), 0, None))
    return _wald(est, se)


@dataclass
class Estimator:
    name: str
    fn: Callable[[pd.DataFrame, Cell], Est]
    slow: bool = False
    note: str = ""


def available_methods() -> tuple[list[str], list[str]]:
    """(derivreg methods that are registered and import, notes on those that do not)."""
    from derivreg.api import MODELS, get_model_class
    from derivreg.exceptions import MethodNotAvailableError

    ok, notes = [], []
    for m in MODELS:
        if m == "auto":
            try:
                get_model_class(m)
                ok.append(m)
            except MethodNotAvailableError:
                pass
            continue
        try:
            get_model_class(m)
            ok.append(m)
        except MethodNotAvailableError as exc:
            notes.append(f"`{m}`: not available in this version ({exc})")
    return ok, notes


def estimators() -> tuple[list[Estimator], list[str]]:
    ok, notes = available_methods()
    ests: list[Estimator] = []
    slow = {"gradient", "statespace", "trajectory", "auto"}
    for m in ok:
        if m == "auto":
            continue
        ests.append(Estimator(m, derivreg_fit(m), slow=m in slow))
    if "auto" in ok:
        ests.append(Estimator("auto", derivreg_fit("auto"), slow=True))
    else:
        from derivreg.api import AUTO_FALLBACK

        notes.append(
            f"`auto`: no automatic selection installed; dr.fit(method='auto') runs "
            f"`{AUTO_FALLBACK}`, so its rows are the `{AUTO_FALLBACK}` rows"
        )
    ests += [
        Estimator("FD forward OLS", fd_forward),
        Estimator("FD central OLS", fd_central),
        Estimator("SARIMAX(1,0,0)+c", sarimax, slow=True),
        Estimator("exact MLE", exact_mle, slow=True),
    ]
    return ests, notes


# --------------------------------------------------------------------------------------------
# workers
# --------------------------------------------------------------------------------------------
_EST: list[Estimator] = []


def _init_worker() -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    warnings.simplefilter("ignore")
    global _EST
    _EST = estimators()[0]


def _one_rep(job: tuple[int, Cell, float, int, bool]) -> dict[str, Any]:
    index, cell, tau, rep, with_slow = job
    df = _simulate(cell, (2026, index, rep), tau)
    out: dict[str, Any] = {}
    for e in _EST:
        if e.slow and not with_slow:
            continue
        if e.name == "exact MLE" and cell.regime == "C" and "statespace" in out:
            out[e.name] = out["statespace"]  # the same call: statespace's default is noise="both"
            continue
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                est, se, lo, hi = e.fn(df, cell)
            ok = bool(np.all(np.isfinite(est)) and np.all(np.isfinite(se)))
            err = ""
        except Exception as exc:
            est = se = lo = hi = np.full(3, np.nan)
            ok, err = False, type(exc).__name__
        out[e.name] = (est, se, lo, hi, time.perf_counter() - t0, ok, err)
    return {"rep": rep, "fits": out}


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------
@dataclass
class CellResult:
    cell: Cell
    index: int
    tau: float
    sd_x: float
    reps: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    n_reps: int = 0  # replications, when read back from a results file (reps is then empty)
    source: str = ""  # which run the cell comes from, for merged reports


def _truth(cell: Cell) -> np.ndarray:
    return np.array([cell.alpha, BETA, GAMMA])


def cell_metrics(cr: CellResult, names: list[str]) -> list[dict[str, Any]]:
    """Metrics per estimator and coefficient for one cell."""
    truth = _truth(cr.cell)
    rows = []

    def collect(name: str) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        reps, E, S, L, H = [], [], [], [], []
        for r in cr.reps:
            f = r["fits"].get(name)
            if f is None:
                continue
            reps.append(r["rep"])
            E.append(f[0])
            S.append(f[1])
            L.append(f[2])
            H.append(f[3])
        return reps, np.array(E), np.array(S), np.array(L), np.array(H)

    mle_reps, mle_E, *_ = collect("exact MLE")
    mle_map = dict(zip(mle_reps, mle_E, strict=True)) if mle_reps else {}
    for name in names:
        reps, E, S, L, H = collect(name)
        if not reps:
            continue
        fits = [r["fits"][name] for r in cr.reps if name in r["fits"]]
        okm = np.array([f[5] for f in fits])
        errs = sorted({f[6] for f in fits if f[6]})
        tmed = float(np.median([f[4] for f in fits]))
        for j, coef in enumerate(COEFS):
            e, s, lo, hi = E[okm, j], S[okm, j], L[okm, j], H[okm, j]
            nok = len(e)
            row: dict[str, Any] = {
                "estimator": name,
                "coef": coef,
                "truth": float(truth[j]),
                "R": len(reps),
            }
            if nok >= 2:
                sd = float(np.std(e, ddof=1))
                bias = float(np.mean(e) - truth[j])
                rmse = float(np.sqrt(np.mean((e - truth[j]) ** 2)))
                ratio = math.nan
                common = [
                    (est[j], mle_map[rp][j])
                    for rp, est, okk in zip(reps, E, okm, strict=True)
                    if okk and rp in mle_map and np.isfinite(mle_map[rp][j])
                ]
                if len(common) >= 2:
                    a_, m_ = np.array(common).T
                    rm = float(np.sqrt(np.mean((m_ - truth[j]) ** 2)))
                    ratio = (
                        float(np.sqrt(np.mean((a_ - truth[j]) ** 2))) / rm if rm > 0 else math.nan
                    )
                row.update(
                    bias=bias,
                    SD=sd,
                    **{"bias/SD": bias / sd if sd > 0 else math.nan},
                    RMSE=rmse,
                    **{"RMSE/MLE": ratio},
                    **{"SE/SD": float(np.mean(s)) / sd if sd > 0 else math.nan},
                    cover=float(np.mean((lo <= truth[j]) & (truth[j] <= hi))),
                    length=float(np.mean(hi - lo)),
                )
            row["fail"] = 1.0 - nok / len(reps)
            row["time_ms"] = 1000 * tmed
            row["errors"] = ",".join(errs)
            rows.append(row)
    return rows


METRIC_COLS = [
    "estimator",
    "coef",
    "R",
    "bias",
    "SD",
    "bias/SD",
    "RMSE",
    "RMSE/MLE",
    "SE/SD",
    "cover",
    "length",
    "fail",
    "time_ms",
    "errors",
]


# --------------------------------------------------------------------------------------------
# recommended path and flags
# --------------------------------------------------------------------------------------------
#: regimes each derivreg method is recommended for (METHODS.md / API.md guidance)
RECOMMENDED = {
    "auto": ("A", "B", "C"),
    "statespace": ("A", "B", "C"),
    "arimax": ("A", "B", "C"),
    "integral": ("B",),
    "gradient": ("B",),
    "fourier": ("B",),
    "trajectory": ("B",),
}


def flags(
    all_rows: list[tuple[CellResult, list[dict[str, Any]]]], auto_alias: str | None
) -> list[str]:
    out = []
    for cr, rows in all_rows:
        mle = {r["coef"]: r for r in rows if r["estimator"] == "exact MLE"}
        for r in rows:
            name = r["estimator"]
            regimes = RECOMMENDED.get(name)
            label = name
            if name == auto_alias:
                regimes = ("A", "B", "C")
                label = f"{name} (= auto)"
            if not regimes or cr.cell.regime not in regimes:
                continue
            if cr.cell.irregular and name == "arimax":
                continue
            cov, bsd = r.get("cover", math.nan), r.get("bias/SD", math.nan)
            bad = []
            nrep = max(int(r["R"] * (1 - r.get("fail", 0))), 1)
            if not (0.93 <= cov <= 0.97):
                # Monte-Carlo checks: is 0.95 outside coverage ± 2 binomial SEs, and is the
                # nearest edge of the tolerance band [0.93, 0.97]?
                mc = math.sqrt(0.95 * 0.05 / nrep)
                sig = "significant" if abs(cov - 0.95) > 2 * mc else "within 2 MC SE of 0.95"
                edge = 0.93 if cov < 0.93 else 0.97
                band = "beyond" if abs(cov - edge) > 2 * mc else "within 2 MC SE of"
                bad.append(f"coverage {cov:.3f} ({sig}; {band} the band edge {edge:.2f})")
            if abs(bsd) > 0.2:
                # the SE of a mean over R replications is SD/sqrt(R): bias/SD has SE 1/sqrt(R)
                mc = 1 / math.sqrt(nrep)
                sig = "significant" if abs(bsd) > 2 * mc else "within 2 MC SE of 0"
                band = "beyond" if abs(bsd) - 0.2 > 2 * mc else "within 2 MC SE of"
                bad.append(f"bias {bsd:+.2f} SD ({sig}; {band} the tolerance 0.2)")
            if r.get("fail", 0) > 0.02:
                bad.append(f"failures {r['fail']:.1%}")
            if bad:
                out.append(
                    f"- cell {cr.index} ({cr.cell.label}): {label} `{r['coef']}`: "
                    + ", ".join(bad)
                    + f" (R={int(r['R'])}, SE/SD {fmt(r.get('SE/SD'))}, "
                    + f"RMSE/MLE {fmt(r.get('RMSE/MLE'))}; exact MLE in this cell: coverage "
                    + f"{fmt(mle.get(r['coef'], {}).get('cover'))}, bias "
                    + f"{fmt(mle.get(r['coef'], {}).get('bias/SD'))} SD)"
                )
    return out


def _parse_cells(text: str) -> list[tuple[CellResult, list[dict[str, Any]]]]:
    """Per-cell metric rows read back from a results file written by this script."""
    done: list[tuple[CellResult, list[dict[str, Any]]]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("### cell "):
            index = int(line.split()[2].rstrip(":"))
            j = i + 1
            while j < len(lines) and not lines[j].startswith("| estimator"):
                j += 1
            cols = [c.strip() for c in lines[j].strip("|").split("|")]
            rows = []
            k = j + 2
            while k < len(lines) and lines[k].startswith("|"):
                vals = [c.strip() for c in lines[k].strip("|").split("|")]
                row: dict[str, Any] = {}
                for c, v in zip(cols, vals, strict=False):
                    if c in ("estimator", "coef", "errors"):
                        row[c] = v
                    elif v not in ("–", ""):
                        row[c] = float(v)
                rows.append(row)
                k += 1
            cr = CellResult(DESIGN[index], index, math.nan, math.nan)
            for info in lines[i + 1 : j]:
                m = re.match(r"τ = (\S+) \(SD\(x\) = (\S+)\); (\d+) replications; (\d+) s", info)
                if m:
                    cr.tau, cr.sd_x = float(m.group(1)), float(m.group(2))
                    cr.n_reps, cr.seconds = int(m.group(3)), float(m.group(4))
            done.append((cr, rows))
            i = k
        else:
            i += 1
    return done


def merge(base: Path, *topups: Path) -> str:
    """A full report from ``base`` with the cells of each top-up run (same design and seeds)
    replacing those of ``base`` where :func:`better`; motor and anchor sections from ``base``."""
    btext = base.read_text()
    done = _parse_cells(btext)
    for cr, _ in done:
        cr.source = f"from the first run ({base.name})"

    def reps(rows: list[dict[str, Any]]) -> tuple[float, float]:
        rs = [r.get("R", 0.0) for r in rows]
        return max(rs, default=0.0), min(rs, default=0.0)

    def better(trows: list[dict[str, Any]], brows: list[dict[str, Any]]) -> bool:
        """Top-up cell replaces base: more replications of every kind, or the same estimators
        plus ones the base run did not have (methods registered since) at no less than the
        minimum R of the budget. Decided on R and estimator sets only, never on the results."""
        t_est = {r["estimator"] for r in trows}
        b_est = {r["estimator"] for r in brows}
        (tf, ts), (bf, bs) = reps(trows), reps(brows)
        if t_est > b_est:
            return tf >= MIN_REPS and ts >= MIN_REPS_SLOW
        return t_est >= b_est and tf >= bf and ts >= bs

    merged = done
    for topup in topups:
        top = {cr.index: (cr, rows) for cr, rows in _parse_cells(topup.read_text())}
        new = []
        for cr, rows in merged:
            if cr.index in top and better(top[cr.index][1], rows):
                tcr, trows = top[cr.index]
                tcr.source = f"from the top-up run {topup.name} (replacing {cr.n_reps} reps)"
                new.append((tcr, trows))
            else:
                new.append((cr, rows))
        merged = new
    names: list[str] = []
    for _, rows in merged:
        for r in rows:
            if r["estimator"] not in names:
                names.append(r["estimator"])
    preamble = btext.split("\n## Design", 1)[0].split("\n\n", 1)[1].strip()
    extra, extra_from, when = "", base.name, ""
    for path in (base, *topups):  # the motor/anchor sections of the last run that has them
        text = path.read_text()
        if "## Motor" in text:
            extra, extra_from = "## Motor" + text.split("## Motor", 1)[1], path.name
            dates = [ln[2:] for ln in text.splitlines() if ln.startswith("- date:")]
            when = f" ({dates[0]})" if dates else ""
    if extra:
        extra = f"_Motor and anchor sections from {extra_from}{when}._\n\n" + extra
    replaced = sum(1 for cr, _ in merged if cr.source.startswith("from the top-up"))
    if replaced:
        note = (
            "Merged report: the first full run cut R in its early cells to fit its time budget "
            "while the machine was loaded by other jobs; those cells were run again with the "
            "planned R in top-up runs (same seeds, so the first replications are identical), "
            "whose cells replace the first run's. Each cell says which run it comes from."
            "\n\nFirst run:\n\n"
        )
    else:
        note = f"Report of one full run ({base.name}, its header below).\n\nThe run:\n\n"
    all_est = {r["estimator"] for _, rows in merged for r in rows}
    partial = {
        name: sorted(cr.index for cr, rows in merged if name not in {r["estimator"] for r in rows})
        for name in sorted(all_est)
    }
    missing = [f"`{k}` missing in cells {v}" for k, v in partial.items() if v]
    if missing:
        note = (
            note.replace("\n\nFirst run:\n\n", "")
            + " Estimators registered after the first run started are only in the cells of the "
            "top-up runs: "
            + "; ".join(missing)
            + " (the first run's notes below say what was available when it started: there "
            "`dr.fit(method='auto')` ran `integral`; the headline's `auto` rows come only from "
            "cells that ran the registered `auto`).\n\nFirst run:\n\n"
        )
    cells = [(cr.index, cr.cell) for cr, _ in merged]
    return grid_report(
        "Coefficient recovery (full)", "full", merged, cells, names, [], note + preamble, extra
    )


def reflag(path: Path) -> str:
    """Flags of the recommended path recomputed from an existing results file."""
    done = _parse_cells(path.read_text())
    names = sorted({r["estimator"] for _, rows in done for r in rows})
    return "\n".join(flags(done, _auto_alias(names)) or ["- none"])


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------
def design_table(cells: list[tuple[int, Cell]]) -> str:
    rows = [
        {
            "cell": i,
            "α": c.alpha,
            "input": c.u,
            "|α|Δ": c.adt,
            "|α|T": c.aT,
            "n": c.n,
            "noise": c.noise,
            "sampling": "irregular (exp gaps)" if c.irregular else "regular",
        }
        for i, c in cells
    ]
    return markdown_table(rows)


def cell_section(cr: CellResult, rows: list[dict[str, Any]]) -> list[str]:
    """Markdown lines of one cell's metric table (heading, provenance, table)."""
    return [
        f"### cell {cr.index}: {cr.cell.label}",
        "",
        f"τ = {cr.tau:.4g} (SD(x) = {cr.sd_x:.4g}); {len(cr.reps) or cr.n_reps} "
        f"replications; {cr.seconds:.0f} s wall" + (f"; {cr.source}" if cr.source else ""),
        "",
        markdown_table(rows, METRIC_COLS),
        "",
    ]


def grid_report(
    title: str,
    mode: str,
    done: list[tuple[CellResult, list[dict[str, Any]]]],
    cells: list[tuple[int, Cell]],
    names: list[str],
    notes: list[str],
    plan: str,
    extra: str = "",
) -> str:
    parts = [header(title, PACKAGES), plan, "", *[f"- {n}" for n in notes], ""]
    parts += ["## Design", "", design_table(cells), ""]
    auto_alias = _auto_alias(names)
    fl = flags(done, auto_alias)
    parts += [
        "## Recommended path outside [0.93, 0.97] coverage or |bias| > 0.2 SD (or > 2% failures)",
        "",
        "Each flag says whether the departure is beyond 2 Monte-Carlo SEs (coverage: binomial SE "
        "at the cell's R; bias: 1/√R in SD units); at R = 100 a coverage of 0.93 is within MC "
        "error of 0.95.",
        "",
        *(fl or ["- none"]),
        "",
    ]
    parts += ["## Headline: recommended path per regime", "", headline(done, names, mode), ""]
    parts += ["## Summary over cells (median over cells of each metric)", ""]
    parts += [summary_table(done, names), ""]
    parts += ["## Per cell", ""]
    for cr, rows in done:
        parts += cell_section(cr, rows)
    if len(done) < len(cells):
        parts += [
            f"_partial: {len(done)} of {len(cells)} cells done (cells not done: "
            f"{sorted(set(i for i, _ in cells) - {cr.index for cr, _ in done})})_",
            "",
        ]
    if extra:
        parts += [extra]
    return "\n".join(parts)


def _auto_alias(names: list[str]) -> str | None:
    return None if "auto" in names else "integral"


def summary_table(done: list[tuple[CellResult, list[dict[str, Any]]]], names: list[str]) -> str:
    rows = []
    for name in names:
        for coef in COEFS:
            sel = [
                r
                for _, rows_ in done
                for r in rows_
                if r["estimator"] == name and r["coef"] == coef
            ]
            if not sel:
                continue

            def med(key: str, sel: list[dict[str, Any]] = sel) -> float:
                v = [r[key] for r in sel if key in r and np.isfinite(r[key])]
                return float(np.median(v)) if v else math.nan

            covs = [r["cover"] for r in sel if "cover" in r]
            rows.append(
                {
                    "estimator": name,
                    "coef": coef,
                    "cells": len(sel),
                    "|bias|/SD": med_abs(sel, "bias/SD"),
                    "RMSE/MLE": med("RMSE/MLE"),
                    "SE/SD": med("SE/SD"),
                    "cover (median)": med("cover"),
                    "cover (min)": float(np.min(covs)) if covs else math.nan,
                    "cells in [0.93,0.97]": sum(0.93 <= c <= 0.97 for c in covs),
                    "fail": med("fail"),
                    "time_ms": med("time_ms"),
                }
            )
    return markdown_table(rows)


def med_abs(sel: list[dict[str, Any]], key: str) -> float:
    v = [abs(r[key]) for r in sel if key in r and np.isfinite(r[key])]
    return float(np.median(v)) if v else math.nan


def headline(
    done: list[tuple[CellResult, list[dict[str, Any]]]], names: list[str], mode: str
) -> str:
    """Coverage and efficiency of the recommended path per regime."""
    auto_name = "auto" if "auto" in names else "integral"
    paths = [(auto_name, ("A", "B", "C"))]
    for m in ("statespace", "arimax", "integral", "gradient", "fourier", "trajectory"):
        if m in names and m != auto_name:
            paths.append((m, RECOMMENDED[m]))
    rows = []
    for name, regimes in paths:
        for reg in regimes:
            sel = [
                r
                for cr, rows_ in done
                for r in rows_
                if cr.cell.regime == reg
                and r["estimator"] == name
                and "cover" in r
                and not (name == "arimax" and cr.cell.irregular)
            ]
            if not sel:
                continue
            covs = np.array([r["cover"] for r in sel])
            label = name if name != auto_name or auto_name == "auto" else f"auto (= {name})"
            rows.append(
                {
                    "path": label,
                    "regime": reg,
                    "cells": len({id(r) for r in sel}) // len(COEFS),
                    "coverage (median)": float(np.median(covs)),
                    "coverage (range)": f"{covs.min():.2f}–{covs.max():.2f}",
                    "|bias|/SD (median)": med_abs(sel, "bias/SD"),
                    "RMSE / exact MLE (median)": float(
                        np.nanmedian([r.get("RMSE/MLE", math.nan) for r in sel])
                    ),
                    "SE/SD (median)": float(np.nanmedian([r.get("SE/SD", math.nan) for r in sel])),
                }
            )
    for name in ("FD central OLS", "SARIMAX(1,0,0)+c"):
        for reg in ("A", "B", "C"):
            sel = [
                r
                for cr, rows_ in done
                for r in rows_
                if cr.cell.regime == reg and r["estimator"] == name and "cover" in r
            ]
            if not sel:
                continue
            covs = np.array([r["cover"] for r in sel])
            rows.append(
                {
                    "path": f"{name} (peer)",
                    "regime": reg,
                    "cells": len(sel) // len(COEFS),
                    "coverage (median)": float(np.median(covs)),
                    "coverage (range)": f"{covs.min():.2f}–{covs.max():.2f}",
                    "|bias|/SD (median)": med_abs(sel, "bias/SD"),
                    "RMSE / exact MLE (median)": float(
                        np.nanmedian([r.get("RMSE/MLE", math.nan) for r in sel])
                    ),
                    "SE/SD (median)": float(np.nanmedian([r.get("SE/SD", math.nan) for r in sel])),
                }
            )
    text = [
        f"Coefficient recovery, {mode} run (benchmarks/recovery.py, BENCHMARKS.md §1): nominal 95% "
        "intervals over all coefficients (x, u, Intercept) and cells of each noise regime "
        "(A process noise, B measurement noise, C both). Efficiency = RMSE relative to the exact "
        "Gaussian MLE (derivreg statespace told the true noise structure).",
        "",
        markdown_table(rows),
    ]
    return "\n".join(text)


# --------------------------------------------------------------------------------------------
# motor and nonlinear anchors
# --------------------------------------------------------------------------------------------
MOTOR_GAINS = {"kS": 0.5, "kV": 2.0, "kA": 0.4}


def _motor_log(seed: int, steady: float) -> pd.DataFrame:
    return sim.motor(
        MOTOR_GAINS["kS"],
        MOTOR_GAINS["kV"],
        MOTOR_GAINS["kA"],
        dt=0.02,
        tau=0.002,
        tau_velocity=0.02,
        sigma=0.2,
        steady_state=steady,
        seed=seed,
    )


def motor_fd_ols(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The plain procedure: acceleration by central differences of the measured velocity,
    OLS ``u = kS sign(v) + kV v + kA a`` on moving rows, per test concatenated."""
    import statsmodels.api as sm

    X, Y = [], []
    for _, g in df.groupby("test", sort=False):
        t, v, u = g["t"].to_numpy(float), g["v"].to_numpy(float), g["u"].to_numpy(float)
        acc = np.gradient(v, t)
        keep = np.abs(v) > 0.05
        X.append(np.column_stack([np.sign(v), v, acc])[keep])
        Y.append(u[keep])
    res = sm.OLS(np.concatenate(Y), np.vstack(X)).fit()
    return np.asarray(res.params), np.asarray(res.bse)


def _motor_rep(job: tuple[int, float, list[str]]) -> dict[str, Any]:
    seed, steady, methods = job
    df = _motor_log(seed, steady)
    out: dict[str, Any] = {}
    for m in methods:
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if m == "FD central OLS":
                    est, se = motor_fd_ols(df)
                else:
                    ch = dr.characterize(sim.as_sysid_log(df), method=m)
                    est = ch.params[["kS", "kV", "kA"]].to_numpy(float)
                    se = ch.bse[["kS", "kV", "kA"]].to_numpy(float)
            ok = bool(np.all(np.isfinite(est)) and np.all(np.isfinite(se)))
            err = ""
        except Exception as exc:
            est = se = np.full(3, np.nan)
            ok, err = False, f"{type(exc).__name__}: {str(exc)[:80]}"
        out[m] = (est, se, time.perf_counter() - t0, ok, err)
    return out


def motor_section(pool: Any, reps: int, methods: list[str]) -> str:
    truth = np.array(list(MOTOR_GAINS.values()))
    lines = [
        "## Motor: kS, kV, kA",
        "",
        f"`simulate.motor(kS={MOTOR_GAINS['kS']}, kV={MOTOR_GAINS['kV']}, kA={MOTOR_GAINS['kA']}, "
        "dt=0.02, tau=0.002, tau_velocity=0.02, sigma=0.2)`, four SysId tests (ramps 0.25 V/s for "
        "10 s, ±7 V steps), with `steady_state` = 0 s or 20 s appended to each step test. derivreg "
        "methods through `dr.characterize(simulate.as_sysid_log(log), method=...)` (its moving-"
        "stretch data preparation, gains and delta-method SEs); `sysid` is the legacy SysId "
        "pipeline; `FD central OLS` is the plain procedure: acceleration = `np.gradient` of the "
        "measured velocity, OLS of `u` on `sign(v), v, a` over rows with |v| > 0.05 (statsmodels "
        f"nonrobust SEs). {reps} replications per setting.",
        "",
    ]
    for steady in (0.0, 20.0):
        res = pool.map(_motor_rep, [(5000 + k, steady, methods) for k in range(reps)])
        rows = []
        for m in methods:
            fits = [r[m] for r in res]
            ok = np.array([f[3] for f in fits])
            errs = sorted({f[4] for f in fits if f[4]})
            E = np.array([f[0] for f in fits])[ok]
            S = np.array([f[1] for f in fits])[ok]
            for j, g in enumerate(MOTOR_GAINS):
                row: dict[str, Any] = {"method": m, "gain": g, "truth": truth[j]}
                if len(E) >= 2:
                    sd = float(np.std(E[:, j], ddof=1))
                    bias = float(np.mean(E[:, j]) - truth[j])
                    row.update(
                        mean=float(np.mean(E[:, j])),
                        bias=bias,
                        SD=sd,
                        **{"bias/SD": bias / sd if sd > 0 else math.nan},
                        RMSE=float(np.sqrt(np.mean((E[:, j] - truth[j]) ** 2))),
                        **{"SE/SD": float(np.mean(S[:, j])) / sd if sd > 0 else math.nan},
                        cover=float(np.mean(np.abs(E[:, j] - truth[j]) <= Z95 * S[:, j])),
                    )
                row["fail"] = 1 - ok.mean()
                row["time_ms"] = 1000 * float(np.median([f[2] for f in fits]))
                row["errors"] = "; ".join(errs)[:120]
                rows.append(row)
        lines += [f"### steady_state = {steady:g} s", "", markdown_table(rows), ""]
        print(f"motor steady_state={steady} done", flush=True)
    return "\n".join(lines)


FHN = {"a": 0.2, "b": 0.2, "c": 3.0}
FHN_FORMULA = {"V": "d(V) ~ V + I(V**3) + R - 1", "R": "d(R) ~ V + R"}


def _fhn_truth() -> dict[str, dict[str, float]]:
    a, b, c = FHN["a"], FHN["b"], FHN["c"]
    return {
        "V": {"V": c, "I(V ** 3)": -c / 3, "R": c},
        "R": {"V": -1 / c, "Intercept": a / c, "R": -b / c},
    }


def _fhn(seed: int) -> pd.DataFrame:
    a, b, c = FHN["a"], FHN["b"], FHN["c"]

    def rhs(_t: float, s: np.ndarray) -> list[float]:
        v, r = s
        return [c * (v - v**3 / 3 + r), -(v - a + b * r) / c]

    return sim.ode(rhs, (-1.0, 1.0), np.linspace(0, 20, 201), tau=0.1, seed=seed, names=["V", "R"])


def _lv(seed: int) -> pd.DataFrame:
    return sim.lotka_volterra(n=100, tau=0.1, seed=seed)


LV_FORMULA = {"x": "d(x) ~ x + x:y - 1", "y": "d(y) ~ y + x:y - 1"}


def _anchor_rep(job: tuple[str, int, list[str]]) -> dict[str, Any]:
    which, seed, methods = job
    if which == "lv":
        df, formula = _lv(seed), LV_FORMULA
        truth = df.attrs["truth"]
    else:
        df, formula, truth = _fhn(seed), FHN_FORMULA, _fhn_truth()
    cols = [c for c in df.columns if not c.endswith("_true")]
    out: dict[str, Any] = {}
    for m in methods:
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = dr.fit(formula, df[cols], method=m)
            ci = res.conf_int()
            vals = {}
            for eq, terms in truth.items():
                for term, tv in terms.items():
                    key = _param_key(res.params.index, eq, term)
                    lo, hi = ci.loc[key].to_numpy(float)[:2]
                    vals[f"{eq}: {term}"] = (
                        float(res.params[key]),
                        float(res.bse[key]),
                        lo,
                        hi,
                        tv,
                    )
            out[m] = (vals, time.perf_counter() - t0, True, "")
        except Exception as exc:
            out[m] = ({}, time.perf_counter() - t0, False, f"{type(exc).__name__}: {str(exc)[:80]}")
    return out


def _param_key(index: pd.Index, eq: str, term: str) -> Any:
    for k in index:
        if isinstance(k, tuple):
            if k[0] == eq and str(k[1]).replace(" ", "") == term.replace(" ", ""):
                return k
        else:
            s = str(k).replace(" ", "")
            for cand in (f"{eq}:{term}", f"{eq}_{term}", f"d({eq}):{term}", f"{eq}.{term}"):
                if s == cand.replace(" ", ""):
                    return k
    raise KeyError(f"no parameter for equation {eq!r}, term {term!r} in {list(index)}")


def anchors_section(pool: Any, reps: int, methods: list[str], notes: list[str]) -> str:
    lines = [
        "## Nonlinear anchors",
        "",
        "Lotka–Volterra (α, β, γ, δ) = (2/3, 4/3, 1, 1), n = 100 on [0, 20], measurement noise "
        "SD 0.1, `d(x) ~ x + x:y - 1`, `d(y) ~ y + x:y - 1` (joint fit). FitzHugh–Nagumo "
        "(a, b, c) = (0.2, 0.2, 3): `V' = c(V − V³/3 + R)`, `R' = −(V − a + bR)/c` from (−1, 1), "
        "n = 201 on [0, 20], measurement noise SD 0.1, fitted linear in the parameters as "
        "`d(V) ~ V + I(V**3) + R - 1`, `d(R) ~ V + R` (truth: c, −c/3, c; −1/c, a/c, −b/c). "
        f"{reps} replications each, default options.",
        "",
        *[f"- {n}" for n in notes],
        "",
    ]
    for which, title in (("lv", "Lotka–Volterra"), ("fhn", "FitzHugh–Nagumo")):
        res = pool.map(_anchor_rep, [(which, 7000 + k, methods) for k in range(reps)])
        rows = []
        for m in methods:
            fits = [r[m] for r in res]
            ok = [f for f in fits if f[2]]
            errs = sorted({f[3] for f in fits if f[3]})
            keys = list(ok[0][0]) if ok else []
            for key in keys:
                arr = np.array([f[0][key][:4] for f in ok])
                tv = ok[0][0][key][4]
                e, s, lo, hi = arr.T
                fin = np.isfinite(e) & np.isfinite(s)
                e, s, lo, hi = e[fin], s[fin], lo[fin], hi[fin]
                sd = float(np.std(e, ddof=1)) if len(e) > 1 else math.nan
                bias = float(np.mean(e) - tv) if len(e) else math.nan
                rows.append(
                    {
                        "method": m,
                        "parameter": key,
                        "truth": tv,
                        "mean": float(np.mean(e)) if len(e) else math.nan,
                        "bias/SD": bias / sd if sd and sd > 0 else math.nan,
                        "RMSE": float(np.sqrt(np.mean((e - tv) ** 2))) if len(e) else math.nan,
                        "SE/SD": float(np.mean(s)) / sd if sd and sd > 0 else math.nan,
                        "cover": float(np.mean((lo <= tv) & (tv <= hi))) if len(e) else math.nan,
                        "fail": 1 - len(e) / len(fits),
                        "time_ms": 1000 * float(np.median([f[1] for f in fits])),
                    }
                )
            if not ok:
                rows.append({"method": m, "parameter": "–", "fail": 1.0, "errors": "; ".join(errs)})
        lines += [f"### {title}", "", markdown_table(rows), ""]
        print(f"anchor {which} done", flush=True)
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------
def _weight(cell: Cell) -> float:
    """Relative cost of one replication of a cell (fits cost a fixed part plus a part in n)."""
    return 0.3 + 0.7 * cell.n / 300


#: cost of the slow estimators relative to the fast ones per replication (quick-mode timings)
SLOW_COST = 4.0
MIN_REPS, MIN_REPS_SLOW = 200, 100


class Budget:
    """Cut R for the remaining cells when the measured speed says the plan would overrun.

    The cost of a cell is modelled as ``k · w(cell) · (R + SLOW_COST · R_slow)`` seconds; ``k`` is
    learned from the cells done so far (wall time, so load from other processes counts). When the
    remaining cells at the planned R would not fit in the remaining budget, R_slow is cut first
    (down to MIN_REPS_SLOW), then R (down to MIN_REPS). The R used is reported per cell.
    """

    def __init__(self, seconds: float, plan: Plan) -> None:
        self.seconds = seconds
        self.plan = plan
        self.spent_units = 0.0
        self.spent_seconds = 0.0

    def record(self, cell: Cell, reps: int, reps_slow: int, seconds: float) -> None:
        self.spent_units += _weight(cell) * (reps + SLOW_COST * reps_slow)
        self.spent_seconds += seconds

    def reps_for(self, pos: int, elapsed: float) -> tuple[int, int]:
        reps, slow = self.plan.reps, self.plan.reps_slow
        if self.spent_units == 0:
            return reps, slow
        k = self.spent_seconds / self.spent_units
        left = max(self.seconds - elapsed, 0.0)
        w = sum(_weight(c) for _, c in self.plan.cells[pos:])
        if k * w * (reps + SLOW_COST * slow) <= left:
            return reps, slow
        slow_fit = (left / (k * w) - reps) / SLOW_COST
        if slow_fit >= MIN_REPS_SLOW:
            return reps, min(slow, int(slow_fit))
        slow = min(slow, MIN_REPS_SLOW)
        if elapsed >= self.seconds:
            return 0, 0
        reps_fit = int(left / (k * w) - SLOW_COST * slow)
        return max(min(reps, reps_fit), MIN_REPS), slow


@dataclass
class Plan:
    cells: list[tuple[int, Cell]]
    reps: int
    reps_slow: int
    motor_reps: int
    anchor_reps: int
    mode: str


def make_plan(mode: str) -> Plan:
    if mode == "quick":
        return Plan([(i, DESIGN[i]) for i in QUICK_CELLS], 40, 20, 6, 6, "quick")
    cells = [(i, DESIGN[i]) for i in RUN_ORDER]
    return Plan(cells, FULL_REPS, FULL_REPS_SLOW, 40, 40, "full")


#: full mode: R for the fast estimators and for the slow ones (gradient, statespace, auto,
#: SARIMAX, exact MLE), set from the per-fit times measured in quick mode so that the run fits
#: the 90-minute budget on 2 cores
FULL_REPS = 500
FULL_REPS_SLOW = 250


#: cells of the bootstrap comparison: short-record process-noise bias (12, 15, 18, 19), Wald
#: under-coverage in regime C (5, 17) and a long record where the default fit is fine (21)
BOOT_CELLS = (12, 15, 18, 19, 5, 17, 21)
BOOT_NAMES = ("auto", "statespace (bootstrap)")


def bootstrap_report(done: list[tuple[CellResult, list[dict[str, Any]]]], n_boot: int) -> str:
    """Side-by-side table of auto's default fit and its parametric bootstrap, then per cell."""
    parts = [
        header("Parametric bootstrap of the state-space fit (recommended path)", PACKAGES),
        "Issue 7, item 5: the cells where the recommended path (`dr.fit` default, method "
        "`auto` -> `statespace`) is biased by more than 0.2 SD (small-sample, Kendall-type bias "
        "of the dynamics on short records with process noise) or under-covers, refitted with "
        f'`cov_type="bootstrap"` (n_boot = {n_boot}: simulate the fitted model, refit each '
        "replicate from the estimate; estimate 2θ̂ − mean(θ*), covariance of θ* times "
        "1 + 1/B), on the same replications as the default fit (replication r of cell i is "
        "SeedSequence((2026, i, r)), as in the grid). One process, one BLAS thread; "
        "`nice -n 10`. R per cell as listed (set by the time available): Monte-Carlo SE of a 95% "
        "coverage 0.018 / 0.022 / 0.024 / 0.028 at R = 150 / 100 / 80 / 60, of a bias/SD 1/√R "
        "(0.08-0.13), so the paired bias/SD difference between the two fits of one replication "
        "is much more precise than either. The bootstrap is far slower than the default fit "
        "(`ms boot`: n_boot refits), which is why R is smaller here than in the grid.",
        "",
        "## Default fit vs bootstrap",
        "",
    ]
    rows = []
    for cr, rs in done:
        for coef in COEFS:
            d = {r["estimator"]: r for r in rs if r["coef"] == coef}
            a, b = d.get(BOOT_NAMES[0], {}), d.get(BOOT_NAMES[1], {})
            rows.append(
                {
                    "cell": cr.index,
                    "design": cr.cell.label.replace("|", "\\|"),
                    "coef": coef,
                    "R": a.get("R", math.nan),
                    "bias/SD default": a.get("bias/SD", math.nan),
                    "bias/SD boot": b.get("bias/SD", math.nan),
                    "cover default": a.get("cover", math.nan),
                    "cover boot": b.get("cover", math.nan),
                    "SE/SD default": a.get("SE/SD", math.nan),
                    "SE/SD boot": b.get("SE/SD", math.nan),
                    "RMSE boot/default": b.get("RMSE", math.nan) / a["RMSE"]
                    if a.get("RMSE")
                    else math.nan,
                    "fail boot": b.get("fail", math.nan),
                    "ms default": a.get("time_ms", math.nan),
                    "ms boot": b.get("time_ms", math.nan),
                }
            )
    parts += [markdown_table(rows), "", "## Per cell", ""]
    for cr, rs in done:
        parts += cell_section(cr, rs)
    return "\n".join(parts)


BIAS_SECTION = "## Run-time small-sample diagnostic vs the grid"


def bias_check(reps: int) -> str:
    """The default fit's small-sample diagnostic on the first ``reps`` replications of every
    grid cell, against the bias and coverage measured in ``recovery_full.md``."""
    from derivreg.exceptions import BiasWarning
    from derivreg.models._smallsample import BIAS_WARN, KENDALL_C, SHORT_SPAN

    full = RESULTS_DIR / "recovery_full.md"
    grid = {cr.index: rows for cr, rows in _parse_cells(full.read_text())}
    rows, fp, fn = [], [], []
    for index, cell in enumerate(DESIGN):
        tau, _ = cell_tau(cell, index)
        hold = "linear" if cell.u == "multisine" else "zoh"
        preds, fired, biased, under = [], [], [], []
        for rep in range(reps):
            df = _simulate(cell, (2026, index, rep), tau)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                res = dr.fit(FORMULA, df[["x", "u"]], input_hold=hold)
            sb = res.info["small-sample bias"]
            preds.append([sb["predicted bias/SE"][c] for c in COEFS])
            fired.append(any(issubclass(w.category, BiasWarning) for w in caught))
            biased.append(sb["biased"])
            under.append(sb["wald under-coverage"])
        pred = np.mean(preds, axis=0)
        obs = {e: {r["coef"]: r for r in grid[index] if r["estimator"] == e} for e in ("auto",)}
        mle = {r["coef"]: r for r in grid[index] if r["estimator"] == "exact MLE"}
        o_b = [obs["auto"][c].get("bias/SD", math.nan) for c in COEFS]
        o_c = [obs["auto"][c].get("cover", math.nan) for c in COEFS]
        nrep = int(obs["auto"]["x"]["R"])
        fails = max(abs(v) for v in o_b) > 0.2 or any(not 0.93 <= v <= 0.97 for v in o_c)
        sig = max(abs(v) for v in o_b) > max(0.2, 2 / math.sqrt(nrep)) or any(
            abs(v - 0.95) > max(0.02, 2 * math.sqrt(0.95 * 0.05 / nrep)) for v in o_c
        )
        rate = float(np.mean(fired))
        if rate >= 0.5 and not fails:
            fp.append(index)
        if rate < 0.5 and sig:
            fn.append(index)
        rows.append(
            {
                "cell": index,
                "design": cell.label.replace("|", "\\|"),
                "pred x/u/I": " / ".join(f"{v:+.2f}" for v in pred),
                "obs default x/u/I": " / ".join(f"{v:+.2f}" for v in o_b),
                "obs exact MLE x/u/I": " / ".join(
                    f"{mle[c].get('bias/SD', math.nan):+.2f}" for c in COEFS
                ),
                "cover default x/u/I": " / ".join(f"{v:.3f}" for v in o_c),
                "R grid": nrep,
                "warned": rate,
                "bias rule": float(np.mean(biased)),
                "C rule": float(np.mean(under)),
                "grid fails": "yes" if sig else ("marginal" if fails else "no"),
            }
        )
    P = np.array([[float(v) for v in r["pred x/u/I"].split(" / ")] for r in rows])
    O = np.array([[float(v) for v in r["obs default x/u/I"].split(" / ")] for r in rows])
    M = np.array([[float(v) for v in r["obs exact MLE x/u/I"].split(" / ")] for r in rows])
    fit_lines = []
    for label, Y in (("default fit (auto)", O), ("exact MLE", M)):
        parts = []
        for j, c in enumerate(COEFS):
            scale = float(P[:, j] @ Y[:, j] / (P[:, j] @ P[:, j]))
            corr = float(np.corrcoef(P[:, j], Y[:, j])[0, 1])
            rsd = float(np.std(Y[:, j] - P[:, j]))
            parts.append(f"`{c}` slope {scale:.2f}, corr {corr:.2f}, residual SD {rsd:.2f}")
        fit_lines.append(f"- observed on predicted, {label}: " + "; ".join(parts))
    return "\n".join(
        [
            BIAS_SECTION,
            "",
            f"Every default fit (`dr.fit`, auto -> statespace) of `d(x) ~ x + ...` predicts its "
            f"small-sample bias in SE units: bias(a) ≈ −{KENDALL_C:g}·s/T (s: share of the "
            "input-partialled variation of x driven by the process noise, from the fitted σ², "
            "â and the smoothed state), the other coefficients through their correlation with "
            f"â; it warns (BiasWarning) when a predicted |bias| exceeds {BIAS_WARN:g} SE "
            f"(*bias rule*) or when both noise sources are present (process share of the "
            f"one-step variance in (0.1, 0.9)) on a record under {SHORT_SPAN:g} time constants "
            "(*C rule*: the grid's regime-C cells at |α|T <= 30 have mean SE/SD 0.92 and mean "
            "coverage 0.932 against 1.03 / 0.951 in regime B and 0.96 / 0.945 in regime A). "
            f"Here: the mean prediction over the first {reps} replications of each cell (the "
            "same data as the grid's first replications), the share of those fits that warned, "
            "and the grid's measured bias/SD and coverage of the default fit (R as listed). "
            "*grid fails*: `yes` when a coefficient is biased beyond max(0.2, 2/√R) SD or "
            "covers outside 0.95 ± max(0.02, 2 MC SE); `marginal` when only the plain "
            "thresholds (0.2 SD, [0.93, 0.97]) are crossed.",
            "",
            *fit_lines,
            f"- cells that warn in >= half of the fits but do not fail in the grid (false "
            f"positives): {fp or 'none'}",
            f"- cells that fail significantly in the grid but warn in < half of the fits (false "
            f"negatives): {fn or 'none'}",
            "",
            markdown_table(rows),
            "",
        ]
    )


def bias_check_main(reps: int) -> int:
    """Write :func:`bias_check` into ``recovery_bootstrap.md`` (replacing an earlier one)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    section = bias_check(reps)
    path = RESULTS_DIR / "recovery_bootstrap.md"
    text = path.read_text() if path.exists() else ""
    if BIAS_SECTION in text:
        text = text.split(BIAS_SECTION, 1)[0].rstrip() + "\n"
    write_results("recovery_bootstrap", text + "\n" + section)
    print(section)
    return 0


def bootstrap_main(cells: list[int], reps: int, n_boot: int) -> int:
    """Run the bootstrap comparison on ``cells`` (in this process) and merge the cells into
    ``recovery_bootstrap.md`` (cells of earlier runs that are not rerun are kept)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    warnings.simplefilter("ignore")
    global _EST
    _EST = [
        Estimator(BOOT_NAMES[0], derivreg_fit("auto")),
        Estimator(BOOT_NAMES[1], bootstrap_fit(n_boot)),
    ]
    path = RESULTS_DIR / "recovery_bootstrap.md"
    old = (
        {cr.index: (cr, rows) for cr, rows in _parse_cells(path.read_text())}
        if (path.exists())
        else {}
    )
    for index in cells:
        cell = DESIGN[index]
        t0 = time.perf_counter()
        tau, sd = cell_tau(cell, index)
        cr = CellResult(cell, index, tau, sd)
        cr.reps = [_one_rep((index, cell, tau, r, True)) for r in range(reps)]
        cr.seconds = time.perf_counter() - t0
        old[index] = (cr, cell_metrics(cr, list(BOOT_NAMES)))
        done = [old[i] for i in sorted(old)]
        keep = ""
        if path.exists() and BIAS_SECTION in path.read_text():
            keep = "\n" + BIAS_SECTION + path.read_text().split(BIAS_SECTION, 1)[1]
        write_results("recovery_bootstrap", bootstrap_report(done, n_boot) + keep)
        print(f"cell {index} done in {cr.seconds:.0f} s (R={reps}): {cell.label}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="few cells, small R (make bench)")
    g.add_argument("--full", action="store_true", help="the full design")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cells", type=str, default=None, help="comma-separated cell indices")
    ap.add_argument("--topup", default="", help="suffix of a top-up run's results file")
    ap.add_argument("--extras-only", action="store_true", help="motor and anchors only")
    ap.add_argument("--skip-extras", action="store_true", help="grid only (no motor/anchors)")
    ap.add_argument(
        "--bootstrap",
        action="store_true",
        help="auto's default fit vs cov_type='bootstrap' on --cells (recovery_bootstrap.md)",
    )
    ap.add_argument("--reps", type=int, default=150, help="replications per cell (--bootstrap)")
    ap.add_argument("--n-boot", type=int, default=49, help="bootstrap replications (--bootstrap)")
    ap.add_argument(
        "--bias-check",
        type=int,
        default=0,
        metavar="K",
        help="the default fit's small-sample warning on K replications of every grid cell vs "
        "recovery_full.md (section of recovery_bootstrap.md)",
    )
    ap.add_argument(
        "--budget",
        type=float,
        default=None,
        help="minutes for the grid (default: 70 full, unlimited quick); R is cut to fit",
    )
    ap.add_argument(
        "--reflag",
        type=Path,
        default=None,
        help="print the recommended-path flags recomputed from an existing results file",
    )
    ap.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        metavar="FILE",
        help="write recovery_full.md from a full run (first file) and top-up runs of its cells",
    )
    args = ap.parse_args(argv)
    if args.merge is not None:
        base_text = args.merge[0].read_text()
        text = merge(*args.merge)
        write_results("recovery_full", text)
        done = _parse_cells(text)
        names = list(dict.fromkeys(r["estimator"] for _, rows in done for r in rows))
        write_results("recovery_headline", headline(done, names, "full"))
        print(f"merged {args.merge[1:]} into {args.merge[0]} ({len(base_text)} chars)")
        return 0
    if args.reflag is not None:
        print(reflag(args.reflag))
        return 0
    if args.bias_check:
        return bias_check_main(args.bias_check)
    if args.bootstrap:
        cells = [int(c) for c in (args.cells or ",".join(map(str, BOOT_CELLS))).split(",")]
        return bootstrap_main(cells, args.reps, args.n_boot)
    mode = "full" if args.full else "quick"
    plan = make_plan(mode)
    if args.budget is None:
        args.budget = 70.0 if mode == "full" else 1e9
    if args.extras_only:
        args.cells, args.topup = "none", "_extras"
        plan.cells = []
    elif args.cells:
        wanted = {int(c) for c in args.cells.split(",")}
        plan.cells = [(i, c) for i, c in plan.cells if i in wanted]
    ests, notes = estimators()
    names = [e.name for e in ests]
    slow = [e.name for e in ests if e.slow]
    plan_text = (
        f"Mode `{mode}`: {len(plan.cells)} cells; R = {plan.reps} replications per cell for the "
        f"fast estimators and R = {plan.reps_slow} (the first {plan.reps_slow} of the same "
        f"replications) for the slow ones ({', '.join(slow)}), chosen so the run fits its time "
        "budget on this 2-core machine; RMSE/MLE is computed on the replications both ran. "
        f"Monte-Carlo SE of a 95% coverage: {math.sqrt(0.95 * 0.05 / plan.reps):.3f} at "
        f"R = {plan.reps}, {math.sqrt(0.95 * 0.05 / plan.reps_slow):.3f} at R = {plan.reps_slow}. "
        f"{args.workers} worker processes, one BLAS thread each. Fixed seeds: replication r of "
        "cell i uses SeedSequence((2026, i, r))."
    )
    name = f"recovery_{mode}" + (f"_topup{args.topup}" if args.cells and mode == "full" else "")
    print(plan_text, flush=True)
    t_start = time.perf_counter()
    done: list[tuple[CellResult, list[dict[str, Any]]]] = []
    ctx = mp.get_context("fork")
    budget = Budget(args.budget * 60.0, plan)
    skipped: list[int] = []
    with ctx.Pool(args.workers, initializer=_init_worker) as pool:
        for pos, (index, cell) in enumerate(plan.cells):
            t0 = time.perf_counter()
            tau, sd = cell_tau(cell, index)
            reps, reps_slow = budget.reps_for(pos, time.perf_counter() - t_start)
            if reps == 0:
                skipped.append(index)
                print(f"cell {index} skipped: time budget spent", flush=True)
                continue
            jobs = [(index, cell, tau, r, r < reps_slow) for r in range(reps)]
            cr = CellResult(cell, index, tau, sd)
            cr.reps = pool.map(_one_rep, jobs, chunksize=4)
            cr.seconds = time.perf_counter() - t0
            budget.record(cell, reps, reps_slow, cr.seconds)
            rows = cell_metrics(cr, names)
            done.append((cr, rows))
            write_results(
                name,
                grid_report(
                    f"Coefficient recovery ({mode})",
                    mode,
                    done,
                    plan.cells,
                    names,
                    notes,
                    plan_text,
                ),
            )
            elapsed = time.perf_counter() - t_start
            print(
                f"cell {index} done in {cr.seconds:.0f} s (total {elapsed / 60:.1f} min, "
                f"R={reps}/{reps_slow}): {cell.label}",
                flush=True,
            )
        if mode == "full" and not args.cells and plan.cells:
            write_results("recovery_headline", headline(done, names, mode))
        extra = ""
        if not args.skip_extras:
            motor_methods = [
                m
                for m in names
                if m in ("gradient", "integral", "arimax", "statespace", "fourier", "trajectory")
            ]
            motor_methods = ["auto", *motor_methods, "sysid", "FD central OLS"]
            extra += motor_section(pool, plan.motor_reps, motor_methods) + "\n"
            write_results(
                name,
                grid_report(
                    f"Coefficient recovery ({mode})",
                    mode,
                    done,
                    plan.cells,
                    names,
                    notes,
                    plan_text,
                    extra,
                ),
            )
            anchor_notes = []
            anchor_methods = ["gradient", "integral"]
            if "trajectory" in names:
                anchor_methods.append("trajectory")
            else:
                anchor_notes.append(
                    "`trajectory` (trajectory refinement) is not available in this version: "
                    "gradient and integral only"
                )
            extra += anchors_section(pool, plan.anchor_reps, anchor_methods, anchor_notes)
    total = time.perf_counter() - t_start
    extra += f"\n\nTotal wall time: {total / 60:.1f} min.\n"
    text = grid_report(
        f"Coefficient recovery ({mode})", mode, done, plan.cells, names, notes, plan_text, extra
    )
    write_results(name, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
