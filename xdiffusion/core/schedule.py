"""Truncated continuous-time α-cosine noise schedule (Herbert (2023), eq. 2.59–2.65).

Everything is expressed through the log signal-to-noise ratio λ = log(α²/σ²), so that
α and σ are computed as sqrt(sigmoid(±λ)); this stays finite in float32 at both ends of
λ ∈ [λmin, λmax] = [−30, 30], where cos/sin of the schedule angle would round to 0 or 1.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

__all__ = ["CosineSchedule", "alpha_sigma", "posterior"]


#: Largest |λ| of a schedule: σ² = sigmoid(−λ) underflows float64's relative precision
#: (1e-16 ≈ e^−37) long before, and e^|λ| overflows float64 at ≈ 709.
MAX_ABS_LAMBDA = 100.0


@dataclass(frozen=True)
class CosineSchedule:
    """Truncated α-cosine schedule λ(t) on t ∈ [0, 1] (eq. 2.60–2.62).

    Parameters
    ----------
    lambda_min, lambda_max
        Range of the log-SNR; λ(0) = ``lambda_max`` (almost clean) and λ(1) = ``lambda_min``
        (almost pure noise).
    """

    lambda_min: float = -30.0
    lambda_max: float = 30.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lambda_min) and math.isfinite(self.lambda_max)):
            raise ValueError("lambda_min and lambda_max must be finite numbers")
        if self.lambda_min >= self.lambda_max:
            raise ValueError(
                f"lambda_min ({self.lambda_min}) must be below lambda_max ({self.lambda_max})"
            )
        if max(abs(self.lambda_min), abs(self.lambda_max)) > MAX_ABS_LAMBDA:
            raise ValueError(
                f"lambda_min={self.lambda_min} and lambda_max={self.lambda_max} must lie within "
                f"±{MAX_ABS_LAMBDA:g}: beyond it α² or σ² is below float64's resolution (the "
                "usual range is ±30)"
            )

    @property
    def t0(self) -> float:
        """t0 = 2/π arctan(exp(−λmax / 2)) (eq. 2.61)."""
        return 2.0 / math.pi * math.atan(math.exp(-0.5 * self.lambda_max))

    @property
    def t1(self) -> float:
        """t1 = 2/π arctan(exp(−λmin / 2)) (eq. 2.62)."""
        return 2.0 / math.pi * math.atan(math.exp(-0.5 * self.lambda_min))

    def lam(self, t: Tensor) -> Tensor:
        """λ(t) = −2 log tan(π/2 (t0 + t (t1 − t0))) (eq. 2.60), clamped to [λmin, λmax]."""
        t = torch.as_tensor(t)
        dtype = t.dtype if t.is_floating_point() else torch.get_default_dtype()
        # float64 internally: tan of an angle within 1e-13 of 0 or π/2 needs the precision.
        u = self.t0 + t.double() * (self.t1 - self.t0)
        lam = -2.0 * torch.log(torch.tan(0.5 * math.pi * u))
        return lam.clamp(self.lambda_min, self.lambda_max).to(dtype)

    def t(self, lam: Tensor) -> Tensor:
        """Inverse of :meth:`lam`: t(λ) = (2/π arctan(exp(−λ/2)) − t0) / (t1 − t0)."""
        lam = torch.as_tensor(lam)
        dtype = lam.dtype if lam.is_floating_point() else torch.get_default_dtype()
        u = 2.0 / math.pi * torch.atan(torch.exp(-0.5 * lam.double()))
        return ((u - self.t0) / (self.t1 - self.t0)).clamp(0.0, 1.0).to(dtype)

    def density(self, lam: Tensor) -> Tensor:
        """p_Λ(λ) = sech(λ/2) / (2π (t1 − t0)) on [λmin, λmax], zero outside (eq. 2.65)."""
        lam = torch.as_tensor(lam)
        # sech(x) = 2 exp(−|x|) / (1 + exp(−2|x|)) avoids cosh overflow.
        a = 0.5 * lam.abs()
        sech = 2.0 * torch.exp(-a) / (1.0 + torch.exp(-2.0 * a))
        p = sech / (2.0 * math.pi * (self.t1 - self.t0))
        inside = (lam >= self.lambda_min) & (lam <= self.lambda_max)
        return torch.where(inside, p, torch.zeros_like(p))

    def to_dict(self) -> dict:
        """JSON-serialisable description, inverse of ``CosineSchedule(**d)``."""
        return {"kind": "cosine", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> CosineSchedule:
        """Rebuild from :meth:`to_dict` output; raises ValueError on unknown content."""
        d = dict(d)
        kind = d.pop("kind", "cosine")
        if kind != "cosine" or set(d) - {"lambda_min", "lambda_max"}:
            raise ValueError(f"unknown schedule description {d!r} (kind={kind!r})")
        return cls(**{k: float(v) for k, v in d.items()})


def alpha_sigma(lam: Tensor) -> tuple[Tensor, Tensor]:
    """α_λ = sqrt(sigmoid(λ)), σ_λ = sqrt(sigmoid(−λ)) (eq. 2.63–2.64), so α² + σ² = 1."""
    return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()


def posterior(z_t: Tensor, x: Tensor, lam_t: Tensor, lam_s: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of q(z_s | z_t, x) for λ_s > λ_t (eq. 2.57–2.58).

    With r = exp(λ_t − λ_s) = α²_{t|s} σ_s² / σ_t² the textbook coefficients become

    - σ²_{t|s} / σ_t² = −expm1(λ_t − λ_s) = 1 − r,
    - μ = sqrt(r) σ_s / σ_t · z_t + α_s (1 − r) x,
    - σ̃² = σ²_{t|s} σ_s² / σ_t² = (1 − r) σ_s²,

    which avoids the cancellation in σ_t² − α²_{t|s} σ_s² (the "off by a square" bug of the
    reference code came from that difference).

    Parameters
    ----------
    z_t
        Latent at the noisier time, shape (B, ...).
    x
        Clean-data estimate, same shape.
    lam_t, lam_s
        Log-SNRs, broadcastable to (B,) with ``lam_s > lam_t``.
    """
    lam_t = _expand(lam_t, z_t)
    lam_s = _expand(lam_s, z_t)
    d = lam_t - lam_s
    one_minus_r = -torch.expm1(d)
    alpha_s, sigma_s = alpha_sigma(lam_s)
    _, sigma_t = alpha_sigma(lam_t)
    mean = torch.exp(0.5 * d) * (sigma_s / sigma_t) * z_t + alpha_s * one_minus_r * x
    std = one_minus_r.clamp_min(0).sqrt() * sigma_s
    return mean, std


def _expand(v: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-sample (B,) or scalar tensor to broadcast against ``like`` (B, ...)."""
    v = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    if v.ndim == 0:
        return v
    return v.reshape(v.shape[0], *([1] * (like.ndim - 1)))
