"""Helpers shared by the berth-bridge namespace tests (no tests in here)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tests import harness

ROOT = Path(__file__).resolve().parents[2]
# berth-host-local once it exists; the reference host-local (delegation by exec) until then
IPAM = "berth-host-local" if (ROOT / "ipam" / "hostlocal.py").exists() else "host-local"
MASQ_READY = (ROOT / "portmap" / "masq.py").exists()


def conf(node: harness.Node, *, subnets: tuple[str, ...] = ("10.88.0.0/24",), version: str = "1.0.0",
         name: str = "testnet", ipam_type: str | None = None, **extra: Any) -> dict[str, Any]:
    """A bridge config whose IPAM keeps its leases in the node's data dir."""
    c = harness.bridge_conf(name=name, version=version, ipMasq=False, isDefaultGateway=True)
    c["ipam"] = {
        "type": ipam_type or IPAM, "dataDir": str(node.data_dir),
        "ranges": [[{"subnet": s}] for s in subnets],
    }
    c.update(extra)
    return c


def add(node: harness.Node, c: dict[str, Any], ns: harness.Netns, cid: str = "c1", **kw: Any) -> dict[str, Any]:
    res = node.plugin("berth-bridge", "ADD", c, container_id=cid, netns=ns.path, **kw)
    out: dict[str, Any] = res.ok()
    return out


def delete(node: harness.Node, c: dict[str, Any], cid: str = "c1", netns: str = "", **kw: Any) -> None:
    node.plugin("berth-bridge", "DEL", c, container_id=cid, netns=netns, **kw).ok()


def veths(ns: harness.Netns) -> list[str]:
    return [link["ifname"] for link in ns.ip_json("-d", "link", "show")
            if link.get("linkinfo", {}).get("info_kind") == "veth" and link["ifname"] != "o-node"]


def leases(node: harness.Node, network: str = "testnet") -> list[str]:
    d = node.data_dir / network
    if not d.exists():
        return []
    return sorted(n for n in os.listdir(d) if n != "lock" and not n.startswith("last_reserved_ip"))


def journal_files(node: harness.Node, network: str = "testnet") -> list[str]:
    d = node.state_dir / network
    return sorted(n for n in os.listdir(d) if n.endswith(".json")) if d.exists() else []


def journal(node: harness.Node, cid: str = "c1", ifname: str = "eth0", network: str = "testnet") -> Any:
    return json.loads((node.state_dir / network / f"{cid}:{ifname}.json").read_text())


def _static_chains() -> set[str]:
    """Chains of berth's fixed layout (not per attachment), as the layout itself declares them."""
    from portmap import layout

    return {cmd["add"]["chain"]["name"] for cmd in layout.base_layout()
            if isinstance(cmd.get("add"), dict) and "chain" in cmd["add"]}


STATIC_CHAINS = _static_chains()


def masq_leftovers(node: harness.Node) -> list[str]:
    """Per-attachment masquerade chains (CNI-<hash>, before per-subnet maps) and masquerade map elements."""
    table = node.nft_table()
    if not table:
        return []
    out = []
    for item in table["nftables"]:
        chain = item.get("chain")
        if chain and chain["name"].startswith("CNI-") and not chain["name"].startswith("CNI-DN-") \
                and chain["name"] not in STATIC_CHAINS:
            out.append(chain["name"])
        kind = item.get("map") or item.get("set")
        if kind and kind["name"].startswith(("masq", "ipmasq-")) and kind.get("elem"):
            out.append(f"{kind['name']}: {kind['elem']}")
    return out


def assert_clean(node: harness.Node, network: str = "testnet") -> None:
    assert veths(node) == [], "veth left in the node"
    assert leases(node, network) == [], "lease left"
    assert journal_files(node, network) == [], "journal left"
    assert masq_leftovers(node) == [], "masquerade left"


def ipv4(result: dict[str, Any]) -> str:
    return next(ip["address"].split("/")[0] for ip in result["ips"] if ":" not in ip["address"])


def ipv6(result: dict[str, Any]) -> str:
    return next(ip["address"].split("/")[0] for ip in result["ips"] if ":" in ip["address"])
