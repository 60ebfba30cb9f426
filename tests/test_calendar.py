"""Calendar-aware time steps: detection, windows, continuation, the model's recorded step."""

from types import SimpleNamespace

import cftime
import numpy as np
import pytest
import xarray as xr
from conftest import TINY_NET

from xdiffusion.generate import future_times
from xdiffusion.inputs import check_time_step
from xdiffusion.io.calendar import TimeStep, detect_step, month_parts, regular_mask
from xdiffusion.io.convert import prepare
from xdiffusion.io.spec import DataSpec, VariableSpec
from xdiffusion.io.timefeatures import time_features
from xdiffusion.io.windows import regular_step, window_starts
from xdiffusion.testing import file_encoding, monthly_dataset

CALENDARS = [
    "standard",
    "gregorian",
    "proleptic_gregorian",
    "noleap",
    "365_day",
    "all_leap",
    "366_day",
    "360_day",
    "julian",
]

HOUR, DAY = 3600.0, 86400.0

#: pandas frequency → the step it should be detected as.
FREQS = {
    "h": TimeStep("seconds", HOUR),
    "D": TimeStep("seconds", DAY),
    "MS": TimeStep("months", 1),  # month starts
    "ME": TimeStep("months", 1),  # month ends
    "QS-DEC": TimeStep("months", 3),  # seasons
    "YS": TimeStep("months", 12),
}

FIT = dict(frames=4, steps=2, batch_size=2, progress=False, device="cpu", net=TINY_NET)


def dates(freq: str, n: int, calendar: str = "standard", start: str = "2001-01-01"):
    """``n`` stamps as numpy values: datetime64 on the standard calendar, cftime otherwise."""
    t = xr.date_range(
        start, periods=n, freq=freq, calendar=calendar, use_cftime=calendar != "standard"
    )
    return np.asarray(t.values if hasattr(t, "values") else t)


def mid_month(n: int, calendar: str) -> np.ndarray:
    return monthly_dataset(nt=n, ny=2, nx=2, calendar=calendar)["time"].values


def seasonal_centres(years: range, calendar: str = "standard") -> np.ndarray:
    """DJF-mean stamps at the centre of their bounds (Dec 1 to Mar 1): the centre moves by
    half a day with leap years, as in real seasonal-mean files."""
    out = []
    for y in years:
        lo = cftime.datetime(y - 1, 12, 1, calendar=calendar)
        hi = cftime.datetime(y, 3, 1, calendar=calendar)
        out.append(lo + (hi - lo) / 2)
    return np.array(out)


@pytest.mark.parametrize("calendar", CALENDARS)
@pytest.mark.parametrize("freq", list(FREQS))
def test_detects_fixed_and_calendar_steps(calendar, freq):
    t = dates(freq, 30, calendar)
    assert detect_step(t) == FREQS[freq]
    assert regular_mask(t).all()
    assert len(window_starts(t, 8)) == 30 - 8 + 1


@pytest.mark.parametrize("calendar", CALENDARS)
def test_mid_month_stamps_are_monthly(calendar):
    t = mid_month(30, calendar)
    step = detect_step(t)
    assert step == TimeStep("months", 1) and step.is_calendar
    assert str(step) == "1 month"
    # a gap (one month dropped) is a gap, not a new step
    gap = np.delete(t, 10)
    assert detect_step(gap) == step
    starts = window_starts(gap, 4)
    assert len(starts) == (10 - 3) + (29 - 10 - 3)
    assert not any(s <= 9 < s + 3 for s in starts)


def test_seasonal_and_yearly_means_with_half_day_jitter():
    # as a file has them: 1963-01-15T12, 1964-01-16T00, 1965-01-15T12, ...
    listed = np.array(
        ["1963-01-15T12", "1964-01-16T00", "1965-01-15T12", "1966-01-15T12", "1967-01-15T12"],
        dtype="datetime64[ns]",
    )
    assert detect_step(listed) == TimeStep("months", 12)
    for calendar in ("standard", "julian", "noleap"):
        t = seasonal_centres(range(1960, 1990), calendar)
        assert detect_step(t) == TimeStep("months", 12), calendar
        assert len(window_starts(t, 6)) == len(t) - 6 + 1
    # seasonal means of every season (k = 3) stamped at their centres
    edges = dates("QS-DEC", 41, "standard", start="1999-12-01")
    centres = edges[:-1] + (edges[1:] - edges[:-1]) / 2
    assert detect_step(centres) == TimeStep("months", 3)
    assert str(detect_step(centres)) == "3 months"


