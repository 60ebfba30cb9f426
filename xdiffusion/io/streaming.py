"""Training batches of windows from archives larger than memory, chunk by chunk.

Reading one ``frames``-step window from a store chunked along time (zarr, netCDF opened
with dask) decompresses every chunk the window touches: with 500-step chunks an 8-frame
window costs a 500-step read, and a batch of 16 windows about 16 such reads.
:class:`ChunkedWindows` instead reads whole time *blocks* (runs of time chunks) into a
shuffle buffer and cuts many windows from each read:

- Training is split into *rounds* of ``steps_per_round`` steps. Round ``r`` holds
  ``buffer_chunks`` blocks, taken from a sequence of per-epoch permutations of all blocks
  seeded by ``(seed, epoch)``: every block is visited once per epoch, in random order.
- A block is read together with the first ``frames - 1`` steps after it, so windows that
  straddle a block edge are drawn as often as any other. Only the given ``starts`` (valid
  window starts: :func:`~xdiffusion.io.windows.window_starts` never spans a time gap) are
  drawn, each from the block holding its start.
- Step ``s`` of round ``r`` takes the next ``batch_size`` windows of a permutation of the
  round's windows seeded by ``(seed, r)``, so a round uses each of its windows about once.
- A background thread reads round ``r + 1`` while round ``r`` trains.

Batches are therefore a function of ``(seed, step)`` and the loader's settings alone:
re-creating the loader and asking for step ``s`` (as a resumed run does) gives the same
windows. Memory holds at most two rounds (the current and the prefetched one), i.e. about
``2 × buffer_chunks`` blocks, whatever the archive's length.

:class:`RandomWindows` is the in-memory path: each step draws ``batch_size`` starts
uniformly with ``numpy.random.default_rng([seed, step])`` and reads them one by one.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import dask
import numpy as np

from xdiffusion.io.windows import WindowReader
from xdiffusion.validation import check_int, check_positive_int, check_seed

__all__ = [
    "LOADERS",
    "MAX_BLOCK_BYTES",
    "ChunkedWindows",
    "RandomWindows",
    "block_edges",
    "check_loader",
    "make_loader",
]

LOADERS = ("auto", "random", "chunked")
# Blocks larger than this are split (a single time chunk spanning the whole archive must not
# be held in memory whole); dask's own default chunk size.
MAX_BLOCK_BYTES = 128 * 2**20
# Tags that keep the seeds of block permutations and window permutations apart from each
# other and from the per-step seeds ``[seed, step]`` used elsewhere.
_BLOCK_TAG, _WINDOW_TAG = 0xB10C, 0x817D


def _check_starts(starts, n_time: int, frames: int) -> np.ndarray:
    s = np.unique(np.asarray(starts, dtype=np.int64))
    if s.size == 0:
        raise ValueError("starts is empty: there is no window to draw; use fewer frames")
    if s[0] < 0 or s[-1] > n_time - frames:
        raise ValueError(
            f"starts must lie in [0, {n_time - frames}] for a series of {n_time} steps and "
            f"frames={frames}; got values from {s[0]} to {s[-1]}"
        )
    return s


def block_edges(
    time_chunks: Sequence[int],
    frames: int,
    *,
    step_bytes: int = 0,
    max_block_bytes: int = MAX_BLOCK_BYTES,
) -> np.ndarray:
    """Edges of the time blocks read as units: whole chunks, merged or split as needed.

    Consecutive chunks are merged until a block has at least ``4 * frames`` steps: a block
    is read with the ``frames - 1`` steps after it, and longer blocks keep that overhead
    below a quarter (and a block plus its tail never reaches past the next block). Chunks
    larger than ``max_block_bytes`` are split into equal parts of at least ``frames``
    steps (each part then re-reads the chunk, but memory stays bounded).

    Parameters
    ----------
    time_chunks
        Chunk lengths along time (``dask_array.chunks[1]``), summing to the series length.
    frames
        Window length.
    step_bytes
        Bytes of one time step (all channels and grid cells); 0 disables splitting.
    max_block_bytes
        Largest block, in bytes, before a chunk is split.

    Returns
    -------
    numpy.ndarray
        Increasing edges ``e`` with ``e[0] == 0`` and ``e[-1] == sum(time_chunks)``; block
        ``k`` is ``[e[k], e[k + 1])``.
    """
    frames = check_positive_int(frames, "frames")
    min_steps = 4 * frames
    edges = [0]
    for n in (int(c) for c in time_chunks):
        if n <= 0:
            continue
        start, stop = edges[-1], edges[-1] + n
        if len(edges) > 1 and edges[-1] - edges[-2] < min_steps:
            edges.pop()  # the previous block is too short: this chunk joins it
            start = edges[-1]
        parts = 1
        if step_bytes and (stop - start) * step_bytes > max_block_bytes:
            per_part = max(frames, max_block_bytes // step_bytes)
            parts = max(1, (stop - start) // per_part)
        cuts = np.linspace(start, stop, parts + 1).round().astype(np.int64)
        edges.extend(int(c) for c in cuts[1:])
    if len(edges) > 2 and edges[-1] - edges[-2] < min_steps:
        del edges[-2]  # a short last block joins the one before
    return np.asarray(edges, dtype=np.int64)


class RandomWindows:
    """Uniformly random windows, read one by one (the in-memory path).

    Step ``s`` draws ``batch_size`` starts with replacement using
    ``numpy.random.default_rng([seed, step])``. On a dask array every window reads all the
    chunks it touches; prefer :class:`ChunkedWindows` there.

    Parameters
    ----------
    data
        (C, T, Y, X) numpy or dask array.
    frames
        Window length.
    starts
        Window starts to draw from.
    batch_size
        Windows per step.
    seed
        Seed of the draws.
    shard
        ``(rank, world_size)`` of a distributed run: step ``s`` draws the global batch of
        ``batch_size × world_size`` starts exactly as one process would, and this rank keeps
        (and reads) rows ``rank::world_size`` — disjoint shares whose union is the
        single-process batch.
    """

    kind = "random"

    def __init__(
        self,
        data,
        frames: int,
        starts,
        *,
        batch_size: int,
        seed: int,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        self.frames = check_positive_int(frames, "frames")
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.seed = check_seed(seed)
        self.rank, self.world = check_shard(shard)
        self.starts = _check_starts(starts, int(data.shape[1]), self.frames)
        self.reader = WindowReader(data, self.frames)
        self.wait_seconds = 0.0

    def starts_at(self, step: int) -> np.ndarray:
        """The window starts of step ``step``."""
        rng = np.random.default_rng([self.seed, int(step)])
        drawn = rng.choice(self.starts, size=self.batch_size * self.world, replace=True)
        return drawn[self.rank :: self.world]

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """``(starts, windows)`` of step ``step``; windows are (B, C, frames, Y, X) float32."""
        t0 = time.perf_counter()
        idx = self.starts_at(step)
        out = idx, self.reader.read(idx)
        self.wait_seconds += time.perf_counter() - t0
        return out

    def describe(self) -> dict:
        """Settings that determine the batches (for checkpoint fingerprints)."""
        return {"kind": self.kind, **_shard_description(self.world)}

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class _Round:
    blocks: np.ndarray  # block indices held, sorted
    pieces: dict  # block index -> (C, block length + up to frames - 1, Y, X) float32
    starts: np.ndarray  # this round's window starts, in drawing order (permuted)
    owner: np.ndarray  # block index holding each start


class ChunkedWindows:
    """Random windows drawn from a shuffle buffer of whole time blocks (see module docs).

    Parameters
    ----------
    data
        (C, T, Y, X) dask or numpy array; blocks follow its chunks along T
        (:func:`block_edges`). A numpy array is one chunk.
    frames
        Window length.
    starts
        Valid window starts (e.g. :func:`~xdiffusion.io.windows.window_starts`, minus
        held-out ones); no other window is ever drawn.
    batch_size
        Windows per step.
    seed
        Seed of the block order and the window order.
    buffer_chunks
        Blocks held per round; memory is about ``2 × buffer_chunks`` blocks (current round
        and the prefetched next one).
    steps_per_round
        Steps drawn from one buffer; default: enough to use each buffered window about once
        (``ceil(buffer_chunks × mean windows per block / batch_size)``).
    prefetch
        Read the next round in a background thread while the current one is used.
    total_steps
        Number of steps that will be asked for, if known: nothing past it is prefetched.
    max_block_bytes
        Chunks larger than this are split into several blocks.
    shard
        ``(rank, world_size)`` of a distributed run: this rank's round ``r`` is the
        single-process sequence's round ``r × world_size + rank``, so ranks hold disjoint
        blocks (within an epoch) and draw ``batch_size`` windows per step from their own
        buffer; one rank reads only its share of the store.
    """

    kind = "chunked"

    def __init__(
        self,
        data,
        frames: int,
        starts,
        *,
        batch_size: int,
        seed: int,
        buffer_chunks: int = 4,
        steps_per_round: int | None = None,
        prefetch: bool = True,
        total_steps: int | None = None,
        max_block_bytes: int = MAX_BLOCK_BYTES,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        self.rank, self.world = check_shard(shard)
        if getattr(data, "ndim", None) != 4:
            shape = getattr(data, "shape", None)
            raise ValueError(f"data must be a (channel, time, y, x) array, got shape {shape}")
        self.data = data
        self.frames = check_positive_int(frames, "frames")
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.seed = check_seed(seed)
        self.is_dask = dask.is_dask_collection(data)
        n_time = int(data.shape[1])
        self.starts = _check_starts(starts, n_time, self.frames)
        chunks = data.chunks[1] if self.is_dask else (n_time,)
        step_bytes = int(np.prod(data.shape)) // max(1, n_time) * 4
        self.edges = block_edges(
            chunks,
            self.frames,
            step_bytes=step_bytes,
            max_block_bytes=check_positive_int(max_block_bytes, "max_block_bytes"),
        )
        owner = np.searchsorted(self.edges, self.starts, side="right") - 1
        self.eligible, first = np.unique(owner, return_index=True)  # blocks with windows
        self._by_block = dict(zip(self.eligible.tolist(), np.split(self.starts, first[1:])))
        self.buffer_chunks = min(
            check_positive_int(buffer_chunks, "buffer_chunks"), len(self.eligible)
        )
        if steps_per_round is None:
            per_block = len(self.starts) / len(self.eligible)
            steps_per_round = max(1, math.ceil(self.buffer_chunks * per_block / self.batch_size))
        self.steps_per_round = check_positive_int(steps_per_round, "steps_per_round")
        self.total_steps = None if total_steps is None else int(total_steps)
        self.wait_seconds = 0.0  # time batch() spent waiting for reads
        self.blocks_read = 0
        self._perms: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()
        self._current: tuple[int, _Round] | None = None
        self._next: tuple[int, Future] | None = None
        self._pool = (
            ThreadPoolExecutor(1, thread_name_prefix="xdiffusion-windows") if prefetch else None
        )

    # -- what a round holds: pure functions of (seed, round) -------------------------------
    def _epoch_perm(self, epoch: int) -> np.ndarray:
        with self._lock:  # called from the prefetch thread too
            if epoch not in self._perms:
                ss = np.random.SeedSequence(self.seed, spawn_key=(_BLOCK_TAG, epoch))
                self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
                self._perms[epoch] = np.random.default_rng(ss).permutation(len(self.eligible))
            return self._perms[epoch]

    def blocks_of_round(self, r: int) -> np.ndarray:
        """Block indices held in round ``r`` (sorted): the next ``buffer_chunks`` entries of
        a sequence of per-epoch permutations of all blocks with windows."""
        n, b = len(self.eligible), self.buffer_chunks
        picks = [self._epoch_perm(k // n)[k % n] for k in range(r * b, (r + 1) * b)]
        return np.unique(self.eligible[picks])

    def block_span(self, block: int) -> tuple[int, int]:
        """Time steps ``[a, b)`` read for ``block``: the block and the ``frames - 1``
        steps after it (so windows starting near its end are complete)."""
        n_time = int(self.data.shape[1])
        return int(self.edges[block]), min(int(self.edges[block + 1]) + self.frames - 1, n_time)

    def _load(self, r: int, have: dict) -> _Round:
        r = r * self.world + self.rank  # this rank's share of the single-process rounds
        blocks = self.blocks_of_round(r)
        pieces = {int(k): have[int(k)] for k in blocks if int(k) in have}
        todo = np.array([int(k) for k in blocks if int(k) not in pieces], dtype=np.int64)
        # Runs of adjacent blocks are read as one slice (the chunk holding one block's tail
        # and the next block's head is read once), one run at a time (less memory in flight).
        for run in np.split(todo, np.flatnonzero(np.diff(todo) != 1) + 1) if todo.size else []:
            a, b = self.block_span(run[0])[0], self.block_span(run[-1])[1]
            part = self.data[:, a:b]
            if self.is_dask:
                part = part.compute(scheduler="threads")
            part = np.asarray(part, dtype=np.float32)
            for k in run.tolist():
                lo, hi = self.block_span(k)
                piece = part[:, lo - a : hi - a]
                # A block kept for the next round must not keep its whole run alive.
                pieces[k] = piece.copy() if self.is_dask and len(run) > 1 else piece
        starts = np.concatenate([self._by_block[int(k)] for k in blocks])
        owner = np.concatenate([np.full(len(self._by_block[int(k)]), k) for k in blocks])
        ss = np.random.SeedSequence(self.seed, spawn_key=(_WINDOW_TAG, r))
        order = np.random.default_rng(ss).permutation(len(starts))
        with self._lock:
            self.blocks_read += int(todo.size)
        return _Round(blocks, pieces, starts[order], owner[order])

    def _round(self, r: int) -> _Round:
        if self._current is not None and self._current[0] == r:
            return self._current[1]
        have = self._current[1].pieces if self._current is not None else {}
        pending, self._next = self._next, None
        if pending is not None and pending[0] == r:
            rnd = pending[1].result()
        else:
            if pending is not None:
                pending[1].cancel()  # a jump (resume, evaluation): its reads are not needed
            rnd = self._load(r, have)
        self._current = (r, rnd)
        last = None if self.total_steps is None else (self.total_steps - 1) // self.steps_per_round
        if self._pool is not None and (last is None or r + 1 <= last):
            self._next = (r + 1, self._pool.submit(self._load, r + 1, rnd.pieces))
        return rnd

    def starts_at(self, step: int) -> np.ndarray:
        """The window starts of step ``step`` (reads the round's blocks if needed)."""
        return self._draw(int(step))[0]

    def _draw(self, step: int) -> tuple[np.ndarray, np.ndarray, _Round]:
        r, j = divmod(step, self.steps_per_round)
        rnd = self._round(r)
        pos = (j * self.batch_size + np.arange(self.batch_size)) % len(rnd.starts)
        return rnd.starts[pos], rnd.owner[pos], rnd

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """``(starts, windows)`` of step ``step``; windows are (B, C, frames, Y, X) float32.

        Parameters
        ----------
        step
            Training step (non-negative); the result depends on ``(seed, step)`` and the
            loader's settings only.
        """
        step = check_int(step, "step", minimum=0)  # type: ignore[assignment]
        t0 = time.perf_counter()
        starts, owner, rnd = self._draw(step)
        f = self.frames
        c, _, ny, nx = self.data.shape
        out = np.empty((len(starts), c, f, ny, nx), dtype=np.float32)
        for i, (s, k) in enumerate(zip(starts, owner)):
            a = int(s) - int(self.edges[k])
            out[i] = rnd.pieces[int(k)][:, a : a + f]
        self.wait_seconds += time.perf_counter() - t0
        return starts, out

    def describe(self) -> dict:
        """Settings that determine the batches (for checkpoint fingerprints)."""
        return {
            "kind": self.kind,
            "buffer_chunks": self.buffer_chunks,
            "steps_per_round": self.steps_per_round,
            "blocks": len(self.edges) - 1,
            "block_edges_sha256": _digest(self.edges),
            **_shard_description(self.world),
        }

    def close(self) -> None:
        """Stop prefetching and release the buffers."""
        if self._next is not None:
            self._next[1].cancel()
        self._next = self._current = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


def _digest(a: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.int64).tobytes()).hexdigest()[:16]


