"""What of berth's nft objects is missing: one reading of `table inet berth`
and one expected-versus-present per feature, for CHECK, `berth list`,
`berth explain` and `berth reconcile` alike.

Expected objects come from portmap/layout.py's builders and the journals
(cni/records.py); present ones from one listing (Table). Rules are compared by
what they do, not by how libnftables prints them back (it folds and reorders
matches): a rule's fingerprint is its comment, its verdicts and statements
(jump/goto targets, accept/drop/return, masquerade, dnat with its target, the
mark it sets) and the sets and maps it looks up. A chain that lost rules, or
holds one that jumps elsewhere, is missing the ones the builders would write;
each Missing carries the commands that put it back.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable

from cni import jsonc
from cni.records import PROXY_PROCESS, Attachment, FirewallRecord, MasqRecord, PortMapping, PortmapRecord
from portmap import layout

TYPE_CHECKING = False  # mypy treats this name as True: typing stays off the exec path
if TYPE_CHECKING:
    from typing import Any, NamedTuple

    Cmd = dict[str, Any]
else:
    from cni.tuples import NamedTuple



# --- the listing ------------------------------------------------------------------

class Table:
    """One listing of `table inet berth`, indexed for lookups."""

    __slots__ = ("chains", "elements", "exists", "rules")

    def __init__(self, exists: bool, chains: set[str] | None = None, elements: dict[str, list[Any]] | None = None,
                 rules: dict[str, list[dict[str, Any]]] | None = None) -> None:
        self.exists = exists
        self.chains: set[str] = chains or set()
        self.elements: dict[str, list[Any]] = elements or {}  # every set and map, empty ones too
        self.rules: dict[str, list[dict[str, Any]]] = rules or {}

    @classmethod
    def from_objects(cls, objects: list[dict[str, Any]] | None) -> Table:
        chains: set[str] = set()
        elements: dict[str, list[Any]] = {}
        rules: dict[str, list[dict[str, Any]]] = {}
        for obj in objects or []:
            if "chain" in obj:
                chains.add(str(obj["chain"]["name"]))
            for kind in ("map", "set"):
                if kind in obj:
                    elements[str(obj[kind]["name"])] = list(obj[kind].get("elem") or [])
            rule = obj.get("rule")
            if isinstance(rule, dict):
                rules.setdefault(str(rule.get("chain")), []).append(rule)
        for chain in chains:
            rules.setdefault(chain, [])
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

    def has_element(self, name: str, elem: Any) -> bool:
        return elem in self.elements.get(name, [])

    def has_member(self, set_name: str, value: Any) -> bool:
        return value in self.elements.get(set_name, [])


def snapshot() -> Table:
    from portmap import nft

    return Table.from_objects(nft.list_table())


class Missing(NamedTuple):
    """One missing piece, with what would put it back."""

    what: str
    commands: list[Cmd]
    conntrack: tuple[PortMapping, ...] = ()  # UDP/SCTP mappings whose flows to flush after
    proxy: bool = False  # the attachment's [::1] proxy is to be started again (portmap/proxyctl.py)


# --- rules by what they do ------------------------------------------------------------

def fingerprint(rule: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    """(comment, what the rule does): the same for a rule as built and as listed."""
    marks: list[str] = []
    _walk(rule.get("expr") or [], marks)
    return str(rule.get("comment") or ""), tuple(sorted(marks))


def _walk(node: Any, out: list[str]) -> None:
    if isinstance(node, list):
        for item in node:
            _walk(item, out)
        return
    if isinstance(node, str):
        if node.startswith("@"):
            out.append(node)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key in ("jump", "goto") and isinstance(value, dict):
            out.append(f"{key}:{value.get('target')}")
        elif key in ("accept", "drop", "return", "masquerade"):
            out.append(key)
        elif key == "dnat" and isinstance(value, dict):
            addr = value.get("addr")
            out.append(f"dnat:{value.get('family')}:{addr if isinstance(addr, str) else 'map'}:{value.get('port', '')}")
        elif key == "mangle" and isinstance(value, dict):
            out.append(f"mangle:{jsonc.dumps(value.get('key'), sort_keys=True)}")
        elif key in ("counter", "comment"):
            continue  # counters change, the comment is the fingerprint's other half
        else:
            _walk(value, out)


def built_rules(commands: Iterable[Cmd], chain: str) -> list[dict[str, Any]]:
    """The rules `commands` add to `chain`, in the listing's shape."""
    out = []
    for cmd in commands:
        rule = cmd.get("add", {}).get("rule")
        if rule and rule.get("chain") == chain:
            out.append(rule)
    return out


