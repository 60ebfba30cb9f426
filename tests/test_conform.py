"""The model knows its data: inputs in other units are converted (or refused), a reversed
Y or X is reordered, and a grid of another region or resolution is refused."""

from __future__ import annotations

import warnings

import dask
import dask.array as dsa
import numpy as np
import pytest
import xarray as xr
from conftest import TINY_NET, CountingScheduler

from xdiffusion.cli import main
from xdiffusion.io.conform import Conform, plan
from xdiffusion.io.spec import DataSpec, VariableSpec
from xdiffusion.testing import file_encoding, regular_latlon_dataset

GEN = {"steps": 2, "progress": False, "seed": 3}
#: mm day-1 per mm h-1.
HOURS_PER_DAY = 24.0
#: Float32 tolerance of values converted to the model's units and back.
RTOL = 1e-5


def _per_day(obj):
    """``obj`` (mm h-1) in mm day-1, labelled so."""
    if isinstance(obj, xr.Dataset):
        return obj.assign(pr=_per_day(obj.pr))
    return (obj * HOURS_PER_DAY).assign_attrs(units="mm day-1")


def _flip(obj, *dims):
    return obj.isel({d: slice(None, None, -1) for d in dims})


def _gappy(series, t=8):
    g = series.isel(time=slice(0, t)).copy()
    g[3:5] = np.nan
    return g


@pytest.fixture(scope="module")
def latlon(tmp_path_factory):
    """A regular lat-lon file (mm h-1) with cells NaN at every step, and a tiny model
    fitted on it as opened from disk."""
    tmp = tmp_path_factory.mktemp("conform")
    ds = regular_latlon_dataset(nt=32)
    ds["pr"][:, :3, :5] = np.nan  # outside the domain: the model's static mask
    path = tmp / "latlon.nc"
    ds.to_netcdf(path, encoding=file_encoding(ds))
    opened = xr.open_dataset(path)
    model = opened.diffusion.fit(
        frames=4, steps=3, batch_size=2, progress=False, device="cpu", net=TINY_NET
    )
    return tmp, path, model


# ------------------------------------------------------------------ units


@pytest.mark.parametrize("task", ["sample", "interpolate", "forecast"])
def test_other_units_converted_and_back(tiny_model, series, task):
    data = _gappy(series)
    run = {
        "sample": lambda d: tiny_model.sample(d, **GEN),
        "interpolate": lambda d: tiny_model.interpolate(d, **GEN),
        "forecast": lambda d: tiny_model.forecast(d, 3, **GEN),
    }[task]
    hourly = run(data)
    daily = run(_per_day(data))
    assert daily.attrs["units"] == "mm day-1" and hourly.attrs["units"] == "mm h-1"
    np.testing.assert_allclose(daily.values, HOURS_PER_DAY * hourly.values, rtol=RTOL, atol=1e-6)
    if task == "interpolate":  # observations come back as given, bit for bit
        seen = daily.pr_status.values == 1
        np.testing.assert_array_equal(daily.values[0][seen], _per_day(data).values[seen])


def test_downscale_units_and_orientation(tiny_model, series):
    coarse = series.isel(time=slice(0, 8)).coarsen(y=4, x=4).mean()
    base = tiny_model.downscale(coarse, factor=4, **GEN)
    out = tiny_model.downscale(_flip(_per_day(coarse), "y"), factor=4, **GEN)
    assert out.attrs["units"] == "mm day-1"
    np.testing.assert_array_equal(out.y.values, base.y.values[::-1])
    expected = HOURS_PER_DAY * base.values[..., ::-1, :]
    np.testing.assert_allclose(out.values, expected, rtol=RTOL, atol=1e-6)
    # like= gives the output its coordinates, so its order too
    like = _flip(series.isel(time=slice(0, 8)), "x")
    by_like = tiny_model.downscale(coarse, like=like, **GEN)
    np.testing.assert_array_equal(by_like.x.values, like.x.values)
    np.testing.assert_array_equal(by_like.values, base.values[..., ::-1])


def test_same_units_spelt_otherwise_pass_unchanged(tiny_model, series):
    tmpl = series.isel(time=slice(0, 4))
    out = tiny_model.sample(tmpl.assign_attrs(units="mm/h"), **GEN)
    assert out.attrs["units"] == "mm/h"
    np.testing.assert_array_equal(out.values, tiny_model.sample(tmpl, **GEN).values)


