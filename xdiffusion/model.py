"""``DiffusionModel``: configuration + weights + small helpers, and ``load``.

The model holds what was fitted: the configuration (variables, grid, schedule, network,
training provenance), a :class:`Denoiser` with the EMA weights of the network and of the
codec's learned transforms, and the mask of cells that were never observed. Its
generating methods resolve the sampling settings once (:mod:`xdiffusion.settings`) and
hand off to :mod:`xdiffusion.generate` and :mod:`xdiffusion.likelihood`, which convert
xarray objects and run the tensor :class:`~xdiffusion.engine.Engine`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import torch
import xarray as xr
from torch import Tensor, nn

from xdiffusion import generate, latents, likelihood, parallel
from xdiffusion.accel import CompiledNet, apply_memory_format, compile_network
from xdiffusion.codec import Codec
from xdiffusion.core.samplers import SAMPLERS
from xdiffusion.core.schedule import CosineSchedule
from xdiffusion.diagnostics.learning import history_dataset
from xdiffusion.engine import Engine, resolve_device
from xdiffusion.io.spec import DataSpec
from xdiffusion.io.timefeatures import TIME_FEATURES, n_features
from xdiffusion.nets import UNet3D, UNetConfig
from xdiffusion.nets.encoder import Encoder, EncoderConfig
from xdiffusion.persistence import CONFIG, Shapes, bad_model, read_model, write_model
from xdiffusion.settings import SamplingSettings, resolve_sampling
from xdiffusion.validation import check_bool, check_positive_int, check_seed, is_int, is_number

__all__ = [
    "SCHEMA_VERSION",
    "Denoiser",
    "DiffusionModel",
    "check_model",
    "load",
    "schema_version",
]

#: Version of ``config.json``. 4: a latent model whose encoder names its ``pooling``
#: (statistics pooling; a schema-3 reader would build the wrong encoder, so it must refuse
#: the file by its version); 3: a latent-conditioned model (a ``latent`` section and
#: ``encoder.*`` tensors; an older xdiffusion refuses it by its version), encoder pooling
#: by mean; 2: one codec per variable (``codec`` entries, h_ω under
#: ``codec.variables.<c>.learned.*``); 1 (read and migrated): ``pipeline`` entries and h_ω
#: under ``learned.<c>.*``. Each model is written with the lowest schema that describes it,
#: so older readers load whatever they can.
SCHEMA_VERSION = 4
SUPPORTED_SCHEMAS = (1, 2, 3, 4)
#: Schema of a model without a latent.
SCHEMA_UNCONDITIONAL = 2
#: Schema of a latent model whose encoder pools by mean (no ``pooling`` key).
SCHEMA_LATENT_MEAN_POOLING = 3

WEIGHTS = "ema.safetensors"
RAW_WEIGHTS = "weights.safetensors"
VALID = "valid"
#: Hex digits of the configuration's SHA-256 quoted in ``history`` lines (as ``git`` quotes
#: commits: enough to tell models apart, short enough to read).
CONFIG_HASH_CHARS = 12
#: How the provenance names a model that was fitted in this session and never saved/loaded.
IN_MEMORY = "in-memory"

Dims = Mapping[str, str] | None


class Denoiser(nn.Module):
    """Everything that is trained: the network, the codec (with any learned h_ω) and, in a
    latent-conditioned model, the encoder E_φ of q(w | x) (seed 003)."""

    def __init__(self, net: UNet3D, codec: Codec, encoder: Encoder | None = None) -> None:
        super().__init__()
        self.net = net
        self.codec = codec
        self.encoder = encoder

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, shapes_only: bool = False) -> Denoiser:
        """The module a configuration describes (weights freshly initialised).

        ``shapes_only`` builds the network and encoder on the meta device: their tensors
        have shapes but no memory, so a huge configured width costs nothing.
        """
        codec = Codec.from_config([v["codec"] for v in config["variables"]])
        latent = config.get("latent")
        with torch.device("meta") if shapes_only else contextlib.nullcontext():
            net = UNet3D(UNetConfig.from_dict(config["net"]))
            encoder = Encoder(EncoderConfig.from_dict(latent["encoder"])) if latent else None
        return cls(net, codec, encoder)


def schema_version(config: Mapping[str, Any]) -> int:
    """The schema a configuration is written with: 4 with a latent whose encoder names its
    pooling, 3 with another latent, else 2."""
    latent = config.get("latent")
    if not latent:
        return SCHEMA_UNCONDITIONAL
    encoder = latent.get("encoder") if isinstance(latent, Mapping) else None
    if isinstance(encoder, Mapping) and "pooling" in encoder:
        return SCHEMA_VERSION
    return SCHEMA_LATENT_MEAN_POOLING


def migrate_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename schema-1 tensor names (``learned.<c>.*``) to ``codec.variables.<c>.learned.*``."""
    out = {}
    for k, v in state.items():
        if k.startswith("learned."):
            c, rest = k[len("learned.") :].split(".", 1)
            k = f"codec.variables.{c}.learned.{rest}"
        out[k] = v
    return out


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
    path
        Where the model was loaded from or last saved to (None: fitted in memory); see
        :attr:`provenance`.
    config_sha256
        SHA-256 of that location's ``config.json`` (None: of the configuration in memory).
    """

    def __init__(
        self,
        config: dict,
        module: Denoiser,
        *,
        valid: Tensor | None = None,
        raw_module: Denoiser | None = None,
        path: str | None = None,
        config_sha256: str | None = None,
    ) -> None:
        self.config = config
        self.module = module.eval().requires_grad_(False)
        self.raw_module = raw_module
        self.path = path
        self._config_sha256 = config_sha256
        self.schedule = CosineSchedule.from_dict(config["schedule"])
        c, ny, nx = len(self.variables), *self.grid
        self.valid = valid if valid is not None else torch.ones(c, ny, nx, dtype=torch.bool)
        self.device = torch.device("cpu")
        #: The network's forward through torch.compile (:meth:`compile`), or None: eager.
        self._compiled: CompiledNet | None = None
        #: ``((ty, tx), overlap)`` of overlapping-tile evaluation (:meth:`tile`), or None.
        self._tiling: tuple[tuple[int, int], int] | None = None

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
    def data(self) -> DataSpec | None:
        """What the model knows of its training data (variables' units, grid, time step);
        None for a model file that recorded none of it."""
        return DataSpec.from_config(self.config.get("data"), self.config.get("variables"))

    @property
    def history_dict(self) -> dict[str, list[float]]:
        """The loss history as recorded in the configuration: lists ``step``, ``loss``,
        ``val_step`` and ``val_loss`` (see :attr:`history` for a Dataset)."""
        return self.config.get("training", {}).get("history", {})

    @property
    def history(self) -> xr.Dataset:
        """The learning curve as a Dataset (empty for a model file that recorded none).

        ``loss`` (dimension ``step``): the training loss of each optimisation step, the
        objective of one mini-batch (v-loss, plus the h_ω log-determinant term of a learned
        transform) at random noise levels, so noisy; smooth it to read a trend (e.g.
        ``history.loss.rolling(step=50).mean()``). ``val_loss`` (dimension ``val_step``):
        the loss of the EMA weights on fixed held-out windows with fixed noise, every
        ``val_every`` steps and at the last step, comparable from one step to the next;
        absent without validation windows. Plot it with :func:`xdiffusion.plot.plot_loss`.
        """
        return history_dataset(self.history_dict)

    @property
    def config_sha256(self) -> str:
        """SHA-256 (hex) of the model's ``config.json``: of the file it was loaded from or
        last saved to (``sha256sum model/config.json``), which records the SHA-256 of the
        weight files too; for a model fitted in memory and not yet saved, of its
        configuration as canonical JSON (sorted keys)."""
        if self._config_sha256 is None:
            text = json.dumps(self.config, sort_keys=True, separators=(",", ":"), default=str)
            return hashlib.sha256(text.encode()).hexdigest()
        return self._config_sha256

    @property
    def provenance(self) -> dict[str, str]:
        """What generated outputs record of the model in their ``history`` line:
        ``{"model": path or "in-memory", "config_sha256": first 12 hex digits}``."""
        return {
            "model": self.path if self.path is not None else IN_MEMORY,
            "config_sha256": self.config_sha256[:CONFIG_HASH_CHARS],
        }

    @property
    def engine(self) -> Engine:
        """The tensor engine over this model's weights, on :attr:`device`."""
        from xdiffusion.nets.tiled import TiledNet

        net = self._compiled if self._compiled is not None else self.module.net
        if self._tiling is not None:  # a light wrapper, made anew with each engine
            net = TiledNet(net, *self._tiling)
        return Engine(
            net,
            self.module.codec,
            self.schedule,
            self.frames,
            self.valid,
            self.device,
            variables=self.variables,
            time_features=self.time_features,
            data=self.data,
            encoder=self.module.encoder,
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
        # channels-last convolution weights on CUDA, contiguous elsewhere
        apply_memory_format(self.module.to(self.device), self.device)
        self.valid = self.valid.to(self.device)
        return self

    @property
    def compiled(self) -> bool:
        """Whether generation runs the network through ``torch.compile`` (:meth:`compile`)."""
        return self._compiled is not None

    def compile(self, enabled: bool = True) -> DiffusionModel:
        """Run the network through ``torch.compile`` when generating; returns ``self``.

        The engine (``sample``, ``interpolate``, ``forecast``, ``downscale``, ``nll``) then
        calls the compiled forward; the weights, :meth:`save` and :meth:`to` are unchanged
        (a move to another device recompiles at the next call). The first call includes
        the compilation, so it pays off for long runs on a GPU; compiled kernels may round
        differently from eager ones. ``compile(False)`` returns to eager execution. Not
        recorded in the configuration (it is how the model runs, not what it is).

        Raises
        ------
        xdiffusion.accel.CompileError
            ``torch.compile`` is unavailable or fails on this platform (at the first
            generation for a failure of the compiler itself); never a silent fallback.
        """
        enabled = check_bool(enabled, "enabled")
        self._compiled = compile_network(self.module.net) if enabled else None
        return self

    def tile(self, tile: int | tuple[int, int] | None, overlap: int = 16) -> DiffusionModel:
        """Evaluate the network on overlapping spatial tiles when generating; returns ``self``.

        By default the network runs fully convolutionally: the whole grid (or sub-region)
        is one network input, and its memory grows with its area. With ``tile`` set, the
        engine (``sample``, ``interpolate``, ``forecast``, ``downscale``, ``nll``) evaluates
        it on tiles of ``tile`` cells that overlap by ``overlap`` cells, one tile at a time,
        and blends the tiles' predictions with smooth weights at every sampler step, so
        the samples have no seams (:class:`xdiffusion.nets.tiled.TiledNet`). A grid not
        larger than the tile runs in one piece, exactly as without tiling. Use it for grids
        whose activations do not fit in memory; it costs time (overlapping cells are
        computed more than once) and a tile sees less context than the whole grid.
        ``tile(None)`` returns to whole-grid evaluation. Works with :meth:`compile` (the
        compiled network is tiled). Not recorded in the configuration (it is how the model
        runs, not what it is).

        Parameters
        ----------
        tile
            Tile size in cells, ``ty = tx = tile`` or ``(ty, tx)``, each a positive multiple
            of the network's downsampling ``2**(levels − 1)``; None: no tiling.
        overlap
            Cells shared by neighbouring tiles, even and smaller than the tile; the
            blending weights ramp over it. Larger overlaps blend more smoothly and cost
            more tiles; ``0`` gives hard tile edges (seams).

        Raises
        ------
        ValueError
            For a tile or overlap outside those ranges.
        """
        from xdiffusion.nets.tiled import TiledNet

        if tile is None:
            self._tiling = None
            return self
        tiled = TiledNet(self.module.net, tile, overlap)  # validates both
        self._tiling = (tiled.tile, tiled.overlap)
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
    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Write the model directory: ``config.json`` + safetensors (EMA and raw weights).

        ``config.json`` records the SHA-256 of each weight file; see :func:`load`. Saving
        over an existing model is atomic: the new model is written whole beside it and
        swapped in, so an interruption leaves the old model loadable, and concurrent saves
        to one path are serialised (see :func:`xdiffusion.persistence.write_model`).

        Parameters
        ----------
        path
            Directory to write (``~`` is expanded; parents are created), a ``file://``
            URL, or another URL :mod:`fsspec` handles (``memory://``, ``s3://`` with
            s3fs, …; uploaded after writing locally, ``config.json`` last).
        overwrite
            Allow replacing an existing non-empty directory that is not an xdiffusion
            model, deleting its contents. An existing model directory is replaced without
            it.

        Afterwards :attr:`path` and :attr:`config_sha256` name the written model, so the
        ``history`` lines of outputs generated next identify it (:attr:`provenance`).

        Raises
        ------
        ValueError
            For an empty path, an unusable URL scheme, an existing file, or a non-empty
            directory that is not a model when ``overwrite`` is False.

        Notes
        -----
        In a torchrun job (several processes in a torch.distributed group) only rank 0
        writes; every rank returns once the model is written.
        """
        overwrite = check_bool(overwrite, "overwrite")
        ema = dict(self.module.state_dict())
        ema[VALID] = self.valid.detach().cpu().to(torch.uint8)
        files = {WEIGHTS: ema}
        if self.raw_module is not None:
            files[RAW_WEIGHTS] = dict(self.raw_module.state_dict())
        config = {**self.config, "schema_version": schema_version(self.config)}
        if parallel.world_size() > 1:
            # a torchrun job: every rank holds the same model, rank 0 writes it, and the
            # others wait until it is there (so that they can load it next)
            if parallel.is_main_process():
                write_model(path, config, files, overwrite=overwrite)
            parallel.barrier()
            return
        digests: dict[str, str] = {}
        write_model(path, config, files, overwrite=overwrite, digests=digests)
        # outputs generated from now on name the saved model
        self.path, self._config_sha256 = _path_label(path), digests[CONFIG]

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
        memory_budget: int | str | None = None,
        check_grid: bool = True,
        latent: Any = None,
    ) -> xr.DataArray | xr.Dataset:
        """Draw ``n`` unconditional samples shaped like ``template``.

        Parameters
        ----------
        template
            DataArray or Dataset on the model's grid, or on a contiguous sub-region of it
            (located by its 1-D grid coordinates; at least ``2**(levels − 1)`` cells a
            side), whose coordinates, length and metadata the output takes (its values
            are not used). The network runs fully convolutionally on the whole template
            grid at once, with the model's valid mask cropped to it (docs/data.md,
            "Training on patches, generating on any grid"). Longer than
            :attr:`frames`: extended autoregressively, each window conditioned on the last
            ``context`` frames (Herbert (2023) §4.4). Checked against the training data
            (:attr:`data`): other but convertible units (mm day-1 for a model of mm h-1)
            give an output in the template's units; a Y or X axis in reverse order gives
            an output in the template's order; other units are refused (docs/data.md,
            "Units, grids and orientation").
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
            Show progress bars (eager results).
        memory_budget
            Bytes (or a string such as ``"4GB"``) the call may plan to use; default half
            the machine's memory. An in-memory result that cannot fit is refused before
            anything is allocated, naming ``n``; ``batch_size=None`` picks the largest
            member batch that fits.
        check_grid
            Refuse (default) an input whose 1-D grid coordinates are neither the training
            grid's nor those of a contiguous sub-region of it (another region or
            resolution); False generates on it anyway, as if it were the training grid
            (it must then have the training grid's size).
        latent
            Latent model only (``fit(latent_dim=k)``): the w every window is generated
            from. None (default): each member draws its own w ~ N(0, I) (from its own
            noise stream, the same for all its windows); a vector of k numbers for every
            member and frame; a DataArray on (``window``, ``latent``) such as
            :meth:`encode`'s ``latent_mean`` (each frame takes the latent of the window it
            falls in, matched by ``window_start``), optionally with a ``member`` dimension
            of size ``n``; or :meth:`encode`'s Dataset. See docs/latent.md.

        Returns
        -------
        xr.DataArray or xr.Dataset
            Like ``template`` with a leading ``realization`` dimension; ``history`` and
            ``sampling`` attributes record the settings that ran. A dask-backed template
            gives a dask-backed result at once (nothing is generated until it is computed
            or written): chunks of the template's time chunks rounded to whole windows ×
            member blocks, the same numbers as the eager result (docs/archives.md).
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
            memory_budget=memory_budget,
            check_grid=check_grid,
            provenance=self.provenance,
            latent=latent,
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
        memory_budget: int | str | None = None,
        check_grid: bool = True,
        latent: Any = None,
    ) -> xr.DataArray | xr.Dataset:
        """Fill the NaN time steps and cells of a series of any length.

        Windows of :attr:`frames` frames are placed so that a gap sees known frames on
        both sides where it fits (Herbert (2023) §2.7.10). Observed values are returned
        bit-exact; cells that were NaN at every training step stay NaN.

        Parameters
        ----------
        data
            Series with NaN where values are missing, on the model's grid or a
            sub-region of it (as for :meth:`sample`'s ``template``).
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
        seed, context, batch_size, dims, progress, memory_budget, check_grid, latent
            As for :meth:`sample` (a dask-backed ``data`` gives a lazy result; its gaps
            are located in one streaming pass at call time). Units and orientation are
            conformed as for :meth:`sample`; observed values come back as given.

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
            memory_budget=memory_budget,
            check_grid=check_grid,
            provenance=self.provenance,
            latent=latent,
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
        memory_budget: int | str | None = None,
        check_grid: bool = True,
        latent: Any = None,
    ) -> xr.DataArray | xr.Dataset:
        """Continue a series ``lead`` time steps past its end, ``n`` members.

        Parameters
        ----------
        data
            The series; its last ``context`` steps are the initial condition. On the
            model's grid or a sub-region of it (as for :meth:`sample`'s ``template``).
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
        seed, batch_size, dims, progress, memory_budget, check_grid
            As for :meth:`sample` (a dask-backed ``data`` gives a lazy result; only the
            context is read at call time); units and orientation as for :meth:`sample`.
        latent
            As for :meth:`sample`; per-window latents are matched against the context's
            and the new steps' times.

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
            memory_budget=memory_budget,
            check_grid=check_grid,
            provenance=self.provenance,
            latent=latent,
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
        memory_budget: int | str | None = None,
        check_grid: bool = True,
        latent: Any = None,
    ) -> xr.DataArray | xr.Dataset:
        """Fine fields whose ``factor`` × ``factor`` block means match ``coarse``.

        The model must have been fitted on the fine grid. Sampling uses reconstruction
        guidance on ‖y − A x̂‖² with A the block mean in physical units, whitened by its
        linearised covariance (eq. 2.112); ``project=True`` then makes the block means
        exact (multiplicatively for bounded variables such as precipitation).

        Parameters
        ----------
        coarse
            Coarse series, finite, on a grid ``factor`` times coarser than the model's or
            than a sub-region of it (located by the fine coordinates, as for
            :meth:`sample`'s ``template``).
        n
            Ensemble members.
        factor, like
            The refinement factor, or a fine template whose grid coordinates (and their
            order) the output takes (one of the two). The output is in ``coarse``'s units.
        guidance_weight
            Weight of the whitened guidance (default 1; keep it below 2).
        project
            Make the block means exact at the end.
        steps, sampler
            Default dpmpp_2m with 25 steps (see :meth:`sampling`).
        seed, batch_size, dims, progress, memory_budget
            As for :meth:`sample` (a dask-backed ``coarse`` gives a lazy result, one task
            per time chunk and member block).
        check_grid
            As for :meth:`sample`, on the fine grid: ``like``'s coordinates, or those
            made by splitting each coarse cell in ``factor``.
        latent
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
            memory_budget=memory_budget,
            check_grid=check_grid,
            provenance=self.provenance,
            latent=latent,
        )

    # ----------------------------------------------------------------- likelihood
    # ----------------------------------------------------------------- latents
    @property
    def latent_dim(self) -> int:
        """Size k of the latent w (0: an unconditional model)."""
        return int((self.config.get("latent") or {}).get("dim", 0))

    def encode(
        self,
        data: xr.DataArray | xr.Dataset,
        *,
        dims: Dims = None,
        check_grid: bool = True,
        batch_size: int = 16,
    ) -> xr.Dataset:
        """The posterior q(w | x) of each non-overlapping window of ``data`` (seed 003 §2).

        Parameters
        ----------
        data
            Series on the model's grid or a sub-region of it (as for :meth:`sample`'s
            ``template``), at least :attr:`frames` long; NaN allowed (the encoder reads
            the mask of observed elements); may be dask-backed (read window by window).
        dims, check_grid
            As for :meth:`sample`.
        batch_size
            Windows per encoder call.

        Returns
        -------
        xr.Dataset
            ``latent_mean``, ``latent_std`` (dimensions ``window``, ``latent``),
            ``observed_fraction`` (``window``), coordinate ``window_start``; see
            :func:`xdiffusion.latents.encode`. Pass it (or ``latent_mean``) as ``latent=``
            to generate from these descriptions.

        Raises
        ------
        ValueError
            For a model without a latent (fit with ``latent_dim=``).
        """
        return latents.encode(
            self.engine, data, dims=dims, check_grid=check_grid, batch_size=batch_size
        )

    def reconstruct(
        self,
        data: xr.DataArray | xr.Dataset,
        n: int = 1,
        *,
        posterior: str = "mean",
        steps: int | None = None,
        sampler: str | None = None,
        seed: int = 0,
        batch_size: int | None = None,
        dims: Dims = None,
        progress: bool = True,
        memory_budget: int | str | None = None,
        check_grid: bool = True,
    ) -> xr.DataArray | xr.Dataset:
        """Encode ``data``, then generate ``n`` members shaped like it from its latents.

        Each window of the output is generated from the latent of the input window it
        falls in (:meth:`encode`, matched by time), with the model's sampler, as
        :meth:`sample` with ``latent=`` would; no observed value is copied in. With a
        latent that describes a window well, members resemble their window more closely
        than unconditional samples do (docs/latent.md).

        Parameters
        ----------
        data
            The series to reconstruct (as for :meth:`encode`); also the output's template.
        n
            Ensemble members.
        posterior
            ``"mean"`` (default): every member uses the posterior mean μ of its window;
            ``"sample"``: member k uses its own draw w = μ + σ ε from q(w | x).
        steps, sampler, seed, batch_size, dims, progress, memory_budget, check_grid
            As for :meth:`sample`.
        """
        n = check_positive_int(n, "n")
        seed = check_seed(seed)
        encoded = self.encode(data, dims=dims, check_grid=check_grid)
        table = latents.posterior_table(encoded, n, seed, posterior)
        out = self.sample(
            data,
            n,
            steps=steps,
            sampler=sampler,
            seed=seed,
            batch_size=batch_size,
            dims=dims,
            progress=progress,
            memory_budget=memory_budget,
            check_grid=check_grid,
            latent=table,
        )
        out.attrs["comment"] = (
            f"reconstruction from the latent posterior ({posterior}) of each window of the "
            "input, generated by a latent-conditioned diffusion model"
        )
        return out

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
        check_grid: bool = True,
    ) -> xr.Dataset | float:
        """Bound on −log p(data) in bits per element, in data space (eq. 4.10).

        Parameters
        ----------
        data
            Series on the model's grid (or a sub-region of it, as for :meth:`sample`'s
            ``template``), at least :attr:`frames` long. Variables in other
            but convertible units are converted to the model's first (as for
            :meth:`sample`): the bound is that of the data in the model's units.
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
            variable → number in the model's units; None: no dry class.
        terms
            Return the Dataset of terms (default), or only the bound as a float.
        check_grid
            As for :meth:`sample`.

        See Also
        --------
        xdiffusion.likelihood.nll : the terms and the dry class.
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
            check_grid=check_grid,
        )


