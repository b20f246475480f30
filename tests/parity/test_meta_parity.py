"""berth-loopback, -tuning, -firewall and -bandwidth against Debian's loopback, tuning, firewall and bandwidth.

The same configuration, chained after berth-bridge, in twin nodes: the result
each returns, what the container (and the node, for the shapers) sees, and what
DEL leaves. Where berth differs on purpose it is asserted as such: berth's
firewall takes a bridge out of same-bridge isolation when its last attachment
goes (upstream's rules stay forever), and berth's bandwidth DEL also removes the
host veth's qdiscs (upstream's leave them to the veth's removal).
"""

from __future__ import annotations

import copy
import json
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import harness
from tests.netns.test_bridge_common import conf as bridge_conf

REF = harness.REFERENCE_DIR


@pytest.fixture
def twins(tmp_path: Path, bin_dir: Path) -> Iterator[dict[bool, harness.Topology]]:
    """Two nodes: True runs berth's plugin, False the reference."""
    made = {berth: harness.Topology(tmp_path / secrets.token_hex(3), bin_dir) for berth in (True, False)}
    try:
        for topo in made.values():
            topo.build()
        yield made
    finally:
        for topo in made.values():
            topo.destroy()


def run(node: harness.Node, berth: bool, kind: str, verb: str, conf: dict[str, Any], **kw: Any) -> harness.PluginResult:
    return node.plugin(f"berth-{kind}", verb, dict(conf, type=kind if not berth else f"berth-{kind}"),
                       plugin_path=None if berth else f"{REF}/{kind}", **kw)


def add_bridge(node: harness.Node, ns: harness.Netns, cid: str = "c1", **kw: Any) -> dict[str, Any]:
    res: dict[str, Any] = node.plugin("berth-bridge", "ADD", bridge_conf(node, **kw), container_id=cid,
                                      netns=ns.path).ok()
    return res


def normal(value: Any, ns: harness.Netns, node: harness.Node) -> Any:
    """A result with what differs between twin nodes by construction (paths, random names and MACs) masked."""
    text = json.dumps(value).replace(ns.path, "<netns>").replace(node.name, "<node>")
    text = re.sub(r"veth[0-9a-f]{8}", "<veth>", text)
    return json.loads(re.sub(r'"mac": "[0-9a-f:]{17}"', '"mac": "<mac>"', text))


def link(ns: harness.Netns, name: str) -> dict[str, Any]:
    info = ns.ip_json("-d", "link", "show", name)[0]
    return {"mac": info["address"], "mtu": info["mtu"], "up": "UP" in info["flags"],
            "promisc": "PROMISC" in info["flags"], "allmulti": "ALLMULTI" in info["flags"]}


# --- loopback ------------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["0.3.1", "1.0.0"])
def test_loopback_parity(twins: dict[bool, harness.Topology], version: str) -> None:
    seen = {}
    for berth, topo in twins.items():
        node, ns = topo.node, topo.container()
        ns.ip("link", "set", "lo", "down")
        lo = {"cniVersion": version, "name": "cni-loopback"}
        res = run(node, berth, "loopback", "ADD", lo, container_id="c1", netns=ns.path, ifname="lo")
        up = link(ns, "lo")["up"]
        check = run(node, berth, "loopback", "CHECK", lo, container_id="c1", netns=ns.path, ifname="lo").rc
        dele = run(node, berth, "loopback", "DEL", lo, container_id="c1", netns=ns.path, ifname="lo").rc
        gone = run(node, berth, "loopback", "DEL", lo, container_id="c1", netns="/run/netns/bt-gone", ifname="lo").rc
        result = normal(res.json, ns, node)
        # 0.3.x results carry each address's "version" (spec 0.3.1): berth's do, Debian's loopback leaves it out
        versions = [ip.pop("version", None) for ip in result["ips"]]
        seen[berth] = {"result": result, "rc": res.rc, "up": up, "check": check, "del": dele,
                       "after_del": link(ns, "lo")["up"], "del_gone_netns": gone}
        if berth:
            assert versions == (["4", "6"] if version == "0.3.1" else [None, None])
    assert seen[False]["rc"] == 0 and seen[False]["up"]
    assert seen[True] == seen[False]


# --- tuning ---------------------------------------------------------------------------------

def tuning_conf(node: harness.Node, prev: dict[str, Any], **extra: Any) -> dict[str, Any]:
    # dataDir: where the reference keeps its backup (berth's is the journal); never the host's /run/cni
    return {"cniVersion": "1.0.0", "name": "testnet", "dataDir": str(node.state_dir.parent / "tuning"),
            "prevResult": prev, **extra}


