"""``evaluate``: every diagnostic of generated samples against a reference in one Dataset."""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
import xarray as xr

from xdiffusion._version import __version__
from xdiffusion.diagnostics._util import (
    MEMBER_DIM,
    _check_da,
    _no_fill,
)
from xdiffusion.diagnostics.distributions import (
    _bin_edges,
    _matched_grids,
    histogram,
    mean_normalised_bias,
    qq,
)
from xdiffusion.diagnostics.ensemble import crps, rank_histogram, spread_skill
from xdiffusion.diagnostics.spectra import _spacing, _time_step_hours, spatial_psd, temporal_psd
from xdiffusion.io.axes import find_axes
from xdiffusion.io.cf import CONVENTIONS, history_line
from xdiffusion.validation import check_bool

__all__ = ["evaluate"]

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


_NAMES = ("samples", "reference")


def _check_same_grid(
    samples: xr.DataArray, reference: xr.DataArray, sa: Mapping[str, str], ra: Mapping[str, str]
) -> None:
    """Raise ValueError, naming ``samples`` and ``reference``, unless their grids agree
    (sizes, and coordinates within float tolerance)."""
    for a in ("Y", "X"):
        ds, dr = sa[a], ra[a]
        where = repr(ds) if ds == dr else f"{ds!r} (reference: {dr!r})"
        if samples.sizes[ds] != reference.sizes[dr]:
            raise ValueError(
                f"samples and reference grids differ along {where} ({samples.sizes[ds]} vs "
                f"{reference.sizes[dr]} cells); regrid the reference to the samples' grid first"
            )
        if ds in samples.indexes and dr in reference.indexes:
            if samples.indexes[ds].equals(reference.indexes[dr]):
                continue
            try:
                close = np.allclose(
                    np.asarray(samples[ds], float), np.asarray(reference[dr], float)
                )
            except (TypeError, ValueError):
                close = False
            if not close:
                raise ValueError(
                    f"samples and reference have different {where} coordinates; put both on "
                    "the same grid first (e.g. reference.interp_like(samples) or a regridder)"
                )


def _full_range_edges(samples: xr.DataArray, reference: xr.DataArray) -> np.ndarray:
    """The full histogram's bin edges, refusing an all-NaN input by name.

    One pass for both ranges (computed at once for dask input), as
    :func:`~xdiffusion.diagnostics.distributions._bin_edges` makes them.
    """
    import dask

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN input: refused below
        stats = dask.compute(samples.min(), samples.max(), reference.min(), reference.max())
    vals = np.asarray([float(v) for v in stats]).reshape(2, 2)
    for name, (lo, hi) in zip(_NAMES, vals):
        if np.isnan(lo) and np.isnan(hi):
            verb = "are" if name == "samples" else "is"
            raise ValueError(
                f"{name} {verb} all NaN: there are no values to evaluate; check the "
                f"{name} passed (the variable, the time selection, a mask covering every cell)"
            )
    lo, hi = float(np.nanmin(vals)), float(np.nanmax(vals))
    hi = lo + 1.0 if hi <= lo else hi
    if not (np.isfinite(lo) and np.isfinite(hi) and np.isfinite(hi - lo)):
        # infinite or too wide: the messages of _bin_edges, which computes the range again
        return _bin_edges([samples, reference], None, False, None, names=list(_NAMES))
    return _bin_edges([samples, reference], None, False, (lo, hi), names=list(_NAMES))