def test_irregular_axis_is_refused_with_a_remedy():
    rng = np.random.default_rng(0)
    hours = np.sort(rng.choice(5000, size=40, replace=False))
    t = np.datetime64("2001-01-01T00", "ns") + hours.astype("timedelta64[h]")
    with pytest.raises(ValueError, match=r"irregular.*resample"):
        detect_step(t)
    with pytest.raises(ValueError, match=r"irregular.*resample"):
        window_starts(t, 4)


def test_order_and_missing_times_keep_their_messages():
    t = mid_month(12, "noleap")
    for f in (detect_step, regular_step):
        with pytest.raises(ValueError, match="descending"):
            f(t[::-1])
        with pytest.raises(ValueError, match="duplicated"):
            f(t[[0, 1, 1, 2]])
    nat = dates("D", 5).copy()
    nat[2] = np.datetime64("NaT")
    with pytest.raises(ValueError, match="NaT"):
        detect_step(nat)


def test_fixed_long_steps_stay_fixed():
    # every 30 days on the standard calendar drifts through the months: a fixed step
    t = np.datetime64("2001-01-01", "ns") + np.arange(24) * np.timedelta64(30, "D")
    assert detect_step(t) == TimeStep("seconds", 30 * DAY)
    assert str(detect_step(t)) == "30 days"
    # a numeric axis keeps its own units
    assert detect_step(np.arange(0.0, 3.0, 0.1)) == TimeStep("numeric", 0.1)
    assert detect_step(dates("D", 1)) is None


def test_time_step_config_words_and_equality():
    for step in (*FREQS.values(), TimeStep("seconds", 6 * HOUR), TimeStep("numeric", 2.5)):
        cfg = step.to_config()
        assert TimeStep.from_config(cfg) == step
        assert cfg["description"] == str(step)
    assert [str(s) for s in FREQS.values()] == [
        "1 hour",
        "1 day",
        "1 month",
        "1 month",
        "3 months",
        "1 year",
    ]
    assert str(TimeStep("seconds", 6 * HOUR)) == "6 hours"
    assert TimeStep("months", 1) != TimeStep("seconds", 31 * DAY)
    assert TimeStep("months", 3).alias() == "3MS" and TimeStep("seconds", DAY).alias() == "1D"
    with pytest.raises(ValueError, match="whole number of months"):
        TimeStep("months", 1.5)


@pytest.mark.parametrize("calendar", CALENDARS)
def test_future_times_continue_at_the_position_in_the_month(calendar):
    n, lead = 14, 4
    # mid-month → the centres of the next months, in the input's type and calendar
    ds, longer = (monthly_dataset(nt=k, ny=2, nx=2, calendar=calendar) for k in (n, n + lead))
    new = future_times(ds["time"], lead)
    np.testing.assert_array_equal(new, longer["time"].values[n:])
    assert new.dtype == ds["time"].dtype
    if new.dtype == object:
        assert all(type(v) is type(ds["time"].values[0]) for v in new)
    # month-start bounds (lower and upper) continue as month starts
    for i in (0, 1):
        edges = future_times(ds["time_bnds"].isel(bnds=i), lead)
        np.testing.assert_array_equal(edges, longer["time_bnds"].values[n:, i])
    # month starts and month ends stay so
    for freq in ("MS", "ME", "YS", "h"):
        t = dates(freq, n + lead, calendar)
        np.testing.assert_array_equal(future_times(xr.DataArray(t[:n]), lead), t[n:])


def test_future_times_of_jittered_yearly_means():
    t = seasonal_centres(range(1960, 1980), "standard")
    new = future_times(xr.DataArray(t), 3)
    truth = seasonal_centres(range(1980, 1983), "standard")
    assert [v.year for v in new] == [1980, 1981, 1982]
    assert max(abs((a - b).total_seconds()) for a, b in zip(new, truth)) <= DAY
    listed = np.array(["1963-01-15T12", "1964-01-16T00", "1965-01-15T12"], "datetime64[ns]")
    new = future_times(xr.DataArray(listed), 2)
    assert new.dtype == listed.dtype
    target = np.array(["1966-01-15T12", "1967-01-15T12"], "datetime64[ns]")
    assert np.all(np.abs(new - target) <= np.timedelta64(1, "D"))


