"""list/explain/reconcile logic without a kernel: journals in a temp dir, the
table listing simulated from portmap/layout.py's own commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cni.ops import explain as ops_explain
from cni.ops import listing as ops_list
from cni.ops import reconcile as ops_reconcile
from cni.ops import view as ops_state
from cni.ops.explain import Target, parse_target
from cni.records import Attachment, PortMapping
from cni.state import journal_name
from portmap import diff, layout, ports, reconcile
from portmap.diff import Table
from tests import nft_builders

NET = "opsnet"
M8080 = PortMapping(8080, 8080, 80, "tcp")


def listing(commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What `list table inet berth` would show after applying `commands` (enough for these tests)."""
    chains: dict[str, list[dict[str, Any]]] = {}
    maps: dict[str, tuple[str, list[Any]]] = {}
    for cmd in commands:
        verb, body = next(iter(cmd.items()))
        kind, obj = next(iter(body.items()))
        if kind == "chain":
            if verb == "add":
                chains.setdefault(obj["name"], [])
            elif verb == "flush":
                chains[obj["name"]] = []
            elif verb == "delete":
                chains.pop(obj["name"], None)
        elif kind == "rule" and verb == "add":
            rule = {"chain": obj["chain"], "expr": obj["expr"]}
            chains[obj["chain"]].append({**rule, "comment": obj["comment"]} if "comment" in obj else rule)
        elif kind in ("map", "set") and verb == "add":
            maps.setdefault(obj["name"], (kind, []))
        elif kind == "element":
            elems = maps[obj["name"]][1]
            for elem in obj["elem"]:
                if verb == "add" and elem not in elems:
                    elems.append(elem)
                elif verb == "delete":
                    key = elem[0] if isinstance(elem, list) else elem
                    elems[:] = [e for e in elems if (e[0] if isinstance(e, list) else e) != key]
    out: list[dict[str, Any]] = [{"table": {"family": "inet", "name": "berth"}}]
    out += [{kind: {"name": name, "elem": elems} if elems else {"name": name}} for name, (kind, elems) in maps.items()]
    for name, rules in chains.items():
        out.append({"chain": {"name": name}})
        out += [{"rule": r} for r in rules]
    return out


def journal(root: Path, cid: str, mappings: list[PortMapping], *, ip: str = "10.88.0.2", masq: bool = True,
            state: str = "done", veth: str = "veth1", legacy: bool = False) -> dict[str, Any]:
    chain = layout.dnat_chain_name(NET, cid, "eth0")
    data: dict[str, Any] = {
        "containerID": cid, "ifname": "eth0", "network": NET, "created": 1000.0,
        "bridge": {"state": "added", "bridge": "bt0", "hostVeth": veth, "netns": f"/run/netns/{cid}",
                   "ips": [f"{ip}/24"],
                   "masq": {"chain": layout.masq_chain_name(NET, cid, "eth0"), "addresses": [ip], "bridge": "bt0"}
                   if masq else None},
        "portmap": {"chain": chain, "addresses": [ip], "bridge": "bt0", "state": state, "snat": True,
                    "mappings": [m.to_json() for m in mappings]},
    }
    if not legacy:  # a journal of a berth before layout 2 has no "layout"
        data["portmap"]["layout"] = layout.PORTMAP_LAYOUT
    (root / NET).mkdir(parents=True, exist_ok=True)
    (root / NET / journal_name(cid, "eth0")).write_text(json.dumps(data))
    return data


def current_masq(root: Path, cid: str, ip: str) -> None:
    """Rewrite a journal's masq section as berth writes it now (per-subnet map element)."""
    path = root / NET / journal_name(cid, "eth0")
    data = json.loads(path.read_text())
    data["bridge"]["masq"] = {"layout": layout.IPMASQ_LAYOUT, "tag": layout.ipmasq_tag(NET, cid), "bridge": "bt0",
                              "subnets": ["10.88.0.0/24"], "addresses": [ip]}
    path.write_text(json.dumps(data))


def claim(root: Path, cid: str, mappings: list[PortMapping]) -> None:
    (root / ports.PORTS_DIR).mkdir(exist_ok=True)
    ports.write(str(root), ports.Owner(NET, cid, "eth0"), layout.dnat_chain_name(NET, cid, "eth0"), mappings)


def healthy(cid: str = "c1", mappings: list[PortMapping] | None = None, ip: str = "10.88.0.2") -> list[dict[str, Any]]:
    """The commands berth's plugins would have applied for one attachment."""
    maps = mappings or [M8080]
    note = layout.comment(NET, cid, "eth0")
    return (nft_builders.masq_add(layout.masq_chain_name(NET, cid, "eth0"), [f"{ip}/24"], "bt0", note=note)
            + nft_builders.portmap_add(layout.dnat_chain_name(NET, cid, "eth0"), maps, [ip], note=note))


