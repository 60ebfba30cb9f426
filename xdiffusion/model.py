"""``DiffusionModel``: configuration, network, transforms; generation on DataArrays.

The model owns the EMA weights of the denoiser (and of learned transforms), one transform
pipeline per variable, and the description of the grid it was trained on. Its methods take
and return xarray objects; the tensor work is delegated to ``core/`` and the xarray work to
``io/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from xdiffusion.core.diffusion import make_denoiser
from xdiffusion.core.noise import MemberNoise
from xdiffusion.core.samplers import get_sampler, run_sampler
from xdiffusion.core.schedule import CosineSchedule
from xdiffusion.core.sequences import complete
from xdiffusion.nets import UNet3D, UNetConfig
from xdiffusion.transforms import LearnedMonotone, Pipeline

SCHEMA_VERSION = 1
DEFAULT_SAMPLER = "dpmpp_2m"
#: (sampler, steps) used when neither the call nor ``fit(sampler=...)`` names a sampler,
#: each the cheapest setting its benchmark supports (docs/samplers.md, docs/conditional.md):
#: ``sample``: dpmpp_2m with 20 λ steps, the fewest evaluations that stay as close to
#: 1000-step ancestral samples as two sets of real windows are to each other
#: (benchmarks/samplers.py); ``forecast``: the stochastic 2M solver at 25, whose CRPS is
#: 5–20 % lower than deterministic 2M's at every lead (the deterministic map with guidance
#: is over-dispersed); ``interpolate`` and ``downscale``: dpmpp_2m at 25, as benchmarked
#: in benchmarks/conditional.py.
TASK_DEFAULTS: dict[str, tuple[str, int]] = {
    "sample": (DEFAULT_SAMPLER, 20),
    "interpolate": (DEFAULT_SAMPLER, 25),
    "downscale": (DEFAULT_SAMPLER, 25),
    "forecast": ("dpmpp_2m_sde", 25),
}


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; other strings as torch understands them."""
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device={device!r} is not a valid torch device: {err}") from None
    if dev.type == "cuda":
        # torch only fails later, deep inside, with an AssertionError or a CUDA error
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but CUDA is not available; use 'auto' or 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r} but only {torch.cuda.device_count()} CUDA device(s) exist; "
                "use 'cuda:0' or 'auto'"
            )
    return dev


class Denoiser(nn.Module):
    """Everything that is trained: the network and, per variable, an optional learned h_ω."""

    def __init__(self, net: UNet3D, learned: Sequence[LearnedMonotone | None]) -> None:
        super().__init__()
        self.net = net
        self.learned = nn.ModuleList([m if m is not None else nn.Identity() for m in learned])

    def has_learned(self, c: int) -> bool:
        return isinstance(self.learned[c], LearnedMonotone)


