"""Safety of fit and friends: resume only on the same data, global RNG left alone,
unreadable checkpoints kept, dtypes kept, numeric time axes, sample-data failures explained.
"""

import functools
import hashlib
import http.server
import socket
import threading
import warnings

import dask
import numpy as np
import pytest
import torch
import xarray as xr
from conftest import TINY_NET, make_series

import xdiffusion as xd
from xdiffusion import checkpoint as ck
from xdiffusion import datasets
from xdiffusion.datasets import SampleDataError, open_sample, synthetic_precipitation
from xdiffusion.diagnostics import evaluate
from xdiffusion.fitting import data_digest, digest_steps
from xdiffusion.io.convert import channel_stats, prepare
from xdiffusion.io.timefeatures import time_features

FIT = dict(frames=4, batch_size=2, progress=False, device="cpu", net=TINY_NET, loader="random")
GEN = dict(steps=2, progress=False)


# bit-for-bit comparisons on one torch thread (the fixture is in conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def series():
    return make_series(nt=40)


@pytest.fixture(scope="module")
def model(series):
    return xd.fit(series, steps=2, **FIT)


def _same_range(other: xr.DataArray, like: xr.DataArray) -> xr.DataArray:
    """``other`` rescaled to exactly the minimum and maximum of ``like``."""
    v = other.values.astype(np.float64)
    lo, hi = float(like.min()), float(like.max())
    v = (v - v.min()) / (v.max() - v.min()) * (hi - lo) + lo
    v = v.astype(np.float32)
    v[np.unravel_index(np.argmin(v), v.shape)] = lo
    v[np.unravel_index(np.argmax(v), v.shape)] = hi
    out = like.copy(data=np.clip(v, lo, hi))
    assert float(out.min()) == lo and float(out.max()) == hi
    return out


def _nan_at(s: xr.DataArray, t: int, y: int, x: int) -> xr.DataArray:
    v = s.values.copy()
    v[t, y, x] = np.nan
    return s.copy(data=v)


# ------------------------------------------------------------------ 1. resume: same data only
def _started(series, tmp_path, **kw):
    xd.fit(series, steps=2, checkpoint_dir=tmp_path, checkpoint_every=2, **{**FIT, **kw})


@pytest.mark.parametrize(
    ("change", "kwargs", "named"),
    [
        ("mirrored values", {}, "data_values_sha256"),
        ("mirrored grid", {}, "coord_x_sha256"),
        ("time-reversed values", {}, "data_values_sha256"),
        ("other seed, same range", {}, "data_values_sha256"),
        ("other NaN mask", {}, "data_values_sha256"),
        ("transform_lr_scale", {"transform_lr_scale": 3.0}, "transform_lr_scale"),
        ("val_every", {"val_every": 7}, "val_every"),
    ],
)
def test_resume_refuses_other_data_or_settings(series, tmp_path, change, kwargs, named):
    base = _nan_at(series, 3, 2, 2)
    other = {
        "mirrored values": lambda: base.copy(data=base.values[:, :, ::-1]),
        "mirrored grid": lambda: base.isel(x=slice(None, None, -1)),
        "time-reversed values": lambda: base.copy(data=base.values[::-1]),
        "other seed, same range": lambda: _same_range(make_series(nt=40, seed=1), base),
        "other NaN mask": lambda: _nan_at(series, 3, 2, 3),
    }.get(change, lambda: base)()
    _started(base, tmp_path)
    with pytest.raises(ValueError, match=rf"different arguments.*{named}") as err:
        xd.fit(other, steps=4, checkpoint_dir=tmp_path, resume=True, **{**FIT, **kwargs})
    assert "checkpoint_dir=" in str(err.value)


def test_resume_refuses_shifted_time_features(series, tmp_path):
    _started(series, tmp_path, time_features="season")
    shifted = series.assign_coords(time=series.time + np.timedelta64(90, "D"))
    with pytest.raises(ValueError, match=r"coord_t_sha256.*time_features_sha256"):
        xd.fit(
            shifted,
            steps=4,
            checkpoint_dir=tmp_path,
            resume=True,
            time_features="season",
            **FIT,
        )


