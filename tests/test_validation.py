"""Shared argument checks: numpy scalars accepted as Python numbers, bool refused, one style.

First the helpers of :mod:`xdiffusion.validation` themselves, then the entry points that were
moved onto them (samplers, likelihood, conditioning, U-Net config, transforms, training
config, datasets, streaming loaders, histogram bins).
"""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import xarray as xr

from xdiffusion.core.conditioning import block_mean, data_consistency, guidance
from xdiffusion.core.likelihood import vlb_terms
from xdiffusion.core.samplers import lambda_steps, sample_ddim
from xdiffusion.core.schedule import CosineSchedule
from xdiffusion.datasets import gaussian_blobs, synthetic_precipitation
from xdiffusion.diagnostics.distributions import histogram
from xdiffusion.io.streaming import ChunkedWindows, RandomWindows, check_loader
from xdiffusion.nets.unet import UNetConfig, unet_config
from xdiffusion.training import TrainConfig
from xdiffusion.transforms import LearnedMonotone, Log1p
from xdiffusion.validation import (
    check_bool,
    check_choice,
    check_int,
    check_number,
    check_positive_int,
    check_seed,
    is_int,
    is_number,
)

NUMPY_INTS = [np.int8(3), np.int32(3), np.int64(3), np.uint16(3)]
NUMPY_FLOATS = [np.float16(0.5), np.float32(0.5), np.float64(0.5)]


# ------------------------------------------------------------------ predicates
@pytest.mark.parametrize("value", [0, 3, -7, *NUMPY_INTS])
def test_is_int_accepts_python_and_numpy_integers(value):
    assert is_int(value)
    assert is_number(value)


@pytest.mark.parametrize(
    "value", [True, False, np.bool_(True), 2.0, np.float32(2.0), "2", None, [2], torch.tensor(2)]
)
def test_is_int_refuses_bools_floats_and_others(value):
    assert not is_int(value)


@pytest.mark.parametrize("value", [0.5, float("inf"), *NUMPY_FLOATS, *NUMPY_INTS])
def test_is_number_accepts_reals(value):
    assert is_number(value)


@pytest.mark.parametrize("value", [True, np.bool_(False), "0.5", None, 1j, [0.5]])
def test_is_number_refuses_bools_and_non_reals(value):
    assert not is_number(value)


# ------------------------------------------------------------------ check_int & co.
@pytest.mark.parametrize("value", NUMPY_INTS)
def test_check_int_returns_a_python_int(value):
    out = check_int(value, "n", minimum=1)
    assert out == 3 and type(out) is int
    assert type(check_positive_int(value, "n")) is int
    assert type(check_seed(value)) is int


@pytest.mark.parametrize("value", [True, False, np.bool_(True), 2.5, np.float64(2.0), "2"])
def test_check_int_refuses_non_integers(value):
    with pytest.raises(ValueError, match=r"^steps must be a positive integer, got "):
        check_positive_int(value, "steps")


def test_check_int_bounds_and_messages():
    assert check_int(0, "k", minimum=0) == 0
    assert check_int(5, "k", minimum=0, maximum=5) == 5
    assert check_int(-4, "k") == -4
    with pytest.raises(ValueError, match=r"^k must be a non-negative integer, got -1$"):
        check_int(-1, "k", minimum=0)
    with pytest.raises(ValueError, match=r"^k must be an integer in \[1, 4\], got 5$"):
        check_int(5, "k", minimum=1, maximum=4)
    with pytest.raises(ValueError, match=r"^k must be an integer ≥ 2, got 1$"):
        check_int(1, "k", minimum=2)
    with pytest.raises(ValueError, match=r"^k must be an integer ≤ 3, got 4$"):
        check_int(4, "k", maximum=3)
    with pytest.raises(ValueError, match=r"^k must be an integer, got 'x'$"):
        check_int("x", "k")
    with pytest.raises(ValueError, match=r"^context must be an integer in \[1, frames - 1\]"):
        check_int(0, "context", minimum=1, maximum=3, what="an integer in [1, frames - 1]")