def evaluate(
    samples: xr.DataArray | xr.Dataset,
    reference: xr.DataArray | xr.Dataset,
    *,
    observations: xr.DataArray | xr.Dataset | None = None,
    dims: Mapping[str, str] | None = None,
    member_dim: str = MEMBER_DIM,
    fair: bool | None = None,
) -> xr.Dataset:
    """All diagnostics of generated ``samples`` against ``reference`` in one Dataset.

    Parameters
    ----------
    samples
        Generated fields (T, Y, X), usually with a ``realization`` dimension (pooled over).
        A Dataset evaluates each of its gridded variables (those with both spatial
        dimensions) that ``reference`` has too; see Returns.
    reference
        Reference fields on the same grid (time axis and length may differ; with or
        without ``realization``). A Dataset when ``samples`` is one, else a DataArray.
    observations
        Optional observations aligned with ``samples`` but without ``member_dim`` (e.g.
        the truth behind a forecast or downscaling ensemble): adds CRPS (standard and,
        see ``fair``, fair), the rank histogram and, with at least 2 members, the
        spread-skill ratio. ``samples`` must then have the ``member_dim`` dimension.
        A Dataset with every evaluated variable when ``samples`` is a Dataset.
    dims
        Axis overrides for :func:`~xdiffusion.io.axes.find_axes`, used for all inputs.
    member_dim
        Name of the ensemble dimension.
    fair
        Whether to add the fair CRPS (``crps_fair``, Ferro 2014) next to the standard one
        when ``observations`` are given: None (default) adds it when there are at least 2
        members and skips it for a single member; True requires it (ValueError with one
        member); False leaves it out.

    Returns
    -------
    xr.Dataset
        ``spatial_psd_*``, ``temporal_psd_*`` (the temporal PSD over windows of the shorter
        series' length), ``histogram_*`` (full range, dimension ``bin``), ``histogram_low_*``
        ([minimum, 0.9 quantile] of the values, dimension ``bin_low``; see
        :func:`~xdiffusion.diagnostics.histogram`), ``qq_sample``, ``qq_reference``,
        ``qq_relative_error_by_quantile``, ``mean_normalised_bias``, where ``*`` is
        ``sample`` or ``reference``; 0-d summaries ``psd_log_error`` and
        ``temporal_psd_log_error`` (mean |log10(P_sample / P_reference)|),
        ``qq_relative_error`` (mean |relative error| over the quantiles),
        ``mean_abs_mean_normalised_bias``; with ``observations`` also ``crps``,
        ``crps_fair`` (means over points; see ``fair``), ``rank_histogram`` and, with at
        least 2 members, ``ensemble_spread``, ``ensemble_mean_rmse`` and
        ``spread_skill_ratio``. Lazy for dask input except the
        ranges of the full and low-end histograms (computed at once).

        For Datasets, each variable ``v`` evaluated is diagnosed on its own (as the
        DataArray ``samples[v]`` against ``reference[v]``) and its diagnostics are named
        ``<v>_<name>`` (``pr_psd_log_error``, ``tas_spatial_psd_sample``, ...), with
        ``long_name`` starting ``"<v>: "``. The histogram dimensions depend on each
        variable's values and units, so they and their coordinates are prefixed as well
        (``pr_bin``, ``pr_bin_lower``, ``pr_bin_low``, ...); the other coordinates
        (``wavenumber``, ``frequency``, ``quantile``, ``rank``, the grid) are shared. The
        global attribute ``variables`` lists the variables evaluated, in the order of
        ``samples``. Attributes are built fresh, never copied from the inputs.

    Raises
    ------
    TypeError
        If the inputs mix DataArrays and Datasets, or are not numeric.
    ValueError
        If ``samples`` and ``reference`` differ in grid or time step, either is all NaN,
        or Datasets share no gridded variable (or ``observations`` lacks one of them).
    """
    if any(isinstance(obj, xr.Dataset) for obj in (samples, reference, observations)):
        return _evaluate_dataset(
            samples,
            reference,
            observations=observations,
            dims=dims,
            member_dim=member_dim,
            fair=fair,
        )
    samples = _check_da(samples, "samples")
    reference = _check_da(reference, "reference")
    if fair is not None:
        fair = check_bool(fair, "fair")
    members = 0
    if observations is not None:
        observations = _check_da(observations, "observations")
        if member_dim not in samples.dims:
            raise ValueError(
                f"samples= has no member dimension {member_dim!r} among "
                f"{list(map(str, samples.dims))}, needed to score it against observations=; "
                f"pass member_dim=<name>, or samples.expand_dims({member_dim!r}) for a "
                "single member"
            )
        members = samples.sizes[member_dim]
        if fair and members < 2:
            raise ValueError(
                f"fair=True needs at least 2 ensemble members, but samples= has {members} "
                f"along {member_dim!r}; pass fair=False (or leave fair=None) for one member"
            )
    out: dict[str, xr.DataArray] = {}

    sa = find_axes(samples, dims, require_time=False)
    ra = find_axes(reference, dims, require_time=False)
    _check_same_grid(samples, reference, sa, ra)
    samples, reference, _, _ = _matched_grids(samples, reference, dims)
    ra = {**ra, "Y": sa["Y"], "X": sa["X"]}
    # the full range first: all-NaN and infinite values are refused before any spectrum
    # is computed
    edges = _full_range_edges(samples, reference)
    low = _bin_edges([samples, reference], None, True, None, names=["samples", "reference"])
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
        with_fair = members >= 2 if fair is None else fair
        for kind in (False, True) if with_fair else (False,):
            c = crps(samples, observations, member_dim=member_dim, fair=kind)
            with xr.set_options(keep_attrs=False):
                mean = c.mean(skipna=True).reset_coords(drop=True)
            out[str(c.name)] = mean.assign_attrs(
                {**c.attrs, "long_name": f"mean {c.attrs['long_name']} over all points"}
            )
        out["rank_histogram"] = rank_histogram(samples, observations, member_dim=member_dim)
        if members >= 2:  # the spread of a single member is undefined
            out.update(spread_skill(samples, observations, member_dim=member_dim).data_vars)

    # shallow copy: fresh encodings, so the inputs' coordinates are not touched
    ds = _no_fill(xr.Dataset({k: v.rename(k) for k, v in out.items()}).copy())
    ds.attrs = {
        "title": "xdiffusion evaluation of generated samples against a reference",
        "Conventions": CONVENTIONS,
        "source": f"xdiffusion {__version__}",
        "history": history_line(
            "evaluate", {"observations": observations is not None, "dims": dims, "fair": fair}
        ),
    }
    return ds


