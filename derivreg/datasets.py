"""Datasets shipped with derivreg: published series and simulated logs with known truth.

The CSVs live in the repository's top-level ``datasets/`` folder, installed into wheels as
``derivreg/_datasets``. Their metadata (description, source, units, time and segment columns,
reference values and the SHA-256 of each file) is kept in one place, ``registry.json`` next to the
CSVs; ``datasets/README.md`` documents the same.

Examples
--------
>>> import derivreg as dr
>>> dr.datasets.list()                      # doctest: +SKIP
>>> df = dr.datasets.load("lynx_hare")      # doctest: +SKIP
>>> df.attrs["source"], df.attrs["time"]    # doctest: +SKIP
"""

from __future__ import annotations

import builtins
import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd

from derivreg.exceptions import DataError

__all__ = [
    "DatasetNotFoundError",
    "data_dir",
    "list",
    "list_datasets",
    "load",
    "registry",
    "update_checksums",
]

_REGISTRY = "registry.json"


class DatasetNotFoundError(DataError, KeyError):
    """The requested dataset name is not one of the shipped datasets."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


def data_dir() -> Path:
    """Folder holding the dataset CSVs and ``registry.json``.

    ``derivreg/_datasets`` in an installed wheel, else the repository's top-level ``datasets/``
    (editable install / source checkout).
    """
    here = Path(__file__).resolve().parent
    for candidate in (here / "_datasets", here.parent / "datasets"):
        if (candidate / _REGISTRY).is_file():
            return candidate
    raise DataError(
        f"derivreg's datasets folder was not found (looked in {here / '_datasets'} and "
        f"{here.parent / 'datasets'}); the installation is incomplete"
    )


@cache
def registry() -> dict[str, dict[str, Any]]:
    """The metadata of every dataset, by name (parsed ``registry.json``)."""
    with open(data_dir() / _REGISTRY, encoding="utf-8") as fh:
        return json.load(fh)


def _sha256(path: Path) -> str:
    """SHA-256 of a text file with line endings normalised to ``\\n`` (git autocrlf safe)."""
    return hashlib.sha256(path.read_bytes().replace(b"\r\n", b"\n")).hexdigest()


def update_checksums(folder: Path | None = None) -> dict[str, str]:
    """Record the SHA-256 of every dataset file in ``registry.json`` (maintainers' tool).

    The generator scripts in ``datasets/`` call it after rewriting their CSVs. Returns the new
    checksums by file name.
    """
    folder = data_dir() if folder is None else Path(folder)
    path = folder / _REGISTRY
    reg = json.loads(path.read_text(encoding="utf-8"))
    sums: dict[str, str] = {}
    for meta in reg.values():
        for file_key, sum_key in (("file", "sha256"), ("truth_file", "truth_sha256")):
            if file_key in meta:
                meta[sum_key] = sums[meta[file_key]] = _sha256(folder / meta[file_key])
    path.write_text(json.dumps(reg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    registry.cache_clear()
    return sums


def list_datasets() -> pd.DataFrame:
    """The shipped datasets as a table.

    Returns
    -------
    DataFrame
        Indexed by ``name``; columns ``title``, ``kind`` (``"real"`` or ``"simulated"``),
        ``rows``, ``columns``, ``time`` (time column), ``segment`` (segment column or None),
        ``description``.
    """
    rows = [
        {
            "name": name,
            "title": meta["title"],
            "kind": meta["kind"],
            "rows": meta["shape"][0],
            "columns": ", ".join(meta["columns"]),
            "time": meta["time"],
            "segment": meta["segment"],
            "description": meta["description"],
        }
        for name, meta in registry().items()
    ]
    return pd.DataFrame(rows).set_index("name")


def _read(path: Path, expected_sha: str, columns: dict[str, str]) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"dataset file {path} is missing; the installation is incomplete")
    digest = _sha256(path)
    if digest != expected_sha:
        raise DataError(
            f"{path.name} does not match its recorded SHA-256 (file {digest[:12]}…, registry "
            f"{expected_sha[:12]}…): the file was modified or is corrupt"
        )
    df = pd.read_csv(path)
    if builtins.list(df.columns) != builtins.list(columns):
        raise DataError(f"{path.name} has columns {builtins.list(df.columns)}, expected {columns}")
    return df.astype({c: t for c, t in columns.items() if t != "str"})


def load(name: str) -> pd.DataFrame:
    """Load a shipped dataset.

    Parameters
    ----------
    name : str
        One of the names in :func:`list` (e.g. ``"lynx_hare"``, ``"motor_sysid"``).

    Returns
    -------
    DataFrame
        The documented columns (default RangeIndex; time is a column, see ``attrs["time"]``).
        ``attrs``: ``name``, ``title``, ``description``, ``source``, ``units`` (per column),
        ``time`` (time column name), ``segment`` (segment column or None), ``reference``
        (published or true reference values), ``kind``; simulated datasets also carry ``truth``
        (true coefficients by formula term; for ``cooling_panel`` a dict by unit).

    Raises
    ------
    DatasetNotFoundError
        Unknown name (the message lists the available names).
    DataError
        The file is missing or does not match its recorded checksum.
    """
    reg = registry()
    if name not in reg:
        raise DatasetNotFoundError(f"unknown dataset {name!r}; available: {', '.join(sorted(reg))}")
    meta = reg[name]
    folder = data_dir()
    df = _read(folder / meta["file"], meta["sha256"], meta["columns"])
    attrs: dict[str, Any] = {
        "name": name,
        "title": meta["title"],
        "kind": meta["kind"],
        "description": meta["description"],
        "source": meta["source"],
        "units": dict(meta["units"]),
        "time": meta["time"],
        "segment": meta["segment"],
        "reference": json.loads(json.dumps(meta["reference"])),
    }
    if "truth" in meta["reference"]:
        attrs["truth"] = dict(meta["reference"]["truth"])
        attrs["gains"] = {k: meta["reference"][k] for k in ("kS", "kV", "kA")}
    if "truth_file" in meta:
        truth = pd.read_csv(folder / meta["truth_file"])
        if _sha256(folder / meta["truth_file"]) != meta["truth_sha256"]:
            raise DataError(f"{meta['truth_file']} does not match its recorded SHA-256")
        key = meta["segment"]
        attrs["truth"] = {
            int(row[key]): {k: float(v) for k, v in row.items() if k != key}
            for row in truth.to_dict("records")
        }
    df.attrs.update(attrs)
    return df


# the public spelling is dr.datasets.list(); inside this module use builtins.list
list = list_datasets
