"""A synchronous rtnetlink socket, and the messages berth sends and reads on it.

pyroute2 0.9's IPRoute runs every request through an asyncio event loop and
builds one per handle, and its NetNS forks a helper process to get a socket
inside another namespace. A plugin call makes some fifteen small requests in
two namespaces, so that machinery cost more than the kernel work itself; and
importing pyroute2's message classes alone cost more than the rest of a
bridge plugin's imports. Here a request is: encode (encode(), link_request()),
send on an AF_NETLINK socket, read until the ACK/DONE; the replies berth reads
(links, addresses, routes) are parsed here too (parse_link, parse_addr,
parse_route). Each is checked against pyroute2's message classes in the unit
tests, which keeps pyroute2 the oracle; a plugin call loads none of it. The
rare paths that still use pyroute2 (bridge VLANs, conntrack) load it without
its package __init__, which eagerly imports NDB, IPDB, asyncio, ethtool, ...
(see `lazy_pyroute2`).

A socket for another namespace is opened after a setns() of this thread and
keeps that namespace for its life.
"""

from __future__ import annotations

import _socket  # the C module: socket.py would import enum and selectors for every exec
import os
import struct
from collections.abc import Callable

TYPE_CHECKING = False  # mypy treats this name as True: typing stays off the exec path
if TYPE_CHECKING:
    from typing import Any

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_EXT_ACK = 11
NETLINK_GET_STRICT_CHK = 12  # the kernel filters dumps by the request's fields (index, family, table)

NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLMSG_ERROR = 2
NLMSG_DONE = 3

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_GETROUTE = 24, 26

HEADER = struct.Struct("=IHHII")  # struct nlmsghdr
RECV_BYTES = 1 << 20
REPLY_TIMEOUT_SECONDS = 30.0  # the kernel answers at once; a stuck reply must not hang a pod's ADD forever


class RtnlError(OSError):
    """The kernel refused a request (errno in .errno)."""


class DumpInterrupted(Exception):
    """The dumped table changed while it was read (NLM_F_DUMP_INTR): ask again."""


def lazy_pyroute2() -> None:
    """Make `pyroute2.x.y` importable without running pyroute2/__init__.py.

    The package module is registered with its real __path__; a later
    `from pyroute2 import NAME` (not a submodule) runs the real __init__ into
    that same module on first use, so other code sees the normal package.
    """
    import sys

    if "pyroute2" in sys.modules:
        return
    import importlib
    import importlib.util
    import types

    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return
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


class RtnlSocket:
    """One NETLINK_ROUTE socket in the namespace it was opened in."""

    def __init__(self) -> None:
        self.sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        self.seq = 0
        try:
            self.sock.settimeout(REPLY_TIMEOUT_SECONDS)
            self.sock.bind((0, 0))
            for option in (NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK):
                try:
                    self.sock.setsockopt(SOL_NETLINK, option, 1)
                except OSError:  # an old kernel: filtering is then done by the callers
                    pass
        except BaseException:
            self.sock.close()
            raise

    def close(self) -> None:
        self.sock.close()

    def request(self, body: bytes, msg_type: int, flags: int = 0) -> list[bytes]:
        """Send one message (`body`: what follows the header, see encode() and
        link_request()) and return the reply messages' bytes, headers included
        (see parse_link, parse_addr, parse_route); RtnlError on a kernel error.

        Requests that change something ask for an ACK, so an error can never go
        unnoticed; a dump ends with NLMSG_DONE; a plain GET with its one reply.
        """
        self.seq = self.seq + 1 if self.seq < 0x7FFFFFFF else 1
        seq = self.seq
        dump = flags & NLM_F_DUMP == NLM_F_DUMP
        if not dump and msg_type not in (RTM_GETLINK, RTM_GETADDR, RTM_GETROUTE):
            flags |= NLM_F_ACK
        self.sock.send(HEADER.pack(HEADER.size + len(body), msg_type, flags | NLM_F_REQUEST, seq, 0) + body)
        replies: list[bytes] = []
        interrupted = False
        while True:
            buf = self.sock.recv(RECV_BYTES)
            offset = 0
            while offset + HEADER.size <= len(buf):
                length, kind, mflags, mseq, _pid = HEADER.unpack_from(buf, offset)
                if length < HEADER.size:
                    break
                chunk = buf[offset:offset + length]
                offset += (length + 3) & ~3
                if mseq != seq:
                    continue  # a late answer to an earlier request (never expected)
                if mflags & NLM_F_DUMP_INTR:
                    interrupted = True
                if kind == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", chunk, HEADER.size)
                    if code:
                        raise RtnlError(-code, os.strerror(-code))
                    return replies  # the ACK: always the last message
                if kind == NLMSG_DONE:
                    if interrupted:
                        raise DumpInterrupted()
                    return replies
                replies.append(chunk)
                if not dump and not mflags & NLM_F_MULTI and not flags & NLM_F_ACK:
                    return replies


