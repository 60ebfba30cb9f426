"""The Python examples of the documentation run as written.

Every ```` ```python ```` block of ``docs/getting-started.md`` and the block under "In
Python" in ``README.md`` is executed, in order and in one namespace per document (as a
reader pasting them into one session would), in a temporary directory.

Two things are added, both listed here so that a reader can see exactly what differs:

- a *prelude* per document, run first: it makes what the text assumes exists (the
  getting-started page opens ``pr_hourly.nc``, "your own data": a small synthetic file);
- *shrinking substitutions* (``SHRINK``): exact text replacements that cut training steps
  (and give ``fit`` a tiny network), ensemble sizes, grids and lead times so that each
  block runs in seconds on one CPU thread. Each replacement must occur in its document:
  if an edit of the docs removes one, the test fails instead of silently running the
  full-size example.

Nothing else is changed: names, calls and arguments are those of the documents.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

pytest.importorskip("netCDF4", reason="the getting-started example writes a netCDF file")
matplotlib = pytest.importorskip("matplotlib", reason="the examples draw figures")
matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parents[1]
#: Seconds one example block may take, shrunk, on one CPU thread: a guard against a
#: substitution that stopped matching (the full-size example runs for many minutes), with
#: room for a loaded CI machine (the slowest block takes about 15 s alone).
BUDGET_SECONDS = 120.0

PRELUDE = {
    "docs/getting-started.md": (
        "from xdiffusion.datasets import synthetic_precipitation\n"
        "synthetic_precipitation(nt=240, ny=16, nx=16, seed=0).to_netcdf('pr_hourly.nc')\n"
    ),
    "README.md": "",
}
#: A 40 k-parameter network instead of the default 0.9 M one (added to the fit calls).
TINY_NET = {"width": 8, "mults": [1, 2]}
#: (text in the document, replacement): every occurrence is replaced.
SHRINK = {
    "docs/getting-started.md": [
        ("steps=20_000,", f"steps=3, net={TINY_NET},"),
        ("n=20", "n=2"),
        ("time=slice(0, 48)", "time=slice(0, 12)"),
        ("n=10", "n=2"),
        ("lead=24", "lead=6"),
    ],
    "README.md": [
        ("nt=3000, ny=32, nx=32", "nt=400, ny=16, nx=16"),
        ("steps=1500,", f"steps=3, net={TINY_NET},"),
        ("n=10", "n=2"),
        ("n=5", "n=2"),
    ],
}
#: Only the blocks under this heading are run (None: all blocks of the document).
SECTION = {"docs/getting-started.md": None, "README.md": "## In Python"}

FENCE = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks(document: str) -> list[str]:
    """The ```` ```python ```` blocks of ``document`` (of its ``SECTION`` if one is set)."""
    text = (ROOT / document).read_text(encoding="utf-8")
    heading = SECTION[document]
    if heading is not None:
        start = text.index(heading + "\n")
        end = text.find("\n## ", start + len(heading))
        text = text[start : end if end >= 0 else None]
    return FENCE.findall(text)


def shrunk(document: str, blocks: list[str]) -> list[str]:
    joined = "\n# ---- next block ----\n".join(blocks)
    for old, new in SHRINK[document]:
        assert old in joined, f"{document}: the shrinking substitution {old!r} no longer applies"
        joined = joined.replace(old, new)
    return joined.split("\n# ---- next block ----\n")


@pytest.mark.parametrize("document", sorted(PRELUDE))
def test_document_examples_run(document, tmp_path, monkeypatch):
    blocks = python_blocks(document)
    assert blocks, f"no python blocks found in {document}"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__doc_example__"}
    exec(compile(PRELUDE[document], f"{document}:prelude", "exec"), namespace)
    for k, code in enumerate(shrunk(document, blocks)):
        start = time.perf_counter()
        try:
            exec(compile(code, f"{document}:block{k}", "exec"), namespace)
        except Exception as err:  # name the block: the traceback shows its line
            raise AssertionError(f"{document}, python block {k} failed: {err!r}") from err
        seconds = time.perf_counter() - start
        assert seconds < BUDGET_SECONDS, f"{document}, block {k}: {seconds:.0f} s"


def test_generating_example_defines_its_inputs():
    """Every name the getting-started examples use is defined in them (the issue: `gappy`
    and `coarse` were not)."""
    code = "\n".join(python_blocks("docs/getting-started.md"))
    for name in ("gappy", "coarse", "template", "model", "pr"):
        assert re.search(rf"^{name} = ", code, re.MULTILINE), name
