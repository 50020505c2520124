"""Every notebook in notebooks/ runs top to bottom without a cell error, in under a minute.

Executed with nbclient in a fresh ``python3`` kernel. jupyter_client starts a kernelspec whose
``argv[0]`` is ``python`` with ``sys.executable``, so the kernel runs this interpreter (the
project's virtual environment); the test checks that by running one extra cell at the end.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
#: wall-clock budget of one notebook, seconds (the 2-core reference machine needs < 30 s)
BUDGET = 60.0
CHECK = "import sys\nprint(sys.executable)"


def test_notebooks_are_present_and_stored_without_outputs():
    assert len(PATHS) >= 6, PATHS
    for path in PATHS:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [], f"{path.name}: stored with outputs"
                assert cell.execution_count is None, f"{path.name}: stored executed"


@pytest.mark.parametrize("path", PATHS, ids=[p.name for p in PATHS])
def test_notebook_runs(path: Path) -> None:
    import sys

    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(CHECK))
    client = nbclient.NotebookClient(
        nb,
        timeout=BUDGET,
        kernel_name="python3",
        allow_errors=False,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    start = time.perf_counter()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as exc:
        pytest.fail(f"{path.name}: a cell raised\n{exc}")
    elapsed = time.perf_counter() - start
    out = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    assert os.path.realpath(out.strip()) == os.path.realpath(sys.executable)
    assert elapsed < BUDGET, f"{path.name} took {elapsed:.1f} s (budget {BUDGET:.0f} s)"
