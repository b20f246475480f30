"""berth-portmap on the real kernel: published ports proven by traffic."""

from __future__ import annotations

from tests import harness
from tests.netns.portmap_helpers import Pod
from tests.netns.test_bridge_common import STATIC_CHAINS

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


def test_host_ip_specific_and_other_host_ip(topo: harness.Topology) -> None:
    pod = Pod(topo, "c1", [{"hostPort": 9090, "containerPort": 80, "hostIP": NODE4},
                           {"hostPort": 9091, "containerPort": 80, "hostIP": "10.88.0.1"}])
    pod.add().ok()
    with pod.netns.server(80, "tcp", banner="web"):
        assert topo.outside.connect(NODE4, 9090) == f"web {harness.Topology.OUTSIDE_V4}"
        assert topo.outside.connect(NODE4, 9091, timeout=1) is None  # mapped on another hostIP only
    pod.delete()


def test_ipv6_and_port_range(topo: harness.Topology) -> None:
    pod = Pod(topo, "c6", [{"hostPort": 8080, "containerPort": 80},
                           {"hostPort": "30000-30002", "containerPort": "7000-7002"},
                           {"hostPort": 31000, "containerPort": 31000, "range": 2, "protocol": "udp"}],
              subnets=("10.88.0.0/24", "fd00:88::/64"))
    pod.add().ok()
    # a single port is an element of the hash map hostport, a range of its protocol's interval map
    table = topo.node.nft_table()
    assert table is not None
    maps = {o["map"]["name"]: o["map"] for o in table["nftables"] if "map" in o}
    assert "flags" not in maps["hostport"] and maps["hostports-tcp"]["flags"] == ["interval"]
    assert [e[0] for e in maps["hostport"]["elem"]] == [{"concat": ["tcp", 8080]}]
    assert [e[0] for e in maps["hostports-tcp"]["elem"]] == [{"concat": [{"range": [30000, 30002]},
                                                                        {"range": [0, 65535]}]}]
    assert [e[0] for e in maps["hostports-udp"]["elem"]] == [{"concat": [{"range": [31000, 31001]},
                                                                        {"range": [0, 65535]}]}]
    with pod.netns.server(80, "tcp", "6", banner="web6"), pod.netns.server(7001, "tcp", banner="r1"), \
            pod.netns.server(31001, "udp", banner="u1"):
        # the first v6 packets can wait on neighbour discovery while link-locals are tentative
        assert harness.wait_for(lambda: topo.outside.connect(NODE6, 8080, timeout=1) is not None, timeout=8)
        assert topo.outside.connect(NODE6, 8080) == f"web6 {harness.Topology.OUTSIDE_V6}"
        assert topo.outside.connect(NODE4, 30001) == f"r1 {harness.Topology.OUTSIDE_V4}"
        assert topo.outside.connect(NODE4, 31001, "udp") == f"u1 {harness.Topology.OUTSIDE_V4}"
        assert topo.outside.connect(NODE4, 30000, timeout=1) is None  # nothing listens on 7000
    pod.delete()
    text = topo.node.nft_text()
    assert "CNI-DN-" not in text and "30000" not in text and "fd00:88" not in text


def test_del_idempotent_empty_netns_and_no_mappings(topo: harness.Topology) -> None:
    pod = Pod(topo, "c1", [{"hostPort": 8080, "containerPort": 80}])
    pod.add().ok()
    chain = [line for line in topo.node.nft_text().splitlines() if "chain CNI-DN-" in line]
    assert len(chain) == 1
    # containerd's second DEL: empty netns, no prevResult, no portMappings
    pod.result = None
    pod.portmap("DEL", mappings=[], netns="").ok()
    pod.portmap("DEL", mappings=[], netns="").ok()
    text = topo.node.nft_text()
    assert "CNI-DN-" not in text and "8080" not in text
    assert not list((topo.node.state_dir / "ports").glob("*_tcp_*"))
    pod.bridge_conf["ipam"]["dataDir"] = str(topo.node.data_dir)
    pod._bridge("DEL").ok()


def test_udp_flow_follows_replaced_container(topo: harness.Topology) -> None:
    mapping = [{"hostPort": 8053, "containerPort": 5353, "protocol": "udp"}]
    a = Pod(topo, "ca", mapping)
    a.add().ok()
    with a.netns.server(5353, "udp", banner="A"):
        assert topo.outside.connect(NODE4, 8053, "udp", source_port=40000) == f"A {harness.Topology.OUTSIDE_V4}"
    a.delete()
    b = Pod(topo, "cb", mapping)
    b.add().ok()
    with b.netns.server(5353, "udp", banner="B"):
        # same 5-tuple as before: only a flushed conntrack entry lets it reach B
        assert topo.outside.connect(NODE4, 8053, "udp", source_port=40000) == f"B {harness.Topology.OUTSIDE_V4}"
    b.delete()