class LinkEvents:
    """A socket in this thread's netns that hears the kernel announce link changes
    (RTMGRP_LINK). Opened before a request, it cannot miss that request's events."""

    RTMGRP_LINK = 1

    def __init__(self) -> None:
        self.sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        try:
            self.sock.bind((0, self.RTMGRP_LINK))
        except BaseException:
            self.sock.close()
            raise

    def close(self) -> None:
        self.sock.close()

    def wait_deleted(self, index: int, give_up: Callable[[], bool], poll_seconds: float = 0.02) -> bool:
        """True once RTM_DELLINK for ifindex `index` arrives; False as soon as
        give_up() says so, or when events were lost (ENOBUFS: the caller must wait
        another way)."""
        self.sock.settimeout(poll_seconds)
        while not give_up():
            try:
                buf = self.sock.recv(RECV_BYTES)
            except TimeoutError:
                continue
            except OSError:  # ENOBUFS: the queue overflowed, our event may be gone
                return False
            offset = 0
            while offset + HEADER.size + IFINFOMSG.size <= len(buf):
                length, kind, _flags, _seq, _pid = HEADER.unpack_from(buf, offset)
                if length < HEADER.size:
                    break
                if kind == RTM_DELLINK and IFINFOMSG.unpack_from(buf, offset + HEADER.size)[2] == index:
                    return True
                offset += (length + 3) & ~3
        return False


# --- the two replies read on every ADD, decoded without pyroute2 ---------------
# pyroute2 decodes every attribute of a link reply into objects, many times the
# kernel's own cost of the reply; an ADD reads five links. These read only the
# attributes cni.netlink uses, straight from the bytes.

IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
NLA = struct.Struct("=HH")
U32 = struct.Struct("=I")
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER, IFLA_LINKINFO, IFLA_PROMISCUITY = 1, 3, 4, 5, 10, 18, 30
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA = 1, 2, 4, 5
IFLA_BR_VLAN_FILTERING = 7
IFLA_BRPORT_MODE = 4  # hairpin
IFA_ADDRESS, IFA_LOCAL = 1, 2


IFLA_EXT_MASK = 29


def _nla(kind: int, value: bytes) -> bytes:
    return NLA.pack(NLA.size + len(value), kind) + value + b"\0" * (-len(value) % 4)


def link_request(index: int, name: str, ext_mask: int) -> bytes:
    """The body of an RTM_GETLINK for `index`, or for `name` when index is 0."""
    body = IFINFOMSG.pack(0, 0, index, 0, 0)
    if name:
        body += _nla(IFLA_IFNAME, name.encode() + b"\0")
    return body + _nla(IFLA_EXT_MASK, U32.pack(ext_mask))


def attributes(data: bytes, offset: int, end: int) -> dict[int, bytes]:
    """Top-level netlink attributes in data[offset:end], by type (a repeated type keeps its first)."""
    out: dict[int, bytes] = {}
    while offset + NLA.size <= end:
        length, kind = NLA.unpack_from(data, offset)
        if length < NLA.size or offset + length > end:
            break  # truncated: what was read so far stands
        out.setdefault(kind & NLA_TYPE_MASK, data[offset + NLA.size:offset + length])
        offset += (length + 3) & ~3
    return out


