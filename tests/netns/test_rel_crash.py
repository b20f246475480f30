"""Reliability: SIGKILL the real plugins after every step of ADD.

After each kill the runtime's DEL (portmap, then bridge) and a GC with an empty
valid list must leave nothing: no veth, lease, chain, map element, journal,
port-ownership file or [::1] proxy process; and a fresh ADD of the same
container must work.
Kill points: cni/bridge.py STEPS and portmap/portmap.py STEPS.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from portmap import layout
from tests import harness
from tests.netns import portmap_helpers

NET = "relnet"
BRIDGE_STEPS = ("journal", "ipam", "bridge", "veth", "addresses", "routes", "gateway", "sysctls", "masq")
PORTMAP_STEPS = ("portmap-journal", "portmap-nft", "portmap-proxy")
MAPPINGS = [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 18053, "containerPort": 53, "protocol": "udp", "hostIP": "198.51.100.1"}]
# the static skeleton (whatever layout.py declares) may stay; per-attachment
# chains and verdict-map elements must not
STATIC_CHAINS = {cmd["add"]["chain"]["name"] for cmd in layout.base_layout() if "chain" in cmd.get("add", {})}


def bridge_conf(node: harness.Node, name: str = NET, subnets: tuple[str, ...] = ("10.77.0.0/24", "fd00:77::/64"),
                bridge: str = "brel0", **extra: Any) -> dict[str, Any]:
    routes = [{"dst": "0.0.0.0/0"}] + ([{"dst": "::/0"}] if any(":" in s for s in subnets) else [])
    conf: dict[str, Any] = {
        "cniVersion": "1.1.0", "name": name, "type": "berth-bridge", "bridge": bridge, "isGateway": True,
        "ipMasq": True, "hairpinMode": True,
        "ipam": {"type": "berth-host-local", "dataDir": str(node.data_dir), "routes": routes,
                 "ranges": [[{"subnet": s}] for s in subnets]},
    }
    conf.update(extra)
    return conf


def portmap_conf(name: str, prev: dict[str, Any] | None, mappings: list[dict[str, Any]] = MAPPINGS,
                 **extra: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {"cniVersion": "1.1.0", "name": name, "type": "berth-portmap",
                            "runtimeConfig": {"portMappings": mappings}, **extra}
    if prev is not None:
        conf["prevResult"] = prev
    return conf


def gc_conf(conf: dict[str, Any], valid: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return dict(conf, **{"cni.dev/valid-attachments": valid or []})


# --- what is left on the node ----------------------------------------------------

def leftovers(node: harness.Node, network: str = NET) -> list[str]:
    """Everything per-attachment berth could leave behind; [] when clean."""
    out: list[str] = []
    for link in node.ip_json("-d", "link", "show"):
        if link.get("linkinfo", {}).get("info_kind") == "veth" and link["ifname"] != "o-node":
            out.append(f"veth {link['ifname']}")
    data = node.data_dir / network
    if data.exists():
        out += [f"lease {n}" for n in os.listdir(data) if n != "lock" and not n.startswith("last_reserved_ip")]
    state = node.state_dir
    if state.exists():
        for path in state.rglob("*"):
            if path.suffix == ".json" or ".tmp." in path.name:
                out.append(f"journal {path.relative_to(state)}")
            elif path.parent.name == "ports" and path.name != "lock":
                out.append(f"port file {path.name}")
    out += [f"proxy process {pid}" for pid in proxy_processes(node)]
    table = node.nft_table()
    for item in (table or {}).get("nftables", []):
        chain = item.get("chain")
        if chain and chain["name"] not in STATIC_CHAINS:
            out.append(f"chain {chain['name']}")
        vmap = item.get("map")  # sets (bridges, ...) hold node-level names, not attachments
        if vmap and vmap.get("elem"):
            out.append(f"{vmap['name']} elements {vmap['elem']}")
        if vmap and vmap["name"] in layout.LEGACY_RANGE_MAPS:
            # only older berths made them; a DEL that made them would break the next ADD
            # on kernels that refuse their lookup (Linux 6.12)
            out.append(f"map {vmap['name']} of an older layout")
        addrs = item.get("set")  # except the ipMasq address sets: those hold attachments' addresses
        if addrs and addrs["name"].startswith(layout.IPMASQ_SET_PREFIX) and addrs.get("elem"):
            out.append(f"{addrs['name']} elements {addrs['elem']}")
    return out


def proxy_processes(node: harness.Node) -> list[int]:
    """berth's proxy processes in the node's namespace."""
    return portmap_helpers.proxy_processes(node.path)


def add_pod(node: harness.Node, ns: harness.Netns, cid: str, conf: dict[str, Any],
            env: dict[str, str] | None = None, mappings: list[dict[str, Any]] = MAPPINGS,
            ) -> tuple[harness.PluginResult, harness.PluginResult | None]:
    br = node.plugin("berth-bridge", "ADD", conf, container_id=cid, netns=ns.path, env=env)
    if br.rc != 0:
        return br, None
    pm = node.plugin("berth-portmap", "ADD", portmap_conf(conf["name"], br.json, mappings), container_id=cid,
                     netns=ns.path, env=env)
    return br, pm


def del_pod(node: harness.Node, ns_path: str, cid: str, conf: dict[str, Any]) -> None:
    """The runtime's DEL of the conflist: portmap first, then bridge (no prevResult)."""
    node.plugin("berth-portmap", "DEL", portmap_conf(conf["name"], None), container_id=cid, netns=ns_path).ok()
    node.plugin("berth-bridge", "DEL", conf, container_id=cid, netns=ns_path).ok()


