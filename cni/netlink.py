"""The one module that talks to the kernel's rtnetlink (through pyroute2).

pyroute2 is imported lazily inside functions: importing it costs ~150 ms and a
plugin answering VERSION, or a DEL with nothing to do, must not pay for it.
Callers open at most one handle per namespace per invocation (`open_node()`,
`open_netns(path)`) and pass it down. Netlink errors are translated here, by
errno and never by message text, into the typed exceptions below; dump races
(NLM_F_DUMP_INTR) are retried a bounded number of times.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

DUMP_RETRIES = 5
IFF_UP = 0x1
IFF_PROMISC = 0x100
IFA_F_NODAD = 0x02
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
HOST_VETH_ATTEMPTS = 8


class NetlinkFailure(Exception):
    """A netlink request failed; `code` is the errno."""

    def __init__(self, code: int, what: str) -> None:
        super().__init__(f"{what}: {os.strerror(code) if code > 0 else 'error'}")
        self.code = code
        self.what = what


class LinkNotFound(NetlinkFailure):
    pass


class AlreadyExists(NetlinkFailure):
    pass


class NotABridge(Exception):
    pass


class NetnsNotFound(Exception):
    pass


class NotANetns(Exception):
    pass


def _translate(exc: Exception, what: str) -> NetlinkFailure:
    code = int(getattr(exc, "code", 0) or 0)
    if code == errno.ENODEV:
        return LinkNotFound(code, what)
    if code == errno.EEXIST:
        return AlreadyExists(code, what)
    return NetlinkFailure(code, what)


def _call(what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run one pyroute2 request: retry dump races, translate NetlinkError by errno."""
    from pyroute2.netlink.exceptions import NetlinkDumpInterrupted, NetlinkError

    for attempt in range(DUMP_RETRIES):
        try:
            return fn(*args, **kwargs)
        except NetlinkDumpInterrupted as exc:
            if attempt == DUMP_RETRIES - 1:
                raise _translate(exc, what) from None
        except NetlinkError as exc:
            raise _translate(exc, what) from None
    raise AssertionError("unreachable")


# --- namespaces --------------------------------------------------------------

def check_netns(path: str) -> None:
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
    own = os.stat("/proc/self/ns/net")
    if not stat.S_ISREG(st.st_mode) or st.st_dev != own.st_dev:
        raise NotANetns(path)


class Handle:
    """One rtnetlink socket bound to one namespace."""

    def __init__(self, ipr: Any, netns: str | None) -> None:
        self.ipr = ipr
        self.netns = netns

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ipr.close()

    def __enter__(self) -> Handle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _iproute_class() -> Any:
    """pyroute2's IPRoute without running pyroute2/__init__.py.

    That __init__ eagerly imports NDB, IPDB, ethtool, wireguard, ... (~35 ms of
    the ~110 ms import on this machine) which a plugin never uses. The package
    module is pre-registered with its real __path__ so only the submodules we
    need load; any other `from pyroute2 import X` later in the process runs the
    real __init__ into that same module on first use (module __getattr__).
    """
    import sys

    if "pyroute2" not in sys.modules:
        import importlib
        import importlib.util
        import types

        spec = importlib.util.find_spec("pyroute2")
        if spec is not None and spec.loader is not None and spec.submodule_search_locations is not None:
            module = types.ModuleType("pyroute2")
            module.__spec__ = spec
            module.__path__ = list(spec.submodule_search_locations)
            module.__file__ = spec.origin
            loader = spec.loader
            loaded = False

            def full(name: str) -> Any:
                nonlocal loaded
                if name.startswith("__"):
                    raise AttributeError(name)
                try:  # `from pyroute2 import config` asks for a submodule first
                    return importlib.import_module(f"pyroute2.{name}")
                except ModuleNotFoundError as exc:
                    if exc.name != f"pyroute2.{name}":
                        raise
                if loaded:
                    raise AttributeError(name)
                loaded = True
                loader.exec_module(module)
                return getattr(module, name)

            module.__getattr__ = full  # type: ignore[method-assign]
            sys.modules["pyroute2"] = module
    from pyroute2.iproute.linux import IPRoute

    return IPRoute


def open_node() -> Handle:
    return Handle(_iproute_class()(), None)


def open_netns(path: str) -> Handle:
    """A handle in the namespace at `path`; never creates a namespace (flags=0)."""
    check_netns(path)
    iproute = _iproute_class()
    try:
        ipr = iproute(netns=path, flags=0)
    except FileNotFoundError:
        raise NetnsNotFound(path) from None
    except OSError as exc:
        raise NotANetns(f"{path}: {exc.strerror}") from None
    return Handle(ipr, path)