def setup(tmp_path: Path, extra: list[dict[str, Any]] | None = None) -> tuple[str, list[Attachment], Table]:
    journal(tmp_path, "c1", [M8080])
    claim(tmp_path, "c1", [M8080])
    table = Table.from_objects(listing(healthy() + (extra or [])))
    return str(tmp_path), ops_state.load_attachments(str(tmp_path)), table


# --- targets -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "want"), [
    ("8080", Target("8080", port=8080)),
    ("198.51.100.1:8080", Target("198.51.100.1:8080", port=8080, host_ip="198.51.100.1")),
    ("[fd00::1]:8080", Target("[fd00::1]:8080", port=8080, host_ip="fd00::1")),
    ("0.0.0.0:80", Target("0.0.0.0:80", port=80)),
    ("abc123", Target("abc123", container="abc123")),
    ("99999", Target("99999", container="99999")),
    ("k8s.io-abc:1", Target("k8s.io-abc:1", container="k8s.io-abc:1")),
])
def test_parse_target(text: str, want: Target) -> None:
    assert parse_target(text) == want


def test_select_by_id_prefix_and_port(tmp_path: Path) -> None:
    journal(tmp_path, "abc111", [M8080])
    journal(tmp_path, "abc222", [PortMapping(9090, 9090, 80, "udp", "10.0.0.1")], ip="10.88.0.3")
    atts = ops_state.load_attachments(str(tmp_path))
    assert [a.container_id for a in ops_explain.select(atts, parse_target("abc111"))[0]] == ["abc111"]
    assert "ambiguous" in str(ops_explain.select(atts, parse_target("abc"))[1])
    assert [a.container_id for a in ops_explain.select(atts, parse_target("abc2"))[0]] == ["abc222"]
    assert [a.container_id for a in ops_explain.select(atts, parse_target("9090"))[0]] == ["abc222"]
    assert ops_explain.select(atts, parse_target("10.0.0.2:9090"))[1]  # another hostIP: nothing
    assert "no attachment" in str(ops_explain.select(atts, parse_target("zzz"))[1])


# --- table comparison ----------------------------------------------------------------------------

def test_healthy_table_has_nothing_missing(tmp_path: Path) -> None:
    root, atts, table = setup(tmp_path)
    assert diff.static_problems(table) == [] and diff.mark_problems(table) == []
    view = diff.Ownership(root, atts)
    assert diff.portmap_missing(atts[0], table, view.owned(atts[0])) == []
    assert diff.masq_missing(atts[0], table) == []
    assert ops_list.rules_status(atts[0], table, view) == ("ok", [])
    assert reconcile.plan(root, atts, table, set()).fixes == []


def test_missing_element_and_flushed_chain_are_planned_back(tmp_path: Path) -> None:
    chain = layout.dnat_chain_name(NET, "c1", "eth0")
    root, atts, table = setup(tmp_path, [layout.delete_elements(layout.HOSTPORT_MAP, [layout.map_key(M8080)]),
                                         layout.flush_chain(chain)])
    result = reconcile.plan(root, atts, table, set())
    whats = [m.what for _, m in result.fixes]
    assert any("lacks 3 of its 3 rules" in w for w in whats) and any("hostport element" in w for w in whats)
    damage = [layout.delete_elements(layout.HOSTPORT_MAP, [layout.map_key(M8080)]), layout.flush_chain(chain)]
    repaired = Table.from_objects(listing([*healthy(), *damage, *result.commands()]))
    assert reconcile.plan(root, atts, repaired, set()).fixes == []


def test_journal_of_an_older_berth_is_checked_and_restored_in_the_interval_map(tmp_path: Path) -> None:
    """Before layout 2 single ports lived in the interval map hostports: a journal
    without "layout" is compared with (and restored into) that map."""
    journal(tmp_path, "c1", [M8080], legacy=True)
    claim(tmp_path, "c1", [M8080])
    chain = layout.dnat_chain_name(NET, "c1", "eth0")
    old_element = layout.add_elements(layout.HOSTPORTS_MAP, [layout.verdict_elem(layout.map_key(M8080, 0), chain)])
    legacy_map = next(c for c in layout.portmap_del(chain, {layout.HOSTPORTS_MAP: []}) if "map" in c["add"])
    # an upgraded node: its DNAT chain looks the legacy map up (base_layout with legacy_maps)
    static = layout.base_layout(legacy_maps=(layout.HOSTPORTS_MAP,))
    healthy_old = [legacy_map] + [c for c in healthy() + static
                                  if c.get("add", {}).get("element", {}).get("name") != layout.HOSTPORT_MAP]
    root = str(tmp_path)
    atts = ops_state.load_attachments(root)
    view = diff.Ownership(root, atts)
    table = Table.from_objects(listing([*healthy_old, old_element]))
    assert diff.portmap_missing(atts[0], table, view.owned(atts[0])) == []
    result = reconcile.plan(root, atts, Table.from_objects(listing(healthy_old)), set())
    assert [m.what for _, m in result.fixes] == [f"hostports element 8080->80/tcp -> {chain} is missing"]
    assert result.commands() == [old_element]


