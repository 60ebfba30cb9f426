"""Synthetic data generators and a registry of real sample data.

:func:`synthetic_precipitation` makes hourly precipitation that looks, statistically, like
the UKCP18 convection-permitting data of Herbert (2023) (§4.1: 8.8 km cells, about
80 % of cells nearly dry, a heavy upper tail of tens of mm/h): a Gaussian random field with
a power-law spectrum that is advected by a wind and evolves by scale-dependent AR(1)
updates in Fourier space (the STEPS/pysteps recipe), thresholded and exponentiated.
:func:`gaussian_blobs` is a tiny toy series for tests. :func:`open_sample` downloads real
public sample files through a pooch registry with a sha256 hash for every file.

No torch here: numpy, scipy, pandas/xarray and pooch (with its requests) only.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pooch
import requests
import scipy.fft as sfft
import xarray as xr
from dask.utils import format_bytes
from scipy.special import ndtri

from xdiffusion.resources import machine_memory
from xdiffusion.validation import is_int, is_number

__all__ = [
    "SampleDataError",
    "gaussian_blobs",
    "list_samples",
    "open_sample",
    "synthetic_precipitation",
    "synthetic_regimes",
]

# --- synthetic precipitation: model constants (physical units: km, hours) ------------------
_SPECTRAL_EXPONENT = 4.0  # S(k) ∝ (k² + k0²)^(-β/2); radar rain fields have β ≈ 3–4
_OUTER_SCALE_KM = 300.0  # 1/k0: the spectrum flattens above synoptic-ish scales
_LIFETIME_REF_H = 6.0  # decorrelation time of 100 km features (Lagrangian frame)
_LIFETIME_REF_KM = 100.0
_LIFETIME_EXPONENT = 1.0  # τ(L) ∝ L: small cells die fast, fronts persist
_REGIME_WEIGHT = 0.3  # share of variance in a domain-wide wet/dry regime...
_REGIME_LIFETIME_H = 72.0  # ...that changes over days, giving dry spells and wet days
_WIND_LIFETIME_H = 48.0  # decorrelation time of the wind fluctuations
_INTENSITY_MM_H = 0.5  # R = A·expm1(s·(z − z0))⁺: A sets the light-rain level...
_TAIL_SHAPE = 1.1  # ...and s the heaviness of the upper tail
_DRY_THRESHOLD_MM_H = 0.01
_CHUNK_FRAMES = 256  # frames per FFT batch (bounds memory; fixed so seeds stay reproducible)

_STANDARD_CALENDARS = ("standard", "gregorian", "proleptic_gregorian")
_CFTIME_CALENDARS = ("noleap", "365_day", "all_leap", "366_day", "360_day", "julian")

# --- sample data -----------------------------------------------------------------------------
DEFAULT_BASE_URL = "https://github.com/ProjectPythia/pythia-datasets/raw/main/data/"
_ENV_URL = "XDIFFUSION_DATA_URL"
_ENV_DIR = "XDIFFUSION_DATA_DIR"
#: URL schemes pooch downloads from (``$XDIFFUSION_DATA_URL`` must use one).
_PROTOCOLS = ("https", "http", "ftp", "sftp", "doi")


# --- argument checks -------------------------------------------------------------------------
def _check_int(name: str, value: Any, minimum: int = 1) -> int:
    if not is_int(value):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def _check_float(name: str, value: Any, *, positive: bool = False) -> float:
    if not is_number(value):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value) or (positive and value <= 0):
        raise ValueError(
            f"{name} must be a finite {'positive ' if positive else ''}number, got {value}"
        )
    return value


def _check_memory(call: str, need: float, remedy: str) -> None:
    """Refuse, before allocating, an array that cannot fit this machine's memory."""
    machine = machine_memory()
    if need > machine:
        raise ValueError(
            f"{call} needs about {format_bytes(int(need))} of memory, more than this machine "
            f"has ({format_bytes(machine)}); {remedy}"
        )


