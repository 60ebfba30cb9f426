"""Matplotlib figures of the diagnostics (Figs. 4.1–4.4 and 4.12 of Herbert (2023)) and of
the generating tasks.

matplotlib is an optional dependency (``pip install 'xdiffusion[plot]'``): it is imported
inside the functions, so ``import xdiffusion.plot`` works without it. Figures are built with
:class:`matplotlib.figure.Figure` (no pyplot state, safe on headless machines). Every
function takes ``ax=`` to draw into existing axes and returns the Figure.

Inputs are the outputs of :mod:`xdiffusion.diagnostics`: a DataArray, the Dataset of
:func:`~xdiffusion.diagnostics.evaluate` (sample and reference drawn together), or a
mapping ``{label: DataArray}`` to compare several models as in Herbert (2023)'s figures.

Maps (:func:`plot_fields`, :func:`plot_interpolation`, :func:`plot_forecast`,
:func:`plot_downscaling`) share one colour scale per figure (a power law for precipitation,
so drizzle is not coloured as dry), label their axes with the grid's coordinates (names and
units; latitude/longitude lines where the fields carry 2-D lat/lon), their colour bar with
the variable's long name and units, and their rows "observed", "truth" or "generated";
panels holding generated values in a conditional task are framed in red.

With cartopy installed (``pip install 'xdiffusion[maps]'``, optional), the maps and
:func:`plot_bias_map` are drawn in a map projection where the data are georeferenced (a CF
grid mapping such as rotated pole, or latitude/longitude coordinates), with labelled
latitude/longitude lines, and with coastlines where Natural Earth's files are already on
disk (``projection=``, ``coastlines=``; see :func:`plot_fields`). cartopy is imported only
when such a map is drawn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from xdiffusion.io.axes import find_axes

if TYPE_CHECKING:  # cartopy is optional and imported only where a map is drawn
    from cartopy.crs import Projection

__all__ = [
    "cf_projection",
    "plot_bias_map",
    "plot_downscaling",
    "plot_ensemble_scores",
    "plot_fields",
    "plot_forecast",
    "plot_histogram",
    "plot_interpolation",
    "plot_psd",
    "plot_qq",
    "plot_rank_histogram",
    "plot_report",
    "plot_scores",
]

_PAIR = ("sample", "reference")

#: Exponent of the colour scale of precipitation maps: a value v is coloured by
#: ((v - vmin) / (vmax - vmin)) ** PRECIPITATION_GAMMA, so drizzle (a few per cent of the
#: maximum) stands out from dry cells instead of sharing the first colour with them.
PRECIPITATION_GAMMA = 0.5
#: Precipitation maps leave cells ≤ 0 (dry) white and colour the rest with the colour map
#: from this fraction of its range on, so the lightest drizzle is visibly not dry.
WET_COLOUR_START = 0.15
#: Lower limit of a logarithmic colour scale (``norm="log"``), as a fraction of the upper.
LOG_FLOOR_FRACTION = 1e-3
#: Colour scales of the maps (``norm=``); ``"auto"`` is ``"power"`` for precipitation.
NORMS = ("auto", "linear", "power", "log")
#: Variable names taken for precipitation when ``standard_name`` does not say.
PRECIPITATION_NAMES = frozenset({"pr", "precip", "precipitation", "prate", "tp", "rain", "rr"})
#: Side of one map panel, inches.
PANEL_INCHES = 1.7
#: Width and height (inches) added to a map grid's panels for labels and the colour bar.
GRID_MARGIN_INCHES = (1.3, 1.0)
#: At most this many ticks along each axis of a map panel.
MAP_TICKS = 3
#: At most this many latitude (longitude) lines drawn from 2-D lat/lon coordinates.
GRATICULE_LINES = 4
#: Font size of titles, axis and tick labels in map grids (points).
SMALL_FONT = 7
#: Frame colour and width of the panels holding generated values.
GENERATED_COLOUR = "tab:red"
GENERATED_LINEWIDTH = 1.8
#: Log axes spanning fewer decades than this are labelled at 1, 2 and 5 times powers of 10.
LOG_LABEL_DECADES = 2.0
#: The rank histogram's y axis reaches this multiple of its tallest bar (legend room).
RANK_HEADROOM = 1.3
#: Columns of :func:`plot_report` and the size of one of its panels (inches).
REPORT_COLUMNS = 3
REPORT_PANEL = (4.4, 3.6)
#: The dimensionless summaries of evaluate() drawn by :func:`plot_scores`.
SCORE_LABELS = {
    "psd_log_error": "spatial PSD\n|log10 ratio|",
    "temporal_psd_log_error": "temporal PSD\n|log10 ratio|",
    "qq_relative_error": "quantiles\n|relative error|",
    "mean_abs_mean_normalised_bias": "mean |bias| / mean",
}
#: The scores against observations drawn by :func:`plot_ensemble_scores` (data units).
ENSEMBLE_LABELS = {
    "crps": "CRPS",
    "crps_fair": "fair CRPS",
    "ensemble_spread": "spread",
    "ensemble_mean_rmse": "RMSE of the mean",
}
_DEGREES = {
    "degrees_north": "°N",
    "degree_north": "°N",
    "degrees_east": "°E",
    "degree_east": "°E",
    "degrees": "°",
    "degree": "°",
}


def _new_axes(ax: Any, figsize: tuple[float, float]) -> tuple[Any, Any]:
    if ax is not None:
        return ax.get_figure(), ax
    try:
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "xdiffusion.plot needs matplotlib; install it with pip install 'xdiffusion[plot]'"
        ) from err
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _series(obj: Any, stem: str, argument: str) -> list[tuple[str, xr.DataArray]]:
    """(label, DataArray) pairs from a DataArray, an evaluate() Dataset or a mapping."""
    if isinstance(obj, xr.DataArray):
        return [(str(obj.name or stem), obj)]
    if isinstance(obj, xr.Dataset):
        found = [(k, obj[f"{stem}_{k}"]) for k in _PAIR if f"{stem}_{k}" in obj]
        if not found:
            raise ValueError(
                f"{argument}= has no variables {stem}_sample / {stem}_reference; pass the "
                "Dataset of xdiffusion.diagnostics.evaluate or a DataArray"
            )
        return found
    if isinstance(obj, Mapping):
        out = []
        for label, da in obj.items():
            if not isinstance(da, xr.DataArray):
                raise TypeError(f"{argument}= mapping values must be DataArrays ({label!r})")
            out.append((str(label), da))
        return out
    raise TypeError(
        f"{argument}= must be a DataArray, an evaluate() Dataset or a mapping of "
        f"label -> DataArray, got {type(obj).__name__}"
    )


def _label(da: xr.DataArray, fallback: str) -> str:
    text = str(da.attrs.get("long_name") or da.name or fallback)
    units = da.attrs.get("units")
    return f"{text} [{units}]" if units not in (None, "", "1") else text


def _finish(fig: Any, path: str | PathLike | None, dpi: float | None = None) -> Any:
    if path is not None:
        fig.savefig(path, dpi=dpi)
    return fig


def plot_histogram(
    obj: xr.DataArray | xr.Dataset | Mapping[str, xr.DataArray],
    *,
    low_end: bool = False,
    log: bool = True,
    ax: Any = None,
) -> Any:
    """Frequency density of values (Fig. 4.2): outputs of ``diagnostics.histogram``.

    Parameters
    ----------
    obj
        A histogram DataArray, a mapping of them, or an evaluate() Dataset.
    low_end
        With a Dataset, draw the low-end histograms (``histogram_low_*``).
    log
        Logarithmic density axis, as in Herbert (2023). log10 densities are drawn as densities.
    ax
        Axes to draw into; default a new Figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, ax = _new_axes(ax, (6, 4))
    series = _series(obj, "histogram_low" if low_end else "histogram", "obj")
    for label, da in series:
        if da.ndim != 1:
            raise ValueError(f"histogram {label!r} must be 1-D, got dims {da.dims}")
        dim = da.dims[0]
        values = np.asarray(da.values, dtype=float)
        if str(da.attrs.get("long_name", "")).startswith("log10"):
            values = 10.0**values
        lower, upper = f"{dim}_lower", f"{dim}_upper"
        if lower in da.coords and upper in da.coords:
            edges = np.append(da[lower].values, da[upper].values[-1])
            ax.stairs(np.nan_to_num(values, nan=0.0), edges, label=label)
        else:
            ax.plot(da[dim].values, values, label=label)
    da0 = series[0][1]
    dim0 = da0.dims[0]
    ax.set_xlabel(_label(da0[dim0], "value").replace(" (bin centre)", ""))
    units = da0.attrs.get("units")
    ax.set_ylabel("frequency density" + (f" [{units}]" if units not in (None, "1", "") else ""))
    if log:
        ax.set_yscale("log")
    ax.legend()
    return fig


