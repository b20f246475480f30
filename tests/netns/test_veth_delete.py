"""netlink.delete_container_link: a bridge DEL returns once the kernel has announced
the veth's removal, before its RCU tail ends, with nothing of it left to see."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests import harness

pytestmark = pytest.mark.netns

REPO = str(Path(__file__).resolve().parents[2])
# Runs in the node netns: delete, then look at once, while the kernel may still be freeing.
SNIPPET = """
import json, subprocess, sys
from cni import netlink
cont, name, bridge, host = sys.argv[1:5]
deleted = netlink.delete_container_link(cont, name)
with netlink.open_node() as node, netlink.open_netns(cont) as inside:  # at once: ~0.1 ms
    at_return = {"host": bool(host) and netlink.link_by_name(node, host) is not None,
                 "container": netlink.link_by_name(inside, name) is not None}
def links(*ns):
    out = subprocess.run(["ip", "-j", *ns, "link", "show"], capture_output=True, text=True, check=True).stdout
    return sorted(link["ifname"] for link in json.loads(out))
ports = []
if bridge:
    out = subprocess.run(["ip", "-j", "link", "show", "master", bridge], capture_output=True, text=True).stdout
    ports = [link["ifname"] for link in json.loads(out or "[]")]
print(json.dumps({"deleted": deleted, "at_return": at_return, "node": links(),
                  "container": links("-n", cont.rsplit("/", 1)[1]), "ports": ports}))
"""


def delete(node: harness.Node, cont: harness.Netns, name: str, bridge: str = "", host: str = "") -> dict:
    argv = [sys.executable, "-c", SNIPPET, cont.path, name, bridge, host]
    out = node.exec(argv, env={"PYTHONPATH": REPO}).stdout
    return json.loads(out)


def test_veth_on_a_bridge_is_gone_from_both_ends_when_it_returns(topo: harness.Topology) -> None:
    node, cont = topo.node, topo.container()
    node.ip("link", "add", "vbr0", "type", "bridge")
    node.ip("link", "set", "vbr0", "up")
    for i in range(3):  # a few rounds: the announcement and the request race every time
        node.ip("link", "add", f"vh{i}", "type", "veth", "peer", "name", "eth0", "netns", cont.name)
        node.ip("link", "set", f"vh{i}", "master", "vbr0", "up")
        cont.ip("addr", "add", "10.77.0.2/24", "dev", "eth0")
        cont.ip("link", "set", "eth0", "up")
        seen = delete(node, cont, "eth0", "vbr0", f"vh{i}")
        assert seen["deleted"] is True and seen["at_return"] == {"host": False, "container": False}
        assert f"vh{i}" not in seen["node"] and "eth0" not in seen["container"] and seen["ports"] == []


def test_peer_elsewhere_and_other_kinds_still_complete(topo: harness.Topology) -> None:
    node, cont, third = topo.node, topo.container(), topo.container("third")
    # the peer lives in a third netns: no announcement in the node's, the request's answer ends it
    cont.ip("link", "add", "eth0", "type", "veth", "peer", "name", "far", "netns", third.name)
    seen = delete(node, cont, "eth0")
    assert seen["deleted"] is True and "eth0" not in seen["container"]
    assert "far" not in third.links()
    cont.ip("link", "add", "dum0", "type", "bridge")  # not a veth: a plain delete
    assert delete(node, cont, "dum0")["deleted"] is True and "dum0" not in cont.links()
    assert delete(node, cont, "eth0")["deleted"] is False
