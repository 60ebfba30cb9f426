"""``examples/quickstart.ipynb`` runs top to bottom in a fresh kernel, in a temporary
directory, and its figures come out as images.

Needs the ``test`` extra's ``nbclient``, ``nbformat`` and ``ipykernel``; skipped (with the
reason) where they are not installed. The notebook is committed without outputs
(checked here too), so the repository holds no stale figures.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (test extra)")
nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (test extra)")
pytest.importorskip("ipykernel", reason="ipykernel is not installed (test extra)")
pytest.importorskip("matplotlib", reason="the notebook draws figures (plot extra)")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"
#: Seconds one cell may take before the run is abandoned.
CELL_TIMEOUT = 300
#: The notebook's promise: about a minute on one CPU thread; this leaves room for a busy
#: machine.
TOTAL_SECONDS = 240.0


def test_quickstart_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    assert all(not c.outputs and c.execution_count is None for c in code)


def test_quickstart_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel inherits it: one thread
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    assert seconds < TOTAL_SECONDS, f"the quickstart took {seconds:.0f} s"
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 6  # loss, ensemble, report, interpolation, forecast, downscaling
    assert (tmp_path / "quickstart-model" / "config.json").is_file()