_FIX = "restore the config.json written by model.save(), or save the model again"


def _check_variables(config: dict[str, Any], label: str) -> None:
    """``variables``: a non-empty list of objects with distinct string names."""
    variables = config["variables"]
    if not isinstance(variables, list) or not variables:
        raise bad_model(label, f"variables must be a non-empty list, got {variables!r}; {_FIX}")
    names = []
    for i, v in enumerate(variables):
        if not isinstance(v, dict) or not isinstance(v.get("name"), str) or not v["name"]:
            raise bad_model(
                label, f"variables[{i}] must be an object with a non-empty 'name'; {_FIX}"
            )
        names.append(v["name"])
    if len(set(names)) != len(names):
        raise bad_model(label, f"variable names {names} are not distinct; {_FIX}")


def _migrate_config(config: dict[str, Any], label: str = "model") -> dict[str, Any]:
    """Schema 1 → 2: each variable's ``pipeline`` (and ``learned`` flag) becomes ``codec``."""
    if config.get("schema_version") != 1:
        return config
    _check_variables(config, label)
    variables = []
    for i, v in enumerate(config["variables"]):
        v = dict(v)
        if not isinstance(v.get("pipeline"), dict):
            raise bad_model(label, f"variables[{i}] of a schema-1 file lacks its 'pipeline'")
        pipe = dict(v.pop("pipeline"))
        if v.get("learned"):
            pipe["learned"] = {"hidden": 16, "min_grad": float(v.get("min_grad", 0.1))}
        v["codec"] = pipe
        variables.append(v)
    return {**config, "variables": variables, "schema_version": SCHEMA_UNCONDITIONAL}


