"""cni.rtnl's own link/address decoding agrees with pyroute2's on the same bytes.

The plugins read links and addresses on every ADD with a small decoder of their
own (pyroute2 takes ~0.5 ms per link reply); pyroute2 stays the oracle here.
"""

from __future__ import annotations

from typing import Any

import pytest

from cni import rtnl
from tests import pyroute2_oracle as oracle

pytestmark = pytest.mark.unit


def encoded(kind: str, fields: dict[str, Any], attrs: list[Any]) -> bytes:
    msg = oracle.new(kind, fields, attrs)
    msg["header"]["type"] = rtnl.RTM_NEWLINK if kind == "link" else rtnl.RTM_NEWADDR
    msg.encode()
    return bytes(msg.data)


def oracle_link(data: bytes) -> dict[str, Any]:
    msg = oracle.messages().link(data)
    msg.decode()
    info = msg.get_attr("IFLA_LINKINFO")
    kind = (info.get_attr("IFLA_INFO_KIND") if info else None) or ""
    vlan_filtering = hairpin = None
    if info is not None and kind == "bridge" and info.get_attr("IFLA_INFO_DATA") is not None:
        vlan_filtering = info.get_attr("IFLA_INFO_DATA").get_attr("IFLA_BR_VLAN_FILTERING")
    if info is not None and info.get_attr("IFLA_INFO_SLAVE_KIND") == "bridge":
        hairpin = info.get_attr("IFLA_INFO_SLAVE_DATA").get_attr("IFLA_BRPORT_MODE")
    return {
        "index": msg["index"], "name": msg.get_attr("IFLA_IFNAME") or "", "kind": kind,
        "mac": (msg.get_attr("IFLA_ADDRESS") or "").lower(), "mtu": msg.get_attr("IFLA_MTU") or 0,
        "master": msg.get_attr("IFLA_MASTER") or 0, "flags": msg["flags"], "peer_index": msg.get_attr("IFLA_LINK") or 0,
        "promiscuity": msg.get_attr("IFLA_PROMISCUITY") or 0, "vlan_filtering": vlan_filtering, "hairpin": hairpin,
    }


LINKS = [
    pytest.param({"index": 7, "flags": 0x1043}, [
        ["IFLA_IFNAME", "cni-br0"], ["IFLA_TXQLEN", 1000], ["IFLA_ADDRESS", "0A:58:0A:F4:00:01"], ["IFLA_MTU", 1450],
        ["IFLA_PROMISCUITY", 1], ["IFLA_QDISC", "noqueue"],
        ["IFLA_LINKINFO", {"attrs": [["IFLA_INFO_KIND", "bridge"],
                                     ["IFLA_INFO_DATA", {"attrs": [["IFLA_BR_STP_STATE", 0],
                                                                   ["IFLA_BR_VLAN_FILTERING", 1]]}]]}],
    ], id="bridge"),
    pytest.param({"index": 12, "flags": 0x1003}, [
        ["IFLA_IFNAME", "veth1a2b3c4d"], ["IFLA_ADDRESS", "de:ad:be:ef:00:01"], ["IFLA_MTU", 1500], ["IFLA_LINK", 2],
        ["IFLA_MASTER", 7],
        ["IFLA_LINKINFO", {"attrs": [["IFLA_INFO_KIND", "veth"], ["IFLA_INFO_SLAVE_KIND", "bridge"],
                                     ["IFLA_INFO_SLAVE_DATA", {"attrs": [["IFLA_BRPORT_STATE", 3],
                                                                         ["IFLA_BRPORT_MODE", 1]]}]]}],
    ], id="bridge-port-with-hairpin"),
    pytest.param({"index": 1, "flags": 0x49}, [["IFLA_IFNAME", "lo"], ["IFLA_MTU", 65536]], id="no-linkinfo"),
    pytest.param({"index": 3, "flags": 0}, [["IFLA_IFNAME", "eth0.100"]], id="bare"),
]


@pytest.mark.parametrize(("fields", "attrs"), LINKS)
def test_parse_link_matches_pyroute2(fields: dict[str, Any], attrs: list[Any]) -> None:
    data = encoded("link", fields, attrs)
    assert rtnl.parse_link(data) == oracle_link(data)


def test_parse_link_survives_a_truncated_reply() -> None:
    data = encoded("link", {"index": 4}, [["IFLA_IFNAME", "eth0"], ["IFLA_MTU", 1500]])
    parsed = rtnl.parse_link(data[:-3])
    assert (parsed["index"], parsed["name"], parsed["mtu"]) == (4, "eth0", 0)


@pytest.mark.parametrize(("index", "name"), [(0, "veth0123abcd"), (0, "a" * 15), (9, "")])
def test_link_request_is_what_pyroute2_sends(index: int, name: str) -> None:
    attrs: list[Any] = [["IFLA_IFNAME", name]] if name else []
    ours = rtnl.link_request(index, name, 8)
    theirs = encoded("link", {"index": index}, [*attrs, ["IFLA_EXT_MASK", 8]])
    assert ours == theirs[rtnl.HEADER.size:]


@pytest.mark.parametrize(("family", "prefixlen", "address"), [
    (2, 24, "10.244.0.1"), (10, 64, "fd00:10:244::1"), (10, 64, "fe80::858:aff:fef4:1"),
])
def test_parse_addr_matches_pyroute2(family: int, prefixlen: int, address: str) -> None:
    data = encoded("addr", {"family": family, "prefixlen": prefixlen, "index": 5},
                   [["IFA_ADDRESS", address], ["IFA_LABEL", "x"] if family == 2 else ["IFA_FLAGS", 0x80]])
    msg = oracle.messages().addr(data)
    msg.decode()
    expected = (family, 5, prefixlen, address)
    assert rtnl.parse_addr(data) == (family, 5, prefixlen, msg.get_attr("IFA_ADDRESS")) == expected
