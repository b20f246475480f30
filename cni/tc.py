"""Traffic control over rtnetlink: the qdiscs and the filter berth-bandwidth sets up, read back for CHECK.

What berth-bandwidth needs, as upstream's bandwidth plugin builds it with vishvananda/netlink:

    tbf (root, handle 1:)       rate, buffer (ticks), limit: the shaper
    ingress (handle ffff:)      on the host veth, for traffic the container sends
    u32 match-all (pref 1)      in that ingress qdisc: classid 1:1, mirred egress redirect to the ifb

The messages are packed and parsed here with struct and sent on cni.rtnl's socket
(through cni.netlink, which translates errors by errno). pyroute2's tcmsg package
would do the packing, but importing it loads every qdisc, classifier and action
module it knows, and with them dataclasses and inspect: more than the rest of a
plugin call costs (docs/contributing.md, import cost).
"""

from __future__ import annotations

import struct
from _socket import htons

from cni import netlink
from cni.rtnl import HEADER, NLA, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, attributes

TYPE_CHECKING = False  # mypy treats this name as True: typing stays off the exec path
if TYPE_CHECKING:
    from typing import NamedTuple
else:
    from cni.tuples import NamedTuple

RTM_NEWQDISC, RTM_DELQDISC, RTM_GETQDISC = 36, 37, 38
RTM_NEWTFILTER, RTM_GETTFILTER = 44, 46
TCMSG = struct.Struct("=BxxxiIII")  # family, ifindex, handle, parent, info
TC_H_ROOT = 0xFFFFFFFF
TC_H_INGRESS = 0xFFFFFFF1
INGRESS_HANDLE = 0xFFFF0000  # ffff:
TBF_HANDLE = 0x00010000  # 1:
REDIRECT_CLASSID = 0x00010001  # 1:1, as upstream's filter names it
TCA_KIND, TCA_OPTIONS = 1, 2
TCA_TBF_PARMS, TCA_TBF_RATE64 = 1, 4
RATESPEC = "BBHhHI"  # cell_log, linklayer, overhead, cell_align, mpu, rate
TBF_QOPT = struct.Struct("=" + RATESPEC + RATESPEC + "III")  # rate, peakrate, limit, buffer, mtu
TCA_U32_CLASSID, TCA_U32_SEL, TCA_U32_ACT = 1, 5, 7
U32_SEL = struct.Struct("=BBBxHHhhI")  # flags, offshift, nkeys, offmask, off, offoff, hoff, hmask
U32_KEY = struct.Struct("=IIii")  # mask, val, off, offmask (mask and val 0: match all)
TC_U32_TERMINAL = 1
TCA_ACT_KIND, TCA_ACT_OPTIONS = 1, 2
TCA_MIRRED_PARMS = 2
MIRRED = struct.Struct("=IIiiiiI")  # index, capab, action, refcnt, bindcnt, eaction, ifindex
TC_ACT_STOLEN = 4
TCA_EGRESS_REDIR = 1
ETH_P_ALL = 0x0003
NLA_F_NESTED = 0x8000
U32 = struct.Struct("=I")
U64 = struct.Struct("=Q")

TIME_UNITS_PER_SEC = 1_000_000
LATENCY_USEC = 25_000.0  # upstream's latencyInMillis: the tbf limit holds 25 ms at the rate, plus the burst
MAX_U32 = 0xFFFFFFFF


class Qdisc(NamedTuple):
    kind: str
    handle: int
    parent: int
    rate: int = 0  # tbf: bytes per second
    limit: int = 0  # tbf: bytes
    buffer: int = 0  # tbf: ticks


def _nla(kind: int, value: bytes) -> bytes:
    return NLA.pack(NLA.size + len(value), kind) + value + b"\0" * (-len(value) % 4)


def _nested(kind: int, *children: bytes) -> bytes:
    return _nla(kind | NLA_F_NESTED, b"".join(children))


def _kind(name: str) -> bytes:
    return _nla(TCA_KIND, name.encode() + b"\0")