def test_incompatible_units_refused(tiny_model, series):
    flux = (series.isel(time=slice(0, 4)) / 3600).assign_attrs(units="kg m-2 s-1")
    with pytest.raises(ValueError, match="template variable 'pr'") as err:
        tiny_model.sample(flux, **GEN)
    message = str(err.value)
    assert "'kg m-2 s-1'" in message and "'mm h-1'" in message
    assert "3600" in message and "assign_attrs(units='mm h-1')" in message
    with pytest.raises(ValueError, match="not a unit"):
        tiny_model.sample(flux.assign_attrs(units="mm per hour of rain"), **GEN)


def test_missing_units_assumed_with_a_warning(tiny_model, series):
    tmpl = series.isel(time=slice(0, 4))
    bare = tmpl.copy()
    bare.attrs = {}
    with pytest.warns(UserWarning, match="no units attribute; assuming the model's units"):
        out = tiny_model.sample(bare, **GEN)
    assert out.attrs["units"] == "mm h-1"
    np.testing.assert_array_equal(out.values, tiny_model.sample(tmpl, **GEN).values)


def test_offset_conversions_only_for_unbounded_transforms():
    tas = xr.DataArray(np.zeros((2, 3, 3)), dims=("time", "y", "x"), attrs={"units": "degC"})
    spec = DataSpec((VariableSpec("tas", units="K"),))
    axes = {"T": "time", "Y": "y", "X": "x"}
    conform = plan([tas], ["tas"], axes, spec, "data", bounded=[False])
    (u,) = conform.units
    assert (u.scale, u.offset, u.back_offset) == pytest.approx((1.0, 273.15, -273.15))
    assert float(conform.apply([tas])[0].max()) == pytest.approx(273.15)
    with pytest.raises(ValueError, match="offset"):
        plan([tas], ["tas"], axes, spec, "data", bounded=[True])
    # nothing recorded, nothing checked
    assert isinstance(plan([tas], ["tas"], axes, None, "data"), Conform)


def test_nll_in_other_units(tiny_model, series):
    data = series.isel(time=slice(0, 8))
    hourly = tiny_model.nll(data, n_lambda=2, terms=False)
    daily = tiny_model.nll(_per_day(data), n_lambda=2, terms=False)
    assert daily == pytest.approx(hourly, rel=1e-5)


# ------------------------------------------------------------------ orientation and grid


def test_reversed_axes_same_numbers_mask_on_right_rows(latlon):
    _, path, model = latlon
    ds = xr.open_dataset(path).isel(time=slice(0, 4))
    base = model.sample(ds, **GEN)
    assert np.isnan(base.pr.values[..., :3, :5]).all()
    rev = _flip(ds, "lat")
    out = model.sample(rev, **GEN)
    np.testing.assert_array_equal(out.lat.values, rev.lat.values)
    np.testing.assert_array_equal(out.pr.values, base.pr.values[..., ::-1, :])
    assert np.isnan(out.pr.values[..., -3:, :5]).all()  # the mask, on the input's rows
    assert np.isfinite(out.pr.values[..., :-3, :]).all()
    np.testing.assert_array_equal(out.lat_bnds.values, rev.lat_bnds.values)


def test_reversed_file_in_other_units(latlon):
    """An archive written north to south in mm day-1, opened from disk."""
    tmp, path, model = latlon
    ds = xr.open_dataset(path).isel(time=slice(0, 8))
    ds["pr"][3:5] = np.nan
    base = model.interpolate(ds, **GEN)
    other = _flip(_per_day(ds), "lat", "lon")
    other_path = tmp / "north_to_south_daily.nc"
    other.to_netcdf(other_path, encoding=file_encoding(other))
    opened = xr.open_dataset(other_path)
    out = model.interpolate(opened, **GEN)
    assert out.pr.attrs["units"] == "mm day-1"
    np.testing.assert_array_equal(out.lat.values, opened.lat.values)
    np.testing.assert_array_equal(out.lon.values, opened.lon.values)
    expected = HOURS_PER_DAY * base.pr.values[..., ::-1, ::-1]
    np.testing.assert_allclose(out.pr.values, expected, rtol=RTOL, atol=1e-6)
    seen = out.pr_status.values == 1
    np.testing.assert_array_equal(out.pr.values[0][seen], opened.pr.values[seen])
    out.to_netcdf(tmp / "filled.nc")  # a valid file: bounds and flags in the input's order


