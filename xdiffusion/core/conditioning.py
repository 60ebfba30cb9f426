"""Conditioning an unconditional model at sampling time (Herbert (2023), §2.7.9–2.7.10).

Everything here wraps a denoiser ``denoise(z, lam) -> x_hat`` into another denoiser, so
each conditioning method works with every sampler in :mod:`xdiffusion.core.samplers`:

- :func:`imputation` (eq. 2.106): known elements of z_t replaced by a fresh draw of
  q(z_t | x_known) before the network sees z_t;
- :func:`guidance` (eq. 2.116): imputation plus the reconstruction-guidance gradient, or,
  with an ``operator`` A, guidance towards y = A x (downscaling, where no element of x is
  known directly);
- :func:`data_consistency`: the exact orthogonal projection onto {x : A x = y} for the
  block-mean operator A of :func:`block_mean`; :func:`project_block_means` the final,
  bound-preserving projection of downscaled fields.

Masks are boolean, True where a value is known, and broadcast against z of shape
(B, C, F, H, W); a mask over (F, H, W) applies to every member and channel. Values of
``x_known`` where the mask is False are ignored (they may be NaN).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from xdiffusion.core.diffusion import Denoiser
from xdiffusion.core.schedule import _expand, alpha_sigma
from xdiffusion.validation import check_number, check_positive_int

__all__ = [
    "DEFAULT_GUIDANCE_WEIGHT",
    "PROJECTION_FLOOR",
    "block_mean",
    "data_consistency",
    "finalize",
    "guidance",
    "imputation",
    "project_block_means",
]

NoiseFn = Callable[[], Tensor]
Operator = Callable[[Tensor], Tensor]

#: Default reconstruction-guidance weight w_r of eq. 2.116 with the squared norm a **sum**
#: over the known elements of one sample. w_r = 1 is the exact score of the Gaussian
#: approximation q(x_a | z_t) ≈ N(x̂_a, σ_t²/α_t² I) (eq. 2.112); that variance is too large
#: (the true one is at most min(σ_t²/α_t², Var x_a)), so w_r > 1 is needed. On correlated
#: Gaussian frames with the exact denoiser (tests/test_conditioning.py) the conditional mean
#: is best for w_r ≈ 2–4 with every sampler, w_r = 1 under-corrects, w_r ≳ 8 overshoots and
#: w_r = 100 diverges with DPM-Solver++. The reference code's w_r = 1e6 multiplied a *mean*
#: over batch × known elements, i.e. w_r ≈ 1e6 / (B · N_known) here (≈ 2–8 for 8–32
#: members with 4 known 64×64 frames), consistent with this range. At equal weight the
#: stochastic samplers (ancestral, dpmpp_2m_sde) recover the conditional better than the
#: deterministic ones (dpmpp_2m, ddim with η = 0).
DEFAULT_GUIDANCE_WEIGHT = 3.0


def _bool_mask(mask: Tensor, name: str = "mask") -> Tensor:
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a boolean tensor (True where known), got {mask!r}")
    return mask


def _known(x_known: Tensor, mask: Tensor, name: str = "x_known") -> Tensor:
    """Check x_known against mask and zero its unknown elements (NaN there must not leak)."""
    if not isinstance(x_known, Tensor) or not x_known.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor")
    try:
        shape = torch.broadcast_shapes(x_known.shape, mask.shape)
    except RuntimeError as err:
        raise ValueError(
            f"{name} of shape {tuple(x_known.shape)} and mask of shape {tuple(mask.shape)} "
            "do not broadcast; give them the (B, C, F, H, W) layout or a broadcastable one"
        ) from err
    mask = mask.to(x_known.device).expand(shape)
    x_known = x_known.expand(shape)
    if not torch.isfinite(x_known[mask]).all():
        raise ValueError(f"{name} has NaN or infinite values where mask is True")
    return torch.where(mask, x_known, torch.zeros((), dtype=x_known.dtype))


def _like(z: Tensor, *tensors: Tensor) -> list[Tensor]:
    """Move to z's device (and dtype, for floats) and check they broadcast against z."""
    out = []
    for t in tensors:
        t = t.to(z.device, z.dtype if t.is_floating_point() else t.dtype)
        try:
            if torch.broadcast_shapes(t.shape, z.shape) != z.shape:
                raise RuntimeError
        except RuntimeError as err:
            raise ValueError(
                f"conditioning tensors of shape {tuple(t.shape)} do not broadcast to the "
                f"sample shape {tuple(z.shape)}; give x_known and mask the layout (B, C, F, "
                "H, W) of the samples or one that broadcasts to it"
            ) from err
        out.append(t)
    return out


