"""The documentation site builds with ``mkdocs build --strict``: no broken link, no page
left out of the nav, and an API reference generated from the docstrings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_docs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed")
    pytest.importorskip("mkdocstrings_handlers.python", reason="the docs extra is not installed")
    site = tmp_path / "site"
    config = ["--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(site)]
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", *config],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("xdiffusion.fit", "DiffusionModel", "spatial_psd", "synthetic_precipitation"):
        assert name in api, name
    for page in ("getting-started", "samplers", "data", "archives"):
        assert (site / page / "index.html").is_file(), page
