"""The ``xdiffusion`` command line: demo, fit, sample, interpolate, forecast, downscale."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import dask
import torch
import xarray as xr

__all__ = ["build_parser", "main"]


def _open(path: str, var: str | None, chunks: int | None = None) -> xr.DataArray | xr.Dataset:
    p = Path(path)
    if not p.exists():
        raise SystemExit(f"error: input file {path!r} does not exist")
    if p.is_dir():
        ds = xr.open_zarr(p)
        if chunks is not None:
            ds = ds.chunk({d: chunks for d in ds.dims if d == _time_dim(ds)})
    else:
        ds = xr.open_dataset(p, chunks=None if chunks is None else {})
        if chunks is not None:
            ds = ds.chunk({_time_dim(ds): chunks})
    if var is None:
        return ds
    if var not in ds.data_vars:
        raise SystemExit(f"error: --var {var!r} not in {path}; available: {list(ds.data_vars)}")
    return ds[[var]]


def _time_dim(ds: xr.Dataset) -> str:
    from xdiffusion.io.axes import find_axes

    first = next(iter(ds.data_vars.values()))
    return find_axes(first).get("T", "time")


def _write(
    obj: xr.DataArray | xr.Dataset, out: str, job: dict | None = None, progress: bool = True
) -> None:
    ds = obj if isinstance(obj, xr.Dataset) else obj.to_dataset()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    if out.rstrip("/").endswith(".zarr"):
        from xdiffusion.archive import write_zarr

        done = write_zarr(ds, out, job=job, progress=progress)
        print(f"wrote {out} ({done['written']} regions written, {done['skipped']} resumed)")
        return
    ds.to_netcdf(out)
    print(f"wrote {out}")


@contextlib.contextmanager
def _scheduler(spec: str | None):
    """threads | processes | local:N (a LocalCluster of N worker processes) | address."""
    if spec is None or spec in ("threads", "processes", "synchronous"):
        with dask.config.set(scheduler=spec or "threads"):
            yield
        return
    from distributed import Client, LocalCluster

    if spec.startswith("local:"):
        n = int(spec.split(":", 1)[1])
        # one torch thread per worker core: oversubscribed cores collapse throughput
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // n))
        with (
            LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster,
            Client(cluster),
        ):
            yield
        return
    with Client(spec):
        yield


def _gen_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model directory written by `xdiffusion fit`")
    p.add_argument("--var", default=None, help="variable(s) to use (default: all)")
    p.add_argument("--n", type=int, default=10, help="ensemble members")
    p.add_argument(
        "--out",
        required=True,
        help="output netCDF file, or a .zarr store (written region by region; re-running "
        "the same command resumes an interrupted job)",
    )
    p.add_argument("--steps", type=int, default=None, help="sampler steps")
    p.add_argument("--sampler", default=None, help="sampler name")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--chunks",
        type=int,
        default=None,
        help="read inputs lazily in chunks of this many time steps; the result is then "
        "computed chunk by chunk (rounded to whole windows), never whole in memory",
    )
    p.add_argument(
        "--scheduler",
        default=None,
        help="dask scheduler for --chunks: threads (default), processes, local:N (a local "
        "cluster of N worker processes) or a scheduler address such as tcp://host:8786",
    )
    p.add_argument("--memory-budget", default=None, help="memory a call may plan to use, e.g. 4GB")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xdiffusion", description="Spatio-temporal diffusion models for gridded data."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="train on synthetic precipitation and run every task")
    d.add_argument("--out", default="xdiffusion-demo", help="output folder")
    d.add_argument("--steps", type=int, default=None, help="training steps")
    d.add_argument("--size", type=int, default=32, help="grid size (cells)")
    d.add_argument("--frames", type=int, default=8)
    d.add_argument("--members", type=int, default=4)
    d.add_argument("--tiny", action="store_true", help="a seconds-long smoke run")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="auto")
    d.add_argument("--quiet", action="store_true")

    f = sub.add_parser("fit", help="fit a model to a netCDF/zarr file")
    f.add_argument("data", help="netCDF file or zarr store")
    f.add_argument("--var", default=None, help="variable (default: all with time and grid)")
    f.add_argument("--out", required=True, help="model directory to write")
    f.add_argument("--frames", type=int, default=8)
    f.add_argument("--steps", type=int, default=2000)
    f.add_argument("--batch-size", type=int, default=16)
    f.add_argument("--lr", type=float, default=3e-4)
    f.add_argument("--transform", default="sqrt")
    f.add_argument("--preset", default="small")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--device", default="auto")
    f.add_argument("--quiet", action="store_true")

    s = sub.add_parser("sample", help="unconditional ensemble shaped like a template file")
    _gen_args(s)
    s.add_argument("--like", required=True, help="template netCDF (grid, time axis)")

    i = sub.add_parser("interpolate", help="fill NaN time steps of a file")
    _gen_args(i)
    i.add_argument("data")
    i.add_argument("--method", default="guidance", choices=["guidance", "imputation"])
    i.add_argument("--guidance-weight", type=float, default=None)

    fc = sub.add_parser("forecast", help="continue a file's series past its end")
    _gen_args(fc)
    fc.add_argument("data")
    fc.add_argument("--lead", type=int, required=True)
    fc.add_argument("--context", type=int, default=None)

    ds = sub.add_parser("downscale", help="fine-grid ensemble from a coarse file")
    _gen_args(ds)
    ds.add_argument("data")
    ds.add_argument("--factor", type=int, required=True)
    ds.add_argument("--no-project", action="store_true", help="skip exact block-mean fix")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``xdiffusion`` command."""
    args = build_parser().parse_args(argv)
    import xdiffusion as xd

    if args.command == "demo":
        from xdiffusion.demo import run_demo

        summary = run_demo(
            args.out,
            steps=args.steps,
            size=args.size,
            frames=args.frames,
            members=args.members,
            tiny=args.tiny,
            seed=args.seed,
            device=args.device,
            progress=not args.quiet,
        )
        print(json.dumps(summary, indent=1))
        return 0
    if args.command == "fit":
        data = _open(args.data, args.var)
        model = data.diffusion.fit(
            frames=args.frames,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            transform=args.transform,
            preset=args.preset,
            seed=args.seed,
            device=args.device,
            progress=not args.quiet,
        )
        model.save(args.out)
        print(f"wrote {args.out}  {model!r}")
        return 0
    model = xd.load(args.model, device=args.device)
    common = dict(
        steps=args.steps,
        sampler=args.sampler,
        seed=args.seed,
        batch_size=args.batch_size,
        progress=not args.quiet,
        memory_budget=args.memory_budget,
    )
    with _scheduler(args.scheduler):
        if args.command == "sample":
            out = _open(args.like, args.var, args.chunks).diffusion.sample(model, args.n, **common)
        elif args.command == "interpolate":
            out = _open(args.data, args.var, args.chunks).diffusion.interpolate(
                model, args.n, method=args.method, guidance_weight=args.guidance_weight, **common
            )
        elif args.command == "forecast":
            out = _open(args.data, args.var, args.chunks).diffusion.forecast(
                model, args.lead, args.n, context=args.context, **common
            )
        else:
            out = _open(args.data, args.var, args.chunks).diffusion.downscale(
                model, args.n, factor=args.factor, project=not args.no_project, **common
            )
        job = {k: v for k, v in vars(args).items() if k not in ("quiet", "scheduler")}
        _write(out, args.out, job=job, progress=not args.quiet)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
