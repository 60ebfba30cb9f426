"""Figures as a reader sees them: baseline images and the labels a paper figure needs.

Each figure is drawn with the Agg backend on fixed data, at a fixed small size and
resolution, and compared with a PNG under ``tests/baseline/`` by the RMS of the pixel
differences (:func:`matplotlib.testing.compare.compare_images`, 0-255 scale), with a
tolerance for font rasterisation on other machines.

To accept a deliberate change of a figure, regenerate the baselines and commit them::

    XDIFFUSION_UPDATE_BASELINES=1 python -m pytest tests/test_figures.py

Text layout changes between matplotlib minor versions, so the image comparison is skipped
(the other checks still run) when the installed version differs from the one that made the
baselines (``tests/baseline/matplotlib-version.txt``).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from matplotlib.testing.compare import compare_images  # noqa: E402

from xdiffusion import diagnostics as dg  # noqa: E402
from xdiffusion import plot  # noqa: E402

BASELINE = Path(__file__).parent / "baseline"
VERSION_FILE = BASELINE / "matplotlib-version.txt"
UPDATE = os.environ.get("XDIFFUSION_UPDATE_BASELINES") == "1"
#: Largest RMS pixel difference (0-255) accepted: fonts rasterise a little differently
#: across freetype builds, while real changes cost more: black instead of red frames on the
#: generated panels 14.8, a linear instead of a power colour scale 12.8, other score labels
#: in the report 23 (measured when the baselines were made).
TOLERANCE = 8.0
#: Every figure is saved at this size (inches) and resolution for the comparison.
SIZE = {"fields": (6.0, 3.4), "maps": (6.0, 4.2), "report": (9.0, 7.0)}
DPI = 50
STYLE = {"font.family": "DejaVu Sans", "font.size": 8, "savefig.facecolor": "white"}
UNITS = "mm h-1"


def field(values: np.ndarray, *, member: bool = False, start: str = "2000-01-01") -> xr.DataArray:
    """Precipitation on a 8.8 km projection grid, hourly."""
    dims = (("realization",) if member else ()) + ("time", "y", "x")
    nt, ny, nx = values.shape[-3:]
    coords = {
        "time": pd.date_range(start, periods=nt, freq="h"),
        "y": ("y", 4.4 + 8.8 * np.arange(ny), {"units": "km", "axis": "Y"}),
        "x": ("x", 4.4 + 8.8 * np.arange(nx), {"units": "km", "axis": "X"}),
    }
    if member:
        coords["realization"] = np.arange(values.shape[0])
    return xr.DataArray(
        values,
        dims=dims,
        coords=coords,
        name="pr",
        attrs={
            "units": UNITS,
            "long_name": "precipitation rate",
            "standard_name": "lwe_precipitation_rate",
        },
    )


def rain(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Fixed, smooth-ish rain: mostly dry, with drizzle and a few heavy cells."""
    smooth = rng.normal(size=shape)
    for axis in (-1, -2):
        smooth = (smooth + np.roll(smooth, 1, axis) + np.roll(smooth, -1, axis)) / 3
    return np.where(smooth > 0.2, np.expm1(3 * (smooth - 0.2)), 0.0)


@pytest.fixture(scope="module")
def data() -> dict[str, xr.DataArray | xr.Dataset]:
    rng = np.random.default_rng(42)
    truth = field(rain(rng, (8, 12, 12)))
    ens = field(rain(rng, (2, 8, 12, 12)), member=True).assign_attrs(sampling="dpmpp_2m 20")
    status = xr.ones_like(truth, dtype=np.int8)
    status[2:4] = 0
    filled = ens.assign_coords(pr_status=status)
    filled = filled.where(filled["pr_status"] == 0, truth)
    reference = field(rain(rng, (16, 12, 12)))
    report = dg.evaluate(ens, reference, observations=truth)
    coarse = truth.coarsen(y=3, x=3).mean()
    return {
        "truth": truth,
        "ens": ens,
        "filled": filled,
        "report": report,
        "coarse": coarse,
        "reference": reference,
    }


def figures(data: dict) -> dict[str, tuple[object, str]]:
    """The figures compared with baselines: name → (Figure, size key)."""
    truth, ens = data["truth"], data["ens"]
    return {
        "fields": (plot.plot_fields(ens, observed=truth, max_frames=4), "fields"),
        "interpolation": (
            plot.plot_interpolation(data["filled"], truth=truth, max_frames=4),
            "maps",
        ),
        "forecast": (
            plot.plot_forecast(
                ens.isel(time=slice(4, 8)),
                history=truth.isel(time=slice(0, 4)),
                truth=truth,
                max_lead=3,
                max_members=2,
            ),
            "maps",
        ),
        "downscaling": (
            plot.plot_downscaling(ens, data["coarse"], truth=truth, max_frames=3),
            "maps",
        ),
        "report": (plot.plot_report(data["report"]), "report"),
    }


