# ruff: noqa: E501  (the case tables keep one case per line)
"""Adversarial harness: bad inputs, corrupt files and hostile settings, classified automatically.

Re-runs the categories of the adversarial pass of issue 14 ("never lose a model, never
compute a wrong answer silently"): data loss in saves, silent wrong results from fit
arguments, resume fingerprints, generation arguments (sample / interpolate / forecast /
downscale), model files, the command line, resources, non-datetime time axes, offline sample
data and misleading messages. Run it from the repository root::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/adversarial.py [--only SUBSTRING] [--list]
        [--details FILE]

It prints a JSON summary (counts per class and per category, and every case that is not
``clear`` or ``valid``) and writes it to ``benchmarks/results/adversarial.json`` (not with
``--only``). A run takes a few minutes on one thread.

How a case runs
---------------
The parent process fits a few tiny models once (8-wide two-level U-Nets, 2 steps: seconds)
and writes the files the cases share. Each case then gets a fresh temporary directory and
runs in a child made with ``fork`` (so it inherits the models without re-importing torch),
with ``RLIMIT_AS`` capped at the parent's address space plus :data:`MEMORY_HEADROOM` and a
wall-clock limit (``Case.timeout``): an allocation runaway fails inside the child, a hang
is killed, and nothing a case does can change the parent. Command-line cases call
``xdiffusion.cli.main(argv)`` in the child with stdout/stderr captured (``python -m
xdiffusion`` runs exactly this function); one case also starts a real subprocess.

Classification rules
--------------------
Every case declares what should happen: ``error`` (the input is invalid: it must be
refused), ``valid`` (it must be accepted, and ``check`` verifies the result is right) or
``either`` (a clear refusal or a correct result are both fine, e.g. a float time axis that
may be supported or refused). Each case also names ``tokens``: regular expressions of which
one must occur in the message (the argument, option or file at fault).

``clear``
    An invalid input was refused with an *accepted* exception type — ``ValueError``,
    ``TypeError``, ``OSError`` and its subclasses (``FileNotFoundError``,
    ``PermissionError``, ...), ``FloatingPointError``, or any exception class defined in
    the ``xdiffusion`` package (e.g. ``SampleDataError``) — raised from xdiffusion's own
    code (the innermost traceback frame is a file of the ``xdiffusion`` package; also
    Python's own ``TypeError`` for an unknown keyword or a missing argument of a public
    function, and any frame for a fault the case injects itself, such as a full disk),
    whose message matches one of the case's tokens and none of its ``forbid`` patterns. For the
    command line: exit status 2, ``error: <message>`` on stderr (or argparse's usage
    error) matching a token, and no traceback.
``unclear``
    An accepted exception type, but raised inside a dependency (numpy, xarray, torch, ...)
    or with a message that names neither the argument nor the file (no token), or that
    says something misleading (a ``forbid`` pattern). CLI: exit 2 without a token.
``wrong_exception``
    Any other exception (``AttributeError``, ``KeyError``, ``IndexError``,
    ``ZeroDivisionError``, ``RuntimeError`` of torch, ``OverflowError``, ...). CLI: a
    traceback, or an exit status other than 0 and 2.
``silent``
    An invalid input was accepted (the call returned), or a ``valid``/``either`` case
    returned a wrong result (its ``check`` failed).
``runaway``
    ``MemoryError``, an allocation failure under the memory cap (torch's
    ``DefaultCPUAllocator``), death by a signal, or the time limit.
``data_loss``
    After the case (whatever it returned), a model that was saved before no longer loads,
    or a file it must not touch changed (``Case.protect``, ``Case.loadable``), or a data
    loss check of the case itself failed. This class wins over every other.
``valid``
    A ``valid``/``either`` case accepted with a correct result.
``refused_valid``
    A ``valid`` case that raised (a correct input refused).
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import http.server
import json
import math
import os
import pickle
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch
import xarray as xr

import xdiffusion as xd
from xdiffusion.datasets import synthetic_precipitation

torch.set_num_threads(1)
warnings.simplefilter("ignore")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "adversarial.json"
PACKAGE = str(Path(xd.__file__).resolve().parent)
#: Address space a case may add to the parent's before allocations fail.
MEMORY_HEADROOM = 3 * 2**30
TINY_NET = {"width": 8, "mults": [1, 2]}
FIT = dict(frames=4, steps=2, batch_size=2, progress=False, device="cpu", net=TINY_NET)
GEN = dict(steps=2, progress=False)

CLASSES = (
    "clear",
    "valid",
    "unclear",
    "wrong_exception",
    "silent",
    "runaway",
    "data_loss",
    "refused_valid",
)


# ==================================================================== cases
@dataclass
class Case:
    name: str
    category: str
    run: Callable[[Path], Any]
    expect: str = "error"  # "error" | "valid" | "either"
    tokens: tuple[str, ...] = ()
    check: Callable[[Path, Any], str | None] | None = None
    forbid: tuple[str, ...] = ()
    setup: Callable[[Path], None] | None = None
    protect: tuple[str, ...] = ()  # paths (relative to the case dir) that must not change
    loadable: tuple[str, ...] = ()  # model dirs (relative) that must load afterwards
    timeout: float = 60.0
    failure: str = "silent"  # class of a failed check
    injected: bool = False  # the fault is injected by the case: any raising frame counts


CASES: list[Case] = []


def case(name: str, category: str, run: Callable[[Path], Any], **kw: Any) -> None:
    if any(c.name == name for c in CASES):
        raise RuntimeError(f"duplicate case name {name}")
    CASES.append(Case(name, category, run, **kw))


@dataclass
class CliResult:
    code: int
    out: str
    err: str


# ==================================================================== shared inputs
class G:
    """What the parent prepares once; children inherit it through fork."""

    base: Path
    series: xr.DataArray
    model: Any
    model2: Any
    model_num: Any
    model_tf: Any
    model_dir: Path
    ckpt: Path
    nc: Path
    nc_gappy: Path
    nc_coarse: Path
    nc_short: Path
    nc_fine: Path
    nc_garbage: Path


def make_series(nt: int = 40, seed: int = 0) -> xr.DataArray:
    return synthetic_precipitation(nt=nt, ny=16, nx=16, seed=seed)


def short(s: xr.DataArray | None = None) -> xr.DataArray:
    return (G.series if s is None else s).isel(time=slice(0, 8))


def with_nan(s: xr.DataArray, steps: list[int]) -> xr.DataArray:
    s = s.copy()
    s[{"time": steps}] = np.nan
    return s


def gappy() -> xr.DataArray:
    return with_nan(short(), [3])


def coarse(s: xr.DataArray | None = None) -> xr.DataArray:
    return short(s).coarsen(y=4, x=4).mean()


def numeric_time(s: xr.DataArray, dtype: Any = float) -> xr.DataArray:
    return s.assign_coords(time=np.arange(s.sizes["time"]).astype(dtype))


def with_nat(s: xr.DataArray, step: int) -> xr.DataArray:
    t = s.time.values.copy()
    t[step] = np.datetime64("NaT")
    return s.assign_coords(time=t)


def fit(s: xr.DataArray | None = None, **kw: Any) -> Any:
    return (G.series if s is None else s).diffusion.fit(**{**FIT, **kw})


def prepare(base: Path) -> None:
    G.base = base
    G.series = make_series(40)
    G.model = fit()
    G.model2 = fit(seed=1)
    G.model_num = fit(numeric_time(G.series))
    G.model_tf = fit(time_features="season")
    G.model_dir = base / "model"
    G.model.save(G.model_dir)
    G.ckpt = base / "ckpt"
    fit(checkpoint_dir=G.ckpt, checkpoint_every=1, keep_checkpoints=4)
    G.nc = base / "data.nc"
    G.series.isel(time=slice(0, 16)).to_dataset().to_netcdf(G.nc)
    G.nc_gappy = base / "gappy.nc"
    with_nan(G.series.isel(time=slice(0, 16)), [3, 9]).to_dataset().to_netcdf(G.nc_gappy)
    G.nc_coarse = base / "coarse.nc"
    coarse().to_dataset().to_netcdf(G.nc_coarse)
    G.nc_short = base / "short.nc"
    short().to_dataset().to_netcdf(G.nc_short)
    G.nc_fine = base / "fine.nc"
    short().to_dataset().to_netcdf(G.nc_fine)
    G.nc_garbage = base / "garbage.nc"
    G.nc_garbage.write_bytes(b"this is not a netCDF file\n" * 10)


# ==================================================================== helpers for checks
def tree_digest(path: Path) -> str:
    """SHA-256 over the names, modes and contents of a file or directory tree."""
    h = hashlib.sha256()
    if not os.path.lexists(path):
        return "absent"
    paths = [path] if not path.is_dir() or path.is_symlink() else sorted(path.rglob("*"))
    for p in paths:
        h.update(str(p.relative_to(path) if p != path else ".").encode())
        if p.is_symlink():
            h.update(b"link:" + os.readlink(p).encode())
        elif p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def loads(path: Path) -> str | None:
    try:
        xd.load(path)
    except Exception as err:
        return f"{type(err).__name__}: {err}"
    return None


def template_for(m: Any) -> xr.DataArray | xr.Dataset:
    """8 steps of the shared series on the model's grid (its first rows and columns), with
    the model's variables (extra ones as rescaled copies of ``pr``)."""
    ny, nx = m.grid
    base = short().isel(y=slice(0, ny), x=slice(0, nx))
    step = m.data.time_step if m.data is not None else None
    if isinstance(step, dict) and step.get("kind") == "numeric":
        base = numeric_time(base)
    if m.variables == ["pr"]:
        return base
    return xr.Dataset({v: base.rename(v) for v in m.variables})


def finite_model(m: Any) -> str | None:
    """A fitted or loaded model is usable: finite losses, plain-JSON config, and samples that
    are finite wherever its valid mask says the data had values."""
    if not isinstance(m, xd.DiffusionModel):
        return f"returned {type(m).__name__}, not a DiffusionModel"
    try:
        repr(m)
    except Exception as err:
        return f"repr(model) fails: {type(err).__name__}: {err}"
    loss = m.history_dict.get("loss", [])
    if not loss or not np.isfinite(loss).all():
        return f"training losses not finite: {loss}"
    try:
        json.dumps(m.config)
    except TypeError as err:
        return f"config is not plain JSON ({err})"
    out = template_for(m).diffusion.sample(m, **GEN)
    arrays = [out] if isinstance(out, xr.DataArray) else list(out.data_vars.values())
    valid = m.valid.cpu().numpy()
    for c, a in enumerate(arrays):
        v = np.asarray(a.values)
        if not np.isfinite(v[..., valid[c]]).all():
            return "samples are not finite on valid cells"
    return None


def same_weights(a: Any, b: Any) -> bool:
    sa, sb = a.module.state_dict(), b.module.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def finite_output(out: Any, shape: tuple[int, ...] | None = None) -> str | None:
    if not isinstance(out, xr.DataArray | xr.Dataset):
        return f"returned {type(out).__name__}"
    da = out if isinstance(out, xr.DataArray) else next(iter(out.data_vars.values()))
    vals = np.asarray(da.values)
    if shape is not None and vals.shape != shape:
        return f"shape {vals.shape}, expected {shape}"
    if not np.isfinite(vals).all():
        return "output has non-finite values"
    return None


def all_of(*checks: Callable[[Path, Any], str | None]) -> Callable[[Path, Any], str | None]:
    def check(tmp: Path, out: Any) -> str | None:
        for c in checks:
            problem = c(tmp, out)
            if problem:
                return problem
        return None

    return check


def ok_model(tmp: Path, m: Any) -> str | None:
    return finite_model(m)


def ok_output(tmp: Path, out: Any) -> str | None:
    return finite_output(out)


def returns_none(tmp: Path, out: Any) -> str | None:
    return None if out is None else f"returned {out!r}"


def word(name: str) -> str:
    """A regex for ``name`` as a word (not part of another identifier)."""
    return rf"(?<![\w]){re.escape(name)}(?![\w])"


# ==================================================================== fit arguments
BAD_INT = [
    ("neg", -1),
    ("zero", 0),
    ("float", 2.5),
    ("nan", math.nan),
    ("inf", math.inf),
    ("str", "2"),
    ("bool", True),
    ("none", None),
    ("huge", 10**30),
]
INT_ARGS = {
    # name: (minimum, None allowed, valid numpy value, extra fit kwargs, huge expectation)
    "frames": (1, False, 4, {}, "error"),
    "steps": (1, False, 2, {}, "error"),
    "batch_size": (1, False, 2, {}, "error"),
    "warmup": (0, False, 1, {}, "either"),
    "seed": (0, False, 1, {}, "error"),
    "val_every": (0, False, 1, {}, "either"),
    "sampling_steps": (1, True, 3, {}, "error"),
    "checkpoint_every": (1, False, 1, {"checkpoint_dir": "ck"}, "either"),
    "keep_checkpoints": (1, False, 2, {"checkpoint_dir": "ck"}, "either"),
    "buffer_chunks": (1, False, 2, {"loader": "chunked"}, "either"),
    "patch": (2, True, 8, {}, "error"),
}
BAD_FLOAT = [
    ("neg", -1.0),
    ("zero", 0.0),
    ("nan", math.nan),
    ("inf", math.inf),
    ("-inf", -math.inf),
    ("str", "0.001"),
    ("bool", True),
    ("none", None),
    ("huge", 1e300),
]
# name: ({label: expectation where not "error"}, numpy valid value, extra kwargs)
FLOAT_ARGS = {
    "lr": ({"huge": "either"}, 1e-3, {}),
    "ema_decay": ({"zero": "valid"}, 0.9, {}),
    "grad_clip": (
        {"zero": "valid", "inf": "either", "none": "valid", "huge": "either"},
        0.5,
        {},
    ),
    "val_fraction": ({"zero": "valid"}, 0.2, {}),
    "lambda_min": ({"neg": "valid", "zero": "valid"}, -20.0, {}),
    "lambda_max": ({"neg": "valid", "zero": "valid", "huge": "either"}, 20.0, {}),
    "min_grad": ({"huge": "either"}, 0.2, {"transform": "learned"}),
    "dry_threshold": (
        {"neg": "either", "zero": "valid", "huge": "either"},
        0.05,
        {"transform": "learned"},
    ),
    "transform_lr_scale": ({"huge": "either"}, 2.0, {"transform": "learned"}),
}


def _fit_kwargs(tmp: Path, extra: dict) -> dict:
    kw = dict(extra)
    if "checkpoint_dir" in kw:
        kw["checkpoint_dir"] = tmp / kw["checkpoint_dir"]
    return kw


