"""Reference models shipped with the package: load one and generate in seconds.

``xd.load_pretrained("synthetic-precip")`` returns a model trained long enough to be good
on the package's synthetic precipitation (:func:`reference_data` makes data in its
setting). The files live in ``xdiffusion/pretrained/<name>/``; their SHA-256 are recorded
here and checked at every load, so a damaged installation is refused rather than used.
``scripts/train_reference.py`` retrains a model bit for bit from :data:`RECIPES`.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import xarray as xr

from xdiffusion.datasets import synthetic_precipitation
from xdiffusion.model import DiffusionModel, load

__all__ = ["PRETRAINED", "RECIPES", "list_pretrained", "load_pretrained", "reference_data"]

#: What determines each shipped model: its training data and its ``fit`` arguments.
RECIPES: dict[str, dict[str, Any]] = {
    "synthetic-precip": {
        "description": (
            "small architecture at width 16 on 16 × 16 × 8 windows of synthetic "
            "precipitation (25 km cells, rain moving 2 cells per hour, 60 % dry), "
            "transform='sqrt', 5000 steps of batch 8"
        ),
        "data": {
            "nt": 6000,
            "ny": 16,
            "nx": 16,
            "seed": 0,
            "dx_km": 25.0,
            "wind_kmh": [50.0, 16.7],
            "dry_fraction": 0.6,
        },
        "fit": {
            "frames": 8,
            "transform": "sqrt",
            "steps": 5000,
            "batch_size": 8,
            "lr": 1e-3,
            "warmup": 50,
            "lr_schedule": "constant",  # trained before the cosine default
            "t_sampling": "uniform",  # and before the stratified one
            "seed": 0,
            "net": {"width": 16, "head_dim": 16},
        },
    },
}

#: SHA-256 of every file of each shipped model (``scripts/train_reference.py`` prints them).
PRETRAINED: dict[str, dict[str, str]] = {
    "synthetic-precip": {
        "config.json": "1065931a457b87af4ced33d65938de4b9649f124874e7023c4b6a669a8c33ac7",
        "ema.safetensors": "ac9568d62b88bd9ad660e2e119f4754e129b340fc0ecab978008cf2d740546d3",
        "training.json": "9b704f318f0660dd22079bdec8fce5f9a7abe3021f9b79945580c2dc9f4915ea",
    },
}


def list_pretrained() -> list[str]:
    """Names of the shipped models."""
    return sorted(PRETRAINED)


def _check_name(name: str) -> str:
    if not isinstance(name, str) or name not in PRETRAINED:
        raise ValueError(f"no shipped model named {name!r}; available: {list_pretrained()}")
    return name


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_path(name: str) -> Path:
    """The directory of a shipped model, its files checked against their SHA-256.

    Raises ValueError for an unknown name, a missing file or a file whose hash differs
    (a damaged installation: reinstall xdiffusion).
    """
    name = _check_name(name)
    expected = PRETRAINED[name]
    root = Path(str(resources.files("xdiffusion").joinpath("pretrained", name)))
    if not expected:
        raise ValueError(f"the shipped model {name!r} has no recorded files in this build")
    for file, digest in expected.items():
        path = root / file
        if not path.is_file():
            raise ValueError(
                f"the shipped model {name!r} lacks {file} (looked in {str(root)!r}); "
                "reinstall xdiffusion"
            )
        got = _sha256(path)
        if got != digest:
            raise ValueError(
                f"the shipped model {name!r} is damaged: {file} has SHA-256 {got[:16]}…, "
                f"expected {digest[:16]}…; reinstall xdiffusion"
            )
    return root


def load_pretrained(
    name: str = "synthetic-precip", *, device: str | torch.device = "cpu"
) -> DiffusionModel:
    """A shipped model (see :func:`list_pretrained`), its files' SHA-256 checked first.

    Parameters
    ----------
    name
        ``"synthetic-precip"``: the reference model of :data:`RECIPES` (generate on data from
        :func:`reference_data`).
    device
        Where to put the network.
    """
    return load(model_path(name), device=device)


def reference_data(
    nt: int, *, seed: int = 1, name: str = "synthetic-precip", **kwargs: Any
) -> xr.DataArray:
    """Synthetic precipitation in the setting a shipped model was trained on (grid, cell
    size, advection, dry fraction); ``seed`` ≠ the training seed (0) gives held-out data."""
    d = dict(RECIPES[_check_name(name)]["data"])
    d.update(nt=nt, seed=seed, wind_kmh=tuple(d["wind_kmh"]), **kwargs)
    return synthetic_precipitation(**d)
