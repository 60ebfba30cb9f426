"""What a model knows of its training data: variables, grid, time step.

A :class:`DataSpec` is recorded in the model's ``config.json`` (key ``data``) at fit time
and read back at generation time, when inputs and templates are checked against it
(converted, reordered or refused) so that a model never fills a template with numbers in
other units, on other rows, another region or another time step. No torch here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["DataSpec", "GridSpec", "VariableSpec"]

#: Attributes recorded per variable.
VARIABLE_ATTRS = ("units", "standard_name", "long_name")


@dataclass(frozen=True)
class VariableSpec:
    """One variable: its name and CF description (None where the data had none)."""

    name: str
    units: str | None = None
    standard_name: str | None = None
    long_name: str | None = None

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, **{k: getattr(self, k) for k in VARIABLE_ATTRS}}

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> VariableSpec:
        return cls(str(cfg["name"]), **{k: cfg.get(k) for k in VARIABLE_ATTRS})

    @classmethod
    def from_array(cls, name: str, da: xr.DataArray) -> VariableSpec:
        attrs = {k: da.attrs.get(k) for k in VARIABLE_ATTRS}
        return cls(name, **{k: (str(v) if v is not None else None) for k, v in attrs.items()})


@dataclass(frozen=True)
class GridSpec:
    """The training grid: names and 1-D values of its Y and X coordinates (None if the data
    had no coordinate on that dimension), with their attrs."""

    y_name: str
    x_name: str
    y: np.ndarray | None = None
    x: np.ndarray | None = None
    y_attrs: dict[str, Any] = field(default_factory=dict)
    x_attrs: dict[str, Any] = field(default_factory=dict)

    def to_config(self) -> dict[str, Any]:
        def values(v: np.ndarray | None) -> list[float] | None:
            return None if v is None else [float(a) for a in np.asarray(v, dtype=float)]

        return {
            "y_name": self.y_name,
            "x_name": self.x_name,
            "y": values(self.y),
            "x": values(self.x),
            "y_attrs": _jsonable(self.y_attrs),
            "x_attrs": _jsonable(self.x_attrs),
        }

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> GridSpec:
        def values(v: list | None) -> np.ndarray | None:
            return None if v is None else np.asarray(v, dtype=float)

        return cls(
            str(cfg["y_name"]),
            str(cfg["x_name"]),
            values(cfg.get("y")),
            values(cfg.get("x")),
            dict(cfg.get("y_attrs") or {}),
            dict(cfg.get("x_attrs") or {}),
        )

    @classmethod
    def from_array(cls, da: xr.DataArray, y_name: str, x_name: str) -> GridSpec:
        def coord(name: str) -> tuple[np.ndarray | None, dict]:
            if name in da.coords and da[name].dims == (name,):
                c = da[name]
                if np.issubdtype(c.dtype, np.number):
                    return np.asarray(c.values, dtype=float), dict(c.attrs)
            return None, {}

        (y, ya), (x, xa) = coord(y_name), coord(x_name)
        return cls(y_name, x_name, y, x, ya, xa)

    def crop(self, ys: slice, xs: slice) -> GridSpec:
        """The sub-region of rows ``ys`` and columns ``xs`` (generation on a sub-region)."""
        return replace(
            self,
            y=None if self.y is None else self.y[ys],
            x=None if self.x is None else self.x[xs],
        )


@dataclass(frozen=True)
class DataSpec:
    """Variables, grid and time step of the training data.

    ``time_step`` is the serialised form of the data's time step (see
    :mod:`xdiffusion.io.calendar`), or None when the data had no time coordinate.
    """

    variables: tuple[VariableSpec, ...]
    grid: GridSpec | None = None
    time_step: dict[str, Any] | None = None

    def to_config(self) -> dict[str, Any]:
        return {
            "variables": [v.to_config() for v in self.variables],
            "grid": self.grid.to_config() if self.grid is not None else None,
            "time_step": self.time_step,
        }

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None, variables: list[Mapping] | None = None):
        """Read ``config["data"]``; models written before it existed give a spec of their
        variables' recorded attrs only (no grid, no time step), or None."""
        if cfg is None:
            if not variables:
                return None
            return cls(
                tuple(
                    VariableSpec.from_config({"name": v["name"], **(v.get("attrs") or {})})
                    for v in variables
                )
            )
        grid = cfg.get("grid")
        return cls(
            tuple(VariableSpec.from_config(v) for v in cfg["variables"]),
            GridSpec.from_config(grid) if grid is not None else None,
            cfg.get("time_step"),
        )

    def crop(self, ys: slice, xs: slice) -> DataSpec:
        """This spec with its grid cropped to rows ``ys`` and columns ``xs``."""
        return replace(self, grid=None if self.grid is None else self.grid.crop(ys, xs))


def _jsonable(attrs: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in attrs.items():
        if isinstance(v, np.generic):
            v = v.item()
        elif isinstance(v, np.ndarray):
            v = v.tolist()
        if isinstance(v, str | int | float | bool | list) or v is None:
            out[str(k)] = v
    return out
