"""Does the input transform matter? "none", "sqrt" and "learned" (Herbert 2023, §4.2–4.3).

On synthetic hourly precipitation (:func:`xdiffusion.datasets.synthetic_precipitation`),
the same small model is trained with each transform for the same number of steps on the
first 80 % of the series; the rest is held out. Against the held-out data it reports:

- ``drizzle_ratio``: frequency of 0.05–0.2 mm/h values in samples / in the reference
  (the seed's Figure 4.2a failure of the untransformed model: ~10× too much drizzle);
- ``dry_fraction``: share of values below 0.01 mm/h (reference alongside);
- ``qq_relative_error``: (sample − reference) / reference quantile at 0.9, 0.99, 0.999
  (:func:`xdiffusion.diagnostics.qq`);
- ``mean_abs_mnb``: mean absolute mean-normalised bias per cell
  (:func:`xdiffusion.diagnostics.mean_normalised_bias`; seed: 0.31 sqrt, 0.23 learned);
- ``bits_per_dim``: data-space bound on the held-out negative log-likelihood,
  :func:`xdiffusion.likelihood.nll` with ``dry_threshold=0.01`` (values below 0.01 mm/h are
  one discrete class: exact zeros have no density), at λ_rec = 10 (``--lambda-rec-max``
  adds λ_rec = λmax = 30).

Prints one JSON document to stdout; progress goes to stderr.

Usage::

    python benchmarks/transforms.py            # default: ~10 min on two idle CPU cores
    python benchmarks/transforms.py --quick    # smoke run, well under a minute
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time

import numpy as np
import torch
import xarray as xr

import xdiffusion
from xdiffusion.datasets import synthetic_precipitation
from xdiffusion.diagnostics import mean_normalised_bias, qq

try:
    from benchmarks._common import LEAN_NET
except ImportError:  # run as a script: benchmarks/ is on sys.path
    from _common import LEAN_NET

DRIZZLE = (0.05, 0.2)  # mm/h
DRY = 0.01  # mm/h
QUANTILES = (0.9, 0.99, 0.999)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _fraction(values: np.ndarray, lo: float, hi: float) -> float:
    v = values[np.isfinite(values)]
    return float(np.mean((v >= lo) & (v < hi)))


def evaluate(
    model: xdiffusion.DiffusionModel,
    held_out: xr.DataArray,
    *,
    members: int,
    sampling_steps: int,
    n_lambda: int,
    seed: int,
    lambda_rec_max: bool = False,
) -> dict:
    """Sample ``members`` windows and score them (and the likelihood) against ``held_out``."""
    t0 = time.perf_counter()
    template = held_out.isel(time=slice(0, model.frames))
    ens = model.sample(template, n=members, steps=sampling_steps, seed=seed, progress=False)
    t_sample = time.perf_counter() - t0
    s, r = ens.values.ravel(), held_out.values.ravel()
    q = qq(ens, held_out, quantiles=list(QUANTILES))
    mnb = mean_normalised_bias(ens, held_out)
    out = {
        "drizzle_ratio": _fraction(s, *DRIZZLE) / _fraction(r, *DRIZZLE),
        "dry_fraction": _fraction(s, -math.inf, DRY),
        "qq_relative_error": {str(k): float(v) for k, v in zip(QUANTILES, q.relative_error.values)},
        "qq_sample": {str(k): float(v) for k, v in zip(QUANTILES, q["sample"].values)},
        "mean_abs_mnb": float(mnb.mean_abs_mean_normalised_bias),
        "sample_max": float(np.nanmax(s)),
    }
    t0 = time.perf_counter()
    for lam_rec in (10.0, None) if lambda_rec_max else (10.0,):
        res = model.nll(
            held_out, n_lambda=n_lambda, seed=seed, lambda_rec=lam_rec, dry_threshold=DRY
        )
        key = "bits_per_dim" + ("" if lam_rec is not None else "_lambda_rec_max")
        out[key] = float(res.bits_per_dim)
        out[key + "_se"] = float(res.standard_error)
        out[key + "_terms"] = {
            k: float(res[k])
            for k in (
                "bits_per_dim_diffusion",
                "diffusion",
                "reconstruction",
                "log_det",
                "dequantization",
            )
        }
    out["seconds_sample"] = round(t_sample, 1)
    out["seconds_nll"] = round(time.perf_counter() - t0, 1)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny smoke run")
    ap.add_argument("--nt", type=int, default=3000, help="hours of synthetic data")
    ap.add_argument("--size", type=int, default=32, help="grid cells along y and x")
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--steps", type=int, default=300, help="training steps per transform")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--members", type=int, default=32, help="sampled windows per model")
    ap.add_argument("--sampling-steps", type=int, default=20)
    ap.add_argument("--n-lambda", type=int, default=16)
    ap.add_argument(
        "--lambda-rec-max", action="store_true", help="also the bound at λ_rec = λmax (slow)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--transforms", default="none,sqrt,learned")
    args = ap.parse_args(argv)
    if args.quick:
        args.nt, args.size, args.frames, args.steps = 200, 16, 4, 5
        args.batch, args.width, args.members, args.sampling_steps, args.n_lambda = 2, 8, 2, 3, 2
    # a lean U-Net: temporal attention only, so that CPU training is affordable
    net = {"width": args.width, **LEAN_NET}
    _log(f"data: {args.nt} h of {args.size}x{args.size}")
    da = synthetic_precipitation(nt=args.nt, ny=args.size, nx=args.size, seed=args.seed)
    n_train = int(0.8 * args.nt)
    train, held_out = da.isel(time=slice(0, n_train)), da.isel(time=slice(n_train, None))
    ref = held_out.values.ravel()
    result: dict = {
        "benchmark": "transforms",
        "xdiffusion": xdiffusion.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "settings": {k: v for k, v in vars(args).items()},
        "net": net,
        "reference": {
            "drizzle_fraction": _fraction(ref, *DRIZZLE),
            "dry_fraction": _fraction(ref, -math.inf, DRY),
            "quantiles": {str(k): float(v) for k, v in zip(QUANTILES, np.quantile(ref, QUANTILES))},
            "max": float(ref.max()),
        },
        "models": {},
    }
    for name in args.transforms.split(","):
        _log(f"[{name}] training {args.steps} steps")
        t0 = time.perf_counter()
        model = train.diffusion.fit(
            frames=args.frames,
            transform=name,
            steps=args.steps,
            batch_size=args.batch,
            lr=args.lr,
            warmup=min(50, args.steps // 5),
            val_fraction=0.0,
            seed=args.seed,
            device="cpu",
            progress=False,
            net=net,
        )
        t_fit = time.perf_counter() - t0
        _log(f"[{name}] trained in {t_fit:.0f} s; evaluating")
        res = evaluate(
            model,
            held_out,
            members=args.members,
            sampling_steps=args.sampling_steps,
            n_lambda=args.n_lambda,
            seed=args.seed,
            lambda_rec_max=args.lambda_rec_max,
        )
        res["seconds_fit"] = round(t_fit, 1)
        res["final_loss"] = float(np.mean(model.history_dict.get("loss", [np.nan])[-20:]))
        if model.codec[0].has_learned:
            x, h = model.codec[0].learned.curve(9)
            res["learned_curve"] = {f"{a:.2f}": round(float(b), 4) for a, b in zip(x, h)}
        result["models"][name] = res
        _log(f"[{name}] {json.dumps({k: v for k, v in res.items() if 'terms' not in k})}")
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
