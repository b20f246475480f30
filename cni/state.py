"""Per-attachment journal: what an ADD created, so DEL/CHECK/GC can work without
the runtime's help (empty netns, no prevResult, second DEL, after a reboot).

Layout: <root>/<network>/<containerID>:<ifname>.json, one JSON object with one
section per plugin ("bridge", "portmap", ...). Neither a container ID nor an
interface name may contain ":", so the name stands for one attachment only.
Berth before this layout wrote <containerID>-<ifname>.json, which two
attachments can share ("a" + "b-c" and "a-b" + "c"): such a file is still read,
and written, for the attachment its content names, never for another one
(see Journal.path); new attachments get the new name. Writes are atomic (tmp +
rename) under an flock on <root>/<network>/journal.lock, so a crashed or killed
plugin leaves either the old or the new file, never a torn one.

Journal writes are not fsync'ed (nor are portmap's port claims): they describe
kernel objects (veths, nft chains and elements), and only a power loss or a
kernel crash loses page-cache data, which takes those objects with it. After
such a reboot a journal may be missing, older, or empty; each of those is one
DEL/GC can work from (an empty file reads as no journal), and the durable state
that outlives a reboot, IPAM's leases, is fsync'ed by ipam.store and released by
IPAM DEL/GC without a journal. Saves 2-4 fsyncs per attachment.
"""

from __future__ import annotations

import errno
import os
import time

from cni import ctx, errors, jsonc
from cni.errors import CNIError
from cni.files import atomic_write, flocked, locked_tmp, private_dirs, remove_temporaries
from cni.records import Attachment

TYPE_CHECKING = False  # mypy treats this name as True: typing stays off the exec path
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any

DEFAULT_ROOT = "/var/lib/cni/berth"
STRICT_MARKER = ".isolate-strict"  # written while the node has a strict network (portmap/isolation.py)
MAX_EMPTY_CHECK_BYTES = 1 << 16  # an empty journal is never larger (a real one is a few hundred bytes)


def state_root(environ: Any = None) -> str:
    """BERTH_STATE_DIR overrides the default root (tests, non-standard nodes)."""
    env = os.environ if environ is None else environ
    return str(env.get("BERTH_STATE_DIR") or DEFAULT_ROOT)


def strict_marker(root: str) -> str:
    return os.path.join(root, STRICT_MARKER)


def strict_node(root: str) -> bool:
    """Has this node a strict network? Then every berth bridge belongs in the nft
    set `bridges`, also one of a network with neither ipMasq nor isolate."""
    return os.path.exists(strict_marker(root))


def make_dirs(path: str, root: str) -> None:
    """files.private_dirs() for the state root; CNI code 5 naming the root when it
    cannot be made (a regular file, /proc, a read-only file system)."""
    try:
        private_dirs(root, path)
    except OSError as exc:
        raise unusable(root, exc) from None


def unusable(root: str, exc: OSError) -> CNIError:
    return CNIError(errors.IO_FAILURE, f"state directory {root} is not usable (BERTH_STATE_DIR)",
                    f"{exc.filename or root}: {exc.strerror or exc}")


def journal_name(container_id: str, ifname: str) -> str:
    """The journal file name of an attachment: injective, as ":" is in neither part."""
    return f"{container_id}:{ifname}.json"


def legacy_journal_name(container_id: str, ifname: str) -> str:
    """The name berth used before journal_name: shared by ("a", "b-c") and ("a-b", "c")."""
    return f"{container_id}-{ifname}.json"


class Journal:
    """One attachment's journal file."""

    __slots__ = ("_path", "container_id", "ifname", "network", "root")

    def __init__(self, root: str, network: str, container_id: str, ifname: str) -> None:
        self.root = root
        self.network = network
        self.container_id = container_id
        self.ifname = ifname
        self._path: str | None = None

    @property
    def directory(self) -> str:
        return os.path.join(self.root, self.network)

    @property
    def path(self) -> str:
        """The new name, unless a journal of this attachment has the legacy name:
        then that one, for as long as it exists (berth never writes a legacy name
        for an attachment that has none, so the choice, made once, stays right)."""
        if self._path is None:
            new = os.path.join(self.directory, journal_name(self.container_id, self.ifname))
            old = os.path.join(self.directory, legacy_journal_name(self.container_id, self.ifname))
            mine = not os.path.lexists(new) and os.path.lexists(old) and \
                legacy_is_ours(old, self.container_id, self.ifname)
            self._path = old if mine else new
        return self._path

    def _ensure_dir(self) -> None:
        make_dirs(self.directory, self.root)

    def locked(self) -> flocked:
        self._ensure_dir()
        return flocked(journal_lock(self.directory))

    def load(self) -> dict[str, Any]:
        try:
            with open(self.path, "rb") as fh:
                raw = fh.read()
        except (FileNotFoundError, NotADirectoryError):
            return {}  # none; a state root that is no directory fails where it is written (make_dirs)
        except OSError as exc:
            raise CNIError(errors.IO_FAILURE, f"unreadable journal {self.path}", str(exc)) from None
        if holds_nothing(raw):
            return {}  # what a power loss leaves of a file renamed before its data reached the disk
        try:
            data = jsonc.loads(raw)
        except ValueError as exc:
            raise CNIError(errors.IO_FAILURE, f"corrupt journal {self.path}", str(exc)) from None
        return data if isinstance(data, dict) else {}

    def section(self, name: str) -> dict[str, Any] | None:
        value = self.load().get(name)
        return value if isinstance(value, dict) else None

    def put(self, name: str, value: dict[str, Any]) -> None:
        """Set one plugin's section (read-modify-write under the lock; not fsync'ed,
        see the module docstring: every older version is one DEL/GC can work from,
        an intent names a superset of what exists, "adding" records are cleaned
        like finished ones)."""
        with self.locked():
            data = self.load()
            data.setdefault("containerID", self.container_id)
            data.setdefault("ifname", self.ifname)
            data.setdefault("network", self.network)
            data.setdefault("created", round(time.time(), 3))
            data[name] = value
            atomic_write(self.path, (jsonc.dumps(data, sort_keys=True) + "\n").encode(), durable=False,
                         tmp=locked_tmp(self.path))

    def update(self, name: str, change: Callable[[dict[str, Any]], dict[str, Any] | None]) -> bool:
        """Replace one section with what `change` makes of it, in one locked
        read-modify-write; `change` returns None to leave it as it is. False when
        there is no such section or nothing changed."""
        with self.locked():
            data = self.load()
            value = data.get(name)
            new = change(value) if isinstance(value, dict) else None
            if new is None:
                return False
            data[name] = new
            atomic_write(self.path, jsonc.dumps(data, indent=1, sort_keys=True).encode(), durable=False,
                         tmp=locked_tmp(self.path))
        return True

    def drop(self, name: str) -> None:
        """Remove one plugin's section; the file goes when no section is left."""
        with self.locked():
            try:
                data = self.load()
            except CNIError:
                # an unreadable journal must not block DEL/GC forever: the plugins
                # already cleaned what they could derive, so the file goes
                self._remove_file()
                return
            if not data:
                self._remove_file()  # none, or the empty file a power loss can leave
                return
            data.pop(name, None)
            if any(isinstance(v, dict) for v in data.values()):
                atomic_write(self.path, (jsonc.dumps(data, sort_keys=True) + "\n").encode(), durable=False,
                             tmp=locked_tmp(self.path))
            else:
                self._remove_file()

    def _remove_file(self) -> None:
        for path in (self.path, locked_tmp(self.path)):  # and what a write killed midway left
            with ctx.suppress(FileNotFoundError):
                os.unlink(path)


