"""berth's rtnetlink requests: links, addresses, routes (pyroute2's messages, cni.rtnl's socket).

Messages are encoded and decoded by pyroute2's classes and sent on a plain
blocking socket (cni.rtnl): pyroute2's IPRoute/NetNS machinery (an asyncio loop
per handle, a helper process per foreign namespace) cost more than the kernel
work of a whole ADD. Only the rarely used bridge VLAN calls still go through
pyroute2's IPRoute, built on first use. Everything is imported lazily: a plugin
answering VERSION, or a DEL with nothing to do, loads none of it.
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
from collections.abc import Callable

from cni import netns

TYPE_CHECKING = False  # mypy treats this name as True: typing stays off the exec path
if TYPE_CHECKING:
    from typing import Any, NamedTuple, TypeVar

    from cni.rtnl import RtnlSocket

    T = TypeVar("T")
else:
    from cni.tuples import NamedTuple

DUMP_RETRIES = 5
IFF_UP = 0x1
IFF_PROMISC = 0x100
IFA_F_NODAD = 0x02
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_TABLE_MAIN = 254
RTPROT_STATIC = 4
RTN_UNICAST = 1
AF_INET, AF_INET6, AF_BRIDGE = 2, 10, 7
RTEXT_FILTER_SKIP_STATS = 1 << 3  # link replies without the ~1 KiB of counters
NLA_F_NESTED = 0x8000
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


def _translate(code: int, what: str) -> NetlinkFailure:
    if code == errno.ENODEV:
        return LinkNotFound(code, what)
    if code == errno.EEXIST:
        return AlreadyExists(code, what)
    return NetlinkFailure(code, what)


def _request(h: Handle, what: str, kind: str, fields: dict[str, Any], attrs: list[Any], msg_type: int,
             flags: int = 0) -> list[bytes]:
    """One rtnetlink request on h's socket (rtnl.encode's form): retry dump races,
    translate errors by errno; the replies' bytes (see rtnl.parse_link)."""
    from cni import rtnl

    return _send(h, what, lambda: rtnl.encode(kind, fields, attrs), msg_type, flags)


def _send(h: Handle, what: str, message: Callable[[], bytes], msg_type: int, flags: int = 0) -> list[bytes]:
    """_request for any message body (rtnl.encode, rtnl.link_request)."""
    from cni import rtnl

    for attempt in range(DUMP_RETRIES):
        try:
            return h.sock.request(message(), msg_type, flags)
        except rtnl.DumpInterrupted:
            if attempt == DUMP_RETRIES - 1:
                raise NetlinkFailure(errno.EINTR, f"{what}: the dump kept changing") from None
        except rtnl.RtnlError as exc:
            raise _translate(exc.errno or 0, what) from None
        except TimeoutError:
            raise NetlinkFailure(errno.ETIMEDOUT, f"{what}: no answer from the kernel") from None
    raise AssertionError("unreachable")


