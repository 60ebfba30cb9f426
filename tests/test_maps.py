"""Maps in a projection (optional cartopy): map axes from the data's CF grid mapping or
latitude/longitude, labelled gridlines, the fall-back to plain axes, and coastlines that are
drawn offline only from files already on disk."""

from __future__ import annotations

import sys
import urllib.request

import numpy as np
import pandas as pd
import pytest
import xarray as xr

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402

from xdiffusion import plot  # noqa: E402
from xdiffusion.testing import (  # noqa: E402
    ROTATED_POLE,
    regular_latlon_dataset,
    rotated_pole_dataset,
)


def _maps(fig) -> list:
    return [a for a in fig.axes if a.get_label() != "<colorbar>" and a.axison]


def _colorbar_labels(fig) -> list[str]:
    return [a.get_ylabel() for a in fig.axes if a.get_label() == "<colorbar>"]


def _drawn(fig) -> None:
    FigureCanvasAgg(fig).draw()


def _gridliners(ax) -> list:
    from cartopy.mpl.gridliner import Gridliner

    return [a for a in ax.artists if isinstance(a, Gridliner)]


def _coastline_artists(ax) -> list:
    from cartopy.feature import NaturalEarthFeature
    from cartopy.mpl.feature_artist import FeatureArtist

    return [
        c
        for c in ax.get_children()
        if isinstance(c, FeatureArtist)
        and isinstance(c._feature, NaturalEarthFeature)
        and c._feature.name == "coastline"
    ]


@pytest.fixture(scope="module")
def rotated() -> xr.DataArray:
    """Rotated-pole precipitation with 2-D lat/lon and its grid-mapping variable attached as
    a coordinate (as ``decode_coords="all"`` and xdiffusion's outputs carry it)."""
    ds = rotated_pole_dataset(nt=3, ny=8, nx=8)
    return ds["pr"].assign_coords(rotated_pole=ds["rotated_pole"])


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """cartopy looks for Natural Earth under ``tmp_path`` only, and any download fails."""
    pytest.importorskip("cartopy")
    import cartopy
    import cartopy.feature
    import cartopy.io

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(cartopy.io, "urlopen", no_network)
    monkeypatch.setattr(cartopy.feature, "_NATURAL_EARTH_GEOM_CACHE", {})
    monkeypatch.setitem(cartopy.config, "pre_existing_data_dir", tmp_path / "pre")
    monkeypatch.setitem(cartopy.config, "data_dir", tmp_path / "data")
    return tmp_path / "pre"


def _write_coastline(root, resolution: str = "110m") -> None:
    """A tiny Natural Earth-like coastline shapefile (one line across the rotated domain),
    where cartopy's Natural Earth downloader looks for pre-existing files."""
    import cartopy
    import shapefile
    from cartopy.io import Downloader

    downloader = Downloader.from_config(
        ("shapefiles", "natural_earth", resolution, "physical", "coastline")
    )
    where = {
        "config": cartopy.config,
        "category": "physical",
        "name": "coastline",
        "resolution": resolution,
    }
    path = downloader.pre_downloaded_path(where)
    assert str(path).startswith(str(root))
    assert path.name == f"ne_{resolution}_coastline.shp"
    path.parent.mkdir(parents=True)
    # file objects closed here (pyshp 3.1 leaves the .dbf it opens by name unclosed)
    with (
        path.open("wb") as shp,
        path.with_suffix(".shx").open("wb") as shx,
        path.with_suffix(".dbf").open("wb") as dbf,
        shapefile.Writer(shp=shp, shx=shx, dbf=dbf, shapeType=shapefile.POLYLINE) as w,
    ):
        w.field("featurecla", "C")
        w.line([[[14.0, 50.0], [16.0, 50.6], [18.5, 50.3]]])
        w.record("Coastline")


# ------------------------------------------------------------------------ map axes


