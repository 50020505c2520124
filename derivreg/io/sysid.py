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

Newer SysId versions write binary WPILog files (entries ``sysid-test-state-<routine>``,
``voltage-<motor>-<routine>``, ``position-…``, ``velocity-…``). They are decoded with
``wpiutil.log.DataLogReader`` from the optional PyPI package ``robotpy-wpiutil`` (maintained by
RobotPy); without it, reading one raises :class:`~derivreg.exceptions.MethodNotAvailableError`.
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


_WPILOG_STATES = {
    "quasistatic-forward": "slow-forward",
    "quasistatic-reverse": "slow-backward",
    "dynamic-forward": "fast-forward",
    "dynamic-reverse": "fast-backward",
}
_STATE_PREFIX = "sysid-test-state-"


def _wpilog_entries(path: str) -> dict[str, dict[str, Any]]:
    """All entries of a WPILog file: name -> {type, metadata, t (µs), values}."""
    try:
        from wpiutil.log import DataLogReader
    except ImportError:
        raise MethodNotAvailableError(
            f"{path} is a binary WPILog file; reading it needs the optional package "
            "'robotpy-wpiutil' (pip install robotpy-wpiutil). Or export the tests to a legacy "
            "JSON log, or build the frame yourself (columns test, time, voltage, position, "
            "velocity)."
        ) from None
    reader = DataLogReader(path)
    if not reader.isValid():
        raise SysIdLogError(f"{path}: not a valid WPILog file")
    by_id: dict[int, dict[str, Any]] = {}
    entries: dict[str, dict[str, Any]] = {}
    for rec in reader:
        if rec.isStart():
            d = rec.getStartData()
            info = entries.setdefault(
                d.name, {"type": d.type, "metadata": d.metadata, "t": [], "values": []}
            )
            by_id[d.entry] = info
        elif not rec.isControl():
            info = by_id.get(rec.getEntry())
            if info is None:
                continue
            if info["type"] == "double":
                value: Any = rec.getDouble()
            elif info["type"] == "string":
                value = rec.getString()
            else:
                continue
            info["t"].append(rec.getTimestamp())
            info["values"].append(value)
    return entries