def legacy_is_ours(path: str, container_id: str, ifname: str) -> bool:
    """Does the legacy-named journal at `path` belong to (container_id, ifname)?
    Its content says so; one that cannot say (unreadable, empty, no names) is
    ours only when its name has no other reading."""
    try:
        with open(path, "rb") as fh:
            data = jsonc.loads(fh.read())
    except (OSError, ValueError):
        data = None
    if isinstance(data, dict) and isinstance(data.get("containerID"), str) and isinstance(data.get("ifname"), str):
        return (data["containerID"], data["ifname"]) == (container_id, ifname)
    return legacy_readings(f"{container_id}-{ifname}") == [(container_id, ifname)]


def legacy_readings(stem: str) -> list[tuple[str, str]]:
    """Every (containerID, ifname) whose legacy name is `stem`.json."""
    from cni import skel

    out = []
    for i, char in enumerate(stem):
        if char != "-":
            continue
        cid, ifname = stem[:i], stem[i + 1:]
        try:
            skel.validate_container_id(cid)
            skel.validate_ifname(ifname)
        except CNIError:
            continue
        out.append((cid, ifname))
    return out


def journal_lock(directory: str) -> str:
    """The flock every journal write in a network's directory takes."""
    return os.path.join(directory, "journal.lock")


def holds_nothing(raw: bytes) -> bool:
    """An empty journal: zero bytes or only NULs (and blanks), what a power loss can
    leave of a file renamed before its data reached the disk. It reads as none."""
    return not raw.strip(b"\0 \t\r\n")


def remove_empty_journals(root: str, network: str) -> list[str]:
    """Remove the network's empty journals (see holds_nothing) and the temporaries
    of killed writers; GC calls it, since journals() passes them over and no DEL
    may ever come for them."""
    directory = os.path.join(root, network)
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".json"))
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed: list[str] = []
    with flocked(journal_lock(directory)):  # no put() renames one in meanwhile
        removed += [os.path.join(directory, n) for n in remove_temporaries(directory)]
        for name in names:
            path = os.path.join(directory, name)
            try:
                with open(path, "rb") as fh:
                    raw = fh.read(MAX_EMPTY_CHECK_BYTES + 1)  # one byte more: a larger file is not empty
            except OSError:
                continue
            if len(raw) <= MAX_EMPTY_CHECK_BYTES and holds_nothing(raw):
                with ctx.suppress(FileNotFoundError):
                    os.unlink(path)
                removed.append(path)
    return removed


def journals(root: str, network: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every journal file under root (optionally one network): (path, content).
    A root that is there but no directory of ours is CNI code 5 (none at all: no journals)."""
    if os.path.lexists(root) and not os.path.isdir(root):
        raise unusable(root, NotADirectoryError(errno.ENOTDIR, "Not a directory", root))
    try:
        networks = [network] if network else sorted(os.listdir(root))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise unusable(root, exc) from None
    for net in networks:
        directory = os.path.join(root, net)
        try:
            names = sorted(os.listdir(directory))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in names:
            if not name.endswith(".json"):
                continue
            path = os.path.join(directory, name)
            try:
                with open(path, "rb") as fh:
                    data = jsonc.load(fh)
            except (OSError, ValueError):
                continue
            if isinstance(data, dict):
                yield path, data


def attachments(root: str) -> list[Attachment]:
    """Every attachment the journals under root describe (a file that does not
    name its attachment is passed over)."""
    out = []
    for path, data in journals(root):
        if path.startswith(os.path.join(root, "ports") + os.sep):
            continue
        att = Attachment.from_journal(path, data)
        if att is not None:
            out.append(att)
    return out