# ------------------------------------------------------------------ Dataset evaluate

# the dimensions of evaluate() whose coordinates depend on a variable's values and units
_PER_VARIABLE_DIMS = ("bin", "bin_low")


def _prefixed(ds: xr.Dataset, name: str) -> xr.Dataset:
    """``ds`` (one variable's diagnostics) with its variables and bin dimensions prefixed."""
    own = [str(k) for k in ds.data_vars]
    own += [str(k) for k, v in ds.coords.items() if set(v.dims) & set(_PER_VARIABLE_DIMS)]
    own += [d for d in _PER_VARIABLE_DIMS if d in ds.dims and d not in own]
    out = ds.rename({k: f"{name}_{k}" for k in own})
    for k in own:
        var = out[f"{name}_{k}"].variable
        if "long_name" in var.attrs:
            var.attrs = {**var.attrs, "long_name": f"{name}: {var.attrs['long_name']}"}
    return out


def _evaluate_dataset(
    samples: xr.DataArray | xr.Dataset,
    reference: xr.DataArray | xr.Dataset,
    *,
    observations: xr.DataArray | xr.Dataset | None,
    dims: Mapping[str, str] | None,
    member_dim: str,
    fair: bool | None,
) -> xr.Dataset:
    """:func:`evaluate` of every gridded variable in both Datasets, prefixed and merged."""
    inputs = {"samples": samples, "reference": reference, "observations": observations}
    if not all(v is None or isinstance(v, xr.Dataset) for v in inputs.values()):
        kinds = ", ".join(f"{k}= {type(v).__name__}" for k, v in inputs.items() if v is not None)
        raise TypeError(
            f"evaluate needs samples=, reference= (and observations=) all DataArrays or "
            f"all Datasets, got {kinds}; select one variable of a Dataset, e.g. "
            f"ds['pr'], or pass Datasets throughout"
        )
    assert isinstance(samples, xr.Dataset) and isinstance(reference, xr.Dataset)
    axes = find_axes(samples, dims, require_time=False)
    names = [
        str(k)
        for k, v in samples.data_vars.items()
        if k in reference.data_vars and axes["Y"] in v.dims and axes["X"] in v.dims
    ]
    if not names:
        raise ValueError(
            f"samples= and reference= share no gridded variable (with dimensions "
            f"{axes['Y']!r} and {axes['X']!r}): samples= has {list(map(str, samples.data_vars))}, "
            f"reference= has {list(map(str, reference.data_vars))}; rename one of them "
            "(ds.rename({'old': 'new'})) or compare DataArrays"
        )
    if isinstance(observations, xr.Dataset):
        missing = [n for n in names if n not in observations.data_vars]
        if missing:
            raise ValueError(
                f"observations= lacks the variables {missing} evaluated in samples= and "
                f"reference=; it has {list(map(str, observations.data_vars))}"
            )
    parts = []
    for name in names:
        try:
            report = evaluate(
                samples[name],
                reference[name],
                observations=None if observations is None else observations[name],
                dims=dims,
                member_dim=member_dim,
                fair=fair,
            )
        except (TypeError, ValueError) as err:
            raise type(err)(f"variable {name!r}: {err}") from err
        parts.append(_prefixed(report, name))
    try:
        ds = xr.merge(parts, join="exact", compat="identical", combine_attrs="override")
    except ValueError as err:
        raise ValueError(
            f"the diagnostics of {names} are on different coordinates ({err}); evaluate "
            f"the variables one at a time, e.g. evaluate(samples[{names[0]!r}], "
            f"reference[{names[0]!r}])"
        ) from None
    ds = _no_fill(ds)
    ds.attrs = {
        "title": "xdiffusion evaluation of generated samples against a reference",
        "Conventions": CONVENTIONS,
        "source": f"xdiffusion {__version__}",
        "variables": " ".join(names),
        "history": history_line(
            "evaluate",
            {
                "variables": names,
                "observations": observations is not None,
                "dims": dims,
                "fair": fair,
            },
        ),
    }
    return ds
