"""Never lose a model: atomic directory saves, locking, overwrite rules, URLs, safe loading."""

import copy
import json
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import xdiffusion as xd
from xdiffusion import model as model_module
from xdiffusion import persistence

WEIGHTS = "ema.safetensors"


def state_equal(a, b) -> bool:
    sa, sb = a.module.state_dict(), b.module.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k].to(sa[k].device)) for k in sa)


@pytest.fixture(scope="module")
def other_model(tiny_model):
    """``tiny_model`` with different weights (every parameter + 1)."""
    other = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for p in other.module.parameters():
            p.add_(1.0)
    assert not state_equal(tiny_model, other)
    return other


def hidden_leftovers(parent, name="m"):
    """Entries beside a saved model other than the model and its lock file."""
    return sorted(e.name for e in parent.iterdir() if e.name not in (name, f".{name}.lock"))


def edit_config(path, change):
    cfg = json.loads((path / "config.json").read_text())
    change(cfg)
    (path / "config.json").write_text(json.dumps(cfg))


# ------------------------------------------------------------------ atomic directory saves
def test_crash_after_first_file_keeps_old_model(tiny_model, other_model, tmp_path, monkeypatch):
    path = tmp_path / "m"
    tiny_model.save(path)
    assert other_model.raw_module is not None  # two weight files: crash between them
    real = persistence.save_file
    written = []

    def crash_after_writing(tensors, filename, *args, **kwargs):
        if written:
            raise OSError("disk full (simulated crash after the first file)")
        real(tensors, filename, *args, **kwargs)
        written.append(filename)

    monkeypatch.setattr(persistence, "save_file", crash_after_writing)
    with pytest.raises(OSError, match="simulated crash"):
        other_model.save(path)
    monkeypatch.undo()
    assert state_equal(xd.load(path), tiny_model)
    assert hidden_leftovers(tmp_path) == []  # the partial new model was removed
    other_model.save(path)  # and the next save works
    assert state_equal(xd.load(path), other_model)


def test_failed_swap_keeps_old_model_and_fallback_swap_works(
    tiny_model, other_model, tmp_path, monkeypatch
):
    """Without an atomic exchange: rename aside, rename in; a failing rename-in restores."""
    path = tmp_path / "m"
    tiny_model.save(path)
    monkeypatch.setattr(persistence, "_exchange", lambda a, b: False)
    real_rename = os.rename
    calls = []

    def rename(src, dst):
        calls.append((str(src), str(dst)))
        if len(calls) == 2:  # the new model moving in
            raise OSError("simulated failure while moving the new model in")
        real_rename(src, dst)

    monkeypatch.setattr(persistence.os, "rename", rename)
    with pytest.raises(OSError, match="simulated failure"):
        other_model.save(path)
    monkeypatch.setattr(persistence.os, "rename", real_rename)
    assert state_equal(xd.load(path), tiny_model)
    assert hidden_leftovers(tmp_path) == []
    other_model.save(path)  # the rename-aside path, successful
    assert state_equal(xd.load(path), other_model)
    assert hidden_leftovers(tmp_path) == []


def test_save_was_killed_between_renames_load_says_where_the_model_is(tiny_model, tmp_path):
    path = tmp_path / "m"
    tiny_model.save(path)
    aside = tmp_path / ".m.old-0123abcd"
    os.rename(path, aside)  # the state a SIGKILL between the two renames leaves
    with pytest.raises(ValueError, match=r"a save was interrupted.*\.m\.old-0123abcd"):
        xd.load(path)


def test_stale_temporary_directories_are_removed(tiny_model, tmp_path):
    stale = tmp_path / ".m.saving-abcd_123"
    stale.mkdir()
    (stale / "ema.safetensors").write_bytes(b"partial")
    tiny_model.save(tmp_path / "m")
    assert not stale.exists()
    assert hidden_leftovers(tmp_path) == []


