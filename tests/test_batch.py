"""fit_many: one relation per group, identical tables from every backend, failures isolated."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pandas as pd
import pytest

import derivreg as dr
from derivreg import batch
from derivreg.batch import RESULT_COLUMNS, fit_many
from derivreg.exceptions import (
    ColumnNotFoundError,
    DataError,
    FormulaError,
    MethodNotAvailableError,
)
from derivreg.simulate import first_order

FORMULA = "d(x) ~ x + u"
# Gradient form on central differences: available without tuning, a few ms per group.
OPTS = {"method": "gradient", "derivative": "difference", "time": "t"}


def make_panel(n_groups: int, n: int, *, seed: int = 0, dt: float = 0.05, sigma: float = 0.1):
    """Panel of first-order systems dx = (a_g x + b_g u + c) dt + σ dW, one per unit.

    Each unit has its own ``a_g`` and ``b_g`` (in ``attrs["truth"]``) so that a mix-up of groups
    would show in the estimates.
    """
    rng = np.random.default_rng(seed)
    frames, truth = [], {}
    for g in range(n_groups):
        a = -float(rng.uniform(0.5, 3.0))
        b = float(rng.uniform(0.5, 2.0))
        sim = first_order(
            a,
            b,
            0.5,
            n=n,
            dt=dt,
            u="multisine",
            input_hold="linear",
            sigma=sigma,
            seed=seed * 100_003 + g,
        )
        unit = f"u{g:04d}"
        truth[unit] = {"x": a, "u": b, "Intercept": 0.5}
        frames.append(sim.reset_index().drop(columns="x_true").assign(unit=unit))
    panel = pd.concat(frames, ignore_index=True)[["unit", "t", "x", "u"]]
    panel.attrs["truth"] = truth
    return panel


@pytest.fixture(scope="module")
def panel() -> pd.DataFrame:
    return make_panel(24, 120, seed=1)


def _quiet_fit_many(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit_many(*args, **kwargs)


def test_columns_and_one_row_per_group_and_term(panel):
    table = _quiet_fit_many(panel, FORMULA, by="unit", backend="serial", **OPTS)
    assert list(table.columns) == ["unit", *RESULT_COLUMNS]
    assert len(table) == 24 * 3
    assert (table["status"] == "ok").all()
    assert table["error"].isna().all()
    counts = table.groupby("unit")["term"].apply(list)
    assert all(terms == ["Intercept", "x", "u"] for terms in counts)
    assert (table["nobs"] > 100).all()
    assert (table["method"] == "gradient").all()
    assert (table["lower"] < table["estimate"]).all() and (table["estimate"] < table["upper"]).all()


def test_each_group_gets_its_own_fit(panel):
    """Rows carry the right group: every unit's estimates equal dr.fit on that unit alone."""
    table = _quiet_fit_many(panel, FORMULA, by="unit", backend="serial", **OPTS)
    for unit, rows in table.groupby("unit", sort=False):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            single = dr.fit(FORMULA, panel[panel["unit"] == unit], **OPTS).to_frame()
        np.testing.assert_array_equal(rows["term"].to_numpy(dtype=object), single["term"])
        np.testing.assert_allclose(rows["estimate"], single["estimate"], rtol=1e-12)
        np.testing.assert_allclose(rows["se"], single["se"], rtol=1e-12)
        np.testing.assert_allclose(rows["upper"], single["upper"], rtol=1e-12)


def test_recovers_each_groups_coefficients():
    """Noise-free, finely sampled units: every unit's own a_g, b_g is recovered."""
    panel = make_panel(6, 400, seed=2, dt=0.01, sigma=0.0)
    table = _quiet_fit_many(panel, FORMULA, by="unit", backend="serial", **OPTS)
    est = table.pivot(index="unit", columns="term", values="estimate")
    truth = pd.DataFrame(panel.attrs["truth"]).T
    np.testing.assert_allclose(est["x"], truth.loc[est.index, "x"], rtol=0.02)
    np.testing.assert_allclose(est["u"], truth.loc[est.index, "u"], rtol=0.02)


