"""Real-file round trips: CF fixtures written to netCDF, every method and the CLI on them.

Each output is written to netCDF and must pass compliance-checker cf:1.8 with no
high-priority failure, keep its grid mapping, bounds (regenerated or dropped with their
attribute, never dangling), auxiliary latitude/longitude and global attributes, and encode
time with the input's units and calendar in a CF-1.8 type.
"""

import json

import numpy as np
import pytest
import xarray as xr
from conftest import TINY_NET

from xdiffusion.cli import main
from xdiffusion.io.grids import rotated_to_geographic
from xdiffusion.testing import COARSE_FACTOR, ROTATED_POLE, write_fixtures

GEN = dict(n=2, steps=2, progress=False, seed=1)
REQUIRED_GLOBAL = ("institution", "experiment_id", "custom_attribute", "frequency")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_fixtures(tmp_path_factory.mktemp("fixtures"))


def _fit(path):
    ds = xr.open_dataset(path)
    return ds.diffusion.fit(
        frames=4, steps=2, batch_size=2, progress=False, device="cpu", net=TINY_NET, seed=0
    )


@pytest.fixture(scope="module")
def models(files):
    return {name: _fit(files[name]) for name in ("rotated_pole", "regular_latlon")}


def compliance(path, tmp_path):
    pytest.importorskip("compliance_checker")
    from compliance_checker.runner import CheckSuite, ComplianceChecker

    CheckSuite.load_all_available_checkers()
    report = tmp_path / f"{path.stem}-cf.json"
    ComplianceChecker.run_checker(
        str(path),
        checker_names=["cf:1.8"],
        verbose=0,
        criteria="normal",
        output_filename=str(report),
        output_format="json",
    )
    result = json.loads(report.read_text())["cf:1.8"]
    return [
        (c["name"], c["msgs"])
        for c in result.get("high_priorities", [])
        if c["value"][0] < c["value"][1]
    ]


def check_file(path, tmp_path, source):
    """The checks every output file must pass; returns the reopened Dataset."""
    assert compliance(path, tmp_path) == []
    raw = xr.open_dataset(path, decode_times=False, mask_and_scale=False)
    out = xr.open_dataset(path)
    # no attribute points at a variable the file lacks
    for name, var in raw.variables.items():
        for attr in ("bounds", "grid_mapping", "ancillary_variables"):
            if attr in var.attrs:
                for ref in str(var.attrs[attr]).replace(":", " ").split():
                    assert ref in raw.variables, (name, attr, ref)
    # no _FillValue on coordinates or bounds; time in the input's units/calendar, not int64
    for name in raw.coords:
        assert "_FillValue" not in raw[name].attrs, name
    src_time = xr.open_dataset(source, decode_times=False)["time"]
    assert raw["time"].attrs["units"] == src_time.attrs["units"]
    assert raw["time"].attrs.get("calendar") == src_time.attrs.get("calendar")
    assert raw["time"].dtype != np.int64
    if "time_bnds" in raw:
        assert raw["time_bnds"].dtype != np.int64
    # global attributes merged
    src = xr.open_dataset(source)
    for key in REQUIRED_GLOBAL:
        assert out.attrs[key] == src.attrs[key], key
    assert out.attrs["title"] == src.attrs["title"]
    assert "comment" not in out.attrs
    assert out.attrs["Conventions"] == "CF-1.8"
    assert out.attrs["history"].startswith(src.attrs["history"] + "\n")
    assert "xdiffusion" in out.attrs["source"] and src.attrs["source"] in out.attrs["source"]
    assert out["pr"].attrs["units"] == src["pr"].attrs["units"]
    assert out["pr"].attrs["cell_methods"] == "time: mean"
    return out


def _gappy(ds):
    gappy = ds.copy(deep=True)
    gappy["pr"][{"time": [5, 6]}] = np.nan
    return gappy