def test_tuning_parity(twins: dict[bool, harness.Topology]) -> None:
    seen = {}
    for berth, topo in twins.items():
        node, ns = topo.node, topo.container()
        prev = add_bridge(node, ns)
        before = link(ns, "eth0")
        tun = tuning_conf(node, prev, sysctl={"net.ipv4.conf.IFNAME.arp_filter": "1", "net.core.somaxconn": "512"},
                          mac="c2:b0:57:49:47:f1", mtu=1400, promisc=True, allmulti=True)
        out = run(node, berth, "tuning", "ADD", tun, container_id="c1", netns=ns.path).ok()
        view = {"link": link(ns, "eth0"), "arp_filter": ns.sysctl("net.ipv4.conf.eth0.arp_filter"),
                "somaxconn": ns.sysctl("net.core.somaxconn")}
        plain = tuning_conf(node, prev, sysctl={"net.core.somaxconn": "512"}, mtu=1400, promisc=True)
        check = run(node, berth, "tuning", "CHECK", plain, container_id="c1", netns=ns.path).rc
        ns.ip("link", "set", "eth0", "promisc", "off")
        tampered = run(node, berth, "tuning", "CHECK", plain, container_id="c1", netns=ns.path).rc
        ns.ip("link", "set", "eth0", "promisc", "on")
        run(node, berth, "tuning", "DEL", tun, container_id="c1", netns=ns.path).ok()
        errors = [run(node, berth, "tuning", "ADD", tuning_conf(node, prev, sysctl=s), container_id="c1",
                      netns=ns.path).rc for s in ({"kernel.hostname": "x"}, {"net.core.no_such": "1"})]
        others = [i for i in out["interfaces"] if i["name"] != "eth0"]
        seen[berth] = {"result_mac": [i["mac"] for i in out["interfaces"] if i["name"] == "eth0"],
                       "result_rest": normal(dict(out, interfaces=others), ns, node),
                       "after_add": view, "check": check, "check_tampered": tampered,
                       "after_del": {"restored": link(ns, "eth0") == before,
                                     "arp_filter": ns.sysctl("net.ipv4.conf.eth0.arp_filter"),
                                     "somaxconn": ns.sysctl("net.core.somaxconn")},
                       "errors": errors}
    assert seen[False]["after_add"]["link"]["mtu"] == 1400  # the reference works here
    assert seen[True] == seen[False]
    assert seen[True]["after_del"]["restored"] and seen[True]["check_tampered"] == 1


# --- firewall --------------------------------------------------------------------------------

NETS = {"a": ("neta", "10.91.0.0/24", "bfa0", "same-bridge"), "b": ("netb", "10.92.0.0/24", "bfb0", "same-bridge"),
        "c": ("netc", "10.93.0.0/24", "bfc0", "open")}


def reaches(src: harness.Netns, dst: harness.Netns, ip: str) -> bool:
    with dst.server(8090, banner="fw"):
        return (src.connect(ip, 8090, timeout=1) or "").startswith("fw ")


def per_address_state(node: harness.Node, ip: str) -> list[str]:
    """Rules or elements naming the address, in any table of the node."""
    return [line.strip() for line in node.exec(["nft", "list", "ruleset"]).stdout.splitlines() if ip in line]


def matrix(pods: dict[str, harness.Netns], ips: dict[str, str]) -> dict[str, bool]:
    return {f"{s}->{d}": reaches(pods[s], pods[d], ips[d]) for s in pods for d in pods if s != d}


