"""The generation engine: series of tensors in, series of tensors out. No xarray.

Everything a fitted model generates goes through :class:`Engine`: unconditional samples of
any length, gap filling, forecasts (a series whose future is unknown) and downscaling (a
series observed only through block means). The xarray layers above convert, call the
engine and wrap; the archive and distributed drivers schedule its units of work.

Units of work
-------------
A task is planned as a list of :class:`Window` (start, length) over the time axis
(:meth:`Engine.plan`), and run as :class:`WorkUnit` = (window range × member range):
:meth:`Engine.run` takes the series of those members (known values and everything earlier
units produced), generates the unit's windows in order and returns the completed series.
Windows of a completion plan may depend on earlier ones (forecasts, long samples); the
windows of :meth:`Engine.downscale` are independent. Members are always independent.

Noise keys
----------
Member k's noise in the window that starts at absolute time position t (``time_offset`` +
start within the series) is drawn from the streams (seed, k, 2t) and (seed, k, 2t + 1)
(:class:`~xdiffusion.core.noise.MemberNoise`): it does not depend on the batch, the
member range, the unit split or the device. On CPU the network is evaluated one member at
a time, so members are also bit-identical whatever batch they are drawn in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from xdiffusion.codec import Codec
from xdiffusion.core.conditioning import (
    block_mean,
    finalize,
    guidance,
    imputation,
    project_block_means,
)
from xdiffusion.core.diffusion import make_denoiser
from xdiffusion.core.noise import MemberNoise
from xdiffusion.core.samplers import run_sampler
from xdiffusion.core.schedule import CosineSchedule
from xdiffusion.core.sequences import plan_windows
from xdiffusion.nets import UNet3D
from xdiffusion.settings import SamplingSettings
from xdiffusion.validation import check_int, check_positive_int

__all__ = [
    "LATENT_STREAM",
    "Engine",
    "Window",
    "WorkUnit",
    "block_mean_operator",
    "member_units",
    "resolve_device",
]

#: Floor of the whitening variance of :func:`block_mean_operator`: cells clipped at the
#: data range have a zero Jacobian, and an all-dry block would otherwise divide by zero.
WHITENING_FLOOR = 1e-4
#: Noise stream of a member's prior latent w ~ N(0, I) (a latent model sampled without
#: ``latent=``): beyond any window position's streams 2t and 2t + 1, so it is independent
#: of every window's noise and the same for all windows and chunks of the member.
LATENT_STREAM = 2**62


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; other strings as torch understands them."""
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device={device!r} is not a valid torch device: {err}") from None
    if dev.type == "cuda":
        # torch only fails later, deep inside, with an AssertionError or a CUDA error
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but CUDA is not available; use 'auto' or 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r} but only {torch.cuda.device_count()} CUDA device(s) exist; "
                "use 'cuda:0' or 'auto'"
            )
    return dev


@dataclass(frozen=True)
class Window:
    """One window of the plan: frames ``start`` to ``start + length`` of the series.

    ``keep`` (default ``start``) is the first frame the window contributes to the output
    of an independent tiling (:meth:`Engine.tiles`): a last window shifted back to end at
    the series' end generates frames that an earlier window already made, and discards
    them, so that every frame comes from exactly one window whatever the chunking.
    """

    start: int
    length: int
    keep: int | None = None

    @property
    def stop(self) -> int:
        """One past the window's last frame."""
        return self.start + self.length

    @property
    def first_kept(self) -> int:
        """First frame this window contributes (``keep``, else ``start``)."""
        return self.start if self.keep is None else self.keep


@dataclass(frozen=True)
class WorkUnit:
    """(window range × member range): the schedulable piece of a task.

    Attributes
    ----------
    windows
        Indices into the task's plan, run in order.
    members
        Member indices (not positions in a batch): they key the noise.
    """

    windows: range
    members: range