def test_whole_table_gone_restores_static_marks_dnat_and_masq(tmp_path: Path) -> None:
    journal(tmp_path, "c1", [M8080])
    claim(tmp_path, "c1", [M8080])
    atts = ops_state.load_attachments(str(tmp_path))
    result = reconcile.plan(str(tmp_path), atts, Table(False), set())
    whats = " | ".join(m.what for _, m in result.fixes)
    for needle in ("table inet berth is missing", "hairpin/localhost marks", "CNI-DN-", "masquerade chain",
                   "masq-v4 element", "bridge bt0"):
        assert needle in whats
    table = Table.from_objects(listing(result.commands()))
    assert reconcile.plan(str(tmp_path), atts, table, set()).fixes == []
    assert diff.static_problems(table) == []


def test_conflict_skips_the_claimant_without_the_port(tmp_path: Path) -> None:
    root, _atts, table = setup(tmp_path)
    journal(tmp_path, "c2", [M8080], ip="10.88.0.3", masq=False)
    atts = ops_state.load_attachments(root)
    result = reconcile.plan(root, atts, table, set())
    assert result.fixes == []
    assert result.skipped == [("c2/eth0 on opsnet", "port 8080->80/tcp is held by c1/eth0 on opsnet")]
    c2 = next(a for a in atts if a.container_id == "c2")
    status, missing = ops_list.rules_status(c2, table, diff.Ownership(root, atts))
    assert status == "missing" and "held by another attachment" in missing[0]


def test_incomplete_and_vanished_attachments_are_skipped(tmp_path: Path) -> None:
    journal(tmp_path, "c1", [M8080], state="adding")
    journal(tmp_path, "c2", [PortMapping(9090, 9090, 80, "tcp")], ip="10.88.0.3")
    atts = ops_state.load_attachments(str(tmp_path))
    c2 = next(a for a in atts if a.container_id == "c2")
    result = reconcile.plan(str(tmp_path), atts, Table(False), {c2.key})
    assert result.fixes == []
    reasons = dict(result.skipped)
    assert "did not complete" in reasons["c1/eth0 on opsnet"] and "is gone" in reasons["c2/eth0 on opsnet"]


def test_journal_options_shape_the_rebuilt_chain(tmp_path: Path) -> None:
    data = journal(tmp_path, "c1", [M8080])
    data["portmap"].update(snat=False)
    (tmp_path / NET / "c1-eth0.json").write_text(json.dumps(data))
    att = ops_state.load_attachments(str(tmp_path))[0]
    rules = diff.expected_dnat_rules(att)
    assert len(rules) == 1 and "dnat" in json.dumps(rules)  # no hairpin marks without snat


# --- rendering ---------------------------------------------------------------------------------------

def test_list_rows_and_text(tmp_path: Path) -> None:
    root, _atts, table = setup(tmp_path, [layout.delete_elements(layout.HOSTPORT_MAP, [layout.map_key(M8080)])])
    rows = ops_list.entries(root, table, now=1000.0 + 3700)
    assert rows[0]["age"] == "1h" and rows[0]["ports"] == ["8080->80/tcp"] and rows[0]["rules"] == "partial"
    text = ops_list.render(rows)
    assert text.splitlines()[0].split() == ["NETWORK", "CONTAINER", "IFNAME", "NETNS", "ADDRESSES", "PORTS", "PROXY",
                                            "AGE", "RULES"]
    assert "hostport element" in text
    assert ops_list.render([]) == "no attachments\n"


def test_format_mapping_and_age() -> None:
    v6 = PortMapping(30000, 30002, 7000, "udp", "fd00::1")
    assert diff.format_mapping(v6) == "[fd00::1]:30000-30002->7000-7002/udp"
    assert diff.format_mapping(PortMapping(80, 80, 8080, "tcp", "10.0.0.1")) == "10.0.0.1:80->8080/tcp"
    assert ops_state.age(None) == "?" and ops_state.age(0, 59) == "59s" and ops_state.age(0, 2 * 86400) == "2d"


