"""A short training run learns the data distribution; an untrained network does not."""

import numpy as np
import pytest

from xdiffusion.datasets import gaussian_blobs

FIT = dict(
    frames=4,
    batch_size=8,
    transform="none",
    progress=False,
    device="cpu",
    net={"width": 16, "mults": [1, 2]},
    lr=1e-3,
    warmup=20,
    seed=0,
)


def _stats(a):
    v = np.asarray(a).ravel()
    return v.mean(), v.std(), np.quantile(v, 0.9)


def _errors(model, data):
    ens = data.isel(time=slice(0, 4)).diffusion.sample(
        model, n=16, steps=20, seed=0, progress=False
    )
    m, s, q = _stats(ens.values)
    dm, ds, dq = _stats(data.values)
    return abs(m - dm), abs(s - ds) / ds, abs(q - dq)


@pytest.fixture(scope="module")
def blobs():
    # Gaussian blobs with random amplitude and position drifting over time.
    return gaussian_blobs(nt=400, ny=16, nx=16, seed=0)


def test_training_learns_distribution(blobs):
    trained = blobs.diffusion.fit(steps=250, **FIT)
    untrained = blobs.diffusion.fit(steps=1, **FIT)
    bounds = (0.03, 0.3, 0.08)  # mean (abs), std (relative), 90th percentile (abs)
    err_trained = _errors(trained, blobs)
    err_untrained = _errors(untrained, blobs)
    assert all(e < b for e, b in zip(err_trained, bounds)), err_trained
    assert all(e > b for e, b in zip(err_untrained, bounds)), err_untrained
    hist = trained.history
    assert np.mean(hist["loss"][-25:]) < 0.5 * np.mean(hist["loss"][:10])
    assert len(hist["val_loss"]) >= 2 and hist["val_loss"][-1] < hist["val_loss"][0]