def _call(what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run one pyroute2 IPRoute request (VLAN calls only): translate NetlinkError by errno."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        return fn(*args, **kwargs)
    except NetlinkError as exc:
        raise _translate(int(getattr(exc, "code", 0) or 0), what) from None


# --- handles -------------------------------------------------------------------

class Handle:
    """One rtnetlink socket bound to one namespace (None: the node's, ours)."""

    def __init__(self, sock: RtnlSocket, netns: str | None) -> None:
        self.sock = sock
        self.netns = netns
        self._ipr: Any = None

    @property
    def ipr(self) -> Any:
        """pyroute2's IPRoute in the node namespace, for the bridge VLAN calls only."""
        if self._ipr is None:
            if self.netns is not None:
                raise NetlinkFailure(errno.EINVAL, "VLAN calls are made in the node namespace only")
            from cni import rtnl

            rtnl.lazy_pyroute2()
            from pyroute2.iproute.linux import IPRoute

            self._ipr = IPRoute()
        return self._ipr

    def close(self) -> None:
        self.sock.close()
        if self._ipr is not None:
            with contextlib.suppress(Exception):
                self._ipr.close()

    def __enter__(self) -> Handle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_node() -> Handle:
    from cni.rtnl import RtnlSocket

    return Handle(RtnlSocket(), None)


def open_netns(path: str) -> Handle:
    """A handle in the namespace at `path`: a socket opened while this thread is
    inside it (sockets keep the namespace they were made in); never creates one."""
    from cni.rtnl import RtnlSocket

    netns.check_container(path)
    try:
        with netns.entered(path):
            sock = RtnlSocket()
    except OSError as exc:  # setns refused: not a namespace after all
        raise netns.NotANetns(f"{path}: {exc.strerror}") from None
    return Handle(sock, path)


# --- links -------------------------------------------------------------------

class Link:
    """One link as the kernel reported it."""

    __slots__ = ("flags", "hairpin", "index", "kind", "mac", "master", "mtu", "name", "peer_index", "promiscuity",
                 "vlan_filtering")

    def __init__(
        self, index: int, name: str, kind: str, mac: str, mtu: int, master: int, flags: int, peer_index: int,
        promiscuity: int, vlan_filtering: int | None = None, hairpin: int | None = None,
    ) -> None:
        self.index = index
        self.name = name
        self.kind = kind
        self.mac = mac
        self.mtu = mtu
        self.master = master
        self.flags = flags
        self.peer_index = peer_index  # IFLA_LINK: for a veth, the peer's ifindex (in the peer's netns)
        self.promiscuity = promiscuity
        self.vlan_filtering = vlan_filtering
        self.hairpin = hairpin

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)


def _link_get(h: Handle, what: str, index: int, name: str) -> Link | None:
    from cni import rtnl

    try:
        msgs = _send(h, what, lambda: rtnl.link_request(index, name, RTEXT_FILTER_SKIP_STATS), rtnl.RTM_GETLINK)
    except LinkNotFound:
        return None
    return Link(**rtnl.parse_link(msgs[0])) if msgs else None


def link_by_name(h: Handle, name: str) -> Link | None:
    return _link_get(h, f"get link {name}", 0, name)


def link_by_index(h: Handle, index: int) -> Link | None:
    if index <= 0:
        return None
    try:
        return _link_get(h, f"get link #{index}", index, "")
    except NetlinkFailure:
        return None


def _link_set(h: Handle, what: str, index: int, attrs: list[Any], flags: int = 0, change: int = 0) -> None:
    """Change an existing link (RTM_NEWLINK without CREATE, as iproute2 does)."""
    from cni.rtnl import RTM_NEWLINK

    _request(h, what, "link", {"index": index, "flags": flags, "change": change}, attrs, RTM_NEWLINK)


def _create_link(h: Handle, what: str, attrs: list[Any]) -> None:
    from cni.rtnl import NLM_F_CREATE, NLM_F_EXCL, RTM_NEWLINK

    _request(h, what, "link", {"index": 0}, attrs, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL)


def linkinfo(kind: str, data: list[Any]) -> list[Any]:
    info: list[Any] = [["IFLA_INFO_KIND", kind]]
    if data:
        info.append(["IFLA_INFO_DATA", {"attrs": data}])
    return ["IFLA_LINKINFO", {"attrs": info}]


def set_up(h: Handle, index: int, what: str) -> None:
    _link_set(h, f"set {what} up", index, [], flags=IFF_UP, change=IFF_UP)


def ensure_bridge(h: Handle, name: str, mtu: int, vlan_filtering: bool, promisc: bool,
                  before_up: Callable[[], object] | None = None) -> Link:
    """The bridge `name`, created when missing; a racing creator is fine (EEXIST).
    `before_up` runs before a bridge that is down is brought up."""
    link = link_by_name(h, name)
    if link is None:
        attrs: list[Any] = [["IFLA_IFNAME", name]]
        if mtu:
            attrs.append(["IFLA_MTU", mtu])
        attrs.append(linkinfo("bridge", [["IFLA_BR_VLAN_FILTERING", 1]] if vlan_filtering else []))
        with contextlib.suppress(AlreadyExists):
            _create_link(h, f"create bridge {name}" + (" with vlan_filtering" if vlan_filtering else ""), attrs)
        link = link_by_name(h, name)
        if link is None:
            raise LinkNotFound(errno.ENODEV, f"bridge {name} vanished after creation")
    if link.kind != "bridge":
        raise NotABridge(f"{name!r} already exists but is not a bridge (kind {link.kind or 'unknown'!r})")
    changed = False
    if vlan_filtering and not link.vlan_filtering:
        _link_set(h, f"enable vlan_filtering on {name}", link.index,
                  [linkinfo("bridge", [["IFLA_BR_VLAN_FILTERING", 1]])])
        changed = True
    if promisc and not link.flags & IFF_PROMISC:
        _link_set(h, f"set promisc on {name}", link.index, [], flags=IFF_PROMISC, change=IFF_PROMISC)
        changed = True
    if not link.up:
        if before_up is not None:
            before_up()
        set_up(h, link.index, f"bridge {name}")
        changed = True
    if changed:
        link = link_by_name(h, name) or link
    if vlan_filtering and not link.vlan_filtering:
        # say so instead of half-working when the kernel ignores the attribute
        raise NetlinkFailure(errno.EOPNOTSUPP, f"enable vlan_filtering on {name} (no bridge VLAN support?)")
    return link


