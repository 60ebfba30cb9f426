"""Conditioning wrappers: brute-force gradients, exact projections, Gaussian conditionals."""

from __future__ import annotations

import pytest
import torch

from xdiffusion.core.conditioning import (
    PROJECTION_FLOOR,
    block_mean,
    data_consistency,
    finalize,
    guidance,
    imputation,
    project_block_means,
)
from xdiffusion.core.samplers import run_sampler
from xdiffusion.core.schedule import CosineSchedule, alpha_sigma

SCHEDULE = CosineSchedule()
F = 6  # frames of the Gaussian toy


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tensors here are tiny: intra-op threads only contend on a loaded shared machine.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def gaussian_frames(mu: float, s: float, rho: float):
    """x ∈ R^F with mean mu and covariance Σ_ij = s² ρ^|i−j| (an AR(1) "video" of one cell),
    laid out as (B, 1, F, 1, 1), with its exact denoiser
    x̂ = mu + α Σ (α² Σ + σ² I)⁻¹ (z − α mu), evaluated in Σ's eigenbasis."""
    idx = torch.arange(F, dtype=torch.float64)
    cov = s * s * rho ** (idx[:, None] - idx[None, :]).abs()
    d, u = torch.linalg.eigh(cov)

    def denoise(z: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        a, sg = alpha_sigma(lam.to(z.dtype).reshape(-1, 1))
        zz = z.reshape(z.shape[0], F)
        x = mu + ((zz - a * mu) @ u * (a * d / (a * a * d + sg * sg))) @ u.T
        return x.reshape(z.shape)

    return cov, denoise


def linear_denoiser(n: int, seed: int = 0):
    """x̂ = α W z + b on each flattened sample: linear, batch-independent."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, n, generator=g, dtype=torch.float64) / n**0.5
    b = torch.randn(n, generator=g, dtype=torch.float64)

    def denoise(z, lam):
        a, _ = alpha_sigma(lam.to(z.dtype).reshape(-1, 1))
        return (a * (z.reshape(z.shape[0], -1) @ w.T) + b).reshape(z.shape)

    return w, b, denoise


def fixed_noise(eps: torch.Tensor):
    return lambda: eps.clone()


def test_guidance_gradient_matches_finite_differences():
    shape = (2, 1, 3, 2, 2)
    n = 12
    _, _, den = linear_denoiser(n)
    g = torch.Generator().manual_seed(1)
    z = torch.randn(shape, generator=g, dtype=torch.float64)
    eps = torch.randn(shape, generator=g, dtype=torch.float64)
    x_known = torch.randn(shape, generator=g, dtype=torch.float64)
    mask = torch.zeros(3, 2, 2, dtype=torch.bool)
    mask[0] = True  # first frame known, broadcast over batch and channel
    lam = torch.full((2,), 0.7, dtype=torch.float64)
    weight = 2.5
    out = guidance(den, x_known, mask, weight=weight, noise=fixed_noise(eps))(z, lam)

    alpha, sigma = alpha_sigma(lam[0])
    z_tilde = torch.where(mask, alpha * x_known + sigma * eps, z)

    def loss(zt):  # per-sample Σ over known elements of ‖x_a − x̂_a‖²
        r = torch.where(mask, x_known - den(zt, lam), torch.zeros(()))
        return r.pow(2).flatten(1).sum(1)

    grad = torch.zeros(shape, dtype=torch.float64)
    h = 1e-6
    for j in range(n):
        if mask.flatten()[j]:
            continue  # ∇ only w.r.t. the unknown part Ω̄(z_t)
        e = torch.zeros(n, dtype=torch.float64)
        e[j] = h
        e = e.reshape(shape[1:])
        grad.view(2, n)[:, j] = (loss(z_tilde + e) - loss(z_tilde - e)) / (2 * h)
    expected = den(z_tilde, lam) - weight * alpha / 2 * grad
    expected = torch.where(mask, x_known, expected)
    torch.testing.assert_close(out, expected, atol=1e-7, rtol=1e-7)
    assert (grad.abs() > 1e-3).any()  # the test exercises a real correction


def test_operator_guidance_gradient_matches_closed_form():
    """With A = block mean: x̂ᶜ = x̂ − (w α / 2) · 2 (A W α)ᵀ (A x̂ − y)."""
    shape = (3, 1, 1, 4, 4)
    w, _, den = linear_denoiser(16, seed=2)
    g = torch.Generator().manual_seed(3)
    z = torch.randn(shape, generator=g, dtype=torch.float64)
    y = torch.randn(3, 1, 1, 2, 2, generator=g, dtype=torch.float64)
    lam = torch.full((3,), -1.2, dtype=torch.float64)
    out = guidance(den, y, weight=1.7, operator=lambda x: block_mean(x, 2))(z, lam)
    alpha, _ = alpha_sigma(lam[0])
    a_mat = block_mean(torch.eye(16, dtype=torch.float64).reshape(16, 4, 4), 2).reshape(16, 4).T
    x_hat = den(z, lam)
    resid = block_mean(x_hat, 2).reshape(3, 4) - y.reshape(3, 4)
    grad = 2 * resid @ (a_mat @ (alpha * w))
    expected = x_hat - 1.7 * alpha / 2 * grad.reshape(shape)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)


def test_guidance_does_not_depend_on_batch_size():
    """Per-sample sums: a member gets the same x̂ᶜ alone or inside a batch of 5."""
    shape = (5, 2, 3, 4, 4)
    conv = torch.nn.Conv3d(2, 2, 3, padding=1).double()
    torch.nn.init.normal_(conv.weight, std=0.3)

    def den(z, lam):
        a, _ = alpha_sigma(lam.to(z.dtype).reshape(-1, 1, 1, 1, 1))
        return torch.tanh(conv(a * z))

    g = torch.Generator().manual_seed(4)
    z = torch.randn(shape, generator=g, dtype=torch.float64)
    eps = torch.randn(shape, generator=g, dtype=torch.float64)
    x_known = torch.rand(shape, generator=g, dtype=torch.float64)
    mask = torch.zeros(1, 1, 3, 4, 4, dtype=torch.bool)
    mask[:, :, 1] = True
    lam = torch.full((5,), 0.3, dtype=torch.float64)
    with torch.no_grad():  # as inside a sampler
        big = guidance(den, x_known, mask, weight=3.0, noise=fixed_noise(eps))(z, lam)
        one = guidance(den, x_known[2:3], mask, weight=3.0, noise=fixed_noise(eps[2:3]))(
            z[2:3], lam[2:3]
        )
        plain = imputation(den, x_known, mask, noise=fixed_noise(eps))(z, lam)
    torch.testing.assert_close(big[2:3], one, atol=1e-12, rtol=0)
    assert (big - plain).abs().max() > 1e-3  # guidance did change x̂


def test_guidance_with_zero_weight_is_imputation():
    _, den = gaussian_frames(0.1, 0.5, 0.9)
    z = torch.randn(7, 1, F, 1, 1, dtype=torch.float64)
    eps = torch.randn_like(z)
    x_known = torch.full((1, 1, F, 1, 1), 0.4, dtype=torch.float64)
    mask = torch.zeros(F, 1, 1, dtype=torch.bool)
    mask[:2] = True
    lam = torch.zeros(7, dtype=torch.float64)
    a = guidance(den, x_known, mask, weight=0.0, noise=fixed_noise(eps))(z, lam)
    b = imputation(den, x_known, mask, noise=fixed_noise(eps))(z, lam)
    torch.testing.assert_close(a, b)


def test_imputation_replaces_known_part_and_finalize_is_exact():
    seen = []
    _, _, lin = linear_denoiser(2 * 3 * 2 * 2)

    def spy(z, lam):
        seen.append((z.clone(), lam.clone()))
        return lin(z, lam)

    shape = (2, 2, 3, 2, 2)
    g = torch.Generator().manual_seed(5)
    x_known = torch.randn(shape, generator=g, dtype=torch.float64)
    x_known[:, :, 2] = float("nan")  # unknown frames may be NaN
    mask = torch.tensor([True, True, False]).reshape(3, 1, 1)
    eps = torch.randn(shape, generator=g, dtype=torch.float64)
    z = torch.randn(shape, generator=g, dtype=torch.float64)
    lam = torch.full((2,), -0.5, dtype=torch.float64)
    x_hat = imputation(spy, x_known, mask, noise=fixed_noise(eps))(z, lam)
    alpha, sigma = alpha_sigma(lam[0])
    z_in = seen[0][0]
    torch.testing.assert_close(z_in[:, :, :2], alpha * x_known[:, :, :2] + sigma * eps[:, :, :2])
    assert torch.equal(z_in[:, :, 2], z[:, :, 2])
    assert torch.equal(x_hat[:, :, :2], x_known[:, :, :2])
    assert torch.isfinite(x_hat).all()

    den = imputation(lin, x_known, mask)
    out = run_sampler("dpmpp_2m", den, torch.randn(shape, dtype=torch.float64), SCHEDULE, 10)
    final = finalize(out, x_known, mask)
    assert torch.equal(final[:, :, :2], x_known[:, :, :2])
    assert torch.equal(final[:, :, 2], out[:, :, 2])


def test_block_mean_and_data_consistency():
    g = torch.Generator().manual_seed(6)
    x_hat = torch.randn(2, 3, 4, 8, 12, generator=g, dtype=torch.float64)
    y = torch.randn(2, 3, 4, 2, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(block_mean(x_hat, 4)[0, 0, 0, 1, 2], x_hat[0, 0, 0, 4:, 8:].mean())
    p = data_consistency(x_hat, y, 4)
    torch.testing.assert_close(block_mean(p, 4), y, atol=1e-12, rtol=0)
    torch.testing.assert_close(data_consistency(p, y, 4), p, atol=1e-12, rtol=0)  # idempotent
    # Orthogonal projection onto {A x = y}: for any consistent x', (x̂ − P x̂) ⟂ (x' − P x̂).
    other = data_consistency(torch.randn(x_hat.shape, generator=g, dtype=torch.float64), y, 4)
    assert abs(((x_hat - p) * (other - p)).sum().item()) < 1e-9
    assert ((x_hat - p).norm() < (x_hat - other).norm()).item()
    # Float32 stays exact to rounding.
    p32 = data_consistency(x_hat.float(), y.float(), 4)
    torch.testing.assert_close(block_mean(p32, 4), y.float(), atol=1e-6, rtol=0)
    # Masked blocks are left alone.
    mask = torch.zeros(2, 3, dtype=torch.bool)
    mask[0, 0] = True
    pm = data_consistency(x_hat, y, 4, mask=mask)
    torch.testing.assert_close(pm[..., :4, :4], p[..., :4, :4])
    torch.testing.assert_close(pm[..., 4:, :], x_hat[..., 4:, :])


def _downscaling(den, y, f, weight=3.0):
    """Guidance on ‖y − A x̂‖² (weight × f² for AAᵀ = I/f², eq. 2.112), then the exact
    projection of every x̂ onto {A x = y}."""
    if weight:
        den = guidance(den, y, weight=weight * f * f, operator=lambda x: block_mean(x, f))
    return lambda z, lam: data_consistency(den(z, lam), y, f)


def test_project_block_means_multiplicative_and_additive():
    g = torch.Generator().manual_seed(3)
    f = 4
    x = torch.rand(2, 2, 1, 8, 8, generator=g) * 3.0
    x[:, 0, :, :4, :4] *= (torch.rand(2, 1, 4, 4, generator=g) > 0.5).float()  # dry cells
    y = torch.rand(2, 2, 1, 2, 2, generator=g) + 0.1
    out = project_block_means(x, y, f, [0.0, None], [5.0, 5.0])
    torch.testing.assert_close(block_mean(out, f), y, atol=1e-6, rtol=0)
    # bounded channel: scaled around the bound, so dry cells stay dry and shape is kept
    assert bool((out[:, 0] >= 0).all())
    assert bool((out[:, 0, :, :4, :4][x[:, 0, :, :4, :4] == 0] == 0).all())
    ratio = out[0, 0, :, :4, :4] / x[0, 0, :, :4, :4].clamp_min(1e-12)
    wet = x[0, 0, :, :4, :4] > 0
    assert float(ratio[wet].std()) < 1e-5 * float(ratio[wet].mean())  # one factor per block
    # unbounded channel: the orthogonal projection
    torch.testing.assert_close(out[:, 1:], data_consistency(x[:, 1:], y[:, 1:], f))


def test_project_block_means_float_residue_is_not_amplified():
    """A block the sample left at float residue (~1e-10) with coarse value 0.5 must not
    become a noise-shaped field; an exactly dry block becomes the constant target."""
    g = torch.Generator().manual_seed(4)
    f = 4
    x = torch.zeros(1, 1, 1, 4, 8)
    x[..., :4] = 1e-10 * torch.rand(1, 1, 1, 4, 4, generator=g)  # residue
    # right block exactly dry
    y = torch.full((1, 1, 1, 1, 2), 0.5)
    out = project_block_means(x, y, f, [0.0], [10.0])
    torch.testing.assert_close(block_mean(out, f), y, atol=1e-6, rtol=0)
    left, right = out[..., :4], out[..., 4:]
    assert float(left.max()) < 0.5 + 1e-6 and float(left.min()) > 0.5 - 1e-6
    torch.testing.assert_close(right, torch.full_like(right, 0.5))
    # the multiplicative rule alone would have made the residue's noise the field
    ratio = 0.5 / x[..., :4].mean()
    assert float((x[..., :4] * ratio).max()) > 1.5 * 0.5
    # a negative correction in the fallback is clipped at the bound and renormalised
    x2 = torch.zeros(1, 1, 1, 4, 4)
    x2[..., 0, 0] = 2e-5  # block mean 1.25e-6: below the floor for scale 1
    assert 1.25e-6 < PROJECTION_FLOOR
    y2 = torch.full((1, 1, 1, 1, 1), 1e-6)
    out2 = project_block_means(x2, y2, f, [0.0], [1.0])
    assert bool((out2 >= 0).all())
    torch.testing.assert_close(block_mean(out2, f), y2, atol=1e-12, rtol=0)


def test_bad_arguments_raise():
    den = lambda z, lam: z  # noqa: E731
    x = torch.zeros(2, 1, 3, 4, 4)
    mask = torch.zeros(3, 4, 4, dtype=torch.bool)
    with pytest.raises(TypeError, match="mask"):
        imputation(den, x, mask.float())
    with pytest.raises(ValueError, match="broadcast"):
        imputation(den, x, torch.zeros(5, dtype=torch.bool))
    bad = x.clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    mask_nan = mask.clone()
    mask_nan[0, 0, 0] = True
    with pytest.raises(ValueError, match="NaN"):
        guidance(den, bad, mask_nan)
    with pytest.raises(ValueError, match="mask is required"):
        guidance(den, x)
    with pytest.raises(ValueError, match="weight"):
        guidance(den, x, mask, weight=-1.0)
    with pytest.raises(ValueError, match="sample shape"):
        imputation(den, x, mask)(torch.zeros(2, 1, 3, 4, 5), torch.zeros(2))
    with pytest.raises(ValueError, match="divisible"):
        block_mean(torch.zeros(1, 1, 1, 6, 6), 4)
    with pytest.raises(ValueError, match="factor"):
        block_mean(torch.zeros(1, 1, 1, 6, 6), 0)
    with pytest.raises(ValueError, match="coarse grid"):
        data_consistency(torch.zeros(1, 1, 1, 8, 8), torch.zeros(1, 1, 1, 4, 4), 4)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        guidance(den, x, mask)(torch.zeros(2, 1, 3, 4, 4), torch.zeros(2))


def _conditional_error(den, cov, mu, known, values, make, sampler, steps, n=2000):
    """Normalised errors of the unknown frames' mean and std against the exact Gaussian
    conditional, for the conditional denoiser ``make(den, x_known, mask)``."""
    known_t = torch.tensor(known)
    unk = torch.tensor([i for i in range(F) if i not in known])
    a = torch.tensor(values, dtype=torch.float64)
    s21 = cov[unk][:, known_t]
    mean = mu + s21 @ torch.linalg.solve(cov[known_t][:, known_t], a - mu)
    var = cov[unk][:, unk] - s21 @ torch.linalg.solve(cov[known_t][:, known_t], s21.T)
    std = var.diagonal().sqrt()
    mask = torch.zeros(F, 1, 1, dtype=torch.bool)
    mask[known_t] = True
    x_known = torch.zeros(1, 1, F, 1, 1, dtype=torch.float64)
    x_known[0, 0, known_t, 0, 0] = a
    torch.manual_seed(7)
    z = torch.randn(n, 1, F, 1, 1, dtype=torch.float64)
    out = run_sampler(sampler, make(den, x_known, mask), z, SCHEDULE, steps)
    out = finalize(out, x_known, mask).reshape(n, F)
    assert torch.equal(out[:, known_t], a.expand(n, len(known)))
    mean_err = ((out[:, unk].mean(0) - mean) / std).abs().max().item()
    std_err = (out[:, unk].std(0) / std - 1).abs().max().item()
    return mean_err, std_err


@pytest.mark.parametrize(
    ("known", "values"), [([0, 1], [0.9, 0.8]), ([0, 5], [0.9, -0.6])], ids=["forecast", "interp"]
)
def test_guidance_recovers_gaussian_conditional(known, values):
    """Exact denoiser of correlated Gaussian frames; condition on some frames. Guidance at
    the default weight gets the conditional mean and std, imputation does not (it is
    "incoherent", §2.7.10), and w_r = 1 (too weak) and 30 (too strong) are worse."""
    mu = 0.1
    cov, den = gaussian_frames(mu, 0.5, 0.9)

    def run(make):
        return _conditional_error(den, cov, mu, known, values, make, "dpmpp_2m_sde", 50)

    imp_mean, imp_std = run(imputation)
    g_mean, g_std = run(guidance)
    weak, _ = run(lambda *a: guidance(*a, weight=1.0))
    strong, _ = run(lambda *a: guidance(*a, weight=30.0))
    assert imp_mean > 0.6 and imp_std > 0.25
    assert g_mean < 0.3 and g_std < 0.15
    assert g_mean < 0.4 * imp_mean
    assert g_mean < weak and g_mean < strong


def test_downscaling_recovers_gaussian_conditional():
    """Correlated Gaussian 4×4 fields, exact denoiser, y = 2×2 block means. Downscaling
    (guidance + projection) matches x | A x = y in mean and std, is exactly consistent,
    and beats the projection alone."""
    mu, s, h, f, n = 0.1, 0.5, 4, 2, 2000
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(h), indexing="ij")
    pts = torch.stack([yy.flatten(), xx.flatten()], 1).double()
    cov = s * s * torch.exp(-torch.cdist(pts, pts) / 3.0)
    d, u = torch.linalg.eigh(cov)

    def den(z, lam):
        a, sg = alpha_sigma(lam.to(z.dtype).reshape(-1, 1))
        zz = z.reshape(z.shape[0], h * h)
        return (mu + ((zz - a * mu) @ u * (a * d / (a * a * d + sg * sg))) @ u.T).reshape(z.shape)

    a_mat = block_mean(torch.eye(h * h, dtype=torch.float64).reshape(-1, h, h), f).reshape(16, 4)
    a_mat = a_mat.T
    y = torch.tensor([0.6, -0.2, 0.3, 0.0], dtype=torch.float64)
    gain = cov @ a_mat.T @ torch.linalg.inv(a_mat @ cov @ a_mat.T)
    mean = mu + gain @ (y - a_mat @ torch.full((16,), mu, dtype=torch.float64))
    std = (cov - gain @ a_mat @ cov).diagonal().sqrt()

    def errors(cond):
        torch.manual_seed(8)
        z = torch.randn(n, 1, 1, h, h, dtype=torch.float64)
        out = run_sampler("dpmpp_2m_sde", cond, z, SCHEDULE, 50)
        consistency = (block_mean(out, f).reshape(n, 4) - y).abs().max().item()
        out = out.reshape(n, 16)
        return (
            ((out.mean(0) - mean) / std).abs().max().item(),
            (out.std(0) / std - 1).abs().max().item(),
            consistency,
        )

    y_grid = y.reshape(1, 1, 1, 2, 2)
    g_mean, g_std, g_cons = errors(_downscaling(den, y_grid, f))
    p_mean, _, p_cons = errors(_downscaling(den, y_grid, f, weight=0))
    assert g_cons < 1e-6 and p_cons < 1e-6
    assert g_mean < 0.15 and g_std < 0.1
    assert g_mean < 0.6 * p_mean
