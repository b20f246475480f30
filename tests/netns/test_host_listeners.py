"""A published port on which a process of the node listens: refused with a CNI
error naming the port and the socket, nothing changed, the host service still
answering; accepted on purpose with hostListenerPolicy "allow"; and `berth
explain PORT` names the listener."""

from __future__ import annotations

import copy
import json
from typing import Any

from tests import harness
from tests.netns.portmap_helpers import first_conf, portmap_conf

NODE4, OUT4 = harness.Topology.NODE_V4, harness.Topology.OUTSIDE_V4


class Attached:
    """A container attached by the bridge alone; portmap is run on its result by the test."""

    def __init__(self, topo: harness.Topology, cid: str) -> None:
        self.node = topo.node
        self.cid = cid
        self.ns = topo.container()
        self.conf = first_conf(self.node)
        self.result = self.node.plugin("berth-bridge", "ADD", self.conf, container_id=cid, netns=self.ns.path).ok()

    def portmap(self, command: str, mappings: list[dict[str, Any]], **extra: Any) -> harness.PluginResult:
        conf = portmap_conf(self.conf["name"], mappings, copy.deepcopy(self.result), **extra)
        return self.node.plugin("berth-portmap", command, conf, container_id=self.cid, netns=self.ns.path)

    def journal(self) -> dict[str, Any]:
        path = harness.journal_path(self.node.state_dir, self.conf["name"], self.cid)
        return dict(json.loads(path.read_text())) if path.exists() else {}

    def delete(self) -> None:
        self.node.plugin("berth-bridge", "DEL", self.conf, container_id=self.cid, netns=self.ns.path).ok()


def claims(node: harness.Node) -> list[str]:
    return sorted(p.name for p in (node.state_dir / "ports").glob("*_*_*"))


def test_a_port_a_node_process_listens_on_is_refused_and_nothing_changes(topo: harness.Topology) -> None:
    node = topo.node
    pod = Attached(topo, "c1")
    before = node.nft_text()
    localnet = node.sysctl("net.ipv4.conf.bt0.route_localnet")
    with node.server(18090, banner="host-web"), pod.ns.server(80, banner="pod-web"):
        res = pod.portmap("ADD", [{"hostPort": 18090, "containerPort": 80}])
        assert res.rc != 0 and "Traceback" not in res.stdout + res.stderr
        err = res.json
        assert err["code"] == 102, res.stdout
        assert "host port 18090/tcp is in use on this node" in err["msg"], err
        assert "0.0.0.0:18090/tcp (socket inode " in err["msg"] and "hostListenerPolicy" in err["details"], err
        # nothing changed: no portmap section, no claim, the same table, the same sysctl
        assert "portmap" not in pod.journal() and claims(node) == []
        assert node.nft_text() == before and node.sysctl("net.ipv4.conf.bt0.route_localnet") == localnet
        # the host service still has its traffic
        assert topo.outside.connect(NODE4, 18090) == f"host-web {OUT4}"
        # another port of the same pod is fine
        pod.portmap("ADD", [{"hostPort": 18095, "containerPort": 80}]).ok()
        assert topo.outside.connect(NODE4, 18095) == f"pod-web {OUT4}"
        pod.portmap("DEL", [{"hostPort": 18095, "containerPort": 80}]).ok()
    pod.delete()


def test_addresses_match_as_the_kernel_delivers(topo: harness.Topology) -> None:
    node = topo.node
    pod = Attached(topo, "c1")
    # a UDP service bound to 127.0.0.1 only: a mapping on the node's address leaves it alone...
    with node.server(18091, "udp", bind="127.0.0.1"), pod.ns.server(53, "udp", banner="pod-dns"):
        mapped = [{"hostPort": 18091, "containerPort": 53, "protocol": "udp", "hostIP": NODE4}]
        pod.portmap("ADD", mapped).ok()
        assert topo.outside.connect(NODE4, 18091, "udp") == f"pod-dns {OUT4}"
        pod.portmap("DEL", mapped).ok()
        # ...one on any address would take 127.0.0.1:18091 from the node's own clients: refused
        res = pod.portmap("ADD", [{"hostPort": 18091, "containerPort": 53, "protocol": "udp"}])
        assert res.rc != 0 and res.json["code"] == 102 and "127.0.0.1:18091/udp" in res.json["msg"], res.stdout
    # a v6-only listener and an IPv4-only container: no traffic of the listener's is taken
    with node.server(18092, "tcp", "6"):
        pod.portmap("ADD", [{"hostPort": 18092, "containerPort": 80}], userlandProxy=False).ok()
        pod.portmap("DEL", [{"hostPort": 18092, "containerPort": 80}]).ok()
    pod.delete()


def test_allowed_on_purpose_the_container_gets_the_traffic(topo: harness.Topology) -> None:
    node = topo.node
    pod = Attached(topo, "c1")
    mapped = [{"hostPort": 18093, "containerPort": 80}]
    with node.server(18093, banner="host-web"), pod.ns.server(80, banner="pod-web"):
        out = node.berth("explain", "18093")
        assert out.returncode == 1, out.stdout
        assert "no attachment on this node publishes 18093; host socket 0.0.0.0:18093/tcp" in out.stdout, out.stdout
        assert "of python3 (pid " in out.stdout, out.stdout
        pod.portmap("ADD", mapped, hostListenerPolicy="allow").ok()
        assert topo.outside.connect(NODE4, 18093) == f"pod-web {OUT4}"
        out = node.berth("explain", "18093")
        line = next((ln for ln in out.stdout.splitlines() if " listener " in ln), "")
        assert line.split()[0] == "warn" and "host socket 0.0.0.0:18093/tcp" in line and "python3" in line, out.stdout
        assert "18093->80/tcp takes its traffic" in line, out.stdout
        pod.portmap("DEL", mapped).ok()
        assert topo.outside.connect(NODE4, 18093) == f"host-web {OUT4}"
    pod.delete()
