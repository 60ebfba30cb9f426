"""Chunk-aware streaming of training windows: whole-chunk reads, determinism, coverage."""

import dask.array as dsa
import numpy as np
import pytest
import torch
from conftest import TINY_NET, make_series

import xdiffusion as xd
from xdiffusion.io.streaming import (
    ChunkedWindows,
    RandomWindows,
    block_edges,
    check_loader,
    make_loader,
)
from xdiffusion.io.windows import window_starts

CHUNK = 20


def counted(values: np.ndarray, chunk: int = CHUNK):
    """A dask view of (C, T, Y, X) ``values`` chunked along T that logs every chunk read."""
    reads = []

    def read(block_info=None):
        loc = block_info[None]["array-location"]
        reads.append((loc[1][0], loc[1][1]))
        return values[tuple(slice(a, b) for a, b in loc)]

    c, t, ny, nx = values.shape
    chunks = ((c,), (chunk,) * (t // chunk) + ((t % chunk,) if t % chunk else ()), (ny,), (nx,))
    return dsa.map_blocks(read, chunks=chunks, dtype=values.dtype), reads


def values(nt=200, c=2, n=3, seed=0):
    return np.random.default_rng(seed).random((c, nt, n, n), dtype=np.float32)


def test_block_edges_merge_small_and_split_large_chunks():
    np.testing.assert_array_equal(block_edges([20] * 3, 4), [0, 20, 40, 60])
    # 1-step chunks merge to blocks of >= 4 * frames steps; a short remainder joins the last
    np.testing.assert_array_equal(block_edges([1] * 40, 4), [0, 16, 40])
    np.testing.assert_array_equal(block_edges([5, 30, 2], 3), [0, 37])
    # one 500-step chunk of 1 MB steps with a 100 MB limit: five 100-step blocks
    np.testing.assert_array_equal(
        block_edges([500], 8, step_bytes=10**6, max_block_bytes=100 * 10**6),
        [0, 100, 200, 300, 400, 500],
    )


@pytest.mark.parametrize("prefetch", [False, True])
def test_reads_whole_chunks_only_those_of_the_round(prefetch):
    x = values()
    lazy, reads = counted(x)
    frames, bs, buf = 4, 5, 3
    w = ChunkedWindows(
        lazy,
        frames,
        np.arange(200 - frames + 1),
        batch_size=bs,
        seed=1,
        buffer_chunks=buf,
        prefetch=prefetch,
        total_steps=4 * 12,
    )
    assert w.steps_per_round == 12  # ceil(3 blocks × 20 windows / 5)
    naive, naive_reads = counted(x)
    RandomWindows(naive, frames, np.arange(197), batch_size=bs, seed=1).batch(0)
    assert len(naive_reads) >= bs  # one read or more per window
    for r in range(4):
        if not prefetch:
            reads.clear()
        for step in range(r * 12, (r + 1) * 12):
            starts, batch = w.batch(step)
            for s, win in zip(starts, batch):
                np.testing.assert_array_equal(win, x[:, s : s + frames])
        if prefetch:  # reads happen in the background: counted over all rounds below
            continue
        blocks = w.blocks_of_round(r)
        expected = {(int(w.edges[k]), int(w.edges[k + 1])) for k in blocks}
        expected |= {(b, b + CHUNK) for _, b in expected if b < 200}  # tails from next chunk
        assert len(reads) == len(set(reads))  # no chunk read twice within a round
        assert set(reads) <= expected and len(reads) <= 2 * buf
        assert len(reads) * 5 <= 12 * len(naive_reads)  # ~10× fewer than window by window
    if prefetch:
        assert w._next is None  # total_steps: nothing prefetched past the last round
        assert len(reads) <= 4 * 2 * buf and len(reads) * 5 <= 4 * 12 * len(naive_reads)
    assert w.blocks_read <= 4 * buf
    held = (w._current[1].pieces, w._next[1].result().pieces if w._next else {})
    assert sum(p.shape[1] for d in held for p in d.values()) <= 2 * buf * (CHUNK + frames - 1)
    w.close()


def test_batches_are_a_function_of_seed_and_step():
    x = values(nt=160)
    kw = dict(batch_size=4, seed=3, buffer_chunks=2)
    a = ChunkedWindows(x, 5, np.arange(156), max_block_bytes=CHUNK * x[:, 0].nbytes, **kw)
    b = ChunkedWindows(
        dsa.from_array(x, chunks=(2, CHUNK, 3, 3)), 5, np.arange(156), prefetch=False, **kw
    )
    np.testing.assert_array_equal(a.edges, b.edges)  # numpy split like the dask chunks
    steps = list(range(0, 60, 1))
    ref = [a.batch(s) for s in steps]
    for s, (st, win) in zip(steps, ref):
        st2, win2 = b.batch(s)
        np.testing.assert_array_equal(st, st2)
        np.testing.assert_array_equal(win, win2)
    # A loader re-created at step 37 (a resumed run) continues identically, also backwards.
    c = ChunkedWindows(x, 5, np.arange(156), max_block_bytes=CHUNK * x[:, 0].nbytes, **kw)
    for s in [37, 38, 59, 3, 37]:
        np.testing.assert_array_equal(c.starts_at(s), ref[s][0])
    other = ChunkedWindows(
        x,
        5,
        np.arange(156),
        batch_size=4,
        seed=4,
        buffer_chunks=2,
        max_block_bytes=CHUNK * x[:, 0].nbytes,
    )
    assert any(not np.array_equal(other.starts_at(s), ref[s][0]) for s in steps)
    for w in (a, b, c, other):
        w.close()


def test_windows_never_span_a_gap():
    t = np.arange(np.datetime64("2000-01-01"), np.datetime64("2000-06-01"), np.timedelta64(1, "D"))
    t = np.delete(t, [18, 19, 20, 47, 95])  # gaps inside and at the edges of chunks
    x = values(nt=len(t))
    frames = 6
    starts = window_starts(t, frames)
    lazy, _ = counted(x)
    w = ChunkedWindows(lazy, frames, starts, batch_size=7, seed=0, buffer_chunks=2)
    seen = set()
    for step in range(300):
        st, win = w.batch(step)
        for s, wi in zip(st, win):
            assert np.all(np.diff(t[s : s + frames]) == np.timedelta64(1, "D"))
            np.testing.assert_array_equal(wi, x[:, s : s + frames])
        seen.update(st.tolist())
    assert seen == set(starts.tolist())  # every valid start, and nothing else
    w.close()


def test_every_start_drawn_about_equally_including_across_chunk_edges():
    frames, bs, buf = 4, 8, 2
    lazy, _ = counted(values(nt=240))  # 12 chunks of 20 steps
    starts = np.arange(240 - frames + 1)
    w = ChunkedWindows(lazy, frames, starts, batch_size=bs, seed=5, buffer_chunks=buf)
    assert w.steps_per_round == 5  # ceil(2 × 19.75 / 8): about one use per window
    epoch = 12 // buf * w.steps_per_round
    counts = np.zeros(len(starts), int)
    for step in range(3 * epoch):
        np.add.at(counts, w.starts_at(step), 1)
    # a window is used once per epoch; 3 of the 37 in the round with the short last block
    # twice
    assert counts.min() == 3 and (counts > 3).sum() <= 3 * 3 and counts.sum() == 3 * epoch * bs
    straddling = starts[(starts % CHUNK) > CHUNK - frames]  # windows crossing a chunk edge
    assert abs(counts[straddling].mean() - counts.mean()) < 0.5
    w.close()


def test_fit_on_dask_chunked_resume_is_exact(tmp_path):
    da = make_series(nt=120)
    lazy_data, reads = counted(da.values[None])
    lazy = da.copy(data=lazy_data[0])
    kw = dict(
        frames=4,
        batch_size=2,
        progress=False,
        device="cpu",
        net=TINY_NET,
        val_every=4,
        loader="chunked",
        buffer_chunks=2,
    )

    def fit_counting(**extra):
        reads.clear()
        model = xd.fit(lazy, **{**kw, **extra})
        return model, len(reads)

    ref, n8 = fit_counting(steps=8)
    chunked, n2 = fit_counting(steps=2)
    assert n8 == n2  # 6 more steps read nothing: their windows come from the buffer
    rand, r2 = fit_counting(steps=2, loader="random")
    _, r8 = fit_counting(steps=8, loader="random")
    assert r8 - r2 >= 6  # window by window: at least one chunk read per step
    xd.fit(lazy, steps=4, checkpoint_dir=tmp_path, checkpoint_every=2, **kw)
    resumed = xd.fit(lazy, steps=8, checkpoint_dir=tmp_path, resume=True, **kw)
    for m_ref, m_res in ((ref.module, resumed.module), (ref.raw_module, resumed.raw_module)):
        for k, v in m_ref.state_dict().items():
            assert torch.equal(v, m_res.state_dict()[k]), k
    auto = xd.fit(lazy, steps=2, **{**kw, "loader": "auto"})
    a, c, r = (dict(m.module.state_dict()) for m in (auto, chunked, rand))
    assert all(torch.equal(a[k], c[k]) for k in a)  # auto is chunked on dask
    assert not all(torch.equal(r[k], c[k]) for k in r)
    with pytest.raises(ValueError, match=r"different arguments.*loader"):
        xd.fit(lazy, steps=8, checkpoint_dir=tmp_path, resume=True, **{**kw, "buffer_chunks": 3})


def test_numpy_auto_is_the_random_path_and_bad_arguments():
    x = values(nt=60)
    w = make_loader("auto", x, 4, np.arange(57), batch_size=3, seed=2)
    assert isinstance(w, RandomWindows)
    expect = np.random.default_rng([2, 9]).choice(np.arange(57), size=3, replace=True)
    np.testing.assert_array_equal(w.starts_at(9), expect)
    assert isinstance(
        make_loader("auto", dsa.from_array(x), 4, np.arange(57), batch_size=3, seed=2),
        ChunkedWindows,
    )
    with pytest.raises(ValueError, match="loader must be one of"):
        check_loader("shuffled", 4)
    with pytest.raises(ValueError, match="buffer_chunks must be a positive integer"):
        check_loader("chunked", 0)
    with pytest.raises(ValueError, match="loader must be one of"):
        xd.fit(make_series(nt=30), loader="fast", progress=False)
    with pytest.raises(ValueError, match=r"starts must lie in \[0, 56\]"):
        ChunkedWindows(x, 4, [0, 57], batch_size=2, seed=0)
    with pytest.raises(ValueError, match="step must be a non-negative integer"):
        ChunkedWindows(x, 4, [0, 5], batch_size=2, seed=0).batch(-1)