def add_fit_argument_cases() -> None:
    for arg, (minimum, allow_none, good, extra, huge) in INT_ARGS.items():
        for label, value in BAD_INT:
            if label == "none":
                expect = "valid" if allow_none else "error"
            elif label == "zero":
                expect = "valid" if minimum <= 0 else "error"
            elif label == "huge":
                expect = huge
            else:
                expect = "error"
            if arg == "patch" and label == "float":
                pass

            def run(tmp, arg=arg, value=value, extra=extra):
                return fit(**{**_fit_kwargs(tmp, extra), arg: value})

            case(
                f"fit-{arg}-{label}",
                "fit_arguments",
                run,
                expect=expect,
                tokens=(word(arg),),
                check=ok_model,
            )

        def run_np(tmp, arg=arg, good=good, extra=extra):
            m = fit(**{**_fit_kwargs(tmp, extra), arg: np.int64(good)})
            m.save(tmp / "m")
            xd.load(tmp / "m")
            return m

        case(f"fit-{arg}-numpy", "fit_arguments", run_np, expect="valid", check=ok_model)
    # patch sizes the network cannot use
    case(
        "fit-patch-odd",
        "fit_arguments",
        lambda tmp: fit(patch=3),
        tokens=(word("patch"),),
    )
    case(
        "fit-patch-larger-than-grid",
        "fit_arguments",
        lambda tmp: fit(patch=32),
        tokens=(word("patch"),),
    )
    case(
        "fit-patch-tuple-3",
        "fit_arguments",
        lambda tmp: fit(patch=(8, 8, 8)),
        tokens=(word("patch"),),
    )
    for arg, (special, good, extra) in FLOAT_ARGS.items():
        for label, value in BAD_FLOAT:
            expect = special.get(label, "error")

            def run(tmp, arg=arg, value=value, extra=extra):
                return fit(**{**extra, arg: value})

            case(
                f"fit-{arg}-{label}",
                "fit_arguments",
                run,
                expect=expect,
                tokens=(word(arg), "lambda_min", "lambda_max")
                if arg.startswith("lambda")
                else (word(arg),)
                if arg != "lr"
                else (word("lr"), "lower lr"),
                check=ok_model,
            )

        def run_np(tmp, arg=arg, good=good, extra=extra):
            m = fit(**{**extra, arg: np.float32(good)})
            m.save(tmp / "m")
            xd.load(tmp / "m")
            return m

        case(f"fit-{arg}-numpy", "fit_arguments", run_np, expect="valid", check=ok_model)
    case(
        "fit-lambda-min-neg-huge",
        "fit_arguments",
        lambda tmp: fit(lambda_min=-1e300),
        expect="either",
        tokens=("lambda_min",),
        check=ok_model,
    )
    for label, kw in (("lambda-max-1e3", {"lambda_max": 1e3}), ("lambda-min-neg-1e3", {"lambda_min": -1e3})):  # fmt: skip
        case(
            f"fit-{label}",
            "fit_arguments",
            lambda tmp, kw=kw: fit(**kw),
            expect="either",
            tokens=("lambda_min", "lambda_max"),
            check=ok_model,
        )
    ds = lambda: G.series.to_dataset().assign(q=G.series * 2 + 1)  # noqa: E731
    for label, value, expect in (
        ("missing", ["tas"], "error"),
        ("empty", [], "error"),
        ("int", 3, "error"),
        ("duplicate", ["pr", "pr"], "either"),
        ("string", "pr", "either"),
        ("tuple", ("pr",), "valid"),
    ):
        case(
            f"fit-dataset-variables-{label}",
            "fit_arguments",
            lambda tmp, value=value: fit(ds(), variables=value),
            expect=expect,
            tokens=("variables",),
            check=lambda tmp, m: (
                finite_model(m) or (None if m.variables == ["pr"] else f"variables {m.variables}")
            ),
        )
    case(
        "fit-lambda-equal",
        "fit_arguments",
        lambda tmp: fit(lambda_min=3.0, lambda_max=3.0),
        tokens=("lambda_min", "lambda_max"),
    )

    def grad_clip_descends(tmp: Path) -> Any:
        return fit(grad_clip=-1)

    # the rest of fit's arguments
    other = [
        ("transform-int", {"transform": 3}, ("transform",)),
        ("transform-unknown", {"transform": "cbrt"}, ("transform",)),
        ("transform-map-missing", {"transform": {"tas": "sqrt"}}, ("transform",)),
        (
            "transform-map-unknown-key",
            {"transform": {"pr": "sqrt", "tas": "none"}},
            ("transform",),
        ),
        ("transform-none-obj", {"transform": None}, ("transform",)),
        ("preset-unknown", {"preset": "huge"}, ("preset",)),
        ("preset-none", {"preset": None}, ("preset",)),
        ("preset-int", {"preset": 3}, ("preset",)),
        ("net-string", {"net": "x"}, (word("net"),)),
        ("net-unknown-key", {"net": {"widht": 8}}, (word("net"), "widht")),
        ("net-width-neg", {"net": {"width": -1, "mults": [1, 2]}}, ("width",)),
        ("net-width-float", {"net": {"width": 2.5, "mults": [1, 2]}}, ("width",)),
        ("net-width-str", {"net": {"width": "8", "mults": [1, 2]}}, ("width",)),
        ("net-mults-empty", {"net": {"width": 8, "mults": []}}, ("mults",)),
        ("net-mults-zero", {"net": {"width": 8, "mults": [1, 0]}}, ("mults",)),
        ("net-width-nan", {"net": {"width": math.nan, "mults": [1, 2]}}, ("width",)),
        ("device-int", {"device": 3}, ("device",)),
        ("device-unknown", {"device": "gpu0"}, ("device",)),
        ("device-missing-cuda", {"device": "cuda:99"}, ("device",)),
        ("progress-str", {"progress": "yes"}, ("progress",)),
        ("progress-int", {"progress": 1}, ("progress",)),
        ("dims-string", {"dims": "time"}, (word("dims"),)),
        ("dims-unknown-key", {"dims": {"Z": "y"}}, (word("dims"),)),
        ("dims-missing-dim", {"dims": {"T": "tim"}}, (word("dims"), "tim")),
        ("dims-value-int", {"dims": {"T": 3}}, (word("dims"),)),
        ("variables-missing", {"variables": ["tas"]}, ("variables",)),
        ("variables-empty", {"variables": []}, ("variables",)),
        ("variables-int", {"variables": 3}, ("variables",)),
        ("time-features-unknown", {"time_features": "moon"}, ("time_features", "moon")),
        (
            "time-features-twice",
            {"time_features": ["season", "season"]},
            ("time_features", "season"),
        ),
        ("time-features-int", {"time_features": 3}, ("time_features",)),
        ("resume-str", {"resume": "no", "checkpoint_dir": "unused"}, ("resume",)),
        ("resume-int", {"resume": 1, "checkpoint_dir": "unused"}, ("resume",)),
        ("resume-without-dir", {"resume": True}, ("resume", "checkpoint_dir")),
        ("checkpoint-dir-int", {"checkpoint_dir": 3}, ("checkpoint_dir",)),
        ("loader-unknown", {"loader": "fast"}, ("loader",)),
        ("loader-int", {"loader": 3}, ("loader",)),
        ("compile-str", {"compile": "yes"}, ("compile",)),
        ("sampler-unknown", {"sampler": "eulr"}, ("sampler",)),
        ("sampler-int", {"sampler": 3}, ("sampler",)),
        ("unknown-keyword", {"epochs": 3}, ("epochs",)),
    ]
    for label, kw, tokens in other:
        case(f"fit-{label}", "fit_arguments", lambda tmp, kw=kw: fit(**kw), tokens=tokens)
    case(
        "fit-variables-string",
        "fit_arguments",
        lambda tmp: fit(G.series.to_dataset(), variables="pr"),
        expect="either",
        tokens=("variables",),
        check=ok_model,
    )
    case(
        "fit-time-features-season",
        "fit_arguments",
        lambda tmp: fit(time_features="season"),
        expect="valid",
        check=ok_model,
    )
    case(
        "fit-grad-clip-ascent",
        "fit_arguments",
        grad_clip_descends,
        tokens=("grad_clip",),
    )

    def checkpoint_dir_is_file(tmp: Path) -> Any:
        (tmp / "f").write_text("x")
        return fit(checkpoint_dir=tmp / "f")

    case(
        "fit-checkpoint-dir-is-file",
        "fit_arguments",
        checkpoint_dir_is_file,
        tokens=("checkpoint_dir",),
    )


# ==================================================================== fit data
def add_fit_data_cases() -> None:
    s = lambda: G.series  # noqa: E731
    data_cases = [
        ("numpy", lambda: xd.fit(s().values, **FIT), ("data",)),
        ("string", lambda: xd.fit("precip.nc", **FIT), ("data",)),
        ("all-nan", lambda: fit(s() * np.nan), ("NaN",)),
        ("inf", lambda: fit(s().where(s().time != s().time[3], np.inf)), ("infinite",)),
        ("negative-sqrt", lambda: fit(s() - 1, transform="sqrt"), ("sqrt", "clip")),
        ("descending-time", lambda: fit(s().isel(time=slice(None, None, -1))), ("descending",)),
        ("duplicated-time", lambda: fit(xr.concat([s().isel(time=[0]), s()], "time")), ("dupl",)),
        ("constant", lambda: fit(s() * 0 + 1), ("constant",)),
        ("extra-dim", lambda: fit(s().expand_dims(member=2)), ("extra dim", "member")),
        ("no-time", lambda: fit(s().isel(time=0)), ("time",)),
        ("text-dtype", lambda: fit(s().astype(str)), ("dtype",)),
        ("complex-dtype", lambda: fit(s().astype(complex)), ("dtype", "complex")),
        ("object-dtype", lambda: fit(s().astype(object)), ("dtype", "object")),
        ("nat-time", lambda: fit(with_nat(s(), 5)), ("NaT",)),
        ("overflow-float32", lambda: fit(s().astype(np.float64) * 1e300), ("overflow",)),
        ("zero-steps", lambda: fit(s().isel(time=slice(0, 0))), ("time", "frames")),
        ("one-step", lambda: fit(s().isel(time=slice(0, 1))), ("frames",)),
        ("grid-0", lambda: fit(s().isel(y=slice(0, 0))), ("grid", "empty", "size", "cells")),
        ("string-time", lambda: fit(s().assign_coords(time=[f"t{i}" for i in range(40)])), ("time",)),
        ("dataset-no-grid", lambda: fit(xr.Dataset({"a": ("time", np.arange(40.0))})), ("variable", "grid", "axis", "axes")),
        ("frames-too-long", lambda: fit(frames=500), ("frames",)),
    ]  # fmt: skip
    for label, build, tokens in data_cases:
        case(f"fit-data-{label}", "fit_arguments", lambda tmp, b=build: b(), tokens=tokens)
    valid_data = [
        ("float64", lambda: fit(s().astype(np.float64))),
        ("float16", lambda: fit(s().astype(np.float16))),
        ("int-dtype", lambda: fit((s() * 100).astype(np.int32))),
        ("odd-grid", lambda: fit(s().isel(y=slice(0, 10), x=slice(0, 14)))),
        ("grid-1x1", lambda: fit(s().isel(y=[0], x=[0]))),
        ("nan-cells", lambda: fit(s().where(s().x > s().x[2]))),
        ("dask", lambda: fit(s().chunk(time=10))),
        ("dataset-two-vars", lambda: fit(s().to_dataset().assign(q=s() * 2 + 1))),
        ("cftime-noleap", lambda: fit(make_cftime(40))),
    ]
    for label, build in valid_data:
        case(
            f"fit-data-{label}",
            "fit_arguments",
            lambda tmp, b=build: b(),
            expect="either"
            if label in ("int-dtype", "odd-grid", "float16", "grid-1x1")
            else "valid",
            tokens=("dtype", "grid", "multiple"),
            check=ok_model,
        )

    def input_unchanged(tmp: Path) -> Any:
        data = G.series.copy(deep=True)
        before = data.copy(deep=True)
        fit(data)
        return data.identical(before)

    case(
        "fit-input-unchanged",
        "fit_arguments",
        input_unchanged,
        expect="valid",
        check=lambda tmp, same: None if same else "fit changed its input",
    )

    def global_rng(tmp: Path) -> Any:
        torch.manual_seed(123)
        np.random.seed(7)  # noqa: NPY002
        t0, n0 = torch.get_rng_state().clone(), np.random.get_state()[1].copy()  # noqa: NPY002
        fit()
        t1, n1 = torch.get_rng_state(), np.random.get_state()[1]  # noqa: NPY002
        return bool(torch.equal(t0, t1) and np.array_equal(n0, n1))

    case(
        "fit-keeps-global-rng",
        "fit_arguments",
        global_rng,
        expect="valid",
        check=lambda tmp, same: None if same else "fit changed the global torch/numpy RNG",
    )

    def reproducible(tmp: Path) -> Any:
        return same_weights(fit(steps=3), fit(steps=3))

    case(
        "fit-reproducible",
        "fit_arguments",
        reproducible,
        expect="valid",
        check=lambda tmp, same: None if same else "two equal fits differ",
    )


def make_cftime(nt: int) -> xr.DataArray:
    return synthetic_precipitation(nt=nt, ny=16, nx=16, seed=0, calendar="noleap")


# ==================================================================== resume
def copy_ckpt(tmp: Path) -> None:
    shutil.copytree(G.ckpt, tmp / "ck")


def resume(tmp: Path, data: xr.DataArray | None = None, **kw: Any) -> Any:
    return fit(data, **{"steps": 3, "checkpoint_dir": tmp / "ck", "resume": True, **kw})


