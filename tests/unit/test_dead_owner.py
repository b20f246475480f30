"""When is a port's owner proven gone (ports.liveness), and what its takeover
removes, against an in-memory nft backend."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cni import errors, state
from cni.errors import CNIError
from cni.skel import CmdArgs
from portmap import layout, nft, portmap, ports

OWNER = ports.Owner("pmnet", "c1", "eth0")


def prev(host_veth: str) -> dict[str, Any]:
    interfaces = [{"name": "br0"}, {"name": host_veth}, {"name": "eth0", "sandbox": "/x"}]
    return {"cniVersion": "1.0.0", "interfaces": interfaces, "ips": [{"address": "10.88.0.5/24", "interface": 2}]}


@pytest.fixture
def fake() -> Iterator[nft.Fake]:
    backend = nft.Fake()
    nft.set_backend(backend)
    yield backend
    nft.set_backend(None)


def call(tmp: Path, cid: str, ports_: list[int], host_veth: str, netns: str = "/proc/self/ns/net") -> CmdArgs:
    config = {"cniVersion": "1.0.0", "name": "pmnet", "type": "berth-portmap", "prevResult": prev(host_veth),
              "runtimeConfig": {"portMappings": [{"hostPort": p, "containerPort": 80} for p in ports_]}}
    return CmdArgs(command="ADD", container_id=cid, netns=netns, ifname="eth0", args={}, raw_args="", path=[],
                   stdin=json.dumps(config).encode(), config=config, version="1.0.0",
                   environ={"BERTH_STATE_DIR": str(tmp)})


def journal(tmp: Path, portmap_record: dict[str, Any], bridge: dict[str, Any] | None = None) -> None:
    j = state.Journal(str(tmp), "pmnet", "c1", "eth0")
    j.put("portmap", {"chain": "x", "boot": ports.boot_id(), **portmap_record})
    if bridge is not None:
        j.put("bridge", bridge)


@pytest.mark.parametrize(("record", "bridge", "verdict"), [
    ({"state": "done", "hostVeth": "lo"}, None, (True, "")),
    ({"state": "done", "hostVeth": "bt-gone0"}, None, (False, "its host veth bt-gone0 is gone")),
    ({"state": "adding", "hostVeth": "bt-gone0"}, None, (True, "")),  # an unfinished ADD proves nothing
    ({"state": "done", "netns": "/proc/self/ns/net"}, None, (True, "")),
    ({"state": "done", "netns": "/run/netns/bt-gone"}, None, (False, "its network namespace /run/netns/bt-gone "
                                                                      "is gone")),
    ({"state": "done", "netns": "/etc/hostname"}, None, (False, "its network namespace /etc/hostname is gone")),
    # an older berth's portmap record: the bridge section tells
    ({"state": "done"}, {"state": "added", "hostVeth": "bt-gone0"}, (False, "its host veth bt-gone0 is gone")),
    ({"state": "done"}, {"state": "adding", "hostVeth": "bt-gone0", "netns": "/proc/self/ns/net"}, (True, "")),
    ({"state": "done"}, None, (True, "")),  # nothing to go by: live
])
def test_liveness(tmp_path: Path, record: dict[str, Any], bridge: dict[str, Any] | None,
                  verdict: tuple[bool, str]) -> None:
    journal(tmp_path, record, bridge)
    assert ports.liveness(str(tmp_path), OWNER) == verdict


def test_a_dead_owner_loses_every_mapping_and_its_chain(tmp_path: Path, fake: nft.Fake,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    portmap.cmd_add(call(tmp_path, "c1", [8080, 8081], "bt-gone0"))
    portmap.cmd_add(call(tmp_path, "c3", [9090], "lo"))
    portmap.cmd_add(call(tmp_path, "c2", [8080], "lo"))
    theirs, mine, other = (layout.dnat_chain_name("pmnet", c) for c in ("c1", "c2", "c3"))
    assert sorted(e[0]["concat"][1] for e in fake.elements["hostport"]) == [8080, 9090]
    assert theirs not in fake.chains and {mine, other} <= fake.chains
    assert sorted(os.listdir(tmp_path / "ports")) == ["any_tcp_8080", "any_tcp_9090", "lock"]
    assert state.Journal(str(tmp_path), "pmnet", "c1", "eth0").section("portmap") is None
    assert "took host ports from container c1" in capsys.readouterr().err


def test_a_refused_cleanup_never_costs_the_add(tmp_path: Path, fake: nft.Fake) -> None:
    portmap.cmd_add(call(tmp_path, "c1", [8080, 8081], "bt-gone0"))
    fake.fail_next = "Error: Device or resource busy"  # the transaction with the leftovers
    portmap.cmd_add(call(tmp_path, "c2", [8080], "lo"))
    assert json.loads((tmp_path / "ports" / "any_tcp_8080").read_text())["containerID"] == "c2"
    assert json.loads((tmp_path / "ports" / "any_tcp_8081").read_text())["containerID"] == "c1"


def test_a_live_owner_is_refused(tmp_path: Path, fake: nft.Fake) -> None:
    portmap.cmd_add(call(tmp_path, "c1", [8080], "lo"))
    with pytest.raises(CNIError) as err:
        portmap.cmd_add(call(tmp_path, "c2", [8080], "lo"))
    assert err.value.code == errors.PORT_CONFLICT
