"""A catalogue of bad inputs to every public entry point.

Each must raise ValueError/TypeError at once (a SIGALRM guard fails any case that hangs)
with a message naming the offending argument and saying how to fix it; none may run on and
return garbage.
"""

import re
import signal

import numpy as np
import pytest
import xarray as xr
from conftest import TINY_NET, make_series

import xdiffusion as xd
from xdiffusion.datasets import gaussian_blobs, synthetic_precipitation
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


def text_time(s):
    """A time axis of strings (never decoded)."""
    return s.assign_coords(time=[f"t{i}" for i in range(s.sizes["time"])])


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
        r"context must be (an integer )?in \[0, frames - 1\]",
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
        r"samples and reference grids differ along 'x' \(16 vs 10 cells\).*regrid",
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
    # found by scripts/adversarial.py (issue 14's re-run): values beyond float32 / int64
    # used to fail deep inside torch or numpy ("value cannot be converted to type float
    # without overflow", "math range error", "Overflow when unpacking long long"), or train
    # to NaN silently
    "fit-lr-beyond-float32": (
        lambda m, s: fit(s, lr=1e300),
        ValueError,
        r"lr must be within float32's range .*got 1e\+300",
    ),
    "fit-transform-lr-scale-beyond-float32": (
        lambda m, s: fit(s, transform="learned", transform_lr_scale=1e300),
        ValueError,
        "transform_lr_scale must be within float32's range",
    ),
    "fit-lambda-min-beyond-float32": (
        lambda m, s: fit(s, lambda_min=-1e300),
        ValueError,
        "lambda_min must be within float32's range",
    ),
    "fit-lambda-max-beyond-float32": (
        lambda m, s: fit(s, lambda_max=1e300),
        ValueError,
        "lambda_max must be within float32's range",
    ),
    "fit-min-grad-beyond-float32": (
        lambda m, s: fit(s, transform="learned", min_grad=1e300),
        ValueError,
        "min_grad must be within float32's range",
    ),
    "fit-sampling-steps-beyond-int64": (
        lambda m, s: fit(s, sampling_steps=10**30),
        ValueError,
        r"sampling_steps must be an integer of magnitude below 2\*\*63",
    ),
    "sample-steps-beyond-int64": (
        lambda m, s: short(s).diffusion.sample(m, steps=10**30, progress=False),
        ValueError,
        r"steps must be an integer of magnitude below 2\*\*63",
    ),
    "sample-seed-beyond-int64": (
        lambda m, s: short(s).diffusion.sample(m, seed=2**64, **GEN),
        ValueError,
        r"seed must be an integer of magnitude below 2\*\*63",
    ),
    "interpolate-steps-beyond-int64": (
        lambda m, s: with_nan(short(s), [3]).diffusion.interpolate(m, steps=10**30, progress=False),
        ValueError,
        r"steps must be an integer of magnitude below 2\*\*63",
    ),
    "forecast-lead-beyond-int64": (
        lambda m, s: short(s).diffusion.forecast(m, lead=10**30, **GEN),
        ValueError,
        r"lead must be an integer of magnitude below 2\*\*63",
    ),
    "downscale-steps-beyond-int64": (
        lambda m, s: coarse(s).diffusion.downscale(m, factor=4, steps=10**30, progress=False),
        ValueError,
        r"steps must be an integer of magnitude below 2\*\*63",
    ),
    "interpolate-weight-beyond-float32": (
        lambda m, s: with_nan(short(s), [3]).diffusion.interpolate(m, guidance_weight=1e300, **GEN),
        ValueError,
        "guidance_weight must be within float32's range",
    ),
    # memory_budget beyond the machine: an eager result that cannot fit the machine is
    # refused (it ran into the allocator before)
    "sample-n-beyond-machine": (
        lambda m, s: short(s).diffusion.sample(m, n=10**9, memory_budget="1PB", **GEN),
        ValueError,
        r"n=1000000000 members .* more than this machine has .*memory_budget=",
    ),
    "forecast-n-beyond-machine": (
        lambda m, s: short(s).diffusion.forecast(m, lead=2, n=10**9, memory_budget="1PB", **GEN),
        ValueError,
        "more than this machine has",
    ),
    # synthetic data larger than memory: refused before allocating (a bare MemoryError, or
    # a date-range error blaming start=, before)
    "synthetic-nt-beyond-memory": (
        lambda m, s: synthetic_precipitation(nt=10**9, ny=16, nx=16),
        ValueError,
        r"synthetic_precipitation\(nt=1000000000, ny=16, nx=16\) needs about .* lower nt",
    ),
    "synthetic-grid-beyond-memory": (
        lambda m, s: synthetic_precipitation(nt=4, ny=10**6, nx=10**6),
        ValueError,
        r"ny=1000000, nx=1000000\) needs about .* more than this machine has \(.*\); lower nt",
    ),
    "synthetic-dates-beyond-calendar": (
        lambda m, s: synthetic_precipitation(nt=3 * 10**6, ny=2, nx=2),
        ValueError,
        r"nt=3000000 steps of '1h' from '2000-01-01' run past the dates calendar 'standard'"
        r".*calendar='noleap'",
    ),
    "synthetic-blobs-beyond-memory": (
        lambda m, s: gaussian_blobs(nt=10**9, ny=64, nx=64),
        ValueError,
        r"gaussian_blobs\(nt=1000000000, ny=64, nx=64\) needs about",
    ),
    # found by scripts/adversarial.py (issue 14's third run): variables= on a DataArray was
    # ignored (any value, the model fitted on the DataArray anyway); on a Dataset, [] and 3
    # failed inside numpy ("need at least one array to stack") or with "'int' object is
    # not iterable"
    "fit-variables-on-dataarray": (
        lambda m, s: fit(s, variables=["tas"]),
        ValueError,
        r"variables=\['tas'\] cannot select from data: it is a DataArray, the single "
        r"variable 'pr'; leave variables=None \(or variables=\['pr'\]\)",
    ),
    "fit-variables-empty-on-dataarray": (
        lambda m, s: fit(s, variables=[]),
        ValueError,
        r"variables=\[\] names no variable",
    ),
    "fit-variables-int-on-dataarray": (
        lambda m, s: fit(s, variables=3),
        TypeError,
        r"variables must be a variable name or a list of names \(e.g. \['pr'\]\), got int",
    ),
    "fit-variables-empty": (
        lambda m, s: fit(s.to_dataset(), variables=[]),
        ValueError,
        r"variables=\[\] names no variable; name at least one",
    ),
    "fit-variables-int": (
        lambda m, s: fit(s.to_dataset(), variables=3),
        TypeError,
        "variables must be a variable name or a list of names",
    ),
    "fit-variables-not-names": (
        lambda m, s: fit(s.to_dataset(), variables=[3]),
        TypeError,
        r"variables=\[3\] must hold variable names \(str\), but holds int",
    ),
    # a grid with no cells ended in numpy's "zero-size array to reduction operation"
    "fit-empty-grid": (
        lambda m, s: fit(s.isel(y=slice(0, 0))),
        ValueError,
        r"data has no cells along its y \(latitude\) axis 'y' \(size 0\)",
    ),
    # time_features=3: "'int' object is not iterable"
    "fit-time-features-int": (
        lambda m, s: fit(s, time_features=3),
        TypeError,
        r"time_features must be a feature name or a list of names among \['hour', 'season'\]",
    ),
    # a time axis of strings: numpy's UFuncTypeError ("ufunc 'subtract' did not contain a
    # loop") in fit and forecast
    "fit-text-time": (
        lambda m, s: fit(text_time(s)),
        TypeError,
        r"time axis has dtype <U\d+ \(e.g. 't0'\): neither dates .* xr.decode_cf\(ds\)",
    ),
    "forecast-text-time": (
        lambda m, s: text_time(short(s)).diffusion.forecast(m, lead=2, **GEN),
        TypeError,
        r"time axis has dtype <U\d+ .*decode it to dates first",
    ),
    "sample-text-time": (
        lambda m, s: text_time(short(s)).diffusion.sample(m, **GEN),
        TypeError,
        r"time axis has dtype <U\d+ .*decode it to dates first",
    ),
    # all-NaN samples gave a report of NaNs
    "evaluate-all-nan-samples": (
        lambda m, s: evaluate(short(s) * np.nan, short(s)),
        ValueError,
        "samples are all NaN: there are no values to evaluate",
    ),
    "evaluate-all-nan-reference": (
        lambda m, s: evaluate(short(s), short(s) * np.nan),
        ValueError,
        "reference is all NaN",
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


def test_long_lazy_template_returns_at_once(model, series):
    """A lazy 10**6-step template (found by scripts/adversarial.py: over 60 s planning its
    windows and building the graph, quadratic in the length); now seconds, and lazy."""
    import dask.array as dsa

    nt = 10**6
    time = np.datetime64("2000-01-01T00") + np.arange(nt) * np.timedelta64(1, "h")
    template = xr.DataArray(
        dsa.zeros((nt, 16, 16), chunks=(1000, 16, 16), dtype=np.float32),
        dims=("time", "y", "x"),
        coords={"time": time, "y": series.y, "x": series.x},
        name="pr",
        attrs=series.attrs,
    )
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(60)
    try:
        out = template.diffusion.sample(model, **GEN)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert isinstance(out.data, dsa.Array)
    assert out.shape == (1, nt, 16, 16) and len(out.chunks[1]) == nt // 1000


# ------------------------------------------------------------------ files, sample data, CLI
# More cases found by scripts/adversarial.py (issue 14's re-run), each with the message it
# must give; they need files, the environment or the command line.
def test_save_under_a_file_is_refused_clearly(model, tmp_path):
    """A path below an existing file: ValueError naming both (pathlib's FileExistsError
    from mkdir before), and the file is left alone."""
    blocker = tmp_path / "m"
    blocker.write_text("my file")
    with pytest.raises(ValueError, match=r"cannot be created: .*/m' exists and is not a dir"):
        model.save(blocker / "model")
    assert blocker.read_text() == "my file"


@pytest.mark.parametrize("url", ["file:///nonexistent/dir/", "gopher://127.0.0.1/"])
def test_sample_data_url_scheme_is_named(url, tmp_path, monkeypatch):
    """$XDIFFUSION_DATA_URL with a scheme pooch cannot download from: said so, naming the
    variable (it was reported as a download failing its sha256 check)."""
    from xdiffusion.datasets import open_sample

    monkeypatch.setenv("XDIFFUSION_DATA_URL", url)
    with pytest.raises(ValueError, match=r"\$XDIFFUSION_DATA_URL=.* is not a URL") as err:
        open_sample("CESM2_sst_data.nc", cache_dir=tmp_path / "cache")
    assert "sha256" not in str(err.value)


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory, model, series):
    tmp = tmp_path_factory.mktemp("bad-cli")
    model.save(tmp / "model")
    short(series).to_dataset().to_netcdf(tmp / "short.nc")
    (tmp / "garbage.nc").write_bytes(b"not a netCDF file\n" * 8)
    return tmp


