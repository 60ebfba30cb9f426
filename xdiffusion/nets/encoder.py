"""The encoder E_φ of a latent-conditioned model: q_φ(w | x) = N(μ_φ(x), σ²_φ(x) I) (seed 003 §2).

A small convolutional network over one window in diffusion space: a (3, 3, 3) convolution
that mixes neighbouring frames (so advection, not only intensity, is visible to it), then
``levels`` stages of SiLU and (3, 3, 3) convolutions that halve the grid (no per-window
normalisation, which would remove the window's amplitude), then a pooling over the valid
elements of frames and space ("pooled over space and time"), mapped linearly to μ and
log σ² ∈ ℝᵏ.

The pooling is statistics pooling by default: the mean and the standard deviation of each
feature, as x-vector speaker embeddings pool (Snyder et al. 2018). A window's intensity and
variability are second-order statistics that a mean of features shows only weakly: with
``pooling="mean"`` (the only pooling of model files written before the option) a linear
probe of the latent mean reads log intensity at 0.74–0.76 after the benchmark's fit, with
``"stats"`` at 0.92–0.94 (docs/latent.md, benchmarks/results/latent-probe-ablations.json).

The encoder sees the mask of elements that count as a second input channel per variable,
so a missing cell (given to it as 0) is not read as a value of 0; the pooling also uses
counted positions only.

Pure torch: no xarray here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xdiffusion.validation import is_int

__all__ = ["ACTNORM_FLOOR", "LOGVAR_RANGE", "POOLINGS", "Encoder", "EncoderConfig"]

#: log σ² is clamped to this range: exp(−20) keeps σ > 0 in float32 and a posterior wider
#: than e^(10/2) ≈ 150 prior standard deviations carries no information anyway.
LOGVAR_RANGE = (-20.0, 10.0)
#: Smallest standard deviation :meth:`Encoder.initialize` divides by (features that do not
#: vary across the batch keep a bounded scale).
ACTNORM_FLOOR = 1e-6
#: Added under the square root of the pooled variance (a constant window's features have
#: none, and d sqrt / d v is infinite at 0).
STD_FLOOR = 1e-6
#: Poolings over frames and space: ``"mean"`` of each feature, or ``"stats"``, its mean and
#: standard deviation.
POOLINGS = ("mean", "stats")
#: Pooling of encoder configs that do not name one: the files written before the option.
LEGACY_POOLING = "mean"


@dataclass
class EncoderConfig:
    """Hyper-parameters of :class:`Encoder` (JSON-serialisable via :meth:`to_dict`).

    Parameters
    ----------
    channels : int
        Input variables C (the mask adds C more input channels).
    latent_dim : int
        Size k of w.
    width : int
        Channels of the first convolution; each stage doubles them.
    levels : int
        Stride-2 spatial stages after the first convolution.
    pooling : {"stats", "mean"}
        How features are pooled over frames and space: their mean and standard deviation
        (``"stats"``), or their mean only (``"mean"``; what configs without the key mean).
    """

    channels: int = 1
    latent_dim: int = 8
    width: int = 16
    levels: int = 3
    pooling: str = "stats"

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(
                f"EncoderConfig.pooling must be one of {POOLINGS}, got {self.pooling!r}"
            )
        for f in fields(self):
            if f.name == "pooling":
                continue
            v = getattr(self, f.name)
            if not is_int(v) or int(v) < 1:
                raise ValueError(f"EncoderConfig.{f.name} must be a positive integer, got {v!r}")
            setattr(self, f.name, int(v))

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-serialisable dict; ``pooling="mean"`` is left out, so a
        mean-pooling encoder is described as in files from before the option (which
        older readers load)."""
        out = asdict(self)
        if out["pooling"] == LEGACY_POOLING:
            del out["pooling"]
        json.dumps(out)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EncoderConfig:
        """Build and validate from :meth:`to_dict` output; unknown keys are refused.

        A mapping without ``pooling`` (model files written before the key existed) pools
        by mean, as those models were trained.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"EncoderConfig.from_dict expects a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown EncoderConfig keys {unknown}; valid keys are {sorted(known)}"
            )
        try:
            return cls(**{"pooling": LEGACY_POOLING, **dict(d)})
        except TypeError as err:
            raise ValueError(f"malformed EncoderConfig: {err}") from err


class Encoder(nn.Module):
    """E_φ: a window (B, C, F, H, W) in diffusion space → (μ, log σ²), each (B, k).

    Parameters
    ----------
    config
        Architecture.

    Notes
    -----
    Works on any F ≥ 1 and any H, W (convolutions pad, the pooling is global). The output
    layer is initialised to zero, so an untrained encoder gives q(w | x) = N(0, I) for
    every x: KL = 0, and training starts from a model that ignores w.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        if not isinstance(config, EncoderConfig):
            raise TypeError(f"config must be an EncoderConfig, got {type(config).__name__}")
        self.config = cfg = config
        # No per-sample normalisation (GroupNorm): it would divide out a window's
        # amplitude, the very thing (intensity) a latent should describe.
        layers: list[nn.Module] = [nn.Conv3d(2 * cfg.channels, cfg.width, 3, padding=1)]
        c = cfg.width
        for _ in range(cfg.levels):
            layers += [nn.SiLU(), nn.Conv3d(c, 2 * c, 3, stride=(1, 2, 2), padding=1)]
            c *= 2
        layers += [nn.SiLU()]
        self.features = nn.Sequential(*layers)
        if cfg.pooling == "stats":
            c *= 2
        # ActNorm (Kingma & Dhariwal 2018) of the pooled features, set from data by
        # initialize(): a window's features differ from the next's by well under 1 % of
        # their size (mostly-dry precipitation), so without it the head would need weights
        # in the hundreds to read them, and an Adam-trained head never gets there.
        self.shift = nn.Parameter(torch.zeros(c))
        self.log_scale = nn.Parameter(torch.zeros(c))
        self.head = nn.Linear(c, 2 * cfg.latent_dim)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def pooled(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """The features of each window pooled over its counted positions: (B, D), their
        mean (D = features) or, with ``pooling="stats"``, their mean and standard
        deviation (D = 2 × features)."""
        if x.ndim != 5 or x.shape[1] != self.config.channels:
            raise ValueError(
                f"x must be (B, {self.config.channels}, F, H, W), got {tuple(x.shape)}"
            )
        m = torch.ones_like(x) if mask is None else mask.expand_as(x).to(x.dtype)
        # the pooled sums run over thousands of positions: in float32 even under bf16
        # autocast, where a bf16 variance would lose the small differences between windows
        h = self.features(torch.cat([x * m, m], dim=1))
        if h.dtype in (torch.float16, torch.bfloat16):
            h = h.float()
        m = m.to(h.dtype)
        # the mean over positions with any counted element in their receptive field's
        # centre cell: downsample the mask the way the features were
        keep = F.adaptive_max_pool3d(m.amax(1, keepdim=True), h.shape[2:])
        count = keep.sum((2, 3, 4)).clamp_min(1.0)
        mean = (h * keep).sum((2, 3, 4)) / count
        if self.config.pooling == "mean":
            return mean
        dev = (h - mean[:, :, None, None, None]) * keep
        # the floor keeps the gradient of sqrt finite for a constant (all-dry) window
        std = torch.sqrt(dev.square().sum((2, 3, 4)) / count + STD_FLOOR**2)
        return torch.cat([mean, std], dim=1)

    @torch.no_grad()
    def initialize(self, x: Tensor, mask: Tensor | None = None) -> None:
        """Data-dependent initialisation: the pooled features of the windows ``x`` get zero
        mean and unit standard deviation over the batch (per feature)."""
        p = self.pooled(x, mask).float()
        self.shift.copy_(p.mean(0))
        self.log_scale.copy_(-torch.log(p.std(0, unbiased=False).clamp_min(ACTNORM_FLOOR)))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """μ and log σ² of q(w | x), each (B, latent_dim), float32.

        Parameters
        ----------
        x
            (B, C, F, H, W) window in diffusion space.
        mask
            Boolean, broadcastable to ``x``: elements that count (others are read as 0
            and flagged as missing); None: all.
        """
        pooled = (self.pooled(x, mask).float() - self.shift) * self.log_scale.exp()
        out = self.head(pooled).float()  # float32 also under autocast, as documented
        mu, logvar = out.chunk(2, dim=-1)
        return mu, logvar.clamp(*LOGVAR_RANGE)
