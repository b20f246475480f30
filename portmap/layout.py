"""berth's nftables layout as plain data: names, the static base layout and the
per-attachment objects, in libnftables JSON (schema 1). Nothing here talks to
the kernel; portmap/nft.py applies what these builders return.

One `inet` table holds both families, so a single transaction covers v4 and v6
and one per-attachment chain holds both families' rules.

    prerouting (nat, -100)  : fib daddr type local -> CNI-HOSTPORT-DNAT
    output     (nat, -100)  : ::1 returns (the userland proxy's); fib daddr type local -> CNI-HOSTPORT-DNAT
    CNI-HOSTPORT-DNAT       : per family with a hostIP, then for any local address:
                              [daddr .] l4proto . dport vmap @hostport[-v4|-v6]          (single ports)
                              l4proto P, daddr . dport vmap @hostports-v4|-v6-P        (ranges, per protocol)
                              l4proto P, dport . sport vmap @hostports-P           (any address: sport 0-65535)
    CNI-DN-<hash>           : the attachment's hairpin/localhost marks, then its DNAT rules
    CNI-HOSTPORT-SETMARK    : meta mark |= markMasqBit
    postrouting (nat, 100)  : -> CNI-HOSTPORT-MASQ; -> CNI-IPMASQ; saddr vmap @masq-v4/-v6 (ipMasq before layout 2)
    CNI-HOSTPORT-MASQ       : marked -> masquerade
    CNI-IPMASQ              : bridge ipMasq, one rule per pod subnet: saddr in set @ipmasq-src-<subnet>
                              (the subnet's attached addresses), daddr outside the subnet and not
                              multicast -> masquerade. Added once per subnet, never flushed
    CNI-<hash>              : an attachment's ipMasq rules, for attachments made before layout 2
    forward (filter, 0)     : -> CNI-ADMIN (operator's, never written); oifname @bridges -> CNI-ISOLATION;
                              bridges + ct dnat accept
    CNI-ISOLATION           : bridge `isolate`: replies/DNAT/same bridge return, else drop between
                              isolated bridges, and between a strict bridge and any berth bridge, both
                              ways (portmap/isolation.py)
    guard (filter, -300)    : drop 127.0.0.0/8 not arriving on lo (CVE-2020-8558)
    firewall (filter, 0)    : the firewall plugin's, made by its first ADD and not part of the static
                              layout above (never flushed by its re-assertion): oifname @same-bridge ->
                              CNI-SAME-BRIDGE; accept to (established) and from the container addresses
                              in @firewall-v4/-v6, elements `address . host interface`
    CNI-SAME-BRIDGE         : ingressPolicy same-bridge: traffic staying on its bridge returns, traffic
                              from another same-bridge bridge is dropped

Every construct here is one that the kernels berth supports accept (the
matrix in tests/vm): Linux 5.10 and 6.1 refuse a lookup of a map used as a
set, and 6.12 stable builds refuse interval (pipapo) lookups whose key
concatenates `meta l4proto`. Hence ranges are split by protocol and keyed on
the port (hostIP . port, or port . any source port), and ipMasq looks
addresses up in a plain set beside the map that records their owners.

hostPort dispatch: a single port (the common case) is an element of the hash
maps hostport/-v4/-v6 (no `interval` flag: libnftables adds and deletes their
elements without fetching the map), a port range one of the interval maps
hostports[-v4|-v6]-<protocol>. Older berths put ranges (before journal layout
3) and single ports too (before layout 2) in interval maps keyed on
`[daddr .] l4proto . dport` (hostports, hostports-v4, hostports-v6); those
elements stay where they are until their attachment goes, and the DNAT chain
keeps a lookup of each such map that exists (LEGACY_RANGE_MAPS; never created
by this berth, so never on a kernel that refuses them).

The static part is re-asserted (add is a no-op when present, static chains are
add+flush+refill) by a portmap ADD whenever the ruleset changed behind berth's
back (portmap/generation.py), and by the first ipMasq ADD of a subnet; its cost
never depends on how many attachments exist. CNI-ADMIN and CNI-IPMASQ are only
ever `add`ed, never flushed.
"""

from __future__ import annotations

from _sha512 import sha512  # builtin: hashlib would import OpenSSL on every exec

from cni import addrs
from cni.records import MASQ_SCHEMA, PORTMAP_SCHEMA, PortMapping

TYPE_CHECKING = False  # mypy treats this name as True: typing stays off the exec path
if TYPE_CHECKING:
    from typing import Any

    Cmd = dict[str, Any]
    Expr = dict[str, Any]

FAMILY = "inet"
TABLE = "berth"

DNAT_CHAIN = "CNI-HOSTPORT-DNAT"
SETMARK_CHAIN = "CNI-HOSTPORT-SETMARK"
MASQ_CHAIN = "CNI-HOSTPORT-MASQ"
ADMIN_CHAIN = "CNI-ADMIN"
IPMASQ_CHAIN = "CNI-IPMASQ"  # one masquerade rule per pod subnet (bridge ipMasq)
IPMASQ_PREFIX = "ipmasq-"  # + the subnet: the map of that subnet's attached addresses -> owner tag
IPMASQ_SET_PREFIX = "ipmasq-src-"  # + the subnet: the set the subnet's rule looks addresses up in
IPMASQ_LAYOUT = MASQ_SCHEMA  # the schemas are cni/records.py's
GUARD_CHAIN = "guard"

