"""``DiffusionModel``: configuration + weights + small helpers, and ``load``.

The model holds what was fitted: the configuration (variables, grid, schedule, network,
training provenance), a :class:`Denoiser` with the EMA weights of the network and of the
codec's learned transforms, and the mask of cells that were never observed. Its
generating methods resolve the sampling settings once (:mod:`xdiffusion.settings`) and
hand off to :mod:`xdiffusion.generate` and :mod:`xdiffusion.likelihood`, which convert
xarray objects and run the tensor :class:`~xdiffusion.engine.Engine`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from xdiffusion import generate, likelihood
from xdiffusion.codec import Codec
from xdiffusion.core.schedule import CosineSchedule
from xdiffusion.engine import Engine, resolve_device
from xdiffusion.nets import UNet3D, UNetConfig
from xdiffusion.persistence import bad_model, read_model, write_model
from xdiffusion.settings import SamplingSettings, resolve_sampling

__all__ = ["SCHEMA_VERSION", "Denoiser", "DiffusionModel", "check_model", "load"]

#: Version of ``config.json``. 2: one codec per variable (``codec`` entries, h_ω under
#: ``codec.variables.<c>.learned.*``); 1 (read and migrated): ``pipeline`` entries and
#: h_ω under ``learned.<c>.*``.
SCHEMA_VERSION = 2
SUPPORTED_SCHEMAS = (1, 2)

WEIGHTS = "ema.safetensors"
RAW_WEIGHTS = "weights.safetensors"
VALID = "valid"

Dims = Mapping[str, str] | None


class Denoiser(nn.Module):
    """Everything that is trained: the network and the codec (with any learned h_ω)."""

    def __init__(self, net: UNet3D, codec: Codec) -> None:
        super().__init__()
        self.net = net
        self.codec = codec


def migrate_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename schema-1 tensor names (``learned.<c>.*``) to ``codec.variables.<c>.learned.*``."""
    out = {}
    for k, v in state.items():
        if k.startswith("learned."):
            c, rest = k[len("learned.") :].split(".", 1)
            k = f"codec.variables.{c}.learned.{rest}"
        out[k] = v
    return out


def _migrate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 → 2: each variable's ``pipeline`` (and ``learned`` flag) becomes ``codec``."""
    if config.get("schema_version") != 1:
        return config
    variables = []
    for v in config["variables"]:
        v = dict(v)
        pipe = dict(v.pop("pipeline"))
        if v.get("learned"):
            pipe["learned"] = {"hidden": 16, "min_grad": float(v.get("min_grad", 0.1))}
        v["codec"] = pipe
        variables.append(v)
    return {**config, "variables": variables, "schema_version": SCHEMA_VERSION}