def _time_coord(nt: int, freq: str, start: str, calendar: str) -> tuple[xr.DataArray, float]:
    """Time coordinate of ``nt`` steps and the step length in hours."""
    if not isinstance(calendar, str) or calendar not in _STANDARD_CALENDARS + _CFTIME_CALENDARS:
        raise ValueError(
            f"calendar must be one of {list(_STANDARD_CALENDARS + _CFTIME_CALENDARS)}, "
            f"got {calendar!r}"
        )
    try:
        step = pd.to_timedelta(freq)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"freq must be a fixed time step such as '1h', '30min' or '1D', got {freq!r}"
        ) from err
    dt_hours = step / pd.Timedelta(hours=1)
    if not dt_hours > 0:
        raise ValueError(f"freq must be a positive time step, got {freq!r}")
    use_cftime = calendar not in _STANDARD_CALENDARS
    try:
        xr.date_range(start, periods=1, freq=freq, calendar=calendar, use_cftime=use_cftime)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"start must be a date such as '2000-01-01' valid in calendar {calendar!r}, "
            f"got {start!r} ({err})"
        ) from err
    try:
        times = xr.date_range(
            start, periods=nt, freq=freq, calendar=calendar, use_cftime=use_cftime
        )
    except (ValueError, TypeError, OverflowError) as err:
        raise ValueError(
            f"nt={nt} steps of {freq!r} from {start!r} run past the dates calendar "
            f"{calendar!r} can represent ({err}); use fewer steps, or a cftime calendar such "
            "as calendar='noleap' for dates after 2262"
        ) from err
    attrs = {"standard_name": "time", "long_name": "time", "axis": "T"}
    coord = xr.DataArray(times, dims="time", attrs=attrs)
    # CF-1.8 checkers reject int64 times and fill values on coordinates.
    coord.encoding.update(dtype="float64", _FillValue=None)
    return coord, float(dt_hours)


def _grid_coords(ny: int, nx: int, dx_km: float) -> dict[str, xr.DataArray]:
    def axis(n: int, letter: str) -> xr.DataArray:
        name = f"projection_{letter.lower()}_coordinate"
        attrs = {
            "standard_name": name,
            "long_name": f"{letter.lower()} coordinate of projection (cell centre)",
            "units": "km",
            "axis": letter,
        }
        coord = xr.DataArray((np.arange(n) + 0.5) * dx_km, dims=letter.lower(), attrs=attrs)
        coord.encoding["_FillValue"] = None
        return coord

    return {"y": axis(ny, "Y"), "x": axis(nx, "X")}


