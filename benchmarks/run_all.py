"""Run every benchmark script in ``benchmarks/`` with ``--quick`` (``make bench``).

Each ``benchmarks/<name>.py`` (not starting with ``_``, not this file) runs in its own process with
the same Python; results go to ``benchmarks/results/<name>.md``. Exit status 1 if any failed.

Usage: ``python benchmarks/run_all.py [--full] [name ...]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def scripts(names: list[str] | None = None) -> list[Path]:
    """Benchmark scripts in this folder, optionally only the given names (without ``.py``)."""
    found = sorted(
        p for p in HERE.glob("*.py") if not p.name.startswith("_") and p.name != Path(__file__).name
    )
    if names:
        wanted = {n.removesuffix(".py") for n in names}
        missing = wanted - {p.stem for p in found}
        if missing:
            raise SystemExit(f"no benchmark script named {sorted(missing)} in {HERE}")
        found = [p for p in found if p.stem in wanted]
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="benchmark names (default: all)")
    ap.add_argument("--full", action="store_true", help="run without --quick")
    args = ap.parse_args(argv)
    failed = []
    for path in scripts(args.names):
        cmd = [sys.executable, str(path)] + ([] if args.full else ["--quick"])
        print(f"=== {path.name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, cwd=HERE.parent)
        print(f"=== {path.name}: exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
        if rc != 0:
            failed.append(path.name)
    if failed:
        print(f"failed: {', '.join(failed)}")
        return 1
    print("all benchmarks finished")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
