"""``fit``: from a DataArray/Dataset to a trained :class:`~xdiffusion.model.DiffusionModel`.

Set-up reads the data once, as a single streaming reduction (per-variable min/max/mean and
the static NaN mask); training then reads random windows lazily, batch by batch.
"""

from __future__ import annotations

import copy
import os
import platform
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr

from xdiffusion._version import __version__
from xdiffusion.checkpoint import Checkpointer, list_checkpoints, load_checkpoint
from xdiffusion.core.diffusion import v_loss
from xdiffusion.core.samplers import get_sampler
from xdiffusion.core.schedule import CosineSchedule
from xdiffusion.io.convert import channel_stats, prepare
from xdiffusion.io.streaming import check_loader, make_loader
from xdiffusion.io.timefeatures import check_features, n_features
from xdiffusion.io.timefeatures import time_features as time_features_of
from xdiffusion.io.windows import WindowReader, window_starts
from xdiffusion.model import (
    SCHEMA_VERSION,
    Denoiser,
    DiffusionModel,
    check_positive_int,
    resolve_device,
)
from xdiffusion.nets import UNet3D, unet_config
from xdiffusion.training import TrainConfig, train
from xdiffusion.transforms import Identity, LearnedMonotone, Pipeline, Transform, get_transform


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


def fit(
    data: xr.DataArray | xr.Dataset,
    *,
    frames: int = 8,
    transform: Any = "sqrt",
    steps: int = 2000,
    batch_size: int = 16,
    lr: float = 3e-4,
    warmup: int = 100,
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
    dry_threshold: float = 0.01,
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
) -> DiffusionModel:
    """Train an unconditional spatio-temporal diffusion model on ``data``.

    Parameters
    ----------
    data
        (time, y, x) DataArray, or Dataset whose ``variables`` are learned jointly as
        channels. May be dask-backed: it is never loaded whole.
    frames
        Window length in time steps (the seed used 10).
    transform
        ``"none"``, ``"sqrt"``, ``"log1p"``, ``"learned"`` (eq. 4.13–4.15), a
        :class:`~xdiffusion.transforms.Transform`, or a mapping variable → one of these.
    steps, batch_size, lr, warmup, ema_decay, grad_clip
        Optimisation (see :class:`~xdiffusion.training.TrainConfig`).
    seed
        Seeds initialisation, window order, t and ε: same seed, same CPU → same model.
    device
        ``"auto"`` (CUDA if available; bf16 autocast there), ``"cpu"``, ``"cuda"``…
    progress
        tqdm progress bar.
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
    min_grad, dry_threshold
        Learned transform: minimum-gradient coefficient and the data value (in data units)
        above which log-derivatives enter the loss (the mask set M of eq. 4.14).
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
        other data or arguments. ``steps`` may be raised to train longer.
    loader, buffer_chunks
        How training windows are read (:mod:`xdiffusion.io.streaming`): ``"chunked"``
        reads ``buffer_chunks`` whole time chunks at a time into a shuffle buffer and
        prefetches the next ones in a background thread (memory bounded by the buffer, for
        archives larger than memory); ``"random"`` reads each window on its own (fine in
        memory, slow on chunked stores); ``"auto"``: chunked for dask-backed data, random
        otherwise. Either way batches depend on (seed, step) only, so resuming stays exact.
    """
    t0 = time.perf_counter()
    if isinstance(frames, bool) or not isinstance(frames, int | np.integer) or frames < 1:
        raise ValueError(f"frames must be a positive integer, got {frames!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if net is not None and not isinstance(net, Mapping):
        raise TypeError(
            f"net must be a mapping of network settings such as {{'width': 32}}, got "
            f"{type(net).__name__}"
        )
    check_loader(loader, buffer_chunks)
    if sampler is not None:
        get_sampler(sampler)  # fail now rather than at the first sample() after training
    if sampling_steps is not None:
        check_positive_int(sampling_steps, "sampling_steps")
    cfg = TrainConfig(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        warmup=warmup,
        ema_decay=ema_decay,
        grad_clip=grad_clip,
        val_every=val_every,
        seed=seed,
        transform_lr_scale=transform_lr_scale,
    )
    if checkpoint_dir is None:
        if resume:
            raise ValueError("resume=True needs checkpoint_dir= (the directory to resume from)")
    else:
        for name, v in (
            ("checkpoint_every", checkpoint_every),
            ("keep_checkpoints", keep_checkpoints),
        ):
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(checkpoint_dir, str | os.PathLike):
            raise TypeError(
                f"checkpoint_dir must be a path (str or os.PathLike), got "
                f"{type(checkpoint_dir).__name__}"
            )
        if os.path.exists(checkpoint_dir) and not os.path.isdir(checkpoint_dir):
            raise ValueError(
                f"checkpoint_dir={str(checkpoint_dir)!r} exists and is not a directory"
            )
        if not resume and list_checkpoints(checkpoint_dir):
            raise ValueError(
                f"checkpoint_dir={str(checkpoint_dir)!r} already holds checkpoints; pass "
                "resume=True to continue from them, or use an empty directory"
            )
    dev = resolve_device(device)
    p = prepare(data, dims=dims, variables=variables)
    feats = check_features(time_features)
    feat_table = None
    if feats:
        if p.time is None:
            raise ValueError("time_features= needs a time coordinate on the data")
        feat_table = torch.from_numpy(time_features_of(p.time, feats))
    try:  # before the pass over the data, so that a typo fails fast
        extra = {"cond_features": n_features(feats)} if feats else {}
        net_cfg = unet_config(
            preset=preset, channels=len(p.variables), **{**dict(net or {}), **extra}
        )
    except (TypeError, ValueError) as err:
        raise type(err)(f"preset={preset!r}, net={dict(net or {})!r}: {err}") from None
    time_coord = p.time
    starts = window_starts(
        time_coord if time_coord is not None else np.arange(p.shape[1]), int(frames)
    )
    if starts.size == 0:
        raise ValueError(
            f"no window of frames={frames} consecutive regular time steps exists; the time "
            "axis has gaps everywhere: use fewer frames"
        )
    stats = channel_stats(p.data)
    transforms, pipelines, learned, var_cfg = [], [], [], []
    for c, name in enumerate(p.variables):
        tr, is_learned = _transform_for(transform, name)
        lo = tr.lower
        if lo is not None and stats["min"][c] < lo:
            raise ValueError(
                f"variable {name!r} has values down to {stats['min'][c]:g}, below the lower "
                f"bound {lo} of transform {tr.name!r}; clip the data first (da.clip(min={lo})) "
                "or use transform='none'"
            )
        if not stats["max"][c] > stats["min"][c]:
            raise ValueError(
                f"data variable {name!r} is constant ({stats['min'][c]:g}): zero-variance data "
                "cannot be scaled; check the variable or the time selection"
            )
        pipe = Pipeline.fit(float(stats["min"][c]), float(stats["max"][c]), tr, learned=False)
        transforms.append(tr)
        pipelines.append(pipe)
        learned.append(LearnedMonotone(min_grad=min_grad) if is_learned else None)
        attrs = {k: _jsonable(v) for k, v in p.arrays[c].attrs.items()}
        var_cfg.append(
            {
                "name": name,
                "attrs": attrs,
                "transform": tr.to_config(),
                "learned": bool(is_learned),
                "pipeline": pipe.to_config(),
                "min": float(stats["min"][c]),
                "max": float(stats["max"][c]),
                "mean": float(stats["mean"][c]),
                "dry_threshold": float(dry_threshold),
                "min_grad": float(min_grad),
            }
        )

    torch.manual_seed(seed)
    module = Denoiser(UNet3D(net_cfg), learned).to(dev)
    schedule = CosineSchedule(lambda_min, lambda_max)
    valid = torch.from_numpy(stats["static_valid"]).to(dev)

    n_val = int(len(starts) * val_fraction) if len(starts) >= 20 else 0
    # Held-out windows come from the end and must not overlap training windows.
    train_starts = starts[: len(starts) - n_val - (frames - 1 if n_val else 0)]
    val_starts = starts[len(starts) - n_val :]
    if train_starts.size == 0:
        train_starts, val_starts = starts, starts[:0]
    reader = WindowReader(p.data, int(frames))
    thresholds = [pipe.to_scaled(torch.tensor(float(dry_threshold))).item() for pipe in pipelines]

    windows = make_loader(
        loader,
        p.data,
        int(frames),
        train_starts,
        batch_size=batch_size,
        seed=seed,
        buffer_chunks=buffer_chunks,
        total_steps=cfg.steps,
    )

    def load(idx: np.ndarray, x: np.ndarray | None = None):
        x = torch.from_numpy(reader.read(idx) if x is None else x)
        finite = torch.isfinite(x)
        mask = finite & valid.cpu()[None, :, None]
        x = torch.where(finite, x, torch.zeros_like(x))
        scaled = torch.cat([pl.to_scaled(x[:, c : c + 1]) for c, pl in enumerate(pipelines)], 1)
        cond = None
        if feat_table is not None:
            cond = torch.stack([feat_table[int(s) : int(s) + frames] for s in idx]).to(dev)
        return scaled.to(dev), mask.to(dev), cond

    def batch_fn(step: int):
        return load(*windows.batch(step))

    val_batches = []
    if val_starts.size:
        rng = np.random.default_rng([seed, 10**9])
        for _ in range(2):
            val_batches.append(load(rng.choice(val_starts, size=batch_size)))

    def loss_fn(mod: Denoiser, batch, gen: torch.Generator) -> torch.Tensor:
        scaled, mask, cond = batch
        parts, penalty = [], torch.zeros((), device=scaled.device)
        for c in range(scaled.shape[1]):
            s = scaled[:, c : c + 1]
            if mod.has_learned(c):
                h = mod.learned[c]
                parts.append(h(s))
                m = mask[:, c : c + 1] & (s > thresholds[c])
                # eq. 4.15 divided by the number of elements, like the mean v-loss
                penalty = penalty + h.penalty(s, m).sum() / s.numel()
            else:
                parts.append(s)
        y = torch.cat(parts, 1)
        kw = {"cond": cond} if cond is not None else None
        loss = v_loss(mod.net, y, schedule, generator=gen, mask=mask, net_kwargs=kw)
        return loss.mean() + penalty

    history: dict[str, list] = {}
    resume_state: dict[str, Any] = {}
    callback = None
    if checkpoint_dir is not None:
        fingerprint = {
            "data_shape": [int(s) for s in p.shape],
            "variables": list(p.variables),
            "data_min": [float(v) for v in stats["min"]],
            "data_max": [float(v) for v in stats["max"]],
            "frames": int(frames),
            "transforms": [{"transform": v["transform"], "learned": v["learned"]} for v in var_cfg],
            "net": net_cfg.to_dict(),
            "seed": int(seed),
            "batch_size": int(batch_size),
            "lr": float(lr),
            "warmup": int(warmup),
            "ema_decay": float(ema_decay),
            "grad_clip": grad_clip,
            "weight_decay": float(cfg.weight_decay),
            "lambda": [float(lambda_min), float(lambda_max)],
            "min_grad": float(min_grad),
            "dry_threshold": float(dry_threshold),
            "val_fraction": float(val_fraction),
            "n_windows": len(train_starts),
            "time_features": list(feats or []),
            "loader": windows.describe(),
        }
        ckpt = load_checkpoint(checkpoint_dir, fingerprint=fingerprint) if resume else None
        if ckpt is not None and ckpt.step > cfg.steps:
            raise ValueError(
                f"steps={cfg.steps} is fewer than the {ckpt.step} steps already done by the "
                f"checkpoint in checkpoint_dir={str(checkpoint_dir)!r}; pass steps >= {ckpt.step}"
            )
        if ckpt is not None:
            module.load_state_dict(ckpt.module_state)
            ema = copy.deepcopy(module).requires_grad_(False)
            ema.load_state_dict(ckpt.ema_state)
            history = ckpt.history
            resume_state = {
                "start_step": ckpt.step,
                "optimizer_state": ckpt.optimizer_state,
                "ema": ema,
            }
            ckpt.restore_rng()
        callback = Checkpointer(
            checkpoint_dir,
            every=checkpoint_every,
            keep=keep_checkpoints,
            total_steps=cfg.steps,
            fingerprint=fingerprint,
            history=history,
        )
    try:
        result = train(
            module,
            loss_fn,
            batch_fn,
            cfg,
            device=dev,
            val_batches=val_batches,
            progress=progress,
            callback=callback,
            history=history,
            **resume_state,
        )
    finally:
        windows.close()
    config = {
        "schema_version": SCHEMA_VERSION,
        "xdiffusion_version": __version__,
        "frames": int(frames),
        "grid": [int(p.shape[2]), int(p.shape[3])],
        "variables": var_cfg,
        "net": net_cfg.to_dict(),
        "schedule": schedule.to_dict(),
        "sampling": {"sampler": sampler, "steps": sampling_steps},
        "time_features": feats,
        "training": {
            **cfg.to_dict(),
            "device": str(dev),
            "seconds": round(time.perf_counter() - t0, 2),
            "n_windows": len(train_starts),
            "n_val_windows": len(val_starts),
            "data_shape": [int(s) for s in p.shape],
            "data_name": str(getattr(data, "name", None) or ""),
            "torch_version": torch.__version__,
            "python": platform.python_version(),
            "history": result.history,
        },
    }
    model = DiffusionModel(config, result.ema, pipelines, valid=valid, raw_module=module)
    model.to(dev)
    return model


def _jsonable(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, str | int | float | bool | list) or v is None:
        return v
    return str(v)
