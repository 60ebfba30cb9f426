"""Conditional tasks beat simple baselines on a small model trained once for this module.

The model learns advecting synthetic precipitation (16×16 cells of 25 km, 4 frames, rain
moving 2 cells per hourly step, so persistence is a poor forecast). Against held-out data it must

- keep observed values bit-exact and fill gaps better than linear interpolation in time;
- forecast better than climatology and persistence (CRPS) at the first leads;
- downscale 4× with block means equal to the coarse input and a fine-scale spectrum closer
  to the truth than bicubic interpolation's.

The bounds are the baselines themselves: no slack is granted to the model.
"""

import numpy as np
import pytest
import torch
import xarray as xr
from scipy.ndimage import zoom

from xdiffusion import diagnostics as dg
from xdiffusion.core.conditioning import block_mean
from xdiffusion.datasets import synthetic_precipitation

WIND = (50.0, 16.7)  # km/h: 2 and 0.7 cells of 25 km per hourly step
DX_KM = 25.0
GRID = 16
FRAMES = 4
NET = {"width": 16, "head_dim": 16, "mults": (1, 2)}
GEN = {"steps": 15, "progress": False, "seed": 1}
MEMBERS = 6
STARTS = list(range(7, 700, 60))[:8]  # held-out cases, more than a window apart


def series(nt: int, seed: int) -> xr.DataArray:
    return synthetic_precipitation(
        nt=nt, ny=GRID, nx=GRID, seed=seed, dx_km=DX_KM, wind_kmh=WIND, dry_fraction=0.6
    )


@pytest.fixture(scope="module")
def trained():
    train = series(3000, 0)
    model = train.diffusion.fit(
        frames=FRAMES,
        steps=800,
        batch_size=8,
        lr=2e-3,
        warmup=20,
        seed=0,
        device="cpu",
        net=NET,
        progress=False,
    )
    return model, train, series(720, 1)


def test_interpolation_keeps_observed_and_beats_linear(trained):
    model, _, held = trained
    err, err_lin = [], []
    for s in STARTS:
        window = held.isel(time=slice(s, s + FRAMES))
        gappy = window.copy()
        gappy[1:-1] = np.nan  # a gap of FRAMES - 2 steps between two observed frames
        filled = gappy.diffusion.interpolate(model, n=MEMBERS, **GEN)
        for t in (0, FRAMES - 1):
            np.testing.assert_array_equal(
                filled.values[:, t],
                np.broadcast_to(window.values[t], filled.shape[-2:])[None].repeat(MEMBERS, 0),
            )
        w = (np.arange(1, FRAMES - 1) / (FRAMES - 1))[:, None, None]
        linear = window.values[0] * (1 - w) + window.values[-1] * w
        truth = window.values[1:-1]
        err.append(np.mean((filled.values[:, 1:-1].mean(0) - truth) ** 2))
        err_lin.append(np.mean((linear - truth) ** 2))
    rmse, rmse_lin = np.sqrt(np.mean(err)), np.sqrt(np.mean(err_lin))
    assert rmse < rmse_lin, (rmse, rmse_lin)


def _crps(ens: np.ndarray, obs: np.ndarray, fair: bool) -> np.ndarray:
    """Mean CRPS by lead: ens (m, case, lead, y, x), obs (case, lead, y, x)."""
    dims = ("case", "lead", "y", "x")
    e = xr.DataArray(ens, dims=("realization", *dims))
    return dg.crps(e, xr.DataArray(obs, dims=dims), fair=fair).mean(["case", "y", "x"]).values


def test_forecast_beats_climatology_and_persistence(trained):
    model, train, held = trained
    ctx = FRAMES // 2
    lead = FRAMES - ctx
    ens, truth, last = [], [], []
    for s in STARTS:
        fc = held.isel(time=slice(s, s + ctx)).diffusion.forecast(
            model, lead=lead, n=MEMBERS, **GEN
        )
        ens.append(fc.values)
        truth.append(held.values[s + ctx : s + ctx + lead])
        last.append(held.values[s + ctx - 1])
    ens, truth, last = np.stack(ens, 1), np.stack(truth), np.stack(last)
    rng = np.random.default_rng(0)
    clim = train.values[rng.choice(train.sizes["time"], 100, replace=False)]
    # Fair CRPS for the ensembles (no penalty for having few members); persistence is a
    # single deterministic member, whose CRPS is its mean absolute error.
    score = _crps(ens, truth, fair=True)
    score_clim = _crps(np.broadcast_to(clim[:, None, None], (100, *truth.shape)), truth, True)
    score_pers = _crps(np.broadcast_to(last[:, None], truth.shape)[None], truth, False)
    assert np.all(score < score_clim), (score, score_clim)
    assert np.all(score < score_pers), (score, score_pers)


def _fine_psd(fields: np.ndarray, like: xr.DataArray, kmin: float) -> np.ndarray:
    v = fields.reshape(-1, GRID, GRID)
    da = xr.DataArray(v, dims=("sample", "y", "x"), coords={"y": like.y, "x": like.x})
    psd = dg.spatial_psd(da)
    return psd.where(psd.wavenumber > kmin, drop=True).values


def test_downscaling_matches_coarse_and_is_sharper_than_bicubic(trained):
    model, _, held = trained
    factor = 4
    fine, truth, bicubic = [], [], []
    for s in STARTS[:4]:
        window = held.isel(time=slice(s, s + FRAMES))
        coarse = window.coarsen(y=factor, x=factor).mean()
        out = coarse.diffusion.downscale(model, n=MEMBERS, factor=factor, **GEN)
        again = block_mean(torch.from_numpy(out.values), factor).numpy()
        scale = np.abs(coarse.values).max()
        np.testing.assert_allclose(
            again, np.broadcast_to(coarse.values, again.shape), rtol=0, atol=1e-3 * scale
        )
        assert float(out.min()) >= 0
        fine.append(out.values)
        truth.append(window.values)
        cubic = zoom(coarse.values, (1, factor, factor), order=3, grid_mode=True, mode="nearest")
        bicubic.append(np.clip(cubic, 0, None))
    # Wavenumbers the coarse grid cannot carry: above its Nyquist, 1 / (2 · 4 · 8.8 km).
    kmin = 1.0 / (2 * factor * float(held.x[1] - held.x[0]))
    ref = _fine_psd(np.stack(truth), held, kmin)
    err = np.mean(np.abs(np.log10(_fine_psd(np.stack(fine), held, kmin) / ref)))
    err_cubic = np.mean(np.abs(np.log10(_fine_psd(np.stack(bicubic), held, kmin) / ref)))
    assert err < err_cubic, (err, err_cubic)
