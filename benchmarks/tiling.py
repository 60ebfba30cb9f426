"""Sampling a large grid whole vs in overlapping blended tiles (issue 16, ``model.tile``).

Two questions on a 256×256 synthetic precipitation grid (``--quick``: 128×128):

- **Memory and time.** The ``small`` preset (frames 8; weights after one training step,
  which costs the same as trained ones) samples the grid with n=1 and a few sampler steps
  (dpmpp_2m: one network evaluation per step), whole (``model.tile(None)``, the default)
  and in tiles of 64 (overlap 16) and 128 (overlap 16). Each configuration runs in a fresh
  process: ``peak_rss_mib`` is its ``VmHWM`` from ``/proc/self/status`` (whole process:
  imports, model, sampling) and ``sample_added_mib`` the peak that sampling adds on top
  of the loaded model (``VmHWM`` reset just before sampling). Ratios are whole / tiled.
- **Seams.** A tiny network (width 8, two levels, no spatial attention) fitted for a
  few hundred steps on 32×32 crops samples the grid whole, in blended tiles of 64
  (overlap 16) and in hard tiles (overlap 0). The statistic is that of
  ``tests/test_tiling.py``: the mean absolute difference between neighbouring columns
  (rows) at the pairs that straddle a tile edge, divided by its mean over all other
  pairs. 1 means no seam. The whole-grid samples, scored at the same pairs, give the
  floor (the field's own variation from column to column).

Prints one JSON document to stdout (progress on stderr) and writes it to ``--out``
(default ``benchmarks/results/tiling.json``; none with ``--quick``). Run it alone with
``OMP_NUM_THREADS=1``::

    OMP_NUM_THREADS=1 python benchmarks/tiling.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

try:
    from benchmarks import _common as C
except ImportError:  # run as a script: benchmarks/ is on sys.path
    import _common as C

import xdiffusion as xd
from xdiffusion.datasets import synthetic_precipitation
from xdiffusion.nets.tiled import tile_starts

RESULTS = Path(__file__).resolve().parent / "results" / "tiling.json"
SETTINGS = {
    "full": dict(grid=256, frames=8, memory_steps=4, seam_fit_steps=300, seam_members=2),
    "quick": dict(grid=128, frames=8, memory_steps=2, seam_fit_steps=60, seam_members=1),
}
#: (name, tile, overlap) of the memory runs.
MEMORY_RUNS = (("whole", None, 0), ("tile_64_overlap_16", 64, 16), ("tile_128_overlap_16", 128, 16))
#: (name, tile, overlap) of the seam runs; the whole grid is scored at the edges of the first.
SEAM_RUNS = (("tile_64_overlap_16", 64, 16), ("tile_64_hard", 64, 0), ("whole", None, 0))
#: The seam model: a tiny network without spatial attention (strictly local, the choice the
#: docs recommend for patch-trained models; full attention over 128×128 cells would take
#: minutes per sample on a CPU).
SEAM_NET = {
    "width": 8,
    "mults": [1, 2],
    "head_dim": 8,
    "spatial_attention": ["none", "none"],
    "mid_spatial_attention": "none",
}
SEAM_STEPS = 10


def _child(model_dir: str, template: str, tile: int, overlap: int, steps: int) -> None:
    """In a fresh process: sample once and print seconds and peak memory as JSON."""
    import xarray as xr

    model = xd.load(model_dir, device="cpu")
    model.tile(tile or None, overlap)
    tmpl = xr.open_dataarray(template).load()
    before_peak = C.status_kib("VmHWM")
    try:  # reset VmHWM to the current RSS (Linux ≥ 4.0: write 5 to clear_refs)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
    rss = C.status_kib("VmRSS")
    t = time.perf_counter()
    out = model.sample(tmpl, n=1, steps=steps, seed=0, progress=False)
    seconds = time.perf_counter() - t
    peak = C.status_kib("VmHWM")
    result = {
        "seconds": seconds,
        "peak_rss_mib": max(peak or 0, before_peak or 0) / 1024,
        "sample_added_mib": (peak - rss) / 1024 if reset and peak and rss else None,
        "finite": bool(np.isfinite(out.values).all()),
        "torch_threads": torch.get_num_threads(),
    }
    print("RESULT " + json.dumps(result))


def _run_child(model_dir: Path, template: Path, tile: int | None, overlap: int, steps: int):
    cmd = [
        sys.executable, __file__, "--child", str(model_dir), str(template),
        str(tile or 0), str(overlap), str(steps),
    ]  # fmt: skip
    res = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ.copy())
    return json.loads(res.stdout.split("RESULT ", 1)[1])


def _memory(s: dict, tmp: Path) -> dict:
    g, frames = s["grid"], s["frames"]
    data = synthetic_precipitation(nt=4 * frames, ny=g, nx=g, seed=0)
    C.log(f"memory: a small-preset model on {g}×{g} (one training step on 64×64 crops)")
    model = data.diffusion.fit(
        frames=frames, steps=1, batch_size=1, patch=64, progress=False, device="cpu", seed=0
    )
    model.save(tmp / "small")
    data.isel(time=slice(0, frames)).to_netcdf(tmp / "template.nc")
    runs = {}
    for name, tile, overlap in MEMORY_RUNS:
        C.log(f"memory: {name}")
        runs[name] = _run_child(
            tmp / "small", tmp / "template.nc", tile, overlap, s["memory_steps"]
        )
    whole = runs["whole"]
    ratios = {
        name: {
            "peak_rss": whole["peak_rss_mib"] / r["peak_rss_mib"],
            "sample_added": (
                whole["sample_added_mib"] / r["sample_added_mib"]
                if whole["sample_added_mib"] and r["sample_added_mib"]
                else None
            ),
            "seconds_tiled_over_whole": r["seconds"] / whole["seconds"],
        }
        for name, r in runs.items()
        if name != "whole"
    }
    return {
        "model": {
            "preset": "small",
            "parameters": sum(p.numel() for p in model.module.parameters()),
            "weights": "after one training step (output layer near zero: cost as trained)",
        },
        "grid": [g, g],
        "frames": frames,
        "members": 1,
        "sampler": "dpmpp_2m (one network evaluation per step)",
        "sampler_steps": s["memory_steps"],
        "runs": runs,
        "whole_over_tiled": ratios,
    }


def _neighbour_differences(values: np.ndarray, axis: int) -> np.ndarray:
    """Mean |v[k + 1] − v[k]| over members, times and the other axis, per pair k."""
    axis = axis % values.ndim
    d = np.abs(np.diff(values, axis=axis))
    other = tuple(a for a in range(values.ndim) if a != axis)
    return np.nanmean(d, axis=other)


def seam_ratios(values: np.ndarray, edges: list[int]) -> dict[str, float]:
    """Mean |gradient| across tile edges / across all other pairs, per axis (1: no seam)."""
    pairs = [e - 1 for e in edges]
    out = {}
    for name, axis in (("columns", -1), ("rows", -2)):
        diff = _neighbour_differences(values, axis)
        out[name] = float(diff[pairs].mean() / np.delete(diff, pairs).mean())
    return out


def tile_edges(n: int, tile: int, overlap: int) -> list[int]:
    """Cells where a tile starts or ends inside an axis of ``n`` cells."""
    starts = tile_starts(n, tile, overlap)
    return sorted({*starts[1:], *(s + tile for s in starts[:-1])})


def _seams(s: dict) -> dict:
    g, frames = s["grid"], s["frames"]
    data = synthetic_precipitation(nt=300, ny=g, nx=g, seed=2)
    C.log(f"seams: fitting a tiny model on 32×32 crops of {g}×{g}, {s['seam_fit_steps']} steps")
    t = time.perf_counter()
    model = data.diffusion.fit(
        frames=frames,
        steps=s["seam_fit_steps"],
        batch_size=4,
        lr=2e-3,
        warmup=10,
        patch=32,
        transform="sqrt",
        net=SEAM_NET,
        progress=False,
        device="cpu",
        seed=0,
    )
    fit_seconds = time.perf_counter() - t
    tmpl = data.isel(time=slice(0, frames))
    runs = {}
    for name, tile, overlap in SEAM_RUNS:
        C.log(f"seams: {name}")
        model.tile(tile, overlap)
        t = time.perf_counter()
        out = model.sample(tmpl, n=s["seam_members"], steps=SEAM_STEPS, seed=3, progress=False)
        seconds = time.perf_counter() - t
        scored = (64, 16) if tile is None else (tile, overlap)
        edges = tile_edges(g, *scored)
        runs[name] = {
            "tile": tile,
            "overlap": overlap,
            "edges_scored": edges,
            "seam_ratio": seam_ratios(out.values, edges),
            "seconds": seconds,
        }
    model.tile(None)
    return {
        "model": {"net": SEAM_NET, "fit_steps": s["seam_fit_steps"], "patch": 32},
        "fit_seconds": fit_seconds,
        "grid": [g, g],
        "frames": frames,
        "members": s["seam_members"],
        "sampler_steps": SEAM_STEPS,
        "statistic": (
            "mean |difference of neighbouring columns (rows)| at the pairs straddling tile "
            "edges / the same over all other pairs; 1 = no seam; 'whole' scored at the "
            "edges of tile 64 overlap 16"
        ),
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="128×128, shorter runs")
    parser.add_argument("--out", type=Path, default=None, help="where to write the JSON")
    parser.add_argument("--child", nargs=5, metavar="ARG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model_dir, template, tile, overlap, steps = args.child
        _child(model_dir, template, int(tile), int(overlap), int(steps))
        return
    s = SETTINGS["quick" if args.quick else "full"]
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        memory = _memory(s, Path(d))
    seams = _seams(s)
    result = C.rounded(
        {
            "benchmark": "tiling",
            "quick": args.quick,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "memory": memory,
            "seams": seams,
            "total_seconds": time.perf_counter() - t,
            "machine": C.machine(),
        }
    )
    text = json.dumps(result, indent=1)
    print(text)
    out = args.out if args.out is not None else (None if args.quick else RESULTS)
    if out is not None:
        out.write_text(text + "\n")
        C.log(f"written to {out}")


if __name__ == "__main__":
    main()
