"""How berth writes files: atomically (tmp + rename, fsync'ed when asked) and
under flocks that time out instead of wedging (CNI code 11)."""

from __future__ import annotations

import fcntl
import os
import time

from cni import ctx, errors
from cni.errors import CNIError

LOCK_TIMEOUT_SECONDS = 30.0


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, mode: int = 0o600, durable: bool = True, tmp: str | None = None) -> None:
    """tmp + rename; `durable` adds an fsync of the data before and of the directory after.
    A writer holding the lock all writers of `path` take passes tmp=locked_tmp(path):
    what a kill leaves under that name is overwritten by the next write, not left forever."""
    directory = os.path.dirname(path)
    tmp = tmp or f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        try:
            view = memoryview(data)
            while view:  # os.write may write less than asked (ENOSPC edge, signals)
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with ctx.suppress(OSError):
            os.unlink(tmp)  # never leave a stray .tmp behind
        raise
    if durable:
        fsync_dir(directory)


TMP_SUFFIX = ".tmp"


def locked_tmp(path: str) -> str:
    """The one temporary name of `path` for writers that hold its lock."""
    return path + TMP_SUFFIX


def remove_temporaries(directory: str) -> list[str]:
    """Unlink every temporary in `directory` (`*.tmp`, and the `*.tmp.<pid>` of
    writers before locked_tmp): only a killed writer leaves one, and the caller
    holds the lock every writer there takes."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    removed = []
    for name in names:
        if name.endswith(TMP_SUFFIX) or f"{TMP_SUFFIX}." in name:
            with ctx.suppress(OSError):
                os.unlink(os.path.join(directory, name))
                removed.append(name)
    return removed


def private_dirs(root: str, path: str) -> None:
    """mkdir -p `path` below `root`: `root` and what this makes below it are 0700.
    A missing ancestor of `root` is made as mkdir -p makes it (it is the system's:
    /var/lib/cni is shared with other plugins); existing directories keep their modes."""
    if not os.path.isdir(root):
        parent = os.path.dirname(root.rstrip("/"))
        if parent:
            os.makedirs(parent, exist_ok=True)
        with ctx.suppress(FileExistsError):
            os.mkdir(root, 0o700)
    os.makedirs(path, mode=0o700, exist_ok=True)


class flocked:  # lower case: used as `with flocked(path):`, as the function it replaced
    """Hold an exclusive flock on `path`; give up with CNI code 11 after `timeout`
    (code 5 when the lock file cannot be opened at all). A class, not a
    contextlib generator: the plugin exec path does without contextlib."""

    __slots__ = ("fd", "path", "timeout")

    def __init__(self, path: str, timeout: float = LOCK_TIMEOUT_SECONDS) -> None:
        self.path, self.timeout, self.fd = path, timeout, -1

    def __enter__(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise CNIError(errors.IO_FAILURE, f"cannot open lock {self.path}", exc.strerror or str(exc)) from None
        try:
            deadline = time.monotonic() + self.timeout
            delay = 0.001
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise CNIError(errors.TRY_AGAIN_LATER, f"timed out waiting for lock {self.path}") from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.05)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def __exit__(self, *exc: object) -> None:
        fd, self.fd = self.fd, -1
        os.close(fd)  # closing releases the lock; a dead holder never wedges us