# --- the shaper's numbers (upstream's buffer, limit and latency) --------------------

_tick_in_usec: float | None = None


def tick_in_usec() -> float:
    """Scheduler ticks per microsecond, from /proc/net/psched as tc and netlink libraries read it."""
    global _tick_in_usec
    if _tick_in_usec is None:
        try:
            with open("/proc/net/psched") as fh:
                t2us, us2t, clock_res = (int(v, 16) for v in fh.read().split()[:3])
            if clock_res == 1_000_000_000:
                t2us = us2t
            _tick_in_usec = t2us / us2t * (clock_res / TIME_UNITS_PER_SEC)
        except (OSError, ValueError, ZeroDivisionError):
            _tick_in_usec = 15.625  # 1000 / 64: what every kernel since 2.6.30 reports
    return _tick_in_usec


def _u32(value: float) -> int:
    """A float as Go's uint32() truncates it; beyond 32 bits it is clamped (Go would wrap)."""
    return max(0, min(MAX_U32, int(value)))


def tbf_parameters(rate_bits: int, burst_bits: int) -> tuple[int, int, int]:
    """(rate in bytes/s, buffer in ticks, limit in bytes) of upstream's tbf for a rate
    and burst in bits, computed as upstream does (so CHECK compares exact values)."""
    rate, burst = rate_bits // 8, burst_bits // 8
    buffer = _u32(_u32(burst * TIME_UNITS_PER_SEC / rate) * tick_in_usec())
    limit = min(MAX_U32, _u32(rate * LATENCY_USEC / TIME_UNITS_PER_SEC) + burst)
    return rate, buffer, limit


# --- requests -------------------------------------------------------------------------

def _tcmsg(index: int, handle: int, parent: int, info: int = 0) -> bytes:
    return TCMSG.pack(0, index, handle, parent, info)


def add_tbf(h: netlink.Handle, index: int, rate: int, buffer: int, limit: int, what: str) -> None:
    """The root tbf (handle 1:) on link `index`, with rate in bytes/s, buffer in ticks, limit in bytes."""
    parms = TBF_QOPT.pack(0, 0, 0, 0, 0, min(rate, MAX_U32), 0, 0, 0, 0, 0, 0, limit, buffer, 0)
    options = [_nla(TCA_TBF_PARMS, parms)]
    if rate > MAX_U32:
        options.append(_nla(TCA_TBF_RATE64, U64.pack(rate)))
    body = _tcmsg(index, TBF_HANDLE, TC_H_ROOT) + _kind("tbf") + _nested(TCA_OPTIONS, *options)
    netlink.send_raw(h, f"add tbf qdisc to {what}", body, RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL)


def add_ingress(h: netlink.Handle, index: int, what: str) -> None:
    body = _tcmsg(index, INGRESS_HANDLE, TC_H_INGRESS) + _kind("ingress") + _nested(TCA_OPTIONS)
    netlink.send_raw(h, f"add ingress qdisc to {what}", body, RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL)


def add_redirect(h: netlink.Handle, index: int, target: int, what: str) -> None:
    """In link `index`'s ingress qdisc: every packet redirected to the egress of link `target`."""
    selector = U32_SEL.pack(TC_U32_TERMINAL, 0, 1, 0, 0, 0, 0, 0) + U32_KEY.pack(0, 0, 0, 0)
    mirred = MIRRED.pack(0, 0, TC_ACT_STOLEN, 0, 0, TCA_EGRESS_REDIR, target)
    action = _nested(1, _nla(TCA_ACT_KIND, b"mirred\0"), _nested(TCA_ACT_OPTIONS, _nla(TCA_MIRRED_PARMS, mirred)))
    options = _nested(TCA_OPTIONS, _nla(TCA_U32_CLASSID, U32.pack(REDIRECT_CLASSID)), _nla(TCA_U32_SEL, selector),
                      _nested(TCA_U32_ACT, action))
    info = (1 << 16) | htons(ETH_P_ALL)  # preference 1, every protocol
    body = _tcmsg(index, 0, INGRESS_HANDLE, info) + _kind("u32") + options
    netlink.send_raw(h, f"add redirect filter to {what}", body, RTM_NEWTFILTER, NLM_F_CREATE | NLM_F_EXCL)


