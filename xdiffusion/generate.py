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
from itertools import pairwise

import dask
import dask.array as dsa
import numpy as np
import torch
import xarray as xr

from xdiffusion.engine import Engine
from xdiffusion.inputs import check_lower, features, prepare_for, values_of
from xdiffusion.io.cf import wrap
from xdiffusion.io.convert import Prepared, raise_if_overflow
from xdiffusion.io.windows import regular_step
from xdiffusion.lazy import lazy_complete, lazy_downscale, time_chunks
from xdiffusion.resources import eager_batch, lazy_batch, resolve_budget
from xdiffusion.settings import SamplingSettings
from xdiffusion.validation import check_bool, check_int, check_positive_int, check_seed

__all__ = ["FINE_COORD_DIGITS", "downscale", "forecast", "interpolate", "sample"]

#: Significant digits (relative to the axis extent) kept in the origin and spacing of
#: fine coordinates rebuilt by ``downscale(factor=)``.
FINE_COORD_DIGITS = 12

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


def is_lazy(p: Prepared) -> bool:
    """Whether the prepared input is dask-backed (then outputs are lazy too)."""
    return isinstance(p.data, dsa.Array)


def _chunk_frames(p: Prepared, engine: Engine) -> int:
    """The largest output time chunk of a dask-backed input (whole windows)."""
    return max(b - a for a, b in time_chunks(p.shape[1], p.data.chunks[1], engine.frames))


def _check_minimum(engine: Engine, lowest, argument: str) -> None:
    """``lowest``: per variable minimum (computed lazily) against the codec's lower bounds."""
    check_lower(engine, torch.as_tensor(np.asarray(lowest, dtype=np.float64))[:, None], argument)


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
    memory_budget: int | str | None = None,
) -> xr.DataArray | xr.Dataset:
    """``n`` unconditional members shaped like ``template``; see ``DiffusionModel.sample``."""
    n, seed = _common(n, seed, batch_size, progress)
    p = prepare_for(engine, template, dims, "template")
    c, t, h, w = p.shape
    mask = torch.zeros(c, t, h, w, dtype=torch.bool)
    plan = engine.plan(mask, context)
    budget = resolve_budget(memory_budget)
    cond = features(engine, p.time)
    if is_lazy(p):
        bs = lazy_batch(engine, n, batch_size, budget, c * _chunk_frames(p, engine) * h * w)
        values = lazy_complete(
            engine,
            settings,
            n=n,
            seed=seed,
            batch_size=bs,
            length=t,
            chunks=time_chunks(t, p.data.chunks[1], engine.frames),
            plan=plan,
            cond=cond,
        )
    else:
        bs = eager_batch(engine, n, batch_size, budget, c * t * h * w)
        x = torch.zeros(c, t, h, w)
        with torch.no_grad():
            y = engine.complete(
                x,
                mask,
                settings,
                n=n,
                seed=seed,
                context=context,
                batch_size=bs,
                cond=cond,
                progress=progress,
            )
            values = engine.static_nan(engine.codec.decode(y)).cpu().numpy()
    return _wrap(p, values, n, settings, {"n": n, "seed": seed}, template)


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
    memory_budget: int | str | None = None,
) -> xr.DataArray | xr.Dataset:
    """Fill NaN gaps, observed values kept; see ``DiffusionModel.interpolate``."""
    n, seed = _common(n, seed, batch_size, progress)
    p = prepare_for(engine, data, dims, "data")
    budget = resolve_budget(memory_budget)
    cond = features(engine, p.time)
    c, t, h, w = p.shape
    if is_lazy(p):
        # one streaming pass for where the gaps are; the data are read again only by the
        # windows around them and by the output chunks
        phys = p.data
        finite = dsa.isfinite(phys)
        valid = engine.valid.cpu().numpy()[:, None]
        frame_known, any_finite, lowest = dask.compute(
            (finite | ~valid).all(axis=(0, 2, 3)),
            finite.any(),
            dsa.nanmin(dsa.where(finite, phys, np.inf), axis=(1, 2, 3)),
        )
        _check_minimum(engine, lowest, "data")
        if bool(frame_known.all()):
            raise ValueError("data has no missing values to fill: mark the gaps with NaN")
        if not bool(any_finite):
            raise ValueError("data is all NaN: interpolate needs observed values; use sample()")
        mask = torch.from_numpy(np.asarray(frame_known))[None, :, None, None].expand(1, t, 1, 1)
        plan = engine.plan(mask, context)
        bs = lazy_batch(engine, n, batch_size, budget, c * _chunk_frames(p, engine) * h * w)
        # the tasks read the variables as given (float32 for the network, the input's dtype
        # for the observations kept bit for bit), like the eager path
        dtype = np.result_type(np.float32, *(a.dtype for a in p.arrays))
        source = dsa.stack([a.data.astype(dtype) for a in p.arrays])
        values = lazy_complete(
            engine,
            settings,
            n=n,
            seed=seed,
            batch_size=bs,
            length=t,
            chunks=time_chunks(t, phys.chunks[1], engine.frames),
            plan=plan,
            phys=source,
            cond=cond,
            dtype=dtype,
        )
        observed = dsa.isfinite(phys)
        return _wrap(p, values, n, settings, {"n": n, "seed": seed}, data, observed=observed)
    values = values_of(p)
    overflow = np.isinf(values).any(axis=(1, 2, 3))
    if overflow.any():  # float64 values beyond float32's range: say so, not "infinite"
        raise_if_overflow(p.arrays, np.flatnonzero(overflow), "data")
    check_lower(engine, torch.from_numpy(values), "data")
    enc, known, finite = engine.encode_known(torch.from_numpy(values))
    if bool(known.all()):
        raise ValueError("data has no missing values to fill: mark the gaps with NaN")
    if not bool(finite.any()):
        raise ValueError("data is all NaN: interpolate needs observed values; use sample()")
    bs = eager_batch(engine, n, batch_size, budget, c * t * h * w)
    with torch.no_grad():
        y = engine.complete(
            enc,
            known,
            settings,
            n=n,
            seed=seed,
            context=context,
            batch_size=bs,
            cond=cond,
            progress=progress,
        )
        gen = engine.static_nan(engine.codec.decode(y)).cpu().numpy()
    obs = finite.numpy()
    # p.data is float32 (what the model sees); the output keeps the input's dtype and its
    # observations bit for bit, so they come from the variables as given
    dtype = np.result_type(np.float32, *(a.dtype for a in p.arrays))
    source = np.stack([np.asarray(a.values, dtype=dtype) for a in p.arrays])
    if "T" not in p.axes:
        source = source[:, None]
    out = np.where(obs[None], source[None], gen.astype(dtype))
    return _wrap(p, out, n, settings, {"n": n, "seed": seed}, data, observed=obs)


