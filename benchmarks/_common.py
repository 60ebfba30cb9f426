"""Shared pieces of the sampling benchmarks: the cached benchmark model, data, timing.

The benchmark model is fitted once per :class:`Spec` and cached under
``benchmarks/.cache/`` (git-ignored); later runs load it. Data are synthetic
precipitation: the model trains on one seed's series and is judged against a long
held-out series of another seed (the "reference"), cut into non-overlapping windows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import xarray as xr

import xdiffusion as xd
from xdiffusion import diagnostics as dg
from xdiffusion.datasets import synthetic_precipitation

CACHE_DIR = Path(__file__).resolve().parent / ".cache"


@dataclasses.dataclass(frozen=True)
class Spec:
    """Everything that determines the benchmark model (its cache key)."""

    ny: int = 16
    nx: int = 16
    frames: int = 8
    net: tuple[tuple[str, object], ...] = (("width", 16), ("head_dim", 16))
    train_steps: int = 5000
    batch_size: int = 8
    lr: float = 1e-3
    warmup: int = 50
    nt_train: int = 6000
    seed: int = 0
    wind_kmh: tuple[float, float] = (30.0, 10.0)
    #: Further keyword arguments of ``synthetic_precipitation`` (``dx_km``, ``dry_fraction``).
    data_kwargs: tuple[tuple[str, object], ...] = ()

    def key(self) -> str:
        fields = dataclasses.asdict(self)
        if not fields["data_kwargs"]:
            del fields["data_kwargs"]  # keys of specs without it stay as they were
        blob = json.dumps(fields, sort_keys=True, default=str)
        return hashlib.sha256(f"{blob}|{xd.__version__}".encode()).hexdigest()[:12]

    def data(self, nt: int, seed: int) -> xr.DataArray:
        """A synthetic precipitation series on this spec's grid."""
        return synthetic_precipitation(
            nt=nt,
            ny=self.ny,
            nx=self.nx,
            seed=seed,
            wind_kmh=self.wind_kmh,
            **dict(self.data_kwargs),
        )


#: A lean U-Net for CPU benchmarks: temporal attention only, at the coarsest level
#: (benchmarks/transforms.py, benchmarks/latent.py; add ``width``).
LEAN_NET: dict = {
    "mults": [1, 2, 2],
    "spatial_attention": ["none", "none", "none"],
    "temporal_attention": [False, False, True],
    "mid_spatial_attention": "none",
    "heads": 2,
    "head_dim": None,
}

#: The brief's setting: the ``small`` preset at 32×32×8. Its 1000-step ancestral reference
#: costs about 0.3 s per sample and network evaluation on two loaded CPU cores, i.e. hours
#: for two ensembles; use it with ``--full`` on a GPU or an idle machine.
FULL = Spec(ny=32, nx=32, net=(), train_steps=3000, batch_size=8, nt_train=8000)
#: Default: the small preset's architecture at width 16 on 16×16×8 (about 10× cheaper).
DEFAULT = Spec()
#: Conditional tasks: 25 km cells and rain moving 2 cells per hourly step, so that the
#: first hours are predictable (lifetimes grow with scale) and persistence is poor; the
#: setting of tests/test_conditional_quality.py with 8 frames and a longer fit.
CONDITIONAL = Spec(wind_kmh=(50.0, 16.7), data_kwargs=(("dx_km", 25.0), ("dry_fraction", 0.6)))
#: Smoke test: seconds.
QUICK = Spec(net=(("width", 8), ("head_dim", 8), ("mults", (1, 2))), train_steps=40, nt_train=400)


def log(*args: object) -> None:
    """Progress to stderr (stdout carries the JSON result)."""
    print(*args, file=sys.stderr, flush=True)


