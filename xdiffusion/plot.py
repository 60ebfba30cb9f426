"""Matplotlib figures of the diagnostics (Figs. 4.1–4.4 and 4.12 of Herbert (2023)).

matplotlib is an optional dependency (``pip install 'xdiffusion[plot]'``): it is imported
inside the functions, so ``import xdiffusion.plot`` works without it. Figures are built with
:class:`matplotlib.figure.Figure` (no pyplot state, safe on headless machines). Every
function takes ``ax=`` to draw into existing axes and returns the Figure.

Inputs are the outputs of :mod:`xdiffusion.diagnostics`: a DataArray, the Dataset of
:func:`~xdiffusion.diagnostics.evaluate` (sample and reference drawn together), or a
mapping ``{label: DataArray}`` to compare several models as in Herbert (2023)'s figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from os import PathLike
from typing import Any

import numpy as np
import xarray as xr

from xdiffusion.io.axes import find_axes

__all__ = [
    "plot_bias_map",
    "plot_fields",
    "plot_histogram",
    "plot_psd",
    "plot_qq",
    "plot_rank_histogram",
    "plot_report",
]

_PAIR = ("sample", "reference")


def _new_axes(ax: Any, figsize: tuple[float, float]) -> tuple[Any, Any]:
    if ax is not None:
        return ax.get_figure(), ax
    try:
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "xdiffusion.plot needs matplotlib; install it with pip install 'xdiffusion[plot]'"
        ) from err
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _series(obj: Any, stem: str, argument: str) -> list[tuple[str, xr.DataArray]]:
    """(label, DataArray) pairs from a DataArray, an evaluate() Dataset or a mapping."""
    if isinstance(obj, xr.DataArray):
        return [(str(obj.name or stem), obj)]
    if isinstance(obj, xr.Dataset):
        found = [(k, obj[f"{stem}_{k}"]) for k in _PAIR if f"{stem}_{k}" in obj]
        if not found:
            raise ValueError(
                f"{argument}= has no variables {stem}_sample / {stem}_reference; pass the "
                "Dataset of xdiffusion.diagnostics.evaluate or a DataArray"
            )
        return found
    if isinstance(obj, Mapping):
        out = []
        for label, da in obj.items():
            if not isinstance(da, xr.DataArray):
                raise TypeError(f"{argument}= mapping values must be DataArrays ({label!r})")
            out.append((str(label), da))
        return out
    raise TypeError(
        f"{argument}= must be a DataArray, an evaluate() Dataset or a mapping of "
        f"label -> DataArray, got {type(obj).__name__}"
    )


def _label(da: xr.DataArray, fallback: str) -> str:
    text = str(da.attrs.get("long_name") or da.name or fallback)
    units = da.attrs.get("units")
    return f"{text} [{units}]" if units not in (None, "", "1") else text


def _finish(fig: Any, path: str | PathLike | None, dpi: float | None = None) -> Any:
    if path is not None:
        fig.savefig(path, dpi=dpi)
    return fig


def plot_histogram(
    obj: xr.DataArray | xr.Dataset | Mapping[str, xr.DataArray],
    *,
    low_end: bool = False,
    log: bool = True,
    ax: Any = None,
) -> Any:
    """Frequency density of values (Fig. 4.2): outputs of ``diagnostics.histogram``.

    Parameters
    ----------
    obj
        A histogram DataArray, a mapping of them, or an evaluate() Dataset.
    low_end
        With a Dataset, draw the low-end histograms (``histogram_low_*``).
    log
        Logarithmic density axis, as in Herbert (2023). log10 densities are drawn as densities.
    ax
        Axes to draw into; default a new Figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, ax = _new_axes(ax, (6, 4))
    series = _series(obj, "histogram_low" if low_end else "histogram", "obj")
    for label, da in series:
        if da.ndim != 1:
            raise ValueError(f"histogram {label!r} must be 1-D, got dims {da.dims}")
        dim = da.dims[0]
        values = np.asarray(da.values, dtype=float)
        if str(da.attrs.get("long_name", "")).startswith("log10"):
            values = 10.0**values
        lower, upper = f"{dim}_lower", f"{dim}_upper"
        if lower in da.coords and upper in da.coords:
            edges = np.append(da[lower].values, da[upper].values[-1])
            ax.stairs(np.nan_to_num(values, nan=0.0), edges, label=label)
        else:
            ax.plot(da[dim].values, values, label=label)
    da0 = series[0][1]
    dim0 = da0.dims[0]
    ax.set_xlabel(_label(da0[dim0], "value").replace(" (bin centre)", ""))
    units = da0.attrs.get("units")
    ax.set_ylabel("frequency density" + (f" [{units}]" if units not in (None, "1", "") else ""))
    if log:
        ax.set_yscale("log")
    ax.legend()
    return fig