def test_rotated_pole_maps_are_geoaxes_in_the_grid_mapping(rotated):
    ccrs = pytest.importorskip("cartopy.crs")
    from cartopy.mpl.geoaxes import GeoAxes

    ens = xr.concat([rotated, 1.1 * rotated], "realization").assign_attrs(sampling="x")
    fig = plot.plot_fields(ens, observed=rotated, max_frames=2)
    maps = _maps(fig)
    assert len(maps) == 3 * 2
    for ax in maps:
        assert isinstance(ax, GeoAxes)
        assert isinstance(ax.projection, ccrs.RotatedPole)
    expected = ccrs.RotatedPole(
        pole_longitude=ROTATED_POLE["grid_north_pole_longitude"],
        pole_latitude=ROTATED_POLE["grid_north_pole_latitude"],
        central_rotated_longitude=0.0,
    )
    assert maps[0].projection == expected
    params = maps[0].projection.proj4_params
    assert params["o_lat_p"] == ROTATED_POLE["grid_north_pole_latitude"]
    assert params["lon_0"] == 180.0 + ROTATED_POLE["grid_north_pole_longitude"]
    assert params["o_lon_p"] == 0.0
    # the fields are drawn from their rotated coordinates, in the rotated CRS
    mesh = maps[0].collections[0]
    assert mesh.get_array().shape == (8, 8)
    _drawn(fig)
    # the map shows the domain: rlon -2 .. -1.23, rlat -1 .. -0.23 (with half cells)
    x0, x1, y0, y1 = maps[0].get_extent(maps[0].projection)
    assert x0 == pytest.approx(-2.055, abs=1e-3) and x1 == pytest.approx(-1.175, abs=1e-3)
    assert y0 == pytest.approx(-1.055, abs=1e-3) and y1 == pytest.approx(-0.175, abs=1e-3)
    # labelled latitude/longitude lines: latitudes on the left column, longitudes at the bottom
    (grid,) = _gridliners(maps[0])
    left = [t.get_text() for t in grid.left_label_artists if t.get_visible()]
    assert left and all(t.endswith("°N") for t in left)
    (bottom_left,) = _gridliners(maps[4])
    bottom = [t.get_text() for t in bottom_left.bottom_label_artists if t.get_visible()]
    assert bottom and all(t.endswith("°E") for t in bottom)
    (inner,) = _gridliners(maps[1])  # top row, second column: lines, no labels
    assert not [t for t in inner.label_artists if t.get_visible() and t.get_text()]
    assert inner.xline_artists and inner.yline_artists
    # rows are labelled left of the latitude labels, the colour bar with the units
    rows = [[t.get_text() for t in maps[2 * i].texts] for i in range(3)]
    assert rows == [["observed"], ["generated 0"], ["generated 1"]]
    renderer = fig.canvas.get_renderer()
    label_box = maps[0].texts[0].get_window_extent(renderer)
    assert label_box.x1 <= min(t.get_window_extent(renderer).x0 for t in grid.left_label_artists)
    (label,) = _colorbar_labels(fig)
    assert "Precipitation [kg m-2 s-1]" in label