def _impute(z: Tensor, lam: Tensor, x_known: Tensor, mask: Tensor, noise: NoiseFn | None):
    """[Ω̄(z_t); Ω(z_t)]: known elements of z replaced by a draw of q(z_t | x_known)."""
    alpha, sigma = alpha_sigma(_expand(lam, z))
    eps = noise() if noise is not None else torch.randn_like(z)
    return torch.where(mask, alpha * x_known + sigma * eps.to(z), z)


def imputation(
    denoise: Denoiser, x_known: Tensor, mask: Tensor, *, noise: NoiseFn | None = None
) -> Denoiser:
    """Conditional denoiser of the imputation method (eq. 2.106).

    Before each call the known elements of z_t are replaced by a fresh draw
    α_t x_known + σ_t ε of q(z_t | x_known); the returned x̂ has the known elements set to
    ``x_known`` and the others from the network.

    Parameters
    ----------
    denoise
        Unconditional ``denoise(z, lam) -> x_hat``.
    x_known
        Known values in diffusion space, broadcastable to the samples (B, C, F, H, W);
        ignored (may be NaN) where ``mask`` is False.
    mask
        Boolean, True where known, broadcastable to the samples.
    noise
        Callable drawing N(0, I) shaped like z (e.g. a
        :class:`~xdiffusion.core.noise.MemberNoise` on its own stream, for reproducibility);
        defaults to ``torch.randn_like``.

    Returns
    -------
    Denoiser
        ``denoise_c(z, lam) -> x_hat_c``.
    """
    mask = _bool_mask(mask)
    x_known = _known(x_known, mask)

    def denoise_c(z: Tensor, lam: Tensor) -> Tensor:
        xk, m = _like(z, x_known, mask)
        x_hat = denoise(_impute(z, lam, xk, m, noise), lam)
        return torch.where(m, xk, x_hat)

    return denoise_c


