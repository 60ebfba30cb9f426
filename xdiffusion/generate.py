"""Generating tasks on xarray objects: sample, interpolate, forecast, downscale.

Each function validates and converts its xarray input (:mod:`xdiffusion.inputs`), runs
the tensor :class:`~xdiffusion.engine.Engine` with settings already resolved
(:class:`~xdiffusion.settings.SamplingSettings`), and wraps the result with CF metadata
(:mod:`xdiffusion.io.cf`), recording the settings that ran. :class:`DiffusionModel`'s
methods resolve the settings and call these.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import pairwise

import dask
import dask.array as dsa
import numpy as np
import torch
import xarray as xr

from xdiffusion.engine import Engine
from xdiffusion.inputs import (
    check_lower,
    features,
    prepare_for,
    prepare_region,
    region_engine,
    values_of,
)
from xdiffusion.io.calendar import continue_times
from xdiffusion.io.cf import wrap
from xdiffusion.io.conform import Conform, axis_values
from xdiffusion.io.conform import check_grid as check_grid_of
from xdiffusion.io.convert import Prepared, raise_if_overflow
from xdiffusion.io.grids import FINE_COORD_DIGITS, fine_axis, fine_latlon
from xdiffusion.io.windows import window_starts
from xdiffusion.latents import describe_latent, latent_table
from xdiffusion.lazy import lazy_complete, lazy_downscale, time_chunks
from xdiffusion.resources import eager_batch, lazy_batch, resolve_budget
from xdiffusion.settings import SamplingSettings
from xdiffusion.validation import check_bool, check_int, check_positive_int, check_seed

__all__ = ["FINE_COORD_DIGITS", "downscale", "forecast", "interpolate", "sample"]

Dims = Mapping[str, str] | None
#: Most tasks a lazy forecast may plan (output chunks × members): beyond it the graph alone
#: would take gigabytes before anything is computed.
MAX_GRAPH_TASKS = 1_000_000


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
    changed: tuple[str, ...] = (),
    new_variables: dict[str, xr.Variable] | None = None,
    time_like: dict[str, str] | None = None,
    conform: Conform | None = None,
    provenance: Mapping[str, object] | None = None,
) -> xr.DataArray | xr.Dataset:
    """The CF output of a task. ``values``, ``observed``, ``coords`` and ``new_variables``
    are in the model's orientation and units (built on ``p``); the conversion of the input
    (``conform``, default ``p.conform``) is undone here, so that the output has the input's
    order, coordinates and units. ``provenance`` (the model's path and configuration hash)
    opens the ``history`` line's arguments."""
    dims = [p.axes[a] for a in ("T", "Y", "X") if a in p.axes]
    resolved = {k: v for k, v in settings.as_dict().items() if k != "task" and v is not None}
    conform = conform if conform is not None else p.conform
    templates = p.arrays
    if conform is not None:
        values, observed = conform.restore(values, observed)
        coords = None if coords is None else {k: conform.reorder(v) for k, v in coords.items()}
        if new_variables is not None:
            new_variables = {k: conform.reorder(v) for k, v in new_variables.items()}
        templates = conform.templates()
    return wrap(
        values,
        templates=templates,
        names=p.variables,
        dims=dims,
        members=range(n),
        method=settings.task,
        arguments={**(provenance or {}), **args, **resolved},
        as_dataset=p.is_dataset,
        observed=observed,
        coords=coords,
        source=source,
        changed=changed,
        new_variables=new_variables,
        time_like=time_like,
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
    check_grid: bool = True,
    provenance: Mapping[str, object] | None = None,
    latent: object = None,
) -> xr.DataArray | xr.Dataset:
    """``n`` unconditional members shaped like ``template``; see ``DiffusionModel.sample``."""
    n, seed = _common(n, seed, batch_size, progress)
    check_grid = check_bool(check_grid, "check_grid")
    # the training grid or a sub-region of it (then the engine cropped to it)
    p, engine = prepare_region(engine, template, dims, "template", check_grid=check_grid)
    c, t, h, w = p.shape
    mask = torch.zeros(c, t, h, w, dtype=torch.bool)
    plan = engine.plan(mask, context)
    budget = resolve_budget(memory_budget)
    cond = features(engine, p.time)
    lat = latent_table(engine, latent, p.time, t, n)
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
            latent=lat,
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
                latent=lat,
                progress=progress,
            )
            values = engine.static_nan(engine.codec.decode(y)).cpu().numpy()
    args = {"n": n, "seed": seed, **describe_latent(latent)}
    return _wrap(p, values, n, settings, args, template, provenance=provenance)


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
    check_grid: bool = True,
    provenance: Mapping[str, object] | None = None,
    latent: object = None,
) -> xr.DataArray | xr.Dataset:
    """Fill NaN gaps, observed values kept; see ``DiffusionModel.interpolate``."""
    n, seed = _common(n, seed, batch_size, progress)
    check_grid = check_bool(check_grid, "check_grid")
    p, engine = prepare_region(engine, data, dims, "data", check_grid=check_grid)
    budget = resolve_budget(memory_budget)
    cond = features(engine, p.time)
    c, t, h, w = p.shape
    lat = latent_table(engine, latent, p.time, t, n)
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
            latent=lat,
            dtype=dtype,
        )
        observed = dsa.isfinite(phys)
        return _wrap(
            p,
            values,
            n,
            settings,
            {"n": n, "seed": seed, **describe_latent(latent)},
            data,
            observed=observed,
            provenance=provenance,
        )
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
            latent=lat,
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
    return _wrap(
        p,
        out,
        n,
        settings,
        {"n": n, "seed": seed, **describe_latent(latent)},
        data,
        observed=obs,
        provenance=provenance,
    )


