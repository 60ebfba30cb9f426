"""Training loop: AdamW with warm-up, gradient clipping, EMA weights, validation, progress.

The loop knows nothing about data formats or transforms: it gets a module holding every
trainable part (network and, optionally, learned transforms), a ``loss_fn(module, batch,
generator)``, and a ``batch_fn(step)``. Batches and the generator used for t and ε are
both functions of the step index alone, so a run is reproducible on CPU and can be resumed
from any step by replaying nothing.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from xdiffusion.codec import Codec
from xdiffusion.core.diffusion import v_loss
from xdiffusion.core.latent import free_bits_kl, gaussian_kl, reparameterize
from xdiffusion.core.likelihood import vlb_terms
from xdiffusion.core.schedule import CosineSchedule
from xdiffusion.parallel import all_mean, is_main_process, world_size
from xdiffusion.validation import check_int, check_number, is_number

__all__ = [
    "COSINE_FLOOR",
    "HIGH_NOISE_T",
    "LR_SCHEDULES",
    "MAX_BATCH_SIZE",
    "MAX_SEED",
    "MAX_STEPS",
    "OBJECTIVES",
    "DiffusionBatch",
    "Objective",
    "TrainConfig",
    "TrainResult",
    "autocast_context",
    "check_batch_size",
    "check_steps",
    "check_train_seed",
    "diffusion_objective",
    "ema_update",
    "high_noise_times",
    "learning_rate",
    "param_groups",
    "step_generator",
    "train",
    "validation_loss",
]

#: Most optimiser steps of one run: checkpoint files are named with 9 digits of the step.
MAX_STEPS = 999_999_999
#: Largest batch size accepted (beyond it index arithmetic overflows long before memory).
MAX_BATCH_SIZE = 2**31 - 1
#: Seeds must fit torch's 64-bit seed (and the step generator's arithmetic).
MAX_SEED = 2**63 - 1
#: Training objectives: the thesis's v-loss (+ β·KL with a latent) or the variational bound.
OBJECTIVES = ("weighted", "elbo")

Batch = Any
LossFn = Callable[[nn.Module, Batch, torch.Generator], torch.Tensor]


def check_steps(value: Any, name: str = "steps") -> int:
    """A step count in [1, :data:`MAX_STEPS`]."""
    return check_int(  # type: ignore[return-value]
        value, name, minimum=1, maximum=MAX_STEPS, what=f"a positive integer ≤ {MAX_STEPS}"
    )


def check_batch_size(value: Any, name: str = "batch_size") -> int:
    """A batch size in [1, :data:`MAX_BATCH_SIZE`]."""
    return check_int(  # type: ignore[return-value]
        value,
        name,
        minimum=1,
        maximum=MAX_BATCH_SIZE,
        what=f"a positive integer ≤ {MAX_BATCH_SIZE}",
    )


def check_train_seed(value: Any, name: str = "seed") -> int:
    """A seed in [0, :data:`MAX_SEED`]."""
    return check_int(  # type: ignore[return-value]
        value, name, minimum=0, maximum=MAX_SEED, what="a non-negative integer < 2**63"
    )


#: Learning-rate schedules after the warm-up.
LR_SCHEDULES = ("constant", "cosine")
#: How a batch's diffusion times are drawn: independently, or one per stratum of [0, 1)
#: (:func:`~xdiffusion.core.diffusion.stratified_times`).
T_SAMPLINGS = ("uniform", "stratified")
#: The cosine schedule ends at this fraction of the peak learning rate, not at 0 (the last
#: steps still move the weights that the EMA averages).
COSINE_FLOOR = 0.1


def learning_rate(config: TrainConfig, step: int) -> float:
    """The learning rate of optimiser step ``step`` (0-based).

    A linear warm-up to ``config.lr`` over ``config.warmup`` steps, then constant or, for
    ``lr_schedule="cosine"``, lr · (f + (1 − f) · ½ (1 + cos(π p))) with p the fraction
    of the post-warm-up steps done and f = :data:`COSINE_FLOOR`.
    """
    lr = config.lr * min(1.0, (step + 1) / max(1, config.warmup))
    if config.lr_schedule == "cosine" and step >= config.warmup:
        span = max(1, config.steps - 1 - config.warmup)
        p = min(1.0, (step - config.warmup) / span)
        lr *= COSINE_FLOOR + (1.0 - COSINE_FLOOR) * 0.5 * (1.0 + math.cos(math.pi * p))
    return lr


@dataclass
class TrainConfig:
    """Optimisation settings (defaults suit small models on a CPU).

    Parameters
    ----------
    steps
        Number of optimiser steps.
    batch_size
        Windows per step.
    lr
        Peak AdamW learning rate, reached linearly after ``warmup`` steps.
    lr_schedule
        After the warm-up: ``"cosine"`` (half a cosine from the peak down to
        :data:`COSINE_FLOOR` × the peak at the last step, see :func:`learning_rate`; the
        default: at 15 CPU-minutes its samples' spectra were 3 × closer to the data's than
        with a constant rate, benchmarks/quality.py) or ``"constant"`` (the peak to the
        end; the default before).
    t_sampling
        How each batch draws its diffusion times t (λ ~ p_Λ either way, eq. 2.65):
        ``"stratified"`` (the default: one per stratum of [0, 1), the low-discrepancy
        sampler of Kingma et al. (2021), a lower-variance loss with the same expectation,
        :func:`~xdiffusion.core.diffusion.stratified_times`; at 60 CPU-minutes its samples'
        spectra were 2.8 × closer to the data's, docs/quality.md) or ``"uniform"``
        (independent draws, the default before; checkpoints written then resume with it).
    weight_decay
        AdamW weight decay.
    warmup
        Linear warm-up steps.
    grad_clip
        Maximum global gradient norm (``None`` or 0 disables clipping).
    ema_decay
        Exponential-moving-average decay of the weights used for sampling; the effective
        decay is ``min(ema_decay, (1 + k) / (10 + k))`` so short runs are not dominated by
        the random initialisation.
    val_every
        Validation-loss period in steps (0 disables).
    seed
        Seed of initialisation, batch order, t and ε.
    transform_lr_scale
        Learning-rate multiplier of the learned transforms h_ω (parameters under a
        ``learned`` submodule). The 900-parameter h_ω shares the loss with a network a
        thousand times larger; at the network's rate it barely left the identity in a few
        hundred steps (benchmarks/transforms.py), so by default it learns 10× faster.
    """

    steps: int = 2000
    batch_size: int = 16
    lr: float = 3e-4
    lr_schedule: str = "cosine"
    t_sampling: str = "stratified"
    weight_decay: float = 0.0
    warmup: int = 100
    grad_clip: float | None = 1.0
    ema_decay: float = 0.995
    val_every: int = 100
    seed: int = 0
    transform_lr_scale: float = 10.0

    def __post_init__(self) -> None:
        # Stored back as plain Python numbers: numpy scalars are accepted, and to_dict()
        # stays JSON-serialisable.
        self.steps = check_steps(self.steps)  # type: ignore[assignment]
        self.batch_size = check_batch_size(self.batch_size)  # type: ignore[assignment]
        self.lr = check_number(  # type: ignore[assignment]
            self.lr, "lr", minimum=0.0, exclusive_minimum=True
        )
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"lr_schedule must be one of {list(LR_SCHEDULES)}, got {self.lr_schedule!r}"
            )
        if self.t_sampling not in T_SAMPLINGS:
            raise ValueError(
                f"t_sampling must be one of {list(T_SAMPLINGS)}, got {self.t_sampling!r}"
            )
        self.weight_decay = check_number(  # type: ignore[assignment]
            self.weight_decay, "weight_decay", minimum=0.0
        )
        self.warmup = check_int(self.warmup, "warmup", minimum=0)  # type: ignore[assignment]
        self.grad_clip = check_number(self.grad_clip, "grad_clip", minimum=0.0, allow_none=True)
        if not (is_number(self.ema_decay) and 0.0 <= self.ema_decay < 1.0):
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay!r}")
        self.ema_decay = float(self.ema_decay)
        self.val_every = check_int(self.val_every, "val_every", minimum=0)  # type: ignore[assignment]
        self.seed = check_train_seed(self.seed)
        self.transform_lr_scale = check_number(  # type: ignore[assignment]
            self.transform_lr_scale, "transform_lr_scale", minimum=0.0, exclusive_minimum=True
        )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    """What a training run leaves behind."""

    ema: nn.Module
    history: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0
    steps: int = 0


@dataclass(frozen=True)
class DiffusionBatch:
    """One training batch: scaled data, the mask of elements in the loss, conditioning.

    Attributes
    ----------
    scaled
        (B, C, F, H, W) data scaled to [−1, 1] by the codec (no h_ω yet), zero where
        ``mask`` is False.
    mask
        Boolean (B, C, F, H, W): finite values in cells the model learns.
    cond
        (B, F, K) per-frame features, or None.
    share
        ``(rank, world_size)`` of a data-parallel run: this batch is rows
        ``rank::world_size`` of the global batch (see :func:`~xdiffusion.core.diffusion.v_loss`).
    """

    scaled: Tensor
    mask: Tensor
    cond: Tensor | None = None
    share: tuple[int, int] = (0, 1)


@dataclass(frozen=True)
class Objective:
    """What the training loss is.

    Parameters
    ----------
    kind
        ``"weighted"``: the v-loss of Herbert (2023), eq. 2.68 (t ~ U(0, 1), i.e. λ ~ p_Λ),
        plus ``beta`` · KL / N for a latent model: good samples, but not a bound on
        −log p(x). ``"elbo"``: the variational bound of seed 003 §4 in nats per element,
        E_q[L_VDM(x | w)] + KL(q(w | x) ‖ N(0, I)), with L_VDM the prior, diffusion and
        Gaussian-decoder terms of :func:`~xdiffusion.core.likelihood.vlb_terms` (λ ~ U(λmin,
        λ_rec), one draw per window, with its control variates); a true upper bound on the
        negative log-likelihood of the scaled, transformed data (with ``free_bits = 0``),
        values below the dry threshold counted as one discrete class as in ``model.nll``
        (dequantised in their bin, :func:`dequantize_dry`).
    beta
        Weight of the KL term in ``"weighted"`` (the bound has weight 1).
    free_bits
        Nats per latent dimension below which the KL costs nothing
        (:func:`~xdiffusion.core.latent.free_bits_kl`); 0 keeps the bound a bound.
    lambda_rec
        The ELBO's reconstruction level (None: the schedule's λmax).
    high_noise
        ``"weighted"`` with a latent only: the share of each batch whose t is drawn from
        U(:data:`HIGH_NOISE_T`, 1) instead of U(0, 1). There z_t no longer shows the
        window, so w is the network's only source for it; under t ~ U(0, 1) that is 1 % of
        the draws, and the encoder learns next to nothing from them (docs/latent.md).
        Changes the weighting of the v-loss (more weight at the highest noise levels).
    snr_cap
        ``"weighted"`` only: cap γ of the v-loss's weight on the x-error, 1 + SNR, at
        1 + γ (:func:`~xdiffusion.core.diffusion.v_loss`): less weight on the lowest noise
        levels, where the v-loss weighs the x-error most. None (default): the method's
        loss, eq. 2.68.
    lambda_shift
        ``"weighted"`` only: train at λ(t) + shift (:func:`~xdiffusion.core.diffusion.v_loss`),
        the shifted cosine schedule; negative values put more of the training at high
        noise, where a window's mean and large scales are decided. 0: eq. 2.68.
    multiscale
        ``"weighted"`` only: average the v-loss over spatial scales and the window mean
        (:func:`~xdiffusion.core.diffusion.multiscale_mse`). False: eq. 2.68.
    """

    kind: str = "weighted"
    beta: float = 1.0
    free_bits: float = 0.0
    lambda_rec: float | None = None
    high_noise: float = 0.0
    snr_cap: float | None = None
    lambda_shift: float = 0.0
    multiscale: bool = False

    def __post_init__(self) -> None:
        if self.kind not in OBJECTIVES:
            raise ValueError(f"objective must be one of {list(OBJECTIVES)}, got {self.kind!r}")
        object.__setattr__(self, "beta", check_number(self.beta, "beta", minimum=0.0))
        object.__setattr__(
            self, "free_bits", check_number(self.free_bits, "free_bits", minimum=0.0)
        )
        object.__setattr__(
            self, "lambda_rec", check_number(self.lambda_rec, "lambda_rec", allow_none=True)
        )
        object.__setattr__(
            self,
            "high_noise",
            check_number(self.high_noise, "high_noise", minimum=0.0, maximum=1.0),
        )
        if self.high_noise and self.kind != "weighted":
            raise ValueError(
                "high_noise reweights the v-loss of objective='weighted'; the 'elbo' bound "
                "has its own weighting (pass high_noise=0)"
            )
        object.__setattr__(
            self,
            "snr_cap",
            check_number(self.snr_cap, "snr_cap", minimum=0.0, allow_none=True),
        )
        if self.snr_cap is not None and self.kind != "weighted":
            raise ValueError(
                "snr_cap reweights the v-loss of objective='weighted'; the 'elbo' bound "
                "has its own weighting (pass snr_cap=None)"
            )
        object.__setattr__(
            self,
            "lambda_shift",
            check_number(
                self.lambda_shift,
                "lambda_shift",
                minimum=-LAMBDA_SHIFT_LIMIT,
                maximum=LAMBDA_SHIFT_LIMIT,
            ),
        )
        if self.lambda_shift and self.kind != "weighted":
            raise ValueError(
                "lambda_shift reweights the v-loss of objective='weighted'; the 'elbo' bound "
                "has its own weighting (pass lambda_shift=0)"
            )
        if not isinstance(self.multiscale, bool):
            raise TypeError(f"multiscale must be True or False, got {self.multiscale!r}")
        if self.multiscale and self.kind != "weighted":
            raise ValueError(
                "multiscale reweights the v-loss of objective='weighted'; the 'elbo' bound "
                "has its own weighting (pass multiscale=False)"
            )

    def to_dict(self) -> dict:
        out = asdict(self)
        # runs and files from before the options keep their form
        if not out["high_noise"]:
            del out["high_noise"]
        if out["snr_cap"] is None:
            del out["snr_cap"]
        if not out["lambda_shift"]:
            del out["lambda_shift"]
        if not out["multiscale"]:
            del out["multiscale"]
        return out


#: Largest |Objective.lambda_shift|: a shift of 20 moves every training draw of the default
#: schedule (λ ∈ [−30, 30]) within 10 of an end of its range.
LAMBDA_SHIFT_LIMIT = 20.0

#: Lower end of the high-noise draws of :attr:`Objective.high_noise`: t ≥ 0.99 is
#: λ ≤ −8.3 under the default cosine schedule, where the window mean of z_t is below its
#: noise for a 32 × 32 × 8 window (α·Δmean ≲ σ / √N).
HIGH_NOISE_T = 0.99


def high_noise_times(
    b: int, share: float, generator: torch.Generator, like: Tensor, rows: tuple[int, int]
) -> Tensor:
    """t per sample: U(0, 1), or with probability ``share`` U(:data:`HIGH_NOISE_T`, 1).

    Drawn for the global batch (``rows`` = (rank, world)) and the rank's rows kept, as
    :func:`~xdiffusion.core.diffusion.v_loss` draws t.
    """
    rank, world = rows
    n = b * world
    kw = {"generator": generator, "device": like.device, "dtype": like.dtype}
    t, u, pick = torch.rand(n, **kw), torch.rand(n, **kw), torch.rand(n, **kw)
    t = torch.where(pick < share, HIGH_NOISE_T + (1.0 - HIGH_NOISE_T) * u, t)
    return t[rank::world]


def diffusion_objective(
    net: nn.Module,
    codec: Codec,
    schedule: CosineSchedule,
    batch: DiffusionBatch,
    scaled_thresholds: Sequence[float],
    generator: torch.Generator,
    *,
    encoder: nn.Module | None = None,
    objective: Objective | None = None,
    stratified: bool = False,
) -> Tensor:
    """The training loss: v-loss on h_ω(x) plus the h_ω log-determinant (eq. 2.68, 4.15).

    Per sample b, with N_b the number of valid elements over all channels,

        L_b = (Σ_valid ‖v − v̂‖² − Σ_{valid, above dry threshold} log h_ω'(x_i)) / N_b,

    i.e. both terms normalised by the same count, so their balance is that of eq. 4.15
    whatever the number of variables or the masked fraction; the result is the mean of
    L_b over the batch. Without learned transforms it is the masked mean v-loss.

    Parameters
    ----------
    net
        The v-network.
    codec
        The codec (its h_ω are trained through this loss).
    schedule
        Noise schedule (t ~ U(0, 1)).
    batch
        Scaled data, mask and conditioning.
    scaled_thresholds
        Per channel dry threshold in scaled units (the mask set M of eq. 4.14).
    generator
        Draws t and ε (and, for a latent model, first the ε of w = μ + σ ε).
    encoder
        E_φ of a latent model (seed 003): the window, masked, gives q(w | x); one
        reparameterised draw of w conditions the network; the KL is added.
    objective
        :class:`Objective` (default: ``"weighted"``, β = 1).
    stratified
        Draw the batch's t one per stratum (:attr:`TrainConfig.t_sampling`); the ``"elbo"``
        bound's λ and the high-noise draws of a latent model keep their own sampling.

    Notes
    -----
    With a latent, both kinds add the KL per element, KL / N_b (β-weighted for
    ``"weighted"``), so a loss value is in nats per element for ``"elbo"``.
    """
    objective = objective or Objective()
    scaled, dry_nats = batch.scaled, None
    if objective.kind == "elbo":
        # the dry class, as nll has it: exact zeros have no density, so values below the
        # dry threshold are one discrete outcome, bounded by dequantisation in its bin
        # (only for variables whose threshold took part in the model, as nll's default:
        # a transform with a lower bound such as sqrt, or a learned one)
        dry = [
            t if codec[c].lower is not None or codec[c].has_learned else -math.inf
            for c, t in enumerate(scaled_thresholds)
        ]
        scaled, dry_nats = dequantize_dry(batch.scaled, batch.mask, dry, generator, batch.share)
    y = codec.encode_scaled(scaled)
    kw: dict[str, Tensor] = {} if batch.cond is None else {"cond": batch.cond}
    count = batch.mask.expand_as(y).flatten(1).sum(1).clamp_min(1).float()
    kl = None
    if encoder is not None:
        mu, logvar = encoder(torch.where(batch.mask, y, torch.zeros((), dtype=y.dtype)), batch.mask)
        rank, world = batch.share
        eps = torch.randn(
            (mu.shape[0] * world, mu.shape[1]), generator=generator, device=mu.device
        )[rank::world]
        kw["latent"] = reparameterize(mu, logvar, eps)
        kl = free_bits_kl(gaussian_kl(mu.float(), logvar.float()), objective.free_bits)
    if objective.kind == "elbo":
        terms = vlb_terms(
            net,
            y,
            schedule,
            n_lambda=1,
            lambda_rec=objective.lambda_rec,
            mask=batch.mask,
            generator=generator,
            net_kwargs=kw or None,
            share=batch.share,
        )
        total = terms["total"].float() + dry_nats
        loss = (total + (0.0 if kl is None else kl)) / count
    else:
        t = None
        if encoder is not None and objective.high_noise:
            t = high_noise_times(y.shape[0], objective.high_noise, generator, y, batch.share)
        loss = v_loss(
            net,
            y,
            schedule,
            generator=generator,
            mask=batch.mask,
            t=t,
            net_kwargs=kw or None,
            share=batch.share,
            stratified=stratified,
            snr_cap=objective.snr_cap,
            lambda_shift=objective.lambda_shift,
            multiscale=objective.multiscale,
        )
        if kl is not None:
            loss = loss + objective.beta * kl / count
    if codec.has_learned:
        loss = loss + codec.penalty(scaled, batch.mask, scaled_thresholds) / count
    # float32 whatever autocast did to the network (v_loss and the penalty already are)
    return loss.float().mean()


#: Lower end of the codec's scaled range: the data's minimum (the bottom of the dry bin).
SCALED_LOWER = -1.0


def dequantize_dry(
    scaled: Tensor,
    mask: Tensor,
    scaled_thresholds: Sequence[float],
    generator: torch.Generator,
    share: tuple[int, int] = (0, 1),
) -> tuple[Tensor, Tensor]:
    """Values below each channel's dry threshold drawn uniformly in the dry bin, and the
    bin's −log width per sample (nats), so that a density bound on the result bounds
    −log of the mixed likelihood: probability for the dry class, density above it
    (Herbert (2023) eq. 4.10 with a dequantised class; see :mod:`xdiffusion.likelihood`).

    Parameters
    ----------
    scaled
        (B, C, F, H, W) data in the codec's scaled units ([−1, 1], the minimum at −1).
    mask
        Elements that count.
    scaled_thresholds
        Per channel dry threshold in scaled units (−inf: no dry class).
    generator, share
        The uniform draws, for the global batch of a data-parallel run (rows kept).
    """
    rank, world = share
    b = scaled.shape[0]
    nats = torch.zeros(b, dtype=torch.float32, device=scaled.device)
    thr = [float(t) for t in scaled_thresholds]
    if all(not math.isfinite(t) or t <= SCALED_LOWER for t in thr):
        return scaled, nats
    u = torch.rand((b * world, *scaled.shape[1:]), generator=generator, device=scaled.device)[
        rank::world
    ].to(scaled.dtype)
    out = scaled.clone()
    for c, t in enumerate(thr):
        if not math.isfinite(t) or t <= SCALED_LOWER:
            continue
        dry = (scaled[:, c] < t) & mask[:, c]
        out[:, c] = torch.where(dry, SCALED_LOWER + u[:, c] * (t - SCALED_LOWER), scaled[:, c])
        nats = nats - math.log(t - SCALED_LOWER) * dry.flatten(1).sum(1).float()
    return out, nats


def step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    """The generator for t and ε at one step: a function of (seed, step) only."""
    g = torch.Generator(device=device)
    g.manual_seed((int(seed) * 1_000_003 + int(step)) % (2**63 - 1))
    return g


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema ← decay · ema + (1 − decay) · model, parameters and float buffers."""
    e = [p for p in ema.parameters()]
    m = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(e, m, 1.0 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


def autocast_context(device: torch.device):
    """bf16 autocast on CUDA only; CPU runs in float32 for reproducibility."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _is_transform_parameter(name: str) -> bool:
    return name.startswith("codec.")


def param_groups(module: nn.Module, transform_lr_scale: float) -> list[dict]:
    """Optimiser groups: the learned transforms (``codec.*``) at a scaled rate, the rest.

    Each group carries ``lr_scale``, the multiplier of the scheduled learning rate. A module
    without learned transforms gives a single group, as before this option existed.
    """
    rest, learned = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (learned if _is_transform_parameter(name) else rest).append(p)
    groups = [{"params": rest, "lr_scale": 1.0}]
    if learned:
        groups.append({"params": learned, "lr_scale": float(transform_lr_scale)})
    return groups


class _Objective(nn.Module):
    """The loss as a module's forward, so that DistributedDataParallel sees the forward it
    needs to schedule the gradient all-reduce."""

    def __init__(self, module: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.module = module
        self.loss_fn = loss_fn

    def forward(self, batch: Batch, generator: torch.Generator) -> Tensor:
        return self.loss_fn(self.module, batch, generator)


def train(
    module: nn.Module,
    loss_fn: LossFn,
    batch_fn: Callable[[int], Batch],
    config: TrainConfig,
    *,
    device: torch.device,
    val_batches: Sequence[Batch] = (),
    progress: bool = True,
    callback: Callable[[int, nn.Module, nn.Module, torch.optim.Optimizer], None] | None = None,
    start_step: int = 0,
    optimizer_state: dict | None = None,
    ema: nn.Module | None = None,
    history: dict[str, list[float]] | None = None,
) -> TrainResult:
    """Optimise ``module`` on ``loss_fn`` and keep EMA weights.

    Parameters
    ----------
    module
        All trainable parts, already on ``device``.
    loss_fn
        ``loss_fn(module, batch, generator) -> scalar`` loss.
    batch_fn
        ``batch_fn(step) -> batch``, deterministic in ``step``.
    config
        Optimisation settings.
    device
        Training device.
    val_batches
        Fixed held-out batches; their loss (with fixed t and ε) is recorded every
        ``config.val_every`` steps and at the end.
    progress
        Show a tqdm bar with the running loss.
    callback
        Called as ``callback(step, module, ema, optimizer)`` after each step (checkpoints).
    start_step, optimizer_state, ema
        Resume state: continue at ``start_step`` with this optimiser state and EMA module.
    history
        Loss history to extend in place (a resumed run continues its checkpointed history,
        and a checkpoint callback sees the losses so far); a new one if None.

    Notes
    -----
    In a torch.distributed run (:mod:`xdiffusion.parallel`), each rank's ``batch_fn``
    gives its share of the global batch; gradients are averaged by
    DistributedDataParallel, so every rank holds the same weights and EMA; the recorded
    loss is the mean over ranks (the global batch's loss); validation, the progress bar
    and ``callback`` run on rank 0 only.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    world = world_size()
    main = is_main_process()
    objective: nn.Module = _Objective(module, loss_fn)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        objective = DistributedDataParallel(objective, device_ids=ids)
    opt = torch.optim.AdamW(
        param_groups(module, config.transform_lr_scale),
        lr=config.lr,
        weight_decay=config.weight_decay,
    )
    if optimizer_state is not None:
        if len(optimizer_state.get("param_groups", [])) != len(opt.param_groups):
            raise ValueError(
                "the checkpoint's optimiser has "
                f"{len(optimizer_state.get('param_groups', []))} parameter group(s), this "
                f"model {len(opt.param_groups)}: it was written by an xdiffusion from before "
                "learned transforms had their own learning rate; start a new fit"
            )
        opt.load_state_dict(optimizer_state)
    if ema is None:
        ema = copy.deepcopy(module).requires_grad_(False)
    if history is None:
        history = {}
    for key in ("step", "loss", "val_step", "val_loss"):
        history.setdefault(key, [])
    t_start = time.perf_counter()
    bar = tqdm(
        range(start_step, config.steps),
        disable=not (progress and main),
        desc="fit",
        initial=start_step,
        total=config.steps,
    )
    running = None
    for step in bar:
        lr = learning_rate(config, step)
        for group in opt.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # absent in older checkpoints
        module.train()
        batch = batch_fn(step)
        with autocast_context(device):
            loss = objective(batch, step_generator(config.seed, step, device))
        # every rank checks the same (global) value, so all stop together
        global_loss = all_mean(loss.detach())
        if not torch.isfinite(global_loss):
            raise FloatingPointError(
                f"training loss became {global_loss.item()} at step {step}; lower lr= or "
                "check the data for extreme values"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        opt.step()
        ema_update(ema, module, min(config.ema_decay, (1 + step) / (10 + step)))
        value = float(global_loss)
        history["step"].append(step)
        history["loss"].append(value)
        running = value if running is None else 0.98 * running + 0.02 * value
        if progress and step % 10 == 0:
            bar.set_postfix(loss=f"{running:.4f}")
        last = step == config.steps - 1
        due = config.val_every and ((step + 1) % config.val_every == 0 or last)
        if val_batches and due and main:
            history["val_step"].append(step)
            history["val_loss"].append(validation_loss(ema, loss_fn, val_batches, config, device))
        if callback is not None and main:
            callback(step, module, ema, opt)
    bar.close()
    return TrainResult(
        ema=ema, history=history, seconds=time.perf_counter() - t_start, steps=config.steps
    )


@torch.no_grad()
def validation_loss(
    module: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Batch],
    config: TrainConfig,
    device: torch.device,
) -> float:
    """Mean loss over fixed batches with fixed t and ε (comparable across steps)."""
    module.eval()
    total = 0.0
    for i, batch in enumerate(batches):
        with autocast_context(device):
            total += float(loss_fn(module, batch, step_generator(config.seed + 7919, i, device)))
    return total / max(1, len(batches))
