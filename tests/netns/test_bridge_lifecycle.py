"""berth-bridge DEL/GC/rollback/concurrency: whatever happens, nothing is left behind."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from tests import harness
from tests.netns.test_bridge_common import (
    IPAM,
    MASQ_READY,
    add,
    assert_clean,
    conf,
    delete,
    ipv4,
    journal,
    leases,
    veths,
)

STEPS = ("journal", "ipam", "bridge", "veth", "addresses", "routes", "gateway", "sysctls", "masq")


def test_del_with_empty_netns_and_twice(topo: harness.Topology) -> None:
    node, ns = topo.node, topo.container()
    c = conf(node, ipMasq=MASQ_READY)
    add(node, c, ns)
    assert len(veths(node)) == 1 and len(leases(node)) == 1
    delete(node, c, netns="")  # nerdctl / containerd's second DEL: no netns, no prevResult
    assert_clean(node)
    assert ns.links() == ["lo"]
    delete(node, c, netns="")
    delete(node, c, netns=ns.path)
    assert_clean(node)


def test_del_after_netns_deleted(topo: harness.Topology) -> None:
    node, ns = topo.node, topo.container()
    c = conf(node)
    add(node, c, ns)
    path = ns.path
    ns.remove()
    delete(node, c, netns=path)
    assert_clean(node)
    assert not ns.exists(), "DEL must not re-create a vanished netns"


def test_del_without_journal_like_upstream(topo: harness.Topology) -> None:
    """An attachment made by the reference bridge plugin is removed by berth's DEL."""
    node, ns = topo.node, topo.container()
    c = conf(node, type="bridge", ipam_type="host-local")
    node.plugin("bridge", "ADD", c, container_id="c1", netns=ns.path,
                plugin_path=f"{harness.REFERENCE_DIR}/bridge").ok()
    assert len(veths(node)) == 1
    delete(node, dict(c, type="berth-bridge"), netns=ns.path)
    assert_clean(node)


def test_del_with_unparseable_config_still_releases(topo: harness.Topology) -> None:
    node, ns = topo.node, topo.container()
    c = conf(node)
    add(node, c, ns)
    delete(node, dict(c, mtu="bad"), netns=ns.path)
    assert veths(node) == [] and journal_gone(node)


def journal_gone(node: harness.Node) -> bool:
    return not list((node.state_dir / "testnet").glob("*.json"))


@pytest.mark.parametrize("step", STEPS)
def test_rollback_after_each_step(topo: harness.Topology, step: str) -> None:
    node, ns = topo.node, topo.container()
    c = conf(node, subnets=("10.88.0.0/24", "fd00:88::/64"), ipMasq=MASQ_READY)
    res = node.plugin("berth-bridge", "ADD", c, container_id="c1", netns=ns.path,
                      env={"BERTH_TEST_FAIL_AFTER": step})
    assert res.rc == 1 and res.json["code"] == 999 and step in res.json["msg"], res.stdout
    assert_clean(node)
    assert ns.links() == ["lo"]
    # and the same container can be added afterwards
    add(node, c, ns)
    delete(node, c, netns=ns.path)
    assert_clean(node)


def test_kill_mid_add_then_del_from_journal(topo: harness.Topology) -> None:
    """A SIGKILLed ADD leaves a journal that lets an empty-netns DEL clean up everything."""
    node, ns = topo.node, topo.container()
    c = conf(node, ipMasq=MASQ_READY)
    res = node.plugin("berth-bridge", "ADD", c, container_id="c1", netns=ns.path,
                      env={"BERTH_TEST_KILL_AFTER": "masq"})
    assert res.rc == -9
    assert journal(node)["bridge"]["state"] == "adding"
    assert len(veths(node)) == 1 and len(leases(node)) == 1
    delete(node, c, netns="")
    assert_clean(node)


def test_second_add_is_refused_and_harmless(topo: harness.Topology) -> None:
    node, ns = topo.node, topo.container()
    c = conf(node)
    first = add(node, c, ns)
    again = node.plugin("berth-bridge", "ADD", c, container_id="c1", netns=ns.path)
    assert again.rc == 1 and again.json["code"] == 103, again.stdout
    assert len(leases(node)) == 1 and len(veths(node)) == 1 and journal(node)["bridge"]["state"] == "added"
    assert ns.addresses("eth0")[0] == first["ips"][0]["address"]
    delete(node, c, netns=ns.path)
    assert_clean(node)


