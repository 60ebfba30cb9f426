"""Inputs conformed to what a model knows of its training data: units, orientation, grid.

A model fitted on precipitation in mm h-1, on a grid whose y runs south to north over one
region, must not fill a template in mm day-1 with mm h-1 magnitudes, put its static NaN
mask on the wrong rows of a template whose y runs north to south, or accept a same-shaped
grid of another region. :func:`plan` compares an input (its per-variable arrays, as
:class:`~xdiffusion.io.convert.Prepared` holds them) with the model's
:class:`~xdiffusion.io.spec.DataSpec` and returns a :class:`Conform`: what to do to the
input before generation (convert units, reverse Y or X) and how to undo it on the output.
:func:`check_grid` refuses another region or resolution; :func:`locate_region` finds where
a grid lies in the training grid (the whole of it, or a contiguous sub-region).

Pure xarray and numpy (no torch). Everything is elementwise or a reversed ``isel``, so a
dask-backed input stays lazy. ``cf_units`` (UDUNITS-2) is imported only when two unit
strings differ.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import dask
import dask.array as dsa
import numpy as np
import xarray as xr

from xdiffusion.io.calendar import SECONDS_PER_DAY, TimeStep
from xdiffusion.io.spec import DataSpec, GridSpec

__all__ = [
    "COORD_EPS",
    "DRY_RATE",
    "GRID_RTOL",
    "Conform",
    "UnitConversion",
    "axis_values",
    "check_grid",
    "default_dry_threshold",
    "locate_region",
    "plan",
]

#: Largest difference between an input's grid coordinate and the model's, as a fraction
#: of the model's grid spacing, that still counts as the same grid.
GRID_RTOL = 1e-6

#: Further allowance, relative to the coordinate's magnitude: coordinates are often stored
#: as float32 in files (relative rounding 6e-8), and a grid rebuilt from coarse cell centres
#: carries a few such roundings.
COORD_EPS = 4 * float(np.finfo(np.float32).eps)

#: Liquid water has a density of 1000 kg m-3, so 1 kg m-2 of water is 1 mm deep: pairs of
#: units (mass per area, depth) that differ in dimension but are routinely confused. Used
#: only to suggest a factor in the error message; nothing is converted across them.
WATER_EQUIVALENTS = (("kg m-2 s-1", "mm s-1"), ("kg m-2", "mm"))

#: Test points of the conversion between two units; three points check it is affine.
_PROBES = np.array([0.0, 1.0, 2.0])

_ORIENTED_AXES = ("Y", "X")

#: The default dry threshold, as a rate of liquid water: (value, units). Below about
#: 0.01 mm h-1 gauges and radars report no rain, and generated values below it are
#: indistinguishable from dry (docs/transforms.md).
DRY_RATE = (0.01, "mm h-1")
#: The mean Gregorian month, for a dry threshold of monthly amounts.
_MEAN_MONTH_SECONDS = 365.2425 / 12 * SECONDS_PER_DAY


@dataclass(frozen=True)
class UnitConversion:
    """An affine map between an input variable's units and the model's.

    ``model = scale * input + offset`` and ``input = back_scale * model + back_offset``,
    both taken from UDUNITS so that a round trip by an exact factor (24 for mm day-1 ↔
    mm h-1) stays exact. ``source`` None: the input had no units and is assumed to be in
    the model's (no conversion; the output is labelled with ``target``).
    """

    source: str | None
    target: str
    scale: float = 1.0
    offset: float = 0.0
    back_scale: float = 1.0
    back_offset: float = 0.0

    @property
    def converts(self) -> bool:
        """Whether values change (False for an unlabelled input: a label only)."""
        return self.source is not None

    def to_model(self, da: xr.DataArray) -> xr.DataArray:
        """``da`` in the model's units, labelled so (elementwise: lazy stays lazy)."""
        data = _affine(da.data, self.scale, self.offset) if self.converts else da.data
        return da.copy(data=data).assign_attrs(units=self.target)

    def to_input(self, data: Any) -> Any:
        """Values (numpy or dask) in the model's units back in the input's."""
        return _affine(data, self.back_scale, self.back_offset) if self.converts else data


