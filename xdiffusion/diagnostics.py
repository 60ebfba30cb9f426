"""Diagnostics of generated fields against a reference: the evaluation of Chapter 4 of the seed.

xarray in, xarray out; no torch. Everything that can stay lazy on dask input does (spectra,
histograms with given bins, quantiles, bias, scores); what cannot is said in the docstring.
Outputs are built fresh: a PSD never inherits the input's ``units: mm h-1``. Values are
pooled over every dimension that the diagnostic does not keep, so an ensemble dimension
``realization`` (or any other sample dimension) is simply more data.

Conventions
-----------
- Frequency density (Fig. 4.2): counts / (number of finite values × bin width), units the
  inverse of the input's; ``log=True`` gives log10 of it (units ``1``, empty bins NaN).
- Spectra (Fig. 4.3): pysteps' ``rapsd`` convention. P = |F|² / N of the mean-removed field
  (F its DFT, N its number of cells), so by Parseval Σ_modes P = Σ (x − x̄)² = N · var(x);
  units are the input's squared. The spatial PSD averages P over rings round(|k| / Δk) = r,
  r = 1 … ceil(L/2) − 1 (L the longer side, Δk = 1 / its length); the temporal one over
  ±f, up to and including the Nyquist frequency. The coordinates ``wavenumber_modes`` and
  ``frequency_modes`` count the modes of each ring, so Σ_r P(r) · modes(r) gives back
  N · var(x) (up to the spatial corners beyond the last ring).
- Quantiles (Fig. 4.4): the seed's set Q = {1 − 10^−n1 + n2 · 10^−(n1+1)}, n1 = 1 … 7,
  n2 = 1 … 9 (0.91 … 0.9999999, as in the reference notebooks), linear interpolation.
"""

from __future__ import annotations

import itertools
import re
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr

from xdiffusion._version import __version__
from xdiffusion.io.axes import find_axes
from xdiffusion.io.cf import CONVENTIONS, history_line

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


def _bin_edges(
    arrays: Sequence[xr.DataArray],
    bins: int | Sequence[float] | np.ndarray | None,
    low_end: bool,
    value_range: tuple[float, float] | None,
) -> np.ndarray:
    if bins is not None and not isinstance(bins, int | np.integer):
        edges = np.asarray(bins, dtype=float)
        if edges.ndim != 1 or edges.size < 2 or not np.all(np.isfinite(edges)):
            raise ValueError("bins= must be an int or a 1-D sequence of at least 2 finite edges")
        if np.any(np.diff(edges) <= 0):
            raise ValueError("bins= edges must be strictly increasing")
        return edges
    n = int(bins) if bins is not None else (50 if low_end else 100)
    if n < 1:
        raise ValueError(f"bins={n} must be at least 1")
    if value_range is not None:
        lo, hi = (float(v) for v in value_range)
        if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
            raise ValueError(f"value_range={value_range!r} must be (low, high) with low < high")
    elif low_end:
        lo, hi = 0.0, 0.5
    else:
        import dask

        stats = dask.compute(*[f(a) for a in arrays for f in (xr.DataArray.min, xr.DataArray.max)])
        vals = np.asarray([float(s) for s in stats])
        if not np.any(np.isfinite(vals)):
            raise ValueError("the input has no finite values to bin")
        lo, hi = float(np.nanmin(vals)), float(np.nanmax(vals))
        if hi <= lo:
            hi = lo + 1.0
    return np.linspace(lo, hi, n + 1)


