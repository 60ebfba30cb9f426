"""The learning curve: ``model.history`` as a Dataset, the line ``fit`` prints at the end,
``plot.plot_loss``, and what generated files record of the model that made them."""

from __future__ import annotations

import contextlib
import hashlib
import io
import re

import numpy as np
import pytest
import xarray as xr
from conftest import TINY_NET, make_series

import xdiffusion as xd
from xdiffusion.diagnostics import history_dataset, smoothed_loss
from xdiffusion.fitting import REPORT_LAST_STEPS, training_report

STEPS, VAL_EVERY = 12, 4
FIT = dict(frames=4, batch_size=2, device="cpu", net=TINY_NET, sampling_steps=2)


@pytest.fixture(scope="module")
def fitted():
    """A tiny fit with validation every 4 steps, progress on; (model, what it printed on
    stderr). Module-scoped fixtures cannot use capsys, hence the redirection."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        model = make_series(nt=120).diffusion.fit(steps=STEPS, val_every=VAL_EVERY, **FIT)
    return model, err.getvalue()


def test_history_is_a_dataset_of_both_losses(fitted):
    model, _ = fitted
    hist = model.history
    assert isinstance(hist, xr.Dataset)
    assert hist["loss"].dims == ("step",) and hist["val_loss"].dims == ("val_step",)
    np.testing.assert_array_equal(hist["step"], np.arange(STEPS))
    np.testing.assert_array_equal(hist["val_step"], [3, 7, 11])  # every 4 steps and the last
    raw = model.history_dict
    np.testing.assert_array_equal(hist["loss"], raw["loss"])
    np.testing.assert_array_equal(hist["val_loss"], raw["val_loss"])
    assert "mini-batch" in hist["loss"].attrs["long_name"]
    assert "held-out" in hist["val_loss"].attrs["long_name"]
    assert "val_loss" in hist.attrs["comment"]
    assert np.isfinite(hist["loss"]).all()


def test_history_survives_save_and_load(fitted, tmp_path):
    model, _ = fitted
    model.save(tmp_path / "m")
    again = xd.load(tmp_path / "m")
    xr.testing.assert_identical(again.history, model.history)


def test_history_of_a_model_without_one_is_empty():
    assert not history_dataset({}).data_vars
    only = history_dataset({"step": [0, 1], "loss": [2.0, 1.0], "val_step": [], "val_loss": []})
    assert list(only.data_vars) == ["loss"]


def test_fit_reports_losses_at_the_end(fitted, tiny_model, capsys):
    model, err = fitted
    line = [s for s in err.replace("\r", "\n").splitlines() if re.match(r"fit: \d+ steps", s)]
    assert len(line) == 1, err  # one line, after tqdm's bar
    raw = model.history_dict
    expected = training_report(raw, model.config["training"]["seconds"])
    assert line[0] == expected
    assert f"fit: {STEPS} steps in " in expected
    assert f"training loss {np.mean(raw['loss'][-REPORT_LAST_STEPS:]):.4g}" in expected
    best = int(np.argmin(raw["val_loss"]))
    assert f"validation loss {raw['val_loss'][-1]:.4g} at the end" in expected
    assert f"best {raw['val_loss'][best]:.4g} after {raw['val_step'][best] + 1} steps" in expected
    # progress=False: silent
    make_series(nt=60).diffusion.fit(steps=2, progress=False, **FIT)
    assert capsys.readouterr().err == ""


def test_report_wording():
    rising = {"step": [0, 1, 2], "loss": [3.0, 2.0, 1.0], "val_step": [0, 2]}
    assert "rose since" in training_report({**rising, "val_loss": [1.0, 2.0]})
    assert "rose" not in training_report({**rising, "val_loss": [2.0, 1.0]})
    assert "no validation windows" in training_report({"step": [0], "loss": [1.0]})
    assert "no losses recorded" in training_report({})


def test_smoothed_loss_is_a_centred_running_mean():
    loss = history_dataset({"step": list(range(5)), "loss": [1.0, 3.0, 1.0, 3.0, 1.0]})["loss"]
    np.testing.assert_allclose(smoothed_loss(loss, 3), [2.0, 5 / 3, 7 / 3, 5 / 3, 2.0])
    with pytest.raises(ValueError, match="window"):
        smoothed_loss(loss, 0)


def test_plot_loss(fitted, tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from xdiffusion import plot

    model, _ = fitted
    path = tmp_path / "loss.png"
    fig = plot.plot_loss(model, path=path)
    assert path.read_bytes()[:4] == b"\x89PNG"
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["training (per step)", "training (running mean)", "validation"]
    # the history Dataset, or the dict, draw the same; into given axes
    for source in (model.history, model.history_dict):
        from matplotlib.figure import Figure

        axes = Figure().add_subplot()
        assert plot.plot_loss(source, ax=axes) is axes.get_figure()
        assert len(axes.get_lines()) == 3
    with pytest.raises(TypeError, match="DiffusionModel"):
        plot.plot_loss([1, 2, 3])
    with pytest.raises(ValueError, match="no losses"):
        plot.plot_loss({})
    assert "plot_loss" in plot.__all__


def test_outputs_name_the_model_that_made_them(fitted, tmp_path):
    """history line: model path (or 'in-memory') and the SHA-256 of its config.json."""
    model, _ = fitted
    fresh = xd.DiffusionModel(model.config, model.module, valid=model.valid)
    assert fresh.path is None and fresh.provenance["model"] == "in-memory"
    assert len(fresh.provenance["config_sha256"]) == 12
    tmpl = make_series(nt=4)
    line = tmpl.diffusion.sample(fresh, n=1, progress=False).attrs["history"].splitlines()[-1]
    assert "sample(model='in-memory', config_sha256=" in line and "sampler='dpmpp_2m'" in line
    path = tmp_path / "saved"
    fresh.save(path)  # from now on the model is the saved one
    digest = hashlib.sha256((path / "config.json").read_bytes()).hexdigest()
    assert fresh.config_sha256 == digest
    assert fresh.provenance == {"model": str(path), "config_sha256": digest[:12]}
    loaded = xd.load(path)
    assert loaded.path == str(path) and loaded.config_sha256 == digest
    out = tmpl.to_dataset().diffusion.forecast(loaded, lead=2, n=1, progress=False)
    line = out.attrs["history"].splitlines()[-1]
    assert f"forecast(model={str(path)!r}, config_sha256={digest[:12]!r}, lead=2" in line