def guidance(
    denoise: Denoiser,
    x_known: Tensor,
    mask: Tensor | None = None,
    *,
    weight: float = DEFAULT_GUIDANCE_WEIGHT,
    operator: Operator | None = None,
    noise: NoiseFn | None = None,
) -> Denoiser:
    """Reconstruction-guided conditional denoiser (eq. 2.107–2.116).

    Without ``operator`` (eq. 2.116): the known part of z_t is imputed as in
    :func:`imputation`, giving z̃ = [Ω̄(z_t); Ω(z_t)], and

        x̂ᶜ = Ω̄(x̂(z̃)) − (w_r α_t / 2) ∇_{Ω̄(z_t)} ‖Ω(x) − Ω(x̂(z̃))‖²,

    with known elements of x̂ᶜ set to ``x_known``. With a linear ``operator`` A nothing is
    imputed and x̂ᶜ = x̂ − (w_r α_t / 2) ∇_z ‖y − A x̂(z)‖² with y = ``x_known``; note that
    this plain norm ignores the covariance AAᵀ of eq. 2.112 for y (for the block mean,
    whiten the residual as :func:`xdiffusion.engine.block_mean_operator` does, or scale
    ``weight`` by factor²).

    The squared norm is a **sum** over the known elements of each sample, so the gradient,
    and hence ``weight``, does not depend on the batch size (the denoiser must treat batch
    members independently, as GroupNorm networks in eval mode do). The gradient is taken
    with autograd under ``torch.enable_grad()``, so this works inside the samplers'
    ``torch.no_grad()`` but not under ``torch.inference_mode()``.

    Parameters
    ----------
    denoise
        Unconditional, differentiable ``denoise(z, lam) -> x_hat``.
    x_known
        Known values (without ``operator``), or the observation y = A x (with it); ignored
        (may be NaN) where ``mask`` is False.
    mask
        Boolean, True where known. Required without ``operator``; with it, optional and over
        y (None: all of y known).
    weight
        Guidance weight w_r ≥ 0 for the per-sample sum (see
        :data:`DEFAULT_GUIDANCE_WEIGHT`); 0 gives plain imputation.
    operator
        Linear map A from samples to observations, applied to x̂.
    noise
        Draws for the imputed part of z_t, as in :func:`imputation` (unused with
        ``operator``).

    Returns
    -------
    Denoiser
        ``denoise_c(z, lam) -> x_hat_c``.
    """
    weight = _check_weight(weight)
    if operator is None:
        if mask is None:
            raise ValueError("mask is required for guidance without an operator")
        mask = _bool_mask(mask)
    elif not callable(operator):
        raise TypeError("operator must be a callable A(x) -> y, e.g. lambda x: block_mean(x, 4)")
    else:
        mask = torch.ones((), dtype=torch.bool) if mask is None else _bool_mask(mask)
    x_known = _known(x_known, mask)
    half_w = 0.5 * weight

    def denoise_c(z: Tensor, lam: Tensor) -> Tensor:
        if torch.is_inference_mode_enabled():
            raise RuntimeError("guidance needs autograd: do not sample under inference_mode")
        if operator is None:
            xk, m = _like(z, x_known, mask)
            z_known = _impute(z, lam, xk, m, noise)
        else:
            xk, m = x_known.to(z), mask.to(z.device)
        with torch.enable_grad():
            z_u = z.detach().requires_grad_(True)
            # torch.where passes no gradient to imputed elements: ∇ is w.r.t. Ω̄(z_t) only.
            z_in = z_u if operator is not None else torch.where(m, z_known, z_u)
            x_hat = denoise(z_in, lam)
            pred = x_hat if operator is None else operator(x_hat)
            resid = torch.where(m, xk - pred, torch.zeros((), dtype=pred.dtype))
            loss = resid.pow(2).sum()  # Σ_b Σ_known: each sample's gradient is its own sum
            grad = None
            if loss.requires_grad:
                (grad,) = torch.autograd.grad(loss, z_u, allow_unused=True)
        x_hat = x_hat.detach()
        if grad is not None:
            alpha, _ = alpha_sigma(_expand(lam, z))
            x_hat = x_hat - (half_w * alpha) * grad
        return x_hat if operator is not None else torch.where(m, xk, x_hat)

    return denoise_c


