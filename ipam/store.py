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

Finding an attachment's leases without reading every lease
----------------------------------------------------------------------
Upstream answers "which addresses does (containerID, ifname) hold" by reading every
file of the network directory; so did we, on every ADD (retried-ADD lookup) and DEL:
O(leases). We keep hints outside the upstream layout:

  <dataDir>/.berth-ipam-hints/<network>/<key>/<ip>   empty file: "key may hold ip"
      key = blake2b-128 of "<containerID>\n<ifname>" as parse_owner reads the lease back
  <dataDir>/<network>/lock                          its content: the seal (below), or empty

Why there: a name starting with "." is never a valid network name, so upstream (which
only opens <dataDir>/<network>) never walks, reads or removes a hint, and the network
directory keeps exactly upstream's files (a subdirectory there would be walked by
upstream's filepath.Walk and listed by tools). Hint files are empty and the seal has
spaces and no "\r": neither can equal "<id>\r\n<ifname>" or a bare ID after upstream's
TrimSpace, so a reader that does open them never takes one for a lease. Empty files
and directories are metadata only, nothing to flush (one hint file per attachment,
rewritten by tmp + rename, made every ADD several times slower: ext4 flushes a
renamed-over file's data on commit).

A hint is only a pointer: every address it names is checked against the lease file's
content before it is believed (and dropped when it is stale), so a hint naming an
address released or re-leased to someone else, by us, the reference or an old berth,
costs one read and is harmless. What must never happen is a lease its owner's hints
do not name. Invariant H: every lease file in the network directory is named by the
hint of the owner its content names. We keep H ourselves: reserve() creates the hint
*before* link()ing the lease (and drops it if the link fails); release() unlinks the
lease *before* dropping the hint. A SIGKILL between any two steps leaves at worst a
hint naming an address that is not ours (tests/unit/test_ipam_hints.py kills after
every system call of ADD and DEL and checks H on disk).

Others can break H: the reference host-local, an old berth, a crash across a reboot
(hints are not fsync'ed), an operator. So H is trusted only under a seal, written in
the lock file at the end of every locked operation (still under the lock):
  "berth-ipam-index 1 <boot_id> <dev> <ino> <mtime_ns> <hints ino> <hints mtime_ns> backdated"
Every lease created or removed, by anyone, changes the network directory's mtime, so
at the next locked operation a seal that still matches (one stat of each directory)
means nobody but us created or removed a lease since H last held. Anything else (no
seal, a reference ADD or DEL, an old berth, a crash after a change, a reboot: boot_id,
a recreated directory: inode) and we take the full scan once, under the lock, and make
the hints match it (also sweeping temporaries: only a crash leaves them, and a crash
after creating one leaves the mtime changed). GC always takes the full scan, so it
also cleans hints. So the reference writing a lease into a sealed directory costs the
next berth operation one scan, and is then found like any other; the same holds for
the reference releasing an address and handing the same file name to someone else.

The mtime is only a witness if no later change can get the same timestamp: a change
in the same clock tick as ours could. So the seal first sets both directories' mtimes
BACKDATE_SECONDS into the past (utimensat; upstream never looks at them) and records
those: every later change, by anyone, is stamped with the current time, coarse or
fine-grained, and truncated to the file system's granularity (≤ 2 s, FAT) it is still
later than the backdated stamp, so it shows. No waiting for the clock, whatever the
file system's timestamp granularity.
Residual risks, accepted: a lease created by hand without the lock while we hold it,
a clock stepped back by more than BACKDATE_SECONDS, an operator deleting single hint files.

Cost of ADD and DEL: two stats, one pread and one pwrite of the seal, one listdir of
the owner's hint directory (two with the legacy ID-only key), one read per hinted
address, one hint created (ADD) or dropped (DEL): flat in the number of leases. The
full scan is paid once per foreign change, crash or boot, and the very first
operation on a directory without hints creates them all once (docs/ipam.md).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import time
from _blake2 import blake2b  # builtin: hashlib would import OpenSSL on every exec
from collections.abc import Iterable, Iterator

from cni import errors, sysctl
from cni.errors import CNIError
from cni.files import flocked, fsync_dir, private_dirs
from ipam.ranges import IPAddress

TYPE_CHECKING = False  # mypy treats this name as True: typing stays off the exec path
if TYPE_CHECKING:
    from typing import Protocol
else:
    Protocol = object  # the interface needs no checking at run time

LINE_BREAK = "\r\n"
LAST_IP_PREFIX = "last_reserved_ip."
LOCK_NAME = "lock"
TMP_PREFIX = ".berth-lease-"
DEFAULT_DATA_DIR = "/var/lib/cni/networks"
MAX_LEASE_BYTES = 4096
HINTS_DIR = ".berth-ipam-hints"  # <dataDir>/.berth-ipam-hints/<network>/: never a valid network name
SEAL_MAGIC = "berth-ipam-index 1"
BACKDATE_SECONDS = 10  # past any file system's timestamp granularity (FAT: 2 s)
SEAL_SUFFIX = "backdated\n"
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


def owner_key(container_id: str, ifname: str) -> str:
    """The hint directory name of an owner, as parse_owner reads it back from its lease."""
    return blake2b(f"{container_id.strip()}\n{ifname.strip()}".encode(), digest_size=16).hexdigest()


def boot_id() -> str:
    """This boot's id ("" when unreadable)."""
    return sysctl.boot_id()


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

    def held_by(self, container_id: str, ifname: str) -> list[IPAddress]:
        """Addresses whose lease names (id, ifname) or only id, sorted."""
        ...


def _sorted(addrs: Iterable[IPAddress]) -> list[IPAddress]:
    return sorted(set(addrs), key=lambda a: (a.version, int(a)))


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

    def held_by(self, container_id: str, ifname: str) -> list[IPAddress]:
        return _sorted(a for a, o in self.data.items() if owner_matches(o, container_id, ifname))


def _io_error(what: str, exc: OSError) -> CNIError:
    return CNIError(errors.IO_FAILURE, what, f"{exc.filename or ''}: {exc.strerror or exc}")


class DiskStore:
    """The upstream-compatible store under <data_dir>/<network>, with hints (see the module docstring)."""

    def __init__(self, data_dir: str, network: str) -> None:
        # The network name was validated (no '/', no leading '.'), so the join stays under data_dir.
        self.data_dir = data_dir
        self.directory = os.path.join(data_dir, network)
        self.hint_root = os.path.join(data_dir, HINTS_DIR)
        self.hint_dir = os.path.join(self.hint_root, network)
        self._reset()

    def _reset(self) -> None:
        """Per-operation state; meaningful only while the lock is held."""
        self._locked = False
        self._lock_fd: int | None = None
        self._seal_read = b""
        self._trusted = False  # invariant H holds on disk, as far as this operation knows
        self._all: dict[IPAddress, Owner] | None = None  # every lease, when this operation scanned

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    @contextlib.contextmanager
    def lock(self, create: bool) -> Iterator[bool]:
        if not os.path.isdir(self.directory):
            if not create:
                yield False
                return
            try:
                private_dirs(self.data_dir, self.directory)  # dataDir too, when it is made here
            except OSError as exc:
                raise _io_error(f"cannot create IPAM data directory {self.directory}", exc) from None
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(flocked(self._path(LOCK_NAME), LOCK_TIMEOUT_SECONDS))
            except OSError as exc:
                raise _io_error(f"cannot lock {self._path(LOCK_NAME)}", exc) from None
            self._begin()
            try:
                yield True
            except Exception:
                self._end()  # H still holds: every step keeps it (module docstring), errors or not
                raise
            except BaseException:
                self._end(seal=False)
                raise
            self._end()

    # --- the seal ----------------------------------------------------------------

    def _stamp(self) -> bytes | None:
        """The seal line for the directories' current state (None: no boot id or directory)."""
        boot = boot_id()
        if not boot:
            return None
        try:
            net, hints = os.stat(self.directory), os.stat(self.hint_dir)
        except OSError:
            return None
        return (f"{SEAL_MAGIC} {boot} {net.st_dev} {net.st_ino} {net.st_mtime_ns} "
                f"{hints.st_ino} {hints.st_mtime_ns} {SEAL_SUFFIX}").encode()

    def _begin(self) -> None:
        self._reset()
        self._locked = True
        with contextlib.suppress(OSError):
            self._lock_fd = os.open(self._path(LOCK_NAME), os.O_RDWR | os.O_CLOEXEC)
            self._seal_read = os.pread(self._lock_fd, 512, 0)
        stamp = self._stamp()
        self._trusted = stamp is not None and self._seal_read == stamp
        if not self._trusted:
            self._sweep_temporaries()
            self._rebuild()

    def _end(self, seal: bool = True) -> None:
        fd = self._lock_fd
        try:
            if fd is None:
                return
            record = self._seal_record() if seal and self._trusted else b""
            if record != self._seal_read:
                with contextlib.suppress(OSError):
                    os.pwrite(fd, record, 0)
                    if len(record) < len(self._seal_read):
                        os.ftruncate(fd, len(record))
        finally:
            if fd is not None:
                os.close(fd)
            self._reset()

    def _seal_record(self) -> bytes:
        """The seal to leave after backdating both directories' mtimes (module docstring), or b""."""
        back = time.time_ns() - BACKDATE_SECONDS * 1_000_000_000
        try:
            for path in (self.directory, self.hint_dir):
                os.utime(path, ns=(back, back))
        except OSError:
            return b""  # no seal: the next operation scans
        return self._stamp() or b""

    # --- hints: <hint_dir>/<owner key>/<ip>, empty files -----------------------------

    def _hinted(self, key: str) -> list[str]:
        try:
            return os.listdir(os.path.join(self.hint_dir, key))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def _add_hint(self, key: str, ip: str) -> bool:
        """Point key at ip, before the lease is linked. On failure H may break: no seal, the next operation scans."""
        directory = os.path.join(self.hint_dir, key)
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(directory, 0o700)
            os.close(os.open(os.path.join(directory, ip), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        except OSError:
            self._trusted = False
            return False
        return True

    def _drop_hint(self, key: str, ip: str) -> None:
        """Forget a pointer whose lease is gone or not key's: never breaks H."""
        directory = os.path.join(self.hint_dir, key)
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(directory, ip))
        with contextlib.suppress(OSError):
            os.rmdir(directory)  # ENOTEMPTY: the owner holds other addresses

    def _rebuild(self) -> None:
        """The full scan: every lease read, the hints made to match it exactly (module docstring)."""
        found = self._scan_named()
        self._all = {addr: owner for _, addr, owner in found}
        want: dict[str, set[str]] = {}
        for name, _, owner in found:
            want.setdefault(owner_key(*owner), set()).add(name)
        self._trusted = False
        try:
            for path in (self.hint_root, self.hint_dir):
                with contextlib.suppress(FileExistsError):
                    os.mkdir(path, 0o700)
            with os.scandir(self.hint_dir) as entries:
                present = {e.name: e.is_dir(follow_symlinks=False) for e in entries}
            have: dict[str, set[str]] = {}
            for name, is_dir in present.items():
                path = os.path.join(self.hint_dir, name)
                if not is_dir:
                    os.unlink(path)
                    continue
                keep = want.get(name, set())
                have[name] = set(os.listdir(path))
                for ip in have[name] - keep:
                    os.unlink(os.path.join(path, ip))
                if not keep:
                    os.rmdir(path)
        except OSError:
            return  # no hints this time: this operation uses the scan, and leaves no seal
        self._trusted = True
        for key, ips in want.items():
            for ip in sorted(ips - have.get(key, set())):
                if not self._add_hint(key, ip):
                    return

    # --- the Store interface ----------------------------------------------------------

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
        if os.path.lexists(final):
            return False  # taken: no need to touch the hints
        owner = (container_id.strip(), ifname.strip())
        key, ip = owner_key(*owner), str(addr)
        # the hint goes first, so that the lease is never on disk without it (invariant H)
        added = self._locked and ip not in self._hinted(key) and self._add_hint(key, ip)
        tmp = self._path(f"{TMP_PREFIX}{os.getpid()}-{os.urandom(4).hex()}")  # os.urandom: `secrets` is a heavy import
        linked = False
        try:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    os.write(fd, lease_content(container_id, ifname))
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.link(tmp, final)  # atomic, fails if the address is taken
                linked = True
            except FileExistsError:
                return False
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                if added and not linked:
                    self._drop_hint(key, ip)  # the address is not ours
            if self._all is not None:
                self._all[addr] = owner
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
        return self._read_owner(str(addr))

    def _read_owner(self, name: str) -> Owner | None:
        # os.open/os.read, not open(): the full scan reads every lease this way
        try:
            fd = os.open(self._path(name), os.O_RDONLY | os.O_CLOEXEC)
            try:
                data = os.read(fd, MAX_LEASE_BYTES)
            finally:
                os.close(fd)
        except (FileNotFoundError, IsADirectoryError):
            return None
        except OSError as exc:
            raise _io_error(f"cannot read lease {name}", exc) from None
        return parse_owner(data)

    def last_reserved(self, range_id: int) -> IPAddress | None:
        try:
            with open(self._path(f"{LAST_IP_PREFIX}{range_id}"), "rb") as fh:
                return address_of(fh.read(128).decode("ascii", "replace").strip())
        except OSError:
            return None  # only round-robin suffers, as upstream

    def release(self, addr: IPAddress) -> None:
        owner = self.owner(addr) if self._locked else None
        try:
            os.unlink(self._path(str(addr)))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _io_error(f"cannot release {addr}", exc) from None
        if self._all is not None:
            self._all.pop(addr, None)
        fsync_dir(self.directory)
        if owner is not None:  # after the unlink: a crash in between leaves a stale hint, never a hidden lease
            self._drop_hint(owner_key(*owner), str(addr))

    def _scan_named(self) -> list[tuple[str, IPAddress, Owner]]:
        found = []
        for name in self._names():
            addr = address_of(name)
            if addr is None or str(addr) != name:
                continue  # lock, last_reserved_ip.*, temporaries, anything foreign
            owner = self._read_owner(name)
            if owner is not None:
                found.append((name, addr, owner))
        return found

    def _scan(self) -> dict[IPAddress, Owner]:
        return {addr: owner for _, addr, owner in self._scan_named()}

    def leases(self) -> dict[IPAddress, Owner]:
        """Every lease, read from disk; under the lock this is the full scan, which also rewrites the hints (GC)."""
        if not self._locked:
            return self._scan()
        if self._all is None:
            self._rebuild()
        assert self._all is not None
        return dict(self._all)

    def held_by(self, container_id: str, ifname: str) -> list[IPAddress]:
        if self._all is None and self._locked and self._trusted:
            found: list[IPAddress] = []
            for lease_ifname in {ifname.strip(), ""}:  # "": leases written before ifname was stored
                key = owner_key(container_id, lease_ifname)
                for ip in self._hinted(key):
                    addr = address_of(ip)
                    lease = self.owner(addr) if addr is not None and str(addr) == ip else None
                    if addr is not None and lease is not None and owner_matches(lease, container_id, ifname) \
                            and owner_key(*lease) == key:
                        found.append(addr)
                    else:
                        self._drop_hint(key, ip)  # stale: released, or someone else's since
            return _sorted(found)
        leases = self._all if self._all is not None else self._scan()
        return _sorted(a for a, o in leases.items() if owner_matches(o, container_id, ifname))

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

