"""Likelihood bounds: closed forms for Gaussian data, change of variables, trained models."""

import copy
import math

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import make_series

from xdiffusion.codec import Codec, VariableCodec
from xdiffusion.core.likelihood import vlb_terms
from xdiffusion.core.schedule import CosineSchedule, _expand, alpha_sigma
from xdiffusion.model import Denoiser, DiffusionModel


def _with_codec(model: DiffusionModel, codec: VariableCodec) -> DiffusionModel:
    """The same network behind another codec (a model of transformed data)."""
    module = Denoiser(model.module.net, Codec([codec]))
    return DiffusionModel(model.config, module, valid=model.valid)


def log_abs_det(model: DiffusionModel, x: torch.Tensor) -> torch.Tensor:
    return model.codec.log_abs_det(x)


LN2 = math.log(2.0)
NET = {"width": 8, "mults": [1, 2], "heads": 2, "head_dim": None}


def gaussian_vnet(s: float):
    """The optimal v-predictor for x ~ N(0, s² I): v̂ = α σ (1 − s²) z / (α² s² + σ²)."""

    def net(z, lam):
        a, sg = alpha_sigma(_expand(lam, z))
        return a * sg * (1.0 - s**2) * z / (a**2 * s**2 + sg**2)

    return net


def gaussian_bound(x, s, lambda_rec):
    """Exact per-sample bound for the optimal denoiser of N(0, s²) (integrated by hand).

    With u = 1 + e^λ s², the integrand ½ e^λ E‖x − x̂‖² integrates to
    ½ [log u + 1/u − x²/(s² u)], so that, with L_rec = ½ (log 2π − λ_rec + 1),
    bound = Σᵢ ½ log(2π (s² + e^{−λ_rec})) + xᵢ²/(2s²) + (1 − xᵢ²/s²) / (2 (1 + e^{λ_rec} s²)).
    """
    u = 1.0 + math.exp(lambda_rec) * s**2
    per = (
        0.5 * math.log(2 * math.pi * (s**2 + math.exp(-lambda_rec)))
        + x**2 / (2 * s**2)
        + (1 - x**2 / s**2) / (2 * u)
    )
    return per.sum(1)


def true_nll(x, s):
    return (0.5 * math.log(2 * math.pi * s**2) + x**2 / (2 * s**2)).sum(1)


@pytest.mark.parametrize("s_net", [0.3, 0.6, 0.15])
@pytest.mark.parametrize("lambda_rec", [30.0, 10.0, 2.0])
def test_gaussian_bound_matches_closed_form(s_net, lambda_rec):
    s, sched = 0.3, CosineSchedule()
    g = torch.Generator().manual_seed(0)
    x = s * torch.randn(32, 256, generator=g, dtype=torch.float64)
    t = vlb_terms(gaussian_vnet(s_net), x, sched, n_lambda=32, lambda_rec=lambda_rec, generator=g)
    assert torch.all(t["dims"] == 256)
    assert float(t["prior"].max()) < 1e-9  # ½ α² (x² − 1) + O(α⁴) at λmin = −30
    d = (t["total"] - gaussian_bound(x, s_net, lambda_rec)) / 256
    se = float(d.std()) / math.sqrt(len(d))
    # the control variates keep the Monte-Carlo error small (smallest for a good denoiser)
    assert se < (0.01 if s_net == s else 0.05)
    assert abs(float(d.mean())) < 4 * se + 1e-4
    if s_net == s and lambda_rec >= 10:
        # the optimal denoiser's bound is the true NLL of each sample: tight
        tight = (t["total"] - true_nll(x, s)) / 256
        assert abs(float(tight.mean())) < 4 * se + 1e-3


def test_wrong_denoiser_is_above_true_nll():
    s, sched = 0.3, CosineSchedule()
    g = torch.Generator().manual_seed(1)
    x = s * torch.randn(32, 256, generator=g, dtype=torch.float64)
    for s_net in (0.6, 0.15):
        t = vlb_terms(gaussian_vnet(s_net), x, sched, n_lambda=32, generator=g)
        gap = float((t["total"] - true_nll(x, s)).mean()) / 256
        kl = 0.5 * (s**2 / s_net**2 - 1 - math.log(s**2 / s_net**2))  # KL(N(0,s²)‖N(0,s'²))
        assert gap > 0.5 * kl > 0.1
        assert gap == pytest.approx(kl, abs=0.05)


