"""Reliability fixes at unit level (in-memory nft backend, tmp state):
DEL without a journal, journaled mark settings, the test-only kill/fail points,
masquerade under the node-wide lock, the read-only foreign listing."""

from __future__ import annotations

import inspect
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cni.errors import CNIError
from cni.ops import explain as ops_explain
from cni.skel import CmdArgs
from portmap import layout, masq, nft, portmap, ports
from tests import nft_builders
from tests.unit.test_portmap_plugin import args as portmap_args

PREV = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "br0"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/run/netns/x"}],
    "ips": [{"address": "10.88.0.5/24", "interface": 2}],
}
MAPS = [{"hostPort": 8080, "containerPort": 80}, {"hostPort": 5353, "containerPort": 53, "protocol": "udp",
                                                  "hostIP": "10.0.0.1"}]


@pytest.fixture
def fake() -> Iterator[nft.Fake]:
    backend = nft.Fake()
    nft.set_backend(backend)
    yield backend
    nft.set_backend(None)


def args(root: Path, command: str, cid: str = "c1", mappings: list[dict[str, Any]] | None = MAPS,
         prev: dict[str, Any] | None = PREV, env: dict[str, str] | None = None, **extra: Any) -> CmdArgs:
    return portmap_args(root, command, mappings, cid=cid, prev=prev, env=env, **extra)


def test_journal_records_mark_settings(tmp_path: Path, fake: nft.Fake) -> None:
    portmap.cmd_add(args(tmp_path, "ADD", markMasqBit=5, masqAll=True))
    record = json.loads((tmp_path / "pmnet" / "c1:eth0.json").read_text())["portmap"]
    assert record["markMasqBit"] == 5 and record["masqAll"] is True and record["externalSetMarkChain"] is None
    portmap.cmd_add(args(tmp_path, "ADD", cid="c2", mappings=[{"hostPort": 9, "containerPort": 9}],
                         externalSetMarkChain="KUBE-MARK-MASQ"))
    record = json.loads((tmp_path / "pmnet" / "c2:eth0.json").read_text())["portmap"]
    assert record["externalSetMarkChain"] == "KUBE-MARK-MASQ" and record["markMasqBit"] == 13


def test_del_without_journal_removes_derived_chain_elements_and_port_files(tmp_path: Path, fake: nft.Fake) -> None:
    portmap.cmd_add(args(tmp_path, "ADD"))
    portmap.cmd_add(args(tmp_path, "ADD", cid="other", mappings=[{"hostPort": 9090, "containerPort": 80}]))
    mine = layout.dnat_chain_name("pmnet", "c1", "eth0")
    assert mine in fake.chains and len(list((tmp_path / "ports").glob("*_*_*"))) == 3
    (tmp_path / "pmnet" / "c1:eth0.json").unlink()  # the journal is lost
    portmap.cmd_del(args(tmp_path, "DEL", prev=None))
    assert mine not in fake.chains
    assert fake.elements["hostport"] == [[{"concat": ["tcp", 9090]},
                                          {"jump": {"target": layout.dnat_chain_name("pmnet", "other")}}]]
    assert fake.elements["hostport-v4"] == []
    assert [p.name for p in (tmp_path / "ports").glob("*_*_*")] == ["any_tcp_9090"]
    portmap.cmd_del(args(tmp_path, "DEL", prev=None))  # idempotent


def test_del_without_journal_and_without_mappings_does_nothing(tmp_path: Path, fake: nft.Fake) -> None:
    portmap.cmd_del(args(tmp_path, "DEL", mappings=None, prev=None))
    assert fake.transactions == []


def test_masq_teardown_without_journal_finds_elements_by_tag(tmp_path: Path, fake: nft.Fake) -> None:
    env = {"BERTH_STATE_DIR": str(tmp_path)}
    data = masq.setup("net", "c1", "eth0", "br0", ["10.1.0.5/24", "fd00:1::5/64"], env)
    assert data["subnets"] == ["10.1.0.0/24", "fd00:1::/64"]
    masq.setup("net", "c2", "eth0", "br0", ["10.1.0.6/24"], env)
    masq.teardown(None, "net", "c1", "eth0", env)
    assert fake.elements["ipmasq-10.1.0.0-24"] == [["10.1.0.6", layout.ipmasq_tag("net", "c2")]]
    assert fake.elements["ipmasq-fd00.1..-64"] == []