def test_500_groups_with_three_broken(monkeypatch):
    monkeypatch.setattr(batch, "_VECTOR_POOL_ROWS", 0)  # worker processes, as for big panels
    panel = make_panel(500, 24, seed=3, dt=0.1)
    panel.loc[panel["unit"] == "u0010", "x"] = np.nan  # all NaN
    panel = panel[~((panel["unit"] == "u0020") & (panel["t"] > 0.15))]  # two points
    panel.loc[panel["unit"] == "u0030", ["x", "u"]] = 1.0  # constant
    seen = []
    table = _quiet_fit_many(
        panel,
        FORMULA,
        by="unit",
        backend="process",
        n_jobs=2,
        progress=lambda done, failed, total: seen.append((done, failed, total)),
        method="integral",
        cov_type="nonrobust",
        time="t",
    )
    ok = table[table["status"] == "ok"]
    bad = table[table["status"] == "error"].set_index("unit")
    assert len(ok) == 497 * 3
    assert ok["unit"].nunique() == 497
    assert sorted(bad.index) == ["u0010", "u0020", "u0030"]
    assert bad["term"].isna().all() and bad["estimate"].isna().all()
    assert "NaN" in bad.loc["u0010", "error"]
    assert "TooFewPointsError" in bad.loc["u0020", "error"]
    assert "IdentificationError" in bad.loc["u0030", "error"]  # constant: not identified
    assert seen[-1] == (500, 3, 500)
    assert [s[0] for s in seen] == sorted(s[0] for s in seen)


def test_formula_errors_raise_once_up_front(panel):
    calls = []
    with pytest.raises(FormulaError):
        fit_many(panel, "x + u", by="unit", backend="serial", progress=lambda *a: calls.append(a))
    assert calls == []
    with pytest.raises(ColumnNotFoundError, match="nope"):
        fit_many(panel, "d(x) ~ x + nope", by="unit", backend="serial")
    with pytest.raises(ColumnNotFoundError, match="grp"):
        fit_many(panel, FORMULA, by="grp", backend="serial")
    with pytest.raises(DataError, match="backend"):
        fit_many(panel, FORMULA, by="unit", backend="threads")


def test_order_is_sorted_keys_whatever_the_row_order(panel):
    """Output order: groups sorted by key, independent of the order of the rows in df."""
    shuffled_units = panel["unit"].drop_duplicates().sample(frac=1.0, random_state=5)
    shuffled = pd.concat([panel[panel["unit"] == u] for u in shuffled_units], ignore_index=True)
    a = _quiet_fit_many(panel, FORMULA, by="unit", backend="serial", **OPTS)
    b = _quiet_fit_many(shuffled, FORMULA, by="unit", backend="serial", **OPTS)
    assert list(a["unit"].drop_duplicates()) == sorted(panel["unit"].unique())
    pd.testing.assert_frame_equal(a, b)


def test_several_keys_and_rows_interleaved(panel):
    """Two key columns; rows of different groups interleaved (time order kept within a group)."""
    two = panel.assign(site=np.where(panel["unit"] < "u0012", "north", "south"), n=panel["unit"])
    two = two.sort_values(["t", "unit"], kind="stable").drop(columns="unit")
    table = _quiet_fit_many(two, FORMULA, by=["site", "n"], backend="serial", **OPTS)
    assert list(table.columns[:2]) == ["site", "n"]
    keys = table[["site", "n"]].drop_duplicates()
    assert len(keys) == 24
    assert keys.equals(keys.sort_values(["site", "n"]))
    ref = _quiet_fit_many(panel, FORMULA, by="unit", backend="serial", **OPTS)
    np.testing.assert_allclose(table["estimate"], ref["estimate"], rtol=1e-12)


