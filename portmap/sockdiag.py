"""Which sockets of this network namespace are bound to given ports: netlink
sock_diag (NETLINK_SOCK_DIAG, the interface `ss` uses), with pyroute2's netlink
message codec over a plain socket, as cni/rtnl.py does for rtnetlink.

A request names the protocol, the address family and the socket states, and
carries a filter (inet_diag bytecode: "local port in one of these ranges")
that the kernel runs on each socket, so only the sockets on the asked ports come
back and the work here is O(those ports), however many sockets the node holds.
TCP listeners of both families come in one request (TCPDIAG_GETSOCK, the
original request, which leaves the family unset); UDP and SCTP, which only the
family-specific request reaches, take one per family. SCTP is asked only when
its module is loaded (/proc/net/sctp): a request would load it, and without it
no SCTP socket can exist; sctp_diag does not run the filter, so its endpoints
are filtered here.

pyroute2's own diag module imports its whole socket machinery (asyncio and
more): the two message layouts are declared here on pyroute2's nlmsg instead.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Any, NamedTuple

NETLINK_SOCK_DIAG = 4
TCPDIAG_GETSOCK = 18  # struct inet_diag_req: both families in one dump (the kernel sets AF_UNSPEC)
SOCK_DIAG_BY_FAMILY = 20  # struct inet_diag_req_v2
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
HEADER = struct.Struct("=IHHII")
RECV_BYTES = 1 << 18
REPLY_TIMEOUT_SECONDS = 10.0

INET_DIAG_REQ_BYTECODE = 1
INET_DIAG_SKV6ONLY = 11
BC_JMP, BC_S_GE, BC_S_LE = 1, 2, 3
BC_OP = struct.Struct("=BBH")  # struct inet_diag_bc_op: code, yes, no

TCP_LISTEN = 10
TCP_CLOSE = 7  # an unconnected UDP socket, a bound SCTP endpoint
PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "sctp": socket.IPPROTO_SCTP}
# what counts as holding a port: a TCP listener, an unconnected UDP socket (a server), an SCTP endpoint
STATES = {"tcp": 1 << TCP_LISTEN, "udp": 1 << TCP_CLOSE, "sctp": (1 << TCP_LISTEN) | (1 << TCP_CLOSE)}


class Unavailable(OSError):
    """The kernel does not answer sock_diag requests (no inet_diag, not allowed)."""


class Socket(NamedTuple):
    """One socket bound to a local port."""

    protocol: str
    family: int  # 4 or 6
    address: str  # the bound address: 0.0.0.0 or :: for any
    port: int
    v6only: bool
    inode: int
    uid: int
    cookie: int  # SO_COOKIE: unique per socket for the boot, what berth's proxy records of its own

    def describe(self) -> str:
        where = f"[{self.address}]" if self.family == 6 else self.address
        return f"{where}:{self.port}/{self.protocol} (socket inode {self.inode}, uid {self.uid})"


def port_filter(ranges: list[tuple[int, int]]) -> bytes:
    """inet_diag bytecode for "local port in one of `ranges`". Each range is
    `sport >= lo && sport <= hi`; a failed test jumps to the next range, a
    passed one falls through to a jump over the rest (the "or" that `ss`
    compiles); running off the end is a match, past it is none."""
    blocks = [BC_OP.pack(BC_S_GE, 8, 20) + BC_OP.pack(0, 0, lo) + BC_OP.pack(BC_S_LE, 8, 12) + BC_OP.pack(0, 0, hi)
              for lo, hi in merge(ranges)]
    code = blocks[-1]
    for block in reversed(blocks[:-1]):
        code = block + BC_OP.pack(BC_JMP, 4, len(code) + 4) + code
    return code


def merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _messages() -> tuple[Any, Any, Any]:
    from cni.rtnl import lazy_pyroute2

    lazy_pyroute2()
    from pyroute2.netlink import nlmsg

    request_nlas = (("INET_DIAG_REQ_NONE", "none"), ("INET_DIAG_REQ_BYTECODE", "cdata"))
    # the kernel's struct names, as pyroute2 spells them
    inet_diag_req = type("inet_diag_req", (nlmsg,), {  # struct inet_diag_req (TCPDIAG_GETSOCK)
        "fields": (("idiag_family", "B"), ("idiag_src_len", "B"), ("idiag_dst_len", "B"), ("idiag_ext", "B"),
                   ("idiag_sport", ">H"), ("idiag_dport", ">H"), ("idiag_src", ">4I"), ("idiag_dst", ">4I"),
                   ("idiag_if", "I"), ("idiag_cookie", "Q"), ("idiag_states", "I"), ("idiag_dbs", "I")),
        "nla_map": request_nlas})
    inet_diag_req_v2 = type("inet_diag_req_v2", (nlmsg,), {  # struct inet_diag_req_v2 (SOCK_DIAG_BY_FAMILY)
        "fields": (("sdiag_family", "B"), ("sdiag_protocol", "B"), ("idiag_ext", "B"), ("pad", "B"),
                   ("idiag_states", "I"), ("idiag_sport", ">H"), ("idiag_dport", ">H"), ("idiag_src", ">4I"),
                   ("idiag_dst", ">4I"), ("idiag_if", "I"), ("idiag_cookie", "Q")),
        "nla_map": request_nlas})
    # struct inet_diag_msg, and the attribute that says whether a v6 socket is v6-only
    inet_diag_msg = type("inet_diag_msg", (nlmsg,), {
        "fields": (("idiag_family", "B"), ("idiag_state", "B"), ("idiag_timer", "B"), ("idiag_retrans", "B"),
                   ("idiag_sport", ">H"), ("idiag_dport", ">H"), ("idiag_src", ">4I"), ("idiag_dst", ">4I"),
                   ("idiag_if", "I"), ("idiag_cookie", "Q"), ("idiag_expires", "I"), ("idiag_rqueue", "I"),
                   ("idiag_wqueue", "I"), ("idiag_uid", "I"), ("idiag_inode", "I")),
        "nla_map": (*((f"INET_DIAG_{i}", "hex") for i in range(INET_DIAG_SKV6ONLY)), ("INET_DIAG_SKV6ONLY", "uint8"))})
    return inet_diag_req, inet_diag_req_v2, inet_diag_msg


_classes: tuple[Any, Any, Any] | None = None


def _zero_ids(req: Any) -> None:
    for key in ("idiag_sport", "idiag_dport", "idiag_if", "idiag_cookie"):
        req[key] = 0
    req["idiag_src"] = req["idiag_dst"] = (0, 0, 0, 0)


def bound(wanted: dict[str, list[tuple[int, int]]]) -> list[Socket]:
    """Sockets holding a port of `wanted` (protocol -> port ranges), of both families.
    Raises Unavailable when the kernel cannot tell."""
    global _classes
    wanted = {proto: ranges for proto, ranges in wanted.items() if ranges and proto in PROTOCOLS}
    if not wanted:
        return []
    if _classes is None:
        _classes = _messages()
    compat, v2, reply = _classes
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
    except OSError as exc:
        raise Unavailable(exc.errno, f"sock_diag: {exc.strerror or exc}") from None
    out: list[Socket] = []
    try:
        sock.settimeout(REPLY_TIMEOUT_SECONDS)
        sock.bind((0, 0))
        seq = 0
        for proto, ranges in wanted.items():
            code = port_filter(ranges)
            requests: list[tuple[Any, int, int | None]]
            if proto == "tcp":
                requests = [(compat, TCPDIAG_GETSOCK, None)]
            elif proto == "sctp" and not os.path.exists("/proc/net/sctp"):
                continue
            else:
                requests = [(v2, SOCK_DIAG_BY_FAMILY, family) for family in (socket.AF_INET, socket.AF_INET6)]
            for cls, kind, family in requests:
                req = cls()
                _zero_ids(req)
                req["idiag_states"] = STATES[proto]
                req["idiag_ext"] = 0
                if family is None:
                    req.update(idiag_family=0, idiag_src_len=0, idiag_dst_len=0, idiag_dbs=0)
                else:
                    req.update(sdiag_family=family, sdiag_protocol=PROTOCOLS[proto], pad=0)
                # sctp_diag runs no filter: the ports are matched below
                req["attrs"] = [] if proto == "sctp" else [["INET_DIAG_REQ_BYTECODE", code]]
                seq += 1
                out += [s for s in _dump(sock, req, kind, seq, reply, proto)
                        if any(lo <= s.port <= hi for lo, hi in ranges)]
    except OSError as exc:
        if isinstance(exc, Unavailable):
            raise
        raise Unavailable(exc.errno, f"sock_diag: {exc.strerror or exc}") from None
    finally:
        sock.close()
    return out


def _dump(sock: socket.socket, req: Any, kind: int, seq: int, reply: Any, proto: str) -> list[Socket]:
    req["header"]["type"] = kind
    req["header"]["flags"] = NLM_F_REQUEST | NLM_F_DUMP
    req["header"]["sequence_number"] = seq
    req["header"]["pid"] = 0
    req.encode()
    sock.send(req.data)
    out: list[Socket] = []
    while True:
        buf = sock.recv(RECV_BYTES)
        offset = 0
        while offset + HEADER.size <= len(buf):
            length, mtype, _flags, mseq, _pid = HEADER.unpack_from(buf, offset)
            if length < HEADER.size:
                return out
            chunk = buf[offset:offset + length]
            offset += (length + 3) & ~3
            if mseq != seq:
                continue
            if mtype == NLMSG_DONE:
                return out
            if mtype == NLMSG_ERROR:
                (code,) = struct.unpack_from("=i", chunk, HEADER.size)
                if code:
                    raise Unavailable(-code, f"sock_diag ({proto}): {os.strerror(-code)}")
                return out
            msg = reply(chunk)
            msg.decode()
            out.append(_socket(msg, proto))


def _socket(msg: Any, proto: str) -> Socket:
    family = 6 if msg["idiag_family"] == socket.AF_INET6 else 4
    words = msg["idiag_src"]
    if family == 4:
        address = socket.inet_ntop(socket.AF_INET, struct.pack(">I", words[0]))
    else:
        address = socket.inet_ntop(socket.AF_INET6, struct.pack(">4I", *words))
    v6only = bool(msg.get_attr("INET_DIAG_SKV6ONLY")) if family == 6 else False
    return Socket(proto, family, address, int(msg["idiag_sport"]), v6only, int(msg["idiag_inode"]),
                  int(msg["idiag_uid"]), int(msg["idiag_cookie"]))
