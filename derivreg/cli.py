"""The ``derivreg`` command line: fit, batch, demo, datasets, sysid.

``derivreg batch`` fits one relation ``d^p x_g/dt^p = Σ_j θ_{g,j} f_j(t)`` to every group ``g`` of a
panel and writes the tidy table of coefficients. It writes as it goes: every finished chunk of
groups becomes a part file (written to a temporary name, then renamed — a part is complete or
absent), and a manifest lists the parts (also replaced atomically). A killed run therefore loses no
finished group; ``--resume`` reads the manifest, skips the groups already written and fits the
rest; the final output is assembled from the parts, in the same order as :func:`derivreg.fit_many`.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from derivreg.exceptions import DataError, DerivregError

__all__ = ["app", "main"]

app = typer.Typer(
    name="derivreg",
    help="Estimate differential relations such as dx/dt = a x + b u + c from sampled time series.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_DATA_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_MANIFEST = "manifest.json"
_MANIFEST_VERSION = 1


def _console() -> Console:
    return Console(soft_wrap=False, width=max(100, Console().width))


def _err_console() -> Console:
    return Console(stderr=True, soft_wrap=True)


def _fail(message: str, code: int = 2) -> typer.Exit:
    _err_console().print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


# --------------------------------------------------------------------------------------------
# input and output
# --------------------------------------------------------------------------------------------


def _kind(path: Path) -> str:
    kind = _DATA_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unknown file type {path.suffix!r}; use .csv or .parquet (.pq)")
    return kind


def _read_file(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path) if _kind(path) == "csv" else pd.read_parquet(path)
    frame.attrs = {}  # Parquet restores attrs; pandas would deep-copy them on every operation
    return frame


def read_data(path: Path) -> pd.DataFrame:
    """Read a CSV/Parquet file, or every CSV/Parquet file of a folder (with a ``file`` column).

    The rows of a folder's files are stacked in file-name order; the column ``file`` holds the
    file name without its suffix, so ``--by file`` or ``--segment file`` can use it.
    """
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in _DATA_SUFFIXES)
        if not files:
            raise DataError(f"{path}: the folder holds no .csv or .parquet files")
        frames = []
        for f in files:
            frame = _read_file(f)
            if "file" in frame.columns:
                raise DataError(f"{f}: has a column named 'file', which a folder read adds")
            frames.append(frame.assign(file=f.stem))
        return pd.concat(frames, ignore_index=True)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    return _read_file(path)


def _replace_atomically(path: Path, write: Any) -> None:
    """Write through ``write(tmp_path)`` to a temporary file in the same folder, then rename.

    The rename is atomic, so a killed process leaves the old file or the new one, never a
    partial one. (No fsync: after a power loss a part may be unreadable; ``--resume`` then refits
    its groups, see :meth:`_Parts.load`.)
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_table(table: pd.DataFrame, path: Path) -> None:
    """Write a table atomically as CSV or Parquet (by the suffix of ``path``)."""
    kind = _kind(path)

    def write(tmp: Path) -> None:
        if kind == "csv":
            table.to_csv(tmp, index=False)
        else:
            table.to_parquet(tmp, index=False)

    _replace_atomically(path, write)


