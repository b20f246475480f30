"""Bridge `isolate` against the real kernel: traffic between berth networks on one
node, published ports through the node's address, set membership over the
lifecycle (shared bridge, DEL, GC, rollback) and a constant rule count."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

from tests import harness
from tests.netns.portmap_helpers import portmap_conf

NODE = harness.Topology.NODE_V4
OUT = harness.Topology.OUTSIDE_V4
SHORT = 1.0  # a blocked connection costs this long: keep it small


def net_conf(node: harness.Node, name: str, bridge: str, subnet: str, isolate: Any = None,
             **ipam_range: str) -> dict[str, Any]:
    c = harness.bridge_conf(name=name, subnet=subnet, bridge=bridge)
    c["ipam"]["dataDir"] = str(node.data_dir)
    c["ipam"]["ranges"] = [[{"subnet": subnet, **ipam_range}]]
    if isolate is not None:
        c["isolate"] = isolate
    return c


class Pod:
    """A container on one network, optionally with published ports (portmap chained)."""

    def __init__(self, topo: harness.Topology, conf: dict[str, Any], cid: str,
                 ports: list[dict[str, Any]] | None = None) -> None:
        self.node, self.conf, self.cid, self.ports = topo.node, conf, cid, ports or []
        self.ns = topo.container()
        self.result: dict[str, Any] = {}

    def add(self) -> Pod:
        self.result = self.node.plugin("berth-bridge", "ADD", self.conf, container_id=self.cid,
                                       netns=self.ns.path).ok()
        if self.ports:
            pm = portmap_conf(self.conf["name"], self.ports, self.result)
            self.node.plugin("berth-portmap", "ADD", pm, container_id=self.cid, netns=self.ns.path).ok()
        return self

    def delete(self, **env: str) -> harness.PluginResult:
        if self.ports:
            pm = portmap_conf(self.conf["name"], self.ports)
            self.node.plugin("berth-portmap", "DEL", pm, container_id=self.cid, netns=self.ns.path).ok()
        return self.node.plugin("berth-bridge", "DEL", self.conf, container_id=self.cid, netns=self.ns.path,
                                env=env)

    @property
    def ip(self) -> str:
        return str(self.result["ips"][0]["address"].split("/")[0])

    @contextlib.contextmanager
    def serving(self, port: int) -> Iterator[None]:
        """TCP and UDP servers on `port`, answering "<cid> <peer>"."""
        with self.ns.server(port, "tcp", banner=self.cid), self.ns.server(port, "udp", banner=self.cid):
            yield


def reach(src: Pod | harness.Netns, host: str, port: int, proto: str = "tcp", expect: bool = True) -> str | None:
    ns = src.ns if isinstance(src, Pod) else src
    return ns.connect(host, port, proto, timeout=3 if expect else SHORT)


def who(src: Pod | harness.Netns, host: str, port: int, proto: str = "tcp") -> str | None:
    """The banner of the server that answered (ipMasq rewrites the peer address
    of traffic between networks, as upstream's ipMasq does: only the banner counts)."""
    answer = reach(src, host, port, proto)
    return answer.split()[0] if answer else None


def blocked(src: Pod, dst: Pod, port: int) -> bool:
    """Neither a TCP connection nor a UDP datagram gets through."""
    return (reach(src, dst.ip, port, "tcp", expect=False) is None
            and reach(src, dst.ip, port, "udp", expect=False) is None)


def members(node: harness.Node) -> dict[str, list[Any]]:
    table = node.nft_table() or {"nftables": []}
    out: dict[str, list[Any]] = {}
    for item in table["nftables"]:
        s = item.get("set")
        if s and s["name"] in ("isolated", "strict", "isolated-self"):
            out[s["name"]] = [e["concat"][0] if isinstance(e, dict) else e for e in s.get("elem", [])]
    return out


def bridges_set(node: harness.Node) -> list[str]:
    table = node.nft_table() or {"nftables": []}
    return next((list(i["set"].get("elem", [])) for i in table["nftables"]
                 if "set" in i and i["set"]["name"] == "bridges"), [])


def isolation_rule_count(node: harness.Node) -> int:
    """Rules that implement isolation: CNI-ISOLATION's plus forward's jump to it."""
    table = node.nft_table() or {"nftables": []}
    rules = [i["rule"] for i in table["nftables"] if "rule" in i]
    return sum(1 for r in rules if r["chain"] == "CNI-ISOLATION" or "CNI-ISOLATION" in json.dumps(r["expr"]))


def test_isolated_networks_apart_published_port_and_open_network(topo: harness.Topology) -> None:
    node = topo.node
    a = Pod(topo, net_conf(node, "iso-a", "bti-a", "10.91.1.0/24", True), "a").add()
    b = Pod(topo, net_conf(node, "iso-b", "bti-b", "10.91.2.0/24", True), "b",
            ports=[{"hostPort": 18080, "containerPort": 7000, "protocol": "tcp"}]).add()
    o = Pod(topo, net_conf(node, "open", "bti-o", "10.91.3.0/24"), "o").add()
    assert sorted(members(node)["isolated"]) == ["bti-a", "bti-b"]
    with a.serving(7000), b.serving(7000), o.serving(7000), topo.outside.server(7100, banner="out"):
        # isolated <-> isolated: nothing new gets through, either direction, TCP or UDP
        assert blocked(a, b, 7000) and blocked(b, a, 7000)
        # both reach the outside (masqueraded), replies included
        assert reach(a, OUT, 7100) == f"out {NODE}"
        assert reach(b, OUT, 7100) == f"out {NODE}"
        # a published port of b through the node's address: DNAT'ed, allowed from a and from outside
        assert who(a, NODE, 18080) == "b"
        assert reach(topo.outside, NODE, 18080) == f"b {OUT}"
        # the open network reaches both, and they reach it (the replies cross into an isolated bridge)
        for iso in (a, b):
            assert who(o, iso.ip, 7000) == iso.cid
            assert who(o, iso.ip, 7000, "udp") == iso.cid
            assert who(iso, o.ip, 7000) == "o"
            assert who(iso, o.ip, 7000, "udp") == "o"
    drops = [r for r in node.nft_text().splitlines() if "iifname @isolated" in r]
    assert drops and "packets 0 " not in drops[0], "the drop rule never counted a packet"
    for pod in (a, b, o):
        pod.delete().ok()
    assert members(node) == {"isolated": [], "strict": [], "isolated-self": []}


def test_strict_network_refuses_open_and_isolated_ones(topo: harness.Topology) -> None:
    node = topo.node
    s = Pod(topo, net_conf(node, "strict", "bti-s", "10.91.4.0/24", "strict"), "s",
            ports=[{"hostPort": 18081, "containerPort": 7000, "protocol": "tcp"}]).add()
    a = Pod(topo, net_conf(node, "iso-a", "bti-a", "10.91.1.0/24", True), "a").add()
    o = Pod(topo, net_conf(node, "open", "bti-o", "10.91.3.0/24", False), "o",
            ports=[{"hostPort": 18082, "containerPort": 7000, "protocol": "tcp"}]).add()
    assert members(node)["strict"] == ["bti-s"]
    with s.serving(7000), a.serving(7000), o.serving(7000), topo.outside.server(7100, banner="out"):
        assert blocked(o, s, 7000), "strict: an open network must not reach it"
        assert blocked(s, o, 7000), "strict: it must not reach an open network either"
        assert blocked(a, s, 7000) and blocked(s, a, 7000)
        assert reach(s, OUT, 7100) == f"out {NODE}"
        # published ports stay reachable through the node's address, both ways
        assert who(o, NODE, 18081) == "s"
        assert who(s, NODE, 18082) == "o"
        assert reach(topo.outside, NODE, 18081) == f"s {OUT}"
        # the open network still reaches the non-strict isolated one, and back
        assert who(o, a.ip, 7000) == "a" and who(a, o.ip, 7000) == "o"
    for pod in (s, a, o):
        pod.delete().ok()
    assert members(node) == {"isolated": [], "strict": [], "isolated-self": []}


def test_strict_and_an_open_network_without_ipmasq(topo: harness.Topology) -> None:
    """The strict network and a non-isolated one without ipMasq, whose bridge no
    other feature puts in `bridges`: no new connection either way, TCP or UDP,
    whichever comes up first; replies, egress and published ports still work."""
    node = topo.node
    c_conf = net_conf(node, "plain", "bti-c", "10.91.6.0/24")
    c_conf["ipMasq"] = False
    c = Pod(topo, c_conf, "c", ports=[{"hostPort": 18083, "containerPort": 7000, "protocol": "tcp"}]).add()
    s = Pod(topo, net_conf(node, "strict", "bti-s", "10.91.4.0/24", "strict"), "s",
            ports=[{"hostPort": 18084, "containerPort": 7000, "protocol": "udp"}]).add()
    c2 = Pod(topo, dict(c_conf), "c2").add()  # a bridge ADD after the strict one: enlisted by the marker
    late_conf = net_conf(node, "late", "bti-l", "10.91.7.0/24")
    late_conf["ipMasq"] = False
    late = Pod(topo, late_conf, "late").add()  # a new bridge on a strict node
    assert {"bti-c", "bti-l", "bti-s"} <= set(bridges_set(node))
    with s.serving(7000), c.serving(7000), late.serving(7000), topo.outside.server(7100, banner="out"):
        for other in (c, late):
            assert blocked(s, other, 7000), f"strict -> {other.cid} got through"
            assert blocked(other, s, 7000), f"{other.cid} -> strict got through"
        assert blocked(c2, s, 7000)
        # the strict network's egress to the outside, and the replies
        assert reach(s, OUT, 7100) == f"out {NODE}"
        # c's published port through the node's address from the strict network, and s's from c (UDP)
        assert who(s, NODE, 18083) == "c"
        assert who(c, NODE, 18084, "udp") == "s"
        # the two open networks are not isolated from each other (no ipMasq: the peer is the real source)
        assert reach(late, c.ip, 7000) == f"c {late.ip}"
    drops = [line for line in node.nft_text().splitlines() if "iifname @strict counter" in line]
    assert drops and "packets 0 " not in drops[0], "the outward strict rule never counted a packet"
    for pod in (late, c2, s, c):
        pod.delete().ok()
    assert members(node) == {"isolated": [], "strict": [], "isolated-self": []}
    assert not (node.state_dir / ".isolate-strict").exists(), "the node has no strict network left"


def test_reconcile_puts_every_bridge_back_for_a_strict_network(topo: harness.Topology) -> None:
    node = topo.node
    c_conf = net_conf(node, "plain", "bti-c", "10.91.6.0/24")
    c_conf["ipMasq"] = False
    c = Pod(topo, c_conf, "c").add()
    s = Pod(topo, net_conf(node, "strict", "bti-s", "10.91.4.0/24", "strict"), "s").add()
    node.exec(["nft", "delete", "element", "inet", "berth", "bridges", "{ bti-c }"])
    with c.serving(7000):
        assert reach(s, c.ip, 7000) is not None  # what a lost element means: the open bridge is reachable
        out = node.berth("explain", "s")
        assert out.returncode == 1 and "bridge bti-c is missing from set bridges" in out.stdout, out.stdout
        fixed = node.berth("reconcile")
        assert fixed.returncode == 0 and "bti-c" in fixed.stdout, fixed.stdout + fixed.stderr
        assert blocked(s, c, 7000)
    s.delete().ok()
    c.delete().ok()


def test_membership_follows_the_last_attachment_of_a_bridge(topo: harness.Topology) -> None:
    node = topo.node
    # two networks on one bridge: one subnet, split ranges (one v4 gateway per bridge)
    n1 = net_conf(node, "share-1", "bti-x", "10.91.5.0/24", True, rangeStart="10.91.5.10", rangeEnd="10.91.5.19")
    n2 = net_conf(node, "share-2", "bti-x", "10.91.5.0/24", True, rangeStart="10.91.5.20", rangeEnd="10.91.5.29")
    p1, p1b, p2 = Pod(topo, n1, "p1").add(), Pod(topo, n1, "p1b").add(), Pod(topo, n2, "p2").add()
    assert members(node) == {"isolated": ["bti-x"], "strict": [], "isolated-self": ["bti-x"]}
    with p2.serving(7000):  # one isolation domain: the two networks on the bridge talk
        assert who(p1, p2.ip, 7000) == "p2"
    p1.delete().ok()
    p1.delete().ok()  # a second DEL changes nothing
    assert members(node)["isolated"] == ["bti-x"]
    p1b.delete().ok()  # share-1 has no attachment left, share-2 still uses the bridge
    assert members(node)["isolated"] == ["bti-x"]
    p2.delete().ok()
    assert members(node) == {"isolated": [], "strict": [], "isolated-self": []}

    # a strict network joining the bridge adds only the strict mark; leaving takes only that
    Pod(topo, n1, "p3").add()  # left to GC below
    s = Pod(topo, net_conf(node, "share-s", "bti-x", "10.91.5.0/24", "strict", rangeStart="10.91.5.30",
                           rangeEnd="10.91.5.39"), "s").add()
    assert members(node)["strict"] == ["bti-x"]
    s.delete().ok()
    assert members(node) == {"isolated": ["bti-x"], "strict": [], "isolated-self": ["bti-x"]}

    # GC: the runtime lost p3 (no DEL); GC with an empty list takes the bridge out
    gc = dict(n1, **{"cniVersion": "1.1.0", "cni.dev/valid-attachments": []})
    node.plugin("berth-bridge", "GC", gc).ok()
    assert members(node)["isolated"] == []

    # an element no journal accounts for (journal lost): GC of that network clears it too
    p4 = Pod(topo, n1, "p4").add()
    (node.state_dir / "share-1" / "p4:eth0.json").unlink()
    node.plugin("berth-bridge", "GC", gc).ok()
    assert members(node)["isolated"] == []
    p4.delete().ok()


def test_failed_add_rolls_isolation_back(topo: harness.Topology) -> None:
    node = topo.node
    c = net_conf(node, "iso-a", "bti-a", "10.91.1.0/24", "strict")
    pod = Pod(topo, c, "a")
    res = node.plugin("berth-bridge", "ADD", c, container_id="a", netns=pod.ns.path,
                      env={"BERTH_TEST_FAIL_AFTER": "isolation"})
    assert res.rc != 0 and res.json["code"] == 999
    assert members(node) == {"isolated": [], "strict": [], "isolated-self": []}
    assert not list((node.state_dir / "iso-a").glob("*.json"))
    # a kept attachment of the same bridge survives another one's failed ADD
    pod.add()
    res = node.plugin("berth-bridge", "ADD", c, container_id="a2", netns=topo.container().path,
                      env={"BERTH_TEST_FAIL_AFTER": "isolation"})
    assert res.rc != 0
    assert members(node)["strict"] == ["bti-a"]
    pod.delete().ok()


def test_bad_isolate_value_changes_nothing(topo: harness.Topology) -> None:
    node = topo.node
    ns = topo.container()
    for bad in ("yes", 1, {"strict": True}):
        c = net_conf(node, "iso-a", "bti-a", "10.91.1.0/24", bad)
        res = node.plugin("berth-bridge", "ADD", c, container_id="a", netns=ns.path)
        assert res.rc != 0 and res.json["code"] == 7, res.stdout
    assert node.nft_table() is None
    assert "bti-a" not in node.links()


def test_hundred_networks_constant_rule_count(topo: harness.Topology) -> None:
    node = topo.node
    a = Pod(topo, net_conf(node, "iso-a", "bti-a", "10.91.1.0/24", True), "a").add()
    b = Pod(topo, net_conf(node, "iso-b", "bti-b", "10.91.2.0/24", "strict"), "b").add()
    two = isolation_rule_count(node)
    # 97 more isolated and strict bridges through the plugin's own code path (isolation.setup, one
    # transaction each), then the 100th through the real plugin executable
    script = ("from portmap import isolation\n"
              "for i in range(97): isolation.setup(f'bti-n{i}', 'strict' if i % 2 else 'isolated')\n")
    node.exec([str(_venv_python()), "-c", script],
              env=node.env(), cwd=str(_repo()))
    c = Pod(topo, net_conf(node, "iso-c", "bti-c", "10.91.3.0/24", True), "c").add()
    assert len(members(node)["isolated"]) == 100
    hundred = isolation_rule_count(node)
    print(f"\nisolation rules: {two} with 2 isolated networks, {hundred} with 100")
    assert two == hundred == 7  # forward's one gate and CNI-ISOLATION's six
    with b.serving(7000):
        assert blocked(a, b, 7000) and blocked(c, b, 7000)
    for pod in (a, b, c):
        pod.delete().ok()
    assert len(members(node)["isolated"]) == 97  # the script's bridges have no journal: untouched


def _repo() -> Any:
    from pathlib import Path

    return Path(__file__).resolve().parents[2]


def _venv_python() -> Any:
    return _repo() / ".venv" / "bin" / "python"


def dual_conf(node: harness.Node, name: str, bridge: str, n: int, isolate: Any = None) -> dict[str, Any]:
    c = net_conf(node, name, bridge, f"10.91.{n}.0/24", isolate)
    c["ipam"]["ranges"].append([{"subnet": f"fd00:91:{n}::/64"}])
    c["ipam"]["routes"] = [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
    return c


def v6(pod: Pod) -> str:
    return next(str(ip["address"].split("/")[0]) for ip in pod.result["ips"] if ":" in ip["address"])


def test_ipv6_is_isolated_by_the_same_rules(topo: harness.Topology) -> None:
    node = topo.node
    a = Pod(topo, dual_conf(node, "iso-a", "bti-a", 1, True), "a").add()
    b = Pod(topo, dual_conf(node, "iso-b", "bti-b", 2, True), "b").add()
    o = Pod(topo, dual_conf(node, "open", "bti-o", 3), "o").add()
    for pod in (a, b):
        with pod.ns.server(7000, "tcp", family="6", banner=pod.cid), \
                pod.ns.server(7000, "udp", family="6", banner=pod.cid):
            other = b if pod is a else a
            assert reach(other, v6(pod), 7000, expect=False) is None
            assert reach(other, v6(pod), 7000, "udp", expect=False) is None
            assert who(o, v6(pod), 7000) == pod.cid
    for pod in (a, b, o):
        pod.delete().ok()


def test_check_reports_a_bridge_missing_from_the_sets(topo: harness.Topology) -> None:
    node = topo.node
    pod = Pod(topo, net_conf(node, "iso-a", "bti-a", "10.91.1.0/24", "strict"), "a").add()
    check = dict(pod.conf, prevResult=pod.result)
    node.plugin("berth-bridge", "CHECK", check, container_id="a", netns=pod.ns.path).ok()
    node.exec(["nft", "delete", "element", "inet", "berth", "strict", "{", "bti-a", "}"])
    res = node.plugin("berth-bridge", "CHECK", check, container_id="a", netns=pod.ns.path)
    assert res.rc != 0 and res.json["code"] == 106 and "strict" in res.json["msg"], res.stdout
    pod.delete().ok()


def test_add_killed_after_isolation_is_cleaned_by_del(topo: harness.Topology) -> None:
    node = topo.node
    c = net_conf(node, "iso-a", "bti-a", "10.91.1.0/24", "strict")
    ns = topo.container()
    res = node.plugin("berth-bridge", "ADD", c, container_id="a", netns=ns.path,
                      env={"BERTH_TEST_KILL_AFTER": "isolation"})
    assert res.rc == -9
    assert members(node)["strict"] == ["bti-a"]  # the journal says "adding" with isolate: strict
    node.plugin("berth-bridge", "DEL", c, container_id="a", netns="").ok()
    assert members(node) == {"isolated": [], "strict": [], "isolated-self": []}
    assert not list((node.state_dir / "iso-a").glob("*.json"))


def test_reconcile_restores_isolation_after_a_flush(topo: harness.Topology) -> None:
    node = topo.node
    a = Pod(topo, net_conf(node, "isoa", "bta", "10.61.0.0/24", isolate=True), "ra").add()
    b = Pod(topo, net_conf(node, "isob", "btb", "10.62.0.0/24", isolate=True), "rb").add()
    node.exec(["nft", "flush", "ruleset"])
    out = node.berth("reconcile")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "isolation" in out.stdout
    assert "bta" in members(node).get("isolated", []) and "btb" in members(node).get("isolated", [])
    with b.serving(9100):
        assert blocked(a, b, 9100)
    a.delete().ok()
    b.delete().ok()


def test_explain_reports_isolation_and_a_missing_set_element(topo: harness.Topology) -> None:
    node = topo.node
    a = Pod(topo, net_conf(node, "isoa", "bta", "10.63.0.0/24", isolate=True), "ea").add()
    out = node.berth("explain", "ea")
    assert "isolation" in out.stdout and "isolate=isolated: bta in the isolation sets" in out.stdout, out.stdout
    node.exec(["nft", "delete", "element", "inet", "berth", "isolated", "{ bta }"])
    out = node.berth("explain", "ea")
    assert out.returncode == 1 and "bridge bta is missing from set isolated" in out.stdout, out.stdout
    a.delete().ok()