def future_times(time: xr.DataArray, lead: int) -> np.ndarray:
    """``lead`` time stamps continuing ``time`` at its regular step.

    datetime64 and cftime axes continue in seconds; a numeric axis (hours as floats, step
    counts as integers) continues with its own modal step, in its dtype.
    """
    step = regular_step(time)
    if step <= 0:
        raise ValueError("forecast needs at least two time steps to infer the frequency")
    values = np.asarray(time.values)
    last = values[-1]
    k = np.arange(1, lead + 1)
    if np.issubdtype(values.dtype, np.datetime64):
        delta = np.timedelta64(round(step * 1e9), "ns")
        return (last + delta * k).astype(values.dtype)
    if np.issubdtype(values.dtype, np.integer):
        return (last + round(step) * k).astype(values.dtype)
    if np.issubdtype(values.dtype, np.number):
        return (last + step * k).astype(values.dtype)
    return np.array([last + _dt.timedelta(seconds=step * j) for j in k.tolist()])


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
    memory_budget: int | str | None = None,
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
    # only the context is read, whatever the input's size
    context_values = np.asarray(p.data[:, -ctx:])
    if hasattr(context_values, "compute"):
        context_values = context_values.compute()
    cond = None
    if engine.time_features:
        times = np.concatenate([np.asarray(p.time.values[-ctx:]), np.asarray(new_time)])
        cond = features(engine, times)
    check_lower(engine, torch.from_numpy(context_values), "data")
    if not bool(np.isfinite(context_values).any()):
        raise ValueError(
            f"data is all NaN in its last context={ctx} time steps: forecast conditions on "
            "them; drop trailing NaN steps (e.g. data.dropna('time', how='all')) or use sample()"
        )
    c, _, h, w = context_values.shape
    series = np.concatenate(
        [context_values.astype(np.float32), np.full((c, lead, h, w), np.nan, np.float32)], 1
    )
    enc, known, _ = engine.encode_known(torch.from_numpy(series))
    plan = engine.plan(known, ctx)
    budget = resolve_budget(memory_budget)
    t = ctx + lead
    if is_lazy(p):
        # lead chunks of the input's chunk size (whole windows); the first also holds
        # the context
        step = time_chunks(p.shape[1], p.data.chunks[1], engine.frames)[0][1]
        chunks = list(pairwise([0, *range(ctx + step, t, step), t]))
        bs = lazy_batch(engine, n, batch_size, budget, c * step * h * w)
        full = lazy_complete(
            engine,
            settings,
            n=n,
            seed=seed,
            batch_size=bs,
            length=t,
            chunks=chunks,
            plan=plan,
            phys=dsa.from_array(series, chunks=(c, tuple(b - a for a, b in chunks), h, w)),
            cond=cond,
        )
        gen = full[:, :, ctx:]
    else:
        bs = eager_batch(engine, n, batch_size, budget, c * t * h * w)
        with torch.no_grad():
            y = engine.complete(
                enc,
                known,
                settings,
                n=n,
                seed=seed,
                context=ctx,
                batch_size=bs,
                cond=cond,
                progress=progress,
            )
            gen = engine.static_nan(engine.codec.decode(y[:, :, ctx:])).cpu().numpy()
    tmpl = p.arrays[0]
    coords = {k: v.variable for k, v in tmpl.coords.items() if tname not in v.dims}
    coords[tname] = xr.Variable(tname, new_time, tmpl[tname].attrs)
    args = {"lead": lead, "n": n, "context": ctx, "seed": seed}
    return _wrap(p, gen, n, settings, args, data, coords=coords)


