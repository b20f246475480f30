"""Which sockets of this network namespace are bound to given ports: netlink
sock_diag (NETLINK_SOCK_DIAG, the interface `ss` uses), over a plain netlink
socket with the kernel's structs packed here (struct inet_diag_req,
inet_diag_req_v2, inet_diag_msg), as cni/rtnl.py does for rtnetlink: pyroute2's
codec (its message classes) costs more to import than the whole request, on
every portmap ADD; tests/unit/test_sockdiag.py checks the layouts against it.

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
"""

from __future__ import annotations

import _socket  # the C module: socket.py would import enum and selectors for every exec
import os
import struct

TYPE_CHECKING = False  # mypy treats this name as True: typing stays off the exec path
if TYPE_CHECKING:
    from typing import NamedTuple
else:
    from cni.tuples import NamedTuple

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
AF_INET, AF_INET6 = 2, 10
PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132}  # IPPROTO_*
# struct inet_diag_sockid: sport, dport (network order), src, dst (16 bytes each), if, cookie (two u32,
# low first: a native u64)
SOCKID = "2s2s16s16sIQ"
REQ = struct.Struct("=BBBB" + SOCKID + "II")  # struct inet_diag_req: family, src_len, dst_len, ext, id, states, dbs
REQ_V2 = struct.Struct("=BBBBI" + SOCKID)  # struct inet_diag_req_v2: family, protocol, ext, pad, states, id
MSG = struct.Struct("=BBBB" + SOCKID + "IIIII")  # struct inet_diag_msg: family, state, timer, retrans, id,
# expires, rqueue, wqueue, uid, inode
ZERO_ID = (b"\0\0", b"\0\0", bytes(16), bytes(16), 0, 0)
RTA = struct.Struct("=HH")
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


def request(proto: str, family: int | None, ranges: list[tuple[int, int]], seq: int) -> bytes:
    """One dump request: TCPDIAG_GETSOCK (both families) when `family` is None,
    else SOCK_DIAG_BY_FAMILY; with the port filter except for SCTP (not run)."""
    if family is None:
        kind, body = TCPDIAG_GETSOCK, REQ.pack(0, 0, 0, 0, *ZERO_ID, STATES[proto], 0)
    else:
        kind, body = SOCK_DIAG_BY_FAMILY, REQ_V2.pack(family, PROTOCOLS[proto], 0, 0, STATES[proto], *ZERO_ID)
    if proto != "sctp":
        code = port_filter(ranges)
        attr = RTA.pack(RTA.size + len(code), INET_DIAG_REQ_BYTECODE) + code
        body += attr + bytes(-len(attr) % 4)
    return HEADER.pack(HEADER.size + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def bound(wanted: dict[str, list[tuple[int, int]]]) -> list[Socket]:
    """Sockets holding a port of `wanted` (protocol -> port ranges), of both families.
    Raises Unavailable when the kernel cannot tell."""
    wanted = {proto: ranges for proto, ranges in wanted.items() if ranges and proto in PROTOCOLS}
    if not wanted:
        return []
    try:
        sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
    except OSError as exc:
        raise Unavailable(exc.errno, f"sock_diag: {exc.strerror or exc}") from None
    out: list[Socket] = []
    try:
        sock.settimeout(REPLY_TIMEOUT_SECONDS)
        sock.bind((0, 0))
        seq = 0
        for proto, ranges in wanted.items():
            families: tuple[int | None, ...]
            if proto == "tcp":
                families = (None,)
            elif proto == "sctp" and not os.path.exists("/proc/net/sctp"):
                continue
            else:
                families = (AF_INET, AF_INET6)
            for family in families:
                seq += 1
                sock.send(request(proto, family, ranges, seq))
                out += [s for s in _dump(sock, seq, proto) if any(lo <= s.port <= hi for lo, hi in ranges)]
    except OSError as exc:
        if isinstance(exc, Unavailable):
            raise
        raise Unavailable(exc.errno, f"sock_diag: {exc.strerror or exc}") from None
    finally:
        sock.close()
    return out


def _dump(sock: _socket.socket, seq: int, proto: str) -> list[Socket]:
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
            out.append(parse(chunk, proto))


def parse(chunk: bytes, proto: str) -> Socket:
    """One struct inet_diag_msg (after its netlink header) and its attributes."""
    (fam, _state, _timer, _retrans, sport, _dport, src, _dst, _if, cookie, _exp, _rq, _wq, uid,
     inode) = MSG.unpack_from(chunk, HEADER.size)
    family = 6 if fam == AF_INET6 else 4
    address = _socket.inet_ntop(AF_INET6, src) if family == 6 else _socket.inet_ntop(AF_INET, src[:4])
    v6only = False
    offset = HEADER.size + MSG.size
    while family == 6 and offset + RTA.size <= len(chunk):
        length, kind = RTA.unpack_from(chunk, offset)
        if length < RTA.size:
            break
        if kind & 0x3FFF == INET_DIAG_SKV6ONLY and length > RTA.size:
            v6only = bool(chunk[offset + RTA.size])
        offset += (length + 3) & ~3
    return Socket(proto, family, address, int.from_bytes(sport, "big"), v6only, inode, uid, cookie)