# --- synthetic precipitation -----------------------------------------------------------------
def synthetic_precipitation(
    nt: int = 240,
    ny: int = 32,
    nx: int = 32,
    *,
    seed: int = 0,
    dx_km: float = 8.8,
    freq: str = "1h",
    start: str = "2000-01-01",
    calendar: str = "standard",
    chunks: Mapping[str, int] | None = None,
    wind_kmh: tuple[float, float] = (30.0, 10.0),
    wind_std_kmh: float = 0.0,
    dry_fraction: float = 0.8,
) -> xr.DataArray:
    """Synthetic hourly precipitation with realistic statistics, advection and evolution.

    A zero-mean, unit-variance Gaussian field ``g`` with power spectrum
    ``S(k) ∝ (k² + k0²)^(-β/2)`` (β = 4, 1/k0 = 300 km) lives on a grid padded to about
    twice the requested size (so the periodic FFT domain does not show in the output). Each
    Fourier mode follows the advected AR(1) process

    ``ĝ_t(k) = φ(k) exp(-2πi k·u_t Δt) ĝ_{t-1}(k) + sqrt(1 - φ(k)²) sqrt(S(k)) ε̂_t(k)``

    with ``φ(k) = exp(-Δt/τ(k))`` and lifetime ``τ = 6 h · (L / 100 km)`` for wavelength
    ``L = 1/|k|``: the phase factor moves the field with the wind ``u_t`` and small cells
    decorrelate faster than large ones (the STEPS / pysteps cascade model). A slow
    domain-wide regime ``m_t`` (AR(1), 72 h) is mixed in, ``z = sqrt(0.7) g + sqrt(0.3) m``,
    and rain is ``R = A·expm1(s·(z − z0))`` where positive, 0 elsewhere, with
    ``A = 0.5 mm/h``, ``s = 1.1`` and ``z0`` chosen so that ``dry_fraction`` of the cells are
    below 0.01 mm/h on average. The statistics follow the UKCP18 data of Herbert (2023, §4.1).

    Parameters
    ----------
    nt, ny, nx
        Number of time steps and grid cells along y and x (positive integers).
    seed
        Non-negative integer seed. The same seed gives identical output; a shorter series is
        a prefix of a longer one with the same seed and grid.
    dx_km
        Grid spacing in km; the spectrum, lifetimes and wind are in physical units.
    freq
        Time step as a fixed duration understood by pandas (``"1h"``, ``"30min"``, ``"1D"``).
    start
        First time stamp.
    calendar
        ``"standard"`` (numpy datetime64 times) or a cftime calendar such as ``"360_day"``
        or ``"noleap"``.
    chunks
        If given, the result is dask-backed via ``.chunk(chunks)``.
    wind_kmh
        Mean advection velocity ``(u, v)`` in km/h, towards increasing x and y.
    wind_std_kmh
        Standard deviation of slow (48 h) Ornstein-Uhlenbeck wind fluctuations; 0 keeps the
        wind constant.
    dry_fraction
        Expected fraction of cells below 0.01 mm/h, in (0, 1).

    Returns
    -------
    xarray.DataArray
        ``pr`` (float32, mm h-1) with dims ``("time", "y", "x")`` and CF attributes.

    Raises
    ------
    TypeError, ValueError
        For arguments of the wrong type or out of range, naming the argument.
    """
    nt, ny, nx = _check_int("nt", nt), _check_int("ny", ny), _check_int("nx", nx)
    seed = _check_int("seed", seed, minimum=0)
    dx_km = _check_float("dx_km", dx_km, positive=True)
    wind_std_kmh = _check_float("wind_std_kmh", wind_std_kmh)
    if wind_std_kmh < 0:
        raise ValueError(f"wind_std_kmh must be >= 0, got {wind_std_kmh}")
    if not isinstance(wind_kmh, tuple | list | np.ndarray) or len(wind_kmh) != 2:
        raise ValueError(f"wind_kmh must be a pair (u, v) in km/h, got {wind_kmh!r}")
    wind_mean = np.array([_check_float("wind_kmh", w) for w in wind_kmh])
    dry_fraction = _check_float("dry_fraction", dry_fraction)
    if not 0 < dry_fraction < 1:
        raise ValueError(f"dry_fraction must lie strictly between 0 and 1, got {dry_fraction}")
    # the float32 result, plus one batch of FFT work on the grid padded to twice its size
    # (white noise, its complex modes and their inverse: about 12 bytes per padded cell)
    _check_memory(
        f"synthetic_precipitation(nt={nt}, ny={ny}, nx={nx})",
        4.0 * nt * ny * nx + 12.0 * min(nt, _CHUNK_FRAMES) * 4 * ny * nx,
        "lower nt, ny or nx (the values are computed in memory, also with chunks=)",
    )
    time, dt = _time_coord(nt, freq, start, calendar)

    values = _precipitation_values(
        nt, ny, nx, seed, dx_km, dt, wind_mean, wind_std_kmh, dry_fraction
    )
    da = xr.DataArray(
        values,
        dims=("time", "y", "x"),
        coords={"time": time, **_grid_coords(ny, nx, dx_km)},
        name="pr",
        attrs={
            "standard_name": "lwe_precipitation_rate",
            "long_name": "precipitation rate",
            "units": "mm h-1",
            "cell_methods": "time: mean",
            "comment": (
                f"synthetic: advected Gaussian random field (seed={seed}, "
                f"wind_kmh=({wind_mean[0]:g}, {wind_mean[1]:g}), wind_std_kmh={wind_std_kmh:g})"
                " from xdiffusion.datasets.synthetic_precipitation"
            ),
        },
    )
    return da.chunk(chunks) if chunks is not None else da