def test_vlb_mask_and_bad_arguments():
    s, sched = 0.3, CosineSchedule()
    g = torch.Generator().manual_seed(2)
    x = s * torch.randn(4, 64, dtype=torch.float64, generator=g)
    mask = torch.zeros(4, 64, dtype=torch.bool)
    mask[:, :40] = True
    x_bad = torch.where(mask, x, torch.full_like(x, 1e6))  # excluded: ignored entirely
    t = vlb_terms(
        gaussian_vnet(s), x_bad, sched, n_lambda=64, lambda_rec=10.0, mask=mask, generator=g
    )
    assert torch.all(t["dims"] == 40)
    per = float(((t["total"] - true_nll(x[:, :40], s)) / 40).mean())
    assert abs(per) < 0.1
    with pytest.raises(ValueError, match="lambda_rec"):
        vlb_terms(gaussian_vnet(s), x, sched, lambda_rec=31.0)
    with pytest.raises(ValueError, match="n_lambda"):
        vlb_terms(gaussian_vnet(s), x, sched, n_lambda=0)


# ------------------------------------------------------------------ trained models

SIGMA = 0.3
TRUE_BITS = 0.5 * math.log(2 * math.pi * math.e * SIGMA**2) / LN2  # 0.310 bit


def gaussian_series(nt=200, seed=0):
    v = np.random.default_rng(seed).normal(0.0, SIGMA, (nt, 8, 8)).astype("float32")
    return xr.DataArray(
        v, dims=("time", "y", "x"), coords={"time": np.arange(nt)}, name="g", attrs={"units": "1"}
    )


@pytest.fixture(scope="module")
def series():
    return make_series()


@pytest.fixture(scope="module")
def tiny_model(series):
    return series.diffusion.fit(
        frames=4, steps=6, batch_size=2, progress=False, device="cpu", net=NET
    )


@pytest.fixture(scope="module")
def gauss_model():
    # ~5–30 s on two busy cores: an iid Gaussian only needs a λ-dependent shrinkage
    return gaussian_series().diffusion.fit(
        frames=4,
        steps=100,
        batch_size=8,
        lr=5e-3,
        warmup=20,
        transform="none",
        val_fraction=0.0,
        progress=False,
        device="cpu",
        net=NET,
    )


def test_trained_gaussian_model_is_close_to_the_entropy(gauss_model):
    held_out = gaussian_series(seed=1)
    # λ_rec = 10: the tiny network has hardly seen λ > 10 in training (p_Λ tails), and the
    # Gaussian decoder is exact enough there (e^{-10} ≪ the scaled variance ≈ 0.07)
    r = gauss_model.nll(held_out, lambda_rec=10.0)
    bits, se = float(r.bits_per_dim), float(r.standard_error)
    assert r.attrs["n_windows"] == 50 and r.sizes["window"] == 50
    assert bits > TRUE_BITS - 4 * se - 0.01
    assert bits < TRUE_BITS + 0.3
    # pure affine scaling: −log|h'| = −log(2 / (hi − lo)), the same for every element
    pipe = gauss_model.codec[0]
    expect = -math.log(2.0 / float(pipe.hi - pipe.lo)) / LN2
    assert float(r.log_det) == pytest.approx(expect, rel=1e-6)
    total = float(r.bits_per_dim_diffusion + r.log_det + r.dequantization)
    assert bits == pytest.approx(total, abs=1e-9)


