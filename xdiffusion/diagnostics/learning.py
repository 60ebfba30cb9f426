"""The learning curve of a fit as a Dataset: training and validation loss by step.

:attr:`DiffusionModel.history <xdiffusion.model.DiffusionModel.history>` returns it and
:func:`xdiffusion.plot.plot_loss` draws it. No torch here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["LOSS_COMMENT", "history_dataset", "smoothed_loss"]

#: What the two losses are (the Dataset's ``comment``).
LOSS_COMMENT = (
    "loss: the training objective (v-loss, plus the log-determinant term of a learned "
    "transform) of one mini-batch per step at random noise levels, hence noisy; val_loss: "
    "the same objective of the EMA weights on fixed held-out windows with fixed noise, "
    "comparable from one evaluation to the next"
)
#: Default smoothing window of :func:`smoothed_loss`, as a fraction of the steps.
SMOOTHING_FRACTION = 0.05


def history_dataset(history: Mapping[str, Any]) -> xr.Dataset:
    """A loss history (lists ``step``, ``loss``, ``val_step``, ``val_loss``, as a model's
    ``config["training"]["history"]`` holds them) as a Dataset.

    Parameters
    ----------
    history
        The lists; missing or empty ones are left out of the Dataset.

    Returns
    -------
    xr.Dataset
        ``loss`` on dimension ``step`` (the optimisation step, from 0) and ``val_loss`` on
        ``val_step`` (the step after which the validation loss was computed), attributes
        saying what they are (:data:`LOSS_COMMENT`). Empty for a model that recorded none.
    """
    out = xr.Dataset(attrs={"title": "xdiffusion training history", "comment": LOSS_COMMENT})
    steps = np.asarray(history.get("step") or [], dtype=np.int64)
    loss = np.asarray(history.get("loss") or [], dtype=np.float64)
    if loss.size:
        if steps.size != loss.size:
            steps = np.arange(loss.size, dtype=np.int64)
        out["loss"] = xr.DataArray(
            loss,
            dims="step",
            coords={"step": ("step", steps, {"long_name": "optimisation step"})},
            attrs={"long_name": "training loss (one mini-batch per step)", "units": "1"},
        )
    val_steps = np.asarray(history.get("val_step") or [], dtype=np.int64)
    val_loss = np.asarray(history.get("val_loss") or [], dtype=np.float64)
    if val_loss.size and val_steps.size == val_loss.size:
        out["val_loss"] = xr.DataArray(
            val_loss,
            dims="val_step",
            coords={"val_step": ("val_step", val_steps, {"long_name": "step of the validation"})},
            attrs={
                "long_name": "validation loss (EMA weights, held-out windows, fixed noise)",
                "units": "1",
            },
        )
    return out


def smoothed_loss(loss: xr.DataArray, window: int | None = None) -> xr.DataArray:
    """A running mean of the training loss over ``window`` steps (default
    :data:`SMOOTHING_FRACTION` of them, at least 1), centred, shorter at the ends."""
    n = loss.sizes.get("step", loss.size)
    if window is None:
        window = max(1, round(SMOOTHING_FRACTION * n))
    if window < 1:
        raise ValueError(f"window must be a positive number of steps, got {window!r}")
    return loss.rolling(step=int(window), center=True, min_periods=1).mean()