def add_resume_cases() -> None:
    s = lambda: G.series  # noqa: E731

    def flipped_x() -> xr.DataArray:
        return s().copy(data=s().values[:, :, ::-1].copy())

    def reversed_values() -> xr.DataArray:
        return s().copy(data=s().values[::-1].copy())

    def other_seed_rescaled() -> xr.DataArray:
        o = make_series(40, seed=5).values.astype(np.float64)
        a, b = float(s().min()), float(s().max())
        o = a + (o - o.min()) / (o.max() - o.min()) * (b - a)
        return s().copy(data=o.astype(np.float32))

    def moved_time() -> xr.DataArray:
        return s().assign_coords(time=s().time + np.timedelta64(90, "D"))

    def other_mask() -> xr.DataArray:
        return s().where(s().x != s().x[5])

    def one_value_changed() -> xr.DataArray:
        v = s().values.copy()
        v[20, 8, 8] = v[20, 8, 8] + 0.5 * float(v.max() - v[20, 8, 8]) / 2
        return s().copy(data=v)

    def shifted_coords() -> xr.DataArray:
        return s().assign_coords(x=s().x + 1.0)

    different = [
        ("mirrored-grid", lambda tmp: resume(tmp, flipped_x())),
        ("time-reversed-values", lambda tmp: resume(tmp, reversed_values())),
        ("other-seed-rescaled", lambda tmp: resume(tmp, other_seed_rescaled())),
        ("moved-time", lambda tmp: resume(tmp, moved_time())),
        ("other-nan-mask", lambda tmp: resume(tmp, other_mask())),
        ("shifted-grid-coords", lambda tmp: resume(tmp, shifted_coords())),
        ("one-value-changed", lambda tmp: resume(tmp, one_value_changed())),
        ("longer-series", lambda tmp: resume(tmp, make_series(44))),
        ("transform-lr-scale", lambda tmp: resume(tmp, transform_lr_scale=5.0)),
        ("lr", lambda tmp: resume(tmp, lr=1e-3)),
        ("batch-size", lambda tmp: resume(tmp, batch_size=3)),
        ("seed", lambda tmp: resume(tmp, seed=1)),
        ("frames", lambda tmp: resume(tmp, frames=5)),
        ("net-width", lambda tmp: resume(tmp, net={"width": 16, "mults": [1, 2]})),
        ("val-fraction", lambda tmp: resume(tmp, val_fraction=0.3)),
        ("dry-threshold", lambda tmp: resume(tmp, dry_threshold=0.5)),
        ("warmup", lambda tmp: resume(tmp, warmup=7)),
        ("ema-decay", lambda tmp: resume(tmp, ema_decay=0.9)),
        ("grad-clip", lambda tmp: resume(tmp, grad_clip=None)),
        ("lambda", lambda tmp: resume(tmp, lambda_min=-20.0)),
        ("transform", lambda tmp: resume(tmp, transform="log1p")),
        ("time-features", lambda tmp: resume(tmp, time_features="season")),
        ("preset", lambda tmp: resume(tmp, preset="reference")),
        ("fewer-steps", lambda tmp: resume(tmp, steps=1)),
    ]
    for label, run in different:
        case(
            f"resume-{label}",
            "resume",
            run,
            setup=copy_ckpt,
            tokens=("checkpoint_dir", "steps"),
            protect=("ck",),
        )

    def same_as_uninterrupted(tmp: Path) -> Any:
        resumed = resume(tmp)
        return same_weights(resumed, fit(steps=3))

    case(
        "resume-same-data-equals-uninterrupted",
        "resume",
        same_as_uninterrupted,
        setup=copy_ckpt,
        expect="valid",
        check=lambda tmp, same: None if same else "resumed run differs from an uninterrupted one",
    )

    def keeps_numpy_rng(tmp: Path) -> Any:
        np.random.seed(11)  # noqa: NPY002
        before = np.random.get_state()[1].copy()  # noqa: NPY002
        t0 = torch.get_rng_state().clone()
        resume(tmp)
        return bool(
            np.array_equal(before, np.random.get_state()[1])  # noqa: NPY002
            and torch.equal(t0, torch.get_rng_state())
        )

    case(
        "resume-keeps-global-rng",
        "resume",
        keeps_numpy_rng,
        setup=copy_ckpt,
        expect="valid",
        check=lambda tmp, same: None if same else "resume changed the global RNG state",
    )

    def corrupt_all(tmp: Path) -> None:
        copy_ckpt(tmp)
        for f in (tmp / "ck").glob("*.safetensors"):
            f.write_bytes(b"garbage")

    def corrupt_newest(tmp: Path) -> None:
        copy_ckpt(tmp)
        newest = sorted((tmp / "ck").glob("*.safetensors"))[-1]
        newest.write_bytes(newest.read_bytes()[:100])

    case(
        "resume-all-checkpoints-corrupt",
        "resume",
        lambda tmp: resume(tmp),
        setup=corrupt_all,
        tokens=("checkpoint",),
        protect=("ck",),
    )

    def newest_kept(tmp: Path, m: Any) -> str | None:
        skipped = list((tmp / "ck" / "skipped").glob("*")) if (tmp / "ck").exists() else []
        if not skipped:
            return "the corrupt newest checkpoint was not kept in ck/skipped"
        return finite_model(m)

    case(
        "resume-newest-corrupt-falls-back",
        "resume",
        lambda tmp: resume(tmp),
        setup=corrupt_newest,
        expect="valid",
        check=newest_kept,
        failure="data_loss",
    )

    def ckpt_without_resume(tmp: Path) -> Any:
        return fit(checkpoint_dir=tmp / "ck")

    case(
        "resume-false-over-checkpoints",
        "resume",
        ckpt_without_resume,
        setup=copy_ckpt,
        tokens=("checkpoint_dir",),
        protect=("ck",),
    )
    case(
        "resume-empty-dir-starts-afresh",
        "resume",
        lambda tmp: resume(tmp),
        setup=lambda tmp: (tmp / "ck").mkdir(),
        expect="valid",
        check=ok_model,
    )

    def json_garbled(tmp: Path) -> None:
        copy_ckpt(tmp)
        for f in (tmp / "ck").glob("*.json"):
            f.write_text("{not json")

    case(
        "resume-all-json-garbled",
        "resume",
        lambda tmp: resume(tmp),
        setup=json_garbled,
        tokens=("checkpoint",),
        protect=("ck",),
    )

    def other_files_kept(tmp: Path) -> None:
        (tmp / "ck").mkdir()
        (tmp / "ck" / "notes.txt").write_text("mine")
        (tmp / "ck" / "ckpt-old.json").write_text("{}")

    def notes_kept(tmp: Path, m: Any) -> str | None:
        if (tmp / "ck" / "notes.txt").read_text() != "mine":
            return "checkpointing changed an unrelated file"
        if not (tmp / "ck" / "ckpt-old.json").exists():
            return "checkpointing deleted an unrelated file"
        return None

    case(
        "resume-foreign-files-in-checkpoint-dir",
        "resume",
        lambda tmp: fit(checkpoint_dir=tmp / "ck", keep_checkpoints=1),
        setup=other_files_kept,
        expect="valid",
        check=notes_kept,
        failure="data_loss",
    )


# ==================================================================== generation arguments
def gen_call(task: str, **kw: Any) -> Callable[[Path], Any]:
    """A call of ``task`` on the tiny model with its base arguments and ``kw``."""

    def run(tmp: Path) -> Any:
        args = {**GEN, **kw}
        if task == "sample":
            return short().diffusion.sample(G.model, **args)
        if task == "interpolate":
            return gappy().diffusion.interpolate(G.model, **args)
        if task == "forecast":
            return short().diffusion.forecast(G.model, **{"lead": 2, **args})
        if task == "downscale":
            return coarse().diffusion.downscale(G.model, **{"factor": 4, **args})
        raise AssertionError(task)

    return run


GEN_BAD = {
    "n": [("0", 0), ("neg", -1), ("float", 2.5), ("bool", True), ("str", "2"), ("nan", math.nan), ("none", None)],
    "steps": [("0", 0), ("neg", -1), ("float", 2.5), ("bool", True), ("str", "2"), ("huge", 10**30)],
    "seed": [("neg", -1), ("float", 2.5), ("bool", True), ("str", "0"), ("huge", 10**30), ("none", None)],
    "batch_size": [("0", 0), ("neg", -1), ("float", 2.5), ("bool", True), ("str", "1")],
    "sampler": [("unknown", "eulr"), ("int", 3)],
    "memory_budget": [("str", "abc"), ("neg", -1), ("0", 0), ("float", 2.5), ("bool", True), ("tiny", "1KB")],
    "progress": [("str", "yes"), ("int", 1)],
    "check_grid": [("str", "no"), ("int", 0)],
    "dims": [("string", "time"), ("unknown-key", {"Z": "y"}), ("missing-dim", {"T": "tim"})],
}  # fmt: skip
GEN_GOOD = {"n": 2, "steps": 2, "seed": 3, "batch_size": 1}
CONTEXT_BAD = [("float", 1.5), ("neg", -1), ("frames", 4), ("bool", True), ("str", "1"), ("huge", 10**9)]  # fmt: skip
WEIGHT_BAD = [("neg", -1.0), ("nan", math.nan), ("inf", math.inf), ("str", "1"), ("bool", True)]


def add_generation_cases() -> None:
    methods = ("sample", "interpolate", "forecast", "downscale")
    for method in methods:
        for arg, values in GEN_BAD.items():
            for label, value in values:
                tokens = (word(arg),)
                if arg == "memory_budget":
                    tokens = (word("memory_budget"),)
                case(
                    f"{method}-{arg}-{label}",
                    "generation_arguments",
                    gen_call(method, **{arg: value}),
                    tokens=tokens,
                )
        for arg, good in GEN_GOOD.items():
            case(
                f"{method}-{arg}-numpy",
                "generation_arguments",
                gen_call(method, **{arg: np.int64(good)}),
                expect="valid",
                check=ok_output,
            )
        if method != "downscale":
            for label, value in CONTEXT_BAD:
                case(
                    f"{method}-context-{label}",
                    "generation_arguments",
                    gen_call(method, context=value),
                    tokens=(word("context"),),
                )
            case(
                f"{method}-context-numpy",
                "generation_arguments",
                gen_call(method, context=np.int64(1)),
                expect="valid",
                check=ok_output,
            )
        if method != "sample":
            for label, value in WEIGHT_BAD:
                case(
                    f"{method}-guidance-weight-{label}",
                    "generation_arguments",
                    gen_call(method, guidance_weight=value),
                    tokens=("guidance_weight",),
                )
            case(
                f"{method}-guidance-weight-numpy",
                "generation_arguments",
                gen_call(method, guidance_weight=np.float32(1.5)),
                expect="valid",
                check=ok_output,
            )
        if method in ("interpolate", "forecast"):
            case(
                f"{method}-method-unknown",
                "generation_arguments",
                gen_call(method, method="inpaint"),
                tokens=(word("method"),),
            )
            case(  # None means the default method, "guidance"
                f"{method}-method-none",
                "generation_arguments",
                gen_call(method, method=None),
                expect="valid",
                check=lambda tmp, out: (
                    finite_output(out)
                    or (
                        None
                        if "method=guidance" in out.attrs.get("sampling", "")
                        else "not guidance"
                    )
                ),
            )
        case(
            f"{method}-model-string",
            "generation_arguments",
            lambda tmp, method=method: getattr(short().diffusion, method)(
                "model.nc", **({"lead": 2} if method == "forecast" else {})
            ),
            tokens=(word("model"),),
        )
    # forecast lead
    for label, value in [("0", 0), ("neg", -1), ("float", 2.5), ("bool", True), ("str", "2"), ("huge", 10**30)]:  # fmt: skip
        case(
            f"forecast-lead-{label}",
            "generation_arguments",
            gen_call("forecast", lead=value),
            tokens=(word("lead"),),
        )
    case(
        "forecast-lead-numpy",
        "generation_arguments",
        gen_call("forecast", lead=np.int64(3)),
        expect="valid",
        check=lambda tmp, out: finite_output(out, (1, 3, 16, 16)),
    )
    # downscale factor and like
    for label, value in [("0", 0), ("neg", -1), ("float", 4.0), ("bool", True), ("str", "4"), ("one", 1), ("mismatch", 2), ("huge", 10**9)]:  # fmt: skip
        case(
            f"downscale-factor-{label}",
            "generation_arguments",
            gen_call("downscale", factor=value),
            tokens=(word("factor"),),
        )
    case(
        "downscale-factor-numpy",
        "generation_arguments",
        gen_call("downscale", factor=np.int64(4)),
        expect="valid",
        check=ok_output,
    )

    def like_and_factor(tmp: Path) -> Any:
        return coarse().diffusion.downscale(G.model, factor=2, like=short(), **GEN)

    case(
        "downscale-factor-disagrees-with-like",
        "generation_arguments",
        like_and_factor,
        tokens=(word("factor"),),
    )

    def like_coords(tmp: Path, out: Any) -> str | None:
        problem = finite_output(out)
        if problem:
            return problem
        if not np.array_equal(out.x.values, short().x.values):
            return "output x differs from like's"
        return None

    case(
        "downscale-like",
        "generation_arguments",
        lambda tmp: coarse().diffusion.downscale(G.model, like=short(), **GEN),
        expect="valid",
        check=like_coords,
    )
    case(
        "downscale-no-factor",
        "generation_arguments",
        lambda tmp: coarse().diffusion.downscale(G.model, **GEN),
        tokens=(word("factor"), "like"),
    )
    case(
        "downscale-like-numpy",
        "generation_arguments",
        lambda tmp: coarse().diffusion.downscale(G.model, like=short().values, **GEN),
        tokens=(word("like"),),
    )

    def one_cell(tmp: Path) -> Any:
        c = short().coarsen(y=16, x=16).mean()
        return c.diffusion.downscale(G.model, factor=16, **GEN)

    case(
        "downscale-1x1-coarse",
        "generation_arguments",
        one_cell,
        expect="either",
        tokens=("coarse", "like", "cell", "coordinate"),
        check=lambda tmp, out: (
            finite_output(out)
            or (None if np.allclose(np.diff(out.x.values), 1) else f"fine x {out.x.values[:3]}")
        ),
    )

    def inf_coord(tmp: Path) -> Any:
        c = coarse()
        x = c.x.values.copy()
        x[-1] = np.inf
        return c.assign_coords(x=x).diffusion.downscale(G.model, factor=4, check_grid=False, **GEN)

    case(
        "downscale-inf-coordinate",
        "generation_arguments",
        inf_coord,
        tokens=(word("x"), "coordinate"),
    )

    def nan_coord(tmp: Path) -> Any:
        c = coarse()
        x = c.x.values.copy()
        x[1] = np.nan
        return c.assign_coords(x=x).diffusion.downscale(G.model, factor=4, check_grid=False, **GEN)

    case(
        "downscale-nan-coordinate",
        "generation_arguments",
        nan_coord,
        tokens=(word("x"), "coordinate"),
    )

    def uneven_coord(tmp: Path) -> Any:
        c = coarse()
        x = c.x.values.astype(float).copy()
        x[-1] = x[-1] + 7.3
        return c.assign_coords(x=x).diffusion.downscale(G.model, factor=4, check_grid=False, **GEN)

    case(
        "downscale-uneven-coordinate",
        "generation_arguments",
        uneven_coord,
        expect="either",
        tokens=(word("x"), "coordinate", "spacing", "regular"),
        check=ok_output,
    )

    def block_means(tmp: Path, out: Any) -> str | None:
        problem = finite_output(out)
        if problem:
            return problem
        c = coarse()
        back = out.isel(realization=0).coarsen(y=4, x=4).mean()
        if not np.allclose(back.values, c.values, rtol=1e-4, atol=1e-5):
            return "block means differ from the coarse values with project=True"
        return None

    case(
        "downscale-block-means-exact",
        "generation_arguments",
        lambda tmp: coarse().diffusion.downscale(G.model, factor=4, **GEN),
        expect="valid",
        check=block_means,
    )
    case(
        "downscale-nan-values",
        "generation_arguments",
        lambda tmp: with_nan(coarse(), [1]).diffusion.downscale(G.model, factor=4, **GEN),
        tokens=("coarse",),
    )
    case(
        "downscale-project-str",
        "generation_arguments",
        gen_call("downscale", project="yes"),
        tokens=("project",),
    )

    # interpolate results
    def interp_exact(dtype: Any) -> Callable[[Path], Any]:
        def run(tmp: Path) -> Any:
            data = gappy().astype(dtype)
            return data, data.diffusion.interpolate(G.model, **GEN)

        return run

    def exact(tmp: Path, res: Any) -> str | None:
        data, out = res
        da = out if isinstance(out, xr.DataArray) else out[data.name]
        if da.dtype != data.dtype:
            return f"dtype {da.dtype}, input {data.dtype}"
        obs = np.isfinite(data.values)
        got = da.isel(realization=0).values
        if not np.array_equal(got[obs], data.values[obs]):
            return "observed cells changed"
        if not np.isfinite(got).all():
            return "gaps not filled"
        return None

    for dtype in ("float32", "float64"):
        case(
            f"interpolate-{dtype}-observations-exact",
            "generation_arguments",
            interp_exact(np.dtype(dtype)),
            expect="valid",
            check=exact,
        )
    case(
        "interpolate-no-gaps",
        "generation_arguments",
        lambda tmp: short().diffusion.interpolate(G.model, **GEN),
        tokens=("missing", "NaN"),
    )
    case(
        "interpolate-all-nan",
        "generation_arguments",
        lambda tmp: (short() * np.nan).diffusion.interpolate(G.model, **GEN),
        tokens=("all NaN",),
    )
    case(
        "interpolate-negative",
        "generation_arguments",
        lambda tmp: (gappy() - 5).diffusion.interpolate(G.model, **GEN),
        tokens=("clip",),
    )
    case(
        "forecast-nan-context",
        "generation_arguments",
        lambda tmp: with_nan(short(), [6, 7]).diffusion.forecast(G.model, lead=2, **GEN),
        tokens=("context",),
    )
    case(
        "forecast-one-step",
        "generation_arguments",
        lambda tmp: short().isel(time=[0]).diffusion.forecast(G.model, lead=2, context=1, **GEN),
        tokens=("time step", "two"),
    )

    def forecast_times(tmp: Path, out: Any) -> str | None:
        problem = finite_output(out)
        if problem:
            return problem
        expected = short().time.values[-1] + np.arange(1, 4) * np.timedelta64(1, "h")
        if not np.array_equal(out.time.values, expected):
            return f"times {out.time.values} not {expected}"
        return None

    case(
        "forecast-gap-in-context",
        "generation_arguments",
        lambda tmp: (
            short().isel(time=[0, 1, 2, 3, 4, 5, 7]).diffusion.forecast(G.model, lead=2, **GEN)
        ),
        tokens=("time", "gap", "step", "regular"),
    )
    case(
        "forecast-times-continue",
        "generation_arguments",
        lambda tmp: short().diffusion.forecast(G.model, lead=3, **GEN),
        expect="valid",
        check=forecast_times,
    )
    case(
        "sample-template-numpy",
        "generation_arguments",
        lambda tmp: G.model.sample(short().values, **GEN),
        tokens=("template",),
    )
    case(
        "sample-other-grid",
        "generation_arguments",
        lambda tmp: short().assign_coords(x=short().x + 0.5).diffusion.sample(G.model, **GEN),
        tokens=("grid",),
    )
    case(
        "sample-other-units",
        "generation_arguments",
        lambda tmp: short().assign_attrs(units="K").diffusion.sample(G.model, **GEN),
        tokens=("units",),
    )

    def other_units_converted(tmp: Path) -> Any:
        t = short().assign_attrs(units="mm day-1")
        return t.diffusion.sample(G.model, **GEN)

    case(
        "sample-convertible-units",
        "generation_arguments",
        other_units_converted,
        expect="either",
        tokens=("units",),
        check=lambda tmp, out: (
            finite_output(out)
            or (None if out.attrs.get("units") == "mm day-1" else f"units {out.attrs.get('units')}")
        ),
    )
    case(
        "sample-missing-variable",
        "generation_arguments",
        lambda tmp: short().rename("tas").to_dataset().diffusion.sample(G.model, **GEN),
        tokens=("variable",),
    )
    case(
        "sample-reversed-y",
        "generation_arguments",
        lambda tmp: short().isel(y=slice(None, None, -1)).diffusion.sample(G.model, **GEN),
        expect="valid",
        check=lambda tmp, out: (
            finite_output(out)
            or (None if out.y.values[0] > out.y.values[-1] else "y order not kept")
        ),
    )
    case(
        "sample-sub-region",
        "generation_arguments",
        lambda tmp: short().isel(y=slice(4, 12), x=slice(2, 10)).diffusion.sample(G.model, **GEN),
        expect="valid",
        check=lambda tmp, out: finite_output(out, (1, 8, 8, 8)),
    )

    def batch_invariant(tmp: Path) -> Any:
        a = short().diffusion.sample(G.model, n=3, batch_size=1, **GEN)
        b = short().diffusion.sample(G.model, n=3, batch_size=3, **GEN)
        return bool(np.array_equal(a.values, b.values))

    case(
        "sample-batch-size-invariant",
        "generation_arguments",
        batch_invariant,
        expect="valid",
        check=lambda tmp, same: None if same else "batch_size changed the numbers",
    )

    def inputs_unchanged(tmp: Path) -> Any:
        data = gappy()
        before = data.copy(deep=True)
        data.diffusion.interpolate(G.model, **GEN)
        data.diffusion.forecast(G.model, lead=2, **GEN)
        c = coarse()
        cb = c.copy(deep=True)
        c.diffusion.downscale(G.model, factor=4, **GEN)
        return data.identical(before) and c.identical(cb)

    case(
        "generation-inputs-unchanged",
        "generation_arguments",
        inputs_unchanged,
        expect="valid",
        check=lambda tmp, same: None if same else "an input was modified",
    )
    # nll
    nll_bad = [
        ("n-lambda-0", {"n_lambda": 0}, ("n_lambda",)),
        ("n-lambda-float", {"n_lambda": 2.5}, ("n_lambda",)),
        ("batch-size-0", {"batch_size": 0}, ("batch_size",)),
        ("seed-neg", {"seed": -1}, ("seed",)),
        ("lambda-rec-nan", {"lambda_rec": math.nan}, ("lambda_rec",)),
        ("dry-threshold-str", {"dry_threshold": "dry"}, ("dry_threshold",)),
        ("dry-threshold-nan", {"dry_threshold": math.nan}, ("dry_threshold",)),
        ("terms-str", {"terms": "yes"}, ("terms",)),
    ]
    for label, kw, tokens in nll_bad:
        case(
            f"nll-{label}",
            "generation_arguments",
            lambda tmp, kw=kw: G.model.nll(short(), **{"n_lambda": 2, **kw}),
            tokens=tokens,
        )
    case(
        "nll-too-short",
        "generation_arguments",
        lambda tmp: G.model.nll(short().isel(time=slice(0, 2)), n_lambda=2),
        tokens=("frames", "time"),
    )
    case(
        "nll-valid",
        "generation_arguments",
        lambda tmp: G.model.nll(short(), n_lambda=2, terms=False),
        expect="valid",
        check=lambda tmp, v: None if isinstance(v, float) and math.isfinite(v) else f"nll {v!r}",
    )


