"""The command line: errors, --out checks, options, evaluate and the demo's threads."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import TINY_NET

import xdiffusion
from xdiffusion import cli
from xdiffusion.cli import main, parse_dims, parse_encoder, parse_net, parse_time_features

NET = "width=8,mults=1-2"


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "xdiffusion.cli", *args]


def _fails(capsys, argv: list[str], match: str) -> str:
    """main(argv) exits with status 2 and 'error: ...' matching ``match`` on stderr."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert match in err, err
    return err


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_model, series):
    tmp = tmp_path_factory.mktemp("cli")
    model = tmp / "model"
    tiny_model.save(model)
    ds = series.isel(time=slice(0, 16)).to_dataset()
    ds.to_netcdf(tmp / "data.nc")
    ds.assign(pr2=2 * ds.pr, tas=ds.pr + 270).to_netcdf(tmp / "multi.nc")
    coarse = series.isel(time=slice(0, 8)).coarsen(x=4, y=4).mean()
    coarse.to_dataset().to_netcdf(tmp / "coarse.nc")
    series.isel(time=slice(0, 8)).to_dataset().to_netcdf(tmp / "fine.nc")
    return tmp


@pytest.fixture
def no_fit(monkeypatch):
    """Fitting must not start: fail loudly if xdiffusion.fitting.fit is called."""

    def refuse(*args, **kwargs):
        raise AssertionError("fit was called despite a bad --out")

    monkeypatch.setattr("xdiffusion.fitting.fit", refuse)


@pytest.fixture
def fake_fit(monkeypatch, tiny_model):
    """Record what the CLI passes to xdiffusion.fitting.fit; return the tiny model."""
    calls: list[dict] = []

    def record(data, **kwargs):
        calls.append({"data": data, **kwargs})
        return tiny_model

    monkeypatch.setattr("xdiffusion.fitting.fit", record)
    return calls


# ------------------------------------------------------------------ errors


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"xdiffusion {xdiffusion.__version__}"


