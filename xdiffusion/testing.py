"""Files as users have them: CF datasets for tests, examples and bug reports.

Each function returns an :class:`xarray.Dataset` shaped like a real product (variable
attributes, coordinates with bounds, a grid mapping, a calendar, global attributes) with
values from :func:`xdiffusion.datasets.synthetic_precipitation`; :func:`write_fixtures`
writes them to netCDF so that tests open them the way users do (``xr.open_dataset``).
No torch here.

- :func:`rotated_pole_dataset`: a CORDEX-like rotated-pole grid (``rlat``/``rlon``,
  ``rotated_pole`` grid mapping, 2-D ``lat``/``lon`` with vertex bounds), ``time_bnds``,
  a ``360_day`` calendar, precipitation in kg m-2 s-1.
- :func:`regular_latlon_dataset`: a regular latitude-longitude grid with ``lat_bnds``/
  ``lon_bnds`` and ``time_bnds``, standard calendar, mm h-1.
- :func:`monthly_dataset`: monthly means stamped at mid-month with month-long
  ``time_bnds`` on any calendar.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from xdiffusion.datasets import synthetic_precipitation
from xdiffusion.io.grids import rotated_to_geographic

__all__ = [
    "COARSE_FACTOR",
    "ROTATED_POLE",
    "coarsened",
    "file_encoding",
    "monthly_dataset",
    "regular_latlon_dataset",
    "rotated_pole_dataset",
    "rotated_to_geographic",
    "write_fixtures",
]

#: EURO-CORDEX's rotated pole (degrees).
ROTATED_POLE = {"grid_north_pole_latitude": 39.25, "grid_north_pole_longitude": -162.0}

#: Refinement between the ``*_coarse`` fixtures and the fine ones.
COARSE_FACTOR = 2

#: kg m-2 s-1 per mm h-1 (1 mm of water over 1 m² is 1 kg; an hour is 3600 s).
KG_M2_S_PER_MM_H = 1.0 / 3600.0

_GLOBAL = {
    "Conventions": "CF-1.8",
    "institution": "xdiffusion test suite",
    "experiment_id": "synthetic",
    "comment": "synthetic precipitation written by xdiffusion.testing",
    "custom_attribute": "kept",
    "source": "xdiffusion.testing synthetic precipitation",
    "history": "2001-01-01T00:00:00+00:00: written by xdiffusion.testing",
}


def _bounds_1d(centres: np.ndarray) -> np.ndarray:
    mid = (centres[1:] + centres[:-1]) / 2
    edges = np.concatenate([[2 * centres[0] - mid[0]], mid, [2 * centres[-1] - mid[-1]]])
    return np.stack([edges[:-1], edges[1:]], axis=-1)


def _time_bounds(time: xr.DataArray, step: pd.Timedelta | None = None) -> xr.DataArray:
    values = time.values
    if step is None:
        step = values[1] - values[0]
    lower = (
        np.array([v - step / 2 for v in values]) if values.dtype == object else values - step / 2
    )
    upper = (
        np.array([v + step / 2 for v in values]) if values.dtype == object else values + step / 2
    )
    return xr.DataArray(np.stack([lower, upper], axis=-1), dims=(time.dims[0], "bnds"))


def rotated_pole_dataset(
    nt: int = 48, ny: int = 16, nx: int = 16, *, seed: int = 0, freq: str = "1h"
) -> xr.Dataset:
    """A rotated-pole precipitation file (CORDEX-like) on the ``360_day`` calendar.

    ``pr`` (kg m-2 s-1, ``grid_mapping: rotated_pole``, ``coordinates: lat lon``) on
    (time, rlat, rlon) with 0.11° spacing; ``rlat_bnds``/``rlon_bnds``, 2-D ``lat``/``lon``
    with ``lat_vertices``/``lon_vertices`` (4 corners), ``time_bnds``.
    """
    base = synthetic_precipitation(
        nt=nt, ny=ny, nx=nx, seed=seed, freq=freq, start="2001-01-01", calendar="360_day"
    )
    rlat = np.round(-1.0 + 0.11 * np.arange(ny), 6)
    rlon = np.round(-2.0 + 0.11 * np.arange(nx), 6)
    rlat_b, rlon_b = _bounds_1d(rlat), _bounds_1d(rlon)
    pole = ROTATED_POLE
    lat, lon = rotated_to_geographic(
        rlat[:, None],
        rlon[None, :],
        pole["grid_north_pole_latitude"],
        pole["grid_north_pole_longitude"],
    )
    # cell corners, counter-clockwise from (south, west)
    corner_lat = np.stack([rlat_b[:, None, 0]] * 2 + [rlat_b[:, None, 1]] * 2, -1)
    corner_lon = np.stack(
        [rlon_b[None, :, 0], rlon_b[None, :, 1], rlon_b[None, :, 1], rlon_b[None, :, 0]], -1
    )
    vlat, vlon = rotated_to_geographic(
        np.broadcast_to(corner_lat, (ny, nx, 4)),
        np.broadcast_to(corner_lon, (ny, nx, 4)),
        pole["grid_north_pole_latitude"],
        pole["grid_north_pole_longitude"],
    )
    time = base["time"]
    ds = xr.Dataset(
        {
            "pr": (
                ("time", "rlat", "rlon"),
                (base.values * KG_M2_S_PER_MM_H).astype(np.float32),
                {
                    "standard_name": "precipitation_flux",
                    "long_name": "Precipitation",
                    "units": "kg m-2 s-1",
                    "cell_methods": "time: mean",
                    "grid_mapping": "rotated_pole",
                    "coordinates": "lat lon",
                },
            ),
            "rotated_pole": (
                (),
                np.int32(0),
                {"grid_mapping_name": "rotated_latitude_longitude", **pole},
            ),
            "time_bnds": _time_bounds(time),
            "rlat_bnds": (("rlat", "bnds"), rlat_b),
            "rlon_bnds": (("rlon", "bnds"), rlon_b),
            "lat_vertices": (("rlat", "rlon", "vertices"), vlat),
            "lon_vertices": (("rlat", "rlon", "vertices"), vlon),
        },
        coords={
            "time": (
                "time",
                time.values,
                {"standard_name": "time", "axis": "T", "bounds": "time_bnds"},
            ),
            "rlat": (
                "rlat",
                rlat,
                {
                    "standard_name": "grid_latitude",
                    "long_name": "latitude in rotated pole grid",
                    "units": "degrees",
                    "axis": "Y",
                    "bounds": "rlat_bnds",
                },
            ),
            "rlon": (
                "rlon",
                rlon,
                {
                    "standard_name": "grid_longitude",
                    "long_name": "longitude in rotated pole grid",
                    "units": "degrees",
                    "axis": "X",
                    "bounds": "rlon_bnds",
                },
            ),
            "lat": (
                ("rlat", "rlon"),
                lat,
                {
                    "standard_name": "latitude",
                    "units": "degrees_north",
                    "bounds": "lat_vertices",
                },
            ),
            "lon": (
                ("rlat", "rlon"),
                lon,
                {
                    "standard_name": "longitude",
                    "units": "degrees_east",
                    "bounds": "lon_vertices",
                },
            ),
        },
        attrs={**_GLOBAL, "title": "rotated-pole test file", "frequency": "1hr"},
    )
    return ds


def _latlon(ny: int, nx: int, *, bounds: bool) -> tuple[dict, dict]:
    """(coordinates, bounds variables) of the regular 0.25° latitude-longitude test grid."""
    lat = np.round(40.0 + 0.25 * np.arange(ny), 6)
    lon = np.round(-5.0 + 0.25 * np.arange(nx), 6)
    coords, variables = {}, {}
    for name, values, sn, units, axis in (
        ("lat", lat, "latitude", "degrees_north", "Y"),
        ("lon", lon, "longitude", "degrees_east", "X"),
    ):
        attrs = {"standard_name": sn, "units": units, "axis": axis}
        if bounds:
            attrs["bounds"] = f"{name}_bnds"
            variables[f"{name}_bnds"] = ((name, "bnds"), _bounds_1d(values))
        coords[name] = (name, values, attrs)
    return coords, variables


def regular_latlon_dataset(
    nt: int = 48, ny: int = 16, nx: int = 16, *, seed: int = 0, freq: str = "1h"
) -> xr.Dataset:
    """A regular latitude-longitude precipitation file (mm h-1) with coordinate bounds."""
    base = synthetic_precipitation(nt=nt, ny=ny, nx=nx, seed=seed, freq=freq, start="2001-01-01")
    grid, grid_bounds = _latlon(ny, nx, bounds=True)
    time = base["time"]
    ds = xr.Dataset(
        {
            "pr": (
                ("time", "lat", "lon"),
                base.values.astype(np.float32),
                {
                    "standard_name": "lwe_precipitation_rate",
                    "long_name": "precipitation rate",
                    "units": "mm h-1",
                    "cell_methods": "time: mean",
                },
            ),
            "time_bnds": _time_bounds(time),
            **grid_bounds,
        },
        coords={
            "time": (
                "time",
                time.values,
                {"standard_name": "time", "axis": "T", "bounds": "time_bnds"},
            ),
            **grid,
        },
        attrs={**_GLOBAL, "title": "regular lat-lon test file", "frequency": "1hr"},
    )
    return ds


def monthly_dataset(
    nt: int = 60, ny: int = 16, nx: int = 16, *, seed: int = 0, calendar: str = "standard"
) -> xr.Dataset:
    """Monthly-mean precipitation (mm h-1) stamped at mid-month, bounded by month starts.

    The stamps are the centres of their months, as CMIP files have them (e.g.
    2001-01-16T12 and 2001-02-15T00 on the standard calendar).
    """
    base = synthetic_precipitation(nt=nt, ny=ny, nx=nx, seed=seed, freq="1h", start="2001-01-01")
    starts = xr.date_range(
        "2001-01-01",
        periods=nt + 1,
        freq="MS",
        calendar=calendar,
        use_cftime=calendar != "standard",
    )
    edges = np.asarray(starts.values if hasattr(starts, "values") else starts)
    lower, upper = edges[:-1], edges[1:]
    mid = np.array([a + (b - a) / 2 for a, b in zip(lower, upper)], dtype=edges.dtype)
    grid, _ = _latlon(ny, nx, bounds=False)
    ds = xr.Dataset(
        {
            "pr": (
                ("time", "lat", "lon"),
                base.values.astype(np.float32),
                {
                    "standard_name": "lwe_precipitation_rate",
                    "units": "mm h-1",
                    "cell_methods": "time: mean",
                },
            ),
            "time_bnds": (("time", "bnds"), np.stack([lower, upper], axis=-1)),
        },
        coords={
            "time": ("time", mid, {"standard_name": "time", "axis": "T", "bounds": "time_bnds"}),
            **grid,
        },
        attrs={**_GLOBAL, "title": f"monthly test file ({calendar})", "frequency": "mon"},
    )
    return ds


def coarsened(ds: xr.Dataset, factor: int) -> xr.Dataset:
    """A fixture on a grid ``factor`` times coarser, as a coarse product would be: block
    means of the values and of 2-D latitude/longitude, 1-D coordinates at the block centres
    with bounds spanning the blocks; vertex bounds of 2-D coordinates are dropped (with
    their ``bounds`` attributes)."""
    ydim, xdim = ds["pr"].dims[-2:]
    spatial_bounds = [f"{ydim}_bnds", f"{xdim}_bnds"]
    dropped = [v for v in ds.variables if str(v).endswith("_vertices") or v in spatial_bounds]
    out = ds.drop_vars(dropped).coarsen({ydim: factor, xdim: factor}).mean()
    out["pr"] = out["pr"].astype(np.float32)
    for dim, name in zip((ydim, xdim), spatial_bounds):
        if name in ds:
            b = ds[name].values
            out[name] = ((dim, "bnds"), np.stack([b[::factor, 0], b[factor - 1 :: factor, 1]], -1))
    for name in out.variables:
        if name in ds.variables:
            attrs = dict(ds[name].attrs)
            if attrs.get("bounds") in dropped and attrs["bounds"] not in out.variables:
                del attrs["bounds"]
            out[name].attrs = attrs
    out.attrs = dict(ds.attrs)
    return out


def file_encoding(ds: xr.Dataset) -> dict[str, dict]:
    """CF-1.8 encodings for a fixture: no ``_FillValue`` on coordinates or bounds, time and
    its bounds as float64 in hours (hourly) or days (monthly) since the first month on the
    data's calendar, compressed ``pr``."""
    first = ds["time"].values[0]
    calendar = getattr(first, "calendar", None) or "standard"
    unit = "days" if ds.attrs.get("frequency") == "mon" else "hours"
    when = f"{unit} since 2001-01-01 00:00:00"
    enc: dict[str, dict] = {v: {"_FillValue": None} for v in ds.variables if v != "pr"}
    for v in ("time", "time_bnds"):
        enc[v].update(units=when, calendar=calendar, dtype="float64")
    enc["pr"] = {"zlib": True, "complevel": 4, "chunksizes": (1, *ds["pr"].shape[1:])}
    return enc


def write_fixtures(directory: str | os.PathLike) -> dict[str, Path]:
    """Write the fixture set to netCDF in ``directory``; returns name → path.

    ``rotated_pole.nc`` (360_day, hourly), ``regular_latlon.nc`` (standard, hourly), their
    2× coarser versions ``rotated_pole_coarse.nc`` and ``regular_latlon_coarse.nc``
    (:func:`coarsened`), ``monthly_standard.nc``, ``monthly_noleap.nc``,
    ``monthly_360_day.nc``.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    rotated, regular = rotated_pole_dataset(), regular_latlon_dataset()
    sets = {
        "rotated_pole": rotated,
        "regular_latlon": regular,
        "rotated_pole_coarse": coarsened(rotated, COARSE_FACTOR),
        "regular_latlon_coarse": coarsened(regular, COARSE_FACTOR),
        **{f"monthly_{c}": monthly_dataset(calendar=c) for c in ("standard", "noleap", "360_day")},
    }
    paths = {}
    for name, ds in sets.items():
        path = out / f"{name}.nc"
        ds.to_netcdf(path, encoding=file_encoding(ds))
        paths[name] = path
    return paths
