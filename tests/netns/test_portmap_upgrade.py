"""A node upgraded from a berth before portmap layout 2, where every hostPort
element (single ports too) lived in the interval maps hostports/-v4/-v6.

The old berth's table and attachments are made by hand in the node namespace
(its static layout, its DNAT chains, its elements, journals without "layout"
and port files naming the interval maps); then the current plugins ADD, CHECK,
re-ADD, GC and DEL next to and over them.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from tests import harness
from tests.netns.portmap_helpers import Pod

NODE4, OUTSIDE4 = harness.Topology.NODE_V4, harness.Topology.OUTSIDE_V4

# berth-portmap ADD as berth before layout 2 did it: one transaction (the static
# layout with only the interval maps keyed on l4proto and their vmap rules, the
# DNAT chain, elements in those maps), a journal record without "layout", port
# files naming the interval map.
OLD_ADD = """
import json, os, sys
from cni import files, state
from cni.records import PortMapping
from portmap import layout, nft, ports
root, network, cid, ifname, addresses, raw = json.loads(sys.argv[1])
new = {name for name, _version, _proto in layout.DISPATCH}

def old(cmd):
    obj = cmd.get("add", {})
    if obj.get("map", {}).get("name") in new:
        return False
    rule = obj.get("rule")
    return not (rule and any(e.get("vmap", {}).get("data") in {"@" + n for n in new} for e in rule["expr"]))

mappings = [PortMapping.from_json(m) for m in raw]
chain = layout.dnat_chain_name(network, cid, ifname)
note = layout.comment(network, cid, ifname)
legacy = [c for c in layout.portmap_del(chain, {n: [] for n in layout.LEGACY_RANGE_MAPS}) if "map" in c.get("add", {})]
cmds = [layout.add_table()] + legacy + [c for c in layout.base_layout(legacy_maps=layout.LEGACY_RANGE_MAPS) if old(c)]
cmds += layout.mark_layout() + [layout.add_chain(chain), layout.flush_chain(chain)]
cmds += layout.dnat_rules(chain, mappings, addresses, note=note)
for name, elems in layout.elements_by_map(chain, mappings, 0).items():
    cmds.append(layout.add_elements(name, elems))
try:
    nft.apply(cmds)
except Exception as exc:  # the kernel's answer, for the test to tell a kernel that refuses it
    sys.exit(f"old layout refused: {exc} {getattr(exc, 'details', '')}")
me = ports.Owner(network, cid, ifname)
with ports.locked(root):
    journal = state.Journal(root, network, cid, ifname)
    journal.put("portmap", {
        "chain": chain, "addresses": addresses, "bridge": "bt0", "state": "done",
        "mappings": [m.to_json() for m in mappings], "snat": True, "markMasqBit": 13, "masqAll": False,
        "externalSetMarkChain": None, "boot": ports.boot_id()})
    os.rename(journal.path, os.path.join(journal.directory, state.legacy_journal_name(cid, ifname)))  # its name
    for m in mappings:
        claim = ports.Claim(me, chain, layout.map_name(m, 0), layout.map_key(m, 0))
        for path in ports.port_files(root, m):
            files.atomic_write(path, json.dumps(claim.to_json(), sort_keys=True).encode())
"""


def old_add(topo: harness.Topology, pod: Pod) -> None:
    """The bridge ADD (unchanged across the upgrade), then the old portmap ADD."""
    pod.result = pod._bridge("ADD").ok()
    node = topo.node
    arg = [str(node.state_dir), pod.name, pod.cid, "eth0", [pod.address(4)],
           [_mapping(m) for m in pod.mappings]]
    try:
        node.exec([str(harness.ROOT / ".venv" / "bin" / "python"), "-c", OLD_ADD, json.dumps(arg)],
                  cwd=str(harness.ROOT), env=dict(os.environ, PYTHONPATH=str(harness.ROOT)))
    except AssertionError as exc:
        if "Operation not supported" in str(exc):
            pytest.skip("this kernel refuses the older layout's interval lookups keyed on l4proto . dport "
                        "(Linux 6.12): no berth before layout 2 ever ran on it, so there is nothing to upgrade")
        raise


def _mapping(raw: dict[str, Any]) -> dict[str, Any]:
    from portmap import conf as pmconf

    return pmconf.parse_mapping(raw).to_json()


def maps(node: harness.Node) -> dict[str, tuple[list[str], list[Any]]]:
    """map name -> (flags, elements) of berth's table, as `nft -j list` shows them."""
    table = node.nft_table()
    assert table is not None
    out = {}
    for obj in table["nftables"]:
        if "map" in obj:
            m = obj["map"]
            out[m["name"]] = (list(m.get("flags") or []), list(m.get("elem") or []))
    return out


