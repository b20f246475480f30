"""What `berth list`, `explain` and `reconcile` share: the attachments the
journals describe, one snapshot of berth's own nft table, and the comparison of
the two ("which of this attachment's chains and elements are missing").

Everything here is plain data over the journal format of cni/bridge.py (section
"bridge") and portmap/portmap.py (section "portmap") and the builders of
portmap/layout.py; the only kernel access is portmap/nft.py's listing of
`table inet berth` (one listing, then set lookups).
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field
from typing import Any

from portmap import layout
from portmap.layout import Mapping

BRIDGE = "bridge"
PORTMAP = "portmap"


# --- attachments ---------------------------------------------------------------

@dataclass
class Attachment:
    """One journal file: what the plugins recorded for (network, container, ifname)."""

    network: str
    container_id: str
    ifname: str
    path: str
    created: float | None
    bridge: dict[str, Any] | None
    portmap: dict[str, Any] | None

    @property
    def key(self) -> tuple[str, str, str]:
        return self.network, self.container_id, self.ifname

    def describe(self) -> str:
        return f"{self.container_id}/{self.ifname} on {self.network}"

    @property
    def netns(self) -> str:
        return str((self.bridge or {}).get("netns") or "")

    @property
    def cidrs(self) -> list[str]:
        return [str(c) for c in (self.bridge or {}).get("ips") or []]

    @property
    def addresses(self) -> list[str]:
        """Container addresses (no prefix): the bridge's record, else portmap's."""
        out = [str(ipaddress.ip_interface(c).ip) for c in self.cidrs if _valid_interface(c)]
        if not out:
            out = [str(a) for a in (self.portmap or {}).get("addresses") or []]
        return out

    @property
    def mappings(self) -> list[Mapping]:
        out = []
        for raw in (self.portmap or {}).get("mappings") or []:
            try:
                out.append(Mapping.from_json(raw))
            except (KeyError, TypeError, ValueError):
                continue  # a hand-edited journal: skip what cannot be read
        return out

    def map_name(self, m: Mapping) -> str:
        """The verdict map the ADD put the mapping's element in (layout.Mapping.map_name)."""
        return m.map_name(layout.portmap_layout(self.portmap))

    def map_key(self, m: Mapping) -> Any:
        """The mapping's element key in that map."""
        return m.map_key(layout.portmap_layout(self.portmap))

    @property
    def dn_chain(self) -> str:
        return str((self.portmap or {}).get("chain")
                   or layout.dnat_chain_name(self.network, self.container_id, self.ifname))

    @property
    def masq(self) -> dict[str, Any] | None:
        value = (self.bridge or {}).get("masq")
        return value if isinstance(value, dict) else None

    @property
    def bridge_name(self) -> str:
        return str((self.bridge or {}).get("bridge") or (self.portmap or {}).get("bridge") or "")

    def complete(self) -> bool:
        """Did every recorded plugin finish its ADD (half-done ADDs are DEL's business)?"""
        if self.bridge is not None and self.bridge.get("state") != "added":
            return False
        return self.portmap is None or self.portmap.get("state") == "done"


def _valid_interface(value: str) -> bool:
    try:
        ipaddress.ip_interface(value)
    except ValueError:
        return False
    return True


def load_attachments(root: str) -> list[Attachment]:
    try:
        return _load(root)
    except OSError as exc:  # e.g. not root: the state dir is 0700
        from cni import errors

        raise errors.CNIError(errors.IO_FAILURE, f"cannot read the journals under {root}", str(exc)) from None


def _load(root: str) -> list[Attachment]:
    from cni import state

    out = []
    for path, data in state.journals(root):
        if path.startswith(f"{root.rstrip('/')}/ports/"):
            continue
        cid, ifname, network = data.get("containerID"), data.get("ifname"), data.get("network")
        if not all(isinstance(v, str) and v for v in (cid, ifname, network)):
            continue
        created = data.get("created")
        bridge, portmap = data.get(BRIDGE), data.get(PORTMAP)
        out.append(Attachment(
            network=str(network), container_id=str(cid), ifname=str(ifname), path=path,
            created=float(created) if isinstance(created, int | float) else None,
            bridge=bridge if isinstance(bridge, dict) else None,
            portmap=portmap if isinstance(portmap, dict) else None,
        ))
    return out