def _precipitation_values(
    nt: int,
    ny: int,
    nx: int,
    seed: int,
    dx: float,
    dt: float,
    wind_mean: np.ndarray,
    wind_std: float,
    dry_fraction: float,
) -> np.ndarray:
    # Independent streams, each drawn frame by frame, so that a shorter series is a prefix.
    rng_field, rng_regime, rng_wind = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    # Padding to twice the size hides the periodic FFT domain (and keeps tiny grids sane).
    NY, NX = (sfft.next_fast_len(max(2 * n, 8), real=True) for n in (ny, nx))
    ky_full = sfft.fftfreq(NY, d=dx)[:, None]
    kx_full = sfft.fftfreq(NX, d=dx)[None, :]
    k = np.hypot(ky_full, kx_full)
    spectrum = (k**2 + _OUTER_SCALE_KM**-2) ** (-_SPECTRAL_EXPONENT / 2)
    spectrum[0, 0] = 0.0  # the mean is the regime's job
    # Nyquist modes cannot carry a phase shift and stay real; dropping them costs nothing.
    nyquist = 0.5 / dx
    spectrum[np.isclose(np.abs(ky_full), nyquist) | np.isclose(np.abs(kx_full), nyquist)] = 0
    # irfft2(sqrt(S)·rfft2(white)) has variance mean(S) over the full plane: normalise to 1.
    spectrum /= spectrum.mean()
    half = NX // 2 + 1
    spectrum, k = spectrum[:, :half], k[:, :half]
    ky, kx = ky_full[:, 0], sfft.rfftfreq(NX, d=dx)

    k_min = 1.0 / (dx * max(NY, NX))
    lifetime = _LIFETIME_REF_H * (np.maximum(k, k_min) * _LIFETIME_REF_KM) ** -_LIFETIME_EXPONENT
    phi = np.exp(-dt / lifetime)
    amplitude = np.sqrt(spectrum).astype(np.float32)
    innovation = (np.sqrt(1 - phi**2) * amplitude).astype(np.float32)
    phi = phi.astype(np.float32)
    phi_regime = math.exp(-dt / _REGIME_LIFETIME_H)
    phi_wind = math.exp(-dt / _WIND_LIFETIME_H)

    state = sfft.rfft2(rng_field.standard_normal((NY, NX), dtype=np.float32)) * amplitude
    regime = rng_regime.standard_normal()
    wind_dev = wind_std * rng_wind.standard_normal(2)

    noise_scale = math.sqrt(1 - phi_wind**2) * wind_std
    propagator = None
    z0 = (
        float(ndtri(dry_fraction)) - math.log1p(_DRY_THRESHOLD_MM_H / _INTENSITY_MM_H) / _TAIL_SHAPE
    )
    oy, ox = (NY - ny) // 2, (NX - nx) // 2
    out = np.empty((nt, ny, nx), dtype=np.float32)
    for t0 in range(0, nt, _CHUNK_FRAMES):
        T = min(_CHUNK_FRAMES, nt - t0)
        modes = sfft.rfft2(rng_field.standard_normal((T, NY, NX), dtype=np.float32))
        modes *= innovation
        regime_noise = rng_regime.standard_normal(T)
        wind_noise = rng_wind.standard_normal((T, 2))
        regimes = np.empty(T)
        for t in range(T):
            if wind_std > 0 or propagator is None:
                wind_dev = phi_wind * wind_dev + noise_scale * wind_noise[t]
                propagator = _propagator(phi, ky, kx, wind_mean + wind_dev, dt)
            state = propagator * state + modes[t]
            modes[t] = state
            regime = phi_regime * regime + math.sqrt(1 - phi_regime**2) * regime_noise[t]
            regimes[t] = regime
        g = sfft.irfft2(modes, s=(NY, NX))[:, oy : oy + ny, ox : ox + nx]
        z = math.sqrt(1 - _REGIME_WEIGHT) * g
        z += (math.sqrt(_REGIME_WEIGHT) * regimes).astype(np.float32)[:, None, None]
        out[t0 : t0 + T] = _INTENSITY_MM_H * np.expm1(np.maximum(_TAIL_SHAPE * (z - z0), 0))
    return out