def future_times(time: xr.DataArray, lead: int) -> np.ndarray:
    """``lead`` time stamps continuing ``time`` at its step, in its own type.

    Fixed steps (hourly, daily) continue by the step: datetime64 and cftime axes in
    seconds, a numeric axis (hours as floats, step counts as integers) in its own units and
    dtype. Calendar steps (monthly, seasonal, yearly) continue by whole months at the
    input's position in the month: month starts stay month starts (so time bounds continue
    too), mid-month stamps are the new months' centres; see
    :func:`xdiffusion.io.calendar.continue_times`.
    """
    if len(time) < 2:
        raise ValueError("forecast needs at least two time steps to infer the frequency")
    return continue_times(time, lead)


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
    check_grid: bool = True,
    provenance: Mapping[str, object] | None = None,
    latent: object = None,
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
    check_grid = check_bool(check_grid, "check_grid")
    p, engine = prepare_region(engine, data, dims, "data", check_grid=check_grid)
    if p.shape[1] < ctx:
        raise ValueError(f"data has {p.shape[1]} time steps, fewer than context={ctx}")
    if p.time is None:
        raise ValueError("forecast needs a time coordinate to continue")
    tname = p.axes["T"]
    new_time = future_times(p.arrays[0][tname], lead)
    # only the context is read, whatever the input's size
    last = p.time.isel({p.time.dims[0]: slice(-ctx - 1, None)})
    if len(last) > 1 and len(window_starts(last, len(last))) == 0:
        raise ValueError(
            f"the last context={ctx} time steps of data are not consecutive steps of its "
            "time axis (a step is missing): forecast continues a gap-free series; select "
            "data up to the gap, or insert the missing steps as NaN frames and interpolate"
        )
    context_values = np.asarray(p.data[:, -ctx:])
    if hasattr(context_values, "compute"):
        context_values = context_values.compute()
    times = np.concatenate([np.asarray(p.time.values[-ctx:]), np.asarray(new_time)])
    cond = features(engine, times) if engine.time_features else None
    # a latent per window is matched against the context and the new time steps
    lat = latent_table(engine, latent, xr.DataArray(times), ctx + lead, n)
    check_lower(engine, torch.from_numpy(context_values), "data")
    if not bool(np.isfinite(context_values).any()):
        raise ValueError(
            f"data is all NaN in its last context={ctx} time steps: forecast conditions on "
            "them; drop trailing NaN steps (e.g. data.dropna('time', how='all')) or use sample()"
        )
    c, _, h, w = context_values.shape
    budget = resolve_budget(memory_budget)
    t = ctx + lead
    context32 = context_values.astype(np.float32)
    if is_lazy(p):
        # lead chunks of the input's chunk size (whole windows); the first also holds
        # the context. Nothing of the lead's size is allocated here: the plan needs only
        # which frames are known, and the NaN frames are a lazy array.
        step = time_chunks(p.shape[1], p.data.chunks[1], engine.frames)[0][1]
        tasks = (lead // step + 1) * n
        if tasks > MAX_GRAPH_TASKS:  # before any window or chunk is built
            raise ValueError(
                f"lead={lead} in time chunks of {step} steps (the input's, rounded to whole "
                f"windows) for n={n} members makes about {tasks:,} tasks, more than "
                f"{MAX_GRAPH_TASKS:,}; chunk the input in longer time chunks (e.g. "
                "data.chunk(time=1000)) or forecast a shorter lead"
            )
        chunks = list(pairwise([0, *range(ctx + step, t, step), t]))
        bs = lazy_batch(engine, n, batch_size, budget, c * step * h * w)
        _, known_ctx, _ = engine.encode_known(torch.from_numpy(context32))
        frame_known = torch.zeros(t, dtype=torch.bool)
        frame_known[:ctx] = known_ctx.transpose(0, 1).reshape(ctx, -1).all(1)
        plan = engine.plan(frame_known[None, :, None, None], ctx)
        sizes = tuple(b - a for a, b in chunks)
        phys = dsa.concatenate(
            [
                dsa.from_array(context32, chunks=(c, ctx, h, w)),
                dsa.full((c, lead, h, w), np.nan, dtype=np.float32, chunks=(c, step, h, w)),
            ],
            axis=1,
        ).rechunk((c, sizes, h, w))
        full = lazy_complete(
            engine,
            settings,
            n=n,
            seed=seed,
            batch_size=bs,
            length=t,
            chunks=chunks,
            plan=plan,
            phys=phys,
            cond=cond,
            latent=lat,
        )
        gen = full[:, :, ctx:]
    else:
        # refused here, before the series is allocated, if it cannot fit
        bs = eager_batch(engine, n, batch_size, budget, c * t * h * w)
        series = np.concatenate([context32, np.full((c, lead, h, w), np.nan, np.float32)], 1)
        enc, known, _ = engine.encode_known(torch.from_numpy(series))
        plan = engine.plan(known, ctx)
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
                latent=lat,
                progress=progress,
            )
            gen = engine.static_nan(engine.codec.decode(y[:, :, ctx:])).cpu().numpy()
    tmpl = p.arrays[0]
    coords = {k: v.variable for k, v in tmpl.coords.items() if tname not in v.dims}
    coords[tname] = xr.Variable(tname, new_time, tmpl[tname].attrs, tmpl[tname].encoding)
    new_vars, time_like = {}, {tname: tname}
    bounds = _bounds_name(data, tmpl[tname])
    if bounds is not None and isinstance(data, xr.Dataset) and bounds[0] in data.variables:
        # the new steps' bounds continue the input's lower and upper bounds at their step
        old = data[bounds[0]].transpose(tname, ...)
        edges = [future_times(old.isel({bounds[1]: i}), lead) for i in range(old.shape[1])]
        new_vars[bounds[0]] = xr.Variable(old.dims, np.stack(edges, axis=-1), old.attrs)
        time_like[bounds[0]] = tname
    args = {"lead": lead, "n": n, "context": ctx, "seed": seed, **describe_latent(latent)}
    return _wrap(
        p,
        gen,
        n,
        settings,
        args,
        data,
        coords=coords,
        changed=(tname,),
        new_variables=new_vars,
        time_like=time_like,
        provenance=provenance,
    )


