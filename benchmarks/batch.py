"""Batch throughput (BENCHMARKS.md §3): fit_many on 10,000 series × 500 points.

System per series ``g``: ``dx = (a_g x + b_g u + c) dt + σ dW``, observed ``y = x + τ e``, with a
held (zero-order hold) square-wave input ``u`` (period about 2/|a_g|), simulated exactly. Every
series is fitted with ``d(x) ~ x + u`` by the two OLS forms:

* ``integral``: ``x(t) = c0 + θ_0 (t - t0) + θ_x ∫x + θ_u ∫u`` (Simpson for x, exact ∫u),
* ``gradient``: central differences of x regressed on ``[1, x, ū]`` (interior rows, ū the mean
  of the held input on both sides of the sample),

with the OLS covariance (``cov_type="nonrobust"``), and — on a subsample, since one fit takes tens
of milliseconds to seconds — with each form's default covariance (integral: feasible GLS;
gradient: automatic derivative + HAC) and with ``engine="fit"`` (derivreg.fit per group).

Reported: wall time, series per minute, and the ratio to a bare loop of ``numpy.linalg.lstsq``
over the same designs (built beforehand, not timed), in the same process on the same data.

Run ``python benchmarks/batch.py`` (full) or ``--quick`` (fewer series, for ``make bench``).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.integrate import cumulative_simpson

sys.path.insert(0, str(Path(__file__).resolve().parent))
try:
    from _common import header, markdown_table, write_results
except ImportError:  # pragma: no cover - minimal stand-ins when the shared helpers are absent
    import datetime as _dt
    import os
    import platform

    def header(title: str, packages: Any, argv: Any = None) -> str:
        now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        return (
            f"# {title}\n\n- date: {now}\n- machine: {os.cpu_count()} cores, "
            f"{platform.processor()}, Python {platform.python_version()}\n"
        )

    def markdown_table(rows: list[dict[str, Any]], columns: Any = None) -> str:
        cols = list(columns or rows[0])
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
        return "\n".join(lines)

    def write_results(name: str, text: str) -> Path:
        path = Path(__file__).resolve().parent / "results" / f"{name}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path


from derivreg.batch import fit_many

FORMULA = "d(x) ~ x + u"
DT = 0.02
SIGMA, TAU = 0.2, 0.01
PACKAGES = ["derivreg", "numpy", "scipy", "pandas", "dask", "distributed", "threadpoolctl"]


def simulate_panel(
    n_series: int, n_points: int, seed: int = 20261125
) -> tuple[pd.DataFrame, np.ndarray]:
    """Long panel (unit, t, x, u) and the true ``a_g``: exact zero-order-hold simulation."""
    rng = np.random.default_rng(seed)
    a = -rng.uniform(0.5, 3.0, n_series)
    b = rng.uniform(0.5, 2.0, n_series)
    c = 0.5
    # held square wave, period 2/|a| × U(0.5, 1.5), random phase: every series is excited
    period = 2.0 / -a * rng.uniform(0.5, 1.5, n_series)
    phase = rng.uniform(0.0, 1.0, n_series)
    t = np.arange(n_points) * DT
    u = np.where(((t[None, :] / period[:, None] + phase[:, None]) % 1.0) < 0.5, 1.0, -1.0)
    phi = np.exp(a * DT)
    i0 = (phi - 1.0) / a
    sd = SIGMA * np.sqrt((phi**2 - 1.0) / (2.0 * a))
    x = np.empty((n_series, n_points))
    x[:, 0] = -(b * u[:, 0] + c) / a
    w = rng.standard_normal((n_series, n_points))
    for j in range(n_points - 1):
        x[:, j + 1] = phi * x[:, j] + (b * u[:, j] + c) * i0 + sd * w[:, j]
    y = x + TAU * rng.standard_normal(x.shape)
    panel = pd.DataFrame(
        {
            "unit": np.repeat(np.arange(n_series), n_points),
            "t": np.tile(t, n_series),
            "x": y.ravel(),
            "u": u.ravel(),
        }
    )
    return panel, a


def designs(panel: pd.DataFrame, n_series: int, n_points: int, form: str):
    """The per-series least-squares problems (X, y) that fit_many solves, built with numpy."""
    t = panel["t"].to_numpy().reshape(n_series, n_points)
    x = panel["x"].to_numpy().reshape(n_series, n_points)
    u = panel["u"].to_numpy().reshape(n_series, n_points)
    if form == "integral":
        ix = cumulative_simpson(x, dx=DT, axis=1, initial=0.0)  # the form's default rule
        iu = np.concatenate([np.zeros((n_series, 1)), np.cumsum(u[:, :-1] * DT, axis=1)], axis=1)
        X = np.stack([t - t[:, :1], ix, iu, np.ones_like(t)], axis=2)
        return X, x
    dx = (x[:, 2:] - x[:, :-2]) / (2 * DT)
    held = 0.5 * (u[:, 1:-1] + u[:, :-2])  # a held input as the central difference sees it
    X = np.stack([np.ones_like(dx), x[:, 1:-1], held], axis=2)
    return X, dx


def _default_label(form: str) -> str:
    """The form's defaults, as the model class states them (they may change)."""
    from derivreg.api import get_model_class

    cls = get_model_class(form)
    text = f"defaults: cov_type={cls.default_cov_type!r}"
    if form == "gradient":
        text += f", derivative={cls.option_defaults.get('derivative')!r}"
    return text