@contextlib.contextmanager
def netns_fd(path: str) -> Iterator[int]:
    check_netns(path)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


# --- links -------------------------------------------------------------------

@dataclass
class Link:
    index: int
    name: str
    kind: str
    mac: str
    mtu: int
    master: int
    flags: int
    peer_index: int  # IFLA_LINK: for a veth, the peer's ifindex (in the peer's netns)
    promiscuity: int
    vlan_filtering: int | None = None
    hairpin: int | None = None

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)


def _to_link(msg: Any) -> Link:
    linkinfo = msg.get_attr("IFLA_LINKINFO")
    kind = ""
    vlan_filtering = None
    hairpin = None
    if linkinfo is not None:
        kind = linkinfo.get_attr("IFLA_INFO_KIND") or ""
        data = linkinfo.get_attr("IFLA_INFO_DATA")
        if kind == "bridge" and data is not None:
            vlan_filtering = data.get_attr("IFLA_BR_VLAN_FILTERING")
        slave = linkinfo.get_attr("IFLA_INFO_SLAVE_DATA")
        if slave is not None and linkinfo.get_attr("IFLA_INFO_SLAVE_KIND") == "bridge":
            hairpin = slave.get_attr("IFLA_BRPORT_MODE")
    return Link(
        index=int(msg["index"]),
        name=msg.get_attr("IFLA_IFNAME") or "",
        kind=kind,
        mac=(msg.get_attr("IFLA_ADDRESS") or "").lower(),
        mtu=int(msg.get_attr("IFLA_MTU") or 0),
        master=int(msg.get_attr("IFLA_MASTER") or 0),
        flags=int(msg["flags"]),
        peer_index=int(msg.get_attr("IFLA_LINK") or 0),
        promiscuity=int(msg.get_attr("IFLA_PROMISCUITY") or 0),
        vlan_filtering=vlan_filtering,
        hairpin=hairpin,
    )


def link_by_name(h: Handle, name: str) -> Link | None:
    try:
        msgs = _call(f"get link {name}", h.ipr.link, "get", ifname=name)
    except LinkNotFound:
        return None
    return _to_link(msgs[0]) if msgs else None


def link_by_index(h: Handle, index: int) -> Link | None:
    if index <= 0:
        return None
    try:
        msgs = _call(f"get link #{index}", h.ipr.link, "get", index=index)
    except (LinkNotFound, NetlinkFailure):
        return None
    return _to_link(msgs[0]) if msgs else None


def set_up(h: Handle, index: int, what: str) -> None:
    _call(f"set {what} up", h.ipr.link, "set", index=index, state="up")


def set_mtu(h: Handle, index: int, mtu: int, what: str) -> None:
    _call(f"set mtu {mtu} on {what}", h.ipr.link, "set", index=index, mtu=mtu)


def ensure_bridge(h: Handle, name: str, mtu: int, vlan_filtering: bool, promisc: bool) -> Link:
    """The bridge `name`, created when missing; a racing creator is fine (EEXIST)."""
    link = link_by_name(h, name)
    if link is None:
        spec: dict[str, Any] = {"ifname": name, "kind": "bridge"}
        if mtu:
            spec["mtu"] = mtu
        if vlan_filtering:
            spec["vlan_filtering"] = 1
        with contextlib.suppress(AlreadyExists):
            _call(f"create bridge {name}", h.ipr.link, "add", **spec)
        link = link_by_name(h, name)
        if link is None:
            raise LinkNotFound(errno.ENODEV, f"bridge {name} vanished after creation")
    if link.kind != "bridge":
        raise NotABridge(f"{name!r} already exists but is not a bridge (kind {link.kind or 'unknown'!r})")
    if vlan_filtering and not link.vlan_filtering:
        _call(f"enable vlan_filtering on {name}", h.ipr.link, "set", index=link.index, kind="bridge",
              vlan_filtering=1)
    if promisc and not link.flags & IFF_PROMISC:
        _call(f"set promisc on {name}", h.ipr.link, "set", index=link.index, flags=IFF_PROMISC, change=IFF_PROMISC)
    if not link.up:
        # the plugin runs in the node netns: no tentative (DAD) link-local on a fresh
        # bridge, so IPv6 through it works as soon as ADD returns
        _write_proc(f"/proc/sys/net/ipv6/conf/{name}/accept_dad", "0")
        set_up(h, link.index, f"bridge {name}")
    link = link_by_name(h, name) or link
    if vlan_filtering and not link.vlan_filtering:
        # pyroute2 drops an attribute the kernel refuses; say so instead of half-working
        raise NetlinkFailure(errno.EOPNOTSUPP, f"enable vlan_filtering on {name} (no bridge VLAN support?)")
    return link


