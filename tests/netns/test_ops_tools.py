"""`berth list / explain / reconcile` on the real kernel: build a working
attachment (berth-bridge with ipMasq + berth-portmap publishing 8080->80/tcp),
break it in one way at a time, check that `berth explain` names the broken hop,
and that `berth reconcile` repairs the nftables damage (proven by traffic)."""

from __future__ import annotations

import json
import shutil
from typing import Any

import pytest

from tests import harness

NET = "opsnet"
NODE4, OUTSIDE4 = harness.Topology.NODE_V4, harness.Topology.OUTSIDE_V4
MAPPINGS = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]


class Attached:
    """One container attached through berth-bridge + berth-portmap."""

    def __init__(self, topo: harness.Topology, cid: str = "c1") -> None:
        self.topo, self.node, self.cid = topo, topo.node, cid
        self.netns = topo.container()
        conf = harness.bridge_conf(name=NET)
        conf["ipam"]["dataDir"] = str(self.node.data_dir)
        self.log = self.node.state_dir.parent / "plugins.log"
        conf["berthLogFile"] = str(self.log)  # the per-call log, named by the config
        self.bridge_conf = conf
        self.result: dict[str, Any] = self.node.plugin("berth-bridge", "ADD", conf, container_id=cid,
                                                       netns=self.netns.path).ok()
        self.portmap("ADD").ok()

    def portmap(self, command: str) -> harness.PluginResult:
        conf = {"cniVersion": "1.0.0", "name": NET, "type": "berth-portmap",
                "capabilities": {"portMappings": True}, "runtimeConfig": {"portMappings": MAPPINGS},
                "prevResult": self.result, "berthLogFile": str(self.log)}
        return self.node.plugin("berth-portmap", command, conf, container_id=self.cid, netns=self.netns.path)

    @property
    def journal(self) -> Any:
        return json.loads((self.node.state_dir / NET / f"{self.cid}:eth0.json").read_text())

    @property
    def address(self) -> str:
        return str(self.result["ips"][0]["address"].split("/")[0])

    def reaches(self) -> bool:
        with self.netns.server(80, banner="web"):
            return self.topo.outside.connect(NODE4, 8080, timeout=1) == f"web {OUTSIDE4}"

    def delete(self) -> None:
        self.portmap("DEL").ok()
        self.node.plugin("berth-bridge", "DEL", self.bridge_conf, container_id=self.cid,
                         netns=self.netns.path).ok()


def berth(node: harness.Node, *argv: str, rc: int | None = 0) -> str:
    proc = node.berth(*argv)
    assert proc.stderr == "" or rc != 0 or "Traceback" not in proc.stderr, proc.stderr
    if rc is not None:
        assert proc.returncode == rc, f"berth {argv} -> {proc.returncode}: {proc.stdout}{proc.stderr}"
    return proc.stdout


def explain_json(node: harness.Node, target: str, rc: int) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(berth(node, "explain", target, "--json", rc=rc))
    return out


