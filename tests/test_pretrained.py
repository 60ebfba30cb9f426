"""The shipped reference model: its files match their SHA-256, it loads, and it reproduces a
stored sample; a damaged copy is refused."""

from pathlib import Path

import numpy as np
import pytest

import xdiffusion as xd
from xdiffusion import pretrained

STORED = Path(__file__).parent / "data" / "pretrained-sample.npz"
#: What the stored sample is: a template of reference data, member seed, sampler steps.
SAMPLE = {"nt": 8, "data_seed": 5, "n": 2, "seed": 11, "steps": 6}


def _sample(model):
    template = pretrained.reference_data(SAMPLE["nt"], seed=SAMPLE["data_seed"])
    return template.diffusion.sample(
        model, n=SAMPLE["n"], seed=SAMPLE["seed"], steps=SAMPLE["steps"], progress=False
    )


def test_shipped_model_loads_and_reproduces_its_stored_sample():
    assert pretrained.list_pretrained() == ["synthetic-precip"]
    model = xd.load_pretrained("synthetic-precip")
    recipe = pretrained.RECIPES["synthetic-precip"]
    assert model.grid == (recipe["data"]["ny"], recipe["data"]["nx"])
    assert model.frames == recipe["fit"]["frames"]
    assert model.config["training"]["steps"] == recipe["fit"]["steps"]
    got = _sample(model).values
    expected = np.load(STORED)["values"]
    # bit for bit on the machine that stored it; other CPUs' vector units may round the
    # last bits differently
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_damaged_or_unknown_models_are_refused(monkeypatch):
    with pytest.raises(ValueError, match="no shipped model named 'nope'"):
        xd.load_pretrained("nope")
    files = dict(pretrained.PRETRAINED["synthetic-precip"])
    files["ema.safetensors"] = "0" * 64
    monkeypatch.setitem(pretrained.PRETRAINED, "synthetic-precip", files)
    with pytest.raises(ValueError, match=r"damaged: ema\.safetensors"):
        xd.load_pretrained()


if __name__ == "__main__":  # regenerate the stored sample (after retraining the model)
    values = _sample(xd.load_pretrained()).values
    np.savez_compressed(STORED, values=values)
    print(f"wrote {STORED}: {values.shape}")