def test_check_int_none_handling():
    assert check_int(None, "k", allow_none=True) is None
    assert check_positive_int(None, "batch_size", allow_none=True) is None
    with pytest.raises(ValueError, match=r"^batch_size must be a positive integer, got None$"):
        check_positive_int(None, "batch_size")
    with pytest.raises(ValueError, match=r"positive integer or None, got 0$"):
        check_positive_int(0, "batch_size", allow_none=True)


def test_check_seed():
    assert check_seed(0) == 0
    assert check_seed(np.uint32(7), "member_seed") == 7
    with pytest.raises(ValueError, match=r"^seed must be a non-negative integer, got -1$"):
        check_seed(-1)
    with pytest.raises(ValueError, match=r"^rng must be a non-negative integer"):
        check_seed(True, "rng")


# ------------------------------------------------------------------ check_number
@pytest.mark.parametrize("value", NUMPY_FLOATS)
def test_check_number_returns_a_python_float(value):
    out = check_number(value, "lr", minimum=0.0, exclusive_minimum=True)
    assert out == 0.5 and type(out) is float
    assert type(check_number(np.int64(2), "lr")) is float


def test_check_number_bounds_and_messages():
    assert check_number(0, "w", minimum=0.0) == 0.0
    assert check_number(1.0, "eta", minimum=0.0, maximum=1.0) == 1.0
    with pytest.raises(ValueError, match=r"^lr must be a positive number, got 0\.0$"):
        check_number(0.0, "lr", minimum=0.0, exclusive_minimum=True)
    with pytest.raises(ValueError, match=r"^weight must be a non-negative number, got -1$"):
        check_number(-1, "weight", minimum=0.0)
    with pytest.raises(ValueError, match=r"^eta must be a finite number ≥ 0 and ≤ 1, got 1\.5$"):
        check_number(1.5, "eta", minimum=0.0, maximum=1.0)
    with pytest.raises(ValueError, match=r"^x must be a finite number ≤ 2, got 3$"):
        check_number(3, "x", maximum=2.0)


@pytest.mark.parametrize("value", [True, np.bool_(True), "1.0", None, float("nan"), np.nan])
def test_check_number_refuses_bools_strings_and_nan(value):
    with pytest.raises(ValueError, match=r"^scale must be a finite number, got "):
        check_number(value, "scale")


def test_check_number_infinity_and_none():
    with pytest.raises(ValueError, match="lambda_rec"):
        check_number(float("inf"), "lambda_rec")
    assert check_number(float("inf"), "x", allow_inf=True) == math.inf
    assert check_number(-np.inf, "x", allow_inf=True) == -math.inf
    with pytest.raises(ValueError, match="x must be a number"):
        check_number(float("nan"), "x", allow_inf=True)
    assert check_number(None, "grad_clip", allow_none=True) is None
    with pytest.raises(ValueError, match=r"or None, got -1\.0$"):
        check_number(-1.0, "grad_clip", minimum=0.0, allow_none=True)


# ------------------------------------------------------------------ check_bool, check_choice
def test_check_bool():
    assert check_bool(True, "progress") is True
    out = check_bool(np.bool_(False), "progress")
    assert out is False and type(out) is bool
    for bad in (1, 0, "yes", None, np.int64(1)):
        with pytest.raises(TypeError, match=r"^progress must be True or False, got "):
            check_bool(bad, "progress")


def test_check_choice():
    assert check_choice("imputation", "method", ("guidance", "imputation")) == "imputation"
    with pytest.raises(ValueError, match=r"^method must be 'guidance' or 'imputation', got 'x'$"):
        check_choice("x", "method", ("guidance", "imputation"))
    with pytest.raises(ValueError, match=r"^loader must be one of 'auto', 'chunked', 'random'"):
        check_choice(3, "loader", ("auto", "random", "chunked"))


