"""A catalogue of bad inputs to every public entry point.

Each must raise ValueError/TypeError at once (a SIGALRM guard fails any case that hangs)
with a message naming the offending argument and saying how to fix it; none may run on and
return garbage.
"""

import signal

import numpy as np
import pytest
import xarray as xr
from conftest import TINY_NET, make_series

import xdiffusion as xd
from xdiffusion.datasets import synthetic_precipitation
from xdiffusion.diagnostics import evaluate

FIT = dict(frames=4, steps=2, batch_size=2, progress=False, device="cpu", net=TINY_NET)
GEN = dict(steps=2, progress=False)


# one torch thread: far faster than 2 on a shared, busy CPU (the fixture is in conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def series():
    return make_series(nt=40)


@pytest.fixture(scope="module")
def model(series):
    return series.diffusion.fit(**FIT)


# ------------------------------------------------------------------ input builders
def short(s):
    return s.isel(time=slice(0, 8))


def with_nan(s, steps):
    s = s.copy()
    s[{"time": steps}] = np.nan
    return s


def with_inf(s, step):
    return s.where(s.time != s.time[step], np.inf)


def reversed_time(s):
    return s.isel(time=slice(None, None, -1))


def duplicated_time(s):
    return xr.concat([s.isel(time=[0]), s], "time")


def irregular(s):
    """Runs of 3 regular hourly steps separated by gaps: no regular window of 4 frames."""
    return s.isel(time=np.r_[0:3, 4:7, 8:11, 12:15])


def ambiguous(s):
    s = s.copy()
    s["x"].attrs["axis"] = "Y"  # two dimensions now claim to be the Y axis
    return s


def coarse(s):
    return short(s).coarsen(y=4, x=4).mean()


def off_grid(s):
    """10 columns half a cell off the training grid's: no sub-region of it."""
    part = short(s).isel(x=slice(0, 10))
    return part.assign_coords(x=part.x + 0.5 * float(part.x[1] - part.x[0]))


def fit(s, **kw):
    return s.diffusion.fit(**{**FIT, **kw})


def with_nat(s, step):
    t = s.time.values.copy()
    t[step] = np.datetime64("NaT")
    return s.assign_coords(time=t)


def overflowing(s, step):
    """float64 data with a finite value far beyond float32's range."""
    return s.astype(np.float64).where(s.time != s.time[step], 1e300)


def numeric_time(s):
    return s.assign_coords(time=np.arange(s.sizes["time"], dtype=float))