def _parse_options(items: list[str] | None) -> dict[str, Any]:
    """``key=value`` pairs; values are Python literals when they parse, else strings."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise DataError(f"--option takes key=value, got {item!r}")
        try:
            value: Any = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        out[key.strip()] = value
    return out


def _default_time(data: pd.DataFrame, time: str | None) -> str | None:
    """``--time`` or, when not given, a column named ``time`` if there is one."""
    if time is not None:
        return time
    return "time" if "time" in data.columns else None


def _fmt(value: Any, digits: int = 5) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)) or value is pd.NA:
        return ""
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}g}"
    return str(value)


def _rich_table(frame: pd.DataFrame, title: str | None = None) -> Table:
    table = Table(title=title, show_lines=False, header_style="bold")
    for col in frame.columns:
        numeric = pd.api.types.is_numeric_dtype(frame[col])
        table.add_column(str(col), justify="right" if numeric else "left")
    for row in frame.itertuples(index=False):
        table.add_row(*(_fmt(v) for v in row))
    return table


# --------------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------------

DataArg = Annotated[Path, typer.Argument(help="CSV or Parquet file, or a folder of them.")]
FormulaOpt = Annotated[
    str, typer.Option("--formula", "-f", help='The relation, e.g. "d(x) ~ x + u".')
]
MethodOpt = Annotated[
    str,
    typer.Option(
        "--method",
        "-m",
        help="auto, statespace, arimax, integral, gradient, fourier or trajectory.",
    ),
]
TimeOpt = Annotated[
    str | None,
    typer.Option("--time", "-t", help="Time column (default: 'time' if present, else row number)."),
]
TimeUnitOpt = Annotated[str, typer.Option("--time-unit", help="Unit of datetime time columns.")]
SegmentOpt = Annotated[
    str | None, typer.Option("--segment", "-s", help="Column marking independent experiments.")
]
HoldOpt = Annotated[
    str, typer.Option("--input-hold", help="Inputs between samples: linear or zoh.")
]
OptionOpt = Annotated[
    list[str] | None,
    typer.Option("--option", "-o", help="Extra fit option key=value (repeatable)."),
]


@app.command()
def fit(
    data: DataArg,
    formula: FormulaOpt,
    method: MethodOpt = "auto",
    time: TimeOpt = None,
    time_unit: TimeUnitOpt = "s",
    segment: SegmentOpt = None,
    input_hold: HoldOpt = "linear",
    option: OptionOpt = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the coefficient table (.csv/.parquet).")
    ] = None,
) -> None:
    """Fit one relation to one data set and print its summary.

    A folder of files is read as one data set whose files are independent experiments (segments
    named by file) unless --segment says otherwise.
    """
    try:
        from derivreg.api import fit as dr_fit

        frame = read_data(data)
        if segment is None and data.is_dir():
            segment = "file"
        res = dr_fit(
            formula,
            frame,
            method=method,
            time=_default_time(frame, time),
            time_unit=time_unit,
            segment=segment,
            input_hold=input_hold,
            **_parse_options(option),
        )
        console = _console()
        console.print(res.summary(), highlight=False)
        if out is not None:
            write_table(res.to_frame(), out)
            console.print(f"coefficients written to {out}")
    except DerivregError as exc:
        raise _fail(str(exc)) from None


# --------------------------------------------------------------------------------------------
# batch: parts, manifest, resume
# --------------------------------------------------------------------------------------------


class _Parts:
    """The part files of one batch output and their manifest."""

    def __init__(self, out: Path) -> None:
        self.dir = out.with_name(out.name + ".parts")
        self.manifest_path = self.dir / _MANIFEST
        self.manifest: dict[str, Any] = {}
        self._seq = 0

    def exists(self) -> bool:
        return self.dir.exists()

    def start(self, config: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.manifest = {"version": _MANIFEST_VERSION, "config": config, "parts": []}
        self._save()

    def load(self, config: dict[str, Any]) -> None:
        if not self.manifest_path.exists():
            raise DataError(f"{self.dir} has no {_MANIFEST}; it is not a derivreg batch folder")
        manifest = json.loads(self.manifest_path.read_text())
        if manifest.get("version") != _MANIFEST_VERSION:
            raise DataError(f"{self.manifest_path}: unknown manifest version")
        if manifest.get("config") != config:
            old = manifest.get("config", {})
            diff = sorted(k for k in {*old, *config} if old.get(k) != config.get(k))
            raise DataError(
                f"--resume: the parts in {self.dir} were written with different settings "
                f"({', '.join(diff)}); use --overwrite to start again"
            )
        readable = []
        for part in manifest["parts"]:
            try:
                pd.read_parquet(self.dir / part["file"], columns=[])
            except Exception:  # lost or truncated (e.g. power loss): its groups are refitted
                continue
            readable.append(part)
        manifest["parts"] = readable
        self.manifest = manifest
        self._save()
        listed = {p["file"] for p in manifest["parts"]}
        for path in self.dir.iterdir():  # parts written but never listed, temporary files
            if path.name != _MANIFEST and path.name not in listed:
                path.unlink()

    def _save(self) -> None:
        text = json.dumps(self.manifest, indent=1)
        _replace_atomically(self.manifest_path, lambda tmp: tmp.write_text(text))

    def add(self, table: pd.DataFrame, groups: int, failed: int) -> None:
        self._seq += 1
        while (self.dir / f"part-{self._seq:06d}.parquet").exists():  # after a resume
            self._seq += 1
        name = f"part-{self._seq:06d}.parquet"
        _replace_atomically(self.dir / name, lambda tmp: table.to_parquet(tmp, index=False))
        self.manifest["parts"].append({"file": name, "groups": groups, "failed": failed})
        self._save()

    def read(self, by: list[str]) -> pd.DataFrame | None:
        from derivreg.batch import normalize_table

        frames = []
        for part in self.manifest["parts"]:
            frame = pd.read_parquet(self.dir / part["file"])
            frame.attrs = {}
            frames.append(frame)
        if not frames:
            return None
        return normalize_table(pd.concat(frames, ignore_index=True), by)

    @property
    def counts(self) -> tuple[int, int]:
        parts = self.manifest.get("parts", [])
        return sum(p["groups"] for p in parts), sum(p["failed"] for p in parts)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _pending_rows(data: pd.DataFrame, done: pd.DataFrame | None, by: list[str]) -> pd.DataFrame:
    """The rows of groups not yet in ``done``."""
    if done is None or done.empty:
        return data
    keys = done[by].drop_duplicates()
    mark = keys.assign(__done__=True)
    left = data[by].reset_index(drop=True)
    for col in by:  # compare keys as written to Parquet (same dtype on both sides)
        if left[col].dtype != mark[col].dtype:
            try:
                mark[col] = mark[col].astype(left[col].dtype)
            except (TypeError, ValueError):
                left[col] = left[col].astype(mark[col].dtype)
    merged = left.merge(mark, on=by, how="left", sort=False)
    return data.loc[merged["__done__"].isna().to_numpy()]


@contextmanager
def _progress(show: bool, total: int, done: int, failed: int) -> Iterator[Any]:
    if not show:
        yield lambda d, f, t: None
        return
    from derivreg.batch import RichProgress

    with RichProgress(total, description="fitting") as report:
        report(done, failed, total)
        yield report


@app.command()
def batch(
    data: DataArg,
    formula: FormulaOpt,
    by: Annotated[
        list[str], typer.Option("--by", "-b", help="Group column (repeat for several keys).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Output table: .parquet or .csv.")],
    method: MethodOpt = "auto",
    backend: Annotated[
        str, typer.Option("--backend", help="serial, process (local processes) or dask.")
    ] = "process",
    n_jobs: Annotated[int, typer.Option("--n-jobs", "-j", help="Worker processes.")] = -1,
    scheduler: Annotated[
        str | None, typer.Option("--scheduler", help="dask.distributed scheduler address.")
    ] = None,
    time: TimeOpt = None,
    time_unit: TimeUnitOpt = "s",
    segment: SegmentOpt = None,
    input_hold: HoldOpt = "linear",
    option: OptionOpt = None,
    chunk_size: Annotated[
        int | None, typer.Option("--chunk-size", help="Groups per task and per part file.")
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            "--engine", help="auto, fit (dr.fit per group) or vectorized (OLS forms, OLS cov)."
        ),
    ] = "auto",
    resume: Annotated[
        bool, typer.Option("--resume", help="Skip groups already written by an earlier run.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Discard parts of an earlier run.")
    ] = False,
    keep_parts: Annotated[
        bool, typer.Option("--keep-parts", help="Keep the part files after assembling.")
    ] = False,
    fail_on_error: Annotated[
        bool, typer.Option("--fail-on-error", help="Exit with status 1 when a group failed.")
    ] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Fit one relation to every group of a panel; write one row per group and term.

    Results are written as chunks finish (part files next to --out plus a manifest), so an
    interrupted run loses no finished group: run again with --resume to fit only the rest.
    """
    from derivreg.batch import prepare_batch, sort_table

    created = False
    parts = _Parts(out)
    try:
        _kind(out)
        frame = read_data(data)
        options = _parse_options(option)
        time_col = _default_time(frame, time)
        config = {
            "data": str(data.resolve()),
            "formula": formula,
            "by": list(by),
            "method": method,
            "time": time_col,
            "time_unit": time_unit,
            "segment": segment,
            "input_hold": input_hold,
            "options": {k: repr(v) for k, v in sorted(options.items())},
            "engine": engine,
        }
        if parts.exists() and not (resume or overwrite):
            raise DataError(
                f"{parts.dir} holds parts of an earlier run: pass --resume to continue it or "
                "--overwrite to start again"
            )
        if parts.exists() and overwrite and not resume:
            parts.remove()
        if resume and parts.exists():
            parts.load(config)
        else:
            parts.start(config)
            created = True
        by_cols = list(by)
        done_table = parts.read(by_cols)
        pending = _pending_rows(frame, done_table, by_cols)
        run = prepare_batch(
            pending,
            formula,
            by_cols,
            method=method,
            backend=backend,
            n_jobs=n_jobs,
            scheduler=scheduler,
            time=time_col,
            time_unit=time_unit,
            segment=segment,
            input_hold=input_hold,
            chunk_size=chunk_size,
            engine=engine,
            **options,
        )
        done, failed = parts.counts
        total = done + run.ngroups
        console = _err_console()
        if done:
            console.print(f"resuming: {done} groups already written, {run.ngroups} to fit")
        with _progress(progress, total, done, failed) as report:
            for table, chunk in run.tables():
                parts.add(table, chunk.groups, chunk.failed)
                done += chunk.groups
                failed += chunk.failed
                report(done, failed, total)
        result = parts.read(by_cols)
        if result is None:
            from derivreg.batch import RESULT_COLUMNS, normalize_table

            empty = {c: frame[c].iloc[:0] for c in by_cols} | {c: [] for c in RESULT_COLUMNS}
            result = normalize_table(pd.DataFrame(empty), by_cols)
        result = sort_table(result, by_cols)
        write_table(result, out)
        if not keep_parts:
            parts.remove()
    except DerivregError as exc:
        if created and not parts.manifest.get("parts"):  # nothing written: leave no folder
            parts.remove()
        raise _fail(str(exc)) from None
    console.print(
        f"{total} groups: {total - failed} ok, {failed} failed; {len(result)} rows written to {out}"
    )
    if failed and fail_on_error:
        raise typer.Exit(1)


