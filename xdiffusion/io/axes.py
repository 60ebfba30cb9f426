"""Find the time (T), vertical-grid (Y) and horizontal-grid (X) axes of xarray objects.

cf-xarray does the CF work (``axis`` attributes, standard names, projection coordinates);
this module adds the fall-backs climate files need in practice and the error messages.
"""

from __future__ import annotations

from collections.abc import Mapping

import cf_xarray  # noqa: F401  (registers the .cf accessor)
import xarray as xr

__all__ = ["AXES", "find_axes"]

AXES = ("T", "Y", "X")

# Tried in order after cf-xarray's axis detection; the first hit that is a dimension wins.
_FALLBACK_STANDARD_NAMES = {
    "T": ("time",),
    "Y": ("projection_y_coordinate", "grid_latitude", "latitude"),
    "X": ("projection_x_coordinate", "grid_longitude", "longitude"),
}
_FALLBACK_NAMES = {
    "T": ("time", "t"),
    "Y": ("y", "lat", "latitude", "rlat", "grid_latitude", "projection_y_coordinate"),
    "X": ("x", "lon", "longitude", "rlon", "grid_longitude", "projection_x_coordinate"),
}


def _dims_of(obj: xr.DataArray | xr.Dataset) -> tuple[str, ...]:
    return tuple(obj.dims)


def _candidates(obj: xr.DataArray | xr.Dataset, axis: str) -> list[str]:
    """Dimension names that cf-xarray (then standard names, then names) maps to ``axis``."""
    dims = set(_dims_of(obj))
    found: list[str] = []
    try:
        axes = obj.cf.axes
    except Exception:  # cf-xarray can choke on odd attrs; the fall-backs still apply
        axes = {}
    for name in axes.get(axis, []):
        if name in dims and name not in found:
            found.append(name)
    if found:
        return found
    for std in _FALLBACK_STANDARD_NAMES[axis]:
        for name in obj.coords:
            if name in dims and obj[name].attrs.get("standard_name") == std and name not in found:
                found.append(str(name))
        if found:
            return found
    for name in _FALLBACK_NAMES[axis]:
        if name in dims:
            return [name]
    return []


def find_axes(
    obj: xr.DataArray | xr.Dataset,
    dims: Mapping[str, str] | None = None,
    *,
    require_time: bool = True,
) -> dict[str, str]:
    """Map the axes ``"T"``, ``"Y"``, ``"X"`` to dimension names of ``obj``.

    Parameters
    ----------
    obj
        The DataArray or Dataset to inspect.
    dims
        Explicit mapping, e.g. ``{"T": "time", "Y": "rlat", "X": "rlon"}``; entries given
        here win over detection. Keys must be among ``"T"``, ``"Y"``, ``"X"``.
    require_time
        If False, a missing time axis is allowed and ``"T"`` is absent from the result.

    Returns
    -------
    dict
        ``{"T": ..., "Y": ..., "X": ...}`` (``"T"`` omitted if absent and not required).

    Raises
    ------
    TypeError
        If ``obj`` is not an xarray object or ``dims`` is not a mapping.
    ValueError
        If an axis is missing or ambiguous, with the ``dims=`` remedy in the message.
    """
    if not isinstance(obj, xr.DataArray | xr.Dataset):
        raise TypeError(f"expected an xarray DataArray or Dataset, got {type(obj).__name__}")
    if dims is not None and not isinstance(dims, Mapping):
        raise TypeError(
            "dims must be a mapping of axis to dimension name such as "
            f"{{'T': 'time', 'Y': 'y', 'X': 'x'}}, got {type(dims).__name__} {dims!r}"
        )
    dims = dict(dims or {})
    unknown = set(dims) - set(AXES)
    if unknown:
        raise ValueError(
            f"dims= has unknown keys {sorted(unknown)}; use 'T', 'Y' and 'X', "
            "e.g. dims={'T': 'time', 'Y': 'y', 'X': 'x'}"
        )
    out: dict[str, str] = {}
    for axis in AXES:
        if axis in dims:
            name = dims[axis]
            if name not in _dims_of(obj):
                raise ValueError(
                    f"dims={{'{axis}': {name!r}}} is not a dimension of the input; "
                    f"its dimensions are {list(_dims_of(obj))}"
                )
            out[axis] = name
            continue
        cands = [c for c in _candidates(obj, axis) if c not in out.values()]
        what = {"T": "time", "Y": "y (latitude)", "X": "x (longitude)"}[axis]
        if not cands:
            if axis == "T" and not require_time:
                continue
            raise ValueError(
                f"no {what} axis found among dimensions {list(_dims_of(obj))}: give it an "
                f"'axis: {axis}' or standard_name attribute, or pass dims={{'{axis}': '<name>'}}"
            )
        if len(cands) > 1:
            raise ValueError(
                f"ambiguous {what} axis: candidates {cands}; choose one with "
                f"dims={{'{axis}': {cands[0]!r}}}"
            )
        out[axis] = cands[0]
    if len(set(out.values())) != len(out):
        raise ValueError(f"two axes map to the same dimension: {out}; fix it with dims=")
    return out
