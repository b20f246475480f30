"""Who owns a (hostIP, protocol, hostPort): one small file per port under
<state_root>/ports/, so a conflict check costs O(1) per mapped port instead of a
scan of every journal. All reads and writes happen under one node-wide flock
(ports/lock) that the caller holds across the whole ADD/DEL, nft transaction
included, so the files and the verdict maps never disagree.

A file names its owner attachment and the map element it belongs to. An owner
whose journal (or its portmap section) is gone, or was made in an earlier boot,
is stale and may be taken over; so is one whose journal names a host veth or
network namespace that is gone (a sandbox killed before its DEL, where no GC
comes): then the ADD taking its port also removes the rest of its mappings.
So the files are never fsync'ed: what a power loss could cost them (a lost,
stale or empty file) describes mappings the reboot removed anyway, and an
unreadable file is unowned.
"""

from __future__ import annotations

import os

from cni import ctx, errors, files, jsonc, state, sysctl
from cni.errors import CNIError
from cni.records import PortMapping
from portmap import layout

TYPE_CHECKING = False  # mypy treats this name as True: typing stays off the exec path
if TYPE_CHECKING:
    from typing import Any, NamedTuple
else:
    from cni.tuples import NamedTuple

PORTS_DIR = "ports"


class Owner(NamedTuple):
    network: str
    container_id: str
    ifname: str

    def describe(self) -> str:
        return f"container {self.container_id} (network {self.network}, interface {self.ifname})"


class Claim(NamedTuple):
    """A port file's content: the owner and the map element its port lives in."""

    owner: Owner
    chain: str
    map_name: str
    key: Any

    def to_json(self) -> dict[str, Any]:
        return {"network": self.owner.network, "containerID": self.owner.container_id,
                "ifname": self.owner.ifname, "chain": self.chain, "map": self.map_name, "key": self.key}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Claim:
        owner = Owner(str(data["network"]), str(data["containerID"]), str(data["ifname"]))
        return cls(owner, str(data["chain"]), str(data["map"]), data["key"])


def ports_dir(root: str) -> str:
    return os.path.join(root, PORTS_DIR)


def locked(root: str) -> files.flocked:
    state.make_dirs(ports_dir(root), root)
    return files.flocked(os.path.join(ports_dir(root), "lock"))


def port_files(root: str, m: PortMapping) -> list[str]:
    host = m.host_ip or "any"
    return [os.path.join(ports_dir(root), f"{host}_{m.protocol}_{port}")
            for port in range(m.host_lo, m.host_hi + 1)]


def read(path: str) -> Claim | None:
    try:
        with open(path, "rb") as fh:
            return Claim.from_json(jsonc.load(fh))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable: treat as unowned, the new claim overwrites it


def boot_id() -> str:
    """This boot's id ("" when unreadable): a claim made in an earlier boot is
    stale, every pod died in the reboot (before the runtime's GC says so)."""
    return sysctl.boot_id()


def is_live(root: str, owner: Owner) -> bool:
    return liveness(root, owner) == (True, "")


def liveness(root: str, owner: Owner) -> tuple[bool, str]:
    """(live, why it is dead): an owner without a portmap journal, or with one of
    an earlier boot, is stale (why ""); one whose journal names a host veth or
    network namespace that no longer exists is dead, and why says which."""
    journal = state.Journal(root, owner.network, owner.container_id, owner.ifname)
    try:
        data = journal.load()
    except CNIError:
        return True, ""  # a corrupt journal is not proof of death: keep the owner
    record = data.get("portmap")
    if not isinstance(record, dict):
        return False, ""
    made_in = record.get("boot")
    if made_in and boot_id() and made_in != boot_id():
        return False, ""
    why = vanished(record, data.get("bridge"))
    return not why, why


def vanished(record: dict[str, Any], bridge: Any) -> str:
    """Which of the owner's kernel objects its journal proves gone, or "": the host
    veth (one ioctl; it dies with the container's namespace), else, when no veth
    is known, the namespace's path. Only finished ADDs' names count."""
    veth = str(record.get("hostVeth") or "") if record.get("state") == "done" else ""
    if not veth and isinstance(bridge, dict) and bridge.get("state") == "added":
        veth = str(bridge.get("hostVeth") or "")
    if veth:
        return "" if link_exists(veth) else f"its host veth {veth} is gone"
    netns = str(record.get("netns") or (bridge.get("netns") if isinstance(bridge, dict) else "") or "")
    return f"its network namespace {netns} is gone" if netns and netns_gone(netns) else ""


def link_exists(name: str) -> bool:
    """Is there a link of this name in our (the node's) namespace? True when it cannot tell."""
    import _socket  # the C module: socket.py would import enum and selectors

    try:
        _socket.if_nametoindex(name)
    except OSError as exc:  # "no interface with this name" carries no errno; a failed socket() does
        return exc.errno is not None
    except ValueError:  # a name no interface can have
        return False
    return True