def plot_psd(
    obj: xr.DataArray | xr.Dataset | Mapping[str, xr.DataArray],
    *,
    kind: str = "spatial",
    ax: Any = None,
) -> Any:
    """Power spectral densities on log-log axes (Fig. 4.3).

    Parameters
    ----------
    obj
        Output(s) of ``diagnostics.spatial_psd`` / ``temporal_psd``, or an evaluate()
        Dataset.
    kind
        ``"spatial"`` or ``"temporal"``: which PSDs of a Dataset to draw.
    ax
        Axes to draw into; default a new Figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if kind not in ("spatial", "temporal"):
        raise ValueError(f"kind={kind!r} must be 'spatial' or 'temporal'")
    fig, ax = _new_axes(ax, (6, 4))
    series = _series(obj, f"{kind}_psd", "obj")
    for label, da in series:
        if da.ndim != 1:
            raise ValueError(f"PSD {label!r} must be 1-D, got dims {da.dims}")
        ax.loglog(da[da.dims[0]].values, da.values, label=label)
    _tidy_log_axis(ax.xaxis, np.concatenate([np.ravel(d[d.dims[0]].values) for _, d in series]))
    _tidy_log_axis(ax.yaxis, np.concatenate([np.ravel(d.values) for _, d in series]))
    da0 = series[0][1]
    ax.set_xlabel(_label(da0[da0.dims[0]], str(da0.dims[0])))
    units = da0.attrs.get("units")
    spatial = da0.dims[0] == "wavenumber"
    ax.set_ylabel(
        ("P(k)" if spatial else "P(f)") + (f" [{units}]" if units not in (None, "", "1") else "")
    )
    ax.set_title(f"{'spatial' if spatial else 'temporal'} PSD")
    ax.legend()
    return fig


def plot_qq(
    obj: xr.Dataset | Mapping[str, xr.Dataset],
    *,
    log: bool = False,
    ax: Any = None,
) -> Any:
    """Quantile-quantile plot, reference against samples (Fig. 4.4).

    Parameters
    ----------
    obj
        The Dataset of ``diagnostics.qq`` or of ``evaluate``, or ``{label: qq Dataset}``.
    log
        Logarithmic axes.
    ax
        Axes to draw into; default a new Figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, ax = _new_axes(ax, (5, 5))
    if isinstance(obj, xr.Dataset):
        obj = {"samples": obj}
    if not isinstance(obj, Mapping) or not obj:
        raise TypeError(f"obj= must be a qq()/evaluate() Dataset, got {type(obj).__name__}")
    lo, hi = np.inf, -np.inf
    for label, ds in obj.items():
        names = ("qq_sample", "qq_reference") if "qq_sample" in ds else ("sample", "reference")
        if not all(n in ds for n in names):
            raise ValueError(f"obj[{label!r}] has no sample/reference quantiles")
        sample, ref = ds[names[0]], ds[names[1]]
        ax.scatter(ref.values, sample.values, marker="x", s=12, linewidth=0.8, label=label)
        both = np.concatenate([np.ravel(ref.values), np.ravel(sample.values)])
        both = both[np.isfinite(both) & ((both > 0) if log else True)]
        if both.size:
            lo, hi = min(lo, both.min()), max(hi, both.max())
    if np.isfinite(lo):
        ax.plot([lo, hi], [lo, hi], linestyle=":", color="black", linewidth=0.8, label="ideal")
    if log:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel(f"reference {_label(ref, 'quantile')}".replace("quantile of reference ", ""))
    ax.set_ylabel(f"sample {_label(sample, 'quantile')}".replace("quantile of sample ", ""))
    ax.set_title("quantile-quantile")
    ax.legend()
    return fig


def _grid_coords(da: xr.DataArray, ydim: str, xdim: str) -> tuple[np.ndarray, np.ndarray]:
    y = da[ydim].values if ydim in da.coords else np.arange(da.sizes[ydim])
    x = da[xdim].values if xdim in da.coords else np.arange(da.sizes[xdim])
    return np.asarray(y), np.asarray(x)


def _tidy_log_axis(axis: Any, values: np.ndarray) -> None:
    """Readable ticks on a logarithmic axis: no labelled minor ticks that overlap.

    Over two decades or more only the powers of ten are labelled; over less, 1, 2 and 5
    times them (plain numbers), so a short axis still has a few labels.
    """
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    positive = values[np.isfinite(values) & (values > 0)]
    if positive.size < 2:
        return
    decades = float(np.log10(positive.max() / positive.min()))
    if decades < LOG_LABEL_DECADES:
        axis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


# --------------------------------------------------------------------------- map grids


def _is_precipitation(da: xr.DataArray) -> bool:
    standard = str(da.attrs.get("standard_name", "")).lower()
    return (
        "precipitation" in standard
        or "rainfall" in standard
        or str(da.name).lower() in PRECIPITATION_NAMES
    )


def _is_generated(da: xr.DataArray) -> bool:
    """Whether ``da`` is an output of a generating method (they record ``sampling``)."""
    return "sampling" in da.attrs


def _axis_label(da: xr.DataArray, dim: str) -> str:
    """``"x [km]"``, ``"lat [°N]"``: the coordinate's name and units, short for small panels."""
    if dim not in da.coords:
        return f"{dim} (index)"
    units = str(da[dim].attrs.get("units", ""))
    units = _DEGREES.get(units, units)
    return f"{dim} [{units}]" if units not in ("", "1") else str(dim)


def _colour_norm(norm: str, values: np.ndarray, vmax: float | None, precipitation: bool) -> Any:
    """The colour normalisation of a map grid: one scale for every panel."""
    from matplotlib import colors

    if norm not in NORMS:
        raise ValueError(f"norm={norm!r} must be one of {', '.join(map(repr, NORMS))}")
    kind = ("power" if precipitation else "linear") if norm == "auto" else norm
    finite = values[np.isfinite(values)]
    lo = float(finite.min()) if finite.size else 0.0
    hi = float(vmax) if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    if kind == "log":
        if not hi > 0:
            raise ValueError("norm='log' needs positive values (or a positive vmax=)")
        # values ≤ 0 are masked: dry cells stay white, drizzle gets a colour
        return colors.LogNorm(vmin=hi * LOG_FLOOR_FRACTION, vmax=hi)
    if not hi > lo:
        hi = lo + 1.0
    if kind == "power":
        return colors.PowerNorm(PRECIPITATION_GAMMA, vmin=lo, vmax=hi)
    return colors.Normalize(vmin=lo, vmax=hi)


def _geo_coords(da: xr.DataArray, ydim: str, xdim: str) -> list[tuple[xr.DataArray, str]]:
    """2-D latitude / longitude coordinates of ``da`` on (Y, X), with their suffix."""
    found = []
    for coord in da.coords.values():
        if coord.ndim != 2 or set(coord.dims) != {ydim, xdim}:
            continue
        standard = str(coord.attrs.get("standard_name", ""))
        units = str(coord.attrs.get("units", ""))
        if standard == "latitude" or units in ("degrees_north", "degree_north"):
            found.append((coord, "°N"))
        elif standard == "longitude" or units in ("degrees_east", "degree_east"):
            found.append((coord, "°E"))
    return found


def _graticule(ax: Any, da: xr.DataArray, ydim: str, xdim: str) -> None:
    """Labelled latitude and longitude lines from 2-D coordinates (no cartopy needed)."""
    from matplotlib.ticker import MaxNLocator

    y, x = _grid_coords(da, ydim, xdim)
    for coord, suffix in _geo_coords(da, ydim, xdim):
        values = np.asarray(coord.transpose(ydim, xdim).values, dtype=float)
        if not np.isfinite(values).any() or np.nanmax(values) <= np.nanmin(values):
            continue
        levels = MaxNLocator(GRATICULE_LINES).tick_values(np.nanmin(values), np.nanmax(values))
        lines = ax.contour(x, y, values, levels=levels, colors="0.35", linewidths=0.5)
        ax.clabel(lines, fontsize=SMALL_FONT - 2, fmt=lambda v, s=suffix: f"{v:g}{s}")


# --------------------------------------------------------------------------- map projections
# cartopy is optional ("pip install 'xdiffusion[maps]'") and imported only when a map is drawn.

#: ``GeoAxes.name`` of cartopy's map axes (recognised without importing cartopy).
_GEOAXES_NAME = "cartopy.geoaxes"
#: Natural Earth coastline resolutions, in the order tried for a map spanning up to 15°,
#: up to 60° and more (finest first on small domains).
COASTLINE_RESOLUTIONS = {
    15.0: ("10m", "50m", "110m"),
    60.0: ("50m", "110m", "10m"),
    np.inf: ("110m", "50m", "10m"),
}
#: Domains of 2-D latitude/longitude without a grid mapping smaller than this (degrees of
#: longitude, latitude) are drawn on a Lambert azimuthal equal-area map centred on them;
#: larger ones on an equirectangular (Plate Carrée) map.
REGIONAL_SPAN = (120.0, 60.0)
#: Grid mappings (CF ``grid_mapping_name``) turned into a cartopy projection.
CF_GRID_MAPPINGS = (
    "rotated_latitude_longitude",
    "latitude_longitude",
    "lambert_conformal_conic",
    "polar_stereographic",
    "stereographic",
    "transverse_mercator",
    "lambert_azimuthal_equal_area",
    "albers_conical_equal_area",
    "mercator",
    "orthographic",
)
_CARTOPY_MISSING = (
    "maps in a projection need cartopy; install it with pip install 'xdiffusion[maps]' "
    "(or pip install cartopy), or pass projection=None for plain axes"
)


@dataclass(frozen=True)
class _Georef:
    """Where a (Y, X) field lies: the cartopy CRS its cell coordinates ``x``, ``y`` (1-D or
    2-D, as pcolormesh takes them) are in, whether that came from a CF grid mapping, and the
    factor to metres of the grid's projection coordinates (1 for degrees)."""

    crs: Any
    x: np.ndarray
    y: np.ndarray
    mapped: bool
    scale: tuple[float, float] = (1.0, 1.0)


@dataclass(frozen=True)
class _Maps:
    """How the maps of a figure are drawn with cartopy: the module ``cartopy.crs``, the
    projection of new axes, the georeference of the first field (for fields that carry
    none) and the coastline rule."""

    ccrs: Any
    projection: Any
    reference: _Georef
    coastlines: bool | None