def rules_missing(table: Table, chain: str, expected: list[dict[str, Any]]) -> int:
    """How many of the `expected` rules `chain` lacks (by fingerprint, as a multiset)."""
    have = Counter(fingerprint(r) for r in table.rules.get(chain, []))
    want = Counter(fingerprint(r) for r in expected)
    return sum((want - have).values())


def chain_missing(table: Table, chain: str, rules: list[Cmd], label: str) -> list[Missing]:
    """A per-attachment chain that is gone or lacks rules, with the commands that rebuild it."""
    if chain not in table.chains:
        return [Missing(f"{label} {chain} is missing", [layout.add_chain(chain), layout.flush_chain(chain), *rules])]
    lacking = rules_missing(table, chain, built_rules(rules, chain))
    if not lacking:
        return []
    return [Missing(f"{label} {chain} lacks {lacking} of its {len(rules)} rules",
                    [layout.add_chain(chain), layout.flush_chain(chain), *rules])]


# --- the static layout -------------------------------------------------------------------

def legacy_maps(table: Table) -> tuple[str, ...]:
    """The interval maps of older berths that this table still holds (layout.LEGACY_RANGE_MAPS)."""
    return tuple(name for name in layout.LEGACY_RANGE_MAPS if name in table.elements)


def static_problems(table: Table) -> list[str]:
    """What is missing of the static layout (table, base chains, maps, sets, their rules)."""
    if not table.exists:
        return [f"table {layout.FAMILY} {layout.TABLE} is missing"]
    base = layout.base_layout(legacy_maps=legacy_maps(table))
    problems = []
    for cmd in base:
        obj = cmd.get("add", {})
        for kind in ("map", "set"):
            if kind in obj and obj[kind]["name"] not in table.elements:
                problems.append(f"{kind} {obj[kind]['name']} is missing")
    return problems + chains_lacking(table, base, _static_chains(base))


def chains_lacking(table: Table, built: list[Cmd], chains: Iterable[str]) -> list[str]:
    """What is missing of these chains as `built` writes them: the chain, or some of its rules."""
    problems = []
    for chain in chains:
        if chain not in table.chains:
            problems.append(f"chain {chain} is missing")
            continue
        expected = built_rules(built, chain)
        lacking = rules_missing(table, chain, expected)
        if lacking:
            problems.append(f"chain {chain} lacks {lacking} of its {len(expected)} rules")
    return problems


def _static_chains(commands: list[Cmd]) -> list[str]:
    """The chains the static layout fills (add+flush+rules): not CNI-ADMIN or CNI-IPMASQ."""
    flushed = {c["flush"]["chain"]["name"] for c in commands if "flush" in c and "chain" in c["flush"]}
    return [c["add"]["chain"]["name"] for c in commands
            if "chain" in c.get("add", {}) and c["add"]["chain"]["name"] in flushed]


def mark_problems(table: Table, mark_bit: int = layout.DEFAULT_MASQ_BIT) -> list[str]:
    """The hairpin/localhost mark chains portmap fills (they matter with snat)."""
    marks = layout.mark_layout(mark_bit)
    problems = []
    for chain in (layout.SETMARK_CHAIN, layout.MASQ_CHAIN):
        if chain not in table.chains:
            problems.append(f"chain {chain} is missing")
        elif rules_missing(table, chain, built_rules(marks, chain)):
            problems.append(f"chain {chain} is empty or was changed")
    return problems


# --- published ports ---------------------------------------------------------------------

def dnat_chain(att: Attachment) -> str:
    return (att.portmap.chain if att.portmap is not None else "") or \
        layout.dnat_chain_name(att.network, att.container_id, att.ifname)


def setmark_chain(record: PortmapRecord) -> str:
    return record.external_setmark or layout.SETMARK_CHAIN


def expected_dnat_rules(att: Attachment) -> list[Cmd]:
    record = att.portmap
    if record is None:
        return []
    note = layout.comment(att.network, att.container_id, att.ifname)
    addresses = list(record.addresses) or att.addresses
    return layout.dnat_rules(dnat_chain(att), list(record.mappings), addresses, note=note, snat=record.snat,
                             masq_all=record.masq_all, setmark_chain=setmark_chain(record))