PROTOCOLS = ("tcp", "udp", "sctp")
# single ports: exact-match (hash) verdict maps keyed [daddr .] l4proto . dport
HOSTPORT_MAP = "hostport"
HOSTPORT_V4_MAP = "hostport-v4"
HOSTPORT_V6_MAP = "hostport-v6"
# port ranges: interval maps, one per protocol, keyed [daddr .] dport (range_map_name)
HOSTPORTS_MAP = "hostports"
HOSTPORTS_V4_MAP = "hostports-v4"
HOSTPORTS_V6_MAP = "hostports-v6"
# interval maps keyed [daddr .] l4proto . dport of older berths (see the module docstring)
LEGACY_RANGE_MAPS = (HOSTPORTS_V4_MAP, HOSTPORTS_V6_MAP, HOSTPORTS_MAP)
PORTMAP_LAYOUT = PORTMAP_SCHEMA
MASQ_V4_MAP = "masq-v4"
MASQ_V6_MAP = "masq-v6"
ISOLATION_CHAIN = "CNI-ISOLATION"
BRIDGES_SET = "bridges"  # berth's bridges: those of ipMasq and isolated networks, all of them while one is strict
ISOLATED_SET = "isolated"  # bridges of isolate: true|"strict" networks
STRICT_SET = "strict"  # bridges of isolate: "strict" networks
SELF_SET = "isolated-self"  # `br . br` per isolated bridge: traffic staying on its bridge

DEFAULT_MASQ_BIT = 13
CHAIN_NAME_LENGTH = 28  # upstream utils.maxChainLength (iptables' limit minus NUL)
DEFAULT_IFNAME = "eth0"


# name, type, hook, priority (the knftables nftablesBaseChains idea)
BASE_CHAINS: tuple[tuple[str, str, str, int], ...] = (
    (GUARD_CHAIN, "filter", "prerouting", -300),
    ("prerouting", "nat", "prerouting", -100),
    # 1.0.6 refuses the keyword "dstnat" on output: write the number
    ("output", "nat", "output", -100),
    ("postrouting", "nat", "postrouting", 100),
    ("forward", "filter", "forward", 0),
)

# name -> key type of the plain sets the forward chain looks up
SETS: tuple[tuple[str, list[str] | str], ...] = (
    (BRIDGES_SET, "ifname"),
    (ISOLATED_SET, "ifname"),
    (STRICT_SET, "ifname"),
    (SELF_SET, ["ifname", "ifname"]),
)




def range_map_name(version: int | None, protocol: str) -> str:
    """`hostports-tcp`, `hostports-v4-udp`: the interval map of one protocol's ranges."""
    return f"{ {None: HOSTPORTS_MAP, 4: HOSTPORTS_V4_MAP, 6: HOSTPORTS_V6_MAP}[version]}-{protocol}"


# the DNAT chain's lookups, hostIP-specific ones first: (map, family or None, protocol or None for the hash maps)
DISPATCH: tuple[tuple[str, int | None, str | None], ...] = tuple(
    entry for version, exact in ((4, HOSTPORT_V4_MAP), (6, HOSTPORT_V6_MAP), (None, HOSTPORT_MAP))
    for entry in ((exact, version, None), *((range_map_name(version, p), version, p) for p in PROTOCOLS)))
# every hostPort dispatch map a berth may have put an element in
HOSTPORT_MAPS = tuple(name for name, _v, _p in DISPATCH) + LEGACY_RANGE_MAPS


def _map_key_type(version: int | None, protocol: str | None) -> list[str] | str:
    addr = {None: [], 4: ["ipv4_addr"], 6: ["ipv6_addr"]}[version]
    if protocol is None:
        return [*addr, "inet_proto", "inet_service"]
    # ranges for any address: dport . sport with every source port, so that the map
    # is a concatenation too (see ANY_SOURCE_PORT)
    return [*addr, "inet_service"] if addr else ["inet_service", "inet_service"]


# name -> key type, interval flag; every map is a verdict map
MAPS: tuple[tuple[str, list[str] | str, bool], ...] = (
    *((name, _map_key_type(version, proto), proto is not None) for name, version, proto in DISPATCH),
    (MASQ_V4_MAP, "ipv4_addr", False),
    (MASQ_V6_MAP, "ipv6_addr", False),
)
# how the legacy interval maps were declared (DEL of their elements asserts them)
LEGACY_MAPS: tuple[tuple[str, list[str] | str, bool], ...] = tuple(
    (name, _map_key_type(version, None), True)
    for name, version in ((HOSTPORTS_V4_MAP, 4), (HOSTPORTS_V6_MAP, 6), (HOSTPORTS_MAP, None)))

# The second field of the any-address range maps. A range map keyed on the port
# alone would be an interval set of one field, whose elements libnftables 1.0.6
# checks for overlaps itself against the elements it first reads from the
# kernel (a read that fails in a transaction that also creates the map); the
# elements of a concatenation are left to the kernel's pipapo set. `meta
# l4proto . th dport` cannot be the concatenation (6.12 stable refuses its
# lookups), `th dport . th sport` with every source port can.
ANY_SOURCE_PORT: dict[str, list[int]] = {"range": [0, 65535]}