def age(created: float | None, now: float | None = None) -> str:
    if created is None:
        return "?"
    seconds = max(0, int((now if now is not None else time.time()) - created))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def format_mapping(m: Mapping) -> str:
    host = f"{m.host_ip}:" if m.host_ip and ":" not in m.host_ip else f"[{m.host_ip}]:" if m.host_ip else ""
    hport = str(m.host_lo) if m.host_lo == m.host_hi else f"{m.host_lo}-{m.host_hi}"
    cport = str(m.container_lo) if m.host_lo == m.host_hi else f"{m.container_lo}-{m.container_hi}"
    return f"{host}{hport}->{cport}/{m.protocol}"


def overlaps(a: Mapping, b: Mapping) -> bool:
    return a.protocol == b.protocol and a.host_lo <= b.host_hi and b.host_lo <= a.host_hi


# --- the table snapshot --------------------------------------------------------

@dataclass
class Table:
    """One listing of `table inet berth`, indexed for lookups."""

    exists: bool
    chains: set[str] = field(default_factory=set)
    elements: dict[str, list[Any]] = field(default_factory=dict)
    rules: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @classmethod
    def from_objects(cls, objects: list[dict[str, Any]] | None) -> Table:
        from portmap import nft

        chains, elements = nft.table_names(objects)
        rules: dict[str, list[dict[str, Any]]] = {}
        for obj in objects or []:
            rule = obj.get("rule")
            if isinstance(rule, dict):
                rules.setdefault(str(rule.get("chain")), []).append(rule)
        return cls(objects is not None, chains, elements, rules)

    def rule_count(self, chain: str) -> int:
        return len(self.rules.get(chain, []))

    def counters(self, chain: str, comments: set[str] | None = None) -> tuple[int, int]:
        """Packets and bytes summed over the counters of a chain's rules (those with
        one of `comments`, when given)."""
        packets = octets = 0
        for rule in self.rules.get(chain, []):
            if comments is not None and str(rule.get("comment")) not in comments:
                continue
            for expr in rule.get("expr") or []:
                counter = expr.get("counter") if isinstance(expr, dict) else None
                if isinstance(counter, dict):
                    packets += int(counter.get("packets") or 0)
                    octets += int(counter.get("bytes") or 0)
        return packets, octets

    def element_target(self, map_name: str, key: Any) -> str | None:
        """The chain an element of a verdict map jumps to (None: no such key)."""
        for elem in self.elements.get(map_name, []):
            if isinstance(elem, list) and len(elem) == 2 and elem[0] == key:
                verdict = elem[1] if isinstance(elem[1], dict) else {}
                target = (verdict.get("jump") or verdict.get("goto") or {}).get("target")
                return str(target) if target else "?"
        return None

    def has_member(self, set_name: str, value: Any) -> bool:
        return value in self.elements.get(set_name, [])


def snapshot() -> Table:
    from portmap import nft

    return Table.from_objects(nft.list_table())