def test_localnet_guard_cve_2020_8558(topo: harness.Topology) -> None:
    pod = Pod(topo, "c1", [{"hostPort": 8080, "containerPort": 80}])
    pod.add().ok()
    assert topo.node.sysctl("net.ipv4.conf.bt0.route_localnet") == "1"
    with topo.node.server(7777, "tcp", banner="node-local"):
        assert (topo.node.connect("127.0.0.1", 7777) or "").startswith("node-local")
        # outside: route 127.1.2.3 at the node
        topo.outside.ip("route", "add", "127.1.2.3/32", "via", harness.Topology.NODE_V4)
        assert topo.outside.connect("127.1.2.3", 7777, timeout=1) is None
        # the container (the bridge has route_localnet=1): replace its local 127/8 route
        pod.netns.ip("route", "del", "local", "127.0.0.0/8", "dev", "lo", "table", "local")
        pod.netns.ip("route", "add", "127.1.2.3/32", "via", "10.88.0.1")
        pod.netns.set_sysctl("net.ipv4.conf.eth0.route_localnet", "1")  # an attacker controls its own netns
        assert pod.netns.connect("127.1.2.3", 7777, timeout=1) is None
        guard = [ln for ln in topo.node.nft_text().splitlines() if "127.0.0.0/8" in ln and "drop" in ln]
        assert "counter packets 0 " not in guard[0]
        # proof that the guard, not something else, stopped it
        topo.node.exec(["nft", "flush", "chain", "inet", "berth", "guard"])
        assert (pod.netns.connect("127.1.2.3", 7777) or "").startswith("node-local")
    pod.delete()


def test_conflict_names_owner_and_last_wins(topo: harness.Topology) -> None:
    mapping = [{"hostPort": 8080, "containerPort": 80}]
    a = Pod(topo, "owner-a", mapping)
    a.add().ok()
    b = Pod(topo, "second-b", mapping)
    res = b.add()
    assert res.rc != 0 and res.json["code"] == 102, res.stdout
    assert "owner-a" in res.json["msg"]
    c = Pod(topo, "third-c", mapping, conflictPolicy="last-wins")
    c.add().ok()
    with c.netns.server(80, "tcp", banner="C"), a.netns.server(80, "tcp", banner="A"):
        assert topo.outside.connect(NODE4, 8080) == f"C {harness.Topology.OUTSIDE_V4}"
    a.delete()  # must not remove C's element
    with c.netns.server(80, "tcp", banner="C"):
        assert topo.outside.connect(NODE4, 8080) == f"C {harness.Topology.OUTSIDE_V4}"
    c.delete()
    assert "CNI-DN-" not in topo.node.nft_text()


def test_check_reports_missing_chain(topo: harness.Topology) -> None:
    pod = Pod(topo, "c1", [{"hostPort": 8080, "containerPort": 80}])
    pod.add().ok()
    pod.portmap("CHECK").ok()
    topo.node.exec(["nft", "delete", "element", "inet", "berth", "hostport", "{ tcp . 8080 }"])
    res = pod.portmap("CHECK")
    assert res.rc != 0 and res.json["code"] == 106 and "hostport element" in res.json["details"]
    pod.delete()
    assert "CNI-DN-" not in topo.node.nft_text()


def test_bridge_ipmasq_through_masq_module(topo: harness.Topology) -> None:
    """berth-bridge's ipMasq uses portmap.masq: egress is masqueraded to the node's
    address, traffic inside the pod subnet is not, DEL leaves no trace."""
    a = Pod(topo, "ma", [{"hostPort": 8080, "containerPort": 80}])
    a.bridge_conf["ipMasq"] = True
    b = Pod(topo, "mb", [])
    a.add().ok()
    b.result = b._bridge("ADD").ok()
    with topo.outside.server(9999, "tcp", banner="out"), b.netns.server(81, "tcp", banner="peer"):
        assert a.netns.connect(harness.Topology.OUTSIDE_V4, 9999) == f"out {NODE4}"
        # b is not masqueraded: outside has no route back to the pod subnet
        assert b.netns.connect(harness.Topology.OUTSIDE_V4, 9999, timeout=1) is None
        assert a.netns.connect(b.address(), 81) == f"peer {a.address()}"
    text = topo.node.nft_text()
    assert a.address() in text and "bt0" in text
    a.delete()
    b._bridge("DEL").ok()
    text = topo.node.nft_text()
    per_attachment = [line for line in text.splitlines() if line.strip().startswith("chain CNI-")
                      and line.split()[1] not in STATIC_CHAINS]
    assert a.address() not in text and per_attachment == []


def test_conditions_gc_and_status(topo: harness.Topology) -> None:
    pod = Pod(topo, "c1", [{"hostPort": 8080, "containerPort": 80}],
              conditionsV4=["!", "-s", f"{harness.Topology.OUTSIDE_V4}/32"])
    pod.add().ok()
    with pod.netns.server(80, "tcp", banner="web"):
        assert topo.outside.connect(NODE4, 8080, timeout=1) is None  # excluded by the condition
        assert (topo.node.connect("127.0.0.1", 8080) or "").startswith("web")
    gc = {"cniVersion": "1.1.0", "name": "pmnet", "type": "berth-portmap",
          "cni.dev/valid-attachments": [{"containerID": "other", "ifname": "eth0"}]}
    topo.node.plugin("berth-portmap", "GC", gc).ok()
    assert "CNI-DN-" not in topo.node.nft_text() and "8080" not in topo.node.nft_text()
    status = {"cniVersion": "1.1.0", "name": "pmnet", "type": "berth-portmap"}
    topo.node.plugin("berth-portmap", "STATUS", status).ok()
    pod.portmap("DEL").ok()  # after GC: nothing left, still fine
    pod._bridge("DEL").ok()
