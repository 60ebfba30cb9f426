"""Data-parallel training with torchrun (gloo on CPU): 2 ranks equal 1 rank with the same
global batch; rank 0 writes; resume needs the same world size."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import TINY_NET, make_series

import xdiffusion as xd

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="this PyTorch build has no torch.distributed"
)

STEPS, FRAMES, PER_RANK = 4, 4, 2
RUN_SECONDS = 300


def _torchrun(args, cwd, nproc=2):
    """Run ``python -m torch.distributed.run --standalone`` (what ``torchrun`` is)."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={nproc}", *args,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=RUN_SECONDS, cwd=cwd)
    return res


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ddp") / "data.nc"
    make_series(nt=80).to_dataset().to_netcdf(path)
    return path


def test_two_ranks_equal_one_rank_with_the_same_global_batch(data_file, tmp_path):
    out = tmp_path / "model"
    res = _torchrun(
        ["-m", "xdiffusion", "fit", str(data_file), "--var", "pr", "--out", str(out),
         "--frames", str(FRAMES), "--steps", str(STEPS), "--batch-size", str(PER_RANK),
         "--net", json.dumps(TINY_NET), "--seed", "3", "--device", "cpu", "--quiet"],
        tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("wrote") == 1, res.stdout  # rank 0 alone reports (and writes)
    ddp = xd.load(out)
    training = ddp.config["training"]
    assert training["world_size"] == 2
    assert training["per_rank_batch_size"] == PER_RANK
    assert training["global_batch_size"] == 2 * PER_RANK
    single = xd.fit(
        xr.open_dataset(data_file)["pr"],
        frames=FRAMES,
        steps=STEPS,
        batch_size=2 * PER_RANK,
        net=TINY_NET,
        seed=3,
        device="cpu",
        progress=False,
    )
    assert single.config["training"]["world_size"] == 1
    # the same losses (the global batch's) and the same weights, up to reduction order
    np.testing.assert_allclose(
        training["history"]["loss"], single.config["training"]["history"]["loss"], rtol=1e-4
    )
    np.testing.assert_allclose(
        training["history"]["val_loss"],
        single.config["training"]["history"]["val_loss"],
        rtol=1e-4,
    )
    a, b = ddp.module.state_dict(), single.module.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


SCRIPT = textwrap.dedent(
    """
    import sys
    import xarray as xr
    import xdiffusion as xd
    from xdiffusion.parallel import is_main_process, world_size

    data, ckpt, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    model = xd.fit(
        xr.open_dataset(data)["pr"], frames=4, steps=steps, batch_size=2,
        net={"width": 8, "mults": [1, 2]}, seed=1, device="cpu", progress=False,
        checkpoint_dir=ckpt, checkpoint_every=2, resume=True,
    )
    if is_main_process():
        print("world", world_size(), "steps", len(model.config["training"]["history"]["loss"]))
    """
)


def test_script_fit_checkpoints_on_rank_zero_and_resumes_with_the_same_world_size(
    data_file, tmp_path
):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    ckpt = tmp_path / "ckpt"
    res = _torchrun([str(script), str(data_file), str(ckpt), "2"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "world 2 steps 2" in res.stdout
    written = sorted(p.name for p in ckpt.iterdir() if not p.name.startswith("."))
    assert written, "rank 0 writes checkpoints"
    res = _torchrun([str(script), str(data_file), str(ckpt), "4"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "world 2 steps 4" in res.stdout  # resumed: the history holds the whole run
    # another world size is refused, naming it
    with pytest.raises(ValueError, match="world_size"):
        xd.fit(
            xr.open_dataset(data_file)["pr"],
            frames=4,
            steps=6,
            batch_size=2,
            net=TINY_NET,
            seed=1,
            device="cpu",
            progress=False,
            checkpoint_dir=ckpt,
            checkpoint_every=2,
            resume=True,
        )


def test_loader_shards_are_disjoint_and_make_the_single_process_batch():
    from xdiffusion.io.streaming import ChunkedWindows, RandomWindows

    data = np.zeros((1, 200, 4, 4), dtype=np.float32)
    starts = np.arange(190)
    one = RandomWindows(data, 4, starts, batch_size=6, seed=0)
    parts = [RandomWindows(data, 4, starts, batch_size=3, seed=0, shard=(r, 2)) for r in (0, 1)]
    for step in range(3):
        merged = np.empty(6, dtype=np.int64)
        merged[0::2], merged[1::2] = parts[0].starts_at(step), parts[1].starts_at(step)
        np.testing.assert_array_equal(merged, one.starts_at(step))
    import dask.array as dsa

    lazy = dsa.from_array(data, chunks=(1, 20, 4, 4))
    ranks = [
        ChunkedWindows(lazy, 4, starts, batch_size=2, seed=0, buffer_chunks=2, shard=(r, 2))
        for r in (0, 1)
    ]
    try:
        blocks = [set(w.blocks_of_round(0 * 2 + r).tolist()) for r, w in enumerate(ranks)]
        assert not blocks[0] & blocks[1]  # each rank reads its own blocks
        for r, w in enumerate(ranks):
            got = w.starts_at(0)
            owners = np.searchsorted(w.edges, got, side="right") - 1
            assert set(owners.tolist()) <= blocks[r]
    finally:
        for w in ranks:
            w.close()
    with pytest.raises(ValueError, match="rank"):
        RandomWindows(data, 4, starts, batch_size=3, seed=0, shard=(2, 2))
