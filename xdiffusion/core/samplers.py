"""Samplers as pure functions over one callable contract, ``denoise(z, lam) -> x_hat``.

Every sampler takes the initial noise ``z`` (at λ = λmin), an increasing sequence of
log-SNRs ``lams`` (from :func:`lambda_steps`), and a ``noise()`` callable for stochastic
steps. Conditioning (imputation, guidance) wraps ``denoise`` and so works with all of them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from xdiffusion.core.diffusion import Denoiser
from xdiffusion.core.schedule import CosineSchedule, posterior

NoiseFn = Callable[[], Tensor]


def lambda_steps(
    schedule: CosineSchedule, steps: int, spacing: str = "t", *, device=None
) -> Tensor:
    """Increasing log-SNRs λ_0 = λmin < … < λ_steps = λmax for a sampler.

    Parameters
    ----------
    schedule
        The noise schedule.
    steps
        Number of sampler steps (≥ 1); the grid has ``steps + 1`` points.
    spacing
        ``"t"``: uniform in diffusion time, t_i = 1 − i/steps (the ancestral sampler of
        eq. 2.52); ``"lambda"``: uniform in log-SNR (the natural grid of DPM-Solver).
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if spacing == "t":
        t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
        lam = schedule.lam(t)
    elif spacing == "lambda":
        lam = torch.linspace(schedule.lambda_min, schedule.lambda_max, steps + 1)
        lam = lam.double()
    else:
        raise ValueError(f"spacing must be 't' or 'lambda', got {spacing!r}")
    return lam.to(device=device, dtype=torch.float32)


def _progress(n: int, progress: bool, desc: str):
    return tqdm(range(n), disable=not progress, desc=desc, leave=False)


@torch.no_grad()
def sample_ancestral(
    denoise: Denoiser,
    z: Tensor,
    lams: Tensor,
    *,
    noise: NoiseFn | None = None,
    progress: bool = False,
) -> Tensor:
    """Ancestral sampling p(z_s | z_t) = q(z_s | z_t, x = x̂(z_t)) (eq. 2.52–2.58).

    The last step returns the posterior mean, which for λ_s = λmax is x̂ up to
    exp(λ_t − λmax); no noise is added there.

    Parameters
    ----------
    denoise
        ``denoise(z, lam) -> x_hat`` with lam of shape (B,).
    z
        Initial noise z_1 ~ N(0, I) of shape (B, ...).
    lams
        Increasing log-SNRs, e.g. ``lambda_steps(schedule, 1000, "t")``.
    noise
        Callable drawing fresh N(0, I) like ``z``; defaults to ``torch.randn_like``.
    progress
        Show a tqdm bar.
    """
    noise = noise or (lambda: torch.randn_like(z))
    n = len(lams) - 1
    for i in _progress(n, progress, "ancestral"):
        lam_t = lams[i].expand(z.shape[0])
        lam_s = lams[i + 1].expand(z.shape[0])
        x_hat = denoise(z, lam_t)
        mean, std = posterior(z, x_hat, lam_t, lam_s)
        z = mean + std * noise() if i < n - 1 else mean
    return z


Sampler = Callable[..., Tensor]

#: Registered samplers, by name; ``default_steps`` is used when ``steps=None``.
SAMPLERS: dict[str, dict] = {
    "ancestral": {"fn": sample_ancestral, "spacing": "t", "default_steps": 1000},
}


def get_sampler(name: str) -> dict:
    """Look up a sampler entry; raises ValueError naming the valid choices."""
    if not isinstance(name, str) or name not in SAMPLERS:
        raise ValueError(f"unknown sampler={name!r}; choose one of {sorted(SAMPLERS)}")
    return SAMPLERS[name]


def run_sampler(
    name: str,
    denoise: Denoiser,
    z: Tensor,
    schedule: CosineSchedule,
    steps: int | None = None,
    *,
    noise: NoiseFn | None = None,
    progress: bool = False,
    **kwargs,
) -> Tensor:
    """Run the sampler ``name`` for ``steps`` steps (its default when None) from noise ``z``."""
    entry = get_sampler(name)
    steps = entry["default_steps"] if steps is None else steps
    lams = lambda_steps(schedule, steps, kwargs.pop("spacing", entry["spacing"]), device=z.device)
    return entry["fn"](denoise, z, lams, noise=noise, progress=progress, **kwargs)
