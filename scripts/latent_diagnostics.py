"""Where does a latent model's w help, and what could it describe? (docs/latent.md)

    OMP_NUM_THREADS=1 python scripts/latent_diagnostics.py benchmarks/.cache/latent/weighted

For a saved latent model (``benchmarks/latent.py`` saves its models) and held-out windows
of :func:`~xdiffusion.datasets.synthetic_regimes` (seed 1, the benchmark's), prints JSON:

- ``v_loss_by_t``: the v-loss (eq. 2.68) at fixed diffusion times t, the network given
  each window's own posterior mean (``own``), another window's (``shuffled``) or zeros.
  Where ``own`` is below ``shuffled`` the denoiser uses w; the same numbers everywhere
  mean it has learnt to ignore it;
- ``data``: what the loss can gain from a description of the window. In diffusion space
  (the model's transform and scaling): the total variance of the elements, the part
  between windows (the variance of window means: at the highest noise levels, the most a
  latent that knows each window's mean can remove from the x-error), and how the window
  mean and standard deviation rank-correlate (Spearman) and correlate (Pearson) with the
  log intensity factor.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from scipy.stats import spearmanr

import xdiffusion as xd
from xdiffusion.core.diffusion import v_loss
from xdiffusion.datasets import synthetic_regimes

#: Diffusion times at which the loss is evaluated (high noise at the end).
TIMES = (0.1, 0.3, 0.5, 0.7, 0.9, 0.97, 0.99, 0.999)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="directory of a saved latent model")
    ap.add_argument("--windows", type=int, default=64, help="held-out windows (seed 1)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    model = xd.load(args.model)
    if not model.latent_dim:
        raise SystemExit(f"{args.model} is not a latent model (latent_dim 0)")
    frames = model.config["frames"]
    ny, nx = model.grid
    held = synthetic_regimes(args.windows, frames, ny, nx, seed=1)
    n = args.windows
    x = torch.from_numpy(np.asarray(held.values, np.float32)).reshape(n, 1, frames, ny, nx)
    module = model.module
    out: dict = {"model": args.model, "windows": n, "v_loss_by_t": []}
    with torch.no_grad():
        y = module.codec.encode(x).float()
        mu, _ = module.encoder(y, None)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed))
        for t in TIMES:
            row = {"t": t, "lambda": float(model.schedule.lam(torch.tensor(t)))}
            for name, w in (("own", mu), ("shuffled", mu[perm]), ("zeros", torch.zeros_like(mu))):
                g = torch.Generator().manual_seed(args.seed + 1)  # the same t, ε for each w
                loss = v_loss(
                    module.net, y, model.schedule, generator=g, t=torch.full((n,), t),
                    net_kwargs={"latent": w},
                )  # fmt: skip
                row[name] = float(loss.mean())
            out["v_loss_by_t"].append(row)
    flat = y.numpy().reshape(n, -1)
    log_i = np.log(held["intensity"].values[::frames])
    mean, sd = flat.mean(1), flat.std(1)
    out["data"] = {
        "total_variance": float(flat.var()),
        "between_window_variance": float(mean.var()),
        "within_window_variance": float(flat.var(1).mean()),
        "window_mean_vs_log_intensity": {
            "spearman": float(spearmanr(mean, log_i)[0]),
            "pearson": float(np.corrcoef(mean, log_i)[0, 1]),
        },
        "window_std_vs_log_intensity": {
            "spearman": float(spearmanr(sd, log_i)[0]),
            "pearson": float(np.corrcoef(sd, log_i)[0, 1]),
        },
    }
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