def check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class DiffusionModel:
    """A fitted spatio-temporal diffusion model.

    Create one with ``da.diffusion.fit(...)`` (or :func:`xdiffusion.fit`) or
    :func:`xdiffusion.load`. Its generating methods take DataArrays/Datasets and return new
    ones; the ``.diffusion`` accessor forwards to them.

    Attributes
    ----------
    config : dict
        JSON-serialisable description (schema version, network, schedule, variables with
        their transforms and scaling, grid, training provenance).
    module : Denoiser
        EMA weights used for generation.
    """

    def __init__(
        self,
        config: dict,
        module: Denoiser,
        pipelines: Sequence[Pipeline],
        *,
        valid: Tensor | None = None,
        raw_module: Denoiser | None = None,
    ) -> None:
        self.config = config
        self.module = module.eval().requires_grad_(False)
        self.raw_module = raw_module
        self.pipelines = list(pipelines)
        self.schedule = CosineSchedule.from_dict(config["schedule"])
        c, ny, nx = len(self.variables), *self.grid
        self.valid = valid if valid is not None else torch.ones(c, ny, nx, dtype=torch.bool)
        self.device = torch.device("cpu")

    # ----------------------------------------------------------------- description
    @property
    def frames(self) -> int:
        """Window length the model was trained on."""
        return int(self.config["frames"])

    @property
    def variables(self) -> list[str]:
        """Variable (channel) names."""
        return [v["name"] for v in self.config["variables"]]

    @property
    def grid(self) -> tuple[int, int]:
        """(ny, nx) of the training grid."""
        return tuple(self.config["grid"])  # type: ignore[return-value]

    @property
    def net_config(self) -> UNetConfig:
        return UNetConfig.from_dict(self.config["net"])

    @property
    def time_features(self) -> list[str]:
        """Names of the time-coordinate features the network is conditioned on."""
        return list(self.config.get("time_features", []))

    def features_for(self, time) -> Tensor | None:
        """Per-frame conditioning features (T, K) for time stamps, or None if unused."""
        if not self.time_features:
            return None
        if time is None:
            raise ValueError(
                "this model is conditioned on time features "
                f"{self.time_features}: the input needs a time coordinate"
            )
        from xdiffusion.io.timefeatures import time_features

        return torch.from_numpy(time_features(time, self.time_features))

    @property
    def history(self) -> dict[str, list[float]]:
        """Training and validation loss history."""
        return self.config.get("training", {}).get("history", {})

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.module.parameters())
        tr = [
            v["transform"]["name"] + ("+learned" if v.get("learned") else "")
            for v in self.config["variables"]
        ]
        return (
            f"<xdiffusion.DiffusionModel variables={self.variables} transform={tr} "
            f"frames={self.frames} grid={self.grid} parameters={n:,} "
            f"steps={self.config.get('training', {}).get('steps')}>"
        )

    def to(self, device: str | torch.device) -> DiffusionModel:
        """Move the weights to ``device`` (``"auto"`` allowed); returns ``self``."""
        self.device = resolve_device(device)
        self.module.to(self.device)
        self.valid = self.valid.to(self.device)
        for p in self.pipelines:
            p.to(self.device)
        return self

    # ----------------------------------------------------------------- transforms
    def encode(self, x: Tensor) -> Tensor:
        """Physical (B, C, F, H, W) → diffusion space (fixed transform, scaling, learned h)."""
        out = []
        for c, pipe in enumerate(self.pipelines):
            s = pipe.to_scaled(x[:, c : c + 1])
            out.append(self.module.learned[c](s))
        return torch.cat(out, 1)

    def decode(self, y: Tensor) -> Tensor:
        """Diffusion space → physical units: exact inverse, then physical clipping."""
        out = []
        for c, pipe in enumerate(self.pipelines):
            s = y[:, c : c + 1].clamp(-1.0, 1.0)
            if self.module.has_learned(c):
                s = self.module.learned[c].inverse(s)
            x = pipe.from_scaled(s)
            lower = pipe.transform.lower
            out.append(x if lower is None else x.clamp(min=lower))
        return torch.cat(out, 1)

    def transform_curve(self, variable: str | None = None, n: int = 201) -> xr.DataArray:
        """The learned transform h_ω over scaled data [−1, 1] as a DataArray (Fig. 4.9)."""
        c = self.variables.index(variable) if variable is not None else 0
        if not self.module.has_learned(c):
            raise ValueError(
                f"variable {self.variables[c]!r} has no learned transform; "
                "fit with transform='learned'"
            )
        x, h = self.module.learned[c].curve(n)
        return xr.DataArray(
            h.cpu().numpy(),
            dims="scaled_value",
            coords={
                "scaled_value": (
                    "scaled_value",
                    x.cpu().numpy(),
                    {"long_name": "data scaled to [-1, 1]", "units": "1"},
                )
            },
            name="h",
            attrs={"long_name": "learned monotone transform h(x)", "units": "1"},
        )

    def sampling_defaults(
        self, sampler: str | None, steps: int | None, task: str = "sample"
    ) -> tuple[str, int | None]:
        """Fill ``sampler``/``steps`` when None.

        The model's own setting (``fit(sampler=..., sampling_steps=...)``) comes first, then
        the library default of ``task`` (:data:`TASK_DEFAULTS`). With an explicit sampler
        and ``steps=None``, the sampler's registry default applies (``None`` is returned).
        """
        if task not in TASK_DEFAULTS:
            raise ValueError(f"task must be one of {sorted(TASK_DEFAULTS)}, got {task!r}")
        cfg = self.config.get("sampling", {})
        if sampler is None:
            if cfg.get("sampler"):
                sampler = cfg["sampler"]
                steps = cfg.get("steps") if steps is None else steps
            else:
                sampler = TASK_DEFAULTS[task][0]
                if steps is None:
                    steps = cfg.get("steps") or TASK_DEFAULTS[task][1]
        return sampler, steps

    # ----------------------------------------------------------------- tensor engine
    def _window_fn(
        self,
        *,
        seed: int,
        members: Sequence[int],
        sampler: str,
        steps: int | None,
        method: str,
        weight: float | None,
        cond: Tensor | None = None,
        operator=None,
        y: Tensor | None = None,
        progress: bool = False,
    ):
        """A :data:`~xdiffusion.core.sequences.WindowFn` for one batch of members."""
        from xdiffusion.core.conditioning import (
            DEFAULT_GUIDANCE_WEIGHT,
            finalize,
            guidance,
            imputation,
        )

        weight = DEFAULT_GUIDANCE_WEIGHT if weight is None else weight

        net = self.module.net
        dev = self.device
        micro = 1 if dev.type == "cpu" else None

        def window(x_known: Tensor, mask: Tensor, stream: int, start: int = 0) -> Tensor:
            shape = x_known.shape[1:]
            kwargs = None
            if cond is not None:  # (T, K) features of the whole series → this window's
                c = cond[start : start + shape[1]].to(dev)
                kwargs = {"cond": c[None].expand(x_known.shape[0], *c.shape)}
            base = make_denoiser(net, net_kwargs=kwargs, microbatch=micro)
            noise = MemberNoise(seed, members, shape, device=dev, stream=2 * stream)
            extra = MemberNoise(seed, members, shape, device=dev, stream=2 * stream + 1)
            den = base
            if operator is not None:
                den = guidance(base, y, None, weight=weight, operator=operator)
            elif bool(mask.any()):
                if method == "guidance":
                    den = guidance(base, x_known, mask, weight=weight, noise=extra)
                elif method == "imputation":
                    den = imputation(base, x_known, mask, noise=extra)
                else:
                    raise ValueError(f"method must be 'guidance' or 'imputation', got {method!r}")
            with torch.inference_mode(False):
                out = run_sampler(
                    sampler, den, noise(), self.schedule, steps, noise=noise, progress=progress
                )
            return finalize(out, x_known, mask) if bool(mask.any()) else out

        return window

    def _complete(
        self,
        x: Tensor,
        mask: Tensor,
        *,
        n: int,
        seed: int,
        sampler: str | None,
        steps: int | None,
        method: str = "guidance",
        weight: float | None = None,
        context: int | None = None,
        batch_size: int | None = None,
        progress: bool = True,
        cond: Tensor | None = None,
        task: str = "sample",
    ) -> Tensor:
        """Complete one series (C, T, H, W) in diffusion space for ``n`` members.

        ``cond``: per-frame features (T, K) of the series when the model uses them;
        ``task`` picks the default sampler (:meth:`sampling_defaults`).
        """
        sampler, steps = self.sampling_defaults(sampler, steps, task)
        get_sampler(sampler)
        bs = n if batch_size is None else check_positive_int(batch_size, "batch_size")
        out = []
        for start in range(0, n, bs):
            members = list(range(start, min(n, start + bs)))
            fn = self._window_fn(
                seed=seed,
                members=members,
                sampler=sampler,
                steps=steps,
                method=method,
                weight=weight,
                cond=cond,
            )
            xb = x[None].expand(len(members), *x.shape).to(self.device)
            mb = mask[None].to(self.device)
            out.append(
                complete(
                    fn, xb.clone(), mb, self.frames, context=context, progress=progress and n > 1
                )
            )
        return torch.cat(out)

    # ----------------------------------------------------------------- persistence
    def save(self, path) -> None:
        """Write the model directory (config.json + safetensors, :mod:`xdiffusion.persistence`)."""
        from xdiffusion.persistence import save_model

        save_model(self, path)

    # ----------------------------------------------------------------- generation
    def sample(self, template, n: int = 1, **kwargs):
        """Unconditional ensemble like ``template``; see :func:`xdiffusion.generate.sample`."""
        from xdiffusion.generate import sample

        return sample(self, template, n, **kwargs)

    def interpolate(self, data, n: int = 1, **kwargs):
        """Fill NaN gaps; see :func:`xdiffusion.generate.interpolate`."""
        from xdiffusion.generate import interpolate

        return interpolate(self, data, n, **kwargs)

    def forecast(self, data, lead: int, n: int = 1, **kwargs):
        """Continue past the end; see :func:`xdiffusion.generate.forecast`."""
        from xdiffusion.generate import forecast

        return forecast(self, data, lead, n, **kwargs)

    def downscale(self, coarse, n: int = 1, **kwargs):
        """Coarse → fine ensemble; see :func:`xdiffusion.generate.downscale`."""
        from xdiffusion.generate import downscale

        return downscale(self, coarse, n, **kwargs)

    # ----------------------------------------------------------------- likelihood
    def nll(self, data, **kwargs):
        """Bound on −log p(data) in bits per element; see :func:`xdiffusion.likelihood.nll`."""
        from xdiffusion.likelihood import nll

        return nll(self, data, **kwargs)
