"""Memory budgets: how many members to generate at once, and refusing what cannot fit.

Generation holds, per member in a batch, the network's activations for one window (and, with
reconstruction guidance, what autograd keeps for the backward pass); an eager result also
holds the whole output. Both are estimated before anything is allocated: a batch is chosen
to fit the budget, and a request whose smallest unit cannot fit is refused with the
arguments to change.

An in-memory (eager) result is also refused when it cannot fit the machine at all, whatever
``memory_budget`` says: a budget larger than the machine's memory (``"1PB"``) would otherwise
let a request run into the operating system's limits (a bare MemoryError, or the process
killed) instead of being refused with the arguments to change.

Pure Python (``dask.utils.parse_bytes`` reads sizes such as ``"4GB"``); no torch import,
so that :mod:`xdiffusion.datasets` can share :func:`machine_memory`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from dask.utils import format_bytes, parse_bytes

from xdiffusion.validation import check_positive_int

if TYPE_CHECKING:
    from xdiffusion.engine import Engine

__all__ = [
    "ACTIVATION_BYTES_PER_ELEMENT",
    "DEFAULT_MEMORY_FRACTION",
    "TRAINING_PARAMETER_COPIES",
    "check_training_memory",
    "eager_batch",
    "lazy_batch",
    "machine_memory",
    "member_bytes",
    "resolve_budget",
]

#: Share of the machine's physical memory a generating call may plan to use by default.
DEFAULT_MEMORY_FRACTION = 0.5
#: Bytes held per element of the network's widest level and per frame during one guided
#: evaluation (activations kept for autograd, float32): peak RSS of the "small" U-Net
#: (width 32, mults 1-2-2) on 8 × 64 × 64 windows grew by ≈ 170 MiB per member in a
#: forward + backward pass (batches of 1, 2, 4 on CPU), i.e. ≈ 170 bytes per
#: width × H × W × F element at full resolution; the constant keeps a 2× margin.
ACTIVATION_BYTES_PER_ELEMENT = 340
#: Working copies of the output per member (diffusion-space series, decoded, result).
OUTPUT_COPIES = 3
FLOAT_BYTES = 4


def machine_memory() -> int:
    """Physical memory of this machine in bytes (8 GiB where the system does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not POSIX: assume 8 GiB
        return 8 * 2**30


def resolve_budget(memory_budget: int | str | None) -> int:
    """Bytes a call may plan to use: ``memory_budget`` (bytes or a string like ``"4GB"``),
    default :data:`DEFAULT_MEMORY_FRACTION` of physical memory."""
    if memory_budget is None:
        return int(machine_memory() * DEFAULT_MEMORY_FRACTION)
    if isinstance(memory_budget, str):
        try:
            value = parse_bytes(memory_budget)
        except (ValueError, TypeError):
            raise ValueError(
                f"memory_budget={memory_budget!r} is not a size; use bytes or e.g. '4GB'"
            ) from None
    else:
        value = memory_budget
    return check_positive_int(value, "memory_budget")  # type: ignore[return-value]


def member_bytes(engine: Engine) -> int:
    """Estimated peak bytes of one member's window evaluation (see the constant).

    A network run in overlapping tiles (:class:`~xdiffusion.nets.tiled.TiledNet`, from
    ``model.tile(...)``) holds one tile's activations at a time, plus a blended full-grid
    output and weight sum (small next to the activations).
    """
    h, w = engine.grid
    tile = getattr(engine.net, "tile", None)
    if tile is not None:
        h, w = min(h, int(tile[0])), min(w, int(tile[1]))
    return int(ACTIVATION_BYTES_PER_ELEMENT * engine.net.config.width * h * w * engine.frames)


def _batch(engine: Engine, n: int, batch_size: int | None, room: int, budget: int) -> int:
    per = member_bytes(engine)
    if batch_size is not None:
        bs = min(check_positive_int(batch_size, "batch_size"), n)  # type: ignore[type-var]
        if bs * per > room:
            raise ValueError(
                f"batch_size={batch_size} needs about {format_bytes(bs * per)} for the network "
                f"but memory_budget leaves {format_bytes(max(room, 0))} "
                f"(of {format_bytes(budget)}); lower batch_size or raise memory_budget"
            )
        return bs
    if per > room:
        raise ValueError(
            f"one member needs about {format_bytes(per)} for the network but memory_budget "
            f"leaves {format_bytes(max(room, 0))} (of {format_bytes(budget)}); raise "
            "memory_budget or use a smaller grid or fewer frames"
        )
    return max(1, min(n, room // per))


def eager_batch(engine: Engine, n: int, batch_size: int | None, budget: int, elements: int) -> int:
    """Members per batch for an in-memory result of ``elements`` values per member.

    Refuses, naming ``n``, a result that cannot fit the budget, or this machine's physical
    memory whatever the budget (pass a dask-backed input for a lazy result instead). The
    members per batch are chosen within the smaller of the two.
    """
    output = OUTPUT_COPIES * FLOAT_BYTES * elements * n
    machine = machine_memory()
    if output > machine:
        raise ValueError(
            f"n={n} members of {elements:,} values each need about {format_bytes(output)} in "
            f"memory, more than this machine has ({format_bytes(machine)}, whatever "
            f"memory_budget={format_bytes(budget)} says): lower n, or pass a dask-backed "
            "input (e.g. data.chunk(time=...)) to get a lazy result that is computed chunk "
            "by chunk"
        )
    budget = min(budget, machine)
    if output > budget:
        raise ValueError(
            f"n={n} members of {elements:,} values each need about {format_bytes(output)} in "
            f"memory, more than memory_budget={format_bytes(budget)}: lower n, raise "
            "memory_budget, or pass a dask-backed input (e.g. data.chunk(time=...)) to get "
            "a lazy result that is computed chunk by chunk"
        )
    return _batch(engine, n, batch_size, budget - output, budget)


def lazy_batch(
    engine: Engine, n: int, batch_size: int | None, budget: int, chunk_elements: int
) -> int:
    """Members per task of a lazy result whose time chunks hold ``chunk_elements`` values
    per member (a task holds its chunk and the network's activations)."""
    per_chunk = OUTPUT_COPIES * FLOAT_BYTES * chunk_elements
    room = budget - per_chunk
    if room <= 0:
        raise ValueError(
            f"one member's time chunk needs about {format_bytes(per_chunk)}, more than "
            f"memory_budget={format_bytes(budget)}: rechunk the input along time "
            "(e.g. data.chunk(time=...)) or raise memory_budget"
        )
    bs = _batch(engine, n, batch_size, room, budget)
    # a task's chunk scales with its members too
    while bs > 1 and bs * (per_chunk + member_bytes(engine)) > budget:
        bs -= 1
    return bs


#: Copies of every trained parameter a fit holds: the weights, their gradients, AdamW's two
#: moments and the EMA weights.
TRAINING_PARAMETER_COPIES = 5


def check_training_memory(
    n_parameters: int, width: int, cells: int, frames: int, batch_size: int
) -> int:
    """Refuse a fit that cannot fit this machine's memory; returns the estimate in bytes.

    Parameters ×:data:`TRAINING_PARAMETER_COPIES` × 4 bytes, plus the activations of one
    batch kept for the backward pass (:data:`ACTIVATION_BYTES_PER_ELEMENT` per element of
    the first level, ``width × cells × frames`` per window), against
    :func:`machine_memory`: a huge ``net`` width or ``batch_size`` is refused before
    anything is allocated, instead of running into the allocator or the OOM killer.

    Parameters
    ----------
    n_parameters
        Trained parameters (network, learned transforms, encoder).
    width
        Channels of the network's first level.
    cells
        Grid cells of one training window (the patch's with ``patch=``).
    frames, batch_size
        Window length and windows per step (per process).
    """
    weights = TRAINING_PARAMETER_COPIES * FLOAT_BYTES * int(n_parameters)
    activations = ACTIVATION_BYTES_PER_ELEMENT * width * cells * frames * batch_size
    need, have = weights + activations, machine_memory()
    if need > have:
        raise ValueError(
            f"this fit needs about {format_bytes(need)} ({format_bytes(weights)} for "
            f"{n_parameters:,} parameters and their optimiser state, "
            f"{format_bytes(activations)} of activations for batch_size={batch_size} windows "
            f"of {frames} frames × {cells} cells at width {width}), more than this "
            f"machine's {format_bytes(have)}; use a smaller batch_size, net width or patch="
        )
    return need