def test_hostile_journals_are_skipped(tmp_path: Path) -> None:
    (tmp_path / NET).mkdir()
    (tmp_path / NET / "a-eth0.json").write_text("[1, 2]")
    (tmp_path / NET / "b-eth0.json").write_text("{not json")
    (tmp_path / NET / "c-eth0.json").write_text(json.dumps({"containerID": 5, "ifname": "eth0", "network": NET}))
    (tmp_path / NET / "d-eth0.json").write_text(json.dumps({
        "containerID": "d", "ifname": "eth0", "network": NET,
        "portmap": {"state": "done", "mappings": [{"hostPort": "x"}, "junk"]}, "bridge": {"ips": ["nope"]}}))
    atts = ops_state.load_attachments(str(tmp_path))
    assert [a.container_id for a in atts] == ["d"]
    assert atts[0].mappings == [] and atts[0].addresses == []
    ops_list.entries(str(tmp_path), Table(False))
    reconcile.plan(str(tmp_path), atts, Table(False), set())


# --- the commands' mains (no kernel: the table snapshot is simulated) -------------------------------

def test_mains_output_and_exit_codes(tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
    root, _atts, table = setup(tmp_path)
    monkeypatch.setenv("BERTH_STATE_DIR", root)
    monkeypatch.setattr(diff, "snapshot", lambda: table)
    assert ops_list.main("list", ["--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["containerID"] == "c1" and rows[0]["rules"] == "ok"
    assert ops_list.main("list", []) == 0 and "8080->80/tcp" in capsys.readouterr().out
    assert ops_explain.main("explain", ["nope", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["attachments"] == [] and "no attachment of container" in out["verdict"]
    from portmap import sockdiag

    monkeypatch.setattr(sockdiag, "bound", lambda ports: [])  # the host's own sockets are not the test's
    assert ops_explain.main("explain", ["7777"]) == 1
    assert capsys.readouterr().out == ("7777: no attachment on this node publishes 7777; "
                                       "no host socket holds it either\n")
    for main, name in ((ops_list.main, "list"), (ops_explain.main, "explain"), (ops_reconcile.main, "reconcile")):
        with pytest.raises(SystemExit) as exc:
            main(name, ["--help"])
        assert exc.value.code == 0 and f"berth {name}" in capsys.readouterr().out


def test_missing_or_unreadable_state(tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
    monkeypatch.setenv("BERTH_STATE_DIR", str(tmp_path / "absent"))
    monkeypatch.setattr(diff, "snapshot", lambda: Table(False))
    assert ops_list.main("list", []) == 0 and capsys.readouterr().out == "no attachments\n"
    assert ops_reconcile.main("reconcile", ["--dry-run"]) == 0
    assert "nothing to fix" in capsys.readouterr().out and not (tmp_path / "absent").exists()
    from cni import state

    monkeypatch.setattr(state, "attachments", lambda root: (_ for _ in ()).throw(PermissionError(13, "denied")))
    assert ops_list.main("list", []) == 1
    assert "cannot read the journals" in capsys.readouterr().err


# --- bridge ipMasq, per subnet -------------------------------------------------------------

def test_per_subnet_masquerade_is_checked_and_its_rule_planned_once(tmp_path: Path) -> None:
    for cid, ip, port in (("c1", "10.88.0.2", 8080), ("c2", "10.88.0.3", 8081)):
        journal(tmp_path, cid, [PortMapping(port, port, 80, "tcp")], ip=ip)
        current_masq(tmp_path, cid, ip)
        claim(tmp_path, cid, [PortMapping(port, port, 80, "tcp")])
    root = str(tmp_path)
    atts = ops_state.load_attachments(root)
    result = reconcile.plan(root, atts, Table(False), set())
    whats = [m.what for _, m in result.fixes]
    assert whats.count("the ipMasq rule for 10.88.0.0/24 is missing") == 1  # two attachments, one subnet
    assert sum("map ipmasq-10.88.0.0-24 element" in w for w in whats) == 2
    assert not any("masquerade chain" in w for w in whats)
    table = Table.from_objects(listing(result.commands()))
    assert reconcile.plan(root, atts, table, set()).fixes == []
    assert all(diff.masq_missing(a, table) == [] for a in atts)
    assert "ipMasq rule for 10.88.0.0/24 in CNI-IPMASQ" in ops_state.masq_description(atts[0], table)
    # one element gone: only that attachment is missing something, and list says partial
    c1 = next(a for a in atts if a.container_id == "c1")
    damaged = Table.from_objects(listing([*result.commands(), layout.delete_elements(
        layout.ipmasq_map_name("10.88.0.0/24"), ["10.88.0.2"])]))
    missing = [m.what for m in diff.masq_missing(c1, damaged)]
    assert missing == ["map ipmasq-10.88.0.0-24 element 10.88.0.2 is missing"]
    assert ops_list.rules_status(c1, damaged, diff.Ownership(root, atts))[0] == "partial"
