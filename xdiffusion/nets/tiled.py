"""Overlapping-tile evaluation of a v-network, blended every call (pure torch, no xarray).

The U-Net runs fully convolutionally on any grid, but its activations grow with the grid's
area: a grid whose activations do not fit in memory in one piece is evaluated here in
overlapping spatial tiles (all frames and channels at once, since temporal attention
needs every frame of a pixel). Each tile's v̂ is multiplied by a smooth weight window
that ramps up over the overlap, and the weighted tiles are divided by the sum of the
weights, so that every cell's prediction is a convex combination of the tiles that cover
it. Because the sampler calls the network at every step, the denoised estimate x̂ is
blended at every step and consecutive steps see one consistent field: no tile edges
survive into the sample. Generating tiles independently and stitching them afterwards
would leave seams.

:class:`TiledNet` is a drop-in network: ``TiledNet(net, tile=64, overlap=16)(z, lam,
**kwargs)`` has the signature and output shape of ``net``. Keyword arguments (per-frame
``cond``, a ``latent``) are not spatial and are handed to every tile unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from xdiffusion.validation import check_int, is_int

__all__ = ["TiledNet", "blend_weights", "downsampling", "tile_starts"]


def downsampling(net: Any) -> int:
    """Total spatial downsampling ``2**(len(net.config.mults) − 1)`` of ``net`` (1 if it
    has no such configuration, e.g. a pointwise test network)."""
    mults = getattr(getattr(net, "config", None), "mults", None)
    return 2 ** (len(mults) - 1) if mults else 1


def tile_starts(n: int, tile: int, overlap: int) -> list[int]:
    """First cells of the tiles along one axis of ``n`` cells.

    Tiles of ``tile`` cells start every ``tile − overlap`` cells; the last one is shifted
    back to end at ``n`` (so it may overlap its neighbour by more than ``overlap``), which
    keeps every tile full-size: the network then pads nothing inside a tile. An axis not
    longer than ``tile`` is one tile starting at 0.

    Parameters
    ----------
    n
        Cells along the axis.
    tile
        Cells per tile.
    overlap
        Cells shared by consecutive tiles (at least), ``0 <= overlap < tile``.

    Returns
    -------
    list of int
        Increasing starts; the tile ``k`` covers ``starts[k]:starts[k] + min(tile, n)``.
    """
    if n <= tile:
        return [0]
    starts = list(range(0, n - tile, tile - overlap))
    starts.append(n - tile)
    return starts


def _ramp(overlap: int) -> Tensor:
    """Raised cosine rising over ``overlap`` cells, strictly inside (0, 1).

    Sampled at cell centres ((i + 0.5) / overlap), so that a rising ramp and the falling
    one of the neighbouring tile sum to exactly 1 over an overlap of ``overlap`` cells (a
    partition of unity before normalisation), and no weight is 0: a cell is never left to
    a tile whose weight vanished.
    """
    i = torch.arange(overlap, dtype=torch.float64)
    return 0.5 - 0.5 * torch.cos(math.pi * (i + 0.5) / overlap)


def _axis_weights(n: int, tile: int, overlap: int) -> list[tuple[slice, Tensor]]:
    """(cells, 1-D weights) of each tile along one axis, before normalisation."""
    size = min(tile, n)
    out = []
    for s in tile_starts(n, tile, overlap):
        w = torch.ones(size, dtype=torch.float64)
        if overlap:
            ramp = _ramp(overlap)
            # Only sides facing another tile taper; a side on the grid's edge keeps full
            # weight (no other tile covers those cells, and tiny weights cost precision).
            if s > 0:
                w[:overlap] = torch.minimum(w[:overlap], ramp)
            if s + size < n:
                w[-overlap:] = torch.minimum(w[-overlap:], ramp.flip(0))
        out.append((slice(s, s + size), w))
    return out


def blend_weights(
    shape: tuple[int, int], tile: tuple[int, int], overlap: int
) -> list[tuple[slice, slice, Tensor]]:
    """Normalised blending weights of the tiles of a ``shape`` grid.

    Parameters
    ----------
    shape
        ``(H, W)`` of the grid.
    tile
        ``(ty, tx)`` cells per tile (clipped to the grid).
    overlap
        Cells shared by neighbouring tiles.

    Returns
    -------
    list of (slice, slice, Tensor)
        Per tile: its rows, its columns and its weights (float64, tile-shaped), strictly
        positive; over all tiles they sum to 1 in every cell of the grid.
    """
    rows = _axis_weights(shape[0], tile[0], overlap)
    cols = _axis_weights(shape[1], tile[1], overlap)
    tiles = [(ys, xs, wy[:, None] * wx[None, :]) for ys, wy in rows for xs, wx in cols]
    total = torch.zeros(shape, dtype=torch.float64)
    for ys, xs, w in tiles:
        total[ys, xs] += w
    # every cell lies in at least one tile with a positive weight, so total > 0
    return [(ys, xs, w / total[ys, xs]) for ys, xs, w in tiles]


def _tile_size(tile: int | Sequence[int], factor: int) -> tuple[int, int]:
    if is_int(tile):
        pair: Sequence[Any] = (tile, tile)
    elif isinstance(tile, Sequence) and not isinstance(tile, str) and len(tile) == 2:
        pair = tile
    else:
        raise ValueError(f"tile must be an integer or a (ty, tx) pair of integers, got {tile!r}")
    out = []
    for name, t in zip(("ty", "tx"), pair):
        t = check_int(t, f"tile ({name})", minimum=1)
        if t % factor:
            raise ValueError(
                f"tile ({name}) = {t} must be a multiple of the network's downsampling "
                f"{factor} (2**(levels − 1)), so that the network pads nothing inside a tile"
            )
        out.append(t)
    return out[0], out[1]


class TiledNet(nn.Module):
    """A v-network evaluated on overlapping spatial tiles whose outputs are blended.

    Parameters
    ----------
    net
        The network, ``net(z, lam, **kwargs) -> v̂`` with ``z`` of shape
        ``(B, C, F, H, W)``; a :class:`~xdiffusion.nets.UNet3D` or a wrapper of one
        (e.g. :class:`~xdiffusion.accel.CompiledNet`).
    tile
        Tile size in cells, ``ty = tx = tile`` or ``(ty, tx)``; each a positive multiple of
        the network's downsampling ``2**(len(net.config.mults) − 1)``.
    overlap
        Cells shared by neighbouring tiles, even and ``0 <= overlap < min(ty, tx)``. The
        weights ramp (raised cosine) over the overlap; ``0`` gives hard tile edges (seams:
        for comparison only).

    Raises
    ------
    ValueError
        For a tile or overlap outside those ranges.

    Notes
    -----
    A grid no larger than the tile in both directions is evaluated in one piece by
    ``net`` itself: the output is bit-identical to ``net``'s. Otherwise tiles are run one
    at a time (peak memory is that of one tile's activations plus the output) and the
    grid is covered by tiles of exactly ``(ty, tx)`` cells (or the grid's extent along an
    axis not longer than the tile), the last in each direction shifted back to end at the
    grid's edge. When ``z`` requires a gradient (reconstruction guidance), each tile is
    checkpointed, so the backward pass also holds one tile's activations at a time.
    Blending makes the output of a pointwise network exactly that of the whole grid; for
    the U-Net, whose receptive field and GroupNorm statistics span its input, a tile's
    interior differs slightly from the whole grid's, and the blend hides the transitions.
    """

    def __init__(self, net: Any, tile: int | Sequence[int], overlap: int = 16) -> None:
        super().__init__()
        if not callable(net):
            raise TypeError(f"net must be a callable network, got {type(net).__name__}")
        # nn.Module registers a module (its parameters then move with .to()); a wrapper
        # that is no module (CompiledNet) is kept as a plain attribute
        self.net = net
        self.factor = downsampling(net)
        self.tile = _tile_size(tile, self.factor)
        overlap = check_int(overlap, "overlap", minimum=0)  # type: ignore[assignment]
        if overlap >= min(self.tile):
            raise ValueError(
                f"overlap must be smaller than the tile {self.tile}, got {overlap}; "
                "neighbouring tiles would not advance"
            )
        if overlap % 2:
            raise ValueError(f"overlap must be even, got {overlap}")
        self.overlap = int(overlap)
        # weights by grid shape, device and dtype: every sampler step of a task asks for
        # the same ones (and a GPU would otherwise receive them from the host every step)
        self._weights: dict[tuple[Any, ...], list[tuple[slice, slice, Tensor]]] = {}

    @property
    def config(self) -> Any:
        """The wrapped network's configuration (the engine reads ``config.mults``)."""
        return getattr(self.net, "config", None)

    def extra_repr(self) -> str:
        return f"tile={self.tile}, overlap={self.overlap}"

    def tiles(
        self,
        shape: tuple[int, int],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float64,
    ) -> list[tuple[slice, slice, Tensor]]:
        """The tiles of a ``(H, W)`` grid with their normalised weights on ``device`` in
        ``dtype`` (cached); see :func:`blend_weights`."""
        shape = (int(shape[0]), int(shape[1]))
        key = (shape, torch.device(device), dtype)
        if key not in self._weights:
            exact = blend_weights(shape, self.tile, self.overlap)
            self._weights[key] = [(ys, xs, w.to(key[1], dtype)) for ys, xs, w in exact]
        return self._weights[key]

    def forward(self, z: Tensor, lam: Tensor | float, **kwargs: Any) -> Tensor:
        """Blended v̂ of the tiles of ``z``.

        Parameters
        ----------
        z
            Noisy video ``(B, C, F, H, W)``.
        lam
            Log-SNR per sample ``(B,)`` (or what ``net`` accepts).
        **kwargs
            Passed to every call of ``net`` unchanged (``cond``, ``latent``, …).

        Returns
        -------
        torch.Tensor
            ``net``'s output shape, ``(B, C_out, F, H, W)``.
        """
        h, w = z.shape[-2:]
        if h <= self.tile[0] and w <= self.tile[1]:
            return self.net(z, lam, **kwargs)  # one piece: exactly the network
        # Reconstruction guidance differentiates x̂ with respect to z: plain autograd would
        # keep every tile's activations for the backward pass, i.e. the whole grid's, so
        # each tile is checkpointed (recomputed, one at a time, in the backward pass).
        grad = torch.is_grad_enabled() and z.requires_grad
        out: Tensor | None = None
        weights: list[Tensor] = []
        for k, (ys, xs, _) in enumerate(self.tiles((h, w))):
            if grad:
                v = checkpoint(self.net, z[..., ys, xs], lam, use_reentrant=False, **kwargs)
            else:
                v = self.net(z[..., ys, xs], lam, **kwargs)
            if out is None:
                # accumulate in at least the input's precision (a bf16 v̂ under autocast
                # would lose the blend's small weights)
                dtype = torch.promote_types(v.dtype, z.dtype)
                out = torch.zeros((*v.shape[:-2], h, w), dtype=dtype, device=v.device)
                weights = [wt for _, _, wt in self.tiles((h, w), out.device, dtype)]
            out[..., ys, xs] += v.to(out.dtype) * weights[k]
        return out  # type: ignore[return-value]  # a grid larger than a tile has tiles
