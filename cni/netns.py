"""Network namespaces: what a path is, and the only setns in berth.

A socket keeps the namespace it was made in, and /proc/sys/net shows the
namespace of the thread that opens it; so entering a namespace is needed only
for those two, and only for a thread's moment (in_netns).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator

TYPE_CHECKING = False  # mypy treats this name as True: typing stays off the exec path
if TYPE_CHECKING:
    from typing import Any

CLONE_NEWNET = 0x40000000
OWN = "/proc/self/ns/net"


class NetnsNotFound(Exception):
    pass


class NotANetns(Exception):
    pass


class OwnNetns(NotANetns):
    """The path names the plugin's own network namespace (the node's), not a container's."""


def check(path: str) -> None:
    """Raise NetnsNotFound / NotANetns unless `path` is a network namespace.

    A bound netns file or /proc/<pid>/ns/net lives on nsfs, the same filesystem
    as our own /proc/self/ns/net; anything else (a plain file left in /run/netns
    after its mount went away, a directory) is not a namespace.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NetnsNotFound(path) from None
    except OSError as exc:
        raise NotANetns(f"{path}: {exc.strerror}") from None
    own = os.stat(OWN)
    if not stat.S_ISREG(st.st_mode) or st.st_dev != own.st_dev:
        raise NotANetns(path)


def check_container(path: str) -> None:
    """check(), and raise OwnNetns when `path` is the namespace this thread is in:
    a container's interface, addresses and routes must never land in the node's."""
    check(path)
    st, own = os.stat(path), os.stat("/proc/thread-self/ns/net")
    if (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino):
        raise OwnNetns(path)


@contextlib.contextmanager
def fd(path: str) -> Iterator[int]:
    """An open fd of the namespace at `path` (for IFLA_NET_NS_FD)."""
    check(path)
    handle = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        yield handle
    finally:
        os.close(handle)


_libc: Any = None


def _setns(handle: int) -> None:
    global _libc
    import ctypes  # lazy: os.setns is Python 3.12+

    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(handle, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def entered(path: str) -> Iterator[None]:
    """Run the body with this thread inside netns `path`: /proc/sys/net and new
    sockets belong to that netns. The original netns is always restored."""
    check(path)
    # thread-self: /proc/self is the main thread, which may be inside another netns right now
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)
