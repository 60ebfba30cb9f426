"""CF compliance of written outputs, the command line and the demo."""

import json

import numpy as np
import pytest
import xarray as xr

from xdiffusion.cli import main

GEN = dict(steps=3, progress=False)


def _compliance(path, tmp_path):
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
    failed = [
        (c["name"], c["msgs"])
        for c in result.get("high_priorities", [])
        if c["value"][0] < c["value"][1]
    ]
    return failed, result


def test_netcdf_outputs_pass_cf_checker(tiny_model, series, tmp_path):
    ens = series.isel(time=slice(0, 4)).to_dataset().diffusion.sample(tiny_model, n=2, **GEN)
    path = tmp_path / "ens.nc"
    ens.to_netcdf(path)
    high, _ = _compliance(path, tmp_path)
    assert high == [], high
    gappy = series.isel(time=slice(0, 8)).to_dataset().copy(deep=True)  # not the fixture
    gappy["pr"][{"time": [2, 3]}] = np.nan
    filled = gappy.diffusion.interpolate(tiny_model, n=2, **GEN)
    path = tmp_path / "filled.nc"
    filled.to_netcdf(path)
    high, _ = _compliance(path, tmp_path)
    assert high == [], high


def test_cli_fit_and_sample(series, tmp_path):
    data = tmp_path / "data.nc"
    series.isel(time=slice(0, 60)).to_dataset().to_netcdf(data)
    model = tmp_path / "model"
    assert (
        main(
            [
                "fit",
                str(data),
                "--var",
                "pr",
                "--out",
                str(model),
                "--frames",
                "4",
                "--steps",
                "2",
                "--batch-size",
                "2",
                "--quiet",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["variables"][0]["name"] == "pr" and cfg["frames"] == 4
    out = tmp_path / "ens.nc"
    assert (
        main(
            [
                "sample",
                str(model),
                "--like",
                str(data),
                "--var",
                "pr",
                "--n",
                "2",
                "--steps",
                "2",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    ens = xr.open_dataset(out)
    assert ens.pr.shape == (2, 60, 16, 16)
    assert ens.pr.attrs["units"] == "mm h-1"


def test_cli_errors(tmp_path):
    with pytest.raises(SystemExit):
        main(["fit", str(tmp_path / "missing.nc"), "--out", str(tmp_path / "m")])


def test_demo_tiny(tmp_path):
    from xdiffusion.demo import run_demo

    summary = run_demo(
        tmp_path / "demo", tiny=True, size=16, frames=4, progress=False, device="cpu"
    )
    for name in (
        "ensemble.nc",
        "interpolated.nc",
        "forecast.nc",
        "downscaled.nc",
        "report.nc",
        "report.png",
    ):
        assert (tmp_path / "demo" / name).exists(), name
    assert (tmp_path / "demo" / "model" / "config.json").exists()
    assert summary["downscale_max_block_error"] < 1e-3