V4_MULTICAST = "224.0.0.0/4"
V6_MULTICAST = "ff00::/8"
V4_LOOPBACK = "127.0.0.0/8"
V6_LOOPBACK = "::1"


# --- names -------------------------------------------------------------------

def hash_input(network: str, container_id: str, ifname: str) -> str:
    """What the chain hash covers: upstream's name+containerID; a second interface
    of the same container on the same network (Multus) appends its ifname so
    the two attachments get distinct chains. eth0 keeps upstream's names."""
    if ifname and ifname != DEFAULT_IFNAME:
        return f"{network}{container_id}/{ifname}"
    return f"{network}{container_id}"


def format_chain_name(prefix: str, to_hash: str) -> str:
    """upstream utils.MustFormatHashWithPrefix(28, prefix, toHash)."""
    digest: str = sha512(to_hash.encode()).hexdigest()
    return (prefix + digest)[:CHAIN_NAME_LENGTH]


def dnat_chain_name(network: str, container_id: str, ifname: str = DEFAULT_IFNAME) -> str:
    """upstream portmap: utils.MustFormatChainNameWithPrefix(name, id, "DN-")."""
    return format_chain_name("CNI-DN-", hash_input(network, container_id, ifname))


def masq_chain_name(network: str, container_id: str, ifname: str = DEFAULT_IFNAME) -> str:
    """upstream bridge ipMasq: utils.FormatChainName(name, id)."""
    return format_chain_name("CNI-", hash_input(network, container_id, ifname))


def comment(network: str, container_id: str, ifname: str) -> str:
    return f"net: {network}, if: {ifname}, id: {container_id}"[:128]


# --- expression helpers ----------------------------------------------------

def _obj(kind: str, **fields: Any) -> dict[str, Any]:
    return {kind: {"family": FAMILY, "table": TABLE, **fields}}


def meta(key: str) -> Expr:
    return {"meta": {"key": key}}


def payload(protocol: str, field: str) -> Expr:
    return {"payload": {"protocol": protocol, "field": field}}


def match(left: Any, right: Any, op: str = "==") -> Expr:
    return {"match": {"op": op, "left": left, "right": right}}


def prefix(cidr: str) -> Any:
    address, bits, width = addrs.network(cidr)
    if bits == width:
        return address
    return {"prefix": {"addr": address, "len": bits}}


def ip_proto(version: int) -> str:
    return "ip" if version == 4 else "ip6"


def jump(target: str) -> Expr:
    return {"jump": {"target": target}}


COUNTER: Expr = {"counter": None}


def port_value(lo: int, hi: int) -> Any:
    return lo if lo == hi else {"range": [lo, hi]}


# --- commands ----------------------------------------------------------------

def add_table() -> Cmd:
    return {"add": {"table": {"family": FAMILY, "name": TABLE}}}


def add_chain(name: str, base: tuple[str, int, str] | None = None) -> Cmd:
    fields: dict[str, Any] = {"name": name}
    if base is not None:
        kind, prio, hook = base
        fields.update(type=kind, hook=hook, prio=prio, policy="accept")
    return {"add": _obj("chain", **fields)}


def flush_chain(name: str) -> Cmd:
    return {"flush": _obj("chain", name=name)}


def delete_chain(name: str) -> Cmd:
    return {"delete": _obj("chain", name=name)}


def add_rule(chain: str, *expr: Expr, note: str | None = None) -> Cmd:
    fields: dict[str, Any] = {"chain": chain, "expr": list(expr)}
    if note:
        fields["comment"] = note
    return {"add": _obj("rule", **fields)}


def _element(verb: str, name: str, elems: list[Any]) -> Cmd:
    return {verb: _obj("element", name=name, elem=elems)}


def add_elements(name: str, elems: list[Any]) -> Cmd:
    return _element("add", name, elems)


def delete_elements(name: str, elems: list[Any]) -> Cmd:
    return _element("delete", name, elems)


def verdict_elem(key: Any, chain: str) -> list[Any]:
    return [key, jump(chain)]