def machine() -> dict:
    """What the timings were taken on."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "xdiffusion": xd.__version__,
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


@contextlib.contextmanager
def stopwatch(out: dict, key: str) -> Iterator[None]:
    """Add the wall time (s) of the block to ``out[key]``."""
    t = time.perf_counter()
    try:
        yield
    finally:
        out[key] = out.get(key, 0.0) + time.perf_counter() - t


@contextlib.contextmanager
def count_evaluations(model: xd.DiffusionModel) -> Iterator[dict]:
    """Count network evaluations (per sample: a batch of 8 counts 8) inside the block.

    ``"forward"`` counts forward passes; guidance adds a backward pass to each of them.
    """
    counts = {"forward": 0}

    def hook(module, args, output):
        counts["forward"] += int(args[0].shape[0])

    handle = model.module.net.register_forward_hook(hook)
    try:
        yield counts
    finally:
        handle.remove()


def get_model(spec: Spec, *, progress: bool = False) -> tuple[xd.DiffusionModel, dict]:
    """Load the cached model of ``spec`` or fit (and cache) it; returns (model, info)."""
    path = CACHE_DIR / f"model-{spec.key()}"
    info_path = path / "benchmark.json"
    if (path / "config.json").is_file() and info_path.is_file():
        info = json.loads(info_path.read_text())
        info["cached"] = True
        return xd.load(path), info
    log(f"fitting the benchmark model {spec} (cached afterwards in {path})")
    train = spec.data(spec.nt_train, spec.seed)
    t = time.perf_counter()
    model = train.diffusion.fit(
        frames=spec.frames,
        transform="sqrt",
        steps=spec.train_steps,
        batch_size=spec.batch_size,
        lr=spec.lr,
        warmup=spec.warmup,
        seed=spec.seed,
        device="cpu",
        net=dict(spec.net) or None,
        progress=progress,
    )
    seconds = time.perf_counter() - t
    path.mkdir(parents=True, exist_ok=True)
    model.save(path)
    info = {
        "spec": dataclasses.asdict(spec),
        "train_seconds": round(seconds, 1),
        "parameters": sum(p.numel() for p in model.module.parameters()),
        "final_loss": _last(model.history_dict.get("loss")),
        "final_val_loss": _last(model.history_dict.get("val_loss")),
        "machine": machine(),
    }
    info_path.write_text(json.dumps(info, indent=1))
    info["cached"] = False
    return model, info


def _last(values) -> float | None:
    return float(values[-1]) if values else None


def windows(da: xr.DataArray, frames: int, count: int | None = None) -> np.ndarray:
    """Non-overlapping windows (N, frames, ny, nx) of a (time, y, x) series."""
    v = np.asarray(da.values)
    n = v.shape[0] // frames if count is None else count
    if n * frames > v.shape[0]:
        raise ValueError(f"series of {v.shape[0]} steps has fewer than {n} windows of {frames}")
    return v[: n * frames].reshape(n, frames, *v.shape[1:])


def ensemble(values: np.ndarray, template: xr.DataArray) -> xr.DataArray:
    """(n, T, Y, X) values as a DataArray on ``template``'s (time, y, x) coordinates."""
    da = xr.DataArray(
        np.asarray(values, dtype=np.float32),
        dims=(dg.MEMBER_DIM, *template.dims),
        coords={
            **{k: v for k, v in template.coords.items()},
            dg.MEMBER_DIM: np.arange(len(values)),
        },
        attrs=dict(template.attrs),
        name=template.name,
    )
    return da


def quality(samples: xr.DataArray, reference: xr.DataArray) -> dict[str, float]:
    """Spatial and temporal PSD log error, QQ relative error, mean |normalised bias|.

    Both inputs are ensembles of windows (realization, time, y, x). Quantile levels stop
    where the smaller set still has about 30 values above the top one (0.91 … 1 − 10⁻ᵏ):
    beyond that, the QQ error of heavy-tailed rain measures a handful of values, not the
    generator (with ~3 values, two sets of real windows differed by 0.47 on average).
    """
    n = min(samples.size, reference.size)
    order = max(1, int(np.floor(np.log10(n / 30.0))) - 1)
    q = dg.seed_quantiles(order)
    sp = dg.spatial_psd(samples), dg.spatial_psd(reference)
    tp = dg.temporal_psd(samples), dg.temporal_psd(reference)
    qq = dg.qq(samples, reference, q)
    mnb = dg.mean_normalised_bias(samples, reference)
    return {
        "spatial_psd_log_error": _log_err(*sp),
        "temporal_psd_log_error": _log_err(*tp),
        "qq_relative_error": float(abs(qq["relative_error"]).mean(skipna=True)),
        "mean_abs_normalised_bias": float(mnb["mean_abs_mean_normalised_bias"]),
    }


METRICS = (
    "spatial_psd_log_error",
    "temporal_psd_log_error",
    "qq_relative_error",
    "mean_abs_normalised_bias",
)


def _log_err(a: xr.DataArray, b: xr.DataArray) -> float:
    a, b = np.asarray(a.values, float), np.asarray(b.values, float)
    ok = (a > 0) & (b > 0)
    return float(np.mean(np.abs(np.log10(a[ok] / b[ok]))))


def rounded(obj, digits: int = 4):
    """Round floats in nested dicts/lists for readable JSON."""
    if isinstance(obj, float):
        return round(obj, digits) if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [rounded(v, digits) for v in obj]
    return obj


def status_kib(field: str) -> int | None:
    """A ``/proc/self/status`` field in KiB (Linux), or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None
