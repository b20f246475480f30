"""berth-portmap on the real kernel: published ports proven by traffic."""

from __future__ import annotations

from tests import harness
from tests.netns.portmap_helpers import Pod

NODE4, NODE6 = harness.Topology.NODE_V4, harness.Topology.NODE_V6


def test_tcp_udp_outside_localhost_hairpin(topo: harness.Topology) -> None:
    pod = Pod(topo, "c1", [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                           {"HostPort": 8053, "ContainerPort": 5353, "Protocol": "udp", "HostIP": ""}])
    pod.add().ok()
    with pod.netns.server(80, "tcp", banner="web"), pod.netns.server(5353, "udp", banner="dns"):
        assert topo.outside.connect(NODE4, 8080) == f"web {harness.Topology.OUTSIDE_V4}"
        assert topo.outside.connect(NODE4, 8053, "udp") == f"dns {harness.Topology.OUTSIDE_V4}"
        # localhost: masqueraded to the bridge address
        assert (topo.node.connect("127.0.0.1", 8080) or "").startswith("web 10.88.0.1")
        # hairpin: the container reaches its own hostPort, source masqueraded
        assert (pod.netns.connect(NODE4, 8080) or "").startswith("web 10.88.0.1")
    pod.delete()
    text = topo.node.nft_text()
    assert "CNI-DN-" not in text and "8080" not in text and "8053" not in text
    with pod.netns.server(80, "tcp", banner="web"):
        assert topo.outside.connect(NODE4, 8080, timeout=1) is None