# ==================================================================== model files
def copy_model(tmp: Path) -> None:
    shutil.copytree(G.model_dir, tmp / "m")


def edit_config(edit: Callable[[dict], Any]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        copy_model(tmp)
        f = tmp / "m" / "config.json"
        config = json.loads(f.read_text())
        edit(config)
        f.write_text(json.dumps(config))

    return setup


def setter(*path: Any, value: Any) -> Callable[[dict], None]:
    def edit(config: dict) -> None:
        d = config
        for k in path[:-1]:
            d = d[k]
        if value is DELETE:
            del d[path[-1]]
        else:
            d[path[-1]] = value

    return edit


DELETE = object()


def rehash(tmp: Path, name: str) -> None:
    f = tmp / "m" / "config.json"
    config = json.loads(f.read_text())
    config["files"][name] = hashlib.sha256((tmp / "m" / name).read_bytes()).hexdigest()
    f.write_text(json.dumps(config))


def load_m(tmp: Path) -> Any:
    return xd.load(tmp / "m")


def add_model_file_cases() -> None:
    config_edits = [
        ("frames-0", setter("frames", value=0), ("frames",)),
        ("frames-str", setter("frames", value="4"), ("frames",)),
        ("frames-float", setter("frames", value=4.5), ("frames",)),
        ("frames-missing", setter("frames", value=DELETE), ("frames",)),
        ("grid-zero", setter("grid", value=[0, 16]), ("grid",)),
        ("grid-one-number", setter("grid", value=[16]), ("grid",)),
        ("grid-string", setter("grid", value="16x16"), ("grid",)),
        ("grid-wrong-size", setter("grid", value=[8, 8]), ("grid", "valid")),
        ("variables-empty", setter("variables", value=[]), ("variables",)),
        ("variables-string", setter("variables", value="pr"), ("variables",)),
        ("variable-no-codec", lambda c: c["variables"][0].pop("codec"), ("codec",)),
        ("variable-codec-garbage", setter("variables", 0, "codec", value={"x": 1}), ("codec", "variables", "configuration")),
        ("variables-duplicate", lambda c: c["variables"].append(dict(c["variables"][0])), ("variable",)),
        ("schedule-empty", setter("schedule", value={}), ("schedule",)),
        ("schedule-linear", setter("schedule", "kind", value="linear"), ("schedule",)),
        ("schedule-str-bound", setter("schedule", "lambda_min", value="a"), ("schedule",)),
        ("schedule-reversed", lambda c: c["schedule"].update(lambda_min=30.0, lambda_max=-30.0), ("schedule",)),
        ("schedule-nan", setter("schedule", "lambda_min", value=math.nan), ("schedule",)),
        ("sampling-sampler", setter("sampling", value={"sampler": "x", "steps": None}), ("sampl",)),
        ("sampling-steps-0", setter("sampling", value={"sampler": None, "steps": 0}), ("steps",)),
        ("sampling-string", setter("sampling", value="fast"), ("sampling",)),
        ("time-features-unknown", setter("time_features", value=["moon"]), ("time_features",)),
        ("net-string", setter("net", value="x"), (word("net"),)),
        ("net-unknown-key", setter("net", "widht", value=8), (word("net"), "widht")),
        ("net-width-4096", setter("net", "width", value=4096), ("shape", "fit", "width")),
        ("net-width-neg", setter("net", "width", value=-8), ("width", word("net"))),
        ("net-channels", setter("net", "channels", value=3), ("channels",)),
        ("net-mults-longer", setter("net", "mults", value=[1, 2, 2]), ("tensors", "shape", word("net"))),
        ("schema-99", setter("schema_version", value=99), ("schema_version",)),
        ("schema-str", setter("schema_version", value="2"), ("schema_version",)),
        ("schema-bool", setter("schema_version", value=True), ("schema_version",)),
        ("schema-missing", setter("schema_version", value=DELETE), ("schema_version",)),
        ("files-missing", setter("files", value=DELETE), ("files",)),
        ("files-empty", setter("files", value={}), ("weight files",)),
        ("files-list", setter("files", value=["ema.safetensors"]), ("weight files", "files")),
        ("files-parent-escape", lambda c: c["files"].update({"../../x": "0" * 64}), ("../../x",)),
        ("files-absolute", lambda c: c["files"].update({"/etc/passwd": "0" * 64}), ("/etc/passwd",)),
        ("files-config-itself", lambda c: c["files"].update({"config.json": "0" * 64}), ("config.json",)),
        ("files-unknown-weights", lambda c: c["files"].update({"extra.safetensors": "0" * 64}), ("extra.safetensors",)),
        ("files-bad-digest", lambda c: c["files"].update({k: "xyz" for k in c["files"]}), ("SHA-256",)),
        ("files-null-name", lambda c: c["files"].update({"a\u0000b": "0" * 64}), ("weight file name",)),
        ("data-garbage", setter("data", value="x"), ("data",)),
        ("training-garbage", setter("training", value=3), ("training",)),
    ]  # fmt: skip
    for label, edit, tokens in config_edits:
        expect = "either" if label in ("data-garbage", "training-garbage") else "error"
        case(
            f"load-config-{label}",
            "model_files",
            load_m,
            setup=edit_config(edit),
            expect=expect,
            tokens=tokens,
            check=lambda tmp, m: finite_model(m),
            timeout=30.0,
        )

    def write(name: str, data: bytes | str) -> Callable[[Path], None]:
        def setup(tmp: Path) -> None:
            copy_model(tmp)
            p = tmp / "m" / name
            p.write_bytes(data if isinstance(data, bytes) else data.encode())

        return setup

    file_cases = [
        ("config-not-json", write("config.json", "{not json"), ("config.json", "JSON")),
        ("config-list", write("config.json", "[1, 2]"), ("config.json", "object")),
        ("config-binary", write("config.json", b"\xff\xfe\x00garbage"), ("config.json", "JSON")),
        ("config-empty", write("config.json", b""), ("config.json", "JSON")),
        ("weights-truncated", lambda tmp: (copy_model(tmp), _truncate(tmp / "m" / "ema.safetensors")), ("ema.safetensors",)),
        ("weights-bit-flip", lambda tmp: (copy_model(tmp), _flip(tmp / "m" / "ema.safetensors")), ("ema.safetensors",)),
        ("weights-garbage-rehashed", lambda tmp: (write("ema.safetensors", b"garbage" * 10)(tmp), rehash(tmp, "ema.safetensors")), ("ema.safetensors",)),
        ("weights-missing", lambda tmp: (copy_model(tmp), (tmp / "m" / "ema.safetensors").unlink()), ("ema.safetensors",)),
        ("weights-directory", lambda tmp: (copy_model(tmp), (tmp / "m" / "ema.safetensors").unlink(), (tmp / "m" / "ema.safetensors").mkdir()), ("ema.safetensors",)),
        ("weights-symlink-outside", _symlink_weights, ("symbolic link", "ema.safetensors")),
        ("weights-swapped-raw-ema-rehashed", _swap_raw_with_other_model, ("shape", "fit", "weights")),
        ("weights-other-width-rehashed", _other_width_weights, ("shape", "fit", "ema.safetensors")),
        ("valid-mask-wrong-shape", _valid_mask_shape, ("valid",)),
        ("config-is-directory", lambda tmp: (copy_model(tmp), (tmp / "m" / "config.json").unlink(), (tmp / "m" / "config.json").mkdir()), ("config.json",)),
    ]  # fmt: skip
    for label, setup, tokens in file_cases:
        case(
            f"load-{label}",
            "model_files",
            load_m,
            setup=setup,
            tokens=tokens,
            timeout=30.0,
        )

    def leak(tmp: Path) -> Any:
        """Refusals of names outside the directory must not tell whether the file exists."""
        messages = []
        for target in ("../../exists.bin", "../../missing.bin"):
            d = tmp / target.strip("./").split(".")[0]
            shutil.copytree(G.model_dir, d)
            (tmp / "exists.bin").write_bytes(b"secret")
            f = d / "config.json"
            config = json.loads(f.read_text())
            config["files"][target] = hashlib.sha256(b"secret").hexdigest()
            f.write_text(json.dumps(config))
            try:
                xd.load(d)
            except ValueError as err:
                messages.append(str(err).replace(target, "NAME").replace(str(d), "DIR"))
            else:
                messages.append("loaded")
        return messages

    case(
        "load-outside-name-leaks-nothing",
        "model_files",
        leak,
        expect="valid",
        check=lambda tmp, msgs: (
            None
            if msgs[0] == msgs[1] and msgs[0] != "loaded"
            else f"messages differ or loaded: {msgs}"
        ),
    )
    case(
        "load-config-symlink-outside",
        "model_files",
        load_m,
        setup=_symlink_config,
        expect="either",
        tokens=("config.json", "symbolic link"),
        check=lambda tmp, m: finite_model(m),
    )
    path_cases = [
        ("int", lambda tmp: xd.load(3), ("path",)),
        ("empty", lambda tmp: xd.load(""), ("path", "empty")),
        ("bytes", lambda tmp: xd.load(b"/tmp/m"), ("path", "bytes")),
        ("missing", lambda tmp: xd.load(tmp / "nope"), ("nope", "config.json")),
        ("a-file", lambda tmp: (tmp.joinpath("f").write_text("x"), xd.load(tmp / "f"))[1], ("config.json", str)),
        ("unknown-scheme", lambda tmp: xd.load("foo://bucket/m"), ("foo",)),
        ("s3-no-package", lambda tmp: xd.load("s3://bucket/m"), ("s3",)),
        ("file-url-host", lambda tmp: xd.load("file://host/m"), ("host", "file://")),
        ("memory-missing", lambda tmp: xd.load("memory://nothing-here"), ("config.json", "memory")),
        ("device-unknown", lambda tmp: xd.load(G.model_dir, device="gpu0"), ("device",)),
        ("device-int", lambda tmp: xd.load(G.model_dir, device=3), ("device",)),
        ("device-missing-cuda", lambda tmp: xd.load(G.model_dir, device="cuda:99"), ("device", "cuda")),
    ]  # fmt: skip
    for label, run, tokens in path_cases:
        tokens = tuple(t for t in tokens if isinstance(t, str))
        case(f"load-path-{label}", "model_files", run, tokens=tokens)

    def interrupted(tmp: Path) -> Any:
        copy_model(tmp)
        os.rename(tmp / "m", tmp / ".m.old-abcdefgh")
        return xd.load(tmp / "m")

    case(
        "load-after-interrupted-swap-hints",
        "model_files",
        interrupted,
        tokens=(r"\.m\.old-abcdefgh",),
    )

    # what loads must be right
    def roundtrip(tmp: Path) -> Any:
        G.model.save(tmp / "m")
        m = xd.load(tmp / "m")
        a = short().diffusion.sample(G.model, **GEN)
        b = short().diffusion.sample(m, **GEN)
        return bool(np.array_equal(a.values, b.values)) and same_weights(G.model, m)

    case(
        "load-roundtrip-identical",
        "model_files",
        roundtrip,
        expect="valid",
        check=lambda tmp, same: None if same else "the loaded model samples differently",
    )

    def no_raw(tmp: Path) -> Any:
        copy_model(tmp)
        f = tmp / "m" / "config.json"
        config = json.loads(f.read_text())
        config["files"].pop("weights.safetensors", None)
        (tmp / "m" / "weights.safetensors").unlink(missing_ok=True)
        f.write_text(json.dumps(config))
        return xd.load(tmp / "m")

    case(
        "load-without-raw-weights",
        "model_files",
        no_raw,
        expect="valid",
        check=ok_model,
    )

    def umask_mode(mask: int) -> Callable[[Path], Any]:
        def run(tmp: Path) -> Any:
            old = os.umask(mask)
            try:
                G.model.save(tmp / "m")
            finally:
                os.umask(old)
            modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp / "m").iterdir()}
            modes["."] = (tmp / "m").stat().st_mode & 0o777
            return modes

        return run

    for mask in (0o022, 0o077, 0o002):

        def check(tmp: Path, modes: dict, mask: int = mask) -> str | None:
            for name, mode in modes.items():
                want = (0o777 if name == "." else 0o666) & ~mask
                if mode != want:
                    return f"{name} has mode {oct(mode)}, umask {oct(mask)} gives {oct(want)}"
            return None

        case(
            f"save-honours-umask-{mask:03o}",
            "model_files",
            umask_mode(mask),
            expect="valid",
            check=check,
        )

    def load_is_fast(tmp: Path) -> Any:
        edit_config(setter("net", "width", value=4096))(tmp)
        t0 = time.perf_counter()
        try:
            xd.load(tmp / "m")
        except ValueError:
            pass
        return time.perf_counter() - t0

    case(
        "load-width-4096-refused-fast",
        "resources",
        load_is_fast,
        expect="valid",
        check=lambda tmp, s: None if s < 2.0 else f"took {s:.1f} s",
    )


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _flip(p: Path) -> None:
    b = bytearray(p.read_bytes())
    b[-10] ^= 0xFF
    p.write_bytes(bytes(b))


