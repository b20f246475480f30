"""Golden JSON of the nft builders and upstream-compatible chain names."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from cni import records
from cni.records import PortMapping
from portmap import layout
from tests import nft_builders

T = {"family": "inet", "table": "berth"}
CHAIN = "CNI-DN-0726f1684a40233c08ebd"


def test_chain_names_match_upstream_algorithm() -> None:
    # utils.MustFormatChainNameWithPrefix(name, id, "DN-") / utils.FormatChainName(name, id)
    expected_dn = ("CNI-DN-" + hashlib.sha512(b"pmnetabc").hexdigest())[:28]
    expected_masq = ("CNI-" + hashlib.sha512(b"pmnetabc").hexdigest())[:28]
    assert layout.dnat_chain_name("pmnet", "abc") == expected_dn == CHAIN
    assert layout.masq_chain_name("pmnet", "abc") == expected_masq
    assert len(expected_dn) == len(expected_masq) == 28
    # a second interface of the same container gets its own chain; eth0 keeps upstream's
    assert layout.dnat_chain_name("pmnet", "abc", "net1") != CHAIN
    assert layout.dnat_chain_name("pmnet", "abc", "eth0") == CHAIN


def test_attachment_add_golden() -> None:
    cmds = layout.attachment_add(CHAIN, [PortMapping(8080, 8080, 80, "tcp"), PortMapping(9090, 9090, 90, "udp")],
                                 ["10.88.0.5"])
    v4 = {"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "ipv4"}}

    def port(proto: str, number: int) -> list[dict[str, Any]]:
        return [v4, {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": proto}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "th", "field": "dport"}}, "right": number}}]

    setmark = {"jump": {"target": "CNI-HOSTPORT-SETMARK"}}
    saddr = {"payload": {"protocol": "ip", "field": "saddr"}}
    # the marks once per address (the chain is only entered through this attachment's
    # own ports), then a DNAT per mapping
    assert cmds == [
        {"add": {"chain": {**T, "name": CHAIN}}},
        {"flush": {"chain": {**T, "name": CHAIN}}},
        {"add": {"rule": {**T, "chain": CHAIN, "expr": [
            v4, {"match": {"op": "==", "left": saddr, "right": "10.88.0.5"}}, setmark]}}},
        {"add": {"rule": {**T, "chain": CHAIN, "expr": [
            v4, {"match": {"op": "==", "left": saddr, "right": {"prefix": {"addr": "127.0.0.0", "len": 8}}}},
            setmark]}}},
        {"add": {"rule": {**T, "chain": CHAIN, "expr": [
            *port("tcp", 8080), {"counter": None}, {"dnat": {"family": "ip", "addr": "10.88.0.5", "port": 80}}]}}},
        {"add": {"rule": {**T, "chain": CHAIN, "expr": [
            *port("udp", 9090), {"counter": None}, {"dnat": {"family": "ip", "addr": "10.88.0.5", "port": 90}}]}}},
        {"add": {"element": {**T, "name": "hostport", "elem": [
            [{"concat": ["tcp", 8080]}, {"jump": {"target": CHAIN}}],
            [{"concat": ["udp", 9090]}, {"jump": {"target": CHAIN}}]]}}},
    ]


def test_marks_follow_the_families_the_mappings_apply_to() -> None:
    """masqAll: one unconditional mark per family; a v4-only hostIP leaves the v6 address unmarked."""
    cmds = layout.dnat_rules(CHAIN, [PortMapping(80, 81, 80, "tcp"), PortMapping(90, 90, 90, "udp")],
                             ["10.88.0.5", "10.88.0.6", "fd00::5"], masq_all=True)
    marks = [c["add"]["rule"]["expr"] for c in cmds if "jump" in json.dumps(c)]
    assert [len(e) for e in marks] == [2, 2]  # nfproto ipv4 / ipv6 + jump: no per-address or per-port copies
    only_v4 = layout.dnat_rules(CHAIN, [PortMapping(80, 80, 80, "tcp", "198.51.100.1")], ["10.88.0.5", "fd00::5"])
    assert "ip6" not in json.dumps(only_v4) and len(only_v4) == 3


def test_del_golden_is_absence_tolerant() -> None:
    elems = layout.elements_by_map(CHAIN, [PortMapping(9000, 9001, 9000, "udp", "198.51.100.1")])
    elem = [{"concat": ["198.51.100.1", {"range": [9000, 9001]}]}, {"jump": {"target": CHAIN}}]
    assert elems == {"hostports-v4-udp": [elem]}
    cmds = layout.portmap_del(CHAIN, elems)
    assert cmds == [
        {"add": {"table": {"family": "inet", "name": "berth"}}},
        {"add": {"map": {**T, "name": "hostports-v4-udp", "type": ["ipv4_addr", "inet_service"],
                         "map": "verdict", "flags": ["interval"]}}},
        {"add": {"chain": {**T, "name": CHAIN}}},
        {"add": {"element": {**T, "name": "hostports-v4-udp", "elem": [elem]}}},
        {"delete": {"element": {**T, "name": "hostports-v4-udp", "elem": [elem]}}},
        {"flush": {"chain": {**T, "name": CHAIN}}},
        {"delete": {"chain": {**T, "name": CHAIN}}},
    ]


def test_del_of_a_legacy_element_asserts_the_legacy_map() -> None:
    """A layout-2 journal's range lives in the interval map keyed on l4proto; DEL
    declares that map as the older berth did (this berth never creates it otherwise)."""
    elems = layout.elements_by_map(CHAIN, [PortMapping(9000, 9001, 9000, "udp")], 2)
    assert elems == {"hostports": [[{"concat": ["udp", {"range": [9000, 9001]}]}, {"jump": {"target": CHAIN}}]]}
    declared = [c["add"]["map"] for c in layout.portmap_del(CHAIN, elems) if "map" in c.get("add", {})]
    assert declared == [{**T, "name": "hostports", "type": ["inet_proto", "inet_service"], "map": "verdict",
                         "flags": ["interval"]}]


def test_base_layout_never_flushes_admin_and_is_size_independent() -> None:
    cmds = layout.base_layout()
    flushed = [c["flush"]["chain"]["name"] for c in cmds if "flush" in c]
    assert "CNI-ADMIN" not in flushed
    assert {"add": {"chain": {**T, "name": "CNI-ADMIN"}}} in cmds
    assert set(flushed) >= {"prerouting", "output", "postrouting", "forward", "guard", "CNI-HOSTPORT-DNAT"}
    hooks = {c["add"]["chain"]["name"]: c["add"]["chain"]["prio"] for c in cmds
             if "add" in c and "chain" in c["add"] and "hook" in c["add"]["chain"]}
    assert hooks == {"guard": -300, "prerouting": -100, "output": -100, "postrouting": 100, "forward": 0}
    # one ADD's transaction is a fixed size however many attachments exist
    one = nft_builders.portmap_add(CHAIN, [PortMapping(8080, 8080, 80, "tcp")], ["10.88.0.5"])
    assert len(one) == len(cmds) + len(layout.mark_layout()) + 6


def test_single_ports_go_to_hash_maps_ranges_to_per_protocol_interval_maps() -> None:
    single, ranged = PortMapping(8080, 8080, 80, "tcp"), PortMapping(30000, 30002, 7000, "udp", "fd00:5::1")
    v4, any_range = PortMapping(53, 53, 53, "udp", "198.51.100.1"), PortMapping(40000, 40010, 40000, "sctp")
    mappings = (single, ranged, v4, any_range)
    assert [layout.map_name(m) for m in mappings] == ["hostport", "hostports-v6-udp", "hostport-v4", "hostports-sctp"]
    assert [layout.map_key(m) for m in mappings] == [
        {"concat": ["tcp", 8080]}, {"concat": ["fd00:5::1", {"range": [30000, 30002]}]},
        {"concat": ["198.51.100.1", "udp", 53]}, {"concat": [{"range": [40000, 40010]}, {"range": [0, 65535]}]}]
    # layout 2: ranges in the interval maps keyed on l4proto; before 2 (no "layout"): everything there
    assert [layout.map_name(m, 2) for m in mappings] == ["hostport", "hostports-v6", "hostport-v4", "hostports"]
    assert [layout.map_name(m, 0) for m in mappings] == ["hostports", "hostports-v6", "hostports-v4", "hostports"]
    assert layout.map_key(ranged, 2) == {"concat": ["fd00:5::1", "udp", {"range": [30000, 30002]}]}
    assert records.schema({"layout": 3}) == 3 and records.schema({"layout": 2}) == 2
    assert records.schema({}) == records.schema(None) == records.schema({"layout": True}) == 0
    declared = {c["add"]["map"]["name"]: (c["add"]["map"]["type"], c["add"]["map"].get("flags"))
                for c in layout.base_layout() if "map" in c.get("add", {})}
    hostport = {k: v for k, v in declared.items() if k.startswith("hostport")}
    assert hostport["hostport"] == (["inet_proto", "inet_service"], None)
    assert hostport["hostports-tcp"] == (["inet_service", "inet_service"], ["interval"])
    assert hostport["hostports-v6-sctp"] == (["ipv6_addr", "inet_service"], ["interval"])
    # no interval map keyed on l4proto (6.12 stable kernels refuse lookups of those), none of one field
    assert not [k for k, (key, flags) in hostport.items() if flags and ("inet_proto" in key or isinstance(key, str))]
    assert len(hostport) == 12 and not set(hostport) & set(layout.LEGACY_RANGE_MAPS)


def _dnat_rules(cmds: list[dict]) -> list[list[dict]]:
    return [c["add"]["rule"]["expr"] for c in cmds
            if c.get("add", {}).get("rule", {}).get("chain") == "CNI-HOSTPORT-DNAT"]


def test_dnat_chain_looks_up_specific_host_ips_first() -> None:
    rules = _dnat_rules(layout.base_layout())
    maps = [r[-1]["vmap"]["data"] for r in rules]
    assert maps == ["@hostport-v4", "@hostports-v4-tcp", "@hostports-v4-udp", "@hostports-v4-sctp",
                    "@hostport-v6", "@hostports-v6-tcp", "@hostports-v6-udp", "@hostports-v6-sctp",
                    "@hostport", "@hostports-tcp", "@hostports-udp", "@hostports-sctp"]
    # a range lookup is guarded by its protocol and keyed on [daddr .] dport alone
    assert rules[1][0] == {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}
    assert rules[1][1]["vmap"]["key"] == {"concat": [{"payload": {"protocol": "ip", "field": "daddr"}},
                                                     {"payload": {"protocol": "th", "field": "dport"}}]}
    assert rules[9][1]["vmap"]["key"] == {"concat": [{"payload": {"protocol": "th", "field": "dport"}},
                                                     {"payload": {"protocol": "th", "field": "sport"}}]}
    assert rules[0][0]["vmap"]["key"]["concat"][1] == {"meta": {"key": "l4proto"}}


def test_dnat_chain_keeps_looking_up_legacy_maps_that_exist() -> None:
    """A node an older berth set up keeps its interval maps keyed on l4proto: each
    one that exists gets its lookup back, after its family's own maps."""
    rules = _dnat_rules(layout.base_layout(legacy_maps=("hostports", "hostports-v4")))
    maps = [r[-1]["vmap"]["data"] for r in rules]
    assert maps.index("@hostports-v4") == maps.index("@hostports-v4-sctp") + 1
    assert maps[-1] == "@hostports" and "@hostports-v6" not in maps and len(maps) == 14
    key = rules[maps.index("@hostports")][-1]["vmap"]["key"]["concat"]
    assert key[0] == {"meta": {"key": "l4proto"}}


