"""Sampling settings: resolved once per call, then passed down frozen.

Three sources, later ones winning: the library's default for the task
(:data:`TASK_DEFAULTS`), the model's own choice made at fit time
(``fit(sampler=..., sampling_steps=...)``), and the call's arguments. A step count belongs
to the sampler it was chosen with, so an explicit ``sampler=`` takes the steps of the first
source that names that same sampler, else that sampler's registry default: ``sample()`` and
``sample(sampler="dpmpp_2m")`` run the same 20 steps, ``forecast(sampler="dpmpp_2m_sde")``
the task's 25. The result, :class:`SamplingSettings`, is what the engine runs and what the
output's ``history`` line and ``sampling`` attribute record.

Pure Python: no torch, no xarray.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from xdiffusion.core.conditioning import DEFAULT_GUIDANCE_WEIGHT
from xdiffusion.core.samplers import SAMPLERS, get_sampler
from xdiffusion.validation import check_choice, check_number, check_positive_int

__all__ = [
    "DEFAULT_DOWNSCALING_WEIGHT",
    "DEFAULT_SAMPLER",
    "METHODS",
    "TASKS",
    "TASK_DEFAULTS",
    "SamplingSettings",
    "resolve_sampling",
]

DEFAULT_SAMPLER = "dpmpp_2m"

#: (sampler, steps) used when neither the call nor ``fit(sampler=...)`` names a sampler,
#: each the cheapest setting its benchmark supports (docs/samplers.md, docs/conditional.md):
#: ``sample``: dpmpp_2m with 20 λ steps, the fewest evaluations that stay as close to
#: 1000-step ancestral samples as two sets of real windows are to each other
#: (benchmarks/samplers.py); ``forecast``: the stochastic 2M solver at 25, whose CRPS is
#: 5–20 % lower than deterministic 2M's at every lead (the deterministic map with guidance
#: is over-dispersed); ``interpolate`` and ``downscale``: dpmpp_2m at 25, as benchmarked
#: in benchmarks/conditional.py.
TASK_DEFAULTS: dict[str, tuple[str, int]] = {
    "sample": (DEFAULT_SAMPLER, 20),
    "interpolate": (DEFAULT_SAMPLER, 25),
    "downscale": (DEFAULT_SAMPLER, 25),
    "forecast": ("dpmpp_2m_sde", 25),
}
TASKS = tuple(TASK_DEFAULTS)

#: Conditioning methods of the gap-filling tasks (Herbert (2023) eq. 2.116 and 2.106).
METHODS = ("guidance", "imputation")

#: Default guidance weight of ``downscale``, for the whitened block-mean residual (see
#: :func:`xdiffusion.engine.block_mean_operator`): 1 is the first-order projection at high
#: λ; 0.5–2 gave the same block consistency (benchmarks/conditional.py,
#: docs/conditional.md), 3 diverged.
DEFAULT_DOWNSCALING_WEIGHT = 1.0


@dataclass(frozen=True)
class SamplingSettings:
    """What the engine runs: sampler, step count and conditioning.

    Attributes
    ----------
    task
        ``"sample"``, ``"interpolate"``, ``"forecast"`` or ``"downscale"``.
    sampler
        Registered sampler name (:data:`xdiffusion.core.samplers.SAMPLERS`).
    steps
        Sampler steps (network evaluations for first-order steps).
    method
        ``"guidance"`` or ``"imputation"``: how windows condition on known values (for
        ``sample``, the frames before each window of a long sequence).
    guidance_weight
        Reconstruction-guidance weight w_r (eq. 2.116), None where no guidance runs.
    """

    task: str
    sampler: str
    steps: int
    method: str | None = None
    guidance_weight: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (for history lines and logs)."""
        return asdict(self)

    def describe(self) -> str:
        """One line for the ``sampling`` attribute of outputs."""
        parts = [f"sampler={self.sampler}", f"steps={self.steps}"]
        if self.method is not None:
            parts.append(f"method={self.method}")
        if self.guidance_weight is not None:
            parts.append(f"guidance_weight={self.guidance_weight:g}")
        return " ".join(parts)


def resolve_sampling(
    task: str,
    *,
    sampler: str | None = None,
    steps: int | None = None,
    method: str | None = None,
    guidance_weight: float | None = None,
    fitted: Mapping[str, Any] | None = None,
) -> SamplingSettings:
    """Resolve the settings of one call (task default ← fit-time choice ← call).

    Parameters
    ----------
    task
        One of :data:`TASKS`.
    sampler, steps
        The call's choice; None defers to the model, then to the task default.
    method
        ``"guidance"`` (default) or ``"imputation"`` for ``interpolate``/``forecast``;
        must be None or ``"guidance"`` for ``downscale`` and None for ``sample`` (whose
        long sequences use guidance at the default weight).
    guidance_weight
        w_r ≥ 0; None: :data:`~xdiffusion.core.conditioning.DEFAULT_GUIDANCE_WEIGHT` for
        interpolation and forecasts, :data:`DEFAULT_DOWNSCALING_WEIGHT` for downscaling.
    fitted
        The model's fit-time choice, ``{"sampler": name or None, "steps": int or None}``.

    Returns
    -------
    SamplingSettings
    """
    check_choice(task, "task", TASKS)
    if sampler is not None:
        get_sampler(sampler)
    steps = check_positive_int(steps, "steps", allow_none=True)
    weight = check_number(guidance_weight, "guidance_weight", minimum=0.0, allow_none=True)
    fit_sampler = (fitted or {}).get("sampler")
    fit_steps = (fitted or {}).get("steps")
    task_sampler, task_steps = TASK_DEFAULTS[task]
    # each source proposes (sampler, steps); a step count stays with its sampler
    sources = [(task_sampler, task_steps), (fit_sampler or task_sampler, fit_steps)]
    if sampler is None:
        sampler = fit_sampler or task_sampler
    if steps is None:
        for name, n in reversed(sources):
            if name == sampler and n is not None:
                steps = int(n)
                break
        else:
            steps = int(SAMPLERS[sampler]["default_steps"])
    if task == "sample":
        # windows after the first of a long sample condition on the frames before them
        # (Herbert (2023) §4.4) by reconstruction guidance at the default weight
        if method is not None or weight is not None:
            raise ValueError("sample() is unconditional: it takes no method or guidance_weight")
        return SamplingSettings(task, sampler, steps, "guidance", DEFAULT_GUIDANCE_WEIGHT)
    if task == "downscale":
        if method not in (None, "guidance"):
            raise ValueError(
                f"downscale conditions on block means by guidance only; got method={method!r}"
            )
        w = DEFAULT_DOWNSCALING_WEIGHT if weight is None else weight
        return SamplingSettings(task, sampler, steps, "guidance", w)
    method = check_choice("guidance" if method is None else method, "method", METHODS)
    if method == "imputation":
        return SamplingSettings(task, sampler, steps, method, None)
    w = DEFAULT_GUIDANCE_WEIGHT if weight is None else weight
    return SamplingSettings(task, sampler, steps, method, w)
