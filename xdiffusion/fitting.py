"""``fit``: from a DataArray/Dataset to a trained :class:`~xdiffusion.model.DiffusionModel`.

``fit`` runs named steps: check the arguments (:func:`check_fit_arguments`), read the data
once as a single streaming reduction (per-variable min/max/mean and the static NaN mask),
describe each variable and build its codec (:func:`describe_variables`), choose training
and validation windows (:func:`split_windows`), fingerprint the run for checkpoints
(:func:`run_fingerprint`), train on :func:`xdiffusion.training.diffusion_objective` with
windows read lazily batch by batch, and record the configuration (:func:`model_config`).
"""

from __future__ import annotations

import copy
import hashlib
import os
import platform
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import xarray as xr

from xdiffusion import parallel
from xdiffusion._version import __version__
from xdiffusion.accel import apply_memory_format, compile_network, to_device
from xdiffusion.checkpoint import Checkpointer, list_checkpoints, load_checkpoint, set_aside
from xdiffusion.codec import Codec, VariableCodec
from xdiffusion.core.samplers import get_sampler
from xdiffusion.core.schedule import CosineSchedule
from xdiffusion.engine import resolve_device
from xdiffusion.io.calendar import detect_step
from xdiffusion.io.conform import default_dry_threshold
from xdiffusion.io.convert import Prepared, channel_stats, prepare
from xdiffusion.io.patches import PatchSampler, check_patch, check_patch_size
from xdiffusion.io.spec import DataSpec, GridSpec, VariableSpec
from xdiffusion.io.streaming import check_loader, make_loader
from xdiffusion.io.timefeatures import check_features, n_features
from xdiffusion.io.timefeatures import time_features as time_features_of
from xdiffusion.io.windows import WindowReader, window_starts
from xdiffusion.model import Denoiser, DiffusionModel, migrate_state, schema_version
from xdiffusion.nets import UNet3D, UNetConfig, unet_config
from xdiffusion.nets.encoder import Encoder, EncoderConfig
from xdiffusion.resources import check_training_memory
from xdiffusion.training import (
    DiffusionBatch,
    Objective,
    TrainConfig,
    check_batch_size,
    check_steps,
    check_train_seed,
    diffusion_objective,
    train,
)
from xdiffusion.transforms import Identity, Transform, get_transform
from xdiffusion.validation import (
    check_bool,
    check_int,
    check_number,
    check_positive_int,
)

__all__ = [
    "MAX_DRY_SHARE",
    "check_dry_threshold",
    "check_fit_arguments",
    "data_digest",
    "describe_variables",
    "digest_steps",
    "fit",
    "preserved_global_rng",
    "resolve_dry_thresholds",
    "run_fingerprint",
    "split_windows",
    "training_report",
]

#: Steps whose training losses are averaged for the "final" one in :func:`training_report`
#: (one mini-batch at random noise levels is too noisy to quote alone).
REPORT_LAST_STEPS = 50
#: Relative rise of the validation loss over its best that :func:`training_report` notes.
REPORT_RISE = 0.05

#: Fewer candidate windows than this: no validation split (all train).
MIN_WINDOWS_FOR_VALIDATION = 20
#: Fixed validation batches, drawn once.
VALIDATION_BATCHES = 2
#: Time steps read (spread evenly over the series) for the data digest of a checkpoint.
DIGEST_STEPS = 64
#: Training windows that set the latent encoder's ActNorm before the first step, and the
#: key of their random choice.
ENCODER_INIT_WINDOWS = 64
ENCODER_INIT_KEY = 10**9 + 1


def _transform_for(spec: Any, name: str) -> tuple[Transform, bool]:
    """(fixed transform, learned?) for one variable; ``"learned"`` means identity + h_ω."""
    if isinstance(spec, Mapping) and not {"name"} <= set(spec):
        if name not in spec:
            raise ValueError(f"transform= has no entry for variable {name!r}")
        spec = spec[name]
    if isinstance(spec, str) and spec == "learned":
        return Identity(), True
    try:
        return get_transform(spec), False
    except ValueError as err:
        raise ValueError(f"transform={spec!r}: {err}; or use 'learned'") from None


def check_fit_arguments(
    *,
    frames: Any,
    seed: Any,
    val_fraction: Any,
    net: Any,
    sampler: Any,
    sampling_steps: Any,
    min_grad: Any,
    dry_threshold: Any,
    lambda_min: Any,
    lambda_max: Any,
    progress: Any,
    checkpoint_dir: Any,
    checkpoint_every: Any,
    keep_checkpoints: Any,
    resume: Any,
    patch: Any = None,
) -> dict[str, Any]:
    """Check the arguments that need no data; returns them as plain Python values.

    ``patch`` comes back as ``(ny, nx)`` or None (its size is checked against the grid and
    the network by :func:`check_patch_size` once they are known).
    """
    out = {
        "patch": check_patch(patch),
        "frames": check_positive_int(frames, "frames"),
        "seed": check_train_seed(seed),
        "val_fraction": check_number(val_fraction, "val_fraction", minimum=0.0, maximum=1.0),
        "sampling_steps": check_positive_int(sampling_steps, "sampling_steps", allow_none=True),
        "min_grad": check_number(min_grad, "min_grad", minimum=0.0, exclusive_minimum=True),
        "dry_threshold": check_dry_threshold(dry_threshold),
        "lambda_min": check_number(lambda_min, "lambda_min"),
        "lambda_max": check_number(lambda_max, "lambda_max"),
        "progress": check_bool(progress, "progress"),
        "resume": check_bool(resume, "resume"),
    }
    if out["val_fraction"] >= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if net is not None and not isinstance(net, Mapping):
        raise TypeError(
            f"net must be a mapping of network settings such as {{'width': 32}}, got "
            f"{type(net).__name__}"
        )
    if sampler is not None:
        get_sampler(sampler)  # fail now rather than at the first sample() after training
    if checkpoint_dir is None:
        if out["resume"]:
            raise ValueError("resume=True needs checkpoint_dir= (the directory to resume from)")
        return out
    out["checkpoint_every"] = check_positive_int(checkpoint_every, "checkpoint_every")
    out["keep_checkpoints"] = check_positive_int(keep_checkpoints, "keep_checkpoints")
    if not isinstance(checkpoint_dir, str | os.PathLike):
        raise TypeError(
            f"checkpoint_dir must be a path (str or os.PathLike), got "
            f"{type(checkpoint_dir).__name__}"
        )
    if os.path.exists(checkpoint_dir) and not os.path.isdir(checkpoint_dir):
        raise ValueError(f"checkpoint_dir={str(checkpoint_dir)!r} exists and is not a directory")
    if not out["resume"] and list_checkpoints(checkpoint_dir):
        raise ValueError(
            f"checkpoint_dir={str(checkpoint_dir)!r} already holds checkpoints; pass "
            "resume=True to continue from them, or use an empty directory"
        )
    return out


