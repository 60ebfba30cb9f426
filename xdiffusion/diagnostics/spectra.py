"""Radially averaged spatial and temporal power spectra (Fig. 4.3 of Herbert (2023)).

Convention: pysteps' ``rapsd``; see :mod:`xdiffusion.diagnostics`.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr

from xdiffusion.diagnostics._util import (
    _KILOMETRES,
    _METRES,
    _check_da,
    _describe,
    _is_dask,
    _no_fill,
    _pool_mean,
    _units_power,
    _with_units,
)
from xdiffusion.io.axes import find_axes

__all__ = ["spatial_psd", "temporal_psd"]


def _grid_spacing_km(da: xr.DataArray, dim: str) -> float | None:
    """Spacing of a projection coordinate in km, or None when not in m or km."""
    if dim not in da.coords or da.sizes[dim] < 2:
        return None
    c = da[dim]
    units = str(c.attrs.get("units", "")).strip().lower()
    scale = 1e-3 if units in _METRES else 1.0 if units in _KILOMETRES else None
    if scale is None:
        return None
    d = np.abs(np.diff(np.asarray(c.values, dtype=float)))
    step = float(np.median(d))
    if step <= 0 or not np.allclose(d, step, rtol=1e-3, atol=0):
        raise ValueError(
            f"coordinate {dim!r} is not evenly spaced; a spectrum needs a regular grid: "
            "regrid first or pass dx=<spacing in km> to use a nominal spacing"
        )
    return step * scale


def _spacing(
    da: xr.DataArray, axes: Mapping[str, str], dx: float | Sequence[float] | None
) -> tuple[float, float] | None:
    """(dy, dx) in km, or None for per-cell wavenumbers."""
    if dx is not None:
        arr = np.asarray(dx, dtype=float).reshape(-1)
        if arr.size not in (1, 2) or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
            raise ValueError(f"dx={dx!r} must be a positive spacing in km, or (dy, dx) in km")
        arr = np.broadcast_to(arr, (2,))
        return float(arr[0]), float(arr[1])
    sy, sx = _grid_spacing_km(da, axes["Y"]), _grid_spacing_km(da, axes["X"])
    if sy is None or sx is None:
        return None
    return sy, sx


def _ring_geometry(ny: int, nx: int, dy: float, dx: float) -> tuple[np.ndarray, int, float]:
    """Ring index of each 2-D mode, the last full ring R and the ring width Δk."""
    ky = np.fft.fftfreq(ny, d=dy)
    kx = np.fft.fftfreq(nx, d=dx)
    dk = 1.0 / max(ny * dy, nx * dx)
    ring = np.rint(np.hypot(ky[:, None], kx[None, :]) / dk).astype(np.int64)
    # Highest non-Nyquist frequency of the finer axis: pysteps' range 0 … ceil(L/2) - 1.
    kmax = max((-(-ny // 2) - 1) / (ny * dy), (-(-nx // 2) - 1) / (nx * dx))
    return ring, round(kmax / dk), dk


def _spatial_psd_kernel(x: np.ndarray, ring: np.ndarray, r_max: int) -> np.ndarray:
    ny, nx = x.shape[-2:]
    lead = x.shape[:-2]
    x = np.asarray(x, dtype=np.float64).reshape(-1, ny, nx)
    x = x - x.mean(axis=(-2, -1), keepdims=True)
    power = np.abs(np.fft.fft2(x)) ** 2 / (ny * nx)
    nbin = r_max + 2  # rings 0 … R, and one bin for the corners beyond R
    idx = np.minimum(ring.reshape(-1), r_max + 1)
    rows = np.arange(power.shape[0])[:, None] * nbin
    sums = np.bincount(
        (rows + idx[None, :]).reshape(-1),
        weights=power.reshape(-1),
        minlength=power.shape[0] * nbin,
    ).reshape(-1, nbin)[:, 1 : r_max + 1]
    n_modes = np.bincount(idx, minlength=nbin)[1 : r_max + 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = sums / n_modes
    return out.reshape((*lead, r_max))


def spatial_psd(
    da: xr.DataArray,
    *,
    dims: Mapping[str, str] | None = None,
    dx: float | Sequence[float] | None = None,
) -> xr.DataArray:
    """Radially averaged power spectral density over (Y, X) (Fig. 4.3, left).

    Same convention as pysteps' ``rapsd``: P(k) is the mean of |F|² / N over the ring of
    modes with round(|k| / Δk) = r, F the 2-D DFT of the mean-removed frame and N its
    number of cells, so Σ over all modes of |F|² / N = N · var(frame) (Parseval). The mean
    ring (k = 0, removed) is left out. P is averaged over every other dimension (time,
    ``realization``, ...); frames containing NaN are left out of that average.

    Parameters
    ----------
    da
        Fields with Y and X axes.
    dims
        Axis overrides for :func:`~xdiffusion.io.axes.find_axes`.
    dx
        Grid spacing in km (or ``(dy, dx)``). Default: read from projection coordinates
        with units of m or km; otherwise wavenumbers are per grid cell.

    Returns
    -------
    xr.DataArray
        ``spatial_psd`` on dimension ``wavenumber`` (cycles per km, units ``km-1``, or
        cycles per cell, units ``1``) with coordinate ``wavenumber_modes``; units the
        square of ``da``'s. Lazy for dask input.
    """
    da = _check_da(da, "da")
    axes = find_axes(da, dims, require_time=False)
    ydim, xdim = axes["Y"], axes["X"]
    ny, nx = da.sizes[ydim], da.sizes[xdim]
    if ny < 2 or nx < 2:
        raise ValueError(f"da= needs at least 2 cells along {ydim!r} and {xdim!r} for a PSD")
    spacing = _spacing(da, axes, dx)
    dy_, dx_ = spacing if spacing is not None else (1.0, 1.0)
    ring, r_max, dk = _ring_geometry(ny, nx, dy_, dx_)
    if r_max < 1:
        raise ValueError(f"grid {ny}x{nx} is too small for a spectrum; use at least 3x3")
    src = da.variable.to_base_variable()
    src = xr.DataArray(src)
    if _is_dask(src):
        src = src.chunk({ydim: -1, xdim: -1})
    with xr.set_options(keep_attrs=False):
        psd = xr.apply_ufunc(
            _spatial_psd_kernel,
            src,
            kwargs={"ring": ring, "r_max": r_max},
            input_core_dims=[[ydim, xdim]],
            output_core_dims=[["wavenumber"]],
            dask="parallelized",
            dask_gufunc_kwargs={"output_sizes": {"wavenumber": r_max}},
            output_dtypes=[np.float64],
        )
        psd = _pool_mean(psd, ["wavenumber"])
    n_modes = np.bincount(np.minimum(ring.reshape(-1), r_max + 1), minlength=r_max + 2)
    k = np.arange(1, r_max + 1) * dk
    if spacing is not None:
        k_attrs = {"long_name": "radial wavenumber (cycles per km)", "units": "km-1"}
    else:
        k_attrs = {"long_name": "radial wavenumber (cycles per grid cell)", "units": "1"}
    psd = psd.assign_coords(
        wavenumber=("wavenumber", k, k_attrs),
        wavenumber_modes=(
            "wavenumber",
            n_modes[1 : r_max + 1].astype(np.int32),
            {"long_name": "number of Fourier modes in the ring", "units": "1"},
        ),
    )
    psd.name = "spatial_psd"
    psd.attrs = _with_units(
        {
            "long_name": f"radially averaged spatial power spectral density of {_describe(da)}",
            "comment": "pysteps rapsd convention: ring mean of |FFT|^2 / N of the "
            "mean-removed field; sum over all modes = N x spatial variance",
        },
        _units_power(da.attrs.get("units"), 2),
    )
    return _no_fill(psd)


def _time_step_hours(da: xr.DataArray, tdim: str) -> float | None:
    """Regular time step in hours (datetime64, timedelta64 or cftime), else None."""
    if tdim not in da.coords or da.sizes[tdim] < 2:
        return None
    v = np.asarray(da[tdim].values)
    if np.issubdtype(v.dtype, np.datetime64) or np.issubdtype(v.dtype, np.timedelta64):
        d = np.diff(v) / np.timedelta64(1, "h")
    elif v.dtype == object:
        try:
            d = np.asarray([(b - a).total_seconds() / 3600.0 for a, b in itertools.pairwise(v)])
        except (TypeError, AttributeError):
            return None
    else:
        return None
    if d[0] > 0 and np.allclose(d, d[0], rtol=1e-6, atol=0):
        return float(d[0])
    warnings.warn(
        f"time coordinate {tdim!r} is not regular; temporal frequencies are per time step",
        UserWarning,
        stacklevel=3,
    )
    return None


def _temporal_psd_kernel(x: np.ndarray, window: int) -> np.ndarray:
    nw = x.shape[-1] // window
    x = np.asarray(x[..., : nw * window], dtype=np.float64)
    x = x.reshape((*x.shape[:-1], nw, window))
    x = x - x.mean(axis=-1, keepdims=True)
    # For real series |F(f)| = |F(-f)|, so the mean over ±f is the one-sided value.
    return (np.abs(np.fft.rfft(x, axis=-1)) ** 2 / window)[..., 1:]


def _time_windows(
    da: xr.DataArray, dims: Mapping[str, str] | None, window: int | None
) -> tuple[str, int, int]:
    """The time dimension, its length and the window length (default: the whole series)."""
    axes = find_axes(da, dims, require_time=False)
    if "T" not in axes:
        raise ValueError(f"da= has no time axis among {list(da.dims)}; pass dims={{'T': '<name>'}}")
    tdim = axes["T"]
    nt = da.sizes[tdim]
    window = nt if window is None else int(window)
    if window < 2 or window > nt:
        raise ValueError(f"window={window} must be between 2 and the series length {nt}")
    return tdim, nt, window


def temporal_psd(
    da: xr.DataArray,
    *,
    dims: Mapping[str, str] | None = None,
    window: int | None = None,
    dt: float | None = None,
) -> xr.DataArray:
    """Power spectral density over time per cell, averaged over cells (Fig. 4.3, right).

    P(f) = |F(f)|² / n of each cell's mean-removed series of n steps (mean over ±f), for
    f = r / (n Δt), r = 1 … floor(n/2) (Nyquist included), so
    Σ_r P(r) · frequency_modes(r) = n · var(series) (Parseval). P is averaged over cells,
    ``realization``, any other dimension and windows; series containing NaN are left out
    of the average.

    Parameters
    ----------
    da
        Fields with a time axis.
    dims
        Axis overrides for :func:`~xdiffusion.io.axes.find_axes`.
    window
        Split the time axis into non-overlapping windows of this many steps (the remainder
        is dropped), e.g. the sample length when the reference is one long series.
    dt
        Time step in hours. Default: read from a regular datetime64/cftime coordinate;
        otherwise frequencies are per time step.

    Returns
    -------
    xr.DataArray
        ``temporal_psd`` on dimension ``frequency`` (units ``h-1``, or ``1`` per step)
        with coordinate ``frequency_modes``; units the square of ``da``'s. Lazy for dask
        input.
    """
    da = _check_da(da, "da")
    tdim, nt, window = _time_windows(da, dims, window)
    if dt is not None and not float(dt) > 0:
        raise ValueError(f"dt={dt!r} must be a positive time step in hours")
    step = float(dt) if dt is not None else _time_step_hours(da, tdim)
    nf = window // 2
    src = xr.DataArray(da.variable.to_base_variable())
    if _is_dask(src):
        src = src.chunk({tdim: -1})
    with xr.set_options(keep_attrs=False):
        psd = xr.apply_ufunc(
            _temporal_psd_kernel,
            src,
            kwargs={"window": window},
            input_core_dims=[[tdim]],
            output_core_dims=[["_psd_window", "frequency"]],
            dask="parallelized",
            dask_gufunc_kwargs={"output_sizes": {"_psd_window": nt // window, "frequency": nf}},
            output_dtypes=[np.float64],
        )
        psd = _pool_mean(psd, ["frequency"])
    r = np.arange(1, nf + 1)
    n_modes = np.where(2 * r == window, 1, 2).astype(np.int32)
    if step is not None:
        f = r / (window * step)
        f_attrs = {"long_name": "frequency (cycles per hour)", "units": "h-1"}
    else:
        f = r / window
        f_attrs = {"long_name": "frequency (cycles per time step)", "units": "1"}
    psd = psd.assign_coords(
        frequency=("frequency", f, f_attrs),
        frequency_modes=(
            "frequency",
            n_modes,
            {"long_name": "number of Fourier modes (+f and -f)", "units": "1"},
        ),
    )
    psd.name = "temporal_psd"
    psd.attrs = _with_units(
        {
            "long_name": f"temporal power spectral density of {_describe(da)}",
            "comment": "|FFT|^2 / n of each cell's mean-removed series, averaged over "
            f"cells and windows of {window} steps",
        },
        _units_power(da.attrs.get("units"), 2),
    )
    return _no_fill(psd)


def lag_autocorrelation(
    da: xr.DataArray,
    lags: Sequence[int] = (1, 2, 3),
    *,
    dims: Mapping[str, str] | None = None,
    window: int | None = None,
) -> xr.DataArray:
    """Correlation of values ``lag`` time steps apart, pooled over cells and samples.

    r(k) = Σ a_t a_{t+k} / sqrt(Σ a_t² · Σ a_{t+k}²) with a the anomaly from the mean of all
    finite values, the sums over every pair of steps k apart inside each series (each
    window of ``window`` steps, each cell, each ``realization``). The video model's
    temporal coherence in one number per lag: independent frames give ≈ 0. For
    precipitation pass ``np.sqrt(da)`` (or another transform) to keep a few extremes from
    dominating. Computed in memory.

    Parameters
    ----------
    da
        Fields with a time axis.
    lags
        Positive lags in time steps, each shorter than the series (or window).
    dims
        Axis overrides for :func:`~xdiffusion.io.axes.find_axes`.
    window
        Split the time axis into non-overlapping windows of this many steps first (pairs
        never cross a window's edge), e.g. the sample length when ``da`` is one long series.

    Returns
    -------
    xr.DataArray
        ``lag_autocorrelation`` on dimension ``lag`` (units ``1``).
    """
    da = _check_da(da, "da")
    tdim, nt, window = _time_windows(da, dims, window)
    lags = [int(k) for k in lags]
    if not lags or any(k < 1 or k >= window for k in lags):
        raise ValueError(f"lags={lags} must be positive and shorter than the window ({window})")
    x = np.moveaxis(np.asarray(da.values, dtype=np.float64), da.dims.index(tdim), -1)
    x = x[..., : (nt // window) * window].reshape(*x.shape[:-1], nt // window, window)
    x = x - np.nanmean(x)
    out = []
    for k in lags:
        a, b = x[..., :-k], x[..., k:]
        ok = np.isfinite(a) & np.isfinite(b)
        a, b = np.where(ok, a, 0.0), np.where(ok, b, 0.0)
        out.append(float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum())))
    return xr.DataArray(
        np.asarray(out),
        dims="lag",
        coords={"lag": ("lag", np.asarray(lags), {"long_name": "lag", "units": "time steps"})},
        name="lag_autocorrelation",
        attrs={
            "long_name": f"lag autocorrelation of {_describe(da)}",
            "units": "1",
            "comment": f"anomalies from the overall mean, pooled over cells, samples and "
            f"windows of {window} steps",
        },
    )


# ------------------------------------------------------------------------- quantiles
