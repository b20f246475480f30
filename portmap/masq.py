"""Masquerade for the bridge plugin's ipMasq, in berth's nft table.

Per attachment: chain CNI-<hash> (upstream's name) that accepts traffic to the
pod subnet and multicast and masquerades the rest, reached from postrouting via
`ip saddr vmap @masq-v4` / `ip6 saddr vmap @masq-v6` keyed by the container's
address: one lookup however many containers exist. The bridge name goes into
the `bridges` set the forward chain accepts; it stays there (the bridge outlives
its containers, as upstream's bridge does).
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Mapping as MappingT
from typing import Any

from cni import errors, state
from cni.errors import CNIError
from portmap import layout, nft, ports


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
    """One transaction: base layout, chain add+flush+rules, map elements, bridge set.
    Returns the journal data teardown/check need."""
    cidrs = _cidrs(addresses)
    chain = layout.masq_chain_name(network, container_id, ifname)
    note = layout.comment(network, container_id, ifname)
    nft.prepare()  # loaded outside the lock below
    # the node-wide lock `berth reconcile` takes: it must not see half a change
    with ports.locked(state.state_root(environ)):
        nft.apply(layout.masq_add(chain, cidrs, bridge or None, note=note))
    return {"chain": chain, "addresses": [str(ipaddress.ip_interface(c).ip) for c in cidrs], "bridge": bridge}


def teardown(journal_masq: dict[str, Any] | None, network: str, container_id: str, ifname: str,
             environ: MappingT[str, str] | None = None) -> None:
    """Remove this attachment's chain and elements; idempotent. Without journal
    data the chain name is derived and the elements are those of masq-v4/-v6
    whose verdict jumps to it (a listing of berth's own table)."""
    data = journal_masq or {}
    chain = str(data.get("chain") or layout.masq_chain_name(network, container_id, ifname))
    addresses = [str(a) for a in data.get("addresses") or []]
    nft.prepare()  # loaded outside the lock below
    with ports.locked(state.state_root(environ)):
        if nft.table_exists() is False:
            return  # flushed or never made: nothing of ours exists, and a DEL must not create the table
        if addresses:
            _teardown(chain, layout.masq_elements(chain, addresses))
        else:
            found = jumping_to(chain, (layout.MASQ_V4_MAP, layout.MASQ_V6_MAP))
            if found is not None:  # no table: nothing of ours can exist
                _teardown(chain, found)


def jumping_to(chain: str, maps: tuple[str, ...]) -> dict[str, list[Any]] | None:
    """Elements of our verdict maps `maps` whose verdict is `jump chain`; None
    when berth's table does not exist."""
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
    chain = str(journal_masq.get("chain", ""))
    chains, elements = nft.table_names(nft.list_table())
    problems = []
    if chain not in chains:
        problems.append(f"nftables chain {chain} is missing")
    for name, elems in layout.masq_elements(chain, [str(a) for a in journal_masq.get("addresses") or []]).items():
        for elem in elems:
            if not _has_element(elements.get(name, []), elem):
                problems.append(f"{name} element {elem[0]} -> {chain} is missing")
    return problems


def _has_element(present: list[Any], wanted: list[Any]) -> bool:
    return any(isinstance(e, list) and len(e) == 2 and e[0] == wanted[0] and e[1] == wanted[1] for e in present)
