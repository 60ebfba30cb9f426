"""xdiffusion: xarray-native spatio-temporal diffusion models for gridded climate data.

Importing registers the ``.diffusion`` accessor on DataArray and Dataset.
"""

from xdiffusion import accessor as _accessor  # noqa: F401  (registers .diffusion)
from xdiffusion._version import __version__
from xdiffusion.fitting import fit
from xdiffusion.model import DiffusionModel, load
from xdiffusion.settings import SamplingSettings

__all__ = ["DiffusionModel", "SamplingSettings", "__version__", "fit", "load"]
