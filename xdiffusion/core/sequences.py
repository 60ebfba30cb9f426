"""Series of any length from a model of ``frames`` frames: one window planner for all tasks.

Gap filling, forecasting and long unconditional sequences are the same problem: a series
with a mask of known elements must be completed, one window of ``frames`` frames at a
time, each window conditioned on what is known or already generated inside it (Herbert (2023)
§4.4: long sequences and forecasts condition on earlier frames to make the next ones).
:func:`plan_windows` chooses the windows; :class:`xdiffusion.engine.Engine` runs them.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

__all__ = ["plan_windows"]


def plan_windows(frame_known: Tensor, frames: int, context: int) -> list[tuple[int, int]]:
    """Choose window positions that complete a series, as (start, length) pairs.

    Parameters
    ----------
    frame_known
        Boolean (T,): True where a frame is complete (nothing to generate).
    frames
        Window length of the model.
    context
        Frames of context to keep before a gap that is too long to see both of its ends
        (the autoregressive case: forecasts and long sequences).

    Returns
    -------
    list of (start, length)
        Windows in the order they must run; each generates every incomplete frame in it,
        and later windows see those frames as known. A gap short enough to fit with known
        frames on both sides is centred in its window so that it sees both ends.
    """
    known = np.asarray(
        frame_known.detach().cpu().numpy() if isinstance(frame_known, Tensor) else frame_known,
        dtype=bool,
    ).ravel()
    t = known.size
    f = min(frames, t)
    # the runs of unknown frames, found once: [run_start, run_stop)
    edges = np.diff(np.concatenate(([0], (~known).astype(np.int8), [0])))
    run_starts = np.flatnonzero(edges == 1).tolist()
    run_stops = np.flatnonzero(edges == -1).tolist()
    plan: list[tuple[int, int]] = []
    # Each window starts at or before the first incomplete frame g and ends after it, so
    # every frame before the last window's stop is complete: the next incomplete frame is
    # the first unknown frame at or after that stop, and the gap it opens runs to the end
    # of its run of unknown frames in the input (the quadratic loop this replaces
    # searched the whole mask again for every window).
    covered = 0
    for run_start, run_stop in zip(run_starts, run_stops):
        while covered < run_stop:
            g = max(run_start, covered)
            run = run_stop - g
            if g > 0 and g + run < t and run <= f - 2:
                start = g - (f - run) // 2  # centre the gap: context on both sides
            else:
                start = g - min(context, g)
            start = max(0, min(start, t - f))
            plan.append((start, f))
            covered = start + f
    return plan
