"""GPU readiness (issue 16): torch.compile, channels-last, pinned copies; CPU unchanged."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from conftest import TINY_NET, make_series

from xdiffusion import accel, fitting
from xdiffusion.cli import build_parser
from xdiffusion.nets import UNet3D, unet_config

FIT = dict(frames=4, steps=2, batch_size=2, progress=False, device="cpu", net=TINY_NET)
#: torch.compile on the CPU builds C++ kernels: over a minute on a 2-core machine.
RUN_COMPILE = os.environ.get("XDIFFUSION_TEST_COMPILE") == "1"
COMPILE_SKIP = (
    "torch.compile of the tiny network takes over 60 s on a small CPU (C++ kernel builds); "
    "set XDIFFUSION_TEST_COMPILE=1 to run it"
)
CUDA = torch.device("cuda")
CPU = torch.device("cpu")


# bit-for-bit comparisons on one torch thread (the fixture is in conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    return make_series(nt=40)


def _forbid(*_args, **_kwargs):
    raise AssertionError("a CUDA-only path was taken on the CPU")


def test_default_fit_equals_explicit_compile_false_and_takes_no_gpu_path(data, monkeypatch):
    """The defaults: no compile, no pinning, no channels-last conversion on the CPU."""
    monkeypatch.setattr(fitting, "compile_network", _forbid)
    monkeypatch.setattr(torch.Tensor, "pin_memory", _forbid)
    monkeypatch.setattr(torch, "compile", _forbid)
    formats = []
    real = accel.memory_format_for

    def spy(tensor, device):
        formats.append(real(tensor, device))
        return formats[-1]

    monkeypatch.setattr(accel, "memory_format_for", spy)
    a = data.diffusion.fit(**FIT)
    b = data.diffusion.fit(**FIT, compile=False)
    assert a.history_dict["loss"] == b.history_dict["loss"]
    assert a.config["training"]["compile"] is False
    for (ka, va), (kb, vb) in zip(a.module.state_dict().items(), b.module.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    # CPU weights stay in the default (contiguous) layout
    assert all(p.is_contiguous() for p in a.module.parameters())
    assert formats == []  # apply_memory_format never asked for a format on the CPU
    assert not a.compiled


def test_transfer_options_pin_on_cuda_only():
    assert accel.transfer_options(CPU) == (False, False)
    assert accel.transfer_options(CUDA) == (True, True)
    assert accel.transfer_options(torch.device("cuda", 1)) == (True, True)


def test_to_device_cpu_is_a_plain_copy(monkeypatch):
    monkeypatch.setattr(torch.Tensor, "pin_memory", _forbid)
    x = torch.arange(6.0)
    assert accel.to_device(x, CPU) is x  # .to on the same device returns the tensor


def test_to_device_pins_and_copies_non_blocking_on_cuda(monkeypatch):
    """Fake CUDA: the pinning decision and the copy's arguments, without a GPU."""
    calls = []

    def fake_pin(self):
        calls.append("pin")
        return self

    def fake_to(self, device, non_blocking=False):
        calls.append(("to", torch.device(device).type, non_blocking))
        return self

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    monkeypatch.setattr(torch.Tensor, "to", fake_to)
    accel.to_device(torch.zeros(3), CUDA)
    assert calls == ["pin", ("to", "cuda", True)]


def test_memory_format_choice():
    w4, w5, w2 = torch.zeros(2, 3, 3, 3), torch.zeros(2, 3, 1, 3, 3), torch.zeros(2, 3)
    assert accel.memory_format_for(w4, CUDA) is torch.channels_last
    assert accel.memory_format_for(w5, CUDA) is torch.channels_last_3d
    assert accel.memory_format_for(w2, CUDA) is None
    assert accel.memory_format_for(w4, CPU) is None


def test_apply_memory_format_channels_last_on_fake_cuda_and_back():
    """The conversion itself runs on CPU tensors; the device only decides the format."""
    net = UNet3D(unet_config(channels=1, **TINY_NET))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    accel.apply_memory_format(net, CUDA)
    convs = [p for p in net.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert any(not p.is_contiguous() for p in convs)  # really converted (3×3 kernels)
    z = torch.randn(1, 1, 4, 16, 16)
    accel.apply_memory_format(net, CPU)  # a GPU-fitted model moved back to the CPU
    assert all(p.is_contiguous() for p in net.parameters())
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])
    fresh = UNet3D(unet_config(channels=1, **TINY_NET))
    fresh.load_state_dict(before)
    with torch.no_grad():
        assert torch.equal(net(z, torch.zeros(1)), fresh(z, torch.zeros(1)))


def test_cpu_batches_are_not_pinned(data, monkeypatch):
    """_Batches on the CPU: plain tensors, no pinning."""
    monkeypatch.setattr(torch.Tensor, "pin_memory", _forbid)
    data.diffusion.fit(**{**FIT, "steps": 1})


def test_compile_unavailable_raises_naming_compile(data, monkeypatch):
    monkeypatch.delattr(torch, "compile")
    with pytest.raises(accel.CompileError, match="compile=True"):
        data.diffusion.fit(**FIT, compile=True)
    with pytest.raises(accel.CompileError, match="compile"):
        accel.compile_network(torch.nn.Linear(2, 2))


def test_compile_failure_at_first_call_is_a_compile_error():
    from torch._dynamo.exc import TorchDynamoException

    class BackendFailed(TorchDynamoException):
        """Stands for BackendCompilerFailed (e.g. no C++ compiler)."""

    def broken(*_args, **_kwargs):
        raise BackendFailed("no compiler")

    wrapped = accel.CompiledNet(torch.nn.Linear(2, 2), broken)
    with pytest.raises(accel.CompileError, match="compile=True"):
        wrapped(torch.zeros(1, 2))
    assert wrapped.in_features == 2  # attributes come from the network


def test_model_compile_switches_the_engine_net(tiny_model, monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda net: net)  # no real compilation here
    try:
        assert tiny_model.compile() is tiny_model and tiny_model.compiled
        net = tiny_model.engine.net
        assert isinstance(net, accel.CompiledNet) and net.net is tiny_model.module.net
        assert net.config == tiny_model.module.net.config
    finally:
        tiny_model.compile(False)
    assert tiny_model.engine.net is tiny_model.module.net


def test_compile_argument_checked(data):
    with pytest.raises(TypeError, match="compile"):
        data.diffusion.fit(**FIT, compile="yes")


def test_cli_fit_has_compile_flag():
    args = build_parser().parse_args(["fit", "in.nc", "--out", "out", "--compile"])
    assert args.compile is True
    assert build_parser().parse_args(["fit", "in.nc", "--out", "out"]).compile is False


@pytest.mark.skipif(not RUN_COMPILE, reason=COMPILE_SKIP)
def test_compiled_fit_and_sampling_close_to_eager(data):
    eager = data.diffusion.fit(**FIT)
    compiled = data.diffusion.fit(**FIT, compile=True)
    assert compiled.config["training"]["compile"] is True
    np.testing.assert_allclose(
        compiled.history_dict["loss"], eager.history_dict["loss"], rtol=1e-3, atol=1e-5
    )
    template = data.isel(time=slice(0, 4))
    a = template.diffusion.sample(eager, n=1, seed=0, steps=2, progress=False)
    b = template.diffusion.sample(eager.compile(), n=1, seed=0, steps=2, progress=False)
    np.testing.assert_allclose(b.values, a.values, rtol=1e-3, atol=1e-3)
