"""Per-member random streams, so that a member's noise depends only on (seed, member).

A batched ``torch.randn`` ties every member's noise to the batch layout: draw 20 members
in batches of 4 or of 10 and you get different ensembles. Here each member owns a CPU
generator seeded from ``numpy.random.SeedSequence([seed, member, stream])``; draws are made
per member on the CPU and moved to the device, so results are also device independent.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["MemberNoise", "member_seed"]


def member_seed(seed: int, member: int, stream: int = 0) -> int:
    """A 63-bit seed for one member's stream, independent of batch size and chunking."""
    if seed < 0 or member < 0 or stream < 0:
        raise ValueError("seed, member and stream must be non-negative integers")
    state = np.random.SeedSequence([int(seed), int(member), int(stream)]).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


class MemberNoise:
    """Callable returning standard normal noise of shape (len(members), *shape).

    Parameters
    ----------
    seed
        The user's seed.
    members
        Member indices of the rows of the batch, e.g. ``range(10, 20)``.
    shape
        Shape of one member's tensor, e.g. (C, F, H, W).
    device, dtype
        Where the returned tensors live.
    stream
        Distinguishes independent uses by the same member (e.g. successive windows of an
        autoregressive sequence).
    """

    def __init__(
        self,
        seed: int,
        members: Sequence[int],
        shape: Sequence[int],
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        stream: int = 0,
    ) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.device = torch.device(device)
        self.dtype = dtype
        self.generators = [
            torch.Generator("cpu").manual_seed(member_seed(seed, m, stream)) for m in members
        ]

    def __call__(self) -> Tensor:
        draws = [torch.randn(self.shape, generator=g) for g in self.generators]
        return torch.stack(draws).to(self.device, self.dtype)
