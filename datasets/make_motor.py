"""Generate ``motor_sysid.csv``: a simulated SysId characterisation log with known gains.

``python datasets/make_motor.py`` rewrites the CSV next to this script. The plant is the DC motor
``kA·x'' = u − kV·x' − kS·sign(x')`` with stiction, simulated exactly by
:func:`derivreg.simulate.motor` (fixed seed): quasistatic ramps (0.25 V/s, 8 s) and dynamic
steps (±4 V, 3 rows at 0 V first, 1 s of extra steady state) in both directions, 5-ms samples,
position measured with encoder-like noise (SD 2e-4 rot), velocity with noise (SD 0.01 rot/s).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from derivreg.datasets import update_checksums
from derivreg.simulate import motor

HERE = Path(__file__).resolve().parent
GAINS = {"kS": 0.35, "kV": 1.6, "kA": 0.25}
SETTINGS = {
    "dt": 0.005,
    "ramp": 0.25,
    "step": 4.0,
    "quasistatic_duration": 8.0,
    "dynamic_duration": 1.0,
    "steady_state": 1.0,
    "tau": 2e-4,
    "tau_velocity": 0.01,
    "leading_zeros": 3,
    "seed": 20261125,
}


def build() -> pd.DataFrame:
    """The log as a DataFrame (columns test, t, u, x, v, x_true, v_true, a_true)."""
    return motor(GAINS["kS"], GAINS["kV"], GAINS["kA"], **SETTINGS)


def to_csv_text(df: pd.DataFrame) -> str:
    """The exact text written (12 significant digits keep the file small and exact enough)."""
    return df.to_csv(index=False, float_format="%.12g", lineterminator="\n")


def main(out: Path = HERE) -> None:
    (Path(out) / "motor_sysid.csv").write_text(to_csv_text(build()), encoding="utf-8")
    update_checksums(Path(out))


if __name__ == "__main__":
    main()