def block_mean(x: Tensor, factor: int) -> Tensor:
    """Coarsening operator A: mean over non-overlapping factor×factor blocks of (…, H, W)."""
    factor, h, w = _check_factor(x, factor)
    lead = x.shape[:-2]
    return x.reshape(*lead, h // factor, factor, w // factor, factor).mean(dim=(-3, -1))


def data_consistency(
    x_hat: Tensor, y: Tensor, factor: int, *, mask: Tensor | None = None
) -> Tensor:
    """Exact projection x̂ ← x̂ + Aᵀ(AAᵀ)⁻¹(y − A x̂) onto {x : A x = y}, A = block mean.

    For the block mean AAᵀ = I / factor², so the correction adds each block's residual
    y − A x̂ to every fine cell of the block. The projection is orthogonal: it changes
    nothing when x̂ is already consistent and is idempotent.

    Parameters
    ----------
    x_hat
        Fine field (…, H, W) with H and W divisible by ``factor``.
    y
        Coarse observation broadcastable to ``block_mean(x_hat, factor)``.
    factor
        Block size.
    mask
        Optional boolean over y: blocks where False (e.g. missing y) are left unchanged.
    """
    factor, _, _ = _check_factor(x_hat, factor)
    coarse = block_mean(x_hat, factor)
    try:
        torch.broadcast_shapes(y.shape, coarse.shape)
    except RuntimeError as err:
        raise ValueError(
            f"y of shape {tuple(y.shape)} does not match the coarse grid "
            f"{tuple(coarse.shape)} of x_hat for factor={factor}"
        ) from err
    resid = y.to(coarse) - coarse
    if mask is not None:
        resid = torch.where(_bool_mask(mask).to(resid.device), resid, torch.zeros_like(resid))
    resid = resid.expand(coarse.shape)
    return x_hat + resid.repeat_interleave(factor, -2).repeat_interleave(factor, -1)


#: Below this block excess over the lower bound (in units of the channel's data scale) the
#: multiplicative correction of :func:`project_block_means` is not used: a block the sample
#: left at float residue (~1e-10) would have that residue multiplied by up to 1e9 into a
#: noise-shaped field. Float32 residue of decoded data is ~1e-7 of the scale; real
#: structure is far above 1e-5 of it.
PROJECTION_FLOOR = 1e-5


def project_block_means(
    x: Tensor,
    y: Tensor,
    factor: int,
    lower: Sequence[float | None],
    scale: Sequence[float] | None = None,
) -> Tensor:
    """Make the block means of ``x`` (B, C, …, H, W) equal ``y`` (B, C, …, h, w) exactly.

    Channels without a lower bound get the orthogonal projection x + Aᵀ(AAᵀ)⁻¹(y − A x)
    (:func:`data_consistency`). Channels with one (e.g. precipitation ≥ 0) are scaled
    multiplicatively around it, which keeps them above it and keeps dry cells dry; where a
    block's excess over the bound is below ``PROJECTION_FLOOR × scale`` (the sample left it
    dry or at float residue) there is no structure worth scaling, and the block gets the
    additive projection instead, clipped at the bound and renormalised (multiplying by a
    ratio ≤ 1) so that its mean is still exact. An exactly dry block with a wet target
    therefore becomes the constant target (the only field the block mean determines).

    Parameters
    ----------
    x
        Fine fields; H and W divisible by ``factor``.
    y
        Coarse targets, broadcastable to ``block_mean(x, factor)``.
    factor
        Block size.
    lower
        Per channel lower bound or None.
    scale
        Per channel data scale for the floor (default 1).
    """
    factor, _, _ = _check_factor(x, factor)
    if len(lower) != x.shape[1]:
        raise ValueError(f"lower needs one entry per channel ({x.shape[1]}), got {len(lower)}")
    scale = [1.0] * len(lower) if scale is None else list(scale)

    def up(a: Tensor) -> Tensor:
        return a.repeat_interleave(factor, -2).repeat_interleave(factor, -1)

    out = []
    for c, lo in enumerate(lower):
        xc, yc = x[:, c : c + 1], y[:, c : c + 1].to(x)
        if lo is None:
            out.append(data_consistency(xc, yc, factor))
            continue
        m = block_mean(xc, factor)
        excess, target = m - lo, (yc - lo).clamp_min(0).expand_as(m)
        scalable = excess > PROJECTION_FLOOR * float(scale[c])
        ratio = torch.where(scalable, target / excess.clamp_min(1e-30), torch.zeros_like(m))
        mult = lo + (xc - lo) * up(ratio)
        # additive fallback: orthogonal correction, clipped at the bound, renormalised
        add = (data_consistency(xc, yc, factor) - lo).clamp_min(0)
        add_mean = block_mean(add, factor)
        shrink = torch.where(add_mean > 0, target / add_mean.clamp_min(1e-30), torch.zeros_like(m))
        add = lo + add * up(shrink)
        out.append(torch.where(up(scalable), mult, add))
    return torch.cat(out, 1)


def finalize(x: Tensor, x_known: Tensor, mask: Tensor) -> Tensor:
    """Samples with the known values set exactly (x_known where mask, x elsewhere)."""
    mask = _bool_mask(mask).to(x.device)
    return torch.where(mask, x_known.to(x), x)


def _check_weight(weight: float) -> float:
    """A finite weight ≥ 0 as a Python float (numpy scalars accepted, bool refused)."""
    return check_number(weight, "weight", minimum=0.0)  # type: ignore[return-value]


def _check_factor(x: Tensor, factor: int) -> tuple[int, int, int]:
    """``(factor, H, W)``: the factor as a Python int, checked to divide x's grid."""
    factor = check_positive_int(factor, "factor")  # type: ignore[assignment]
    if x.ndim < 2:
        raise ValueError("x must have at least two (spatial) dimensions (…, H, W)")
    h, w = x.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(
            f"the spatial shape ({h}, {w}) is not divisible by factor={factor}; crop or pad "
            "the fine grid to a multiple of the factor"
        )
    return factor, h, w
