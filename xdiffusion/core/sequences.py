"""Series of any length from a model of ``frames`` frames: one window planner for all tasks.

Gap filling, forecasting and long unconditional sequences are the same problem: a series
with a mask of known elements must be completed, one window of ``frames`` frames at a
time, each window conditioned on what is known or already generated inside it (seed 001
§4.4: long sequences and forecasts condition on earlier frames to make the next ones).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

#: ``window_fn(x_known, mask, stream, start) -> x``: sample one window batch
#: (B, C, F, H, W) starting at frame ``start`` of the series; the mask marks known elements
#: (all False: unconditional); ``stream`` numbers the window so its noise differs from
#: other windows'.
WindowFn = Callable[[Tensor, Tensor, int, int], Tensor]


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
    known = frame_known.clone().bool()
    t = known.numel()
    f = min(frames, t)
    plan: list[tuple[int, int]] = []
    while not bool(known.all()):
        g = int(torch.nonzero(~known)[0])
        run = int(torch.nonzero(known[g:])[0]) if bool(known[g:].any()) else t - g
        if g > 0 and g + run < t and run <= f - 2:
            start = g - (f - run) // 2  # centre the gap: context on both sides
        else:
            start = g - min(context, g)
        start = max(0, min(start, t - f))
        plan.append((start, f))
        known[start : start + f] = True
    return plan


def complete(
    window_fn: WindowFn,
    x: Tensor,
    mask: Tensor,
    frames: int,
    *,
    context: int | None = None,
    progress: bool = False,
) -> Tensor:
    """Fill the unknown elements of a batch of series window by window.

    Parameters
    ----------
    window_fn
        Conditional window sampler (see :data:`WindowFn`).
    x
        (B, C, T, H, W) series; values where ``mask`` is False are ignored.
    mask
        Boolean, broadcastable to ``x``: known elements. Must be the same for every batch
        member, which is the case for ensembles of one input.
    frames
        The model's window length.
    context
        Context frames before a long gap (default ``frames // 2``).

    Returns
    -------
    Tensor
        The completed series; known elements are returned unchanged.
    """
    mask = mask.expand_as(x)
    context = frames // 2 if context is None else int(context)
    if not 0 <= context < frames:
        raise ValueError(f"context must be in [0, frames - 1] = [0, {frames - 1}], got {context}")
    frame_known = mask[0].flatten(0, 0).transpose(0, 1).reshape(x.shape[2], -1).all(1)
    out = torch.where(mask, x, torch.zeros_like(x))
    known = mask.clone()
    plan = plan_windows(frame_known, frames, context)
    for stream, (s, f) in enumerate(tqdm(plan, disable=not progress, desc="windows")):
        xs, ms = out[:, :, s : s + f], known[:, :, s : s + f]
        gen = window_fn(xs, ms, stream, s)
        out[:, :, s : s + f] = torch.where(ms, xs, gen)
        known[:, :, s : s + f] = True
    return out
