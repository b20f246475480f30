"""Flush stale UDP/SCTP conntrack entries for mapped host ports.

A UDP "flow" to hostPort created before a DNAT rule existed (or while it pointed
at a container that is gone) keeps its old translation until it times out, so
traffic black-holes; deleting the entries makes the next packet hit the current
rules. TCP is left alone (a new connection gets a new entry). pyroute2's conntrack
costs more to import than the rest of a plugin call, so it is imported only when
there is such a mapping and the table is not empty.
"""

from __future__ import annotations

import _socket  # the C module: socket.py would import enum and selectors
import errno

from cni import sysctl
from cni.records import PortMapping

TYPE_CHECKING = False  # mypy treats this name as True: typing stays off the exec path
if TYPE_CHECKING:
    from typing import Any

PROTOCOLS = {"udp": _socket.IPPROTO_UDP, "sctp": _socket.IPPROTO_SCTP}


def needs_flush(mappings: list[PortMapping]) -> bool:
    return any(m.protocol in PROTOCOLS for m in mappings)


def table_empty() -> bool:
    """An empty (or absent) conntrack table of this netns: nothing to flush, and
    no reason to pay pyroute2's import."""
    count = sysctl.read(*sysctl.CONNTRACK_COUNT)
    return count is None or count == "0"  # None: nf_conntrack not loaded, no entries can exist


def flush(mappings: list[PortMapping], versions: tuple[int, ...] = (4, 6)) -> list[str]:
    """Delete entries whose original destination is (hostIP or any local address,
    hostPort) for each UDP/SCTP mapping, in the container's address families.
    Best effort: returns problems, never raises."""
    targets = [m for m in mappings if m.protocol in PROTOCOLS]
    if not targets or table_empty():
        return []
    try:
        from cni.rtnl import lazy_pyroute2

        lazy_pyroute2()  # skip pyroute2/__init__ (NDB, IPDB, ...): most of the import
        from pyroute2.conntrack import Conntrack
        from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple
    except ImportError as exc:
        return [f"conntrack unavailable: {exc}"]
    # (family, proto) -> {(daddr or None, port)}: one dump per pair, filtered here
    wanted: dict[tuple[int, int], set[tuple[str | None, int]]] = {}
    for m in targets:
        for version in [m.host_version] if m.host_version else versions:
            if version not in versions:
                continue
            family = int(_socket.AF_INET if version == 4 else _socket.AF_INET6)
            ports = wanted.setdefault((family, PROTOCOLS[m.protocol]), set())
            ports.update((m.host_ip or None, p) for p in range(m.host_lo, m.host_hi + 1))
    problems: list[str] = []
    try:
        ct = Conntrack()
    except OSError as exc:
        return [f"conntrack socket: {exc}"]
    try:
        for (family, proto), ports in wanted.items():
            problems += _delete_matching(ct, NFCTAttrTuple(family=family, proto=proto), ports)
    finally:
        ct.close()
    return problems


def _matches(orig: Any, ports: set[tuple[str | None, int]]) -> bool:
    return (None, orig.dport) in ports or (orig.daddr, orig.dport) in ports


def _delete_matching(ct: Any, selector: Any, ports: set[tuple[str | None, int]]) -> list[str]:
    problems: list[str] = []
    try:
        entries = [e for e in ct.dump_entries(tuple_orig=selector) if _matches(e.tuple_orig, ports)]
    except Exception as exc:  # netlink errors: report, keep going
        return [f"conntrack dump: {exc}"]
    for entry in entries:
        try:
            ct.delete(entry)
        except Exception as exc:
            if getattr(exc, "code", None) != errno.ENOENT:  # expired meanwhile
                problems.append(f"conntrack delete: {exc}")
    return problems


CT_PROTOCOLS = {"tcp": _socket.IPPROTO_TCP, "udp": _socket.IPPROTO_UDP, "sctp": _socket.IPPROTO_SCTP}


def count(mappings: list[PortMapping]) -> tuple[int, str | None]:
    """Conntrack entries whose original destination is one of the mapped host ports."""
    if not mappings:
        return 0, None
    try:
        from cni.rtnl import lazy_pyroute2

        lazy_pyroute2()
        from pyroute2.conntrack import Conntrack
        from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple
    except ImportError as exc:
        return 0, f"conntrack unavailable: {exc}"
    count = 0
    try:
        ct = Conntrack()
    except OSError as exc:
        return 0, f"conntrack socket: {exc}"
    try:
        for proto in sorted({m.protocol for m in mappings}):
            for family in (_socket.AF_INET, _socket.AF_INET6):
                selector = NFCTAttrTuple(family=int(family), proto=CT_PROTOCOLS[proto])
                for entry in ct.dump_entries(tuple_orig=selector):
                    orig = entry.tuple_orig
                    if any(m.protocol == proto and m.host_lo <= (orig.dport or 0) <= m.host_hi
                           and (not m.host_ip or orig.daddr == m.host_ip) for m in mappings):
                        count += 1
    except Exception as exc:  # netlink errors: the count is a hint, not a verdict
        return count, f"conntrack dump: {exc}"
    finally:
        ct.close()
    return count, None