def _check_config(config: dict[str, Any], label: str) -> None:
    """Refuse a (migrated) configuration that could not describe a fitted model.

    Checks types and ranges of ``frames``, ``grid``, ``variables``, ``schedule``,
    ``sampling``, ``time_features`` and the network's channel counts, so that nothing is
    built from a damaged or hand-edited ``config.json``.
    """

    def bad(why: str) -> ValueError:
        return bad_model(label, f"{why}; {_FIX}")

    frames = config["frames"]
    if not is_int(frames) or frames < 1:
        raise bad(f"frames must be a positive integer, got {frames!r}")
    grid = config["grid"]
    if not (isinstance(grid, list | tuple) and len(grid) == 2 and all(is_int(g) for g in grid)):
        raise bad(f"grid must be two positive integers [ny, nx], got {grid!r}")
    if min(grid) < 1:
        raise bad(f"grid must be two positive integers [ny, nx], got {grid!r}")
    _check_variables(config, label)
    for i, v in enumerate(config["variables"]):
        if not isinstance(v.get("codec"), dict):
            raise bad(f"variables[{i}] ({v['name']!r}) lacks its 'codec' object")
    schedule = config["schedule"]
    keys = {"kind", "lambda_min", "lambda_max"}
    if not isinstance(schedule, dict) or set(schedule) != keys:
        raise bad(
            f"schedule must be an object with exactly the keys {sorted(keys)} (as written by "
            f"CosineSchedule.to_dict()), got {schedule!r}; defaults are not assumed"
        )
    if schedule["kind"] != "cosine" or not all(
        is_number(schedule[k]) for k in ("lambda_min", "lambda_max")
    ):
        raise bad(f"schedule must be a cosine schedule with numeric bounds, got {schedule!r}")
    try:
        CosineSchedule.from_dict(schedule)
    except (TypeError, ValueError) as err:
        raise bad(f"schedule {schedule!r} is invalid ({err})") from None
    sampling = config.get("sampling")
    if sampling is not None:
        if not isinstance(sampling, dict) or set(sampling) - {"sampler", "steps"}:
            raise bad(f"sampling must be an object with 'sampler' and 'steps', got {sampling!r}")
        sampler, steps = sampling.get("sampler"), sampling.get("steps")
        if sampler is not None and (not isinstance(sampler, str) or sampler not in SAMPLERS):
            raise bad(
                f"sampling.sampler must be None or one of {sorted(SAMPLERS)}, got {sampler!r}"
            )
        if steps is not None and (not is_int(steps) or steps < 1):
            raise bad(f"sampling.steps must be None or a positive integer, got {steps!r}")
    training = config.get("training")
    if training is not None and not isinstance(training, dict):
        raise bad(f"training must be an object, got {training!r}")
    if config.get("data") is not None:
        try:
            DataSpec.from_config(config["data"], config["variables"])
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise bad(f"data is invalid ({type(err).__name__}: {err})") from None
    features = config.get("time_features") or []
    if not isinstance(features, list) or not all(f in TIME_FEATURES for f in features):
        raise bad(f"time_features must be a list of names among {sorted(TIME_FEATURES)}")
    net = config["net"]
    if not isinstance(net, dict):
        raise bad(f"net must be an object (UNetConfig.to_dict()), got {net!r}")
    try:
        net_cfg = UNetConfig.from_dict(net)
    except (TypeError, ValueError) as err:
        raise bad(f"net is invalid ({err})") from None
    c = len(config["variables"])
    if net_cfg.channels != c or net_cfg.out_channels not in (None, c):
        raise bad(f"net has {net_cfg.channels} channels for {c} variables")
    if net_cfg.cond_features != n_features(features):
        raise bad(
            f"net.cond_features={net_cfg.cond_features} does not match time_features "
            f"{features} ({n_features(features)} columns)"
        )
    latent = config.get("latent")
    if latent is None:
        if net_cfg.latent_dim:
            raise bad(f"net.latent_dim={net_cfg.latent_dim} but the file has no 'latent' section")
        return
    if not isinstance(latent, dict) or set(latent) != {"dim", "encoder"}:
        raise bad(f"latent must be an object with the keys 'dim' and 'encoder', got {latent!r}")
    if config.get("schema_version") != schema_version(config):
        raise bad(
            f"this 'latent' section needs schema_version {schema_version(config)}, the file "
            f"says {config.get('schema_version')!r}"
        )
    try:
        enc = EncoderConfig.from_dict(latent["encoder"])
    except (TypeError, ValueError) as err:
        raise bad(f"latent.encoder is invalid ({err})") from None
    if not (is_int(latent["dim"]) and latent["dim"] >= 1):
        raise bad(f"latent.dim must be a positive integer, got {latent['dim']!r}")
    if not latent["dim"] == enc.latent_dim == net_cfg.latent_dim:
        raise bad(
            f"latent.dim={latent['dim']}, latent.encoder.latent_dim={enc.latent_dim} and "
            f"net.latent_dim={net_cfg.latent_dim} must be equal"
        )
    if enc.channels != c:
        raise bad(f"latent.encoder has {enc.channels} channels for {c} variables")