def test_concurrent_saves_are_serialised(tiny_model, other_model, tmp_path, monkeypatch):
    path = tmp_path / "m"
    real = persistence._write_dir
    active, peak, lock = [0], [0], threading.Lock()

    def slow_write(*args, **kwargs):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            time.sleep(0.05)
            return real(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(persistence, "_write_dir", slow_write)
    errors = []

    def writer(model):
        try:
            for _ in range(3):
                model.save(path)
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(m,)) for m in (tiny_model, other_model)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert peak[0] == 1  # never two writers at once
    loaded = xd.load(path)
    assert state_equal(loaded, tiny_model) or state_equal(loaded, other_model)
    assert hidden_leftovers(tmp_path) == []


@pytest.mark.skipif(sys.platform == "win32", reason="needs fcntl")
def test_save_waits_for_a_lock_held_by_another_process(tiny_model, tmp_path):
    """The lock is a file lock, so it serialises processes, not only threads."""
    lock = tmp_path / ".m.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import fcntl, os, sys, time
                fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT, 0o644)
                fcntl.flock(fd, fcntl.LOCK_EX)
                print("locked", flush=True)
                time.sleep(1.5)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.monotonic()
        tiny_model.save(tmp_path / "m")
        waited = time.monotonic() - start
    finally:
        holder.wait(timeout=30)
    assert waited > 0.8
    assert state_equal(xd.load(tmp_path / "m"), tiny_model)


# ------------------------------------------------------------------ where a save may go
def test_non_model_directory_needs_overwrite(tiny_model, tmp_path):
    path = tmp_path / "results"
    path.mkdir()
    (path / "notes.txt").write_text("precious")
    with pytest.raises(ValueError, match=r"not an xdiffusion model.*overwrite=True"):
        tiny_model.save(path)
    assert (path / "notes.txt").read_text() == "precious"
    assert hidden_leftovers(tmp_path, "results") == []
    with pytest.raises(TypeError, match="overwrite must be True or False"):
        tiny_model.save(path, overwrite="yes")
    tiny_model.save(path, overwrite=True)
    assert not (path / "notes.txt").exists()
    assert state_equal(xd.load(path), tiny_model)