def histogram(
    da: xr.DataArray,
    bins: int | Sequence[float] | np.ndarray | None = None,
    *,
    log: bool = True,
    low_end: bool = False,
    value_range: tuple[float, float] | None = None,
    dims: Mapping[str, str] | None = None,
) -> xr.DataArray:
    """Frequency density of all values of ``da`` (Fig. 4.2 of the seed).

    Parameters
    ----------
    da
        Values, pooled over every dimension (time, space, ``realization``, ...).
    bins
        Number of equal-width bins (default 100, or 50 with ``low_end``) or the bin edges.
    log
        Return log10 of the density (units ``1``; empty bins are NaN, not −inf).
    low_end
        Fine view of the low end: bins over [0, 0.5] in the data's units (0.5 mm h-1 for
        precipitation in mm h-1), where the seed sees sampling noise (Fig. 4.2a).
    value_range
        (low, high) of equal-width bins; default [0, 0.5] with ``low_end``, else the data's
        minimum and maximum (computed at once, even for dask input).
    dims
        Only checked against ``da`` if given: values are pooled over all dimensions.

    Returns
    -------
    xr.DataArray
        Density on dimension ``bin`` (bin centres, units of ``da``) with coordinates
        ``bin_lower`` and ``bin_upper``. The density is counts / (number of finite values ×
        bin width): values outside the bins count in the total, so a ``low_end`` view lies
        on the full one. Units: the inverse of ``da``'s (``(mm h-1)-1``), or ``1`` for
        log10. Lazy for dask input when the bins are known (``bins`` edges, ``value_range``
        or ``low_end``).
    """
    da = _check_da(da, "da")
    _validate_dims(da, dims)
    edges = _bin_edges([da], bins, low_end, value_range)
    flat = da.data.reshape(-1)
    if _is_dask(da):
        import dask.array as dsa

        counts, _ = dsa.histogram(flat, bins=edges)
        total = dsa.isfinite(flat).sum()
    else:
        # NaN falls outside every bin, so np.histogram skips it
        counts, _ = np.histogram(np.asarray(flat, dtype=float), bins=edges)
        total = np.isfinite(flat).sum()
    density = counts / (total * np.diff(edges))
    units = da.attrs.get("units")
    if log:
        density = np.log10(np.where(density > 0, density, np.nan))
        attrs = {"long_name": "log10 of frequency density", "units": "1"}
    else:
        attrs = _with_units({"long_name": "frequency density"}, _units_power(units, -1))
    attrs["comment"] = "counts / (number of finite values x bin width), pooled over all dimensions"
    centre_attrs = _with_units({"long_name": f"{_describe(da)} (bin centre)"}, units)
    coords = {
        "bin": ("bin", 0.5 * (edges[:-1] + edges[1:]), centre_attrs),
        "bin_lower": ("bin", edges[:-1], _with_units({"long_name": "lower bin edge"}, units)),
        "bin_upper": ("bin", edges[1:], _with_units({"long_name": "upper bin edge"}, units)),
    }
    name = "log10_frequency_density" if log else "frequency_density"
    return _no_fill(xr.DataArray(density, dims=("bin",), coords=coords, name=name, attrs=attrs))


# -------------------------------------------------------------------------- spectra


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
    axes = find_axes(da, dims, require_time=False)
    if "T" not in axes:
        raise ValueError(f"da= has no time axis among {list(da.dims)}; pass dims={{'T': '<name>'}}")
    tdim = axes["T"]
    nt = da.sizes[tdim]
    window = nt if window is None else int(window)
    if window < 2 or window > nt:
        raise ValueError(f"window={window} must be between 2 and the series length {nt}")
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


# ------------------------------------------------------------------------- quantiles


def seed_quantiles(max_order: int = 7) -> np.ndarray:
    """The seed's quantile set Q = {1 − 10^−n1 + n2 · 10^−(n1+1)} (Fig. 4.4).

    n1 = 1 … ``max_order`` and n2 = 1 … 9: 0.91, 0.92, …, 0.99, 0.991, …, 1 − 10^−(max_order+1)
    (63 levels by default, as in the seed's notebooks).
    """
    if int(max_order) < 1:
        raise ValueError(f"max_order={max_order} must be at least 1")
    n1 = np.arange(1, int(max_order) + 1)[:, None]
    n2 = np.arange(1, 10)[None, :]
    return (1.0 - 10.0 ** (-n1) + n2 * 10.0 ** (-(n1 + 1))).reshape(-1)