def test_same_data_resumes_whatever_the_chunking(series, tmp_path):
    _started(series, tmp_path)
    lazy = series.chunk({"time": 7})  # same values, read lazily
    model = xd.fit(lazy, steps=4, checkpoint_dir=tmp_path, resume=True, **FIT)
    assert model.history_dict["step"] == [0, 1, 2, 3]
    straight = xd.fit(series, steps=4, **FIT)
    for k, v in straight.module.state_dict().items():
        assert torch.equal(model.module.state_dict()[k], v), k


def test_digest_reads_a_sample_and_counts_every_nan():
    da = make_series(nt=1000, ny=8, nx=8)
    idx = digest_steps(1000)
    assert len(idx) == 64 and idx[0] == 0 and idx[-1] == 999
    hidden = int(np.setdiff1d(np.arange(1000), idx)[0])  # a step the sample does not read
    a = prepare(da)
    b = prepare(_nan_at(da, hidden, 1, 1))
    da_ = data_digest(a, channel_stats(a.data))
    db = data_digest(b, channel_stats(b.data))
    assert da_["data_values_sha256"] == db["data_values_sha256"]
    assert da_["data_finite_count"] != db["data_finite_count"]  # caught by the exact count
    # lazily: only the chunks holding the sampled steps are read
    reads = []
    values = da.values

    def loader(block_info=None):
        sl = tuple(slice(u, w) for u, w in block_info[None]["array-location"])
        reads.append(sl[0].start)
        return values[sl]

    lazy = da.copy(
        data=dask.array.map_blocks(loader, chunks=((10,) * 100, (8,), (8,)), dtype=np.float32)
    )
    p = prepare(lazy)
    sample = data_digest(p, {"n_finite": [0], "static_valid": np.ones((1, 8, 8), bool)})
    assert sample["data_values_sha256"] == da_["data_values_sha256"]
    assert len(reads) <= 64  # of 100 chunks


# ------------------------------------------------------------------ 2. global RNG untouched
def _global_state():
    return torch.get_rng_state().clone(), np.random.get_state()  # noqa: NPY002


def _assert_state(before):
    after = _global_state()
    assert torch.equal(before[0], after[0])
    assert before[1][0] == after[1][0] and np.array_equal(before[1][1], after[1][1])
    assert before[1][2:] == after[1][2:]


def test_fit_and_resume_leave_the_global_rng_alone(series, tmp_path):
    torch.manual_seed(1234)
    np.random.seed(99)  # noqa: NPY002
    before = _global_state()
    a = xd.fit(series, steps=2, **FIT)
    _assert_state(before)
    _started(series, tmp_path)
    _assert_state(before)
    xd.fit(series, steps=3, checkpoint_dir=tmp_path, resume=True, **FIT)
    _assert_state(before)
    # and the fit itself does not depend on the caller's global state
    torch.manual_seed(5)
    b = xd.fit(series, steps=2, **FIT)
    for k, v in a.module.state_dict().items():
        assert torch.equal(b.module.state_dict()[k], v), k


# ------------------------------------------------------------------ 3. unreadable checkpoints
def test_all_corrupt_checkpoints_refuse_and_are_kept(series, tmp_path):
    xd.fit(series, steps=4, checkpoint_dir=tmp_path, checkpoint_every=2, **FIT)
    for f in tmp_path.glob("ckpt-*.safetensors"):
        f.write_bytes(f.read_bytes()[:100])  # truncated
    before = {f.name: f.read_bytes() for f in tmp_path.iterdir()}
    with pytest.raises(ValueError, match=r"no checkpoint in checkpoint_dir=.* is readable"):
        xd.fit(series, steps=6, checkpoint_dir=tmp_path, resume=True, **FIT)
    assert {f.name: f.read_bytes() for f in tmp_path.iterdir()} == before
    with pytest.raises(ValueError, match=str(tmp_path)):
        ck.load_checkpoint(tmp_path)


