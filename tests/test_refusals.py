"""Refusals found by the adversarial harness (scripts/adversarial.py) in the engine,
generation, likelihood, schedule, model files and fit: each is refused with a message
naming the argument, before anything large is allocated."""

import json
import math

import numpy as np
import pytest
from conftest import TINY_NET, make_series

import xdiffusion as xd
from xdiffusion.core.schedule import CosineSchedule


@pytest.fixture(scope="module")
def short(series):
    return series.isel(time=slice(0, 8))


@pytest.mark.parametrize("context", [1.5, True, "1", -1, 4])
def test_context_is_an_integer_not_truncated(tiny_model, short, context):
    with pytest.raises(ValueError, match=r"context must be an integer in \[0, frames - 1\]"):
        short.diffusion.sample(tiny_model, 1, context=context, progress=False)


def test_downscale_factor_beyond_the_grid_is_refused_before_building_coordinates(tiny_model, short):
    coarse = short.coarsen(x=4, y=4).mean()
    with pytest.raises(ValueError, match=r"factor 1000000000 .* larger than the model's grid"):
        coarse.diffusion.downscale(tiny_model, 1, factor=10**9, progress=False)


def test_forecast_lead_is_checked_against_memory_before_allocating(tiny_model, short):
    with pytest.raises(ValueError, match="memory"):
        short.diffusion.forecast(tiny_model, lead=10**7, progress=False)
    # lazily: a graph, nothing of the lead's size in memory
    out = short.chunk(time=4).diffusion.forecast(tiny_model, lead=1000, progress=False)
    assert out.sizes["time"] == 1000 and out.chunks is not None


def test_lazy_forecast_equals_eager_with_missing_context_cells(tiny_model, short):
    gappy = short.copy()
    gappy[-1, :3, :3] = np.nan
    eager = gappy.diffusion.forecast(tiny_model, lead=6, n=2, progress=False)
    lazy = gappy.chunk(time=4).diffusion.forecast(tiny_model, lead=6, n=2, progress=False)
    np.testing.assert_array_equal(eager.values, lazy.values)


def test_forecast_refuses_a_context_with_a_missing_step(tiny_model, series):
    holey = series.isel(time=[0, 1, 2, 3, 4, 5, 7, 8])
    with pytest.raises(ValueError, match="not consecutive"):
        holey.diffusion.forecast(tiny_model, lead=2, context=2, progress=False)


def test_nll_arguments(tiny_model, short):
    with pytest.raises(ValueError, match="n_lambda must be a positive integer ≤ 10000"):
        tiny_model.nll(short, n_lambda=10**9)
    with pytest.raises(TypeError, match="terms"):
        tiny_model.nll(short, terms="yes")


@pytest.mark.parametrize("bounds", [(-1e3, 30.0), (-30.0, 1e3)])
def test_schedule_bounds_beyond_float64_are_refused(bounds):
    with pytest.raises(ValueError, match=r"must lie within ±100"):
        CosineSchedule(*bounds)
    with pytest.raises(ValueError, match="lambda"):
        make_series(nt=40).diffusion.fit(
            steps=1, frames=4, progress=False, net=TINY_NET, lambda_min=bounds[0],
            lambda_max=bounds[1],
        )  # fmt: skip


def test_sampler_coefficients_are_finite_at_the_schedules_ends():
    from xdiffusion.core.samplers import _step

    for lam_t, lam_s in [(-100.0, -99.0), (99.0, 100.0)]:
        assert all(math.isfinite(v) for v in _step(lam_t, lam_s))


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda c: c.update(data="x"), "data is invalid"),
        (lambda c: c.update(training=3), "training must be an object"),
    ],
)
def test_damaged_data_or_training_sections_are_refused_at_load(tiny_model, tmp_path, edit, words):
    path = tmp_path / "m"
    tiny_model.save(path)
    config = json.loads((path / "config.json").read_text())
    edit(config)
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=words):
        xd.load(path)


@pytest.mark.parametrize(
    "kw, words",
    [({"net": {"width": 4096}}, "parameters"), ({"batch_size": 10**6}, "batch_size=1000000")],
)
def test_fit_too_large_for_the_machine_is_refused_before_allocating(kw, words):
    with pytest.raises(ValueError, match=words):
        make_series(nt=40).diffusion.fit(steps=1, frames=4, progress=False, **kw)


def test_lazy_forecast_with_millions_of_tasks_is_refused(tiny_model, short):
    with pytest.raises(ValueError, match="longer time chunks"):
        short.chunk(time=4).diffusion.forecast(tiny_model, lead=10**7, progress=False)