# (builder(model, series), exception, match): match names the argument or the remedy.
CASES = {
    # fit: data
    "fit-numpy": (
        lambda m, s: xd.fit(s.values, **FIT),
        TypeError,
        "data must be an xarray DataArray or Dataset",
    ),
    "fit-string": (
        lambda m, s: xd.fit("precip.nc", **FIT),
        TypeError,
        "data must be an xarray DataArray or Dataset, got str",
    ),
    "fit-all-nan": (lambda m, s: fit(s * np.nan), ValueError, "data is all NaN"),
    "fit-inf": (
        lambda m, s: fit(with_inf(s, 3)),
        ValueError,
        r"data contains infinite values.*replace them with NaN",
    ),
    "fit-negative-sqrt": (
        lambda m, s: fit(s - 1, transform="sqrt"),
        ValueError,
        r"below the lower bound 0.0 of transform 'sqrt'; clip the data",
    ),
    "fit-descending-time": (
        lambda m, s: fit(reversed_time(s)),
        ValueError,
        r"time axis has descending values.*sortby\('time'\)",
    ),
    "fit-duplicated-time": (
        lambda m, s: fit(duplicated_time(s)),
        ValueError,
        r"time axis has duplicated values.*drop_duplicates",
    ),
    "fit-irregular-time": (
        lambda m, s: fit(irregular(s)),
        ValueError,
        "no window of frames=4 consecutive regular time steps.*fewer frames",
    ),
    "fit-zero-variance": (
        lambda m, s: fit(s * 0 + 1),
        ValueError,
        "data variable 'pr' is constant",
    ),
    "fit-extra-dim": (
        lambda m, s: fit(s.expand_dims(member=2)),
        ValueError,
        r"data variable 'pr' has extra dimensions \{'member': 2\}.*isel",
    ),
    "fit-ambiguous-axes": (
        lambda m, s: fit(ambiguous(s)),
        ValueError,
        r"ambiguous y \(latitude\) axis.*dims=",
    ),
    "fit-no-time": (lambda m, s: fit(s.isel(time=0)), ValueError, "no time axis.*dims="),
    "fit-text-dtype": (
        lambda m, s: fit(s.astype(str)),
        TypeError,
        r"non-numeric dtype.*astype\('float32'\)",
    ),
    "fit-dims-key": (
        lambda m, s: fit(s, dims={"Z": "y"}),
        ValueError,
        r"dims= has unknown keys \['Z'\]",
    ),
    "fit-dims-string": (
        lambda m, s: fit(s, dims="time"),
        TypeError,
        r"dims must be a mapping .*\{'T': 'time'",
    ),
    "fit-nat-time": (
        lambda m, s: fit(with_nat(s, 5)),
        ValueError,
        r"time axis has 1 NaT .*positions \[5\].*drop those steps",
    ),
    "fit-overflow-float32": (
        lambda m, s: fit(overflowing(s, 3)),
        ValueError,
        r"variable 'pr' has values up to 1e\+300 .*overflow float32.*Rescale",
    ),
    "fit-time-features-numeric-time": (
        lambda m, s: fit(numeric_time(s), time_features="season"),
        ValueError,
        "need a datetime64 or cftime time axis",
    ),
    "fit-dims-name": (
        lambda m, s: fit(s, dims={"T": "tim"}),
        ValueError,
        r"dims=\{'T': 'tim'\} is not a dimension",
    ),
    "fit-variables": (
        lambda m, s: fit(s.to_dataset(), variables=["tas"]),
        ValueError,
        r"variables=\['tas'\] not in data; available: \['pr'\]",
    ),
    # fit: settings
    "fit-frames-0": (
        lambda m, s: fit(s, frames=0),
        ValueError,
        "frames must be a positive integer",
    ),
    "fit-frames-too-long": (
        lambda m, s: fit(s, frames=500),
        ValueError,
        "frames=500 is longer than the series",
    ),
    "fit-transform": (
        lambda m, s: fit(s, transform="cbrt"),
        ValueError,
        r"transform='cbrt'.*valid names",
    ),
    "fit-transform-map": (
        lambda m, s: fit(s, transform={"tas": "sqrt"}),
        ValueError,
        "transform= has no entry for variable 'pr'",
    ),
    "fit-transform-map-unknown": (
        lambda m, s: fit(s, transform={"pr": "sqrt", "tas": "none"}),
        ValueError,
        r"transform= has entries for \['tas'\], which are not variables.*\['pr'\]",
    ),
    "fit-preset": (
        lambda m, s: fit(s, preset="huge"),
        ValueError,
        r"preset='huge'.*choose one of \['reference', 'small'\]",
    ),
    "fit-net-key": (
        lambda m, s: fit(s, net={"widht": 8}),
        ValueError,
        r"net=\{'widht': 8\}.*unknown UNetConfig keys",
    ),
    "fit-net-type": (lambda m, s: fit(s, net=8), TypeError, "net must be a mapping"),
    "fit-device": (
        lambda m, s: fit(s, device="gpu0"),
        ValueError,
        "device='gpu0' is not a valid torch device",
    ),
    "fit-device-missing-gpu": (
        lambda m, s: fit(s, device="cuda:99"),
        ValueError,
        "device='cuda:99' but",
    ),
    "fit-device-type": (lambda m, s: fit(s, device=3), TypeError, "device must be a string"),
    "fit-steps-0": (lambda m, s: fit(s, steps=0), ValueError, "steps must be a positive integer"),
    "fit-steps-huge": (
        lambda m, s: fit(s, steps=10**30),
        ValueError,
        r"steps must be a positive integer ≤ 999999999",
    ),
    "fit-batch-size-huge": (
        lambda m, s: fit(s, batch_size=10**30),
        ValueError,
        r"batch_size must be a positive integer ≤",
    ),
    "fit-seed-huge": (
        lambda m, s: fit(s, seed=10**30),
        ValueError,
        r"seed must be a non-negative integer < 2\*\*63",
    ),
    "fit-resume-string": (
        lambda m, s: fit(s, resume="no", checkpoint_dir="unused"),
        TypeError,
        "resume must be True or False, got 'no'",
    ),
    "fit-batch-size-0": (
        lambda m, s: fit(s, batch_size=0),
        ValueError,
        "batch_size must be a positive integer",
    ),
    "fit-lr": (lambda m, s: fit(s, lr=-1.0), ValueError, "lr must be a positive number"),
    "fit-seed": (lambda m, s: fit(s, seed=-1), ValueError, "seed must be a non-negative integer"),
    "fit-ema-decay": (lambda m, s: fit(s, ema_decay=1.0), ValueError, r"ema_decay must be in"),
    "fit-val-fraction": (
        lambda m, s: fit(s, val_fraction=1.0),
        ValueError,
        r"val_fraction must be in \[0, 1\)",
    ),
    "fit-lambda": (
        lambda m, s: fit(s, lambda_min=5, lambda_max=-5),
        ValueError,
        "lambda_min .* must be below lambda_max",
    ),
    "fit-sampler": (
        lambda m, s: fit(s, sampler="eulr"),
        ValueError,
        r"sampler='eulr'; choose one of",
    ),
    "fit-sampling-steps": (
        lambda m, s: fit(s, sampling_steps=0),
        ValueError,
        "sampling_steps must be a positive integer",
    ),
    # sample
    "sample-string-model": (
        lambda m, s: short(s).diffusion.sample("model.nc", **GEN),
        TypeError,
        "model must be an xdiffusion.DiffusionModel",
    ),
    "sample-numpy-template": (
        lambda m, s: m.sample(short(s).values, **GEN),
        TypeError,
        "template must be an xarray DataArray or Dataset",
    ),
    "sample-n-0": (
        lambda m, s: short(s).diffusion.sample(m, n=0, **GEN),
        ValueError,
        "n must be a positive integer, got 0",
    ),
    "sample-n-float": (
        lambda m, s: short(s).diffusion.sample(m, n=2.5, **GEN),
        ValueError,
        "n must be a positive integer",
    ),
    "sample-sampler": (
        lambda m, s: short(s).diffusion.sample(m, sampler="eulr", **GEN),
        ValueError,
        r"sampler='eulr'; choose one of",
    ),
    "sample-steps-0": (
        lambda m, s: short(s).diffusion.sample(m, steps=0, progress=False),
        ValueError,
        "steps must be a positive integer",
    ),
    "sample-seed": (
        lambda m, s: short(s).diffusion.sample(m, seed=-1, **GEN),
        ValueError,
        "seed must be a non-negative integer",
    ),
    "sample-batch-size": (
        lambda m, s: short(s).diffusion.sample(m, batch_size=0, **GEN),
        ValueError,
        "batch_size must be a positive integer",
    ),
    "sample-context": (
        lambda m, s: short(s).diffusion.sample(m, context=4, **GEN),
        ValueError,
        r"context must be in \[0, frames - 1\]",
    ),
    "sample-other-grid": (
        lambda m, s: off_grid(s).diffusion.sample(m, **GEN),
        ValueError,
        r"template grid \(16, 10\) differs from the model's grid .* not a sub-region",
    ),
    "sample-dataset-missing-variable": (
        lambda m, s: short(s).rename("tas").to_dataset().diffusion.sample(m, **GEN),
        ValueError,
        r"template lacks the model's variable\(s\) \['pr'\].*rename",
    ),
    "sample-extra-dim": (
        lambda m, s: short(s).expand_dims(member=2).diffusion.sample(m, **GEN),
        ValueError,
        "template variable 'pr' has extra dimensions",
    ),
    "sample-descending-time": (
        lambda m, s: reversed_time(short(s)).diffusion.sample(m, **GEN),
        ValueError,
        "time axis has descending values",
    ),
    # interpolate
    "interpolate-weight": (
        lambda m, s: with_nan(short(s), [3]).diffusion.interpolate(m, guidance_weight=-1.0, **GEN),
        ValueError,
        "guidance_weight must be a non-negative number",
    ),
    "interpolate-method": (
        lambda m, s: with_nan(short(s), [3]).diffusion.interpolate(m, method="inpaint", **GEN),
        ValueError,
        "method must be 'guidance' or 'imputation', got 'inpaint'",
    ),
    "interpolate-no-gaps": (
        lambda m, s: short(s).diffusion.interpolate(m, **GEN),
        ValueError,
        "data has no missing values to fill: mark the gaps with NaN",
    ),
    "interpolate-all-nan": (
        lambda m, s: (short(s) * np.nan).diffusion.interpolate(m, **GEN),
        ValueError,
        r"data is all NaN.*use sample\(\)",
    ),
    "interpolate-inf": (
        lambda m, s: with_inf(with_nan(short(s), [3]), 1).diffusion.interpolate(m, **GEN),
        ValueError,
        "data contains infinite values",
    ),
    "interpolate-negative": (
        lambda m, s: (with_nan(short(s), [3]) - 5).diffusion.interpolate(m, **GEN),
        ValueError,
        r"data variable 'pr' has values down to -5.*clip\(min=0.0\)",
    ),
    "interpolate-duplicated-time": (
        lambda m, s: duplicated_time(with_nan(short(s), [3])).diffusion.interpolate(m, **GEN),
        ValueError,
        "time axis has duplicated values",
    ),
    "interpolate-overflow-float32": (
        lambda m, s: with_nan(overflowing(short(s), 1), [3]).diffusion.interpolate(m, **GEN),
        ValueError,
        r"values up to 1e\+300 .*overflow float32",
    ),
    # forecast
    "forecast-lead-0": (
        lambda m, s: short(s).diffusion.forecast(m, lead=0, **GEN),
        ValueError,
        "lead must be a positive integer, got 0",
    ),
    "forecast-context": (
        lambda m, s: short(s).diffusion.forecast(m, lead=2, context=4, **GEN),
        ValueError,
        r"context must be an integer in \[1, frames - 1 = 3\]",
    ),
    "forecast-too-short": (
        lambda m, s: s.isel(time=slice(0, 1)).diffusion.forecast(m, lead=2, **GEN),
        ValueError,
        "data has 1 time steps, fewer than context=2",
    ),
    "forecast-nan-context": (
        lambda m, s: with_nan(short(s), [6, 7]).diffusion.forecast(m, lead=2, **GEN),
        ValueError,
        r"data is all NaN in its last context=2 time steps.*dropna",
    ),
    "forecast-weight": (
        lambda m, s: short(s).diffusion.forecast(m, lead=2, guidance_weight=-2, **GEN),
        ValueError,
        "guidance_weight must be a non-negative number",
    ),
    "forecast-inf": (
        lambda m, s: with_inf(short(s), 7).diffusion.forecast(m, lead=2, **GEN),
        ValueError,
        "data contains infinite values",
    ),
    "forecast-nat-time": (
        lambda m, s: with_nat(short(s), 2).diffusion.forecast(m, lead=2, **GEN),
        ValueError,
        "time axis has 1 NaT",
    ),
    "forecast-descending-time": (
        lambda m, s: reversed_time(short(s)).diffusion.forecast(m, lead=2, **GEN),
        ValueError,
        "time axis has descending values",
    ),
    # downscale
    "downscale-factor-mismatch": (
        lambda m, s: coarse(s).diffusion.downscale(m, factor=2, **GEN),
        ValueError,
        r"coarse grid \(4, 4\) × factor 2 = \(8, 8\) differs from the model's fine grid",
    ),
    "downscale-no-factor": (
        lambda m, s: coarse(s).diffusion.downscale(m, **GEN),
        ValueError,
        "give factor= .* or like=",
    ),
    "downscale-factor-0": (
        lambda m, s: coarse(s).diffusion.downscale(m, factor=0, **GEN),
        ValueError,
        "factor must be a positive integer",
    ),
    "downscale-nan": (
        lambda m, s: with_nan(coarse(s), [1]).diffusion.downscale(m, factor=4, **GEN),
        ValueError,
        "coarse contains NaN or infinite values",
    ),
    "downscale-like-grid": (
        lambda m, s: coarse(s).diffusion.downscale(m, like=off_grid(s), **GEN),
        ValueError,
        r"like grid \(16, 10\) differs",
    ),
    "downscale-negative": (
        lambda m, s: (coarse(s) - 5).diffusion.downscale(m, factor=4, **GEN),
        ValueError,
        r"coarse variable 'pr' has values down to -5",
    ),
    "downscale-weight": (
        lambda m, s: coarse(s).diffusion.downscale(m, factor=4, guidance_weight=-1, **GEN),
        ValueError,
        "guidance_weight must be a non-negative number",
    ),
    # load
    "load-missing": (
        lambda m, s: xd.load("/nonexistent/model"),
        ValueError,
        r"no config.json \(pass the directory written by model.save\(\)\)",
    ),
    "load-int-path": (lambda m, s: xd.load(3), TypeError, "path must be the model directory"),
    "load-device": (
        lambda m, s: xd.load("/nonexistent/model", device="gpu0"),
        ValueError,
        "device='gpu0' is not a valid torch device",
    ),
    # evaluate
    "evaluate-numpy-samples": (
        lambda m, s: evaluate(short(s).values, short(s)),
        TypeError,
        "samples= must be an xarray DataArray",
    ),
    "evaluate-numpy-reference": (
        lambda m, s: short(s).diffusion.evaluate(short(s).values),
        TypeError,
        "reference= must be an xarray DataArray",
    ),
    "evaluate-other-grid": (
        lambda m, s: evaluate(short(s), short(s).isel(x=slice(0, 10))),
        ValueError,
        r"reference grids differ along 'x'.*regrid",
    ),
    "evaluate-inf": (
        lambda m, s: evaluate(with_inf(short(s), 2), short(s)),
        ValueError,
        r"infinite values in samples.*replace them with NaN",
    ),
    "evaluate-no-member-dim": (
        lambda m, s: evaluate(short(s), short(s), observations=short(s)),
        ValueError,
        r"samples= has no member dimension 'realization'.*member_dim=",
    ),
    "evaluate-fair-one-member": (
        lambda m, s: evaluate(
            short(s).expand_dims(realization=1), short(s), observations=short(s), fair=True
        ),
        ValueError,
        r"fair=True needs at least 2 ensemble members.*fair=False",
    ),
    "evaluate-fair-type": (
        lambda m, s: evaluate(short(s), short(s), fair="yes"),
        TypeError,
        "fair must be True or False",
    ),
    # synthetic data
    "synthetic-nt-0": (
        lambda m, s: synthetic_precipitation(nt=0),
        ValueError,
        "nt must be an integer >= 1",
    ),
    "synthetic-ny-string": (
        lambda m, s: synthetic_precipitation(nt=4, ny="8", nx=8),
        TypeError,
        "ny must be an integer",
    ),
    "synthetic-calendar": (
        lambda m, s: synthetic_precipitation(nt=4, ny=8, nx=8, calendar="mars"),
        ValueError,
        "calendar must be one of",
    ),
    "synthetic-freq": (
        lambda m, s: synthetic_precipitation(nt=4, ny=8, nx=8, freq="fortnight"),
        ValueError,
        "freq must be a fixed time step",
    ),
    "synthetic-dry-fraction": (
        lambda m, s: synthetic_precipitation(nt=4, ny=8, nx=8, dry_fraction=1.5),
        ValueError,
        "dry_fraction must lie strictly between 0 and 1",
    ),
    "synthetic-seed": (
        lambda m, s: synthetic_precipitation(nt=4, ny=8, nx=8, seed=-1),
        ValueError,
        "seed must be an integer >= 0",
    ),
}


class Hung(Exception):
    pass


def _alarm(signum, frame):
    raise Hung("the call did not return within 60 s")


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_raises_with_remedy(case, model, series):
    build, exc, match = CASES[case]
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(60)
    try:
        with pytest.raises(exc, match=match):
            build(model, series)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_catalogue_is_broad():
    assert len(CASES) >= 20
    entry_points = {name.split("-")[0] for name in CASES}
    assert entry_points >= {
        "fit",
        "sample",
        "interpolate",
        "forecast",
        "downscale",
        "load",
        "evaluate",
        "synthetic",
    }


def test_valid_inputs_next_to_the_bad_ones_work(model, series):
    """The builders are not broken themselves: the nearest valid calls succeed."""
    out = with_nan(short(series), [3]).diffusion.interpolate(model, guidance_weight=1.0, **GEN)
    assert np.isfinite(out.values).all()
    fc = with_nan(short(series), [7]).diffusion.forecast(model, lead=2, **GEN)  # one NaN step
    assert np.isfinite(fc.values).all()
    fine = coarse(series).diffusion.downscale(model, factor=4, **GEN)
    assert fine.shape == (1, 8, 16, 16)
    assert irregular(series).diffusion.fit(**{**FIT, "frames": 3}).frames == 3
