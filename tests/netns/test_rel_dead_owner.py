"""A sandbox killed before its DEL, on a node where no GC comes (containerd):
its journal and port claims stay, its namespace and veth are gone. The next
ADD asking for its host port takes it over, removes the dead owner's other
mappings and chain, and says so; a live owner keeps refusing."""

from __future__ import annotations

import json

from portmap import layout
from tests import harness
from tests.netns.portmap_helpers import Pod

NODE4, OUTSIDE4 = harness.Topology.NODE_V4, harness.Topology.OUTSIDE_V4


def claims(node: harness.Node) -> dict[str, str]:
    return {p.name: json.loads(p.read_text())["containerID"] for p in (node.state_dir / "ports").glob("*_*_*")}


def serves(topo: harness.Topology, pod: Pod, port: int) -> bool:
    with pod.netns.server(80, "tcp", banner=pod.cid):
        return topo.outside.connect(NODE4, port) == f"{pod.cid} {OUTSIDE4}"


def test_a_dead_owners_port_is_taken_over_and_its_leftovers_go(topo: harness.Topology) -> None:
    node = topo.node
    dead = Pod(topo, "dead1", [{"hostPort": 18085, "containerPort": 80}, {"hostPort": 18086, "containerPort": 80}])
    dead.add().ok()
    veth = dead.result["interfaces"][1]["name"] if dead.result else ""
    dead.netns.remove()  # the sandbox is gone, no DEL came: its veth goes with its namespace
    # the kernel tears a deleted namespace down in the background
    assert harness.wait_for(lambda: veth not in node.links(), timeout=30)
    assert claims(node) == {"any_tcp_18085": "dead1", "any_tcp_18086": "dead1"}
    replacement = Pod(topo, "new1", [{"hostPort": 18085, "containerPort": 80}])
    res = replacement.add()
    assert res.rc == 0, res
    assert "took host ports from container dead1" in res.stderr and f"host veth {veth} is gone" in res.stderr
    assert serves(topo, replacement, 18085)
    assert claims(node) == {"any_tcp_18085": "new1"}
    text = node.nft_text()
    assert layout.dnat_chain_name("pmnet", "dead1") not in text and "18086" not in text
    left = json.loads((node.state_dir / "pmnet" / "dead1:eth0.json").read_text())
    assert "portmap" not in left and left["bridge"]["state"] == "added"  # its DEL or GC does the rest
    # its DEL, should it come after all, leaves the replacement alone
    dead.portmap("DEL", netns=dead.netns.path).ok()
    dead.node.plugin("berth-bridge", "DEL", dead.bridge_conf, container_id="dead1", netns=dead.netns.path).ok()
    assert serves(topo, replacement, 18085)
    replacement.delete()
    assert "CNI-DN-" not in node.nft_text() and claims(node) == {}


def test_a_live_owner_keeps_its_port(topo: harness.Topology) -> None:
    node = topo.node
    owner = Pod(topo, "live1", [{"hostPort": 18087, "containerPort": 80}])
    owner.add().ok()
    other = Pod(topo, "live2", [{"hostPort": 18087, "containerPort": 80}])
    res = other.add()
    assert res.rc == 1 and res.json["code"] == 102 and "live1" in res.json["msg"], res
    assert serves(topo, owner, 18087) and claims(node) == {"any_tcp_18087": "live1"}
    owner.delete()