def test_mark_bit_and_external_chain() -> None:
    mark = layout.mark_layout(5)
    assert mark[1]["add"]["rule"]["expr"][1]["mangle"]["value"] == {"|": [{"meta": {"key": "mark"}}, 32]}
    cmds = layout.attachment_add(CHAIN, [PortMapping(80, 80, 80, "tcp")], ["10.0.0.2"], external_setmark="KUBE-MARK")
    assert {"jump": {"target": "KUBE-MARK"}} in cmds[2]["add"]["rule"]["expr"]
    assert {"add": {"chain": {**T, "name": "KUBE-MARK"}}} in layout.base_layout("KUBE-MARK")


def test_dual_stack_and_ranges() -> None:
    m = [PortMapping(30000, 30002, 7000, "tcp"), PortMapping(31000, 31001, 31000, "udp"),
         PortMapping(8443, 8443, 443, "tcp", "fd00:5::1")]
    cmds = layout.dnat_rules(CHAIN, m, ["10.88.0.5", "fd00:88::5"], snat=False)
    dnats = [c["add"]["rule"]["expr"][-1]["dnat"] for c in cmds]
    assert dnats[0]["addr"]["map"]["data"]["set"][2] == [30002, {"concat": ["10.88.0.5", 7002]}]
    assert dnats[1]["family"] == "ip6"
    assert dnats[2] == {"family": "ip", "addr": "10.88.0.5"}  # same range both sides: ports kept
    assert dnats[3] == {"family": "ip6", "addr": "fd00:88::5"}
    # the v6 hostIP maps only to the v6 address
    assert dnats[4] == {"family": "ip6", "addr": "fd00:88::5", "port": 443} and len(dnats) == 5
    assert not any("SETMARK" in str(c) for c in cmds)  # snat off: no marks


def test_masq_golden() -> None:
    chain = layout.masq_chain_name("pmnet", "abc")
    cmds = nft_builders.masq_add(chain, ["10.88.0.5/24"], "bt0")[len(layout.base_layout()):]
    assert cmds == [
        {"add": {"chain": {**T, "name": chain}}},
        {"flush": {"chain": {**T, "name": chain}}},
        {"add": {"rule": {**T, "chain": chain, "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                       "right": {"prefix": {"addr": "10.88.0.0", "len": 24}}}}, {"accept": None}]}}},
        {"add": {"rule": {**T, "chain": chain, "expr": [
            {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                       "right": {"prefix": {"addr": "224.0.0.0", "len": 4}}}}, {"counter": None},
            {"masquerade": None}]}}},
        {"add": {"element": {**T, "name": "masq-v4", "elem": [["10.88.0.5", {"jump": {"target": chain}}]]}}},
        {"add": {"element": {**T, "name": "bridges", "elem": ["bt0"]}}},
    ]