def gc_all(node: harness.Node, conf: dict[str, Any]) -> None:
    node.plugin("berth-portmap", "GC", gc_conf(portmap_conf(conf["name"], None))).ok()
    node.plugin("berth-bridge", "GC", gc_conf(conf)).ok()


def age_journals(node: harness.Node, seconds: float = 3600) -> None:
    """Make every journal look `seconds` old: bridge GC spares an unfinished ADD
    for a grace period (it may still be running), a crashed one is old news."""
    for path in node.state_dir.rglob("*.json"):
        data = json.loads(path.read_text())
        data["created"] = data.get("created", 0) - seconds
        path.write_text(json.dumps(data))


def publish_works(topo: harness.Topology, ns: harness.Netns) -> None:
    with ns.server(80, "tcp", "4", banner="crash"):
        answer = harness.wait_for(lambda: topo.outside.connect(topo.NODE_V4, 18080, timeout=1) is not None, 5)
        assert answer, "published port does not answer after the fresh ADD"


# --- tests -------------------------------------------------------------------------

@pytest.mark.parametrize("step", BRIDGE_STEPS + PORTMAP_STEPS)
def test_kill_after_step_then_del_gc_leave_nothing(topo: harness.Topology, step: str) -> None:
    node, ns = topo.node, topo.container()
    conf = bridge_conf(node)
    env = {"BERTH_TEST_KILL_AFTER": step}
    br, pm = add_pod(node, ns, "c1", conf, env)
    killed = pm if step in PORTMAP_STEPS else br
    assert killed is not None and killed.rc == -9, f"{step}: not killed: {killed}"
    assert "Traceback" not in killed.stderr

    del_pod(node, ns.path, "c1", conf)
    gc_all(node, conf)
    assert leftovers(node) == [], f"after kill at {step}"
    assert ns.links() == ["lo"], f"container interface left after kill at {step}"

    br, pm = add_pod(node, ns, "c1", conf)  # the same container again
    br.ok()
    assert pm is not None
    pm.ok()
    if step in ("masq", "portmap-nft"):
        publish_works(topo, ns)
    del_pod(node, ns.path, "c1", conf)
    assert leftovers(node) == []


def test_gc_without_a_list_removes_every_attachment(topo: harness.Topology) -> None:
    """cnitool gc sends GC with no cni.dev/valid-attachments at all: nothing is
    valid, so every plugin removes every attachment of the network."""
    node = topo.node
    conf = bridge_conf(node)
    for cid, mappings in (("c1", MAPPINGS), ("c2", [])):
        br, pm = add_pod(node, topo.container(), cid, conf, mappings=mappings)
        br.ok()
        assert pm is not None
        pm.ok()
    assert leftovers(node)
    age_journals(node)
    for plugin, c in (("berth-portmap", portmap_conf(conf["name"], None)), ("berth-bridge", conf)):
        node.plugin(plugin, "GC", c).ok()
    node.plugin("berth-host-local", "GC", conf).ok()
    assert leftovers(node) == []


@pytest.mark.parametrize("step", ("veth", "masq", "portmap-nft"))
def test_kill_then_gc_alone_and_empty_netns_del(topo: harness.Topology, step: str) -> None:
    """The runtime never DELs (it crashed too): GC alone frees everything; then a
    late DEL with an empty netns (containerd's second DEL) is harmless."""
    node, ns = topo.node, topo.container()
    conf = bridge_conf(node)
    br, pm = add_pod(node, ns, "c1", conf, {"BERTH_TEST_KILL_AFTER": step})
    assert (pm or br).rc == -9
    gc_all(node, conf)  # within the grace period the unfinished ADD is spared...
    if step != "portmap-nft":
        assert any(item.startswith("journal") for item in leftovers(node))
    age_journals(node)  # ... later it is not
    gc_all(node, conf)
    assert leftovers(node) == []
    del_pod(node, "", "c1", conf)
    assert leftovers(node) == []