@pytest.mark.parametrize("name", ["rotated_pole", "regular_latlon"])
def test_every_method_keeps_the_files_description(name, files, models, tmp_path):
    model = models[name]
    src = files[name]
    ds = xr.open_dataset(src)
    fine_short = ds.isel(time=slice(0, 8))
    outputs = {
        "sample": model.sample(fine_short, **GEN),
        "interpolate": model.interpolate(_gappy(fine_short), **GEN),
        "forecast": model.forecast(fine_short, lead=4, **GEN),
    }
    for method, obj in outputs.items():
        path = tmp_path / f"{name}-{method}.nc"
        obj.to_netcdf(path)
        out = check_file(path, tmp_path, src)
        assert "time_bnds" in out, method
        if name == "rotated_pole":
            assert out["pr"].attrs["grid_mapping"] == "rotated_pole"
            assert out["rotated_pole"].attrs == ds["rotated_pole"].attrs
            np.testing.assert_array_equal(out["lat"].values, ds["lat"].values)
            assert out["lat"].attrs["bounds"] == "lat_vertices" and "lat_vertices" in out
        else:
            assert "lat_bnds" in out and out["lat"].attrs["bounds"] == "lat_bnds"
    # forecast: new steps continue the axis and their bounds
    fc = xr.open_dataset(tmp_path / f"{name}-forecast.nc")
    step = ds["time"].values[1] - ds["time"].values[0]
    expected = [ds["time"].values[7] + step * (k + 1) for k in range(4)]
    assert list(fc["time"].values) == expected
    assert list(fc["time_bnds"].values[:, 0]) == [t - step / 2 for t in expected]
    assert list(fc["time_bnds"].values[:, 1]) == [t + step / 2 for t in expected]


@pytest.mark.parametrize("name", ["rotated_pole", "regular_latlon"])
def test_downscale_regenerates_the_fine_grid_description(name, files, models, tmp_path):
    model = models[name]
    coarse = xr.open_dataset(files[f"{name}_coarse"]).isel(time=slice(0, 4))
    fine = xr.open_dataset(files[name])
    out = model.downscale(coarse, factor=COARSE_FACTOR, **GEN)
    path = tmp_path / f"{name}-downscale.nc"
    out.to_netcdf(path)
    out = check_file(path, tmp_path, files[f"{name}_coarse"])
    ydim, xdim = fine["pr"].dims[1:]
    # 1-D fine coordinates and their bounds equal the true fine grid's
    for dim in (ydim, xdim):
        np.testing.assert_allclose(out[dim].values, fine[dim].values, rtol=0, atol=1e-9)
        np.testing.assert_allclose(
            out[f"{dim}_bnds"].values, fine[f"{dim}_bnds"].values, rtol=0, atol=1e-9
        )
    if name == "rotated_pole":
        assert out["pr"].attrs["grid_mapping"] == "rotated_pole"
        assert "rotated_pole" in out
        # fine 2-D lat/lon from the grid mapping, not interpolated
        lat, lon = rotated_to_geographic(
            fine["rlat"].values[:, None],
            fine["rlon"].values[None, :],
            ROTATED_POLE["grid_north_pole_latitude"],
            ROTATED_POLE["grid_north_pole_longitude"],
        )
        np.testing.assert_allclose(out["lat"].values, lat, atol=1e-9)
        np.testing.assert_allclose(out["lon"].values, lon, atol=1e-9)
        assert "bounds" not in out["lat"].attrs  # coarse vertices cannot describe fine cells
        assert "comment" not in out["lat"].attrs


def test_downscale_interpolates_latlon_without_a_grid_mapping(files, models):
    coarse = xr.open_dataset(files["rotated_pole_coarse"]).isel(time=slice(0, 2))
    coarse = coarse.drop_vars("rotated_pole")
    fine = xr.open_dataset(files["rotated_pole"])
    out = models["rotated_pole"].downscale(coarse, factor=COARSE_FACTOR, **GEN)
    assert "grid_mapping" not in out["pr"].attrs
    assert "interpolated" in out["lat"].attrs["comment"]
    # a 0.11° grid: bilinear on the sphere is within a small fraction of a cell
    np.testing.assert_allclose(out["lat"].values, fine["lat"].values, atol=2e-3)
    np.testing.assert_allclose(out["lon"].values, fine["lon"].values, atol=2e-3)