def _asof(t_src: np.ndarray, y_src: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The latest sample of ``y_src`` at or before each time ``t`` (NaN before the first)."""
    order = np.argsort(t_src, kind="stable")
    t_src, y_src = t_src[order], y_src[order]
    pos = np.searchsorted(t_src, t, side="right") - 1
    out = np.full(len(t), np.nan)
    ok = pos >= 0
    out[ok] = y_src[pos[ok]]
    return out


def _read_wpilog(
    path: str, mechanism: str | None, routine: str | None, motor: str | None
) -> pd.DataFrame:
    """Convert a SysId WPILog (``sysid-test-state-<routine>``, ``voltage-<motor>-<routine>``,
    ``position-…``, ``velocity-…``) to the tidy frame; values are in the logged units."""
    entries = _wpilog_entries(path)
    routines = sorted(n[len(_STATE_PREFIX) :] for n in entries if n.startswith(_STATE_PREFIX))
    if not routines:
        raise SysIdLogError(f"{path}: no '{_STATE_PREFIX}<routine>' entry: not a SysId WPILog")
    if routine is None:
        if len(routines) > 1:
            raise SysIdLogError(f"{path}: several SysId routines {routines}; pass routine=")
        routine = routines[0]
    elif routine not in routines:
        raise SysIdLogError(f"{path}: no SysId routine {routine!r}; found {routines}")
    suffix = f"-{routine}"
    kinds = ("voltage", "position", "velocity")
    found: dict[str, set[str]] = {k: set() for k in kinds}
    for name in entries:
        for k in kinds:
            if name.startswith(f"{k}-") and name.endswith(suffix) and entries[name]["t"]:
                found[k].add(name[len(k) + 1 : -len(suffix)])
    motors = sorted(found["voltage"] & found["position"] & found["velocity"])
    if not motors:
        raise SysIdLogError(
            f"{path}: routine {routine!r} has no motor with voltage, position and velocity "
            f"entries (voltage-<motor>{suffix}, ...)"
        )
    mech = MECHANISMS.get(mechanism or "simple", mechanism or "simple")
    if mech not in MECHANISMS.values():
        raise SysIdLogError(f"unknown mechanism {mech!r}; use one of {list(MECHANISMS.values())}")
    if mech == "drivetrain-angular":
        raise MethodNotAvailableError(
            "angular drivetrain tests need gyro entries, which SysId WPILogs do not standardise"
        )
    if motor is not None:
        if motor not in motors:
            raise SysIdLogError(f"{path}: no motor {motor!r} in routine {routine!r}; {motors}")
        sides: list[tuple[str | None, str]] = [(None, motor)]
    elif mech == "drivetrain":
        if len(motors) != 2:
            raise SysIdLogError(f"{path}: a drivetrain needs two motors (sides), found {motors}")
        ordered = sorted(motors, key=lambda m: (0 if "left" in m.lower() else 1, m))
        sides = [("left", ordered[0]), ("right", ordered[1])]
    elif len(motors) == 1:
        sides = [(None, motors[0])]
    else:
        raise SysIdLogError(f"{path}: several motors {motors} in routine {routine!r}; pass motor=")

    state = entries[_STATE_PREFIX + routine]
    st_t = np.asarray(state["t"], dtype=float)
    order = np.argsort(st_t, kind="stable")
    st_t, st_v = st_t[order], [state["values"][i] for i in order]
    windows: dict[str, tuple[float, float]] = {}
    for i, name in enumerate(st_v):
        if name in _WPILOG_STATES:  # a repeated test: the last run wins
            stop = st_t[i + 1] if i + 1 < len(st_t) else np.inf
            windows[_WPILOG_STATES[name]] = (st_t[i], stop)
    missing = [t for t in TESTS if t not in windows]
    if missing:
        raise SysIdLogError(f"{path}: routine {routine!r} lacks the tests {missing}")
    frames = []
    for test in TESTS:
        lo, hi = windows[test]
        for side, m in sides:
            e = {k: entries[f"{k}-{m}{suffix}"] for k in kinds}
            tv = np.asarray(e["voltage"]["t"], dtype=float)
            sel = (tv >= lo) & (tv < hi)
            t = tv[sel]
            frame: dict[str, Any] = {"test": test}
            if side is not None:
                frame["side"] = side
            frame["time"] = t * 1e-6
            frame["voltage"] = np.asarray(e["voltage"]["values"], dtype=float)[sel]
            for k in ("position", "velocity"):
                src_t = np.asarray(e[k]["t"], dtype=float)
                frame[k] = _asof(src_t, np.asarray(e[k]["values"], dtype=float), t)
            part = pd.DataFrame(frame).dropna()
            part = part[~part["time"].duplicated(keep="last")]
            if len(part) < 2:
                raise SysIdLogError(f"{path}: test {test!r} of motor {m!r} has no samples")
            frames.append(part)
    out = pd.concat(frames, ignore_index=True)
    out["test"] = out["test"].astype(object)
    first = f"position-{sides[0][1]}{suffix}"
    units = str(entries[first]["metadata"]).strip() or "Rotations"
    test_type = {v: k for k, v in MECHANISMS.items()}[mech]
    out.attrs.update(
        {
            "mechanism": mech,
            "test_type": test_type,
            "units": units,
            "unitsPerRotation": 1.0,
            "source": path,
            "format": "wpilog",
            "routine": routine,
            "motors": [m for _, m in sides],
        }
    )
    return out


def read_sysid(
    path: str | os.PathLike[str],
    *,
    mechanism: str | None = None,
    routine: str | None = None,
    motor: str | None = None,
) -> pd.DataFrame:
    """Read a WPILib SysId log into a tidy DataFrame, one segment per test (and drivetrain side).

    The model SysId fits to these logs is ``u = kS·sgn(v) + kV·v + kA·a`` (+ ``kG`` for an
    elevator, + ``kG·cos(θ + offset)`` for an arm); see :func:`derivreg.characterize`.

    Parameters
    ----------
    path : str or path-like
        A legacy SysId JSON log (``sysid_data*.json``), or a binary WPILog file written by
        WPILib's ``SysIdRoutine`` (needs the optional package ``robotpy-wpiutil``).
    mechanism : str, optional
        WPILog only (the file does not say): ``simple`` (default), ``elevator``, ``arm`` or
        ``drivetrain`` (two motors become the sides, a motor named ``*left*`` first).
    routine, motor : str, optional
        WPILog only: which ``sysid-test-state-<routine>`` and which motor's
        ``voltage-<motor>-<routine>``/``position-…``/``velocity-…`` entries to read, when the
        file holds several. Samples are aligned on the voltage's time stamps (the latest
        position and velocity at or before each); positions and velocities are in the units of
        the position entry's metadata (``unitsPerRotation`` is 1); a test run several times
        keeps its last run.

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
        The file is a binary WPILog and ``robotpy-wpiutil`` is not installed.
    FileNotFoundError
        The file does not exist.
    """
    p = Path(path)
    with open(p, "rb") as fh:
        head = fh.read(len(_WPILOG_MAGIC))
        if head == _WPILOG_MAGIC:
            return _read_wpilog(str(p), mechanism, routine, motor)
        text = head + fh.read()
    try:
        raw = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SysIdLogError(f"{p}: not a SysId log: the file is not valid JSON ({exc})") from None
    return sysid_frame(raw, source=str(p))