def _string(value: bytes | None) -> str:
    return value.split(b"\0", 1)[0].decode("utf-8", "replace") if value else ""


def _u32(value: bytes | None) -> int:
    return U32.unpack_from(value)[0] if value and len(value) >= U32.size else 0


def _u8(value: bytes | None) -> int | None:
    return value[0] if value else None


def parse_link(chunk: bytes) -> dict[str, Any]:
    """An RTM_NEWLINK message (nlmsghdr included): the fields of cni.netlink.Link."""
    _family, _type, index, flags, _change = IFINFOMSG.unpack_from(chunk, HEADER.size)
    attrs = attributes(chunk, HEADER.size + IFINFOMSG.size, len(chunk))
    kind = ""
    vlan_filtering = hairpin = None
    info_raw = attrs.get(IFLA_LINKINFO)
    if info_raw:
        info = attributes(info_raw, 0, len(info_raw))
        kind = _string(info.get(IFLA_INFO_KIND))
        data = info.get(IFLA_INFO_DATA)
        if kind == "bridge" and data:
            vlan_filtering = _u8(attributes(data, 0, len(data)).get(IFLA_BR_VLAN_FILTERING))
        slave = info.get(IFLA_INFO_SLAVE_DATA)
        if slave and _string(info.get(IFLA_INFO_SLAVE_KIND)) == "bridge":
            hairpin = _u8(attributes(slave, 0, len(slave)).get(IFLA_BRPORT_MODE))
    mac = attrs.get(IFLA_ADDRESS) or b""
    return {
        "index": index, "name": _string(attrs.get(IFLA_IFNAME)), "kind": kind,
        "mac": ":".join(f"{b:02x}" for b in mac), "mtu": _u32(attrs.get(IFLA_MTU)),
        "master": _u32(attrs.get(IFLA_MASTER)), "flags": flags, "peer_index": _u32(attrs.get(IFLA_LINK)),
        "promiscuity": _u32(attrs.get(IFLA_PROMISCUITY)), "vlan_filtering": vlan_filtering, "hairpin": hairpin,
    }


def parse_addr(chunk: bytes) -> tuple[int, int, int, str]:
    """An RTM_NEWADDR message: (family, index, prefixlen, address; "" if it has none)."""
    family, prefixlen, _flags, _scope, index = IFADDRMSG.unpack_from(chunk, HEADER.size)
    attrs = attributes(chunk, HEADER.size + IFADDRMSG.size, len(chunk))
    value = attrs.get(IFA_ADDRESS) or attrs.get(IFA_LOCAL)
    address = ""
    if value:
        try:
            address = _socket.inet_ntop(family, value)
        except (ValueError, OSError):
            address = ""
    return family, index, prefixlen, address


# --- requests, encoded without pyroute2 ------------------------------------------
# The attributes berth sends, by message kind: name -> (type, codec). A nested
# codec names the table of its attributes; "peer" is veth's VETH_INFO_PEER (an
# ifinfomsg header, then link attributes); IFLA_INFO_DATA's table is chosen by
# the IFLA_INFO_KIND beside it. pyroute2 encodes the same shapes byte for byte
# (tests/unit/test_rtnl_encode.py), so it stays the oracle.

RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
NLA_F_NESTED = 0x8000

