"""Spatio-temporal U-Net v̂_θ(z_t, λ_t) for video diffusion (pure torch, no xarray).

The network predicts v = α ε − σ x (Herbert (2023), eq. 2.67) from a noisy video z_t and its log-SNR
λ_t. Layout follows the reference video U-Net (Herbert (2023), after Ho et al.'s video
diffusion models): (1, 3, 3) convolutional ResNet blocks with GroupNorm and FiLM
conditioning on a Fourier embedding of λ, spatial-only down/up-sampling with skip
connections, temporal attention with learned relative-position biases and spatial attention at
configurable levels. Frames are never downsampled; any grid size and any frame count work
(the grid is padded to a multiple of 2**(levels − 1) inside ``forward`` and cropped back).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xdiffusion.nets.layers import (
    CONV_PAD_MODES,
    SPATIAL_ATTENTION_KINDS,
    Downsample,
    EdgeConv2d,
    LambdaEmbedding,
    ResBlock,
    SpaceTimeAttention,
    SpatialAttention,
    TemporalAttention,
    Upsample,
)
from xdiffusion.validation import check_bool, check_int, check_number, is_int, is_number

__all__ = ["CONV_PAD_MODES", "LEGACY_DEFAULTS", "PAD_MODES", "UNet3D", "UNetConfig", "unet_config"]

PAD_MODES = ("replicate", "reflect", "zeros")
#: Values of fields added after model files were first written, assumed by
#: :meth:`UNetConfig.from_dict` when a stored configuration lacks them: what those files'
#: networks did (a new default applies to new configurations only).
LEGACY_DEFAULTS: dict[str, Any] = {
    "conv_pad": "zeros",
    "temporal_conv": False,
    "global_mean": False,
    "mean_readout": False,
}


#: Features per channel of :func:`global_means`: the frame's mean and the window's.
GLOBAL_MEAN_FEATURES = 2


def global_means(z: torch.Tensor) -> torch.Tensor:
    """Per frame, the mean of z over the frame and over the whole window, per channel, each
    times √n (n the elements averaged): (B, C, F, H, W) → (B, F, 2C), float32.

    Under pure noise both have unit spread whatever the grid, and a shift of the data's
    mean by δ moves them by α δ √n, which is what a window's intensity looks like at high
    noise.
    """
    b, c, f, h, w = z.shape
    zf = z.float()
    frame = zf.mean(dim=(3, 4)) * math.sqrt(h * w)  # (B, C, F)
    window = zf.mean(dim=(2, 3, 4), keepdim=True).squeeze(-1).squeeze(-1) * math.sqrt(f * h * w)
    feats = torch.cat([frame, window.expand(b, c, f)], dim=1)  # (B, 2C, F)
    return feats.transpose(1, 2)


@dataclass
class UNetConfig:
    """Hyper-parameters of :class:`UNet3D` (JSON-serialisable via :meth:`to_dict`).

    Parameters
    ----------
    channels : int
        Input channels (variables).
    out_channels : int or None
        Output channels; ``None`` means ``channels``.
    width : int
        Channels of the first level.
    mults : tuple of int
        Channel multiplier per level; level ``i`` has ``width * mults[i]`` channels and
        ``2**i`` times coarser grid.
    blocks : int
        ResNet blocks per level (same in the down and up paths).
    spatial_attention : tuple of str
        Per level: ``"none"``, ``"linear"`` or ``"full"`` spatial attention, or
        ``"spacetime"``: full attention over all pixels of all frames, with the temporal
        attention's relative-position bias (:class:`~xdiffusion.nets.layers.SpaceTimeAttention`;
        quadratic in frames × pixels, so for the coarsest levels).
    temporal_attention : tuple of bool
        Per level: whether temporal attention follows the ResNet blocks.
    mid_spatial_attention : str
        Spatial attention kind in the middle block (coarsest grid).
    mid_temporal_attention : bool
        Whether the middle block has temporal attention.
    heads : int
        Attention heads at every level, each ``level_channels // heads`` wide; used when
        ``head_dim`` is ``None``.
    head_dim : int or None
        Width of every attention head; if set, a level with ``c`` channels has
        ``c // head_dim`` heads (the count then grows with the width, as in most diffusion
        U-Nets) and ``heads`` is ignored.
    groups : int
        GroupNorm groups; must divide every level's channels.
    emb_dim : int or None
        Width of the λ embedding; ``None`` means ``4 * width``.
    fourier_dim : int
        Number of Fourier features of λ (even).
    lam_scale : float
        λ is divided by this before the Fourier features (λ spans about [−30, 30]).
    cond_features : int
        Extra per-frame conditioning features ``K`` accepted as ``cond (B, F, K)``.
    latent_dim : int
        Size ``k`` of a latent vector w accepted as ``latent`` (``(B, k)`` for the whole
        window or ``(B, F, k)`` per frame), projected by its own linear layer and added to
        the FiLM conditioning next to λ and ``cond`` (representation learning, seed 003).
        0: no latent.
    dropout : float
        Dropout inside the ResNet blocks.
    pad_mode : str
        How the grid is padded to a multiple of ``2**(levels − 1)``: ``"replicate"``,
        ``"reflect"`` (falls back to replicate where the grid is too small) or ``"zeros"``.
    max_relative_position : int
        Largest frame offset with its own learned temporal-attention bias; further offsets
        share the bias of this one.
    temporal_conv : bool
        Give every ResNet block a (3, 1, 1) convolution over frames after its spatial ones
        (:class:`~xdiffusion.nets.layers.TemporalConv`, a factorised (2+1)-D block), so
        neighbouring frames mix at every block and not only in temporal attention. Off by
        default: at a 5-minute CPU budget it raised the samples' lag-1 autocorrelation
        (0.19 → 0.32, data 0.66) but worsened the temporal and spatial spectra, the
        quantiles and lags 2–3 (``benchmarks/quality.py``, docs/quality.md). A stored
        configuration without it is read as False (:data:`LEGACY_DEFAULTS`).
    conv_pad : str
        Edge padding of every 3×3 convolution: ``"zeros"``, ``"replicate"`` or
        ``"reflect"`` (see :data:`~xdiffusion.nets.layers.CONV_PAD_MODES`). A stored
        configuration without it is read as ``"zeros"`` (:data:`LEGACY_DEFAULTS`). The
        weights have the same shapes either way.
    global_mean : bool
        Add the means of z over each frame and over the window (per channel, times √n so
        that pure noise gives unit spread) to every frame's FiLM conditioning, through a
        zero-initialised linear layer. The ResNet blocks' GroupNorm removes each frame's
        mean and scale, so without it the network sees a window's overall intensity only
        through what survives the normalisation, which at high noise is little
        (docs/quality.md). A stored configuration without it is read as False
        (:data:`LEGACY_DEFAULTS`).
    mean_readout : bool
        Add to every output frame a zero-initialised linear map of the spatial mean of the
        last features *before* the output GroupNorm. That norm removes each frame's mean
        per group, so without it a spatially uniform output — each frame's mean of v̂,
        which at high noise sets how wet a window ends up — can only be made through
        differences between channels; with it there is a direct path. A stored
        configuration without it is read as False (:data:`LEGACY_DEFAULTS`).
    """

    channels: int = 1
    out_channels: int | None = None
    width: int = 32
    mults: tuple[int, ...] = (1, 2, 2)
    blocks: int = 1
    spatial_attention: tuple[str, ...] = ("none", "none", "full")
    temporal_attention: tuple[bool, ...] = (True, True, True)
    mid_spatial_attention: str = "full"
    mid_temporal_attention: bool = True
    heads: int = 4
    head_dim: int | None = None
    groups: int = 8
    emb_dim: int | None = None
    fourier_dim: int = 32
    lam_scale: float = 30.0
    cond_features: int = 0
    latent_dim: int = 0
    dropout: float = 0.0
    pad_mode: str = "replicate"
    max_relative_position: int = 16
    conv_pad: str = "zeros"
    temporal_conv: bool = False
    global_mean: bool = False
    mean_readout: bool = False

    def __post_init__(self) -> None:
        self.mults = tuple(self.mults) if isinstance(self.mults, list | tuple) else self.mults
        for name in ("spatial_attention", "temporal_attention"):
            value = getattr(self, name)
            if isinstance(value, list | tuple):
                setattr(self, name, tuple(value))
        self._validate()

    def _validate(self) -> None:
        # Every number is stored back as a plain Python int/float/bool, so a config built
        # from numpy scalars still serialises with to_dict().
        def pos_int(name: str, allow_zero: bool = False) -> None:
            v = check_int(getattr(self, name), f"UNetConfig.{name}", minimum=0 if allow_zero else 1)
            setattr(self, name, v)

        def flag(name: str, value: Any) -> bool:
            try:
                return check_bool(value, name)
            except TypeError as err:  # a malformed config is a ValueError, as elsewhere
                raise ValueError(str(err)) from None

        for name in (
            "channels",
            "width",
            "blocks",
            "heads",
            "groups",
            "fourier_dim",
            "max_relative_position",
        ):
            pos_int(name)
        pos_int("cond_features", allow_zero=True)
        pos_int("latent_dim", allow_zero=True)
        for name in ("out_channels", "head_dim", "emb_dim"):
            if getattr(self, name) is not None:
                pos_int(name)
        if not (
            isinstance(self.mults, tuple)
            and self.mults
            and all(is_int(m) and m > 0 for m in self.mults)
        ):
            raise ValueError(
                f"UNetConfig.mults must be a non-empty sequence of positive integers, "
                f"got {self.mults!r}"
            )
        self.mults = tuple(int(m) for m in self.mults)
        levels = len(self.mults)
        sa, ta = self.spatial_attention, self.temporal_attention
        if not (
            isinstance(sa, tuple)
            and len(sa) == levels
            and all(s in SPATIAL_ATTENTION_KINDS for s in sa)
        ):
            raise ValueError(
                f"UNetConfig.spatial_attention must list one of {SPATIAL_ATTENTION_KINDS} per "
                f"level ({levels} levels), got {sa!r}"
            )
        if not (
            isinstance(ta, tuple)
            and len(ta) == levels
            and all(isinstance(t, bool | np.bool_) for t in ta)
        ):
            raise ValueError(
                f"UNetConfig.temporal_attention must list one bool per level ({levels} levels), "
                f"got {ta!r}"
            )
        self.temporal_attention = tuple(bool(t) for t in ta)
        if self.mid_spatial_attention not in SPATIAL_ATTENTION_KINDS:
            raise ValueError(
                f"UNetConfig.mid_spatial_attention must be one of {SPATIAL_ATTENTION_KINDS}, "
                f"got {self.mid_spatial_attention!r}"
            )
        self.mid_temporal_attention = flag(
            "UNetConfig.mid_temporal_attention", self.mid_temporal_attention
        )
        self.temporal_conv = flag("UNetConfig.temporal_conv", self.temporal_conv)
        self.global_mean = flag("UNetConfig.global_mean", self.global_mean)
        self.mean_readout = flag("UNetConfig.mean_readout", self.mean_readout)
        if self.fourier_dim % 2:
            raise ValueError(f"UNetConfig.fourier_dim must be even, got {self.fourier_dim}")
        for c in self.level_channels:
            if c % self.groups:
                raise ValueError(
                    f"UNetConfig.groups={self.groups} must divide every level's channels "
                    f"{self.level_channels}; change groups, width or mults"
                )
            if self.head_dim is None and c % self.heads:
                raise ValueError(
                    f"UNetConfig.heads={self.heads} must divide every level's channels "
                    f"{self.level_channels} when head_dim is None; set head_dim or change heads"
                )
            if self.head_dim is not None and c % self.head_dim:
                raise ValueError(
                    f"UNetConfig.head_dim={self.head_dim} must divide every level's channels "
                    f"{self.level_channels}; change head_dim or set it to None and use heads"
                )
        self.lam_scale = check_number(  # type: ignore[assignment]
            self.lam_scale, "UNetConfig.lam_scale", minimum=0.0, exclusive_minimum=True
        )
        if not (is_number(self.dropout) and 0 <= self.dropout < 1):
            raise ValueError(f"UNetConfig.dropout must be in [0, 1), got {self.dropout!r}")
        self.dropout = float(self.dropout)
        if self.pad_mode not in PAD_MODES:
            raise ValueError(
                f"UNetConfig.pad_mode must be one of {PAD_MODES}, got {self.pad_mode!r}"
            )
        if self.conv_pad not in CONV_PAD_MODES:
            raise ValueError(
                f"UNetConfig.conv_pad must be one of {CONV_PAD_MODES}, got {self.conv_pad!r}"
            )

    @property
    def level_channels(self) -> tuple[int, ...]:
        """Channels of each level, ``width * mults[i]``."""
        return tuple(self.width * m for m in self.mults)

    def attention_heads(self, channels: int) -> tuple[int, int]:
        """``(heads, head width)`` of attention at a level with ``channels`` channels."""
        if self.head_dim is not None:
            return channels // self.head_dim, self.head_dim
        return self.heads, channels // self.heads

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (tuples become lists)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        json.dumps(out)  # fail here, not when the model is saved
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UNetConfig:
        """Build and validate a config from :meth:`to_dict` output.

        Fields the dict lacks take their :data:`LEGACY_DEFAULTS` value if they have one (a
        model file written before the field existed), else the dataclass default.

        Raises
        ------
        ValueError
            If ``d`` is not a mapping, has keys that are not config fields, or has
            malformed values.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"UNetConfig.from_dict expects a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown UNetConfig keys {unknown}; valid keys are {sorted(known)}")
        try:
            return cls(**{**LEGACY_DEFAULTS, **dict(d)})
        except TypeError as err:  # e.g. a list where a number belongs
            raise ValueError(f"malformed UNetConfig: {err}") from err