def map_name(att: Attachment, m: PortMapping) -> str:
    """The verdict map the ADD put the mapping's element in (layout.map_name)."""
    return layout.map_name(m, att.portmap.schema if att.portmap is not None else 0)


def map_key(att: Attachment, m: PortMapping) -> Any:
    return layout.map_key(m, att.portmap.schema if att.portmap is not None else 0)


def portmap_missing(att: Attachment, table: Table, owned: list[PortMapping]) -> list[Missing]:
    """Missing DNAT chain or rules and verdict-map elements; only `owned` mappings'
    elements count (a port another attachment holds is not ours to restore)."""
    if att.portmap is None or not owned:
        return []  # a chain no element leads to carries no traffic: nothing to restore
    chain = dnat_chain(att)
    out = chain_missing(table, chain, expected_dnat_rules(att), "chain")
    for m in owned:
        name, key = map_name(att, m), map_key(att, m)
        target = table.element_target(name, key)
        if target != chain:
            what = f"{name} element {format_mapping(m)} -> {chain} is missing" if target is None else \
                f"{name} element {format_mapping(m)} jumps to {target}, not {chain}"
            out.append(Missing(what, [layout.add_elements(name, [layout.verdict_elem(key, chain)])],
                               (m,) if m.protocol in ("udp", "sctp") else ()))
    return out


def format_mapping(m: PortMapping) -> str:
    host = f"{m.host_ip}:" if m.host_ip and ":" not in m.host_ip else f"[{m.host_ip}]:" if m.host_ip else ""
    hport = str(m.host_lo) if m.host_lo == m.host_hi else f"{m.host_lo}-{m.host_hi}"
    cport = str(m.container_lo) if m.host_lo == m.host_hi else f"{m.container_lo}-{m.container_hi}"
    return f"{host}{hport}->{cport}/{m.protocol}"


def overlaps(a: PortMapping, b: PortMapping) -> bool:
    return a.protocol == b.protocol and a.host_lo <= b.host_hi and b.host_lo <= a.host_hi


class Ownership:
    """Who holds each mapping: the port files (portmap/ports.py) and the journals."""

    __slots__ = ("attachments", "root")

    def __init__(self, root: str, attachments: list[Attachment]) -> None:
        self.root = root
        self.attachments = attachments

    def claim_owner(self, m: PortMapping) -> tuple[str, str, str] | None:
        """The owner named by the port file of the mapping's first port (None: no file)."""
        from portmap import ports

        claim = ports.read(ports.port_files(self.root, m)[0])
        if claim is None:
            return None
        return claim.owner.network, claim.owner.container_id, claim.owner.ifname

    def rivals(self, att: Attachment, m: PortMapping) -> list[tuple[Attachment, PortMapping]]:
        """Other attachments whose journal claims an overlapping port on the same hostIP."""
        out = []
        for other in self.attachments:
            if other.key == att.key:
                continue
            for om in other.mappings:
                if overlaps(m, om) and om.host_ip == m.host_ip:
                    out.append((other, om))
        return out

    def owned(self, att: Attachment) -> list[PortMapping]:
        """Mappings this attachment may restore: its port file names it, or there
        is no port file and no other journal claims the port."""
        out = []
        for m in att.mappings:
            owner = self.claim_owner(m)
            if owner == att.key or (owner is None and not self.rivals(att, m)):
                out.append(m)
        return out


def proxy_missing(att: Attachment, present: frozenset[int] | None) -> list[Missing]:
    """The attachment's [::1] proxy listeners whose sockets are not bound: `present`
    holds the cookies of the sockets bound on ::1 on their ports (None: unknown)."""
    record = att.portmap
    proxy = record.proxy if record is not None else None
    if proxy is None or present is None or not proxy.listeners or (record is not None and not record.done):
        return []
    lacking = [li for li in proxy.listeners if not li.cookies or not set(li.cookies) <= present]
    if not lacking:
        return []
    who = f"berth proxy {proxy.pid}" if proxy.mode == PROXY_PROCESS else "the agent's proxy service"
    return [Missing(f"proxy {', '.join(li.describe() for li in lacking)} is not served ({who} does not hold "
                    "the port)", [], proxy=True)]


def proxied_ports(attachments: Iterable[Attachment]) -> dict[str, list[tuple[int, int]]]:
    """Protocol -> the [::1] ports the attachments' proxies serve (one sock_diag request each)."""
    out: dict[str, list[tuple[int, int]]] = {}
    for att in attachments:
        proxy = att.portmap.proxy if att.portmap is not None else None
        for li in proxy.listeners if proxy is not None else ():
            out.setdefault(li.protocol, []).append((li.host_lo, li.host_hi))
    return out


