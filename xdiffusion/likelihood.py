"""Negative log-likelihood bounds of a fitted model on DataArrays/Datasets, in bits per element.

The series is cut into non-overlapping windows of ``model.frames`` frames (windows never span
a gap in the time axis; a trailing remainder shorter than a window is left out). For each
window the variational bound of :func:`xdiffusion.core.likelihood.vlb_terms` is computed in
diffusion space, and the change of variables (Herbert (2023), eq. 4.2–4.10)

    −log p(x) ≤ L̃(h(x)) − Σᵢ log |h'(xᵢ)|

turns it into a bound in data space, where h is the whole chain physical → diffusion
(fixed transform, affine scaling, learned h_ω). Only data-space numbers are comparable
between models with different transforms (§4.3).

Which elements count: cells that the model treats as permanently missing (NaN at every
training time step) are excluded, as in training; a window with any other NaN is skipped.

Zero-inflated data (dry cells at exactly 0) has no density: in diffusion space the dry
cells are a point mass, whose bound falls without limit as λ_rec grows, and the log-derivative
of a transform such as sqrt is infinite there. ``dry_threshold`` makes the number meaningful:
values below it form one discrete class whose probability is bounded by dequantisation
(−log P(bin) ≤ E_u[−log p(u)] − log |bin| with u uniform in the bin), so the result bounds
−log of a mixed likelihood (probability for dry cells, density for the others).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from xdiffusion.codec import Codec
from xdiffusion.core.latent import gaussian_kl, reparameterize
from xdiffusion.core.likelihood import LN2, vlb_terms
from xdiffusion.engine import Engine
from xdiffusion.inputs import check_lower, features, prepare_region
from xdiffusion.io.windows import WindowReader, window_starts
from xdiffusion.validation import (
    check_bool,
    check_int,
    check_number,
    check_positive_int,
    check_seed,
    is_number,
)

__all__ = ["default_dry_thresholds", "dry_thresholds", "nll", "window_positions"]

Dims = Mapping[str, str] | None
#: Most λ strata per window: each is one network evaluation of every window (the Monte-Carlo
#: error falls like n_lambda^(−3/2); a few hundred are already far below the window spread).
MAX_N_LAMBDA = 10_000
#: Per variable (bin lower end, threshold) of the discrete dry class, or None.
Bins = list[tuple[float, float] | None]


def _lower_end(codec: Codec, c: int, variable: Mapping) -> float:
    """The lower end of a variable's data: the transform's bound, else the training minimum."""
    lower = codec[c].lower
    return float(lower if lower is not None else variable["min"])


def dry_thresholds(
    codec: Codec,
    names: Sequence[str],
    dry_threshold: float | Mapping[str, float] | None,
    variables: Sequence[Mapping],
) -> Bins:
    """Per variable (bin lower end, threshold) from an explicit ``dry_threshold``.

    Parameters
    ----------
    codec
        The model's codec (lower bounds).
    names
        Variable names.
    dry_threshold
        A number (every variable), a mapping variable → number or None, or None.
    variables
        The model's per-variable configuration (training ``min``).
    """
    if dry_threshold is None:
        return [None] * len(names)
    if isinstance(dry_threshold, Mapping):
        unknown = set(dry_threshold) - set(names)
        if unknown:
            raise ValueError(
                f"dry_threshold has entries {sorted(unknown)} that are not model variables "
                f"{list(names)}"
            )
        values = [dry_threshold.get(n) for n in names]
    else:
        values = [dry_threshold] * len(names)
    out: Bins = []
    for c, (name, v) in enumerate(zip(names, values)):
        if v is None:
            out.append(None)
            continue
        if not is_number(v) or not np.isfinite(float(v)):
            raise TypeError(
                f"dry_threshold must be a finite number (data units), a mapping variable → "
                f"number, 'model' or None; got {v!r} for {name!r}"
            )
        lower = _lower_end(codec, c, variables[c])
        if not float(v) > lower:
            raise ValueError(
                f"dry_threshold={v!r} for {name!r} must exceed the lower end {lower:g} of the "
                "data (the transform's lower bound, else the training minimum)"
            )
        out.append((lower, float(v)))
    return out


def default_dry_thresholds(
    codec: Codec, thresholds: Sequence[float | None], variables: Sequence[Mapping]
) -> Bins:
    """The model's own dry classes.

    A variable gets its fit-time threshold as a dry class when that threshold took part
    in the model: its fixed transform has a lower bound (``sqrt``, ``log1p``: the
    transforms for zero-inflated data such as precipitation) or it has a learned h_ω
    (whose mask set M of eq. 4.14 the threshold defined), and the threshold lies above the
    data's lower end. A ``"none"`` transform (a temperature, a Gaussian) gets none.
    """
    out: Bins = []
    for c, thr in enumerate(thresholds):
        lower = _lower_end(codec, c, variables[c])
        used = codec[c].lower is not None or codec[c].has_learned
        ok = used and thr is not None and is_number(thr) and np.isfinite(thr) and thr > lower
        out.append((lower, float(thr)) if ok else None)
    return out


def window_positions(p, frames: int) -> np.ndarray:
    """Non-overlapping window starts of a prepared series that do not span a gap in time
    (greedy from the start; a trailing remainder shorter than ``frames`` is left out)."""
    n = p.shape[1]
    if frames > n:
        raise ValueError(
            f"data has {n} time steps, fewer than the model's frames={frames}; pass a longer series"
        )
    time = p.time
    ok = window_starts(time if time is not None else np.arange(n), frames)
    chosen, nxt = [], 0
    for s in ok:
        if s >= nxt:
            chosen.append(int(s))
            nxt = s + frames
    return np.asarray(chosen, dtype=int)


def nll(
    engine: Engine,
    data: xr.DataArray | xr.Dataset,
    *,
    n_lambda: int = 32,
    seed: int = 0,
    dims: Dims = None,
    batch_size: int = 8,
    lambda_rec: float | None = None,
    bins: Bins | None = None,
    terms: bool = True,
    check_grid: bool = True,
) -> xr.Dataset | float:
    """Bound on the negative log-likelihood of ``data`` under a model, in bits per element.

    ``DiffusionModel.nll`` resolves the dry classes (by default the model's own) and calls
    this with its engine.

    Parameters
    ----------
    engine
        The model's :class:`~xdiffusion.engine.Engine`; a model conditioned on time
        features gets each window's features from the time coordinate of ``data``.
    data
        (time, y, x) DataArray, or Dataset with the model's variables, on the model's grid
        or a contiguous sub-region of it (located by its coordinates; the network runs on
        the region alone, with the valid mask cropped to it), at least ``model.frames``
        long; may be dask-backed (read window by window).
    n_lambda
        λ strata (network evaluations) per window for the diffusion term; the Monte-Carlo
        error falls like n_lambda^(−3/2) (stratification) and with the number of windows.
    seed
        Seed of λ, ε and dequantisation noise; the same seed and ``batch_size`` give the
        same result on the same machine.
    dims
        Axis overrides, e.g. ``{"T": "time", "Y": "rlat", "X": "rlon"}``.
    batch_size
        Windows per network call.
    lambda_rec
        Log-SNR of the Gaussian decoder, in (λmin, λmax]; default λmax. Every value gives a
        valid bound; for a continuous density the optimal network's bound is tight as
        λ_rec grows, but a small network is least accurate at large λ (rarely seen in
        training), and a lower value (e.g. 10) can give the tighter bound.
    bins
        Per variable (lower, threshold) of a discrete "dry" class, or None (see
        :func:`dry_thresholds`, :func:`default_dry_thresholds`): each value below the
        threshold is replaced by a uniform draw in [lower, threshold) and
        log(threshold − lower) is subtracted, which bounds −log of the probability of that
        class (dequantisation). Needed for zero-inflated data such as precipitation, whose
        exact zeros have no density.
    terms
        Return the Dataset of terms (default); ``False`` returns only the data-space bound
        in bits per element as a float.
    check_grid
        Refuse (default) ``data`` whose 1-D grid coordinates are neither the training
        grid's nor a sub-region's; False evaluates it anyway (on a grid of the training
        grid's size). Variables in other but convertible units are
        converted to the model's first, so the bound (and ``bins``) are in the model's
        units.

    Returns
    -------
    xr.Dataset or float
        Scalars in bits per element (units ``bit``): ``bits_per_dim`` (data space; the sum
        of ``bits_per_dim_diffusion``, ``log_det`` and ``dequantization``),
        ``bits_per_dim_diffusion`` (= ``prior`` + ``diffusion`` + ``reconstruction``, and
        for a latent model + ``kl``, the KL(q(w | x) ‖ N(0, I)) of seed 003 §4, with the
        diffusion term averaged over a fresh w ~ q at each λ stratum),
        ``standard_error`` (of ``bits_per_dim``, across windows), and
        ``bits_per_dim_window`` per window (dimension ``window``, coordinate
        ``window_start``).

    Raises
    ------
    ValueError
        Wrong grid or variables, too short, values below a transform's lower bound, or no
        complete window.
    """
    n_lambda = check_int(
        n_lambda,
        "n_lambda",
        minimum=1,
        maximum=MAX_N_LAMBDA,
        what=f"a positive integer ≤ {MAX_N_LAMBDA} (network evaluations per window)",
    )
    terms = check_bool(terms, "terms")
    batch_size = check_positive_int(batch_size, "batch_size")
    seed = check_seed(seed)
    lambda_rec = check_number(lambda_rec, "lambda_rec", allow_none=True)
    if bins is None:
        bins = [None] * len(engine.variables)
    check_grid = check_bool(check_grid, "check_grid")
    p, engine = prepare_region(engine, data, dims, "data", check_grid=check_grid)
    # (T, K) time-coordinate features for models conditioned on season / hour, else None
    feats = features(engine, p.time)
    frames = engine.frames
    starts = window_positions(p, frames)
    reader = WindowReader(p.data, frames)
    dev = engine.device
    valid = engine.valid.to(dev)[None, :, None]  # (1, C, 1, H, W)
    gen = torch.Generator(device=dev).manual_seed(int(seed))
    rows: list[dict[str, float]] = []
    used: list[int] = []
    skipped = 0
    for i in range(0, len(starts), batch_size):
        idx = starts[i : i + batch_size]
        x = torch.from_numpy(reader.read(idx)).to(dev)  # (B, C, F, H, W)
        if bool(torch.isinf(x).any()):
            raise ValueError(
                "data contains infinite values; replace them with NaN, e.g. "
                "da.where(np.isfinite(da))"
            )
        complete = (torch.isfinite(x) | ~valid).flatten(1).all(1)
        skipped += int((~complete).sum())
        if not bool(complete.any()):
            continue
        x, idx = x[complete], idx[complete.cpu().numpy()]
        mask = valid.expand_as(x)
        x = torch.where(mask, x, torch.zeros_like(x))
        check_lower(engine, x.transpose(0, 1).flatten(1, 2).cpu(), "data")
        x, dq_nats = _dequantize(x, mask, bins, gen)
        net_kwargs = None
        if feats is not None:
            frame_idx = torch.as_tensor(idx)[:, None] + torch.arange(frames)
            net_kwargs = {"cond": feats[frame_idx].to(dev, x.dtype)}
        with torch.no_grad():
            y = engine.codec.encode(x)
            net, kl = engine.net, None
            if engine.encoder is not None:
                net, kl = _latent_net(engine, y, mask, gen)
            t = vlb_terms(
                net,
                y,
                engine.schedule,
                n_lambda=n_lambda,
                lambda_rec=lambda_rec,
                mask=mask,
                generator=gen,
                net_kwargs=net_kwargs,
            )
            ld = torch.where(mask, engine.codec.log_abs_det(x).to(torch.float64), 0.0)
            ld = ld.flatten(1).sum(1)
        for b in range(x.shape[0]):
            d = float(t["dims"][b]) * LN2
            rows.append(
                {
                    **({} if kl is None else {"kl": float(kl[b]) / d}),
                    "prior": float(t["prior"][b]) / d,
                    "diffusion": float(t["diffusion"][b]) / d,
                    "reconstruction": float(t["reconstruction"][b]) / d,
                    "log_det": -float(ld[b]) / d,
                    "dequantization": float(dq_nats[b]) / d,
                    "dims": float(t["dims"][b]),
                }
            )
        used.extend(int(s) for s in idx)
    if not rows:
        raise ValueError(
            f"data has no complete window of frames={frames} consecutive time steps without "
            f"NaN (outside the model's static mask); {skipped} window(s) had missing values"
        )
    return _result(
        engine,
        p,
        rows,
        used,
        skipped,
        terms,
        n_lambda=n_lambda,
        seed=seed,
        lambda_rec=lambda_rec,
        bins=bins,
    )


def _latent_net(engine: Engine, y: Tensor, mask: Tensor, gen: torch.Generator):
    """The network with w ~ q(w | x) drawn afresh at every evaluation, and the KL (nats).

    Each λ stratum of :func:`vlb_terms` then sees its own draw, so the diffusion term is
    averaged over w ~ q as the bound E_q[L_VDM(x | w)] + KL(q ‖ N(0, I)) asks (seed 003 §4).
    """
    mu, logvar = engine.encoder(torch.where(mask, y, torch.zeros((), dtype=y.dtype)), mask)

    def net(z: Tensor, lam: Tensor, **kwargs) -> Tensor:
        eps = torch.randn(mu.shape, generator=gen, device=mu.device, dtype=mu.dtype)
        return engine.net(z, lam, latent=reparameterize(mu, logvar, eps), **kwargs)

    return net, gaussian_kl(mu.double(), logvar.double()).sum(-1)


def _dequantize(x: Tensor, mask: Tensor, bins, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Replace dry values by uniform draws in their bin; nats −log|bin| per dry element."""
    nats = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    if all(b is None for b in bins):
        return x, nats
    x = x.clone()
    for c, b in enumerate(bins):
        if b is None:
            continue
        lower, thr = b
        xc = x[:, c]
        dry = (xc < thr) & mask[:, c]
        u = torch.rand(xc.shape, generator=gen, device=x.device, dtype=x.dtype)
        x[:, c] = torch.where(dry, lower + u * (thr - lower), xc)
        nats = nats - math.log(thr - lower) * dry.flatten(1).sum(1).to(torch.float64)
    return x, nats


_LONG_NAMES = {
    "kl": "latent term KL(q(w|x) || N(0, I)) per element",
    "bits_per_dim": "negative log-likelihood bound in data space per element",
    "bits_per_dim_diffusion": "negative log-likelihood bound in diffusion space per element",
    "prior": "prior term KL(q(z_lambda_min|x) || N(0, I)) per element",
    "diffusion": "diffusion term 1/2 int ||eps - eps_hat||^2 dlambda per element",
    "reconstruction": "Gaussian reconstruction term at lambda_rec per element",
    "log_det": "change-of-variables term -sum log|dh/dx| per element",
    "dequantization": "dry-class term -log(bin width) per element",
    "standard_error": "standard error of bits_per_dim across windows",
}


def _result(engine, p, rows, used, skipped, terms, *, n_lambda, seed, lambda_rec, bins):
    arr = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    w = arr["dims"] / arr["dims"].sum()  # element-weighted means (equal without a mask)
    latent = ("kl",) if "kl" in arr else ()
    parts = (*latent, "prior", "diffusion", "reconstruction", "log_det", "dequantization")
    per_window = sum(arr[k] for k in parts)
    mean = {k: float(np.sum(w * arr[k])) for k in parts}
    diffusion_space = sum(mean[k] for k in (*latent, "prior", "diffusion", "reconstruction"))
    total = diffusion_space + mean["log_det"] + mean["dequantization"]
    if not terms:
        return total
    n = len(rows)
    se = float(np.std(per_window, ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    scalars = {
        "bits_per_dim": total,
        "bits_per_dim_diffusion": diffusion_space,
        **mean,
        "standard_error": se,
    }
    data_vars = {
        k: ((), v, {"long_name": _LONG_NAMES[k], "units": "bit"}) for k, v in scalars.items()
    }
    time = p.time
    coords = {}
    if time is not None:
        coords["window_start"] = (
            "window",
            time.values[used],
            {"long_name": "first time step of the window"},
        )
    data_vars["bits_per_dim_window"] = (
        ("window",),
        per_window,
        {
            "long_name": "negative log-likelihood bound in data space per element, per window",
            "units": "bit",
        },
    )
    lam_rec = engine.schedule.lambda_max if lambda_rec is None else float(lambda_rec)
    attrs = {
        "title": "xdiffusion negative log-likelihood bound (bits per element)",
        "comment": (
            "variational bound in diffusion space (Herbert (2023) eq. 2.77, Gaussian decoder at "
            "lambda_rec) plus the change of variables of the transform (eq. 4.10); averaged "
            "over non-overlapping windows of `frames` steps"
        ),
        "variables": ", ".join(engine.variables),
        "frames": engine.frames,
        "n_windows": n,
        "n_skipped_windows": int(skipped),
        "elements_per_window": float(arr["dims"].mean()),
        "n_lambda": int(n_lambda),
        "lambda_min": float(engine.schedule.lambda_min),
        "lambda_rec": lam_rec,
        "seed": int(seed),
        "dry_threshold": ", ".join("none" if b is None else f"{b[1]:g}" for b in bins),
    }
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)