def _rule_counts(commands: list[layout.Cmd]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for cmd in commands:
        rule = cmd.get("add", {}).get("rule")
        if rule:
            counts[rule["chain"]] = counts.get(rule["chain"], 0) + 1
    return counts


# rules each static chain holds, derived from the builders so they stay in step
STATIC_RULES = _rule_counts(layout.base_layout())
MARK_RULES = _rule_counts(layout.mark_layout())


def static_problems(table: Table) -> list[str]:
    """What is missing of the static layout (base chains, maps, their rules)."""
    if not table.exists:
        return [f"table {layout.FAMILY} {layout.TABLE} is missing"]
    problems = []
    for name, _key, _interval in layout.MAPS:
        if name not in table.elements:
            problems.append(f"map {name} is missing")
    for chain, count in STATIC_RULES.items():
        if chain not in table.chains:
            problems.append(f"chain {chain} is missing")
        elif table.rule_count(chain) < count:
            problems.append(f"chain {chain} has {table.rule_count(chain)} of its {count} rules")
    return problems


def legacy_maps(table: Table) -> tuple[str, ...]:
    """The interval maps of older berths that this table still holds (layout.LEGACY_RANGE_MAPS)."""
    return tuple(name for name in layout.LEGACY_RANGE_MAPS if name in table.elements)


def mark_problems(table: Table) -> list[str]:
    """The hairpin/localhost mark chains portmap fills (only matter with snat)."""
    problems = []
    for chain, count in MARK_RULES.items():
        if chain not in table.chains:
            problems.append(f"chain {chain} is missing")
        elif table.rule_count(chain) < count:
            problems.append(f"chain {chain} is empty")
    return problems


# --- per-attachment expectations ----------------------------------------------------

def portmap_options(record: dict[str, Any]) -> dict[str, Any]:
    """The DNAT chain options; keys the portmap journal may not record fall back
    to the plugin's defaults (see the report: masqAll/externalSetMarkChain)."""
    external = record.get("externalSetMarkChain")
    return {"snat": bool(record.get("snat", True)), "masq_all": bool(record.get("masqAll", False)),
            "setmark_chain": str(external) if external else layout.SETMARK_CHAIN}


def expected_dn_rules(att: Attachment) -> list[layout.Cmd]:
    opts = portmap_options(att.portmap or {})
    note = layout.comment(att.network, att.container_id, att.ifname)
    addresses = [str(a) for a in (att.portmap or {}).get("addresses") or []] or att.addresses
    return layout.dnat_rules(att.dn_chain, att.mappings, addresses, note=note, **opts)


def masq_subnets(att: Attachment) -> list[str]:
    return [str(ipaddress.ip_interface(c).network) for c in att.cidrs if _valid_interface(c)]


def expected_masq_rules(att: Attachment) -> list[layout.Cmd]:
    chain = str((att.masq or {}).get("chain") or layout.masq_chain_name(att.network, att.container_id, att.ifname))
    note = layout.comment(att.network, att.container_id, att.ifname)
    return layout.masq_rules(chain, masq_subnets(att), note=note)


def masq_chain(att: Attachment) -> str:
    return str((att.masq or {}).get("chain") or layout.masq_chain_name(att.network, att.container_id, att.ifname))


def masq_addresses(att: Attachment) -> list[str]:
    return [str(a) for a in (att.masq or {}).get("addresses") or []] or att.addresses


@dataclass
class Missing:
    """One missing piece of an attachment, with what would put it back."""

    what: str
    commands: list[layout.Cmd]
    conntrack: list[Mapping] = field(default_factory=list)  # UDP/SCTP mappings whose flows to flush after


def portmap_missing(att: Attachment, table: Table, owned: list[Mapping]) -> list[Missing]:
    """Missing DNAT chain/rules and verdict-map elements; only `owned` mappings'
    elements count (a port another attachment holds is not ours to restore)."""
    if att.portmap is None or not owned:
        return []  # a chain no element leads to carries no traffic: nothing to restore
    chain = att.dn_chain
    out = _chain_missing(table, chain, expected_dn_rules(att), "chain")
    for m in owned:
        name, key = att.map_name(m), att.map_key(m)
        target = table.element_target(name, key)
        if target is None:
            out.append(Missing(f"{name} element {format_mapping(m)} -> {chain} is missing",
                               [layout.add_elements(name, [layout.verdict_elem(key, chain)])],
                               [m] if m.protocol in ("udp", "sctp") else []))
    return out


def _chain_missing(table: Table, chain: str, rules: list[layout.Cmd], label: str) -> list[Missing]:
    """A per-attachment chain that is gone or lost rules, with the commands that rebuild it."""
    have = table.rule_count(chain)
    if chain in table.chains and have >= len(rules):
        return []
    state = "missing" if chain not in table.chains else f"has {have} of {len(rules)} rules"
    return [Missing(f"{label} {chain} {state}", [layout.add_chain(chain), layout.flush_chain(chain), *rules])]


def masq_missing(att: Attachment, table: Table, subnet_rules: bool = True) -> list[Missing]:
    """Missing bridge ipMasq pieces: the attachment's map elements (and, unless
    subnet_rules is False, its subnets' rules, which reconcile plans once per
    subnet), or for an attachment made before per-subnet maps its CNI-<hash>
    chain and masq-v4/-v6 elements; and the bridge in the `bridges` set."""
    from portmap import masq

    if att.masq is None:
        return []
    out: list[Missing] = []
    if masq.is_current(att.masq):
        if subnet_rules:
            out += ipmasq_rules_missing(table, [att])
        lookups = masq.rule_lookups(table.rules.get(layout.IPMASQ_CHAIN, []))
        for name, elems in masq.elements_of(att.masq).items():
            for elem in elems:
                if elem not in table.elements.get(name, []):
                    out.append(Missing(f"map {name} element {elem[0]} is missing",
                                       [layout.ipmasq_map(_subnet_of(name, elem[0], att)),
                                        layout.add_elements(name, [elem])]))
        for name, addrs in masq.set_elements_of(att.masq, lookups).items():
            for addr in addrs:
                if addr not in table.elements.get(name, []):
                    out.append(Missing(f"set {name} element {addr} is missing",
                                       [layout.ipmasq_set(_subnet_of(layout.ipmasq_map_of_set(name), addr, att)),
                                        layout.add_elements(name, [addr])]))
    else:
        chain = masq_chain(att)
        out += _chain_missing(table, chain, expected_masq_rules(att), "masquerade chain")
        for name, elems in layout.masq_elements(chain, masq_addresses(att)).items():
            for elem in elems:
                target = table.element_target(name, elem[0])
                if target is None:
                    out.append(Missing(f"{name} element {elem[0]} -> {chain} is missing",
                                       [layout.add_elements(name, [elem])]))
    bridge = str(att.masq.get("bridge") or att.bridge_name)
    if bridge and not table.has_member(layout.BRIDGES_SET, bridge):
        out.append(Missing(f"bridge {bridge} is missing from set {layout.BRIDGES_SET}",
                           [layout.add_elements(layout.BRIDGES_SET, [bridge])]))
    return out


def _subnet_of(map_name: str, addr: str, att: Attachment) -> str:
    subnets = [str(s) for s in (att.masq or {}).get("subnets") or []]
    return next((s for s in subnets if layout.ipmasq_map_name(s) == map_name), f"{addr}/32")


def masq_present(att: Attachment, table: Table) -> bool:
    """Is any of the attachment's masquerade objects there (its chain, or one of its elements)?"""
    from portmap import masq

    if att.masq is None:
        return False
    if masq.is_current(att.masq):
        return any(e in table.elements.get(name, []) for name, elems in masq.elements_of(att.masq).items()
                   for e in elems)
    return masq_chain(att) in table.chains


def masq_description(att: Attachment, table: Table) -> str:
    """How explain names the attachment's masquerade, with what its counters say."""
    from portmap import masq

    if masq.is_current(att.masq):
        subnets = [str(s) for s in (att.masq or {}).get("subnets") or []]
        packets, _ = table.counters(layout.IPMASQ_CHAIN, {layout.ipmasq_note(s) for s in subnets})
        return (f"ipMasq rule{'s' if len(subnets) != 1 else ''} for {', '.join(subnets)} in {layout.IPMASQ_CHAIN} "
                f"({packets} packet{'s' if packets != 1 else ''} masqueraded, all of the subnet's containers)")
    packets, _ = table.counters(masq_chain(att))
    return f"ipMasq chain {masq_chain(att)} ({packets} packet{'s' if packets != 1 else ''} masqueraded)"


def ipmasq_rules_missing(table: Table, attachments: list[Attachment]) -> list[Missing]:
    """The per-subnet ipMasq rules (CNI-IPMASQ, comment `ipMasq <subnet>`) these
    attachments need and the table lacks, once per subnet (masq.serves: a layout 2
    attachment is also served by the rule an older berth wrote)."""
    from portmap import masq

    lookups = masq.rule_lookups(table.rules.get(layout.IPMASQ_CHAIN, []))
    out: list[Missing] = []
    seen: set[str] = set()
    for att in attachments:
        version = masq.journal_layout(att.masq)
        for subnet in [str(s) for s in (att.masq or {}).get("subnets") or []] if version >= 2 else []:
            if subnet in seen or masq.serves(lookups, subnet, version):
                continue
            seen.add(subnet)
            out.append(Missing(f"the ipMasq rule for {subnet} is missing",
                               [layout.add_chain(layout.IPMASQ_CHAIN), *layout.ipmasq_subnet_setup(subnet)]))
    return out


# --- port ownership ------------------------------------------------------------

@dataclass
class PortView:
    """Who holds each mapping: the port files (portmap/ports.py) and the journals."""

    root: str
    attachments: list[Attachment]

    def claim_owner(self, m: Mapping) -> tuple[str, str, str] | None:
        """The owner named by the port file of the mapping's first port (None: no file)."""
        from portmap import ports

        claim = ports.read(ports.port_files(self.root, m)[0])
        if claim is None:
            return None
        return claim.owner.network, claim.owner.container_id, claim.owner.ifname

    def rivals(self, att: Attachment, m: Mapping) -> list[tuple[Attachment, Mapping]]:
        """Other attachments whose journal claims an overlapping port on the same hostIP."""
        out = []
        for other in self.attachments:
            if other.key == att.key:
                continue
            for om in other.mappings:
                if overlaps(m, om) and om.host_ip == m.host_ip:
                    out.append((other, om))
        return out

    def owned(self, att: Attachment) -> list[Mapping]:
        """Mappings this attachment may restore: its port file names it, or there
        is no port file and no other journal claims the port."""
        out = []
        for m in att.mappings:
            owner = self.claim_owner(m)
            if owner == att.key or (owner is None and not self.rivals(att, m)):
                out.append(m)
        return out