def _propagator(
    phi: np.ndarray, ky: np.ndarray, kx: np.ndarray, wind: np.ndarray, dt: float
) -> np.ndarray:
    """AR(1) factor φ(k)·exp(-2πi k·u Δt): decay plus a shift by the wind over one step."""
    shift_y = np.exp(-2j * np.pi * ky * wind[1] * dt).astype(np.complex64)
    shift_x = np.exp(-2j * np.pi * kx * wind[0] * dt).astype(np.complex64)
    return phi * shift_y[:, None] * shift_x[None, :]


# --- toy blobs -------------------------------------------------------------------------------
#: Advection directions of :func:`synthetic_regimes`, degrees anticlockwise from +x.
REGIME_DIRECTIONS = (0.0, 90.0, 180.0, 270.0)
#: Mean rain (mm/h) of a :func:`synthetic_regimes` window with intensity factor 1.
REGIME_MEAN_MM_H = 0.1
_WET_MM_H = 0.01
_MIN_WET_FRACTION = 0.05
_REGIME_REDRAWS = 50


def synthetic_regimes(
    n_windows: int = 64,
    frames: int = 8,
    ny: int = 32,
    nx: int = 32,
    *,
    seed: int = 0,
    intensity_range: tuple[float, float] = (1.0, 25.0),
    speed_kmh: float = 40.0,
    dx_km: float = 8.8,
) -> xr.DataArray:
    """Precipitation whose windows differ by a known intensity factor and advection direction.

    ``n_windows`` consecutive segments of ``frames`` hourly steps; segment i is
    :func:`synthetic_precipitation` (its own seed) advected at ``speed_kmh`` towards one of
    :data:`REGIME_DIRECTIONS`, rescaled to a mean of :data:`REGIME_MEAN_MM_H` times an
    intensity factor drawn log-uniformly from ``intensity_range`` (a segment with under
    5 % wet cells is redrawn first: a dry window has no intensity to see). So a window's
    mean rain is exactly the factor times 0.1 mm/h, while its spatial pattern, wet
    fraction and extremes vary as in the base generator. The factors (``intensity``) and
    directions (``direction``, degrees) are coordinates along time, constant within a
    segment, so that a latent model's encoding of each window can be compared with them
    (docs/latent.md, benchmarks/latent.py). Windows that :meth:`DiffusionModel.encode
    <xdiffusion.model.DiffusionModel.encode>` cuts from the start of the series coincide
    with the segments.

    Parameters
    ----------
    n_windows, frames, ny, nx
        Segments, their length, and the grid (positive integers).
    seed
        Non-negative integer seed of the factors, directions and fields.
    intensity_range
        (low, high) of the log-uniform intensity factor, 0 < low ≤ high.
    speed_kmh, dx_km
        Advection speed and grid spacing.

    Returns
    -------
    xarray.DataArray
        ``pr`` (float32, mm h-1) on (``time``, ``y``, ``x``) with coordinates ``intensity``
        and ``direction`` along ``time`` and a ``segment`` index.
    """
    n_windows, frames = _check_int("n_windows", n_windows), _check_int("frames", frames)
    ny, nx = _check_int("ny", ny), _check_int("nx", nx)
    seed = _check_int("seed", seed, minimum=0)
    _check_memory(
        f"synthetic_regimes(n_windows={n_windows}, frames={frames}, ny={ny}, nx={nx})",
        8.0 * n_windows * frames * ny * nx,
        "lower n_windows, frames, ny or nx",
    )
    speed = _check_float("speed_kmh", speed_kmh)
    if not (isinstance(intensity_range, tuple | list) and len(intensity_range) == 2):
        raise ValueError(f"intensity_range must be (low, high), got {intensity_range!r}")
    low, high = (_check_float("intensity_range", v, positive=True) for v in intensity_range)
    if low > high:
        raise ValueError(f"intensity_range must have low <= high, got {intensity_range!r}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 17]))
    factors = np.exp(rng.uniform(np.log(low), np.log(high), n_windows))
    directions = rng.choice(np.asarray(REGIME_DIRECTIONS), n_windows)
    seeds = rng.integers(0, 2**31, n_windows)
    parts = []
    for f, d, s in zip(factors, directions, seeds):
        wind = (speed * np.cos(np.deg2rad(d)), speed * np.sin(np.deg2rad(d)))
        for attempt in range(_REGIME_REDRAWS):
            seg = synthetic_precipitation(
                frames, ny, nx, seed=int(s) + attempt * 7919, dx_km=dx_km, wind_kmh=wind
            ).values
            if (seg > _WET_MM_H).mean() >= _MIN_WET_FRACTION:
                break
        parts.append(seg * np.float32(REGIME_MEAN_MM_H * f / max(float(seg.mean()), 1e-12)))
    time, _ = _time_coord(n_windows * frames, "1h", "2000-01-01", "standard")
    per_step = np.repeat(np.arange(n_windows), frames)
    return xr.DataArray(
        np.concatenate(parts).astype(np.float32),
        dims=("time", "y", "x"),
        coords={
            "time": time,
            **_grid_coords(ny, nx, dx_km),
            "segment": ("time", per_step),
            "intensity": (
                "time",
                factors[per_step],
                {"long_name": "intensity factor", "units": "1"},
            ),
            "direction": (
                "time",
                directions[per_step],
                {"long_name": "advection direction anticlockwise from +x", "units": "degree"},
            ),
        },
        name="pr",
        attrs={
            "standard_name": "lwe_precipitation_rate",
            "long_name": "precipitation rate",
            "units": "mm h-1",
            "comment": (
                f"synthetic regimes: {n_windows} segments of {frames} steps with known intensity "
                f"factors ({low:g}-{high:g}) and advection directions, seed={seed}, from "
                "xdiffusion.datasets.synthetic_regimes"
            ),
        },
    )


def gaussian_blobs(
    nt: int = 64,
    ny: int = 16,
    nx: int = 16,
    *,
    n_blobs: int = 2,
    lifetime: int = 8,
    seed: int = 0,
) -> xr.DataArray:
    """A toy series of Gaussian blobs that drift, grow and fade.

    ``n_blobs`` slots each hold one blob at a time, with staggered lifetimes of ``lifetime``
    steps. A blob has a random peak amplitude in [0.5, 1], centre, width σ in [1.5, 3] cells
    and velocity (at most 1 cell per step); its amplitude follows ``sin²(π·age)`` so that it
    appears and disappears smoothly, and it moves on the periodic domain. Every window of a
    few frames is therefore a small, learnable video sample.

    Parameters
    ----------
    nt, ny, nx
        Number of time steps and grid cells (positive integers).
    n_blobs
        Number of simultaneous blob slots (positive integer).
    lifetime
        Lifetime of one blob in time steps (integer >= 2).
    seed
        Non-negative integer seed.

    Returns
    -------
    xarray.DataArray
        ``blobs`` (float32, non-negative, units ``1``) with dims ``("time", "y", "x")``.
    """
    nt, ny, nx = _check_int("nt", nt), _check_int("ny", ny), _check_int("nx", nx)
    n_blobs = _check_int("n_blobs", n_blobs)
    lifetime = _check_int("lifetime", lifetime, minimum=2)
    seed = _check_int("seed", seed, minimum=0)
    # the float64 sum and about three float64 temporaries per blob, then the float32 copy
    _check_memory(
        f"gaussian_blobs(nt={nt}, ny={ny}, nx={nx})",
        36.0 * nt * ny * nx,
        "lower nt, ny or nx",
    )
    rng = np.random.default_rng(seed)
    generations = (nt + lifetime) // lifetime + 1
    shape = (n_blobs, generations)
    amp = rng.uniform(0.5, 1.0, shape)
    cy, cx = rng.uniform(0, ny, shape), rng.uniform(0, nx, shape)
    width = rng.uniform(1.5, 3.0, shape)
    speed, angle = rng.uniform(0, 1, shape), rng.uniform(0, 2 * np.pi, shape)
    vy, vx = speed * np.sin(angle), speed * np.cos(angle)

    yy, xx = np.arange(ny)[None, :, None], np.arange(nx)[None, None, :]
    out = np.zeros((nt, ny, nx))
    for j in range(n_blobs):
        clock = np.arange(nt) + j * lifetime / n_blobs  # staggered births
        gen = (clock // lifetime).astype(int)
        age = (clock / lifetime - gen)[:, None, None]
        since_birth = age * lifetime
        py = cy[j, gen][:, None, None] + vy[j, gen][:, None, None] * since_birth
        px = cx[j, gen][:, None, None] + vx[j, gen][:, None, None] * since_birth
        dy = (yy - py + ny / 2) % ny - ny / 2  # nearest periodic image
        dx = (xx - px + nx / 2) % nx - nx / 2
        w = width[j, gen][:, None, None]
        envelope = amp[j, gen][:, None, None] * np.sin(np.pi * age) ** 2
        out += envelope * np.exp(-(dy**2 + dx**2) / (2 * w**2))
    time, _ = _time_coord(nt, "1h", "2000-01-01", "standard")
    return xr.DataArray(
        out.astype(np.float32),
        dims=("time", "y", "x"),
        coords={"time": time, **_grid_coords(ny, nx, 1.0)},
        name="blobs",
        attrs={"long_name": "toy Gaussian blobs", "units": "1"},
    )


# --- sample data -----------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _load_registry() -> dict[str, str]:
    """``{file name: sha256}`` from the packaged ``registry.txt`` (``#`` starts a comment)."""
    text = resources.files("xdiffusion").joinpath("registry.txt").read_text(encoding="utf-8")
    return _parse_registry(text)


def _parse_registry(text: str) -> dict[str, str]:
    registry: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        digest = parts[-1].lower().removeprefix("sha256:")
        if len(parts) != 2 or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"registry line {number} is not '<file name> <sha256>': {raw!r}")
        registry[parts[0]] = digest
    return registry


def list_samples() -> list[str]:
    """Names accepted by :func:`open_sample`."""
    return sorted(_load_registry())


def _make_registry(
    base_url: str, registry: Mapping[str, str], cache_dir: str | os.PathLike | None
) -> pooch.Pooch:
    """A pooch for ``registry`` at ``base_url``.

    The cache is ``cache_dir`` if given, else ``$XDIFFUSION_DATA_DIR``, else the user cache.
    """
    if not base_url.endswith("/"):
        base_url += "/"
    return pooch.create(
        path=cache_dir if cache_dir is not None else pooch.os_cache("xdiffusion"),
        base_url=base_url,
        registry={name: f"sha256:{digest}" for name, digest in registry.items()},
        env=None if cache_dir is not None else _ENV_DIR,
    )


class SampleDataError(RuntimeError):
    """A registered sample file could not be obtained (network, server or cache trouble).

    The message says what happened and what to do: retry, point ``$XDIFFUSION_DATA_URL``
    at a reachable mirror, or use another cache directory.
    """


def _remedies(name: str, digest: str, cache: Path) -> str:
    mirror = os.environ.get(_ENV_URL)
    where = (
        f"${_ENV_URL} is set to {mirror!r}: check that mirror, or unset it to use "
        f"{DEFAULT_BASE_URL}"
        if mirror
        else f"set ${_ENV_URL} to a reachable mirror of {DEFAULT_BASE_URL}"
    )
    return (
        f"Retry later; {where}; or copy {name!r} (sha256 {digest}) by hand into the cache "
        f"directory {str(cache)!r}"
    )


def _fetch(store: pooch.Pooch, name: str, digest: str) -> str:
    """``store.fetch(name)`` with every failure turned into a message with the remedy."""
    cache = Path(store.abspath)
    url = store.get_url(name)
    cached = cache / name
    stale = ""
    if cached.is_file():
        stale = (
            f"the cached copy {str(cached)!r} fails its sha256 check (corrupt or partial), "
            "and fetching a fresh one failed: "
        )
    if cache.exists() and not cache.is_dir():
        raise SampleDataError(
            f"the sample cache directory {str(cache)!r} is a file, not a directory; pass "
            f"cache_dir= (or set ${_ENV_DIR}) to a directory, or move the file away"
        )
    try:
        return store.fetch(name, progressbar=False)
    except ValueError as err:
        if "hash" not in str(err).lower():  # e.g. pooch's "Unrecognized URL protocol"
            raise SampleDataError(
                f"{stale}could not download sample {name!r} from {url} ({err}). "
                f"{_remedies(name, digest, cache)}"
            ) from err
        raise ValueError(
            f"sample {name!r} downloaded from {url} does not match its registered sha256; "
            f"the download was discarded. The file changed upstream or was corrupted in "
            f"transit ({err}). {_remedies(name, digest, cache)}"
        ) from err
    except requests.exceptions.HTTPError as err:
        response = err.response
        status = f"HTTP {response.status_code} {response.reason}" if response is not None else err
        raise SampleDataError(
            f"{stale}the server answered {status} for sample {name!r} at {url}"
            + (" (the file is not at this address)" if "404" in str(status) else "")
            + f". {_remedies(name, digest, cache)}"
        ) from err
    except requests.exceptions.RequestException as err:  # offline, refused, timed out
        raise SampleDataError(
            f"{stale}could not download sample {name!r} from {url} "
            f"({type(err).__name__}: the network or the server is unreachable). "
            f"{_remedies(name, digest, cache)}"
        ) from err
    except OSError as err:  # the cache: not a directory, not writable, disk full
        raise SampleDataError(
            f"{stale}could not store sample {name!r} in the cache directory {str(cache)!r} "
            f"({type(err).__name__}: {err}); pass cache_dir= (or set ${_ENV_DIR}) to a "
            "writable directory"
        ) from err


def open_sample(
    name: str, *, cache_dir: str | os.PathLike | None = None, **open_kwargs: Any
) -> xr.Dataset:
    """Download (once) and open a registered public sample file.

    Files are cached and checked against the sha256 in ``xdiffusion/registry.txt``; a
    download whose hash differs is deleted and rejected. ``$XDIFFUSION_DATA_URL`` replaces
    the base URL (a mirror), ``$XDIFFUSION_DATA_DIR`` the cache directory.

    Parameters
    ----------
    name
        One of :func:`list_samples`: ``"CESM2_sst_data.nc"`` (CESM2 monthly sea-surface
        temperature on a lat-lon grid) or ``"NARR_19930313_0000.nc"`` (one NARR analysis).
    cache_dir
        Cache directory; wins over ``$XDIFFUSION_DATA_DIR`` and the user cache.
    **open_kwargs
        Passed to :func:`xarray.open_dataset` (e.g. ``chunks={}``).

    Returns
    -------
    xarray.Dataset

    Raises
    ------
    ValueError
        If ``name`` is unknown (the message lists the names), ``cache_dir`` is a file, or
        the download fails its hash check.
    SampleDataError
        If the file cannot be downloaded (offline, server unreachable, HTTP error such as
        404) or stored (cache not a writable directory); the message says what to do.
    """
    registry = _load_registry()
    if name not in registry:
        raise ValueError(f"unknown sample name {name!r}; choose one of {sorted(registry)}")
    if cache_dir is not None:
        if not isinstance(cache_dir, str | os.PathLike):
            raise TypeError(
                f"cache_dir must be a path (str or os.PathLike), got {type(cache_dir).__name__}"
            )
        if os.path.exists(cache_dir) and not os.path.isdir(cache_dir):
            raise ValueError(
                f"cache_dir={str(cache_dir)!r} exists and is not a directory; pass a "
                "directory (created if missing)"
            )
    base_url = os.environ.get(_ENV_URL) or DEFAULT_BASE_URL
    scheme = base_url.split(":", 1)[0].lower() if ":" in base_url else ""
    if scheme not in _PROTOCOLS:
        raise ValueError(
            f"${_ENV_URL}={base_url!r} is not a URL xdiffusion can download from: use an "
            f"{', '.join(_PROTOCOLS)} URL of a mirror of {DEFAULT_BASE_URL} (to use files "
            "you already have, copy them into the cache directory instead), or unset it"
        )
    store = _make_registry(base_url, registry, cache_dir)
    path = _fetch(store, name, registry[name])
    return xr.open_dataset(path, **open_kwargs)
