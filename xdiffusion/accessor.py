"""The ``.diffusion`` accessors on DataArray and Dataset: thin fronts, no maths.

Each method validates its model argument and forwards to a plain function, returning a new
object; no state is kept on the accessor (xarray rebuilds accessors for every object).
"""

from __future__ import annotations

from typing import Any

import xarray as xr

from xdiffusion.model import DiffusionModel


def _check_model(model: Any) -> DiffusionModel:
    if not isinstance(model, DiffusionModel):
        raise TypeError(
            f"model must be an xdiffusion.DiffusionModel (from .diffusion.fit() or "
            f"xdiffusion.load()), got {type(model).__name__}"
        )
    return model


class _DiffusionAccessor:
    def __init__(self, obj: xr.DataArray | xr.Dataset) -> None:
        self._obj = obj

    def fit(self, **kwargs: Any) -> DiffusionModel:
        """Train a model on this object; see :func:`xdiffusion.fit` for the arguments."""
        from xdiffusion.fitting import fit

        return fit(self._obj, **kwargs)

    def sample(self, model: DiffusionModel, n: int = 1, **kwargs: Any):
        """``n`` unconditional members shaped like this object (the template)."""
        return _check_model(model).sample(self._obj, n, **kwargs)

    def interpolate(self, model: DiffusionModel, n: int = 1, **kwargs: Any):
        """Fill this object's NaN time steps/cells; observed values are kept exactly."""
        return _check_model(model).interpolate(self._obj, n, **kwargs)

    def forecast(self, model: DiffusionModel, lead: int, n: int = 1, **kwargs: Any):
        """Continue this series ``lead`` steps past its last time step."""
        return _check_model(model).forecast(self._obj, lead, n, **kwargs)

    def downscale(self, model: DiffusionModel, n: int = 1, **kwargs: Any):
        """Fine-grid ensemble whose block means match this (coarse) object."""
        return _check_model(model).downscale(self._obj, n, **kwargs)

    def evaluate(self, reference: xr.DataArray | xr.Dataset, **kwargs: Any) -> xr.Dataset:
        """Diagnostics of this ensemble against ``reference``.

        See :func:`xdiffusion.diagnostics.evaluate` for the arguments and outputs.
        """
        from xdiffusion.diagnostics import evaluate

        return evaluate(self._obj, reference, **kwargs)


@xr.register_dataarray_accessor("diffusion")
class DataArrayDiffusionAccessor(_DiffusionAccessor):
    """``da.diffusion``: fit, sample, interpolate, forecast, downscale, evaluate."""


@xr.register_dataset_accessor("diffusion")
class DatasetDiffusionAccessor(_DiffusionAccessor):
    """``ds.diffusion``: the same, with variables learned jointly as channels."""