def plot_psd(
    obj: xr.DataArray | xr.Dataset | Mapping[str, xr.DataArray],
    *,
    kind: str = "spatial",
    ax: Any = None,
) -> Any:
    """Power spectral densities on log-log axes (Fig. 4.3).

    Parameters
    ----------
    obj
        Output(s) of ``diagnostics.spatial_psd`` / ``temporal_psd``, or an evaluate()
        Dataset.
    kind
        ``"spatial"`` or ``"temporal"``: which PSDs of a Dataset to draw.
    ax
        Axes to draw into; default a new Figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if kind not in ("spatial", "temporal"):
        raise ValueError(f"kind={kind!r} must be 'spatial' or 'temporal'")
    fig, ax = _new_axes(ax, (6, 4))
    series = _series(obj, f"{kind}_psd", "obj")
    for label, da in series:
        if da.ndim != 1:
            raise ValueError(f"PSD {label!r} must be 1-D, got dims {da.dims}")
        ax.loglog(da[da.dims[0]].values, da.values, label=label)
    da0 = series[0][1]
    ax.set_xlabel(_label(da0[da0.dims[0]], str(da0.dims[0])))
    units = da0.attrs.get("units")
    spatial = da0.dims[0] == "wavenumber"
    ax.set_ylabel(
        ("P(k)" if spatial else "P(f)") + (f" [{units}]" if units not in (None, "", "1") else "")
    )
    ax.set_title(f"{'spatial' if spatial else 'temporal'} PSD")
    ax.legend()
    return fig


def plot_qq(
    obj: xr.Dataset | Mapping[str, xr.Dataset],
    *,
    log: bool = False,
    ax: Any = None,
) -> Any:
    """Quantile-quantile plot, reference against samples (Fig. 4.4).

    Parameters
    ----------
    obj
        The Dataset of ``diagnostics.qq`` or of ``evaluate``, or ``{label: qq Dataset}``.
    log
        Logarithmic axes.
    ax
        Axes to draw into; default a new Figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, ax = _new_axes(ax, (5, 5))
    if isinstance(obj, xr.Dataset):
        obj = {"samples": obj}
    if not isinstance(obj, Mapping) or not obj:
        raise TypeError(f"obj= must be a qq()/evaluate() Dataset, got {type(obj).__name__}")
    lo, hi = np.inf, -np.inf
    for label, ds in obj.items():
        names = ("qq_sample", "qq_reference") if "qq_sample" in ds else ("sample", "reference")
        if not all(n in ds for n in names):
            raise ValueError(f"obj[{label!r}] has no sample/reference quantiles")
        sample, ref = ds[names[0]], ds[names[1]]
        ax.scatter(ref.values, sample.values, marker="x", s=12, linewidth=0.8, label=label)
        both = np.concatenate([np.ravel(ref.values), np.ravel(sample.values)])
        both = both[np.isfinite(both) & ((both > 0) if log else True)]
        if both.size:
            lo, hi = min(lo, both.min()), max(hi, both.max())
    if np.isfinite(lo):
        ax.plot([lo, hi], [lo, hi], linestyle=":", color="black", linewidth=0.8, label="ideal")
    if log:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel(f"reference {_label(ref, 'quantile')}".replace("quantile of reference ", ""))
    ax.set_ylabel(f"sample {_label(sample, 'quantile')}".replace("quantile of sample ", ""))
    ax.set_title("quantile-quantile")
    ax.legend()
    return fig


def _grid_coords(da: xr.DataArray, ydim: str, xdim: str) -> tuple[np.ndarray, np.ndarray]:
    y = da[ydim].values if ydim in da.coords else np.arange(da.sizes[ydim])
    x = da[xdim].values if xdim in da.coords else np.arange(da.sizes[xdim])
    return np.asarray(y), np.asarray(x)


