"""Allocation stores: the on-disk one (byte-compatible with upstream host-local) and
an in-memory fake for allocator tests.

Disk layout, as upstream's backend/disk writes it:
  <dataDir>/<network>/<ip>                   "<containerID>\\r\\n<ifname>" (no newline)
  <dataDir>/<network>/last_reserved_ip.<N>   the last address handed out from range set N
  <dataDir>/<network>/lock                   flock'ed for the whole operation
<ip> is the address's canonical text (RFC 5952 for IPv6, the same as Go's net.IP.String).

A reservation never leaves an empty or torn lease after a crash: the content is
written and fsync'ed under a temporary name, then link()ed to the final name
(EEXIST means taken, so the link is the atomic O_EXCL step), then the directory
is fsync'ed. Leftover temporaries carry a prefix that never parses as an address,
so upstream ignores them too; we sweep them under the lock.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from collections.abc import Iterator
from typing import Protocol

from cni import errors
from cni.errors import CNIError
from cni.state import flocked, fsync_dir
from ipam.ranges import IPAddress

LINE_BREAK = "\r\n"
LAST_IP_PREFIX = "last_reserved_ip."
LOCK_NAME = "lock"
TMP_PREFIX = ".berth-lease-"
DEFAULT_DATA_DIR = "/var/lib/cni/networks"
MAX_LEASE_BYTES = 4096
LOCK_TIMEOUT_SECONDS = 30.0  # then CNI code 11, try again later

Owner = tuple[str, str]  # (containerID, ifname); ifname "" for legacy leases holding only the ID


def lease_content(container_id: str, ifname: str) -> bytes:
    return f"{container_id.strip()}{LINE_BREAK}{ifname}".encode()


def parse_owner(data: bytes) -> Owner:
    text = data.decode("utf-8", "replace").strip()
    cid, _, ifname = text.partition(LINE_BREAK)
    return cid.strip(), ifname.strip()


def owner_matches(owner: Owner, container_id: str, ifname: str) -> bool:
    """A lease is ours if it names (id, ifname), or only our id (leases written before ifname was stored)."""
    cid, lease_ifname = owner
    return cid == container_id.strip() and lease_ifname in (ifname, "")


def address_of(name: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


class Store(Protocol):
    def lock(self, create: bool) -> contextlib.AbstractContextManager[bool]:
        """Hold the store lock; yields False (and locks nothing) if the store does not exist and create is False."""
        ...

    def reserve(self, container_id: str, ifname: str, addr: IPAddress, range_id: int) -> bool: ...

    def owner(self, addr: IPAddress) -> Owner | None: ...

    def last_reserved(self, range_id: int) -> IPAddress | None: ...

    def release(self, addr: IPAddress) -> None: ...

    def leases(self) -> dict[IPAddress, Owner]: ...


class MemoryStore:
    """In-memory Store for allocator tests."""

    def __init__(self) -> None:
        self.data: dict[IPAddress, Owner] = {}
        self.last: dict[int, IPAddress] = {}
        self.locked = False

    @contextlib.contextmanager
    def lock(self, create: bool) -> Iterator[bool]:
        assert not self.locked, "store lock is not re-entrant"
        self.locked = True
        try:
            yield True
        finally:
            self.locked = False

    def reserve(self, container_id: str, ifname: str, addr: IPAddress, range_id: int) -> bool:
        assert self.locked
        if addr in self.data:
            return False
        self.data[addr] = (container_id.strip(), ifname)
        self.last[range_id] = addr
        return True

    def owner(self, addr: IPAddress) -> Owner | None:
        return self.data.get(addr)

    def last_reserved(self, range_id: int) -> IPAddress | None:
        return self.last.get(range_id)

    def release(self, addr: IPAddress) -> None:
        assert self.locked
        self.data.pop(addr, None)

    def leases(self) -> dict[IPAddress, Owner]:
        return dict(self.data)


def _io_error(what: str, exc: OSError) -> CNIError:
    return CNIError(errors.IO_FAILURE, what, f"{exc.filename or ''}: {exc.strerror or exc}")


class DiskStore:
    """The upstream-compatible store under <data_dir>/<network>."""

    def __init__(self, data_dir: str, network: str) -> None:
        # The network name was validated (no '/', no leading '.'), so the join stays under data_dir.
        self.data_dir = data_dir
        self.directory = os.path.join(data_dir, network)

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    @contextlib.contextmanager
    def lock(self, create: bool) -> Iterator[bool]:
        if not os.path.isdir(self.directory):
            if not create:
                yield False
                return
            try:
                os.makedirs(self.directory, mode=0o700, exist_ok=True)
            except OSError as exc:
                raise _io_error(f"cannot create IPAM data directory {self.directory}", exc) from None
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(flocked(self._path(LOCK_NAME), LOCK_TIMEOUT_SECONDS))
            except OSError as exc:
                raise _io_error(f"cannot lock {self._path(LOCK_NAME)}", exc) from None
            self._sweep_temporaries()
            yield True

    def _sweep_temporaries(self) -> None:
        """Remove temporaries a crashed reservation left behind (we hold the lock, so none is live)."""
        for name in self._names():
            if name.startswith(TMP_PREFIX):
                with contextlib.suppress(OSError):
                    os.unlink(self._path(name))

    def _names(self) -> list[str]:
        try:
            return os.listdir(self.directory)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise _io_error(f"cannot read IPAM data directory {self.directory}", exc) from None

    def reserve(self, container_id: str, ifname: str, addr: IPAddress, range_id: int) -> bool:
        final = self._path(str(addr))
        tmp = self._path(f"{TMP_PREFIX}{os.getpid()}-{os.urandom(4).hex()}")  # `secrets` costs ~10 ms of imports
        try:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    os.write(fd, lease_content(container_id, ifname))
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.link(tmp, final)  # atomic, fails if the address is taken
            except FileExistsError:
                return False
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            self._write_last_reserved(range_id, addr)
            fsync_dir(self.directory)  # one directory sync makes both the link and the rename durable
        except OSError as exc:
            raise _io_error(f"cannot reserve {addr}", exc) from None
        return True

    def _write_last_reserved(self, range_id: int, addr: IPAddress) -> None:
        """tmp + rename so readers never see a torn address; no fsync: losing it only costs round robin."""
        final = self._path(f"{LAST_IP_PREFIX}{range_id}")
        tmp = self._path(f"{TMP_PREFIX}last-{os.getpid()}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, str(addr).encode())
            finally:
                os.close(fd)
            os.replace(tmp, final)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def owner(self, addr: IPAddress) -> Owner | None:
        # os.open/os.read, not open(): leases() reads every lease on each ADD/DEL
        # (retried-ADD and release-by-ID lookups), and a buffered file object
        # per lease doubles that cost at 1,000 leases
        try:
            fd = os.open(self._path(str(addr)), os.O_RDONLY | os.O_CLOEXEC)
            try:
                data = os.read(fd, MAX_LEASE_BYTES)
            finally:
                os.close(fd)
        except (FileNotFoundError, IsADirectoryError):
            return None
        except OSError as exc:
            raise _io_error(f"cannot read lease {addr}", exc) from None
        return parse_owner(data)

    def last_reserved(self, range_id: int) -> IPAddress | None:
        try:
            with open(self._path(f"{LAST_IP_PREFIX}{range_id}"), "rb") as fh:
                return address_of(fh.read(128).decode("ascii", "replace").strip())
        except OSError:
            return None  # only round-robin suffers, as upstream

    def release(self, addr: IPAddress) -> None:
        try:
            os.unlink(self._path(str(addr)))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _io_error(f"cannot release {addr}", exc) from None
        fsync_dir(self.directory)

    def leases(self) -> dict[IPAddress, Owner]:
        found: dict[IPAddress, Owner] = {}
        for name in self._names():
            addr = address_of(name)
            if addr is None or str(addr) != name:
                continue  # lock, last_reserved_ip.*, temporaries, anything foreign
            owner = self.owner(addr)
            if owner is not None:
                found[addr] = owner
        return found

    def writable_problem(self) -> str | None:
        """Why an ADD could not write here, or None (checked without writing anything)."""
        path = self.directory
        while not os.path.exists(path):
            parent = os.path.dirname(path.rstrip("/")) or "/"
            if parent == path:
                break
            path = parent
        if not os.path.isdir(path):
            return f"{path} is not a directory"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"{path} is not writable"
        try:
            if os.statvfs(path).f_flag & os.ST_RDONLY:
                return f"{path} is on a read-only file system"
        except OSError as exc:
            return f"{path}: {exc.strerror}"
        return None