def _symlink_weights(tmp: Path) -> None:
    copy_model(tmp)
    outside = tmp / "outside.safetensors"
    shutil.move(tmp / "m" / "ema.safetensors", outside)
    os.symlink(outside, tmp / "m" / "ema.safetensors")


def _symlink_config(tmp: Path) -> None:
    copy_model(tmp)
    outside = tmp / "outside.json"
    shutil.move(tmp / "m" / "config.json", outside)
    os.symlink(outside, tmp / "m" / "config.json")


def _swap_raw_with_other_model(tmp: Path) -> None:
    copy_model(tmp)
    other = fit(net={"width": 16, "mults": [1, 2]})
    other.save(tmp / "other")
    shutil.copy(tmp / "other" / "weights.safetensors", tmp / "m" / "weights.safetensors")
    rehash(tmp, "weights.safetensors")


def _other_width_weights(tmp: Path) -> None:
    copy_model(tmp)
    other = fit(net={"width": 16, "mults": [1, 2]})
    other.save(tmp / "other")
    for name in ("ema.safetensors", "weights.safetensors"):
        shutil.copy(tmp / "other" / name, tmp / "m" / name)
        rehash(tmp, name)


def _valid_mask_shape(tmp: Path) -> None:
    from safetensors.torch import load_file, save_file

    copy_model(tmp)
    f = tmp / "m" / "ema.safetensors"
    tensors = load_file(f)
    key = next(k for k in tensors if "valid" in k)
    tensors[key] = tensors[key][:, :8]
    save_file(tensors, str(f))
    rehash(tmp, "ema.safetensors")


# ==================================================================== data loss (saves)
def add_save_cases() -> None:
    def loads_as(expected: Any) -> Callable[[Path, Any], str | None]:
        def check(tmp: Path, out: Any) -> str | None:
            try:
                m = xd.load(tmp / "m")
            except Exception as err:
                return f"saved model does not load: {err}"
            return None if same_weights(m, expected) else "the saved model is not the new one"

        return check

    case(
        "save-over-existing-model",
        "data_loss",
        lambda tmp: G.model2.save(tmp / "m"),
        setup=copy_model,
        expect="valid",
        check=loads_as(G.model2),
        failure="data_loss",
    )

    def project(tmp: Path) -> None:
        (tmp / "m").mkdir()
        (tmp / "m" / "config.json").write_text('{"my": "project"}')
        (tmp / "m" / "notes.txt").write_text("keep me")

    case(
        "save-into-project-dir",
        "data_loss",
        lambda tmp: G.model.save(tmp / "m"),
        setup=project,
        tokens=("overwrite",),
        protect=("m",),
    )
    case(
        "save-into-project-dir-overwrite",
        "data_loss",
        lambda tmp: G.model.save(tmp / "m", overwrite=True),
        setup=project,
        expect="valid",
        check=loads_as(G.model),
    )

    def in_cwd(run: Callable[[Path], Any]) -> Callable[[Path], Any]:
        def wrapped(tmp: Path) -> Any:
            os.chdir(tmp / "cwd")
            return run(tmp)

        return wrapped

    def make_cwd(tmp: Path) -> None:
        (tmp / "cwd").mkdir()
        (tmp / "cwd" / "mine.txt").write_text("mine")

    def cwd_untouched(tmp: Path, out: Any) -> str | None:
        names = sorted(p.name for p in (tmp / "cwd").iterdir())
        return None if names == ["mine.txt"] else f"the working directory now holds {names}"

    case(
        "save-empty-path",
        "data_loss",
        in_cwd(lambda tmp: G.model.save("")),
        setup=make_cwd,
        tokens=("path", "empty"),
        protect=("cwd/mine.txt",),
    )
    case(
        "save-dot",
        "data_loss",
        in_cwd(lambda tmp: G.model.save(".")),
        setup=make_cwd,
        tokens=("overwrite", "not an xdiffusion model"),
        protect=("cwd",),
    )
    for label, url in (("s3", "s3://bucket/m"), ("gcs", "gs://bucket/m"), ("unknown", "foo://x/m")):
        case(
            f"save-url-{label}",
            "data_loss",
            in_cwd(lambda tmp, url=url: G.model.save(url)),
            setup=make_cwd,
            tokens=(re.escape(url.split(":")[0]),),
            check=cwd_untouched,
            protect=("cwd",),
        )

    def memory_roundtrip(tmp: Path) -> Any:
        os.chdir(tmp)
        G.model.save("memory://adv/m")
        m = xd.load("memory://adv/m")
        return same_weights(m, G.model) and not any(
            p.name.startswith("memory") for p in tmp.iterdir()
        )

    case(
        "save-memory-url-roundtrip",
        "data_loss",
        memory_roundtrip,
        expect="valid",
        check=lambda tmp, ok: None if ok else "memory:// save/load wrong or a local folder",
    )

    def file_url(tmp: Path) -> Any:
        G.model.save(f"file://{tmp}/m")
        return xd.load(tmp / "m")

    case("save-file-url", "data_loss", file_url, expect="valid", check=ok_model)

    def tilde(tmp: Path) -> Any:
        os.environ["HOME"] = str(tmp / "home")
        (tmp / "home").mkdir()
        (tmp / "cwd").mkdir()
        os.chdir(tmp / "cwd")
        G.model.save("~/m")
        return xd.load("~/m")

    def tilde_check(tmp: Path, m: Any) -> str | None:
        if list((tmp / "cwd").iterdir()):
            return "a local folder '~' was created"
        return None if (tmp / "home" / "m" / "config.json").exists() else "not saved in $HOME"

    case("save-tilde", "data_loss", tilde, expect="valid", check=tilde_check)

    def existing_file(tmp: Path) -> None:
        (tmp / "m").write_text("my file")

    case(
        "save-over-a-file",
        "data_loss",
        lambda tmp: G.model.save(tmp / "m"),
        setup=existing_file,
        tokens=("not a directory",),
        protect=("m",),
    )
    case(
        "save-under-a-file",
        "data_loss",
        lambda tmp: G.model.save(tmp / "m" / "x"),
        setup=existing_file,
        tokens=(r"/m\b", "not a directory"),
        protect=("m",),
    )
    case(
        "save-overwrite-str",
        "data_loss",
        lambda tmp: G.model.save(tmp / "m", overwrite="yes"),
        setup=copy_model,
        tokens=("overwrite",),
        loadable=("m",),
        protect=("m",),
    )
    case(
        "save-path-int",
        "data_loss",
        lambda tmp: G.model.save(3),
        tokens=("path",),
    )
    case(
        "save-root",
        "data_loss",
        lambda tmp: G.model.save("/"),
        tokens=("root", "overwrite", "not an xdiffusion model"),
    )

    def symlinked(tmp: Path) -> None:
        copy_model(tmp)
        os.symlink(tmp / "m", tmp / "link")

    def link_kept(tmp: Path, out: Any) -> str | None:
        if not (tmp / "link").is_symlink():
            return "the symbolic link was replaced"
        m = xd.load(tmp / "link")
        return None if same_weights(m, G.model2) else "the link does not show the new model"

    case(
        "save-through-symlink",
        "data_loss",
        lambda tmp: G.model2.save(tmp / "link"),
        setup=symlinked,
        expect="valid",
        check=link_kept,
        failure="data_loss",
        loadable=("m",),
    )

    def stale(tmp: Path) -> None:
        copy_model(tmp)
        (tmp / ".m.saving-abcd1234").mkdir()
        (tmp / ".m.saving-abcd1234" / "junk").write_text("x")

    case(
        "save-with-stale-temporary",
        "data_loss",
        lambda tmp: G.model2.save(tmp / "m"),
        setup=stale,
        expect="valid",
        check=loads_as(G.model2),
        failure="data_loss",
    )

    def enospc_config(tmp: Path) -> Any:
        from xdiffusion import persistence

        real = Path.write_text

        def full(self, *a, **k):
            if self.name == "config.json":
                raise OSError(errno.ENOSPC, "No space left on device", str(self))
            return real(self, *a, **k)

        Path.write_text = full  # type: ignore[method-assign]
        try:
            G.model2.save(tmp / "m")
        finally:
            Path.write_text = real  # type: ignore[method-assign]
        del persistence

    case(
        "save-enospc-on-config",
        "data_loss",
        enospc_config,
        setup=copy_model,
        injected=True,
        tokens=("space", "config.json"),
        loadable=("m",),
        protect=("m",),
    )

    def enospc_weights(tmp: Path) -> Any:
        from xdiffusion import persistence

        real = persistence.save_file

        def half(tensors, filename, *a, **k):
            real(tensors, filename, *a, **k)
            _truncate(Path(filename))
            raise OSError(errno.ENOSPC, "No space left on device", filename)

        persistence.save_file = half
        try:
            G.model2.save(tmp / "m")
        finally:
            persistence.save_file = real

    case(
        "save-enospc-on-weights",
        "data_loss",
        enospc_weights,
        setup=copy_model,
        injected=True,
        tokens=("space", "safetensors"),
        loadable=("m",),
        protect=("m",),
    )

    def kill_during_save(tmp: Path) -> Any:
        """SIGKILL a process saving over the model at random instants, 12 times."""
        rng = random.Random(0)
        problems = []
        for i in range(12):
            pid = os.fork()
            if pid == 0:
                try:
                    for _ in range(50):
                        (G.model2 if i % 2 else G.model).save(tmp / "m")
                finally:
                    os._exit(0)
            time.sleep(rng.uniform(0.0, 0.15))
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            problem = loads(tmp / "m")
            if problem:
                problems.append(f"kill {i}: {problem}")
        return problems

    case(
        "save-sigkill-repeated",
        "data_loss",
        kill_during_save,
        setup=copy_model,
        expect="valid",
        check=lambda tmp, problems: "; ".join(problems) or None,
        failure="data_loss",
        timeout=120.0,
    )

    def concurrent(tmp: Path) -> Any:
        pids = []
        for model in (G.model, G.model2, G.model, G.model2):
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    for _ in range(4):
                        model.save(tmp / "m")
                except BaseException:
                    code = 1
                os._exit(code)
            pids.append(pid)
        codes = [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids]
        m = xd.load(tmp / "m")
        return codes, same_weights(m, G.model) or same_weights(m, G.model2)

    case(
        "save-concurrent-writers",
        "data_loss",
        concurrent,
        setup=copy_model,
        expect="valid",
        check=lambda tmp, r: None if r[1] and not any(r[0]) else f"exit codes {r[0]}, ok={r[1]}",
        failure="data_loss",
        timeout=120.0,
    )

    def cli_out_is_model(tmp: Path) -> Any:
        copy_model(tmp)
        return run_cli(tmp, ["fit", str(G.nc), "--out", str(tmp / "m"), "--net", "width=8,mults=1-2", "--steps", "2", "--frames", "4", "--quiet"])  # fmt: skip

    case(
        "cli-fit-out-existing-model",
        "data_loss",
        cli_out_is_model,
        tokens=("--overwrite",),
        loadable=("m",),
    )

    def cli_sample_out_model(tmp: Path) -> Any:
        copy_model(tmp)
        return run_cli(tmp, ["sample", str(tmp / "m"), "--like", str(G.nc_short), "--n", "1", "--steps", "2", "--out", str(tmp / "m" / "config.json")])  # fmt: skip

    case(
        "cli-sample-out-inside-model",
        "data_loss",
        cli_sample_out_model,
        tokens=("--out",),
        loadable=("m",),
    )

    def copy_input(tmp: Path) -> None:
        shutil.copy(G.nc_gappy, tmp / "in.nc")

    def cli_out_input(tmp: Path) -> Any:
        return run_cli(tmp, ["interpolate", str(G.model_dir), str(tmp / "in.nc"), "--n", "1", "--steps", "2", "--out", str(tmp / "in.nc")])  # fmt: skip

    case(
        "cli-interpolate-out-is-input-copy",
        "data_loss",
        cli_out_input,
        setup=copy_input,
        tokens=("--out",),
        protect=("in.nc",),
    )

    def link_input(tmp: Path) -> None:
        copy_input(tmp)
        os.symlink(tmp / "in.nc", tmp / "out.nc")

    def cli_out_symlink_to_input(tmp: Path) -> Any:
        return run_cli(tmp, ["interpolate", str(G.model_dir), str(tmp / "in.nc"), "--n", "1", "--steps", "2", "--out", str(tmp / "out.nc")])  # fmt: skip

    case(
        "cli-interpolate-out-symlink-to-input",
        "data_loss",
        cli_out_symlink_to_input,
        setup=link_input,
        tokens=("--out",),
        protect=("in.nc",),
    )

    def cli_overwrite_netcdf(tmp: Path) -> Any:
        (tmp / "old.nc").write_text("previous result")
        return run_cli(tmp, ["sample", str(G.model_dir), "--like", str(G.nc_short), "--n", "1", "--steps", "2", "--quiet", "--out", str(tmp / "old.nc")])  # fmt: skip

    def replaced_ok(tmp: Path, r: CliResult) -> str | None:
        if r.code != 0:
            return f"exit {r.code}: {r.err[-300:]}"
        try:
            xr.open_dataset(tmp / "old.nc").close()
        except Exception as err:
            return f"output unreadable: {err}"
        return None

    case(
        "cli-sample-out-existing-netcdf",
        "data_loss",
        cli_overwrite_netcdf,
        expect="either",
        tokens=("--out",),
        check=replaced_ok,
    )

    def make_project(tmp: Path) -> None:
        (tmp / "proj").mkdir()
        (tmp / "proj" / "data.txt").write_text("mine")

    def checkpoint_in_project(tmp: Path) -> Any:
        return fit(checkpoint_dir=tmp / "proj", keep_checkpoints=1)

    case(
        "fit-checkpoint-dir-with-other-files",
        "data_loss",
        checkpoint_in_project,
        setup=make_project,
        expect="valid",
        check=ok_model,
        protect=("proj/data.txt",),
    )


