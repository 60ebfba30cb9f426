"""Tests of the spatio-temporal U-Net (xdiffusion.nets)."""

from __future__ import annotations

import json

import pytest
import torch

from xdiffusion.nets import UNet3D, UNetConfig, unet_config
from xdiffusion.nets.layers import (
    LambdaEmbedding,
    Pointwise,
    SpaceTimeAttention,
    SpatialAttention,
    TemporalAttention,
    relative_index,
)
from xdiffusion.nets.unet import global_means


def tiny(**overrides) -> UNetConfig:
    """A two-level network small enough to run in milliseconds."""
    base = dict(
        width=8,
        mults=(1, 2),
        blocks=1,
        spatial_attention=("none", "linear"),
        temporal_attention=(True, True),
        mid_spatial_attention="full",
        heads=2,
        head_dim=None,
        groups=4,
        fourier_dim=8,
    )
    base.update(overrides)
    return unet_config("small", **base)


def check_new_flag(name: str) -> None:
    """A boolean field added after model files were first written: it round-trips through
    JSON, a stored configuration without it reads as False (LEGACY_DEFAULTS), and a
    non-bool is refused naming the field."""
    cfg = tiny(**{name: True})
    assert UNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    stored = cfg.to_dict()
    del stored[name]
    assert getattr(UNetConfig.from_dict(stored), name) is False
    with pytest.raises(ValueError, match=name):
        tiny(**{name: "yes"})


def perturbed(cfg: UNetConfig, seed: int = 0) -> UNet3D:
    """Network whose zero-initialised output layer is given random weights."""
    torch.manual_seed(seed)
    net = UNet3D(cfg).eval()
    with torch.no_grad():
        net.out_conv.weight.normal_(0, 0.3)
        net.out_conv.bias.normal_(0, 0.3)
    return net


@pytest.mark.parametrize(
    ("shape", "channels"),
    [((1, 1, 3, 37, 49), 1), ((2, 1, 1, 37, 49), 1), ((1, 2, 3, 37, 49), 2), ((1, 1, 2, 1, 3), 1)],
)
def test_output_shape_matches_input_any_grid_and_frames(shape, channels):
    net = perturbed(
        tiny(
            channels=channels,
            mults=(1, 2, 2),
            spatial_attention=("none",) * 3,
            temporal_attention=(True,) * 3,
        )
    )
    z = torch.randn(shape)
    out = net(z, torch.zeros(shape[0]))
    assert out.shape == z.shape
    assert torch.isfinite(out).all()


def test_untrained_output_is_exactly_zero():
    net = UNet3D(tiny()).eval()
    out = net(torch.randn(2, 1, 3, 8, 8), torch.tensor([-10.0, 10.0]))
    assert torch.count_nonzero(out) == 0


def test_output_depends_on_lambda():
    net = perturbed(tiny())
    z = torch.randn(1, 1, 3, 8, 8)
    a, b = net(z, torch.tensor([-5.0])), net(z, torch.tensor([5.0]))
    assert (a - b).abs().max() > 1e-3
    # A scalar λ is broadcast over the batch.
    z2 = torch.cat([z, z])
    assert torch.allclose(net(z2, 5.0), torch.cat([b, b]), atol=1e-5)


def test_output_depends_on_cond_and_cond_is_checked():
    net = perturbed(tiny(cond_features=3))
    z, lam = torch.randn(2, 1, 4, 8, 8), torch.zeros(2)
    c1 = torch.randn(2, 4, 3)
    c2 = c1.clone()
    c2[:, 1] += 1.0  # change the conditioning of frame 1 only
    o1, o2 = net(z, lam, cond=c1), net(z, lam, cond=c2)
    assert (o1 - o2).abs().max() > 1e-3
    with pytest.raises(ValueError, match="cond"):
        net(z, lam)
    with pytest.raises(ValueError, match="cond"):
        net(z, lam, cond=torch.randn(2, 3, 3))
    with pytest.raises(ValueError, match="cond_features"):
        perturbed(tiny())(z, lam, cond=c1)
    # Conditioning is per frame: without temporal attention only frame 1 responds.
    local = perturbed(
        tiny(cond_features=3, temporal_attention=(False, False), mid_temporal_attention=False)
    )
    d = (local(z, lam, cond=c1) - local(z, lam, cond=c2)).abs().amax(dim=(0, 1, 3, 4))
    assert d[1] > 1e-3
    assert d[0] == 0 and d[2] == 0 and d[3] == 0