def test_process_backend_identical_to_serial(panel):
    serial = _quiet_fit_many(panel, FORMULA, by="unit", backend="serial", **OPTS)
    process = _quiet_fit_many(
        panel, FORMULA, by="unit", backend="process", n_jobs=2, chunk_size=5, **OPTS
    )
    pd.testing.assert_frame_equal(serial, process, check_exact=True)


def test_dask_local_cluster_identical_to_serial(panel):
    distributed = pytest.importorskip("distributed")
    serial = _quiet_fit_many(panel, FORMULA, by="unit", backend="serial", **OPTS)
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        via_client = _quiet_fit_many(
            panel, FORMULA, by="unit", backend="dask", client=client, chunk_size=4, **OPTS
        )
        via_address = _quiet_fit_many(
            panel, FORMULA, by="unit", backend="dask", scheduler=cluster.scheduler_address, **OPTS
        )
    pd.testing.assert_frame_equal(serial, via_client, check_exact=True)
    pd.testing.assert_frame_equal(serial, via_address, check_exact=True)


def test_dask_errors_are_clear(panel, monkeypatch):
    distributed = pytest.importorskip("distributed")
    try:
        distributed.default_client()
        pytest.skip("a default dask client exists in this session")
    except ValueError:
        pass
    with pytest.raises(DataError, match="scheduler="):
        fit_many(panel, FORMULA, by="unit", backend="dask", **OPTS)
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(MethodNotAvailableError, match=r"derivreg\[dask\]"):
        fit_many(panel, FORMULA, by="unit", backend="dask", **OPTS)


def test_warnings_are_recorded_per_group():
    """Each group's warnings land in its own rows (as dr.fit raises them), not on the console."""
    panel = make_panel(3, 200, seed=4, dt=0.1, sigma=0.0)
    rng = np.random.default_rng(0)
    noisy = panel["unit"] == "u0001"
    panel.loc[noisy, "x"] += rng.normal(0, 0.05, int(noisy.sum()))
    with warnings.catch_warnings(record=True) as leaked:
        warnings.simplefilter("always")
        table = fit_many(panel, FORMULA, by="unit", backend="serial", **OPTS)
    assert leaked == []
    recorded = table.groupby("unit")["warning"].agg(lambda w: w.iloc[0])
    assert recorded.notna().any()
    for unit, text in recorded.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dr.fit(FORMULA, panel[panel["unit"] == unit], **OPTS)
        expected = list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught))
        assert (None if pd.isna(text) else text) == ("; ".join(expected) or None)


def test_empty_frame_gives_empty_table(panel):
    table = fit_many(panel.iloc[:0], FORMULA, by="unit", backend="process", **OPTS)
    assert table.empty
    assert list(table.columns) == ["unit", *RESULT_COLUMNS]


def test_index_as_time_and_bad_options_up_front(panel):
    """time=None uses the index; an unknown method or option raises before any fit."""
    indexed = panel.set_index("t")
    opts = {k: v for k, v in OPTS.items() if k != "time"}
    a = _quiet_fit_many(indexed, FORMULA, by="unit", backend="serial", **opts)
    b = _quiet_fit_many(panel, FORMULA, by="unit", backend="serial", **OPTS)
    pd.testing.assert_frame_equal(a, b)
    with pytest.raises(DataError, match="wrong"):
        fit_many(panel, FORMULA, by="unit", backend="serial", method="gradient", wrong=1)
    with pytest.raises(DataError, match="unknown method"):
        fit_many(panel, FORMULA, by="unit", backend="serial", method="magic")


# ------------------------------------------------------------------ the vectorised engine

VECTOR_CASES = [
    {"method": "integral", "cov_type": "nonrobust"},
    {"method": "integral", "cov_type": "nonrobust", "input_hold": "zoh"},
    {"method": "gradient", "derivative": "difference", "cov_type": "nonrobust"},
    {
        "method": "gradient",
        "derivative": "difference",
        "cov_type": "nonrobust",
        "input_hold": "zoh",
    },
]


