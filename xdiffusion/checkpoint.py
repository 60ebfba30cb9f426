"""Crash-safe training checkpoints: safetensors + JSON, atomic writes, resume; never pickle.

A checkpoint after ``step`` completed optimiser steps is two files in one directory:

``ckpt-<step>.safetensors``
    every tensor: ``module.*`` (trained weights), ``ema.*`` (EMA weights) and
    ``optim.<index>.<name>`` (optimiser state such as AdamW's moments and step count).
``ckpt-<step>.json``
    everything else: the step, the optimiser's parameter groups (hyper-parameters) and
    scalar state, the global torch (CPU, CUDA) and numpy RNG states (base64 / lists), the
    loss history, a fingerprint of the fit arguments, and the SHA-256 of the tensor file.

Each file is written to a temporary name and moved into place with ``os.replace``; the JSON
is written last and names the tensor file's hash, so a checkpoint counts only once both
files are complete and agree. A process killed at any instant therefore leaves either the
previous checkpoints or a new complete one; loading skips (with a warning) any newest
checkpoint that is truncated, corrupted or half-written and falls back to the one before,
and refuses a directory where no checkpoint is readable. Unreadable checkpoints are never
deleted: a resumed run moves them into the ``skipped`` sub-directory.

Because training batches and the t/ε generator are functions of (seed, step) only (see
:mod:`xdiffusion.training`), restoring weights, EMA, optimiser and RNG states at step s and
continuing reproduces an uninterrupted run exactly on CPU.
"""

from __future__ import annotations

import base64
import json
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from xdiffusion._version import __version__
from xdiffusion.persistence import atomic_write, sha256_of

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "Checkpoint",
    "Checkpointer",
    "list_checkpoints",
    "load_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_aside",
    "set_rng_state",
]

FORMAT = "xdiffusion-checkpoint"
FORMAT_VERSION = 1
_NAME = re.compile(r"^ckpt-(\d{9})\.(json|safetensors)$")


def _stem(step: int) -> str:
    return f"ckpt-{int(step):09d}"


def list_checkpoints(directory: str | os.PathLike) -> list[int]:
    """Steps of the checkpoint files in ``directory`` (complete or not), ascending."""
    path = Path(directory)
    if not path.is_dir():
        return []
    steps = {int(m.group(1)) for f in path.iterdir() if (m := _NAME.match(f.name))}
    return sorted(steps)


def _jsonable_groups(groups: list[dict]) -> list[dict]:
    out = []
    for g in groups:
        tuples = sorted(k for k, v in g.items() if isinstance(v, tuple))
        out.append(
            {
                **{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()},
                "__tuples__": tuples,
            }
        )
    return out


def _restore_groups(groups: list[dict]) -> list[dict]:
    out = []
    for g in groups:
        g = dict(g)
        for k in g.pop("__tuples__", []):
            g[k] = tuple(g[k])
        out.append(g)
    return out


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(s), dtype=np.uint8).copy())