# ==================================================================== command line
def run_cli(tmp: Path, argv: list[str]) -> CliResult:
    """``xdiffusion.cli.main(argv)`` with stdout and stderr captured (in the child)."""
    from xdiffusion import cli

    out_f, err_f = tmp / ".stdout", tmp / ".stderr"
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(out_f, "w") as o, open(err_f, "w") as e:
        os.dup2(o.fileno(), 1)
        os.dup2(e.fileno(), 2)
        code = 0
        try:
            code = cli.main(argv) or 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
    return CliResult(int(code), out_f.read_text(), err_f.read_text())


def cli_case(
    name: str,
    argv: list[str] | Callable[[Path], list[str]],
    tokens: tuple[str, ...],
    *,
    expect: str = "error",
    check: Callable[[Path, Any], str | None] | None = None,
    setup: Callable[[Path], None] | None = None,
    protect: tuple[str, ...] = (),
    timeout: float = 60.0,
    category: str = "cli",
) -> None:
    def run(tmp: Path) -> CliResult:
        os.chdir(tmp)
        args = argv(tmp) if callable(argv) else argv
        return run_cli(tmp, [str(a) for a in args])

    case(
        name,
        category,
        run,
        expect=expect,
        tokens=tokens,
        check=check,
        setup=setup,
        protect=protect,
        timeout=timeout,
    )


def cli_ok(tmp: Path, r: CliResult) -> str | None:
    return None if r.code == 0 else f"exit {r.code}: {r.err.strip()[-400:]}"


