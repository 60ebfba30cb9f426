"""``xdiffusion demo``: the main job end to end on synthetic precipitation.

Generates data, fits a small model, samples an ensemble, fills gaps, forecasts, downscales,
evaluates, and writes netCDF files, one PNG figure per task and the model to one folder.
:func:`run_demo` returns a summary dict (also ``summary.json``); :func:`format_summary`
turns it into the few paragraphs the command prints: what was fitted and for how long,
where each file is, what the numbers mean, and why a model trained for minutes loses to
linear interpolation.

The torch thread count is chosen from the cores free when the demo starts (see
:func:`choose_threads`): on a busy machine, one torch thread per core taken by another
process halves throughput or worse, so the demo stays fast by not competing for them.
"""

from __future__ import annotations

import os
import sys
import textwrap
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import xarray as xr

from xdiffusion.io.cf import to_dataset

__all__ = ["choose_threads", "expected_seconds", "format_summary", "run_demo"]

#: Training steps of the demo, and of ``--tiny``.
DEFAULT_STEPS = 300
TINY_STEPS = 30
#: Seconds per training step of the demo's default model (``small`` U-Net, 32×32 cells,
#: 8 frames, batch 8) on an idle 2-core CPU with 2 torch threads, and seconds of
#: everything else (sampling, evaluation, files, figures): 113 s for 300 steps and 18 s of
#: the 131 s of ``xdiffusion demo --threads 2`` (figures: 5 s).
STEP_SECONDS = 0.38
OTHER_SECONDS = 18.0
REFERENCE_THREADS = 2
REFERENCE_SIZE, REFERENCE_FRAMES = 32, 8
#: Seconds of ``--tiny`` (a width-8 network, 30 steps) with 2 threads, roughly: 16 s were
#: measured with 1 thread on an idle 2-core CPU.
TINY_SECONDS = 8.0
#: Training steps after which the conditional benchmark's model (benchmarks/conditional.py,
#: docs/conditional.md) fills gaps 1.6–2.5× better than linear interpolation in RMSE.
GOOD_STEPS = 5000
#: What the demo runs: the quick fit and the reference model (default), or one of them.
DEMO_MODES = ("both", "fit", "pretrained")
#: Held-out data of the reference model's setting: hours, and a seed other than training's.
REFERENCE_HOURS, REFERENCE_SEED = 400, 1000
#: Width of the printed summary's paragraphs (characters).
SUMMARY_WIDTH = 92
#: Resolution of the demo's PNG figures.
FIGURE_DPI = 100
#: What each file of the demo folder holds (the order of the printed list).
FILE_DESCRIPTIONS = {
    "model": "the quick model fitted here (xdiffusion.load('.../model'))",
    "data_sample.nc": "the first 200 hours of the synthetic training data",
    "ensemble.nc": "an unconditional ensemble on a held-out template's grid and times",
    "ensemble.png": "its members (generated) under the observed template (top row)",
    "interpolated.nc": "gaps filled (observed values kept exactly; pr_status flags)",
    "interpolation.png": "the truth, then filled members; generated frames framed in red",
    "forecast.nc": "an ensemble forecast continuing a held-out series",
    "forecast.png": "the last observed frame, then the leads: observed row, generated rows",
    "downscaled.nc": "fine fields generated from a coarsened input",
    "downscaling.png": "coarse input, generated fine fields, the fine truth",
    "report.nc": "diagnostics of the ensemble against held-out data",
    "report.png": "histograms, QQ, spectra, bias map, CRPS and rank histogram",
    "report-quick.nc": "the same diagnostics for the quick model's ensemble",
    "report-quick.png": "the quick model's report, to compare with report.png",
    "loss.png": "training and validation loss by optimisation step",
    "summary.json": "these numbers, machine-readable",
}


def _nc(obj: xr.DataArray | xr.Dataset, path: Path) -> str:
    to_dataset(obj).to_netcdf(path)
    return path.name


def _usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on every platform
        return max(1, os.cpu_count() or 1)