def random_veth_name() -> str:
    return f"veth{os.urandom(4).hex()}"  # os.urandom: `secrets` costs ~10 ms of imports


def create_veth(
    node: Handle, container: Handle, netns_path: str, host_name: str, cont_name: str, mtu: int, mac: str | None,
) -> tuple[Link, Link]:
    """A veth pair whose container end is created straight inside the container netns.

    A host-name clash (another pod drew the same random name) is retried with a
    fresh name; a clash in the container is reported, as upstream does.
    """
    if link_by_name(container, cont_name) is not None:
        raise AlreadyExists(errno.EEXIST, f"container veth name {cont_name!r} already exists")
    with netns_fd(netns_path) as fd:
        for attempt in range(HOST_VETH_ATTEMPTS):
            peer: dict[str, Any] = {"ifname": cont_name, "net_ns_fd": fd}
            spec: dict[str, Any] = {"ifname": host_name, "kind": "veth", "peer": peer}
            if mtu:
                spec["mtu"] = mtu
                peer["mtu"] = mtu
            if mac:
                peer["address"] = mac
            try:
                _call(f"create veth {host_name}/{cont_name}", node.ipr.link, "add", **spec)
                break
            except AlreadyExists:
                if link_by_name(container, cont_name) is not None or attempt == HOST_VETH_ATTEMPTS - 1:
                    raise
                host_name = random_veth_name()
    host = link_by_name(node, host_name)
    cont = link_by_name(container, cont_name)
    if host is None or cont is None:
        raise LinkNotFound(errno.ENODEV, f"veth {host_name}/{cont_name} vanished after creation")
    return host, cont


def attach_port(
    node: Handle, host: Link, bridge: Link, hairpin: bool, vlan: int, preserve_default_vlan: bool,
    isolated: bool,
) -> None:
    """Enslave the host veth to the bridge, set its port options and bring it up."""
    _call(f"attach {host.name} to {bridge.name}", node.ipr.link, "set", index=host.index, master=bridge.index)
    if hairpin or isolated:
        opts: dict[str, int] = {}
        if hairpin:
            opts["mode"] = 1
        if isolated:
            opts["isolated"] = 1
        _call(f"set port options on {host.name}", node.ipr.brport, "set", index=host.index, **opts)
    if vlan:
        _call(f"add vlan {vlan} to {host.name}", node.ipr.vlan_filter, "add", index=host.index,
              vlan_info={"vid": vlan, "pvid": True})
        if not preserve_default_vlan:
            with contextlib.suppress(NetlinkFailure):
                _call(f"remove vlan 1 from {host.name}", node.ipr.vlan_filter, "del", index=host.index,
                      vlan_info={"vid": 1})
    set_up(node, host.index, host.name)


def delete_link(h: Handle, name: str) -> bool:
    """Delete a link by name; False when it was not there."""
    link = link_by_name(h, name)
    if link is None:
        return False
    try:
        _call(f"delete link {name}", h.ipr.link, "del", index=link.index)
    except LinkNotFound:
        return False
    return True


def port_vlans(h: Handle, index: int) -> list[int]:
    """VLAN ids configured on a bridge port (for CHECK)."""
    from pyroute2.config import AF_BRIDGE

    out: list[int] = []
    msgs = _call("dump bridge vlans", h.ipr.get_links, family=AF_BRIDGE, ext_mask=2)
    for msg in msgs:
        if int(msg["index"]) != index:
            continue
        spec = msg.get_attr("IFLA_AF_SPEC")
        if spec is None:
            continue
        for name, value in spec["attrs"]:
            if name == "IFLA_BRIDGE_VLAN_INFO":
                out.append(int(value["vid"]))
    return out


# --- addresses -----------------------------------------------------------------

