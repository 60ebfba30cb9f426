"""The default dry threshold follows the data's units (0.01 mm h-1 of water).

Files in kg m-2 s-1 (CMIP, CORDEX), mm day-1 or amounts per step (ERA5's metres per
hour, monthly totals in kg m-2) must get the same physical threshold as mm h-1 data,
in their own units, for decoding to exact zeros, nll's dry class and the learned
transform's mask.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import xarray as xr
from conftest import TINY_NET

from xdiffusion.cli import main
from xdiffusion.io.calendar import TimeStep
from xdiffusion.io.conform import DRY_RATE, default_dry_threshold
from xdiffusion.testing import file_encoding, monthly_dataset, rotated_pole_dataset

FIT = dict(frames=4, steps=2, batch_size=2, progress=False, device="cpu", net=TINY_NET)
HOUR, DAY = TimeStep("seconds", 3600.0), TimeStep("seconds", 86400.0)
MONTH = TimeStep("months", 1)
MEAN_MONTH_HOURS = 365.2425 / 12 * 24


@pytest.mark.parametrize(
    ("units", "step", "expected"),
    [
        ("mm h-1", None, 0.01),
        ("mm/h", DAY, 0.01),  # a rate does not depend on the step
        ("mm day-1", None, 0.24),
        ("mm d-1", None, 0.24),
        ("kg m-2 s-1", None, 0.01 / 3600),  # 1 kg m-2 of water is 1 mm deep
        ("kg m-2 d-1", None, 0.24),
        ("m s-1", None, 1e-5 / 3600),
        ("m", HOUR, 1e-5),  # ERA5 total precipitation: metres per hourly step
        ("mm", DAY, 0.24),
        ("kg m-2", MONTH, 0.01 * MEAN_MONTH_HOURS),
        ("mm", None, 0.01),  # an amount over an unknown step: as given, in data units
        ("mm", TimeStep("numeric", 1.0), 0.01),
        ("K", None, 0.01),  # not precipitation: 0.01 in the data's units, as before
        ("1", None, 0.01),
        (None, None, 0.01),
        ("", None, 0.01),
        ("not a unit", None, 0.01),
    ],
)
def test_default_dry_threshold_in_units(units, step, expected):
    value, how = default_dry_threshold(units, step)
    assert value == pytest.approx(expected, rel=1e-10)
    assert isinstance(how, str) and how.startswith("0.01")
    if units == "mm h-1":
        assert value == DRY_RATE[0]  # exactly, not 0.010000000000000002: old fingerprints


def test_how_says_what_was_assumed():
    assert "no units" in default_dry_threshold(None)[1]
    assert "unknown length" in default_dry_threshold("mm")[1]
    assert "1 day step" in default_dry_threshold("mm", DAY)[1]
    assert "not a precipitation" in default_dry_threshold("K")[1]


def test_rotated_pole_file_in_kg_m2_s1_gets_the_same_physical_threshold(tmp_path):
    """A CORDEX-like file on disk (kg m-2 s-1): no warning, dry values decode to zeros,
    and the model's nll uses the threshold in the file's units."""
    path = tmp_path / "pr.nc"
    ds = rotated_pole_dataset(nt=48)
    ds.to_netcdf(path, encoding=file_encoding(ds))
    with xr.open_dataset(path) as ds:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            model = ds.pr.diffusion.fit(**FIT)
        flux = 0.01 / 3600
        assert model.dry_thresholds == [pytest.approx(flux, rel=1e-9)]
        assert model.codec[0].dry_below == pytest.approx(flux, rel=1e-9)
        ens = ds.pr.isel(time=slice(0, 4)).diffusion.sample(model, n=2, steps=3, progress=False)
        v = ens.values
        assert not ((v > 0) & (v < flux)).any()  # nothing generated in (0, threshold)
        r = model.nll(ds.pr.isel(time=slice(0, 8)), n_lambda=2)
        assert float(r.attrs["dry_threshold"]) == pytest.approx(flux, rel=1e-6)


def test_monthly_amounts_scale_with_the_step():
    """Monthly totals in kg m-2 (0.01 mm h-1 over a mean month: 7.3 kg m-2)."""
    ds = monthly_dataset(nt=24)
    totals = (ds.pr * MEAN_MONTH_HOURS).assign_attrs(units="kg m-2")
    model = totals.diffusion.fit(**FIT)
    assert model.dry_thresholds == [pytest.approx(0.01 * MEAN_MONTH_HOURS, rel=1e-9)]


def _fingerprint(directory) -> dict:
    (meta,) = sorted(directory.glob("*.json"))
    return json.loads(meta.read_text())["fingerprint"]


def test_per_variable_mapping_and_numbers(tmp_path):
    ds = rotated_pole_dataset(nt=32)
    ds["pr_h"] = (ds.pr * 3600).assign_attrs(units="mm h-1")
    model = ds[["pr", "pr_h"]].diffusion.fit(
        dry_threshold={"pr_h": 0.005}, checkpoint_dir=tmp_path / "ck", **FIT
    )
    assert model.dry_thresholds == [pytest.approx(0.01 / 3600, rel=1e-9), 0.005]
    assert _fingerprint(tmp_path / "ck")["dry_threshold"] == model.dry_thresholds
    given = ds.pr.diffusion.fit(dry_threshold=1e-6, **FIT)
    assert given.dry_thresholds == [1e-6]


def test_one_threshold_keeps_the_old_fingerprint(series, tmp_path):
    """All variables with one threshold record a number, as before per-variable values,
    so that checkpoints written then still resume."""
    series.isel(time=slice(0, 40)).diffusion.fit(checkpoint_dir=tmp_path, **FIT)
    assert _fingerprint(tmp_path)["dry_threshold"] == 0.01


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("dry", "dry_threshold must be 'auto'"),
        (float("nan"), "dry_threshold"),
        ({"tas": 0.1}, "not variables of the data"),
        ({"pr": "wet"}, "dry_threshold must be 'auto'"),
    ],
)
def test_errors_name_the_argument(series, value, match):
    with pytest.raises(ValueError, match=match):
        series.isel(time=slice(0, 40)).diffusion.fit(dry_threshold=value, **FIT)


def test_cli_fit_on_a_flux_file(tmp_path):
    path = tmp_path / "pr.nc"
    ds = rotated_pole_dataset(nt=32)
    ds.to_netcdf(path, encoding=file_encoding(ds))
    common = ["--frames", "4", "--steps", "2", "--batch-size", "2", "--quiet"]
    common += ["--device", "cpu", "--net", json.dumps(TINY_NET)]
    assert main(["fit", str(path), "--var", "pr", "--out", str(tmp_path / "a"), *common]) == 0
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["variables"][0]["dry_threshold"] == pytest.approx(0.01 / 3600, rel=1e-9)
    out = tmp_path / "b"
    assert main(["fit", str(path), "--out", str(out), "--dry-threshold", "1e-6", *common]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["variables"][0]["dry_threshold"] == 1e-6
    with pytest.raises(SystemExit):
        main(["fit", str(path), "--out", str(tmp_path / "c"), "--dry-threshold", "x", *common])
    assert not np.isnan(cfg["variables"][0]["dry_threshold"])
