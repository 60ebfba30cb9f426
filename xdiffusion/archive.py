"""Writing lazy results to zarr region by region, resumable after a kill.

The store is created up front (metadata, coordinates and every non-dask variable), then the
dask-backed variables are computed and written region by region: a region is a time chunk ×
member block of the result's own chunks. Several regions are in flight at once when the
scheduler has several workers (a ``dask.distributed`` client, or the processes scheduler):
regions are independent, and one region is usually a single chain of engine tasks, so
without that a cluster would run one worker at a time. After each region a progress record
(``.xdiffusion-progress.json`` in the store, replaced atomically) lists the finished ones,
so the same call on the same store after a crash or SIGKILL skips them and finishes with a
store identical to an uninterrupted run (generation is deterministic; see
:mod:`xdiffusion.lazy`). The record also holds a fingerprint of the job, so a store written
by another job is never resumed silently.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from itertools import pairwise
from pathlib import Path
from typing import Any

import dask
import dask.array as dsa
import numpy as np
import xarray as xr
from dask.core import get_dependencies
from tqdm.auto import tqdm

from xdiffusion.io.cf import metadata_variables, to_dataset
from xdiffusion.lazy import WORK_PREFIX

__all__ = ["PROGRESS", "default_concurrency", "regions", "units", "write_zarr"]

PROGRESS = ".xdiffusion-progress.json"


def regions(ds: xr.Dataset, dims: tuple[str, ...] = ("realization", "time")) -> list[dict]:
    """The result's chunks along ``dims`` as region dicts ``{dim: slice}``, in order."""
    chunks = {d: ds.chunks[d] for d in dims if d in ds.dims and d in (ds.chunks or {})}
    if not chunks:
        return [{}]
    out = [{}]
    for d, sizes in chunks.items():
        bounds = np.cumsum([0, *sizes])
        out = [{**r, d: slice(int(a), int(b))} for r in out for a, b in pairwise(bounds)]
    return out


def default_concurrency() -> int:
    """Regions to compute at once under the active dask scheduler.

    The total worker threads of a ``dask.distributed`` client (the default client, as set
    by ``with Client(...)``), the ``num_workers`` setting (default: the CPU count) for the
    processes scheduler, and 1 for the threaded and synchronous schedulers, whose
    parallelism is torch's own threads inside a region (running regions side by side there
    would oversubscribe the cores).
    """
    try:
        from distributed import default_client

        client = default_client()
    except (ImportError, ValueError):
        client = None
    if client is not None and dask.config.get("scheduler", None) in (None, "dask.distributed"):
        return max(1, sum(client.nthreads().values()))
    if dask.config.get("scheduler", None) in ("processes", "multiprocessing"):
        return max(1, dask.config.get("num_workers", None) or os.cpu_count() or 1)
    return 1


def _key(region: Mapping[str, slice]) -> str:
    return ",".join(f"{d}={s.start}:{s.stop}" for d, s in region.items())


