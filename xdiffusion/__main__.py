"""``python -m xdiffusion``: the command line (also what ``torchrun -m xdiffusion`` runs)."""

from xdiffusion.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
