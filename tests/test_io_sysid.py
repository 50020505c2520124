"""Tests of dr.io.read_sysid: legacy WPILib SysId JSON logs -> tidy DataFrame."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import derivreg as dr
from derivreg.exceptions import DataError, DerivregError, MethodNotAvailableError
from derivreg.io.sysid import SysIdLogError

TESTS = ("slow-forward", "slow-backward", "fast-forward", "fast-backward")


def make_doc(test_type: str, n: int = 20, upr: float = 2.0, units: str = "Meters") -> dict:
    """A small, well-formed legacy SysId document with distinct numbers in every column."""
    width = 9 if test_type.startswith("Drivetrain") else 4
    doc: dict[str, Any] = {
        "sysid": True,
        "test": test_type,
        "units": units,
        "unitsPerRotation": upr,
    }
    for j, test in enumerate(TESTS):
        t = 50.0 + 10 * j + 0.005 * np.arange(n)
        cols = [t] + [(c + 1) * (j + 1) * 0.01 * np.arange(n) for c in range(width - 1)]
        doc[test] = np.column_stack(cols).tolist()
    return doc


def write(path: Path, doc: Any) -> Path:
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(
    ("test_type", "mechanism"),
    [("Simple", "simple"), ("Elevator", "elevator"), ("Arm", "arm")],
)
def test_single_mechanism_layout_and_scaling(tmp_path, test_type, mechanism):
    doc = make_doc(test_type, n=20, upr=2 * math.pi, units="Radians")
    log = dr.io.read_sysid(write(tmp_path / "log.json", doc))
    assert list(log.columns) == ["test", "time", "voltage", "position", "velocity"]
    assert len(log) == 4 * 20
    assert log.attrs["mechanism"] == mechanism
    assert log.attrs["units"] == "Radians"
    assert log.attrs["unitsPerRotation"] == pytest.approx(2 * math.pi)
    assert log.attrs["source"].endswith("log.json")
    for test in TESTS:
        rows = np.asarray(doc[test])
        part = log[log["test"] == test]
        np.testing.assert_array_equal(part["time"], rows[:, 0])
        np.testing.assert_array_equal(part["voltage"], rows[:, 1])  # voltage not scaled
        np.testing.assert_allclose(part["position"], rows[:, 2] * 2 * math.pi)
        np.testing.assert_allclose(part["velocity"], rows[:, 3] * 2 * math.pi)
    # tests appear in SysId's order, each a contiguous block
    assert list(pd.unique(log["test"])) == list(TESTS)


@pytest.mark.parametrize(
    ("test_type", "mechanism"),
    [("Drivetrain", "drivetrain"), ("Drivetrain (Angular)", "drivetrain-angular")],
)
def test_drivetrain_one_segment_per_test_and_side(tmp_path, test_type, mechanism):
    doc = make_doc(test_type, n=15, upr=0.5)
    log = dr.io.read_sysid(write(tmp_path / "dt.json", doc))
    assert log.attrs["mechanism"] == mechanism
    assert {"test", "side", "time", "voltage", "position", "velocity"} <= set(log.columns)
    assert log.groupby(["test", "side"]).size().to_dict() == {
        (t, s): 15 for t in TESTS for s in ("left", "right")
    }
    for test in TESTS:
        rows = np.asarray(doc[test])
        for side, (iv, ip, iw) in (("left", (1, 3, 5)), ("right", (2, 4, 6))):
            part = log[(log["test"] == test) & (log["side"] == side)]
            np.testing.assert_array_equal(part["voltage"], rows[:, iv])
            np.testing.assert_allclose(part["position"], rows[:, ip] * 0.5)
            np.testing.assert_allclose(part["velocity"], rows[:, iw] * 0.5)
            np.testing.assert_array_equal(part["angle"], rows[:, 7])  # gyro: not scaled
            np.testing.assert_array_equal(part["angular_rate"], rows[:, 8])


def test_negative_zero_velocity_is_kept(tmp_path):
    """SysId's copysign(V, v) depends on the sign of a zero velocity: the reader must keep it."""
    doc = make_doc("Simple", n=10)
    doc["slow-backward"][0][3] = -0.0
    log = dr.io.read_sysid(write(tmp_path / "z.json", doc))
    first = log[log["test"] == "slow-backward"]["velocity"].iloc[0]
    assert first == 0.0 and math.copysign(1.0, first) == -1.0


