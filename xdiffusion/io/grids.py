"""Fine grids from coarse ones: cell centres, cell edges and 2-D latitude/longitude.

``downscale`` generates on a grid ``factor`` times finer than its input. Its 1-D axes come
from the coarse cell edges (:func:`fine_axis`); auxiliary 2-D latitude/longitude are derived
from the grid mapping where one is known (:func:`fine_latlon`: rotated pole by the
spherical rotation below, other projections through pyproj when it is installed), else
interpolated on the sphere. No torch here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

__all__ = [
    "FINE_COORD_DIGITS",
    "fine_axis",
    "fine_latlon",
    "interpolate_latlon",
    "latlon_from_grid_mapping",
    "rotated_to_geographic",
]

#: Significant digits (relative to the axis extent) kept in the origin and spacing of
#: fine coordinates rebuilt from coarse ones.
FINE_COORD_DIGITS = 12

#: Length units of projection coordinates, in metres (pyproj works in metres).
_METRES = {"m": 1.0, "metre": 1.0, "meter": 1.0, "metres": 1.0, "meters": 1.0, "km": 1e3}


def fine_axis(values: np.ndarray, factor: int, name: str = "axis") -> tuple[np.ndarray, np.ndarray]:
    """Fine cell centres and edges from coarse centres: each coarse cell split in ``factor``.

    On a regular axis the edges are ``v[0] − d/2 + k d`` with d from the first and last
    centres, and the fine centres ``edge₀ + (j + ½) d / factor`` (origin and spacing
    rounded to :data:`FINE_COORD_DIGITS` significant digits): one multiplication per value,
    not an accumulation, so a fine grid made as ``x₀ + (j + ½) Δ`` is recovered exactly
    and aligns with the true one. Irregular axes use midpoints between centres.

    Returns
    -------
    centres, edges
        ``(n * factor,)`` centres and ``(n * factor, 2)`` lower/upper cell edges.
    """
    v = np.asarray(values, dtype=float)
    if v.size < 2:
        raise ValueError(
            f"coarse has a single {name!r} cell, whose size is unknown: pass like= "
            "(a fine template) to give the fine coordinates"
        )
    if not np.isfinite(v).all():
        raise ValueError(f"coarse coordinate {name!r} has non-finite values")
    n = v.size * factor
    d = (v[-1] - v[0]) / (v.size - 1)
    if np.allclose(np.diff(v), d, rtol=1e-9, atol=0):
        # coarse centres are means of fine ones and carry their rounding; grids are defined
        # with far fewer significant digits than a double holds, so snap the origin and the
        # spacing to 12 significant digits of the axis extent before rebuilding
        digits = FINE_COORD_DIGITS - int(np.ceil(np.log10(max(abs(v).max(), abs(d)))))
        edge0 = np.round(v[0] - d / 2, digits) + 0.0  # + 0.0: no negative zero
        step = np.round(d / factor, digits)
        centres = edge0 + (np.arange(n) + 0.5) * step
        lower = edge0 + np.arange(n) * step
        return centres, np.stack([lower, lower + step], axis=-1)
    mid = (v[1:] + v[:-1]) / 2
    edges = np.concatenate([[2 * v[0] - mid[0]], mid, [2 * v[-1] - mid[-1]]])
    frac = np.arange(factor + 1) / factor
    fine_edges = edges[:-1, None] + frac[None] * np.diff(edges)[:, None]
    lower, upper = fine_edges[:, :-1].ravel(), fine_edges[:, 1:].ravel()
    return (lower + upper) / 2, np.stack([lower, upper], axis=-1)


def rotated_to_geographic(
    rlat: np.ndarray, rlon: np.ndarray, pole_lat: float, pole_lon: float
) -> tuple[np.ndarray, np.ndarray]:
    """Geographic (lat, lon) in degrees of rotated-pole coordinates.

    CF ``rotated_latitude_longitude`` with ``grid_north_pole_latitude`` ``pole_lat`` and
    ``grid_north_pole_longitude`` ``pole_lon`` (``north_pole_grid_longitude`` 0): the
    standard rotation of the sphere, written out because it is two lines and needs no
    projection library. Longitudes in [-180, 180).
    """
    phi, lam = np.deg2rad(rlat), np.deg2rad(rlon)
    theta = np.deg2rad(90.0 - pole_lat)
    lon0 = np.deg2rad(pole_lon + 180.0)
    x, y, z = np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)
    xg = np.cos(theta) * x - np.sin(theta) * z
    zg = np.sin(theta) * x + np.cos(theta) * z
    lat = np.rad2deg(np.arcsin(np.clip(zg, -1.0, 1.0)))
    lon = np.rad2deg(np.arctan2(y, xg) + lon0)
    return lat, (lon + 180.0) % 360.0 - 180.0


def _scale_to_metres(attrs: Mapping[str, Any]) -> float | None:
    units = str(attrs.get("units", "m")).strip().lower()
    return _METRES.get(units)


def latlon_from_grid_mapping(
    gm_attrs: Mapping[str, Any],
    y: np.ndarray,
    x: np.ndarray,
    y_attrs: Mapping[str, Any],
    x_attrs: Mapping[str, Any],
) -> tuple[np.ndarray, np.ndarray] | None:
    """2-D (lat, lon) of the cells (y, x) of a grid mapping, or None if it cannot be done.

    Rotated pole is computed here; other mappings use pyproj (``CRS.from_cf``) when it is
    installed and the axes are projection coordinates in m or km.
    """
    name = gm_attrs.get("grid_mapping_name")
    yy, xx = np.meshgrid(np.asarray(y, float), np.asarray(x, float), indexing="ij")
    if name == "rotated_latitude_longitude":
        if float(gm_attrs.get("north_pole_grid_longitude", 0.0)) != 0.0:
            return None
        return rotated_to_geographic(
            yy,
            xx,
            float(gm_attrs["grid_north_pole_latitude"]),
            float(gm_attrs["grid_north_pole_longitude"]),
        )
    if name == "latitude_longitude":
        return yy, xx
    sy, sx = _scale_to_metres(y_attrs), _scale_to_metres(x_attrs)
    if sy is None or sx is None:
        return None
    try:
        from pyproj import CRS, Transformer
    except ImportError:  # optional: interpolation is the fall-back
        return None
    try:
        crs = CRS.from_cf(dict(gm_attrs))
        to_geo = Transformer.from_crs(crs, crs.geodetic_crs, always_xy=True)
        lon, lat = to_geo.transform(xx * sx, yy * sy)
    except Exception:  # pyproj raises its own error types for mappings it cannot read
        return None
    return np.asarray(lat), (np.asarray(lon) + 180.0) % 360.0 - 180.0


def interpolate_latlon(
    lat: np.ndarray, lon: np.ndarray, factor: int
) -> tuple[np.ndarray, np.ndarray]:
    """Fine 2-D (lat, lon) by bilinear interpolation on the sphere (unit vectors), in index
    space, extrapolated linearly at the edges; exact across the date line and near poles."""
    from scipy.interpolate import RegularGridInterpolator

    la, lo = np.deg2rad(np.asarray(lat, float)), np.deg2rad(np.asarray(lon, float))
    vec = np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], -1)
    ny, nx = la.shape
    # fine cell j sits at coarse index (j + 1/2) / factor − 1/2
    fy = (np.arange(ny * factor) + 0.5) / factor - 0.5
    fx = (np.arange(nx * factor) + 0.5) / factor - 0.5
    interp = RegularGridInterpolator(
        (np.arange(ny), np.arange(nx)), vec, bounds_error=False, fill_value=None
    )
    pts = np.stack(np.meshgrid(fy, fx, indexing="ij"), -1)
    v = interp(pts)
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    flat = np.rad2deg(np.arcsin(np.clip(v[..., 2], -1.0, 1.0)))
    flon = np.rad2deg(np.arctan2(v[..., 1], v[..., 0]))
    return flat, flon


def fine_latlon(
    coarse: xr.DataArray,
    grid_mapping: xr.DataArray | None,
    names: tuple[str, str],
    fine_y: np.ndarray,
    fine_x: np.ndarray,
    factor: int,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Fine 2-D latitude and longitude for a downscaled grid, and how they were made.

    Parameters
    ----------
    coarse
        The coarse input (one variable), transposed to (…, Y, X), carrying the 2-D
        latitude/longitude coordinates named in ``names`` and its 1-D Y/X coordinates.
    grid_mapping
        The grid-mapping variable (its attrs) when the input has one.
    names
        Names of the (latitude, longitude) coordinates on ``coarse``.
    fine_y, fine_x
        The fine grid's 1-D coordinates.
    factor
        Refinement factor.

    Returns
    -------
    lat, lon, method
        ``method`` is ``"grid_mapping"`` or ``"interpolated"``.
    """
    lat_c, lon_c = coarse[names[0]], coarse[names[1]]
    ydim, xdim = lat_c.dims
    if grid_mapping is not None:
        got = latlon_from_grid_mapping(
            grid_mapping.attrs, fine_y, fine_x, coarse[ydim].attrs, coarse[xdim].attrs
        )
        if got is not None:
            # trust the mapping only if it reproduces the file's own coarse lat/lon
            check = latlon_from_grid_mapping(
                grid_mapping.attrs,
                coarse[ydim].values,
                coarse[xdim].values,
                coarse[ydim].attrs,
                coarse[xdim].attrs,
            )
            dlon = (check[1] - lon_c.values + 180.0) % 360.0 - 180.0
            if np.allclose(check[0], lat_c.values, atol=1e-4) and np.allclose(dlon, 0, atol=1e-4):
                return got[0], got[1], "grid_mapping"
    lat, lon = interpolate_latlon(lat_c.values, lon_c.values, factor)
    return lat, lon, "interpolated"