def test_add_after_killed_add_cleans_the_stale_veth(topo: harness.Topology) -> None:
    node, ns = topo.node, topo.container()
    c = conf(node)
    killed = node.plugin("berth-bridge", "ADD", c, container_id="c1", netns=ns.path,
                         env={"BERTH_TEST_KILL_AFTER": "veth"})
    assert killed.rc == -9
    assert "eth0" in ns.links()
    add(node, c, ns)  # the retry in the same sandbox replaces the half-made pair
    assert len(veths(node)) == 1
    delete(node, c, netns=ns.path)
    assert_clean(node)


def _l2(name: str = "l2net") -> dict[str, Any]:
    return {"cniVersion": "1.1.0", "name": name, "type": "berth-bridge", "bridge": "bt2", "ipam": {}}


def test_gc_removes_attachments_not_listed(topo: harness.Topology) -> None:
    node = topo.node
    a, b = topo.container("a"), topo.container("b")
    c = _l2()
    add(node, c, a, "keep")
    add(node, c, b, "drop")
    gc = dict(c, **{"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]})
    node.plugin("berth-bridge", "GC", gc).ok()
    assert len(veths(node)) == 1 and b.links() == ["lo"] and "eth0" in a.links()
    assert [p.name for p in (node.state_dir / "l2net").glob("*.json")] == ["keep:eth0.json"]
    node.plugin("berth-bridge", "GC", dict(c, **{"cni.dev/valid-attachments": []})).ok()
    assert_clean(node, "l2net")
    bad = node.plugin("berth-bridge", "GC", c)
    assert bad.json["code"] == 7


@pytest.mark.skipif(IPAM == "host-local", reason="the reference host-local 1.1.1 has no GC")
def test_gc_with_empty_valid_list_releases_leases(topo: harness.Topology) -> None:
    node, ns = topo.node, topo.container()
    c = conf(node, version="1.1.0")
    add(node, c, ns)
    node.plugin("berth-bridge", "GC", dict(c, **{"cni.dev/valid-attachments": []})).ok()
    assert_clean(node)


def test_gc_spares_a_recent_unfinished_add(topo: harness.Topology) -> None:
    node, ns = topo.node, topo.container()
    c = _l2()
    res = node.plugin("berth-bridge", "ADD", c, container_id="c1", netns=ns.path,
                      env={"BERTH_TEST_KILL_AFTER": "veth"})
    assert res.rc == -9
    gc = dict(c, **{"cni.dev/valid-attachments": []})
    node.plugin("berth-bridge", "GC", gc).ok()
    path = node.state_dir / "l2net" / "c1:eth0.json"
    assert path.exists() and len(veths(node)) == 1  # might be an ADD in flight
    data = json.loads(path.read_text())
    data["created"] -= 3600
    path.write_text(json.dumps(data))
    node.plugin("berth-bridge", "GC", gc).ok()
    assert_clean(node, "l2net")


def test_status(topo: harness.Topology) -> None:
    node = topo.node
    assert node.plugin("berth-bridge", "STATUS", _l2()).rc == 0
    node.ip("link", "add", "bt2", "type", "veth", "peer", "name", "bt2p")
    res = node.plugin("berth-bridge", "STATUS", _l2())
    assert res.json["code"] == 50 and "not a bridge" in res.json["msg"]


def test_32_concurrent_adds_then_dels(topo: harness.Topology) -> None:
    node = topo.node
    c = conf(node, subnets=("10.90.0.0/24",))
    nss = [topo.container(str(i)) for i in range(32)]
    results: dict[int, harness.PluginResult] = {}

    def run(i: int, verb: str) -> None:
        results[i] = node.plugin("berth-bridge", verb, c, container_id=f"c{i}",
                                 netns=nss[i].path if verb == "ADD" else "", timeout=120)

    for verb in ("ADD", "DEL"):
        results.clear()
        threads = [threading.Thread(target=run, args=(i, verb)) for i in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        bad = {i: f"rc={r.rc} {r.stdout}{r.stderr}" for i, r in results.items() if r.rc != 0}
        assert not bad, json.dumps(bad)[:2000]
        if verb == "ADD":
            addrs = {ipv4(r.json) for r in results.values()}
            assert len(addrs) == 32
            assert len(veths(node)) == 32
    assert_clean(node)


def test_del_with_corrupt_journal_still_cleans(topo: harness.Topology) -> None:
    node, ns = topo.node, topo.container()
    c = conf(node)
    add(node, c, ns)
    journal = node.state_dir / "testnet" / "c1:eth0.json"
    journal.write_text("{not json")
    delete(node, c, netns=ns.path)
    assert veths(node) == [] and leases(node) == []
    assert not journal.exists()  # an unreadable journal does not outlive the DEL