def test_other_region_refused_unless_allowed(tiny_model, series, latlon):
    tmpl = series.isel(time=slice(0, 4))
    shifted = tmpl.assign_coords(y=tmpl.y + 100.0)
    with pytest.raises(ValueError, match="template grid differs from the model's") as err:
        tiny_model.sample(shifted, **GEN)
    assert "check_grid=False" in str(err.value) and "step 8.8" in str(err.value)
    out = tiny_model.sample(shifted, check_grid=False, **GEN)
    np.testing.assert_array_equal(out.y.values, shifted.y.values)
    np.testing.assert_array_equal(out.values, tiny_model.sample(tmpl, **GEN).values)
    coarser = tmpl.assign_coords(x=tmpl.x * 2)  # same shape, another resolution
    with pytest.raises(ValueError, match="'x'"):
        tiny_model.interpolate(_gappy(series).assign_coords(x=tmpl.x * 2), **GEN)
    tiny_model.sample(coarser, check_grid=False, **GEN)
    # a same-shaped file of another region
    _, path, _ = latlon
    region = xr.open_dataset(path).isel(time=slice(0, 8))
    region = region.assign(pr=region.pr.fillna(0))
    with pytest.raises(ValueError, match="grid differs"):
        tiny_model.forecast(region, 2, **GEN)
    with pytest.raises(ValueError, match="grid differs"):
        tiny_model.nll(region, n_lambda=2)
    tiny_model.nll(region, n_lambda=2, check_grid=False)
    # downscale compares the fine grid it would make
    coarse = shifted.coarsen(y=4, x=4).mean()
    with pytest.raises(ValueError, match="coarse refined ×4 grid differs"):
        tiny_model.downscale(coarse, factor=4, **GEN)
    tiny_model.downscale(coarse, factor=4, check_grid=False, **GEN)
    # the accessor has the argument too
    shifted.diffusion.sample(tiny_model, check_grid=False, **GEN)


# ------------------------------------------------------------------ lazy inputs


def test_lazy_input_in_other_units_stays_lazy(tiny_model, series):
    tmpl = _flip(_per_day(series.isel(time=slice(0, 8))), "y")
    eager = tiny_model.sample(tmpl, **GEN)
    with dask.config.set(scheduler=CountingScheduler(0)):  # nothing computed at call time
        lazy = tiny_model.sample(tmpl.chunk(time=4), **GEN)
    assert isinstance(lazy.data, dsa.Array) and lazy.attrs["units"] == "mm day-1"
    np.testing.assert_array_equal(lazy.values, eager.values)
    gappy = _flip(_per_day(_gappy(series)), "x")
    eager = tiny_model.interpolate(gappy, **GEN)
    with dask.config.set(scheduler=CountingScheduler(1)):  # the one pass locating gaps
        lazy = tiny_model.interpolate(gappy.chunk(time=4), **GEN)
    assert isinstance(lazy.data, dsa.Array)
    np.testing.assert_array_equal(lazy.values, eager.values)
    np.testing.assert_array_equal(lazy.pr_status.values, eager.pr_status.values)


# ------------------------------------------------------------------ command line


def test_cli_no_check_grid(tiny_model, series, tmp_path, capsys):
    model = tmp_path / "model"
    tiny_model.save(model)
    tmpl = series.isel(time=slice(0, 4))
    shifted = tmp_path / "shifted.nc"
    tmpl.assign_coords(y=tmpl.y + 100.0).to_dataset().to_netcdf(shifted)
    daily = tmp_path / "daily.nc"
    _per_day(tmpl).to_dataset().to_netcdf(daily)
    argv = ["sample", str(model), "--n", "1", "--steps", "2", "--quiet", "--device", "cpu"]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--like", str(shifted), "--out", str(tmp_path / "a.nc")])
    assert exc.value.code == 2 and "grid differs" in capsys.readouterr().err
    out = tmp_path / "b.nc"
    assert main([*argv, "--like", str(shifted), "--out", str(out), "--no-check-grid"]) == 0
    with warnings.catch_warnings():
        # labelled in convertible units: converted without a units warning
        warnings.filterwarnings("error", message=".*no units attribute")
        assert main([*argv, "--like", str(daily), "--out", str(tmp_path / "c.nc")]) == 0
    assert xr.open_dataset(tmp_path / "c.nc").pr.attrs["units"] == "mm day-1"
