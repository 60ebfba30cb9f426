import cftime
import dask.array as dsa
import numpy as np
import pytest
import torch
import xarray as xr

from xdiffusion.core.noise import MemberNoise
from xdiffusion.core.sequences import plan_windows
from xdiffusion.io.axes import find_axes
from xdiffusion.io.windows import WindowReader, regular_step, window_starts


def test_window_starts_skip_gaps():
    t = np.arange(
        np.datetime64("2000-01-01T00"), np.datetime64("2000-01-02T00"), np.timedelta64(1, "h")
    )
    t = np.delete(t, [10])  # a one-hour gap between index 9 and 10
    starts = window_starts(t, 4)
    for s in starts:
        assert np.all(np.diff(t[s : s + 4]) == np.timedelta64(1, "h"))
    assert 7 not in starts and 6 in starts and 10 in starts
    assert len(starts) == (10 - 3) + (len(t) - 10 - 3)


def test_window_starts_cftime_and_errors():
    t = xr.date_range("2000-01-01", periods=30, freq="D", calendar="360_day", use_cftime=True)
    assert isinstance(t[0], cftime.Datetime360Day)
    assert regular_step(np.asarray(t)) == 86400
    assert len(window_starts(np.asarray(t), 10)) == 21
    with pytest.raises(ValueError, match="frames=40 is longer"):
        window_starts(np.asarray(t), 40)
    with pytest.raises(ValueError, match="descending"):
        regular_step(np.asarray(t)[::-1])
    with pytest.raises(ValueError, match="duplicated"):
        regular_step(np.asarray(t)[[0, 1, 1, 2]])


def test_reader_dask_lazy():
    arr = dsa.from_array(
        np.arange(2 * 20 * 3 * 3, dtype=np.float32).reshape(2, 20, 3, 3), chunks=(1, 5, 3, 3)
    )
    out = WindowReader(arr, 4).read([0, 7])
    assert out.shape == (2, 2, 4, 3, 3)
    np.testing.assert_array_equal(out[1], arr[:, 7:11].compute())


def test_axes_detection_and_errors():
    da = xr.DataArray(
        np.zeros((2, 3, 4)),
        dims=("time", "rlat", "rlon"),
        coords={
            "rlat": ("rlat", np.arange(3), {"standard_name": "grid_latitude"}),
            "rlon": ("rlon", np.arange(4), {"standard_name": "grid_longitude"}),
        },
    )
    assert find_axes(da) == {"T": "time", "Y": "rlat", "X": "rlon"}
    with pytest.raises(ValueError, match="no time axis"):
        find_axes(da.isel(time=0))
    amb = xr.DataArray(
        np.zeros((2, 3, 4)),
        dims=("time", "a", "b"),
        coords={"a": ("a", np.arange(3), {"axis": "Y"}), "b": ("b", np.arange(4), {"axis": "Y"})},
    )
    with pytest.raises(ValueError, match="ambiguous"):
        find_axes(amb)
    assert find_axes(amb, dims={"Y": "a", "X": "b"}) == {"T": "time", "Y": "a", "X": "b"}


def test_plan_windows_gap_centred_and_forecast():
    known = torch.ones(20, dtype=torch.bool)
    known[9:11] = False
    ((s, f),) = plan_windows(known, 8, 4)
    assert s < 9 and s + f > 11  # the gap sees both of its ends
    known = torch.ones(12, dtype=torch.bool)
    known[4:] = False
    plan = plan_windows(known, 8, 4)
    assert plan[0] == (0, 8) and plan[-1][0] + plan[-1][1] == 12


def test_member_noise_independent_of_batching():
    a = MemberNoise(3, [0, 1, 2, 3], (2, 2))()
    b = MemberNoise(3, [2, 3], (2, 2))()
    assert torch.equal(a[2:], b)
    assert not torch.equal(a[0], a[1])
