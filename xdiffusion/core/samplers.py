"""Samplers as pure functions over one callable contract, ``denoise(z, lam) -> x_hat``.

Every sampler takes the initial noise ``z`` (at λ = λmin), an increasing sequence of
log-SNRs ``lams`` (from :func:`lambda_steps`), and a ``noise()`` callable for stochastic
steps. Conditioning (imputation, guidance) wraps ``denoise`` and so works with all of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import pairwise

import torch
from torch import Tensor
from tqdm.auto import tqdm

from xdiffusion.core.diffusion import Denoiser
from xdiffusion.core.schedule import CosineSchedule, posterior
from xdiffusion.validation import check_number, check_positive_int

__all__ = [
    "SAMPLERS",
    "SPACINGS",
    "TRUNC_RANGE",
    "get_sampler",
    "lambda_steps",
    "run_sampler",
    "sample_ancestral",
    "sample_ddim",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_3m",
]

NoiseFn = Callable[[], Tensor]


#: Names accepted by :func:`lambda_steps`.
SPACINGS = ("t", "lambda", "lambda_trunc")

#: Inner λ range of the ``"lambda_trunc"`` grid. Below −10 the signal (α/σ)² s² of data of
#: scale s ≤ 1 is under 5e-5 of the noise and x̂ barely moves; above 18 the noise σ/α is
#: 1.2e-4 of the data range, so a first-order jump to λmax loses only structure smaller than
#: that. A uniform grid over ±30 wastes most steps outside this range, and the "t" grid
#: makes its last evaluation at λ ≈ 2 log(2 steps / π) (5.5 for 25 steps), which with few
#: steps smooths away fine-scale structure of amplitude below ~0.1 (see tests/test_samplers).
TRUNC_RANGE = (-10.0, 18.0)


def _lambda_trunc(schedule: CosineSchedule, steps: int) -> Tensor:
    """λmin, then points uniform in λ over TRUNC_RANGE ∩ [λmin, λmax], then λmax."""
    lmin, lmax = schedule.lambda_min, schedule.lambda_max
    if steps == 1:
        return torch.tensor([lmin, lmax], dtype=torch.float64)
    lo, hi = max(TRUNC_RANGE[0], lmin), min(TRUNC_RANGE[1], lmax)
    head = [lmin] if lo > lmin else []
    tail = [lmax] if hi < lmax else []
    k = steps + 1 - len(head) - len(tail)  # inner points
    if k == 1:
        inner = [0.5 * (lo + hi)]
    elif k >= 2:
        inner = torch.linspace(lo, hi, k, dtype=torch.float64).tolist()
    else:
        inner = []
    return torch.tensor(head + inner + tail, dtype=torch.float64)


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
        eq. 2.52); ``"lambda"``: uniform in log-SNR (the natural grid of DPM-Solver);
        ``"lambda_trunc"``: uniform in log-SNR over :data:`TRUNC_RANGE` (clipped to the
        schedule), with λmin and λmax added as first and last points.
    """
    steps = check_positive_int(steps, "steps")
    if spacing == "t":
        t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
        lam = schedule.lam(t)
    elif spacing == "lambda":
        lam = torch.linspace(schedule.lambda_min, schedule.lambda_max, steps + 1)
        lam = lam.double()
    elif spacing == "lambda_trunc":
        lam = _lambda_trunc(schedule, steps)
    else:
        raise ValueError(f"spacing must be one of {sorted(SPACINGS)}, got {spacing!r}")
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


def _grid(lams: Tensor) -> list[float]:
    """Validate a λ grid and return it as float64 Python numbers (one host copy, not per step)."""
    if not isinstance(lams, Tensor) or lams.ndim != 1 or len(lams) < 2:
        raise ValueError("lams must be a 1-D tensor of at least 2 log-SNRs (see lambda_steps)")
    grid = lams.detach().double().cpu().tolist()
    if any(b <= a for a, b in pairwise(grid)):
        raise ValueError("lams must be strictly increasing (from λmin to λmax)")
    return grid


def _step(lam_t: float, lam_s: float) -> tuple[float, float, float, float]:
    """α_s, σ_s, σ_s/σ_t and h = (λ_s − λ_t)/2 of a step λ_t → λ_s, in float64.

    h is the step in DPM-Solver's half log-SNR log(α/σ) = λ/2 (Lu et al. 2022): every
    exponential-integrator coefficient below is written in terms of it.
    """

    def sig(x: float) -> float:  # never exp of a large positive number
        return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))

    sigma_s = math.sqrt(sig(-lam_s))
    return math.sqrt(sig(lam_s)), sigma_s, sigma_s / math.sqrt(sig(-lam_t)), 0.5 * (lam_s - lam_t)


