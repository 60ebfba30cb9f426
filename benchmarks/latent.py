"""Latent models (issue 17, seed 003): what does the latent w learn, what does it cost?

On :func:`xdiffusion.datasets.synthetic_regimes` (windows whose mean rain is exactly
0.1 mm/h times a known intensity factor spanning 25x, each advected towards one of four
directions), three models with the same network, data, seed and number of steps:

- ``unconditional``: ``fit(...)`` as before;
- ``elbo``: ``fit(..., latent_dim=k, objective="elbo")`` (the variational bound);
- ``weighted``: ``fit(..., latent_dim=k, objective="weighted")`` (v-loss + KL, not a bound).

Training data: seed 0; held out: seed 1 (other factors, directions and fields). Reports

- ``nll``: ``model.nll(held_out)``: the data-space bound in bits per element (for a latent
  model including its ``kl`` term) at the default λ_rec = λmax and at λ_rec = 10;
- ``latent_usage``: is w used at all? Between-window standard deviation of the posterior
  mean μ per dimension against the posterior standard deviation σ, "active" dimensions
  (Var over windows of μ_d > 0.01, Burda et al. 2016) and the KL per window in nats;
- ``probes`` (held-out windows, probes fitted on the training windows' ``latent_mean``):
  correlation of a least-squares linear fit of log intensity (target of the issue: ≥ 0.8),
  accuracy of a logistic-regression and of a nearest-centroid classifier of the four
  advection directions (chance 0.25); the same probes on a hand-made summary of a window
  (its mean and standard deviation in sqrt space) for scale; ``probes_posterior_draw``:
  the same probes on one draw w ~ q(w | x) per window, the latent the denoiser is given
  (a latent whose mean varies far less than its posterior noise scores ~0 here however
  well ``latent_mean`` probes);
- ``rmse``: root-mean-square error against each held-out window of ``members`` generated
  windows: reconstructions (``latent=`` the window's posterior mean, as
  ``reconstruct(posterior="mean")`` does), the latent model's prior samples (w ~ N(0, I))
  and the unconditional model's samples; in sqrt(mm/h) (``rmse_sqrt``) and mm/h
  (``rmse_mm_h``), the mean absolute error of the log window mean (intensity), and the
  share of windows whose RMSE is below that of the unconditional samples;
- ``cost``: seconds per training step with and without the latent (same network),
  from fits of two lengths (the difference of their training times over the difference
  of steps), unconditional and latent fits alternating, timed alone.

Prints one JSON document to stdout (progress to stderr) and writes it to
``benchmarks/results/latent.json`` (``--quick``: ``latent-quick.json``; ``--out``).

Usage::

    python benchmarks/latent.py            # 32x32, 8 frames: ~10 min on one thread
    python benchmarks/latent.py --quick    # 16x16, 4 frames, smoke run: ~1 min
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from xdiffusion.datasets import REGIME_DIRECTIONS, synthetic_regimes

try:
    from benchmarks._common import LEAN_NET, log, machine, rounded
except ImportError:  # run as a script: benchmarks/ is on sys.path
    from _common import LEAN_NET, log, machine, rounded

RESULTS = Path(__file__).resolve().parent / "results"
CACHE = Path(__file__).resolve().parent / ".cache"
#: A lean U-Net (temporal attention only), as in benchmarks/transforms.py.
NET = LEAN_NET
FACTORS = ("intensity", "direction", "segment")


def windows_of(da: xr.DataArray, frames: int) -> np.ndarray:
    """(N, frames, y, x) non-overlapping windows from the start (= the segments)."""
    v = np.asarray(da.values, dtype=np.float64)
    n = v.shape[0] // frames
    return v[: n * frames].reshape(n, frames, *v.shape[1:])


def factors(da: xr.DataArray, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Log intensity and direction (degrees) of each segment."""
    return np.log(da["intensity"].values[::frames]), da["direction"].values[::frames]


# ---------------------------------------------------------------------------------- probes


