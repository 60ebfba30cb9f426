"""Fit a small model on synthetic precipitation, draw an ensemble and evaluate it.

Run: python examples/ensemble.py [--steps 300] [--out example-out]
"""

import argparse
from pathlib import Path

import xdiffusion as xd
from xdiffusion.datasets import synthetic_precipitation


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", default="example-out")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(exist_ok=True)

    pr = synthetic_precipitation(nt=1500, ny=32, nx=32, seed=0)
    train, test = pr.isel(time=slice(0, 1200)), pr.isel(time=slice(1200, None))
    model = train.diffusion.fit(frames=8, transform="sqrt", steps=args.steps, batch_size=8, seed=0)
    print(model)
    model.save(out / "model")

    ens = test.isel(time=slice(0, 16)).diffusion.sample(xd.load(out / "model"), n=4, seed=1)
    ens.to_dataset().to_netcdf(out / "ensemble.nc")
    report = ens.diffusion.evaluate(test)
    for name in ("psd_log_error", "qq_relative_error", "mean_abs_mean_normalised_bias"):
        print(f"{name}: {float(report[name]):.3f}")


if __name__ == "__main__":
    main()