def test_del_without_journal_cleans_derived_names(topo: harness.Topology, tmp_path: Path) -> None:
    """Extra fix 1: the runtime's DEL arrives with another BERTH_STATE_DIR (the
    journal is not found): the masquerade chain, its masq-v4/v6 elements, the
    portmap chain and its hostports elements and the port files still go."""
    node, ns = topo.node, topo.container()
    conf = bridge_conf(node)
    _br, pm = add_pod(node, ns, "c1", conf)
    assert pm is not None
    pm.ok()
    table = json.dumps(node.nft_table())
    assert "masq-v4" in table and "CNI-DN-" in table
    elsewhere = {"BERTH_STATE_DIR": str(tmp_path / "other-state")}
    node.plugin("berth-portmap", "DEL", portmap_conf(NET, None), container_id="c1", netns=ns.path,
                env=elsewhere).ok()
    node.plugin("berth-bridge", "DEL", conf, container_id="c1", netns=ns.path, env=elsewhere).ok()
    # only the (now stale) journal and the port files in the real state dir remain...
    left = leftovers(node)
    assert all(item.startswith(("journal", "port file")) for item in left), left
    assert not [p for p in (tmp_path / "other-state").rglob("*") if p.is_file() and not p.name.endswith("lock")]
    # ... and GC with the runtime's (empty) list removes them
    gc_all(node, conf)
    assert leftovers(node) == []


def test_del_without_journal_keeps_other_attachments(topo: harness.Topology, tmp_path: Path) -> None:
    """The derived cleanup removes exactly this attachment's elements."""
    node = topo.node
    a, b = topo.container("a"), topo.container("b")
    conf = bridge_conf(node)
    add_pod(node, a, "ca", conf)[1].ok()  # type: ignore[union-attr]
    other = [{"hostPort": 18081, "containerPort": 80}]
    bres = node.plugin("berth-bridge", "ADD", conf, container_id="cb", netns=b.path).ok()
    node.plugin("berth-portmap", "ADD", portmap_conf(NET, bres, other), container_id="cb", netns=b.path).ok()
    before = node.nft_text()
    elsewhere = {"BERTH_STATE_DIR": str(tmp_path / "other-state")}
    node.plugin("berth-portmap", "DEL", portmap_conf(NET, None), container_id="ca", netns=a.path,
                env=elsewhere).ok()
    node.plugin("berth-bridge", "DEL", conf, container_id="ca", netns=a.path, env=elsewhere).ok()
    after = node.nft_text()
    assert "18081" in after and "18080" not in after and after != before
    with b.server(80, "tcp", "4", banner="b"):
        assert harness.wait_for(lambda: topo.outside.connect(topo.NODE_V4, 18081, timeout=1) is not None, 5)
    gc_all(node, gc_conf(conf, [{"containerID": "cb", "ifname": "eth0"}]))
    for cid, path in (("ca", a.path), ("cb", b.path)):
        del_pod(node, path, cid, conf)
    gc_all(node, conf)
    assert leftovers(node) == []


def test_portmap_journal_records_mark_settings(topo: harness.Topology) -> None:
    """Extra fix 2: markMasqBit, masqAll and externalSetMarkChain are journaled."""
    node, ns = topo.node, topo.container()
    conf = bridge_conf(node, ipMasq=False)
    br = node.plugin("berth-bridge", "ADD", conf, container_id="c1", netns=ns.path).ok()
    node.plugin("berth-portmap", "ADD", portmap_conf(NET, br, markMasqBit=7, masqAll=True),
                container_id="c1", netns=ns.path).ok()
    record = json.loads((node.state_dir / NET / "c1:eth0.json").read_text())["portmap"]
    assert (record["markMasqBit"], record["masqAll"], record["externalSetMarkChain"]) == (7, True, None)
    del_pod(node, ns.path, "c1", conf)
    assert leftovers(node) == []



def test_gc_grace_also_keeps_the_lease(topo: harness.Topology) -> None:
    """An ADD in flight (journal "adding", younger than the bridge's GC grace) is
    spared by GC, and so must its lease be: otherwise the next ADD gets the same
    address while the first ADD goes on using it."""
    node, ns, other = topo.node, topo.container(), topo.container("o")
    conf = bridge_conf(node, subnets=("10.74.0.0/24",))
    killed = node.plugin("berth-bridge", "ADD", conf, container_id="c1", netns=ns.path,
                         env={"BERTH_TEST_KILL_AFTER": "addresses"})
    assert killed.rc == -9
    first = ns.addresses("eth0")
    node.plugin("berth-bridge", "GC", gc_conf(conf)).ok()
    assert (node.data_dir / NET / first[0].split("/")[0]).exists(), "GC freed the lease of a spared ADD"
    res = node.plugin("berth-bridge", "ADD", conf, container_id="c2", netns=other.path).ok()
    assert res["ips"][0]["address"] != first[0]
    age_journals(node)
    node.plugin("berth-bridge", "GC", gc_conf(conf, [{"containerID": "c2", "ifname": "eth0"}])).ok()
    assert not (node.data_dir / NET / first[0].split("/")[0]).exists()
    node.plugin("berth-bridge", "DEL", conf, container_id="c2", netns=other.path).ok()
    assert leftovers(node) == []