def random_veth_name() -> str:
    return f"veth{os.urandom(4).hex()}"  # os.urandom: `secrets` is a heavy import


def create_veth(
    node: Handle, container: Handle, netns_path: str, host_name: str, cont_name: str, mtu: int, mac: str | None,
) -> tuple[Link, Link]:
    """A veth pair whose container end is created straight inside the container netns.

    A host-name clash (another pod drew the same random name) is retried with a
    fresh name; a clash in the container is reported, as upstream does.
    """
    netns.check_container(netns_path)
    with netns.fd(netns_path) as fd:
        for attempt in range(HOST_VETH_ATTEMPTS):
            peer: list[Any] = [["IFLA_IFNAME", cont_name], ["IFLA_NET_NS_FD", fd]]
            attrs: list[Any] = [["IFLA_IFNAME", host_name]]
            if mtu:
                attrs.append(["IFLA_MTU", mtu])
                peer.append(["IFLA_MTU", mtu])
            if mac:
                peer.append(["IFLA_ADDRESS", mac])
            attrs.append(linkinfo("veth", [["VETH_INFO_PEER", {"attrs": peer}]]))
            try:
                _create_link(node, f"create veth {host_name}/{cont_name}", attrs)
                break
            except AlreadyExists:
                # either end's name may clash: the container's is the caller's to fix
                if link_by_name(container, cont_name) is not None:
                    raise AlreadyExists(errno.EEXIST, f"container veth name {cont_name!r} already exists") from None
                if attempt == HOST_VETH_ATTEMPTS - 1:
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
    """Enslave the host veth to the bridge and bring it up (one request: the
    kernel applies IFLA_MASTER before the flags), then set its port options."""
    from cni.rtnl import RTM_SETLINK

    _link_set(node, f"attach {host.name} to {bridge.name}", host.index, [["IFLA_MASTER", bridge.index]],
              flags=IFF_UP, change=IFF_UP)
    if hairpin or isolated:
        opts: list[Any] = []
        if hairpin:
            opts.append(["IFLA_BRPORT_MODE", 1])
        if isolated:
            opts.append(["IFLA_BRPORT_ISOLATED", 1])
        # what `bridge link set dev X hairpin on` sends: AF_BRIDGE SETLINK with nested IFLA_PROTINFO
        _request(node, f"set port options on {host.name}", "link", {"family": AF_BRIDGE, "index": host.index},
                 [("IFLA_PROTINFO", {"attrs": opts}, NLA_F_NESTED)], RTM_SETLINK)
    if vlan:
        _call(f"add vlan {vlan} to {host.name}", node.ipr.vlan_filter, "add", index=host.index,
              vlan_info={"vid": vlan, "pvid": True})
        if not preserve_default_vlan:
            with contextlib.suppress(NetlinkFailure):
                _call(f"remove vlan 1 from {host.name}", node.ipr.vlan_filter, "del", index=host.index,
                      vlan_info={"vid": 1})


def delete_link(h: Handle, name: str) -> bool:
    """Delete a link by name (one request); False when it was not there."""
    from cni.rtnl import RTM_DELLINK

    try:
        _request(h, f"delete link {name}", "link", {"index": 0}, [["IFLA_IFNAME", name]], RTM_DELLINK)
    except LinkNotFound:
        return False
    return True