def check_dry_threshold(value: Any) -> float | str | dict[str, float | str]:
    """``fit``'s ``dry_threshold``: ``"auto"``, a number, or a mapping variable → either."""
    if isinstance(value, Mapping):
        return {str(k): check_dry_threshold(v) for k, v in value.items()}  # type: ignore[misc]
    if isinstance(value, str):
        if value != "auto":
            raise ValueError(
                f"dry_threshold must be 'auto', a number in the data's units or a mapping "
                f"variable → either, got {value!r}"
            )
        return value
    return check_number(value, "dry_threshold")


def resolve_dry_thresholds(value: Any, p: Prepared) -> tuple[list[float], list[str]]:
    """Per variable of ``p``: its dry threshold in data units and how it was found.

    ``"auto"`` is :data:`~xdiffusion.io.conform.DRY_RATE` (0.01 mm h-1) in the variable's
    ``units`` (:func:`~xdiffusion.io.conform.default_dry_threshold`); a number is taken
    as given, in the data's units.
    """
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(p.variables))
        if unknown:
            raise ValueError(
                f"dry_threshold has entries for {unknown}, which are not variables of the "
                f"data (its variables are {list(p.variables)})"
            )
    step = None
    if p.time is not None:
        try:
            step = detect_step(p.time)
        except ValueError:  # an irregular axis: no step of known length
            step = None
    values, how = [], []
    for name, arr in zip(p.variables, p.arrays):
        v = value.get(name, "auto") if isinstance(value, Mapping) else value
        if v == "auto":
            units = arr.attrs.get("units")
            v, why = default_dry_threshold(str(units).strip() if units is not None else None, step)
        else:
            why = "given"
        values.append(float(v))
        how.append(why)
    return values, how


#: A dry threshold above this share of a variable's positive training values is not a
#: dry threshold for it (most likely given in other units): it is not used to decode.
MAX_DRY_SHARE = 0.05


def _dry_below(
    stats: Mapping[str, np.ndarray],
    c: int,
    lower: float | None,
    dry_threshold: float,
    name: str,
    how: str | None = None,
) -> float | None:
    """The value below which decoded data is dry (``VariableCodec.dry_below``): the dry
    threshold, for a transform bounded at 0 and data with exact zeros, unless it would
    call more than :data:`MAX_DRY_SHARE` of the training data's rain dry (then a warning
    names the units, and None)."""
    if lower != 0.0 or float(stats["min"][c]) != 0.0 or not dry_threshold > 0.0:
        return None
    n_pos = int(stats.get("n_positive", [0])[c])
    share = int(stats.get("n_below", [0])[c]) / n_pos if n_pos else 0.0
    if share > MAX_DRY_SHARE:
        warnings.warn(
            f"dry_threshold={dry_threshold:g}{f' ({how})' if how else ''} is above {share:.0%} "
            f"of the positive values of {name!r}: it is not a dry threshold for these data "
            "(other units?). Generated values are not set to 0 below it, and nll's dry class "
            "and the learned transform's mask use it as given; pass dry_threshold in the "
            "data's units",
            UserWarning,
            stacklevel=4,
        )
        return None
    return float(dry_threshold)


def describe_variables(
    p: Prepared,
    stats: Mapping[str, np.ndarray],
    transform: Any,
    *,
    min_grad: float,
    dry_threshold: Sequence[float],
    dry_how: Sequence[str] | None = None,
) -> tuple[Codec, list[dict[str, Any]]]:
    """Each variable's codec and description (name, attrs, transform, statistics);
    ``dry_threshold`` has one value per variable, in its units.

    Raises ValueError for data below a transform's lower bound and constant variables.
    """
    if isinstance(transform, Mapping) and not {"name"} <= set(transform):
        unknown = [k for k in transform if k not in p.variables]
        missing = [v for v in p.variables if v not in transform]
        if missing:
            raise ValueError(
                f"transform= has no entry for variable {missing[0]!r}"
                + (f" (its keys {unknown} are not variables of the data)" if unknown else "")
                + f"; give one for each of {list(p.variables)}"
            )
        if unknown:
            raise ValueError(
                f"transform= has entries for {unknown}, which are not variables of the data "
                f"(its variables are {list(p.variables)}); fix the names or drop them"
            )
    codecs, described = [], []
    for c, name in enumerate(p.variables):
        tr, is_learned = _transform_for(transform, name)
        mn, mx = float(stats["min"][c]), float(stats["max"][c])
        lo = tr.lower
        if lo is not None and mn < lo:
            raise ValueError(
                f"variable {name!r} has values down to {mn:g}, below the lower bound {lo} of "
                f"transform {tr.name!r}; clip the data first (da.clip(min={lo})) or use "
                "transform='none'"
            )
        if not mx > mn:
            raise ValueError(
                f"data variable {name!r} is constant ({mn:g}): zero-variance data cannot be "
                "scaled; check the variable or the time selection"
            )
        codec = VariableCodec.fit(
            mn,
            mx,
            tr,
            learned=is_learned,
            min_grad=min_grad,
            dry_below=_dry_below(
                stats, c, lo, dry_threshold[c], name, dry_how[c] if dry_how else None
            ),
        )
        codecs.append(codec)
        described.append(
            {
                "name": name,
                "attrs": {k: _jsonable(v) for k, v in p.arrays[c].attrs.items()},
                "transform": tr.to_config(),
                "learned": bool(is_learned),
                "codec": codec.to_config(),
                "min": mn,
                "max": mx,
                "mean": float(stats["mean"][c]),
                "dry_threshold": float(dry_threshold[c]),
                "min_grad": float(min_grad),
            }
        )
    return Codec(codecs), described