def test_month_parts_agree_between_datetime64_and_cftime():
    t64 = mid_month(24, "standard")
    tcf = mid_month(24, "proleptic_gregorian")
    for a, b in zip(month_parts(t64), month_parts(tcf)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("calendar", ["standard", "noleap", "360_day", "julian"])
def test_season_features_on_monthly_axes(calendar):
    feats = time_features(mid_month(24, calendar), ["season", "hour"])
    assert feats.shape == (24, 4) and np.isfinite(feats).all()
    # a year later is the same season, whatever the calendar
    np.testing.assert_allclose(feats[:12, :2], feats[12:, :2], atol=0.02)
    phase = np.arctan2(feats[:, 0], feats[:, 1]) % (2 * np.pi) / (2 * np.pi)
    assert 0.03 < phase[0] < 0.05 and 0.45 < phase[6] < 0.55  # mid-January, mid-July


def _engine(step: TimeStep | None) -> SimpleNamespace:
    spec = DataSpec((VariableSpec("precip"),), time_step=step.to_config() if step else None)
    return SimpleNamespace(data=spec)


def _with_time(da: xr.DataArray, t: np.ndarray) -> xr.DataArray:
    return da.isel(time=slice(0, len(t))).assign_coords(time=t)


def test_check_time_step_unit(series):
    hourly = _engine(TimeStep("seconds", HOUR))
    daily = prepare(_with_time(series, dates("D", 6)))
    with pytest.raises(ValueError, match=r"template has a time step of 1 day.*1 hour.*resample"):
        check_time_step(hourly, daily, "template")
    check_time_step(hourly, prepare(series.isel(time=slice(0, 6))), "template")
    # nothing recorded (older model files), a single step, a numeric axis: not checked
    check_time_step(_engine(None), daily, "template")
    check_time_step(SimpleNamespace(data=None), daily, "template")
    check_time_step(hourly, prepare(_with_time(series, dates("D", 1))), "template")
    check_time_step(hourly, prepare(_with_time(series, np.arange(6.0))), "template")
    monthly = prepare(_with_time(series, mid_month(6, "360_day")))
    check_time_step(_engine(TimeStep("months", 1)), monthly, "data")
    with pytest.raises(ValueError, match=r"data has a time step of 1 month.*1 hour"):
        check_time_step(hourly, monthly, "data")


def test_hourly_model_refuses_a_daily_template(tiny_model, series):
    assert tiny_model.config["data"]["time_step"] == TimeStep("seconds", HOUR).to_config()
    daily = _with_time(series, dates("D", 8))
    msg = r"has a time step of 1 day, but the model was fitted on data with a time step of 1 hour"
    with pytest.raises(ValueError, match="template " + msg + r".*resample\(time='1h'\)"):
        daily.diffusion.sample(tiny_model, n=1, steps=2, progress=False)
    gappy = daily.where(daily.time != daily.time[3])
    with pytest.raises(ValueError, match="data " + msg):
        gappy.diffusion.interpolate(tiny_model, n=1, steps=2, progress=False)
    with pytest.raises(ValueError, match="data " + msg):
        daily.diffusion.forecast(tiny_model, lead=2, n=1, steps=2, progress=False)
    with pytest.raises(ValueError, match="coarse " + msg):
        daily.coarsen(y=4, x=4).mean().diffusion.downscale(
            tiny_model, n=1, factor=4, steps=2, progress=False
        )


@pytest.mark.parametrize("calendar", ["standard", "noleap", "360_day"])
def test_fit_and_forecast_monthly_file(calendar, tmp_path):
    nt, lead = 24, 3
    ds = monthly_dataset(nt=nt, ny=16, nx=16, calendar=calendar)
    path = tmp_path / f"monthly_{calendar}.nc"
    ds.to_netcdf(path, encoding=file_encoding(ds))
    with xr.open_dataset(path) as opened:
        data = opened.load()
    assert len(window_starts(data["time"], 4)) == nt - 4 + 1
    model = data["pr"].diffusion.fit(**FIT, time_features="season")
    assert model.config["data"]["time_step"] == TimeStep("months", 1).to_config()
    assert model.config["data"]["time_step"]["description"] == "1 month"
    fc = data.diffusion.forecast(model, lead=lead, n=1, steps=2, progress=False)
    truth = monthly_dataset(nt=nt + lead, ny=2, nx=2, calendar=calendar)
    np.testing.assert_array_equal(fc["time"].values, truth["time"].values[nt:])
    if "time_bnds" in fc:  # continued as month starts
        np.testing.assert_array_equal(fc["time_bnds"].values, truth["time_bnds"].values[nt:])
    assert np.isfinite(fc["pr"].values).all()
    # the monthly model refuses hourly data
    hourly = data.isel(time=slice(0, 6)).assign_coords(time=dates("h", 6, calendar))
    with pytest.raises(ValueError, match=r"data has a time step of 1 hour.*1 month"):
        hourly["pr"].diffusion.forecast(model, lead=2, n=1, steps=2, progress=False)