def _check_eta(eta: float, name: str = "eta") -> float:
    return check_number(eta, name, minimum=0.0, maximum=1.0)  # type: ignore[return-value]


@torch.no_grad()
def sample_ddim(
    denoise: Denoiser,
    z: Tensor,
    lams: Tensor,
    *,
    noise: NoiseFn | None = None,
    progress: bool = False,
    eta: float = 0.0,
) -> Tensor:
    """DDIM (Song et al. 2021) in log-SNR form for the VP process with x-prediction.

    With ε̂ = (z_t − α_t x̂)/σ_t and the posterior variance σ̃² = (1 − r) σ_s² of eq. 2.58
    (r = exp(λ_t − λ_s)), a step is z_s = α_s x̂ + sqrt(σ_s² − η² σ̃²) ε̂ + η σ̃ ξ. It is
    evaluated as c_z z_t + c_x x̂ with c_z = (σ_s/σ_t) sqrt(1 − a), c_x = α_s (1 −
    sqrt(1 − a) e^{−h}), a = η²(1 − r), h = (λ_s − λ_t)/2, via expm1/log1p so that tiny and
    huge steps stay accurate. η = 0 is the deterministic probability-flow solver of first
    order (= DPM-Solver++ 1); η = 1 is exactly the ancestral step of eq. 2.52–2.58.

    Parameters
    ----------
    denoise
        ``denoise(z, lam) -> x_hat`` with lam of shape (B,).
    z
        Initial noise at λ = ``lams[0]``, shape (B, ...).
    lams
        Increasing log-SNRs from :func:`lambda_steps`.
    noise
        Callable drawing fresh N(0, I) like ``z`` (only called when ``eta > 0``).
    progress
        Show a tqdm bar.
    eta
        Stochasticity η ∈ [0, 1]. No noise is added on the last step.
    """
    eta = _check_eta(eta)
    grid = _grid(lams)
    noise = noise or (lambda: torch.randn_like(z))
    n = len(grid) - 1
    for i in _progress(n, progress, "ddim"):
        x_hat = denoise(z, lams[i].to(z.dtype).expand(z.shape[0]))
        alpha_s, sigma_s, ratio, h = _step(grid[i], grid[i + 1])
        a = eta * eta * -math.expm1(-2.0 * h)
        c_z = ratio * math.sqrt(1.0 - a)
        c_x = alpha_s * -math.expm1(0.5 * math.log1p(-a) - h) if a < 1.0 else alpha_s
        z = c_z * z + c_x * x_hat
        if a > 0.0 and i < n - 1:
            z = z + (sigma_s * math.sqrt(a)) * noise()
    return z


def _dpmpp(
    denoise: Denoiser,
    z: Tensor,
    lams: Tensor,
    *,
    order: int,
    eta: float,
    noise: NoiseFn | None,
    progress: bool,
    lower_order_final: bool,
    desc: str,
) -> Tensor:
    """Multistep DPM-Solver++ of order 1–3 with optional SDE noise (shared by the public ones).

    The first-order part is z_s = (σ_s/σ_t) e^{−ηh} z_t + α_s (1 − e^{−(1+η)h}) x̂ +
    σ_s sqrt(1 − e^{−2ηh}) ξ; higher orders add finite differences of earlier x̂.
    """
    grid = _grid(lams)
    if eta > 0.0:
        noise = noise or (lambda: torch.randn_like(z))
    n = len(grid) - 1
    hist: list[tuple[Tensor, float]] = []  # (x̂, h) of previous steps, newest first
    for i in _progress(n, progress, desc):
        x_hat = denoise(z, lams[i].to(z.dtype).expand(z.shape[0]))
        alpha_s, sigma_s, ratio, h = _step(grid[i], grid[i + 1])
        he = (1.0 + eta) * h
        k = min(order, len(hist) + 1)
        if lower_order_final:
            # Multistep extrapolation over the last, usually much longer, step into λmax is
            # unstable with few steps; the final steps fall back to lower order (Lu et al.).
            k = min(k, n - i)
        d = x_hat
        z = (ratio * math.exp(-eta * h)) * z
        if k == 2 and order == 2:
            # DPM-Solver++(2M), Lu et al. (2022) Alg. 2: D = x̂ + (x̂ − x̂_prev) / (2 r).
            d = x_hat + (0.5 * h / hist[0][1]) * (x_hat - hist[0][0])
        elif k >= 2:
            phi2 = math.expm1(-he) / he + 1.0
            d1_0 = (h / hist[0][1]) * (x_hat - hist[0][0])
            if k == 2:
                z = z + (alpha_s * phi2) * d1_0
            else:
                r0, r1 = hist[0][1] / h, hist[1][1] / h
                d1_1 = (h / hist[1][1]) * (hist[0][0] - hist[1][0])
                d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi3 = phi2 / he - 0.5
                z = z + (alpha_s * phi2) * d1 - (alpha_s * phi3) * d2
        z = z + (alpha_s * -math.expm1(-he)) * d
        if eta > 0.0 and i < n - 1:
            z = z + (sigma_s * math.sqrt(-math.expm1(-2.0 * eta * h))) * noise()
        hist = [(x_hat, h), *hist][: order - 1]
    return z