def base_layout(external_setmark: str | None = None, legacy_maps: tuple[str, ...] = ()) -> list[Cmd]:
    """The static skeleton. Idempotent; re-asserted inside an ADD transaction when
    the ruleset changed behind berth's back (portmap/generation.py).
    The mark chains are only created here: their rules depend on portmap's
    markMasqBit, so only portmap fills them (mark_layout). `legacy_maps`: the
    LEGACY_RANGE_MAPS that exist in the kernel (nft.existing), whose elements
    the DNAT chain must keep looking up."""
    cmds: list[Cmd] = [add_table()]
    for name, key, interval in MAPS:
        fields: dict[str, Any] = {"name": name, "type": key, "map": "verdict"}
        if interval:
            fields["flags"] = ["interval"]
        cmds.append({"add": _obj("map", **fields)})
    cmds += add_sets()
    # user chains before the base chains that jump to them
    cmds.append(add_chain(ADMIN_CHAIN))  # operator-owned: add only, never flush
    cmds.append(add_chain(IPMASQ_CHAIN))  # its rules are added once per subnet: never flushed either
    if external_setmark:
        cmds.append(add_chain(external_setmark))  # operator-owned as well
    cmds += [add_chain(SETMARK_CHAIN), add_chain(MASQ_CHAIN), add_chain(DNAT_CHAIN), flush_chain(DNAT_CHAIN)]
    cmds += [add_chain(ISOLATION_CHAIN), flush_chain(ISOLATION_CHAIN), *isolation_rules()]
    for name, kind, hook, prio in BASE_CHAINS:
        cmds += [add_chain(name, (kind, prio, hook)), flush_chain(name)]

    local = match({"fib": {"result": "type", "flags": ["daddr"]}}, "local")
    cmds += [
        add_rule(GUARD_CHAIN, match(meta("iifname"), "lo", "!="),
                 match(payload("ip", "daddr"), prefix(V4_LOOPBACK)), COUNTER, {"drop": None}),
        add_rule("prerouting", local, jump(DNAT_CHAIN)),
        # ::1 cannot be DNAT'ed (what leaves lo with that source is dropped): berth's userland
        # proxy answers there (portmap/proxy.py), so connections to it keep their address
        add_rule("output", match(payload("ip6", "daddr"), V6_LOOPBACK), {"return": None}),
        add_rule("output", local, jump(DNAT_CHAIN)),
        # a specific hostIP wins over "any local address"; a port lives in one
        # map of each pair (ports.py refuses overlaps), so no vmap shadows another
        *hostport_rules(legacy_maps),
        add_rule("postrouting", jump(MASQ_CHAIN)),
        add_rule("postrouting", jump(IPMASQ_CHAIN)),
        add_rule("postrouting", {"vmap": {"key": payload("ip", "saddr"), "data": "@" + MASQ_V4_MAP}}),
        add_rule("postrouting", {"vmap": {"key": payload("ip6", "saddr"), "data": "@" + MASQ_V6_MAP}}),
        add_rule("forward", jump(ADMIN_CHAIN)),
        # one lookup for every forwarded packet; only traffic into a berth bridge goes on
        add_rule("forward", match(meta("oifname"), "@" + BRIDGES_SET), jump(ISOLATION_CHAIN)),
        add_rule("forward", match(meta("iifname"), "@" + BRIDGES_SET), {"accept": None}),
        add_rule("forward", match(meta("oifname"), "@" + BRIDGES_SET), {"accept": None}),
        add_rule("forward", match({"ct": {"key": "status"}}, "dnat", "in"), {"accept": None}),
    ]
    return cmds


def hostport_rules(legacy_maps: tuple[str, ...] = ()) -> list[Cmd]:
    """CNI-HOSTPORT-DNAT: one vmap rule per map of DISPATCH, in its order; after
    each family's own, a lookup of its legacy interval map when that exists."""
    dport = payload("th", "dport")
    daddr: dict[int | None, list[Expr]] = {4: [payload("ip", "daddr")], 6: [payload("ip6", "daddr")], None: []}
    legacy = {4: HOSTPORTS_V4_MAP, 6: HOSTPORTS_V6_MAP, None: HOSTPORTS_MAP}
    cmds = []
    for name, version, proto in DISPATCH:
        if proto is None:
            key: Expr = {"concat": [*daddr[version], meta("l4proto"), dport]}
            cmds.append(add_rule(DNAT_CHAIN, {"vmap": {"key": key, "data": "@" + name}}))
            continue
        key = {"concat": [*daddr[version], dport] if daddr[version] else [dport, payload("th", "sport")]}
        cmds.append(add_rule(DNAT_CHAIN, match(meta("l4proto"), proto), {"vmap": {"key": key, "data": "@" + name}}))
        if proto == PROTOCOLS[-1] and legacy[version] in legacy_maps:
            key = {"concat": [*daddr[version], meta("l4proto"), dport]}
            cmds.append(add_rule(DNAT_CHAIN, {"vmap": {"key": key, "data": "@" + legacy[version]}}))
    return cmds


def add_sets() -> list[Cmd]:
    return [{"add": _obj("set", name=name, type=key)} for name, key in SETS]


def isolation_rules() -> list[Cmd]:
    """CNI-ISOLATION, entered only for packets leaving through a berth bridge. A
    constant six rules however many networks are isolated: which bridges are
    isolated or strict lives in the sets, so a network costs elements only.
    Replies of allowed connections, and DNAT'ed traffic (published ports
    reached through the node's address, as Docker allows), pass; so does
    traffic routed back into the bridge it came from (two subnets on one
    bridge, br_netfilter). Then: nothing between two isolated bridges, nothing
    from any berth bridge into a strict one, nothing from a strict one into
    any berth bridge (the gate made the output a berth bridge). `return`
    rather than accept: the forward chain goes on."""
    ifpair = {"concat": [meta("iifname"), meta("oifname")]}
    return [
        add_rule(ISOLATION_CHAIN, match({"ct": {"key": "state"}}, ["established", "related"], "in"), {"return": None}),
        add_rule(ISOLATION_CHAIN, match({"ct": {"key": "status"}}, "dnat", "in"), {"return": None}),
        add_rule(ISOLATION_CHAIN, match(ifpair, "@" + SELF_SET), {"return": None}),
        add_rule(ISOLATION_CHAIN, match(meta("iifname"), "@" + ISOLATED_SET),
                 match(meta("oifname"), "@" + ISOLATED_SET), COUNTER, {"drop": None}),
        add_rule(ISOLATION_CHAIN, match(meta("oifname"), "@" + STRICT_SET),
                 match(meta("iifname"), "@" + BRIDGES_SET), COUNTER, {"drop": None}),
        add_rule(ISOLATION_CHAIN, match(meta("iifname"), "@" + STRICT_SET), COUNTER, {"drop": None}),
    ]