def _pooled_quantiles(da: xr.DataArray, q: np.ndarray) -> xr.DataArray:
    src = xr.DataArray(da.variable.to_base_variable())
    if _is_dask(src):
        src = src.chunk(dict.fromkeys(src.dims, -1))

    def _kernel(a: np.ndarray) -> np.ndarray:
        return np.nanquantile(np.asarray(a, dtype=np.float64).reshape(-1), q)

    with xr.set_options(keep_attrs=False):
        return xr.apply_ufunc(
            _kernel,
            src,
            input_core_dims=[list(src.dims)],
            output_core_dims=[["quantile"]],
            dask="parallelized",
            dask_gufunc_kwargs={"output_sizes": {"quantile": q.size}},
            output_dtypes=[np.float64],
        )


def qq(
    da: xr.DataArray,
    reference: xr.DataArray,
    quantiles: Sequence[float] | np.ndarray | None = None,
    *,
    dims: Mapping[str, str] | None = None,
) -> xr.Dataset:
    """Quantiles of all values of ``da`` and ``reference`` (Fig. 4.4 of the seed).

    Parameters
    ----------
    da, reference
        Samples and reference, each pooled over all dimensions (NaN skipped).
    quantiles
        Probability levels in [0, 1]; default :func:`seed_quantiles` (0.91 … 0.9999999).
        Levels above 1 − 1/(number of values) interpolate towards the maximum.
    dims
        Only checked against both inputs if given.

    Returns
    -------
    xr.Dataset
        On dimension ``quantile``: ``sample``, ``reference`` (units of the inputs) and
        ``relative_error`` = (sample − reference) / reference (NaN where the reference
        quantile is 0). Exact quantiles need every value at once: for dask input the
        result is lazy but computing it loads each input whole.
    """
    da = _check_da(da, "da")
    reference = _check_da(reference, "reference")
    _validate_dims(da, dims)
    _validate_dims(reference, dims)
    q = seed_quantiles() if quantiles is None else np.asarray(quantiles, dtype=float)
    if q.ndim != 1 or q.size == 0 or np.any(~np.isfinite(q)) or np.any((q < 0) | (q > 1)):
        raise ValueError("quantiles= must be a non-empty 1-D sequence of levels in [0, 1]")
    ua, ur = da.attrs.get("units"), reference.attrs.get("units")
    if ua is not None and ur is not None and str(ua) != str(ur):
        warnings.warn(
            f"da has units {ua!r} but reference has {ur!r}; convert one first",
            UserWarning,
            stacklevel=2,
        )
    s, r = _pooled_quantiles(da, q), _pooled_quantiles(reference, q)
    with xr.set_options(keep_attrs=False):
        rel = ((s - r) / r.where(r != 0)).rename("relative_error")
    ds = xr.Dataset(
        {
            "sample": s.assign_attrs(
                _with_units({"long_name": f"quantile of sample {_describe(da)}"}, ua)
            ),
            "reference": r.assign_attrs(
                _with_units({"long_name": f"quantile of reference {_describe(reference)}"}, ur)
            ),
            "relative_error": rel.assign_attrs(
                {
                    "long_name": "relative error of sample quantiles",
                    "units": "1",
                    "comment": "(sample - reference) / reference; NaN where reference is 0",
                }
            ),
        },
        coords={"quantile": ("quantile", q, {"long_name": "probability level", "units": "1"})},
    )
    return _no_fill(ds)


# ------------------------------------------------------------------------------ bias


