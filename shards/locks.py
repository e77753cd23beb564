"""One writer per folder: an advisory lock file holding its holder's pid, host and start time.

The lock is ``flock(LOCK_EX | LOCK_NB)`` on a file created next to what it guards. The kernel
releases it when the holder's process ends, however it ends (a SIGKILL included), so a lock left
by a dead process is simply taken over; a live holder makes :func:`hold_lock` raise
:class:`LockHeld`, which names the holder and the lock file (an OSError: the CLIs exit with 2).
On NFS, Linux maps ``flock`` onto byte-range locks, so the lock holds across hosts too.

The lock is re-entrant within a process (a build run by the watcher takes its output's lock
again), and its file is removed on release: after locking, the path is checked to still name the
locked file, so a holder that just removed it cannot be raced into two holders.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import stat
import threading
from pathlib import Path
from typing import Iterator

from ._schema import utc_now

_logger = logging.getLogger(__name__)

_held: dict[str, int] = {}          # lock path -> depth, for this process
_held_guard = threading.Lock()


class LockHeld(OSError):
    """Another live process holds the lock (the message names it and the lock file)."""

    def __init__(self, message: str, holder: dict, path: Path):
        super().__init__(message)
        self.holder = holder
        self.path = path

    def __str__(self) -> str:
        return str(self.args[0])


def sibling_lock_path(directory: str | Path, tag: str) -> Path:
    """``<parent>/.<name>.<tag>.lock``: beside ``directory`` rather than in it, so that a folder
    another program creates or checks for emptiness (a run directory, a data set) stays untouched."""
    resolved = Path(directory).expanduser().resolve()
    if not resolved.name:
        raise ValueError(f"{directory}: cannot lock the file-system root")
    return resolved.parent / f".{resolved.name}.{tag}.lock"


@contextlib.contextmanager
def hold_lock(path: str | Path, what: str) -> Iterator[dict]:
    """Hold the lock file ``path`` for the body; yield the holder record written into it.

    Args:
        path: the lock file (created, with its parent folders, when missing).
        what: what the lock guards, for the error (e.g. ``"run directory runs/c10 (actgen-build --watch)"``).

    Raises:
        LockHeld: a live process holds it; the message names its pid, host and start time.
    """
    path = Path(path).absolute()
    key = str(path)
    with _held_guard:
        if key in _held:
            _held[key] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield _read_holder_path(path)
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    fd = _acquire(path, what)
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": utc_now(), "what": what}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        os.fsync(fd)
    except OSError:
        pass   # the record is a courtesy for the error message; the flock is the lock
    with _held_guard:
        _held[key] = 1
    _logger.debug("holding %s", path)
    try:
        yield holder
    finally:
        with _held_guard:
            del _held[key]
        # Removed while still locked: a process that opened the old file before this unlink finds
        # its path gone after locking it (see _acquire) and starts over on a new file.
        try:
            path.unlink()
        except OSError:
            pass
        os.close(fd)


def _acquire(path: Path, what: str) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = _open_lock_file(path, what)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder_fd(fd)
            os.close(fd)
            raise LockHeld(f"{what} is in use by {describe_holder(holder)} (lock file {path}); "
                           "wait for it to finish, or stop it first", holder, path) from None
        except OSError as e:   # a file system without locks (ENOLCK, EOPNOTSUPP)
            os.close(fd)
            raise OSError(e.errno, f"cannot lock {path} for {what} ({e.strerror}); put it on a file system "
                                   "with file locks") from None
        except BaseException:
            os.close(fd)
            raise
        try:
            current = os.lstat(path)
        except FileNotFoundError:
            current = None
        mine = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
            return fd
        os.close(fd)   # the holder released and removed it between our open and our lock: again


def describe_holder(holder: dict) -> str:
    """``pid 123 on host h (since 2025-01-01T00:00:00Z)``, or what is known of it."""
    if not holder.get("pid"):
        return "another process (it has not written its pid yet)"
    since = f" (since {holder['since']})" if holder.get("since") else ""
    return f"pid {holder['pid']} on host {holder.get('host', '?')}{since}"


def _read_holder_fd(fd: int) -> dict:
    try:
        data = os.pread(fd, 4096, 0)
        holder = json.loads(data.decode("utf-8")) if data.strip() else {}
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _open_lock_file(path: Path, what: str) -> int:
    """Open (or create) the lock file itself, never what a symbolic link planted at its path
    points to: run folders sit on shared file systems where others can write beside them, and
    a followed link would have the lock record written into any file the link names."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP or path.is_symlink():
            raise OSError(errno.ELOOP, f"lock file {path} for {what} is a symbolic link; refusing to follow it "
                                       "(remove the link)") from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"lock file {path} for {what} is not a regular file; remove it")
    if info.st_nlink > 1:
        # A hard link planted at the lock path would have the lock record written into the file it
        # shares (where fs.protected_hardlinks is 0, anyone's file).
        os.close(fd)
        raise OSError(errno.EMLINK, f"lock file {path} for {what} has {info.st_nlink} links (a hard link to "
                                    "another file); refusing to write it (remove it)")
    return fd


def _read_holder_path(path: Path) -> dict:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return {}
    try:
        return _read_holder_fd(fd) if stat.S_ISREG(os.fstat(fd).st_mode) else {}
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (one owned by another user counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True