def mark_layout(mark_bit: int = DEFAULT_MASQ_BIT) -> list[Cmd]:
    """CNI-HOSTPORT-SETMARK / -MASQ with portmap's markMasqBit (add+flush+refill)."""
    mark = 1 << mark_bit
    return [
        flush_chain(SETMARK_CHAIN),
        add_rule(SETMARK_CHAIN, COUNTER, {"mangle": {"key": meta("mark"), "value": {"|": [meta("mark"), mark]}}}),
        flush_chain(MASQ_CHAIN),
        add_rule(MASQ_CHAIN, match({"&": [meta("mark"), mark]}, mark), COUNTER, {"masquerade": None}),
    ]


# --- port mappings -------------------------------------------------------------

def per_protocol(m: PortMapping, version: int) -> bool:
    """Does the element of a journal of this schema live in a per-protocol range map?"""
    return version >= 3 and m.host_lo != m.host_hi


def map_name(m: PortMapping, version: int = PORTMAP_LAYOUT) -> str:
    """The verdict map holding the mapping's element, for a journal of schema
    `version`: a single port in the hash maps (hostport*, from 2), a range in
    its protocol's interval map (from 3), else the legacy interval maps."""
    if version >= 2 and m.host_lo == m.host_hi:
        return {None: HOSTPORT_MAP, 4: HOSTPORT_V4_MAP, 6: HOSTPORT_V6_MAP}[m.host_version]
    if per_protocol(m, version):
        return range_map_name(m.host_version, m.protocol)
    return {None: HOSTPORTS_MAP, 4: HOSTPORTS_V4_MAP, 6: HOSTPORTS_V6_MAP}[m.host_version]


def map_key(m: PortMapping, version: int = PORTMAP_LAYOUT) -> Any:
    ports = port_value(m.host_lo, m.host_hi)
    if per_protocol(m, version):
        return {"concat": [m.host_ip, ports] if m.host_ip else [ports, ANY_SOURCE_PORT]}
    if m.host_ip:
        return {"concat": [m.host_ip, m.protocol, ports]}
    return {"concat": [m.protocol, ports]}


def _dnat_target(m: PortMapping, addr: str, version: int) -> Expr:
    fam = ip_proto(version)
    if m.host_lo == m.host_hi:
        return {"dnat": {"family": fam, "addr": addr, "port": m.container_lo}}
    if m.container_lo == m.host_lo:
        # in-range ports are kept by NAT: same range on both sides needs no port
        return {"dnat": {"family": fam, "addr": addr}}
    # shifted range: one rule with an anonymous map hostPort -> addr . containerPort
    pairs = [[m.host_lo + i, {"concat": [addr, m.container_lo + i]}] for i in range(m.host_hi - m.host_lo + 1)]
    return {"dnat": {"family": fam, "addr": {"map": {"key": payload("th", "dport"), "data": {"set": pairs}}}}}


def dnat_rules(chain: str, mappings: list[PortMapping], addresses: list[str], *, snat: bool = True,
               masq_all: bool = False, setmark_chain: str = SETMARK_CHAIN, note: str | None = None,
               conditions: dict[int, list[Expr]] | None = None) -> list[Cmd]:
    """The rules of CNI-DN-<hash>: first the marks for hairpin (the container
    reaching its own hostPort) and localhost (v4 only: ::1 cannot be NATed)
    traffic, once per container address, then one DNAT per mapping and address.

    A packet is only ever here because one of this attachment's map elements
    matched its protocol, port (and hostIP), so the marks need not repeat those
    matches per mapping, as upstream's per-port iptables rules do: fewer rules
    is less for the kernel to re-validate on every transaction that adds a
    jump (it walks every chain the base chains reach, at 1,000 attachments
    about as long as the rest of the transaction)."""
    cmds: list[Cmd] = []
    marked: set[tuple[int, str]] = set()
    for addr in addresses if snat else []:
        version = addrs.version(addr)
        if not any(m.applies_to(version) for m in mappings):
            continue
        fam = ip_proto(version)
        base: list[Expr] = [match(meta("nfproto"), "ipv4" if version == 4 else "ipv6")]
        base += (conditions or {}).get(version, [])
        sources = [""] if masq_all else [addr] + ([V4_LOOPBACK] if version == 4 else [])
        for source in sources:
            if (version, source) in marked:
                continue  # masqAll, or a second address of the family: one rule does
            marked.add((version, source))
            cond = [match(payload(fam, "saddr"), prefix(source))] if source else []
            cmds.append(add_rule(chain, *base, *cond, jump(setmark_chain), note=note))
    for m in mappings:
        for addr in addresses:
            version = addrs.version(addr)
            if not m.applies_to(version):
                continue
            fam = ip_proto(version)
            base = [match(meta("nfproto"), "ipv4" if version == 4 else "ipv6")]
            base += (conditions or {}).get(version, [])
            if m.host_ip:
                base.append(match(payload(fam, "daddr"), m.host_ip))
            ports = port_value(m.host_lo, m.host_hi)
            base += [match(meta("l4proto"), m.protocol), match(payload("th", "dport"), ports)]
            cmds.append(add_rule(chain, *base, COUNTER, _dnat_target(m, addr, version), note=note))
    return cmds


