"""Crash-safe checkpoints: SIGKILL mid-run then resume equals an uninterrupted run, bit for bit."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_series
from safetensors.torch import load_file

import xdiffusion as xd
from xdiffusion import checkpoint as ck

NET = {"width": 8, "mults": [1, 2], "dropout": 0.1}  # dropout: resume must restore the RNG
FIT = dict(frames=4, batch_size=2, progress=False, device="cpu", net=NET, val_every=4)
SMALL = dict(FIT, transform="learned")  # learned h_ω: more trained parameters to restore


# bit-for-bit comparisons on one torch thread (the fixture is in conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def series():
    return make_series(nt=120)


@pytest.fixture(scope="module")
def reference(series):
    """An uninterrupted 12-step run without checkpoints."""
    return xd.fit(series, steps=12, **SMALL)


def assert_same_weights(a: xd.DiffusionModel, b: xd.DiffusionModel) -> None:
    for mod_a, mod_b in ((a.module, b.module), (a.raw_module, b.raw_module)):
        sa, sb = mod_a.state_dict(), mod_b.state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k


SCRIPT = """
import sys
import torch
torch.set_num_threads(1)
import xdiffusion as xd
from xdiffusion.datasets import synthetic_precipitation

da = synthetic_precipitation(nt=120, ny=16, nx=16)
xd.fit(da, frames=4, steps=40, batch_size=2, progress=False, device="cpu",
       net={NET!r}, checkpoint_dir=sys.argv[1], checkpoint_every=5, resume=True)