def _same_minor(a: str, b: str) -> bool:
    return a.split(".")[:2] == b.split(".")[:2]


@pytest.mark.parametrize("name", ["fields", "interpolation", "forecast", "downscaling", "report"])
def test_figure_matches_baseline(data, name, tmp_path):
    with matplotlib.rc_context(STYLE):
        fig, size = figures(data)[name]
        fig.set_size_inches(*SIZE[size])
        actual = tmp_path / f"{name}.png"
        fig.savefig(actual, dpi=DPI)
    expected = BASELINE / f"{name}.png"
    if UPDATE:
        BASELINE.mkdir(exist_ok=True)
        expected.write_bytes(actual.read_bytes())
        VERSION_FILE.write_text(matplotlib.__version__ + "\n")
        pytest.skip(f"baseline {expected.name} written")
    assert expected.is_file(), f"no baseline {expected}; see this module's docstring"
    made_with = VERSION_FILE.read_text().strip()
    if not _same_minor(made_with, matplotlib.__version__):
        pytest.skip(f"baselines made with matplotlib {made_with}, not {matplotlib.__version__}")
    diff = compare_images(str(expected), str(actual), tol=TOLERANCE)
    assert diff is None, diff


# ------------------------------------------------------------------ what a reader needs


def _maps(fig) -> list:
    return [a for a in fig.axes if a.get_label() != "<colorbar>" and a.axison]


def _colorbar_labels(fig) -> list[str]:
    return [a.get_ylabel() for a in fig.axes if a.get_label() == "<colorbar>"]


def test_fields_rows_titles_axes_and_colour_scale(data):
    fig = plot.plot_fields(data["ens"], observed=data["truth"], max_frames=4)
    maps = _maps(fig)
    assert len(maps) == 3 * 4  # observed row + 2 generated members, 4 frames
    assert "generated" in fig.get_suptitle() and "observed" in fig.get_suptitle()
    rows = [maps[4 * i].get_ylabel() for i in range(3)]
    assert rows[0].startswith("observed") and rows[1].startswith("generated 0")
    assert all(r.endswith("y [km]") for r in rows)
    assert all(a.get_xlabel() == "x [km]" for a in maps[-4:])  # bottom row only
    assert not maps[0].get_xlabel()
    assert maps[0].get_title() == "01-01 00:00"
    (label,) = _colorbar_labels(fig)
    assert "precipitation rate [mm h-1]" in label and "dry" in label
    norm = maps[0].collections[0].norm
    assert type(norm).__name__ == "PowerNorm" and norm.gamma == plot.PRECIPITATION_GAMMA
    # drizzle is coloured, dry cells are not drawn (white background)
    mesh = maps[0].collections[0].get_array()
    assert np.ma.count_masked(mesh) == int((data["truth"].isel(time=0).values <= 0).sum())


def test_fields_norms(data):
    truth = data["truth"]
    linear = plot.plot_fields(truth, norm="linear", max_frames=2)
    assert type(_maps(linear)[0].collections[0].norm).__name__ == "Normalize"
    log = plot.plot_fields(truth, norm="log", max_frames=2)
    assert type(_maps(log)[0].collections[0].norm).__name__ == "LogNorm"
    plain = truth.rename("tas").assign_attrs(standard_name="air_temperature", units="K")
    auto = plot.plot_fields(plain + 270.0, max_frames=2)
    assert type(_maps(auto)[0].collections[0].norm).__name__ == "Normalize"
    assert "dry" not in _colorbar_labels(auto)[0]
    assert not auto.get_suptitle()  # not generated: no "generated" title
    with pytest.raises(ValueError, match="norm="):
        plot.plot_fields(truth, norm="cubic")


