"""One latent model, one setting: how well does its latent mean probe for intensity?

A lighter companion of ``benchmarks/latent.py`` for ablations of the training of a latent
model (issue 17): it fits a single latent model on the benchmark's data
(:func:`~xdiffusion.datasets.synthetic_regimes`: 256 training segments of seed 0, 32 × 32
× 8, the lean U-Net of ``_common.LEAN_NET`` at width 16, sqrt, batch 8, lr 1e-3, warm-up
50; the fit's own seed is ``--seed``) and scores it on 128 held-out segments of seed 1
with the benchmark's probes. Prints one JSON line:

- ``probe``: correlation of the least-squares linear fit of log intensity on
  ``latent_mean`` (fitted on the training windows, scored on the held-out ones; the
  issue's target is ≥ 0.8); ``probe_draw``: the same from one draw w ~ q(w | x);
  ``probe_quadratic``: the fit on ``latent_mean`` and its squares; ``spearman_best``: the
  best rank correlation of a single latent dimension; ``direction_logistic``: accuracy of
  the four advection directions (chance 0.25);
- ``spread`` / ``sigma``: per dimension, the between-window standard deviation of the
  posterior mean and the mean posterior standard deviation; ``kl_nats``: KL per window.

Ablations: ``--high-noise`` (``fit(high_noise=)``), ``--high-noise-from`` (the lower end
of those draws, :data:`xdiffusion.training.HIGH_NOISE_T`, set for this process only),
``--beta``, ``--objective``, ``--steps`` and ``--latent-lr-scale`` (the encoder and the
network's latent projection at this multiple of the learning rate: a wrapper of
:func:`xdiffusion.training.param_groups` for this process only, not a library option).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/latent_probe.py --high-noise 0.25 --seed 1
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from scipy.stats import spearmanr

import xdiffusion.training as training
from xdiffusion.datasets import synthetic_regimes

try:
    from benchmarks._common import LEAN_NET
    from benchmarks.latent import factors, linear_fit, probes
except ImportError:  # run as a script: benchmarks/ is on sys.path
    from _common import LEAN_NET
    from latent import factors, linear_fit, probes

FRAMES, SIZE, TRAIN_WINDOWS, HELD_WINDOWS = 8, 32, 256, 128


def _latent_lr(scale: float):
    """A :func:`xdiffusion.training.param_groups` that puts the encoder and the latent
    projection in their own group at ``scale`` × the learning rate."""
    plain = training.param_groups

    def groups(module, transform_lr_scale):
        out = plain(module, transform_lr_scale)
        latent = [
            p
            for n, p in module.named_parameters()
            if n.startswith("encoder.") or "latent_proj" in n
        ]
        ids = {id(p) for p in latent}
        out[0]["params"] = [p for p in out[0]["params"] if id(p) not in ids]
        out.append({"params": latent, "lr_scale": scale})
        return out

    return groups


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--objective", default="weighted", choices=("weighted", "elbo"))
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--high-noise", type=float, default=0.0)
    ap.add_argument("--high-noise-from", type=float, default=training.HIGH_NOISE_T)
    ap.add_argument("--latent-lr-scale", type=float, default=1.0)
    ap.add_argument("--latent-dim", type=int, default=8)
    ap.add_argument(
        "--pooling", default=None, choices=("stats", "mean"), help="the encoder's (default: fit's)"
    )
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0, help="seed of the fit (not of the data)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save", default=None, help="directory to save the model in")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    training.HIGH_NOISE_T = args.high_noise_from
    if args.latent_lr_scale != 1.0:
        training.param_groups = _latent_lr(args.latent_lr_scale)
    train = synthetic_regimes(TRAIN_WINDOWS, FRAMES, SIZE, SIZE, seed=0)
    held = synthetic_regimes(HELD_WINDOWS, FRAMES, SIZE, SIZE, seed=1)
    extra = {"high_noise": args.high_noise} if args.objective == "weighted" else {}
    t0 = time.perf_counter()
    model = train.diffusion.fit(
        frames=FRAMES,
        steps=args.steps,
        transform="sqrt",
        batch_size=8,
        lr=args.lr,
        warmup=50,
        val_fraction=0.0,
        seed=args.seed,
        device="cpu",
        progress=False,
        net={"width": 16, **LEAN_NET},
        latent_dim=args.latent_dim,
        objective=args.objective,
        beta=args.beta,
        encoder={"pooling": args.pooling} if args.pooling else None,
        **extra,
    )
    fit_seconds = time.perf_counter() - t0
    enc_train, enc_held = train.diffusion.encode(model), held.diffusion.encode(model)
    f_train, f_held = factors(train, FRAMES), factors(held, FRAMES)
    mu_tr, mu_te = enc_train.latent_mean.values, enc_held.latent_mean.values
    sd_tr, sd_te = enc_train.latent_std.values, enc_held.latent_std.values
    on_mean = probes(mu_tr, mu_te, f_train, f_held)
    rng = np.random.default_rng(0)
    on_draw = probes(
        mu_tr + sd_tr * rng.standard_normal(mu_tr.shape),
        mu_te + sd_te * rng.standard_normal(mu_te.shape),
        f_train,
        f_held,
    )
    log_i = f_held[0]
    quadratic = linear_fit(np.c_[mu_tr, mu_tr**2], f_train[0], np.c_[mu_te, mu_te**2])
    kl = 0.5 * (mu_te**2 + sd_te**2 - 1 - 2 * np.log(sd_te))
    out = {
        "benchmark": "latent_probe",
        "settings": vars(args),
        "fit_seconds": round(fit_seconds, 1),
        "probe": round(on_mean["log_intensity_correlation"], 3),
        "probe_draw": round(on_draw["log_intensity_correlation"], 3),
        "probe_quadratic": round(float(np.corrcoef(quadratic, log_i)[0, 1]), 3),
        "spearman_best": round(
            max(abs(spearmanr(mu_te[:, j], log_i)[0]) for j in range(mu_te.shape[1])), 3
        ),
        "direction_logistic": on_mean["direction_accuracy_logistic"],
        "spread": np.round(mu_te.std(0), 3).tolist(),
        "sigma": np.round(sd_te.mean(0), 3).tolist(),
        "kl_nats": round(float(kl.sum(1).mean()), 2),
        "loss_last_50": float(np.mean(model.history_dict["loss"][-50:])),
    }
    print(json.dumps(out), flush=True)
    if args.save:
        model.save(args.save, overwrite=True)
    return out


if __name__ == "__main__":
    main()