@pytest.fixture(scope="module")
def ragged_panel() -> pd.DataFrame:
    """Units of different lengths, one irregular grid, one all-NaN, one constant input."""
    base = make_panel(16, 140, seed=21, dt=0.1)
    units = sorted(base["unit"].unique())
    frames = [base[base["unit"] == u].iloc[: 90 + (7 * i) % 50] for i, u in enumerate(units)]
    panel = pd.concat(frames, ignore_index=True)
    rng = np.random.default_rng(3)
    jitter = panel["unit"] == "u0005"
    panel.loc[jitter, "t"] += rng.uniform(0.0, 0.05, int(jitter.sum()))
    panel.loc[panel["unit"] == "u0010", "x"] = np.nan
    panel.loc[panel["unit"] == "u0011", "u"] = 2.0
    return panel


@pytest.mark.parametrize("case", VECTOR_CASES, ids=lambda c: "-".join(map(str, c.values())))
def test_vectorized_engine_equals_fit_per_group(ragged_panel, case):
    opts = {"time": "t", "backend": "serial", **case}
    slow = _quiet_fit_many(ragged_panel, FORMULA, by="unit", engine="fit", **opts)
    fast = _quiet_fit_many(ragged_panel, FORMULA, by="unit", engine="vectorized", **opts)
    cols = ["estimate", "se", "lower", "upper"]
    np.testing.assert_allclose(fast[cols], slow[cols], rtol=1e-9)
    for col in ["unit", "term", "nobs", "method", "status", "error"]:
        pd.testing.assert_series_equal(fast[col], slow[col])
    assert set(fast.loc[fast["status"] == "error", "unit"]) == {"u0010", "u0011"}


def test_vectorized_engine_recovers_truth():
    """Integral form, noise-free finely sampled units: every unit's a_g, b_g is recovered."""
    panel = make_panel(8, 400, seed=22, dt=0.01, sigma=0.0)
    table = fit_many(
        panel, FORMULA, by="unit", method="integral", cov_type="nonrobust", time="t",
        backend="serial", engine="vectorized",
    )  # fmt: skip
    est = table.pivot(index="unit", columns="term", values="estimate")
    truth = pd.DataFrame(panel.attrs["truth"]).T.loc[est.index]
    np.testing.assert_allclose(est[["x", "u", "Intercept"]], truth[["x", "u", "Intercept"]],
                               rtol=1e-3)  # fmt: skip


def test_engine_choice_is_explicit(panel):
    with pytest.raises(MethodNotAvailableError, match="cov_type"):
        fit_many(panel, FORMULA, by="unit", method="integral", time="t", engine="vectorized")
    with pytest.raises(MethodNotAvailableError, match="segment"):
        fit_many(panel, FORMULA, by="unit", method="integral", time="t", segment="unit",
                 cov_type="nonrobust", engine="vectorized")  # fmt: skip
    with pytest.raises(MethodNotAvailableError, match="term"):
        fit_many(panel, "d(x) ~ x + np.log(u**2)", by="unit", method="integral", time="t",
                 cov_type="nonrobust", engine="vectorized")  # fmt: skip
    with pytest.raises(DataError, match="engine"):
        fit_many(panel, FORMULA, by="unit", engine="turbo")


def test_vectorized_backends_identical(ragged_panel, monkeypatch):
    monkeypatch.setattr(batch, "_VECTOR_POOL_ROWS", 0)  # use worker processes even for this
    opts = {"time": "t", "method": "integral", "cov_type": "nonrobust", "chunk_size": 3}
    serial = _quiet_fit_many(ragged_panel, FORMULA, by="unit", backend="serial", **opts)
    process = _quiet_fit_many(ragged_panel, FORMULA, by="unit", backend="process", n_jobs=2, **opts)
    pd.testing.assert_frame_equal(serial, process, check_exact=True)
