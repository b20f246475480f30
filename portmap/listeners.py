"""Host services on published ports: which of a node's sockets a mapping would
take the traffic of, and the ADD's refusal (hostListenerPolicy "error").

A port mapping DNATs what arrives for (hostIP or any local address, port) in the
families of the container's addresses, before the kernel looks for a socket,
and berth's userland proxy binds [::1]:port for it (portmap/proxy.py). A socket
in the node's namespace loses that traffic when it would have received it: a
socket on 0.0.0.0 receives for every IPv4 address, one on :: for every IPv6
address and, unless it is v6-only, every IPv4 address too; a v4-mapped address
(::ffff:a.b.c.d) is that IPv4 address; any other is its own address, except
that ::1 is never DNAT'ed (127.0.0.1 is: route_localnet). TCP counts
listeners, UDP unconnected sockets, SCTP bound endpoints (portmap/sockdiag.py).
The sockets of berth's own proxies are told apart by their cookies.
"""

from __future__ import annotations

from cni import errors
from cni.errors import CNIError
from cni.records import PortMapping
from portmap.sockdiag import Socket

TYPE_CHECKING = False  # mypy treats this name as True: typing stays off the exec path
if TYPE_CHECKING:
    from collections.abc import Iterable

Destination = tuple[int, str | None]  # (family, address or None for every local address)
PROXIED_PROTOCOLS = ("tcp", "udp")  # what berth's userland proxy serves on [::1]


def destinations(m: PortMapping, families: Iterable[int], proxied: bool) -> list[Destination]:
    """Where the mapping takes traffic: DNAT in the container's families, and
    [::1] when berth's proxy serves it."""
    fams = set(families)
    out: list[Destination] = []
    if not m.host_ip:
        out += [(v, None) for v in sorted(fams)]
    elif m.host_ip != "::1" and m.host_version in fams:
        out.append((m.host_version or 4, m.host_ip))
    if proxied and m.host_ip in ("", "::1") and m.protocol in PROXIED_PROTOCOLS:
        out.append((6, "::1"))
    return out


def receives(sock: Socket, dest: Destination) -> bool:
    """Would `sock` receive what is addressed to `dest` (on its port)?"""
    import ipaddress  # lazily: only where something listens on a mapped port

    family, address = dest
    addr = ipaddress.ip_address(sock.address)
    if sock.family == 6 and isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return family == 4 and address in (None, str(addr.ipv4_mapped))
    if addr.is_unspecified:
        return family == sock.family or (family == 4 and sock.family == 6 and not sock.v6only)
    if address is None and addr.compressed == "::1":
        return False  # the output chain never DNATs ::1 (only the proxy takes it, asked for by name)
    return family == sock.family and address in (None, addr.compressed)


def conflicts(mappings: list[PortMapping], families: Iterable[int], proxied: bool, sockets: list[Socket],
              own: frozenset[int] = frozenset()) -> list[tuple[PortMapping, Socket]]:
    """(mapping, socket) for each host socket a mapping would take traffic from;
    sockets whose cookie is in `own` (berth's proxies for these ports) aside."""
    fams = tuple(families)
    out = []
    for m in mappings:
        dests = destinations(m, fams, proxied)
        for sock in sockets:
            if sock.cookie in own or sock.protocol != m.protocol or not m.host_lo <= sock.port <= m.host_hi:
                continue
            if any(receives(sock, d) for d in dests):
                out.append((m, sock))
    return out


def wanted_ports(mappings: list[PortMapping]) -> dict[str, list[tuple[int, int]]]:
    out: dict[str, list[tuple[int, int]]] = {}
    for m in mappings:
        out.setdefault(m.protocol, []).append((m.host_lo, m.host_hi))
    return out


def refusal(found: list[tuple[PortMapping, Socket]]) -> CNIError:
    m, sock = found[0]
    where = f"{m.host_ip}:" if m.host_ip and ":" not in m.host_ip else f"[{m.host_ip}]:" if m.host_ip else ""
    held = "listens on" if sock.protocol == "tcp" else "is bound to"
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    return CNIError(errors.PORT_CONFLICT,
                    f"host port {where}{sock.port}/{m.protocol} is in use on this node: a socket {held} "
                    f"{sock.describe()}{more}",
                    'the mapping would take its traffic; stop that service, pick another hostPort, or set '
                    '"hostListenerPolicy": "allow" in the portmap config to publish the port anyway')


def check(mappings: list[PortMapping], families: Iterable[int], proxied: bool,
          own: frozenset[int] = frozenset()) -> list[str]:
    """Raise PORT_CONFLICT when a host socket holds a mapped port; returns
    warnings (the kernel could not be asked)."""
    from portmap import sockdiag

    try:
        sockets = sockdiag.bound(wanted_ports(mappings))
    except sockdiag.Unavailable as exc:
        return [f"host listeners not checked: {exc.strerror or exc}"]
    found = conflicts(mappings, families, proxied, sockets, own)
    if found:
        raise refusal(found)
    return []


def processes(inodes: set[int]) -> dict[int, str]:
    """inode -> "name (pid N)" of the processes holding these sockets: a walk over
    every process's open files, for the operator's tools only (never an ADD)."""
    import os

    wanted = {f"socket:[{i}]": i for i in inodes}
    out: dict[int, str] = {}
    if not wanted:
        return out
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return out
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                inode = wanted.get(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                continue
            if inode is not None and inode not in out:
                try:
                    with open(f"/proc/{pid}/comm") as fh:
                        name = fh.read().strip()
                except OSError:
                    name = "?"
                out[inode] = f"{name} (pid {pid})"
        if len(out) == len(wanted):
            break
    return out
