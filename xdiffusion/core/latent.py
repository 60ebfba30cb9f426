"""The latent part of a variational diffusion model conditioned on w (seed 003 §2, §4).

With q_φ(w | x) = N(μ, diag σ²) and the prior p(w) = N(0, I), the bound of seed 003 §4 is

    −log p(x) ≤ E_{w ~ q}[L_VDM(x | w)] + KL(q(w | x) ‖ p(w)),

where KL = ½ Σⱼ (μⱼ² + σⱼ² − 1 − log σⱼ²) in closed form (:func:`gaussian_kl`) and the
expectation is estimated with one reparameterised draw w = μ + σ ε (:func:`reparameterize`).

Pure torch: no xarray here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from xdiffusion.validation import check_number

__all__ = ["free_bits_kl", "gaussian_kl", "reparameterize"]


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """Per-dimension KL(N(μ, σ²) ‖ N(0, 1)) = ½ (μ² + σ² − 1 − log σ²), in nats.

    ``σ² − 1 − log σ²`` is evaluated as ``expm1(log σ²) − log σ²`` so that a posterior close
    to the prior gives a KL close to 0 without cancellation.

    Parameters
    ----------
    mu, logvar
        Mean and log-variance, same shape (…, k).

    Returns
    -------
    Tensor
        Shape of ``mu``: sum over the last axis for the KL of the whole vector.
    """
    return 0.5 * (mu.square() + torch.expm1(logvar) - logvar)


def reparameterize(mu: Tensor, logvar: Tensor, eps: Tensor) -> Tensor:
    """w = μ + σ ε: a draw from N(μ, σ²) that is differentiable in μ and log σ²."""
    return mu + torch.exp(0.5 * logvar) * eps


def free_bits_kl(kl: Tensor, free_bits: float = 0.0) -> Tensor:
    """Per-sample KL with "free bits" (Kingma et al. 2016, eq. 15), for the training loss.

    Each latent dimension's KL, averaged over the batch, is replaced by
    ``max(free_bits, that mean)``: below ``free_bits`` nats a dimension costs nothing, so
    the encoder is not pushed to collapse it to the prior early in training. The result is
    spread back over the batch in proportion (so its batch mean is Σⱼ max(λ, mean_b KLⱼ)).
    With ``free_bits = 0`` it is the plain sum over dimensions. Not a bound when > 0.

    Parameters
    ----------
    kl
        (B, k) per-sample, per-dimension KL (:func:`gaussian_kl`).
    free_bits
        Nats per dimension, ≥ 0.

    Returns
    -------
    Tensor
        (B,) per-sample KL term.
    """
    free_bits = check_number(free_bits, "free_bits", minimum=0.0)
    if free_bits == 0.0:
        return kl.sum(-1)
    per_dim = kl.mean(0)
    # where the batch mean is below the floor, its gradient is cut and the floor charged
    floored = torch.where(per_dim < free_bits, torch.full_like(per_dim, free_bits), per_dim)
    scale = torch.where(per_dim < free_bits, torch.zeros_like(per_dim), torch.ones_like(per_dim))
    per_sample = kl * scale + (floored * (1 - scale))[None, :]
    return per_sample.sum(-1)