def _matched_grids(
    da: xr.DataArray, reference: xr.DataArray, dims: Mapping[str, str] | None
) -> tuple[xr.DataArray, xr.DataArray, str, str]:
    """``reference`` with its Y, X renamed to ``da``'s, checked to be on the same grid."""
    a = find_axes(da, dims, require_time=False)
    b = find_axes(reference, dims, require_time=False)
    ref = (
        reference.rename({b["Y"]: a["Y"], b["X"]: a["X"]})
        if ((b["Y"], b["X"]) != (a["Y"], a["X"]))
        else reference
    )
    for d in (a["Y"], a["X"]):
        if da.sizes[d] != ref.sizes[d]:
            raise ValueError(
                f"da and reference grids differ along {d!r} ({da.sizes[d]} vs {ref.sizes[d]} "
                "cells); regrid the reference to the samples' grid first"
            )
        if d in da.indexes and d in ref.indexes and not da.indexes[d].equals(ref.indexes[d]):
            if np.allclose(np.asarray(da[d], float), np.asarray(ref[d], float)):
                ref = ref.assign_coords({d: da[d]})
            else:
                raise ValueError(
                    f"da and reference have different {d!r} coordinates; "
                    "put both on the same grid first"
                )
    return da, ref, a["Y"], a["X"]


def mean_normalised_bias(
    da: xr.DataArray,
    reference: xr.DataArray,
    *,
    dims: Mapping[str, str] | None = None,
) -> xr.Dataset:
    """Mean-normalised bias per cell (Fig. 4.12 of the seed) and its mean absolute value.

    b = (mean_sample − mean_reference) / mean_reference, the means over every dimension
    but Y and X (time, ``realization``, ...). The seed reports a mean |b| of 0.31 (square
    root transform) and 0.23 (learned transform) on UKCP18.

    Parameters
    ----------
    da, reference
        Samples and reference on the same (Y, X) grid.
    dims
        Axis overrides for :func:`~xdiffusion.io.axes.find_axes`.

    Returns
    -------
    xr.Dataset
        ``mean_normalised_bias`` (Y, X), NaN where the reference mean is 0 (the ratio is
        undefined there), and ``mean_abs_mean_normalised_bias`` (0-d, mean of |b| over the
        other cells). Lazy for dask input.
    """
    da = _check_da(da, "da")
    reference = _check_da(reference, "reference")
    da, ref, ydim, xdim = _matched_grids(da, reference, dims)
    with xr.set_options(keep_attrs=False):
        ms = _pool_mean(da, [ydim, xdim])
        mr = _pool_mean(ref, [ydim, xdim])
        bias = ((ms - mr) / mr.where(mr != 0)).transpose(ydim, xdim)
        extra = [
            c
            for c in bias.coords
            if c not in bias.dims and (bias[c].ndim == 0 or not set(bias[c].dims) <= {ydim, xdim})
        ]
        bias = bias.reset_coords(extra, drop=True)
        scalar = abs(bias).mean(skipna=True)
    bias.attrs = {
        "long_name": "mean-normalised bias",
        "units": "1",
        "comment": "(sample mean - reference mean) / reference mean over all but the "
        "grid dimensions; NaN where the reference mean is 0",
    }
    scalar = scalar.reset_coords(drop=True)
    scalar.attrs = {"long_name": "mean absolute mean-normalised bias", "units": "1"}
    return xr.Dataset({"mean_normalised_bias": bias, "mean_abs_mean_normalised_bias": scalar})


# ------------------------------------------------------------------- ensemble scores