def attachment_add(chain: str, mappings: list[PortMapping], addresses: list[str], *, snat: bool = True,
                   masq_all: bool = False, external_setmark: str | None = None,
                   note: str | None = None, conditions: dict[int, list[Expr]] | None = None) -> list[Cmd]:
    """The attachment's part of an ADD: chain add+flush+rules, then its map elements."""
    setmark = external_setmark or SETMARK_CHAIN
    cmds = [add_chain(chain), flush_chain(chain)]
    cmds += dnat_rules(chain, mappings, addresses, snat=snat, masq_all=masq_all, setmark_chain=setmark, note=note,
                       conditions=conditions)
    for map_name, elems in elements_by_map(chain, mappings).items():
        cmds.append(add_elements(map_name, elems))
    return cmds


def elements_by_map(chain: str, mappings: list[PortMapping], version: int = PORTMAP_LAYOUT) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for m in mappings:
        out.setdefault(map_name(m, version), []).append(verdict_elem(map_key(m, version), chain))
    return out


def portmap_del(chain: str, elements: dict[str, list[Any]], keep_chain: bool = False) -> list[Cmd]:
    """The DEL transaction: add-then-delete our elements (absence-tolerant; the
    caller passes only elements it still owns), then add+flush+delete the chain
    (unless `keep_chain`: another attachment uses it too). The table is asserted
    first so a DEL on a node without it still succeeds."""
    cmds: list[Cmd] = [add_table()]
    for name, key, interval in MAPS + LEGACY_MAPS:
        if name in elements:
            fields: dict[str, Any] = {"name": name, "type": key, "map": "verdict"}
            if interval:
                fields["flags"] = ["interval"]
            cmds.append({"add": _obj("map", **fields)})
    cmds += [add_chain(chain)]
    for name, elems in elements.items():
        if elems:
            cmds += [add_elements(name, elems), delete_elements(name, elems)]
    if not keep_chain:
        cmds += [flush_chain(chain), delete_chain(chain)]
    return cmds


# --- bridge ipMasq -------------------------------------------------------------
#
# Per pod subnet: a set of the subnet's attached addresses, which the subnet's one
# rule in CNI-IPMASQ looks up, and a map of the same addresses to their
# attachment's tag, which says who owns each (an add of {addr: tag} fails when
# another attachment holds the address, so a DEL, add-then-delete of its own
# map and set elements in one transaction, removes nothing of another's). An
# ADD whose subnet already has its set only adds elements: no rule, no jump, so
# the kernel does not re-validate the ruleset and the transaction costs the
# same with 1 or 1,000 attachments. Upstream's ipMasq matches the same packets:
# from the container's address, to anything outside that address's subnet and
# not multicast. Layout 2 had no set: its rule looked the map up as a set.

def ipmasq_map_name(subnet: str) -> str:
    """`ipmasq-10.88.0.0-16`, `ipmasq-fd00.88..-64`: readable, and a plain nft identifier."""
    import ipaddress  # lazily: a portmap ADD needs no network arithmetic
    net = ipaddress.ip_network(subnet, strict=False)
    return IPMASQ_PREFIX + f"{net.network_address}-{net.prefixlen}".replace(":", ".")


def ipmasq_set_name(map_name: str) -> str:
    """The address set beside an owner map: `ipmasq-10.88.0.0-16` -> `ipmasq-src-10.88.0.0-16`."""
    return IPMASQ_SET_PREFIX + map_name[len(IPMASQ_PREFIX):]


def ipmasq_map_of_set(set_name: str) -> str:
    return IPMASQ_PREFIX + set_name[len(IPMASQ_SET_PREFIX):]


def is_ipmasq_map(name: str) -> bool:
    return name.startswith(IPMASQ_PREFIX) and not name.startswith(IPMASQ_SET_PREFIX)


def ipmasq_tag(network: str, container_id: str, ifname: str = DEFAULT_IFNAME) -> int:
    """The attachment's 32-bit tag (the map elements' data): a hash of the three
    names joined by a character none of them may contain, so no two attachments
    hash the same string (as the chain names' input, network + containerID, can)."""
    return _tag(f"{network}\n{container_id}\n{ifname}")


def legacy_ipmasq_tag(network: str, container_id: str, ifname: str = DEFAULT_IFNAME) -> int:
    """The tag berth used before ipmasq_tag: from the chain names' input."""
    return _tag(hash_input(network, container_id, ifname))


