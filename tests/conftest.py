import dask
import numpy as np
import pytest
import torch
import xarray as xr

# Tiny test networks run faster on one thread than split across two.
torch.set_num_threads(1)

TINY_NET = {"width": 8, "mults": [1, 2]}


class CountingScheduler:
    """A dask scheduler that counts computes and can forbid more than ``max_computes``."""

    def __init__(self, max_computes: int = 0):
        self.total = 0
        self.max_computes = max_computes

    def __call__(self, dsk, keys, **kwargs):
        self.total += 1
        if self.total > self.max_computes:
            raise RuntimeError(f"too many dask computes: {self.total} > {self.max_computes}")
        return dask.get(dsk, keys, **kwargs)


def make_series(nt=120, ny=16, nx=16, seed=0, calendar="standard"):
    from xdiffusion.datasets import synthetic_precipitation

    return synthetic_precipitation(nt=nt, ny=ny, nx=nx, seed=seed, calendar=calendar)


def with_static_nan(block: tuple[slice, slice], da: xr.DataArray) -> xr.DataArray:
    """``da`` with NaN in the cells ``block`` (rows, columns) at every time step: cells a
    model learns as permanently missing."""
    v = da.values.copy()
    v[:, block[0], block[1]] = np.nan
    return da.copy(data=v)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's bit-for-bit comparisons, restored afterwards (a test
    elsewhere may change the count)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_model():
    """A tiny model fitted once for the API tests (seconds on a CPU)."""
    da = make_series()
    return da.diffusion.fit(
        frames=4,
        steps=6,
        batch_size=2,
        progress=False,
        device="cpu",
        net=TINY_NET,
        sampling_steps=3,
    )


@pytest.fixture(scope="session")
def series():
    """Shared by many tests: read-only, so that a test writing into it fails loudly."""
    da = make_series()
    da.values.flags.writeable = False
    return da


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def as_dataset(da: xr.DataArray) -> xr.Dataset:
    return da.to_dataset()


def cf_high_failures(path, tmp_path):
    """compliance-checker cf:1.8 on a written file: (failed high-priority checks, report).

    Skips the test when compliance-checker is not installed.
    """
    import json

    pytest.importorskip("compliance_checker")
    from compliance_checker.runner import CheckSuite, ComplianceChecker

    CheckSuite.load_all_available_checkers()
    report = tmp_path / f"{path.stem}-cf.json"
    ComplianceChecker.run_checker(
        str(path),
        checker_names=["cf:1.8"],
        verbose=0,
        criteria="normal",
        output_filename=str(report),
        output_format="json",
    )
    result = json.loads(report.read_text())["cf:1.8"]
    failed = [
        (c["name"], c["msgs"])
        for c in result.get("high_priorities", [])
        if c["value"][0] < c["value"][1]
    ]
    return failed, result