def rng_state() -> dict[str, Any]:
    """The global RNG states (torch CPU and CUDA, numpy legacy) as JSON-ready values."""
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # noqa: NPY002
    state: dict[str, Any] = {
        "torch": _b64(torch.get_rng_state()),
        "numpy": {
            "name": name,
            "keys": keys.tolist(),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore global RNG states recorded by :func:`rng_state`."""
    torch.set_rng_state(_unb64(state["torch"]))
    n = state["numpy"]
    keys = np.asarray(n["keys"], dtype=np.uint32)
    legacy = (n["name"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"])
    np.random.set_state(legacy)  # noqa: NPY002
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([_unb64(s) for s in cuda])


def _cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().contiguous()


def save_checkpoint(
    directory: str | os.PathLike,
    step: int,
    module: nn.Module,
    ema: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    fingerprint: Mapping[str, Any],
    history: Mapping[str, list] | None = None,
    keep: int = 3,
) -> Path:
    """Write the checkpoint after ``step`` completed steps atomically; keep the newest ``keep``.

    Parameters
    ----------
    directory
        Checkpoint directory (created if needed).
    step
        Number of completed optimiser steps (the step a resumed run starts at).
    module, ema, optimizer
        Trained module, its EMA copy and the optimiser over ``module``'s parameters.
    fingerprint
        JSON-serialisable description of the run; :func:`load_checkpoint` refuses to resume
        a run whose fingerprint differs.
    history
        Loss history so far (stored so a resumed model reports the whole run).
    keep
        Number of checkpoints to keep; older ones are removed after the write. Any with a
        larger step (unreadable files skipped when resuming, or stale ones of an abandoned
        run) are moved into the ``skipped`` sub-directory, never deleted.

    Returns
    -------
    Path
        The JSON file of the new checkpoint.
    """
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {f"module.{k}": _cpu(v) for k, v in module.state_dict().items()}
    tensors.update({f"ema.{k}": _cpu(v) for k, v in ema.state_dict().items()})
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in opt["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{idx}.{k}"] = _cpu(v)
            else:
                scalars.setdefault(str(idx), {})[k] = v
    stem = _stem(step)
    weights = path / f"{stem}.safetensors"
    atomic_write(weights, lambda tmp: save_file(tensors, tmp))
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "step": int(step),
        "xdiffusion_version": __version__,
        "torch_version": torch.__version__,
        "sha256": sha256_of(weights),
        "fingerprint": dict(fingerprint),
        "optimizer": {
            "param_groups": _jsonable_groups(opt["param_groups"]),
            "scalar_state": scalars,
        },
        "rng": rng_state(),
        "history": {k: list(v) for k, v in (history or {}).items()},
    }
    text = json.dumps(meta, default=str)
    json_path = path / f"{stem}.json"
    atomic_write(json_path, lambda tmp: Path(tmp).write_text(text))
    _prune(path, int(step), keep)
    return json_path


def _prune(path: Path, step: int, keep: int) -> None:
    older = [s for s in list_checkpoints(path) if s <= step]
    for s in older[: max(0, len(older) - keep)]:
        for ext in ("json", "safetensors"):  # JSON first: a checkpoint without it is dead
            (path / f"{_stem(s)}.{ext}").unlink(missing_ok=True)
    # Newer files were skipped when resuming (unreadable, or left by an abandoned run):
    # never deleted, only moved out of the way.
    set_aside(path, [s for s in list_checkpoints(path) if s > step])
    for f in path.glob(".ckpt-*.tmp"):  # left by a process killed mid-write
        f.unlink(missing_ok=True)


#: Sub-directory of a checkpoint directory receiving checkpoints skipped when resuming.
SET_ASIDE = "skipped"


def set_aside(directory: str | os.PathLike, steps: list[int]) -> Path | None:
    """Move the files of checkpoints ``steps`` into ``directory/skipped`` (never delete them).

    Used for checkpoints newer than the one a run resumes from: they could not be read
    (truncated, corrupted, half-written) and would otherwise be overwritten or pruned by
    the resumed run. Existing names in the sub-directory are kept (a suffix is added).
    Returns the sub-directory, or None if there was nothing to move.
    """
    path = Path(directory)
    files = [
        path / f"{_stem(s)}.{ext}"
        for s in steps
        for ext in ("json", "safetensors")
        if (path / f"{_stem(s)}.{ext}").exists()
    ]
    if not files:
        return None
    target = path / SET_ASIDE
    target.mkdir(exist_ok=True)
    for f in files:
        dest, k = target / f.name, 0
        while dest.exists():
            k += 1
            dest = target / f"{f.name}.{k}"
        os.replace(f, dest)
    warnings.warn(
        f"moved the unreadable or stale checkpoint(s) at step(s) {sorted(set(steps))} to "
        f"{str(target)!r}; nothing was deleted (inspect or remove them yourself)",
        RuntimeWarning,
        stacklevel=3,
    )
    return target


@dataclass
class Checkpoint:
    """A loaded checkpoint: state to hand to :func:`xdiffusion.training.train`."""

    step: int
    module_state: dict[str, torch.Tensor]
    ema_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    rng: dict[str, Any]
    fingerprint: dict[str, Any]
    history: dict[str, list] = field(default_factory=dict)
    path: Path | None = None

    def restore_rng(self) -> None:
        """Set the global RNG states to those at the checkpoint (dropout draws on them)."""
        set_rng_state(self.rng)


def _read(path: Path, step: int) -> Checkpoint:
    """One checkpoint; raises ValueError describing what is wrong with it."""
    stem = _stem(step)
    js, weights = path / f"{stem}.json", path / f"{stem}.safetensors"
    if not js.is_file():
        raise ValueError(f"{js.name} is missing (the run was stopped while writing it)")
    try:
        meta = json.loads(js.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{js.name} is not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{js.name} is not an xdiffusion checkpoint")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{js.name} has unsupported format_version {meta.get('format_version')}")
    if not weights.is_file():
        raise ValueError(f"{weights.name} is missing")
    if sha256_of(weights) != meta.get("sha256"):
        raise ValueError(f"{weights.name} does not match the SHA-256 in {js.name} (corrupted)")
    try:
        tensors = load_file(weights)
        module = {k[7:]: v for k, v in tensors.items() if k.startswith("module.")}
        ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
        state: dict[int, dict[str, Any]] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, idx, name = k.split(".", 2)
                state.setdefault(int(idx), {})[name] = v
        for idx, d in meta["optimizer"]["scalar_state"].items():
            state.setdefault(int(idx), {}).update(d)
        groups = _restore_groups(meta["optimizer"]["param_groups"])
        return Checkpoint(
            step=int(meta["step"]),
            module_state=module,
            ema_state=ema,
            optimizer_state={"state": state, "param_groups": groups},
            rng=meta["rng"],
            fingerprint=meta["fingerprint"],
            history=meta.get("history", {}),
            path=js,
        )
    except (SafetensorError, OSError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{stem} is malformed ({type(err).__name__}: {err})") from None


def _differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    current = json.loads(json.dumps(dict(current), default=str))  # tuples → lists, as saved
    keys = sorted(set(saved) | set(current))
    return [
        f"{k}: {saved.get(k, '<absent>')!r} in the checkpoint, {current.get(k, '<absent>')!r} now"
        for k in keys
        if saved.get(k) != current.get(k)
    ]


def load_checkpoint(
    directory: str | os.PathLike,
    *,
    fingerprint: Mapping[str, Any] | None = None,
) -> Checkpoint | None:
    """The newest valid checkpoint in ``directory``, or None if there is none.

    Newest checkpoints that are incomplete, truncated or corrupted are skipped with a
    :class:`RuntimeWarning` in favour of the previous one. If checkpoints exist but none
    is readable, ValueError is raised (rather than silently starting afresh over them),
    unless all are merely incomplete (tensor file without its JSON: the process died while
    writing its first checkpoint), where None is returned with a warning. Nothing is
    deleted here.

    Parameters
    ----------
    directory
        Directory written by :func:`save_checkpoint`.
    fingerprint
        If given, the fingerprint of the run about to resume; a checkpoint written with a
        different one raises ValueError naming the differing arguments.
    """
    path = Path(directory)
    skipped: list[str] = []
    complete = False  # some unreadable checkpoint had its JSON: not merely interrupted
    for step in reversed(list_checkpoints(path)):
        try:
            ckpt = _read(path, step)
        except ValueError as err:
            skipped.append(f"step {step}: {err}")
            complete = complete or (path / f"{_stem(step)}.json").is_file()
            continue
        _warn_skipped(path, skipped)
        if fingerprint is not None:
            diff = _differences(ckpt.fingerprint, fingerprint)
            if diff:
                raise ValueError(
                    f"resume=True, but the checkpoint in checkpoint_dir={str(path)!r} was "
                    f"written by a fit with different arguments ({'; '.join(diff)}); pass "
                    "the same data and arguments, or use another checkpoint_dir (or "
                    "resume=False with an empty directory) to start afresh"
                )
        return ckpt
    if skipped and complete:
        raise ValueError(
            f"no checkpoint in checkpoint_dir={str(path)!r} is readable ("
            + "; ".join(skipped)
            + "); nothing was deleted. Repair or move these files away, or pass another "
            "checkpoint_dir, to start afresh"
        )
    _warn_skipped(path, skipped)
    return None


def _warn_skipped(path: Path, skipped: list[str]) -> None:
    for text in skipped:
        warnings.warn(
            f"skipping checkpoint at {text.replace(': ', f' in {str(path)!r}: ', 1)}",
            RuntimeWarning,
            stacklevel=3,
        )


class Checkpointer:
    """A :func:`~xdiffusion.training.train` callback saving every ``every`` steps and at the end.

    Parameters
    ----------
    directory
        Checkpoint directory.
    every
        Period in completed steps.
    keep
        Checkpoints kept.
    total_steps
        Steps of the run (the final step is always saved).
    fingerprint
        Description of the run (see :func:`save_checkpoint`).
    history
        The history dict the training loop extends in place.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        every: int,
        keep: int,
        total_steps: int,
        fingerprint: Mapping[str, Any],
        history: Mapping[str, list] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.every, self.keep, self.total_steps = int(every), int(keep), int(total_steps)
        self.fingerprint = dict(fingerprint)
        self.history = history

    def __call__(
        self, step: int, module: nn.Module, ema: nn.Module, optimizer: torch.optim.Optimizer
    ) -> None:
        done = step + 1
        if done % self.every == 0 or done == self.total_steps:
            save_checkpoint(
                self.directory,
                done,
                module,
                ema,
                optimizer,
                fingerprint=self.fingerprint,
                history=self.history,
                keep=self.keep,
            )
