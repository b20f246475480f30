"""portmap re-asserts berth's static nftables layout only when the ruleset changed
behind berth's back (portmap/generation.py): a node where only berth commits keeps
its static rules untouched; any other commit makes the next ADD repair them."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tests import harness
from tests.netns.portmap_helpers import Pod


def static_handles(node: harness.Node) -> list[int]:
    """Handles of the rules of the static chains an ADD would re-assert: new handles = rewritten."""
    out = []
    for chain in ("prerouting", "output", "CNI-HOSTPORT-DNAT", "guard", "CNI-HOSTPORT-SETMARK"):
        listing = json.loads(node.exec(["nft", "-j", "-a", "list", "chain", "inet", "berth", chain]).stdout)
        out += [item["rule"]["handle"] for item in listing["nftables"] if "rule" in item]
    return out


def generation(node: harness.Node) -> int:
    code = "from portmap import nft; print(nft.kernel_generation())"
    root = str(Path(__file__).resolve().parents[2])
    return int(node.exec([sys.executable, "-c", code], cwd=root).stdout)


def test_static_layout_is_rewritten_only_after_a_foreign_change(topo: harness.Topology) -> None:
    node = topo.node
    first = Pod(topo, "g1", [{"hostPort": 8081, "containerPort": 80, "protocol": "tcp"}])
    first.add().ok()
    handles = static_handles(node)
    second = Pod(topo, "g2", [{"hostPort": 8082, "containerPort": 80, "protocol": "tcp"}])
    second.add().ok()
    second.delete()
    assert static_handles(node) == handles, "berth's own ADD/DEL rewrote the static layout"
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    record = (node.state_dir / ".nft-layout").read_text().split()
    assert record[:3] == [boot, str(os.stat(node.path).st_ino), str(generation(node))], record

    # someone else's commit: the guard is flushed; the next ADD puts it back
    node.exec(["nft", "flush", "chain", "inet", "berth", "guard"])
    third = Pod(topo, "g3", [{"hostPort": 8083, "containerPort": 80, "protocol": "tcp"}])
    third.add().ok()
    assert "127.0.0.0/8" in node.exec(["nft", "list", "chain", "inet", "berth", "guard"]).stdout
    assert static_handles(node) != handles
    with third.netns.server(80, banner="g3"):
        assert topo.outside.connect(harness.Topology.NODE_V4, 8083) is not None

    # a record of another boot is never trusted, even at the generation the kernel has now
    node.exec(["nft", "flush", "chain", "inet", "berth", "prerouting"])
    netns = os.stat(node.path).st_ino
    (node.state_dir / ".nft-layout").write_text(f"another-boot {netns} {generation(node)} 13:\n")
    fourth = Pod(topo, "g4", [{"hostPort": 8084, "containerPort": 80, "protocol": "tcp"}])
    fourth.add().ok()
    with fourth.netns.server(80, banner="g4"):
        assert topo.outside.connect(harness.Topology.NODE_V4, 8084) is not None
    for pod in (first, third, fourth):
        pod.delete()
