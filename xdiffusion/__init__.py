"""xdiffusion: xarray-native spatio-temporal diffusion models for gridded climate data."""

from xdiffusion._version import __version__

__all__ = ["__version__"]
