"""Why are a quality model's lagged autocorrelations low? (docs/quality.md)

    OMP_NUM_THREADS=1 python scripts/quality_diagnostics.py \
        benchmarks/.cache/quality-default-stratified-60min [--sdedit]

For a model saved by ``benchmarks/quality.py`` and held-out windows of the default
generator (independent windows of seed 303, as the benchmark's floor sets draw them),
prints JSON:

- ``samples`` / ``real`` / ``reference``: of unconditional samples, of the held-out real
  windows and of the benchmark's reference windows, the share of the
  variance of sqrt(rain) that lies between the windows' means
  (``between_window_share``), quantiles of the windows' mean sqrt(rain) and wet fraction
  (the very dry and very wet windows), the lag-1 autocorrelation of the frame means, and
  the lag-1..3 autocorrelations pooled (the benchmark's), within windows (each window's
  own mean removed first) and of the patterns (each frame's own mean removed: the motion);
- ``mean_response``: at fixed log-SNRs λ, how the denoiser's x̂ follows the window mean:
  the slope of x̂'s window mean on the true one across windows and the ratio of their
  spreads. For Gaussian data the posterior mean's slope is SNR_m / (1 + SNR_m), with
  SNR_m = e^λ n var(m) the signal-to-noise ratio of the window mean over n elements
  (``gaussian_slope``); a network that shrinks every window towards the mean wetness
  falls below it, and its samples' windows are too alike;
- ``sdedit`` (with ``--sdedit``): the lag-1..3 autocorrelations of windows obtained by
  noising real windows to t0 and sampling back from there (DPM-Solver++ 2M on the
  default grid). Where they match the real windows' own, the noise levels below t0 are
  not where coherence is lost.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

import xdiffusion as xd
from xdiffusion.core.diffusion import make_denoiser
from xdiffusion.core.samplers import lambda_steps, sample_dpmpp_2m
from xdiffusion.core.schedule import alpha_sigma

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import quality  # the benchmark's window draws and metrics

#: Log-SNRs at which the denoiser's response to the window mean is measured.
LAMBDAS = (-9.0, -7.0, -5.0, -3.0, -1.0, 1.0)
#: Diffusion times from which real windows are re-generated with ``--sdedit``.
SDEDIT_T0 = (0.4, 0.7, 0.8, 0.9, 1.0)
#: Seed of the held-out windows (neither training, reference nor floor data).
HELD_OUT_SEED = 303
LAGS = (1, 2, 3)
#: Quantiles of the windows' mean sqrt(rain) and wet fraction: the tails are the very dry
#: and very wet windows (regimes) that a model with too little spread between windows lacks.
WINDOW_QUANTILES = (0.05, 0.5, 0.95, 0.99)


def _lag(x: np.ndarray, k: int) -> float:
    a, b = x[:, :-k], x[:, k:]
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def window_stats(values: np.ndarray) -> dict:
    """Between-window share, the tails of the windows' wetness, and pooled / within-window /
    pattern lag correlations of sqrt(rain)."""
    s = np.sqrt(np.clip(values, 0.0, None))  # (R, F, H, W)
    frame_means = s.mean(axis=(2, 3))
    window_means = frame_means.mean(1)
    pooled = s - s.mean()
    within = s - s.mean(axis=(1, 2, 3), keepdims=True)
    # each frame's own mean removed: what is left moves with the rain
    pattern = s - frame_means[:, :, None, None]
    return {
        "between_window_share": quality.between_window_share(values),
        "window_mean_quantiles": dict(
            zip(map(str, WINDOW_QUANTILES), np.quantile(window_means, WINDOW_QUANTILES).tolist())
        ),
        "window_wet_fraction_quantiles": dict(
            zip(
                map(str, WINDOW_QUANTILES),
                np.quantile((values > 0).mean(axis=(1, 2, 3)), WINDOW_QUANTILES).tolist(),
            )
        ),
        "frame_mean_lag1": _lag(frame_means - frame_means.mean(), 1),
        "pooled_lags": [_lag(pooled, k) for k in LAGS],
        "within_window_lags": [_lag(within, k) for k in LAGS],
        "pattern_lags": [_lag(pattern, k) for k in LAGS],
        "wet_fraction": float((values > 0).mean()),
    }


def mean_response(den, y: torch.Tensor, generator: torch.Generator) -> list[dict]:
    """Slope and spread ratio of x̂'s window mean against the true one, per λ."""
    m = y.flatten(1).mean(1).double()
    n = y[0].numel()
    rows = []
    for lam in LAMBDAS:
        alpha, sigma = alpha_sigma(torch.tensor(lam))
        z = alpha * y + sigma * torch.randn(y.shape, generator=generator)
        with torch.no_grad():
            m_hat = den(z, torch.tensor(lam)).flatten(1).mean(1).double()
        snr = math.exp(lam) * n * float(m.var())
        rows.append(
            {
                "lambda": lam,
                "slope": float(np.polyfit(m.numpy(), m_hat.numpy(), 1)[0]),
                "spread_ratio": float(m_hat.std() / m.std()),
                "gaussian_slope": snr / (1.0 + snr),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="directory of a model saved by benchmarks/quality.py")
    ap.add_argument("--windows", type=int, default=96, help="held-out windows")
    ap.add_argument("--members", type=int, default=192, help="unconditional samples")
    ap.add_argument("--sdedit", action="store_true", help="also re-generate from t0")
    ap.add_argument("--setting", default="default", choices=sorted(quality.SETTINGS))
    args = ap.parse_args(argv)
    model = xd.load(args.model)
    engine = model.engine
    frames = model.frames
    ny, nx = model.grid
    gen_kw = dict(ny=ny, nx=nx, **quality.SETTINGS[args.setting])
    real = quality._independent_windows(args.windows, frames, HELD_OUT_SEED, gen_kw)
    x = torch.as_tensor(real.values, dtype=torch.float32)[:, None]
    y = engine.codec.encode(x)
    den = make_denoiser(engine.net)
    samples = model.sample(
        real.isel(realization=0, drop=True), n=args.members, seed=0, progress=False
    )
    out: dict = {
        "model": str(args.model),
        "steps": model.config["training"]["steps"],
        "real": window_stats(real.values),
        # the benchmark's reference (5 x members windows of seed 101): surer tails
        "reference": window_stats(quality._reference(args.members, frames, gen_kw).values),
        "samples": window_stats(samples.values),
        "mean_response": mean_response(den, y, torch.Generator().manual_seed(0)),
    }
    if args.sdedit:
        grid = lambda_steps(engine.schedule, 20, "lambda_trunc")
        g = torch.Generator().manual_seed(1)
        rows = {}
        for t0 in SDEDIT_T0:
            lam0 = float(engine.schedule.lam(torch.tensor(t0)))
            lams = torch.cat([torch.tensor([lam0]), grid[grid > lam0 + 1e-3]])
            alpha, sigma = alpha_sigma(torch.tensor(lam0))
            z = alpha * y + sigma * torch.randn(y.shape, generator=g)
            with torch.no_grad():
                phys = engine.codec.decode(sample_dpmpp_2m(den, z, lams))
            rows[str(t0)] = window_stats(phys[:, 0].numpy())["pooled_lags"]
        out["sdedit"] = rows
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