def delete_qdisc(h: netlink.Handle, index: int, qdisc: Qdisc, what: str) -> None:
    body = _tcmsg(index, qdisc.handle, qdisc.parent) + _kind(qdisc.kind)
    netlink.send_raw(h, f"delete {qdisc.kind} qdisc of {what}", body, RTM_DELQDISC)


# --- reading back -----------------------------------------------------------------------

def qdiscs(h: netlink.Handle, index: int) -> list[Qdisc]:
    """The qdiscs of link `index` (the kernel's default ones included)."""
    out = []
    replies = netlink.send_raw(h, f"dump qdiscs of #{index}", _tcmsg(index, 0, 0), RTM_GETQDISC, NLM_F_DUMP)
    for chunk in replies:
        _family, msg_index, handle, parent, _info = TCMSG.unpack_from(chunk, HEADER.size)
        if msg_index != index:
            continue  # a kernel without strict dump checking sends every link's
        attrs = attributes(chunk, HEADER.size + TCMSG.size, len(chunk))
        kind = (attrs.get(TCA_KIND) or b"").split(b"\0", 1)[0].decode("ascii", "replace")
        rate = limit = buffer = 0
        options = attrs.get(TCA_OPTIONS)
        if kind == "tbf" and options:
            tbf = attributes(options, 0, len(options))
            parms = tbf.get(TCA_TBF_PARMS) or b""
            if len(parms) >= TBF_QOPT.size:
                fields = TBF_QOPT.unpack_from(parms)
                rate, limit, buffer = fields[5], fields[12], fields[13]
            rate64 = tbf.get(TCA_TBF_RATE64) or b""
            if len(rate64) >= U64.size:
                rate = U64.unpack_from(rate64)[0]
        out.append(Qdisc(kind, handle, parent, rate, limit, buffer))
    return out


def redirects(h: netlink.Handle, index: int) -> list[int]:
    """The links that link `index`'s ingress filters redirect packets to (mirred egress redirect)."""
    out = []
    body = _tcmsg(index, 0, INGRESS_HANDLE)
    for chunk in netlink.send_raw(h, f"dump ingress filters of #{index}", body, RTM_GETTFILTER, NLM_F_DUMP):
        _family, msg_index, _handle, parent, _info = TCMSG.unpack_from(chunk, HEADER.size)
        if msg_index != index or parent != INGRESS_HANDLE:
            continue
        attrs = attributes(chunk, HEADER.size + TCMSG.size, len(chunk))
        options = attrs.get(TCA_OPTIONS)
        if not options:
            continue
        actions = attributes(options, 0, len(options)).get(TCA_U32_ACT) or b""
        for action in _all_attributes(actions):
            parts = attributes(action, 0, len(action))
            if (parts.get(TCA_ACT_KIND) or b"").split(b"\0", 1)[0] != b"mirred":
                continue
            opts = parts.get(TCA_ACT_OPTIONS) or b""
            parms = attributes(opts, 0, len(opts)).get(TCA_MIRRED_PARMS) or b""
            if len(parms) >= MIRRED.size:
                fields = MIRRED.unpack_from(parms)
                if fields[5] == TCA_EGRESS_REDIR:
                    out.append(fields[6])
    return out


def _all_attributes(data: bytes) -> list[bytes]:
    """Every attribute's payload in order (action lists repeat no type, but are many)."""
    out, offset = [], 0
    while offset + NLA.size <= len(data):
        length, _kind = NLA.unpack_from(data, offset)
        if length < NLA.size or offset + length > len(data):
            break
        out.append(data[offset + NLA.size:offset + length])
        offset += (length + 3) & ~3
    return out