CLI_CASES = {
    # --chunks 0 ended in a ZeroDivisionError traceback
    "chunks-0": (
        lambda f: ["sample", f / "model", "--like", f / "short.nc", "--chunks", "0"],
        "--chunks must be a positive number of time steps, got 0",
    ),
    # --var , selected every variable silently
    "var-empty": (
        lambda f: ["sample", f / "model", "--like", f / "short.nc", "--var", ","],
        "--var names no variable",
    ),
    # xarray's "did not find a match in any of xarray's IO backends" named no file
    "garbage-input": (
        lambda f: ["sample", f / "model", "--like", f / "garbage.nc"],
        r"cannot read '.*garbage.nc' as a netCDF file",
    ),
    # the demo ran with --members 0 and exited 0
    "demo-members-0": (lambda f: ["demo", "--tiny", "--members", "0"], "--members: a positive"),
    # --size 0 was reported as "ny must be an integer >= 1"
    "demo-size-0": (lambda f: ["demo", "--tiny", "--size", "0"], "--size: a positive integer"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_bad_input_exits_2_naming_it(case, cli_files, tmp_path, capsys):
    from xdiffusion.cli import main

    build, match = CLI_CASES[case]
    argv = [str(a) for a in build(cli_files)] + ["--out", str(tmp_path / "out.nc")]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(match, err), err
