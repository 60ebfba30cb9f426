"""The window planner and the lazy graph stay linear in the series length (issue 12 of
the adversarial re-run: a lazy 10**6-step template took minutes to plan), and plan
exactly the windows of the original, quadratic, planner."""

import time

import numpy as np
import pytest
import torch

from xdiffusion.core.sequences import plan_windows
from xdiffusion.engine import Window
from xdiffusion.lazy import _pack, _unpack, group_windows, time_chunks


def reference_plan(frame_known, frames, context):
    """The planner as first written: searches the whole mask again for every window."""
    known = frame_known.clone().bool()
    t = known.numel()
    f = min(frames, t)
    plan = []
    while not bool(known.all()):
        g = int(torch.nonzero(~known)[0])
        run = int(torch.nonzero(known[g:])[0]) if bool(known[g:].any()) else t - g
        if g > 0 and g + run < t and run <= f - 2:
            start = g - (f - run) // 2
        else:
            start = g - min(context, g)
        start = max(0, min(start, t - f))
        plan.append((start, f))
        known[start : start + f] = True
    return plan


def reference_groups(plan, chunks):
    groups, done = [], 0
    for a, b in chunks:
        mine = tuple(w for w in plan if a <= w.start < b)
        if mine:
            groups.append((mine, done))
            done = max(done, max(w.stop for w in mine))
    return groups


@pytest.mark.parametrize("seed", range(40))
def test_plan_equals_the_reference_planner(seed):
    rng = np.random.default_rng(seed)
    t = int(rng.integers(1, 60))
    frames = int(rng.integers(1, 9))
    context = int(rng.integers(0, frames))
    p_known = rng.choice([0.0, 0.2, 0.5, 0.8, 1.0])
    known = torch.from_numpy(rng.random(t) < p_known)
    if seed % 5 == 0:  # runs: a forecast-like tail and long gaps
        known[:] = True
        known[int(rng.integers(0, t)) :] = False
    assert plan_windows(known, frames, context) == reference_plan(known, frames, context)


def test_plan_accepts_integer_masks():
    known = torch.tensor([1, 1, 0, 0, 1, 1, 1, 0, 1, 1])
    assert plan_windows(known, 4, 2) == reference_plan(known, 4, 2)


@pytest.mark.parametrize("seed", range(10))
def test_groups_equal_the_reference_grouping(seed):
    rng = np.random.default_rng(seed)
    t = int(rng.integers(5, 80))
    frames = int(rng.integers(2, 6))
    known = torch.from_numpy(rng.random(t) < 0.5)
    plan = [Window(s, f) for s, f in plan_windows(known, frames, frames // 2)]
    chunks = time_chunks(t, int(rng.integers(1, 20)), frames)
    got = [(g.windows, g.done_until) for g in group_windows(plan, chunks)]
    assert got == reference_groups(plan, chunks)
    # chunks out of order: the general path gives the reference's groups too
    shuffled = chunks[::-1]
    got = [(g.windows, g.done_until) for g in group_windows(plan, shuffled)]
    assert got == reference_groups(plan, shuffled)
    assert group_windows(plan, []) == []


def test_windows_survive_packing():
    windows = [Window(0, 4), Window(4, 4), Window(6, 4, keep=8)]
    assert _unpack(_pack(windows)) == windows
    assert _unpack(_pack([])) == []


def test_long_plan_is_linear():
    """10**6 frames to generate: under a few seconds (minutes before)."""
    known = torch.zeros(10**6, dtype=torch.bool)
    known[:2] = True
    start = time.perf_counter()
    plan = plan_windows(known, 4, 2)
    assert time.perf_counter() - start < 20
    assert len(plan) == (10**6 - 2 + 1) // 2
    assert plan[0] == (0, 4) and plan[-1] == (10**6 - 4, 4)