def test_task_figures_mark_generated_panels(data):
    red = matplotlib.colors.to_rgba(plot.GENERATED_COLOUR)

    def framed(a) -> bool:
        return a.spines["top"].get_edgecolor() == red

    fig = plot.plot_interpolation(data["filled"], truth=data["truth"], max_frames=4)
    maps = _maps(fig)
    assert len(maps) == 3 * 4  # truth + 2 members; frames 1-4 around the gap at 2-3
    assert [a.get_title() for a in maps[:4]] == [
        "01-01 01:00",
        "01-01 02:00\ngap",
        "01-01 03:00\ngap",
        "01-01 04:00",
    ]
    assert [framed(a) for a in maps[4:8]] == [False, True, True, False]
    assert maps[0].get_ylabel().startswith("truth")

    truth, ens = data["truth"], data["ens"]
    fc = ens.isel(time=slice(4, 8))
    fig = plot.plot_forecast(fc, history=truth.isel(time=slice(0, 4)), truth=truth, max_lead=3)
    maps = _maps(fig)
    assert len(maps) == 3 * 4  # observed + 2 members; 1 context + 3 leads
    assert maps[1].get_title().endswith("+1 h") and maps[0].get_title().endswith("observed")
    assert [framed(a) for a in maps[4:8]] == [False, True, True, True]

    fig = plot.plot_downscaling(ens, data["coarse"], truth=truth, max_frames=3)
    maps = _maps(fig)
    assert len(maps) == 4 * 3  # coarse, 2 members, truth
    assert [maps[3 * i].get_ylabel().split("\n")[0] for i in range(4)] == [
        "coarse input",
        "generated 0",
        "generated 1",
        "truth",
    ]
    assert "×3" in fig.get_suptitle()
    assert maps[0].collections[0].get_array().shape == (4, 4)  # the coarse grid


def test_interpolation_needs_status_or_observed(data):
    filled = data["filled"].drop_vars("pr_status")
    with pytest.raises(ValueError, match="observed="):
        plot.plot_interpolation(filled)
    gappy = data["truth"].where(data["filled"]["pr_status"] == 1)
    fig = plot.plot_interpolation(filled, observed=gappy, max_frames=4)
    maps = _maps(fig)
    assert maps[0].get_ylabel().startswith("observed")
    assert "missing" in [t.get_text() for t in maps[1].texts]  # the gap, blank


def test_report_panels_with_and_without_observations(data):
    fig = plot.plot_report(data["report"])
    titles = [a.get_title() for a in fig.axes if a.get_label() != "<colorbar>"]
    assert len(titles) == 9  # 3 x 3, none blank
    for expected in (
        "rank histogram",
        "ensemble against observations",
        "summary scores",
        "spatial PSD",
        "temporal PSD",
        "distribution, low end",
    ):
        assert any(t.startswith(expected) for t in titles), expected
    bias = next(t for t in titles if t.startswith("mean-normalised bias"))
    assert "16 generated and 16 reference fields" in bias  # 2 members x 8 steps; 16 steps
    ensemble = next(a for a in fig.axes if a.get_title().startswith("ensemble"))
    labels = [t.get_text() for t in ensemble.get_yticklabels()]
    assert labels == ["CRPS", "fair CRPS", "spread", "RMSE of the mean"]
    assert ensemble.get_xlabel() == "score [mm h-1]"
    assert all(a.axison for a in fig.axes)

    without = dg.evaluate(data["ens"], data["reference"])
    fig = plot.plot_report(without)
    titles = [a.get_title() for a in fig.axes if a.get_label() != "<colorbar>"]
    assert len(titles) == 7 and not any(t.startswith("rank") for t in titles)
    assert all(a.axison for a in fig.axes)  # the last panel widens; nothing left blank


def test_psd_ticks_do_not_overlap(data):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = plot.plot_psd(data["report"])
    ax = fig.axes[0]
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    labels = [t for t in ax.get_xticklabels() if t.get_text()]
    boxes = [t.get_window_extent(renderer) for t in labels]
    boxes = sorted(boxes, key=lambda b: b.x0)
    assert len(boxes) >= 2
    assert all(a.x1 <= b.x0 for a, b in itertools.pairwise(boxes))
    assert not [t for t in ax.xaxis.get_minorticklabels() if t.get_text()]


def test_fields_with_2d_lat_lon_get_a_graticule():
    """Rotated-pole data: axes in the grid's own coordinates, labelled lat/lon lines over them
    (drawn from the 2-D coordinates; cartopy is not needed)."""
    from xdiffusion.testing import rotated_pole_dataset

    pr = rotated_pole_dataset(nt=2, ny=8, nx=8).pr
    fig = plot.plot_fields(pr, max_frames=1, projection=None)  # map axes: tests/test_maps.py
    (ax,) = _maps(fig)
    assert ax.get_xlabel() == "rlon [°]" and ax.get_ylabel() == "rlat [°]"
    labels = [t.get_text() for t in ax.texts]
    assert any(t.endswith("°N") for t in labels) and any(t.endswith("°E") for t in labels)
    assert "[kg m-2 s-1]" in _colorbar_labels(fig)[0]
