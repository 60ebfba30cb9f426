"""Lazy generation: dask arrays built from the engine's units of work. No xarray.

Every generating task becomes a dask graph of (window range × member block) units
(:class:`~xdiffusion.engine.WorkUnit`); nothing runs until the result is computed or
written, and memory is bounded by the member block and the time chunk, never by the series
length or the ensemble size.

- **Downscaling** tiles time with independent windows (:meth:`Engine.tiles`); each
  (time chunk × member block) is one task that reads its coarse chunk.
- **Completion** (long samples, forecasts, gap filling) follows the window plan of the
  whole series (:meth:`Engine.plan`). The plan's windows are grouped by the output time
  chunk in which they start; a group runs on the span of frames its windows cover
  (:meth:`Engine.run_span`), and depends on the previous group of the same member block
  only where their spans overlap (forecasts and long samples: a chain along time, members
  in parallel; gap filling: gaps far apart run in parallel). Output chunks are assembled
  from the groups that cover them.

Because a window's noise depends on (seed, member, absolute time position) only, the
values equal the eager ones for any chunking, batch size or scheduler (threads, processes,
``dask.distributed``; tested).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import dask
import dask.array as dsa
import numpy as np
import torch

from xdiffusion.engine import Engine, Window, WorkUnit
from xdiffusion.settings import SamplingSettings

__all__ = [
    "WORK_PREFIX",
    "SpanGroup",
    "group_windows",
    "lazy_complete",
    "lazy_downscale",
    "time_chunks",
]


def time_chunks(t: int, chunks: Sequence[int] | int | None, frames: int) -> list[tuple[int, int]]:
    """Output time chunks: the input's chunk size rounded to whole windows, uniform.

    Uniform (but the last) so that the result can be written to zarr region by region.

    Parameters
    ----------
    t
        Series length.
    chunks
        The input's chunk sizes along time (as dask gives them; the first one sets the
        size), one size for all, or None (one chunk).
    frames
        Window length: the size is rounded to a multiple of it (at least one window).
    """
    if chunks is None:
        return [(0, t)]
    size = chunks if isinstance(chunks, int) else int(chunks[0])
    size = max(frames, round(size / frames) * frames)
    bounds = [*range(0, t, size), t]
    return list(pairwise(bounds))


WORK_PREFIX = "xdiffusion-work-"
"""Key prefix of the graph nodes that run the network (what a writer must not run twice)."""


def _work(func, key: str, *args):
    """A delayed call of ``func`` keyed ``WORK_PREFIX<func>-<key>`` so writers can find it.

    The key is given, not a token of the arguments: tokenizing every task's arguments
    (window lists, feature tables) made building the graph of a long series take minutes.
    ``key`` must be unique within the graph (:func:`_call_token` and the task's position).
    """
    name = f"{WORK_PREFIX}{func.__name__.strip('_')}-{key}"
    return _delayed(func)(*args, dask_key_name=name)


def _delayed(func):
    # named: a plain dask.delayed(func) tokenizes the function on every call
    return dask.delayed(func, name=f"{func.__name__.strip('_')}-fn", pure=False)


def _call_token() -> str:
    """A fresh token naming one call's graph nodes (each call's engine node is new too)."""
    return uuid.uuid4().hex


def _engine_key(engine: Engine):
    # one graph node holding the engine: shipped to each worker once, not per task
    return dask.delayed(engine, name=f"xdiffusion-engine-{uuid.uuid4().hex}", pure=False)


def _constant(value, what: str, token: str):
    """One graph node holding ``value`` (a tensor, or None as it is): shipped once, not
    embedded (and tokenized) in every task."""
    if value is None:
        return None
    return dask.delayed(value, name=f"xdiffusion-{what}-{token}", pure=False, traverse=False)


def _pack(windows: Sequence[Window]) -> np.ndarray:
    """Windows as an (n, 3) int64 array of (start, length, keep or -1): a graph literal
    that dask neither traverses nor tokenizes field by field."""
    rows = [(w.start, w.length, -1 if w.keep is None else w.keep) for w in windows]
    return np.array(rows, np.int64).reshape(len(rows), 3)


def _unpack(packed: np.ndarray) -> list[Window]:
    """The windows of :func:`_pack`."""
    return [Window(s, n, None if k < 0 else k) for s, n, k in np.asarray(packed).tolist()]


def _member_blocks(n: int, batch_size: int) -> list[range]:
    return [range(b, min(n, b + batch_size)) for b in range(0, n, batch_size)]


# -- downscaling ---------------------------------------------------------------------------


def _downscale_task(
    engine: Engine,
    y: np.ndarray,
    y_start: int,
    windows: np.ndarray,
    members: range,
    factor: int,
    settings: SamplingSettings,
    seed: int,
    time_offset: int,
    cond: torch.Tensor | None,
    latent: torch.Tensor | None,
    project: bool,
    threads: int,
) -> np.ndarray:
    torch.set_num_threads(threads)
    windows = _unpack(windows)
    with torch.no_grad():
        out = engine.downscale_unit(
            WorkUnit(range(len(windows)), members),
            windows,
            torch.from_numpy(np.asarray(y, dtype=np.float32)),
            factor,
            settings,
            seed=seed,
            y_start=y_start,
            time_offset=time_offset,
            cond=cond,
            latent=latent,
            project=project,
        )
        return engine.static_nan(out).cpu().numpy()


def lazy_downscale(
    engine: Engine,
    y: dsa.Array,
    factor: int,
    settings: SamplingSettings,
    *,
    n: int,
    seed: int,
    batch_size: int,
    time_offset: int = 0,
    cond: torch.Tensor | None = None,
    latent: torch.Tensor | None = None,
    project: bool = True,
) -> dsa.Array:
    """Fine physical fields (n, C, T, H, W) as a dask array, for coarse ``y`` (C, T, h, w).

    Chunks: the input's time chunks rounded to whole windows × blocks of ``batch_size``
    members. Each task reads the coarse frames of its windows only.
    """
    c, t = y.shape[:2]
    windows = engine.tiles(t)
    chunks = time_chunks(t, y.chunks[1], engine.frames)
    eng = _engine_key(engine)
    token = _call_token()
    cond_node, latent_node = _constant(cond, "cond", token), _constant(latent, "latent", token)
    threads = torch.get_num_threads()
    # each chunk's windows, found once (the windows are in order of first_kept)
    kept = np.array([w.first_kept for w in windows], np.int64)
    mine_of = []
    for a, b in chunks:
        lo_i, hi_i = np.searchsorted(kept, [a, b], side="left")
        mine = windows[lo_i:hi_i]
        mine_of.append((mine[0].start, mine[-1].stop, _pack(mine)))
    rows = []
    for m, members in enumerate(_member_blocks(n, batch_size)):
        row = []
        for j, (a, b) in enumerate(chunks):
            lo, hi, mine = mine_of[j]
            task = _work(
                _downscale_task,
                f"{token}-{m}-{j}",
                eng,
                y[:, lo:hi],
                lo,
                mine,
                members,
                factor,
                settings,
                seed,
                time_offset,
                cond_node,
                latent_node,
                project,
                threads,
            )
            shape = (len(members), c, b - a, *engine.grid)
            name = f"xdiffusion-chunk-{token}-{m}-{j}"  # given: no token of the graph
            row.append(dsa.from_delayed(task, shape, dtype=np.float32, name=name))
        rows.append(dsa.concatenate(row, axis=2))
    return dsa.concatenate(rows, axis=0)


# -- completion ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SpanGroup:
    """Consecutive plan windows run as one task, on the frames they cover.

    Attributes
    ----------
    windows
        The windows (series positions).
    start, stop
        Their span: ``windows[0].start`` to ``windows[-1].stop``.
    done_until
        Frames before this were generated by earlier groups (the previous group's stop).
    """

    windows: tuple[Window, ...]
    done_until: int

    @property
    def start(self) -> int:
        return self.windows[0].start

    @functools.cached_property
    def stop(self) -> int:  # cached: read once per output chunk by lazy_complete
        return max(w.stop for w in self.windows)


def group_windows(plan: Sequence[Window], chunks: Sequence[tuple[int, int]]) -> list[SpanGroup]:
    """Group a plan's windows by the output chunk in which each starts.

    Linear in the plan for chunks in order without overlaps (those of
    :func:`time_chunks`); other chunks are matched against every window.
    """
    bounds = np.asarray(chunks, np.int64).reshape(-1, 2)
    ordered = (
        len(bounds) > 0
        and bool(np.all(bounds[:, 0] <= bounds[:, 1]))
        and bool(np.all(bounds[1:, 0] >= bounds[:-1, 1]))
    )
    if ordered:
        # each window's chunk: the last chunk starting at or before it, if it ends after
        starts = np.array([w.start for w in plan], np.int64)
        k = np.searchsorted(bounds[:, 0], starts, side="right") - 1
        inside = (k >= 0) & (starts < bounds[np.maximum(k, 0), 1])
        members: list[list[Window]] = [[] for _ in range(len(bounds))]
        for w, i, ok in zip(plan, k.tolist(), inside.tolist()):
            if ok:
                members[i].append(w)
        per_chunk = [tuple(m) for m in members]
    else:
        per_chunk = [tuple(w for w in plan if a <= w.start < b) for a, b in chunks]
    groups: list[SpanGroup] = []
    done = 0
    for mine in per_chunk:
        if mine:
            group = SpanGroup(mine, done)
            groups.append(group)
            done = max(done, group.stop)
    return groups


def _complete_task(
    engine: Engine,
    phys: np.ndarray | None,
    shape: tuple[int, ...],
    previous: tuple[int, np.ndarray] | None,
    group: tuple[np.ndarray, int],
    members: range,
    settings: SamplingSettings,
    seed: int,
    time_offset: int,
    cond: torch.Tensor | None,
    latent: torch.Tensor | None,
    threads: int,
) -> tuple[int, np.ndarray]:
    """One group for one member block: (span start, diffusion values (B, C, S, H, W)).

    ``group``: the group's windows (:func:`_pack`) and its ``done_until``.
    """
    torch.set_num_threads(threads)
    packed, done_until = group
    group = SpanGroup(tuple(_unpack(packed)), int(done_until))
    c, s, h, w = shape
    if phys is None:
        enc = torch.zeros(c, s, h, w)
        mask = torch.zeros(c, s, h, w, dtype=torch.bool)
    else:
        enc, mask, _ = engine.encode_known(torch.from_numpy(np.asarray(phys, dtype=np.float32)))
    x = enc[None].expand(len(members), *enc.shape).clone()
    if previous is not None:
        p_start, p_vals = previous
        lo, hi = group.start, min(group.done_until, p_start + p_vals.shape[2])
        if hi > lo:
            x[:, :, : hi - lo] = torch.from_numpy(p_vals[:, :, lo - p_start : hi - p_start])
    with torch.no_grad():
        out = engine.run_span(
            list(group.windows),
            x,
            mask,
            settings,
            members=list(members),
            seed=seed,
            span_start=group.start,
            done_until=group.done_until,
            time_offset=time_offset,
            cond=cond,
            latent=latent,
        )
    return group.start, out.cpu().numpy()


def _assemble_task(
    engine: Engine,
    a: int,
    b: int,
    phys: np.ndarray | None,
    n_members: int,
    shape: tuple[int, ...],
    *pieces: tuple[int, np.ndarray],
) -> np.ndarray:
    """Output frames [a, b): the last group covering each frame, decoded; observed kept."""
    c, _, h, w = shape
    z = torch.zeros(n_members, c, b - a, h, w)
    covered = torch.zeros(b - a, dtype=torch.bool)
    for start, vals in pieces:
        lo, hi = max(a, start), min(b, start + vals.shape[2])
        if hi > lo:
            z[:, :, lo - a : hi - a] = torch.from_numpy(vals[:, :, lo - start : hi - start])
            covered[lo - a : hi - a] = True
    with torch.no_grad():
        out = engine.static_nan(engine.codec.decode(z.to(engine.device))).cpu().numpy()
    if phys is not None:
        phys = np.asarray(phys)
        obs = np.isfinite(phys)
        out = np.where(obs[None], phys[None], out.astype(phys.dtype))
        # frames no window touched are complete observations
        out[:, :, ~covered.numpy()] = phys[None][:, :, ~covered.numpy()]
    return out


def lazy_complete(
    engine: Engine,
    settings: SamplingSettings,
    *,
    n: int,
    seed: int,
    batch_size: int,
    length: int,
    chunks: Sequence[tuple[int, int]],
    plan: Sequence[Window],
    phys: dsa.Array | None = None,
    time_offset: int = 0,
    cond: torch.Tensor | None = None,
    latent: torch.Tensor | None = None,
    dtype: np.dtype | type = np.float32,
) -> dsa.Array:
    """Completed series (n, C, T, H, W) in physical units, as a dask array.

    Parameters
    ----------
    engine, settings, n, seed
        As for :meth:`Engine.complete`.
    batch_size
        Members per task.
    length
        Series length T.
    chunks
        Output time chunks (:func:`time_chunks`).
    plan
        The window plan of the whole series (:meth:`Engine.plan`).
    phys
        (C, T, H, W) physical input with NaN where unknown (lazily read per group and
        chunk), or None for an all-unknown series (``sample``).
    time_offset
        Absolute position of the series' first frame.
    cond
        (T, K) per-frame features, or None.
    latent
        A latent model's w: (T, k), (n, T, k) or None (:meth:`Engine.window_latent`).
    dtype
        Output dtype (the input's, so observed values come back bit-exact).
    """
    c, h, w = len(engine.codec), *engine.grid
    eng = _engine_key(engine)
    token = _call_token()
    cond_node, latent_node = _constant(cond, "cond", token), _constant(latent, "latent", token)
    threads = torch.get_num_threads()
    groups = group_windows(plan, chunks)
    # per group, once: its span, its windows as a plain array (cheap graph literals) and
    # its slice of the input; per chunk, the groups covering it
    g_start = np.array([g.start for g in groups], np.int64)
    g_stop = np.array([g.stop for g in groups], np.int64)
    packed = [(_pack(g.windows), g.done_until) for g in groups]
    pieces_in = [None if phys is None else phys[:, g.start : g.stop] for g in groups]
    chains = [g.start < g.done_until for g in groups]
    covering = [np.flatnonzero((g_start < b) & (g_stop > a)).tolist() for a, b in chunks]
    chunks_in = [None if phys is None else phys[:, a:b] for a, b in chunks]
    assemble = _delayed(_assemble_task)
    rows = []
    for m, members in enumerate(_member_blocks(n, batch_size)):
        results = []
        previous = None
        for i, g in enumerate(groups):
            span = (c, g.stop - g.start, h, w)
            prev = previous if previous is not None and chains[i] else None
            task = _work(
                _complete_task,
                f"{token}-{m}-{i}",
                eng,
                pieces_in[i],
                span,
                prev,
                packed[i],
                members,
                settings,
                seed,
                time_offset,
                cond_node,
                latent_node,
                threads,
            )
            results.append(task)
            previous = task
        row = []
        for j, (a, b) in enumerate(chunks):
            pieces = [results[i] for i in covering[j]]
            task = assemble(
                eng,
                a,
                b,
                chunks_in[j],
                len(members),
                (c, b - a, h, w),
                *pieces,
                dask_key_name=f"xdiffusion-assemble-{token}-{m}-{j}",
            )
            shape = (len(members), c, b - a, h, w)
            name = f"xdiffusion-chunk-{token}-{m}-{j}"  # given: no token of the graph
            row.append(dsa.from_delayed(task, shape, dtype=dtype, name=name))
        rows.append(dsa.concatenate(row, axis=2))
    return dsa.concatenate(rows, axis=0)