def _tag(text: str) -> int:
    return int(sha512(text.encode()).hexdigest()[:8], 16)


def ipmasq_map(subnet: str) -> Cmd:
    import ipaddress
    return _ipmasq_map(ipmasq_map_name(subnet), ipaddress.ip_network(subnet, strict=False).version)


def ipmasq_set(subnet: str) -> Cmd:
    import ipaddress
    return _ipmasq_set(ipmasq_set_name(ipmasq_map_name(subnet)), ipaddress.ip_network(subnet, strict=False).version)


def _ipmasq_map(name: str, version: int) -> Cmd:
    return {"add": _obj("map", name=name, type="ipv4_addr" if version == 4 else "ipv6_addr", map="mark")}


def _ipmasq_set(name: str, version: int) -> Cmd:
    return {"add": _obj("set", name=name, type="ipv4_addr" if version == 4 else "ipv6_addr")}


def ipmasq_rule(subnet: str) -> Cmd:
    import ipaddress
    net = ipaddress.ip_network(subnet, strict=False)
    fam = ip_proto(net.version)
    mcast = V4_MULTICAST if net.version == 4 else V6_MULTICAST
    source = "@" + ipmasq_set_name(ipmasq_map_name(subnet))
    return add_rule(IPMASQ_CHAIN, match(payload(fam, "saddr"), source),
                    match(payload(fam, "daddr"), prefix(str(net)), "!="),
                    match(payload(fam, "daddr"), prefix(mcast), "!="), COUNTER, {"masquerade": None},
                    note=ipmasq_note(str(net)))


def ipmasq_note(subnet: str) -> str:
    return f"ipMasq {subnet}"


def ipmasq_subnet_setup(subnet: str) -> list[Cmd]:
    """What a subnet's first attachment adds: its owner map, address set and rule."""
    return [ipmasq_map(subnet), ipmasq_set(subnet), ipmasq_rule(subnet)]


def ipmasq_subnets(cidrs: list[str]) -> list[str]:
    """The subnets of the attachment's addresses (prefix length as given), in order, once each."""
    import ipaddress
    out: list[str] = []
    for cidr in cidrs:
        subnet = str(ipaddress.ip_interface(cidr).network)
        if subnet not in out:
            out.append(subnet)
    return out


def ipmasq_elements(cidrs: list[str], tag: int) -> dict[str, list[Any]]:
    """Owner map name -> [address, tag] elements of the attachment's addresses."""
    import ipaddress
    out: dict[str, list[Any]] = {}
    for cidr in cidrs:
        iface = ipaddress.ip_interface(cidr)
        out.setdefault(ipmasq_map_name(str(iface.network)), []).append([str(iface.ip), tag])
    return out


def ipmasq_add(cidrs: list[str], tag: int, bridge: str | None, new_subnets: list[str],
               legacy_maps: tuple[str, ...] = ()) -> list[Cmd]:
    """The ADD transaction: for subnets that have no set yet (a first attachment,
    or after a flush) the static layout, the map, set and rule; then the elements."""
    cmds: list[Cmd] = []
    if new_subnets:
        cmds += base_layout(legacy_maps=legacy_maps)
        for subnet in new_subnets:
            cmds += ipmasq_subnet_setup(subnet)
    for name, elems in ipmasq_elements(cidrs, tag).items():
        cmds += [add_elements(name, elems), add_elements(ipmasq_set_name(name), [e[0] for e in elems])]
    if bridge:
        cmds.append(add_elements(BRIDGES_SET, [bridge]))
    return cmds


def ipmasq_del(elements: dict[str, list[Any]]) -> list[Cmd]:
    """The DEL transaction: add-then-delete each owner-map element and its address
    in the set (absence-tolerant; the add fails if another attachment's tag holds
    the address, and then nothing changes). Map and set are asserted with their
    key type, taken from the element."""
    cmds: list[Cmd] = [add_table()]
    for name, elems in elements.items():
        version = addrs.version(elems[0][0])
        members = [e[0] for e in elems]
        set_name = ipmasq_set_name(name)
        cmds += [_ipmasq_map(name, version), add_elements(name, elems), delete_elements(name, elems),
                 _ipmasq_set(set_name, version), add_elements(set_name, members), delete_elements(set_name, members)]
    return cmds


def masq_rules(chain: str, subnets: list[str], note: str | None = None) -> list[Cmd]:
    """upstream ipMasq: traffic to the pod subnet and multicast leaves untouched,
    everything else is masqueraded."""
    import ipaddress

    cmds: list[Cmd] = []
    for cidr in subnets:
        net = ipaddress.ip_network(cidr, strict=False)
        fam = ip_proto(net.version)
        cmds.append(add_rule(chain, match(payload(fam, "daddr"), prefix(cidr)), {"accept": None}, note=note))
    versions = sorted({ipaddress.ip_network(c, strict=False).version for c in subnets})
    for version in versions:
        fam = ip_proto(version)
        mcast = V4_MULTICAST if version == 4 else V6_MULTICAST
        cmds.append(add_rule(chain, match(payload(fam, "daddr"), prefix(mcast), "!="), COUNTER,
                             {"masquerade": None}, note=note))
    return cmds