def choose_threads(threads: int | str | None = "auto") -> tuple[int, str]:
    """The torch thread count for the demo and why it was chosen.

    Parameters
    ----------
    threads
        A number ≥ 1: that many. ``"auto"``: ``OMP_NUM_THREADS`` if it is set (the user's
        explicit choice), else the cores free now: the usable cores (CPU affinity) minus
        the rounded 1-minute load average, at least 1. ``None``: torch's current setting
        (e.g. one made with ``torch.set_num_threads``), left as it is.

    Returns
    -------
    (int, str)
        The count and a short description of its source.
    """
    import torch

    if threads is None:
        return torch.get_num_threads(), "torch.get_num_threads()"
    if isinstance(threads, str):
        if threads.strip().lower() != "auto":
            raise ValueError(f"threads must be 'auto', None or a number ≥ 1, got {threads!r}")
        env = os.environ.get("OMP_NUM_THREADS", "").strip()
        if env.isdigit() and int(env) >= 1:
            return int(env), "OMP_NUM_THREADS"
        cores = _usable_cores()
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # no load average on this platform
            return cores, f"{cores} usable cores (load unknown)"
        free = max(1, min(cores, cores - round(load)))
        return free, f"free cores: {cores} usable, 1-minute load {load:.2f}"
    if isinstance(threads, bool) or not isinstance(threads, int | np.integer) or threads < 1:
        raise ValueError(f"threads must be 'auto', None or a number ≥ 1, got {threads!r}")
    return int(threads), "threads= (--threads)"


def expected_seconds(
    steps: int,
    *,
    size: int = REFERENCE_SIZE,
    frames: int = REFERENCE_FRAMES,
    threads: int = REFERENCE_THREADS,
    tiny: bool = False,
) -> float:
    """A rough run time of the demo, from the timings of an idle 2-core CPU.

    Parameters
    ----------
    steps
        Training steps.
    size, frames
        Grid size and window length: the cost scales with the elements of a window.
    threads
        Torch threads: fewer than 2 are slower in proportion; more are taken to help up
        to 2× at most.
    tiny
        The ``--tiny`` smoke run (its own small network).

    Returns
    -------
    float
        Seconds; a machine busy with other work takes longer.
    """
    scale = (size / REFERENCE_SIZE) ** 2 * frames / REFERENCE_FRAMES
    scale *= min(max(REFERENCE_THREADS / max(1, threads), 0.5), float(REFERENCE_THREADS))
    if tiny:
        return TINY_SECONDS * max(scale, 0.25) * max(steps, 1) / TINY_STEPS
    return (steps * STEP_SECONDS + OTHER_SECONDS) * scale


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def run_demo(
    out: str | Path = "xdiffusion-demo",
    *,
    steps: int | None = None,
    size: int = 32,
    frames: int = 8,
    members: int = 4,
    tiny: bool = False,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    threads: int | str | None = "auto",
    mode: str = "both",
) -> dict:
    """Run the demo and return a summary dict (also written as ``summary.json``).

    Parameters
    ----------
    out
        Output folder (created).
    steps
        Training steps (default :data:`DEFAULT_STEPS`, or :data:`TINY_STEPS` with
        ``tiny``).
    size, frames, members
        Grid size, window length and ensemble size.
    tiny
        A seconds-long smoke run (tests): few steps, few members, a small network.
    threads
        Torch threads while the demo runs (restored afterwards): a number, ``"auto"``
        (the cores free now, or ``OMP_NUM_THREADS`` if set) or ``None`` (torch's current
        setting); see :func:`choose_threads`. The count used is ``summary["threads"]``.
    progress
        Progress bars, and a line on stderr before the work starts with the torch threads
        and the expected run time (:func:`expected_seconds`).
    mode
        ``"both"`` (default): fit a quick model to show training, and run the generation
        tasks with the shipped reference model (:func:`xdiffusion.load_pretrained`) on
        held-out data in its setting, writing the quick model's report beside the reference
        model's; ``"fit"``: the quick model does everything; ``"pretrained"``: no fit.

    Returns
    -------
    dict
        Timings, scores, ``out`` (the folder's absolute path) and ``files``; printed by
        ``xdiffusion demo`` through :func:`format_summary` (``--json``: as JSON).
    """
    import torch

    if mode not in DEMO_MODES:
        raise ValueError(f"mode must be one of {list(DEMO_MODES)}, got {mode!r}")
    n_threads, source = choose_threads(threads)
    previous = torch.get_num_threads()
    if progress:
        n_steps = steps if steps is not None else (TINY_STEPS if tiny else DEFAULT_STEPS)
        if mode == "pretrained":
            n_steps = 0
        guess = expected_seconds(n_steps, size=size, frames=frames, threads=n_threads, tiny=tiny)
        print(
            f"xdiffusion demo: {n_threads} torch thread(s) ({source}); expected run time "
            f"about {_duration(guess)} ({n_steps} training steps; longer on a busy machine)",
            file=sys.stderr,
        )
    torch.set_num_threads(n_threads)
    try:
        return _run(
            out,
            steps=steps,
            size=size,
            frames=frames,
            members=members,
            tiny=tiny,
            seed=seed,
            device=device,
            progress=progress,
            threads={"threads": n_threads, "threads_source": source},
            mode=mode,
        )
    finally:
        torch.set_num_threads(previous)