# ------------------------------------------------------------------ core: samplers
def test_lambda_steps_accepts_numpy_integers():
    sched = CosineSchedule()
    for spacing in ("t", "lambda", "lambda_trunc"):
        ref = lambda_steps(sched, 5, spacing)
        assert torch.equal(lambda_steps(sched, np.int64(5), spacing), ref)
        assert torch.equal(lambda_steps(sched, np.int32(5), spacing), ref)
        assert lambda_steps(sched, np.int64(5), spacing).shape == (6,)
    for bad in (True, 0, 2.0, np.float64(5.0)):
        with pytest.raises(ValueError, match="steps must be a positive integer"):
            lambda_steps(sched, bad)


def test_sampler_eta_accepts_numpy_floats():
    sched = CosineSchedule()
    lams = lambda_steps(sched, 4, "lambda_trunc")
    z = torch.randn(2, 1, 2, 4, 4, generator=torch.Generator().manual_seed(0))

    def denoise(z, lam):
        return 0.5 * torch.tanh(z)

    def noise():
        return torch.zeros_like(z)

    ref = sample_ddim(denoise, z, lams, eta=0.5, noise=noise)
    assert torch.equal(sample_ddim(denoise, z, lams, eta=np.float32(0.5), noise=noise), ref)
    for bad in (True, 1.5, -0.1, "0.5"):
        with pytest.raises(ValueError, match="eta"):
            sample_ddim(denoise, z, lams, eta=bad, noise=noise)


# ------------------------------------------------------------------ core: likelihood
def test_vlb_terms_accepts_numpy_arguments():
    sched = CosineSchedule()
    x = torch.zeros(2, 8)

    def net(z, lam):
        return torch.zeros_like(z)

    def run(**kw):
        return vlb_terms(net, x, sched, generator=torch.Generator().manual_seed(0), **kw)

    ref = run(n_lambda=4, lambda_rec=10.0)
    got = run(n_lambda=np.int64(4), lambda_rec=np.float32(10.0))
    assert torch.equal(got["total"], ref["total"])
    for bad in (True, 0, 4.0):
        with pytest.raises(ValueError, match="n_lambda must be a positive integer"):
            run(n_lambda=bad)
    for bad in (True, "10", float("nan")):
        with pytest.raises(ValueError, match="lambda_rec"):
            run(lambda_rec=bad)


# ------------------------------------------------------------------ core: conditioning
def test_conditioning_factor_and_weight_accept_numpy_scalars():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(2, 1, 1, 4, 4)
    ref = block_mean(x, 2)
    got = block_mean(x, np.int64(2))
    assert torch.equal(got, ref) and got.shape == (2, 1, 1, 2, 2)
    assert torch.equal(data_consistency(x, ref, np.int32(2)), data_consistency(x, ref, 2))
    for bad in (True, 0, 2.0):
        with pytest.raises(ValueError, match="factor must be a positive integer"):
            block_mean(x, bad)

    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[..., 0, 0] = True

    def den(z, lam):
        return 0.1 * z

    guidance(den, x, mask, weight=np.float32(2.0))
    guidance(den, x, mask, weight=np.int64(0))
    for bad in (True, -1.0, float("nan"), "1"):
        with pytest.raises(ValueError, match="weight must be a non-negative number"):
            guidance(den, x, mask, weight=bad)


# ------------------------------------------------------------------ nets: U-Net config
def test_unet_config_accepts_numpy_scalars_and_stays_serialisable():
    cfg = UNetConfig(
        channels=np.int64(2),
        width=np.int64(16),
        mults=(np.int64(1), np.int32(2)),
        spatial_attention=("none", "full"),
        temporal_attention=[np.bool_(True), False],
        mid_temporal_attention=np.bool_(False),
        heads=np.int64(4),
        groups=np.int64(4),
        cond_features=np.int64(0),
        out_channels=np.int64(1),
        lam_scale=np.float32(30.0),
        dropout=np.float32(0.25),
    )
    d = cfg.to_dict()
    assert d["channels"] == 2 and type(d["channels"]) is int
    assert d["mults"] == [1, 2] and all(type(m) is int for m in d["mults"])
    assert d["temporal_attention"] == [True, False]
    assert all(type(t) is bool for t in d["temporal_attention"])
    assert type(d["mid_temporal_attention"]) is bool
    assert type(d["lam_scale"]) is float and type(d["dropout"]) is float
    assert type(d["out_channels"]) is int and type(d["cond_features"]) is int
    assert UNetConfig.from_dict(json.loads(json.dumps(d))) == cfg
    assert cfg.level_channels == (16, 32)


