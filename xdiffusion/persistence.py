"""Model files: a directory with ``config.json`` and safetensors weights; never pickle.

This module knows the file format only (locations, atomic writes, hashes, schema check);
what the tensors mean is :mod:`xdiffusion.model`'s business.

``config.json`` carries a schema version and the SHA-256 of every weight file; loading
checks both, refuses weight-file names that leave the directory and weight files that are
symbolic links, and hands the tensor shapes (read from the safetensors headers, without
loading a tensor) to a ``check`` callback before anything is allocated.

Writing a local model is atomic per *directory*: the whole model is written into a
temporary sibling directory, flushed to disk, then swapped in (an atomic exchange where the
system has ``renameat2``, else rename-aside / rename-in / remove), so a crash at any instant
leaves the old model or the new one, never a mixture. Writers to one path are serialised by
an exclusive lock on the sibling file ``.<name>.lock`` (``fcntl.flock``; where ``fcntl`` is
missing, only writers in the same process are serialised). Files and directories get the
permissions the umask allows, as ``open`` would give them.

Paths may be ``~``-prefixed, ``file://`` URLs, or any other URL that :mod:`fsspec` knows
(``memory://``, ``s3://`` with s3fs installed, …). Remote models are written to a local
temporary directory and uploaded file by file, ``config.json`` last; an object store offers
no atomic directory rename, so an interrupted upload can leave a model that fails its hash
check (it is never silently wrong).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "CONFIG",
    "Shapes",
    "atomic_write",
    "bad_model",
    "file_mode",
    "has_model",
    "is_model_dir",
    "read_model",
    "resolve_location",
    "sha256_of",
    "write_model",
]

CONFIG = "config.json"

#: Tensor shapes of each weight file, read from the safetensors headers.
Shapes = dict[str, dict[str, tuple[int, ...]]]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+)://")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TMP_TAG = ".saving-"
_OLD_TAG = ".old-"


# ---------------------------------------------------------------------------- locations
def resolve_location(path: Any, name: str = "path") -> Path | str:
    """A local :class:`~pathlib.Path` or a remote URL for a model directory argument.

    ``~`` is expanded, ``file://`` URLs become local paths, other URLs are returned as they
    are once :mod:`fsspec` is known to handle their scheme.

    Parameters
    ----------
    path
        A str or os.PathLike.
    name
        The argument's name, for messages.

    Returns
    -------
    Path or str
        An absolute local path, or the URL.

    Raises
    ------
    TypeError
        For a value that is not a str or os.PathLike.
    ValueError
        For an empty path, a ``file://`` URL with a host, or a URL scheme that cannot be
        used (unknown to fsspec, or its package is not installed).
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(
            f"{name} must be the model directory (str or os.PathLike) written by model.save(), "
            f"got {type(path).__name__}"
        )
    text = os.fspath(path)
    if isinstance(text, bytes):
        raise TypeError(f"{name} must be a str or os.PathLike of str, got bytes {text!r}")
    if not text.strip():
        raise ValueError(f"{name} must name a model directory, got an empty string {text!r}")
    match = _SCHEME.match(text)
    if match:
        scheme = match.group(1).lower()
        if scheme == "file":
            parts = urlsplit(text)
            if parts.netloc not in ("", "localhost"):
                raise ValueError(
                    f"{name}={text!r}: a file:// URL must name a local path (file:///dir/model), "
                    f"not the host {parts.netloc!r}"
                )
            local = unquote(parts.path)
            if not local:
                raise ValueError(f"{name}={text!r} names no directory; use file:///dir/model")
            return Path(os.path.abspath(os.path.expanduser(local)))
        _filesystem_class(scheme, text, name)
        return text
    return Path(os.path.abspath(os.path.expanduser(text)))


def _filesystem_class(scheme: str, url: str, name: str = "path") -> Any:
    try:
        import fsspec
    except ImportError:  # pragma: no cover - fsspec comes with dask
        raise ValueError(
            f"{name}={url!r}: {scheme}:// URLs need fsspec (pip install fsspec), or pass a "
            f"local directory"
        ) from None
    try:
        return fsspec.get_filesystem_class(scheme)
    except ImportError as err:
        raise ValueError(
            f"{name}={url!r}: the {scheme}:// scheme needs a package that is not installed "
            f"({err}); install it, or save to a local directory"
        ) from None
    except ValueError:
        raise ValueError(
            f"{name}={url!r}: unknown URL scheme {scheme!r}; use a local directory, file://, "
            f"or a scheme fsspec knows (memory://, s3://, gs://, …)"
        ) from None


