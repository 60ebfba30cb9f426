"""The ``xdiffusion`` command line: demo, fit, sample, interpolate, forecast, downscale, evaluate.

Errors of the library, xarray or the file system are printed as ``error: <message>`` on
stderr with exit status 2 (as argparse does for usage errors); ``--debug`` shows the
traceback instead. ``--out`` is checked before any fitting or generating starts.

Option syntax shared by several commands:

``--var pr --var tas`` or ``--var pr,tas``
    The variables to use (a Dataset of them); default: all.
``--dims T=time,Y=rlat,X=rlon``
    Axis overrides (keys ``T``, ``Y``, ``X``), or the same as a JSON object.
``--net width=16,mults=1-2``
    Network settings for ``fit`` as ``key=value`` pairs separated by commas; a value is a
    number, ``true``/``false``, ``null``, a word, or a list of those joined by ``-``
    (``mults=1-2-2``, ``spatial_attention=none-none-full``). A JSON object
    (``--net '{"width": 16, "mults": [1, 2]}'``) is accepted too.
``--patch 64`` or ``--patch 48,64``
    ``fit`` on random spatial crops of 64×64 (or 48×64: ny,nx) cells of the grid; the model
    generates on the whole grid or any sub-region of it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from xdiffusion._version import __version__

__all__ = ["build_parser", "main"]

AXES = ("T", "Y", "X")
TIME_FEATURES = ("season", "hour")
# Names the options accept, spelled out here so that --help needs no torch (the registries
# live in torch modules; tests/test_cli.py checks that these agree with them).
SAMPLER_NAMES = ("ancestral", "ddim", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m")
TRANSFORM_NAMES = ("none", "sqrt", "log1p", "learned")
PRESET_NAMES = ("small", "reference")
METHOD_NAMES = ("guidance", "imputation")
OBJECTIVE_NAMES = ("weighted", "elbo")
#: Sampler and steps each task runs when neither the call nor the model's fit chose them
#: (xdiffusion.settings.TASK_DEFAULTS).
TASK_SAMPLING = {
    "sample": ("dpmpp_2m", 20),
    "interpolate": ("dpmpp_2m", 25),
    "downscale": ("dpmpp_2m", 25),
    "forecast": ("dpmpp_2m_sde", 25),
}
DEVICE_HELP = "torch device: auto (CUDA if available, else CPU), cpu, cuda, cuda:1, mps, …"
# What the command line turns into "error: <message>" + exit status 2 (see main).
ERRORS = (ValueError, TypeError, KeyError, OSError, RuntimeError, ImportError)


# ------------------------------------------------------------------ option parsing


def _items(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _json_object(text: str, option: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"{option}: invalid JSON ({err})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{option}: expected a JSON object, got {text!r}")
    return value


def _pairs(text: str, option: str, example: str) -> list[tuple[str, str]]:
    out = []
    for item in _items(text):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise argparse.ArgumentTypeError(
                f"{option}: expected key=value pairs separated by commas such as "
                f"{example!r}, got {item!r}"
            )
        out.append((key.strip(), value.strip()))
    if not out:
        raise argparse.ArgumentTypeError(f"{option}: empty; give e.g. {example!r}")
    keys = [k for k, _ in out]
    if len(set(keys)) != len(keys):
        raise argparse.ArgumentTypeError(f"{option}: a key is given twice in {text!r}")
    return out


def parse_dims(text: str) -> dict[str, str]:
    """``"T=time,Y=rlat,X=rlon"`` (or a JSON object) → ``{"T": "time", ...}``."""
    example = "T=time,Y=rlat,X=rlon"
    if text.strip().startswith("{"):
        raw = _json_object(text, "--dims")
        if not all(isinstance(v, str) and v for v in raw.values()):
            raise argparse.ArgumentTypeError("--dims: every value must be a dimension name")
        pairs = [(str(k), v) for k, v in raw.items()]
    else:
        pairs = _pairs(text, "--dims", example)
    dims = {k.upper(): v for k, v in pairs}
    unknown = sorted(set(dims) - set(AXES))
    if unknown or len(dims) != len(pairs):
        raise argparse.ArgumentTypeError(
            f"--dims: keys must be distinct among T, Y, X (got {[k for k, _ in pairs]}), "
            f"e.g. {example!r}"
        )
    return dims


def _dry_threshold(text: str) -> float | str:
    """``--dry-threshold``: ``auto`` or a number (argparse reports the ValueError)."""
    return text if text == "auto" else float(text)


def _scalar(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "null":
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def parse_net(text: str) -> dict[str, Any]:
    """``"width=16,mults=1-2"`` (or a JSON object) → ``{"width": 16, "mults": [1, 2]}``.

    A value is a number, ``true``/``false``, ``null`` (None), a word, or a list of these
    joined by ``-`` (a number such as ``-1`` or ``1e-3`` stays a number).
    """
    if text.strip().startswith("{"):
        return _json_object(text, "--net")
    net: dict[str, Any] = {}
    for key, value in _pairs(text, "--net", "width=16,mults=1-2"):
        scalar = _scalar(value)
        if isinstance(scalar, str) and "-" in value:
            parts = value.split("-")
            if not all(p.strip() for p in parts):
                raise argparse.ArgumentTypeError(
                    f"--net: {key}={value!r} has an empty list item; write lists as 1-2-2"
                )
            net[key] = [_scalar(p.strip()) for p in parts]
        else:
            net[key] = scalar
    return net


def parse_encoder(text: str) -> dict[str, Any]:
    """``"width=8,pooling=mean"`` (or a JSON object) → ``{"width": 8, "pooling": "mean"}``:
    the latent encoder's settings (:class:`xdiffusion.nets.encoder.EncoderConfig`)."""
    if text.strip().startswith("{"):
        return _json_object(text, "--encoder")
    return {k: _scalar(v) for k, v in _pairs(text, "--encoder", "width=16,pooling=stats")}


