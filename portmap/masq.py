"""Masquerade for the bridge plugin's ipMasq, in berth's nft table.

Per pod subnet: a set `ipmasq-src-<subnet>` of the subnet's attached
addresses, a map `ipmasq-<subnet>` of the same addresses to their attachment's
tag (who owns each), and one rule in CNI-IPMASQ that masquerades traffic from
the set's addresses to anything outside the subnet and not multicast
(upstream's ipMasq, matched by one lookup). ADD adds its elements, creating
map, set and rule first when the subnet has no set (checked under the
node-wide lock); DEL removes its elements; map, set and rule stay for the
subnet's next attachment, as the bridge does. Attachments of layout 2 (no
set: their rule looked the map up as a set, which kernels before 6.2 refuse)
keep working through that rule where an older berth left it. The bridge name goes into the `bridges` set the
forward chain accepts.

Attachments made before IPMASQ_LAYOUT have a chain CNI-<hash> behind the
verdict maps masq-v4/-v6 instead; their journals say so (a "chain", no
"layout") and DEL, CHECK and reconcile handle them as they were made.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterable
from collections.abc import Mapping as MappingT
from typing import Any

from cni import errors, state
from cni.errors import CNIError
from portmap import generation, layout, nft, ports


def _cidrs(addresses: list[str]) -> list[str]:
    out = []
    for value in addresses:
        try:
            out.append(str(ipaddress.ip_interface(value)))
        except ValueError:
            raise errors.invalid_config(f"invalid address {value!r} for ipMasq") from None
    return out


def setup(network: str, container_id: str, ifname: str, bridge: str, addresses: list[str],
          environ: MappingT[str, str] | None = None) -> dict[str, Any]:
    """One transaction: the attachment's map elements (after map, rule and static
    layout for a subnet that has no map yet). Returns the journal data."""
    cidrs = _cidrs(addresses)
    tag = layout.ipmasq_tag(network, container_id, ifname)
    subnets = layout.ipmasq_subnets(cidrs)
    nft.prepare()  # loaded outside the lock below
    # the node-wide lock `berth reconcile` takes: it must not see half a change, and
    # two first attachments of a subnet must not both add its rule
    root = state.state_root(environ)
    with ports.locked(root):
        intact, before = generation.layout_known(root)
        new = [s for s in subnets if nft.set_exists(layout.ipmasq_set_name(layout.ipmasq_map_name(s))) is not True]
        legacy = nft.existing(layout.LEGACY_RANGE_MAPS) if new else ()
        nft.apply(layout.ipmasq_add(cidrs, tag, bridge or None, new, legacy))
        generation.note_commit(root, before, intact)
    return {"layout": layout.IPMASQ_LAYOUT, "tag": tag, "subnets": subnets,
            "addresses": [str(ipaddress.ip_interface(c).ip) for c in cidrs], "bridge": bridge}


def intent(network: str, container_id: str, ifname: str) -> dict[str, Any]:
    """What the bridge journals before ADD touches nft: the tag its elements will
    carry, so that after a crash teardown finds them by that tag alone."""
    return {"tag": layout.ipmasq_tag(network, container_id, ifname)}


def journal_layout(journal_masq: dict[str, Any] | None) -> int:
    """The masquerade layout the ADD recorded (0: a CNI-<hash> chain, before layout 2)."""
    value = (journal_masq or {}).get("layout")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def is_current(journal_masq: dict[str, Any] | None) -> bool:
    """Was this attachment's masquerade made with per-subnet maps (layout 2 or later)?"""
    return journal_layout(journal_masq) >= 2


def elements_of(journal_masq: dict[str, Any]) -> dict[str, list[Any]]:
    """The per-subnet map elements a current-layout journal records."""
    tag = int(journal_masq.get("tag") or 0)
    addresses = [str(a) for a in journal_masq.get("addresses") or []]
    subnets = [ipaddress.ip_network(str(s), strict=False) for s in journal_masq.get("subnets") or []]
    out: dict[str, list[Any]] = {}
    for addr in addresses:
        ip = ipaddress.ip_address(addr)
        subnet = next((n for n in subnets if n.version == ip.version and ip in n), None)
        if subnet is not None:
            out.setdefault(layout.ipmasq_map_name(str(subnet)), []).append([addr, tag])
    return out


