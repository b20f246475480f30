"""Names that must stand for one attachment each, on the real kernel.

Journals are named <containerID>:<ifname>.json (":" is in neither), so the
pair ("a", "b-c") / ("a-b", "c"), which shared a-b-c.json, are two
attachments; a journal with the older name <containerID>-<ifname>.json keeps
working for the attachment its content names. DNAT chains keep upstream's
name, CNI-DN- + hash(network + containerID), which the pair of networks
("ab", "c1") / ("a", "bc1") share: the second ADD is refused, and nothing of
the first attachment is touched by it or by its DEL.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from portmap import layout
from tests import harness
from tests.netns.portmap_helpers import first_conf, portmap_conf

NODE4, OUTSIDE4 = harness.Topology.NODE_V4, harness.Topology.OUTSIDE_V4
SUBNET = "10.88.0.0/24"


class Attachment:
    """bridge (ipMasq) + portmap for one (network, containerID, ifname)."""

    def __init__(self, topo: harness.Topology, cid: str, ifname: str, port: int, network: str = "nm") -> None:
        self.node = topo.node
        self.cid, self.ifname, self.port = cid, ifname, port
        self.netns = topo.container()
        self.bridge_conf = {**first_conf(self.node, name=network), "ipMasq": True}
        self.network = network
        self.result: dict[str, Any] | None = None

    def bridge(self, command: str, netns: str | None = None) -> harness.PluginResult:
        return self.node.plugin("berth-bridge", command, self.bridge_conf, container_id=self.cid,
                                netns=self.netns.path if netns is None else netns, ifname=self.ifname)

    def portmap(self, command: str, netns: str | None = None) -> harness.PluginResult:
        conf = portmap_conf(self.network, [{"hostPort": self.port, "containerPort": 80}],
                            copy.deepcopy(self.result) if self.result else None)
        return self.node.plugin("berth-portmap", command, conf, container_id=self.cid,
                                netns=self.netns.path if netns is None else netns, ifname=self.ifname)

    def add(self) -> harness.PluginResult:
        res = self.bridge("ADD")
        if res.rc != 0:
            return res
        self.result = res.json
        res = self.portmap("ADD")
        if res.rc != 0:
            self.bridge("DEL").ok()
        return res

    def delete(self, netns: str | None = None) -> None:
        self.portmap("DEL", netns).ok()
        self.bridge("DEL", netns).ok()

    @property
    def address(self) -> str:
        assert self.result is not None
        return str(self.result["ips"][0]["address"].split("/")[0])

    @property
    def host_veth(self) -> str:
        assert self.result is not None
        return str(self.result["interfaces"][1]["name"])

    def reachable(self, topo: harness.Topology) -> bool:
        with self.netns.server(80, "tcp", banner=self.cid):
            return topo.outside.connect(NODE4, self.port) == f"{self.cid} {OUTSIDE4}"


def masq_addresses(node: harness.Node) -> list[str]:
    name = layout.ipmasq_set_name(layout.ipmasq_map_name(SUBNET))
    for item in (node.nft_table() or {}).get("nftables", []):
        if "set" in item and item["set"]["name"] == name:
            return sorted(str(e) for e in item["set"].get("elem") or [])
    return []


def journal_names(node: harness.Node) -> list[str]:
    return sorted(str(p.relative_to(node.state_dir)) for p in node.state_dir.glob("*/*.json"))


def test_ids_and_ifnames_with_dashes_are_separate_attachments(topo: harness.Topology) -> None:
    node = topo.node
    first = Attachment(topo, "a", "b-c", 18081)
    second = Attachment(topo, "a-b", "c", 18082)
    first.add().ok()
    second.add().ok()
    assert journal_names(node) == ["nm/a-b:c.json", "nm/a:b-c.json"]
    assert masq_addresses(node) == sorted([first.address, second.address])
    assert first.reachable(topo) and second.reachable(topo)
    second.delete()
    assert masq_addresses(node) == [first.address]  # the first pod keeps its outbound masquerade
    assert first.reachable(topo)
    first.delete(netns="")  # containerd's DEL after the sandbox went: the journal names the host veth
    assert first.host_veth not in node.links()
    assert journal_names(node) == [] and masq_addresses(node) == []
    assert "CNI-DN-" not in node.nft_text()


def test_networks_whose_names_join_alike_never_share_a_dnat_chain(topo: harness.Topology) -> None:
    node = topo.node
    first = Attachment(topo, "c1", "eth0", 18083, network="ab")
    second = Attachment(topo, "bc1", "eth0", 18084, network="a")
    second.bridge_conf["bridge"] = "bt1"
    second.bridge_conf["ipam"]["ranges"] = [[{"subnet": "10.89.0.0/24"}]]
    chain = layout.dnat_chain_name("ab", "c1")
    assert chain == layout.dnat_chain_name("a", "bc1")
    first.add().ok()
    res = second.add()
    assert res.rc == 1 and res.json["code"] == 103 and chain in res.json["msg"], res
    assert "container c1 (network ab" in res.json["msg"]
    assert first.reachable(topo)
    second.delete()  # the refused attachment's DEL, as a runtime sends it after the failed ADD
    second.delete(netns="")
    assert first.reachable(topo)
    assert journal_names(node) == ["ab/c1:eth0.json"]
    # journal lost: the chain's rule comments still name its attachment
    (node.state_dir / "ab" / "c1:eth0.json").rename(node.state_dir / "kept.json")
    res = second.add()
    assert res.rc == 1 and res.json["code"] == 103 and "net: ab, if: eth0, id: c1" in res.json["msg"], res
    second.delete()
    assert first.reachable(topo)
    (node.state_dir / "kept.json").rename(node.state_dir / "ab" / "c1:eth0.json")
    first.delete()
    assert "CNI-DN-" not in node.nft_text() and journal_names(node) == []


# An older berth's ipMasq element: tagged with the tag of its day (layout.legacy_ipmasq_tag)
RETAG = """
import json, sys
from portmap import layout, nft
cidr, new, old = json.loads(sys.argv[1])
nft.apply(layout.ipmasq_del(layout.ipmasq_elements([cidr], new)) + layout.ipmasq_add([cidr], old, None, []))
"""


def as_an_older_berth_left_it(topo: harness.Topology, att: Attachment) -> Path:
    """Rename the journal to <containerID>-<ifname>.json and drop what older berths did not record."""
    node = topo.node
    new = node.state_dir / att.network / f"{att.cid}:{att.ifname}.json"
    old = node.state_dir / att.network / f"{att.cid}-{att.ifname}.json"
    data = json.loads(new.read_text())
    for key in ("hostVeth", "netns"):
        data["portmap"].pop(key)
    masq = data["bridge"]["masq"]
    legacy = layout.legacy_ipmasq_tag(att.network, att.cid, att.ifname)
    node.exec([harness.ROOT.joinpath(".venv/bin/python").as_posix(), "-c", RETAG,
               json.dumps([att.result["ips"][0]["address"] if att.result else "", masq["tag"], legacy])],
              env={"PYTHONPATH": str(harness.ROOT), "PATH": "/usr/bin:/bin"})
    masq["tag"] = legacy
    old.write_text(json.dumps(data, indent=1, sort_keys=True))
    old.chmod(0o600)
    new.unlink()
    return old


def test_journals_with_the_older_names_are_found_by_del_gc_list_and_reconcile(topo: harness.Topology) -> None:
    node = topo.node
    deleted = Attachment(topo, "up1", "eth0", 18091)
    collected = Attachment(topo, "up2", "eth0", 18092)
    shared = Attachment(topo, "a", "b-c", 18093)  # a-b-c.json: also the older name of ("a-b", "c")
    olds = {}
    for att in (deleted, collected, shared):
        att.add().ok()
        olds[att.cid] = as_an_older_berth_left_it(topo, att)
    assert journal_names(node) == ["nm/a-b-c.json", "nm/up1-eth0.json", "nm/up2-eth0.json"]

    rows = json.loads(node.berth("list", "--json").stdout)
    assert {(r["containerID"], r["ifname"]): r["rules"] for r in rows} == {
        ("up1", "eth0"): "ok", ("up2", "eth0"): "ok", ("a", "b-c"): "ok"}

    node.exec(["nft", "flush", "ruleset"])
    proc = node.berth("reconcile")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert all(att.reachable(topo) for att in (deleted, collected, shared))
    assert masq_addresses(node) == sorted(att.address for att in (deleted, collected, shared))

    # a new attachment whose new name's old reading is a-b-c.json leaves that journal alone
    newcomer = Attachment(topo, "a-b", "c", 18094)
    newcomer.add().ok()
    assert "nm/a-b:c.json" in journal_names(node) and olds["a"].exists()
    newcomer.delete()
    assert olds["a"].exists() and shared.reachable(topo)

    deleted.delete(netns="")  # DEL from the journal alone, as containerd's second DEL
    assert not olds["up1"].exists() and deleted.host_veth not in node.links()

    valid = [{"containerID": "a", "ifname": "b-c"}]
    pm_gc = {"cniVersion": "1.1.0", "name": "nm", "type": "berth-portmap", "cni.dev/valid-attachments": valid}
    node.plugin("berth-portmap", "GC", pm_gc).ok()
    node.plugin("berth-bridge", "GC", {**collected.bridge_conf, "cniVersion": "1.1.0",
                                       "cni.dev/valid-attachments": valid}).ok()
    assert not olds["up2"].exists() and collected.host_veth not in node.links()
    assert masq_addresses(node) == [shared.address] and shared.reachable(topo)

    shared.delete()
    assert journal_names(node) == [] and masq_addresses(node) == []
    assert "CNI-DN-" not in node.nft_text()
