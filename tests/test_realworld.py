"""NaN masks, several variables and time-coordinate conditioning."""

import numpy as np
import pytest
import xarray as xr
from conftest import TINY_NET, make_series

from xdiffusion.io.timefeatures import time_features

FIT = dict(frames=4, steps=3, batch_size=2, progress=False, device="cpu", net=TINY_NET)
GEN = dict(steps=3, progress=False)


def test_static_nan_cells_come_back_nan():
    da = make_series(nt=60)
    da[:, :3, :5] = np.nan  # outside the "radar domain" at every time step
    da[10, 8, 8] = np.nan  # an occasional missing value
    model = da.diffusion.fit(**FIT)
    assert not model.valid[0, :3, :5].any() and model.valid[0, 8, 8]
    assert np.isfinite(model.history["loss"]).all()
    ens = da.isel(time=slice(0, 4)).diffusion.sample(model, n=2, **GEN)
    assert np.isnan(ens.values[:, :, :3, :5]).all()
    assert np.isfinite(ens.values[:, :, 3:, :]).all()
    gappy = da.isel(time=slice(8, 14))
    filled = gappy.diffusion.interpolate(model, n=1, **GEN)
    assert np.isfinite(filled.values[0, 2, 8, 8])  # the missing value is filled
    assert np.isnan(filled.values[0, :, :3, :5]).all()
    np.testing.assert_array_equal(filled.values[0, 0, 3:], gappy.values[0, 3:])


def test_several_variables_jointly():
    pr = make_series(nt=60)
    tas = (280 + 5 * np.sin(np.arange(60) / 10))[:, None, None] + 0 * pr.values
    tas = tas + np.random.default_rng(0).normal(0, 1, pr.shape)
    ds = xr.Dataset(
        {
            "pr": pr,
            "tas": (
                pr.dims,
                tas.astype("float32"),
                {"units": "K", "standard_name": "air_temperature"},
            ),
        }
    )
    model = ds.diffusion.fit(transform={"pr": "sqrt", "tas": "none"}, **FIT)
    assert model.variables == ["pr", "tas"]
    assert model.net_config.channels == 2
    out = ds.isel(time=slice(0, 4)).diffusion.sample(model, n=2, **GEN)
    assert set(out.data_vars) == {"pr", "tas"}
    assert out.pr.attrs["units"] == "mm h-1" and out.tas.attrs["units"] == "K"
    assert float(out.pr.min()) >= 0
    lo, hi = float(ds.tas.min()), float(ds.tas.max())
    assert lo - 1e-3 <= float(out.tas.min()) and float(out.tas.max()) <= hi + 1e-3
    with pytest.raises(ValueError, match="lacks the model's variable"):
        ds[["pr"]].diffusion.sample(model, n=1)


@pytest.mark.parametrize("calendar", ["standard", "360_day", "noleap"])
def test_time_features_any_calendar(calendar):
    t = xr.date_range(
        "2001-01-01", periods=4, freq="6h", calendar=calendar, use_cftime=calendar != "standard"
    )
    f = time_features(np.asarray(t), ["season", "hour"])
    assert f.shape == (4, 4)
    np.testing.assert_allclose(
        f[:, 2], np.sin(2 * np.pi * np.array([0, 6, 12, 18]) / 24), atol=1e-6
    )
    np.testing.assert_allclose(f[0, :2], [0.0, 1.0], atol=1e-6)


def test_seasonal_cycle_conditioning():
    """Trained on data whose level follows the season, samples follow the template's season."""
    t = xr.date_range("2000-01-01", periods=1460, freq="6h")
    season = np.sin(2 * np.pi * (np.asarray(t.day_of_year) - 1) / 365.25)
    rng = np.random.default_rng(0)
    vals = 2.0 * season[:, None, None] + 0.3 * rng.normal(size=(1460, 8, 8))
    da = xr.DataArray(
        vals.astype("float32"),
        dims=("time", "y", "x"),
        coords={"time": t, "y": np.arange(8.0), "x": np.arange(8.0)},
        name="anom",
        attrs={"units": "K"},
    )
    model = da.diffusion.fit(
        frames=2,
        steps=250,
        batch_size=16,
        transform="none",
        lr=2e-3,
        warmup=20,
        time_features="season",
        progress=False,
        device="cpu",
        net={"width": 8, "mults": [1, 2]},
    )
    spring = da.sel(time="2000-04-01").isel(time=slice(0, 2))  # sin > 0
    autumn = da.sel(time="2000-10-01").isel(time=slice(0, 2))  # sin < 0
    a = spring.diffusion.sample(model, n=4, steps=10, progress=False)
    b = autumn.diffusion.sample(model, n=4, steps=10, progress=False)
    assert float(a.mean()) > 0.5 and float(b.mean()) < -0.5
