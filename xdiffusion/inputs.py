"""xarray inputs of a fitted model's tasks: checked against the engine, turned into tensors.

Shared by :mod:`xdiffusion.generate` and :mod:`xdiffusion.likelihood`: variables and grid
must match what the model was fitted on, times must be regular, values must lie in the
codec's domain; per-frame time features are built from the time coordinate. An input on
a contiguous sub-region of the training grid is run by the engine cropped to it
(:func:`prepare_region`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import torch
import xarray as xr

from xdiffusion.engine import Engine
from xdiffusion.io.calendar import TimeStep, detect_step
from xdiffusion.io.conform import axis_values, locate_region, plan
from xdiffusion.io.conform import check_grid as _check_grid
from xdiffusion.io.convert import Prepared, prepare, stack_channels
from xdiffusion.io.timefeatures import time_features
from xdiffusion.io.windows import regular_step

__all__ = [
    "check_lower",
    "check_time_step",
    "features",
    "prepare_for",
    "prepare_region",
    "region_engine",
    "values_of",
]


def prepare_for(
    engine: Engine,
    obj: xr.DataArray | xr.Dataset,
    dims: Mapping[str, str] | None,
    argument: str,
    *,
    grid: bool = True,
    check_grid: bool = True,
    stacklevel: int = 5,
) -> Prepared:
    """Check ``obj`` against the engine's variables (and grid) and view it as (C, T, Y, X).

    The input is conformed to what the model knows of its training data
    (:mod:`xdiffusion.io.conform`): variables in other but convertible units are converted
    to the model's, and a Y or X axis in reverse order is reversed, both recorded in
    ``Prepared.conform`` to be undone on the output.

    Raises ValueError naming ``argument`` for missing variables, a different grid shape
    (unless ``grid=False``) or grid coordinates (unless ``grid=False`` or
    ``check_grid=False``), units that cannot be converted, and descending or duplicated
    times. ``stacklevel`` is that of the missing-units warning
    (:func:`~xdiffusion.io.conform.plan`). For inputs that may lie on a sub-region of
    the training grid use :func:`prepare_region`.
    """
    if not isinstance(obj, xr.DataArray | xr.Dataset):
        raise TypeError(
            f"{argument} must be an xarray DataArray or Dataset, got {type(obj).__name__}"
        )
    variables = engine.variables if isinstance(obj, xr.Dataset) else None
    if variables is not None:
        missing = [v for v in variables if v not in obj.data_vars]
        if missing:
            have = [str(v) for v in obj.data_vars]
            hint = {have[0]: missing[0]} if have else {}
            raise ValueError(
                f"{argument} lacks the model's variable(s) {missing} (it has {have}); rename "
                f"them, e.g. {argument}.rename({hint})"
            )
    p = prepare(obj, dims=dims, variables=variables, argument=argument)
    if p.time is not None:
        regular_step(p.time)  # raises, with the remedy, for descending or duplicated times
    if len(p.variables) != len(engine.variables):
        raise ValueError(
            f"{argument} has {len(p.variables)} variable(s) {p.variables} but the model was "
            f"fitted on {engine.variables}"
        )
    if grid and tuple(p.shape[2:]) != engine.grid:
        raise ValueError(
            f"{argument} grid {tuple(p.shape[2:])} differs from the model's grid {engine.grid}; "
            "use a template on the training grid (or downscale() for coarser inputs)"
        )
    check_time_step(engine, p, argument)
    spec = engine.data
    bounded = [lo is not None for lo in engine.codec.lower]
    conform = plan(
        p.arrays, p.variables, p.axes, spec, argument, bounded=bounded, stacklevel=stacklevel
    )
    if conform.changes_values:
        arrays = conform.apply(p.arrays)
        data = stack_channels(arrays, has_time="T" in p.axes)
        p = replace(p, arrays=arrays, data=data)
    elif any(u is not None for u in conform.units):  # unlabelled input: label it
        p = replace(p, arrays=conform.apply(p.arrays))
    p = replace(p, conform=conform)
    if grid and check_grid:
        y, x = (p.axes[a] for a in ("Y", "X"))
        coords = {"Y": axis_values(p.arrays[0], y), "X": axis_values(p.arrays[0], x)}
        _check_grid(coords, spec, argument, names={"Y": y, "X": x})
    return p


def prepare_region(
    engine: Engine,
    obj: xr.DataArray | xr.Dataset,
    dims: Mapping[str, str] | None,
    argument: str,
    *,
    check_grid: bool = True,
) -> tuple[Prepared, Engine]:
    """:func:`prepare_for` on the training grid or a sub-region of it, and its engine.

    Returns the prepared input and the engine to run it with: ``engine`` itself on the
    whole training grid, else ``engine`` cropped to the sub-region the input's
    coordinates cover (:func:`region_engine`).

    Raises ValueError as :func:`prepare_for` does, and as :func:`region_engine` does for a
    grid that is neither the training grid nor a locatable sub-region of it.
    """
    p = prepare_for(engine, obj, dims, argument, grid=False, stacklevel=6)  # one frame more
    y, x = (p.axes[a] for a in ("Y", "X"))
    coords = {"Y": axis_values(p.arrays[0], y), "X": axis_values(p.arrays[0], x)}
    region = region_engine(
        engine, coords, tuple(p.shape[2:]), argument, check_grid=check_grid, names={"Y": y, "X": x}
    )
    return p, region


def region_engine(
    engine: Engine,
    coords: Mapping[str, np.ndarray | None],
    shape: tuple[int, int],
    argument: str,
    *,
    check_grid: bool = True,
    names: Mapping[str, str] | None = None,
) -> Engine:
    """The engine for a grid with coordinates ``coords`` (in the model's orientation).

    The whole training grid gives ``engine``; a contiguous sub-region of it, located by
    its coordinates against the model's recorded grid
    (:func:`~xdiffusion.io.conform.locate_region`), gives ``engine`` cropped to it
    (:meth:`~xdiffusion.engine.Engine.crop`: the same network, the valid mask and the
    recorded grid cropped). With ``check_grid=False`` coordinates are not compared and
    the grid is taken as the training grid, so it must have the training grid's size.

    Raises
    ------
    ValueError
        Naming ``argument``: another size with ``check_grid=False``, a grid larger than
        the model's, coordinates matching no sub-region (or none to locate it with), a
        same-sized grid with other coordinates, or a sub-region smaller than the
        network's downsampling.
    """
    if not check_grid:
        if tuple(shape) != engine.grid:
            raise ValueError(
                f"{argument} grid {tuple(shape)} differs from the model's grid {engine.grid}; "
                "with check_grid=False the grid is taken as the training grid and must have "
                "its size. To generate on a sub-region of the training grid, keep "
                "check_grid=True and give the sub-region its training-grid coordinates"
            )
        return engine
    ys, xs = locate_region(
        coords, engine.data, argument, shape=shape, grid=engine.grid, names=names
    )
    if (ys.stop - ys.start, xs.stop - xs.start) == engine.grid:
        return engine
    small = min(engine.grid[0], engine.min_region), min(engine.grid[1], engine.min_region)
    if shape[0] < small[0] or shape[1] < small[1]:
        raise ValueError(
            f"{argument} grid {tuple(shape)} is a sub-region of the model's grid "
            f"{engine.grid} smaller than the network's downsampling: each side needs at "
            f"least {engine.min_region} cells (2**(levels − 1)); use a larger region"
        )
    spec = engine.data.crop(ys, xs) if engine.data is not None else None
    return engine.crop(ys, xs, data=spec)


def check_time_step(engine: Engine, p: Prepared, argument: str) -> None:
    """Refuse an input whose time step differs from the one the model was fitted on.

    The network learnt its dynamics at the training data's step: hourly weather filled
    into a daily template, or a monthly model continuing hourly data, would be numbers at
    the wrong time scale. Let through: models written before the step was recorded
    (``engine.data`` None or without ``time_step``), inputs of a single time step (no step
    to compare) and a numeric time axis set against a dated one (its units are unknown).

    Raises
    ------
    ValueError
        Naming ``argument``, both steps in words and the remedy.
    """
    recorded = getattr(getattr(engine, "data", None), "time_step", None)
    if recorded is None or p.time is None or p.time.size < 2:
        return
    want = TimeStep.from_config(recorded)
    try:
        got = detect_step(p.time)
    except ValueError as err:  # an irregular axis: say which argument has it
        raise ValueError(f"{argument}: {err}") from None
    if got is None or not want.comparable(got) or got == want:
        return
    tname = p.axes["T"]
    alias = want.alias()
    remedy = (
        f"resample it to the model's step first (e.g. {argument}.resample({tname}="
        f"{alias!r}).mean(); for a template, any values on {want} stamps will do)"
        if alias is not None
        else f"give {argument} at the model's step"
    )
    raise ValueError(
        f"{argument} has a time step of {got}, but the model was fitted on data with a time "
        f"step of {want}: {remedy}, or use a model fitted on data at a step of {got}"
    )


def values_of(p: Prepared) -> np.ndarray:
    """The prepared data as a numpy array (computed if dask-backed)."""
    return np.asarray(p.data.compute() if hasattr(p.data, "compute") else p.data)


def features(engine: Engine, time) -> torch.Tensor | None:
    """Per-frame conditioning features (T, K) for time stamps, or None if the model has none."""
    if not engine.time_features:
        return None
    if time is None:
        raise ValueError(
            "this model is conditioned on time features "
            f"{engine.time_features}: the input needs a time coordinate"
        )
    return torch.from_numpy(time_features(time, engine.time_features))


def check_lower(engine: Engine, x: torch.Tensor, argument: str) -> None:
    """Values below a transform's lower bound (e.g. negative rain for sqrt) cannot be encoded.

    ``x`` is (C, ...) physical; NaNs are ignored.
    """
    for c, lo in enumerate(engine.codec.lower):
        xc = x[c][torch.isfinite(x[c])]
        if lo is not None and xc.numel() and float(xc.min()) < lo:
            raise ValueError(
                f"{argument} variable {engine.variables[c]!r} has values down to "
                f"{float(xc.min()):g}, below the lower bound {lo} of the model's transform "
                f"{engine.codec[c].transform.name!r}; clip them first, e.g. "
                f"{argument}.clip(min={lo})"
            )
