"""Same conflist (bridge + host-local + portmap) through the reference Go plugins
(portmap on iptables) and through berth (portmap on nftables), each in its own
node namespace: what a user sees must be the same."""

from __future__ import annotations

import copy
import secrets
from pathlib import Path
from typing import Any

from tests import harness
from tests.netns.portmap_helpers import REF_BRIDGE, first_conf, portmap_conf

NODE4 = harness.Topology.NODE_V4
MAPPINGS = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 8053, "containerPort": 5353, "protocol": "udp"}]


def _observe(tmp: Path, bin_dir: Path, bridge_kind: str, portmap_kind: str) -> dict[str, Any]:
    topo = harness.Topology(tmp / secrets.token_hex(3), bin_dir)
    try:
        topo.build()
        node, cont = topo.node, topo.container()
        first = first_conf(node, kind=bridge_kind)
        bridge_path = REF_BRIDGE if bridge_kind == "ref" else None
        pm_path = f"{harness.REFERENCE_DIR}/portmap" if portmap_kind == "ref" else None
        res = node.plugin("berth-bridge", "ADD", first, container_id="par1", netns=cont.path,
                          plugin_path=bridge_path).ok()
        pm = portmap_conf("pmnet", MAPPINGS, copy.deepcopy(res))
        if portmap_kind == "ref":
            pm["type"] = "portmap"
        out = node.plugin("berth-portmap", "ADD", pm, container_id="par1", netns=cont.path, plugin_path=pm_path).ok()
        with cont.server(80, "tcp", banner="web"), cont.server(5353, "udp", banner="dns"):
            seen = {
                "outside_tcp": topo.outside.connect(NODE4, 8080),
                "outside_udp": topo.outside.connect(NODE4, 8053, "udp"),
                "localhost": node.connect("127.0.0.1", 8080),
                "hairpin": cont.connect(NODE4, 8080),
                "unmapped": topo.outside.connect(NODE4, 8081, timeout=1),
            }
        seen["result_ips"] = [ip["address"] for ip in out["ips"]]
        seen["passthrough"] = out == res
        node.plugin("berth-portmap", "DEL", pm, container_id="par1", netns=cont.path, plugin_path=pm_path).ok()
        node.plugin("berth-bridge", "DEL", first, container_id="par1", netns=cont.path, plugin_path=bridge_path).ok()
        with cont.server(80, "tcp", banner="web"):
            seen["after_del"] = topo.outside.connect(NODE4, 8080, timeout=1)
        return seen
    finally:
        topo.destroy()


def test_same_reachability_as_reference(tmp_path: Path, bin_dir: Path) -> None:
    reference = _observe(tmp_path, bin_dir, "ref", "ref")
    assert reference["outside_tcp"] == f"web {harness.Topology.OUTSIDE_V4}"  # the reference works here
    berth_on_ref_bridge = _observe(tmp_path, bin_dir, "ref", "berth")
    all_berth = _observe(tmp_path, bin_dir, "berth", "berth")
    assert berth_on_ref_bridge == reference
    assert all_berth == reference
