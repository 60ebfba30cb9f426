"""Temporal coherence is what a video model adds over per-frame generators: a short fit's
samples carry the data's lag-1 autocorrelation; an untrained model and a model fitted on
frame-shuffled data do not (issue: sample quality per CPU-minute)."""

import numpy as np
import pytest
import xarray as xr

from xdiffusion import diagnostics as dg
from xdiffusion.datasets import synthetic_precipitation

#: Slowly advected, persistent rain (2 km/h on 25 km cells): lag-1 autocorrelation ≈ 0.9.
DATA = dict(nt=600, ny=16, nx=16, seed=0, dx_km=25.0, wind_kmh=(5.0, 0.0), dry_fraction=0.6)
FIT = dict(
    frames=4,
    batch_size=8,
    lr=1e-3,
    warmup=20,
    val_every=0,
    progress=False,
    device="cpu",
    net={"width": 16, "head_dim": 16},
)
#: How far a fitted model's lag-1 autocorrelation may lie from the data's; an untrained or
#: frame-shuffled model lies ≈ 0.9 away.
BOUND = 0.4


def _lag1(da: xr.DataArray, window: int | None = None) -> float:
    return float(dg.lag_autocorrelation(np.sqrt(da.clip(min=0)), [1], window=window)[0])


@pytest.fixture(scope="module")
def data():
    return synthetic_precipitation(**DATA)


def test_lag_autocorrelation_diagnostic(data):
    rng = np.random.default_rng(0)
    white = xr.DataArray(rng.normal(size=(500, 4, 4)), dims=("time", "y", "x"))
    assert abs(float(dg.lag_autocorrelation(white, [1])[0])) < 0.05
    ar = np.zeros((500, 2, 2))
    for t in range(1, 500):  # AR(1) with φ = 0.8: r(k) = 0.8^k
        ar[t] = 0.8 * ar[t - 1] + rng.normal(size=(2, 2))
    r = dg.lag_autocorrelation(xr.DataArray(ar, dims=("time", "y", "x")), [1, 2])
    np.testing.assert_allclose(r.values, [0.8, 0.64], atol=0.06)
    assert r.dims == ("lag",) and r.attrs["units"] == "1"
    with pytest.raises(ValueError, match="lags"):
        dg.lag_autocorrelation(white, [0])
    with pytest.raises(ValueError, match="window"):
        dg.lag_autocorrelation(white, [1], window=1)


def test_short_fit_is_temporally_coherent_and_shuffled_or_untrained_models_are_not(data):
    real = _lag1(data, window=4)
    assert real > 0.8
    template = data.isel(time=slice(0, 4))
    shuffled = data.copy(data=data.values[np.random.default_rng(0).permutation(DATA["nt"])])
    kw = dict(progress=False, steps=10)
    fitted = template.diffusion.sample(data.diffusion.fit(steps=300, **FIT), 16, **kw)
    untrained = template.diffusion.sample(data.diffusion.fit(steps=1, **FIT), 16, **kw)
    frame_shuffled = template.diffusion.sample(shuffled.diffusion.fit(steps=300, **FIT), 16, **kw)
    assert abs(_lag1(fitted) - real) < BOUND
    assert abs(_lag1(untrained) - real) > BOUND
    assert abs(_lag1(frame_shuffled) - real) > BOUND