def linear_fit(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """Least-squares affine fit on (x_train, y_train), evaluated at x_test."""
    a = np.c_[x_train, np.ones(len(x_train))]
    coef, *_ = np.linalg.lstsq(a, y_train, rcond=None)
    return np.c_[x_test, np.ones(len(x_test))] @ coef


def standardise(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu, sd = x_train.mean(0), x_train.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    return (x_train - mu) / sd, (x_test - mu) / sd


def logistic_accuracy(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> float:
    """Multinomial logistic regression (L2 1e-2, standardised features, gradient descent)."""
    xt, xs = standardise(x_train, x_test)
    classes = np.unique(y_train)
    onehot = (y_train[:, None] == classes[None]).astype(float)
    a = np.c_[xt, np.ones(len(xt))]
    w = np.zeros((a.shape[1], len(classes)))
    for _ in range(3000):
        z = a @ w
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        grad = a.T @ (p - onehot) / len(a) + 1e-2 * np.r_[w[:-1], np.zeros((1, w.shape[1]))]
        w -= 0.5 * grad
    pred = classes[np.argmax(np.c_[xs, np.ones(len(xs))] @ w, 1)]
    return float(np.mean(pred == y_test))


def centroid_accuracy(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> float:
    """Nearest class centroid in standardised features."""
    xt, xs = standardise(x_train, x_test)
    classes = np.unique(y_train)
    cent = np.stack([xt[y_train == c].mean(0) for c in classes])
    pred = classes[np.argmin(((xs[:, None] - cent[None]) ** 2).sum(-1), 1)]
    return float(np.mean(pred == y_test))


def probes(x_train, x_test, train_factors, test_factors) -> dict:
    (li_tr, dir_tr), (li_te, dir_te) = train_factors, test_factors
    pred = linear_fit(x_train, li_tr, x_test)
    return {
        "log_intensity_correlation": float(np.corrcoef(pred, li_te)[0, 1]),
        "log_intensity_rmse": float(np.sqrt(np.mean((pred - li_te) ** 2))),
        "direction_accuracy_logistic": logistic_accuracy(x_train, dir_tr, x_test, dir_te),
        "direction_accuracy_centroid": centroid_accuracy(x_train, dir_tr, x_test, dir_te),
    }


def summary_features(da: xr.DataArray, frames: int) -> np.ndarray:
    """Mean and standard deviation of each window in sqrt space (a probe reference)."""
    s = np.sqrt(np.clip(windows_of(da, frames), 0.0, None)).reshape(
        -1, frames * da.sizes["y"] * da.sizes["x"]
    )
    return np.c_[s.mean(1), s.std(1)]


# ------------------------------------------------------------------------------- samples


def rmse(samples: np.ndarray, truth: np.ndarray) -> dict:
    """samples (N, m, F, Y, X) against truth (N, F, Y, X)."""
    s, t = np.clip(samples, 0.0, None), np.clip(truth, 0.0, None)[:, None]
    axes = (2, 3, 4)
    per_sqrt = np.sqrt(np.mean((np.sqrt(s) - np.sqrt(t)) ** 2, axis=axes))
    per_mm = np.sqrt(np.mean((s - t) ** 2, axis=axes))
    log_mean_err = np.abs(np.log(s.mean(axis=axes) + 1e-3) - np.log(t.mean(axis=axes) + 1e-3))
    return {
        "rmse_sqrt": float(per_sqrt.mean()),
        "rmse_mm_h": float(per_mm.mean()),
        "abs_log_window_mean_error": float(log_mean_err.mean()),
        "windows_closer_than_unconditional": None,  # filled in by the caller
        "_per_window_sqrt": per_sqrt.mean(1),
    }


def generate(model, template, n_windows, members, *, steps, seed, latent=None) -> np.ndarray:
    """(n_windows, members, F, Y, X) generated windows in one batched call."""
    out = model.sample(
        template, n=n_windows * members, steps=steps, seed=seed, progress=False, latent=latent
    )
    return np.asarray(out.values, dtype=np.float64).reshape(n_windows, members, *out.shape[1:])


# ---------------------------------------------------------------------------------- cost


def step_cost(train, frames, fit_kwargs, *, short, long, reps) -> dict:
    """Seconds per training step without and with the latent, alternating fits."""
    runs: dict[str, list[float]] = {"unconditional": [], "latent": []}
    for _ in range(reps):
        for name, extra in (("unconditional", {}), ("latent", fit_kwargs["latent"])):
            seconds = []
            for steps in (short, long):
                m = train.diffusion.fit(frames=frames, **fit_kwargs["common"], **extra, steps=steps)
                seconds.append(m.config["training"]["seconds"])
            runs[name].append((seconds[1] - seconds[0]) / (long - short))
    u, latent = float(np.median(runs["unconditional"])), float(np.median(runs["latent"]))
    return {
        "seconds_per_step_unconditional": u,
        "seconds_per_step_latent": latent,
        "latent_overhead": latent / u - 1.0,
        "runs": runs,
        "method": f"(fit time at {long} steps - at {short} steps) / {long - short}, median of "
        f"{reps} alternating repetitions",
    }


# ---------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="16x16, 4 frames, short fits")
    ap.add_argument("--steps", type=int, default=None, help="training steps of each model")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--train-windows", type=int, default=256)
    ap.add_argument("--heldout-windows", type=int, default=128)
    ap.add_argument("--latent-dim", type=int, default=8)
    ap.add_argument("--beta", type=float, default=1.0, help='KL weight of "weighted"')
    ap.add_argument("--free-bits", type=float, default=0.0, help="of both latent models")
    ap.add_argument(
        "--high-noise",
        type=float,
        default=0.0,
        help='share of "weighted" batches at t ~ U(0.99, 1) (fit(high_noise=); default 0)',
    )
    ap.add_argument(
        "--pooling",
        default=None,
        choices=("stats", "mean"),
        help="the encoder's pooling over frames and space (default: fit's, stats)",
    )
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--rec-windows", type=int, default=32, help="held-out windows to generate")
    ap.add_argument("--members", type=int, default=2, help="generated windows per window")
    ap.add_argument("--sampling-steps", type=int, default=20)
    ap.add_argument("--nll-windows", type=int, default=32)
    ap.add_argument("--n-lambda", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-cost", action="store_true", help="skip the per-step cost timing")
    ap.add_argument("--out", default=None, help="result file (default results/latent.json)")
    ap.add_argument(
        "--save",
        default=None,
        help="directory to save the three models in (default benchmarks/.cache/latent[-quick]; "
        "scripts/latent_figures.py reads them)",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.size, args.frames, args.train_windows, args.heldout_windows = 16, 4, 128, 64
        args.rec_windows, args.members, args.sampling_steps = 16, 2, 10
        args.nll_windows, args.n_lambda, args.warmup = 16, 4, 20
    args.steps = args.steps or (300 if args.quick else 800)
    out_path = (
        Path(args.out)
        if args.out
        else RESULTS / ("latent-quick.json" if args.quick else "latent.json")
    )
    save_dir = (
        Path(args.save) if args.save else CACHE / ("latent-quick" if args.quick else "latent")
    )
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    k, frames = args.latent_dim, args.frames
    train = synthetic_regimes(args.train_windows, frames, args.size, args.size, seed=args.seed)
    held = synthetic_regimes(args.heldout_windows, frames, args.size, args.size, seed=args.seed + 1)
    f_train, f_held = factors(train, frames), factors(held, frames)
    net = {"width": args.width, **NET}
    common = dict(
        transform="sqrt",
        batch_size=args.batch,
        lr=args.lr,
        warmup=args.warmup,
        val_fraction=0.0,
        seed=args.seed,
        device="cpu",
        progress=False,
        net=net,
    )
    encoder = {"encoder": {"pooling": args.pooling}} if args.pooling else {}
    variants = {
        "unconditional": {},
        "elbo": {"latent_dim": k, "objective": "elbo", "free_bits": args.free_bits, **encoder},
        "weighted": {
            "latent_dim": k,
            "objective": "weighted",
            "beta": args.beta,
            "free_bits": args.free_bits,
            "high_noise": args.high_noise,
            **encoder,
        },
    }
    result: dict = {
        "benchmark": "latent",
        "threads": torch.get_num_threads(),
        "machine": machine(),
        "settings": vars(args),
        "data": {
            "generator": "xdiffusion.datasets.synthetic_regimes",
            "train": f"{args.train_windows} segments of {frames} h, {args.size}x{args.size}, "
            f"seed {args.seed}; fit draws windows at every start (some span two segments)",
            "held_out": f"{args.heldout_windows} segments, seed {args.seed + 1}; the "
            "non-overlapping windows from the start (= the segments)",
            "intensity_range": [1.0, 25.0],
            "directions": list(REGIME_DIRECTIONS),
        },
        "net": net,
        "saved_models": str(save_dir),
        "fit": {
            "transform": "sqrt",
            "steps": args.steps,
            **{key: common[key] for key in ("batch_size", "lr", "warmup", "seed")},
        },
        "models": {},
    }
    models = {}
    for name, extra in variants.items():
        log(f"[{name}] fitting {args.steps} steps")
        t0 = time.perf_counter()
        model = train.diffusion.fit(frames=frames, steps=args.steps, **common, **extra)
        seconds = time.perf_counter() - t0
        models[name] = model
        model.save(save_dir / name, overwrite=True)
        loss = model.history_dict["loss"]
        result["models"][name] = {
            "fit_seconds": seconds,
            "seconds_per_step": model.config["training"]["seconds"] / args.steps,
            "parameters": sum(p.numel() for p in model.module.parameters()),
            "encoder_parameters": (
                sum(p.numel() for p in model.module.encoder.parameters())
                if getattr(model.module, "encoder", None) is not None
                else 0
            ),
            "final_loss_mean_last_50": float(np.mean(loss[-50:])),
            "objective": model.config["training"].get("objective"),
            "encoder": (
                model.module.encoder.config.to_dict()
                | {"pooling": model.module.encoder.config.pooling}
                if getattr(model.module, "encoder", None) is not None
                else None
            ),
        }
        log(f"[{name}] {seconds:.0f} s")

    # --- likelihood bound on held-out windows
    nll_data = held.isel(time=slice(0, args.nll_windows * frames))
    for name, model in models.items():
        log(f"[{name}] nll")
        res = result["models"][name]
        res["nll"] = {}
        for label, lam in (("lambda_rec_max", None), ("lambda_rec_10", 10.0)):
            r = model.nll(nll_data, n_lambda=args.n_lambda, seed=args.seed, lambda_rec=lam)
            res["nll"][label] = {
                key: float(r[key])
                for key in (
                    "bits_per_dim",
                    "standard_error",
                    "bits_per_dim_diffusion",
                    "kl",
                    "diffusion",
                    "reconstruction",
                    "log_det",
                    "dequantization",
                )
                if key in r
            }

    # --- latents: usage and probes
    ref_train, ref_held = summary_features(train, frames), summary_features(held, frames)
    result["probe_reference"] = {
        "features": "mean and standard deviation of the window in sqrt space",
        **probes(ref_train, ref_held, f_train, f_held),
        "log_intensity_correlation_mean_sqrt_only": float(
            np.corrcoef(linear_fit(ref_train[:, :1], f_train[0], ref_held[:, :1]), f_held[0])[0, 1]
        ),
    }
    encoded = {}
    for name in ("elbo", "weighted"):
        model = models[name]
        log(f"[{name}] encode")
        enc_tr, enc_held = model.encode(train), model.encode(held)
        encoded[name] = enc_held
        mu_tr, mu = enc_tr["latent_mean"].values, enc_held["latent_mean"].values
        sd = enc_held["latent_std"].values
        between = mu.std(0)
        kl = 0.5 * (mu**2 + sd**2 - 1.0 - 2.0 * np.log(sd)).sum(1)
        result["models"][name]["latent_usage"] = {
            "mu_between_window_sd_per_dim": between.tolist(),
            "posterior_sd_mean_per_dim": sd.mean(0).tolist(),
            "signal_to_noise_per_dim": (between**2 / (sd**2).mean(0)).tolist(),
            "active_dims": int(np.sum(between**2 > 0.01)),
            "kl_nats_per_window": float(kl.mean()),
        }
        result["models"][name]["probes"] = probes(mu_tr, mu, f_train, f_held)
        # what the denoiser is given: one draw w ~ q(w | x) per window
        rng = np.random.default_rng(args.seed)
        draw_tr = mu_tr + enc_tr["latent_std"].values * rng.standard_normal(mu_tr.shape)
        draw = mu + sd * rng.standard_normal(mu.shape)
        result["models"][name]["probes_posterior_draw"] = probes(draw_tr, draw, f_train, f_held)

    # --- reconstructions vs samples
    n_rec, m = args.rec_windows, args.members
    truth = windows_of(held, frames)[:n_rec]
    template = held.isel(time=slice(0, frames)).drop_vars(list(FACTORS))
    gen_kw = dict(steps=args.sampling_steps, seed=args.seed)
    log("[unconditional] samples")
    sets = {
        "unconditional_samples": generate(models["unconditional"], template, n_rec, m, **gen_kw)
    }
    for name in ("elbo", "weighted"):
        mu = encoded[name]["latent_mean"].values[:n_rec]
        latent = xr.DataArray(np.repeat(mu, m, axis=0), dims=("member", "latent"))
        log(f"[{name}] reconstructions and prior samples")
        sets[f"{name}_reconstructions"] = generate(
            models[name], template, n_rec, m, latent=latent, **gen_kw
        )
        sets[f"{name}_prior_samples"] = generate(models[name], template, n_rec, m, **gen_kw)
    scores = {name: rmse(s, truth) for name, s in sets.items()}
    base = scores["unconditional_samples"]["_per_window_sqrt"]
    for s in scores.values():
        s["windows_closer_than_unconditional"] = float(np.mean(s.pop("_per_window_sqrt") < base))
    result["rmse"] = {
        "units": "rmse_sqrt: sqrt(mm/h), on sqrt of both fields; rmse_mm_h: mm/h; mean over "
        "windows and members of the per-window RMSE",
        "windows": n_rec,
        "members": m,
        "sampling_steps": args.sampling_steps,
        "rmse_sqrt_of_an_all_dry_field": float(np.sqrt(np.mean(np.clip(truth, 0, None)))),
        **scores,
    }

    # --- encoder cost per training step
    if not args.no_cost:
        log("cost per step")
        short, long = (5, 25) if args.quick else (5, 45)
        result["cost"] = step_cost(
            train,
            frames,
            {"common": common, "latent": variants["weighted"]},
            short=short,
            long=long,
            reps=2,
        )
        result["cost"]["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    result["targets"] = {
        name: {
            "log_intensity_correlation_ge_0.8": result["models"][name]["probes"][
                "log_intensity_correlation"
            ]
            >= 0.8,
            "reconstruction_rmse_below_unconditional": scores[f"{name}_reconstructions"][
                "rmse_sqrt"
            ]
            < scores["unconditional_samples"]["rmse_sqrt"],
        }
        for name in ("elbo", "weighted")
    }
    result["total_seconds"] = time.perf_counter() - t_start
    result = rounded(result)
    text = json.dumps(result, indent=1)
    print(text)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(text + "\n")
    log(f"wrote {out_path}")
    return result


if __name__ == "__main__":
    main()