def test_masq_teardown_of_an_older_berths_chain(tmp_path: Path, fake: nft.Fake) -> None:
    """Attachments made before the per-subnet maps: their chain and masq-v4 elements go."""
    env = {"BERTH_STATE_DIR": str(tmp_path)}
    old = layout.masq_chain_name("net", "c1")
    other = layout.masq_chain_name("net", "c2")
    fake.apply(nft_builders.masq_add(old, ["10.1.0.5/24"], "br0")
               + nft_builders.masq_add(other, ["10.1.0.6/24"], "br0"))
    masq.teardown({"chain": old, "addresses": ["10.1.0.5"], "bridge": "br0"}, "net", "c1", "eth0", env)
    assert old not in fake.chains and other in fake.chains
    assert fake.elements["masq-v4"] == [["10.1.0.6", {"jump": {"target": other}}]]
    masq.teardown(None, "net", "c2", "eth0", env)  # journal lost: found by its verdict
    assert other not in fake.chains and fake.elements["masq-v4"] == []


def test_masq_teardown_without_table_creates_nothing(tmp_path: Path, fake: nft.Fake) -> None:
    masq.teardown(None, "net", "c1", "eth0", {"BERTH_STATE_DIR": str(tmp_path)})
    assert fake.transactions == []


def test_masq_waits_for_the_node_wide_lock(tmp_path: Path, fake: nft.Fake) -> None:
    env = {"BERTH_STATE_DIR": str(tmp_path)}
    done: list[float] = []
    with ports.locked(str(tmp_path)):
        worker = threading.Thread(target=lambda: (masq.setup("net", "c1", "eth0", "br0", ["10.1.0.5/24"], env),
                                                  done.append(time.monotonic())))
        worker.start()
        time.sleep(0.3)
        assert not done and fake.transactions == [], "masq.setup ran while reconcile's lock was held"
        released = time.monotonic()
    worker.join(10)
    assert done and done[0] >= released


@pytest.mark.parametrize("step", portmap.STEPS)
def test_fail_points_roll_back(tmp_path: Path, fake: nft.Fake, step: str) -> None:
    with pytest.raises(CNIError) as info:
        portmap.cmd_add(args(tmp_path, "ADD", env={"BERTH_TEST_FAIL_AFTER": step}))
    assert info.value.code == 999 and step in info.value.msg
    assert not list(tmp_path.rglob("*.json")) and not list((tmp_path / "ports").glob("*_*_*"))
    assert not [c for c in fake.chains if c.startswith("CNI-DN-")]
    assert all(not elems for elems in fake.elements.values())


def test_foreign_listing_is_public_and_read_only() -> None:
    source = inspect.getsource(ops_explain.foreign_forward)
    assert "_nft(" not in source and "list_foreign" in source
    listing = inspect.getsource(nft.list_foreign)
    assert '"list"' in listing and "apply" not in listing


def test_claims_of_an_earlier_boot_are_stale(tmp_path: Path) -> None:
    from cni import state

    owner = ports.Owner("net", "c1", "eth0")
    journal = state.Journal(str(tmp_path), "net", "c1", "eth0")
    assert not ports.is_live(str(tmp_path), owner)
    journal.put("portmap", {"chain": "x"})  # journals of older berth versions: live
    assert ports.is_live(str(tmp_path), owner)
    journal.put("portmap", {"chain": "x", "boot": ports.boot_id()})
    assert ports.is_live(str(tmp_path), owner)
    journal.put("portmap", {"chain": "x", "boot": "an-earlier-boot"})
    assert not ports.is_live(str(tmp_path), owner) or not ports.boot_id()