def add_cli_cases() -> None:
    model, nc, short_nc, gap, co, fine = (
        str(G.model_dir),
        str(G.nc),
        str(G.nc_short),
        str(G.nc_gappy),
        str(G.nc_coarse),
        str(G.nc_fine),
    )
    fitbase = ["fit", nc, "--net", "width=8,mults=1-2", "--frames", "4", "--steps", "2", "--batch-size", "2", "--quiet"]  # fmt: skip
    commands = {
        "sample": ["sample", model, "--like", short_nc, "--steps", "2", "--quiet"],
        "interpolate": ["interpolate", model, gap, "--steps", "2", "--quiet"],
        "forecast": ["forecast", model, short_nc, "--lead", "2", "--steps", "2", "--quiet"],
        "downscale": ["downscale", model, co, "--factor", "4", "--steps", "2", "--quiet"],
    }
    gen_bad = [
        ("n-0", ["--n", "0"], ("n",)),
        ("n-neg", ["--n", "-1"], ("n",)),
        ("n-word", ["--n", "abc"], ("--n",)),
        ("n-huge", ["--n", "1000000000"], ("n", "--memory-budget", "memory_budget")),
        ("steps-0", ["--steps", "0"], ("steps",)),
        ("steps-word", ["--steps", "x"], ("--steps",)),
        ("steps-huge", ["--steps", str(10**30)], ("steps",)),
        ("seed-neg", ["--seed", "-1"], ("seed",)),
        ("seed-huge", ["--seed", str(10**30)], ("seed",)),
        ("batch-size-0", ["--batch-size", "0"], ("batch_size", "--batch-size")),
        ("memory-budget-word", ["--memory-budget", "lots"], ("memory_budget", "--memory-budget")),
        ("memory-budget-tiny", ["--memory-budget", "1KB"], ("memory_budget", "--memory-budget")),
        ("memory-budget-neg", ["--memory-budget", "-5"], ("memory_budget", "--memory-budget")),
        ("chunks-0", ["--chunks", "0"], ("chunks", "--chunks")),
        ("chunks-neg", ["--chunks", "-3"], ("chunks", "--chunks")),
        ("dims-word", ["--dims", "time"], ("--dims",)),
        ("dims-unknown-key", ["--dims", "Z=y"], ("--dims",)),
        ("dims-missing-dim", ["--dims", "T=tim"], ("tim",)),
        ("dims-json-bad", ["--dims", "{"], ("--dims",)),
        ("var-missing", ["--var", "tas"], ("--var", "tas")),
        ("var-empty", ["--var", ","], ("--var",)),
        ("sampler-unknown", ["--sampler", "eulr"], ("--sampler",)),
        ("device-unknown", ["--device", "gpu0"], ("device",)),
        ("scheduler-local-0", ["--chunks", "4", "--scheduler", "local:0"], ("--scheduler",)),
        ("out-empty", ["--out", ""], ("--out",)),
        ("out-dir-for-netcdf", lambda tmp: ["--out", str(tmp)], ("--out",)),
        ("out-under-a-file", lambda tmp: ["--out", str(G.nc) + "/x.nc"], ("--out",)),
        ("out-zarr-existing-file", lambda tmp: (tmp.joinpath("o.zarr").write_text("x"), ["--out", str(tmp / "o.zarr")])[1], ("o.zarr", "--out")),
        ("out-zarr-foreign-dir", lambda tmp: ((tmp / "o.zarr").mkdir(), ["--out", str(tmp / "o.zarr")])[1], ("o.zarr", "--out")),
        ("unknown-option", ["--frobnicate"], ("--frobnicate",)),
    ]  # fmt: skip
    for cmd, base in commands.items():
        for label, extra, tokens in gen_bad:

            def argv(tmp, base=base, extra=extra):
                more = extra(tmp) if callable(extra) else extra
                out = [] if "--out" in more else ["--out", str(tmp / "o.nc")]
                return [*base, *out, *more]

            cli_case(f"cli-{cmd}-{label}", argv, tokens)
        cli_case(
            f"cli-{cmd}-valid",
            lambda tmp, base=base: [*base, "--n", "2", "--out", str(tmp / "o.nc")],
            (),
            expect="valid",
            check=cli_ok,
        )
        cli_case(
            f"cli-{cmd}-model-missing",
            lambda tmp, base=base: [base[0], str(tmp / "nomodel"), *base[2:], "--out", str(tmp / "o.nc")],
            ("nomodel",),
        )  # fmt: skip
        cli_case(
            f"cli-{cmd}-model-corrupt",
            lambda tmp, base=base: [base[0], str(tmp / "m"), *base[2:], "--out", str(tmp / "o.nc")],
            ("config.json", "JSON"),
            setup=lambda tmp: (copy_model(tmp), (tmp / "m" / "config.json").write_text("{")),
        )
        data_pos = 2 if cmd != "sample" else 3
        cli_case(
            f"cli-{cmd}-data-missing",
            lambda tmp, base=base, i=data_pos: [*base[:i], str(tmp / "none.nc"), *base[i + 1 :], "--out", str(tmp / "o.nc")],
            ("none.nc",),
        )  # fmt: skip
        cli_case(
            f"cli-{cmd}-data-garbage",
            lambda tmp, base=base, i=data_pos: [*base[:i], str(G.nc_garbage), *base[i + 1 :], "--out", str(tmp / "o.nc")],
            ("garbage.nc",),
        )  # fmt: skip
        cli_case(
            f"cli-{cmd}-out-is-input",
            lambda tmp, base=base, i=data_pos: [*base[:i], str(tmp / "in.nc"), *base[i + 1 :], "--out", str(tmp / "in.nc")],
            ("--out",),
            setup=lambda tmp, i=data_pos, base=base: shutil.copy(base[i], tmp / "in.nc"),
            protect=("in.nc",),
        )  # fmt: skip
    # command-specific
    cli_case("cli-forecast-lead-0", [*commands["forecast"], "--lead", "0", "--out", "o.nc"], ("lead",))  # fmt: skip
    cli_case("cli-forecast-lead-word", [*commands["forecast"], "--lead", "two", "--out", "o.nc"], ("--lead",))  # fmt: skip
    cli_case("cli-forecast-lead-huge", [*commands["forecast"], "--lead", "10000000", "--out", "o.nc"], ("lead", "memory_budget", "--memory-budget"))  # fmt: skip
    cli_case("cli-forecast-context-0", [*commands["forecast"], "--context", "0", "--out", "o.nc"], ("context",))  # fmt: skip
    cli_case("cli-forecast-context-frames", [*commands["forecast"], "--context", "4", "--out", "o.nc"], ("context",))  # fmt: skip
    cli_case("cli-forecast-no-lead", ["forecast", model, short_nc, "--out", "o.nc"], ("--lead",))  # fmt: skip
    cli_case("cli-downscale-factor-0", ["downscale", model, co, "--factor", "0", "--out", "o.nc"], ("factor",))  # fmt: skip
    cli_case("cli-downscale-factor-3", ["downscale", model, co, "--factor", "3", "--steps", "2", "--out", "o.nc"], ("factor",))  # fmt: skip
    cli_case("cli-downscale-factor-and-like", ["downscale", model, co, "--factor", "4", "--like", fine, "--out", "o.nc"], ("--like", "--factor"))  # fmt: skip
    cli_case("cli-downscale-neither", ["downscale", model, co, "--out", "o.nc"], ("--like", "--factor"))  # fmt: skip
    cli_case("cli-downscale-like-missing", ["downscale", model, co, "--like", "nofine.nc", "--out", "o.nc"], ("nofine.nc",))  # fmt: skip
    cli_case("cli-downscale-like-valid", ["downscale", model, co, "--like", fine, "--steps", "2", "--n", "1", "--quiet", "--out", "o.nc"], (), expect="valid", check=cli_ok)  # fmt: skip
    cli_case("cli-interpolate-guidance-nan", [*commands["interpolate"], "--guidance-weight", "nan", "--out", "o.nc"], ("guidance_weight", "--guidance-weight"))  # fmt: skip
    cli_case("cli-interpolate-guidance-neg", [*commands["interpolate"], "--guidance-weight", "-1", "--out", "o.nc"], ("guidance_weight", "--guidance-weight"))  # fmt: skip
    cli_case("cli-interpolate-method-bad", [*commands["interpolate"], "--method", "inpaint", "--out", "o.nc"], ("--method",))  # fmt: skip
    cli_case("cli-interpolate-no-gaps", ["interpolate", model, short_nc, "--steps", "2", "--out", "o.nc"], ("NaN", "missing"))  # fmt: skip
    cli_case("cli-sample-length-0", [*commands["sample"], "--length", "0", "--out", "o.nc"], ("--length",))  # fmt: skip
    cli_case("cli-sample-length-huge", [*commands["sample"], "--length", "1000", "--out", "o.nc"], ("--length",))  # fmt: skip
    cli_case("cli-sample-start-bad", [*commands["sample"], "--start", "yesterday", "--out", "o.nc"], ("--start",))  # fmt: skip
    cli_case("cli-sample-start-after-end", [*commands["sample"], "--start", "2100-01-01", "--out", "o.nc"], ("--start",))  # fmt: skip
    cli_case("cli-sample-no-like", ["sample", model, "--out", "o.nc"], ("--like",))  # fmt: skip
    cli_case("cli-sample-zarr-valid", [*commands["sample"], "--n", "1", "--out", "o.zarr"], (), expect="valid", check=cli_ok)  # fmt: skip
    cli_case("cli-sample-chunks-valid", [*commands["sample"], "--n", "1", "--chunks", "4", "--out", "o.nc"], (), expect="valid", check=cli_ok)  # fmt: skip
    # fit
    fit_bad = [
        ("frames-0", ["--frames", "0"], ("frames",)),
        ("frames-word", ["--frames", "x"], ("--frames",)),
        ("steps-0", ["--steps", "0"], ("steps",)),
        ("steps-huge", ["--steps", str(10**30)], ("steps",)),
        ("lr-neg", ["--lr", "-1"], ("lr",)),
        ("lr-nan", ["--lr", "nan"], ("lr",)),
        ("lr-inf", ["--lr", "inf"], ("lr",)),
        ("batch-size-0", ["--batch-size", "0"], ("batch_size", "--batch-size")),
        ("seed-neg", ["--seed", "-1"], ("seed",)),
        ("net-unknown-key", ["--net", "widht=8"], ("widht",)),
        ("net-width-word", ["--net", "width=abc,mults=1-2"], ("width",)),
        ("net-json-bad", ["--net", "{"], ("--net",)),
        ("net-empty-item", ["--net", "mults=1--2"], ("--net",)),
        ("time-features-unknown", ["--time-features", "moon"], ("--time-features",)),
        ("patch-0", ["--patch", "0"], ("--patch",)),
        ("patch-odd", ["--patch", "3"], ("patch",)),
        ("patch-three", ["--patch", "2,2,2"], ("--patch",)),
        ("transform-unknown", ["--transform", "cbrt"], ("--transform",)),
        ("preset-unknown", ["--preset", "huge"], ("--preset",)),
        ("device-unknown", ["--device", "gpu0"], ("device",)),
        ("var-missing", ["--var", "tas"], ("--var", "tas")),
        ("dims-missing-dim", ["--dims", "T=tim"], ("tim",)),
        ("dims-word", ["--dims", "time"], ("--dims",)),
        ("frames-too-long", ["--frames", "500"], ("frames",)),
        ("out-empty", ["--out", ""], ("--out",)),
        ("out-existing-file", lambda tmp: (tmp.joinpath("f").write_text("x"), ["--out", str(tmp / "f")])[1], ("--out",)),
        ("out-non-model-dir", lambda tmp: ((tmp / "d").mkdir(), (tmp / "d" / "k").write_text("x"), ["--out", str(tmp / "d")])[2], ("--out",)),
        ("out-is-input", lambda tmp: ["--out", nc], ("--out",)),
        ("out-s3", ["--out", "s3://bucket/m"], ("s3",)),
        ("out-under-a-file", lambda tmp: ["--out", nc + "/m"], ("--out",)),
    ]  # fmt: skip
    for label, extra, tokens in fit_bad:

        def argv(tmp, extra=extra):
            more = extra(tmp) if callable(extra) else extra
            out = [] if "--out" in more else ["--out", str(tmp / "m")]
            return [*fitbase, *out, *more]

        cli_case(f"cli-fit-{label}", argv, tokens)

    def out_checked_first(tmp: Path) -> list[str]:
        (tmp / "f").write_text("x")
        return [*fitbase, "--steps", "100000000", "--out", str(tmp / "f")]

    cli_case("cli-fit-out-checked-before-fitting", out_checked_first, ("--out",), timeout=20.0)
    cli_case(
        "cli-fit-data-missing",
        ["fit", "none.nc", "--out", "m"],
        ("none.nc",),
    )
    cli_case(
        "cli-fit-data-garbage",
        ["fit", str(G.nc_garbage), "--out", "m"],
        ("garbage.nc",),
    )
    cli_case(
        "cli-fit-valid",
        lambda tmp: [*fitbase, "--out", str(tmp / "m")],
        (),
        expect="valid",
        check=lambda tmp, r: cli_ok(tmp, r) or loads(tmp / "m"),
    )
    cli_case(
        "cli-fit-valid-time-features-patch",
        lambda tmp: [
            *fitbase,
            "--time-features",
            "season",
            "--patch",
            "8",
            "--out",
            str(tmp / "m"),
        ],
        (),
        expect="valid",
        check=lambda tmp, r: cli_ok(tmp, r) or loads(tmp / "m"),
    )
    # evaluate
    ev = ["evaluate", fine, short_nc]
    eval_bad = [
        ("ensemble-missing", ["evaluate", "none.nc", short_nc, "--out", "r.nc"], ("none.nc",)),
        ("reference-missing", ["evaluate", fine, "none.nc", "--out", "r.nc"], ("none.nc",)),
        ("observations-missing", [*ev, "--observations", "none.nc", "--out", "r.nc"], ("none.nc",)),
        ("two-vars", [*ev, "--var", "pr,tas", "--out", "r.nc"], ("--var",)),
        ("var-missing", [*ev, "--var", "tas", "--out", "r.nc"], ("tas",)),
        ("member-dim-missing", [*ev, "--observations", short_nc, "--member-dim", "ens", "--out", "r.nc"], ("ens", "member")),
        ("other-grid", ["evaluate", fine, co, "--out", "r.nc"], ("grid",)),
        ("out-is-input", [*ev, "--out", short_nc], ("--out",)),
        ("no-out", ev, ("--out",)),
        ("garbage", ["evaluate", str(G.nc_garbage), short_nc, "--out", "r.nc"], ("garbage.nc",)),
    ]  # fmt: skip
    for label, argv, tokens in eval_bad:
        cli_case(f"cli-evaluate-{label}", argv, tokens)
    cli_case("cli-evaluate-valid", [*ev, "--out", "r.nc", "--quiet"], (), expect="valid", check=cli_ok)  # fmt: skip
    # demo
    demo_bad = [
        ("size-0", ["--size", "0"], ("size",)),
        ("size-odd", ["--size", "7"], ("size",)),
        ("frames-0", ["--frames", "0"], ("frames",)),
        ("members-0", ["--members", "0"], ("members", "n")),
        ("steps-0", ["--steps", "0"], ("steps",)),
        ("threads-0", ["--threads", "0"], ("--threads",)),
        ("threads-word", ["--threads", "many"], ("--threads",)),
        ("out-file", lambda tmp: (tmp.joinpath("f").write_text("x"), ["--out", str(tmp / "f")])[1], ("--out",)),
        ("both-modes", ["--fit-only", "--pretrained-only"], ("--fit-only", "--pretrained-only")),
    ]  # fmt: skip
    for label, extra, tokens in demo_bad:

        def argv(tmp, extra=extra):
            more = extra(tmp) if callable(extra) else extra
            out = [] if "--out" in more else ["--out", str(tmp / "demo")]
            return ["demo", "--tiny", "--fit-only", "--quiet", *out, *more]

        cli_case(f"cli-demo-{label}", argv, tokens, timeout=60.0)
    # top level
    cli_case("cli-no-command", [], ("command", "usage"))
    cli_case("cli-unknown-command", ["train"], ("train",))

    def version_ok(tmp: Path, r: CliResult) -> str | None:
        if r.code != 0 or xd.__version__ not in r.out:
            return f"exit {r.code}, stdout {r.out!r}"
        return None

    cli_case("cli-version", ["--version"], (), expect="valid", check=version_ok)
    cli_case("cli-help", ["fit", "--help"], (), expect="valid", check=cli_ok)

    def debug_traceback(tmp: Path) -> Any:
        return run_cli(tmp, ["--debug", "sample", str(tmp / "nomodel"), "--like", short_nc, "--out", str(tmp / "o.nc")])  # fmt: skip

    def has_traceback(tmp: Path, r: Any) -> str | None:
        if isinstance(r, CliResult):
            return None if "Traceback" in r.err else "--debug printed no traceback"
        return None

    case(
        "cli-debug-shows-traceback",
        "cli",
        debug_traceback,
        expect="valid",
        check=has_traceback,
    )

    def entry_point(tmp: Path) -> Any:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "xdiffusion",
                "forecast",
                model,
                short_nc,
                "--lead",
                "0",
                "--out",
                str(tmp / "o.nc"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return CliResult(r.returncode, r.stdout, r.stderr)

    case("cli-subprocess-entry-point", "cli", entry_point, tokens=("lead",))


# ==================================================================== resources
def add_resource_cases() -> None:
    for method in ("sample", "interpolate", "forecast", "downscale"):
        case(
            f"{method}-n-billion",
            "resources",
            gen_call(method, n=10**9),
            tokens=(word("n"), "memory_budget"),
        )
        case(
            f"{method}-budget-petabyte-n-ten-million",
            "resources",
            gen_call(method, n=10**7, memory_budget="1PB"),
            tokens=(word("n"), "memory_budget"),
        )
    case(
        "forecast-lead-ten-million",
        "resources",
        gen_call("forecast", lead=10**7),
        tokens=(word("lead"), "memory_budget"),
    )
    case(
        "forecast-lead-ten-million-lazy",
        "resources",
        lambda tmp: short().chunk(time=4).diffusion.forecast(G.model, lead=10**7, **GEN),
        expect="either",
        tokens=(word("lead"), "memory_budget"),
        check=lambda tmp, out: None if out.chunks else "an eager result",
    )
    case(
        "sample-long-template-lazy",
        "resources",
        lambda tmp: make_lazy_template(10**6).diffusion.sample(G.model, **GEN),
        expect="either",
        tokens=("memory_budget", "time"),
        check=lambda tmp, out: None if out.chunks else "an eager result",
    )
    case(
        "sample-batch-size-billion",
        "resources",
        gen_call("sample", n=2, batch_size=10**9),
        expect="valid",
        check=ok_output,
    )
    case(
        "sample-budget-exact-bytes",
        "resources",
        gen_call("sample", n=1, memory_budget="2GB"),
        expect="valid",
        check=ok_output,
    )
    case(
        "fit-net-width-4096",
        "resources",
        lambda tmp: fit(net={"width": 4096, "mults": [1, 2]}),
        expect="either",
        tokens=("width", "memory"),
        check=ok_model,
        timeout=30.0,
    )
    case(
        "fit-batch-size-million",
        "resources",
        lambda tmp: fit(batch_size=10**6),
        expect="either",
        tokens=("batch_size",),
        check=ok_model,
        timeout=30.0,
    )
    case(
        "fit-steps-billion-checked-fast",
        "resources",
        lambda tmp: fit(steps=10**9, frames=0),
        tokens=("frames",),
        timeout=10.0,
    )
    case(
        "synthetic-nt-billion",
        "resources",
        lambda tmp: synthetic_precipitation(nt=10**9, ny=16, nx=16),
        expect="either",
        tokens=("nt", "memory", "chunks"),
        check=lambda tmp, out: None if out.chunks else "eager billion-step array",
        timeout=30.0,
    )
    case(
        "synthetic-grid-huge",
        "resources",
        lambda tmp: synthetic_precipitation(nt=4, ny=10**6, nx=10**6),
        expect="either",
        tokens=("ny", "nx", "memory", "chunks"),
        check=lambda tmp, out: None if out.chunks else "eager huge grid",
        timeout=30.0,
    )

    def blobs_huge(tmp: Path) -> Any:
        from xdiffusion.datasets import gaussian_blobs

        return gaussian_blobs(nt=10**9, ny=64, nx=64)

    case(
        "gaussian-blobs-nt-billion",
        "resources",
        blobs_huge,
        expect="either",
        tokens=("nt", "memory"),
        check=lambda tmp, out: None if out.chunks else "eager billion-step array",
        timeout=30.0,
    )
    case(
        "nll-n-lambda-billion",
        "resources",
        lambda tmp: G.model.nll(short(), n_lambda=10**9, terms=False),
        expect="either",
        tokens=("n_lambda",),
        check=lambda tmp, v: None if math.isfinite(v) else "not finite",
        timeout=30.0,
    )
    case(
        "nll-batch-size-billion",
        "resources",
        lambda tmp: G.model.nll(short(), n_lambda=2, batch_size=10**9, terms=False),
        expect="valid",
        check=lambda tmp, v: None if math.isfinite(v) else "not finite",
        timeout=30.0,
    )


def make_lazy_template(nt: int) -> xr.DataArray:
    import dask.array as dsa

    time = np.datetime64("2000-01-01T00") + np.arange(nt) * np.timedelta64(1, "h")
    return xr.DataArray(
        dsa.zeros((nt, 16, 16), chunks=(1000, 16, 16), dtype=np.float32),
        dims=("time", "y", "x"),
        coords={"time": time, "y": G.series.y, "x": G.series.x},
        name="pr",
        attrs=G.series.attrs,
    )


# ==================================================================== time axes
def add_time_axis_cases() -> None:
    num = lambda: numeric_time(short())  # noqa: E731

    def continues(step: float, lead: int = 3) -> Callable[[Path, Any], str | None]:
        def check(tmp: Path, out: Any) -> str | None:
            problem = finite_output(out)
            if problem:
                return problem
            want = 7 + step * np.arange(1, lead + 1)
            if not np.allclose(out.time.values.astype(float), want):
                return f"time {out.time.values}, expected {want}"
            return None

        return check

    case(
        "forecast-float-hours",
        "time_axes",
        lambda tmp: num().diffusion.forecast(G.model_num, lead=3, **GEN),
        expect="either",
        tokens=("time",),
        check=continues(1.0),
    )
    case(
        "forecast-int-steps",
        "time_axes",
        lambda tmp: numeric_time(short(), int).diffusion.forecast(G.model_num, lead=3, **GEN),
        expect="either",
        tokens=("time",),
        check=continues(1.0),
    )
    case(
        "forecast-numeric-on-datetime-model",
        "time_axes",
        lambda tmp: num().diffusion.forecast(G.model, lead=3, **GEN),
        expect="either",
        tokens=("time",),
        check=continues(1.0),
    )
    case(
        "forecast-numeric-irregular",
        "time_axes",
        lambda tmp: (
            num()
            .assign_coords(time=[0, 1, 2, 3, 4, 5, 6.5, 9.1])
            .diffusion.forecast(G.model_num, lead=2, **GEN)
        ),
        tokens=("time", "step", "regular"),
    )
    case(
        "forecast-string-time",
        "time_axes",
        lambda tmp: (
            short()
            .assign_coords(time=[f"t{i}" for i in range(8)])
            .diffusion.forecast(G.model, lead=2, **GEN)
        ),
        tokens=("time",),
    )
    case(
        "forecast-no-time-coordinate",
        "time_axes",
        lambda tmp: short().drop_vars("time").diffusion.forecast(G.model, lead=2, **GEN),
        tokens=("time",),
    )
    case(
        "forecast-timedelta-axis",
        "time_axes",
        lambda tmp: (
            short()
            .assign_coords(time=np.arange(8) * np.timedelta64(1, "h"))
            .diffusion.forecast(G.model, lead=2, **GEN)
        ),
        expect="either",
        tokens=("time",),
        check=lambda tmp, out: (
            finite_output(out)
            or (
                None
                if (out.time.values[-1] - out.time.values[0]) == np.timedelta64(1, "h")
                else f"times {out.time.values}"
            )
        ),
    )

    def cftime_continues(tmp: Path, out: Any) -> str | None:
        problem = finite_output(out)
        if problem:
            return problem
        t = out.time.values
        if not hasattr(t[0], "calendar") or t[0].calendar != "noleap":
            return f"time {t[:2]} lost the noleap calendar"
        return None

    case(
        "forecast-cftime-noleap",
        "time_axes",
        lambda tmp: short(make_cftime(40)).diffusion.forecast(G.model, lead=2, **GEN),
        expect="either",
        tokens=("calendar", "time"),
        check=cftime_continues,
    )

    def monthly(tmp: Path) -> Any:
        s = short().assign_coords(
            time=xr.date_range("2000-01-01", periods=8, freq="MS", use_cftime=False)
        )
        return s.diffusion.forecast(G.model, lead=2, **GEN)

    case(
        "forecast-monthly-on-hourly-model",
        "time_axes",
        monthly,
        tokens=("time step", "step", "month"),
    )
    case(
        "fit-time-features-float-axis",
        "time_axes",
        lambda tmp: fit(numeric_time(G.series), time_features="season"),
        tokens=("time_features", "datetime"),
    )
    case(
        "sample-time-features-model-on-float-axis",
        "time_axes",
        lambda tmp: num().diffusion.sample(G.model_tf, **GEN),
        tokens=("time", "datetime"),
    )
    case(
        "sample-numeric-time",
        "time_axes",
        lambda tmp: num().diffusion.sample(G.model_num, **GEN),
        expect="valid",
        check=ok_output,
    )
    case(
        "interpolate-numeric-time",
        "time_axes",
        lambda tmp: with_nan(num(), [3]).diffusion.interpolate(G.model_num, **GEN),
        expect="valid",
        check=ok_output,
    )
    case(
        "fit-numeric-time",
        "time_axes",
        lambda tmp: fit(numeric_time(G.series)),
        expect="valid",
        check=ok_model,
    )
    hours = lambda n: np.arange(n) * np.timedelta64(1, "h")  # noqa: E731

    def timedelta_model(tmp: Path, m: Any) -> str | None:
        out = short().assign_coords(time=hours(8)).diffusion.sample(m, **GEN)
        return finite_output(out)

    case(
        "fit-timedelta-time",
        "time_axes",
        lambda tmp: fit(G.series.assign_coords(time=hours(40))),
        expect="either",
        tokens=("time",),
        check=timedelta_model,
    )
    case(
        "sample-daily-on-hourly-model",
        "time_axes",
        lambda tmp: (
            short()
            .assign_coords(time=xr.date_range("2000-01-01", periods=8, freq="D"))
            .diffusion.sample(G.model, **GEN)
        ),
        tokens=("step", "hour", "daily", "time"),
    )


# ==================================================================== sample data offline
class _Handler(http.server.BaseHTTPRequestHandler):
    status = 404
    body = b"not found"

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


def serve(status: int, body: bytes) -> str:
    handler = type("H", (_Handler,), {"status": status, "body": body})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/"


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def open_sample(tmp: Path, url: str | None, **kw: Any) -> Any:
    from xdiffusion.datasets import open_sample as open_

    os.environ["XDIFFUSION_DATA_URL"] = url or closed_port()
    os.environ["XDIFFUSION_DATA_DIR"] = str(tmp / "envcache")
    kw.setdefault("cache_dir", tmp / "cache")
    return open_("CESM2_sst_data.nc", **kw)


def add_sample_data_cases() -> None:
    remedy = ("XDIFFUSION_DATA_URL",)
    case("sample-data-offline", "sample_data", lambda tmp: open_sample(tmp, None), tokens=remedy)
    case(
        "sample-data-http-404",
        "sample_data",
        lambda tmp: open_sample(tmp, serve(404, b"nope")),
        tokens=("404",),
    )
    case(
        "sample-data-http-500",
        "sample_data",
        lambda tmp: open_sample(tmp, serve(500, b"oops")),
        tokens=("500",),
    )
    case(
        "sample-data-wrong-content",
        "sample_data",
        lambda tmp: open_sample(tmp, serve(200, b"not the file")),
        tokens=("sha256",),
    )

    def corrupt_cache(tmp: Path) -> Any:
        (tmp / "cache").mkdir()
        (tmp / "cache" / "CESM2_sst_data.nc").write_bytes(b"partial")
        return open_sample(tmp, None)

    case(
        "sample-data-corrupt-cache-offline",
        "sample_data",
        corrupt_cache,
        tokens=("sha256",),
    )

    def cache_file(tmp: Path) -> Any:
        (tmp / "cache").write_text("x")
        return open_sample(tmp, None)

    case("sample-data-cache-is-file", "sample_data", cache_file, tokens=("cache",))

    def env_cache_file(tmp: Path) -> Any:
        (tmp / "envcache").write_text("x")
        os.environ["XDIFFUSION_DATA_URL"] = closed_port()
        os.environ["XDIFFUSION_DATA_DIR"] = str(tmp / "envcache")
        from xdiffusion.datasets import open_sample as open_

        return open_("CESM2_sst_data.nc")

    case(
        "sample-data-env-cache-is-file",
        "sample_data",
        env_cache_file,
        tokens=("XDIFFUSION_DATA_DIR", "cache"),
    )

    def cache_under_file(tmp: Path) -> Any:
        (tmp / "f").write_text("x")
        return open_sample(tmp, None, cache_dir=tmp / "f" / "cache")

    case("sample-data-cache-under-file", "sample_data", cache_under_file, tokens=("cache",))
    case(
        "sample-data-file-url-missing",
        "sample_data",
        lambda tmp: open_sample(tmp, "file:///nonexistent/dir/"),
        tokens=("XDIFFUSION_DATA_URL", "nonexistent"),
        forbid=("does not match",),
    )
    case(
        "sample-data-url-not-http",
        "sample_data",
        lambda tmp: open_sample(tmp, "gopher://127.0.0.1/"),
        tokens=("XDIFFUSION_DATA_URL", "gopher"),
        forbid=("does not match",),
    )
    case(
        "sample-data-unknown-name",
        "sample_data",
        lambda tmp: __import__("xdiffusion.datasets").datasets.open_sample("nope.nc"),
        tokens=("nope.nc",),
    )
    case(
        "sample-data-cache-dir-int",
        "sample_data",
        lambda tmp: open_sample(tmp, None, cache_dir=3),
        tokens=("cache_dir",),
    )

    def plain_url(tmp: Path) -> Any:
        return open_sample(tmp, "http://127.0.0.1:1/not/a/server/")

    case("sample-data-port-1", "sample_data", plain_url, tokens=remedy)


# ==================================================================== misleading messages
def add_message_cases() -> None:
    s = lambda: G.series  # noqa: E731
    msgs = [
        ("fit-dims-string", lambda: fit(dims="time"), ("dims",), ("dictionary update",)),
        ("fit-nat-not-descending", lambda: fit(with_nat(s(), 5)), ("NaT",), ("descending",)),
        ("fit-1e300-not-infinite", lambda: fit(s().astype(np.float64).where(s().time != s().time[3], 1e300)), ("overflow", "float32"), ("infinite values",)),
        ("fit-steps-1e30", lambda: fit(steps=10**30), ("steps",), ("Overflow", "int too big")),
        ("fit-resume-no", lambda: fit(resume="no", checkpoint_dir="unused"), ("resume",), ()),
        ("sample-seed-1e30", lambda: short().diffusion.sample(G.model, seed=10**30, **GEN), ("seed",), ("Overflow",)),
        ("sample-nat", lambda: with_nat(short(), 2).diffusion.sample(G.model, **GEN), ("NaT",), ("descending",)),
        ("forecast-nat-last", lambda: with_nat(short(), 7).diffusion.forecast(G.model, lead=2, **GEN), ("NaT",), ("descending",)),
        ("interpolate-1e300", lambda: with_nan(short().astype(np.float64) * 1e300, [3]).diffusion.interpolate(G.model, **GEN), ("overflow",), ("infinite values",)),
        ("evaluate-other-grid", lambda: _evaluate(short(), short().isel(x=slice(0, 10))), ("grid",), ("bins",)),
        ("evaluate-fair-true-one-member", lambda: _evaluate(short().expand_dims(realization=1), short(), observations=short(), fair=True), ("fair",), ()),
        ("evaluate-fair-str", lambda: _evaluate(short(), short(), fair="yes"), ("fair",), ()),
        ("evaluate-bins-keyword", lambda: _evaluate(short(), short(), bins=10), ("bins",), ()),
        ("evaluate-all-nan-samples", lambda: _evaluate(short() * np.nan, short()), ("NaN", "samples"), ("bins=",)),
        ("fit-frames-float", lambda: fit(frames=4.0), ("frames",), ()),
        ("sample-time-step-message", lambda: short().isel(time=[0, 1, 2, 4, 5, 6, 7, 3]).diffusion.sample(G.model, **GEN), ("time",), ()),
    ]  # fmt: skip
    for label, build, tokens, forbid in msgs:
        case(
            f"msg-{label}",
            "messages",
            lambda tmp, b=build: b(),
            tokens=tokens,
            forbid=forbid,
        )

    case(
        "msg-evaluate-constant-samples",
        "messages",
        lambda tmp: _evaluate(short() * 0, short()),
        expect="either",
        tokens=("constant", "samples"),
        forbid=("bins=",),
        check=lambda tmp, ds: None if isinstance(ds, xr.Dataset) else "no report",
    )

    def fair_one_member(tmp: Path) -> Any:
        return _evaluate(short().expand_dims(realization=1), short(), observations=short())

    case(
        "msg-evaluate-fair-default-one-member",
        "messages",
        fair_one_member,
        expect="valid",
        check=lambda tmp, ds: None if "crps" in ds else "no crps",
    )
    case(
        "msg-evaluate-fair-false-one-member",
        "messages",
        lambda tmp: _evaluate(
            short().expand_dims(realization=1), short(), observations=short(), fair=False
        ),
        expect="valid",
        check=lambda tmp, ds: None if "crps" in ds and "crps_fair" not in ds else "fair present",
    )


def _evaluate(*a: Any, **k: Any) -> Any:
    from xdiffusion.diagnostics import evaluate

    return evaluate(*a, **k)


# ==================================================================== running
def run_child(c: Case, tmp: Path, limit: int) -> dict[str, Any]:
    """Fork; run the case in the child under the memory cap; return its report."""
    result_file = tmp / ".result.pkl"
    pid = os.fork()
    if pid == 0:  # the child
        code = 0
        try:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            import dask.threaded

            dask.threaded.default_pool = None  # the parent's pool threads did not fork
            dask.threaded.pools.clear()
            os.chdir(tmp)
            sink = open(tmp / ".child-output", "w")
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            rep = execute(c, tmp)
            with open(result_file, "wb") as f:
                pickle.dump(rep, f)
        except BaseException:
            code = 3
        finally:
            os._exit(code)
    deadline = time.monotonic() + c.timeout
    status = None
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.005)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return {"kind": "timeout", "detail": f"killed after {c.timeout:.0f} s"}
    if os.WIFSIGNALED(status):
        return {"kind": "killed", "detail": f"signal {os.WTERMSIG(status)}"}
    if not result_file.exists():
        return {"kind": "killed", "detail": f"child exited {os.waitstatus_to_exitcode(status)}"}
    with open(result_file, "rb") as f:
        return pickle.load(f)


