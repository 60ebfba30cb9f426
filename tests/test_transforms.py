"""Tests for xdiffusion.transforms: fixed transforms and the learned h_ω (eq. 4.13–4.15)."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

from xdiffusion.transforms import (
    Identity,
    LearnedMonotone,
    Log1p,
    Sqrt,
    Transform,
    get_transform,
    register_transform,
)

FIXED = [Identity(), Sqrt(), Log1p(), Log1p(scale=0.1)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The CI box has 2 shared cores; intra-op threads only contend on these small ops."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@register_transform
class _Cbrt(Transform):
    """A user transform relying on the base-class autograd log-det."""

    name = "test_cbrt"
    lower = 0.0

    def forward(self, x):
        return x.clamp(min=0.0).pow(1.0 / 3.0)

    def inverse(self, y):
        return y.clamp(min=0.0).pow(3.0)


def _randomise(module: torch.nn.Module, scale: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=gen))


def _autograd_derivative(fn, x: torch.Tensor) -> torch.Tensor:
    """d fn(x)_i / d x_i for an elementwise fn (the Jacobian is diagonal)."""
    xr = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(xr).sum(), xr)
    return g


# -- fixed transforms --------------------------------------------------------------------------


@pytest.mark.parametrize("t", [*FIXED, _Cbrt()], ids=repr)
def test_fixed_round_trip(t):
    x = torch.linspace(0.0, 60.0, 1001, dtype=torch.float64)
    torch.testing.assert_close(t.inverse(t.forward(x)), x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("t", [*FIXED, _Cbrt()], ids=repr)
def test_fixed_log_abs_det_matches_autograd(t):
    x = torch.linspace(0.01, 60.0, 500, dtype=torch.float64)
    expected = _autograd_derivative(t.forward, x).abs().log()
    torch.testing.assert_close(t.log_abs_det(x), expected, rtol=1e-10, atol=1e-10)


def test_sqrt_log_abs_det_floor_at_zero():
    t = Sqrt()
    out = t.log_abs_det(torch.tensor([0.0, 1e-9, 4.0], dtype=torch.float64), eps=1e-6)
    assert torch.isfinite(out).all()
    assert out[0].item() == pytest.approx(-math.log(2 * math.sqrt(1e-6)))
    assert out[1].item() == out[0].item()
    assert out[2].item() == pytest.approx(-math.log(4.0))


def test_fixed_transforms_clip_below_lower_and_stay_monotone():
    for t in (Sqrt(), Log1p()):
        assert t.forward(torch.tensor([-1e-6])).item() == 0.0
        y = torch.linspace(-0.5, 2.0, 101)
        assert (t.inverse(y).diff() >= 0).all()
        assert (t.inverse(y) >= 0).all()


def test_get_transform_names_dicts_instances():
    assert isinstance(get_transform("none"), Identity)
    assert isinstance(get_transform("SQRT"), Sqrt)
    t = get_transform({"name": "log1p", "scale": 0.25})
    assert isinstance(t, Log1p) and t.scale == 0.25
    inst = Sqrt()
    assert get_transform(inst) is inst
    assert isinstance(get_transform({"name": "test_cbrt"}), _Cbrt)


@pytest.mark.parametrize("t", [*FIXED, _Cbrt()], ids=repr)
def test_transform_config_round_trip(t):
    cfg = json.loads(json.dumps(t.to_config()))
    assert cfg["name"] == t.name
    again = get_transform(cfg)
    assert type(again) is type(t) and again == t
    x = torch.linspace(0, 10, 11)
    assert torch.equal(again.forward(x), t.forward(x))


def test_get_transform_errors():
    with pytest.raises(ValueError, match=r"'log1p'.*'none'.*'sqrt'"):
        get_transform("cuberoot")
    with pytest.raises(ValueError, match="name"):
        get_transform({"scale": 1.0})
    with pytest.raises(ValueError, match="invalid parameters"):
        get_transform({"name": "sqrt", "power": 2})
    with pytest.raises(ValueError, match="scale"):
        get_transform({"name": "log1p", "scale": 0.0})
    for bad in (3, None, 1.5, ["sqrt"]):
        with pytest.raises(TypeError, match="transform must be"):
            get_transform(bad)
    with pytest.raises(TypeError):
        register_transform(int)


def test_validate_lower_bound():
    Sqrt().validate(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="lower bound"):
        Sqrt().validate(torch.tensor([-0.1, 1.0]), name="precip")
    with pytest.raises(ValueError, match="NaN"):
        Identity().validate(torch.tensor([float("nan")]))


# -- learned monotone h_ω ----------------------------------------------------------------------

SCALES = [(0.0, 0), (1.0, 1), (5.0, 2), (30.0, 3)]  # (raw-parameter scale, seed); 0 = init


def _learned(scale: float, seed: int) -> LearnedMonotone:
    m = LearnedMonotone()
    if scale:
        _randomise(m, scale, seed)
    return m


@pytest.mark.parametrize(("scale", "seed"), SCALES)
def test_learned_ends_monotone_and_min_gradient(scale, seed):
    m = _learned(scale, seed)
    ends = m(torch.tensor([-1.0, 1.0]))
    assert ends.tolist() == [-1.0, 1.0]
    ends64 = m(torch.tensor([-1.0, 1.0], dtype=torch.float64))
    assert ends64.tolist() == [-1.0, 1.0]
    # also when the ends sit inside a large batch (different GEMM blocking)
    big = torch.cat([torch.tensor([-1.0]), torch.rand(5000) * 2 - 1, torch.tensor([1.0])])
    hb = m(big)
    assert hb[0].item() == -1.0 and hb[-1].item() == 1.0
    x = torch.linspace(-1, 1, 20001, dtype=torch.float64)
    h = m(x)
    assert (h.diff() > 0).all()
    assert h.min() >= -1 and h.max() <= 1
    d = m.derivative(x)
    bound = m.min_grad / (1 + m.min_grad)
    assert d.min().item() > bound
    torch.testing.assert_close(m.log_derivative(x), d.log())


def test_learned_init_close_to_identity_and_deterministic():
    x, h = LearnedMonotone().curve(201)
    assert x.shape == h.shape == (201,)
    assert x[0].item() == -1.0 and x[-1].item() == 1.0
    assert (h - x).abs().max().item() < 0.05
    torch.manual_seed(123)
    a = LearnedMonotone()
    torch.manual_seed(456)
    b = LearnedMonotone()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


@pytest.mark.parametrize(("scale", "seed"), SCALES)
def test_learned_derivative_matches_autograd(scale, seed):
    m = _learned(scale, seed).double()
    x = torch.rand(2000, dtype=torch.float64) * 1.998 - 0.999
    expected = _autograd_derivative(m, x)
    torch.testing.assert_close(m.derivative(x), expected, rtol=1e-9, atol=1e-12)


def test_learned_derivative_differentiable_in_params():
    m = LearnedMonotone()
    x = torch.rand(4, 10) * 2 - 1
    m.penalty(x, torch.ones_like(x, dtype=torch.bool)).sum().backward()
    grads = [p.grad for p in m.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0


@pytest.mark.parametrize(("scale", "seed"), [(0.0, 0), (5.0, 4)])
def test_penalty_equals_brute_force(scale, seed):
    m = _learned(scale, seed).double()
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 2, 4, 5, generator=gen, dtype=torch.float64) * 2 - 1
    mask = torch.rand(x.shape, generator=gen) > 0.4
    got = m.penalty(x, mask)
    assert got.shape == (3,)
    expected = []
    for b in range(x.shape[0]):
        total = 0.0
        for xi, mi in zip(x[b].reshape(-1), mask[b].reshape(-1)):
            if mi:
                d = _autograd_derivative(m, xi.reshape(1))
                total -= math.log(d.item())
        expected.append(total)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))


def test_penalty_input_errors():
    m = LearnedMonotone()
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="mask shape"):
        m.penalty(x, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        m.penalty(x, torch.ones(2, 3))


def _count_u(m: LearnedMonotone) -> list[int]:
    calls: list[int] = []
    orig = m._u

    def counted(x, weights, grad):
        calls.append(x.numel() if grad else 0)
        return orig(x, weights, grad)

    m._u = counted
    return calls


@pytest.mark.parametrize(
    ("scale", "seed", "n"), [(0.0, 0, 10**5), (1.0, 1, 10**5), (5.0, 2, 10**6), (30.0, 3, 10**5)]
)
def test_learned_inverse_round_trip(scale, seed, n):
    m = _learned(scale, seed)
    gen = torch.Generator().manual_seed(10 + seed)
    x = torch.cat([torch.tensor([-1.0, 1.0]), torch.rand(n, generator=gen) * 2 - 1])
    y = m(x)
    calls = _count_u(m)
    t0 = time.perf_counter()
    xi = m.inverse(y)
    elapsed = time.perf_counter() - t0
    assert xi.dtype == torch.float32 and xi.shape == x.shape
    err = (xi - x).abs().max().item()
    print(f"scale={scale}: max|h^-1(h(x)) - x| = {err:.2e} in {elapsed:.3f} s for {n + 2}")
    assert err <= 1e-5
    assert xi[0].item() == -1.0 and xi[1].item() == 1.0
    # Vectorised cost: about one network pass with derivative over all elements (later
    # Newton iterations touch only unfinished elements) instead of ~20 bisection passes.
    assert sum(calls) <= 1.2 * (n + 2)


def test_learned_inverse_float64_and_clipping():
    m = _learned(5.0, 7).double()
    x = torch.rand(10000, dtype=torch.float64) * 2 - 1
    assert (m.inverse(m(x)) - x).abs().max().item() < 1e-9
    out = m.inverse(torch.tensor([-3.0, 2.0]))
    assert out.tolist() == [-1.0, 1.0]
    with pytest.raises(ValueError, match="tol"):
        m.inverse(x, tol=0.0)


def test_learned_is_trainable():
    """A few hundred Adam steps fit a steep concave target (sqrt-like, cf. Figure 4.9)."""
    torch.manual_seed(0)
    m = LearnedMonotone()
    x = torch.linspace(-1, 1, 257)
    target = 2 * ((x + 1) / 2) ** 0.3 - 1
    opt = torch.optim.Adam(m.parameters(), lr=0.03)

    def mse() -> torch.Tensor:
        return (m(x) - target).square().mean()

    start = mse().item()
    for _ in range(300):
        opt.zero_grad()
        loss = mse()
        loss.backward()
        opt.step()
    end = mse().item()
    assert end < 0.05 * start, (start, end)
    assert m(torch.tensor([-1.0, 1.0])).tolist() == [-1.0, 1.0]


def test_learned_constructor_errors():
    with pytest.raises(ValueError, match="hidden"):
        LearnedMonotone(hidden=0)
    with pytest.raises(ValueError, match="min_grad"):
        LearnedMonotone(min_grad=0.0)


def test_learned_transform_has_its_own_learning_rate():
    """h_ω trains at ``transform_lr_scale`` × lr: Adam's first steps move it ~that much more."""
    from conftest import make_series

    from xdiffusion.training import TrainConfig, param_groups

    da = make_series(nt=60)
    fit = dict(frames=4, steps=3, batch_size=2, transform="learned", warmup=1, lr=1e-3)
    fit.update(progress=False, device="cpu", net={"width": 8, "mults": [1, 2]}, val_fraction=0)
    init = {k: v.clone() for k, v in LearnedMonotone().state_dict().items()}

    def moved(scale: float) -> float:
        model = da.diffusion.fit(transform_lr_scale=scale, **fit)
        state = model.codec[0].learned.state_dict()
        return sum(float((state[k] - init[k]).abs().sum()) for k in init)

    slow, fast = moved(1.0), moved(10.0)
    assert slow > 0 and 5 < fast / slow < 15, (slow, fast)

    model = da.diffusion.fit(**fit)
    module = model.module.requires_grad_(True)  # the fitted module is the frozen EMA copy
    groups = param_groups(module, 10.0)
    assert [g["lr_scale"] for g in groups] == [1.0, 10.0]
    n_learned = sum(p.numel() for p in module.codec.parameters())
    assert sum(p.numel() for p in groups[1]["params"]) == n_learned
    assert len(param_groups(module.net, 10.0)) == 1  # no learned transform: one group
    assert model.config["training"]["transform_lr_scale"] == 10.0
    for bad in (0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="transform_lr_scale"):
            TrainConfig(transform_lr_scale=bad)
