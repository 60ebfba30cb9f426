"""The learning-rate schedule: warm-up, then constant or a cosine decay to a floor."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import TINY_NET

from xdiffusion.training import COSINE_FLOOR, TrainConfig, learning_rate


def test_constant_schedule_warms_up_then_holds():
    cfg = TrainConfig(steps=50, lr=1e-3, warmup=10, lr_schedule="constant")
    lrs = [learning_rate(cfg, s) for s in range(50)]
    np.testing.assert_allclose(lrs[:10], 1e-3 * np.arange(1, 11) / 10)
    assert lrs[10:] == [1e-3] * 40


def test_cosine_schedule_closed_form():
    cfg = TrainConfig(steps=111, lr=2e-3, warmup=10, lr_schedule="cosine")
    lrs = np.array([learning_rate(cfg, s) for s in range(111)])
    np.testing.assert_allclose(lrs[:10], 2e-3 * np.arange(1, 11) / 10)
    assert lrs[10] == pytest.approx(2e-3)  # the peak right after the warm-up
    assert lrs[-1] == pytest.approx(2e-3 * COSINE_FLOOR)  # the floor at the last step
    mid = 10 + 50  # half-way through the decay: the floor plus half the rest
    assert lrs[mid] == pytest.approx(2e-3 * (COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5))
    assert np.all(np.diff(lrs[10:]) < 0)
    p = 0.3
    step = 10 + round(p * 100)
    want = COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * p))
    assert lrs[step] == pytest.approx(2e-3 * want)


def test_default_is_cosine_and_constant_keeps_old_fingerprints(series, tmp_path):
    """Cosine is the default; a constant run's resume fingerprint has no schedule key, as
    checkpoints written before the setting existed do not, and a cosine run's has one."""
    from xdiffusion.checkpoint import load_checkpoint

    assert TrainConfig().lr_schedule == "cosine"
    kw = dict(frames=4, batch_size=2, steps=2, progress=False, device="cpu", net=TINY_NET)
    data = series.isel(time=slice(0, 40))
    for schedule in ("constant", "cosine"):
        ckpt_dir = tmp_path / schedule
        data.diffusion.fit(lr_schedule=schedule, checkpoint_dir=ckpt_dir, checkpoint_every=1, **kw)
        fp = load_checkpoint(ckpt_dir).fingerprint
        has = "lr_schedule" in fp or "lr_schedule" in fp["train_config"]
        assert has == (schedule == "cosine")


def test_bad_schedule_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"lr_schedule must be one of \['constant', 'cosine'\]"):
        TrainConfig(lr_schedule="linear")


def test_fit_records_and_uses_the_schedule(series):
    """A cosine fit is recorded as such and differs from a constant one after warm-up,
    and equals it while both warm up."""
    kw = dict(frames=4, batch_size=2, progress=False, device="cpu", net=TINY_NET, warmup=2)
    data = series.isel(time=slice(0, 40))
    cos = data.diffusion.fit(steps=6, **kw)  # the default
    const = data.diffusion.fit(steps=6, lr_schedule="constant", **kw)
    assert cos.config["training"]["lr_schedule"] == "cosine"
    assert const.config["training"]["lr_schedule"] == "constant"
    h_cos, h_const = cos.history_dict["loss"], const.history_dict["loss"]
    assert h_cos[:3] == h_const[:3]  # same draws and rates up to the first decayed step
    assert h_cos[3:] != h_const[3:]
