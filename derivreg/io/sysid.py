"""Read WPILib SysId logs into a tidy DataFrame.

SysId (the WPILib system-identification tool used by robotics teams) records four tests per
mechanism — quasistatic voltage ramps ``slow-forward``/``slow-backward`` and dynamic voltage steps
``fast-forward``/``fast-backward`` — and fits the feedforward model

    u = kS·sgn(v) + kV·v + kA·a  (+ kG for an elevator, + kG·cos(θ + offset) for an arm).

Legacy logs are JSON files (``sysid_data*.json``) with the keys ``slow-forward``,
``slow-backward``, ``fast-forward``, ``fast-backward`` (lists of rows), ``"sysid": true``,
``"test"`` (``Simple``, ``Elevator``, ``Arm``, ``Drivetrain``, ``Drivetrain (Angular)``),
``"units"`` and ``"unitsPerRotation"``. Rows are ``[t, V, position, velocity]`` for
Simple/Elevator/Arm and ``[t, V_left, V_right, pos_left, pos_right, vel_left, vel_right, angle,
angular_rate]`` for drivetrains. Positions and velocities are logged in rotations and multiplied
by ``unitsPerRotation``.

Newer SysId versions write binary WPILog files. They can be decoded with the ``wpiutil.log``
module of the PyPI package ``robotpy-wpiutil`` (``DataLogReader``); derivreg does not convert
them to a SysId frame yet and says so with :class:`~derivreg.exceptions.MethodNotAvailableError`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from derivreg.exceptions import DataError, MethodNotAvailableError

__all__ = [
    "DRIVETRAIN_TESTS",
    "MECHANISMS",
    "TESTS",
    "SysIdLogError",
    "read_sysid",
    "sysid_frame",
]

#: The four SysId tests, in the order SysId runs them.
TESTS: tuple[str, ...] = ("slow-forward", "slow-backward", "fast-forward", "fast-backward")
#: Mechanism names used by derivreg (lower case) keyed by the log's ``"test"`` field.
MECHANISMS: dict[str, str] = {
    "Simple": "simple",
    "Elevator": "elevator",
    "Arm": "arm",
    "Drivetrain": "drivetrain",
    "Drivetrain (Angular)": "drivetrain-angular",
}
#: Mechanisms whose logs hold both drivetrain sides.
DRIVETRAIN_TESTS: frozenset[str] = frozenset({"drivetrain", "drivetrain-angular"})

_WPILOG_MAGIC = b"WPILOG"


class SysIdLogError(DataError):
    """A file is not a SysId log derivreg can read (not JSON, missing keys, unknown test)."""


def _check_rows(rows: Any, test: str, width: int, path: str) -> np.ndarray:
    if not isinstance(rows, list):
        raise SysIdLogError(f"{path}: {test!r} must be a list of rows, got {type(rows).__name__}")
    if len(rows) == 0:
        raise SysIdLogError(f"{path}: test {test!r} has no rows")
    try:
        arr = np.asarray(rows, dtype=float)
    except (TypeError, ValueError):
        raise SysIdLogError(
            f"{path}: test {test!r} must hold rows of {width} numbers each"
        ) from None
    if arr.ndim != 2 or arr.shape[1] != width:
        raise SysIdLogError(
            f"{path}: test {test!r} rows must have {width} numbers each "
            f"(got shape {arr.shape}); is the 'test' field right?"
        )
    if not np.all(np.isfinite(arr)):
        raise SysIdLogError(f"{path}: test {test!r} contains non-finite numbers")
    if np.any(np.diff(arr[:, 0]) <= 0):
        raise SysIdLogError(f"{path}: time stamps of test {test!r} are not strictly increasing")
    return arr


def sysid_frame(raw: dict[str, Any], source: str = "<dict>") -> pd.DataFrame:
    """Convert a parsed legacy SysId JSON document (a dict) to the tidy frame of :func:`read_sysid`.

    Parameters
    ----------
    raw : dict
        The parsed JSON document.
    source : str
        Name used in error messages and stored in ``.attrs["source"]``.

    Returns
    -------
    pandas.DataFrame
        See :func:`read_sysid`.
    """
    if not isinstance(raw, dict):
        raise SysIdLogError(f"{source}: a SysId log is a JSON object, got {type(raw).__name__}")
    if raw.get("sysid") is not True:
        raise SysIdLogError(
            f"{source}: not a SysId log (the key 'sysid' must be true; frc-characterization "
            "logs must first be converted with SysId's JSON converter)"
        )
    missing = [k for k in (*TESTS, "test", "units", "unitsPerRotation") if k not in raw]
    if missing:
        raise SysIdLogError(f"{source}: the SysId log lacks the keys {missing}")
    test_type = raw["test"]
    if test_type not in MECHANISMS:
        raise SysIdLogError(
            f"{source}: unknown SysId test type {test_type!r}; expected one of {list(MECHANISMS)}"
        )
    mechanism = MECHANISMS[test_type]
    factor = raw["unitsPerRotation"]
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not np.isfinite(factor):
        raise SysIdLogError(f"{source}: 'unitsPerRotation' must be a finite number, got {factor!r}")
    factor = float(factor)
    units = str(raw["units"])

    frames = []
    for test in TESTS:
        if mechanism in DRIVETRAIN_TESTS:
            arr = _check_rows(raw[test], test, 9, source)
            for side, (iv, ip, iw) in (("left", (1, 3, 5)), ("right", (2, 4, 6))):
                frame = {
                    "test": test,
                    "side": side,
                    "time": arr[:, 0],
                    "voltage": arr[:, iv],
                    "position": arr[:, ip] * factor,
                    "velocity": arr[:, iw] * factor,
                    "angle": arr[:, 7],
                    "angular_rate": arr[:, 8],
                }
                frames.append(pd.DataFrame(frame))
        else:
            arr = _check_rows(raw[test], test, 4, source)
            frame = {
                "test": test,
                "time": arr[:, 0],
                "voltage": arr[:, 1],
                "position": arr[:, 2] * factor,
                "velocity": arr[:, 3] * factor,
            }
            frames.append(pd.DataFrame(frame))
    out = pd.concat(frames, ignore_index=True)
    out["test"] = out["test"].astype(object)
    if "side" in out:
        out["side"] = out["side"].astype(object)
    out.attrs.update(
        {
            "mechanism": mechanism,
            "test_type": test_type,
            "units": units,
            "unitsPerRotation": factor,
            "source": source,
            "format": "sysid-json",
        }
    )
    return out


def _read_wpilog(path: str) -> pd.DataFrame:
    try:
        import wpiutil.log  # noqa: F401
    except ImportError:
        raise MethodNotAvailableError(
            f"{path} is a binary WPILog file; reading it needs the optional package "
            "'robotpy-wpiutil' (pip install robotpy-wpiutil), and derivreg does not yet convert "
            "its SysId entries to a characterisation frame. Export the tests to a legacy JSON "
            "log, or build the frame yourself (columns test, time, voltage, position, velocity)."
        ) from None
    raise MethodNotAvailableError(
        f"{path} is a binary WPILog file; robotpy-wpiutil is installed and can decode it "
        "(wpiutil.log.DataLogReader), but derivreg does not yet convert its 'sysid-test-state' "
        "entries to a characterisation frame. Build the frame yourself (columns test, time, "
        "voltage, position, velocity) and pass it to dr.characterize."
    )


def read_sysid(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a WPILib SysId log into a tidy DataFrame, one segment per test (and drivetrain side).

    The model SysId fits to these logs is ``u = kS·sgn(v) + kV·v + kA·a`` (+ ``kG`` for an
    elevator, + ``kG·cos(θ + offset)`` for an arm); see :func:`derivreg.characterize`.

    Parameters
    ----------
    path : str or path-like
        A legacy SysId JSON log (``sysid_data*.json``). Binary WPILog files are recognised and
        rejected with :class:`~derivreg.exceptions.MethodNotAvailableError` (not converted yet).

    Returns
    -------
    pandas.DataFrame
        Columns ``test`` (``slow-forward``, ``slow-backward``, ``fast-forward``,
        ``fast-backward``), ``time`` (controller seconds, as logged), ``voltage`` (as logged, not
        sign-corrected), ``position`` and ``velocity`` (multiplied by ``unitsPerRotation``). For
        drivetrains there is one block per side with a ``side`` column (``left``/``right``) and
        the gyro columns ``angle`` and ``angular_rate``; a segment is a (test, side) pair.
        ``.attrs`` holds ``mechanism`` (``simple``, ``elevator``, ``arm``, ``drivetrain``,
        ``drivetrain-angular``), ``test_type`` (the log's name), ``units``,
        ``unitsPerRotation`` and ``source`` (the path).

    Raises
    ------
    SysIdLogError
        The file is not JSON, is not a SysId log (``"sysid"`` not true), lacks keys, has an
        unknown test type or malformed rows.
    MethodNotAvailableError
        The file is a binary WPILog.
    FileNotFoundError
        The file does not exist.
    """
    p = Path(path)
    with open(p, "rb") as fh:
        head = fh.read(len(_WPILOG_MAGIC))
        if head == _WPILOG_MAGIC:
            return _read_wpilog(str(p))
        text = head + fh.read()
    try:
        raw = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SysIdLogError(f"{p}: not a SysId log: the file is not valid JSON ({exc})") from None
    return sysid_frame(raw, source=str(p))