def _affine(data: Any, scale: float, offset: float) -> Any:
    # python floats keep a float32 array float32 (NumPy's weak scalars)
    out = data * float(scale) if scale != 1.0 else data
    return out + float(offset) if offset != 0.0 else out


@dataclass(frozen=True)
class Conform:
    """What was done to an input to match the model's training data, and its undoing.

    Attributes
    ----------
    names
        The input's variable names, in the model's order (those of the output).
    units
        Per variable the :class:`UnitConversion` applied, or None where the units were
        equal or unknown on either side.
    reversed_axes
        Axes (``"Y"``, ``"X"``) whose order the input has reversed relative to the
        training data; reversed before generation and back on the output.
    axes
        The input's axis → dimension mapping.
    originals
        The input's arrays as given (before conversion), so that observations kept by a
        conditional task come back bit for bit despite the round trip through the model's
        units.
    """

    names: tuple[str, ...]
    units: tuple[UnitConversion | None, ...]
    reversed_axes: tuple[str, ...]
    axes: Mapping[str, str]
    originals: tuple[xr.DataArray, ...] = ()

    @property
    def changes_values(self) -> bool:
        """Whether :meth:`apply` changes values or their order (not only labels)."""
        return bool(self.reversed_axes) or any(u is not None and u.converts for u in self.units)

    @property
    def reversed_dims(self) -> list[str]:
        """The input's dimensions in reverse order relative to the training data."""
        return [self.axes[a] for a in self.reversed_axes]

    def apply(self, arrays: Sequence[xr.DataArray]) -> list[xr.DataArray]:
        """The input's per-variable arrays in the model's units and orientation."""
        return [
            self.reorder(u.to_model(da) if u is not None else da)
            for da, u in zip(arrays, self.units)
        ]

    def reorder(self, obj: Any) -> Any:
        """A Variable or DataArray of the input reversed along :attr:`reversed_dims` (its
        own inverse: input ↔ model orientation). Reversed slices: numpy views, lazy dask."""
        present = {d: slice(None, None, -1) for d in self.reversed_dims if d in obj.dims}
        return obj.isel(present) if present else obj

    def oriented_like(self, other: Conform) -> Conform:
        """This conversion with ``other``'s orientation (``downscale(like=)``: the output
        takes the fine template's coordinates, so its order too)."""
        return replace(self, reversed_axes=other.reversed_axes)

    def templates(self) -> list[xr.DataArray]:
        """The input's arrays as given, to build outputs on: an input without units that
        was assumed in the model's units is labelled with them."""
        return [
            da.assign_attrs(units=u.target) if u is not None and not u.converts else da
            for da, u in zip(self.originals, self.units)
        ]

    def restore(self, values: Any, observed: Any = None) -> tuple[Any, Any]:
        """Generated values and observed flags back in the input's order and units.

        Parameters
        ----------
        values
            (n, C, ..., Y, X) numpy or dask array generated on the conformed input.
        observed
            Optional boolean (C, ..., Y, X) array, True where ``values`` are observations:
            there the input's own values are returned (bit for bit, not their round trip
            through the model's units). Needs :attr:`originals` on the output's grid.

        Returns
        -------
        tuple
            ``values`` and ``observed``, reversed back along :attr:`reversed_axes` and
            ``values`` converted back to the input's units.
        """
        if self.reversed_axes:
            # the grid's axes are the last two of every output (…, Y, X)
            index = [
                slice(None, None, -1) if a in self.reversed_axes else slice(None)
                for a in ("Y", "X")
            ]
            values = values[(..., *index)]
            if observed is not None:
                observed = observed[(..., *index)]
        if not any(u is not None and u.converts for u in self.units):
            return values, observed
        lib = dsa if dask.is_dask_collection(values) else np
        channels = []
        for c, u in enumerate(self.units):
            v = values[:, c]
            if u is not None and u.converts:
                v = u.to_input(v)
                if observed is not None and self.originals:
                    v = lib.where(observed[c], self.originals[c].data, v).astype(values.dtype)
            channels.append(v)
        return lib.stack(channels, axis=1), observed


