"""The ``.diffusion`` accessors on DataArray and Dataset: thin fronts, no maths.

Each method checks its model argument and forwards to :class:`~xdiffusion.DiffusionModel`
(or :func:`xdiffusion.fit`, :func:`xdiffusion.diagnostics.evaluate`), returning a new
object; no state is kept on the accessor (xarray rebuilds accessors for every object).
The signatures are spelled out so that ``help(da.diffusion.sample)`` and IDEs show them.
Registering the accessors imports no torch: the model and fitting modules are imported
inside the methods, so ``import xdiffusion`` stays light until a model is needed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import xarray as xr

from xdiffusion.diagnostics import evaluate
from xdiffusion.diagnostics._util import MEMBER_DIM

if TYPE_CHECKING:  # torch and the model load on first use: registering stays cheap
    import torch

    from xdiffusion.model import DiffusionModel

__all__ = ["DataArrayDiffusionAccessor", "DatasetDiffusionAccessor"]

Dims = Mapping[str, str] | None


class _DiffusionAccessor:
    def __init__(self, obj: xr.DataArray | xr.Dataset) -> None:
        self._obj = obj

    def fit(
        self,
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
        """Train a model on this object; see :func:`xdiffusion.fit` for every argument.

        ``patch`` (e.g. ``64`` or ``(48, 64)``) trains on random spatial crops of the grid;
        the model still generates on the whole grid or any sub-region of it.
        ``compile=True`` trains with the network's forward under ``torch.compile``
        (for GPUs; raises if torch.compile is unavailable, never falls back silently).
        ``latent_dim=k`` learns an encoder and a latent-conditioned network (see
        docs/latent.md); ``objective="elbo"`` trains on the variational bound.

        Returns
        -------
        DiffusionModel
            The fitted model (a new object; nothing is kept on the accessor).
        """
        from xdiffusion.fitting import fit

        return fit(
            self._obj,
            frames=frames,
            transform=transform,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            warmup=warmup,
            lr_schedule=lr_schedule,
            t_sampling=t_sampling,
            ema_decay=ema_decay,
            grad_clip=grad_clip,
            seed=seed,
            device=device,
            progress=progress,
            dims=dims,
            variables=variables,
            preset=preset,
            net=net,
            val_fraction=val_fraction,
            val_every=val_every,
            lambda_min=lambda_min,
            lambda_max=lambda_max,
            min_grad=min_grad,
            dry_threshold=dry_threshold,
            transform_lr_scale=transform_lr_scale,
            sampler=sampler,
            sampling_steps=sampling_steps,
            time_features=time_features,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every,
            keep_checkpoints=keep_checkpoints,
            resume=resume,
            loader=loader,
            buffer_chunks=buffer_chunks,
            patch=patch,
            compile=compile,
            latent_dim=latent_dim,
            objective=objective,
            beta=beta,
            free_bits=free_bits,
            encoder=encoder,
            high_noise=high_noise,
            snr_cap=snr_cap,
            lambda_shift=lambda_shift,
            multiscale=multiscale,
        )

    def sample(
        self,
        model: DiffusionModel,
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
        """Draw ``n`` unconditional samples shaped like this object.

        This object is ``template`` of :meth:`DiffusionModel.sample`, where every argument is
        described; returns a new object.
        """
        from xdiffusion.model import check_model

        return check_model(model).sample(
            self._obj,
            n,
            steps=steps,
            sampler=sampler,
            seed=seed,
            context=context,
            batch_size=batch_size,
            dims=dims,
            progress=progress,
            memory_budget=memory_budget,
            check_grid=check_grid,
            latent=latent,
        )

    def interpolate(
        self,
        model: DiffusionModel,
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
        """Fill the NaN time steps and cells of this series of any length.

        This object is ``data`` of :meth:`DiffusionModel.interpolate`, where every argument is
        described; returns a new object.
        """
        from xdiffusion.model import check_model

        return check_model(model).interpolate(
            self._obj,
            n,
            method=method,
            guidance_weight=guidance_weight,
            steps=steps,
            sampler=sampler,
            seed=seed,
            context=context,
            batch_size=batch_size,
            dims=dims,
            progress=progress,
            memory_budget=memory_budget,
            check_grid=check_grid,
            latent=latent,
        )

    def forecast(
        self,
        model: DiffusionModel,
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
        """Continue this series ``lead`` time steps past its end, ``n`` members.

        This object is ``data`` of :meth:`DiffusionModel.forecast`, where every argument is
        described; returns a new object.
        """
        from xdiffusion.model import check_model

        return check_model(model).forecast(
            self._obj,
            lead,
            n,
            context=context,
            method=method,
            guidance_weight=guidance_weight,
            steps=steps,
            sampler=sampler,
            seed=seed,
            batch_size=batch_size,
            dims=dims,
            progress=progress,
            memory_budget=memory_budget,
            check_grid=check_grid,
            latent=latent,
        )

    def downscale(
        self,
        model: DiffusionModel,
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

        This object is ``coarse`` of :meth:`DiffusionModel.downscale`, where every argument is
        described; returns a new object.
        """
        from xdiffusion.model import check_model

        return check_model(model).downscale(
            self._obj,
            n,
            factor=factor,
            like=like,
            guidance_weight=guidance_weight,
            project=project,
            steps=steps,
            sampler=sampler,
            seed=seed,
            batch_size=batch_size,
            dims=dims,
            progress=progress,
            memory_budget=memory_budget,
            check_grid=check_grid,
            latent=latent,
        )

    def encode(
        self,
        model: DiffusionModel,
        *,
        dims: Dims = None,
        check_grid: bool = True,
        batch_size: int = 16,
    ) -> xr.Dataset:
        """The posterior q(w | window) of a latent model for each non-overlapping window of
        this series: ``latent_mean`` and ``latent_std`` on (``window``, ``latent``).

        See :meth:`DiffusionModel.encode`; returns a new Dataset.
        """
        from xdiffusion.model import check_model

        return check_model(model).encode(
            self._obj, dims=dims, check_grid=check_grid, batch_size=batch_size
        )

    def reconstruct(
        self,
        model: DiffusionModel,
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
        """Encode this series, then sample ``n`` members, each window with its own latent.

        See :meth:`DiffusionModel.reconstruct`; returns a new object.
        """
        from xdiffusion.model import check_model

        return check_model(model).reconstruct(
            self._obj,
            n,
            posterior=posterior,
            steps=steps,
            sampler=sampler,
            seed=seed,
            batch_size=batch_size,
            dims=dims,
            progress=progress,
            memory_budget=memory_budget,
            check_grid=check_grid,
        )

    def evaluate(
        self,
        reference: xr.DataArray | xr.Dataset,
        *,
        observations: xr.DataArray | xr.Dataset | None = None,
        dims: Dims = None,
        member_dim: str = MEMBER_DIM,
        fair: bool | None = None,
    ) -> xr.Dataset:
        """Diagnostics of this ensemble against ``reference``.

        See :func:`xdiffusion.diagnostics.evaluate` for the arguments and outputs. On a
        Dataset, ``reference`` (and ``observations``) are Datasets too, and each gridded
        variable in both is evaluated; its diagnostics are named ``<variable>_<name>``.
        """
        return evaluate(
            self._obj,
            reference,
            observations=observations,
            dims=dims,
            member_dim=member_dim,
            fair=fair,
        )


@xr.register_dataarray_accessor("diffusion")
class DataArrayDiffusionAccessor(_DiffusionAccessor):
    """``da.diffusion``: fit, sample, interpolate, forecast, downscale, encode, reconstruct,
    evaluate."""


@xr.register_dataset_accessor("diffusion")
class DatasetDiffusionAccessor(_DiffusionAccessor):
    """``ds.diffusion``: the same, with variables learned jointly as channels."""