def test_affine_change_of_data_shifts_nll_by_log_a(gauss_model):
    a, b = 2.5, 1.0
    data = gaussian_series(nt=40, seed=2)
    pipe = gauss_model.codec[0]
    moved = _with_codec(gauss_model, VariableCodec("none", a * pipe.lo + b, a * pipe.hi + b))
    kw = dict(n_lambda=8, seed=3, lambda_rec=10.0)
    r0 = gauss_model.nll(data, **kw)
    r1 = moved.nll(data * a + b, **kw)
    # p_Y(a x + b) = p_X(x) / a: every element pays log a more (change of variables, 4.2)
    assert float(r1.bits_per_dim - r0.bits_per_dim) == pytest.approx(math.log2(a), abs=1e-4)
    assert float(r1.bits_per_dim_diffusion) == pytest.approx(
        float(r0.bits_per_dim_diffusion), abs=1e-4
    )


def test_dry_class_is_scale_invariant(tiny_model, series):
    """Scaling sqrt-transformed rain by a: wet elements pay log a, the dry class nothing."""
    a, thr = 4.0, 0.05
    pipe = tiny_model.codec[0]
    moved = _with_codec(
        tiny_model, VariableCodec("sqrt", pipe.lo * math.sqrt(a), pipe.hi * math.sqrt(a))
    )
    kw = dict(n_lambda=4, seed=0)
    r0 = tiny_model.nll(series, dry_threshold=thr, **kw)
    r1 = moved.nll(series * a, dry_threshold=a * thr, **kw)
    n_windows = r0.attrs["n_windows"]
    used = series.isel(time=slice(0, n_windows * tiny_model.frames))
    wet = float((used >= thr).mean())
    assert 0.05 < wet < 0.95
    assert float(r1.bits_per_dim - r0.bits_per_dim) == pytest.approx(wet * math.log2(a), abs=2e-3)
    assert float(r0.dequantization) == pytest.approx((1 - wet) * -math.log2(thr), rel=1e-6)
    # without the dry class, exact zeros make the sqrt log-derivative explode (eps floor)
    r2 = tiny_model.nll(series, dry_threshold=None, **kw)
    assert float(r2.log_det) < float(r0.log_det) - 1.0


def test_nll_defaults_to_the_models_dry_threshold(tiny_model, series):
    """The threshold the model was fitted with applies unless the caller says otherwise."""
    kw = dict(n_lambda=4, seed=0)
    fitted = tiny_model.dry_thresholds[0]
    assert fitted == 0.01
    r_default = tiny_model.nll(series, **kw)
    r_explicit = tiny_model.nll(series, dry_threshold=fitted, **kw)
    r_none = tiny_model.nll(series, dry_threshold=None, **kw)
    assert float(r_default.bits_per_dim) == float(r_explicit.bits_per_dim)
    assert float(r_default.dequantization) > 0
    assert float(r_none.dequantization) == 0
    assert r_default.attrs["dry_threshold"] == "0.01"
    with pytest.raises(ValueError, match="'model'"):
        tiny_model.nll(series, dry_threshold="fitted", **kw)


def test_models_dry_threshold_only_where_it_took_part(gauss_model):
    """A Gaussian variable with transform 'none' gets no dry class by default."""
    assert gauss_model.codec[0].lower is None and not gauss_model.codec[0].has_learned
    r = gauss_model.nll(gaussian_series(nt=40, seed=2), n_lambda=2)
    assert float(r.dequantization) == 0.0 and r.attrs["dry_threshold"] == "none"


def test_learned_transform_log_det_matches_autograd(series):
    model = series.diffusion.fit(
        frames=4, steps=2, batch_size=2, transform="learned", progress=False, device="cpu", net=NET
    )
    h = model.codec[0].learned
    with torch.no_grad():  # move h_ω well away from the identity
        h.b1.add_(torch.linspace(-1.0, 1.0, h.hidden))
        h.w1_raw.add_(1.5)
    x = torch.from_numpy(series.values[None, None, :4].copy()).requires_grad_(True)
    (grad,) = torch.autograd.grad(model.codec.encode(x).sum(), x)  # elementwise: the diagonal
    ld = log_abs_det(model, x.detach())
    wet = x.detach() > 1e-3  # sqrt-free chain, but keep away from the dry pin at −1
    torch.testing.assert_close(ld[wet], grad.log()[wet], rtol=1e-4, atol=1e-4)
    learned_part = h.log_derivative(model.codec[0].to_scaled(x.detach()))
    assert float(learned_part.abs().max()) > 0.1  # the learned h_ω really enters
    r = model.nll(series, n_lambda=2, terms=True, dry_threshold=None)
    n = r.attrs["n_windows"] * 4
    xs = torch.from_numpy(series.values[None, None, :n].copy())
    assert float(r.log_det) == pytest.approx(-float(log_abs_det(model, xs).mean()) / LN2, rel=1e-5)