def axis_values(da: xr.DataArray, dim: str) -> np.ndarray | None:
    """The 1-D numeric coordinate of ``dim`` as floats, or None if there is none."""
    if dim in da.coords and da[dim].dims == (dim,):
        c = da[dim]
        if np.issubdtype(c.dtype, np.number):
            return np.asarray(c.values, dtype=float)
    return None


def _direction(v: np.ndarray | None) -> float:
    """+1 ascending, −1 descending, 0 unknown (no coordinate, one value, not finite)."""
    if v is None or v.size < 2 or not np.isfinite(v[[0, -1]]).all():
        return 0.0
    return float(np.sign(v[-1] - v[0]))


def _spec_axis(grid: GridSpec, axis: str) -> np.ndarray | None:
    return grid.y if axis == "Y" else grid.x


def _has_cf_units() -> bool:
    try:
        import cf_units  # noqa: F401
    except ImportError:  # pragma: no cover - cf-units comes with the test dependencies
        return False
    return True


def _parse(units: str) -> Any | None:
    """A cf_units.Unit, or None if the string is not a UDUNITS unit (or cf_units lacks)."""
    if not _has_cf_units():
        return None
    import cf_units

    try:
        u = cf_units.Unit(units)
    except ValueError:
        return None
    return None if u.is_unknown() or u.is_no_unit() else u


def _conversion(a: Any, b: Any) -> tuple[float, float] | None:
    """(scale, offset) of the map from unit ``a`` to ``b``, None unless it is affine."""
    y = np.asarray(a.convert(_PROBES.copy(), b), dtype=float)
    scale, offset = y[1] - y[0], y[0]
    if not np.isclose(y[2], offset + 2 * scale, rtol=1e-12, atol=0):  # e.g. decibels
        return None
    return float(scale), float(offset)


def _water_factor(source: str, target: str) -> float | None:
    """The factor from ``source`` to ``target`` taking 1 kg m-2 of water as 1 mm, if any."""
    s, t = _parse(source), _parse(target)
    if s is None or t is None:
        return None
    for mass, depth in WATER_EQUIVALENTS:
        for a, b in ((mass, depth), (depth, mass)):
            ua, ub = _parse(a), _parse(b)
            if s.is_convertible(ua) and t.is_convertible(ub):
                # source → a (same dimension), a ≡ b numerically for water, b → target
                return float(s.convert(1.0, ua)) * float(ub.convert(1.0, t))
    return None


def _refuse_units(argument: str, name: str, source: str, target: str, why: str) -> ValueError:
    factor = _water_factor(source, target)
    example = f"({name} * {factor:g})" if factor is not None else name
    water = f" (here × {factor:g}: 1 kg m-2 of liquid water is 1 mm)" if factor is not None else ""
    return ValueError(
        f"{argument} variable {name!r} is in {source!r} but the model was fitted on data in "
        f"{target!r}, and {why}. Convert the values to {target!r}{water} and label them, "
        f"e.g. {example}.assign_attrs(units={target!r}); or, if only the units attribute "
        f"is wrong, relabel it: .assign_attrs(units={target!r})"
    )


def _unit_conversion(
    argument: str, name: str, source: str | None, target: str | None, bounded: bool
) -> UnitConversion | None:
    """How to take one variable from its units to the model's; raises if impossible."""
    if target is None or source == target:
        return None  # nothing known of the training units, or the same label
    if source is None:
        return UnitConversion(None, target)
    if not _has_cf_units():  # pragma: no cover
        raise _refuse_units(
            argument, name, source, target, "cf-units is not installed to compare them"
        )
    s, t = _parse(source), _parse(target)
    if s is None or t is None:
        bad = source if s is None else target
        raise _refuse_units(
            argument, name, source, target, f"{bad!r} is not a unit UDUNITS knows to compare"
        )
    if s == t:
        return None  # the same unit spelt differently: "mm h-1", "mm/h", "mm hr-1"
    forward = _conversion(s, t) if s.is_convertible(t) else None
    if forward is None:
        raise _refuse_units(
            argument, name, source, target, "the two cannot be converted (other dimensions)"
        )
    back = _conversion(t, s)
    assert back is not None  # the inverse of an affine map is affine
    if bounded and (forward[1] != 0.0):
        # a transform bounded below (sqrt, log1p) models a ratio quantity whose zero is the
        # model's zero; an offset between the units means a label at odds with the data
        raise _refuse_units(
            argument,
            name,
            source,
            target,
            "converting them needs an offset, which the model's bounded transform (lower "
            "bound 0 in the model's units) does not allow",
        )
    return UnitConversion(source, target, *forward, *back)