def test_model_directory_and_empty_directory_are_replaced(tiny_model, other_model, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    tiny_model.save(empty)
    assert state_equal(xd.load(empty), tiny_model)
    other_model.save(empty)  # an existing model: no overwrite=True needed
    assert state_equal(xd.load(empty), other_model)
    # A damaged model (config.json with a schema_version) may be replaced too.
    (empty / WEIGHTS).write_bytes(b"garbage")
    tiny_model.save(empty)
    assert state_equal(xd.load(empty), tiny_model)


def test_bad_paths_are_refused(tiny_model, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        tiny_model.save(tmp_path / "file")
    for empty in ("", "   "):
        with pytest.raises(ValueError, match="empty string"):
            tiny_model.save(empty)
        with pytest.raises(ValueError, match="empty string"):
            xd.load(empty)
    with pytest.raises(TypeError, match="path must be the model directory"):
        tiny_model.save(3)


def test_tilde_is_expanded(tiny_model, tmp_path, monkeypatch):
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    tiny_model.save("~/m")
    assert (home / "m" / "config.json").is_file()
    assert list(work.iterdir()) == []  # no folder literally named "~"
    assert state_equal(xd.load("~/m"), tiny_model)


def test_saving_through_a_symlink_writes_where_it_points(tiny_model, tmp_path):
    real = tmp_path / "v1"
    tiny_model.save(real)
    link = tmp_path / "current"
    link.symlink_to(real)
    tiny_model.save(link)
    assert link.is_symlink() and os.path.realpath(link) == str(real)
    assert state_equal(xd.load(link), tiny_model)


# ------------------------------------------------------------------ URLs
def test_file_url(tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny_model.save(f"file://{tmp_path}/m")
    assert (tmp_path / "m" / "config.json").is_file()
    assert not (tmp_path / "file:").exists()
    assert state_equal(xd.load(f"file://{tmp_path}/m"), tiny_model)
    assert state_equal(xd.load(tmp_path / "m"), tiny_model)
    with pytest.raises(ValueError, match="must name a local path"):
        tiny_model.save("file://otherhost/m")


def test_memory_url_round_trip(tiny_model, other_model, tmp_path, monkeypatch):
    import fsspec

    monkeypatch.chdir(tmp_path)
    url = f"memory://xdiffusion-test-{uuid.uuid4().hex}/m"
    fs, root = fsspec.core.url_to_fs(url)
    try:
        tiny_model.save(url)
        assert list(tmp_path.iterdir()) == []  # no local folder named "memory:"
        assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)) == sorted(
            ["config.json", *json.loads(fs.cat_file(f"{root}/config.json"))["files"]]
        )
        assert state_equal(xd.load(url), tiny_model)
        other_model.save(url)  # replacing a model
        assert state_equal(xd.load(url), other_model)
        # A remote non-model directory is protected like a local one.
        junk = url.rsplit("/", 1)[0] + "/junk"
        fs.pipe_file(fs._strip_protocol(junk) + "/notes.txt", b"precious")
        with pytest.raises(ValueError, match="overwrite=True"):
            tiny_model.save(junk)
        tiny_model.save(junk, overwrite=True)
        assert state_equal(xd.load(junk), tiny_model)
        # A remote config naming a file outside the model is refused.
        fs.pipe_file(fs._strip_protocol(junk).rsplit("/", 1)[0] + "/secret", b"x")
        cfg = json.loads(fs.cat_file(f"{root}/config.json"))
        cfg["files"] = {"../secret": "0" * 64}
        fs.pipe_file(f"{root}/config.json", json.dumps(cfg).encode())
        with pytest.raises(ValueError, match="not a plain file name"):
            xd.load(url)
    finally:
        fs.rm(root.rsplit("/", 1)[0], recursive=True)
    with pytest.raises(ValueError, match=r"no config\.json"):
        xd.load(url)


def test_unusable_url_schemes_are_refused_clearly(tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="unknown URL scheme 'nosuchscheme'"):
        tiny_model.save("nosuchscheme://bucket/m")
    try:
        import s3fs  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match=r"s3:// scheme needs a package"):
            tiny_model.save("s3://bucket/m")
        with pytest.raises(ValueError, match=r"s3:// scheme needs a package"):
            xd.load("s3://bucket/m")
    assert list(tmp_path.iterdir()) == []  # no folder named "s3:" or "nosuchscheme:"


# ------------------------------------------------------------------ loading safely
@pytest.mark.parametrize("name", ["../outside.safetensors", "/etc/passwd", "sub/ema.safetensors"])
def test_weight_names_outside_the_directory_are_not_opened(tiny_model, tmp_path, monkeypatch, name):
    path = tmp_path / "m"
    tiny_model.save(path)
    save_file({"x": torch.zeros(1)}, tmp_path / "outside.safetensors")
    edit_config(path, lambda c: c["files"].update({name: "0" * 64}))
    opened = []
    monkeypatch.setattr(persistence, "sha256_of", lambda f: opened.append(f) or "0" * 64)
    monkeypatch.setattr(persistence, "safe_open", lambda *a, **k: opened.append(a))
    with pytest.raises(ValueError, match="not a plain file name inside the model directory"):
        xd.load(path)
    assert opened == []


def test_symlinked_weight_file_is_refused(tiny_model, tmp_path):
    path = tmp_path / "m"
    tiny_model.save(path)
    elsewhere = tmp_path / "elsewhere.safetensors"
    os.rename(path / WEIGHTS, elsewhere)
    (path / WEIGHTS).symlink_to(elsewhere)  # same bytes, so the hash would match
    with pytest.raises(ValueError, match="is a symbolic link"):
        xd.load(path)