_TABLES: dict[str, dict[str, tuple[int, str]]] = {
    "link": {"IFLA_ADDRESS": (1, "mac"), "IFLA_IFNAME": (3, "str"), "IFLA_MTU": (4, "u32"),
             "IFLA_MASTER": (10, "u32"), "IFLA_PROTINFO": (12, "brport"), "IFLA_LINKINFO": (18, "linkinfo"),
             "IFLA_NET_NS_FD": (28, "u32")},
    "linkinfo": {"IFLA_INFO_KIND": (1, "str"), "IFLA_INFO_DATA": (2, "info_data")},
    "bridge": {"IFLA_BR_VLAN_FILTERING": (7, "u8")},
    "veth": {"VETH_INFO_PEER": (1, "peer")},
    "brport": {"IFLA_BRPORT_MODE": (4, "u8"), "IFLA_BRPORT_ISOLATED": (33, "u8")},
    "addr": {"IFA_ADDRESS": (1, "ip"), "IFA_LOCAL": (2, "ip")},
    "route": {"RTA_DST": (1, "ip"), "RTA_OIF": (4, "u32"), "RTA_GATEWAY": (5, "ip"), "RTA_TABLE": (15, "u32")},
}


def encode(kind: str, fields: dict[str, Any], attrs: list[Any]) -> bytes:
    """The body (after nlmsghdr) of a "link", "addr" or "route" message with header
    `fields` and attributes in pyroute2's form: [name, value], [name, {"attrs": [...]}],
    or (name, value, nla-flags)."""
    if kind == "link":
        head = IFINFOMSG.pack(fields.get("family", 0), 0, fields.get("index", 0), fields.get("flags", 0),
                              fields.get("change", 0))
    elif kind == "addr":
        head = IFADDRMSG.pack(fields.get("family", 0), fields.get("prefixlen", 0), fields.get("flags", 0),
                              fields.get("scope", 0), fields.get("index", 0))
    elif kind == "route":
        head = RTMSG.pack(fields.get("family", 0), fields.get("dst_len", 0), 0, 0, fields.get("table", 0),
                          fields.get("proto", 0), fields.get("scope", 0), fields.get("type", 0), 0)
    else:
        raise ValueError(f"no encoder for {kind!r} messages")
    return head + _attrs(kind, attrs)


def _attrs(table: str, attrs: list[Any]) -> bytes:
    codecs = _TABLES[table]
    kind = next((str(a[1]) for a in attrs if a[0] == "IFLA_INFO_KIND"), "")
    out = b""
    for item in attrs:
        name, value = item[0], item[1]
        flags = item[2] if len(item) > 2 else 0
        number, codec = codecs[name]
        out += _nla(number | flags, _value(codec, value, kind))
    return out


def _value(codec: str, value: Any, info_kind: str) -> bytes:
    if codec == "u8":
        return bytes([int(value)])
    if codec == "u32":
        return U32.pack(int(value))
    if codec == "str":
        return str(value).encode() + b"\0"
    if codec == "mac":
        return bytes(int(part, 16) for part in str(value).split(":"))
    if codec == "ip":
        text = str(value)
        return _socket.inet_pton(_socket.AF_INET6 if ":" in text else _socket.AF_INET, text)
    if codec == "peer":
        return IFINFOMSG.pack(0, 0, 0, 0, 0) + _attrs("link", value["attrs"])
    if codec == "info_data":
        return _attrs(info_kind, value["attrs"])
    return _attrs(codec, value["attrs"])  # a nested table: linkinfo, brport


def parse_route(chunk: bytes) -> tuple[int, int, int, int, str, str]:
    """An RTM_NEWROUTE message: (type, dst_len, table, oif, dst, gateway; "" when absent)."""
    family, dst_len, _src, _tos, table, _proto, _scope, kind, _flags = RTMSG.unpack_from(chunk, HEADER.size)
    attrs = attributes(chunk, HEADER.size + RTMSG.size, len(chunk))
    table_attr = attrs.get(RTA_TABLE)
    return (kind, dst_len, _u32(table_attr) if table_attr else table, _u32(attrs.get(RTA_OIF)),
            _address(family, attrs.get(RTA_DST)), _address(family, attrs.get(RTA_GATEWAY)))


RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15


def _address(family: int, value: bytes | None) -> str:
    if not value:
        return ""
    try:
        return _socket.inet_ntop(family, value)
    except (ValueError, OSError):
        return ""