_PRESETS: dict[str, dict[str, Any]] = {
    # Trains in minutes on two CPU cores at 32×32×8.
    "small": dict(
        width=32,
        mults=(1, 2, 2),
        blocks=1,
        spatial_attention=("none", "none", "full"),
        temporal_attention=(True, True, True),
        mid_spatial_attention="full",
        head_dim=32,
    ),
    # Herbert (2023)'s network: lucidrains' Unet3D with dim=64, dim_mults=(1, 2, 4, 8),
    # two ResNet blocks per level, linear spatial attention and temporal attention at every
    # level, full spatial attention in the middle.
    "reference": dict(
        width=64,
        mults=(1, 2, 4, 8),
        blocks=2,
        spatial_attention=("linear", "linear", "linear", "linear"),
        temporal_attention=(True, True, True, True),
        mid_spatial_attention="full",
        head_dim=32,
    ),
}


def unet_config(preset: str = "small", channels: int = 1, **overrides: Any) -> UNetConfig:
    """Config of a named preset with optional field overrides.

    Parameters
    ----------
    preset : {"small", "reference"}
        ``"small"`` trains quickly on CPU; ``"reference"`` matches Herbert (2023)'s network.
    channels : int
        Input (and, unless overridden, output) channels.
    **overrides
        Any :class:`UNetConfig` field.

    Returns
    -------
    UNetConfig
    """
    if preset not in _PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(_PRESETS)}")
    # the dataclass defaults for new networks (from_dict fills LEGACY_DEFAULTS otherwise)
    d = {**{k: getattr(UNetConfig, k) for k in LEGACY_DEFAULTS}, **_PRESETS[preset]}
    d["channels"] = channels
    levels = len(overrides.get("mults", d["mults"]))
    if "mults" in overrides and levels != len(d["mults"]):
        # Changing the depth without restating the per-level lists: extend the preset's
        # pattern (its last entry describes the coarsest level).
        for name in ("spatial_attention", "temporal_attention"):
            if name not in overrides:
                base = list(d[name])
                d[name] = tuple((base[:-1] * levels)[: levels - 1] + base[-1:])
    d.update(overrides)
    if "head_dim" not in overrides and d.get("head_dim") and "width" in overrides:
        # A narrower width than the preset's: shrink the head size to one that divides
        # every level's channels instead of rejecting the override.
        chans = [int(d["width"]) * int(m) for m in d["mults"]]
        d["head_dim"] = math.gcd(int(d["head_dim"]), *chans)
    return UNetConfig.from_dict(d)


