"""Training options of the quality ablations (docs/quality.md).

Stratified diffusion times (one t per stratum: the same loss in expectation, less variance),
the cap on the v-loss's weight at low noise (``snr_cap``) and the shifted training schedule
(``lambda_shift``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_NET

from xdiffusion.core.diffusion import multiscale_mse, stratified_times, v_loss
from xdiffusion.core.schedule import CosineSchedule, alpha_sigma
from xdiffusion.training import Objective, TrainConfig

#: Draws of the batch mean in the variance comparison.
REPEATS = 400


def test_one_time_per_stratum_and_uniform_marginals():
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([stratified_times(8, generator=g) for _ in range(2000)])
    strata = (draws * 8).floor().long()
    assert torch.equal(strata.sort(1).values, torch.arange(8).expand(2000, 8))
    assert draws.min() >= 0.0 and draws.max() < 1.0
    # every position is marginally U(0, 1): mean 1/2, variance 1/12
    np.testing.assert_allclose(draws.mean(0), 0.5, atol=0.03)
    np.testing.assert_allclose(draws.var(0), 1 / 12, atol=0.01)
    assert stratified_times(4, dtype=torch.float64).dtype == torch.float64


def _closed_form_loss(x: float, t: torch.Tensor, schedule: CosineSchedule) -> torch.Tensor:
    """E_ε ‖v‖² per element for a zero network and constant data x: α² + σ² x²."""
    alpha, sigma = alpha_sigma(schedule.lam(t.double()))
    return alpha**2 + sigma**2 * x**2


def test_same_expected_loss_with_less_variance():
    """With a zero network on constant data the loss at t is α² + σ² x² in expectation:
    both samplers' batch means estimate its average over t ~ U(0, 1); the stratified one
    with far less variance."""
    schedule, x_value, b = CosineSchedule(), 3.0, 8
    x = torch.full((b, 1, 4, 8, 8), x_value, dtype=torch.float64)

    def zero_net(z, lam):
        return torch.zeros_like(z)

    grid = (torch.arange(100_000, dtype=torch.float64) + 0.5) / 100_000
    expected = float(_closed_form_loss(x_value, grid, schedule).mean())
    means = {}
    for stratified in (False, True):
        g = torch.Generator().manual_seed(1)
        means[stratified] = torch.stack(
            [
                v_loss(zero_net, x, schedule, generator=g, stratified=stratified).mean()
                for _ in range(REPEATS)
            ]
        )
    for stratified, m in means.items():
        se = float(m.std()) / REPEATS**0.5
        assert abs(float(m.mean()) - expected) < 4 * se + 0.02, stratified
    # measured ≈ 0.09 × over seeds 1–3: the rest is the variation within a stratum and ε
    assert float(means[True].var()) < 0.2 * float(means[False].var())


def test_ranks_together_draw_the_global_batch():
    """Two ranks' halves (rows rank::2) draw exactly what one process draws for the whole
    batch, as with independent times (data-parallel runs equal single-process ones)."""
    schedule = CosineSchedule()
    x = torch.randn(6, 1, 2, 4, 4, generator=torch.Generator().manual_seed(3))
    seen = {}

    def net(z, lam):
        seen.setdefault("lam", []).append(lam)
        return 0.5 * z

    whole = v_loss(net, x, schedule, generator=torch.Generator().manual_seed(7), stratified=True)
    lam_whole = seen.pop("lam")[0]
    for rank in (0, 1):
        part = v_loss(
            net,
            x[rank::2],
            schedule,
            generator=torch.Generator().manual_seed(7),
            stratified=True,
            share=(rank, 2),
        )
        torch.testing.assert_close(part, whole[rank::2])
        torch.testing.assert_close(seen.pop("lam")[0], lam_whole[rank::2])
    # the global batch covers every stratum of t once
    t = schedule.t(lam_whole.double())
    assert sorted((t * 6).floor().long().tolist()) == list(range(6))


def test_stratified_is_the_default_and_the_reference_recipe_keeps_uniform():
    import inspect

    from xdiffusion import fitting
    from xdiffusion.accessor import DataArrayDiffusionAccessor
    from xdiffusion.pretrained import RECIPES

    assert TrainConfig().t_sampling == "stratified"
    for f in (fitting.fit, DataArrayDiffusionAccessor.fit):
        assert inspect.signature(f).parameters["t_sampling"].default == "stratified"
    # the shipped model was trained with independent draws: its recipe says so
    assert RECIPES["synthetic-precip"]["fit"]["t_sampling"] == "uniform"


def test_bad_t_sampling_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"t_sampling must be one of \['uniform', 'stratified'\]"):
        TrainConfig(t_sampling="sobol")


def test_fit_records_it_and_resume_tells_them_apart(series, tmp_path):
    """The setting reaches the model's config and the resume fingerprint (uniform leaves no
    key, as checkpoints from before the setting have none), changes the draws, and a
    checkpoint of one is not resumed by the other."""
    from xdiffusion.checkpoint import load_checkpoint

    kw = dict(frames=4, batch_size=4, progress=False, device="cpu", net=TINY_NET, warmup=1)
    data = series.isel(time=slice(0, 40))
    runs = {}
    for kind in ("uniform", "stratified"):
        ckpt = tmp_path / kind
        runs[kind] = data.diffusion.fit(
            steps=3, t_sampling=kind, checkpoint_dir=ckpt, checkpoint_every=1, **kw
        )
        assert runs[kind].config["training"]["t_sampling"] == kind
        fp = load_checkpoint(ckpt).fingerprint
        assert ("t_sampling" in fp["train_config"]) == (kind == "stratified")
    assert runs["uniform"].history_dict["loss"] != runs["stratified"].history_dict["loss"]
    with pytest.raises(ValueError, match="t_sampling"):
        data.diffusion.fit(
            steps=4,
            t_sampling="uniform",
            checkpoint_dir=tmp_path / "stratified",
            resume=True,
            **kw,
        )


def test_snr_cap_closed_form():
    """The capped loss is the v-loss times min(1, (1 + γ) / (1 + e^λ)): unchanged where
    SNR ≤ γ, and (1 + γ) ‖x − x̂‖² where SNR > γ."""
    schedule, gamma = CosineSchedule(), 5.0
    x = torch.randn(5, 1, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.01, 0.1, 0.3, 0.6, 0.95])
    lam = schedule.lam(t)
    seen = {}

    def net(z, lam_b):
        seen["z"] = z
        return 0.3 * z

    plain = v_loss(net, x, schedule, generator=torch.Generator().manual_seed(1), t=t)
    capped = v_loss(
        net, x, schedule, generator=torch.Generator().manual_seed(1), t=t, snr_cap=gamma
    )
    snr = lam.double().exp()
    want = torch.minimum(torch.ones_like(snr), (1 + gamma) / (1 + snr))
    torch.testing.assert_close((capped / plain).double(), want, rtol=1e-5, atol=0)
    assert (snr > gamma).any() and (snr <= gamma).any()
    # where capped: (1 + γ) times the x-error of x̂ = α z − σ v̂ (eq. 2.69)
    alpha, sigma = alpha_sigma(lam)
    x_hat = alpha[:, None, None, None, None] * seen["z"] - sigma[:, None, None, None, None] * (
        0.3 * seen["z"]
    )
    x_err = ((x - x_hat) ** 2).flatten(1).mean(1)
    high = snr > gamma
    torch.testing.assert_close(capped[high], (1 + gamma) * x_err[high], rtol=1e-4, atol=0)


def test_snr_cap_is_checked_and_recorded(series):
    assert "snr_cap" not in Objective().to_dict()  # files from before keep their form
    assert Objective(snr_cap=5).to_dict()["snr_cap"] == 5.0
    with pytest.raises(ValueError, match="snr_cap"):
        Objective(snr_cap=-1.0)
    with pytest.raises(ValueError, match="snr_cap reweights the v-loss"):
        Objective("elbo", snr_cap=5.0)
    kw = dict(frames=4, batch_size=4, steps=4, progress=False, device="cpu", net=TINY_NET)
    data = series.isel(time=slice(0, 40))
    capped = data.diffusion.fit(snr_cap=5.0, **kw)
    plain = data.diffusion.fit(**kw)
    assert capped.config["training"]["objective"]["snr_cap"] == 5.0
    assert "snr_cap" not in plain.config["training"]["objective"]
    # the same draws: the first step's loss is lower with the cap (the untrained network's
    # v̂ is 0, so the cap only scales the samples at SNR > 5 down)
    assert capped.history_dict["loss"][0] < plain.history_dict["loss"][0]


def test_lambda_shift_trains_at_shifted_log_snr():
    """The network sees λ(t) + shift, clamped to the schedule's range, and z_t and the
    v-target are those of the shifted λ: with the same draws, the loss equals the unshifted
    loss at the times whose λ is the shifted one."""
    schedule, shift = CosineSchedule(), -2.0 * np.log(2.0)
    x = torch.randn(4, 1, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.0005, 0.2, 0.6, 1.0])
    seen = []

    def net(z, lam_b):
        seen.append(lam_b.clone())
        return 0.3 * z

    shifted = v_loss(
        net, x, schedule, generator=torch.Generator().manual_seed(1), t=t, lambda_shift=shift
    )
    want_lam = (schedule.lam(t) + shift).clamp(schedule.lambda_min, schedule.lambda_max)
    torch.testing.assert_close(seen[0], want_lam)
    assert seen[0][-1] == schedule.lambda_min  # clamped at the noisy end
    # times whose unshifted λ is the shifted one give the same loss with the same ε
    same = v_loss(
        net, x, schedule, generator=torch.Generator().manual_seed(1), t=schedule.t(want_lam)
    )
    torch.testing.assert_close(shifted, same, rtol=1e-4, atol=1e-6)
    # drawn times (stratified too) are shifted the same way
    seen.clear()
    for s in (0.0, shift):
        g = torch.Generator().manual_seed(2)
        v_loss(net, x, schedule, generator=g, lambda_shift=s, stratified=True)
    torch.testing.assert_close(seen[1], seen[0] + shift)


def test_lambda_shift_is_checked_and_recorded(series):
    assert "lambda_shift" not in Objective().to_dict()  # files from before keep their form
    assert Objective(lambda_shift=-1.5).to_dict()["lambda_shift"] == -1.5
    with pytest.raises(ValueError, match="lambda_shift"):
        Objective(lambda_shift=float("nan"))
    with pytest.raises(ValueError, match="lambda_shift"):
        Objective(lambda_shift=-100.0)
    with pytest.raises(ValueError, match="lambda_shift reweights the v-loss"):
        Objective("elbo", lambda_shift=-1.0)
    kw = dict(frames=4, batch_size=4, steps=4, progress=False, device="cpu", net=TINY_NET)
    data = series.isel(time=slice(0, 40))
    shifted = data.diffusion.fit(lambda_shift=-3.0, **kw)
    plain = data.diffusion.fit(**kw)
    assert shifted.config["training"]["objective"]["lambda_shift"] == -3.0
    assert "lambda_shift" not in plain.config["training"]["objective"]
    # the same t and ε at more noise: a different first loss
    assert shifted.history_dict["loss"][0] != plain.history_dict["loss"][0]


def test_multiscale_mse_closed_forms():
    """Each scale's MSE counts once: a constant error counts fully at every scale, white
    noise by 1/k² after k × k pooling (and ≈ 0 in the window mean); a mask that keeps
    everything changes nothing, and masked elements are left out of every pooled cell."""
    const = torch.full((1, 1, 2, 32, 32), 0.5)
    torch.testing.assert_close(multiscale_mse(const), torch.tensor([0.25]))
    noise = torch.randn(4, 1, 8, 32, 32, generator=torch.Generator().manual_seed(0))
    # scales: 1, 2, 4, 8 (down to 4 × 4 cells) and the window mean
    want = (1 + 1 / 4 + 1 / 16 + 1 / 64 + 0) / 5
    torch.testing.assert_close(multiscale_mse(noise), torch.full((4,), want), rtol=0.03, atol=0)
    ones = torch.ones_like(noise)
    torch.testing.assert_close(multiscale_mse(noise, ones), multiscale_mse(noise))
    # an error only where the mask is False does not count at any scale
    hidden = torch.zeros_like(const)
    hidden[..., :16, :] = 3.0
    mask = torch.ones_like(const)
    mask[..., :16, :] = 0.0
    torch.testing.assert_close(multiscale_mse(hidden, mask), torch.tensor([0.0]))


def test_multiscale_is_checked_and_recorded(series):
    assert "multiscale" not in Objective().to_dict()  # files from before keep their form
    assert Objective(multiscale=True).to_dict()["multiscale"] is True
    with pytest.raises(TypeError, match="multiscale"):
        Objective(multiscale="yes")
    with pytest.raises(ValueError, match="multiscale reweights the v-loss"):
        Objective("elbo", multiscale=True)
    schedule = CosineSchedule()
    x = torch.randn(3, 1, 2, 8, 8, generator=torch.Generator().manual_seed(0))

    def net(z, lam_b):
        return 0.3 * z

    kw = dict(generator=torch.Generator().manual_seed(1), t=torch.tensor([0.1, 0.5, 0.9]))
    plain = v_loss(net, x, schedule, **kw)
    kw["generator"] = torch.Generator().manual_seed(1)
    multi = v_loss(net, x, schedule, multiscale=True, **kw)
    assert (multi < plain).all()  # the pooled terms of a mostly fine-scale error are smaller
    fit_kw = dict(frames=4, batch_size=4, steps=4, progress=False, device="cpu", net=TINY_NET)
    model = series.isel(time=slice(0, 40)).diffusion.fit(multiscale=True, **fit_kw)
    assert model.config["training"]["objective"]["multiscale"] is True