def _expected_shapes(config: dict[str, Any], label: str) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape of the configured :class:`Denoiser`, allocating no network."""
    try:
        module = Denoiser.from_config(config, shapes_only=True)
    except (KeyError, TypeError, ValueError) as err:
        raise bad_model(label, f"malformed configuration ({err}); {_FIX}") from None
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _check_shapes(config: dict[str, Any], shapes: Shapes, label: str) -> None:
    """Compare the weight files' header shapes with the configured network's tensors."""
    unknown = sorted(set(shapes) - {WEIGHTS, RAW_WEIGHTS})
    if unknown:
        raise bad_model(label, f"config.json lists unknown weight files {unknown}; {_FIX}")
    if WEIGHTS not in shapes:
        raise bad_model(label, f"no {WEIGHTS} recorded")
    ema = dict(shapes[WEIGHTS])
    valid = ema.pop(VALID, None)
    if valid is None:
        raise bad_model(label, f"{WEIGHTS} lacks the {VALID!r} mask tensor")
    expected_valid = (len(config["variables"]), *(int(g) for g in config["grid"]))
    if tuple(valid) != expected_valid:
        raise bad_model(
            label,
            f"the {VALID!r} mask has shape {tuple(valid)}, not {expected_valid} (variables, "
            f"ny, nx); {_FIX}",
        )
    expected = _expected_shapes(config, label)
    for name, got in ((WEIGHTS, ema), (RAW_WEIGHTS, shapes.get(RAW_WEIGHTS))):
        if got is None:
            continue
        got = migrate_state(got)
        missing = sorted(set(expected) - set(got))
        unexpected = sorted(set(got) - set(expected))
        changed = [
            f"{k}: {list(got[k])} in the file, {list(expected[k])} in the network"
            for k in sorted(set(got) & set(expected))
            if tuple(got[k]) != expected[k]
        ]
        problems = [
            f"{what} {items[:3]}{' …' if len(items) > 3 else ''}"
            for what, items in (
                ("missing tensors", missing),
                ("unexpected tensors", unexpected),
                ("changed shapes", changed),
            )
            if items
        ]
        if problems:
            raise bad_model(
                label,
                f"{name} does not fit the configured network ({'; '.join(problems)}): the "
                f"weights and config.json do not belong together; {_FIX}",
            )


def _build(config: dict, tensors: dict[str, Tensor], path, name: str) -> Denoiser:
    try:
        module = Denoiser.from_config(config)
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

    Refuses, with ValueError, a missing or malformed ``config.json`` (wrong types or ranges
    of ``frames``, ``grid``, ``variables``, ``schedule``, ``sampling``, ``net``), an
    unknown schema version, weight-file names that leave the directory, weight files that
    are symbolic links or whose SHA-256 differs from the recorded one, and tensors with
    missing/unexpected names or changed shapes. Shapes are compared from the safetensors
    headers before any network is allocated. Only safetensors and JSON are read.
    Schema-1 files (xdiffusion before the codec) are migrated on reading.

    Parameters
    ----------
    path
        The model directory (``~`` is expanded), a ``file://`` URL, or another URL
        :mod:`fsspec` handles (``memory://``, ``s3://`` with s3fs, …; downloaded to a
        temporary directory first).
    device
        Where to put the weights (``"auto"``, ``"cpu"``, ``"cuda"``, …).

    Returns
    -------
    DiffusionModel
    """
    dev = resolve_device(device)  # a bad device fails before any file is read
    label = str(path) if isinstance(path, str | os.PathLike) else ""

    def check(config: dict[str, Any], shapes: Shapes) -> dict[str, Any]:
        config = _migrate_config(config, label)
        _check_config(config, label)
        _check_shapes(config, shapes, label)
        return config

    digests: dict[str, str] = {}
    config, files = read_model(
        path,
        schema_versions=SUPPORTED_SCHEMAS,
        required=("frames", "grid", "variables", "net", "schedule"),
        check=check,
        digests=digests,
    )
    ema = dict(files[WEIGHTS])
    valid = ema.pop(VALID)
    module = _build(config, ema, label, WEIGHTS)
    raw = _build(config, files[RAW_WEIGHTS], label, RAW_WEIGHTS) if RAW_WEIGHTS in files else None
    model = DiffusionModel(
        config,
        module,
        valid=valid.bool(),
        raw_module=raw,
        path=_path_label(path),
        config_sha256=digests[CONFIG],
    )
    return model.to(dev)


def _path_label(path: str | os.PathLike) -> str:
    """How the provenance names a model location: a local path as given (``~`` expanded,
    ``file://`` dropped), a URL as given."""
    text = os.fspath(path)
    if "://" in text and not text.startswith("file://"):
        return text
    return os.path.expanduser(text.removeprefix("file://"))


def check_model(model: Any, name: str = "model") -> DiffusionModel:
    """``model`` if it is a :class:`DiffusionModel`, else a TypeError saying where to get one."""
    if not isinstance(model, DiffusionModel):
        raise TypeError(
            f"{name} must be an xdiffusion.DiffusionModel (from .diffusion.fit() or "
            f"xdiffusion.load()), got {type(model).__name__}"
        )
    return model