def plot_bias_map(
    obj: xr.DataArray | xr.Dataset,
    *,
    dims: Mapping[str, str] | None = None,
    vmax: float | None = None,
    cmap: str = "RdBu_r",
    ax: Any = None,
) -> Any:
    """Map of the mean-normalised bias (Fig. 4.12), with its mean absolute value.

    Parameters
    ----------
    obj
        ``mean_normalised_bias`` DataArray (Y, X), or a Dataset containing it.
    dims
        Axis overrides for :func:`~xdiffusion.io.axes.find_axes`.
    vmax
        Colour limit (symmetric around 0); default the 98th percentile of |bias|.
    cmap
        Diverging colour map.
    ax
        Axes to draw into; default a new Figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if isinstance(obj, xr.Dataset):
        if "mean_normalised_bias" not in obj:
            raise ValueError("obj= has no variable 'mean_normalised_bias'")
        obj = obj["mean_normalised_bias"]
    if not isinstance(obj, xr.DataArray):
        raise TypeError(f"obj= must be a DataArray or Dataset, got {type(obj).__name__}")
    axes = find_axes(obj, dims, require_time=False)
    if obj.ndim != 2:
        raise ValueError(f"the bias map must be 2-D (Y, X), got dims {obj.dims}")
    fig, ax = _new_axes(ax, (5.5, 4.5))
    da = obj.transpose(axes["Y"], axes["X"])
    values = np.asarray(da.values, dtype=float)
    if vmax is None:
        # a few cells with a tiny reference mean would otherwise set the whole scale
        finite = np.abs(values[np.isfinite(values)])
        vmax = float(np.percentile(finite, 98)) if finite.size else 1.0
        vmax = vmax if vmax > 0 else 1.0
    y, x = _grid_coords(da, axes["Y"], axes["X"])
    mesh = ax.pcolormesh(x, y, values, cmap=cmap, vmin=-vmax, vmax=vmax, shading="auto")
    fig.colorbar(mesh, ax=ax, label="mean-normalised bias")
    ax.set_xlabel(_label(da[axes["X"]], axes["X"]))
    ax.set_ylabel(_label(da[axes["Y"]], axes["Y"]))
    ax.set_aspect("equal")
    mean_abs = float(np.nanmean(np.abs(values))) if np.isfinite(values).any() else np.nan
    ax.set_title(f"mean-normalised bias (mean |b| = {mean_abs:.2f})")
    return fig


def plot_rank_histogram(obj: xr.DataArray | xr.Dataset, *, ax: Any = None) -> Any:
    """Rank histogram bars with the flat line of a calibrated ensemble.

    Parameters
    ----------
    obj
        Output of ``diagnostics.rank_histogram``, or a Dataset containing ``rank_histogram``.
    ax
        Axes to draw into; default a new Figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if isinstance(obj, xr.Dataset):
        if "rank_histogram" not in obj:
            raise ValueError("obj= has no variable 'rank_histogram' (evaluate without obs?)")
        obj = obj["rank_histogram"]
    if not isinstance(obj, xr.DataArray) or obj.ndim != 1:
        raise TypeError("obj= must be the 1-D DataArray of diagnostics.rank_histogram")
    fig, ax = _new_axes(ax, (5, 4))
    ranks = obj[obj.dims[0]].values
    values = np.asarray(obj.values, dtype=float)
    ax.bar(ranks, values, width=0.9, color="tab:blue")
    ax.axhline(np.nansum(values) / values.size, color="black", linestyle=":", label="flat")
    ax.set_xlabel("rank of observation")
    ax.set_ylabel(str(obj.attrs.get("long_name", "frequency")))
    ax.set_title("rank histogram")
    ax.legend()
    return fig