def _fine_coord(coarse: xr.DataArray, factor: int) -> np.ndarray:
    """Fine cell centres from the coarse cell edges: each coarse cell split in ``factor``.

    On a regular axis the edges are ``v[0] − d/2 + k d`` with d from the first and last
    centres, and the fine centres ``edge₀ + (j + ½) d / factor`` (origin and spacing
    rounded to :data:`FINE_COORD_DIGITS` significant digits): one multiplication per value,
    not an accumulation, so a fine grid made as ``x₀ + (j + ½) Δ`` is recovered exactly
    and aligns with the true one. Irregular axes use midpoints between centres.
    """
    v = np.asarray(coarse.values, dtype=float)
    if v.size < 2:
        raise ValueError(
            f"coarse has a single {coarse.name!r} cell, whose size is unknown: pass like= "
            "(a fine template) to give the fine coordinates"
        )
    if not np.isfinite(v).all():
        raise ValueError(f"coarse coordinate {coarse.name!r} has non-finite values")
    d = (v[-1] - v[0]) / (v.size - 1)
    if np.allclose(np.diff(v), d, rtol=1e-9, atol=0):
        # coarse centres are means of fine ones and carry their rounding; grids are defined
        # with far fewer significant digits than a double holds, so snap the origin and the
        # spacing to 12 significant digits of the axis extent before rebuilding
        digits = FINE_COORD_DIGITS - int(np.ceil(np.log10(max(abs(v).max(), abs(d)))))
        edge0 = np.round(v[0] - d / 2, digits) + 0.0  # + 0.0: no negative zero
        step = np.round(d / factor, digits)
        return edge0 + (np.arange(v.size * factor) + 0.5) * step
    mid = (v[1:] + v[:-1]) / 2
    edges = np.concatenate([[2 * v[0] - mid[0]], mid, [2 * v[-1] - mid[-1]]])
    frac = (np.arange(factor) + 0.5) / factor
    return (edges[:-1, None] + frac[None] * np.diff(edges)[:, None]).ravel()


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
    memory_budget: int | str | None = None,
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
    budget = resolve_budget(memory_budget)
    c, t = p.shape[:2]
    fine = c * engine.grid[0] * engine.grid[1]
    cond = features(engine, p.time)
    if is_lazy(p):
        y = p.data.astype(np.float32)
        bad, lowest = dask.compute((~dsa.isfinite(y)).any(), dsa.min(y, axis=(1, 2, 3)))
        if bool(bad):
            raise ValueError("coarse contains NaN or infinite values; fill or drop them first")
        _check_minimum(engine, lowest, "coarse")
        bs = lazy_batch(engine, n, batch_size, budget, fine * _chunk_frames(p, engine))
        gen = lazy_downscale(
            engine,
            y,
            factor,
            settings,
            n=n,
            seed=seed,
            batch_size=bs,
            cond=cond,
            project=project,
        )
    else:
        y_phys = torch.from_numpy(values_of(p).astype(np.float32))
        if not bool(torch.isfinite(y_phys).all()):
            raise ValueError("coarse contains NaN or infinite values; fill or drop them first")
        check_lower(engine, y_phys, "coarse")
        bs = eager_batch(engine, n, batch_size, budget, fine * t)
        gen = engine.downscale(
            y_phys,
            factor,
            settings,
            n=n,
            seed=seed,
            batch_size=bs,
            cond=cond,
            project=project,
            progress=progress,
        )
        gen = engine.static_nan(gen).cpu().numpy()
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
