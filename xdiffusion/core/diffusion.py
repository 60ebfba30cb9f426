"""Forward process, v-prediction parameterisation and training loss.

Herbert (2023), §2.7.5–2.7.6.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from xdiffusion.core.schedule import CosineSchedule, _expand, alpha_sigma

__all__ = [
    "Denoiser",
    "VNet",
    "diffuse",
    "eps_from_v",
    "make_denoiser",
    "stratified_times",
    "v_loss",
    "v_target",
    "x_from_v",
]

#: The network contract: ``v_hat = net(z, lam)`` with z (B, C, F, H, W) and lam (B,).
VNet = Callable[[Tensor, Tensor], Tensor]
#: The sampler contract (k-diffusion style): ``x_hat = denoise(z, lam)``.
Denoiser = Callable[[Tensor, Tensor], Tensor]


def diffuse(x: Tensor, lam: Tensor, eps: Tensor) -> Tensor:
    """Draw z_t ~ q(z_t | x): z = α x + σ ε (eq. 2.30 with α² + σ² = 1)."""
    alpha, sigma = alpha_sigma(_expand(lam, x))
    return alpha * x + sigma * eps


def v_target(x: Tensor, eps: Tensor, lam: Tensor) -> Tensor:
    """v = α ε − σ x (eq. 2.67)."""
    alpha, sigma = alpha_sigma(_expand(lam, x))
    return alpha * eps - sigma * x


def x_from_v(z: Tensor, v: Tensor, lam: Tensor) -> Tensor:
    """x̂ = α z − σ v̂ (eq. 2.69)."""
    alpha, sigma = alpha_sigma(_expand(lam, z))
    return alpha * z - sigma * v


def eps_from_v(z: Tensor, v: Tensor, lam: Tensor) -> Tensor:
    """ε̂ = σ z + α v̂, equivalent to eq. 2.66 ε̂ = (z − α x̂)/σ without dividing by σ."""
    alpha, sigma = alpha_sigma(_expand(lam, z))
    return sigma * z + alpha * v


def stratified_times(
    n: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """n diffusion times, one in each of n equal strata of [0, 1): t_i = (u + i/n) mod 1.

    One u ~ U(0, 1) is shared, so each t_i is marginally U(0, 1) (λ ~ p_Λ, eq. 2.65, as
    with independent draws) while a batch always covers the whole range: the
    low-discrepancy sampler of Kingma et al. (2021, "Variational diffusion models", §3.5),
    which lowers the variance of the batch's loss and its gradient without changing their
    expectation.
    """
    u = torch.rand(1, generator=generator, device=device, dtype=dtype)
    i = torch.arange(n, device=device, dtype=torch.float64)
    return ((u.double() + i / n) % 1.0).to(u.dtype)


def v_loss(
    net: VNet,
    x: Tensor,
    schedule: CosineSchedule,
    *,
    generator: torch.Generator | None = None,
    mask: Tensor | None = None,
    t: Tensor | None = None,
    net_kwargs: dict | None = None,
    share: tuple[int, int] = (0, 1),
    stratified: bool = False,
    snr_cap: float | None = None,
    lambda_shift: float = 0.0,
    multiscale: bool = False,
) -> Tensor:
    """Per-sample v-prediction loss ‖v − v̂(z_t, λ_t)‖² with t ~ U(0, 1) (eq. 2.65, 2.68).

    Parameters
    ----------
    net
        Callable ``net(z, lam, **net_kwargs) -> v_hat``.
    x
        Clean data in diffusion space, shape (B, C, F, H, W).
    schedule
        The noise schedule; drawing t uniformly is drawing λ ~ p_Λ (eq. 2.65).
    generator
        Source of t and ε (on the device of ``x``); None uses the global generator.
    mask
        Optional boolean tensor broadcastable to ``x``: elements that count. Missing values
        and permanently masked cells are excluded; the loss is the masked **mean** per
        sample so that masking does not change the loss scale.
    t
        Optional diffusion times (B,); drawn if not given.
    share
        ``(rank, world_size)``: ``x`` holds rows ``rank::world_size`` of a global batch of
        ``B × world_size``; t and ε are drawn for the global batch and the same rows kept,
        so that the ranks of a data-parallel run together draw exactly what one process
        with the global batch draws.
    stratified
        Draw the global batch's t with :func:`stratified_times` (one per stratum of
        [0, 1)) instead of independently; the expected loss is the same.
    snr_cap
        Cap γ of the x-space weight: ‖v − v̂‖² = (1 + SNR) ‖x − x̂‖² (SNR = e^λ, eq. 2.69)
        weights the error of x̂ ever more at low noise; with a cap each sample's loss is
        multiplied by min(1, (1 + γ) / (1 + SNR)), i.e. the x-error weighs
        min(1 + SNR, 1 + γ) (Hang et al. 2023's Min-SNR at the low-noise end only, the
        v-loss unchanged where SNR ≤ γ). None: the method's loss.
    lambda_shift
        Train at λ(t) + ``lambda_shift`` (clamped to [λmin, λmax]) instead of λ(t) of eq.
        2.60: the shifted cosine schedule of Hoogeboom et al. (2023, "simple diffusion",
        §3.1), which moves the training density p_Λ towards more noise when negative. The
        network is conditioned on λ, so sampling and likelihoods are unchanged; only the
        weighting of the v-loss over λ changes. 0: the method's loss.
    multiscale
        Average the squared error of v̂ − v over spatial scales: at full resolution, after
        2 × 2, 4 × 4, … average pooling down to :data:`MULTISCALE_MIN` cells, and of the
        window mean (the multiscale loss of Hoogeboom et al. 2023, §3.3). Pooling leaves
        the large-scale part of the error and averages the fine-scale part away, so the
        window's large scales and overall intensity, a tiny share of the per-element
        error, weigh as much as the fine detail. False: the method's loss.

    Returns
    -------
    Tensor
        Loss per sample, shape (B,).
    """
    b = x.shape[0]
    rank, world = share
    rows = slice(rank, None, world)
    if t is None and stratified:
        t = stratified_times(b * world, generator=generator, device=x.device, dtype=x.dtype)[rows]
    elif t is None:
        t = torch.rand(b * world, generator=generator, device=x.device, dtype=x.dtype)[rows]
    shape = (b * world, *x.shape[1:])
    eps = torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)[rows]
    lam = schedule.lam(t)
    if lambda_shift:
        lam = (lam + lambda_shift).clamp(schedule.lambda_min, schedule.lambda_max)
    if mask is not None:
        # Masked elements carry no information: give the network zeros there, never NaNs.
        x = torch.where(mask, x, torch.zeros_like(x))
    z = diffuse(x, lam, eps)
    v_hat = net(z, lam, **(net_kwargs or {}))
    diff = v_hat.float() - v_target(x, eps, lam).float()
    m = None if mask is None else mask.expand_as(diff).float()
    loss = _masked_mse(diff, m)
    if multiscale:
        loss = multiscale_mse(diff, m, first=loss)
    if snr_cap is not None:
        # (1 + γ) / (1 + e^λ) = (1 + γ) · sigmoid(−λ), finite at any λ
        loss = loss * ((1.0 + snr_cap) * torch.sigmoid(-lam.float())).clamp(max=1.0)
    return loss


#: Coarsest pooled grid of the multiscale loss (cells per side).
MULTISCALE_MIN = 4


def _masked_mse(diff: Tensor, m: Tensor | None) -> Tensor:
    if m is None:
        return diff.square().flatten(1).mean(1)
    return (diff.square() * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1.0)


def multiscale_mse(diff: Tensor, m: Tensor | None = None, *, first: Tensor | None = None) -> Tensor:
    """Mean over scales of the per-sample MSE of ``diff`` (B, C, F, H, W): at full
    resolution, after 2^k × 2^k average pooling while the grid keeps at least
    :data:`MULTISCALE_MIN` cells per side, and of each window's mean. With a mask
    ``m`` (1 where an element counts) every pooled cell is the mean over its valid
    elements and counts if it has any. ``first``: the full-resolution term, if computed.
    """
    b, c, f, h, w = diff.shape
    terms = [first if first is not None else _masked_mse(diff, m)]
    d = diff.transpose(1, 2).reshape(b * f, c, h, w)
    mm = None if m is None else m.transpose(1, 2).reshape(b * f, c, h, w)
    k = 2
    while min(h, w) // k >= MULTISCALE_MIN:
        if mm is None:
            pooled = torch.nn.functional.avg_pool2d(d, k, ceil_mode=True)
            terms.append(pooled.square().reshape(b, -1).mean(1))
        else:
            num = torch.nn.functional.avg_pool2d(d * mm, k, ceil_mode=True)
            den = torch.nn.functional.avg_pool2d(mm, k, ceil_mode=True)
            valid = (den > 0).float()
            pooled = num / den.clamp_min(1e-12)
            sq = (pooled.square() * valid).reshape(b, -1).sum(1)
            terms.append(sq / valid.reshape(b, -1).sum(1).clamp_min(1.0))
        k *= 2
    if m is None:
        window = diff.flatten(2).mean(2)  # (B, C)
    else:
        window = (diff * m).flatten(2).sum(2) / m.flatten(2).sum(2).clamp_min(1.0)
    terms.append(window.square().mean(1))
    return torch.stack(terms).mean(0)


def make_denoiser(
    net: VNet,
    *,
    clip: float | None = 1.0,
    net_kwargs: dict | None = None,
    microbatch: int | None = None,
) -> Denoiser:
    """Wrap a v-network as ``denoise(z, lam) -> x_hat`` (eq. 2.69), clipping x̂ to ±clip.

    Clipping to the data range [−1, 1] is the "static thresholding" of Herbert (2023)'s sampler.
    ``microbatch=1`` evaluates the network one member at a time: CPU convolution kernels
    round differently for different batch sizes, so this is what makes a member's sample
    bit-identical whatever the batch it is drawn in.
    """
    kwargs = net_kwargs or {}

    def v(z: Tensor, lam_b: Tensor) -> Tensor:
        if microbatch is None or z.shape[0] <= microbatch:
            return net(z, lam_b, **kwargs)
        parts = []
        for i in range(0, z.shape[0], microbatch):
            sl = slice(i, i + microbatch)
            kw = {
                k: (a[sl] if torch.is_tensor(a) and a.shape[:1] == z.shape[:1] else a)
                for k, a in kwargs.items()
            }
            parts.append(net(z[sl], lam_b[sl], **kw))
        return torch.cat(parts)

    def denoise(z: Tensor, lam: Tensor) -> Tensor:
        lam_b = torch.as_tensor(lam, dtype=z.dtype, device=z.device).expand(z.shape[0])
        x_hat = x_from_v(z, v(z, lam_b).to(z.dtype), lam_b)
        return x_hat.clamp(-clip, clip) if clip is not None else x_hat

    return denoise