class UNet3D(nn.Module):
    """Spatio-temporal U-Net predicting v̂_θ(z_t, λ_t) (Herbert (2023), eqs. 2.67–2.69).

    Parameters
    ----------
    config : UNetConfig
        Architecture; see :func:`unet_config` for presets.

    Notes
    -----
    ``forward(z, lam, cond=None)`` takes ``z`` of shape ``(B, C, F, H, W)`` (any ``F >= 1``,
    any ``H, W``), ``lam`` of shape ``(B,)`` (log-SNR λ_t) and optional ``cond`` of shape
    ``(B, F, cond_features)`` added to the λ embedding per frame (and, with
    ``latent_dim > 0``, a latent w of shape ``(B, latent_dim)`` or ``(B, F, latent_dim)``
    through its own projection); it returns a tensor of
    ``z``'s shape. The final convolution is zero-initialised, so an untrained network
    outputs zeros.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        if not isinstance(config, UNetConfig):
            raise TypeError(
                f"config must be a UNetConfig (use unet_config(...)), got {type(config).__name__}"
            )
        self.config = cfg = dataclasses.replace(config)
        chans = cfg.level_channels
        emb = cfg.emb_dim or 4 * cfg.width
        g = cfg.groups

        self.embed = LambdaEmbedding(cfg.fourier_dim, emb, cfg.lam_scale)
        self.cond_proj = nn.Linear(cfg.cond_features, emb) if cfg.cond_features else None
        # its own projection, so a latent coexists with the time features in the FiLM input
        self.latent_proj = nn.Linear(cfg.latent_dim, emb) if cfg.latent_dim else None
        self.mean_proj = None
        if cfg.global_mean:
            # zero: the untrained network ignores the means, and their scale (up to √n) never
            # swamps the λ embedding early in training
            self.mean_proj = nn.Linear(GLOBAL_MEAN_FEATURES * cfg.channels, emb)
            nn.init.zeros_(self.mean_proj.weight)
            nn.init.zeros_(self.mean_proj.bias)
        pad, tconv = cfg.conv_pad, cfg.temporal_conv
        self.stem = EdgeConv2d(cfg.channels, cfg.width, pad)

        def attn(c: int, spatial: str, temporal: bool) -> nn.ModuleList:
            mods = nn.ModuleList()
            if spatial == "spacetime":
                heads = cfg.attention_heads(c)
                mods.append(SpaceTimeAttention(c, *heads, g, cfg.max_relative_position))
            elif spatial != "none":
                mods.append(SpatialAttention(c, *cfg.attention_heads(c), g, spatial))
            if temporal:
                mods.append(
                    TemporalAttention(c, *cfg.attention_heads(c), g, cfg.max_relative_position)
                )
            return mods

        self.down_blocks, self.down_attn, self.downs = (
            nn.ModuleList(),
            nn.ModuleList(),
            nn.ModuleList(),
        )
        c_prev = cfg.width
        for i, c in enumerate(chans):
            blocks = nn.ModuleList()
            for j in range(cfg.blocks):
                blocks.append(ResBlock(c_prev if j == 0 else c, c, emb, g, cfg.dropout, pad, tconv))
            c_prev = c
            self.down_blocks.append(blocks)
            self.down_attn.append(attn(c, cfg.spatial_attention[i], cfg.temporal_attention[i]))
            if i < len(chans) - 1:
                self.downs.append(Downsample(c, chans[i + 1]))
                c_prev = chans[i + 1]

        c = chans[-1]
        self.mid1 = ResBlock(c, c, emb, g, cfg.dropout, pad, tconv)
        self.mid_attn = attn(c, cfg.mid_spatial_attention, cfg.mid_temporal_attention)
        self.mid2 = ResBlock(c, c, emb, g, cfg.dropout, pad, tconv)

        self.up_blocks, self.up_attn, self.ups = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(len(chans))):
            c = chans[i]
            blocks = nn.ModuleList()
            for j in range(cfg.blocks):
                blocks.append(ResBlock(2 * c if j == 0 else c, c, emb, g, cfg.dropout, pad, tconv))
            self.up_blocks.append(blocks)
            self.up_attn.append(attn(c, cfg.spatial_attention[i], cfg.temporal_attention[i]))
            if i > 0:
                self.ups.append(Upsample(c, chans[i - 1]))

        self.out_norm = nn.GroupNorm(g, cfg.width)
        self.out_conv = EdgeConv2d(cfg.width, cfg.out_channels or cfg.channels, pad)
        # Zero output layer: the untrained network predicts v̂ = 0.
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)
        self.mean_out = None
        if cfg.mean_readout:
            # zero, like out_conv: the untrained network still predicts v̂ = 0
            self.mean_out = nn.Linear(cfg.width, cfg.out_channels or cfg.channels)
            nn.init.zeros_(self.mean_out.weight)
            nn.init.zeros_(self.mean_out.bias)

    @staticmethod
    def _run_attn(mods: nn.ModuleList, x: torch.Tensor, frames: int) -> torch.Tensor:
        for m in mods:
            # SpaceTimeAttention is a TemporalAttention: both take the frame count
            x = m(x, frames) if isinstance(m, TemporalAttention) else m(x)
        return x

    def _check_inputs(
        self,
        z: torch.Tensor,
        lam: torch.Tensor | float,
        cond: torch.Tensor | None,
        latent: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        cfg = self.config
        if not isinstance(z, torch.Tensor) or z.ndim != 5:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"z must be a (B, C, F, H, W) tensor, got {shape}")
        b = z.shape[0]
        if z.shape[1] != cfg.channels:
            raise ValueError(
                f"z has {z.shape[1]} channels but the network was built for "
                f"UNetConfig.channels={cfg.channels}"
            )
        lam = torch.as_tensor(lam, device=z.device)
        if lam.ndim == 0 or lam.shape == (1,):
            lam = lam.reshape(1).expand(b)
        if lam.shape != (b,):
            raise ValueError(f"lam must have shape (B,) = ({b},), got {tuple(lam.shape)}")
        if cond is None:
            if cfg.cond_features:
                raise ValueError(
                    f"cond of shape (B, F, {cfg.cond_features}) is required: the network was "
                    f"built with cond_features={cfg.cond_features}"
                )
        else:
            want = (b, z.shape[2], cfg.cond_features)
            if not cfg.cond_features:
                raise ValueError("cond given but UNetConfig.cond_features is 0; pass cond=None")
            if tuple(cond.shape) != want:
                raise ValueError(
                    f"cond must have shape (B, F, K) = {want}, got {tuple(cond.shape)}"
                )
        k = cfg.latent_dim
        if latent is None:
            if k:
                raise ValueError(
                    f"latent of shape (B, {k}) or (B, F, {k}) is required: the network was "
                    f"built with latent_dim={k}"
                )
        elif not k:
            raise ValueError("latent given but UNetConfig.latent_dim is 0; pass latent=None")
        elif tuple(latent.shape) not in ((b, k), (b, z.shape[2], k)):
            raise ValueError(
                f"latent must have shape (B, k) = {(b, k)} or (B, F, k) = "
                f"{(b, z.shape[2], k)}, got {tuple(latent.shape)}"
            )
        return lam, cond

    def forward(
        self,
        z: torch.Tensor,
        lam: torch.Tensor | float,
        cond: torch.Tensor | None = None,
        latent: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict v̂_θ(z, λ) (Herbert (2023), eq. 2.67).

        Parameters
        ----------
        z : torch.Tensor
            Noisy video, shape ``(B, C, F, H, W)``.
        lam : torch.Tensor or float
            Log-SNR λ per sample, shape ``(B,)`` (a scalar is broadcast).
        cond : torch.Tensor, optional
            Extra per-frame features ``(B, F, cond_features)``.
        latent : torch.Tensor, optional
            Latent vector w, ``(B, latent_dim)`` for the window or ``(B, F, latent_dim)``
            per frame.

        Returns
        -------
        torch.Tensor
            Shape of ``z``.
        """
        lam, cond = self._check_inputs(z, lam, cond, latent)
        b, c, f, h, w = z.shape
        cfg = self.config

        emb = self.embed(lam)  # (B, E)
        if cond is None and latent is None and self.mean_proj is None:
            emb = emb.repeat_interleave(f, dim=0)
        else:
            emb = emb[:, None, :].expand(b, f, emb.shape[-1])
            if self.mean_proj is not None:
                emb = emb + self.mean_proj(global_means(z).to(emb.dtype))
            if cond is not None:
                emb = emb + self.cond_proj(cond.to(emb.dtype))
            if latent is not None:
                w_emb = self.latent_proj(latent.to(emb.dtype))
                emb = emb + (w_emb[:, None, :] if latent.ndim == 2 else w_emb)
            emb = emb.reshape(b * f, -1)
        emb = F.silu(emb)  # every FiLM layer starts with SiLU; do it once

        # Frame batch (B*F, C, H, W), padded to a multiple of the total downsampling.
        x = z.transpose(1, 2).reshape(b * f, c, h, w)
        m = 2 ** (len(cfg.mults) - 1)
        ph, pw = -h % m, -w % m
        pads = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        if ph or pw:
            mode = cfg.pad_mode
            if mode == "reflect" and (ph >= h or pw >= w):
                mode = "replicate"
            x = F.pad(x, pads, mode="constant" if mode == "zeros" else mode)

        # Channels-last activations: measured 10–25 % faster convolutions on CPU, and the
        # attention layers' pixel tokens become free views.
        x = self.stem(x).contiguous(memory_format=torch.channels_last)
        skips = []
        for i, (blocks, attn) in enumerate(zip(self.down_blocks, self.down_attn)):
            for blk in blocks:
                x = blk(x, emb, f)
            x = self._run_attn(attn, x, f)
            skips.append(x)
            if i < len(self.downs):
                x = self.downs[i](x)

        x = self.mid1(x, emb, f)
        x = self._run_attn(self.mid_attn, x, f)
        x = self.mid2(x, emb, f)

        for i, (blocks, attn) in enumerate(zip(self.up_blocks, self.up_attn)):
            x = torch.cat([x, skips.pop()], dim=1)
            for blk in blocks:
                x = blk(x, emb, f)
            x = self._run_attn(attn, x, f)
            if i < len(self.ups):
                x = self.ups[i](x)

        feats = x
        x = self.out_conv(F.silu(self.out_norm(x)))
        x = x[:, :, pads[2] : pads[2] + h, pads[0] : pads[0] + w]
        if self.mean_out is not None:
            # the mean over the frame's own cells, not the padding
            means = feats[:, :, pads[2] : pads[2] + h, pads[0] : pads[0] + w].mean(dim=(2, 3))
            x = x + self.mean_out(means)[:, :, None, None]
        return x.reshape(b, f, -1, h, w).transpose(1, 2)
