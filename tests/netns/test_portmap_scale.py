"""One more ADD and DEL with 0 vs 1,000 attachments (x 2 mappings) present: figures, not asserts.

The 1,000 are made straight through the builders in one transaction (what 1,000
ADDs would leave behind); the timed ADD is the real plugin exec'd in the node.
"""

from __future__ import annotations

import json
import os
import statistics
import time

from tests import harness
from tests.netns.portmap_helpers import Pod

FILL = """
import sys
from cni.records import PortMapping
from portmap import layout, nft
n = int(sys.argv[1])
cmds = layout.base_layout() + layout.mark_layout()
for i in range(n):
    chain = layout.dnat_chain_name("filler", f"c{i}")
    addr = f"10.{100 + i // 60000}.{(i // 250) % 240}.{i % 250 + 1}"
    maps = [PortMapping(20000 + 2 * i, 20000 + 2 * i, 80, "tcp"),
            PortMapping(20001 + 2 * i, 20001 + 2 * i, 53, "udp")]
    cmds += layout.attachment_add(chain, maps, [addr])
nft.apply(cmds)
"""


def _timed_add(topo: harness.Topology, cid: str, port: int) -> tuple[float, Pod]:
    pod = Pod(topo, cid, [{"hostPort": port, "containerPort": 80}, {"hostPort": port + 1, "containerPort": 53,
                                                                     "protocol": "udp"}])
    pod.result = pod._bridge("ADD").ok()
    start = time.monotonic()
    pod.portmap("ADD").ok()
    return (time.monotonic() - start) * 1000, pod


def _timed_del(pod: Pod) -> float:
    start = time.monotonic()
    pod.portmap("DEL").ok()
    return (time.monotonic() - start) * 1000


def test_add_cost_does_not_grow_with_attachments(topo: harness.Topology) -> None:
    empty, empty_del = [], []
    for i in range(3):
        ms, pod = _timed_add(topo, f"e{i}", 8000 + 2 * i)
        empty.append(ms)
        empty_del.append(_timed_del(pod))
    python = str(harness.ROOT / ".venv" / "bin" / "python")
    start = time.monotonic()
    topo.node.exec([python, "-c", FILL, "1000"], cwd=str(harness.ROOT),
                   env=dict(os.environ, PYTHONPATH=str(harness.ROOT)))
    fill_s = time.monotonic() - start
    table = topo.node.nft_table()
    assert table is not None
    chains = [o for o in table["nftables"] if "chain" in o and o["chain"]["name"].startswith("CNI-DN-")]
    assert len(chains) == 1000
    full, pods = [], []
    for i in range(3):
        ms, pod = _timed_add(topo, f"f{i}", 9000 + 2 * i)
        full.append(ms)
        pods.append(pod)
    with pod.netns.server(80, "tcp", banner="last"):
        assert topo.outside.connect(harness.Topology.NODE_V4, 9004) == f"last {harness.Topology.OUTSIDE_V4}"
    full_del = [_timed_del(p) for p in pods]
    assert "9004" not in topo.node.nft_text()
    figures = {"add_ms_empty": [round(x, 1) for x in empty], "add_ms_1000": [round(x, 1) for x in full],
               "median_empty": round(statistics.median(empty), 1), "median_1000": round(statistics.median(full), 1),
               "del_ms_empty": [round(x, 1) for x in empty_del], "del_ms_1000": [round(x, 1) for x in full_del],
               "fill_1000_attachments_s": round(fill_s, 2)}
    print("\nPORTMAP-SCALE " + json.dumps(figures))
