"""Lazy training windows of ``frames`` consecutive time steps.

Windows are described by their start index only; the data are read per batch from the
(possibly dask-backed) array, so all windows are never materialised. A window never spans
a gap in the time axis: the step is inferred as the most common difference between time
stamps and every window must consist of steps of exactly that size.
"""

from __future__ import annotations

from collections.abc import Sequence

import dask
import numpy as np
import xarray as xr

__all__ = ["WindowReader", "regular_step", "time_steps", "window_starts"]


def _check_missing(values: np.ndarray) -> None:
    """Raise ValueError for NaT (datetime64), NaN (numeric) or None (cftime) time stamps."""
    if np.issubdtype(values.dtype, np.datetime64) or np.issubdtype(values.dtype, np.timedelta64):
        bad, what = np.isnat(values), "NaT (not-a-time)"
    elif np.issubdtype(values.dtype, np.floating):
        bad, what = np.isnan(values), "NaN"
    elif values.dtype == object:
        bad, what = np.array([v is None for v in values.ravel()], dtype=bool), "None"
    else:
        return
    if bad.any():
        where = np.flatnonzero(bad)
        shown = where[:5].tolist() + (["..."] if where.size > 5 else [])
        raise ValueError(
            f"the time axis has {where.size} {what} value(s) (at positions {shown}): "
            "missing time stamps cannot be ordered; drop those steps first, e.g. "
            "da.isel(time=da['time'].notnull().values)"
        )


def time_steps(time: xr.DataArray | np.ndarray | Sequence) -> np.ndarray:
    """Differences between consecutive time stamps: seconds (datetime64 or cftime), or the
    axis' own units for a numeric time axis (e.g. hours as floats)."""
    values = np.asarray(getattr(time, "values", time))
    _check_missing(values)
    if values.size < 2:
        return np.zeros(0)
    if np.issubdtype(values.dtype, np.datetime64):
        return np.diff(values).astype("timedelta64[ns]").astype(np.int64) / 1e9
    if np.issubdtype(values.dtype, np.number):
        return np.diff(values.astype(float))
    # cftime objects: differences are datetime.timedelta
    return np.array([d.total_seconds() for d in np.diff(values)], dtype=float)


def regular_step(time: xr.DataArray | np.ndarray) -> float:
    """The modal time step (seconds, or the units of a numeric axis).

    Raises ValueError for unsorted, duplicated or missing (NaT/NaN) times.
    """
    d = time_steps(time)
    if d.size == 0:
        return 0.0
    if np.any(d <= 0):
        i = int(np.argmax(d <= 0))
        kind = "duplicated" if d[i] == 0 else "descending"
        raise ValueError(
            f"the time axis has {kind} values (at position {i + 1}); sort it and drop "
            "duplicates first, e.g. da.sortby('time').drop_duplicates('time')"
        )
    vals, counts = np.unique(d, return_counts=True)
    return float(vals[np.argmax(counts)])


def window_starts(time: xr.DataArray | np.ndarray, frames: int) -> np.ndarray:
    """Start indices of all windows of ``frames`` steps that do not span a time gap."""
    n = len(time)
    if frames > n:
        raise ValueError(
            f"frames={frames} is longer than the series ({n} time steps); "
            "use fewer frames or a longer series"
        )
    if frames == 1:
        return np.arange(n)
    step = regular_step(time)
    ok = np.isclose(time_steps(time), step, rtol=1e-6, atol=1e-3)  # ok[i]: step i→i+1 regular
    # A window starting at s needs ok[s : s + frames - 1] all true: a moving sum.
    c = np.concatenate([[0], np.cumsum(~ok)])
    starts = np.arange(n - frames + 1)
    return starts[(c[starts + frames - 1] - c[starts]) == 0]


class WindowReader:
    """Read batches of windows from a (channel, time, y, x) array without loading it whole.

    Parameters
    ----------
    data
        Array-like with ``__getitem__`` (numpy or dask) of shape (C, T, Y, X).
    frames
        Window length.
    """

    def __init__(self, data, frames: int) -> None:
        self.data = data
        self.frames = int(frames)
        self.is_dask = dask.is_dask_collection(data)

    def read(self, starts: Sequence[int]) -> np.ndarray:
        """Windows at ``starts`` stacked to (B, C, frames, Y, X) float32."""
        f = self.frames
        parts = [self.data[:, int(s) : int(s) + f] for s in starts]
        if self.is_dask:
            parts = dask.compute(*parts, scheduler="threads")
        return np.stack([np.asarray(p, dtype=np.float32) for p in parts])