def test_dataarray_outputs_keep_what_a_dataarray_can_hold(files, models, tmp_path):
    ds = xr.open_dataset(files["rotated_pole"], decode_coords="all").isel(time=slice(0, 8))
    out = models["rotated_pole"].forecast(ds["pr"], lead=2, **GEN)
    assert isinstance(out, xr.DataArray)
    assert out.attrs["grid_mapping"] == "rotated_pole" and "rotated_pole" in out.coords
    assert "bounds" not in out["time"].attrs  # a DataArray cannot hold time_bnds
    assert "lat" in out.coords and "bounds" not in out["lat"].attrs
    path = tmp_path / "da.nc"
    from xdiffusion.io.cf import to_dataset

    to_dataset(out).to_netcdf(path)
    assert compliance(path, tmp_path) == []
    assert xr.open_dataset(path).attrs["Conventions"] == "CF-1.8"


def test_keep_attrs_false_drops_the_inputs_attributes(files, models):
    ds = xr.open_dataset(files["regular_latlon"]).isel(time=slice(0, 4))
    with xr.set_options(keep_attrs=False):
        out = models["regular_latlon"].sample(ds, **GEN)
    assert "custom_attribute" not in out.attrs and "units" not in out["pr"].attrs
    assert out.attrs["Conventions"] == "CF-1.8" and "history" in out.attrs
    out = models["regular_latlon"].sample(ds, **GEN)
    assert out.attrs["custom_attribute"] == "kept" and out["pr"].attrs["units"] == "mm h-1"


def test_cli_on_files(files, tmp_path):
    src = files["rotated_pole"]
    model = tmp_path / "model"
    common = ["--quiet", "--device", "cpu"]
    assert main(["fit", str(src), "--var", "pr", "--out", str(model), "--frames", "4",
                 "--steps", "2", "--batch-size", "2", "--net", json.dumps(TINY_NET),
                 *common]) == 0  # fmt: skip
    jobs = {
        "sample": ["sample", str(model), "--like", str(src), "--n", "2", "--steps", "2"],
        "forecast": ["forecast", str(model), str(src), "--lead", "3", "--n", "2", "--steps", "2"],
        "downscale": ["downscale", str(model), str(files["rotated_pole_coarse"]), "--factor",
                      str(COARSE_FACTOR), "--n", "2", "--steps", "2"],
    }  # fmt: skip
    for method, args in jobs.items():
        out = tmp_path / f"cli-{method}.nc"
        assert main([*args, "--out", str(out), *common]) == 0, method
        source = files["rotated_pole_coarse"] if method == "downscale" else src
        got = check_file(out, tmp_path, source)
        assert got["pr"].attrs["grid_mapping"] == "rotated_pole" and "rotated_pole" in got
        assert "lat" in got.coords and "time_bnds" in got


@pytest.mark.parametrize("calendar", ["standard", "noleap", "360_day"])
def test_monthly_forecast_file(calendar, files, tmp_path):
    """Monthly means: the forecast's stamps are the next mid-months, its bounds the next
    month starts, in the input's units and calendar, and the file passes the checker."""
    src = files[f"monthly_{calendar}"]
    ds = xr.open_dataset(src)
    model = ds.diffusion.fit(
        frames=4, steps=2, batch_size=2, progress=False, device="cpu", net=TINY_NET, seed=0
    )
    out = model.forecast(ds, lead=3, **GEN)
    path = tmp_path / f"monthly-{calendar}.nc"
    out.to_netcdf(path)
    got = check_file(path, tmp_path, src)
    lower = got["time_bnds"].values[:, 0]
    upper = got["time_bnds"].values[:, 1]
    last = ds["time_bnds"].values[-1, 1]  # the first new month starts where the data end
    assert lower[0] == last and all(u == lo for u, lo in zip(upper[:-1], lower[1:]))
    assert all(t.day == 1 and t.hour == 0 for t in map(_as_date, lower))
    mid = [a + (b - a) / 2 for a, b in zip(lower, upper)]
    assert [_as_date(t) for t in got["time"].values] == [_as_date(t) for t in mid]


def _as_date(t):
    """A cftime date or numpy datetime64 as something with .day and .hour."""
    if isinstance(t, np.datetime64):
        import pandas as pd

        return pd.Timestamp(t)
    return t
