"""Time steps of a time axis: fixed durations or calendar months, on every calendar.

A time axis steps either by a fixed duration (hourly, daily, 6-hourly: seconds for
datetime64 and cftime axes, the axis' own units for a numeric one) or by whole calendar
months (monthly, seasonal, yearly), whose length in seconds varies. Monthly means are
usually stamped at mid-month, so that 2001-01-16T12 → 2001-02-15T00 is 29.5 days and
2001-02-15T00 → 2001-03-16T12 is 29.5 days, but March → April is 30.5: no duration
describes the axis, while "1 month" does. :func:`detect_step` tells the two apart and
:class:`TimeStep` records the answer (the model keeps it, see :mod:`xdiffusion.io.spec`);
:func:`regular_mask` says which consecutive steps equal it (training windows never span
a gap) and :func:`continue_times` extends an axis past its end (forecasts, time bounds).

Works on datetime64 values and on cftime dates of every calendar (standard/gregorian,
proleptic_gregorian, noleap/365_day, all_leap/366_day, 360_day, julian). No torch here.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import xarray as xr

__all__ = [
    "MONTH_POSITION_TOLERANCE",
    "TimeStep",
    "check_order",
    "continue_times",
    "detect_step",
    "month_parts",
    "regular_mask",
    "time_steps",
]

SECONDS_PER_DAY = 86400.0

#: Steps (seconds) at least this long may be calendar months: the shortest month is 28
#: days, and mid-month stamps around February are 29.5 days apart; a day of slack covers
#: stamps jittered by half a day.
MIN_MONTH_SECONDS = 27 * SECONDS_PER_DAY

#: How far (seconds) a stamp's position within its month may stray from the others' for
#: the axis still to be read as calendar months. Two days accept the half-day jitter of
#: seasonal and yearly means stamped at their period's centre (whose length varies with
#: leap years) and mid-month stamps; fixed 28- or 31-day steps drift out of it within a
#: few months.
MONTH_POSITION_TOLERANCE = 2 * SECONDS_PER_DAY

#: The dominant step must account for at least this share of the steps; below it the
#: axis has no regular step (steps scattered over many values), and windows of it would
#: describe no single time scale.
MIN_REGULAR_FRACTION = 0.5

#: Fixed steps are rounded to this many significant digits before they are compared:
#: float axes (hours as floats) carry rounding noise in their differences.
STEP_DIGITS = 12

#: Positions within the month of continued stamps are rounded to whole seconds: a file's
#: float encoding ("days since") leaves sub-second noise that must not accumulate.
POSITION_RESOLUTION_SECONDS = 1.0

#: Months in a year, for the month index (year × 12 + month − 1) and for describing steps.
MONTHS_PER_YEAR = 12

#: Named durations used to describe fixed steps in words, longest first.
_UNITS = (("day", SECONDS_PER_DAY), ("hour", 3600.0), ("minute", 60.0), ("second", 1.0))

#: pandas frequency aliases per unit, for the ``resample`` remedies in messages.
_ALIASES = {"day": "D", "hour": "h", "minute": "min", "second": "s"}

StepKind = Literal["seconds", "months", "numeric"]
Anchor = Literal["start", "end", "fraction"]


@dataclass(frozen=True)
class TimeStep:
    """The step of a time axis.

    Parameters
    ----------
    kind
        ``"seconds"``: a fixed duration on a datetime64 or cftime axis; ``"months"``: a
        calendar step of whole months (1 monthly, 3 seasonal, 12 yearly), whose duration
        varies with the month and the calendar; ``"numeric"``: a fixed step in the units of
        a numeric time axis (e.g. hours as floats).
    size
        Seconds, months (an integer) or axis units.

    Two steps are equal when their kind and size are; where in the month a monthly axis
    is stamped (start, middle, end) is a property of the axis, not of its step.
    """

    kind: StepKind
    size: float

    def __post_init__(self) -> None:
        if self.kind not in ("seconds", "months", "numeric"):
            raise ValueError(f"TimeStep kind must be seconds, months or numeric, not {self.kind!r}")
        size = float(self.size)
        if not np.isfinite(size) or size <= 0:
            raise ValueError(f"TimeStep size must be a positive number, not {self.size!r}")
        if self.kind == "months":
            if size != round(size):
                raise ValueError(f"a calendar step is a whole number of months, not {size}")
            size = float(round(size))
        else:
            size = float(f"{size:.{STEP_DIGITS}g}")
        object.__setattr__(self, "size", size)

    @property
    def is_calendar(self) -> bool:
        """Whether the step is calendar months (its duration varies)."""
        return self.kind == "months"

    @property
    def months(self) -> int:
        """The number of months of a calendar step."""
        if not self.is_calendar:
            raise ValueError(f"{self} is not a calendar step")
        return int(self.size)

    def comparable(self, other: TimeStep) -> bool:
        """Whether the two steps can be compared: both on dated axes (seconds or months),
        or both numeric. A numeric axis has no known units, so it cannot be set against
        a dated one."""
        return (self.kind == "numeric") == (other.kind == "numeric")

    def describe(self) -> str:
        """The step in words: "1 hour", "6 hours", "1 day", "1 month", "3 months",
        "1 year"; a numeric axis' step as "2.5 (axis units)"."""
        if self.kind == "months":
            k = self.months
            if k % MONTHS_PER_YEAR == 0:
                return _plural(k // MONTHS_PER_YEAR, "year")
            return _plural(k, "month")
        if self.kind == "numeric":
            return f"{self.size:g} (axis units)"
        for name, seconds in _UNITS:
            count = self.size / seconds
            if count >= 1 and np.isclose(count, round(count), rtol=0, atol=1e-9):
                return _plural(round(count), name)
        return f"{self.size:g} seconds"

    def alias(self) -> str | None:
        """A pandas frequency for ``resample(time=...)`` to this step (None for numeric
        axes): "1h", "1D", "MS", "3MS", "YS"."""
        if self.kind == "months":
            k = self.months
            if k % MONTHS_PER_YEAR == 0:
                return "YS" if k == MONTHS_PER_YEAR else f"{k // MONTHS_PER_YEAR}YS"
            return "MS" if k == 1 else f"{k}MS"
        if self.kind == "numeric":
            return None
        for name, seconds in _UNITS:
            count = self.size / seconds
            if count >= 1 and np.isclose(count, round(count), rtol=0, atol=1e-9):
                return f"{round(count)}{_ALIASES[name]}"
        return f"{self.size * 1e6:.0f}us"

    def __str__(self) -> str:
        return self.describe()

    def to_config(self) -> dict[str, Any]:
        """A JSON-serialisable dict (see :meth:`from_config`)."""
        size: float | int = self.months if self.is_calendar else self.size
        return {"kind": self.kind, "size": size, "description": self.describe()}

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> TimeStep:
        """The step of :meth:`to_config`'s dict (its ``description`` is ignored)."""
        return cls(cfg["kind"], cfg["size"])


def _plural(n: int, unit: str) -> str:
    return f"{n} {unit}" if n == 1 else f"{n} {unit}s"


def _values(time: xr.DataArray | np.ndarray | Sequence) -> np.ndarray:
    return np.asarray(getattr(time, "values", time))


def _is_dated(values: np.ndarray) -> bool:
    """datetime64 or cftime (object) values, as opposed to a numeric axis."""
    return np.issubdtype(values.dtype, np.datetime64) or values.dtype == object


def _is_date(v: object) -> bool:
    """A date object: cftime (any calendar), datetime.datetime or pandas Timestamp."""
    return all(hasattr(v, a) for a in ("year", "month", "day", "hour")) and hasattr(v, "__sub__")


def _check_kind(values: np.ndarray) -> None:
    """Raise TypeError unless the stamps are datetime64, cftime dates or numbers.

    Strings (a time axis that was never decoded, or dates written as text) and other
    objects cannot be differenced: numpy's UFuncTypeError deep inside otherwise.
    """
    dtype = values.dtype
    if dtype.kind in "Mmiuf":  # datetime64, timedelta64, integers, floats
        return
    if dtype.kind == "O":
        odd = next((v for v in values.ravel() if v is not None and not _is_date(v)), None)
        if odd is None:
            return
        held = f"object (holding {type(odd).__name__}, e.g. {odd!r})"
        if isinstance(odd, int | float | np.number) and not isinstance(odd, bool):
            raise TypeError(
                f"the time axis has dtype {held}: numbers stored as Python objects; give "
                "it a numeric dtype first, e.g. da.assign_coords(time=da['time'].astype(float))"
            )
    else:
        first = values.ravel()[:1].tolist()  # a plain str, not numpy's np.str_('...')
        held = f"{dtype}" + (f" (e.g. {first[0]!r})" if first else "")
    raise TypeError(
        f"the time axis has dtype {held}: neither dates (datetime64 or cftime) nor numbers, "
        "so it has no time step; decode it to dates first: xr.decode_cf(ds) (or "
        "xr.open_dataset(..., decode_times=True)) for a file's encoded times, or "
        "da.assign_coords(time=pd.to_datetime(da['time'].values)) for dates written as text"
    )


def _check_missing(values: np.ndarray) -> None:
    """Raise ValueError for NaT (datetime64), NaN (numeric) or None (cftime) time stamps."""
    if np.issubdtype(values.dtype, np.datetime64) or np.issubdtype(values.dtype, np.timedelta64):
        bad, what = np.isnat(values), "NaT (not-a-time)"
    elif np.issubdtype(values.dtype, np.floating):
        bad, what = np.isnan(values), "NaN"
    elif values.dtype == object:
        bad, what = np.array([v is None for v in values.ravel()], dtype=bool), "None"
    else:
        return
    if bad.any():
        where = np.flatnonzero(bad)
        shown = where[:5].tolist() + (["..."] if where.size > 5 else [])
        raise ValueError(
            f"the time axis has {where.size} {what} value(s) (at positions {shown}): "
            "missing time stamps cannot be ordered; drop those steps first, e.g. "
            "da.isel(time=da['time'].notnull().values)"
        )


def time_steps(time: xr.DataArray | np.ndarray | Sequence) -> np.ndarray:
    """Differences between consecutive time stamps: seconds (datetime64 or cftime), or the
    axis' own units for a numeric time axis (e.g. hours as floats).

    Raises TypeError for stamps that are neither dates nor numbers (strings: decode them
    first) and ValueError for missing ones (NaT, NaN, None).
    """
    values = _values(time)
    _check_kind(values)
    _check_missing(values)
    if values.size < 2:
        return np.zeros(0)
    if np.issubdtype(values.dtype, np.datetime64):
        # in the axis' own resolution (ns, us, s), whatever it is
        return np.diff(values) / np.timedelta64(1, "s")
    if np.issubdtype(values.dtype, np.number):
        return np.diff(values.astype(float))
    # cftime objects: differences are datetime.timedelta
    return np.array([d.total_seconds() for d in np.diff(values)], dtype=float)


def check_order(steps: np.ndarray) -> None:
    """Raise ValueError, with the remedy, if ``steps`` (from :func:`time_steps`) show
    descending or duplicated time stamps."""
    if np.any(steps <= 0):
        i = int(np.argmax(steps <= 0))
        kind = "duplicated" if steps[i] == 0 else "descending"
        raise ValueError(
            f"the time axis has {kind} values (at position {i + 1}); sort it and drop "
            "duplicates first, e.g. da.sortby('time').drop_duplicates('time')"
        )


def _modal(values: np.ndarray) -> tuple[float, int]:
    """The most common value (the smallest among ties) and how often it occurs."""
    vals, counts = np.unique(values, return_counts=True)
    i = int(np.argmax(counts))
    return float(vals[i]), int(counts[i])


def _round_steps(steps: np.ndarray) -> np.ndarray:
    """Steps rounded to :data:`STEP_DIGITS` significant digits (float noise merged)."""
    out = np.zeros_like(steps)
    nz = steps != 0
    mag = 10.0 ** (np.floor(np.log10(np.abs(steps[nz]))) - (STEP_DIGITS - 1))
    out[nz] = np.round(steps[nz] / mag) * mag
    return out


def month_parts(time: xr.DataArray | np.ndarray | Sequence) -> tuple[np.ndarray, ...]:
    """Where each dated stamp lies in its calendar month.

    Returns
    -------
    index
        Month index ``year × 12 + month − 1`` (int64): consecutive months differ by 1 on
        every calendar.
    since_start
        Seconds from the start of the stamp's month.
    length
        The month's length in seconds (on the stamps' own calendar).
    """
    values = _values(time)
    _check_kind(values)
    if np.issubdtype(values.dtype, np.datetime64):
        months = values.astype("datetime64[M]")
        start = months.astype(values.dtype)
        nxt = (months + 1).astype(values.dtype)
        index = months.astype(np.int64) + 1970 * MONTHS_PER_YEAR  # datetime64[M] counts from 1970
        since = (values - start) / np.timedelta64(1, "s")
        length = (nxt - start) / np.timedelta64(1, "s")
        return index, since, length
    index = np.empty(values.size, np.int64)
    since = np.empty(values.size)
    length = np.empty(values.size)
    for i, v in enumerate(values.ravel()):
        start = _month_start(v, v.year, v.month)
        index[i] = v.year * MONTHS_PER_YEAR + v.month - 1
        since[i] = (v - start).total_seconds()
        length[i] = (_month_start(v, *_next_month(v.year, v.month)) - start).total_seconds()
    return index, since, length


def _next_month(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == MONTHS_PER_YEAR else (year, month + 1)


def _month_start(like: Any, year: int, month: int) -> Any:
    """Midnight on the first of ``year``-``month`` as a cftime date of ``like``'s type and
    calendar (``replace`` keeps both)."""
    return like.replace(year=year, month=month, day=1, hour=0, minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class _Position:
    """Where a monthly axis is stamped in its months: a fixed time after the month's start,
    a fixed time before its end, or a fixed fraction of it (mid-month)."""

    anchor: Anchor
    value: float  # seconds after the start / before the end, or the fraction
    spread: float  # seconds: how far the stamps stray from it (max − min)


def _month_position(since: np.ndarray, length: np.ndarray) -> _Position:
    """The most consistent description of the stamps' position in their months.

    Ties (within a second) go to the start, then the end: month starts are also a zero
    fraction, and on the 360_day calendar all three descriptions agree.
    """
    until_end = length - since
    fraction = since / length
    # fraction's spread in seconds: what the stamps would move if put at the median fraction
    frac_dev = np.abs(fraction - np.median(fraction)) * length
    candidates = [
        _Position("start", float(np.median(since)), float(np.ptp(since))),
        _Position("end", float(np.median(until_end)), float(np.ptp(until_end))),
        _Position("fraction", float(np.median(fraction)), float(2 * frac_dev.max())),
    ]
    best = min(c.spread for c in candidates)
    return next(c for c in candidates if c.spread <= best + POSITION_RESOLUTION_SECONDS)


def _calendar_step(values: np.ndarray) -> tuple[int, np.ndarray, _Position] | None:
    """Calendar months ``k``, which steps are k months, and the position in the month, or
    None if the stamps do not sit at one position in their months."""
    index, since, length = month_parts(values)
    months = np.diff(index)
    k = _modal(months)[0]
    position = _month_position(since, length)
    if k < 1 or position.spread > MONTH_POSITION_TOLERANCE:
        return None
    ok = months == k
    return int(k), ok, position


def _irregular(step: str, count: int, total: int, alias: str | None) -> ValueError:
    remedy = (
        f"resample it to a regular step first, e.g. da.resample(time={alias!r}).mean()"
        if alias
        else "select a regularly spaced subset first"
    )
    return ValueError(
        f"the time axis is irregular: its most common step ({step}) accounts for only "
        f"{count} of its {total} steps; {remedy}"
    )


def _detect(values: np.ndarray) -> tuple[TimeStep, np.ndarray, _Position | None] | None:
    """:func:`detect_step`, with which steps equal it and (calendar steps) the position."""
    steps = time_steps(values)
    if steps.size == 0:
        return None
    check_order(steps)
    rounded = _round_steps(steps)
    fixed, count = _modal(rounded)
    kind: StepKind = "seconds" if _is_dated(values) else "numeric"
    if kind == "seconds" and fixed >= MIN_MONTH_SECONDS:
        # long steps: whole months stamped at one position in the month (monthly,
        # seasonal, yearly) on any calendar, even where every month has the same length
        # (360_day), so that a model of monthly data means the same on every calendar
        cal = _calendar_step(values)
        if cal is not None:
            k, ok, position = cal
            step = TimeStep("months", k)
            if ok.sum() < MIN_REGULAR_FRACTION * ok.size:
                raise _irregular(step.describe(), int(ok.sum()), ok.size, step.alias())
            return step, ok, position
    step = TimeStep(kind, fixed)
    ok = np.isclose(rounded, step.size, rtol=1e-6, atol=0)
    if count < MIN_REGULAR_FRACTION * rounded.size:
        raise _irregular(step.describe(), count, rounded.size, step.alias())
    return step, ok, None


def detect_step(time: xr.DataArray | np.ndarray | Sequence) -> TimeStep | None:
    """The step of a time axis, or None for fewer than two stamps.

    Steps of at least 27 days are read as calendar months when every stamp sits at the
    same position in its month (month starts, month ends, mid-month, or any one time
    after the start, before the end or fraction of the month, within
    :data:`MONTH_POSITION_TOLERANCE`): the step is then the most common difference of
    month indices (1 monthly, 3 seasonal, 12 yearly). Otherwise the step is the most
    common difference (seconds for dates, the axis' units for numbers).

    Raises
    ------
    ValueError
        For missing (NaT/NaN/None), descending or duplicated stamps, and for an
        irregular axis, where the most common step accounts for under half the steps.
    """
    found = _detect(_values(time))
    return None if found is None else found[0]


def regular_mask(
    time: xr.DataArray | np.ndarray | Sequence, step: TimeStep | None = None
) -> np.ndarray:
    """Which consecutive steps (``n − 1`` booleans) equal the axis' step.

    ``step`` defaults to :func:`detect_step`'s; calendar steps compare month indices, so
    that 31-, 28- and 30-day months are each one step.
    """
    values = _values(time)
    if step is None:
        found = _detect(values)
        return np.zeros(0, bool) if found is None else found[1]
    if step.is_calendar:
        _check_kind(values)
        if not _is_dated(values):
            return np.zeros(max(values.size - 1, 0), bool)
        return np.diff(month_parts(values)[0]) == step.months
    return np.isclose(_round_steps(time_steps(values)), step.size, rtol=1e-6, atol=0)


def continue_times(time: xr.DataArray | np.ndarray | Sequence, lead: int) -> np.ndarray:
    """``lead`` stamps continuing ``time`` at its step, in its own type.

    Fixed steps continue by the step (datetime64 in its unit, cftime by
    ``datetime.timedelta``, numeric axes in their dtype). Calendar steps continue by
    whole months at the input's position in the month: month starts stay month starts,
    month ends stay month ends, mid-month stamps are the centres of the new months
    (2001-01-16T12, 2001-02-15T00, 2001-03-16T12 on the standard calendar), and
    jittered yearly stamps keep their typical time after the month's start; cftime
    dates stay on their calendar.

    Raises
    ------
    ValueError
        For fewer than two stamps (no step to continue) and as :func:`detect_step`.
    """
    values = _values(time)
    found = _detect(values)
    if found is None:
        raise ValueError("at least two time stamps are needed to infer the time step")
    step, _, position = found
    j = np.arange(1, lead + 1)
    last = values[-1]
    if step.is_calendar:
        assert position is not None  # calendar steps always carry one
        index = int(month_parts(values[-1:])[0][0]) + step.months * j
        return _months_at(values, index, position)
    if np.issubdtype(values.dtype, np.datetime64):
        unit = np.datetime_data(values.dtype)[0]
        delta = np.timedelta64(round(step.size / _unit_seconds(unit)), unit)
        return (last + delta * j).astype(values.dtype)
    if np.issubdtype(values.dtype, np.integer):
        return (last + round(step.size) * j).astype(values.dtype)
    if np.issubdtype(values.dtype, np.number):
        return (last + step.size * j).astype(values.dtype)
    return np.array([last + _dt.timedelta(seconds=step.size * k) for k in j.tolist()])


def _unit_seconds(unit: str) -> float:
    """Seconds in one datetime64 ``unit`` ("ns", "us", "s", ...)."""
    return float(np.timedelta64(1, unit) / np.timedelta64(1, "ns")) / 1e9


def _months_at(values: np.ndarray, index: np.ndarray, position: _Position) -> np.ndarray:
    """Stamps in the months ``index`` (year × 12 + month − 1) at ``position``, typed like
    ``values``."""
    years, months = np.divmod(index, MONTHS_PER_YEAR)
    months = months + 1
    res = POSITION_RESOLUTION_SECONDS

    def offset(length: float) -> float:
        """Seconds after the month's start, rounded to whole seconds."""
        if position.anchor == "start":
            sec = position.value
        elif position.anchor == "end":
            sec = length - position.value
        else:
            sec = position.value * length
        return round(sec / res) * res

    if np.issubdtype(values.dtype, np.datetime64):
        m = (index - 1970 * MONTHS_PER_YEAR).astype("datetime64[M]")
        unit = np.datetime_data(values.dtype)[0]
        start = m.astype(f"datetime64[{unit}]")
        length = ((m + 1).astype(f"datetime64[{unit}]") - start) / np.timedelta64(1, "s")
        usec = np.array([round(offset(x) * 1e6) for x in length], np.int64)
        return (start + usec.astype("timedelta64[us]")).astype(values.dtype)
    like = values[-1]
    out = []
    for y, mo in zip(years.tolist(), months.tolist()):
        start = _month_start(like, y, mo)
        length = (_month_start(like, *_next_month(y, mo)) - start).total_seconds()
        out.append(start + _dt.timedelta(seconds=offset(length)))
    return np.array(out, dtype=object)