def test_temporal_attention_mixes_frames():
    net = perturbed(tiny())
    z = torch.randn(1, 1, 4, 8, 8)
    z2 = z.clone()
    z2[:, :, 0] += torch.randn(8, 8)
    lam = torch.zeros(1)
    diff = (net(z, lam) - net(z2, lam)).abs()
    assert diff[:, :, 2].max() > 1e-4


def test_spatial_ops_never_mix_frames_without_temporal_attention():
    cfg = tiny(
        temporal_attention=(False, False),
        mid_temporal_attention=False,
        spatial_attention=("linear", "full"),
    )
    net = perturbed(cfg)
    z = torch.randn(2, 1, 4, 8, 8)
    z2 = z.clone()
    z2[:, :, 0] += torch.randn(8, 8)
    lam = torch.tensor([-3.0, 3.0])
    o1, o2 = net(z, lam), net(z2, lam)
    assert (o1[:, :, 0] - o2[:, :, 0]).abs().max() > 1e-4
    torch.testing.assert_close(o1[:, :, 1:], o2[:, :, 1:], rtol=0, atol=1e-6)
    # Without temporal attention, reordering frames reorders the output.
    perm = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(net(z[:, :, perm], lam), o1[:, :, perm], rtol=1e-5, atol=1e-6)


def test_relative_index_is_clipped_toeplitz():
    idx = relative_index(6, 2, torch.device("cpu"))
    for p in range(6):
        for s in range(6):
            assert idx[p, s] == min(max(s - p, -2), 2) + 2


def test_temporal_attention_bias_selects_relative_frame():
    # Bias -1e4 everywhere except offset -1: every frame p > 0 attends to frame p - 1 only.
    torch.manual_seed(0)
    layer = TemporalAttention(8, heads=2, head_dim=4, groups=4, max_distance=3)
    with torch.no_grad():
        layer.rel_bias.fill_(-1e4)
        layer.rel_bias[:, 3 - 1] = 0.0
    x = torch.randn(2 * 4, 8, 3, 5)  # B=2, F=4 frame batch
    x2 = x.clone()
    x2[0] += torch.randn(8, 3, 5)  # frame 0 of sample 0 (not a constant: GroupNorm removes it)
    d = (layer(x, 4) - layer(x2, 4)).abs().amax(dim=(1, 2, 3))
    assert d[0] > 1e-3 and d[1] > 1e-3  # frame 0 itself, and frame 1 that reads it
    assert d[2] == 0 and d[3] == 0 and d[4:].max() == 0


def test_spacetime_attention_relates_other_pixels_of_other_frames():
    """Joint attention: a change at one pixel of frame 0 reaches every pixel of every frame
    (per-pixel temporal attention reaches only that pixel); the frame-offset bias still
    selects frames, and with only offset 0 allowed it is full spatial attention per frame."""
    torch.manual_seed(0)
    layer = SpaceTimeAttention(8, heads=2, head_dim=4, groups=4, max_distance=3)
    temporal = TemporalAttention(8, heads=2, head_dim=4, groups=4, max_distance=3)
    # without the pre-norm, whose statistics over a frame would carry a change to every pixel
    norms = layer.norm, temporal.norm
    layer.norm = temporal.norm = torch.nn.Identity()
    x = torch.randn(2 * 4, 8, 3, 5)  # B=2, F=4 frame batch
    x2 = x.clone()
    x2[0, :, 1, 2] += 3.0  # one pixel of frame 0 of sample 0
    d = (layer(x, 4) - layer(x2, 4)).abs()
    assert d[1:4].amin() > 0  # every pixel of frames 1-3 of sample 0 reads it
    assert d[4:].max() == 0  # sample 1 does not
    dt = (temporal(x, 4) - temporal(x2, 4)).abs()
    assert dt[1:4, :, 0, 0].max() == 0 and dt[1:4, :, 1, 2].max() > 0
    layer.norm, temporal.norm = norms
    # only offset -1 allowed: frame p reads frame p - 1 alone, whatever the pixel
    with torch.no_grad():
        layer.rel_bias.fill_(-1e4)
        layer.rel_bias[:, 3 - 1] = 0.0
    d = (layer(x, 4) - layer(x2, 4)).abs().amax(dim=(1, 2, 3))
    assert d[1] > 1e-3 and d[2] == 0 and d[3] == 0
    # only offset 0 allowed: spatial attention within each frame, with the same weights
    spatial = SpatialAttention(8, heads=2, head_dim=4, groups=4, kind="full")
    with torch.no_grad():
        layer.rel_bias.fill_(-1e4)
        layer.rel_bias[:, 3] = 0.0
        for name in ("norm", "qkv", "out"):
            getattr(spatial, name).load_state_dict(getattr(layer, name).state_dict())
    torch.testing.assert_close(layer(x, 4), spatial(x), rtol=1e-5, atol=1e-5)