def test_unreadable_newer_checkpoints_are_set_aside_not_deleted(series, tmp_path):
    xd.fit(series, steps=6, checkpoint_dir=tmp_path, checkpoint_every=2, **FIT)
    bad = tmp_path / "ckpt-000000006.json"
    bad.write_text("{")
    with pytest.warns(RuntimeWarning, match=r"skipping checkpoint at step 6") as rec:
        xd.fit(series, steps=8, checkpoint_dir=tmp_path, checkpoint_every=2, resume=True, **FIT)
    assert any("moved the unreadable" in str(w.message) for w in rec)
    assert (tmp_path / ck.SET_ASIDE / bad.name).read_text() == "{"
    assert (tmp_path / ck.SET_ASIDE / "ckpt-000000006.safetensors").is_file()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ck.load_checkpoint(tmp_path).step == 8


def test_only_an_interrupted_first_checkpoint_starts_afresh(series, tmp_path):
    xd.fit(series, steps=2, checkpoint_dir=tmp_path, checkpoint_every=2, **FIT)
    (tmp_path / "ckpt-000000002.json").unlink()  # killed between the two writes
    with pytest.warns(RuntimeWarning, match="json is missing") as rec:
        model = xd.fit(series, steps=2, checkpoint_dir=tmp_path, resume=True, **FIT)
    assert any("nothing was deleted" in str(w.message) for w in rec)
    assert model.history_dict["step"] == [0, 1]
    assert (tmp_path / ck.SET_ASIDE / "ckpt-000000002.safetensors").is_file()


# ------------------------------------------------------------------ 4. transform= mapping
def test_transform_mapping_with_unknown_variable(series):
    with pytest.raises(ValueError, match=r"transform= has entries for \['tas'\].*\['pr'\]"):
        xd.fit(series, steps=1, transform={"pr": "sqrt", "tas": "none"}, **FIT)


# ------------------------------------------------------------------ 5. interpolate keeps dtype
def test_interpolate_float64_keeps_dtype_and_observations_bit_for_bit(model, series):
    rng = np.random.default_rng(0)
    data = series.isel(time=slice(0, 8)).astype(np.float64)
    data = data + rng.uniform(0, 1e-3, data.shape)  # not representable in float32
    data[{"time": [3, 4]}] = np.nan
    out = data.diffusion.interpolate(model, n=2, **GEN)
    assert out.dtype == np.float64
    obs = np.isfinite(data.values)
    for k in range(2):
        member = out.isel(realization=k).values
        assert np.array_equal(member[obs], data.values[obs])  # exact, not within 1e-8
        assert np.isfinite(member).all()
    ds_out = data.to_dataset().diffusion.interpolate(model, n=1, **GEN)
    assert ds_out["pr"].dtype == np.float64
    f32 = data.astype(np.float32).diffusion.interpolate(model, n=1, **GEN)
    assert f32.dtype == np.float32


# ------------------------------------------------------------------ 6. numeric time axes
@pytest.mark.parametrize("dtype", [np.float64, np.int64])
def test_forecast_continues_a_numeric_time_axis(dtype):
    s = make_series(nt=40)
    hours = (np.arange(40) * 3 + 6).astype(dtype)
    s = s.assign_coords(time=hours)
    m = xd.fit(s, steps=2, **FIT)
    fc = s.isel(time=slice(0, 8)).diffusion.forecast(m, lead=3, **GEN)
    assert fc.time.dtype == dtype
    np.testing.assert_array_equal(fc.time.values, np.array([30, 33, 36], dtype=dtype))


def test_time_features_need_dates():
    s = make_series(nt=40).assign_coords(time=np.arange(40.0))
    with pytest.raises(ValueError, match=r"time_features=\['season'\] need a datetime64 or cftime"):
        xd.fit(s, steps=1, time_features="season", **FIT)
    with pytest.raises(ValueError, match="dtype float64"):
        time_features(np.arange(3.0), ["hour"])
    cf = make_series(nt=4, calendar="360_day").time
    assert time_features(cf, ["season", "hour"]).shape == (4, 4)


