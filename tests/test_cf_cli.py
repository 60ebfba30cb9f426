"""CF compliance of written outputs, the command line and the demo."""

import json

import numpy as np
import pytest
import xarray as xr
from conftest import cf_high_failures

from xdiffusion.cli import main

GEN = dict(steps=3, progress=False)


def test_netcdf_outputs_pass_cf_checker(tiny_model, series, tmp_path):
    ens = series.isel(time=slice(0, 4)).to_dataset().diffusion.sample(tiny_model, n=2, **GEN)
    path = tmp_path / "ens.nc"
    ens.to_netcdf(path)
    high, _ = cf_high_failures(path, tmp_path)
    assert high == [], high
    gappy = series.isel(time=slice(0, 8)).to_dataset().copy(deep=True)  # not the fixture
    gappy["pr"][{"time": [2, 3]}] = np.nan
    filled = gappy.diffusion.interpolate(tiny_model, n=2, **GEN)
    path = tmp_path / "filled.nc"
    filled.to_netcdf(path)
    high, _ = cf_high_failures(path, tmp_path)
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
    from xdiffusion.demo import format_summary, run_demo

    summary = run_demo(
        tmp_path / "demo", tiny=True, size=16, frames=4, progress=False, device="cpu", mode="fit"
    )
    for name in (
        "ensemble.nc",
        "interpolated.nc",
        "forecast.nc",
        "downscaled.nc",
        "report.nc",
        "report.png",
        "ensemble.png",
        "interpolation.png",
        "forecast.png",
        "downscaling.png",
        "loss.png",
        "summary.json",
    ):
        assert (tmp_path / "demo" / name).exists(), name
        assert name in summary["files"]
    assert (tmp_path / "demo" / "model" / "config.json").exists()
    assert summary["downscale_max_block_error"] < 1e-3
    assert "crps" in summary["evaluation"]  # the report has observations
    text = format_summary(summary)
    assert str((tmp_path / "demo").resolve()) in text
    assert "interpolation.png" in text and "undertrained" in text
    assert "--steps 5000" in text
    assert max(len(line) for line in text.splitlines()) <= 100


def test_demo_uses_the_reference_model_for_generation(tmp_path):
    from xdiffusion.demo import format_summary, run_demo

    both = run_demo(tmp_path / "both", tiny=True, size=16, frames=4, progress=False)
    assert both["pretrained"]["name"] == "synthetic-precip" and both["mode"] == "both"
    for name in ("model", "report.png", "report-quick.png", "loss.png", "ensemble.nc"):
        assert name in both["files"], name
    # the reference model's 16 × 16 grid and 8 frames, not the quick model's 4 frames
    ens = xr.open_dataset(tmp_path / "both" / "ensemble.nc")
    assert ens.sizes["time"] == 12
    text = format_summary(both)
    assert "reference model" in text and "report-quick.png" in text
    # the reference model beats linear interpolation, also in this seconds-long run
    rmse = both["interpolation_rmse"]
    assert rmse["diffusion_mean"] < rmse["linear"], rmse
    only = run_demo(tmp_path / "ref", tiny=True, progress=False, mode="pretrained")
    assert "model" not in only["files"] and "fit_seconds" not in only
    assert not (tmp_path / "ref" / "model").exists()
    with pytest.raises(ValueError, match="mode must be one of"):
        run_demo(tmp_path / "bad", mode="everything")