def _step_seconds(step: TimeStep | None) -> float | None:
    if step is None or step.kind == "numeric":
        return None
    return step.size if step.kind == "seconds" else step.size * _MEAN_MONTH_SECONDS


def default_dry_threshold(units: str | None, step: TimeStep | None = None) -> tuple[float, str]:
    """The default dry threshold, :data:`DRY_RATE` (0.01 mm h-1 of water), in ``units``.

    Parameters
    ----------
    units
        The variable's ``units`` attribute (UDUNITS, as CF writes it).
    step
        The time step of the data, for units of an amount per step (``mm``, ``m``,
        ``kg m-2``): the threshold is then the rate times the step.

    Returns
    -------
    (value, how)
        The threshold in ``units`` and a phrase saying how it was found (for messages).
        A rate (``mm day-1``, ``m s-1``) is converted; a mass flux (``kg m-2 s-1``) takes
        1 kg m-2 of water as 1 mm; an amount per step needs a step of known duration.
        Units that are none of these, absent or unknown keep 0.01 in the data's units,
        i.e. the data are taken to be in mm h-1 (the value before units were read).
    """
    value, rate = DRY_RATE
    target = _parse(units) if units else None
    if target is None:
        return value, f"{value:g} (no units known: taken as {rate})"
    per_second = _parse(rate).convert(value, _parse("mm s-1"))  # mm s-1 ≡ kg m-2 s-1 of water
    for source, amount in (
        ("mm s-1", False),
        ("kg m-2 s-1", False),
        ("mm", True),
        ("kg m-2", True),
    ):
        unit = _parse(source)
        if not target.is_convertible(unit):
            continue
        if not amount:
            return _round(unit.convert(per_second, target)), f"{value:g} {rate} in {units!r}"
        seconds = _step_seconds(step)
        if seconds is None:
            return value, (
                f"{value:g} in {units!r} (an amount per time step of unknown length; pass "
                "dry_threshold= in these units)"
            )
        out = _round(unit.convert(per_second * seconds, target))
        return out, f"{value:g} {rate} over the {step.describe()} step, in {units!r}"
    return value, f"{value:g} in {units!r} (not a precipitation rate or amount)"


def _round(x: float) -> float:
    """``x`` to 12 significant digits: unit conversions leave 0.010000000000000002."""
    return float(f"{float(x):.12g}")


def _units_of(da: xr.DataArray) -> str | None:
    units = da.attrs.get("units")
    if units is None:
        return None
    units = str(units).strip()
    return units or None  # "" is no units (UDUNITS: unknown)


