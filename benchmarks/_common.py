"""Small helpers shared by the benchmark scripts (BENCHMARKS.md: medians, machine, versions).

Every benchmark prints its tables and writes them, with the date, the machine (cores, CPU model)
and the package versions, to ``benchmarks/results/<name>.md``.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as _md
import os
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"

#: environment variables that change the speed of numerical code
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def cpu_model() -> str:
    """CPU model name from ``/proc/cpuinfo`` (falls back to :func:`platform.processor`)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, str]:
    """Cores, CPU model, OS, Python and thread settings of this machine."""
    info = {
        "cores": str(os.cpu_count()),
        "cpu": cpu_model(),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
    }
    try:
        info["load"] = "load average " + ", ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        info["load"] = "load average unknown"
    threads = {v: os.environ[v] for v in _THREAD_VARS if v in os.environ}
    info["threads"] = ", ".join(f"{k}={v}" for k, v in threads.items()) or "library defaults"
    return info


def package_versions(names: Iterable[str]) -> dict[str, str]:
    """Installed version of each distribution, or ``"not installed"``.

    A module imported from a source tree (not installed as a distribution) reports its
    ``__version__`` if it has been imported.
    """
    out: dict[str, str] = {}
    for name in names:
        try:
            out[name] = _md.version(name)
        except _md.PackageNotFoundError:
            mod = sys.modules.get(name)
            version = getattr(mod, "__version__", None) if mod is not None else None
            out[name] = f"{version} (source tree)" if version else "not installed"
    return out


def time_call(fn: Callable[[], Any], repeats: int = 5) -> tuple[float, Any]:
    """Median wall time (seconds) of ``fn()`` over ``repeats`` calls, and the last result."""
    times = []
    result = None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def peak_memory(fn: Callable[[], Any]) -> tuple[int, Any]:
    """Peak memory (bytes) allocated during ``fn()`` as seen by :mod:`tracemalloc`.

    numpy reports its array buffers to tracemalloc, so this includes array data; memory held by
    BLAS/LAPACK workspaces outside numpy is not seen.
    """
    was = tracemalloc.is_tracing()
    if not was:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    try:
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        if not was:
            tracemalloc.stop()
    return max(0, peak - base), result


def fmt(value: Any, digits: int = 3) -> str:
    """Format a table cell: floats to ``digits`` significant digits, None/NaN as a dash."""
    if value is None:
        return "–"
    if isinstance(value, float):
        if value != value:  # NaN
            return "–"
        if value == 0:
            return "0"
        if abs(value) >= 10 ** (digits + 2) or abs(value) < 10 ** -(digits + 1):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub-markdown table of ``rows`` (dicts), columns in the given or first-seen order."""
    if columns is None:
        columns = []
        for r in rows:
            for k in r:
                if k not in columns:
                    columns.append(k)
    head = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def human_bytes(n: float) -> str:
    """Bytes in KiB/MiB/GiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def header(title: str, packages: Iterable[str], argv: Sequence[str] | None = None) -> str:
    """Markdown header: title, UTC date, command line, machine and package versions."""
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    m = machine_info()
    lines = [
        f"# {title}",
        "",
        f"- date: {now}",
        f"- command: `python {' '.join(argv if argv is not None else sys.argv)}`",
        f"- machine: {m['cores']} cores, {m['cpu']}, {m['os']}, Python {m['python']}",
        f"- machine load when the run ended: {m['load']} (1, 5, 15 min)",
        f"- BLAS/OpenMP threads: {m['threads']}",
        "- packages: " + ", ".join(f"{k} {v}" for k, v in package_versions(packages).items()),
        "",
    ]
    return "\n".join(lines)


def write_results(name: str, text: str) -> Path:
    """Write ``text`` to ``benchmarks/results/<name>.md`` and return the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text(text if text.endswith("\n") else text + "\n")
    return path