BAD_CONFIGS = {
    "frames-zero": (lambda c: c.update(frames=0), "frames must be a positive integer"),
    "frames-str": (lambda c: c.update(frames="4"), "frames must be a positive integer"),
    "frames-bool": (lambda c: c.update(frames=True), "frames must be a positive integer"),
    "grid-one": (lambda c: c.update(grid=[16]), "grid must be two positive integers"),
    "grid-zero": (lambda c: c.update(grid=[0, 16]), "grid must be two positive integers"),
    "grid-float": (lambda c: c.update(grid=[16.0, 16]), "grid must be two positive integers"),
    "schedule-empty": (lambda c: c.update(schedule={}), "defaults are not assumed"),
    "schedule-partial": (
        lambda c: c["schedule"].pop("lambda_max"),
        "schedule must be an object with exactly the keys",
    ),
    "schedule-reversed": (
        lambda c: c["schedule"].update(lambda_min=5.0, lambda_max=-5.0),
        "schedule .* is invalid",
    ),
    "schedule-str": (
        lambda c: c["schedule"].update(lambda_min="-30"),
        "cosine schedule with numeric bounds",
    ),
    "sampler-unknown": (
        lambda c: c.update(sampling={"sampler": "euler_magic", "steps": 3}),
        "sampling.sampler must be None or one of",
    ),
    "steps-zero": (
        lambda c: c.update(sampling={"sampler": None, "steps": 0}),
        "sampling.steps must be None or a positive integer",
    ),
    "sampling-list": (lambda c: c.update(sampling=[1]), "sampling must be an object"),
    "variables-empty": (lambda c: c.update(variables=[]), "variables must be a non-empty list"),
    "variables-no-name": (
        lambda c: c["variables"][0].pop("name"),
        r"variables\[0\] must be an object with a non-empty 'name'",
    ),
    "variables-no-codec": (
        lambda c: c["variables"][0].pop("codec"),
        r"variables\[0\] \('pr'\) lacks its 'codec'",
    ),
    "net-channels": (lambda c: c["net"].update(channels=2), "net has 2 channels for 1 variables"),
    "net-bad": (lambda c: c["net"].update(width=-1), "net is invalid"),
    "time-features": (lambda c: c.update(time_features=["moon"]), "time_features must be"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_config_is_validated_before_the_network_is_built(tiny_model, tmp_path, monkeypatch, case):
    change, message = BAD_CONFIGS[case]
    path = tmp_path / "m"
    tiny_model.save(path)
    edit_config(path, change)

    def no_build(*args, **kwargs):
        raise AssertionError("the network was built from a config that should be refused")

    monkeypatch.setattr(model_module, "_build", no_build)
    monkeypatch.setattr(model_module, "_expected_shapes", no_build)
    with pytest.raises(ValueError, match=message) as info:
        xd.load(path)
    assert "not a valid xdiffusion model" in str(info.value)
    assert "save the model again" in str(info.value)  # and says how to fix it


def test_huge_configured_network_fails_fast_from_headers(tiny_model, tmp_path, monkeypatch):
    path = tmp_path / "m"
    tiny_model.save(path)
    edit_config(path, lambda c: c["net"].update(width=4096))

    def no_build(*args, **kwargs):
        raise AssertionError("a real network was allocated")

    monkeypatch.setattr(model_module, "_build", no_build)
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"does not fit the configured network.*changed shapes"):
        xd.load(path)
    assert time.monotonic() - start < 30


def test_missing_and_unexpected_tensors_are_named(tiny_model, tmp_path):
    import hashlib

    path = tmp_path / "m"
    tiny_model.save(path)
    good = load_file(path / WEIGHTS)
    name = sorted(k for k in good if k.startswith("net."))[0]
    tensors = {**{k: v for k, v in good.items() if k != name}, "net.extra": torch.zeros(1)}
    save_file(tensors, path / WEIGHTS)
    digest = hashlib.sha256((path / WEIGHTS).read_bytes()).hexdigest()
    edit_config(path, lambda c: c["files"].update({WEIGHTS: digest}))
    with pytest.raises(ValueError, match=rf"missing tensors \['{name}'\].*unexpected tensors"):
        xd.load(path)


def test_valid_mask_shape_is_checked(tiny_model, tmp_path):
    import hashlib

    path = tmp_path / "m"
    tiny_model.save(path)
    good = load_file(path / WEIGHTS)
    save_file({**good, "valid": torch.ones(1, 3, 3, dtype=torch.uint8)}, path / WEIGHTS)
    digest = hashlib.sha256((path / WEIGHTS).read_bytes()).hexdigest()
    edit_config(path, lambda c: c["files"].update({WEIGHTS: digest}))
    with pytest.raises(ValueError, match=r"'valid' mask has shape \(1, 3, 3\), not \(1, 16, 16\)"):
        xd.load(path)


def test_unknown_weight_file_is_refused(tiny_model, tmp_path):
    import hashlib

    path = tmp_path / "m"
    tiny_model.save(path)
    save_file({"x": torch.zeros(1)}, path / "extra.safetensors")
    digest = hashlib.sha256((path / "extra.safetensors").read_bytes()).hexdigest()
    edit_config(path, lambda c: c["files"].update({"extra.safetensors": digest}))
    with pytest.raises(ValueError, match=r"unknown weight files \['extra.safetensors'\]"):
        xd.load(path)


# ------------------------------------------------------------------ permissions
@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_files_honour_the_umask(tiny_model, tmp_path, umask):
    old = os.umask(umask)
    try:
        path = tmp_path / "m"
        tiny_model.save(path)
        ckpt = tmp_path / "one.txt"
        persistence.atomic_write(ckpt, lambda tmp: Path(tmp).write_text("x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o777 & ~umask
    for f in path.iterdir():
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o666 & ~umask, f.name
    assert stat.S_IMODE(os.stat(ckpt).st_mode) == 0o666 & ~umask


SAVE_LOOP = textwrap.dedent(
    """
    import sys
    import xdiffusion as xd

    models = [xd.load(sys.argv[1]), xd.load(sys.argv[2])]
    print("ready", flush=True)
    i = 0
    while True:  # until killed
        models[i % 2].save(sys.argv[3])
        i += 1
    """
)
KILLS = 5


def test_sigkill_during_repeated_saves_always_leaves_a_loadable_model(
    tiny_model, other_model, tmp_path
):
    """A real process saving over an existing model, killed at random moments, again and
    again: every time, the path holds one of the two models, whole."""
    import random
    import signal

    a, b, path = tmp_path / "a", tmp_path / "b", tmp_path / "m"
    tiny_model.save(a)
    other_model.save(b)
    tiny_model.save(path)
    rng = random.Random(0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for _ in range(KILLS):
        proc = subprocess.Popen(
            [sys.executable, "-c", SAVE_LOOP, str(a), str(b), str(path)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.05, 0.6))  # several saves run in this time
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        got = xd.load(path)
        assert state_equal(got, tiny_model) or state_equal(got, other_model)
    other_model.save(path)  # the next save clears what the killed ones left behind
    assert state_equal(xd.load(path), other_model)
    assert hidden_leftovers(tmp_path) == [".a.lock", ".b.lock", "a", "b"]


# ------------------------------------------------------------------ new fields, provenance


def test_file_from_before_conv_pad_loads_with_zero_padding(tiny_model, tmp_path):
    """A network setting added later takes the value old files' networks had."""
    path = tmp_path / "m"
    tiny_model.save(path)
    edit_config(path, lambda cfg: cfg["net"].pop("conv_pad"))
    old = xd.load(path)
    assert old.net_config.conv_pad == "zeros"
    assert old.module.net.out_conv.padding_mode == "zeros"
    assert state_equal(old, tiny_model)


def test_has_model_and_digests_local_and_remote(tiny_model, tmp_path):
    import hashlib

    import fsspec

    url = f"memory://xdiffusion-test-{uuid.uuid4().hex}/m"
    fs, root = fsspec.core.url_to_fs(url)
    try:
        for where in (tmp_path / "m", url):
            assert not persistence.has_model(where)
            tiny_model.save(where)
            assert persistence.has_model(where)
            loaded = xd.load(where)
            assert loaded.config_sha256 == tiny_model.config_sha256
            assert loaded.provenance["model"] == str(where)
        text = fs.cat_file(f"{root}/config.json")
        assert tiny_model.config_sha256 == hashlib.sha256(text).hexdigest()
    finally:
        fs.rm(root.rsplit("/", 1)[0], recursive=True)
    assert not persistence.has_model(tmp_path)  # a directory holding a model is not one