def make_loader(
    kind: str,
    data,
    frames: int,
    starts,
    *,
    batch_size: int,
    seed: int,
    buffer_chunks: int = 4,
    total_steps: int | None = None,
    shard: tuple[int, int] = (0, 1),
) -> RandomWindows | ChunkedWindows:
    """The training-window loader for ``kind``.

    Parameters
    ----------
    kind
        ``"auto"`` (:class:`ChunkedWindows` for dask arrays, :class:`RandomWindows` for
        numpy), ``"random"`` or ``"chunked"``.
    data, frames, starts, batch_size, seed
        As for the loaders.
    buffer_chunks, total_steps
        :class:`ChunkedWindows` settings (ignored by ``"random"``).
    shard
        ``(rank, world_size)`` of a distributed run (see the loaders).
    """
    if not isinstance(kind, str) or kind not in LOADERS:
        raise ValueError(f"loader must be one of {list(LOADERS)}, got {kind!r}")
    if kind == "auto":
        kind = "chunked" if dask.is_dask_collection(data) else "random"
    if kind == "random":
        return RandomWindows(data, frames, starts, batch_size=batch_size, seed=seed, shard=shard)
    return ChunkedWindows(
        data,
        frames,
        starts,
        batch_size=batch_size,
        seed=seed,
        buffer_chunks=buffer_chunks,
        total_steps=total_steps,
        shard=shard,
    )


def check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    """``(rank, world_size)`` with 0 ≤ rank < world_size, or ValueError."""
    try:
        rank, world = (int(v) for v in shard)
    except (TypeError, ValueError):
        raise ValueError(f"shard must be (rank, world_size), got {shard!r}") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(
            f"shard must be (rank, world_size) with 0 ≤ rank < world_size, got {shard!r}"
        )
    return rank, world


def _shard_description(world: int) -> dict:
    # single-process runs keep their old fingerprint (resume across versions)
    return {} if world == 1 else {"world_size": world}


def check_loader(loader: str, buffer_chunks: int) -> None:
    """Raise ValueError for a bad ``loader=`` or ``buffer_chunks=`` (before any data is read)."""
    if not isinstance(loader, str) or loader not in LOADERS:
        raise ValueError(f"loader must be one of {list(LOADERS)}, got {loader!r}")
    check_positive_int(buffer_chunks, "buffer_chunks")
