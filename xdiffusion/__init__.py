"""xdiffusion: xarray-native spatio-temporal diffusion models for gridded climate data.

Importing registers the ``.diffusion`` accessor on DataArray and Dataset. The top level is
lazy (PEP 562): ``fit``, ``load``, ``load_pretrained``, ``DiffusionModel`` and
``SamplingSettings`` are imported on first access, so ``import xdiffusion`` and the
torch-free subpackages (``xdiffusion.diagnostics``, ``xdiffusion.datasets``, ``xdiffusion.testing``,
``xdiffusion.io``) do not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from xdiffusion import accessor as _accessor  # noqa: F401  (registers .diffusion)
from xdiffusion._version import __version__

if TYPE_CHECKING:  # for type checkers and documentation tools; at run time see __getattr__
    from xdiffusion.fitting import fit
    from xdiffusion.model import DiffusionModel, load
    from xdiffusion.pretrained import load_pretrained
    from xdiffusion.settings import SamplingSettings

__all__ = ["DiffusionModel", "SamplingSettings", "__version__", "fit", "load", "load_pretrained"]

# public name -> the module that defines it, imported on first access
_LAZY = {
    "fit": "xdiffusion.fitting",
    "DiffusionModel": "xdiffusion.model",
    "load": "xdiffusion.model",
    "load_pretrained": "xdiffusion.pretrained",
    "SamplingSettings": "xdiffusion.settings",
}


def __getattr__(name: str) -> Any:
    """Import a public name of the package on first access (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later accesses skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
