"""Reliability: IPv6 is usable the moment ADD returns.

Right after ADD the container's link-local address would still be tentative
(DAD, 1-2 s) and early v6 traffic fails; berth turns DAD off for the container
interface unless `enabledad` is set. No retries, no waiting here on purpose.
"""

from __future__ import annotations

from tests import harness
from tests.netns.test_rel_crash import NET, add_pod, bridge_conf, del_pod, leftovers


def _tentative(ns: harness.Netns, ifname: str = "eth0") -> list[str]:
    out = []
    for link in ns.ip_json("-6", "addr", "show", "dev", ifname):
        for info in link.get("addr_info", []):
            if info.get("tentative"):
                out.append(info["local"])
    return out


def test_v6_traffic_immediately_after_add(topo: harness.Topology) -> None:
    node, ns = topo.node, topo.container()
    conf = bridge_conf(node, subnets=("10.76.0.0/24", "fd00:76::/64"), bridge="br6")
    with topo.outside.server(9696, "tcp", "6", banner="v6"):
        _br, pm = add_pod(node, ns, "c1", conf)
        assert pm is not None
        pm.ok()
        tentative = _tentative(ns) + _tentative(node, "br6")  # the fresh bridge's link-local too
        answer = ns.connect(topo.OUTSIDE_V6, 9696, timeout=2)  # one try, no retry
    assert tentative == [], f"tentative after ADD: {tentative}"
    assert answer == f"v6 {topo.NODE_V6}", answer  # masqueraded to the node's address
    assert ns.sysctl("net.ipv6.conf.eth0.accept_dad") == "0"
    del_pod(node, ns.path, "c1", conf)
    assert leftovers(node, NET) == []


def test_enabledad_keeps_dad(topo: harness.Topology) -> None:
    node, ns = topo.node, topo.container()
    conf = bridge_conf(node, subnets=("fd00:75::/64",), bridge="br6d", enabledad=True, ipMasq=False)
    node.plugin("berth-bridge", "ADD", conf, container_id="c1", netns=ns.path).ok()
    assert ns.sysctl("net.ipv6.conf.eth0.accept_dad") != "0"
    node.plugin("berth-bridge", "DEL", conf, container_id="c1", netns=ns.path).ok()
    assert leftovers(node, NET) == []
