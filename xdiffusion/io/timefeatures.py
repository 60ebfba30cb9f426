"""Per-frame conditioning features from the time coordinate (season, time of day).

The features are sin/cos pairs of the phase within the year and within the day, computed
with xarray's ``.dt`` accessor so that every calendar works (a ``360_day`` year has 360
days, ``noleap`` 365, the Gregorian calendar 365 or 366).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

__all__ = ["TIME_FEATURES", "check_features", "check_time_axis", "n_features", "time_features"]

#: Feature name → number of columns it adds.
TIME_FEATURES = {"season": 2, "hour": 2}


def check_features(features: Sequence[str] | str | None) -> list[str]:
    """Validate a ``time_features=`` argument; returns a list (empty for None)."""
    if features is None:
        return []
    if isinstance(features, str):
        features = [features]
    if not isinstance(features, Sequence | np.ndarray) or isinstance(features, bytes):
        raise TypeError(
            f"time_features must be a feature name or a list of names among "
            f"{sorted(TIME_FEATURES)} (e.g. time_features=['season']), got "
            f"{type(features).__name__} {features!r}"
        )
    features = list(features)
    if not all(isinstance(f, str) for f in features):
        raise TypeError(
            f"time_features={features!r} must hold feature names (str) among "
            f"{sorted(TIME_FEATURES)}"
        )
    bad = [f for f in features if f not in TIME_FEATURES]
    if bad or len(set(features)) != len(features):
        raise ValueError(
            f"time_features={features!r}: choose distinct names among {sorted(TIME_FEATURES)}"
        )
    return features


def check_time_axis(values: np.ndarray, features: Sequence[str]) -> None:
    """Raise ValueError unless ``values`` are datetime64 or cftime dates.

    Season and hour of day need calendar dates; a numeric time axis (hours since an
    epoch as floats, step counts) has neither.
    """
    values = np.asarray(values)
    if np.issubdtype(values.dtype, np.datetime64):
        return
    if values.dtype == object and all(_is_cftime(v) for v in values.ravel()):
        return
    raise ValueError(
        f"time_features={list(features)!r} need a datetime64 or cftime time axis, but the "
        f"time coordinate has dtype {values.dtype}; decode it to dates first (e.g. "
        "xr.decode_cf(ds) or da.assign_coords(time=pd.to_datetime(...)))"
    )


def _is_cftime(v: object) -> bool:
    return all(hasattr(v, a) for a in ("year", "month", "day", "hour", "calendar"))


def n_features(features: Sequence[str]) -> int:
    """Number of columns of :func:`time_features` for ``features``."""
    return sum(TIME_FEATURES[f] for f in features)


def time_features(time: xr.DataArray | np.ndarray, features: Sequence[str]) -> np.ndarray:
    """Features of each time stamp, shape (T, K) float32.

    Parameters
    ----------
    time
        datetime64 or cftime values (any calendar).
    features
        Names from :data:`TIME_FEATURES`: ``"season"`` gives sin/cos of
        2π (day of year − 1 + hour/24) / days in year; ``"hour"`` gives sin/cos of
        2π (hour + minute/60) / 24.
    """
    values = np.asarray(getattr(time, "values", time))
    check_time_axis(values, features)
    t = xr.DataArray(values, dims="time")
    cols = []
    hour = t.dt.hour.values + t.dt.minute.values / 60.0
    for name in features:
        if name == "season":
            phase = (t.dt.dayofyear.values - 1 + hour / 24.0) / t.dt.days_in_year.values
        elif name == "hour":
            phase = hour / 24.0
        else:  # pragma: no cover - check_features guards this
            raise ValueError(f"unknown time feature {name!r}")
        cols += [np.sin(2 * np.pi * phase), np.cos(2 * np.pi * phase)]
    return np.stack(cols, axis=-1).astype(np.float32) if cols else np.zeros((t.size, 0), np.float32)