"""


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    """Kill a training process with SIGKILL after its step-10 checkpoint, resume, compare.

    Batches and t/ε are functions of (seed, step); weights, EMA, AdamW moments and step
    counts, and the global RNG state (dropout) are restored, so equality is exact.
    """
    from xdiffusion.datasets import synthetic_precipitation

    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(SCRIPT).replace("{NET!r}", repr(NET)))
    ckdir = tmp_path / "ck"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(ckdir)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    try:
        while not (ckdir / "ckpt-000000010.json").exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint at step 10 within 120 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    done = ck.list_checkpoints(ckdir)
    assert 10 <= max(done) < 40, done  # killed mid-run, not after the end

    da = synthetic_precipitation(nt=120, ny=16, nx=16)
    kw = dict(FIT, net=NET, steps=40)
    kw.pop("val_every")
    resumed = xd.fit(da, checkpoint_dir=ckdir, checkpoint_every=5, resume=True, **kw)
    straight = xd.fit(da, **kw)
    assert_same_weights(resumed, straight)
    assert resumed.history_dict == straight.history_dict  # losses of steps before the kill included
    assert ck.list_checkpoints(ckdir) == [30, 35, 40]


def test_checkpointing_does_not_perturb_training_and_keeps_last_k(series, reference, tmp_path):
    model = xd.fit(
        series, steps=12, checkpoint_dir=tmp_path, checkpoint_every=3, keep_checkpoints=2, **SMALL
    )
    assert_same_weights(model, reference)
    assert sorted(f.name for f in tmp_path.iterdir()) == [
        "ckpt-000000009.json",
        "ckpt-000000009.safetensors",
        "ckpt-000000012.json",
        "ckpt-000000012.safetensors",
    ]
    # Only JSON and safetensors: both readable without pickle; the final EMA is the model's.
    meta = json.loads((tmp_path / "ckpt-000000012.json").read_text())
    assert meta["step"] == 12 and meta["fingerprint"]["seed"] == 0
    assert meta["optimizer"]["param_groups"][0]["betas"] == [0.9, 0.999]
    tensors = load_file(tmp_path / "ckpt-000000012.safetensors")
    for k, v in model.module.state_dict().items():
        assert torch.equal(tensors[f"ema.{k}"], v)
    n_params = len(list(model.raw_module.parameters()))
    assert {k.split(".")[1] for k in tensors if k.startswith("optim.")} == {
        str(i) for i in range(n_params)
    }


def test_resume_after_completion_returns_the_same_model(series, reference, tmp_path):
    xd.fit(series, steps=12, checkpoint_dir=tmp_path, checkpoint_every=4, **SMALL)
    again = xd.fit(
        series, steps=12, checkpoint_dir=tmp_path, checkpoint_every=4, resume=True, **SMALL
    )
    assert_same_weights(again, reference)
    assert again.history_dict["step"] == list(range(12))


def test_corrupted_newest_checkpoints_are_skipped(series, reference, tmp_path):
    xd.fit(
        series, steps=8, checkpoint_dir=tmp_path, checkpoint_every=2, keep_checkpoints=3, **SMALL
    )
    assert ck.list_checkpoints(tmp_path) == [4, 6, 8]
    blob = (tmp_path / "ckpt-000000008.safetensors").read_bytes()
    (tmp_path / "ckpt-000000008.safetensors").write_bytes(blob[: len(blob) // 2])  # truncated
    text = (tmp_path / "ckpt-000000006.json").read_text()
    (tmp_path / "ckpt-000000006.json").write_text(text[:100])  # half-written JSON
    with pytest.warns(RuntimeWarning, match="skipping checkpoint at step") as rec:
        state = ck.load_checkpoint(tmp_path)
    assert state.step == 4
    messages = " ".join(str(w.message) for w in rec)
    assert "step 8" in messages and "SHA-256" in messages
    assert "step 6" in messages and "not valid JSON" in messages
    with pytest.warns(RuntimeWarning, match="skipping checkpoint"):
        model = xd.fit(
            series,
            steps=12,
            checkpoint_dir=tmp_path,
            checkpoint_every=2,
            keep_checkpoints=3,
            resume=True,
            **SMALL,
        )
    assert_same_weights(model, reference)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the stale corrupted files were replaced
        assert ck.load_checkpoint(tmp_path).step == 12


def test_tensor_file_without_json_is_incomplete(series, tmp_path):
    xd.fit(series, steps=4, checkpoint_dir=tmp_path, checkpoint_every=2, **SMALL)
    (tmp_path / "ckpt-000000004.json").unlink()  # killed between the two writes
    with pytest.warns(RuntimeWarning, match="ckpt-000000004.json is missing"):
        assert ck.load_checkpoint(tmp_path).step == 2


def test_crash_while_writing_leaves_previous_checkpoints(series, tmp_path, monkeypatch):
    xd.fit(series, steps=4, checkpoint_dir=tmp_path, checkpoint_every=2, **SMALL)
    before = {f.name: f.read_bytes() for f in tmp_path.iterdir()}

    def dying_save_file(tensors, filename):
        Path(filename).write_bytes(b"partial")
        raise KeyboardInterrupt  # as if interrupted in the middle of the write

    monkeypatch.setattr(ck, "save_file", dying_save_file)
    with pytest.raises(KeyboardInterrupt):
        xd.fit(series, steps=6, checkpoint_dir=tmp_path, checkpoint_every=2, resume=True, **SMALL)
    assert {f.name: f.read_bytes() for f in tmp_path.iterdir()} == before  # no temp file left
    assert ck.load_checkpoint(tmp_path).step == 4


def test_resume_refuses_other_arguments(series, tmp_path):
    xd.fit(series, steps=2, checkpoint_dir=tmp_path, checkpoint_every=2, **SMALL)
    with pytest.raises(ValueError, match=r"checkpoint_dir=.*seed: 0 in the checkpoint, 1 now"):
        xd.fit(series, steps=4, checkpoint_dir=tmp_path, resume=True, seed=1, **SMALL)
    with pytest.raises(ValueError, match="frames"):
        xd.fit(series, steps=4, checkpoint_dir=tmp_path, resume=True, **{**SMALL, "frames": 5})
    with pytest.raises(ValueError, match="data_shape"):
        xd.fit(
            series.isel(time=slice(0, 100)), steps=4, checkpoint_dir=tmp_path, resume=True, **SMALL
        )
    with pytest.raises(ValueError, match="data_max"):
        xd.fit(series * 2, steps=4, checkpoint_dir=tmp_path, resume=True, **SMALL)
    with pytest.raises(ValueError, match=r"steps=1 is fewer than the 2 steps .*checkpoint_dir"):
        xd.fit(series, steps=1, checkpoint_dir=tmp_path, resume=True, **SMALL)
    with pytest.raises(ValueError, match=r"already holds checkpoints.*resume=True"):
        xd.fit(series, steps=4, checkpoint_dir=tmp_path, **SMALL)


def test_resume_without_checkpoint_starts_fresh(series, reference, tmp_path):
    model = xd.fit(
        series, steps=12, checkpoint_dir=tmp_path / "new", checkpoint_every=6, resume=True, **SMALL
    )
    assert_same_weights(model, reference)
    assert ck.list_checkpoints(tmp_path / "new") == [6, 12]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"resume": True}, "resume=True needs checkpoint_dir"),
        ({"checkpoint_dir": "ck", "checkpoint_every": 0}, "checkpoint_every"),
        ({"checkpoint_dir": "ck", "keep_checkpoints": -1}, "keep_checkpoints"),
        ({"checkpoint_dir": 3}, "checkpoint_dir must be a path"),
    ],
)
def test_checkpoint_arguments_validated(series, kwargs, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises((ValueError, TypeError), match=match):
        xd.fit(series, steps=2, **{**FIT, **kwargs})
    assert not (tmp_path / "ck").exists()


def test_rng_state_round_trip():
    state = ck.rng_state()
    a = (torch.rand(3), np.random.rand(3))  # noqa: NPY002
    ck.set_rng_state(json.loads(json.dumps(state)))
    b = (torch.rand(3), np.random.rand(3))  # noqa: NPY002
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_checkpoint_dir_that_is_a_file(series, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match=r"checkpoint_dir=.*not a directory"):
        xd.fit(series, steps=2, checkpoint_dir=f, **FIT)
    assert os.path.isfile(f)
