"""Reliability: a storm of concurrent ADD/DEL cycles on one network.

Each round N pods are attached at once (bridge with ipMasq + portmap, each with
its own host port), checked for duplicate addresses while all are alive, then
detached at once; a GC (portmap, bridge) with an empty valid list runs between
rounds. Quick profile (make test): 12 x 2; the slow one (make test-long): 32 x 10.
Prints its timing.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

import pytest

from tests import harness
from tests.netns.test_rel_crash import NET, bridge_conf, gc_all, leftovers, portmap_conf

LONG = os.environ.get("BERTH_LONG") == "1"


def _cycle_add(node: harness.Node, conf: dict[str, Any], ns: harness.Netns, i: int,
               out: dict[int, Any]) -> None:
    cid = f"storm{i}"
    br = node.plugin("berth-bridge", "ADD", conf, container_id=cid, netns=ns.path, timeout=300)
    if br.rc != 0:
        out[i] = f"bridge ADD rc={br.rc} {br.stdout}{br.stderr}"
        return
    maps = [{"hostPort": 20000 + i, "containerPort": 80}]
    pm = node.plugin("berth-portmap", "ADD", portmap_conf(NET, br.json, maps), container_id=cid, netns=ns.path,
                     timeout=300)
    out[i] = br.json if pm.rc == 0 else f"portmap ADD rc={pm.rc} {pm.stdout}{pm.stderr}"


def _cycle_del(node: harness.Node, conf: dict[str, Any], ns: harness.Netns, i: int,
               out: dict[int, Any]) -> None:
    cid = f"storm{i}"
    pm = node.plugin("berth-portmap", "DEL", portmap_conf(NET, None, [{"hostPort": 20000 + i, "containerPort": 80}]),
                     container_id=cid, netns=ns.path, timeout=300)
    br = node.plugin("berth-bridge", "DEL", conf, container_id=cid, netns=ns.path, timeout=300)
    out[i] = None if pm.rc == br.rc == 0 else f"DEL rc={pm.rc}/{br.rc} {pm.stdout}{br.stdout}"


def _all(fn: Any, node: harness.Node, conf: dict[str, Any], nss: list[harness.Netns]) -> dict[int, Any]:
    out: dict[int, Any] = {}
    threads = [threading.Thread(target=fn, args=(node, conf, nss[i], i, out)) for i in range(len(nss))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


@pytest.mark.skipif(LONG, reason="the long run has test_storm_long")
def test_storm_quick(topo: harness.Topology, request: pytest.FixtureRequest) -> None:
    storm(topo, 12, 2, request)


@pytest.mark.slow
def test_storm_long(topo: harness.Topology, request: pytest.FixtureRequest) -> None:
    storm(topo, 32, 10, request)


def report(request: pytest.FixtureRequest, line: str) -> None:
    """A figure for the run's output even under -q and capture."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(line)


def storm(topo: harness.Topology, pods: int, rounds: int, request: pytest.FixtureRequest) -> None:
    node = topo.node
    conf = bridge_conf(node, subnets=("10.78.0.0/24",), bridge="brstorm")
    nss = [topo.container(str(i)) for i in range(pods)]
    started = time.monotonic()
    cycles = 0
    for rnd in range(rounds):
        added = _all(_cycle_add, node, conf, nss)
        errors = {i: v for i, v in added.items() if not isinstance(v, dict)}
        assert not errors, f"round {rnd}: {json.dumps(errors)[:2000]}"
        addrs = [ip["address"] for r in added.values() for ip in r["ips"]]
        assert len(addrs) == len(set(addrs)) == pods, f"round {rnd}: duplicate addresses {sorted(addrs)}"
        macs = [i["mac"] for r in added.values() for i in r["interfaces"] if i.get("sandbox")]
        assert len(set(macs)) == pods
        # the subnet's ipMasq rule exists once, however many ADDs ran at once
        assert node.nft_text().count('comment "ipMasq 10.78.0.0/24"') == 1, f"round {rnd}"
        if rnd % 2:  # a GC that keeps everyone alive must change nothing
            before = node.nft_text()
            valid = [{"containerID": f"storm{i}", "ifname": "eth0"} for i in range(pods)]
            node.plugin("berth-portmap", "GC", portmap_conf(NET, None, **{"cni.dev/valid-attachments": valid})).ok()
            node.plugin("berth-bridge", "GC", dict(conf, **{"cni.dev/valid-attachments": valid})).ok()
            assert node.nft_text() == before
        deleted = _all(_cycle_del, node, conf, nss)
        errors = {i: v for i, v in deleted.items() if v is not None}
        assert not errors, f"round {rnd}: {json.dumps(errors)[:2000]}"
        gc_all(node, conf)
        assert leftovers(node) == [], f"round {rnd}"
        cycles += pods
    elapsed = time.monotonic() - started
    report(request, f"[rel storm] {cycles} ADD/DEL cycles (bridge+portmap, {pods} concurrent x {rounds} rounds) "
          f"in {elapsed:.1f}s ({elapsed / max(cycles, 1) * 1000:.0f} ms per cycle), 0 errors, "
          f"0 duplicate addresses, 0 leftovers")
