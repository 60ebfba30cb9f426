"""The codec: physical values ↔ diffusion space, one :class:`VariableCodec` per variable.

For one variable the chain is (Herbert (2023), §4.2–§4.3)::

    physical x ──f──▶ f(x) ──affine──▶ s ∈ [−1, 1] ──h_ω (optional)──▶ diffusion space y

with ``f`` a fixed transform (:mod:`xdiffusion.transforms`), the affine map sending the
training range ``[f(min), f(max)]`` to ``[−1, 1]``, and ``h_ω`` the optional learned
monotone network (eq. 4.13–4.15). :class:`VariableCodec` owns all three and is the only
place the chain is written: encoding, the exact decode, its differentiable version (for
guidance through a nonlinear observation), the log-determinant (eq. 4.10) and the h_ω
penalty (eq. 4.15). :class:`Codec` applies one per channel to (B, C, ...) tensors; it is
an ``nn.Module`` so that h_ω's parameters train, average (EMA) and save with the network.

h_ω is always evaluated in float32 with autocast disabled: its matmuls are on autocast's
lower-precision list, so under CUDA bf16 autocast training would otherwise see a bf16 h_ω
while decoding (outside autocast) inverts the float32 one.

Pure torch: no xarray here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from xdiffusion.transforms import (
    DEFAULT_LOGDET_EPS,
    Identity,
    LearnedMonotone,
    Transform,
    get_transform,
)

__all__ = ["DECODE_SNAP", "Codec", "VariableCodec"]

#: Scaled values within this of −1 decode to exactly −1, i.e. to the training minimum (0
#: for precipitation). A sampler ends at α·x̂ + (residual noise) with α just below 1 and x̂
#: clipped to [−1, 1], so a dry cell (x̂ = −1) comes out a few float32 steps (6e-8) above
#: −1, which sqrt⁻¹ turns into ~1e-14 mm h-1 instead of 0. 1e-5 of the half range is far
#: above that residue (~1e-7) and far below real structure (with sqrt and a 50 mm h-1
#: maximum it is 1e-9 mm h-1; with log1p, 2e-5 mm h-1).
DECODE_SNAP = 1e-5


def _as_bound(value: Any, name: str) -> Tensor:
    try:
        t = torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if t.ndim != 0:
        raise ValueError(
            f"{name} must be a scalar (one codec per variable; use Codec for several), "
            f"got shape {tuple(t.shape)}"
        )
    if not bool(torch.isfinite(t)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return t.detach().cpu()


def _check_dry_below(value: Any, lower: float | None) -> float | None:
    """``dry_below`` as a float above ``lower`` (None stays None)."""
    if value is None:
        return None
    if lower is None:
        raise ValueError(
            "dry_below needs a transform with a lower bound (sqrt, log1p): without one "
            "there is no dry value to decode to"
        )
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"dry_below must be a finite number or None, got {value!r}")
    if value <= lower:
        raise ValueError(f"dry_below must be above the lower bound {lower}, got {value!r}")
    return float(value)


def _float(x: Tensor) -> Tensor:
    x = torch.as_tensor(x)
    return x if x.is_floating_point() else x.to(torch.get_default_dtype())


class VariableCodec(nn.Module):
    """One variable's chain physical → diffusion space and back.

    Parameters
    ----------
    transform
        Fixed transform ``f`` (anything :func:`~xdiffusion.transforms.get_transform` takes).
    lo, hi
        ``f`` of the training minimum and maximum (scalars, ``hi > lo``).
    learned
        Optional :class:`~xdiffusion.transforms.LearnedMonotone` h_ω applied after scaling.
    dry_below
        For transforms with a lower bound: decoded values below this (physical units)
        become the lower bound exactly. :func:`~xdiffusion.fit` sets it to the smallest
        value above the lower bound in the training data when the data has exact values
        at the bound (dry cells), since no value in between was ever observed: generated
        values there are dry cells the sampler did not bring down to the bound exactly.
        None: no threshold (model files from before it existed).

    Notes
    -----
    :meth:`to_scaled` and :meth:`encode` do not clip: values beyond the training range map
    outside [−1, 1]. :meth:`decode` clips to [−1, 1], inverts exactly (snapping scaled
    values within :data:`DECODE_SNAP` of −1 to −1, so that dry cells are exact zeros),
    then clips at ``transform.lower`` (never negative precipitation) and sets values below
    ``dry_below`` to ``transform.lower``.
    """

    def __init__(
        self,
        transform: Transform | str | dict[str, Any],
        lo: float | Tensor,
        hi: float | Tensor,
        learned: LearnedMonotone | None = None,
        dry_below: float | None = None,
    ) -> None:
        super().__init__()
        self.transform = get_transform(transform)
        lo_t, hi_t = _as_bound(lo, "lo"), _as_bound(hi, "hi")
        if not bool(hi_t > lo_t):
            raise ValueError(
                f"zero variance data: the transformed range needs hi > lo, got lo={float(lo_t)}, "
                f"hi={float(hi_t)}; a constant field cannot be scaled to [-1, 1], drop it or "
                "add variation"
            )
        if learned is not None and not isinstance(learned, LearnedMonotone):
            raise TypeError(f"learned must be a LearnedMonotone or None, got {type(learned)}")
        # float64 on the CPU, cast to the data's dtype and device at each use: the same
        # arithmetic on every device, and nothing to move with .to()
        self.lo, self.hi = lo_t, hi_t
        self.learned = learned
        self.dry_below = _check_dry_below(dry_below, self.transform.lower)

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        stats_min: float,
        stats_max: float,
        transform: Transform | str | dict[str, Any] = "none",
        learned: bool | LearnedMonotone = False,
        *,
        min_grad: float = 0.1,
        dry_below: float | None = None,
    ) -> VariableCodec:
        """Build from training statistics: lo = f(min), hi = f(max).

        Parameters
        ----------
        stats_min, stats_max
            Minimum and maximum of the physical training data.
        transform
            Fixed transform spec; ``"learned"`` means identity followed by a fresh h_ω.
        learned
            ``True`` for a fresh :class:`LearnedMonotone` (with ``min_grad``), or one to use.
        min_grad
            Minimum-gradient coefficient of a fresh h_ω (eq. 4.13).
        dry_below
            Decoded values below this (physical units) become the transform's lower bound
            exactly (see :attr:`dry_below`); None: only float residue is snapped.

        Raises
        ------
        ValueError
            Data below the transform's lower bound, or hi ≤ lo (zero variance).
        """
        if isinstance(transform, str) and transform == "learned":
            transform, learned = Identity(), True if learned is False else learned
        f = get_transform(transform)
        mn, mx = _as_bound(stats_min, "stats_min"), _as_bound(stats_max, "stats_max")
        f.validate(mn, name="stats_min")
        if isinstance(learned, bool):
            h = LearnedMonotone(min_grad=min_grad) if learned else None
        elif isinstance(learned, LearnedMonotone):
            h = learned
        else:
            raise TypeError(f"learned must be a bool or a LearnedMonotone, got {type(learned)}")
        return cls(f, f.forward(mn), f.forward(mx), h, dry_below=dry_below)

    @property
    def lower(self) -> float | None:
        """Physical lower bound of the data domain (e.g. 0 for precipitation), or None."""
        return self.transform.lower

    @property
    def has_learned(self) -> bool:
        """Whether an h_ω follows the scaling."""
        return self.learned is not None

    def extra_repr(self) -> str:
        return (
            f"transform={self.transform!r}, lo={float(self.lo):g}, hi={float(self.hi):g}, "
            f"learned={self.has_learned}, dry_below={self.dry_below}"
        )

    # -- the chain ------------------------------------------------------------------------

    def _bounds(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.lo.to(x.device, x.dtype), self.hi.to(x.device, x.dtype)

    def to_scaled(self, x: Tensor) -> Tensor:
        """Physical → s = 2 (f(x) − lo) / (hi − lo) − 1 (∈ [−1, 1] on the training range)."""
        x = _float(x)
        lo, hi = self._bounds(x)
        return 2.0 * (self.transform.forward(x) - lo) / (hi - lo) - 1.0

    def from_scaled(self, s: Tensor) -> Tensor:
        """Inverse of :meth:`to_scaled` (no clipping; differentiable)."""
        s = _float(s)
        lo, hi = self._bounds(s)
        return self.transform.inverse(lo + 0.5 * (s + 1.0) * (hi - lo))

    def _h(self, s: Tensor, what: str = "forward") -> Tensor:
        """h_ω (or its derivative) in float32 or float64, never under autocast."""
        dtype = s.dtype if s.dtype in (torch.float32, torch.float64) else torch.float32
        with torch.autocast(device_type=s.device.type, enabled=False):
            s = s.to(dtype)
            return self.learned(s) if what == "forward" else self.learned.derivative(s)

    def encode_scaled(self, s: Tensor) -> Tensor:
        """Scaled values → diffusion space: h_ω(s), or s without h_ω."""
        return self._h(s) if self.learned is not None else s

    def encode(self, x: Tensor) -> Tensor:
        """Physical → diffusion space (f, scaling, h_ω)."""
        return self.encode_scaled(self.to_scaled(x))

    def decode(self, y: Tensor) -> Tensor:
        """Diffusion space → physical: clip to [−1, 1], exact h_ω⁻¹, snap scaled values
        within :data:`DECODE_SNAP` of −1 to −1 (the training minimum comes back exactly:
        dry cells are 0, not 1e-14), unscale, f⁻¹, clip at ``lower``, values below
        :attr:`dry_below` to ``lower``. Not differentiable
        through h_ω⁻¹ (see :meth:`decode_differentiable`)."""
        s = _float(y).clamp(-1.0, 1.0)
        if self.learned is not None:
            with torch.autocast(device_type=s.device.type, enabled=False):
                s = self.learned.inverse(s)
        s = torch.where(s < -1.0 + DECODE_SNAP, torch.full_like(s, -1.0), s)
        x = self.from_scaled(s)
        if self.lower is None:
            return x
        x = x.clamp(min=self.lower)
        if self.dry_below is not None:
            x = torch.where(x < self.dry_below, torch.full_like(x, self.lower), x)
        return x

    def decode_differentiable(self, y: Tensor) -> Tensor:
        """:meth:`decode` with gradients w.r.t. ``y`` (no clip at ``lower``).

        The learned inverse gets its implicit derivative d h⁻¹(y)/dy = 1 / h'(h⁻¹(y)).
        """
        s = _float(y).clamp(-1.0, 1.0)
        if self.learned is not None:
            with torch.no_grad():
                inv = self.learned.inverse(s)
                slope = self._h(inv, "derivative")
            s = inv + (s - s.detach()) / slope
        return self.from_scaled(s)

    def log_abs_det(self, x: Tensor, eps: float = DEFAULT_LOGDET_EPS) -> Tensor:
        """Elementwise log |d encode(x) / dx| (eq. 4.3–4.8, 4.10).

        log|f'(x)| + log(2 / (hi − lo)) [+ log h_ω'(s)]; summed over elements it turns a
        negative log-likelihood in diffusion space into one in data space:
        −log p(x) = −log p̃(encode(x)) − Σᵢ log_abs_det(x)ᵢ. ``eps`` floors x above the
        transform's lower bound where f' is infinite (sqrt at 0).
        """
        x = _float(x)
        lo, hi = self._bounds(x)
        out = self.transform.log_abs_det(x, eps=eps) + torch.log(2.0 / (hi - lo))
        if self.learned is not None:
            out = out + self.log_derivative_scaled(self.to_scaled(x))
        return out

    def log_derivative_scaled(self, s: Tensor) -> Tensor:
        """log h_ω'(s) for scaled values (0 without h_ω), float32/64, autocast off."""
        if self.learned is None:
            return torch.zeros_like(s)
        return self._h(s, "derivative").log()

    def penalty(self, s: Tensor, mask: Tensor) -> Tensor:
        """−Σᵢ log h_ω'(sᵢ) m(sᵢ) per sample for scaled ``s`` (B, ...), eq. 4.15.

        :meth:`LearnedMonotone.penalty` in float32/64 with autocast off; zeros without h_ω.
        """
        if self.learned is None:
            return torch.zeros(s.shape[0], dtype=torch.float32, device=s.device)
        dtype = s.dtype if s.dtype in (torch.float32, torch.float64) else torch.float32
        with torch.autocast(device_type=s.device.type, enabled=False):
            return self.learned.penalty(s.to(dtype), mask)

    def scaled_threshold(self, threshold: float) -> float:
        """A physical threshold (e.g. the dry threshold) in scaled units; −inf stays −inf."""
        if threshold == -math.inf:
            return -math.inf
        return float(self.to_scaled(torch.tensor(float(threshold))))

    def penalty_mask(self, x: Tensor, threshold: float = 0.01) -> Tensor:
        """m(xᵢ) of eq. 4.14: True where the physical value is above ``threshold``.

        With Herbert (2023)'s linear scaling by a 76.97 mm/h maximum, 0.01 mm/h scales to
        −0.99974, i.e. M ≈ [−0.99975, 1]: "dry" cells do not pull h_ω's gradient (§4.3.5).
        ``-inf`` disables masking.
        """
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, int | float)
            or math.isnan(threshold)
            or threshold == math.inf
        ):
            raise ValueError(f"threshold must be a number or -inf, got {threshold!r}")
        s = self.to_scaled(x)
        return s > self.scaled_threshold(threshold)

    # -- persistence ----------------------------------------------------------------------

    def to_config(self) -> dict[str, Any]:
        """JSON-serialisable configuration (h_ω's parameters travel in the state dict)."""
        return {
            "transform": self.transform.to_config(),
            "lo": float(self.lo),
            "hi": float(self.hi),
            "learned": None if self.learned is None else self.learned.to_config(),
            "dry_below": self.dry_below,
        }

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> VariableCodec:
        """Rebuild from :meth:`to_config` (h_ω freshly initialised: load its state dict)."""
        if not isinstance(cfg, dict):
            raise TypeError(f"codec config must be a dict from to_config(), got {type(cfg)}")
        missing = {"transform", "lo", "hi"} - set(cfg)
        if missing:
            raise ValueError(f"codec config lacks {sorted(missing)}")
        learned = None
        if cfg.get("learned") is not None:
            learned = LearnedMonotone(**cfg["learned"])
        lo, hi = cfg["lo"], cfg["hi"]
        # schema-1 model files stored per-channel lists of one element
        lo = lo[0] if isinstance(lo, list) and len(lo) == 1 else lo
        hi = hi[0] if isinstance(hi, list) and len(hi) == 1 else hi
        # model files written before dry_below existed decode as they did (no threshold)
        return cls(get_transform(cfg["transform"]), lo, hi, learned, cfg.get("dry_below"))


