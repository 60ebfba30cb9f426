"""Diagnostics against independent implementations and closed forms."""

from __future__ import annotations

import json

import dask.array as dsa
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from xdiffusion import diagnostics as dg

UNITS = "mm h-1"


def proj_attrs(axis: str, unit: str) -> dict:
    return {"units": unit, "axis": axis.upper(), "standard_name": f"projection_{axis}_coordinate"}


def field(values, *, spacing=8800.0, unit="m", member=False, time=None):
    """(realization,) time, y, x DataArray on a projection grid."""
    values = np.asarray(values, dtype=float)
    dims = (("realization",) if member else ()) + ("time", "y", "x")
    nt, ny, nx = values.shape[-3:]
    coords = {
        "time": pd.date_range("2000-01-01", periods=nt, freq="h") if time is None else time,
        "y": ("y", np.arange(ny) * spacing, proj_attrs("y", unit)),
        "x": ("x", np.arange(nx) * spacing, proj_attrs("x", unit)),
    }
    if member:
        coords["realization"] = np.arange(values.shape[0])
    return xr.DataArray(
        values,
        dims=dims,
        coords=coords,
        name="pr",
        attrs={"units": UNITS, "long_name": "precipitation rate"},
    )


# ----------------------------------------------------------------- reference versions


def rapsd_reference(frame: np.ndarray, d: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """pysteps.utils.spectral.rapsd re-written with numpy (mean removed first)."""
    m, n = frame.shape
    yc = np.arange(-(m // 2), m - m // 2)[:, None]
    xc = np.arange(-(n // 2), n - n // 2)[None, :]
    r_grid = np.sqrt(xc * xc + yc * yc).round()
    size = max(m, n)
    r_range = np.arange(0, size // 2 + 1) if size % 2 == 1 else np.arange(0, size // 2)
    spec = np.fft.fftshift(np.fft.fft2(frame - frame.mean()))
    spec = np.abs(spec) ** 2 / spec.size
    result = np.array([spec[r_grid == r].mean() for r in r_range])
    return result, np.fft.fftfreq(size, d=d)[r_range]


def crps_fair_brute(x: np.ndarray, y: float) -> float:
    m = x.size
    pairs = sum(abs(a - b) for a in x for b in x)
    return float(np.mean(np.abs(x - y)) - pairs / (2 * m * (m - 1)))


# -------------------------------------------------------------------------- spectra


@pytest.mark.parametrize("n", [24, 15])
def test_spatial_psd_matches_pysteps_rapsd(n):
    rng = np.random.default_rng(n)
    frames = rng.gamma(0.6, 1.0, (3, n, n))
    psd = dg.spatial_psd(field(frames, spacing=2.0, unit="km"))
    expected = np.mean([rapsd_reference(f, d=2.0)[0] for f in frames], axis=0)
    freq = rapsd_reference(frames[0], d=2.0)[1]
    np.testing.assert_allclose(psd.values, expected[1:], rtol=1e-10)
    np.testing.assert_allclose(psd["wavenumber"].values, freq[1:], rtol=1e-12)
    assert psd["wavenumber"].attrs["units"] == "km-1"


@pytest.mark.parametrize(("spacing", "unit"), [(5000.0, "m"), (5.0, "km")])
def test_spatial_psd_sinusoid_peaks_at_its_wavenumber_in_cycles_per_km(spacing, unit):
    n, cycles = 32, 4
    i = np.arange(n)
    wave = (
        np.sin(2 * np.pi * cycles * i / n)[None, :]
        + 0.5 * np.cos(2 * np.pi * cycles * i / n)[:, None]
    )
    psd = dg.spatial_psd(field(np.broadcast_to(wave, (2, n, n)), spacing=spacing, unit=unit))
    k_peak = float(psd.idxmax("wavenumber"))
    assert k_peak == pytest.approx(cycles / (n * 5.0))  # cycles per km on a 5 km grid


def test_spatial_psd_non_square_grid_and_per_cell_units():
    ny, nx = 16, 32
    wave = np.sin(2 * np.pi * 2 * np.arange(ny) / ny)[:, None] * np.ones(nx)
    da = field(wave[None], spacing=1.0, unit="km")
    psd = dg.spatial_psd(da)
    assert float(psd.idxmax("wavenumber")) == pytest.approx(2 / 16)
    plain = da.drop_vars(["x", "y"])
    per_cell = dg.spatial_psd(plain)
    assert per_cell["wavenumber"].attrs["units"] == "1"
    assert "per grid cell" in per_cell["wavenumber"].attrs["long_name"]
    np.testing.assert_allclose(per_cell.values, psd.values)
    given = dg.spatial_psd(plain, dx=2.0)
    assert float(given.idxmax("wavenumber")) == pytest.approx(2 / 32)


def test_spatial_psd_parseval():
    rng = np.random.default_rng(1)
    n = 20
    k = np.fft.fftfreq(n) * n
    ring = np.rint(np.hypot(k[:, None], k[None, :]))
    spectrum = rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n))
    spectrum[(ring > n // 2 - 1) | (ring == 0)] = 0  # band-limited: no power in the corners
    frame = np.fft.ifft2(spectrum).real
    psd = dg.spatial_psd(field(frame[None], spacing=1.0, unit="km"))
    total = float((psd * psd["wavenumber_modes"]).sum())
    assert total == pytest.approx(n * n * frame.var(), rel=1e-10)
    # Any field: the rings hold all the power but the corners'.
    white = rng.normal(size=(1, n, n))
    psd = dg.spatial_psd(field(white, spacing=1.0, unit="km"))
    total = float((psd * psd["wavenumber_modes"]).sum())
    assert 0.5 * n * n * white.var() < total < n * n * white.var()


def test_temporal_psd_sinusoid_parseval_and_brute_force():
    nt, period = 48, 4.0
    t = np.arange(nt)
    rng = np.random.default_rng(2)
    series = np.sin(2 * np.pi * t / period)[:, None, None] + 0.1 * rng.normal(size=(nt, 3, 4))
    psd = dg.temporal_psd(field(series))
    assert psd["frequency"].attrs["units"] == "h-1"
    assert float(psd.idxmax("frequency")) == pytest.approx(1 / period)
    cells = series.reshape(nt, -1).T
    brute = np.mean([np.abs(np.fft.fft(c - c.mean())) ** 2 / nt for c in cells], axis=0)[
        1 : nt // 2 + 1
    ]
    np.testing.assert_allclose(psd.values, brute, rtol=1e-10)
    total = float((psd * psd["frequency_modes"]).sum())
    assert total == pytest.approx(nt * cells.var(axis=1).mean(), rel=1e-10)


def test_temporal_psd_cftime_360_day_and_windows():
    nt = 40
    time = xr.date_range("2000-01-01", periods=nt, freq="3h", calendar="360_day", use_cftime=True)
    t = np.arange(nt)
    series = np.cos(2 * np.pi * t / 5)[:, None, None] * np.ones((1, 2, 2))
    psd = dg.temporal_psd(field(series, time=time), window=10)
    assert psd.sizes["frequency"] == 5
    np.testing.assert_allclose(psd["frequency"], np.arange(1, 6) / 30.0)  # per hour
    assert float(psd.idxmax("frequency")) == pytest.approx(1 / 15)  # 5 steps of 3 h


def test_temporal_psd_irregular_time_is_per_step():
    time = pd.DatetimeIndex(["2000-01-01T00", "2000-01-01T01", "2000-01-01T05", "2000-01-01T06"])
    with pytest.warns(UserWarning, match="not regular"):
        psd = dg.temporal_psd(field(np.ones((4, 2, 2)), time=time))
    assert psd["frequency"].attrs["units"] == "1"
    assert (
        dg.temporal_psd(field(np.ones((4, 2, 2)), time=time), dt=2.0)["frequency"].attrs["units"]
        == "h-1"
    )


def test_spectra_are_lazy_on_dask_and_agree():
    rng = np.random.default_rng(3)
    da = field(rng.gamma(0.5, 1.0, (3, 6, 12, 12)), member=True)
    lazy = da.chunk({"realization": 1, "time": 3, "y": 6})
    for fn in (dg.spatial_psd, dg.temporal_psd):
        out = fn(lazy)
        assert isinstance(out.data, dsa.Array)
        np.testing.assert_allclose(out.compute().values, fn(da).values, rtol=1e-12)


def test_spectra_attrs_are_fresh():
    da = field(np.random.default_rng(4).random((4, 8, 8)))
    for out in (dg.spatial_psd(da), dg.temporal_psd(da)):
        assert out.attrs["units"] == "(mm h-1)2"
        assert "power spectral density" in out.attrs["long_name"]
        for c in out.coords.values():
            assert c.attrs.get("long_name") and c.attrs.get("units")


def test_spatial_psd_nan_frames_are_skipped():
    rng = np.random.default_rng(5)
    frames = rng.random((3, 10, 10))
    with_nan = frames.copy()
    with_nan[1, 2, 3] = np.nan
    a = dg.spatial_psd(field(with_nan))
    b = dg.spatial_psd(field(frames[[0, 2]]))
    np.testing.assert_allclose(a.values, b.values)


# ------------------------------------------------------------------------ histogram


def test_histogram_density_matches_numpy_and_log10():
    rng = np.random.default_rng(6)
    values = rng.gamma(0.5, 2.0, (20, 8, 8))
    da = field(values)
    h = dg.histogram(da, 30, log=False)
    expected, edges = np.histogram(values, bins=30, density=True)
    np.testing.assert_allclose(h.values, expected, rtol=1e-12)
    np.testing.assert_allclose(h["bin"], 0.5 * (edges[1:] + edges[:-1]))
    assert h.attrs["units"] == "(mm h-1)-1"
    assert h["bin"].attrs["units"] == UNITS
    hl = dg.histogram(da, 30)
    assert hl.attrs["units"] == "1"
    np.testing.assert_allclose(hl.values, np.log10(np.where(expected > 0, expected, np.nan)))


def test_histogram_low_end_is_relative_to_all_values():
    values = np.array([0.0, 0.05, 0.05, 0.3, 2.0, 5.0, np.nan, 10.0]).reshape(8, 1, 1)
    h = dg.histogram(field(values), 50, value_range=(0, 0.5), log=False)
    assert h["bin_lower"].values[0] == 0.0 and h["bin_upper"].values[-1] == 0.5
    width = 0.01
    dens = dict(zip(np.round(h["bin_lower"].values, 2), h.values))
    assert dens[0.0] == pytest.approx(1 / (7 * width))  # 7 finite values in all
    assert dens[0.05] == pytest.approx(2 / (7 * width))
    assert dens[0.3] == pytest.approx(1 / (7 * width))
    assert float(h.sum() * width) == pytest.approx(4 / 7)


def test_histogram_low_end_range_follows_the_data():
    """[minimum, 0.9 quantile] of the values, in the data's units, eager or lazy."""
    rng = np.random.default_rng(3)
    values = rng.gamma(0.3, 1.0, (20, 6, 6))
    h = dg.histogram(field(values), low_end=True, log=False)
    assert h.sizes["bin"] == 50
    assert h["bin_lower"].values[0] == pytest.approx(values.min())
    q = np.quantile(values, dg.LOW_END_QUANTILE)
    assert h["bin_upper"].values[-1] == pytest.approx(q)
    per_second = field(values / 3600.0).assign_attrs(units="mm s-1")
    hs = dg.histogram(per_second, low_end=True, log=False)
    np.testing.assert_allclose(hs["bin_upper"].values, h["bin_upper"].values / 3600.0)
    lazy = dg.histogram(field(values).chunk({"time": 5}), low_end=True, log=False)
    np.testing.assert_allclose(lazy.compute().values, h.values)
    mostly_dry = np.zeros((20, 1, 1))
    mostly_dry[-1] = 4.0  # the 0.9 quantile is 0: the range widens to a larger quantile
    hd = dg.histogram(field(mostly_dry), low_end=True, log=False)
    assert hd["bin_upper"].values[-1] > 0


def test_histogram_lazy_with_known_bins():
    rng = np.random.default_rng(7)
    da = field(rng.random((6, 4, 4)))
    edges = np.linspace(0, 1, 11)
    lazy = dg.histogram(da.chunk({"time": 2}), edges)
    assert isinstance(lazy.data, dsa.Array)
    np.testing.assert_allclose(lazy.compute().values, dg.histogram(da, edges).values)


def test_histogram_rejects_bad_bins():
    da = field(np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match="bins="):
        dg.histogram(da, [1.0, 0.5])
    with pytest.raises(TypeError, match="da="):
        dg.histogram(da.values)


# ------------------------------------------------------------------------- quantiles


def test_seed_quantile_set():
    q = dg.seed_quantiles()
    assert q.size == 63
    np.testing.assert_allclose(
        q[:10], [0.91, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 0.991]
    )
    assert q[-1] == pytest.approx(0.9999999)
    assert np.all(np.diff(q) > 0)


def test_qq_matches_numpy_quantiles():
    rng = np.random.default_rng(8)
    s = field(rng.gamma(0.5, 1.0, (2, 30, 6, 6)), member=True)
    r = field(rng.gamma(0.5, 1.2, (50, 6, 6)))
    q = dg.qq(s, r)
    np.testing.assert_allclose(q["sample"], np.quantile(s.values, dg.seed_quantiles()))
    np.testing.assert_allclose(q["reference"], np.quantile(r.values, dg.seed_quantiles()))
    rel = (q["sample"] - q["reference"]) / q["reference"]
    np.testing.assert_allclose(q["relative_error"], rel)
    assert q["sample"].attrs["units"] == UNITS and q["relative_error"].attrs["units"] == "1"
    custom = dg.qq(s.chunk({"time": 10}), r, [0.5, 0.9])
    assert isinstance(custom["sample"].data, dsa.Array)
    np.testing.assert_allclose(custom["sample"], np.quantile(s.values, [0.5, 0.9]))


def test_qq_zero_reference_quantile_is_nan():
    zeros = field(np.zeros((10, 2, 2)))
    q = dg.qq(zeros + 1.0, zeros, [0.5])
    assert np.isnan(q["relative_error"].values[0])


# ------------------------------------------------------------------------------ bias


def test_mean_normalised_bias_recovers_known_map():
    rng = np.random.default_rng(9)
    ref = field(rng.gamma(2.0, 1.0, (12, 5, 6)))
    b = rng.uniform(-0.5, 0.5, (5, 6))
    mean_ref = ref.mean("time").values
    mean_ref[0, 0] = 0.0
    ref[:, 0, 0] = 0.0
    samples = field(np.broadcast_to(mean_ref * (1 + b), (3, 7, 5, 6)), member=True)
    out = dg.mean_normalised_bias(samples, ref)
    bias = out["mean_normalised_bias"]
    assert bias.dims == ("y", "x") and "x" in bias.coords
    assert np.isnan(bias.values[0, 0])
    np.testing.assert_allclose(bias.values.ravel()[1:], b.ravel()[1:], rtol=1e-10)
    expected = np.abs(b.ravel()[1:]).mean()
    assert float(out["mean_abs_mean_normalised_bias"]) == pytest.approx(expected)
    assert bias.attrs["units"] == "1"


def test_mean_normalised_bias_rejects_other_grid():
    a = field(np.ones((2, 4, 4)))
    with pytest.raises(ValueError, match="grid"):
        dg.mean_normalised_bias(a, field(np.ones((2, 4, 5))))
    with pytest.raises(ValueError, match="coordinates"):
        dg.mean_normalised_bias(a, field(np.ones((2, 4, 4)), spacing=1.0))


# ------------------------------------------------------------------- ensemble scores


def ensemble_case(m=6, nt=5, n=4, seed=10):
    rng = np.random.default_rng(seed)
    ens = field(rng.normal(size=(m, nt, n, n)), member=True)
    obs = field(rng.normal(size=(nt, n, n)))
    return ens, obs


def test_crps_matches_properscoring_and_brute_force():
    properscoring = pytest.importorskip("properscoring")
    ens, obs = ensemble_case()
    c = dg.crps(ens, obs)
    x = np.moveaxis(ens.values, 0, -1)
    np.testing.assert_allclose(c.values, properscoring.crps_ensemble(obs.values, x), rtol=1e-10)
    assert c.attrs["units"] == UNITS and c.dims == obs.dims
    fair = dg.crps(ens, obs, fair=True)
    brute = np.vectorize(
        lambda i: crps_fair_brute(x.reshape(-1, x.shape[-1])[i], obs.values.ravel()[i])
    )(np.arange(obs.size))
    np.testing.assert_allclose(fair.values.ravel(), brute, rtol=1e-10)
    assert np.all(fair.values < c.values)


def test_crps_perfect_forecast_is_zero_and_lazy():
    _, obs = ensemble_case()
    ens = obs.expand_dims(realization=4).copy()
    np.testing.assert_allclose(dg.crps(ens, obs).values, 0.0, atol=1e-14)
    ens2, obs2 = ensemble_case()
    lazy = dg.crps(ens2.chunk({"time": 2}), obs2.chunk({"time": 2}), fair=True)
    assert isinstance(lazy.data, dsa.Array)
    np.testing.assert_allclose(lazy.compute(), dg.crps(ens2, obs2, fair=True))


def test_ensemble_scores_reject_bad_input():
    ens, obs = ensemble_case()
    with pytest.raises(ValueError, match="member dimension"):
        dg.crps(obs, obs)
    with pytest.raises(ValueError, match="obs="):
        dg.crps(ens, ens)
    with pytest.raises(ValueError, match="coordinates differ"):
        dg.crps(ens, obs.assign_coords(time=obs.time + pd.Timedelta("1h")))
    with pytest.raises(ValueError, match="2 ensemble members"):
        dg.crps(ens.isel(realization=[0]), obs, fair=True)


def test_rank_histogram_calibrated_is_flat_and_underdispersive_is_u_shaped():
    rng = np.random.default_rng(11)
    m, nt = 9, 400
    mu = rng.normal(size=(nt, 5, 5))
    ens = field(mu + rng.normal(size=(m, nt, 5, 5)), member=True)
    obs = field(mu + rng.normal(size=(nt, 5, 5)))
    h = dg.rank_histogram(ens, obs)
    assert h.sizes["rank"] == m + 1 and float(h.sum()) == pytest.approx(1.0)
    np.testing.assert_allclose(h.values, 1 / (m + 1), atol=0.012)
    narrow = field(mu + 0.3 * rng.normal(size=(m, nt, 5, 5)), member=True)
    u = dg.rank_histogram(narrow, obs).values
    assert u[0] > 2 / (m + 1) and u[-1] > 2 / (m + 1) and u[m // 2] < 0.5 / (m + 1)
    lazy = dg.rank_histogram(ens.chunk({"time": 100}), obs.chunk({"time": 100}))
    assert isinstance(lazy.data, dsa.Array)
    np.testing.assert_allclose(lazy.compute().values, h.values)


def test_rank_histogram_splits_ties_evenly():
    obs = field(np.zeros((3, 2, 2)))
    ens = field(np.zeros((4, 3, 2, 2)), member=True)
    ens[0] = 1.0  # one wet member above a dry observation tied with three dry ones
    h = dg.rank_histogram(ens, obs)
    np.testing.assert_allclose(h.values, [0.25, 0.25, 0.25, 0.25, 0.0])
    counts = dg.rank_histogram(ens, obs, normalize=False)
    np.testing.assert_allclose(counts.values, [3.0, 3.0, 3.0, 3.0, 0.0])


def test_spread_skill_is_one_for_calibrated_ensemble():
    rng = np.random.default_rng(12)
    m, nt = 4, 300
    mu = rng.normal(size=(nt, 6, 6))
    ens = field(mu + rng.normal(size=(m, nt, 6, 6)), member=True)
    obs = field(mu + rng.normal(size=(nt, 6, 6)))
    out = dg.spread_skill(ens, obs)
    # Without the (m + 1)/m correction the ratio would be sqrt(4/5) = 0.894.
    assert float(out["spread_skill_ratio"]) == pytest.approx(1.0, abs=0.03)
    spread = np.sqrt(ens.values.var(axis=0, ddof=1).mean())
    rmse = np.sqrt(((ens.values.mean(axis=0) - obs.values) ** 2).mean())
    assert float(out["ensemble_spread"]) == pytest.approx(spread)
    assert float(out["ensemble_mean_rmse"]) == pytest.approx(rmse)
    assert out["ensemble_spread"].attrs["units"] == UNITS


# -------------------------------------------------------------------------- evaluate


def test_evaluate_report_contents_attrs_and_netcdf(tmp_path):
    rng = np.random.default_rng(13)
    samples = field(rng.gamma(0.5, 1.0, (3, 8, 12, 12)), member=True)
    reference = field(rng.gamma(0.5, 1.0, (24, 12, 12)))
    obs = field(rng.gamma(0.5, 1.0, (8, 12, 12)))
    ds = dg.evaluate(samples, reference, observations=obs)
    for name in (
        "spatial_psd_sample",
        "temporal_psd_reference",
        "histogram_sample",
        "histogram_low_reference",
        "qq_sample",
        "mean_normalised_bias",
        "rank_histogram",
        "psd_log_error",
        "temporal_psd_log_error",
        "qq_relative_error",
        "mean_abs_mean_normalised_bias",
        "crps",
        "crps_fair",
        "spread_skill_ratio",
    ):
        assert name in ds, name
    for name in ("psd_log_error", "qq_relative_error", "crps", "spread_skill_ratio"):
        assert ds[name].ndim == 0
    assert ds.sizes["frequency"] == 4  # the reference is cut into windows of 8 steps
    for name, var in ds.variables.items():
        assert var.attrs.get("long_name") or name in ("x", "y", "time"), name
        if name not in ("x", "y", "time"):
            assert "units" in var.attrs, name
    assert ds["spatial_psd_sample"].attrs["units"] != UNITS
    assert ds["histogram_sample"].attrs["units"] == "(mm h-1)-1"
    assert ds.attrs["Conventions"].startswith("CF-") and ds.attrs["title"]
    crps_mean = float(dg.crps(samples, obs).mean())
    assert float(ds["crps"]) == pytest.approx(crps_mean)
    path = tmp_path / "report.nc"
    ds.to_netcdf(path)
    with xr.open_dataset(path) as back:
        xr.testing.assert_allclose(back.load(), ds)
    assert cf_problems(path, tmp_path) == []
    assert "_FillValue" not in samples["x"].encoding  # the input is left alone


def cf_problems(path, tmp_path):
    """High- and medium-priority messages of the IOOS compliance checker (cf:1.8)."""
    runner = pytest.importorskip("compliance_checker.runner")
    out = tmp_path / "cf.json"
    runner.CheckSuite.load_all_available_checkers()
    runner.ComplianceChecker.run_checker(
        str(path), ["cf:1.8"], 0, "normal", output_filename=str(out), output_format="json"
    )
    result = json.loads(out.read_text())["cf:1.8"]
    return [
        msg
        for level in ("high_priorities", "medium_priorities")
        for check in result.get(level, [])
        for msg in check.get("msgs", [])
    ]


def test_evaluate_identical_inputs_score_zero_and_lazy():
    rng = np.random.default_rng(14)
    ref = field(rng.gamma(0.5, 1.0, (8, 10, 10)))
    ds = dg.evaluate(ref, ref)
    for name in (
        "psd_log_error",
        "temporal_psd_log_error",
        "qq_relative_error",
        "mean_abs_mean_normalised_bias",
    ):
        assert float(ds[name]) == pytest.approx(0.0, abs=1e-12), name
    assert "crps" not in ds
    lazy = dg.evaluate(ref.chunk({"time": 4}), ref.chunk({"time": 2}))
    assert isinstance(lazy["spatial_psd_sample"].data, dsa.Array)
    assert isinstance(lazy["qq_relative_error"].data, dsa.Array)
    xr.testing.assert_allclose(lazy.compute(), ds)


def test_evaluate_rejects_different_time_steps():
    ref = field(np.random.default_rng(15).random((8, 6, 6)))
    other = ref.assign_coords(time=pd.date_range("2000", periods=8, freq="3h"))
    with pytest.raises(ValueError, match="time steps"):
        dg.evaluate(ref, other)


def test_custom_dimension_names_through_dims_and_member_dim():
    rng = np.random.default_rng(16)
    samples = xr.DataArray(rng.random((3, 6, 8, 8)), dims=("ens", "step", "row", "col"))
    ref = xr.DataArray(rng.random((6, 8, 8)), dims=("step", "row", "col"))
    dims = {"T": "step", "Y": "row", "X": "col"}
    with pytest.raises(ValueError, match="dims="):
        dg.spatial_psd(samples)
    ds = dg.evaluate(samples, ref, observations=ref, dims=dims, member_dim="ens")
    assert ds["mean_normalised_bias"].dims == ("row", "col")
    assert ds["wavenumber"].attrs["units"] == "1" and ds["frequency"].attrs["units"] == "1"
    assert ds.sizes["rank"] == 4
    with pytest.raises(ValueError, match="not a dimension"):
        dg.histogram(ref, dims={"T": "time", "Y": "row", "X": "col"})


# ------------------------------------------------------------------ Dataset evaluate


def two_variables(rng, shape, *, member=False):
    """A Dataset of precipitation (mm h-1) and temperature (K) on one grid."""
    pr = field(rng.gamma(0.5, 1.0, shape), member=member)
    tas = field(280.0 + 5.0 * rng.standard_normal(shape), member=member).rename("tas")
    tas.attrs = {"units": "K", "long_name": "air temperature", "standard_name": "air_temperature"}
    pr.attrs["standard_name"] = "precipitation_flux"
    return xr.Dataset({"pr": pr, "tas": tas}, attrs={"title": "input", "history": "made"})


def test_evaluate_dataset_per_variable_prefixed_with_fresh_attrs(tmp_path):
    import xdiffusion  # noqa: F401  (registers .diffusion)

    rng = np.random.default_rng(17)
    samples = two_variables(rng, (3, 8, 12, 12), member=True)
    samples["only_in_samples"] = samples["pr"] * 2
    reference = two_variables(rng, (24, 12, 12))
    for ds in (samples, reference):  # shared but not gridded: skipped
        ds["crs"] = xr.DataArray(0, attrs={"grid_mapping_name": "transverse_mercator"})
    obs = two_variables(rng, (8, 12, 12))
    ds = samples.diffusion.evaluate(reference, observations=obs)

    assert ds.attrs["variables"] == "pr tas"
    assert ds.attrs["Conventions"].startswith("CF-") and ds.attrs["title"] != "input"
    assert "made" not in ds.attrs["history"]
    assert not any(k.startswith(("only_in_samples", "crs")) for k in ds.variables)
    for v in ("pr", "tas"):
        one = dg.evaluate(samples[v], reference[v], observations=obs[v])
        for name in one.data_vars:
            out = ds[f"{v}_{name}"]
            np.testing.assert_allclose(out.values, one[name].values, equal_nan=True)
            assert out.attrs["long_name"] == f"{v}: {one[name].attrs['long_name']}"
            assert out.attrs.get("units") == one[name].attrs.get("units"), name
            assert "standard_name" not in out.attrs, name
        # the histogram bins depend on each variable's values, so they are its own
        assert ds[f"{v}_histogram_sample"].dims == (f"{v}_bin",)
        assert ds[f"{v}_histogram_low_reference"].dims == (f"{v}_bin_low",)
        assert f"{v}_bin_lower" in ds.coords
    assert "bin" not in ds.dims and "bin_low" not in ds.dims
    assert ds["pr_spatial_psd_sample"].dims == ds["tas_spatial_psd_sample"].dims
    assert ds["pr_spatial_psd_sample"].attrs["units"] != UNITS
    assert ds["tas_histogram_sample"].attrs["units"] == "K-1"
    assert ds["pr_histogram_sample"].attrs["units"] == "(mm h-1)-1"
    assert ds["tas_bin"].attrs["units"] == "K" and ds["pr_bin"].attrs["units"] == UNITS
    assert ds["tas_psd_log_error"].ndim == 0 and ds["pr_crps"].ndim == 0

    path = tmp_path / "report.nc"
    ds.to_netcdf(path)
    with xr.open_dataset(path) as back:
        xr.testing.assert_allclose(back.load(), ds)
    assert cf_problems(path, tmp_path) == []


def test_evaluate_dataset_errors():
    rng = np.random.default_rng(18)
    samples = two_variables(rng, (2, 4, 6, 6), member=True)
    reference = two_variables(rng, (4, 6, 6))
    with pytest.raises(ValueError, match="share no gridded variable"):
        dg.evaluate(samples, reference.rename({"pr": "precip", "tas": "t2m"}))
    with pytest.raises(TypeError, match="all DataArrays or all Datasets"):
        dg.evaluate(samples, reference["pr"])
    with pytest.raises(TypeError, match="all DataArrays or all Datasets"):
        dg.evaluate(samples["pr"], reference)
    with pytest.raises(ValueError, match=r"observations= lacks the variables \['tas'\]"):
        dg.evaluate(samples, reference, observations=reference[["pr"]])
    other = reference.assign_coords(time=pd.date_range("2000", periods=4, freq="3h"))
    with pytest.raises(ValueError, match=r"variable 'pr': .*time steps"):
        dg.evaluate(samples, other)
