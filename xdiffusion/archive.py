"""Writing lazy results to zarr region by region, resumable after a kill.

The store is created up front (metadata, coordinates and every non-dask variable), then the
dask-backed variables are computed and written one region at a time: a region is a time
chunk × member block of the result's own chunks. After each region a progress record
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
from collections.abc import Mapping
from itertools import pairwise
from pathlib import Path
from typing import Any

import dask.array as dsa
import numpy as np
import xarray as xr
from tqdm.auto import tqdm

__all__ = ["PROGRESS", "regions", "write_zarr"]

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


def _key(region: Mapping[str, slice]) -> str:
    return ",".join(f"{d}={s.start}:{s.stop}" for d, s in region.items())


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

    Returns
    -------
    dict
        ``{"regions": total, "written": written now, "skipped": finished before}``.
    """
    ds = obj.to_dataset() if isinstance(obj, xr.DataArray) else obj
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
    skipped = 0
    for region in tqdm(todo, disable=not progress, desc="regions"):
        key = _key(region)
        if key in done:
            skipped += 1
            continue
        part = ds[lazy].isel(region)
        drop = [c for c in part.coords if not set(region) & set(part[c].dims)]
        part.drop_vars(drop).to_zarr(store, region=region, mode="r+")
        done.add(key)
        record["done"] = sorted(done)
        _write_progress(store, record)
    record["complete"] = True
    _write_progress(store, record)
    return {"regions": len(todo), "written": len(todo) - skipped, "skipped": skipped}