def execute(c: Case, tmp: Path) -> dict[str, Any]:
    """Run the case (in the child) and describe what happened, check included."""
    try:
        out = c.run(tmp)
    except BaseException as err:
        tb = traceback.extract_tb(err.__traceback__)
        origin = tb[-1].filename if tb else ""
        return {
            "kind": "raised",
            "type": type(err).__name__,
            "module": type(err).__module__,
            "accepted": accepted(err),
            "memory": is_memory_error(err),
            "message": str(err),
            "origin": origin,
            "own": origin.startswith(PACKAGE) or c.injected or signature_error(err),
        }
    problem = None
    if isinstance(out, CliResult):
        rep = {"kind": "cli", "code": out.code, "err": out.err[-3000:], "out": out.out[-500:]}
        if c.check is not None and (c.expect != "error"):
            try:
                problem = c.check(tmp, out)
            except BaseException as err:
                problem = f"check failed: {type(err).__name__}: {err}"
        rep["problem"] = problem
        return rep
    if c.check is not None and c.expect != "error":
        try:
            problem = c.check(tmp, out)
        except BaseException as err:
            problem = f"check failed: {type(err).__name__}: {err}"
    return {"kind": "returned", "problem": problem, "value": safe_repr(out)[:200]}


def safe_repr(obj: Any) -> str:
    try:
        return repr(obj)
    except Exception as err:
        return f"<{type(obj).__name__} whose repr fails: {type(err).__name__}: {err}>"


def signature_error(err: BaseException) -> bool:
    """Python's own check of a call's arguments (unexpected keyword, missing argument)."""
    return isinstance(err, TypeError) and bool(
        re.search(r"unexpected keyword argument|missing \d+ required", str(err))
    )


def accepted(err: BaseException) -> bool:
    if isinstance(err, ValueError | TypeError | OSError | FloatingPointError):
        return True
    return any(k.__module__.startswith("xdiffusion") for k in type(err).__mro__)


def is_memory_error(err: BaseException) -> bool:
    text = str(err)
    return isinstance(err, MemoryError) or (
        isinstance(err, RuntimeError)
        and any(s in text for s in ("DefaultCPUAllocator", "bad_alloc", "can't allocate memory"))
    )


def matches(text: str, patterns: tuple[str, ...]) -> bool:
    return any(re.search(p, text, re.IGNORECASE) for p in patterns)


def classify(c: Case, rep: dict[str, Any]) -> tuple[str, str]:
    """(class, detail) of a case's report; see the module docstring for the rules."""
    kind = rep["kind"]
    if kind in ("timeout", "killed"):
        return "runaway", rep["detail"]
    if kind == "raised":
        detail = f"{rep['type']}: {rep['message'][:400]}"
        if rep["memory"]:
            return "runaway", detail
        if c.expect == "valid":
            return "refused_valid", detail
        if not rep["accepted"]:
            return "wrong_exception", f"{detail} (from {short_path(rep['origin'])})"
        if not rep["own"]:
            return "unclear", f"{detail} (raised in {short_path(rep['origin'])})"
        if c.forbid and matches(rep["message"], c.forbid):
            return "unclear", f"misleading: {detail}"
        if c.tokens and not matches(rep["message"], c.tokens):
            return "unclear", f"names none of {list(c.tokens)}: {detail}"
        return "clear", detail
    if kind == "cli":
        err = rep["err"]
        line = next((ln for ln in err.splitlines()[::-1] if "error" in ln.lower()), err[-300:])
        detail = f"exit {rep['code']}: {line.strip()[:400]}"
        if "MemoryError" in err or "DefaultCPUAllocator" in err:
            return "runaway", detail
        if c.expect == "valid":  # the check decides (cli_ok wants exit 0)
            if rep.get("problem"):
                return ("refused_valid" if rep["code"] else c.failure), rep["problem"]
            return "valid", ""
        if rep["code"] == 0:
            if c.expect == "error":
                return "silent", f"exit 0 for an invalid command: {rep['out'][-200:]}"
            if rep.get("problem"):
                return c.failure, rep["problem"]
            return "valid", ""
        if "Traceback" in err or rep["code"] != 2:
            last = err.strip().splitlines()[-1] if err.strip() else ""
            return "wrong_exception", f"exit {rep['code']}: {last[:400]}"
        if c.forbid and matches(err, c.forbid):
            return "unclear", f"misleading: {detail}"
        if c.tokens and not matches(err, c.tokens):
            return "unclear", f"names none of {list(c.tokens)}: {detail}"
        return "clear", detail
    # returned
    if c.expect == "error":
        return "silent", f"accepted: returned {rep['value']}"
    if rep["problem"]:
        return c.failure, rep["problem"]
    return "valid", ""


def short_path(p: str) -> str:
    for prefix in (str(ROOT) + "/", sys.prefix + "/"):
        if p.startswith(prefix):
            return p[len(prefix) :]
    return p


def register_all() -> None:
    add_fit_argument_cases()
    add_fit_data_cases()
    add_resume_cases()
    add_generation_cases()
    add_model_file_cases()
    add_save_cases()
    add_cli_cases()
    add_resource_cases()
    add_time_axis_cases()
    add_sample_data_cases()
    add_message_cases()


def vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", help="run the cases whose name has this")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--out", default=str(RESULTS), help="JSON summary file")
    parser.add_argument(
        "--details", default=None, help="also write every case's class and message to this file"
    )
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="xdiffusion-adversarial-") as base_dir:
        base = Path(base_dir)
        prepare(base / "shared")
        register_all()
        cases = [c for c in CASES if not args.only or any(o in c.name for o in args.only)]
        if args.list:
            for c in cases:
                print(f"{c.category:22s} {c.expect:6s} {c.name}")
            print(len(cases), "cases")
            return 0
        t_prep = time.perf_counter() - t0
        limit = vm_size() + MEMORY_HEADROOM
        results = []
        for i, c in enumerate(cases):
            tmp = base / f"case-{i:04d}"
            tmp.mkdir()
            t = time.perf_counter()
            try:
                if c.setup is not None:
                    c.setup(tmp)
            except Exception as err:
                results.append((c, "harness_error", f"setup: {err!r}", 0.0))
                continue
            before = {p: tree_digest(tmp / p) for p in c.protect}
            rep = run_child(c, tmp, limit)
            cls, detail = classify(c, rep)
            changed = [p for p, d in before.items() if tree_digest(tmp / p) != d]
            broken = [p for p in c.loadable if loads(tmp / p)]
            if changed or broken:
                cls = "data_loss"
                detail = f"changed {changed}, unloadable {broken}; {detail}"
            dt = time.perf_counter() - t
            results.append((c, cls, detail, dt))
            print(f"[{i + 1}/{len(cases)}] {cls:15s} {dt:5.1f}s {c.name}", file=sys.stderr)
            shutil.rmtree(tmp, ignore_errors=True)
    counts = Counter(cls for _, cls, _, _ in results)
    by_category: dict[str, Counter] = defaultdict(Counter)
    for c, cls, _, _ in results:
        by_category[c.category][cls] += 1
    summary = {
        "command": "OMP_NUM_THREADS=1 .venv/bin/python scripts/adversarial.py"
        + "".join(f" --only {o}" for o in args.only or []),
        "xdiffusion_version": xd.__version__,
        "torch_version": torch.__version__,
        "cases": len(results),
        "seconds": round(time.perf_counter() - t0, 1),
        "prepare_seconds": round(t_prep, 1),
        "counts": {k: counts.get(k, 0) for k in (*CLASSES, "harness_error") if counts.get(k)},
        "by_category": {
            cat: {k: n for k, n in sorted(cnt.items())} for cat, cnt in sorted(by_category.items())
        },
        "not_clear": [
            {"case": c.name, "category": c.category, "class": cls, "detail": detail}
            for c, cls, detail, _ in results
            if cls not in ("clear", "valid")
        ],
        "slowest": [
            {"case": c.name, "seconds": round(dt, 2)}
            for c, _, _, dt in sorted(results, key=lambda r: -r[3])[:10]
        ],
    }
    if args.details:
        every = [
            {"case": c.name, "category": c.category, "class": cls, "detail": detail}
            for c, cls, detail, _ in results
        ]
        Path(args.details).write_text(json.dumps(every, indent=1) + "\n")
    text = json.dumps(summary, indent=1)
    print(text)
    if not args.only:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
