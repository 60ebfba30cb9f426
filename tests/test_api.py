"""The accessor and DiffusionModel on DataArrays and Datasets: shapes, CF, round trips."""

import dask
import dask.array as dsa
import numpy as np
import pytest
import torch
import xarray as xr
from conftest import TINY_NET, CountingScheduler, as_dataset, make_series

import xdiffusion as xd
from xdiffusion.io.convert import channel_stats, prepare

FIT = dict(frames=4, steps=3, batch_size=2, progress=False, device="cpu", net=TINY_NET)
GEN = dict(steps=3, progress=False)


def test_sample_shape_coords_and_cf(tiny_model, series):
    tmpl = series.isel(time=slice(0, 6))
    ens = tmpl.diffusion.sample(tiny_model, n=3, seed=1, **GEN)
    assert ens.dims == ("realization", "time", "y", "x")
    assert ens.shape == (3, 6, 16, 16)
    assert ens.realization.attrs["standard_name"] == "realization"
    assert ens.realization.attrs["units"] == "1"
    assert ens.realization.dtype.kind == "i"
    np.testing.assert_array_equal(ens.time, tmpl.time)
    assert ens.y.attrs == tmpl.y.attrs
    for k in ("units", "standard_name", "long_name", "cell_methods"):
        assert ens.attrs[k] == series.attrs[k]
    assert "xdiffusion" in ens.attrs["history"] and "sample(" in ens.attrs["history"]
    assert float(ens.min()) >= 0.0 and np.isfinite(ens.values).all()
    assert ens.name == series.name


def test_sample_is_reproducible_and_member_independent(tiny_model, series):
    tmpl = series.isel(time=slice(0, 4))
    a = tmpl.diffusion.sample(tiny_model, n=4, seed=5, **GEN)
    b = tmpl.diffusion.sample(tiny_model, n=4, seed=5, batch_size=3, **GEN)
    c = tmpl.diffusion.sample(tiny_model, n=2, seed=5, **GEN)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.values[:2], c.values)
    d = tmpl.diffusion.sample(tiny_model, n=2, seed=6, **GEN)
    assert not np.array_equal(c.values, d.values)


def test_long_template_extends_autoregressively(tiny_model, series):
    ens = series.isel(time=slice(0, 11)).diffusion.sample(tiny_model, n=2, **GEN)
    assert ens.sizes["time"] == 11 and np.isfinite(ens.values).all()


def test_dataset_output_global_attrs(tiny_model, series):
    ds = series.isel(time=slice(0, 4)).to_dataset()
    ds.attrs["history"] = "made by a test"
    out = ds.diffusion.sample(tiny_model, n=2, **GEN)
    assert isinstance(out, xr.Dataset)
    assert out.attrs["Conventions"].startswith("CF-")
    assert out.attrs["source"].startswith("xdiffusion")
    assert out.attrs["history"].startswith("made by a test\n")
    assert out.attrs["title"]


def test_bad_inputs(tiny_model, series):
    with pytest.raises(ValueError, match="grid"):
        series.isel(x=slice(0, 10)).diffusion.sample(tiny_model, n=1)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        series.diffusion.sample(tiny_model, n=0)
    with pytest.raises(TypeError, match=r"model must be an xdiffusion\.DiffusionModel"):
        series.diffusion.sample("model.nc", n=1)
    with pytest.raises(ValueError, match=r"frames=500 is longer"):
        series.diffusion.fit(**{**FIT, "frames": 500})
    with pytest.raises(ValueError, match="all NaN"):
        (series * np.nan).diffusion.fit(**FIT)
    with pytest.raises(TypeError, match="non-numeric"):
        series.astype(str).diffusion.fit(**FIT)
    with pytest.raises(ValueError, match="no time axis"):
        series.isel(time=0).diffusion.fit(**FIT)
    with pytest.raises(ValueError, match="below the lower bound"):
        (series - 1).diffusion.fit(**FIT)
    with pytest.raises(ValueError, match="sampler"):
        series.isel(time=slice(0, 4)).diffusion.sample(tiny_model, n=1, sampler="euler-x")


def test_fit_dask_not_computed_whole():
    da = make_series(nt=120)
    reads = []
    values = da.values

    def loader(block_info=None):
        sl = tuple(slice(a, b) for a, b in block_info[None]["array-location"])
        reads.append(values[sl].size)
        return values[sl]

    chunks = ((20,) * 6, (16,), (16,))
    lazy = da.copy(data=dsa.map_blocks(loader, chunks=chunks, dtype=np.float32))
    sched = CountingScheduler(max_computes=1)
    with dask.config.set(scheduler=sched):
        p = prepare(lazy)
        stats = channel_stats(p.data)
    assert sched.total == 1  # one streaming reduction in set-up
    assert max(reads) <= 20 * 16 * 16  # read chunk by chunk, never the whole array
    np.testing.assert_allclose(stats["max"], [float(da.max())], rtol=1e-6)
    reads.clear()
    model = lazy.diffusion.fit(**FIT)
    assert max(reads) <= 20 * 16 * 16
    assert dask.is_dask_collection(lazy.data)
    assert model.grid == (16, 16)


