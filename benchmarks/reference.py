"""The shipped reference model ``synthetic-precip`` against held-out synthetic data.

- Unconditional quality: ``--members`` generated windows (each on its own held-out
  template, one member each) against as many real held-out windows — spatial and temporal
  PSD log-error, QQ relative error, mean |mean-normalised bias| — next to the same metrics
  between two independent sets of real windows (the noise floor), and the ratio.
- Conditional tasks (``benchmarks/conditional.py``'s, on the reference model): forecast
  CRPS vs climatology and persistence, gap filling RMSE vs linear interpolation, 4×
  downscaling fine-scale PSD error vs bicubic.

Prints one JSON document; ``--figures DIR`` also writes the report figure. Run alone, one
torch thread: ``OMP_NUM_THREADS=1 python benchmarks/reference.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C
import conditional

import xdiffusion as xd
from xdiffusion.pretrained import RECIPES, reference_data

#: Held-out data seeds (the model was trained on seed 0).
GENERATED_SEED, REAL_SEEDS = 101, (102, 103)


def _windows(series: xr.DataArray, count: int, frames: int) -> xr.DataArray:
    """``count`` non-overlapping windows of ``series`` as (realization, time, y, x)."""
    values = np.stack([series.values[i * frames : (i + 1) * frames] for i in range(count)])
    return C.ensemble(values, series.isel(time=slice(0, frames)))


def unconditional(model: xd.DiffusionModel, members: int, steps: int | None) -> dict:
    f = model.frames
    real = [_windows(reference_data(members * f, seed=s), members, f) for s in REAL_SEEDS]
    template = reference_data(members * f, seed=GENERATED_SEED)
    generated = []
    for i in range(members):  # one window per held-out template, member seed i
        tmpl = template.isel(time=slice(i * f, (i + 1) * f))
        out = tmpl.diffusion.sample(model, n=1, seed=i, steps=steps, progress=False)
        generated.append(out.values[0])
    gen = C.ensemble(np.stack(generated), template.isel(time=slice(0, f)))
    scores = C.quality(gen, real[0])
    floor = C.quality(real[1], real[0])
    return {
        "generated_vs_real": scores,
        "real_vs_real_floor": floor,
        "ratio": {k: scores[k] / floor[k] if floor[k] else None for k in C.METRICS},
        "members": members,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--members", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default)")
    parser.add_argument("--figures", default=None, help="write report.png here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    members = args.members or (8 if args.quick else 64)
    model = xd.load_pretrained("synthetic-precip")
    t0 = time.perf_counter()
    result: dict = {
        "benchmark": "reference",
        "machine": C.machine(),
        "model": {"name": "synthetic-precip", "recipe": RECIPES["synthetic-precip"]},
    }
    result["unconditional"] = unconditional(model, members, args.steps)
    f = model.frames
    spec = C.CONDITIONAL
    held = reference_data(f * 200, seed=spec.seed + 1000)
    train = reference_data(spec.nt_train, seed=0)
    k, n = (2, 3) if args.quick else (6, 8)
    starts = [int(s) for s in np.linspace(0, held.sizes["time"] - 3 * f, k).round()]
    settings = [("guidance", "dpmpp_2m", args.steps), ("guidance", "dpmpp_2m_sde", args.steps)]
    result["forecast"] = conditional.forecast_task(
        model, held, train, starts, ctx=f // 2, lead=f, n=n, settings=settings
    )
    gaps = [g for g in (1, 2, 4, 6) if g <= f - 2]
    result["interpolate"] = conditional.interpolation_task(
        model, held, starts, gaps=gaps, n=n, settings=settings[:1]
    )
    result["downscale"] = conditional.downscaling_task(
        model, held, starts, factor=4, n=n, weights=(1.0,), sampler=None, steps=args.steps
    )
    result["seconds"] = round(time.perf_counter() - t0, 1)
    if args.figures:
        out = Path(args.figures)
        out.mkdir(parents=True, exist_ok=True)
        tmpl = reference_data(f, seed=GENERATED_SEED)
        ens = tmpl.diffusion.sample(model, n=16, seed=0, progress=False)
        real = _windows(reference_data(16 * f, seed=REAL_SEEDS[0]), 16, f)
        from xdiffusion.plot import plot_report

        fig = plot_report(ens.diffusion.evaluate(real))
        fig.savefig(out / "reference-report.png", dpi=90)
    print(json.dumps(C.rounded(conditional._plain(result)), indent=1))


if __name__ == "__main__":
    main()
