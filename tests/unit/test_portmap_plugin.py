"""portMappings parsing and the plugin's verbs against an in-memory nft backend."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cni import errors
from cni.errors import CNIError
from cni.records import PortMapping
from cni.skel import CmdArgs
from portmap import conf as pmconf
from portmap import layout, nft, portmap

PREV = {
    "cniVersion": "1.0.0",
    # the host end: a link that exists, so that an owner is alive (ports.vanished)
    "interfaces": [{"name": "bt-unit-none0"}, {"name": "lo"}, {"name": "eth0", "sandbox": "/run/netns/x"}],
    "ips": [{"address": "10.88.0.5/24", "interface": 2}, {"address": "fd00:88::5/64", "interface": 2}],
}


@pytest.fixture
def fake() -> Iterator[nft.Fake]:
    backend = nft.Fake()
    nft.set_backend(backend)
    yield backend
    nft.set_backend(None)


def args(tmp: Path, command: str, mappings: list[dict[str, Any]] | None, cid: str = "c1",
         prev: dict[str, Any] | None = PREV, env: dict[str, str] | None = None, **extra: Any) -> CmdArgs:
    config: dict[str, Any] = {"cniVersion": "1.0.0", "name": "pmnet", "type": "berth-portmap", **extra}
    if mappings is not None:
        config["runtimeConfig"] = {"portMappings": mappings}
    if prev is not None:
        config["prevResult"] = prev
    return CmdArgs(command=command, container_id=cid, netns="/run/netns/x", ifname="eth0", args={}, raw_args="",
                   path=[], stdin=json.dumps(config).encode(), config=config, version="1.0.0",
                   environ={"BERTH_STATE_DIR": str(tmp), **(env or {})})


# --- parsing ---------------------------------------------------------------------

def test_both_key_styles() -> None:
    lower = pmconf.parse_mapping({"hostPort": 8080, "containerPort": 80, "protocol": "UDP", "hostIP": "0.0.0.0"})
    cri = pmconf.parse_mapping({"HostPort": 8080, "ContainerPort": 80, "Protocol": "udp", "HostIP": ""})
    assert lower == cri == PortMapping(8080, 8080, 80, "udp", "")
    assert pmconf.parse_mapping({"hostPort": 1, "containerPort": 65535}).protocol == "tcp"
    assert pmconf.parse_mapping({"hostPort": 90, "containerPort": 9, "hostIP": "FD00::1"}).host_ip == "fd00::1"
    ranged = pmconf.parse_mapping({"hostPort": 30000, "containerPort": 7000, "range": 3})
    assert (ranged.host_hi, ranged.container_hi) == (30002, 7002)
    assert pmconf.parse_mapping({"hostPort": "100-101", "containerPort": 200}).container_hi == 201


@pytest.mark.parametrize("entry", [
    {"hostPort": 0, "containerPort": 80},
    {"hostPort": 65536, "containerPort": 80},
    {"hostPort": -1, "containerPort": 80},
    {"hostPort": True, "containerPort": 80},
    {"hostPort": "80x", "containerPort": 80},
    {"hostPort": 80.5, "containerPort": 80},
    {"hostPort": 80, "containerPort": 0},
    {"hostPort": 80},
    {"hostPort": 80, "containerPort": 80, "protocol": "icmp"},
    {"hostPort": 80, "containerPort": 80, "protocol": 6},
    {"hostPort": 80, "containerPort": 80, "hostIP": "300.1.1.1"},
    {"hostPort": 80, "containerPort": 80, "hostIP": "10.0.0.1/24"},
    {"hostPort": 80, "containerPort": 80, "hostIP": 5},
    {"hostPort": "10-5", "containerPort": 80},
    {"hostPort": "10-20", "containerPort": "10-15"},
    {"hostPort": 65535, "containerPort": 80, "range": 2},
    {"hostPort": "1-5000", "containerPort": "1-5000"},
    "8080:80",
])
def test_bad_mappings_are_code_7(entry: Any) -> None:
    with pytest.raises(CNIError) as err:
        pmconf.parse_mapping(entry)
    assert err.value.code == errors.INVALID_NETWORK_CONFIG


def test_overlap_in_one_request_and_duplicates() -> None:
    conf = {"runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": 80}] * 2}}
    assert len(pmconf.parse_mappings(conf)) == 1
    conf = {"runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": 80},
                                               {"hostPort": "79-81", "containerPort": "79-81"}]}}
    with pytest.raises(CNIError) as err:
        pmconf.parse_mappings(conf)
    assert err.value.code == 7


@pytest.mark.parametrize("extra,code", [
    ({"markMasqBit": 32}, 7), ({"markMasqBit": "13"}, 7), ({"snat": "yes"}, 7),
    ({"externalSetMarkChain": "bad chain"}, 7), ({"conditionsV4": ["-m", "comment"]}, 2),
    ({"conditionsV4": ["-d", "fd00::1"]}, 7), ({"conditionsV4": ["-d"]}, 2), ({"conditionsV6": "-d ::1"}, 7),
    ({"conflictPolicy": "first"}, 7),
])
def test_bad_config(tmp_path: Path, fake: nft.Fake, extra: dict[str, Any], code: int) -> None:
    with pytest.raises(CNIError) as err:
        portmap.cmd_add(args(tmp_path, "ADD", [{"hostPort": 80, "containerPort": 80}], **extra))
    assert err.value.code == code
    assert fake.transactions == [] and not any(tmp_path.rglob("*.json"))


# --- verbs -------------------------------------------------------------------------

def test_empty_mappings_pass_through_without_nft(tmp_path: Path, fake: nft.Fake) -> None:
    out = portmap.cmd_add(args(tmp_path, "ADD", []))
    assert out["ips"] == PREV["ips"] and fake.transactions == []
    with pytest.raises(CNIError) as err:
        portmap.cmd_add(args(tmp_path, "ADD", [], prev=None))
    assert err.value.code == 7


def test_add_del_one_transaction_each(tmp_path: Path, fake: nft.Fake) -> None:
    m = [{"hostPort": 8080, "containerPort": 80}]
    out = portmap.cmd_add(args(tmp_path, "ADD", m))
    assert out["ips"] == PREV["ips"]
    chain = layout.dnat_chain_name("pmnet", "c1")
    assert len(fake.transactions) == 1 and chain in fake.chains
    assert fake.elements["hostport"] == [[{"concat": ["tcp", 8080]}, {"jump": {"target": chain}}]]
    journal = json.loads((tmp_path / "pmnet" / "c1:eth0.json").read_text())["portmap"]
    assert journal["state"] == "done" and journal["addresses"] == ["10.88.0.5", "fd00:88::5"]
    assert (tmp_path / "ports" / "any_tcp_8080").exists()
    portmap.cmd_check(args(tmp_path, "CHECK", m))
    # DEL from the journal: no portMappings, no prevResult
    portmap.cmd_del(args(tmp_path, "DEL", None, prev=None))
    assert len(fake.transactions) == 2 and chain not in fake.chains and fake.elements["hostport"] == []
    assert not (tmp_path / "ports" / "any_tcp_8080").exists()
    assert not (tmp_path / "pmnet" / "c1:eth0.json").exists()
    portmap.cmd_del(args(tmp_path, "DEL", None, prev=None))  # repeated DEL: nothing to do
    assert len(fake.transactions) == 2


def test_failed_transaction_leaves_nothing(tmp_path: Path, fake: nft.Fake) -> None:
    fake.fail_next = "Error: Could not process rule"
    with pytest.raises(CNIError) as err:
        portmap.cmd_add(args(tmp_path, "ADD", [{"hostPort": 8080, "containerPort": 80}]))
    assert err.value.code == errors.NFTABLES_FAILURE and "Could not process rule" in err.value.details
    assert not (tmp_path / "pmnet" / "c1:eth0.json").exists()
    assert not (tmp_path / "ports" / "any_tcp_8080").exists()


def test_conflict_names_owner_then_last_wins_and_stale(tmp_path: Path, fake: nft.Fake) -> None:
    m = [{"hostPort": 8080, "containerPort": 80}]
    portmap.cmd_add(args(tmp_path, "ADD", m, cid="first"))
    with pytest.raises(CNIError) as err:
        portmap.cmd_add(args(tmp_path, "ADD", m, cid="second"))
    assert err.value.code == errors.PORT_CONFLICT and "first" in err.value.msg
    portmap.cmd_add(args(tmp_path, "ADD", m, cid="third", conflictPolicy="last-wins"))
    third = layout.dnat_chain_name("pmnet", "third")
    assert fake.elements["hostport"] == [[{"concat": ["tcp", 8080]}, {"jump": {"target": third}}]]
    # the loser's DEL leaves the winner's element alone
    portmap.cmd_del(args(tmp_path, "DEL", None, cid="first", prev=None))
    assert fake.elements["hostport"] == [[{"concat": ["tcp", 8080]}, {"jump": {"target": third}}]]
    # a stale owner (journal gone) is taken over without the option
    (tmp_path / "pmnet" / "third:eth0.json").unlink()
    portmap.cmd_add(args(tmp_path, "ADD", m, cid="fourth"))
    assert json.loads((tmp_path / "ports" / "any_tcp_8080").read_text())["containerID"] == "fourth"


def test_gc_removes_unlisted(tmp_path: Path, fake: nft.Fake) -> None:
    m = [{"hostPort": 8080, "containerPort": 80}]
    portmap.cmd_add(args(tmp_path, "ADD", m, cid="keep"))
    portmap.cmd_add(args(tmp_path, "ADD", [{"hostPort": 8081, "containerPort": 80}], cid="gone"))
    portmap.cmd_gc(args(tmp_path, "GC", None, prev=None,
                        **{"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}))
    assert layout.dnat_chain_name("pmnet", "gone") not in fake.chains
    assert layout.dnat_chain_name("pmnet", "keep") in fake.chains
    assert not (tmp_path / "pmnet" / "gone:eth0.json").exists()


def test_check_reports_missing(tmp_path: Path, fake: nft.Fake) -> None:
    m = [{"hostPort": 8080, "containerPort": 80}]
    portmap.cmd_add(args(tmp_path, "ADD", m))
    fake.elements["hostport"].clear()
    with pytest.raises(CNIError) as err:
        portmap.cmd_check(args(tmp_path, "CHECK", m))
    assert err.value.code == errors.CHECK_FAILED and "hostport " in err.value.details


def _make_legacy(tmp_path: Path, fake: nft.Fake, cid: str = "c1") -> str:
    """Turn an attachment ADDed now into what berth before layout 2 left: its
    elements in the interval maps, no "layout" in the journal, port files naming
    the interval maps."""
    journal = tmp_path / "pmnet" / f"{cid}:eth0.json"
    data = json.loads(journal.read_text())
    del data["portmap"]["layout"]
    journal.write_text(json.dumps(data))
    for name in ("hostport", "hostport-v4", "hostport-v6"):
        _kind, legacy = fake.sets.setdefault(name.replace("hostport", "hostports"), ("map", []))
        legacy.extend(fake.sets[name][1])
        fake.sets[name][1].clear()
    fake.apply(layout.base_layout(legacy_maps=layout.LEGACY_RANGE_MAPS))  # its DNAT chain looks them up
    for path in (tmp_path / "ports").glob("*_*_*"):
        claim = json.loads(path.read_text())
        claim["map"] = claim["map"].replace("hostport", "hostports")
        path.write_text(json.dumps(claim))
    return layout.dnat_chain_name("pmnet", cid)


def test_journal_of_an_older_berth_is_checked_and_deleted_in_the_interval_maps(tmp_path: Path,
                                                                                fake: nft.Fake) -> None:
    m = [{"hostPort": 8080, "containerPort": 80}, {"hostPort": 53, "containerPort": 53, "hostIP": "10.0.0.1"}]
    portmap.cmd_add(args(tmp_path, "ADD", m))
    chain = _make_legacy(tmp_path, fake)
    portmap.cmd_check(args(tmp_path, "CHECK", m))
    portmap.cmd_del(args(tmp_path, "DEL", None, prev=None))
    assert chain not in fake.chains and all(elems == [] for elems in fake.elements.values())
    deleted = {c["delete"]["element"]["name"] for c in fake.transactions[-1] if "element" in c.get("delete", {})}
    assert deleted == {"hostports", "hostports-v4"}  # the hash maps are not where these live
    assert not list((tmp_path / "ports").glob("*_*_*"))


def test_re_add_of_an_older_berths_attachment_moves_its_elements(tmp_path: Path, fake: nft.Fake) -> None:
    m = [{"hostPort": 8080, "containerPort": 80}]
    portmap.cmd_add(args(tmp_path, "ADD", m))
    chain = _make_legacy(tmp_path, fake)
    portmap.cmd_add(args(tmp_path, "ADD", m))
    assert fake.elements["hostports"] == []
    assert fake.elements["hostport"] == [[{"concat": ["tcp", 8080]}, {"jump": {"target": chain}}]]
    assert json.loads((tmp_path / "ports" / "any_tcp_8080").read_text())["map"] == "hostport"
    portmap.cmd_del(args(tmp_path, "DEL", None, prev=None))
    assert chain not in fake.chains and all(elems == [] for elems in fake.elements.values())


def test_last_wins_over_an_older_berths_attachment(tmp_path: Path, fake: nft.Fake) -> None:
    m = [{"hostPort": 8080, "containerPort": 80}]
    portmap.cmd_add(args(tmp_path, "ADD", m, cid="old"))
    _make_legacy(tmp_path, fake, "old")
    portmap.cmd_add(args(tmp_path, "ADD", m, cid="new", conflictPolicy="last-wins"))
    assert fake.elements["hostports"] == []
    new = layout.dnat_chain_name("pmnet", "new")
    assert fake.elements["hostport"] == [[{"concat": ["tcp", 8080]}, {"jump": {"target": new}}]]


def test_container_addresses_only_sandbox() -> None:
    prev = {"interfaces": [{"name": "br"}, {"name": "eth0", "sandbox": "/x"}],
            "ips": [{"address": "10.0.0.1/24", "interface": 0}, {"address": "10.0.0.2/24", "interface": 1}]}
    assert portmap.container_addresses(prev, "eth0") == ["10.0.0.2"]
    assert portmap.container_addresses({"ips": [{"address": "10.0.0.3/24"}]}, "eth0") == ["10.0.0.3"]
    assert portmap.host_bridge(prev) == "br"


def test_del_after_half_done_add(tmp_path: Path, fake: nft.Fake) -> None:
    """ADD committed nft but died before writing port files: DEL still cleans up."""
    m = [{"hostPort": 8080, "containerPort": 80}]
    portmap.cmd_add(args(tmp_path, "ADD", m))
    journal = tmp_path / "pmnet" / "c1:eth0.json"
    data = json.loads(journal.read_text())
    data["portmap"]["state"] = "adding"
    journal.write_text(json.dumps(data))
    (tmp_path / "ports" / "any_tcp_8080").unlink()
    portmap.cmd_del(args(tmp_path, "DEL", None, prev=None))
    assert fake.elements["hostport"] == [] and layout.dnat_chain_name("pmnet", "c1") not in fake.chains
    assert not journal.exists()


def test_conditions_restrict_the_dnat_rules() -> None:
    conds = pmconf.parse_conditions({"conditionsV4": ["!", "-s", "10.0.0.0/8", "-i eth1"]}, "conditionsV4", 4)
    assert conds == [
        {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                   "right": {"prefix": {"addr": "10.0.0.0", "len": 8}}}},
        {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "eth1"}},
    ]
    cmds = layout.dnat_rules("C", [PortMapping(80, 80, 80, "tcp")], ["10.88.0.5", "fd00::5"], conditions={4: conds})
    v4 = [c for c in cmds if "ip6" not in json.dumps(c)]
    assert v4 and all(conds[0] in c["add"]["rule"]["expr"] for c in v4)
    assert not any(conds[0] in c["add"]["rule"]["expr"] for c in cmds if c not in v4)