def test_firewall_parity(twins: dict[bool, harness.Topology]) -> None:
    seen = {}
    for berth, topo in twins.items():
        node = topo.node
        pods = {n: topo.container(n) for n in NETS}
        ips, confs, passthrough, checks = {}, {}, [], []
        for n, (name, subnet, bridge, policy) in NETS.items():
            prev = add_bridge(node, pods[n], cid=f"c{n}", name=name, subnets=(subnet,), bridge=bridge)
            fw = {"cniVersion": "1.0.0", "name": name, "backend": "iptables", "ingressPolicy": policy,
                  "prevResult": prev}
            out = run(node, berth, "firewall", "ADD", fw, container_id=f"c{n}", netns=pods[n].path).ok()
            passthrough.append(out == prev)
            checks.append(run(node, berth, "firewall", "CHECK", fw, container_id=f"c{n}", netns=pods[n].path).rc)
            ips[n], confs[n] = prev["ips"][0]["address"].split("/")[0], fw
        reach = matrix(pods, ips)
        for n in "ab":
            run(node, berth, "firewall", "DEL", confs[n], container_id=f"c{n}", netns=pods[n].path).ok()
        seen[berth] = {"passthrough": passthrough, "checks": checks, "reach": reach,
                       "left_for_deleted": {n: per_address_state(node, ips[n]) for n in "ab"},
                       "kept_for_live": bool(per_address_state(node, ips["c"])),
                       "isolated_after_del": not reaches(pods["a"], pods["b"], ips["b"])}
    ref, ours = seen[False], seen[True]
    assert ref["reach"]["a->b"] is False and ref["reach"]["c->a"] is True  # the reference isolates here
    assert ref["isolated_after_del"] and not ours["isolated_after_del"]  # the one difference, on purpose
    for key in ("passthrough", "checks", "reach", "left_for_deleted", "kept_for_live"):
        assert ours[key] == ref[key], key


# --- bandwidth -------------------------------------------------------------------------------

LIMITS = {"ingressRate": 16_000_000, "ingressBurst": 800_000, "egressRate": 8_000_000, "egressBurst": 400_000}


def tc_view(node: harness.Node, dev: str) -> dict[str, Any]:
    qdiscs = json.loads(node.exec(["tc", "-j", "qdisc", "show", "dev", dev]).stdout or "[]")
    filters = json.loads(node.exec(["tc", "-j", "filter", "show", "dev", dev, "ingress"]).stdout or "[]")
    return {"qdiscs": sorted((q["kind"], q["handle"], json.dumps({k: v for k, v in q.get("options", {}).items()},
                                                                 sort_keys=True))
                             for q in qdiscs if q["kind"] != "noqueue"),
            "redirects": sorted({a["to_dev"] for f in filters for a in f.get("options", {}).get("actions", [])
                                 if a.get("kind") == "mirred"})}


def test_bandwidth_parity(twins: dict[bool, harness.Topology]) -> None:
    seen = {}
    for berth, topo in twins.items():
        node, ns = topo.node, topo.container()
        bridge = bridge_conf(node)
        prev = node.plugin("berth-bridge", "ADD", bridge, container_id="c1", netns=ns.path).ok()
        veth = prev["interfaces"][1]["name"]
        bw = {"cniVersion": "1.0.0", "name": "testnet", "prevResult": prev, **LIMITS}
        out = run(node, berth, "bandwidth", "ADD", bw, container_id="c1", netns=ns.path).ok()
        ifb = out["interfaces"][-1]["name"]
        view = {"veth": tc_view(node, veth), "ifb": tc_view(node, ifb),
                "ifb_link": {k: v for k, v in node.ip_json("-d", "link", "show", ifb)[0].items()
                             if k in ("mtu", "flags", "operstate")}}
        check = run(node, berth, "bandwidth", "CHECK", dict(bw, prevResult=out), container_id="c1", netns=ns.path).rc
        pod2 = topo.container("cap")
        prev2 = node.plugin("berth-bridge", "ADD", bridge, container_id="c2", netns=pod2.path).ok()
        cap = {"cniVersion": "1.0.0", "name": "testnet", "prevResult": prev2, "capabilities": {"bandwidth": True},
               "runtimeConfig": {"bandwidth": {"egressRate": 8_000_000, "egressBurst": 400_000}}}
        capability = run(node, berth, "bandwidth", "ADD", copy.deepcopy(cap), container_id="c2", netns=pod2.path)
        cap_view = tc_view(node, capability.ok()["interfaces"][-1]["name"])
        run(node, berth, "bandwidth", "DEL", cap, container_id="c2", netns=pod2.path).ok()
        node.plugin("berth-bridge", "DEL", bridge, container_id="c2", netns=pod2.path).ok()
        run(node, berth, "bandwidth", "DEL", bw, container_id="c1", netns=ns.path).ok()
        after_bw_del = sorted(node.links())
        node.plugin("berth-bridge", "DEL", bridge, container_id="c1", netns=ns.path).ok()
        seen[berth] = {"result": normal(out, ns, node), "tc": view, "check": check,
                       "capability": cap_view, "ifb_gone": ifb not in after_bw_del,
                       "after_del": sorted(node.links())}
    ref, ours = seen[False], seen[True]
    assert ref["tc"]["veth"]["qdiscs"] and ref["tc"]["ifb"]["qdiscs"]  # the reference shapes here
    assert ours == ref