def test_generated_panels_keep_their_red_frame_on_maps(rotated):
    pytest.importorskip("cartopy")
    gappy = rotated.expand_dims(realization=[0]).assign_attrs(sampling="x")
    status = xr.ones_like(rotated, dtype=np.int8).rename("pr_status")
    status[1] = 0
    fig = plot.plot_interpolation(gappy.assign_coords(pr_status=status), truth=rotated)
    maps = _maps(fig)
    red = matplotlib.colors.to_rgba(plot.GENERATED_COLOUR)
    framed = [a.spines["geo"].get_edgecolor() == red for a in maps]
    assert framed[len(framed) // 2 :] == [False, True, False]
    assert not any(framed[: len(framed) // 2])


def test_downscaling_coarse_input_without_georeference(rotated):
    """A coarse input that lost its grid-mapping variable and lat/lon is drawn in the fine
    fields' grid mapping; with nothing to share (lat/lon only), the figure is plain."""
    ccrs = pytest.importorskip("cartopy.crs")
    fine = rotated.expand_dims(realization=[0]).assign_attrs(sampling="x")
    coarse = rotated.coarsen(rlat=2, rlon=2).mean().drop_vars(["lat", "lon", "rotated_pole"])
    fig = plot.plot_downscaling(fine, coarse, truth=rotated, max_frames=2)
    maps = _maps(fig)
    assert all(isinstance(a.projection, ccrs.RotatedPole) for a in maps)
    assert maps[0].collections[0].get_array().shape == (4, 4)
    _drawn(fig)
    assert maps[0].get_extent(maps[0].projection) == pytest.approx(
        maps[2].get_extent(maps[2].projection), abs=1e-6
    )
    latlon_only = fine.drop_vars("rotated_pole")
    fig = plot.plot_downscaling(latlon_only, coarse, max_frames=2)
    assert all(a.name == "rectilinear" for a in _maps(fig))
    with pytest.raises(ValueError, match="some of the fields"):
        plot.plot_downscaling(latlon_only, coarse, max_frames=2, projection=True)


def test_grid_mapping_named_in_the_encoding(rotated):
    """``xr.open_dataset(..., decode_coords="all")`` moves ``grid_mapping`` to the
    encoding."""
    ccrs = pytest.importorskip("cartopy.crs")
    da = rotated.copy()
    del da.attrs["grid_mapping"]
    da.encoding["grid_mapping"] = "rotated_pole"
    fig = plot.plot_fields(da, max_frames=1)
    assert isinstance(_maps(fig)[0].projection, ccrs.RotatedPole)


def test_lat_lon_without_grid_mapping():
    """2-D lat/lon alone: a regional equal-area map; a regular lat/lon grid: Plate Carrée."""
    ccrs = pytest.importorskip("cartopy.crs")
    curvilinear = rotated_pole_dataset(nt=2, ny=8, nx=8)["pr"]  # no grid-mapping coordinate
    fig = plot.plot_fields(curvilinear, max_frames=1)
    (ax,) = _maps(fig)
    assert isinstance(ax.projection, ccrs.LambertAzimuthalEqualArea)
    _drawn(fig)
    lon0, lon1, lat0, lat1 = ax.get_extent(ccrs.PlateCarree())
    lat, lon = curvilinear["lat"].values, curvilinear["lon"].values
    assert lat0 < lat.min() < lat.max() < lat1 and lon0 < lon.min() < lon.max() < lon1

    regular = regular_latlon_dataset(nt=2, ny=6, nx=8)["pr"]
    fig = plot.plot_fields(regular, max_frames=1)
    (ax,) = _maps(fig)
    assert isinstance(ax.projection, ccrs.PlateCarree)
    _drawn(fig)
    x0, x1, y0, y1 = ax.get_extent(ccrs.PlateCarree())
    assert (x0, x1, y0, y1) == pytest.approx((-5.125, -3.125, 39.875, 41.375))


def _projected(attrs: dict, x_km: np.ndarray, y_km: np.ndarray) -> xr.DataArray:
    """Fields on a projected grid in km, with a CF grid mapping."""
    rng = np.random.default_rng(0)
    return xr.DataArray(
        rng.gamma(0.5, 1.0, (2, y_km.size, x_km.size)),
        dims=("time", "y", "x"),
        coords={
            "time": pd.date_range("2000-01-01", periods=2, freq="h"),
            "y": ("y", y_km, {"units": "km", "standard_name": "projection_y_coordinate"}),
            "x": ("x", x_km, {"units": "km", "standard_name": "projection_x_coordinate"}),
            "crs": ((), 0, attrs),
        },
        name="pr",
        attrs={"units": "mm h-1", "grid_mapping": "crs"},
    )


CF_MAPPINGS = {
    "lambert_conformal_conic": {
        "grid_mapping_name": "lambert_conformal_conic",
        "standard_parallel": np.array([35.0, 65.0]),
        "longitude_of_central_meridian": 10.0,
        "latitude_of_projection_origin": 52.0,
        "false_easting": 4000000.0,
        "false_northing": 2800000.0,
    },
    "polar_stereographic": {
        "grid_mapping_name": "polar_stereographic",
        "straight_vertical_longitude_from_pole": -45.0,
        "latitude_of_projection_origin": 90.0,
        "standard_parallel": 70.0,
        "false_easting": 0.0,
        "false_northing": 0.0,
        "semi_major_axis": 6378273.0,
        "inverse_flattening": 298.279411123064,
    },
    "transverse_mercator": {
        "grid_mapping_name": "transverse_mercator",
        "longitude_of_central_meridian": 9.0,
        "latitude_of_projection_origin": 0.0,
        "scale_factor_at_central_meridian": 0.9996,
        "false_easting": 500000.0,
        "false_northing": 0.0,
    },
    "lambert_azimuthal_equal_area": {
        "grid_mapping_name": "lambert_azimuthal_equal_area",
        "longitude_of_projection_origin": 10.0,
        "latitude_of_projection_origin": 52.0,
        "false_easting": 4321000.0,
        "false_northing": 3210000.0,
    },
    "albers_conical_equal_area": {
        "grid_mapping_name": "albers_conical_equal_area",
        "standard_parallel": [29.5, 45.5],
        "longitude_of_central_meridian": -96.0,
        "latitude_of_projection_origin": 23.0,
        "earth_radius": 6371000.0,
    },
    "rotated_latitude_longitude": {
        "grid_mapping_name": "rotated_latitude_longitude",
        "grid_north_pole_latitude": 39.25,
        "grid_north_pole_longitude": -162.0,
        "north_pole_grid_longitude": 10.0,
    },
}


@pytest.mark.parametrize("name", sorted(CF_MAPPINGS))
def test_cf_projection_places_points_like_pyproj(name):
    """The cartopy projection of a CF grid mapping puts a place where pyproj's reading of
    the same attributes (``CRS.from_cf``) does."""
    ccrs = pytest.importorskip("cartopy.crs")
    pyproj = pytest.importorskip("pyproj")
    attrs = CF_MAPPINGS[name]
    crs = plot.cf_projection(attrs)
    assert isinstance(crs, ccrs.Projection)
    lon, lat = (12.0, 75.0) if name == "polar_stereographic" else (12.5, 48.0)
    got = crs.transform_point(lon, lat, ccrs.Geodetic(globe=crs.globe))
    cf = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in attrs.items()}
    reference = pyproj.CRS.from_cf(cf)
    geographic = reference.geodetic_crs
    if name == "rotated_latitude_longitude":  # its geodetic CRS is the rotated one itself
        geographic = pyproj.CRS("OGC:CRS84")
    to_grid = pyproj.Transformer.from_crs(geographic, reference, always_xy=True)
    expected = to_grid.transform(lon, lat)
    np.testing.assert_allclose(got, expected, atol=1e-3 if name.startswith("rot") else 1.0)


def test_cf_projection_of_unknown_or_incomplete_mappings():
    pytest.importorskip("cartopy")
    assert plot.cf_projection({"grid_mapping_name": "vertical_perspective_xyz"}) is None
    assert plot.cf_projection({"grid_mapping_name": "lambert_conformal_conic"}) is None
    assert plot.cf_projection({}) is None


def test_projected_grid_in_km_is_drawn_in_its_projection():
    ccrs = pytest.importorskip("cartopy.crs")
    x = 4000.0 + 12.5 * np.arange(10)
    y = 2800.0 + 12.5 * np.arange(8)
    da = _projected(CF_MAPPINGS["lambert_conformal_conic"], x, y)
    fig = plot.plot_fields(da, max_frames=1)
    (ax,) = _maps(fig)
    assert isinstance(ax.projection, ccrs.LambertConformal)
    _drawn(fig)
    x0, x1, y0, y1 = ax.get_extent(ax.projection)
    assert (x0, x1, y0, y1) == pytest.approx(
        (1e3 * (x[0] - 6.25), 1e3 * (x[-1] + 6.25), 1e3 * (y[0] - 6.25), 1e3 * (y[-1] + 6.25))
    )
    # the grid's origin (false easting/northing) lies at the projection's centre
    lon0, lon1, lat0, lat1 = ax.get_extent(ccrs.PlateCarree())
    assert lon0 < 10.0 < lon1 and lat0 < 52.0 < lat1


def test_explicit_projection_and_bias_map(rotated):
    ccrs = pytest.importorskip("cartopy.crs")
    fig = plot.plot_fields(rotated, max_frames=1, projection=ccrs.Robinson())
    (ax,) = _maps(fig)
    assert isinstance(ax.projection, ccrs.Robinson)
    _drawn(fig)

    bias = rotated.isel(time=0, drop=True).rename("mean_normalised_bias")
    fig = plot.plot_bias_map(bias)
    (ax,) = _maps(fig)
    assert isinstance(ax.projection, ccrs.RotatedPole)
    assert len(_gridliners(ax)) == 1
    assert _colorbar_labels(fig) == ["mean-normalised bias"]
    assert ax.get_title().startswith("mean-normalised bias")
    _drawn(fig)
    assert not hasattr(plot.plot_bias_map(bias, projection=None).axes[0], "projection")


def test_given_axes_decide_with_auto(rotated):
    ccrs = pytest.importorskip("cartopy.crs")
    from matplotlib.figure import Figure

    fig = Figure()
    plain = fig.add_subplot(1, 2, 1)
    geo = fig.add_subplot(1, 2, 2, projection=ccrs.PlateCarree())
    one = rotated.isel(time=0)
    assert plot.plot_fields(one, ax=[plain]) is fig  # plain axes stay plain
    assert not _gridliners(plain) and plain.get_ylabel().endswith("rlat [°]")
    plot.plot_fields(one, ax=[geo])
    assert len(_gridliners(geo)) == 1
    with pytest.raises(ValueError, match="plain matplotlib axes"):
        plot.plot_fields(one, ax=[fig.add_subplot(2, 2, 3)], projection=True)


# ------------------------------------------------------------------------ plain axes


def test_projection_none_gives_plain_axes(rotated):
    fig = plot.plot_fields(rotated, max_frames=1, projection=None)
    (ax,) = _maps(fig)
    assert type(ax).__name__ == "Axes" and not hasattr(ax, "projection")
    assert ax.get_xlabel() == "rlon [°]"
    labels = [t.get_text() for t in ax.texts]  # the hand-made graticule from 2-D lat/lon
    assert any(t.endswith("°N") for t in labels) and any(t.endswith("°E") for t in labels)
    assert plot.plot_fields(rotated, max_frames=1, projection=False).axes[0].name == "rectilinear"


def test_data_without_coordinates_on_the_earth():
    from xdiffusion.datasets import synthetic_precipitation

    pr = synthetic_precipitation(nt=2, ny=8, nx=8, seed=0)  # x, y in km, no grid mapping
    fig = plot.plot_fields(pr, max_frames=1)
    assert _maps(fig)[0].name == "rectilinear"
    pytest.importorskip("cartopy")
    with pytest.raises(ValueError, match="no CF grid mapping"):
        plot.plot_fields(pr, max_frames=1, projection=True)
    with pytest.raises(ValueError, match="projection="):
        plot.plot_fields(pr, max_frames=1, projection="robinson")
    with pytest.raises(ValueError, match="coastlines="):
        plot.plot_fields(pr, max_frames=1, coastlines="yes")


def test_without_cartopy_auto_falls_back_and_explicit_raises(rotated, monkeypatch):
    for name in [m for m in sys.modules if m == "cartopy" or m.startswith("cartopy.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "cartopy", None)  # import cartopy raises ImportError
    monkeypatch.setitem(sys.modules, "cartopy.crs", None)
    fig = plot.plot_fields(rotated, max_frames=1)
    assert _maps(fig)[0].name == "rectilinear"
    assert plot.plot_bias_map(rotated.isel(time=0)).axes[0].name == "rectilinear"
    with pytest.raises(ImportError, match=r"pip install 'xdiffusion\[maps\]'"):
        plot.plot_fields(rotated, max_frames=1, projection=True)
    with pytest.raises(ImportError, match="cartopy"):
        plot.cf_projection({"grid_mapping_name": "latitude_longitude"})


def test_importing_xdiffusion_plot_does_not_import_cartopy():
    import subprocess

    code = (
        "import sys, xdiffusion, xdiffusion.plot, xdiffusion.cli; "
        "print(any(m == 'cartopy' or m.startswith('cartopy.') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------------ coastlines


def test_coastlines_from_a_file_on_disk_without_network(rotated, offline):
    _write_coastline(offline)
    fig = plot.plot_fields(rotated, max_frames=2)  # coastlines=None: the file is there
    maps = _maps(fig)
    for ax in maps:
        (coast,) = _coastline_artists(ax)
        assert coast._feature.scale == "110m"  # the only resolution on disk
    _drawn(fig)  # reads the file, downloads nothing
    (geometry,) = list(_coastline_artists(maps[0])[0]._feature.geometries())
    assert geometry.geom_type == "LineString"
    assert not _coastline_artists(_maps(plot.plot_fields(rotated, coastlines=False))[0])


@pytest.mark.filterwarnings("ignore::cartopy.io.DownloadWarning")
def test_no_coastline_file_no_coastlines_and_no_download(rotated, offline):
    fig = plot.plot_fields(rotated, max_frames=2)
    assert not any(_coastline_artists(ax) for ax in _maps(fig))
    _drawn(fig)
    fig.savefig(offline.parent / "map.png")
    # coastlines=True asks cartopy for them, which downloads: here it is refused
    fig = plot.plot_fields(rotated, max_frames=1, coastlines=True)
    (coast,) = _coastline_artists(_maps(fig)[0])
    assert coast._feature.scale == "10m"  # the finest, for a domain of about 2°
    with pytest.raises(AssertionError, match="network access attempted"):
        _drawn(fig)