# --------------------------------------------------------------------------------------------
# demo, datasets, sysid
# --------------------------------------------------------------------------------------------


@app.command()
def demo(
    backend: Annotated[str, typer.Option("--backend", help="serial, process or dask.")] = "process",
    method: Annotated[str, typer.Option("--method", "-m", help="Fitting method.")] = "auto",
) -> None:
    """Fit the shipped panel of 50 heating/cooling units, one relation per unit; print the table.

    The panel (dataset ``cooling_panel``) is simulated from dx = (a x + b u + c) dt + σ dW with
    measurement noise and known coefficients per unit, so the table shows the truth beside every
    estimate and how often the 95% intervals cover it. ``method="auto"`` finds both noise
    sources and fits the state-space form; try ``--method integral`` or ``--method gradient`` to
    see forms whose noise model does not match this panel.
    """
    from derivreg import datasets
    from derivreg.batch import fit_many

    console = _console()
    panel = datasets.load("cooling_panel")
    formula, by = "d(x) ~ x + u", "unit"
    options: dict[str, Any] = {}
    call = ", ".join(
        [f"panel, {formula!r}", f"by={by!r}", f"method={method!r}", "time='t'", "input_hold='zoh'"]
        + [f"{k}={v!r}" for k, v in options.items()]
    )
    console.print(
        f"[bold]derivreg demo[/]: {panel.attrs.get('title', 'cooling_panel')}\n"
        f"table = dr.fit_many({call})",
        highlight=False,
    )
    table = fit_many(
        panel,
        formula,
        by=by,
        method=method,
        time=panel.attrs.get("time", "t"),
        input_hold="zoh",
        backend=backend,
        **options,
    )
    truth = panel.attrs.get("truth", {})
    table["truth"] = [
        truth.get(unit, {}).get(term, np.nan) if isinstance(term, str) else np.nan
        for unit, term in zip(table[by], table["term"], strict=True)
    ]
    table["covered"] = np.where(
        table["truth"].notna(),
        np.where(
            (table["lower"] <= table["truth"]) & (table["truth"] <= table["upper"]), "yes", "no"
        ),
        "",
    )
    first = table[table[by].isin(table[by].drop_duplicates().iloc[:8])]
    cols = [by, "term", "estimate", "se", "lower", "upper", "truth", "covered", "status"]
    console.print(_rich_table(first[cols], title="first 8 units: one row per unit and term"))
    ok = table[table["status"] == "ok"]
    n_units = table[by].nunique()
    n_fail = int(table.loc[table["status"] == "error", by].nunique())
    summary = (
        ok.assign(cov=ok["covered"] == "yes", err=ok["estimate"] - ok["truth"])
        .groupby("term", sort=False)
        .agg(units=("cov", "size"), coverage=("cov", "mean"), mean_error=("err", "mean"))
        .reset_index()
    )
    console.print(_rich_table(summary, title="all units: 95% interval coverage of the truth"))
    console.print(f"{n_units} units fitted, {n_units - n_fail} ok, {n_fail} failed.")


