"""Generating tasks on xarray objects: sample, interpolate, forecast, downscale.

Each function validates and converts its xarray input (:mod:`xdiffusion.inputs`), runs
the tensor :class:`~xdiffusion.engine.Engine` with settings already resolved
(:class:`~xdiffusion.settings.SamplingSettings`), and wraps the result with CF metadata
(:mod:`xdiffusion.io.cf`), recording the settings that ran. :class:`DiffusionModel`'s
methods resolve the settings and call these.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping

import numpy as np
import torch
import xarray as xr

from xdiffusion.engine import Engine
from xdiffusion.inputs import (
    check_lower,
    encode_known,
    features,
    prepare_for,
    static_nan,
    values_of,
)
from xdiffusion.io.cf import wrap
from xdiffusion.io.convert import Prepared
from xdiffusion.io.windows import regular_step
from xdiffusion.settings import SamplingSettings
from xdiffusion.validation import check_bool, check_int, check_positive_int, check_seed

__all__ = ["downscale", "forecast", "interpolate", "sample"]

Dims = Mapping[str, str] | None


def _wrap(
    p: Prepared,
    values: np.ndarray,
    n: int,
    settings: SamplingSettings,
    args: dict,
    source: xr.DataArray | xr.Dataset,
    *,
    observed: np.ndarray | None = None,
    coords: dict | None = None,
) -> xr.DataArray | xr.Dataset:
    dims = [p.axes[a] for a in ("T", "Y", "X") if a in p.axes]
    resolved = {k: v for k, v in settings.as_dict().items() if k != "task" and v is not None}
    return wrap(
        values,
        templates=p.arrays,
        names=p.variables,
        dims=dims,
        members=range(n),
        method=settings.task,
        arguments={**args, **resolved},
        as_dataset=p.is_dataset,
        observed=observed,
        coords=coords,
        global_attrs=source.attrs if p.is_dataset else None,
        extra_attrs={"sampling": settings.describe()},
    )


def _common(n, seed, batch_size, progress) -> tuple[int, int]:
    check_positive_int(batch_size, "batch_size", allow_none=True)
    check_bool(progress, "progress")
    return check_positive_int(n, "n"), check_seed(seed)  # type: ignore[return-value]


def sample(
    engine: Engine,
    template: xr.DataArray | xr.Dataset,
    n: int,
    settings: SamplingSettings,
    *,
    seed: int = 0,
    context: int | None = None,
    batch_size: int | None = None,
    dims: Dims = None,
    progress: bool = True,
) -> xr.DataArray | xr.Dataset:
    """``n`` unconditional members shaped like ``template``; see ``DiffusionModel.sample``."""
    n, seed = _common(n, seed, batch_size, progress)
    p = prepare_for(engine, template, dims, "template")
    c, t, h, w = p.shape
    x = torch.zeros(c, t, h, w)
    mask = torch.zeros(c, t, h, w, dtype=torch.bool)
    with torch.no_grad():
        y = engine.complete(
            x,
            mask,
            settings,
            n=n,
            seed=seed,
            context=context,
            batch_size=batch_size,
            cond=features(engine, p.time),
            progress=progress,
        )
        phys = static_nan(engine, engine.codec.decode(y)).cpu().numpy()
    return _wrap(p, phys, n, settings, {"n": n, "seed": seed}, template)


def interpolate(
    engine: Engine,
    data: xr.DataArray | xr.Dataset,
    n: int,
    settings: SamplingSettings,
    *,
    seed: int = 0,
    context: int | None = None,
    batch_size: int | None = None,
    dims: Dims = None,
    progress: bool = True,
) -> xr.DataArray | xr.Dataset:
    """Fill NaN gaps, observed values kept; see ``DiffusionModel.interpolate``."""
    n, seed = _common(n, seed, batch_size, progress)
    p = prepare_for(engine, data, dims, "data")
    values = values_of(p)
    enc, known, finite = encode_known(engine, values)
    if bool(known.all()):
        raise ValueError("data has no missing values to fill: mark the gaps with NaN")
    if not bool(finite.any()):
        raise ValueError("data is all NaN: interpolate needs observed values; use sample()")
    with torch.no_grad():
        y = engine.complete(
            enc,
            known,
            settings,
            n=n,
            seed=seed,
            context=context,
            batch_size=batch_size,
            cond=features(engine, p.time),
            progress=progress,
        )
        gen = static_nan(engine, engine.codec.decode(y)).cpu().numpy()
    obs = finite.numpy()
    out = np.where(obs[None], values[None], gen.astype(values.dtype))
    return _wrap(p, out, n, settings, {"n": n, "seed": seed}, data, observed=obs)


def future_times(time: xr.DataArray, lead: int) -> np.ndarray:
    """``lead`` time stamps continuing ``time`` at its regular step (cftime too)."""
    step = regular_step(time)
    if step <= 0:
        raise ValueError("forecast needs at least two time steps to infer the frequency")
    last = time.values[-1]
    if np.issubdtype(time.dtype, np.datetime64):
        delta = np.timedelta64(round(step * 1e9), "ns")
        return (last + delta * np.arange(1, lead + 1)).astype(time.dtype)
    return np.array([last + _dt.timedelta(seconds=step * k) for k in range(1, lead + 1)])


def forecast(
    engine: Engine,
    data: xr.DataArray | xr.Dataset,
    lead: int,
    n: int,
    settings: SamplingSettings,
    *,
    seed: int = 0,
    context: int | None = None,
    batch_size: int | None = None,
    dims: Dims = None,
    progress: bool = True,
) -> xr.DataArray | xr.Dataset:
    """Continue past the end; see ``DiffusionModel.forecast``."""
    n, seed = _common(n, seed, batch_size, progress)
    lead = check_positive_int(lead, "lead")
    ctx = engine.frames // 2 if context is None else context
    ctx = check_int(
        ctx,
        "context",
        minimum=1,
        maximum=engine.frames - 1,
        what=f"an integer in [1, frames - 1 = {engine.frames - 1}]",
    )
    p = prepare_for(engine, data, dims, "data")
    if p.shape[1] < ctx:
        raise ValueError(f"data has {p.shape[1]} time steps, fewer than context={ctx}")
    if p.time is None:
        raise ValueError("forecast needs a time coordinate to continue")
    tname = p.axes["T"]
    new_time = future_times(p.arrays[0][tname], lead)
    values = values_of(p)[:, -ctx:]
    cond = None
    if engine.time_features:
        times = np.concatenate([np.asarray(p.time.values[-ctx:]), np.asarray(new_time)])
        cond = features(engine, times)
    enc, known, finite = encode_known(engine, values)
    if not bool(finite.any()):
        raise ValueError(
            f"data is all NaN in its last context={ctx} time steps: forecast conditions on "
            "them; drop trailing NaN steps (e.g. data.dropna('time', how='all')) or use sample()"
        )
    c, _, h, w = enc.shape
    x = torch.cat([enc, torch.zeros(c, lead, h, w)], 1)
    mask = torch.cat([known, torch.zeros(c, lead, h, w, dtype=torch.bool)], 1)
    mask[:, ctx:] |= ~engine.valid.cpu()[:, None]
    with torch.no_grad():
        y = engine.complete(
            x,
            mask,
            settings,
            n=n,
            seed=seed,
            context=ctx,
            batch_size=batch_size,
            cond=cond,
            progress=progress,
        )
        gen = static_nan(engine, engine.codec.decode(y[:, :, ctx:])).cpu().numpy()
    tmpl = p.arrays[0]
    coords = {k: v.variable for k, v in tmpl.coords.items() if tname not in v.dims}
    coords[tname] = xr.Variable(tname, new_time, tmpl[tname].attrs)
    args = {"lead": lead, "n": n, "context": ctx, "seed": seed}
    return _wrap(p, gen, n, settings, args, data, coords=coords)


def _fine_coord(coarse: xr.DataArray, factor: int) -> np.ndarray:
    v = np.asarray(coarse.values, dtype=float)
    d = np.diff(v).mean() if v.size > 1 else 1.0
    offsets = (np.arange(factor) + 0.5) / factor - 0.5
    return (v[:, None] + offsets[None] * d).ravel()


def downscale(
    engine: Engine,
    coarse: xr.DataArray | xr.Dataset,
    n: int,
    settings: SamplingSettings,
    *,
    factor: int | None = None,
    like: xr.DataArray | xr.Dataset | None = None,
    project: bool = True,
    seed: int = 0,
    batch_size: int | None = None,
    dims: Dims = None,
    progress: bool = True,
) -> xr.DataArray | xr.Dataset:
    """Coarse → fine ensemble; see ``DiffusionModel.downscale``."""
    n, seed = _common(n, seed, batch_size, progress)
    project = check_bool(project, "project")
    p = prepare_for(engine, coarse, dims, "coarse", grid=False)
    hc, wc = p.shape[2:]
    q = None
    if like is not None:
        q = prepare_for(engine, like, dims, "like")
        fh, fw = q.shape[2:]
        if fh % hc or fw % wc or fh // hc != fw // wc:
            raise ValueError(
                f"like grid {(fh, fw)} is not an integer multiple of coarse {(hc, wc)}"
            )
        if factor is not None and check_positive_int(factor, "factor") != fh // hc:
            raise ValueError(
                f"factor={factor} disagrees with like=, whose grid is {fh // hc}× the coarse one"
            )
        factor = fh // hc
    elif factor is None:
        raise ValueError("give factor= (an integer ≥ 2) or like= (a fine template)")
    factor = check_positive_int(factor, "factor")
    if (hc * factor, wc * factor) != engine.grid:
        raise ValueError(
            f"coarse grid {(hc, wc)} × factor {factor} = {(hc * factor, wc * factor)} differs "
            f"from the model's fine grid {engine.grid}"
        )
    y_phys = torch.from_numpy(values_of(p).astype(np.float32))
    if not bool(torch.isfinite(y_phys).all()):
        raise ValueError("coarse contains NaN or infinite values; fill or drop them first")
    check_lower(engine, y_phys, "coarse")
    gen = engine.downscale(
        y_phys,
        factor,
        settings,
        n=n,
        seed=seed,
        batch_size=batch_size,
        cond=features(engine, p.time),
        project=project,
        progress=progress,
    )
    gen = static_nan(engine, gen).cpu().numpy()
    ax = p.axes
    tmpl = p.arrays[0]
    coords = {
        k: v.variable
        for k, v in tmpl.coords.items()
        if ax["Y"] not in v.dims and ax["X"] not in v.dims
    }
    if q is not None:
        lt = q.arrays[0]
        for a in ("Y", "X"):
            cv = lt[q.axes[a]]
            coords[ax[a]] = xr.Variable(ax[a], cv.values, cv.attrs)
    else:
        for a in ("Y", "X"):
            cc = tmpl[ax[a]]
            coords[ax[a]] = xr.Variable(ax[a], _fine_coord(cc, factor), cc.attrs)
    args = {"n": n, "factor": factor, "project": project, "seed": seed}
    return _wrap(p, gen, n, settings, args, coarse, coords=coords)