# --- bridge ipMasq -------------------------------------------------------------------------

SET_FORM, MAP_FORM = "set", "map"


def rule_lookups(rules: Iterable[dict[str, Any]]) -> dict[str, set[str]]:
    """Per subnet rule comment (`ipMasq <subnet>`), how CNI-IPMASQ's rules for it find
    the addresses: SET_FORM (@ipmasq-src-…, schema 3) or MAP_FORM (schema 2's lookup
    of the owner map as a set, left on nodes an older berth set up)."""
    out: dict[str, set[str]] = {}
    for rule in rules:
        if rule.get("chain") != layout.IPMASQ_CHAIN or not rule.get("comment"):
            continue
        refs = [m for m in fingerprint(rule)[1] if m.startswith("@")]
        if refs and "masquerade" in fingerprint(rule)[1]:
            form = SET_FORM if refs[0][1:].startswith(layout.IPMASQ_SET_PREFIX) else MAP_FORM
            out.setdefault(str(rule["comment"]), set()).add(form)
    return out


def serves(lookups: dict[str, set[str]], subnet: str, version: int) -> bool:
    """Does a rule masquerade this subnet for an attachment of masq schema `version`?"""
    forms = lookups.get(layout.ipmasq_note(subnet), set())
    return SET_FORM in forms or (version == 2 and MAP_FORM in forms)


def owner_elements(record: MasqRecord) -> dict[str, list[Any]]:
    """The per-subnet owner-map elements ([address, tag]) a per-subnet record names."""
    subnets = [ipaddress.ip_network(s, strict=False) for s in record.subnets]
    out: dict[str, list[Any]] = {}
    for addr in record.addresses:
        ip = ipaddress.ip_address(addr)
        subnet = next((n for n in subnets if n.version == ip.version and ip in n), None)
        if subnet is not None:
            out.setdefault(layout.ipmasq_map_name(str(subnet)), []).append([addr, record.tag or 0])
    return out


def set_elements(record: MasqRecord, lookups: dict[str, set[str]]) -> dict[str, list[str]]:
    """The address-set elements this attachment needs: all of schema 3's; a schema 2
    attachment's only where no rule of its own form serves its subnet."""
    subnets = {layout.ipmasq_map_name(s): s for s in record.subnets}
    out: dict[str, list[str]] = {}
    for name, elems in owner_elements(record).items():
        if record.schema == 2 and MAP_FORM in lookups.get(layout.ipmasq_note(subnets.get(name, "")), set()):
            continue
        out[layout.ipmasq_set_name(name)] = [e[0] for e in elems]
    return out


def masq_chain(att: Attachment) -> str:
    record = att.masq
    return (record.chain if record is not None else "") or \
        layout.masq_chain_name(att.network, att.container_id, att.ifname)


def ipmasq_rules_missing(table: Table, attachments: list[Attachment]) -> list[Missing]:
    """The per-subnet ipMasq rules these attachments need and the table lacks,
    once per subnet (serves: a schema 2 attachment is also served by the rule an
    older berth wrote)."""
    lookups = rule_lookups(table.rules.get(layout.IPMASQ_CHAIN, []))
    out: list[Missing] = []
    seen: set[str] = set()
    for att in attachments:
        record = att.masq
        if record is None or not record.per_subnet:
            continue
        for subnet in record.subnets:
            if subnet in seen or serves(lookups, subnet, record.schema):
                continue
            seen.add(subnet)
            out.append(Missing(f"the ipMasq rule for {subnet} is missing",
                               [layout.add_chain(layout.IPMASQ_CHAIN), *layout.ipmasq_subnet_setup(subnet)]))
    return out