def _cartopy(required: bool) -> Any | None:
    """``cartopy.crs``, or None when cartopy is missing (ImportError if ``required``)."""
    try:
        import cartopy.crs as ccrs
    except ImportError as err:
        if required:
            raise ImportError(_CARTOPY_MISSING) from err
        return None
    return ccrs


def _is_geoaxes(ax: Any) -> bool:
    return getattr(ax, "name", None) == _GEOAXES_NAME


def _grid_mapping(da: xr.DataArray) -> Mapping[str, Any] | None:
    """The attributes of the CF grid-mapping variable ``da`` carries as a coordinate.

    Found by ``da``'s ``grid_mapping`` attribute (or encoding, where ``xr.open_dataset(...,
    decode_coords="all")`` moves it), else as any scalar coordinate with a
    ``grid_mapping_name``.
    """
    from xdiffusion.io.cf import referenced

    names: list[str] = []
    for source in (da.attrs, da.encoding):
        if source.get("grid_mapping"):
            names += referenced("grid_mapping", source["grid_mapping"])
    for name in names:
        if name in da.coords and "grid_mapping_name" in da[name].attrs:
            return da[name].attrs
    for coord in da.coords.values():
        if coord.ndim == 0 and "grid_mapping_name" in coord.attrs:
            return coord.attrs
    return None


def _globe(attrs: Mapping[str, Any], ccrs: Any) -> Any | None:
    """The cartopy Globe of a grid mapping's ``earth_radius`` / ``semi_major_axis``."""
    if attrs.get("earth_radius") is not None:
        radius = float(np.ravel(attrs["earth_radius"])[0])
        return ccrs.Globe(ellipse=None, semimajor_axis=radius, semiminor_axis=radius)
    if attrs.get("semi_major_axis") is None:
        return None  # cartopy's default, WGS84
    major = float(np.ravel(attrs["semi_major_axis"])[0])
    flattening = attrs.get("inverse_flattening")
    if flattening is not None and float(np.ravel(flattening)[0]) != 0.0:
        return ccrs.Globe(
            ellipse=None,
            semimajor_axis=major,
            inverse_flattening=float(np.ravel(flattening)[0]),
        )
    minor = attrs.get("semi_minor_axis", major)
    return ccrs.Globe(ellipse=None, semimajor_axis=major, semiminor_axis=float(np.ravel(minor)[0]))


def cf_projection(attrs: Mapping[str, Any]) -> Any | None:
    """The cartopy projection of a CF grid mapping, or None if it is not one of
    :data:`CF_GRID_MAPPINGS` (or its parameters are incomplete).

    Parameters
    ----------
    attrs
        Attributes of the grid-mapping variable (``grid_mapping_name`` and its parameters,
        CF §5.6 and Appendix F), e.g. ``ds["rotated_pole"].attrs``.

    Returns
    -------
    cartopy.crs.Projection or None
        For example ``rotated_latitude_longitude`` gives
        ``RotatedPole(pole_longitude=grid_north_pole_longitude,
        pole_latitude=grid_north_pole_latitude,
        central_rotated_longitude=north_pole_grid_longitude)``.

    Raises
    ------
    ImportError
        If cartopy is not installed.
    """
    ccrs = _cartopy(required=True)
    name = str(attrs.get("grid_mapping_name", ""))

    def num(key: str, default: float | None = 0.0) -> float | None:
        value = attrs.get(key)
        return default if value is None else float(np.ravel(value)[0])

    def parallels() -> tuple[float, ...]:
        return tuple(float(v) for v in np.ravel(attrs["standard_parallel"]))

    globe = _globe(attrs, ccrs)
    false = {"false_easting": num("false_easting"), "false_northing": num("false_northing")}
    try:
        if name == "rotated_latitude_longitude":
            return ccrs.RotatedPole(
                pole_longitude=num("grid_north_pole_longitude", None),
                pole_latitude=num("grid_north_pole_latitude", None),
                central_rotated_longitude=num("north_pole_grid_longitude"),
                globe=globe,
            )
        if name == "latitude_longitude":
            return ccrs.PlateCarree(globe=globe)
        if name == "lambert_conformal_conic":
            standard = parallels()
            return ccrs.LambertConformal(
                central_longitude=num("longitude_of_central_meridian"),
                central_latitude=num("latitude_of_projection_origin"),
                standard_parallels=standard,
                globe=globe,
                # cut the cone off on the side away from its pole
                cutoff=-30 if max(standard, key=abs) > 0 else 30,
                **false,
            )
        if name in ("polar_stereographic", "stereographic"):
            polar = name == "polar_stereographic"
            true_scale = num("standard_parallel", None) if polar else None
            return ccrs.Stereographic(
                central_latitude=num("latitude_of_projection_origin"),
                central_longitude=num(
                    "straight_vertical_longitude_from_pole"
                    if polar
                    else "longitude_of_projection_origin"
                ),
                true_scale_latitude=true_scale,
                scale_factor=(
                    num("scale_factor_at_projection_origin", None) if true_scale is None else None
                ),
                globe=globe,
                **false,
            )
        if name == "transverse_mercator":
            return ccrs.TransverseMercator(
                central_longitude=num("longitude_of_central_meridian"),
                central_latitude=num("latitude_of_projection_origin"),
                scale_factor=num("scale_factor_at_central_meridian", 1.0),
                globe=globe,
                approx=False,
                **false,
            )
        if name == "lambert_azimuthal_equal_area":
            return ccrs.LambertAzimuthalEqualArea(
                central_longitude=num("longitude_of_projection_origin"),
                central_latitude=num("latitude_of_projection_origin"),
                globe=globe,
                **false,
            )
        if name == "albers_conical_equal_area":
            return ccrs.AlbersEqualArea(
                central_longitude=num("longitude_of_central_meridian"),
                central_latitude=num("latitude_of_projection_origin"),
                standard_parallels=parallels(),
                globe=globe,
                **false,
            )
        if name == "mercator":
            true_scale = num("standard_parallel", None)
            return ccrs.Mercator(
                central_longitude=num("longitude_of_projection_origin"),
                latitude_true_scale=true_scale,
                scale_factor=(
                    num("scale_factor_at_projection_origin", None) if true_scale is None else None
                ),
                globe=globe,
                **false,
            )
        if name == "orthographic":
            return ccrs.Orthographic(
                central_longitude=num("longitude_of_projection_origin"),
                central_latitude=num("latitude_of_projection_origin"),
                globe=globe,
            )
    except (KeyError, TypeError, ValueError):
        return None
    return None


def _is_geographic(coord: xr.DataArray, which: str) -> bool:
    """Whether ``coord`` is a latitude (``which="lat"``) or longitude coordinate."""
    standard = str(coord.attrs.get("standard_name", ""))
    units = str(coord.attrs.get("units", ""))
    name = str(coord.name).lower()
    if which == "lat":
        return (
            standard == "latitude"
            or units in ("degrees_north", "degree_north")
            or (name in ("lat", "latitude") and not standard and units in ("", "degrees", "degree"))
        )
    return (
        standard == "longitude"
        or units in ("degrees_east", "degree_east")
        or (name in ("lon", "longitude") and not standard and units in ("", "degrees", "degree"))
    )


