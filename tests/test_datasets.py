"""The shipped datasets: shapes, checksums, provenance, reference values, reproducibility."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import curve_fit

from derivreg import datasets
from derivreg.exceptions import DataError, DerivregError

EXPECTED = {
    "lynx_hare": (21, ["year", "hare", "lynx"]),
    "bod": (6, ["day", "demand"]),
    "theoph": (132, ["subject", "weight", "dose", "time", "conc"]),
    "gas_furnace": (296, ["time", "gas_rate", "co2"]),
    "uspop": (19, ["year", "population"]),
    "motor_sysid": (4000, ["test", "t", "u", "x", "v", "x_true", "v_true", "a_true"]),
    "cooling_panel": (15000, ["unit", "t", "u", "x"]),
}
DATA = datasets.data_dir()


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_derivreg_{name}", DATA / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_list_names_every_dataset() -> None:
    table = datasets.list()
    assert isinstance(table, pd.DataFrame)
    assert sorted(table.index) == sorted(EXPECTED)
    assert {"title", "kind", "rows", "time", "segment", "description"} <= set(table.columns)
    assert table.loc["motor_sysid", "kind"] == "simulated"
    assert table.loc["theoph", "segment"] == "subject"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_dataset_loads_with_documented_shape_and_attrs(name: str) -> None:
    df = datasets.load(name)
    rows, columns = EXPECTED[name]
    assert df.shape == (rows, len(columns))
    assert list(df.columns) == columns
    meta = datasets.registry()[name]
    digest = hashlib.sha256((DATA / meta["file"]).read_bytes()).hexdigest()
    assert digest == meta["sha256"]
    assert df.attrs["source"] and df.attrs["description"] and df.attrs["reference"]
    assert set(df.attrs["units"]) == set(columns)
    assert df.attrs["time"] in df.columns
    time = df[df.attrs["time"]]
    assert pd.api.types.is_numeric_dtype(time) and time.notna().all()
    seg = df.attrs["segment"]
    groups = [df] if seg is None else [g for _, g in df.groupby(seg, sort=False)]
    for g in groups:  # strictly increasing time within each segment
        assert np.all(np.diff(g[df.attrs["time"]].to_numpy()) > 0)
    numeric = df.drop(columns=["test"], errors="ignore")
    assert np.isfinite(numeric.to_numpy(dtype=float)).all()


def test_unknown_name_lists_the_available_ones() -> None:
    with pytest.raises(DerivregError, match=r"unknown dataset 'lynx'.*lynx_hare"):
        datasets.load("lynx")
    with pytest.raises(KeyError):
        datasets.load("lynx")


def test_modified_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for f in DATA.iterdir():
        if f.is_file():
            shutil.copy(f, tmp_path / f.name)
    monkeypatch.setattr(datasets, "data_dir", lambda: tmp_path)
    datasets.registry.cache_clear()
    try:
        pd.testing.assert_frame_equal(datasets.load("bod"), datasets.load("bod"))
        text = (tmp_path / "bod.csv").read_text().replace("8.3", "8.4")
        (tmp_path / "bod.csv").write_text(text)
        with pytest.raises(DataError, match="SHA-256"):
            datasets.load("bod")
        # the maintainers' tool records the new checksum; then the edited file loads
        sums = datasets.update_checksums(tmp_path)
        shipped = json.loads((DATA / "registry.json").read_text(encoding="utf-8"))
        assert sums["bod.csv"] != shipped["bod"]["sha256"] and len(sums) == 8
        assert datasets.load("bod")["demand"].iloc[0] == 8.4
        # CRLF line endings (git autocrlf checkouts) are not a modification
        crlf = (tmp_path / "uspop.csv").read_bytes().replace(b"\n", b"\r\n")
        (tmp_path / "uspop.csv").write_bytes(crlf)
        assert datasets.load("uspop").shape == (19, 2)
    finally:
        datasets.registry.cache_clear()


def test_readme_documents_every_dataset_and_source() -> None:
    readme = (DATA / "README.md").read_text(encoding="utf-8")
    for name, meta in datasets.registry().items():
        assert f"## `{name}`" in readme
        for column in meta["columns"]:
            assert f"`{column}`" in readme
    for cite in ("Hewitt", "Bates, D. M. and Watts", "Boeckmann", "Box, G. E. P.", "McNeil"):
        assert cite in readme
        assert any(cite in m["source"] for m in datasets.registry().values())


def test_bod_reference_fit_is_reproduced() -> None:
    df = datasets.load("bod")
    ref = df.attrs["reference"]
    p, cov = curve_fit(
        lambda t, L, k: L * (1 - np.exp(-k * t)), df["day"], df["demand"], p0=(20.0, 0.5)
    )
    np.testing.assert_allclose(p, [ref["L"], ref["k"]], rtol=2e-4)
    np.testing.assert_allclose(np.sqrt(np.diag(cov)), [ref["L_se"], ref["k_se"]], rtol=5e-3)


def test_theoph_subject_1_reference_fit_is_reproduced() -> None:
    df = datasets.load("theoph")
    ref = df.attrs["reference"]
    s1 = df[df["subject"] == 1]
    dose = s1["dose"].iloc[0]

    def sfol(t: np.ndarray, lke: float, lka: float, lcl: float) -> np.ndarray:
        ke, ka = np.exp(lke), np.exp(lka)
        return dose * np.exp(lke + lka - lcl) * (np.exp(-ke * t) - np.exp(-ka * t)) / (ka - ke)

    p, cov = curve_fit(sfol, s1["time"], s1["conc"], p0=(-2.5, 0.5, -3.0))
    np.testing.assert_allclose(p, [ref["lKe"], ref["lKa"], ref["lCl"]], atol=2e-4)
    se = np.sqrt(np.diag(cov))
    np.testing.assert_allclose(se, [ref["lKe_se"], ref["lKa_se"], ref["lCl_se"]], rtol=1e-2)


def test_gas_furnace_reference_means_and_sampling() -> None:
    df = datasets.load("gas_furnace")
    ref = df.attrs["reference"]
    assert df["gas_rate"].mean() == pytest.approx(ref["mean_gas_rate"], abs=1e-5)
    assert df["co2"].mean() == pytest.approx(ref["mean_co2"], abs=1e-5)
    assert np.all(np.diff(df["time"]) == 9.0)
    # CO2 falls when gas rate rises, with the largest cross-correlation a few samples later
    u = df["gas_rate"].to_numpy() - df["gas_rate"].mean()
    y = df["co2"].to_numpy() - df["co2"].mean()
    cc = [np.dot(u[: u.size - k], y[k:]) for k in range(10)]
    assert int(np.argmin(cc)) >= ref["dead_time_samples"]


def test_motor_dataset_truth_and_physics() -> None:
    df = datasets.load("motor_sysid")
    g = df.attrs["gains"]
    kS, kV, kA = g["kS"], g["kV"], g["kA"]
    assert df.attrs["truth"] == pytest.approx(
        {"d(x)": -kV / kA, "u": 1 / kA, "sign(d(x))": -kS / kA}
    )
    ff = df[df["test"] == "fast-forward"]
    t_on = ff["t"].to_numpy()[ff["u"].to_numpy() > 0][0]
    v_end = (4.0 - kS) / kV * -np.expm1(-kV / kA * (ff["t"].iloc[-1] - t_on))
    assert ff["v_true"].iloc[-1] == pytest.approx(v_end, rel=1e-10)
    assert v_end == pytest.approx((4.0 - kS) / kV, rel=1e-5)  # at its terminal velocity
    slow = df[df["test"] == "slow-forward"]
    assert (slow.loc[slow["u"].abs() <= kS, "v_true"] == 0).all()  # stiction
    moving = df["v_true"] != 0
    tr = df.attrs["truth"]
    rel = tr["d(x)"] * df["v_true"] + tr["u"] * df["u"] + tr["sign(d(x))"] * np.sign(df["v_true"])
    np.testing.assert_allclose(df.loc[moving, "a_true"], rel[moving], rtol=1e-9, atol=1e-9)
    assert 1e-4 < (df["x"] - df["x_true"]).std() < 3e-4


def test_motor_csv_regenerates_identically() -> None:
    mod = _script("make_motor")
    assert mod.to_csv_text(mod.build()) == (DATA / "motor_sysid.csv").read_text(encoding="utf-8")
    assert (DATA / "motor_sysid.csv").stat().st_size < 1_000_000


def test_cooling_panel_regenerates_identically_and_truth_matches() -> None:
    mod = _script("make_cooling")
    panel, truth = mod.build()
    assert mod.to_csv_text(panel) == (DATA / "cooling_panel.csv").read_text(encoding="utf-8")
    text = (DATA / "cooling_panel_truth.csv").read_text(encoding="utf-8")
    assert mod.to_csv_text(truth) == text
    attrs_truth = datasets.load("cooling_panel").attrs["truth"]
    assert sorted(attrs_truth) == list(range(1, 51))
    a = np.array([attrs_truth[u]["x"] for u in attrs_truth])
    c = np.array([attrs_truth[u]["Intercept"] for u in attrs_truth])
    assert np.all((a <= -0.05) & (a >= -0.25))
    assert np.all((-c / a >= 15) & (-c / a <= 25))  # ambient temperature = stationary point


def test_real_csvs_regenerate_from_shared_sources(shared_data: Path) -> None:
    mod = _script("make_real")
    for name, df in mod.build(shared_data).items():
        assert mod.to_csv_text(df) == (DATA / f"{name}.csv").read_text(encoding="utf-8"), name
