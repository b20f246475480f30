"""What the running kernel must support, checked on it (the kernel matrix boots
this file on every kernel of tests/vm/matrix.py): the feature probes STATUS
runs, and ADD/DEL churn of every kind of hostPort element.

Kernels before 6.2 may keep a chain counted as referenced for a moment after a
transaction deleted the verdict-map element that jumped to it; a DEL deletes
both in one transaction, so the churn loop proves that never fails or leaks."""

from __future__ import annotations

import os
from typing import Any

from portmap import features
from tests import harness
from tests.netns.portmap_helpers import portmap_conf

# a container address portmap maps to; portmap needs no interface behind it
CONTAINER = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/run/netns/x"}],
             "ips": [{"address": "10.88.0.5/24", "interface": 0, "gateway": "10.88.0.1"},
                     {"address": "fd00:88::5/64", "interface": 0}]}
MAPPINGS: list[dict[str, Any]] = [
    {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
    {"hostPort": 8053, "containerPort": 53, "protocol": "udp", "hostIP": harness.Topology.NODE_V4},
    {"hostPort": "30000-30009", "containerPort": "30000-30009", "protocol": "tcp"},
    {"hostPort": "31000-31003", "containerPort": "41000-41003", "protocol": "sctp"},
    {"hostPort": "32000-32001", "containerPort": "32000-32001", "protocol": "udp", "hostIP": harness.Topology.NODE_V6},
]
LOOPS = int(os.environ.get("BERTH_CHURN_LOOPS", "20"))


def test_status_finds_every_feature_and_leaves_nothing(topo: harness.Topology) -> None:
    node = topo.node
    for plugin, extra in (("berth-portmap", {}), ("berth-bridge", {"ipMasq": True})):
        conf: dict[str, Any] = {**harness.bridge_conf(version="1.1.0"), **extra} if plugin == "berth-bridge" \
            else {"cniVersion": "1.1.0", "name": "pmnet", "type": plugin}
        if plugin == "berth-bridge":
            conf["ipam"]["dataDir"] = str(node.data_dir)
        res = node.plugin(plugin, "STATUS", conf)
        assert res.rc == 0, f"{plugin} STATUS: {res.stdout} {res.stderr}"
    ruleset = node.exec(["nft", "list", "ruleset"]).stdout
    assert features.PROBE_TABLE not in ruleset and "berth" not in ruleset


def test_add_del_churn_never_fails_or_leaks(topo: harness.Topology) -> None:
    node = topo.node
    for i in range(LOOPS):
        cid = f"churn{i % 3}"
        add = node.plugin("berth-portmap", "ADD", portmap_conf("pmnet", MAPPINGS, CONTAINER), container_id=cid,
                          netns="/run/netns/none")
        assert add.rc == 0, f"ADD #{i}: {add.stdout}"
        rm = node.plugin("berth-portmap", "DEL", portmap_conf("pmnet", MAPPINGS, CONTAINER), container_id=cid,
                         netns="")
        assert rm.rc == 0, f"DEL #{i} (the chain must go in the same transaction as its elements): {rm.stdout}"
    text = node.nft_text()
    assert "CNI-DN-" not in text and "30000" not in text and "8080" not in text
    assert not list((node.state_dir / "ports").glob("*_*_*"))
