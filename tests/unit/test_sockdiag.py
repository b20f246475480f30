"""portmap/sockdiag.py's own struct layouts against pyroute2's netlink codec (the
message classes the adapter used before it packed the structs itself), and the
request on the real kernel (no root needed: sock_diag answers anyone)."""

from __future__ import annotations

import socket
import struct
from typing import Any

import pytest

from cni import rtnl
from portmap import sockdiag

pytestmark = pytest.mark.unit


def pyroute2_classes() -> tuple[Any, Any, Any]:
    rtnl.lazy_pyroute2()
    from pyroute2.netlink import nlmsg

    request_nlas = (("INET_DIAG_REQ_NONE", "none"), ("INET_DIAG_REQ_BYTECODE", "cdata"))
    req = type("inet_diag_req", (nlmsg,), {
        "fields": (("idiag_family", "B"), ("idiag_src_len", "B"), ("idiag_dst_len", "B"), ("idiag_ext", "B"),
                   ("idiag_sport", ">H"), ("idiag_dport", ">H"), ("idiag_src", ">4I"), ("idiag_dst", ">4I"),
                   ("idiag_if", "I"), ("idiag_cookie", "Q"), ("idiag_states", "I"), ("idiag_dbs", "I")),
        "nla_map": request_nlas})
    req_v2 = type("inet_diag_req_v2", (nlmsg,), {
        "fields": (("sdiag_family", "B"), ("sdiag_protocol", "B"), ("idiag_ext", "B"), ("pad", "B"),
                   ("idiag_states", "I"), ("idiag_sport", ">H"), ("idiag_dport", ">H"), ("idiag_src", ">4I"),
                   ("idiag_dst", ">4I"), ("idiag_if", "I"), ("idiag_cookie", "Q")),
        "nla_map": request_nlas})
    msg = type("inet_diag_msg", (nlmsg,), {
        "fields": (("idiag_family", "B"), ("idiag_state", "B"), ("idiag_timer", "B"), ("idiag_retrans", "B"),
                   ("idiag_sport", ">H"), ("idiag_dport", ">H"), ("idiag_src", ">4I"), ("idiag_dst", ">4I"),
                   ("idiag_if", "I"), ("idiag_cookie", "Q"), ("idiag_expires", "I"), ("idiag_rqueue", "I"),
                   ("idiag_wqueue", "I"), ("idiag_uid", "I"), ("idiag_inode", "I")),
        "nla_map": (*((f"INET_DIAG_{i}", "hex") for i in range(11)), ("INET_DIAG_SKV6ONLY", "uint8"))})
    return req, req_v2, msg


def _zero(req: Any) -> None:
    for key in ("idiag_sport", "idiag_dport", "idiag_if", "idiag_cookie", "idiag_ext"):
        req[key] = 0
    req["idiag_src"] = req["idiag_dst"] = (0, 0, 0, 0)


@pytest.mark.parametrize(("proto", "family"), [("tcp", None), ("udp", socket.AF_INET), ("udp", socket.AF_INET6),
                                               ("sctp", socket.AF_INET6)])
def test_request_matches_pyroute2(proto: str, family: int | None) -> None:
    compat, v2, _ = pyroute2_classes()
    ranges = [(8080, 8080), (30000, 30100)]
    req = compat() if family is None else v2()
    _zero(req)
    req["idiag_states"] = sockdiag.STATES[proto]
    if family is None:
        req.update(idiag_family=0, idiag_src_len=0, idiag_dst_len=0, idiag_dbs=0)
    else:
        req.update(sdiag_family=family, sdiag_protocol=sockdiag.PROTOCOLS[proto], pad=0)
    req["attrs"] = [] if proto == "sctp" else [["INET_DIAG_REQ_BYTECODE", sockdiag.port_filter(ranges)]]
    req["header"].update(type=sockdiag.TCPDIAG_GETSOCK if family is None else sockdiag.SOCK_DIAG_BY_FAMILY,
                         flags=sockdiag.NLM_F_REQUEST | sockdiag.NLM_F_DUMP, sequence_number=7, pid=0)
    req.encode()
    assert sockdiag.request(proto, family, ranges, 7) == bytes(req.data)


@pytest.mark.parametrize(("family", "address", "v6only"), [(socket.AF_INET, "192.0.2.7", False),
                                                           (socket.AF_INET6, "fd00::1:2", True),
                                                           (socket.AF_INET6, "::", False)])
def test_reply_decodes_as_pyroute2_encodes_it(family: int, address: str, v6only: bool) -> None:
    _, _, cls = pyroute2_classes()
    raw = socket.inet_pton(family, address).ljust(16, b"\0")
    msg = cls()
    msg.update(idiag_family=family, idiag_state=10, idiag_timer=0, idiag_retrans=0, idiag_sport=8080,
               idiag_dport=0, idiag_src=struct.unpack(">4I", raw), idiag_dst=(0, 0, 0, 0), idiag_if=0,
               idiag_cookie=(1 << 40) + 5, idiag_expires=0, idiag_rqueue=0, idiag_wqueue=128, idiag_uid=1000,
               idiag_inode=4242)
    msg["attrs"] = [["INET_DIAG_SKV6ONLY", int(v6only)]] if family == socket.AF_INET6 else []
    msg["header"].update(type=sockdiag.TCPDIAG_GETSOCK, flags=2, sequence_number=1, pid=0)
    msg.encode()
    got = sockdiag.parse(bytes(msg.data), "tcp")
    assert got == sockdiag.Socket("tcp", 6 if family == socket.AF_INET6 else 4, address, 8080, v6only, 4242,
                                  1000, (1 << 40) + 5)


def test_bound_finds_a_listener_and_its_cookie() -> None:
    """In whatever namespace the tests run: a listener on an ephemeral loopback port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        cookie = int.from_bytes(srv.getsockopt(socket.SOL_SOCKET, 57, 8), "little")
        try:
            found = sockdiag.bound({"tcp": [(port, port)]})
        except sockdiag.Unavailable as exc:
            pytest.skip(f"no sock_diag here: {exc}")
    assert [(s.address, s.port, s.cookie) for s in found] == [("127.0.0.1", port, cookie)]