class _KernelJob:
    """`fn` in a forked child of its own, for one long kernel call whose tail the
    caller need not wait for: the child keeps no descriptor of ours but a status
    pipe (stdin, stdout and stderr are /dev/null), so a plugin may answer and exit
    while the kernel finishes, and the runtime, which waits for the plugin's exit
    and for its stdout to close, does not wait for that tail either. Where fork
    is refused, `fn` runs in a thread, which a process that ends waits for."""

    def __init__(self, fn: Callable[[], bool]) -> None:
        self._forked = False
        self._status: bytes | None = None
        try:
            self._read, write = os.pipe()
            pid = os.fork()
        except OSError:
            self._start_thread(fn)
            return
        if pid == 0:  # an intermediate child: fork the worker and leave, so init reaps the worker
            try:
                if os.fork() == 0:
                    _run_detached(fn, write)
            finally:
                os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        self._forked = True

    def _start_thread(self, fn: Callable[[], bool]) -> None:
        import threading

        self._read = -1
        self._error: BaseException | None = None

        def run() -> None:
            try:
                self._status = b"1" if fn() else b"0"
            except BaseException as exc:  # handed to the caller by result()
                self._error = exc
                self._status = b"e"

        self._thread = threading.Thread(target=run, name="berth-kernel-job")
        self._thread.start()

    def finished(self) -> bool:
        if not self._forked:
            return self._status is not None
        import select

        return bool(select.select([self._read], [], [], 0)[0])

    def result(self) -> bool:
        """The call's answer, waiting for it (and reaping the child)."""
        if not self._forked:
            self._thread.join()
            if self._error is not None:
                raise self._error
            return self._status == b"1"
        try:
            status = os.read(self._read, 1)
        finally:
            os.close(self._read)
        if status not in (b"0", b"1"):
            raise NetlinkFailure(errno.EIO, "delete link (in a child process)")
        return status == b"1"

    def detach(self) -> None:
        """Leave the call to finish on its own (its answer is no longer needed)."""
        if self._forked:
            os.close(self._read)  # its report goes nowhere; init (or a subreaper) reaps the worker


def _run_detached(fn: Callable[[], bool], report: int) -> None:
    """The worker of a _KernelJob: stdio on /dev/null, no descriptor of the caller's
    but `report`, one status byte there, then an exit without the caller's cleanup."""
    code = b"e"
    try:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.closerange(3, report)
        os.closerange(report + 1, 65536)
        code = b"1" if fn() else b"0"
    except BaseException:  # nothing may escape a forked child
        code = b"e"
    finally:
        with contextlib.suppress(OSError):
            os.write(report, code)
        os._exit(0)


def delete_container_link(netns_path: str, name: str) -> bool:
    """Delete `name` in the container netns; False when it was not there.

    For the container end of a veth whose host end lives in this (the node's)
    netns, return as soon as the kernel announces the host end's RTM_DELLINK.
    The kernel sends it once both ends are unlisted, out of the bridge, their
    addresses and routes gone: everything anyone can observe. What follows
    (RCU grace periods, rcu_barrier, freeing: most of what a delete takes)
    finishes in a child process of its own (_KernelJob), which the plugin does
    not wait for.
    """
    with open_netns(netns_path) as cont:
        link = link_by_name(cont, name)
        if link is None:
            return False
        if link.kind != "veth" or link.peer_index <= 0:
            return delete_link(cont, name)
    from cni.rtnl import LinkEvents

    events = LinkEvents()  # before the request: its announcement cannot be missed
    try:
        job = _KernelJob(lambda: _delete_in(netns_path, name))
        if events.wait_deleted(link.peer_index, job.finished):
            job.detach()
            return True
    finally:
        events.close()
    return job.result()  # not announced here (an odd peer, lost events): the request's own answer


def _delete_in(netns_path: str, name: str) -> bool:
    with open_netns(netns_path) as cont:  # a socket of its own: the caller's may be closed by now
        return delete_link(cont, name)


# --- addresses -----------------------------------------------------------------

