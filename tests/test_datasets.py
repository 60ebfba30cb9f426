"""Synthetic generators (statistics, spectrum, advection, metadata) and the sample registry."""

from __future__ import annotations

import hashlib
import http.server
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from xdiffusion import datasets
from xdiffusion.datasets import gaussian_blobs, open_sample, synthetic_precipitation


@pytest.fixture(scope="module")
def long_series() -> np.ndarray:
    return synthetic_precipitation(3000, 32, 32, seed=0).values


def _radial_psd_slope(frames: np.ndarray) -> float:
    """Slope of log P(k) against log k for the radially averaged 2-D PSD, mean over frames."""
    _, ny, nx = frames.shape
    anomalies = frames - frames.mean(axis=(1, 2), keepdims=True)
    power = (np.abs(np.fft.fft2(anomalies)) ** 2).mean(axis=0)
    ky, kx = np.meshgrid(np.fft.fftfreq(ny) * ny, np.fft.fftfreq(nx) * nx, indexing="ij")
    bins = np.rint(np.hypot(ky, kx)).astype(int).ravel()
    psd = np.bincount(bins, power.ravel()) / np.bincount(bins)
    k = np.arange(1, min(ny, nx) // 2 + 1)
    return float(np.polyfit(np.log(k), np.log(psd[k]), 1)[0])


def _lag1_correlations(frames: np.ndarray, reach: int = 4) -> dict[tuple[int, int], float]:
    """Correlation of frame t+1 shifted back by (dy, dx) with frame t, over the interior."""
    x = frames - frames.mean()
    n = frames.shape[1]
    inner = slice(reach, n - reach)
    out = {}
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            a = np.roll(x[1:], (-dy, -dx), axis=(1, 2))[:, inner, inner]
            b = x[:-1, inner, inner]
            out[dy, dx] = float((a * b).mean() / np.sqrt((a * a).mean() * (b * b).mean()))
    return out


# --- synthetic precipitation: statistics ---------------------------------------------------
def test_marginal_statistics_are_precipitation_like(long_series):
    r = long_series
    assert r.dtype == np.float32
    assert np.isfinite(r).all()
    assert r.min() >= 0
    assert 0.7 <= (r < 0.01).mean() <= 0.9
    assert 0.03 <= r.mean() <= 0.3  # UK climatology is about 0.1 mm/h
    q999 = np.quantile(r, 0.999)
    assert 2 <= q999 <= 20
    assert 10 <= r.max() <= 100
    assert r.max() > 3 * q999  # heavy upper tail


def test_dry_fraction_argument_controls_dry_cells():
    wet = synthetic_precipitation(1500, 16, 16, seed=3, dry_fraction=0.5).values
    dry = synthetic_precipitation(1500, 16, 16, seed=3, dry_fraction=0.9).values
    assert (wet < 0.01).mean() < 0.65
    assert (dry < 0.01).mean() > 0.85


def test_spectrum_follows_a_power_law():
    frames = synthetic_precipitation(400, 64, 64, seed=1).values[::4]
    frames = frames[frames.max(axis=(1, 2)) > 0]
    assert len(frames) > 20
    assert -4 <= _radial_psd_slope(frames) <= -1.5
    # White noise has a flat spectrum: the fit itself must be able to tell.
    noise = np.random.default_rng(0).standard_normal(frames.shape)
    assert abs(_radial_psd_slope(noise)) < 0.3


@pytest.mark.parametrize(("wind_cells", "std"), [((2, -1), 0.0), ((-1, 2), 3.0)])
def test_rain_moves_with_the_wind(wind_cells, std):
    dx_km = 8.8
    u, v = wind_cells[0] * dx_km, wind_cells[1] * dx_km
    frames = synthetic_precipitation(
        300, 32, 32, seed=2, wind_kmh=(u, v), wind_std_kmh=std, dx_km=dx_km
    ).values
    corr = _lag1_correlations(frames)
    best = max(corr, key=corr.get)
    assert best == (wind_cells[1], wind_cells[0])  # (dy, dx): y follows v, x follows u
    assert corr[best] > corr[0, 0] + 0.05  # persistence is clearly worse than advection


def test_rain_evolves_in_the_moving_frame():
    frames = synthetic_precipitation(400, 32, 32, seed=4, wind_kmh=(0.0, 0.0)).values
    x = frames - frames.mean()

    def lag_corr(lag: int) -> float:
        a, b = x[lag:], x[: len(x) - lag]
        return float((a * b).mean() / np.sqrt((a * a).mean() * (b * b).mean()))

    c1, c6, c48 = lag_corr(1), lag_corr(6), lag_corr(48)
    assert c1 > 0.7  # smooth in time: hourly frames are strongly related
    assert c1 > c6 > c48
    assert c48 < 0.5  # but cells grow and decay over hours


# --- synthetic precipitation: reproducibility and API --------------------------------------
def test_same_seed_same_output_and_prefix_property():
    a = synthetic_precipitation(300, 12, 20, seed=7)
    b = synthetic_precipitation(300, 12, 20, seed=7)
    xr.testing.assert_identical(a, b)
    c = synthetic_precipitation(40, 12, 20, seed=7)
    np.testing.assert_array_equal(c.values, a.values[:40])
    d = synthetic_precipitation(300, 12, 20, seed=8)
    assert not np.array_equal(a.values, d.values)


@pytest.mark.parametrize("shape", [(30, 1, 1), (30, 1, 9), (30, 3, 2)])
def test_tiny_grids_are_finite(shape):
    v = synthetic_precipitation(*shape, seed=1).values
    assert v.shape == shape
    assert np.isfinite(v).all() and v.min() >= 0


def test_cf_metadata():
    da = synthetic_precipitation(5, 4, 6, dx_km=2.5)
    assert da.name == "pr"
    assert da.dims == ("time", "y", "x")
    assert da.shape == (5, 4, 6)
    assert da.attrs["units"] == "mm h-1"
    assert da.attrs["standard_name"] == "lwe_precipitation_rate"
    assert da.attrs["long_name"] == "precipitation rate"
    assert da.attrs["cell_methods"] == "time: mean"
    assert "grid_mapping" not in da.attrs
    assert da.time.attrs["axis"] == "T" and da.time.attrs["standard_name"] == "time"
    for dim, axis in (("y", "Y"), ("x", "X")):
        attrs = da[dim].attrs
        assert attrs["axis"] == axis
        assert attrs["standard_name"] == f"projection_{dim}_coordinate"
        assert attrs["units"] == "km"
    np.testing.assert_allclose(np.diff(da.x.values), 2.5)
    assert np.issubdtype(da.time.dtype, np.datetime64)
    np.testing.assert_array_equal(np.diff(da.time.values), np.timedelta64(1, "h"))


def test_cf_axes_are_found_by_cf_xarray():
    import cf_xarray  # noqa: F401

    da = synthetic_precipitation(3, 4, 4)
    assert da.cf.axes == {"T": ["time"], "X": ["x"], "Y": ["y"]}


def test_netcdf_round_trip_keeps_values_and_metadata(tmp_path):
    da = synthetic_precipitation(6, 5, 7, freq="30min", calendar="360_day")
    path = tmp_path / "pr.nc"
    da.to_dataset().to_netcdf(path)
    with xr.open_dataset(path) as back:
        xr.testing.assert_identical(back.pr.load(), da)
        assert back.time.encoding["calendar"] == "360_day"


@pytest.mark.parametrize("calendar", ["360_day", "noleap"])
def test_cftime_calendars(calendar):
    import cftime

    da = synthetic_precipitation(50, 4, 4, calendar=calendar, freq="1D", start="2001-02-20")
    first = da.time.values[0]
    assert isinstance(first, cftime.datetime)
    assert first.calendar == calendar
    days = [(t.month, t.day) for t in da.time.values]
    if calendar == "360_day":
        assert (2, 30) in days  # exists only in a 360-day year
    else:
        assert (2, 29) not in days and (3, 1) in days


def test_time_step_changes_the_physics_consistently():
    # Half-hourly frames move half as far per step as hourly ones.
    half = synthetic_precipitation(300, 32, 32, seed=5, freq="30min", wind_kmh=(4 * 8.8, 0))
    corr = _lag1_correlations(half.values)
    assert max(corr, key=corr.get) == (0, 2)
    np.testing.assert_array_equal(np.diff(half.time.values), np.timedelta64(30, "m"))


def test_chunks_give_dask_with_the_same_values():
    import dask.array

    eager = synthetic_precipitation(20, 8, 8, seed=1)
    lazy = synthetic_precipitation(20, 8, 8, seed=1, chunks={"time": 5})
    assert isinstance(lazy.data, dask.array.Array)
    assert lazy.chunks[0] == (5, 5, 5, 5)
    xr.testing.assert_identical(lazy.compute(), eager)


@pytest.mark.parametrize(
    ("kwargs", "error", "word"),
    [
        ({"nt": 0}, ValueError, "nt"),
        ({"ny": -3}, ValueError, "ny"),
        ({"nx": 2.5}, TypeError, "nx"),
        ({"nt": True}, TypeError, "nt"),
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": "a"}, TypeError, "seed"),
        ({"dx_km": 0.0}, ValueError, "dx_km"),
        ({"dx_km": float("nan")}, ValueError, "dx_km"),
        ({"freq": "often"}, ValueError, "freq"),
        ({"freq": "-1h"}, ValueError, "freq"),
        ({"calendar": "martian"}, ValueError, "calendar"),
        ({"start": "not a date"}, ValueError, "start"),
        ({"wind_kmh": (1.0,)}, ValueError, "wind_kmh"),
        ({"wind_std_kmh": -1.0}, ValueError, "wind_std_kmh"),
        ({"dry_fraction": 1.0}, ValueError, "dry_fraction"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs, error, word):
    args = {"nt": 4, "ny": 4, "nx": 4, **kwargs}
    with pytest.raises(error, match=word):
        synthetic_precipitation(**args)


def test_generation_is_fast():
    import time

    start = time.process_time()
    synthetic_precipitation(240, 32, 32)
    assert time.process_time() - start < 1.0


# --- gaussian blobs ------------------------------------------------------------------------
def test_gaussian_blobs_are_smooth_moving_and_reproducible():
    da = gaussian_blobs(40, 16, 16, n_blobs=2, lifetime=8, seed=3)
    assert da.dims == ("time", "y", "x") and da.shape == (40, 16, 16)
    v = da.values
    assert v.min() >= 0 and v.max() <= 2.0 + 1e-6  # at most two unit-amplitude blobs
    assert (v.max(axis=(1, 2)) > 0.2).all()  # staggered lifetimes: never empty
    assert np.abs(np.diff(v, axis=0)).max() < 0.9  # continuous in time
    xr.testing.assert_identical(da, gaussian_blobs(40, 16, 16, n_blobs=2, lifetime=8, seed=3))
    assert not np.array_equal(v, gaussian_blobs(40, 16, 16, seed=4).values)
    with pytest.raises(ValueError, match="lifetime"):
        gaussian_blobs(lifetime=1)


def test_single_blob_follows_its_envelope():
    # One slot, lifetime 8: the mass (grid sum of a Gaussian, independent of where the blob
    # sits) follows sin²(π·age): zero at birth, largest mid-life, symmetric about it.
    v = gaussian_blobs(8, 32, 32, n_blobs=1, lifetime=8, seed=0).values.astype(float)
    mass = v.sum(axis=(1, 2))
    envelope = np.sin(np.pi * np.arange(8) / 8) ** 2
    assert mass[0] == 0
    np.testing.assert_allclose(mass / mass[4], envelope, atol=1e-5)


# --- sample registry -----------------------------------------------------------------------
def test_packaged_registry_lists_hashed_public_files():
    registry = datasets._load_registry()
    assert "CESM2_sst_data.nc" in registry
    assert datasets.list_samples() == sorted(registry)
    for name, digest in registry.items():
        assert name.endswith(".nc")
        assert len(digest) == 64 and int(digest, 16) >= 0
    assert datasets.DEFAULT_BASE_URL.startswith("https://")


def test_registry_parser_rejects_malformed_lines():
    good = "# comment\n\na.nc " + "0" * 64 + "  # trailing\n"
    assert datasets._parse_registry(good) == {"a.nc": "0" * 64}
    with pytest.raises(ValueError, match="line 1"):
        datasets._parse_registry("a.nc deadbeef\n")


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    hits: list[str]

    def do_GET(self):
        self.hits.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def local_server(tmp_path):
    """An HTTP server on 127.0.0.1 serving ``tmp_path/"served"``; yields (url, dir, hits)."""
    served = tmp_path / "served"
    served.mkdir()
    hits: list[str] = []
    handler = type("Handler", (_CountingHandler,), {"hits": hits})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(handler, directory=str(served))
    )
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", served, hits
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _serve_sample(served: Path, monkeypatch, url: str) -> tuple[str, xr.Dataset]:
    ds = synthetic_precipitation(4, 3, 5, seed=9).to_dataset()
    name = "tiny_pr.nc"
    ds.to_netcdf(served / name)
    digest = hashlib.sha256((served / name).read_bytes()).hexdigest()
    monkeypatch.setattr(datasets, "_load_registry", lambda: {name: digest})
    monkeypatch.setenv("XDIFFUSION_DATA_URL", url)
    return name, ds


def test_open_sample_downloads_checks_and_caches(local_server, tmp_path, monkeypatch):
    url, served, hits = local_server
    name, expected = _serve_sample(served, monkeypatch, url)
    cache = tmp_path / "cache"
    with open_sample(name, cache_dir=cache) as ds:
        xr.testing.assert_identical(ds.pr.load(), expected.pr)
    assert hits == [f"/{name}"]
    assert (cache / name).read_bytes() == (served / name).read_bytes()
    with open_sample(name, cache_dir=cache) as ds:  # served from the cache
        assert ds.pr.shape == (4, 3, 5)
    assert len(hits) == 1
    # A damaged cached copy fails its hash and is fetched again.
    (cache / name).write_bytes(b"garbage")
    open_sample(name, cache_dir=cache).close()
    assert len(hits) == 2


def test_open_sample_uses_the_cache_directory_from_the_environment(
    local_server, tmp_path, monkeypatch
):
    url, served, hits = local_server
    name, _ = _serve_sample(served, monkeypatch, url)
    env_cache = tmp_path / "env_cache"
    monkeypatch.setenv("XDIFFUSION_DATA_DIR", str(env_cache))
    open_sample(name).close()
    assert (env_cache / name).exists()
    assert len(hits) == 1
    explicit = tmp_path / "explicit"  # an explicit cache_dir wins over the environment
    open_sample(name, cache_dir=explicit).close()
    assert (explicit / name).exists()
    assert len(hits) == 2


def test_open_sample_rejects_a_corrupted_download(local_server, tmp_path, monkeypatch):
    url, served, hits = local_server
    name, _ = _serve_sample(served, monkeypatch, url)
    data = bytearray((served / name).read_bytes())
    data[-1] ^= 0xFF  # one flipped byte: same size, different hash
    (served / name).write_bytes(bytes(data))
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="sha256"):
        open_sample(name, cache_dir=cache)
    assert len(hits) == 1
    assert not cache.exists() or list(cache.iterdir()) == []


def test_open_sample_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match=r"CESM2_sst_data\.nc"):
        open_sample("no-such-file.nc")
