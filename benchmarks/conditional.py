"""Conditional tasks of one trained model against simple baselines.

All through the public API (``forecast``, ``interpolate``, ``downscale`` on DataArrays), on
the cached ``CONDITIONAL`` benchmark model of :mod:`_common` (16×16 cells of 25 km, 8
frames, rain moving 2 cells per hour) and a held-out synthetic series:

- **forecast**: CRPS (:func:`xdiffusion.diagnostics.crps`) and RMSE of the ensemble mean
  by lead, against climatology (random training frames as an ensemble; its mean for RMSE)
  and persistence (the last observed frame), for guidance and imputation and for a
  deterministic (dpmpp_2m) and a stochastic (dpmpp_2m_sde) sampler;
- **interpolation**: RMSE of the ensemble mean over gaps of 1…6 frames inside a window,
  against linear interpolation in time, and CRPS;
- **coherence** (guidance vs imputation): the mean squared jump from the last known frame
  to the first generated one divided by the same jump in the truth (1 is coherent; the
  seed reports imputation as incoherent);
- **downscaling** (4×): fine-scale spatial PSD log error (wavenumbers above the coarse
  grid's Nyquist) against the truth, for several guidance weights and for bicubic
  interpolation, the relative block-mean residual before the final projection, and CRPS;
- network evaluations (forward passes per member and output frame; guidance adds a
  backward pass to each).

Usage::

    python benchmarks/conditional.py [--quick] [--cases 6] [--members 8]

Prints one JSON document to stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import xarray as xr
from scipy.ndimage import zoom

from xdiffusion import diagnostics as dg
from xdiffusion.core.conditioning import block_mean, project_block_means

try:
    from benchmarks import _common as C
except ImportError:  # run as a script: benchmarks/ is on sys.path
    import _common as C


def _crps(ens: np.ndarray, obs: np.ndarray) -> np.ndarray:
    """Mean CRPS over all axes but the lead axis 1 of obs; ens has members first."""
    dims = [f"d{i}" for i in range(obs.ndim)]
    e = xr.DataArray(ens, dims=[dg.MEMBER_DIM, *dims])
    o = xr.DataArray(obs, dims=dims)
    return dg.crps(e, o).mean([d for d in dims if d != "d1"]).values


def _rmse(pred: np.ndarray, obs: np.ndarray) -> np.ndarray:
    """RMSE by axis 1 (lead/frame), over every other axis."""
    axes = tuple(i for i in range(obs.ndim) if i != 1)
    return np.sqrt(np.mean((pred - obs) ** 2, axis=axes))


def _jump(series: np.ndarray, a: int, b: int) -> float:
    """Mean squared change between frames a and b of (..., T, Y, X)."""
    return float(np.mean((series[..., b, :, :] - series[..., a, :, :]) ** 2))


def forecast_task(model, held, train, starts, *, ctx, lead, n, settings, seed=1) -> dict:
    """Scores by lead for each (method, sampler, steps) and for the two baselines."""
    truth = np.stack([held.values[s + ctx : s + ctx + lead] for s in starts])  # (K, L, Y, X)
    last = np.stack([held.values[s + ctx - 1] for s in starts])
    rng = np.random.default_rng(0)
    clim = train.values[rng.choice(train.sizes["time"], 64, replace=False)]  # (64, Y, X)
    clim_ens = np.broadcast_to(clim[:, None, None], (64, *truth.shape))
    pers = np.broadcast_to(last[:, None], truth.shape)
    out = {
        "cases": len(starts),
        "members": n,
        "context": ctx,
        "lead": lead,
        "climatology": {
            "crps": _crps(clim_ens, truth),
            "rmse": _rmse(np.broadcast_to(train.values.mean(0), truth.shape), truth),
        },
        "persistence": {"crps": _crps(pers[None], truth), "rmse": _rmse(pers, truth)},
        "runs": [],
    }
    for method, sampler, steps in settings:
        ens, seconds = [], 0.0
        with C.count_evaluations(model) as counts:
            for s in starts:
                hist = held.isel(time=slice(s, s + ctx))
                t = time.perf_counter()
                fc = hist.diffusion.forecast(
                    model,
                    lead=lead,
                    n=n,
                    method=method,
                    sampler=sampler,
                    steps=steps,
                    seed=seed,
                    progress=False,
                )
                seconds += time.perf_counter() - t
                ens.append(fc.values)
        ens = np.stack(ens, 1)  # (n, K, L, Y, X)
        jump = np.mean([_jump(np.concatenate([last[None, :, None].repeat(n, 0), ens], 2), 0, 1)])
        jump_truth = _jump(np.concatenate([last[:, None], truth], 1), 0, 1)
        out["runs"].append(
            {
                "method": method,
                "sampler": sampler,
                "steps": steps,
                "crps": _crps(ens, truth),
                "rmse": _rmse(ens.mean(0), truth),
                "spread": np.sqrt(np.mean(ens.var(0, ddof=1), axis=(0, 2, 3))),
                "jump_ratio_lead1": jump / jump_truth,
                "forward_per_member_frame": counts["forward"] / (n * lead * len(starts)),
                "seconds_per_member_frame": seconds / (n * lead * len(starts)),
            }
        )
        r = out["runs"][-1]
        C.log(f"forecast {method:10s} {sampler:13s} {steps}: crps {np.round(r['crps'], 3)}")
    return out


def interpolation_task(model, held, starts, *, gaps, n, settings, seed=1) -> dict:
    """Gap-filling scores by gap length against linear interpolation in time."""
    f = model.frames
    out = {"cases": len(starts), "members": n, "gaps": []}
    for g in gaps:
        a = (f - g) // 2
        truth = np.stack([held.values[s : s + f] for s in starts])  # (K, F, Y, X)
        w = (np.arange(1, g + 1) / (g + 1))[None, :, None, None]
        lin = truth[:, a - 1 : a] * (1 - w) + truth[:, a + g : a + g + 1] * w
        tgap = truth[:, a : a + g]
        row = {"gap": g, "linear_rmse": float(np.sqrt(np.mean((lin - tgap) ** 2))), "runs": []}
        for method, sampler, steps in settings:
            ens = []
            with C.count_evaluations(model) as counts:
                for s in starts:
                    gappy = held.isel(time=slice(s, s + f)).copy()
                    gappy[a : a + g] = np.nan
                    filled = gappy.diffusion.interpolate(
                        model,
                        n=n,
                        method=method,
                        sampler=sampler,
                        steps=steps,
                        seed=seed,
                        progress=False,
                    )
                    ens.append(filled.values)
            ens = np.stack(ens, 1)  # (n, K, F, Y, X)
            gen = ens[:, :, a : a + g]
            jump = (_jump(ens, a - 1, a) + _jump(ens, a + g - 1, a + g)) / 2
            jump_truth = (_jump(truth, a - 1, a) + _jump(truth, a + g - 1, a + g)) / 2
            row["runs"].append(
                {
                    "method": method,
                    "sampler": sampler,
                    "steps": steps,
                    "rmse_ensemble_mean": float(np.sqrt(np.mean((gen.mean(0) - tgap) ** 2))),
                    "rmse_member": float(np.sqrt(np.mean((gen - tgap[None]) ** 2))),
                    "crps": float(_crps(gen, tgap).mean()),
                    "jump_ratio": jump / jump_truth,
                    "forward_per_member_frame": counts["forward"] / (n * g * len(starts)),
                }
            )
            r = row["runs"][-1]
            C.log(
                f"interpolate gap {g} {method:10s} {sampler:13s}: rmse "
                f"{r['rmse_ensemble_mean']:.3f} (linear {row['linear_rmse']:.3f})"
            )
        out["gaps"].append(row)
    return out


def _fine_psd_error(fields: np.ndarray, truth_psd: xr.DataArray, template, kmin: float):
    psd = dg.spatial_psd(C.ensemble(fields.reshape(-1, *fields.shape[-3:]), template))
    sel = psd.wavenumber > kmin
    ratio = np.log10(psd[sel].values / truth_psd[sel].values)
    return float(np.mean(np.abs(ratio))), float(np.mean(ratio))


def downscaling_task(model, held, starts, *, factor, n, weights, sampler, steps, seed=1):
    """Guidance weight sweep for 4x downscaling against bicubic interpolation."""
    f = model.frames
    template = held.isel(time=slice(0, f))
    truth = np.stack([held.values[s : s + f] for s in starts])  # (K, F, Y, X)
    coarse = block_mean(torch.from_numpy(truth), factor).numpy()
    truth_psd = dg.spatial_psd(C.ensemble(truth, template))
    dx = float(np.diff(held.x.values[:2])[0])
    kmin = 1.0 / (2 * factor * dx)  # the coarse grid's Nyquist wavenumber
    bic = np.clip(
        zoom(coarse, (1, 1, factor, factor), order=3, grid_mode=True, mode="nearest"), 0, None
    )
    out = {
        "cases": len(starts),
        "members": n,
        "factor": factor,
        "sampler": sampler,
        "steps": steps,
        "fine_wavenumber_above": kmin,
    }
    e, b = _fine_psd_error(bic, truth_psd, template, kmin)
    out["bicubic"] = {
        "fine_psd_log_error": e,
        "fine_psd_log_bias": b,
        "rmse": float(np.sqrt(np.mean((bic - truth) ** 2))),
    }
    out["runs"] = []
    for w in weights:
        raw = []
        seconds = 0.0
        with C.count_evaluations(model) as counts:
            for k, s in enumerate(starts):
                ys = held.isel(time=slice(s, s + f)).coarsen(y=factor, x=factor).mean()
                t = time.perf_counter()
                fine = ys.diffusion.downscale(
                    model,
                    n=n,
                    factor=factor,
                    guidance_weight=w,
                    project=False,
                    sampler=sampler,
                    steps=steps,
                    seed=seed,
                    progress=False,
                )
                seconds += time.perf_counter() - t
                raw.append(fine.values)
                np.testing.assert_allclose(ys.values, coarse[k], rtol=1e-5, atol=1e-6)
        raw = np.stack(raw, 1)  # (n, K, F, Y, X)
        y = torch.from_numpy(coarse)[None].expand(n, *coarse.shape)
        resid = block_mean(torch.from_numpy(raw), factor).numpy() - coarse[None]
        proj = (
            project_block_means(
                torch.from_numpy(raw).flatten(0, 1)[:, None],
                y.flatten(0, 1)[:, None],
                factor,
                [0.0],
                [float(model.engine.data_scale()[0])],
            )[:, 0]
            .reshape(raw.shape)
            .numpy()
        )
        e, bias = _fine_psd_error(proj, truth_psd, template, kmin)
        e_raw, _ = _fine_psd_error(raw, truth_psd, template, kmin)
        out["runs"].append(
            {
                "guidance_weight": w,
                "block_residual_before_projection": float(
                    np.sqrt(np.mean(resid**2)) / np.sqrt(np.mean(coarse**2))
                ),
                "fine_psd_log_error": e,
                "fine_psd_log_bias": bias,
                "fine_psd_log_error_before_projection": e_raw,
                "rmse_ensemble_mean": float(np.sqrt(np.mean((proj.mean(0) - truth) ** 2))),
                "crps": float(_crps(proj, truth).mean()),
                "forward_per_member_frame": counts["forward"] / (n * f * len(starts)),
                "seconds_per_member_frame": seconds / (n * f * len(starts)),
            }
        )
        r = out["runs"][-1]
        C.log(
            f"downscale w={w}: residual {r['block_residual_before_projection']:.3f}, "
            f"fine PSD error {e:.3f} (bicubic {out['bicubic']['fine_psd_log_error']:.3f})"
        )
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run")
    ap.add_argument("--cases", type=int, default=None, help="start times per task")
    ap.add_argument("--members", type=int, default=None, help="ensemble size")
    ap.add_argument(
        "--steps",
        type=int,
        default=None,
        help="sampler steps (default: each sampler's registry default)",
    )
    ap.add_argument("--tasks", default="forecast,interpolate,downscale")
    args = ap.parse_args(argv)

    spec = C.QUICK if args.quick else C.CONDITIONAL
    k = args.cases or (2 if args.quick else 6)
    n = args.members or (3 if args.quick else 8)
    steps = args.steps or (4 if args.quick else None)
    tasks = args.tasks.split(",")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    with C.stopwatch(timings, "model_seconds"):
        model, info = C.get_model(spec)
    f = model.frames
    held = spec.data(f * 200, spec.seed + 1000)
    train = spec.data(spec.nt_train, spec.seed)
    starts = [int(s) for s in np.linspace(0, held.sizes["time"] - 3 * f, k).round()]
    samplers = ("dpmpp_2m", "dpmpp_2m_sde")
    settings = [(m, s, steps) for m in ("guidance", "imputation") for s in samplers]
    result = {"benchmark": "conditional", "machine": C.machine(), "model": info}
    if "forecast" in tasks:
        with C.stopwatch(timings, "forecast_seconds"):
            result["forecast"] = forecast_task(
                model, held, train, starts, ctx=f // 2, lead=f, n=n, settings=settings
            )
    if "interpolate" in tasks:
        gaps = [g for g in (1, 2, 4, 6) if g <= f - 2]
        with C.stopwatch(timings, "interpolate_seconds"):
            result["interpolate"] = interpolation_task(
                model, held, starts, gaps=gaps, n=n, settings=settings
            )
    if "downscale" in tasks:
        with C.stopwatch(timings, "downscale_seconds"):
            result["downscale"] = downscaling_task(
                model,
                held,
                starts,
                factor=4,
                n=n,
                weights=(0.0, 0.1875, 1.0, 3.0, 10.0),
                sampler=None,
                steps=steps,
            )
    timings["total_seconds"] = time.perf_counter() - t0
    result["timings"] = timings
    return C.rounded(_plain(result))


def _plain(obj):
    if isinstance(obj, np.ndarray):
        return [float(v) for v in obj]
    if isinstance(obj, np.floating | np.integer):
        return float(obj)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
