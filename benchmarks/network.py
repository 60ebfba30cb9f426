"""Speed of xdiffusion's UNet3D against video-diffusion-pytorch's Unet3D at equal size.

For each preset of ours and each input size, the peer (lucidrains' ``Unet3D``, the network
Herbert 2023 built on) gets the same ``dim_mults`` and the ``dim`` whose parameter count is
closest to ours. Both are timed on the same input:

- training: forward + backward + AdamW step at ``--batch`` (samples per second);
- evaluation: forward under ``torch.no_grad`` at batch 1 (network evaluations per second,
  the unit a sampler spends).

Each network is timed in fresh processes (``--rounds`` of them, alternating ours and the
peer's, because the machine is shared and noisy) and the medians are reported, in wall time
and in process CPU time. Prints one JSON document to stdout; progress goes to stderr.

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
import subprocess
import sys
import time
import types

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


def _build(which: str, preset: str, channels: int, peer_dim: int | None) -> nn.Module:
    cfg = unet_config(preset, channels=channels)
    if which == "ours":
        return UNet3D(cfg)
    return _peer_class()(dim=peer_dim, dim_mults=cfg.mults, channels=channels)


def _worker(spec: dict) -> dict:
    """Time one network in this (fresh) process: seconds per train step and per evaluation."""
    torch.manual_seed(0)
    net = _build(spec["which"], spec["preset"], spec["channels"], spec.get("peer_dim"))
    h, w, f = spec["size"]
    batch, c = spec["batch"], spec["channels"]
    x = torch.randn(batch, c, f, h, w)
    lam = torch.empty(batch).uniform_(-30, 30)
    target = torch.randn_like(x)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = (net(x, lam) - target).square().mean()
        loss.backward()
        opt.step()

    def evaluate() -> None:
        with torch.no_grad():
            net(x[:1], lam[:1])

    out = {"params": n_params(net)}
    for name, fn, mode in (("train", train_step, net.train), ("eval", evaluate, net.eval)):
        mode()
        for _ in range(spec["warmup"]):
            fn()
        wall, cpu = [], []
        for _ in range(spec["repeats"]):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        out[name], out[name + "_cpu"] = wall, cpu
    return out


def _run_worker(spec: dict) -> dict:
    # A fresh process per measurement: the networks differ a lot in memory footprint and
    # timing one after the other in one process lets the first's allocator state slow the
    # second by several times.
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode:
        raise RuntimeError(f"benchmark worker failed for {spec}:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_one(
    preset: str,
    size: tuple[int, int, int],
    peer: bool,
    batch: int,
    warmup: int,
    repeats: int,
    rounds: int,
    channels: int = 1,
) -> dict:
    """Train and eval speed of one preset (and its matched peer) at one input size.

    ``rounds`` fresh processes per network, alternating ours and the peer's so that both
    see the same load; each times ``repeats`` calls after ``warmup``; medians over all.
    """
    h, w, f = size
    cfg = unet_config(preset, channels=channels)
    with torch.device("meta"):
        ours_params = n_params(UNet3D(cfg))
    row: dict = {"preset": preset, "size": f"{h}x{w}x{f}", "batch": batch}
    row["ours"] = {"params": ours_params}
    spec = dict(
        preset=preset, size=size, batch=batch, channels=channels, warmup=warmup, repeats=repeats
    )
    specs = {"ours": dict(spec, which="ours")}
    if peer:
        dim, count = match_peer_dim(_peer_class(), ours_params, cfg.mults, channels)
        row["peer"] = {"dim": dim, "dim_mults": list(cfg.mults), "params": count}
        specs["peer"] = dict(spec, which="peer", peer_dim=dim)
    modes = ("train", "eval", "train_cpu", "eval_cpu")
    times: dict[str, dict[str, list[float]]] = {k: {m: [] for m in modes} for k in specs}
    for _ in range(rounds):
        for k, sp in specs.items():
            res = _run_worker(sp)
            assert res["params"] == row[k]["params"]
            for mode in modes:
                times[k][mode] += res[mode]
    med = {k: {m: statistics.median(v) for m, v in t.items()} for k, t in times.items()}
    for k in specs:
        row[k]["train_samples_per_s"] = round(batch / med[k]["train"], 3)
        row[k]["evals_per_s"] = round(1 / med[k]["eval"], 3)
        row[k]["train_cpu_s_per_step"] = round(med[k]["train_cpu"], 4)
        row[k]["eval_cpu_s"] = round(med[k]["eval_cpu"], 4)
    if peer:
        row["param_ratio"] = round(row["ours"]["params"] / row["peer"]["params"], 3)
        for mode in modes:
            row[f"{mode}_speed_ratio"] = round(med["peer"][mode] / med["ours"][mode], 3)
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
    ap.add_argument(
        "--quick", action="store_true", help="one round, one warm-up, two repeats (smoke test)"
    )
    ap.add_argument("--sizes", type=_parse_sizes, default=_parse_sizes("32x32x8,64x64x10"))
    ap.add_argument("--presets", default="small,reference")
    ap.add_argument("--batch", type=int, default=4, help="training batch size")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per process")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls per process")
    ap.add_argument("--rounds", type=int, default=3, help="fresh processes per network")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--no-peer", action="store_true", help="time only our network")
    args = ap.parse_args(argv)
    if args.worker:
        res = _worker(json.loads(args.worker))
        print(json.dumps(res))
        return res
    warmup, repeats, rounds = (1, 2, 1) if args.quick else (args.warmup, args.repeats, args.rounds)

    rows = []
    for preset in args.presets.split(","):
        for size in args.sizes:
            row = bench_one(preset, size, not args.no_peer, args.batch, warmup, repeats, rounds)
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    out = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "warmup": warmup,
        "repeats": repeats,
        "rounds": rounds,
        "ratios": "peer seconds / our seconds: > 1 means ours is faster; *_cpu_* use process "
        "CPU time (all threads), less sensitive than wall time to other jobs on the machine",
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