def bare_lstsq(X: np.ndarray, y: np.ndarray) -> float:
    """Seconds for a plain loop of numpy.linalg.lstsq over the stacked problems."""
    t0 = time.perf_counter()
    for g in range(X.shape[0]):
        np.linalg.lstsq(X[g], y[g], rcond=None)
    return time.perf_counter() - t0


def run(panel: pd.DataFrame, form: str, backend: str, client: Any = None, **options: Any):
    kwargs = dict(options)
    if form == "gradient":
        kwargs.setdefault("derivative", "difference")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        table = fit_many(
            panel,
            FORMULA,
            by="unit",
            method=form,
            time="t",
            input_hold="zoh",
            backend=backend,
            client=client,
            **kwargs,
        )
        seconds = time.perf_counter() - t0
    return seconds, table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer series (make bench)")
    parser.add_argument("--no-dask", action="store_true", help="skip the dask backend")
    args = parser.parse_args(argv)
    n_series = 2_000 if args.quick else 10_000
    n_points = 500
    n_fit = 100 if args.quick else 400  # subsample for derivreg.fit per group
    n_default = 10 if args.quick else 40  # subsample for the forms' default covariances
    repeats = 3

    panel, true_a = simulate_panel(n_series, n_points)
    truth_check = {}
    rows: list[dict[str, Any]] = []
    client = cluster = None
    backends = ["serial", "process"]
    if not args.no_dask:
        try:
            from distributed import Client, LocalCluster

            cluster = LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
            )
            client = Client(cluster)
            backends.append("dask")
        except ImportError:
            print("dask.distributed not installed: skipping the dask backend")

    def record(form, label, backend, n, seconds, lstsq_seconds, ratio=None):
        rows.append(
            {
                "form": form,
                "fit": label,
                "backend": backend,
                "series": n,
                "seconds": round(seconds, 3),
                "series/min": round(n / seconds * 60),
                "ratio to lstsq loop": round(
                    seconds / lstsq_seconds if ratio is None else ratio, 2
                ),
            }
        )
        print(rows[-1], flush=True)

    for form in ("integral", "gradient"):
        X, y = designs(panel, n_series, n_points, form)
        run(panel.iloc[: 20 * n_points], form, "serial", client, cov_type="nonrobust")  # warm-up
        # interleave: each repeat times the bare loop and every backend back to back, so that
        # the ratios hold on a machine whose load changes
        times: dict[str, list[float]] = {"lstsq": [], **{b: [] for b in backends}}
        reference = None
        for _ in range(repeats):
            times["lstsq"].append(bare_lstsq(X, y))
            for backend in backends:
                seconds, table = run(panel, form, backend, client, cov_type="nonrobust")
                times[backend].append(seconds)
                if reference is None:
                    reference = table
                else:
                    pd.testing.assert_frame_equal(table, reference, check_exact=True)
        ok = reference["status"] == "ok"
        rows_x = reference[ok & (reference["term"] == "x")]
        err = rows_x["estimate"].to_numpy() - true_a[rows_x["unit"].to_numpy()]
        truth_check[form] = (len(rows_x), float(np.median(err)))
        ratios = {b: np.median(np.divide(times[b], times["lstsq"])) for b in backends}
        lstsq_s = float(np.median(times["lstsq"]))
        rows.append(
            {
                "form": form,
                "fit": "bare numpy.linalg.lstsq loop",
                "backend": "-",
                "series": n_series,
                "seconds": round(lstsq_s, 3),
                "series/min": round(n_series / lstsq_s * 60),
                "ratio to lstsq loop": 1.0,
            }
        )
        print(rows[-1], flush=True)
        for backend in backends:
            median = float(np.median(times[backend]))
            label = "OLS cov, engine=auto (vectorised)"
            record(form, label, backend, n_series, median, lstsq_s, ratio=float(ratios[backend]))
        # derivreg.fit per group: subsample, scaled to the same per-series lstsq time
        sub = panel[panel["unit"] < n_fit]
        per_series_lstsq = lstsq_s / n_series
        seconds, table = run(sub, form, "process", cov_type="nonrobust", engine="fit")
        fast = reference[reference["unit"] < n_fit].reset_index(drop=True)
        cols = ["estimate", "se", "lower", "upper"]
        np.testing.assert_allclose(table[cols], fast[cols], rtol=1e-8)
        record(form, "OLS cov, engine=fit (dr.fit per group)", "process", n_fit, seconds,
               per_series_lstsq * n_fit)  # fmt: skip
        sub = panel[panel["unit"] < n_default]
        seconds, table = run(sub, form, "process")
        label = _default_label(form)
        failed = int((table["status"] == "error").sum())
        record(form, label + (f", {failed} failed" if failed else ""), "process", n_default,
               seconds, per_series_lstsq * n_default)  # fmt: skip

    if client is not None:
        client.close()
        cluster.close()

    columns = ["form", "fit", "backend", "series", "seconds", "series/min", "ratio to lstsq loop"]
    table_md = markdown_table(rows, columns)
    print()
    print(table_md)
    notes = [
        "",
        f"{n_series} series × {n_points} points (Δt = {DT}, σ = {SIGMA}, τ = {TAU}, held "
        "square-wave input); formula `d(x) ~ x + u`, `input_hold='zoh'`; timings are medians of "
        f"{repeats} run(s) (ratios: median of the per-repeat ratios, the bare loop timed "
        "right before each repeat), fit_many from the long DataFrame to the tidy table (grouping, "
        "chunking, worker start-up included; a dask cluster of 2 worker processes is started "
        "beforehand and not timed). The ratio compares with a loop of `numpy.linalg.lstsq` "
        "over the same designs, built beforehand (per series for the subsample rows).",
        "",
        "Every backend gave the identical table (checked with `assert_frame_equal`, exact); "
        "`engine='fit'` (derivreg.fit per group) gave the same estimates, SEs and intervals to "
        "rtol 1e-8 on its subsample.",
        "",
        "Speed is the point here, but the estimates are real: median error of the coefficient "
        "of x (truth a_g ~ U(-3, -0.5)) with the OLS covariance: "
        + "; ".join(f"{f}: {m:+.3f} over {n} series" for f, (n, m) in truth_check.items())
        + " — both OLS forms are biased toward zero in this regime (process noise, spans "
        "|a|T of 5 to 30); coefficient recovery is the subject of benchmarks/recovery.py.",
        "",
    ]
    text = (
        header("Batch throughput: fit_many", PACKAGES) + "\n" + table_md + "\n" + "\n".join(notes)
    )
    path = write_results("batch", text)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