@app.command("datasets")
def datasets_command(
    name: Annotated[
        str | None, typer.Argument(help="Show one dataset's description and first rows.")
    ] = None,
) -> None:
    """List the datasets shipped with derivreg (or describe one)."""
    from derivreg import datasets

    console = _console()
    try:
        if name is None:
            listing = datasets.list()
            if not isinstance(listing, pd.DataFrame):
                listing = pd.DataFrame({"name": [str(n) for n in listing]}).set_index("name")
            show = [c for c in ("title", "kind", "rows", "columns") if c in listing.columns]
            console.print(_rich_table(listing[show].reset_index(), title="derivreg datasets"))
            return
        frame = datasets.load(name)
    except DerivregError as exc:
        raise _fail(str(exc)) from None
    for key, value in frame.attrs.items():
        if isinstance(value, str):
            console.print(f"[bold]{key}[/]: {value}", highlight=False)
    console.print(f"{len(frame)} rows; columns: {', '.join(map(str, frame.columns))}")
    console.print(_rich_table(frame.head(8).reset_index()))


@app.command()
def sysid(
    log: Annotated[Path, typer.Argument(help="SysId log (sysid_data*.json).")],
    method: MethodOpt = "auto",
    mechanism: Annotated[
        str | None,
        typer.Option("--mechanism", help="simple, elevator, arm, drivetrain (default: from log)."),
    ] = None,
) -> None:
    """Feedforward gains kS, kV, kA (+ kG) of a mechanism with intervals, beside SysId's numbers."""
    from derivreg.io import read_sysid
    from derivreg.sysid import characterize

    console = _console()
    try:
        frame = read_sysid(log)
        legacy = characterize(frame, mechanism=mechanism, method="sysid")
        ours = None
        note = ""
        if method != "sysid":
            try:
                ours = characterize(frame, mechanism=mechanism, method=method)
            except DerivregError as exc:
                note = f"method={method!r} is not available: {exc}"
    except DerivregError as exc:
        raise _fail(str(exc)) from None
    main_fit = ours if ours is not None else legacy
    level = f"{100 * (1 - main_fit.alpha):g}%"
    table = Table(
        title=f"{legacy.mechanism} — gains from {log.name}"
        + (f" (position units: {legacy.units})" if legacy.units else ""),
        header_style="bold",
    )
    table.add_column("gain")
    table.add_column(f"estimate ({main_fit.method})", justify="right")
    table.add_column("se", justify="right")
    table.add_column(f"{level} interval", justify="right")
    if ours is not None:
        table.add_column("SysId-compatible (method=sysid)", justify="right")
        table.add_column("se", justify="right")
    for gain, row in main_fit.gains.iterrows():
        cells = [
            str(gain),
            _fmt(row["estimate"]),
            _fmt(row["se"], 3),
            f"[{_fmt(row['lower'])}, {_fmt(row['upper'])}]",
        ]
        if ours is not None:
            old = legacy.gains.loc[gain] if gain in legacy.gains.index else None
            cells += [
                "" if old is None else _fmt(old["estimate"]),
                "" if old is None else _fmt(old["se"], 3),
            ]
        table.add_row(*cells)
    console.print(table)
    if note:
        console.print(f"[yellow]{note}[/]; showing the SysId-compatible fit.", highlight=False)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``derivreg``, ``python -m derivreg``)."""
    app(args=argv if argv is not None else sys.argv[1:], prog_name="derivreg")


if __name__ == "__main__":  # pragma: no cover
    main()
