"""The tensor engine: units of work compose, noise keys are absolute, no xarray below it."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import torch

from xdiffusion.codec import Codec, VariableCodec
from xdiffusion.core.schedule import CosineSchedule
from xdiffusion.engine import Engine, Window, WorkUnit, member_units
from xdiffusion.nets import UNet3D, unet_config
from xdiffusion.settings import resolve_sampling

PACKAGE = Path(__file__).resolve().parents[1] / "xdiffusion"
FRAMES, GRID = 4, 8


@pytest.fixture(scope="module")
def engine() -> Engine:
    torch.manual_seed(0)
    net = UNet3D(unet_config(preset="small", channels=1, width=8, mults=[1, 2])).eval()
    net.requires_grad_(False)
    codec = Codec([VariableCodec.fit(0.0, 10.0, "sqrt")])
    valid = torch.ones(1, GRID, GRID, dtype=torch.bool)
    return Engine(net, codec, CosineSchedule(), FRAMES, valid, torch.device("cpu"))


SAMPLE = resolve_sampling("sample", steps=2)
FILL = resolve_sampling("interpolate", steps=2)


def _gappy(t: int = 14):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, t, GRID, GRID, generator=g) * 2 - 1
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[:, 2:3] = False  # a short gap: centred window
    mask[:, 9:] = False  # a long one at the end: autoregressive
    return x, mask


def test_completion_keeps_known_and_fills_every_window(engine):
    x, mask = _gappy()
    plan = engine.plan(mask)
    assert plan[0].start < 2 < plan[0].stop  # the short gap sees both of its ends
    assert plan[-1].stop == 14 and all(w.length == FRAMES for w in plan)
    out = engine.complete(x, mask, FILL, n=2, seed=3)
    assert out.shape == (2, *x.shape)
    assert torch.equal(out[:, mask], x[mask].expand(2, -1))
    assert bool(torch.isfinite(out).all())
    assert not torch.equal(out[0], out[1])  # members differ


def test_units_compose_over_members_and_windows(engine):
    """Splitting a task into (window range × member range) units changes no number."""
    x, mask = _gappy()
    plan = engine.plan(mask)
    whole = engine.complete(x, mask, FILL, n=3, seed=3)
    split_members = torch.cat(
        [
            engine.run(WorkUnit(range(len(plan)), range(0, 1)), plan, x, mask, FILL, seed=3),
            engine.run(WorkUnit(range(len(plan)), range(1, 3)), plan, x, mask, FILL, seed=3),
        ]
    )
    assert torch.equal(split_members, whole)
    k = 2  # first k windows, then the rest fed with their output
    first = engine.run(WorkUnit(range(k), range(3)), plan, x, mask, FILL, seed=3)
    rest = engine.run(WorkUnit(range(k, len(plan)), range(3)), plan, first, mask, FILL, seed=3)
    assert torch.equal(rest, whole)
    assert member_units(5, 7, 3) == [
        WorkUnit(range(5), range(0, 3)),
        WorkUnit(range(5), range(3, 6)),
        WorkUnit(range(5), range(6, 7)),
    ]


def test_noise_is_keyed_by_absolute_time(engine):
    """A window's noise depends on (seed, member, time position): an archive chunk run with
    its ``time_offset`` reproduces the same frames of the whole series."""
    settings = resolve_sampling("downscale", steps=2)
    g = torch.Generator().manual_seed(2)
    y = torch.rand(1, 8, GRID // 2, GRID // 2, generator=g) * 4
    whole = engine.downscale(y, 2, settings, n=2, seed=5)
    assert [w.start for w in engine.tiles(8)] == [0, 4]
    second = engine.downscale(y[:, 4:], 2, settings, n=2, seed=5, time_offset=4)
    assert torch.equal(second, whole[:, :, 4:])
    shifted = engine.downscale(y[:, 4:], 2, settings, n=2, seed=5)
    assert not torch.equal(shifted, whole[:, :, 4:])
    # member 1 alone (batch of one) is member 1 of the ensemble
    one = engine.downscale_unit(
        WorkUnit(range(2), range(1, 2)), engine.tiles(8), y, 2, settings, seed=5
    )
    assert torch.equal(one, whole[1:])


def test_unconditional_series_longer_than_a_window(engine):
    x = torch.zeros(1, 9, GRID, GRID)
    mask = torch.zeros_like(x, dtype=torch.bool)
    plan = engine.plan(mask, context=2)
    assert plan == [Window(0, 4), Window(2, 4), Window(4, 4), Window(5, 4)]
    out = engine.complete(x, mask, SAMPLE, n=1, seed=0, context=2)
    assert out.shape == (1, 1, 9, GRID, GRID) and bool(torch.isfinite(out).all())
    with pytest.raises(ValueError, match="context"):
        engine.plan(mask, context=FRAMES)


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _module_files() -> dict[str, Path]:
    out = {}
    for p in PACKAGE.rglob("*.py"):
        rel = p.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts)
        out[name.removesuffix(".__init__")] = p
    return out


def _internal_edges() -> dict[str, set[str]]:
    files = _module_files()
    edges = {}
    for name, path in files.items():
        deps = set()
        for imp in _imports(path):
            while imp and imp not in files:
                imp = imp.rpartition(".")[0]
            if imp and imp != name and imp != "xdiffusion" and not name.startswith(imp + "."):
                deps.add(imp)
        edges[name] = deps
    return edges


def test_package_has_no_import_cycle():
    """Imports point downwards only (function-level imports counted)."""
    edges = _internal_edges()
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in edges[m]:
            if state.get(d) == 1:
                cycle = [*path[path.index(d) :], d] if d in path else [m, d]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d, [*path, d])
        state[m] = 2

    sys.setrecursionlimit(10_000)
    for m in edges:
        if m not in state:
            visit(m, [m])


@pytest.mark.parametrize(
    "module",
    [
        "xdiffusion.engine",
        "xdiffusion.codec",
        "xdiffusion.settings",
        "xdiffusion.core",
        "xdiffusion.nets",
        "xdiffusion.accel",
    ],
)
def test_tensor_layers_never_reach_xarray(module):
    """The engine, codec, settings, core/ and nets/ import no xarray, directly or through
    another xdiffusion module."""
    files, edges = _module_files(), _internal_edges()
    todo = [m for m in files if m == module or m.startswith(module + ".")]
    seen = set()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        bad = {i for i in _imports(files[m]) if i.split(".")[0] in ("xarray", "cf_xarray")}
        assert not bad, f"{m} imports {bad}"
        todo.extend(edges[m])
