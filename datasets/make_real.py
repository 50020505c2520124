"""Clean the published series into the tidy CSVs shipped in this folder.

Run from anywhere: ``python datasets/make_real.py [SOURCE_DIR]`` where ``SOURCE_DIR`` holds the raw
files as collected (``lynx_hare.csv``, ``bod.csv``, ``theoph.csv``, ``gas_furnace.csv``,
``uspop.csv``; default: ``../shared/data`` next to the repository). Only formatting changes:
columns renamed to lower case with units in the README, row-name columns dropped, an explicit time
column added to the gas furnace series (9-s sampling); the numbers are the published ones.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from derivreg.datasets import update_checksums

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE.parent.parent / "shared" / "data"


def build(source: Path) -> dict[str, pd.DataFrame]:
    """The tidy tables, by dataset name."""
    source = Path(source)
    lh = pd.read_csv(source / "lynx_hare.csv", comment="#", skipinitialspace=True)
    lynx_hare = pd.DataFrame(
        {"year": lh["Year"].astype(int), "hare": lh["Hare"], "lynx": lh["Lynx"]}
    )
    bod_raw = pd.read_csv(source / "bod.csv")
    bod = pd.DataFrame({"day": bod_raw["Time"].astype(float), "demand": bod_raw["demand"]})
    th = pd.read_csv(source / "theoph.csv")
    theoph = pd.DataFrame(
        {
            "subject": th["Subject"].astype(int),
            "weight": th["Wt"],
            "dose": th["Dose"],
            "time": th["Time"],
            "conc": th["conc"],
        }
    )
    gf = pd.read_csv(source / "gas_furnace.csv")
    gas = pd.DataFrame(
        {"time": 9 * pd.RangeIndex(len(gf)), "gas_rate": gf["input_gas_rate"], "co2": gf["co2"]}
    )
    up = pd.read_csv(source / "uspop.csv")
    uspop = pd.DataFrame({"year": up["time"].astype(int), "population": up["value"]})
    return {
        "lynx_hare": lynx_hare,
        "bod": bod,
        "theoph": theoph,
        "gas_furnace": gas,
        "uspop": uspop,
    }


def to_csv_text(df: pd.DataFrame) -> str:
    """The exact text written for a table (also used by the tests)."""
    return df.to_csv(index=False, lineterminator="\n")


def main(source: Path = DEFAULT_SOURCE, out: Path = HERE) -> None:
    for name, df in build(source).items():
        (Path(out) / f"{name}.csv").write_text(to_csv_text(df), encoding="utf-8")
    update_checksums(Path(out))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SOURCE)
