"""Probabilistic scores of an ensemble against observations: CRPS, rank histogram, spread
and skill.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import xarray as xr

from xdiffusion.diagnostics._util import (
    MEMBER_DIM,
    _check_da,
    _is_dask,
    _validate_dims,
    _with_units,
)

__all__ = ["crps", "rank_histogram", "spread_skill"]


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
