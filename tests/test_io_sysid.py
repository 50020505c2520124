"""Tests of dr.io.read_sysid: legacy WPILib SysId JSON logs -> tidy DataFrame."""

from __future__ import annotations

import json
import math
import struct
import sys
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


def _record(entry: int, timestamp: int, payload: bytes) -> bytes:
    # WPILog record: header byte (4-byte entry id, 4-byte size, 8-byte timestamp), then fields
    return bytes([0x3 | 0x3 << 2 | 0x7 << 4]) + struct.pack("<IIQ", entry, len(payload),
                                                             timestamp) + payload  # fmt: skip


def write_wpilog(path: Path, entries: dict[int, tuple[str, str, str]], data: list) -> Path:
    """A minimal WPILog v1.0 file: start records for ``entries`` then ``(id, µs, value)``."""
    out = bytearray(b"WPILOG" + struct.pack("<HI", 0x0100, 0))
    for eid, strings in entries.items():
        payload = bytes([0]) + struct.pack("<I", eid)
        for text in strings:
            raw = text.encode()
            payload += struct.pack("<I", len(raw)) + raw
        out += _record(0, 0, payload)
    for eid, ts, value in data:
        kind = entries[eid][1]
        payload = struct.pack("<d", value) if kind == "double" else str(value).encode()
        out += _record(eid, int(ts), payload)
    path.write_bytes(bytes(out))
    return path


def sysid_wpilog(path: Path, motors: tuple[str, ...] = ("m",), routine: str = "shooter") -> dict:
    """A SysIdRoutine-style WPILog of a simulated motor (kS, kV, kA) = (0.5, 2.0, 0.3):
    state entry + voltage/position/velocity per motor, 5 ms loop, a 'none' state between tests."""
    from derivreg.simulate import motor

    sim = motor(0.5, 2.0, 0.3, dt=0.005, quasistatic_duration=6.0, tau_velocity=0.01, seed=2)
    entries = {1: (f"sysid-test-state-{routine}", "string", "")}
    for j, m in enumerate(motors):
        for k, (kind, unit) in enumerate(
            (("voltage", "Volts"), ("position", "Meters"), ("velocity", "Meters per Second"))
        ):
            entries[10 * (j + 1) + k] = (f"{kind}-{m}-{routine}", "double", unit)
    names = {
        "slow-forward": "quasistatic-forward",
        "slow-backward": "quasistatic-reverse",
        "fast-forward": "dynamic-forward",
        "fast-backward": "dynamic-reverse",
    }
    data, clock = [], 1_000_000
    for test, part in sim.groupby("test", sort=False):
        stamps = clock + np.round(part["t"].to_numpy() * 1e6).astype(int)
        data.append((1, stamps[0], names[test]))
        for ts, row in zip(stamps, part.itertuples(), strict=True):
            for j in range(len(motors)):
                data += [
                    (10 * (j + 1), ts, row.u),
                    (10 * (j + 1) + 1, ts, row.x),
                    (10 * (j + 1) + 2, ts, row.v),
                ]
        data.append((1, stamps[-1] + 5000, "none"))
        clock = stamps[-1] + 2_000_000
    write_wpilog(path, entries, data)
    return {"sim": sim}


def test_wpilog_without_robotpy_wpiutil_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wpiutil", None)
    monkeypatch.setitem(sys.modules, "wpiutil.log", None)
    path = tmp_path / "log.wpilog"
    path.write_bytes(b"WPILOG\x00\x01" + bytes(20))
    with pytest.raises(MethodNotAvailableError, match="robotpy-wpiutil"):
        dr.io.read_sysid(path)


def test_wpilog_sysid_routine_round_trip(tmp_path):
    """A SysIdRoutine WPILog (written here in the WPILog v1.0 format) reads into the same frame
    as a JSON log and characterises to the simulated gains."""
    pytest.importorskip("wpiutil.log")
    doc = sysid_wpilog(tmp_path / "r.wpilog")
    log = dr.io.read_sysid(tmp_path / "r.wpilog")
    assert log.attrs["format"] == "wpilog" and log.attrs["routine"] == "shooter"
    assert log.attrs["units"] == "Meters" and log.attrs["mechanism"] == "simple"
    assert list(pd.unique(log["test"])) == list(TESTS)
    sim = doc["sim"]
    for test in TESTS:
        part, ref = log[log["test"] == test], sim[sim["test"] == test]
        assert len(part) == len(ref)
        np.testing.assert_allclose(part["velocity"], ref["v"])
        np.testing.assert_allclose(part["time"] - part["time"].iloc[0], ref["t"], atol=1e-6)
    ch = dr.characterize(log, method="auto")
    np.testing.assert_allclose(ch.gains["estimate"], [0.5, 2.0, 0.3], rtol=0.05)


def test_wpilog_drivetrain_sides_and_ambiguity(tmp_path):
    pytest.importorskip("wpiutil.log")
    path = tmp_path / "d.wpilog"
    sysid_wpilog(path, motors=("drive-right", "drive-left"), routine="drive")
    log = dr.io.read_sysid(path, mechanism="Drivetrain")
    assert log.attrs["motors"] == ["drive-left", "drive-right"]
    ch = dr.characterize(path, mechanism="drivetrain", method="sysid")
    assert ch.mechanism == "drivetrain" and ch.info["nobs"] > 100
    assert set(log["side"]) == {"left", "right"}
    with pytest.raises(SysIdLogError, match="several motors"):
        dr.io.read_sysid(path)
    one = dr.io.read_sysid(path, motor="drive-left")
    assert "side" not in one.columns
    with pytest.raises(SysIdLogError, match="no SysId routine"):
        dr.io.read_sysid(path, routine="arm")


def test_wpilog_that_is_not_sysid(tmp_path):
    pytest.importorskip("wpiutil.log")
    path = write_wpilog(tmp_path / "x.wpilog", {1: ("battery", "double", "")}, [(1, 10, 12.0)])
    with pytest.raises(SysIdLogError, match="not a SysId WPILog"):
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
