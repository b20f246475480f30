"""Masquerade for the bridge plugin's ipMasq, in berth's nft table.

Per pod subnet: a map `ipmasq-<subnet>` of the subnet's attached addresses
(data: the attachment's tag) and one rule in CNI-IPMASQ that masquerades
traffic from those addresses to anything outside the subnet and not multicast
(upstream's ipMasq, matched by one lookup). ADD adds its elements, creating
map and rule first when the subnet has none (checked under the node-wide
lock); DEL removes its elements; map and rule stay for the subnet's next
attachment, as the bridge does. The bridge name goes into the `bridges` set the
forward chain accepts.

Attachments made before IPMASQ_LAYOUT have a chain CNI-<hash> behind the
verdict maps masq-v4/-v6 instead; their journals say so (a "chain", no
"layout") and DEL, CHECK and reconcile handle them as they were made.
"""

from __future__ import annotations

import contextlib
import ipaddress
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
        new = [s for s in subnets if nft.set_exists(layout.ipmasq_map_name(s)) is not True]
        nft.apply(layout.ipmasq_add(cidrs, tag, bridge or None, new))
        generation.note_commit(root, before, intact)
    return {"layout": layout.IPMASQ_LAYOUT, "tag": tag, "subnets": subnets,
            "addresses": [str(ipaddress.ip_interface(c).ip) for c in cidrs], "bridge": bridge}


def is_current(journal_masq: dict[str, Any] | None) -> bool:
    """Was this attachment's masquerade made with per-subnet maps (IPMASQ_LAYOUT)?"""
    value = (journal_masq or {}).get("layout")
    return isinstance(value, int) and not isinstance(value, bool) and value >= layout.IPMASQ_LAYOUT


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
        _remove_elements(tagged(objects, layout.ipmasq_tag(network, container_id, ifname)))
        found = jumping_to(chain, (layout.MASQ_V4_MAP, layout.MASQ_V6_MAP), objects)
        if found or chain in nft.table_names(objects)[0]:
            _teardown(chain, found or {})


def tagged(objects: list[dict[str, Any]], tag: int) -> dict[str, list[Any]]:
    """Elements of the ipmasq-* maps that carry this tag."""
    _chains, elements = nft.table_names(objects)
    out: dict[str, list[Any]] = {}
    for name, elems in elements.items():
        if name.startswith(layout.IPMASQ_PREFIX):
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
        notes = subnet_rules(objects)
        for subnet in journal_masq.get("subnets") or []:
            if layout.ipmasq_note(str(subnet)) not in notes:
                problems.append(f"the ipMasq rule for {subnet} in {layout.IPMASQ_CHAIN} is missing")
        for name, elems in elements_of(journal_masq).items():
            for elem in elems:
                if not _has_element(elements.get(name, []), elem):
                    problems.append(f"map {name} element {elem[0]} is missing")
        return problems
    chain = str(journal_masq.get("chain", ""))
    if chain not in chains:
        problems.append(f"nftables chain {chain} is missing")
    for name, elems in layout.masq_elements(chain, [str(a) for a in journal_masq.get("addresses") or []]).items():
        for elem in elems:
            if not _has_element(elements.get(name, []), elem):
                problems.append(f"{name} element {elem[0]} -> {chain} is missing")
    return problems


def subnet_rules(objects: list[dict[str, Any]] | None) -> set[str]:
    """The comments of CNI-IPMASQ's rules: `ipMasq <subnet>` for each subnet's rule."""
    out = set()
    for obj in objects or []:
        rule = obj.get("rule")
        if isinstance(rule, dict) and rule.get("chain") == layout.IPMASQ_CHAIN and rule.get("comment"):
            out.add(str(rule["comment"]))
    return out


def _has_element(present: list[Any], wanted: list[Any]) -> bool:
    return any(isinstance(e, list) and len(e) == 2 and e[0] == wanted[0] and e[1] == wanted[1] for e in present)
