"""Training on random spatial crops ("patches"); generating on the grid or a sub-region.

A 32×32 synthetic archive with a static NaN block, tiny networks, crops of 16×16.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import TINY_NET, with_static_nan

import xdiffusion as xd
from xdiffusion.cli import main, parse_patch
from xdiffusion.datasets import synthetic_precipitation
from xdiffusion.fitting import _Batches
from xdiffusion.io.patches import MAX_PATCH_DRAWS, MIN_PATCH_VALID, PatchSampler
from xdiffusion.io.windows import WindowReader

GRID = 32
PATCH = 16
#: Rows and columns of the static NaN block (NaN at every time step).
BLOCK = (slice(0, 10), slice(0, 12))
FIT = dict(
    frames=4,
    steps=4,
    batch_size=3,
    progress=False,
    device="cpu",
    net=TINY_NET,
    sampling_steps=2,
    val_every=2,
)
GEN = dict(steps=2, progress=False)


# bit-for-bit comparisons on one torch thread (the fixture is in conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def series() -> xr.DataArray:
    return with_static_nan(BLOCK, synthetic_precipitation(nt=60, ny=GRID, nx=GRID, seed=0))


@pytest.fixture(scope="module")
def model(series):
    return series.diffusion.fit(patch=PATCH, **FIT)


def _weights_equal(a, b) -> bool:
    sa, sb = a.module.state_dict(), b.module.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------ crops and masks


def _static_valid(series) -> np.ndarray:
    return np.isfinite(series.values).any(0)[None]  # (C, Y, X)


def test_crops_masks_are_the_cropped_valid_mask(series, model):
    valid = _static_valid(series)
    data = series.values[None].astype(np.float32)  # (C, T, Y, X)
    sampler = PatchSampler((PATCH, PATCH), valid, seed=0)
    batches = _Batches(
        WindowReader(data, 4),
        model.codec,
        torch.from_numpy(valid),
        4,
        torch.device("cpu"),
        None,
        patches=sampler,
    )
    idx = np.arange(0, 48, 4)
    for step in (0, 7):
        batch = batches(idx, step=step)
        assert batch.scaled.shape == (len(idx), 1, 4, PATCH, PATCH)
        oy, ox, usable = sampler.offsets(np.arange(len(idx)), step=step, starts=idx)
        assert len(set(zip(oy, ox))) > 1  # crops differ between the windows of a batch
        for b in range(len(idx)):
            crop = valid[:, oy[b] : oy[b] + PATCH, ox[b] : ox[b] + PATCH]
            assert usable[b] == (crop.mean() >= MIN_PATCH_VALID)
            want = np.broadcast_to(crop[:, None], (1, 4, PATCH, PATCH))
            np.testing.assert_array_equal(batch.mask[b].numpy(), want)
            # the data are the window's values cropped at the same offset (zero where masked)
            window = data[:, idx[b] : idx[b] + 4, oy[b] : oy[b] + PATCH, ox[b] : ox[b] + PATCH]
            np.testing.assert_array_equal(np.isfinite(window), want)
    # deterministic in (seed, step, row); other steps and seeds give other crops
    again = sampler.offsets(np.arange(12), step=7, starts=idx)
    np.testing.assert_array_equal(again[0], sampler.offsets(np.arange(12), step=7)[0])
    other = PatchSampler((PATCH, PATCH), valid, seed=1).offsets(np.arange(12), step=7)
    assert not (np.array_equal(other[0], again[0]) and np.array_equal(other[1], again[1]))
    # validation crops (step None) are keyed by the window starts
    starts = [5, 5, 9]
    val = sampler.offsets(np.arange(3), step=None, starts=starts)
    np.testing.assert_array_equal(
        val[0], sampler.offsets(np.arange(3), step=None, starts=starts)[0]
    )


def test_mostly_masked_crops_are_redrawn_then_left_out_of_the_loss():
    valid = np.zeros((1, GRID, GRID), dtype=bool)
    # one valid 12×12 corner: crops covering at least 10 % of it exist but are rare
    valid[:, 20:, 20:] = True
    sampler = PatchSampler((PATCH, PATCH), valid, seed=0)
    oy, ox, usable = sampler.offsets(np.arange(200), step=3)
    shares = np.array([sampler.share(a, b) for a, b in zip(oy, ox)])
    assert np.all(shares[usable] >= MIN_PATCH_VALID) and np.all(shares[~usable] < MIN_PATCH_VALID)
    # far more usable crops than one draw gives: crops are redrawn
    one_draw = (sampler.counts >= MIN_PATCH_VALID * PATCH * PATCH).mean()
    assert usable.mean() > 1.5 * one_draw and not usable.all()
    np.testing.assert_array_equal(sampler.crop_valid(oy, ox, usable).any((1, 2, 3)), usable)
    # a grid where every crop is mostly masked: every crop is masked out entirely
    tiny = np.zeros((1, GRID, GRID), dtype=bool)
    tiny[:, -4:, -4:] = True  # 16 cells: 6 % of a crop at best
    sampler = PatchSampler((PATCH, PATCH), tiny, seed=0)
    oy, ox, usable = sampler.offsets(np.arange(20), step=0)
    assert not usable.any() and not sampler.crop_valid(oy, ox, usable).any()
    assert MAX_PATCH_DRAWS > 1


def test_fit_records_the_whole_grid_and_the_patch(series, model):
    assert model.grid == (GRID, GRID) and model.config["grid"] == [GRID, GRID]
    assert model.config["training"]["patch"] == [PATCH, PATCH]
    assert len(model.config["data"]["grid"]["x"]) == GRID
    np.testing.assert_array_equal(model.valid.numpy(), _static_valid(series))
    plain = series.diffusion.fit(**{**FIT, "steps": 1})
    assert plain.config["training"]["patch"] is None
    rect = series.diffusion.fit(patch=[16, 8], **{**FIT, "steps": 1})
    assert rect.config["training"]["patch"] == [16, 8]


def test_same_seed_same_weights_and_resume_equals_uninterrupted(series, model, tmp_path):
    again = series.diffusion.fit(patch=PATCH, **FIT)
    assert _weights_equal(model, again)
    assert not _weights_equal(model, series.diffusion.fit(patch=PATCH, **{**FIT, "seed": 1}))
    # a square patch given as a pair is the same run
    assert _weights_equal(model, series.diffusion.fit(patch=(PATCH, PATCH), **FIT))
    # patch changes training
    assert not _weights_equal(model, series.diffusion.fit(**FIT))
    first = {**FIT, "steps": 2}
    xd.fit(series, patch=PATCH, checkpoint_dir=tmp_path, checkpoint_every=1, **first)
    resumed = xd.fit(series, patch=PATCH, checkpoint_dir=tmp_path, resume=True, **FIT)
    assert _weights_equal(resumed, model)
    assert resumed.config["training"]["history"] == model.config["training"]["history"]


def test_resume_refuses_another_patch(series, tmp_path):
    first = {**FIT, "steps": 2}
    xd.fit(series, patch=PATCH, checkpoint_dir=tmp_path, checkpoint_every=1, **first)
    for other in (8, None):
        with pytest.raises(ValueError, match=r"different arguments.*patch"):
            xd.fit(series, patch=other, checkpoint_dir=tmp_path, resume=True, **FIT)


@pytest.mark.parametrize(
    ("patch", "match"),
    [
        (0, r"patch must be None, a positive integer"),
        (-16, r"patch must be None, a positive integer"),
        ("16", r"patch must be None, a positive integer"),
        (True, r"patch must be None, a positive integer"),
        ((16, 16, 1), r"patch must be None, a positive integer"),
        (3, r"patch=\(3, 3\): each side must be a multiple of 2"),
        ((16, 1), r"patch=\(16, 1\): each side must be a multiple of 2"),
        (64, r"patch=\(64, 64\) is larger than the training grid \(32, 32\)"),
        ((16, 33), r"patch=\(16, 33\) is larger than the training grid"),
    ],
)
def test_bad_patch_refused(series, patch, match):
    with pytest.raises(ValueError, match=match):
        series.diffusion.fit(patch=patch, **FIT)


@pytest.fixture(scope="module")
def trained():
    """A patch-trained model that has learned something (80 steps, static NaN block)."""
    data = with_static_nan(BLOCK, synthetic_precipitation(nt=300, ny=GRID, nx=GRID, seed=2))
    fit = {**FIT, "steps": 80, "batch_size": 4, "lr": 2e-3, "warmup": 10, "val_every": 20}
    return data.diffusion.fit(patch=PATCH, transform="sqrt", **fit)


def test_patch_training_learns(trained):
    hist = trained.config["training"]["history"]
    assert np.mean(hist["loss"][-20:]) < 0.7 * np.mean(hist["loss"][:10])
    assert hist["val_loss"][-1] < hist["val_loss"][0]


# ------------------------------------------------------------------ generation on any grid


def _region(series, ys=slice(8, 24), xs=slice(4, 20), t=4):
    return series.isel(time=slice(0, t), y=ys, x=xs)


def test_sample_full_grid_and_sub_region(series, model):
    valid = model.valid[0].numpy()
    full = series.isel(time=slice(0, 6)).diffusion.sample(model, n=2, seed=1, **GEN)
    assert full.shape == (2, 6, GRID, GRID)
    np.testing.assert_array_equal(np.isfinite(full.values), np.broadcast_to(valid, full.shape))
    ys, xs = slice(4, 20), slice(8, 24)  # overlaps the NaN block
    region = _region(series, ys, xs, t=6)
    out = region.diffusion.sample(model, n=2, seed=1, **GEN)
    assert out.shape == (2, 6, 16, 16)
    np.testing.assert_array_equal(out.y.values, region.y.values)
    np.testing.assert_array_equal(out.x.values, region.x.values)
    want = np.broadcast_to(valid[ys, xs], out.shape)
    np.testing.assert_array_equal(np.isfinite(out.values), want)
    assert not np.isfinite(out.values).all()  # the NaN block is in it
    # the same numbers from a dask-backed template (the lazy path takes the cropped engine)
    lazy = region.chunk(time=4).diffusion.sample(model, n=2, seed=1, **GEN)
    np.testing.assert_array_equal(lazy.values, out.values)
    # a rectangular region at the grid's edge, in reverse order along y
    edge = _region(series, slice(0, 12), slice(0, 32))[:, ::-1]
    back = edge.diffusion.sample(model, n=1, **GEN)
    np.testing.assert_array_equal(back.y.values, edge.y.values)
    np.testing.assert_array_equal(np.isfinite(back.values[0, 0]), valid[0:12][::-1])


def test_conditional_tasks_on_a_sub_region(series, model):
    region = _region(series, slice(16, 32), slice(16, 32), t=8)
    gappy = region.copy(data=region.values.copy())
    gappy[{"time": [2, 5]}] = np.nan
    filled = gappy.diffusion.interpolate(model, n=1, **GEN)
    assert filled.shape == (1, 8, 16, 16) and np.isfinite(filled.values).all()
    np.testing.assert_array_equal(filled.values[0, 0], region.values[0])
    fc = region.diffusion.forecast(model, lead=3, n=1, **GEN)
    assert fc.shape == (1, 3, 16, 16) and np.isfinite(fc.values).all()
    coarse = region.isel(time=slice(0, 4)).coarsen(y=4, x=4).mean()
    fine = coarse.diffusion.downscale(model, factor=4, n=1, **GEN)
    assert fine.shape == (1, 4, 16, 16) and np.isfinite(fine.values).all()
    np.testing.assert_allclose(fine.x.values, region.x.values, rtol=1e-6)
    like = coarse.diffusion.downscale(model, like=region.isel(time=slice(0, 4)), n=1, **GEN)
    np.testing.assert_array_equal(like.values, fine.values)
    nll = model.nll(region, n_lambda=2, terms=False)
    assert np.isfinite(nll)


def test_regions_outside_the_grid_refused(series, model):
    region = _region(series)
    dx = float(region.x[1] - region.x[0])
    shifted = region.assign_coords(x=region.x + dx / 2)
    with pytest.raises(ValueError, match=r"template grid \(16, 16\) differs.*not a sub-region"):
        shifted.diffusion.sample(model, **GEN)
    beyond = region.assign_coords(x=region.x + 20 * dx)  # runs past the grid's last column
    with pytest.raises(ValueError, match="not a sub-region"):
        beyond.diffusion.sample(model, **GEN)
    with pytest.raises(ValueError, match=r"has no numeric 1-D coordinate 'x'"):
        region.drop_vars("x").diffusion.sample(model, **GEN)
    with pytest.raises(ValueError, match="smaller than the network's downsampling"):
        _region(series, xs=slice(4, 5)).diffusion.sample(model, **GEN)
    bigger = xr.concat([series.isel(time=slice(0, 4))] * 2, "x")
    bigger = bigger.assign_coords(x=np.arange(2 * GRID) * dx + float(series.x[0]))
    with pytest.raises(ValueError, match="more than the model's 32"):
        bigger.diffusion.sample(model, **GEN)
    # check_grid=False keeps its meaning: the grid is the training grid, so its size
    with pytest.raises(ValueError, match=r"with check_grid=False .* must have its size"):
        region.diffusion.sample(model, check_grid=False, **GEN)
    out = series.isel(time=slice(0, 4)).assign_coords(x=series.x + 1000.0)
    assert out.diffusion.sample(model, check_grid=False, **GEN).shape == (1, 4, GRID, GRID)
    # downscaling to a fine grid that is no sub-region
    coarse = shifted.coarsen(y=4, x=4).mean()
    with pytest.raises(ValueError, match=r"coarse grid \(4, 4\) × factor 4 = \(16, 16\) differs"):
        coarse.diffusion.downscale(model, factor=4, **GEN)


def test_engine_crop_shares_the_network(model):
    engine = model.engine
    sub = engine.crop(slice(4, 20), slice(0, 32))
    assert sub.net is engine.net and sub.codec is engine.codec and sub.grid == (16, 32)
    np.testing.assert_array_equal(sub.valid.numpy(), engine.valid[:, 4:20].numpy())
    for ys in (slice(0, 40), slice(3, 3), slice(0, 8, 2), slice(-4, None), slice(5, 6)):
        with pytest.raises(ValueError, match="ys"):
            engine.crop(ys, slice(None))


# ------------------------------------------------------------------ seams


def _neighbour_differences(values: np.ndarray, axis: int) -> np.ndarray:
    """Mean |v[k + 1] − v[k]| over members, times and the other axis, per pair k (NaN-aware)."""
    axis = axis % values.ndim
    d = np.abs(np.diff(values, axis=axis))
    other = tuple(a for a in range(values.ndim) if a != axis)
    return np.nanmean(d, axis=other)


def test_full_grid_samples_have_no_seam_at_patch_edges(series, trained):
    """A patch-trained model samples the whole grid in one piece: no seam.

    The U-Net is convolutional in space (temporal attention acts per pixel), so the full
    grid is one network input, with no tile edges at multiples of the patch size. What we
    measure: the mean absolute difference between neighbouring columns (and rows) of the
    generated fields, at the pair straddling the patch size (15 | 16) against all other
    pairs; a seam would make that pair stand out. Samples are finite wherever the valid
    mask is, and NaN in the static block.
    """
    tmpl = series.isel(time=slice(0, 4))
    out = tmpl.diffusion.sample(trained, n=8, seed=3, steps=10, progress=False).values
    valid = trained.valid[0].numpy()
    np.testing.assert_array_equal(np.isfinite(out), np.broadcast_to(valid, out.shape))
    assert np.isfinite(out[..., valid]).all()
    for axis in (-1, -2):  # columns, rows
        diff = _neighbour_differences(out, axis)
        edge = diff[PATCH - 1]
        others = np.delete(diff, PATCH - 1)
        assert abs(edge - others.mean()) <= 4 * others.std() + 1e-6, (axis, edge, others)


# ------------------------------------------------------------------ command line


def test_cli_patch(tmp_path, series, capsys):
    assert parse_patch("16") == 16 and parse_patch("16, 8") == (16, 8)
    for bad in ("", "a", "0", "16,8,4", "-2"):
        with pytest.raises(argparse.ArgumentTypeError, match="--patch"):
            parse_patch(bad)
    data = tmp_path / "data.nc"
    series.isel(time=slice(0, 30)).to_dataset().to_netcdf(data)
    argv = ["fit", str(data), "--frames", "4", "--steps", "2", "--batch-size", "2"]
    argv += ["--net", "width=8,mults=1-2", "--device", "cpu", "--quiet"]
    out = tmp_path / "model"
    assert main([*argv, "--out", str(out), "--patch", "16,8"]) == 0
    assert xd.load(out).config["training"]["patch"] == [16, 8]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--out", str(tmp_path / "other"), "--patch", "3"])
    assert exc.value.code == 2 and "patch=(3, 3)" in capsys.readouterr().err