def test_library_errors_exit_2_without_traceback(tmp_path):
    missing = str(tmp_path / "missing.nc")
    res = subprocess.run(
        _cli("fit", missing, "--out", str(tmp_path / "m")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2
    assert res.stderr.startswith("error: input file") and "missing.nc" in res.stderr
    assert "Traceback" not in res.stderr
    # --debug: the exception itself (in-process here; a traceback and status 1 in a shell)
    with pytest.raises(FileNotFoundError, match=r"missing\.nc"):
        main(["--debug", "fit", missing, "--out", str(tmp_path / "m")])


def test_usage_errors_exit_2(capsys, files):
    with pytest.raises(SystemExit) as exc:
        main(["fit"])  # no data, no --out
    assert exc.value.code == 2
    for bad in (
        ["fit", "x.nc", "--out", "m", "--net", "width"],
        ["fit", "x.nc", "--out", "m", "--net", "mults=1--2"],
        ["fit", "x.nc", "--out", "m", "--net", "[1, 2]"],
        ["fit", "x.nc", "--out", "m", "--dims", "Z=lev"],
        ["fit", "x.nc", "--out", "m", "--time-features", "month"],
        ["demo", "--threads", "0"],
        # downscale: exactly one of --factor and --like
        ["downscale", "m", "c.nc", "--out", "o.nc"],
        ["downscale", "m", "c.nc", "--out", "o.nc", "--factor", "4", "--like", "f.nc"],
    ):
        with pytest.raises(SystemExit) as exc:
            main(bad)
        assert exc.value.code == 2, bad
        assert "error:" in capsys.readouterr().err


def test_in_process_errors_and_debug(capsys, files, tmp_path):
    data = str(files / "data.nc")
    out = str(tmp_path / "m")
    _fails(capsys, ["fit", data, "--var", "tas", "--out", out], "error: --var tas not in")
    with pytest.raises(ValueError, match="--var tas not in"):
        main(["--debug", "fit", data, "--var", "tas", "--out", out])
    with pytest.raises(ValueError, match="--var tas not in"):
        main(["fit", data, "--var", "tas", "--out", out, "--debug"])  # after the command too
    # a model directory that is not one: the library's ValueError, as an error line
    (tmp_path / "notamodel").mkdir()
    err = _fails(
        capsys,
        ["sample", str(tmp_path / "notamodel"), "--like", data, "--out", str(tmp_path / "o.nc")],
        "error: ",
    )
    assert "Traceback" not in err
    # not a netCDF file at all
    (tmp_path / "junk.nc").write_text("not netcdf")
    _fails(capsys, ["fit", str(tmp_path / "junk.nc"), "--out", out], "error: ")
    # an unknown network setting fails before any data is read
    err = _fails(capsys, ["fit", data, "--out", out, "--net", "wdith=8"], "error: --preset")
    assert "wdith" in err


def test_zarr_job_refusal_is_an_error_line(files, tmp_path, capsys):
    store = tmp_path / "plain.zarr"
    store.mkdir()
    argv = ["downscale", str(files / "model"), str(files / "coarse.nc"), "--factor", "4"]
    _fails(capsys, [*argv, "--out", str(store)], "not an unfinished xdiffusion job")


# ------------------------------------------------------------------ --out checks


def test_bad_out_fails_before_fitting(capsys, files, tmp_path, no_fit):
    data = str(files / "data.nc")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    for out, match in (
        (str(a_file), "exists and is not a directory"),
        (str(a_file / "model"), "is not a directory"),  # parent is a file
        (data, "is the input"),
        (str(files), "would replace the input"),  # a folder holding the input
        (str(full), "not an xdiffusion model"),
        ("", "--out is empty"),
    ):
        _fails(capsys, ["fit", data, "--out", out, "--steps", "1"], match)
    assert not (a_file / "model").exists()


def test_bad_out_fails_before_generating(capsys, files, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded despite a bad --out")

    monkeypatch.setattr("xdiffusion.load", refuse)
    model, data = str(files / "model"), str(files / "data.nc")
    a_dir = tmp_path / "dir.nc"
    a_dir.mkdir()
    a_file = tmp_path / "file.zarr"
    a_file.write_text("x")
    sample = ["sample", model, "--like", data, "--n", "1"]
    _fails(capsys, [*sample, "--out", str(a_dir)], "is a directory")
    _fails(capsys, [*sample, "--out", data], "is the input")
    _fails(capsys, [*sample, "--out", str(files / "model" / "x.nc")], "inside the input")
    _fails(capsys, [*sample, "--out", str(a_file)], "exists and is not a directory")
    _fails(capsys, [*sample, "--out", str(a_file / "x.nc")], "is not a directory")
    inter = ["interpolate", model, data, "--n", "1"]
    _fails(capsys, [*inter, "--out", data], "is the input")
    fine = str(files / "fine.nc")
    down = ["downscale", model, str(files / "coarse.nc"), "--like", fine]
    _fails(capsys, [*down, "--out", fine], "is the input")
    evaluate = ["evaluate", data, fine]
    _fails(capsys, [*evaluate, "--out", fine], "is the input")
    _fails(capsys, ["demo", "--tiny", "--out", str(a_file)], "exists and is not a directory")


def test_fit_refuses_an_existing_model_before_fitting(capsys, files, tmp_path, fake_fit):
    """A model in --out is replaced only with --overwrite, and the refusal comes first."""
    data, out = str(files / "data.nc"), tmp_path / "model"
    assert main(["fit", data, "--out", str(out), "--quiet"]) == 0
    before = (out / "config.json").read_bytes()
    err = _fails(capsys, ["fit", data, "--out", str(out)], "already holds a model")
    assert "--overwrite" in err and "nothing was fitted" in err
    assert len(fake_fit) == 1 and (out / "config.json").read_bytes() == before
    assert main(["fit", data, "--out", str(out), "--overwrite", "--quiet"]) == 0
    assert len(fake_fit) == 2
    # --overwrite never replaces a directory that holds something else
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    _fails(capsys, ["fit", data, "--out", str(full), "--overwrite"], "not an xdiffusion model")
    assert (full / "keep.txt").exists() and len(fake_fit) == 2


# ------------------------------------------------------------------ options


def test_help_shows_defaults_and_choices(capsys):
    def help_of(*argv: str) -> str:
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--help"])
        assert exc.value.code == 0
        return " ".join(capsys.readouterr().out.split())  # unwrapped

    fit = help_of("fit")
    for text in ("(default: 2000)", "(default: 16)", "(default: sqrt)", "(default: small)"):
        assert text in fit, text
    assert "{none,sqrt,log1p,learned}" in fit and "{small,reference}" in fit
    assert "--overwrite" in fit and "(default: None)" not in fit
    sample = help_of("sample")
    assert "dpmpp_2m_sde" in sample and "else 20 for sample" in sample
    assert "--start TIME" in sample and "--length N" in sample
    assert "else dpmpp_2m_sde for forecast" in help_of("forecast")
    assert "(default: guidance)" in help_of("interpolate")
    for command in ("demo", "fit", "sample", "interpolate", "forecast", "downscale", "evaluate"):
        parser = cli.build_parser()._subparsers._group_actions[0].choices[command]
        missing = [a.dest for a in parser._actions if not a.help]
        assert not missing, (command, missing)


def test_names_spelled_out_for_help_match_the_registries():
    from xdiffusion.core.samplers import SAMPLERS
    from xdiffusion.nets.unet import _PRESETS
    from xdiffusion.settings import METHODS, TASK_DEFAULTS
    from xdiffusion.training import OBJECTIVES
    from xdiffusion.transforms import _REGISTRY

    assert set(cli.SAMPLER_NAMES) == set(SAMPLERS)
    # other tests register transforms of their own ("test_…") in the same registry
    shipped = {n for n in _REGISTRY if not n.startswith("test_")}
    assert set(cli.TRANSFORM_NAMES) == {*shipped, "learned"}
    assert set(cli.PRESET_NAMES) == set(_PRESETS)
    assert tuple(cli.METHOD_NAMES) == tuple(METHODS)
    assert tuple(cli.OBJECTIVE_NAMES) == tuple(OBJECTIVES)
    assert cli.TASK_SAMPLING == TASK_DEFAULTS


def test_sample_start_length_and_provenance(files, tmp_path, capsys):
    """--start/--length pick a stretch of a long template; the history names the model."""
    data = files / "data.nc"
    times = xr.open_dataset(data).time.values
    out = tmp_path / "ens.nc"
    argv = ["sample", str(files / "model"), "--like", str(data), "--n", "1", "--steps", "2"]
    argv += ["--quiet", "--device", "cpu"]
    start = str(np.datetime_as_string(times[5], unit="m"))
    assert main([*argv, "--start", start, "--length", "4", "--out", str(out)]) == 0
    ens = xr.open_dataset(out)
    np.testing.assert_array_equal(ens.time.values, times[5:9])
    line = ens.attrs["history"].splitlines()[-1]
    digest = hashlib.sha256((files / "model" / "config.json").read_bytes()).hexdigest()
    assert f"model={str(files / 'model')!r}" in line
    assert f"config_sha256={digest[:12]!r}" in line
    assert "sampler='dpmpp_2m'" in line and "steps=2" in line
    assert ens.attrs["title"] == "xdiffusion sample output"  # the template had none
    # --length alone: from the first step; --start alone: to the end
    assert main([*argv, "--length", "3", "--out", str(tmp_path / "a.nc")]) == 0
    np.testing.assert_array_equal(xr.open_dataset(tmp_path / "a.nc").time.values, times[:3])
    assert main([*argv, "--start", start, "--out", str(tmp_path / "b.nc")]) == 0
    np.testing.assert_array_equal(xr.open_dataset(tmp_path / "b.nc").time.values, times[5:])
    bad = tmp_path / "bad.nc"
    _fails(capsys, [*argv, "--start", "2001-01-01", "--out", str(bad)], "after the last")
    _fails(capsys, [*argv, "--length", "99", "--out", str(bad)], "has only 16 time steps")
    _fails(capsys, [*argv, "--start", "soon", "--out", str(bad)], "is not a time of")
    assert not bad.exists()


def test_option_syntax():
    assert parse_dims("T=time,Y=rlat,X=rlon") == {"T": "time", "Y": "rlat", "X": "rlon"}
    assert parse_dims("t=step, x=col") == {"T": "step", "X": "col"}
    assert parse_dims('{"Y": "lat"}') == {"Y": "lat"}
    assert parse_net(NET) == TINY_NET
    assert parse_net('{"width": 8, "mults": [1, 2]}') == TINY_NET
    assert parse_net(
        "spatial_attention=none-full,temporal_attention=true-false,dropout=0.1,"
        "lam_scale=-1,lr=1e-3,head_dim=null,pad_mode=reflect"
    ) == {
        "spatial_attention": ["none", "full"],
        "temporal_attention": [True, False],
        "dropout": 0.1,
        "lam_scale": -1,
        "lr": 1e-3,
        "head_dim": None,
        "pad_mode": "reflect",
    }
    assert parse_time_features("season,hour") == ["season", "hour"]
    assert parse_encoder("width=8,pooling=mean") == {"width": 8, "pooling": "mean"}
    assert parse_encoder('{"levels": 2}') == {"levels": 2}
    assert cli._variables(["pr", "tas,pr2", "pr"]) == ["pr", "tas", "pr2"]
    for parse, text in (
        (parse_dims, "T=time,t=t2"),
        (parse_dims, "T"),
        (parse_net, "width=8,width=9"),
        (parse_net, "{bad json"),
        (parse_encoder, "pooling"),
        (parse_time_features, "season,season"),
    ):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)


def test_fit_options_reach_fit(capsys, files, tmp_path, fake_fit):
    out = tmp_path / "model"
    argv = ["fit", str(files / "multi.nc"), "--out", str(out), "--quiet"]
    argv += ["--var", "pr", "--var", "pr2", "--dims", "T=time,Y=y,X=x", "--net", NET]
    argv += ["--time-features", "season,hour", "--preset", "small"]
    assert main([*argv, "--t-sampling", "stratified", "--lr-schedule", "constant"]) == 0
    call = fake_fit[-1]
    assert call["t_sampling"] == "stratified" and call["lr_schedule"] == "constant"
    assert isinstance(call["data"], xr.Dataset) and list(call["data"].data_vars) == ["pr", "pr2"]
    assert call["dims"] == {"T": "time", "Y": "y", "X": "x"}
    assert call["net"] == TINY_NET
    assert call["time_features"] == ["season", "hour"]
    assert (out / "config.json").exists()
    again = [*argv[:4], "--overwrite", "--quiet"]  # --out now holds a model
    assert main([*again, "--var", "pr2,tas", "--out", str(out)]) == 0
    assert list(fake_fit[-1]["data"].data_vars) == ["pr2", "tas"]
    assert fake_fit[-1]["net"] is None and fake_fit[-1]["time_features"] is None
    assert main([*again, "--out", str(out), "--net", json.dumps(TINY_NET)]) == 0
    assert fake_fit[-1]["net"] == TINY_NET
    assert list(fake_fit[-1]["data"].data_vars) == ["pr", "pr2", "tas"]  # default: all


def test_dims_fit_and_sample(capsys, series, tmp_path):
    """Dimensions with names and attributes nothing recognises: --dims makes them usable."""
    odd = series.isel(time=slice(0, 24)).rename(time="step", y="row", x="col").to_dataset()
    for c in odd.coords:
        odd[c].attrs = {}
    data = tmp_path / "odd.nc"
    odd.to_netcdf(data)
    model = tmp_path / "model"
    fit = ["fit", str(data), "--out", str(model), "--frames", "4", "--steps", "2"]
    fit += ["--batch-size", "2", "--net", NET, "--quiet", "--device", "cpu"]
    _fails(capsys, fit, "no time axis found")
    dims = ["--dims", "T=step,Y=row,X=col"]
    assert main([*fit, *dims]) == 0
    assert json.loads((model / "config.json").read_text())["net"]["width"] == 8
    out = tmp_path / "ens.nc"
    sample = ["sample", str(model), "--like", str(data), "--n", "1", "--steps", "2"]
    sample += ["--out", str(out), "--quiet", "--device", "cpu"]
    _fails(capsys, sample, "error: ")
    assert main([*sample, *dims]) == 0
    ens = xr.open_dataset(out)
    assert ens.pr.dims == ("realization", "step", "row", "col")


def test_several_vars_select_a_dataset(files, tmp_path, capsys):
    out = tmp_path / "ens.nc"
    argv = ["sample", str(files / "model"), "--like", str(files / "multi.nc"), "--var", "pr"]
    assert main([*argv, "--n", "1", "--steps", "2", "--out", str(out), "--quiet"]) == 0
    assert list(xr.open_dataset(out).data_vars) == ["pr"]
    # the selection reaches the model: a template of pr2 alone lacks the model's pr
    argv[-1] = "pr2,tas"
    _fails(capsys, [*argv, "--out", str(tmp_path / "two.nc")], "lacks the model's variable")


def test_downscale_like(files, tmp_path, capsys):
    out = tmp_path / "fine_ens.nc"
    argv = ["downscale", str(files / "model"), str(files / "coarse.nc"), "--n", "1"]
    argv += ["--steps", "2", "--quiet", "--device", "cpu"]
    assert main([*argv, "--like", str(files / "fine.nc"), "--out", str(out)]) == 0
    fine = xr.open_dataset(files / "fine.nc")
    ens = xr.open_dataset(out)
    assert ens.pr.shape == (1, 8, 16, 16)
    np.testing.assert_allclose(ens.x.values, fine.x.values)
    np.testing.assert_allclose(ens.y.values, fine.y.values)
    by_factor = tmp_path / "by_factor.nc"
    assert main([*argv, "--factor", "4", "--out", str(by_factor)]) == 0
    np.testing.assert_array_equal(xr.open_dataset(by_factor).pr.values, ens.pr.values)


# ------------------------------------------------------------------ evaluate


def test_evaluate(files, tiny_model, series, tmp_path, capsys):
    from xdiffusion.diagnostics import evaluate

    ens = series.isel(time=slice(0, 8)).diffusion.sample(tiny_model, 2, steps=2, progress=False)
    ens.to_dataset().assign(tas=ens + 270).to_netcdf(tmp_path / "ens.nc")
    obs = series.isel(time=slice(0, 8))
    obs.to_dataset().to_netcdf(tmp_path / "obs.nc")
    ref = files / "data.nc"
    out = tmp_path / "report.nc"
    argv = ["evaluate", str(tmp_path / "ens.nc"), str(ref), "--out", str(out), "--quiet"]
    assert main([*argv, "--var", "pr", "--observations", str(tmp_path / "obs.nc")]) == 0
    report = xr.open_dataset(out)
    expected = evaluate(
        xr.open_dataset(tmp_path / "ens.nc").pr,
        xr.open_dataset(ref).pr,
        observations=xr.open_dataset(tmp_path / "obs.nc").pr,
    )
    for name in ("psd_log_error", "qq_relative_error", "crps", "crps_fair"):
        np.testing.assert_allclose(float(report[name]), float(expected[name]), rtol=1e-6)
    assert "rank_histogram" in report
    # two gridded variables and no --var: asked to choose
    _fails(capsys, argv, "choose one with --var")
    _fails(capsys, [*argv, "--var", "pr,tas"], "one variable at a time")
    _fails(capsys, [*argv, "--var", "tas"], "--var 'tas' not in")  # not in the reference
    # one gridded variable: chosen without --var
    one = tmp_path / "one.nc"
    xr.open_dataset(tmp_path / "ens.nc")[["pr"]].to_netcdf(one)
    out2 = tmp_path / "report2.nc"
    assert main(["evaluate", str(one), str(ref), "--out", str(out2), "--quiet"]) == 0
    assert "crps" not in xr.open_dataset(out2)


# ------------------------------------------------------------------ demo threads


def test_choose_threads(monkeypatch):
    from xdiffusion.demo import choose_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.2, 1.0, 1.0))
    assert choose_threads("auto")[0] == 3
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    assert choose_threads("auto")[0] == 1  # at least one
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert choose_threads("auto") == (4, "free cores: 4 usable, 1-minute load 0.00")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert choose_threads("auto") == (2, "OMP_NUM_THREADS")
    assert choose_threads(3)[0] == 3  # the option wins over the environment
    assert choose_threads(None)[0] == torch.get_num_threads()
    for bad in (0, -1, "many", 1.5, True):
        with pytest.raises(ValueError):
            choose_threads(bad)


def test_demo_threads_option(tmp_path, capsys, monkeypatch):
    """--threads reaches run_demo, is set while the demo runs, reported and restored.

    The demo's body is stubbed here (test_cf_cli.py runs the real tiny demo).
    """
    import xdiffusion.demo

    seen = []

    def body(out, **kwargs):
        seen.append(torch.get_num_threads())
        return {**kwargs["threads"], "out": str(out)}

    monkeypatch.setattr(xdiffusion.demo, "_run", body)
    before = torch.get_num_threads()
    out = tmp_path / "demo"
    argv = ["demo", "--tiny", "--quiet", "--json", "--device", "cpu", "--out", str(out)]
    assert main([*argv, "--threads", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert seen == [2] and summary["threads"] == 2
    assert summary["threads_source"].startswith("threads=")
    assert torch.get_num_threads() == before  # restored
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert main(argv) == 0  # auto: honours OMP_NUM_THREADS
    summary = json.loads(capsys.readouterr().out)
    assert seen[-1] == 1 and summary["threads_source"] == "OMP_NUM_THREADS"
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "--threads N" in capsys.readouterr().out
