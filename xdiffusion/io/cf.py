"""CF-conventions output: wrap generated arrays in the template's coordinates and attrs.

Conventions (DESIGN.md §6): an integer ``realization`` dimension, the variable's CF attrs,
no dangling references, a ``history`` line per call, global ``Conventions``/``title``/
``source`` on Datasets, and an observed/generated flag variable for conditional outputs.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr

from xdiffusion._version import __version__

__all__ = [
    "CONVENTIONS",
    "KEPT_ATTRS",
    "append_history",
    "history_line",
    "realization_coord",
    "template_coords",
    "variable_attrs",
    "wrap",
]

CONVENTIONS = "CF-1.8"
KEPT_ATTRS = (
    "units",
    "standard_name",
    "long_name",
    "cell_methods",
    "comment",
    "valid_min",
    "valid_max",
    "grid_mapping",
)


def history_line(method: str, arguments: Mapping[str, object]) -> str:
    """``<ISO time>: xdiffusion <version> <method>(<arguments>)``."""
    now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    args = ", ".join(f"{k}={v!r}" for k, v in arguments.items())
    return f"{now}: xdiffusion {__version__} {method}({args})"


def append_history(attrs: Mapping, line: str) -> str:
    old = attrs.get("history")
    return f"{old}\n{line}" if old else line


def realization_coord(members: Sequence[int]) -> xr.DataArray:
    """The CF ensemble coordinate: integer, standard_name ``realization``, units ``1``."""
    return xr.DataArray(
        np.asarray(members, dtype=np.int32),
        dims="realization",
        attrs={
            "standard_name": "realization",
            "units": "1",
            "long_name": "ensemble member (xdiffusion sample index)",
        },
    )


def variable_attrs(attrs: Mapping, coords: Mapping) -> dict:
    """The CF attrs worth keeping, minus references to variables the output lacks."""
    out = {k: attrs[k] for k in KEPT_ATTRS if k in attrs}
    gm = out.get("grid_mapping")
    if gm is not None and str(gm).split(":")[0].strip() not in coords:
        del out["grid_mapping"]
    return out


def template_coords(template: xr.DataArray, dims: Sequence[str]) -> dict[str, xr.DataArray]:
    """Coordinates of ``template`` that live only on ``dims`` (or are scalars)."""
    return {
        str(name): c.variable.copy(deep=False)
        for name, c in template.coords.items()
        if set(c.dims) <= set(dims)
    }


def wrap(
    values: np.ndarray,
    *,
    templates: Sequence[xr.DataArray],
    names: Sequence[str],
    dims: Sequence[str],
    members: Sequence[int] | None,
    method: str,
    arguments: Mapping[str, object],
    as_dataset: bool,
    observed: np.ndarray | None = None,
    coords: Mapping[str, xr.DataArray] | None = None,
    title: str | None = None,
    global_attrs: Mapping | None = None,
    extra_attrs: Mapping[str, str] | None = None,
) -> xr.DataArray | xr.Dataset:
    """Build the CF output of a generating method.

    Parameters
    ----------
    values
        (n, C, *dims) array in data units (or (C, *dims) when ``members`` is None).
    templates
        One DataArray per channel whose attrs (and, unless ``coords`` is given, coordinates)
        the output takes; already transposed to ``dims``.
    names
        Variable names, one per channel.
    dims
        Dimension names of one member of one channel, e.g. (time, y, x).
    members
        Member indices for the ``realization`` coordinate, or None for no ensemble axis.
    method, arguments
        Recorded in ``history``.
    as_dataset
        Return a Dataset (with global attrs) rather than a DataArray.
    observed
        Optional boolean array broadcastable to (C, *dims): True where the output is the
        input's value. Adds the flag variable ``<name>_status`` (flag_values 1, 0 with
        flag_meanings "observed generated") linked through ``ancillary_variables``.
    coords
        Coordinates to use instead of the template's (e.g. a forecast's new time axis).
    title
        Global title for Dataset outputs.
    global_attrs
        Attributes of the input Dataset; its ``history`` is continued.
    extra_attrs
        Attributes to add to each generated variable and to a Dataset's global attributes
        (e.g. ``sampling``: the settings that ran).
    """
    line = history_line(method, arguments)
    lead = ("realization",) if members is not None else ()
    variables: dict[str, xr.DataArray] = {}
    for c, (name, tmpl) in enumerate(zip(names, templates)):
        cs = dict(coords) if coords is not None else template_coords(tmpl, dims)
        if members is not None:
            cs["realization"] = realization_coord(members)
        vals = values[:, c] if members is not None else values[c]
        attrs = {**variable_attrs(tmpl.attrs, cs), **(extra_attrs or {})}
        if not as_dataset:
            attrs["history"] = append_history(tmpl.attrs, line)
        da = xr.DataArray(vals, dims=lead + tuple(dims), coords=cs, name=name, attrs=attrs)
        if observed is not None:
            flag_name = f"{name}_status"
            obs = np.broadcast_to(
                observed[c] if observed.ndim == len(dims) + 1 else observed,
                tuple(len(da[d]) if d in da.coords else da.sizes[d] for d in dims),
            )
            flag = xr.DataArray(
                np.where(obs, 1, 0).astype(np.int8),
                dims=tuple(dims),
                coords={k: v for k, v in cs.items() if k != "realization"},
                attrs={
                    "long_name": f"whether {name} was observed or generated",
                    "flag_values": np.array([1, 0], dtype=np.int8),
                    "flag_meanings": "observed generated",
                },
            )
            if as_dataset:
                da.attrs["ancillary_variables"] = flag_name
                variables[flag_name] = flag
            else:
                da = da.assign_coords({flag_name: flag})
                da.attrs["ancillary_variables"] = flag_name
        variables[name] = da
    if not as_dataset:
        return variables[names[0]]
    ds = xr.Dataset(variables)
    ds.attrs = {
        "Conventions": CONVENTIONS,
        "title": title or f"xdiffusion {method} output",
        "source": f"xdiffusion {__version__}",
        "history": append_history(global_attrs or {}, line),
        **(extra_attrs or {}),
    }
    return ds
