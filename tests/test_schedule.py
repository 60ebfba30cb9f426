import math

import numpy as np
import pytest
import torch

from xdiffusion.core.diffusion import diffuse, eps_from_v, v_loss, v_target, x_from_v
from xdiffusion.core.samplers import lambda_steps, sample_ancestral
from xdiffusion.core.schedule import CosineSchedule, alpha_sigma

S = CosineSchedule()


def test_alpha_sigma_identity_and_endpoints():
    t = torch.linspace(0, 1, 1001)
    lam = S.lam(t)
    a, s = alpha_sigma(lam)
    assert torch.allclose(a**2 + s**2, torch.ones_like(a), atol=1e-6)
    assert lam[0].item() == pytest.approx(30.0, abs=1e-4)
    assert lam[-1].item() == pytest.approx(-30.0, abs=1e-4)
    assert torch.all(torch.diff(lam) < 0)
    assert torch.isfinite(lam).all() and torch.isfinite(a).all() and torch.isfinite(s).all()
    assert (s > 0).all() and (a > 0).all()  # float32 stable at both ends


def test_lambda_matches_cosine_formula():
    # eq. 2.63: alpha = cos(pi/2 (t0 + t (t1 - t0)))
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    u = S.t0 + t * (S.t1 - S.t0)
    a, _ = alpha_sigma(S.lam(t))
    assert torch.allclose(a, torch.cos(0.5 * math.pi * u), atol=1e-12)


def test_inverse():
    t = torch.rand(1000, dtype=torch.float64)
    assert torch.allclose(S.t(S.lam(t)), t, atol=1e-9)


def test_density_normalised_and_matches_histogram():
    lam = torch.linspace(-30, 30, 200001, dtype=torch.float64)
    p = S.density(lam)
    assert torch.trapezoid(p, lam).item() == pytest.approx(1.0, abs=1e-6)
    draws = S.lam(torch.rand(400000, generator=torch.Generator().manual_seed(0))).numpy()
    hist, edges = np.histogram(draws, bins=60, range=(-30, 30), density=True)
    centres = torch.from_numpy(0.5 * (edges[1:] + edges[:-1]))
    expected = S.density(centres).numpy()
    assert np.max(np.abs(hist - expected)) < 0.01
    assert S.density(torch.tensor([31.0, -31.0])).sum() == 0


def test_bad_schedule():
    with pytest.raises(ValueError, match="lambda_min"):
        CosineSchedule(5.0, -5.0)
    with pytest.raises(ValueError, match="unknown schedule"):
        CosineSchedule.from_dict({"kind": "linear"})
    assert CosineSchedule.from_dict(S.to_dict()) == S


def test_v_parameterisation_identities():
    g = torch.Generator().manual_seed(1)
    x, eps = torch.randn(4, 1, 2, 3, 3, generator=g), torch.randn(4, 1, 2, 3, 3, generator=g)
    lam = torch.tensor([-10.0, -1.0, 2.0, 20.0])
    z = diffuse(x, lam, eps)
    v = v_target(x, eps, lam)
    assert torch.allclose(x_from_v(z, v, lam), x, atol=1e-5)  # eq. 2.69
    assert torch.allclose(eps_from_v(z, v, lam), eps, atol=1e-5)  # eq. 2.66


def test_v_loss_zero_for_oracle_and_masked_mean():
    x = torch.randn(3, 1, 2, 4, 4)

    class Oracle:
        def __call__(self, z, lam):
            a, s = alpha_sigma(lam.view(-1, 1, 1, 1, 1))
            # v = alpha eps - sigma x with eps = (z - alpha x) / sigma  ->  (alpha z - x) / sigma
            return (a * z - x) / s

    loss = v_loss(
        Oracle(), x, S, generator=torch.Generator().manual_seed(0), t=torch.full((3,), 0.5)
    )
    assert loss.shape == (3,) and loss.max() < 1e-8
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[..., :2] = True
    zero = lambda z, lam: torch.zeros_like(z)  # noqa: E731
    g = torch.Generator().manual_seed(0)
    full = v_loss(zero, x, S, generator=g, t=torch.full((3,), 0.3))
    masked = v_loss(
        zero, x, S, generator=torch.Generator().manual_seed(0), t=torch.full((3,), 0.3), mask=mask
    )
    assert torch.all(masked > 0) and not torch.allclose(full, masked)


def test_ancestral_oracle_returns_data():
    x = torch.rand(3, 1, 2, 5, 5) * 2 - 1
    out = sample_ancestral(lambda z, lam: x, torch.randn_like(x), lambda_steps(S, 100))
    assert torch.allclose(out, x, atol=1e-5)


def test_lambda_steps():
    lam = lambda_steps(S, 10, "lambda")
    assert torch.allclose(torch.diff(lam), torch.full((10,), 6.0), atol=1e-4)
    lam_t = lambda_steps(S, 10, "t")
    assert lam_t[0] == pytest.approx(-30) and lam_t[-1] == pytest.approx(30)
    with pytest.raises(ValueError, match="steps"):
        lambda_steps(S, 0)
    with pytest.raises(ValueError, match="spacing"):
        lambda_steps(S, 5, "sigma")