def plan(
    arrays: Sequence[xr.DataArray],
    names: Sequence[str],
    axes: Mapping[str, str],
    spec: DataSpec | None,
    argument: str,
    *,
    bounded: Sequence[bool] | None = None,
    stacklevel: int = 5,
) -> Conform:
    """What to do to an input so that it matches the model's training data.

    Parameters
    ----------
    arrays
        The input's variables, one per model variable in the model's order (as
        :attr:`~xdiffusion.io.convert.Prepared.arrays`).
    names
        Their names in the input.
    axes
        Axis (``"T"``, ``"Y"``, ``"X"``) → dimension name of the input.
    spec
        What the model knows of its data; None (or a spec without units, without a grid)
        skips the corresponding checks.
    argument
        The argument's name, for messages.
    bounded
        Per variable whether the model's transform has a lower bound (then unit
        conversions with an offset are refused).
    stacklevel
        Of the missing-units warning: 5 points at the caller of ``DiffusionModel.<task>``
        through ``prepare_for`` and ``generate.<task>``.

    Returns
    -------
    Conform
        Identity where nothing needs doing.

    Raises
    ------
    ValueError
        Units that differ and cannot be converted (or not affinely, or with an offset for a
        bounded transform), or that UDUNITS cannot parse.

    Warns
    -----
    UserWarning
        Once per call, for variables without a units attribute when the model has units:
        their values are assumed to be in the model's units.
    """
    n = len(arrays)
    conversions: list[UnitConversion | None] = [None] * n
    variables = spec.variables if spec is not None else ()
    if len(variables) == n:
        flags = list(bounded) if bounded is not None else [False] * n
        for i, (da, name, v) in enumerate(zip(arrays, names, variables)):
            conversions[i] = _unit_conversion(argument, name, _units_of(da), v.units, flags[i])
        unlabelled = [nm for nm, u in zip(names, conversions) if u is not None and not u.converts]
        if unlabelled:
            units = {nm: v.units for nm, v in zip(names, variables) if nm in unlabelled}
            warnings.warn(
                f"{argument} variable(s) {unlabelled} have no units attribute; assuming the "
                f"model's units {units} (set the units attribute to have them checked and "
                "converted)",
                UserWarning,
                # plan ← prepare_for ← generate.<task> ← DiffusionModel.<task> ← the caller
                stacklevel=stacklevel,
            )
    flipped: list[str] = []
    grid = spec.grid if spec is not None else None
    if grid is not None and arrays:
        for a in _ORIENTED_AXES:
            if a not in axes:
                continue
            mine = _direction(axis_values(arrays[0], axes[a]))
            theirs = _direction(_spec_axis(grid, a))
            if mine and theirs and mine != theirs:
                flipped.append(a)
    return Conform(
        names=tuple(names),
        units=tuple(conversions),
        reversed_axes=tuple(flipped),
        axes=dict(axes),
        originals=tuple(arrays),
    )


def _describe(v: np.ndarray) -> str:
    step = f", step {(v[-1] - v[0]) / (v.size - 1):.6g}" if v.size > 1 else ""
    return f"{v[0]:.6g} to {v[-1]:.6g}{step}, {v.size} cells"


def check_grid(
    coords: Mapping[str, np.ndarray | None],
    spec: DataSpec | None,
    argument: str,
    *,
    names: Mapping[str, str] | None = None,
) -> None:
    """Refuse grid coordinates that differ from the model's (another region or resolution).

    Parameters
    ----------
    coords
        Axis (``"Y"``, ``"X"``) → the input's 1-D coordinate values in the model's
        orientation, or None where the input has no numeric coordinate (not checked).
    spec
        The model's data spec; without a recorded grid nothing is checked.
    argument
        What the coordinates are, for the message (e.g. ``"template"``).
    names
        Axis → the input's dimension name, for the message.

    Raises
    ------
    ValueError
        Where a coordinate differs from the model's by more than :data:`GRID_RTOL` of the
        model's spacing (plus :data:`COORD_EPS` of its magnitude), with both grids' first
        and last values and spacing, and the remedy (``check_grid=False``).
    """
    grid = spec.grid if spec is not None else None
    if grid is None:
        return
    for a in _ORIENTED_AXES:
        mine, theirs = coords.get(a), _spec_axis(grid, a)
        if mine is None or theirs is None or not np.isfinite(theirs).all():
            continue
        if mine.size == theirs.size:
            tol = _tolerance(theirs)
            with np.errstate(invalid="ignore"):
                if np.all(np.abs(mine - theirs) <= tol):
                    continue
        model_name = grid.y_name if a == "Y" else grid.x_name
        name = (names or {}).get(a, model_name)
        raise ValueError(
            f"{argument} grid differs from the model's: its {a} coordinate {name!r} runs "
            f"{_describe(mine)}, but the model was fitted on {model_name!r} running "
            f"{_describe(theirs)} (another region or resolution). Use data on the model's "
            "grid or on a contiguous sub-region of it, or pass check_grid=False to generate "
            "on this grid anyway (the model then treats it as its training grid)"
        )


def _tolerance(theirs: np.ndarray) -> float:
    """Largest difference from the model's coordinate ``theirs`` that counts as equal."""
    spacing = float(np.median(np.abs(np.diff(theirs)))) if theirs.size > 1 else 0.0
    return GRID_RTOL * spacing + COORD_EPS * float(np.abs(theirs).max(initial=0.0))


