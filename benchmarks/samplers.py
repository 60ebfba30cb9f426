"""Few-step samplers against 1000-step ancestral sampling on one trained model.

For each sampler (ddim, dpmpp_2m, dpmpp_2m_sde, dpmpp_3m), each λ grid (``"t"`` and
``"lambda_trunc"``) and each number of steps, an ensemble is drawn from the SAME initial
noise as the first ancestral ensemble (member k of seed s starts from the same z_1 in
every run) and judged, like the ancestral ones, against a large held-out reference set of
real windows by the spatial and temporal PSD log error, the QQ relative error and the mean
absolute mean-normalised bias (:mod:`xdiffusion.diagnostics`).

Noise floor: two independent 1000-step ancestral ensembles, each against the reference and
against each other, and, for the spread of each metric at this ensemble size, disjoint sets
of real held-out windows of the same size (a perfect generator) against the reference and
against each other. A setting is *within the floor* when for every metric

    m(setting, reference) ≤ max(m(ancestral A, ref), m(ancestral B, ref)) + 2 sd_real
    m(setting, ancestral A) ≤ m(ancestral B, ancestral A) + 2 sd_real-pairs

The recommended default is the setting with the fewest network evaluations that is within
the floor and stays within it at the next larger number of steps.

Because the floor of a few dozen heavy-tailed windows is wide, the deterministic samplers
(ddim with η = 0, dpmpp_2m, dpmpp_3m) are also measured against the converged solution of
the same probability-flow ODE from the same initial noise (dpmpp_3m, 200 λ steps):
``ode_relative_rmse`` = RMS(x − x_ODE) / RMS(x_ODE), a paired error with almost no sampling
noise, which shows the discretisation error that the distribution metrics cannot resolve.

Network evaluations are batched here (one forward pass per step for the whole ensemble);
the library evaluates members one by one on CPU for bit-reproducibility, which is slower
per sample: ``library_seconds_per_sample`` reports that path for the recommendation.

Usage::

    python benchmarks/samplers.py [--quick | --full] [--members 16] [--steps 10,20,30,50,100]

Prints one JSON document to stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import xdiffusion as xd
from xdiffusion.core.diffusion import make_denoiser
from xdiffusion.core.noise import MemberNoise
from xdiffusion.core.samplers import run_sampler

try:
    from benchmarks import _common as C
except ImportError:  # run as a script: benchmarks/ is on sys.path
    import _common as C

SAMPLERS = ("ddim", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m")
SPACINGS = ("t", "lambda_trunc")
DETERMINISTIC = ("ddim", "dpmpp_2m", "dpmpp_3m")  # ddim at its default η = 0
ODE_STEPS = 200


def generate(
    model: xd.DiffusionModel,
    sampler: str,
    steps: int,
    spacing: str,
    n: int,
    seed: int,
    batch: int,
) -> tuple[np.ndarray, float, int]:
    """(n, F, H, W) physical samples, wall seconds, network evaluations (per sample)."""
    net = model.module.net
    den = make_denoiser(net)
    shape = (len(model.variables), model.frames, *model.grid)
    out = []
    t = time.perf_counter()
    with C.count_evaluations(model) as counts, torch.no_grad():
        for b0 in range(0, n, batch):
            members = range(b0, min(n, b0 + batch))
            noise = MemberNoise(seed, members, shape, stream=0)  # as the library's window 0
            z = run_sampler(
                sampler, den, noise(), model.schedule, steps, noise=noise, spacing=spacing
            )
            out.append(model.decode(z)[:, 0].numpy())
    seconds = time.perf_counter() - t
    return np.concatenate(out), seconds, counts["forward"] // n


def real_floor(sets: list, reference) -> dict:
    """Mean and sd of each metric for real sets vs the reference and for pairs of sets."""
    vs_ref = [C.quality(s, reference) for s in sets]
    pairs = [C.quality(a, b) for a, b in zip(sets[::2], sets[1::2])]
    out = {}
    for name, rows in (("vs_reference", vs_ref), ("pairs", pairs)):
        out[name] = {
            m: {
                "mean": float(np.mean([r[m] for r in rows])),
                "sd": float(np.std([r[m] for r in rows], ddof=1)) if len(rows) > 1 else 0.0,
            }
            for m in C.METRICS
        }
        out[name]["sets"] = len(rows)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smoke run (about a minute)")
    size.add_argument(
        "--full", action="store_true", help="the small preset at 32x32x8 (hours on CPU; use a GPU)"
    )
    ap.add_argument("--members", type=int, default=None, help="ensemble size per setting")
    ap.add_argument("--steps", default=None, help="comma-separated step counts")
    ap.add_argument(
        "--reference-steps",
        type=int,
        default=None,
        help="steps of the ancestral reference sampler (default 1000)",
    )
    ap.add_argument("--batch", type=int, default=32, help="members per network call")
    ap.add_argument("--progress", action="store_true", help="training progress bar")
    args = ap.parse_args(argv)

    spec = C.QUICK if args.quick else C.FULL if args.full else C.DEFAULT
    n = args.members or (4 if args.quick else 128)
    steps_list = [
        int(s) for s in (args.steps or ("5,10" if args.quick else "10,20,30,50,100")).split(",")
    ]
    ref_steps = args.reference_steps or (100 if args.quick else 1000)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    with C.stopwatch(timings, "model_seconds"):
        model, info = C.get_model(spec, progress=args.progress)
    f = spec.frames
    held = spec.data(f * (600 if not args.quick else 120), spec.seed + 1000)
    template = held.isel(time=slice(0, f))
    ref_windows = C.windows(held, f)
    reference = C.ensemble(ref_windows, template)
    # Disjoint real sets of n windows from a third series: the floor of a perfect generator.
    n_real = 10 if args.quick else 20
    real = C.windows(spec.data(f * n * n_real, spec.seed + 2000), f)
    real_sets = [C.ensemble(real[i * n : (i + 1) * n], template) for i in range(n_real)]
    floor = {"real": real_floor(real_sets, reference)}

    anc = {}
    for name, seed in (("A", 1), ("B", 2)):
        C.log(f"ancestral {name}: {n} members x {ref_steps} steps")
        vals, sec, nfe = generate(model, "ancestral", ref_steps, "t", n, seed, args.batch)
        timings[f"ancestral_{name}_seconds"] = sec
        anc[name] = {"ens": C.ensemble(vals, template), "seconds_per_sample": sec / n, "nfe": nfe}
    floor["ancestral"] = {
        "steps": ref_steps,
        "nfe": anc["A"]["nfe"],
        "seconds_per_sample": anc["A"]["seconds_per_sample"],
        "A_vs_reference": C.quality(anc["A"]["ens"], reference),
        "B_vs_reference": C.quality(anc["B"]["ens"], reference),
        "B_vs_A": C.quality(anc["B"]["ens"], anc["A"]["ens"]),
    }
    fa = floor["ancestral"]
    rf = floor["real"]
    threshold = {
        "vs_reference": {
            m: max(fa["A_vs_reference"][m], fa["B_vs_reference"][m])
            + 2 * rf["vs_reference"][m]["sd"]
            for m in C.METRICS
        },
        "vs_ancestral": {m: fa["B_vs_A"][m] + 2 * rf["pairs"][m]["sd"] for m in C.METRICS},
    }

    C.log(f"converged ODE solution: {n} members x {ODE_STEPS} steps of dpmpp_3m")
    ode, sec, _ = generate(model, "dpmpp_3m", ODE_STEPS, "lambda_trunc", n, 1, args.batch)
    timings["ode_seconds"] = sec
    ode_rms = float(np.sqrt(np.mean(ode.astype(np.float64) ** 2)))

    results = []
    for sampler in SAMPLERS:
        for spacing in SPACINGS:
            for steps in steps_list:
                vals, sec, nfe = generate(model, sampler, steps, spacing, n, 1, args.batch)
                ens = C.ensemble(vals, template)
                row = {
                    "sampler": sampler,
                    "spacing": spacing,
                    "steps": steps,
                    "nfe": nfe,
                    "seconds_per_sample": sec / n,
                    "vs_reference": C.quality(ens, reference),
                    "vs_ancestral": C.quality(ens, anc["A"]["ens"]),
                    "ode_relative_rmse": (
                        float(np.sqrt(np.mean((vals - ode.astype(np.float64)) ** 2))) / ode_rms
                        if sampler in DETERMINISTIC
                        else None
                    ),
                }
                row["within_floor"] = all(
                    row[k][m] <= threshold[k][m] for k in threshold for m in C.METRICS
                )
                results.append(row)
                C.log(
                    f"{sampler:13s} {spacing:12s} {steps:4d}  within floor: "
                    f"{row['within_floor']}  {sec / n:.2f} s/sample"
                )
                timings["settings_seconds"] = timings.get("settings_seconds", 0.0) + sec

    default = choose(results, steps_list)
    if default is not None:
        # The library path (members one at a time on CPU) for the recommended setting.
        t = time.perf_counter()
        template.diffusion.sample(
            model, n=2, sampler=default["sampler"], steps=default["steps"], seed=1, progress=False
        )
        default = {
            **default,
            "library_seconds_per_sample": (time.perf_counter() - t) / 2,
            "evaluations_fewer_than_ancestral": ref_steps / default["nfe"],
        }
    timings["total_seconds"] = time.perf_counter() - t0
    return C.rounded(
        {
            "benchmark": "samplers",
            "machine": C.machine(),
            "model": info,
            "members": n,
            "frames_per_member": f,
            "reference_windows": len(ref_windows),
            "ode_reference": {"sampler": "dpmpp_3m", "spacing": "lambda_trunc", "steps": ODE_STEPS},
            "noise_floor": floor,
            "threshold": threshold,
            "results": results,
            "recommended": default,
            "timings": timings,
        }
    )


def choose(results: list[dict], steps_list: list[int]) -> dict | None:
    """Fewest evaluations within the floor, also within it at the next larger step count."""
    ok = {(r["sampler"], r["spacing"], r["steps"]): r["within_floor"] for r in results}
    best = None
    for r in results:
        key = (r["sampler"], r["spacing"])
        larger = [s for s in steps_list if s > r["steps"]]
        stable = not larger or ok[(*key, min(larger))]
        if r["within_floor"] and stable and (best is None or r["nfe"] < best["nfe"]):
            best = r
    if best is None:
        return None
    return {k: best[k] for k in ("sampler", "spacing", "steps", "nfe", "seconds_per_sample")}


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