def addresses(h: Handle, index: int, version: int = 0) -> list[str]:
    """CIDR strings on a link (both families, link-local included; only IPv`version` if given).

    With NETLINK_GET_STRICT_CHK the kernel dumps only this link's addresses;
    the filter below covers kernels without it.
    """
    from cni.rtnl import NLM_F_DUMP, RTM_GETADDR, parse_addr

    out = []
    family = {4: AF_INET, 6: AF_INET6}.get(version, 0)
    for chunk in _request(h, f"dump addresses of #{index}", "addr", {"family": family, "index": index}, [],
                          RTM_GETADDR, NLM_F_DUMP):
        msg_family, msg_index, prefixlen, addr = parse_addr(chunk)
        if msg_index != index or (family and msg_family != family):
            continue
        if addr:
            out.append(f"{addr}/{prefixlen}")
    return out


def _addr_message(index: int, cidr: str) -> tuple[dict[str, Any], list[Any], int]:
    iface = ipaddress.ip_interface(cidr)
    fields = {"family": AF_INET if iface.version == 4 else AF_INET6, "prefixlen": iface.network.prefixlen,
              "index": index}
    attrs: list[Any] = [["IFA_ADDRESS", str(iface.ip)]]
    if iface.version == 4:
        attrs.append(["IFA_LOCAL", str(iface.ip)])
    return fields, attrs, iface.version


def add_address(h: Handle, index: int, cidr: str, nodad: bool) -> None:
    """Add an address; already present is fine. IPv6 gets NODAD unless DAD is wanted."""
    from cni.rtnl import NLM_F_CREATE, NLM_F_EXCL, RTM_NEWADDR

    fields, attrs, version = _addr_message(index, cidr)
    if version == 6 and nodad:
        fields["flags"] = IFA_F_NODAD
    with contextlib.suppress(AlreadyExists):
        _request(h, f"add address {cidr}", "addr", fields, attrs, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL)


def delete_address(h: Handle, index: int, cidr: str) -> None:
    from cni.rtnl import RTM_DELADDR

    fields, attrs, _version = _addr_message(index, cidr)
    try:
        _request(h, f"delete address {cidr}", "addr", fields, attrs, RTM_DELADDR)
    except NetlinkFailure as exc:
        if exc.code != errno.EADDRNOTAVAIL:
            raise


# --- routes --------------------------------------------------------------------

class Route(NamedTuple):
    dst: str  # CIDR
    gw: str | None


def add_route(h: Handle, index: int, dst: str, gw: str | None) -> None:
    """Add a route on the link; an identical route already there is fine."""
    from cni.rtnl import NLM_F_CREATE, NLM_F_EXCL, RTM_NEWROUTE

    net = ipaddress.ip_network(dst, strict=False)
    fields = {"family": AF_INET if net.version == 4 else AF_INET6, "dst_len": net.prefixlen,
              "table": RT_TABLE_MAIN, "proto": RTPROT_STATIC, "type": RTN_UNICAST,
              "scope": RT_SCOPE_UNIVERSE if gw else RT_SCOPE_LINK}
    attrs: list[Any] = [["RTA_DST", str(net.network_address)], ["RTA_OIF", index]]
    if gw:
        attrs.append(["RTA_GATEWAY", gw])
    with contextlib.suppress(AlreadyExists):
        _request(h, f"add route {dst} via {gw or 'link'}", "route", fields, attrs, RTM_NEWROUTE,
                 NLM_F_CREATE | NLM_F_EXCL)


def routes(h: Handle, index: int) -> list[Route]:
    """Main-table unicast routes leaving through link `index`."""
    from cni import rtnl
    from cni.rtnl import NLM_F_DUMP, RTM_GETROUTE

    out = []
    for family in (AF_INET, AF_INET6):
        msgs = _request(h, "dump routes", "route", {"family": family, "table": RT_TABLE_MAIN},
                        [["RTA_OIF", index]], RTM_GETROUTE, NLM_F_DUMP)
        for chunk in msgs:
            kind, dst_len, table, oif, dst, gateway = rtnl.parse_route(chunk)
            if oif != index or kind != RTN_UNICAST or table != RT_TABLE_MAIN:
                continue
            out.append(Route(f"{dst or ('0.0.0.0' if family == AF_INET else '::')}/{dst_len}", gateway or None))
    return out
