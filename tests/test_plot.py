"""Figures of the diagnostics: each function returns a Figure that saves to PNG."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402

from xdiffusion import diagnostics as dg  # noqa: E402
from xdiffusion import plot  # noqa: E402

PNG_MAGIC = b"\x89PNG"


def field(values, member=False):
    values = np.asarray(values, dtype=float)
    dims = (("realization",) if member else ()) + ("time", "y", "x")
    nt, ny, nx = values.shape[-3:]
    coords = {
        "time": pd.date_range("2000-01-01", periods=nt, freq="h"),
        "y": ("y", np.arange(ny) * 8.8, {"units": "km", "axis": "Y"}),
        "x": ("x", np.arange(nx) * 8.8, {"units": "km", "axis": "X"}),
    }
    if member:
        coords["realization"] = np.arange(values.shape[0])
    return xr.DataArray(
        values,
        dims=dims,
        coords=coords,
        name="pr",
        attrs={"units": "mm h-1", "long_name": "precipitation rate"},
    )


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    samples = field(rng.gamma(0.4, 1.0, (3, 6, 12, 12)), member=True)
    reference = field(rng.gamma(0.4, 1.2, (12, 12, 12)))
    obs = field(rng.gamma(0.4, 1.0, (6, 12, 12)))
    report = dg.evaluate(samples, reference, observations=obs)
    return samples, reference, obs, report


def saved(fig, path):
    assert isinstance(fig, Figure)
    fig.savefig(path)
    assert path.read_bytes()[:4] == PNG_MAGIC
    return path


def test_each_plot_returns_a_figure_and_saves_png(data, tmp_path):
    samples, reference, _, report = data
    figs = {
        "hist": plot.plot_histogram(report),
        "hist_low": plot.plot_histogram(report, low_end=True),
        "hist_da": plot.plot_histogram(dg.histogram(samples, low_end=True)),  # log10 input
        "hist_map": plot.plot_histogram(
            {"a": dg.histogram(samples, 20, log=False), "b": dg.histogram(reference, 20, log=False)}
        ),
        "psd": plot.plot_psd(report),
        "tpsd": plot.plot_psd(report, kind="temporal"),
        "psd_da": plot.plot_psd(dg.spatial_psd(samples)),
        "qq": plot.plot_qq(report, log=True),
        "qq_ds": plot.plot_qq(dg.qq(samples, reference, [0.5, 0.9, 0.99])),
        "bias": plot.plot_bias_map(report),
        "rank": plot.plot_rank_histogram(report),
        "fields": plot.plot_fields(samples, max_members=2, max_frames=3),
        "fields_one": plot.plot_fields(reference.isel(time=0)),
    }
    for name, fig in figs.items():
        saved(fig, tmp_path / f"{name}.png")


def test_plots_draw_into_given_axes(data, tmp_path):
    _, _, _, report = data
    fig = Figure()
    axes = fig.subplots(1, 3)
    assert plot.plot_psd(report, ax=axes[0]) is fig
    assert plot.plot_bias_map(report, ax=axes[1]) is fig
    assert plot.plot_rank_histogram(report, ax=axes[2]) is fig
    assert len(axes[0].get_lines()) == 2  # sample and reference
    assert len(axes[2].patches) == report.sizes["rank"]
    saved(fig, tmp_path / "axes.png")


def test_plot_fields_grid_shape_and_ax_check(data):
    samples = data[0]
    fig = plot.plot_fields(samples, max_members=2, max_frames=4)
    meshes = [a for a in fig.axes if a.collections and a.get_label() != "<colorbar>"]
    assert len(meshes) == 2 * 4
    small = Figure().subplots(1, 2)
    with pytest.raises(ValueError, match="ax="):
        plot.plot_fields(samples, max_members=2, max_frames=4, ax=small)


def test_plot_report_writes_png(data, tmp_path):
    report = data[3]
    path = tmp_path / "report.png"
    fig = plot.plot_report(report, path)
    assert isinstance(fig, Figure)
    assert path.read_bytes()[:4] == PNG_MAGIC
    # the scores are bars labelled in words, with their values written next to them
    labels = [t.get_text() for a in fig.axes for t in a.get_yticklabels()]
    assert "spatial PSD\n|log10 ratio|" in labels and "fair CRPS" in labels
    values = [t.get_text() for a in fig.axes for t in a.texts]
    assert f"{float(report['crps_fair']):.3g}" in values
    assert f"{float(report['psd_log_error']):.3g}" in values


def test_plot_report_without_observations(tmp_path):
    rng = np.random.default_rng(1)
    ref = field(rng.random((6, 8, 8)))
    report = dg.evaluate(field(rng.random((2, 6, 8, 8)), member=True), ref)
    fig = plot.plot_report(report.chunk(), tmp_path / "r.png")
    assert isinstance(fig, Figure)


def test_plot_input_errors(data):
    report = data[3]
    with pytest.raises(ValueError, match="histogram_sample"):
        plot.plot_histogram(report.drop_vars(["histogram_sample", "histogram_reference"]))
    with pytest.raises(TypeError, match="obj="):
        plot.plot_psd([1, 2, 3])
    with pytest.raises(ValueError, match="kind="):
        plot.plot_psd(report, kind="vertical")
    with pytest.raises(TypeError, match="report="):
        plot.plot_report(report["crps"])
