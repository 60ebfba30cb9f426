"""GPU readiness: ``torch.compile``, channels-last weights, pinned host-to-device copies.

Pure torch (no xarray). Every helper here is a no-op on the CPU, so that CPU results stay
bit-reproducible whatever this module does on a GPU:

- :func:`compile_network` wraps a network's forward in ``torch.compile`` (opt-in:
  ``fit(compile=True)``, :meth:`DiffusionModel.compile
  <xdiffusion.model.DiffusionModel.compile>`); it raises :class:`CompileError` rather than
  silently running eagerly when ``torch.compile`` is unavailable or fails.
- :func:`apply_memory_format` stores 4-D weights (the network's ``Conv2d`` kernels)
  channels-last on CUDA, where cuDNN's bf16 tensor-core convolutions want NHWC; the U-Net
  already keeps its activations channels-last after the stem on every device, so the
  inputs need no conversion. There is no ``Conv3d`` (5-D weights would become
  ``channels_last_3d``).
- :func:`to_device` copies a host tensor through pinned memory with ``non_blocking=True``
  on CUDA (:func:`transfer_options` is the decision, testable without a GPU).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "CHANNELS_LAST_DEVICES",
    "PINNED_DEVICES",
    "CompileError",
    "CompiledNet",
    "apply_memory_format",
    "compile_network",
    "memory_format_for",
    "to_device",
    "transfer_options",
]

#: Device types whose 4-D weights are stored channels-last (5-D: channels_last_3d).
CHANNELS_LAST_DEVICES = frozenset({"cuda"})
#: Device types fed from pinned host memory with non-blocking copies.
PINNED_DEVICES = frozenset({"cuda"})
#: Rank of the tensors that take ``torch.channels_last`` / ``torch.channels_last_3d``.
RANK_2D, RANK_3D = 4, 5


class CompileError(RuntimeError):
    """``compile=True`` was asked for and ``torch.compile`` is unavailable or failed."""


def _compile_failure(reason: str) -> CompileError:
    return CompileError(
        f"compile=True: {reason}; torch.compile needs torch >= 2.0, a supported Python and, "
        "on the CPU, a C++ compiler; pass compile=False to run the network eagerly"
    )


class CompiledNet:
    """A network whose forward runs through ``torch.compile``; attributes forward to it.

    Not an ``nn.Module``: the original network keeps its parameters, its state-dict keys
    and its place in the model (it is what is saved and moved); this wrapper only changes
    how a call is executed. A failure of the compiler at the first call (TorchDynamo or
    its backend) is raised as :class:`CompileError`; other errors (a wrong input shape)
    pass through unchanged.
    """

    def __init__(self, net: nn.Module, compiled: Any) -> None:
        self.net = net
        self._compiled = compiled

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        from torch._dynamo.exc import TorchDynamoException

        try:
            return self._compiled(*args, **kwargs)
        except TorchDynamoException as err:
            raise _compile_failure(f"torch.compile failed: {type(err).__name__}: {err}") from err

    def __getattr__(self, name: str) -> Any:
        # only reached for names this wrapper lacks: config, parameters(), training …
        return getattr(self.__dict__["net"], name)

    def __repr__(self) -> str:
        return f"CompiledNet({self.net!r})"


def compile_network(net: nn.Module) -> CompiledNet:
    """``net`` with its forward compiled by ``torch.compile`` (the weights are shared).

    Raises
    ------
    CompileError
        ``torch.compile`` does not exist in this torch, or TorchDynamo does not support
        this platform (e.g. this Python version), or compilation fails at the first call.
    """
    if isinstance(net, CompiledNet):
        return net
    if not callable(getattr(torch, "compile", None)):
        raise _compile_failure(f"this torch ({torch.__version__}) has no torch.compile")
    try:
        import torch._dynamo as dynamo

        supported = dynamo.is_dynamo_supported()
    except Exception as err:  # an import failure of the compiler stack itself
        raise _compile_failure(f"TorchDynamo cannot be imported: {err}") from err
    if not supported:
        raise _compile_failure("TorchDynamo does not support this platform or Python version")
    try:
        compiled = torch.compile(net)
    except Exception as err:
        raise _compile_failure(f"torch.compile failed: {type(err).__name__}: {err}") from err
    return CompiledNet(net, compiled)


def memory_format_for(tensor: Tensor, device: torch.device) -> torch.memory_format | None:
    """The memory format of ``tensor`` on ``device``: channels-last for 4-D (5-D:
    channels_last_3d) tensors on :data:`CHANNELS_LAST_DEVICES`; None (leave as is)
    otherwise."""
    if device.type not in CHANNELS_LAST_DEVICES:
        return None
    if tensor.dim() == RANK_2D:
        return torch.channels_last
    if tensor.dim() == RANK_3D:
        return torch.channels_last_3d
    return None


def apply_memory_format(module: nn.Module, device: torch.device) -> nn.Module:
    """Store ``module``'s convolution weights channels-last on CUDA; returns ``module``.

    On other devices nothing is touched, except that weights left channels-last by an
    earlier move to CUDA are made contiguous again (a model fitted on a GPU and moved to
    the CPU computes as one fitted there).
    """
    device = torch.device(device)
    if device.type in CHANNELS_LAST_DEVICES:
        with torch.no_grad():
            for p in [*module.parameters(), *module.buffers()]:
                fmt = memory_format_for(p, device)
                if fmt is not None and not p.is_contiguous(memory_format=fmt):
                    p.data = p.data.contiguous(memory_format=fmt)
        return module
    with torch.no_grad():
        for p in [*module.parameters(), *module.buffers()]:
            if not p.is_contiguous():
                p.data = p.data.contiguous()
    return module


def transfer_options(device: torch.device) -> tuple[bool, bool]:
    """``(pin, non_blocking)`` for copying a host tensor to ``device``: both True on
    :data:`PINNED_DEVICES` (CUDA), both False elsewhere (the CPU: a plain ``.to``)."""
    fast = torch.device(device).type in PINNED_DEVICES
    return fast, fast


def to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """``tensor`` on ``device``: through pinned memory with a non-blocking copy on CUDA
    (:func:`transfer_options`), a plain ``tensor.to(device)`` elsewhere.

    A non-blocking copy is ordered on the current CUDA stream before every kernel that
    reads the result, so no synchronisation is needed; the pinned source is kept alive by
    the copy.
    """
    device = torch.device(device)
    pin, non_blocking = transfer_options(device)
    if pin and tensor.device.type == "cpu":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=non_blocking)