@torch.no_grad()
def sample_dpmpp_2m(
    denoise: Denoiser,
    z: Tensor,
    lams: Tensor,
    *,
    noise: NoiseFn | None = None,
    progress: bool = False,
    lower_order_final: bool = True,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): second-order multistep probability-flow ODE.

    Data-prediction form for the VP process, in h = (λ_s − λ_t)/2 (DPM-Solver's log-SNR is
    half of ours): z_s = (σ_s/σ_t) z_t + α_s (1 − e^{−h}) D with
    D = (1 + 1/(2r)) x̂_t − 1/(2r) x̂_prev, r = h_prev/h; the first step is DDIM.
    Deterministic: ``noise`` is never called.

    Parameters
    ----------
    denoise, z, lams, noise, progress
        As for :func:`sample_ddim`.
    lower_order_final
        Take the last step with first order (the step into λmax is typically long).
    """
    return _dpmpp(
        denoise,
        z,
        lams,
        order=2,
        eta=0.0,
        noise=noise,
        progress=progress,
        lower_order_final=lower_order_final,
        desc="dpmpp_2m",
    )


@torch.no_grad()
def sample_dpmpp_2m_sde(
    denoise: Denoiser,
    z: Tensor,
    lams: Tensor,
    *,
    noise: NoiseFn | None = None,
    progress: bool = False,
    eta: float = 1.0,
    lower_order_final: bool = True,
) -> Tensor:
    """DPM-Solver++(2M) SDE (Lu et al. 2022; midpoint form of k-diffusion), data prediction.

    z_s = (σ_s/σ_t) e^{−ηh} z_t + α_s (1 − e^{−(1+η)h}) (x̂ + (x̂ − x̂_prev)/(2r))
    + σ_s sqrt(1 − e^{−2ηh}) ξ. At η = 1 its first-order part is exactly the ancestral step
    (eq. 2.52–2.58) and η = 0 gives :func:`sample_dpmpp_2m`.

    Parameters
    ----------
    denoise, z, lams, noise, progress, lower_order_final
        As for :func:`sample_dpmpp_2m`.
    eta
        Stochasticity η ∈ [0, 1]. No noise is added on the last step.
    """
    eta = _check_eta(eta)
    return _dpmpp(
        denoise,
        z,
        lams,
        order=2,
        eta=eta,
        noise=noise,
        progress=progress,
        lower_order_final=lower_order_final,
        desc="dpmpp_2m_sde",
    )


@torch.no_grad()
def sample_dpmpp_3m(
    denoise: Denoiser,
    z: Tensor,
    lams: Tensor,
    *,
    noise: NoiseFn | None = None,
    progress: bool = False,
    eta: float = 0.0,
    lower_order_final: bool = True,
) -> Tensor:
    """DPM-Solver++(3M) (Lu et al. 2022; k-diffusion's 3M SDE form), η = 0 is the ODE.

    Third-order multistep exponential integrator with φ₂ = (e^{−h}−1)/h + 1 and
    φ₃ = φ₂/h − 1/2 (h → (1+η)h with noise); the first two steps and, with
    ``lower_order_final``, the last two are of lower order.

    Parameters
    ----------
    denoise, z, lams, noise, progress, lower_order_final
        As for :func:`sample_dpmpp_2m`.
    eta
        Stochasticity η ∈ [0, 1]; 0 is deterministic.
    """
    eta = _check_eta(eta)
    return _dpmpp(
        denoise,
        z,
        lams,
        order=3,
        eta=eta,
        noise=noise,
        progress=progress,
        lower_order_final=lower_order_final,
        desc="dpmpp_3m",
    )


#: Registered samplers, by name; ``default_steps`` is used when ``steps=None``.
SAMPLERS: dict[str, dict] = {
    "ancestral": {"fn": sample_ancestral, "spacing": "t", "default_steps": 1000},
    "ddim": {"fn": sample_ddim, "spacing": "lambda_trunc", "default_steps": 50},
    "dpmpp_2m": {"fn": sample_dpmpp_2m, "spacing": "lambda_trunc", "default_steps": 25},
    "dpmpp_2m_sde": {"fn": sample_dpmpp_2m_sde, "spacing": "lambda_trunc", "default_steps": 50},
    "dpmpp_3m": {"fn": sample_dpmpp_3m, "spacing": "lambda_trunc", "default_steps": 25},
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