def test_shared_log_team581(shared_data):
    """Team 581's 2022 intake flywheel (Simple, radians): repository team581/frc-2022-rapid-react,
    file sysid_data/compbot/spu_data.json (the team's measurements)."""
    path = shared_data / "sysid" / "team581_2022_spu_simple.json"
    raw = json.loads(path.read_text())
    log = dr.io.read_sysid(path)
    assert log.attrs["mechanism"] == "simple"
    assert log.attrs["units"] == "Radians"
    assert len(log) == sum(len(raw[t]) for t in TESTS)
    ff = np.asarray(raw["fast-forward"])
    part = log[log["test"] == "fast-forward"]
    np.testing.assert_allclose(part["velocity"], ff[:, 3] * raw["unitsPerRotation"])
    assert part["time"].is_monotonic_increasing


def test_shared_log_team8744(shared_data):
    """Team 8744's 2023 differential drivetrain: repository FRC-Team8744/ThomasCanTrack, file
    sysid_data/sysid_data20231028-160422.json (the team's measurements)."""
    path = shared_data / "sysid" / "team8744_2023_drivetrain.json"
    raw = json.loads(path.read_text())
    log = dr.io.read_sysid(str(path))
    assert log.attrs["mechanism"] == "drivetrain"
    sizes = log.groupby(["test", "side"]).size()
    for test in TESTS:
        assert sizes[(test, "left")] == sizes[(test, "right")] == len(raw[test])


# ------------------------------------------------------------------------------- bad files
def test_not_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("time,voltage\n0,1\n")
    with pytest.raises(SysIdLogError, match="not valid JSON"):
        dr.io.read_sysid(path)


def test_binary_garbage(tmp_path):
    path = tmp_path / "bad.bin"
    path.write_bytes(bytes(range(256)))
    with pytest.raises(SysIdLogError):
        dr.io.read_sysid(path)


def test_wpilog_is_recognised(tmp_path):
    path = tmp_path / "log.wpilog"
    path.write_bytes(b"WPILOG\x00\x01" + bytes(20))
    with pytest.raises(MethodNotAvailableError, match="WPILog"):
        dr.io.read_sysid(path)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.pop("sysid"), "'sysid' must be true"),
        (lambda d: d.update(sysid=False), "'sysid' must be true"),
        (lambda d: d.pop("fast-backward"), "lacks the keys"),
        (lambda d: d.pop("unitsPerRotation"), "lacks the keys"),
        (lambda d: d.update(test="Flywheel"), "unknown SysId test type"),
        (lambda d: d.update(unitsPerRotation="one"), "unitsPerRotation"),
        (lambda d: d.update({"slow-forward": []}), "has no rows"),
        (lambda d: d.update({"slow-forward": [[0.0, 1.0, 2.0]] * 3}), "4 numbers"),
        (lambda d: d.update({"fast-forward": [[0.0, 1, 2, 3], [0.0, 1, 2, 3]]}), "increasing"),
        (lambda d: d.update({"fast-forward": "rows"}), "list of rows"),
        (lambda d: d.update({"fast-forward": [[0.0, "a", 2, 3]]}), "numbers each"),
    ],
)
def test_malformed_logs_raise_clear_errors(tmp_path, mutate, match):
    doc = make_doc("Simple", n=5)
    mutate(doc)
    path = write(tmp_path / "m.json", doc)
    with pytest.raises(SysIdLogError, match=match) as info:
        dr.io.read_sysid(path)
    assert isinstance(info.value, DerivregError) and isinstance(info.value, DataError)


def test_json_that_is_not_an_object(tmp_path):
    with pytest.raises(SysIdLogError, match="JSON object"):
        dr.io.read_sysid(write(tmp_path / "list.json", [1, 2, 3]))


def test_drivetrain_rows_need_nine_columns(tmp_path):
    doc = make_doc("Simple", n=5)
    doc["test"] = "Drivetrain"
    with pytest.raises(SysIdLogError, match="9 numbers"):
        dr.io.read_sysid(write(tmp_path / "d.json", doc))


def test_missing_file():
    with pytest.raises(FileNotFoundError):
        dr.io.read_sysid("/nonexistent/sysid.json")
