"""The codec: one VariableCodec per variable (fixed transform, scaling, optional h_ω)."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from xdiffusion.codec import Codec, VariableCodec
from xdiffusion.core.schedule import CosineSchedule
from xdiffusion.training import DiffusionBatch, diffusion_objective
from xdiffusion.transforms import LearnedMonotone


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _randomise(module: torch.nn.Module, scale: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=gen))


def _bent() -> LearnedMonotone:
    h = LearnedMonotone()
    _randomise(h, 2.0, 11)
    return h


def _codecs() -> dict[str, VariableCodec]:
    return {
        "none": VariableCodec.fit(0.0, 50.0, "none"),
        "sqrt": VariableCodec.fit(0.0, 50.0, "sqrt"),
        "log1p": VariableCodec.fit(0.0, 50.0, {"name": "log1p", "scale": 0.1}),
        "sqrt-learned": VariableCodec.fit(0.0, 50.0, "sqrt", learned=_bent()),
        "learned": VariableCodec.fit(0.5, 3.0, "learned"),
        "none-learned-neg": VariableCodec.fit(-30.0, 40.0, "none", learned=_bent()),
    }


def _data(codec: VariableCodec, dtype=torch.float64, channels: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    lo = codec.from_scaled(torch.tensor(-1.0, dtype=dtype))
    hi = codec.from_scaled(torch.tensor(1.0, dtype=dtype))
    u = torch.rand(4, channels, 6, 7, generator=gen, dtype=dtype)
    return lo + u * (hi - lo)


def _autograd_derivative(fn, x: torch.Tensor) -> torch.Tensor:
    xr = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(xr).sum(), xr)
    return g


@pytest.mark.parametrize("key", list(_codecs()))
def test_round_trip(key):
    codec = _codecs()[key]
    if codec.learned is not None:
        codec.learned.double()
    x = _data(codec)
    y = codec.encode(x)
    assert y.shape == x.shape
    assert y.min() >= -1 - 1e-12 and y.max() <= 1 + 1e-12
    torch.testing.assert_close(codec.from_scaled(codec.to_scaled(x)), x, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(codec.decode(y), x, rtol=1e-6, atol=1e-6)
    codec.float()
    x32 = x.float()
    back32 = codec.decode(codec.encode(x32))
    assert back32.dtype == torch.float32
    assert ((back32 - x32).abs() / (1 + x32.abs())).max().item() < 1e-3


@pytest.mark.parametrize("key", list(_codecs()))
def test_log_abs_det_matches_autograd(key):
    codec = _codecs()[key]
    if codec.learned is not None:
        codec.learned.double()
    lower = codec.lower
    x = _data(codec).clamp(min=lower + 1e-3 if lower is not None else -math.inf)
    expected = _autograd_derivative(codec.encode, x).abs().log()
    torch.testing.assert_close(codec.log_abs_det(x), expected, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("key", ["sqrt-learned", "none-learned-neg", "log1p"])
def test_differentiable_decode_matches_decode_and_its_gradient(key):
    codec = _codecs()[key]
    if codec.learned is not None:
        codec.learned.double()
    y = torch.linspace(-0.95, 0.95, 41, dtype=torch.float64)[None, None]
    torch.testing.assert_close(
        codec.decode_differentiable(y), codec.decode(y), rtol=1e-6, atol=1e-9
    )
    grad = _autograd_derivative(codec.decode_differentiable, y)
    h = 1e-5
    fd = (codec.decode(y + h) - codec.decode(y - h)) / (2 * h)
    torch.testing.assert_close(grad, fd, rtol=1e-4, atol=1e-6)


def test_sqrt_maps_zero_to_minus_one_and_decode_clips_at_lower():
    codec = VariableCodec.fit(0.0, 64.0, "sqrt")
    assert codec.encode(torch.tensor([[0.0, 16.0, 64.0]])).tolist() == [[-1.0, 0.0, 1.0]]
    for c in (codec, VariableCodec.fit(0.0, 64.0, "none", learned=True)):
        out = c.decode(torch.tensor([[-5.0, -1.0, -1.0 - 1e-7, 3.0]]))
        assert (out >= 0).all()
        assert out[0, :3].tolist() == [0.0, 0.0, 0.0]
        assert out[0, 3].item() == pytest.approx(64.0)


def test_codec_is_per_channel():
    codec = Codec([VariableCodec.fit(0.0, 1.0, "none"), VariableCodec.fit(10.0, 30.0, "none")])
    x = torch.tensor([[[0.0, 1.0]], [[10.0, 30.0]]]).permute(1, 0, 2)  # (1, 2, 2)
    torch.testing.assert_close(codec.encode(x), torch.tensor([[[-1.0, 1.0], [-1.0, 1.0]]]))
    assert codec.lower == [None, None]
    with pytest.raises(ValueError, match=r"\(B, 2, \.\.\.\)"):
        codec.encode(torch.zeros(1, 3, 4))
    with pytest.raises(TypeError, match="VariableCodec"):
        Codec([])


def test_fit_errors():
    with pytest.raises(ValueError, match="zero variance data"):
        VariableCodec.fit(2.0, 2.0, "sqrt")
    with pytest.raises(ValueError, match=r"stats_min.*lower bound"):
        VariableCodec.fit(-0.5, 5.0, "sqrt")
    with pytest.raises(ValueError, match="scalar"):
        VariableCodec("none", torch.zeros(2), torch.ones(2))
    with pytest.raises(TypeError, match="learned"):
        VariableCodec.fit(0.0, 1.0, "none", learned="yes")
    with pytest.raises(ValueError, match="finite"):
        VariableCodec.fit(0.0, float("nan"), "none")


def test_penalty_mask_thresholds():
    codec = VariableCodec.fit(0.0, 76.97, "none", learned=True)
    x = torch.tensor([[0.0, 0.005, 0.0099, 0.0101, 1.0, 76.97]])
    assert codec.penalty_mask(x).tolist() == [[False, False, False, True, True, True]]
    # the thesis' masking set M = [-0.99975, 1] in linearly scaled space (§4.3.5)
    assert codec.scaled_threshold(0.01) == pytest.approx(-0.99974, abs=1e-5)
    sq = VariableCodec.fit(0.0, 50.0, "sqrt")
    xs = torch.rand(2, 1, 8, 8, dtype=torch.float64) * 0.03
    assert torch.equal(sq.penalty_mask(xs), xs > 0.01)
    assert bool(sq.penalty_mask(xs, threshold=-math.inf).all())
    with pytest.raises(ValueError, match="threshold"):
        sq.penalty_mask(xs, threshold=math.nan)


@pytest.mark.parametrize("key", list(_codecs()))
def test_config_round_trip(key, tmp_path):
    codec = Codec([_codecs()[key]])
    cfg = json.loads(json.dumps(codec.to_config()))
    state = codec.state_dict()
    if state:
        save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "t.safetensors")
        state = load_file(tmp_path / "t.safetensors")
    again = Codec.from_config(cfg)
    again.load_state_dict(state, strict=True)
    assert again.to_config() == codec.to_config()
    x = _data(codec[0], dtype=torch.float32)
    assert torch.equal(again.encode(x), codec.encode(x))
    y = torch.rand(x.shape) * 2 - 1
    assert torch.equal(again.decode(y), codec.decode(y))
    assert torch.equal(again.log_abs_det(x), codec.log_abs_det(x))


def test_from_config_errors():
    with pytest.raises(ValueError, match="lacks"):
        VariableCodec.from_config({"transform": {"name": "none"}})
    with pytest.raises(TypeError, match="dict"):
        VariableCodec.from_config(["none"])


def test_learned_transform_is_float32_under_bf16_autocast():
    """Training runs under autocast; decoding does not. h_ω must be the same function in
    both: evaluated in float32 with autocast off (CPU bf16 autocast stands in for CUDA's)."""
    codec = VariableCodec.fit(0.0, 30.0, "sqrt", learned=_bent())
    s = torch.linspace(-1.0, 1.0, 4001)[None, None]
    codec.requires_grad_(False)
    plain = codec.encode_scaled(s)
    plain_logd = codec.log_derivative_scaled(s)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        in_autocast = codec.encode_scaled(s)
        logd_autocast = codec.log_derivative_scaled(s)
        raw = codec.learned(s)  # the bare module: its matmuls run in bf16 here
    assert in_autocast.dtype == torch.float32
    torch.testing.assert_close(in_autocast, plain, rtol=0, atol=1e-6)
    torch.testing.assert_close(logd_autocast, plain_logd, rtol=0, atol=1e-6)
    # the check can fail: without the guard the values differ far beyond 1e-6
    assert float((raw.float() - plain).detach().abs().max()) > 1e-4
    # and decoding inverts the training-time transform
    torch.testing.assert_close(codec.decode(in_autocast), codec.decode(plain), rtol=0, atol=1e-6)


class _ZeroNet(torch.nn.Module):
    """v̂ = 0: the v-loss is then ‖v‖², known in closed form for a fixed generator."""

    def forward(self, z, lam, **kwargs):
        return torch.zeros_like(z)


def test_objective_normalises_log_det_like_the_v_loss():
    """Two variables (one learned) and a mask: both terms are divided by the same count of
    valid elements per sample (eq. 4.15 balance independent of C and of the mask)."""
    torch.manual_seed(0)
    h = LearnedMonotone()
    _randomise(h, 1.0, 11)  # mean log h' ≈ −1.7: a penalty far from zero
    codec = Codec(
        [
            VariableCodec.fit(0.0, 20.0, "none", learned=h),
            VariableCodec.fit(-5.0, 5.0, "none"),
        ]
    )
    b, c, f, h, w = 3, 2, 2, 4, 4
    scaled = torch.rand(b, c, f, h, w) * 2 - 1
    mask = torch.rand(b, c, f, h, w) > 0.3
    mask[:, :, :, 0, 0] = False  # a masked cell
    scaled = torch.where(mask, scaled, torch.zeros(()))
    thresholds = codec.scaled_thresholds([0.01, 0.01])
    schedule = CosineSchedule()
    batch = DiffusionBatch(scaled, mask)
    net = _ZeroNet()
    loss = diffusion_objective(
        net, codec, schedule, batch, thresholds, torch.Generator().manual_seed(1)
    )
    # manual: same draws of t and ε
    gen = torch.Generator().manual_seed(1)
    from xdiffusion.core.diffusion import v_loss

    y = codec.encode_scaled(scaled)
    v = v_loss(net, y, schedule, generator=gen, mask=mask)
    count = mask.flatten(1).sum(1).float()
    s0 = scaled[:, :1]
    m0 = mask[:, :1] & (s0 > thresholds[0])
    logd = codec[0].log_derivative_scaled(s0)
    pen = -(torch.where(m0, logd, torch.zeros(()))).flatten(1).sum(1)
    expected = (v + pen / count).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)
    # the old normalisation (one channel's element count, mask ignored) weighted the
    # log-det C × (valid fraction) ≈ 1.4× more than the v-loss' own count does
    new_term, old_term = (pen / count).mean(), pen.sum() / s0.numel()
    assert float(new_term) > 0.1
    expected_ratio = float(count.mean()) / s0[0].numel()
    assert 1.2 < expected_ratio < 1.6
    assert float(old_term / new_term) == pytest.approx(expected_ratio, rel=0.05)
    # without learned transforms the objective is the masked v-loss alone
    plain = Codec([VariableCodec.fit(0.0, 20.0, "none"), VariableCodec.fit(-5.0, 5.0, "none")])
    l2 = diffusion_objective(
        net, plain, schedule, batch, thresholds, torch.Generator().manual_seed(1)
    )
    gen = torch.Generator().manual_seed(1)
    torch.testing.assert_close(l2, v_loss(net, scaled, schedule, generator=gen, mask=mask).mean())


