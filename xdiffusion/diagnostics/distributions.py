"""Distributions: frequency-density histograms, quantiles on Herbert (2023)'s set Q (QQ), and the
mean-normalised bias map (Figs. 4.2, 4.4, 4.5 of Herbert (2023)).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr

from xdiffusion.diagnostics._util import (
    _check_da,
    _describe,
    _is_dask,
    _no_fill,
    _pool_mean,
    _units_power,
    _validate_dims,
    _with_units,
)
from xdiffusion.io.axes import find_axes
from xdiffusion.validation import is_int

__all__ = ["LOW_END_QUANTILE", "histogram", "mean_normalised_bias", "qq", "seed_quantiles"]

#: The low-end histogram covers [minimum, this quantile] of the values: for hourly
#: precipitation in mm h-1 (70-80 % dry) about [0, 0.5 mm h-1], the range of Herbert (2023)'s
#: Fig. 4.2a, and the same share of the distribution in any other units or variable.
LOW_END_QUANTILE = 0.9
# tried in turn when the data are so concentrated that a quantile equals the minimum
_LOW_END_FALLBACKS = (LOW_END_QUANTILE, 0.99, 1.0)


def _low_end_range(arrays: Sequence[xr.DataArray], labels: Sequence[str]) -> tuple[float, float]:
    """[minimum, LOW_END_QUANTILE quantile] of the values, the larger quantile of the arrays.

    Computed at once (also for dask input), like the range of the full histogram.
    """
    import dask

    levels = np.array([0.0, *_LOW_END_FALLBACKS])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN input: handled below
        found = dask.compute(*[_pooled_quantiles(a, levels) for a in arrays])
    table = np.asarray([np.asarray(f, dtype=float) for f in found])  # (array, level)
    if not np.isfinite(table).any():
        raise ValueError(f"no finite values to bin in {' and '.join(labels)}")
    lo = float(np.nanmin(table[:, 0]))
    if not np.isfinite(lo):
        raise ValueError(
            f"infinite values in {' and '.join(labels)}: the low end of the histogram has no "
            "finite range; replace them with NaN first, e.g. da.where(np.isfinite(da)), or "
            "pass value_range="
        )
    for k in range(1, levels.size):
        hi = float(np.nanmax(table[:, k]))
        if np.isfinite(hi) and hi > lo:
            return lo, hi
    return lo, lo + 1.0


def _bin_edges(
    arrays: Sequence[xr.DataArray],
    bins: int | Sequence[float] | np.ndarray | None,
    low_end: bool,
    value_range: tuple[float, float] | None,
    names: Sequence[str] | None = None,
) -> np.ndarray:
    """Bin edges: ``bins`` edges as given, or ``bins`` equal bins over the range.

    ``names`` (one argument name per array) are used in the messages about the data.
    """
    if bins is not None and not is_int(bins):
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
        labels = list(names) if names is not None else [f"input {i}" for i in range(len(arrays))]
        lo, hi = _low_end_range(arrays, labels)
    else:
        import dask

        stats = dask.compute(*[f(a) for a in arrays for f in (xr.DataArray.min, xr.DataArray.max)])
        vals = np.asarray([float(s) for s in stats])
        labels = list(names) if names is not None else [f"input {i}" for i in range(len(arrays))]
        if not np.any(np.isfinite(vals)):
            raise ValueError(f"no finite values to bin in {' and '.join(labels)}")
        bad = [labels[i // 2] for i in np.flatnonzero(np.isinf(vals))]
        if bad:
            raise ValueError(
                f"infinite values in {' and '.join(dict.fromkeys(bad))}: a histogram over the "
                "data's range has no finite bins; replace them with NaN first, e.g. "
                "da.where(np.isfinite(da))"
            )
        lo, hi = float(np.nanmin(vals)), float(np.nanmax(vals))
        if hi <= lo:
            hi = lo + 1.0
        if not np.isfinite(hi - lo):
            raise ValueError(
                f"the values of {' and '.join(labels)} span [{lo:g}, {hi:g}], too wide to "
                "bin in float64; rescale them (e.g. other units) first"
            )
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
    """Frequency density of all values of ``da`` (Fig. 4.2 of Herbert (2023)).

    Parameters
    ----------
    da
        Values, pooled over every dimension (time, space, ``realization``, ...).
    bins
        Number of equal-width bins (default 100, or 50 with ``low_end``) or the bin edges.
    log
        Return log10 of the density (units ``1``; empty bins are NaN, not −inf).
    low_end
        Fine view of the low end, where Herbert (2023) sees sampling noise (Fig. 4.2a): bins
        over [minimum, :data:`LOW_END_QUANTILE` (0.9) quantile] of the values, so the range
        follows the data's units and distribution (about [0, 0.5] for hourly precipitation
        in mm h-1, Herbert's range; × 1/3600 in kg m-2 s-1). Pass ``value_range=(0, 0.5)``
        for a fixed range.
    value_range
        (low, high) of equal-width bins; default the minimum and the 0.9 quantile with
        ``low_end`` (a larger quantile if that equals the minimum), else the data's minimum
        and maximum (computed at once, even for dask input).
    dims
        Only checked against ``da`` if given: values are pooled over all dimensions.

    Returns
    -------
    xr.DataArray
        Density on dimension ``bin`` (bin centres, units of ``da``) with coordinates
        ``bin_lower`` and ``bin_upper``. The density is counts / (number of finite values ×
        bin width): values outside the bins count in the total, so a ``low_end`` view lies
        on the full one. Units: the inverse of ``da``'s (``(mm h-1)-1``), or ``1`` for
        log10. Lazy for dask input when the bins are known (``bins`` edges or
        ``value_range``).
    """
    da = _check_da(da, "da")
    _validate_dims(da, dims)
    edges = _bin_edges([da], bins, low_end, value_range, names=["da"])
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


def seed_quantiles(max_order: int = 7) -> np.ndarray:
    """Herbert (2023)'s quantile set Q = {1 − 10^−n1 + n2 · 10^−(n1+1)} (Fig. 4.4).

    n1 = 1 … ``max_order`` and n2 = 1 … 9: 0.91, 0.92, …, 0.99, 0.991, …, 1 − 10^−(max_order+1)
    (63 levels by default, as in Herbert (2023)'s notebooks).
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
    """Quantiles of all values of ``da`` and ``reference`` (Fig. 4.4 of Herbert (2023)).

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


def _fields(da: xr.DataArray, ydim: str, xdim: str) -> int:
    """The number of (Y, X) fields in ``da``: the product of its other dimensions' sizes."""
    return int(np.prod([n for d, n in da.sizes.items() if d not in (ydim, xdim)], dtype=np.int64))


def mean_normalised_bias(
    da: xr.DataArray,
    reference: xr.DataArray,
    *,
    dims: Mapping[str, str] | None = None,
) -> xr.Dataset:
    """Mean-normalised bias per cell (Fig. 4.12 of Herbert (2023)) and its mean absolute value.

    b = (mean_sample − mean_reference) / mean_reference, the means over every dimension
    but Y and X (time, ``realization``, ...). Herbert (2023) reports a mean |b| of 0.31 (square
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
        undefined there), with attributes ``sample_fields`` and ``reference_fields`` (the
        number of (Y, X) fields averaged: the sample size of each mean), and
        ``mean_abs_mean_normalised_bias`` (0-d, mean of |b| over the other cells). Lazy for
        dask input.
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
        # the number of (Y, X) fields behind each mean: the bias map's sample size
        "sample_fields": _fields(da, ydim, xdim),
        "reference_fields": _fields(ref, ydim, xdim),
    }
    scalar = scalar.reset_coords(drop=True)
    scalar.attrs = {"long_name": "mean absolute mean-normalised bias", "units": "1"}
    return xr.Dataset({"mean_normalised_bias": bias, "mean_abs_mean_normalised_bias": scalar})


# ------------------------------------------------------------------- ensemble scores