# ------------------------------------------------------------------ 7. evaluate options
def test_evaluate_one_member_and_the_fair_option(series):
    ref = series.isel(time=slice(0, 8))
    one = ref.expand_dims(realization=1)
    ds = evaluate(one, ref, observations=ref)
    assert "crps" in ds and "crps_fair" not in ds and "spread_skill_ratio" not in ds
    with pytest.raises(ValueError, match=r"fair=True needs at least 2 ensemble members"):
        evaluate(one, ref, observations=ref, fair=True)
    two = xr.concat([ref, ref * 1.1], "realization")
    assert "crps_fair" in evaluate(two, ref, observations=ref)
    assert "crps_fair" not in evaluate(two, ref, observations=ref, fair=False)
    with pytest.raises(TypeError, match="fair must be True or False"):
        evaluate(two, ref, observations=ref, fair="yes")


# ------------------------------------------------------------------ 8. sample data failures
class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(served))
    )
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _register(tmp_path, monkeypatch, url):
    """A tiny registered sample (not served yet); returns (name, bytes)."""
    path = tmp_path / "tiny.nc"
    synthetic_precipitation(3, 2, 2, seed=1).to_dataset().to_netcdf(path)
    blob = path.read_bytes()
    name = "tiny_pr.nc"
    monkeypatch.setattr(
        datasets, "_load_registry", lambda: {name: hashlib.sha256(blob).hexdigest()}
    )
    monkeypatch.setenv("XDIFFUSION_DATA_URL", url)
    return name, blob


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"  # nothing listens: connection refused, as offline


def test_sample_404_says_so_and_names_the_mirror(server, tmp_path, monkeypatch):
    url, _ = server
    name, _ = _register(tmp_path, monkeypatch, url)
    with pytest.raises(
        SampleDataError, match=r"HTTP 404.*not at this address.*XDIFFUSION_DATA_URL"
    ):
        open_sample(name, cache_dir=tmp_path / "cache")


def test_sample_offline_says_so(tmp_path, monkeypatch):
    name, _ = _register(tmp_path, monkeypatch, _closed_port_url())
    with pytest.raises(SampleDataError, match=r"could not download.*unreachable.*Retry") as err:
        open_sample(name, cache_dir=tmp_path / "cache")
    assert str(tmp_path / "cache") in str(err.value)
    assert isinstance(err.value, RuntimeError)


def test_sample_corrupt_cache_while_offline(tmp_path, monkeypatch):
    name, _ = _register(tmp_path, monkeypatch, _closed_port_url())
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / name).write_bytes(b"garbage")
    with pytest.raises(SampleDataError, match=r"cached copy .* fails its sha256.*could not"):
        open_sample(name, cache_dir=cache)
    assert (cache / name).read_bytes() == b"garbage"  # left for the user to inspect


def test_sample_corrupt_download(server, tmp_path, monkeypatch):
    url, served = server
    name, blob = _register(tmp_path, monkeypatch, url)
    (served / name).write_bytes(blob[:-10] + b"0123456789")
    with pytest.raises(ValueError, match=r"does not match its registered sha256.*Retry"):
        open_sample(name, cache_dir=tmp_path / "cache")
    (served / name).write_bytes(blob)  # repaired upstream: the same call now works
    with open_sample(name, cache_dir=tmp_path / "cache") as ds:
        assert ds.pr.shape == (3, 2, 2)


def test_sample_cache_dir_that_is_a_file(server, tmp_path, monkeypatch):
    url, served = server
    name, blob = _register(tmp_path, monkeypatch, url)
    (served / name).write_bytes(blob)
    f = tmp_path / "not_a_dir"
    f.write_text("x")
    with pytest.raises(ValueError, match=r"cache_dir=.* is not a directory"):
        open_sample(name, cache_dir=f)
    monkeypatch.setenv("XDIFFUSION_DATA_DIR", str(f))
    with pytest.raises(SampleDataError, match=r"is a file, not a directory.*XDIFFUSION_DATA_DIR"):
        open_sample(name)
    assert f.read_text() == "x"