def teardown(journal_masq: dict[str, Any] | None, network: str, container_id: str, ifname: str,
             environ: MappingT[str, str] | None = None) -> None:
    """Remove this attachment's elements (or, made before IPMASQ_LAYOUT, its chain
    and masq-v4/-v6 elements); idempotent. Without journal data (a crash before
    the ADD recorded it) both kinds are found in a listing of berth's own table."""
    data = journal_masq or {}
    nft.prepare()  # loaded outside the lock below
    root = state.state_root(environ)
    with ports.locked(root):
        if nft.table_exists() is False:
            return  # flushed or never made: nothing of ours exists, and a DEL must not create the table
        if is_current(data):
            intact, before = generation.layout_known(root)
            if _remove_elements(elements_of(data)):
                generation.note_commit(root, before, intact)
            return
        chain = str(data.get("chain") or layout.masq_chain_name(network, container_id, ifname))
        addresses = [str(a) for a in data.get("addresses") or []]
        if addresses:
            _teardown(chain, layout.masq_elements(chain, addresses))
            return
        objects = nft.list_table()
        if objects is None:
            return  # no table: nothing of ours can exist
        if isinstance(data.get("tag"), int):  # this berth's intent: elements with that tag, never a chain
            _remove_elements(tagged(objects, data["tag"]))
            return
        _remove_elements(tagged(objects, layout.ipmasq_tag(network, container_id, ifname)))
        # no journal, or an older berth's intent: its tag and chain derive from network +
        # containerID, which another attachment may share; then nothing found by them is ours
        if ports.name_sharers(root, ports.Owner(network, container_id, ifname)):
            return
        _remove_elements(tagged(objects, layout.legacy_ipmasq_tag(network, container_id, ifname)))
        found = jumping_to(chain, (layout.MASQ_V4_MAP, layout.MASQ_V6_MAP), objects)
        if found or chain in nft.table_names(objects)[0]:
            _teardown(chain, found or {})


def tagged(objects: list[dict[str, Any]], tag: int) -> dict[str, list[Any]]:
    """Elements of the ipmasq-* maps that carry this tag."""
    _chains, elements = nft.table_names(objects)
    out: dict[str, list[Any]] = {}
    for name, elems in elements.items():
        if layout.is_ipmasq_map(name):
            out.update({name: [e for e in elems if isinstance(e, list) and len(e) == 2 and e[1] == tag]})
    return {name: elems for name, elems in out.items() if elems}


def _remove_elements(elements: dict[str, list[Any]]) -> bool:
    """Delete these elements; False when that took more than one transaction."""
    if not elements:
        return True
    try:
        nft.apply(layout.ipmasq_del(elements))
        return True
    except CNIError:
        # an address now held by another attachment (reused after a crash) makes the
        # add fail: remove what is provably ours, one element at a time
        for name, elems in elements.items():
            for elem in elems:
                with contextlib.suppress(CNIError):
                    nft.apply(layout.ipmasq_del({name: [elem]}))
        return False


def jumping_to(chain: str, maps: tuple[str, ...],
               objects: list[dict[str, Any]] | None = None) -> dict[str, list[Any]] | None:
    """Elements of our verdict maps `maps` whose verdict is `jump chain`; None
    when berth's table does not exist."""
    if objects is None:
        objects = nft.list_table()
    if objects is None:
        return None
    _chains, elements = nft.table_names(objects)
    out: dict[str, list[Any]] = {}
    for name in maps:
        for elem in elements.get(name, []):
            if isinstance(elem, list) and len(elem) == 2 and elem[1] == layout.jump(chain):
                out.setdefault(name, []).append(elem)
    return out