def split_windows(
    starts: np.ndarray, frames: int, val_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation window starts: held-out windows from the end, not overlapping.

    With fewer than :data:`MIN_WINDOWS_FOR_VALIDATION` windows nothing is held out.
    """
    n_val = int(len(starts) * val_fraction) if len(starts) >= MIN_WINDOWS_FOR_VALIDATION else 0
    train_starts = starts[: len(starts) - n_val - (frames - 1 if n_val else 0)]
    val_starts = starts[len(starts) - n_val :]
    if train_starts.size == 0:
        return starts, starts[:0]
    return train_starts, val_starts


@dataclass
class _Batches:
    """Reads windows and turns them into :class:`~xdiffusion.training.DiffusionBatch`."""

    reader: WindowReader
    codec: Codec
    valid: torch.Tensor
    frames: int
    device: torch.device
    features: torch.Tensor | None
    #: Random crops of the grid (``fit(patch=)``); None trains on the whole grid.
    patches: PatchSampler | None = None
    #: ``(rank, world_size)``: crops are keyed by a window's row in the global batch.
    shard: tuple[int, int] = (0, 1)

    def __call__(
        self, idx: np.ndarray, x: np.ndarray | None = None, *, step: int | None = None
    ) -> DiffusionBatch:
        """The batch of windows ``idx`` (read unless given as ``x``, (B, C, F, Y, X)).

        With :attr:`patches`, each window is cropped at an offset keyed by (seed,
        ``step``, its row in the global batch), and the static mask with it; ``step``
        None (validation) keys the offsets by the window starts instead.
        """
        x = self.reader.read(idx) if x is None else x
        valid = self.valid.cpu()[None, :, None]
        if self.patches is not None:
            rank, world = self.shard
            rows = np.arange(len(idx)) if step is None else rank + world * np.arange(len(idx))
            oy, ox, usable = self.patches.offsets(rows, step=step, starts=idx)
            x = self.patches.crop(x, oy, ox)
            valid = torch.from_numpy(self.patches.crop_valid(oy, ox, usable))[:, :, None]
        x = torch.from_numpy(x)
        finite = torch.isfinite(x)
        mask = finite & valid
        x = torch.where(finite, x, torch.zeros_like(x))
        with torch.no_grad():
            scaled = self.codec.to_scaled(x)
        cond = None
        if self.features is not None:
            cond = torch.stack([self.features[int(s) : int(s) + self.frames] for s in idx])
            cond = to_device(cond, self.device)
        # pinned memory and non-blocking copies on CUDA; a plain .to on the CPU
        return DiffusionBatch(to_device(scaled, self.device), to_device(mask, self.device), cond)


def _sha256(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\x00")
    return h.hexdigest()


def _array_sha256(values: np.ndarray) -> str:
    """Digest of an array's values: dtype, shape and bytes (NaN and -0.0 made canonical)."""
    a = np.asarray(values)
    if np.issubdtype(a.dtype, np.datetime64):
        a = a.astype("datetime64[ns]").view(np.int64)
    elif np.issubdtype(a.dtype, np.floating):
        a = np.where(np.isnan(a), np.nan, a + 0.0).astype(a.dtype)
    elif a.dtype == object:  # cftime dates (their calendar too) or other objects
        text = "|".join(f"{getattr(v, 'calendar', '')}:{v}" for v in a.ravel())
        return _sha256("object", str(a.shape), text)
    return _sha256(str(a.dtype), str(a.shape), np.ascontiguousarray(a).tobytes())


def digest_steps(n_time: int, count: int = DIGEST_STEPS) -> np.ndarray:
    """Up to ``count`` time indices spread evenly over ``n_time`` steps (both ends in)."""
    return np.unique(np.linspace(0, n_time - 1, min(n_time, count)).round().astype(np.int64))


def data_digest(
    p: Prepared,
    stats: Mapping[str, np.ndarray],
    features: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Content digest of the training data, for checkpoint fingerprints.

    Shape, minimum and maximum do not tell a mirrored grid, time-reversed values, another
    realisation rescaled to the same range or another NaN mask from the data a run was
    started on. This digest holds the SHA-256 of the values at :data:`DIGEST_STEPS` time
    steps spread over the series (read lazily: a dask archive is not loaded whole), of
    every coordinate of the time and grid axes, of the static valid-cell mask and of the
    time-feature table, and the exact number of finite values per variable (from the
    one pass over the data that gives the statistics).
    """
    idx = digest_steps(p.shape[1])
    sample = p.data[:, idx]
    if hasattr(sample, "compute"):
        sample = sample.compute()
    out: dict[str, Any] = {
        "data_values_sha256": _array_sha256(np.asarray(sample, dtype=np.float32)),
        "data_values_steps": [int(i) for i in idx],
        "data_finite_count": [int(n) for n in np.asarray(stats["n_finite"]).ravel()],
        "static_valid_sha256": _array_sha256(np.asarray(stats["static_valid"], dtype=bool)),
    }
    template = p.arrays[0]
    for axis in ("T", "Y", "X"):
        dim = p.axes.get(axis)
        if dim is not None:
            coord = (
                template[dim].values if dim in template.coords else np.arange(template.sizes[dim])
            )
            out[f"coord_{axis.lower()}_sha256"] = _array_sha256(coord)
    out["time_features_sha256"] = (
        None if features is None else _array_sha256(features.cpu().numpy())
    )
    return out


def run_fingerprint(
    p: Prepared,
    stats: Mapping[str, np.ndarray],
    described: Sequence[Mapping[str, Any]],
    net_cfg: UNetConfig,
    cfg: TrainConfig,
    args: Mapping[str, Any],
    *,
    n_windows: int,
    features: Sequence[str],
    loader: Mapping[str, Any],
    digest: Mapping[str, Any] | None = None,
    preset: str | None = None,
    latent: Mapping[str, Any] | None = None,
    objective: Objective | None = None,
) -> dict[str, Any]:
    """What must be equal for a checkpoint to be resumed by this run.

    The data's shape, names and range, its content ``digest`` (:func:`data_digest`), and
    every hyper-parameter that changes the trained weights or the recorded history (all
    of :class:`~xdiffusion.training.TrainConfig` but ``steps``, which may be raised to
    train longer), the crop size ``args["patch"]`` of a patch run included.
    """
    # a constant schedule (and independent t draws) leave no key, so checkpoints written
    # before these were settings still resume with lr_schedule="constant" (t_sampling="uniform")
    train_cfg = {
        k: v
        for k, v in cfg.to_dict().items()
        if k != "steps"
        and not (k == "lr_schedule" and v == "constant")
        and not (k == "t_sampling" and v == "uniform")
    }
    return {
        "data_shape": [int(s) for s in p.shape],
        "variables": list(p.variables),
        "data_min": [float(v) for v in stats["min"]],
        "data_max": [float(v) for v in stats["max"]],
        "frames": args["frames"],
        "transforms": [{"transform": v["transform"], "learned": v["learned"]} for v in described],
        "net": net_cfg.to_dict(),
        "seed": args["seed"],
        "batch_size": int(cfg.batch_size),
        "lr": float(cfg.lr),
        **({"lr_schedule": cfg.lr_schedule} if cfg.lr_schedule != "constant" else {}),
        "warmup": int(cfg.warmup),
        "ema_decay": float(cfg.ema_decay),
        "grad_clip": cfg.grad_clip,
        "weight_decay": float(cfg.weight_decay),
        "lambda": [args["lambda_min"], args["lambda_max"]],
        "min_grad": args["min_grad"],
        # one number while all variables share it, as before per-variable thresholds
        "dry_threshold": (
            args["dry_threshold"][0]
            if len(set(args["dry_threshold"])) == 1
            else list(args["dry_threshold"])
        ),
        "val_fraction": args["val_fraction"],
        "n_windows": int(n_windows),
        "time_features": list(features),
        "loader": dict(loader),
        "val_every": int(cfg.val_every),
        "transform_lr_scale": float(cfg.transform_lr_scale),
        "train_config": train_cfg,
        "preset": preset,
        # only patch runs carry the key: whole-grid runs keep their fingerprint
        **({"patch": list(args["patch"])} if args.get("patch") else {}),
        # likewise only latent models and non-default objectives
        **({"latent": dict(latent)} if latent else {}),
        **(
            {"objective": objective.to_dict()}
            if objective is not None and objective != Objective()
            else {}
        ),
        **dict(digest or {}),
    }


def data_spec(p: Prepared) -> DataSpec:
    """What the model records of its training data (checked again at generation time)."""
    variables = tuple(VariableSpec.from_array(n, a) for n, a in zip(p.variables, p.arrays))
    grid = GridSpec.from_array(p.arrays[0], p.axes["Y"], p.axes["X"])
    # the step (hourly, daily, monthly, ...) the model learnt its dynamics at: inputs on
    # another step are refused at generation time (inputs.check_time_step)
    step = detect_step(p.time) if p.time is not None else None
    return DataSpec(variables, grid, time_step=step.to_config() if step is not None else None)


def model_config(
    data: xr.DataArray | xr.Dataset,
    p: Prepared,
    described: list[dict[str, Any]],
    net_cfg: UNetConfig,
    schedule: CosineSchedule,
    cfg: TrainConfig,
    args: Mapping[str, Any],
    *,
    sampler: str | None,
    features: Sequence[str],
    device: torch.device,
    seconds: float,
    n_windows: int,
    n_val_windows: int,
    history: Mapping[str, list],
    latent: Mapping[str, Any] | None = None,
    objective: Objective | None = None,
) -> dict[str, Any]:
    """The model's ``config`` (schema :func:`~xdiffusion.model.schema_version`: 3 with a
    latent, else 2)."""
    config = {
        "schema_version": 0,
        "xdiffusion_version": __version__,
        "frames": args["frames"],
        "grid": [int(p.shape[2]), int(p.shape[3])],
        "variables": described,
        "data": data_spec(p).to_config(),
        "net": net_cfg.to_dict(),
        "schedule": schedule.to_dict(),
        "sampling": {"sampler": sampler, "steps": args["sampling_steps"]},
        "time_features": list(features),
        "training": {
            **cfg.to_dict(),
            "device": str(device),
            "seconds": round(seconds, 2),
            "n_windows": int(n_windows),
            "n_val_windows": int(n_val_windows),
            "data_shape": [int(s) for s in p.shape],
            "data_name": str(getattr(data, "name", None) or ""),
            "patch": list(args["patch"]) if args.get("patch") else None,
            "compile": bool(args.get("compile", False)),
            "torch_version": torch.__version__,
            "python": platform.python_version(),
            "objective": (objective or Objective()).to_dict(),
            "history": dict(history),
        },
    }
    if latent:
        config["latent"] = dict(latent)
    config["schema_version"] = schema_version(config)
    return config


@contextmanager
def preserved_global_rng(device: torch.device | None = None) -> Iterator[None]:
    """Restore the global torch (CPU and CUDA) and numpy RNG states on exit.

    ``fit`` seeds the global torch RNG (network initialisation and dropout draw on it) and
    a resumed fit sets the global states saved in its checkpoint; neither may leak into
    the caller's program. On a CUDA ``device`` the CUDA generators are initialised first,
    so that their state (and any seed the caller queued) is captured.
    """
    cpu = torch.get_rng_state()
    legacy = np.random.get_state()  # noqa: NPY002
    cuda = None
    if torch.cuda.is_available() and (
        torch.cuda.is_initialized() or (device is not None and device.type == "cuda")
    ):
        cuda = torch.cuda.get_rng_state_all()
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        np.random.set_state(legacy)  # noqa: NPY002
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _resume(
    checkpoint_dir: str | os.PathLike,
    fingerprint: Mapping[str, Any],
    cfg: TrainConfig,
    module: Denoiser,
    *,
    resume: bool,
) -> tuple[dict[str, list], dict[str, Any]]:
    """(history, train() resume arguments) from the newest readable checkpoint.

    Raises ValueError if the checkpoint was written by another run, has done more steps
    than ``cfg.steps``, or none in the directory is readable. Unreadable checkpoints newer
    than the one resumed are moved into the ``skipped`` sub-directory, never deleted.
    """
    ckpt = load_checkpoint(checkpoint_dir, fingerprint=fingerprint) if resume else None
    if ckpt is None:
        if resume:
            set_aside(checkpoint_dir, list_checkpoints(checkpoint_dir))
        return {}, {}
    if ckpt.step > cfg.steps:
        raise ValueError(
            f"steps={cfg.steps} is fewer than the {ckpt.step} steps already done by the "
            f"checkpoint in checkpoint_dir={str(checkpoint_dir)!r}; pass steps >= {ckpt.step}"
        )
    set_aside(checkpoint_dir, [s for s in list_checkpoints(checkpoint_dir) if s > ckpt.step])
    module.load_state_dict(migrate_state(ckpt.module_state))
    ema = copy.deepcopy(module).requires_grad_(False)
    ema.load_state_dict(migrate_state(ckpt.ema_state))
    ckpt.restore_rng()  # dropout draws continue as in an uninterrupted run
    return ckpt.history, {
        "start_step": ckpt.step,
        "optimizer_state": ckpt.optimizer_state,
        "ema": ema,
    }


def fit(
    data: xr.DataArray | xr.Dataset,
    *,
    frames: int = 8,
    transform: Any = "sqrt",
    steps: int = 2000,
    batch_size: int = 16,
    lr: float = 3e-4,
    warmup: int = 100,
    lr_schedule: str = "cosine",
    t_sampling: str = "stratified",
    ema_decay: float = 0.995,
    grad_clip: float | None = 1.0,
    seed: int = 0,
    device: str | torch.device = "auto",
    progress: bool = True,
    dims: Mapping[str, str] | None = None,
    variables: Sequence[str] | None = None,
    preset: str = "small",
    net: Mapping[str, Any] | None = None,
    val_fraction: float = 0.1,
    val_every: int = 100,
    lambda_min: float = -30.0,
    lambda_max: float = 30.0,
    min_grad: float = 0.1,
    dry_threshold: float | Mapping[str, float | str] | str = "auto",
    transform_lr_scale: float = 10.0,
    sampler: str | None = None,
    sampling_steps: int | None = None,
    time_features: Sequence[str] | str | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
    keep_checkpoints: int = 3,
    resume: bool = False,
    loader: str = "auto",
    buffer_chunks: int = 4,
    patch: int | Sequence[int] | None = None,
    compile: bool = False,
    latent_dim: int | None = None,
    objective: str = "weighted",
    beta: float = 1.0,
    free_bits: float = 0.0,
    encoder: Mapping[str, Any] | None = None,
    high_noise: float = 0.0,
    snr_cap: float | None = None,
    lambda_shift: float = 0.0,
    multiscale: bool = False,
) -> DiffusionModel:
    """Train a spatio-temporal diffusion model on ``data`` (unconditional, or conditioned
    on a learned latent w with ``latent_dim``).

    Parameters
    ----------
    data
        (time, y, x) DataArray, or Dataset whose ``variables`` are learned jointly as
        channels. May be dask-backed: it is never loaded whole.
    frames
        Window length in time steps (Herbert (2023) used 10).
    transform
        ``"none"``, ``"sqrt"``, ``"log1p"``, ``"learned"`` (eq. 4.13–4.15), a
        :class:`~xdiffusion.transforms.Transform`, or a mapping variable → one of these.
    steps, batch_size, lr, warmup, lr_schedule, t_sampling, ema_decay, grad_clip
        Optimisation (see :class:`~xdiffusion.training.TrainConfig`). ``lr_schedule``:
        ``"cosine"`` (default: the rate decays to 0.1 × ``lr`` at the last step; at equal
        CPU time it gave samples 3 × closer to the data's spectra than a constant rate,
        docs/quality.md) or ``"constant"``; ``t_sampling``: each batch's diffusion times
        one per stratum of [0, 1) (``"stratified"``, default: the same loss in
        expectation with less variance; at 60 CPU-minutes spectra 2.8 × and the
        0.99-quantile 3.6 × closer to the data's, docs/quality.md) or drawn independently
        (``"uniform"``: the default before, which checkpoints written before resume with;
        :class:`~xdiffusion.training.TrainConfig`); ``steps`` at most
        999 999 999 (checkpoint files number steps with 9 digits).
    seed
        Seeds initialisation, window order, t and ε: same seed, same CPU → same model.
        The caller's global torch and numpy RNG states are restored when fit returns.
    device
        ``"auto"`` (CUDA if available; bf16 autocast there), ``"cpu"``, ``"cuda"``…
    progress
        tqdm progress bar, and at the end one line on stderr with the final training loss
        and the final and best validation loss (:func:`training_report`); the whole
        learning curve is :attr:`DiffusionModel.history
        <xdiffusion.model.DiffusionModel.history>` either way.
    dims
        Axis overrides, e.g. ``{"T": "time", "Y": "rlat", "X": "rlon"}``.
    variables
        Dataset variables to use (default: all with the time and grid axes).
    preset, net
        Network preset (``"small"`` or ``"reference"``) and overrides of its settings.
    val_fraction
        Share of windows, taken from the end of the series, held out for validation loss.
    lambda_min, lambda_max
        Log-SNR range of the schedule (eq. 2.59).
    min_grad
        Learned transform: minimum-gradient coefficient (eq. 4.15).
    dry_threshold
        The value, in the data's units, below which a value counts as dry: generated
        values below it are decoded to exact zeros (for a transform bounded at 0 and data
        with exact zeros), ``model.nll`` counts values below it as one dry class, and the
        learned transform's log-derivatives enter the loss only above it (the mask set M
        of eq. 4.14). ``"auto"`` (default): 0.01 mm h-1 of water in each variable's
        ``units`` (0.24 for ``mm day-1``, 2.8e-6 for ``kg m-2 s-1``; for an amount per step
        such as ``mm`` or ``kg m-2``, 0.01 mm h-1 times the time step); without units, or
        units of another quantity, 0.01 in the data's units. A number, or a mapping
        variable → number or ``"auto"``, is used as given.
    transform_lr_scale
        Learning-rate multiplier of the learned transforms relative to ``lr`` (default 10:
        at the network's rate the small h_ω barely moves in a short fit).
    time_features
        Condition the network on features of the time coordinate: ``"season"`` and/or
        ``"hour"`` (sin/cos of the phase in the year and the day, any calendar). Sampling
        then builds them from the template's (or the known data's) time stamps, so a July
        template gives July-like fields.
    sampler, sampling_steps
        Default sampler of the fitted model and its step count. None: the library's
        per-task defaults, ``dpmpp_2m`` with 20 steps for sample, 25 for interpolate and
        downscale, ``dpmpp_2m_sde`` with 25 for forecast (docs/samplers.md,
        docs/conditional.md).
    checkpoint_dir
        Directory for crash-safe checkpoints (safetensors + JSON, written atomically; see
        :mod:`xdiffusion.checkpoint`); None writes none.
    checkpoint_every, keep_checkpoints
        Checkpoint period in steps (the last step is always saved) and how many to keep.
    resume
        Continue from the newest valid checkpoint in ``checkpoint_dir`` (weights, EMA,
        optimiser, RNG state and data position): on CPU the result equals an uninterrupted
        run's. Starts afresh if there is none; raises ValueError if it was written with
        other data (a content digest: values at 64 time steps spread over the series,
        coordinates, valid-cell mask, time features, count of finite values) or other
        arguments, and if checkpoints exist but none is readable. Unreadable checkpoints
        newer than the one resumed are moved into ``checkpoint_dir/skipped``, never
        deleted. ``steps`` may be raised to train longer.
    loader, buffer_chunks
        How training windows are read (:mod:`xdiffusion.io.streaming`): ``"chunked"``
        reads ``buffer_chunks`` whole time chunks at a time into a shuffle buffer and
        prefetches the next ones in a background thread (memory bounded by the buffer, for
        archives larger than memory); ``"random"`` reads each window on its own (fine in
        memory, slow on chunked stores); ``"auto"``: chunked for dask-backed data, random
        otherwise. Either way batches depend on (seed, step) only, so resuming stays exact.
    patch
        Train on random spatial crops of this many cells, ``ny = nx = patch`` or
        ``(ny, nx)``, instead of the whole grid (:mod:`xdiffusion.io.patches`): every
        window of a batch is cropped at its own offset, drawn from (seed, step, row) so
        that runs are reproducible and resumable, with the static NaN mask cropped
        alongside; a crop with under 10 % valid cells is redrawn (up to 8 draws), then
        left out of the loss. Validation windows are cropped at fixed offsets. Each side
        must be at most the grid's and a multiple of the network's downsampling
        ``2**(levels − 1)``. The model still records the whole grid (``grid``, the valid
        mask, ``config["data"]["grid"]``) and generates on it or on any sub-region of it
        (the network runs on any grid size); ``config["training"]["patch"]`` and the
        checkpoint fingerprint record the crop size. None (default): the whole grid.
    compile
        Run the network's forward through ``torch.compile`` during training (the first
        steps then include compilation; worth it for long runs on a GPU). The EMA
        weights used for validation and the returned model run eagerly (compile them for
        generation with :meth:`DiffusionModel.compile
        <xdiffusion.model.DiffusionModel.compile>`). Raises
        :class:`~xdiffusion.accel.CompileError` if ``torch.compile`` is unavailable or
        fails (never a silent fallback). Recorded as ``config["training"]["compile"]``;
        not part of the checkpoint fingerprint (a run may be resumed with or without
        it). Off by default; compiled kernels may round differently from eager ones.
    latent_dim
        Size k of a latent vector w per window (representation learning, seed 003;
        docs/latent.md): an encoder E_φ (:class:`~xdiffusion.nets.encoder.Encoder`)
        infers q(w | x) = N(μ, σ²) from each window, one reparameterised draw of w
        conditions the network through its own projection into the FiLM input (beside
        λ and any time features), and the KL(q(w | x) ‖ N(0, I)) joins the loss. The
        encoder trains, averages (EMA) and saves with the network (model schema 4). The
        model then offers :meth:`~xdiffusion.model.DiffusionModel.encode`,
        :meth:`~xdiffusion.model.DiffusionModel.reconstruct` and ``latent=`` in its
        generating methods. None or 0 (default): an unconditional model, as before.
    objective
        ``"weighted"`` (default): the thesis's v-loss (eq. 2.68), plus ``beta`` · KL per
        element with a latent — good samples, but not a bound. ``"elbo"``: the variational
        bound in nats per element (prior, diffusion term with λ ~ U(λmin, λmax), Gaussian
        decoder, and the KL; :class:`~xdiffusion.training.Objective`), a true bound on
        −log p of the transformed data with ``free_bits=0``; usable without a latent too.
    beta
        Weight of the KL in ``"weighted"`` (per element, like the bound's KL / N).
    free_bits
        Nats per latent dimension (batch mean) below which the KL costs nothing, so that
        latent dimensions are not switched off early (Kingma et al. 2016); 0: none.
    encoder
        Overrides of the encoder's architecture
        (:class:`~xdiffusion.nets.encoder.EncoderConfig`: ``width``, ``levels``,
        ``pooling``). ``{"pooling": "mean"}`` builds the encoder of models fitted before
        statistics pooling became the default, e.g. to resume their checkpoints.
    high_noise
        Latent models with ``"weighted"``: the share of each batch trained at the highest
        noise levels (t ~ U(0.99, 1)), where only w tells the network about the window
        (:attr:`~xdiffusion.training.Objective.high_noise`). 0 (default): t ~ U(0, 1).
        With 0.25 a linear probe of the latent for the window intensity rose by 0.03 on
        average over three seeds, not consistently, so it is not the default
        (docs/latent.md).
    snr_cap
        Cap γ on the v-loss's weight of the x-error, 1 + SNR, at 1 + γ
        (:attr:`~xdiffusion.training.Objective.snr_cap`): less weight on the lowest noise
        levels. None (default): the method's loss (eq. 2.68). An ablation of
        docs/quality.md.
    lambda_shift
        Train at log-SNR λ(t) + ``lambda_shift`` (the shifted cosine schedule,
        :attr:`~xdiffusion.training.Objective.lambda_shift`); negative values train more
        at high noise, where a window's mean intensity and its large scales are decided.
        0 (default): eq. 2.68. Sampling is unchanged. See docs/quality.md.
    multiscale
        Average the v-loss over spatial scales and the window mean
        (:attr:`~xdiffusion.training.Objective.multiscale`), so that large scales weigh
        as much as fine detail. False (default): eq. 2.68. See docs/quality.md.

    Notes
    -----
    On CUDA the training runs under bf16 autocast (the codec, h_ω, the loss and its
    reductions stay float32), the convolution weights are stored channels-last, and
    batches are copied from pinned host memory with non-blocking copies. None of this
    happens on the CPU, whose results are bit-reproducible.
    """
    t0 = time.perf_counter()
    args = check_fit_arguments(
        frames=frames,
        seed=seed,
        val_fraction=val_fraction,
        net=net,
        sampler=sampler,
        sampling_steps=sampling_steps,
        min_grad=min_grad,
        dry_threshold=dry_threshold,
        lambda_min=lambda_min,
        lambda_max=lambda_max,
        progress=progress,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints,
        resume=resume,
        patch=patch,
    )
    args["compile"] = check_bool(compile, "compile")
    k = check_int(latent_dim, "latent_dim", minimum=0, allow_none=True) or 0
    if not isinstance(objective, str):
        raise TypeError(f"objective must be one of {['weighted', 'elbo']}, got {objective!r}")
    if high_noise and not k:
        raise ValueError("high_noise= trains the latent at high noise: pass latent_dim= too")
    obj = Objective(
        objective,
        beta=beta,
        free_bits=free_bits,
        high_noise=high_noise,
        snr_cap=snr_cap,
        lambda_shift=lambda_shift,
        multiscale=multiscale,
    )
    if encoder is not None and not isinstance(encoder, Mapping):
        raise TypeError(
            f"encoder must be a mapping of encoder settings such as {{'width': 16}}, got "
            f"{type(encoder).__name__}"
        )
    if encoder and not k:
        raise ValueError("encoder= configures the latent encoder: pass latent_dim= too")
    if not k and (obj.beta != 1.0 or obj.free_bits):
        raise ValueError("beta= and free_bits= weight the latent's KL: pass latent_dim= too")
    frames, seed = args["frames"], args["seed"]
    check_loader(loader, buffer_chunks)
    cfg = TrainConfig(
        steps=check_steps(steps),
        batch_size=check_batch_size(batch_size),
        lr=check_number(lr, "lr", minimum=0.0, exclusive_minimum=True),
        warmup=check_int(warmup, "warmup", minimum=0),
        lr_schedule=lr_schedule,
        t_sampling=t_sampling,
        ema_decay=check_number(ema_decay, "ema_decay", minimum=0.0, maximum=1.0),
        grad_clip=check_number(grad_clip, "grad_clip", minimum=0.0, allow_none=True),
        val_every=check_int(val_every, "val_every", minimum=0),
        seed=seed,
        transform_lr_scale=check_number(
            transform_lr_scale, "transform_lr_scale", minimum=0.0, exclusive_minimum=True
        ),
    )
    schedule = CosineSchedule(args["lambda_min"], args["lambda_max"])
    # under torchrun: join the process group; on CUDA each rank takes its LOCAL_RANK device
    dev = parallel.setup(resolve_device(device))
    shard = (parallel.rank(), parallel.world_size())
    p = prepare(data, dims=dims, variables=variables)
    feats = check_features(time_features)
    feat_table = None
    if feats:
        if p.time is None:
            raise ValueError("time_features= needs a time coordinate on the data")
        feat_table = torch.from_numpy(time_features_of(p.time, feats))
    try:  # before the pass over the data, so that a typo fails fast
        extra = {"cond_features": n_features(feats)} if feats else {}
        if k:
            extra["latent_dim"] = k
        net_cfg = unet_config(
            preset=preset, channels=len(p.variables), **{**dict(net or {}), **extra}
        )
    except (TypeError, ValueError) as err:
        raise type(err)(f"preset={preset!r}, net={dict(net or {})!r}: {err}") from None
    latent = None
    if k:
        try:
            enc_cfg = EncoderConfig(
                **{**dict(encoder or {}), "channels": len(p.variables), "latent_dim": k}
            )
        except (TypeError, ValueError) as err:
            raise type(err)(f"encoder={dict(encoder or {})!r}: {err}") from None
        latent = {"dim": k, "encoder": enc_cfg.to_dict()}
    if args["patch"] is not None:  # also before the pass over the data
        levels = len(net_cfg.mults)
        args["patch"] = check_patch_size(
            args["patch"], p.shape[2:], 2 ** (levels - 1), levels=levels
        )
    with torch.device("meta"):  # parameter counts without allocating anything
        n_params = sum(t.numel() for t in UNet3D(net_cfg).parameters())
        if latent:
            enc_cfg = EncoderConfig.from_dict(latent["encoder"])
            n_params += sum(t.numel() for t in Encoder(enc_cfg).parameters())
    crop = args["patch"] if args["patch"] is not None else p.shape[2:]
    check_training_memory(
        n_params, net_cfg.width, int(crop[0]) * int(crop[1]), frames, cfg.batch_size
    )
    time_coord = p.time
    starts = window_starts(time_coord if time_coord is not None else np.arange(p.shape[1]), frames)
    if starts.size == 0:
        raise ValueError(
            f"no window of frames={frames} consecutive regular time steps exists; the time "
            "axis has gaps everywhere: use fewer frames"
        )
    args["dry_threshold"], dry_how = resolve_dry_thresholds(args["dry_threshold"], p)
    stats = channel_stats(p.data, sources=p.arrays, threshold=args["dry_threshold"])
    codec, described = describe_variables(
        p,
        stats,
        transform,
        min_grad=args["min_grad"],
        dry_threshold=args["dry_threshold"],
        dry_how=dry_how,
    )

    with preserved_global_rng(dev):  # the caller's global RNG states are left as they were
        torch.manual_seed(seed)  # network initialisation, then dropout draws
        # channels-last convolution weights on CUDA only (a no-op on the CPU)
        enc_module = Encoder(EncoderConfig.from_dict(latent["encoder"])) if latent else None
        module = apply_memory_format(Denoiser(UNet3D(net_cfg), codec, enc_module).to(dev), dev)
        # shares module.net's weights; the EMA copy and the saved state stay eager
        train_net = compile_network(module.net) if args["compile"] else None
        valid = torch.from_numpy(stats["static_valid"]).to(dev)
        train_starts, val_starts = split_windows(starts, frames, args["val_fraction"])
        thresholds = codec.scaled_thresholds(args["dry_threshold"])
        patches = None
        if args["patch"] is not None:
            patches = PatchSampler(args["patch"], stats["static_valid"], seed)
        batches = _Batches(
            WindowReader(p.data, frames),
            codec,
            valid,
            frames,
            dev,
            feat_table,
            patches=patches,
            shard=shard,
        )
        windows = make_loader(
            loader,
            p.data,
            frames,
            train_starts,
            batch_size=cfg.batch_size,
            seed=seed,
            buffer_chunks=buffer_chunks,
            total_steps=cfg.steps,
            shard=shard,
        )
        try:
            val_batches = []
            if val_starts.size and parallel.is_main_process():
                # the global batch size: a distributed run validates on what one process
                # with the same global batch would
                size = cfg.batch_size * shard[1]
                rng = np.random.default_rng([seed, 10**9])
                for _ in range(VALIDATION_BATCHES):
                    val_batches.append(batches(rng.choice(val_starts, size=size)))

            if module.encoder is not None:
                # the encoder's ActNorm from a fixed sample of training windows (the same
                # on every rank; a resumed run then loads its checkpointed values)
                rng = np.random.default_rng([seed, ENCODER_INIT_KEY])
                size = min(ENCODER_INIT_WINDOWS, len(train_starts))
                b0 = batches(rng.choice(train_starts, size=size, replace=False))
                with torch.no_grad():
                    y0 = module.codec.encode_scaled(b0.scaled)
                    module.encoder.initialize(torch.where(b0.mask, y0, 0.0), b0.mask)

            def loss_fn(mod: Denoiser, batch: DiffusionBatch, gen: torch.Generator) -> torch.Tensor:
                net = train_net if train_net is not None and mod is module else mod.net
                return diffusion_objective(
                    net,
                    mod.codec,
                    schedule,
                    batch,
                    thresholds,
                    gen,
                    encoder=mod.encoder,
                    objective=obj,
                    stratified=cfg.t_sampling == "stratified",
                )

            history: dict[str, list] = {}
            resume_state: dict[str, Any] = {}
            callback = None
            if checkpoint_dir is not None:
                fingerprint = run_fingerprint(
                    p,
                    stats,
                    described,
                    net_cfg,
                    cfg,
                    args,
                    n_windows=len(train_starts),
                    features=feats or [],
                    loader=windows.describe(),
                    digest=data_digest(p, stats, feat_table),
                    preset=preset,
                    latent=latent,
                    objective=obj,
                )
                # rank 0 first: it may set unreadable checkpoints aside, which the others
                # must not race with; then every rank loads the same checkpoint
                if not parallel.is_main_process():
                    parallel.barrier()
                history, resume_state = _resume(
                    checkpoint_dir, fingerprint, cfg, module, resume=args["resume"]
                )
                if parallel.is_main_process():
                    parallel.barrier()
                callback = Checkpointer(
                    checkpoint_dir,
                    every=args["checkpoint_every"],
                    keep=args["keep_checkpoints"],
                    total_steps=cfg.steps,
                    fingerprint=fingerprint,
                    history=history,
                )
            result = train(
                module,
                loss_fn,
                lambda step: replace(batches(*windows.batch(step), step=step), share=shard),
                cfg,
                device=dev,
                val_batches=val_batches,
                progress=args["progress"],
                callback=callback,
                history=history,
                **resume_state,
            )
        finally:
            windows.close()
    config = model_config(
        data,
        p,
        described,
        net_cfg,
        schedule,
        cfg,
        args,
        sampler=sampler,
        features=feats or [],
        device=dev,
        seconds=time.perf_counter() - t0,
        n_windows=len(train_starts),
        n_val_windows=len(val_starts),
        history=result.history,
        latent=latent,
        objective=obj,
    )
    config["training"].update(
        world_size=shard[1],
        per_rank_batch_size=cfg.batch_size,
        global_batch_size=cfg.batch_size * shard[1],
    )
    model = DiffusionModel(config, result.ema, valid=valid, raw_module=module)
    if args["progress"] and parallel.is_main_process():
        print(training_report(result.history, config["training"]["seconds"]), file=sys.stderr)
    return model.to(dev)


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, str | int | float | bool | list) or v is None:
        return v
    return str(v)


def training_report(history: Mapping[str, Sequence[float]], seconds: float | None = None) -> str:
    """The line ``fit`` prints at the end (unless ``progress=False``).

    The final training loss is the mean over the last :data:`REPORT_LAST_STEPS` steps; the
    validation loss (EMA weights, fixed held-out windows and noise) is quoted at the last
    step and at its best, with a note when it ended more than :data:`REPORT_RISE` above its
    best (over-fitting, or too high a learning rate). ``history`` has the format of
    :attr:`xdiffusion.model.DiffusionModel.history_dict`.

    >>> training_report({"step": [0, 1], "loss": [0.5, 0.3], "val_step": [1], "val_loss": [0.4]})
    'fit: 2 steps; training loss 0.4 (mean of the last 2 steps); validation loss 0.4'
    """
    steps = list(history.get("step") or [])
    loss = [float(v) for v in history.get("loss") or []]
    head = f"fit: {len(steps) or len(loss)} steps"
    if seconds is not None:
        head += f" in {seconds:.0f} s"
    if not loss:
        return f"{head}; no losses recorded"
    last = loss[-REPORT_LAST_STEPS:]
    parts = [head, f"training loss {np.mean(last):.4g} (mean of the last {len(last)} steps)"]
    val = [float(v) for v in history.get("val_loss") or []]
    val_steps = list(history.get("val_step") or [])
    if not val:
        parts.append("no validation windows")
    elif len(val) == 1 or len(val_steps) != len(val):
        parts.append(f"validation loss {val[-1]:.4g}")
    else:
        best = int(np.argmin(val))
        text = f"validation loss {val[-1]:.4g} at the end, best {val[best]:.4g} after "
        text += f"{val_steps[best] + 1} steps"
        if val[-1] > val[best] * (1 + REPORT_RISE):
            text += " (it rose since: fewer steps or more data may help)"
        parts.append(text)
    return "; ".join(parts)
