"""cni.rtnl's request encoder, byte for byte against pyroute2's message classes,
for every shape of request berth sends (cni/netlink.py), and the route decoder."""

from __future__ import annotations

from typing import Any

import pytest

from cni import rtnl
from tests import pyroute2_oracle as oracle

AF_INET, AF_INET6, AF_BRIDGE = 2, 10, 7
VLAN_FILTERING = {"attrs": [["IFLA_BR_VLAN_FILTERING", 1]]}
PEER = [["IFLA_IFNAME", "eth0"], ["IFLA_NET_NS_FD", 9], ["IFLA_MTU", 1400], ["IFLA_ADDRESS", "02:42:ac:11:00:02"]]
SHAPES: list[tuple[str, dict[str, Any], list[Any]]] = [
    ("link", {"index": 0}, [["IFLA_IFNAME", "cni0"], ["IFLA_MTU", 1500],
                            ["IFLA_LINKINFO", {"attrs": [["IFLA_INFO_KIND", "bridge"],
                                                         ["IFLA_INFO_DATA", VLAN_FILTERING]]}]]),
    ("link", {"index": 0}, [["IFLA_IFNAME", "br.10"], ["IFLA_LINKINFO", {"attrs": [["IFLA_INFO_KIND", "bridge"],
                                                                                 ["IFLA_INFO_DATA", {"attrs": []}]]}]]),
    ("link", {"index": 0}, [["IFLA_IFNAME", "veth0123abcd"], ["IFLA_MTU", 1400],
                            ["IFLA_LINKINFO", {"attrs": [["IFLA_INFO_KIND", "veth"],
                                                         ["IFLA_INFO_DATA", {"attrs": [["VETH_INFO_PEER",
                                                                                        {"attrs": PEER}]]}]]}]]),
    ("link", {"index": 7, "flags": 1, "change": 1}, []),
    ("link", {"index": 7}, [["IFLA_MASTER", 3]]),
    ("link", {"index": 7, "flags": 0x100, "change": 0x100}, []),
    ("link", {"index": 3}, [["IFLA_LINKINFO", {"attrs": [["IFLA_INFO_KIND", "bridge"],
                                                         ["IFLA_INFO_DATA", VLAN_FILTERING]]}]]),
    ("link", {"family": AF_BRIDGE, "index": 7},
     [("IFLA_PROTINFO", {"attrs": [["IFLA_BRPORT_MODE", 1], ["IFLA_BRPORT_ISOLATED", 1]]}, rtnl.NLA_F_NESTED)]),
    ("link", {"index": 0}, [["IFLA_IFNAME", "veth0123abcd"]]),
    ("addr", {"family": AF_INET, "prefixlen": 24, "index": 5, "flags": 2},
     [["IFA_ADDRESS", "10.88.0.2"], ["IFA_LOCAL", "10.88.0.2"]]),
    ("addr", {"family": AF_INET6, "prefixlen": 64, "index": 5, "flags": 2}, [["IFA_ADDRESS", "fd00:88::2"]]),
    ("addr", {"family": AF_INET, "index": 5}, []),
    ("route", {"family": AF_INET, "dst_len": 0, "table": 254, "proto": 4, "type": 1, "scope": 0},
     [["RTA_DST", "0.0.0.0"], ["RTA_OIF", 5], ["RTA_GATEWAY", "10.88.0.1"]]),
    ("route", {"family": AF_INET6, "dst_len": 64, "table": 254, "proto": 4, "type": 1, "scope": 253},
     [["RTA_DST", "fd00:99::"], ["RTA_OIF", 5]]),
    ("route", {"family": AF_INET, "table": 254}, [["RTA_OIF", 5]]),
]


def pyroute2_body(kind: str, fields: dict[str, Any], attrs: list[Any]) -> bytes:
    return oracle.body(kind, fields, attrs)


@pytest.mark.parametrize(("kind", "fields", "attrs"), SHAPES, ids=range(len(SHAPES)))
def test_requests_encode_as_pyroute2_does(kind: str, fields: dict[str, Any], attrs: list[Any]) -> None:
    assert rtnl.encode(kind, fields, attrs) == pyroute2_body(kind, fields, attrs)


def test_an_unknown_attribute_is_an_error_not_a_silent_skip() -> None:
    with pytest.raises(KeyError):
        rtnl.encode("link", {}, [["IFLA_TXQLEN", 1]])


@pytest.mark.parametrize(("family", "dst", "dst_len", "gw"), [
    (AF_INET, "0.0.0.0", 0, "10.88.0.1"), (AF_INET6, "fd00:99::", 64, ""), (AF_INET, "10.1.0.0", 16, "10.88.0.9")])
def test_route_replies_decode_as_pyroute2_reads_them(family: int, dst: str, dst_len: int, gw: str) -> None:
    attrs: list[Any] = [["RTA_TABLE", 254], ["RTA_DST", dst], ["RTA_OIF", 5]] + ([["RTA_GATEWAY", gw]] if gw else [])
    body = pyroute2_body("route", {"family": family, "dst_len": dst_len, "table": 254, "type": 1}, attrs)
    chunk = rtnl.HEADER.pack(rtnl.HEADER.size + len(body), rtnl.RTM_NEWROUTE, 0, 1, 0) + body
    assert rtnl.parse_route(chunk) == (1, dst_len, 254, 5, dst, gw)
