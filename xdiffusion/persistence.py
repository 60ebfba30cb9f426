"""Model files: a directory with ``config.json`` and safetensors weights; never pickle.

``config.json`` carries a schema version and the SHA-256 of every weight file; loading
checks both, and tensor names and shapes are checked by a strict ``load_state_dict``.
Files are written to a temporary name and moved into place with ``os.replace``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from xdiffusion.model import SCHEMA_VERSION, Denoiser, DiffusionModel, resolve_device
from xdiffusion.nets import UNet3D, UNetConfig
from xdiffusion.transforms import LearnedMonotone, Pipeline

WEIGHTS = "ema.safetensors"
RAW_WEIGHTS = "weights.safetensors"
CONFIG = "config.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_model(model: DiffusionModel, path: str | os.PathLike) -> Path:
    """Write ``model`` to the directory ``path`` (created if needed); returns the path."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"path {str(path)!r} exists and is not a directory")
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.module.state_dict().items()}
    tensors["valid"] = model.valid.detach().cpu().to(torch.uint8).contiguous()
    files = {WEIGHTS: tensors}
    if model.raw_module is not None:
        files[RAW_WEIGHTS] = {
            k: v.detach().contiguous().cpu() for k, v in model.raw_module.state_dict().items()
        }
    hashes = {}
    for name, t in files.items():
        _atomic_write(path / name, lambda tmp, t=t: save_file(t, tmp))
        hashes[name] = _sha256(path / name)
    config = dict(model.config)
    config["files"] = hashes
    text = json.dumps(config, indent=1, default=str)
    _atomic_write(path / CONFIG, lambda tmp: Path(tmp).write_text(text))
    return path


def _bad(path: Path, why: str) -> ValueError:
    return ValueError(f"{str(path)!r} is not a valid xdiffusion model: {why}")


def load(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> DiffusionModel:
    """Load a model directory written by :meth:`DiffusionModel.save`.

    Refuses, with ValueError, a missing or malformed ``config.json``, an unknown schema
    version, weight files whose SHA-256 differs from the recorded one, and tensors with
    missing/unexpected names or changed shapes. Only safetensors and JSON are read.
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(
            f"path must be the model directory (str or os.PathLike) written by model.save(), "
            f"got {type(path).__name__}"
        )
    device = resolve_device(device)  # a bad device fails before any file is read
    path = Path(path)
    if not (path / CONFIG).is_file():
        raise _bad(path, f"no {CONFIG} (pass the directory written by model.save())")
    try:
        config = json.loads((path / CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise _bad(path, f"{CONFIG} is not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise _bad(path, f"{CONFIG} must hold a JSON object")
    version = config.get("schema_version")
    if version != SCHEMA_VERSION:
        raise _bad(path, f"schema_version {version!r} is not supported (expected {SCHEMA_VERSION})")
    for key in ("frames", "grid", "variables", "net", "schedule", "files"):
        if key not in config:
            raise _bad(path, f"{CONFIG} lacks the key {key!r}")
    files = config["files"]
    if WEIGHTS not in files:
        raise _bad(path, f"{CONFIG} records no hash for {WEIGHTS}")
    for name, digest in files.items():
        f = path / name
        if not f.is_file():
            raise _bad(path, f"weight file {name} is missing")
        if _sha256(f) != digest:
            raise _bad(path, f"{name} does not match the SHA-256 recorded in {CONFIG}")
    try:
        net_cfg = UNetConfig.from_dict(config["net"])
        pipelines = [Pipeline.from_config(v["pipeline"], {}) for v in config["variables"]]
        learned = [
            LearnedMonotone(min_grad=float(v.get("min_grad", 0.1))) if v.get("learned") else None
            for v in config["variables"]
        ]
    except (KeyError, TypeError, ValueError) as err:
        raise _bad(path, f"malformed configuration ({err})") from None

    def build(name: str) -> tuple[Denoiser, torch.Tensor | None]:
        try:
            tensors = load_file(path / name)
        except (SafetensorError, OSError) as err:
            raise _bad(path, f"{name} is not a safetensors file ({err})") from None
        valid = tensors.pop("valid", None)
        module = Denoiser(UNet3D(net_cfg), learned)
        try:
            module.load_state_dict(tensors, strict=True)
        except RuntimeError as err:
            msg = str(err).splitlines()
            raise _bad(
                path,
                f"{name} does not fit the configured network: {msg[0]} "
                f"{' '.join(m.strip() for m in msg[1:3])}",
            ) from None
        return module, valid

    ema, valid = build(WEIGHTS)
    raw = build(RAW_WEIGHTS)[0] if RAW_WEIGHTS in files else None
    if valid is None:
        raise _bad(path, f"{WEIGHTS} lacks the 'valid' mask tensor")
    config = {k: v for k, v in config.items() if k != "files"}
    model = DiffusionModel(config, ema, pipelines, valid=valid.bool(), raw_module=raw)
    return model.to(device)
