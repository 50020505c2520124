"""characterize on the motor cells of the recovery grid: bias, SE/SD, coverage and time per method.

The simulated logs are those of the recovery grid's motor section (``recovery._motor_log``:
``simulate.motor(kS=0.5, kV=2, kA=0.4, dt=0.02, tau=0.002, tau_velocity=0.02, sigma=0.2)``,
``steady_state`` = 0 s or 20 s per step test), seeds ``5000 + k``. Each log is characterised by
``dr.characterize(simulate.as_sysid_log(log), method=...)``; per method and gain: mean, bias,
SD, bias/SD, RMSE, mean SE / SD, 95% coverage (with its Monte-Carlo SE), median time per fit,
which fit ``auto`` reported, and how often an ExcitationWarning or BiasWarning fired.

Usage: ``python benchmarks/sysid_motor.py --reps 100 --methods auto,statespace --label after``;
writes ``benchmarks/results/sysid_motor_<label>.md``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import header, markdown_table, write_results  # noqa: E402
from recovery import MOTOR_GAINS, Z95, _motor_log  # noqa: E402

import derivreg as dr  # noqa: E402
from derivreg import simulate as sim  # noqa: E402
from derivreg.exceptions import BiasWarning, ExcitationWarning  # noqa: E402


def run(method: str, steady: float, reps: int) -> list[dict[str, Any]]:
    """Characterise ``reps`` logs with ``method``; one row per gain."""
    truth = np.array(list(MOTOR_GAINS.values()))
    est, se, secs, chosen, warned = [], [], [], Counter(), Counter()
    for k in range(reps):
        log = sim.as_sysid_log(_motor_log(5000 + k, steady))
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ch = dr.characterize(log, method=method)
        secs.append(time.perf_counter() - t0)
        est.append(ch.params[list(MOTOR_GAINS)].to_numpy(float))
        se.append(ch.bse[list(MOTOR_GAINS)].to_numpy(float))
        chosen[ch.method] += 1
        for cat in {w.category for w in caught}:
            if issubclass(cat, (ExcitationWarning, BiasWarning)):
                warned[cat.__name__] += 1
    E, S = np.array(est), np.array(se)
    rows = []
    for j, g in enumerate(MOTOR_GAINS):
        sd = float(np.std(E[:, j], ddof=1))
        bias = float(np.mean(E[:, j]) - truth[j])
        cover = float(np.mean(np.abs(E[:, j] - truth[j]) <= Z95 * S[:, j]))
        rows.append(
            {
                "steady_state": steady,
                "method": method,
                "gain": g,
                "truth": truth[j],
                "mean": float(np.mean(E[:, j])),
                "bias/SD": bias / sd,
                "SD": sd,
                "RMSE": float(np.sqrt(np.mean((E[:, j] - truth[j]) ** 2))),
                "SE/SD": float(np.mean(S[:, j])) / sd,
                "cover": cover,
                "cover MC SE": math.sqrt(cover * (1 - cover) / reps),
                "time_ms": 1000 * float(np.median(secs)),
                "reported": ", ".join(f"{m} {n}" for m, n in chosen.items()),
                "warned": ", ".join(f"{m} {n}" for m, n in warned.items()),
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--methods", default="auto,statespace,arimax")
    ap.add_argument("--steady", default="0,20")
    ap.add_argument("--label", default="run")
    args = ap.parse_args()
    rows = []
    for steady in (float(s) for s in args.steady.split(",")):
        for method in args.methods.split(","):
            rows += run(method, steady, args.reps)
            print(f"steady_state={steady:g} {method} done", flush=True)
    text = "\n".join(
        [
            header(
                f"characterize on the recovery grid's motor cells ({args.label})",
                ("derivreg", "numpy", "scipy"),
                sys.argv,
            ),
            "",
            f"{args.reps} logs per setting (seeds 5000+k, `recovery._motor_log`).",
            "",
            markdown_table(rows),
        ]
    )
    path = write_results(f"sysid_motor_{args.label}", text)
    print(path)


if __name__ == "__main__":
    main()