def _continuous_longitude(lon: np.ndarray) -> np.ndarray:
    """Longitudes without a jump of 360° inside the domain (around its middle cell)."""
    lon = np.asarray(lon, dtype=float)
    finite = lon[np.isfinite(lon)]
    if not finite.size:
        return lon
    centre = float(np.ravel(lon)[lon.size // 2])
    centre = centre if np.isfinite(centre) else float(finite[0])
    return centre + (lon - centre + 180.0) % 360.0 - 180.0


def _georef(da: xr.DataArray, ydim: str, xdim: str, ccrs: Any) -> _Georef | None:
    """Where ``da`` lies on the Earth: its CF grid mapping (with the grid's 1-D coordinates),
    else its 2-D latitude/longitude, else 1-D latitude/longitude axes; None if none."""
    gm = _grid_mapping(da)
    axes_1d = all(d in da.coords and da[d].ndim == 1 for d in (ydim, xdim))
    if gm is not None and axes_1d:
        crs = cf_projection(gm)
        if crs is not None:
            x = np.asarray(da[xdim].values, dtype=float)
            y = np.asarray(da[ydim].values, dtype=float)
            name = gm.get("grid_mapping_name")
            if name == "latitude_longitude":
                return _Georef(crs, _continuous_longitude(x), y, True)
            if name == "rotated_latitude_longitude":
                return _Georef(crs, x, y, True)
            from xdiffusion.io.grids import _scale_to_metres

            sx, sy = _scale_to_metres(da[xdim].attrs), _scale_to_metres(da[ydim].attrs)
            if sx is not None and sy is not None:
                return _Georef(crs, x * sx, y * sy, True, (sx, sy))
    found = {suffix: coord for coord, suffix in _geo_coords(da, ydim, xdim)}
    if "°N" in found and "°E" in found:
        lat = np.asarray(found["°N"].transpose(ydim, xdim).values, dtype=float)
        lon = np.asarray(found["°E"].transpose(ydim, xdim).values, dtype=float)
        return _Georef(ccrs.PlateCarree(), _continuous_longitude(lon), lat, False)
    if axes_1d and _is_geographic(da[ydim], "lat") and _is_geographic(da[xdim], "lon"):
        x = _continuous_longitude(np.asarray(da[xdim].values, dtype=float))
        return _Georef(ccrs.PlateCarree(), x, np.asarray(da[ydim].values, dtype=float), False)
    return None


def _frame_georef(frame: xr.DataArray, ydim: str, xdim: str, maps: _Maps) -> _Georef:
    """The georeference of one field; one carrying none is taken to share the grid mapping of
    the figure's first field (e.g. a coarse input without its grid-mapping variable)."""
    found = _georef(frame, ydim, xdim, maps.ccrs)
    if found is not None:
        return found
    ref = maps.reference
    y, x = _grid_coords(frame, ydim, xdim)
    if not ref.mapped:
        raise ValueError(
            "a field has no grid mapping and no latitude/longitude coordinates to place it on "
            "the map; pass projection=None"
        )
    return _Georef(
        ref.crs,
        np.asarray(x, dtype=float) * ref.scale[0],
        np.asarray(y, dtype=float) * ref.scale[1],
        True,
        ref.scale,
    )


def _default_projection(ref: _Georef, ccrs: Any) -> Any:
    """The projection new map axes get: the grid mapping's own (a rotated-pole or projected
    grid stays rectangular), else Plate Carrée for a latitude-longitude grid, else a
    Lambert azimuthal equal-area map centred on a regional curvilinear grid."""
    if ref.mapped and not isinstance(ref.crs, ccrs.PlateCarree):
        return ref.crs
    lon, lat = np.asarray(ref.x, dtype=float), np.asarray(ref.y, dtype=float)
    if not (np.isfinite(lon).any() and np.isfinite(lat).any()):
        return ccrs.PlateCarree()
    lon0, lon1 = float(np.nanmin(lon)), float(np.nanmax(lon))
    lat0, lat1 = float(np.nanmin(lat)), float(np.nanmax(lat))
    centre = round((lon0 + lon1) / 2.0)
    regional = lon1 - lon0 < REGIONAL_SPAN[0] and lat1 - lat0 < REGIONAL_SPAN[1]
    if lon.ndim == 2 and regional:
        return ccrs.LambertAzimuthalEqualArea(
            central_longitude=(lon0 + lon1) / 2.0, central_latitude=(lat0 + lat1) / 2.0
        )
    return ccrs.PlateCarree(central_longitude=centre)


def _resolve_maps(
    projection: Any,
    coastlines: bool | None,
    fields: Sequence[xr.DataArray],
    ydim: str,
    xdim: str,
    axes: Sequence[Any] | None,
) -> _Maps | None:
    """How a figure's maps are drawn: with cartopy (a :class:`_Maps`) or on plain axes
    (None), from ``projection=`` (see :func:`plot_fields`), the data and any given axes."""
    if projection is None or projection is False:
        return None
    if isinstance(projection, str) and projection != "auto":
        raise ValueError(
            f"projection={projection!r} must be 'auto', True, None/False or a cartopy "
            "projection (e.g. cartopy.crs.Robinson())"
        )
    explicit = not isinstance(projection, str)  # True or a cartopy projection
    if coastlines not in (None, True, False):
        raise ValueError(f"coastlines={coastlines!r} must be None, True or False")
    given_geo = axes is not None and all(_is_geoaxes(a) for a in axes)
    if axes is not None and not given_geo:
        if explicit:
            raise ValueError(
                "ax= are plain matplotlib axes; create them with a cartopy projection "
                "(subplot_kw={'projection': ...}) or pass projection=None"
            )
        return None  # "auto" follows the axes given
    ccrs = _cartopy(required=explicit or given_geo)
    if ccrs is None:
        return None
    if explicit and projection is not True and not isinstance(projection, ccrs.Projection):
        raise TypeError(
            f"projection= must be a cartopy.crs.Projection, got {type(projection).__name__}"
        )
    every = [_georef(f, ydim, xdim, ccrs) for f in fields]
    refs = [r for r in every if r is not None]
    ref = next((r for r in refs if r.mapped), refs[0] if refs else None)
    # a field without a georeference is drawn on the grid mapping of the others, if any
    if ref is None or (len(refs) < len(every) and not ref.mapped):
        if explicit or given_geo:
            raise ValueError(
                f"{'some of ' if refs else ''}the fields have no CF grid mapping (as a "
                "coordinate named by their grid_mapping attribute) and no latitude/longitude "
                "coordinates to place them on a map; pass projection=None"
            )
        return None
    if given_geo:
        target = None  # the axes' own projection
    elif explicit and projection is not True:
        target = projection
    else:
        target = _default_projection(ref, ccrs)
    return _Maps(ccrs, target, ref, coastlines)


def _coastline_on_disk(resolution: str) -> bool:
    """Whether the Natural Earth coastline of ``resolution`` is on disk where cartopy looks
    first (``cartopy.config["pre_existing_data_dir"]``, then ``["data_dir"]``), so drawing
    it downloads nothing."""
    import cartopy
    from cartopy.io import Downloader

    try:
        downloader = Downloader.from_config(
            ("shapefiles", "natural_earth", resolution, "physical", "coastline")
        )
    except ValueError:  # pragma: no cover - a cartopy configured without Natural Earth
        return False
    where = {
        "config": cartopy.config,
        "category": "physical",
        "name": "coastline",
        "resolution": resolution,
    }
    paths = (downloader.pre_downloaded_path(where), downloader.target_path(where))
    return any(p is not None and Path(p).is_file() for p in paths)


def _draw_coastlines(ax: Any, maps: _Maps) -> None:
    """Coastlines on map axes: always (``True``; cartopy may download them), never
    (``False``), or (``None``) only from a Natural Earth file already on disk."""
    if maps.coastlines is False:
        return
    lon0, lon1, lat0, lat1 = ax.get_extent(maps.ccrs.PlateCarree())
    span = max(lon1 - lon0, lat1 - lat0)
    order = next(v for k, v in COASTLINE_RESOLUTIONS.items() if span <= k)
    if maps.coastlines:
        resolution = order[0]
    else:
        resolution = next((r for r in order if _coastline_on_disk(r)), None)
        if resolution is None:
            return
    ax.coastlines(resolution=resolution, linewidth=0.6, color="0.15")


def _geo_mesh(
    ax: Any, frame: xr.DataArray, field: np.ndarray, ydim: str, xdim: str, maps: _Maps, **kw: Any
) -> Any:
    """pcolormesh of one (Y, X) field on map axes, from the field's own coordinates."""
    ref = _frame_georef(frame, ydim, xdim, maps)
    return ax.pcolormesh(ref.x, ref.y, field, transform=ref.crs, shading="auto", **kw)


def _decorate_map(
    ax: Any, maps: _Maps, *, left: bool, bottom: bool, fontsize: float | None = SMALL_FONT - 1
) -> Any:
    """Labelled latitude/longitude lines (labels on the ``left`` and ``bottom`` sides asked
    for, in ``fontsize`` points, None: matplotlib's) and coastlines; returns the Gridliner."""
    from cartopy.mpl.ticker import LatitudeLocator, LongitudeLocator

    sides = {side: xy for side, xy, on in (("left", "y", left), ("bottom", "x", bottom)) if on}
    style = {} if fontsize is None else {"size": fontsize}
    grid = ax.gridlines(
        draw_labels=sides or False,
        x_inline=False,
        y_inline=False,
        rotate_labels=False,
        linewidth=0.5,
        color="0.35",
        alpha=0.8,
        linestyle="--",
        xlabel_style=style,
        ylabel_style=style,
        xpadding=2,
        ypadding=2,
    )
    grid.xlocator = LongitudeLocator(nbins=GRATICULE_LINES)
    grid.ylocator = LatitudeLocator(nbins=GRATICULE_LINES)
    _draw_coastlines(ax, maps)
    return grid


def _row_label(ax: Any, text: str, grid: Any) -> None:
    """A row's label left of map axes, beyond the latitude labels of ``grid``."""
    from matplotlib.transforms import Bbox

    def beside(renderer: Any) -> Any:
        boxes = [ax.get_window_extent(renderer)]
        grid.get_tightbbox(renderer)  # places the labels
        boxes += [
            t.get_window_extent(renderer)
            for t in grid.left_label_artists
            if t.get_visible() and t.get_text()
        ]
        return Bbox.union(boxes)

    ax.annotate(
        text,
        xy=(0.0, 0.5),
        xycoords=beside,
        xytext=(-2.0, 0.0),
        textcoords="offset points",
        rotation=90,
        ha="right",
        va="center",
        fontsize=SMALL_FONT,
    )


def _time_text(value: Any) -> str:
    """A short time label: ``"01-03 05:00"`` (month-day hour:minute)."""
    if isinstance(value, np.datetime64):
        return np.datetime_as_string(value, unit="m")[5:].replace("T", " ")
    if hasattr(value, "strftime"):  # cftime and datetime
        return value.strftime("%m-%d %H:%M")
    return str(value)


def _lead_text(value: Any, start: Any, k: int) -> str:
    """The lead of a forecast frame: ``"+3 h"`` from the last observed time, else ``"+3"``."""
    try:
        delta = value - start
        hours = (
            delta / np.timedelta64(1, "h")
            if isinstance(delta, np.timedelta64)
            else delta.total_seconds() / 3600.0
        )
        return f"+{float(hours):g} h"
    except (TypeError, AttributeError, ValueError):
        return f"+{k}"


@dataclass(frozen=True)
class _Row:
    """One row of a map grid: a label, one (Y, X) field per column (None: no panel), and
    whether each was generated (framed in :data:`GENERATED_COLOUR`)."""

    label: str
    frames: tuple[xr.DataArray | None, ...]
    generated: tuple[bool, ...]


def _frames(da: xr.DataArray, tdim: str | None, count: int) -> tuple[xr.DataArray, ...]:
    if tdim is None or tdim not in da.dims:
        return (da,)
    return tuple(da.isel({tdim: j}) for j in range(count))


def _aligned(
    other: xr.DataArray,
    target: xr.DataArray,
    axes: Mapping[str, str],
    dims: Mapping[str, str] | None,
    member_dim: str,
    argument: str,
) -> tuple[xr.DataArray | None, ...]:
    """The (Y, X) fields of ``other`` at the time steps of ``target``: by time label where
    the two share time stamps, else by position (None where ``other`` has none)."""
    if not isinstance(other, xr.DataArray):
        raise TypeError(f"{argument}= must be a DataArray, got {type(other).__name__}")
    if member_dim in other.dims:
        raise ValueError(
            f"{argument}= must have no {member_dim!r} dimension; select one member, e.g. "
            f"{argument}.isel({member_dim}=0)"
        )
    found = find_axes(other, dims, require_time=False)
    other = other.rename({found[k]: axes[k] for k in found if k in axes and found[k] != axes[k]})
    extra = set(other.dims) - {axes.get("T"), axes["Y"], axes["X"]}
    if extra:
        raise ValueError(f"{argument}= has extra dimensions {sorted(map(str, extra))}; select them")
    tdim = axes.get("T")
    if tdim is None or tdim not in target.dims:
        return (
            (other.isel({tdim: 0}) if tdim is not None and tdim in other.dims else other).compute(),
        )
    if tdim not in other.dims:
        raise ValueError(f"{argument}= has no time dimension {tdim!r}")
    n = other.sizes[tdim]
    positions: list[int | None] = [j if j < n else None for j in range(target.sizes[tdim])]
    if tdim in other.indexes and tdim in target.indexes:
        index = other.indexes[tdim]
        found_at = [index.get_loc(t) if t in index else None for t in target.indexes[tdim]]
        if any(isinstance(p, int | np.integer) for p in found_at):
            positions = [int(p) if isinstance(p, int | np.integer) else None for p in found_at]
    # only the frames drawn are read (and computed, for dask input), once
    wanted = [p for p in positions if p is not None]
    frames = iter(_frames(other.isel({tdim: wanted}).compute(), tdim, len(wanted)))
    return tuple(next(frames) if p is not None else None for p in positions)


def _map_grid(
    rows: Sequence[_Row],
    titles: Sequence[str],
    *,
    ydim: str,
    xdim: str,
    label: str,
    precipitation: bool,
    norm: str,
    vmax: float | None,
    cmap: str,
    title: str | None,
    ax: Sequence[Any] | np.ndarray | None,
    projection: Any = "auto",
    coastlines: bool | None = None,
) -> Any:
    """Rows × columns of maps on one colour scale, labelled with the grid's coordinates
    (on cartopy map axes where ``projection`` asks for them and the data allow)."""
    from matplotlib.ticker import MaxNLocator

    nrows, ncols = len(rows), len(titles)
    fields = [f for row in rows for f in row.frames if f is not None]
    given = None if ax is None else np.asarray(ax, dtype=object).reshape(-1)
    if given is not None and given.size < nrows * ncols:
        raise ValueError(f"ax= has {given.size} axes; {nrows} x {ncols} are needed")
    maps = _resolve_maps(
        projection,
        coastlines,
        fields,
        ydim,
        xdim,
        None if given is None else list(given[: nrows * ncols]),
    )
    if given is None:
        from matplotlib.figure import Figure

        # room for the titles, tick and axis labels around the square panels
        height = PANEL_INCHES * nrows + GRID_MARGIN_INCHES[1] + (0.3 if title else 0.0)
        width = PANEL_INCHES * ncols + GRID_MARGIN_INCHES[0]
        fig = Figure(figsize=(width, height), layout="constrained")
        kw = {} if maps is None else {"subplot_kw": {"projection": maps.projection}}
        grid = np.asarray(fig.subplots(nrows, ncols, squeeze=False, **kw)).reshape(-1)
    else:
        grid = given
        fig = grid[0].get_figure()
    values = np.concatenate([np.asarray(f.values, dtype=float).ravel() for f in fields])
    colour = _colour_norm(norm, values, vmax, precipitation)
    dry = precipitation and not bool(np.any(values < 0))  # white where 0, see WET_COLOUR_START
    if dry:
        from matplotlib import colormaps
        from matplotlib.colors import ListedColormap

        base = colormaps[cmap] if isinstance(cmap, str) else cmap
        cmap = ListedColormap(base(np.linspace(WET_COLOUR_START, 1.0, 256)), name="wet")
        label += "; white: 0 (dry)"
    xlabel, ylabel = _axis_label(fields[0], xdim), _axis_label(fields[0], ydim)
    mesh = None
    for i, row in enumerate(rows):
        for j in range(ncols):
            a = grid[i * ncols + j]
            frame = row.frames[j] if j < len(row.frames) else None
            if frame is None:
                a.set_axis_off()
                continue
            frame = frame.transpose(ydim, xdim)
            field = np.asarray(frame.values, dtype=float)
            if dry:  # masked cells show the white background
                field = np.ma.masked_where(~(field > 0), field)
            if maps is None:
                y, x = _grid_coords(frame, ydim, xdim)
                mesh = a.pcolormesh(x, y, field, cmap=cmap, norm=colour, shading="auto")
            else:
                mesh = _geo_mesh(a, frame, field, ydim, xdim, maps, cmap=cmap, norm=colour)
            if not np.isfinite(np.asarray(frame.values, dtype=float)).any():
                a.text(
                    0.5,
                    0.5,
                    "missing",
                    transform=a.transAxes,
                    ha="center",
                    va="center",
                    fontsize=SMALL_FONT,
                    color="0.4",
                )
            below = (
                i + 1 < nrows and j < len(rows[i + 1].frames) and rows[i + 1].frames[j] is not None
            )
            if maps is not None:
                # latitude/longitude labels on the outer sides, the row's label left of them
                lines = _decorate_map(a, maps, left=j == 0, bottom=not below)
                if j == 0 and row.label:
                    _row_label(a, row.label, lines)
            else:
                _graticule(a, frame, ydim, xdim)
                a.set_aspect("equal")
                a.tick_params(labelsize=SMALL_FONT - 1, length=2, pad=1)
                a.xaxis.set_major_locator(MaxNLocator(MAP_TICKS))
                a.yaxis.set_major_locator(MaxNLocator(MAP_TICKS))
                if below:
                    a.tick_params(labelbottom=False)
                else:
                    a.set_xlabel(xlabel, fontsize=SMALL_FONT)
                if j == 0:
                    text = f"{row.label}\n{ylabel}" if row.label else ylabel
                    a.set_ylabel(text, fontsize=SMALL_FONT)
                else:
                    a.tick_params(labelleft=False)
            if i == 0:
                a.set_title(titles[j], fontsize=SMALL_FONT)
            if j < len(row.generated) and row.generated[j]:
                for spine in a.spines.values():
                    spine.set_edgecolor(GENERATED_COLOUR)
                    spine.set_linewidth(GENERATED_LINEWIDTH)
    if mesh is not None:
        bar = fig.colorbar(mesh, ax=list(grid[: nrows * ncols]), shrink=0.8, aspect=30)
        bar.set_label(label, fontsize=SMALL_FONT)
        bar.ax.tick_params(labelsize=SMALL_FONT - 1)
    if title:
        fig.suptitle(title, fontsize=SMALL_FONT + 2)
    return fig


def plot_bias_map(
    obj: xr.DataArray | xr.Dataset,
    *,
    dims: Mapping[str, str] | None = None,
    vmax: float | None = None,
    cmap: str = "RdBu_r",
    ax: Any = None,
    projection: str | bool | Projection | None = "auto",
    coastlines: bool | None = None,
) -> Any:
    """Map of the mean-normalised bias (Fig. 4.12), with its mean absolute value and, from
    the attributes ``sample_fields`` / ``reference_fields`` of ``evaluate``, the number of
    fields behind each mean (its sample size) in the title.

    Parameters
    ----------
    obj
        ``mean_normalised_bias`` DataArray (Y, X), or a Dataset containing it.
    dims
        Axis overrides for :func:`~xdiffusion.io.axes.find_axes`.
    vmax
        Colour limit (symmetric around 0); default the 98th percentile of |bias|.
    cmap
        Diverging colour map.
    ax
        Axes to draw into; default a new Figure.
    projection, coastlines
        Map projection and coastlines, as in :func:`plot_fields` (with ``"auto"``, given
        plain axes are drawn on as plain axes).

    Returns
    -------
    matplotlib.figure.Figure
    """
    if isinstance(obj, xr.Dataset):
        if "mean_normalised_bias" not in obj:
            raise ValueError("obj= has no variable 'mean_normalised_bias'")
        obj = obj["mean_normalised_bias"]
    if not isinstance(obj, xr.DataArray):
        raise TypeError(f"obj= must be a DataArray or Dataset, got {type(obj).__name__}")
    axes = find_axes(obj, dims, require_time=False)
    if obj.ndim != 2:
        raise ValueError(f"the bias map must be 2-D (Y, X), got dims {obj.dims}")
    da = obj.transpose(axes["Y"], axes["X"])
    ydim, xdim = axes["Y"], axes["X"]
    maps = _resolve_maps(projection, coastlines, [da], ydim, xdim, None if ax is None else [ax])
    if maps is not None and ax is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(5.5, 4.5), layout="constrained")
        ax = fig.add_subplot(projection=maps.projection)
    else:
        fig, ax = _new_axes(ax, (5.5, 4.5))
    values = np.asarray(da.values, dtype=float)
    if vmax is None:
        # a few cells with a tiny reference mean would otherwise set the whole scale
        finite = np.abs(values[np.isfinite(values)])
        vmax = float(np.percentile(finite, 98)) if finite.size else 1.0
        vmax = vmax if vmax > 0 else 1.0
    scale = {"cmap": cmap, "vmin": -vmax, "vmax": vmax}
    if maps is None:
        y, x = _grid_coords(da, ydim, xdim)
        mesh = ax.pcolormesh(x, y, values, shading="auto", **scale)
        ax.set_xlabel(_axis_label(da, xdim))
        ax.set_ylabel(_axis_label(da, ydim))
        ax.set_aspect("equal")
    else:
        mesh = _geo_mesh(ax, da, values, ydim, xdim, maps, **scale)
        _decorate_map(ax, maps, left=True, bottom=True, fontsize=None)
    fig.colorbar(mesh, ax=ax, label="mean-normalised bias")
    mean_abs = float(np.nanmean(np.abs(values))) if np.isfinite(values).any() else np.nan
    title = f"mean-normalised bias (mean |b| = {mean_abs:.2f})"
    if "sample_fields" in da.attrs and "reference_fields" in da.attrs:
        title += (
            f"\nmeans of {int(da.attrs['sample_fields'])} generated and "
            f"{int(da.attrs['reference_fields'])} reference fields"
        )
    ax.set_title(title)
    return fig


def plot_rank_histogram(obj: xr.DataArray | xr.Dataset, *, ax: Any = None) -> Any:
    """Rank histogram bars with the flat line of a calibrated ensemble.

    Parameters
    ----------
    obj
        Output of ``diagnostics.rank_histogram``, or a Dataset containing ``rank_histogram``.
    ax
        Axes to draw into; default a new Figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if isinstance(obj, xr.Dataset):
        if "rank_histogram" not in obj:
            raise ValueError("obj= has no variable 'rank_histogram' (evaluate without obs?)")
        obj = obj["rank_histogram"]
    if not isinstance(obj, xr.DataArray) or obj.ndim != 1:
        raise TypeError("obj= must be the 1-D DataArray of diagnostics.rank_histogram")
    fig, ax = _new_axes(ax, (5, 4))
    ranks = obj[obj.dims[0]].values
    values = np.asarray(obj.values, dtype=float)
    ax.bar(ranks, values, width=0.9, color="tab:blue")
    ax.axhline(np.nansum(values) / values.size, color="black", linestyle=":", label="flat")
    ax.set_xlabel("rank of observation")
    ax.set_ylabel(str(obj.attrs.get("long_name", "frequency")))
    ax.set_title("rank histogram")
    top = np.nanmax(values) if np.isfinite(values).any() else 1.0
    ax.set_ylim(0, RANK_HEADROOM * top if top > 0 else 1.0)  # room for the legend
    ax.legend(loc="upper center", ncols=1)
    return fig


def _first_members(da: xr.DataArray, member_dim: str, max_members: int) -> xr.DataArray:
    """The first ``max_members`` members of ``da``, computed once (lazy outputs of the
    generating methods would otherwise be generated again for every panel)."""
    if member_dim in da.dims:
        da = da.isel({member_dim: slice(0, max(1, int(max_members)))})
    return da.compute()


def _members(
    da: xr.DataArray, member_dim: str, max_members: int
) -> list[tuple[int | None, xr.DataArray]]:
    """(member number, member) pairs of the first ``max_members`` members, or (None, da)."""
    if member_dim not in da.dims:
        return [(None, da)]
    count = min(da.sizes[member_dim], max(1, int(max_members)))
    numbers = (
        [int(v) for v in da[member_dim].values[:count]]
        if member_dim in da.coords
        else list(range(count))
    )
    return [(numbers[i], da.isel({member_dim: i})) for i in range(count)]


def _member_label(prefix: str, number: int | None) -> str:
    return prefix if number is None else f"{prefix} {number}"


def plot_fields(
    da: xr.DataArray,
    *,
    observed: xr.DataArray | None = None,
    dims: Mapping[str, str] | None = None,
    member_dim: str = "realization",
    max_members: int = 4,
    max_frames: int = 10,
    vmax: float | None = None,
    norm: str = "auto",
    cmap: str = "Blues",
    title: str | None = None,
    ax: Sequence[Any] | np.ndarray | None = None,
    projection: str | bool | Projection | None = "auto",
    coastlines: bool | None = None,
) -> Any:
    """A grid of maps: one row per member, one column per time step (Fig. 4.1).

    Parameters
    ----------
    da
        Fields (T, Y, X), optionally with ``member_dim``; the first ``max_members``
        members and ``max_frames`` time steps are drawn, on one colour scale. Rows of an
        output of a generating method (it records ``sampling``) are labelled "generated".
    observed
        Observed fields (T, Y, X) drawn as a first row labelled "observed", at the time
        steps of ``da`` (by time stamp where they share them, else by position), e.g. the
        template an ensemble was sampled on.
    dims
        Axis overrides for :func:`~xdiffusion.io.axes.find_axes`.
    member_dim
        Name of the ensemble dimension.
    max_members, max_frames
        Grid size limits.
    vmax
        Upper colour limit; default the largest value drawn (lower limit: the smallest).
    norm
        Colour scale: ``"power"`` (values to the power :data:`PRECIPITATION_GAMMA`, so
        drizzle is not coloured as dry), ``"log"`` (from :data:`LOG_FLOOR_FRACTION` ×
        ``vmax``; zeros left white), ``"linear"``, or ``"auto"`` (default): ``"power"`` for
        precipitation (by ``standard_name`` or a name such as ``pr``), else ``"linear"``.
    cmap
        Colour map.
    title
        Figure title; default "generated by the diffusion model …" for generated fields,
        none otherwise; ``""`` for none.
    ax
        Existing axes, at least rows × columns of them (row-major); default a new Figure.
        With ``projection="auto"``, cartopy map axes (``GeoAxes``) are drawn on as maps and
        plain axes as plain axes.
    projection
        How the maps are drawn (cartopy is optional: ``pip install 'xdiffusion[maps]'``):

        - ``"auto"`` (default): on cartopy map axes when cartopy is installed and the
          fields are georeferenced: a CF grid mapping (the coordinate their
          ``grid_mapping`` attribute names, e.g. ``rotated_latitude_longitude``,
          ``lambert_conformal_conic``; see :data:`CF_GRID_MAPPINGS`) with the grid's
          coordinates, else 2-D or 1-D latitude/longitude coordinates. The maps are then
          in the grid mapping's own projection (a rotated-pole grid stays rectangular),
          Plate Carrée for a latitude-longitude grid, or a Lambert azimuthal equal-area
          projection centred on a regional curvilinear grid, with labelled
          latitude/longitude lines. Otherwise (no cartopy, no georeference) as with None.
        - ``None`` or ``False``: plain axes in the grid's coordinates, with labelled
          latitude/longitude lines drawn from 2-D lat/lon where the fields have them.
        - ``True``: map axes as for ``"auto"``, but an ImportError without cartopy and a
          ValueError for fields without a georeference.
        - a ``cartopy.crs.Projection`` (e.g. ``cartopy.crs.Robinson()``): map axes in that
          projection, the fields transformed from their own coordinates.
    coastlines
        Coastlines (Natural Earth, at a resolution fitting the map's extent) on the maps
        drawn with cartopy: ``None`` (default) draws them only when the shapefile is
        already on disk (under ``cartopy.config["pre_existing_data_dir"]`` or
        ``cartopy.config["data_dir"]``), so a machine without network access never waits
        for a download; ``True`` always draws them (cartopy downloads the file on first
        use); ``False`` never.

    Returns
    -------
    matplotlib.figure.Figure
        Axes show the grid's coordinates (names and units; labelled latitude/longitude
        lines where the fields have 2-D lat/lon), or, on map axes, labelled
        latitude/longitude lines; the colour bar the variable's long name and units.
    """
    if not isinstance(da, xr.DataArray):
        raise TypeError(f"da= must be a DataArray, got {type(da).__name__}")
    axes = find_axes(da, dims, require_time=False)
    tdim = axes.get("T")
    if tdim is not None:
        da = da.isel({tdim: slice(0, max(1, int(max_frames)))})
    da = _first_members(da, member_dim, max_members)
    extra = set(da.dims) - {member_dim, axes["Y"], axes["X"], tdim}
    if extra:
        raise ValueError(f"da= has extra dimensions {sorted(map(str, extra))}; select them")
    cols = da.sizes[tdim] if tdim is not None else 1
    generated = _is_generated(da)
    rows = []
    if observed is not None:
        rows.append(
            _Row("observed", _aligned(observed, da, axes, dims, member_dim, "observed"), ())
        )
    prefix = "generated" if generated else ("member" if member_dim in da.dims else "")
    for number, member in _members(da, member_dim, max_members):
        rows.append(_Row(_member_label(prefix, number), _frames(member, tdim, cols), ()))
    times = da[tdim].values if tdim is not None and tdim in da.coords else [""] * cols
    if title is None and generated:
        title = "generated by the diffusion model" + (
            " (top row: observed)" if observed is not None else ""
        )
    return _map_grid(
        rows,
        [_time_text(t) for t in times],
        ydim=axes["Y"],
        xdim=axes["X"],
        label=_label(da, "value"),
        precipitation=_is_precipitation(da),
        norm=norm,
        vmax=vmax,
        cmap=cmap,
        title=title,
        ax=ax,
        projection=projection,
        coastlines=coastlines,
    )


def _generated_steps(
    filled: xr.DataArray,
    observed: xr.DataArray | None,
    axes: Mapping[str, str],
    dims: Mapping[str, str] | None,
    member_dim: str,
) -> np.ndarray:
    """Which time steps of an interpolate() output hold generated values."""
    tdim = axes["T"]
    flag = f"{filled.name}_status"
    if flag in filled.coords:  # 1 observed, 0 generated (io.cf.wrap)
        status = filled[flag]
        other = [d for d in status.dims if d != tdim]
        return np.asarray((status == 0).any(other).values, dtype=bool).reshape(-1)
    if observed is not None:
        frames = _aligned(observed, filled, axes, dims, member_dim, "observed")
        return np.array([f is None or bool(f.isnull().any()) for f in frames])
    raise ValueError(
        f"filled= has no {flag!r} coordinate (interpolate() adds it) to tell generated time "
        "steps from observed ones; pass observed= (the input with gaps)"
    )


def plot_interpolation(
    filled: xr.DataArray,
    *,
    truth: xr.DataArray | None = None,
    observed: xr.DataArray | None = None,
    dims: Mapping[str, str] | None = None,
    member_dim: str = "realization",
    max_members: int = 2,
    max_frames: int = 8,
    vmax: float | None = None,
    norm: str = "auto",
    cmap: str = "Blues",
    title: str | None = None,
    ax: Sequence[Any] | np.ndarray | None = None,
    projection: str | bool | Projection | None = "auto",
    coastlines: bool | None = None,
) -> Any:
    """Gap filling: consecutive frames, the generated ones framed in red.

    Parameters
    ----------
    filled
        Output of ``interpolate`` (``realization``, T, Y, X): its ``<name>_status``
        coordinate tells which time steps were generated (else ``observed`` does).
    truth
        The complete series (T, Y, X), drawn as the first row "truth": what the gaps hid.
    observed
        The input with gaps; drawn as the first row (gaps "missing") when ``truth`` is not
        given.
    dims, member_dim
        Axis overrides; name of the ensemble dimension.
    max_members, max_frames
        Members drawn (one row each) and frames: ``max_frames`` consecutive time steps
        starting one before the first gap.
    vmax, norm, cmap
        Colour scale, as in :func:`plot_fields`.
    title
        Figure title (a default explains the frames; ``""`` for none).
    ax
        Existing axes, at least rows × columns of them; default a new Figure.
    projection, coastlines
        Map projection and coastlines, as in :func:`plot_fields`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not isinstance(filled, xr.DataArray):
        raise TypeError(f"filled= must be a DataArray, got {type(filled).__name__}")
    axes = find_axes(filled, dims)
    tdim = axes["T"]
    gap = _generated_steps(filled, observed, axes, dims, member_dim)
    n = filled.sizes[tdim]
    count = min(n, max(1, int(max_frames)))
    start = max(0, min(int(np.argmax(gap)) - 1 if gap.any() else 0, n - count))
    part = _first_members(filled.isel({tdim: slice(start, start + count)}), member_dim, max_members)
    gap = gap[start : start + count]
    rows = []
    shown = truth if truth is not None else observed
    if shown is not None:
        name = "truth" if truth is not None else "observed"
        rows.append(_Row(name, _aligned(shown, part, axes, dims, member_dim, name), ()))
    for number, member in _members(part, member_dim, max_members):
        frames = _frames(member.drop_vars(f"{filled.name}_status", errors="ignore"), tdim, count)
        rows.append(_Row(_member_label("generated", number), frames, tuple(gap)))
    titles = [_time_text(t) + ("\ngap" if g else "") for t, g in zip(part[tdim].values, gap)]
    if title is None:
        title = (
            "gap filling: time steps in the gaps generated (red frames), the others observed "
            "and kept exactly"
        )
    return _map_grid(
        rows,
        titles,
        ydim=axes["Y"],
        xdim=axes["X"],
        label=_label(filled, "value"),
        precipitation=_is_precipitation(filled),
        norm=norm,
        vmax=vmax,
        cmap=cmap,
        title=title,
        ax=ax,
        projection=projection,
        coastlines=coastlines,
    )


def plot_forecast(
    forecast: xr.DataArray,
    *,
    history: xr.DataArray | None = None,
    truth: xr.DataArray | None = None,
    dims: Mapping[str, str] | None = None,
    member_dim: str = "realization",
    context: int = 1,
    max_members: int = 3,
    max_lead: int = 6,
    vmax: float | None = None,
    norm: str = "auto",
    cmap: str = "Blues",
    title: str | None = None,
    ax: Sequence[Any] | np.ndarray | None = None,
    projection: str | bool | Projection | None = "auto",
    coastlines: bool | None = None,
) -> Any:
    """A forecast ensemble: the last observed frames, then the generated leads (red frames).

    Parameters
    ----------
    forecast
        Output of ``forecast`` (``realization``, T, Y, X): the new time steps only.
    history
        The observed series the forecast continues; its last ``context`` frames open every
        row, and leads are counted from its last time step.
    truth
        What happened (T, Y, X) at the forecast's time steps (by time stamp, else by
        position): the first row, "observed".
    dims, member_dim
        Axis overrides; name of the ensemble dimension.
    context
        Observed frames of ``history`` shown before the first lead.
    max_members, max_lead
        Members drawn (one row each) and leads (columns).
    vmax, norm, cmap
        Colour scale, as in :func:`plot_fields`.
    title
        Figure title (a default explains the rows; ``""`` for none).
    ax
        Existing axes, at least rows × columns of them; default a new Figure.
    projection, coastlines
        Map projection and coastlines, as in :func:`plot_fields`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not isinstance(forecast, xr.DataArray):
        raise TypeError(f"forecast= must be a DataArray, got {type(forecast).__name__}")
    axes = find_axes(forecast, dims)
    tdim = axes["T"]
    fc = _first_members(
        forecast.isel({tdim: slice(0, max(1, int(max_lead)))}), member_dim, max_members
    )
    leads = fc.sizes[tdim]
    before: tuple[xr.DataArray | None, ...] = ()
    start = None
    titles = []
    if history is not None and int(context) > 0:
        found = find_axes(history, dims)
        past = history.isel({found["T"]: slice(-int(context), None)})
        past = past.rename({found[k]: axes[k] for k in found if found[k] != axes[k]})
        before = _aligned(past, past, axes, dims, member_dim, "history")
        if tdim in past.coords:
            start = past[tdim].values[-1]
            titles += [f"{_time_text(t)}\nobserved" for t in past[tdim].values]
        else:
            titles += ["observed"] * len(before)
    fc_times = fc[tdim].values if tdim in fc.coords else [None] * leads
    titles += [
        (f"{_time_text(t)}\n" if t is not None else "") + _lead_text(t, start, k + 1)
        for k, t in enumerate(fc_times)
    ]
    rows = []
    if truth is not None:
        after = _aligned(truth, fc, axes, dims, member_dim, "truth")
        rows.append(_Row("observed", before + after, ()))
    elif before:
        rows.append(_Row("observed", before, ()))
    marks = (False,) * len(before) + (True,) * leads
    for number, member in _members(fc, member_dim, max_members):
        rows.append(
            _Row(_member_label("generated", number), before + _frames(member, tdim, leads), marks)
        )
    if title is None:
        title = "forecast: observed, then generated leads (red frames)" + (
            "; top row: what was observed" if truth is not None else ""
        )
    return _map_grid(
        rows,
        titles,
        ydim=axes["Y"],
        xdim=axes["X"],
        label=_label(forecast, "value"),
        precipitation=_is_precipitation(forecast),
        norm=norm,
        vmax=vmax,
        cmap=cmap,
        title=title,
        ax=ax,
        projection=projection,
        coastlines=coastlines,
    )


def plot_downscaling(
    downscaled: xr.DataArray,
    coarse: xr.DataArray,
    *,
    truth: xr.DataArray | None = None,
    dims: Mapping[str, str] | None = None,
    member_dim: str = "realization",
    max_members: int = 2,
    max_frames: int = 4,
    vmax: float | None = None,
    norm: str = "auto",
    cmap: str = "Blues",
    title: str | None = None,
    ax: Sequence[Any] | np.ndarray | None = None,
    projection: str | bool | Projection | None = "auto",
    coastlines: bool | None = None,
) -> Any:
    """Downscaling: the coarse input, generated fine fields (red frames) and the truth.

    Parameters
    ----------
    downscaled
        Output of ``downscale`` (``realization``, T, Y, X) on the fine grid.
    coarse
        The coarse input (T, Y, X), drawn on its own grid as the first row.
    truth
        The fine fields behind ``coarse`` (T, Y, X), drawn as the last row.
    dims, member_dim
        Axis overrides; name of the ensemble dimension.
    max_members, max_frames
        Members (rows) and time steps (columns) drawn.
    vmax, norm, cmap
        Colour scale, as in :func:`plot_fields`.
    title
        Figure title (a default names the rows and the factor; ``""`` for none).
    ax
        Existing axes, at least rows × columns of them; default a new Figure.
    projection, coastlines
        Map projection and coastlines, as in :func:`plot_fields`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not isinstance(downscaled, xr.DataArray):
        raise TypeError(f"downscaled= must be a DataArray, got {type(downscaled).__name__}")
    axes = find_axes(downscaled, dims, require_time=False)
    tdim = axes.get("T")
    if tdim is not None:
        downscaled = downscaled.isel({tdim: slice(0, max(1, int(max_frames)))})
    downscaled = _first_members(downscaled, member_dim, max_members)
    cols = downscaled.sizes[tdim] if tdim is not None else 1
    rows = [
        _Row("coarse input", _aligned(coarse, downscaled, axes, dims, member_dim, "coarse"), ())
    ]
    for number, member in _members(downscaled, member_dim, max_members):
        frames = _frames(member, tdim, cols)
        rows.append(_Row(_member_label("generated", number), frames, (True,) * cols))
    if truth is not None:
        rows.append(_Row("truth", _aligned(truth, downscaled, axes, dims, member_dim, "truth"), ()))
    times = (
        downscaled[tdim].values if tdim is not None and tdim in downscaled.coords else [""] * cols
    )
    if title is None:
        coarse_x = find_axes(coarse, dims, require_time=False)["X"]
        factor = downscaled.sizes[axes["X"]] / max(1, coarse.sizes[coarse_x])
        title = f"downscaling ×{factor:g}: coarse input, generated fine fields (red frames)" + (
            ", truth" if truth is not None else ""
        )
    return _map_grid(
        rows,
        [_time_text(t) for t in times],
        ydim=axes["Y"],
        xdim=axes["X"],
        label=_label(downscaled, "value"),
        precipitation=_is_precipitation(downscaled),
        norm=norm,
        vmax=vmax,
        cmap=cmap,
        title=title,
        ax=ax,
        projection=projection,
        coastlines=coastlines,
    )


def _bars(ax: Any, names: Sequence[str], values: Sequence[float], colours: Sequence[str]) -> None:
    """Horizontal bars with their values written next to them."""
    positions = np.arange(len(names))
    ax.barh(positions, values, color=colours, height=0.6)
    ax.set_yticks(positions, labels=list(names))
    ax.invert_yaxis()
    top = max([v for v in values if np.isfinite(v)] or [1.0])
    for k, v in zip(positions, values):
        ax.text(v + 0.02 * top, k, f"{v:.3g}", va="center", fontsize=9)
    ax.set_xlim(0, 1.25 * top if top > 0 else 1.0)


def plot_scores(report: xr.Dataset, *, ax: Any = None) -> Any:
    """The summary distances of an evaluate() Dataset as bars (0: like the reference).

    Parameters
    ----------
    report
        The Dataset of :func:`~xdiffusion.diagnostics.evaluate`.
    ax
        Axes to draw into; default a new Figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    found = [(label, float(report[k])) for k, label in SCORE_LABELS.items() if k in report]
    if not found:
        raise ValueError(f"report= has none of the scores {sorted(SCORE_LABELS)}")
    fig, ax = _new_axes(ax, (5, 3))
    _bars(ax, [n for n, _ in found], [v for _, v in found], ["tab:gray"] * len(found))
    ax.set_xlabel("distance from the reference (0 = identical)")
    ax.set_title("summary scores")
    return fig


def plot_ensemble_scores(report: xr.Dataset, *, ax: Any = None) -> Any:
    """CRPS and spread-skill of an ensemble against observations, as bars.

    Parameters
    ----------
    report
        The Dataset of :func:`~xdiffusion.diagnostics.evaluate` with ``observations=``:
        ``crps``, ``crps_fair``, ``ensemble_spread``, ``ensemble_mean_rmse`` (those present,
        in the data's units) and ``spread_skill_ratio`` (in the title).
    ax
        Axes to draw into; default a new Figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    found = [(k, label) for k, label in ENSEMBLE_LABELS.items() if k in report]
    if not found:
        raise ValueError(
            "report= has no ensemble scores: evaluate(samples, reference, observations=...) "
            "adds them"
        )
    fig, ax = _new_axes(ax, (5, 3))
    colours = ["tab:blue" if k.startswith("crps") else "tab:orange" for k, _ in found]
    _bars(ax, [label for _, label in found], [float(report[k]) for k, _ in found], colours)
    units = report[found[0][0]].attrs.get("units")
    ax.set_xlabel("score" + (f" [{units}]" if units not in (None, "", "1") else ""))
    title = "ensemble against observations"
    if "spread_skill_ratio" in report:
        ratio = float(report["spread_skill_ratio"])
        title += f"\nspread-skill ratio {ratio:.2f} (1: calibrated, < 1: overconfident)"
    ax.set_title(title)
    return fig


def _mosaic(names: Sequence[str], columns: int) -> list[list[str]]:
    """Rows of ``columns`` panel names; the last panel widens to fill its row (no blanks)."""
    rows = [list(names[i : i + columns]) for i in range(0, len(names), columns)]
    if rows and len(rows[-1]) < columns:
        rows[-1] += [rows[-1][-1]] * (columns - len(rows[-1]))
    return rows


def plot_report(
    report: xr.Dataset,
    path: str | PathLike | None = None,
    *,
    dpi: float = 100,
) -> Any:
    """Multi-panel summary of an :func:`~xdiffusion.diagnostics.evaluate` Dataset.

    Panels: full and low-end histograms, QQ, spatial and temporal PSDs, bias map (with its
    sample size), the summary scores as bars and, when the report was made with
    observations, the rank histogram and the CRPS / spread-skill scores. Panels whose
    diagnostics are absent are left out, not left blank.

    Parameters
    ----------
    report
        The Dataset returned by ``evaluate`` (computed here if dask-backed).
    path
        If given, the figure is saved there (format from the suffix, e.g. ``.png``).
    dpi
        Resolution when saving.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not isinstance(report, xr.Dataset):
        raise TypeError(f"report= must be the Dataset of evaluate(), got {type(report).__name__}")
    from matplotlib.figure import Figure

    report = report.compute()

    def low(ax: Any) -> None:
        plot_histogram(report, low_end=True, ax=ax)
        ax.set_title("distribution, low end")

    def full(ax: Any) -> None:
        plot_histogram(report, ax=ax)
        ax.set_title("distribution")

    panels: dict[str, Any] = {
        "hist": full,
        "low": low,
        "qq": lambda ax: plot_qq(report, ax=ax),
        "psd": lambda ax: plot_psd(report, kind="spatial", ax=ax),
    }
    if "temporal_psd_sample" in report:
        panels["tpsd"] = lambda ax: plot_psd(report, kind="temporal", ax=ax)
    panels["bias"] = lambda ax: plot_bias_map(report, ax=ax)
    if "rank_histogram" in report:
        panels["rank"] = lambda ax: plot_rank_histogram(report, ax=ax)
    if any(k in report for k in ENSEMBLE_LABELS):
        panels["ensemble"] = lambda ax: plot_ensemble_scores(report, ax=ax)
    if any(k in report for k in SCORE_LABELS):
        panels["scores"] = lambda ax: plot_scores(report, ax=ax)
    layout = _mosaic(list(panels), REPORT_COLUMNS)
    fig = Figure(
        figsize=(REPORT_PANEL[0] * REPORT_COLUMNS, REPORT_PANEL[1] * len(layout)),
        layout="constrained",
    )
    axes = fig.subplot_mosaic(layout)
    for name, draw in panels.items():
        draw(axes[name])
    fig.suptitle(str(report.attrs.get("title", "xdiffusion evaluation")))
    return _finish(fig, path, dpi)


def plot_loss(
    model_or_history: Any,
    ax: Any = None,
    path: str | PathLike | None = None,
    *,
    smooth: int | None = None,
    dpi: float | None = None,
) -> Any:
    """The learning curve: training loss (faint: every step; solid: a running mean) and
    validation loss against the step, on a log scale.

    Read it as: both curves falling, the fit is still learning (more ``steps=`` would
    help); the validation loss flat while the training loss falls, the model has learnt
    what these data teach it; the validation loss rising, it is over-fitting (fewer steps,
    more data). The training loss of one step is one mini-batch at random noise levels, so
    only its running mean shows a trend; the validation loss uses fixed windows and noise.

    Parameters
    ----------
    model_or_history
        A fitted :class:`~xdiffusion.DiffusionModel`, its ``history`` Dataset, or the
        history dict (``model.history_dict``).
    ax
        Axes to draw into (default: a new figure).
    path
        If given, the figure is saved there (format from the suffix, e.g. ``.png``).
    smooth
        Steps of the running mean (default 5 % of the steps; see
        :func:`xdiffusion.diagnostics.smoothed_loss`).
    dpi
        Resolution when saving.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from xdiffusion.diagnostics.learning import history_dataset, smoothed_loss

    history = getattr(model_or_history, "history", model_or_history)
    if isinstance(history, Mapping) and not isinstance(history, xr.Dataset):
        history = history_dataset(history)
    if not isinstance(history, xr.Dataset):
        raise TypeError(
            "model_or_history= must be a DiffusionModel, its history Dataset or its "
            f"history_dict, got {type(model_or_history).__name__}"
        )
    if "loss" not in history and "val_loss" not in history:
        raise ValueError("model_or_history= has no losses recorded (a model file without them?)")
    fig, ax = _new_axes(ax, (7, 4))
    if "loss" in history:
        loss = history["loss"]
        ax.plot(loss["step"], loss, color="C0", alpha=0.25, lw=0.6, label="training (per step)")
        mean = smoothed_loss(loss, smooth)
        ax.plot(loss["step"], mean, color="C0", lw=1.6, label="training (running mean)")
    if "val_loss" in history:
        val = history["val_loss"]
        # the step after which it was computed, on the training curve's axis
        ax.plot(val["val_step"], val, "o-", color="C1", ms=3, lw=1.4, label="validation")
    ax.set_yscale("log")
    ax.set_xlabel("optimisation step")
    ax.set_ylabel("loss")
    ax.legend(loc="upper right")
    ax.set_title("learning curve")
    return _finish(fig, path, dpi)


__all__ += ["plot_loss"]  # appended here: the list above is kept as it was
