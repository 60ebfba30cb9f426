"""Generating methods on xarray objects: sample, interpolate, forecast, downscale.

Each function validates and converts its xarray input (``io.convert``), runs the tensor
engine of :class:`~xdiffusion.model.DiffusionModel`, and wraps the result with CF metadata
(``io.cf``). ``DiffusionModel`` exposes them as methods and the accessor forwards to those.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import xarray as xr

from xdiffusion.io.cf import wrap
from xdiffusion.io.convert import Prepared, prepare
from xdiffusion.io.windows import regular_step
from xdiffusion.model import DiffusionModel, check_positive_int

Dims = Mapping[str, str] | None

#: Default guidance weight of :func:`downscale`, for the whitened block-mean residual (see
#: :func:`_block_mean_operator`): 1 is the first-order projection at high λ; 0.5–2 gave
#: the same block consistency (benchmarks/conditional.py, docs/conditional.md), 3 diverged.
DEFAULT_DOWNSCALING_WEIGHT = 1.0


def _prepare(model: DiffusionModel, obj, dims: Dims, argument: str, *, grid: bool = True):
    variables = model.variables if isinstance(obj, xr.Dataset) else None
    if variables is not None:
        missing = [v for v in variables if v not in obj.data_vars]
        if missing:
            have = [str(v) for v in obj.data_vars]
            hint = {have[0]: missing[0]} if have else {}
            raise ValueError(
                f"{argument} lacks the model's variable(s) {missing} (it has {have}); rename "
                f"them, e.g. {argument}.rename({hint})"
            )
    p = prepare(obj, dims=dims, variables=variables, argument=argument)
    if p.time is not None:
        regular_step(p.time)  # raises, with the remedy, for descending or duplicated times
    if len(p.variables) != len(model.variables):
        raise ValueError(
            f"{argument} has {len(p.variables)} variable(s) {p.variables} but the model was "
            f"fitted on {model.variables}"
        )
    if grid and tuple(p.shape[2:]) != model.grid:
        raise ValueError(
            f"{argument} grid {tuple(p.shape[2:])} differs from the model's grid {model.grid}; "
            "use a template on the training grid (or downscale() for coarser inputs)"
        )
    return p


def _values(p: Prepared) -> np.ndarray:
    return np.asarray(p.data.compute() if hasattr(p.data, "compute") else p.data)


def _static_nan(model: DiffusionModel, phys: torch.Tensor) -> torch.Tensor:
    valid = model.valid[:, None].to(phys.device)
    return torch.where(valid, phys, torch.full_like(phys, float("nan")))


def _wrap(model, p: Prepared, values, n, method, args, *, observed=None, coords=None, attrs=None):
    dims = [p.axes[a] for a in ("T", "Y", "X") if a in p.axes]
    return wrap(
        values,
        templates=p.arrays,
        names=p.variables,
        dims=dims,
        members=range(n),
        method=method,
        arguments=args,
        as_dataset=p.is_dataset,
        observed=observed,
        coords=coords,
        global_attrs=attrs,
    )


def _common(n, seed):
    n = check_positive_int(n, "n")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return n, int(seed)


def sample(
    model: DiffusionModel,
    template: xr.DataArray | xr.Dataset,
    n: int = 1,
    *,
    steps: int | None = None,
    sampler: str | None = None,
    seed: int = 0,
    context: int | None = None,
    batch_size: int | None = None,
    dims: Dims = None,
    progress: bool = True,
) -> xr.DataArray | xr.Dataset:
    """Draw ``n`` unconditional samples shaped like ``template`` (its grid, coords, length).

    Templates longer than ``model.frames`` are extended autoregressively, each new window
    conditioned on the last ``context`` frames (default ``frames // 2``; seed 001 §4.4).
    Member k's sample depends only on (seed, k).
    """
    n, seed = _common(n, seed)
    p = _prepare(model, template, dims, "template")
    c, t, h, w = p.shape
    x = torch.zeros(c, t, h, w)
    mask = torch.zeros(c, t, h, w, dtype=torch.bool)
    with torch.no_grad():
        y = model._complete(
            x,
            mask,
            n=n,
            seed=seed,
            sampler=sampler,
            steps=steps,
            context=context,
            batch_size=batch_size,
            progress=progress,
            cond=model.features_for(p.time),
        )
        phys = _static_nan(model, model.decode(y)).cpu().numpy()
    args = {"n": n, "steps": steps, "sampler": sampler, "seed": seed}
    return _wrap(
        model,
        p,
        phys,
        n,
        "sample",
        args,
        attrs=getattr(template, "attrs", None) if p.is_dataset else None,
    )


def _encode_known(model: DiffusionModel, values: np.ndarray):
    """Encode a physical series with NaNs; returns (diffusion values, known mask)."""
    x = torch.from_numpy(values.astype(np.float32))
    finite = torch.isfinite(x)
    if bool(torch.isinf(x).any()):
        raise ValueError(
            "data contains infinite values; replace them with NaN to mark them missing, "
            "e.g. da.where(np.isfinite(da))"
        )
    lower = [pl.transform.lower for pl in model.pipelines]
    _check_lower(model, x, "data")
    fill = torch.tensor([lo if lo is not None else 0.0 for lo in lower])[:, None, None, None]
    x0 = torch.where(finite, x, fill.expand_as(x))
    with torch.no_grad():
        enc = model.encode(x0[None].to(model.device))[0].cpu()
    known = finite | ~model.valid.cpu()[:, None]
    return enc, known, finite


def interpolate(
    model: DiffusionModel,
    data: xr.DataArray | xr.Dataset,
    n: int = 1,
    *,
    method: str = "guidance",
    guidance_weight: float | None = None,
    steps: int | None = None,
    sampler: str | None = None,
    seed: int = 0,
    context: int | None = None,
    batch_size: int | None = None,
    dims: Dims = None,
    progress: bool = True,
) -> xr.DataArray | xr.Dataset:
    """Fill NaN time steps and cells of a series of any length; observed values are kept.

    Windows of ``model.frames`` frames are placed so that a gap sees known frames on both
    sides where it fits (seed 001 §2.7.10); ``method`` is reconstruction guidance (2.116,
    default) or imputation (2.106). Cells that were NaN at every training time step stay NaN.
    """
    n, seed = _common(n, seed)
    if method not in ("guidance", "imputation"):
        raise ValueError(f"method must be 'guidance' or 'imputation', got {method!r}")
    _check_weight(guidance_weight)
    p = _prepare(model, data, dims, "data")
    values = _values(p)
    enc, known, finite = _encode_known(model, values)
    if bool(known.all()):
        raise ValueError("data has no missing values to fill: mark the gaps with NaN")
    if not bool(finite.any()):
        raise ValueError("data is all NaN: interpolate needs observed values; use sample()")
    with torch.no_grad():
        y = model._complete(
            enc,
            known,
            n=n,
            seed=seed,
            sampler=sampler,
            steps=steps,
            task="interpolate",
            method=method,
            weight=guidance_weight,
            context=context,
            batch_size=batch_size,
            progress=progress,
            cond=model.features_for(p.time),
        )
        gen = _static_nan(model, model.decode(y)).cpu().numpy()
    obs = finite.numpy()
    out = np.where(obs[None], values[None], gen.astype(values.dtype))
    args = {
        "n": n,
        "method": method,
        "guidance_weight": guidance_weight,
        "steps": steps,
        "sampler": sampler,
        "seed": seed,
    }
    return _wrap(
        model,
        p,
        out,
        n,
        "interpolate",
        args,
        observed=obs,
        attrs=data.attrs if p.is_dataset else None,
    )


def _check_lower(model: DiffusionModel, x: torch.Tensor, argument: str) -> None:
    """Values below a transform's lower bound (e.g. negative rain for sqrt) cannot be encoded."""
    for c, pl in enumerate(model.pipelines):
        lo = pl.transform.lower
        xc = x[c][torch.isfinite(x[c])]
        if lo is not None and xc.numel() and float(xc.min()) < lo:
            raise ValueError(
                f"{argument} variable {model.variables[c]!r} has values down to "
                f"{float(xc.min()):g}, below the lower bound {lo} of the model's transform "
                f"{pl.transform.name!r}; clip them first, e.g. {argument}.clip(min={lo})"
            )


def _check_weight(w):
    if w is not None and (not isinstance(w, int | float) or not np.isfinite(w) or w < 0):
        raise ValueError(f"guidance_weight must be a non-negative number or None, got {w!r}")


def _future_times(time: xr.DataArray, lead: int) -> np.ndarray:
    step = regular_step(time)
    if step <= 0:
        raise ValueError("forecast needs at least two time steps to infer the frequency")
    last = time.values[-1]
    if np.issubdtype(time.dtype, np.datetime64):
        delta = np.timedelta64(round(step * 1e9), "ns")
        return (last + delta * np.arange(1, lead + 1)).astype(time.dtype)
    import datetime as _dt

    return np.array([last + _dt.timedelta(seconds=step * k) for k in range(1, lead + 1)])


def forecast(
    model: DiffusionModel,
    data: xr.DataArray | xr.Dataset,
    lead: int,
    n: int = 1,
    *,
    context: int | None = None,
    method: str = "guidance",
    guidance_weight: float | None = None,
    steps: int | None = None,
    sampler: str | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    dims: Dims = None,
    progress: bool = True,
) -> xr.DataArray | xr.Dataset:
    """Continue a series ``lead`` steps past its end, ``n`` members.

    Each window conditions on ``context`` frames (default ``frames // 2``, the seed's 5 of
    10) and generates the rest, autoregressively. The time coordinate continues the input's
    calendar and step (cftime too). Returns only the ``lead`` new time steps.
    """
    n, seed = _common(n, seed)
    lead = check_positive_int(lead, "lead")
    ctx = model.frames // 2 if context is None else context
    if (
        isinstance(ctx, bool)
        or not isinstance(ctx, int | np.integer)
        or not (1 <= ctx < model.frames)
    ):
        raise ValueError(f"context must be an integer in [1, frames - 1 = {model.frames - 1}]")
    if method not in ("guidance", "imputation"):
        raise ValueError(f"method must be 'guidance' or 'imputation', got {method!r}")
    _check_weight(guidance_weight)
    p = _prepare(model, data, dims, "data")
    if p.shape[1] < ctx:
        raise ValueError(f"data has {p.shape[1]} time steps, fewer than context={ctx}")
    tname = p.axes["T"]
    new_time = _future_times(p.arrays[0][tname], lead)
    values = _values(p)[:, -ctx:]
    cond = None
    if model.time_features:
        times = np.concatenate([np.asarray(p.time.values[-ctx:]), np.asarray(new_time)])
        cond = model.features_for(times)
    enc, known, finite = _encode_known(model, values)
    if not bool(finite.any()):
        raise ValueError(
            f"data is all NaN in its last context={ctx} time steps: forecast conditions on "
            "them; drop trailing NaN steps (e.g. data.dropna('time', how='all')) or use sample()"
        )
    c, _, h, w = enc.shape
    x = torch.cat([enc, torch.zeros(c, lead, h, w)], 1)
    mask = torch.cat([known, torch.zeros(c, lead, h, w, dtype=torch.bool)], 1)
    mask[:, ctx:] |= ~model.valid.cpu()[:, None]
    with torch.no_grad():
        y = model._complete(
            x,
            mask,
            n=n,
            seed=seed,
            sampler=sampler,
            steps=steps,
            task="forecast",
            method=method,
            weight=guidance_weight,
            context=ctx,
            batch_size=batch_size,
            progress=progress,
            cond=cond,
        )
        gen = _static_nan(model, model.decode(y[:, :, ctx:])).cpu().numpy()
    tmpl = p.arrays[0]
    coords = {k: v.variable for k, v in tmpl.coords.items() if tname not in v.dims}
    coords[tname] = xr.Variable(tname, new_time, tmpl[tname].attrs)
    args = {"lead": lead, "n": n, "context": ctx, "steps": steps, "sampler": sampler, "seed": seed}
    return _wrap(
        model,
        p,
        gen,
        n,
        "forecast",
        args,
        coords=coords,
        attrs=data.attrs if p.is_dataset else None,
    )


def _fine_coord(coarse: xr.DataArray, factor: int) -> np.ndarray:
    v = np.asarray(coarse.values, dtype=float)
    d = np.diff(v).mean() if v.size > 1 else 1.0
    offsets = (np.arange(factor) + 0.5) / factor - 0.5
    return (v[:, None] + offsets[None] * d).ravel()


def downscale(
    model: DiffusionModel,
    coarse: xr.DataArray | xr.Dataset,
    n: int = 1,
    *,
    factor: int | None = None,
    like: xr.DataArray | xr.Dataset | None = None,
    guidance_weight: float | None = None,
    project: bool = True,
    steps: int | None = None,
    sampler: str | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    dims: Dims = None,
    progress: bool = True,
) -> xr.DataArray | xr.Dataset:
    """Generate fine fields whose ``factor``×``factor`` block means match ``coarse``.

    The model must have been fitted on the fine grid. Sampling uses reconstruction guidance
    on ‖y − A x̂‖² with A the block mean in physical units (DESIGN.md §4), whitened by its
    linearised covariance (eq. 2.112); ``guidance_weight`` defaults to
    :data:`DEFAULT_DOWNSCALING_WEIGHT` (1; keep it below 2). ``project=True`` then makes
    the block means exact (multiplicatively for non-negative variables, so that
    precipitation stays non-negative). Windows of ``model.frames`` frames tile the time axis.
    """
    n, seed = _common(n, seed)
    _check_weight(guidance_weight)
    p = _prepare(model, coarse, dims, "coarse", grid=False)
    hc, wc = p.shape[2:]
    if like is not None:
        q = _prepare(model, like, dims, "like")
        fh, fw = q.shape[2:]
        if fh % hc or fw % wc or fh // hc != fw // wc:
            raise ValueError(
                f"like grid {(fh, fw)} is not an integer multiple of coarse {(hc, wc)}"
            )
        factor = fh // hc
    elif factor is None:
        raise ValueError("give factor= (an integer ≥ 2) or like= (a fine template)")
    factor = check_positive_int(factor, "factor")
    if (hc * factor, wc * factor) != model.grid:
        raise ValueError(
            f"coarse grid {(hc, wc)} × factor {factor} = {(hc * factor, wc * factor)} differs "
            f"from the model's fine grid {model.grid}"
        )
    y_phys = torch.from_numpy(_values(p).astype(np.float32))
    if not bool(torch.isfinite(y_phys).all()):
        raise ValueError("coarse contains NaN or infinite values; fill or drop them first")
    _check_lower(model, y_phys, "coarse")
    ys = y_phys.to(model.device)
    gen = _downscale_tensor(
        model,
        ys,
        factor,
        n=n,
        seed=seed,
        sampler=sampler,
        steps=steps,
        weight=guidance_weight,
        project=project,
        batch_size=batch_size,
        progress=progress,
        cond=model.features_for(p.time),
    )
    gen = _static_nan(model, gen).cpu().numpy()
    ax = p.axes
    tmpl = p.arrays[0]
    coords = {
        k: v.variable
        for k, v in tmpl.coords.items()
        if ax["Y"] not in v.dims and ax["X"] not in v.dims
    }
    if like is not None:
        lt = q.arrays[0]
        for a in ("Y", "X"):
            cv = lt[q.axes[a]]
            coords[ax[a]] = xr.Variable(ax[a], cv.values, cv.attrs)
    else:
        for a in ("Y", "X"):
            cc = tmpl[ax[a]]
            coords[ax[a]] = xr.Variable(ax[a], _fine_coord(cc, factor), cc.attrs)
    args = {
        "n": n,
        "factor": factor,
        "guidance_weight": guidance_weight,
        "project": project,
        "steps": steps,
        "sampler": sampler,
        "seed": seed,
    }
    return _wrap(
        model,
        p,
        gen,
        n,
        "downscale",
        args,
        coords=coords,
        attrs=coarse.attrs if p.is_dataset else None,
    )


def _downscale_tensor(
    model,
    y_phys,
    factor,
    *,
    n,
    seed,
    sampler,
    steps,
    weight,
    project,
    batch_size,
    progress,
    cond=None,
):
    """Fine physical fields (n, C, T, H, W) for coarse physical y (C, T, h, w)."""
    c, t = y_phys.shape[:2]
    f = min(model.frames, t)
    starts = list(range(0, max(t - f, 0) + 1, f))
    if starts[-1] + f < t:
        starts.append(t - f)
    scale = torch.tensor(
        [float(pl.from_scaled(torch.ones(1)).abs().max()) for pl in model.pipelines],
        device=y_phys.device,
    ).clamp_min(1e-12)
    scale = scale[None, :, None, None, None]
    sampler, steps = model.sampling_defaults(sampler, steps, task="downscale")
    weight = DEFAULT_DOWNSCALING_WEIGHT if weight is None else weight

    bs = n if batch_size is None else check_positive_int(batch_size, "batch_size")
    out = torch.empty(n, c, t, *model.grid, device=y_phys.device)
    for k, s in enumerate(starts):
        yw = y_phys[None, :, s : s + f] / scale
        operator = _block_mean_operator(model, yw, factor, scale)
        for b0 in range(0, n, bs):
            members = list(range(b0, min(n, b0 + bs)))
            fn = model._window_fn(
                seed=seed,
                members=members,
                sampler=sampler,
                steps=steps,
                method="guidance",
                weight=weight,
                operator=operator,
                y=yw.expand(len(members), *yw.shape[1:]),
                progress=progress and k == 0 and b0 == 0,
                cond=cond,
            )
            xk = torch.zeros(len(members), c, f, *model.grid, device=y_phys.device)
            z = fn(xk, torch.zeros_like(xk, dtype=torch.bool), k, s)
            with torch.no_grad():
                out[b0 : b0 + len(members), :, s : s + f] = model.decode(z)
    if project:
        out = project_block_means(
            out,
            y_phys[None].expand(n, *y_phys.shape),
            factor,
            [pl.transform.lower for pl in model.pipelines],
        )
    return out


def _block_mean_operator(model: DiffusionModel, y: torch.Tensor, factor: int, scale):
    """Guidance operator for y = A(x) = block_mean(decode(x)) / scale, whitened per block.

    Eq. 2.112 for a nonlinear observation, linearised at x̂: q(y | z_t) ≈ N(A(x̂),
    (σ_t²/α_t²) A J Jᵀ Aᵀ) with J = ∂decode/∂x̂ / scale (diagonal: the transform acts cell
    by cell) and A the block mean, so A J Jᵀ Aᵀ is diagonal with entries mean_block(J²) /
    factor². Returning y − (y − A(x̂)) / sqrt(that) (the root held fixed) makes the plain
    squared norm of :func:`~xdiffusion.core.conditioning.guidance` the whitened one.
    Without whitening, the factor² of A Aᵀ and the square-root transform's J ∝ sqrt(rain)
    left the default weight 0.2–0.002 of what it should be: the block residual before the
    final projection stayed at ~90 % of the signal (benchmarks/conditional.py). Whitened,
    weight 1 makes each x̂ consistent with y to first order once x̂ ≈ z/α (high λ), where
    the block residual is multiplied by (1 − weight): weights above 2 diverge.
    """

    def operator(x_hat: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            leaf = x_hat.detach().requires_grad_(True)
            (jac,) = torch.autograd.grad(_decode_differentiable(model, leaf).sum(), leaf)
        # Cells clipped at the data range have J = 0; a floor keeps all-dry blocks finite.
        root = block_mean((jac / scale) ** 2, factor).clamp_min(1e-4).sqrt() / factor
        pred = block_mean(_decode_differentiable(model, x_hat), factor) / scale
        return y - (y - pred) / root

    return operator


def _decode_differentiable(model: DiffusionModel, y: torch.Tensor) -> torch.Tensor:
    """``model.decode`` with gradients; the learned inverse gets its implicit derivative."""
    out = []
    for c, pipe in enumerate(model.pipelines):
        s = y[:, c : c + 1].clamp(-1.0, 1.0)
        if model.module.has_learned(c):
            h = model.module.learned[c]
            with torch.no_grad():
                inv = h.inverse(s)
                slope = h.derivative(inv)
            s = inv + (s - s.detach()) / slope  # d h⁻¹(y)/dy = 1 / h'(h⁻¹(y))
        out.append(pipe.from_scaled(s))
    return torch.cat(out, 1)


def block_mean(x: torch.Tensor, factor: int) -> torch.Tensor:
    from xdiffusion.core.conditioning import block_mean as _bm

    return _bm(x, factor)


def project_block_means(x, y, factor: int, lower) -> torch.Tensor:
    """Make the block means of ``x`` (…, H, W) equal ``y`` (…, h, w) exactly.

    Channels with a lower bound (e.g. precipitation ≥ 0) are corrected multiplicatively
    around that bound so they stay above it; others additively, which is the orthogonal
    projection x + Aᵀ(AAᵀ)⁻¹(y − Ax) for the block-mean operator A.
    """
    out = []
    for c, lo in enumerate(lower):
        xc, yc = x[:, c : c + 1], y[:, c : c + 1]
        m = block_mean(xc, factor)
        up = lambda a: a.repeat_interleave(factor, -2).repeat_interleave(factor, -1)  # noqa: E731
        if lo is None:
            out.append(xc + up(yc - m))
        else:
            excess, target = m - lo, (yc - lo).clamp_min(0)
            ratio = torch.where(excess > 0, target / excess.clamp_min(1e-30), torch.zeros_like(m))
            flat = torch.where(excess > 0, torch.zeros_like(m), target)
            out.append(lo + (xc - lo) * up(ratio) + up(flat))
    return torch.cat(out, 1)