def hops(report: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {h["name"]: h for h in report["hops"]}


def failed(node: harness.Node, target: str = "c1") -> list[str]:
    """The names of the failing hops of `berth explain target` (which must exit 1)."""
    out = explain_json(node, target, rc=1)
    return [h["name"] for r in out["attachments"] for h in r["hops"] if h["status"] == "fail"]


def nft(node: harness.Node, *args: str) -> None:
    node.exec(["nft", *args])


@pytest.fixture
def pod(topo: harness.Topology) -> Attached:
    p = Attached(topo)
    assert p.reaches()
    return p


def test_healthy_attachment_list_explain_reconcile(pod: Attached) -> None:
    node = pod.node
    rows = json.loads(berth(node, "list", "--json"))
    assert len(rows) == 1
    row = rows[0]
    assert (row["network"], row["containerID"], row["ifname"]) == (NET, "c1", "eth0")
    assert row["netns"] == pod.netns.path and row["addresses"] == [f"{pod.address}/24"]
    assert row["ports"] == ["8080->80/tcp"] and row["rules"] == "ok" and row["missing"] == []
    text = berth(node, "list")
    assert "CONTAINER" in text and "8080->80/tcp" in text and " ok" in text

    for target in ("c1", "8080", f"{NODE4}:8080", "0.0.0.0:8080"):
        out = explain_json(node, target, rc=0)
        assert out["verdict"].startswith("OK"), out
        steps = hops(out["attachments"][0])
        for name in ("journal", "ports", "table", "hostport", "dnat", "forward", "bridge", "veth", "container",
                     "masquerade", "localhost"):
            assert steps[name]["status"] == "ok", (name, steps[name])
    # the DNAT counter saw the connection of the fixture
    assert "DNAT'ed 0 packets" not in hops(explain_json(node, "c1", rc=0)["attachments"][0])["dnat"]["detail"]
    text = berth(node, "explain", "c1")
    print(text)
    assert text.strip().splitlines()[-1].strip().startswith("=> OK")
    assert "nothing to fix" in berth(node, "reconcile")
    assert berth(node, "explain", "9999", rc=1).startswith("9999: no attachment")
    pod.delete()
    assert berth(node, "list") == "no attachments\n"
    logged = [json.loads(line) for line in pod.log.read_text().splitlines()]
    assert [(e["plugin"], e["verb"], e["outcome"]) for e in logged] == [
        ("berth-bridge", "ADD", "ok"), ("berth-portmap", "ADD", "ok"),
        ("berth-portmap", "DEL", "ok"), ("berth-bridge", "DEL", "ok")]
    assert all(e["container"] == "c1" and e["network"] == NET and e["ms"] > 0 for e in logged)


@pytest.mark.parametrize("damage", ["element", "chain", "table"])
def test_nft_damage_is_named_and_reconciled(pod: Attached, damage: str) -> None:
    node = pod.node
    chain = pod.journal["portmap"]["chain"]
    if damage == "element":
        nft(node, "delete", "element", "inet", "berth", "hostport", "{ tcp . 8080 }")
        expect = "hostport"
    elif damage == "chain":
        nft(node, "flush", "chain", "inet", "berth", chain)
        expect = "dnat"
    else:  # someone flushed everything berth owns
        nft(node, "delete", "table", "inet", "berth")
        expect = "table"
    assert not pod.reaches()
    broken = failed(node)
    assert broken[0] == expect, broken
    assert f"BROKEN at {expect}" in explain_json(node, "8080", rc=1)["verdict"]
    assert json.loads(berth(node, "list", "--json"))[0]["rules"] in ("missing", "partial")

    before = node.nft_text()
    dry = berth(node, "reconcile", "--dry-run")
    assert "would fix" in dry and node.nft_text() == before
    report = json.loads(berth(node, "reconcile", "--json"))
    assert report["applied"] and report["fixes"] and not report["skipped"], report
    assert pod.reaches()
    assert explain_json(node, "c1", rc=0)["verdict"].startswith("OK")
    assert json.loads(berth(node, "list", "--json"))[0]["rules"] == "ok"
    assert "nothing to fix" in berth(node, "reconcile")
    if damage == "table":  # the bridge's ipMasq rule and element came back as well
        masq = pod.journal["bridge"]["masq"]
        text = node.nft_text()
        assert f'comment "ipMasq {masq["subnets"][0]}"' in text and masq["addresses"][0] in text
    pod.delete()  # DEL still removes exactly what it made
    assert "CNI-DN-" not in node.nft_text()


def test_host_veth_down(pod: Attached) -> None:
    veth = pod.journal["bridge"]["hostVeth"]
    pod.node.ip("link", "set", veth, "down")
    assert not pod.reaches()
    assert failed(pod.node) == ["veth"]
    assert f"host veth {veth} is down" in explain_json(pod.node, "c1", rc=1)["verdict"]
    assert "nothing to fix" in berth(pod.node, "reconcile")  # not nftables damage: left to the operator


def test_foreign_forward_drop(pod: Attached) -> None:
    # what iptables-nft makes for `iptables -P FORWARD DROP` (docker does this), in the NODE namespace
    nft(pod.node, "add", "table", "ip", "filter")
    nft(pod.node, "add", "chain", "ip", "filter", "FORWARD",
        "{ type filter hook forward priority 0; policy drop; }")
    assert not pod.reaches()
    assert failed(pod.node) == ["forward"]
    detail = hops(explain_json(pod.node, "c1", rc=1)["attachments"][0])["forward"]["detail"]
    assert "FORWARD" in detail and "policy drop" in detail and "iptables-legacy" in detail
    # an accept rule for the bridge turns it into a warning, and traffic flows again
    nft(pod.node, "add", "rule", "ip", "filter", "FORWARD", "oifname", "bt0", "accept")
    nft(pod.node, "add", "rule", "ip", "filter", "FORWARD", "iifname", "bt0", "accept")
    out = explain_json(pod.node, "c1", rc=0)
    assert hops(out["attachments"][0])["forward"]["status"] == "warn"
    assert pod.reaches()


def test_port_claimed_by_second_journal(pod: Attached) -> None:
    node = pod.node
    src = node.state_dir / NET / "c1:eth0.json"
    dst = node.state_dir / NET / "c2:eth0.json"
    data = json.loads(src.read_text())
    data["containerID"] = "c2"
    del data["bridge"]
    data["portmap"]["chain"] = "CNI-DN-0000000000000000000000"
    dst.write_text(json.dumps(data))
    shutil.copymode(src, dst)
    assert failed(node) == ["ports"]
    out = explain_json(node, "8080", rc=1)
    assert len(out["attachments"]) == 2
    assert "also claimed by c2/eth0" in out["attachments"][0]["verdict"]
    c2 = hops(out["attachments"][1])
    assert c2["ports"]["status"] == "fail" and "held by c1/eth0" in c2["ports"]["detail"]
    # reconcile never takes the port from its owner
    report = json.loads(berth(node, "reconcile", "--json"))
    assert any("held by c1/eth0" in s["why"] for s in report["skipped"]), report
    assert report["fixes"] == [], report
    assert pod.reaches()
    dst.unlink()
    assert explain_json(node, "c1", rc=0)["verdict"].startswith("OK")


@pytest.mark.parametrize("flushed", ["dnat", "CNI-HOSTPORT-DNAT", "prerouting", "postrouting", "CNI-HOSTPORT-MASQ"])
def test_check_reports_what_explain_reports(pod: Attached, flushed: str) -> None:
    """One "what is missing" for CHECK and explain: a flushed chain kills the
    published port (or its masquerade), explain says BROKEN, CHECK answers 106
    naming the same chain; after reconcile both pass, and the port answers."""
    node = pod.node
    assert pod.portmap("CHECK").rc == 0 and node.plugin(
        "berth-bridge", "CHECK", dict(pod.bridge_conf, prevResult=pod.result), container_id=pod.cid,
        netns=pod.netns.path).rc == 0
    chain = pod.journal["portmap"]["chain"] if flushed == "dnat" else flushed
    nft(node, "flush", "chain", "inet", "berth", chain)
    report = explain_json(node, "c1", rc=1)
    assert report["verdict"].startswith("BROKEN"), report
    broken = [h["detail"] for r in report["attachments"] for h in r["hops"] if h["status"] == "fail"]
    assert any(chain in d for d in broken), broken
    check = pod.portmap("CHECK")
    bridge_check = node.plugin("berth-bridge", "CHECK", dict(pod.bridge_conf, prevResult=pod.result),
                               container_id=pod.cid, netns=pod.netns.path)
    answers = [r.json for r in (check, bridge_check) if r.rc != 0]
    assert answers and all(a["code"] == 106 for a in answers), (check, bridge_check)
    assert any(chain in f"{a['msg']} {a['details']}" for a in answers), answers
    assert "fixed" in berth(node, "reconcile")
    assert pod.portmap("CHECK").rc == 0 and explain_json(node, "c1", rc=0)["verdict"].startswith("OK")
    assert pod.reaches()
