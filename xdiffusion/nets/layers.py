"""Building blocks of the spatio-temporal U-Net (pure torch, no xarray).

Every block works on a *frame batch*: a video batch ``(B, C, F, H, W)`` is held as
``(B*F, C, H, W)`` so that the (1, 3, 3) convolutions, the group norms and the spatial
attention are ordinary 2-D operations over frames (measured faster than ``Conv3d`` with a
``(1, 3, 3)`` kernel on CPU) and cannot mix frames. Only :class:`TemporalAttention` sees
the frame axis; it is told ``frames`` to undo the flattening. The blocks accept any memory
format; the attention layers treat pixels as tokens in ``(N, H, W, C)`` order, which is a
free view of the channels-last activations :class:`~xdiffusion.nets.unet.UNet3D` uses.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CONV_PAD_MODES",
    "SPATIAL_ATTENTION_KINDS",
    "Downsample",
    "EdgeConv2d",
    "LambdaEmbedding",
    "Pointwise",
    "ResBlock",
    "SpaceTimeAttention",
    "SpatialAttention",
    "TemporalAttention",
    "Upsample",
    "relative_index",
]

#: Spatial attention per level: none, linear or full softmax attention over each frame's
#: pixels, or ``"spacetime"``: full attention over every pixel of every frame of a window
#: (:class:`SpaceTimeAttention`).
SPATIAL_ATTENTION_KINDS = ("none", "linear", "full", "spacetime")
#: How the 3×3 convolutions pad the grid's edges (``padding_mode`` of ``nn.Conv2d``):
#: ``"zeros"`` (the edge sees a frame of zeros, which differs from any field in diffusion
#: space, so edge cells are a case of their own), ``"replicate"`` (the edge values
#: continued outward) or ``"reflect"`` (mirrored about the edge cell, so a corner sees its
#: neighbours rather than copies of itself; replicate on a level whose grid has a side of
#: 1). See :class:`EdgeConv2d`.
CONV_PAD_MODES = ("zeros", "replicate", "reflect")


class EdgeConv2d(nn.Conv2d):
    """3×3 convolution with padding 1 whose edge padding is one of :data:`CONV_PAD_MODES`.

    The parameters are those of ``nn.Conv2d(c_in, c_out, 3, padding=1)`` whatever the
    mode, so weights move between modes. ``"reflect"`` needs two cells a side; a smaller
    grid (the coarsest level of a tiny input) is padded by replication instead.
    """

    def __init__(self, c_in: int, c_out: int, padding_mode: str = "zeros") -> None:
        super().__init__(c_in, c_out, 3, padding=1, padding_mode=padding_mode)

    def _conv_forward(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        if self.padding_mode == "reflect" and min(x.shape[-2:]) < 2:
            x = F.pad(x, self._reversed_padding_repeated_twice, mode="replicate")
            return F.conv2d(x, weight, bias, self.stride, 0, self.dilation, self.groups)
        return super()._conv_forward(x, weight, bias)


class LambdaEmbedding(nn.Module):
    """Embed the log-SNR λ by fixed Fourier features followed by an MLP.

    The network is conditioned on λ_t rather than t (Herbert (2023), eqs. 2.60–2.67: the v-predictor
    is v̂_θ(z_t, λ_t)). λ spans roughly [λmin, λmax] = [−30, 30], so it is divided by
    ``lam_scale`` first and then sampled by sines and cosines whose periods range
    geometrically from the whole interval (period 4 in the scaled unit, i.e. smooth and
    monotone-ish across [−1, 1]) down to one unit of λ, which resolves every noise level
    the samplers use.

    Parameters
    ----------
    fourier_dim : int
        Number of Fourier features (even: half sines, half cosines).
    emb_dim : int
        Width of the output embedding.
    lam_scale : float
        Divisor applied to λ before the Fourier features.
    """

    def __init__(self, fourier_dim: int, emb_dim: int, lam_scale: float) -> None:
        super().__init__()
        n = fourier_dim // 2
        lo, hi = math.pi / 2, 2 * math.pi * lam_scale
        freqs = torch.exp(torch.linspace(math.log(lo), math.log(hi), n, dtype=torch.float64))
        self.register_buffer("freqs", freqs.float(), persistent=False)
        self.lam_scale = float(lam_scale)
        self.mlp = nn.Sequential(nn.Linear(2 * n, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, lam: torch.Tensor) -> torch.Tensor:
        """Map ``lam`` of shape ``(B,)`` to an embedding of shape ``(B, emb_dim)``."""
        # Features in float32 whatever autocast says: λ up to 30 times frequencies up to
        # ~190 would lose the phase in bfloat16.
        u = lam.float()[:, None] / self.lam_scale * self.freqs[None, :]
        return self.mlp(torch.cat([u.sin(), u.cos()], dim=-1))


class Pointwise(nn.Linear):
    """1×1 convolution of ``(N, C, H, W)`` as a matrix product over pixel tokens.

    PyTorch's CPU backend sends 1×1 ``Conv2d`` to a slow im2col path; on channels-last
    activations this is one GEMM with no copies.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_features, H, W) -> (N, out_features, H, W)``."""
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class TemporalConv(nn.Module):
    """A (3, 1, 1) convolution over frames, per pixel: ``W₋ x_{t−1} + W₀ x_t + W₊ x_{t+1}``.

    On channels-last activations ``(B·F, C, H, W)`` the frames of a pixel are a view
    ``(B, F, H, W, C)``, so the three taps are channel GEMMs on shifted views (zero at the
    window's ends), with no layout change. The output layer is zero-initialised, so a block
    that gains it starts as the block without it (a residual added to its output).

    Parameters
    ----------
    channels : int
        Input and output channels.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.taps = nn.Linear(3 * channels, channels)
        nn.init.zeros_(self.taps.weight)
        nn.init.zeros_(self.taps.bias)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """``x``: ``(B·frames, C, H, W)`` → the same shape."""
        n, c, h, w = x.shape
        v = x.permute(0, 2, 3, 1).reshape(n // frames, frames, h, w, c)
        zero = torch.zeros_like(v[:, :1])
        prev = torch.cat([zero, v[:, :-1]], dim=1)
        nxt = torch.cat([v[:, 1:], zero], dim=1)
        out = self.taps(torch.cat([prev, v, nxt], dim=-1))
        return out.reshape(n, h, w, c).permute(0, 3, 1, 2)


class ResBlock(nn.Module):
    """(1, 3, 3) convolutional ResNet block with GroupNorm and FiLM conditioning.

    ``x -> conv(silu(norm(x))) -> norm(.)·(1 + scale) + shift -> silu -> dropout -> conv``
    plus a (1×1 if the width changes) skip. ``scale`` and ``shift`` come from the per-frame
    embedding, so one λ per sample (or per frame, when extra conditioning is given)
    modulates every channel.

    Parameters
    ----------
    c_in, c_out : int
        Input and output channels.
    emb_dim : int
        Width of the conditioning embedding.
    groups : int
        GroupNorm groups (must divide ``c_in`` and ``c_out``).
    dropout : float
        Dropout probability before the second convolution.
    conv_pad : str
        Edge padding of the 3×3 convolutions, one of :data:`CONV_PAD_MODES`.
    temporal : bool
        Add a :class:`TemporalConv` over frames after the second convolution (a
        factorised (2+1)-D block), so frames mix in every block, not only in attention.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        emb_dim: int,
        groups: int,
        dropout: float,
        conv_pad: str = "zeros",
        temporal: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = EdgeConv2d(c_in, c_out, conv_pad)
        self.film = nn.Linear(emb_dim, 2 * c_out)
        self.groups = groups
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = EdgeConv2d(c_out, c_out, conv_pad)
        self.skip = Pointwise(c_in, c_out) if c_in != c_out else nn.Identity()
        self.temporal = TemporalConv(c_out) if temporal else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor, frames: int = 1) -> torch.Tensor:
        """``x``: ``(N, c_in, H, W)`` with ``N = B·frames``; ``emb``: SiLU-activated
        ``(N, emb_dim)``."""
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        # The norm has no affine of its own: FiLM's (1 + scale, shift) plays that role.
        h = torch.addcmul(shift, F.group_norm(h, self.groups), 1 + scale)
        h = self.conv2(self.drop(F.silu(h)))
        if self.temporal is not None:
            h = h + self.temporal(F.silu(h), frames)
        return h + self.skip(x)


def relative_index(frames: int, max_distance: int, device: torch.device) -> torch.Tensor:
    """Index ``(frames, frames)`` of the clipped key-minus-query offset into a bias table.

    Offsets ``s − p`` are clipped to ``[−max_distance, max_distance]`` and shifted to
    ``[0, 2·max_distance]``, so any number of frames can be attended to: pairs further apart
    than ``max_distance`` share one learned bias.
    """
    pos = torch.arange(frames, device=device)
    rel = (pos[None, :] - pos[:, None]).clamp(-max_distance, max_distance)
    return rel + max_distance


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N, H, W, C)``: a free view when ``x`` is channels-last."""
    return x.permute(0, 2, 3, 1)


class TemporalAttention(nn.Module):
    """Pre-norm residual self-attention along frames at every pixel, relative-position biased.

    The score of query frame ``p`` for key frame ``s`` gets a learned per-head bias
    ``b_h(s − p)`` (T5-style, offsets clipped at ``max_distance``): a relative position
    encoding that works for any number of frames. It enters
    ``F.scaled_dot_product_attention`` as an additive mask, which was measured 1.5× cheaper
    on CPU than rotating every query and key (rotary embeddings) at fine levels.

    Parameters
    ----------
    channels : int
        Feature channels.
    heads, head_dim : int
        Attention heads and their width.
    groups : int
        GroupNorm groups of the pre-norm.
    max_distance : int
        Largest frame offset with its own bias.
    """

    def __init__(
        self, channels: int, heads: int, head_dim: int, groups: int, max_distance: int
    ) -> None:
        super().__init__()
        self.heads, self.head_dim, self.max_distance = heads, head_dim, max_distance
        inner = heads * head_dim
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Linear(channels, 3 * inner, bias=False)
        self.out = nn.Linear(inner, channels)
        # Zero bias: attention starts position-agnostic and learns its temporal profile.
        self.rel_bias = nn.Parameter(torch.zeros(heads, 2 * max_distance + 1))

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """``x``: ``(B*frames, C, H, W)`` frame batch; returns the same shape."""
        n, _, h, w = x.shape
        b, hd, d = n // frames, self.heads, self.head_dim
        qkv = self.qkv(_tokens(self.norm(x)))  # (N, H, W, 3·inner)
        if frames == 1:
            # Softmax over a single key is 1: attention returns the value.
            o = qkv[..., 2 * hd * d :]
        else:
            # (B, F, HW, 3, heads, d) -> 3 × (B, HW, heads, F, d): the tokens are frames.
            q, k, v = qkv.view(b, frames, h * w, 3, hd, d).permute(3, 0, 2, 4, 1, 5)
            idx = relative_index(frames, self.max_distance, x.device)
            bias = self.rel_bias[:, idx].to(q.dtype)  # (heads, F, F), broadcast over pixels
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
            o = o.permute(0, 3, 1, 2, 4).reshape(n, h, w, hd * d)
        return x + self.out(o).permute(0, 3, 1, 2)


class SpatialAttention(nn.Module):
    """Pre-norm residual self-attention over the pixels of each frame.

    ``kind="full"`` is softmax attention (``F.scaled_dot_product_attention``), quadratic in
    the number of pixels, meant for coarse levels; ``kind="linear"`` is the linear
    "efficient attention" of Shen et al. (softmax over features for queries and over
    pixels for keys), linear in the number of pixels, as in the reference network.

    Parameters
    ----------
    channels : int
        Feature channels.
    heads, head_dim : int
        Attention heads and their width.
    groups : int
        GroupNorm groups of the pre-norm.
    kind : {"full", "linear"}
        Attention type.
    """

    def __init__(self, channels: int, heads: int, head_dim: int, groups: int, kind: str) -> None:
        super().__init__()
        if kind not in ("full", "linear"):
            raise ValueError(f"kind must be 'full' or 'linear', got {kind!r}")
        self.kind, self.heads, self.head_dim = kind, heads, head_dim
        inner = heads * head_dim
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Linear(channels, 3 * inner, bias=False)
        self.out = nn.Linear(inner, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(N, C, H, W)`` frame batch; returns the same shape."""
        n, _, h, w = x.shape
        hd, d = self.heads, self.head_dim
        qkv = self.qkv(_tokens(self.norm(x))).view(n, h * w, 3, hd, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (N, heads, HW, d) each
        if self.kind == "full":
            o = F.scaled_dot_product_attention(q, k, v)
        else:
            q = q.softmax(dim=-1) * d**-0.5
            k = k.softmax(dim=-2)
            context = k.transpose(-1, -2) @ v  # (N, heads, d_k, d_v)
            o = q @ context  # (N, heads, HW, d_v)
        o = o.transpose(1, 2).reshape(n, h, w, hd * d)
        return x + self.out(o).permute(0, 3, 1, 2)


class SpaceTimeAttention(TemporalAttention):
    """Pre-norm residual self-attention over all pixels of all frames of a window.

    Per-pixel temporal attention relates a cell only to the same cell in other frames, so
    rain that moves several cells an hour is seen as one feature only after convolutions
    have spread it over the displacement. Here every (frame, pixel) token attends to every
    other: a feature can find itself in the next frame wherever it went. Scores get the
    learned per-head bias of the frame offset, as in :class:`TemporalAttention` (space has
    none: the tokens' content and the convolutions carry position, as in full spatial
    attention). Quadratic in frames × pixels: meant for the coarsest level.

    Its parameters are :class:`TemporalAttention`'s (the same projections and bias table);
    only the set of tokens each query sees differs.
    """

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """``x``: ``(B*frames, C, H, W)`` frame batch; returns the same shape."""
        n, _, h, w = x.shape
        b, hd, d, hw = n // frames, self.heads, self.head_dim, h * w
        qkv = self.qkv(_tokens(self.norm(x)))  # (N, H, W, 3·inner)
        # (B, F, HW, 3, heads, d) -> 3 × (B, heads, F·HW, d): tokens ordered frame-major
        q, k, v = qkv.view(b, frames, hw, 3, hd, d).permute(3, 0, 4, 1, 2, 5).flatten(3, 4)
        idx = relative_index(frames, self.max_distance, x.device).repeat_interleave(hw, 0)
        bias = self.rel_bias[:, idx.repeat_interleave(hw, 1)].to(q.dtype)  # (heads, FHW, FHW)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        # (B, heads, F·HW, d) -> (B·F, H, W, heads·d)
        o = o.view(b, hd, frames, h, w, d).permute(0, 2, 3, 4, 1, 5).reshape(n, h, w, hd * d)
        return x + self.out(o).permute(0, 3, 1, 2)


class Downsample(nn.Module):
    """Halve height and width (never frames) with a learned 2×2 stride-2 convolution."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, c_in, H, W) -> (N, c_out, H/2, W/2)``."""
        return self.conv(x)


class Upsample(nn.Module):
    """Double height and width (never frames): 1×1 convolution to 4× channels, pixel shuffle.

    Equivalent to a 2×2 stride-2 transposed convolution (the original U-Net's "up-conv")
    but runs as one matrix product.
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = Pointwise(c_in, 4 * c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, c_in, H, W) -> (N, c_out, 2H, 2W)``."""
        return F.pixel_shuffle(self.conv(x), 2)
