"""The same conflist through berth-bridge and the reference /usr/lib/cni/bridge, in twin nodes.

What a user sees must match: addresses from the same ranges, routes, the shape
of the result's interfaces, and a container that reaches its gateway.
Run as a script (`python -m tests.parity.test_bridge_parity`) it prints ADD/DEL
p50 times of bridge + IPAM for both (a measurement, not a test).
"""

from __future__ import annotations

import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import harness
from tests.netns.test_bridge_common import IPAM, assert_clean

REF_BRIDGE = f"{harness.REFERENCE_DIR}/bridge"


def _conf(node: harness.Node, berth: bool, version: str) -> dict[str, Any]:
    return {
        "cniVersion": version, "name": "paritynet", "type": "berth-bridge" if berth else "bridge",
        "bridge": "cni-par0", "isGateway": True, "isDefaultGateway": True, "ipMasq": False, "hairpinMode": True,
        "ipam": {"type": IPAM if berth else "host-local", "dataDir": str(node.data_dir),
                 "ranges": [[{"subnet": "10.99.0.0/24"}], [{"subnet": "fd00:99::/64"}]],
                 "routes": [{"dst": "192.0.2.0/24"}]},
    }


def _run(node: harness.Node, berth: bool, verb: str, c: dict[str, Any], cid: str, netns: str) -> harness.PluginResult:
    return node.plugin("berth-bridge", verb, c, container_id=cid, netns=netns,
                       plugin_path=None if berth else REF_BRIDGE)


@pytest.fixture
def twin(tmp_path: Path, bin_dir: Path) -> Iterator[harness.Topology]:
    topology = harness.Topology(tmp_path / "ref", bin_dir)
    try:
        topology.build()
        yield topology
    finally:
        topology.destroy()


def _kernel_view(ns: harness.Netns) -> dict[str, Any]:
    routes = sorted((r["dst"], r.get("gateway", "")) for fam in ("-4", "-6")
                    for r in ns.ip_json(fam, "route", "show", "dev", "eth0") if not r["dst"].startswith("fe80"))
    addrs = sorted(a for a in ns.addresses("eth0") if not a.startswith("fe80"))
    return {"routes": routes, "addrs": addrs, "links": sorted(ns.links())}


def _shape(result: dict[str, Any], netns: str) -> dict[str, Any]:
    ifaces = result["interfaces"]
    return {
        "count": len(ifaces),
        "names": [i["name"] if not re.fullmatch(r"veth[0-9a-f]{8}", i["name"]) else "veth<8hex>" for i in ifaces],
        "keys": [sorted(i) for i in ifaces],
        "sandbox": [i.get("sandbox") == netns for i in ifaces],
        "ips": sorted((ip["address"], ip.get("gateway"), ip.get("interface"), ip.get("version")) for ip in
                      result["ips"]),
        "routes": sorted((r["dst"], r.get("gw")) for r in result["routes"]),
    }


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0"])
def test_same_user_view(topo: harness.Topology, twin: harness.Topology, version: str) -> None:
    views = {}
    for berth, t in ((True, topo), (False, twin)):
        node = t.node
        c = _conf(node, berth, version)
        first, second = t.container("a"), t.container("b")
        r1 = _run(node, berth, "ADD", c, "p1", first.path).ok()
        r2 = _run(node, berth, "ADD", c, "p2", second.path).ok()
        with node.server(8090, banner="gw"):
            reach = first.connect("10.99.0.1", 8090)
        bridge = node.ip_json("-d", "link", "show", "cni-par0")[0]
        port = node.ip_json("-d", "link", "show", r1["interfaces"][1]["name"])[0]
        views[berth] = {
            "r1": _shape(r1, first.path), "r2": _shape(r2, second.path), "kernel": _kernel_view(first),
            "reach": reach.split()[0] if reach else None,
            "bridge_addrs": sorted(a for a in node.addresses("cni-par0") if not a.startswith("fe80")),
            "bridge_up": "UP" in bridge["flags"], "hairpin": port["linkinfo"]["info_slave_data"]["hairpin"],
            "forward": (node.sysctl("net.ipv4.ip_forward"), node.sysctl("net.ipv6.conf.all.forwarding")),
        }
        if berth:  # the reference CHECK fails its own gateway-less IPAM route (installed via the gateway)
            check = _run(node, berth, "CHECK", dict(c, prevResult=r1), "p1", first.path)
            assert check.rc == 0, check.stdout
        for cid, ns in (("p1", first), ("p2", second)):
            _run(node, berth, "DEL", c, cid, ns.path).ok()
        assert_clean(node, "paritynet")
    assert views[True] == views[False]
    assert views[True]["reach"] == "gw"


def test_berth_deletes_what_reference_added(topo: harness.Topology) -> None:
    """Switching a node from the reference to berth: berth's DEL cleans the reference's ADD."""
    node, ns = topo.node, topo.container()
    ref = _conf(node, False, "1.0.0")
    _run(node, False, "ADD", ref, "p1", ns.path).ok()
    berth = dict(ref, type="berth-bridge")
    berth["ipam"] = dict(ref["ipam"], type="host-local")
    _run(node, True, "DEL", berth, "p1", "").ok()  # empty netns, no journal: the host-local lease still goes
    _run(node, True, "DEL", berth, "p1", ns.path).ok()
    assert_clean(node, "paritynet")


def measure(rounds: int = 20) -> None:
    """p50 of ADD and DEL (bridge + IPAM) for berth and the reference, one run.

    The two are interleaved call by call in twin nodes, so background load on a
    shared machine hits both alike.
    """
    bin_root = Path(tempfile.mkdtemp(prefix="berth-bin"))
    bin_dir = harness.plugin_dir(bin_root)
    topos = {b: harness.Topology(Path(tempfile.mkdtemp(prefix="berth-measure")), bin_dir).build()
             for b in (True, False)}
    try:
        confs = {b: _conf(t.node, b, "1.0.0") for b, t in topos.items()}
        nss = {b: [t.container(str(i)) for i in range(rounds)] for b, t in topos.items()}
        times: dict[tuple[bool, str], list[float]] = {(b, v): [] for b in topos for v in ("ADD", "DEL")}
        for verb in ("ADD", "DEL"):
            for i in range(rounds):
                for berth, t in topos.items():
                    start = time.perf_counter()
                    _run(t.node, berth, verb, confs[berth], f"m{i}", nss[berth][i].path).ok()
                    times[(berth, verb)].append(time.perf_counter() - start)
        for berth in topos:
            label = f"berth-bridge+{IPAM}" if berth else "reference bridge+host-local"
            add_ms, del_ms = (statistics.median(times[(berth, v)]) * 1000 for v in ("ADD", "DEL"))
            print(f"{label:40s} ADD p50 {add_ms:6.1f} ms   DEL p50 {del_ms:6.1f} ms   (n={rounds})")
    finally:
        for t in topos.values():
            t.destroy()
        shutil.rmtree(bin_root, ignore_errors=True)


if __name__ == "__main__":
    measure(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
