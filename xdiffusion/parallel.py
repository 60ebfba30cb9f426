"""Data-parallel training processes: torchrun's environment and torch.distributed.

``torchrun --nproc_per_node=N -m xdiffusion fit ...`` (or a script calling
:func:`xdiffusion.fit` launched by torchrun) starts N processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set; :func:`setup` joins them in a process group (gloo on
CPU, NCCL on CUDA) the first time a fit runs. A single process (no ``WORLD_SIZE`` or
``WORLD_SIZE=1``) never touches torch.distributed. Pure torch.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = [
    "TIMEOUT",
    "all_mean",
    "barrier",
    "is_main_process",
    "launched",
    "rank",
    "setup",
    "world_size",
]

#: How long a collective waits for the other ranks before failing (a crashed rank must not
#: hang the others for torch's default 30 minutes).
TIMEOUT = timedelta(minutes=10)


def launched() -> bool:
    """Whether this process was started as one of several by torchrun (``WORLD_SIZE > 1``)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def world_size() -> int:
    """Processes in the run: the initialised group's size, else 1."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process' rank in the run (0 for a single process)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    """True on rank 0 (and in a single process): the one that writes files."""
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join torchrun's process group if this process was launched by it; returns the device
    this rank trains on (``cuda:LOCAL_RANK`` for a CUDA device, else ``device``).

    Raises RuntimeError when torch.distributed is unavailable in this build.
    """
    if not launched():
        return device
    if not dist.is_available():
        raise RuntimeError(
            "this process was started by torchrun (WORLD_SIZE > 1) but this PyTorch build "
            "has no torch.distributed; run a single process"
        )
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=TIMEOUT)
    return device


def barrier() -> None:
    """Wait for every rank (nothing in a single process)."""
    if world_size() > 1:
        dist.barrier()


def all_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar tensor over ranks (the value itself in a single process)."""
    if world_size() == 1:
        return value
    out = value.detach().clone().float()
    dist.all_reduce(out)
    return out / world_size()
