"""xarray inputs of a fitted model's tasks: checked against the engine, turned into tensors.

Shared by :mod:`xdiffusion.generate` and :mod:`xdiffusion.likelihood`: variables and grid
must match what the model was fitted on, times must be regular, values must lie in the
codec's domain; per-frame time features are built from the time coordinate.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import xarray as xr

from xdiffusion.engine import Engine
from xdiffusion.io.convert import Prepared, prepare
from xdiffusion.io.timefeatures import time_features
from xdiffusion.io.windows import regular_step

__all__ = ["check_lower", "features", "prepare_for", "values_of"]


def prepare_for(
    engine: Engine,
    obj: xr.DataArray | xr.Dataset,
    dims: Mapping[str, str] | None,
    argument: str,
    *,
    grid: bool = True,
) -> Prepared:
    """Check ``obj`` against the engine's variables (and grid) and view it as (C, T, Y, X).

    Raises ValueError naming ``argument`` for missing variables, a different grid (unless
    ``grid=False``), and descending or duplicated times.
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
    return p


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
