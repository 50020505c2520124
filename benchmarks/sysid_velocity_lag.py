"""Does the logged velocity lag the logged position? An exploration, not a shipped diagnostic.

Motor controllers often filter the velocity they report (a moving average over a window of
samples), which delays it by about half the window. ``characterize`` fits the velocity, so the
filter biases kA: on the simulated motor below a 16-row average gives kA +45%, and no warning
fires (the voltage is constant over the rows kept, so the state-space input check has nothing
to test). This script estimates the lag of the velocity behind the position from the log alone
and reports it for simulated logs with known filters and for the two real logs in
``../shared/data/sysid`` (when present).

Estimator: per test, on the rows with voltage applied, the integral of the logged velocity
``P(t)`` is compared with the logged position shifted by ``L`` rows, ``p(t - L dt)``; after a
per-test linear detrend (the integrated velocity noise wanders), the lag with the smallest
pooled sum of squares is the estimate, and ``reduction`` is its relative improvement over
``L = 0``. Integer lags only: interpolating at fractional lags averages the position noise and
biases the choice towards half-integer lags.

What it shows (``benchmarks/results/sysid_velocity_lag.md``): the filter's lag ``(w - 1) / 2`` is
recovered on simulated logs unless the velocity noise is large (SD 0.1: the estimate scatters
over -4..9 rows); the two real logs give 9 rows (45 ms, team 8744) and the search bound (team
581), each with a 8-10% reduction. Not turned into a warning yet: the thresholds are not
calibrated, and the remedy the warning would name (``signal="position"``) is not identified on
either real log.

Usage: ``python benchmarks/sysid_velocity_lag.py [--reps 5]``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import header, markdown_table, write_results  # noqa: E402

from derivreg import simulate as sim  # noqa: E402
from derivreg.io.sysid import read_sysid  # noqa: E402

LAGS = np.arange(-4, 31)
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "sysid"
#: simulated motors: name -> simulate.motor options (kS 0.5, kV 2, kA 0.3, dt 5 ms)
VARIANTS: dict[str, dict[str, Any]] = {
    "measurement noise": {"tau_velocity": 0.02, "tau": 0.002},
    "noisy velocity": {"tau_velocity": 0.1, "tau": 0.002},
    "process noise": {"tau_velocity": 0.02, "tau": 0.002, "sigma": 0.5},
    "quantised + noise": {"tau_velocity": 0.02, "tau": 0.001, "velocity_quantum": 0.02},
    "3 s steady state": {"tau_velocity": 0.02, "tau": 0.002, "steady_state": 3.0},
}
WINDOWS = (1, 3, 8, 16)


def velocity_lag(log: pd.DataFrame) -> tuple[int, float]:
    """Lag (rows) of the logged velocity behind the position, and the SSE reduction at it."""
    keys = [c for c in ("test", "side") if c in log.columns]
    total = np.zeros(len(LAGS))
    for _, d in log.groupby(keys, sort=False):
        d = d[d["voltage"] != 0]
        t = d["time"].to_numpy(float)
        p = d["position"].to_numpy(float)
        v = d["velocity"].to_numpy(float)
        if len(t) < 80:
            continue
        dt = float(np.median(np.diff(t)))
        integ = np.concatenate([[0.0], np.cumsum(0.5 * (v[1:] + v[:-1]) * np.diff(t))])
        rows = slice(40, len(t) - 10)  # the same rows for every lag
        tt = t[rows]
        basis = np.column_stack([np.ones_like(tt), tt - tt.mean()])
        for i, lag in enumerate(LAGS):
            r = integ[rows] - np.interp(tt - lag * dt, t, p)
            r = r - basis @ np.linalg.lstsq(basis, r, rcond=None)[0]
            total[i] += float(r @ r)
    best = int(np.argmin(total))
    zero = int(np.flatnonzero(LAGS == 0)[0])
    return int(LAGS[best]), float(1.0 - total[best] / total[zero])


def filtered(log: pd.DataFrame, window: int) -> pd.DataFrame:
    """The log with its velocity averaged over the last ``window`` rows of each test."""
    if window <= 1:
        return log
    out = log.copy()
    out["velocity"] = out.groupby("test")["velocity"].transform(
        lambda s: s.rolling(window, min_periods=1).mean()
    )
    out.attrs = dict(log.attrs)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5, help="simulated logs per cell")
    args = ap.parse_args(argv)
    rows = []
    for name, opts in VARIANTS.items():
        for window in WINDOWS:
            lags, reds = [], []
            for seed in range(args.reps):
                log = sim.as_sysid_log(sim.motor(0.5, 2.0, 0.3, seed=seed, **opts))
                lag, red = velocity_lag(filtered(log, window))
                lags.append(lag)
                reds.append(red)
            rows.append(
                {
                    "log": f"simulated, {name}",
                    "velocity filter [rows]": window,
                    "true lag [rows]": (window - 1) / 2,
                    "estimated lags": ", ".join(str(v) for v in lags),
                    "SSE reduction": ", ".join(f"{v:.3f}" for v in reds),
                }
            )
            print(rows[-1], flush=True)
    if SHARED.is_dir():
        for path in sorted(SHARED.glob("*.json")):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                lag, red = velocity_lag(read_sysid(path))
            rows.append(
                {
                    "log": f"real: {path.name}",
                    "velocity filter [rows]": "?",
                    "true lag [rows]": "?",
                    "estimated lags": str(lag),
                    "SSE reduction": f"{red:.3f}",
                }
            )
            print(rows[-1], flush=True)
    text = [
        header("Lag of the logged velocity behind the logged position", ["derivreg"], argv),
        "",
        (__doc__ or "").split("\n\n")[2],
        "",
        f"Simulated logs: kS 0.5, kV 2, kA 0.3, dt 5 ms, {args.reps} seeds per cell; lags "
        f"searched over {LAGS[0]}..{LAGS[-1]} rows.",
        "",
        markdown_table(rows),
    ]
    path = write_results("sysid_velocity_lag", "\n".join(text))
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