def masq_elements(chain: str, addresses: list[str]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for addr in addresses:
        version = addrs.version(addr)
        out.setdefault(MASQ_V4_MAP if version == 4 else MASQ_V6_MAP, []).append(verdict_elem(addr, chain))
    return out


# --- the firewall plugin ---------------------------------------------------------
#
# Upstream's firewall plugin adds, per container address, an accept of traffic
# from the address and of established traffic to it (iptables CNI-FORWARD), and
# for ingressPolicy same-bridge two rules per bridge (CNI-ISOLATION-STAGE-1/2).
# Here the rules are constant and the addresses and bridges are set elements:
# a container costs elements, never a rule, so its ADD does not make the kernel
# re-validate any chain. Addresses are keyed with the host-side interface their
# traffic uses (the bridge, or a ptp host veth): two networks may lease the same
# address, never on one interface. The chains are not in base_layout: its
# re-assertion flushes the base chains, and the firewall's are the firewall's.

FIREWALL_CHAIN = "firewall"
SAME_BRIDGE_CHAIN = "CNI-SAME-BRIDGE"
FIREWALL_V4_SET = "firewall-v4"
FIREWALL_V6_SET = "firewall-v6"
SAME_BRIDGE_SET = "same-bridge"
SAME_BRIDGE_SELF_SET = "same-bridge-self"  # `br . br`: traffic staying on its bridge
FIREWALL_SETS: tuple[tuple[str, list[str] | str], ...] = (
    (FIREWALL_V4_SET, ["ipv4_addr", "ifname"]),
    (FIREWALL_V6_SET, ["ipv6_addr", "ifname"]),
    (SAME_BRIDGE_SET, "ifname"),
    (SAME_BRIDGE_SELF_SET, ["ifname", "ifname"]),
)
FIREWALL_BASE = ("filter", 0, "forward")


def firewall_sets() -> list[Cmd]:
    return [{"add": _obj("set", name=name, type=key)} for name, key in FIREWALL_SETS]


def firewall_rules() -> list[Cmd]:
    """The rules of the two firewall chains (constant: the sets hold the rest)."""
    ifpair = {"concat": [meta("iifname"), meta("oifname")]}
    established = match({"ct": {"key": "state"}}, ["established", "related"], "in")
    cmds = [
        add_rule(SAME_BRIDGE_CHAIN, match(ifpair, "@" + SAME_BRIDGE_SELF_SET), {"return": None}),
        add_rule(SAME_BRIDGE_CHAIN, match(meta("iifname"), "@" + SAME_BRIDGE_SET), COUNTER, {"drop": None}),
        add_rule(FIREWALL_CHAIN, match(meta("oifname"), "@" + SAME_BRIDGE_SET), jump(SAME_BRIDGE_CHAIN)),
    ]
    for version, name in ((4, FIREWALL_V4_SET), (6, FIREWALL_V6_SET)):
        fam = ip_proto(version)
        to_container = {"concat": [payload(fam, "daddr"), meta("oifname")]}
        from_container = {"concat": [payload(fam, "saddr"), meta("iifname")]}
        cmds += [add_rule(FIREWALL_CHAIN, match(to_container, "@" + name), established, {"accept": None}),
                 add_rule(FIREWALL_CHAIN, match(from_container, "@" + name), {"accept": None})]
    return cmds


def firewall_layout() -> list[Cmd]:
    """The firewall's own objects (idempotent; its chains add+flush+refill)."""
    return [add_table(), *firewall_sets(), add_chain(SAME_BRIDGE_CHAIN), flush_chain(SAME_BRIDGE_CHAIN),
            add_chain(FIREWALL_CHAIN, FIREWALL_BASE), flush_chain(FIREWALL_CHAIN), *firewall_rules()]


def firewall_elements(addresses: list[str], interface: str) -> dict[str, list[Any]]:
    """Set name -> the `address . interface` elements of these container addresses."""
    out: dict[str, list[Any]] = {}
    for addr in addresses:
        version = addrs.version(addr)
        out.setdefault(FIREWALL_V4_SET if version == 4 else FIREWALL_V6_SET, []).append(
            {"concat": [addr, interface]})
    return out


def same_bridge_elements(bridge: str) -> dict[str, list[Any]]:
    return {SAME_BRIDGE_SET: [bridge], SAME_BRIDGE_SELF_SET: [{"concat": [bridge, bridge]}]}


def firewall_add(elements: dict[str, list[Any]], layout: bool) -> list[Cmd]:
    """ADD's transaction: the firewall's objects when they may be missing, then the elements."""
    cmds = firewall_layout() if layout else []
    return cmds + [add_elements(name, elems) for name, elems in elements.items() if elems]


def firewall_del(elements: dict[str, list[Any]]) -> list[Cmd]:
    """DEL's transaction: add-then-delete of the elements (absence-tolerant), the
    table and the sets asserted first."""
    cmds: list[Cmd] = [add_table(), *(c for c in firewall_sets() if c["add"]["set"]["name"] in elements)]
    for name, elems in elements.items():
        if elems:
            cmds += [add_elements(name, elems), delete_elements(name, elems)]
    return cmds