def member_units(n_windows: int, n: int, batch_size: int | None = None) -> list[WorkUnit]:
    """All windows × member blocks of ``batch_size`` (default all ``n`` at once)."""
    n = check_positive_int(n, "n")
    bs = n if batch_size is None else check_positive_int(batch_size, "batch_size")
    return [WorkUnit(range(n_windows), range(b, min(n, b + bs))) for b in range(0, n, bs)]


def block_mean_operator(codec: Codec, y: Tensor, factor: int, scale: Tensor) -> Callable:
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

    Parameters
    ----------
    codec
        The model's codec (its differentiable decode is A's nonlinear part).
    y
        Coarse observation divided by ``scale``, (B, C, F, h, w).
    factor
        Block size.
    scale
        Per channel data scale, broadcastable to y.
    """

    def operator(x_hat: Tensor) -> Tensor:
        with torch.enable_grad():
            leaf = x_hat.detach().requires_grad_(True)
            (jac,) = torch.autograd.grad(codec.decode_differentiable(leaf).sum(), leaf)
        root = block_mean((jac / scale) ** 2, factor).clamp_min(WHITENING_FLOOR).sqrt() / factor
        pred = block_mean(codec.decode_differentiable(x_hat), factor) / scale
        return y - (y - pred) / root

    return operator


class Engine:
    """Generates series in diffusion space with one network, codec and schedule.

    Parameters
    ----------
    net
        The v-prediction network (EMA weights, eval mode).
    codec
        Physical ↔ diffusion space, one channel per variable.
    schedule
        The noise schedule the network was trained with.
    frames
        Window length of the network.
    valid
        Boolean (C, H, W): False where a cell was NaN at every training step (generated
        there as anything, then masked by the caller).
    device
        Where the work runs (the network must be there).
    variables
        Channel names (default ``var0``, ``var1``, …), for messages and the layers above.
    time_features
        Names of the per-frame features the network is conditioned on (``cond``).
    data
        What the model knows of its training data (:class:`xdiffusion.io.spec.DataSpec`),
        carried for the xarray layer, which checks inputs against it; unused here.
    encoder
        A latent model's encoder E_φ (:class:`~xdiffusion.nets.encoder.Encoder`), used by
        :meth:`encode`; None for an unconditional model.
    """

    def __init__(
        self,
        net: UNet3D,
        codec: Codec,
        schedule: CosineSchedule,
        frames: int,
        valid: Tensor,
        device: torch.device,
        *,
        variables: Sequence[str] | None = None,
        time_features: Sequence[str] = (),
        data: Any = None,
        encoder: torch.nn.Module | None = None,
    ) -> None:
        self.net = net
        self.encoder = encoder
        self.codec = codec
        self.schedule = schedule
        self.frames = int(frames)
        self.valid = valid
        self.device = torch.device(device)
        self.variables = (
            list(variables) if variables is not None else [f"var{c}" for c in range(len(codec))]
        )
        self.time_features = list(time_features)
        # what the model knows of its training data (io.spec.DataSpec): opaque here, read
        # by the xarray layer to check inputs
        self.data = data

    @property
    def grid(self) -> tuple[int, int]:
        """(ny, nx) of the network's grid."""
        return int(self.valid.shape[-2]), int(self.valid.shape[-1])

    @property
    def min_region(self) -> int:
        """Smallest side of a sub-region (:meth:`crop`): the network's downsampling
        ``2**(levels − 1)`` (one cell of its coarsest level)."""
        mults = getattr(getattr(self.net, "config", None), "mults", None)
        return 2 ** (len(mults) - 1) if mults else 1

    def crop(self, ys: slice, xs: slice, *, data: Any = None) -> Engine:
        """This engine on a sub-region of its grid: rows ``ys`` and columns ``xs``.

        The network, codec and schedule are shared (nothing is copied); only the valid
        mask is cropped. The network's convolutions are local in space and its temporal
        attention acts per pixel (any spatial attention spans the grid it is given), so it
        generates on the sub-region in one piece, as on the whole grid: no tiles.

        Parameters
        ----------
        ys, xs
            Contiguous slices (step 1) of the grid's rows and columns, each at least
            :attr:`min_region` long unless it spans the whole axis.
        data
            What the cropped engine carries as :attr:`data` (the xarray layer passes its
            spec cropped to the region); default the same object.

        Raises
        ------
        ValueError
            For a slice with a step, outside the grid, empty, or shorter than
            :attr:`min_region`.
        """
        cuts = []
        for name, sl, n in (("ys", ys, self.grid[0]), ("xs", xs, self.grid[1])):
            if not isinstance(sl, slice) or sl.step not in (None, 1):
                raise ValueError(f"{name} must be a slice with step 1, got {sl!r}")
            start = 0 if sl.start is None else int(sl.start)
            stop = n if sl.stop is None else int(sl.stop)
            if not 0 <= start < stop <= n:
                raise ValueError(f"{name}={sl!r} is not a non-empty part of [0, {n})")
            if stop - start < min(n, self.min_region):
                raise ValueError(
                    f"{name}={sl!r} selects {stop - start} cells; a sub-region needs at least "
                    f"{self.min_region} (the network's downsampling 2**(levels − 1))"
                )
            cuts.append(slice(start, stop))
        return Engine(
            self.net,
            self.codec,
            self.schedule,
            self.frames,
            self.valid[:, cuts[0], cuts[1]],
            self.device,
            variables=self.variables,
            time_features=self.time_features,
            data=self.data if data is None else data,
            encoder=self.encoder,
        )

    # -- planning -------------------------------------------------------------------------

    def plan(self, mask: Tensor, context: int | None = None) -> list[Window]:
        """Windows that complete a series with known elements ``mask`` (C, T, H, W).

        A gap short enough to have known frames on both sides is centred in its window;
        longer gaps (forecasts, long samples) are generated autoregressively, each window
        conditioned on ``context`` frames before it (default ``frames // 2``; Herbert (2023) §4.4).
        """
        t = mask.shape[1]
        context = self.frames // 2 if context is None else context
        context = check_int(  # an integer as such: 1.5 or "1" are refused, not truncated
            context,
            "context",
            minimum=0,
            maximum=self.frames - 1,
            what=f"an integer in [0, frames - 1] = [0, {self.frames - 1}]",
        )
        frame_known = mask.transpose(0, 1).reshape(t, -1).all(1)
        return [Window(s, f) for s, f in plan_windows(frame_known, self.frames, context)]

    def tiles(self, t: int) -> list[Window]:
        """Independent windows covering ``t`` frames: 0, f, 2f, … and a last one ending at t.

        The last window, shifted back to end at ``t``, keeps only the frames after the
        previous window (:attr:`Window.keep`), so frame k always comes from window k // f:
        a time chunk made of whole windows can be generated on its own.
        """
        f = min(self.frames, t)
        starts = list(range(0, max(t - f, 0) + 1, f))
        windows = [Window(s, f) for s in starts]
        if starts[-1] + f < t:
            windows.append(Window(t - f, f, keep=starts[-1] + f))
        return windows

    # -- one window -----------------------------------------------------------------------

    @property
    def latent_dim(self) -> int:
        """Size k of the latent w the network is conditioned on (0: none)."""
        return int(getattr(getattr(self.net, "config", None), "latent_dim", 0) or 0)

    def window_latent(
        self, latent: Tensor | None, seed: int, members: Sequence[int], window: Window
    ) -> Tensor | None:
        """The latent w of each member for one window: (B, k) or (B, F, k), or None.

        ``latent`` None draws w ~ N(0, I) per member from its own stream (seed, member,
        :data:`LATENT_STREAM`), the same for every window of the member; (T, k) gives
        every member frame t's vector; (N, T, k) gives member m row m.
        """
        k = self.latent_dim
        if not k:
            if latent is not None:
                raise ValueError("latent= was given but this model has no latent (latent_dim=0)")
            return None
        if latent is None:
            return MemberNoise(seed, members, (k,), device=self.device, stream=LATENT_STREAM)()
        if latent.shape[-1] != k or latent.ndim not in (2, 3):
            raise ValueError(
                f"latent must be (T, {k}) or (members, T, {k}), got {tuple(latent.shape)}"
            )
        if latent.ndim == 2:
            part = latent[window.start : window.stop]
            part = part[None].expand(len(members), *part.shape)
        else:
            part = latent[list(members), window.start : window.stop]
        return part.to(self.device, torch.float32)

    @torch.no_grad()
    def encode(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """q(w | x) of physical windows: (μ, log σ²), each (B, k) (seed 003 §2).

        Parameters
        ----------
        x
            (B, C, F, H, W) physical values; elements outside ``mask`` are ignored.
        mask
            Boolean, broadcastable to ``x``: elements the encoder reads.
        """
        if self.encoder is None:
            raise ValueError(
                "this model has no latent encoder: fit it with latent_dim= (docs/latent.md)"
            )
        x = x.to(self.device, torch.float32)
        mask = mask.to(self.device).expand_as(x)
        fill = torch.tensor(
            [lo if lo is not None else 0.0 for lo in self.codec.lower], device=self.device
        )[None, :, None, None, None]
        y = self.codec.encode(torch.where(mask, x, fill.expand_as(x)))
        return self.encoder(torch.where(mask, y, torch.zeros((), device=y.device)), mask)

    def _denoiser(
        self, cond: Tensor | None, window: Window, batch: int, latent: Tensor | None = None
    ):
        kwargs = {}
        if cond is not None:  # (T, K) features of the whole series → this window's
            c = cond[window.start : window.stop].to(self.device)
            kwargs["cond"] = c[None].expand(batch, *c.shape)
        if latent is not None:  # already this window's, one row per member
            kwargs["latent"] = latent
        micro = 1 if self.device.type == "cpu" else None
        return make_denoiser(self.net, net_kwargs=kwargs or None, microbatch=micro)

    def _sample(self, den, noise: MemberNoise, settings: SamplingSettings, progress: bool):
        # guidance needs autograd: callers may be under inference_mode
        with torch.inference_mode(False):
            return run_sampler(
                settings.sampler,
                den,
                noise(),
                self.schedule,
                settings.steps,
                noise=noise,
                progress=progress,
            )

    def _noise(self, seed: int, members: Sequence[int], shape, key: int):
        main = MemberNoise(seed, members, shape, device=self.device, stream=2 * key)
        extra = MemberNoise(seed, members, shape, device=self.device, stream=2 * key + 1)
        return main, extra

    def window(
        self,
        x_known: Tensor,
        mask: Tensor,
        settings: SamplingSettings,
        *,
        seed: int,
        members: Sequence[int],
        window: Window,
        time_offset: int = 0,
        cond: Tensor | None = None,
        latent: Tensor | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Sample one window for a batch of members, conditioned on its known elements.

        Parameters
        ----------
        x_known, mask
            (B, C, F, H, W) diffusion-space values and a boolean mask of known elements
            (all False: unconditional). ``mask`` may have a leading batch dimension of 1.
        settings
            Resolved sampler, steps, method and guidance weight.
        seed, members
            Noise key: member indices, one per batch row.
        window
            Where the window sits in the series (its start keys the noise).
        time_offset
            Absolute time position of the series' first frame (archive chunks).
        cond
            (T, K) per-frame conditioning features of the whole series, or None.
        latent
            A latent model's w (:meth:`window_latent`): (T, k) per frame of the series,
            (N, T, k) per member and frame, or None (drawn from the prior per member).

        Returns
        -------
        Tensor
            (B, C, F, H, W); known elements equal ``x_known``.
        """
        b, shape = x_known.shape[0], x_known.shape[1:]
        w_latent = self.window_latent(latent, seed, members, window)
        base = self._denoiser(cond, window, b, w_latent)
        noise, extra = self._noise(seed, members, shape, time_offset + window.start)
        conditioned = bool(mask.any())
        den = base
        if conditioned:
            if settings.method == "guidance":
                den = guidance(base, x_known, mask, weight=settings.guidance_weight, noise=extra)
            elif settings.method == "imputation":
                den = imputation(base, x_known, mask, noise=extra)
            else:
                raise ValueError(
                    f"known values need method 'guidance' or 'imputation', not {settings.method!r}"
                )
        out = self._sample(den, noise, settings, progress)
        return finalize(out, x_known, mask) if conditioned else out

    # -- completion tasks: sample, interpolate, forecast ------------------------------------

    def run(
        self,
        unit: WorkUnit,
        plan: Sequence[Window],
        x: Tensor,
        mask: Tensor,
        settings: SamplingSettings,
        *,
        seed: int,
        time_offset: int = 0,
        cond: Tensor | None = None,
        latent: Tensor | None = None,
        progress: bool = False,
        members: Sequence[int] | None = None,
    ) -> Tensor:
        """Run one unit of a completion plan: generate its windows, in order, for its members.

        Parameters
        ----------
        unit
            Window range (into ``plan``) × member range.
        plan
            From :meth:`plan` for this ``mask``.
        x
            (len(unit.members), C, T, H, W) or (C, T, H, W): the series in diffusion space;
            it must hold the output of every earlier window the unit depends on.
        mask
            (C, T, H, W) boolean: elements known before the plan ran.
        settings, seed, time_offset, cond, latent
            As for :meth:`window`.
        members
            Member indices to use instead of ``unit.members`` (same length).

        Returns
        -------
        Tensor
            (len(unit.members), C, T, H, W): ``x`` with the unit's windows generated.
        """
        members = list(unit.members if members is None else members)
        if x.ndim == 4:
            x = x[None].expand(len(members), *x.shape)
        known = mask.to(self.device).clone()
        for w in plan[: unit.windows.start]:  # earlier windows' output counts as known
            known[:, w.start : w.stop] = True
        x = x.to(self.device)
        out = torch.where(known, x, torch.zeros((), dtype=x.dtype))
        windows = [plan[i] for i in unit.windows]
        bar = tqdm(windows, disable=not progress or len(windows) < 2, desc=settings.task)
        for w in bar:
            xs, ms = out[:, :, w.start : w.stop], known[None, :, w.start : w.stop]
            gen = self.window(
                xs,
                ms,
                settings,
                seed=seed,
                members=members,
                window=w,
                time_offset=time_offset,
                cond=cond,
                latent=latent,
            )
            out[:, :, w.start : w.stop] = torch.where(ms, xs, gen)
            known[:, w.start : w.stop] = True
        return out

    def run_span(
        self,
        windows: Sequence[Window],
        x: Tensor,
        mask: Tensor,
        settings: SamplingSettings,
        *,
        members: Sequence[int],
        seed: int,
        span_start: int,
        done_until: int,
        time_offset: int = 0,
        cond: Tensor | None = None,
        latent: Tensor | None = None,
    ) -> Tensor:
        """Run consecutive windows of a completion plan on the frames they cover only.

        The piece of :meth:`run` that a time chunk of an archive needs: instead of the
        whole series, ``x`` and ``mask`` hold frames ``span_start`` … ``span_start + S``
        (S = the windows' extent), and frames before ``done_until`` count as generated by
        earlier windows (their values in ``x``). Gives the same numbers as :meth:`run`
        over the whole series.

        Parameters
        ----------
        windows
            Consecutive windows of the plan, in series positions.
        x
            (B, C, S, H, W) or (C, S, H, W) diffusion-space values of the span: the input's
            known values, and the earlier windows' output before ``done_until``.
        mask
            (C, S, H, W) boolean: elements known in the input.
        members, seed, time_offset, settings
            As for :meth:`window`.
        span_start
            Series position of the span's first frame (≤ ``windows[0].start``).
        done_until
            Series position up to which earlier windows have generated every frame.
        cond
            (T, K) features of the whole series, or None.
        latent
            As for :meth:`window`, over the whole series.

        Returns
        -------
        Tensor
            (len(members), C, S, H, W) diffusion-space values of the span.
        """
        local = [Window(w.start - span_start, w.length) for w in windows]
        if local[0].start < 0 or local[-1].stop > x.shape[-3]:
            raise ValueError(
                f"the span [{span_start}, {span_start + x.shape[-3]}) does not cover windows "
                f"[{windows[0].start}, {windows[-1].stop})"
            )
        known = mask.clone()
        known[:, : max(0, min(done_until - span_start, known.shape[1]))] = True
        return self.run(
            WorkUnit(range(len(local)), range(len(members))),
            local,
            x,
            known,
            settings,
            seed=seed,
            time_offset=time_offset + span_start,
            cond=None if cond is None else cond[span_start:],
            latent=None if latent is None else latent[..., span_start:, :],
            members=members,
        )

    def encode_known(self, values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Encode a physical (C, T, H, W) series with NaNs.

        Returns
        -------
        encoded, known, finite
            Diffusion-space values (NaNs encoded as the lower bound or 0, then ignored),
            the known mask (finite, or a cell the model never saw), and the finite mask.
        """
        x = values.to(torch.float32)
        finite = torch.isfinite(x)
        if bool(torch.isinf(x).any()):
            raise ValueError(
                "data contains infinite values; replace them with NaN to mark them missing, "
                "e.g. da.where(np.isfinite(da))"
            )
        fill = torch.tensor([lo if lo is not None else 0.0 for lo in self.codec.lower])
        x0 = torch.where(finite, x, fill[:, None, None, None].expand_as(x))
        with torch.no_grad():
            enc = self.codec.encode(x0[None].to(self.device))[0].cpu()
        known = finite | ~self.valid.cpu()[:, None]
        return enc, known, finite

    def static_nan(self, phys: Tensor) -> Tensor:
        """NaN in cells that were NaN at every training step (the ``valid`` mask)."""
        valid = self.valid[:, None].to(phys.device)
        return torch.where(valid, phys, torch.full_like(phys, float("nan")))

    def complete(
        self,
        x: Tensor,
        mask: Tensor,
        settings: SamplingSettings,
        *,
        n: int,
        seed: int,
        context: int | None = None,
        batch_size: int | None = None,
        time_offset: int = 0,
        cond: Tensor | None = None,
        latent: Tensor | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Complete one series (C, T, H, W) in diffusion space for members 0 … n − 1.

        Plans the windows (:meth:`plan`) and runs every member block as one
        :class:`WorkUnit` (:func:`member_units`). Returns (n, C, T, H, W) with the known
        elements of ``x`` unchanged.
        """
        plan = self.plan(mask, context)
        units = member_units(len(plan), n, batch_size)
        out = [
            self.run(
                u,
                plan,
                x,
                mask,
                settings,
                seed=seed,
                time_offset=time_offset,
                cond=cond,
                latent=latent,
                progress=progress and i == 0,
            )
            for i, u in enumerate(units)
        ]
        return torch.cat(out)

    # -- downscaling ----------------------------------------------------------------------

    def data_scale(self) -> Tensor:
        """Per channel physical magnitude at the top of the scaled range, (C,) ≥ 1e-12."""
        ones = torch.ones(1, 1)
        return torch.tensor(
            [float(v.from_scaled(ones).abs().max()) for v in self.codec], device=self.device
        ).clamp_min(1e-12)

    def downscale_unit(
        self,
        unit: WorkUnit,
        windows: Sequence[Window],
        y_phys: Tensor,
        factor: int,
        settings: SamplingSettings,
        *,
        seed: int,
        y_start: int = 0,
        time_offset: int = 0,
        cond: Tensor | None = None,
        latent: Tensor | None = None,
        project: bool = True,
        progress: bool = False,
    ) -> Tensor:
        """Fine physical fields for one unit of a downscaling task.

        Parameters
        ----------
        unit
            Window range (into ``windows``, from :meth:`tiles`) × member range.
        y_phys
            Coarse physical values, (C, T', h, w), finite: frames ``y_start`` … of the
            series, covering at least the unit's windows.
        y_start
            Series position of ``y_phys``'s first frame (a time chunk of an archive).
        factor
            Block size: (h, w) × factor must be the model's grid.
        settings
            Resolved settings (guidance weight of the whitened operator).
        project
            Make the block means exact at the end (:func:`project_block_means`).
        cond, latent
            As for :meth:`window`, indexed by series position.

        Returns
        -------
        Tensor
            (len(unit.members), C, T_unit, H, W) in physical units, covering the frames
            the unit's windows keep: ``windows[i0].first_kept`` to ``windows[i1 - 1].stop``.
        """
        factor = check_int(factor, "factor", minimum=1)
        members = list(unit.members)
        y_phys = y_phys.to(self.device)
        c = y_phys.shape[0]
        chosen = [windows[i] for i in unit.windows]
        t0, t1 = chosen[0].first_kept, chosen[-1].stop
        if chosen[0].start < y_start or t1 > y_start + y_phys.shape[1]:
            raise ValueError(
                f"y_phys covers frames [{y_start}, {y_start + y_phys.shape[1]}) but the unit's "
                f"windows need [{chosen[0].start}, {t1})"
            )
        scale = self.data_scale()
        scale_b = scale[None, :, None, None, None]
        out = torch.empty(len(members), c, t1 - t0, *self.grid, device=self.device)
        for k, w in enumerate(chosen):
            yw = y_phys[None, :, w.start - y_start : w.stop - y_start] / scale_b
            operator = block_mean_operator(self.codec, yw, factor, scale_b)
            b = len(members)
            base = self._denoiser(cond, w, b, self.window_latent(latent, seed, members, w))
            den = guidance(
                base,
                yw.expand(b, *yw.shape[1:]),
                None,
                weight=settings.guidance_weight,
                operator=operator,
            )
            shape = (c, w.length, *self.grid)
            noise, _ = self._noise(seed, members, shape, time_offset + w.start)
            z = self._sample(den, noise, settings, progress and k == 0)
            kept = w.first_kept - w.start
            with torch.no_grad():
                out[:, :, w.first_kept - t0 : w.stop - t0] = self.codec.decode(z[:, :, kept:])
        if project:
            ys = y_phys[None, :, t0 - y_start : t1 - y_start]
            y = ys.expand(len(members), *ys.shape[1:])
            out = project_block_means(out, y, factor, self.codec.lower, scale.tolist())
        return out

    def downscale(
        self,
        y_phys: Tensor,
        factor: int,
        settings: SamplingSettings,
        *,
        n: int,
        seed: int,
        batch_size: int | None = None,
        time_offset: int = 0,
        cond: Tensor | None = None,
        latent: Tensor | None = None,
        project: bool = True,
        progress: bool = False,
    ) -> Tensor:
        """Fine physical fields (n, C, T, H, W) for coarse physical ``y_phys`` (C, T, h, w).

        Windows tile the time axis (:meth:`tiles`) and are independent; each member block
        is one :class:`WorkUnit` over all of them.
        """
        windows = self.tiles(y_phys.shape[1])
        units = member_units(len(windows), n, batch_size)
        return torch.cat(
            [
                self.downscale_unit(
                    u,
                    windows,
                    y_phys,
                    factor,
                    settings,
                    seed=seed,
                    time_offset=time_offset,
                    cond=cond,
                    latent=latent,
                    project=project,
                    progress=progress and i == 0,
                )
                for i, u in enumerate(units)
            ]
        )