def test_cftime_odd_grid_fit_sample():
    da = make_series(nt=60, ny=13, nx=19, calendar="360_day")
    model = da.diffusion.fit(**FIT)
    ens = da.isel(time=slice(0, 5)).diffusion.sample(model, n=2, **GEN)
    assert ens.shape == (2, 5, 13, 19)
    assert ens.time.values[0] == da.time.values[0]


def test_save_load_identical_samples(tiny_model, series, tmp_path):
    tiny_model.save(tmp_path / "m")
    loaded = xd.load(tmp_path / "m")
    tmpl = series.isel(time=slice(0, 4))
    a = tmpl.diffusion.sample(tiny_model, n=2, seed=3, **GEN)
    b = tmpl.diffusion.sample(loaded, n=2, seed=3, **GEN)
    np.testing.assert_array_equal(a.values, b.values)
    assert loaded.config["training"]["steps"] == tiny_model.config["training"]["steps"]
    for a_, b_ in zip(tiny_model.module.state_dict().values(), loaded.module.state_dict().values()):
        assert torch.equal(a_, b_)


def test_load_refuses_bad_files(tiny_model, tmp_path):
    import json

    path = tmp_path / "m"
    tiny_model.save(path)
    cfg = json.loads((path / "config.json").read_text())
    bad = dict(cfg, schema_version=99)
    (path / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="schema_version 99"):
        xd.load(path)
    (path / "config.json").write_text(json.dumps(cfg))
    blob = bytearray((path / "ema.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (path / "ema.safetensors").write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="SHA-256"):
        xd.load(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        xd.load(path)
    with pytest.raises(ValueError, match=r"no config\.json"):
        xd.load(tmp_path)


def test_interpolate_keeps_observed_exactly(tiny_model, series):
    data = series.isel(time=slice(10, 22)).copy()
    data[{"time": [3, 4, 8]}] = np.nan
    data[0, 0, 0] = np.nan
    out = data.diffusion.interpolate(tiny_model, n=2, **GEN)
    obs = np.isfinite(data.values)
    for k in range(2):
        np.testing.assert_array_equal(out.values[k][obs], data.values[obs])
    assert np.isfinite(out.values).all()
    status = out[out.attrs["ancillary_variables"]]
    assert status.attrs["flag_meanings"] == "observed generated"
    np.testing.assert_array_equal(status.values == 1, obs)
    with pytest.raises(ValueError, match="no missing values"):
        series.isel(time=slice(0, 8)).diffusion.interpolate(tiny_model, n=1)


@pytest.mark.parametrize("calendar", ["standard", "360_day"])
def test_forecast_time_axis_continues(calendar):
    da = make_series(nt=40, calendar=calendar)
    model = da.diffusion.fit(**FIT)
    fc = da.diffusion.forecast(model, lead=5, n=2, **GEN)
    assert fc.sizes["time"] == 5 and fc.sizes["realization"] == 2
    step = da.time.values[1] - da.time.values[0]
    assert fc.time.values[0] == da.time.values[-1] + step
    assert fc.time.values[-1] == da.time.values[-1] + 5 * step
    assert np.isfinite(fc.values).all() and float(fc.min()) >= 0


def test_downscale_block_means(tiny_model, series):
    fine = series.isel(time=slice(0, 4))
    coarse = fine.coarsen(y=4, x=4).mean()
    out = coarse.diffusion.downscale(tiny_model, n=2, factor=4, **GEN)
    assert out.shape == (2, 4, 16, 16)
    np.testing.assert_allclose(out.y.values, fine.y.values, rtol=1e-9)
    back = out.coarsen(y=4, x=4).mean()
    np.testing.assert_allclose(
        back.values, np.broadcast_to(coarse.values, back.shape), rtol=1e-3, atol=1e-6
    )
    assert float(out.min()) >= 0
    like = coarse.diffusion.downscale(tiny_model, n=1, like=fine, **GEN)
    np.testing.assert_array_equal(like.x.values, fine.x.values)


def _rewrite_weights(path, tensors):
    """Replace ema.safetensors and record its new hash, as a tamperer would."""
    import hashlib
    import json

    from safetensors.torch import save_file

    save_file(tensors, path / "ema.safetensors")
    cfg = json.loads((path / "config.json").read_text())
    cfg["files"]["ema.safetensors"] = hashlib.sha256(
        (path / "ema.safetensors").read_bytes()
    ).hexdigest()
    (path / "config.json").write_text(json.dumps(cfg))


def test_load_refuses_changed_shape_missing_key_and_pickle(tiny_model, tmp_path):
    import hashlib
    import json
    import pickle

    from safetensors.torch import load_file

    path = tmp_path / "m"
    tiny_model.save(path)
    good = load_file(path / "ema.safetensors")
    name = next(k for k, v in good.items() if v.ndim == 4)
    _rewrite_weights(path, {**good, name: torch.zeros(good[name].shape[0] + 1, 1, 1, 1)})
    with pytest.raises(ValueError, match="does not fit the configured network"):
        xd.load(path)
    _rewrite_weights(path, {k: v for k, v in good.items() if k != name})
    with pytest.raises(ValueError, match="does not fit the configured network"):
        xd.load(path)

    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    blob = pickle.dumps({"weights": Payload()})
    (path / "ema.safetensors").write_bytes(blob)
    cfg = json.loads((path / "config.json").read_text())
    cfg["files"]["ema.safetensors"] = hashlib.sha256(blob).hexdigest()
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="not a safetensors file"):
        xd.load(path)


def test_sampling_settings_resolved_once(tiny_model, monkeypatch):
    """Task default ← fit-time choice ← call; a step count stays with its sampler."""

    def resolved(task, **kw):
        st = tiny_model.sampling(task, **kw)
        return st.sampler, st.steps

    fitted_steps = tiny_model.config["sampling"]["steps"]  # fit(sampling_steps=3) of conftest
    assert fitted_steps == 3
    monkeypatch.setitem(tiny_model.config, "sampling", {"sampler": None, "steps": None})
    assert resolved("sample") == ("dpmpp_2m", 20)
    assert resolved("sample", sampler="dpmpp_2m") == ("dpmpp_2m", 20)  # not the registry's 25
    assert resolved("interpolate") == ("dpmpp_2m", 25)
    assert resolved("downscale") == ("dpmpp_2m", 25)
    assert resolved("sample", sampler="dpmpp_3m") == ("dpmpp_3m", 25)  # registry default
    with pytest.raises(ValueError, match="task must be one of"):
        tiny_model.sampling("nowcast")
    assert resolved("forecast") == ("dpmpp_2m_sde", 25)
    assert resolved("forecast", sampler="dpmpp_2m_sde") == ("dpmpp_2m_sde", 25)  # not 50
    assert resolved("forecast", steps=7) == ("dpmpp_2m_sde", 7)
    assert resolved("forecast", sampler="ddim") == ("ddim", 50)
    assert tiny_model.sampling("forecast").guidance_weight == 3.0
    assert tiny_model.sampling("downscale").guidance_weight == 1.0
    assert tiny_model.sampling("interpolate", method="imputation").guidance_weight is None
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        tiny_model.sampling("sample", steps=0)
    assert resolved("sample", steps=np.int64(4)) == ("dpmpp_2m", 4)  # numpy integers work
    # A sampler chosen at fit time wins over the task default; its steps go with it.
    monkeypatch.setitem(tiny_model.config, "sampling", {"sampler": "dpmpp_3m", "steps": 9})
    assert resolved("forecast") == ("dpmpp_3m", 9)
    assert resolved("forecast", sampler="dpmpp_3m") == ("dpmpp_3m", 9)
    assert resolved("forecast", sampler="dpmpp_2m_sde") == ("dpmpp_2m_sde", 25)
    # fit(sampling_steps=) without a sampler applies to each task's default sampler
    monkeypatch.undo()
    assert resolved("forecast") == ("dpmpp_2m_sde", 3)
    assert resolved("sample") == ("dpmpp_2m", 3)
    assert resolved("sample", sampler="dpmpp_2m") == ("dpmpp_2m", 3)


def test_default_sampler_named_or_not_gives_identical_members(tiny_model, series):
    """``sample()`` and ``sample(sampler=<its default>)`` run the same settings, and the
    outputs record what ran (history line and ``sampling`` attribute)."""
    tmpl = series.isel(time=slice(0, 6))
    kw = {"n": 2, "seed": 5, "progress": False}
    a = tmpl.diffusion.sample(tiny_model, **kw)
    b = tmpl.diffusion.sample(tiny_model, sampler="dpmpp_2m", **kw)
    np.testing.assert_array_equal(a.values, b.values)
    assert a.attrs["sampling"] == "sampler=dpmpp_2m steps=3 method=guidance guidance_weight=3"
    last = a.attrs["history"].splitlines()[-1]
    assert "sample(" in last and "sampler='dpmpp_2m'" in last and "steps=3" in last
    assert "None" not in last
    ds = as_dataset(tmpl).diffusion.sample(tiny_model, **kw)
    assert ds.attrs["sampling"] == a.attrs["sampling"] == ds["pr"].attrs["sampling"]
    fc = tmpl.diffusion.forecast(tiny_model, lead=2, n=1, progress=False)
    assert fc.attrs["sampling"].startswith("sampler=dpmpp_2m_sde steps=3 method=guidance")
    assert "guidance_weight=3.0" in fc.attrs["history"].splitlines()[-1]


def test_forecast_default_is_the_stochastic_solver(tiny_model, series):
    fitted_steps = tiny_model.config["sampling"]["steps"]
    # forecast() without sampler= is the stochastic 2M solver (25 steps unless fit set some).
    hist = series.isel(time=slice(0, 6))
    kw = {"lead": 2, "n": 2, "seed": 3, "progress": False}
    default = hist.diffusion.forecast(tiny_model, **kw)
    steps = fitted_steps or 25
    explicit = hist.diffusion.forecast(tiny_model, sampler="dpmpp_2m_sde", steps=steps, **kw)
    other = hist.diffusion.forecast(tiny_model, sampler="dpmpp_2m", steps=steps, **kw)
    np.testing.assert_array_equal(default.values, explicit.values)
    assert not np.array_equal(default.values, other.values)


def test_schema_1_model_files_are_migrated(series, tmp_path):
    """Model files from before the codec (schema 1: ``pipeline`` entries, h_ω under
    ``learned.<c>.*``) load and generate the same members as the model that wrote them."""
    import hashlib
    import json

    from safetensors.torch import load_file, save_file

    model = series.diffusion.fit(
        frames=4,
        steps=3,
        batch_size=2,
        transform="learned",
        progress=False,
        device="cpu",
        net=TINY_NET,
    )
    path = tmp_path / "v1"
    model.save(path)
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["schema_version"] == 2
    for name in list(cfg["files"]):
        tensors = load_file(path / name)
        renamed = {
            k.replace("codec.variables.0.learned.", "learned.0."): v for k, v in tensors.items()
        }
        assert any(k.startswith("learned.0.") for k in renamed)
        save_file(renamed, path / name)
        cfg["files"][name] = hashlib.sha256((path / name).read_bytes()).hexdigest()
    for v in cfg["variables"]:
        codec = v.pop("codec")
        v["pipeline"] = {**codec, "learned": None}
    cfg["schema_version"] = 1
    (path / "config.json").write_text(json.dumps(cfg))
    old = xd.load(path)
    assert old.codec[0].has_learned and old.config["schema_version"] == 2
    tmpl = series.isel(time=slice(0, 4))
    kw = {"n": 2, "seed": 1, "steps": 3, "progress": False}
    a, b = tmpl.diffusion.sample(model, **kw), tmpl.diffusion.sample(old, **kw)
    np.testing.assert_array_equal(a.values, b.values)
    cfg["schema_version"] = 7
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="schema_version 7 is not supported"):
        xd.load(path)


@pytest.mark.parametrize("method", ["sample", "interpolate", "forecast", "downscale"])
def test_accessor_signatures_are_explicit_and_match_the_model(method):
    """``help(da.diffusion.sample)`` shows every argument: the accessor spells out the
    model method's signature (its first argument is the object itself)."""
    import inspect

    acc = inspect.signature(getattr(xr.DataArray.diffusion, method))
    mod = inspect.signature(getattr(xd.DiffusionModel, method))
    acc_params = list(acc.parameters.values())[2:]  # self, model
    mod_params = list(mod.parameters.values())[2:]  # self, the data argument
    assert [(p.name, p.kind, p.default) for p in acc_params] == [
        (p.name, p.kind, p.default) for p in mod_params
    ]
    names = {p.name for p in acc_params}
    assert {"seed", "steps", "sampler", "dims", "n"} <= names
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in acc_params)
    assert "Parameters" in (getattr(xd.DiffusionModel, method).__doc__ or "")


def test_fit_accessor_signature_matches_fit():
    import inspect

    acc = list(inspect.signature(xr.DataArray.diffusion.fit).parameters.values())[1:]
    fit = list(inspect.signature(xd.fit).parameters.values())[1:]
    assert [(p.name, p.default) for p in acc] == [(p.name, p.default) for p in fit]
