"""Lazy training windows of ``frames`` consecutive time steps.

Windows are described by their start index only; the data are read per batch from the
(possibly dask-backed) array, so all windows are never materialised. A window never spans
a gap in the time axis: every window consists of steps of exactly the axis' step, a fixed
duration or a number of calendar months (:mod:`xdiffusion.io.calendar`).
"""

from __future__ import annotations

from collections.abc import Sequence

import dask
import numpy as np
import xarray as xr

from xdiffusion.io.calendar import TimeStep, check_order, regular_mask, time_steps

__all__ = ["WindowReader", "regular_step", "time_steps", "window_starts"]


def regular_step(time: xr.DataArray | np.ndarray) -> float:
    """The modal difference between consecutive stamps (seconds, or the units of a
    numeric axis); 0 for fewer than two stamps.

    A calendar-month axis has no single step in seconds: see
    :func:`~xdiffusion.io.calendar.detect_step`, which reads it as months.
    Raises ValueError for unsorted, duplicated or missing (NaT/NaN) times.
    """
    d = time_steps(time)
    if d.size == 0:
        return 0.0
    check_order(d)
    vals, counts = np.unique(d, return_counts=True)
    return float(vals[np.argmax(counts)])


def window_starts(
    time: xr.DataArray | np.ndarray, frames: int, step: TimeStep | None = None
) -> np.ndarray:
    """Start indices of all windows of ``frames`` steps that do not span a time gap.

    Consecutive stamps of a window are one ``step`` apart (default: the axis' own,
    :func:`~xdiffusion.io.calendar.detect_step`); a calendar step compares months, so a
    monthly axis has no gaps at its 28-, 30- and 31-day months. An irregular axis (no
    dominant step) is refused.
    """
    n = len(time)
    if frames > n:
        raise ValueError(
            f"frames={frames} is longer than the series ({n} time steps); "
            "use fewer frames or a longer series"
        )
    if frames == 1:
        return np.arange(n)
    ok = regular_mask(time, step)  # ok[i]: step i→i+1 regular
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
