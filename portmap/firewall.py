"""The firewall plugin's objects in berth's nft table (see portmap/layout.py, "the firewall plugin").

ADD adds the attachment's `address . interface` elements to firewall-v4/-v6 and,
with ingressPolicy same-bridge, its bridge to the same-bridge sets, in one
transaction under the node-wide lock (creating the firewall's chains and sets
first when they may be missing). DEL removes its elements, and the bridge once
no other journal records a same-bridge attachment on it (upstream leaves its
per-bridge rules forever; the journals let berth count). The chains and sets
stay, as the bridge does.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from collections.abc import Mapping as MappingT

from cni import state
from cni.records import FIREWALL, FirewallRecord
from portmap import diff, generation, layout, nft, ports

TYPE_CHECKING = False  # mypy treats this name as True: typing stays off the exec path
if TYPE_CHECKING:
    from typing import Any

Key = tuple[str, str, str]  # network, containerID, ifname


def elements(record: FirewallRecord) -> dict[str, list[Any]]:
    """The attachment's elements: its addresses, and its bridge when same-bridge."""
    out = layout.firewall_elements(list(record.addresses), record.interface)
    if record.same_bridge:
        out.update(layout.same_bridge_elements(record.same_bridge))
    return out


def setup(record: FirewallRecord, environ: MappingT[str, str] | None = None) -> None:
    """One transaction: the firewall's chains and sets when they may be missing, then the elements."""
    nft.prepare()  # loaded outside the lock below
    root = state.state_root(environ)
    with ports.locked(root):
        intact, before = generation.layout_known(root)
        # a commit by anyone else since berth's last may have flushed the firewall's chains
        need_layout = not intact or nft.chain_exists(layout.FIREWALL_CHAIN) is not True
        nft.apply(layout.firewall_add(elements(record), need_layout))
        generation.note_commit(root, before, intact)


def teardown(record: FirewallRecord, key: Key, environ: MappingT[str, str] | None = None) -> None:
    """Remove the attachment's elements (the bridge's only when no other attachment
    needs it); idempotent, and without a table nothing is sent."""
    nft.prepare()
    root = state.state_root(environ)
    with ports.locked(root):
        if nft.table_exists() is False:
            return  # flushed or never made: nothing of ours exists, and a DEL must not create the table
        drop = layout.firewall_elements(list(record.addresses), record.interface)
        if record.same_bridge and not bridge_in_use(root, key[0], record.same_bridge, key):
            drop.update(layout.same_bridge_elements(record.same_bridge))
        if not any(drop.values()):
            return
        intact, before = generation.layout_known(root)
        nft.apply(layout.firewall_del(drop))
        generation.note_commit(root, before, intact)


def _records(root: str, network: str) -> Iterator[tuple[Key, dict[str, Any]]]:
    """Firewall journal sections, this network's first (the usual answer is there)."""
    try:
        others = sorted(n for n in os.listdir(root) if n != network and n != "ports" and not n.startswith("."))
    except OSError:
        others = []
    for net in ([network] if network else []) + others:
        for _path, data in state.journals(root, net):
            record = data.get(FIREWALL)
            if isinstance(record, dict):
                yield (str(data.get("network", net)), str(data.get("containerID", "")),
                       str(data.get("ifname", ""))), record


def bridge_in_use(root: str, network: str, bridge: str, exclude: Key) -> bool:
    """Does another journaled attachment (an unfinished ADD counts) keep `bridge` same-bridge?"""
    return any(key != exclude and record.get("sameBridge") == bridge for key, record in _records(root, network))


def journaled(root: str) -> list[tuple[Key, FirewallRecord]]:
    """Every finished firewall ADD the journals record: what `berth reconcile` puts back after a flush."""
    out = []
    for key, data in _records(root, ""):
        record = FirewallRecord.from_json(data)
        if record.state == "done":
            out.append((key, record))
    return out


def check(record: FirewallRecord) -> list[str]:
    """What is missing of the attachment's firewall (empty when all is there)."""
    table = diff.snapshot()
    return [m.what for m in diff.firewall_missing(record, table)]