def test_dataset_missing_values_and_attrs(tiny_model, series):
    kw = dict(n_lambda=2, seed=1)
    r = tiny_model.nll(series, **kw)
    r_ds = tiny_model.nll(series.to_dataset(), **kw)
    assert float(r.bits_per_dim) == float(r_ds.bits_per_dim)
    for name in (
        "bits_per_dim",
        "bits_per_dim_diffusion",
        "prior",
        "diffusion",
        "reconstruction",
        "log_det",
        "standard_error",
        "bits_per_dim_window",
    ):
        assert r[name].attrs["units"] == "bit" and r[name].attrs["long_name"]
    assert r.attrs["frames"] == 4 and r.attrs["n_lambda"] == 2
    assert r.sizes["window"] == 30 and "window_start" in r.coords
    np.testing.assert_array_equal(r.window_start.values, series.time.values[::4])
    assert tiny_model.nll(series, terms=False, **kw) == pytest.approx(float(r.bits_per_dim))
    # a NaN drops its window only
    gappy = series.copy()
    gappy[5, 3, 3] = np.nan
    r_gap = tiny_model.nll(gappy, **kw)
    assert r_gap.sizes["window"] == 29 and r_gap.attrs["n_skipped_windows"] == 1
    # cells under the model's static mask do not count, whatever their value
    masked = copy.copy(tiny_model)
    masked.valid = tiny_model.valid.clone()
    masked.valid[0, :4] = False
    holes = series.where(series.y >= series.y[4])
    r_mask = masked.nll(holes, **kw)
    assert r_mask.sizes["window"] == 30
    assert r_mask.attrs["elements_per_window"] == 4 * 12 * 16


def test_time_conditioned_model_gets_each_windows_features(series):
    model = series.diffusion.fit(
        frames=4,
        steps=2,
        batch_size=2,
        progress=False,
        device="cpu",
        net=NET,
        time_features=["hour"],
    )
    kw = dict(n_lambda=2, seed=0, lambda_rec=10.0)
    r = model.nll(series, **kw)
    assert np.isfinite(float(r.bits_per_dim)) and r.sizes["window"] == 30
    shifted = series.assign_coords(time=series.time + np.timedelta64(6, "h"))
    assert float(model.nll(shifted, **kw).bits_per_dim) != float(r.bits_per_dim)
    with pytest.raises(ValueError, match="time coordinate"):
        model.nll(series.drop_vars("time"), **kw)


def test_nll_bad_inputs(tiny_model, series):
    with pytest.raises(ValueError, match="n_lambda"):
        tiny_model.nll(series, n_lambda=0)
    with pytest.raises(ValueError, match="lambda_rec"):
        tiny_model.nll(series, lambda_rec=50.0)
    with pytest.raises(ValueError, match="dry_threshold"):
        tiny_model.nll(series, dry_threshold=0.0)
    with pytest.raises(ValueError, match="not model variables"):
        tiny_model.nll(series, dry_threshold={"tas": 0.1})
    with pytest.raises(ValueError, match="fewer than the model's frames"):
        tiny_model.nll(series.isel(time=slice(0, 2)))
    with pytest.raises(ValueError, match="below the lower bound"):
        tiny_model.nll(series - 1.0)
    with pytest.raises(ValueError, match="no complete window"):
        tiny_model.nll(series.where(series.time > series.time[-1]))
    with pytest.raises(ValueError, match="grid"):  # a sub-region, but no coordinate on it
        tiny_model.nll(series.isel(x=slice(0, 8)).drop_vars("x"))
