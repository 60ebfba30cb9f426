"""Latents on xarray objects: encode windows to q(w | x), and turn latents into the per-frame
tables the engine conditions on (seed 003; docs/latent.md).

:func:`encode` cuts a series into non-overlapping windows of ``frames`` steps (never across a
gap of the time axis; a trailing remainder shorter than a window is left out, as in
:func:`xdiffusion.likelihood.nll`), reads them batch by batch (a dask-backed input is read
window by window) and returns the posterior mean and standard deviation of w per window.

:func:`latent_table` accepts what a user passes as ``latent=``: a vector, a DataArray with
dimensions among (``member``, ``window``, ``latent``) (for example one latent per window
from :func:`encode`), or :func:`encode`'s Dataset itself, and gives the engine one vector
per frame (and per member). A frame takes the latent of the last window that starts at or
before it (by ``window_start`` and the time coordinate where both exist, else by position).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import xarray as xr

from xdiffusion.core.noise import MemberNoise
from xdiffusion.engine import LATENT_STREAM, Engine
from xdiffusion.inputs import check_lower, prepare_region
from xdiffusion.io.windows import WindowReader
from xdiffusion.likelihood import window_positions
from xdiffusion.validation import check_bool, check_positive_int

__all__ = [
    "LATENT_DIM",
    "MEMBER_DIM",
    "POSTERIORS",
    "WINDOW_DIM",
    "describe_latent",
    "encode",
    "latent_table",
    "posterior_table",
]

LATENT_DIM = "latent"
WINDOW_DIM = "window"
MEMBER_DIM = "member"
#: How :func:`posterior_table` turns q(w | x) into latents: its mean, or a draw per member.
POSTERIORS = ("mean", "sample")
#: Noise stream of posterior draws (apart from the prior's :data:`LATENT_STREAM`).
POSTERIOR_STREAM = LATENT_STREAM + 1

Dims = Mapping[str, str] | None


def _require_latent(engine: Engine) -> int:
    if not engine.latent_dim or engine.encoder is None:
        raise ValueError(
            "this model has no latent: fit it with latent_dim=k (docs/latent.md) to encode, "
            "reconstruct or pass latent="
        )
    return engine.latent_dim


def encode(
    engine: Engine,
    data: xr.DataArray | xr.Dataset,
    *,
    dims: Dims = None,
    check_grid: bool = True,
    batch_size: int = 16,
) -> xr.Dataset:
    """Posterior q(w | window) = N(μ, σ²) of each non-overlapping window of ``data``.

    Parameters
    ----------
    engine
        A latent model's engine (with its encoder).
    data
        (time, y, x) DataArray or Dataset with the model's variables, on the training grid
        or a sub-region of it, at least ``frames`` long; may be dask-backed (read window by
        window). Missing values (NaN) are allowed: the encoder reads a mask of the observed
        elements, and ``observed_fraction`` says how much each window held.
    dims
        Axis overrides, e.g. ``{"T": "time", "Y": "rlat", "X": "rlon"}``.
    check_grid
        As for generation: refuse grid coordinates that are neither the training grid's nor
        a sub-region's (False: accept a grid of the training grid's size).
    batch_size
        Windows per encoder call.

    Returns
    -------
    xr.Dataset
        ``latent_mean`` and ``latent_std`` on (``window``, ``latent``), ``observed_fraction``
        on ``window``; coordinates ``window_start`` (the window's first time step, where the
        input has a time coordinate) and ``latent`` (0 … k − 1).
    """
    k = _require_latent(engine)
    batch_size = check_positive_int(batch_size, "batch_size")
    check_grid = check_bool(check_grid, "check_grid")
    p, engine = prepare_region(engine, data, dims, "data", check_grid=check_grid)
    starts = window_positions(p, engine.frames)
    reader = WindowReader(p.data, engine.frames)
    valid = engine.valid.cpu()[None, :, None]
    means, logvars, fractions = [], [], []
    for i in range(0, len(starts), batch_size):
        x = torch.from_numpy(reader.read(starts[i : i + batch_size]))
        if bool(torch.isinf(x).any()):
            raise ValueError(
                "data contains infinite values; replace them with NaN, e.g. "
                "da.where(np.isfinite(da))"
            )
        mask = torch.isfinite(x) & valid
        check_lower(engine, x.transpose(0, 1).flatten(1, 2), "data")
        mu, logvar = engine.encode(torch.nan_to_num(x), mask)
        means.append(mu.cpu())
        logvars.append(logvar.cpu())
        fractions.append(mask.flatten(1).float().mean(1) / valid.float().mean().clamp_min(1e-12))
    mean = torch.cat(means).numpy().astype(np.float64)
    std = torch.cat(logvars).mul(0.5).exp().numpy().astype(np.float64)
    coords: dict[str, Any] = {LATENT_DIM: (LATENT_DIM, np.arange(k))}
    if p.time is not None:
        coords["window_start"] = (
            WINDOW_DIM,
            np.asarray(p.time.values)[starts],
            {"long_name": "first time step of the window"},
        )
    variables = ", ".join(engine.variables)
    return xr.Dataset(
        {
            "latent_mean": (
                (WINDOW_DIM, LATENT_DIM),
                mean,
                {"long_name": "mean of the latent posterior q(w|x)", "units": "1"},
            ),
            "latent_std": (
                (WINDOW_DIM, LATENT_DIM),
                std,
                {"long_name": "standard deviation of the latent posterior q(w|x)", "units": "1"},
            ),
            "observed_fraction": (
                (WINDOW_DIM,),
                torch.cat(fractions).numpy().clip(0.0, 1.0),
                {"long_name": "fraction of the window's valid elements observed", "units": "1"},
            ),
        },
        coords=coords,
        attrs={
            "title": "xdiffusion latent encoding",
            "comment": (
                "posterior q(w|x) = N(latent_mean, latent_std**2) of a latent-conditioned "
                "diffusion model for each non-overlapping window of `frames` time steps; "
                "the prior is N(0, I)"
            ),
            "variables": variables,
            "frames": engine.frames,
        },
    )


def _frame_index(window_starts: np.ndarray | None, time, t: int, frames: int, n_windows: int):
    """For each of ``t`` frames, the index of the window whose latent it takes."""
    if window_starts is not None and time is not None:
        idx = np.searchsorted(window_starts, np.asarray(time.values), side="right") - 1
    else:
        idx = np.arange(t) // frames
    return np.clip(idx, 0, n_windows - 1)


def latent_table(
    engine: Engine,
    latent: Any,
    time,
    t: int,
    n: int,
) -> torch.Tensor | None:
    """What the engine conditions on for a ``latent=`` argument.

    Parameters
    ----------
    engine
        The model's engine.
    latent
        None (each member draws w ~ N(0, I) from its own stream); a vector of k numbers
        (every member, every frame); a DataArray with a ``latent`` dimension of size k and
        optionally ``window`` (one latent per window: a frame takes its window's, matched by
        the ``window_start`` coordinate against the time coordinate where both exist, else by
        position, ``frames`` frames per window) and ``member`` (one per member, of size
        ``n``); or the Dataset of :func:`encode` (its ``latent_mean``).
    time
        The output's time coordinate (or None).
    t, n
        Output length and member count.

    Returns
    -------
    torch.Tensor or None
        None, (t, k) or (n, t, k) float32.
    """
    if latent is None:
        return None
    k = _require_latent(engine)
    if isinstance(latent, xr.Dataset):
        if "latent_mean" not in latent:
            raise ValueError(
                "latent= as a Dataset must be the output of encode() (with 'latent_mean')"
            )
        latent = latent["latent_mean"]
    if not isinstance(latent, xr.DataArray):
        values = np.asarray(latent, dtype=np.float64)
        if values.shape != (k,):
            raise ValueError(
                f"latent= must be a vector of the model's latent_dim={k} numbers, a DataArray "
                f"with a '{LATENT_DIM}' dimension, or encode()'s Dataset; got shape "
                f"{values.shape} (for one latent per window or member use a DataArray with "
                f"'{WINDOW_DIM}' / '{MEMBER_DIM}' dimensions)"
            )
        latent = xr.DataArray(values, dims=[LATENT_DIM])
    extra = set(latent.dims) - {LATENT_DIM, WINDOW_DIM, MEMBER_DIM}
    if LATENT_DIM not in latent.dims or extra:
        raise ValueError(
            f"latent= DataArray must have a '{LATENT_DIM}' dimension and optionally "
            f"'{WINDOW_DIM}' and '{MEMBER_DIM}'; got dimensions {latent.dims}"
        )
    if latent.sizes[LATENT_DIM] != k:
        raise ValueError(
            f"latent= has {latent.sizes[LATENT_DIM]} '{LATENT_DIM}' entries; the model's "
            f"latent_dim is {k}"
        )
    if MEMBER_DIM in latent.dims and latent.sizes[MEMBER_DIM] != n:
        raise ValueError(f"latent= has {latent.sizes[MEMBER_DIM]} members; n={n} were asked for")
    order = [d for d in (MEMBER_DIM, WINDOW_DIM, LATENT_DIM) if d in latent.dims]
    values = np.asarray(latent.transpose(*order).values, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError("latent= holds NaN or infinite values")
    if WINDOW_DIM in latent.dims:
        starts = None
        if "window_start" in latent.coords:
            starts = np.asarray(latent["window_start"].values)
            if np.any(starts[1:] < starts[:-1]):
                raise ValueError("latent= window_start must be ascending")
        idx = _frame_index(starts, time, t, engine.frames, latent.sizes[WINDOW_DIM])
        values = values[..., idx, :] if MEMBER_DIM in latent.dims else values[idx]
    elif MEMBER_DIM in latent.dims:
        values = np.broadcast_to(values[:, None, :], (n, t, k))
    else:
        values = np.broadcast_to(values[None, :], (t, k))
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))


def describe_latent(latent: Any) -> dict[str, str]:
    """How an output's ``history`` line names a ``latent=`` argument (empty for None)."""
    if latent is None:
        return {}
    if isinstance(latent, xr.Dataset | xr.DataArray):
        sizes = dict(latent.sizes)
        return {"latent": " x ".join(f"{k}={v}" for k, v in sizes.items())}
    return {"latent": "vector"}


def posterior_table(
    encoded: xr.Dataset, n: int, seed: int, posterior: str = "mean"
) -> xr.DataArray:
    """Latents to reconstruct from: the posterior mean per window, or a draw per member.

    ``posterior="sample"`` draws w = μ + σ ε per member and window, ε from the member's own
    stream (seed, member, :data:`POSTERIOR_STREAM`), so members differ in their latents as
    well as in their diffusion noise and do not depend on how they are batched.
    """
    if posterior not in POSTERIORS:
        raise ValueError(f"posterior must be one of {list(POSTERIORS)}, got {posterior!r}")
    mean = encoded["latent_mean"]
    if posterior == "mean":
        return mean
    shape = (mean.sizes[WINDOW_DIM], mean.sizes[LATENT_DIM])
    eps = MemberNoise(seed, range(n), shape, stream=POSTERIOR_STREAM)().numpy()
    draws = mean.values[None] + encoded["latent_std"].values[None] * eps
    return xr.DataArray(
        draws, dims=(MEMBER_DIM, WINDOW_DIM, LATENT_DIM), coords=mean.coords, name="latent"
    )