def netns_gone(path: str) -> bool:
    """Is `path` provably no network namespace any more (missing, or a plain file
    left after its bind mount went)? False when it cannot tell."""
    import stat

    try:
        st = os.stat(path)
        own = os.stat("/proc/self/ns/net")
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return not stat.S_ISREG(st.st_mode) or st.st_dev != own.st_dev


def name_sharers(root: str, me: Owner) -> list[tuple[Owner, dict[str, Any]]]:
    """Other attachments, with a journal, whose names hash like ours: upstream's
    chain names (and berth's older ipMasq tags) hash network + containerID, one
    string for ("ab", "c1") and ("a", "bc1") alike. One listing of the state
    root, a journal read only where a network's name starts the joined string."""
    from cni import skel

    joined = me.network + me.container_id
    try:
        networks = sorted(os.listdir(root))
    except OSError:
        return []
    out = []
    for net in networks:
        cid = joined[len(net):]
        if net == me.network or not cid or not joined.startswith(net):
            continue
        try:
            skel.validate_container_id(cid)
            data = state.Journal(root, net, cid, me.ifname).load()
        except CNIError:
            continue
        if data:
            out.append((Owner(net, cid, me.ifname), data))
    return out


class Takeover:
    __slots__ = ("claim", "dead", "live")

    def __init__(self, claim: Claim, live: bool, dead: str = "") -> None:
        self.claim = claim
        self.live = live
        self.dead = dead  # why the owner is proven gone (its leftovers go with the takeover), or ""


def check(root: str, me: Owner, mappings: list[PortMapping], last_wins: bool) -> list[Takeover]:
    """Foreign claims on our ports: raise PORT_CONFLICT for a live one (unless
    last-wins); return what must be taken over (deduplicated by element)."""
    found: dict[str, Takeover] = {}
    for m in mappings:
        for path in port_files(root, m):
            claim = read(path)
            if claim is None or claim.owner == me:
                continue
            live, dead = liveness(root, claim.owner)
            if live and not last_wins:
                port = os.path.basename(path).rsplit("_", 1)[1]
                where = f"{m.host_ip}:" if m.host_ip else ""
                raise CNIError(
                    errors.PORT_CONFLICT,
                    f"host port {where}{port}/{m.protocol} is already used by {claim.owner.describe()}",
                    'set "conflictPolicy": "last-wins" in the portmap config to take it over',
                )
            found.setdefault(jsonc.dumps([claim.map_name, claim.key, claim.chain], sort_keys=True),
                             Takeover(claim, live, dead))
    return list(found.values())


def write(root: str, me: Owner, chain: str, mappings: list[PortMapping]) -> None:
    for m in mappings:
        data = jsonc.dumps(Claim(me, chain, layout.map_name(m), layout.map_key(m)).to_json(), sort_keys=True).encode()
        for path in port_files(root, m):
            files.atomic_write(path, data, durable=False, tmp=files.locked_tmp(path))  # under locked()


def owns_all(root: str, me: Owner, m: PortMapping) -> bool:
    return all((c := read(p)) is not None and c.owner == me for p in port_files(root, m))


def unclaimed(root: str, m: PortMapping) -> bool:
    return all(read(p) is None for p in port_files(root, m))


def release(root: str, me: Owner, mappings: list[PortMapping]) -> None:
    """Remove the port files that still name us (a last-wins successor keeps its own)."""
    _remove_claims(root, me, [path for m in mappings for path in port_files(root, m)])


def release_owner(root: str, me: Owner) -> None:
    """Remove every port file naming `me` (a DEL that lost its journal: a scan of
    the ports directory, so only on that path), and, the scan being made, every
    temporary (the caller holds locked(): each is a killed writer's)."""
    try:
        names = os.listdir(ports_dir(root))
    except FileNotFoundError:
        return
    paths = [os.path.join(ports_dir(root), n) for n in names if n != "lock" and files.TMP_SUFFIX not in n]
    _remove_claims(root, me, paths)
    remove_temporaries(root)


def remove_temporaries(root: str) -> list[str]:
    """What writers killed midway left in the ports directory (the caller holds locked())."""
    return files.remove_temporaries(ports_dir(root))


def _remove_claims(root: str, me: Owner, paths: list[str]) -> None:
    """Unlink those of `paths` whose claim names `me`, and the temporary a write of
    that port killed midway may have left."""
    for path in paths:
        claim = read(path)
        if claim is not None and claim.owner == me:
            with ctx.suppress(FileNotFoundError):
                os.unlink(path)
        with ctx.suppress(FileNotFoundError):
            os.unlink(files.locked_tmp(path))
