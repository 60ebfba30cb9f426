"""Shared checks and helpers of the diagnostics: input validation, units, pooling."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr

from xdiffusion.io.axes import find_axes

MEMBER_DIM = "realization"

_METRES = {"m", "metre", "meter", "metres", "meters"}
_KILOMETRES = {"km", "kilometre", "kilometer", "kilometres", "kilometers"}


# --------------------------------------------------------------------------- helpers


def _check_da(obj: object, argument: str) -> xr.DataArray:
    if not isinstance(obj, xr.DataArray):
        raise TypeError(
            f"{argument}= must be an xarray DataArray, got {type(obj).__name__}; "
            "select one variable, e.g. ds['pr']"
        )
    if not (np.issubdtype(obj.dtype, np.floating) or np.issubdtype(obj.dtype, np.integer)):
        raise TypeError(f"{argument}= has non-numeric dtype {obj.dtype}; convert it to float")
    if obj.ndim == 0:
        raise ValueError(f"{argument}= is a scalar; pass an array of values")
    return obj


def _is_dask(da: xr.DataArray) -> bool:
    return da.chunks is not None


def _describe(da: xr.DataArray) -> str:
    return str(da.attrs.get("long_name") or da.name or "value")


def _units_power(units: object, power: int) -> str | None:
    """``units`` raised to ``power`` in UDUNITS syntax: ``(mm h-1)2``, ``K-1``."""
    if units is None or str(units).strip() == "":
        return None
    u = str(units).strip()
    if u == "1":
        return "1"
    return f"{u}{power}" if re.fullmatch(r"[A-Za-z]+", u) else f"({u}){power}"


def _with_units(attrs: dict, units: str | None) -> dict:
    if units is not None:
        attrs["units"] = units
    return attrs


def _validate_dims(da: xr.DataArray, dims: Mapping[str, str] | None) -> None:
    # Pooled diagnostics need no axes; an explicit mapping is still checked.
    if dims is not None:
        find_axes(da, dims, require_time="T" in dims)


def _no_fill(obj: xr.DataArray | xr.Dataset) -> xr.DataArray | xr.Dataset:
    """Drop the default NaN _FillValue of coordinates when written (CF §2.5.1 forbids it)."""
    for name in obj.coords:
        obj.coords[name].variable.encoding["_FillValue"] = None
    return obj


def _pool_mean(da: xr.DataArray, keep: Sequence[str]) -> xr.DataArray:
    other = [d for d in da.dims if d not in keep]
    return da.mean(other, skipna=True) if other else da


# ------------------------------------------------------------------------- histogram