def test_unet_config_preset_with_numpy_overrides():
    cfg = unet_config("small", channels=np.int64(3), width=np.int64(16), blocks=np.int32(2))
    ref = unet_config("small", channels=3, width=16, blocks=2)
    assert cfg == ref
    assert json.dumps(cfg.to_dict()) == json.dumps(ref.to_dict())


@pytest.mark.parametrize(
    ("override", "word"),
    [
        ({"channels": True}, "UNetConfig.channels must be a positive integer"),
        ({"width": np.float64(16.0)}, "UNetConfig.width must be a positive integer"),
        ({"cond_features": -1}, "UNetConfig.cond_features must be a non-negative integer"),
        ({"mults": (1, True)}, "UNetConfig.mults"),
        ({"temporal_attention": (1, 1)}, "UNetConfig.temporal_attention"),
        ({"mid_temporal_attention": 1}, "UNetConfig.mid_temporal_attention"),
        ({"lam_scale": True}, "UNetConfig.lam_scale must be a positive number"),
        ({"dropout": True}, r"UNetConfig.dropout must be in \[0, 1\)"),
        ({"dropout": 1.0}, r"UNetConfig.dropout must be in \[0, 1\)"),
    ],
)
def test_unet_config_refuses_bools_and_bad_numbers(override, word):
    base = dict(width=8, mults=(1, 2), spatial_attention=("none", "full"))
    base["temporal_attention"] = (True, True)
    with pytest.raises(ValueError, match=word):
        UNetConfig(**{**base, **override})


# ------------------------------------------------------------------ transforms
def test_learned_monotone_accepts_numpy_scalars():
    h = LearnedMonotone(hidden=np.int64(4), min_grad=np.float32(0.2))
    assert h.hidden == 4 and type(h.hidden) is int
    assert type(h.min_grad) is float and h.min_grad == pytest.approx(0.2)
    ref = LearnedMonotone(hidden=4, min_grad=0.2)
    x = torch.linspace(-1, 1, 7)
    assert torch.allclose(h(x), ref(x))
    with pytest.raises(ValueError, match="hidden must be a positive integer"):
        LearnedMonotone(hidden=True)
    with pytest.raises(ValueError, match="min_grad must be a positive number"):
        LearnedMonotone(min_grad=True)
    with pytest.raises(ValueError, match="min_grad"):
        LearnedMonotone(min_grad=float("inf"))


def test_log1p_scale_accepts_numpy_floats():
    t = Log1p(scale=np.float32(0.5))
    assert type(t.scale) is float and t.scale == 0.5
    json.dumps(t.to_config())
    for bad in (True, 0.0, "1.0", float("nan")):
        with pytest.raises(ValueError, match="log1p scale"):
            Log1p(scale=bad)


# ------------------------------------------------------------------ training config
def test_train_config_accepts_numpy_scalars():
    cfg = TrainConfig(
        steps=np.int64(3),
        batch_size=np.int32(2),
        lr=np.float32(1e-3),
        warmup=np.int64(0),
        ema_decay=np.float64(0.9),
        grad_clip=np.float32(1.0),
        val_every=np.int64(0),
        seed=np.int64(5),
        transform_lr_scale=np.int64(10),
    )
    d = cfg.to_dict()
    json.dumps(d)
    assert d["steps"] == 3 and type(d["steps"]) is int
    assert type(d["batch_size"]) is int and type(d["seed"]) is int
    assert type(d["lr"]) is float and type(d["ema_decay"]) is float
    assert type(d["transform_lr_scale"]) is float and d["transform_lr_scale"] == 10.0
    assert TrainConfig(grad_clip=None).grad_clip is None
    assert dataclasses.replace(cfg, steps=4).steps == 4


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": True}, "steps must be a positive integer"),
        ({"steps": 0}, "steps must be a positive integer"),
        ({"batch_size": 2.0}, "batch_size must be a positive integer"),
        ({"lr": True}, "lr must be a positive number"),
        ({"lr": 0.0}, "lr must be a positive number"),
        ({"ema_decay": 1.0}, r"ema_decay must be in \[0, 1\)"),
        ({"ema_decay": True}, r"ema_decay must be in \[0, 1\)"),
        ({"warmup": -1}, "warmup must be a non-negative integer"),
        ({"val_every": True}, "val_every must be a non-negative integer"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"grad_clip": -1.0}, "grad_clip"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"transform_lr_scale": True}, "transform_lr_scale must be a positive number"),
    ],
)
def test_train_config_refuses_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


