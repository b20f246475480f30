"""Bridge `isolate` without root: config parsing, the nft builders, who still
needs a bridge isolated (journal scan) and release through a fake backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cni import state
from cni.bridge_conf import parse
from cni.errors import CNIError
from portmap import isolation, layout, nft

T = {"family": "inet", "table": "berth"}


def conf(**extra: Any) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": "net", "type": "berth-bridge", "bridge": "br0", **extra}


@pytest.mark.parametrize(("value", "mode"), [
    (None, ""), (False, ""), ("false", ""), (True, "isolated"), ("true", "isolated"), ("strict", "strict"),
])
def test_isolate_values(value: Any, mode: str) -> None:
    c = conf() if value is None else conf(isolate=value)
    assert parse(c).isolate == mode


@pytest.mark.parametrize("value", [1, 0, "yes", "STRICT", "", [], {"strict": True}, 2.0])
def test_isolate_bad_values_are_code_7(value: Any) -> None:
    with pytest.raises(CNIError) as exc:
        parse(conf(isolate=value))
    assert exc.value.code == 7


def test_rules_are_constant_and_guarded() -> None:
    base = layout.base_layout()
    rules = [c["add"]["rule"] for c in base if "add" in c and "rule" in c["add"]]
    iso = [r for r in rules if r["chain"] == layout.ISOLATION_CHAIN]
    assert len(iso) == 6
    assert iso[0]["expr"][0]["match"]["right"] == ["established", "related"]
    assert iso[1]["expr"][0]["match"] == {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}
    assert iso[2]["expr"][0]["match"]["right"] == "@isolated-self"

    def lookups(rule: dict[str, Any]) -> list[tuple[str, str]]:
        return [(e["match"]["left"]["meta"]["key"], e["match"]["right"]) for e in rule["expr"]
                if "match" in e and "meta" in e["match"]["left"]]

    # between isolated bridges; from any berth bridge into a strict one; from a strict one out
    assert lookups(iso[3]) == [("iifname", "@isolated"), ("oifname", "@isolated")]
    assert lookups(iso[4]) == [("oifname", "@strict"), ("iifname", "@bridges")]
    assert lookups(iso[5]) == [("iifname", "@strict")]
    assert all(r["expr"][-1] == {"drop": None} for r in iso[3:])
    forward = [r for r in rules if r["chain"] == "forward"]
    # operator's chain first, then the one lookup every forwarded packet pays: into a berth bridge?
    assert forward[0]["expr"] == [{"jump": {"target": "CNI-ADMIN"}}]
    assert forward[1]["expr"] == [
        {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "@bridges"}},
        {"jump": {"target": "CNI-ISOLATION"}},
    ]
    # the chain is refilled by every ADD (add+flush before its rules), never left stale
    flush = base.index({"flush": {"chain": {**T, "name": "CNI-ISOLATION"}}})
    first_rule = next(i for i, c in enumerate(base) if c.get("add", {}).get("rule", {}).get("chain") == "CNI-ISOLATION")
    assert flush < first_rule
    sets = {c["add"]["set"]["name"]: c["add"]["set"]["type"] for c in base if "set" in c.get("add", {})}
    assert sets == {"bridges": "ifname", "isolated": "ifname", "strict": "ifname",
                    "isolated-self": ["ifname", "ifname"]}


def test_add_transaction_size_does_not_depend_on_the_network() -> None:
    sizes = {len(isolation.add_commands(f"br{i}", "isolated")) for i in range(100)}
    assert sizes == {len(layout.base_layout()) + 3}
    cmds = isolation.add_commands("br7", "strict")
    assert cmds[-4:] == [
        {"add": {"element": {**T, "name": "bridges", "elem": ["br7"]}}},
        {"add": {"element": {**T, "name": "isolated", "elem": ["br7"]}}},
        {"add": {"element": {**T, "name": "isolated-self", "elem": [{"concat": ["br7", "br7"]}]}}},
        {"add": {"element": {**T, "name": "strict", "elem": ["br7"]}}},
    ]
    # the node's first strict ADD also brings every journaled bridge into `bridges`, in one element add
    first = isolation.add_commands("br7", "strict", others=("br9", "br7", "br8"))
    assert first[-1] == {"add": {"element": {**T, "name": "bridges", "elem": ["br8", "br9"]}}}


def test_enlist_asserts_the_layout_only_without_the_set() -> None:
    assert isolation.enlist_commands("br3", True) == [{"add": {"element": {**T, "name": "bridges",
                                                                            "elem": ["br3"]}}}]
    cold = isolation.enlist_commands("br3", False)
    assert cold[:-1] == layout.base_layout() and cold[-1] == isolation.enlist_commands("br3", True)[0]


def test_remove_commands_are_absence_tolerant() -> None:
    assert isolation.remove_commands("br0", ()) == []
    cmds = isolation.remove_commands("br0", (layout.STRICT_SET,))
    assert cmds == [
        {"add": {"table": {"family": "inet", "name": "berth"}}},
        {"add": {"set": {**T, "name": "strict", "type": "ifname"}}},
        {"add": {"element": {**T, "name": "strict", "elem": ["br0"]}}},
        {"delete": {"element": {**T, "name": "strict", "elem": ["br0"]}}},
    ]
    # never touches a chain: a DEL on a node without berth's layout cannot fail on it
    assert not any("chain" in c[next(iter(c))] for c in isolation.remove_commands("br0", isolation.ALL_SETS))


@pytest.mark.parametrize(("releasing", "in_use", "dropped"), [
    ("isolated", set(), isolation.ALL_SETS),
    ("strict", set(), isolation.ALL_SETS),
    ("isolated", {"isolated"}, ()),
    ("isolated", {"strict"}, ()),
    ("strict", {"isolated"}, (layout.STRICT_SET,)),
    ("strict", {"strict"}, ()),
    ("strict", {"isolated", "strict"}, ()),
])
def test_sets_to_drop(releasing: str, in_use: set[str], dropped: tuple[str, ...]) -> None:
    assert isolation.sets_to_drop(releasing, in_use) == dropped


def put(root: Path, network: str, cid: str, bridge: str, mode: str | None, state_: str = "added") -> None:
    record: dict[str, Any] = {"state": state_, "bridge": bridge}
    if mode:
        record["isolate"] = mode
    state.Journal(str(root), network, cid, "eth0").put("bridge", record)


def test_modes_in_use_reads_every_network_and_skips_the_leaver(tmp_path: Path) -> None:
    put(tmp_path, "n1", "a", "br0", "isolated")
    assert isolation.modes_in_use(str(tmp_path), "n1", "br0", ("n1", "a", "eth0")) == set()
    assert isolation.modes_in_use(str(tmp_path), "n1", "br0") == {"isolated"}
    put(tmp_path, "n2", "b", "br0", "strict", state_="adding")  # an unfinished ADD counts
    put(tmp_path, "n3", "c", "br1", "strict")  # another bridge does not
    put(tmp_path, "n4", "d", "br0", None)  # a non-isolated network on the bridge does not
    state.Journal(str(tmp_path), "n5", "e", "eth0").put("portmap", {"x": 1})  # no bridge section
    (tmp_path / "n6").mkdir()
    (tmp_path / "n6" / "bad-eth0.json").write_text("{torn")  # unreadable: skipped
    assert isolation.modes_in_use(str(tmp_path), "n1", "br0", ("n1", "a", "eth0")) == {"strict"}
    assert isolation.modes_in_use(str(tmp_path), "n4", "br1") == {"strict"}
    assert isolation.modes_in_use(str(tmp_path), "nx", "br9") == set()
    assert isolation.modes_in_use(str(tmp_path / "missing"), "n1", "br0") == set()


def test_modes_in_use_stops_at_the_first_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(5):
        put(tmp_path, "n1", f"c{i}", "br0", "isolated")
    put(tmp_path, "n2", "z", "br0", "strict")
    read: list[str] = []
    real = state.journals

    def counting(root: str, network: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        for path, data in real(root, network):
            read.append(path)
            yield path, data

    monkeypatch.setattr(state, "journals", counting)
    found = isolation.modes_in_use(str(tmp_path), "n1", "br0", enough=bool)
    assert found == {"isolated"} and len(read) == 1  # own network first, one file is enough
    read.clear()
    assert isolation.modes_in_use(str(tmp_path), "n1", "br0") == {"isolated", "strict"}
    assert len(read) == 6


@pytest.fixture
def fake() -> Iterator[nft.Fake]:
    backend = nft.Fake()
    nft.set_backend(backend)
    try:
        yield backend
    finally:
        nft.set_backend(None)


def test_setup_and_release_follow_the_journals(tmp_path: Path, fake: nft.Fake) -> None:
    env = {"BERTH_STATE_DIR": str(tmp_path)}
    put(tmp_path, "n1", "a", "br0", "strict")
    put(tmp_path, "n2", "b", "br0", "isolated")
    isolation.setup("br0", "strict", env)
    assert fake.elements["isolated"] == ["br0"] and fake.elements["strict"] == ["br0"]
    assert fake.elements["isolated-self"] == [{"concat": ["br0", "br0"]}]
    # the strict one leaves: n2 keeps the bridge isolated, no longer strict
    assert isolation.release("n1", "a", "eth0", "br0", "strict", env) == (layout.STRICT_SET,)
    state.Journal(str(tmp_path), "n1", "a", "eth0").drop("bridge")
    assert fake.elements["strict"] == [] and fake.elements["isolated"] == ["br0"]
    # the last one leaves: everything goes; a repeat is a harmless no-op transaction
    assert isolation.release("n2", "b", "eth0", "br0", "isolated", env) == isolation.ALL_SETS
    assert isolation.release("n2", "b", "eth0", "br0", "isolated", env) == isolation.ALL_SETS
    assert all(fake.elements[name] == [] for name in isolation.ALL_SETS)


def test_release_failure_is_an_nft_error(tmp_path: Path, fake: nft.Fake) -> None:
    fake.fail_next = "boom"
    with pytest.raises(CNIError) as exc:
        isolation.release("n1", "a", "eth0", "br0", "isolated", {"BERTH_STATE_DIR": str(tmp_path)})
    assert exc.value.code >= 100


def test_check_names_what_is_missing(fake: nft.Fake) -> None:
    fake.apply(isolation.add_commands("br0", "isolated"))
    assert isolation.check("br0", "isolated") == []
    assert isolation.check("br0", "strict") == ["bridge br0 is missing from set strict"]


def test_reconcile_restores_every_journaled_bridge(tmp_path: Path) -> None:
    from portmap import diff, reconcile

    assert reconcile.plan(str(tmp_path), [], diff.Table(True), set()).fixes == []
    put(tmp_path, "n1", "a", "br0", "isolated")
    put(tmp_path, "n2", "b", "br0", "strict")
    put(tmp_path, "n3", "c", "br1", "isolated")
    put(tmp_path, "n4", "d", "br2", None)
    assert isolation.journaled(str(tmp_path)) == {"br0": "strict", "br1": "isolated"}
    fake = nft.Fake()
    fake.apply(layout.base_layout())
    plan = reconcile.plan(str(tmp_path), [], diff.Table.from_objects(fake.list_table()), set())
    cmds = plan.commands()
    adds = [(c["add"]["element"]["name"], c["add"]["element"]["elem"]) for c in cmds if "element" in c.get("add", {})]
    assert adds == [("bridges", ["br0"]), ("isolated", ["br0"]), ("isolated-self", [{"concat": ["br0", "br0"]}]),
                    ("strict", ["br0"]), ("bridges", ["br1"]), ("isolated", ["br1"]),
                    ("isolated-self", [{"concat": ["br1", "br1"]}]),
                    ("bridges", ["br2"])]  # n4's, neither ipMasq nor isolated: a strict network keeps it out
    fake.apply(cmds)
    assert reconcile.plan(str(tmp_path), [], diff.Table.from_objects(fake.list_table()), set()).fixes == []


def test_first_strict_add_enlists_every_journaled_bridge_and_the_last_one_unmarks(tmp_path: Path,
                                                                                 fake: nft.Fake) -> None:
    env = {"BERTH_STATE_DIR": str(tmp_path)}
    root = str(tmp_path)
    put(tmp_path, "plain", "p", "br-plain", None)  # neither ipMasq nor isolate: not in `bridges` yet
    put(tmp_path, "iso", "i", "br-iso", "isolated")
    put(tmp_path, "s", "a", "br-s", "strict")
    assert not state.strict_node(root)
    isolation.setup("br-s", "strict", env)
    assert state.strict_node(root)
    assert sorted(fake.elements["bridges"]) == ["br-iso", "br-plain", "br-s"]
    # a second strict ADD does not read every journal again (the marker says bridge ADDs enlist themselves)
    put(tmp_path, "plain2", "q", "br-late", None)
    isolation.setup("br-s", "strict", env)
    assert "br-late" not in fake.elements["bridges"]
    isolation.enlist("br-late", env)  # what that bridge's own ADD does on a marked node
    assert "br-late" in fake.elements["bridges"]
    # the strict attachment goes: the marker with it; `bridges` keeps its members
    assert isolation.release("s", "a", "eth0", "br-s", "strict", env) == isolation.ALL_SETS
    assert not state.strict_node(root)
    assert "br-plain" in fake.elements["bridges"]


def test_marker_stays_while_another_strict_attachment_lives(tmp_path: Path, fake: nft.Fake) -> None:
    env = {"BERTH_STATE_DIR": str(tmp_path)}
    put(tmp_path, "s1", "a", "br-1", "strict")
    put(tmp_path, "s2", "b", "br-2", "strict")
    isolation.setup("br-1", "strict", env)
    isolation.setup("br-2", "strict", env)
    isolation.release("s1", "a", "eth0", "br-1", "strict", env)
    state.Journal(str(tmp_path), "s1", "a", "eth0").drop("bridge")  # as DEL does after the release
    assert state.strict_node(str(tmp_path))
    isolation.release("s2", "b", "eth0", "br-2", "strict", env)
    assert not state.strict_node(str(tmp_path))
