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
    "as_file_variables",
    "history_line",
    "metadata_variables",
    "realization_coord",
    "template_coords",
    "to_dataset",
    "variable_attrs",
    "wrap",
]

CONVENTIONS = "CF-1.8"

#: Variable attributes that no longer describe generated values (or that xarray manages).
DROPPED_VARIABLE_ATTRS = (
    "actual_range",
    "comment",
    "history",
    "ancillary_variables",
    "coordinates",
    "_FillValue",
    "missing_value",
    "scale_factor",
    "add_offset",
)
#: Global attributes that describe the input file, not the output.
DROPPED_GLOBAL_ATTRS = ("comment", "tracking_id", "history")
#: Attributes that name other variables of the file (CF §5.6, §7.1, §7.2, §3.4).
REFERENCE_ATTRS = ("grid_mapping", "bounds", "cell_measures", "ancillary_variables")
#: Storage settings of the input's data variable carried to the generated one.
COMPRESSION_ENCODING = ("zlib", "complevel", "shuffle", "fletcher32", "compression")
#: Kept for compatibility: the attributes DESIGN.md §6 names as always kept.
KEPT_ATTRS = ("units", "standard_name", "long_name", "cell_methods", "grid_mapping")


def keep_attrs() -> bool:
    """Whether the input's attributes are carried: ``xr.set_options(keep_attrs=False)``
    turns it off; the default (and True) keeps them."""
    return xr.get_options()["keep_attrs"] is not False


def referenced(attr: str, value: object) -> list[str]:
    """Variable names an attribute refers to (``grid_mapping: "crs"`` or ``"crs: x y"``,
    ``cell_measures: "area: areacella"``, ``bounds``, ``ancillary_variables``)."""
    tokens = str(value).split()
    if attr == "cell_measures":
        return [tokens[i + 1] for i, t in enumerate(tokens[:-1]) if t.endswith(":")]
    if attr == "grid_mapping" and any(t.endswith(":") for t in tokens):
        return [t[:-1] for t in tokens if t.endswith(":")]
    return tokens


def _without(attr: str, value: object, missing: set[str]) -> str | None:
    """``value`` with the references to ``missing`` variables removed (None if empty)."""
    tokens = str(value).split()
    if attr == "cell_measures":
        pairs = [tokens[i : i + 2] for i in range(0, len(tokens) - 1, 2)]
        kept = [" ".join(pr) for pr in pairs if pr[1] not in missing]
    elif attr == "grid_mapping" and any(t.endswith(":") for t in tokens):
        groups: list[list[str]] = []
        for t in tokens:
            if t.endswith(":"):
                groups.append([t])
            elif groups:
                groups[-1].append(t)
        kept = [" ".join(g) for g in groups if g[0][:-1] not in missing]
    else:
        kept = [t for t in tokens if t not in missing]
    return " ".join(kept) or None


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


def variable_attrs(attrs: Mapping, encoding: Mapping | None = None) -> dict:
    """The input variable's attributes that still describe generated values.

    All of them unless ``keep_attrs`` is off, less :data:`DROPPED_VARIABLE_ATTRS`, plus the
    references that ``decode_coords="all"`` moved into ``encoding``; references to other
    variables are checked later (:func:`link_references`).
    """
    if not keep_attrs():
        return {}
    refs = {k: v for k, v in (encoding or {}).items() if k in REFERENCE_ATTRS}
    return {**{k: v for k, v in attrs.items() if k not in DROPPED_VARIABLE_ATTRS}, **refs}


def _references_to_attrs(var: xr.Variable) -> xr.Variable:
    """``var`` with references that ``decode_coords="all"`` keeps in ``encoding`` moved back
    to its attrs, where the output's checks and writers see them."""
    moved = {k: v for k, v in var.encoding.items() if k in REFERENCE_ATTRS}
    if not moved:
        return var
    var = var.copy(deep=False)
    var.attrs = {**var.attrs, **moved}
    var.encoding = {k: v for k, v in var.encoding.items() if k not in REFERENCE_ATTRS}
    return var