class Codec(nn.Module):
    """One :class:`VariableCodec` per channel, applied to (B, C, ...) tensors.

    Parameters
    ----------
    variables
        The per-variable codecs, in channel order.
    """

    def __init__(self, variables: Sequence[VariableCodec]) -> None:
        super().__init__()
        if not variables or not all(isinstance(v, VariableCodec) for v in variables):
            raise TypeError("Codec needs a non-empty sequence of VariableCodec")
        self.variables = nn.ModuleList(variables)

    def __len__(self) -> int:
        return len(self.variables)

    def __getitem__(self, c: int) -> VariableCodec:
        return self.variables[c]  # type: ignore[return-value]

    def __iter__(self):
        return iter(self.variables)

    @property
    def lower(self) -> list[float | None]:
        """Per channel physical lower bound (or None)."""
        return [v.lower for v in self]

    @property
    def has_learned(self) -> bool:
        """Whether any channel has an h_ω."""
        return any(v.has_learned for v in self)

    def _check(self, x: Tensor) -> None:
        if x.ndim < 2 or x.shape[1] != len(self):
            raise ValueError(
                f"the codec has {len(self)} channel(s) and needs tensors of shape "
                f"(B, {len(self)}, ...), got {tuple(x.shape)}"
            )

    def _per_channel(self, fn: str, x: Tensor, *args: Any) -> Tensor:
        self._check(x)
        return torch.cat([getattr(v, fn)(x[:, c : c + 1], *args) for c, v in enumerate(self)], 1)

    def to_scaled(self, x: Tensor) -> Tensor:
        """Physical → scaled [−1, 1] (no h_ω)."""
        return self._per_channel("to_scaled", x)

    def encode_scaled(self, s: Tensor) -> Tensor:
        """Scaled → diffusion space (h_ω where present)."""
        return self._per_channel("encode_scaled", s)

    def encode(self, x: Tensor) -> Tensor:
        """Physical (B, C, ...) → diffusion space."""
        return self._per_channel("encode", x)

    def decode(self, y: Tensor) -> Tensor:
        """Diffusion space → physical (clipped to [−1, 1], then at each ``lower``)."""
        return self._per_channel("decode", y)

    def decode_differentiable(self, y: Tensor) -> Tensor:
        """:meth:`decode` with gradients (no clip at ``lower``)."""
        return self._per_channel("decode_differentiable", y)

    def log_abs_det(self, x: Tensor, eps: float = DEFAULT_LOGDET_EPS) -> Tensor:
        """Elementwise log-determinant of the whole chain, per channel (eq. 4.10)."""
        return self._per_channel("log_abs_det", x, eps)

    def scaled_thresholds(self, thresholds: Sequence[float]) -> list[float]:
        """Per channel physical thresholds in scaled units."""
        if len(thresholds) != len(self):
            raise ValueError(f"need {len(self)} thresholds, got {len(thresholds)}")
        return [v.scaled_threshold(t) for v, t in zip(self, thresholds)]

    def penalty(self, s: Tensor, mask: Tensor, scaled_thresholds: Sequence[float]) -> Tensor:
        """−Σᵢ log h_ω'(sᵢ) m(sᵢ) per sample, summed over channels with an h_ω (eq. 4.15).

        Parameters
        ----------
        s
            Scaled data (B, C, ...).
        mask
            Boolean, broadcastable to ``s``: elements that take part in the loss (valid
            cells); m(sᵢ) is this and ``s > scaled threshold`` of the channel.
        scaled_thresholds
            Per channel dry threshold in scaled units (:meth:`scaled_thresholds`).

        Returns
        -------
        Tensor
            Shape (B,), float32 (or float64 for float64 input). A sum, not a mean: the
            caller normalises it with the v-loss' element count (see
            :func:`xdiffusion.training.diffusion_objective`).
        """
        self._check(s)
        mask = mask.expand_as(s)
        dtype = s.dtype if s.dtype == torch.float64 else torch.float32
        out = torch.zeros(s.shape[0], dtype=dtype, device=s.device)
        for c, v in enumerate(self):
            if v.has_learned:
                sc = s[:, c : c + 1]
                out = out + v.penalty(sc, mask[:, c : c + 1] & (sc > scaled_thresholds[c]))
        return out

    def to_config(self) -> list[dict[str, Any]]:
        """Per-variable configurations."""
        return [v.to_config() for v in self]

    @classmethod
    def from_config(cls, cfg: Sequence[dict[str, Any]]) -> Codec:
        """Rebuild from :meth:`to_config` (load the state dict for h_ω's parameters)."""
        return cls([VariableCodec.from_config(c) for c in cfg])
