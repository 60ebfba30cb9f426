"""Speed of xdiffusion's UNet3D against video-diffusion-pytorch's Unet3D at equal size.

For each preset of ours and each input size, the peer (lucidrains' ``Unet3D``, the network
Herbert 2023 built on) gets the same ``dim_mults`` and the ``dim`` whose parameter count is
closest to ours. Both are timed on the same input:

- training: forward + backward + AdamW step at ``--batch`` (samples per second);
- evaluation: forward under ``torch.no_grad`` at batch 1 (network evaluations per second,
  the unit a sampler spends).

Measurements alternate between the two networks and report medians, because the machine
is shared and noisy. Prints one JSON document to stdout; progress goes to stderr.

Usage::

    python benchmarks/network.py [--quick] [--sizes 32x32x8,64x64x10] [--presets small]

Needs ``pip install --no-deps video-diffusion-pytorch einops einops-exts
rotary-embedding-torch``. The peer imports torchvision only for its data utilities; where
torchvision is missing a stand-in module is registered first (see :func:`_stub_torchvision`).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
import types
from collections.abc import Callable

import torch
from torch import nn

from xdiffusion.nets import UNet3D, unet_config


def _stub_torchvision() -> None:
    """Register a minimal ``torchvision`` so ``video_diffusion_pytorch`` imports.

    It uses torchvision only in its GIF/data helpers (``transforms.ToTensor()`` as a default
    argument, evaluated at import), none of which the network touches. The stand-in's
    callables raise if anything does call them.
    """
    try:
        import torchvision  # noqa: F401

        return
    except ImportError:
        pass

    class _Unavailable:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def __call__(self, *args: object, **kwargs: object) -> None:
            raise NotImplementedError("torchvision stand-in: not available in this benchmark")

    tv = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    utils = types.ModuleType("torchvision.utils")
    for name in ("ToTensor", "Compose", "Resize", "CenterCrop", "RandomHorizontalFlip", "Lambda"):
        setattr(transforms, name, _Unavailable)
    utils.save_image = _Unavailable()
    tv.transforms, tv.utils = transforms, utils
    sys.modules.update(
        {"torchvision": tv, "torchvision.transforms": transforms, "torchvision.utils": utils}
    )


def _peer_class() -> type[nn.Module]:
    _stub_torchvision()
    from video_diffusion_pytorch import Unet3D

    return Unet3D


def n_params(module: nn.Module) -> int:
    """Number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


def match_peer_dim(peer_cls: type[nn.Module], target: int, mults: tuple[int, ...], channels: int):
    """Peer ``dim`` whose parameter count is closest to ``target`` (built on the meta device)."""

    def count(dim: int) -> int:
        with torch.device("meta"):
            return n_params(peer_cls(dim=dim, dim_mults=mults, channels=channels))

    lo, hi = 4, 8
    while count(hi) < target:
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # parameter count grows monotonically with dim
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) < target else (lo, mid)
    best = min((lo, hi), key=lambda d: abs(count(d) - target))
    return best, count(best)


def _timer(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _make_train_step(net: nn.Module, x: torch.Tensor, t: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    target = torch.randn_like(x)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = (net(x, t) - target).square().mean()
        loss.backward()
        opt.step()

    return step


def _make_eval(net: nn.Module, x: torch.Tensor, t: torch.Tensor) -> Callable[[], None]:
    def ev() -> None:
        with torch.no_grad():
            net(x, t)

    return ev


def _alternate(fns: dict[str, Callable[[], None]], warmup: int, repeats: int) -> dict[str, float]:
    """Median seconds per call of each function, measured in alternation."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(warmup):
        for f in fns.values():
            f()
    for _ in range(repeats):
        for k, f in fns.items():
            times[k].append(_timer(f))
    return {k: statistics.median(v) for k, v in times.items()}


def bench_one(
    preset: str,
    size: tuple[int, int, int],
    peer_cls: type[nn.Module] | None,
    batch: int,
    warmup: int,
    repeats: int,
    channels: int = 1,
) -> dict:
    """Train and eval speed of one preset (and its matched peer) at one input size."""
    h, w, f = size
    torch.manual_seed(0)
    cfg = unet_config(preset, channels=channels)
    nets = {"ours": UNet3D(cfg)}
    row: dict = {"preset": preset, "size": f"{h}x{w}x{f}", "batch": batch}
    row["ours"] = {"params": n_params(nets["ours"])}
    if peer_cls is not None:
        dim, count = match_peer_dim(peer_cls, row["ours"]["params"], cfg.mults, channels)
        nets["peer"] = peer_cls(dim=dim, dim_mults=cfg.mults, channels=channels)
        row["peer"] = {"dim": dim, "dim_mults": list(cfg.mults), "params": n_params(nets["peer"])}
        assert row["peer"]["params"] == count

    xb = torch.randn(batch, channels, f, h, w)
    lam_b = torch.empty(batch).uniform_(-30, 30)
    x1, lam_1 = xb[:1].clone(), lam_b[:1].clone()

    for net in nets.values():
        net.train()
    train = _alternate(
        {k: _make_train_step(n, xb, lam_b) for k, n in nets.items()}, warmup, repeats
    )
    for net in nets.values():
        net.eval()
    evals = _alternate({k: _make_eval(n, x1, lam_1) for k, n in nets.items()}, warmup, repeats)
    for k in nets:
        row[k]["train_samples_per_s"] = round(batch / train[k], 3)
        row[k]["evals_per_s"] = round(1 / evals[k], 3)
    if "peer" in nets:
        row["train_speed_ratio"] = round(train["peer"] / train["ours"], 3)
        row["eval_speed_ratio"] = round(evals["peer"] / evals["ours"], 3)
        row["param_ratio"] = round(row["ours"]["params"] / row["peer"]["params"], 3)
    return row


def _parse_sizes(text: str) -> list[tuple[int, int, int]]:
    sizes = []
    for item in text.split(","):
        parts = item.lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise argparse.ArgumentTypeError(
                f"--sizes takes comma-separated HxWxF (e.g. 32x32x8), got {item!r}"
            )
        sizes.append(tuple(int(p) for p in parts))
    return sizes


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and print JSON to stdout."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one warm-up, two repeats (smoke test)")
    ap.add_argument("--sizes", type=_parse_sizes, default=_parse_sizes("32x32x8,64x64x10"))
    ap.add_argument("--presets", default="small,reference")
    ap.add_argument("--batch", type=int, default=4, help="training batch size")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-peer", action="store_true", help="time only our network")
    args = ap.parse_args(argv)
    warmup, repeats = (1, 2) if args.quick else (args.warmup, args.repeats)
    peer_cls = None if args.no_peer else _peer_class()

    rows = []
    for preset in args.presets.split(","):
        for size in args.sizes:
            row = bench_one(preset, size, peer_cls, args.batch, warmup, repeats)
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    out = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "warmup": warmup,
        "repeats": repeats,
        "ratios": "peer seconds / our seconds: > 1 means ours is faster",
        "results": rows,
    }
    ratios = [r["train_speed_ratio"] for r in rows if "train_speed_ratio" in r]
    if ratios:
        out["train_speed_ratio_geomean"] = round(
            math.exp(sum(math.log(r) for r in ratios) / len(ratios)), 3
        )
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