def _fine_coord(coarse: xr.DataArray, factor: int) -> np.ndarray:
    """Fine cell centres of a coarse axis (:func:`xdiffusion.io.grids.fine_axis`)."""
    return fine_axis(coarse.values, factor, str(coarse.name))[0]


def _fine_values(coarse: xr.DataArray, dim: str, factor: int) -> np.ndarray | None:
    """The fine centres ``downscale(factor=)`` will give a coarse axis, or None where the
    axis has no numeric coordinate to refine (a single cell is refused later)."""
    v = axis_values(coarse, dim)
    if v is None or v.size < 2 or not np.isfinite(v).all():
        return None
    return fine_axis(v, factor, dim)[0]


def _bounds_name(source: xr.DataArray | xr.Dataset, coord: xr.DataArray) -> tuple[str, str] | None:
    """(name, second dimension) of the bounds variable of ``coord`` in ``source``, if any."""
    # decode_coords="all" moves the attribute into the encoding
    name = coord.attrs.get("bounds", coord.encoding.get("bounds"))
    if name is None:
        return None
    var = source.variables.get(name) if isinstance(source, xr.Dataset) else None
    return str(name), (str(var.dims[-1]) if var is not None and var.ndim == 2 else "bnds")


def _latlon_names(tmpl: xr.DataArray, ydim: str, xdim: str) -> tuple[str, str] | None:
    """Names of the 2-D latitude and longitude coordinates on (Y, X), if the input has them."""
    found: dict[str, str] = {}
    for name, c in tmpl.coords.items():
        if set(c.dims) != {ydim, xdim}:
            continue
        sn, units = c.attrs.get("standard_name"), str(c.attrs.get("units", ""))
        if sn == "latitude" or units in ("degrees_north", "degree_north", "degrees_N"):
            found["lat"] = str(name)
        elif sn == "longitude" or units in ("degrees_east", "degree_east", "degrees_E"):
            found["lon"] = str(name)
    return (found["lat"], found["lon"]) if len(found) == 2 else None


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
    check_grid: bool = True,
    provenance: Mapping[str, object] | None = None,
    latent: object = None,
) -> xr.DataArray | xr.Dataset:
    """Coarse → fine ensemble; see ``DiffusionModel.downscale``."""
    n, seed = _common(n, seed, batch_size, progress)
    project = check_bool(project, "project")
    check_grid = check_bool(check_grid, "check_grid")
    p = prepare_for(engine, coarse, dims, "coarse", grid=False)
    hc, wc = p.shape[2:]
    q = None
    if like is not None:
        # the training grid or a sub-region of it (then the engine cropped to it)
        q, engine = prepare_region(engine, like, dims, "like", check_grid=check_grid)
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
    fine_shape = (hc * factor, wc * factor)
    if q is None and (fine_shape[0] > engine.grid[0] or fine_shape[1] > engine.grid[1]):
        # before any fine coordinate is built: factor=10**9 must not allocate them
        raise ValueError(
            f"coarse grid {(hc, wc)} × factor {factor} = {fine_shape} is larger than the "
            f"model's grid {engine.grid}; the fine grid must be the model's grid or a "
            "sub-region of it"
        )
    names = {a: p.axes[a] for a in ("Y", "X")}
    if q is not None:
        pass  # like= was located above
    elif fine_shape == engine.grid:
        if check_grid:
            # the fine grid the output will have, before any sampling
            fine_grid = {a: _fine_values(p.arrays[0], d, factor) for a, d in names.items()}
            check_grid_of(fine_grid, engine.data, f"coarse refined ×{factor}", names=names)
    else:  # a sub-region of the training grid, located by the fine grid's coordinates
        try:
            fine_grid = {
                a: _fine_values(p.arrays[0], d, factor) if check_grid else None
                for a, d in names.items()
            }
            engine = region_engine(
                engine,
                fine_grid,
                fine_shape,
                f"coarse refined ×{factor}",
                check_grid=check_grid,
                names=names,
            )
        except ValueError as err:
            raise ValueError(
                f"coarse grid {(hc, wc)} × factor {factor} = {fine_shape} differs from the "
                f"model's fine grid {engine.grid}; {err}"
            ) from None
    budget = resolve_budget(memory_budget)
    c, t = p.shape[:2]
    fine = c * engine.grid[0] * engine.grid[1]
    cond = features(engine, p.time)
    lat = latent_table(engine, latent, p.time, t, n)
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
            latent=lat,
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
            latent=lat,
            project=project,
            progress=progress,
        )
        gen = engine.static_nan(gen).cpu().numpy()
    ax = p.axes
    tmpl = p.arrays[0]
    ydim, xdim = ax["Y"], ax["X"]
    coords = {k: v.variable for k, v in tmpl.coords.items() if not {ydim, xdim} & set(v.dims)}
    new_vars: dict[str, xr.Variable] = {}
    if q is not None:
        # the fine template's coordinates on the grid, and what they refer to
        lt = q.arrays[0]
        qy, qx = q.axes["Y"], q.axes["X"]
        rename = {qy: ydim, qx: xdim}
        for k, v in lt.coords.items():
            if {qy, qx} & set(v.dims):
                dims_ = tuple(rename.get(d, d) for d in v.dims)
                coords[str(k)] = xr.Variable(dims_, v.values, v.attrs)
        for k, v in like.variables.items() if isinstance(like, xr.Dataset) else ():
            if {qy, qx} & set(v.dims) and str(k) not in coords:
                v = q.conform.reorder(v) if q.conform is not None else v  # model's order
                new_vars[str(k)] = xr.Variable(
                    tuple(rename.get(d, d) for d in v.dims), v.values, v.attrs
                )
    else:
        fine = {}
        for dim in (ydim, xdim):
            cc = tmpl[dim]
            centres, edges = fine_axis(cc.values, factor, dim)
            fine[dim] = centres
            coords[dim] = xr.Variable(dim, centres, cc.attrs, cc.encoding)
            bounds = _bounds_name(coarse, cc)
            if bounds is not None:
                has = isinstance(coarse, xr.Dataset) and bounds[0] in coarse.variables
                battrs = coarse[bounds[0]].attrs if has else {}
                new_vars[bounds[0]] = xr.Variable((dim, bounds[1]), edges, battrs)
        names = _latlon_names(tmpl, ydim, xdim)
        if names is not None:
            gm_name = str(tmpl.attrs.get("grid_mapping", "")).split(":")[0].strip()
            src = coarse.variables if isinstance(coarse, xr.Dataset) else tmpl.coords
            gm = xr.DataArray(src[gm_name]) if gm_name and gm_name in src else None
            lat, lon, how = fine_latlon(
                tmpl.transpose(..., ydim, xdim), gm, names, fine[ydim], fine[xdim], factor
            )
            for name, vals in zip(names, (lat, lon)):
                attrs = dict(tmpl[name].attrs)
                if how == "interpolated":
                    attrs["comment"] = "interpolated from the coarse grid's values by xdiffusion"
                coords[name] = xr.Variable((ydim, xdim), vals, attrs)
    args = {"n": n, "factor": factor, "project": project, "seed": seed, **describe_latent(latent)}
    return _wrap(
        p,
        gen,
        n,
        settings,
        args,
        coarse,
        coords=coords,
        changed=(ydim, xdim),
        new_variables=new_vars,
        # the output takes like's coordinates, so its order too (and coarse's units)
        conform=p.conform.oriented_like(q.conform) if q is not None and q.conform else None,
        provenance=provenance,
    )