# ------------------------------------------------------------------ datasets
def test_datasets_accept_numpy_scalars():
    a = synthetic_precipitation(nt=np.int64(4), ny=np.int32(8), nx=8, seed=np.int64(1))
    b = synthetic_precipitation(nt=4, ny=8, nx=8, seed=1)
    xr.testing.assert_identical(a, b)
    c = synthetic_precipitation(nt=4, ny=8, nx=8, dx_km=np.float32(8.0), seed=1)
    xr.testing.assert_identical(c, synthetic_precipitation(nt=4, ny=8, nx=8, dx_km=8.0, seed=1))
    blobs = gaussian_blobs(np.int64(6), 8, 8, n_blobs=np.int64(1), lifetime=np.int64(4))
    assert blobs.shape == (6, 8, 8)
    with pytest.raises(TypeError, match="dx_km must be a real number"):
        synthetic_precipitation(nt=4, ny=8, nx=8, dx_km=True)
    with pytest.raises(TypeError, match="nt must be an integer"):
        synthetic_precipitation(nt=np.float64(4.0), ny=8, nx=8)


# ------------------------------------------------------------------ streaming
def test_window_loaders_accept_numpy_integers():
    data = np.arange(2 * 20 * 3 * 3, dtype=np.float32).reshape(2, 20, 3, 3)
    starts = np.arange(16)
    rw = RandomWindows(data, np.int64(4), starts, batch_size=np.int64(3), seed=np.int64(2))
    ref = RandomWindows(data, 4, starts, batch_size=3, seed=2)
    assert (rw.frames, rw.batch_size, rw.seed) == (4, 3, 2)
    assert all(type(v) is int for v in (rw.frames, rw.batch_size, rw.seed))
    np.testing.assert_array_equal(rw.batch(0)[1], ref.batch(0)[1])

    kw = dict(batch_size=np.int64(3), seed=np.int64(2), prefetch=False)
    cw = ChunkedWindows(data, np.int64(4), starts, buffer_chunks=np.int64(1), **kw)
    s, w = cw.batch(np.int64(1))
    s2, w2 = cw.batch(1)
    np.testing.assert_array_equal(s, s2)
    np.testing.assert_array_equal(w, w2)
    assert w.shape == (3, 2, 4, 3, 3)
    for bad in (True, -1, 1.0):
        with pytest.raises(ValueError, match="step must be a non-negative integer"):
            cw.batch(bad)
    check_loader("auto", np.int64(2))
    with pytest.raises(ValueError, match="buffer_chunks must be a positive integer"):
        check_loader("auto", True)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        RandomWindows(data, 4, starts, batch_size=3, seed=True)


# ------------------------------------------------------------------ diagnostics
def test_histogram_bins_accept_numpy_integers_and_refuse_bools():
    da = xr.DataArray(np.linspace(0.0, 1.0, 101), dims="x")
    ref = histogram(da, bins=5, log=False)
    got = histogram(da, bins=np.int64(5), log=False)
    assert got.sizes["bin"] == 5
    xr.testing.assert_identical(got, ref)
    with pytest.raises(ValueError, match="bins="):
        histogram(da, bins=True)
