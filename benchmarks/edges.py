"""Do generated fields have artifacts at the domain's edges and corners?

Users reported single saturated pixels at the corners of generated members. A model is
fitted on synthetic precipitation (``synthetic_precipitation(nt=400, ny=32, nx=32)``, the
``small`` preset; cached in ``benchmarks/.cache/``), draws ``--members`` members of
``--frames`` frames, and every field (member × frame) with rain is compared with the real
fields of a held-out series (another seed) on:

- ``max_in_ring`` / ``max_in_corner``: share of fields whose maximum lies in the outer
  one-cell ring / in one of the 4 corner cells (a uniform position would give
  ``ring_cells / cells`` and ``4 / cells``);
- ``corner_spike``: share of fields with a corner cell above ``SPIKE_RATIO`` × the largest
  of its 3 neighbours and above ``SPIKE_FLOOR`` mm/h (an isolated hot pixel);
- ``saturated_share_ring`` / ``_interior``: share of cells at the top of the codec's range
  (the training maximum, where x̂ was clipped at +1), in the ring and inside it;
- ``mean_by_distance``: mean rain by distance to the nearest edge (0 = the ring), divided
  by the interior mean, and the same for the real fields (edge bias);
- ``dry``: share of exact zeros and of values in (0, 1e-6) mm/h (float residue that should
  have been 0), and the minimum.

``--margin M`` evaluates the network on the grid padded by ``M`` mirrored cells on every
side and keeps the centre of its output (``--margin-mode circular`` wraps instead): does
moving the network's edges away from the domain's edges remove the edge bias?

``--net`` passes network settings (e.g. ``--net '{"conv_pad": "replicate"}'``) to compare
architectures; each setting is fitted (and cached) on its own.

Prints one JSON document to stdout; progress goes to stderr.

Usage::

    python benchmarks/edges.py            # ~10 min on one idle core (fit cached after)
    python benchmarks/edges.py --quick    # smoke run, about a minute
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch

try:
    from benchmarks._common import Spec, get_model, log, machine, rounded
except ImportError:  # run as a script: benchmarks/ is on sys.path
    from _common import Spec, get_model, log, machine, rounded

#: A corner cell this many times above its largest neighbour is an isolated spike.
SPIKE_RATIO = 3.0
#: ... and above this rate (mm/h): drizzle next to dry cells is not a spike.
SPIKE_FLOOR = 0.5
#: Fields whose maximum is at most this (mm/h) are dry: their argmax says nothing.
DRY_MAX = 0.01
#: Values in (0, RESIDUE) mm/h are float residue of dry cells, not rain.
RESIDUE = 1e-6
#: Relative distance to the codec's maximum counted as saturated.
SATURATION = 1e-4
#: Held-out real fields compared with the generated ones.
REFERENCE_STEPS = 2048
#: Distances to the nearest edge reported by mean_by_distance (then "interior").
EDGE_DISTANCES = 4


class MarginNet(torch.nn.Module):
    """``net`` evaluated on ``z`` padded by ``margin`` cells (mirrored or wrapped) on each
    side, its output cropped back to the grid."""

    def __init__(self, net: torch.nn.Module, margin: int, mode: str) -> None:
        super().__init__()
        self.net, self.margin, self.mode = net, margin, mode
        self.config = net.config

    def forward(self, z: torch.Tensor, lam: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        m = self.margin
        b, c, f, h, w = z.shape
        padded = torch.nn.functional.pad(z.reshape(b, c * f, h, w), (m, m, m, m), mode=self.mode)
        out = self.net(padded.reshape(b, c, f, h + 2 * m, w + 2 * m), lam, **kwargs)
        return out[..., m : m + h, m : m + w]


def edge_distance(ny: int, nx: int) -> np.ndarray:
    """(ny, nx) distance of each cell to the nearest edge (0 on the outer ring)."""
    y = np.minimum(np.arange(ny), np.arange(ny)[::-1])[:, None]
    x = np.minimum(np.arange(nx), np.arange(nx)[::-1])[None, :]
    return np.minimum(y, x)


def corners(ny: int, nx: int) -> list[tuple[tuple[int, int], list[tuple[int, int]]]]:
    """Each corner cell with its three in-grid neighbours."""
    out = []
    for cy, dy in ((0, 1), (ny - 1, -1)):
        for cx, dx in ((0, 1), (nx - 1, -1)):
            out.append(((cy, cx), [(cy + dy, cx), (cy, cx + dx), (cy + dy, cx + dx)]))
    return out


def field_statistics(fields: np.ndarray, top: float) -> dict[str, Any]:
    """Edge statistics of (N, ny, nx) fields (see the module docstring)."""
    n, ny, nx = fields.shape
    dist = edge_distance(ny, nx)
    ring = dist == 0
    corner_mask = np.zeros((ny, nx), bool)
    for (cy, cx), _ in corners(ny, nx):
        corner_mask[cy, cx] = True
    flat = fields.reshape(n, -1)
    rainy = flat.max(axis=1) > DRY_MAX
    where = flat[rainy].argmax(axis=1)
    spikes = np.zeros(n, bool)
    for (cy, cx), nbrs in corners(ny, nx):
        neighbour = np.max([fields[:, y, x] for y, x in nbrs], axis=0)
        spikes |= (fields[:, cy, cx] > SPIKE_FLOOR) & (fields[:, cy, cx] > SPIKE_RATIO * neighbour)
    saturated = fields >= top * (1 - SATURATION)
    interior_mean = float(fields[:, dist >= EDGE_DISTANCES].mean())
    by_distance = {
        str(d): float(fields[:, dist == d].mean()) / interior_mean for d in range(EDGE_DISTANCES)
    }
    finite = fields[np.isfinite(fields)]
    return {
        "fields": int(n),
        "rainy_fields": int(rainy.sum()),
        "max_in_ring": float(ring.ravel()[where].mean()) if where.size else None,
        "max_in_corner": float(corner_mask.ravel()[where].mean()) if where.size else None,
        "corner_spike": float(spikes.mean()),
        "saturated_share_ring": float(saturated[:, ring].mean()),
        "saturated_share_interior": float(saturated[:, ~ring].mean()),
        "mean_by_distance": by_distance,
        "dry": {
            "exact_zero": float((finite == 0).mean()),
            "residue_0_to_1e-6": float(((finite > 0) & (finite < RESIDUE)).mean()),
            "min": float(finite.min()),
        },
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny network, few steps")
    ap.add_argument("--steps", type=int, default=300, help="training steps")
    ap.add_argument("--members", type=int, default=64)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--sampling-steps", type=int, default=None, help="default: the task's")
    ap.add_argument("--net", default="{}", help="network settings as a JSON object")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--pretrained",
        default=None,
        help="measure a shipped model (e.g. synthetic-precip) on data in its setting "
        "instead of fitting one",
    )
    ap.add_argument("--margin", type=int, default=0, help="mirrored cells around the grid")
    ap.add_argument("--margin-mode", default="reflect", choices=["reflect", "circular"])
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    net = json.loads(args.net)
    if args.quick:
        net = {"width": 8, "head_dim": 8, "mults": [1, 2], **net}
        args.steps, args.members = min(args.steps, 30), min(args.members, 4)
    spec = Spec(
        ny=32,
        nx=32,
        frames=args.frames,
        net=tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in net.items())),
        train_steps=args.steps,
        nt_train=400,
        seed=args.seed,
    )
    if args.pretrained:
        from xdiffusion.pretrained import load_pretrained, reference_data

        model = load_pretrained(args.pretrained)
        info = {"pretrained": args.pretrained, "steps": model.config["training"]["steps"]}
        spec = Spec(ny=model.grid[0], nx=model.grid[1], frames=model.frames, net=())
        reference = reference_data(REFERENCE_STEPS, seed=args.seed + 1, name=args.pretrained)
    else:
        model, info = get_model(spec)
        reference = spec.data(REFERENCE_STEPS, args.seed + 1)
    if args.margin:
        model.module.net = MarginNet(model.module.net, args.margin, args.margin_mode)
    top = float(model.codec[0].decode(torch.ones(1, 1)).item())  # the training maximum
    t = time.perf_counter()
    ens = reference.isel(time=slice(0, model.frames)).diffusion.sample(
        model, args.members, steps=args.sampling_steps, seed=args.seed + 2, progress=False
    )
    sample_s = time.perf_counter() - t
    generated = np.asarray(ens.values, dtype=np.float64).reshape(-1, spec.ny, spec.nx)
    real = np.asarray(reference.values, dtype=np.float64)
    cells = spec.ny * spec.nx
    result = {
        "benchmark": "edges",
        "quick": args.quick,
        "net": net,
        "conv_pad": model.net_config.conv_pad,  # what the (possibly cached) model has
        "margin": {"cells": args.margin, "mode": args.margin_mode},
        "model": info,
        "sampling": ens.attrs.get("sampling"),
        "sample_seconds": round(sample_s, 1),
        "uniform": {"max_in_ring": (cells - (spec.ny - 2) * (spec.nx - 2)) / cells},
        "generated": field_statistics(generated, top),
        "real": field_statistics(real, top),
        "codec_max_mm_h": top,
        "thresholds": {
            "spike_ratio": SPIKE_RATIO,
            "spike_floor_mm_h": SPIKE_FLOOR,
            "dry_max_mm_h": DRY_MAX,
            "saturation": SATURATION,
        },
        "machine": machine(),
    }
    result["uniform"]["max_in_corner"] = 4 / cells
    result = rounded(result, 5)
    log(json.dumps({k: result[k] for k in ("generated", "real")}))
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