class DiffusionModel:
    """A fitted spatio-temporal diffusion model.

    Create one with ``da.diffusion.fit(...)`` (or :func:`xdiffusion.fit`) or
    :func:`xdiffusion.load`. Its generating methods take DataArrays/Datasets and return new
    ones; the ``.diffusion`` accessor forwards to them.

    Parameters
    ----------
    config
        JSON-serialisable description (schema version, network, schedule, variables with
        their codecs, grid, sampling choice, training provenance).
    module
        The EMA weights used for generation (network + codec).
    valid
        Boolean (C, H, W): False where a cell was NaN at every training time step.
    raw_module
        The raw (non-averaged) weights, kept so that training can be continued.
    """

    def __init__(
        self,
        config: dict,
        module: Denoiser,
        *,
        valid: Tensor | None = None,
        raw_module: Denoiser | None = None,
    ) -> None:
        self.config = config
        self.module = module.eval().requires_grad_(False)
        self.raw_module = raw_module
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
        ny, nx = self.config["grid"]
        return int(ny), int(nx)

    @property
    def net_config(self) -> UNetConfig:
        """The network's configuration."""
        return UNetConfig.from_dict(self.config["net"])

    @property
    def codec(self) -> Codec:
        """Physical ↔ diffusion space, one :class:`~xdiffusion.codec.VariableCodec` each."""
        return self.module.codec

    @property
    def time_features(self) -> list[str]:
        """Names of the time-coordinate features the network is conditioned on."""
        return list(self.config.get("time_features") or [])

    @property
    def dry_thresholds(self) -> list[float | None]:
        """Per variable threshold (data units) below which a value is "dry", or None."""
        return [v.get("dry_threshold") for v in self.config["variables"]]

    @property
    def history(self) -> dict[str, list[float]]:
        """Training and validation loss history."""
        return self.config.get("training", {}).get("history", {})

    @property
    def engine(self) -> Engine:
        """The tensor engine over this model's weights, on :attr:`device`."""
        return Engine(
            self.module.net,
            self.module.codec,
            self.schedule,
            self.frames,
            self.valid,
            self.device,
            variables=self.variables,
            time_features=self.time_features,
        )

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
        return self

    def sampling(
        self,
        task: str,
        *,
        sampler: str | None = None,
        steps: int | None = None,
        method: str | None = None,
        guidance_weight: float | None = None,
    ) -> SamplingSettings:
        """The settings a call of ``task`` with these arguments runs.

        Call arguments win over the model's fit-time choice (``fit(sampler=...,
        sampling_steps=...)``), which wins over the task default
        (:data:`xdiffusion.settings.TASK_DEFAULTS`); see
        :func:`xdiffusion.settings.resolve_sampling`.
        """
        return resolve_sampling(
            task,
            sampler=sampler,
            steps=steps,
            method=method,
            guidance_weight=guidance_weight,
            fitted=self.config.get("sampling"),
        )

    def transform_curve(self, variable: str | None = None, n: int = 201) -> xr.DataArray:
        """The learned transform h_ω over scaled data [−1, 1] as a DataArray (Fig. 4.9)."""
        c = self.variables.index(variable) if variable is not None else 0
        h = self.codec[c].learned
        if h is None:
            raise ValueError(
                f"variable {self.variables[c]!r} has no learned transform; "
                "fit with transform='learned'"
            )
        x, y = h.curve(n)
        return xr.DataArray(
            y.cpu().numpy(),
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

    # ----------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write the model directory: ``config.json`` + safetensors (EMA and raw weights).

        Files are written atomically and ``config.json`` records their SHA-256; see
        :func:`load`.
        """
        ema = dict(self.module.state_dict())
        ema[VALID] = self.valid.detach().cpu().to(torch.uint8)
        files = {WEIGHTS: ema}
        if self.raw_module is not None:
            files[RAW_WEIGHTS] = dict(self.raw_module.state_dict())
        config = {**self.config, "schema_version": SCHEMA_VERSION}
        write_model(path, config, files)

    # ----------------------------------------------------------------- generation
    def sample(
        self,
        template: xr.DataArray | xr.Dataset,
        n: int = 1,
        *,
        steps: int | None = None,
        sampler: str | None = None,
        seed: int = 0,
        context: int | None = None,
        batch_size: int | None = None,
        dims: Dims = None,
        progress: bool = True,
    ) -> xr.DataArray | xr.Dataset:
        """Draw ``n`` unconditional samples shaped like ``template``.

        Parameters
        ----------
        template
            DataArray or Dataset on the model's grid whose coordinates, length and
            metadata the output takes (its values are not used). Longer than
            :attr:`frames`: extended autoregressively, each window conditioned on the last
            ``context`` frames (Herbert (2023) §4.4).
        n
            Ensemble members (dimension ``realization``).
        steps, sampler
            Sampler and step count; None: the model's fit-time choice, else the task
            default (dpmpp_2m, 20 steps). See :meth:`sampling`.
        seed
            Member k's sample depends only on (seed, k) (and the time position).
        context
            Frames of context for autoregressive extension (default ``frames // 2``).
        batch_size
            Members generated at once (default all); does not change the numbers.
        dims
            Axis overrides, e.g. ``{"T": "time", "Y": "rlat", "X": "rlon"}``.
        progress
            Show progress bars.

        Returns
        -------
        xr.DataArray or xr.Dataset
            Like ``template`` with a leading ``realization`` dimension; ``history`` and
            ``sampling`` attributes record the settings that ran.
        """
        settings = self.sampling("sample", sampler=sampler, steps=steps)
        return generate.sample(
            self.engine,
            template,
            n,
            settings,
            seed=seed,
            context=context,
            batch_size=batch_size,
            dims=dims,
            progress=progress,
        )

    def interpolate(
        self,
        data: xr.DataArray | xr.Dataset,
        n: int = 1,
        *,
        method: str = "guidance",
        guidance_weight: float | None = None,
        steps: int | None = None,
        sampler: str | None = None,
        seed: int = 0,
        context: int | None = None,
        batch_size: int | None = None,
        dims: Dims = None,
        progress: bool = True,
    ) -> xr.DataArray | xr.Dataset:
        """Fill the NaN time steps and cells of a series of any length.

        Windows of :attr:`frames` frames are placed so that a gap sees known frames on
        both sides where it fits (Herbert (2023) §2.7.10). Observed values are returned
        bit-exact; cells that were NaN at every training step stay NaN.

        Parameters
        ----------
        data
            Series with NaN where values are missing, on the model's grid.
        n
            Ensemble members.
        method
            ``"guidance"`` (reconstruction guidance, eq. 2.116) or ``"imputation"``
            (eq. 2.106).
        guidance_weight
            w_r of eq. 2.116 for a per-sample sum (default 3; see
            :data:`xdiffusion.core.conditioning.DEFAULT_GUIDANCE_WEIGHT`).
        steps, sampler
            Default dpmpp_2m with 25 steps (see :meth:`sampling`).
        seed, context, batch_size, dims, progress
            As for :meth:`sample`.

        Returns
        -------
        xr.DataArray or xr.Dataset
            With ``realization`` and a ``<name>_status`` flag (observed / generated).
        """
        settings = self.sampling(
            "interpolate",
            sampler=sampler,
            steps=steps,
            method=method,
            guidance_weight=guidance_weight,
        )
        return generate.interpolate(
            self.engine,
            data,
            n,
            settings,
            seed=seed,
            context=context,
            batch_size=batch_size,
            dims=dims,
            progress=progress,
        )

    def forecast(
        self,
        data: xr.DataArray | xr.Dataset,
        lead: int,
        n: int = 1,
        *,
        context: int | None = None,
        method: str = "guidance",
        guidance_weight: float | None = None,
        steps: int | None = None,
        sampler: str | None = None,
        seed: int = 0,
        batch_size: int | None = None,
        dims: Dims = None,
        progress: bool = True,
    ) -> xr.DataArray | xr.Dataset:
        """Continue a series ``lead`` time steps past its end, ``n`` members.

        Parameters
        ----------
        data
            The series; its last ``context`` steps are the initial condition.
        lead
            Time steps to generate; the time coordinate continues the input's calendar and
            step (cftime calendars too).
        n
            Ensemble members.
        context
            Known frames per window (default ``frames // 2``, Herbert (2023)'s 5 of 10).
        method, guidance_weight
            As for :meth:`interpolate`.
        steps, sampler
            Default dpmpp_2m_sde with 25 steps (see :meth:`sampling`).
        seed, batch_size, dims, progress
            As for :meth:`sample`.

        Returns
        -------
        xr.DataArray or xr.Dataset
            The ``lead`` new time steps only, with ``realization``.
        """
        settings = self.sampling(
            "forecast",
            sampler=sampler,
            steps=steps,
            method=method,
            guidance_weight=guidance_weight,
        )
        return generate.forecast(
            self.engine,
            data,
            lead,
            n,
            settings,
            seed=seed,
            context=context,
            batch_size=batch_size,
            dims=dims,
            progress=progress,
        )

    def downscale(
        self,
        coarse: xr.DataArray | xr.Dataset,
        n: int = 1,
        *,
        factor: int | None = None,
        like: xr.DataArray | xr.Dataset | None = None,
        guidance_weight: float | None = None,
        project: bool = True,
        steps: int | None = None,
        sampler: str | None = None,
        seed: int = 0,
        batch_size: int | None = None,
        dims: Dims = None,
        progress: bool = True,
    ) -> xr.DataArray | xr.Dataset:
        """Fine fields whose ``factor`` × ``factor`` block means match ``coarse``.

        The model must have been fitted on the fine grid. Sampling uses reconstruction
        guidance on ‖y − A x̂‖² with A the block mean in physical units, whitened by its
        linearised covariance (eq. 2.112); ``project=True`` then makes the block means
        exact (multiplicatively for bounded variables such as precipitation).

        Parameters
        ----------
        coarse
            Coarse series, finite, on a grid ``factor`` times coarser than the model's.
        n
            Ensemble members.
        factor, like
            The refinement factor, or a fine template whose grid coordinates the output
            takes (one of the two).
        guidance_weight
            Weight of the whitened guidance (default 1; keep it below 2).
        project
            Make the block means exact at the end.
        steps, sampler
            Default dpmpp_2m with 25 steps (see :meth:`sampling`).
        seed, batch_size, dims, progress
            As for :meth:`sample`.
        """
        settings = self.sampling(
            "downscale", sampler=sampler, steps=steps, guidance_weight=guidance_weight
        )
        return generate.downscale(
            self.engine,
            coarse,
            n,
            settings,
            factor=factor,
            like=like,
            project=project,
            seed=seed,
            batch_size=batch_size,
            dims=dims,
            progress=progress,
        )

    # ----------------------------------------------------------------- likelihood
    def nll(
        self,
        data: xr.DataArray | xr.Dataset,
        *,
        n_lambda: int = 32,
        seed: int = 0,
        dims: Dims = None,
        batch_size: int = 8,
        lambda_rec: float | None = None,
        dry_threshold: float | Mapping[str, float] | str | None = "model",
        terms: bool = True,
    ) -> xr.Dataset | float:
        """Bound on −log p(data) in bits per element, in data space (eq. 4.10).

        Parameters
        ----------
        data
            Series on the model's grid, at least :attr:`frames` long.
        n_lambda
            λ strata (network evaluations) per window.
        seed
            Seed of λ, ε and dequantisation noise.
        dims
            Axis overrides.
        batch_size
            Windows per network call.
        lambda_rec
            Log-SNR of the Gaussian decoder (default λmax).
        dry_threshold
            ``"model"`` (default): the threshold the model was fitted with
            (:attr:`dry_thresholds`) for each variable with a bounded transform
            (``sqrt``, ``log1p``) or a learned one (see
            :func:`xdiffusion.likelihood.default_dry_thresholds`); a number or mapping
            variable → number in data units; None: no dry class.
        terms
            Return the Dataset of terms (default), or only the bound as a float.

        See :func:`xdiffusion.likelihood.nll` for the terms and the dry class.
        """
        if isinstance(dry_threshold, str):
            if dry_threshold != "model":
                raise ValueError(
                    f"dry_threshold must be 'model', a number, a mapping or None, got "
                    f"{dry_threshold!r}"
                )
            thresholds = likelihood.default_dry_thresholds(
                self.codec, self.dry_thresholds, self.config["variables"]
            )
        else:
            thresholds = likelihood.dry_thresholds(
                self.codec, self.variables, dry_threshold, self.config["variables"]
            )
        return likelihood.nll(
            self.engine,
            data,
            n_lambda=n_lambda,
            seed=seed,
            dims=dims,
            batch_size=batch_size,
            lambda_rec=lambda_rec,
            bins=thresholds,
            terms=terms,
        )


def _build(config: dict, tensors: dict[str, Tensor], path, name: str) -> Denoiser:
    try:
        module = Denoiser(
            UNet3D(UNetConfig.from_dict(config["net"])),
            Codec.from_config([v["codec"] for v in config["variables"]]),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise bad_model(path, f"malformed configuration ({err})") from None
    try:
        module.load_state_dict(migrate_state(tensors), strict=True)
    except RuntimeError as err:
        msg = str(err).splitlines()
        raise bad_model(
            path,
            f"{name} does not fit the configured network: {msg[0]} "
            f"{' '.join(m.strip() for m in msg[1:3])}",
        ) from None
    return module


def load(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> DiffusionModel:
    """Load a model directory written by :meth:`DiffusionModel.save`.

    Refuses, with ValueError, a missing or malformed ``config.json``, an unknown schema
    version, weight files whose SHA-256 differs from the recorded one, and tensors with
    missing/unexpected names or changed shapes. Only safetensors and JSON are read.
    Schema-1 files (xdiffusion before the codec) are migrated on reading.

    Parameters
    ----------
    path
        The model directory.
    device
        Where to put the weights (``"auto"``, ``"cpu"``, ``"cuda"``, …).
    """
    dev = resolve_device(device)  # a bad device fails before any file is read
    config, files = read_model(
        path,
        schema_versions=SUPPORTED_SCHEMAS,
        required=("frames", "grid", "variables", "net", "schedule"),
    )
    if WEIGHTS not in files:
        raise bad_model(path, f"no {WEIGHTS} recorded")
    try:
        config = _migrate_config(config)
    except (KeyError, TypeError) as err:
        raise bad_model(path, f"malformed configuration ({err})") from None
    ema = dict(files[WEIGHTS])
    valid = ema.pop(VALID, None)
    if valid is None:
        raise bad_model(path, f"{WEIGHTS} lacks the {VALID!r} mask tensor")
    expected = (len(config["variables"]), *np.asarray(config["grid"]).tolist())
    if tuple(valid.shape) != tuple(expected):
        raise bad_model(path, f"the {VALID!r} mask has shape {tuple(valid.shape)}, not {expected}")
    module = _build(config, ema, path, WEIGHTS)
    raw = _build(config, files[RAW_WEIGHTS], path, RAW_WEIGHTS) if RAW_WEIGHTS in files else None
    model = DiffusionModel(config, module, valid=valid.bool(), raw_module=raw)
    return model.to(dev)


def check_model(model: Any, name: str = "model") -> DiffusionModel:
    """``model`` if it is a :class:`DiffusionModel`, else a TypeError saying where to get one."""
    if not isinstance(model, DiffusionModel):
        raise TypeError(
            f"{name} must be an xdiffusion.DiffusionModel (from .diffusion.fit() or "
            f"xdiffusion.load()), got {type(model).__name__}"
        )
    return model