def _teardown(chain: str, elements: dict[str, list[Any]]) -> None:
    try:
        nft.apply(layout.portmap_del(chain, elements))
    except CNIError:
        # an element may now jump elsewhere (address reused after a crash): drop
        # only what is provably ours, i.e. the chain, once nothing references it
        with contextlib.suppress(CNIError):
            nft.apply(layout.portmap_del(chain, {}))
        if elements:
            raise


def check(journal_masq: dict[str, Any], environ: MappingT[str, str] | None = None) -> list[str]:
    """What is missing of this attachment's masquerade (empty when all is there)."""
    objects = nft.list_table()
    chains, elements = nft.table_names(objects)
    problems = []
    if is_current(journal_masq):
        lookups = rule_lookups(obj["rule"] for obj in objects or [] if isinstance(obj.get("rule"), dict))
        for subnet in journal_masq.get("subnets") or []:
            if not serves(lookups, str(subnet), journal_layout(journal_masq)):
                problems.append(f"the ipMasq rule for {subnet} in {layout.IPMASQ_CHAIN} is missing")
        for name, elems in elements_of(journal_masq).items():
            for elem in elems:
                if not _has_element(elements.get(name, []), elem):
                    problems.append(f"map {name} element {elem[0]} is missing")
        for name, addrs in set_elements_of(journal_masq, lookups).items():
            for addr in addrs:
                if addr not in elements.get(name, []):
                    problems.append(f"set {name} element {addr} is missing")
        return problems
    chain = str(journal_masq.get("chain", ""))
    if chain not in chains:
        problems.append(f"nftables chain {chain} is missing")
    for name, elems in layout.masq_elements(chain, [str(a) for a in journal_masq.get("addresses") or []]).items():
        for elem in elems:
            if not _has_element(elements.get(name, []), elem):
                problems.append(f"{name} element {elem[0]} -> {chain} is missing")
    return problems


SET_FORM, MAP_FORM = "set", "map"


def rule_lookups(rules: Iterable[dict[str, Any]]) -> dict[str, set[str]]:
    """Per subnet rule comment (`ipMasq <subnet>`), how CNI-IPMASQ's rules for it find
    the addresses: SET_FORM (@ipmasq-src-…, layout 3) or MAP_FORM (layout 2's lookup
    of the owner map as a set, left on nodes an older berth set up)."""
    out: dict[str, set[str]] = {}
    for rule in rules:
        if rule.get("chain") != layout.IPMASQ_CHAIN or not rule.get("comment"):
            continue
        for expr in rule.get("expr") or []:
            right = expr.get("match", {}).get("right") if isinstance(expr, dict) else None
            if isinstance(right, str) and right.startswith("@"):
                form = SET_FORM if right[1:].startswith(layout.IPMASQ_SET_PREFIX) else MAP_FORM
                out.setdefault(str(rule["comment"]), set()).add(form)
                break
    return out


def serves(lookups: dict[str, set[str]], subnet: str, version: int) -> bool:
    """Does a rule masquerade this subnet for an attachment of masq layout `version`?"""
    forms = lookups.get(layout.ipmasq_note(subnet), set())
    return SET_FORM in forms or (version == 2 and MAP_FORM in forms)


def set_elements_of(journal_masq: dict[str, Any], lookups: dict[str, set[str]]) -> dict[str, list[str]]:
    """The address-set elements this attachment needs: all of layout 3's; a layout 2
    attachment's only where no rule of its own form serves its subnet."""
    version = journal_layout(journal_masq)
    subnets = {layout.ipmasq_map_name(str(s)): str(s) for s in journal_masq.get("subnets") or []}
    out: dict[str, list[str]] = {}
    for name, elems in elements_of(journal_masq).items():
        subnet = subnets.get(name, "")
        if version == 2 and MAP_FORM in lookups.get(layout.ipmasq_note(subnet), set()):
            continue
        out[layout.ipmasq_set_name(name)] = [e[0] for e in elems]
    return out


def _has_element(present: list[Any], wanted: list[Any]) -> bool:
    return any(isinstance(e, list) and len(e) == 2 and e[0] == wanted[0] and e[1] == wanted[1] for e in present)