def _check_ensemble(
    ens: xr.DataArray, obs: xr.DataArray, member_dim: str
) -> tuple[xr.DataArray, xr.DataArray]:
    ens = _check_da(ens, "ens")
    obs = _check_da(obs, "obs")
    if member_dim not in ens.dims:
        raise ValueError(
            f"ens= has no member dimension {member_dim!r} among {list(ens.dims)}; "
            "pass member_dim=<name>"
        )
    if member_dim in obs.dims:
        raise ValueError(
            f"obs= has the member dimension {member_dim!r}; pass one observation per point"
        )
    expected = set(ens.dims) - {member_dim}
    if set(obs.dims) != expected:
        raise ValueError(
            f"obs= dimensions {sorted(map(str, obs.dims))} must be those of ens without "
            f"{member_dim!r}: {sorted(map(str, expected))}"
        )
    try:
        ens, obs = xr.align(ens, obs, join="exact", exclude=[member_dim])
    except ValueError as err:
        raise ValueError(
            f"obs= and ens= coordinates differ ({err}); select matching times and cells"
        ) from None
    return ens, obs


def _crps_kernel(x: np.ndarray, y: np.ndarray, fair: bool) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    m = x.shape[-1]
    skill = np.mean(np.abs(x - np.asarray(y, dtype=np.float64)[..., None]), axis=-1)
    # Σ_i Σ_j |x_i − x_j| = 2 Σ_i (2i − m − 1) x_(i) over the sorted members
    w = 2.0 * np.arange(1, m + 1) - m - 1
    pairs = 2.0 * np.sum(w * np.sort(x, axis=-1), axis=-1)
    return skill - 0.5 * pairs / (m * (m - 1) if fair else m * m)


def crps(
    ens: xr.DataArray,
    obs: xr.DataArray,
    *,
    member_dim: str = MEMBER_DIM,
    fair: bool = False,
    dims: Mapping[str, str] | None = None,
) -> xr.DataArray:
    """Continuous ranked probability score of an ensemble at every point.

    Kernel form: CRPS = (1/m) Σ_i |X_i − y| − 1/(2 m²) Σ_i Σ_j |X_i − X_j| (the CRPS of the
    ensemble's empirical distribution); ``fair=True`` uses 1/(2 m (m − 1)) for the second
    term, the unbiased estimate of the CRPS of the distribution the members are drawn
    from (Ferro 2014).

    Parameters
    ----------
    ens
        Ensemble with member dimension ``member_dim`` (m members).
    obs
        Observations with the dimensions of ``ens`` but ``member_dim``, on the same
        coordinates.
    member_dim
        Name of the ensemble dimension.
    fair
        Use the fair estimator (needs m ≥ 2).
    dims
        Only checked against ``ens`` if given.

    Returns
    -------
    xr.DataArray
        CRPS per point (dimensions of ``obs``), in the units of ``obs``; NaN where any
        member or the observation is NaN. Lazy for dask input.
    """
    ens, obs = _check_ensemble(ens, obs, member_dim)
    _validate_dims(ens, dims)
    if fair and ens.sizes[member_dim] < 2:
        raise ValueError("fair=True needs at least 2 ensemble members")
    if _is_dask(ens):
        ens = ens.chunk({member_dim: -1})
    with xr.set_options(keep_attrs=False):
        score = xr.apply_ufunc(
            _crps_kernel,
            ens,
            obs,
            kwargs={"fair": fair},
            input_core_dims=[[member_dim], []],
            dask="parallelized",
            output_dtypes=[np.float64],
        )
    score.name = "crps_fair" if fair else "crps"
    score.attrs = _with_units(
        {
            "long_name": ("fair " if fair else "") + "continuous ranked probability score",
            "comment": "mean|X-y| - sum|X-X'| / (2 "
            + ("m(m-1)" if fair else "m^2")
            + ") over the ensemble members X",
        },
        obs.attrs.get("units") or ens.attrs.get("units"),
    )
    return score