def masq_missing(att: Attachment, table: Table, subnet_rules: bool = True) -> list[Missing]:
    """Missing bridge ipMasq pieces: the attachment's owner-map and address-set
    elements (and, unless subnet_rules is False, its subnets' rules, which
    reconcile plans once per subnet), or for an attachment of an older berth
    its CNI-<hash> chain and masq-v4/-v6 elements; and the bridge in the
    `bridges` set."""
    record = att.masq
    if record is None or record.is_intent:
        return []
    out: list[Missing] = []
    if record.per_subnet:
        if subnet_rules:
            out += ipmasq_rules_missing(table, [att])
        lookups = rule_lookups(table.rules.get(layout.IPMASQ_CHAIN, []))
        subnet_of = {layout.ipmasq_map_name(s): s for s in record.subnets}
        for name, elems in owner_elements(record).items():
            for elem in elems:
                if not table.has_element(name, elem):
                    out.append(Missing(f"map {name} element {elem[0]} is missing",
                                       [layout.ipmasq_map(subnet_of[name]), layout.add_elements(name, [elem])]))
        for name, addrs in set_elements(record, lookups).items():
            for addr in addrs:
                if not table.has_member(name, addr):
                    out.append(Missing(f"set {name} element {addr} is missing",
                                       [layout.ipmasq_set(subnet_of[layout.ipmasq_map_of_set(name)]),
                                        layout.add_elements(name, [addr])]))
    else:
        chain = masq_chain(att)
        subnets = [str(ipaddress.ip_interface(c).network) for c in att.cidrs]
        note = layout.comment(att.network, att.container_id, att.ifname)
        out += chain_missing(table, chain, layout.masq_rules(chain, subnets, note=note), "masquerade chain")
        for name, elems in layout.masq_elements(chain, list(record.addresses) or att.addresses).items():
            for elem in elems:
                if table.element_target(name, elem[0]) is None:
                    out.append(Missing(f"{name} element {elem[0]} -> {chain} is missing",
                                       [layout.add_elements(name, [elem])]))
    bridge = record.bridge or att.bridge_name
    if bridge and not table.has_member(layout.BRIDGES_SET, bridge):
        out.append(Missing(f"bridge {bridge} is missing from set {layout.BRIDGES_SET}",
                           [layout.add_elements(layout.BRIDGES_SET, [bridge])]))
    return out


def masq_present(att: Attachment, table: Table) -> bool:
    """Is any of the attachment's masquerade objects there (its chain, or one of its elements)?"""
    record = att.masq
    if record is None or record.is_intent:
        return False
    if record.per_subnet:
        return any(table.has_element(name, e) for name, elems in owner_elements(record).items() for e in elems)
    return masq_chain(att) in table.chains


# --- isolation --------------------------------------------------------------------------------

def strict_missing(bridges: set[str], table: Table) -> list[Missing]:
    """While a strict network exists every berth bridge belongs in `bridges` (the
    forward chain's gate to CNI-ISOLATION): the journaled ones the table lacks."""
    return [Missing(f"bridge {b} is missing from set {layout.BRIDGES_SET} (a strict network keeps it out)",
                    [layout.add_elements(layout.BRIDGES_SET, [b])])
            for b in sorted(bridges) if not table.has_member(layout.BRIDGES_SET, b)]


def isolation_missing(bridge: str, mode: str, table: Table) -> list[Missing]:
    """The set elements an isolated bridge needs that the table lacks."""
    from portmap import isolation

    out = []
    for name, elems in isolation.elements(bridge, mode).items():
        for elem in elems:
            if not table.has_member(name, elem):
                out.append(Missing(f"bridge {bridge} is missing from set {name}", [layout.add_elements(name, [elem])]))
    return out


# --- the firewall plugin -------------------------------------------------------------------------

def firewall_static_problems(table: Table) -> list[str]:
    """What is missing of the firewall's own chains and sets."""
    if not table.exists:
        return [f"table {layout.FAMILY} {layout.TABLE} is missing"]
    problems = [f"set {name} is missing" for name, _key in layout.FIREWALL_SETS if name not in table.elements]
    return problems + chains_lacking(table, layout.firewall_rules(), (layout.FIREWALL_CHAIN, layout.SAME_BRIDGE_CHAIN))


def firewall_missing(record: FirewallRecord, table: Table, static: bool = True) -> list[Missing]:
    """The firewall's chains and sets (unless `static` is False: reconcile plans them once),
    and the attachment's elements, that the table lacks."""
    out = [Missing(what, layout.firewall_layout()) for what in firewall_static_problems(table)] if static else []
    wanted = layout.firewall_elements(list(record.addresses), record.interface)
    if record.same_bridge:
        wanted.update(layout.same_bridge_elements(record.same_bridge))
    for name, elems in wanted.items():
        for elem in elems:
            if not table.has_member(name, elem):
                shown = " . ".join(elem["concat"]) if isinstance(elem, dict) else str(elem)
                out.append(Missing(f"set {name} element {shown} is missing", [layout.add_elements(name, [elem])]))
    return out
