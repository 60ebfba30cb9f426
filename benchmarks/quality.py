"""Sample quality per CPU-minute: temporal coherence and the low end, vs the real-vs-real floor.

The method is a video model; its value over per-frame generators is temporal coherence.
A model is fitted on hourly synthetic precipitation (:func:`xdiffusion.datasets.
synthetic_precipitation`, training seed 0) for a fixed CPU budget; ``--members``
unconditional windows of ``frames`` steps are then compared with a reference of
``REFERENCE_FACTOR`` × as many real windows of a held-out seed, and every metric is set
beside its floor: the mean of the same metric over ``--floor-sets`` (8) sets of as many
independent real windows of other seeds against the same reference (what a set of that
size differs by from the reference through sampling noise alone; one set is a single draw
of a heavy-tailed quantity, and the single contiguous set used before is still reported as
``single_contiguous_floor``). Beside it, ``training_data_floor`` is what a perfect model of
the training series would score (windows of the training series itself against the
reference): a few thousand hours hold only some tens of the generator's wet/dry regimes,
so the training series can itself be far from the reference (``--nt`` sets its length).
The metrics:

- ``temporal_psd_log_error``: mean |log10| ratio of the temporal power spectra
  (:func:`xdiffusion.diagnostics.temporal_psd`, per window);
- ``spatial_psd_log_error``: the same for the radially averaged spatial spectra;
- ``qq_relative_error``: |relative error| of the pooled 0.9 / 0.99 / 0.999 quantiles;
- ``mean_abs_mnb``: mean |mean-normalised bias| per cell (rain amount per cell);
- ``drizzle_ratio``: frequency of 0.05–0.2 mm/h values, generated / real (1 is right);
- ``lag_autocorrelation``: lag-1, 2, 3 correlation of anomalies in sqrt space (generated and
  real), and its error.

Budgets are CPU time: ``--budgets 5,15,60`` minutes of training at the throughput measured
in the same process just before (a short timed fit of the same network), i.e. a number of
steps; the steps and the measured rate are recorded. Run it alone (other processes distort
the rate), with the thread count you state (``--threads``, default 2).

Ablations (``--variants``): ``base`` (the library's defaults), ``tconv`` / ``no_tconv``
(with / without a (3, 1, 1) temporal convolution in every ResNet block,
``net={"temporal_conv": ...}``), ``steps40``
(the base model sampled with 40 instead of 20 steps: the sampler's λ grid is twice as fine,
its high-λ end included), ``ema999`` (EMA decay 0.999), ``cosine_lr`` / ``constant_lr``
(the learning rate decays along half a cosine to 0.1× over the budget's steps, or stays
constant: ``lr_schedule=``; cosine is the default since the 15-minute runs, and the
results files from before say ``base`` for constant),
``relpos1`` (temporal attention's position bias tells only earlier / same / later frames
apart, not how far: ``max_relative_position=1`` instead of 16), ``sde`` / ``sde40`` (the
``cosine_lr`` model sampled with the stochastic DPM-Solver++ 2M SDE at 20 / 40 steps
instead of the default deterministic 2M), ``stratified`` / ``uniform_t`` (a batch's
diffusion times one per stratum of [0, 1), or independent: ``t_sampling=``; stratified is
the default since the 60-minute runs, so ``base`` now equals ``stratified``, and every
results file from before used independent times; ``cosine_lr``, ``sde`` and ``sde40`` keep
them, as their files hold), ``spacetime``
(the coarsest level's and the middle block's spatial attention attends over every pixel of
every frame instead of each frame's, so a moving feature can be followed across frames:
``spatial_attention="spacetime"``), ``snr_cap5`` (the v-loss's weight on the x-error,
1 + SNR, capped at 6: less weight on the lowest noise levels, ``snr_cap=5``),
``shift2`` / ``shift4`` (training at λ(t) − 2 log 2 or − 2 log 4, the shifted cosine
schedule: ``lambda_shift=``), ``gmean`` (the frame's and window's means of z in the FiLM
conditioning: ``net={"global_mean": True}``), ``multiscale`` (the v-loss averaged over
spatial scales and the window mean: ``multiscale=True``), ``wide48`` (the network 48
channels wide instead of 32: 2.0 M parameters, about half the steps per CPU-minute),
``readout`` (each output frame's mean gets a direct path past the output GroupNorm:
``net={"mean_readout": True}``), ``meanpath`` (``readout`` with ``gmean`` and
``multiscale``: the window's mean in the conditioning, out of the network and weighted in
the loss).
``--rescore FILES`` divides the runs of earlier results files by the expected floor.
``--setting fast`` trains and
evaluates on a generator with faster, varying advection and shorter persistence instead of
the default one. Every run is also scored without decoding below the dry threshold to exact
zeros (``without_dry_decode``: the same weights and noise, ``dry_below=None``), and its
model is kept in ``benchmarks/.cache/`` for re-scoring.

Prints one JSON document (also written to ``benchmarks/results/quality[-<tag>].json``).

Usage::

    python benchmarks/quality.py --quick                      # smoke run, ~1 min
    python benchmarks/quality.py --budgets 5 --variants base,tconv
    python benchmarks/quality.py --budgets 60 --variants steps40 --reuse  # base's fit
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

import xdiffusion as xd
from xdiffusion import diagnostics as dg
from xdiffusion.datasets import synthetic_precipitation

DRIZZLE = (0.05, 0.2)  # mm/h
QUANTILES = (0.9, 0.99, 0.999)
LAGS = (1, 2, 3)
#: Reference windows per generated (and per floor) window.
REFERENCE_FACTOR = 5
#: Independent real sets whose mean error against the reference is the floor.
FLOOR_SETS = 8
#: Hours of series per floor window: a window is drawn from each segment of this length, so
#: that windows are (nearly) independent, like generated members. The generator's
#: domain-wide regime has a 72-h AR(1) time scale: windows 240 h apart correlate by
#: e^(-240/72) ≈ 0.04 through it.
SEGMENT_HOURS = 240
#: Seed of the first floor set (and of the single contiguous floor of earlier results).
FLOOR_SEED = 202
#: Draws of windows of the training series for :func:`training_data_floor`, and the seed
#: of the first.
TRAINING_FLOOR_DRAWS = 4
TRAINING_FLOOR_SEED = 10
#: Hours of training data (``--nt``).
DEFAULT_NT = 4000
RESULTS = Path(__file__).resolve().parent / "results"
#: Fitted models are kept here, so that decoding and sampling can be re-scored later.
CACHE = Path(__file__).resolve().parent / ".cache"
#: Data settings: the library's default generator, and one with faster, varying advection
#: and shorter-lived cells (a different persistence in time).
SETTINGS = {
    "default": {"wind_kmh": (30.0, 10.0)},
    "fast": {"wind_kmh": (-45.0, 25.0), "wind_std_kmh": 15.0, "dx_km": 12.0},
}
#: name: (net= overrides, other fit arguments, sampler steps, sampler (None: the default))
VARIANTS = {
    "base": ({}, {}, 20, None),
    "tconv": ({"temporal_conv": True}, {}, 20, None),
    "no_tconv": ({"temporal_conv": False}, {}, 20, None),
    "steps40": ({}, {}, 40, None),
    "ema999": ({}, {"ema_decay": 0.999}, 20, None),
    # the default between the 15-minute runs and stratified times, as its results hold
    "cosine_lr": ({}, {"lr_schedule": "cosine", "t_sampling": "uniform"}, 20, None),
    "constant_lr": ({}, {"lr_schedule": "constant"}, 20, None),
    "relpos1": ({"max_relative_position": 1}, {}, 20, None),
    "sde": ({}, {"lr_schedule": "cosine", "t_sampling": "uniform"}, 20, "dpmpp_2m_sde"),
    "sde40": ({}, {"lr_schedule": "cosine", "t_sampling": "uniform"}, 40, "dpmpp_2m_sde"),
    "stratified": ({}, {"t_sampling": "stratified"}, 20, None),
    "uniform_t": ({}, {"t_sampling": "uniform"}, 20, None),
    "snr_cap5": ({}, {"snr_cap": 5.0}, 20, None),
    # the shifted cosine schedule: training λ(t) + shift, shift = −2 log 2 and −2 log 4
    "shift2": ({}, {"lambda_shift": -2 * math.log(2.0)}, 20, None),
    "shift4": ({}, {"lambda_shift": -2 * math.log(4.0)}, 20, None),
    # the frame's and window's means of z in the FiLM conditioning (UNetConfig.global_mean)
    "gmean": ({"global_mean": True}, {}, 20, None),
    # the v-loss averaged over spatial scales and the window mean (fit(multiscale=True))
    "multiscale": ({}, {"multiscale": True}, 20, None),
    # a direct path for each output frame's mean past the output GroupNorm
    # (UNetConfig.mean_readout), alone and with the means in the conditioning and the
    # multiscale loss (the window's mean in, out, and weighted in the loss)
    "readout": ({"mean_readout": True}, {}, 20, None),
    "meanpath": ({"mean_readout": True, "global_mean": True}, {"multiscale": True}, 20, None),
    # a wider network (2.2 x the parameters, about 2 x the time per step): at equal CPU time
    # half the steps
    "wide48": ({"width": 48}, {}, 20, None),
    "spacetime": (
        {"spatial_attention": ["none", "none", "spacetime"], "mid_spatial_attention": "spacetime"},
        {},
        20,
        None,
    ),
}
#: Variants that only sample differently train the same model as another one: with
#: ``--reuse`` they share its cached fit.
TRAINS_AS = {"steps40": "base", "sde": "cosine_lr", "sde40": "cosine_lr"}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _windows(da: xr.DataArray, n: int, frames: int, seed: int) -> xr.DataArray:
    """``n`` non-overlapping windows of ``frames`` steps at random positions, on a
    ``realization`` dimension (as generated ensembles are)."""
    rng = np.random.default_rng(seed)
    slots = rng.choice(da.sizes["time"] // frames, size=n, replace=False)
    parts = [da.isel(time=slice(s * frames, (s + 1) * frames)).values for s in slots]
    tmpl = da.isel(time=slice(0, frames))
    return xr.DataArray(
        np.stack(parts),
        dims=("realization", *tmpl.dims),
        coords={k: v for k, v in tmpl.coords.items()},
        attrs=tmpl.attrs,
    )


def _independent_windows(n: int, frames: int, seed: int, gen_kw: dict) -> xr.DataArray:
    """``n`` windows of ``frames`` steps, one at a random offset in each
    :data:`SEGMENT_HOURS`-long segment of one series of seed ``seed``."""
    series = synthetic_precipitation(n * SEGMENT_HOURS, seed=seed, **gen_kw)
    rng = np.random.default_rng(seed)
    starts = np.arange(n) * SEGMENT_HOURS + rng.integers(0, SEGMENT_HOURS - frames, size=n)
    tmpl = series.isel(time=slice(0, frames))
    return xr.DataArray(
        np.stack([series.values[s : s + frames] for s in starts]),
        dims=("realization", *tmpl.dims),
        coords={k: v for k, v in tmpl.coords.items()},
        attrs=tmpl.attrs,
    )


def _column_stat(rows: list[dict[str, float]], stat) -> dict[str, float]:
    """``stat`` of each metric over the rows (sets or draws) of a floor."""
    return {k: float(stat([r[k] for r in rows])) for k in rows[0]}


def expected_floor(reference: xr.DataArray, n: int, frames: int, gen_kw: dict, sets: int) -> dict:
    """The real-vs-real floor: every scalar metric of ``sets`` independent real sets of ``n``
    independent windows against ``reference``, their mean (the floor) and spread.

    One set is a single draw of a heavy-tailed quantity: over eight sets of contiguous
    windows the temporal-spectrum error spans 0.010-0.28, so a single set's error says
    little about what sampling noise alone gives.
    """
    rows = [
        _scalar_metrics(metrics(_independent_windows(n, frames, FLOOR_SEED + k, gen_kw), reference))
        for k in range(sets)
    ]
    return {
        "sets": sets,
        "windows": f"independent: one per {SEGMENT_HOURS}-h segment of a series",
        "mean": _column_stat(rows, np.mean),
        "sd": _column_stat(rows, lambda v: np.std(v, ddof=1)),
        "per_set": rows,
    }


def training_data_floor(
    train: xr.DataArray, reference: xr.DataArray, n: int, frames: int, draws: int
) -> dict:
    """What a perfect model of the *training series* would score: every scalar metric of
    ``draws`` sets of ``n`` windows of ``train`` against ``reference`` (mean and per draw).

    A model learns the distribution it is shown. A few thousand hours hold only some tens
    of the generator's 72-hour wet/dry regimes, so one training series can itself differ
    from the held-out reference by more than the expected floor (wetter, or with fewer
    extreme regimes); this floor says how much of a model's error is its data's.
    """
    rows = [
        _scalar_metrics(metrics(_windows(train, n, frames, TRAINING_FLOOR_SEED + k), reference))
        for k in range(draws)
    ]
    return {
        "draws": draws,
        "windows": "non-overlapping windows of the training series",
        "mean": _column_stat(rows, np.mean),
        "per_draw": rows,
    }


def _log_ratio(a: xr.DataArray, b: xr.DataArray) -> float:
    ok = (a > 0) & (b > 0)
    return float(abs(np.log10(a.where(ok) / b.where(ok))).mean())


def _fraction(v: np.ndarray, lo: float, hi: float) -> float:
    v = v[np.isfinite(v)]
    return float(np.mean((v >= lo) & (v < hi)))


def lag_correlation(da: xr.DataArray, lag: int) -> float:
    """Correlation of sqrt-space anomalies ``lag`` steps apart, pooled over members and cells
    (:func:`xdiffusion.diagnostics.lag_autocorrelation`)."""
    return float(dg.lag_autocorrelation(np.sqrt(da.clip(min=0)), [lag])[0])


def between_window_share(da: xr.DataArray | np.ndarray) -> float:
    """Share of the variance of sqrt(rain) that lies between the windows' means: how much
    windows differ in wetness, the part of the pooled lag correlations that every lag shares
    (generated windows with too little of it have every lag too low)."""
    s = np.sqrt(np.clip(np.asarray(da), 0.0, None))
    means = s.reshape(s.shape[0], -1).mean(1)
    return float(means.var() / s.var())


def metrics(gen: xr.DataArray, real: xr.DataArray) -> dict:
    """Every metric of the module docstring for ``gen`` against ``real`` (both windows on a
    ``realization`` dimension)."""
    frames = real.sizes["time"]
    q = dg.qq(gen, real, quantiles=list(QUANTILES))
    g, r = gen.values.ravel(), real.values.ravel()
    out = {
        "temporal_psd_log_error": _log_ratio(
            dg.temporal_psd(gen, window=frames), dg.temporal_psd(real, window=frames)
        ),
        "spatial_psd_log_error": _log_ratio(dg.spatial_psd(gen), dg.spatial_psd(real)),
        "qq_relative_error": {
            str(k): abs(float(v)) for k, v in zip(QUANTILES, q.relative_error.values)
        },
        "mean_abs_mnb": float(dg.mean_normalised_bias(gen, real).mean_abs_mean_normalised_bias),
        "drizzle_ratio": _fraction(g, *DRIZZLE) / max(_fraction(r, *DRIZZLE), 1e-12),
        "lag_autocorrelation": {
            str(k): {"generated": lag_correlation(gen, k), "real": lag_correlation(real, k)}
            for k in LAGS
        },
    }
    out["between_window_share"] = {
        "generated": between_window_share(gen),
        "real": between_window_share(real),
    }
    out["lag_autocorrelation_error"] = {
        k: abs(v["generated"] - v["real"]) for k, v in out["lag_autocorrelation"].items()
    }
    return out


def _scalar_metrics(m: dict) -> dict[str, float]:
    """The metrics as flat numbers (drizzle as |log ratio|, so 0 is perfect like the rest)."""
    flat = {
        "temporal_psd_log_error": m["temporal_psd_log_error"],
        "spatial_psd_log_error": m["spatial_psd_log_error"],
        "mean_abs_mnb": m["mean_abs_mnb"],
        "drizzle_abs_log_ratio": abs(math.log(max(m["drizzle_ratio"], 1e-12))),
    }
    flat.update({f"qq_{k}": v for k, v in m["qq_relative_error"].items()})
    flat.update({f"lag{k}_error": v for k, v in m["lag_autocorrelation_error"].items()})
    return flat


def ratios(gen: dict, floor: dict[str, float]) -> dict[str, float]:
    """Each metric of ``gen`` (a :func:`metrics` dict) over its floor, as flat numbers
    (:func:`expected_floor`'s mean; ≤ 1.5 is the issue's 60-minute target)."""
    g = _scalar_metrics(gen)
    return {k: g[k] / max(floor[k], 1e-6) for k in g}


def rescore(paths: list[str], sets: int) -> dict:
    """Ratios of the runs stored in earlier results files to the expected floor (the
    fitted models' metrics are unchanged; only the floor they are divided by is new)."""
    out: dict = {
        "benchmark": "quality-rescore",
        "floor_sets": sets,
        "floors": {},
        "training_data_floors": {},
        "runs": {},
    }
    references: dict[str, xr.DataArray] = {}  # one reference per setting, shared
    for p in paths:
        doc = json.loads(Path(p).read_text())
        st = doc["settings"]
        key = f"{doc['setting']['name']}-{st['size']}px-{st['frames']}f-{st['members']}"
        gen_kw = dict(ny=st["size"], nx=st["size"], **SETTINGS[doc["setting"]["name"]])
        if key not in references:
            references[key] = _reference(st["members"], st["frames"], gen_kw)
            out["floors"][key] = expected_floor(
                references[key], st["members"], st["frames"], gen_kw, sets
            )
        floor = out["floors"][key]["mean"]
        train_key = f"{key}-seed{st['seed']}-nt{st['nt']}"
        if train_key not in out["training_data_floors"]:
            out["training_data_floors"][train_key] = training_data_floor(
                synthetic_precipitation(st["nt"], seed=st["seed"], **gen_kw),
                references[key],
                st["members"],
                st["frames"],
                TRAINING_FLOOR_DRAWS,
            )
        data_floor = out["training_data_floors"][train_key]["mean"]
        for name, run in doc["runs"].items():
            out["runs"][f"{Path(p).stem}:{name}"] = {
                "steps": run["steps"],
                "metrics": _scalar_metrics(run["metrics"]),
                "ratio_to_expected_floor": ratios(run["metrics"], floor),
                "ratio_to_training_data_floor": ratios(run["metrics"], data_floor),
                "ratio_to_single_floor": run["ratio_to_floor"],
            }
    return out


def _reference(members: int, frames: int, gen_kw: dict) -> xr.DataArray:
    n_ref = members * REFERENCE_FACTOR
    return _windows(synthetic_precipitation(n_ref * frames, seed=101, **gen_kw), n_ref, frames, 1)


def _fit(train: xr.DataArray, steps: int, args, net: dict, fit_kw: dict) -> xd.DiffusionModel:
    return train.diffusion.fit(
        frames=args.frames,
        transform="sqrt",
        steps=steps,
        batch_size=args.batch,
        lr=args.lr,
        warmup=min(100, max(1, steps // 10)),
        val_fraction=0.0,
        seed=args.seed,
        device="cpu",
        progress=False,
        net={**args.net, **net},
        **fit_kw,
    )


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run")
    ap.add_argument("--budgets", default="5", help="CPU minutes of training, comma-separated")
    ap.add_argument("--variants", default="base,tconv", help=f"among {sorted(VARIANTS)}")
    ap.add_argument("--setting", default="default", choices=sorted(SETTINGS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--nt", type=int, default=DEFAULT_NT, help="hours of training data")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--members", type=int, default=192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--steps",
        type=int,
        default=None,
        help="train exactly this many steps (one budget only) instead of the budget's "
        "minutes at the measured rate: an ablation at equal steps with an earlier run, "
        "whatever the load on the machine now",
    )
    ap.add_argument("--tag", default=None, help="suffix of the results file")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="load a model this benchmark fitted before for the same setting, variant and "
        "budget (benchmarks/.cache/) instead of fitting: re-score sampling and decoding",
    )
    ap.add_argument(
        "--floor-sets",
        type=int,
        default=FLOOR_SETS,
        help="independent real sets averaged for the floor",
    )
    ap.add_argument(
        "--rescore",
        nargs="+",
        metavar="RESULTS_JSON",
        help="only divide the runs of these results files by the expected floor "
        "(writes quality-rescore.json)",
    )
    args = ap.parse_args(argv)
    if args.rescore:
        result = rescore(args.rescore, args.floor_sets)
        (RESULTS / "quality-rescore.json").write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result, indent=1))
        return result
    args.net = {"width": 32}
    if args.quick:
        args.size, args.frames, args.nt, args.members = 16, 4, 400, 8
        args.net = {"width": 8, "mults": [1, 2]}
    torch.set_num_threads(args.threads)
    data_kw = SETTINGS[args.setting]
    gen_kw = dict(ny=args.size, nx=args.size, **data_kw)
    train = synthetic_precipitation(args.nt, seed=args.seed, **gen_kw)
    reference = _reference(args.members, args.frames, gen_kw)
    # the single contiguous set of the results files before the expected floor, kept for
    # comparison with them
    other = _windows(
        synthetic_precipitation(3 * args.members * args.frames, seed=FLOOR_SEED, **gen_kw),
        args.members,
        args.frames,
        2,
    )
    single_floor = metrics(other, reference)
    floor = expected_floor(
        reference, args.members, args.frames, gen_kw, 2 if args.quick else args.floor_sets
    )
    data_floor = training_data_floor(
        train, reference, args.members, args.frames, 1 if args.quick else TRAINING_FLOOR_DRAWS
    )
    result: dict = {
        "benchmark": "quality",
        "xdiffusion": xd.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "setting": {
            "name": args.setting,
            **{k: list(v) if isinstance(v, tuple) else v for k, v in data_kw.items()},
        },
        "settings": {k: v for k, v in vars(args).items()},
        "floor": floor,
        "training_data_floor": data_floor,
        "single_contiguous_floor": single_floor,
        "runs": {},
    }
    template = reference.isel(realization=0, drop=True)
    budgets = [float(b) for b in args.budgets.split(",")]
    if args.steps is not None and len(budgets) != 1:
        ap.error("--steps trains one budget: pass a single --budgets value")
    for name in args.variants.split(","):
        net, fit_kw, sampling_steps, sampler = VARIANTS[name]
        trained = TRAINS_AS.get(name, name)
        rate = None
        for minutes in budgets:
            seed_tag = f"-seed{args.seed}" if args.seed else ""  # seed 0 keeps its old name
            # smoke runs keep their tiny models apart from the real runs' fits
            quick_tag = "-quick" if args.quick else ""
            # fits on another amount of data are other models (4000 h keeps its old name)
            nt_tag = f"-nt{args.nt}" if args.nt != DEFAULT_NT else ""
            cached = CACHE / (
                f"quality-{args.setting}-{trained}-{minutes:g}min{seed_tag}{nt_tag}{quick_tag}"
            )
            reused = bool(args.reuse and cached.exists())
            if reused:
                model = xd.load(cached)
                steps = int(model.config["training"]["steps"])
                seconds = float(model.config["training"].get("seconds", float("nan")))
                _log(f"[{name}] {minutes:g} min: reusing {cached} ({steps} steps)")
            else:
                if rate is None:
                    # the rate of this network here and now: a short fit, timed after a
                    # warm-up fit
                    calib = 3 if args.quick else 20
                    _fit(train, 2, args, net, fit_kw)
                    t0 = time.perf_counter()
                    _fit(train, calib, args, net, fit_kw)
                    rate = calib / (time.perf_counter() - t0)
                steps = 20 if args.quick else max(1, round(minutes * 60 * rate))
                if args.steps is not None:
                    steps = args.steps
                _log(f"[{name}] {minutes:g} min ≈ {steps} steps at {rate:.2f} steps/s")
                t0 = time.perf_counter()
                model = _fit(train, steps, args, net, fit_kw)
                seconds = time.perf_counter() - t0
            generate = functools.partial(
                model.sample,
                template,
                n=args.members,
                steps=sampling_steps,
                sampler=sampler,
                seed=args.seed,
                progress=False,
            )
            t0 = time.perf_counter()
            ens = generate()
            t_sample = time.perf_counter() - t0
            m = metrics(ens, reference)
            # ablation on the same weights and draws: decode without the dry threshold
            thresholds = [v.dry_below for v in model.codec]
            for v in model.codec:
                v.dry_below = None
            raw = generate()
            for v, thr in zip(model.codec, thresholds):
                v.dry_below = thr
            m_raw = metrics(raw, reference)
            if not reused:
                CACHE.mkdir(exist_ok=True)
                model.save(cached, overwrite=True)
            run = {
                "variant": name,
                "budget_minutes": minutes,
                "steps": steps,
                "reused_fit": reused,
                "steps_per_second": None if rate is None else round(rate, 3),
                "samples_per_second": None if rate is None else round(rate * args.batch, 2),
                "seconds_fit": round(seconds, 1),
                "seconds_sample": round(t_sample, 1),
                "sampling_steps": sampling_steps,
                "sampler": model.sampling("sample", sampler=sampler, steps=sampling_steps).sampler,
                "final_loss": float(np.mean(model.history_dict["loss"][-50:])),
                "dry_below": thresholds,
                "exact_zeros": {
                    "generated": float((ens.values == 0).mean()),
                    "without_dry_decode": float((raw.values == 0).mean()),
                    "real": float((reference.values == 0).mean()),
                },
                "metrics": m,
                "ratio_to_floor": ratios(m, floor["mean"]),
                "ratio_to_training_data_floor": ratios(m, data_floor["mean"]),
                "ratio_to_single_floor": ratios(m, _scalar_metrics(single_floor)),
                "without_dry_decode": {
                    "metrics": m_raw,
                    "ratio_to_floor": ratios(m_raw, floor["mean"]),
                },
            }
            result["runs"][f"{name}@{minutes:g}min"] = run
            _log(json.dumps({k: run[k] for k in ("steps", "seconds_fit", "ratio_to_floor")}))
    tag = args.tag or ("quick" if args.quick else None)
    path = RESULTS / f"quality{'-' + tag if tag else ''}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
