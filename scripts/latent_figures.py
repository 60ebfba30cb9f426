"""Figures of docs/latent.md from the latent models of ``benchmarks/latent.py``.

    OMP_NUM_THREADS=1 python scripts/latent_figures.py [--models DIR] [--out docs/figures]

Reads the ``elbo``, ``weighted`` and ``unconditional`` models that ``benchmarks/latent.py``
saved (default ``benchmarks/.cache/latent``; ``--quick`` reads ``latent-quick``); where they
are missing it fits them first with the benchmark's settings (``--steps``). The data are
those of the benchmark: :func:`~xdiffusion.datasets.synthetic_regimes` with seed 0 for the
probes' training windows and seed 1 held out. Writes

- ``latent-factors.png``: the best linear projection of ``latent_mean`` onto log intensity
  (fitted on the training windows, shown on held-out ones) against the true log
  intensity, coloured by advection direction; and the projection of one posterior draw
  w ~ q(w | x) per window (fitted on draws), which is what the denoiser is given;
- ``latent-reconstructions.png``: three held-out windows (weak, middle, strong), two
  reconstructions of each (``latent=`` its posterior mean) and two unconditional samples;
- ``latent-interpolation.png``: samples with latent = (1 − a)·w₁ + a·w₂ between a weak
  and a strong window's latent, with the same noise (seed) for every a, and their window
  mean against a.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
import xarray as xr

import xdiffusion as xd
from xdiffusion.datasets import REGIME_DIRECTIONS, synthetic_regimes

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import latent as bench  # noqa: E402  (benchmarks/latent.py)

DPI = 80
STYLE = {"font.size": 8, "savefig.facecolor": "white"}
COLOURS = dict(zip(REGIME_DIRECTIONS, ("tab:blue", "tab:orange", "tab:green", "tab:red")))


def load_or_fit(models: Path, quick: bool, steps: int | None) -> dict[str, xd.DiffusionModel]:
    names = ("unconditional", "elbo", "weighted")
    if not all((models / n / "config.json").is_file() for n in names):
        argv = ["--no-cost", "--save", str(models), "--out", str(models / "benchmark.json")]
        argv += ["--quick"] if quick else []
        argv += ["--steps", str(steps)] if steps else []
        print(f"fitting the models: benchmarks/latent.py {' '.join(argv)}", file=sys.stderr)
        bench.main(argv)
    return {n: xd.load(models / n) for n in names}


def projection(model, train, held, frames):
    """Best linear projections onto log intensity, fitted on the training windows: of
    latent_mean, and of one draw w ~ q(w | x) per window (fitted on training draws, applied
    to held-out draws, as the benchmark's ``probes_posterior_draw``)."""
    enc_tr, enc = model.encode(train), model.encode(held)
    (li_tr, _), (li, direction) = bench.factors(train, frames), bench.factors(held, frames)
    mu_tr, mu, sd = (enc_tr.latent_mean.values, enc.latent_mean.values, enc.latent_std.values)
    rng = np.random.default_rng(0)
    draw_tr = mu_tr + enc_tr.latent_std.values * rng.standard_normal(mu_tr.shape)
    draw = mu + sd * rng.standard_normal(mu.shape)
    return (
        li,
        direction,
        bench.linear_fit(mu_tr, li_tr, mu),
        bench.linear_fit(draw_tr, li_tr, draw),
        enc,
    )


def fig_factors(models, train, held, frames, out: Path) -> dict:
    fig, axes = plt.subplots(1, 4, figsize=(11.0, 2.9), constrained_layout=True)
    info = {}
    cache = {name: projection(models[name], train, held, frames) for name in ("elbo", "weighted")}
    panels = (
        ("elbo", "mean", 'objective="elbo": latent_mean'),
        ("weighted", "mean", 'objective="weighted": latent_mean'),
        ("weighted", "draw", '"weighted": a draw w ~ q(w|x)'),
    )
    for ax, (name, which, title) in zip(axes, panels):
        li, direction, p_mean, p_draw, _ = cache[name]
        y = p_mean if which == "mean" else p_draw
        for d in REGIME_DIRECTIONS:
            sel = direction == d
            ax.scatter(li[sel], y[sel], s=8, color=COLOURS[d], label=f"{d:.0f}°")
        r = float(np.corrcoef(li, y)[0, 1])
        info[f"{name}_{which}"] = r
        lim = [li.min() - 0.2, li.max() + 0.2]
        ax.plot(lim, lim, color="0.6", lw=0.8, zorder=0)
        ax.set_title(f"{title}\ncorrelation {r:.2f} (held-out windows)", fontsize=7)
        ax.set_xlabel("true log intensity factor")
    axes[0].set_ylabel("best linear projection")
    axes[0].legend(title="advection", fontsize=6, title_fontsize=6, loc="upper left")
    # is w used? between-window spread of the posterior mean against the posterior spread
    ax = axes[3]
    k = cache["elbo"][4].sizes["latent"]
    x = np.arange(k)
    for off, name, colour in ((-0.2, "elbo", "tab:purple"), (0.2, "weighted", "tab:olive")):
        enc = cache[name][4]
        spread = enc.latent_mean.std("window").values
        sigma = enc.latent_std.mean("window").values
        ax.bar(x + off, spread, width=0.4, color=colour, label=f"{name}: sd of latent_mean")
        ax.plot(x + off, sigma, "_", ms=9, mew=2, color="k")
        info[f"{name}_spread_over_sigma"] = float(np.median(spread / sigma))
    ax.plot([], [], "_", ms=9, mew=2, color="k", label="mean latent_std")
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xlabel("latent dimension")
    ax.set_title(
        "between-window spread of latent_mean\nvs posterior std (usable: bar ≳ tick)", fontsize=7
    )
    ax.legend(fontsize=6, loc="center")
    fig.savefig(out / "latent-factors.png", dpi=DPI)
    plt.close(fig)
    return info


def pick_windows(held, frames) -> list[int]:
    """A weak, a middle and a strong held-out window."""
    li, _ = bench.factors(held, frames)
    order = np.argsort(li)
    return [int(order[1]), int(order[len(order) // 2]), int(order[-2])]


def fig_reconstructions(models, held, frames, out: Path, name: str, steps: int) -> dict:
    model, uncond = models[name], models["unconditional"]
    enc = model.encode(held)
    truth = bench.windows_of(held, frames)
    chosen = pick_windows(held, frames)
    template = held.isel(time=slice(0, frames)).drop_vars(list(bench.FACTORS))
    m = 2
    mu = enc.latent_mean.values[chosen]
    latent = xr.DataArray(np.repeat(mu, m, axis=0), dims=("member", "latent"))
    rec = bench.generate(model, template, len(chosen), m, steps=steps, seed=1, latent=latent)
    smp = bench.generate(uncond, template, len(chosen), m, steps=steps, seed=1)
    frame = frames // 2
    cols = ["true window"] + [f"reconstruction {j + 1}" for j in range(m)]
    cols += [f"unconditional {j + 1}" for j in range(m)]
    fig, axes = plt.subplots(
        len(chosen),
        len(cols),
        figsize=(1.5 * len(cols) + 0.6, 1.5 * len(chosen) + 0.4),
        constrained_layout=True,
    )
    info = []
    for i, w in enumerate(chosen):
        fields = [truth[w]] + [rec[i, j] for j in range(m)] + [smp[i, j] for j in range(m)]
        vmax = float(np.sqrt(max(np.quantile(truth[w], 0.995), 1e-3)))
        for j, (ax, f) in enumerate(zip(axes[i], fields)):
            im = ax.imshow(
                np.sqrt(np.clip(f[frame], 0, None)), vmin=0, vmax=vmax, cmap="Blues", origin="lower"
            )
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"mean {f.mean():.2f} mm/h", fontsize=6, labelpad=1)
            if i == 0:
                ax.set_title(cols[j], fontsize=7)
        axes[i, 0].set_ylabel(f"factor {float(held.intensity.values[w * frames]):.1f}", fontsize=7)
        fig.colorbar(im, ax=axes[i, -1], shrink=0.8, label="sqrt(mm/h)")
        info.append(
            {
                "window": w,
                "true_mean": float(truth[w].mean()),
                "reconstruction_means": [float(rec[i, j].mean()) for j in range(m)],
                "unconditional_means": [float(smp[i, j].mean()) for j in range(m)],
            }
        )
    fig.suptitle(
        f"{name} latent model: frame {frame + 1} of {frames}; window means below each field",
        fontsize=8,
    )
    fig.savefig(out / "latent-reconstructions.png", dpi=DPI)
    plt.close(fig)
    return {"model": name, "windows": info}


def fig_interpolation(models, held, frames, out: Path, name: str, steps: int) -> dict:
    model = models[name]
    enc = model.encode(held)
    lo, _, hi = pick_windows(held, frames)
    w1, w2 = enc.latent_mean.values[lo], enc.latent_mean.values[hi]
    alphas = np.linspace(0.0, 1.0, 5)
    template = held.isel(time=slice(0, frames)).drop_vars(list(bench.FACTORS))
    members = 4
    fields, means = [], []
    for a in alphas:
        s = model.sample(
            template,
            n=members,
            steps=steps,
            seed=3,
            progress=False,
            latent=(1 - a) * w1 + a * w2,
        )
        v = np.asarray(s.values, dtype=np.float64)
        fields.append(v[0, frames // 2])
        means.append(v.reshape(members, -1).mean(1))
    means = np.asarray(means)
    fig = plt.figure(figsize=(9.0, 2.2), constrained_layout=True)
    grid = fig.add_gridspec(1, len(alphas) + 2, width_ratios=[1] * len(alphas) + [0.1, 1.6])
    vmax = float(np.sqrt(max(np.quantile(np.stack(fields), 0.995), 1e-3)))
    for k, (a, f) in enumerate(zip(alphas, fields)):
        ax = fig.add_subplot(grid[0, k])
        ax.imshow(np.sqrt(np.clip(f, 0, None)), vmin=0, vmax=vmax, cmap="Blues", origin="lower")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"a = {a:.2f}", fontsize=7)
        ax.set_xlabel(f"mean {means[k, 0]:.2f} mm/h", fontsize=6, labelpad=1)
    ax = fig.add_subplot(grid[0, -1])
    for j in range(members):
        ax.plot(alphas, means[:, j], "o-", ms=3, lw=0.8, color="tab:blue", alpha=0.6)
    t1, t2 = (float(bench.windows_of(held, frames)[i].mean()) for i in (lo, hi))
    ax.axhline(t1, ls="--", color="0.5", lw=0.8)
    ax.axhline(t2, ls="--", color="0.2", lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("a")
    ax.set_ylabel("window mean (mm/h)")
    ax.set_title("members (same noise for every a);\ndashed: the two encoded windows", fontsize=7)
    fig.suptitle(
        f"{name} model: latent = (1 − a)·w₁ + a·w₂, w₁ from a window of {t1:.2f} mm/h, "
        f"w₂ from one of {t2:.2f} mm/h (member 1, frame {frames // 2 + 1})",
        fontsize=8,
    )
    fig.savefig(out / "latent-interpolation.png", dpi=DPI)
    plt.close(fig)
    return {
        "model": name,
        "alphas": alphas.tolist(),
        "window_means": means.tolist(),
        "encoded_means": [t1, t2],
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=None)
    ap.add_argument("--quick", action="store_true", help="the benchmark's --quick models")
    ap.add_argument("--steps", type=int, default=None, help="training steps, if fitting")
    ap.add_argument("--model", default="weighted", help="latent model of figures (b), (c)")
    ap.add_argument("--sampling-steps", type=int, default=20)
    ap.add_argument("--out", default=str(ROOT / "docs" / "figures"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    plt.rcParams.update(STYLE)
    default = bench.CACHE / ("latent-quick" if args.quick else "latent")
    model_dir = Path(args.models) if args.models else default
    models = load_or_fit(model_dir, args.quick, args.steps)
    frames = models["elbo"].frames
    s = bench_settings(model_dir, args.quick)
    size, seed = s["size"], s["seed"]
    train = synthetic_regimes(s["train_windows"], frames, size, size, seed=seed)
    held = synthetic_regimes(s["heldout_windows"], frames, size, size, seed=seed + 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = {
        "factors": fig_factors(models, train, held, frames, out),
        "reconstructions": fig_reconstructions(
            models, held, frames, out, args.model, args.sampling_steps
        ),
        "interpolation": fig_interpolation(
            models, held, frames, out, args.model, args.sampling_steps
        ),
    }
    print(json.dumps(bench_round(info), indent=1))
    return info


def bench_settings(model_dir: Path, quick: bool) -> dict:
    """Settings of the benchmark run that fitted the models: its JSON beside them, else
    the saved result (benchmarks/results/latent[-quick].json)."""
    path = model_dir / "benchmark.json"
    if not path.is_file():
        path = bench.RESULTS / ("latent-quick.json" if quick else "latent.json")
    return json.loads(path.read_text())["settings"]


def bench_round(obj):
    return bench.rounded(obj, 3)


if __name__ == "__main__":
    main()