def addresses(h: Handle, index: int, version: int = 0) -> list[str]:
    """CIDR strings on a link (both families, link-local included; only IPv`version` if given).

    The dump is node-wide (the index filter is applied in pyroute2), so asking
    for one family keeps an IPv4 lookup from reading every veth's IPv6 link-local.
    """
    out = []
    family = {4: 2, 6: 10}.get(version, 0)
    for msg in _call(f"dump addresses of #{index}", h.ipr.get_addr, family=family, index=index):
        addr = msg.get_attr("IFA_ADDRESS") or msg.get_attr("IFA_LOCAL")
        if addr:
            out.append(f"{addr}/{msg['prefixlen']}")
    return out


def add_address(h: Handle, index: int, cidr: str, nodad: bool) -> None:
    """Add an address; already present is fine. IPv6 gets NODAD unless DAD is wanted."""
    iface = ipaddress.ip_interface(cidr)
    spec: dict[str, Any] = {"index": index, "address": str(iface.ip), "prefixlen": iface.network.prefixlen}
    if iface.version == 6 and nodad:
        spec["flags"] = IFA_F_NODAD
    with contextlib.suppress(AlreadyExists):
        _call(f"add address {cidr}", h.ipr.addr, "add", **spec)


def delete_address(h: Handle, index: int, cidr: str) -> None:
    iface = ipaddress.ip_interface(cidr)
    try:
        _call(f"delete address {cidr}", h.ipr.addr, "del", index=index, address=str(iface.ip),
              prefixlen=iface.network.prefixlen)
    except NetlinkFailure as exc:
        if exc.code != errno.EADDRNOTAVAIL:
            raise


# --- routes --------------------------------------------------------------------

@dataclass(frozen=True)
class Route:
    dst: str  # CIDR
    gw: str | None


def add_route(h: Handle, index: int, dst: str, gw: str | None) -> None:
    """Add a route on the link; an identical route already there is fine."""
    net = ipaddress.ip_network(dst, strict=False)
    spec: dict[str, Any] = {"dst": str(net.network_address), "dst_len": net.prefixlen, "oif": index,
                            "family": 2 if net.version == 4 else 10}
    if gw:
        spec["gateway"] = gw
    else:
        spec["scope"] = RT_SCOPE_LINK
    with contextlib.suppress(AlreadyExists):
        _call(f"add route {dst} via {gw or 'link'}", h.ipr.route, "add", **spec)


def routes(h: Handle, index: int) -> list[Route]:
    """Main-table unicast routes leaving through link `index`."""
    out = []
    for family in (2, 10):
        for msg in _call("dump routes", h.ipr.get_routes, family=family, table=254):
            if msg.get_attr("RTA_OIF") != index or msg["type"] != 1:
                continue
            dst = msg.get_attr("RTA_DST") or ("0.0.0.0" if family == 2 else "::")
            out.append(Route(f"{dst}/{msg['dst_len']}", msg.get_attr("RTA_GATEWAY")))
    return out


# --- sysctls -------------------------------------------------------------------

def sysctl_path(key: str) -> str:
    return "/proc/sys/" + key.replace(".", "/")


def ensure_sysctl(key: str, value: str) -> bool:
    """Write a sysctl of the current (node) netns unless it already holds `value`.

    /proc/sys/net shows the netns of the process, which is the node's here.
    Returns True when it was changed.
    """
    path = sysctl_path(key)
    with open(path) as fh:
        if fh.read().strip() == value:
            return False
    with open(path, "w") as fh:
        fh.write(value)
    return True


CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    import ctypes  # lazy: only the DAD path needs it

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def in_netns(path: str) -> Iterator[None]:
    """Run the body with this (single-threaded) process inside netns `path`:
    /proc/sys/net shows the netns of the caller, netlink sockets cannot reach
    it. The only setns in berth; the original netns is always restored."""
    check_netns(path)
    own = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
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


def disable_dad(netns_path: str, ifname: str) -> bool:
    """accept_dad=0 on the container interface before it goes up, so its
    link-local address is never tentative and v6 works when ADD returns.
    False when the container has no IPv6 (nothing to do)."""
    path = f"/proc/sys/net/ipv6/conf/{ifname}/accept_dad"  # ifname may hold dots: no sysctl_path()
    with in_netns(netns_path):
        try:
            with open(path, "w") as fh:
                fh.write("0")
        except FileNotFoundError:
            return False
    return True


def _write_proc(path: str, value: str) -> bool:
    """Best-effort /proc/sys write (the path may hold dots: names are not sysctl keys)."""
    try:
        with open(path, "w") as fh:
            fh.write(value)
    except FileNotFoundError:
        return False  # no IPv6 on this node
    return True


def read_sysctl(key: str) -> str:
    with open(sysctl_path(key)) as fh:
        return fh.read().strip()
