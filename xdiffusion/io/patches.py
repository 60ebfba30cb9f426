"""Random spatial crops ("patches") of training windows, drawn reproducibly. No torch.

``fit(patch=64)`` trains on crops of ``patch`` cells of a larger grid: every window of a
batch is cropped at its own random offset, and the static valid-cell mask is cropped with
it. The network's convolutions are local in space and its temporal attention acts per
pixel, so a model trained on crops generates on the full training grid, or on any
sub-region of it, in one piece (docs/data.md, "Training on patches, generating on any
grid").

Offsets are a function of ``(seed, step, row)`` alone (``row``: the window's position in
the step's global batch), so a run is reproducible and a resumed run draws the crops an
uninterrupted one would have drawn. Validation windows are cropped at offsets keyed by
``(seed, window start, row)``: fixed for the whole run.

A crop whose share of valid cells (of the static mask, over all channels) is below
:data:`MIN_PATCH_VALID` is drawn again, at most :data:`MAX_PATCH_DRAWS` times in all; if
every draw is mostly masked the last one is kept and left out of the loss entirely (its
mask is all False), rather than training on a crop of a few cells.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from xdiffusion.validation import is_int

__all__ = [
    "MAX_PATCH_DRAWS",
    "MIN_PATCH_VALID",
    "PatchSampler",
    "check_patch",
    "check_patch_size",
]

#: Crops with a smaller share of valid cells (static mask, all channels) are drawn again.
MIN_PATCH_VALID = 0.1
#: Draws of one crop, the first included, before a mostly-masked crop is kept and masked
#: out of the loss.
MAX_PATCH_DRAWS = 8
#: Tags that keep the crop streams apart from each other and from the other per-step
#: seeds (``[seed, step]`` of the window loaders).
_TRAIN_TAG, _VALIDATION_TAG = 0x9A7C, 0x9A7D


def _what(value: Any) -> str:
    return (
        "patch must be None, a positive integer (a square crop) or a pair (ny, nx) of "
        f"positive integers, got {value!r}"
    )


def check_patch(value: Any) -> tuple[int, int] | None:
    """``fit(patch=)`` as ``(ny, nx)``, or None: its type and sign only.

    The size is checked against the grid and the network by :func:`check_patch_size`
    once both are known.

    Raises
    ------
    ValueError
        For anything but None, a positive integer or a pair of positive integers (a
        string, a bool, 0, a negative number, three numbers).
    """
    if value is None:
        return None
    if is_int(value):
        sides: Sequence[Any] = (value, value)
    elif isinstance(value, list | tuple) and len(value) == 2:
        sides = value
    else:
        raise ValueError(_what(value))
    if not all(is_int(s) and s >= 1 for s in sides):
        raise ValueError(_what(value))
    return int(sides[0]), int(sides[1])


def check_patch_size(
    patch: tuple[int, int], grid: Sequence[int], multiple: int, *, levels: int | None = None
) -> tuple[int, int]:
    """Refuse a patch larger than the grid, or not a multiple of the network's downsampling.

    Parameters
    ----------
    patch
        ``(ny, nx)`` from :func:`check_patch`.
    grid
        ``(ny, nx)`` of the training grid.
    multiple
        The network's total downsampling, ``2**(levels − 1)``: a crop is a whole number of
        the coarsest level's cells, so that the network pads nothing inside it.
    levels
        The network's number of levels, for the message.

    Raises
    ------
    ValueError
        Naming ``patch``, the grid or the multiple, and the remedy.
    """
    ny, nx = (int(g) for g in grid)
    if patch[0] > ny or patch[1] > nx:
        raise ValueError(
            f"patch={patch} is larger than the training grid {(ny, nx)}; use a patch of at "
            "most the grid's size, or patch=None to train on the whole grid"
        )
    bad = [s for s in patch if s < multiple or s % multiple]
    if bad:
        why = f" (2**(levels − 1) for the network's {levels} levels)" if levels else ""
        raise ValueError(
            f"patch={patch}: each side must be a multiple of {multiple}{why}, at least "
            f"{multiple}; e.g. patch={max(multiple, patch[0] // multiple * multiple)}"
        )
    return int(patch[0]), int(patch[1])


class PatchSampler:
    """Crop offsets of the windows of a batch, keyed by (seed, step, row).

    Parameters
    ----------
    size
        ``(ny, nx)`` of a crop (checked by :func:`check_patch_size`).
    valid
        Boolean (C, Y, X) static mask of the training grid: False where a cell was NaN at
        every time step.
    seed
        The run's seed.
    """

    def __init__(self, size: tuple[int, int], valid: np.ndarray, seed: int) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.valid = np.asarray(valid, dtype=bool)
        if self.valid.ndim == 2:
            self.valid = self.valid[None]
        self.seed = int(seed)
        c, ny, nx = self.valid.shape
        py, px = self.size
        if not (1 <= py <= ny and 1 <= px <= nx):
            raise ValueError(f"patch={self.size} does not fit in the grid {(ny, nx)}")
        # valid cells (over all channels) of every crop, from a summed-area table
        table = np.zeros((ny + 1, nx + 1), dtype=np.int64)
        table[1:, 1:] = self.valid.sum(0).cumsum(0).cumsum(1)
        self.counts = table[py:, px:] - table[:-py, px:] - table[py:, :-px] + table[:-py, :-px]
        self.cells = c * py * px

    @property
    def grid(self) -> tuple[int, int]:
        """``(ny, nx)`` of the grid the crops are taken from."""
        return int(self.valid.shape[1]), int(self.valid.shape[2])

    def share(self, oy: int, ox: int) -> float:
        """Share of valid cells (all channels) of the crop at offset ``(oy, ox)``."""
        return float(self.counts[oy, ox]) / self.cells

    def _usable(self, oy: int, ox: int) -> bool:
        return bool(self.counts[oy, ox] >= MIN_PATCH_VALID * self.cells)

    def offsets(
        self,
        rows: Sequence[int],
        *,
        step: int | None,
        starts: Sequence[int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Offsets of the crops of one batch.

        Parameters
        ----------
        rows
            Each window's position in the step's global batch (with several processes,
            rank + world_size × local row).
        step
            The training step; None for validation windows, whose offsets are keyed by
            ``starts`` instead (fixed for the run).
        starts
            The windows' start indices (needed when ``step`` is None).

        Returns
        -------
        oy, ox, usable
            int64 offsets of each crop's first row and column, and whether the crop has a
            share of valid cells of at least :data:`MIN_PATCH_VALID` (False: it goes into
            the batch masked out of the loss).
        """
        if step is None and starts is None:
            raise ValueError("validation crops (step=None) are keyed by their window starts")
        n = len(rows)
        oy, ox = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
        usable = np.zeros(n, dtype=bool)
        hy, hx = self.counts.shape
        for b, row in enumerate(rows):
            if step is None:
                key = [_VALIDATION_TAG, self.seed, int(starts[b]), int(row)]  # type: ignore[index]
            else:
                key = [_TRAIN_TAG, self.seed, int(step), int(row)]
            rng = np.random.default_rng(key)
            for _ in range(MAX_PATCH_DRAWS):
                oy[b], ox[b] = rng.integers(0, hy), rng.integers(0, hx)
                usable[b] = self._usable(int(oy[b]), int(ox[b]))
                if usable[b]:
                    break
        return oy, ox, usable

    def crop(self, x: np.ndarray, oy: np.ndarray, ox: np.ndarray) -> np.ndarray:
        """Crop each row of ``x`` (B, ..., Y, X) at its offset: (B, ..., ny, nx), contiguous."""
        py, px = self.size
        return np.stack(
            [
                x[b, ..., int(oy[b]) : int(oy[b]) + py, int(ox[b]) : int(ox[b]) + px]
                for b in range(len(x))
            ]
        )

    def crop_valid(self, oy: np.ndarray, ox: np.ndarray, usable: np.ndarray) -> np.ndarray:
        """The static mask cropped at each offset, (B, C, ny, nx); all False where not usable."""
        py, px = self.size
        out = np.stack(
            [self.valid[:, int(a) : int(a) + py, int(b) : int(b) + px] for a, b in zip(oy, ox)]
        )
        out[~np.asarray(usable, dtype=bool)] = False
        return out