def template_coords(template: xr.DataArray, dims: Sequence[str]) -> dict[str, xr.Variable]:
    """Coordinates of ``template`` that live only on ``dims`` (or are scalars)."""
    return {
        str(name): _references_to_attrs(c.variable.copy(deep=False))
        for name, c in template.coords.items()
        if set(c.dims) <= set(dims)
    }


def source_variables(source: xr.DataArray | xr.Dataset | None) -> dict[str, xr.Variable]:
    """Every variable of the input (data variables and coordinates) by name."""
    if source is None:
        return {}
    if isinstance(source, xr.DataArray):
        return {str(k): _references_to_attrs(v.variable) for k, v in source.coords.items()}
    return {str(k): _references_to_attrs(v) for k, v in source.variables.items()}


def link_references(
    ds: xr.Dataset,
    available: Mapping[str, xr.Variable],
    changed: set[str],
    *,
    new: Mapping[str, xr.Variable] | None = None,
    as_coords: set[str] = frozenset(),
) -> xr.Dataset:
    """Bring in the variables that attributes of ``ds`` refer to, or drop the references.

    A referenced variable (grid mapping, bounds, cell measures) missing from ``ds`` is
    added from ``available`` when none of its dimensions is in ``changed`` (e.g. the old
    time bounds of a forecast, the coarse bounds of a downscaled grid) and its sizes agree;
    otherwise the reference is removed from the attribute, and the attribute dropped if
    nothing is left, so that no attribute points at a variable the output lacks.
    ``new``: variables made for the output (e.g. regenerated bounds), preferred to the
    input's and allowed on ``changed`` dimensions. ``as_coords``: names added as
    coordinates rather than data variables.
    """
    ds = ds.copy()
    seen: set[str] = set()
    while True:
        todo = [n for n in ds.variables if n not in seen]
        if not todo:
            return ds
        for name in todo:
            seen.add(name)
            var = ds.variables[name]
            for attr in REFERENCE_ATTRS:
                if attr not in var.attrs:
                    continue
                missing = set()
                for ref in referenced(attr, var.attrs[attr]):
                    if ref in ds.variables:
                        continue
                    cand = (new or {}).get(ref)
                    ok = cand is not None
                    if cand is None:
                        cand = available.get(ref)
                        ok = cand is not None and not (set(cand.dims) & changed)
                    ok = ok and all(ds.sizes.get(d, n) == n for d, n in cand.sizes.items())
                    if ok:
                        if ref in as_coords:
                            ds = ds.assign_coords({ref: cand})
                        else:
                            ds[ref] = cand
                    else:
                        missing.add(ref)
                if missing:
                    kept = _without(attr, var.attrs[attr], missing)
                    target = ds[name] if name in ds.data_vars else ds.coords[name]
                    attrs = dict(target.attrs)
                    if kept is None:
                        attrs.pop(attr)
                    else:
                        attrs[attr] = kept
                    ds[name].attrs = attrs  # ds[name] shares the variable
        # newly added variables may refer to others: go round again


def prune_references(da: xr.DataArray) -> xr.DataArray:
    """Drop references (in the variable's and its coordinates' attrs) to variables that a
    DataArray cannot hold (e.g. bounds, which have an extra dimension)."""
    names = {str(k) for k in da.coords}
    da = da.copy(deep=False)
    for target in [da, *(da.coords[k] for k in list(da.coords))]:
        attrs = dict(target.attrs)
        for attr in REFERENCE_ATTRS:
            if attr in attrs:
                missing = set(referenced(attr, attrs[attr])) - names - {str(da.name)}
                if missing:
                    kept = _without(attr, attrs[attr], missing)
                    if kept is None:
                        del attrs[attr]
                    else:
                        attrs[attr] = kept
        if target is da:
            da.attrs = attrs
        else:
            da.coords[target.name].attrs = attrs
    return da


