"""xarray inputs of a fitted model's tasks: checked against the engine, turned into tensors.

Shared by :mod:`xdiffusion.generate` and :mod:`xdiffusion.likelihood`: variables and grid
must match what the model was fitted on, times must be regular, values must lie in the
codec's domain; per-frame time features are built from the time coordinate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import torch
import xarray as xr

from xdiffusion.engine import Engine
from xdiffusion.io.calendar import TimeStep, detect_step
from xdiffusion.io.conform import axis_values, plan
from xdiffusion.io.conform import check_grid as _check_grid
from xdiffusion.io.convert import Prepared, prepare, stack_channels
from xdiffusion.io.timefeatures import time_features
from xdiffusion.io.windows import regular_step

__all__ = ["check_lower", "check_time_step", "features", "prepare_for", "values_of"]


def prepare_for(
    engine: Engine,
    obj: xr.DataArray | xr.Dataset,
    dims: Mapping[str, str] | None,
    argument: str,
    *,
    grid: bool = True,
    check_grid: bool = True,
) -> Prepared:
    """Check ``obj`` against the engine's variables (and grid) and view it as (C, T, Y, X).

    The input is conformed to what the model knows of its training data
    (:mod:`xdiffusion.io.conform`): variables in other but convertible units are converted
    to the model's, and a Y or X axis in reverse order is reversed, both recorded in
    ``Prepared.conform`` to be undone on the output.

    Raises ValueError naming ``argument`` for missing variables, a different grid shape
    (unless ``grid=False``) or grid coordinates (unless ``grid=False`` or
    ``check_grid=False``), units that cannot be converted, and descending or duplicated
    times.
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
    conform = plan(p.arrays, p.variables, p.axes, spec, argument, bounded=bounded)
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