def plot_fields(
    da: xr.DataArray,
    *,
    dims: Mapping[str, str] | None = None,
    member_dim: str = "realization",
    max_members: int = 4,
    max_frames: int = 10,
    vmax: float | None = None,
    cmap: str = "Blues",
    ax: Sequence[Any] | np.ndarray | None = None,
) -> Any:
    """A grid of sample frames: one row per member, one column per time step (Fig. 4.1).

    Parameters
    ----------
    da
        Fields (T, Y, X), optionally with ``member_dim``; the first ``max_members``
        members and ``max_frames`` time steps are drawn, on one colour scale.
    dims
        Axis overrides for :func:`~xdiffusion.io.axes.find_axes`.
    member_dim
        Name of the ensemble dimension.
    max_members, max_frames
        Grid size limits.
    vmax
        Upper colour limit; default the largest value drawn (lower limit: the smallest).
    cmap
        Colour map.
    ax
        Existing axes, at least rows × columns of them (row-major); default a new Figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not isinstance(da, xr.DataArray):
        raise TypeError(f"da= must be a DataArray, got {type(da).__name__}")
    axes = find_axes(da, dims, require_time=False)
    sel: dict[str, slice] = {}
    if member_dim in da.dims:
        sel[member_dim] = slice(0, max(1, int(max_members)))
    if "T" in axes:
        sel[axes["T"]] = slice(0, max(1, int(max_frames)))
    da = da.isel(sel)
    extra = set(da.dims) - {member_dim, axes["Y"], axes["X"], axes.get("T")}
    if extra:
        raise ValueError(f"da= has extra dimensions {sorted(map(str, extra))}; select them")
    order = [d for d in (member_dim, axes.get("T"), axes["Y"], axes["X"]) if d in da.dims]
    values = np.asarray(da.transpose(*order).values, dtype=float)
    rows = da.sizes[member_dim] if member_dim in da.dims else 1
    cols = da.sizes[axes["T"]] if "T" in axes else 1
    values = values.reshape(rows, cols, *values.shape[-2:])
    if ax is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(1.6 * cols + 1.2, 1.6 * rows + 0.4), layout="constrained")
        grid = np.asarray(fig.subplots(rows, cols, squeeze=False)).reshape(-1)
    else:
        grid = np.asarray(ax, dtype=object).reshape(-1)
        if grid.size < rows * cols:
            raise ValueError(f"ax= has {grid.size} axes; {rows} x {cols} are needed")
        fig = grid[0].get_figure()
    finite = values[np.isfinite(values)]
    vmin = float(finite.min()) if finite.size else 0.0
    top = vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    y, x = _grid_coords(da, axes["Y"], axes["X"])
    times = da[axes["T"]].values if "T" in axes and axes["T"] in da.coords else None
    mesh = None
    for i in range(rows):
        for j in range(cols):
            a = grid[i * cols + j]
            mesh = a.pcolormesh(x, y, values[i, j], cmap=cmap, vmin=vmin, vmax=top, shading="auto")
            a.set_xticks([])
            a.set_yticks([])
            a.set_aspect("equal")
            if i == 0 and times is not None:
                a.set_title(str(times[j])[:16], fontsize=7)
            if j == 0 and member_dim in da.dims:
                a.set_ylabel(
                    f"member {int(da[member_dim].values[i])}"
                    if member_dim in da.coords
                    else f"member {i}",
                    fontsize=8,
                )
    fig.colorbar(mesh, ax=list(grid[: rows * cols]), label=_label(da, "value"), shrink=0.8)
    return fig


def plot_report(
    report: xr.Dataset,
    path: str | PathLike | None = None,
    *,
    dpi: float = 100,
) -> Any:
    """Multi-panel summary of an :func:`~xdiffusion.diagnostics.evaluate` Dataset.

    Panels: full and low-end histograms, QQ, spatial and temporal PSDs, bias map, rank
    histogram (with observations) and the summary scalars.

    Parameters
    ----------
    report
        The Dataset returned by ``evaluate`` (computed here if dask-backed).
    path
        If given, the figure is saved there (format from the suffix, e.g. ``.png``).
    dpi
        Resolution when saving.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not isinstance(report, xr.Dataset):
        raise TypeError(f"report= must be the Dataset of evaluate(), got {type(report).__name__}")
    from matplotlib.figure import Figure

    report = report.compute()
    fig = Figure(figsize=(15, 12), layout="constrained")
    ax = fig.subplot_mosaic(
        [["hist", "low", "qq"], ["psd", "tpsd", "bias"], ["rank", "text", "text"]]
    )
    plot_histogram(report, ax=ax["hist"])
    ax["hist"].set_title("distribution")
    plot_histogram(report, low_end=True, ax=ax["low"])
    ax["low"].set_title("distribution, low end")
    plot_qq(report, ax=ax["qq"])
    plot_psd(report, kind="spatial", ax=ax["psd"])
    if "temporal_psd_sample" in report:
        plot_psd(report, kind="temporal", ax=ax["tpsd"])
    else:
        ax["tpsd"].set_axis_off()
    plot_bias_map(report, ax=ax["bias"])
    if "rank_histogram" in report:
        plot_rank_histogram(report, ax=ax["rank"])
    else:
        ax["rank"].set_axis_off()
    lines = [f"{name}: {float(var):.4g}" for name, var in report.data_vars.items() if var.ndim == 0]
    ax["text"].set_axis_off()
    ax["text"].text(0.0, 1.0, "\n".join(lines), va="top", family="monospace", fontsize=10)
    fig.suptitle(str(report.attrs.get("title", "xdiffusion evaluation")))
    return _finish(fig, path, dpi)