def _is_time(var: xr.Variable) -> bool:
    if np.issubdtype(var.dtype, np.datetime64):
        return True
    if var.dtype == object and var.size:
        first = var.values.ravel()[0]
        return hasattr(first, "calendar") and hasattr(first, "year")
    return False


def _time_encoding(var: xr.Variable, like: xr.Variable | None) -> dict:
    """CF-1.8 encoding of a time variable: the input's units and calendar, stored as float64
    unless the input used another CF type (xarray picks int64 otherwise, which CF-1.8
    does not allow)."""
    enc: dict = {"_FillValue": None}
    src = like.encoding if like is not None else {}
    for key in ("units", "calendar"):
        if key in src:
            enc[key] = src[key]
    dtype = np.dtype(src.get("dtype", "float64"))
    enc["dtype"] = dtype if dtype in (np.float64, np.float32, np.int32) else np.float64
    return enc


def _data_encoding(var: xr.Variable, like: xr.Variable | None, lead: int) -> dict:
    """Compression and chunking of the input's variable, adapted to the output's shape."""
    if like is None:
        return {}
    src = like.encoding
    enc = {k: src[k] for k in COMPRESSION_ENCODING if k in src}
    chunks = src.get("chunksizes")
    if chunks is not None and len(chunks) + lead == var.ndim:
        sizes = var.shape[lead:]
        enc["chunksizes"] = (1,) * lead + tuple(min(int(c), s) for c, s in zip(chunks, sizes))
    fill = src.get("_FillValue")
    if fill is not None and np.issubdtype(np.asarray(fill).dtype, np.floating):
        enc["_FillValue"] = fill
    return enc


def apply_encodings(
    ds: xr.Dataset,
    available: Mapping[str, xr.Variable],
    generated: Sequence[str],
    lead: int,
    time_like: Mapping[str, str] | None = None,
) -> None:
    """Set CF-1.8 encodings in place: no ``_FillValue`` on coordinates, bounds, grid
    mappings or flags; times in the input's units and calendar as float64 (or the input's
    CF type); the input's compression and chunking on generated variables.

    ``time_like`` maps a time variable of the output to the input variable whose encoding
    it takes (e.g. new forecast bounds → the input's time).
    """
    time_like = dict(time_like or {})
    for name, var in ds.variables.items():
        like = available.get(str(time_like.get(name, name)))
        if name in generated:
            var.encoding = _data_encoding(var, like, lead)
        elif _is_time(var):
            var.encoding = _time_encoding(var, like)
        else:
            var.encoding = {"_FillValue": None}


def global_attrs(
    source: xr.Dataset | xr.DataArray | None, method: str, line: str, title: str | None
) -> dict:
    """Global attributes of an output Dataset: the input's (unless ``keep_attrs`` is off,
    less :data:`DROPPED_GLOBAL_ATTRS`), with ``Conventions``, a ``title`` if the input had
    none, ``source`` naming xdiffusion (and the input's source), and ``history`` continued."""
    old = dict(source.attrs) if isinstance(source, xr.Dataset) else {}
    kept = {k: v for k, v in old.items() if k not in DROPPED_GLOBAL_ATTRS} if keep_attrs() else {}
    ours = f"xdiffusion {__version__} {method}"
    return {
        **kept,
        "Conventions": CONVENTIONS,
        "title": kept.get("title") or title or f"xdiffusion {method} output",
        "source": f"{ours}; input: {kept['source']}" if kept.get("source") else ours,
        "history": append_history(old, line),
    }


def metadata_variables(ds: xr.Dataset) -> set[str]:
    """Names of the grid mappings, bounds and cell measures that variables of ``ds`` refer
    to (in attrs, or in the encoding where ``decode_coords="all"`` put them)."""
    return {
        ref
        for var in ds.variables.values()
        for attr in REFERENCE_ATTRS
        if attr != "ancillary_variables"
        for where in (var.attrs, var.encoding)
        if attr in where
        for ref in referenced(attr, where[attr])
        if ref in ds.variables
    }


