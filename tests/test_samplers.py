"""Samplers against closed forms: an oracle denoiser, Gaussian data, Gaussian conditioning."""

from __future__ import annotations

import math

import mpmath
import pytest
import torch

from xdiffusion.core.samplers import (
    SAMPLERS,
    TRUNC_RANGE,
    get_sampler,
    lambda_steps,
    run_sampler,
    sample_ancestral,
    sample_ddim,
    sample_dpmpp_2m,
)
from xdiffusion.core.schedule import CosineSchedule, alpha_sigma, posterior

SCHEDULE = CosineSchedule()
M, S = 0.3, 0.5  # data x ~ N(M, S²) elementwise


def gaussian_denoiser(m: float | torch.Tensor, s: float | torch.Tensor):
    """Exact E[x | z] for x ~ N(m, s²): m + α s² / (α² s² + σ²) (z − α m)."""

    def denoise(z: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        a, sg = alpha_sigma(lam.to(z.dtype).reshape(-1, *[1] * (z.ndim - 1)))
        return m + a * s * s / (a * a * s * s + sg * sg) * (z - a * m)

    return denoise


def exact_flow(z: torch.Tensor, m, s) -> torch.Tensor:
    """Probability-flow map from λmin to λmax for Gaussian data: the monotone affine map
    between the Gaussian marginals N(α m, α² s² + σ²) at both ends."""
    lam = torch.tensor([SCHEDULE.lambda_min, SCHEDULE.lambda_max], dtype=torch.float64)
    (a0, a1), (s0, s1) = alpha_sigma(lam)
    scale = torch.sqrt(a1 * a1 * s * s + s1 * s1) / torch.sqrt(a0 * a0 * s * s + s0 * s0)
    return a1 * m + scale * (z.double() - a0 * m)


def seeded_noise(like: torch.Tensor, seed: int):
    g = torch.Generator().manual_seed(seed)
    return lambda: torch.randn(like.shape, generator=g, dtype=like.dtype)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tensors here are tiny: intra-op threads only contend on a loaded shared machine.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def z0() -> torch.Tensor:
    return torch.randn(20000, 1, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("spacing", ["t", "lambda", "lambda_trunc"])
def test_oracle_denoiser_returns_its_x(name, spacing):
    x = torch.rand(3, 2, 4, 5, 6, generator=torch.Generator().manual_seed(1)) * 2 - 1
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    out = run_sampler(name, lambda z, lam: x, z, SCHEDULE, 12, spacing=spacing)
    assert out.shape == x.shape
    torch.testing.assert_close(out, x, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("name", "steps", "kwargs", "std_tol"),
    [
        ("ancestral", 200, {"spacing": "t"}, 0.04),
        ("ddim", 50, {"spacing": "t"}, 0.03),
        ("ddim", 200, {"eta": 0.5}, 0.04),
        ("dpmpp_2m", 25, {}, 0.03),
        ("dpmpp_2m", 20, {"spacing": "t"}, 0.01),
        ("dpmpp_3m", 25, {}, 0.02),
        ("dpmpp_2m_sde", 100, {}, 0.02),
    ],
)
def test_gaussian_data_moments(z0, name, steps, kwargs, std_tol):
    """20000 samples with the exact denoiser of N(M, S²) data have mean M and std S."""
    torch.manual_seed(3)
    out = run_sampler(name, gaussian_denoiser(M, S), z0, SCHEDULE, steps, **kwargs)
    assert abs(out.mean().item() - M) < 4 * S / math.sqrt(len(z0))
    assert abs(out.std().item() / S - 1) < std_tol


def test_deterministic_samplers_follow_the_probability_flow(z0):
    """DDIM (η=0) and DPM-Solver++ converge to the exact PF-ODE map, 2M/3M much faster."""
    z = z0[:1000].double()
    den, ref = gaussian_denoiser(M, S), exact_flow(z, M, S)

    def err(name, steps, spacing="t"):
        out = run_sampler(name, den, z, SCHEDULE, steps, spacing=spacing)
        return (out - ref).abs().max().item()

    # A 1000-step solution agrees with the closed form.
    assert err("dpmpp_2m", 1000) < 2e-4
    assert err("ddim", 50) < 0.07
    for steps in (10, 20, 50):
        assert err("dpmpp_2m", steps) < 0.5 * err("ddim", steps)
    assert err("dpmpp_2m", 20) < 0.01
    # Orders of convergence: doubling the steps halves DDIM's error, quarters 2M's.
    e = {n: err(name, n, "lambda_trunc") for name in ("ddim",) for n in (50, 100)}
    assert 1.6 < e[50] / e[100] < 2.5
    e = {n: err("dpmpp_2m", n, "lambda_trunc") for n in (50, 100)}
    assert e[50] / e[100] > 3.2
    e = {n: err("dpmpp_3m", n, "lambda_trunc") for n in (50, 100)}
    assert e[50] / e[100] > 4.0


def test_truncated_grid_keeps_fine_scales():
    """Data with several scales: the uniform-in-t grid with few steps makes its last
    evaluation at λ ≈ 5.5 and loses the small scales; the truncated λ grid keeps them."""
    s = torch.tensor([0.5, 0.1, 0.02, 0.005], dtype=torch.float64)
    z = torch.randn(500, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ref = exact_flow(z, 0.0, s)

    def rel_err(spacing):
        out = run_sampler("dpmpp_2m", gaussian_denoiser(0.0, s), z, SCHEDULE, 25, spacing=spacing)
        return ((out - ref).pow(2).mean(0).sqrt() / s).max().item()

    assert rel_err("lambda_trunc") < 0.05
    assert rel_err("t") > 0.5


def test_deterministic_samplers_consume_no_noise():
    def forbidden():
        raise AssertionError("noise() must not be called")

    z = torch.randn(4, 3)
    den = gaussian_denoiser(M, S)
    for name, kw in [("ddim", {"eta": 0.0}), ("dpmpp_2m", {}), ("dpmpp_3m", {})]:
        a = run_sampler(name, den, z, SCHEDULE, 10, noise=forbidden, **kw)
        b = run_sampler(name, den, z, SCHEDULE, 10, noise=forbidden, **kw)
        assert torch.equal(a, b)


def test_ddim_eta_one_is_the_ancestral_sampler():
    z = torch.randn(64, 3, generator=torch.Generator().manual_seed(5))
    lams = lambda_steps(SCHEDULE, 30, "t")
    den = gaussian_denoiser(M, S)
    a = sample_ancestral(den, z, lams, noise=seeded_noise(z, 6))
    b = sample_ddim(den, z, lams, noise=seeded_noise(z, 6), eta=1.0)
    torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)


def test_stochastic_samplers_use_the_noise_callable():
    z = torch.randn(8, 2)
    den = gaussian_denoiser(M, S)
    for name, kw in [("ddim", {"eta": 0.3}), ("dpmpp_2m_sde", {}), ("dpmpp_3m", {"eta": 1.0})]:
        a = run_sampler(name, den, z, SCHEDULE, 8, noise=seeded_noise(z, 7), **kw)
        b = run_sampler(name, den, z, SCHEDULE, 8, noise=seeded_noise(z, 7), **kw)
        c = run_sampler(name, den, z, SCHEDULE, 8, noise=seeded_noise(z, 8), **kw)
        assert torch.equal(a, b)
        assert not torch.allclose(a, c)


@pytest.mark.parametrize("eta", [-0.1, 1.5, True, "0.5", float("nan")])
def test_eta_is_validated(eta):
    with pytest.raises(ValueError, match="eta"):
        run_sampler("ddim", lambda z, lam: z, torch.zeros(2, 1), SCHEDULE, 3, eta=eta)


def test_bad_names_and_grids_raise():
    with pytest.raises(ValueError, match="dpmpp_2m"):
        get_sampler("dpm++")
    with pytest.raises(ValueError, match="spacing"):
        lambda_steps(SCHEDULE, 10, "karras")
    with pytest.raises(ValueError, match="increasing"):
        sample_dpmpp_2m(lambda z, lam: z, torch.zeros(2, 1), torch.tensor([0.0, 1.0, 1.0]))


@pytest.mark.parametrize("steps", [1, 2, 3, 7, 25])
def test_truncated_grid(steps):
    lams = lambda_steps(SCHEDULE, steps, "lambda_trunc").double()
    assert len(lams) == steps + 1
    assert lams[0] == SCHEDULE.lambda_min and lams[-1] == SCHEDULE.lambda_max
    assert (lams.diff() > 0).all()
    if steps >= 3:
        inner = lams[1:-1]
        assert inner[0] == TRUNC_RANGE[0] and inner[-1] == TRUNC_RANGE[1]
        torch.testing.assert_close(
            inner.diff(), inner.diff().mean().expand(steps - 2), atol=2e-6, rtol=0
        )
    narrow = lambda_steps(CosineSchedule(-5.0, 12.0), steps, "lambda_trunc").double()
    torch.testing.assert_close(
        narrow, torch.linspace(-5.0, 12.0, steps + 1).double(), atol=1e-6, rtol=0
    )


def _brute_posterior(lam_t: float, lam_s: float, z_t: float, x: float) -> tuple[float, float]:
    """q(z_s | z_t, x) by conditioning the joint Gaussian of (z_s, z_t) given x, where
    z_s = α_s x + σ_s ε and z_t = α_{t|s} z_s + σ_{t|s} ε', in 50-digit arithmetic."""
    mpmath.mp.dps = 50
    lt, ls, zt, x = map(mpmath.mpf, (lam_t, lam_s, z_t, x))

    def sig(v):
        return 1 / (1 + mpmath.exp(-v))

    a_s, s_s = mpmath.sqrt(sig(ls)), mpmath.sqrt(sig(-ls))
    a_t, s_t = mpmath.sqrt(sig(lt)), mpmath.sqrt(sig(-lt))
    a_ts = a_t / a_s
    var_ts = s_t**2 - a_ts**2 * s_s**2
    cov = mpmath.matrix([[s_s**2, a_ts * s_s**2], [a_ts * s_s**2, a_ts**2 * s_s**2 + var_ts]])
    mean = a_s * x + cov[0, 1] / cov[1, 1] * (zt - a_t * x)
    var = cov[0, 0] - cov[0, 1] ** 2 / cov[1, 1]
    return float(mean), float(mpmath.sqrt(var))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    ("lam_s", "lam_t"),
    [
        (30.0, -30.0),
        (0.5, -3.0),
        (2.0, 2.0 - 1e-3),
        (2.0, 2.0 - 1e-5),
        (-20.0, -20.001),
        (25.0, 24.999),
        (30.0, 29.0),
        (-29.0, -30.0),
    ],
)
def test_posterior_matches_brute_force_conditioning(lam_s, lam_t, dtype):
    z_t = torch.tensor([0.7, -1.3], dtype=dtype)
    x = torch.tensor([-0.4, 0.9], dtype=dtype)
    lt, ls = torch.tensor(lam_t, dtype=dtype), torch.tensor(lam_s, dtype=dtype)
    mean, std = posterior(z_t, x, lt.expand(2), ls.expand(2))
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    for i in range(2):
        bm, bs = _brute_posterior(lt.item(), ls.item(), z_t[i].item(), x[i].item())
        # The mean is a sum of two terms that may cancel: relative to their size.
        assert abs(mean[i].item() - bm) <= tol * (abs(z_t[i].item()) + abs(x[i].item()))
        assert abs(std[i].item() - bs) <= tol * bs


def test_posterior_beats_the_naive_variance_in_float32():
    """σ²_{t|s} = σ_t² − α²_{t|s} σ_s² cancels for close λ; the expm1 form does not."""
    lt, ls = torch.tensor(2.0 - 1e-5), torch.tensor(2.0)
    _, std = posterior(torch.zeros(1), torch.zeros(1), lt, ls)
    _, bs = _brute_posterior(lt.item(), ls.item(), 0.0, 0.0)
    (a_s, a_t), (s_s, s_t) = alpha_sigma(torch.stack([ls, lt]))
    naive = ((s_t**2 - (a_t / a_s) ** 2 * s_s**2).clamp_min(0) * s_s**2 / s_t**2).sqrt()
    assert abs(std.item() / bs - 1) < 1e-6
    assert abs(naive.item() / bs - 1) > 1e-3
