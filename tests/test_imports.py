"""Import costs: the diagnostics, data and IO layers (and ``import xdiffusion``) load no torch.

Each check runs in a fresh interpreter (``sys.executable -c ...``), since this test process
has imported torch long ago.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

TORCH_FREE = (
    "xdiffusion",
    "xdiffusion.diagnostics",
    "xdiffusion.testing",
    "xdiffusion.datasets",
    "xdiffusion.io.cf",
    "xdiffusion.plot",
    "xdiffusion.cli",
)


def run_python(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter on one thread; fail with its stderr if it fails."""
    env_code = "import os; os.environ['OMP_NUM_THREADS'] = '1'\n" + textwrap.dedent(code)
    proc = subprocess.run(
        [sys.executable, "-c", env_code], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_torch_free_modules_do_not_import_torch():
    # one interpreter for all of them (and every module of xdiffusion.io), imported in
    # turn: the first to pull torch in is named
    run_python(
        f"""
        import importlib, pkgutil, sys
        import xdiffusion.io
        io = [f"xdiffusion.io.{{m.name}}" for m in pkgutil.iter_modules(xdiffusion.io.__path__)]
        for name in [*{TORCH_FREE!r}, *io]:
            importlib.import_module(name)
            torch = sorted(m for m in sys.modules if m.split(".")[0] == "torch")
            assert not torch, f"importing {{name}} imported {{torch[:3]}}"
        """
    )


def test_cli_help_does_not_import_torch():
    run_python(
        """
        import contextlib, io, sys
        from xdiffusion.cli import main
        for argv in (["--help"], ["fit", "--help"], ["evaluate", "--help"]):
            with contextlib.redirect_stdout(io.StringIO()) as out:
                try:
                    main(argv)
                except SystemExit as err:
                    assert err.code == 0, (argv, err.code)
            assert "usage:" in out.getvalue(), argv
        assert "torch" not in sys.modules
        """
    )


def test_lazy_top_level_names_and_accessor_after_plain_import():
    run_python(
        """
        import sys
        import numpy as np
        import xarray as xr
        import xdiffusion as xd
        from xdiffusion.datasets import synthetic_precipitation

        assert "torch" not in sys.modules
        assert {"fit", "load", "DiffusionModel", "SamplingSettings"} <= set(dir(xd))
        assert set(xd.__all__) <= set(dir(xd))
        try:
            xd.no_such_name
        except AttributeError as err:
            assert "no_such_name" in str(err)
        else:
            raise AssertionError("xd.no_such_name did not raise")
        assert hasattr(xr.DataArray, "diffusion") and hasattr(xr.Dataset, "diffusion")

        da = synthetic_precipitation(nt=40, ny=8, nx=8, seed=0)
        model = da.diffusion.fit(
            frames=4, steps=2, batch_size=2, progress=False, device="cpu",
            net={"width": 8, "mults": [1, 2]}, sampling_steps=2,
        )
        assert "torch" in sys.modules
        assert isinstance(model, xd.DiffusionModel)
        assert xd.fit.__module__ == "xdiffusion.fitting"
        ens = da.isel(time=slice(0, 4)).diffusion.sample(model, n=2, progress=False)
        assert ens.sizes["realization"] == 2 and np.isfinite(ens.values).all()
        assert "psd_log_error" in ens.diffusion.evaluate(da)
        """
    )
