"""The derivreg command line: fit, batch (incremental, resumable), demo, datasets, sysid."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import derivreg as dr
from derivreg.batch import fit_many, normalize_table
from derivreg.cli import app, main

sys.path.insert(0, str(Path(__file__).parent))
from test_batch import FORMULA, make_panel

runner = CliRunner()
GRADIENT = ["--method", "gradient", "--option", "derivative=difference", "--time", "t"]
OPTS = {"method": "gradient", "derivative": "difference", "time": "t"}


def invoke(*args: object):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def small_panel() -> pd.DataFrame:
    return make_panel(12, 80, seed=11)


@pytest.fixture
def panel_csv(tmp_path: Path, small_panel: pd.DataFrame) -> Path:
    path = tmp_path / "panel.csv"
    small_panel.to_csv(path, index=False)
    return path


def _reference(panel: pd.DataFrame) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit_many(panel, FORMULA, by="unit", backend="serial", **OPTS)


# ------------------------------------------------------------------ fit


def test_fit_prints_summary_and_writes_table(tmp_path, small_panel):
    one = small_panel[small_panel["unit"] == "u0003"].drop(columns="unit")
    src = tmp_path / "one.parquet"
    one.to_parquet(src, index=False)
    out = tmp_path / "coef.csv"
    res = invoke("fit", src, "--formula", FORMULA, *GRADIENT, "--out", out)
    assert res.exit_code == 0, res.output
    assert "gradient" in res.output and "Intercept" in res.output
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = dr.fit(FORMULA, one, **OPTS).to_frame()
    written = pd.read_csv(out)
    assert list(written["term"]) == list(expected["term"])
    np.testing.assert_allclose(written["estimate"], expected["estimate"], rtol=1e-10)
    np.testing.assert_allclose(written["se"], expected["se"], rtol=1e-10)


def test_fit_folder_reads_files_as_segments(tmp_path, small_panel):
    folder = tmp_path / "runs"
    folder.mkdir()
    parts = []
    for unit in ["u0001", "u0002"]:
        frame = small_panel[small_panel["unit"] == unit].drop(columns="unit")
        frame.to_csv(folder / f"{unit}.csv", index=False)
        parts.append(frame.assign(file=unit))
    out = tmp_path / "coef.parquet"
    res = invoke("fit", folder, "-f", FORMULA, *GRADIENT, "--out", out)
    assert res.exit_code == 0, res.output
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        both = pd.concat(parts, ignore_index=True)
        expected = dr.fit(FORMULA, both, segment="file", **OPTS).to_frame()
    np.testing.assert_allclose(pd.read_parquet(out)["estimate"], expected["estimate"], rtol=1e-10)


def test_fit_reports_bad_input_cleanly(tmp_path, panel_csv):
    res = invoke("fit", tmp_path / "missing.csv", "-f", FORMULA)
    assert res.exit_code == 2
    assert "no such file" in res.output
    res = invoke("fit", panel_csv, "-f", "x ~ u", *GRADIENT)
    assert res.exit_code == 2
    assert "error" in res.output


# ------------------------------------------------------------------ batch


def test_batch_parquet_equals_fit_many(tmp_path, panel_csv, small_panel):
    out = tmp_path / "res.parquet"
    res = invoke("batch", panel_csv, "-f", FORMULA, "--by", "unit", "--out", out, *GRADIENT,
                 "--backend", "serial", "--chunk-size", "5")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "12 groups: 12 ok, 0 failed" in res.output
    table = normalize_table(pd.read_parquet(out), ["unit"])
    # the CLI reads the panel back from CSV: pandas 2.2's default float parser may differ from
    # the in-memory values in the last bit, so compare to rounding error, not bit for bit
    pd.testing.assert_frame_equal(table, _reference(small_panel), check_exact=False, rtol=1e-12)
    assert not (tmp_path / "res.parquet.parts").exists()


def test_batch_vectorized_engine(tmp_path, panel_csv, small_panel):
    out = tmp_path / "res.parquet"
    common = ["batch", panel_csv, "-f", FORMULA, "--by", "unit", "--out", out, "--time", "t"]
    res = invoke(*common, "-m", "integral", "-o", "cov_type=nonrobust", "--engine", "vectorized")
    assert res.exit_code == 0, res.output
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = fit_many(small_panel, FORMULA, by="unit", method="integral", cov_type="nonrobust",
                       time="t", engine="fit", backend="serial")  # fmt: skip
    cols = ["estimate", "se", "lower", "upper"]
    np.testing.assert_allclose(pd.read_parquet(out)[cols], ref[cols], rtol=1e-9)
    res = invoke(*common, "-m", "integral", "--engine", "vectorized", "--overwrite")
    assert res.exit_code == 2 and "cov_type" in res.output


def test_batch_folder_to_csv_by_file(tmp_path, small_panel):
    folder = tmp_path / "units"
    folder.mkdir()
    for unit, frame in small_panel.groupby("unit"):
        frame.drop(columns="unit").to_parquet(folder / f"{unit}.parquet", index=False)
    out = tmp_path / "res.csv"
    res = invoke("batch", folder, "-f", FORMULA, "--by", "file", "--out", out, *GRADIENT)
    assert res.exit_code == 0, res.output
    table = pd.read_csv(out)
    ref = _reference(small_panel)
    assert list(table["file"]) == list(ref["unit"])
    np.testing.assert_allclose(table["estimate"], ref["estimate"], rtol=1e-10)


def test_batch_fail_on_error_and_messages(tmp_path, small_panel):
    broken = small_panel.copy()
    broken.loc[broken["unit"] == "u0004", "x"] = np.nan
    src = tmp_path / "broken.csv"
    broken.to_csv(src, index=False)
    args = ["batch", src, "-f", FORMULA, "--by", "unit", *GRADIENT, "--backend", "serial"]
    res = invoke(*args, "--out", tmp_path / "a.parquet")
    assert res.exit_code == 0, res.output
    assert "11 ok, 1 failed" in res.output
    res = invoke(*args, "--out", tmp_path / "b.parquet", "--fail-on-error")
    assert res.exit_code == 1
    table = pd.read_parquet(tmp_path / "b.parquet")
    bad = table[table["status"] == "error"]
    assert list(bad["unit"]) == ["u0004"] and "NaN" in bad["error"].iloc[0]


def test_batch_refuses_old_parts_and_checks_settings(tmp_path, panel_csv):
    out = tmp_path / "res.parquet"
    res = invoke("batch", panel_csv, "-f", "x ~ u", "--by", "unit", "--out", out)
    assert res.exit_code == 2 and "FormulaError" not in res.output and "~" in res.output
    assert not (tmp_path / "res.parquet.parts").exists()  # a bad formula leaves nothing behind
    args = ["batch", panel_csv, "-f", FORMULA, "--by", "unit", *GRADIENT, "--backend", "serial"]
    assert invoke(*args, "--out", out, "--keep-parts").exit_code == 0
    first = pd.read_parquet(out)
    res = invoke(*args, "--out", out)
    assert res.exit_code == 2 and "--resume" in res.output
    res = invoke("batch", panel_csv, "-f", "d(x) ~ x", "--by", "unit", *GRADIENT,
                 "--out", out, "--resume")  # fmt: skip
    assert res.exit_code == 2 and "formula" in res.output
    res = invoke(*args, "--out", out, "--resume")  # everything done: nothing refitted
    assert res.exit_code == 0, res.output
    assert "12 groups already written, 0 to fit" in res.output
    pd.testing.assert_frame_equal(pd.read_parquet(out), first)
    res = invoke(*args, "--out", out, "--overwrite")
    assert res.exit_code == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out), first)


def test_batch_killed_then_resumed_equals_uninterrupted(tmp_path):
    panel = make_panel(60, 24, seed=13, dt=0.1)
    panel.loc[panel["unit"] == "u0040", "x"] = np.nan  # a failed group survives the restart
    src = tmp_path / "panel.parquet"
    panel.to_parquet(src, index=False)
    out = tmp_path / "killed.parquet"
    manifest = tmp_path / "killed.parquet.parts" / "manifest.json"
    cmd = [sys.executable, "-m", "derivreg", "batch", str(src), "-f", FORMULA, "--by", "unit",
           *GRADIENT, "--backend", "serial", "--chunk-size", "1", "--no-progress",
           "--out", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    parts = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest.exists():
            try:
                parts = len(json.loads(manifest.read_text())["parts"])
            except (json.JSONDecodeError, KeyError):  # pragma: no cover - replaced atomically
                pytest.fail("the manifest was read half-written")
            if parts >= 3:
                break
        time.sleep(0.01)
    if proc.poll() is not None:
        pytest.fail(f"the batch run ended before it could be killed: {proc.stderr.read()!r}")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    written = json.loads(manifest.read_text())["parts"]
    assert 3 <= len(written) < 60

    res = invoke("batch", src, "-f", FORMULA, "--by", "unit", *GRADIENT, "--backend", "process",
                 "--n-jobs", "2", "--out", out, "--resume")  # fmt: skip
    assert res.exit_code == 0, res.output
    already = sum(p["groups"] for p in written)
    assert f"{already} groups already written, {60 - already} to fit" in res.output
    resumed = pd.read_parquet(out)

    full = tmp_path / "full.parquet"
    res = invoke("batch", src, "-f", FORMULA, "--by", "unit", *GRADIENT, "--backend", "serial",
                 "--out", full)  # fmt: skip
    assert res.exit_code == 0, res.output
    uninterrupted = pd.read_parquet(full)
    assert not resumed.duplicated(["unit", "term"]).any()
    assert resumed["unit"].nunique() == 60
    pd.testing.assert_frame_equal(resumed, uninterrupted, check_exact=True)


# ------------------------------------------------------------------ demo, datasets, sysid


def test_demo_prints_the_batch_table():
    res = invoke("demo")
    assert res.exit_code == 0, res.output
    assert "fit_many" in res.output
    assert "50 units fitted, 50 ok, 0 failed" in res.output
    assert "coverage" in res.output


def test_datasets_lists_and_describes():
    res = invoke("datasets")
    assert res.exit_code == 0, res.output
    for name in dr.datasets.list().index:
        assert name in res.output
    res = invoke("datasets", "cooling_panel")
    assert res.exit_code == 0, res.output
    assert f"{len(dr.datasets.load('cooling_panel'))} rows" in res.output
    res = invoke("datasets", "no_such_data")
    assert res.exit_code == 2 and "cooling_panel" in res.output


def test_sysid_table_beside_legacy_numbers(shared_data):
    log = shared_data / "sysid" / "team581_2022_spu_simple.json"
    res = invoke("sysid", log, "--method", "sysid")
    assert res.exit_code == 0, res.output
    for gain, value in {"kS": "0.019184", "kV": "0.17836", "kA": "0.002161"}.items():
        assert gain in res.output and value in res.output
    res = invoke("sysid", log)  # recommended method beside the SysId-compatible column
    assert res.exit_code == 0, res.output
    assert "SysId-compatible" in res.output or "not available" in res.output
    assert "0.17836" in res.output


def test_main_entry_point_and_python_m(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "batch" in capsys.readouterr().out
    done = subprocess.run(
        [sys.executable, "-m", "derivreg", "datasets"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "cooling_panel" in done.stdout