def _run(
    out: str | Path,
    *,
    steps: int | None,
    size: int,
    frames: int,
    members: int,
    tiny: bool,
    seed: int,
    device: str,
    progress: bool,
    threads: dict,
    mode: str = "both",
) -> dict:
    import json

    import xdiffusion  # noqa: F401  (registers .diffusion)
    from xdiffusion.datasets import synthetic_precipitation

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    nt = 600 if tiny else 4000
    data = synthetic_precipitation(nt=nt, ny=size, nx=size, seed=seed)
    n_train = int(nt * 0.8)
    train, test = data.isel(time=slice(0, n_train)), data.isel(time=slice(n_train, None))
    files = [_nc(data.isel(time=slice(0, 200)), out / "data_sample.nc")]
    steps = steps if steps is not None else (TINY_STEPS if tiny else DEFAULT_STEPS)
    net = {"width": 8, "mults": [1, 2]} if tiny else None
    sampling_steps = 4 if tiny else 20
    members = 2 if tiny else members
    summary: dict = {**threads, "out": str(out.resolve()), "mode": mode}
    gen = {"steps": sampling_steps, "seed": seed + 1, "progress": progress}

    model = None
    if mode != "pretrained":
        t = time.perf_counter()
        model = train.diffusion.fit(
            frames=frames,
            steps=steps,
            batch_size=8,
            lr=1e-3,
            warmup=50,
            transform="sqrt",
            seed=seed,
            device=device,
            progress=progress,
            net=net,
        )
        fit_s = time.perf_counter() - t
        model.save(out / "model")
        summary.update(
            steps=steps,
            train_hours=n_train,
            grid=f"{size}x{size} cells of 8.8 km",
            fit_seconds=round(fit_s, 1),
            model=repr(model),
            final_loss=float(np.mean(model.history_dict["loss"][-50:])),
        )
        if model.history_dict.get("val_loss"):
            summary["val_loss"] = model.history_dict["val_loss"][-1]
    if mode == "fit":
        task_model, task_test = model, test
    else:
        from xdiffusion.pretrained import load_pretrained, reference_data

        task_model = load_pretrained("synthetic-precip", device="cpu")
        task_test = reference_data(REFERENCE_HOURS, seed=REFERENCE_SEED + seed)
        summary["pretrained"] = {
            "name": "synthetic-precip",
            "steps": task_model.config["training"]["steps"],
            "grid": "16x16 cells of 25 km",
        }
    figures = _tasks(task_model, task_test, members, gen, out, files, summary)
    if mode == "both":
        # the quick model's ensemble and report, beside the reference model's
        f = model.frames
        template = test.isel(time=slice(0, f + f // 2))
        ens = template.diffusion.sample(model, members, **gen)
        report = ens.diffusion.evaluate(test.isel(time=slice(0, 2 * f * 8)), observations=template)
        files.append(_nc(report, out / "report-quick.nc"))
        summary["quick_evaluation"] = _scores(report)
        figures["report-quick.png"] = lambda plot, r=report: plot.plot_report(r)
    if model is not None:
        figures["loss.png"] = lambda plot: plot.plot_loss(model)
    t = time.perf_counter()
    try:
        import matplotlib  # noqa: F401  (optional: the plot extra)
    except ImportError:
        summary["figures"] = "skipped: install xdiffusion[plot] for figures"
    else:
        from xdiffusion import plot

        for name, draw in figures.items():
            draw(plot).savefig(out / name, dpi=FIGURE_DPI)
            files.append(name)
    summary["figure_seconds"] = round(time.perf_counter() - t, 1)
    files.append("summary.json")
    summary["files"] = (["model"] if model is not None else []) + files
    summary["total_seconds"] = round(time.perf_counter() - t_all, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _scores(report: xr.Dataset) -> dict:
    return {k: float(report[k]) for k in report.data_vars if report[k].ndim == 0}


def _tasks(model, test: xr.DataArray, members: int, gen: dict, out: Path, files: list, summary):
    """Ensemble, gap filling, forecast, downscaling and the report with ``model`` on held-out
    ``test`` data; their files, numbers (in ``summary``) and figure makers (returned)."""
    from xdiffusion import diagnostics

    frames = model.frames
    t = time.perf_counter()
    template = test.isel(time=slice(0, frames + frames // 2))
    ens = template.diffusion.sample(model, members, **gen)
    summary["sample_seconds"] = round(time.perf_counter() - t, 1)
    files.append(_nc(ens, out / "ensemble.nc"))

    gappy = test.isel(time=slice(2 * frames, 4 * frames)).copy()
    truth_gaps = gappy.copy()
    gap = np.zeros(gappy.sizes["time"], dtype=bool)
    gap[2:4] = gap[8:11] = True
    gappy[{"time": np.flatnonzero(gap)}] = np.nan
    t = time.perf_counter()
    filled = gappy.diffusion.interpolate(model, max(2, members // 2), **gen)
    summary["interpolate_seconds"] = round(time.perf_counter() - t, 1)
    files.append(_nc(filled, out / "interpolated.nc"))
    lin = gappy.interpolate_na("time")
    err = lambda a: float(np.sqrt(((a - truth_gaps).isel(time=gap) ** 2).mean()))  # noqa: E731
    summary["interpolation_rmse"] = {
        "diffusion_mean": err(filled.mean("realization")),
        "linear": err(lin),
    }
    summary["gap_hours"] = int(gap.sum())

    hist = test.isel(time=slice(0, 4 * frames))
    lead = frames // 2
    t = time.perf_counter()
    fc = hist.diffusion.forecast(model, lead, members, **gen)
    summary["forecast_seconds"] = round(time.perf_counter() - t, 1)
    files.append(_nc(fc, out / "forecast.nc"))
    obs = test.isel(time=slice(4 * frames, 4 * frames + lead))
    obs = obs.assign_coords(time=fc.time)
    crps = diagnostics.crps(fc, obs, fair=True)
    summary["forecast_crps_mean"] = float(crps.mean())
    # persistence (the last observed frame) as a one-member forecast: its CRPS is the MAE
    last = hist.isel(time=-1, drop=True)
    summary["forecast_crps_persistence"] = float(abs(obs - last).mean())
    summary["forecast_lead_hours"] = lead

    size = test.sizes[test.dims[1]]
    factor = 4 if size % 4 == 0 else 2
    fine = test.isel(time=slice(0, frames))
    coarse = fine.coarsen({fine.dims[1]: factor, fine.dims[2]: factor}).mean()
    t = time.perf_counter()
    down = coarse.diffusion.downscale(model, max(2, members // 2), factor=factor, **gen)
    summary["downscale_seconds"] = round(time.perf_counter() - t, 1)
    files.append(_nc(down, out / "downscaled.nc"))
    recoarse = down.coarsen({fine.dims[1]: factor, fine.dims[2]: factor}).mean()
    summary["downscale_max_block_error"] = float(abs(recoarse - coarse.values).max())

    reference = test.isel(time=slice(0, 2 * frames * 8))
    # the template is a draw from the same climate as the members, so it scores the
    # unconditional ensemble's calibration (CRPS, rank histogram, spread-skill)
    report = ens.diffusion.evaluate(reference, observations=template)
    files.append(_nc(report, out / "report.nc"))
    summary["evaluation"] = _scores(report)
    title = "ensemble: fields generated by the diffusion model (rows 2 on), not conditioned "
    return {
        "ensemble.png": lambda plot: plot.plot_fields(
            ens.isel(time=slice(0, frames)),
            observed=template,
            title=title + "on the observed template (top row)",
        ),
        "interpolation.png": lambda plot: plot.plot_interpolation(filled, truth=truth_gaps),
        "forecast.png": lambda plot: plot.plot_forecast(fc, history=hist, truth=obs),
        "downscaling.png": lambda plot: plot.plot_downscaling(down, coarse, truth=fine),
        "report.png": lambda plot: plot.plot_report(report),
    }


def _number(value: object, digits: int = 3) -> str:
    try:
        return f"{float(value):.{digits}g}"  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "?"


def _paragraph(text: str, first: str = "", indent: str = "") -> list[str]:
    return textwrap.wrap(
        text,
        SUMMARY_WIDTH,
        initial_indent=first,
        subsequent_indent=indent,
        break_on_hyphens=False,
    )


def format_summary(summary: Mapping) -> str:
    """The demo's summary as text for people: what ran, where the files are, what the
    numbers mean and how to get a better model.

    Parameters
    ----------
    summary
        The dict returned by :func:`run_demo` (keys that are missing are left out).

    Returns
    -------
    str
        A few paragraphs, lines at most :data:`SUMMARY_WIDTH` characters (but file names).
    """
    out = summary.get("out", "the output folder")
    steps = summary.get("steps")
    threads = summary.get("threads")
    lines = [
        f"xdiffusion demo finished in {_number(summary.get('total_seconds'))} s "
        f"({threads} torch thread(s)).",
        "",
    ]
    if "fit_seconds" in summary:
        val = f", validation loss {_number(summary['val_loss'])}" if "val_loss" in summary else ""
        lines += _paragraph(
            f"Fitted {summary.get('model', 'a model')} for {steps} steps in "
            f"{_number(summary['fit_seconds'])} s on {summary.get('train_hours', '?')} hours of "
            f"synthetic precipitation ({summary.get('grid', '?')}); final training loss "
            f"{_number(summary.get('final_loss'))}{val} (loss.png)"
            + (
                "; it shows training, the generation below uses the reference model."
                if "pretrained" in summary
                else "."
            ),
            indent="  ",
        )
        lines.append("")
    ref = summary.get("pretrained")
    if ref:
        lines += _paragraph(
            f"Generated with the shipped reference model {ref.get('name')!r} "
            f"({ref.get('steps')} training steps on {ref.get('grid')}; "
            "xdiffusion.load_pretrained) on held-out data in its setting "
            "(xdiffusion.pretrained.reference_data).",
            indent="  ",
        )
        lines.append("")
    files = [str(f) for f in summary.get("files") or []]
    if files:
        ordered = [f for f in FILE_DESCRIPTIONS if f in files] + [
            f for f in files if f not in FILE_DESCRIPTIONS
        ]
        lines.append(f"Files in {out}:")
        width = max(len(f) for f in ordered) + 2
        for name in ordered:
            lines.append(f"  {name:<{width}}{FILE_DESCRIPTIONS.get(name, '')}".rstrip())
        if summary.get("figures"):
            lines.append(f"  (figures {summary['figures']})")
        lines.append("")
    rmse = summary.get("interpolation_rmse") or {}
    evaluation = summary.get("evaluation") or {}
    numbers = []
    if rmse:
        numbers.append(
            f"Gap filling ({summary.get('gap_hours', '?')} missing hours): RMSE of the ensemble "
            f"mean {_number(rmse.get('diffusion_mean'))} mm/h, linear interpolation "
            f"{_number(rmse.get('linear'))} mm/h (lower is better)."
        )
    if "forecast_crps_mean" in summary:
        numbers.append(
            f"Forecast ({summary.get('forecast_lead_hours', '?')} h ahead): CRPS "
            f"{_number(summary['forecast_crps_mean'])} mm/h, persistence (the last observed "
            f"frame) {_number(summary.get('forecast_crps_persistence'))} mm/h (0 is perfect)."
        )
    if "downscale_max_block_error" in summary:
        numbers.append(
            "Downscaling: the generated fields' block means equal the coarse input to "
            f"{_number(summary['downscale_max_block_error'], 2)} mm/h (by construction)."
        )
    if evaluation:
        ratio = evaluation.get("spread_skill_ratio")
        numbers.append(
            "Ensemble against held-out data (report.png; 0 = the same statistics): spatial "
            f"spectrum {_number(evaluation.get('psd_log_error'), 2)} (mean |log10 ratio|), "
            f"quantiles {_number(evaluation.get('qq_relative_error'), 2)} (relative error), "
            f"mean |bias| {_number(evaluation.get('mean_abs_mean_normalised_bias'), 2)}"
            + (f"; spread-skill ratio {_number(ratio, 2)} (1 = calibrated)." if ratio else ".")
        )
    quick = summary.get("quick_evaluation") or {}
    if quick and evaluation:
        keys = ("psd_log_error", "qq_relative_error", "mean_abs_mean_normalised_bias")
        pairs = ", ".join(
            f"{k.replace('_', ' ')} {_number(quick.get(k), 2)} vs {_number(evaluation.get(k), 2)}"
            for k in keys
        )
        numbers.append(
            f"Quick model vs reference model, each ensemble against its held-out data "
            f"(report-quick.png vs report.png; 0 = the same statistics): {pairs}."
        )
    if numbers:
        lines.append("What the numbers say:")
        for text in numbers:
            lines += _paragraph(text, "  - ", "    ")
        lines.append("")
    if isinstance(steps, int) and steps < GOOD_STEPS and ref:
        lines += _paragraph(
            f"The quick model is weaker because {steps} steps exercise every path but are far "
            f"too few to learn how rain moves; the reference model trained for {GOOD_STEPS} "
            "(docs/reference-model.md). xdiffusion demo --fit-only runs every task with the "
            "quick model; --steps N trains it longer.",
        )
        lines.append("")
    elif isinstance(steps, int) and steps < GOOD_STEPS:
        loses = bool(rmse) and float(rmse.get("diffusion_mean", 0)) > float(rmse.get("linear", 0))
        n = threads if isinstance(threads, int) else REFERENCE_THREADS
        good = expected_seconds(GOOD_STEPS, threads=n)
        lines += _paragraph(
            (
                "Why it loses to linear interpolation: the model is undertrained. "
                if loses
                else "The model is undertrained. "
            )
            + f"{steps} steps exercise every path but are far too few to learn how rain "
            f"moves. The benchmark model of docs/conditional.md, trained for {GOOD_STEPS} "
            "steps (10 min on its smaller grid), fills gaps 1.6-2.5x better than linear "
            "interpolation and its forecasts beat persistence at every lead. At this demo's "
            f"size: xdiffusion demo --steps {GOOD_STEPS}, about {_duration(good)} with {n} "
            "thread(s) on an idle CPU (a GPU is much faster).",
        )
        lines.append("")
    lines.append("Machine-readable: summary.json, or xdiffusion demo --json.")
    return "\n".join(lines)