def units(ds: xr.Dataset, todo: list[dict]) -> list[list[dict]]:
    """Group regions that share generation tasks, in order.

    A forecast's or long sample's windows form a chain along time, so the region of a later
    time chunk needs the network tasks of the earlier ones; gap filling shares a task
    between two chunks where a gap straddles them. Computing such regions separately would
    run those tasks again for every region, so regions sharing any task keyed
    :data:`~xdiffusion.lazy.WORK_PREFIX` are computed together (one graph, each task once).
    Downscaling regions share nothing and stay separate.
    """
    parent = list(range(len(todo)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict = {}
    for v in ds.data_vars.values():
        arr = v.data
        dsk = dict(arr.__dask_graph__())
        keys = np.empty(arr.numblocks, dtype=object)
        for index in np.ndindex(*arr.numblocks):
            keys[index] = (arr.name, *index)
        starts = {d: np.cumsum([0, *arr.chunks[i]]) for i, d in enumerate(v.dims)}
        for i, region in enumerate(todo):
            sel = tuple(
                int(np.searchsorted(starts[d], region[d].start)) if d in region else slice(None)
                for d in v.dims
            )
            stack, seen = list(np.atleast_1d(keys[sel]).ravel()), set()
            while stack:
                k = stack.pop()
                if k in seen or k not in dsk:
                    continue
                seen.add(k)
                if isinstance(k, str) and k.startswith(WORK_PREFIX):
                    if k in owner:  # its ancestors were walked from the owner's region
                        parent[find(i)] = find(owner[k])
                        continue
                    owner[k] = i
                stack.extend(get_dependencies(dsk, k))
    groups: dict[int, list[dict]] = {}
    for i, region in enumerate(todo):
        groups.setdefault(find(i), []).append(region)
    return list(groups.values())


def _box(unit: list[dict]) -> dict | None:
    """The region covering ``unit`` if the unit fills it exactly (contiguous), else None."""
    dims = list(unit[0])
    box = {d: slice(min(r[d].start for r in unit), max(r[d].stop for r in unit)) for d in dims}

    def size(region: dict) -> int:
        return int(np.prod([s.stop - s.start for s in region.values()]))

    return box if size(box) == sum(size(r) for r in unit) else None


def _take(it, k: int) -> list:
    return [r for _, r in zip(range(k), it, strict=False)]


def _fingerprint(ds: xr.Dataset, job: Mapping[str, Any]) -> str:
    desc = {
        "job": {k: str(v) for k, v in job.items()},
        "vars": {k: [list(v.dims), list(v.shape), str(v.dtype)] for k, v in ds.variables.items()},
    }
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()


def _read_progress(store: Path) -> dict | None:
    try:
        return json.loads((store / PROGRESS).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_progress(store: Path, record: dict) -> None:
    tmp = store / f"{PROGRESS}.tmp"
    tmp.write_text(json.dumps(record))
    os.replace(tmp, store / PROGRESS)


def write_zarr(
    obj: xr.DataArray | xr.Dataset,
    store: str | os.PathLike,
    *,
    job: Mapping[str, Any] | None = None,
    progress: bool = True,
    concurrency: int | None = None,
) -> dict[str, int]:
    """Write ``obj`` to a local zarr ``store`` region by region, resuming finished regions.

    Parameters
    ----------
    obj
        The (usually dask-backed) result of a generating method.
    store
        Directory of the zarr store. If it holds a progress record of the same job, its
        finished regions are skipped; a store of another job, or any other existing path,
        is refused.
    job
        What defines the job (the command's arguments); part of the fingerprint.
    progress
        A progress bar over regions.
    concurrency
        Regions computed at once; default :func:`default_concurrency`. The values do not
        depend on it (each region is computed the same way whatever runs beside it).

    Returns
    -------
    dict
        ``{"regions": total, "written": written now, "skipped": finished before}``.
    """
    workers = default_concurrency() if concurrency is None else concurrency
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"concurrency must be an integer ≥ 1 or None, got {concurrency!r}")
    ds = to_dataset(obj)
    # coordinates, bounds and grid mappings are small and describe the store: written up
    # front with the metadata (lazy ones would stay unwritten, and region writers decode
    # the store's time bounds)
    small = [k for k in {*map(str, ds.coords), *metadata_variables(ds)} if k not in ds.dims]
    small = [k for k in small if isinstance(ds[k].data, dsa.Array)]
    if small:
        ds = ds.assign({k: ds[k].compute() for k in small if k in ds.data_vars})
        ds = ds.assign_coords({k: ds[k].compute() for k in small if k in ds.coords})
    store = Path(store)
    fp = _fingerprint(ds, job or {})
    record = _read_progress(store) if store.exists() else None
    if store.exists() and record is None:
        raise ValueError(
            f"{str(store)!r} exists and is not an unfinished xdiffusion job: remove it or "
            "choose another --out"
        )
    if record is not None and record.get("fingerprint") != fp:
        raise ValueError(
            f"{str(store)!r} holds the output of another job (different arguments or "
            "inputs); remove it or choose another --out to start afresh"
        )
    lazy = [k for k, v in ds.data_vars.items() if isinstance(v.data, dsa.Array)]
    if record is None:
        ds.to_zarr(store, mode="w", compute=False)  # metadata + eager variables now
        record = {"fingerprint": fp, "done": []}
        _write_progress(store, record)
    done = set(record["done"])
    todo = regions(ds[lazy]) if lazy else []
    pending = [r for r in todo if _key(r) not in done]
    skipped = len(todo) - len(pending)
    lock = threading.Lock()

    def write(unit: list[dict]) -> None:
        # one to_zarr per unit: dask renames a store graph's keys per call, so tasks shared
        # by separately stored regions would run once per region
        box = _box(unit)
        for region in [box] if box is not None else unit:
            part = ds[lazy].isel(region)
            drop = [c for c in part.coords if not set(region) & set(part[c].dims)]
            # metadata was written (and consolidated) up front; region writers running side
            # by side must not rewrite it
            part.drop_vars(drop).to_zarr(store, region=region, mode="r+", consolidated=False)
        with lock:  # units finish in any order; the record lists each region once on disk
            done.update(_key(r) for r in unit)
            record["done"] = sorted(done)
            _write_progress(store, record)

    work = units(ds[lazy], pending) if pending else []
    bar = tqdm(total=len(todo), initial=skipped, disable=not progress, desc="regions")
    try:
        if workers == 1:
            for unit in work:
                write(unit)
                bar.update(len(unit))
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                queue = iter(work)
                running = {pool.submit(write, u): len(u) for u in _take(queue, workers)}
                while running:
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for f in finished:
                        f.result()  # a failed unit stops the job; finished ones are kept
                        bar.update(running.pop(f))
                    for u in _take(queue, len(finished)):
                        running[pool.submit(write, u)] = len(u)
    finally:
        bar.close()
    record["complete"] = True
    _write_progress(store, record)
    return {"regions": len(todo), "written": len(todo) - skipped, "skipped": skipped}