def as_file_variables(ds: xr.Dataset) -> xr.Dataset:
    """Grid mappings, bounds and cell measures as data variables, as a file holds them: as
    coordinates, writers would list them in ``coordinates`` attributes, and CF checkers
    then demand a standard_name of a grid mapping."""
    refs = metadata_variables(ds)
    demote = [r for r in refs if r in ds.coords and r not in ds.dims]
    return ds.reset_coords(demote) if demote else ds


def to_dataset(obj: xr.DataArray | xr.Dataset) -> xr.Dataset:
    """A Dataset to write: a DataArray becomes a one-variable Dataset whose global
    attributes (``Conventions``, ``title``, ``source``, ``history``) come from it; grid
    mappings and bounds become data variables (:func:`as_file_variables`)."""
    if isinstance(obj, xr.Dataset):
        return as_file_variables(obj)
    name = obj.name if obj.name is not None else "variable"
    ds = as_file_variables(obj.to_dataset(name=name))
    var_attrs = dict(ds[name].attrs)
    history = var_attrs.pop("history", None)
    ds[name].attrs = var_attrs
    ds.attrs = {
        "Conventions": CONVENTIONS,
        "title": f"{name} from xdiffusion",
        "source": f"xdiffusion {__version__}",
        **({"history": history} if history else {}),
    }
    return ds


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
    coords: Mapping[str, xr.Variable] | None = None,
    title: str | None = None,
    source: xr.DataArray | xr.Dataset | None = None,
    changed: Sequence[str] = (),
    new_variables: Mapping[str, xr.Variable] | None = None,
    time_like: Mapping[str, str] | None = None,
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
        Global title for Dataset outputs whose input had none.
    source
        The input object: its global attributes are merged (Datasets), and variables that
        the output's attributes refer to (grid mapping, bounds, cell measures) are carried
        from it unless they lie on a ``changed`` dimension.
    changed
        Dimensions whose coordinate values differ from the input's (a forecast's time, a
        downscaled grid): nothing of the input on them is carried.
    new_variables
        Variables made for the output (regenerated bounds), added where referenced.
    time_like
        Output time variable → input variable whose units and calendar it is encoded with.
    extra_attrs
        Attributes to add to each generated variable and to a Dataset's global attributes
        (e.g. ``sampling``: the settings that ran).
    """
    line = history_line(method, arguments)
    lead = ("realization",) if members is not None else ()
    available = source_variables(source)
    src_coords = set()
    if source is not None:
        src_coords = {str(k) for k in source.coords}
    src_coords |= set(new_variables or {})
    variables: dict[str, xr.DataArray] = {}
    flags: dict[str, xr.DataArray] = {}
    for c, (name, tmpl) in enumerate(zip(names, templates)):
        if coords is not None:
            cs = {
                k: _references_to_attrs(xr.Variable(v.dims, v.data, v.attrs, v.encoding))
                for k, v in coords.items()
            }
        else:
            cs = template_coords(tmpl, dims)
        if members is not None:
            cs["realization"] = realization_coord(members)
        vals = values[:, c] if members is not None else values[c]
        attrs = {**variable_attrs(tmpl.attrs, tmpl.encoding), **(extra_attrs or {})}
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
            da.attrs["ancillary_variables"] = flag_name
            if as_dataset:
                flags[flag_name] = flag
            else:
                da = da.assign_coords({flag_name: flag})
        variables[name] = da
    ds = xr.Dataset({**variables, **flags})
    ds = link_references(
        ds,
        available,
        set(changed),
        new=new_variables,
        as_coords=set() if as_dataset else src_coords,
    )
    apply_encodings(ds, available, list(names), len(lead), time_like)
    if not as_dataset:
        da = prune_references(ds[names[0]])
        for k in da.coords:  # Dataset → DataArray keeps variables, but not their encodings
            da.coords[k].encoding = ds.variables[k].encoding
        da.encoding = ds.variables[names[0]].encoding
        return da
    ds = as_file_variables(ds)
    ds.attrs = {**global_attrs(source, method, line, title), **(extra_attrs or {})}
    return ds
