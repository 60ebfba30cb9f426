"""Archive jobs: zarr stores written region by region, resumed after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import xarray as xr

from xdiffusion.archive import PROGRESS, regions, write_zarr


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "xdiffusion.cli", *args]


@pytest.fixture
def job(tmp_path, tiny_model, series):
    model = tmp_path / "model"
    tiny_model.save(model)
    coarse = series.isel(time=slice(0, 40)).coarsen(x=4, y=4).mean()
    coarse.to_dataset().to_netcdf(tmp_path / "coarse.nc")
    args = [str(model), str(tmp_path / "coarse.nc"), "--factor", "4", "--n", "3"]
    args += ["--batch-size", "1", "--chunks", "4", "--steps", "2", "--quiet", "--device", "cpu"]
    return tmp_path, ["downscale", *args]


def test_cli_zarr_job_resumes_after_sigkill(job):
    tmp, args = job
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole = tmp / "whole.zarr"
    subprocess.run(_cli(*args, "--out", str(whole)), check=True, env=env, timeout=300)
    ref = xr.open_zarr(whole)
    assert ref.pr.shape == (3, 40, 16, 16) and ref.pr.chunks[1][0] == 4
    assert json.loads((whole / PROGRESS).read_text())["complete"]

    killed = tmp / "killed.zarr"
    proc = subprocess.Popen(_cli(*args, "--out", str(killed)), env=env)
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and proc.poll() is None:
        try:
            done = len(json.loads((killed / PROGRESS).read_text())["done"])
        except (FileNotFoundError, json.JSONDecodeError):
            done = 0
        if done >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    record = json.loads((killed / PROGRESS).read_text())
    assert 3 <= len(record["done"]) < 30 and not record.get("complete")

    out = subprocess.run(
        _cli(*args, "--out", str(killed)), check=True, env=env, capture_output=True, text=True
    )
    assert "resumed" in out.stdout
    skipped = int(out.stdout.split("regions written, ")[1].split(" resumed")[0])
    assert skipped >= len(record["done"])
    again = xr.open_zarr(killed)
    np.testing.assert_array_equal(again.pr.values, ref.pr.values)

    # another job's arguments on the same store are refused, not mixed in
    other = subprocess.run(
        _cli(*[a if a != "3" else "2" for a in args], "--out", str(killed)),
        env=env,
        capture_output=True,
        text=True,
    )
    assert other.returncode != 0 and "another job" in other.stderr


def test_write_zarr_regions_and_refusals(tmp_path, tiny_model, series):
    coarse = series.isel(time=slice(0, 12)).coarsen(x=4, y=4).mean().chunk(time=4)
    lazy = coarse.diffusion.downscale(
        tiny_model, factor=4, n=2, batch_size=1, steps=2, seed=1, progress=False
    )
    ds = lazy.to_dataset()
    assert len(regions(ds)) == 2 * 3
    store = tmp_path / "a.zarr"
    first = write_zarr(ds, store, job={"k": 1}, progress=False)
    assert first == {"regions": 6, "written": 6, "skipped": 0}
    assert write_zarr(ds, store, job={"k": 1}, progress=False)["skipped"] == 6
    np.testing.assert_array_equal(xr.open_zarr(store).pr.values, lazy.values)
    with pytest.raises(ValueError, match="another job"):
        write_zarr(ds, store, job={"k": 2}, progress=False)
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="not an unfinished xdiffusion job"):
        write_zarr(ds, tmp_path / "plain", progress=False)


def test_chained_regions_are_written_together_each_window_once(
    tmp_path, tiny_model, series, monkeypatch
):
    from xdiffusion.archive import units
    from xdiffusion.engine import Engine

    calls = {"n": 0}
    original = Engine.run

    def counted(self, *a, **k):
        calls["n"] += 1
        return original(self, *a, **k)

    monkeypatch.setattr(Engine, "run", counted)
    kw = {"n": 2, "batch_size": 1, "steps": 2, "seed": 4, "progress": False}
    lazy = series.isel(time=slice(0, 24)).chunk(time=8).diffusion.sample(tiny_model, **kw)
    ds = lazy.to_dataset()
    todo = regions(ds)
    assert len(todo) == 2 * 3
    # a long sample chains its windows along time: one unit per member block
    grouped = units(ds, todo)
    assert [len(u) for u in grouped] == [3, 3]
    assert {r["realization"].start for r in grouped[0]} == {0}
    calls["n"] = 0
    expected = lazy.values
    once = calls["n"]
    assert once > 0
    calls["n"] = 0
    write_zarr(ds, tmp_path / "s.zarr", progress=False, concurrency=2)
    assert calls["n"] == once  # not re-run for every later time chunk
    np.testing.assert_array_equal(xr.open_zarr(tmp_path / "s.zarr").pr.values, expected)

    # downscaling regions share no network task: each is its own unit
    coarse = series.isel(time=slice(0, 12)).coarsen(x=4, y=4).mean().chunk(time=4)
    down = coarse.diffusion.downscale(tiny_model, factor=4, **kw).to_dataset()
    assert [len(u) for u in units(down, regions(down))] == [1] * 6


def test_regions_in_flight_do_not_change_the_store(tmp_path, tiny_model, series):
    coarse = series.isel(time=slice(0, 12)).coarsen(x=4, y=4).mean().chunk(time=4)
    kw = {"n": 2, "batch_size": 1, "steps": 2, "seed": 2, "progress": False}
    ds = coarse.diffusion.downscale(tiny_model, factor=4, **kw).to_dataset()
    write_zarr(ds, tmp_path / "one.zarr", progress=False, concurrency=1)
    write_zarr(ds, tmp_path / "three.zarr", progress=False, concurrency=3)
    one, three = xr.open_zarr(tmp_path / "one.zarr"), xr.open_zarr(tmp_path / "three.zarr")
    np.testing.assert_array_equal(one.pr.values, three.pr.values)
    record = json.loads((tmp_path / "three.zarr" / PROGRESS).read_text())
    assert record["complete"] and len(record["done"]) == 6
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="concurrency"):
            write_zarr(ds, tmp_path / f"bad{bad}.zarr", progress=False, concurrency=bad)


def test_cli_processes_scheduler_writes_the_same_store(job):
    tmp, args = job
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name, sched in (("t.zarr", "threads"), ("p.zarr", "processes")):
        subprocess.run(
            _cli(*args, "--scheduler", sched, "--out", str(tmp / name)),
            check=True,
            env=env,
            timeout=300,
        )
    np.testing.assert_array_equal(
        xr.open_zarr(tmp / "t.zarr").pr.values, xr.open_zarr(tmp / "p.zarr").pr.values
    )
