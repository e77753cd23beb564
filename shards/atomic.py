"""Atomic file and directory writes: write a temporary sibling, fsync, then rename into place.

A reader therefore sees either the old complete file/directory or the new complete one, never a
half-written one, even if the writer crashes part way.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

_logger = logging.getLogger(__name__)

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def temp_sibling(path: str | Path, tag: str = "tmp") -> Path:
    """A unique hidden name next to ``path`` (same file system, so a rename is atomic).

    Hidden (leading dot) and suffixed, so that shard globs such as ``synth-*.tar`` never match it.
    """
    path = Path(path)
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def fsync_dir(directory: str | Path) -> None:
    """fsync a directory so that renames inside it survive a power loss."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some file systems (and Windows) cannot open directories; nothing to sync
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp sibling, fsync, ``os.replace``)."""
    path = Path(path)
    tmp = temp_sibling(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """UTF-8 text version of :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _fsync_tree(directory: Path) -> None:
    for root, _dirs, files in os.walk(directory):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(root)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step with Linux ``renameat2(RENAME_EXCHANGE)``; False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_directory(new: str | Path, target: str | Path) -> None:
    """Move the complete directory ``new`` to ``target``, replacing any existing ``target``.

    Where the kernel supports it the swap is a single atomic exchange; otherwise the old directory
    is first renamed aside, so that ``target`` is briefly absent but never half written.
    """
    new, target = Path(new), Path(target)
    if not target.exists():
        os.rename(new, target)
    elif _exchange(new, target):
        shutil.rmtree(new)  # `new` now holds the old contents
    else:
        old = temp_sibling(target, "old")
        os.rename(target, old)
        os.rename(new, target)
        shutil.rmtree(old)
    fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Build a directory in a temporary sibling, then move it to ``target`` in one step.

    Yields the temporary directory to fill. On an exception the temporary directory is removed and
    ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(target)
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        replace_directory(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