def rank_histogram(
    ens: xr.DataArray,
    obs: xr.DataArray,
    *,
    member_dim: str = MEMBER_DIM,
    normalize: bool = True,
    dims: Mapping[str, str] | None = None,
) -> xr.DataArray:
    """Rank histogram (Talagrand diagram) of observations within the ensemble.

    The rank of y among m members is the number of members below it, 0 … m. Ties (common
    for precipitation: dry members and a dry observation) are split evenly: an observation
    equal to e members and above l of them adds 1/(e + 1) to each of ranks l … l + e, the
    expectation of random tie-breaking, deterministic and independent of chunking.

    Parameters
    ----------
    ens, obs
        As in :func:`crps`. Points with any NaN are skipped.
    member_dim
        Name of the ensemble dimension.
    normalize
        Return relative frequencies (sum 1; a calibrated ensemble gives 1/(m + 1) each)
        rather than counts.
    dims
        Only checked against ``ens`` if given.

    Returns
    -------
    xr.DataArray
        ``rank_histogram`` on dimension ``rank`` (0 … m). Lazy for dask input.
    """
    ens, obs = _check_ensemble(ens, obs, member_dim)
    _validate_dims(ens, dims)
    m = ens.sizes[member_dim]
    with xr.set_options(keep_attrs=False):
        n_less = (ens < obs).sum(member_dim)
        n_equal = (ens == obs).sum(member_dim)
        valid = obs.notnull() & ens.notnull().all(member_dim)
        code = (n_less * (m + 1) + n_equal).where(valid, 0).astype(np.int64)
    codes, weights = code.data.reshape(-1), valid.data.reshape(-1).astype(np.float64)
    if _is_dask(code) or _is_dask(valid):
        import dask.array as dsa

        pairs = dsa.bincount(
            dsa.asarray(codes), weights=dsa.asarray(weights), minlength=(m + 1) ** 2
        )
    else:
        pairs = np.bincount(codes, weights=weights, minlength=(m + 1) ** 2)
    # (less, equal) pair counts → ranks, each pair spread over its tied ranks
    spread = np.zeros(((m + 1) ** 2, m + 1))
    for lo in range(m + 1):
        for eq in range(m + 1 - lo):
            spread[lo * (m + 1) + eq, lo : lo + eq + 1] = 1.0 / (eq + 1)
    hist = pairs @ spread
    if normalize:
        hist = hist / hist.sum()
    attrs = {
        "long_name": "relative frequency of observation rank"
        if normalize
        else "number of observations per rank",
        "units": "1",
        "comment": "ties between observation and members split evenly over the tied ranks",
    }
    rank_attrs = {"long_name": "rank of the observation among the ensemble members", "units": "1"}
    return xr.DataArray(
        hist,
        dims=("rank",),
        coords={"rank": ("rank", np.arange(m + 1, dtype=np.int32), rank_attrs)},
        name="rank_histogram",
        attrs=attrs,
    )


def spread_skill(
    ens: xr.DataArray,
    obs: xr.DataArray,
    *,
    member_dim: str = MEMBER_DIM,
    dims: Mapping[str, str] | None = None,
) -> xr.Dataset:
    """Ensemble spread against the error of the ensemble mean.

    spread = sqrt(mean over points of the unbiased member variance s²), RMSE = sqrt(mean
    (x̄ − y)²) and ratio = sqrt((m + 1)/m) · spread / RMSE. For a calibrated ensemble
    (y exchangeable with the members) E(x̄ − y)² = (m + 1)/m · E s², so the ratio is 1;
    below 1 the ensemble is under-dispersive (Fortin et al. 2014).

    Parameters
    ----------
    ens, obs
        As in :func:`crps`. Points with any NaN are skipped.
    member_dim
        Name of the ensemble dimension (m ≥ 2 members).
    dims
        Only checked against ``ens`` if given.

    Returns
    -------
    xr.Dataset
        0-d ``ensemble_spread``, ``ensemble_mean_rmse`` (units of ``obs``) and
        ``spread_skill_ratio``. Lazy for dask input.
    """
    ens, obs = _check_ensemble(ens, obs, member_dim)
    _validate_dims(ens, dims)
    m = ens.sizes[member_dim]
    if m < 2:
        raise ValueError("spread_skill needs at least 2 ensemble members")
    with xr.set_options(keep_attrs=False):
        valid = obs.notnull() & ens.notnull().all(member_dim)
        var = ens.var(member_dim, ddof=1).where(valid)
        err2 = ((ens.mean(member_dim) - obs) ** 2).where(valid)
        spread = np.sqrt(var.mean()).reset_coords(drop=True)
        rmse = np.sqrt(err2.mean()).reset_coords(drop=True)
        ratio = np.sqrt((m + 1) / m) * spread / rmse
    units = obs.attrs.get("units") or ens.attrs.get("units")
    spread.attrs = _with_units(
        {"long_name": "ensemble spread (root mean unbiased member variance)"}, units
    )
    rmse.attrs = _with_units({"long_name": "root mean square error of the ensemble mean"}, units)
    ratio.attrs = {
        "long_name": "spread-skill ratio",
        "units": "1",
        "comment": "sqrt((m+1)/m) x spread / RMSE; 1 for a calibrated ensemble",
    }
    return xr.Dataset(
        {"ensemble_spread": spread, "ensemble_mean_rmse": rmse, "spread_skill_ratio": ratio}
    )


