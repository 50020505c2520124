"""Generate ``cooling_panel.csv`` and ``cooling_panel_truth.csv``: 50 units of first-order cooling.

``python datasets/make_cooling.py`` rewrites both CSVs next to this script. Each unit is
``dx = (a x + b u + c) dt + σ dW`` observed as ``y = x + τ e`` (temperature x in °C, heater power
u in kW switched on/off for random durations around ``2/|a|``, time in minutes), simulated exactly
by :func:`derivreg.simulate.first_order` with per-unit coefficients: ``a = −k`` with
``k ~ U(0.05, 0.25)``/min, ``b ~ U(0.5, 1.5)`` °C/min per kW, ambient ``T ~ U(15, 25)`` °C and
``c = k·T``; σ = 0.05 °C/√min, τ = 0.1 °C, 80 samples per unit at 1-min spacing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from derivreg.datasets import update_checksums
from derivreg.simulate import first_order, inputs

HERE = Path(__file__).resolve().parent
SEED = 20261125
N_UNITS, N, DT, SIGMA, TAU = 50, 300, 1.0, 0.05, 0.1


def build() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The panel (unit, t, u, x) and the true coefficients per unit (unit, x, u, Intercept)."""
    rng = np.random.default_rng(SEED)
    k = rng.uniform(0.05, 0.25, N_UNITS)
    b = rng.uniform(0.5, 1.5, N_UNITS)
    ambient = rng.uniform(15.0, 25.0, N_UNITS)
    seeds = rng.integers(0, 2**32, N_UNITS)
    t = DT * np.arange(N)
    frames, truth = [], []
    for i in range(N_UNITS):
        a, c = -k[i], k[i] * ambient[i]
        u = 0.5 * (1.0 + inputs("switching", t, period=2.0 / k[i], seed=int(seeds[i])))
        sim = first_order(a, b[i], c, t=t, u=u, sigma=SIGMA, tau=TAU, seed=int(seeds[i]))
        frames.append(pd.DataFrame({"unit": i + 1, "t": t, "u": u, "x": sim["x"].to_numpy()}))
        truth.append({"unit": i + 1, "x": a, "u": b[i], "Intercept": c})
    return pd.concat(frames, ignore_index=True), pd.DataFrame(truth)


def to_csv_text(df: pd.DataFrame) -> str:
    """The exact text written."""
    return df.to_csv(index=False, float_format="%.10g", lineterminator="\n")


def main(out: Path = HERE) -> None:
    panel, truth = build()
    (Path(out) / "cooling_panel.csv").write_text(to_csv_text(panel), encoding="utf-8")
    (Path(out) / "cooling_panel_truth.csv").write_text(to_csv_text(truth), encoding="utf-8")
    update_checksums(Path(out))


if __name__ == "__main__":
    main()