# ------------------------------------------------------------------ dry cells: exact zeros


@pytest.mark.parametrize("spec", ["sqrt", {"name": "log1p", "scale": 0.1}, "learned"])
def test_decode_snaps_float_residue_above_the_minimum_to_it(spec):
    """A sampler ends a few float32 steps above −1 for a dry cell (α·x̂ with α just below
    1): that decodes to exactly 0, not 1e-14, while real light rain is kept."""
    from xdiffusion.codec import DECODE_SNAP

    codec = VariableCodec.fit(0.0, 50.0, spec).float()
    ulp = torch.finfo(torch.float32).eps / 2  # float32 spacing just above -1
    y = torch.tensor([[-1.0, -1.0 + ulp, -1.0 + 4 * ulp, -1.0 + 0.5 * DECODE_SNAP, -0.99]])
    out = codec.decode(y)
    assert out[0, :4].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert out[0, 4] > 0
    assert codec.decode(torch.tensor([[-1.0 + 2 * DECODE_SNAP]]))[0, 0] > 0


class _FixedField(torch.nn.Module):
    """A v-network whose x̂ is ``target`` (C, H, W) at every noise level, as a network
    that predicts the field exactly would: v = (α z − x̂) / σ."""

    def __init__(self, target: torch.Tensor, config) -> None:
        super().__init__()
        self.register_buffer("target", target)
        self.config = config

    def forward(self, z, lam, cond=None):
        from xdiffusion.core.schedule import alpha_sigma

        alpha, sigma = alpha_sigma(lam.to(z.dtype).reshape(-1, 1, 1, 1, 1))
        return (alpha * z - self.target[:, None]) / sigma


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "ancestral", "ddim", "dpmpp_2m_sde", "dpmpp_3m"])
def test_generated_dry_cells_are_exact_zeros(tiny_model, series, sampler):
    import xdiffusion as xd
    from xdiffusion.model import Denoiser

    ny, nx = tiny_model.grid
    target = torch.full((1, ny, nx), -1.5)  # dry: x̂ below the range, clipped to -1
    target[:, : ny // 2] = 0.3  # wet half
    net = _FixedField(target, tiny_model.net_config)
    model = xd.DiffusionModel(
        tiny_model.config, Denoiser(net, tiny_model.codec), valid=tiny_model.valid
    )
    tmpl = series.isel(time=slice(0, 6))
    out = tmpl.diffusion.sample(model, n=2, sampler=sampler, steps=10, progress=False).values
    dry, wet = out[..., ny // 2 :, :], out[..., : ny // 2, :]
    assert (dry == 0.0).all(), np.unique(dry)[:5]
    assert out.min() >= 0.0 and (wet > 0).all()


# ------------------------------------------------------------ dry class decodes to zero


def test_decode_below_dry_below_gives_the_lower_bound_exactly():
    """Values the model's dry class covers ([0, dry_below)) decode to exact zeros; the
    threshold itself and everything above are kept; encode is unchanged by it."""
    plain = VariableCodec.fit(0.0, 50.0, "sqrt")
    codec = VariableCodec.fit(0.0, 50.0, "sqrt", dry_below=0.01)
    x = torch.tensor([[0.0, 1e-9, 0.004, 0.00999, 0.01, 0.02, 3.0]], dtype=torch.float64)
    y = plain.encode(x)
    torch.testing.assert_close(codec.encode(x), y)
    out = codec.decode(y)[0]
    assert out[:4].tolist() == [0.0, 0.0, 0.0, 0.0]
    torch.testing.assert_close(out[4:], plain.decode(y)[0, 4:])
    assert (out[4:] > 0).all()


def test_dry_below_config_round_trip_and_older_files():
    codec = VariableCodec.fit(0.0, 50.0, {"name": "log1p", "scale": 0.1}, dry_below=0.05)
    cfg = json.loads(json.dumps(codec.to_config()))
    assert VariableCodec.from_config(cfg).dry_below == 0.05
    del cfg["dry_below"]  # a file written before the threshold existed decodes as before
    assert VariableCodec.from_config(cfg).dry_below is None


@pytest.mark.parametrize(
    ("transform", "value", "match"),
    [
        ("none", 0.01, "lower bound"),
        ("sqrt", 0.0, "above the lower bound"),
        ("sqrt", -1.0, "above the lower bound"),
        ("sqrt", float("nan"), "finite number"),
        ("sqrt", True, "finite number"),
        ("sqrt", "0.01", "finite number"),
    ],
)
def test_dry_below_errors(transform, value, match):
    with pytest.raises(ValueError, match=match):
        VariableCodec.fit(0.0, 50.0, transform, dry_below=value)


def test_fit_decodes_its_dry_class_to_zero_and_checks_units(series):
    """A fitted sqrt model's dry threshold decodes to 0: a network whose x̂ is 0.004 mm/h
    (below 0.01) in half the grid and 0.5 mm/h elsewhere generates exact zeros there and
    keeps the rain. The default threshold follows the units (0.01 mm h-1 is 2.8e-6
    kg m-2 s-1); a number given in other units than the data's (0.01 for kg m-2 s-1,
    above most rain) gets a warning and no threshold."""
    from conftest import TINY_NET

    import xdiffusion as xd
    from xdiffusion.model import Denoiser

    fit_args = dict(frames=4, steps=2, batch_size=2, progress=False, device="cpu", net=TINY_NET)
    da = series.isel(time=slice(0, 60))
    model = da.diffusion.fit(**fit_args)
    assert model.codec[0].dry_below == 0.01
    ny, nx = model.grid
    field = torch.full((1, 1, ny, nx), 0.5, dtype=torch.float64)
    field[..., : ny // 2, :] = 0.004
    target = model.codec.encode(field)[0].float()
    fixed = xd.DiffusionModel(
        model.config,
        Denoiser(_FixedField(target, model.net_config), model.codec),
        valid=model.valid,
    )
    tmpl = da.isel(time=slice(0, 4))
    v = tmpl.diffusion.sample(fixed, n=2, steps=4, progress=False).values
    assert (v[..., : ny // 2, :] == 0.0).all()
    np.testing.assert_allclose(v[..., ny // 2 :, :], 0.5, rtol=1e-3)
    model.codec[0].dry_below = None  # the same network without the threshold
    r = tmpl.diffusion.sample(fixed, n=2, steps=4, progress=False).values
    np.testing.assert_allclose(r[..., : ny // 2, :], 0.004, rtol=1e-3)

    other_units = (da / 3600.0).assign_attrs(units="kg m-2 s-1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flux = other_units.diffusion.fit(**fit_args)
    assert flux.codec[0].dry_below == pytest.approx(0.01 / 3600.0, rel=1e-9)
    assert flux.dry_thresholds == [flux.codec[0].dry_below]
    with pytest.warns(UserWarning, match="not a dry threshold for these data"):
        other = other_units.diffusion.fit(dry_threshold=0.01, **fit_args)
    assert other.codec[0].dry_below is None