# -------------------------------------------------------------------------- evaluate


def _mean_abs_log10_ratio(a: xr.DataArray, b: xr.DataArray) -> xr.DataArray:
    with xr.set_options(keep_attrs=False):
        ok = (a > 0) & (b > 0)
        out = abs(np.log10(a.where(ok) / b.where(ok))).mean(skipna=True)
    return out.reset_coords(drop=True)


def _common(name: str, a: object, b: object) -> object:
    """One value for both inputs: equal, or the one that is known."""
    if a is None or b is None:
        return b if a is None else a
    if not np.allclose(np.asarray(a, float), np.asarray(b, float), rtol=1e-6):
        raise ValueError(
            f"samples and reference have different {name} ({a} vs {b}); "
            "put them on the same grid and time step first"
        )
    return a


def evaluate(
    samples: xr.DataArray,
    reference: xr.DataArray,
    *,
    observations: xr.DataArray | None = None,
    dims: Mapping[str, str] | None = None,
    member_dim: str = MEMBER_DIM,
) -> xr.Dataset:
    """All diagnostics of generated ``samples`` against ``reference`` in one Dataset.

    Parameters
    ----------
    samples
        Generated fields (T, Y, X), usually with a ``realization`` dimension (pooled over).
    reference
        Reference fields on the same grid (time axis and length may differ; with or
        without ``realization``).
    observations
        Optional observations aligned with ``samples`` but without ``member_dim`` (e.g.
        the truth behind a forecast or downscaling ensemble): adds CRPS (standard and
        fair), the rank histogram and the spread-skill ratio.
    dims
        Axis overrides for :func:`~xdiffusion.io.axes.find_axes`, used for all inputs.
    member_dim
        Name of the ensemble dimension.

    Returns
    -------
    xr.Dataset
        ``spatial_psd_*``, ``temporal_psd_*`` (the temporal PSD over windows of the shorter
        series' length), ``histogram_*`` (full range, dimension ``bin``), ``histogram_low_*``
        ([0, 0.5], dimension ``bin_low``), ``qq_sample``, ``qq_reference``,
        ``qq_relative_error_by_quantile``, ``mean_normalised_bias``, where ``*`` is
        ``sample`` or ``reference``; 0-d summaries ``psd_log_error`` and
        ``temporal_psd_log_error`` (mean |log10(P_sample / P_reference)|),
        ``qq_relative_error`` (mean |relative error| over the quantiles),
        ``mean_abs_mean_normalised_bias``; with ``observations`` also ``crps``,
        ``crps_fair`` (means over points), ``rank_histogram``, ``ensemble_spread``,
        ``ensemble_mean_rmse`` and ``spread_skill_ratio``. Lazy for dask input except the
        range of the full histogram (computed at once).
    """
    samples = _check_da(samples, "samples")
    reference = _check_da(reference, "reference")
    out: dict[str, xr.DataArray] = {}

    sa = find_axes(samples, dims, require_time=False)
    ra = find_axes(reference, dims, require_time=False)
    samples, reference, _, _ = _matched_grids(samples, reference, dims)
    ra = {**ra, "Y": sa["Y"], "X": sa["X"]}
    spacing = _common("grid spacings", _spacing(samples, sa, None), _spacing(reference, ra, None))
    for key, da in (("sample", samples), ("reference", reference)):
        out[f"spatial_psd_{key}"] = spatial_psd(da, dims=sa if da is samples else ra, dx=spacing)
    out["psd_log_error"] = _mean_abs_log10_ratio(
        out["spatial_psd_sample"], out["spatial_psd_reference"]
    ).assign_attrs(
        long_name="mean absolute log10 ratio of spatial PSDs (sample / reference)", units="1"
    )

    if "T" in sa and "T" in ra and min(samples.sizes[sa["T"]], reference.sizes[ra["T"]]) >= 2:
        window = min(samples.sizes[sa["T"]], reference.sizes[ra["T"]])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dt = _common(
                "time steps",
                _time_step_hours(samples, sa["T"]),
                _time_step_hours(reference, ra["T"]),
            )
        out["temporal_psd_sample"] = temporal_psd(samples, dims=sa, window=window, dt=dt)
        out["temporal_psd_reference"] = temporal_psd(reference, dims=ra, window=window, dt=dt)
        out["temporal_psd_log_error"] = _mean_abs_log10_ratio(
            out["temporal_psd_sample"], out["temporal_psd_reference"]
        ).assign_attrs(
            long_name="mean absolute log10 ratio of temporal PSDs (sample / reference)",
            units="1",
        )

    edges = _bin_edges([samples, reference], None, False, None)
    low = _bin_edges([samples, reference], None, True, None)
    low_names = {"bin": "bin_low", "bin_lower": "bin_low_lower", "bin_upper": "bin_low_upper"}
    for key, da in (("sample", samples), ("reference", reference)):
        out[f"histogram_{key}"] = histogram(da, edges, log=False)
        out[f"histogram_low_{key}"] = histogram(da, low, log=False).rename(low_names)

    q = qq(samples, reference)
    out["qq_sample"] = q["sample"]
    out["qq_reference"] = q["reference"]
    out["qq_relative_error_by_quantile"] = q["relative_error"]
    with xr.set_options(keep_attrs=False):
        qerr = abs(q["relative_error"]).mean(skipna=True)
    out["qq_relative_error"] = qerr.assign_attrs(
        long_name="mean absolute relative error of sample quantiles", units="1"
    )

    out.update(mean_normalised_bias(samples, reference, dims=sa).data_vars)

    if observations is not None:
        observations = _check_da(observations, "observations")
        for fair in (False, True):
            c = crps(samples, observations, member_dim=member_dim, fair=fair)
            with xr.set_options(keep_attrs=False):
                mean = c.mean(skipna=True).reset_coords(drop=True)
            out[str(c.name)] = mean.assign_attrs(
                {**c.attrs, "long_name": f"mean {c.attrs['long_name']} over all points"}
            )
        out["rank_histogram"] = rank_histogram(samples, observations, member_dim=member_dim)
        out.update(spread_skill(samples, observations, member_dim=member_dim).data_vars)

    # shallow copy: fresh encodings, so the inputs' coordinates are not touched
    ds = _no_fill(xr.Dataset({k: v.rename(k) for k, v in out.items()}).copy())
    ds.attrs = {
        "title": "xdiffusion evaluation of generated samples against a reference",
        "Conventions": CONVENTIONS,
        "source": f"xdiffusion {__version__}",
        "history": history_line(
            "evaluate", {"observations": observations is not None, "dims": dims}
        ),
    }
    return ds
