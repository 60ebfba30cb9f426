"""Model files: a directory with ``config.json`` and safetensors weights; never pickle.

This module knows the file format only (atomic writes, hashes, schema check); what the
tensors mean is :mod:`xdiffusion.model`'s business.

``config.json`` carries a schema version and the SHA-256 of every weight file; loading
checks both, and tensor names and shapes are checked by a strict ``load_state_dict``.
Files are written to a temporary name and moved into place with ``os.replace``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

__all__ = ["CONFIG", "atomic_write", "bad_model", "read_model", "sha256_of", "write_model"]

CONFIG = "config.json"


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: Path, write: Callable[[str], Any]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then ``os.replace`` it in.

    A crash leaves either the old file or the new one, never a half-written one.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_model(
    path: str | os.PathLike, config: Mapping[str, Any], files: Mapping[str, dict[str, Tensor]]
) -> Path:
    """Write a model directory: each safetensors file, then ``config.json`` with their hashes.

    Parameters
    ----------
    path
        Directory (created if needed; an existing file there is refused).
    config
        JSON-serialisable configuration; ``"files"`` (name → SHA-256) is added.
    files
        File name → tensors (written contiguous, from the CPU).

    Returns
    -------
    Path
        The directory.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"path {str(path)!r} exists and is not a directory")
    path.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for name, tensors in files.items():
        t = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        atomic_write(path / name, lambda tmp, t=t: save_file(t, tmp))
        hashes[name] = sha256_of(path / name)
    text = json.dumps({**config, "files": hashes}, indent=1, default=str)
    atomic_write(path / CONFIG, lambda tmp: Path(tmp).write_text(text))
    return path


def bad_model(path: Path, why: str) -> ValueError:
    """The error for a directory that is not a loadable model."""
    return ValueError(f"{str(path)!r} is not a valid xdiffusion model: {why}")


def read_model(
    path: str | os.PathLike, *, schema_versions: Sequence[int], required: Sequence[str] = ()
) -> tuple[dict[str, Any], dict[str, dict[str, Tensor]]]:
    """Read and verify a model directory written by :func:`write_model`.

    Refuses, with ValueError, a missing or malformed ``config.json``, a schema version not
    in ``schema_versions``, missing ``required`` keys, and weight files that are missing or
    whose SHA-256 differs from the recorded one. Only JSON and safetensors are read.

    Returns
    -------
    config, files
        The configuration (without ``"files"``) and file name → tensors.
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(
            f"path must be the model directory (str or os.PathLike) written by model.save(), "
            f"got {type(path).__name__}"
        )
    path = Path(path)
    if not (path / CONFIG).is_file():
        raise bad_model(path, f"no {CONFIG} (pass the directory written by model.save())")
    try:
        config = json.loads((path / CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise bad_model(path, f"{CONFIG} is not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise bad_model(path, f"{CONFIG} must hold a JSON object")
    version = config.get("schema_version")
    if version not in schema_versions:
        raise bad_model(
            path,
            f"schema_version {version!r} is not supported (expected one of "
            f"{list(schema_versions)})",
        )
    for key in (*required, "files"):
        if key not in config:
            raise bad_model(path, f"{CONFIG} lacks the key {key!r}")
    hashes = config.pop("files")
    if not isinstance(hashes, dict) or not hashes:
        raise bad_model(path, f"{CONFIG} records no weight files")
    files = {}
    for name, digest in hashes.items():
        f = path / name
        if not f.is_file():
            raise bad_model(path, f"weight file {name} is missing")
        if sha256_of(f) != digest:
            raise bad_model(path, f"{name} does not match the SHA-256 recorded in {CONFIG}")
        try:
            files[name] = load_file(f)
        except (SafetensorError, OSError) as err:
            raise bad_model(path, f"{name} is not a safetensors file ({err})") from None
    return config, files
