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
from collections.abc import Mapping as MappingT

from cni import errors, records, state
from cni.errors import CNIError
from cni.records import Attachment, MasqRecord
from portmap import generation, layout, nft, ports

TYPE_CHECKING = False  # mypy treats this name as True: typing stays off the exec path
if TYPE_CHECKING:
    from typing import Any


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
    return MasqRecord(schema=records.MASQ_SCHEMA, tag=tag, subnets=tuple(subnets), bridge=bridge,
                      addresses=tuple(str(ipaddress.ip_interface(c).ip) for c in cidrs)).to_json()


def intent(network: str, container_id: str, ifname: str) -> dict[str, Any]:
    """What the bridge journals before ADD touches nft: the tag its elements will
    carry, so that after a crash teardown finds them by that tag alone."""
    return MasqRecord(tag=layout.ipmasq_tag(network, container_id, ifname)).to_json()


def is_current(journal_masq: dict[str, Any] | None) -> bool:
    """Was this attachment's masquerade made with per-subnet maps (schema 2 or later)?"""
    return records.schema(journal_masq) >= 2


def elements_of(journal_masq: dict[str, Any]) -> dict[str, list[Any]]:
    """The per-subnet owner-map elements a per-subnet journal records."""
    from portmap import diff  # the table reader, lazily: ADD needs none of it
    return diff.owner_elements(MasqRecord.from_json(journal_masq))


def teardown(journal_masq: dict[str, Any] | None, network: str, container_id: str, ifname: str,
             environ: MappingT[str, str] | None = None) -> None:
    """Remove this attachment's elements (or, made before IPMASQ_LAYOUT, its chain
    and masq-v4/-v6 elements); idempotent. Without journal data (a crash before
    the ADD recorded it) both kinds are found in a listing of berth's own table."""
    from portmap import diff
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
        if found or chain in diff.Table.from_objects(objects).chains:
            _teardown(chain, found or {})


def tagged(objects: list[dict[str, Any]], tag: int) -> dict[str, list[Any]]:
    """Elements of the ipmasq-* maps that carry this tag."""
    from portmap import diff
    out: dict[str, list[Any]] = {}
    for name, elems in diff.Table.from_objects(objects).elements.items():
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
    from portmap import diff
    if objects is None:
        objects = nft.list_table()
    if objects is None:
        return None
    elements = diff.Table.from_objects(objects).elements
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


def check(att: Attachment) -> list[str]:
    """What is missing of this attachment's masquerade (empty when all is there):
    what `berth explain` reports for it (portmap/diff.py), the static layout
    (postrouting's jump to CNI-IPMASQ) included."""
    from portmap import diff

    table = diff.snapshot()
    return diff.static_problems(table) + [m.what for m in diff.masq_missing(att, table)]
