"""Validate xarray inputs and turn them into (channel, time, y, x) arrays, lazily.

Nothing here computes a dask array whole: inputs are transposed and stacked as views, and
the only reduction (:func:`channel_stats`) is a single streaming ``dask.compute``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import dask
import dask.array as dsa
import numpy as np
import xarray as xr

from xdiffusion.io.axes import find_axes
from xdiffusion.io.conform import Conform

__all__ = ["Prepared", "channel_stats", "prepare", "raise_if_overflow", "stack_channels"]


@dataclass
class Prepared:
    """An input reduced to what the model needs, plus what is needed to wrap outputs."""

    data: object  # numpy or dask array, (C, T, Y, X) or (C, 1, Y, X) without a time axis
    axes: dict[str, str]
    variables: list[str]
    arrays: list[xr.DataArray]  # per variable, transposed to (T, Y, X)
    is_dataset: bool
    # how the input was conformed to the model's units and orientation (io.conform), to
    # undo on outputs; None where nothing was compared
    conform: Conform | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def time(self) -> xr.DataArray | None:
        t = self.axes.get("T")
        return self.arrays[0][t] if t is not None and t in self.arrays[0].coords else None


def _check_numeric(da: xr.DataArray, name: str) -> None:
    if not (np.issubdtype(da.dtype, np.floating) or np.issubdtype(da.dtype, np.integer)):
        raise TypeError(
            f"variable {name!r} has non-numeric dtype {da.dtype}; convert it to float, "
            "e.g. da.astype('float32')"
        )


def _check_variables(variables: object) -> list[str]:
    """A ``variables=`` argument as a non-empty list of names (a single name as a list).

    Raises TypeError for anything but a name or a sequence of names, ValueError for none.
    """
    if isinstance(variables, str):
        return [variables]
    if not isinstance(variables, Sequence | np.ndarray) or isinstance(variables, bytes):
        raise TypeError(
            f"variables must be a variable name or a list of names (e.g. ['pr']), got "
            f"{type(variables).__name__} {variables!r}"
        )
    names = list(variables)
    bad = [v for v in names if not isinstance(v, str)]
    if bad:
        raise TypeError(
            f"variables={names!r} must hold variable names (str), but holds "
            f"{', '.join(sorted({type(v).__name__ for v in bad}))}; e.g. variables=['pr']"
        )
    if not names:
        raise ValueError(
            "variables=[] names no variable; name at least one (e.g. variables=['pr']), or "
            "leave variables=None to use every variable with the time and grid axes"
        )
    return names


def _check_dataarray_variables(da: xr.DataArray, names: list[str], argument: str) -> None:
    """A DataArray is its one variable: ``variables=`` may only name it."""
    if da.name is not None and names == [str(da.name)]:
        return
    what = f"the single variable {str(da.name)!r}" if da.name is not None else "an unnamed variable"
    allowed = f" (or variables=[{str(da.name)!r}])" if da.name is not None else ""
    raise ValueError(
        f"variables={names!r} cannot select from {argument}: it is a DataArray, {what}; "
        f"leave variables=None{allowed}, or pass a Dataset (e.g. xr.merge([...])) to choose "
        "among variables"
    )


_AXIS_NAMES = {"T": "time", "Y": "y (latitude)", "X": "x (longitude)"}


def _check_grid_sizes(
    obj: xr.DataArray | xr.Dataset, axes: Mapping[str, str], argument: str
) -> None:
    """Raise ValueError for a grid axis with no cells (numpy's "zero-size array" later)."""
    for a in ("Y", "X"):
        d = axes.get(a)
        if d is not None and obj.sizes.get(d, 1) == 0:
            raise ValueError(
                f"{argument} has no cells along its {_AXIS_NAMES[a]} axis {d!r} (size 0): the "
                "grid is empty; check the spatial selection (e.g. .sel(lat=slice(...)) "
                "with the bounds in the coordinate's order)"
            )


def prepare(
    obj: xr.DataArray | xr.Dataset,
    *,
    dims: Mapping[str, str] | None = None,
    variables: Sequence[str] | None = None,
    require_time: bool = True,
    argument: str = "data",
) -> Prepared:
    """Check an input and view it as a (C, T, Y, X) array.

    Parameters
    ----------
    obj
        DataArray (one channel) or Dataset (one channel per variable).
    dims
        Axis overrides passed to :func:`~xdiffusion.io.axes.find_axes`.
    variables
        Dataset variables to use (a name or a non-empty sequence of names); default:
        every data variable with the T, Y, X axes. For a DataArray only None or its own
        name.
    require_time
        Whether a time axis is mandatory.
    argument
        Name of the argument, used in error messages.
    """
    if isinstance(obj, xr.DataArray):
        is_dataset = False
        name = obj.name if obj.name is not None else "variable"
        if variables is not None:
            _check_dataarray_variables(obj, _check_variables(variables), argument)
        arrays = {str(name): obj}
    elif isinstance(obj, xr.Dataset):
        is_dataset = True
        if variables is not None:
            variables = _check_variables(variables)
        if variables is None:
            axes0 = find_axes(obj, dims, require_time=require_time)
            variables = [
                str(v) for v, da in obj.data_vars.items() if set(axes0.values()) <= set(da.dims)
            ]
            if not variables:
                raise ValueError(
                    f"{argument} has no data variable with dimensions {list(axes0.values())}; "
                    "pass variables=[...]"
                )
        missing = [v for v in variables if v not in obj.data_vars]
        if missing:
            raise ValueError(
                f"variables={missing} not in {argument}; available: {list(obj.data_vars)}"
            )
        arrays = {str(v): obj[v] for v in variables}
    else:
        raise TypeError(
            f"{argument} must be an xarray DataArray or Dataset, got {type(obj).__name__}"
        )
    axes = find_axes(obj, dims, require_time=require_time)
    _check_grid_sizes(obj, axes, argument)
    order = [axes[a] for a in ("T", "Y", "X") if a in axes]
    out: list[xr.DataArray] = []
    for name, da in arrays.items():
        _check_numeric(da, name)
        extra = [d for d in da.dims if d not in order]
        if extra:
            sizes = {d: da.sizes[d] for d in extra}
            raise ValueError(
                f"{argument} variable {name!r} has extra dimensions {sizes}; select one "
                f"value (e.g. .isel({extra[0]}=0)) or stack them into time before calling"
            )
        missing_axes = [d for d in order if d not in da.dims]
        if missing_axes:
            raise ValueError(
                f"{argument} variable {name!r} lacks dimensions {missing_axes}; "
                "all variables must share the time and grid axes"
            )
        out.append(da.transpose(*order))
    data = stack_channels(out, has_time="T" in axes)
    return Prepared(data=data, axes=axes, variables=list(arrays), arrays=out, is_dataset=is_dataset)


def stack_channels(arrays: Sequence[xr.DataArray], *, has_time: bool = True):
    """The (C, T, Y, X) float32 array of per-variable (T, Y, X) arrays ((C, 1, Y, X) without
    a time axis); a view of dask arrays, never computed."""
    pieces = [d.data.astype(np.float32) for d in arrays]
    stack = dsa.stack if any(dask.is_dask_collection(p) for p in pieces) else np.stack
    data = stack(pieces)
    return data if has_time else data[:, None]


def channel_stats(
    data,
    *,
    argument: str = "data",
    sources: Sequence[xr.DataArray] | None = None,
    threshold: float | Sequence[float] | None = None,
) -> dict[str, np.ndarray]:
    """Per-channel min, max, mean and NaN-free flags of a (C, T, Y, X) array, in one pass.

    Also the number of finite values per channel (``n_finite``, an exact count), of
    positive values (``n_positive``) and, with ``threshold``, of values in
    ``(0, threshold)`` (``n_below``; one threshold, or one per channel): how much of a
    dry/wet variable's rain a dry threshold would call dry.

    Raises ValueError for all-NaN channels and for infinities (with the remedy). With
    ``sources`` (the inputs before the float32 cast, one per channel, as
    :attr:`Prepared.arrays`), infinities that are finite values too large for float32
    (|x| > 3.4e38) are reported as such.
    """
    lib = dsa if dask.is_dask_collection(data) else np
    axes = (1, 2, 3)
    below = np.broadcast_to(
        np.asarray(np.inf if threshold is None else threshold, float), (data.shape[0],)
    )
    finite = lib.isfinite(data)
    infs = lib.isinf(data).any(axis=axes)
    # Cells that are NaN at every time step form a static mask (land/sea, radar domain).
    static_valid = finite.any(axis=1)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN channels: reported below
        parts = (
            lib.nanmin(lib.where(finite, data, np.nan), axis=axes),
            lib.nanmax(lib.where(finite, data, np.nan), axis=axes),
            lib.nanmean(lib.where(finite, data, np.nan), axis=axes),
            infs,
            static_valid,
            finite.all(),
            finite.sum(axis=axes),
            (finite & (data > 0)).sum(axis=axes),
            (finite & (data > 0) & (data < below[:, None, None, None])).sum(axis=axes),
        )
        if lib is dsa:
            parts = dask.compute(*parts)
    mn, mx, mean, inf, static_valid, all_finite, n_finite, n_pos, n_below = (
        np.asarray(p) for p in parts
    )
    if inf.any():
        if sources is not None:
            raise_if_overflow(sources, np.flatnonzero(inf), argument)
        raise ValueError(
            f"{argument} contains infinite values (channels {np.flatnonzero(inf).tolist()}); "
            "replace them with NaN (e.g. da.where(np.isfinite(da))) to mark them missing"
        )
    if np.isnan(mn).any():
        raise ValueError(
            f"{argument} is all NaN (channels {np.flatnonzero(np.isnan(mn)).tolist()}); "
            "check the variable and time selection"
        )
    return {
        "min": mn.astype(float),
        "max": mx.astype(float),
        "mean": mean.astype(float),
        "static_valid": static_valid.astype(bool),
        "all_finite": bool(all_finite),
        "n_finite": n_finite.astype(np.int64),
        "n_positive": n_pos.astype(np.int64),
        "n_below": n_below.astype(np.int64),
    }


def raise_if_overflow(sources: Sequence[xr.DataArray], channels: np.ndarray, argument: str) -> None:
    """Raise ValueError for ``channels`` whose infinities come from the float32 cast.

    ``sources`` are the inputs before the cast (:attr:`Prepared.arrays`); a channel whose
    source holds infinities itself is left to the caller's own message.
    """
    for c in channels:
        src = sources[int(c)]
        if not np.issubdtype(src.dtype, np.floating) or np.finfo(src.dtype).max <= _F32_MAX:
            continue
        lib = dsa if dask.is_dask_collection(src.data) else np
        with np.errstate(all="ignore"):
            has_inf, biggest = lib.isinf(src.data).any(), lib.nanmax(abs(src.data))
            if lib is dsa:
                has_inf, biggest = dask.compute(has_inf, biggest)
        if not bool(has_inf):
            name = str(src.name) if src.name is not None else f"channel {int(c)}"
            raise ValueError(
                f"{argument} variable {name!r} has values up to {float(biggest):.3g} "
                f"in magnitude, which overflow float32 (largest {_F32_MAX:.3g}): the model "
                "works in float32. Rescale the variable (e.g. other units) or mark the "
                "extreme values missing with NaN"
            )


_F32_MAX = float(np.finfo(np.float32).max)
