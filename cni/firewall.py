"""berth-firewall: upstream's plugins/meta/firewall, in berth's own nft table.

A chained plugin (it needs prevResult and passes it on unchanged). Traffic from
the container's addresses, and established traffic to them, is accepted in the
forward path; with `ingressPolicy: "same-bridge"` traffic from other same-bridge
bridges into the container's bridge is dropped. Upstream writes iptables rules
per container (or firewalld zone sources); berth adds elements to sets of
`table inet berth` that a constant set of rules looks up (portmap/firewall.py).
`backend` "iptables", "firewalld" (and "nftables", or none) all mean berth's
table; `iptablesAdminChainName` and `firewalldZone` are accepted and unused (the
operator's chain in berth's table is CNI-ADMIN, jumped first from `forward`).

The journal section "firewall" records the interface and addresses before the
transaction, so DEL and GC remove the elements without the runtime's prevResult.
"""

from __future__ import annotations

import ipaddress

from cni import errors, skel
from cni.errors import CNIError
from cni.meta import chained_result, gc_sections, journal, quietly, section
from cni.records import FIREWALL, FirewallRecord
from cni.skel import CmdArgs, PluginFuncs
from cni.spec import Result, prev_result

TYPE_CHECKING = False  # mypy treats this name as True: typing stays off the exec path
if TYPE_CHECKING:
    from typing import Any, NamedTuple
else:
    from cni.tuples import NamedTuple

BACKENDS = ("", "iptables", "firewalld", "nftables")
OPEN, SAME_BRIDGE = "open", "same-bridge"
POLICIES = ("", OPEN, SAME_BRIDGE)
MAX_CHAIN_NAME = 28


class FirewallConf(NamedTuple):
    backend: str
    ingress_policy: str  # "" or "open": no isolation


def _optional_string(config: dict[str, Any], field: str) -> str:
    value = config.get(field)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise errors.invalid_config(f"{field} must be a string")
    return value


def parse(config: dict[str, Any]) -> FirewallConf:
    backend = _optional_string(config, "backend")
    if backend not in BACKENDS:
        raise errors.invalid_config(f"unknown firewall backend {backend[:40]!r}",
                                    "iptables, firewalld or nftables: all of them mean berth's nft table")
    admin = _optional_string(config, "iptablesAdminChainName")
    if len(admin) > MAX_CHAIN_NAME:
        raise errors.invalid_config("iptablesAdminChainName is longer than 28 characters")
    _optional_string(config, "firewalldZone")
    policy = _optional_string(config, "ingressPolicy")
    if policy not in POLICIES:
        raise errors.invalid_config(f"unknown ingress policy {policy[:40]!r}", "open or same-bridge")
    return FirewallConf(backend, policy)


def _host_interface(prev: Result) -> str:
    """The first host-side interface of the result (the bridge, or a ptp host veth):
    the interface the container's traffic is forwarded through on the node."""
    for iface in prev.get("interfaces") or []:
        if not iface.get("sandbox"):
            return _ifname(iface.get("name"))
    return ""


def _ifname(value: Any) -> str:
    name = value if isinstance(value, str) else ""
    problem = skel.ifname_problem(name)
    if problem is not None:
        raise errors.invalid_config(f"prevResult interface {name[:40]!r}: {problem[0]}")
    return name


def expected(conf: FirewallConf, prev: Result) -> FirewallRecord:
    """What the firewall must hold for this attachment, from its prevResult."""
    addresses = tuple(dict.fromkeys(str(ipaddress.ip_interface(ip["address"]).ip) for ip in prev.get("ips") or []))
    interface = _host_interface(prev)
    if addresses and not interface:
        raise errors.invalid_config("prevResult names no host-side interface",
                                    "chain the firewall after a plugin that reports one (bridge, ptp)")
    bridge = ""
    if conf.ingress_policy == SAME_BRIDGE:
        first = (prev.get("interfaces") or [None])[0]
        if not isinstance(first, dict) or first.get("sandbox"):
            raise errors.invalid_config(f"ingressPolicy {SAME_BRIDGE!r} needs the bridge as the first interface of "
                                        "prevResult", 'chain the firewall after the "bridge" plugin')
        bridge = _ifname(first.get("name"))
    return FirewallRecord("adding", interface, addresses, bridge)


def _portmap_firewall() -> Any:
    from portmap import firewall  # lazy: nft work only when there is some

    return firewall


def _key(args: CmdArgs) -> tuple[str, str, str]:
    return args.network, args.container_id, args.ifname


def cmd_add(args: CmdArgs) -> Result:
    conf = parse(args.config)
    prev = chained_result(args, "berth-firewall")
    record = expected(conf, prev)
    entry = journal(args)
    previous = section(entry, FIREWALL)
    entry.put(FIREWALL, record.to_json())
    try:
        fw = _portmap_firewall()
        if previous:  # a repeated ADD with other addresses: the old ones go
            old = FirewallRecord.from_json(previous)
            if old.addresses != record.addresses or old.interface != record.interface:
                fw.teardown(old._replace(same_bridge=""), _key(args), args.environ)
        fw.setup(record, args.environ)
    except BaseException:
        # setup is one transaction: when it failed, none of its elements exist
        quietly(lambda: entry.put(FIREWALL, previous) if previous else entry.drop(FIREWALL))()
        raise
    entry.put(FIREWALL, record._replace(state="done").to_json())
    return prev


def cmd_del(args: CmdArgs) -> None:
    entry = journal(args)
    data = section(entry, FIREWALL)
    if data:
        record = FirewallRecord.from_json(data)
    else:
        try:  # no journal (made by upstream's plugin, or lost): what prevResult tells, as upstream works
            prev = prev_result(args.config)
            record = expected(parse(args.config), prev) if prev is not None else FirewallRecord("", "")
        except CNIError:
            record = FirewallRecord("", "")
    if record.addresses or record.same_bridge:
        _portmap_firewall().teardown(record, _key(args), args.environ)
    entry.drop(FIREWALL)


def cmd_check(args: CmdArgs) -> None:
    conf = parse(args.config)
    record = expected(conf, chained_result(args, "berth-firewall"))
    problems = _portmap_firewall().check(record)
    if problems:
        raise CNIError(errors.CHECK_FAILED, "CHECK failed: " + problems[0], "; ".join(problems))


def cmd_gc(args: CmdArgs) -> None:
    parse(args.config)
    fw = _portmap_firewall()

    def teardown(entry: Any, data: dict[str, Any]) -> None:
        fw.teardown(FirewallRecord.from_json(data), (entry.network, entry.container_id, entry.ifname), args.environ)

    gc_sections(args, FIREWALL, teardown)


def cmd_status(args: CmdArgs) -> None:
    parse(args.config)
    from portmap import nft

    if not nft.binding_available():
        raise CNIError(errors.PLUGIN_NOT_AVAILABLE, "berth-firewall needs libnftables, which is not available")
    problem = nft.unsupported()
    if problem is not None:
        raise CNIError(errors.PLUGIN_NOT_AVAILABLE, *problem)


FUNCS = PluginFuncs(name="berth-firewall", add=cmd_add, delete=cmd_del, check=cmd_check, gc=cmd_gc,
                    status=cmd_status,
                    known_args=frozenset({"K8S_POD_NAME", "K8S_POD_NAMESPACE", "K8S_POD_INFRA_CONTAINER_ID",
                                          "K8S_POD_UID"}))