def test_spacetime_attention_in_the_network():
    cfg = tiny(spatial_attention=("none", "spacetime"), mid_spatial_attention="spacetime")
    assert UNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    net = perturbed(cfg)
    assert sum(isinstance(m, SpaceTimeAttention) for m in net.modules()) == 3
    z = torch.randn(2, 1, 3, 8, 12)
    out = net(z, torch.tensor([0.0, 2.0]))
    assert out.shape == z.shape
    net.train()
    net(z, torch.zeros(2)).square().mean().backward()
    joint = [m for m in net.modules() if isinstance(m, SpaceTimeAttention)]
    assert all(m.rel_bias.grad is not None for m in joint)
    with pytest.raises(ValueError, match="spacetime"):
        tiny(mid_spatial_attention="space-time")


def test_global_means_closed_form():
    """Frame and window means times √n: a constant c gives c √(HW) and c √(FHW); pure noise
    gives unit spread on any grid."""
    z = torch.full((2, 1, 3, 4, 5), 0.5)
    z[1] = -1.0
    feats = global_means(z)
    assert feats.shape == (2, 3, 2) and feats.dtype == torch.float32
    torch.testing.assert_close(feats[0, :, 0], torch.full((3,), 0.5 * 20**0.5))
    torch.testing.assert_close(feats[1, :, 1], torch.full((3,), -(60**0.5)))
    noise = global_means(torch.randn(4000, 1, 2, 7, 9, generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(noise.std(0), torch.ones(2, 2), atol=0.05, rtol=0)


def test_global_mean_conditioning_starts_neutral_and_learns():
    """UNetConfig.global_mean: the untrained projection is zero, so the network computes
    exactly what the same weights without it compute; once trained, the output depends on
    the window's mean, which every GroupNorm otherwise removes; stored configurations
    without the field read as False."""
    plain, with_mean = perturbed(tiny()), perturbed(tiny(global_mean=True))
    shared = {k: v for k, v in with_mean.state_dict().items() if not k.startswith("mean_proj")}
    plain.load_state_dict(shared)
    z = torch.randn(2, 1, 3, 8, 12)
    lam = torch.tensor([-3.0, 1.0])
    torch.testing.assert_close(with_mean(z, lam), plain(z, lam))
    with torch.no_grad():
        with_mean.mean_proj.weight.normal_(0, 0.5)
    shifted = z + 0.3  # the same field, wetter: only the means differ after GroupNorm
    assert not torch.allclose(
        with_mean(shifted, lam) - with_mean(z, lam), plain(shifted, lam) - plain(z, lam)
    )
    with_mean.train()
    with_mean(z, lam).square().mean().backward()
    assert with_mean.mean_proj.weight.grad.abs().sum() > 0
    check_new_flag("global_mean")


def test_mean_readout_starts_neutral_and_adds_a_uniform_offset_per_frame():
    """UNetConfig.mean_readout: zero-initialised, so the network computes what the same
    weights without it compute; with weights, it adds to every frame one value per channel
    (uniform over the frame's cells, the padding excluded) that the output GroupNorm would
    otherwise have removed; stored configurations without the field read as False."""
    plain, readout = perturbed(tiny()), perturbed(tiny(mean_readout=True))
    shared = {k: v for k, v in readout.state_dict().items() if not k.startswith("mean_out")}
    plain.load_state_dict(shared)
    z = torch.randn(2, 1, 3, 9, 13)  # not a multiple of the downsampling: padded inside
    lam = torch.tensor([-3.0, 1.0])
    torch.testing.assert_close(readout(z, lam), plain(z, lam))
    with torch.no_grad():
        readout.mean_out.weight.normal_(0, 0.5)
        readout.mean_out.bias.fill_(0.25)
    offset = readout(z, lam) - plain(z, lam)
    assert offset.abs().amax() > 1e-3
    # one value per sample and frame, the same at every cell
    torch.testing.assert_close(offset, offset[..., :1, :1].expand_as(offset))
    assert not torch.allclose(offset[:, :, 0], offset[:, :, 1])
    readout.train()
    readout(z, lam).square().mean().backward()
    assert readout.mean_out.weight.grad.abs().sum() > 0
    check_new_flag("mean_readout")


def test_lambda_embedding_separates_the_lambda_range():
    emb = LambdaEmbedding(32, 16, 30.0)
    lam = torch.linspace(-30, 30, 121)
    u = lam[:, None] / 30.0 * emb.freqs[None, :]
    feats = torch.cat([u.sin(), u.cos()], dim=-1)
    # Distinct λ half a unit apart have clearly distinct features.
    gaps = (feats[1:] - feats[:-1]).norm(dim=-1)
    assert gaps.min() > 0.1
    assert emb(lam).shape == (121, 16)


def test_gradients_reach_every_parameter():
    net = perturbed(tiny(cond_features=2)).train()
    z = torch.randn(2, 1, 3, 7, 9)
    net(z, torch.tensor([1.0, -1.0]), cond=torch.randn(2, 3, 2)).square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing


def test_runs_under_bfloat16_autocast():
    net = perturbed(tiny(cond_features=1))
    z = torch.randn(1, 1, 3, 9, 11)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(z, torch.tensor([2.0]), cond=torch.randn(1, 3, 1))
    assert out.shape == z.shape
    assert torch.isfinite(out.float()).all()
    ref = net(z, torch.tensor([2.0]), cond=torch.zeros(1, 3, 1))
    assert ref.dtype == torch.float32


def test_reflect_and_zero_padding_modes():
    z = torch.randn(1, 1, 2, 6, 3)
    for mode in ("reflect", "zeros"):
        out = perturbed(
            tiny(
                pad_mode=mode,
                mults=(1, 2, 2, 2),
                spatial_attention=("none",) * 4,
                temporal_attention=(True,) * 4,
            )
        )(z, torch.zeros(1))
        assert out.shape == z.shape


def test_conv_pad_modes_and_the_legacy_default():
    """conv_pad: both modes run on any grid (down to 1×1 at the coarsest level) with the
    same weights; a stored config without the field is read as today's files' "zeros"."""
    nets = {m: perturbed(tiny(conv_pad=m)) for m in ("zeros", "replicate", "reflect")}
    for mode in ("replicate", "reflect"):
        nets[mode].load_state_dict(nets["zeros"].state_dict())  # the same tensors
    for shape in ((1, 1, 2, 9, 11), (1, 1, 1, 1, 1), (1, 1, 1, 2, 5)):
        z = torch.randn(shape)
        outs = [net(z, torch.zeros(1)) for net in nets.values()]
        assert all(o.shape == z.shape and torch.isfinite(o).all() for o in outs)
        if shape[-1] > 1:  # the edges see different padding
            assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[1], outs[2])
    new = unet_config("small")
    assert new.conv_pad == UNetConfig.conv_pad  # new networks: the dataclass default
    stored = new.to_dict()
    assert stored["conv_pad"] == new.conv_pad  # recorded in every new model file
    del stored["conv_pad"]
    assert UNetConfig.from_dict(stored).conv_pad == "zeros"  # a file from before the field
    with pytest.raises(ValueError, match="conv_pad"):
        UNetConfig.from_dict({**new.to_dict(), "conv_pad": "circular"})


def test_config_round_trip_and_rejects_bad_keys():
    cfg = unet_config("reference", channels=3, cond_features=4, dropout=0.1)
    d = json.loads(json.dumps(cfg.to_dict()))
    back = UNetConfig.from_dict(d)
    assert back == cfg
    assert back.to_dict() == d
    with pytest.raises(ValueError, match="unknown UNetConfig keys"):
        UNetConfig.from_dict({**d, "widht": 3})
    bad_values = [
        {"mults": "abc"},
        {"mults": []},
        {"spatial_attention": ["none"]},
        {"spatial_attention": ["none", "none", "none", "fancy"]},
        {"temporal_attention": [1, 1, 1, 1]},
        {"groups": 7},
        {"width": -1},
        {"heads": 3, "head_dim": None},
        {"head_dim": 24},
        {"fourier_dim": 7},
        {"dropout": 1.5},
        {"pad_mode": "wrap"},
        {"lam_scale": 0},
    ]
    for bad in bad_values:
        with pytest.raises(ValueError):
            UNetConfig.from_dict({**d, **bad})
    with pytest.raises(ValueError):
        UNetConfig.from_dict([("width", 3)])


def test_unet_config_presets_and_overrides():
    with pytest.raises(ValueError, match="preset"):
        unet_config("huge")
    with pytest.raises(ValueError, match="unknown UNetConfig keys"):
        unet_config("small", depth=3)
    deeper = unet_config("small", mults=(1, 2, 2, 4))
    assert deeper.spatial_attention == ("none", "none", "none", "full")
    assert len(deeper.temporal_attention) == 4
    with pytest.raises(TypeError, match="UNetConfig"):
        UNet3D(deeper.to_dict())


def test_attention_head_layout():
    ref = unet_config("reference")
    assert [ref.attention_heads(c) for c in ref.level_channels] == [
        (2, 32),
        (4, 32),
        (8, 32),
        (16, 32),
    ]
    # A narrower width than the preset's shrinks the head size to one dividing every level.
    narrow = unet_config("small", width=8)
    assert [narrow.attention_heads(c) for c in narrow.level_channels] == [(1, 8), (2, 8), (2, 8)]
    fixed = tiny(heads=4, head_dim=None)
    assert [fixed.attention_heads(c) for c in fixed.level_channels] == [(4, 2), (4, 4)]


def test_pointwise_equals_one_by_one_convolution():
    torch.manual_seed(0)
    pw = Pointwise(6, 5)
    conv = torch.nn.Conv2d(6, 5, 1)
    with torch.no_grad():
        conv.weight.copy_(pw.weight[:, :, None, None])
        conv.bias.copy_(pw.bias)
    x = torch.randn(3, 6, 4, 7)
    for xx in (x, x.contiguous(memory_format=torch.channels_last)):
        torch.testing.assert_close(pw(xx), conv(x), rtol=1e-5, atol=1e-6)


def test_presets_construct_and_report_parameter_counts():
    counts = {}
    for preset in ("small", "reference"):
        with torch.device("meta"):
            net = UNet3D(unet_config(preset))
        counts[preset] = sum(p.numel() for p in net.parameters())
        print(f"{preset}: {counts[preset]:,} parameters")
    assert 1e5 < counts["small"] < 5e6
    assert 1e7 < counts["reference"] < 1e8
    small = UNet3D(unet_config("small"))
    assert sum(p.numel() for p in small.parameters()) == counts["small"]


def test_small_preset_runs_at_training_size():
    net = perturbed(unet_config("small"))
    z = torch.randn(1, 1, 8, 32, 32)
    assert net(z, torch.zeros(1)).shape == z.shape


def test_bad_inputs_raise_clear_errors():
    net = UNet3D(tiny())
    with pytest.raises(ValueError, match="z must be"):
        net(torch.randn(1, 8, 8), torch.zeros(1))
    with pytest.raises(ValueError, match="channels"):
        net(torch.randn(1, 2, 3, 8, 8), torch.zeros(1))
    with pytest.raises(ValueError, match="lam"):
        net(torch.randn(2, 1, 3, 8, 8), torch.zeros(3))