def _offset(mine: np.ndarray, theirs: np.ndarray) -> int | None:
    """First ``o`` with ``mine`` equal to ``theirs[o : o + len(mine)]`` (within
    :func:`_tolerance`), or None."""
    n, tol = mine.size, _tolerance(theirs)
    with np.errstate(invalid="ignore"):
        for o in np.flatnonzero(np.abs(theirs[: theirs.size - n + 1] - mine[0]) <= tol):
            if np.all(np.abs(theirs[o : o + n] - mine) <= tol):
                return int(o)
    return None


def locate_region(
    coords: Mapping[str, np.ndarray | None],
    spec: DataSpec | None,
    argument: str,
    *,
    shape: Sequence[int],
    grid: Sequence[int],
    names: Mapping[str, str] | None = None,
) -> tuple[slice, slice]:
    """Where an input's grid lies in the training grid: all of it, or a sub-region.

    An axis as long as the model's is checked as :func:`check_grid` does (its coordinate,
    where both sides have one, equal to the model's). A shorter axis must have a 1-D
    numeric coordinate equal (within :data:`GRID_RTOL` of the spacing plus
    :data:`COORD_EPS` of the magnitude) to a run of consecutive cells of the model's.

    Parameters
    ----------
    coords
        Axis (``"Y"``, ``"X"``) → the input's 1-D coordinate values in the model's
        orientation, or None where the input has none.
    spec
        The model's data spec (its recorded grid coordinates).
    argument
        What the coordinates are, for the message (e.g. ``"template"``).
    shape, grid
        ``(ny, nx)`` of the input and of the model's training grid.
    names
        Axis → the input's dimension name, for the message.

    Returns
    -------
    tuple of slice
        Rows and columns of the training grid the input covers (step 1).

    Raises
    ------
    ValueError
        For an axis longer than the model's, a shorter one without coordinates on either
        side (it cannot be located), coordinates that match no run of the model's, and
        (through :func:`check_grid`) a same-sized axis with other coordinates.
    """
    model_grid = spec.grid if spec is not None else None
    shape_, grid_ = tuple(int(v) for v in shape), tuple(int(v) for v in grid)
    head = f"{argument} grid {shape_} differs from the model's grid {grid_}"
    cuts = []
    for i, a in enumerate(_ORIENTED_AXES):
        n, big = shape_[i], grid_[i]
        model_name = (model_grid.y_name if a == "Y" else model_grid.x_name) if model_grid else a
        name = (names or {}).get(a, model_name)
        mine = coords.get(a)
        theirs = _spec_axis(model_grid, a) if model_grid is not None else None
        if theirs is not None and not np.isfinite(theirs).all():
            theirs = None
        if n == big:
            check_grid({a: mine}, spec, argument, names=names)
            cuts.append(slice(0, n))
            continue
        if n > big:
            raise ValueError(
                f"{head}: its {a} axis {name!r} has {n} cells, more than the model's {big}. "
                "Generate on the training grid or a contiguous sub-region of it (or use "
                "downscale() for coarser inputs)"
            )
        if mine is None or theirs is None:
            whose = (
                f"{argument} has no numeric 1-D coordinate {name!r}"
                if mine is None
                else f"the model recorded no coordinate {model_name!r}"
            )
            raise ValueError(
                f"{head}, and {whose} to locate it as a sub-region of the training grid. Use "
                f"a template on the training grid, or give {argument} the training grid's "
                "coordinates of the sub-region (or use downscale() for coarser inputs)"
            )
        o = _offset(mine, theirs)
        if o is None:
            raise ValueError(
                f"{head} and is not a sub-region of it: its {a} coordinate {name!r} runs "
                f"{_describe(mine)}, which matches no {n} consecutive cells of the model's "
                f"{model_name!r} running {_describe(theirs)}. Use data on the model's grid or "
                "on a contiguous sub-region of it (or downscale() for coarser inputs)"
            )
        cuts.append(slice(o, o + n))
    return cuts[0], cuts[1]
