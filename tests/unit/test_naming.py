"""Names derived from (network, containerID, ifname) against an in-memory nft backend.

The DNAT chain keeps upstream's name, a hash of network + containerID, which
("ab", "c1") and ("a", "bc1") share: the second ADD is refused and nothing
of the first attachment is touched by it or by its DEL. The ipMasq tag hashes
the three names joined by a character none may contain.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cni import errors
from cni.errors import CNIError
from cni.skel import CmdArgs
from portmap import layout, masq, nft, portmap

PREV = {"cniVersion": "1.0.0", "interfaces": [{"name": "br0"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/x"}],
        "ips": [{"address": "10.88.0.5/24", "interface": 2}]}


@pytest.fixture
def fake() -> Iterator[nft.Fake]:
    backend = nft.Fake()
    nft.set_backend(backend)
    yield backend
    nft.set_backend(None)


def call(tmp: Path, command: str, network: str, cid: str, port: int | None = 8080,
         prev: dict[str, Any] | None = PREV, **extra: Any) -> CmdArgs:
    config: dict[str, Any] = {"cniVersion": "1.0.0", "name": network, "type": "berth-portmap", **extra}
    if port is not None:
        config["runtimeConfig"] = {"portMappings": [{"hostPort": port, "containerPort": 80}]}
    if prev is not None:
        config["prevResult"] = prev
    return CmdArgs(command=command, container_id=cid, netns="/x", ifname="eth0", args={}, raw_args="", path=[],
                   stdin=json.dumps(config).encode(), config=config, version="1.0.0",
                   environ={"BERTH_STATE_DIR": str(tmp)})


def element(port: int, chain: str) -> list[Any]:
    return [{"concat": ["tcp", port]}, {"jump": {"target": chain}}]


def test_the_pair_shares_upstreams_chain_name() -> None:
    assert layout.dnat_chain_name("ab", "c1") == layout.dnat_chain_name("a", "bc1")
    assert layout.legacy_ipmasq_tag("ab", "c1") == layout.legacy_ipmasq_tag("a", "bc1")
    assert layout.ipmasq_tag("ab", "c1") != layout.ipmasq_tag("a", "bc1")
    assert layout.ipmasq_tag("n", "a", "b-c") != layout.ipmasq_tag("n", "a-b", "c")


@pytest.mark.parametrize("policy", ["error", "last-wins"])
def test_a_second_attachment_never_takes_a_chain_of_the_same_name(tmp_path: Path, fake: nft.Fake,
                                                                   policy: str) -> None:
    chain = layout.dnat_chain_name("ab", "c1")
    portmap.cmd_add(call(tmp_path, "ADD", "ab", "c1", 8080))
    before = (set(fake.chains), json.dumps(fake.elements, sort_keys=True), len(fake.transactions))
    with pytest.raises(CNIError) as err:
        portmap.cmd_add(call(tmp_path, "ADD", "a", "bc1", 8081, conflictPolicy=policy))
    assert err.value.code == errors.LINK_CONFLICT
    assert chain in err.value.msg and "container c1 (network ab" in err.value.msg
    assert (set(fake.chains), json.dumps(fake.elements, sort_keys=True), len(fake.transactions)) == before
    assert not (tmp_path / "a").exists() or list((tmp_path / "a").glob("*.json")) == []
    assert sorted(p.name for p in (tmp_path / "ports").glob("*_*_*")) == ["any_tcp_8080"]
    # the refused attachment's DEL (no journal: it derives the chain name) leaves the chain alone
    portmap.cmd_del(call(tmp_path, "DEL", "a", "bc1", 8081, prev=None))
    assert fake.elements["hostport"] == [element(8080, chain)] and chain in fake.chains
    portmap.cmd_del(call(tmp_path, "DEL", "ab", "c1", None, prev=None))
    assert fake.elements["hostport"] == [] and chain not in fake.chains


def test_a_chain_two_older_journals_share_is_kept_by_the_first_del(tmp_path: Path, fake: nft.Fake) -> None:
    """What an older berth left: both journals name the chain; each DEL removes its own elements only."""
    chain = layout.dnat_chain_name("ab", "c1")
    portmap.cmd_add(call(tmp_path, "ADD", "ab", "c1", 8080))
    portmap.cmd_add(call(tmp_path, "ADD", "other", "x1", 8081))
    src = next((tmp_path / "other").glob("*.json"))
    data = json.loads(src.read_text())
    data.update({"containerID": "bc1", "network": "a"})
    data["portmap"]["chain"] = chain
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "bc1-eth0.json").write_text(json.dumps(data))
    src.unlink()
    fake.elements["hostport"] = [element(8080, chain), element(8081, chain)]
    claim = json.loads((tmp_path / "ports" / "any_tcp_8081").read_text())
    claim.update({"containerID": "bc1", "network": "a", "chain": chain})
    (tmp_path / "ports" / "any_tcp_8081").write_text(json.dumps(claim))
    portmap.cmd_del(call(tmp_path, "DEL", "a", "bc1", None, prev=None))
    assert fake.elements["hostport"] == [element(8080, chain)] and chain in fake.chains
    assert list((tmp_path / "a").glob("*.json")) == []
    portmap.cmd_del(call(tmp_path, "DEL", "ab", "c1", None, prev=None))
    assert fake.elements["hostport"] == [] and chain not in fake.chains


def test_masq_teardown_without_a_journal_spares_a_sharer_of_the_older_tag(tmp_path: Path, fake: nft.Fake) -> None:
    """An element an older berth tagged for ("ab", "c1") carries the tag ("a", "bc1") derives too."""
    env = {"BERTH_STATE_DIR": str(tmp_path)}
    data = masq.setup("ab", "c1", "eth0", "br0", ["10.1.0.5/24"], env)
    old_tag = layout.legacy_ipmasq_tag("ab", "c1")
    fake.sets["ipmasq-10.1.0.0-24"][1][:] = [["10.1.0.5", old_tag]]
    (tmp_path / "ab").mkdir()
    (tmp_path / "ab" / "c1-eth0.json").write_text(json.dumps({
        "containerID": "c1", "ifname": "eth0", "network": "ab",
        "bridge": {"state": "added", "masq": {**data, "tag": old_tag}}}))
    masq.teardown(None, "a", "bc1", "eth0", env)  # lost journal
    masq.teardown({}, "a", "bc1", "eth0", env)  # an older berth's intent
    assert fake.elements["ipmasq-10.1.0.0-24"] == [["10.1.0.5", old_tag]]
    masq.teardown(None, "ab", "c1", "eth0", env)  # its own DEL without a journal still finds it
    assert fake.elements["ipmasq-10.1.0.0-24"] == []


def test_the_bridge_intent_records_the_tag(tmp_path: Path, fake: nft.Fake) -> None:
    env = {"BERTH_STATE_DIR": str(tmp_path)}
    intent = masq.intent("net", "c1", "eth0")
    masq.setup("net", "c1", "eth0", "br0", ["10.1.0.5/24"], env)  # committed, then the ADD was killed
    masq.setup("net", "c2", "eth0", "br0", ["10.1.0.6/24"], env)
    masq.teardown(intent, "net", "c1", "eth0", env)
    assert fake.elements["ipmasq-10.1.0.0-24"] == [["10.1.0.6", layout.ipmasq_tag("net", "c2")]]