def _url_fs(url: str) -> tuple[Any, str]:
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    return fs, root.rstrip("/")


# ---------------------------------------------------------------------------- low level
def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (a symbolic link is not followed)."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0))
    with os.fdopen(fd, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _umask() -> int:
    # /proc tells the umask without changing it; os.umask() would briefly set it for every
    # thread of the process.
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    old = os.umask(0o022)
    os.umask(old)
    return old


def file_mode(directory: bool = False) -> int:
    """Permissions a new file (``0o666``) or directory (``0o777``) gets under the umask."""
    return (0o777 if directory else 0o666) & ~_umask()


def _fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory's entries (renames) to disk; a no-op where not supported."""
    if os.name == "nt":  # pragma: no cover - directories cannot be opened on Windows
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[str], Any]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then ``os.replace`` it in.

    The file is flushed to disk before the rename and gets the permissions the umask
    allows (``0o666 & ~umask``, not ``mkstemp``'s ``0o600``). A crash leaves either the old
    file or the new one, never a half-written one.

    Parameters
    ----------
    path
        The file to (re)place.
    write
        Called with the temporary file's name; writes the whole content there.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(path.parent)


_PROCESS_LOCKS: dict[str, threading.Lock] = {}
_PROCESS_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def _exclusive(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file``: a thread lock, and ``flock`` where it exists.

    The lock file is left in place: deleting it would let a waiting writer and a new one
    lock two different files.
    """
    key = os.path.normcase(str(lock_file))
    with _PROCESS_LOCKS_GUARD:
        thread_lock = _PROCESS_LOCKS.setdefault(key, threading.Lock())
    with thread_lock:
        if fcntl is None:  # pragma: no cover - Windows: this process only
            yield
            return
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _renameat2() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):  # pragma: no cover - old glibc, musl
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_RENAMEAT2 = _renameat2()
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directory entries (Linux ``renameat2``); False if unsupported."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False  # the file system (or a seccomp filter) does not offer the exchange
    raise OSError(err, os.strerror(err), str(b))


def _swap_in(new: Path, path: Path) -> None:
    """Put the directory ``new`` at ``path``; whatever was there is removed afterwards.

    On failure before the swap completes the old directory stays at ``path``.
    """
    parent = path.parent
    if not os.path.lexists(path):
        os.rename(new, path)
        _fsync_dir(parent)
        return
    if _exchange(new, path):  # ``new`` now holds the old model
        _fsync_dir(parent)
        _remove(new)
        return
    aside = parent / f".{path.name}{_OLD_TAG}{secrets.token_hex(4)}"
    os.rename(path, aside)
    try:
        os.rename(new, path)
    except BaseException:
        os.rename(aside, path)
        raise
    _fsync_dir(parent)
    _remove(aside)


def _remove(path: Path) -> None:
    """Delete a directory tree, a file or a link, ignoring errors."""
    if path.is_symlink() or path.is_file():
        with contextlib.suppress(OSError):
            path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def _remove_stale(parent: Path, name: str) -> None:
    """Remove temporary directories left by saves of ``name`` that were killed."""
    pattern = re.compile(rf"^\.{re.escape(name)}{re.escape(_TMP_TAG)}[A-Za-z0-9_]{{8}}$")
    with contextlib.suppress(OSError):
        for entry in parent.iterdir():
            if pattern.match(entry.name) and entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)


# ---------------------------------------------------------------------------- writing
def _json_text(config: Mapping[str, Any], hashes: Mapping[str, str]) -> str:
    return json.dumps({**config, "files": dict(hashes)}, indent=1, default=str)


def _check_file_name(name: Any) -> str | None:
    """Why ``name`` cannot be a weight-file name inside the model directory, or None."""
    if not isinstance(name, str) or not name:
        return f"weight file name {name!r} is not a non-empty string"
    seps = {"/", "\\", os.sep, os.altsep or "/"}
    if any(s in name for s in seps) or "\0" in name or name in (".", "..") or name == CONFIG:
        return (
            f"weight file name {name!r} is not a plain file name inside the model directory "
            f"(no path separators, '..', absolute paths or {CONFIG!r})"
        )
    if os.path.isabs(name) or (len(name) > 1 and name[1] == ":"):
        return f"weight file name {name!r} is an absolute path"
    return None


def _write_dir(
    directory: Path, config: Mapping[str, Any], files: Mapping[str, Any]
) -> dict[str, str]:
    """Write every weight file, then ``config.json``, into the empty ``directory``.

    Returns the SHA-256 of every file written, ``config.json`` included."""
    mode = file_mode()
    hashes = {}
    for name, tensors in files.items():
        why = _check_file_name(name)
        if why:
            raise ValueError(why)
        target = directory / name
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(target))
        os.chmod(target, mode)
        _fsync_file(target)
        hashes[name] = sha256_of(target)
    target = directory / CONFIG
    target.write_text(_json_text(config, hashes))
    os.chmod(target, mode)
    _fsync_file(target)
    os.chmod(directory, file_mode(directory=True))
    _fsync_dir(directory)
    return {**hashes, CONFIG: sha256_of(target)}


def _not_a_model_message(where: str) -> str:
    return (
        f"{where} exists, is not an xdiffusion model directory (no {CONFIG} with a "
        f"schema_version) and is not empty; saving there would delete what it holds. Choose "
        f"another path, or pass overwrite=True to replace the directory and all its contents"
    )


def _is_model_config(text: str | bytes) -> bool:
    try:
        config = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(config, dict) and "schema_version" in config


def is_model_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory holding a ``config.json`` with a ``schema_version``.

    Such a directory (an xdiffusion model, possibly damaged) may be replaced by
    :func:`write_model` without ``overwrite=True``.

    Parameters
    ----------
    path
        A local directory.

    Returns
    -------
    bool
    """
    config = Path(path) / CONFIG
    if not config.is_file() or config.is_symlink():
        return False
    try:
        return _is_model_config(config.read_bytes())
    except OSError:
        return False


def has_model(path: str | os.PathLike) -> bool:
    """Whether a model (a ``config.json`` with a ``schema_version``) is at ``path``: a local
    directory (:func:`is_model_dir`) or a URL (see :func:`resolve_location`).

    :func:`write_model` replaces such a model without ``overwrite=True``; the command line
    asks for ``--overwrite`` first.
    """
    location = resolve_location(path)
    if not isinstance(location, str):
        return is_model_dir(location)
    fs, root = _url_fs(location)
    config = f"{root}/{CONFIG}"
    try:
        return bool(fs.isfile(config)) and _is_model_config(fs.cat_file(config))
    except OSError:
        return False


def write_model(
    path: str | os.PathLike,
    config: Mapping[str, Any],
    files: Mapping[str, dict[str, Tensor]],
    *,
    overwrite: bool = False,
    digests: dict[str, str] | None = None,
) -> Path | str:
    """Write a model directory: each safetensors file, then ``config.json`` with their hashes.

    A local directory is written whole into a temporary sibling and swapped in, under an
    exclusive lock on ``.<name>.lock`` beside it, so concurrent writers are serialised and
    a failure or crash at any point leaves the previous model loadable. A URL
    (``memory://``, ``s3://``, …; see :func:`resolve_location`) is written locally and
    uploaded with fsspec, ``config.json`` last.

    Parameters
    ----------
    path
        Directory or URL (parents are created). An existing file there is refused; an
        existing directory is replaced if it is empty, is an xdiffusion model (has a
        ``config.json`` with a ``schema_version``), or ``overwrite`` is True.
    config
        JSON-serialisable configuration; ``"files"`` (name → SHA-256) is added.
    files
        File name → tensors (written contiguous, from the CPU). Names must be plain file
        names.
    overwrite
        Replace an existing non-empty directory that is not a model, with all its contents.
    digests
        If given, filled with file name → SHA-256 of every file written, ``config.json``
        included (what identifies the model, e.g. in the provenance of generated files).

    Returns
    -------
    Path or str
        The directory, or the URL.

    Raises
    ------
    ValueError
        For an unusable path (see :func:`resolve_location`), an existing file, or a
        non-empty non-model directory without ``overwrite=True``.
    """
    location = resolve_location(path)
    if isinstance(location, str):
        return _write_remote(location, config, files, overwrite=overwrite, digests=digests)
    path = location
    if path.is_symlink() and path.is_dir():
        path = Path(os.path.realpath(path))  # write where the link points; keep the link
    if not path.name:
        raise ValueError(f"path {str(path)!r} is a file-system root; name a directory in it")
    parent = path.parent
    existing = parent
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(
            f"path {str(path)!r} cannot be created: {str(existing)!r} exists and is not a "
            "directory; choose another path"
        )
    parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(parent / f".{path.name}.lock"):
        if path.exists():
            if not path.is_dir():
                raise ValueError(
                    f"path {str(path)!r} exists and is not a directory; choose another path "
                    f"or remove the file"
                )
            if not overwrite and not is_model_dir(path) and any(path.iterdir()):
                raise ValueError(_not_a_model_message(f"path {str(path)!r}"))
        _remove_stale(parent, path.name)
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{path.name}{_TMP_TAG}"))
        try:
            written = _write_dir(tmp, config, files)
            _swap_in(tmp, path)
            if digests is not None:
                digests.update(written)
        finally:
            if os.path.lexists(tmp):
                _remove(tmp)
    return path


def _write_remote(
    url: str,
    config: Mapping[str, Any],
    files: Mapping[str, Any],
    *,
    overwrite: bool,
    digests: dict[str, str] | None = None,
) -> str:
    fs, root = _url_fs(url)
    if fs.exists(root):
        if not fs.isdir(root):
            raise ValueError(
                f"path {url!r} exists and is not a directory; choose another path or remove it"
            )
        config_url = f"{root}/{CONFIG}"
        is_model = fs.isfile(config_url) and _is_model_config(fs.cat_file(config_url))
        if not is_model and fs.ls(root, detail=False):
            if not overwrite:
                raise ValueError(_not_a_model_message(f"path {url!r}"))
            fs.rm(root, recursive=True)
    with tempfile.TemporaryDirectory(prefix="xdiffusion-save-") as tmp:
        local = Path(tmp)
        written = _write_dir(local, config, files)
        fs.makedirs(root, exist_ok=True)
        for name in files:
            fs.put_file(str(local / name), f"{root}/{name}")
        fs.put_file(str(local / CONFIG), f"{root}/{CONFIG}")
    if digests is not None:
        digests.update(written)
    return url


# ---------------------------------------------------------------------------- reading
def bad_model(path: Any, why: str) -> ValueError:
    """The error for a directory that is not a loadable model."""
    return ValueError(f"{str(path)!r} is not a valid xdiffusion model: {why}")


def _interrupted_hint(path: Path) -> str:
    """Where a save killed between its two renames left the previous model, if anywhere."""
    if os.path.lexists(path) or not path.parent.is_dir():
        return ""
    prefix = f".{path.name}{_OLD_TAG}"
    with contextlib.suppress(OSError):
        for entry in sorted(path.parent.iterdir()):
            if entry.name.startswith(prefix) and is_model_dir(entry):
                return (
                    f"; a save was interrupted and left the previous model at {str(entry)!r}: "
                    f"rename it to {str(path)!r}"
                )
    return ""


def read_model(
    path: str | os.PathLike,
    *,
    schema_versions: Sequence[int],
    required: Sequence[str] = (),
    check: Callable[[dict[str, Any], Shapes], dict[str, Any] | None] | None = None,
    label: str | None = None,
    digests: dict[str, str] | None = None,
) -> tuple[dict[str, Any], dict[str, dict[str, Tensor]]]:
    """Read and verify a model directory (or URL) written by :func:`write_model`.

    Refuses, with ValueError, a missing or malformed ``config.json``, a schema version not
    in ``schema_versions``, missing ``required`` keys, weight-file names that are not plain
    names inside the directory, weight files that are missing, symbolic links, not
    safetensors, or whose SHA-256 differs from the recorded one. Only JSON and safetensors
    are read.

    Parameters
    ----------
    path
        The directory, or a URL (downloaded to a temporary directory first).
    schema_versions
        Accepted ``schema_version`` values.
    required
        Keys ``config.json`` must have.
    check
        Called as ``check(config, shapes)`` once the files are verified and before any
        tensor is loaded, with ``shapes`` file name → tensor name → shape from the
        safetensors headers; raises to refuse the model, may return a replacement config.
    label
        How messages name the model (default ``path``).
    digests
        If given, filled with file name → SHA-256 of every file read, ``config.json``
        included (of the bytes read, so that it identifies what was loaded).

    Returns
    -------
    config, files
        The configuration (without ``"files"``) and file name → tensors.
    """
    location = resolve_location(path)
    if isinstance(location, str):
        with tempfile.TemporaryDirectory(prefix="xdiffusion-load-") as tmp:
            _download(location, Path(tmp), label or location)
            return _read_local(
                Path(tmp),
                label or location,
                schema_versions=schema_versions,
                required=required,
                check=check,
                digests=digests,
            )
    return _read_local(
        location,
        label or str(path),
        schema_versions=schema_versions,
        required=required,
        check=check,
        digests=digests,
    )


def _download(url: str, local: Path, label: str) -> None:
    """Copy ``config.json`` and the weight files it names (and nothing else) to ``local``."""
    fs, root = _url_fs(url)
    if not fs.isfile(f"{root}/{CONFIG}"):
        raise bad_model(label, f"no {CONFIG} (pass the directory written by model.save())")
    fs.get_file(f"{root}/{CONFIG}", str(local / CONFIG))
    try:
        hashes = json.loads((local / CONFIG).read_text()).get("files")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return  # _read_local reports the malformed config
    if not isinstance(hashes, dict):
        return
    for name in hashes:
        if _check_file_name(name) is None and fs.isfile(f"{root}/{name}"):
            fs.get_file(f"{root}/{name}", str(local / name))


def _read_config(path: Path, label: str) -> tuple[dict[str, Any], str]:
    """The configuration in ``path``'s ``config.json`` and the SHA-256 of its bytes."""
    config_file = path / CONFIG
    if not config_file.is_file():
        raise bad_model(
            label,
            f"no {CONFIG} (pass the directory written by model.save())" + _interrupted_hint(path),
        )
    raw = config_file.read_bytes()
    try:
        config = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise bad_model(label, f"{CONFIG} is not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise bad_model(label, f"{CONFIG} must hold a JSON object")
    return config, hashlib.sha256(raw).hexdigest()


def _header_shapes(f: Path, name: str, label: str) -> dict[str, tuple[int, ...]]:
    try:
        with safe_open(str(f), framework="pt") as handle:
            return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise bad_model(label, f"{name} is not a safetensors file ({err})") from None


def _read_local(
    path: Path,
    label: str,
    *,
    schema_versions: Sequence[int],
    required: Sequence[str],
    check: Callable[[dict[str, Any], Shapes], dict[str, Any] | None] | None,
    digests: dict[str, str] | None = None,
) -> tuple[dict[str, Any], dict[str, dict[str, Tensor]]]:
    config, config_digest = _read_config(path, label)
    version = config.get("schema_version")
    if version not in schema_versions or isinstance(version, bool):
        raise bad_model(
            label,
            f"schema_version {version!r} is not supported (expected one of "
            f"{list(schema_versions)}); a newer xdiffusion may read it",
        )
    for key in (*required, "files"):
        if key not in config:
            raise bad_model(label, f"{CONFIG} lacks the key {key!r}")
    hashes = config.pop("files")
    if not isinstance(hashes, dict) or not hashes:
        raise bad_model(label, f"{CONFIG} records no weight files")
    for name, digest in hashes.items():  # every name before any file is opened
        why = _check_file_name(name)
        if why:
            raise bad_model(label, f"{CONFIG} lists {why}; it must not be opened")
        if not isinstance(digest, str) or not _SHA256.match(digest):
            raise bad_model(label, f"{CONFIG} records {digest!r} for {name}, not a SHA-256")
    shapes: Shapes = {}
    for name, digest in hashes.items():
        f = path / name
        if f.is_symlink():
            raise bad_model(
                label,
                f"weight file {name} is a symbolic link; copy the file itself into the model "
                f"directory",
            )
        if not f.is_file():
            raise bad_model(label, f"weight file {name} is missing")
        if sha256_of(f) != digest:
            raise bad_model(label, f"{name} does not match the SHA-256 recorded in {CONFIG}")
        shapes[name] = _header_shapes(f, name, label)
    if check is not None:
        replaced = check(config, shapes)
        if replaced is not None:
            config = replaced
    files = {}
    for name in hashes:
        try:
            files[name] = load_file(path / name)
        except (SafetensorError, OSError) as err:
            raise bad_model(label, f"{name} is not a safetensors file ({err})") from None
    if digests is not None:
        digests.update({**hashes, CONFIG: config_digest})
    return config, files