def parse_time_features(text: str) -> list[str]:
    """``"season,hour"`` → ``["season", "hour"]`` (distinct names among season, hour)."""
    names = _items(text)
    bad = [n for n in names if n not in TIME_FEATURES]
    if not names or bad or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"--time-features: give distinct names among {', '.join(TIME_FEATURES)} "
            f"separated by commas, got {text!r}"
        )
    return names


def parse_patch(text: str) -> int | tuple[int, int]:
    """``"64"`` → 64 (square crops), ``"48,64"`` → (48, 64) (ny, nx) for ``fit --patch``.

    Only the form is checked here; ``fit`` checks the size against the grid and the
    network (a multiple of 2**(levels − 1), at most the grid).
    """
    parts = [p.strip() for p in text.split(",")]
    try:
        sides = [int(p) for p in parts]
    except ValueError:
        sides = []
    if len(sides) not in (1, 2) or min(sides) < 1:
        raise argparse.ArgumentTypeError(
            f"--patch: a positive integer (square crops) or ny,nx such as 48,64, got {text!r}"
        )
    return sides[0] if len(sides) == 1 else (sides[0], sides[1])


def parse_threads(text: str) -> int | str:
    """``auto`` or a positive number of torch threads."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"--threads: 'auto' or a number ≥ 1, got {text!r}")
    return n


def positive_int(option: str) -> Callable[[str], int]:
    """An argparse ``type``: a positive integer, else a usage error naming ``option``."""

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = 0
        if n < 1:
            raise argparse.ArgumentTypeError(f"{option}: a positive integer, got {text!r}")
        return n

    return parse


def _variables(values: Sequence[str] | None) -> list[str] | None:
    """Repeated and comma-separated ``--var`` values, in order, without repeats."""
    if not values:
        return None
    out: list[str] = []
    for value in values:
        out += [v for v in _items(value) if v not in out]
    if not out:
        raise ValueError(f"--var names no variable (got {list(values)}); give e.g. --var pr")
    return out


# ------------------------------------------------------------------ files


def _is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _local(path: str) -> Path:
    return Path(path.removeprefix("file://")).expanduser()


def _open(
    path: str,
    var: Sequence[str] | str | None,
    chunks: int | None = None,
    dims: dict[str, str] | None = None,
) -> xr.Dataset:
    """A netCDF file or zarr store as a Dataset of the ``var`` variables (default: all)."""
    p = _local(path)
    if not p.exists():
        raise FileNotFoundError(f"input file {path!r} does not exist")
    if chunks is not None and (
        isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1
    ):
        raise ValueError(f"--chunks must be a positive number of time steps, got {chunks!r}")
    # decode_coords="all": grid mappings and bounds become coordinates, so that selecting
    # --var keeps them and the outputs carry them
    try:
        if p.is_dir():
            ds = xr.open_zarr(p, decode_coords="all")
        else:
            ds = xr.open_dataset(p, chunks=None if chunks is None else {}, decode_coords="all")
    except (ValueError, OSError, TypeError) as err:
        kind = "a zarr store" if p.is_dir() else "a netCDF file"
        raise ValueError(f"cannot read {path!r} as {kind} ({type(err).__name__}: {err})") from None
    names = [var] if isinstance(var, str) else _variables(var)
    if names is not None:
        missing = [v for v in names if v not in ds.data_vars]
        if missing:
            raise ValueError(
                f"--var {', '.join(missing)} not in {path}; available: {list(ds.data_vars)}"
            )
        chosen = ds[names]
        # selecting variables drops coordinates with a dimension of their own (bounds
        # with "bnds", 2-D lat/lon vertices): keep those that lie along the chosen grid
        extra = {
            k: v
            for k, v in ds.coords.items()
            if k not in chosen.coords and set(v.dims) & set(chosen.dims)
        }
        ds = chosen.assign_coords(extra)
    if chunks is not None:
        ds = ds.chunk({_time_dim(ds, dims): chunks})
    return ds


def _time_dim(ds: xr.Dataset, dims: dict[str, str] | None = None) -> str:
    if dims and "T" in dims:
        return dims["T"]
    from xdiffusion.io.axes import find_axes

    first = next(iter(ds.data_vars.values()))
    return find_axes(first, dims).get("T", "time")


def _inside(path: str, other: str) -> bool:
    return os.path.commonpath([path, other]) == other


def _check_out(
    out: str, kind: str, inputs: Sequence[str | None] = (), *, overwrite: bool = False
) -> None:
    """Refuse an unusable ``--out`` before any work starts.

    ``kind`` is ``"model"`` (a model directory: fit), ``"folder"`` (demo), ``"zarr"`` (a
    store written region by region) or ``"netcdf"`` (a file). A model directory that
    already holds a model is refused unless ``overwrite``.
    """
    if not out.strip():
        raise ValueError("--out is empty; name the output to write")
    if kind == "model" and _is_url(out):
        from xdiffusion.persistence import has_model

        if not overwrite and has_model(out):
            raise ValueError(_MODEL_EXISTS.format(out=out))
        return  # model.save checks the rest of remote locations itself
    p = _local(out)
    real = os.path.realpath(p)
    for source in inputs:
        if source is None or _is_url(source):
            continue
        src = os.path.realpath(_local(source))
        if real == src:
            raise ValueError(f"--out {out!r} is the input {source!r}; write somewhere else")
        if _inside(real, src) and os.path.isdir(src):
            raise ValueError(f"--out {out!r} lies inside the input {source!r}")
        if _inside(src, real):
            raise ValueError(f"--out {out!r} would replace the input {source!r} inside it")
    if p.exists() or p.is_symlink():
        if kind in ("model", "folder", "zarr") and not p.is_dir():
            raise ValueError(
                f"--out {out!r} exists and is not a directory; remove it or choose another path"
            )
        if kind == "netcdf" and p.is_dir():
            raise ValueError(
                f"--out {out!r} is a directory; give a file name such as "
                f"{str(p / 'out.nc')!r}, or a path ending in .zarr for a zarr store"
            )
        if kind == "model":
            from xdiffusion.persistence import is_model_dir

            if is_model_dir(p):
                if not overwrite:
                    raise ValueError(_MODEL_EXISTS.format(out=out))
            elif any(p.iterdir()):
                raise ValueError(
                    f"--out {out!r} is a non-empty directory that is not an xdiffusion model; "
                    "choose a new or empty directory"
                )
        if kind == "zarr":
            from xdiffusion.archive import PROGRESS

            if not (p / PROGRESS).is_file():
                raise ValueError(
                    f"{out!r} exists and is not an unfinished xdiffusion job: remove it or "
                    "choose another --out"
                )
        mode = os.W_OK | (os.X_OK if p.is_dir() else 0)
        if not os.access(p, mode):
            raise PermissionError(f"--out {out!r} is not writable")
    # the directory the output (and for a model its lock file) is created in
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"--out {out!r} cannot be created: {str(parent)!r} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"--out {out!r} cannot be created: {str(parent)!r} is not writable")


_MODEL_EXISTS = (
    "--out {out!r} already holds a model; pass --overwrite to replace it (nothing was "
    "fitted), or choose another --out"
)


def _out_kind(out: str) -> str:
    return "zarr" if out.rstrip("/").endswith(".zarr") else "netcdf"


def _write(
    obj: xr.DataArray | xr.Dataset, out: str, job: dict | None = None, progress: bool = True
) -> None:
    from xdiffusion.io.cf import to_dataset

    ds = to_dataset(obj)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    if out.rstrip("/").endswith(".zarr"):
        from xdiffusion.archive import write_zarr

        done = write_zarr(ds, out, job=job, progress=progress)
        print(f"wrote {out} ({done['written']} regions written, {done['skipped']} resumed)")
        return
    ds.to_netcdf(out)
    print(f"wrote {out}")


@contextlib.contextmanager
def _scheduler(spec: str | None):
    """threads | processes | local:N (a LocalCluster of N worker processes) | address."""
    import dask

    if spec is None or spec in ("threads", "synchronous"):
        with dask.config.set(scheduler=spec or "threads"):
            yield
        return
    if spec == "processes":
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        import torch

        # one pool for the whole job (dask would start one per region otherwise), one
        # process per core running one region at a time with one torch thread
        workers = os.cpu_count() or 1
        torch.set_num_threads(1)
        ctx = multiprocessing.get_context("spawn")
        with (
            ProcessPoolExecutor(workers, mp_context=ctx) as pool,
            dask.config.set(scheduler="processes", pool=pool, num_workers=workers),
        ):
            yield
        return
    from distributed import Client, LocalCluster

    if spec.startswith("local:"):
        import torch

        try:
            n = int(spec.split(":", 1)[1])
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"--scheduler {spec!r}: local:N needs a number of workers N ≥ 1")
        # the cores shared out between the workers (oversubscribed cores collapse
        # throughput), at most OMP_NUM_THREADS when it is set; the tasks run with the
        # thread count of the process that builds them
        threads = max(1, (os.cpu_count() or 1) // n)
        cap = os.environ.get("OMP_NUM_THREADS", "")
        if cap.isdigit() and int(cap) >= 1:
            threads = min(threads, int(cap))
        torch.set_num_threads(threads)
        with (
            LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster,
            Client(cluster),
        ):
            yield
        return
    with Client(spec):
        yield


# ------------------------------------------------------------------ parser


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" to an option's help where the default says something: not for
    None (the help says what happens then), flags, or help that names its default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or "default" in text
        ):
            return text
        return f"{text} (default: %(default)s)"


def _common(p: argparse.ArgumentParser) -> None:
    # also accepted after the command; SUPPRESS keeps the global value when absent here
    p.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the traceback of an error",
    )


def _var_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--var",
        action="append",
        default=None,
        metavar="NAME[,NAME...]",
        help=f"{what}: repeat --var or separate names by commas",
    )


def _dims_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dims",
        type=parse_dims,
        default=None,
        metavar="T=...,Y=...,X=...",
        help="axis overrides, e.g. T=time,Y=rlat,X=rlon (or a JSON object)",
    )


def _gen_args(p: argparse.ArgumentParser, task: str) -> None:
    _common(p)
    p.add_argument("model", help="model directory written by `xdiffusion fit` (or a URL)")
    _var_arg(p, "variables to use (default: all)")
    _dims_arg(p)
    p.add_argument("--n", type=int, default=10, help="ensemble members (realizations)")
    p.add_argument(
        "--out",
        required=True,
        help="output netCDF file, or a .zarr store (written region by region; re-running "
        "the same command resumes an interrupted job)",
    )
    sampler, steps = TASK_SAMPLING[task]
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"sampler steps (network evaluations per sample; default: the model's fit-time "
        f"choice, else {steps} for {task})",
    )
    p.add_argument(
        "--sampler",
        default=None,
        choices=SAMPLER_NAMES,
        metavar="NAME",
        help=f"sampler: {', '.join(SAMPLER_NAMES)} (default: the model's fit-time choice, "
        f"else {sampler} for {task}); the output's history line and 'sampling' attribute "
        "record what ran",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed: member k depends only on (seed, k), whatever --n or --batch-size",
    )
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="members generated at once (default: as many as --memory-budget allows); "
        "does not change the numbers",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--chunks",
        type=int,
        default=None,
        help="read inputs lazily in chunks of this many time steps; the result is then "
        "computed chunk by chunk (rounded to whole windows), never whole in memory",
    )
    p.add_argument(
        "--scheduler",
        default=None,
        help="dask scheduler for --chunks: threads (default), processes, local:N (a local "
        "cluster of N worker processes, each with cores/N torch threads, at most "
        "$OMP_NUM_THREADS) or a scheduler address such as tcp://host:8786",
    )
    p.add_argument(
        "--memory-budget",
        default=None,
        help="memory a call may plan to use, e.g. 4GB (default: half the machine's memory)",
    )
    p.add_argument(
        "--no-check-grid",
        action="store_true",
        help="generate on an input whose grid coordinates differ from the training grid's "
        "(another region or resolution of the same shape); refused by default",
    )
    p.add_argument(
        "--latent",
        default=None,
        metavar="FILE",
        help="latent model only: generate from the latents of FILE (written by `xdiffusion "
        "encode`; each window takes the latent of the encoded window it falls in); default: "
        "each member draws its own latent from the prior",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xdiffusion",
        formatter_class=HelpFormatter,
        description="Spatio-temporal diffusion models for gridded data. 'xdiffusion "
        "COMMAND --help' lists a command's options.",
        epilog="Errors print 'error: <message>' and exit with status 2; --debug shows the "
        "traceback.",
    )
    parser.add_argument("--version", action="version", version=f"xdiffusion {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    d = sub.add_parser(
        "demo",
        help="train on synthetic precipitation and run every task",
        description="Fit a quick model on synthetic precipitation (to show training) and run "
        "every generating task with the shipped reference model (xdiffusion.load_pretrained), "
        "writing both models' reports; --fit-only runs the tasks with the quick model, "
        "--pretrained-only skips the fit. The torch thread "
        "count is chosen from the cores free now (usable cores minus the 1-minute load "
        "average, at least 1; OMP_NUM_THREADS, if set, is used instead); override it with "
        "--threads N. The count used is printed in the summary ('threads').",
    )
    _common(d)
    d.add_argument("--out", default="xdiffusion-demo", help="output folder")
    d.add_argument(
        "--steps",
        type=positive_int("--steps"),
        default=None,
        help="training steps (default: 300; --tiny: 30)",
    )
    d.add_argument("--size", type=positive_int("--size"), default=32, help="grid size (cells)")
    d.add_argument(
        "--frames", type=positive_int("--frames"), default=8, help="window length in time steps"
    )
    d.add_argument(
        "--members",
        type=positive_int("--members"),
        default=4,
        help="ensemble members of each task",
    )
    d.add_argument("--tiny", action="store_true", help="a seconds-long smoke run")
    which = d.add_mutually_exclusive_group()
    which.add_argument(
        "--fit-only",
        action="store_true",
        help="run every task with the quick model fitted here (no reference model)",
    )
    which.add_argument(
        "--pretrained-only",
        action="store_true",
        help="no fit: run every task with the shipped reference model (seconds)",
    )
    d.add_argument(
        "--json",
        action="store_true",
        help="print the summary as JSON (as in summary.json) instead of the text for people",
    )
    d.add_argument("--seed", type=int, default=0, help="random seed")
    d.add_argument("--device", default="auto", help=DEVICE_HELP)
    d.add_argument(
        "--threads",
        type=parse_threads,
        default="auto",
        metavar="N|auto",
        help="torch threads; default auto: the cores free now (usable cores minus the "
        "1-minute load average, at least 1), or OMP_NUM_THREADS if set. A number overrides "
        "both.",
    )
    d.add_argument("--quiet", action="store_true", help="no progress bars")

    f = sub.add_parser(
        "fit",
        help="fit a model to a netCDF/zarr file",
        description="Fit a model to a netCDF file or zarr store and write the model "
        "directory. Prints the training and validation loss at the end (unless --quiet); "
        "the whole learning curve is kept in the model (model.history, "
        "xdiffusion.plot.plot_loss).",
    )
    _common(f)
    f.add_argument("data", help="netCDF file or zarr store")
    _var_arg(f, "variables learned jointly (default: all with time and grid)")
    _dims_arg(f)
    f.add_argument(
        "--out",
        required=True,
        help="model directory to write (a new or empty directory; an existing model only "
        "with --overwrite)",
    )
    f.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the model already in --out (checked before fitting; a directory that "
        "holds anything else is never replaced)",
    )
    f.add_argument("--frames", type=int, default=8, help="window length in time steps")
    f.add_argument("--steps", type=int, default=2000, help="optimisation steps")
    f.add_argument("--batch-size", type=int, default=16, help="windows per step")
    f.add_argument("--lr", type=float, default=3e-4, help="learning rate (AdamW)")
    f.add_argument(
        "--lr-schedule",
        default="cosine",
        choices=("constant", "cosine"),  # training.LR_SCHEDULES (torch is not imported here)
        help="learning rate after the warm-up: a cosine decay to 0.1 x --lr at the last "
        "step, or constant",
    )
    f.add_argument(
        "--t-sampling",
        default="stratified",
        choices=("uniform", "stratified"),  # training.T_SAMPLINGS
        help="diffusion times of a batch: one per stratum of [0, 1) (the same loss in "
        "expectation, with less variance), or independent draws (the default before)",
    )
    f.add_argument(
        "--dry-threshold",
        default="auto",
        type=_dry_threshold,
        help="value below which rain counts as dry, in the data's units (generated values "
        "below it become 0; nll's dry class); auto: 0.01 mm h-1 in the variable's units",
    )
    f.add_argument(
        "--transform",
        default="sqrt",
        choices=TRANSFORM_NAMES,
        help="transform of the values before scaling: sqrt or log1p for precipitation-like "
        "data (≥ 0), none, or learned (a monotone network trained jointly)",
    )
    f.add_argument(
        "--preset",
        default="small",
        choices=PRESET_NAMES,
        help="network preset: small (fast on CPU) or reference (Herbert (2023)'s network)",
    )
    f.add_argument(
        "--net",
        type=parse_net,
        default=None,
        metavar="KEY=VALUE,...",
        help="network settings over the preset: key=value pairs separated by commas, lists "
        "joined by '-', null for None (e.g. width=16,mults=1-2,spatial_attention=none-full), "
        'or a JSON object such as \'{"width": 16, "mults": [1, 2]}\'',
    )
    f.add_argument(
        "--time-features",
        type=parse_time_features,
        default=None,
        metavar="season,hour",
        help="condition on the time coordinate: season and/or hour, separated by commas",
    )
    f.add_argument(
        "--patch",
        type=parse_patch,
        default=None,
        metavar="N or NY,NX",
        help="train on random spatial crops of N×N (or NY×NX) cells of the grid; the model "
        "still generates on the whole grid or any sub-region of it",
    )
    f.add_argument(
        "--latent-dim",
        type=int,
        default=None,
        metavar="K",
        help="learn a K-dimensional latent per window with an encoder (representation "
        "learning; `xdiffusion encode` then describes windows); default: none",
    )
    f.add_argument(
        "--encoder",
        type=parse_encoder,
        default=None,
        metavar="KEY=VALUE,...",
        help="latent models: encoder settings as key=value pairs, e.g. width=16,levels=3 or "
        "pooling=mean (the encoder of fits from before statistics pooling, to resume their "
        "checkpoints); default: width=16,levels=3,pooling=stats",
    )
    f.add_argument(
        "--objective",
        default="weighted",
        choices=OBJECTIVE_NAMES,
        help="training loss: weighted (the thesis's v-loss, + beta × KL with a latent) or "
        "elbo (the variational bound)",
    )
    f.add_argument(
        "--beta",
        type=float,
        default=1.0,
        help="weight of the latent's KL with --objective weighted",
    )
    f.add_argument(
        "--free-bits",
        type=float,
        default=0.0,
        help="nats per latent dimension below which the KL costs nothing (0: none)",
    )
    f.add_argument(
        "--high-noise",
        type=float,
        default=0.0,
        help="latent models with --objective weighted: share of each batch trained at the "
        "highest noise levels, where only the latent shows the window (default 0)",
    )
    f.add_argument(
        "--compile",
        action="store_true",
        help="run the network through torch.compile during training (worth it on a GPU; "
        "fails with an error where torch.compile is unavailable)",
    )
    f.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed of initialisation, window order and noise (same seed, same CPU: "
        "same model)",
    )
    f.add_argument("--device", default="auto", help=DEVICE_HELP)
    f.add_argument("--quiet", action="store_true", help="no progress bar, no loss report")

    s = sub.add_parser(
        "sample",
        help="unconditional ensemble shaped like a template file",
        description="Draw an unconditional ensemble on the grid and time axis of --like "
        "(its values are not used). --start and --length select a stretch of a long "
        "template first, e.g. 48 steps of a 20-year file, without reading the rest.",
    )
    _gen_args(s, "sample")
    s.add_argument(
        "--like", required=True, help="template netCDF file or zarr store (grid, time axis)"
    )
    s.add_argument(
        "--start",
        default=None,
        metavar="TIME",
        help="first time step to generate: the template's first at or after TIME (a date "
        "such as 2001-07-01 or '2001-07-01 06:00', or a number for a numeric time axis; "
        "default: the template's first step)",
    )
    s.add_argument(
        "--length",
        type=int,
        default=None,
        metavar="N",
        help="number of time steps to generate from --start (default: to the template's end)",
    )

    i = sub.add_parser("interpolate", help="fill NaN time steps of a file")
    _gen_args(i, "interpolate")
    i.add_argument("data", help="netCDF file or zarr store with NaN where values are missing")
    i.add_argument(
        "--method",
        default="guidance",
        choices=METHOD_NAMES,
        help="conditioning: reconstruction guidance or imputation",
    )
    i.add_argument(
        "--guidance-weight",
        type=float,
        default=None,
        help="weight of reconstruction guidance (default: 3)",
    )

    fc = sub.add_parser("forecast", help="continue a file's series past its end")
    _gen_args(fc, "forecast")
    fc.add_argument("data", help="netCDF file or zarr store whose series to continue")
    fc.add_argument("--lead", type=int, required=True, help="time steps to forecast")
    fc.add_argument(
        "--context",
        type=int,
        default=None,
        help="known time steps each window conditions on (default: half the model's frames)",
    )

    ds = sub.add_parser("downscale", help="fine-grid ensemble from a coarse file")
    _gen_args(ds, "downscale")
    ds.add_argument("data", help="coarse netCDF file or zarr store")
    how = ds.add_mutually_exclusive_group(required=True)
    how.add_argument("--factor", type=int, default=None, help="refinement factor (e.g. 4)")
    how.add_argument("--like", default=None, help="fine template file whose grid to produce")
    ds.add_argument(
        "--no-project",
        action="store_true",
        help="skip the final correction that makes the block means equal the coarse values",
    )

    en = sub.add_parser(
        "encode",
        help="latent description of each window of a file (latent models)",
        description="Write the posterior q(w | window) of a latent model (fit with "
        "--latent-dim) for each non-overlapping window of DATA: latent_mean and latent_std "
        "on (window, latent), observed_fraction, and window_start. Pass the file to "
        "sample/interpolate/forecast/downscale --latent to generate from these latents.",
    )
    _common(en)
    en.add_argument("model", help="latent model directory written by `xdiffusion fit`")
    en.add_argument("data", help="netCDF file or zarr store to encode (NaN allowed)")
    _var_arg(en, "variables to use (default: all)")
    _dims_arg(en)
    en.add_argument("--out", required=True, help="output netCDF file (or a .zarr store)")
    en.add_argument("--batch-size", type=int, default=16, help="windows per encoder call")
    en.add_argument(
        "--chunks",
        type=int,
        default=None,
        help="read the data lazily in chunks of this many time steps",
    )
    en.add_argument("--device", default="auto", help=DEVICE_HELP)
    en.add_argument(
        "--no-check-grid",
        action="store_true",
        help="encode data whose grid coordinates differ from the training grid's",
    )
    en.add_argument("--quiet", action="store_true", help="no progress bars")

    e = sub.add_parser(
        "evaluate",
        help="diagnostics of an ensemble against a reference",
        description="Write the report of xdiffusion.diagnostics.evaluate: spatial and "
        "temporal spectra, histograms, quantiles and biases of ENSEMBLE against REFERENCE, "
        "and with --observations CRPS, rank histogram and spread-skill.",
    )
    _common(e)
    e.add_argument("ensemble", help="generated ensemble (netCDF file or zarr store)")
    e.add_argument("reference", help="reference fields on the same grid")
    e.add_argument(
        "--var",
        action="append",
        default=None,
        help="the variable to evaluate (default: the only variable with a grid)",
    )
    e.add_argument("--observations", default=None, help="truth aligned with the ensemble")
    e.add_argument("--out", required=True, help="report: netCDF file (or a .zarr store)")
    _dims_arg(e)
    e.add_argument("--member-dim", default="realization", help="the ensemble dimension")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    for command in sub.choices.values():  # every command's --help shows the defaults
        command.formatter_class = HelpFormatter
    return parser


# ------------------------------------------------------------------ commands


def _demo(args: argparse.Namespace) -> int:
    from xdiffusion.demo import format_summary, run_demo

    _check_out(args.out, "folder")
    summary = run_demo(
        args.out,
        steps=args.steps,
        size=args.size,
        frames=args.frames,
        members=args.members,
        tiny=args.tiny,
        seed=args.seed,
        device=args.device,
        progress=not args.quiet,
        threads=args.threads,
        mode="fit" if args.fit_only else "pretrained" if args.pretrained_only else "both",
    )
    print(json.dumps(summary, indent=1) if args.json else format_summary(summary))
    return 0


def _fit(args: argparse.Namespace) -> int:
    from xdiffusion import fitting
    from xdiffusion.nets.unet import unet_config

    _check_out(args.out, "model", [args.data], overwrite=args.overwrite)
    net = args.net or {}
    try:  # the network settings, before any data is read
        unet_config(args.preset, **{"channels": 1, **net})
    except (ValueError, TypeError) as err:
        raise ValueError(f"--preset {args.preset} --net {json.dumps(net)}: {err}") from None
    data = _open(args.data, args.var, dims=args.dims)
    model = fitting.fit(
        data,
        frames=args.frames,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_schedule=args.lr_schedule,
        t_sampling=args.t_sampling,
        dry_threshold=args.dry_threshold,
        transform=args.transform,
        preset=args.preset,
        net=args.net,
        dims=args.dims,
        time_features=args.time_features,
        seed=args.seed,
        device=args.device,
        progress=not args.quiet,
        patch=args.patch,
        compile=args.compile,
        latent_dim=args.latent_dim,
        encoder=args.encoder,
        objective=args.objective,
        beta=args.beta,
        free_bits=args.free_bits,
        high_noise=args.high_noise,
    )
    model.save(args.out)
    from xdiffusion.parallel import is_main_process

    if is_main_process():  # under torchrun: one line, from the rank that wrote the model
        print(f"wrote {args.out}  {model!r}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    import xdiffusion as xd

    like = getattr(args, "like", None)
    inputs = [args.model, getattr(args, "data", None), like, args.latent]
    _check_out(args.out, _out_kind(args.out), inputs)
    model = xd.load(args.model, device=args.device)
    common = dict(
        steps=args.steps,
        sampler=args.sampler,
        seed=args.seed,
        batch_size=args.batch_size,
        dims=args.dims,
        progress=not args.quiet,
        memory_budget=args.memory_budget,
        check_grid=not args.no_check_grid,
        latent=None if args.latent is None else _open(args.latent, None),
    )

    def data() -> xr.Dataset:
        return _open(args.data, args.var, args.chunks, args.dims)

    with _scheduler(args.scheduler):
        if args.command == "sample":
            template = _open(args.like, args.var, args.chunks, args.dims)
            template = _select_time(template, args.start, args.length, args.dims, args.like)
            out = template.diffusion.sample(model, args.n, **common)
        elif args.command == "interpolate":
            out = data().diffusion.interpolate(
                model, args.n, method=args.method, guidance_weight=args.guidance_weight, **common
            )
        elif args.command == "forecast":
            out = data().diffusion.forecast(
                model, args.lead, args.n, context=args.context, **common
            )
        else:
            fine = None if like is None else _open(like, args.var, None, args.dims)
            out = data().diffusion.downscale(
                model,
                args.n,
                factor=args.factor,
                like=fine,
                project=not args.no_project,
                **common,
            )
        job = {k: v for k, v in vars(args).items() if k not in ("quiet", "scheduler", "debug")}
        _write(out, args.out, job=job, progress=not args.quiet)
    return 0


def _encode(args: argparse.Namespace) -> int:
    import xdiffusion as xd

    _check_out(args.out, _out_kind(args.out), [args.model, args.data])
    model = xd.load(args.model, device=args.device)
    if not model.latent_dim:
        raise ValueError(
            f"{args.model} has no latent: fit it with --latent-dim K to encode windows"
        )
    data = _open(args.data, args.var, args.chunks, args.dims)
    out = data.diffusion.encode(
        model, dims=args.dims, check_grid=not args.no_check_grid, batch_size=args.batch_size
    )
    job = {k: v for k, v in vars(args).items() if k not in ("quiet", "debug")}
    _write(out, args.out, job=job, progress=not args.quiet)
    return 0


def _select_time(
    ds: xr.Dataset,
    start: str | None,
    length: int | None,
    dims: dict[str, str] | None,
    path: str,
) -> xr.Dataset:
    """The stretch of ``ds`` that ``--start`` and ``--length`` select (indexing only: a lazy
    file or dask array is read for these steps alone).

    ``start`` picks the first step at or after it: a date string for datetime and cftime
    axes (partial dates such as ``2001-07`` too), a number for a numeric axis.
    """
    if start is None and length is None:
        return ds
    if length is not None and length < 1:
        raise ValueError(f"--length must be a positive number of time steps, got {length}")
    tdim = _time_dim(ds, dims)
    if tdim not in ds.dims:
        raise ValueError(f"--start/--length: {path} has no time dimension {tdim!r}; see --dims")
    first = 0
    if start is not None:
        times = ds.indexes.get(tdim)
        if times is None:
            raise ValueError(f"--start: the time dimension {tdim!r} of {path} has no coordinate")
        key: object = start
        if np.issubdtype(np.asarray(times).dtype, np.number):
            try:
                key = float(start)
            except ValueError:
                raise ValueError(
                    f"--start {start!r}: the time axis of {path} is numeric; give a number"
                ) from None
        try:
            first = int(times.get_slice_bound(key, "left"))
        except (TypeError, ValueError, KeyError) as err:
            raise ValueError(
                f"--start {start!r} is not a time of {path}'s axis {tdim!r} (from "
                f"{times[0]} to {times[-1]}): {err}"
            ) from None
        if first >= len(times):
            raise ValueError(
                f"--start {start!r} is after the last time step of {path} ({times[-1]})"
            )
    left = ds.sizes[tdim] - first
    n = left if length is None else length
    if n > left:
        where = f" from --start {start!r}" if start is not None else ""
        raise ValueError(f"--length {n}: {path} has only {left} time steps{where}")
    return ds.isel({tdim: slice(first, first + n)})


def _pick(ds: xr.Dataset, name: str | None, path: str) -> xr.DataArray:
    """The variable ``name`` of ``ds`` (default: its only variable with two or more dims)."""
    if name is None:
        grids = [str(k) for k, v in ds.data_vars.items() if v.ndim >= 2]
        if len(grids) != 1:
            raise ValueError(
                f"{path} has {len(grids)} gridded variables {grids}; choose one with --var"
            )
        name = grids[0]
    if name not in ds.data_vars:
        raise ValueError(f"--var {name!r} not in {path}; available: {list(ds.data_vars)}")
    return ds[name]


def _evaluate(args: argparse.Namespace) -> int:
    from xdiffusion.diagnostics import evaluate

    names = _variables(args.var)
    if names is not None and len(names) != 1:
        raise ValueError(f"evaluate compares one variable at a time; got --var {names}")
    inputs = [args.ensemble, args.reference, args.observations]
    _check_out(args.out, _out_kind(args.out), inputs)
    ensemble = _pick(_open(args.ensemble, None), names and names[0], args.ensemble)
    name = str(ensemble.name)
    reference = _pick(_open(args.reference, None), name, args.reference)
    observations = None
    if args.observations is not None:
        observations = _pick(_open(args.observations, None), name, args.observations)
    report = evaluate(
        ensemble,
        reference,
        observations=observations,
        dims=args.dims,
        member_dim=args.member_dim,
    )
    job = {k: v for k, v in vars(args).items() if k not in ("quiet", "debug")}
    _write(report, args.out, job=job, progress=not args.quiet)
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "demo": _demo,
    "fit": _fit,
    "sample": _generate,
    "interpolate": _generate,
    "forecast": _generate,
    "downscale": _generate,
    "encode": _encode,
    "evaluate": _evaluate,
}


def _message(err: BaseException) -> str:
    if isinstance(err, KeyError) and len(err.args) == 1:
        text = str(err.args[0])  # str(KeyError) quotes the message
    else:
        text = str(err)
    return text or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``xdiffusion`` command.

    Returns 0 on success. A usage error, or an error of the library, xarray or the file
    system, prints ``error: <message>`` on stderr and raises ``SystemExit(2)``; with
    ``--debug`` the exception itself propagates (with its traceback).
    """
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ERRORS as err:
        if args.debug:
            raise
        print(f"error: {_message(err)}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