def targets(node: harness.Node) -> dict[str, list[Any]]:
    """map name -> [key, chain] of every element of the hostport maps."""
    return {name: [[e[0], e[1]["jump"]["target"]] for e in elems]
            for name, (_flags, elems) in maps(node).items() if name.startswith("hostport")}


def port_files(node: harness.Node) -> list[str]:
    return sorted(p.name for p in (node.state_dir / "ports").glob("*_*_*") if ".tmp." not in p.name)


def test_old_attachments_survive_the_upgrade_and_go_cleanly(topo: harness.Topology) -> None:
    node = topo.node
    old1 = Pod(topo, "old1", [{"hostPort": 8080, "containerPort": 80},
                              {"hostPort": 8053, "containerPort": 53, "protocol": "udp", "hostIP": NODE4}])
    old2 = Pod(topo, "old2", [{"hostPort": "30000-30001", "containerPort": "30000-30001"}])
    old3 = Pod(topo, "old3", [{"hostPort": 8082, "containerPort": 80}])
    for pod in (old1, old2, old3):
        old_add(topo, pod)
    before = maps(node)
    assert "hostport" not in before and before["hostports"][0] == ["interval"]
    assert [e[0]["concat"] == ["tcp", 8080] for e in before["hostports"][1]].count(True) == 1
    with old1.netns.server(80, "tcp", banner="o1"), old1.netns.server(53, "udp", banner="d1"):
        assert topo.outside.connect(NODE4, 8080) == f"o1 {OUTSIDE4}"
        assert topo.outside.connect(NODE4, 8053, "udp") == f"d1 {OUTSIDE4}"

    # the new binaries: an ADD next to the old attachments creates the hash maps
    new = Pod(topo, "new", [{"hostPort": 8081, "containerPort": 80}])
    new.add().ok()
    after = maps(node)
    assert after["hostport"][0] == [] and after["hostports"][0] == ["interval"]
    elems = targets(node)
    new_chain = json.loads(harness.journal_path(node.state_dir, "pmnet", "new").read_text())["portmap"]["chain"]
    assert elems["hostport"] == [[{"concat": ["tcp", 8081]}, new_chain]]
    assert any(e[0] == {"concat": ["tcp", 8080]} for e in elems["hostports"])  # old elements stay put
    with old1.netns.server(80, "tcp", banner="o1"), new.netns.server(80, "tcp", banner="n"), \
            old2.netns.server(30001, "tcp", banner="o2"):
        assert topo.outside.connect(NODE4, 8080) == f"o1 {OUTSIDE4}"
        assert topo.outside.connect(NODE4, 8081) == f"n {OUTSIDE4}"
        assert topo.outside.connect(NODE4, 30001) == f"o2 {OUTSIDE4}"

    # CHECK and `berth list` read the old journals where the old berth put the elements
    for pod in (old1, old2, old3):
        pod.portmap("CHECK").ok()
    rows = json.loads(node.berth("list", "--json").stdout)
    assert {r["containerID"]: r["rules"] for r in rows} == {"old1": "ok", "old2": "ok", "old3": "ok", "new": "ok"}

    # a port of an old attachment is still refused to others
    clash = Pod(topo, "clash", [{"hostPort": 8080, "containerPort": 80}])
    res = clash.add()
    assert res.rc != 0 and res.json["code"] == 102 and "old1" in res.json["msg"]

    # DEL of an old attachment from its journal (no prevResult, empty netns): nothing of it is left
    old1.portmap("DEL", netns="").ok()
    old1._bridge("DEL").ok()
    text = node.nft_text()
    assert "8080" not in text and "8053" not in text
    assert not any(name.endswith(("_8080", "_8053")) for name in port_files(node))
    assert not harness.journal_path(node.state_dir, "pmnet", "old1").exists()

    # a re-ADD of an old attachment by the new binary moves its element to the hash map
    old3.portmap("ADD").ok()
    elems = targets(node)
    old3_chain = json.loads(harness.journal_path(node.state_dir, "pmnet", "old3").read_text())["portmap"]["chain"]
    assert [{"concat": ["tcp", 8082]}, old3_chain] in elems["hostport"]
    assert not any(e[0] == {"concat": ["tcp", 8082]} for e in elems["hostports"])
    with old3.netns.server(80, "tcp", banner="o3"):
        assert topo.outside.connect(NODE4, 8082) == f"o3 {OUTSIDE4}"

    # GC of an old attachment (a range: interval map either way)
    valid = [{"containerID": c, "ifname": "eth0"} for c in ("new", "old3")]
    new.portmap("GC", cniVersion="1.1.0", **{"cni.dev/valid-attachments": valid}).ok()
    text = node.nft_text()
    assert "30000" not in text and not any("_3000" in n for n in port_files(node))

    for pod in (new, old3):
        pod.delete()
    old2._bridge("DEL").ok()
    text = node.nft_text()
    assert "CNI-DN-" not in text and port_files(node) == []
    assert all(elems == [] for elems in targets(node).values())
